/*
 * The thread made ahead of the downtime (rdmig_spare, src/migrate_common.c):
 * the job it is handed runs on it and is joined like any thread; one never
 * handed out ends at stop; a second job, or one for a spare that never
 * started, gets a thread of its own.
 */
#include "helpers.h"

#include "migrate_common.h"

#include <pthread.h>
#include <signal.h>
#include <stdint.h>

T_DEFINE_STATE;

struct job {
	pthread_t self;
	sigset_t mask;
	int runs;
};

static void *job_main(void *arg)
{
	struct job *j = arg;

	j->self = pthread_self();
	pthread_sigmask(SIG_SETMASK, NULL, &j->mask);
	j->runs++;
	return (void *)(uintptr_t)0x5eed;
}

static void handed_and_joined(void)
{
	struct rdmig_spare sp;
	struct job j = {0}, j2 = {0};
	sigset_t block, old;
	pthread_t th, th2;
	void *rv = NULL;

	/* the spare keeps the mask its starter had then, not the caller's later one */
	sigemptyset(&block);
	sigaddset(&block, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	T_OK(rdmig_spare_start(&sp));
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	T_OK(rdmig_spare_spawn(&sp, &th, job_main, &j));
	T_CHECK(pthread_equal(th, sp.th), "the job runs on the spare thread");
	T_CHECK(pthread_join(th, &rv) == 0 && rv == (void *)(uintptr_t)0x5eed,
	        "joined with the job's return value");
	T_CHECK(j.runs == 1 && pthread_equal(j.self, th), "ran once, on that thread");
	T_CHECK(sigismember(&j.mask, SIGUSR2) == 1, "with the mask of its starter");
	/* the spare is used up (and joined): the next job gets a new thread */
	T_OK(rdmig_spare_spawn(&sp, &th2, job_main, &j2));
	T_CHECK(pthread_join(th2, &rv) == 0 && j2.runs == 1, "a second job runs too");
	rdmig_spare_stop(&sp);
}

static void never_handed(void)
{
	struct rdmig_spare sp, zero = {0};
	struct job j = {0};
	pthread_t th;

	T_OK(rdmig_spare_start(&sp));
	rdmig_spare_stop(&sp); /* joins it: a leak or a hang otherwise */
	T_CHECK(!sp.started, "stopped");
	rdmig_spare_stop(&sp); /* twice is harmless */
	rdmig_spare_stop(&zero);
	/* a spare that never started still runs the job, on a thread of its own */
	T_OK(rdmig_spare_spawn(&zero, &th, job_main, &j));
	T_CHECK(pthread_join(th, NULL) == 0 && j.runs == 1, "ran on a new thread");
	T_OK(rdmig_spare_spawn(NULL, &th, job_main, &j));
	T_CHECK(pthread_join(th, NULL) == 0 && j.runs == 2, "and with no spare at all");
}

int main(int argc, char **argv)
{
	t_state.only = argc > 1 ? argv[1] : NULL;
	T_RUN(handed_and_joined);
	T_RUN(never_handed);
	return t_finish();
}
