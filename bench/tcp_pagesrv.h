/*
 * The baseline the fabric/tcp transport is measured against: a plain TCP
 * request/response page server, the simplest thing that could serve pages without
 * RDMA. A request is 16 bytes {u64 offset, u32 length, u32 zero}, little-endian;
 * the answer is the bytes. (bench/tcp_pagesrv.c)
 */
#ifndef RDMIG_BENCH_TCP_PAGESRV_H
#define RDMIG_BENCH_TCP_PAGESRV_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Fork a server holding region bytes of 'fill'ed memory on addr (IPv4), any port. */
int tcp_pagesrv_start(const char *addr, size_t region, void (*fill)(uint8_t *, size_t), pid_t *pid,
                      int *port);
void tcp_pagesrv_stop(pid_t pid);
int tcp_pagesrv_connect(const char *addr, int port);
/* Ask for len bytes at off (no wait for the answer). */
int tcp_page_request(int fd, uint64_t off, uint32_t len);
/* Read one whole answer of len bytes. */
int tcp_page_answer(int fd, void *buf, size_t len);

#endif
