/*
 * test/bench/floor.c: the least a worker's kernel work can cost per call on
 * this machine, with no PostgreSQL, libcurl, JSON or usage row in the way.
 *
 *   floor PORT CALLERS SECONDS
 *
 * Forks one "worker" and CALLERS "callers" that talk as igny8_ai's do:
 *
 * - a caller puts its request in its slot in shared memory, sets the
 *   worker's latch and sleeps on its own latch until the slot is answered;
 * - the worker, asleep on its latch and its sockets, takes the queued
 *   slots, sends each request on its own kept-alive connection to the HTTP
 *   server on 127.0.0.1:PORT (the nginx canned reply of test/bench/ab -f),
 *   reads the replies, answers the slots and sets their callers' latches.
 *
 * A latch is PostgreSQL's (storage/ipc/latch.c, Linux): an is_set flag, a
 * maybe_sleeping flag, kill(SIGURG) only when the owner may be asleep, and
 * a signalfd in the owner's epoll set that is read when it fires.  So per
 * call the worker does at least: one send, one recv, one kill, and its
 * share of epoll_wait wake-ups and signalfd reads, the system calls of the
 * real worker less libcurl's two poll() calls per transfer, the usage row
 * and its commit.
 *
 * Prints calls/s and the worker's CPU (user and system) per call.  Each
 * caller keeps one call in flight, as a pgbench client does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CALLERS 256

typedef struct
{
	atomic_int	is_set;
	atomic_int	maybe_sleeping;
	atomic_int	owner;
} Latch;

typedef struct
{
	atomic_int	state;			/* 0 free, 1 queued, 2 sent, 3 answered */
	Latch		latch;			/* the caller's */
} Slot;

typedef struct
{
	atomic_int	stop;
	Latch		worker_latch;
	atomic_long calls;
	Slot		slots[MAX_CALLERS];
} Shared;

static Shared *sh;
static int	sigfd;
static int	epfd;

static void
die(const char *what)
{
	perror(what);
	exit(1);
}

static void
set_latch(Latch *l)
{
	if (atomic_load(&l->is_set))
		return;
	atomic_store(&l->is_set, 1);
	if (!atomic_load(&l->maybe_sleeping))
		return;
	kill(atomic_load(&l->owner), SIGURG);
}

/* Our signalfd fired: drain it, as latch.c does. */
static void
drain(void)
{
	struct signalfd_siginfo si[16];

	while (read(sigfd, si, sizeof(si)) > 0)
		;
}

static void
latch_init(Latch *l)
{
	sigset_t	set;
	struct epoll_event ev = {.events = EPOLLIN};

	sigemptyset(&set);
	sigaddset(&set, SIGURG);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (sigfd < 0 || epfd < 0)
		die("signalfd/epoll");
	ev.data.fd = -1;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, sigfd, &ev) < 0)
		die("epoll_ctl");
	atomic_store(&l->owner, getpid());
}

/*
 * Sleep until the latch is set or (worker) a socket is ready; return the
 * ready events.  The latch is reset by the caller of this function.
 */
static int
wait_latch(Latch *l, struct epoll_event *evs, int max, int timeout_ms)
{
	int			n;

	atomic_store(&l->maybe_sleeping, 1);
	if (atomic_load(&l->is_set))
	{
		atomic_store(&l->maybe_sleeping, 0);
		return 0;
	}
	n = epoll_wait(epfd, evs, max, timeout_ms);
	atomic_store(&l->maybe_sleeping, 0);
	for (int i = 0; i < n; i++)
		if (evs[i].data.fd == -1)
			drain();
	return n < 0 ? 0 : n;
}

#define BODY "{\"model\":\"qwen3:32b\",\"stream\":false,\"messages\":[{\"role\":\"user\",\"content\":\"Write about clouds\"}]}"
static char request[512];

/* Bytes of one whole reply in buf, or 0 if it is not complete yet. */
static size_t
reply_length(const char *buf, size_t len)
{
	const char *end = memmem(buf, len, "\r\n\r\n", 4);
	const char *cl;

	if (end == NULL)
		return 0;
	cl = memmem(buf, end - buf, "Content-Length: ", 16);
	if (cl == NULL)
		die("no Content-Length in the reply");
	size_t		want = (end + 4 - buf) + strtoul(cl + 16, NULL, 10);

	return len >= want ? want : 0;
}

static void
worker(int port, int ncallers)
{
	int			fds[MAX_CALLERS];
	char		buf[MAX_CALLERS][4096];
	size_t		have[MAX_CALLERS] = {0};
	struct epoll_event evs[MAX_CALLERS + 1];

	latch_init(&sh->worker_latch);
	snprintf(request, sizeof(request),
			 "POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: floor\r\n"
			 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
			 strlen(BODY), BODY);
	for (int i = 0; i < ncallers; i++)
	{
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		int			one = 1;
		struct epoll_event ev = {.events = EPOLLIN, .data.fd = i};

		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (fds[i] < 0 || connect(fds[i], (struct sockaddr *) &a, sizeof(a)) < 0)
			die("connect");
		setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		/* stays in the set, as igny8_ai's parked sockets do */
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, fds[i], &ev) < 0)
			die("epoll_ctl");
	}
	/* the sockets are connected: the callers may start */
	atomic_store(&sh->calls, 0);
	while (!atomic_load(&sh->stop))
	{
		int			n;

		atomic_store(&sh->worker_latch.is_set, 0);
		for (int i = 0; i < ncallers; i++)
			if (atomic_load(&sh->slots[i].state) == 1)
			{
				if (send(fds[i], request, strlen(request), 0) < 0)
					die("send");
				atomic_store(&sh->slots[i].state, 2);
			}
		n = wait_latch(&sh->worker_latch, evs, MAX_CALLERS + 1, 100);
		for (int e = 0; e < n; e++)
		{
			int			i = evs[e].data.fd;
			ssize_t		got;
			size_t		whole;

			if (i < 0)
				continue;
			if (have[i] == sizeof(buf[i]))
				die("reply too large");
			got = recv(fds[i], buf[i] + have[i], sizeof(buf[i]) - have[i], 0);
			if (got <= 0)
				die("recv");
			have[i] += got;
			whole = reply_length(buf[i], have[i]);
			if (whole == 0)
				continue;
			memmove(buf[i], buf[i] + whole, have[i] - whole);
			have[i] -= whole;
			atomic_fetch_add(&sh->calls, 1);
			atomic_store(&sh->slots[i].state, 3);
			set_latch(&sh->slots[i].latch);
		}
	}
	exit(0);
}

static void
caller(int i)
{
	Slot	   *s = &sh->slots[i];
	struct epoll_event evs[2];

	latch_init(&s->latch);
	while (!atomic_load(&sh->stop))
	{
		atomic_store(&s->state, 1);
		set_latch(&sh->worker_latch);
		for (;;)
		{
			atomic_store(&s->latch.is_set, 0);
			if (atomic_load(&s->state) == 3 || atomic_load(&sh->stop))
				break;
			wait_latch(&s->latch, evs, 2, 100);
		}
	}
	exit(0);
}

int
main(int argc, char **argv)
{
	int			port,
				ncallers;
	double		seconds;
	pid_t		wpid;
	long		c0,
				c1;

	if (argc != 4 || (ncallers = atoi(argv[2])) < 1 || ncallers > MAX_CALLERS)
	{
		fprintf(stderr, "usage: floor PORT CALLERS(1..%d) SECONDS\n", MAX_CALLERS);
		return 2;
	}
	port = atoi(argv[1]);
	seconds = atof(argv[3]);
	sh = mmap(NULL, sizeof(Shared), PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		die("mmap");
	memset(sh, 0, sizeof(Shared));
	atomic_store(&sh->calls, -1);
	if ((wpid = fork()) == 0)
		worker(port, ncallers);
	while (atomic_load(&sh->calls) < 0)
	{
		/* the worker could not connect (it said why) */
		if (waitpid(wpid, NULL, WNOHANG) == wpid)
			return 1;
		usleep(1000);
	}
	for (int i = 0; i < ncallers; i++)
		if (fork() == 0)
			caller(i);
	/* measure after a second of warm-up */
	usleep(1000000);
	c0 = atomic_load(&sh->calls);
	{
		struct timespec t0,
					t1;
		double		w0;
		char		path[64];
		FILE	   *f;
		unsigned long ut0,
					st0,
					ut1,
					st1;

		snprintf(path, sizeof(path), "/proc/%d/stat", (int) wpid);
		f = fopen(path, "r");
		if (f == NULL || fscanf(f, "%*d %*s %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
								&ut0, &st0) != 2)
			die("/proc/PID/stat");
		fclose(f);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		usleep((useconds_t) (seconds * 1e6));
		c1 = atomic_load(&sh->calls);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		f = fopen(path, "r");
		if (f == NULL || fscanf(f, "%*d %*s %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
								&ut1, &st1) != 2)
			die("/proc/PID/stat");
		fclose(f);
		w0 = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
		if (c1 == c0)
		{
			fprintf(stderr, "floor: no call was answered in %.2f s\n", w0);
			atomic_store(&sh->stop, 1);
			while (wait(NULL) > 0)
				;
			return 1;
		}
		printf("callers %d: %.0f calls/s; worker CPU %.1f us/call (user %.1f, system %.1f; %ld calls in %.2f s)\n",
			   ncallers, (c1 - c0) / w0,
			   (double) ((ut1 + st1) - (ut0 + st0)) / sysconf(_SC_CLK_TCK) * 1e6 / (c1 - c0),
			   (double) (ut1 - ut0) / sysconf(_SC_CLK_TCK) * 1e6 / (c1 - c0),
			   (double) (st1 - st0) / sysconf(_SC_CLK_TCK) * 1e6 / (c1 - c0),
			   c1 - c0, w0);
	}
	atomic_store(&sh->stop, 1);
	while (wait(NULL) > 0)
		;
	return 0;
}
