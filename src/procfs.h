/*
 * Strict readers of /proc/PID files for the capture (src/procfs.c). Every
 * number is checked (digits present, no overflow, in range), every line must be
 * complete; anything else is -EIO with a log line naming the file, never a
 * guess. A process that is gone gives -ESRCH.
 */
#ifndef RDMIG_PROCFS_H
#define RDMIG_PROCFS_H

#include "rdmig/image.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

/* The whole of /proc/PID/<name> in a malloc'd, NUL-terminated buffer (*len
 * bytes without the NUL); larger than max bytes is -EFBIG. */
int procfs_read(pid_t pid, const char *name, size_t max, char **buf, size_t *len);

/* readlink of /proc/PID/<name>, malloc'd and NUL-terminated. */
int procfs_readlink(pid_t pid, const char *name, char **out);

/* stat (following the link) of /proc/PID/<name>. */
int procfs_stat_link(pid_t pid, const char *name, struct stat *st);

/* /proc/PID/status: the fields the capture uses. */
struct procfs_status {
	char state; /* R, S, D, T, t, Z, X, ... */
	uint32_t threads;
	int32_t tracer; /* TracerPid, 0: none */
	uint32_t seccomp;
	uint32_t uid[4], gid[4];
	uint32_t ngroups;
	uint32_t *groups;
	uint64_t cap_inh, cap_prm, cap_eff, cap_bnd, cap_amb;
	uint32_t no_new_privs;
	uint32_t umask;
	uint64_t sig_ign, sig_cgt; /* SigIgn, SigCgt: bit n-1 for signal n */
};
int procfs_status(pid_t pid, struct procfs_status *st);
void procfs_status_free(struct procfs_status *st);

/* /proc/PID/stat: state, flags and the mm fields (brk not there: mm->brk is 0). */
/* PF_* bits of procfs_stat.flags (include/linux/sched.h) */
#define PROCFS_PF_EXITING 0x00000004u
#define PROCFS_PF_KTHREAD 0x00200000u

struct procfs_stat {
	char state;
	uint64_t flags;  /* PF_* */
	uint64_t minflt; /* minor faults, every thread's */
	struct rdmig_img_mm mm;
};
int procfs_stat(pid_t pid, struct procfs_stat *st);

/* One line of /proc/PID/maps. */
struct procfs_map {
	uint64_t start, end, pgoff;
	uint32_t prot; /* PROT_* */
	bool shared;   /* 's' */
	uint32_t dev_major, dev_minor;
	uint64_t ino;
	char *name; /* the rest of the line; NULL when there is none */
};
int procfs_maps(pid_t pid, struct procfs_map **out, size_t *n);
void procfs_maps_free(struct procfs_map *m, size_t n);

/* An open descriptor: its link target and fdinfo. Listed sorted by fd. */
struct procfs_fd {
	int fd;
	char *target; /* readlink of /proc/PID/fd/N */
	uint64_t pos;
	uint32_t flags; /* fdinfo "flags", octal, O_CLOEXEC included */
};
/* A descriptor closed while being listed is left out (the process runs during
 * the check). */
int procfs_fds(pid_t pid, struct procfs_fd **out, size_t *n);
void procfs_fds_free(struct procfs_fd *f, size_t n);

/* Entries in /proc/PID/task. */
int procfs_task_count(pid_t pid, uint32_t *n);

/* /proc/PID/limits: soft and hard value of the RDMIG_IMG_NRLIMIT resources in
 * the kernel's order ("unlimited" is RLIM_INFINITY). For when prlimit() may not
 * read them (another user's process without CAP_SYS_RESOURCE). */
int procfs_limits(pid_t pid, uint64_t *cur, uint64_t *max);

/* /proc/PID/personality (hex). */
int procfs_personality(pid_t pid, uint32_t *pers);

#endif /* RDMIG_PROCFS_H */
