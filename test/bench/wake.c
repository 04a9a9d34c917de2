/*
 * test/bench/wake.c: what waking a sleeping process costs on this machine,
 * by each way a PostgreSQL process could be woken.
 *
 *   cc -O2 -o wake test/bench/wake.c && ./wake [ROUND_TRIPS]
 *
 * Two processes wake each other in turn (a round trip is two wake-ups),
 * ROUND_TRIPS times (default 50,000), by each of:
 *
 * - latch: PostgreSQL's latch on Linux (storage/ipc/latch.c): the sleeper
 *   says it may sleep (maybe_sleeping), the waker sends kill(SIGURG) only
 *   then, and the sleeper waits in epoll_wait on a signalfd, which it
 *   drains when it fires.  This is how a worker wakes its caller
 *   (SetLatch) and a caller its worker;
 * - eventfd: the same, with a write to the sleeper's eventfd instead of a
 *   signal (both made before fork: PostgreSQL processes could share them
 *   only if the postmaster made one per process);
 * - futex: the sleeper waits in FUTEX_WAIT on a word in shared memory, the
 *   waker sets it and calls FUTEX_WAKE.  No epoll set, no descriptor.
 *
 * Prints, for process 0 of each: its CPU (user + system) per round trip,
 * the wall time of a round trip, and how long the waking system call
 * itself took (kill, write, FUTEX_WAKE; clock_gettime around it).
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {LATCH, EVENTFD, FUTEX};
static const char *const names[] = {"latch (kill + signalfd)", "eventfd", "futex"};

typedef struct
{
	atomic_int	turn;			/* whose turn it is to run */
	atomic_int	maybe_sleeping[2];
	atomic_int	pid[2];
	atomic_int	futex_word[2];
} Shared;

static Shared *sh;
static int	how;
static int	efd[2];
static int	epfd;
static int	sigfd;

static void
die(const char *what)
{
	perror(what);
	exit(1);
}

static void
prepare(int me)
{
	struct epoll_event ev = {.events = EPOLLIN};

	if (how == FUTEX)
		return;
	epfd = epoll_create1(0);
	if (epfd < 0)
		die("epoll_create1");
	if (how == LATCH)
	{
		sigset_t	set;

		sigemptyset(&set);
		sigaddset(&set, SIGURG);
		sigprocmask(SIG_BLOCK, &set, NULL);
		sigfd = signalfd(-1, &set, SFD_NONBLOCK);
		if (sigfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, sigfd, &ev) != 0)
			die("signalfd");
	}
	else if (epoll_ctl(epfd, EPOLL_CTL_ADD, efd[me], &ev) != 0)
		die("epoll_ctl");
}

static void
wake(int other)
{
	if (how == FUTEX)
	{
		atomic_store(&sh->futex_word[other], 1);
		syscall(SYS_futex, &sh->futex_word[other], FUTEX_WAKE, 1, NULL, NULL, 0);
		return;
	}
	if (!atomic_load(&sh->maybe_sleeping[other]))
		return;
	if (how == LATCH)
		kill(atomic_load(&sh->pid[other]), SIGURG);
	else
	{
		uint64_t	one = 1;

		if (write(efd[other], &one, sizeof(one)) != sizeof(one))
			die("write");
	}
}

static void
sleep_until_my_turn(int me)
{
	while (atomic_load(&sh->turn) != me)
	{
		struct epoll_event ev;
		char		buf[256];

		if (how == FUTEX)
		{
			atomic_store(&sh->futex_word[me], 0);
			if (atomic_load(&sh->turn) == me)
				break;
			syscall(SYS_futex, &sh->futex_word[me], FUTEX_WAIT, 0, NULL, NULL, 0);
			continue;
		}
		atomic_store(&sh->maybe_sleeping[me], 1);
		if (atomic_load(&sh->turn) != me)
			(void) epoll_wait(epfd, &ev, 1, -1);
		atomic_store(&sh->maybe_sleeping[me], 0);
		if (how == LATCH)
			while (read(sigfd, buf, sizeof(buf)) > 0)
				;
		else
			(void) read(efd[me], buf, sizeof(uint64_t));
	}
}

static double
cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
		ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static double
since(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (t1.tv_sec - t0->tv_sec) + (t1.tv_nsec - t0->tv_nsec) / 1e9;
}

static void
play(int me, long n)
{
	struct timespec t0;
	double		cpu0;
	double		waking = 0;

	atomic_store(&sh->pid[me], getpid());
	prepare(me);
	while (atomic_load(&sh->pid[1 - me]) == 0)
		usleep(1000);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	cpu0 = cpu_seconds();
	for (long i = 0; i < n; i++)
	{
		struct timespec w;

		sleep_until_my_turn(me);
		atomic_store(&sh->turn, 1 - me);
		clock_gettime(CLOCK_MONOTONIC, &w);
		wake(1 - me);
		waking += since(&w);
	}
	if (me == 0)
		printf("%-24s CPU %5.1f us per round trip, wall %5.1f us per round trip, waking call %4.1f us\n",
			   names[how], (cpu_seconds() - cpu0) / n * 1e6, since(&t0) / n * 1e6,
			   waking / n * 1e6);
	exit(0);
}

int
main(int argc, char **argv)
{
	long		n = argc > 1 ? atol(argv[1]) : 50000;

	if (n <= 0)
	{
		fprintf(stderr, "usage: wake [ROUND_TRIPS]\n");
		return 2;
	}
	sh = mmap(NULL, sizeof(Shared), PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		die("mmap");
	for (how = LATCH; how <= FUTEX; how++)
	{
		memset(sh, 0, sizeof(Shared));
		efd[0] = eventfd(0, EFD_NONBLOCK);
		efd[1] = eventfd(0, EFD_NONBLOCK);
		if (efd[0] < 0 || efd[1] < 0)
			die("eventfd");
		fflush(stdout);
		for (int me = 0; me < 2; me++)
		{
			pid_t		pid = fork();

			if (pid < 0)
				die("fork");
			if (pid == 0)
				play(me, n);
		}
		while (wait(NULL) > 0)
			;
		close(efd[0]);
		close(efd[1]);
	}
	return 0;
}
