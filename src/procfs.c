/*
 * Strict /proc/PID readers for the capture (src/procfs.h).
 *
 * Files are read whole, then parsed line by line: a line is complete only when
 * it ends with '\n', every number has digits and fits, and a file that lacks a
 * field the capture needs is an error. The kernel's formats are the reference:
 * fs/proc/array.c (status, stat), fs/proc/task_mmu.c (maps), fs/proc/fd.c
 * (fdinfo).
 */
#define LOG_SUBSYS "capture"
#include "procfs.h"

#include "rdmig/log.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* An ENOENT under /proc/PID means the process is gone when /proc/PID is. */
static int proc_err(pid_t pid, int err)
{
	if (err == ENOENT && kill(pid, 0) < 0 && errno == ESRCH)
		return -ESRCH;
	return -err;
}

int procfs_read(pid_t pid, const char *name, size_t max, char **buf, size_t *len)
{
	char path[96];
	size_t cap = 4096, n = 0;
	char *b = NULL;
	int fd, ret;

	*buf = NULL;
	*len = 0;
	snprintf(path, sizeof(path), "/proc/%d/%s", pid, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return proc_err(pid, errno);
	if (cap > max + 2)
		cap = max + 2; /* room for one byte too many, and the NUL */
	for (;;) {
		if (!b || n + 1 >= cap) {
			char *nb;

			if (n > max) {
				ret = -EFBIG;
				pr_err("%s is larger than %zu bytes", path, max);
				goto out_free;
			}
			if (b)
				cap *= 2;
			nb = realloc(b, cap);
			if (!nb) {
				ret = -ENOMEM;
				goto out_free;
			}
			b = nb;
		}
		ssize_t r = read(fd, b + n, cap - n - 1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			ret = proc_err(pid, errno);
			goto out_free;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n > max) {
		ret = -EFBIG;
		pr_err("%s is larger than %zu bytes", path, max);
		goto out_free;
	}
	b[n] = '\0';
	close(fd);
	*buf = b;
	*len = n;
	return 0;
out_free:
	free(b);
	close(fd);
	return ret;
}

int procfs_readlink(pid_t pid, const char *name, char **out)
{
	char path[96];
	size_t cap = 256;

	*out = NULL;
	snprintf(path, sizeof(path), "/proc/%d/%s", pid, name);
	for (;;) {
		char *b = malloc(cap);

		if (!b)
			return -ENOMEM;
		ssize_t r = readlink(path, b, cap);

		if (r < 0) {
			int err = errno;

			free(b);
			return proc_err(pid, err);
		}
		if ((size_t)r < cap) {
			b[r] = '\0';
			*out = b;
			return 0;
		}
		free(b);
		if (cap >= 65536) {
			pr_err("%s: link target longer than 64 KiB", path);
			return -EIO;
		}
		cap *= 4;
	}
}

int procfs_stat_link(pid_t pid, const char *name, struct stat *st)
{
	char path[96];

	snprintf(path, sizeof(path), "/proc/%d/%s", pid, name);
	if (stat(path, st) < 0)
		return proc_err(pid, errno);
	return 0;
}

/* Numbers: digits required, no sign, no overflow; *pp moves past them. */
static int parse_u64(const char **pp, int base, uint64_t *v)
{
	const char *p = *pp;
	char *end;

	while (*p == ' ' || *p == '\t')
		p++;
	if (base == 16 ? !isxdigit((unsigned char)*p) : !isdigit((unsigned char)*p))
		return -1;
	if (base == 8 && (*p == '8' || *p == '9'))
		return -1;
	errno = 0;
	unsigned long long x = strtoull(p, &end, base);

	if (errno || end == p)
		return -1;
	*v = x;
	*pp = end;
	return 0;
}

static int parse_u32(const char **pp, int base, uint32_t *v)
{
	uint64_t x;

	if (parse_u64(pp, base, &x) || x > UINT32_MAX)
		return -1;
	*v = (uint32_t)x;
	return 0;
}

/* Only blanks up to the end of the line. */
static bool at_eol(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return *p == '\0';
}

/* Split buf into lines in place: calls fn(line) for each; a last line without
 * '\n' is incomplete. */
static int for_each_line(char *buf, size_t len, const char *what, int (*fn)(char *, void *),
                         void *arg)
{
	char *p = buf, *end = buf + len;

	if (len && buf[len - 1] != '\n') {
		pr_err("%s: last line incomplete", what);
		return -EIO;
	}
	if (memchr(buf, '\0', len)) {
		pr_err("%s: NUL byte in text", what);
		return -EIO;
	}
	while (p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		int ret;

		*nl = '\0';
		ret = fn(p, arg);
		if (ret)
			return ret;
		p = nl + 1;
	}
	return 0;
}

/* ---- /proc/PID/status ---- */

enum {
	ST_STATE = 1 << 0,
	ST_THREADS = 1 << 1,
	ST_TRACER = 1 << 2,
	ST_SECCOMP = 1 << 3,
	ST_UID = 1 << 4,
	ST_GID = 1 << 5,
	ST_GROUPS = 1 << 6,
	ST_CAPS = 1 << 7, /* all five */
	ST_NNP = 1 << 8,
	ST_UMASK = 1 << 9,
	ST_ALL = (1 << 10) - 1,
};

struct status_parse {
	struct procfs_status *st;
	unsigned seen, caps;
	pid_t pid;
};

static int status_line(char *line, void *arg)
{
	struct status_parse *sp = arg;
	struct procfs_status *st = sp->st;
	char *colon = strchr(line, ':');
	const char *v;
	uint64_t x;

	if (!colon)
		goto bad;
	*colon = '\0';
	v = colon + 1;
	if (!strcmp(line, "State")) {
		while (*v == ' ' || *v == '\t')
			v++;
		if (!isupper((unsigned char)*v) && *v != 't')
			goto bad;
		st->state = *v;
		sp->seen |= ST_STATE;
	} else if (!strcmp(line, "Threads")) {
		if (parse_u32(&v, 10, &st->threads) || !at_eol(v))
			goto bad;
		sp->seen |= ST_THREADS;
	} else if (!strcmp(line, "TracerPid")) {
		if (parse_u64(&v, 10, &x) || x > INT32_MAX || !at_eol(v))
			goto bad;
		st->tracer = (int32_t)x;
		sp->seen |= ST_TRACER;
	} else if (!strcmp(line, "Seccomp")) {
		if (parse_u32(&v, 10, &st->seccomp) || !at_eol(v))
			goto bad;
		sp->seen |= ST_SECCOMP;
	} else if (!strcmp(line, "Uid") || !strcmp(line, "Gid")) {
		uint32_t *ids = line[0] == 'U' ? st->uid : st->gid;

		for (int i = 0; i < 4; i++)
			if (parse_u32(&v, 10, &ids[i]))
				goto bad;
		if (!at_eol(v))
			goto bad;
		sp->seen |= line[0] == 'U' ? ST_UID : ST_GID;
	} else if (!strcmp(line, "Groups")) {
		uint32_t g;

		while (!at_eol(v)) {
			if (parse_u32(&v, 10, &g))
				goto bad;
			if (st->ngroups >= RDMIG_IMG_MAX_GROUPS)
				goto bad;
			uint32_t *n = realloc(st->groups, (st->ngroups + 1) * sizeof(*n));

			if (!n)
				return -ENOMEM;
			st->groups = n;
			st->groups[st->ngroups++] = g;
		}
		sp->seen |= ST_GROUPS;
	} else if (!strncmp(line, "Cap", 3)) {
		static const char *const names[] = {"CapInh", "CapPrm", "CapEff", "CapBnd",
		                                    "CapAmb"};
		uint64_t *dst[] = {&st->cap_inh, &st->cap_prm, &st->cap_eff, &st->cap_bnd,
		                   &st->cap_amb};

		for (int i = 0; i < 5; i++) {
			if (strcmp(line, names[i]))
				continue;
			if (parse_u64(&v, 16, dst[i]) || !at_eol(v))
				goto bad;
			sp->caps |= 1u << i;
		}
		if (sp->caps == 0x1f)
			sp->seen |= ST_CAPS;
	} else if (!strcmp(line, "SigIgn") || !strcmp(line, "SigCgt")) {
		if (parse_u64(&v, 16, line[3] == 'I' ? &st->sig_ign : &st->sig_cgt) || !at_eol(v))
			goto bad;
	} else if (!strcmp(line, "NoNewPrivs")) {
		if (parse_u32(&v, 10, &st->no_new_privs) || st->no_new_privs > 1 || !at_eol(v))
			goto bad;
		sp->seen |= ST_NNP;
	} else if (!strcmp(line, "Umask")) {
		if (parse_u32(&v, 8, &st->umask) || st->umask > 0777 || !at_eol(v))
			goto bad;
		sp->seen |= ST_UMASK;
	}
	return 0;
bad:
	pr_err("/proc/%d/status: line '%s' does not parse", sp->pid, line);
	return -EIO;
}

void procfs_status_free(struct procfs_status *st)
{
	free(st->groups);
	memset(st, 0, sizeof(*st));
}

int procfs_status(pid_t pid, struct procfs_status *st)
{
	struct status_parse sp = {st, 0, 0, pid};
	char *buf;
	size_t len;
	int ret;

	memset(st, 0, sizeof(*st));
	ret = procfs_read(pid, "status", 1 << 20, &buf, &len);
	if (ret)
		return ret;
	ret = for_each_line(buf, len, "status", status_line, &sp);
	free(buf);
	if (!ret && sp.seen != ST_ALL) {
		pr_err("/proc/%d/status lacks fields (seen %#x of %#x)", pid, sp.seen,
		       (unsigned)ST_ALL);
		ret = -EIO;
	}
	if (ret)
		procfs_status_free(st);
	return ret;
}

/* ---- /proc/PID/stat ---- */

int procfs_stat(pid_t pid, struct procfs_stat *st)
{
	/* 1-based field numbers (proc(5)) of what is kept, in order */
	static const int want[] = {9, 10, 26, 27, 28, 45, 46, 47, 48, 49, 50, 51};
	uint64_t *dst[] = {&st->flags,       &st->minflt,         &st->mm.start_code,
	                   &st->mm.end_code, &st->mm.start_stack, &st->mm.start_data,
	                   &st->mm.end_data, &st->mm.start_brk,   &st->mm.arg_start,
	                   &st->mm.arg_end,  &st->mm.env_start,   &st->mm.env_end};
	char *buf, *p;
	size_t len, w = 0;
	int ret, field;

	memset(st, 0, sizeof(*st));
	ret = procfs_read(pid, "stat", 4096, &buf, &len);
	if (ret)
		return ret;
	ret = -EIO;
	/* comm may hold spaces and ')': the last ')' ends it */
	p = strrchr(buf, ')');
	if (!p || len == 0 || buf[len - 1] != '\n' || p[1] != ' ' || !p[2])
		goto out_bad;
	p += 2;
	st->state = *p++;
	field = 3;
	while (*p == ' ' && w < sizeof(want) / sizeof(want[0])) {
		const char *q = ++p;
		uint64_t v;

		field++;
		if (field == want[w]) {
			if (parse_u64(&q, 10, &v) || (*q != ' ' && *q != '\n'))
				goto out_bad;
			*dst[w++] = v;
			p = (char *)(uintptr_t)q;
			continue;
		}
		if (*p == '-')
			p++;
		if (!isdigit((unsigned char)*p))
			goto out_bad;
		while (isdigit((unsigned char)*p))
			p++;
	}
	if (w != sizeof(want) / sizeof(want[0]))
		goto out_bad;
	free(buf);
	return 0;
out_bad:
	pr_err("/proc/%d/stat does not parse (field %zu of what is needed)", pid, w);
	free(buf);
	return ret;
}

/* ---- /proc/PID/maps ---- */

struct maps_parse {
	pid_t pid;
	struct procfs_map *m;
	size_t n, cap;
};

static int maps_line(char *line, void *arg)
{
	struct maps_parse *mp = arg;
	const char *p = line;
	struct procfs_map m = {0};
	uint64_t x;

	if (parse_u64(&p, 16, &m.start) || *p++ != '-' || parse_u64(&p, 16, &m.end) ||
	    *p++ != ' ' || m.start >= m.end || (m.start | m.end) & 4095)
		goto bad;
	if ((p[0] != 'r' && p[0] != '-') || (p[1] != 'w' && p[1] != '-') ||
	    (p[2] != 'x' && p[2] != '-') || (p[3] != 's' && p[3] != 'p') || p[4] != ' ')
		goto bad;
	m.prot = (p[0] == 'r' ? PROT_READ : 0) | (p[1] == 'w' ? PROT_WRITE : 0) |
	         (p[2] == 'x' ? PROT_EXEC : 0);
	m.shared = p[3] == 's';
	p += 5;
	if (parse_u64(&p, 16, &m.pgoff) || *p++ != ' ' || parse_u32(&p, 16, &m.dev_major) ||
	    *p++ != ':' || parse_u32(&p, 16, &m.dev_minor) || parse_u64(&p, 10, &x))
		goto bad;
	m.ino = x;
	if (*p != '\0' && *p != ' ')
		goto bad;
	while (*p == ' ')
		p++;
	if (*p) {
		m.name = strdup(p);
		if (!m.name)
			return -ENOMEM;
	}
	if (mp->n == mp->cap) {
		size_t cap = mp->cap ? 2 * mp->cap : 64;
		struct procfs_map *nm = realloc(mp->m, cap * sizeof(*nm));

		if (!nm) {
			free(m.name);
			return -ENOMEM;
		}
		mp->m = nm;
		mp->cap = cap;
	}
	if (mp->n && m.start < mp->m[mp->n - 1].end) {
		free(m.name);
		goto bad;
	}
	mp->m[mp->n++] = m;
	return 0;
bad:
	pr_err("/proc/%d/maps: line '%.200s' does not parse", mp->pid, line);
	return -EIO;
}

void procfs_maps_free(struct procfs_map *m, size_t n)
{
	for (size_t i = 0; m && i < n; i++)
		free(m[i].name);
	free(m);
}

int procfs_maps(pid_t pid, struct procfs_map **out, size_t *n)
{
	struct maps_parse mp = {pid, NULL, 0, 0};
	char *buf;
	size_t len;
	int ret;

	*out = NULL;
	*n = 0;
	ret = procfs_read(pid, "maps", 64u << 20, &buf, &len);
	if (ret)
		return ret;
	ret = for_each_line(buf, len, "maps", maps_line, &mp);
	free(buf);
	if (ret) {
		procfs_maps_free(mp.m, mp.n);
		return ret;
	}
	*out = mp.m;
	*n = mp.n;
	return 0;
}

/* ---- /proc/PID/fd and fdinfo ---- */

struct fdinfo_parse {
	struct procfs_fd *f;
	unsigned seen;
	pid_t pid;
};

static int fdinfo_line(char *line, void *arg)
{
	struct fdinfo_parse *fp = arg;
	const char *v;

	if (!strncmp(line, "pos:", 4)) {
		v = line + 4;
		if (parse_u64(&v, 10, &fp->f->pos) || fp->f->pos > INT64_MAX || !at_eol(v))
			goto bad;
		fp->seen |= 1;
	} else if (!strncmp(line, "flags:", 6)) {
		v = line + 6;
		if (parse_u32(&v, 8, &fp->f->flags) || !at_eol(v))
			goto bad;
		fp->seen |= 2;
	}
	return 0;
bad:
	pr_err("/proc/%d/fdinfo/%d: line '%s' does not parse", fp->pid, fp->f->fd, line);
	return -EIO;
}

static int fd_cmp(const void *a, const void *b)
{
	const struct procfs_fd *x = a, *y = b;

	return (x->fd > y->fd) - (x->fd < y->fd);
}

void procfs_fds_free(struct procfs_fd *f, size_t n)
{
	for (size_t i = 0; f && i < n; i++)
		free(f[i].target);
	free(f);
}

/* One descriptor's link and fdinfo: 0, 1 when it was closed meanwhile, -errno. */
static int read_one_fd(pid_t pid, struct procfs_fd *f)
{
	struct fdinfo_parse fp = {f, 0, pid};
	char name[48], *buf;
	size_t len;
	int ret;

	snprintf(name, sizeof(name), "fd/%d", f->fd);
	ret = procfs_readlink(pid, name, &f->target);
	if (ret == -ENOENT)
		return 1;
	if (ret)
		return ret;
	snprintf(name, sizeof(name), "fdinfo/%d", f->fd);
	ret = procfs_read(pid, name, 1 << 20, &buf, &len);
	if (ret == -ENOENT)
		ret = 1;
	if (!ret) {
		ret = for_each_line(buf, len, "fdinfo", fdinfo_line, &fp);
		free(buf);
		if (!ret && fp.seen != 3) {
			pr_err("/proc/%d/fdinfo/%d lacks pos or flags", pid, f->fd);
			ret = -EIO;
		}
	}
	if (ret) {
		free(f->target);
		f->target = NULL;
	}
	return ret;
}

int procfs_fds(pid_t pid, struct procfs_fd **out, size_t *n)
{
	struct procfs_fd *v = NULL;
	size_t cnt = 0, cap = 0;
	struct dirent *de;
	char path[64];
	DIR *d;
	int ret = 0;

	*out = NULL;
	*n = 0;
	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	d = opendir(path);
	if (!d)
		return proc_err(pid, errno);
	while ((errno = 0, de = readdir(d))) {
		const char *p = de->d_name;
		uint64_t fd;

		if (!strcmp(p, ".") || !strcmp(p, ".."))
			continue;
		if (parse_u64(&p, 10, &fd) || *p || fd > INT32_MAX) {
			pr_err("%s: entry '%s' is not a number", path, de->d_name);
			ret = -EIO;
			goto out_free;
		}
		if (cnt == cap) {
			size_t nc = cap ? 2 * cap : 16;
			struct procfs_fd *nv;

			if (nc > RDMIG_IMG_MAX_FDS + 1) {
				pr_err("%s: more than %u descriptors", path, RDMIG_IMG_MAX_FDS);
				ret = -E2BIG;
				goto out_free;
			}
			nv = realloc(v, nc * sizeof(*nv));
			if (!nv) {
				ret = -ENOMEM;
				goto out_free;
			}
			v = nv;
			cap = nc;
		}
		v[cnt] = (struct procfs_fd){.fd = (int)fd};
		ret = read_one_fd(pid, &v[cnt]);
		if (ret < 0)
			goto out_free;
		if (ret == 0)
			cnt++;
		ret = 0;
	}
	if (errno) {
		ret = proc_err(pid, errno);
		goto out_free;
	}
	closedir(d);
	if (cnt)
		qsort(v, cnt, sizeof(*v), fd_cmp);
	*out = v;
	*n = cnt;
	return 0;
out_free:
	closedir(d);
	procfs_fds_free(v, cnt);
	return ret;
}

int procfs_task_count(pid_t pid, uint32_t *n)
{
	struct dirent *de;
	char path[64];
	DIR *d;

	*n = 0;
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	d = opendir(path);
	if (!d)
		return proc_err(pid, errno);
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			(*n)++;
	closedir(d);
	return 0;
}

int procfs_personality(pid_t pid, uint32_t *pers)
{
	char *buf;
	const char *p;
	size_t len;
	int ret;

	ret = procfs_read(pid, "personality", 64, &buf, &len);
	if (ret)
		return ret;
	p = buf;
	if (parse_u32(&p, 16, pers) || strcmp(p, "\n")) {
		pr_err("/proc/%d/personality does not parse", pid);
		ret = -EIO;
	}
	free(buf);
	return ret;
}

/* One value of a limits line: "unlimited" or decimal digits. */
static int limit_value(const char **pp, uint64_t *v)
{
	const char *p = *pp;

	while (*p == ' ')
		p++;
	if (!strncmp(p, "unlimited", 9)) {
		*v = UINT64_MAX; /* RLIM_INFINITY */
		*pp = p + 9;
		return 0;
	}
	if (parse_u64(&p, 10, v))
		return -1;
	*pp = p;
	return 0;
}

int procfs_limits(pid_t pid, uint64_t *cur, uint64_t *max)
{
	/* fs/proc/base.c proc_pid_limits: "%-25s %-20s %-20s %-10s" per resource,
	 * after one header line; names hold spaces, so columns are by offset. */
	const size_t soft_col = 26;
	char *buf, *line, *nl;
	size_t len;
	unsigned i = 0;
	int ret;

	ret = procfs_read(pid, "limits", 1 << 16, &buf, &len);
	if (ret)
		return ret;
	ret = -EIO;
	line = strchr(buf, '\n');
	if (!line || strncmp(buf, "Limit ", 6))
		goto out_bad;
	for (line++; i < RDMIG_IMG_NRLIMIT && (nl = strchr(line, '\n')); line = nl + 1, i++) {
		const char *p = line + soft_col;

		*nl = '\0';
		if ((size_t)(nl - line) <= soft_col || line[soft_col - 1] != ' ')
			goto out_bad;
		if (limit_value(&p, &cur[i]) || *p != ' ' || limit_value(&p, &max[i]) ||
		    (*p != ' ' && *p != '\0') || cur[i] > max[i])
			goto out_bad;
	}
	if (i != RDMIG_IMG_NRLIMIT)
		goto out_bad;
	ret = 0;
	free(buf);
	return ret;
out_bad:
	pr_err("/proc/%d/limits does not parse (resource %u)", pid, i);
	free(buf);
	return ret;
}
