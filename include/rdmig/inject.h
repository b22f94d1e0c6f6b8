/*
 * Fault injection (src/inject.c, rdma/transport.c), driven by the environment so
 * every failure path of a real migration can be run in CI:
 *
 *   RDMIG_INJECT=POINT[=ERRNO][,POINT...]
 *       rdmig_inject(POINT) fails with -ERRNO (default EIO). Points are named
 *       "side.what"; every state a side enters is one ("src.frozen",
 *       "dst.restoring", ...), and a few steps inside them ("src.capture",
 *       "src.final_copy", "dst.pager"). `rdma_migrate --inject-points` lists them.
 *   RDMIG_INJECT_TP=OP:N[,OP:N...]
 *       The Nth call (1-based, counted per process) of a transport operation fails
 *       with -EIO, as a dying link would: OP is connect, accept, mr_reg, post_read,
 *       post_write, send or recv. A failed post_read/post_write fails the
 *       connection too (later operations get -ECONNRESET), as a real one does.
 *       For recv, N counts the calls that wait (timeout not 0), and the looks
 *       (timeout 0) that found a message or an error, not those that found
 *       nothing, whose number depends on timing.
 *
 * Read once per process; with neither variable set every check is one load.
 */
#ifndef RDMIG_INJECT_H
#define RDMIG_INJECT_H

/* 0, or -errno when POINT is named in RDMIG_INJECT (logged). */
int rdmig_inject(const char *point);

/* The transport decorator's check (rdma/transport.c): 0, or -EIO when this is the
 * Nth call of op named in RDMIG_INJECT_TP. */
int rdmig_inject_tp(const char *op);

/* Every named point, NULL-terminated (for --inject-points and the CI matrix). */
extern const char *const rdmig_inject_points[];

#endif
