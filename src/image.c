/*-------------------------------------------------------------------------
 *
 * image.c
 *	  The image task in the worker: one attempt is a chain of HTTP steps,
 *	  driven by a step cursor in the job.
 *
 * ComfyUI (protocols.md 2):
 *
 *	SUBMIT  POST /prompt (the deployment's workflow, the request's values
 *			bound into it, a prompt_id of our own)
 *	POLL	GET /history/{prompt_id}, on a timer that starts at 100 ms and
 *			backs off to 1 s; no transfer is held between two polls
 *			(the job waits in JOB_POLL_WAIT, holding its provider place)
 *	QUEUE	GET /queue instead of every tenth poll: a prompt that is
 *			neither waiting nor running has finished, or was dropped
 *			(the queue cleared, ComfyUI restarted), which no history
 *			read can tell from a prompt still waiting
 *	RECHECK GET /history/{prompt_id} once more after such a GET /queue:
 *			no entry means dropped
 *	VIEW	GET /view?filename=... of the first output image; its PNG
 *			signature and IHDR size are checked before it is returned
 *
 * OpenAI: one step, POST /v1/images/generations with b64_json.
 *
 * The attempt ends with the deployment's timeout (attempt_deadline) or
 * the call's deadline, whichever comes first.  A ComfyUI prompt that an
 * attempt leaves behind (cancelled, timed out, or the worker stopping) is
 * cleaned up: removed from the queue if it is still waiting, interrupted
 * by its prompt_id if GET /queue then shows it running (never a global
 * interrupt, and never an interrupt of a prompt not seen running: a server
 * from before the targeted interrupt stops whatever runs, whatever the
 * prompt_id sent), then its history entry is deleted.  Those
 * cleanup calls belong to no job: the worker sends them on its own.  A
 * prompt whose POST /prompt is still in flight is cleaned up once ComfyUI
 * has answered it (cleanup_adopt).  A worker that starts again in the
 * same run of the server cleans up the prompts an earlier incarnation of
 * it left running or waiting (igny8_image_sweep).
 *
 * The image bytes stay where libcurl wrote them (a malloc'd buffer the job
 * takes over from the transfer) until they are copied into the payload
 * area for the caller.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"

#include "worker.h"

#define IGNY8_STEP_SUBMIT	0
#define IGNY8_STEP_POLL		1
#define IGNY8_STEP_VIEW		2
#define IGNY8_STEP_OPENAI	3
#define IGNY8_STEP_QUEUE	4
#define IGNY8_STEP_RECHECK	5

/* the history poll: first after this, then backing off to the maximum */
#define IGNY8_POLL_FIRST_MS	100
#define IGNY8_POLL_MAX_MS	1000
/* every this many polls answered "{}", GET /queue instead of the next */
#define IGNY8_POLL_QUEUE_EVERY 10
/* an image deployment's limit without settings.max_image_bytes */
#define IGNY8_DEFAULT_MAX_IMAGE (32 * 1024 * 1024)
/* a cleanup call's own timeout */
#define IGNY8_CLEANUP_TIMEOUT_MS 10000
/*
 * After an interrupt, the prompt's history entry is deleted once ComfyUI
 * has written it (at its next sampler step or node): at most this many
 * rounds of reads (igny8_image_cleanup_done), spaced as the polls of a
 * prompt (poll_wait_ms), about 20 s in all.
 */
#define IGNY8_CLEANUP_AWAITS 25

/* A ComfyUI prompt being cleaned up, one call after another. */
typedef struct Igny8Cleanup
{
	Igny8Transfer *transfer;
	Igny8ComfyCancel sent;		/* the call in flight; they go in the
								 * enum's order, FORGET last */
	char	   *base_url;
	char	   *key;
	char	   *proxy;
	char	   *ca_file;
	int			connect_timeout_ms;
	char	   *prompt_id;
	int			awaits;			/* rounds of reads made */
	bool		posting;		/* the transfer is the attempt's own POST
								 * /prompt, left to finish (cleanup_adopt) */
	bool		unsure;			/* that POST got no answer: ComfyUI may
								 * queue the prompt after our delete */
	bool		queued;			/* in the last round's GET /queue */
	bool		waiting;		/* ... and waiting there (not running) */
	bool		interrupted;	/* the interrupt was answered */
	TimestampTz due;			/* the next round, when no call is in flight */
	char	   *sweep_provider; /* not NULL: no prompt of ours, but a read
								 * of GET /queue at this provider for those
								 * an earlier incarnation left
								 * (igny8_image_sweep); prompt_id is NULL */
} Igny8Cleanup;

static List *cleanups = NIL;	/* of Igny8Cleanup, in TopMemoryContext */
static bool cleanups_stopping = false;	/* the worker stops: no reads */
static char *client_prefix = NULL;	/* of this worker's client_ids */
static char *client_own = NULL; /* this incarnation's client_id */

/* ----- the request ----- */

static char *
json_string_or_null(cJSON *req, const char *key)
{
	const char *str = igny8_json_string(req, key);

	return str ? pstrdup(str) : NULL;
}

/*
 * Read the normalized image request the caller wrote (dispatch_image.c):
 * {"prompt", "negative_prompt"?, "width", "height", "steps"?, "cfg"?,
 *	"seed" (a decimal string), "quality"?, "style"?}.
 */
bool
igny8_image_parse_request(Igny8Job *job, const char *json)
{
	cJSON	   *req = cJSON_Parse(json);
	cJSON	   *item;
	bool		ok = false;

	if (req == NULL)
		return false;
	job->img_prompt = json_string_or_null(req, "prompt");
	job->img_negative = json_string_or_null(req, "negative_prompt");
	job->img_quality = json_string_or_null(req, "quality");
	job->img_style = json_string_or_null(req, "style");
	item = cJSON_GetObjectItemCaseSensitive(req, "width");
	job->img_width = cJSON_IsNumber(item) ? item->valueint : 0;
	item = cJSON_GetObjectItemCaseSensitive(req, "height");
	job->img_height = cJSON_IsNumber(item) ? item->valueint : 0;
	item = cJSON_GetObjectItemCaseSensitive(req, "steps");
	job->img_steps = cJSON_IsNumber(item) ? item->valueint : 0;
	item = cJSON_GetObjectItemCaseSensitive(req, "cfg");
	job->img_has_cfg = cJSON_IsNumber(item);
	job->img_cfg = job->img_has_cfg ? item->valuedouble : 0;
	item = cJSON_GetObjectItemCaseSensitive(req, "seed");
	if (cJSON_IsString(item))
	{
		char	   *end;

		errno = 0;
		job->img_seed = strtoull(item->valuestring, &end, 10);
		ok = (errno == 0 && *end == '\0' && end != item->valuestring);
	}
	ok = ok && job->img_prompt != NULL && job->img_width > 0 &&
		job->img_height > 0;
	cJSON_Delete(req);
	return ok;
}

/*
 * The wait before the next read of a prompt's state after n reads: from
 * IGNY8_POLL_FIRST_MS, half as long again each time, up to
 * IGNY8_POLL_MAX_MS.
 */
static long
poll_wait_ms(int n)
{
	long		wait = IGNY8_POLL_FIRST_MS;

	for (int i = 0; i < n && wait < IGNY8_POLL_MAX_MS; i++)
		wait = wait * 3 / 2;
	return Min(wait, IGNY8_POLL_MAX_MS);
}

/*
 * The client_id our prompts carry: "igny8_ai-<system identifier>-<postmaster
 * start>-<worker index>-<pid>".  All but the pid name this worker in this
 * run of the server (a crash restart keeps the postmaster and its start
 * time; a copy of the cluster has another start), the pid this incarnation
 * of it.  ComfyUI keeps it with the prompt, and igny8_image_sweep reads it
 * back.
 */
static const char *
client_id(void)
{
	if (client_own == NULL)
	{
		client_prefix = MemoryContextStrdup(TopMemoryContext,
											psprintf("igny8_ai-" UINT64_FORMAT "-" INT64_FORMAT "-%d-",
													 GetSystemIdentifier(),
													 (int64) PgStartTime,
													 igny8_worker_index));
		client_own = MemoryContextStrdup(TopMemoryContext,
										 psprintf("%s%d", client_prefix,
												  MyProcPid));
	}
	return client_own;
}

/* ----- cleanup of a ComfyUI prompt left behind ----- */

/*
 * Send a cleanup call.  Its request is built in a context of its own,
 * reset once the transfer has taken its copies: a worker sends cleanup
 * calls for as long as it lives.
 */
static bool
cleanup_send(Igny8Cleanup *c, Igny8ComfyCancel what)
{
	static MemoryContext request_cxt = NULL;
	Igny8HttpRequest http;
	MemoryContext old;

	if (request_cxt == NULL)
		request_cxt = AllocSetContextCreate(TopMemoryContext,
											"igny8_ai cleanup request",
											ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(request_cxt);
	memset(&http, 0, sizeof(http));
	if (c->sweep_provider != NULL)
		igny8_build_get(&http, "/queue", c->key);
	else if (!igny8_comfyui_build_cancel(what, c->prompt_id, c->key, &http))
	{
		MemoryContextSwitchTo(old);
		MemoryContextReset(request_cxt);
		return false;			/* no prompt_id: nothing to send */
	}
	MemoryContextSwitchTo(old);
	c->sent = what;
	c->transfer = igny8_http_start(c->base_url, &http,
								   IGNY8_CLEANUP_TIMEOUT_MS,
								   Min(c->connect_timeout_ms,
									   IGNY8_CLEANUP_TIMEOUT_MS),
								   c->proxy, c->ca_file, 0, NULL);
	MemoryContextReset(request_cxt);
	return true;
}

static void
cleanup_free(Igny8Cleanup *c)
{
	if (c->key)
		pfree(c->key);
	pfree(c->base_url);
	if (c->proxy)
		pfree(c->proxy);
	if (c->ca_file)
		pfree(c->ca_file);
	if (c->prompt_id)
		pfree(c->prompt_id);
	if (c->sweep_provider)
		pfree(c->sweep_provider);
	pfree(c);
}

static char *
top_strdup(const char *s)
{
	return s ? MemoryContextStrdup(TopMemoryContext, s) : NULL;
}

/* Keep a cleanup in the list (in TopMemoryContext, as the cleanup). */
static void
cleanup_keep(Igny8Cleanup *c)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	cleanups = lappend(cleanups, c);
	MemoryContextSwitchTo(old);
}

/* A cleanup of a prompt (NULL for a sweep) at a ComfyUI server. */
static Igny8Cleanup *
cleanup_alloc(const char *base_url, const char *key, const char *proxy,
			  const char *ca_file, int connect_timeout_ms,
			  const char *prompt_id)
{
	Igny8Cleanup *c = MemoryContextAllocZero(TopMemoryContext,
											 sizeof(Igny8Cleanup));

	c->base_url = top_strdup(base_url);
	c->key = top_strdup(key);
	c->proxy = top_strdup(proxy);
	c->ca_file = top_strdup(ca_file);
	c->connect_timeout_ms = connect_timeout_ms;
	c->prompt_id = top_strdup(prompt_id);
	return c;
}

/* A cleanup of the job's prompt, at its current provider. */
static Igny8Cleanup *
cleanup_new(Igny8Job *job)
{
	Igny8Provider *p = job->cands[job->cand]->provider;

	return cleanup_alloc(p->base_url, p->key, p->proxy, p->ca_file,
						 p->connect_timeout_ms, job->prompt_id);
}

/*
 * Clean up the job's ComfyUI prompt, from the first call that is needed:
 * DELETE for a prompt that may still be queued or running, FORGET for one
 * that finished.  unsure: its POST /prompt got no answer (a timeout, a
 * dropped connection, a 5xx from a proxy in front), so ComfyUI may still
 * be taking it.  Such a cleanup sends the delete again at every round (and
 * the interrupt once it sees the prompt running), and keeps looking for
 * all its rounds even while the prompt is nowhere to be seen.
 */
static void
cleanup_start(Igny8Job *job, Igny8ComfyCancel from, bool unsure)
{
	Igny8Cleanup *c;

	if (job->prompt_id == NULL)
		return;
	c = cleanup_new(job);
	c->unsure = unsure;
	if (cleanup_send(c, from))
		cleanup_keep(c);
	else
		cleanup_free(c);
	job->prompt_id = NULL;
}

/*
 * The job stops while its POST /prompt is in flight.  ComfyUI handles a
 * request it has read to the end even when its client goes away (aiohttp
 * does not cancel a handler on a disconnect), so closing the connection
 * would not keep the prompt out of the queue, and a DELETE sent now could
 * come before the prompt is queued.  The cleanup takes the transfer over
 * instead, and starts when ComfyUI has answered it.
 */
static void
cleanup_adopt(Igny8Job *job)
{
	Igny8Cleanup *c = cleanup_new(job);

	c->transfer = job->transfer;
	c->transfer->owner = NULL;	/* a call of no job: igny8_image_cleanup_done */
	c->posting = true;
	job->transfer = NULL;
	cleanup_keep(c);
	job->prompt_id = NULL;
}

/*
 * ComfyUI's answer to an adopted POST /prompt: a server that does not take
 * our prompt_id names the one it gave the prompt (as image_done reads it).
 */
static void
adopt_accepted_id(Igny8Cleanup *c, Igny8Transfer *t)
{
	Igny8HttpResponse resp;
	Igny8ProviderError perr;
	char	   *accepted = NULL;
	int64		number;

	if (t->result != CURLE_OK || t->status != 200 || t->body == NULL)
		return;
	memset(&perr, 0, sizeof(perr));
	igny8_http_answer(t, NULL, &resp);
	if (igny8_comfyui_parse_submit(&resp, &accepted, &number, &perr) &&
		accepted != NULL && strcmp(accepted, c->prompt_id) != 0)
	{
		pfree(c->prompt_id);
		c->prompt_id = MemoryContextStrdup(TopMemoryContext, accepted);
	}
}

/* A 200 answer to a cleanup read that names the prompt. */
static bool
answer_names(Igny8Cleanup *c, Igny8Transfer *t)
{
	char	   *quoted;
	bool		found;

	if (t->result != CURLE_OK || t->status != 200 || t->body == NULL)
		return false;
	quoted = psprintf("\"%s\"", c->prompt_id);
	found = (strstr(t->body, quoted) != NULL);
	pfree(quoted);
	return found;
}

/* Another round of reads of the cleanup, later (cleanups_run). */
static void
cleanup_later(Igny8Cleanup *c)
{
	c->due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										 poll_wait_ms(c->awaits - 1));
}

/*
 * A sweep's GET /queue ended (igny8_image_sweep).  Each prompt it lists
 * under this worker's client_id prefix and another pid gets the cleanup a
 * prompt of ours gets, from the delete.  A read that failed is made again
 * at the next round, up to IGNY8_CLEANUP_AWAITS of them (about 20 s: a
 * tunnel coming back up); a stopping worker reads no more.  lc is the
 * sweep's cell in cleanups.
 */
static void
sweep_done(Igny8Cleanup *sweep, Igny8Transfer *t, ListCell *lc)
{
	char	  **ids = NULL;
	int			nids = 0;
	bool		read = false;

	if (t->result == CURLE_OK && !cleanups_stopping)
	{
		Igny8HttpResponse resp;

		igny8_http_answer(t, sweep->key, &resp);
		read = igny8_comfyui_parse_queue_of(&resp, client_prefix, client_own,
											&ids, &nids);
	}
	igny8_http_free(t);
	sweep->transfer = NULL;
	if (!read && !cleanups_stopping && ++sweep->awaits < IGNY8_CLEANUP_AWAITS)
	{
		cleanup_later(sweep);
		return;
	}
	cleanups = list_delete_cell(cleanups, lc);
	if (!read && !cleanups_stopping)
		ereport(LOG,
				(errmsg("igny8_ai worker %d could not read the queue of ComfyUI provider \"%s\"",
						igny8_worker_index, sweep->sweep_provider),
				 errdetail("Prompts an earlier run of this worker left there, if any, are not cleaned up.")));
	else if (nids > 0)
		ereport(LOG,
				(errmsg_plural("igny8_ai worker %d cleans up %d prompt an earlier run of it left at ComfyUI provider \"%s\"",
							   "igny8_ai worker %d cleans up %d prompts an earlier run of it left at ComfyUI provider \"%s\"",
							   nids, igny8_worker_index, nids, sweep->sweep_provider)));
	for (int i = 0; i < nids; i++)
	{
		Igny8Cleanup *c = cleanup_alloc(sweep->base_url, sweep->key,
										sweep->proxy, sweep->ca_file,
										sweep->connect_timeout_ms, ids[i]);

		if (cleanup_send(c, IGNY8_COMFY_CANCEL_DELETE))
			cleanup_keep(c);
		else
			cleanup_free(c);
	}
	cleanup_free(sweep);
}

/*
 * The worker starts again in this run of the server: clean up what an
 * earlier incarnation of it left at each ComfyUI server.  One that
 * crashed, was killed, or exited with an error cleaned up nothing (a
 * stopping one may not have finished), and ComfyUI runs a prompt whose
 * client went away to the end.  ComfyUI's queue shows each prompt's
 * client_id (client_id()): those of this worker in this run of the server
 * and of another process are cleaned up as a prompt of ours would be.
 * Prompts of other clients, of other workers and of another server (a
 * copy of the cluster included) are left alone.  One GET /queue per
 * ComfyUI base URL.
 */
void
igny8_image_sweep(const Igny8Config *config)
{
	(void) client_id();
	for (int i = 0; i < config->nproviders; i++)
	{
		Igny8Provider *p = &config->providers[i];
		Igny8Cleanup *c;
		bool		seen = false;

		if (p->kind != IGNY8_KIND_COMFYUI || !p->enabled)
			continue;
		for (int j = 0; j < i && !seen; j++)
			seen = (config->providers[j].kind == IGNY8_KIND_COMFYUI &&
					config->providers[j].enabled &&
					strcmp(config->providers[j].base_url, p->base_url) == 0);
		if (seen)
			continue;
		c = cleanup_alloc(p->base_url, p->key, p->proxy, p->ca_file,
						  p->connect_timeout_ms, NULL);
		c->sweep_provider = top_strdup(p->id);
		(void) cleanup_send(c, IGNY8_COMFY_CANCEL_QUEUED);
		cleanup_keep(c);
	}
}

/*
 * A cleanup call ended (whatever its outcome): send the next, wait, or
 * stop.  The delete is followed by a round of reads: GET /queue, then GET
 * /history/{id}.  The interrupt is sent, once, only when GET /queue shows
 * the prompt running: a server from before the targeted interrupt ignores
 * the prompt_id and stops whatever runs, which would be another client's
 * prompt (or another call's) if ours were waiting, deleted or finished.
 * An entry in the history is deleted; a prompt that was neither running
 * nor waiting and has no entry never ran (the queue delete took it) and is
 * done; one still in the queue is read again later (a round that starts
 * with the delete again if it was waiting).  ComfyUI writes the entry and
 * takes the prompt off the queue under one lock, so a prompt off the queue
 * has its entry by then, if it ran.  A queue that cannot be read is read
 * again at the next round: without it, no interrupt.  A history answer
 * that cannot be read goes straight to the delete.  An unsure cleanup
 * (cleanup_start) is not done with a prompt that is nowhere to be seen,
 * nor with a read that failed: it reads again, up to its last round.  The
 * first call of an adopted cleanup is the job's own POST /prompt: its
 * answer starts the sequence.
 */
void
igny8_image_cleanup_done(Igny8Transfer *t)
{
	ListCell   *lc;

	foreach(lc, cleanups)
	{
		Igny8Cleanup *c = lfirst(lc);
		bool		read_ok = (t->result == CURLE_OK && t->status == 200);
		bool		named;
		bool		running = false;
		bool		waiting = false;
		bool		done = false;
		bool		posted;
		Igny8ComfyCancel next = IGNY8_COMFY_CANCEL_FORGET;

		if (c->transfer != t)
			continue;
		if (c->sweep_provider != NULL)
		{
			sweep_done(c, t, lc);
			return;
		}
		named = answer_names(c, t);
		posted = c->posting;
		if (!posted && c->sent == IGNY8_COMFY_CANCEL_QUEUED && read_ok)
		{
			Igny8HttpResponse resp;

			igny8_http_answer(t, c->key, &resp);
			read_ok = igny8_comfyui_parse_queue_has(&resp, c->prompt_id,
													&running, &waiting);
		}
		if (posted)
		{
			/* the job's POST /prompt, ended */
			c->posting = false;
			if ((t->result == CURLE_OK && t->status >= 400 && t->status < 500) ||
				igny8_http_never_sent(t))
				done = true;	/* refused, or never there: nothing queued */
			else
			{
				/* queued, or perhaps: the usual cleanup, from the delete */
				adopt_accepted_id(c, t);
				c->unsure = !read_ok;
				next = IGNY8_COMFY_CANCEL_DELETE;
			}
		}
		igny8_http_free(t);
		c->transfer = NULL;
		if (!posted)
		{
			switch (c->sent)
			{
				case IGNY8_COMFY_CANCEL_DELETE:
					next = IGNY8_COMFY_CANCEL_QUEUED;
					break;
				case IGNY8_COMFY_CANCEL_INTERRUPT:
					/*
					 * A failed one is sent again, a round later, if the
					 * prompt still runs; after IGNY8_CLEANUP_AWAITS failures
					 * it is given up (a proxy that refuses /interrupt would
					 * otherwise have it sent for as long as the prompt runs),
					 * and the rounds that are left read the history.
					 */
					c->interrupted = read_ok ||
						++c->awaits >= IGNY8_CLEANUP_AWAITS;
					if (!cleanups_stopping)
					{
						/* it stops at its next step or node */
						cleanup_later(c);
						return;
					}
					break;
				case IGNY8_COMFY_CANCEL_QUEUED:
					c->queued = running || waiting;
					c->waiting = waiting;
					if (read_ok && running && !c->interrupted)
						next = IGNY8_COMFY_CANCEL_INTERRUPT;
					else if (read_ok && !cleanups_stopping)
						next = IGNY8_COMFY_CANCEL_AWAIT;
					else if (!read_ok && !cleanups_stopping &&
							 ++c->awaits < IGNY8_CLEANUP_AWAITS)
					{
						/* where it is decides the interrupt: read again */
						cleanup_later(c);
						return;
					}
					break;
				case IGNY8_COMFY_CANCEL_AWAIT:
					if (named || cleanups_stopping ||
						++c->awaits >= IGNY8_CLEANUP_AWAITS ||
						(!read_ok && !c->unsure))
						next = IGNY8_COMFY_CANCEL_FORGET;
					else if (!c->queued && !c->unsure)
						done = true;	/* never ran: nothing to delete */
					else
					{
						/* still running, or unsure: another round later */
						cleanup_later(c);
						return;
					}
					break;
				case IGNY8_COMFY_CANCEL_FORGET:
					done = true;
					break;
			}
		}
		if (!done && cleanup_send(c, next))
			return;
		cleanups = foreach_delete_current(cleanups, lc);
		cleanup_free(c);
		return;
	}
	igny8_http_free(t);			/* not ours: cannot happen */
}

/* When the next history read of a cleanup is due, or 0 for none. */
TimestampTz
igny8_image_cleanups_due(void)
{
	TimestampTz due = 0;
	ListCell   *lc;

	foreach(lc, cleanups)
	{
		Igny8Cleanup *c = lfirst(lc);

		if (c->transfer == NULL && c->due != 0 && (due == 0 || c->due < due))
			due = c->due;
	}
	return due;
}

/* Send the history reads that are due (false: none was). */
bool
igny8_image_cleanups_run(TimestampTz now)
{
	bool		started = false;
	ListCell   *lc;

	foreach(lc, cleanups)
	{
		Igny8Cleanup *c = lfirst(lc);

		if (c->transfer != NULL || c->due == 0 || c->due > now)
			continue;
		c->due = 0;
		/* one that may be waiting deletes again first */
		(void) cleanup_send(c, (c->unsure || c->waiting) ?
							IGNY8_COMFY_CANCEL_DELETE :
							IGNY8_COMFY_CANCEL_QUEUED);
		started = true;
	}
	return started;
}

/*
 * The worker is stopping: give the cleanup calls in flight up to max_ms to
 * reach ComfyUI (every job was aborted already, so they are the only
 * transfers left).  A history read that would wait is skipped: the
 * history entry is deleted at once, which may be before it is written.
 */
void
igny8_image_finish_cleanups(int max_ms)
{
	TimestampTz end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  max_ms);
	ListCell   *lc;

	cleanups_stopping = true;
	foreach(lc, cleanups)
	{
		Igny8Cleanup *c = lfirst(lc);

		if (c->transfer != NULL || c->due == 0)
			continue;
		c->due = 0;
		if (c->sweep_provider != NULL)
		{
			/* a sweep waiting to read again: given up */
			cleanups = foreach_delete_current(cleanups, lc);
			cleanup_free(c);
		}
		else
		{
			/*
			 * one that may be waiting deletes once more first (and
			 * interrupts if the queue then shows it running)
			 */
			(void) cleanup_send(c, (c->unsure || c->waiting) ?
								IGNY8_COMFY_CANCEL_DELETE :
								IGNY8_COMFY_CANCEL_FORGET);
		}
	}
	while (cleanups != NIL && GetCurrentTimestamp() < end)
	{
		Igny8Transfer *t;

		igny8_http_drive(true);
		while ((t = igny8_http_next_finished()) != NULL)
		{
			if (t->owner == NULL)
				igny8_image_cleanup_done(t);
			else
				igny8_http_free(t); /* cannot happen: no job is left */
		}
		if (cleanups != NIL)
			(void) WaitLatchOrSocket(NULL,
									 WL_SOCKET_READABLE | WL_TIMEOUT |
									 WL_EXIT_ON_PM_DEATH,
									 igny8_http_fd(), 20, PG_WAIT_EXTENSION);
	}
}

/* ----- the steps ----- */

static size_t
max_image_bytes(Igny8Deployment *d)
{
	return d->max_image_bytes > 0 ? d->max_image_bytes :
		(size_t) IGNY8_DEFAULT_MAX_IMAGE;
}

/* Milliseconds left in the attempt, at least 1. */
static int
attempt_ms_left(Igny8Job *job, TimestampTz now)
{
	long		ms = (long) ((job->attempt_deadline - now) / 1000);

	return (int) Max(Min(ms, (long) INT_MAX), 1L);
}

/* A prompt id of our own: a version 7 UUID, like a request id. */
static void
new_prompt_id(Igny8Job *job)
{
	pg_uuid_t	id;

	igny8_new_request_id(&id);
	job->prompt_id = DatumGetCString(DirectFunctionCall1(uuid_out,
														 UUIDPGetDatum(&id)));
}

/* An attempt that could not be sent at all: the next candidate. */
static void
attempt_refused(Igny8Job *job, Igny8Deployment *d, char *error,
				TimestampTz now)
{
	Igny8Attempt *a = igny8_job_add_attempt(job, d);

	a->error = error;
	igny8_job_release_place(job);
	igny8_job_next_candidate(job, now);
}

static void
send_step(Igny8Job *job, Igny8HttpRequest *http, size_t max_bytes,
		  TimestampTz now)
{
	Igny8Provider *p = job->cands[job->cand]->provider;

	job->transfer = igny8_http_start(p->base_url, http,
									 attempt_ms_left(job, now),
									 p->connect_timeout_ms, p->proxy,
									 p->ca_file, max_bytes, job);
	igny8_job_set_state(job, JOB_HTTP);
	igny8_job_mark_sent(job);
}

/*
 * The attempt ran out of time between two steps: it fails (the next
 * candidate, or the call's deadline error) and its prompt is cleaned up.
 * When the deployment's timeout ended it (not the caller's deadline), it
 * counts against ComfyUI's health, as a request that times out does: a
 * stuck queue answers every poll with "{}".
 */
static void
attempt_timed_out(Igny8Job *job, TimestampTz now)
{
	Igny8Attempt *a = igny8_job_end_attempt(job, NULL, now);

	a->error = psprintf("timed out after %ld ms waiting for ComfyUI to finish prompt %s",
						(long) ((now - job->attempt_start) / 1000),
						job->prompt_id ? job->prompt_id : "?");
	/* the deployment's timeout, not the caller's earlier deadline */
	if (job->attempt_deadline < job->deadline)
		igny8_job_report_health(job, job->cands[job->cand]->provider, NULL, a);
	else
		igny8_job_end_trial(job);
	cleanup_start(job, IGNY8_COMFY_CANCEL_DELETE, false);
	igny8_job_next_candidate(job, now);
}

static void
image_start(Igny8Job *job, TimestampTz now)
{
	Igny8Deployment *d = job->cands[job->cand];
	Igny8Provider *p = d->provider;
	Igny8HttpRequest http;
	Igny8ImageRequest req;

	memset(&http, 0, sizeof(http));

	/* a poll that is due */
	if (job->state == JOB_POLL_WAIT)
	{
		if (now >= job->attempt_deadline)
		{
			attempt_timed_out(job, now);
			return;
		}
		if (job->step == IGNY8_STEP_QUEUE)
			igny8_build_get(&http, "/queue", p->key);
		else
			igny8_comfyui_build_history(job->prompt_id, p->key, &http);
		send_step(job, &http, 0, now);
		return;
	}

	/* a new attempt: its place is held */
	job->prompt_id = NULL;
	job->images = NULL;
	job->nimages = 0;
	job->polls = 0;

	memset(&req, 0, sizeof(req));
	req.model = d->model;
	req.prompt = job->img_prompt;
	req.negative_prompt = job->img_negative;
	req.width = job->img_width;
	req.height = job->img_height;
	req.steps = job->img_steps;
	req.has_cfg = job->img_has_cfg;
	req.cfg = job->img_cfg;
	req.seed = job->img_seed;
	req.quality = job->img_quality;
	req.style = job->img_style;
	req.settings = d->settings;

	if (p->kind == IGNY8_KIND_COMFYUI)
	{
		char	   *error = NULL;
		char	   *prefix;

		if (d->workflow == NULL)
		{
			attempt_refused(job, d,
							pstrdup("the deployment names no workflow (igny8_models.workflow)"),
							now);
			return;
		}
		new_prompt_id(job);
		/* our own file names: concurrent requests never read each other's */
		prefix = psprintf("igny8_%s", job->prompt_id);
		req.graph = d->workflow->graph;
		req.bindings = d->workflow->bindings;
		req.defaults = d->workflow->defaults;
		req.client_id = client_id();
		req.prompt_id = job->prompt_id;
		req.filename_prefix = prefix;
		if (!igny8_comfyui_build_submit(&req, p->key, &http, &error))
		{
			job->prompt_id = NULL;
			attempt_refused(job, d,
							psprintf("workflow \"%s\": %s", d->workflow->name,
									 error ? error : "cannot be filled in"),
							now);
			return;
		}
		job->step = IGNY8_STEP_SUBMIT;
		send_step(job, &http, 0, now);
	}
	else
	{
		size_t		max = max_image_bytes(d);

		igny8_openai_build_image(&req, p->key, &http);
		job->step = IGNY8_STEP_OPENAI;
		/* base64 is 4/3 of the image, with room for the JSON around it */
		send_step(job, &http, max / 3 * 4 + 65536, now);
	}
}

/*
 * The image the VIEW or OPENAI step brought: checked by the protocol;
 * ComfyUI's must also be the size the workflow was asked for.
 */
static bool
take_image(Igny8Job *job, Igny8Transfer *t, Igny8ImageResult *res,
		   Igny8Attempt *a)
{
	if (job->step == IGNY8_STEP_VIEW &&
		(res->width != job->img_width || res->height != job->img_height))
	{
		a->error = psprintf("the image is %dx%d, %dx%d was asked for",
							res->width, res->height,
							job->img_width, job->img_height);
		return false;
	}
	if (job->step == IGNY8_STEP_VIEW && res->data == t->body)
	{
		/* the transfer's buffer becomes the job's: no copy */
		job->image = igny8_http_take_body(t, &job->image_held);
		job->image_malloced = true;
	}
	else
	{
		job->image = res->data;
		job->image_malloced = false;
	}
	job->image_len = res->len;
	job->image_width = res->width;
	job->image_height = res->height;
	job->revised_prompt = res->revised_prompt;
	return true;
}

static void
image_done(Igny8Job *job, Igny8Transfer *t)
{
	Igny8Deployment *d = job->cands[job->cand];
	Igny8Provider *p = d->provider;
	TimestampTz now = GetCurrentTimestamp();
	Igny8HttpResponse resp;
	Igny8ProviderError perr;
	Igny8ImageResult res;
	Igny8ErrorClass cls = IGNY8_ERR_NONE;
	Igny8Attempt *a = NULL;
	/* where the cleanup of a prompt submitted starts: it has finished */
	Igny8ComfyCancel cleanup = IGNY8_COMFY_CANCEL_FORGET;

	job->transfer = NULL;
	memset(&perr, 0, sizeof(perr));
	memset(&res, 0, sizeof(res));

	if (t->result != CURLE_OK)
	{
		bool		too_large = igny8_http_too_large(t);

		a = igny8_job_end_attempt(job, t, now);
		/* a poll or a download follows a prompt that was sent */
		if (job->step != IGNY8_STEP_SUBMIT && job->step != IGNY8_STEP_OPENAI)
			a->unsent = false;
		if (too_large &&
			(job->step == IGNY8_STEP_VIEW || job->step == IGNY8_STEP_OPENAI))
			a->error = psprintf("the image is larger than %zu bytes (settings.max_image_bytes)",
								max_image_bytes(d));
		else
			a->error = pstrdup(igny8_http_error_text(t));
		if (igny8_http_over_budget(t))
			cls = IGNY8_ERR_RETRY;	/* memory frees as other answers go */
		else
			cls = (too_large || t->over_budget_alone) ? IGNY8_ERR_FALLBACK :
				igny8_http_classify_transport(t);
		if (cls == IGNY8_ERR_RETRY && job->retries >= 1)
			cls = IGNY8_ERR_FALLBACK;
		igny8_job_report_health(job, p, t, a);
		/* a submission that never reached ComfyUI queued nothing */
		if (job->step == IGNY8_STEP_SUBMIT && igny8_http_never_sent(t))
			job->prompt_id = NULL;
		cleanup_start(job, job->step == IGNY8_STEP_VIEW ?
					  IGNY8_COMFY_CANCEL_FORGET : IGNY8_COMFY_CANCEL_DELETE,
					  job->step == IGNY8_STEP_SUBMIT);
		igny8_http_free(t);
		igny8_job_conclude(job, a, p, cls, -1, now);
		return;
	}

	/* an image is not text: only other answers can echo the key */
	igny8_http_answer(t, (job->step == IGNY8_STEP_VIEW && t->status == 200) ?
					  NULL : p->key, &resp);

	switch (job->step)
	{
		case IGNY8_STEP_SUBMIT:
			{
				char	   *accepted = NULL;

				if (igny8_comfyui_parse_submit(&resp, &accepted,
											   &job->prompt_number, &perr))
				{
					/* the prompt is ComfyUI's now: poll for it */
					if (accepted != NULL && strcmp(accepted, job->prompt_id) != 0)
						job->prompt_id = accepted;
					igny8_job_note_progress(job);
					igny8_http_free(t);
					job->step = IGNY8_STEP_POLL;
					igny8_job_set_state(job, JOB_POLL_WAIT);
					job->wake_at = Min(TimestampTzPlusMilliseconds(now, IGNY8_POLL_FIRST_MS),
									   job->attempt_deadline);
					return;
				}
				/*
				 * Refused (4xx): nothing was queued.  A 5xx (from a proxy
				 * in front of it, perhaps) or an answer that could not be
				 * read may come after ComfyUI queued the prompt, under our
				 * own prompt_id: it is cleaned up from the queue.
				 */
				if (resp.status >= 400 && resp.status < 500)
					job->prompt_id = NULL;
				else
					cleanup = IGNY8_COMFY_CANCEL_DELETE;
				break;
			}
		case IGNY8_STEP_QUEUE:
			{
				bool		running;
				bool		waiting;

				if (igny8_comfyui_parse_queue_has(&resp, job->prompt_id,
												  &running, &waiting) &&
					!running && !waiting)
				{
					Igny8HttpRequest http;

					/*
					 * Off the queue: it finished since the last poll, or
					 * it was dropped.  ComfyUI writes the entry and takes
					 * the prompt off the queue under one lock, so the
					 * history says which, at once.
					 */
					igny8_http_free(t);
					memset(&http, 0, sizeof(http));
					igny8_comfyui_build_history(job->prompt_id, p->key, &http);
					job->step = IGNY8_STEP_RECHECK;
					send_step(job, &http, 0, now);
					return;
				}

				/*
				 * Still there, or a queue that could not be read (the
				 * polls will tell about the server): polling goes on.
				 */
				igny8_http_free(t);
				job->step = IGNY8_STEP_POLL;
				igny8_job_set_state(job, JOB_POLL_WAIT);
				job->wake_at = Min(TimestampTzPlusMilliseconds(now, poll_wait_ms(job->polls)),
								   job->attempt_deadline);
				return;
			}
		case IGNY8_STEP_POLL:
		case IGNY8_STEP_RECHECK:
			{
				Igny8ComfyImage *images = NULL;
				int			n = 0;
				Igny8ComfyState st;

				st = igny8_comfyui_parse_history(&resp, job->prompt_id,
												 &images, &n, &perr);
				if (st == IGNY8_COMFY_PENDING &&
					job->step == IGNY8_STEP_RECHECK)
				{
					/*
					 * Neither waiting, nor running, nor finished: removed
					 * from the queue (its "Clear Queue", another client's
					 * delete) or lost with a restart.  ComfyUI is up: no
					 * failure of its health; the same server may well take
					 * the prompt again.  The cleanup makes sure, from the
					 * delete.
					 */
					igny8_set_error(&perr, IGNY8_ERR_RETRY, -1,
									"ComfyUI dropped prompt %s from its queue: it is neither waiting, running nor in the history",
									job->prompt_id);
					perr.retry_once = true;
					cleanup = IGNY8_COMFY_CANCEL_DELETE;
					break;
				}
				if (st == IGNY8_COMFY_PENDING)
				{
					igny8_http_free(t);
					igny8_job_set_state(job, JOB_POLL_WAIT);
					job->wake_at = Min(TimestampTzPlusMilliseconds(now, poll_wait_ms(job->polls++)),
									   job->attempt_deadline);
					/* a prompt dropped is pending forever: look for it */
					if (job->polls % IGNY8_POLL_QUEUE_EVERY == 0)
						job->step = IGNY8_STEP_QUEUE;
					return;
				}
				if (st == IGNY8_COMFY_DONE)
				{
					Igny8HttpRequest http;

					igny8_http_free(t);
					job->images = images;
					job->nimages = n;
					memset(&http, 0, sizeof(http));
					igny8_comfyui_build_view(&job->images[0], p->key, &http);
					job->step = IGNY8_STEP_VIEW;
					send_step(job, &http, max_image_bytes(d), now);
					return;
				}
				/*
				 * FAILED: the prompt ran and failed; only its entry is
				 * left.  UNREAD (a 5xx, a broken answer): it may still be
				 * queued or running, and must not hold the GPU while a
				 * retry submits another.
				 */
				if (st == IGNY8_COMFY_UNREAD)
					cleanup = IGNY8_COMFY_CANCEL_DELETE;
				break;
			}
		case IGNY8_STEP_VIEW:
			if (igny8_comfyui_parse_view(&resp, &res, &perr))
			{
				a = igny8_job_end_attempt(job, t, now);
				if (take_image(job, t, &res, a))
				{
					cJSON	   *steps = cJSON_GetObjectItemCaseSensitive(d->workflow->defaults,
																		 "steps");

					a->success = true;
					a->steps = job->img_steps > 0 ? job->img_steps :
						(cJSON_IsNumber(steps) ? steps->valueint : 0);
				}
				else
					cls = IGNY8_ERR_FALLBACK;
			}
			break;
		case IGNY8_STEP_OPENAI:
			if (igny8_openai_parse_image(&resp, max_image_bytes(d), &res, &perr))
			{
				a = igny8_job_end_attempt(job, t, now);
				if (take_image(job, t, &res, a))
					a->success = true;
				else
					cls = IGNY8_ERR_FALLBACK;
			}
			break;
	}

	if (a == NULL)
	{
		/* the step failed: perr says how */
		a = igny8_job_end_attempt(job, t, now);
		cls = perr.cls;
		if (cls == IGNY8_ERR_RETRY && perr.retry_once && job->retries >= 1)
			cls = IGNY8_ERR_FALLBACK;
		a->error = igny8_redact(perr.message ? perr.message : "request failed",
								p->key);
	}
	igny8_job_report_health(job, p, t, a);
	igny8_http_free(t);
	/* a prompt that finished (or failed) leaves its history entry */
	cleanup_start(job, cleanup, job->step == IGNY8_STEP_SUBMIT);

	if (a->success)
	{
		a->images = 1;
		a->image_width = job->image_width;
		a->image_height = job->image_height;
		job->used = d;
		job->success = true;
		igny8_job_set_state(job, JOB_FINISHED);
		return;
	}
	igny8_job_conclude(job, a, p, cls, perr.retry_after, now);
}

/*
 * The job is stopped: a prompt it submitted is ComfyUI's to drop, and one
 * whose POST /prompt is in flight is dropped once ComfyUI has answered it.
 * One whose image is being downloaded has finished: only its history
 * entry is left (nothing to delete from the queue, nothing to interrupt).
 */
static void
image_abort(Igny8Job *job)
{
	if (job->prompt_id == NULL || job->cands == NULL)
		return;
	if (job->transfer != NULL && job->step == IGNY8_STEP_SUBMIT)
		cleanup_adopt(job);
	else
		cleanup_start(job, job->step == IGNY8_STEP_VIEW ?
					  IGNY8_COMFY_CANCEL_FORGET : IGNY8_COMFY_CANCEL_DELETE,
					  false);
}

/* Free what the job holds outside its memory context. */
void
igny8_image_forget(Igny8Job *job)
{
	if (job->image != NULL && job->image_malloced)
		igny8_http_drop_body(job->image, job->image_held);
	job->image = NULL;
}

static bool
image_serves(Igny8ProviderKind kind)
{
	return kind == IGNY8_KIND_COMFYUI || kind == IGNY8_KIND_OPENAI;
}

const Igny8TaskOps igny8_image_ops = {
	.name = "images",
	.routed = true,
	.serves = image_serves,
	.start = image_start,
	.done = image_done,
	.abort = image_abort
};
