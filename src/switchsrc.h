/*
 * A page source whose connection can be replaced while the fault loop runs
 * (src/switchsrc.c).
 */
#ifndef RDMIG_SWITCHSRC_H
#define RDMIG_SWITCHSRC_H

#include "rdmig/pager.h"

/* Wraps inner (a transport page source; owned from now on). */
RDMIG_PAGER_WUR int rdmig_switchsrc_create(struct rdmig_page_source *inner,
                                           struct rdmig_page_source **out);
/* Any thread: from now on use inner (owned). The old one is retired (its staging
 * deregistered) and then close_old(arg) runs, with the loop kept out of the
 * source, so the old connection can be closed there. */
RDMIG_PAGER_WUR int rdmig_switchsrc_swap(struct rdmig_page_source *s,
                                         struct rdmig_page_source *inner,
                                         void (*close_old)(void *arg), void *arg);

#endif
