/*-------------------------------------------------------------------------
 *
 * cache.c
 *	  The response cache: text answers of the aliases in
 *	  igny8_cache_settings, kept in igny8_response_cache by the sha256 of
 *	  the request (alias, messages with the system prompt among them,
 *	  temperature, max_tokens, and the deployments that may answer it).
 *
 * Where the lookup runs: in the worker, not in the caller's backend.  The
 * worker writes the usage row of a hit in its own committed transaction
 * like any other attempt's, so that a caller that rolls back still leaves
 * it, and a backend never writes to the cache.  A job of a cached alias
 * starts in JOB_CACHE_WAIT; each loop iteration igny8_cache_lookup() looks
 * up every such job that is due in one transaction:
 *
 *	- a ready row that has not expired is a hit: the job is answered from it
 *	  at once, with one attempt (cached, cost 0, the answer's tokens) for
 *	  the usage log;
 *	- no row (or an expired one): the job inserts the key's row as
 *	  'pending', expiring at its deadline, and commits it before it sends
 *	  anything: it owns the key, and its answer replaces the row when its
 *	  usage row is written (igny8_cache_write(), in the same transaction);
 *	  a failure deletes the row;
 *	- a pending row that has not expired: an identical request is in
 *	  flight, in this worker or another.  The job waits and looks again
 *	  every IGNY8_CACHE_POLL_MS, until the answer is there (a hit), the row
 *	  is gone (it becomes the owner and sends), or its deadline passes.
 *	  Two identical calls at once thus make one provider request.  The row
 *	  names its owner: the worker, when that worker started, and the call.
 *	  A row whose worker stopped (a crash, a graceful stop that queued the
 *	  owner again for another worker) or started again since, or of this
 *	  very worker with no job that owns the key any more (its usage
 *	  transaction failed), is no one's: the job takes it over at once
 *	  instead of waiting for it to expire.  The owner stores its answer in
 *	  the row, or deletes it, only while the row is still its own.
 *
 * Jobs of aliases that are not cached never enter JOB_CACHE_WAIT: a miss
 * on them costs one string comparison per cached alias.  Submitted jobs
 * (igny8_jobs) are not cached.  The size bound is kept when an answer is
 * stored: the alias's oldest rows beyond max_entries are deleted.
 *
 * The SQL names every table with its schema and every operator with
 * pg_catalog, as usage.c does.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "worker.h"

/* how often a job waiting for an identical request's answer looks again */
#define IGNY8_CACHE_POLL_MS		50

/*
 * The worker's statements on igny8_response_cache, prepared once for its
 * life (for the extension's schema they were made with; after an error,
 * again): a cached call would otherwise parse and plan two of them at its
 * lookup and two more when its answer is stored.
 */
typedef enum CachePlan
{
	CACHE_LOOKUP,
	CACHE_TAKE,
	CACHE_GIVE_UP,
	CACHE_STORE,
	CACHE_BOUND,
	NCACHE_PLANS
} CachePlan;

static SPIPlanPtr plans[NCACHE_PLANS];
static Igny8PlanSet cache_plans = {plans, NCACHE_PLANS, NULL};

/* Statement which, prepared for the extension in schema (igny8_plan_get). */
static SPIPlanPtr
cache_plan(CachePlan which, const char *schema, const char *fmt, int nargs,
		   Oid *types)
{
	return igny8_plan_get(&cache_plans, which, schema, fmt, nargs, types,
						  "a statement on igny8_response_cache");
}

/* After an error: the prepared statements are suspect (see usage.c). */
void
igny8_cache_reset(void)
{
	igny8_plans_forget(&cache_plans);
}

/* Feed one length-prefixed field to the hash: no two requests collide. */
static void
hash_field(pg_cryptohash_ctx *ctx, const char *tag, const char *value)
{
	uint32		len = value ? (uint32) strlen(value) : 0xffffffff;

	if (pg_cryptohash_update(ctx, (const uint8 *) tag, strlen(tag) + 1) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) &len, sizeof(len)) < 0 ||
		(value && pg_cryptohash_update(ctx, (const uint8 *) value, len) < 0))
		elog(ERROR, "could not compute the response cache key: %s",
			 pg_cryptohash_error(ctx));
}

/* Deployments in a fixed order: routing shuffles those of equal priority. */
static int
deployment_cmp(const void *a, const void *b)
{
	const Igny8Deployment *x = *(Igny8Deployment *const *) a;
	const Igny8Deployment *y = *(Igny8Deployment *const *) b;
	int			c = strcmp(x->provider->id, y->provider->id);

	return c != 0 ? c : strcmp(x->model, y->model);
}

/*
 * The key of a request: sha256 of the alias, each message's role and
 * content in order, the temperature ("%.17g": the double exactly) and
 * max_tokens as the caller gave them (absent ones hash as absent), and
 * the deployments the call may be answered by (the alias's and its
 * fallbacks', whatever their circuits say): provider, model, max_tokens
 * cap and settings.  A change of
 * any of them (a larger cap, another model) makes new answers instead of
 * serving those the old deployments gave.
 */
static void
compute_key(Igny8Job *job, uint8 *out)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	char		num[64];
	Igny8Deployment **cands;
	int			ncands;

	if (pg_cryptohash_init(ctx) < 0)
		elog(ERROR, "could not compute the response cache key: %s",
			 pg_cryptohash_error(ctx));
	hash_field(ctx, "igny8_ai response cache 1", "");
	hash_field(ctx, "alias", job->alias);
	for (int i = 0; i < job->nmessages; i++)
	{
		hash_field(ctx, "role", job->messages[i].role);
		hash_field(ctx, "content", job->messages[i].content);
	}
	if (job->has_temperature)
		snprintf(num, sizeof(num), "%.17g", job->temperature);
	hash_field(ctx, "temperature", job->has_temperature ? num : NULL);
	if (job->has_max_tokens)
		snprintf(num, sizeof(num), "%d", job->max_tokens);
	hash_field(ctx, "max_tokens", job->has_max_tokens ? num : NULL);
	/*
	 * Not job->cands: routing leaves out the providers whose circuit is
	 * open, and the key must not change while the GPU box is down, when
	 * the cache saves the most.  The account's view, as routing used.
	 */
	{
		Igny8Account *account;
		Igny8Config *view = igny8_config_for_account(job->config,
													 job->has_account,
													 job->account_id,
													 &account);

		igny8_route_deployments(view, job->alias, job->task, &cands, &ncands);
	}
	qsort(cands, ncands, sizeof(Igny8Deployment *), deployment_cmp);
	for (int i = 0; i < ncands; i++)
	{
		Igny8Deployment *d = cands[i];
		char	   *settings = d->settings ? igny8_json_print(d->settings) : NULL;

		hash_field(ctx, "provider", d->provider->id);
		hash_field(ctx, "model", d->model);
		snprintf(num, sizeof(num), "%d", d->max_tokens);
		hash_field(ctx, "max_tokens cap", num);
		hash_field(ctx, "settings", settings);
		if (settings)
			pfree(settings);
	}
	pfree(cands);
	if (pg_cryptohash_final(ctx, out, PG_SHA256_DIGEST_LENGTH) < 0)
		elog(ERROR, "could not compute the response cache key: %s",
			 pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);
}

/*
 * A job just routed: if its alias is cached and the request may be, it
 * is looked up before anything is sent.  A temperature above 0, or none
 * (the providers' default is above 0), is cached only where the alias
 * allows it.
 */
void
igny8_cache_route(Igny8Job *job, Igny8Config *config)
{
	Igny8CacheSetting *setting;

	if (config->ncache == 0 || job->job_id != 0 ||
		(job->task != IGNY8_TASK_TEXT && job->task != IGNY8_TASK_CHAT))
		return;
	setting = igny8_config_cache(config, job->alias);
	if (setting == NULL)
		return;
	if (!setting->nonzero_temperature &&
		!(job->has_temperature && job->temperature == 0.0))
		return;
	job->cache = setting;
	igny8_job_set_state(job, JOB_CACHE_WAIT);
	job->wake_at = 0;			/* its key is computed at its first lookup */
}

static Datum
key_datum(Igny8Job *job)
{
	bytea	   *b = palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);

	SET_VARSIZE(b, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	memcpy(VARDATA(b), job->cache_key, PG_SHA256_DIGEST_LENGTH);
	return PointerGetDatum(b);
}

static char *
column_text(int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								  col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

static int
column_int(int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								  col, &isnull);

	return isnull ? 0 : DatumGetInt32(d);
}

/* Does a job of this worker own the key (its pending row is its own)? */
static bool
owned_here(const uint8 *key)
{
	dlist_iter	iter;

	dlist_foreach(iter, &igny8_jobs)
	{
		Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);

		if (job->cache_owner &&
			memcmp(job->cache_key, key, PG_SHA256_DIGEST_LENGTH) == 0)
			return true;
	}
	return false;
}

/*
 * Is the owner of the pending row of key in SPI_tuptable gone: its worker
 * not running, or started again since it took the row, or this very worker
 * with no job that owns the key (its usage transaction failed, and so did
 * the delete of the row, igny8_cache_written)?  If so, *worker and
 * *started say who it was.
 */
static bool
owner_gone(const uint8 *key, int *worker, TimestampTz *started)
{
	bool		worker_null;
	bool		started_null;
	Datum		w = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								  9, &worker_null);
	Datum		at = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								   10, &started_null);

	/* no owner recorded: it expires, as a row of no one's */
	if (worker_null || started_null)
		return false;
	*worker = DatumGetInt32(w);
	*started = DatumGetTimestampTz(at);
	if (*worker == igny8_worker_index && *started == igny8_worker_started_at)
		return !owned_here(key);
	return !igny8_worker_is(*worker, *started);
}

/*
 * Answer a job from the ready row in SPI_tuptable.  Everything is made in
 * the job's context: SPI_execute_plan leaves CurrentMemoryContext at SPI's
 * procedure context, which the commit frees before the usage row is
 * written.
 */
static void
answer_from_row(Igny8Job *job, TimestampTz started)
{
	MemoryContext old = MemoryContextSwitchTo(job->cxt);
	Igny8Attempt *a;
	Igny8Deployment *d = palloc0(sizeof(Igny8Deployment));
	char	   *provider = column_text(2);
	char	   *model = column_text(3);

	/* provider and model are UTF-8 in the worker; the answer is not */
	d->provider = palloc0(sizeof(Igny8Provider));
	d->provider->id = igny8_from_db(provider ? provider : "");
	d->model = igny8_from_db(model ? model : "");
	memset(&job->result, 0, sizeof(job->result));
	job->result.content = column_text(4);
	if (job->result.content == NULL)
		job->result.content = pstrdup("");
	job->result.thinking = column_text(5);
	job->result.finish_reason = column_text(6);
	if (job->result.finish_reason)
		job->result.finish_reason = igny8_from_db(job->result.finish_reason);
	job->result.model = d->model;
	job->result.input_tokens = column_int(7);
	job->result.output_tokens = column_int(8);

	a = igny8_job_add_attempt(job, d);
	a->at = started;
	a->sent = true;				/* not sent, but it gets its usage row */
	a->success = true;
	a->cached = true;
	a->cost = pstrdup("0.000000");	/* numeric(14, 6), as priced ones */
	a->input_tokens = job->result.input_tokens;
	a->output_tokens = job->result.output_tokens;
	a->duration_ms = (double) (GetCurrentTimestamp() - started) / 1000.0;

	job->used = d;
	job->cache_hit = true;
	job->success = true;
	igny8_job_set_state(job, JOB_FINISHED);
	MemoryContextSwitchTo(old);
}

/*
 * Look one job up: a hit answers it, a miss makes it the key's owner
 * (READY), a pending row keeps it waiting, unless its owner is gone: then
 * the job takes the key over, as on a miss.
 */
static void
lookup_job(Igny8Job *job, const char *schema, TimestampTz now)
{
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', 'n', 'n'};
	int			dead_worker;
	TimestampTz dead_started;
	int			ret;

	/*
	 * In a transaction: the hash may be OpenSSL's, which a resource owner
	 * tracks.
	 */
	if (job->wake_at == 0)
		compute_key(job, job->cache_key);
	values[0] = key_datum(job);
	ret = SPI_execute_plan(cache_plan(CACHE_LOOKUP, schema,
									  "SELECT c.state, c.provider, c.model,"
									  " c.content, c.thinking, c.finish_reason,"
									  " c.input_tokens, c.output_tokens,"
									  " c.owner_worker, c.owner_started"
									  " FROM %s.igny8_response_cache c"
									  " WHERE c.key OPERATOR(pg_catalog.=) $1"
									  " AND c.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()",
									  1, (Oid[]) {BYTEAOID}),
						   values, nulls, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_response_cache: %s",
			 SPI_result_code_string(ret));
	if (SPI_processed == 1)
	{
		char	   *state = column_text(1);

		if (strcmp(state, "ready") == 0)
		{
			answer_from_row(job, now);
			return;
		}
		if (!owner_gone(job->cache_key, &dead_worker, &dead_started))
		{
			job->wake_at = TimestampTzPlusMilliseconds(now, IGNY8_CACHE_POLL_MS);
			return;
		}
		/* no one sends it: take it over, if it is still that owner's */
		values[6] = Int32GetDatum(dead_worker);
		values[7] = TimestampTzGetDatum(dead_started);
		nulls[6] = nulls[7] = ' ';
	}

	/*
	 * A miss: take the key.  An expired row of it (answer or pending), or
	 * the pending row of an owner that is gone, is taken over; a row
	 * another worker inserted or took meanwhile is not, and the job looks
	 * again next time.
	 */
	values[1] = CStringGetTextDatum(igny8_to_db_lossy(job->alias));
	values[2] = TimestampTzGetDatum(job->deadline);
	values[3] = Int32GetDatum(igny8_worker_index);
	values[4] = TimestampTzGetDatum(igny8_worker_started_at);
	values[5] = UUIDPGetDatum(&job->request_id);
	ret = SPI_execute_plan(cache_plan(CACHE_TAKE, schema,
									  "INSERT INTO %s.igny8_response_cache AS c"
									  " (key, alias, state, expires_at, owner_worker, owner_started,"
									  " owner_request)"
									  " VALUES ($1, $2, 'pending', $3, $4, $5, $6)"
									  " ON CONFLICT (key) DO UPDATE"
									  " SET alias = excluded.alias, state = 'pending',"
									  " provider = NULL, model = NULL, content = NULL,"
									  " thinking = NULL, finish_reason = NULL,"
									  " input_tokens = 0, output_tokens = 0,"
									  " created_at = pg_catalog.now(),"
									  " expires_at = excluded.expires_at,"
									  " owner_worker = excluded.owner_worker,"
									  " owner_started = excluded.owner_started,"
									  " owner_request = excluded.owner_request"
									  " WHERE c.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
									  " OR (c.state OPERATOR(pg_catalog.=) 'pending'"
									  " AND c.owner_worker OPERATOR(pg_catalog.=) $7"
									  " AND c.owner_started OPERATOR(pg_catalog.=) $8)"
									  " RETURNING 1",
									  8, (Oid[]) {BYTEAOID, TEXTOID, TIMESTAMPTZOID,
									  INT4OID, TIMESTAMPTZOID, UUIDOID, INT4OID,
									  TIMESTAMPTZOID}),
						   values, nulls, false, 1);
	if (ret != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not write igny8_response_cache: %s",
			 SPI_result_code_string(ret));
	if (SPI_processed == 1)
	{
		job->cache_owner = true;
		igny8_job_set_state(job, JOB_READY);
	}
	else
		job->wake_at = now;
}

/* Is a job waiting for its cache lookup due? */
static bool
lookup_due(Igny8Job *job, TimestampTz now)
{
	return job->state == JOB_CACHE_WAIT && job->wake_at <= now;
}

/*
 * Look up every job that waits for the cache and is due, in one
 * transaction.  If that fails (the table was dropped with the
 * extension...), the jobs go on uncached, as owners of nothing.
 */
void
igny8_cache_lookup(void)
{
	dlist_iter	iter;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext cxt = CurrentMemoryContext;
	bool		any = false;

	if (igny8_job_counts.in_state[JOB_CACHE_WAIT] == 0)
		return;
	dlist_foreach(iter, &igny8_jobs)
	{
		Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);

		if (job->state != JOB_CACHE_WAIT)
			continue;
		if (now >= job->deadline)
		{
			MemoryContext old = MemoryContextSwitchTo(job->cxt);

			igny8_job_finish_error(job, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
								   psprintf("AI request for model alias \"%s\" timed out after %d ms",
											job->alias, job->timeout_ms),
								   pstrdup("It waited for the answer to an identical request in flight (the response cache, igny8_cache_settings)."),
								   pstrdup("Pass a longer timeout, or raise igny8_ai.default_timeout."));
			MemoryContextSwitchTo(old);
		}
		else if (job->wake_at <= now)
			any = true;
	}
	if (!any)
		return;

	PG_TRY();
	{
		igny8_worker_begin("igny8_ai: response cache lookup");

		/*
		 * Not flushed at commit: a pending row lost in a crash only lets an
		 * identical request be sent again, and nothing is answered before
		 * the usage commit, which comes later in the WAL and is flushed.
		 */
		(void) set_config_option("synchronous_commit", "off", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0,
								 false);
		dlist_foreach(iter, &igny8_jobs)
		{
			Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);

			if (!lookup_due(job, now))
				continue;
			job->cache_looking = true;
			lookup_job(job, job->config->schema, now);
		}
		igny8_worker_commit();
		dlist_foreach(iter, &igny8_jobs)
			dlist_container(Igny8Job, node, iter.cur)->cache_looking = false;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		igny8_worker_recover();
		dlist_foreach(iter, &igny8_jobs)
		{
			Igny8Job   *job = dlist_container(Igny8Job, node, iter.cur);

			/*
			 * What this transaction read or took is gone with it; keys
			 * taken and hits answered by earlier lookups were committed
			 * and stay.
			 */
			if (job->state == JOB_CACHE_WAIT || job->cache_looking)
			{
				ListCell   *lc;

				igny8_job_set_state(job, JOB_READY);
				job->cache = NULL;
				job->cache_owner = false;
				job->cache_hit = false;
				job->success = false;
				job->used = NULL;
				foreach(lc, job->attempts)
				{
					if (!((Igny8Attempt *) lfirst(lc))->logged)
						igny8_job_counts.unlogged--;
				}
				list_free(job->attempts);
				job->attempts = NIL;
			}
			job->cache_looking = false;
		}
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
}

/* Has a finished job a cache row to fill or to give up? */
bool
igny8_cache_to_write(Igny8Job *job)
{
	return job->cache_owner && job->state == JOB_FINISHED;
}

/*
 * In the usage transaction (usage.c): store the answer of a finished job
 * that owns its key, and keep the alias within max_entries; or, when it
 * failed, delete its pending row so that a waiting job sends its own (also
 * in a transaction of its own after a failed usage transaction,
 * igny8_cache_written).
 */
void
igny8_cache_write(Igny8Job *job)
{
	const char *schema;
	Datum		values[10];
	char		nulls[10];
	int			ret;

	/* (a job whose routing failed has no configuration) */
	if (!igny8_cache_to_write(job))
		return;
	schema = job->config->schema;
	memset(nulls, ' ', sizeof(nulls));
	values[0] = key_datum(job);

	/*
	 * The row is changed only while it is still this call's pending row: a
	 * row that expired at its deadline may have been taken over since.
	 */
	if (!job->success)
	{
		values[1] = UUIDPGetDatum(&job->request_id);
		ret = SPI_execute_plan(cache_plan(CACHE_GIVE_UP, schema,
										  "DELETE FROM %s.igny8_response_cache c"
										  " WHERE c.key OPERATOR(pg_catalog.=) $1"
										  " AND c.state OPERATOR(pg_catalog.=) 'pending'"
										  " AND c.owner_request OPERATOR(pg_catalog.=) $2",
										  2, (Oid[]) {BYTEAOID, UUIDOID}),
							   values, nulls, false, 0);
		if (ret != SPI_OK_DELETE)
			elog(ERROR, "could not write igny8_response_cache: %s",
				 SPI_result_code_string(ret));
		return;
	}

	/* the answer is in the database encoding already, the labels UTF-8 */
	values[1] = CStringGetTextDatum(igny8_to_db_lossy(job->used->provider->id));
	values[2] = CStringGetTextDatum(igny8_to_db_lossy(job->result.model ?
													  job->result.model :
													  job->used->model));
	values[3] = CStringGetTextDatum(job->result.content ? job->result.content : "");
	if (job->result.thinking)
		values[4] = CStringGetTextDatum(job->result.thinking);
	else
		nulls[4] = 'n';
	if (job->result.finish_reason)
		values[5] = CStringGetTextDatum(igny8_to_db_lossy(job->result.finish_reason));
	else
		nulls[5] = 'n';
	values[6] = Int32GetDatum((int32) Min(job->result.input_tokens, PG_INT32_MAX));
	values[7] = Int32GetDatum((int32) Min(job->result.output_tokens, PG_INT32_MAX));
	values[8] = job->cache->ttl;
	values[9] = UUIDPGetDatum(&job->request_id);
	ret = SPI_execute_plan(cache_plan(CACHE_STORE, schema,
									  "UPDATE %s.igny8_response_cache c"
									  " SET state = 'ready', provider = $2, model = $3,"
									  " content = $4, thinking = $5, finish_reason = $6,"
									  " input_tokens = $7, output_tokens = $8,"
									  " created_at = pg_catalog.now(),"
									  " expires_at = pg_catalog.now() OPERATOR(pg_catalog.+)"
									  " COALESCE((SELECT s.ttl FROM %s.igny8_cache_settings s"
									  " WHERE s.alias OPERATOR(pg_catalog.=) c.alias), $9),"
									  " owner_worker = NULL, owner_started = NULL,"
									  " owner_request = NULL"
									  " WHERE c.key OPERATOR(pg_catalog.=) $1"
									  " AND c.state OPERATOR(pg_catalog.=) 'pending'"
									  " AND c.owner_request OPERATOR(pg_catalog.=) $10",
									  10, (Oid[]) {BYTEAOID, TEXTOID, TEXTOID, TEXTOID,
									  TEXTOID, TEXTOID, INT4OID, INT4OID, INTERVALOID,
									  UUIDOID}),
						   values, nulls, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not write igny8_response_cache: %s",
			 SPI_result_code_string(ret));

	/* the bound: the newest max_entries answers of the alias stay */
	values[0] = CStringGetTextDatum(igny8_to_db_lossy(job->alias));
	values[1] = Int32GetDatum(job->cache->max_entries);
	ret = SPI_execute_plan(cache_plan(CACHE_BOUND, schema,
									  "DELETE FROM %s.igny8_response_cache c"
									  " WHERE c.key OPERATOR(pg_catalog.=) ANY (ARRAY("
									  " SELECT o.key FROM %s.igny8_response_cache o"
									  " WHERE o.alias OPERATOR(pg_catalog.=) $1"
									  " AND o.state OPERATOR(pg_catalog.=) 'ready'"
									  " ORDER BY o.created_at DESC, o.key"
									  " OFFSET $2))",
									  2, (Oid[]) {TEXTOID, INT4OID}),
						   values, nulls, false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "could not write igny8_response_cache: %s",
			 SPI_result_code_string(ret));
}

/* Delete the pending rows of the calls that failed (igny8_cache_written). */
static void
give_up_keys(void *arg)
{
	dlist_iter	iter;

	/* a row left behind only delays an identical call */
	(void) set_config_option("synchronous_commit", "off", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	/* (a key is written or given up only by a finished job) */
	dlist_foreach(iter, &igny8_jobs_ended)
	{
		Igny8Job   *job = dlist_container(Igny8Job, ended_node, iter.cur);

		/*
		 * The usage transaction's failure made every one an error
		 * (usage.c); an answer whose usage row is not committed is never
		 * stored.
		 */
		if (igny8_cache_to_write(job) && !job->success)
			igny8_cache_write(job);
	}
}

/*
 * After the usage transaction (usage.c): the keys of the calls that ended
 * are no longer theirs.  If that transaction failed, what it wrote to the
 * cache went with it, and their calls failed with it: their pending rows
 * are deleted in a transaction of their own, so that identical calls, in
 * any worker, do not wait for answers no one will store.  If that fails
 * too, an identical call in this worker takes such a row over when it
 * finds it (owner_gone); one in another worker waits for it to expire.
 */
void
igny8_cache_written(bool committed)
{
	dlist_iter	iter;

	/* a key is written or given up only by a finished job: one listed */
	if (!committed)
	{
		bool		any = false;

		dlist_foreach(iter, &igny8_jobs_ended)
			any |= igny8_cache_to_write(dlist_container(Igny8Job, ended_node,
														iter.cur));
		if (any)
			(void) igny8_worker_transaction("igny8_ai: response cache",
											give_up_keys, NULL);
	}
	dlist_foreach(iter, &igny8_jobs_ended)
	{
		Igny8Job   *job = dlist_container(Igny8Job, ended_node, iter.cur);

		if (igny8_cache_to_write(job))
			job->cache_owner = false;
	}
}
