/*-------------------------------------------------------------------------
 *
 * usage.c
 *	  Rows of ai_usage_log, one per attempt that reached the network,
 *	  written by the worker in its own transaction before any caller is
 *	  given its answer.
 *
 * Each loop iteration, igny8_usage_flush() writes the rows of every
 * attempt that ended since the last one, the outcome of the submitted jobs
 * that finished (jobtable.c), and the NOTIFY payloads of the health
 * changes it saw, in one transaction: one commit covers all the answers
 * of the iteration.  When it holds only synchronous calls' rows, the
 * commit does not wait for its WAL flush: each caller flushes up to it
 * before it takes its answer (igny8_usage_unflushed_lsn, dispatch.c).
 * The rows go in by up to USAGE_BATCH at a time, through INSERTs of 1 to
 * USAGE_BATCH rows, each prepared once and kept for the worker's life: the
 * executor is started once per statement, not once per row.  Strings are
 * converted from the worker's UTF-8 to the database encoding here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "worker.h"

#define USAGE_NARGS 24
#define USAGE_BATCH 8			/* rows per INSERT, at most */

/* [k - 1]: the INSERT of k rows, prepared when first needed */
static SPIPlanPtr insert_plans[USAGE_BATCH];
static Igny8PlanSet inserts = {insert_plans, USAGE_BATCH, NULL};

/*
 * Rows added and not inserted yet (usage_add), as the parameters of
 * the INSERT of npending rows.  Their datums live in the transaction's SPI
 * memory: they are inserted before its commit, or forgotten with it.
 */
static Datum pending_values[USAGE_BATCH * USAGE_NARGS];
static char pending_nulls[USAGE_BATCH * USAGE_NARGS];
static int	npending = 0;

/*
 * The end of the last usage commit whose WAL flush was left to the callers
 * (igny8_usage_unflushed_lsn), or InvalidXLogRecPtr.
 */
static XLogRecPtr unflushed_lsn = InvalidXLogRecPtr;

static bool anything_to_write(void);

/*
 * What igny8_usage_flush() has to write, and who waits for its commit's
 * WAL flush.  The callers of synchronous calls can flush for themselves
 * (igny8_wait in dispatch.c), but not for submitted jobs' outcomes, which
 * other sessions read, nor for a synchronous standby's confirmation, which
 * only the committer can wait for.  With synchronous_commit = off nothing
 * is flushed, by anyone.
 */
Igny8UsageWrite
igny8_usage_to_write(void)
{
	if (!anything_to_write())
		return IGNY8_USAGE_NOTHING;
	if (synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
		return IGNY8_USAGE_UNFLUSHED;
	if (igny8_jobs_to_write() ||
		(SyncRepRequested() &&
		 SyncRepStandbyNames != NULL && SyncRepStandbyNames[0] != '\0'))
		return IGNY8_USAGE_WORKER_FLUSHES;
	return IGNY8_USAGE_CALLERS_FLUSH;
}

/*
 * The WAL a caller must flush before it takes an answer published now: the
 * end of this worker's last usage commit that was not flushed (each commit
 * ends after the ones before it, so this covers every attempt of the call),
 * or InvalidXLogRecPtr once the WAL is flushed that far.
 */
XLogRecPtr
igny8_usage_unflushed_lsn(void)
{
	if (!XLogRecPtrIsInvalid(unflushed_lsn) &&
		unflushed_lsn <= GetFlushRecPtr(NULL))
		unflushed_lsn = InvalidXLogRecPtr;
	return unflushed_lsn;
}

/*
 * After an error: the prepared inserts are suspect, and the rows not
 * inserted went with their transaction.
 */
void
igny8_usage_reset(void)
{
	igny8_plans_forget(&inserts);
	npending = 0;
}

/* The INSERT of nrows rows into schema's ai_usage_log, prepared once. */
static SPIPlanPtr
insert_plan(const char *schema, int nrows)
{
	static const Oid row_types[USAGE_NARGS] = {
		UUIDOID, TIMESTAMPTZOID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		INT4OID, INT4OID, NUMERICOID, FLOAT8OID, INT4OID, BOOLOID, TEXTOID,
		INT4OID, TEXTOID, TEXTOID, INT4OID, INT4OID, INT4OID, INT4OID,
		NUMERICOID, BOOLOID, TEXTOID
	};
	Oid			types[USAGE_BATCH * USAGE_NARGS];
	StringInfoData sql;
	SPIPlanPtr *slot;

	Assert(nrows >= 1 && nrows <= USAGE_BATCH);
	slot = igny8_plan_slot(&inserts, nrows - 1, schema);
	if (*slot != NULL)
		return *slot;

	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s.ai_usage_log"
					 " (request_id, created_at, account_id, provider, task_type,"
					 " model_alias, model_used, input_tokens, output_tokens, cost,"
					 " duration_ms, http_status, success, error_message, attempt,"
					 " prompt, response, images, image_width, image_height, steps,"
					 " reference_cost, cached, api_key_ref) VALUES",
					 schema);
	for (int r = 0; r < nrows; r++)
	{
		appendStringInfoString(&sql, r == 0 ? " (" : ", (");
		for (int i = 0; i < USAGE_NARGS; i++)
		{
			appendStringInfo(&sql, i == 0 ? "$%d" : ", $%d",
							 r * USAGE_NARGS + i + 1);
			types[r * USAGE_NARGS + i] = row_types[i];
		}
		appendStringInfoChar(&sql, ')');
	}
	*slot = igny8_plan_keep(sql.data, nrows * USAGE_NARGS, types,
							"the ai_usage_log insert");
	pfree(sql.data);
	return *slot;
}

/* Insert the rows added since the last call.  Needs the same transaction. */
static void
insert_pending(const char *schema)
{
	int			ret;

	if (npending == 0)
		return;
	ret = SPI_execute_plan(insert_plan(schema, npending), pending_values,
						   pending_nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not insert into ai_usage_log: %s",
			 SPI_result_code_string(ret));
	npending = 0;
}

/* A UTF-8 string as a text datum in the database encoding, or NULL. */
static Datum
text_or_null(const char *s, char *nulls, int i)
{
	if (s == NULL)
	{
		nulls[i] = 'n';
		return (Datum) 0;
	}
	return CStringGetTextDatum(igny8_to_db_lossy(s));
}

/*
 * Add one row, inserted with the next USAGE_BATCH - 1 at the latest (and
 * by insert_pending before the commit).  Needs a transaction, SPI and a
 * snapshot.  The response is already in the database encoding; every other
 * string is UTF-8.
 */
static void
usage_add(const char *schema, const Igny8UsageRow *row)
{
	Datum	   *values = &pending_values[npending * USAGE_NARGS];
	char	   *nulls = &pending_nulls[npending * USAGE_NARGS];
	pg_uuid_t  *request_id = palloc(sizeof(pg_uuid_t));

	memset(nulls, ' ', USAGE_NARGS);
	*request_id = row->request_id;
	values[0] = UUIDPGetDatum(request_id);
	values[1] = TimestampTzGetDatum(row->at);
	values[2] = Int64GetDatum(row->account_id);
	if (!row->has_account)
		nulls[2] = 'n';
	values[3] = text_or_null(row->provider, nulls, 3);
	values[4] = text_or_null(row->task, nulls, 4);
	values[5] = text_or_null(row->alias, nulls, 5);
	values[6] = text_or_null(row->model, nulls, 6);
	values[7] = Int32GetDatum((int32) Min(row->input_tokens, PG_INT32_MAX));
	values[8] = Int32GetDatum((int32) Min(row->output_tokens, PG_INT32_MAX));
	values[9] = igny8_cost_datum(row->cost);
	values[10] = Float8GetDatum(row->duration_ms);
	values[11] = Int32GetDatum((int32) row->http_status);
	if (row->http_status <= 0)
		nulls[11] = 'n';
	values[12] = BoolGetDatum(row->success);
	values[13] = text_or_null(row->error, nulls, 13);
	values[14] = Int32GetDatum(row->attempt);
	values[15] = text_or_null(row->prompt, nulls, 15);
	if (row->response == NULL)
		nulls[16] = 'n';
	else
		values[16] = CStringGetTextDatum(row->response);
	/* image facts: NULL on text rows, and where unknown */
	values[17] = Int32GetDatum(row->images);
	values[18] = Int32GetDatum(row->image_width);
	values[19] = Int32GetDatum(row->image_height);
	values[20] = Int32GetDatum(row->steps);
	for (int i = 17; i <= 20; i++)
		if (DatumGetInt32(values[i]) <= 0 && !(i == 17 && row->is_image))
			nulls[i] = 'n';
	if (row->reference_cost == NULL)
		nulls[21] = 'n';
	else
		values[21] = igny8_cost_datum(row->reference_cost);
	values[22] = BoolGetDatum(row->cached);
	values[23] = text_or_null(row->api_key_ref, nulls, 23);

	if (++npending == USAGE_BATCH)
		insert_pending(schema);
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

/* Does anything wait to be written? */
static bool
anything_to_write(void)
{
	dlist_iter	iter;

	if (igny8_pending_notifies != NIL || igny8_jobs_to_write())
		return true;
	/* a usage row needs an attempt not logged, a cache row a finished job */
	dlist_foreach(iter, &igny8_jobs_ended)
	{
		Igny8Job   *job = dlist_container(Igny8Job, ended_node, iter.cur);
		ListCell   *lc;

		foreach(lc, job->attempts)
		{
			Igny8Attempt *a = lfirst(lc);

			if (a->sent && !a->logged)
				return true;
		}
		if (igny8_cache_to_write(job))
			return true;
	}
	return false;
}

static void
insert_job_rows(Igny8Config *config, Igny8Job *job)
{
	ListCell   *lc;

	foreach(lc, job->attempts)
	{
		Igny8Attempt *a = lfirst(lc);
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
		if (a->cost == NULL)
		{
			char	   *cost = igny8_attempt_cost(config, job, a,
												  a->success ? job->result.model : NULL);

			a->cost = MemoryContextStrdup(job->cxt, cost);
		}
		row.cost = a->cost;
		/* whatever set the cost (a cached answer's is 0), the reference's */
		if (a->reference_cost == NULL)
		{
			char	   *reference = igny8_attempt_reference_cost(config, job, a);

			if (reference)
				a->reference_cost = MemoryContextStrdup(job->cxt, reference);
		}
		row.reference_cost = a->reference_cost;
		row.duration_ms = a->duration_ms;
		row.http_status = a->http_status;
		row.success = a->success;
		row.error = a->error;
		row.attempt = a->number;
		row.is_image = (job->task == IGNY8_TASK_IMAGE);
		row.images = a->images;
		row.image_width = a->image_width;
		row.image_height = a->image_height;
		row.steps = a->steps;
		row.cached = a->cached;
		row.api_key_ref = a->api_key_ref;
		if (igny8_log_content)
		{
			row.prompt = job->request_json;
			if (a->success && last)
				row.response = job->result.content;
		}
		usage_add(config->schema, &row);
	}
}

static void
queue_budget_notices(void *arg)
{
	igny8_budget_queue_notices();
}

/*
 * Write the usage rows of every attempt not yet logged, and send the
 * pending NOTIFYs, in one transaction.  If that fails, the answers that
 * depended on it become errors: a caller is never told of a success whose
 * usage row is not committed.  Either way no row is written twice.
 */
void
igny8_usage_flush(Igny8Config *config, Igny8UsageWrite what)
{
	dlist_iter	iter;
	dlist_mutable_iter miter;
	ListCell   *lc;
	int			nended;
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool committed = false;

	if (what == IGNY8_USAGE_NOTHING)
		return;
	Assert(npending == 0);

	PG_TRY();
	{
		igny8_worker_begin("igny8_ai: writing ai_usage_log");
		if (config == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"igny8_ai\" is not installed")));

		/*
		 * Only synchronous calls' rows: the commit does not wait for its
		 * WAL flush, their callers do it (igny8_wait in dispatch.c) before
		 * they take the answers.  The loop goes on with the transfers
		 * instead of standing still for an fdatasync per iteration.
		 */
		if (what == IGNY8_USAGE_CALLERS_FLUSH)
			(void) set_config_option("synchronous_commit", "off",
									 PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_LOCAL, true, 0, false);
		{
			Igny8Job  **ended = igny8_jobs_in_order(&igny8_jobs_ended,
													offsetof(Igny8Job, ended_node),
													&nended);

			for (int i = 0; i < nended; i++)
			{
				insert_job_rows(config, ended[i]);
				igny8_cache_write(ended[i]);
			}
		}
		insert_pending(config->schema);
		igny8_jobs_write(config);
		foreach(lc, igny8_pending_notifies)
			Async_Notify("igny8_ai_health", (char *) lfirst(lc));
		igny8_worker_commit();
		committed = true;
		if (what == IGNY8_USAGE_CALLERS_FLUSH &&
			XactLastCommitEnd > unflushed_lsn)
			unflushed_lsn = XactLastCommitEnd;
		igny8_jobs_flushed(true);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		igny8_worker_recover();
		igny8_jobs_flushed(false);
		/* the rows are lost; say so to the callers rather than loop */
		dlist_foreach(iter, &igny8_jobs_ended)
		{
			Igny8Job   *job = dlist_container(Igny8Job, ended_node, iter.cur);

			if (job->state == JOB_FINISHED && job->success)
			{
				MemoryContext old = MemoryContextSwitchTo(job->cxt);

				igny8_job_finish_error(job, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
									   pstrdup("could not write ai_usage_log"),
									   pstrdup("The provider answered, but the usage row could not be written; see the server log."),
									   NULL);
				MemoryContextSwitchTo(old);
			}
		}
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);

	/* the cache keys of the calls that ended: stored, or given up */
	igny8_cache_written(committed);

	/* sent, or lost with the transaction: never twice */
	list_free_deep(igny8_pending_notifies);
	igny8_pending_notifies = NIL;

	/*
	 * logged, or given up on: never write them twice.  Either way the
	 * attempts that reached the network are counted on their provider (a
	 * cached answer is marked sent for its usage row, but reached nothing).
	 * A job that is not finished leaves igny8_jobs_ended until its next
	 * attempt ends.
	 */
	dlist_foreach_modify(miter, &igny8_jobs_ended)
	{
		Igny8Job   *job = dlist_container(Igny8Job, ended_node, miter.cur);

		foreach(lc, job->attempts)
		{
			Igny8Attempt *a = (Igny8Attempt *) lfirst(lc);

			if (a->sent && !a->cached && !a->logged)
				igny8_provider_count_attempt(a->provider, a->success);
			/* the budgets: reservation given back, committed cost spent */
			if (!a->logged && job->has_account)
			{
				igny8_budget_settle(job->account_id, a->budget_reserved,
									a->budget_made,
									(committed && a->sent) ? a->cost : NULL);
				a->budget_reserved = 0;
			}
			igny8_attempt_mark_logged(a);
		}
		if (job->state != JOB_FINISHED)
			igny8_job_unlist_ended(job);
	}

	/* a budget's warning threshold reached: NOTIFY igny8_ai_budget */
	if (igny8_budget_notices_pending())
		(void) igny8_worker_transaction("igny8_ai: budget notice",
										queue_budget_notices, NULL);
}
