/*-------------------------------------------------------------------------
 *
 * extension.c
 *	  Events of the extension's own objects that the workers must hear of:
 *	  a configuration change or a submitted job reaching COMMIT (or COMMIT
 *	  PREPARED), a cancelled job's commit.  (What DROP EXTENSION must do
 *	  first is done in PL/pgSQL by the install script's event triggers,
 *	  which work without the library.)
 *
 * The configuration tables' statement triggers call igny8_config_changed();
 * at COMMIT the transaction callback bumps the configuration generation in
 * shared memory and wakes the workers, which reload.  A change made in a
 * prepared transaction is committed by COMMIT PREPARED, perhaps in another
 * session, which runs no trigger: a ProcessUtility hook, present in every
 * backend since the module is preloaded, bumps the generation after any
 * COMMIT PREPARED.  PREPARE itself forgets the pending change of the
 * session, and a rolled back change is never announced.
 *
 * Jobs go the same way: igny8_jobs' statement trigger (any insert, through
 * the submit functions or not) calls igny8_jobs_submitted(), and the
 * commit bumps the jobs generation and wakes the workers, which take the
 * new jobs.  igny8_cancel_job() of a running job tells the worker running
 * it at commit, so that a cancel rolled back stops nothing; every cancel
 * wakes the job's waiters at commit.  A queued job's cancel sends its
 * NOTIFY igny8_ai_jobs just before the commit, not when it is called: a
 * transaction that sent a NOTIFY cannot be prepared, and a cancel in a
 * prepared transaction (whose listeners hear nothing) must not fail.  So
 * the pending cancels remember the subtransaction that made them, and
 * those of a subtransaction rolled back are forgotten.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "igny8_ai.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(igny8_config_changed);
PG_FUNCTION_INFO_V1(igny8_jobs_submitted);
PG_FUNCTION_INFO_V1(igny8_in_worker);
PG_FUNCTION_INFO_V1(igny8_is_worker_role);

static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static bool config_change_pending = false;
static bool config_change_started = false;	/* counted in config_started */
static bool jobs_pending = false;
static List *cancels_pending = NIL;	/* PendingCancel, in TopTransactionContext */
static bool xact_callback_registered = false;

/* A job cancelled in this transaction. */
typedef struct PendingCancel
{
	int64		id;
	int			level;			/* the (sub)transaction nesting level of it */
	bool		queued;			/* it was queued: NOTIFY igny8_ai_jobs */
} PendingCancel;

/* Tell every worker that the configuration changed. */
static void
announce_config_change(void)
{
	if (igny8_shared == NULL)
		return;
	pg_atomic_fetch_add_u64(&igny8_shared->config_generation, 1);
	igny8_wake_all_workers();
}

/*
 * Tell the worker running each job whose cancel committed, and wake the
 * sessions waiting for the jobs.  A running job's cancel whose run is in
 * no slot (its worker died, a scan is taking it back or a claim is taking
 * it up) has every worker scan igny8_jobs: the scans honour
 * igny8_job_cancels, running or queued again.
 */
static void
announce_cancels(void)
{
	ListCell   *lc;
	int64	   *ids = palloc(sizeof(int64) * list_length(cancels_pending));
	int			n = 0;
	bool		scan = false;

	foreach(lc, cancels_pending)
	{
		PendingCancel *c = lfirst(lc);
		int64		id = c->id;
		bool		found = false;

		ids[n++] = id;

		for (int i = 0; i < igny8_shared->nslots; i++)
		{
			Igny8Slot  *slot = &igny8_slots[i];
			int			worker = -1;

			SpinLockAcquire(&slot->mutex);
			if (slot->job_id == id && slot->state == IGNY8_SLOT_RUNNING)
			{
				slot->job_cancel = true;
				worker = slot->worker;
			}
			SpinLockRelease(&slot->mutex);
			if (worker >= 0)
			{
				pg_atomic_write_u32(&igny8_shared->workers[worker].abandons, 1);
				igny8_wake_worker(worker);
				found = true;

				/*
				 * No break: a run of an earlier job with the same id (the
				 * extension dropped and created again meanwhile) may hold
				 * a slot too; the worker stops only the runs whose cancel
				 * its table holds.
				 */
			}
		}
		if (!found && !c->queued)
			scan = true;
	}
	igny8_wake_job_waiters(ids, n);
	if (scan)
		igny8_jobs_request_scan();
	pfree(ids);
}

/* Just before the commit: the NOTIFY of each queued job cancelled. */
static void
notify_cancels(void)
{
	ListCell   *lc;

	foreach(lc, cancels_pending)
	{
		PendingCancel *c = lfirst(lc);

		if (c->queued)
			Async_Notify("igny8_ai_jobs",
						 psprintf("{\"id\": " INT64_FORMAT ", \"state\": \"cancelled\"}",
								  c->id));
	}
}

/* Is a queued job's cancel pending, made at this nesting level or deeper? */
static bool
queued_cancel_pending(int level)
{
	ListCell   *lc;

	foreach(lc, cancels_pending)
	{
		PendingCancel *c = lfirst(lc);

		if (c->queued && c->level >= level)
			return true;
	}
	return false;
}

static void
xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			/* before PreCommit_Notify(), which queues what was notified */
			notify_cancels();

			/*
			 * Counted before the commit is visible, and in
			 * config_generation after it (announce_config_change): a
			 * worker whose claim saw the commit, and so the jobs it
			 * submitted, knows its configuration may lack the change
			 * (igny8_worker_claim_config).  An abort after this counts the
			 * generation too, so the two counters meet again.
			 */
			if (config_change_pending && igny8_shared != NULL)
			{
				pg_atomic_fetch_add_u64(&igny8_shared->config_started, 1);
				config_change_started = true;
			}
			return;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (config_change_pending)
				announce_config_change();
			if (jobs_pending)
				igny8_jobs_announce();
			if (cancels_pending != NIL && igny8_shared != NULL)
				announce_cancels();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			if (config_change_started)
				announce_config_change();
			/*
			 * A queued job's cancel locked its row until now, and a claim
			 * skips a locked row without a trace: the workers look again.
			 */
			if (queued_cancel_pending(0) && igny8_shared != NULL)
				igny8_jobs_announce();
			break;
		case XACT_EVENT_PREPARE:
			/* COMMIT or ROLLBACK PREPARED announces it (below) */
			break;
		default:
			return;
	}
	config_change_pending = false;
	config_change_started = false;
	jobs_pending = false;
	/* the list was in TopTransactionContext, gone with it */
	cancels_pending = NIL;
}

/*
 * The cancels of a subtransaction rolled back are forgotten; those of one
 * committed become its parent's.
 */
static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* (a queued job's row it locked is free again, as at ABORT) */
		if (queued_cancel_pending(level) && igny8_shared != NULL)
			igny8_jobs_announce();
		foreach(lc, cancels_pending)
		{
			if (((PendingCancel *) lfirst(lc))->level >= level)
				cancels_pending = foreach_delete_current(cancels_pending, lc);
		}
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, cancels_pending)
		{
			PendingCancel *c = lfirst(lc);

			if (c->level >= level)
				c->level = level - 1;
		}
	}
}

static void
register_xact_callback(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(xact_callback, NULL);
		RegisterSubXactCallback(subxact_callback, NULL);
		xact_callback_registered = true;
	}
}

/* Called by the statement triggers on the configuration tables. */
void
igny8_config_changed_at_commit(void)
{
	register_xact_callback();
	config_change_pending = true;
}

/* Jobs were inserted into igny8_jobs: wake the workers at commit. */
void
igny8_jobs_queued_at_commit(void)
{
	register_xact_callback();
	jobs_pending = true;
}

/*
 * A job was cancelled (queued: it is now): its NOTIFY just before the
 * commit, then tell its worker and wake its waiters.
 */
void
igny8_job_cancel_at_commit(int64 id, bool queued)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	PendingCancel *c = palloc(sizeof(PendingCancel));

	register_xact_callback();
	c->id = id;
	c->level = GetCurrentTransactionNestLevel();
	c->queued = queued;
	cancels_pending = lappend(cancels_pending, c);
	MemoryContextSwitchTo(old);
}

/* Did this transaction cancel the running job id (told at its commit)? */
bool
igny8_job_cancel_pending(int64 id)
{
	ListCell   *lc;

	foreach(lc, cancels_pending)
	{
		PendingCancel *c = lfirst(lc);

		if (c->id == id && !c->queued)
			return true;
	}
	return false;
}

Datum
igny8_config_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("igny8_config_changed() must be called as a trigger")));
	igny8_config_changed_at_commit();
	return PointerGetDatum(NULL);
}

Datum
igny8_jobs_submitted(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("igny8_jobs_submitted() must be called as a trigger")));
	igny8_jobs_queued_at_commit();
	return PointerGetDatum(NULL);
}

/*
 * After a successful COMMIT PREPARED the prepared transaction's changes
 * are visible; if it changed the configuration, the workers must reload,
 * if it submitted jobs, they must take them, and if it changed the
 * account bindings, the shared copy of them must go (account.c).
 * Which prepared transactions did is not known here (it may have been
 * prepared before a restart), so every COMMIT PREPARED is announced: a
 * reload costs a worker a few milliseconds, a look for jobs less.  A
 * cancel in a prepared transaction was not told to its worker at PREPARE:
 * every worker scans its jobs' rows now (igny8_jobs_request_scan), and
 * every backend waiting for a job looks at it again.  A ROLLBACK PREPARED
 * frees the rows of queued jobs its cancels locked, which claims passed
 * over: the workers look for jobs again.
 */
static void
igny8_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	bool		commit_prepared;
	bool		rollback_prepared;

	commit_prepared = IsA(parsetree, TransactionStmt) &&
		((TransactionStmt *) parsetree)->kind == TRANS_STMT_COMMIT_PREPARED;
	rollback_prepared = IsA(parsetree, TransactionStmt) &&
		((TransactionStmt *) parsetree)->kind == TRANS_STMT_ROLLBACK_PREPARED;

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	if (commit_prepared)
	{
		/* counted in both, as a commit that changed it is (xact_callback) */
		if (igny8_shared != NULL)
			pg_atomic_fetch_add_u64(&igny8_shared->config_started, 1);
		announce_config_change();
		igny8_jobs_request_scan();
		igny8_bindings_changed();
		/* a queued job it cancelled has no worker to announce it */
		igny8_wake_all_job_waiters();
	}
	/* a queued job's row its cancel locked is free again: look again */
	if (rollback_prepared)
		igny8_jobs_announce();
}

/* Install the hook; called from _PG_init in the postmaster. */
void
igny8_extension_hooks_init(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = igny8_ProcessUtility;
}

/*
 * True in an igny8_ai worker, false in any other backend.  The row-level
 * security policies that let the workers take every job and write every
 * account's usage rows admit these processes, whatever role
 * igny8_ai.username names: they are made by CREATE EXTENSION, so that a
 * dump and restore (which does not dump policies on the extension's
 * tables) or a DROP and CREATE EXTENSION keeps them.
 */
Datum
igny8_in_worker(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(igny8_worker_index >= 0);
}

/*
 * Is role the one the workers connect as (igny8_ai.username; empty: the
 * bootstrap superuser)?  igny8_grant_usage() refuses to bind it.  Only the
 * answer for the role asked about: the setting is for superusers to read.
 */
Datum
igny8_is_worker_role(PG_FUNCTION_ARGS)
{
	Oid			role = PG_GETARG_OID(0);
	Oid			workers;

	if (igny8_username == NULL || igny8_username[0] == '\0')
		workers = BOOTSTRAP_SUPERUSERID;
	else
		workers = get_role_oid(igny8_username, true);
	PG_RETURN_BOOL(OidIsValid(workers) && workers == role);
}
