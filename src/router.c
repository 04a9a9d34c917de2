/*-------------------------------------------------------------------------
 *
 * router.c
 *	  From a model alias to the ordered list of deployments to try, and the
 *	  backoff between retries.
 *
 * Candidates are the alias's enabled deployments by provider priority
 * (highest first; among equal priorities a weighted random order spreads the
 * load), followed by those of its fallback aliases in their configured
 * order, recursively, each deployment once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "utils/elog.h"

#include "worker.h"

#define IGNY8_MAX_BACKOFF_MS	8000
#define IGNY8_MAX_RETRY_AFTER_S 60.0

static bool
alias_known(Igny8Config *config, const char *alias)
{
	for (int i = 0; i < config->ndeployments; i++)
		if (strcmp(config->deployments[i].alias, alias) == 0)
			return true;
	return false;
}

static bool
usable(Igny8Deployment *d, Igny8Task task)
{
	Igny8Task	want = (task == IGNY8_TASK_IMAGE) ? IGNY8_TASK_IMAGE :
		IGNY8_TASK_TEXT;

	return d->enabled && d->provider->enabled && d->task == want &&
		d->provider->kind != IGNY8_KIND_INVALID;
}

/*
 * Append the usable deployments of one alias to out[], by priority, with a
 * weighted random order among equal priorities.
 */
static void
add_alias(Igny8Config *config, const char *alias, Igny8Task task,
		  Igny8Deployment **out, int *n)
{
	int			first = *n;

	for (int i = 0; i < config->ndeployments; i++)
	{
		Igny8Deployment *d = &config->deployments[i];
		bool		dup = false;

		if (strcmp(d->alias, alias) != 0 || !usable(d, task))
			continue;
		for (int j = 0; j < *n; j++)
			if (out[j]->provider == d->provider &&
				strcmp(out[j]->model, d->model) == 0)
				dup = true;
		if (!dup)
			out[(*n)++] = d;
	}

	/* selection sort: highest priority first, weighted draw among ties */
	for (int i = first; i < *n; i++)
	{
		int			best = out[i]->provider->priority;
		int64		total = 0;
		double		r;
		int			pick = i;

		for (int j = i; j < *n; j++)
			best = Max(best, out[j]->provider->priority);
		for (int j = i; j < *n; j++)
			if (out[j]->provider->priority == best)
				total += out[j]->weight;
		r = pg_prng_double(&pg_global_prng_state) * (double) total;
		for (int j = i; j < *n; j++)
		{
			if (out[j]->provider->priority != best)
				continue;
			pick = j;
			r -= out[j]->weight;
			if (r < 0)
				break;
		}
		if (pick != i)
		{
			Igny8Deployment *tmp = out[i];

			out[i] = out[pick];
			out[pick] = tmp;
		}
	}
}

static void
add_with_fallbacks(Igny8Config *config, const char *alias, Igny8Task task,
				   Igny8Deployment **out, int *n, List **seen)
{
	ListCell   *lc;

	foreach(lc, *seen)
		if (strcmp((char *) lfirst(lc), alias) == 0)
			return;
	*seen = lappend(*seen, (void *) alias);

	add_alias(config, alias, task, out, n);
	for (int i = 0; i < config->nfallbacks; i++)
		if (strcmp(config->fallbacks[i].alias, alias) == 0)
			add_with_fallbacks(config, config->fallbacks[i].fallback, task,
							   out, n, seen);
}

/*
 * The error of an alias that does not exist (other_task false) or serves
 * only the other task: the router's, and igny8_submit_*'s (submit.c).
 */
void
igny8_alias_error(const char *alias, Igny8Task task, bool other_task,
				  Igny8RouteError *err)
{
	memset(err, 0, sizeof(*err));
	if (other_task)
	{
		err->sqlerrcode = ERRCODE_WRONG_OBJECT_TYPE;
		err->message = psprintf("model alias \"%s\" does not generate %s",
								alias,
								task == IGNY8_TASK_IMAGE ? "images" : "text");
		err->hint = pstrdup("Use an alias whose igny8_models.task matches the call.");
	}
	else
	{
		err->sqlerrcode = ERRCODE_UNDEFINED_OBJECT;
		err->message = psprintf("model alias \"%s\" does not exist", alias);
		err->hint = pstrdup("Model aliases are the \"alias\" column of igny8_models.");
	}
}

/*
 * Every deployment that may serve an alias (its own and its fallbacks',
 * enabled, for the task), whatever their circuits say: what the response
 * cache's key covers (cache.c), which must not change while a provider is
 * down.  A new palloc'd array, in routing order before the weighted draw
 * is taken into account (callers sort it).
 */
void
igny8_route_deployments(Igny8Config *config, const char *alias,
						Igny8Task task, Igny8Deployment ***deployments,
						int *ndeployments)
{
	Igny8Deployment **out;
	int			n = 0;
	List	   *seen = NIL;

	out = palloc(sizeof(Igny8Deployment *) * Max(config->ndeployments, 1));
	add_with_fallbacks(config, alias, task, out, &n, &seen);
	list_free(seen);
	*deployments = out;
	*ndeployments = n;
}

/*
 * Build the candidate list for an alias.  Returns false, with *err filled,
 * when the alias is unknown or nothing can serve it.
 */
bool
igny8_route(Igny8Config *config, const char *alias, Igny8Task task,
			Igny8Deployment ***candidates, int *ncandidates,
			Igny8RouteError *err)
{
	Igny8Deployment **out;
	int			n;

	memset(err, 0, sizeof(*err));
	if (!alias_known(config, alias))
	{
		igny8_alias_error(alias, task, false, err);
		return false;
	}

	igny8_route_deployments(config, alias, task, &out, &n);

	if (n == 0)
	{
		bool		other_task = false;

		for (int i = 0; i < config->ndeployments; i++)
		{
			Igny8Deployment *d = &config->deployments[i];

			if (strcmp(d->alias, alias) == 0 && d->enabled &&
				d->provider->enabled && !usable(d, task))
				other_task = true;
		}
		err->sqlerrcode = ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
		if (other_task)
			igny8_alias_error(alias, task, true, err);
		else
		{
			err->message = psprintf("model alias \"%s\" has no enabled deployment",
									alias);
			err->detail = pstrdup("Every deployment of the alias and of its fallbacks is disabled, or its provider is.");
			err->hint = pstrdup("Enable a row of igny8_models for this alias, and its provider in igny8_providers.");
		}
		pfree(out);
		return false;
	}

	/*
	 * Skip providers whose circuit is open while another candidate exists;
	 * if every circuit is open, try them all rather than fail untried.
	 */
	{
		int			kept = 0;
		bool	   *allowed = palloc(sizeof(bool) * n);

		for (int i = 0; i < n; i++)
		{
			allowed[i] = igny8_circuit_allows(out[i]->provider->shared_index);
			if (allowed[i])
				kept++;
		}
		if (kept > 0 && kept < n)
		{
			int			j = 0;

			for (int i = 0; i < n; i++)
				if (allowed[i])
					out[j++] = out[i];
			n = kept;
		}
		pfree(allowed);
	}

	*candidates = out;
	*ncandidates = n;
	return true;
}

/*
 * How long to wait before retry number retry (0-based): the provider's
 * retry-after when it gave a sane one (0 < wait <= 60 s, as the official
 * SDKs take it: a 0 would send every retry at once into a provider that
 * just said it is overloaded), else exponential backoff with jitter as
 * the SDKs do: min(0.5 s * 2^retry, 8 s) * (1 - 0.25 * rand).
 */
long
igny8_backoff_ms(int retry, double retry_after)
{
	double		ms;

	if (retry_after > 0 && retry_after <= IGNY8_MAX_RETRY_AFTER_S)
		return (long) (retry_after * 1000.0);

	ms = 500.0 * (double) (1 << Min(retry, 10));
	ms = Min(ms, (double) IGNY8_MAX_BACKOFF_MS);
	ms *= 1.0 - 0.25 * pg_prng_double(&pg_global_prng_state);
	return (long) ms;
}
