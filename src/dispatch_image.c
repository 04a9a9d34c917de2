/*-------------------------------------------------------------------------
 *
 * dispatch_image.c
 *	  The caller's side of image generation: igny8_generate_image() and
 *	  igny8_generate_images().  The arguments are checked here, a seed is
 *	  chosen for each image, and the requests go to the workers at once
 *	  (one slot per image) and are waited for together.
 *
 * The image comes back as bytes in the payload area and is copied once,
 * into the bytea returned.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/uuid.h"

#include "igny8_ai.h"

PG_FUNCTION_INFO_V1(igny8_generate_image);
PG_FUNCTION_INFO_V1(igny8_generate_images);

#define IGNY8_MAX_IMAGES	8
#define IGNY8_MIN_SIDE		64
#define IGNY8_MAX_SIDE		4096
#define IGNY8_MAX_STEPS		150
#define IGNY8_MAX_CFG		30.0
/* seeds stay exact in JSON numbers (doubles) on their way to ComfyUI */
#define IGNY8_MAX_SEED		INT64CONST(9007199254740991)

#define IMAGE_COLUMNS		12

/* An image call, checked. */
typedef struct Igny8ImageCall
{
	const char *alias;
	char	   *prompt;
	char	   *negative_prompt;
	int			width;
	int			height;
	int			steps;			/* 0: the workflow's */
	bool		has_cfg;
	double		cfg;
	bool		has_seed;
	int64		seed;
	char	   *quality;
	char	   *style;
	int			timeout_ms;
	bool		has_timeout;
	bool		has_account;
	int64		account_id;
} Igny8ImageCall;

static void
bad_size(const char *size)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("size must be WIDTHxHEIGHT"),
			 errdetail("size was \"%s\".", size),
			 errhint("Width and height are multiples of 8 from %d to %d, such as '1024x1024'.",
					 IGNY8_MIN_SIDE, IGNY8_MAX_SIDE)));
}

/* "1024x768" into its two sides, each a multiple of 8 within the range. */
static void
parse_size(const char *size, int *width, int *height)
{
	const char *p = size;
	long		side[2];

	for (int i = 0; i < 2; i++)
	{
		long		v = 0;
		int			digits = 0;

		while (*p >= '0' && *p <= '9' && digits < 6)
		{
			v = v * 10 + (*p++ - '0');
			digits++;
		}
		if (digits == 0 || (i == 0 && *p != 'x') || (i == 1 && *p != '\0'))
			bad_size(size);
		if (i == 0)
			p++;
		if (v < IGNY8_MIN_SIDE || v > IGNY8_MAX_SIDE || v % 8 != 0)
			bad_size(size);
		side[i] = v;
	}
	*width = (int) side[0];
	*height = (int) side[1];
}

static char *
option_choice(JsonbValue *v, const char *name, const char *const *choices,
			  const char *listed)
{
	char	   *s = igny8_option_string(v, name);

	for (int i = 0; choices[i]; i++)
		if (strcmp(s, choices[i]) == 0)
			return s;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("option \"%s\" must be one of %s", name, listed),
			 errdetail("%s was \"%s\".", name, s)));
	return NULL;				/* keep the compiler quiet */
}

static void
parse_options(Igny8ImageCall *call, Jsonb *opts, Igny8JobOptions *job)
{
	static const char *const qualities[] = {"standard", "hd", "low", "medium",
	"high", "auto", NULL};
	static const char *const styles[] = {"vivid", "natural", NULL};
	JsonbIterator *it;
	JsonbValue	v;
	char	   *key = NULL;
	bool		has_account = false;
	int64		account_id = 0;

	if (opts != NULL)
	{
		it = igny8_options_begin(opts);
		while (igny8_next_option(&it, &key, &v))
		{
			if (strcmp(key, "negative_prompt") == 0)
				call->negative_prompt = igny8_option_string(&v, key);
			else if (strcmp(key, "steps") == 0)
				call->steps = (int) igny8_option_integer(&v, "steps", 1,
														 IGNY8_MAX_STEPS,
														 "an integer from 1 to 150");
			else if (strcmp(key, "cfg") == 0)
			{
				call->cfg = igny8_numeric_double(igny8_option_numeric(&v, "cfg"));
				if (!(call->cfg > 0 && call->cfg <= IGNY8_MAX_CFG))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("cfg must be greater than 0 and at most 30"),
							 errdetail("cfg was %g.", call->cfg)));
				call->has_cfg = true;
			}
			else if (strcmp(key, "seed") == 0)
			{
				call->seed = igny8_option_integer(&v, "seed", 0, IGNY8_MAX_SEED,
												  "an integer from 0 to 2^53 - 1");
				call->has_seed = true;
			}
			else if (strcmp(key, "quality") == 0)
				call->quality = option_choice(&v, key, qualities,
											  "standard, hd, low, medium, high, auto");
			else if (strcmp(key, "style") == 0)
				call->style = option_choice(&v, key, styles, "vivid, natural");
			else if (strcmp(key, "timeout") == 0)
			{
				call->timeout_ms = igny8_option_timeout_ms(&v);
				call->has_timeout = true;
			}
			else if (strcmp(key, "account_id") == 0)
			{
				account_id = igny8_option_account_id(&v);
				has_account = true;
			}
			else if (job == NULL || !igny8_job_option(job, key, &v))
				igny8_unknown_option(key, "negative_prompt, steps, cfg, seed, quality, style, timeout (seconds) and account_id",
									 job != NULL);
		}
	}
	igny8_resolve_account(has_account, account_id, &call->has_account,
						  &call->account_id);
}

/*
 * Check the arguments common to the image functions (job: those of
 * igny8_submit_image, whose options also say how the job runs).
 */
static void
check_call(FunctionCallInfo fcinfo, Igny8ImageCall *call, int options_arg,
		   Igny8JobOptions *job)
{
	memset(call, 0, sizeof(*call));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("prompt must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model must not be null"),
				 errhint("Pass an image model alias from igny8_models, such as \"dall-e-3\".")));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("size must not be null"),
				 errhint("Pass a size such as '1024x1024'.")));
	call->prompt = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (igny8_is_blank(call->prompt))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prompt must not be empty")));
	call->alias = igny8_check_alias(PG_GETARG_TEXT_PP(1));
	parse_size(text_to_cstring(PG_GETARG_TEXT_PP(2)), &call->width,
			   &call->height);
	call->timeout_ms = igny8_default_timeout_ms;
	parse_options(call, PG_ARGISNULL(options_arg) ? NULL :
				  PG_GETARG_JSONB_P(options_arg), job);
}

static int64
random_seed(void)
{
	uint64		r;

	if (!pg_strong_random(&r, sizeof(r)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	return (int64) (r & (uint64) IGNY8_MAX_SEED);
}

/* The normalized request of one image, with its seed. */
static char *
request_json(Igny8ImageCall *call, int64 seed)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"prompt\":");
	escape_json(&buf, call->prompt);
	if (call->negative_prompt)
	{
		appendStringInfoString(&buf, ",\"negative_prompt\":");
		escape_json(&buf, call->negative_prompt);
	}
	appendStringInfo(&buf, ",\"width\":%d,\"height\":%d", call->width,
					 call->height);
	if (call->steps > 0)
		appendStringInfo(&buf, ",\"steps\":%d", call->steps);
	if (call->has_cfg)
		appendStringInfo(&buf, ",\"cfg\":%.17g", call->cfg);
	appendStringInfo(&buf, ",\"seed\":\"" INT64_FORMAT "\"", seed);
	if (call->quality)
	{
		appendStringInfoString(&buf, ",\"quality\":");
		escape_json(&buf, call->quality);
	}
	if (call->style)
	{
		appendStringInfoString(&buf, ",\"style\":");
		escape_json(&buf, call->style);
	}
	appendStringInfoChar(&buf, '}');
	igny8_check_request_size(buf.len);
	return buf.data;
}

/*
 * igny8_submit_image(prompt, model, size, options): the arguments checked
 * as for igny8_generate_image, and the job's request with its seed.
 */
void
igny8_image_job_request(FunctionCallInfo fcinfo, Igny8JobOptions *job,
						Igny8Request *req)
{
	Igny8ImageCall call;

	check_call(fcinfo, &call, 3, job);
	req->task = IGNY8_TASK_IMAGE;
	req->alias = call.alias;
	req->seed = call.has_seed ? call.seed : random_seed();
	req->has_seed = call.has_seed;
	req->json = request_json(&call, req->seed);
	req->timeout_ms = call.timeout_ms;
	req->has_timeout = call.has_timeout;
	req->has_account = call.has_account;
	req->account_id = call.account_id;
}

/* One answered slot as an igny8_image row. */
static HeapTuple
image_tuple(TupleDesc tupdesc, int slotno, int64 seed,
			const pg_uuid_t *request_id)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	Datum		values[IMAGE_COLUMNS];
	bool		nulls[IMAGE_COLUMNS];
	char	   *strs[1];
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

	memset(nulls, 0, sizeof(nulls));
	values[0] = PointerGetDatum(igny8_unpack_blob(igny8_dsa(), slot->result,
												  1, strs));
	values[1] = CStringGetTextDatum("image/png");
	values[2] = Int32GetDatum(slot->image_width);
	values[3] = Int32GetDatum(slot->image_height);
	values[4] = Int64GetDatum(seed);
	if (strs[0])
		values[5] = CStringGetTextDatum(strs[0]);
	else
		nulls[5] = true;
	values[6] = CStringGetTextDatum(slot->provider);
	values[7] = CStringGetTextDatum(slot->model_used);
	values[8] = igny8_cost_datum(slot->cost);
	values[9] = Float8GetDatum(slot->duration_ms);
	*id = *request_id;
	values[10] = UUIDPGetDatum(id);
	values[11] = Int32GetDatum(slot->attempts);
	return heap_form_tuple(tupdesc, values, nulls);
}

/*
 * Make n images at once: one request each, all queued before any is waited
 * for.  Each gets its own seed (the caller's seed + i, or random).  The
 * first failure in input order is raised; the others are abandoned.
 */
static HeapTuple *
make_images(Igny8ImageCall *call, int n, TupleDesc tupdesc)
{
	int		   *slots = palloc(sizeof(int) * n);
	int64	   *seeds = palloc(sizeof(int64) * n);
	pg_uuid_t  *ids = palloc(sizeof(pg_uuid_t) * n);
	HeapTuple  *tuples = palloc(sizeof(HeapTuple) * n);
	char	  **requests = palloc(sizeof(char *) * n);
	int			mark;

	/* all or none: refused at once when there are not n free slots */
	if (n > 1)
		igny8_check_free_slots(n);
	mark = igny8_slots_held();
	for (int i = 0; i < n; i++)
	{
		seeds[i] = call->has_seed ?
			(call->seed + i) % (IGNY8_MAX_SEED + 1) : random_seed();
		requests[i] = request_json(call, seeds[i]);
		igny8_new_request_id(&ids[i]);
	}

	PG_TRY();
	{
		igny8_submit_all(IGNY8_TASK_IMAGE, call->alias, requests, n,
						 call->timeout_ms, call->has_account,
						 call->account_id, ids, slots);
		igny8_wait(slots, n);
		for (int i = 0; i < n; i++)
			if (!igny8_slots[slots[i]].success)
				igny8_report_slot_error(slots[i]);
		for (int i = 0; i < n; i++)
			tuples[i] = image_tuple(tupdesc, slots[i], seeds[i], &ids[i]);
	}
	PG_CATCH();
	{
		igny8_abandon_since(mark);
		PG_RE_THROW();
	}
	PG_END_TRY();

	for (int i = 0; i < n; i++)
		igny8_release_slot(slots[i]);
	return tuples;
}

/*
 * igny8_generate_image(prompt, model, size, options) returns igny8_image
 */
Datum
igny8_generate_image(PG_FUNCTION_ARGS)
{
	Igny8ImageCall call;
	TupleDesc	tupdesc;
	HeapTuple  *tuples;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	check_call(fcinfo, &call, 3, NULL);
	tuples = make_images(&call, 1, tupdesc);
	PG_RETURN_DATUM(HeapTupleGetDatum(tuples[0]));
}

/*
 * igny8_generate_images(prompt, model, size, n, options) returns setof
 * igny8_image
 */
Datum
igny8_generate_images(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Igny8ImageCall call;
	HeapTuple  *tuples;
	int			n;

	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("n must not be null")));
	n = PG_GETARG_INT32(3);
	if (n < 1 || n > IGNY8_MAX_IMAGES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("n must be between 1 and %d", IGNY8_MAX_IMAGES),
				 errdetail("n was %d.", n)));
	check_call(fcinfo, &call, 4, NULL);

	InitMaterializedSRF(fcinfo, 0);
	tuples = make_images(&call, n, rsinfo->setDesc);
	for (int i = 0; i < n; i++)
		tuplestore_puttuple(rsinfo->setResult, tuples[i]);
	return (Datum) 0;
}
