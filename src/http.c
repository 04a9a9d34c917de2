/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The worker's libcurl multi loop.
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

#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "utils/memutils.h"

#include "answer_buffer.h"
#include "worker.h"

#define IGNY8_EPOLL_BATCH	64
/* idle connections kept for reuse; more are closed after their transfer */
#define IGNY8_MAX_IDLE_CONNECTIONS	256

static CURLM *multi = NULL;
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

static curl_socket_t
open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *addr)
{
	curl_socket_t fd = socket(addr->family, addr->socktype, addr->protocol);
	SockState  *st = sock_state(fd);

	if (st != NULL)
	{
		st->events = 0;
		st->ours = true;
		st->parked = false;
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
		curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_callback) != CURLM_OK ||
		curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS,
						  (long) IGNY8_MAX_IDLE_CONNECTIONS) != CURLM_OK)
		elog(ERROR, "could not set up the libcurl multi handle");
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

/* Milliseconds until curl's timer is due (0: now), or -1 when none. */
long
igny8_http_timeout_ms(void)
{
	long		secs;
	int			usecs;

	/* a transfer that could not start is finished already */
	if (failed_starts != NIL)
		return 0;
	if (!timer_set)
		return -1;
	TimestampDifference(GetCurrentTimestamp(), timer_at, &secs, &usecs);
	return secs * 1000 + (usecs + 999) / 1000;
}

static size_t
write_callback(char *data, size_t size, size_t nmemb, void *userp)
{
	Igny8Transfer *t = (Igny8Transfer *) userp;
	size_t		n = size * nmemb;

	if (t->len + n > t->max)
	{
		t->too_large = true;
		return 0;				/* makes curl fail with CURLE_WRITE_ERROR */
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
			return 0;
		}
		p = realloc(t->body, cap);
		if (p == NULL)
			return 0;
		held_bytes = held_bytes - t->cap + cap;
		t->body = p;
		t->cap = cap;
	}
	memcpy(t->body + t->len, data, n);
	t->len += n;
	t->body[t->len] = '\0';
	return n;
}

/* Parse "retry-after" (seconds), "retry-after-ms", "x-should-retry". */
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
		t->retry_after = -1;
		t->should_retry = -1;
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

	if (pg_strcasecmp(line, "retry-after-ms") == 0)
	{
		char	   *end;
		double		v = strtod(val, &end);

		if (end != val && v >= 0)
			t->retry_after = v / 1000.0;
	}
	else if (pg_strcasecmp(line, "retry-after") == 0 && t->retry_after < 0)
	{
		char	   *end;
		double		v = strtod(val, &end);

		/* an HTTP-date is not worth parsing: treat as absent */
		if (end != val && v >= 0)
			t->retry_after = v;
	}
	else if (pg_strcasecmp(line, "x-should-retry") == 0)
	{
		if (pg_strncasecmp(val, "true", 4) == 0)
			t->should_retry = 1;
		else if (pg_strncasecmp(val, "false", 5) == 0)
			t->should_retry = 0;
	}
	return n;
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
	easy = curl_easy_init();
	if (easy == NULL)
	{
		free(t);
		elog(ERROR, "could not create a libcurl handle");
	}
	t->easy = easy;
	t->owner = owner;
	t->status = 0;
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
	t->retry_after = -1;
	t->should_retry = -1;
	/* an image's own limit, else igny8_ai.max_response_size */
	t->max = max_bytes > 0 ? max_bytes : (size_t) igny8_max_response_kb * 1024;

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
