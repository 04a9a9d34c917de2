/*-------------------------------------------------------------------------
 *
 * price.c
 *	  The cost of an attempt, from the prices of igny8_prices that the
 *	  worker holds (config.c), and the cost of a job, the sum of its
 *	  attempts'.
 *
 * Costs are numeric from end to end, never a double: an attempt's cost is
 * computed when its usage row is written (usage.c), rounded to 6 decimals
 * as the row's cost column keeps it, and kept as numeric text; a caller's
 * (and a submitted job's) cost is the sum of its attempts' costs.
 *
 * A text attempt costs
 *	   (input - cached - cache_write) * input price
 *	 + cached * cached input price (the input price when there is none)
 *	 + cache_write * cache-write price (the input price when there is none)
 *	 + output * output price,
 * each price per 1M tokens; an image attempt costs its images times the
 * price per image of its size and quality.  The price is the one valid at
 * the attempt's time, of the attempt's provider and its provider-side
 * model (the deployment's, else the one the provider reported).  A unit
 * without a price costs nothing: the self-hosted providers have no price.
 *
 * A self-hosted attempt costs, besides, its share of the rent of the box
 * that runs its provider (igny8_fixed_costs): its share of the box's time
 * (gpuclock.c: overlapping attempts split the hours they share) times the
 * month's rent divided by the month's hours.
 *
 * An attempt's reference cost is the price of the same tokens or images
 * at the model its alias stands for (igny8_reference_models), computed the
 * same way: what OpenAI would have charged for it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "worker.h"

/* The price valid at "at", or NULL. */
static Igny8Price *
find_price(Igny8Config *config, const char *provider, const char *model,
		   Igny8PriceUnit unit, const char *size, const char *quality,
		   TimestampTz at)
{
	if (config == NULL || provider == NULL || model == NULL)
		return NULL;
	for (int i = 0; i < config->nprices; i++)
	{
		Igny8Price *p = &config->prices[i];

		if (p->unit != unit ||
			strcmp(p->provider, provider) != 0 ||
			strcmp(p->model, model) != 0 ||
			strcmp(p->size, size) != 0 ||
			strcmp(p->quality, quality) != 0)
			continue;
		if (p->valid_from <= at && (!p->has_valid_to || at < p->valid_to))
			return p;
	}
	return NULL;
}

/* The model's price first, then the one of the model the provider reported. */
static Igny8Price *
model_price(Igny8Config *config, const char *provider, const char *model,
			TimestampTz at, const char *reported, Igny8PriceUnit unit,
			const char *size, const char *quality)
{
	Igny8Price *p = find_price(config, provider, model, unit, size, quality,
							   at);

	if (p == NULL && reported != NULL &&
		(model == NULL || strcmp(reported, model) != 0))
		p = find_price(config, provider, reported, unit, size, quality, at);
	return p;
}

/* sum + count * price / per */
static Numeric
add_priced(Numeric sum, int64 count, Igny8Price *p, int64 per)
{
	Numeric		n;

	if (count <= 0 || p == NULL)
		return sum;
	n = DatumGetNumeric(DirectFunctionCall2(numeric_mul,
											NumericGetDatum(int64_to_numeric(count)),
											p->price));
	if (per != 1)
		n = DatumGetNumeric(DirectFunctionCall2(numeric_div,
												NumericGetDatum(n),
												NumericGetDatum(int64_to_numeric(per))));
	return DatumGetNumeric(DirectFunctionCall2(numeric_add,
											   NumericGetDatum(sum),
											   NumericGetDatum(n)));
}

/*
 * The quality an image is priced by at provider's model, for the quality
 * asked: at an OpenAI provider the one it bills (provider_openai.c maps
 * the quality asked to the model's own, as it sends it: dall-e-3 "high" is
 * "hd"), elsewhere the one asked; "standard" when there is none.  A price
 * with no quality is taken when the quality has none.
 */
static const char *
billed_quality(Igny8Config *config, const char *provider, const char *model,
			   const char *quality)
{
	Igny8Provider *p = igny8_config_provider(config, provider);

	if (p != NULL && p->kind == IGNY8_KIND_OPENAI)
		quality = igny8_openai_image_billed_quality(model, quality);
	return quality ? quality : "standard";
}

/*
 * The price of an attempt's tokens or images at a provider's model (the
 * attempt's own, or the reference model of its alias).  *unpriced is set
 * when something the attempt used has no price there.
 */
static Numeric
price_usage(Igny8Config *config, Igny8Job *job, Igny8Attempt *a,
			const char *provider, const char *model, const char *reported,
			bool *unpriced)
{
	Numeric		sum = int64_to_numeric(0);

	*unpriced = false;
	if (job->task == IGNY8_TASK_IMAGE)
	{
		if (a->images > 0 && a->image_width > 0 && a->image_height > 0)
		{
			char		size[32];
			const char *quality = billed_quality(config, provider, model,
												 job->img_quality);
			Igny8Price *p;

			snprintf(size, sizeof(size), "%dx%d", a->image_width,
					 a->image_height);
			/* the quality asked for, else the price for any quality */
			p = model_price(config, provider, model, a->at, reported,
							IGNY8_PRICE_IMAGE, size, quality);
			if (p == NULL)
				p = model_price(config, provider, model, a->at, reported,
								IGNY8_PRICE_IMAGE, size, "");
			*unpriced = (p == NULL);
			sum = add_priced(sum, a->images, p, 1);
		}
	}
	else if (job->task != IGNY8_TASK_HEALTH)
	{
		Igny8Price *in = model_price(config, provider, model, a->at, reported,
									 IGNY8_PRICE_INPUT, "", "");
		Igny8Price *cached = model_price(config, provider, model, a->at,
										 reported, IGNY8_PRICE_CACHED_INPUT,
										 "", "");
		Igny8Price *write = model_price(config, provider, model, a->at,
										reported, IGNY8_PRICE_CACHE_WRITE,
										"", "");
		Igny8Price *out = model_price(config, provider, model, a->at,
									  reported, IGNY8_PRICE_OUTPUT, "", "");
		int64		read_n = Max(a->cached_input_tokens, 0);
		int64		write_n = Max(a->cache_write_tokens, 0);
		int64		plain_n;

		read_n = Min(read_n, a->input_tokens);
		write_n = Min(write_n, a->input_tokens - read_n);
		plain_n = a->input_tokens - read_n - write_n;
		*unpriced = (a->input_tokens > 0 && in == NULL) ||
			(a->output_tokens > 0 && out == NULL);
		sum = add_priced(sum, plain_n, in, 1000000);
		sum = add_priced(sum, read_n, cached ? cached : in, 1000000);
		sum = add_priced(sum, write_n, write ? write : in, 1000000);
		sum = add_priced(sum, a->output_tokens, out, 1000000);
	}
	return sum;
}

/* The fixed cost that pays for provider at "at", or NULL. */
static Igny8FixedCost *
find_fixed_cost(Igny8Config *config, const char *provider, TimestampTz at)
{
	for (int i = 0; i < config->nfixed_costs; i++)
	{
		Igny8FixedCost *f = &config->fixed_costs[i];

		if (f->valid_from > at || (f->has_valid_to && at >= f->valid_to))
			continue;
		for (int j = 0; j < f->nproviders; j++)
			if (strcmp(f->providers[j], provider) == 0)
				return f;
	}
	return NULL;
}

/*
 * The UTC calendar month that holds at: its start and the next month's
 * (budget.c counts its months the same way).  False for a time outside
 * the range of timestamps.
 */
bool
igny8_utc_month(TimestampTz at, TimestampTz *start, TimestampTz *next)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(at, NULL, &tm, &fsec, NULL, NULL) != 0)
		return false;
	tm.tm_mday = 1;
	tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
	if (tm2timestamp(&tm, 0, NULL, start) != 0)
		return false;
	if (++tm.tm_mon > MONTHS_PER_YEAR)
	{
		tm.tm_mon = 1;
		tm.tm_year++;
	}
	return tm2timestamp(&tm, 0, NULL, next) == 0;
}

/*
 * sum + the attempt's share of its box's rent: its share of the box's
 * time (gpuclock.c) times the hourly rate, the monthly amount valid at the
 * attempt's start divided by the hours of that calendar month (in UTC, as
 * the reports count months).  The seconds are a double, rounded to the
 * microsecond; the money is numeric.
 */
static Numeric
add_gpu_share(Igny8Config *config, Igny8Attempt *a, Numeric sum)
{
	Igny8FixedCost *f;
	TimestampTz month_start;
	TimestampTz month_end;
	Datum		n;

	if (a->gpu_seconds < 0 || a->provider == NULL ||
		(f = find_fixed_cost(config, a->provider, a->at)) == NULL)
		return sum;
	if (!igny8_utc_month(a->at, &month_start, &month_end))
		return sum;				/* cannot happen: a finite time */
	n = DirectFunctionCall2(numeric_mul,
							NumericGetDatum(int64_to_numeric((int64) rint(a->gpu_seconds * 1000000.0))),
							f->monthly_amount);
	n = DirectFunctionCall2(numeric_div, n,
							NumericGetDatum(int64_to_numeric(month_end - month_start)));
	return DatumGetNumeric(DirectFunctionCall2(numeric_add,
											   NumericGetDatum(sum), n));
}

/* A numeric as text rounded to 6 decimals, as ai_usage_log keeps it. */
static char *
money_text(Numeric sum)
{
	Datum		rounded = DirectFunctionCall2(numeric_round,
											  NumericGetDatum(sum),
											  Int32GetDatum(6));

	return DatumGetCString(DirectFunctionCall1(numeric_out, rounded));
}

/*
 * The cost of an attempt, as numeric text rounded to 6 decimals, in
 * CurrentMemoryContext: its tokens or images at its provider's prices,
 * plus its share of the rent of the box that runs its provider.
 * reported_model: the model the provider named in its answer, or NULL.
 */
char *
igny8_attempt_cost(Igny8Config *config, Igny8Job *job, Igny8Attempt *a,
				   const char *reported_model)
{
	bool		unpriced;
	Numeric		sum = price_usage(config, job, a, a->provider, a->model,
								  reported_model, &unpriced);

	sum = add_gpu_share(config, a, sum);
	return money_text(sum);
}

/*
 * What the attempt would have cost at the model its alias stands for
 * (igny8_reference_models), as numeric text rounded to 6 decimals, or
 * NULL: the alias has no reference model, or that model has no price for
 * what the attempt used (an image size it does not make).
 */
char *
igny8_attempt_reference_cost(Igny8Config *config, Igny8Job *job,
							 Igny8Attempt *a)
{
	Igny8ReferenceModel *ref = NULL;
	bool		unpriced;
	Numeric		sum;

	if (job->alias == NULL || job->task == IGNY8_TASK_HEALTH)
		return NULL;
	for (int i = 0; i < config->nreferences; i++)
		if (strcmp(config->references[i].alias, job->alias) == 0)
		{
			ref = &config->references[i];
			break;
		}
	if (ref == NULL)
		return NULL;
	sum = price_usage(config, job, a, ref->provider, ref->model, NULL,
					  &unpriced);
	return unpriced ? NULL : money_text(sum);
}

/*
 * The cost of a job: the sum of its attempts' costs, as numeric text in
 * CurrentMemoryContext ("0" before any was priced).
 */
char *
igny8_job_cost(Igny8Job *job)
{
	Datum		sum = NumericGetDatum(int64_to_numeric(0));
	bool		any = false;
	ListCell   *lc;

	foreach(lc, job->attempts)
	{
		Igny8Attempt *a = lfirst(lc);

		if (a->cost == NULL)
			continue;
		sum = DirectFunctionCall2(numeric_add, sum, igny8_cost_datum(a->cost));
		any = true;
	}
	if (!any)
		return pstrdup("0");
	return DatumGetCString(DirectFunctionCall1(numeric_out, sum));
}

/*
 * A price per 1M tokens in nano-USD per token (thousandths of its unit),
 * rounded up, computed once per copy of the configuration: the text
 * estimates need no numeric arithmetic.
 */
static int64
price_nano(Igny8Price *p)
{
	if (p == NULL)
		return 0;
	if (p->nano < 0)
	{
		Datum		d;

		d = DirectFunctionCall2(numeric_mul, p->price,
								NumericGetDatum(int64_to_numeric(1000)));
		d = DirectFunctionCall1(numeric_ceil, d);
		p->nano = Max(DatumGetInt64(DirectFunctionCall1(numeric_int8, d)), 0);
	}
	return p->nano;
}

/*
 * What an attempt on deployment d may cost at most, in micro-USD rounded
 * up, for the budgets (budget.c): 0 when d has no price, i.e. is not paid.
 * Text: the prompt's bytes plus 8 tokens per message and 8 more as input
 * tokens (a token is at least one byte; the rest covers the chat format)
 * at the input price, and max_tokens output tokens at the output price.
 * Images: one image of the size and quality the provider bills for the
 * ones asked (an OpenAI model's nearest size and its own quality).
 */
int64
igny8_attempt_estimate(Igny8Config *config, Igny8Job *job,
					   Igny8Deployment *d, int max_tokens, TimestampTz at)
{
	const char *provider = d->provider->id;
	int64		nano = 0;

	if (job->task == IGNY8_TASK_IMAGE)
	{
		char		size[32];
		int			width = job->img_width;
		int			height = job->img_height;
		Igny8Price *p;

		/* an OpenAI model makes the nearest of its own sizes */
		if (d->provider->kind == IGNY8_KIND_OPENAI)
			igny8_openai_image_size(d->model, job->img_width, job->img_height,
									&width, &height);
		snprintf(size, sizeof(size), "%dx%d", width, height);
		p = find_price(config, provider, d->model, IGNY8_PRICE_IMAGE, size,
					   billed_quality(config, provider, d->model,
									  job->img_quality), at);
		if (p == NULL)
			p = find_price(config, provider, d->model, IGNY8_PRICE_IMAGE,
						   size, "", at);
		/* per image, in USD: micro-USD at once (price_nano is milli-USD) */
		return p ? igny8_numeric_micro(DatumGetNumeric(p->price)) : 0;
	}
	else if (job->task != IGNY8_TASK_HEALTH)
	{
		int64		input = 8;

		for (int i = 0; i < job->nmessages; i++)
			input += 8 + (job->messages[i].content ?
						  strlen(job->messages[i].content) : 0);
		/* per 1M tokens: price_nano is nano-USD per token */
		nano = input * price_nano(find_price(config, provider, d->model,
											 IGNY8_PRICE_INPUT, "", "", at)) +
			(int64) Max(max_tokens, 0) *
			price_nano(find_price(config, provider, d->model,
								  IGNY8_PRICE_OUTPUT, "", "", at));
	}
	/* micro-USD, rounded up */
	return (nano + 999) / 1000;
}
