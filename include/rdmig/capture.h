/*
 * Capture on the source (src/capture.c): what the process is, read from
 * /proc/PID and from its stopped thread, into a struct rdmig_image.
 *
 *   rdmig_capture_check()  before anything is frozen: refuse clearly what this
 *                          version cannot move (the process is not touched);
 *   rdmig_capture()        with the process frozen (a seized, interrupted
 *                          tracee, every thread): per thread registers,
 *                          signals, rseq, robust list,
 *                          clear_child_tid, memory map with file identities and
 *                          the written pages of private file mappings, mm fields,
 *                          auxv, credentials, rlimits, cwd, umask, personality,
 *                          descriptors, and which anonymous pages hold data.
 *
 * Everything read from /proc is checked before use (lengths, numbers, paths);
 * a line that does not parse is an error, not a guess.
 *
 * Errors: 0 or -errno; -EOPNOTSUPP with the reason in `why` for something this
 * version cannot migrate.
 */
#ifndef RDMIG_CAPTURE_H
#define RDMIG_CAPTURE_H

#include "rdmig/image.h"
#include "rdmig/tracee.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define RDMIG_CAPTURE_WUR __attribute__((warn_unused_result))

/*
 * Refusals (each with a sentence in `why` naming the thing and what to do):
 * more than RDMIG_IMG_MAX_THREADS threads, or a multi-threaded process whose
 * threads do not keep their tid where glibc 2.36 does (src/capture.c); a socket, pipe/FIFO (except stdin/stdout/stderr), eventfd,
 * signalfd, timerfd, epoll, inotify, io_uring or other special descriptor; a
 * directory or device descriptor other than the /dev/null-like ones; a file
 * opened for writing that was deleted; shared memory (MAP_SHARED anonymous,
 * shmem, SysV, or a writable shared file mapping); a mapping of a deleted file;
 * a seccomp filter; a process that is itself being traced; a root directory
 * other than /; a zombie or a kernel thread.
 * Returns 0 when the process can be migrated, -EOPNOTSUPP (why filled), or
 * -ESRCH / -EACCES / -errno when /proc cannot be read.
 */
RDMIG_CAPTURE_WUR int rdmig_capture_check(pid_t pid, char *why, size_t whylen);

/*
 * What the image cannot carry to another host, refused the same way: a private
 * anonymous mapping over 8 TiB (its page bitmap would pass
 * RDMIG_IMG_MAX_TOUCHED_BYTES; a sanitizer's shadow memory is one). The capture
 * itself takes such a process (an image that stays in memory has no limit).
 */
RDMIG_CAPTURE_WUR int rdmig_capture_check_wire(pid_t pid, char *why, size_t whylen);

/*
 * Fill img from the frozen process (t seized and interrupted). Injected calls
 * ask the thread for what /proc does not show (signal handlers, alternate stack,
 * clear_child_tid, brk); the scratch area is unmapped again before the memory
 * map is read, so it never appears in the image. ANON vmas get their `touched`
 * bitmaps (pages present or swapped, excluding the shared zero page); private
 * file mappings' written pages are copied into img->cow.
 *
 * known (may be NULL): written file pages read earlier (the layout's cow, sorted
 * by address), after rdmig_precopy_track_files protected their mappings. A page
 * among them in a mapping still tracked whose PAGEMAP_SCAN entry says it was not
 * written since is taken from there instead of being read from the process
 * (~10-40 us a page here, inside the freeze); any doubt (a mapping replaced,
 * moved or never tracked, a kernel that cannot say) reads the page.
 * On failure img is freed (zeroed) and the tracee is as it was.
 */
struct rdmig_capture_known {
	const struct rdmig_img_cow_page *pages;
	uint32_t n;
	/* Leave the ANON vmas' page walk out of the freeze: each gets
	 * RDMIG_VMA_F_HELD and no bitmaps; rdmig_capture_walk_part fills them in
	 * later, part by part, while the process is still frozen here. */
	bool hold_anon;
	/* With hold_anon, work for the wait on the thread's first return to user
	 * mode (capture.c: 0.1-2 ms here, with /proc read before it ends): called
	 * while that return lasts, once img->vmas is complete (the eager pages are
	 * not known yet: img->cow lacks them), until it returns 0 (nothing left)
	 * or -errno (the capture goes on; the caller keeps its error). */
	int (*idle)(void *arg, struct rdmig_image *img);
	void *idle_arg;
	/* Answers of the injected calls asked at the tracking start
	 * (rdmig_capture_early): used, and nothing injected in the freeze, when
	 * they still hold; NULL: asked in the freeze. */
	struct rdmig_capture_early *early;
};
/*
 * The injected calls' answers asked ahead, with every thread of t stopped (the
 * tracking start's stop), and a watch on the process's calls from then on
 * (src/callwatch.h): at the freeze, rdmig_capture uses them when the watch saw
 * none of the calls that change them and no signal delivered, the threads are
 * the same and so are the signals with a handler; otherwise it asks again.
 *   _start: open the watch; nothing is done to the process. -errno when it
 *           cannot be watched (no perf tracepoints, no right to them): the
 *           freeze then asks, as without.
 *   _ask:   the injected calls, then the watch's start. -errno as for any
 *           injected call (the process's state is then in doubt, as when the
 *           tracking's own injections fail); e is then never used.
 */
struct rdmig_capture_early;
RDMIG_CAPTURE_WUR int rdmig_capture_early_start(struct rdmig_tracee *t,
                                                struct rdmig_capture_early **out);
RDMIG_CAPTURE_WUR int rdmig_capture_early_ask(struct rdmig_capture_early *e,
                                              struct rdmig_tracee *t);
void rdmig_capture_early_free(struct rdmig_capture_early *e); /* accepts NULL */
/* Whether the last rdmig_capture given e took its answers from it. */
bool rdmig_capture_early_used(const struct rdmig_capture_early *e);
/* The brk _ask read: true and *brk set, false before it (or without e). */
bool rdmig_capture_early_brk(const struct rdmig_capture_early *e, uint64_t *brk);

RDMIG_CAPTURE_WUR int rdmig_capture(struct rdmig_tracee *t, struct rdmig_image *img,
                                    const struct rdmig_capture_known *known, char *why,
                                    size_t whylen);

/*
 * The page walk of [start, end) of img's held ANON vma v (start and end inside
 * it, start a multiple of 8 pages from v->start), the process still frozen:
 * sets v's touched bits for the pages with data there (allocating the bitmap
 * on first use) and, where the kernel can say (*written_known), v's written bits
 * for those written since write-tracking protected them. The eager pages of
 * img->cow there are not marked touched (the restore wrote them). pm_fd: the
 * process's /proc/PID/pagemap. Returns the pages with data found, or -errno.
 */
RDMIG_CAPTURE_WUR int64_t rdmig_capture_walk_part(int pm_fd, const struct rdmig_image *img,
                                                  struct rdmig_img_vma *v, uint64_t start,
                                                  uint64_t end, bool *written_known);

/*
 * The layout of a process that keeps running (nothing stops it): an image whose
 * memory map, files, vdso, exe, cwd, mm fields (brk = start_brk), auxv,
 * credentials and rlimits are read from /proc, with the written pages of its
 * private file mappings as they are now (img->cow; a page that cannot be read is
 * left out); no anonymous pages, and its one thread record holds the pid only;
 * no descriptors or signals. The destination builds the map into its husk, and
 * writes those pages there, before the freeze (rdmig_husk_prebuild); the image
 * then names the pages that did not change (rdmig_image_mark_ahead). The same
 * refusals as rdmig_capture_check. On failure img is freed (zeroed).
 */
RDMIG_CAPTURE_WUR int rdmig_capture_layout(pid_t pid, struct rdmig_image *img, char *why,
                                           size_t whylen);

/* One line per part, for logs and tests ("vmas 23 (anon 9, 61 MiB touched) ..."). */
void rdmig_image_describe(const struct rdmig_image *img, char *buf, size_t cap);

#endif /* RDMIG_CAPTURE_H */
