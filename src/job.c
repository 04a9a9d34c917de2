/*-------------------------------------------------------------------------
 *
 * job.c
 *	  The requests a worker holds ("jobs"), from the slot it took them from
 *	  to the answer it hands back: routing, a provider place, one attempt
 *	  after another with retries and fallbacks, and publishing.
 *
 * A job moves through
 *
 *	READY --> WAIT_PLACE --> READY   (its provider's places were all taken;
 *									  it waits its turn, at most its
 *									  deployment's queue_timeout)
 *	READY --> HTTP --> READY / BACKOFF / FINISHED
 *	BACKOFF --> READY				 (at wake_at)
 *	HTTP --> POLL_WAIT --> HTTP		 (an attempt of several steps waits
 *									  between two of them: ComfyUI's
 *									  history polls, image.c)
 *
 * What an attempt sends, and how its answers are read, is the task kind's
 * (Igny8TaskOps: text here, images in image.c, health probes in
 * probe.c); the candidates, places, retries and fallbacks are this file's.
 * and is FINISHED by success, a caller error, the last candidate failing,
 * the deadline, its caller leaving, or the worker stopping.  Its attempts
 * are written to ai_usage_log (usage.c) before it is published, and its
 * memory is one context deleted with it.  Strings are UTF-8 inside the
 * worker; what is published is converted to the database encoding.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"

#include "worker.h"

#define IGNY8_DEFAULT_MAX_TOKENS 4096
/* an attempt is not started with less time than this before the deadline */
#define IGNY8_MIN_ATTEMPT_MS	100
/* how long after its attempt's deadline a circuit trial is given up */
#define IGNY8_TRIAL_LEASE_SLACK_MS	1000
/* how often a paid attempt looks again at a budget whose spend is summed */
#define IGNY8_BUDGET_LOADING_WAIT_MS	50

int			igny8_worker_index = -1;
TimestampTz igny8_worker_started_at = 0;
dlist_head	igny8_jobs = DLIST_STATIC_INIT(igny8_jobs);
dlist_head	igny8_jobs_ended = DLIST_STATIC_INIT(igny8_jobs_ended);
dlist_head	igny8_jobs_to_advance = DLIST_STATIC_INIT(igny8_jobs_to_advance);
uint64		igny8_jobs_to_advance_listed = 0;
List	   *igny8_pending_notifies = NIL;
Igny8JobCounts igny8_job_counts;

#ifdef IGNY8_CHECK_COUNTS
void
igny8_job_counts_check(void)
{
	Igny8JobCounts real;
	dlist_iter	iter;
	int			listed = 0;
	int			to_advance = 0;

	memset(&real, 0, sizeof(real));
	dlist_foreach(iter, &igny8_jobs)
	{
		Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);
		ListCell   *lc;
		bool		unlogged = false;

		real.in_state[job->state]++;
		if (job->job_id != 0)
			real.submitted++;
		foreach(lc, job->attempts)
		{
			if (!((Igny8Attempt *) lfirst(lc))->logged)
			{
				real.unlogged++;
				unlogged = true;
			}
		}
		if ((unlogged || job->state == JOB_FINISHED) && !job->ended_listed)
			elog(PANIC, "igny8_ai worker %d: a job with something to log or publish is not in igny8_jobs_ended",
				 igny8_worker_index);
		if (job->ended_listed)
			listed++;
		if (job->advance_listed !=
			(job->state != JOB_HTTP && job->state != JOB_FINISHED))
			elog(PANIC, "igny8_ai worker %d: a job in state %d is %sin igny8_jobs_to_advance",
				 igny8_worker_index, (int) job->state,
				 job->advance_listed ? "" : "not ");
		if (job->advance_listed)
			to_advance++;
	}
	dlist_foreach(iter, &igny8_jobs_ended)
		listed--;
	if (listed != 0)
		elog(PANIC, "igny8_ai worker %d: igny8_jobs_ended holds jobs no longer in flight",
			 igny8_worker_index);
	dlist_foreach(iter, &igny8_jobs_to_advance)
		to_advance--;
	if (to_advance != 0)
		elog(PANIC, "igny8_ai worker %d: igny8_jobs_to_advance holds jobs no longer in flight",
			 igny8_worker_index);
	if (memcmp(&real, &igny8_job_counts, sizeof(real)) != 0)
		elog(PANIC, "igny8_ai worker %d: job counts wrong: %d submitted, %d unlogged, %d finished counted; %d, %d, %d there",
			 igny8_worker_index, igny8_job_counts.submitted,
			 igny8_job_counts.unlogged,
			 igny8_job_counts.in_state[JOB_FINISHED], real.submitted,
			 real.unlogged, real.in_state[JOB_FINISHED]);
}
#endif

static int
by_seq(const void *a, const void *b)
{
	uint64		x = (*(Igny8Job *const *) a)->seq;
	uint64		y = (*(Igny8Job *const *) b)->seq;

	return (x > y) - (x < y);
}

/*
 * The jobs of list, whose nodes are at offset in Igny8Job, in the order
 * they were made, as igny8_jobs has them; palloc'd in the current memory
 * context.  For the loop's passes over igny8_jobs_ended and
 * igny8_jobs_to_advance, which keep the order that a walk of every job
 * had.
 */
Igny8Job  **
igny8_jobs_in_order(dlist_head *list, size_t offset, int *n)
{
	dlist_iter	iter;
	Igny8Job  **jobs;
	int			count = 0;

	dlist_foreach(iter, list)
		count++;
	jobs = palloc(sizeof(Igny8Job *) * Max(count, 1));
	count = 0;
	dlist_foreach(iter, list)
		jobs[count++] = (Igny8Job *) ((char *) iter.cur - offset);
	if (count > 1)
		qsort(jobs, count, sizeof(Igny8Job *), by_seq);
	*n = count;
	return jobs;
}

void
igny8_job_finish_error(Igny8Job *job, int sqlerrcode, char *msg,
					   char *detail, char *hint)
{
	igny8_job_set_state(job, JOB_FINISHED);
	job->success = false;
	job->sqlerrcode = sqlerrcode;
	job->errmsg = msg;
	job->errdetail = detail;
	job->errhint = hint;
}

/* Parse the normalized request the caller wrote. */
static bool
parse_request(Igny8Job *job)
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

/*
 * Turn a slot this worker claimed (RUNNING) into a job.  Nothing here can
 * fail but out of memory; a malformed request finishes the job at once.
 */
Igny8Job *
igny8_job_create(int slotno)
{
	static uint64 made = 0;
	Igny8Slot  *slot = &igny8_slots[slotno];
	Igny8Job   *job;
	MemoryContext cxt;
	MemoryContext old;

	cxt = AllocSetContextCreate(TopMemoryContext, "igny8_ai job",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	job = palloc0(sizeof(Igny8Job));
	job->cxt = cxt;
	job->slotno = slotno;
	job->task = slot->task;
	job->request_id = slot->request_id;
	job->alias = igny8_from_db(slot->alias);
	job->has_account = slot->has_account;
	job->account_id = slot->account_id;
	job->timeout_ms = slot->timeout_ms;
	job->deadline = slot->deadline;
	/*
	 * A submitted job's run has its timeout from its first attempt: until
	 * then it waits for a provider place as long as it takes (below).
	 */
	if (slot->job_id != 0)
		job->deadline = DT_NOEND;
	job->started = GetCurrentTimestamp();
	job->request_json = pstrdup(dsa_get_address(igny8_dsa(), slot->request));
	job->job_id = slot->job_id;
	job->holding = -1;
	job->trial_index = -1;
	job->gpu_clock = -1;
	job->gpu_seconds = -1;
	job->state = JOB_READY;
	job->seq = ++made;
	dlist_push_tail(&igny8_jobs, &job->node);
	igny8_job_counts.in_state[JOB_READY]++;
	dlist_push_tail(&igny8_jobs_to_advance, &job->advance_node);
	job->advance_listed = true;
	igny8_jobs_to_advance_listed++;
	if (job->job_id != 0)
		igny8_job_counts.submitted++;
	pg_atomic_fetch_add_u32(&igny8_shared->workers[igny8_worker_index].in_flight, 1);

	if ((job->task == IGNY8_TASK_IMAGE &&
		 !igny8_image_parse_request(job, job->request_json)) ||
		((job->task == IGNY8_TASK_TEXT || job->task == IGNY8_TASK_CHAT) &&
		 !parse_request(job)))
		igny8_job_finish_error(job, ERRCODE_INTERNAL_ERROR,
							   pstrdup("igny8_ai received a malformed request"),
							   NULL, NULL);
	MemoryContextSwitchTo(old);
	return job;
}

/*
 * Route a new job with the worker's configuration: the candidates of its
 * alias, or the provider a probe is for.  config is NULL when it could not
 * be loaded; load_error then says why (NULL: the extension is not
 * installed).
 */
void
igny8_job_route(Igny8Job *job, Igny8Config *config, const char *load_error)
{
	MemoryContext old;
	Igny8RouteError rerr;

	if (job->state == JOB_FINISHED)
		return;
	old = MemoryContextSwitchTo(job->cxt);
	if (config == NULL && load_error != NULL)
		igny8_job_finish_error(job, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
							   pstrdup("igny8_ai workers could not load their configuration"),
							   psprintf("%s", load_error),
							   pstrdup("See the server log.  A lock held on a configuration table (a migration, a LOCK TABLE) makes the load time out and be tried again until it is released; a permission denied means the role of igny8_ai.username needs the grants of igny8_grant_worker()."));
	else if (config == NULL)
		igny8_job_finish_error(job, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
							   psprintf("extension \"igny8_ai\" is not installed in database \"%s\"",
										igny8_database),
							   pstrdup("The igny8_ai workers serve the database named by igny8_ai.database."),
							   pstrdup("Set igny8_ai.database to the database that has the extension (pg_cron's cron.database_name) and restart the server; if the extension was created in the calling transaction, commit it before calling."));
	else if (job->task == IGNY8_TASK_HEALTH)
	{
		job->probe = igny8_config_provider(config, job->alias);
		if (job->probe == NULL)
			igny8_job_finish_error(job, ERRCODE_UNDEFINED_OBJECT,
								   psprintf("provider \"%s\" does not exist",
											job->alias), NULL, NULL);
	}
	else
	{
		/* the account's own settings (igny8_account_providers), if any */
		Igny8Account *account;
		Igny8Config *view = igny8_config_for_account(config, job->has_account,
													 job->account_id, &account);

		if (!igny8_route(view, job->alias, job->task, &job->cands,
						 &job->ncands, &rerr))
		{
			Igny8Deployment **cands;
			int			ncands;
			Igny8RouteError base;

			/* nothing left because the account turned its providers off? */
			if (rerr.sqlerrcode == ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE &&
				account != NULL && account->disabled != NULL &&
				igny8_route(config, job->alias, job->task, &cands, &ncands,
							&base))
			{
				rerr.detail = psprintf("Account " INT64_FORMAT " has turned off provider(s) %s in igny8_account_providers, and no other provider serves the alias or its fallbacks.",
									   job->account_id, account->disabled);
				rerr.hint = pstrdup("Enable a provider for the account in igny8_account_providers, or call with another account.");
			}
			igny8_job_finish_error(job, rerr.sqlerrcode, rerr.message,
								   rerr.detail, rerr.hint);
		}
	}
	if (job->state != JOB_FINISHED)
	{
		job->config = config;
		config->refcount++;
		igny8_cache_route(job, config);
	}
	MemoryContextSwitchTo(old);
}

/*
 * The attempt starting now runs on the clock of the box whose rent pays
 * for its provider, if any (gpuclock.c).
 */
static void
gpu_start(Igny8Job *job, Igny8Provider *p, TimestampTz now)
{
	job->gpu_clock = p->gpu_clock;
	if (job->gpu_clock >= 0)
		job->gpu_since = igny8_gpu_clock_start(igny8_worker_index,
											   job->gpu_clock, now);
}

/* The attempt ends: its share of the box's time, for its Igny8Attempt. */
static void
gpu_stop(Igny8Job *job, TimestampTz now)
{
	double		s;

	if (job->gpu_clock < 0)
		return;
	s = igny8_gpu_clock_end(igny8_worker_index, job->gpu_clock, now);
	job->gpu_seconds = Max(s - job->gpu_since, 0.0);
	job->gpu_clock = -1;
}

Igny8Attempt *
igny8_job_add_attempt(Igny8Job *job, Igny8Deployment *d)
{
	Igny8Attempt *a = palloc0(sizeof(Igny8Attempt));

	/* an attempt that ran stops its clock, if nothing stopped it before */
	if (job->gpu_clock >= 0)
		gpu_stop(job, GetCurrentTimestamp());
	a->gpu_seconds = job->gpu_seconds;
	job->gpu_seconds = -1;

	a->number = list_length(job->attempts) + 1;
	a->provider = d->provider->id;
	a->model = d->model;
	a->api_key_ref = d->provider->account_key_ref;
	a->at = GetCurrentTimestamp();
	/* the attempt's reservation is given back when its row commits */
	a->budget_reserved = job->budget_reserved;
	a->budget_made = job->budget_made;
	job->budget_reserved = 0;
	job->attempts = lappend(job->attempts, a);
	igny8_job_counts.unlogged++;
	igny8_job_list_ended(job);
	return a;
}

/* Give back the provider place the job holds, if any. */
void
igny8_job_release_place(Igny8Job *job)
{
	if (job->holding >= 0)
	{
		igny8_place_release(igny8_worker_index, job->holding);
		job->holding = -1;
	}
}

/* Leave the provider's wait queue, if the job is in one. */
static void
leave_queue(Igny8Job *job)
{
	if (job->wait_since != 0)
	{
		igny8_place_leave_queue(job->slotno);
		job->wait_since = 0;
	}
}

/* Text of the attempts so far, for the detail of a final error. */
static char *
attempts_detail(Igny8Job *job)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, job->attempts)
	{
		Igny8Attempt *a = lfirst(lc);

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
request_id_text(Igny8Job *job)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out,
											   UUIDPGetDatum(&job->request_id)));
}

/* The hint of a final error: where the attempts are logged, if anywhere. */
static char *
final_hint(Igny8Job *job, const char *advice)
{
	if (igny8_job_sent(job))
		return psprintf("%s The attempts are in ai_usage_log with request_id %s.",
						advice, request_id_text(job));
	return pstrdup(advice);
}

/* Every candidate failed, or the deadline passed. */
static void
finish_exhausted(Igny8Job *job, bool deadline)
{
	if (deadline)
		igny8_job_finish_error(job, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
							   psprintf("AI request for model alias \"%s\" timed out after %d ms",
										job->alias, job->timeout_ms),
							   attempts_detail(job),
							   final_hint(job, "Pass a longer timeout, or raise igny8_ai.default_timeout."));
	else if (job->budget_skipped)
		igny8_job_finish_error(job, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
							   psprintf("budget of account %lld is exhausted",
										(long long) job->account_id),
							   psprintf("%s\n%s",
										igny8_budget_refusal_detail(job->account_id,
																	&job->budget_refusal),
										attempts_detail(job)),
							   final_hint(job, "The budget in igny8_budgets allows only self-hosted providers, and none could serve the request."));
	else
		igny8_job_finish_error(job, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
							   psprintf("all providers failed for model alias \"%s\"",
										job->alias),
							   attempts_detail(job),
							   final_hint(job, "Check the providers in igny8_providers."));
}

/* Too little time is left for another attempt? */
bool
igny8_job_deadline_reached(Igny8Job *job, TimestampTz now)
{
	return TimestampTzPlusMilliseconds(now, IGNY8_MIN_ATTEMPT_MS) > job->deadline;
}

/*
 * The last attempt failed with nothing billed: it was never sent, or the
 * provider refused it with an HTTP error (4xx, 5xx) that reports no
 * tokens.  Its budget reservation is given back now, so that the retry or
 * the next candidate is not measured against it too.  Any other attempt's
 * reservation (an answer, even one cut off or not kept, or a request with
 * no answer, which the provider may have run) is given back when its
 * usage row commits, as its cost is spent.
 */
static void
settle_unbilled(Igny8Job *job)
{
	Igny8Attempt *a;

	if (!job->has_account || job->attempts == NIL)
		return;
	a = (Igny8Attempt *) llast(job->attempts);
	if (a->success || a->budget_reserved <= 0 ||
		(a->sent && !a->unsent &&
		 (a->http_status < 400 || a->input_tokens > 0 ||
		  a->output_tokens > 0 || a->images > 0)))
		return;
	igny8_budget_settle(job->account_id, a->budget_reserved, a->budget_made,
						NULL);
	a->budget_reserved = 0;
}

/*
 * Move on to the next candidate, or give up.  When the deadline is what
 * ended the last candidate, the caller is told so.
 */
void
igny8_job_next_candidate(Igny8Job *job, TimestampTz now)
{
	settle_unbilled(job);
	igny8_job_end_trial(job);
	job->cand++;
	job->retries = 0;
	job->omit_think = false;
	if (job->cand >= job->ncands)
		finish_exhausted(job, igny8_job_deadline_reached(job, now));
	else
		igny8_job_set_state(job, JOB_READY);
}

static int
effective_max_tokens(Igny8Job *job, Igny8Deployment *d)
{
	if (job->has_max_tokens)
		return (d->max_tokens > 0) ? Min(job->max_tokens, d->max_tokens) :
			job->max_tokens;
	return (d->max_tokens > 0) ? d->max_tokens : IGNY8_DEFAULT_MAX_TOKENS;
}

/*
 * Does a paid attempt on d fit the budgets of the job's account?  When it
 * does, its estimate is reserved (budget.c).  When not, the budget's
 * action applies: refuse ends the job with SQLSTATE 53400, and
 * self_hosted_only skips the candidate.  While the spend of one of the
 * account's budgets is being summed (budget.c), the attempt waits for it
 * (JOB_BACKOFF), within the call's deadline.
 *
 * The prices and budgets are those of the worker's latest configuration,
 * not of the one the job was routed with: a job that waited for a place
 * or a retry while a budget or a price was added is checked against it,
 * and its cost is counted with the same prices (usage.c).
 */
static bool
budget_admits(Igny8Job *job, Igny8Deployment *d, TimestampTz now)
{
	Igny8BudgetRefusal r;
	Igny8Config *latest = igny8_worker_config();
	int64		estimate;

	if (latest == NULL)
		latest = job->config;
	if (!job->has_account || job->budget_reserved > 0 ||
		latest == NULL || latest->nbudgets == 0)
		return true;
	estimate = igny8_attempt_estimate(latest, job, d,
									  effective_max_tokens(job, d), now);
	if (estimate <= 0)
		return true;			/* not paid */
	memset(&r, 0, sizeof(r));
	if (igny8_budget_admit(job->account_id, estimate, now, &r,
						   &job->budget_made))
	{
		job->budget_reserved = estimate;
		return true;
	}
	if (r.loading)
	{
		TimestampTz at = TimestampTzPlusMilliseconds(now,
													 IGNY8_BUDGET_LOADING_WAIT_MS);

		if (job->deadline == DT_NOEND)
			job->deadline = TimestampTzPlusMilliseconds(now, job->timeout_ms);
		if (!igny8_job_deadline_reached(job, at))
		{
			job->wake_at = at;
			igny8_job_set_state(job, JOB_BACKOFF);
			return false;
		}
		igny8_job_finish_error(job, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
							   psprintf("budget of account %lld is not loaded yet",
										(long long) job->account_id),
							   psprintf("The spend of its %s budget is being summed from ai_usage_log, and a paid attempt waits for it; the call's timeout (%d ms) came first.%s%s",
										igny8_budget_period_name(r.period),
										job->timeout_ms,
										job->attempts != NIL ? "\n" : "",
										job->attempts != NIL ? attempts_detail(job) : ""),
							   final_hint(job, "Retry the call. If igny8_budget_status() shows the budget loading for long, pg_stat_activity shows a worker summing its spend, or the server log says why the sum failed."));
		return false;
	}
	if (r.self_hosted_only)
	{
		Igny8Attempt *a = igny8_job_add_attempt(job, d);

		a->error = psprintf("skipped: the %s budget of account %lld allows only self-hosted providers now (spent %s of %s USD, estimate %s USD)",
							igny8_budget_period_name(r.period),
							(long long) job->account_id,
							igny8_micro_text(r.spent), igny8_micro_text(r.limit),
							igny8_micro_text(r.estimate));
		job->budget_skipped = true;
		job->budget_refusal = r;
		igny8_job_next_candidate(job, now);
		return false;
	}
	igny8_job_finish_error(job, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
						   psprintf("budget of account %lld is exhausted",
									(long long) job->account_id),
						   job->attempts != NIL ?
						   psprintf("%s\n%s",
									igny8_budget_refusal_detail(job->account_id, &r),
									attempts_detail(job)) :
						   igny8_budget_refusal_detail(job->account_id, &r),
						   final_hint(job, r.estimate <= r.limit ?
									  "Raise limit_usd in igny8_budgets, or wait for the next period." :
									  job->task == IGNY8_TASK_IMAGE ?
									  "This image alone is estimated above the limit, so waiting for the next period will not help: ask for a smaller size or a lower quality, or raise limit_usd in igny8_budgets." :
									  "This attempt alone is estimated above the limit, so waiting for the next period will not help: pass a smaller max_tokens (the estimate counts all of it), or raise limit_usd in igny8_budgets."));
	return false;
}

/* Record in the slot that an attempt reached the network. */
void
igny8_job_mark_sent(Igny8Job *job)
{
	Igny8Slot  *slot = &igny8_slots[job->slotno];

	SpinLockAcquire(&slot->mutex);
	slot->sent = true;
	SpinLockRelease(&slot->mutex);
}

/*
 * Take a place on the candidate's provider, or wait in its queue.  False
 * when the job must wait (JOB_WAIT_PLACE) or moved on to another candidate.
 */
static bool
take_place(Igny8Job *job, Igny8Deployment *d, TimestampTz now)
{
	Igny8Provider *p = d->provider;

	if (p->shared_index < 0)
		return true;			/* no shared state: no limit */
	if (igny8_place_take(igny8_worker_index, p->shared_index, job->slotno))
	{
		job->wait_since = 0;
		job->holding = p->shared_index;
		return true;
	}
	if (job->wait_since == 0)
	{
		/*
		 * A call waits at most its deployment's queue_timeout, then falls
		 * back; a submitted job is background work, and waits for the place
		 * (a busy GPU is no reason to pay for a fallback) within its
		 * deadline.
		 */
		job->wait_since = now;
		job->wake_at = (job->job_id != 0) ? job->deadline :
			TimestampTzPlusMilliseconds(now, d->queue_timeout_ms);
		job->wake_at = Min(job->wake_at, job->deadline);
	}
	if (now >= job->wake_at)
	{
		/* waited long enough (or not at all: queue_timeout 0) */
		Igny8Attempt *a = igny8_job_add_attempt(job, d);

		a->error = psprintf("no free place after %ld ms (max_concurrent %d, %d waiting)",
							(long) ((now - job->wait_since) / 1000),
							p->max_concurrent,
							igny8_place_waiting(p->shared_index));
		leave_queue(job);
		igny8_job_next_candidate(job, now);
		return false;
	}
	igny8_job_set_state(job, JOB_WAIT_PLACE);
	return false;
}

/* The operations of a task kind. */
static const Igny8TaskOps *
task_ops(Igny8Task task)
{
	switch (task)
	{
		case IGNY8_TASK_TEXT:
		case IGNY8_TASK_CHAT:
			return &igny8_text_ops;
		case IGNY8_TASK_IMAGE:
			return &igny8_image_ops;
		case IGNY8_TASK_HEALTH:
			break;
	}
	return &igny8_probe_ops;
}

/* Is there a later candidate whose circuit lets an attempt through? */
static bool
later_candidate_allowed(Igny8Job *job)
{
	for (int i = job->cand + 1; i < job->ncands; i++)
		if (igny8_circuit_allows(job->cands[i]->provider->shared_index))
			return true;
	return false;
}

/*
 * The attempt's circuit trial, if it holds one, ends without an outcome
 * for the provider (the report of one settles it first).
 */
void
igny8_job_end_trial(Igny8Job *job)
{
	if (job->trial_index < 0)
		return;
	igny8_circuit_end_trial(job->trial_index, job->trial_at);
	job->trial_index = -1;
}

/*
 * Start an attempt on the current candidate: what every routed task
 * checks first (time left, a key, a provider that serves the task, a
 * place), then the task's own first step.
 */
static void
start_attempt(Igny8Job *job, TimestampTz now)
{
	const Igny8TaskOps *ops = task_ops(job->task);
	Igny8Deployment *d;
	Igny8Provider *p;
	const Igny8TextProtocol *proto;

	if (!ops->routed)
	{
		ops->start(job, now);
		return;
	}
	d = job->cands[job->cand];
	p = d->provider;
	proto = igny8_text_protocol(p->kind);

	if (igny8_job_deadline_reached(job, now))
	{
		leave_queue(job);
		igny8_job_release_place(job);
		igny8_job_end_trial(job);
		finish_exhausted(job, true);
		return;
	}

	/* a provider we cannot authenticate to is skipped, not called */
	if (p->key_error != NULL ||
		(proto != NULL && proto->needs_key && p->key == NULL))
	{
		Igny8Attempt *a = igny8_job_add_attempt(job, d);

		if (p->key_error)
			a->error = psprintf("API key reference %s could not be resolved: %s",
								igny8_key_ref_display(p->key_ref), p->key_error);
		else
			a->error = pstrdup("no API key configured (api_key_ref is empty)");
		igny8_job_next_candidate(job, now);
		return;
	}
	if (!ops->serves(p->kind))
	{
		Igny8Attempt *a = igny8_job_add_attempt(job, d);

		a->error = psprintf("provider kind \"%s\" cannot serve %s",
							igny8_provider_kind_name(p->kind), ops->name);
		igny8_job_next_candidate(job, now);
		return;
	}

	/* a paid attempt must fit the account's budgets, fallbacks included */
	if (!budget_admits(job, d, now))
	{
		leave_queue(job);
		igny8_job_release_place(job);
		return;
	}

	/* (a place taken before the attempt waited for its intent is kept) */
	if (job->holding < 0 && !take_place(job, d, now))
		return;
	if (job->deadline == DT_NOEND)
		job->deadline = TimestampTzPlusMilliseconds(now, job->timeout_ms);

	/*
	 * An open circuit lets one trial through at a time.  Its provider may
	 * have been kept by routing, or its circuit opened since: when no trial
	 * may pass now, the next candidate whose circuit allows it is tried,
	 * and when there is none, this one all the same (as routing does when
	 * every circuit is open).  Not again for an attempt whose intent is
	 * recorded (it goes out now), nor one that holds the trial already.
	 */
	if (job->trial_index < 0 &&
		!(job->job_id != 0 && job->inflight == list_length(job->attempts) + 1))
	{
		TimestampTz until = Min(TimestampTzPlusMilliseconds(now, d->timeout_ms),
								job->deadline);

		switch (igny8_circuit_take_trial(p->shared_index,
										 TimestampTzPlusMilliseconds(until,
																	 IGNY8_TRIAL_LEASE_SLACK_MS),
										 &job->trial_at))
		{
			case IGNY8_CIRCUIT_CLOSED:
				break;
			case IGNY8_CIRCUIT_TRIAL:
				job->trial_index = p->shared_index;
				break;
			case IGNY8_CIRCUIT_REFUSED:
				if (later_candidate_allowed(job))
				{
					/* (not sent: in the error's detail, not in the log) */
					Igny8Attempt *a = igny8_job_add_attempt(job, d);

					a->error = pstrdup("skipped: its circuit is open, and its one trial is in flight or its cool-down not over");
					leave_queue(job);
					igny8_job_release_place(job);
					/* (settle_unbilled gives the reservation back) */
					igny8_job_next_candidate(job, now);
					return;
				}
				break;
		}
	}

	/*
	 * A submitted job's attempt is recorded in its row before it is sent,
	 * so that a worker that dies leaves its usage row behind (jobtable.c).
	 */
	if (job->job_id != 0 && job->inflight != list_length(job->attempts) + 1)
	{
		igny8_job_set_state(job, JOB_INTENT);
		job->intent_at = now;
		return;
	}
	job->attempt_deadline = TimestampTzPlusMilliseconds(now, d->timeout_ms);
	job->attempt_deadline = Min(job->attempt_deadline, job->deadline);
	/* a trial taken before the intent was recorded is sent only now */
	if (job->trial_index >= 0)
		igny8_circuit_extend_trial(job->trial_index, job->trial_at,
								   TimestampTzPlusMilliseconds(job->attempt_deadline,
															   IGNY8_TRIAL_LEASE_SLACK_MS));
	job->attempt_start = now;
	gpu_start(job, d->provider, now);
	ops->start(job, now);
	igny8_job_note_progress(job);
}

/*
 * A request's progress, in its slot: its current attempt (where, since
 * when) and ComfyUI's prompt_id and queue number of it.  Submitted jobs
 * show it (igny8_job_progress), and every ComfyUI prompt in flight counts
 * in the queue position it reports.
 */
void
igny8_job_note_progress(Igny8Job *job)
{
	Igny8Slot  *slot = &igny8_slots[job->slotno];

	if (job->cands == NULL || job->state == JOB_FINISHED)
		return;
	SpinLockAcquire(&slot->mutex);
	slot->attempt_since = job->attempt_start;
	slot->attempt_number = list_length(job->attempts) + 1;
	strlcpy(slot->attempt_provider, job->cands[job->cand]->provider->id,
			IGNY8_NAME_LEN);
	strlcpy(slot->remote_id, job->prompt_id ? job->prompt_id : "",
			sizeof(slot->remote_id));
	slot->remote_number = job->prompt_id ? job->prompt_number : -1;
	SpinLockRelease(&slot->mutex);
}

static bool
text_serves(Igny8ProviderKind kind)
{
	return igny8_text_protocol(kind) != NULL;
}

/* Text: the chat call, one transfer. */
static void
text_start(Igny8Job *job, TimestampTz now)
{
	Igny8Deployment *d = job->cands[job->cand];
	Igny8Provider *p = d->provider;
	const Igny8TextProtocol *proto = igny8_text_protocol(p->kind);
	Igny8TextRequest req;
	Igny8HttpRequest http;
	long		remaining_ms = (long) ((job->deadline - now) / 1000);

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
									 p->ca_file, 0, job);
	igny8_job_set_state(job, JOB_HTTP);
	igny8_job_mark_sent(job);
}

/*
 * Let a job make progress: a backoff that is over, a place that may be
 * free, an attempt to start.  True when a transfer was started.
 */
bool
igny8_job_advance(Igny8Job *job, TimestampTz now)
{
	MemoryContext old = MemoryContextSwitchTo(job->cxt);
	bool		started = false;

	if ((job->state == JOB_BACKOFF || job->state == JOB_WAIT_PLACE) &&
		now >= job->deadline)
	{
		leave_queue(job);
		finish_exhausted(job, true);
	}
	if (job->state == JOB_BACKOFF && job->wake_at <= now)
		igny8_job_set_state(job, JOB_READY);
	if (job->state == JOB_POLL_WAIT && job->wake_at <= now)
	{
		/* the task's next step is due: its start goes on from the cursor */
		task_ops(job->task)->start(job, now);
		if (job->state == JOB_HTTP)
			started = true;
	}
	if (job->state == JOB_WAIT_PLACE)
		igny8_job_set_state(job, JOB_READY); /* start_attempt asks for the place again */
	/* next_candidate may leave the job READY again: loop */
	while (job->state == JOB_READY)
	{
		start_attempt(job, now);
		if (job->state == JOB_HTTP)
			started = true;
	}
	MemoryContextSwitchTo(old);
	return started;
}

/* When the job needs looking at again, if nothing else happens. */
TimestampTz
igny8_job_next_timeout(Igny8Job *job)
{
	switch (job->state)
	{
		case JOB_BACKOFF:
		case JOB_WAIT_PLACE:
		case JOB_POLL_WAIT:
		case JOB_CACHE_WAIT:
			return Min(job->wake_at, job->deadline);
		case JOB_READY:
		case JOB_FINISHED:
		case JOB_INTENT:
			return 0;
		case JOB_HTTP:
			break;
	}
	return job->deadline;
}

/* Queue a NOTIFY igny8_ai_health for the next usage transaction. */
void
igny8_job_queue_notify(const char *provider, const Igny8HealthChange *change,
					   const char *code)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	igny8_pending_notifies = lappend(igny8_pending_notifies,
									 igny8_health_payload(provider, change,
														  code));
	MemoryContextSwitchTo(old);
}

/*
 * Feed the outcome of a request attempt to its provider's health: a
 * transport failure, a 5xx, or a refusal of our key or account (401, 402,
 * 403: the provider cannot be used, as a probe would find) counts against
 * it; any other HTTP answer shows it is up.  t NULL: the attempt ran out of
 * time with no transfer in flight (a ComfyUI prompt that did not finish,
 * image.c), which counts as a request that times out.  A change of state
 * is logged at once and announced with NOTIFY in the worker's next
 * transaction.
 */
static void report_health(Igny8Job *job, Igny8Provider *p, Igny8Transfer *t,
						  Igny8Attempt *a);

void
igny8_job_report_health(Igny8Job *job, Igny8Provider *p, Igny8Transfer *t,
						Igny8Attempt *a)
{
	report_health(job, p, t, a);
	/* a trial with no outcome for the provider lets another start */
	igny8_job_end_trial(job);
}

static void
report_health(Igny8Job *job, Igny8Provider *p, Igny8Transfer *t,
			  Igny8Attempt *a)
{
	Igny8HealthChange change;
	bool		ok;
	bool		transport_failure;
	const char *error = NULL;
	const char *code;

	if (t != NULL && (igny8_http_too_large(t) || igny8_http_local_failure(t)))
		return;					/* says nothing about the provider */

	/*
	 * A request that went out and was cut short by the call's own deadline
	 * (a caller's short timeout), not by the deployment's timeout, says
	 * nothing about the provider either: a healthy box that answers in 2 s
	 * is not down for a caller that allows 1.  One that could not even be
	 * sent in that time (no connection) counts, as a refused one does.
	 */
	if (t != NULL && t->result == CURLE_OPERATION_TIMEDOUT &&
		job->attempt_deadline >= job->deadline &&
		igny8_job_deadline_reached(job, GetCurrentTimestamp()) &&
		!igny8_http_never_sent(t))
		return;
	/*
	 * An account's own key refused (revoked, unpaid, forbidden) is that
	 * account's problem: the provider, with its own key, serves every other
	 * account.  Counted, one tenant's bad key would open the circuit for
	 * all of them.
	 */
	if (p->account_key_ref != NULL && t != NULL && t->result == CURLE_OK &&
		(t->status == 401 || t->status == 402 || t->status == 403))
		return;
	ok = (t != NULL && t->result == CURLE_OK && t->status < 500 &&
		  t->status != 401 && t->status != 402 && t->status != 403);
	if (!ok)
		error = (a->http_status > 0) ?
			psprintf("HTTP %ld: %s", a->http_status, a->error) : a->error;
	/*
	 * A failure of the way to the provider (no connection, a connection
	 * reset or closed without an answer, a connect that timed out: the
	 * tunnel, or the box, was down) is one a probe can tell of: its success
	 * later says the way is back.  An HTTP error or a request that timed
	 * out once sent (a generation that fails or hangs) is not.
	 */
	transport_failure = (t != NULL && t->result != CURLE_OK &&
						 (t->result != CURLE_OPERATION_TIMEDOUT ||
						  igny8_http_never_sent(t)));
	igny8_health_report(p->shared_index, ok, false, false, transport_failure,
						a->duration_ms, error, &change);
	if (!change.changed)
		return;
	igny8_health_alert(p->id, &change, error ? igny8_to_db_lossy(error) : NULL);
	if (ok)
		code = "ok";
	else if (t == NULL)
		code = "timeout";
	else if (t->result != CURLE_OK)
		code = igny8_http_failure_kind(t);
	else
		code = psprintf("http_%ld", t->status);
	igny8_job_queue_notify(p->id, &change, code);
}

/*
 * Convert a successful answer's text to the database encoding.  False (with
 * the attempt's error set) when it cannot be represented there.
 */
static bool
answer_to_db(Igny8Job *job, Igny8Attempt *a)
{
	/* the answer itself when the database is UTF-8: no copy */
	char	   *content = igny8_to_db_exact(job->result.content);
	char	   *thinking = NULL;

	/*
	 * The reasoning is kept with a '?' for each character the encoding
	 * lacks: Qwen3's traces are full of dashes and arrows, and failing a
	 * good answer for them would pay a fallback in a LATIN1 database.
	 * Bytes that are not UTF-8 there are a malformed answer, found when it
	 * was parsed.
	 */
	if (content != NULL && job->result.thinking != NULL)
	{
		thinking = igny8_to_db_exact(job->result.thinking);
		if (thinking == NULL)
			thinking = igny8_to_db_lossy(job->result.thinking);
	}
	if (content == NULL)
	{
		a->error = psprintf("the answer has characters that the database encoding %s cannot represent",
							GetDatabaseEncodingName());
		return false;
	}
	/* a converted copy replaces the UTF-8 text, which goes at once */
	if (content != job->result.content)
		pfree(job->result.content);
	if (thinking != job->result.thinking)
		pfree(job->result.thinking);
	job->result.content = content;
	job->result.thinking = thinking;
	return true;
}

/*
 * End the current attempt on its transfer: the place is given back and an
 * attempt is recorded, with its time and HTTP status.
 */
Igny8Attempt *
igny8_job_end_attempt(Igny8Job *job, Igny8Transfer *t, TimestampTz now)
{
	Igny8Attempt *a;

	igny8_job_release_place(job);
	job->transfer = NULL;
	gpu_stop(job, now);
	a = igny8_job_add_attempt(job, job->cands[job->cand]);
	a->at = job->attempt_start;
	a->sent = true;
	a->duration_ms = (double) (now - job->attempt_start) / 1000.0;
	a->http_status = (t != NULL && t->result == CURLE_OK) ? t->status : 0;
	a->unsent = (t != NULL && igny8_http_never_sent(t));
	return a;
}

/*
 * What follows an attempt that ended with cls: nothing (answered), the
 * caller's error, a retry after a backoff, or the next candidate.
 */
void
igny8_job_conclude(Igny8Job *job, Igny8Attempt *a, Igny8Provider *p,
				   Igny8ErrorClass cls, double retry_after, TimestampTz now)
{
	settle_unbilled(job);
	switch (cls)
	{
		case IGNY8_ERR_NONE:
			break;				/* answered, or retried at once */
		case IGNY8_ERR_CALLER:
			igny8_job_finish_error(job, ERRCODE_INVALID_PARAMETER_VALUE,
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

				/* (an attempt needs IGNY8_MIN_ATTEMPT_MS before the deadline) */
				if (!igny8_job_deadline_reached(job, at))
				{
					job->retries++;
					job->wake_at = at;
					igny8_job_set_state(job, JOB_BACKOFF);
					break;
				}
				a->error = psprintf("%s (retry in %ld ms would pass the deadline)",
									a->error, wait);
			}
			igny8_job_next_candidate(job, now);
			break;
		default:
			igny8_job_next_candidate(job, now);
			break;
	}
}

/* A transfer of this job ended: hand it to the task's operations. */
void
igny8_job_transfer_done(Igny8Job *job, Igny8Transfer *t)
{
	MemoryContext old = MemoryContextSwitchTo(job->cxt);

	task_ops(job->task)->done(job, t);
	MemoryContextSwitchTo(old);
}

/* Text: the answer to the chat call. */
static void
text_done(Igny8Job *job, Igny8Transfer *t)
{
	Igny8Deployment *d = job->cands[job->cand];
	Igny8Provider *p = d->provider;
	Igny8Attempt *a;
	Igny8ErrorClass cls;
	Igny8ProviderError perr;
	double		retry_after = -1;
	TimestampTz now = GetCurrentTimestamp();

	a = igny8_job_end_attempt(job, t, now);
	memset(&perr, 0, sizeof(perr));
	if (t->result != CURLE_OK)
	{
		if (igny8_http_over_budget(t))
			cls = IGNY8_ERR_RETRY;	/* memory frees as other answers go */
		else if (igny8_http_too_large(t) || t->over_budget_alone)
			cls = IGNY8_ERR_FALLBACK;	/* it would not fit again */
		else
			cls = igny8_http_classify_transport(t);
		a->error = pstrdup(igny8_http_error_text(t));
		/* a dropped connection, or full memory, is worth one retry */
		if (cls == IGNY8_ERR_RETRY && job->retries >= 1)
			cls = IGNY8_ERR_FALLBACK;
	}
	else
	{
		Igny8HttpResponse resp;
		bool		parsed;

		/* no key may survive into anything parsed or cut out of the body */
		igny8_http_answer(t, p->key, &resp);
		memset(&job->result, 0, sizeof(job->result));

		parsed = igny8_text_protocol(p->kind)->parse_chat(&resp, &job->result,
														  &perr);
		/* what is kept was taken out of the body: it goes now */
		igny8_http_release_body(t, &resp);
		if (parsed)
		{
			job->result.model = igny8_redact(job->result.model, p->key);
			job->result.finish_reason = igny8_redact(job->result.finish_reason,
													 p->key);
			/*
			 * The provider answered and bills these tokens, whether or not
			 * the answer can be kept: its row and cost have them.
			 */
			a->input_tokens = job->result.input_tokens;
			a->cached_input_tokens = job->result.cached_input_tokens;
			a->cache_write_tokens = job->result.cache_write_input_tokens;
			a->output_tokens = job->result.output_tokens;
			if (answer_to_db(job, a))
			{
				a->success = true;
				job->used = d;
				job->success = true;
				igny8_job_set_state(job, JOB_FINISHED);
				cls = IGNY8_ERR_NONE;
			}
			else
				cls = IGNY8_ERR_FALLBACK;
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
	igny8_job_report_health(job, p, t, a);
	igny8_http_free(t);

	if (perr.drop_think && !job->omit_think)
	{
		/* retry at once without "think" (protocols.md 1.4) */
		job->omit_think = true;
		igny8_job_set_state(job, JOB_READY);
		cls = IGNY8_ERR_NONE;
	}

	igny8_job_conclude(job, a, p, cls, retry_after, now);
}

const Igny8TaskOps igny8_text_ops = {
	.name = "text",
	.routed = true,
	.serves = text_serves,
	.start = text_start,
	.done = text_done,
	.abort = NULL
};

/* Did an attempt of the job reach the network? */
bool
igny8_job_sent(Igny8Job *job)
{
	ListCell   *lc;

	/* between two steps of an attempt, its first one was sent */
	if (job->transfer != NULL || job->state == JOB_POLL_WAIT)
		return true;
	foreach(lc, job->attempts)
	{
		if (((Igny8Attempt *) lfirst(lc))->sent)
			return true;
	}
	return false;
}

/*
 * Stop a job now: its caller left, or the worker is stopping.  A transfer
 * in flight is aborted (which closes its connection) and logged with why,
 * unless the task's abort takes it over (an image's POST /prompt, image.c);
 * a place held or awaited is given up.
 */
void
igny8_job_abort(Igny8Job *job, const char *why)
{
	MemoryContext old = MemoryContextSwitchTo(job->cxt);

	const Igny8TaskOps *ops = task_ops(job->task);

	if (job->transfer && ops->routed)
	{
		TimestampTz now = GetCurrentTimestamp();
		Igny8Attempt *a;

		gpu_stop(job, now);		/* at the time its duration ends */
		a = igny8_job_add_attempt(job, job->cands[job->cand]);
		a->at = job->attempt_start;
		a->sent = true;
		a->duration_ms = (double) (now - job->attempt_start) / 1000.0;
		a->error = pstrdup(why);
	}
	else if (job->transfer == NULL && job->state == JOB_POLL_WAIT)
	{
		/* between two steps of an attempt: it ends here too */
		Igny8Attempt *a = igny8_job_end_attempt(job, NULL, GetCurrentTimestamp());

		a->error = pstrdup(why);
	}
	if (ops->abort)
		ops->abort(job);
	if (job->transfer)
	{
		igny8_http_free(job->transfer);
		job->transfer = NULL;
	}
	igny8_job_end_trial(job);
	leave_queue(job);
	igny8_job_release_place(job);
	if (job->state != JOB_FINISHED)
		igny8_job_finish_error(job, ERRCODE_OPERATOR_INTERVENTION,
							   psprintf("AI request for model alias \"%s\" was interrupted",
										job->alias),
							   attempts_detail(job),
							   final_hint(job, "Retry the call."));
	MemoryContextSwitchTo(old);
}

/* Forget a job: its memory, its configuration reference, its count. */
static void
forget(Igny8Job *job)
{
	ListCell   *lc;

	igny8_job_end_trial(job);
	/* reservations whose rows were never committed are given back */
	if (job->has_account)
	{
		igny8_budget_settle(job->account_id, job->budget_reserved,
							job->budget_made, NULL);
		foreach(lc, job->attempts)
		{
			Igny8Attempt *a = lfirst(lc);

			igny8_budget_settle(job->account_id, a->budget_reserved,
								a->budget_made, NULL);
			a->budget_reserved = 0;
		}
	}
	dlist_delete(&job->node);
	igny8_job_unlist_ended(job);
	igny8_job_unlist_advance(job);
	igny8_job_counts.in_state[job->state]--;
	if (job->job_id != 0)
		igny8_job_counts.submitted--;
	foreach(lc, job->attempts)
	{
		if (!((Igny8Attempt *) lfirst(lc))->logged)
			igny8_job_counts.unlogged--;
	}
	if (job->gpu_clock >= 0)
		gpu_stop(job, GetCurrentTimestamp());
	if (job->task == IGNY8_TASK_IMAGE)
		igny8_image_forget(job);
	pg_atomic_fetch_sub_u32(&igny8_shared->workers[igny8_worker_index].in_flight, 1);
	if (job->config)
		igny8_config_release(job->config);
	MemoryContextDelete(job->cxt);
}

/*
 * Put the request of a job that sent nothing back into this worker's queue
 * (the worker is stopping: whoever serves the queue next runs it from the
 * start), and forget the job.
 */
void
igny8_job_requeue(Igny8Job *job)
{
	Igny8Slot  *slot = &igny8_slots[job->slotno];
	bool		gone;

	leave_queue(job);
	igny8_job_release_place(job);
	SpinLockAcquire(&slot->mutex);
	gone = (slot->state == IGNY8_SLOT_ABANDONED);
	if (!gone)
	{
		slot->state = IGNY8_SLOT_QUEUED;
		slot->claimed = false;
	}
	SpinLockRelease(&slot->mutex);
	if (gone)
		igny8_slot_release(job->slotno);
	else if (!igny8_queue_push(igny8_worker_index, job->slotno))
		elog(LOG, "igny8_ai worker queue %d is full", igny8_worker_index);
	forget(job);
}

/* Copy a UTF-8 label into a fixed buffer, in the database encoding. */
static void
copy_label(char *dst, const char *src, int size)
{
	char	   *db = igny8_to_db_lossy(src ? src : "");
	int			len = pg_mbcliplen(db, strlen(db), size - 1);

	memcpy(dst, db, len);
	dst[len] = '\0';
}

static char *
db_or_null(const char *utf8)
{
	return utf8 ? igny8_to_db_lossy(utf8) : NULL;
}

/* Hand a finished job's outcome to its caller, then forget the job. */
void
igny8_job_publish(Igny8Job *job)
{
	Igny8Slot  *slot = &igny8_slots[job->slotno];
	dsa_area   *area = igny8_dsa();
	dsa_pointer result = InvalidDsaPointer;
	bool		gone;
	int			procno;
	double		duration_ms;
	const char *cost;
	XLogRecPtr	flush_lsn;
	char		provider[IGNY8_NAME_LEN] = "";
	char		model_used[IGNY8_MODEL_LEN] = "";
	char		finish_reason[32] = "";
	MemoryContext old;

	/* a submitted job's outcome is in its row (jobtable.c) */
	if (job->job_id != 0)
	{
		igny8_jobs_published(job);
		pg_atomic_fetch_add_u64(&igny8_shared->workers[igny8_worker_index].served, 1);
		forget(job);
		return;
	}

	old = MemoryContextSwitchTo(job->cxt);
	if (!job->abandoned)
	{
		if (job->success && job->task == IGNY8_TASK_HEALTH)
		{
			const char *strs[2] = {db_or_null(job->probe_result.detail_json),
			db_or_null(job->probe_result.summary)};

			result = igny8_pack_strings(area, 2, strs);
			copy_label(provider, job->probe->id, IGNY8_NAME_LEN);
		}
		else if (job->success && job->task == IGNY8_TASK_IMAGE)
		{
			const char *strs[1] = {db_or_null(job->revised_prompt)};

			result = igny8_pack_blob(area, job->image, job->image_len, 1, strs);
			copy_label(provider, job->used->provider->id, IGNY8_NAME_LEN);
			copy_label(model_used, job->used->model, IGNY8_MODEL_LEN);
		}
		else if (job->success)
		{
			/* content and thinking are in the database encoding already */
			const char *strs[2] = {job->result.content, job->result.thinking};

			result = igny8_pack_strings(area, 2, strs);
			copy_label(provider, job->used->provider->id, IGNY8_NAME_LEN);
			copy_label(model_used,
					   job->result.model ? job->result.model : job->used->model,
					   IGNY8_MODEL_LEN);
			copy_label(finish_reason, job->result.finish_reason,
					   sizeof(finish_reason));
		}
		else
		{
			const char *strs[3] = {db_or_null(job->errmsg),
				db_or_null(job->errdetail),
			db_or_null(job->errhint)};

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

			if (job->success && job->task == IGNY8_TASK_IMAGE)
				strs[1] = psprintf("The image (%zu bytes) was made, and its attempt is in ai_usage_log.",
								   job->image_len);

			job->success = false;
			job->sqlerrcode = ERRCODE_OUT_OF_MEMORY;
			result = igny8_pack_strings(area, 3, strs);
		}
	}
	duration_ms = (double) (GetCurrentTimestamp() - job->started) / 1000.0;
	cost = igny8_job_cost(job);
	if (strlen(cost) >= IGNY8_COST_LEN)
		cost = "NaN";			/* cannot happen: 57 digits of dollars */

	/* read before the slot's spinlock: it takes the WAL's */
	flush_lsn = igny8_usage_unflushed_lsn();

	SpinLockAcquire(&slot->mutex);
	gone = (slot->state == IGNY8_SLOT_ABANDONED);
	procno = slot->caller_procno;
	if (!gone)
	{
		slot->result = result;
		slot->success = job->success;
		slot->sqlerrcode = job->sqlerrcode;
		slot->attempts = list_length(job->attempts);
		slot->duration_ms = duration_ms;
		slot->input_tokens = job->success ? job->result.input_tokens : 0;
		slot->output_tokens = job->success ? job->result.output_tokens : 0;
		strlcpy(slot->cost, cost, IGNY8_COST_LEN);
		memcpy(slot->provider, provider, IGNY8_NAME_LEN);
		memcpy(slot->model_used, model_used, IGNY8_MODEL_LEN);
		memcpy(slot->finish_reason, finish_reason, sizeof(finish_reason));
		slot->image_width = job->success ? job->image_width : 0;
		slot->image_height = job->success ? job->image_height : 0;
		slot->cached = job->success && job->cache_hit;
		slot->flush_lsn = flush_lsn;
		/* a probe that ran: the state it left, for the caller's row */
		if (job->task == IGNY8_TASK_HEALTH && job->probe_code != NULL)
		{
			slot->http_status = job->probe_status;
			slot->healthy = job->probe_result.healthy;
			slot->health_prev = job->probe_change.from;
			slot->health_state = job->probe_change.to;
			slot->consecutive_failures = job->probe_change.consecutive_failures;
			strlcpy(slot->health_code, job->probe_code ? job->probe_code : "",
					sizeof(slot->health_code));
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

	MemoryContextSwitchTo(old);
	pg_atomic_fetch_add_u64(&igny8_shared->workers[igny8_worker_index].served, 1);
	forget(job);
}
