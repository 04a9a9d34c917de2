/*-------------------------------------------------------------------------
 *
 * extension.c
 *	  Events of the extension's own objects that the workers must hear of:
 *	  a configuration change reaching COMMIT (or COMMIT PREPARED), and DROP
 *	  EXTENSION, which first removes what igny8_ai put into pg_cron.
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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/event_trigger.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/builtins.h"

#include "igny8_ai.h"

PG_FUNCTION_INFO_V1(igny8_config_changed);
PG_FUNCTION_INFO_V1(igny8_on_drop_extension);

static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static bool config_change_pending = false;
static bool xact_callback_registered = false;

/* Tell every worker that the configuration changed. */
static void
announce_config_change(void)
{
	if (igny8_shared == NULL)
		return;
	pg_atomic_fetch_add_u64(&igny8_shared->config_generation, 1);
	igny8_wake_all_workers();
}

static void
config_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (config_change_pending)
				announce_config_change();
			config_change_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* COMMIT PREPARED announces it (below), ROLLBACK never */
			config_change_pending = false;
			break;
		default:
			break;
	}
}

/* Called by the statement triggers on the configuration tables. */
void
igny8_config_changed_at_commit(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(config_xact_callback, NULL);
		xact_callback_registered = true;
	}
	config_change_pending = true;
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

/*
 * After a successful COMMIT PREPARED the prepared transaction's changes
 * are visible; if it changed the configuration, the workers must reload.
 * Which prepared transactions did is not known here (it may have been
 * prepared before a restart), so every COMMIT PREPARED is announced: a
 * reload costs a worker a few milliseconds.
 */
static void
igny8_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	bool		commit_prepared;

	commit_prepared = IsA(parsetree, TransactionStmt) &&
		((TransactionStmt *) parsetree)->kind == TRANS_STMT_COMMIT_PREPARED;

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	if (commit_prepared)
		announce_config_change();
}

/* Install the hook; called from _PG_init in the postmaster. */
void
igny8_extension_hooks_init(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = igny8_ProcessUtility;
}

/*
 * Event trigger on DROP EXTENSION: when the command drops igny8_ai, remove
 * what the extension put into pg_cron first (its health job, and the
 * trigger on cron.job that lets a restore bring that job back), so that no
 * job is left calling a function that is gone and nothing outside the
 * extension depends on its functions.  Being transactional, a DROP that is
 * rolled back keeps both.
 */
Datum
igny8_on_drop_extension(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	DropStmt   *stmt;
	ListCell   *lc;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("igny8_on_drop_extension() must be called as an event trigger")));
	trigdata = (EventTriggerData *) fcinfo->context;
	if (!IsA(trigdata->parsetree, DropStmt))
		PG_RETURN_NULL();
	stmt = (DropStmt *) trigdata->parsetree;
	if (stmt->removeType != OBJECT_EXTENSION)
		PG_RETURN_NULL();

	foreach(lc, stmt->objects)
	{
		int			ret;

		if (strcmp(strVal(lfirst(lc)), "igny8_ai") != 0)
			continue;
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		ret = SPI_execute("SELECT n.nspname FROM pg_catalog.pg_extension e"
						  " JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace"
						  " WHERE e.extname OPERATOR(pg_catalog.=) 'igny8_ai'",
						  true, 1);
		if (ret == SPI_OK_SELECT && SPI_processed == 1)
		{
			char	   *schema = SPI_getvalue(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1);

			ret = SPI_execute(psprintf("SELECT %s.igny8_forget_cron()",
									   quote_identifier(schema)),
							  false, 0);
			if (ret != SPI_OK_SELECT)
				elog(ERROR, "could not remove the igny8_ai pg_cron job: %s",
					 SPI_result_code_string(ret));
		}
		SPI_finish();
	}
	PG_RETURN_NULL();
}
