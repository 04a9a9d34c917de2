/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  igny8_ai's shared memory: the request slots and their free list, the
 *	  workers' queues, the per-provider and per-worker state, and the DSA
 *	  area for payloads; the small primitives that dispatch.c and the
 *	  worker share (slot release, queues, wake-ups, packed strings).
 *
 * Everything is set up by the postmaster (shmem_request_hook and
 * shmem_startup_hook, as pg_stat_statements does), so the module must be
 * in shared_preload_libraries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/twophase.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/memutils.h"

#include "igny8_ai.h"

/* initial in-place size of the DSA area; it grows with DSM segments */
#define IGNY8_DSA_INITIAL_SIZE	(1024 * 1024)

Igny8Shared *igny8_shared = NULL;
int			igny8_shared_generation = 0;
Igny8Slot  *igny8_slots = NULL;
int		   *igny8_free_stack = NULL;
int		   *igny8_queues = NULL;
pg_atomic_uint64 *igny8_job_waiters = NULL;
int			igny8_nprocs = 0;
static void *igny8_dsa_place = NULL;
static dsa_area *igny8_dsa_area = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void igny8_shmem_request(void);
static void igny8_shmem_startup(void);

static Size
slots_size(void)
{
	return mul_size(igny8_max_in_flight, sizeof(Igny8Slot));
}

static Size
free_stack_size(void)
{
	return mul_size(igny8_max_in_flight, sizeof(int));
}

static Size
queues_size(void)
{
	return mul_size(mul_size(igny8_nworkers, igny8_max_in_flight), sizeof(int));
}

/* One entry per PGPROC: MaxBackends is known when shared memory is sized. */
static Size
waiters_size(void)
{
	return mul_size(MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts,
					sizeof(pg_atomic_uint64));
}

/* Install the hooks; called from _PG_init in the postmaster. */
void
igny8_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = igny8_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = igny8_shmem_startup;
}

static void
igny8_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	RequestAddinShmemSpace(MAXALIGN(sizeof(Igny8Shared)));
	RequestAddinShmemSpace(MAXALIGN(slots_size()));
	RequestAddinShmemSpace(MAXALIGN(free_stack_size()));
	RequestAddinShmemSpace(MAXALIGN(queues_size()));
	RequestAddinShmemSpace(MAXALIGN(waiters_size()));
	RequestAddinShmemSpace(MAXALIGN(IGNY8_DSA_INITIAL_SIZE));
	igny8_budget_shmem_request();
	igny8_account_shmem_request();
}

static void
init_shared(void)
{
	dsa_area   *area;

	memset(igny8_shared, 0, sizeof(Igny8Shared));
	igny8_shared->nslots = igny8_max_in_flight;
	igny8_shared->nworkers = igny8_nworkers;
	pg_atomic_init_u64(&igny8_shared->config_generation, 1);
	pg_atomic_init_u64(&igny8_shared->config_started, 1);
	pg_atomic_init_u64(&igny8_shared->jobs_generation, 0);
	pg_atomic_init_u32(&igny8_shared->jobs_claim_missed, 0);
	pg_atomic_init_u64(&igny8_shared->jobs_scan_requests, 0);
	pg_atomic_init_u32(&igny8_shared->jobs_capped, 0);
	pg_atomic_init_u64(&igny8_shared->jobs_runs_ended, 0);
	for (int i = 0; i < igny8_nprocs; i++)
		pg_atomic_init_u64(&igny8_job_waiters[i], 0);
	SpinLockInit(&igny8_shared->free_mutex);
	SpinLockInit(&igny8_shared->providers_mutex);
	SpinLockInit(&igny8_shared->gpu_mutex);
	for (int i = 0; i < IGNY8_MAX_PROVIDERS; i++)
	{
		Igny8ProviderShared *p = &igny8_shared->providers[i];

		SpinLockInit(&p->mutex);
		p->wait_head = p->wait_tail = p->sync_tail = -1;
	}
	for (int i = 0; i < IGNY8_MAX_WORKERS; i++)
	{
		Igny8WorkerShared *w = &igny8_shared->workers[i];

		SpinLockInit(&w->mutex);
		w->procno = -1;
		pg_atomic_init_u32(&w->wakeup, 0);
		pg_atomic_init_u32(&w->flushing, 0);
		pg_atomic_init_u64(&w->flush_waiters, 0);
		pg_atomic_init_u32(&w->abandons, 0);
		pg_atomic_init_u32(&w->in_flight, 0);
		pg_atomic_init_u64(&w->served, 0);
		pg_atomic_init_u64(&w->config_generation, 0);
		pg_atomic_init_u64(&w->reloads, 0);
		pg_atomic_init_u64(&w->last_job_scan, 0);
		pg_atomic_init_u64(&w->next_job_scan, 0);
		pg_atomic_init_u64(&w->last_turn, 0);
	}

	memset(igny8_slots, 0, slots_size());
	for (int i = 0; i < igny8_max_in_flight; i++)
	{
		Igny8Slot  *slot = &igny8_slots[i];

		SpinLockInit(&slot->mutex);
		slot->state = IGNY8_SLOT_FREE;
		slot->request = InvalidDsaPointer;
		slot->result = InvalidDsaPointer;
		slot->wait_provider = -1;
		slot->wait_prev = slot->wait_next = -1;
		/* pop order: slot 0 first */
		igny8_free_stack[i] = igny8_max_in_flight - 1 - i;
	}
	igny8_shared->nfree = igny8_max_in_flight;

	igny8_shared->dsa_tranche = LWLockNewTrancheId();
	area = dsa_create_in_place(igny8_dsa_place, IGNY8_DSA_INITIAL_SIZE,
							   igny8_shared->dsa_tranche, NULL);
	dsa_set_size_limit(area, (size_t) igny8_payload_memory_kb * 1024);
	dsa_pin(area);
	dsa_detach(area);
}

static void
igny8_shmem_startup(void)
{
	bool		found;
	bool		found_other;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	igny8_shared = ShmemInitStruct("igny8_ai shared", sizeof(Igny8Shared),
								   &found);
	igny8_slots = ShmemInitStruct("igny8_ai slots", slots_size(),
								  &found_other);
	igny8_free_stack = ShmemInitStruct("igny8_ai free slots",
									   free_stack_size(), &found_other);
	igny8_queues = ShmemInitStruct("igny8_ai queues", queues_size(),
								   &found_other);
	igny8_dsa_place = ShmemInitStruct("igny8_ai dsa", IGNY8_DSA_INITIAL_SIZE,
									  &found_other);
	igny8_nprocs = MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
	igny8_job_waiters = ShmemInitStruct("igny8_ai job waiters", waiters_size(),
										&found_other);
	if (!found)
	{
		init_shared();
		if (!IsUnderPostmaster)
			igny8_shared_generation++;
	}
	igny8_budget_shmem_startup();
	igny8_account_shmem_startup();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * The DSA area for payloads, attached on first use in this process and kept
 * for its lifetime.
 */
dsa_area *
igny8_dsa(void)
{
	if (igny8_dsa_area == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		LWLockRegisterTranche(igny8_shared->dsa_tranche, "igny8_ai_dsa");
		igny8_dsa_area = dsa_attach_in_place(igny8_dsa_place, NULL);
		dsa_pin_mapping(igny8_dsa_area);
		MemoryContextSwitchTo(old);
	}
	return igny8_dsa_area;
}

/*
 * Take a free slot (FILLING, for its taker to fill), or -1 when every slot
 * is in use.
 */
int
igny8_slot_take(void)
{
	int			slotno = -1;
	Igny8Slot  *slot;

	SpinLockAcquire(&igny8_shared->free_mutex);
	if (igny8_shared->nfree > 0)
		slotno = igny8_free_stack[--igny8_shared->nfree];
	SpinLockRelease(&igny8_shared->free_mutex);
	if (slotno < 0)
		return -1;
	slot = &igny8_slots[slotno];
	SpinLockAcquire(&slot->mutex);
	Assert(slot->state == IGNY8_SLOT_FREE);
	slot->state = IGNY8_SLOT_FILLING;
	SpinLockRelease(&slot->mutex);
	return slotno;
}

/*
 * Free a slot's payloads and put it back on the free list.  The caller owns
 * the slot (it is DONE and read, or ABANDONED and seen by the worker).
 */
void
igny8_slot_release(int slotno)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	dsa_area   *area = igny8_dsa();
	bool		was_free;
	dsa_pointer request = InvalidDsaPointer;
	dsa_pointer result = InvalidDsaPointer;

	/*
	 * FREE here, but on the free list only below: no one takes it between.
	 * One released twice would have its payloads freed twice and be given
	 * to two takers: refused.
	 */
	SpinLockAcquire(&slot->mutex);
	was_free = (slot->state == IGNY8_SLOT_FREE);
	if (!was_free)
	{
		request = slot->request;
		result = slot->result;
		slot->request = InvalidDsaPointer;
		slot->result = InvalidDsaPointer;
		slot->state = IGNY8_SLOT_FREE;
		slot->job_id = 0;
		slot->job_cancel = false;
		slot->attempt_number = 0;
		slot->attempt_provider[0] = '\0';
		slot->remote_id[0] = '\0';
		slot->remote_number = -1;
	}
	SpinLockRelease(&slot->mutex);
	if (was_free)
		elog(ERROR, "igny8_ai request slot %d is free already", slotno);

	if (DsaPointerIsValid(request))
		dsa_free(area, request);
	if (DsaPointerIsValid(result))
		dsa_free(area, result);

	SpinLockAcquire(&igny8_shared->free_mutex);
	Assert(igny8_shared->nfree < igny8_shared->nslots);
	igny8_free_stack[igny8_shared->nfree++] = slotno;
	SpinLockRelease(&igny8_shared->free_mutex);
}

/* Append a slot index to a worker's ring.  Never full: one entry a slot. */
bool
igny8_queue_push(int worker, int slotno)
{
	Igny8WorkerShared *w = &igny8_shared->workers[worker];
	int		   *ring = igny8_queues + (Size) worker * igny8_shared->nslots;
	bool		ok;

	SpinLockAcquire(&w->mutex);
	ok = w->queued < (uint32) igny8_shared->nslots;
	if (ok)
	{
		ring[(w->head + w->queued) % igny8_shared->nslots] = slotno;
		if (w->queued == 0)
			w->queued_since = igny8_slots[slotno].submitted_at;
		w->queued++;
	}
	SpinLockRelease(&w->mutex);
	return ok;
}

/* Take the oldest slot index from a worker's ring, or -1. */
int
igny8_queue_pop(int worker)
{
	Igny8WorkerShared *w = &igny8_shared->workers[worker];
	int		   *ring = igny8_queues + (Size) worker * igny8_shared->nslots;
	int			slotno = -1;

	SpinLockAcquire(&w->mutex);
	if (w->queued > 0)
	{
		slotno = ring[w->head];
		w->head = (w->head + 1) % igny8_shared->nslots;
		w->queued--;
	}
	SpinLockRelease(&w->mutex);
	return slotno;
}

/*
 * Take a slot index out of a worker's ring, wherever it is, keeping the
 * order of the others: false when the ring does not hold it (a worker
 * popped it).
 */
bool
igny8_queue_remove(int worker, int slotno)
{
	Igny8WorkerShared *w = &igny8_shared->workers[worker];
	int		   *ring = igny8_queues + (Size) worker * igny8_shared->nslots;
	uint32		n = (uint32) igny8_shared->nslots;
	bool		found = false;

	SpinLockAcquire(&w->mutex);
	for (uint32 i = 0; i < w->queued; i++)
	{
		if (!found && ring[(w->head + i) % n] == slotno)
			found = true;
		if (found && i + 1 < w->queued)
			ring[(w->head + i) % n] = ring[(w->head + i + 1) % n];
	}
	if (found)
	{
		w->queued--;
		/* the oldest may have left: the head is the oldest now */
		if (w->queued > 0)
			w->queued_since = igny8_slots[ring[w->head]].submitted_at;
	}
	SpinLockRelease(&w->mutex);
	return found;
}

/*
 * Is a worker's queue empty?  A hint, read without the lock (every caller
 * of it is woken anyway when something is pushed): a thousand callers
 * submitting at once would otherwise queue up on the worker's spinlock.
 */
bool
igny8_queue_empty(int worker)
{
	return igny8_queue_length(worker) == 0;
}

/* How many requests wait in a worker's queue: a hint, read without the lock. */
uint32
igny8_queue_length(int worker)
{
	volatile Igny8WorkerShared *w = &igny8_shared->workers[worker];

	return w->queued;
}

/* Is a worker running?  Read without the lock: procno is one int. */
bool
igny8_worker_running(int worker)
{
	volatile Igny8WorkerShared *w = &igny8_shared->workers[worker];

	return w->procno >= 0;
}

/*
 * Is a worker stalled (igny8_stalled, IGNY8_STALL_MS)?  A hint for routing,
 * read without the lock like igny8_queue_length: read during the push
 * that fills an empty queue, queued_since may still be the previous
 * one's, and one call go to another worker.
 */
bool
igny8_worker_stalled(int worker, TimestampTz now)
{
	volatile Igny8WorkerShared *w = &igny8_shared->workers[worker];
	pg_atomic_uint64 *last_turn = &igny8_shared->workers[worker].last_turn;
	uint32		queued;

	if (w->procno < 0)
		return false;
	queued = w->queued;
	if (queued == 0)
		return false;
	return igny8_stalled(queued, w->queued_since,
						 (TimestampTz) pg_atomic_read_u64(last_turn), now);
}

/*
 * Is worker w running, the incarnation that started at started?  With its
 * index, a worker's start time tells one incarnation from the next.
 */
bool
igny8_worker_is(int worker, TimestampTz started)
{
	Igny8WorkerShared *w;
	bool		is;

	if (worker < 0 || worker >= igny8_shared->nworkers)
		return false;
	w = &igny8_shared->workers[worker];
	SpinLockAcquire(&w->mutex);
	is = (w->procno >= 0 && w->started_at == started);
	SpinLockRelease(&w->mutex);
	return is;
}

void
igny8_wake_proc(int procno)
{
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/*
 * Wake a worker.  The flag is set first: a worker whose latch was reset by
 * something else it waited for (a lock, say) still sees that it has work.
 */
void
igny8_wake_worker(int worker)
{
	volatile Igny8WorkerShared *w = &igny8_shared->workers[worker];

	pg_atomic_write_u32((pg_atomic_uint32 *) &w->wakeup, 1);
	igny8_wake_proc(w->procno);
}

void
igny8_wake_all_workers(void)
{
	for (int i = 0; i < igny8_shared->nworkers; i++)
		igny8_wake_worker(i);
}

/* Bytes n strings take when packed. */
static Size
strings_size(int n, const char *const *strs)
{
	Size		total = 0;

	for (int i = 0; i < n; i++)
		total += sizeof(uint32) + (strs[i] ? strlen(strs[i]) + 1 : 0);
	return total;
}

/* Write n strings at p: each a uint32 length (UINT32_MAX: NULL), then it. */
static void
write_strings(char *p, int n, const char *const *strs)
{
	for (int i = 0; i < n; i++)
	{
		uint32		len = strs[i] ? (uint32) strlen(strs[i]) : UINT32_MAX;

		memcpy(p, &len, sizeof(uint32));
		p += sizeof(uint32);
		if (strs[i])
		{
			memcpy(p, strs[i], len + 1);
			p += len + 1;
		}
	}
}

/* Read n strings written by write_strings into palloc'd copies. */
static void
read_strings(const char *p, int n, char **strs)
{
	for (int i = 0; i < n; i++)
	{
		uint32		len;

		memcpy(&len, p, sizeof(uint32));
		p += sizeof(uint32);
		if (len == UINT32_MAX)
			strs[i] = NULL;
		else
		{
			strs[i] = pnstrdup(p, len);
			p += len + 1;
		}
	}
}

/*
 * Pack n strings (NULL allowed) into one DSA chunk: for each, a uint32
 * length (UINT32_MAX for NULL) followed by the bytes and a NUL.  Returns
 * InvalidDsaPointer when the area is at igny8_ai.payload_memory.
 */
dsa_pointer
igny8_pack_strings(dsa_area *area, int n, const char *const *strs)
{
	Size		total = strings_size(n, strs);
	dsa_pointer dp;

	dp = dsa_allocate_extended(area, Max(total, 1),
							   DSA_ALLOC_HUGE | DSA_ALLOC_NO_OOM);
	if (!DsaPointerIsValid(dp))
		return dp;
	write_strings(dsa_get_address(area, dp), n, strs);
	return dp;
}

/* Unpack up to n strings into palloc'd copies; returns how many. */
int
igny8_unpack_strings(dsa_area *area, dsa_pointer dp, int n, char **strs)
{
	if (!DsaPointerIsValid(dp))
	{
		for (int i = 0; i < n; i++)
			strs[i] = NULL;
		return 0;
	}
	read_strings(dsa_get_address(area, dp), n, strs);
	return n;
}

/*
 * Pack binary data and n strings (NULL allowed): the data's length, the
 * data, then the strings as igny8_pack_strings lays them out.  Invalid
 * when the area is full.
 */
dsa_pointer
igny8_pack_blob(dsa_area *area, const char *data, Size len, int n,
				const char *const *strs)
{
	Size		total = sizeof(uint64) + len + strings_size(n, strs);
	dsa_pointer dp;
	char	   *p;

	dp = dsa_allocate_extended(area, total, DSA_ALLOC_HUGE | DSA_ALLOC_NO_OOM);
	if (!DsaPointerIsValid(dp))
		return dp;
	p = dsa_get_address(area, dp);
	{
		uint64		len64 = (uint64) len;

		memcpy(p, &len64, sizeof(uint64));
	}
	p += sizeof(uint64);
	memcpy(p, data, len);
	write_strings(p + len, n, strs);
	return dp;
}

/*
 * Unpack what igny8_pack_blob packed: the data straight into a new bytea
 * (its one copy on the caller's side), the strings into palloc'd copies.
 */
struct varlena *
igny8_unpack_blob(dsa_area *area, dsa_pointer dp, int n, char **strs)
{
	char	   *p = dsa_get_address(area, dp);
	uint64		len;
	struct varlena *v;

	memcpy(&len, p, sizeof(uint64));
	p += sizeof(uint64);
	if (len > MaxAllocSize - VARHDRSZ)
		elog(ERROR, "igny8_ai payload of %llu bytes is too large for a bytea",
			 (unsigned long long) len);
	v = (struct varlena *) palloc(len + VARHDRSZ);
	SET_VARSIZE(v, len + VARHDRSZ);
	memcpy(VARDATA(v), p, len);
	read_strings(p + len, n, strs);
	return v;
}

/* Copy a request into the DSA area; a clear error when the area is full. */
dsa_pointer
igny8_dsa_strdup(dsa_area *area, const char *s, Size len)
{
	dsa_pointer dp = dsa_allocate_extended(area, len + 1,
										   DSA_ALLOC_HUGE | DSA_ALLOC_NO_OOM);
	char	   *p;

	if (!DsaPointerIsValid(dp))
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("igny8_ai's shared memory for payloads is full"),
				 errdetail("The request needs %zu bytes; igny8_ai.payload_memory is %d kB.",
						   len + 1, igny8_payload_memory_kb),
				 errhint("Raise igny8_ai.payload_memory (needs a restart), or send fewer or smaller requests at once.")));
	p = dsa_get_address(area, dp);

	memcpy(p, s, len);
	p[len] = '\0';
	return dp;
}
