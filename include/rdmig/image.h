/*
 * The process image: everything the destination needs to rebuild a frozen
 * process, except the contents of its lazily served memory (those stay in the
 * source's mirror and arrive by one-sided READs).
 *
 * The capture on the source (src/capture.c) fills a struct rdmig_image; the
 * codec (src/image.c) turns it into bytes that cross the wire in IMAGE chunks;
 * the restore on the destination (src/restore.c) builds the process from the
 * decoded image. The decoder is the only code that reads those bytes before
 * they are trusted: it checks every count, length, address range and index
 * against the limits below and refuses the whole image (-EBADMSG) on any
 * violation, and it has a libFuzzer target (test/fuzz/fuzz_image.c).
 *
 * Encoding: a header {magic "RDMI" le32, version le32, total length le64}, then
 * records {tag le16, flags le16 (0), length le32, payload}, every field
 * little-endian, encoded byte by byte. Unknown tags are refused (a newer source
 * must not be half-understood).
 *
 * Threads (version 2): one THREAD record per thread, 1..RDMIG_IMG_MAX_THREADS of
 * them; threads[0] is the main thread (its tid is the source pid), the others
 * follow in the order the source found them, each with its source tid (unique).
 * The restore gives every thread a new tid; `tid_cache` says where the thread's
 * runtime keeps a copy of its own tid (glibc: struct pthread's `tid`, see
 * src/capture.c), so the restore can rewrite it. The page holding it is sent
 * eagerly (in the COW page list, which may therefore hold pages of ANON vmas
 * too, never marked touched), because the restore writes into it before the
 * pager runs.
 *
 * Errors: 0 or -errno as everywhere in rdmig.
 */
#ifndef RDMIG_IMAGE_H
#define RDMIG_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RDMIG_IMG_WUR __attribute__((warn_unused_result))

#define RDMIG_IMG_MAGIC 0x494d4452u /* "RDMI" on the wire */
#define RDMIG_IMG_VERSION 4u

/* Limits the decoder enforces (a well-formed image from a real process stays far
 * below them). */
#define RDMIG_IMG_MAX_BYTES (256u << 20) /* a whole encoded image */
/* touched bitmaps decoded, in all (runs make them larger than what carries them):
 * 8 TiB of memory. The fuzz target sets it lower (test/CMakeLists.txt). */
#ifndef RDMIG_IMG_MAX_TOUCHED_BYTES
#define RDMIG_IMG_MAX_TOUCHED_BYTES (256ull << 20)
#endif
#define RDMIG_IMG_MAX_VMAS 65530u /* the kernel's default max_map_count */
#define RDMIG_IMG_MAX_FILES 65536u
#define RDMIG_IMG_MAX_FDS 65536u
#define RDMIG_IMG_MAX_PATH 4096u /* bytes, NUL excluded; printable, starts with '/' */
#define RDMIG_IMG_MAX_XSTATE 16384u
#define RDMIG_IMG_MAX_THREADS 1024u
#define RDMIG_IMG_MAX_AUXV 1024u /* bytes */
#define RDMIG_IMG_MAX_GROUPS 65536u
#define RDMIG_IMG_MAX_SIGINFO 4096u /* queued signals */
#define RDMIG_IMG_MAX_COW_PAGES (1u << 20)
#define RDMIG_IMG_MAX_VDSO (64u << 10) /* bytes */
#define RDMIG_IMG_PAGE 4096u
#define RDMIG_IMG_NSIG 64u
#define RDMIG_IMG_NRLIMIT 16u
#define RDMIG_IMG_NREGS 27u    /* struct user_regs_struct on x86_64, as u64 words */
#define RDMIG_IMG_SIGINFO 128u /* sizeof(siginfo_t) */
/* Highest user address on x86_64 with 4-level page tables (exclusive). Every
 * address range in an image ends at or below it. */
#define RDMIG_IMG_USER_END 0x800000000000ull

/* struct rdmig_img_vma.kind */
enum rdmig_vma_kind {
	/* Private anonymous memory ([heap], [stack], malloc arenas, .bss beyond the
	 * file): served lazily from the source's mirror (pages marked in `touched`)
	 * or zero (the rest). */
	RDMIG_VMA_ANON = 1,
	/* A private mapping of a file: mapped from the same file on the destination;
	 * the pages the process wrote (anonymous copies) are in the image's COW page
	 * list and written eagerly. */
	RDMIG_VMA_FILE_PRIVATE,
	/* A read-only shared mapping of a file: mapped shared from the same file. */
	RDMIG_VMA_FILE_SHARED_RO,
	RDMIG_VMA_VDSO,        /* [vdso]: the destination's own is moved here */
	RDMIG_VMA_VVAR,        /* [vvar]: likewise */
	RDMIG_VMA_VVAR_VCLOCK, /* [vvar_vclock] (6.13+): likewise */
	RDMIG_VMA_KIND_MAX = RDMIG_VMA_VVAR_VCLOCK,
};

/* struct rdmig_img_vma.flags */
#define RDMIG_VMA_F_GROWSDOWN 0x1u /* [stack]: mapped MAP_GROWSDOWN */
#define RDMIG_VMA_F_HEAP 0x2u      /* [heap] */
#define RDMIG_VMA_F_STACK 0x4u     /* [stack] */
/* ANON: not walked at the freeze (no touched bitmap): which of its pages hold
 * data comes after the resume, part by part (proto.h's PART), and its pages
 * wait until then on the destination */
#define RDMIG_VMA_F_HELD 0x8u
#define RDMIG_VMA_F_ALL 0xfu

struct rdmig_img_vma {
	uint64_t start, end; /* page aligned, start < end <= RDMIG_IMG_USER_END */
	uint32_t prot;       /* PROT_READ | PROT_WRITE | PROT_EXEC */
	uint32_t kind;       /* enum rdmig_vma_kind */
	uint32_t flags;      /* RDMIG_VMA_F_* */
	uint32_t file;       /* FILE_*: index into files[]; otherwise UINT32_MAX */
	uint64_t pgoff;      /* FILE_*: offset in the file, page aligned */
	/* ANON only: one bit per page (bit i of byte i/8: page start + i*4096), set
	 * when the page held data at the freeze and must be fetched; NULL for a VMA
	 * with no such page. (end-start)/4096 bits, rounded up to whole bytes. */
	uint8_t *touched;
	/* ANON, in memory only (never encoded, never decoded): the capture's scan
	 * also says which of those pages are written since write-tracking last
	 * protected them, so the source's last copy need not walk the page tables
	 * again (precopy.c). Same layout as touched; NULL when not known (no
	 * PAGEMAP_SCAN, or no touched page). */
	uint8_t *written;
};

/* A file that a mapping or a descriptor names, with the identity the destination
 * checks before using it. */
struct rdmig_img_file {
	char *path; /* absolute */
	uint64_t dev, ino, size;
	int64_t mtime_sec;
	uint32_t mtime_nsec;
	uint32_t mode; /* st_mode */
};

/* struct rdmig_img_fd.kind */
enum rdmig_fd_kind {
	RDMIG_FD_FILE = 1, /* a regular file: reopened by path at pos with flags */
	RDMIG_FD_DEVNULL,  /* /dev/null, /dev/zero, /dev/urandom, /dev/random, /dev/full:
			      reopened by path */
	/* stdin/stdout/stderr pointing at a terminal or pipe on the source: connected
	 * on the destination to the daemon's own fd of the same number or to a file
	 * the daemon was given (--stdin/--stdout/--stderr). Only fds 0-2. */
	RDMIG_FD_STDIO,
	RDMIG_FD_KIND_MAX = RDMIG_FD_STDIO,
};

struct rdmig_img_fd {
	int32_t fd;     /* the number in the process */
	uint32_t kind;  /* enum rdmig_fd_kind */
	uint32_t flags; /* open flags as fdinfo shows them (O_ACCMODE, O_APPEND, ...) */
	uint32_t cloexec;
	uint64_t pos;  /* FILE: the offset */
	uint32_t file; /* FILE, DEVNULL: index into files[] (DEVNULL: only path is used) */
};

struct rdmig_img_sigaction {
	uint64_t handler; /* SIG_DFL (0), SIG_IGN (1) or an address */
	uint64_t flags;   /* SA_* as the kernel stores them */
	uint64_t restorer;
	uint64_t mask;
};

struct rdmig_img_thread {
	uint64_t regs[RDMIG_IMG_NREGS]; /* struct user_regs_struct, fs_base/gs_base included */
	uint8_t *xstate;                /* PTRACE_GETREGSET NT_X86_XSTATE */
	uint32_t xstate_len;            /* <= RDMIG_IMG_MAX_XSTATE */
	uint64_t sigmask;               /* blocked */
	uint32_t nsiginfo;              /* pending for this thread */
	uint8_t *siginfo;               /* nsiginfo * RDMIG_IMG_SIGINFO bytes */
	uint64_t altstack_sp, altstack_size;
	uint32_t altstack_flags;
	uint32_t rseq_len; /* 0: no rseq registered */
	uint64_t rseq_addr;
	uint32_t rseq_sig;
	uint64_t robust_head, robust_len; /* 0: none */
	uint64_t clear_child_tid;
	int32_t tid;        /* on the source; threads[0]'s is the pid */
	char comm[16];      /* /proc/PID/task/TID/comm, NUL-terminated */
	uint64_t tid_cache; /* where the thread keeps its own tid (a 4-byte int): 0 for
			       none; else inside a vma, and its page is a COW page */
};

/* The mm fields prctl(PR_SET_MM_MAP) sets, from /proc/PID/stat and brk(0). */
struct rdmig_img_mm {
	uint64_t start_code, end_code, start_data, end_data;
	uint64_t start_brk, brk, start_stack;
	uint64_t arg_start, arg_end, env_start, env_end;
};

struct rdmig_img_creds {
	uint32_t uid[4]; /* real, effective, saved, fs */
	uint32_t gid[4];
	uint32_t ngroups;
	uint32_t *groups;
	uint64_t cap_inh, cap_prm, cap_eff, cap_bnd, cap_amb;
	uint32_t no_new_privs;
};

struct rdmig_img_cow_page {
	uint64_t addr; /* page aligned, inside a FILE_PRIVATE vma */
	/* In memory only, never on the wire: the bytes are the LAYOUT's (set by
	 * rdmig_image_fill_ahead), so a husk prebuilt from that layout may hold
	 * them already. */
	bool ahead;
	uint8_t data[RDMIG_IMG_PAGE];
};

struct rdmig_image {
	int32_t pid;    /* on the source, for messages */
	char comm[16];  /* NUL-terminated */
	char *exe;      /* /proc/PID/exe's path (absolute) */
	char *cwd;      /* absolute */
	uint32_t umask; /* <= 0777 */
	uint32_t personality;

	struct rdmig_img_mm mm;
	uint8_t *auxv; /* raw /proc/PID/auxv, pairs of u64 ending with AT_NULL */
	uint32_t auxv_len;

	struct rdmig_img_creds creds;
	uint64_t rlim_cur[RDMIG_IMG_NRLIMIT], rlim_max[RDMIG_IMG_NRLIMIT];

	struct rdmig_img_sigaction sigactions[RDMIG_IMG_NSIG]; /* [i] is signal i+1 */
	uint32_t nsiginfo_shared;                              /* pending for the process */
	uint8_t *siginfo_shared;

	uint32_t nthreads; /* 1..RDMIG_IMG_MAX_THREADS; threads[0] is the main thread */
	struct rdmig_img_thread *threads;

	/* The source kernel's [vdso] bytes: the restore refuses a destination whose
	 * vdso differs (glibc keeps pointers into it). <= 64 KiB. */
	uint8_t *vdso;
	uint32_t vdso_len;

	uint32_t nvmas; /* sorted by start, not overlapping */
	struct rdmig_img_vma *vmas;
	uint32_t nfiles;
	struct rdmig_img_file *files;
	uint32_t nfds; /* sorted by fd, unique */
	struct rdmig_img_fd *fds;
	/* Pages written eagerly at restore: the written pages of private file
	 * mappings, and the pages holding a thread's tid cache (ANON, not touched).
	 * Sorted by addr, unique. */
	uint32_t ncow;
	struct rdmig_img_cow_page *cow;
	/* Written pages of private file mappings whose bytes at the freeze were
	 * those the LAYOUT carried (the source compares them): addresses only,
	 * sorted, unique, none also in cow; in FILE_PRIVATE vmas. The destination
	 * turns them back into cow pages (rdmig_image_fill_ahead) before the
	 * restore. */
	uint32_t nahead;
	uint64_t *ahead;
};

/* Frees everything the image points to (not the struct itself); accepts a zeroed
 * or half-filled image, and leaves it zeroed. */
void rdmig_image_free(struct rdmig_image *img);

/* Encode into a malloc'd buffer (*out, *len). -EINVAL when the image itself breaks
 * the rules the decoder checks (the encoder checks them too, so a source never
 * sends what its peer would refuse). */
RDMIG_IMG_WUR int rdmig_image_encode(const struct rdmig_image *img, uint8_t **out, size_t *len);

/* Check and decode: 0, -EBADMSG (malformed, with a log line saying what),
 * -EPROTONOSUPPORT (another version), -ENOMEM. On failure *img is zeroed. */
RDMIG_IMG_WUR int rdmig_image_decode(const uint8_t *buf, size_t len, struct rdmig_image *img);

/* The written pages of private file mappings that travel ahead of the freeze,
 * in the LAYOUT (src/migrate_src.c): most never change while the process runs
 * (a library's data), so the image names them instead of carrying 4 KiB each.
 * lay is a layout's cow list (sorted by addr).
 * mark: on the source, after the capture: each cow page of a FILE_PRIVATE vma
 *   whose bytes equal lay's page at its address moves to img->ahead (once:
 *   -EINVAL when img has ahead pages already). Returns how many moved, or
 *   -ENOMEM (img unchanged).
 * fill: on the destination, after the decode: each ahead address becomes a cow
 *   page again with lay's bytes and .ahead set. -EBADMSG (logged) when lay lacks
 *   one: the source named a page it never sent. -ENOMEM. img unchanged on
 *   failure. */
RDMIG_IMG_WUR int rdmig_image_mark_ahead(struct rdmig_image *img,
                                         const struct rdmig_img_cow_page *lay, uint32_t nlay);
RDMIG_IMG_WUR int rdmig_image_fill_ahead(struct rdmig_image *img,
                                         const struct rdmig_img_cow_page *lay, uint32_t nlay);
/* lay's page at addr (binary search), or NULL. */
const struct rdmig_img_cow_page *rdmig_image_cow_find(const struct rdmig_img_cow_page *lay,
                                                      uint32_t nlay, uint64_t addr);

/* The vma holding addr, or NULL. */
const struct rdmig_img_vma *rdmig_image_vma_at(const struct rdmig_image *img, uint64_t addr);
/* Pages marked touched in v (ANON). */
uint64_t rdmig_image_vma_touched(const struct rdmig_img_vma *v);

/* Bitmaps of pages (bit i: byte i/8, bit i%8), 64 bits at a time where they can
 * be. How many bits from bit `at` on (up to nbits) are set (or clear); set bits
 * [first, first + n). */
uint64_t rdmig_bitmap_run(const uint8_t *bits, uint64_t nbits, uint64_t at, bool set);
void rdmig_bitmap_set(uint8_t *bits, uint64_t first, uint64_t n);

#endif /* RDMIG_IMAGE_H */
