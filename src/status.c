/*-------------------------------------------------------------------------
 *
 * status.c
 *	  What the workers and the request slots are doing, from shared memory:
 *	  igny8_worker_status() and igny8_slot_status(), for a DBA's monitoring
 *	  and for tests that must wait for a confirmed state (a configuration
 *	  the workers loaded, a slot given back) instead of sleeping.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"

#include "igny8_ai.h"

PG_FUNCTION_INFO_V1(igny8_worker_status);
PG_FUNCTION_INFO_V1(igny8_slot_status);
PG_FUNCTION_INFO_V1(igny8_worker_alive);

/*
 * igny8_worker_alive(worker integer, started timestamptz) returns boolean:
 * is that worker running, the incarnation that started then?  Read when
 * called: a recovery scan evaluates it per row after taking its snapshot,
 * so a row it sees claimed was claimed by a worker registered by then.
 */
Datum
igny8_worker_alive(PG_FUNCTION_ARGS)
{
	if (igny8_shared == NULL)
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(igny8_worker_is(PG_GETARG_INT32(0),
								   PG_GETARG_TIMESTAMPTZ(1)));
}

/*
 * One row per configured worker: pid (NULL when it is not running), when
 * it started, requests it holds, requests waiting in its queue, requests it
 * served, whether it loaded the latest committed configuration, how many
 * postgresql.conf reloads it processed, when it last scanned igny8_jobs
 * and scans it next by itself (NULL before its first scan), when its loop
 * last turned, and whether it is stalled (IGNY8_STALL_MS).
 */
Datum
igny8_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	uint64		generation;
	TimestampTz now;

	InitMaterializedSRF(fcinfo, 0);
	if (igny8_shared == NULL)
		return (Datum) 0;
	generation = pg_atomic_read_u64(&igny8_shared->config_generation);
	now = GetCurrentTimestamp();

	for (int i = 0; i < igny8_shared->nworkers; i++)
	{
		Igny8WorkerShared *w = &igny8_shared->workers[i];
		Datum		values[12];
		bool		nulls[12];
		int			procno;
		int			pid;
		TimestampTz started_at;
		uint32		queued;
		TimestampTz queued_since;
		TimestampTz last_turn;
		TimestampTz last_scan;
		TimestampTz next_scan;

		SpinLockAcquire(&w->mutex);
		procno = w->procno;
		pid = w->pid;
		started_at = w->started_at;
		queued = w->queued;
		queued_since = w->queued_since;
		SpinLockRelease(&w->mutex);
		last_turn = (TimestampTz) pg_atomic_read_u64(&w->last_turn);

		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(i);
		values[1] = Int32GetDatum(pid);
		nulls[1] = (procno < 0);
		values[2] = TimestampTzGetDatum(started_at);
		nulls[2] = (procno < 0);
		values[3] = Int32GetDatum((int32) pg_atomic_read_u32(&w->in_flight));
		values[4] = Int32GetDatum((int32) queued);
		values[5] = Int64GetDatum((int64) pg_atomic_read_u64(&w->served));
		values[6] = BoolGetDatum(procno >= 0 &&
								 pg_atomic_read_u64(&w->config_generation) >= generation);
		values[7] = Int64GetDatum((int64) pg_atomic_read_u64(&w->reloads));
		last_scan = (TimestampTz) pg_atomic_read_u64(&w->last_job_scan);
		next_scan = (TimestampTz) pg_atomic_read_u64(&w->next_job_scan);
		values[8] = TimestampTzGetDatum(last_scan);
		nulls[8] = (procno < 0 || last_scan == 0);
		values[9] = TimestampTzGetDatum(next_scan);
		nulls[9] = (procno < 0 || next_scan == 0);
		values[10] = TimestampTzGetDatum(last_turn);
		nulls[10] = (procno < 0);
		values[11] = BoolGetDatum(procno >= 0 &&
								  igny8_stalled(queued, queued_since,
												last_turn, now));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* The request slots by state, every state listed. */
Datum
igny8_slot_status(PG_FUNCTION_ARGS)
{
	static const char *const names[] = {
		"free", "filling", "queued", "running", "done", "abandoned"
	};
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			counts[lengthof(names)];

	InitMaterializedSRF(fcinfo, 0);
	if (igny8_shared == NULL)
		return (Datum) 0;

	memset(counts, 0, sizeof(counts));
	for (int i = 0; i < igny8_shared->nslots; i++)
	{
		Igny8Slot  *slot = &igny8_slots[i];
		Igny8SlotState state;

		SpinLockAcquire(&slot->mutex);
		state = slot->state;
		SpinLockRelease(&slot->mutex);
		if ((int) state >= 0 && (int) state < (int) lengthof(names))
			counts[state]++;
	}
	for (int i = 0; i < (int) lengthof(names); i++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = CStringGetTextDatum(names[i]);
		values[1] = Int32GetDatum(counts[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
