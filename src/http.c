/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The worker's HTTP transfers: libcurl's multi loop, and a client of our
 *	  own for plain HTTP to the self-hosted box (see "the built-in HTTP/1.1
 *	  client" below).
 *
 * One multi handle per worker holds every transfer in flight and keeps
 * connections to each backend alive between requests.  curl tells us which
 * sockets to watch (CURLMOPT_SOCKETFUNCTION); we keep them in an epoll set
 * whose own descriptor the worker adds to its WaitEventSet beside its latch,
 * so that one wait covers the latch, postmaster death and every transfer.
 *
 * No callback here ever raises a PostgreSQL error: they only record what
 * happened and return, and the worker reports afterwards.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "utils/memutils.h"

#include "answer_buffer.h"
#include "http1.h"
#include "worker.h"

#define IGNY8_EPOLL_BATCH	64

static CURLM *multi = NULL;
static long curl_max_idle = 0;	/* its CURLMOPT_MAXCONNECTS, 0: not set */
static int	epoll_fd = -1;
static bool timer_set = false;	/* curl wants to be called at timer_at */
static TimestampTz timer_at = 0;

/* transfers that failed before curl had them, handed out as finished */
static List *failed_starts = NIL;

/* an epoll_ctl that failed in the socket callback, reported afterwards */
static int	epoll_errno = 0;

/*
 * Bytes of answers this worker holds: the buffers of transfers, and the
 * image bodies jobs took over from them, capped by igny8_ai.answer_memory.
 */
static size_t held_bytes = 0;

/*
 * What the epoll set holds for each descriptor, indexed by descriptor:
 * the events it is registered for (0: not in the set), and whether it is a
 * connection socket that curl opened and will close through our callbacks
 * (open_socket, close_socket).
 *
 * A kept-alive connection's socket is not taken out of the set when its
 * transfer ends (CURL_POLL_REMOVE): it is "parked", still registered for
 * EPOLLIN, and the next transfer on the connection finds it registered for
 * what it wants, with no epoll_ctl at all.  Before, each call cost two
 * (ADD, then DEL).  A parked socket that becomes readable (the server
 * closed the idle connection) is taken out then (igny8_http_drive); one
 * that curl closes is forgotten in close_socket, before the descriptor can
 * be reused.  Only sockets curl opened through open_socket are parked:
 * others (a resolver's) may be closed behind our back.
 */
typedef struct SockState
{
	uint32		events;			/* registered for; 0: not in the set */
	bool		ours;			/* opened through open_socket */
	bool		parked;			/* registered, but curl watches it not */
	struct PlainTransfer *plain;	/* the built-in client's transfer on it */
	bool		idle;			/* the built-in client's, idle in its pool */
} SockState;

static SockState *socks = NULL;
static int	nsocks = 0;

/* The state of descriptor fd, the table grown to hold it; NULL if no room. */
static SockState *
sock_state(curl_socket_t fd)
{
	if (fd < 0)
		return NULL;
	if (fd >= nsocks)
	{
		int			n = Max(nsocks * 2, 1024);
		SockState  *grown;

		while (n <= fd)
			n *= 2;
		/* no palloc: the callbacks must never raise an error */
		grown = realloc(socks, sizeof(SockState) * n);
		if (grown == NULL)
			return NULL;
		memset(grown + nsocks, 0, sizeof(SockState) * (n - nsocks));
		socks = grown;
		nsocks = n;
	}
	return &socks[fd];
}

/*
 * libcurl's socket(): clientp is the transfer.  libcurl reports a socket()
 * that failed as CURLE_COULDNT_CONNECT with no errno (CURLINFO_OS_ERRNO
 * 0), which would read as a refused connection, counted against the
 * provider; the errno kept here says it was ours (EMFILE: the worker is
 * out of file descriptors).
 */
static curl_socket_t
open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *addr)
{
	curl_socket_t fd = socket(addr->family, addr->socktype, addr->protocol);
	SockState  *st = sock_state(fd);

	/* the last socket() of the transfer counts: a later one may succeed */
	if (clientp != NULL)
		((Igny8Transfer *) clientp)->socket_errno =
			(fd == CURL_SOCKET_BAD) ? errno : 0;

	if (st != NULL)
	{
		memset(st, 0, sizeof(SockState));
		st->ours = true;
	}
	return fd;
}

static int
close_socket(void *clientp, curl_socket_t fd)
{
	SockState  *st = sock_state(fd);

	/* closing it takes it out of the epoll set */
	if (st != NULL)
		memset(st, 0, sizeof(SockState));
	return close(fd);
}

/* Take a descriptor out of the epoll set. */
static void
unwatch(curl_socket_t s, SockState *st)
{
	/* curl may have closed it already: EBADF, ENOENT are fine */
	if (epoll_ctl(epoll_fd, EPOLL_CTL_DEL, s, NULL) != 0 &&
		errno != EBADF && errno != ENOENT)
		epoll_errno = errno;
	if (st != NULL)
	{
		st->events = 0;
		st->parked = false;
	}
}

/* Keep the epoll set in step with what curl wants to watch. */
static int
socket_callback(CURL *easy, curl_socket_t s, int what, void *userp,
				void *socketp)
{
	struct epoll_event ev;
	SockState  *st = sock_state(s);

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;

	if (what == CURL_POLL_REMOVE)
	{
		/* a connection kept for reuse, watched for reading: parked */
		if (st != NULL && st->ours && st->events == EPOLLIN)
			st->parked = true;
		else
			unwatch(s, st);
		return 0;
	}

	if (what & CURL_POLL_IN)
		ev.events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev.events |= EPOLLOUT;

	if (st != NULL && st->events == ev.events)
	{
		/* registered for just this already (a parked socket taken back) */
	}
	else if (st != NULL && st->events != 0)
	{
		if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0)
			epoll_errno = errno;
	}
	else
	{
		int			rc = epoll_ctl(epoll_fd, EPOLL_CTL_ADD, s, &ev);

		if (rc != 0 && errno == EEXIST)
			rc = epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev);
		if (rc != 0)
			epoll_errno = errno;
	}
	if (st != NULL)
	{
		st->events = ev.events;
		st->parked = false;
	}
	return 0;
}

static void report_multi_error(CURLMcode rc);

static int
timer_callback(CURLM *m, long timeout_ms, void *userp)
{
	timer_set = (timeout_ms >= 0);
	if (timer_set)
		timer_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											   timeout_ms);
	return 0;
}

/*
 * libcurl's connection cache as igny8_ai.max_idle_connections says (at
 * least 1: 0 would mean no limit; 0 is CURLOPT_FORBID_REUSE instead).
 */
static void
sync_curl_max_idle(void)
{
	long		n = Max(igny8_max_idle_connections, 1);

	if (n != curl_max_idle &&
		curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, n) == CURLM_OK)
		curl_max_idle = n;
}

/*
 * Every transfer in flight holds a socket: raise this process's soft limit
 * on open files to the hard limit, so that a worker holding many requests
 * does not run out at the usual soft limit of 1024.
 */
static void
raise_file_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max)
	{
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			ereport(LOG,
					(errmsg("igny8_ai worker could not raise its open files limit: %m")));
	}
}

void
igny8_http_init(void)
{
	raise_file_limit();
	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		elog(ERROR, "could not initialize libcurl");
	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "could not create a libcurl multi handle");
	epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (epoll_fd < 0)
		elog(ERROR, "epoll_create1 failed: %m");

	if (curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_callback) != CURLM_OK ||
		curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_callback) != CURLM_OK)
		elog(ERROR, "could not set up the libcurl multi handle");
	sync_curl_max_idle();
}

/* Say in the server log that a socket could not be watched. */
static void
report_epoll_error(void)
{
	if (epoll_errno != 0)
	{
		errno = epoll_errno;
		epoll_errno = 0;
		ereport(LOG,
				(errmsg("igny8_ai worker could not watch a socket: %m"),
				 errdetail("The transfer on it ends at its timeout.")));
	}
}

int
igny8_http_fd(void)
{
	return epoll_fd;
}

/*
 * Append a piece of the answer to the transfer's buffer; false when it may
 * not grow: over the transfer's limit (too_large), over
 * igny8_ai.answer_memory (over_budget), or out of memory.
 */
static bool
append_body(Igny8Transfer *t, const char *data, size_t n)
{
	if (t->len + n > t->max)
	{
		t->too_large = true;
		return false;
	}
	if (t->len + n + 1 > t->cap)
	{
		size_t		budget = (size_t) igny8_answer_memory_kb * 1024;
		size_t		cap;
		bool		alone;
		char	   *p;

		cap = igny8_answer_buffer_size(t->len + n + 1, t->cap, t->max,
									   held_bytes, budget, &alone);
		if (cap == 0)
		{
			t->over_budget = true;
			t->over_budget_alone = alone;
			return false;
		}
		p = realloc(t->body, cap);
		if (p == NULL)
			return false;
		held_bytes = held_bytes - t->cap + cap;
		t->body = p;
		t->cap = cap;
	}
	memcpy(t->body + t->len, data, n);
	t->len += n;
	t->body[t->len] = '\0';
	return true;
}

static size_t
write_callback(char *data, size_t size, size_t nmemb, void *userp)
{
	size_t		n = size * nmemb;

	/* 0 makes curl fail with CURLE_WRITE_ERROR */
	return append_body((Igny8Transfer *) userp, data, n) ? n : 0;
}

/*
 * A header of the answer: "retry-after" (seconds), "retry-after-ms",
 * "x-should-retry".  name NULL: a new response starts (after an interim
 * 1xx one), whose headers alone count.
 */
static void
note_header(Igny8Transfer *t, const char *name, const char *val)
{
	if (name == NULL)
	{
		t->retry_after = -1;
		t->should_retry = -1;
	}
	else if (pg_strcasecmp(name, "retry-after-ms") == 0)
	{
		char	   *end;
		double		v = strtod(val, &end);

		if (end != val && v >= 0)
			t->retry_after = v / 1000.0;
	}
	else if (pg_strcasecmp(name, "retry-after") == 0 && t->retry_after < 0)
	{
		char	   *end;
		double		v = strtod(val, &end);

		/* an HTTP-date is not worth parsing: treat as absent */
		if (end != val && v >= 0)
			t->retry_after = v;
	}
	else if (pg_strcasecmp(name, "x-should-retry") == 0)
	{
		if (pg_strncasecmp(val, "true", 4) == 0)
			t->should_retry = 1;
		else if (pg_strncasecmp(val, "false", 5) == 0)
			t->should_retry = 0;
	}
}

/* curl's header lines, "Name: value" with their CR LF, to note_header */
static size_t
header_callback(char *data, size_t size, size_t nmemb, void *userp)
{
	Igny8Transfer *t = (Igny8Transfer *) userp;
	size_t		n = size * nmemb;
	char		line[256];
	char	   *colon;
	char	   *val;

	if (n >= 5 && strncmp(data, "HTTP/", 5) == 0)
	{
		/* a new response (after 100-continue): forget earlier headers */
		note_header(t, NULL, NULL);
		return n;
	}
	if (n >= sizeof(line))
		return n;
	memcpy(line, data, n);
	line[n] = '\0';
	colon = strchr(line, ':');
	if (colon == NULL)
		return n;
	*colon = '\0';
	val = colon + 1;
	while (*val == ' ' || *val == '\t')
		val++;
	note_header(t, line, val);
	return n;
}

/* ----- the built-in HTTP/1.1 client ----- */

/*
 * Plain http:// to a numeric address or "localhost", without a proxy or
 * credentials in the URL: the SSH tunnel to the GPU box, the case every
 * self-hosted call takes.  libcurl would do it with two poll() calls of
 * its own per transfer (one asks whether a kept-alive connection is still
 * alive, one looks for the answer right after the request is sent), and
 * with more code around each; here a transfer is its sockets' events in
 * the worker's epoll set, one send() and the recv() calls of its answer.
 * Everything else (https, a proxy, a name to resolve) goes to libcurl, and
 * igny8_ai.builtin_http_client = off sends it all there.
 *
 * What it does as libcurl did for these transfers: the same request line
 * and headers (Host, "User-Agent: igny8_ai/1.0", "Accept" for any type, the
 * request's own, Content-Length), TCP_NODELAY and TCP keep-alive probes
 * after 60 s, kept-alive connections reused for up to 118 s of idleness, a
 * request on a reused connection that the server had closed sent once more
 * on a new one, "localhost" tried as 127.0.0.1 and then as ::1, and the
 * outcome as the CURLcode libcurl would give, so that the rest of the
 * worker reads both alike: CURLE_COULDNT_CONNECT with the connect's errno,
 * CURLE_OPERATION_TIMEDOUT, CURLE_SEND_ERROR, CURLE_RECV_ERROR,
 * CURLE_GOT_NOTHING (closed before any byte of the answer),
 * CURLE_PARTIAL_FILE (closed inside it), CURLE_FILESIZE_EXCEEDED (a
 * Content-Length over the limit), CURLE_WRITE_ERROR (the body could not be
 * kept), CURLE_RECV_ERROR for a broken chunked body or a head over 300 kB
 * (errbuf says what) and CURLE_WEIRD_SERVER_REPLY for anything else that
 * is not HTTP/1.x (errbuf says what).  Stricter than libcurl (src/http1.c):
 * two different Content-Length values, a NUL in a header line, a status
 * line, Content-Length, Transfer-Encoding or Connection header longer than
 * 8 kB fail the transfer; and a connection that brought bytes after the
 * answer is closed, not reused.
 *
 * A connection's socket is in the epoll set while a transfer uses it and
 * while it is idle in the pool (for EPOLLIN: a server that closes an idle
 * connection makes it readable, and it is closed then).  SockState.plain
 * maps a socket to its transfer, SockState.idle marks a pooled one.
 * Sockets are opened only outside the handling of a batch of events
 * (igny8_http_start, or after the batch: PlainTransfer.reconnect), so that
 * an event still in the batch for a socket just closed can never reach a
 * new socket given the same number.
 */
#define PLAIN_KEY_MAX		64	/* "[v6 address]:port" */
#define PLAIN_IDLE_MAX_MS	118000	/* libcurl's CURLOPT_MAXAGE_CONN */
#define PLAIN_RECV_SIZE		65536

typedef enum PlainStep
{
	PLAIN_CONNECTING,
	PLAIN_SENDING,
	PLAIN_RECEIVING,
	PLAIN_FINISHED
} PlainStep;

typedef struct PlainTransfer
{
	Igny8Transfer *t;
	PlainStep	step;
	int			fd;				/* its connection, or -1 */
	bool		reused;			/* the connection came from the pool */
	bool		retried;		/* sent once more on a new connection */
	bool		sent_any;		/* some of the request reached a socket */
	bool		reconnect;		/* connect after the batch of events */
	bool		queued;			/* in plain_done, not handed out yet */
	char		key[PLAIN_KEY_MAX];	/* "host:port": who may share it */
	struct sockaddr_storage addr[2];
	socklen_t	addrlen[2];
	int			naddr;
	int			addr_i;			/* the address being tried */
	int			last_errno;		/* of the last failed connect */
	bool		refused;		/* an address refused the connection */
	int			connect_timeout_ms;
	char	   *req;			/* the request: head and body, malloc'd */
	size_t		req_len;
	size_t		req_sent;
	TimestampTz deadline;		/* of the whole transfer */
	TimestampTz connect_deadline;
	dlist_node	node;			/* in plain_active or plain_done */
	Http1Parser parser;
} PlainTransfer;

typedef struct IdleConn
{
	int			fd;
	TimestampTz since;
	char		key[PLAIN_KEY_MAX];
} IdleConn;

static dlist_head plain_active = DLIST_STATIC_INIT(plain_active);
static dlist_head plain_done = DLIST_STATIC_INIT(plain_done);
static int	plain_nactive = 0;
static bool plain_reconnects = false;	/* some transfer has reconnect set */

/*
 * While plain_nactive > 0: no transfer in plain_active is due before this
 * (it may be earlier than the earliest deadline, never later).  The
 * transfers are walked only once it is reached, not at every turn of the
 * loop, and it is made exact again then.
 */
static TimestampTz plain_due = 0;

/* When a transfer's timeout ends it: its connect's, or its own. */
static inline TimestampTz
plain_deadline(const PlainTransfer *pt)
{
	return pt->step == PLAIN_CONNECTING ?
		Min(pt->deadline, pt->connect_deadline) : pt->deadline;
}

/* A transfer may be due at at: plain_due is no later. */
static inline void
plain_due_by(TimestampTz at)
{
	if (plain_nactive == 1 || at < plain_due)
		plain_due = at;
}

/*
 * idle connections, oldest first: at most igny8_ai.max_idle_connections,
 * in an array grown as needed (TopMemoryContext)
 */
static IdleConn *idle_conns = NULL;
static int	nidle = 0;
static int	idle_size = 0;

/* inside igny8_http_drive's batch of events; pool entries evicted in it */
static bool in_drive = false;
static int *evicted = NULL;
static int	nevicted = 0;
static int	evicted_size = 0;

static void plain_connect(PlainTransfer *pt);
static void plain_send(PlainTransfer *pt);
static void plain_recv(PlainTransfer *pt);

/* Register fd for just these events. */
static void
plain_watch(int fd, uint32 events)
{
	SockState  *st = sock_state(fd);
	struct epoll_event ev;
	int			rc;

	if (st == NULL || st->events == events)
		return;
	memset(&ev, 0, sizeof(ev));
	ev.events = events;
	ev.data.fd = fd;
	if (st->events != 0)
		rc = epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev);
	else
	{
		rc = epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev);
		if (rc != 0 && errno == EEXIST)
			rc = epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev);
	}
	if (rc != 0)
		epoll_errno = errno;
	else
		st->events = events;
}

/* Close a socket of ours (closing it takes it out of the epoll set). */
static void
plain_close(int fd)
{
	SockState  *st = sock_state(fd);

	if (st != NULL)
		memset(st, 0, sizeof(SockState));
	close(fd);
}

/* Take an idle connection to key from the pool (the newest), or -1. */
static int
pool_take(const char *key, TimestampTz now)
{
	for (int i = nidle - 1; i >= 0; i--)
	{
		IdleConn	c = idle_conns[i];

		if (strcmp(c.key, key) != 0)
			continue;
		memmove(&idle_conns[i], &idle_conns[i + 1],
				sizeof(IdleConn) * (nidle - i - 1));
		nidle--;
		socks[c.fd].idle = false;
		if (TimestampDifferenceExceeds(c.since, now, PLAIN_IDLE_MAX_MS))
		{
			plain_close(c.fd);
			continue;
		}
		return c.fd;
	}
	return -1;
}

/*
 * Close the oldest idle connections until at most keep are idle.  Inside a
 * batch of events a connection is taken out of the epoll set at once but
 * closed only after the batch (plain_after_events), so that an event of
 * its still in the batch cannot reach a socket libcurl opens meanwhile
 * under its number.
 */
static void
pool_trim(int keep)
{
	int			n = nidle - Max(keep, 0);

	if (n <= 0)
		return;
	if (in_drive && nevicted + n > evicted_size)
	{
		int			size = Max(nevicted + n, 2 * evicted_size);

		evicted = (evicted == NULL) ?
			MemoryContextAlloc(TopMemoryContext, sizeof(int) * size) :
			repalloc(evicted, sizeof(int) * size);
		evicted_size = size;
	}
	for (int i = 0; i < n; i++)
	{
		int			old = idle_conns[i].fd;

		if (in_drive)
		{
			(void) epoll_ctl(epoll_fd, EPOLL_CTL_DEL, old, NULL);
			memset(&socks[old], 0, sizeof(SockState));
			evicted[nevicted++] = old;
		}
		else
			plain_close(old);
	}
	memmove(&idle_conns[0], &idle_conns[n], sizeof(IdleConn) * (nidle - n));
	nidle -= n;
}

/*
 * Keep a connection for reuse; when igny8_ai.max_idle_connections are idle
 * already, the one idle longest makes room.  The caller knows the setting
 * allows at least one.
 */
static void
pool_put(int fd, const char *key, TimestampTz now)
{
	pool_trim(igny8_max_idle_connections - 1);
	if (nidle == idle_size)
	{
		int			size = Min(Max(2 * idle_size, 16),
							   IGNY8_MAX_IDLE_CONNECTIONS_LIMIT);

		idle_conns = (idle_conns == NULL) ?
			MemoryContextAlloc(TopMemoryContext, sizeof(IdleConn) * size) :
			repalloc(idle_conns, sizeof(IdleConn) * size);
		idle_size = size;
	}
	idle_conns[nidle].fd = fd;
	idle_conns[nidle].since = now;
	strlcpy(idle_conns[nidle].key, key, PLAIN_KEY_MAX);
	nidle++;
	socks[fd].plain = NULL;
	socks[fd].idle = true;
	plain_watch(fd, EPOLLIN);
}

/* An idle connection became readable: the server closed it.  Close it. */
static void
pool_drop(int fd)
{
	for (int i = 0; i < nidle; i++)
	{
		if (idle_conns[i].fd == fd)
		{
			memmove(&idle_conns[i], &idle_conns[i + 1],
					sizeof(IdleConn) * (nidle - i - 1));
			nidle--;
			break;
		}
	}
	plain_close(fd);
}

/* The transfer is over: hand it out (igny8_http_next_finished). */
static void
plain_end(PlainTransfer *pt)
{
	Igny8Transfer *t = pt->t;

	t->status = pt->parser.status >= 200 ? pt->parser.status : 0;
	if (pt->fd >= 0)
		plain_close(pt->fd);
	pt->fd = -1;
	pt->step = PLAIN_FINISHED;
	pt->reconnect = false;
	dlist_delete(&pt->node);
	plain_nactive--;
	dlist_push_tail(&plain_done, &pt->node);
	pt->queued = true;
}

/* The transfer failed with code (os_errno: the system's error, or 0). */
static void
plain_fail(PlainTransfer *pt, CURLcode code, int os_errno, const char *why)
{
	pt->t->result = code;
	pt->t->os_errno = os_errno;
	if (why != NULL)
		strlcpy(pt->t->errbuf, why, sizeof(pt->t->errbuf));
	plain_end(pt);
}

/* The answer is complete: keep the connection if it may carry another. */
static void
plain_complete(PlainTransfer *pt, bool keep)
{
	pt->t->result = CURLE_OK;
	if (keep && igny8_max_idle_connections > 0)
	{
		pool_put(pt->fd, pt->key, GetCurrentTimestamp());
		pt->fd = -1;
	}
	plain_end(pt);
}

/*
 * A reused connection failed before any byte of the answer came: the
 * server had closed it.  Send the request once more, on a new connection
 * (after the batch of events in hand, when called while handling one).
 */
static void
plain_retry(PlainTransfer *pt, bool now)
{
	plain_close(pt->fd);
	pt->fd = -1;
	pt->retried = true;
	pt->req_sent = 0;
	http1_init(&pt->parser);
	pt->addr_i = 0;
	pt->refused = false;
	pt->step = PLAIN_CONNECTING;
	/* a new connect has its own connect timeout, as in libcurl */
	pt->connect_deadline =
		Min(pt->deadline,
			TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										pt->connect_timeout_ms));
	plain_due_by(pt->connect_deadline);
	if (now)
		plain_connect(pt);
	else
	{
		pt->reconnect = true;
		plain_reconnects = true;
	}
}

/* Open a connection to the next address, and send when it is open. */
static void
plain_connect(PlainTransfer *pt)
{
	while (pt->addr_i < pt->naddr)
	{
		struct sockaddr *sa = (struct sockaddr *) &pt->addr[pt->addr_i];
		int			fd = socket(sa->sa_family,
								SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		SockState  *st;
		int			on = 1;
		int			secs = 60;

		if (fd < 0 && (errno == EAFNOSUPPORT || errno == EPROTONOSUPPORT))
		{
			/* no IPv6 here: "localhost" is 127.0.0.1 alone */
			pt->last_errno = errno;
			pt->addr_i++;
			continue;
		}
		if (fd < 0)
		{
			plain_fail(pt, CURLE_COULDNT_CONNECT, errno,
					   "could not create a socket");
			return;
		}
		st = sock_state(fd);
		if (st == NULL)
		{
			close(fd);
			plain_fail(pt, CURLE_OUT_OF_MEMORY, ENOMEM, "out of memory");
			return;
		}
		memset(st, 0, sizeof(SockState));
		st->plain = pt;
		pt->fd = fd;
		pt->reused = false;
		/* as libcurl sets them (CURLOPT_TCP_NODELAY, CURLOPT_TCP_KEEPALIVE) */
		(void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
		(void) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
		(void) setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &secs, sizeof(secs));
		(void) setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &secs, sizeof(secs));
		if (connect(fd, sa, pt->addrlen[pt->addr_i]) == 0)
		{
			pt->step = PLAIN_SENDING;
			plain_send(pt);
			return;
		}
		if (errno == EINPROGRESS || errno == EINTR)
		{
			pt->step = PLAIN_CONNECTING;
			plain_watch(fd, EPOLLOUT);
			return;
		}
		pt->last_errno = errno;
		pt->refused |= (errno == ECONNREFUSED);
		plain_close(fd);
		pt->fd = -1;
		pt->addr_i++;
	}
	/*
	 * A refusal says most: the tunnel is down (a second address may fail
	 * otherwise, as ::1 with IPv6 off).
	 */
	plain_fail(pt, CURLE_COULDNT_CONNECT,
			   pt->refused ? ECONNREFUSED : pt->last_errno, NULL);
}

/* Send what is left of the request; then wait for the answer. */
static void
plain_send(PlainTransfer *pt)
{
	while (pt->req_sent < pt->req_len)
	{
		ssize_t		n = send(pt->fd, pt->req + pt->req_sent,
							 pt->req_len - pt->req_sent, MSG_NOSIGNAL);

		if (n > 0)
		{
			pt->sent_any = true;
			pt->req_sent += n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		{
			plain_watch(pt->fd, EPOLLOUT);
			return;
		}
		if (pt->reused && !pt->retried)
		{
			plain_retry(pt, false);
			return;
		}
		plain_fail(pt, CURLE_SEND_ERROR, n < 0 ? errno : 0, NULL);
		return;
	}
	pt->step = PLAIN_RECEIVING;
	plain_watch(pt->fd, EPOLLIN);

	/*
	 * With nothing else in flight, the server is likely to have answered by
	 * the time this process runs again (it takes the CPU on a small
	 * machine): read at once, instead of sleeping only to be woken at once.
	 * With more in flight the worker comes back to its sockets soon anyway,
	 * and a read now would mostly find nothing.
	 */
	if (plain_nactive == 1)
		plain_recv(pt);
}

/* libcurl's callbacks, as the parser calls them */
static void
plain_header(void *arg, const char *name, const char *value)
{
	note_header((Igny8Transfer *) arg, name, value);
}

static bool
plain_head_done(void *arg, int status, int64_t content_length)
{
	Igny8Transfer *t = (Igny8Transfer *) arg;

	/* as CURLOPT_MAXFILESIZE_LARGE: a length over the limit fails at once */
	if (content_length >= 0 && (uint64) content_length > (uint64) t->max)
	{
		t->too_large = true;
		return false;
	}
	return true;
}

static bool
plain_body(void *arg, const char *data, size_t len)
{
	return append_body((Igny8Transfer *) arg, data, len);
}

static const Http1Callbacks plain_callbacks = {
	plain_header, plain_head_done, plain_body
};

/*
 * The CURLcode of a response the parser refused, as libcurl gives it: a
 * broken chunked body or a head too long is CURLE_RECV_ERROR (retried: a
 * proxy or tunnel may have garbled it), anything else is not HTTP.
 */
static CURLcode
plain_parse_error(const Http1Parser *p)
{
	switch (p->failed_in)
	{
		case HTTP1_CHUNK_SIZE:
		case HTTP1_CHUNK_DATA:
		case HTTP1_CHUNK_END:
		case HTTP1_TRAILERS:
			return CURLE_RECV_ERROR;
		default:
			return p->head_bytes > HTTP1_HEAD_MAX ?
				CURLE_RECV_ERROR : CURLE_WEIRD_SERVER_REPLY;
	}
}

/* Read what has come of the answer. */
static void
plain_recv(PlainTransfer *pt)
{
	char		buf[PLAIN_RECV_SIZE];
	Http1Parser *p = &pt->parser;

	for (;;)
	{
		ssize_t		n = recv(pt->fd, buf, sizeof(buf), 0);
		Http1Result r;
		size_t		used;

		if (n > 0)
		{
			r = http1_feed(p, buf, n, &used, &plain_callbacks, pt->t);
			if (r == HTTP1_COMPLETE)
			{
				/* bytes after the answer: nothing asked for them */
				plain_complete(pt, http1_keep_alive(p) && used == (size_t) n);
				return;
			}
			if (r == HTTP1_ERROR)
			{
				plain_fail(pt, plain_parse_error(p), 0, p->error);
				return;
			}
			if (r == HTTP1_ABORTED)
			{
				plain_fail(pt, pt->t->too_large && pt->t->len == 0 ?
						   CURLE_FILESIZE_EXCEEDED : CURLE_WRITE_ERROR, 0,
						   NULL);
				return;
			}
			if ((size_t) n < sizeof(buf))
				return;			/* all there was: wait for more */
			continue;
		}
		if (n == 0)
		{
			r = http1_eof(p);
			if (r == HTTP1_COMPLETE)
				plain_complete(pt, false);
			else if (r == HTTP1_EMPTY && pt->reused && !pt->retried)
				plain_retry(pt, false);
			else if (r == HTTP1_EMPTY)
				plain_fail(pt, CURLE_GOT_NOTHING, 0, NULL);
			else if (r == HTTP1_PARTIAL)
				plain_fail(pt, CURLE_PARTIAL_FILE, 0, NULL);
			else
				plain_fail(pt, plain_parse_error(p), 0, p->error);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		if (!p->any_byte && pt->reused && !pt->retried)
			plain_retry(pt, false);
		else
			plain_fail(pt, CURLE_RECV_ERROR, errno, NULL);
		return;
	}
}

/* An event on a transfer's socket. */
static void
plain_event(PlainTransfer *pt, uint32 events)
{
	switch (pt->step)
	{
		case PLAIN_CONNECTING:
			{
				int			err = 0;
				socklen_t	len = sizeof(err);

				if (getsockopt(pt->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
					err = errno;
				if (err == 0)
				{
					pt->step = PLAIN_SENDING;
					plain_send(pt);
					break;
				}
				/* the next address, after the batch of events */
				pt->last_errno = err;
				pt->refused |= (err == ECONNREFUSED);
				plain_close(pt->fd);
				pt->fd = -1;
				pt->addr_i++;
				pt->reconnect = true;
				plain_reconnects = true;
				break;
			}
		case PLAIN_SENDING:
			plain_send(pt);
			break;
		case PLAIN_RECEIVING:
			plain_recv(pt);
			break;
		case PLAIN_FINISHED:
			break;
	}
}

/* Connect what asked to during the batch of events; end what is overdue. */
static void
plain_after_events(void)
{
	dlist_mutable_iter iter;
	TimestampTz now;
	TimestampTz next = DT_NOEND;

	while (nevicted > 0)
		close(evicted[--nevicted]);
	if (plain_reconnects)
	{
		plain_reconnects = false;
		dlist_foreach_modify(iter, &plain_active)
		{
			PlainTransfer *pt = dlist_container(PlainTransfer, node, iter.cur);

			if (pt->reconnect)
			{
				pt->reconnect = false;
				plain_connect(pt);
			}
		}
	}
	if (plain_nactive == 0)
		return;
	now = GetCurrentTimestamp();
	if (now < plain_due)
		return;
	dlist_foreach_modify(iter, &plain_active)
	{
		PlainTransfer *pt = dlist_container(PlainTransfer, node, iter.cur);
		TimestampTz at = plain_deadline(pt);

		if (now >= at)
			plain_fail(pt, CURLE_OPERATION_TIMEDOUT, ETIMEDOUT, NULL);
		else
			next = Min(next, at);
	}
	plain_due = next;
}

/* Does headers hold a header of this name ("name", lowercase)? */
static bool
has_header(const Igny8HttpRequest *req, const char *name)
{
	size_t		len = strlen(name);

	for (int i = 0; i < req->nheaders; i++)
	{
		if (pg_strncasecmp(req->headers[i], name, len) == 0 &&
			req->headers[i][len] == ':')
			return true;
	}
	return false;
}

/*
 * Can the built-in client take this call to an http:// base_url with no
 * proxy?  Fills pt's addresses and key, and host (the Host header) and path
 * (the request target: the base URL's path and the request's).  No:
 * credentials in the URL, a host name other than "localhost", a port that
 * is not plain digits, or a target that libcurl would rewrite or refuse
 * (spaces, dot segments, a fragment).
 */
static bool
plain_target(const char *base_url, const char *req_path, PlainTransfer *pt,
			 StringInfo host, StringInfo path)
{
	const char *auth;
	const char *auth_end;
	const char *hp;
	const char *p;
	char		name[PLAIN_KEY_MAX];
	int			port = 80;
	struct in_addr a4;
	struct in6_addr a6;
	int			family;

	auth = base_url + 7;
	auth_end = auth + strcspn(auth, "/?#");
	if (memchr(auth, '@', auth_end - auth) != NULL)
		return false;
	if (*auth == '[')
	{
		const char *close = memchr(auth, ']', auth_end - auth);

		if (close == NULL || close - auth - 1 >= PLAIN_KEY_MAX - 8)
			return false;
		memcpy(name, auth + 1, close - auth - 1);
		name[close - auth - 1] = '\0';
		if (inet_pton(AF_INET6, name, &a6) != 1)
			return false;
		family = AF_INET6;
		hp = close + 1;
	}
	else
	{
		const char *colon = memchr(auth, ':', auth_end - auth);
		const char *name_end = colon ? colon : auth_end;

		if (name_end == auth || name_end - auth >= PLAIN_KEY_MAX - 8)
			return false;
		memcpy(name, auth, name_end - auth);
		name[name_end - auth] = '\0';
		if (inet_pton(AF_INET, name, &a4) == 1)
			family = AF_INET;
		else if (pg_strcasecmp(name, "localhost") == 0)
			family = AF_UNSPEC;
		else
			return false;
		hp = name_end;
	}
	if (hp < auth_end)
	{
		if (*hp != ':' || hp + 1 == auth_end)
			return false;
		port = 0;
		for (p = hp + 1; p < auth_end; p++)
		{
			if (*p < '0' || *p > '9')
				return false;
			port = port * 10 + (*p - '0');
			if (port > 65535)
				return false;
		}
		if (port == 0)
			return false;
	}

	/* the target: printable ASCII, no fragment, no dot segments */
	appendStringInfoString(path, auth_end);
	appendStringInfoString(path, req_path);
	if (path->data[0] != '/')
		return false;
	for (p = path->data; *p != '\0'; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c <= ' ' || c > '~' || c == '#' || c == '\\')
			return false;
	}
	p = path->data;
	while ((p = strstr(p, "/.")) != NULL && p < path->data + strcspn(path->data, "?"))
	{
		if (p[2] == '/' || p[2] == '\0' || p[2] == '?' ||
			(p[2] == '.' && (p[3] == '/' || p[3] == '\0' || p[3] == '?')))
			return false;
		p += 2;
	}

	appendBinaryStringInfo(host, auth, hp - auth);
	if (port != 80)
		appendStringInfo(host, ":%d", port);
	snprintf(pt->key, PLAIN_KEY_MAX, "%.*s:%d", (int) (hp - auth), auth, port);

	memset(pt->addr, 0, sizeof(pt->addr));
	if (family == AF_INET || family == AF_UNSPEC)
	{
		struct sockaddr_in *sin = (struct sockaddr_in *) &pt->addr[pt->naddr];

		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		if (family == AF_INET)
			sin->sin_addr = a4;
		else
			sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		pt->addrlen[pt->naddr++] = sizeof(struct sockaddr_in);
	}
	if (family == AF_INET6 || family == AF_UNSPEC)
	{
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *) &pt->addr[pt->naddr];

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		sin6->sin6_addr = (family == AF_INET6) ? a6 : in6addr_loopback;
		pt->addrlen[pt->naddr++] = sizeof(struct sockaddr_in6);
	}
	return true;
}

/*
 * Start a transfer with the built-in client, if it can take it: true, and
 * the transfer is on its way (or finished already: a refused connection).
 */
static bool
plain_start(Igny8Transfer *t, const char *base_url, const Igny8HttpRequest *req,
			int timeout_ms, int connect_timeout_ms, const char *proxy)
{
	PlainTransfer *pt;
	StringInfoData host;
	StringInfoData head;
	StringInfoData path;
	size_t		body_len = (req->body != NULL) ? strlen(req->body) : 0;
	bool		post = (strcmp(req->method, "POST") == 0);
	TimestampTz now;
	int			fd;

	if (!igny8_builtin_http_client ||
		(proxy != NULL && proxy[0] != '\0') ||
		pg_strncasecmp(base_url, "http://", 7) != 0)
		return false;
	pt = calloc(1, sizeof(PlainTransfer));
	if (pt == NULL)
		return false;			/* libcurl's turn */
	initStringInfo(&host);
	initStringInfo(&path);
	if (!plain_target(base_url, req->path, pt, &host, &path))
	{
		free(pt);
		pfree(host.data);
		pfree(path.data);
		return false;
	}

	initStringInfo(&head);
	appendStringInfo(&head, "%s %s HTTP/1.1\r\n", req->method, path.data);
	if (!has_header(req, "host"))
		appendStringInfo(&head, "Host: %s\r\n", host.data);
	if (!has_header(req, "user-agent"))
		appendStringInfoString(&head, "User-Agent: igny8_ai/1.0\r\n");
	if (!has_header(req, "accept"))
		appendStringInfoString(&head, "Accept: */*\r\n");
	for (int i = 0; i < req->nheaders; i++)
	{
		const char *h = req->headers[i];
		const char *colon = strchr(h, ':');

		/* "Name:" with no value takes a header out, as in libcurl */
		if (colon != NULL && colon[1 + strspn(colon + 1, " ")] == '\0')
			continue;
		if (pg_strncasecmp(h, "content-length:", 15) == 0)
			continue;			/* the body's own length is sent */
		appendStringInfo(&head, "%s\r\n", h);
	}
	if (post)
		appendStringInfo(&head, "Content-Length: %zu\r\n", body_len);
	appendStringInfoString(&head, "\r\n");

	pt->req_len = head.len + (post ? body_len : 0);
	pt->req = malloc(pt->req_len);
	if (pt->req == NULL)
	{
		free(pt);
		pfree(host.data);
		pfree(path.data);
		pfree(head.data);
		return false;
	}
	memcpy(pt->req, head.data, head.len);
	if (post && body_len > 0)
		memcpy(pt->req + head.len, req->body, body_len);
	pfree(host.data);
	pfree(path.data);
	pfree(head.data);

	pt->t = t;
	t->plain = pt;
	pt->fd = -1;
	http1_init(&pt->parser);
	now = GetCurrentTimestamp();
	pt->deadline = TimestampTzPlusMilliseconds(now, Max(timeout_ms, 1));
	pt->connect_timeout_ms = Max(Min(connect_timeout_ms, timeout_ms), 1);
	pt->connect_deadline =
		TimestampTzPlusMilliseconds(now, pt->connect_timeout_ms);
	dlist_push_tail(&plain_active, &pt->node);
	plain_nactive++;
	plain_due_by(plain_deadline(pt));

	fd = pool_take(pt->key, now);
	if (fd >= 0)
	{
		pt->fd = fd;
		pt->reused = true;
		socks[fd].plain = pt;
		pt->step = PLAIN_SENDING;
		plain_send(pt);
	}
	else
		plain_connect(pt);
	/* a retry asked for in plain_send: no batch of events is in hand */
	if (pt->reconnect)
	{
		pt->reconnect = false;
		plain_connect(pt);
	}
	return true;
}

/* Forget a transfer of the built-in client: abort it if in flight. */
static void
plain_free(PlainTransfer *pt)
{
	if (pt->step != PLAIN_FINISHED)
	{
		if (pt->fd >= 0)
			plain_close(pt->fd);
		dlist_delete(&pt->node);
		plain_nactive--;
	}
	else if (pt->queued)
		dlist_delete(&pt->node);
	free(pt->req);
	free(pt);
}

/*
 * Milliseconds until curl's timer or the built-in client's next deadline
 * is due (0: now), or -1 when neither is.
 */
long
igny8_http_timeout_ms(void)
{
	long		secs;
	int			usecs;
	TimestampTz now;
	TimestampTz at = 0;

	/* a transfer that could not start, or ended at once, is finished */
	if (failed_starts != NIL || !dlist_is_empty(&plain_done))
		return 0;
	if (timer_set)
		at = timer_at;
	if (plain_nactive > 0 && (at == 0 || plain_due < at))
		at = plain_due;
	if (at == 0)
		return -1;
	now = GetCurrentTimestamp();
	if (now >= at)
		return 0;
	TimestampDifference(now, at, &secs, &usecs);
	return secs * 1000 + (usecs + 999) / 1000;
}

/*
 * Start one HTTP call.  The transfer is malloc'd (it outlives memory
 * contexts of a loop iteration) and freed by igny8_http_free.
 */
Igny8Transfer *
igny8_http_start(const char *base_url, const Igny8HttpRequest *req,
				 int timeout_ms, int connect_timeout_ms, const char *proxy,
				 const char *ca_file, size_t max_bytes, void *owner)
{
	Igny8Transfer *t = calloc(1, sizeof(Igny8Transfer));
	CURL	   *easy;
	char	   *url;
	int			rc = CURLE_OK;

	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	t->owner = owner;
	t->status = 0;
	t->retry_after = -1;
	t->should_retry = -1;
	/* an image's own limit, else igny8_ai.max_response_size */
	t->max = max_bytes > 0 ? max_bytes : (size_t) igny8_max_response_kb * 1024;

	/* a lower igny8_ai.max_idle_connections since the last call */
	pool_trim(igny8_max_idle_connections);
	if (plain_start(t, base_url, req, timeout_ms, connect_timeout_ms, proxy))
		return t;

	easy = curl_easy_init();
	if (easy == NULL)
	{
		free(t);
		elog(ERROR, "could not create a libcurl handle");
	}
	t->easy = easy;
	sync_curl_max_idle();
	/* what curl's errors must not show: all before the proxy host's '@' */
	if (proxy != NULL && strchr(proxy, '@') != NULL)
	{
		const char *scheme = strstr(proxy, "://");
		const char *start = scheme ? scheme + 3 : proxy;
		const char *at = strrchr(proxy, '@');

		if (at > start &&
			(t->proxy_secret = strndup(start, at - start)) == NULL)
		{
			curl_easy_cleanup(easy);
			free(t);
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
		}
	}
	/*
	 * Every option is checked: the protocol, redirect and TLS ones are what
	 * keeps the worker safe, and a transfer that could not get one of them
	 * is not sent.
	 */
	url = psprintf("%s%s", base_url, req->path);
	rc |= curl_easy_setopt(easy, CURLOPT_URL, url);
	pfree(url);
	rc |= curl_easy_setopt(easy, CURLOPT_PRIVATE, t);
	rc |= curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, open_socket);
	rc |= curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, t);
	rc |= curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
	rc |= curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, t->errbuf);
	rc |= curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	rc |= curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	rc |= curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	rc |= curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	rc |= curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	rc |= curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (ca_file != NULL)
		rc |= curl_easy_setopt(easy, CURLOPT_CAINFO, ca_file);
	rc |= curl_easy_setopt(easy, CURLOPT_PROXY, proxy ? proxy : "");
	/*
	 * A proxy set is used for every host: the server's NO_PROXY must not
	 * route around a proxy a DBA set as the way out (an empty list
	 * overrides the environment's).
	 */
	rc |= curl_easy_setopt(easy, CURLOPT_NOPROXY, "");
	t->tunnel = (proxy != NULL && proxy[0] != '\0' &&
				 pg_strncasecmp(base_url, "https:", 6) == 0);
	rc |= curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	/* igny8_ai.max_idle_connections = 0: closed after the answer */
	if (igny8_max_idle_connections == 0)
		rc |= curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
	rc |= curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
	rc |= curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) Max(timeout_ms, 1));
	rc |= curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
						   (long) Max(Min(connect_timeout_ms, timeout_ms), 1));
	rc |= curl_easy_setopt(easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) t->max);
	rc |= curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_callback);
	rc |= curl_easy_setopt(easy, CURLOPT_WRITEDATA, t);
	rc |= curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, header_callback);
	rc |= curl_easy_setopt(easy, CURLOPT_HEADERDATA, t);
	rc |= curl_easy_setopt(easy, CURLOPT_USERAGENT, "igny8_ai/1.0");

	/* no "Expect: 100-continue" round trip for large bodies */
	t->headers = curl_slist_append(NULL, "Expect:");
	for (int i = 0; i < req->nheaders; i++)
		t->headers = curl_slist_append(t->headers, req->headers[i]);
	rc |= curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);

	if (strcmp(req->method, "POST") == 0)
	{
		rc |= curl_easy_setopt(easy, CURLOPT_POST, 1L);
		rc |= curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
							   (curl_off_t) (req->body ? strlen(req->body) : 0));
		rc |= curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS,
							   req->body ? req->body : "");
	}
	else
		rc |= curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);

	if (rc == CURLE_OK && t->headers != NULL &&
		curl_multi_add_handle(multi, easy) == CURLM_OK)
		t->in_multi = true;
	else
	{
		/* finished at once, as a local failure: never on the network */
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		t->result = CURLE_FAILED_INIT;
		t->os_errno = ENOMEM;
		snprintf(t->errbuf, sizeof(t->errbuf),
				 "could not set up the HTTP transfer");
		failed_starts = lappend(failed_starts, t);
		MemoryContextSwitchTo(old);
	}
	return t;
}

/*
 * Remove a transfer from the loop and free it.  Removing a transfer that is
 * still in progress closes its connection, which is how a cancelled request
 * is aborted at the backend.
 */
void
igny8_http_free(Igny8Transfer *t)
{
	if (t == NULL)
		return;
	failed_starts = list_delete_ptr(failed_starts, t);
	if (t->plain != NULL)
		plain_free(t->plain);
	if (t->in_multi)
		curl_multi_remove_handle(multi, t->easy);
	curl_easy_cleanup(t->easy);
	curl_slist_free_all(t->headers);
	if (t->body)
		held_bytes -= t->cap;
	free(t->body);
	free(t->proxy_secret);
	free(t);
}

/*
 * Let curl make progress: on ready sockets when fd_ready, and on its timer
 * whenever it is due.  Finished transfers are marked and can be collected
 * with igny8_http_next_finished.
 */
void
igny8_http_drive(bool fd_ready)
{
	int			running;

	in_drive = true;
	if (fd_ready)
	{
		struct epoll_event evs[IGNY8_EPOLL_BATCH];
		int			n;

		do
		{
			n = epoll_wait(epoll_fd, evs, IGNY8_EPOLL_BATCH, 0);
			if (n < 0 && errno != EINTR)
				ereport(LOG,
						(errmsg("igny8_ai worker could not wait on its sockets: %m")));
			for (int i = 0; i < n; i++)
			{
				int			flags = 0;
				int			fd = evs[i].data.fd;

				/*
				 * A parked connection became readable: the server closed
				 * it, or said something unasked.  curl is not watching
				 * it; it finds out when it next takes the connection.
				 */
				if (fd >= 0 && fd < nsocks && socks[fd].plain != NULL)
				{
					plain_event(socks[fd].plain, evs[i].events);
					continue;
				}
				if (fd >= 0 && fd < nsocks && socks[fd].idle)
				{
					pool_drop(fd);	/* the server closed it, or spoke unasked */
					continue;
				}
				if (fd >= 0 && fd < nsocks && socks[fd].parked)
				{
					unwatch(fd, &socks[fd]);
					continue;
				}
				if (evs[i].events & EPOLLIN)
					flags |= CURL_CSELECT_IN;
				if (evs[i].events & EPOLLOUT)
					flags |= CURL_CSELECT_OUT;
				if (evs[i].events & (EPOLLERR | EPOLLHUP))
					flags |= CURL_CSELECT_ERR;
				report_multi_error(curl_multi_socket_action(multi,
															evs[i].data.fd,
															flags, &running));
			}
		} while (n == IGNY8_EPOLL_BATCH);
	}

	/* curl's timer: timeouts, and new transfers (timeout 0) */
	if (timer_set && GetCurrentTimestamp() >= timer_at)
	{
		timer_set = false;
		report_multi_error(curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT,
													0, &running));
	}
	in_drive = false;
	plain_after_events();
	report_epoll_error();
}

/* Say in the server log what a failing curl_multi_socket_action said. */
static void
report_multi_error(CURLMcode rc)
{
	if (rc != CURLM_OK && rc != CURLM_BAD_SOCKET)
		ereport(LOG,
				(errmsg("igny8_ai worker: libcurl: %s", curl_multi_strerror(rc))));
}

/* The next transfer that finished, or NULL. */
Igny8Transfer *
igny8_http_next_finished(void)
{
	CURLMsg    *msg;
	int			left;

	if (failed_starts != NIL)
	{
		Igny8Transfer *t = linitial(failed_starts);

		failed_starts = list_delete_first(failed_starts);
		t->finished = true;
		return t;
	}
	if (!dlist_is_empty(&plain_done))
	{
		PlainTransfer *pt = dlist_container(PlainTransfer, node,
											dlist_pop_head_node(&plain_done));

		pt->queued = false;
		pt->t->finished = true;
		return pt->t;
	}
	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		Igny8Transfer *t;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &t);
		t->result = msg->data.result;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE,
						  &t->status);
		curl_easy_getinfo(msg->easy_handle, CURLINFO_OS_ERRNO, &t->os_errno);
		if (t->result == CURLE_COULDNT_CONNECT && t->os_errno == 0)
			t->os_errno = t->socket_errno;
		t->finished = true;
		return t;
	}
	return NULL;
}

/*
 * Did the transfer fail for a reason of our own, which says nothing about
 * the provider: out of file descriptors or memory?
 */
bool
igny8_http_local_failure(Igny8Transfer *t)
{
	return t->os_errno == EMFILE || t->os_errno == ENFILE ||
		t->os_errno == ENOBUFS || t->os_errno == ENOMEM ||
		t->result == CURLE_OUT_OF_MEMORY || t->over_budget;
}

/*
 * Did a failed transfer send nothing to the server (no connection, a name
 * that does not resolve, a TLS handshake that failed, a connect that timed
 * out, or, through a proxy's tunnel, a CONNECT the proxy did not answer
 * with 2xx, whose own bytes count in the request size)?  Then the server
 * cannot have acted on it.
 */
bool
igny8_http_never_sent(Igny8Transfer *t)
{
	long		size = 0;
	long		code = 0;

	if (t->result == CURLE_OK)
		return false;
	if (t->result == CURLE_FAILED_INIT)
		return true;			/* never started */
	if (t->plain != NULL)
		return !t->plain->sent_any;
	if (curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &size) == CURLE_OK &&
		size == 0)
		return true;
	return t->tunnel &&
		(curl_easy_getinfo(t->easy, CURLINFO_HTTP_CONNECTCODE, &code) != CURLE_OK ||
		 code < 200 || code > 299);
}

/*
 * A finished transfer's answer as the protocol parsers read it, its body
 * redacted of key (secrets.c; NULL: left as it came).  The body may be a
 * palloc'd copy: resp lives no longer than the transfer.
 */
void
igny8_http_answer(Igny8Transfer *t, const char *key, Igny8HttpResponse *resp)
{
	size_t		len = t->len;

	memset(resp, 0, sizeof(*resp));
	resp->status = t->status;
	resp->retry_after = t->retry_after;
	resp->should_retry = t->should_retry;
	resp->body = t->body ? igny8_redact_body(t->body, &len, key, t->status) : "";
	resp->body_len = t->body ? len : 0;
	/* the buffer (write_callback) and a redacted copy end in a NUL */
	resp->body_terminated = true;
}

/*
 * Free a finished transfer's body, and the redacted copy of it that resp
 * may hold (igny8_http_answer), once it was parsed: what was taken out of
 * it is all that is kept, and its memory goes back to
 * igny8_ai.answer_memory at once rather than with the transfer.  resp is
 * left with an empty body.
 */
void
igny8_http_release_body(Igny8Transfer *t, Igny8HttpResponse *resp)
{
	if (t->body != NULL && resp->body != t->body)
		pfree((char *) resp->body);
	if (t->body != NULL)
		held_bytes -= t->cap;
	free(t->body);
	t->body = NULL;
	t->cap = 0;
	t->len = 0;
	resp->body = "";
	resp->body_len = 0;
}

/* Did the transfer fail because the answer was over max_response_size? */
bool
igny8_http_too_large(Igny8Transfer *t)
{
	return t->too_large || t->result == CURLE_FILESIZE_EXCEEDED;
}

/*
 * Take a finished transfer's body: it is the caller's to free() with
 * igny8_http_drop_body, and stays counted against igny8_ai.answer_memory
 * until then.
 */
char *
igny8_http_take_body(Igny8Transfer *t, size_t *held)
{
	char	   *body = t->body;

	*held = t->cap;
	t->body = NULL;
	t->cap = 0;
	t->len = 0;
	return body;
}

void
igny8_http_drop_body(char *body, size_t held)
{
	if (body == NULL)
		return;
	held_bytes -= held;
	free(body);
}

/*
 * Did the worker's memory for answers run out during the transfer, held by
 * other answers as well, so that a retry may find room?  An answer larger
 * than the whole of igny8_ai.answer_memory never fits (over_budget_alone).
 */
bool
igny8_http_over_budget(Igny8Transfer *t)
{
	return t->over_budget && !t->over_budget_alone;
}

/*
 * curl's error text with the proxy's credentials replaced: curl names the
 * proxy URL as it was given, credentials included, in some of its errors
 * ("Unsupported proxy syntax in 'http://user:password@...'"), and a URL it
 * cannot parse may have them anywhere.  So every copy of the proxy's
 * user:password (all before the last '@') goes, and a start of it that
 * ends the text (curl cuts its messages at CURL_ERROR_SIZE), then the user
 * information of any other URL in the text.
 */
static char *
without_userinfo(const char *text, const char *secret)
{
	StringInfoData buf;
	const char *p;
	const char *scheme;

	if (secret != NULL && secret[0] != '\0')
	{
		const char *hit;
		size_t		len = strlen(secret);
		size_t		rest;

		initStringInfo(&buf);
		for (p = text; (hit = strstr(p, secret)) != NULL; p = hit + len)
		{
			appendBinaryStringInfo(&buf, p, hit - p);
			appendStringInfoString(&buf, "[redacted]");
		}
		/* the longest end of the text that a cut-off copy may be */
		rest = strlen(p);
		for (size_t i = 0; i < rest; i++)
		{
			if (strncmp(p + i, secret, rest - i) == 0)
			{
				rest = i;
				break;
			}
		}
		appendBinaryStringInfo(&buf, p, rest);
		if (p[rest] != '\0')
			appendStringInfoString(&buf, "[redacted]");
		text = buf.data;
	}

	p = text;
	initStringInfo(&buf);
	while ((scheme = strstr(p, "://")) != NULL)
	{
		const char *host = scheme + 3;
		size_t		n = strcspn(host, "@/?#'\" \t");

		appendBinaryStringInfo(&buf, p, host - p);
		if (host[n] == '@')
		{
			appendStringInfoString(&buf, "[redacted]@");
			host += n + 1;
		}
		p = host;
	}
	appendStringInfoString(&buf, p);
	return buf.data;
}

/* Short text for a transport failure, never containing headers or keys. */
const char *
igny8_http_error_text(Igny8Transfer *t)
{
	if (t->over_budget_alone)
		return psprintf("the answer is larger than the worker's memory for answers in flight (igny8_ai.answer_memory, %d kB)",
						igny8_answer_memory_kb);
	if (t->over_budget)
		return psprintf("the worker's memory for answers in flight is full (igny8_ai.answer_memory, %d kB)",
						igny8_answer_memory_kb);
	if (igny8_http_too_large(t))
		return psprintf("response larger than igny8_ai.max_response_size (%d kB)",
						igny8_max_response_kb);
	switch (t->result)
	{
		case CURLE_COULDNT_CONNECT:
			if (t->os_errno == 0 || t->os_errno == ECONNREFUSED)
				return "connection refused";
			return psprintf("could not connect: %s", strerror((int) t->os_errno));
		case CURLE_COULDNT_RESOLVE_HOST:
			return "could not resolve host";
		case CURLE_OPERATION_TIMEDOUT:
			return "timed out";
		case CURLE_GOT_NOTHING:
			return "empty reply from server";
		case CURLE_PARTIAL_FILE:
			return "connection closed before the response was complete";
		case CURLE_RECV_ERROR:
			/* the built-in client says what was wrong with the body */
			if (t->plain != NULL && t->errbuf[0])
				return pstrdup(t->errbuf);
			return "connection reset while receiving";
		case CURLE_SEND_ERROR:
			return "connection reset while sending";
		default:
			if (t->errbuf[0])
				return without_userinfo(t->errbuf, t->proxy_secret);
			return curl_easy_strerror(t->result);
	}
}

/*
 * What kind of transport failure, for a health probe's detail: a refused
 * connection (the tunnel or the box is down), a timeout (up but too slow),
 * a name that does not resolve, a local shortage, or anything else.
 */
const char *
igny8_http_failure_kind(Igny8Transfer *t)
{
	if (igny8_http_local_failure(t))
		return "local";
	switch (t->result)
	{
		case CURLE_COULDNT_CONNECT:
			return "connection_refused";
		case CURLE_OPERATION_TIMEDOUT:
			return "timeout";
		case CURLE_COULDNT_RESOLVE_HOST:
			return "dns";
		default:
			return "transport";
	}
}

/*
 * Classify a transport failure (protocols.md section 5): a refused or
 * unresolvable connection means the backend is not there, so go on at once;
 * a dropped connection may be transient, so retry; a timeout has already
 * spent the deployment's time budget, so go on.
 */
Igny8ErrorClass
igny8_http_classify_transport(Igny8Transfer *t)
{
	switch (t->result)
	{
		case CURLE_GOT_NOTHING:
		case CURLE_PARTIAL_FILE:
		case CURLE_RECV_ERROR:
		case CURLE_SEND_ERROR:
			return IGNY8_ERR_RETRY;
		default:
			return IGNY8_ERR_FALLBACK;
	}
}
