/*-------------------------------------------------------------------------
 *
 * submit.c
 *	  The caller's side of submitted jobs: igny8_submit_text, _chat, _image
 *	  and _batch queue rows in igny8_jobs in the caller's transaction;
 *	  igny8_wait_job waits for one on the latch; igny8_cancel_job cancels
 *	  one; igny8_job_progress says what the workers know of a running one.
 *
 * The arguments are checked exactly as the synchronous calls check them
 * (dispatch.c, dispatch_image.c), and the normalized request is what goes
 * into the row, so a worker runs a job as it runs a call.  Rows are
 * written as the owner of igny8_jobs (the caller only needs EXECUTE), with
 * submitted_by set to the calling role; what a caller reads it reads as
 * itself, through the table's row-level security.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "igny8_ai.h"

PG_FUNCTION_INFO_V1(igny8_submit_text);
PG_FUNCTION_INFO_V1(igny8_submit_chat);
PG_FUNCTION_INFO_V1(igny8_submit_image);
PG_FUNCTION_INFO_V1(igny8_submit_batch);
PG_FUNCTION_INFO_V1(igny8_job_progress);
PG_FUNCTION_INFO_V1(igny8_wait_job);
PG_FUNCTION_INFO_V1(igny8_cancel_job);

#define IGNY8_MAX_ATTEMPTS		100
#define IGNY8_DEFAULT_ATTEMPTS	3
#define IGNY8_MAX_KEY_LEN		200
#define IGNY8_MAX_BATCH			10000
/* a waiter looks at the row this often even if nobody wakes it */
#define IGNY8_WAIT_RECHECK_MS	5000

/* ----- options ----- */

static void
job_defaults(Igny8JobOptions *job)
{
	memset(job, 0, sizeof(*job));
	job->max_attempts = IGNY8_DEFAULT_ATTEMPTS;
}

static void
not_before_context(void *arg)
{
	errcontext("option \"not_before\" of the job");
}

/*
 * An option of a submitted job: priority, not_before, max_attempts,
 * idempotency_key.  False if key is none of them.
 */
bool
igny8_job_option(Igny8JobOptions *job, const char *key, JsonbValue *v)
{
	if (strcmp(key, "priority") == 0)
	{
		char	   *s = igny8_option_string(v, key);

		if (strcmp(s, "interactive") != 0 && strcmp(s, "background") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"priority\" must be \"interactive\" or \"background\""),
					 errdetail("priority was \"%s\".", s)));
		job->interactive = (strcmp(s, "interactive") == 0);
	}
	else if (strcmp(key, "not_before") == 0)
	{
		char	   *s = igny8_option_string(v, key);
		ErrorContextCallback context;
		TimestampTz t;

		/* timestamptz_in's own error (22007, 22008) names the option */
		context.callback = not_before_context;
		context.arg = NULL;
		context.previous = error_context_stack;
		error_context_stack = &context;
		t = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in,
													CStringGetDatum(s),
													ObjectIdGetDatum(InvalidOid),
													Int32GetDatum(-1)));
		error_context_stack = context.previous;

		if (TIMESTAMP_NOT_FINITE(t))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"not_before\" must be a finite timestamp"),
					 errdetail("not_before was \"%s\".", s)));
		job->has_not_before = true;
		job->not_before = t;
	}
	else if (strcmp(key, "max_attempts") == 0)
		job->max_attempts = (int) igny8_option_integer(v, "max_attempts", 1,
													   IGNY8_MAX_ATTEMPTS,
													   "an integer from 1 to 100");
	else if (strcmp(key, "idempotency_key") == 0)
	{
		char	   *s = igny8_option_string(v, key);

		if (igny8_is_blank(s) || strlen(s) > IGNY8_MAX_KEY_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"idempotency_key\" must be 1 to %d bytes, not blank",
							IGNY8_MAX_KEY_LEN),
					 errdetail("idempotency_key was %zu bytes.", strlen(s))));
		job->idempotency_key = s;
	}
	else
		return false;
	return true;
}

/* ----- the table, as its owner ----- */

typedef struct JobsTable
{
	char	   *schema;			/* quoted */
	Oid			owner;
} JobsTable;

/*
 * Where igny8_jobs is, and who owns it; an error if the extension is not
 * installed.  Needs SPI.
 */
static void
jobs_table(JobsTable *t)
{
	bool		isnull;
	int			ret;

	if (igny8_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("igny8_ai must be loaded via shared_preload_libraries"),
				 errhint("Add igny8_ai to shared_preload_libraries in postgresql.conf and restart the server.")));
	ret = SPI_execute("SELECT n.nspname, c.relowner FROM pg_catalog.pg_extension e"
					  " JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace"
					  " JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid"
					  " AND c.relname OPERATOR(pg_catalog.=) 'igny8_jobs'"
					  " WHERE e.extname OPERATOR(pg_catalog.=) 'igny8_ai'",
					  true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not look up the igny8_ai extension: %s",
			 SPI_result_code_string(ret));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"igny8_ai\" is not installed in this database")));
	t->schema = pstrdup(quote_identifier(SPI_getvalue(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 1)));
	t->owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 2,
											  &isnull));
}

typedef struct AsOwner
{
	Oid			save_user;
	int			save_sec;
} AsOwner;

/*
 * Run what follows as the table's owner, in a restricted context; an error
 * restores the caller's identity with the (sub)transaction.
 */
static void
as_owner(const JobsTable *t, AsOwner *s)
{
	GetUserIdAndSecContext(&s->save_user, &s->save_sec);
	SetUserIdAndSecContext(t->owner, s->save_sec |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
}

static void
as_caller(const AsOwner *s)
{
	SetUserIdAndSecContext(s->save_user, s->save_sec);
}

static const char *
kind_name(Igny8Task task)
{
	switch (task)
	{
		case IGNY8_TASK_CHAT:
			return "chat";
		case IGNY8_TASK_IMAGE:
			return "image";
		default:
			return "text";
	}
}

/*
 * A job's alias must exist and serve its task (itself, or through its
 * fallbacks), as igny8_models and igny8_fallbacks read in the submitting
 * transaction, as the tables' owner: the same errors as a call's (router.c),
 * raised before anything is queued.  An alias with no enabled deployment
 * is accepted: a provider may be off for a while, and the job fails when it
 * runs if it still is.  Needs SPI.
 */
static void
check_alias(const JobsTable *t, const Igny8Request *req)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	AsOwner		s;
	int			ret;
	bool		isnull;
	int64		rows;
	bool		serves;
	Igny8RouteError err;

	values[0] = CStringGetTextDatum(req->alias);
	values[1] = CStringGetTextDatum(req->task == IGNY8_TASK_IMAGE ? "image" : "text");
	as_owner(t, &s);
	ret = SPI_execute_with_args(psprintf(
		"WITH RECURSIVE reach(alias) AS ("
		" SELECT $1 UNION SELECT f.fallback_alias FROM %s.igny8_fallbacks f, reach r"
		"  WHERE f.alias OPERATOR(pg_catalog.=) r.alias)"
		" SELECT (SELECT pg_catalog.count(*) FROM %s.igny8_models m"
		"          WHERE m.alias OPERATOR(pg_catalog.=) $1),"
		"        EXISTS (SELECT FROM %s.igny8_models m, reach r"
		"                 WHERE m.alias OPERATOR(pg_catalog.=) r.alias"
		"                   AND m.task OPERATOR(pg_catalog.=) $2)",
		t->schema, t->schema, t->schema),
		2, types, values, NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read igny8_models: %s",
			 SPI_result_code_string(ret));
	rows = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));
	serves = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										SPI_tuptable->tupdesc, 2, &isnull));
	as_caller(&s);
	if (rows > 0 && serves)
		return;
	igny8_alias_error(req->alias, req->task, rows > 0, &err);
	ereport(ERROR,
			(errcode(err.sqlerrcode),
			 errmsg_internal("%s", err.message),
			 errhint("%s", err.hint)));
}

#define INSERT_NARGS 11

/* "its a", "its a and its b", "its a, its b and its c" */
static void
append_part(StringInfo buf, const char *part, int *n, int total)
{
	if (*n > 0)
		appendStringInfoString(buf, *n == total - 1 ? " and " : ", ");
	appendStringInfo(buf, "its %s", part);
	(*n)++;
}

/*
 * The id of the job the caller's key was used for, which the INSERT of
 * insert_job() found.  *diff is NULL when the job holds the same request
 * (kind, alias, account, request, a timeout given; an image's random seed
 * aside),
 * else what differs ("its kind and its model alias"), never anything of
 * the job's request (it may be another account's).  values/nulls are the
 * INSERT's.  Runs as the owner, under SPI.
 */
static int64
keyed_job(const JobsTable *t, Datum *values, char *nulls,
		  const Igny8Request *req, char **diff)
{
	Oid			ktypes[9] = {
		OIDOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, TEXTOID, INT4OID, BOOLOID,
		BOOLOID
	};
	Datum		kvalues[9];
	char		knulls[9];
	int			ret;
	bool		isnull;
	bool		same[4];
	int64		id;
	int			total = 0;
	int			n = 0;
	StringInfoData parts;
	const char *names[4] = {"kind", "model alias", "account_id", NULL};

	names[3] = req->task == IGNY8_TASK_CHAT ? "messages or options" :
		req->task == IGNY8_TASK_IMAGE ? "prompt, size or options" :
		"prompt or options";

	memset(knulls, ' ', sizeof(knulls));
	kvalues[0] = values[4];		/* submitted_by */
	kvalues[1] = values[9];		/* idempotency_key */
	kvalues[2] = values[0];		/* kind */
	kvalues[3] = values[1];		/* model_alias */
	kvalues[4] = values[3];		/* account_id */
	knulls[4] = nulls[3];
	kvalues[5] = values[2];		/* request */
	kvalues[6] = values[8];		/* timeout_ms */
	/* an image submitted without a seed got a random one: not compared */
	kvalues[7] = BoolGetDatum(req->task == IGNY8_TASK_IMAGE && !req->has_seed);
	/*
	 * A timeout not given is igny8_ai.default_timeout's, which a role or a
	 * session may set apart: a retry is the same request whatever it is.
	 */
	kvalues[8] = BoolGetDatum(!req->has_timeout);

	/*
	 * In READ COMMITTED this statement sees the job of a concurrent submit
	 * that the INSERT waited for; in REPEATABLE READ the INSERT has already
	 * failed with 40001 then.
	 */
	ret = SPI_execute_with_args(psprintf(
		"SELECT j.id,"
		" j.kind OPERATOR(pg_catalog.=) $3,"
		" j.model_alias OPERATOR(pg_catalog.=) $4,"
		" j.account_id IS NOT DISTINCT FROM $5,"
		" CASE WHEN $8"
		"  THEN (j.request OPERATOR(pg_catalog.-) 'seed'::pg_catalog.text)"
		"   OPERATOR(pg_catalog.=)"
		"   ($6::pg_catalog.jsonb OPERATOR(pg_catalog.-) 'seed'::pg_catalog.text)"
		"  ELSE j.request OPERATOR(pg_catalog.=) $6::pg_catalog.jsonb END"
		" AND ($9 OR j.timeout_ms OPERATOR(pg_catalog.=) $7)"
		" FROM %s.igny8_jobs j"
		" WHERE j.submitted_by OPERATOR(pg_catalog.=) $1::pg_catalog.regrole"
		" AND j.idempotency_key OPERATOR(pg_catalog.=) $2", t->schema),
		9, ktypes, kvalues, knulls, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read igny8_jobs: %s",
			 SPI_result_code_string(ret));
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	for (int i = 0; i < 4; i++)
	{
		same[i] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, i + 2,
											 &isnull));
		if (!same[i])
			total++;
	}
	*diff = NULL;
	if (total == 0)
		return id;
	initStringInfo(&parts);
	for (int i = 0; i < 4; i++)
		if (!same[i])
			append_part(&parts, names[i], &n, total);
	*diff = parts.data;
	return id;
}

/*
 * Queue one job in the caller's transaction; returns its id.  With an
 * idempotency key the caller already used, the first job's id if it holds
 * the same request (keyed_job), else an error 23505; nothing is queued.  The alias is checked (check_alias) when a job is
 * queued, once per *alias_checked: a resubmit whose key was used returns
 * its job whatever became of the alias since.  Needs SPI.
 */
static int64
insert_job(const JobsTable *t, const Igny8Request *req,
		   const Igny8JobOptions *job, const char *key, bool *alias_checked)
{
	Oid			types[INSERT_NARGS] = {
		TEXTOID, TEXTOID, TEXTOID, INT8OID, OIDOID, TEXTOID, TIMESTAMPTZOID,
		INT4OID, INT4OID, TEXTOID, INT8OID
	};
	Datum		values[INSERT_NARGS];
	char		nulls[INSERT_NARGS];
	Oid			submitter = GetUserId();
	AsOwner		s;
	int			ret;
	bool		isnull;
	bool		inserted;
	int64		id;
	char	   *diff = NULL;

	/* a job queued in a database the workers do not serve never runs */
	igny8_check_workers_database();
	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(kind_name(req->task));
	values[1] = CStringGetTextDatum(req->alias);
	values[2] = CStringGetTextDatum(req->json);
	values[3] = Int64GetDatum(req->account_id);
	if (!req->has_account)
		nulls[3] = 'n';
	values[4] = ObjectIdGetDatum(submitter);
	values[5] = CStringGetTextDatum(job->interactive ? "interactive" : "background");
	values[6] = TimestampTzGetDatum(job->not_before);
	if (!job->has_not_before)
		nulls[6] = 'n';
	values[7] = Int32GetDatum(job->max_attempts);
	values[8] = Int32GetDatum(req->timeout_ms);
	if (key)
		values[9] = CStringGetTextDatum(key);
	else
		nulls[9] = 'n';
	values[10] = Int64GetDatum(req->seed);
	if (req->task != IGNY8_TASK_IMAGE)
		nulls[10] = 'n';

	/*
	 * No row limit: one would stop the statement before its AFTER STATEMENT
	 * trigger, which wakes the workers at commit.
	 */
	as_owner(t, &s);
	ret = SPI_execute_with_args(psprintf(
		"INSERT INTO %s.igny8_jobs AS j (kind, model_alias, request, account_id,"
		" submitted_by, priority, not_before, max_attempts, timeout_ms,"
		" idempotency_key, seed)"
		" VALUES ($1, $2, $3::pg_catalog.jsonb, $4, $5::pg_catalog.regrole, $6,"
		" COALESCE($7, pg_catalog.now()), $8, $9, $10, $11)"
		" ON CONFLICT (submitted_by, idempotency_key)"
		" WHERE idempotency_key IS NOT NULL DO NOTHING"
		" RETURNING j.id", t->schema),
		INSERT_NARGS, types, values, nulls, false, 0);
	if (ret != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not insert into igny8_jobs: %s",
			 SPI_result_code_string(ret));
	inserted = (SPI_processed > 0);
	if (inserted)
		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
	else
		id = keyed_job(t, values, nulls, req, &diff);
	as_caller(&s);
	if (diff)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("idempotency key \"%s\" was already used for job " INT64_FORMAT " with a different request",
						key, id),
				 errdetail("This request differs from job " INT64_FORMAT "'s in %s.",
						   id, diff),
				 errhint("Use a new idempotency key for a different request; the same request with this key returns job " INT64_FORMAT ".",
						 id)));
	/* a job was queued: its alias must route (the error undoes the row) */
	if (inserted && !*alias_checked)
	{
		check_alias(t, req);
		*alias_checked = true;
	}
	return id;
}

/* Queue one checked request; its id. */
static int64
submit_one(const Igny8Request *req, const Igny8JobOptions *job)
{
	JobsTable	t;
	int64		id;
	bool		alias_checked = false;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	jobs_table(&t);
	id = insert_job(&t, req, job, job->idempotency_key, &alias_checked);
	SPI_finish();
	return id;
}

static void
null_arg(FunctionCallInfo fcinfo, int arg, const char *name)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

/* A text request of a prompt, with the options of a job. */
static void
text_request(text *prompt, text *model, Jsonb *options, Igny8JobOptions *job,
			 Igny8Request *req)
{
	char	   *p = igny8_check_prompt(prompt);
	Igny8TextOptions opts;

	memset(req, 0, sizeof(*req));
	req->task = IGNY8_TASK_TEXT;
	req->alias = igny8_check_alias(model);
	igny8_text_options(options, true, job, &opts);
	req->json = igny8_text_request(p, &opts);
	req->timeout_ms = opts.timeout_ms;
	req->has_timeout = opts.has_timeout;
	req->has_account = opts.has_account;
	req->account_id = opts.account_id;
}

/* igny8_submit_text(prompt text, model text, options jsonb) returns bigint */
Datum
igny8_submit_text(PG_FUNCTION_ARGS)
{
	Igny8JobOptions job;
	Igny8Request req;

	null_arg(fcinfo, 0, "prompt");
	null_arg(fcinfo, 1, "model");
	job_defaults(&job);
	text_request(PG_GETARG_TEXT_PP(0), PG_GETARG_TEXT_PP(1),
				 PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2), &job, &req);
	PG_RETURN_INT64(submit_one(&req, &job));
}

/* igny8_submit_chat(messages jsonb, model text, options jsonb) returns bigint */
Datum
igny8_submit_chat(PG_FUNCTION_ARGS)
{
	Igny8JobOptions job;
	Igny8Request req;
	Igny8TextOptions opts;

	null_arg(fcinfo, 0, "messages");
	null_arg(fcinfo, 1, "model");
	job_defaults(&job);
	memset(&req, 0, sizeof(req));
	req.task = IGNY8_TASK_CHAT;
	req.alias = igny8_check_alias(PG_GETARG_TEXT_PP(1));
	igny8_text_options(PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2), false,
					   &job, &opts);
	req.json = igny8_chat_request(PG_GETARG_JSONB_P(0), &opts);
	req.timeout_ms = opts.timeout_ms;
	req.has_timeout = opts.has_timeout;
	req.has_account = opts.has_account;
	req.account_id = opts.account_id;
	PG_RETURN_INT64(submit_one(&req, &job));
}

/*
 * igny8_submit_image(prompt text, model text, size text, options jsonb)
 * returns bigint
 */
Datum
igny8_submit_image(PG_FUNCTION_ARGS)
{
	Igny8JobOptions job;
	Igny8Request req;

	job_defaults(&job);
	memset(&req, 0, sizeof(req));
	igny8_image_job_request(fcinfo, &job, &req);
	PG_RETURN_INT64(submit_one(&req, &job));
}

static void
batch_context(void *arg)
{
	errcontext("prompt %d of the batch", *(int *) arg);
}

/*
 * igny8_submit_batch(prompts text[], model text, options jsonb) returns
 * bigint[]: one text job per prompt, every prompt checked before any is
 * queued.  An idempotency key k becomes k:1, k:2, ... per prompt.
 */
Datum
igny8_submit_batch(PG_FUNCTION_ARGS)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	Igny8JobOptions job;
	Igny8Request *reqs;
	Datum	   *ids;
	JobsTable	t;
	bool		alias_checked = false;
	ErrorContextCallback context;
	int			ord = 0;

	null_arg(fcinfo, 0, "prompts");
	null_arg(fcinfo, 1, "model");
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prompts must be a one-dimensional array")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls,
					  &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prompts must not be empty")));
	if (n > IGNY8_MAX_BATCH)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many prompts in one batch"),
				 errdetail("The batch has %d prompts; at most %d are allowed.",
						   n, IGNY8_MAX_BATCH),
				 errhint("Submit the prompts in several batches.")));

	job_defaults(&job);
	reqs = palloc(sizeof(Igny8Request) * n);
	context.callback = batch_context;
	context.arg = &ord;
	context.previous = error_context_stack;
	error_context_stack = &context;
	for (int i = 0; i < n; i++)
	{
		/* the context names this prompt from here on, also a null one */
		ord = i + 1;
		if (enulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("prompt %d of the batch is null", i + 1)));
		text_request(DatumGetTextPP(elems[i]), PG_GETARG_TEXT_PP(1),
					 PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2),
					 &job, &reqs[i]);
	}
	error_context_stack = context.previous;
	if (job.idempotency_key &&
		strlen(job.idempotency_key) + 1 + 5 > IGNY8_MAX_KEY_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"idempotency_key\" of a batch must be at most %d bytes",
						IGNY8_MAX_KEY_LEN - 6),
				 errdetail("Each prompt's job gets the key followed by \":\" and its position.")));

	ids = palloc(sizeof(Datum) * n);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	jobs_table(&t);
	for (int i = 0; i < n; i++)
		ids[i] = Int64GetDatum(insert_job(&t, &reqs[i], &job,
										  job.idempotency_key ?
										  psprintf("%s:%d", job.idempotency_key, i + 1) :
										  NULL, &alias_checked));
	SPI_finish();
	PG_RETURN_ARRAYTYPE_P(construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL,
										  TYPALIGN_DOUBLE));
}

/* ----- reading, waiting, cancelling ----- */

static void
no_such_job(int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("job " INT64_FORMAT " does not exist", id),
			 errhint("A role sees the jobs it submitted; finished jobs are deleted after igny8_ai.job_retention.")));
}

static bool
finished(const char *state)
{
	return strcmp(state, "queued") != 0 && strcmp(state, "running") != 0;
}

/*
 * The job's state as the caller sees it (row-level security), whether
 * this transaction wrote the row version read, and the request id of its
 * run (zeros if none yet).  Needs SPI.
 */
static char *
read_state(const JobsTable *t, int64 id, bool *ours, pg_uuid_t *request_id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	bool		isnull;
	int			ret;

	ret = SPI_execute_with_args(psprintf(
		"SELECT j.state, j.xmin, j.request_id FROM %s.igny8_jobs j"
		" WHERE j.id OPERATOR(pg_catalog.=) $1", t->schema),
		1, types, values, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_jobs: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		no_such_job(id);
	if (ours)
		*ours = TransactionIdIsCurrentTransactionId(
			DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc, 2,
												&isnull)));
	if (request_id)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 3, &isnull);

		if (isnull)
			memset(request_id, 0, sizeof(pg_uuid_t));
		else
			*request_id = *DatumGetUUIDP(d);
	}
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * The prompts the workers sent to a ComfyUI provider before the one with
 * queue number number and have not finished: where it is in that queue,
 * when the box serves igny8_ai alone (the one running counts).
 */
static int
prompts_ahead(const char *provider, int64 number)
{
	int			ahead = 0;

	for (int i = 0; i < igny8_shared->nslots; i++)
	{
		Igny8Slot  *slot = &igny8_slots[i];

		SpinLockAcquire(&slot->mutex);
		if (slot->state == IGNY8_SLOT_RUNNING && slot->remote_id[0] &&
			slot->remote_number >= 0 && slot->remote_number < number &&
			strcmp(slot->attempt_provider, provider) == 0)
			ahead++;
		SpinLockRelease(&slot->mutex);
	}
	return ahead;
}

/*
 * igny8_job_progress(id bigint) returns jsonb: what the workers know of a
 * running job that its row does not say, or NULL if no worker holds it.
 */
Datum
igny8_job_progress(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	JobsTable	t;
	StringInfoData buf;
	pg_uuid_t	request_id;
	bool		found = false;

	/* the caller must see the job */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	jobs_table(&t);
	(void) read_state(&t, id, NULL, &request_id);
	SPI_finish();

	initStringInfo(&buf);
	for (int i = 0; i < igny8_shared->nslots && !found; i++)
	{
		Igny8Slot  *slot = &igny8_slots[i];
		Igny8Slot	copy;

		SpinLockAcquire(&slot->mutex);
		/* the job's run: the id may name another job's run too */
		found = (slot->job_id == id && slot->state == IGNY8_SLOT_RUNNING &&
				 memcmp(&slot->request_id, &request_id, sizeof(pg_uuid_t)) == 0);
		if (found)
			memcpy(&copy, slot, sizeof(copy));
		SpinLockRelease(&slot->mutex);
		if (!found)
			continue;
		appendStringInfo(&buf, "{\"worker\": %d, \"sent\": %s, \"attempt\": %d",
						 copy.worker, copy.sent ? "true" : "false",
						 copy.attempt_number);
		if (copy.attempt_number > 0)
		{
			appendStringInfoString(&buf, ", \"provider\": ");
			escape_json(&buf, copy.attempt_provider);
			appendStringInfoString(&buf, ", \"attempt_since\": ");
			escape_json(&buf, timestamptz_to_str(copy.attempt_since));
		}
		else
			appendStringInfoString(&buf, ", \"waiting\": \"for a provider place\"");
		if (copy.remote_id[0])
		{
			appendStringInfoString(&buf, ", \"comfyui_prompt_id\": ");
			escape_json(&buf, copy.remote_id);
			if (copy.remote_number >= 0)
				appendStringInfo(&buf, ", \"comfyui_number\": " INT64_FORMAT
								 ", \"comfyui_ahead\": %d",
								 copy.remote_number,
								 prompts_ahead(copy.attempt_provider,
											   copy.remote_number));
		}
		appendStringInfoChar(&buf, '}');
	}
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* The job as igny8_job() returns it, read as the caller.  Needs SPI. */
static Datum
job_result(const JobsTable *t, int64 id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	bool		isnull;
	int			ret;

	ret = SPI_execute_with_args(psprintf("SELECT %s.igny8_job($1)", t->schema),
								1, types, values, NULL, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the job: %s", SPI_result_code_string(ret));
	return SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull),
							 false, -1);
}

static void
clear_waiter(int code, Datum arg)
{
	pg_atomic_write_u64(&igny8_job_waiters[MyProc->pgprocno], 0);
}

/*
 * igny8_wait_job(id bigint, timeout interval) returns igny8_job_results:
 * wait on the latch until the job finished, or the timeout passed (then the
 * job is returned as it stands).  A worker that writes a job's outcome sets
 * the latches of the backends waiting for it after its commit; the row is
 * read again after every wake-up (and every few seconds in case).
 */
Datum
igny8_wait_job(PG_FUNCTION_ARGS)
{
	int64		id;
	JobsTable	t;
	TimestampTz deadline = 0;
	bool		first = true;
	Datum		result;

	null_arg(fcinfo, 0, "id");
	id = PG_GETARG_INT64(0);
	if (!PG_ARGISNULL(1))
	{
		double		ms = igny8_interval_ms_double(PG_GETARG_INTERVAL_P(1));

		if (ms < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("timeout must not be negative")));
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											   (int64) Min(ms, 1e12));
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	jobs_table(&t);

	PG_ENSURE_ERROR_CLEANUP(clear_waiter, (Datum) 0);
	{
		for (;;)
		{
			bool		ours;
			char	   *state = read_state(&t, id, &ours, NULL);
			long		wait_ms = IGNY8_WAIT_RECHECK_MS;
			int			rc;

			if (finished(state))
				break;
			if (ours)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("job " INT64_FORMAT " was submitted in this transaction, which is still open",
								id),
						 errdetail("A job starts when the transaction that submitted it commits."),
						 errhint("Commit the transaction that submits the job, then wait for it.")));
			if (igny8_job_cancel_pending(id))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("job " INT64_FORMAT " was cancelled in this transaction, which is still open",
								id),
						 errdetail("A running job's worker learns of its cancel when the transaction that cancels it commits."),
						 errhint("Commit the transaction that cancels the job, then wait for it.")));
			if (IsolationUsesXactSnapshot())
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("igny8_wait_job cannot wait in a REPEATABLE READ or SERIALIZABLE transaction"),
						 errdetail("The transaction's snapshot would never show the job finished."),
						 errhint("Wait in a READ COMMITTED transaction, or call igny8_job() in new transactions.")));
			if (deadline != 0)
			{
				TimestampTz now = GetCurrentTimestamp();

				if (now >= deadline)
					break;
				wait_ms = Min(wait_ms,
							  (deadline - now + 999) / 1000);
			}
			if (first)
			{
				/*
				 * The job's worker writes its outcome and usage rows, which
				 * it cannot do while this transaction holds a conflicting
				 * lock, nor at all in a database it does not serve.
				 */
				igny8_check_workers_database();
				igny8_check_worker_locks();
				/* registered before the row is read again: no wake-up lost */
				pg_atomic_exchange_u64(&igny8_job_waiters[MyProc->pgprocno],
									   (uint64) id);
				first = false;
				continue;
			}
			rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						   wait_ms, PG_WAIT_EXTENSION);
			if (rc & WL_LATCH_SET)
				ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_END_ENSURE_ERROR_CLEANUP(clear_waiter, (Datum) 0);
	clear_waiter(0, (Datum) 0);

	result = job_result(&t, id);
	SPI_finish();
	PG_RETURN_DATUM(result);
}

/*
 * igny8_cancel_job(id bigint) returns boolean: a queued job is cancelled
 * at once (it never starts once this commits); a running one gets a row in
 * igny8_job_cancels, and its worker, told at commit, aborts its transfer
 * (a ComfyUI prompt is deleted from the queue or interrupted by its
 * prompt_id) and writes it cancelled.  The running job's own row is not
 * touched: this transaction may stay open, or be prepared, and its worker
 * must go on writing that row.  False if the job had finished.  Refused
 * (0A000) for a queued or running job in a REPEATABLE READ or
 * SERIALIZABLE transaction.
 */
Datum
igny8_cancel_job(PG_FUNCTION_ARGS)
{
	int64		id;
	JobsTable	t;
	AsOwner		s;
	Oid			types[1] = {INT8OID};
	Datum		values[1];
	bool		queued = false;
	bool		running = false;
	bool		ours;
	char	   *state;
	int			ret;

	null_arg(fcinfo, 0, "id");
	id = PG_GETARG_INT64(0);
	values[0] = Int64GetDatum(id);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	jobs_table(&t);
	/* the caller must see the job */
	state = read_state(&t, id, &ours, NULL);

	/*
	 * A transaction snapshot may show queued or running a job that a worker
	 * claimed or finished since: the UPDATE below would fail to serialize,
	 * or a cancel be recorded for a run that ended.  A job finished in it
	 * stays finished; one this transaction wrote, no one else changed.
	 */
	if (IsolationUsesXactSnapshot() && !finished(state) && !ours)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("igny8_cancel_job cannot cancel a queued or running job in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("The transaction's snapshot may show the job as it was before a worker took or finished it."),
				 errhint("Cancel in a READ COMMITTED transaction.")));

	as_owner(&t, &s);

	/*
	 * Queued: cancelled here (a claim that locked it first makes it
	 * running).  Running: a statement of its own, with a new snapshot, sees
	 * the claim that won.  Queued again in between (a worker gave the run
	 * back after the UPDATE's snapshot): the UPDATE once more.  Each turn
	 * needs the job to change state between two statements; a few are
	 * plenty.
	 */
	for (int turn = 0; turn < 10 && !queued && !running; turn++)
	{
		ret = SPI_execute_with_args(psprintf(
			"UPDATE %s.igny8_jobs j SET cancel_requested = true, state = 'cancelled',"
			" finished_at = pg_catalog.now(), error_code = '57014',"
			" error_message = 'cancelled by igny8_cancel_job'"
			" WHERE j.id OPERATOR(pg_catalog.=) $1"
			" AND j.state OPERATOR(pg_catalog.=) 'queued'", t.schema),
			1, types, values, NULL, false, 0);
		if (ret != SPI_OK_UPDATE)
			elog(ERROR, "could not update igny8_jobs: %s",
				 SPI_result_code_string(ret));
		queued = (SPI_processed == 1);
		if (queued)
			break;
		ret = SPI_execute_with_args(psprintf(
			"SELECT j.state FROM %s.igny8_jobs j"
			" WHERE j.id OPERATOR(pg_catalog.=) $1", t.schema),
			1, types, values, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not read igny8_jobs: %s",
				 SPI_result_code_string(ret));
		state = (SPI_processed == 1) ?
			SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
		running = (state != NULL && strcmp(state, "running") == 0);
		/* finished (or gone): nothing to cancel */
		if (state == NULL || strcmp(state, "queued") != 0)
			break;
	}
	if (running)
	{
		/* DO NOTHING: an update would lock a cancel row its worker deletes */
		ret = SPI_execute_with_args(psprintf(
			"INSERT INTO %s.igny8_job_cancels (job_id) VALUES ($1)"
			" ON CONFLICT (job_id) DO NOTHING", t.schema),
			1, types, values, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "could not insert into igny8_job_cancels: %s",
				 SPI_result_code_string(ret));
	}
	as_caller(&s);
	SPI_finish();

	if (!queued && !running)
		PG_RETURN_BOOL(false);
	/* at commit: its NOTIFY if queued; its worker stops it; waiters wake */
	igny8_job_cancel_at_commit(id, queued);
	PG_RETURN_BOOL(true);
}

/* ----- at commit ----- */

/* A commit queued jobs: tell the workers. */
void
igny8_jobs_announce(void)
{
	if (igny8_shared == NULL)
		return;
	pg_atomic_fetch_add_u64(&igny8_shared->jobs_generation, 1);
	igny8_wake_all_workers();
}

/*
 * Have every worker scan igny8_jobs now (recovery, cancels, claims), for
 * what has no event of its own: a COMMIT PREPARED, whose cancels reach no
 * worker otherwise, and a worker that exits, whose runs are to be taken
 * back.  The workers' periodic scan backs off to a minute when idle.
 */
void
igny8_jobs_request_scan(void)
{
	if (igny8_shared == NULL)
		return;
	pg_atomic_fetch_add_u64(&igny8_shared->jobs_scan_requests, 1);
	igny8_jobs_announce();
}

/*
 * Set the latches of every backend waiting for a job: after a COMMIT
 * PREPARED, which may have cancelled a queued job (an UPDATE no worker
 * writes the outcome of), each looks at its job again.
 */
void
igny8_wake_all_job_waiters(void)
{
	if (igny8_job_waiters == NULL)
		return;
	for (int p = 0; p < igny8_nprocs; p++)
		if (pg_atomic_read_u64(&igny8_job_waiters[p]) != 0)
			igny8_wake_proc(p);
}

/* Set the latches of the backends waiting for one of ids. */
void
igny8_wake_job_waiters(const int64 *ids, int n)
{
	for (int p = 0; p < igny8_nprocs; p++)
	{
		int64		waiting = (int64) pg_atomic_read_u64(&igny8_job_waiters[p]);

		if (waiting == 0)
			continue;
		for (int i = 0; i < n; i++)
		{
			if (ids[i] == waiting)
			{
				igny8_wake_proc(p);
				break;
			}
		}
	}
}
