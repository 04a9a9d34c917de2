/*-------------------------------------------------------------------------
 *
 * igny8_ai.c
 *	  Module entry point: GUCs, shared memory, background worker registration,
 *	  and the small shared-memory primitives (slot free list, worker queues,
 *	  packed strings in the DSA area) that dispatch.c and worker.c share.
 *
 * The module must be in shared_preload_libraries: the request slots and the
 * workers exist only if the postmaster set them up.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "igny8_ai.h"
#include "provider.h"

PG_MODULE_MAGIC;

/* initial in-place size of the DSA area; it grows with DSM segments */
#define IGNY8_DSA_INITIAL_SIZE	(1024 * 1024)

/* GUC variables */
char	   *igny8_database = NULL;
int			igny8_nworkers = 2;
int			igny8_max_in_flight = 1024;
int			igny8_default_timeout_ms = 600 * 1000;
int			igny8_max_response_kb = 64 * 1024;
int			igny8_max_prompt_kb = 1024;
int			igny8_max_retries = 2;
char	   *igny8_account_id = NULL;
bool		igny8_log_content = false;
int			igny8_probe_timeout_ms = 5000;
int			igny8_circuit_threshold = 3;
int			igny8_circuit_cooldown_ms = 30000;
int			igny8_health_retention_s = 7 * 24 * 3600;
int			igny8_payload_memory_kb = 1024 * 1024;

/* shared memory */
Igny8Shared *igny8_shared = NULL;
Igny8Slot  *igny8_slots = NULL;
int		   *igny8_free_stack = NULL;
int		   *igny8_queues = NULL;
static void *igny8_dsa_place = NULL;
static dsa_area *igny8_dsa_area = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);
static void igny8_shmem_request(void);
static void igny8_shmem_startup(void);
static bool check_account_id(char **newval, void **extra, GucSource source);

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

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("igny8_ai must be loaded via shared_preload_libraries"),
				 errdetail("The request slots and background workers of igny8_ai are created when the server starts."),
				 errhint("Add igny8_ai to shared_preload_libraries in postgresql.conf (after pg_cron) and restart the server.")));

	DefineCustomStringVariable("igny8_ai.database",
							   gettext_noop("Database the igny8_ai background workers connect to."),
							   gettext_noop("The extension must be created in this database."),
							   &igny8_database,
							   "postgres",
							   PGC_POSTMASTER,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.workers",
							gettext_noop("Number of igny8_ai background workers."),
							gettext_noop("Each worker holds many requests in flight at once."),
							&igny8_nworkers,
							2, 1, IGNY8_MAX_WORKERS,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.max_in_flight",
							gettext_noop("Maximum number of synchronous AI requests in progress at once, server-wide."),
							NULL,
							&igny8_max_in_flight,
							1024, 16, 65536,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.default_timeout",
							gettext_noop("Overall deadline of an AI request, fallbacks included, when the call gives none."),
							NULL,
							&igny8_default_timeout_ms,
							600 * 1000, 100, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.payload_memory",
							gettext_noop("Shared memory for requests and answers in transit, server-wide."),
							gettext_noop("Allocated on demand as dynamic shared memory; a request that does not fit fails with a clear error."),
							&igny8_payload_memory_kb,
							1024 * 1024, 16 * 1024, INT_MAX,
							PGC_POSTMASTER,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.max_response_size",
							gettext_noop("Largest response body accepted from a provider."),
							gettext_noop("A larger response is cut off and counts as a failed attempt."),
							&igny8_max_response_kb,
							64 * 1024, 64, 1024 * 1024,
							PGC_SIGHUP,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.max_prompt_size",
							gettext_noop("Largest request (prompt and messages) a caller may send."),
							NULL,
							&igny8_max_prompt_kb,
							1024, 1, 256 * 1024,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.max_retries",
							gettext_noop("Retries of one deployment after a transient error, before falling back."),
							NULL,
							&igny8_max_retries,
							2, 0, 10,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("igny8_ai.account_id",
							   gettext_noop("Account to which AI usage is attributed when a call names none."),
							   gettext_noop("A bigint, or empty for none."),
							   &igny8_account_id,
							   "",
							   PGC_USERSET,
							   0,
							   check_account_id, NULL, NULL);

	DefineCustomBoolVariable("igny8_ai.log_content",
							 gettext_noop("Store prompts and outputs in ai_usage_log."),
							 gettext_noop("Off by default: prompts and outputs often hold private data."),
							 &igny8_log_content,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.health_probe_timeout",
							gettext_noop("Timeout of one health probe."),
							NULL,
							&igny8_probe_timeout_ms,
							5000, 100, 300 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.circuit_failure_threshold",
							gettext_noop("Consecutive failures (probes or requests) that open a provider's circuit."),
							gettext_noop("While the circuit is open, routing skips the provider if another candidate exists."),
							&igny8_circuit_threshold,
							3, 1, 1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.circuit_cooldown",
							gettext_noop("How long an open circuit stays open before one trial request may pass."),
							NULL,
							&igny8_circuit_cooldown_ms,
							30000, 0, 24 * 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.health_log_retention",
							gettext_noop("Age after which the scheduled health check deletes service_health_log rows."),
							NULL,
							&igny8_health_retention_s,
							7 * 24 * 3600, 60, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("igny8_ai");

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = igny8_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = igny8_shmem_startup;

	for (int i = 0; i < igny8_nworkers; i++)
	{
		BackgroundWorker worker;

		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
			BGWORKER_BACKEND_DATABASE_CONNECTION;
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = 1;
		snprintf(worker.bgw_library_name, BGW_MAXLEN, "igny8_ai");
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "igny8_worker_main");
		snprintf(worker.bgw_name, BGW_MAXLEN, "igny8_ai worker %d", i);
		snprintf(worker.bgw_type, BGW_MAXLEN, "igny8_ai worker");
		worker.bgw_main_arg = Int32GetDatum(i);
		RegisterBackgroundWorker(&worker);
	}
}

/* The account id setting must be empty or a bigint. */
static bool
check_account_id(char **newval, void **extra, GucSource source)
{
	char	   *end;
	long long	v;

	if (*newval == NULL || **newval == '\0')
		return true;
	errno = 0;
	v = strtoll(*newval, &end, 10);
	if (errno != 0 || *end != '\0' || end == *newval)
	{
		GUC_check_errdetail("igny8_ai.account_id must be a bigint or empty.");
		return false;
	}
	(void) v;
	return true;
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
	RequestAddinShmemSpace(MAXALIGN(IGNY8_DSA_INITIAL_SIZE));
}

static void
igny8_shmem_startup(void)
{
	bool		found;
	bool		found_slots;
	bool		found_free;
	bool		found_queues;
	bool		found_dsa;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);

	igny8_shared = ShmemInitStruct("igny8_ai shared", sizeof(Igny8Shared),
								   &found);
	igny8_slots = ShmemInitStruct("igny8_ai slots", slots_size(),
								  &found_slots);
	igny8_free_stack = ShmemInitStruct("igny8_ai free slots",
									   free_stack_size(), &found_free);
	igny8_queues = ShmemInitStruct("igny8_ai queues", queues_size(),
								   &found_queues);
	igny8_dsa_place = ShmemInitStruct("igny8_ai dsa", IGNY8_DSA_INITIAL_SIZE,
									  &found_dsa);

	if (!found)
	{
		dsa_area   *area;

		memset(igny8_shared, 0, sizeof(Igny8Shared));
		igny8_shared->nslots = igny8_max_in_flight;
		igny8_shared->nworkers = igny8_nworkers;
		pg_atomic_init_u64(&igny8_shared->config_generation, 1);
		pg_atomic_init_u32(&igny8_shared->next_worker, 0);
		SpinLockInit(&igny8_shared->free_mutex);
		SpinLockInit(&igny8_shared->providers_mutex);
		for (int i = 0; i < IGNY8_MAX_PROVIDERS; i++)
		{
			pg_atomic_init_u32(&igny8_shared->providers[i].in_flight, 0);
			SpinLockInit(&igny8_shared->providers[i].mutex);
		}
		for (int i = 0; i < IGNY8_MAX_WORKERS; i++)
		{
			Igny8WorkerShared *w = &igny8_shared->workers[i];

			SpinLockInit(&w->mutex);
			w->procno = -1;
			w->pid = 0;
			w->head = w->tail = 0;
			pg_atomic_init_u32(&w->abandons, 0);
			pg_atomic_init_u32(&w->in_flight, 0);
			pg_atomic_init_u64(&w->served, 0);
		}

		memset(igny8_slots, 0, slots_size());
		for (int i = 0; i < igny8_max_in_flight; i++)
		{
			SpinLockInit(&igny8_slots[i].mutex);
			igny8_slots[i].state = IGNY8_SLOT_FREE;
			igny8_slots[i].request = InvalidDsaPointer;
			igny8_slots[i].result = InvalidDsaPointer;
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
 * Free a slot's payloads and put it back on the free list.  The caller owns
 * the slot (it is DONE and read, or ABANDONED and seen by the worker).
 */
void
igny8_slot_release(int slotno)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	dsa_area   *area = igny8_dsa();

	if (DsaPointerIsValid(slot->request))
		dsa_free(area, slot->request);
	if (DsaPointerIsValid(slot->result))
		dsa_free(area, slot->result);
	slot->request = InvalidDsaPointer;
	slot->result = InvalidDsaPointer;

	SpinLockAcquire(&slot->mutex);
	slot->state = IGNY8_SLOT_FREE;
	SpinLockRelease(&slot->mutex);

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
	ok = (w->tail - w->head) < (uint32) igny8_shared->nslots;
	if (ok)
	{
		ring[w->tail % igny8_shared->nslots] = slotno;
		w->tail++;
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
	if (w->head != w->tail)
	{
		slotno = ring[w->head % igny8_shared->nslots];
		w->head++;
	}
	SpinLockRelease(&w->mutex);
	return slotno;
}

void
igny8_wake_proc(int procno)
{
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

void
igny8_wake_worker(int worker)
{
	igny8_wake_proc(igny8_shared->workers[worker].procno);
}

/*
 * Pack n strings (NULL allowed) into one DSA chunk: for each, a uint32
 * length (UINT32_MAX for NULL) followed by the bytes and a NUL.  Returns
 * InvalidDsaPointer when the area is at igny8_ai.payload_memory.
 */
dsa_pointer
igny8_pack_strings(dsa_area *area, int n, const char *const *strs)
{
	Size		total = 0;
	dsa_pointer dp;
	char	   *p;

	for (int i = 0; i < n; i++)
		total += sizeof(uint32) + (strs[i] ? strlen(strs[i]) + 1 : 0);

	dp = dsa_allocate_extended(area, Max(total, 1),
							   DSA_ALLOC_HUGE | DSA_ALLOC_NO_OOM);
	if (!DsaPointerIsValid(dp))
		return dp;
	p = dsa_get_address(area, dp);
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
	return dp;
}

/* Unpack up to n strings into palloc'd copies; returns how many. */
int
igny8_unpack_strings(dsa_area *area, dsa_pointer dp, int n, char **strs)
{
	char	   *p;

	if (!DsaPointerIsValid(dp))
	{
		for (int i = 0; i < n; i++)
			strs[i] = NULL;
		return 0;
	}
	p = dsa_get_address(area, dp);
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
	return n;
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
