/*-------------------------------------------------------------------------
 *
 * config.c
 *	  The worker's cached copy of igny8_providers, igny8_models and
 *	  igny8_fallbacks.
 *
 * A copy is loaded when the worker starts and again whenever the shared
 * configuration generation moves (the tables' triggers bump it at commit).
 * Jobs hold a reference to the copy they were routed with, so a reload never
 * pulls a deployment out from under a request in flight.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "worker.h"

static char *
get_text(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (isnull)
		return NULL;
	return TextDatumGetCString(d);
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
 * The schema igny8_ai is installed in, quoted for SQL, or NULL when the
 * extension is not installed in this database.  Needs a transaction and SPI.
 */
char *
igny8_extension_schema(void)
{
	int			ret;

	ret = SPI_execute("SELECT pg_catalog.quote_ident(n.nspname)"
					  " FROM pg_catalog.pg_extension e"
					  " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
					  " WHERE e.extname = 'igny8_ai'", true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not look up the igny8_ai extension: %s",
			 SPI_result_code_string(ret));
	if (SPI_processed == 0)
		return NULL;
	return get_text(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
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

/*
 * Load the configuration.  Must run inside a transaction with SPI connected
 * and a snapshot set.  Returns NULL when the extension is not installed.
 */
Igny8Config *
igny8_config_load(void)
{
	MemoryContext cxt;
	MemoryContext old;
	Igny8Config *config;
	char	   *schema;
	int			ret;
	cJSON	  **provider_settings;

	schema = igny8_extension_schema();
	if (schema == NULL)
		return NULL;

	cxt = AllocSetContextCreate(TopMemoryContext, "igny8_ai config",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	config = palloc0(sizeof(Igny8Config));
	config->cxt = cxt;
	config->schema = pstrdup(schema);
	MemoryContextSwitchTo(old);

	/* providers */
	ret = SPI_execute(psprintf("SELECT id, kind, rtrim(base_url, '/'), api_key_ref,"
							   " priority, enabled,"
							   " (extract(epoch FROM connect_timeout) * 1000)::int,"
							   " max_concurrent, settings::text"
							   " FROM %s.igny8_providers ORDER BY id",
							   schema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_providers: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(cxt);
	config->nproviders = (int) SPI_processed;
	config->providers = palloc0(sizeof(Igny8Provider) * Max(config->nproviders, 1));
	provider_settings = palloc0(sizeof(cJSON *) * Max(config->nproviders, 1));
	for (int i = 0; i < config->nproviders; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Igny8Provider *p = &config->providers[i];
		char	   *settings = get_text(tup, desc, 9);
		cJSON	   *proxy;
		cJSON	   *ca_file;

		p->id = get_text(tup, desc, 1);
		p->kind = igny8_provider_kind_from_name(get_text(tup, desc, 2));
		p->base_url = get_text(tup, desc, 3);
		p->key_ref = get_text(tup, desc, 4);
		p->priority = get_int(tup, desc, 5, 0);
		p->enabled = get_bool(tup, desc, 6);
		p->connect_timeout_ms = get_int(tup, desc, 7, 5000);
		p->max_concurrent = get_int(tup, desc, 8, 64);
		provider_settings[i] = settings ? cJSON_Parse(settings) : NULL;
		proxy = cJSON_GetObjectItemCaseSensitive(provider_settings[i], "proxy");
		p->proxy = cJSON_IsString(proxy) ? pstrdup(proxy->valuestring) : NULL;
		ca_file = cJSON_GetObjectItemCaseSensitive(provider_settings[i], "ca_file");
		p->ca_file = cJSON_IsString(ca_file) ? pstrdup(ca_file->valuestring) : NULL;
		p->key = igny8_resolve_key(p->key_ref, &p->key_error);
		p->shared_index = igny8_provider_index(p->id, true);
		p->settings = provider_settings[i];
	}
	MemoryContextSwitchTo(old);

	/* deployments */
	ret = SPI_execute(psprintf("SELECT alias, provider_id, provider_model, task,"
							   " (extract(epoch FROM timeout) * 1000)::int,"
							   " max_tokens, weight, enabled, settings::text"
							   " FROM %s.igny8_models ORDER BY alias, provider_id, provider_model",
							   schema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_models: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(cxt);
	config->deployments = palloc0(sizeof(Igny8Deployment) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Igny8Deployment *d = &config->deployments[config->ndeployments];
		char	   *provider_id = get_text(tup, desc, 2);
		char	   *task = get_text(tup, desc, 4);
		char	   *settings = get_text(tup, desc, 9);
		cJSON	   *own;

		d->provider = igny8_config_provider(config, provider_id);
		if (d->provider == NULL)
			continue;			/* cannot happen: foreign key */
		d->alias = get_text(tup, desc, 1);
		d->model = get_text(tup, desc, 3);
		d->task = (task && strcmp(task, "image") == 0) ?
			IGNY8_TASK_IMAGE : IGNY8_TASK_TEXT;
		d->timeout_ms = get_int(tup, desc, 5, 60000);
		d->max_tokens = get_int(tup, desc, 6, 0);
		d->weight = get_int(tup, desc, 7, 1);
		d->enabled = get_bool(tup, desc, 8);
		own = settings ? cJSON_Parse(settings) : NULL;
		d->settings = merge_settings(provider_settings[d->provider - config->providers],
									 own);
		if (own)
			cJSON_Delete(own);
		config->ndeployments++;
	}
	MemoryContextSwitchTo(old);

	/* fallbacks */
	ret = SPI_execute(psprintf("SELECT alias, fallback_alias FROM %s.igny8_fallbacks"
							   " ORDER BY alias, position", schema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_fallbacks: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(cxt);
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
