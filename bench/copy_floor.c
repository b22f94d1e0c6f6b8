/*
 * bench/copy_floor: the two copies every post-copy migration makes, done on this
 * machine with no transport, on memory as fresh as the daemons get: the floor
 * bench/migrate.sh puts beside its total time.
 *
 *   copy_floor --mb N
 *
 * A child fills N MiB (4 KiB pages, a word naming each page), like the process
 * being migrated. Then, timed apart:
 *   mirror   what the source does while the process runs (src/precopy.c): a fresh
 *            2 MiB-aligned buffer with MADV_HUGEPAGE, filled 1 MiB at a time by
 *            MADV_POPULATE_WRITE and one process_vm_readv from the child;
 *   install  what the destination's pager does with every page (uffd/faultloop.c):
 *            UFFDIO_COPY in 64 KiB from that buffer into a fresh region with
 *            MADV_NOHUGEPAGE registered for missing faults (the restored
 *            process's memory).
 * Then every page of the region is checked against the child's word.
 *
 * Why it is printed at all: a virtual machine's host may back guest memory only
 * when the guest first writes it, and take freed memory back within seconds
 * (free page reporting; on the machine this was written on, ~2 s). A migration
 * writes 2 x its memory into fresh pages on one host (the mirror and the copy),
 * and when that is slower than the transport, size / bandwidth is not what
 * bounds the total time; this is. Prints one line:
 *   floor mb N mirror_s S install_s S floor_s S mirror_MB/s R install_MB/s R
 * Exit 1 on wrong data or a failed call; timings never fail it.
 */
#include "uffd.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PG 4096ull
#define PIECE (1ull << 20)
#define HUGE (2ull << 20)
#define INSTALL (64ull << 10)

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t word_of(uint64_t page)
{
	return page * 0x9e3779b97f4a7c15ull | 1;
}

/* The child: N MiB of 4 KiB pages, each with its word; says so, then waits to be
 * killed. */
static pid_t start_child(uint64_t len, uint64_t *base)
{
	int p[2];
	pid_t pid;
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char c = 0;

	if (m == MAP_FAILED || pipe(p) < 0)
		return -1;
	(void)madvise(m, len, MADV_NOHUGEPAGE);
	pid = fork();
	if (pid == 0) {
		close(p[0]);
		for (uint64_t i = 0; i < len / PG; i++) {
			uint64_t w = word_of(i);

			memcpy(m + i * PG, &w, sizeof(w));
		}
		if (write(p[1], "r", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(p[1]);
	if (pid < 0 || read(p[0], &c, 1) != 1 || c != 'r') {
		if (pid > 0) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
		}
		close(p[0]);
		return -1;
	}
	close(p[0]);
	munmap(m, len); /* ours was never written: the child's copy has the data */
	*base = (uint64_t)(uintptr_t)m;
	return pid;
}

static uint8_t *huge_buffer(uint64_t len)
{
	uint8_t *b = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE,
	                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uint8_t *a;

	if (b == MAP_FAILED)
		return NULL;
	a = (uint8_t *)(((uintptr_t)b + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
	(void)madvise(a, len, MADV_HUGEPAGE);
	return a;
}

int main(int argc, char **argv)
{
	uint64_t len = 0, base = 0, bad = 0;
	uint8_t *mirror, *target;
	double t0, t1, t2;
	int fd = -1, rc = 1;
	pid_t child;

	if (argc == 3 && !strcmp(argv[1], "--mb"))
		len = strtoull(argv[2], NULL, 10) << 20;
	if (!len) {
		fprintf(stderr, "usage: copy_floor --mb N\n");
		return 2;
	}
	child = start_child(len, &base);
	if (child < 0) {
		fprintf(stderr, "copy_floor: cannot start the child: %s\n", strerror(errno));
		return 1;
	}
	mirror = huge_buffer(len);
	target = mmap(NULL, len, PROT_READ | PROT_WRITE,
	              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (!mirror || target == MAP_FAILED) {
		fprintf(stderr, "copy_floor: out of memory for %" PRIu64 " MiB\n", len >> 20);
		goto out_child;
	}
	(void)madvise(target, len, MADV_NOHUGEPAGE);
	fd = rdmig_uffd_open_api(0, 0);
	{
		int ret = fd < 0 ? fd
		                 : rdmig_uffd_register(fd, (uint64_t)(uintptr_t)target, len,
		                                       RDMIG_UFFD_MISSING, NULL);

		if (ret < 0) {
			fprintf(stderr, "copy_floor: userfaultfd: %s\n", strerror(-ret));
			goto out_uffd;
		}
	}

	t0 = now_s();
	for (uint64_t off = 0; off < len; off += PIECE) {
		struct iovec l = {mirror + off, PIECE},
		             r = {(void *)(uintptr_t)(base + off), PIECE};

		(void)madvise(mirror + off, PIECE, MADV_POPULATE_WRITE);
		if (process_vm_readv(child, &l, 1, &r, 1, 0) != (ssize_t)PIECE) {
			fprintf(stderr, "copy_floor: process_vm_readv: %s\n", strerror(errno));
			goto out_uffd;
		}
	}
	t1 = now_s();
	for (uint64_t off = 0; off < len; off += INSTALL) {
		int ret = rdmig_uffd_copy(fd, (uint64_t)(uintptr_t)target + off, mirror + off,
		                          INSTALL, 0, NULL);

		if (ret < 0) {
			fprintf(stderr, "copy_floor: UFFDIO_COPY: %s\n", strerror(-ret));
			goto out_uffd;
		}
	}
	t2 = now_s();
	for (uint64_t i = 0; i < len / PG; i++) {
		uint64_t w;

		memcpy(&w, target + i * PG, sizeof(w));
		bad += w != word_of(i);
	}
	if (bad) {
		fprintf(stderr, "copy_floor: %" PRIu64 " pages with wrong data\n", bad);
		goto out_uffd;
	}
	printf("floor mb %" PRIu64 " mirror_s %.3f install_s %.3f floor_s %.3f mirror_MB/s %.0f "
	       "install_MB/s %.0f\n",
	       len >> 20, t1 - t0, t2 - t1, t2 - t0, (double)len / 1e6 / (t1 - t0),
	       (double)len / 1e6 / (t2 - t1));
	rc = 0;
out_uffd:
	if (fd >= 0)
		close(fd);
out_child:
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	return rc;
}
