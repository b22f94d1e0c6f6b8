/*
 * handlers: signal handlers and an alternate stack that must be the same after
 * a migration, for the test of the source's early answers (src/capture_calls.c).
 *
 *   handlers TICKS FLIP
 *
 * Installs handler 0 for SIGUSR1 (SA_ONSTACK) on a 64 KiB alternate stack and
 * handler 1 for SIGUSR2, then prints one line per 20 ms tick. With FLIP=1
 * every tick also raises SIGUSR1 (printing which handler ran) and then gives
 * it the other handler, so what the source asked at its start no longer holds
 * when it freezes the process, and a stale handler after the switch shows. At
 * the end it raises SIGUSR1 and SIGUSR2 and prints which handler ran for each,
 * whether on the alternate stack, and how many times each ran. The output
 * depends only on the arguments; exits 0.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char altstack[65536];
static volatile sig_atomic_t ran[2], last, on_alt;

static void note(int which)
{
	char here;

	ran[which]++;
	last = which;
	on_alt = (uintptr_t)&here >= (uintptr_t)altstack &&
	         (uintptr_t)&here < (uintptr_t)altstack + sizeof(altstack);
}

static void handler0(int sig)
{
	(void)sig;
	note(0);
}

static void handler1(int sig)
{
	(void)sig;
	note(1);
}

static int set(int sig, void (*fn)(int))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fn;
	sa.sa_flags = SA_ONSTACK | SA_RESTART;
	return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv)
{
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack)};
	int ticks = argc > 1 ? atoi(argv[1]) : 100, flip = argc > 2 && atoi(argv[2]);
	struct timespec tick = {0, 20 * 1000 * 1000};

	if (sigaltstack(&ss, NULL) || set(SIGUSR1, handler0) || set(SIGUSR2, handler1))
		return 1;
	for (int i = 0; i < ticks; i++) {
		/* the handler set a tick ago, whichever side it was set on */
		if (flip)
			raise(SIGUSR1);
		printf("tick %d handler %d\n", i, flip ? (int)last : 0);
		fflush(stdout);
		if (flip && set(SIGUSR1, i % 2 ? handler0 : handler1))
			return 1;
		nanosleep(&tick, NULL);
	}
	raise(SIGUSR1);
	printf("SIGUSR1: handler %d, on the alternate stack: %s\n", (int)last,
	       on_alt ? "yes" : "no");
	raise(SIGUSR2);
	printf("SIGUSR2: handler %d, on the alternate stack: %s\n", (int)last,
	       on_alt ? "yes" : "no");
	printf("ran: %d and %d times\n", (int)ran[0], (int)ran[1]);
	return 0;
}
