/*-------------------------------------------------------------------------
 *
 * health.c
 *	  Provider health: the state and circuit breaker kept in shared memory,
 *	  igny8_check_health() (whose probes the workers send, probe.c), the
 *	  alerts, and igny8_health_state() for igny8_service_status.
 *
 * Probes and real requests feed one state per provider.  A success makes it
 * healthy (degraded when the last probe found configured models missing);
 * a failure makes it degraded, and igny8_ai.circuit_failure_threshold
 * failures in a row make it down and open its circuit: routing then skips
 * the provider while another candidate exists.  After
 * igny8_ai.circuit_cooldown one trial request may pass; its success closes
 * the circuit.  A probe's success does too, unless the last request failed
 * on the provider, with an HTTP error or a timeout once sent (a probe's
 * GET /api/tags says nothing of a generation that fails): then only a
 * request closes it.  Every change of state is announced by the
 * worker that made it, probes' included, with NOTIFY igny8_ai_health
 * (committed by the worker, whatever the caller of igny8_check_health()
 * does), a WARNING in the server log when a provider goes down, and a LOG
 * line otherwise.  Anyone may LISTEN, so the payload holds
 * only the provider, the states and a short code (connection_refused,
 * http_503, ...); the provider's own error text stays in places that need
 * a grant: service_health_log, igny8_service_status and the server log.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "igny8_ai.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(igny8_check_health);
PG_FUNCTION_INFO_V1(igny8_health_state);

/* a probe's slot deadline: the probe timeout, and this for the worker */
#define IGNY8_PROBE_SLACK_MS	1000

/*
 * The shared entries of providers, and how long they live.
 *
 * A configuration a worker loaded (config.c) holds the index of each of
 * its providers' entries, and so does every request routed with it, for
 * as long as it runs: a call's later candidates and a job's retries take
 * places and report health at that index, possibly long after a newer
 * configuration renamed or deleted the provider.  So an entry is freed
 * (for a provider made later) only when no configuration still loaded
 * names it: each worker counts, per entry, its configurations that do
 * (configs[], taken here when a load finds the provider, given back by
 * igny8_provider_unref when the configuration's last user releases it,
 * zeroed when the worker exits), and nothing is in flight or waiting on
 * it.  A request routed before a rename thus goes on with the provider
 * as it was, under its old id, with its places, circuit and counters; the
 * old id's entry goes when the last such request ends.
 */

/*
 * The index of a provider in shared memory; -1 when it is not there (or
 * the table of IGNY8_MAX_PROVIDERS is full: such a provider then has no
 * concurrency limit nor circuit, which the server log says).  With
 * create, for a configuration the calling worker loads: the entry is made
 * if need be, and counted as named by one more of the worker's
 * configurations, until igny8_provider_unref.
 */
int
igny8_provider_index(const char *id, bool create)
{
	int			found = -1;
	int			empty = -1;

	SpinLockAcquire(&igny8_shared->providers_mutex);
	for (int i = 0; i < IGNY8_MAX_PROVIDERS; i++)
	{
		if (igny8_shared->providers[i].id[0] == '\0')
		{
			if (empty < 0)
				empty = i;
		}
		else if (strcmp(igny8_shared->providers[i].id, id) == 0)
		{
			found = i;
			break;
		}
	}
	if (found < 0 && empty >= 0 && create)
	{
		strlcpy(igny8_shared->providers[empty].id, id, IGNY8_NAME_LEN);
		found = empty;
	}
	if (found >= 0 && create)
	{
		Assert(igny8_worker_index >= 0);
		igny8_shared->workers[igny8_worker_index].configs[found]++;
	}
	SpinLockRelease(&igny8_shared->providers_mutex);
	if (found < 0 && create && empty < 0)
		ereport(LOG,
				(errmsg("igny8_ai has no shared state left for provider \"%s\"",
						id),
				 errdetail("At most %d providers have a circuit breaker and a max_concurrent limit.",
						   IGNY8_MAX_PROVIDERS)));
	return found;
}

/* Under the provider's mutex: back to the state of a provider never seen. */
static void
forget_health(Igny8ProviderShared *p)
{
	p->state = IGNY8_HEALTH_UNKNOWN;
	p->state_since = 0;
	p->consecutive_failures = 0;
	p->circuit_open = false;
	p->opened_at = p->trial_at = p->trial_until = 0;
	p->probe_degraded = false;
	p->request_failed = false;
	p->last_check = p->last_seen = 0;
	p->last_latency_ms = 0;
	p->last_error[0] = '\0';
}

/*
 * A disabled provider's health is forgotten: routing, probes and alerts
 * leave it alone, so a state of down and an open circuit would only go on
 * firing alerts about a box its DBA took out (for maintenance, say).  Its
 * state is unknown until it is enabled and seen again; its places, its
 * requests in flight and its counters of attempts are kept.
 */
void
igny8_provider_forget_health(int index)
{
	Igny8ProviderShared *p;

	if (index < 0)
		return;
	p = &igny8_shared->providers[index];
	SpinLockAcquire(&p->mutex);
	forget_health(p);
	SpinLockRelease(&p->mutex);
}

/*
 * A configuration of the calling worker that named the entry was released
 * (or its load failed).
 */
void
igny8_provider_unref(int index)
{
	uint32	   *n;

	if (index < 0)
		return;
	SpinLockAcquire(&igny8_shared->providers_mutex);
	n = &igny8_shared->workers[igny8_worker_index].configs[index];
	if (*n > 0)					/* zeroed if the worker is exiting */
		(*n)--;
	SpinLockRelease(&igny8_shared->providers_mutex);
}

/*
 * Free the shared entries that no worker's configuration names and that
 * have nothing in flight or waiting (see the top of this section), so
 * that a long life of renamed and deleted providers does not fill the
 * table.  An entry is cleared before its id, under providers_mutex, so
 * whoever finds an id finds a clean entry.
 */
void
igny8_provider_forget_unused(void)
{
	SpinLockAcquire(&igny8_shared->providers_mutex);
	for (int i = 0; i < IGNY8_MAX_PROVIDERS; i++)
	{
		Igny8ProviderShared *p = &igny8_shared->providers[i];
		bool		busy = false;

		if (p->id[0] == '\0')
			continue;
		for (int w = 0; w < igny8_shared->nworkers && !busy; w++)
			busy = (igny8_shared->workers[w].configs[i] > 0);
		if (busy)
			continue;

		SpinLockAcquire(&p->mutex);
		busy = (p->nwaiting > 0);
		for (int w = 0; w < igny8_shared->nworkers && !busy; w++)
			busy = (igny8_shared->workers[w].held[i] > 0);
		if (!busy)
		{
			p->max_concurrent = 0;
			forget_health(p);
			p->requests = p->errors = 0;
			p->id[0] = '\0';
		}
		SpinLockRelease(&p->mutex);
	}
	SpinLockRelease(&igny8_shared->providers_mutex);
}

const char *
igny8_health_state_name(Igny8HealthState state)
{
	switch (state)
	{
		case IGNY8_HEALTH_HEALTHY:
			return "healthy";
		case IGNY8_HEALTH_DEGRADED:
			return "degraded";
		case IGNY8_HEALTH_DOWN:
			return "down";
		case IGNY8_HEALTH_UNKNOWN:
			break;
	}
	return "unknown";
}

/* The provider's UTF-8 text, as the database stores it, cut whole. */
static void
error_for_db(const char *error, char *out, size_t size)
{
	char	   *db = igny8_to_db_lossy(error);
	int			len = pg_mbcliplen(db, strlen(db), size - 1);

	memcpy(out, db, len);
	out[len] = '\0';
	pfree(db);
}

/*
 * Record the outcome of a probe (probe = true) or of a request on a
 * provider.  probe_degraded: the probe reached the provider but found
 * something missing.  Fills *change with what the report changed.
 *
 * A probe's success says nothing of what requests found: Ollama lists its
 * models (GET /api/tags) while every generation fails (a runner out of
 * memory, a CUDA error) or hangs.  So after a request that failed on the
 * provider (an HTTP error, a timeout once sent), a probe's success changes
 * neither the failures, nor the circuit, nor the state
 * (change->requests_failing says so): only a request's success does, the
 * open circuit's trial.  A circuit that probes opened, or requests that
 * failed on the way to the provider (transport_failure: no connection, a
 * connection reset or closed unanswered, the tunnel or the box down), is
 * closed by a probe's success as by a request's: the probe took the same
 * way.
 */
void
igny8_health_report(int index, bool ok, bool probe, bool probe_degraded,
					bool transport_failure, double latency_ms,
					const char *error, Igny8HealthChange *change)
{
	Igny8ProviderShared *p;
	TimestampTz now = GetCurrentTimestamp();
	char		db_error[sizeof(p->last_error)];

	memset(change, 0, sizeof(*change));
	if (index < 0)
		return;
	p = &igny8_shared->providers[index];

	if (error != NULL)
	{
		error_for_db(error, db_error, sizeof(db_error));
		error = db_error;
	}

	SpinLockAcquire(&p->mutex);
	change->from = p->state;
	p->last_seen = now;
	p->last_latency_ms = latency_ms;
	if (probe)
	{
		p->last_check = now;
		if (ok)
			p->probe_degraded = probe_degraded;
	}
	else
		p->request_failed = !ok && !transport_failure;
	if (ok && probe && p->request_failed)
	{
		/* the requests' failures stand: nothing else changes */
		change->requests_failing = true;
	}
	else if (ok)
	{
		p->consecutive_failures = 0;
		p->circuit_open = false;
		p->trial_at = 0;
		p->trial_until = 0;
		p->state = p->probe_degraded ? IGNY8_HEALTH_DEGRADED :
			IGNY8_HEALTH_HEALTHY;
		if (probe && probe_degraded && error)
			strlcpy(p->last_error, error, sizeof(p->last_error));
	}
	else
	{
		p->consecutive_failures++;
		strlcpy(p->last_error, error ? error : "failed", sizeof(p->last_error));
		if (p->consecutive_failures >= igny8_circuit_threshold)
		{
			/*
			 * (Re)open: a failure starts a new cool-down.  A trial in flight
			 * keeps the circuit: it is not this report's to end (the trial's
			 * own report ends it, igny8_circuit_end_trial), whatever else
			 * fails meanwhile (a probe, an attempt that began before the
			 * circuit opened).
			 */
			if (!p->circuit_open)
				p->trial_at = p->trial_until = 0;
			p->circuit_open = true;
			p->opened_at = now;
			p->state = IGNY8_HEALTH_DOWN;
		}
		else if (p->state != IGNY8_HEALTH_DOWN)
			p->state = IGNY8_HEALTH_DEGRADED;
	}
	if (p->state != change->from)
	{
		p->state_since = now;
		change->changed = true;
	}
	change->to = p->state;
	change->consecutive_failures = p->consecutive_failures;
	SpinLockRelease(&p->mutex);
}

/*
 * A probe that could not be made for a reason of the configuration (a key
 * reference that cannot be resolved): its error becomes the provider's
 * last_error, for igny8_service_status, and nothing else changes (neither
 * the state nor the failures nor the circuit: the provider was not asked).
 */
void
igny8_health_note_error(int index, const char *error)
{
	Igny8ProviderShared *p;
	char		db_error[sizeof(p->last_error)];

	if (index < 0 || error == NULL)
		return;
	p = &igny8_shared->providers[index];
	error_for_db(error, db_error, sizeof(db_error));
	SpinLockAcquire(&p->mutex);
	strlcpy(p->last_error, db_error, sizeof(p->last_error));
	SpinLockRelease(&p->mutex);
}

/*
 * The state of a provider as it stands, in the form of a change that
 * changed nothing: for an outcome that says nothing about the provider.
 */
void
igny8_health_peek(int index, Igny8HealthChange *change)
{
	Igny8ProviderShared *p;

	memset(change, 0, sizeof(*change));
	if (index < 0)
		return;
	p = &igny8_shared->providers[index];
	SpinLockAcquire(&p->mutex);
	change->from = change->to = p->state;
	change->consecutive_failures = p->consecutive_failures;
	SpinLockRelease(&p->mutex);
}

/*
 * Count an attempt that reached the network (one row of ai_usage_log) on
 * its provider, for igny8_health_state() and the exporter: counters in
 * shared memory cost a scrape nothing, where counting the log would scan
 * it.  The entry is looked up and counted under providers_mutex, so it
 * cannot be forgotten and reused in between.  A provider with no shared
 * entry (the table is full) is not counted.
 */
void
igny8_provider_count_attempt(const char *id, bool success)
{
	if (id == NULL)
		return;
	SpinLockAcquire(&igny8_shared->providers_mutex);
	for (int i = 0; i < IGNY8_MAX_PROVIDERS; i++)
	{
		Igny8ProviderShared *p = &igny8_shared->providers[i];

		if (p->id[0] == '\0' || strcmp(p->id, id) != 0)
			continue;
		SpinLockAcquire(&p->mutex);
		p->requests++;
		if (!success)
			p->errors++;
		SpinLockRelease(&p->mutex);
		break;
	}
	SpinLockRelease(&igny8_shared->providers_mutex);
}

/* Is the provider's circuit closed (read under its mutex)? */
static bool
circuit_closed(Igny8ProviderShared *p)
{
	bool		closed;

	SpinLockAcquire(&p->mutex);
	closed = !p->circuit_open;
	SpinLockRelease(&p->mutex);
	return closed;
}

/* Under the provider's mutex: may an open circuit's trial start now? */
static bool
trial_may_start(Igny8ProviderShared *p, TimestampTz now)
{
	return TimestampDifferenceExceeds(p->opened_at, now,
									  igny8_circuit_cooldown_ms) &&
		(p->trial_at == 0 ||
		 TimestampDifferenceExceeds(p->trial_at, now,
									igny8_circuit_cooldown_ms)) &&
		(p->trial_until == 0 || now >= p->trial_until);
}

/*
 * May routing keep this provider?  Yes while its circuit is closed; while
 * it is open, once its cool-down is over and no trial is in flight.
 * Nothing is taken here: the trial is taken by the attempt that is about
 * to be sent (igny8_circuit_take_trial), so a request that an earlier
 * candidate answers uses none.
 */
bool
igny8_circuit_allows(int index)
{
	Igny8ProviderShared *p;
	bool		allowed;
	TimestampTz now;

	if (index < 0)
		return true;
	p = &igny8_shared->providers[index];
	if (circuit_closed(p))
		return true;			/* the usual case: no clock read */

	/* the clock is read before the spinlock is taken: no system call under it */
	now = GetCurrentTimestamp();
	SpinLockAcquire(&p->mutex);
	allowed = !p->circuit_open || trial_may_start(p, now);
	SpinLockRelease(&p->mutex);
	return allowed;
}

/*
 * An attempt is about to be sent to the provider.  While its circuit is
 * open, one trial may pass per cool-down, and only one at a time: the
 * attempt that takes it (*trial: its start) holds it until its outcome is
 * reported, which closes or reopens the circuit, until it ends without
 * one (igny8_circuit_end_trial), or at the latest until "until".
 */
Igny8CircuitVerdict
igny8_circuit_take_trial(int index, TimestampTz until, TimestampTz *trial)
{
	Igny8ProviderShared *p;
	Igny8CircuitVerdict verdict;
	TimestampTz now;

	if (index < 0)
		return IGNY8_CIRCUIT_CLOSED;
	p = &igny8_shared->providers[index];
	if (circuit_closed(p))
		return IGNY8_CIRCUIT_CLOSED;	/* the usual case: no clock read */

	now = GetCurrentTimestamp();
	SpinLockAcquire(&p->mutex);
	if (!p->circuit_open)
		verdict = IGNY8_CIRCUIT_CLOSED;
	else if (trial_may_start(p, now))
	{
		p->trial_at = now;
		p->trial_until = Max(until, now + 1);
		*trial = now;
		verdict = IGNY8_CIRCUIT_TRIAL;
	}
	else
		verdict = IGNY8_CIRCUIT_REFUSED;
	SpinLockRelease(&p->mutex);
	return verdict;
}

/*
 * The trial started at "trial", if it still holds the circuit (no report
 * closed it, no other trial has started since), holds it until "until";
 * 0: it ended.
 */
static void
hold_trial(int index, TimestampTz trial, TimestampTz until)
{
	Igny8ProviderShared *p;

	if (index < 0)
		return;
	p = &igny8_shared->providers[index];
	SpinLockAcquire(&p->mutex);
	if (p->trial_until != 0 && p->trial_at == trial)
		p->trial_until = (until == 0) ? 0 : Max(p->trial_until, until);
	SpinLockRelease(&p->mutex);
}

/*
 * The trial started at "trial" ended: its report, if it had one, closed
 * the circuit or opened it again; without one (its caller left, or the
 * caller's deadline cut it short) the circuit stays open.  Either way
 * another trial may start once the cool-down since this one's start (and
 * since the circuit last opened) is over.
 */
void
igny8_circuit_end_trial(int index, TimestampTz trial)
{
	hold_trial(index, trial, 0);
}

/*
 * The trial started at "trial" is sent only now (a submitted job's attempt
 * waited for its intent to be recorded): it holds the circuit until
 * "until", its attempt's deadline.
 */
void
igny8_circuit_extend_trial(int index, TimestampTz trial, TimestampTz until)
{
	hold_trial(index, trial, until);
}

/*
 * The JSON payload of a NOTIFY igny8_ai_health: provider, states, failures,
 * time and a short code, never provider text (any role may LISTEN).
 */
char *
igny8_health_payload(const char *provider, const Igny8HealthChange *change,
					 const char *code)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"provider\": ");
	escape_json(&buf, provider);
	appendStringInfoString(&buf, ", \"state\": ");
	escape_json(&buf, igny8_health_state_name(change->to));
	appendStringInfoString(&buf, ", \"previous_state\": ");
	escape_json(&buf, igny8_health_state_name(change->from));
	appendStringInfo(&buf, ", \"consecutive_failures\": %d",
					 change->consecutive_failures);
	appendStringInfoString(&buf, ", \"at\": ");
	escape_json(&buf, timestamptz_to_str(GetCurrentTimestamp()));
	appendStringInfoString(&buf, ", \"code\": ");
	escape_json(&buf, code ? code : "");
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* Tell the server log about a change of state. */
void
igny8_health_alert(const char *provider, const Igny8HealthChange *change,
				   const char *detail)
{
	if (!change->changed)
		return;
	if (change->to == IGNY8_HEALTH_DOWN)
		ereport(WARNING,
				(errmsg("AI provider \"%s\" is down", provider),
				 errdetail_internal("%d consecutive failures; last: %s",
									change->consecutive_failures,
									detail ? detail : "failed"),
				 errhint("Requests go to the fallbacks while its circuit is open.")));
	else if (change->to == IGNY8_HEALTH_HEALTHY &&
			 change->from == IGNY8_HEALTH_UNKNOWN)
		ereport(LOG,
				(errmsg("AI provider \"%s\" is healthy", provider)));
	else if (change->to == IGNY8_HEALTH_HEALTHY)
		ereport(LOG,
				(errmsg("AI provider \"%s\" is healthy again", provider),
				 errdetail("It was %s.",
						   igny8_health_state_name(change->from))));
	else
		ereport(LOG,
				(errmsg("AI provider \"%s\" is %s", provider,
						igny8_health_state_name(change->to)),
				 errdetail_internal("%s", detail ? detail : "")));
}

/* ----- igny8_check_health() ----- */

/*
 * The detail of a probe that has no verdict of its own: the worker's error
 * (the provider was not probed, or the answer was lost), or a worker that
 * did not answer in time.
 */
static char *
worker_failure_detail(const char *message, const char *detail,
					  const char *sqlstate)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"error\": ");
	escape_json(&buf, message);
	if (detail != NULL)
	{
		appendStringInfoString(&buf, ", \"error_detail\": ");
		escape_json(&buf, detail);
	}
	appendStringInfoString(&buf, ", \"sqlstate\": ");
	escape_json(&buf, sqlstate);
	appendStringInfoString(&buf, ", \"kind\": \"worker\"}");
	return buf.data;
}

/*
 * One probe's answer: a service_health_log row and a result row.  Frees the
 * slot.  A probe that failed in any way gets its row, healthy false, never
 * an error that would lose the other providers' rows: a probe the worker
 * could not make (its error is in the detail, "kind": "worker"), and one
 * whose worker did not answer in time (late: the slot was given up on, and
 * is no longer ours).  Such a row leaves the provider's state as it is, and
 * carries it.  The worker announced the change of state its probe made
 * (job.c): the announcement does not depend on this transaction, which
 * may yet roll back.
 */
static void
report_probe(ReturnSetInfo *rsinfo, SPIPlanPtr insert, const char *provider,
			 int slotno, bool late)
{
	int			ret;
	Igny8Slot  *slot = late ? NULL : &igny8_slots[slotno];
	char	   *strs[2] = {NULL, NULL};
	const char *detail_json;
	bool		healthy = false;
	long		http_status = 0;
	bool		has_latency = false;
	double		latency_ms = 0;
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Datum		out[6];
	bool		outnulls[6] = {false, false, false, false, false, false};
	Igny8HealthChange change;

	memset(&change, 0, sizeof(change));
	if (late)
	{
		detail_json = worker_failure_detail("igny8_ai worker did not answer in time",
											psprintf("The probe passed its deadline of %d ms by more than %d ms.",
													 igny8_probe_timeout_ms + IGNY8_PROBE_SLACK_MS,
													 IGNY8_WORKER_GRACE_MS),
											unpack_sql_state(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION));
	}
	else if (!slot->success)
	{
		Igny8SlotError err;

		igny8_slot_error(slotno, &err);
		detail_json = worker_failure_detail(err.message, err.detail,
											unpack_sql_state(err.sqlerrcode));
	}
	else
	{
		igny8_unpack_strings(igny8_dsa(), slot->result, 2, strs);
		detail_json = strs[0] ? strs[0] : "{}";
		healthy = slot->healthy;
		latency_ms = slot->duration_ms;
		/* a failure of ours (local, config): no probe was sent */
		has_latency = healthy ||
			(strcmp(slot->health_code, "local") != 0 &&
			 strcmp(slot->health_code, "config") != 0);
	}
	if (slot != NULL && slot->health_code[0] != '\0')
	{
		/* the probe ran: the state its worker recorded (and announced) */
		change.to = slot->health_state;
		http_status = slot->http_status;
	}
	else
	{
		/* not probed, or late: the state as it stands */
		igny8_health_peek(igny8_provider_index(provider, false), &change);
	}

	values[0] = CStringGetTextDatum(provider);
	values[1] = BoolGetDatum(healthy);
	values[2] = CStringGetTextDatum(igny8_health_state_name(change.to));
	values[3] = Float8GetDatum(latency_ms);
	if (!has_latency)
		nulls[3] = 'n';
	values[4] = Int32GetDatum((int32) http_status);
	if (http_status <= 0)
		nulls[4] = 'n';
	values[5] = CStringGetTextDatum(detail_json);
	values[6] = TimestampTzGetDatum(GetCurrentTimestamp());
	ret = SPI_execute_plan(insert, values, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not insert into service_health_log: %s",
			 SPI_result_code_string(ret));

	for (int i = 0; i < 6; i++)
	{
		out[i] = values[i];
		outnulls[i] = (nulls[i] == 'n');
	}
	out[5] = DirectFunctionCall1(jsonb_in, CStringGetDatum(detail_json));
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnulls);

	if (!late)
		igny8_release_slot(slotno);
}


/*
 * Probe every enabled provider now, all at once through the workers; write
 * one service_health_log row each; return the same rows.
 */
Datum
igny8_check_health(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const char *schema;
	int			nproviders;
	char	  **ids;
	int		   *slots;
	bool	   *late;
	int			ret;
	int			mark;
	SPIPlanPtr	insert;
	Oid			argtypes[7] = {TEXTOID, BOOLOID, TEXTOID, FLOAT8OID, INT4OID,
	TEXTOID, TIMESTAMPTZOID};

	/*
	 * The probes change the providers' shared state, which no rollback
	 * undoes, and each gets its row: refused before any is sent in a
	 * transaction that could not write the rows.
	 */
	PreventCommandIfReadOnly("igny8_check_health()");

	InitMaterializedSRF(fcinfo, 0);
	schema = quote_identifier(get_namespace_name(get_func_namespace(fcinfo->flinfo->fn_oid)));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute(psprintf("SELECT id FROM %s.igny8_providers WHERE enabled ORDER BY id",
							   schema), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read igny8_providers: %s",
			 SPI_result_code_string(ret));
	nproviders = (int) SPI_processed;
	ids = palloc(sizeof(char *) * Max(nproviders, 1));
	slots = palloc(sizeof(int) * Max(nproviders, 1));
	for (int i = 0; i < nproviders; i++)
		ids[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

	late = palloc0(sizeof(bool) * Max(nproviders, 1));
	mark = igny8_slots_held();
	/*
	 * All probes at once; the worker bounds each, all its requests
	 * included, by the probe timeout (probe.c), and its slot's deadline
	 * leaves it a second more.  A worker that is late all the same costs
	 * its provider's row only (report_probe).  On any error, the slots
	 * still held are abandoned.
	 */
	PG_TRY();
	{
		for (int i = 0; i < nproviders; i++)
		{
			pg_uuid_t	id;

			igny8_new_request_id(&id);
			slots[i] = igny8_submit(IGNY8_TASK_HEALTH, ids[i], "{}",
									igny8_probe_timeout_ms + IGNY8_PROBE_SLACK_MS,
									false, 0,
									&id);
		}
		igny8_wait_or_give_up(slots, nproviders, late);

		insert = SPI_prepare(psprintf("INSERT INTO %s.service_health_log"
									  " (provider, healthy, state, latency_ms,"
									  " http_status, detail, checked_at)"
									  " VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.jsonb, $7)",
									  schema), 7, argtypes);
		if (insert == NULL)
			elog(ERROR, "could not prepare the service_health_log insert");

		for (int i = 0; i < nproviders; i++)
			report_probe(rsinfo, insert, ids[i], slots[i], late[i]);
	}
	PG_CATCH();
	{
		igny8_abandon_since(mark);
		PG_RE_THROW();
	}
	PG_END_TRY();

	SPI_finish();
	return (Datum) 0;
}

/*
 * igny8_health_state(): the shared-memory state of every provider a worker
 * or a probe has seen, for igny8_service_status.
 */
Datum
igny8_health_state(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (igny8_shared == NULL)
		return (Datum) 0;

	for (int i = 0; i < IGNY8_MAX_PROVIDERS; i++)
	{
		Igny8ProviderShared *p = &igny8_shared->providers[i];
		Igny8ProviderShared copy;
		Datum		values[12];
		bool		nulls[12];

		SpinLockAcquire(&igny8_shared->providers_mutex);
		SpinLockAcquire(&p->mutex);
		memcpy(&copy, p, sizeof(copy));
		SpinLockRelease(&p->mutex);
		SpinLockRelease(&igny8_shared->providers_mutex);
		if (copy.id[0] == '\0')
			continue;

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(copy.id);
		values[1] = CStringGetTextDatum(igny8_health_state_name(copy.state));
		values[2] = TimestampTzGetDatum(copy.state_since);
		nulls[2] = (copy.state_since == 0);
		values[3] = BoolGetDatum(copy.circuit_open);
		values[4] = Int32GetDatum(copy.consecutive_failures);
		values[5] = TimestampTzGetDatum(copy.last_check);
		nulls[5] = (copy.last_check == 0);
		values[6] = Float8GetDatum(copy.last_latency_ms);
		nulls[6] = (copy.last_seen == 0);
		values[7] = CStringGetTextDatum(copy.last_error);
		nulls[7] = (copy.last_error[0] == '\0');
		values[8] = Int32GetDatum(igny8_place_in_flight(i));
		values[9] = Int32GetDatum(copy.nwaiting);
		values[10] = Int64GetDatum((int64) copy.requests);
		values[11] = Int64GetDatum((int64) copy.errors);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
