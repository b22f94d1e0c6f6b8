/*
 * libFuzzer target for the process image decoder: any bytes from a peer must
 * decode or be refused, never read outside the buffer or trip UB. A decoded
 * image is walked as restore walks it (every vma, file, fd and written page),
 * each invariant the decoder promises is checked here without its help, and the
 * image must encode again to the very bytes it came from (one encoding per
 * image). Run with -close_fd_mask=2: the decoder logs one line per refusal.
 */
#include "rdmig/image.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
	if (!ok)
		__builtin_trap();
}

static bool path_ok(const char *s)
{
	size_t n = s ? strnlen(s, RDMIG_IMG_MAX_PATH + 1) : 0;

	if (n == 0 || n > RDMIG_IMG_MAX_PATH || s[0] != '/')
		return false;
	for (size_t i = 0; i < n; i++) {
		if ((uint8_t)s[i] < 0x20 || (uint8_t)s[i] == 0x7f)
			return false;
	}
	return true;
}

static void walk_vmas(const struct rdmig_image *img)
{
	for (uint32_t i = 0; i < img->nvmas; i++) {
		const struct rdmig_img_vma *v = &img->vmas[i];
		bool file =
		    v->kind == RDMIG_VMA_FILE_PRIVATE || v->kind == RDMIG_VMA_FILE_SHARED_RO;
		uint64_t pages;

		check(v->start % RDMIG_IMG_PAGE == 0 && v->end % RDMIG_IMG_PAGE == 0);
		check(v->start < v->end && v->end <= RDMIG_IMG_USER_END);
		check(i == 0 || v->start >= img->vmas[i - 1].end);
		check(v->kind >= RDMIG_VMA_ANON && v->kind <= RDMIG_VMA_KIND_MAX);
		check(!(v->flags & ~RDMIG_VMA_F_ALL) && !(v->prot & ~7u));
		check(file ? v->file < img->nfiles && v->pgoff % RDMIG_IMG_PAGE == 0
		           : v->file == UINT32_MAX);
		if (file)
			check(img->files[v->file].path != NULL);
		pages = (v->end - v->start) / RDMIG_IMG_PAGE;
		if (v->touched) {
			uint64_t n = 0;

			check(v->kind == RDMIG_VMA_ANON);
			/* every byte of the bitmap is readable (ASan watches) */
			for (uint64_t p = 0; p < pages; p++)
				n += (v->touched[p / 8] >> (p % 8)) & 1;
			check(rdmig_image_vma_touched(v) == n);
		} else {
			check(rdmig_image_vma_touched(v) == 0);
		}
		check(rdmig_image_vma_at(img, v->start) == v);
		check(rdmig_image_vma_at(img, v->end - 1) == v);
	}
}

static void walk(const struct rdmig_image *img)
{
	check(memchr(img->comm, 0, sizeof(img->comm)) != NULL);
	check(path_ok(img->exe) && path_ok(img->cwd));
	check(img->umask <= 0777);
	check(img->auxv_len % 16 == 0 && img->auxv_len <= RDMIG_IMG_MAX_AUXV &&
	      !img->auxv == !img->auxv_len);
	check(img->creds.ngroups <= RDMIG_IMG_MAX_GROUPS &&
	      !img->creds.groups == !img->creds.ngroups);
	check(img->nthreads >= 1 && img->nthreads <= RDMIG_IMG_MAX_THREADS && img->threads &&
	      img->threads[0].tid == img->pid);
	for (uint32_t i = 0; i < img->nthreads; i++) {
		const struct rdmig_img_thread *t = &img->threads[i];

		check(t->xstate_len <= RDMIG_IMG_MAX_XSTATE && !t->xstate == !t->xstate_len);
		check(t->nsiginfo <= RDMIG_IMG_MAX_SIGINFO && !t->siginfo == !t->nsiginfo);
		check(memchr(t->comm, 0, sizeof(t->comm)) != NULL && t->tid > 0);
		for (uint32_t j = 0; j < i; j++)
			check(img->threads[j].tid != t->tid);
		/* a tid cache is an aligned int inside a vma */
		check(!t->tid_cache ||
		      (t->tid_cache % 4 == 0 && rdmig_image_vma_at(img, t->tid_cache) != NULL));
	}
	check(img->nsiginfo_shared <= RDMIG_IMG_MAX_SIGINFO &&
	      !img->siginfo_shared == !img->nsiginfo_shared);
	check(img->vdso_len <= RDMIG_IMG_MAX_VDSO && !img->vdso == !img->vdso_len);
	check(img->nfiles <= RDMIG_IMG_MAX_FILES && img->nvmas <= RDMIG_IMG_MAX_VMAS &&
	      img->nfds <= RDMIG_IMG_MAX_FDS && img->ncow <= RDMIG_IMG_MAX_COW_PAGES);
	for (uint32_t i = 0; i < img->nfiles; i++)
		check(path_ok(img->files[i].path));
	walk_vmas(img);
	for (uint32_t i = 0; i < img->nfds; i++) {
		const struct rdmig_img_fd *f = &img->fds[i];

		check(f->fd >= 0 && (i == 0 || f->fd > img->fds[i - 1].fd));
		if (f->kind == RDMIG_FD_STDIO)
			check(f->fd <= 2 && f->file == UINT32_MAX);
		else
			check((f->kind == RDMIG_FD_FILE || f->kind == RDMIG_FD_DEVNULL) &&
			      f->file < img->nfiles);
	}
	for (uint32_t i = 0; i < img->ncow; i++) {
		const struct rdmig_img_vma *v = rdmig_image_vma_at(img, img->cow[i].addr);

		check(img->cow[i].addr % RDMIG_IMG_PAGE == 0);
		check(i == 0 || img->cow[i].addr > img->cow[i - 1].addr);
		/* written eagerly: a private file mapping's copy-on-write page, or an
		 * anonymous page the restore writes before the pager runs (a thread's
		 * tid cache), which is then never also fetched */
		check(v && (v->kind == RDMIG_VMA_FILE_PRIVATE || v->kind == RDMIG_VMA_ANON));
		if (v->kind == RDMIG_VMA_ANON && v->touched) {
			uint64_t b = (img->cow[i].addr - v->start) / RDMIG_IMG_PAGE;

			check(!(v->touched[b / 8] & (1u << (b % 8))));
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rdmig_image img;
	uint8_t *again;
	size_t len;

	if (rdmig_image_decode(data, size, &img) < 0)
		return 0;
	walk(&img);
	check(rdmig_image_encode(&img, &again, &len) == 0);
	check(len == size && !memcmp(again, data, size));
	free(again);
	rdmig_image_free(&img);
	return 0;
}
