/*
 * The restore (src/restore*.c) on this machine, no transport:
 *
 *   hand_built          an image written by hand (a page of code that was
 *                       "interrupted" in write() with -ERESTARTSYS, an fd at an
 *                       offset, special mappings moved elsewhere): the write is
 *                       restarted, the file continues, the exit status is right;
 *   refuse_changed_file a file mapping whose size differs from the image: the
 *                       build fails with a sentence naming the file, the husk is
 *                       gone;
 *   roundtrip_root      a workload (32 MiB of patterned memory, a line with its
 *   roundtrip_nobody    checksum every ~10 ms) seized, captured, rebuilt in a
 *                       husk, its touched pages copied from the frozen original,
 *                       the original killed, the copy resumed: the output file
 *                       continues exactly, the exit status and the credentials
 *                       (/proc/PID/status Uid/Gid/Groups/Cap*) are the original's;
 *                       the second case runs as 65534 with a reduced bounding set;
 *   roundtrip_threads   the same with 5 threads: two counting in their own pages,
 *                       one blocked in pthread_cond_wait, one in nanosleep loops,
 *                       the main one writing lines; after the restore every
 *                       thread checks gettid() against glibc's cached tid and
 *                       pthread_kill(self, 0), the condition wakes its waiter,
 *                       pthread_join of all four works, the output continues.
 *                       The waiter's stack ends on a 2 MiB boundary.
 * Every round trip checks, right after the build, that no page of anonymous
 * memory is present but the eagerly sent ones (under THP "always", one eager
 * write used to fill a whole 2 MiB block with zeros the pager never replaced).
 *
 * The husks are forked first thing in main(), as the daemon does.
 */
#include "helpers.h"

#include "rdmig/capture.h"
#include "rdmig/image.h"
#include "rdmig/restore.h"
#include "rdmig/tracee.h"
#include "uffd_compat.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/syscall.h>
#include <grp.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

T_DEFINE_STATE;

enum { NHUSK = 9, HUSK_MISSING_FD = 8 }; /* 5-7: the prebuilt tests' */
static struct rdmig_husk *husks[NHUSK];
static int husk_next;
static char tmpdir[64] = "/tmp/rdmig-restore-XXXXXX";

static struct rdmig_husk *take_husk(void)
{
	return husk_next < NHUSK ? husks[husk_next++] : NULL;
}

/* How many tasks pid has, or with want, how many have an affinity other than
 * want (the build pins them to one CPU while it injects and must give the
 * husk's back); -1 when /proc/PID/task cannot be read. */
static int tasks_not_on(pid_t pid, const cpu_set_t *want)
{
	char path[64];
	struct dirent *e;
	DIR *d;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	while (d && (e = readdir(d))) {
		cpu_set_t cs;

		if (e->d_name[0] == '.')
			continue;
		n += !want || sched_getaffinity(atoi(e->d_name), sizeof(cs), &cs) < 0 ||
		     !CPU_EQUAL(&cs, want);
	}
	if (d)
		closedir(d);
	return d ? n : -1;
}

static int count_tasks(pid_t pid)
{
	int n = tasks_not_on(pid, NULL);

	return n < 0 ? 0 : n;
}

static bool pid_gone(pid_t pid)
{
	return kill(pid, 0) < 0 && errno == ESRCH;
}

/* The credential lines of /proc/PID/status, concatenated. */
static void status_creds(pid_t pid, char *out, size_t cap)
{
	static const char *const keys[] = {"Uid:",    "Gid:",    "Groups:", "CapInh:",    "CapPrm:",
	                                   "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:"};
	char path[64], line[512];
	size_t used = 0;
	FILE *f;

	out[0] = '\0';
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
			if (!strncmp(line, keys[k], strlen(keys[k])) && used + strlen(line) < cap) {
				memcpy(out + used, line, strlen(line) + 1);
				used += strlen(line);
			}
	fclose(f);
}

static int wait_exit(pid_t pid, double timeout_s)
{
	double end = t_now_s() + timeout_s;
	int status;

	while (t_now_s() < end) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		if (r < 0)
			return -1;
		usleep(5000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -2;
}

/* ---- a hand-built image ---- */

#define HB_CODE 0x10000000ull
#define HB_STACK 0x10010000ull
#define HB_SPECIALS 0x30000000ull

/* write(3, msg, 9) at +12..+24 (the syscall ends at 24); exit_group(42). */
static const uint8_t hb_code[] = {
    0xb8, 0x01, 0x00, 0x00, 0x00,             /* mov eax, 1 */
    0xbf, 0x03, 0x00, 0x00, 0x00,             /* mov edi, 3 */
    0x48, 0x8d, 0x35, 0x13, 0x00, 0x00, 0x00, /* lea rsi, [rip + 19] -> msg at 36 */
    0xba, 0x09, 0x00, 0x00, 0x00,             /* mov edx, 9 */
    0x0f, 0x05,                               /* syscall (ends at 24) */
    0xb8, 0xe7, 0x00, 0x00, 0x00,             /* mov eax, 231 */
    0xbf, 0x2a, 0x00, 0x00, 0x00,             /* mov edi, 42 */
    0x0f, 0x05,                               /* syscall */
    'r',  'e',  's',  't',  'o',  'r',  'e',  'd', '\n'};

struct hand_image {
	struct rdmig_image img;
	struct rdmig_img_vma vmas[8];
	struct rdmig_img_file files[3];
	struct rdmig_img_fd fds[3];
	struct rdmig_img_thread threads[1];
	uint32_t groups[64];
	char exe[512], cwd[8], outpath[128], devnull[16];
};

static void fill_creds(struct rdmig_img_creds *c, uint32_t *groups, size_t maxg)
{
	char line[512];
	FILE *f = fopen("/proc/self/status", "re");
	unsigned long long v;
	gid_t g[64];
	int n = getgroups(64, g);

	for (int i = 0; i < n && (size_t)i < maxg; i++)
		groups[i] = g[i];
	c->ngroups = n > 0 ? (uint32_t)n : 0;
	c->groups = groups;
	while (f && fgets(line, sizeof(line), f)) {
		sscanf(line, "Uid: %u %u %u %u", &c->uid[0], &c->uid[1], &c->uid[2], &c->uid[3]);
		sscanf(line, "Gid: %u %u %u %u", &c->gid[0], &c->gid[1], &c->gid[2], &c->gid[3]);
		if (sscanf(line, "CapInh: %llx", &v) == 1)
			c->cap_inh = v;
		if (sscanf(line, "CapPrm: %llx", &v) == 1)
			c->cap_prm = v;
		if (sscanf(line, "CapEff: %llx", &v) == 1)
			c->cap_eff = v;
		if (sscanf(line, "CapBnd: %llx", &v) == 1)
			c->cap_bnd = v;
		if (sscanf(line, "CapAmb: %llx", &v) == 1)
			c->cap_amb = v;
	}
	if (f)
		fclose(f);
}

static int vma_cmp(const void *a, const void *b)
{
	const struct rdmig_img_vma *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/* Our own special mappings, moved as a block to HB_SPECIALS in the image. */
static int add_specials(struct rdmig_image *img, struct rdmig_img_vma *v)
{
	char line[512];
	unsigned long long s, e, base = 0;
	FILE *f = fopen("/proc/self/maps", "re");
	int n = 0;

	while (f && fgets(line, sizeof(line), f)) {
		uint32_t kind = strstr(line, "[vdso]")          ? RDMIG_VMA_VDSO
		                : strstr(line, "[vvar_vclock]") ? RDMIG_VMA_VVAR_VCLOCK
		                : strstr(line, "[vvar]")        ? RDMIG_VMA_VVAR
		                                                : 0;

		if (!kind || sscanf(line, "%llx-%llx", &s, &e) != 2)
			continue;
		if (!base)
			base = s;
		v[n] = (struct rdmig_img_vma){.start = s - base + HB_SPECIALS,
		                              .end = e - base + HB_SPECIALS,
		                              .prot = PROT_READ,
		                              .kind = kind,
		                              .file = UINT32_MAX};
		if (kind == RDMIG_VMA_VDSO) {
			img->vdso = (uint8_t *)(uintptr_t)s; /* our own, read in place */
			img->vdso_len = (uint32_t)(e - s);
			v[n].prot |= PROT_EXEC;
		}
		n++;
	}
	if (f)
		fclose(f);
	return n;
}

static void hand_image(struct hand_image *h, const char *outpath)
{
	struct rdmig_image *img = &h->img;
	struct user_regs_struct regs = {0};
	struct stat st;
	ssize_t n;
	int nv = 0;

	memset(h, 0, sizeof(*h));
	img->pid = 1;
	snprintf(img->comm, sizeof(img->comm), "handbuilt");
	n = readlink("/proc/self/exe", h->exe, sizeof(h->exe) - 1);
	h->exe[n > 0 ? n : 0] = '\0';
	img->exe = h->exe;
	snprintf(h->cwd, sizeof(h->cwd), "/tmp");
	img->cwd = h->cwd;
	img->umask = 022;
	img->mm = (struct rdmig_img_mm){
	    .start_code = HB_CODE,
	    .end_code = HB_CODE + 4096,
	    .start_data = HB_STACK,
	    .end_data = HB_STACK,
	    .start_brk = HB_STACK + 0x10000,
	    .brk = HB_STACK + 0x10000,
	    .start_stack = HB_STACK + 4000,
	    .arg_start = HB_STACK + 4000,
	    .arg_end = HB_STACK + 4000,
	    .env_start = HB_STACK + 4000,
	    .env_end = HB_STACK + 4000,
	};
	fill_creds(&img->creds, h->groups, 64);
	for (int i = 0; i < (int)RDMIG_IMG_NRLIMIT; i++) {
		struct rlimit rl;

		getrlimit(i, &rl);
		img->rlim_cur[i] = rl.rlim_cur;
		img->rlim_max[i] = rl.rlim_max;
	}
	img->sigactions[SIGUSR1 - 1].handler = 1; /* SIG_IGN */
	/* ignored too: the injected calls after the sigactions must not reset it */
	img->sigactions[SIGTRAP - 1].handler = 1;

	/* Stopped "inside" write(): rip past the syscall, -ERESTARTSYS in rax. */
	regs.rip = HB_CODE + 24;
	regs.rax = (unsigned long long)-512;
	regs.orig_rax = 1;
	regs.rdi = 3;
	regs.rsi = HB_CODE + 36;
	regs.rdx = 9;
	regs.rsp = HB_STACK + 4000;
	regs.cs = 0x33;
	regs.ss = 0x2b;
	regs.eflags = 0x202;
	img->threads = h->threads;
	img->nthreads = 1;
	img->threads[0].tid = img->pid;
	memcpy(img->threads[0].regs, &regs, sizeof(regs));
	img->threads[0].altstack_flags = SS_DISABLE;

	h->vmas[nv++] = (struct rdmig_img_vma){
	    HB_CODE, HB_CODE + 4096, PROT_READ | PROT_EXEC, RDMIG_VMA_ANON, 0, UINT32_MAX, 0, NULL,
	    NULL};
	h->vmas[nv++] = (struct rdmig_img_vma){HB_STACK,
	                                       HB_STACK + 4096,
	                                       PROT_READ | PROT_WRITE,
	                                       RDMIG_VMA_ANON,
	                                       0,
	                                       UINT32_MAX,
	                                       0,
	                                       NULL,
	                                       NULL};
	nv += add_specials(img, &h->vmas[nv]);
	qsort(h->vmas, (size_t)nv, sizeof(h->vmas[0]), vma_cmp);
	img->vmas = h->vmas;
	img->nvmas = (uint32_t)nv;

	snprintf(h->outpath, sizeof(h->outpath), "%s", outpath);
	stat(outpath, &st);
	h->files[0] = (struct rdmig_img_file){.path = h->outpath,
	                                      .size = (uint64_t)st.st_size,
	                                      .mtime_sec = st.st_mtim.tv_sec,
	                                      .mtime_nsec = (uint32_t)st.st_mtim.tv_nsec,
	                                      .mode = st.st_mode};
	snprintf(h->devnull, sizeof(h->devnull), "/dev/null");
	h->files[1] = (struct rdmig_img_file){.path = h->devnull, .mode = S_IFCHR | 0666};
	img->files = h->files;
	img->nfiles = 2;
	/* fd 0 replaces the husk's (the daemon's stdin), fd 3 lands where it opens,
	 * fd 6 does not (the husk has 4 and 5 free): close-on-exec as given */
	h->fds[0] = (struct rdmig_img_fd){
	    .fd = 0, .kind = RDMIG_FD_DEVNULL, .flags = O_RDONLY, .cloexec = 1, .file = 1};
	h->fds[1] = (struct rdmig_img_fd){
	    .fd = 3, .kind = RDMIG_FD_FILE, .flags = O_WRONLY, .pos = 5, .file = 0};
	h->fds[2] = (struct rdmig_img_fd){
	    .fd = 6, .kind = RDMIG_FD_FILE, .flags = O_RDONLY, .cloexec = 1, .pos = 0, .file = 0};
	img->fds = h->fds;
	img->nfds = 3;
}

static void write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd >= 0) {
		if (write(fd, s, strlen(s)) < 0)
			perror("write");
		close(fd);
	}
}

/* fd of pid: where it points, its file position and whether it is close-on-exec;
 * false when it is not open. */
static bool fd_state(pid_t pid, int fd, char *target, size_t cap, long long *pos, bool *cloexec)
{
	char path[64], line[256];
	unsigned long long flags = 0;
	ssize_t n;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)pid, fd);
	n = readlink(path, target, cap - 1);
	if (n < 0)
		return false;
	target[n] = '\0';
	snprintf(path, sizeof(path), "/proc/%d/fdinfo/%d", (int)pid, fd);
	f = fopen(path, "re");
	*pos = -1;
	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "pos: %lld", pos) == 1)
			continue;
		(void)sscanf(line, "flags: %llo", &flags);
	}
	if (f)
		fclose(f);
	*cloexec = flags & O_CLOEXEC;
	return true;
}

static void hand_built(void)
{
	static struct hand_image h;
	struct rdmig_restored r;
	struct rdmig_husk *husk = take_husk();
	char out[256], why[512] = "", maps[64], line[512], buf[64] = "";
	pid_t pid;
	FILE *f;
	int fd, st;
	bool moved = false;

	snprintf(out, sizeof(out), "%s/hand.out", tmpdir);
	write_file(out, "helloXXXXXXXXX");
	hand_image(&h, out);
	pid = rdmig_husk_pid(husk);
	int ret = rdmig_restore_build(husk, &h.img, NULL, &r, why, sizeof(why));
	T_CHECK(ret == 0, "build: %d %s", ret, why);
	if (ret)
		return;
	T_CHECK(r.pid == pid && r.uffd >= 0 && r.uffd_in_proc >= 3, "pid %d uffd %d in proc %d",
	        (int)r.pid, r.uffd, r.uffd_in_proc);
	/* The pager's job, done by hand: the code page. */
	T_OK(rdmig_restore_write(&r, HB_CODE, hb_code, sizeof(hb_code)));
	snprintf(maps, sizeof(maps), "/proc/%d/maps", (int)pid);
	f = fopen(maps, "re");
	while (f && fgets(line, sizeof(line), f))
		if (strstr(line, "[vdso]") && strtoull(line, NULL, 16) >= HB_SPECIALS &&
		    strtoull(line, NULL, 16) < HB_SPECIALS + 0x100000)
			moved = true;
	if (f)
		fclose(f);
	T_CHECK(moved, "[vdso] was not moved to %#llx", HB_SPECIALS);
	{
		static const struct {
			int fd;
			bool open;
			const char *target;
			long long pos;
			bool cloexec;
		} want[] = {{0, true, "/dev/null", 0, true}, {1, false, NULL, 0, false},
		            {2, false, NULL, 0, false},      {3, true, NULL, 5, false},
		            {4, false, NULL, 0, false},      {5, false, NULL, 0, false},
		            {6, true, NULL, 0, true},        {7, false, NULL, 0, false}};

		for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
			char target[512];
			long long pos;
			bool ce,
			    open = fd_state(pid, want[i].fd, target, sizeof(target), &pos, &ce);

			T_CHECK(open == want[i].open, "fd %d %s", want[i].fd,
			        open ? "open, the image has none" : "not open");
			if (!open || !want[i].open)
				continue;
			T_CHECK(!strcmp(target, want[i].target ? want[i].target : out) &&
			            pos == want[i].pos && ce == want[i].cloexec,
			        "fd %d: %s at %lld, cloexec %d", want[i].fd, target, pos, ce);
		}
	}
	{
		unsigned long long ign = t_proc_status((int)pid, "SigIgn", 16, 0);

		T_CHECK((ign >> (SIGUSR1 - 1) & 1) && (ign >> (SIGTRAP - 1) & 1),
		        "SigIgn %#llx: SIGUSR1 and SIGTRAP ignored as in the image", ign);
	}
	{
		char exe[512], link[64];
		ssize_t n;

		snprintf(link, sizeof(link), "/proc/%d/exe", (int)pid);
		n = readlink(link, exe, sizeof(exe) - 1);
		exe[n > 0 ? n : 0] = '\0';
		T_CHECK(!strcmp(exe, h.exe), "exe %s, want %s", exe, h.exe);
	}
	T_OK(rdmig_restore_resume(&r));
	st = wait_exit(pid, 10);
	T_CHECK(st == 42, "exit status %d, want 42", st);
	close(r.uffd);
	fd = open(out, O_RDONLY);
	if (fd >= 0) {
		ssize_t n = read(fd, buf, sizeof(buf) - 1);

		buf[n > 0 ? n : 0] = '\0';
		close(fd);
	}
	T_CHECK(!strcmp(buf, "hellorestored\n"), "file holds \"%s\"", buf);
}

static void refuse_changed_file(void)
{
	static struct hand_image h;
	struct rdmig_restored r;
	struct rdmig_husk *husk = take_husk();
	char out[256], lib[256], why[512] = "";
	struct stat st;
	pid_t pid = rdmig_husk_pid(husk);

	snprintf(out, sizeof(out), "%s/refuse.out", tmpdir);
	snprintf(lib, sizeof(lib), "%s/mapped.bin", tmpdir);
	write_file(out, "hello");
	write_file(lib, "0123456789abcdef");
	hand_image(&h, out);
	stat(lib, &st);
	h.files[1] = (struct rdmig_img_file){.path = lib,
	                                     .size = (uint64_t)st.st_size + 1,
	                                     .mtime_sec = st.st_mtim.tv_sec,
	                                     .mtime_nsec = (uint32_t)st.st_mtim.tv_nsec};
	h.img.nfiles = 2;
	h.vmas[h.img.nvmas++] = (struct rdmig_img_vma){
	    0x50000000, 0x50001000, PROT_READ, RDMIG_VMA_FILE_PRIVATE, 0, 1, 0, NULL, NULL};
	int ret = rdmig_restore_build(husk, &h.img, NULL, &r, why, sizeof(why));
	T_CHECK(ret < 0, "build of an image with a changed file succeeded");
	T_CHECK(strstr(why, lib) && strstr(why, "differs") && strstr(why, "bytes"), "why: \"%s\"",
	        why);
	T_CHECK(pid_gone(pid), "husk %d still exists", (int)pid);
	if (!ret) {
		rdmig_restore_abort(&r);
	}
}

/* A descriptor's file gone on this host: refused before any descriptor is
 * opened (the whole step is one batch of calls), with the path in the reason,
 * and the husk is gone. */
static void refuse_missing_fd_file(void)
{
	static struct hand_image h;
	struct rdmig_restored r;
	struct rdmig_husk *husk = husks[HUSK_MISSING_FD];
	char out[256], gone[256], why[512] = "";
	pid_t pid = rdmig_husk_pid(husk);

	husks[HUSK_MISSING_FD] = NULL; /* the build's, whatever it says */
	snprintf(out, sizeof(out), "%s/missing.out", tmpdir);
	snprintf(gone, sizeof(gone), "%s/gone.log", tmpdir);
	write_file(out, "hello");
	hand_image(&h, out);
	/* fd 6 names a file that is not there */
	h.files[2] = (struct rdmig_img_file){.path = gone, .mode = S_IFREG | 0644};
	h.img.nfiles = 3;
	h.fds[2].file = 2;
	int ret = rdmig_restore_build(husk, &h.img, NULL, &r, why, sizeof(why));
	T_CHECK(ret < 0, "build of an image whose fd 6 file is missing succeeded");
	T_CHECK(strstr(why, gone) && strstr(why, "missing") && strstr(why, "fd 6"), "why: \"%s\"",
	        why);
	T_CHECK(pid_gone(pid), "husk %d still exists", (int)pid);
	if (!ret)
		rdmig_restore_abort(&r);
}

/* ---- capture -> restore round trip ---- */

#define WL_BYTES (32u << 20)
#define WL_STEPS 300

static uint64_t wl_initial_sum(void)
{
	uint64_t s = 0;

	for (uint64_t i = 0; i < WL_BYTES / 8; i++)
		s += i * 0x9e3779b97f4a7c15ull;
	return s;
}

/* The number the prebuild gives the husk's userfaultfd (restore_task.c: the
 * highest below RLIMIT_NOFILE, 65535 at most; the husk's limit is ours). */
static int high_fd(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return -1;
	return rl.rlim_cur > 65536 ? 65535 : (int)rl.rlim_cur - 1;
}

/* Set for a workload that also keeps its output at high_fd(): the prebuilt
 * userfaultfd's number, which the restore must then give up. */
static bool wl_high_fd;

static void workload(const char *path, bool nobody)
{
	size_t n = WL_BYTES / 8;
	uint64_t *m =
	    mmap(NULL, WL_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int fd, nul = open("/dev/null", O_RDONLY);

	if (m == MAP_FAILED || nul < 0)
		_exit(100);
	dup2(nul, 0);
	close_range(3, ~0u, 0); /* whatever the harness left open (a pipe cannot move) */
	for (size_t i = 0; i < n; i++)
		m[i] = i * 0x9e3779b97f4a7c15ull;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || (wl_high_fd && dup2(fd, high_fd()) < 0))
		_exit(101);
	if (nobody) {
		gid_t g = 65534;

		if (prctl(PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0) ||
		    prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0) || setgroups(1, &g) ||
		    setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
			_exit(102);
	}
	for (int i = 0; i < WL_STEPS; i++) {
		char line[96];
		uint64_t s = 0;
		struct timespec ts = {0, 10 * 1000 * 1000};

		m[((size_t)i * 4099u) % n] += 1;
		for (size_t k = 0; k < n; k++)
			s += m[k];
		int len = snprintf(line, sizeof(line), "i=%d sum=%llu\n", i, (unsigned long long)s);

		if (write(fd, line, (size_t)len) != len)
			_exit(103);
		nanosleep(&ts, NULL); /* EINTR after a restore: just go on */
	}
	close(fd);
	_exit(42);
}

/* ---- the multi-threaded workload ---- */

struct mt_shared {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	volatile int stop, woken;
	volatile int bad; /* a thread saw a wrong tid */
	volatile int bad_tid, bad_cached;
	volatile uint64_t *counter[4];
};

static struct mt_shared mt = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* glibc 2.36 x86_64: struct pthread at the thread pointer, tid at 0x2d0.
 * The thread may be migrated between any two instructions here: the cache is
 * read before and after gettid() until both reads agree, so the tid and the
 * cached value come from the same side; pthread_kill gets three tries (it reads
 * the cache and then calls tgkill). */
static void mt_check_self(void)
{
	/* glibc's struct pthread is aligned; the cast goes through uintptr_t for clang */
	volatile int *cache = (volatile int *)(uintptr_t)((uintptr_t)pthread_self() + 0x2d0);
	int c1, c2, tries = 0;
	pid_t tid;

	do {
		c1 = *cache;
		tid = (pid_t)syscall(SYS_gettid);
		c2 = *cache;
	} while (c1 != c2);
	if (c2 != tid)
		mt.bad = 1;
	while (!mt.bad && pthread_kill(pthread_self(), 0) != 0)
		if (++tries == 3)
			mt.bad = 2;
	if (mt.bad && !mt.bad_tid)
		mt.bad_tid = tid, mt.bad_cached = c2;
}

static void *mt_counter(void *arg)
{
	volatile uint64_t *c = mt.counter[(uintptr_t)arg];

	while (!mt.stop) {
		for (int i = 0; i < 100000; i++)
			(*c)++;
		mt_check_self();
		sched_yield();
	}
	return NULL;
}

static void *mt_waiter(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mt.mu);
	while (!mt.stop)
		pthread_cond_wait(&mt.cv, &mt.mu);
	mt.woken = 1;
	pthread_mutex_unlock(&mt.mu);
	mt_check_self();
	return NULL;
}

static void *mt_sleeper(void *arg)
{
	(void)arg;
	while (!mt.stop) {
		struct timespec ts = {0, 30 * 1000 * 1000};

		(*mt.counter[3])++;
		nanosleep(&ts, NULL);
		mt_check_self();
	}
	return NULL;
}

#define MT_STEPS 200

/* A 4 MiB stack whose top is 2 MiB-aligned. */
static int mt_aligned_stack(pthread_attr_t *a)
{
	const size_t huge = 2u << 20, len = 2 * huge;
	uint8_t *p =
	    mmap(NULL, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *top;

	if (p == MAP_FAILED)
		return -1;
	top = (uint8_t *)(((uintptr_t)p + len + huge - 1) & ~(uintptr_t)(huge - 1));
	if (top - len > p && munmap(p, (size_t)(top - len - p)))
		return -1;
	if (top < p + len + huge && munmap(top, (size_t)(p + len + huge - top)))
		return -1;
	return pthread_attr_setstack(a, top - len, len);
}

static void workload_mt(const char *path)
{
	pthread_attr_t wattr;
	pthread_t th[4];
	int fd, nul = open("/dev/null", O_RDONLY);

	if (nul < 0)
		_exit(100);
	dup2(nul, 0);
	close_range(3, ~0u, 0);
	for (int k = 0; k < 4; k++) {
		void *p =
		    mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			_exit(100);
		mt.counter[k] = p;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		_exit(101);
	/* The waiter's stack ends on a 2 MiB boundary, as python's thread stacks
	 * do below its 64 MiB-aligned malloc arenas: its TCB page and the stack
	 * pages under it share one huge-page-sized block, where a kernel with THP
	 * "always" fills the whole block on the first write to any page of it. */
	if (pthread_attr_init(&wattr) || mt_aligned_stack(&wattr))
		_exit(102);
	if (pthread_create(&th[0], NULL, mt_counter, (void *)0) ||
	    pthread_create(&th[1], NULL, mt_counter, (void *)1) ||
	    pthread_create(&th[2], &wattr, mt_waiter, NULL) ||
	    pthread_create(&th[3], NULL, mt_sleeper, NULL))
		_exit(102);
	for (int i = 0; i < MT_STEPS; i++) {
		char line[96];
		struct timespec ts = {0, 10 * 1000 * 1000};
		int len = snprintf(line, sizeof(line), "i=%d\n", i);

		mt_check_self();
		if (write(fd, line, (size_t)len) != len)
			_exit(103);
		nanosleep(&ts, NULL);
	}
	pthread_mutex_lock(&mt.mu);
	mt.stop = 1;
	pthread_cond_broadcast(&mt.cv);
	pthread_mutex_unlock(&mt.mu);
	for (int k = 0; k < 4; k++)
		if (pthread_join(th[k], NULL))
			_exit(104);
	if (mt.bad)
		dprintf(fd, "bad %d tid %d cached %d\n", mt.bad, mt.bad_tid, mt.bad_cached);
	/* 110 + which check failed */
	if (mt.bad || !mt.woken || !*mt.counter[0] || !*mt.counter[1] || !*mt.counter[3])
		_exit(110 + (mt.bad ? 1 : 0) + (!mt.woken ? 2 : 0) + (!*mt.counter[0] ? 4 : 0) +
		      (!*mt.counter[1] ? 8 : 0) + (!*mt.counter[3] ? 16 : 0));
	if (write(fd, "joined\n", 7) != 7)
		_exit(103);
	close(fd);
	_exit(42);
}

static void check_output_mt(const char *path)
{
	char line[128];
	FILE *f = fopen(path, "re");
	int want = 0, bad = 0, joined = 0;

	T_CHECK(f, "open %s", path);
	while (f && fgets(line, sizeof(line), f)) {
		int i;

		if (want == MT_STEPS && !strcmp(line, "joined\n")) {
			joined = 1;
			continue;
		}
		if (sscanf(line, "i=%d", &i) != 1 || i != want)
			bad++;
		want++;
	}
	if (f)
		fclose(f);
	T_CHECK(want == MT_STEPS && !bad && joined, "%d lines, %d bad, joined %d", want, bad,
	        joined);
}

static int count_lines(const char *path)
{
	FILE *f = fopen(path, "re");
	int n = 0, c;

	while (f && (c = fgetc(f)) != EOF)
		n += c == '\n';
	if (f)
		fclose(f);
	return n;
}

/* Every line i=<n> sum=<S0+n+1>, n = 0..WL_STEPS-1 in order. */
static void check_output(const char *path)
{
	uint64_t s0 = wl_initial_sum();
	char line[128];
	FILE *f = fopen(path, "re");
	int want = 0, bad = 0;

	T_CHECK(f, "open %s", path);
	while (f && fgets(line, sizeof(line), f)) {
		int i;
		unsigned long long s;

		if (sscanf(line, "i=%d sum=%llu", &i, &s) != 2 || i != want ||
		    s != s0 + (uint64_t)i + 1) {
			if (bad++ < 5)
				T_CHECK(0, "line %d: \"%.*s\" (want i=%d sum=%llu)", want,
				        (int)strcspn(line, "\n"), line, want,
				        (unsigned long long)(s0 + (uint64_t)want + 1));
			if (sscanf(line, "i=%d", &i) == 1)
				want = i;
		}
		want++;
	}
	if (f)
		fclose(f);
	T_CHECK(want == WL_STEPS && !bad, "%d lines, %d bad (want %d)", want, bad, WL_STEPS);
}

/* The pager's job, done by hand: every touched ANON page from the original. */
static int copy_touched(pid_t orig, const struct rdmig_image *img, struct rdmig_restored *r,
                        uint64_t *pages)
{
	static uint8_t buf[1u << 20];

	*pages = 0;
	for (uint32_t v = 0; v < img->nvmas; v++) {
		const struct rdmig_img_vma *vma = &img->vmas[v];
		uint64_t np = (vma->end - vma->start) / RDMIG_IMG_PAGE;

		if (vma->kind != RDMIG_VMA_ANON || !vma->touched)
			continue;
		for (uint64_t p = 0; p < np;) {
			uint64_t q = p;

			if (!(vma->touched[p / 8] >> (p % 8) & 1)) {
				p++;
				continue;
			}
			while (q < np && (vma->touched[q / 8] >> (q % 8) & 1) &&
			       (q - p) * RDMIG_IMG_PAGE < sizeof(buf))
				q++;
			uint64_t addr = vma->start + p * RDMIG_IMG_PAGE;
			size_t len = (size_t)(q - p) * RDMIG_IMG_PAGE;
			struct iovec local = {buf, len}, remote = {(void *)(uintptr_t)addr, len};

			if (process_vm_readv(orig, &local, 1, &remote, 1, 0) != (ssize_t)len)
				return -errno ? -errno : -EIO;
			int ret = rdmig_restore_write(r, addr, buf, len);

			if (ret)
				return ret;
			*pages += q - p;
			p = q;
		}
	}
	return 0;
}

/* One page present (or swapped) and not sent: say which, count it. */
static void stray_one(const struct rdmig_image *img, const struct rdmig_img_vma *vma, uint64_t a,
                      uint64_t *n)
{
	for (uint32_t k = 0; k < img->ncow; k++)
		if (img->cow[k].addr == a)
			return;
	if ((*n)++ < 3)
		fprintf(stderr, "  present but not sent: %#llx (vma %#llx-%#llx)\n",
		        (unsigned long long)a, (unsigned long long)vma->start,
		        (unsigned long long)vma->end);
}

/* The pager's premise: after the build, no page of anonymous memory is present
 * in the process except those sent eagerly (a present page is never fetched:
 * the process would read whatever the kernel put there). Counts the others.
 * PAGEMAP_SCAN where there is one (under ASan the image has terabytes of shadow
 * mappings: entry by entry would take hours), else the pagemap 512 entries at a
 * time (kernels before 6.7, where processes here are small). */
static uint64_t stray_present(pid_t pid, const struct rdmig_image *img)
{
	char path[64];
	uint64_t n = 0;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return UINT64_MAX;
	for (uint32_t v = 0; v < img->nvmas; v++) {
		const struct rdmig_img_vma *vma = &img->vmas[v];
		struct page_region regs[64];
		uint64_t at = vma->start;

		if (vma->kind != RDMIG_VMA_ANON)
			continue;
		while (at < vma->end) {
			struct pm_scan_arg a = {
			    .size = sizeof(a),
			    .start = at,
			    .end = vma->end,
			    .vec = (uint64_t)(uintptr_t)regs,
			    .vec_len = 64,
			    .category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
			    .return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
			};
			long k = ioctl(fd, PAGEMAP_SCAN, &a);

			if (k < 0)
				break;
			for (long i = 0; i < k; i++)
				for (uint64_t p = regs[i].start; p < regs[i].end;
				     p += RDMIG_IMG_PAGE)
					stray_one(img, vma, p, &n);
			if (a.walk_end <= at)
				break;
			at = a.walk_end;
		}
		/* no PAGEMAP_SCAN (or it failed): the entries themselves */
		while (at < vma->end) {
			uint64_t e[512], cnt = (vma->end - at) / RDMIG_IMG_PAGE;

			cnt = cnt > 512 ? 512 : cnt;
			if (pread(fd, e, cnt * 8, (off_t)(at / RDMIG_IMG_PAGE * 8)) !=
			    (ssize_t)(cnt * 8)) {
				close(fd);
				return UINT64_MAX;
			}
			for (uint64_t i = 0; i < cnt; i++)
				if (e[i] >> 62 & 3)
					stray_one(img, vma, at + i * RDMIG_IMG_PAGE, &n);
			at += cnt * RDMIG_IMG_PAGE;
		}
	}
	close(fd);
	return n;
}

/* Is fd (any fd when fd == 0) of pid a userfaultfd? */
static bool uffd_in_proc(pid_t pid, int fd)
{
	char path[64], link[128];
	int lo = fd ? fd : 0, hi = fd ? fd : 65535;

	for (int i = lo; i <= hi; i++) {
		ssize_t n;

		snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)pid, i);
		n = readlink(path, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = '\0';
		if (strstr(link, "userfaultfd"))
			return true;
	}
	return false;
}

/* How the tests below change a running process's layout before the prebuild,
 * as the process could have between the layout and the freeze. */
enum pre_mode {
	PRE_NONE,
	PRE_FOLLOW, /* vmas gone, added and changed: the build must follow them */
	PRE_RESET,  /* another exe: the build must start from an empty husk */
};

#define FAKE_VMA 0x200000000000ull

static void perturb_layout(struct rdmig_image *lay, enum pre_mode mode)
{
	struct rdmig_img_vma *v;
	uint32_t i, at;
	bool dropped = false, changed = false;

	if (mode == PRE_RESET) {
		free(lay->exe);
		lay->exe = strdup("/bin/true");
		T_CHECK(lay->exe != NULL, "strdup");
		return;
	}
	/* the workload's big mapping is not in the prebuilt husk: mapped at the build */
	for (i = 0; i < lay->nvmas && !dropped; i++) {
		if (lay->vmas[i].kind == RDMIG_VMA_ANON &&
		    lay->vmas[i].end - lay->vmas[i].start == WL_BYTES) {
			memmove(&lay->vmas[i], &lay->vmas[i + 1],
			        (lay->nvmas - i - 1) * sizeof(lay->vmas[0]));
			lay->nvmas--;
			dropped = true;
		}
	}
	T_CHECK(dropped, "no %u-byte mapping in the layout", (unsigned)WL_BYTES);
	/* one other anonymous mapping prebuilt executable: unmapped, mapped again */
	for (i = 0; i < lay->nvmas && !changed; i++) {
		if (lay->vmas[i].kind == RDMIG_VMA_ANON && !(lay->vmas[i].prot & PROT_EXEC)) {
			lay->vmas[i].prot |= PROT_EXEC;
			changed = true;
		}
	}
	T_CHECK(changed, "no anonymous mapping to change in the layout");
	/* a mapping the process no longer has: unmapped at the build */
	v = realloc(lay->vmas, (lay->nvmas + 1) * sizeof(*v));
	T_CHECK(v != NULL, "realloc");
	if (!v)
		return;
	lay->vmas = v;
	at = lay->nvmas;
	for (i = 0; i < lay->nvmas; i++) {
		T_CHECK(lay->vmas[i].end <= FAKE_VMA || lay->vmas[i].start >= FAKE_VMA + 65536,
		        "the fake mapping's place is taken");
		if (at == lay->nvmas && lay->vmas[i].start > FAKE_VMA)
			at = i;
	}
	memmove(&v[at + 1], &v[at], (lay->nvmas - at) * sizeof(*v));
	v[at] = (struct rdmig_img_vma){.start = FAKE_VMA,
	                               .end = FAKE_VMA + 65536,
	                               .prot = PROT_READ | PROT_WRITE,
	                               .kind = RDMIG_VMA_ANON,
	                               .file = UINT32_MAX};
	lay->nvmas++;
}

/* The written file pages the layout carried, as the daemons use them: the
 * prebuild writes them, the image names those still the same, and the restore
 * must leave each page as the frozen original has it. Before the prebuild, two
 * of them become what the process could have done since: one page rewritten
 * (the layout's bytes differ from the freeze's), and one page the layout has
 * and the process does not (dropped with madvise since; here, the first page of
 * a mapping of its exe, with bytes the file does not have). */
static void perturb_layout_pages(struct rdmig_image *lay, uint64_t *changed, uint64_t *dropped)
{
	const struct rdmig_img_vma *v = NULL;
	struct rdmig_img_cow_page *n;
	uint32_t at = 0;

	*changed = *dropped = 0;
	T_CHECK(lay->ncow > 0, "the layout has no written file pages");
	for (uint32_t i = 0; i < lay->ncow; i++) {
		v = rdmig_image_vma_at(lay, lay->cow[i].addr);
		T_CHECK(v && v->kind == RDMIG_VMA_FILE_PRIVATE,
		        "layout page %#llx outside a "
		        "private file mapping",
		        (unsigned long long)lay->cow[i].addr);
	}
	if (!lay->ncow)
		return;
	lay->cow[0].data[123] ^= 0x5a;
	*changed = lay->cow[0].addr;
	for (uint32_t i = 0; i < lay->nvmas && !*dropped; i++) {
		v = &lay->vmas[i];
		if (v->kind == RDMIG_VMA_FILE_PRIVATE && v->file < lay->nfiles && lay->exe &&
		    !strcmp(lay->files[v->file].path, lay->exe) &&
		    !rdmig_image_cow_find(lay->cow, lay->ncow, v->start))
			*dropped = v->start;
	}
	T_CHECK(*dropped, "no page of the exe's mappings to drop");
	if (!*dropped)
		return;
	n = realloc(lay->cow, (lay->ncow + 1) * sizeof(*n));
	T_CHECK(n != NULL, "realloc");
	if (!n)
		return;
	lay->cow = n;
	while (at < lay->ncow && n[at].addr < *dropped)
		at++;
	memmove(&n[at + 1], &n[at], (lay->ncow - at) * sizeof(*n));
	n[at].addr = *dropped;
	n[at].ahead = false;
	memset(n[at].data, 0xa5, RDMIG_IMG_PAGE);
	lay->ncow++;
}

/* Each of these pages that lies in a private file mapping of img reads the same
 * in the restored process as in the frozen original. */
static void same_layout_pages(pid_t orig, pid_t restored, const struct rdmig_image *img,
                              const struct rdmig_img_cow_page *lay, uint32_t n)
{
	static uint8_t a[RDMIG_IMG_PAGE], b[RDMIG_IMG_PAGE];
	char pa[64], pb[64];
	int fa, fb;

	snprintf(pa, sizeof(pa), "/proc/%d/mem", (int)orig);
	snprintf(pb, sizeof(pb), "/proc/%d/mem", (int)restored);
	fa = open(pa, O_RDONLY | O_CLOEXEC);
	fb = open(pb, O_RDONLY | O_CLOEXEC);
	T_CHECK(fa >= 0 && fb >= 0, "open /proc/PID/mem");
	for (uint32_t i = 0; fa >= 0 && fb >= 0 && i < n; i++) {
		const struct rdmig_img_vma *v = rdmig_image_vma_at(img, lay[i].addr);
		off_t at = (off_t)lay[i].addr;

		if (!v || v->kind != RDMIG_VMA_FILE_PRIVATE)
			continue;
		T_CHECK(pread(fa, a, sizeof(a), at) == (ssize_t)sizeof(a) &&
		            pread(fb, b, sizeof(b), at) == (ssize_t)sizeof(b),
		        "reading the page at %#llx", (unsigned long long)lay[i].addr);
		T_CHECK(!memcmp(a, b, sizeof(a)),
		        "the page at %#llx differs from the original's after the build",
		        (unsigned long long)lay[i].addr);
	}
	if (fa >= 0)
		close(fa);
	if (fb >= 0)
		close(fb);
}

/* Does pid map anything at addr? */
static bool maps_has(pid_t pid, uint64_t addr)
{
	char path[64], line[512];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "re");
	while (f && !found && fgets(line, sizeof(line), f)) {
		unsigned long long s, e;

		found = sscanf(line, "%llx-%llx", &s, &e) == 2 && s <= addr && addr < e;
	}
	if (f)
		fclose(f);
	return found;
}

static void same_exe(pid_t a, pid_t b)
{
	char pa[64], pb[64], la[4096] = "", lb[4096] = "";

	snprintf(pa, sizeof(pa), "/proc/%d/exe", (int)a);
	snprintf(pb, sizeof(pb), "/proc/%d/exe", (int)b);
	T_CHECK(readlink(pa, la, sizeof(la) - 1) > 0 && readlink(pb, lb, sizeof(lb) - 1) > 0 &&
	            !strcmp(la, lb),
	        "exe %s, the original's %s", la, lb);
}

static void roundtrip(bool nobody, bool threads, enum pre_mode pre)
{
	/* the prebuilt ones: husks 5, 6 and 7, emptied by main() */
	int hi = 4 + pre + (wl_high_fd ? 2 : 0);
	struct rdmig_husk *husk = pre == PRE_NONE ? take_husk() : husks[hi];
	struct rdmig_image img = {0};
	struct rdmig_restored r = {.pid = -1, .uffd = -1};
	struct rdmig_tracee *t = NULL;
	char out[256], why[512] = "", desc[1024], st_orig[2048], st_new[2048];
	pid_t orig, hpid = rdmig_husk_pid(husk);
	uint64_t pages = 0, changed = 0, dropped = 0;
	struct rdmig_img_cow_page *lay_cow = NULL; /* the daemons' copy of the layout's */
	uint32_t nlay_cow = 0;
	double t0;
	int ret, st;

	if (pre != PRE_NONE)
		husks[hi] = NULL; /* ours now */
	snprintf(out, sizeof(out), "%s/roundtrip-%s%s%s.out", tmpdir,
	         threads  ? "threads"
	         : nobody ? "nobody"
	                  : "root",
	         pre == PRE_FOLLOW  ? "-follow"
	         : pre == PRE_RESET ? "-reset"
	                            : "",
	         wl_high_fd ? "-highfd" : "");
	fflush(NULL);
	orig = fork();
	if (orig == 0 && threads)
		workload_mt(out);
	if (orig == 0)
		workload(out, nobody);
	T_CHECK(orig > 0, "fork");
	t0 = t_now_s();
	while (count_lines(out) < 20 && t_now_s() - t0 < 20)
		usleep(10000);
	T_CHECK(count_lines(out) >= 20, "the workload wrote %d lines", count_lines(out));

	ret = rdmig_capture_check(orig, why, sizeof(why));
	T_CHECK(ret == 0, "capture_check: %d %s", ret, why);
	if (pre != PRE_NONE) {
		struct rdmig_image lay;

		/* while it runs, as the source does before the freeze */
		ret = rdmig_capture_layout(orig, &lay, why, sizeof(why));
		T_CHECK(ret == 0, "capture_layout: %d %s", ret, why);
		if (ret)
			goto out_kill;
		T_CHECK(lay.nthreads == 1 && lay.threads[0].tid == orig && lay.nfds == 0 &&
		            lay.nvmas > 3 && lay.vdso_len,
		        "layout: %u threads, %u fds, %u vmas", lay.nthreads, lay.nfds, lay.nvmas);
		for (uint32_t i = 0; i < lay.nvmas; i++)
			T_CHECK(!lay.vmas[i].touched, "the layout's vma %u has pages", i);
		perturb_layout(&lay, pre);
		if (pre == PRE_FOLLOW)
			perturb_layout_pages(&lay, &changed, &dropped);
		nlay_cow = lay.ncow;
		lay_cow = malloc((nlay_cow + 1) * sizeof(*lay_cow));
		T_CHECK(lay_cow != NULL, "malloc");
		if (!lay_cow)
			goto out_kill;
		memcpy(lay_cow, lay.cow, nlay_cow * sizeof(*lay_cow));
		ret = rdmig_husk_prebuild(husk, &lay, why, sizeof(why));
		T_CHECK(ret == 0, "prebuild: %d %s", ret, why);
		T_CHECK(lay.nvmas == 0 && !lay.vmas, "the layout was not taken");
		rdmig_image_free(&lay);
		T_CHECK(pre != PRE_FOLLOW || maps_has(hpid, FAKE_VMA),
		        "the prebuilt husk lacks the layout's mapping");
		if (ret)
			goto out_kill;
	}
	ret = rdmig_tracee_seize(orig, 0, &t);
	T_CHECK(ret == 0, "seize: %d", ret);
	if (ret)
		goto out_kill;
	ret = rdmig_capture(t, &img, NULL, why, sizeof(why));
	T_CHECK(ret == 0, "capture: %d %s", ret, why);
	if (ret)
		goto out_kill;
	if (pre != PRE_NONE) {
		/* what the daemons do with the image: the source names the pages that
		 * did not change, the destination fills them back in */
		uint32_t ncow = img.ncow;

		ret = rdmig_image_mark_ahead(&img, lay_cow, nlay_cow);
		T_CHECK(ret > 0 && (uint32_t)ret + img.ncow == ncow && img.nahead == (uint32_t)ret,
		        "%d of %u pages marked as the layout's", ret, ncow);
		T_CHECK(!rdmig_image_cow_find(img.cow, img.ncow, dropped),
		        "the original has a written page where the test drops one");
		if (changed)
			T_CHECK(rdmig_image_cow_find(img.cow, img.ncow, changed) != NULL,
			        "the page the layout has otherwise is not sent with its bytes");
		T_OK(rdmig_image_fill_ahead(&img, lay_cow, nlay_cow));
	}
	rdmig_image_describe(&img, desc, sizeof(desc));
	{
		struct user_regs_struct regs;

		memcpy(&regs, img.threads[0].regs, sizeof(regs));
		fprintf(stderr, "  image: %s\n  frozen with orig_rax %lld rax %lld\n", desc,
		        (long long)regs.orig_rax, (long long)regs.rax);
	}
	status_creds(orig, st_orig, sizeof(st_orig));

	double tb = t_now_s();
	cpu_set_t ours;

	T_OK(sched_getaffinity(0, sizeof(ours), &ours));
	ret = rdmig_restore_build(husk, &img, NULL, &r, why, sizeof(why));
	husk = NULL;
	T_CHECK(ret == 0, "build: %d %s", ret, why);
	if (ret)
		goto out_kill;
	fprintf(stderr, "  build %.1f ms\n", (t_now_s() - tb) * 1e3);
	{
		/* the husk's affinity is ours (forked from us), in every thread; ours is
		 * as it was before the build */
		cpu_set_t now;

		T_OK(sched_getaffinity(0, sizeof(now), &now));
		T_CHECK(CPU_EQUAL(&now, &ours), "our CPU affinity changed by the build");
		T_CHECK(tasks_not_on(r.pid, &ours) == 0,
		        "%d threads of the restored process keep another CPU affinity",
		        tasks_not_on(r.pid, &ours));
	}
	{
		uint64_t stray = stray_present(r.pid, &img);

		T_CHECK(stray == 0, "%llu pages of anonymous memory present after the build",
		        (unsigned long long)stray);
	}
	ret = copy_touched(orig, &img, &r, &pages);
	T_CHECK(ret == 0, "copying touched pages: %d", ret);
	T_CHECK(threads || pages * RDMIG_IMG_PAGE >= WL_BYTES, "only %llu pages touched",
	        (unsigned long long)pages);
	if (threads) {
		T_CHECK(img.nthreads == 5, "%u threads captured", img.nthreads);
		for (uint32_t i = 0; i < img.nthreads; i++)
			T_CHECK(img.threads[i].tid_cache && img.threads[i].rseq_len &&
			            img.threads[i].clear_child_tid == img.threads[i].tid_cache,
			        "thread %d: tid cache %#llx, rseq %u, clear_child_tid %#llx",
			        (int)img.threads[i].tid,
			        (unsigned long long)img.threads[i].tid_cache,
			        img.threads[i].rseq_len,
			        (unsigned long long)img.threads[i].clear_child_tid);
		T_CHECK(count_tasks(r.pid) == 5, "%d threads in the restored process",
		        count_tasks(r.pid));
	}
	if (pre != PRE_NONE) {
		T_CHECK(!maps_has(r.pid, FAKE_VMA), "a mapping the image lacks was left in place");
		same_exe(r.pid, orig);
		/* the image's anonymous eager pages differ by design (the tid cache,
		 * the rseq area's cpu): only the file pages */
		same_layout_pages(orig, r.pid, &img, lay_cow, nlay_cow);
		same_layout_pages(orig, r.pid, &img, img.cow, img.ncow);
	}
	status_creds(r.pid, st_new, sizeof(st_new));
	T_CHECK(!strcmp(st_orig, st_new), "credentials differ:\noriginal:\n%srestored:\n%s",
	        st_orig, st_new);
	if (nobody) {
		const char *bnd = strstr(st_new, "CapBnd:");
		unsigned long long b = bnd ? strtoull(bnd + 7, NULL, 16) : ~0ull;

		T_CHECK(strstr(st_new, "Uid:\t65534\t65534\t65534\t65534") &&
		            strstr(st_new, "Gid:\t65534\t65534\t65534\t65534") &&
		            strstr(st_new, "CapEff:\t0000000000000000"),
		        "restored as %s", st_new);
		T_CHECK(!(b >> CAP_NET_RAW & 1) && !(b >> CAP_SYS_BOOT & 1),
		        "bounding set %#llx still has CAP_NET_RAW or CAP_SYS_BOOT", b);
	}
	if (ret) {
		rdmig_restore_abort(&r);
		goto out_kill;
	}
	T_CHECK(uffd_in_proc(r.pid, r.uffd_in_proc), "fd %d of the process is not its userfaultfd",
	        r.uffd_in_proc);
	if (wl_high_fd) {
		/* the image's descriptor there, not the userfaultfd made ahead */
		char path[64], link[PATH_MAX];
		ssize_t n;

		snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)r.pid, high_fd());
		n = readlink(path, link, sizeof(link) - 1);
		link[n > 0 ? n : 0] = '\0';
		T_CHECK(r.uffd_in_proc != high_fd() && !strcmp(link, out),
		        "fd %d is %s (want %s), the userfaultfd at %d", high_fd(), link, out,
		        r.uffd_in_proc);
	}
	rdmig_tracee_kill(t); /* the original: frozen, now gone */
	t = NULL;
	T_OK(rdmig_restore_resume(&r));
	/* Running now: seize it again to close its own userfaultfd copy. */
	usleep(50000);
	T_OK(rdmig_restore_drop_uffd(&r));
	T_CHECK(r.uffd_in_proc == -1 && !uffd_in_proc(r.pid, 0),
	        "userfaultfd still in the process");
	st = wait_exit(r.pid, 60);
	T_CHECK(st == 42, "the restored process ended with %d, want 42", st);
	close(r.uffd);
	if (threads)
		check_output_mt(out);
	else
		check_output(out);
out_kill:
	if (t)
		rdmig_tracee_kill(t);
	else if (orig > 0 && !pid_gone(orig))
		wait_exit(orig, 0);
	if (husk)
		rdmig_husk_destroy(husk);
	T_CHECK(hpid <= 0 || pid_gone(hpid) || waitpid(hpid, NULL, WNOHANG) >= 0, "husk left");
	rdmig_image_free(&img);
	free(lay_cow);
}

static void roundtrip_root(void)
{
	roundtrip(false, false, PRE_NONE);
}

static void roundtrip_nobody(void)
{
	roundtrip(true, false, PRE_NONE);
}

static void roundtrip_threads(void)
{
	roundtrip(false, true, PRE_NONE);
}

static void prebuilt_follows(void)
{
	roundtrip(false, false, PRE_FOLLOW);
}

/* As prebuilt_follows, with the process holding a descriptor at the number the
 * prebuild gave its userfaultfd (husk 7). */
static void prebuilt_uffd_number_taken(void)
{
	wl_high_fd = true;
	roundtrip(false, false, PRE_FOLLOW);
	wl_high_fd = false;
}

static void prebuilt_reset(void)
{
	roundtrip(false, false, PRE_RESET);
}

int main(int argc, char **argv)
{
	/* Before anything else, as the daemon does. */
	for (int i = 0; i < NHUSK; i++)
		if (rdmig_husk_spawn(&husks[i])) {
			fprintf(stderr, "cannot fork a husk\n");
			return 1;
		}
	if (argc > 1)
		t_state.only = argv[1];
	if (geteuid() != 0) {
		printf("skip: the restore needs root (ptrace, PR_SET_MM_MAP exe, setresuid)\n");
		for (int i = 0; i < NHUSK; i++)
			rdmig_husk_destroy(husks[i]);
		return 77;
	}
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	chmod(tmpdir, 0755);
	/* Every other husk (and the last two, prebuilt by their tests) emptied ahead
	 * of its build, as the daemon does, the rest emptied by the build itself:
	 * every path restores the same processes. */
	for (int i = 1; i < NHUSK; i++)
		if ((i % 2 || i >= 5) && rdmig_husk_prepare(husks[i])) {
			fprintf(stderr, "cannot prepare husk %d\n", i);
			return 1;
		}
	T_RUN(hand_built);
	T_RUN(refuse_changed_file);
	T_RUN(roundtrip_root);
	T_RUN(roundtrip_nobody);
	T_RUN(roundtrip_threads);
	T_RUN(prebuilt_follows); /* husks 5, 6 and 7: emptied, then prebuilt */
	T_RUN(prebuilt_reset);
	T_RUN(prebuilt_uffd_number_taken);
	T_RUN(refuse_missing_fd_file);
	for (int i = husk_next; i < NHUSK; i++)
		rdmig_husk_destroy(husks[i]);
	if (!getenv("RDMIG_KEEP_TMP")) {
		char cmd[128];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
		if (system(cmd))
			fprintf(stderr, "could not remove %s\n", tmpdir);
	}
	return t_finish();
}
