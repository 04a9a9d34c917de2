/*-------------------------------------------------------------------------
 *
 * dispatch_batch.c
 *	  The caller's side of igny8_generate_text_batch(): every prompt of an
 *	  array is a request of its own, all in flight at once (one slot each),
 *	  waited for together, and answered as one row each, in input order.
 *
 * A prompt that fails does not fail the call: its row carries the error
 * and its SQLSTATE.  Bad arguments, and a batch larger than the free
 * request slots, are refused before anything is submitted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/tuplestore.h"
#include "utils/uuid.h"

#include "igny8_ai.h"

PG_FUNCTION_INFO_V1(igny8_generate_text_batch);

#define BATCH_COLUMNS		12

/* While a prompt's request is built: which prompt an error is about. */
static void
prompt_context(void *arg)
{
	errcontext("prompt at ord %d of the batch", *(int *) arg);
}

/*
 * The prompts of a one-dimensional text array, checked: none NULL or
 * blank.  Sets *n; an empty array gives none.
 */
static char **
batch_prompts(ArrayType *arr, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	char	  **prompts;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prompts must be a one-dimensional array"),
				 errdetail("prompts has %d dimensions.", ARR_NDIM(arr)),
				 errhint("Pass an array such as ARRAY['first prompt', 'second prompt'].")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, n);

	prompts = palloc(sizeof(char *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("prompts must not contain null"),
					 errdetail("The prompt at ord %d is null.", i + 1),
					 errhint("Leave the nulls out, e.g. with array_remove(prompts, NULL).")));
		prompts[i] = TextDatumGetCString(elems[i]);
		if (igny8_is_blank(prompts[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("prompts must not contain an empty prompt"),
					 errdetail("The prompt at ord %d is empty.", i + 1)));
	}
	return prompts;
}

/*
 * One answered slot as a row: the answer, or the error the worker left
 * (message and detail) and its SQLSTATE, with content and the answer's
 * labels NULL.
 */
static HeapTuple
batch_tuple(TupleDesc tupdesc, int ord, int slotno,
			const pg_uuid_t *request_id)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	Datum		values[BATCH_COLUMNS];
	bool		nulls[BATCH_COLUMNS];
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

	memset(nulls, 0, sizeof(nulls));
	values[0] = Int32GetDatum(ord);
	if (slot->success)
	{
		char	   *strs[2];

		/* the worker validated it and converted it to the database encoding */
		igny8_unpack_strings(igny8_dsa(), slot->result, 2, strs);
		values[1] = CStringGetTextDatum(strs[0] ? strs[0] : "");
		values[2] = CStringGetTextDatum(slot->provider);
		values[3] = CStringGetTextDatum(slot->model_used);
		values[4] = Int32GetDatum((int32) Min(slot->input_tokens, PG_INT32_MAX));
		values[5] = Int32GetDatum((int32) Min(slot->output_tokens, PG_INT32_MAX));
		values[6] = igny8_cost_datum(slot->cost);
		nulls[10] = nulls[11] = true;
	}
	else
	{
		Igny8SlotError err;

		igny8_slot_error(slotno, &err);
		for (int i = 1; i <= 6; i++)
			nulls[i] = true;
		values[10] = CStringGetTextDatum(err.detail ?
										 psprintf("%s\n%s", err.message,
												  err.detail) :
										 err.message);
		values[11] = CStringGetTextDatum(unpack_sql_state(err.sqlerrcode));
	}
	values[7] = Float8GetDatum(slot->duration_ms);
	*id = *request_id;
	values[8] = UUIDPGetDatum(id);
	values[9] = Int32GetDatum(slot->attempts);
	return heap_form_tuple(tupdesc, values, nulls);
}

/*
 * igny8_generate_text_batch(prompts text[], model text, options jsonb)
 * returns table (ord, content, provider, model, input_tokens,
 * output_tokens, cost, duration_ms, request_id, attempts, error, sqlstate)
 */
Datum
igny8_generate_text_batch(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Igny8TextOptions o;
	const char *alias;
	char	  **prompts;
	char	  **requests;
	pg_uuid_t  *ids;
	int		   *slots;
	int			n;
	int			mark;
	int			ord = 0;
	ErrorContextCallback errcb;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("prompts must not be null"),
				 errhint("Pass an array of prompts; an empty array returns no rows.")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model must not be null"),
				 errhint("Pass a model alias from igny8_models, such as \"gpt-4\".")));

	prompts = batch_prompts(PG_GETARG_ARRAYTYPE_P(0), &n);
	alias = igny8_check_alias(PG_GETARG_TEXT_PP(1));
	igny8_text_options(PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2), true, NULL,
					   &o);

	requests = palloc(sizeof(char *) * Max(n, 1));
	errcb.callback = prompt_context;
	errcb.arg = &ord;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	for (int i = 0; i < n; i++)
	{
		ord = i + 1;
		requests[i] = igny8_text_request(prompts[i], &o);
	}
	error_context_stack = errcb.previous;

	InitMaterializedSRF(fcinfo, 0);
	if (n == 0)
		return (Datum) 0;
	igny8_check_free_slots(n);

	mark = igny8_slots_held();
	ids = palloc(sizeof(pg_uuid_t) * n);
	slots = palloc(sizeof(int) * n);
	for (int i = 0; i < n; i++)
		igny8_new_request_id(&ids[i]);

	PG_TRY();
	{
		igny8_submit_all(IGNY8_TASK_TEXT, alias, requests, n, o.timeout_ms,
						 o.has_account, o.account_id, ids, slots);
		igny8_wait(slots, n);
		for (int i = 0; i < n; i++)
			tuplestore_puttuple(rsinfo->setResult,
								batch_tuple(rsinfo->setDesc, i + 1, slots[i],
											&ids[i]));
	}
	PG_CATCH();
	{
		igny8_abandon_since(mark);
		PG_RE_THROW();
	}
	PG_END_TRY();

	for (int i = 0; i < n; i++)
		igny8_release_slot(slots[i]);
	return (Datum) 0;
}
