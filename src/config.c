/*-------------------------------------------------------------------------
 *
 * config.c
 *	  The worker's cached copy of igny8_providers, igny8_models,
 *	  igny8_fallbacks, igny8_workflows and igny8_prices.
 *
 * A copy is loaded when the worker starts and again whenever the shared
 * configuration generation moves (the tables' triggers bump it at commit).
 * Jobs hold a reference to the copy they were routed with, so a reload never
 * pulls a deployment out from under a request in flight.
 *
 * The worker runs these queries with its search_path set to pg_catalog,
 * the extension's schema, pg_temp, and they name every table with its
 * schema and use no operator at all (intervals are converted here, in C):
 * an object someone created in a schema on the path can never be picked
 * instead of the built-in one.  Strings are converted to UTF-8, the
 * worker's own encoding.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "worker.h"

static char *
get_text(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (isnull)
		return NULL;
	return igny8_from_db(TextDatumGetCString(d));
}

static int
get_int(HeapTuple tup, TupleDesc desc, int col, int dflt)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? dflt : DatumGetInt32(d);
}

static bool
get_bool(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return !isnull && DatumGetBool(d);
}

/*
 * An interval as milliseconds, at least 1 and at most INT_MAX; a month
 * counts 30 days.  Computed in double, so that nothing overflows.
 */
int
igny8_interval_ms(Datum interval)
{
	double		ms = igny8_interval_ms_double(DatumGetIntervalP(interval));

	if (ms >= (double) INT_MAX)
		return INT_MAX;
	return Max((int) ms, 1);
}

static int
get_interval_ms(HeapTuple tup, TupleDesc desc, int col, int dflt)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? dflt : igny8_interval_ms(d);
}

/* A settings column (jsonb) as a cJSON object, or NULL. */
static cJSON *
get_settings(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);
	char	   *text;

	if (isnull)
		return NULL;
	text = igny8_from_db(DatumGetCString(DirectFunctionCall1(jsonb_out, d)));
	return cJSON_Parse(text);
}

/*
 * The schema igny8_ai is installed in (unquoted), or NULL when the
 * extension is not installed in this database.  Needs a transaction and
 * SPI.
 */
char *
igny8_extension_schema(void)
{
	int			ret;
	bool		isnull;
	Datum		d;

	ret = SPI_execute("SELECT n.nspname FROM pg_catalog.pg_extension e"
					  " JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace"
					  " WHERE e.extname OPERATOR(pg_catalog.=) 'igny8_ai'",
					  true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not look up the igny8_ai extension: %s",
			 SPI_result_code_string(ret));
	if (SPI_processed == 0)
		return NULL;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
					  &isnull);
	return isnull ? NULL : pstrdup(NameStr(*DatumGetName(d)));
}

/* Overlay the keys of over onto a copy of base (both may be NULL). */
static cJSON *
merge_settings(const cJSON *base, const cJSON *over)
{
	cJSON	   *out = base ? cJSON_Duplicate(base, true) : cJSON_CreateObject();
	cJSON	   *item;

	if (over == NULL)
		return out;
	cJSON_ArrayForEach(item, over)
	{
		cJSON_DeleteItemFromObjectCaseSensitive(out, item->string);
		cJSON_AddItemToObject(out, item->string, cJSON_Duplicate(item, true));
	}
	return out;
}

Igny8Provider *
igny8_config_provider(Igny8Config *config, const char *id)
{
	for (int i = 0; i < config->nproviders; i++)
		if (strcmp(config->providers[i].id, id) == 0)
			return &config->providers[i];
	return NULL;
}

static void
read_providers(Igny8Config *config, const char *qschema)
{
	int			ret;
	MemoryContext old;
	const char **ids;

	ret = SPI_execute(psprintf("SELECT id, kind, base_url, api_key_ref,"
							   " priority, enabled, connect_timeout,"
							   " max_concurrent, settings"
							   " FROM %s.igny8_providers ORDER BY id",
							   qschema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_providers: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(config->cxt);
	config->nproviders = (int) SPI_processed;
	config->providers = palloc0(sizeof(Igny8Provider) * Max(config->nproviders, 1));
	ids = palloc(sizeof(char *) * Max(config->nproviders, 1));
	for (int i = 0; i < config->nproviders; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Igny8Provider *p = &config->providers[i];
		cJSON	   *item;
		size_t		len;

		p->id = get_text(tup, desc, 1);
		p->kind = igny8_provider_kind_from_name(get_text(tup, desc, 2));
		p->base_url = get_text(tup, desc, 3);
		len = strlen(p->base_url);
		while (len > 0 && p->base_url[len - 1] == '/')
			p->base_url[--len] = '\0';
		p->key_ref = get_text(tup, desc, 4);
		p->priority = get_int(tup, desc, 5, 0);
		p->enabled = get_bool(tup, desc, 6);
		p->connect_timeout_ms = get_interval_ms(tup, desc, 7, 5000);
		p->max_concurrent = get_int(tup, desc, 8, 64);
		p->settings = get_settings(tup, desc, 9);
		item = cJSON_GetObjectItemCaseSensitive(p->settings, "proxy");
		p->proxy = cJSON_IsString(item) ? pstrdup(item->valuestring) : NULL;
		item = cJSON_GetObjectItemCaseSensitive(p->settings, "ca_file");
		p->ca_file = cJSON_IsString(item) ? pstrdup(item->valuestring) : NULL;
		item = cJSON_GetObjectItemCaseSensitive(p->settings, "check_models");
		p->check_models = !cJSON_IsFalse(item);
		p->key = igny8_resolve_key(p->key_ref, &p->key_error);
		p->shared_index = igny8_provider_index(p->id, true);
		if (p->shared_index >= 0)
			igny8_place_set_max(p->shared_index, p->max_concurrent);
		ids[i] = p->id;
	}
	igny8_provider_forget_unused(ids, config->nproviders);
	pfree(ids);
	MemoryContextSwitchTo(old);
}

static void
read_workflows(Igny8Config *config, const char *qschema)
{
	int			ret;
	MemoryContext old;

	ret = SPI_execute(psprintf("SELECT name, graph, bindings, defaults"
							   " FROM %s.igny8_workflows ORDER BY name",
							   qschema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_workflows: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(config->cxt);
	config->nworkflows = (int) SPI_processed;
	config->workflows = palloc0(sizeof(Igny8Workflow) * Max(config->nworkflows, 1));
	for (int i = 0; i < config->nworkflows; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Igny8Workflow *w = &config->workflows[i];

		w->name = get_text(tup, desc, 1);
		w->graph = get_settings(tup, desc, 2);
		w->bindings = get_settings(tup, desc, 3);
		w->defaults = get_settings(tup, desc, 4);
	}
	MemoryContextSwitchTo(old);
}

static Igny8Workflow *
find_workflow(Igny8Config *config, const char *name)
{
	if (name == NULL)
		return NULL;
	for (int i = 0; i < config->nworkflows; i++)
		if (strcmp(config->workflows[i].name, name) == 0)
			return &config->workflows[i];
	return NULL;
}

static void
read_deployments(Igny8Config *config, const char *qschema)
{
	int			ret;
	MemoryContext old;

	ret = SPI_execute(psprintf("SELECT alias, provider_id, provider_model, task,"
							   " timeout, queue_timeout, max_tokens, weight,"
							   " enabled, settings, workflow"
							   " FROM %s.igny8_models"
							   " ORDER BY alias, provider_id, provider_model",
							   qschema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_models: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(config->cxt);
	config->deployments = palloc0(sizeof(Igny8Deployment) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Igny8Deployment *d = &config->deployments[config->ndeployments];
		char	   *provider_id = get_text(tup, desc, 2);
		char	   *task = get_text(tup, desc, 4);
		cJSON	   *own;

		d->provider = igny8_config_provider(config, provider_id);
		if (d->provider == NULL)
			continue;			/* cannot happen: foreign key */
		d->alias = get_text(tup, desc, 1);
		d->model = get_text(tup, desc, 3);
		d->task = (task && strcmp(task, "image") == 0) ?
			IGNY8_TASK_IMAGE : IGNY8_TASK_TEXT;
		d->timeout_ms = get_interval_ms(tup, desc, 5, 60000);
		/* a zero interval: do not wait for a place at all */
		{
			bool		isnull;
			Datum		q = SPI_getbinval(tup, desc, 6, &isnull);
			Interval   *span = isnull ? NULL : DatumGetIntervalP(q);

			if (span == NULL)
				d->queue_timeout_ms = 30000;
			else if (span->time == 0 && span->day == 0 && span->month == 0)
				d->queue_timeout_ms = 0;
			else
				d->queue_timeout_ms = igny8_interval_ms(q);
		}
		d->max_tokens = get_int(tup, desc, 7, 0);
		d->weight = get_int(tup, desc, 8, 1);
		d->enabled = get_bool(tup, desc, 9);
		own = get_settings(tup, desc, 10);
		d->settings = merge_settings(d->provider->settings, own);
		if (own)
			cJSON_Delete(own);
		d->workflow = find_workflow(config, get_text(tup, desc, 11));
		{
			cJSON	   *max = cJSON_GetObjectItemCaseSensitive(d->settings,
															   "max_image_bytes");

			d->max_image_bytes = (cJSON_IsNumber(max) && max->valuedouble >= 1) ?
				(size_t) Min(max->valuedouble, (double) (MaxAllocSize - VARHDRSZ)) : 0;
		}
		config->ndeployments++;
	}
	MemoryContextSwitchTo(old);
}

static void
read_fallbacks(Igny8Config *config, const char *qschema)
{
	int			ret;
	MemoryContext old;

	ret = SPI_execute(psprintf("SELECT alias, fallback_alias FROM %s.igny8_fallbacks"
							   " ORDER BY alias, position", qschema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_fallbacks: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(config->cxt);
	config->nfallbacks = (int) SPI_processed;
	config->fallbacks = palloc0(sizeof(Igny8Fallback) * Max(config->nfallbacks, 1));
	for (int i = 0; i < config->nfallbacks; i++)
	{
		config->fallbacks[i].alias = get_text(SPI_tuptable->vals[i],
											  SPI_tuptable->tupdesc, 1);
		config->fallbacks[i].fallback = get_text(SPI_tuptable->vals[i],
												 SPI_tuptable->tupdesc, 2);
	}
	MemoryContextSwitchTo(old);
}

/*
 * The prices, ordered so that a lookup takes the first that fits.  Unit
 * and numbers come as text and are read here, in C (no operator runs).
 */
static void
read_prices(Igny8Config *config, const char *qschema)
{
	int			ret;
	MemoryContext old;

	ret = SPI_execute(psprintf("SELECT provider, model, unit, size, quality,"
							   " price, valid_from, valid_to"
							   " FROM %s.igny8_prices"
							   " ORDER BY provider, model, unit, size, quality,"
							   " valid_from", qschema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_prices: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(config->cxt);
	config->nprices = 0;
	config->prices = palloc0(sizeof(Igny8Price) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Igny8Price *p = &config->prices[config->nprices];
		char	   *unit = get_text(tup, desc, 3);
		bool		isnull;
		Datum		d;

		if (strcmp(unit, "per_1m_input_tokens") == 0)
			p->unit = IGNY8_PRICE_INPUT;
		else if (strcmp(unit, "per_1m_output_tokens") == 0)
			p->unit = IGNY8_PRICE_OUTPUT;
		else if (strcmp(unit, "per_1m_cached_input_tokens") == 0)
			p->unit = IGNY8_PRICE_CACHED_INPUT;
		else if (strcmp(unit, "per_1m_cache_write_tokens") == 0)
			p->unit = IGNY8_PRICE_CACHE_WRITE;
		else if (strcmp(unit, "per_image") == 0)
			p->unit = IGNY8_PRICE_IMAGE;
		else
			continue;			/* the CHECK allows no other */
		d = SPI_getbinval(tup, desc, 6, &isnull);
		if (isnull)
			continue;
		p->price = datumCopy(d, false, -1);
		p->provider = get_text(tup, desc, 1);
		p->model = get_text(tup, desc, 2);
		p->size = get_text(tup, desc, 4);
		p->quality = get_text(tup, desc, 5);
		p->valid_from = DatumGetTimestampTz(SPI_getbinval(tup, desc, 7, &isnull));
		if (isnull)
			p->valid_from = DT_NOBEGIN;
		d = SPI_getbinval(tup, desc, 8, &isnull);
		p->has_valid_to = !isnull;
		p->valid_to = isnull ? DT_NOEND : DatumGetTimestampTz(d);
		config->nprices++;
	}
	MemoryContextSwitchTo(old);
}

/*
 * Load the configuration.  Must run inside a transaction with SPI connected
 * and a snapshot set.  Returns NULL when the extension is not installed.
 * The copy's memory lives under the transaction's context until the load
 * succeeded, so a failed load leaves nothing behind.
 */
Igny8Config *
igny8_config_load(void)
{
	MemoryContext cxt;
	Igny8Config *config;
	char	   *schema;
	char	   *qschema;

	schema = igny8_extension_schema();
	if (schema == NULL)
		return NULL;
	qschema = pstrdup(quote_identifier(schema));

	cxt = AllocSetContextCreate(CurTransactionContext, "igny8_ai config",
								ALLOCSET_SMALL_SIZES);
	config = MemoryContextAllocZero(cxt, sizeof(Igny8Config));
	config->cxt = cxt;
	config->schema = MemoryContextStrdup(cxt, qschema);

	read_providers(config, qschema);
	read_workflows(config, qschema);
	read_deployments(config, qschema);
	read_fallbacks(config, qschema);
	read_prices(config, qschema);
	igny8_budgets_load(config, qschema);

	MemoryContextSetParent(cxt, TopMemoryContext);
	return config;
}

/* Drop a reference; the copy goes away with its last user. */
void
igny8_config_release(Igny8Config *config)
{
	if (config == NULL)
		return;
	Assert(config->refcount > 0);
	if (--config->refcount == 0)
		MemoryContextDelete(config->cxt);
}
