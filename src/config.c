/*-------------------------------------------------------------------------
 *
 * config.c
 *	  The worker's cached copy of igny8_providers, igny8_models,
 *	  igny8_fallbacks, igny8_workflows, igny8_prices, igny8_fixed_costs,
 *	  igny8_reference_models, igny8_account_providers and
 *	  igny8_cache_settings.
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
#include "utils/array.h"
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
	/* none holds a shared entry yet (release_entries) */
	for (int i = 0; i < config->nproviders; i++)
		config->providers[i].shared_index = -1;
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
		p->gpu_clock = -1;		/* read_fixed_costs() sets it */
		/* the entry is kept while this configuration is (health.c) */
		p->shared_index = igny8_provider_index(p->id, true);
		if (p->shared_index >= 0)
			igny8_place_set_max(p->shared_index, p->max_concurrent);
		/* a disabled provider has no health to alert about (health.c) */
		if (!p->enabled)
			igny8_provider_forget_health(p->shared_index);
	}
	igny8_provider_forget_unused();
	MemoryContextSwitchTo(old);
}

/*
 * The configuration no longer names its providers' shared entries: it was
 * released, or its load failed.  Entries that no configuration names any
 * more, with nothing in flight, are freed (a provider renamed or deleted
 * while requests routed before ran on it goes when the last one ends).
 */
static void
release_entries(Igny8Config *config)
{
	if (config->providers == NULL)
		return;
	for (int i = 0; i < config->nproviders; i++)
	{
		igny8_provider_unref(config->providers[i].shared_index);
		config->providers[i].shared_index = -1;
	}
	igny8_provider_forget_unused();
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

		p->nano = -1;			/* price_nano() computes it when first used */
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
 * One account's view of the configuration: copies of the providers and
 * deployments, the account's rows applied to the providers.
 */
static Igny8Account
make_account(Igny8Config *config, int64 account_id)
{
	Igny8Account acct;
	Igny8Config *view = palloc(sizeof(Igny8Config));

	*view = *config;
	view->providers = palloc(sizeof(Igny8Provider) * Max(config->nproviders, 1));
	memcpy(view->providers, config->providers,
		   sizeof(Igny8Provider) * config->nproviders);
	view->deployments = palloc(sizeof(Igny8Deployment) * Max(config->ndeployments, 1));
	memcpy(view->deployments, config->deployments,
		   sizeof(Igny8Deployment) * config->ndeployments);
	for (int i = 0; i < config->ndeployments; i++)
		view->deployments[i].provider = view->providers +
			(config->deployments[i].provider - config->providers);
	view->naccounts = 0;
	view->accounts = NULL;
	acct.account_id = account_id;
	acct.view = view;
	acct.disabled = NULL;
	return acct;
}

/*
 * igny8_account_providers, as a view of the configuration per account.
 * The account's keys are resolved here, like the providers' own: a call
 * runs no query and reads no file.
 */
static void
read_accounts(Igny8Config *config, const char *qschema)
{
	int			ret;
	MemoryContext old;
	Igny8Account *acct = NULL;

	ret = SPI_execute(psprintf("SELECT account_id, provider, enabled,"
							   " api_key_ref, priority"
							   " FROM %s.igny8_account_providers"
							   " ORDER BY account_id, provider", qschema),
					  true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_account_providers: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(config->cxt);
	config->naccounts = 0;
	config->accounts = palloc0(sizeof(Igny8Account) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		account_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		char	   *id = get_text(tup, desc, 2);
		Igny8Provider *base = igny8_config_provider(config, id);
		Igny8Provider *p;
		char	   *ref;

		if (base == NULL)
			continue;			/* cannot happen: foreign key */
		if (acct == NULL || acct->account_id != account_id)
		{
			config->accounts[config->naccounts] = make_account(config, account_id);
			acct = &config->accounts[config->naccounts++];
		}
		p = acct->view->providers + (base - config->providers);
		p->enabled = p->enabled && get_bool(tup, desc, 3);
		if (!get_bool(tup, desc, 3))
			acct->disabled = acct->disabled ?
				psprintf("%s, \"%s\"", acct->disabled, id) :
				psprintf("\"%s\"", id);
		ref = get_text(tup, desc, 4);
		if (ref != NULL)
		{
			p->key_ref = ref;
			p->account_key_ref = ref;
			p->key = igny8_resolve_key(ref, &p->key_error);
		}
		p->priority = get_int(tup, desc, 5, p->priority);
	}
	MemoryContextSwitchTo(old);
}

/*
 * The configuration an account's calls are routed with: its view when it
 * has rows in igny8_account_providers, else config itself.  A binary
 * search of the accounts loaded: no query.
 */
Igny8Config *
igny8_config_for_account(Igny8Config *config, bool has_account,
						 int64 account_id, Igny8Account **account)
{
	int			lo = 0;
	int			hi = config->naccounts - 1;

	*account = NULL;
	if (!has_account)
		return config;
	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int64		id = config->accounts[mid].account_id;

		if (id == account_id)
		{
			*account = &config->accounts[mid];
			return config->accounts[mid].view;
		}
		if (id < account_id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return config;
}

static void
read_cache_settings(Igny8Config *config, const char *qschema)
{
	int			ret;
	MemoryContext old;

	ret = SPI_execute(psprintf("SELECT alias, enabled, ttl, max_entries,"
							   " cache_nonzero_temperature"
							   " FROM %s.igny8_cache_settings ORDER BY alias",
							   qschema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_cache_settings: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(config->cxt);
	config->ncache = (int) SPI_processed;
	config->cache = palloc0(sizeof(Igny8CacheSetting) * Max(config->ncache, 1));
	for (int i = 0; i < config->ncache; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Igny8CacheSetting *c = &config->cache[i];
		bool		isnull;

		c->alias = get_text(tup, desc, 1);
		c->enabled = get_bool(tup, desc, 2);
		c->ttl = datumCopy(SPI_getbinval(tup, desc, 3, &isnull), false,
						   sizeof(Interval));
		c->max_entries = get_int(tup, desc, 4, 10000);
		c->nonzero_temperature = get_bool(tup, desc, 5);
	}
	MemoryContextSwitchTo(old);
}

/* The cache setting of an alias, or NULL when it is not cached. */
Igny8CacheSetting *
igny8_config_cache(Igny8Config *config, const char *alias)
{
	for (int i = 0; i < config->ncache; i++)
		if (config->cache[i].enabled &&
			strcmp(config->cache[i].alias, alias) == 0)
			return &config->cache[i];
	return NULL;
}

/*
 * The fixed costs, by box and valid_from.  The providers of the boxes
 * whose rent is valid now get the clock of their box: the shared entry of
 * its first provider that has one (gpuclock.c); the rate is looked up per
 * attempt.  A rent that starts later gets no clock yet: the rows come by
 * box and valid_from, and a box's next rent, or another box that takes
 * over one of its providers later, would otherwise move the provider to
 * its clock today, where its attempts would not share the time of the
 * box they run on.  rents_change is when the next rent starts or ends:
 * a worker loads the configuration again before it takes work after it
 * (worker.c).
 */
static void
read_fixed_costs(Igny8Config *config, const char *qschema)
{
	int			ret;
	MemoryContext old;
	TimestampTz now = GetCurrentTimestamp();

	ret = SPI_execute(psprintf("SELECT box, providers, monthly_amount,"
							   " valid_from, valid_to"
							   " FROM %s.igny8_fixed_costs"
							   " ORDER BY box, valid_from", qschema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_fixed_costs: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(config->cxt);
	config->nfixed_costs = 0;
	config->rents_change = 0;
	config->fixed_costs = palloc0(sizeof(Igny8FixedCost) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Igny8FixedCost *f = &config->fixed_costs[config->nfixed_costs];
		bool		isnull;
		Datum		d;
		Datum	   *elems;
		bool	   *elem_nulls;
		int			nelems;
		int			clock = -1;

		d = SPI_getbinval(tup, desc, 3, &isnull);
		if (isnull)
			continue;			/* NOT NULL */
		f->monthly_amount = datumCopy(d, false, -1);
		f->box = get_text(tup, desc, 1);
		d = SPI_getbinval(tup, desc, 2, &isnull);
		if (isnull)
			continue;			/* NOT NULL */
		deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false,
						  TYPALIGN_INT, &elems, &elem_nulls, &nelems);
		f->providers = palloc0(sizeof(char *) * Max(nelems, 1));
		for (int j = 0; j < nelems; j++)
			if (!elem_nulls[j])
				f->providers[f->nproviders++] =
					igny8_from_db(TextDatumGetCString(elems[j]));
		f->valid_from = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		if (isnull)
			f->valid_from = DT_NOBEGIN;
		d = SPI_getbinval(tup, desc, 5, &isnull);
		f->has_valid_to = !isnull;
		f->valid_to = isnull ? DT_NOEND : DatumGetTimestampTz(d);
		config->nfixed_costs++;

		if (f->valid_from > now)
		{
			if (!TIMESTAMP_IS_NOEND(f->valid_from) &&
				(config->rents_change == 0 ||
				 f->valid_from < config->rents_change))
				config->rents_change = f->valid_from;
			continue;
		}
		if (f->has_valid_to)
		{
			if (now >= f->valid_to)
				continue;
			if (!TIMESTAMP_IS_NOEND(f->valid_to) &&
				(config->rents_change == 0 ||
				 f->valid_to < config->rents_change))
				config->rents_change = f->valid_to;
		}
		for (int j = 0; j < f->nproviders && clock < 0; j++)
		{
			Igny8Provider *p = igny8_config_provider(config, f->providers[j]);

			if (p != NULL)
				clock = p->shared_index;
		}
		for (int j = 0; j < f->nproviders; j++)
		{
			Igny8Provider *p = igny8_config_provider(config, f->providers[j]);

			if (p != NULL)
				p->gpu_clock = clock;
		}
	}
	MemoryContextSwitchTo(old);
}

/* What each alias stands for, for ai_usage_log.reference_cost. */
static void
read_reference_models(Igny8Config *config, const char *qschema)
{
	int			ret;
	MemoryContext old;

	ret = SPI_execute(psprintf("SELECT alias, provider, model"
							   " FROM %s.igny8_reference_models ORDER BY alias",
							   qschema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_reference_models: %s",
			 SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(config->cxt);
	config->nreferences = (int) SPI_processed;
	config->references = palloc0(sizeof(Igny8ReferenceModel) * Max(config->nreferences, 1));
	for (int i = 0; i < config->nreferences; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		config->references[i].alias = get_text(tup, desc, 1);
		config->references[i].provider = get_text(tup, desc, 2);
		config->references[i].model = get_text(tup, desc, 3);
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

	PG_TRY();
	{
		read_providers(config, qschema);
		read_workflows(config, qschema);
		read_deployments(config, qschema);
		read_fallbacks(config, qschema);
		read_prices(config, qschema);
		read_fixed_costs(config, qschema);
		read_reference_models(config, qschema);
		read_cache_settings(config, qschema);
		/* (the spend of a new budget is summed after the load) */
		igny8_budgets_load(config, qschema);
		/* last: the accounts' views copy everything above */
		read_accounts(config, qschema);
	}
	PG_CATCH();
	{
		/* the copy goes with the transaction; the entries it named too */
		release_entries(config);
		PG_RE_THROW();
	}
	PG_END_TRY();

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
	{
		release_entries(config);
		MemoryContextDelete(config->cxt);
	}
}
