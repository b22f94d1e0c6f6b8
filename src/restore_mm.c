/*
 * Restore, the address space: empty the husk, move the kernel's special
 * mappings to the recorded addresses, set the mm fields, map every vma and
 * write the copy-on-write pages of private file mappings.
 *
 * File identity is size and mtime (seconds and nanoseconds). dev and ino are in
 * the image but not compared: two hosts with identical files (the same package,
 * the same container image) give them different numbers.
 *
 * Injected calls run from the syscall instruction in the husk's [vdso], so every
 * other mapping of the husk (the daemon's code, libc, its stack) can go while
 * the thread is stopped; only the vdso has to stay mapped, and after it moves
 * the syscall instruction is searched for again.
 */
#define LOG_SUBSYS "restore"

#include "restore_int.h"

#include "rdmig/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif
#define K_RSEQ_FLAG_UNREGISTER 1

struct k_rseq_conf { /* struct ptrace_rseq_configuration */
	uint64_t rseq_abi_pointer;
	uint32_t rseq_abi_size;
	uint32_t signature;
	uint32_t flags;
	uint32_t pad;
};

struct mrange {
	uint64_t start, end;
	int kind; /* RDMIG_VMA_VDSO/VVAR/VVAR_VCLOCK, 0 for an ordinary one */
};

static const char *special_name(int kind)
{
	switch (kind) {
	case RDMIG_VMA_VDSO:
		return "[vdso]";
	case RDMIG_VMA_VVAR:
		return "[vvar]";
	case RDMIG_VMA_VVAR_VCLOCK:
		return "[vvar_vclock]";
	default:
		return "?";
	}
}

static bool is_special(uint32_t kind)
{
	return kind == RDMIG_VMA_VDSO || kind == RDMIG_VMA_VVAR || kind == RDMIG_VMA_VVAR_VCLOCK;
}

/* The husk's mappings, [vsyscall] left out (it cannot be unmapped or moved). */
static int read_maps(struct rst *r, struct mrange **out, size_t *n)
{
	char path[64], line[4352];
	struct mrange *v = NULL;
	size_t cnt = 0, cap = 0;
	FILE *f;
	int err = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)r->pid);
	f = fopen(path, "re");
	if (!f)
		return rst_fail(r, -errno, "cannot read %s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		unsigned long long s, e;
		int name_at = 0;
		char *name;

		if (sscanf(line, "%llx-%llx %*s %*s %*s %*s %n", &s, &e, &name_at) != 2 ||
		    !name_at) {
			err = rst_fail(r, -EBADMSG, "cannot parse a line of %s: %s", path, line);
			break;
		}
		name = line + name_at;
		name[strcspn(name, "\n")] = '\0';
		if (!strcmp(name, "[vsyscall]"))
			continue;
		if (cnt == cap) {
			struct mrange *nv = realloc(v, (cap = cap ? cap * 2 : 32) * sizeof(*v));

			if (!nv) {
				err = rst_fail(r, -ENOMEM, "out of memory reading %s", path);
				break;
			}
			v = nv;
		}
		v[cnt].start = s;
		v[cnt].end = e;
		v[cnt].kind = !strcmp(name, "[vdso]")          ? RDMIG_VMA_VDSO
		              : !strcmp(name, "[vvar]")        ? RDMIG_VMA_VVAR
		              : !strcmp(name, "[vvar_vclock]") ? RDMIG_VMA_VVAR_VCLOCK
		                                               : 0;
		cnt++;
	}
	fclose(f);
	if (err) {
		free(v);
		return err;
	}
	*out = v;
	*n = cnt;
	return 0;
}

int rst_clean_husk(struct rst *r)
{
	struct k_rseq_conf rc = {0};
	struct mrange *m = NULL;
	size_t n = 0, i;
	int err;

	/* glibc registered rseq in the daemon; its area is about to be unmapped and
	 * the kernel would keep writing into whatever lands there. */
	if (ptrace(PTRACE_GET_RSEQ_CONFIGURATION, r->pid, (void *)sizeof(rc), &rc) < 0)
		return rst_fail(r, -errno, "cannot read the husk's rseq registration: %s",
		                strerror(errno));
	/* a NULL pointer: not registered (6.1 reports a size even then, and the
	 * husk may be emptied twice: after a prebuild the build could not follow) */
	if (rc.rseq_abi_size && rc.rseq_abi_pointer &&
	    (err = rst_call(r, "rseq(unregister)", NULL, SYS_rseq, (long)rc.rseq_abi_pointer,
	                    rc.rseq_abi_size, K_RSEQ_FLAG_UNREGISTER, rc.signature, 0, 0)))
		return err;
	if ((err = rst_call(r, "close_range(3, ~0)", NULL, SYS_close_range, 3, (long)~0u, 0, 0, 0,
	                    0)))
		return err;
	err = rdmig_tracee_scratch_unmap(r->t);
	if (err)
		return rst_fail(r, err, "could not unmap the scratch area: %s", strerror(-err));
	if ((err = read_maps(r, &m, &n)))
		return err;
	for (i = 0; i < n && !err; i++) {
		uint64_t s = m[i].start, e = m[i].end;

		if (m[i].kind)
			continue;
		while (i + 1 < n && !m[i + 1].kind && m[i + 1].start == e)
			e = m[++i].end;
		err = rst_call(r, "munmap(husk mapping)", NULL, SYS_munmap, (long)s, (long)(e - s),
		               0, 0, 0, 0);
	}
	free(m);
	if (err)
		return err;
	if ((err = read_maps(r, &m, &n)))
		return err;
	for (i = 0; i < n && !err; i++)
		if (!m[i].kind)
			err = rst_fail(r, -EBUSY,
			               "the husk still has a mapping at %#" PRIx64 "-%#" PRIx64
			               " after it was emptied",
			               m[i].start, m[i].end);
	free(m);
	return err;
}

static bool overlaps(uint64_t s1, uint64_t e1, uint64_t s2, uint64_t e2)
{
	return s1 < e2 && s2 < e1;
}

/* A free block of len bytes: nothing of the husk there now, no image vma there
 * later. */
static int temp_block(struct rst *r, const struct mrange *m, size_t n, uint64_t len, uint64_t *base)
{
	for (uint64_t b = 0x100000000000ull; b + len < RDMIG_IMG_USER_END; b += 0x10000000000ull) {
		bool busy = false;

		for (size_t i = 0; i < n && !busy; i++)
			busy = overlaps(b, b + len, m[i].start, m[i].end);
		for (uint32_t i = 0; i < r->img->nvmas && !busy; i++)
			busy = overlaps(b, b + len, r->img->vmas[i].start, r->img->vmas[i].end);
		if (!busy) {
			*base = b;
			return 0;
		}
	}
	return rst_fail(r, -ENOMEM, "no free address range to move the vdso through");
}

static int check_vdso_bytes(struct rst *r, const struct mrange *here)
{
	uint64_t len = here->end - here->start;
	uint8_t *buf;
	int err;

	if (!r->img->vdso || r->img->vdso_len != len)
		return rst_fail(r, -EOPNOTSUPP,
		                "the destination kernel's vdso differs from the source's (%" PRIu64
		                " bytes here, %u in the image); migrate between hosts running the "
		                "same kernel build",
		                len, r->img->vdso_len);
	buf = malloc(len);
	if (!buf)
		return rst_fail(r, -ENOMEM, "out of memory comparing the vdso");
	err = rdmig_tracee_read(r->t, here->start, buf, len);
	if (err)
		err = rst_fail(r, err, "cannot read the husk's vdso: %s", strerror(-err));
	else if (memcmp(buf, r->img->vdso, len))
		err =
		    rst_fail(r, -EOPNOTSUPP,
		             "the destination kernel's vdso differs from the source's; glibc keeps "
		             "pointers into it, so migrate between hosts running the same "
		             "kernel build");
	free(buf);
	return err;
}

/* Injection runs from the vdso's syscall instruction: look for it again after
 * every move of the vdso, or the next injected call jumps into nothing. */
static int follow_vdso(struct rst *r, uint64_t start, uint64_t end)
{
	int err = rdmig_tracee_find_syscall(r->t, start, end);

	if (err)
		return rst_fail(r, err, "no syscall instruction in the moved vdso: %s",
		                strerror(-err));
	return 0;
}

int rst_move_specials(struct rst *r)
{
	const struct rdmig_image *img = r->img;
	struct mrange *m = NULL;
	uint64_t total = 0, base = 0, at;
	const struct rdmig_img_vma *want[RDMIG_VMA_KIND_MAX + 1] = {0};
	struct mrange *have[RDMIG_VMA_KIND_MAX + 1] = {0};
	size_t n = 0, i;
	int err, k;

	for (i = 0; i < img->nvmas; i++) {
		const struct rdmig_img_vma *v = &img->vmas[i];

		if (!is_special(v->kind))
			continue;
		if (want[v->kind])
			return rst_fail(r, -EINVAL, "the image has %s twice",
			                special_name((int)v->kind));
		want[v->kind] = v;
	}
	if (!want[RDMIG_VMA_VDSO])
		return rst_fail(r, -EOPNOTSUPP, "the image has no [vdso] mapping");
	if ((err = read_maps(r, &m, &n)))
		return err;
	for (i = 0; i < n; i++)
		have[m[i].kind] = &m[i];
	for (k = RDMIG_VMA_VDSO; k <= RDMIG_VMA_VVAR_VCLOCK && !err; k++) {
		uint64_t wl = want[k] ? want[k]->end - want[k]->start : 0;
		uint64_t hl = have[k] ? have[k]->end - have[k]->start : 0;

		if (wl != hl)
			err = rst_fail(r, -EOPNOTSUPP,
			               "the destination kernel's special mappings differ from the "
			               "source's: %s is %" PRIu64 " KiB here and %" PRIu64
			               " KiB in the image; migrate between hosts running the same "
			               "kernel",
			               special_name(k), hl >> 10, wl >> 10);
		total += hl;
	}
	if (!err)
		err = check_vdso_bytes(r, have[RDMIG_VMA_VDSO]);
	if (!err)
		err = temp_block(r, m, n, total, &base);
	/* Through a block that overlaps neither their current nor their final
	 * places, so no move lands on a special mapping not yet moved. */
	at = base;
	for (k = RDMIG_VMA_VDSO; k <= RDMIG_VMA_VVAR_VCLOCK && !err; k++) {
		uint64_t len;

		if (!have[k])
			continue;
		len = have[k]->end - have[k]->start;
		err = rst_call(r, "mremap(special mapping to a temporary place)", NULL, SYS_mremap,
		               (long)have[k]->start, (long)len, (long)len,
		               MREMAP_MAYMOVE | MREMAP_FIXED, (long)at, 0);
		have[k]->start = at;
		have[k]->end = at + len;
		at += len;
		if (!err && k == RDMIG_VMA_VDSO)
			err = follow_vdso(r, have[k]->start, have[k]->end);
	}
	for (k = RDMIG_VMA_VDSO; k <= RDMIG_VMA_VVAR_VCLOCK && !err; k++) {
		uint64_t len;

		if (!have[k])
			continue;
		len = have[k]->end - have[k]->start;
		err = rst_call(r, "mremap(special mapping to its recorded address)", NULL,
		               SYS_mremap, (long)have[k]->start, (long)len, (long)len,
		               MREMAP_MAYMOVE | MREMAP_FIXED, (long)want[k]->start, 0);
		if (!err && k == RDMIG_VMA_VDSO)
			err = follow_vdso(r, want[k]->start, want[k]->end);
	}
	free(m);
	return err;
}

int rst_avoid_layout(struct rst *r)
{
	const struct rdmig_image *img = r->img;
	int err = 0;

	for (uint32_t i = 0; i < img->nvmas && !err; i++) {
		uint64_t s = img->vmas[i].start, e = img->vmas[i].end;

		while (i + 1 < img->nvmas && img->vmas[i + 1].start == e)
			e = img->vmas[++i].end;
		err = rdmig_tracee_scratch_avoid(r->t, s, e);
	}
	if (err)
		return rst_fail(r, err, "cannot keep scratch memory out of the image's layout: %s",
		                strerror(-err));
	return 0;
}

/* The prebuild set pre's mm fields and auxv into the husk already (and
 * nothing since changes them: the relayout maps and unmaps, which leaves
 * them alone). The fields are fixed for a process's life but for brk, and
 * auxv is, so the freeze's image mostly has the same: then the step is
 * skipped, a prctl and its stop out of the downtime (0.26 ms here). */
static bool mm_prebuilt(const struct rst *r)
{
	const struct rdmig_image *img = r->img, *pre = r->pre;

	return pre && !memcmp(&pre->mm, &img->mm, sizeof(img->mm)) &&
	       pre->auxv_len == img->auxv_len &&
	       (!img->auxv_len || !memcmp(pre->auxv, img->auxv, img->auxv_len));
}

int rst_set_mm(struct rst *r)
{
	const struct rdmig_image *img = r->img;
	struct prctl_mm_map mm = {
	    .start_code = img->mm.start_code,
	    .end_code = img->mm.end_code,
	    .start_data = img->mm.start_data,
	    .end_data = img->mm.end_data,
	    .start_brk = img->mm.start_brk,
	    .brk = img->mm.brk,
	    .start_stack = img->mm.start_stack,
	    .arg_start = img->mm.arg_start,
	    .arg_end = img->mm.arg_end,
	    .env_start = img->mm.env_start,
	    .env_end = img->mm.env_end,
	    .auxv_size = img->auxv_len,
	    .exe_fd = (uint32_t)-1,
	};
	uint8_t buf[sizeof(mm) + RDMIG_IMG_MAX_AUXV];
	int exefd = -1, err;
	uint64_t at;

	if (img->auxv_len > RDMIG_IMG_MAX_AUXV)
		return rst_fail(r, -EINVAL, "the image's auxv is too long (%u bytes)",
		                img->auxv_len);
	if (mm_prebuilt(r))
		return 0;
	/* a prebuilt husk has its exe (the same path) and maps it already: the
	 * kernel would refuse the change anyway */
	if (img->exe && !r->pre && (err = rst_open(r, img->exe, O_RDONLY | O_CLOEXEC, 0, &exefd)))
		return err;
	mm.exe_fd = (uint32_t)exefd;
	for (int attempt = 0; attempt < 2; attempt++) {
		/* Scratch is fetched again each time: struct first, auxv right after. */
		if ((err = rdmig_tracee_scratch(r->t, sizeof(buf), &at))) {
			err = rst_fail(r, err, "no scratch memory in the husk: %s", strerror(-err));
			break;
		}
		mm.auxv = (__u64 *)(uintptr_t)(img->auxv_len ? at + sizeof(mm) : 0);
		memcpy(buf, &mm, sizeof(mm));
		if (img->auxv_len)
			memcpy(buf + sizeof(mm), img->auxv, img->auxv_len);
		if ((err = rst_to_scratch(r, buf, sizeof(mm) + img->auxv_len, &at)))
			break;
		err = rdmig_tracee_call(r->t, "prctl(PR_SET_MM_MAP)", NULL, SYS_prctl, PR_SET_MM,
		                        PR_SET_MM_MAP, (long)at, sizeof(mm), 0, 0);
		if (err == -EPERM && mm.exe_fd != (uint32_t)-1) {
			/* Needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN: keep the husk's
			 * exe link rather than fail the migration over it. */
			pr_warn("pid %d: /proc/PID/exe cannot be set to %s (EPERM: no "
			        "CAP_CHECKPOINT_RESTORE); it keeps pointing at the daemon",
			        (int)r->pid, img->exe);
			mm.exe_fd = (uint32_t)-1;
			continue;
		}
		if (err)
			err = rst_fail(
			    r, err,
			    "prctl(PR_SET_MM_MAP) refused the image's mm fields (brk %#" PRIx64
			    ", stack %#" PRIx64 "): %s",
			    img->mm.brk, img->mm.start_stack, strerror(-err));
		break;
	}
	rst_close(r, exefd);
	return err;
}

static int check_file(struct rst *r, const struct rdmig_img_file *f)
{
	struct stat st;

	if (stat(f->path, &st) < 0)
		return rst_fail(r, -errno,
		                "the file %s, mapped by the process, is missing here: %s", f->path,
		                strerror(errno));
	if (!S_ISREG(st.st_mode))
		return rst_fail(r, -EOPNOTSUPP,
		                "the file %s, mapped by the process, is not a regular file here",
		                f->path);
	if ((uint64_t)st.st_size != f->size)
		return rst_fail(r, -ESTALE,
		                "the file %s differs from the source's: it is %lld bytes here and "
		                "was %" PRIu64 " bytes on the source",
		                f->path, (long long)st.st_size, f->size);
	if (st.st_mtim.tv_sec != f->mtime_sec || (uint64_t)st.st_mtim.tv_nsec != f->mtime_nsec)
		return rst_fail(
		    r, -ESTALE,
		    "the file %s differs from the source's: modified at %lld.%09ld here "
		    "and %" PRId64 ".%09u on the source",
		    f->path, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec, f->mtime_sec,
		    f->mtime_nsec);
	return 0;
}

static int map_one(struct rst *r, const struct rdmig_img_vma *v, int *hfd, bool *checked)
{
	const struct rdmig_image *img = r->img;
	long flags, ret;
	int fd = -1, err;

	if (v->kind == RDMIG_VMA_ANON) {
		flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
		if (v->flags & RDMIG_VMA_F_GROWSDOWN)
			flags |= MAP_GROWSDOWN;
	} else if (v->kind == RDMIG_VMA_FILE_PRIVATE || v->kind == RDMIG_VMA_FILE_SHARED_RO) {
		if (v->file >= img->nfiles)
			return rst_fail(r, -EINVAL, "vma %#" PRIx64 " names file %u of %u",
			                v->start, v->file, img->nfiles);
		if (!checked[v->file]) {
			if ((err = check_file(r, &img->files[v->file])))
				return err;
			checked[v->file] = true;
		}
		/* Read-only is enough for a private mapping, written or not, and for
		 * the shared read-only ones the capture allows. */
		if (hfd[v->file] < 0 && (err = rst_open(r, img->files[v->file].path,
		                                        O_RDONLY | O_CLOEXEC, 0, &hfd[v->file])))
			return err;
		fd = hfd[v->file];
		flags = (v->kind == RDMIG_VMA_FILE_PRIVATE ? MAP_PRIVATE : MAP_SHARED) |
		        MAP_FIXED_NOREPLACE;
	} else {
		return rst_fail(r, -EINVAL, "vma %#" PRIx64 " has unknown kind %u", v->start,
		                v->kind);
	}
	err = rdmig_tracee_call(r->t, "mmap", &ret, SYS_mmap, (long)v->start,
	                        (long)(v->end - v->start), v->prot, flags, fd, (long)v->pgoff);
	if (err == -ENOMEM && v->kind == RDMIG_VMA_ANON && (v->prot & PROT_WRITE)) {
		/* The image does not say which mappings were MAP_NORESERVE; a huge
		 * reservation (ASan's shadow: terabytes) only fits that way. */
		pr_info("pid %d: %#" PRIx64 "-%#" PRIx64 " mapped MAP_NORESERVE (too large to "
		        "account)",
		        (int)r->pid, v->start, v->end);
		err = rdmig_tracee_call(r->t, "mmap", &ret, SYS_mmap, (long)v->start,
		                        (long)(v->end - v->start), v->prot, flags | MAP_NORESERVE,
		                        fd, (long)v->pgoff);
	}
	if (err == -EEXIST)
		return rst_fail(r, err,
		                "the address range %#" PRIx64 "-%#" PRIx64
		                " is already taken in the husk",
		                v->start, v->end);
	if (err)
		return rst_fail(r, err, "mapping %#" PRIx64 "-%#" PRIx64 "%s%s failed: %s",
		                v->start, v->end, fd >= 0 ? " of " : "",
		                fd >= 0 ? img->files[v->file].path : "", strerror(-err));
	if ((uint64_t)ret != v->start)
		return rst_fail(r, -EEXIST, "the kernel placed %#" PRIx64 " at %#lx", v->start,
		                ret);
	return 0;
}

/* The layout's written pages of private file mappings, written into the
 * prebuilt husk (the restore then writes only those that changed since). A
 * layout page elsewhere is not written (the source sends none; the restore
 * never counts on one). */
int rst_prewrite_pages(struct rst *r)
{
	const struct rdmig_image *img = r->img;

	for (uint32_t i = 0; i < img->ncow; i++) {
		const struct rdmig_img_vma *v = rdmig_image_vma_at(img, img->cow[i].addr);
		int err;

		if (!v || v->kind != RDMIG_VMA_FILE_PRIVATE)
			continue;
		err = rdmig_tracee_write(r->t, img->cow[i].addr, img->cow[i].data, RDMIG_IMG_PAGE);
		if (err)
			return rst_fail(r, err,
			                "writing the layout's page at %#" PRIx64 " failed: %s",
			                img->cow[i].addr, strerror(-err));
	}
	return 0;
}

/* The page at a, in the image's vma vi, as the prebuild wrote it and still there:
 * the vma was kept, and the layout had the page in a private file mapping. */
static bool prewritten(const struct rst *r, uint32_t vi, uint64_t a)
{
	return r->pre && r->kept && r->kept[vi] &&
	       r->img->vmas[vi].kind == RDMIG_VMA_FILE_PRIVATE &&
	       rdmig_image_cow_find(r->pre->cow, r->pre->ncow, a);
}

/* Give pages [first, first + n pages) back to the file's bytes. */
static int dontneed_run(struct rst *r, uint64_t first, uint64_t n)
{
	if (!n)
		return 0;
	return rst_call(r, "madvise(MADV_DONTNEED) of pages the layout had written", NULL,
	                SYS_madvise, (long)first, (long)(n * RDMIG_IMG_PAGE), MADV_DONTNEED, 0, 0,
	                0);
}

/* Pages the prebuild wrote that the process no longer has as its own copies (it
 * dropped them with madvise, or mapped the file again in the same place): back
 * to the file's bytes, in runs. */
static int drop_stale_prewritten(struct rst *r)
{
	const struct rdmig_image *img = r->img, *pre = r->pre;
	uint64_t first = 0, n = 0;
	int err = 0;

	if (!pre || !r->kept)
		return 0;
	for (uint32_t i = 0; i < pre->ncow && !err; i++) {
		uint64_t a = pre->cow[i].addr;
		const struct rdmig_img_vma *v = rdmig_image_vma_at(img, a);

		if (!v || !prewritten(r, (uint32_t)(v - img->vmas), a) ||
		    rdmig_image_cow_find(img->cow, img->ncow, a))
			continue;
		if (n && a == first + n * RDMIG_IMG_PAGE) {
			n++;
			continue;
		}
		err = dontneed_run(r, first, n);
		first = a;
		n = 1;
	}
	return err ? err : dontneed_run(r, first, n);
}

/* After rst_nohugepage: with THP "always", the first write into an anonymous
 * range that may hold a huge page fills all 2 MiB of it, and every other page
 * of that block is then present, zero, and never fetched. */
int rst_eager_pages(struct rst *r)
{
	const struct rdmig_image *img = r->img;
	uint32_t vi = 0, skipped = 0;
	int err;

	for (uint32_t i = 0; i < img->ncow; i++) {
		uint64_t a = img->cow[i].addr;

		while (vi < img->nvmas && img->vmas[vi].end <= a)
			vi++;
		/* private file mappings' written pages, and pages of anonymous memory
		 * sent eagerly (the threads' tid caches) */
		if (vi == img->nvmas || a < img->vmas[vi].start ||
		    (img->vmas[vi].kind != RDMIG_VMA_FILE_PRIVATE &&
		     img->vmas[vi].kind != RDMIG_VMA_ANON))
			return rst_fail(r, -EINVAL,
			                "the image has a written page at %#" PRIx64
			                " outside private memory",
			                a);
		/* the layout's bytes, written there by the prebuild already */
		if (img->cow[i].ahead && prewritten(r, vi, a)) {
			skipped++;
			continue;
		}
		err = rdmig_tracee_write(r->t, a, img->cow[i].data, RDMIG_IMG_PAGE);
		if (err)
			return rst_fail(r, err, "writing the page at %#" PRIx64 " failed: %s", a,
			                strerror(-err));
	}
	err = drop_stale_prewritten(r);
	if (!err && r->pre)
		pr_info("pid %d: %u of %u written pages were in place since the prebuild",
		        (int)r->pid, skipped, img->ncow);
	return err;
}

/* The image's non-special vmas, but those with keep[i] set. */
static int map_vmas(struct rst *r, const bool *keep, uint32_t *mapped)
{
	const struct rdmig_image *img = r->img;
	int *hfd = malloc((img->nfiles + 1) * sizeof(*hfd));
	bool *checked = calloc(img->nfiles + 1, sizeof(*checked));
	int err = 0;

	if (!hfd || !checked) {
		free(hfd);
		free(checked);
		return rst_fail(r, -ENOMEM, "out of memory");
	}
	for (uint32_t i = 0; i < img->nfiles; i++)
		hfd[i] = -1;
	for (uint32_t i = 0; i < img->nvmas && !err; i++) {
		const struct rdmig_img_vma *v = &img->vmas[i];

		if (is_special(v->kind) || (keep && keep[i]))
			continue;
		err = map_one(r, v, hfd, checked);
		if (!err && keep && v->kind == RDMIG_VMA_ANON)
			err = rst_call(r, "madvise(MADV_NOHUGEPAGE)", NULL, SYS_madvise,
			               (long)v->start, (long)(v->end - v->start), MADV_NOHUGEPAGE,
			               0, 0, 0);
		if (!err && mapped)
			(*mapped)++;
	}
	for (uint32_t i = 0; i < img->nfiles; i++)
		rst_close(r, hfd[i]);
	free(hfd);
	free(checked);
	return err;
}

int rst_map_vmas(struct rst *r)
{
	return map_vmas(r, NULL, NULL);
}

static bool same_file(const struct rdmig_img_file *a, const struct rdmig_img_file *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime_sec == b->mtime_sec && a->mtime_nsec == b->mtime_nsec &&
	       a->mode == b->mode && !strcmp(a->path, b->path);
}

/* The same mapping: range, protection, kind, flags, and the same file at the
 * same offset. */
static bool same_vma(const struct rdmig_image *ia, const struct rdmig_img_vma *a,
                     const struct rdmig_image *ib, const struct rdmig_img_vma *b)
{
	/* HELD says how the pages come, not what the mapping is */
	if (a->start != b->start || a->end != b->end || a->prot != b->prot || a->kind != b->kind ||
	    (a->flags & ~RDMIG_VMA_F_HELD) != (b->flags & ~RDMIG_VMA_F_HELD))
		return false;
	if (a->kind != RDMIG_VMA_FILE_PRIVATE && a->kind != RDMIG_VMA_FILE_SHARED_RO)
		return true;
	return a->pgoff == b->pgoff && a->file < ia->nfiles && b->file < ib->nfiles &&
	       same_file(&ia->files[a->file], &ib->files[b->file]);
}

/* The special mapping of kind k, or NULL. */
static const struct rdmig_img_vma *special_of(const struct rdmig_image *img, uint32_t k)
{
	for (uint32_t i = 0; i < img->nvmas; i++)
		if (img->vmas[i].kind == k)
			return &img->vmas[i];
	return NULL;
}

bool rst_can_relayout(const struct rdmig_image *pre, const struct rdmig_image *img)
{
	if (!pre->exe || !img->exe || strcmp(pre->exe, img->exe))
		return false;
	for (uint32_t k = RDMIG_VMA_VDSO; k <= RDMIG_VMA_VVAR_VCLOCK; k++) {
		const struct rdmig_img_vma *a = special_of(pre, k), *b = special_of(img, k);

		if (!a != !b || (a && (a->start != b->start || a->end != b->end)))
			return false;
	}
	return true;
}

/* The husk holds r->pre's vmas (rdmig_husk_prebuild) and rst_can_relayout said
 * yes: unmap each prebuilt vma the image does not have as it is, then map each
 * image vma not already there (both lists ascend and never overlap themselves,
 * so one merge pass pairs them; what is unmapped first leaves room for what
 * comes). */
int rst_relayout(struct rst *r)
{
	const struct rdmig_image *img = r->img, *pre = r->pre;
	bool *keep = calloc(img->nvmas + 1, sizeof(*keep));
	uint32_t kept = 0, unmapped = 0, mapped = 0, i = 0, j = 0;
	int err = 0;

	if (!keep)
		return rst_fail(r, -ENOMEM, "out of memory");
	for (; j < pre->nvmas && !err; j++) {
		const struct rdmig_img_vma *p = &pre->vmas[j];

		if (is_special(p->kind))
			continue;
		while (i < img->nvmas && img->vmas[i].end <= p->start)
			i++;
		if (i < img->nvmas && same_vma(img, &img->vmas[i], pre, p)) {
			keep[i] = true;
			kept++;
			continue;
		}
		err = rst_call(r, "munmap(prebuilt mapping)", NULL, SYS_munmap, (long)p->start,
		               (long)(p->end - p->start), 0, 0, 0, 0);
		unmapped++;
	}
	if (!err)
		err = map_vmas(r, keep, &mapped);
	r->kept = keep; /* rst_eager_pages: the prebuild's pages there are in place */
	if (!err)
		pr_info("pid %d: prebuilt map followed: %u vmas kept, %u unmapped, %u mapped",
		        (int)r->pid, kept, unmapped, mapped);
	return err;
}

int rst_nohugepage(struct rst *r)
{
	const struct rdmig_image *img = r->img;
	int err = 0;

	for (uint32_t i = 0; i < img->nvmas && !err; i++) {
		uint64_t s = img->vmas[i].start, e = img->vmas[i].end;

		if (img->vmas[i].kind != RDMIG_VMA_ANON)
			continue;
		while (i + 1 < img->nvmas && img->vmas[i + 1].kind == RDMIG_VMA_ANON &&
		       img->vmas[i + 1].start == e)
			e = img->vmas[++i].end;
		err = rst_call(r, "madvise(MADV_NOHUGEPAGE)", NULL, SYS_madvise, (long)s,
		               (long)(e - s), MADV_NOHUGEPAGE, 0, 0, 0);
	}
	return err;
}
