/*-------------------------------------------------------------------------
 *
 * jobtable.c
 *	  The worker's side of submitted jobs (igny8_jobs): taking queued jobs,
 *	  writing their outcome, and taking back the jobs of workers that are
 *	  gone.
 *
 * Taking: a short transaction locks the oldest due jobs (interactive
 * first) with FOR UPDATE SKIP LOCKED, keeps those whose account is under
 * igny8_ai.max_running_jobs_per_account, as many as the running rows of
 * all workers leave room for under igny8_ai.max_running_jobs (no more than
 * this worker's share of it), and marks them running with this
 * worker's index and start time; each gets a request slot as a
 * synchronous call does (job_id set, no caller), so that it runs in the
 * same curl loop, waits for the same provider places (behind synchronous
 * calls, places.c) and is cancelled the same way.  Nothing is sent before
 * that transaction commits, and no transaction is open while it runs.
 *
 * Writing: the outcome of a finished run goes into its row in the
 * transaction that writes its usage rows (usage.c), with NOTIFY
 * igny8_ai_jobs; the backends waiting in igny8_wait_job are woken after
 * the commit.  Each outcome is written in a subtransaction: one that the
 * row refuses (a constraint, a trigger a DBA put on igny8_jobs) ends its
 * job failed with that error, and the rest of the transaction stands.
 *
 * When: a commit that queued jobs bumps the jobs generation and wakes the
 * workers (extension.c); a worker that filled its share, or left jobs of
 * an account at its limit, looks again when one of its runs ends; one
 * that left jobs for igny8_ai.max_running_jobs, when any worker's run
 * ends (that worker wakes them all: runs_freed); the earliest not_before
 * of the queue is a timer.  A scan (recovery, cancels
 * and a claim) runs at a worker's start, when a worker exits (its runs are
 * to be taken back), after a COMMIT PREPARED (a cancel in it has no event
 * of its own) and after a write of outcomes failed.  Besides, a periodic
 * scan is the backstop for what announces itself in no way: rows queued by
 * an UPDATE or by an insert that fired no trigger (session_replication_role
 * replica), a claim that failed, a wake-up lost to a bug.  It comes every
 * IGNY8_JOB_SCAN_MS while the worker has runs or jobs left waiting, and
 * backs off (doubling) to IGNY8_JOB_SCAN_IDLE_MS once it has none: an idle
 * worker sleeps a minute at a time.
 *
 * Sent attempts: before an attempt of a job is sent, its row records it
 * (inflight: attempt, provider, model, when) in a committed transaction,
 * the one that writes the usage rows at the end of the loop iteration
 * (JOB_INTENT until then); the transaction that writes the attempt's
 * usage row clears it.  So a worker that dies with requests in flight
 * leaves, in their rows, what recovery needs to write their usage rows:
 * the usage log counts every request a provider may have received.
 *
 * Recovery: a running row names the worker (index and start time) that
 * runs it.  The scan takes back rows whose worker is not running with that
 * start time (it exited, or the server restarted), and rows of this
 * worker that it no longer holds (their outcome could not be written):
 * queued again, or failed as interrupted once max_attempts runs were
 * made, or cancelled if a cancel came meanwhile.  Delivery is therefore at
 * least once: a run interrupted after it sent its request is sent again,
 * and both runs' attempts are in ai_usage_log.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "redact.h"
#include "worker.h"

/* how often a worker with runs scans igny8_jobs whatever it was told */
#define IGNY8_JOB_SCAN_MS		5000
/*
 * ... and an idle one, after backing off (as often as worker.c's
 * IGNY8_IDLE_WAIT_MS wakes it anyway).  What only this scan finds (rows
 * queued by an UPDATE, or inserted with triggers off) waits that long on
 * an idle server, where it waited IGNY8_JOB_SCAN_MS before the backoff.
 */
#define IGNY8_JOB_SCAN_IDLE_MS	60000
/* the advisory lock that serializes claims: ("ign8", 1) */
#define IGNY8_CLAIM_LOCK_KEY1	1768386104
#define IGNY8_CLAIM_LOCK_KEY2	1

static uint64 seen_generation = 0;
static bool look_again = false;		/* jobs may be waiting for a place here */
static bool run_ended = false;		/* a run ended since the last look */
static bool cancel_seen = false;	/* a slot says a job was cancelled */
static TimestampTz last_scan = 0;
static TimestampTz next_scan = 0;
static int	scan_interval = IGNY8_JOB_SCAN_MS;	/* the last one set */
static uint64 seen_scan_requests = 0;
static TimestampTz next_not_before = 0;	/* 0: none known */
static int	running_here = 0;		/* runs this worker holds */
static bool stopping = false;		/* record no more attempts as sent */

static List *woken = NIL;			/* ids whose waiters to wake */

static void runs_freed(void);

/*
 * The worker's statements on igny8_jobs, prepared once for its life (for
 * the extension's schema they were made with; after an error, again).
 */
typedef enum JobPlan
{
	PLAN_RECOVER,
	PLAN_CANCELLED,
	PLAN_CANCEL_QUEUED,
	PLAN_LOCK,
	PLAN_COUNTS,
	PLAN_CANDIDATES,
	PLAN_CLAIM,
	PLAN_EARLIEST,
	PLAN_FINISH,
	PLAN_FORGET_CANCEL,
	PLAN_INFLIGHT,
	NPLANS
} JobPlan;

static SPIPlanPtr plans[NPLANS];
static Igny8PlanSet job_plans = {plans, NPLANS, NULL};

/* Statement which, prepared for the extension in schema (igny8_plan_get). */
static SPIPlanPtr
job_plan(JobPlan which, const char *schema, const char *fmt, int nargs,
		 Oid *types)
{
	return igny8_plan_get(&job_plans, which, schema, fmt, nargs, types,
						  "a statement on igny8_jobs");
}

/* The jobs that run at once, server-wide: igny8_ai.max_running_jobs. */
static int
running_cap(void)
{
	return Max(Min(igny8_max_running_jobs, igny8_shared->nslots / 2), 1);
}

/*
 * The most this worker runs: its share of running_cap(), so that one
 * worker does not take every job.  The cap itself is counted by claim().
 */
static int
my_share(void)
{
	int			n = igny8_shared->nworkers;

	return Max((running_cap() + n - 1) / n, 1);
}

bool
igny8_jobs_due(TimestampTz now)
{
	if (pg_atomic_read_u64(&igny8_shared->jobs_generation) != seen_generation)
		return true;
	if (pg_atomic_read_u64(&igny8_shared->jobs_scan_requests) != seen_scan_requests)
		return true;
	if (cancel_seen || now >= next_scan)
		return true;
	if (running_here >= my_share())
		return false;
	return (look_again && run_ended) ||
		(next_not_before != 0 && now >= next_not_before);
}

/* When igny8_jobs_due becomes true by itself. */
TimestampTz
igny8_jobs_next_due(void)
{
	if (next_not_before != 0 && running_here < my_share())
		return Min(next_scan, next_not_before);
	return next_scan;
}

/* A slot of a running job says it was cancelled: look at the rows. */
void
igny8_jobs_cancel_seen(void)
{
	cancel_seen = true;
}

static Igny8WorkerShared *
me(void)
{
	return &igny8_shared->workers[igny8_worker_index];
}

/* ----- recovery and cancels ----- */

/* NOTIFY igny8_ai_jobs for a job that reached state. */
static void
notify_job(int64 id, const char *state)
{
	Async_Notify("igny8_ai_jobs",
				 psprintf("{\"id\": " INT64_FORMAT ", \"state\": \"%s\"}",
						  id, state));
}

static void
remember_woken(int64 id)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	int64	   *p = palloc(sizeof(int64));

	*p = id;
	woken = lappend(woken, p);
	MemoryContextSwitchTo(old);
}

/* n uuids as a uuid[] datum. */
static Datum
uuid_array(Datum *elems, int n)
{
	return PointerGetDatum(construct_array(elems, n, UUIDOID, UUID_LEN,
										   false, TYPALIGN_CHAR));
}

/* n bigints as a bigint[] datum. */
static Datum
bigint_array(Datum *elems, int n)
{
	return PointerGetDatum(construct_array(elems, n, INT8OID, sizeof(int64),
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * The request ids of the runs this worker holds, as a uuid[] datum.  A run
 * is named by its request id, made at its claim, not by its job's id: the
 * same id may name another job by then (DROP and CREATE EXTENSION, or
 * TRUNCATE ... RESTART IDENTITY, while a run was in flight).
 */
static Datum
held_runs(void)
{
	dlist_iter	iter;
	Datum	   *rids = palloc(sizeof(Datum) * (running_here + 1));
	int			n = 0;

	dlist_foreach(iter, &igny8_jobs)
	{
		Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);

		if (job->job_id != 0 && !job->job_lost)
			rids[n++] = UUIDPGetDatum(&job->request_id);
	}
	return uuid_array(rids, n);
}

/*
 * The parameters that name this worker's runs: $1 its index, $2 its start
 * time, $3 the request ids of the runs it holds.
 */
static void
my_runs(Oid *types, Datum *values)
{
	types[0] = INT4OID;
	types[1] = TIMESTAMPTZOID;
	types[2] = UUIDARRAYOID;
	values[0] = Int32GetDatum(igny8_worker_index);
	values[1] = TimestampTzGetDatum(igny8_worker_started_at);
	values[2] = held_runs();
}

/*
 * Take back running rows whose worker is gone, and rows of ours we do not
 * hold.  Needs a transaction.  A run that sent nothing does not count as a
 * run; the attempt a row records as in flight gets its usage row.
 * Returns the rows queued again; *finished, if not NULL, is set to the
 * rows it ended (failed, cancelled).
 */
static int
recover(const char *schema, int *finished)
{
	Oid			types[4];
	Datum		values[4];
	int			ret;
	int			requeued = 0;
	int			ended = 0;

	my_runs(types, values);
	types[3] = BOOLOID;
	values[3] = BoolGetDatum(igny8_log_content);

	/* a cancel committed (igny8_job_cancels; the flag: a queued one's) */
#define CANCELLED "(j.cancel_requested OR c.job_id IS NOT NULL)"
	ret = SPI_execute_plan(job_plan(PLAN_RECOVER, schema,
		"WITH r AS (UPDATE %s.igny8_jobs j SET"
		" attempts = j.attempts OPERATOR(pg_catalog.-) (NOT j.sent)::pg_catalog.int4,"
		" state = CASE WHEN " CANCELLED " THEN 'cancelled'"
		"  WHEN j.sent AND j.attempts OPERATOR(pg_catalog.>=) j.max_attempts THEN 'failed'"
		"  ELSE 'queued' END,"
		" cancel_requested = " CANCELLED ","
		" finished_at = CASE WHEN " CANCELLED
		"  OR (j.sent AND j.attempts OPERATOR(pg_catalog.>=) j.max_attempts)"
		"  THEN pg_catalog.now() END,"
		" error_code = CASE WHEN " CANCELLED " THEN '57014'"
		"  WHEN j.sent AND j.attempts OPERATOR(pg_catalog.>=) j.max_attempts THEN '57000' END,"
		" error_message = CASE WHEN " CANCELLED " THEN 'cancelled by igny8_cancel_job'"
		"  WHEN j.sent AND j.attempts OPERATOR(pg_catalog.>=) j.max_attempts THEN"
		"  pg_catalog.format('interrupted: the igny8_ai worker running the job stopped during run %%s of %%s', j.attempts, j.max_attempts) END,"
		" error_detail = CASE WHEN NOT " CANCELLED " AND j.sent"
		"  AND j.attempts OPERATOR(pg_catalog.>=) j.max_attempts THEN"
		"  pg_catalog.format('The attempts of its last run are in ai_usage_log with request_id %%s.', j.request_id) END,"
		" worker = NULL, worker_started = NULL, inflight = NULL, sent = false"
		" FROM %s.igny8_jobs o LEFT JOIN %s.igny8_job_cancels c"
		"  ON c.job_id OPERATOR(pg_catalog.=) o.id"
		" WHERE o.id OPERATOR(pg_catalog.=) j.id"
		" AND j.state OPERATOR(pg_catalog.=) 'running' AND"
		" CASE WHEN j.worker OPERATOR(pg_catalog.=) $1 AND j.worker_started OPERATOR(pg_catalog.=) $2"
		"  THEN j.request_id OPERATOR(pg_catalog.<>) ALL ($3)"
		"  ELSE NOT COALESCE(%s.igny8_worker_alive(j.worker, j.worker_started), false) END"
		" RETURNING j.id, j.state, j.kind, j.model_alias, j.account_id, j.request_id,"
		" j.request, o.inflight),"
		/* the attempt that was in flight: it may have reached its provider */
		" u AS (INSERT INTO %s.ai_usage_log (request_id, created_at, account_id,"
		"  provider, task_type, model_alias, model_used, success, error_message,"
		"  attempt, images, prompt, api_key_ref)"
		"  SELECT r.request_id, (r.inflight OPERATOR(pg_catalog.->>) 'at')::pg_catalog.timestamptz,"
		"  r.account_id, r.inflight OPERATOR(pg_catalog.->>) 'provider', r.kind, r.model_alias,"
		"  r.inflight OPERATOR(pg_catalog.->>) 'model', false,"
		"  'interrupted: the igny8_ai worker running the job stopped while the request was in flight',"
		"  (r.inflight OPERATOR(pg_catalog.->>) 'attempt')::pg_catalog.int4,"
		"  CASE WHEN r.kind OPERATOR(pg_catalog.=) 'image' THEN 0 END,"
		"  CASE WHEN $4 THEN r.request::pg_catalog.text END,"
		"  r.inflight OPERATOR(pg_catalog.->>) 'api_key_ref'"
		"  FROM r WHERE r.inflight IS NOT NULL),"
		/* a cancel is done with once the job is */
		" d AS (DELETE FROM %s.igny8_job_cancels x USING r"
		"  WHERE x.job_id OPERATOR(pg_catalog.=) r.id)"
		" SELECT r.id, r.state FROM r",
		4, types), values, NULL, false, 0);
#undef CANCELLED
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not recover igny8_jobs: %s",
			 SPI_result_code_string(ret));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1,
													 &isnull));
		char	   *state = SPI_getvalue(SPI_tuptable->vals[i],
										 SPI_tuptable->tupdesc, 2);

		if (strcmp(state, "queued") != 0)
		{
			notify_job(id, state);
			remember_woken(id);
			ended++;
		}
		else
		{
			look_again = run_ended = true;
			requeued++;
		}
	}
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("igny8_ai worker %d took back %llu jobs whose worker stopped",
						igny8_worker_index, (unsigned long long) SPI_processed)));
	if (finished)
		*finished = ended;
	return requeued;
}

/*
 * Cancel the queued jobs that have a cancel (igny8_job_cancels), and let
 * go of those.  A cancel of a running job can commit while a scan takes
 * the run back (its snapshot did not see the cancel): the job is queued
 * again with its cancel pending, and must not run.  Needs a transaction.
 * Returns the jobs cancelled.
 */
static int
cancel_queued(const char *schema)
{
	int			ret;

	ret = SPI_execute_plan(job_plan(PLAN_CANCEL_QUEUED, schema,
		"WITH q AS (SELECT j.id FROM %s.igny8_jobs j JOIN %s.igny8_job_cancels c"
		"  ON c.job_id OPERATOR(pg_catalog.=) j.id"
		"  WHERE j.state OPERATOR(pg_catalog.=) 'queued'"
		"  FOR UPDATE OF j SKIP LOCKED),"
		" u AS (UPDATE %s.igny8_jobs j SET state = 'cancelled',"
		"  cancel_requested = true, finished_at = pg_catalog.now(),"
		"  error_code = '57014', error_message = 'cancelled by igny8_cancel_job'"
		"  FROM q WHERE j.id OPERATOR(pg_catalog.=) q.id RETURNING j.id),"
		" d AS (DELETE FROM %s.igny8_job_cancels x USING u"
		"  WHERE x.job_id OPERATOR(pg_catalog.=) u.id)"
		" SELECT u.id FROM u",
		0, NULL), NULL, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not cancel igny8_jobs: %s", SPI_result_code_string(ret));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1,
													 &isnull));

		notify_job(id, "cancelled");
		remember_woken(id);
	}
	return (int) SPI_processed;
}

/*
 * The runs of ours whose cancel committed, as the request ids (pg_uuid_t)
 * of the runs.  Needs a transaction.
 */
static List *
cancelled_runs(const char *schema, MemoryContext cxt)
{
	Oid			types[3];
	Datum		values[3];
	List	   *rids = NIL;
	int			ret;

	my_runs(types, values);
	ret = SPI_execute_plan(job_plan(PLAN_CANCELLED, schema,
		"SELECT j.request_id FROM %s.igny8_jobs j JOIN %s.igny8_job_cancels c"
		" ON c.job_id OPERATOR(pg_catalog.=) j.id"
		" WHERE j.state OPERATOR(pg_catalog.=) 'running'"
		" AND j.worker OPERATOR(pg_catalog.=) $1"
		" AND j.worker_started OPERATOR(pg_catalog.=) $2"
		" AND j.request_id OPERATOR(pg_catalog.=) ANY ($3)",
		3, types), values, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_jobs: %s", SPI_result_code_string(ret));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(cxt);
		pg_uuid_t  *rid = palloc(sizeof(pg_uuid_t));

		*rid = *DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i],
											SPI_tuptable->tupdesc, 1, &isnull));
		rids = lappend(rids, rid);
		MemoryContextSwitchTo(old);
	}
	return rids;
}

static void
stop_cancelled(List *rids)
{
	dlist_iter	iter;
	ListCell   *lc;

	foreach(lc, rids)
	{
		pg_uuid_t  *rid = lfirst(lc);

		dlist_foreach(iter, &igny8_jobs)
		{
			Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);

			/*
			 * A run that finished before its cancel was seen keeps its
			 * outcome: its row, still running while the flush that
			 * writes it is deferred, is written succeeded or failed, and
			 * the cancel's row is left to igny8_jobs_cleanup().  (A run
			 * whose write failed is job_lost, not among rids: the scan
			 * takes its row back, as cancelled.)
			 */
			if (job->job_id != 0 &&
				memcmp(&job->request_id, rid, sizeof(pg_uuid_t)) == 0 &&
				!job->job_cancelled && job->state != JOB_FINISHED)
			{
				job->job_cancelled = true;
				igny8_job_abort(job, "cancelled by igny8_cancel_job");
			}
		}
	}
	list_free_deep(rids);
}

/* ----- taking jobs ----- */

/* A claimed row, until its slot is filled. */
typedef struct Claimed
{
	int64		id;
	Igny8Task	task;
	char	   *alias;
	char	   *request;		/* UTF-8 */
	bool		has_account;
	int64		account_id;
	int			timeout_ms;
	pg_uuid_t	request_id;
} Claimed;

typedef struct AccountCount
{
	bool		has_account;
	int64		account_id;
	int			running;
} AccountCount;

static AccountCount *
account_entry(AccountCount *counts, int *n, bool has_account, int64 account_id)
{
	for (int i = 0; i < *n; i++)
		if (counts[i].has_account == has_account &&
			(!has_account || counts[i].account_id == account_id))
			return &counts[i];
	counts[*n].has_account = has_account;
	counts[*n].account_id = account_id;
	counts[*n].running = 0;
	return &counts[(*n)++];
}

static Igny8Task
task_of(const char *kind)
{
	if (strcmp(kind, "chat") == 0)
		return IGNY8_TASK_CHAT;
	if (strcmp(kind, "image") == 0)
		return IGNY8_TASK_IMAGE;
	return IGNY8_TASK_TEXT;
}

/* The claim lock, if no other worker holds it.  Needs a transaction. */
static bool
claim_lock(const char *schema)
{
	bool		isnull;
	int			ret;

	ret = SPI_execute_plan(job_plan(PLAN_LOCK, schema,
									"SELECT pg_catalog.pg_try_advisory_xact_lock("
									CppAsString2(IGNY8_CLAIM_LOCK_KEY1) ", "
									CppAsString2(IGNY8_CLAIM_LOCK_KEY2) ")",
									0, NULL), NULL, NULL, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not lock the claims: %s", SPI_result_code_string(ret));
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Lock up to want due jobs, keep those under their account's limit, as
 * many as igny8_ai.max_running_jobs leaves room for (*capped: it left due
 * jobs for want of room) and those it gets a request slot for (slots[],
 * *ntaken of them), and mark them ours.  Needs a transaction.  Returns
 * the rows taken (*nclaimed of them, in the first slots), or NULL if
 * another worker is claiming.  Adds to *ended the queued jobs it
 * cancelled (cancel_queued).
 */
static Claimed *
claim(const char *schema, int want, int *slots, volatile int *ntaken, int *nclaimed,
	  bool *locked, bool *capped, int *ended, MemoryContext cxt)
{
	AccountCount *counts;
	int			ncounts = 0;
	int			room;
	Datum	   *capped_accounts;
	int			ncapped = 0;
	bool		null_capped = false;
	Datum	   *ids;
	int			nids = 0;
	uint64		fetched;
	Oid			types[4];
	Datum		values[4];
	Datum	   *rids;
	Claimed    *out;
	int			ret;

	/*
	 * One claim at a time, server-wide, so that each sees the others'
	 * claims in its counts.  A worker that finds the lock taken does not
	 * wait: it asks the one claiming to wake it once done (and tries once
	 * more, in case that one was done before it asked).
	 */
	if (!claim_lock(schema))
	{
		pg_atomic_write_u32(&igny8_shared->jobs_claim_missed, 1);
		if (!claim_lock(schema))
			return NULL;
	}
	*locked = true;

	/*
	 * The accounts' running jobs, server-wide: those at their limit wait;
	 * and their sum, which igny8_ai.max_running_jobs bounds.  (Not
	 * read-only: it takes a snapshot of its own, taken after the lock,
	 * which sees the claim that held it.)
	 */
	ret = SPI_execute_plan(job_plan(PLAN_COUNTS, schema,
		"SELECT j.account_id, pg_catalog.count(*)::integer"
		" FROM %s.igny8_jobs j"
		" WHERE j.state OPERATOR(pg_catalog.=) 'running'"
		" GROUP BY j.account_id", 0, NULL), NULL, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_jobs: %s", SPI_result_code_string(ret));
	counts = palloc(sizeof(AccountCount) * (SPI_processed + want + 1));
	capped_accounts = palloc(sizeof(Datum) * (SPI_processed + 1));
	room = running_cap();
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		null_account;
		bool		isnull;
		int64		account = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														  SPI_tuptable->tupdesc,
														  1, &null_account));
		AccountCount *c = account_entry(counts, &ncounts, !null_account,
										account);

		c->running = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
												 SPI_tuptable->tupdesc, 2,
												 &isnull));
		room -= c->running;
		if (c->running < igny8_max_account_jobs)
			continue;
		if (null_account)
			null_capped = true;
		else
			capped_accounts[ncapped++] = Int64GetDatum(account);
	}

	types[0] = INT4OID;
	values[0] = Int32GetDatum(want);
	types[1] = BOOLOID;
	values[1] = BoolGetDatum(null_capped);
	types[2] = INT8ARRAYOID;
	values[2] = bigint_array(capped_accounts, ncapped);
	ret = SPI_execute_plan(job_plan(PLAN_CANDIDATES, schema,
		"SELECT j.id, j.account_id FROM %s.igny8_jobs j"
		" WHERE j.state OPERATOR(pg_catalog.=) 'queued'"
		" AND j.not_before OPERATOR(pg_catalog.<=) pg_catalog.now()"
		" AND CASE WHEN j.account_id IS NULL THEN NOT $2"
		"  ELSE j.account_id OPERATOR(pg_catalog.<>) ALL ($3) END"
		" ORDER BY (j.priority OPERATOR(pg_catalog.<>) 'interactive'), j.id"
		" LIMIT $1 FOR UPDATE SKIP LOCKED",
		3, types), values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_jobs: %s", SPI_result_code_string(ret));
	fetched = SPI_processed;
	ids = palloc(sizeof(Datum) * (fetched + 1));
	for (uint64 i = 0; i < fetched; i++)
	{
		bool		null_account;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1,
													 &isnull));
		int64		account = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														  SPI_tuptable->tupdesc,
														  2, &null_account));
		AccountCount *c = account_entry(counts, &ncounts, !null_account,
										account);

		/* an account this batch brings to its limit: the rest stays queued */
		if (c->running >= igny8_max_account_jobs)
			continue;
		/* the server runs igny8_ai.max_running_jobs: the rest stays queued */
		if (nids >= room)
		{
			*capped = true;
			break;
		}
		c->running++;
		ids[nids++] = Int64GetDatum(id);
	}

	/*
	 * More may be due (the batch was full, accounts at their limit or the
	 * server at its cap left jobs queued): look again when a run of ours
	 * ends; if the cap left them, when any worker's run ends (runs_freed).
	 */
	look_again = (fetched == (uint64) want || (uint64) nids < fetched ||
				  ncapped > 0 || null_capped);

	/*
	 * A request slot for each, taken now (synchronous calls may hold the
	 * others): the rest stays queued.  The caller gives back those not used.
	 */
	while (*ntaken < nids && (slots[*ntaken] = igny8_slot_take()) >= 0)
		(*ntaken)++;
	if (*ntaken < nids)
	{
		nids = *ntaken;
		look_again = true;
	}

	*nclaimed = 0;
	out = MemoryContextAlloc(cxt, sizeof(Claimed) * (nids + 1));
	if (nids == 0)
		return out;

	/* each run's request id: a version 7 UUID, as for synchronous calls */
	rids = palloc(sizeof(Datum) * nids);
	for (int i = 0; i < nids; i++)
	{
		pg_uuid_t  *rid = palloc(sizeof(pg_uuid_t));

		igny8_new_request_id(rid);
		rids[i] = UUIDPGetDatum(rid);
	}
	types[0] = INT8ARRAYOID;
	types[1] = INT4OID;
	types[2] = TIMESTAMPTZOID;
	types[3] = UUIDARRAYOID;
	values[0] = bigint_array(ids, nids);
	values[1] = Int32GetDatum(igny8_worker_index);
	values[2] = TimestampTzGetDatum(igny8_worker_started_at);
	values[3] = uuid_array(rids, nids);
	ret = SPI_execute_plan(job_plan(PLAN_CLAIM, schema,
		"UPDATE %s.igny8_jobs j SET state = 'running',"
		" attempts = j.attempts OPERATOR(pg_catalog.+) 1,"
		" started_at = pg_catalog.now(), worker = $2, worker_started = $3,"
		" request_id = u.rid, sent = false"
		" FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($4)) AS u(id, rid)"
		" WHERE j.id OPERATOR(pg_catalog.=) u.id"
		/* not one whose cancel committed after a scan queued it again */
		" AND NOT EXISTS (SELECT FROM %s.igny8_job_cancels c"
		"  WHERE c.job_id OPERATOR(pg_catalog.=) j.id)"
		" RETURNING j.id, j.kind, j.model_alias, j.request::text, j.account_id,"
		" j.timeout_ms, j.request_id",
		4, types), values, NULL, false, 0);
	if (ret != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not claim igny8_jobs: %s", SPI_result_code_string(ret));

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Claimed    *c = &out[(*nclaimed)++];
		bool		isnull;
		char	   *request = SPI_getvalue(tup, desc, 4);

		c->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		c->task = task_of(SPI_getvalue(tup, desc, 2));
		c->alias = MemoryContextStrdup(cxt, SPI_getvalue(tup, desc, 3));
		c->request = MemoryContextStrdup(cxt, pg_server_to_any(request,
															   strlen(request),
															   PG_UTF8));
		c->account_id = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
		c->has_account = !isnull;
		c->timeout_ms = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		c->request_id = *DatumGetUUIDP(SPI_getbinval(tup, desc, 7, &isnull));
	}

	/*
	 * A job left out was queued with a pending cancel: cancelled now, or
	 * every claim would take it first and leave it again.
	 */
	if (*nclaimed < nids)
		*ended += cancel_queued(schema);
	return out;
}

/*
 * The earliest not_before of the jobs not due yet, or 0.  Needs a
 * transaction.
 */
static TimestampTz
earliest_not_before(const char *schema)
{
	bool		isnull;
	Datum		d;
	int			ret;

	ret = SPI_execute_plan(job_plan(PLAN_EARLIEST, schema,
		"SELECT pg_catalog.min(j.not_before) FROM %s.igny8_jobs j"
		" WHERE j.state OPERATOR(pg_catalog.=) 'queued'"
		" AND j.not_before OPERATOR(pg_catalog.>) pg_catalog.now()",
		0, NULL), NULL, NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read igny8_jobs: %s", SPI_result_code_string(ret));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetTimestampTz(d);
}

/* Fill a slot taken for a claimed row: a running request of ours. */
static void
fill_slot(int slotno, Claimed *c, TimestampTz now)
{
	Igny8Slot  *slot = &igny8_slots[slotno];

	slot->task = c->task;
	slot->request_id = c->request_id;
	strlcpy(slot->alias, c->alias, IGNY8_NAME_LEN);
	slot->has_account = c->has_account;
	slot->account_id = c->account_id;
	slot->timeout_ms = c->timeout_ms;
	slot->submitted_at = now;
	slot->deadline = TimestampTzPlusMilliseconds(now, c->timeout_ms);
	slot->caller_procno = -1;
	slot->sent = false;
	slot->success = false;
	slot->sqlerrcode = 0;
	slot->result = InvalidDsaPointer;
	slot->request = igny8_dsa_strdup(igny8_dsa(), c->request,
									 strlen(c->request));
	slot->attempt_since = 0;
	SpinLockAcquire(&slot->mutex);
	slot->job_id = c->id;
	slot->job_cancel = false;
	slot->worker = igny8_worker_index;
	slot->claimed = true;
	slot->state = IGNY8_SLOT_RUNNING;
	SpinLockRelease(&slot->mutex);
}

/* Show when this worker scanned last and scans next (igny8_worker_status). */
static void
publish_scan(void)
{
	pg_atomic_write_u64(&me()->last_job_scan, (uint64) last_scan);
	pg_atomic_write_u64(&me()->next_job_scan, (uint64) next_scan);
}

/*
 * When to scan again, after a look at igny8_jobs at now (a scan if
 * scanned) that took or queued again jobs if active.  A worker with runs,
 * or with jobs it could not take yet (look_again: its share, an account's
 * limit, no request slot), scans every IGNY8_JOB_SCAN_MS as long as that
 * lasts; an idle one doubles the interval at each scan that finds nothing,
 * up to IGNY8_JOB_SCAN_IDLE_MS.  Whatever is event-driven (a commit that
 * queued jobs, a cancel, a not_before, a run that ends, a worker that
 * exits) does not wait for this.
 */
static void
next_scan_after(TimestampTz now, bool scanned, bool active)
{
	bool		busy = active || running_here > 0 || look_again;

	if (scanned)
	{
		last_scan = now;
		scan_interval = busy ? IGNY8_JOB_SCAN_MS :
			Min(scan_interval * 2, IGNY8_JOB_SCAN_IDLE_MS);
		next_scan = TimestampTzPlusMilliseconds(now, scan_interval);
	}
	else if (busy)
	{
		/* work came while the worker backed off: the usual interval again */
		scan_interval = IGNY8_JOB_SCAN_MS;
		next_scan = Min(next_scan, TimestampTzPlusMilliseconds(now, scan_interval));
	}
	publish_scan();
}

/*
 * Look at igny8_jobs if it is time: take back what workers that are gone
 * left, stop what was cancelled, and take due jobs up to this worker's
 * share, then start them.
 */
void
igny8_jobs_take(Igny8Config *config)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		scan;
	bool		cancels;
	int			want;
	int			nclaimed = 0;
	Claimed    *claimed = NULL;
	List	   *cancelled = NIL;
	int		   *slots;
	volatile int nreserved = 0;	/* read in PG_CATCH */
	bool		locked = false;
	bool		capped = false;
	uint64		runs_ended = 0;
	int			requeued = 0;
	int			ended = 0;		/* jobs this transaction ends */
	int			recovered = 0;	/* ... of them, runs taken back */
	uint64		requests;
	MemoryContext cxt = CurrentMemoryContext;

	if (config == NULL || !igny8_jobs_due(now))
		return;
	/* what is read from here on is seen; a later bump is seen next time */
	seen_generation = pg_atomic_read_u64(&igny8_shared->jobs_generation);
	requests = pg_atomic_read_u64(&igny8_shared->jobs_scan_requests);
	pg_memory_barrier();
	scan = (now >= next_scan || requests != seen_scan_requests);
	seen_scan_requests = requests;
	cancels = scan || cancel_seen;
	cancel_seen = false;
	run_ended = false;
	if (scan)
		next_scan = TimestampTzPlusMilliseconds(now, IGNY8_JOB_SCAN_MS);
	want = Max(my_share() - running_here, 0);
	if (want == 0 && !scan && !(cancels && running_here > 0))
	{
		/* full: look again when a run ends */
		look_again = true;
		return;
	}
	slots = palloc(sizeof(int) * (want + 1));

	PG_TRY();
	{
		igny8_worker_begin("igny8_ai: taking jobs");

		/*
		 * Not flushed at commit: nothing is sent before the commit that
		 * records the first attempt, whose flush covers this one too.  A
		 * claim lost in a crash leaves its jobs queued.
		 */
		(void) set_config_option("synchronous_commit", "off", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0,
								 false);
		if (scan)
		{
			requeued = recover(config->schema, &recovered);
			ended = recovered;
			/* what it queued again may have a cancel that came meanwhile */
			ended += cancel_queued(config->schema);
		}
		if (cancels && running_here > 0)
			cancelled = cancelled_runs(config->schema, cxt);
		if (want > 0)
		{
			/* read before the claim counts the running rows (below) */
			runs_ended = pg_atomic_read_u64(&igny8_shared->jobs_runs_ended);
			pg_memory_barrier();
			claimed = claim(config->schema, want, slots, &nreserved,
							&nclaimed, &locked, &capped, &ended, cxt);
			if (claimed != NULL)
				next_not_before = (nclaimed < want) ?
					earliest_not_before(config->schema) : 0;
		}

		/*
		 * ... but an outcome written here (failed, cancelled) is read by
		 * the sessions it wakes and by its NOTIFY's listeners: then the
		 * commit waits for its flush, as the usage flush's do.
		 */
		if (ended > 0)
			(void) set_config_option("synchronous_commit",
									 GetConfigOptionResetString("synchronous_commit"),
									 PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_LOCAL, true, 0, false);

		/*
		 * The slots are filled before the commit: a cancel that commits
		 * after this one finds the run in its slot.
		 */
		for (int i = 0; i < nclaimed; i++)
			fill_slot(slots[i], &claimed[i], now);
		igny8_worker_commit();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		/* the claim is rolled back: every slot goes back */
		for (int i = 0; i < nreserved; i++)
			igny8_slot_release(slots[i]);
		igny8_worker_recover();
		list_free_deep(woken);
		woken = NIL;
		/* tried again by the scan, soon whatever the backoff said */
		next_scan_after(now, false, true);
		/* a worker that found the lock taken must not wait for the scan */
		if (pg_atomic_exchange_u32(&igny8_shared->jobs_claim_missed, 0))
			igny8_jobs_announce();
		return;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	for (int i = nclaimed; i < nreserved; i++)
		igny8_slot_release(slots[i]);
	/*
	 * A worker found the lock taken while we claimed: it looks now.  So do
	 * the others when the recovery queued jobs again, which this worker may
	 * have no room for.
	 */
	if ((locked && pg_atomic_exchange_u32(&igny8_shared->jobs_claim_missed, 0)) ||
		requeued > 0)
		igny8_jobs_announce();
	/* runs taken back leave room: a worker waiting for it looks */
	if (requeued + recovered > 0)
		runs_freed();

	/*
	 * The server is at igny8_ai.max_running_jobs: the worker whose run
	 * ends next wakes the workers (runs_freed).  One that ended since the
	 * count, and did not see the flag, has us look again ourselves.
	 */
	if (capped)
	{
		(void) pg_atomic_exchange_u32(&igny8_shared->jobs_capped, 1);	/* a full barrier */
		if (pg_atomic_read_u64(&igny8_shared->jobs_runs_ended) != runs_ended)
			run_ended = true;
	}

	igny8_jobs_wake_waiters();
	stop_cancelled(cancelled);
	/* with a change committed with them, not one loaded before it */
	if (nclaimed > 0)
	{
		config = igny8_worker_claim_config();
		MemoryContextSwitchTo(cxt);
	}
	for (int i = 0; i < nclaimed; i++)
	{
		Igny8Job   *job = igny8_job_create(slots[i]);

		running_here++;
		igny8_job_route(job, config, NULL);
	}
	MemoryContextSwitchTo(cxt);
	next_scan_after(now, scan, nclaimed > 0 || requeued > 0);
}

/* ----- writing outcomes ----- */

static bool
to_write(Igny8Job *job)
{
	return job->job_id != 0 && job->state == JOB_FINISHED &&
		!job->job_written && !job->job_lost;
}

/*
 * The attempt a running job's row must record as sent: the one waiting
 * for that (JOB_INTENT), the one in flight, or none.
 */
static int
inflight_wanted(Igny8Job *job)
{
	if (job->state == JOB_INTENT)
		return stopping ? 0 : list_length(job->attempts) + 1;
	if (job->transfer != NULL || job->state == JOB_POLL_WAIT)
		return job->inflight;
	return 0;
}

static bool
to_record(Igny8Job *job)
{
	return job->job_id != 0 && job->state != JOB_FINISHED && !job->job_lost &&
		inflight_wanted(job) != job->inflight;
}

bool
igny8_jobs_to_write(void)
{
	dlist_iter	iter;

	if (igny8_job_counts.submitted == 0)
		return false;
	dlist_foreach(iter, &igny8_jobs)
	{
		Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);

		if (to_write(job) || to_record(job))
			return true;
	}
	return false;
}

static Datum
db_text(const char *utf8, char *nulls, int i)
{
	if (utf8 == NULL)
	{
		nulls[i] = 'n';
		return (Datum) 0;
	}
	return CStringGetTextDatum(igny8_to_db_lossy(utf8));
}

#define FINISH_NARGS 22

/* Write one finished run into its row.  Needs a transaction. */
static void
write_one(const char *schema, Igny8Job *job)
{
	Oid			types[FINISH_NARGS] = {
		INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		INT4OID, INT4OID, BYTEAOID, INT4OID, INT4OID, TEXTOID, FLOAT8OID,
		TEXTOID, TEXTOID, TEXTOID, INT4OID, TIMESTAMPTZOID, NUMERICOID,
		TEXTOID, UUIDOID
	};
	Datum		values[FINISH_NARGS];
	char		nulls[FINISH_NARGS];
	const char *state;
	bool		written;
	int			ret;

	memset(nulls, 'n', sizeof(nulls));
	values[0] = Int64GetDatum(job->job_id);
	nulls[0] = ' ';
	if (job->success)
		state = "succeeded";
	else if (job->job_cancelled)
		state = "cancelled";
	else
		state = "failed";
	values[1] = CStringGetTextDatum(state);
	nulls[1] = ' ';
	if (job->success)
	{
		nulls[2] = nulls[3] = ' ';
		values[2] = db_text(job->used->provider->id, nulls, 2);
		values[3] = db_text(job->task != IGNY8_TASK_IMAGE && job->result.model ?
							job->result.model : job->used->model, nulls, 3);
		if (job->task == IGNY8_TASK_IMAGE)
		{
			bytea	   *img = palloc(VARHDRSZ + job->image_len);

			SET_VARSIZE(img, VARHDRSZ + job->image_len);
			memcpy(VARDATA(img), job->image, job->image_len);
			values[9] = PointerGetDatum(img);
			values[10] = Int32GetDatum(job->image_width);
			values[11] = Int32GetDatum(job->image_height);
			nulls[9] = nulls[10] = nulls[11] = ' ';
			nulls[12] = ' ';
			values[12] = db_text(job->revised_prompt, nulls, 12);
		}
		else
		{
			/* content and thinking are in the database encoding already */
			values[4] = CStringGetTextDatum(job->result.content ?
											job->result.content : "");
			nulls[4] = ' ';
			if (job->result.thinking)
			{
				values[5] = CStringGetTextDatum(job->result.thinking);
				nulls[5] = ' ';
			}
			nulls[6] = ' ';
			values[6] = db_text(job->result.finish_reason, nulls, 6);
			values[7] = Int32GetDatum((int32) Min(job->result.input_tokens, PG_INT32_MAX));
			values[8] = Int32GetDatum((int32) Min(job->result.output_tokens, PG_INT32_MAX));
			nulls[7] = nulls[8] = ' ';
		}
	}
	else
	{
		nulls[14] = nulls[15] = nulls[16] = ' ';
		values[14] = CStringGetTextDatum(job->job_cancelled ? "57014" :
										 unpack_sql_state(job->sqlerrcode));
		values[15] = db_text(job->job_cancelled ? "cancelled by igny8_cancel_job" :
							 job->errmsg, nulls, 15);
		values[16] = db_text(job->errdetail, nulls, 16);
		if (!job->job_cancelled)
		{
			nulls[20] = ' ';
			values[20] = db_text(job->errhint, nulls, 20);
		}
	}
	values[13] = Float8GetDatum((double) (GetCurrentTimestamp() - job->started) / 1000.0);
	nulls[13] = ' ';
	values[17] = Int32GetDatum(igny8_worker_index);
	values[18] = TimestampTzGetDatum(igny8_worker_started_at);
	nulls[17] = nulls[18] = ' ';
	/* the run, not only the job: see held_runs() */
	values[21] = UUIDPGetDatum(&job->request_id);
	nulls[21] = ' ';
	/* the run's cost: the sum of its attempts', priced by usage.c */
	values[19] = igny8_cost_datum(igny8_job_cost(job));
	nulls[19] = ' ';

	ret = SPI_execute_plan(job_plan(PLAN_FINISH, schema,
		"UPDATE %s.igny8_jobs j SET state = $2, finished_at = pg_catalog.now(),"
		" cancel_requested = j.cancel_requested"
		"  OR $2 OPERATOR(pg_catalog.=) 'cancelled',"
		" provider = $3, model = $4, content = $5, thinking = $6,"
		" finish_reason = $7, input_tokens = $8, output_tokens = $9,"
		" image = $10, width = $11, height = $12, revised_prompt = $13,"
		" cost = $20, duration_ms = $14, error_code = $15, error_message = $16,"
		" error_detail = $17, error_hint = $21, inflight = NULL"
		" WHERE j.id OPERATOR(pg_catalog.=) $1"
		" AND j.state OPERATOR(pg_catalog.=) 'running'"
		" AND j.worker OPERATOR(pg_catalog.=) $18"
		" AND j.worker_started OPERATOR(pg_catalog.=) $19"
		" AND j.request_id OPERATOR(pg_catalog.=) $22",
		FINISH_NARGS, types), values, nulls, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not update igny8_jobs: %s",
			 SPI_result_code_string(ret));
	/*
	 * No row: recovery took it back meanwhile, and it runs again (or the
	 * row is another run's now); the cancel below is not this run's then.
	 */
	written = (SPI_processed == 1);
	if (written)
		notify_job(job->job_id, state);

	/*
	 * A cancel is done with once its job is cancelled.  A statement of its
	 * own, for those jobs only: in the UPDATE (a data-modifying WITH) it
	 * made the plan cache plan that statement again at every execution,
	 * and a cancel that came after its job finished is
	 * igny8_jobs_cleanup()'s anyway.
	 */
	if (job->job_cancelled && written)
	{
		Oid			type = INT8OID;

		ret = SPI_execute_plan(job_plan(PLAN_FORGET_CANCEL, schema,
			"DELETE FROM %s.igny8_job_cancels c"
			" WHERE c.job_id OPERATOR(pg_catalog.=) $1",
			1, &type), values, nulls, false, 0);
		if (ret != SPI_OK_DELETE)
			elog(ERROR, "could not delete from igny8_job_cancels: %s",
				 SPI_result_code_string(ret));
	}
}

/*
 * Write in a subtransaction the outcome of "only", or with NULL the
 * outcomes of every job that has one: whether it was written.  On an error
 * (a constraint, a trigger a DBA put on igny8_jobs) the subtransaction is
 * undone and the error returned in *error, and the rest of the flush (the
 * usage rows, the other jobs' outcomes) goes on.
 */
static bool
try_write(const char *schema, Igny8Job *only, ErrorData **error)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = false;

	*error = NULL;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		if (only)
			write_one(schema, only);
		else
		{
			dlist_iter	iter;

			dlist_foreach(iter, &igny8_jobs)
			{
				Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);

				if (to_write(job))
					write_one(schema, job);
			}
		}
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ok = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		*error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_END_TRY();
	return ok;
}

/* text with the keys of every candidate of the job redacted */
static char *
redact_job_keys(Igny8Job *job, const char *text)
{
	char	   *out = pstrdup(text);

	for (int i = 0; i < job->ncands; i++)
		if (job->cands[i] && job->cands[i]->provider->key)
			out = igny8_redact(out, job->cands[i]->provider->key);
	return out;
}

/*
 * Write a finished run's outcome into its row.  If the row refuses it (a
 * constraint, or a trigger on igny8_jobs: a DBA's check, a full disk
 * simulated), the run's attempts were made and their usage rows are
 * written in this transaction all the same: the job ends failed with the
 * reason (its SQLSTATE, the message with the keys redacted), once, not run
 * again, and the server log says so.  A failure that passes (SQLSTATE class
 * 40: a deadlock, a serialization failure) has the outcome written once
 * more first: the answer in hand is not thrown away for it.  Only if the
 * failed outcome cannot be written either is the row left running, for
 * the next scan to take back.
 */
static void
write_outcome(const char *schema, Igny8Job *job)
{
	ErrorData  *error;
	ErrorData  *again;
	MemoryContext old;
	char	   *message;

	if (try_write(schema, job, &error))
		return;
	if (ERRCODE_TO_CATEGORY(error->sqlerrcode) == ERRCODE_TRANSACTION_ROLLBACK)
	{
		ErrorData  *first = error;

		/* the subtransaction that lost is undone: its locks are released */
		if (try_write(schema, job, &error))
		{
			FreeErrorData(first);
			return;
		}
		FreeErrorData(first);
	}
	message = redact_job_keys(job, error->message ? error->message : "unknown error");
	ereport(WARNING,
			(errcode(error->sqlerrcode),
			 errmsg("igny8_ai worker %d could not write the outcome (%s) of job " INT64_FORMAT " to igny8_jobs: %s",
					igny8_worker_index,
					job->success ? "succeeded" : job->job_cancelled ? "cancelled" : "failed",
					job->job_id, message),
			 error->detail ? errdetail("%s", redact_job_keys(job, error->detail)) : 0,
			 errhint("The job ends failed with this error; its attempts are in ai_usage_log with request_id %s.",
					 DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&job->request_id))))));
	old = MemoryContextSwitchTo(job->cxt);
	job->job_cancelled = false;
	igny8_job_finish_error(job, error->sqlerrcode,
						   psprintf("could not write the outcome of job " INT64_FORMAT " to igny8_jobs: %s",
									job->job_id, message),
						   error->detail ? redact_job_keys(job, error->detail) : NULL,
						   pstrdup("Its attempts are in ai_usage_log with its request_id; the server log has the error."));
	MemoryContextSwitchTo(old);
	FreeErrorData(error);
	if (try_write(schema, job, &again))
		return;
	ereport(WARNING,
			(errcode(again->sqlerrcode),
			 errmsg("igny8_ai worker %d could not write job " INT64_FORMAT " as failed either: %s",
					igny8_worker_index, job->job_id,
					redact_job_keys(job, again->message ? again->message : "unknown error")),
			 errhint("The job stays running until a scan of igny8_jobs takes it back.")));
	FreeErrorData(again);
	/* the next scan takes the row back (recover()) */
	job->job_lost = true;
	next_scan = 0;
}

/*
 * What a running job's row must record as sent: its inflight JSON, or NULL
 * for none.  Sets inflight_next.
 */
static char *
inflight_json(Igny8Job *job)
{
	int			n = inflight_wanted(job);
	Igny8Deployment *d;
	StringInfoData buf;

	job->inflight_next = n;
	if (n == 0)
		return NULL;
	d = job->cands[job->cand];
	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"attempt\": %d, \"provider\": ", n);
	escape_json(&buf, igny8_to_db_lossy(d->provider->id));
	appendStringInfoString(&buf, ", \"model\": ");
	escape_json(&buf, igny8_to_db_lossy(d->model));
	appendStringInfoString(&buf, ", \"at\": ");
	escape_json(&buf, timestamptz_to_str(job->intent_at));
	/* sent with the account's own key: its usage row says so */
	if (d->provider->account_key_ref)
	{
		appendStringInfoString(&buf, ", \"api_key_ref\": ");
		escape_json(&buf, igny8_to_db_lossy(d->provider->account_key_ref));
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * Record in the running jobs' rows the attempts they send (or none).  A
 * row says sent from the first attempt it records as in flight, before
 * that is sent; sents[i], unless null, says instead whether the run sent
 * anything (a stopping worker knows: an attempt recorded may not have gone
 * out).
 */
static void
record_all(const char *schema, Datum *ids, Datum *rids, Datum *inflights,
		   bool *nulls, Datum *sents, bool *sent_nulls, int n)
{
	Oid			types[6] = {INT8ARRAYOID, TEXTARRAYOID, INT4OID, TIMESTAMPTZOID,
	BOOLARRAYOID, UUIDARRAYOID};
	int			dims[1] = {n};
	int			lbs[1] = {1};
	Datum		values[6];
	int			ret;

	values[0] = bigint_array(ids, n);
	values[5] = uuid_array(rids, n);
	values[1] = PointerGetDatum(construct_md_array(inflights, nulls, 1, dims,
												   lbs, TEXTOID, -1, false,
												   TYPALIGN_INT));
	values[2] = Int32GetDatum(igny8_worker_index);
	values[3] = TimestampTzGetDatum(igny8_worker_started_at);
	values[4] = PointerGetDatum(construct_md_array(sents, sent_nulls, 1, dims,
												   lbs, BOOLOID, 1, true,
												   TYPALIGN_CHAR));
	/* every row to record in one statement: ids and their inflight */
	ret = SPI_execute_plan(job_plan(PLAN_INFLIGHT, schema,
		"UPDATE %s.igny8_jobs j SET inflight = v.inflight::pg_catalog.jsonb,"
		" sent = COALESCE(v.sent, j.sent OR v.inflight IS NOT NULL)"
		" FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
		"  pg_catalog.unnest($5), pg_catalog.unnest($6)) v(id, inflight, sent, rid)"
		" WHERE j.id OPERATOR(pg_catalog.=) v.id"
		" AND j.request_id OPERATOR(pg_catalog.=) v.rid"
		" AND j.state OPERATOR(pg_catalog.=) 'running'"
		" AND j.worker OPERATOR(pg_catalog.=) $3"
		" AND j.worker_started OPERATOR(pg_catalog.=) $4",
		6, types), values, NULL, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not update igny8_jobs: %s",
			 SPI_result_code_string(ret));
}

/*
 * Write the outcome of every finished run not yet written.  Runs in the
 * transaction of usage.c's flush, whose commit makes them written.
 */
void
igny8_jobs_write(Igny8Config *config)
{
	dlist_iter	iter;
	int			njobs = 0;
	int			nrecord = 0;
	int			nwrite = 0;
	Datum	   *ids;
	Datum	   *rids;
	Datum	   *inflights;
	bool	   *nulls;
	Datum	   *sents;
	bool	   *sent_nulls;

	if (!igny8_jobs_to_write())
		return;
	dlist_foreach(iter, &igny8_jobs)
		njobs++;
	ids = palloc(sizeof(Datum) * njobs);
	rids = palloc(sizeof(Datum) * njobs);
	inflights = palloc(sizeof(Datum) * njobs);
	nulls = palloc(sizeof(bool) * njobs);
	sents = palloc(sizeof(Datum) * njobs);
	sent_nulls = palloc(sizeof(bool) * njobs);
	/*
	 * Every outcome in one subtransaction: a subtransaction per job would
	 * give each its own subtransaction id, and past 64 of them in one
	 * transaction every snapshot of the server overflows its cache of
	 * them.  Only when one of the rows refuses its outcome are they
	 * written again one by one, to find which.
	 */
	dlist_foreach(iter, &igny8_jobs)
	{
		if (to_write(dlist_container(Igny8Job, node, iter.cur)))
			nwrite++;
	}
	if (nwrite > 1)
	{
		ErrorData  *error;

		if (try_write(config->schema, NULL, &error))
			nwrite = 0;
		else
			FreeErrorData(error);
	}
	dlist_foreach(iter, &igny8_jobs)
	{
		Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);

		if (to_write(job))
		{
			if (nwrite > 0)
				write_outcome(config->schema, job);
		}
		else if (to_record(job))
		{
			char	   *json = inflight_json(job);

			ids[nrecord] = Int64GetDatum(job->job_id);
			rids[nrecord] = UUIDPGetDatum(&job->request_id);
			nulls[nrecord] = (json == NULL);
			inflights[nrecord] = json ? CStringGetTextDatum(json) : (Datum) 0;
			sent_nulls[nrecord] = !stopping;
			sents[nrecord] = BoolGetDatum(stopping && igny8_job_sent(job));
			nrecord++;
		}
	}
	if (nrecord > 0)
		record_all(config->schema, ids, rids, inflights, nulls, sents,
				   sent_nulls, nrecord);
}

/*
 * usage.c's flush ended: committed (written) or not (the rows stay
 * running, and the next scan takes them back from us).
 */
void
igny8_jobs_flushed(bool committed)
{
	dlist_iter	iter;

	/* the plans were forgotten by igny8_worker_recover() */
	if (!committed)
		next_scan = 0;
	if (igny8_job_counts.submitted == 0)
		return;
	dlist_foreach(iter, &igny8_jobs)
	{
		Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);

		if (job->job_id == 0 || job->job_lost)
			continue;
		if (to_write(job))
		{
			if (committed)
			{
				job->job_written = true;
				remember_woken(job->job_id);
			}
			else
				job->job_lost = true;
		}
		else if (to_record(job))
		{
			if (committed)
				job->inflight = job->inflight_next;
			else
			{
				/* its row is taken back by the next scan */
				job->job_lost = true;
				igny8_job_abort(job, "could not record the attempt in igny8_jobs");
			}
		}
		/* recorded: it may be sent now, without waiting */
		if (committed && job->state == JOB_INTENT)
		{
			igny8_job_set_state(job, JOB_READY);
			pg_atomic_write_u32(&me()->wakeup, 1);
		}
	}
}

/* After an error: the prepared statements are suspect (see usage.c). */
void
igny8_jobs_reset(void)
{
	igny8_plans_forget(&job_plans);
}

/* The worker is stopping: no attempt of a job is recorded as sent now. */
void
igny8_jobs_stopping(void)
{
	stopping = true;
}

/*
 * Runs ended (their rows were written, or taken back): if a claim found
 * the server at igny8_ai.max_running_jobs, wake the workers, whose claims
 * count the rows again.  The bump comes first (a full barrier), as the
 * claim sets the flag before it reads the count of bumps: either it sees
 * this bump, or this sees its flag.
 */
static void
runs_freed(void)
{
	pg_atomic_fetch_add_u64(&igny8_shared->jobs_runs_ended, 1);
	if (pg_atomic_read_u32(&igny8_shared->jobs_capped) != 0 &&
		pg_atomic_exchange_u32(&igny8_shared->jobs_capped, 0) != 0)
		igny8_jobs_announce();
}

/*
 * A finished run is forgotten, after the commit that wrote its row: its
 * slot is given back.
 */
void
igny8_jobs_published(Igny8Job *job)
{
	running_here--;
	run_ended = true;
	igny8_slot_release(job->slotno);
	runs_freed();
}

/* Wake the backends waiting for the jobs whose outcome was committed. */
void
igny8_jobs_wake_waiters(void)
{
	ListCell   *lc;
	int64	   *ids;
	int			n = 0;

	if (woken == NIL)
		return;
	ids = palloc(sizeof(int64) * list_length(woken));
	foreach(lc, woken)
		ids[n++] = *(int64 *) lfirst(lc);
	igny8_wake_job_waiters(ids, n);
	pfree(ids);
	list_free_deep(woken);
	woken = NIL;
}

static void
give_back(void *schema)
{
	recover((const char *) schema, NULL);
}

/*
 * The worker is stopping: its runs were aborted and let go of (job_lost).
 * Every row of ours goes back to the queue (a run that sent nothing is not
 * counted), or fails as interrupted past max_attempts, and the attempt a
 * row records as in flight gets its usage row (recover()).
 */
void
igny8_jobs_stop(Igny8Config *config)
{
	if (config == NULL || running_here == 0)
		return;
	/* if that fails, the others take the rows back when they see us gone */
	if (igny8_worker_transaction("igny8_ai: giving jobs back",
								 give_back, config->schema))
		igny8_jobs_wake_waiters();
}
