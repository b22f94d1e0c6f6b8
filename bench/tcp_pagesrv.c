/*
 * A plain TCP page server (protocol in tcp_pagesrv.h): blocking sockets,
 * TCP_NODELAY, one client at a time, requests checked against the region. It is
 * deliberately ordinary: it is what a user would write without RDMA, and what
 * the fabric/tcp transport has to beat or match.
 */
#include "tcp_pagesrv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EPIPE;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = recv(fd, p, len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void serve(int lfd, const uint8_t *region, size_t size) __attribute__((noreturn));
static void serve(int lfd, const uint8_t *region, size_t size)
{
	for (;;) {
		int fd = accept(lfd, NULL, NULL);
		uint8_t req[16];

		if (fd < 0)
			continue;
		nodelay(fd);
		while (read_all(fd, req, sizeof(req)) == 0) {
			uint64_t off = 0;
			uint32_t len = 0;

			for (int i = 7; i >= 0; i--)
				off = (off << 8) | req[i];
			for (int i = 11; i >= 8; i--)
				len = (len << 8) | req[i];
			if (off > size || len > size - off || len == 0)
				break; /* a bad request ends the connection */
			if (write_all(fd, region + off, len) < 0)
				break;
		}
		close(fd);
	}
}

int tcp_pagesrv_start(const char *addr, size_t region, void (*fill)(uint8_t *, size_t), pid_t *pid,
                      int *port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);
	int lfd, one = 1;

	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
		return -EINVAL;
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		return -errno;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 4) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0) {
		int ret = -errno;

		close(lfd);
		return ret;
	}
	*port = ntohs(sa.sin_port);
	*pid = fork();
	if (*pid < 0) {
		int ret = -errno;

		close(lfd);
		return ret;
	}
	if (*pid == 0) {
		uint8_t *r = mmap(NULL, region, PROT_READ | PROT_WRITE,
		                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

		if (r == MAP_FAILED)
			_exit(1);
		fill(r, region);
		serve(lfd, r, region);
	}
	close(lfd);
	return 0;
}

void tcp_pagesrv_stop(pid_t pid)
{
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
}

int tcp_pagesrv_connect(const char *addr, int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd;

	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
		return -EINVAL;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* the server forks after listen(): connect may come before accept, fine */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int ret = -errno;

		close(fd);
		return ret;
	}
	nodelay(fd);
	return fd;
}

int tcp_page_request(int fd, uint64_t off, uint32_t len)
{
	uint8_t req[16] = {0};

	for (int i = 0; i < 8; i++)
		req[i] = (uint8_t)(off >> (8 * i));
	for (int i = 0; i < 4; i++)
		req[8 + i] = (uint8_t)(len >> (8 * i));
	return write_all(fd, req, sizeof(req));
}

int tcp_page_answer(int fd, void *buf, size_t len)
{
	return read_all(fd, buf, len);
}
