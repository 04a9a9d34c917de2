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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/numeric.h"

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

/* The deployment's model first, then the one the provider reported. */
static Igny8Price *
model_price(Igny8Config *config, Igny8Attempt *a, const char *reported,
			Igny8PriceUnit unit, const char *size, const char *quality)
{
	Igny8Price *p = find_price(config, a->provider, a->model, unit, size,
							   quality, a->at);

	if (p == NULL && reported != NULL &&
		(a->model == NULL || strcmp(reported, a->model) != 0))
		p = find_price(config, a->provider, reported, unit, size, quality,
					   a->at);
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
 * The cost of an attempt, as numeric text rounded to 6 decimals, in
 * CurrentMemoryContext.  reported_model: the model the provider named in
 * its answer, or NULL.
 */
char *
igny8_attempt_cost(Igny8Config *config, Igny8Job *job, Igny8Attempt *a,
				   const char *reported_model)
{
	Numeric		sum = int64_to_numeric(0);
	Datum		rounded;

	if (job->task == IGNY8_TASK_IMAGE)
	{
		if (a->images > 0 && a->image_width > 0 && a->image_height > 0)
		{
			char		size[32];
			const char *quality = job->img_quality ? job->img_quality :
				"standard";
			Igny8Price *p;

			snprintf(size, sizeof(size), "%dx%d", a->image_width,
					 a->image_height);
			/* the quality asked for, else the price for any quality */
			p = model_price(config, a, reported_model, IGNY8_PRICE_IMAGE,
							size, quality);
			if (p == NULL)
				p = model_price(config, a, reported_model, IGNY8_PRICE_IMAGE,
								size, "");
			sum = add_priced(sum, a->images, p, 1);
		}
	}
	else if (job->task != IGNY8_TASK_HEALTH)
	{
		Igny8Price *in = model_price(config, a, reported_model,
									 IGNY8_PRICE_INPUT, "", "");
		Igny8Price *cached = model_price(config, a, reported_model,
										 IGNY8_PRICE_CACHED_INPUT, "", "");
		Igny8Price *write = model_price(config, a, reported_model,
										IGNY8_PRICE_CACHE_WRITE, "", "");
		Igny8Price *out = model_price(config, a, reported_model,
									  IGNY8_PRICE_OUTPUT, "", "");
		int64		read_n = Max(a->cached_input_tokens, 0);
		int64		write_n = Max(a->cache_write_tokens, 0);
		int64		plain_n;

		read_n = Min(read_n, a->input_tokens);
		write_n = Min(write_n, a->input_tokens - read_n);
		plain_n = a->input_tokens - read_n - write_n;
		sum = add_priced(sum, plain_n, in, 1000000);
		sum = add_priced(sum, read_n, cached ? cached : in, 1000000);
		sum = add_priced(sum, write_n, write ? write : in, 1000000);
		sum = add_priced(sum, a->output_tokens, out, 1000000);
	}
	rounded = DirectFunctionCall2(numeric_round, NumericGetDatum(sum),
								  Int32GetDatum(6));
	return DatumGetCString(DirectFunctionCall1(numeric_out, rounded));
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
		sum = DirectFunctionCall2(numeric_add, sum,
								  DirectFunctionCall3(numeric_in,
													  CStringGetDatum(a->cost),
													  ObjectIdGetDatum(InvalidOid),
													  Int32GetDatum(-1)));
		any = true;
	}
	if (!any)
		return pstrdup("0");
	return DatumGetCString(DirectFunctionCall1(numeric_out, sum));
}

/*
 * A price in thousandths of its unit, rounded up, computed once per copy
 * of the configuration: for a price per 1M tokens, nano-USD per token;
 * per image, nano-USD per image divided by a million.  The estimates use
 * it so that they need no numeric arithmetic.
 */
static int64
price_nano(Igny8Price *p)
{
	if (p == NULL)
		return 0;
	if (p->nano <= 0)
	{
		Datum		d;

		d = DirectFunctionCall2(numeric_mul, p->price,
								NumericGetDatum(int64_to_numeric(1000)));
		d = DirectFunctionCall1(numeric_ceil, d);
		p->nano = DatumGetInt64(DirectFunctionCall1(numeric_int8, d));
		if (p->nano <= 0)
			p->nano = 0;
	}
	return p->nano;
}

/*
 * What an attempt on deployment d may cost at most, in micro-USD rounded
 * up, for the budgets (budget.c): 0 when d has no price, i.e. is not paid.
 * Text: the prompt's bytes plus 8 tokens per message and 8 more as input
 * tokens (a token is at least one byte; the rest covers the chat format)
 * at the input price, and max_tokens output tokens at the output price.
 * Images: one image of the size and quality asked for.
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
		Igny8Price *p;

		snprintf(size, sizeof(size), "%dx%d", job->img_width,
				 job->img_height);
		p = find_price(config, provider, d->model, IGNY8_PRICE_IMAGE, size,
					   job->img_quality ? job->img_quality : "standard", at);
		if (p == NULL)
			p = find_price(config, provider, d->model, IGNY8_PRICE_IMAGE,
						   size, "", at);
		/* per image: USD, i.e. 10^9 nano-USD, 10^6 times price_nano */
		nano = price_nano(p) * 1000000;
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
