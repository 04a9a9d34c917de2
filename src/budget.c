/*-------------------------------------------------------------------------
 *
 * budget.c
 *	  Budgets (igny8_budgets): a limit in USD per account and period, the
 *	  spend against it in shared memory, and the check a worker makes
 *	  before every paid attempt.
 *
 * Shared memory holds one entry per budget (account and period): the
 * spend committed in the current period, the reservations of the attempts
 * in flight (one count per worker, so that a worker that starts again
 * forgets what its previous incarnation held), the limit, the warning
 * threshold and the action, all in micro-USD (ai_usage_log.cost has six
 * decimals, so the spend is exact).  An attempt is paid when its provider
 * and model have a price (price.c); its estimate is its prompt's size in
 * bytes plus a few tokens per message as input tokens (a token is at least
 * one byte) and its max_tokens as output tokens, or one image of its size.
 *
 * The check (igny8_budget_admit) runs no query: under the budgets lock it
 * compares spend + reservations + estimate with the limit, and reserves
 * the estimate when it fits.  The reservation is moved onto the attempt
 * when it ends (job.c) and given back when the attempt's usage row is
 * committed, at which point its cost is added to the spend (usage.c); so
 * the spend can pass a limit only by what the attempts in flight cost
 * beyond their estimates.
 *
 * The entries are made when a worker loads the configuration (config.c):
 * an entry new to shared memory (after a start, or a budget added) is
 * loading until its spend is summed from ai_usage_log.  The sum is not
 * part of the load, whose reads have a time limit (worker.c) that a large
 * account's rows could pass at every try: after its load, one worker
 * claims each loading entry and sums it in a transaction of its own
 * (igny8_budgets_sum), while the others go on serving.  While it is
 * summed, costs committed by other workers are kept aside and added to
 * the sum, so none is missed (one committed just before the sum may count
 * twice: never fewer).  Until then the entry holds only what was kept
 * aside, so the check does not admit a paid attempt of its account: the
 * attempt waits (job.c).  A sum that fails, or whose worker exits, gives
 * its entry back for a worker to sum again.
 *
 * Periods are UTC days and months.  When the spend of a period reaches the
 * warning threshold, NOTIFY igny8_ai_budget is sent once for that period:
 * when a cost is added, when the spend is summed, or when a limit or
 * threshold is lowered below it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "worker.h"

#define IGNY8_MAX_BUDGETS	1024

typedef struct Igny8BudgetEntry
{
	int64		account_id;
	Igny8BudgetPeriod period;
	int64		limit;			/* micro-USD */
	int64		warn;			/* micro-USD: notify from here */
	bool		self_hosted_only;	/* else refuse */
	bool		loading;		/* its spend is being summed */
	int			summing;		/* the worker that sums it, or -1 */
	TimestampTz period_start;
	TimestampTz period_end;		/* the next period's start */
	int64		spent;			/* committed in the period */
	int64		aside;			/* committed while loading */
	TimestampTz warned_for;		/* period whose notice was sent, or 0 */
	uint64		made;			/* the order in which entries were made */
	int64		reserved[IGNY8_MAX_WORKERS];
} Igny8BudgetEntry;

typedef struct Igny8BudgetShared
{
	LWLock	   *lock;
	uint64		made;			/* entries made so far */
	bool		unsummed;		/* an entry is loading, and no worker sums
								 * it (a hint, read without the lock) */
	TimestampTz unsummed_since; /* ... since when */
	int			n;
	Igny8BudgetEntry entries[IGNY8_MAX_BUDGETS];
} Igny8BudgetShared;

static Igny8BudgetShared *budgets = NULL;

PG_FUNCTION_INFO_V1(igny8_budget_status);

/* notices to send after the usage transaction, in TopMemoryContext */
static List *pending_notices = NIL;

void
igny8_budget_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(Igny8BudgetShared)));
	RequestNamedLWLockTranche("igny8_ai budgets", 1);
}

/* Called under AddinShmemInitLock. */
void
igny8_budget_shmem_startup(void)
{
	bool		found;

	budgets = ShmemInitStruct("igny8_ai budgets", sizeof(Igny8BudgetShared),
							  &found);
	if (!found)
	{
		budgets->lock = &(GetNamedLWLockTranche("igny8_ai budgets"))->lock;
		budgets->n = 0;
		budgets->made = 0;
	}
}

const char *
igny8_budget_period_name(Igny8BudgetPeriod period)
{
	return period == IGNY8_BUDGET_DAY ? "day" : "month";
}

/*
 * The UTC day or month that holds at: its start and the next one's (the
 * months as price.c and the reports count them).
 */
static void
period_bounds(Igny8BudgetPeriod period, TimestampTz at,
			  TimestampTz *start, TimestampTz *end)
{
	if (period == IGNY8_BUDGET_MONTH)
	{
		if (!igny8_utc_month(at, start, end))
		{
			/* cannot happen: a finite time */
			*start = at;
			*end = at + 28 * USECS_PER_DAY;
		}
		return;
	}
	/* timestamps count microseconds from a UTC midnight */
	*start = at - ((at % USECS_PER_DAY) + USECS_PER_DAY) % USECS_PER_DAY;
	*end = *start + USECS_PER_DAY;
}

/* micro-USD as text: "12.345678" */
char *
igny8_micro_text(int64 micro)
{
	return psprintf("%s%lld.%06lld", micro < 0 ? "-" : "",
					(long long) (Abs(micro) / 1000000),
					(long long) (Abs(micro) % 1000000));
}

/* A numeric in USD as micro-USD, rounded up. */
int64
igny8_numeric_micro(Numeric usd)
{
	Datum		d;

	d = DirectFunctionCall2(numeric_mul, NumericGetDatum(usd),
							NumericGetDatum(int64_to_numeric(1000000)));
	d = DirectFunctionCall1(numeric_ceil, d);
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, d));
}

/*
 * Numeric text in USD as micro-USD, rounded up.  A cost as the usage rows
 * keep it (digits, at most six decimals) is read directly: this runs for
 * every priced attempt.
 */
static int64
text_micro(const char *usd)
{
	const char *p = usd;
	int64		whole = 0;
	int64		frac = 0;
	int			nfrac = 0;

	while (*p >= '0' && *p <= '9' && whole < PG_INT64_MAX / 100000000)
		whole = whole * 10 + (*p++ - '0');
	if (p > usd && *p == '.')
	{
		p++;
		while (*p >= '0' && *p <= '9' && nfrac < 6)
		{
			frac = frac * 10 + (*p++ - '0');
			nfrac++;
		}
	}
	if (p > usd && *p == '\0')
	{
		for (; nfrac < 6; nfrac++)
			frac *= 10;
		return whole * 1000000 + frac;
	}
	return igny8_numeric_micro(DatumGetNumeric(igny8_cost_datum(usd)));
}

/* The spend of an entry in its period, what is kept aside included. */
static inline int64
entry_spent(Igny8BudgetEntry *e)
{
	return e->spent + e->aside;
}

static int64
entry_reserved(Igny8BudgetEntry *e)
{
	int64		sum = 0;

	for (int i = 0; i < IGNY8_MAX_WORKERS; i++)
		sum += e->reserved[i];
	return sum;
}

/*
 * A new period starts from nothing (the reservations go on): its spend is
 * what is settled from then on, so an entry whose spend was being summed
 * is no longer loading (the sum, of the period before, is dropped when it
 * comes; and one that failed would otherwise leave the entry loading, its
 * paid attempts waiting, until it is summed again).  Called on
 * every check: a comparison, until the period ends.
 */
static void
roll_period(Igny8BudgetEntry *e, TimestampTz now)
{
	TimestampTz start;
	TimestampTz end;

	if (now < e->period_end)
		return;
	period_bounds(e->period, now, &start, &end);
	if (start > e->period_start)
	{
		e->period_start = start;
		e->spent = 0;
		e->aside = 0;
		e->warned_for = 0;
		e->loading = false;
	}
	e->period_end = end;
}

/* Under the lock: an entry waits for a worker to sum it. */
static void
mark_unsummed(void)
{
	if (!budgets->unsummed)
		budgets->unsummed_since = GetCurrentTimestamp();
	budgets->unsummed = true;
}

static Igny8BudgetEntry *
find_entry(int64 account_id, Igny8BudgetPeriod period)
{
	for (int i = 0; i < budgets->n; i++)
	{
		Igny8BudgetEntry *e = &budgets->entries[i];

		if (e->account_id == account_id && e->period == period)
			return e;
	}
	return NULL;
}

/* The payload of NOTIFY igny8_ai_budget. */
static char *
notice_payload(Igny8BudgetEntry *e)
{
	return psprintf("{\"account_id\": %lld, \"period\": \"%s\", \"period_start\": \"%s\", \"spend\": %s, \"limit\": %s, \"warn_at\": %s}",
					(long long) e->account_id,
					igny8_budget_period_name(e->period),
					timestamptz_to_str(e->period_start),
					igny8_micro_text(entry_spent(e)),
					igny8_micro_text(e->limit),
					igny8_micro_text(e->warn));
}

/* Under the lock: queue the notice if the threshold is reached. */
static void
check_warning_locked(Igny8BudgetEntry *e)
{
	/* (nothing spent is nothing to warn of, whatever the limit) */
	if (!e->loading && entry_spent(e) > 0 && entry_spent(e) >= e->warn &&
		e->warned_for != e->period_start)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		e->warned_for = e->period_start;
		pending_notices = lappend(pending_notices, notice_payload(e));
		MemoryContextSwitchTo(old);
	}
}

/*
 * Read igny8_budgets into the configuration, then make the shared entries
 * match it: an entry new to shared memory is made loading, for a worker to
 * sum its spend (igny8_budgets_sum), an entry whose budget is gone is
 * dropped.  Runs in the configuration's transaction, with SPI.
 */
void
igny8_budgets_load(Igny8Config *config, const char *qschema)
{
	int			ret;
	MemoryContext old;
	TimestampTz now = GetCurrentTimestamp();
	bool	   *keep;
	int			n;

	ret = SPI_execute(psprintf("SELECT account_id, period, limit_usd::text,"
							   " (limit_usd OPERATOR(pg_catalog.*) warn_fraction)::text,"
							   " action"
							   " FROM %s.igny8_budgets"
							   " ORDER BY account_id, period", qschema),
					  true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_budgets: %s",
			 SPI_result_code_string(ret));
	if (SPI_processed > IGNY8_MAX_BUDGETS)
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("only the first %d rows of igny8_budgets are enforced",
						IGNY8_MAX_BUDGETS)));

	old = MemoryContextSwitchTo(config->cxt);
	n = (int) Min(SPI_processed, IGNY8_MAX_BUDGETS);
	config->nbudgets = 0;
	config->budgets = palloc0(sizeof(Igny8Budget) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Igny8Budget *b = &config->budgets[config->nbudgets++];
		bool		isnull;
		char	   *s;

		b->account_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		s = SPI_getvalue(tup, desc, 2);
		b->period = (strcmp(s, "day") == 0) ? IGNY8_BUDGET_DAY :
			IGNY8_BUDGET_MONTH;
		b->limit = text_micro(SPI_getvalue(tup, desc, 3));
		b->warn = text_micro(SPI_getvalue(tup, desc, 4));
		s = SPI_getvalue(tup, desc, 5);
		b->self_hosted_only = (strcmp(s, "self_hosted_only") == 0);
	}
	MemoryContextSwitchTo(old);

	/* make the shared entries match */
	keep = palloc0(sizeof(bool) * IGNY8_MAX_BUDGETS);
	LWLockAcquire(budgets->lock, LW_EXCLUSIVE);
	for (int i = 0; i < config->nbudgets; i++)
	{
		Igny8Budget *b = &config->budgets[i];
		Igny8BudgetEntry *e = find_entry(b->account_id, b->period);

		if (e != NULL)
			keep[e - budgets->entries] = true;
	}
	/*
	 * Drop the entries of budgets that are gone, keeping the order, before
	 * new ones are made: a budget that replaces another finds its room.
	 */
	{
		int			j = 0;

		for (int i = 0; i < budgets->n; i++)
		{
			if (!keep[i])
				continue;
			if (i != j)
				budgets->entries[j] = budgets->entries[i];
			j++;
		}
		budgets->n = j;
	}
	for (int i = 0; i < config->nbudgets; i++)
	{
		Igny8Budget *b = &config->budgets[i];
		Igny8BudgetEntry *e = find_entry(b->account_id, b->period);

		if (e == NULL && budgets->n < IGNY8_MAX_BUDGETS)
		{
			e = &budgets->entries[budgets->n++];
			memset(e, 0, sizeof(*e));
			e->account_id = b->account_id;
			e->period = b->period;
			e->made = ++budgets->made;
			e->loading = true;
			e->summing = -1;
			mark_unsummed();
			period_bounds(b->period, now, &e->period_start, &e->period_end);
		}
		if (e == NULL)
			continue;
		e->limit = b->limit;
		e->warn = b->warn;
		e->self_hosted_only = b->self_hosted_only;
		/* a threshold lowered below the spend is reached now */
		roll_period(e, now);
		check_warning_locked(e);
	}
	LWLockRelease(budgets->lock);
	pfree(keep);

	/* a threshold lowered below the spend: in this transaction */
	igny8_budget_queue_notices();
}

/*
 * Since when has an entry been loading that no worker sums?  0: none.  A
 * hint, read without the lock.
 */
TimestampTz
igny8_budgets_unsummed_since(void)
{
	volatile Igny8BudgetShared *b = budgets;

	if (b == NULL || !b->unsummed)
		return 0;
	return Max(b->unsummed_since, 1);
}

/*
 * Claim the entries that are loading and that no worker sums, one at a
 * time, and sum their spend from ai_usage_log.  Runs in a transaction of
 * its own, with SPI; on an error the caller gives the claim back
 * (igny8_budgets_release).  The entries move in the array when budgets
 * are dropped: an entry is found again by its account, period and the
 * order it was made in.
 */
void
igny8_budgets_sum(const char *qschema)
{
	SPIPlanPtr	plan;
	Oid			types[2] = {INT8OID, TIMESTAMPTZOID};

	plan = SPI_prepare(psprintf("SELECT COALESCE(pg_catalog.sum(cost), 0)::text"
								" FROM %s.ai_usage_log"
								" WHERE account_id OPERATOR(pg_catalog.=) $1"
								" AND created_at OPERATOR(pg_catalog.>=) $2",
								qschema), 2, types);
	if (plan == NULL)
		elog(ERROR, "could not prepare the budget spend query: %s",
			 SPI_result_code_string(SPI_result));
	for (;;)
	{
		Igny8BudgetEntry *e = NULL;
		int64		account_id = 0;
		Igny8BudgetPeriod period = IGNY8_BUDGET_DAY;
		TimestampTz start = 0;
		uint64		made = 0;
		Datum		values[2];
		int64		sum;
		int			ret;

		LWLockAcquire(budgets->lock, LW_EXCLUSIVE);
		for (int i = 0; i < budgets->n; i++)
		{
			if (budgets->entries[i].loading && budgets->entries[i].summing < 0)
			{
				e = &budgets->entries[i];
				e->summing = igny8_worker_index;
				account_id = e->account_id;
				period = e->period;
				start = e->period_start;
				made = e->made;
				break;
			}
		}
		if (e == NULL)
			budgets->unsummed = false;
		LWLockRelease(budgets->lock);
		if (e == NULL)
			break;

		values[0] = Int64GetDatum(account_id);
		values[1] = TimestampTzGetDatum(start);
		/*
		 * Not read-only: a snapshot taken now, after the entry is loading,
		 * so that a cost committed after it is in the sum or was kept
		 * aside, never in neither.
		 */
		ret = SPI_execute_plan(plan, values, NULL, false, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not sum the spend of account %lld: %s",
				 (long long) account_id, SPI_result_code_string(ret));
		sum = text_micro(SPI_getvalue(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1));

		LWLockAcquire(budgets->lock, LW_EXCLUSIVE);
		e = find_entry(account_id, period);
		if (e != NULL && e->made == made)
		{
			if (e->summing == igny8_worker_index)
				e->summing = -1;
			/* (a period that ended meanwhile starts from nothing) */
			if (e->loading && e->period_start == start)
			{
				e->spent = sum;
				e->loading = false;
				roll_period(e, GetCurrentTimestamp());
				check_warning_locked(e);
			}
		}
		LWLockRelease(budgets->lock);
	}
	SPI_freeplan(plan);

	/* a threshold reached by the spend summed: in this transaction */
	igny8_budget_queue_notices();
}

/*
 * Give back the entries worker claimed to sum (its sum failed, or it
 * exited), for a worker to sum them again.
 */
void
igny8_budgets_release(int worker)
{
	bool		released = false;

	if (budgets == NULL)
		return;
	LWLockAcquire(budgets->lock, LW_EXCLUSIVE);
	for (int i = 0; i < budgets->n; i++)
	{
		if (budgets->entries[i].summing == worker)
		{
			budgets->entries[i].summing = -1;
			if (budgets->entries[i].loading)
			{
				mark_unsummed();
				released = true;
			}
		}
	}
	LWLockRelease(budgets->lock);
	/* the other workers may take it up now */
	if (released)
		igny8_wake_all_workers();
}

/*
 * May the job make a paid attempt of estimate micro-USD now?  When it may,
 * the estimate is reserved on every budget of its account and true is
 * returned, with *made, the order of the last entry made: the entries
 * made later hold none of the reservation (igny8_budget_settle).  When
 * not, *refusal says which budget and by how much, and whether that
 * budget skips paid candidates or refuses the call; or, with
 * refusal->loading, that the spend of one of them is being summed (its
 * entry holds only what was committed since): the attempt must wait.
 */
bool
igny8_budget_admit(int64 account_id, int64 estimate, TimestampTz now,
				   Igny8BudgetRefusal *refusal, uint64 *made)
{
	bool		fits = true;

	if (budgets == NULL || budgets->n == 0 || estimate <= 0)
		return true;
	LWLockAcquire(budgets->lock, LW_EXCLUSIVE);
	for (int i = 0; i < budgets->n; i++)
	{
		Igny8BudgetEntry *e = &budgets->entries[i];

		if (e->account_id == account_id && e->loading)
		{
			refusal->period = e->period;
			refusal->period_start = e->period_start;
			refusal->limit = e->limit;
			refusal->estimate = estimate;
			refusal->loading = true;
			LWLockRelease(budgets->lock);
			return false;
		}
	}
	for (int i = 0; i < budgets->n; i++)
	{
		Igny8BudgetEntry *e = &budgets->entries[i];
		int64		spent;
		int64		reserved;

		if (e->account_id != account_id)
			continue;
		roll_period(e, now);
		spent = entry_spent(e);
		reserved = entry_reserved(e);
		if (spent + reserved + estimate <= e->limit)
			continue;
		/* refuse wins over self_hosted_only when both are passed */
		if (fits || (refusal->self_hosted_only && !e->self_hosted_only))
		{
			refusal->period = e->period;
			refusal->period_start = e->period_start;
			refusal->spent = spent;
			refusal->reserved = reserved;
			refusal->limit = e->limit;
			refusal->estimate = estimate;
			refusal->self_hosted_only = e->self_hosted_only;
		}
		fits = false;
	}
	if (fits)
	{
		for (int i = 0; i < budgets->n; i++)
		{
			Igny8BudgetEntry *e = &budgets->entries[i];

			if (e->account_id == account_id)
				e->reserved[igny8_worker_index] += estimate;
		}
		*made = budgets->made;
	}
	LWLockRelease(budgets->lock);
	return fits;
}

/*
 * An attempt's reservation is given back to the entries that hold it
 * (made up to "made", as igny8_budget_admit returned it: a budget added
 * since holds others' reservations only) and, when its usage row was
 * committed, its cost (numeric text) is added to the spend.
 */
void
igny8_budget_settle(int64 account_id, int64 reserved, uint64 made,
					const char *cost)
{
	int64		micro = 0;

	if (budgets == NULL || budgets->n == 0)
		return;
	if (cost != NULL)
		micro = text_micro(cost);
	if (reserved <= 0 && micro <= 0)
		return;
	LWLockAcquire(budgets->lock, LW_EXCLUSIVE);
	for (int i = 0; i < budgets->n; i++)
	{
		Igny8BudgetEntry *e = &budgets->entries[i];

		if (e->account_id != account_id)
			continue;
		/* an entry made after the reservation holds none of it */
		if (e->made <= made)
			e->reserved[igny8_worker_index] =
				Max(e->reserved[igny8_worker_index] - reserved, 0);
		if (micro > 0)
		{
			roll_period(e, GetCurrentTimestamp());
			if (e->loading)
				e->aside += micro;
			else
				e->spent += micro;
			check_warning_locked(e);
		}
	}
	LWLockRelease(budgets->lock);
}

/* A worker starting: what its previous incarnation reserved is given back. */
void
igny8_budget_forget_worker(int worker)
{
	if (budgets == NULL)
		return;
	LWLockAcquire(budgets->lock, LW_EXCLUSIVE);
	for (int i = 0; i < budgets->n; i++)
		budgets->entries[i].reserved[worker] = 0;
	LWLockRelease(budgets->lock);
	igny8_budgets_release(worker);
}

/* Are notices waiting to be sent? */
bool
igny8_budget_notices_pending(void)
{
	return pending_notices != NIL;
}

/* Queue the pending notices in the current transaction. */
void
igny8_budget_queue_notices(void)
{
	ListCell   *lc;

	foreach(lc, pending_notices)
		Async_Notify("igny8_ai_budget", (char *) lfirst(lc));
	list_free_deep(pending_notices);
	pending_notices = NIL;
}

/*
 * The error detail of a refusal: spend, reservations, limit and estimate.
 */
char *
igny8_budget_refusal_detail(int64 account_id, const Igny8BudgetRefusal *r)
{
	return psprintf("Account %lld has spent %s USD of its %s USD limit for this %s (UTC), and attempts in flight reserve %s USD; this attempt is estimated at %s USD.",
					(long long) account_id,
					igny8_micro_text(r->spent), igny8_micro_text(r->limit),
					igny8_budget_period_name(r->period),
					igny8_micro_text(r->reserved),
					igny8_micro_text(r->estimate));
}

/*
 * igny8_budget_status(): each budget's entry in shared memory, as the
 * workers check it: its period, spend, reservations, limit and action.
 */
Datum
igny8_budget_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Igny8BudgetEntry *copy;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	if (budgets == NULL)
		PG_RETURN_VOID();
	copy = palloc(sizeof(Igny8BudgetEntry) * IGNY8_MAX_BUDGETS);
	LWLockAcquire(budgets->lock, LW_SHARED);
	n = budgets->n;
	memcpy(copy, budgets->entries, sizeof(Igny8BudgetEntry) * n);
	LWLockRelease(budgets->lock);

	for (int i = 0; i < n; i++)
	{
		Igny8BudgetEntry *e = &copy[i];
		Datum		values[9];
		bool		nulls[9];

		/* a period that ended shows the new one, with nothing spent yet */
		roll_period(e, GetCurrentTimestamp());

		memset(nulls, 0, sizeof(nulls));
		values[0] = Int64GetDatum(e->account_id);
		values[1] = CStringGetTextDatum(igny8_budget_period_name(e->period));
		values[2] = TimestampTzGetDatum(e->period_start);
		values[3] = igny8_cost_datum(igny8_micro_text(entry_spent(e)));
		values[4] = igny8_cost_datum(igny8_micro_text(entry_reserved(e)));
		values[5] = igny8_cost_datum(igny8_micro_text(e->limit));
		values[6] = CStringGetTextDatum(e->self_hosted_only ?
										"self_hosted_only" : "refuse");
		values[7] = BoolGetDatum(e->warned_for == e->period_start &&
								 e->warned_for != 0);
		values[8] = BoolGetDatum(e->loading);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values,
							 nulls);
	}
	PG_RETURN_VOID();
}
