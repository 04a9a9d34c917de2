/*-------------------------------------------------------------------------
 *
 * usage.c
 *	  Rows of ai_usage_log, one per attempt, inserted by the worker in its
 *	  own transaction before the caller is given its answer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "worker.h"

#define USAGE_NARGS 17

static SPIPlanPtr insert_plan = NULL;
static char *insert_schema = NULL;

/* Forget the prepared insert (the extension was dropped or moved). */
void
igny8_usage_reset(void)
{
	if (insert_plan)
		SPI_freeplan(insert_plan);
	insert_plan = NULL;
	if (insert_schema)
		pfree(insert_schema);
	insert_schema = NULL;
}

static void
prepare(const char *schema)
{
	Oid			types[USAGE_NARGS] = {
		UUIDOID, TIMESTAMPTZOID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		INT4OID, INT4OID, FLOAT8OID, FLOAT8OID, INT4OID, BOOLOID, TEXTOID,
		INT4OID, TEXTOID, TEXTOID
	};
	char	   *sql;

	sql = psprintf("INSERT INTO %s.ai_usage_log"
				   " (request_id, created_at, account_id, provider, task_type,"
				   " model_alias, model_used, input_tokens, output_tokens, cost,"
				   " duration_ms, http_status, success, error_message, attempt,"
				   " prompt, response)"
				   " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
				   " $10::pg_catalog.numeric, $11, $12, $13, $14, $15, $16, $17)",
				   schema);
	insert_plan = SPI_prepare(sql, USAGE_NARGS, types);
	if (insert_plan == NULL)
		elog(ERROR, "could not prepare the ai_usage_log insert: %s",
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(insert_plan);
	insert_schema = MemoryContextStrdup(TopMemoryContext, schema);
	pfree(sql);
}

static Datum
text_or_null(const char *s, char *nulls, int i)
{
	if (s == NULL)
	{
		nulls[i] = 'n';
		return (Datum) 0;
	}
	return CStringGetTextDatum(s);
}

/* Insert one row.  Needs a transaction, SPI and a snapshot. */
void
igny8_usage_insert(const char *schema, const Igny8UsageRow *row)
{
	Datum		values[USAGE_NARGS];
	char		nulls[USAGE_NARGS];
	int			ret;

	if (insert_plan == NULL || strcmp(insert_schema, schema) != 0)
	{
		igny8_usage_reset();
		prepare(schema);
	}

	memset(nulls, ' ', sizeof(nulls));
	values[0] = UUIDPGetDatum(&row->request_id);
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
	values[9] = Float8GetDatum(row->cost);
	values[10] = Float8GetDatum(row->duration_ms);
	values[11] = Int32GetDatum((int32) row->http_status);
	if (row->http_status <= 0)
		nulls[11] = 'n';
	values[12] = BoolGetDatum(row->success);
	values[13] = text_or_null(row->error, nulls, 13);
	values[14] = Int32GetDatum(row->attempt);
	values[15] = text_or_null(row->prompt, nulls, 15);
	values[16] = text_or_null(row->response, nulls, 16);

	ret = SPI_execute_plan(insert_plan, values, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not insert into ai_usage_log: %s",
			 SPI_result_code_string(ret));
}
