/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The igny8_ai background worker: takes requests from its queue, routes
 *	  them, runs every attempt through the libcurl multi loop, retries and
 *	  falls back, writes ai_usage_log and hands the answer back.
 *
 * One worker holds many requests ("jobs") in flight.  Each loop iteration:
 * wait on the latch, postmaster death and curl's sockets together; take new
 * jobs; abort the abandoned ones; let curl progress and read finished
 * transfers; start attempts that are due; then, in one transaction, write
 * the usage rows of every attempt that ended, and only after the commit hand
 * finished jobs back to their callers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "lib/ilist.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "worker.h"

/* how often a worker with no work looks at the world anyway */
#define IGNY8_IDLE_WAIT_MS		10000
/* re-check interval for jobs waiting on a provider's concurrency limit */
#define IGNY8_PROVIDER_WAIT_MS	20
#define IGNY8_DEFAULT_MAX_TOKENS 4096
/* an attempt is not started with less time than this before the deadline */
#define IGNY8_MIN_ATTEMPT_MS	100

typedef enum JobState
{
	JOB_READY,					/* start the next attempt now */
	JOB_WAIT_PROVIDER,			/* provider at its max_concurrent */
	JOB_HTTP,					/* transfer in flight */
	JOB_BACKOFF,				/* retry at wake_at */
	JOB_FINISHED				/* outcome known; publish after logging */
} JobState;

/* One attempt on one deployment, for the usage log and the error detail. */
typedef struct Attempt
{
	int			number;
	const char *provider;
	const char *model;
	TimestampTz at;
	long		http_status;	/* 0: no HTTP answer */
	bool		success;
	char	   *error;
	int64		input_tokens;
	int64		output_tokens;
	double		duration_ms;
	bool		sent;			/* reached the network: gets a usage row */
	bool		logged;
} Attempt;

typedef struct Job
{
	dlist_node	node;
	int			slotno;
	MemoryContext cxt;
	Igny8Config *config;

	/* the request */
	Igny8Task	task;
	pg_uuid_t	request_id;
	char		alias[IGNY8_NAME_LEN];
	bool		has_account;
	int64		account_id;
	int			timeout_ms;
	TimestampTz deadline;
	TimestampTz started;
	char	   *request_json;
	Igny8Message *messages;
	int			nmessages;
	bool		has_max_tokens;
	int			max_tokens;
	bool		has_temperature;
	double		temperature;

	/* routing */
	Igny8Deployment **cands;
	int			ncands;
	int			cand;			/* current candidate */
	int			retries;		/* retries spent on the current candidate */
	bool		omit_think;

	/* progress */
	JobState	state;
	TimestampTz wake_at;
	TimestampTz attempt_start;
	Igny8Transfer *transfer;
	int			holding;		/* provider shared index held, or -1 */
	List	   *attempts;
	bool		abandoned;

	/* outcome */
	bool		success;
	int			sqlerrcode;
	char	   *errmsg;
	char	   *errdetail;
	char	   *errhint;
	Igny8TextResult result;
	Igny8Deployment *used;

	/* health probes (task IGNY8_TASK_HEALTH) */
	Igny8Provider *probe;		/* the provider probed */
	Igny8ProbeResult probe_result;
	long		probe_status;	/* HTTP status, 0 if none */
	Igny8HealthChange probe_change;
} Job;

static int	my_index = -1;
static dlist_head jobs = DLIST_STATIC_INIT(jobs);
static Igny8Config *config = NULL;
static uint64 config_generation = 0;
static bool config_missing = true;
static MemoryContext loop_cxt = NULL;

/* NOTIFY payloads of state changes seen by this worker, not yet sent */
static List *pending_notifies = NIL;

static void
worker_detach(int code, Datum arg)
{
	Igny8WorkerShared *w = &igny8_shared->workers[my_index];

	SpinLockAcquire(&w->mutex);
	w->procno = -1;
	w->pid = 0;
	SpinLockRelease(&w->mutex);
}

static const char *
task_name(Igny8Task task)
{
	switch (task)
	{
		case IGNY8_TASK_TEXT:
			return "text";
		case IGNY8_TASK_CHAT:
			return "chat";
		case IGNY8_TASK_IMAGE:
			return "image";
		case IGNY8_TASK_HEALTH:
			return "health";
	}
	return "text";
}

/* ----- transactions ----- */

static void
begin_work(const char *what)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, what);
}

static void
end_work(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Report a caught error and get back to a clean state outside any xact. */
static void
recover_from_error(void)
{
	MemoryContextSwitchTo(loop_cxt);
	EmitErrorReport();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(loop_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	igny8_usage_reset();
}

/* Load the configuration if it changed (or was never loaded). */
static void
refresh_config(bool force)
{
	uint64		gen = pg_atomic_read_u64(&igny8_shared->config_generation);
	Igny8Config *fresh = NULL;

	if (!force && !config_missing && gen == config_generation)
		return;

	PG_TRY();
	{
		begin_work("igny8_ai: loading configuration");
		fresh = igny8_config_load();
		end_work();
	}
	PG_CATCH();
	{
		/* keep serving with what we had; try again at the next change */
		recover_from_error();
		config_generation = gen;
		return;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(loop_cxt);

	if (config)
		igny8_config_release(config);
	config = fresh;
	if (config)
		config->refcount++;
	config_generation = gen;
	config_missing = (config == NULL);
}

/* ----- job lifecycle ----- */

static void
finish_error(Job *job, int sqlerrcode, char *msg, char *detail, char *hint)
{
	job->state = JOB_FINISHED;
	job->success = false;
	job->sqlerrcode = sqlerrcode;
	job->errmsg = msg;
	job->errdetail = detail;
	job->errhint = hint;
}

/* Parse the normalized request the caller wrote. */
static bool
parse_request(Job *job)
{
	cJSON	   *req = cJSON_Parse(job->request_json);
	cJSON	   *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
	cJSON	   *m;
	cJSON	   *item;
	int			i = 0;

	if (!cJSON_IsArray(msgs))
		return false;
	job->nmessages = cJSON_GetArraySize(msgs);
	job->messages = palloc0(sizeof(Igny8Message) * Max(job->nmessages, 1));
	cJSON_ArrayForEach(m, msgs)
	{
		cJSON	   *role = cJSON_GetObjectItemCaseSensitive(m, "role");
		cJSON	   *content = cJSON_GetObjectItemCaseSensitive(m, "content");

		if (!cJSON_IsString(role) || !cJSON_IsString(content))
			return false;
		job->messages[i].role = role->valuestring;
		job->messages[i].content = content->valuestring;
		i++;
	}
	item = cJSON_GetObjectItemCaseSensitive(req, "max_tokens");
	if (cJSON_IsNumber(item))
	{
		job->has_max_tokens = true;
		job->max_tokens = item->valueint;
	}
	item = cJSON_GetObjectItemCaseSensitive(req, "temperature");
	if (cJSON_IsNumber(item))
	{
		job->has_temperature = true;
		job->temperature = item->valuedouble;
	}
	/* the tree stays alive in job->cxt: messages point into it */
	return true;
}

/* Take a slot from our queue and turn it into a job. */
static void
accept_slot(int slotno)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	Job		   *job;
	MemoryContext cxt;
	MemoryContext old;
	Igny8RouteError rerr;
	bool		abandoned;

	SpinLockAcquire(&slot->mutex);
	slot->claimed = true;
	abandoned = (slot->state == IGNY8_SLOT_ABANDONED);
	if (!abandoned)
		slot->state = IGNY8_SLOT_RUNNING;
	SpinLockRelease(&slot->mutex);
	if (abandoned)
	{
		igny8_slot_release(slotno);
		return;
	}

	cxt = AllocSetContextCreate(TopMemoryContext, "igny8_ai job",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	job = palloc0(sizeof(Job));
	job->cxt = cxt;
	job->slotno = slotno;
	job->task = slot->task;
	job->request_id = slot->request_id;
	memcpy(job->alias, slot->alias, IGNY8_NAME_LEN);
	job->has_account = slot->has_account;
	job->account_id = slot->account_id;
	job->timeout_ms = slot->timeout_ms;
	job->deadline = slot->deadline;
	job->started = GetCurrentTimestamp();
	job->request_json = pstrdup(dsa_get_address(igny8_dsa(), slot->request));
	job->holding = -1;
	job->state = JOB_READY;
	dlist_push_tail(&jobs, &job->node);
	pg_atomic_fetch_add_u32(&igny8_shared->workers[my_index].in_flight, 1);

	if (job->task != IGNY8_TASK_HEALTH && !parse_request(job))
		finish_error(job, ERRCODE_INTERNAL_ERROR,
					 pstrdup("igny8_ai received a malformed request"),
					 NULL, NULL);
	else
	{
		if (config == NULL)
			refresh_config(true);
		MemoryContextSwitchTo(cxt);
		if (config == NULL)
			finish_error(job, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
						 psprintf("extension \"igny8_ai\" is not installed in database \"%s\"",
								  igny8_database),
						 pstrdup("The igny8_ai workers serve the database named by igny8_ai.database."),
						 pstrdup("Run CREATE EXTENSION igny8_ai in that database, and commit it before calling."));
		else if (job->task == IGNY8_TASK_HEALTH)
		{
			job->probe = igny8_config_provider(config, job->alias);
			if (job->probe == NULL)
				finish_error(job, ERRCODE_UNDEFINED_OBJECT,
							 psprintf("provider \"%s\" does not exist",
									  job->alias), NULL, NULL);
			else
			{
				job->config = config;
				config->refcount++;
			}
		}
		else if (!igny8_route(config, job->alias, job->task, &job->cands,
							  &job->ncands, &rerr))
			finish_error(job, rerr.sqlerrcode, rerr.message, rerr.detail,
						 rerr.hint);
		else
		{
			job->config = config;
			config->refcount++;
		}
	}
	MemoryContextSwitchTo(old);
}

static Attempt *
add_attempt(Job *job, Igny8Deployment *d)
{
	Attempt    *a = palloc0(sizeof(Attempt));

	a->number = list_length(job->attempts) + 1;
	a->provider = d->provider->id;
	a->model = d->model;
	a->at = GetCurrentTimestamp();
	job->attempts = lappend(job->attempts, a);
	return a;
}

static void
release_provider(Job *job)
{
	if (job->holding >= 0)
	{
		pg_atomic_fetch_sub_u32(&igny8_shared->providers[job->holding].in_flight, 1);
		job->holding = -1;
	}
}

/* Text of the attempts so far, for the detail of a final error. */
static char *
attempts_detail(Job *job)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, job->attempts)
	{
		Attempt    *a = lfirst(lc);

		if (buf.len > 0)
			appendStringInfoChar(&buf, '\n');
		appendStringInfo(&buf, "Attempt %d: provider \"%s\", model \"%s\": ",
						 a->number, a->provider, a->model);
		if (a->http_status > 0)
			appendStringInfo(&buf, "HTTP %ld: ", a->http_status);
		appendStringInfoString(&buf, a->error ? a->error : "failed");
		if (buf.data[buf.len - 1] != '.')
			appendStringInfoChar(&buf, '.');
	}
	if (buf.len == 0)
		appendStringInfoString(&buf, "No attempt could be made.");
	return buf.data;
}

static char *
request_id_text(Job *job)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out,
											   UUIDPGetDatum(&job->request_id)));
}

/* The hint of a final error: where the attempts are logged, if anywhere. */
static char *
final_hint(Job *job, const char *advice)
{
	ListCell   *lc;

	foreach(lc, job->attempts)
	{
		if (((Attempt *) lfirst(lc))->sent)
			return psprintf("%s The attempts are in ai_usage_log with request_id %s.",
							advice, request_id_text(job));
	}
	return pstrdup(advice);
}

/* Every candidate failed, or the deadline passed. */
static void
finish_exhausted(Job *job, bool deadline)
{
	if (deadline)
		finish_error(job, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
					 psprintf("AI request for model alias \"%s\" timed out after %d ms",
							  job->alias, job->timeout_ms),
					 attempts_detail(job),
					 final_hint(job, "Pass a longer timeout, or raise igny8_ai.default_timeout."));
	else
		finish_error(job, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
					 psprintf("all providers failed for model alias \"%s\"",
							  job->alias),
					 attempts_detail(job),
					 final_hint(job, "Check the providers in igny8_providers."));
}

/* Move on to the next candidate, or give up. */
static void
next_candidate(Job *job)
{
	job->cand++;
	job->retries = 0;
	job->omit_think = false;
	if (job->cand >= job->ncands)
		finish_exhausted(job, false);
	else
		job->state = JOB_READY;
}

static int
effective_max_tokens(Job *job, Igny8Deployment *d)
{
	if (job->has_max_tokens)
		return (d->max_tokens > 0) ? Min(job->max_tokens, d->max_tokens) :
			job->max_tokens;
	return (d->max_tokens > 0) ? d->max_tokens : IGNY8_DEFAULT_MAX_TOKENS;
}

/* The provider-side models configured on a provider, for its probe. */
static const char **
configured_models(Igny8Config *cfg, Igny8Provider *p, int *n)
{
	const char **models = palloc(sizeof(char *) * Max(cfg->ndeployments, 1));

	*n = 0;
	for (int i = 0; i < cfg->ndeployments; i++)
	{
		Igny8Deployment *d = &cfg->deployments[i];
		bool		dup = false;

		if (d->provider != p || !d->enabled)
			continue;
		for (int j = 0; j < *n; j++)
			if (strcmp(models[j], d->model) == 0)
				dup = true;
		if (!dup)
			models[(*n)++] = d->model;
	}
	return models;
}

/* Finish a probe: record the verdict in the shared state. */
static void
finish_probe(Job *job, double latency_ms)
{
	Igny8ProbeResult *r = &job->probe_result;

	igny8_health_report(job->probe->shared_index, r->healthy, true,
						r->degraded, latency_ms, r->summary,
						&job->probe_change);
	job->success = true;
	job->state = JOB_FINISHED;
}

/* A probe that could not be sent or got no HTTP answer. */
static void
probe_failed(Job *job, const char *kind, const char *summary,
			 double latency_ms)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"error\": ");
	escape_json(&buf, summary);
	appendStringInfoString(&buf, ", \"kind\": ");
	escape_json(&buf, kind);
	appendStringInfoChar(&buf, '}');
	memset(&job->probe_result, 0, sizeof(job->probe_result));
	job->probe_result.summary = pstrdup(summary);
	job->probe_result.detail_json = buf.data;
	finish_probe(job, latency_ms);
}

/* Send the free probe call of the job's provider. */
static void
start_probe(Job *job, TimestampTz now)
{
	Igny8Provider *p = job->probe;
	const Igny8ProbeProtocol *proto = igny8_probe_protocol(p->kind);
	Igny8HttpRequest http;
	MemoryContext old = MemoryContextSwitchTo(job->cxt);

	if (proto == NULL)
		probe_failed(job, "config", "no probe for this provider kind", 0);
	else if (p->key_error != NULL)
		probe_failed(job, "config",
					 psprintf("API key reference \"%s\" could not be resolved: %s",
							  p->key_ref, p->key_error), 0);
	else
	{
		memset(&http, 0, sizeof(http));
		proto->build_probe(p->key, p->settings, &http);
		job->transfer = igny8_http_start(p->base_url, &http,
										 igny8_probe_timeout_ms,
										 Min(p->connect_timeout_ms,
											 igny8_probe_timeout_ms),
										 p->proxy, p->ca_file, job);
		job->attempt_start = now;
		job->state = JOB_HTTP;
	}
	MemoryContextSwitchTo(old);
}

/* The answer (or failure) of a probe. */
static void
handle_probe(Job *job, Igny8Transfer *t)
{
	double		latency_ms;
	MemoryContext old = MemoryContextSwitchTo(job->cxt);

	job->transfer = NULL;
	latency_ms = (double) (GetCurrentTimestamp() - job->attempt_start) / 1000.0;
	if (t->result != CURLE_OK)
		probe_failed(job, igny8_http_failure_kind(t), igny8_http_error_text(t),
					 latency_ms);
	else
	{
		Igny8HttpResponse resp;
		int			nmodels;
		const char **models = configured_models(job->config, job->probe,
												&nmodels);

		resp.status = t->status;
		resp.body = t->body ? t->body : "";
		resp.body_len = t->len;
		resp.retry_after = t->retry_after;
		resp.should_retry = t->should_retry;
		memset(&job->probe_result, 0, sizeof(job->probe_result));
		igny8_probe_protocol(job->probe->kind)->parse_probe(&resp, models,
															nmodels,
															&job->probe_result);
		job->probe_result.summary = igny8_redact(job->probe_result.summary,
												 job->probe->key);
		job->probe_result.detail_json =
			igny8_redact(job->probe_result.detail_json, job->probe->key);
		job->probe_status = t->status;
		finish_probe(job, latency_ms);
	}
	igny8_http_free(t);
	MemoryContextSwitchTo(old);
}

/*
 * Feed the outcome of a request attempt to its provider's health: a
 * transport failure or a 5xx counts against it, any other HTTP answer shows
 * it is up.  A change of state is logged at once and announced with NOTIFY
 * in the worker's next transaction.
 */
static void
report_request_health(Igny8Provider *p, Igny8Transfer *t, Attempt *a)
{
	Igny8HealthChange change;
	bool		ok;
	const char *error = NULL;
	MemoryContext old;

	if (igny8_http_too_large(t) || igny8_http_local_failure(t))
		return;					/* says nothing about the provider */
	ok = (t->result == CURLE_OK && t->status < 500);
	if (!ok)
		error = (a->http_status > 0) ?
			psprintf("HTTP %ld: %s", a->http_status, a->error) : a->error;
	igny8_health_report(p->shared_index, ok, false, false, a->duration_ms,
						error, &change);
	if (!change.changed)
		return;
	igny8_health_alert(p->id, &change, error);
	old = MemoryContextSwitchTo(TopMemoryContext);
	pending_notifies = lappend(pending_notifies,
							   igny8_health_payload(p->id, &change, error));
	MemoryContextSwitchTo(old);
}

/* Start an attempt on the current candidate. */
static void
start_attempt(Job *job, TimestampTz now)
{
	Igny8Deployment *d;
	Igny8Provider *p;
	const Igny8TextProtocol *proto;
	Igny8TextRequest req;
	Igny8HttpRequest http;
	long		secs;
	int			usecs;
	long		remaining_ms;
	MemoryContext old;

	if (job->task == IGNY8_TASK_HEALTH)
	{
		start_probe(job, now);
		return;
	}
	d = job->cands[job->cand];
	p = d->provider;
	proto = igny8_text_protocol(p->kind);

	old = MemoryContextSwitchTo(job->cxt);

	TimestampDifference(now, job->deadline, &secs, &usecs);
	remaining_ms = secs * 1000 + usecs / 1000;
	if (remaining_ms < IGNY8_MIN_ATTEMPT_MS)
	{
		finish_exhausted(job, true);
		MemoryContextSwitchTo(old);
		return;
	}

	/* a provider we cannot authenticate to is skipped, not called */
	if (p->key_error != NULL ||
		(proto != NULL && proto->needs_key && p->key == NULL))
	{
		Attempt    *a = add_attempt(job, d);

		if (p->key_error)
			a->error = psprintf("API key reference \"%s\" could not be resolved: %s",
								p->key_ref, p->key_error);
		else
			a->error = pstrdup("no API key configured (api_key_ref is empty)");
		next_candidate(job);
		MemoryContextSwitchTo(old);
		return;
	}
	if (proto == NULL)
	{
		Attempt    *a = add_attempt(job, d);

		a->error = psprintf("provider kind \"%s\" cannot serve text",
							igny8_provider_kind_name(p->kind));
		next_candidate(job);
		MemoryContextSwitchTo(old);
		return;
	}

	/* per-provider concurrency limit, across all workers */
	if (p->shared_index >= 0)
	{
		pg_atomic_uint32 *inf = &igny8_shared->providers[p->shared_index].in_flight;

		if (pg_atomic_fetch_add_u32(inf, 1) >= (uint32) p->max_concurrent)
		{
			pg_atomic_fetch_sub_u32(inf, 1);
			job->state = JOB_WAIT_PROVIDER;
			MemoryContextSwitchTo(old);
			return;
		}
		job->holding = p->shared_index;
	}

	memset(&req, 0, sizeof(req));
	req.model = d->model;
	req.messages = job->messages;
	req.nmessages = job->nmessages;
	req.max_tokens = effective_max_tokens(job, d);
	req.has_temperature = job->has_temperature;
	req.temperature = job->temperature;
	req.settings = d->settings;
	req.omit_think = job->omit_think;
	memset(&http, 0, sizeof(http));
	proto->build_chat(&req, p->key, &http);

	job->transfer = igny8_http_start(p->base_url, &http,
									 (int) Min((long) d->timeout_ms, remaining_ms),
									 p->connect_timeout_ms, p->proxy,
									 p->ca_file, job);
	job->attempt_start = now;
	job->state = JOB_HTTP;
	MemoryContextSwitchTo(old);
}

/* A transfer of this job ended: success, retry, fall back or stop. */
static void
handle_transfer(Job *job, Igny8Transfer *t)
{
	Igny8Deployment *d;
	Igny8Provider *p;
	Attempt    *a;
	Igny8ErrorClass cls;
	Igny8ProviderError perr;
	double		retry_after = -1;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext old;

	if (job->task == IGNY8_TASK_HEALTH)
	{
		handle_probe(job, t);
		return;
	}
	d = job->cands[job->cand];
	p = d->provider;
	old = MemoryContextSwitchTo(job->cxt);

	release_provider(job);
	job->transfer = NULL;

	a = add_attempt(job, d);
	a->at = job->attempt_start;
	a->sent = true;
	a->duration_ms = (double) (now - job->attempt_start) / 1000.0;
	a->http_status = (t->result == CURLE_OK) ? t->status : 0;
	memset(&perr, 0, sizeof(perr));

	if (t->result != CURLE_OK)
	{
		cls = igny8_http_too_large(t) ? IGNY8_ERR_FALLBACK :
			igny8_http_classify_transport(t);
		a->error = pstrdup(igny8_http_error_text(t));
		/* a dropped connection is worth one retry, not more */
		if (cls == IGNY8_ERR_RETRY && job->retries >= 1)
			cls = IGNY8_ERR_FALLBACK;
	}
	else
	{
		Igny8HttpResponse resp;

		resp.status = t->status;
		resp.body = t->body ? t->body : "";
		resp.body_len = t->len;
		resp.retry_after = t->retry_after;
		resp.should_retry = t->should_retry;
		memset(&job->result, 0, sizeof(job->result));

		if (igny8_text_protocol(p->kind)->parse_chat(&resp, &job->result,
													 &perr))
		{
			a->success = true;
			a->input_tokens = job->result.input_tokens;
			a->output_tokens = job->result.output_tokens;
			job->used = d;
			job->success = true;
			job->state = JOB_FINISHED;
			cls = IGNY8_ERR_NONE;
		}
		else
		{
			cls = perr.cls;
			retry_after = perr.retry_after;
			if (cls == IGNY8_ERR_RETRY && perr.retry_once && job->retries >= 1)
				cls = IGNY8_ERR_FALLBACK;
			a->error = igny8_redact(perr.message ? perr.message :
									"request failed", p->key);
		}
	}
	report_request_health(p, t, a);
	igny8_http_free(t);

	if (perr.drop_think && !job->omit_think)
	{
		/* retry at once without "think" (protocols.md 1.4) */
		job->omit_think = true;
		job->state = JOB_READY;
		cls = IGNY8_ERR_NONE;
	}

	switch (cls)
	{
		case IGNY8_ERR_NONE:
			break;				/* answered, or retried at once */
		case IGNY8_ERR_CALLER:
			finish_error(job, ERRCODE_INVALID_PARAMETER_VALUE,
						 psprintf("provider \"%s\" rejected the request for model alias \"%s\"",
								  p->id, job->alias),
						 attempts_detail(job),
						 pstrdup("The request itself was refused, so no other provider was tried."));
			break;
		case IGNY8_ERR_RETRY:
			if (job->retries < igny8_max_retries)
			{
				long		wait = igny8_backoff_ms(job->retries, retry_after);
				TimestampTz at = TimestampTzPlusMilliseconds(now, wait);

				if (at < job->deadline)
				{
					job->retries++;
					job->wake_at = at;
					job->state = JOB_BACKOFF;
					break;
				}
				a->error = psprintf("%s (retry in %ld ms would pass the deadline)",
									a->error, wait);
			}
			next_candidate(job);
			break;
		default:
			next_candidate(job);
			break;
	}
	MemoryContextSwitchTo(old);
}

/* The caller left: stop the transfer (closing its connection). */
static void
abort_job(Job *job)
{
	MemoryContext old = MemoryContextSwitchTo(job->cxt);

	if (job->transfer && job->task == IGNY8_TASK_HEALTH)
	{
		igny8_http_free(job->transfer);
		job->transfer = NULL;
	}
	else if (job->transfer)
	{
		Attempt    *a = add_attempt(job, job->cands[job->cand]);

		a->at = job->attempt_start;
		a->sent = true;
		a->duration_ms = (double) (GetCurrentTimestamp() - job->attempt_start) / 1000.0;
		a->error = pstrdup("cancelled by the caller");
		igny8_http_free(job->transfer);
		job->transfer = NULL;
	}
	release_provider(job);
	job->abandoned = true;
	job->state = JOB_FINISHED;
	MemoryContextSwitchTo(old);
}

static void
check_abandoned(void)
{
	dlist_iter	iter;

	if (pg_atomic_exchange_u32(&igny8_shared->workers[my_index].abandons, 0) == 0)
		return;
	dlist_foreach(iter, &jobs)
	{
		Job		   *job = dlist_container(Job, node, iter.cur);
		Igny8Slot  *slot = &igny8_slots[job->slotno];
		bool		gone;

		if (job->abandoned)
			continue;
		SpinLockAcquire(&slot->mutex);
		gone = (slot->state == IGNY8_SLOT_ABANDONED);
		SpinLockRelease(&slot->mutex);
		if (gone)
			abort_job(job);
	}
}

/* Write the usage rows of every attempt not yet logged, in one xact. */
static void
log_attempts(void)
{
	dlist_iter	iter;
	ListCell   *lc;
	bool		any = false;

	dlist_foreach(iter, &jobs)
	{
		Job		   *job = dlist_container(Job, node, iter.cur);
		ListCell   *lc;

		foreach(lc, job->attempts)
		{
			Attempt    *a = lfirst(lc);

			if (a->sent && !a->logged)
				any = true;
		}
	}
	if (!any && pending_notifies == NIL)
		return;

	PG_TRY();
	{
		begin_work("igny8_ai: writing ai_usage_log");
		if (config == NULL)
			elog(ERROR, "extension \"igny8_ai\" is not installed");
		dlist_foreach(iter, &jobs)
		{
			Job		   *job = dlist_container(Job, node, iter.cur);
			ListCell   *lc;

			foreach(lc, job->attempts)
			{
				Attempt    *a = lfirst(lc);
				Igny8UsageRow row;
				bool		last = (lnext(job->attempts, lc) == NULL);

				if (!a->sent || a->logged)
					continue;
				memset(&row, 0, sizeof(row));
				row.request_id = job->request_id;
				row.at = a->at;
				row.has_account = job->has_account;
				row.account_id = job->account_id;
				row.provider = a->provider;
				row.task = task_name(job->task);
				row.alias = job->alias;
				row.model = (a->success && job->result.model) ?
					job->result.model : a->model;
				row.input_tokens = a->input_tokens;
				row.output_tokens = a->output_tokens;
				row.cost = 0;
				row.duration_ms = a->duration_ms;
				row.http_status = a->http_status;
				row.success = a->success;
				row.error = a->error;
				row.attempt = a->number;
				if (igny8_log_content)
				{
					row.prompt = job->request_json;
					if (a->success && last)
						row.response = job->result.content;
				}
				igny8_usage_insert(config->schema, &row);
			}
		}
		foreach(lc, pending_notifies)
			Async_Notify("igny8_ai_health", (char *) lfirst(lc));
		end_work();
	}
	PG_CATCH();
	{
		recover_from_error();
		/* the rows are lost; say so to the callers rather than loop */
		dlist_foreach(iter, &jobs)
		{
			Job		   *job = dlist_container(Job, node, iter.cur);

			if (job->state == JOB_FINISHED && job->success)
			{
				MemoryContextSwitchTo(job->cxt);
				finish_error(job, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
							 pstrdup("could not write ai_usage_log"),
							 pstrdup("The provider answered, but the usage row could not be written; see the server log."),
							 NULL);
			}
		}
		MemoryContextSwitchTo(loop_cxt);
		config_missing = true;
	}
	PG_END_TRY();

	/* sent, or lost with the transaction: never twice */
	list_free_deep(pending_notifies);
	pending_notifies = NIL;

	/* logged, or given up on: never write them twice */
	dlist_foreach(iter, &jobs)
	{
		Job		   *job = dlist_container(Job, node, iter.cur);
		ListCell   *lc;

		foreach(lc, job->attempts)
			((Attempt *) lfirst(lc))->logged = true;
	}
}

/* Hand a finished job's outcome to its caller, then forget the job. */
static void
publish(Job *job)
{
	Igny8Slot  *slot = &igny8_slots[job->slotno];
	dsa_area   *area = igny8_dsa();
	dsa_pointer result = InvalidDsaPointer;
	bool		gone;
	int			procno;

	if (!job->abandoned)
	{
		if (job->success && job->task == IGNY8_TASK_HEALTH)
		{
			const char *strs[2] = {job->probe_result.detail_json,
			job->probe_result.summary};

			result = igny8_pack_strings(area, 2, strs);
		}
		else if (job->success)
		{
			const char *strs[2] = {job->result.content, job->result.thinking};

			result = igny8_pack_strings(area, 2, strs);
		}
		else
		{
			const char *strs[3] = {job->errmsg, job->errdetail, job->errhint};

			result = igny8_pack_strings(area, 3, strs);
		}

		/* the payload area is full: the answer cannot be handed over */
		if (!DsaPointerIsValid(result))
		{
			const char *strs[3] = {
				"igny8_ai could not hand the answer over: its shared memory for payloads is full",
				psprintf("The answer (%zu bytes) was received, and its attempt is in ai_usage_log.",
						 job->success && job->result.content ?
						 strlen(job->result.content) : (size_t) 0),
				"Raise igny8_ai.payload_memory, or lower igny8_ai.max_response_size."
			};

			job->success = false;
			job->sqlerrcode = ERRCODE_OUT_OF_MEMORY;
			result = igny8_pack_strings(area, 3, strs);
		}
	}

	SpinLockAcquire(&slot->mutex);
	gone = (slot->state == IGNY8_SLOT_ABANDONED);
	procno = slot->caller_procno;
	if (!gone)
	{
		slot->result = result;
		slot->success = job->success;
		slot->sqlerrcode = job->sqlerrcode;
		slot->attempts = list_length(job->attempts);
		slot->duration_ms = (double) (GetCurrentTimestamp() - job->started) / 1000.0;
		slot->input_tokens = job->success ? job->result.input_tokens : 0;
		slot->output_tokens = job->success ? job->result.output_tokens : 0;
		slot->cost = 0;
		if (job->success && job->task == IGNY8_TASK_HEALTH)
		{
			strlcpy(slot->provider, job->probe->id, IGNY8_NAME_LEN);
			slot->http_status = job->probe_status;
			slot->healthy = job->probe_result.healthy;
			slot->health_prev = job->probe_change.from;
			slot->health_state = job->probe_change.to;
			slot->consecutive_failures = job->probe_change.consecutive_failures;
		}
		else if (job->success)
		{
			strlcpy(slot->provider, job->used->provider->id, IGNY8_NAME_LEN);
			strlcpy(slot->model_used,
					job->result.model ? job->result.model : job->used->model,
					IGNY8_MODEL_LEN);
			strlcpy(slot->finish_reason,
					job->result.finish_reason ? job->result.finish_reason : "",
					sizeof(slot->finish_reason));
		}
		slot->state = IGNY8_SLOT_DONE;
	}
	SpinLockRelease(&slot->mutex);

	if (gone)
	{
		if (DsaPointerIsValid(result))
			dsa_free(area, result);
		igny8_slot_release(job->slotno);
	}
	else
		igny8_wake_proc(procno);

	dlist_delete(&job->node);
	pg_atomic_fetch_sub_u32(&igny8_shared->workers[my_index].in_flight, 1);
	pg_atomic_fetch_add_u64(&igny8_shared->workers[my_index].served, 1);
	if (job->config)
		igny8_config_release(job->config);
	MemoryContextDelete(job->cxt);
}

/*
 * Requests this worker held when a previous incarnation of it exited: fail
 * them so that their callers stop waiting, or free the abandoned ones.
 */
static void
recover_orphans(void)
{
	for (int i = 0; i < igny8_shared->nslots; i++)
	{
		Igny8Slot  *slot = &igny8_slots[i];
		Igny8SlotState state;
		bool		mine;
		int			procno;

		SpinLockAcquire(&slot->mutex);
		state = slot->state;
		mine = (slot->worker == my_index && slot->claimed);
		procno = slot->caller_procno;
		SpinLockRelease(&slot->mutex);
		if (!mine)
			continue;

		if (state == IGNY8_SLOT_ABANDONED)
			igny8_slot_release(i);
		else if (state == IGNY8_SLOT_RUNNING)
		{
			const char *strs[3] = {
				"igny8_ai worker restarted while the request was running",
				"The worker serving the request exited; the request may have been sent to a provider.",
				"Retry the call; see the server log for why the worker exited."
			};
			dsa_pointer result = igny8_pack_strings(igny8_dsa(), 3, strs);
			bool		gone;

			SpinLockAcquire(&slot->mutex);
			gone = (slot->state == IGNY8_SLOT_ABANDONED);
			if (!gone)
			{
				slot->result = result;
				slot->success = false;
				slot->sqlerrcode = ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
				slot->attempts = 0;
				slot->state = IGNY8_SLOT_DONE;
			}
			SpinLockRelease(&slot->mutex);
			if (gone)
			{
				if (DsaPointerIsValid(result))
					dsa_free(igny8_dsa(), result);
				igny8_slot_release(i);
			}
			else
				igny8_wake_proc(procno);
		}
	}
}

static long
ms_until(TimestampTz now, TimestampTz at)
{
	long		secs;
	int			usecs;

	if (at <= now)
		return 0;
	TimestampDifference(now, at, &secs, &usecs);
	return secs * 1000 + (usecs + 999) / 1000;
}

void
igny8_worker_main(Datum main_arg)
{
	WaitEventSet *wes;
	Igny8WorkerShared *w;
	int		   *newslots;

	my_index = DatumGetInt32(main_arg);

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(igny8_database, NULL, 0);
	pgstat_report_appname("igny8_ai worker");

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "igny8_ai loop",
									 ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(loop_cxt);

	igny8_json_init();
	igny8_http_init();
	(void) igny8_dsa();

	w = &igny8_shared->workers[my_index];
	SpinLockAcquire(&w->mutex);
	w->procno = MyProc->pgprocno;
	w->pid = MyProcPid;
	SpinLockRelease(&w->mutex);
	pg_atomic_write_u32(&w->in_flight, 0);
	before_shmem_exit(worker_detach, (Datum) 0);

	recover_orphans();
	refresh_config(true);

	newslots = MemoryContextAlloc(TopMemoryContext,
								  sizeof(int) * igny8_shared->nslots);

	wes = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(wes, WL_SOCKET_READABLE, igny8_http_fd(), NULL, NULL);

	ereport(LOG,
			(errmsg("igny8_ai worker %d started in database \"%s\"",
					my_index, igny8_database)));

	for (;;)
	{
		WaitEvent	events[3];
		int			nevents;
		bool		fd_ready = false;
		long		timeout = IGNY8_IDLE_WAIT_MS;
		TimestampTz now;
		long		http_ms;
		dlist_mutable_iter miter;
		Igny8Transfer *t;
		int			slotno;
		int			nnew;
		bool		waiting_provider = false;

		/* how long may we sleep? */
		now = GetCurrentTimestamp();
		http_ms = igny8_http_timeout_ms();
		if (http_ms >= 0)
			timeout = Min(timeout, http_ms);
		dlist_foreach_modify(miter, &jobs)
		{
			Job		   *job = dlist_container(Job, node, miter.cur);

			if (job->state == JOB_BACKOFF)
				timeout = Min(timeout, ms_until(now, job->wake_at));
			else if (job->state == JOB_WAIT_PROVIDER)
				waiting_provider = true;
			timeout = Min(timeout, ms_until(now, job->deadline));
		}
		if (waiting_provider)
			timeout = Min(timeout, IGNY8_PROVIDER_WAIT_MS);

		nevents = WaitEventSetWait(wes, timeout, events, lengthof(events),
								   PG_WAIT_EXTENSION);
		for (int i = 0; i < nevents; i++)
		{
			if (events[i].events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			if (events[i].events & WL_SOCKET_READABLE)
				fd_ready = true;
		}

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);

		/*
		 * Take the new requests first, then look at the configuration: a
		 * request queued after its caller committed a configuration change
		 * must be routed with that change.
		 */
		nnew = 0;
		while (nnew < igny8_shared->nslots &&
			   (slotno = igny8_queue_pop(my_index)) >= 0)
			newslots[nnew++] = slotno;
		refresh_config(false);
		for (int i = 0; i < nnew; i++)
			accept_slot(newslots[i]);
		MemoryContextSwitchTo(loop_cxt);

		check_abandoned();

		/*
		 * Let curl progress, read what finished, start what is due; starting
		 * a transfer can finish it at once (a refused connection), so go
		 * round until nothing new starts.
		 */
		igny8_http_drive(fd_ready);
		for (;;)
		{
			bool		started = false;

			while ((t = igny8_http_next_finished()) != NULL)
				handle_transfer((Job *) t->owner, t);
			MemoryContextSwitchTo(loop_cxt);

			now = GetCurrentTimestamp();
			dlist_foreach_modify(miter, &jobs)
			{
				Job		   *job = dlist_container(Job, node, miter.cur);

				if (job->state == JOB_BACKOFF && job->wake_at <= now)
					job->state = JOB_READY;
				if (job->state == JOB_WAIT_PROVIDER)
					job->state = JOB_READY;
				/* next_candidate may leave the job READY again: loop */
				while (job->state == JOB_READY)
				{
					start_attempt(job, now);
					if (job->state == JOB_HTTP)
						started = true;
				}
			}
			MemoryContextSwitchTo(loop_cxt);
			if (!started)
				break;
			igny8_http_drive(false);
		}

		log_attempts();

		dlist_foreach_modify(miter, &jobs)
		{
			Job		   *job = dlist_container(Job, node, miter.cur);

			if (job->state == JOB_FINISHED)
				publish(job);
		}
		MemoryContextSwitchTo(loop_cxt);
	}
}
