/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The igny8_ai background worker: its main loop, its life (start,
 *	  restart, stop), the requests it takes from the queues, and the
 *	  configuration it keeps.
 *
 * One worker holds many requests ("jobs", job.c) in flight.  Each loop
 * iteration: wait on the latch, postmaster death and curl's sockets
 * together; take new requests (its own queue, and the queues of workers
 * that are not running); reload the configuration if it changed; abort the
 * jobs whose callers left; let curl progress and read finished transfers;
 * start attempts that are due; then, in one transaction, write the usage
 * rows of every attempt that ended, and only after the commit hand
 * finished jobs back to their callers.
 *
 * Waking up: whoever has work for a worker sets its "wakeup" flag and then
 * its latch.  A latch can be reset by something else the worker waited for
 * (a lock wait inside SPI sleeps on the same latch), so before every wait
 * the worker looks at the flag and its queue, and does not sleep if there
 * is work.
 *
 * Stopping: SIGTERM (a fast shutdown, pg_terminate_backend) is handled in
 * the loop, not by dying at once: requests that sent nothing are queued
 * again, transfers in flight are aborted and logged as interrupted, every
 * caller gets an answer, and the worker exits with code 1 (restarted after
 * a second unless the server is stopping).  After kill -9 the postmaster
 * restarts the whole server, shared memory included.
 *
 * Security: the worker connects as igny8_ai.username (by default the
 * bootstrap superuser) and sets its search_path to pg_catalog, the
 * extension's schema, pg_temp before running any SQL; its SQL names every
 * object with its schema (config.c, usage.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <malloc.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "worker.h"

/* how often a worker with no work looks at the world anyway */
#define IGNY8_IDLE_WAIT_MS		60000
/* how often a configuration that failed to load is tried again */
#define IGNY8_CONFIG_RETRY_MS	1000
/* ... and without one: a worker serving an older configuration */
#define IGNY8_CONFIG_RETRY_IDLE_MS	10000
/*
 * How long the load waits for a lock on a configuration table, and how long
 * it may take at all; a load that ran out of time is tried again after
 * IGNY8_CONFIG_RETRY_FIRST_MS, then twice as long each time (at most
 * IGNY8_CONFIG_RETRY_IDLE_MS).
 */
#define IGNY8_CONFIG_LOCK_TIMEOUT	"200"
#define IGNY8_CONFIG_LOAD_TIMEOUT_MS	30000
/* a failed sum of a budget's spend is tried again after (doubling) */
#define IGNY8_BUDGET_SUM_RETRY_MS	1000
/* a busy worker sums a budget's spend that waited this long for an idle one */
#define IGNY8_BUDGET_SUM_BUSY_MS	2000
/* longest wait for configuration commits whose jobs a claim saw */
#define IGNY8_CONFIG_COMMIT_WAIT_MS	20
#define IGNY8_CONFIG_RETRY_FIRST_MS	250
/* how long a worker keeps answers back for another worker's commit */
#define IGNY8_FLUSH_DEFER_MS	2
/* answers this large are mmap'd by malloc, and unmapped when freed */
#define IGNY8_MMAP_THRESHOLD	(1024 * 1024)

static Igny8WorkerShared *me = NULL;
static Igny8Config *config = NULL;
static char *config_error = NULL;	/* why the last load failed */
static uint64 config_generation = 0;
static bool config_stale = true;	/* load again, whatever the generation */
static TimestampTz config_tried_at = 0;
static int	config_retry_ms = IGNY8_CONFIG_RETRY_IDLE_MS;	/* after a failure */
static int	config_failures = 0;	/* loads failed in a row */
static bool encoding_ready = false;
static MemoryContext loop_cxt = NULL;
static volatile sig_atomic_t shutdown_requested = false;
static volatile sig_atomic_t cancel_on_stop = false;	/* in a sum of budgets */
static TimestampTz flush_deferred_since = 0;	/* 0: not deferring */
static bool swept = false;		/* igny8_image_sweep was called, or is not
								 * needed */

/* SIGTERM: stop in the loop, after every caller has an answer. */
static void
handle_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	shutdown_requested = true;
	/* a sum of budgets in progress ends now (sum_budgets_body) */
	if (cancel_on_stop)
	{
		InterruptPending = true;
		QueryCancelPending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * Mark this worker not running.  Whatever is still in its queue (requests
 * queued again, or pushed just before) is the other workers' to take:
 * wake them.  A caller that pushes after this wakes them itself.
 */
static void
mark_stopped(void)
{
	bool		queued;

	SpinLockAcquire(&me->mutex);
	me->procno = -1;
	me->pid = 0;
	queued = (me->queued > 0);
	SpinLockRelease(&me->mutex);
	if (queued)
		igny8_wake_all_workers();
}

/* Wake the workers that wait for our usage commit to end. */
static void
wake_flush_waiters(void)
{
	uint64		waiters;

	(void) pg_atomic_exchange_u32(&me->flushing, 0);	/* a full barrier */
	waiters = pg_atomic_exchange_u64(&me->flush_waiters, 0);
	for (int w = 0; waiters != 0; w++, waiters >>= 1)
		if (waiters & 1)
			igny8_wake_worker(w);
}

static void
worker_detach(int code, Datum arg)
{
	wake_flush_waiters();
	igny8_places_forget_worker(igny8_worker_index);
	igny8_gpu_clock_forget_worker(igny8_worker_index);
	igny8_budget_forget_worker(igny8_worker_index);
	mark_stopped();
	/* the runs we leave in igny8_jobs are taken back by the others now */
	igny8_jobs_request_scan();
}

/* ----- transactions ----- */

void
igny8_worker_begin(const char *what)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, what);
}

void
igny8_worker_commit(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Run body(arg) in a transaction of its own (what names it in
 * pg_stat_activity) and commit it.  An error is reported and left behind
 * (igny8_worker_recover).  Whether it committed.
 */
bool
igny8_worker_transaction(const char *what, void (*body) (void *arg), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool committed = false;

	PG_TRY();
	{
		igny8_worker_begin(what);
		body(arg);
		igny8_worker_commit();
		committed = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		igny8_worker_recover();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return committed;
}

/* ----- prepared statements ----- */

/* Forget every statement of a set (after an error, or the schema moved). */
void
igny8_plans_forget(Igny8PlanSet *set)
{
	for (int i = 0; i < set->nplans; i++)
	{
		if (set->plans[i])
			SPI_freeplan(set->plans[i]);
		set->plans[i] = NULL;
	}
	if (set->schema)
		pfree(set->schema);
	set->schema = NULL;
}

/*
 * Where a set keeps its statement which for the extension in schema: NULL
 * there until the caller prepares it (igny8_plan_keep).  Statements made
 * for another schema are forgotten first.
 */
SPIPlanPtr *
igny8_plan_slot(Igny8PlanSet *set, int which, const char *schema)
{
	Assert(which >= 0 && which < set->nplans);
	if (set->schema == NULL || strcmp(set->schema, schema) != 0)
	{
		igny8_plans_forget(set);
		set->schema = MemoryContextStrdup(TopMemoryContext, schema);
	}
	return &set->plans[which];
}

/* Prepare a statement and keep it for the worker's life; what names it. */
SPIPlanPtr
igny8_plan_keep(const char *sql, int nargs, Oid *types, const char *what)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "could not prepare %s: %s", what,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * Statement which of a set, prepared for the extension in schema the first
 * time it is asked for.  fmt names the schema with %s, up to six times; it
 * is only formatted then, not at every execution.  what names the
 * statement in an error.
 */
SPIPlanPtr
igny8_plan_get(Igny8PlanSet *set, int which, const char *schema,
			   const char *fmt, int nargs, Oid *types, const char *what)
{
	SPIPlanPtr *slot = igny8_plan_slot(set, which, schema);

	if (*slot == NULL)
	{
		char	   *sql = psprintf(fmt, schema, schema, schema, schema, schema,
								   schema);

		*slot = igny8_plan_keep(sql, nargs, types, what);
		pfree(sql);
	}
	return *slot;
}

/*
 * Report a caught error and get back to a clean state outside any
 * transaction.  The prepared statements and the configuration are suspect
 * (the extension may have been dropped): they are made again.  report:
 * whether the error goes to the server log.
 */
static void
worker_recover(bool report)
{
	MemoryContextSwitchTo(loop_cxt);
	if (report)
		EmitErrorReport();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(loop_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	igny8_usage_reset();
	igny8_jobs_reset();
	igny8_cache_reset();
	config_stale = true;
}

void
igny8_worker_recover(void)
{
	worker_recover(true);
}

/* ----- the configuration ----- */

Igny8Config *
igny8_worker_config(void)
{
	return config;
}

/*
 * Has a rent started or ended since the configuration was loaded?  Which
 * clock a provider's attempts run on is fixed at the load by the rents
 * valid then (config.c), so the worker loads the configuration again
 * before it routes the first request, or takes the first job, after such
 * a change.  An idle worker is not woken for it: it has no attempt to
 * start, and every look at new work comes through refresh_config first.
 * A load that failed is tried again on its own schedule.
 */
static bool
rents_changed(TimestampTz now)
{
	return config != NULL && config_error == NULL &&
		config->rents_change != 0 && now >= config->rents_change;
}

/*
 * The load waits for no lock for long, and takes no longer than
 * IGNY8_CONFIG_LOAD_TIMEOUT_MS: a DBA's LOCK TABLE on a configuration table
 * (or an ALTER TABLE) would otherwise hold the worker, and every call it
 * serves, until it ended.  Both arrive as SIGINT, which the worker ignores
 * outside the load (see igny8_worker_main).  The sum of a budget's spend
 * (sum_budgets) waits for no lock for long either, but has no time limit:
 * a large account's rows could take longer at every try.
 */
static void
load_limits_on(bool time_limit)
{
	(void) set_config_option("lock_timeout", IGNY8_CONFIG_LOCK_TIMEOUT,
							 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL,
							 true, 0, false);
	pqsignal(SIGINT, StatementCancelHandler);
	if (time_limit)
		enable_timeout_after(STATEMENT_TIMEOUT, IGNY8_CONFIG_LOAD_TIMEOUT_MS);
}

static void
load_limits_off(void)
{
	disable_timeout(STATEMENT_TIMEOUT, false);
	cancel_on_stop = false;
	pqsignal(SIGINT, SIG_IGN);
	/* a cancel that came too late to stop the load stops nothing else */
	QueryCancelPending = false;
}

/*
 * Load the configuration if it changed, or must be loaded again.  now is
 * the time of this turn of the loop.
 */
static void
refresh_config(bool need_one, TimestampTz now)
{
	uint64		gen = pg_atomic_read_u64(&igny8_shared->config_generation);
	Igny8Config *volatile fresh = NULL;

	/*
	 * A load that failed is tried again, not too often: every second at
	 * most while requests need a configuration and there is none, else
	 * every ten (the worker serves the last configuration it loaded
	 * meanwhile); one that ran out of time waiting for a lock sooner at
	 * first (config_retry_ms).
	 */
	if (gen == config_generation && !config_stale && !rents_changed(now) &&
		!(config_error != NULL &&
		  TimestampDifferenceExceeds(config_tried_at, now,
									 need_one ?
									 Min(config_retry_ms, IGNY8_CONFIG_RETRY_MS) :
									 config_retry_ms)))
		return;
	config_tried_at = now;

	PG_TRY();
	{
		igny8_worker_begin("igny8_ai: loading configuration");
		load_limits_on(true);
		if (!encoding_ready)
		{
			igny8_encoding_init();
			encoding_ready = true;
		}
		fresh = igny8_config_load();
		if (fresh)
			SetConfigOption("search_path",
							psprintf("pg_catalog, %s, pg_temp", fresh->schema),
							PGC_USERSET, PGC_S_SESSION);
		load_limits_off();
		igny8_worker_commit();
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		bool		timed_out;
		bool		report;

		load_limits_off();
		/* keep serving with what we had; say why to callers without one */
		if (fresh)
		{
			fresh->refcount = 1;
			igny8_config_release(fresh);
		}
		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		timed_out = (edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
					 edata->sqlerrcode == ERRCODE_QUERY_CANCELED);
		/* the same failure again is not logged again */
		report = (config_error == NULL ||
				  strcmp(config_error, edata->message) != 0);
		worker_recover(report);
		config_failures++;
		config_retry_ms = timed_out ?
			Min(IGNY8_CONFIG_RETRY_IDLE_MS,
				IGNY8_CONFIG_RETRY_FIRST_MS << Min(config_failures - 1, 8)) :
			IGNY8_CONFIG_RETRY_IDLE_MS;
		if (report)
			ereport(LOG,
					(errmsg("igny8_ai worker %d could not load the configuration",
							igny8_worker_index),
					 config ?
					 errdetail("It serves the configuration it loaded before, and tries again.") :
					 errdetail("It answers calls with this error, and tries again.")));
		if (config_error)
			pfree(config_error);
		/* (worker_recover left loop_cxt current: reset every turn) */
		config_error = MemoryContextStrdup(TopMemoryContext, edata->message);
		FreeErrorData(edata);
		config_generation = gen;
		config_stale = false;
		return;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(loop_cxt);

	if (config_failures > 0)
		ereport(LOG,
				(errmsg("igny8_ai worker %d loaded the configuration, after %d failed attempts",
						igny8_worker_index, config_failures)));
	config_failures = 0;
	config_retry_ms = IGNY8_CONFIG_RETRY_IDLE_MS;
	if (config)
		igny8_config_release(config);
	config = fresh;
	if (config)
		config->refcount++;
	if (config_error)
		pfree(config_error);
	config_error = NULL;
	config_generation = gen;
	config_stale = false;
	pg_atomic_write_u64(&me->config_generation, gen);

	/*
	 * With its first configuration, a worker knows its ComfyUI servers and
	 * can clean up what an earlier incarnation left there.
	 */
	if (config != NULL && !swept)
	{
		swept = true;
		igny8_image_sweep(config);
	}
}

/* igny8_worker_transaction's body for sum_budgets */
static void
sum_budgets_body(void *arg)
{
	load_limits_on(false);
	/*
	 * A stop request cancels the sum (handle_sigterm), not the load: the
	 * load has a time limit, and what is routed in a stopping worker's
	 * last turn needs its configuration.
	 */
	cancel_on_stop = true;
	if (shutdown_requested)
	{
		InterruptPending = true;
		QueryCancelPending = true;
	}
	igny8_budgets_sum((const char *) arg);
}

static TimestampTz budget_sum_retry_at = 0;
static int	budget_sum_failures = 0;

/*
 * When this worker would sum the budgets that wait for a worker: after its
 * own failed sum's retry time, and when it is busy, once the sum has
 * waited IGNY8_BUDGET_SUM_BUSY_MS.  0: nothing to sum (or no
 * configuration).  sum_budgets and wait_timeout both ask it.
 */
static TimestampTz
budget_sum_due(void)
{
	TimestampTz since = igny8_budgets_unsummed_since();
	TimestampTz at;

	if (since == 0 || config == NULL)
		return 0;
	at = budget_sum_retry_at;
	if (!dlist_is_empty(&igny8_jobs) || flush_deferred_since != 0)
		at = Max(at, TimestampTzPlusMilliseconds(since, IGNY8_BUDGET_SUM_BUSY_MS));
	return Max(at, 1);
}

/*
 * Sum the spend of the budgets that are loading and that no other worker
 * sums (budget.c), after the configuration is loaded: the sum may take as
 * long as an account's rows take to read, and the load has a time limit.
 * This worker's loop waits meanwhile, so it sums when it has nothing in
 * flight (no request or job, no answer waiting for its row), or when the
 * sum has waited IGNY8_BUDGET_SUM_BUSY_MS for an idle worker; the other
 * workers go on (a call queued to this one meanwhile waits for it:
 * choose_worker passes over a stalled worker after IGNY8_STALL_MS).  A
 * stop request cancels it (handle_sigterm).  A sum that fails gives its
 * entries back and is tried again after IGNY8_BUDGET_SUM_RETRY_MS, then
 * twice as long after each failure up to 8 times as long (each failure is
 * in the server log).
 */
static void
sum_budgets(TimestampTz now)
{
	bool		summed;
	TimestampTz due = budget_sum_due();

	if (due == 0 || now < due || shutdown_requested)
		return;
	summed = igny8_worker_transaction("igny8_ai: summing the spend of budgets",
									  sum_budgets_body, config->schema);
	load_limits_off();
	if (summed)
	{
		budget_sum_retry_at = 0;
		budget_sum_failures = 0;
	}
	else
	{
		igny8_budgets_release(igny8_worker_index);
		budget_sum_retry_at =
			TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										IGNY8_BUDGET_SUM_RETRY_MS << Min(budget_sum_failures, 3));
		budget_sum_failures++;
	}
}

/*
 * The configuration to route the jobs just claimed with.  A transaction
 * that changes the configuration counts itself in config_started before
 * its commit is visible, and in config_generation after (extension.c).
 * The claim may have seen such a commit, and the jobs it submitted, while
 * the configuration was loaded before it: then config_started has moved
 * past the generation the configuration was loaded at.  The commits
 * counted are waited for (their callbacks run right after the commit;
 * at most IGNY8_CONFIG_COMMIT_WAIT_MS in all), and the configuration is
 * loaded again: a job submitted in the transaction that deleted its
 * alias fails with the alias unknown, as a call made after the commit
 * would.
 */
Igny8Config *
igny8_worker_claim_config(void)
{
	uint64		started;
	TimestampTz until;

	pg_memory_barrier();
	started = pg_atomic_read_u64(&igny8_shared->config_started);
	if ((int64) (started - config_generation) <= 0)
		return config;
	until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										IGNY8_CONFIG_COMMIT_WAIT_MS);
	while ((int64) (pg_atomic_read_u64(&igny8_shared->config_generation) - started) < 0 &&
		   GetCurrentTimestamp() < until)
		pg_usleep(50);
	refresh_config(false, GetCurrentTimestamp());
	return config;
}

/* ----- taking requests ----- */

/*
 * Claim a slot just taken from a queue: it becomes RUNNING and ours in
 * the same step, so that it is never out of every queue without an owner.
 * False when its caller already left (the slot is freed).
 */
static bool
claim_slot(int slotno)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	bool		abandoned;

	SpinLockAcquire(&slot->mutex);
	abandoned = (slot->state == IGNY8_SLOT_ABANDONED);
	if (!abandoned)
	{
		Assert(slot->state == IGNY8_SLOT_QUEUED);
		slot->state = IGNY8_SLOT_RUNNING;
		slot->claimed = true;
		slot->worker = igny8_worker_index;
	}
	SpinLockRelease(&slot->mutex);
	if (abandoned)
		igny8_slot_release(slotno);
	return !abandoned;
}

/* Take what waits in one queue; returns the new count in out[]. */
static int
take_queue(int worker, int *out, int n)
{
	int			slotno;

	while (n < igny8_shared->nslots &&
		   (slotno = igny8_queue_pop(worker)) >= 0)
	{
		if (claim_slot(slotno))
			out[n++] = slotno;
	}
	return n;
}

/*
 * The new requests: those queued to us, and those queued to workers that
 * are not running (exited, or not started yet).
 */
static int
take_new_slots(int *out)
{
	int			n = take_queue(igny8_worker_index, out, 0);

	for (int w = 0; w < igny8_shared->nworkers; w++)
	{
		if (w != igny8_worker_index && !igny8_worker_running(w) &&
			!igny8_queue_empty(w))
			n = take_queue(w, out, n);
	}
	return n;
}

/* Is there work that a reset latch may have hidden? */
static bool
work_waiting(void)
{
	if (pg_atomic_read_u32(&me->wakeup) != 0 ||
		pg_atomic_read_u32(&me->abandons) != 0 ||
		shutdown_requested || ConfigReloadPending ||
		/* queued after the flush (a probe whose caller left, job.c) */
		igny8_pending_notifies != NIL ||
		(config != NULL && igny8_jobs_due(GetCurrentTimestamp())) ||
		pg_atomic_read_u64(&igny8_shared->config_generation) != config_generation ||
		!igny8_queue_empty(igny8_worker_index))
		return true;
	for (int w = 0; w < igny8_shared->nworkers; w++)
	{
		if (w != igny8_worker_index && !igny8_worker_running(w) &&
			!igny8_queue_empty(w))
			return true;
	}
	return false;
}

/* Abort the jobs whose callers gave up. */
static void
check_abandoned(void)
{
	dlist_iter	iter;

	if (pg_atomic_exchange_u32(&me->abandons, 0) == 0)
		return;
	dlist_foreach(iter, &igny8_jobs)
	{
		Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);
		Igny8Slot  *slot = &igny8_slots[job->slotno];
		bool		gone;
		bool		cancel;

		/*
		 * A finished job waiting for its usage commit (defer_flush) is left
		 * alone: publishing it frees an abandoned slot, and there is
		 * nothing left to abort.
		 */
		if (job->abandoned || job->state == JOB_FINISHED)
			continue;
		SpinLockAcquire(&slot->mutex);
		gone = (slot->state == IGNY8_SLOT_ABANDONED);
		cancel = slot->job_cancel;
		SpinLockRelease(&slot->mutex);
		/* a submitted job's cancel is read from its row (jobtable.c) */
		if (cancel && !job->job_cancelled)
			igny8_jobs_cancel_seen();
		if (gone)
		{
			igny8_job_abort(job, "cancelled by the caller");
			job->abandoned = true;
		}
	}
}

static void
publish_finished(void)
{
	dlist_mutable_iter miter;

	/* publishing forgets the job, which leaves the list */
	dlist_foreach_modify(miter, &igny8_jobs_ended)
	{
		Igny8Job   *job = dlist_container(Igny8Job, ended_node, miter.cur);

		if (job->state == JOB_FINISHED)
			igny8_job_publish(job);
	}
	igny8_jobs_wake_waiters();
	MemoryContextSwitchTo(loop_cxt);
}

/*
 * Requests a previous incarnation of this worker held when it exited.
 * Those that sent nothing are queued again; those that did fail (their
 * attempts may have reached a provider), so that their callers stop
 * waiting; abandoned ones are freed.
 */
static void
recover_orphans(void)
{
	for (int i = 0; i < igny8_shared->nslots; i++)
	{
		Igny8Slot  *slot = &igny8_slots[i];
		Igny8SlotState state;
		bool		mine;
		bool		sent;
		int			procno;

		SpinLockAcquire(&slot->mutex);
		state = slot->state;
		mine = (slot->worker == igny8_worker_index && slot->claimed);
		sent = slot->sent;
		procno = slot->caller_procno;
		if (mine && slot->job_id != 0 && state != IGNY8_SLOT_FREE)
		{
			/* a run of a submitted job: its row is taken back (jobtable.c) */
			SpinLockRelease(&slot->mutex);
			igny8_slot_release(i);
			continue;
		}
		if (mine && state == IGNY8_SLOT_RUNNING && !sent)
		{
			slot->state = IGNY8_SLOT_QUEUED;
			slot->claimed = false;
		}
		SpinLockRelease(&slot->mutex);
		if (!mine)
			continue;

		if (state == IGNY8_SLOT_ABANDONED)
			igny8_slot_release(i);
		else if (state == IGNY8_SLOT_RUNNING && !sent)
			igny8_queue_push(igny8_worker_index, i);
		else if (state == IGNY8_SLOT_RUNNING)
		{
			const char *strs[3] = {
				"igny8_ai worker restarted while the request was running",
				"The worker serving the request exited; the request may have been sent to a provider, and its usage row may be missing.",
				"See the server log for why the worker exited; retry the call."
			};
			dsa_pointer result = igny8_pack_strings(igny8_dsa(), 3, strs);
			XLogRecPtr	all_wal = GetXLogInsertRecPtr();
			bool		gone;

			SpinLockAcquire(&slot->mutex);
			gone = (slot->state == IGNY8_SLOT_ABANDONED);
			if (!gone)
			{
				slot->result = result;
				slot->success = false;
				slot->sqlerrcode = ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
				slot->attempts = 0;
				/*
				 * The previous incarnation may have committed rows of this
				 * call without their flush, and took the LSN with it: the
				 * caller flushes all there is.
				 */
				slot->flush_lsn = all_wal;
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

/*
 * SIGTERM: give every request an outcome, write the usage rows of the
 * attempts it interrupts, and exit.
 */
static void
stop_gracefully(void)
{
	dlist_mutable_iter miter;
	int			requeued = 0;
	int			interrupted = 0;

	/*
	 * What ended so far is logged first, so that what a submitted job's
	 * row records as sent is the attempt still in flight, whose usage row
	 * igny8_jobs_stop() writes when it gives the row back.
	 */
	igny8_jobs_stopping();
	igny8_usage_flush(config, igny8_usage_to_write());
	dlist_foreach_modify(miter, &igny8_jobs)
	{
		Igny8Job   *job = dlist_container(Igny8Job, node, miter.cur);

		if (job->state == JOB_FINISHED)
			continue;
		if (job->job_id != 0)
		{
			ListCell   *lc;

			if (igny8_job_sent(job))
				interrupted++;
			else
				requeued++;
			igny8_job_abort(job, "interrupted: the igny8_ai worker was stopped");
			/* its row is given back, the attempt in flight logged there */
			job->job_lost = true;
			foreach(lc, job->attempts)
				igny8_attempt_mark_logged((Igny8Attempt *) lfirst(lc));
		}
		else if (!igny8_job_sent(job))
		{
			igny8_job_requeue(job);
			requeued++;
		}
		else
		{
			igny8_job_abort(job, "interrupted: the igny8_ai worker was stopped");
			interrupted++;
		}
	}
	MemoryContextSwitchTo(loop_cxt);
	igny8_usage_flush(config, igny8_usage_to_write());
	igny8_jobs_stop(config);
	publish_finished();
	/* the requests queued again are taken by the others at once */
	mark_stopped();
	/* ComfyUI prompts of the interrupted requests: cancel them if we can */
	igny8_image_finish_cleanups(1000);
	ereport(LOG,
			(errmsg("igny8_ai worker %d stopping", igny8_worker_index),
			 errdetail("%d requests queued again for another worker, %d interrupted and logged in ai_usage_log.",
					   requeued, interrupted)));
	proc_exit(1);
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

/* How long the loop may sleep. */
static long
wait_timeout(void)
{
	TimestampTz now = GetCurrentTimestamp();
	long		timeout = IGNY8_IDLE_WAIT_MS;
	long		http_ms = igny8_http_timeout_ms();
	dlist_iter	iter;

	if (work_waiting())
		return 0;
	if (flush_deferred_since != 0)
		timeout = Min(timeout,
					  ms_until(now, TimestampTzPlusMilliseconds(flush_deferred_since,
																IGNY8_FLUSH_DEFER_MS)));
	if (http_ms >= 0)
		timeout = Min(timeout, http_ms);
	if (config != NULL)
		timeout = Min(timeout, ms_until(now, igny8_jobs_next_due()));
	if (config_error != NULL)
		timeout = Min(timeout,
					  ms_until(now, TimestampTzPlusMilliseconds(config_tried_at,
																config_retry_ms)));
	{
		/* a sum to try again, or one a busy worker waits to make */
		TimestampTz due = budget_sum_due();

		if (due != 0)
			timeout = Min(timeout, ms_until(now, due));
	}
	dlist_foreach(iter, &igny8_jobs)
	{
		TimestampTz at = igny8_job_next_timeout(dlist_container(Igny8Job, node,
																iter.cur));

		if (at != 0)
			timeout = Min(timeout, ms_until(now, at));
	}
	{
		TimestampTz at = igny8_image_cleanups_due();

		if (at != 0)
			timeout = Min(timeout, ms_until(now, at));
	}
	return timeout;
}

/*
 * Group commit across workers, for the commits that wait for their WAL
 * flush (those that write submitted jobs' outcomes; the callers of
 * synchronous calls flush for themselves, usage.c).  While another worker
 * is in such a transaction, a commit of ours would wait for its WAL flush
 * (an fdatasync, under WALWriteLock) and then flush again, and our
 * transfers would stand still meanwhile.  Instead we keep our answers back
 * and go on with the transfers, and the other wakes us when its commit is
 * done: our next transaction carries every row that ended meanwhile, under
 * one WAL flush.
 * Nothing is given to a caller before its row is committed, as always.
 * The wait is bounded (IGNY8_FLUSH_DEFER_MS): a worker killed in its
 * transaction wakes no one.
 */
static bool
defer_flush(Igny8UsageWrite what)
{
	uint64		bit = UINT64CONST(1) << igny8_worker_index;
	bool		waiting = false;

	/* a commit that does not wait for its flush waits for no one */
	if (what != IGNY8_USAGE_WORKER_FLUSHES)
		return false;
	if (flush_deferred_since != 0 &&
		TimestampDifferenceExceeds(flush_deferred_since, GetCurrentTimestamp(),
								   IGNY8_FLUSH_DEFER_MS))
		return false;
	for (int w = 0; w < igny8_shared->nworkers; w++)
	{
		Igny8WorkerShared *other = &igny8_shared->workers[w];

		if (w == igny8_worker_index ||
			pg_atomic_read_u32(&other->flushing) == 0)
			continue;
		/*
		 * Ask to be woken, then look again (both full barriers, as on the
		 * other side): a commit that ended before it saw our bit has ended
		 * for us too.
		 */
		(void) pg_atomic_fetch_or_u64(&other->flush_waiters, bit);
		if (pg_atomic_read_u32(&other->flushing) != 0)
			waiting = true;
		else
			(void) pg_atomic_fetch_and_u64(&other->flush_waiters, ~bit);
	}
	if (waiting && flush_deferred_since == 0)
		flush_deferred_since = GetCurrentTimestamp();
	return waiting;
}

/* Write the usage rows (igny8_usage_flush), saying so to the others. */
static void
flush_usage(Igny8UsageWrite what)
{
	bool		flushes = (what == IGNY8_USAGE_WORKER_FLUSHES);

	if (flushes)
	{
		pg_atomic_write_u32(&me->flushing, 1);
		pg_memory_barrier();
	}
	igny8_usage_flush(config, what);
	if (flushes)
		wake_flush_waiters();
	flush_deferred_since = 0;
}

/* Let curl progress, handle what finished, start what is due. */
static void
run_jobs(bool fd_ready)
{
	Igny8Transfer *t;

	igny8_http_drive(fd_ready);
	for (;;)
	{
		bool		started = false;
		TimestampTz now;
		uint64		listed;

		while ((t = igny8_http_next_finished()) != NULL)
		{
			if (t->owner == NULL)
				igny8_image_cleanup_done(t);	/* a call of no job */
			else
				igny8_job_transfer_done((Igny8Job *) t->owner, t);
		}

		/* starting a transfer can finish it at once (a refused connection) */
		now = GetCurrentTimestamp();
		started = igny8_image_cleanups_run(now);
		listed = igny8_jobs_to_advance_listed;
		if (!dlist_is_empty(&igny8_jobs_to_advance))
		{
			int			n;
			Igny8Job  **jobs = igny8_jobs_in_order(&igny8_jobs_to_advance,
												   offsetof(Igny8Job, advance_node),
												   &n);

			/* (advancing a job forgets none: publishing does) */
			for (int i = 0; i < n; i++)
			{
				if (jobs[i]->advance_listed)
					started |= igny8_job_advance(jobs[i], now);
			}
			pfree(jobs);
		}
		MemoryContextSwitchTo(loop_cxt);
		/* a job that became one to advance meanwhile is advanced too */
		if (!started && listed == igny8_jobs_to_advance_listed)
			break;
		igny8_http_drive(false);
	}
}

/*
 * Settings a worker's transactions must not take from postgresql.conf or
 * from ALTER DATABASE / ALTER ROLE ... SET, set for the session, which
 * overrides both, also after a reload.  A database-wide
 * default_transaction_read_only would fail every usage write; repeatable
 * read would have a claim count running jobs in a snapshot taken before
 * its lock, and fail on rows updated since.  (statement_timeout and
 * lock_timeout cannot interrupt a worker: their timers raise SIGINT, which
 * it ignores, except during the configuration load and the sum of
 * budgets, which set their own; see load_limits_on.)  search_path is set before any SQL runs: nothing on a
 * writable schema can be picked.
 */
static void
pin_settings(void)
{
	static const char *const pinned[][2] = {
		{"search_path", "pg_catalog, pg_temp"},
		{"default_transaction_isolation", "read committed"},
		{"default_transaction_read_only", "off"},
		{"default_transaction_deferrable", "off"},
		{"row_security", "on"},
		{"session_replication_role", "origin"},
	};

	for (int i = 0; i < lengthof(pinned); i++)
		SetConfigOption(pinned[i][0], pinned[i][1], PGC_SUSET, PGC_S_SESSION);
}

void
igny8_worker_main(Datum main_arg)
{
	WaitEventSet *wes;
	int		   *newslots;

	igny8_worker_index = DatumGetInt32(main_arg);
	me = &igny8_shared->workers[igny8_worker_index];

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, handle_sigterm);
	/*
	 * pg_cancel_backend() would raise an error in the loop, which ends the
	 * worker without giving its requests an outcome: a worker is stopped
	 * with pg_terminate_backend(), gracefully.  Only the configuration's
	 * load takes it, for its timeouts (load_limits_on).
	 */
	pqsignal(SIGINT, SIG_IGN);
	BackgroundWorkerUnblockSignals();

	/*
	 * Answers of a megabyte or more (images) get memory of their own from
	 * the kernel and give it back when freed: glibc would otherwise raise
	 * its threshold after the first one and keep every later one in the
	 * heap, and a worker that made a few images would stay that large.
	 */
	mallopt(M_MMAP_THRESHOLD, IGNY8_MMAP_THRESHOLD);

	BackgroundWorkerInitializeConnection(igny8_database,
										 igny8_username[0] ? igny8_username : NULL,
										 0);
	pgstat_report_appname("igny8_ai worker");
	pin_settings();

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "igny8_ai loop",
									 ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(loop_cxt);

	igny8_http_init();
	(void) igny8_dsa();

	/* what a previous incarnation held is given back before we take more */
	igny8_places_forget_worker(igny8_worker_index);
	igny8_gpu_clock_forget_worker(igny8_worker_index);
	igny8_budget_forget_worker(igny8_worker_index);
	igny8_worker_started_at = GetCurrentTimestamp();
	SpinLockAcquire(&me->mutex);

	/*
	 * Was there an earlier incarnation of this worker in this run of the
	 * server, which may have left ComfyUI prompts behind?  One that exited
	 * left its start time here; one that died in a crash went with the
	 * shared memory, which the postmaster has made again since.  A worker
	 * started with the server has nothing to look for.
	 */
	swept = (me->started_at == 0 && igny8_shared_generation == 1);
	me->procno = MyProc->pgprocno;
	me->pid = MyProcPid;
	me->started_at = igny8_worker_started_at;
	/* not stalled before its first turn: it has a second to get there */
	pg_atomic_write_u64(&me->last_turn, (uint64) igny8_worker_started_at);
	/* a previous incarnation's scan times are not ours */
	pg_atomic_write_u64(&me->last_job_scan, 0);
	pg_atomic_write_u64(&me->next_job_scan, 0);
	SpinLockRelease(&me->mutex);
	pg_atomic_write_u32(&me->in_flight, 0);
	pg_atomic_write_u32(&me->flushing, 0);
	before_shmem_exit(worker_detach, (Datum) 0);

	recover_orphans();
	refresh_config(true, GetCurrentTimestamp());

	newslots = MemoryContextAlloc(TopMemoryContext,
								  sizeof(int) * igny8_shared->nslots);

	wes = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(wes, WL_SOCKET_READABLE, igny8_http_fd(), NULL, NULL);

	ereport(LOG,
			(errmsg("igny8_ai worker %d started in database \"%s\"",
					igny8_worker_index, igny8_database)));

	for (;;)
	{
		WaitEvent	events[3];
		int			nevents;
		bool		fd_ready = false;
		int			nnew;
		TimestampTz now;
		Igny8UsageWrite what;

		nevents = WaitEventSetWait(wes, wait_timeout(), events,
								   lengthof(events), PG_WAIT_EXTENSION);
		for (int i = 0; i < nevents; i++)
		{
			if (events[i].events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			if (events[i].events & WL_SOCKET_READABLE)
				fd_ready = true;
		}
		/* cleared before looking: a wake-up from now on is seen next time */
		(void) pg_atomic_exchange_u32(&me->wakeup, 0);	/* a full barrier */

		CHECK_FOR_INTERRUPTS();
		if (shutdown_requested)
			stop_gracefully();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			pg_atomic_fetch_add_u64(&me->reloads, 1);
		}
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);

		/*
		 * Take the new requests first, then look at the configuration: a
		 * request queued after its caller committed a configuration change
		 * must be routed with that change.
		 */
		nnew = take_new_slots(newslots);

		/*
		 * The loop turned: what was queued before the take is in our
		 * hands.  Published for choose_worker() and igny8_worker_status(),
		 * which tell a worker that stopped turning with requests in its
		 * queue (IGNY8_STALL_MS).  The clock is read here anyway, for
		 * refresh_config.
		 */
		now = GetCurrentTimestamp();
		pg_atomic_write_u64(&me->last_turn, (uint64) now);
		refresh_config(nnew > 0 && config == NULL, now);

		/*
		 * A change that committed while the configuration loaded (its
		 * generation moved since the load began) may not be in it, while
		 * the jobs and calls it was committed with are now visible: a job
		 * submitted in the transaction that deleted its alias would be
		 * routed to the alias.  Loaded again, once, before anything is
		 * routed.
		 */
		if (config_error == NULL &&
			pg_atomic_read_u64(&igny8_shared->config_generation) != config_generation)
			refresh_config(false, now);
		for (int i = 0; i < nnew; i++)
			igny8_job_route(igny8_job_create(newslots[i]), config,
							config_error);
		MemoryContextSwitchTo(loop_cxt);
		igny8_jobs_take(config);
		MemoryContextSwitchTo(loop_cxt);
		igny8_cache_lookup();
		MemoryContextSwitchTo(loop_cxt);

		check_abandoned();
		MemoryContextSwitchTo(loop_cxt);
		run_jobs(fd_ready);
		/* answers whose rows wait for the commit are published after it */
		what = igny8_usage_to_write();
		if (!defer_flush(what))
		{
			flush_usage(what);
			publish_finished();
		}
		/* last: what this turn started is sent, and its rows written */
		sum_budgets(now);
		igny8_job_counts_check();
	}
}
