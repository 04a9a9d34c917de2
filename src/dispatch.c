/*-------------------------------------------------------------------------
 *
 * dispatch.c
 *	  The caller's side of a synchronous request: validate the arguments,
 *	  put the request in a slot, hand it to a worker, wait on our latch, and
 *	  turn the answer into a datum or an error.
 *
 * The wait ends early on a query cancel, statement_timeout or a client that
 * went away; the slot is then abandoned and the worker aborts the transfer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "funcapi.h"
#include "libpq/libpq-be.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "igny8_ai.h"
#include "provider.h"

PG_FUNCTION_INFO_V1(igny8_generate_text);
PG_FUNCTION_INFO_V1(igny8_chat);

/* how long a request may sit in the queue of a worker that is not running */
#define IGNY8_NO_WORKER_MS		10000

/* What the caller asks for, before it goes into a slot. */
typedef struct Igny8Call
{
	Igny8Task	task;
	const char *alias;
	StringInfoData request;		/* normalized request JSON */
	int			timeout_ms;
	bool		has_account;
	int64		account_id;
} Igny8Call;

/* What comes back, copied out of the slot. */
typedef struct Igny8Answer
{
	char	   *content;
	char	   *thinking;
	char		provider[IGNY8_NAME_LEN];
	char		model_used[IGNY8_MODEL_LEN];
	char		finish_reason[32];
	int64		input_tokens;
	int64		output_tokens;
	char		cost[IGNY8_COST_LEN];	/* numeric text */
	double		duration_ms;
	int			attempts;
	pg_uuid_t	request_id;
	bool		cached;			/* answered from the response cache */
} Igny8Answer;

/*
 * The slots this backend holds (submitted and not yet released), in the
 * order they were taken, so that an error or an exit can abandon them.  A
 * call made while another holds slots (a trigger on service_health_log
 * that calls igny8_generate_text inside igny8_check_health) takes its
 * slots above the others', and its error gives up only those
 * (igny8_abandon_since).
 */
static int *my_slots = NULL;
static int	my_nslots = 0;
static bool exit_callback_registered = false;

/*
 * May this backend make calls?  The library is loaded, and the server is
 * not a standby: there the workers start only at promotion (they write
 * usage rows), and a call would wait for a worker that never comes, then
 * leave its slot queued to it for good.
 */
static void
check_loaded(void)
{
	if (igny8_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("igny8_ai must be loaded via shared_preload_libraries"),
				 errhint("Add igny8_ai to shared_preload_libraries in postgresql.conf and restart the server.")));
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("igny8_ai calls cannot be made during recovery"),
				 errdetail("The server is a standby, or has not finished recovery: the igny8_ai workers start when it is promoted, since every call writes its usage rows."),
				 errhint("Call it on the primary server.")));
}

/*
 * The workers connect to igny8_ai.database and serve it alone: they route
 * with its configuration and write its ai_usage_log.  A call from another
 * database that has the extension (left behind when both settings moved)
 * would be served with that database's configuration and logged there, and
 * a job submitted there would never run: refused.  The name is enough: the
 * workers connect by it, and a database cannot be renamed while anyone is
 * connected to it.
 */
void
igny8_check_workers_database(void)
{
	static Oid	checked = InvalidOid;
	char	   *name;

	if (checked == MyDatabaseId)
		return;
	name = get_database_name(MyDatabaseId);
	if (name == NULL || strcmp(name, igny8_database) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the igny8_ai workers serve database \"%s\", not \"%s\"",
						igny8_database, name ? name : "?"),
				 errdetail("The workers connect to the database named by igny8_ai.database, route calls with its configuration and log them there; a call or job from another database would be served with that configuration, or never run."),
				 errhint("Call from database \"%s\", or set igny8_ai.database to the database that has the extension (pg_cron's cron.database_name) and restart the server.",
						 igny8_database)));
	checked = MyDatabaseId;
}

/*
 * The tables the workers write in the transactions of their loop: the
 * usage rows, the response cache, and the outcomes and cancels of
 * submitted jobs.  A worker waiting for a lock on one of them serves no one
 * until it gets it.  Their OIDs in this database are looked up once and
 * forgotten when one of them changes (dropped, moved to another schema).
 */
static const char *const worker_tables[] = {
	"ai_usage_log", "igny8_response_cache", "igny8_jobs", "igny8_job_cancels"
};
static Oid	worker_table_oids[lengthof(worker_tables)];
static bool worker_tables_known = false;

static void
worker_tables_invalidated(Datum arg, Oid relid)
{
	for (int i = 0; i < (int) lengthof(worker_tables); i++)
		if (relid == InvalidOid || worker_table_oids[i] == relid)
			worker_tables_known = false;
}

static bool
find_worker_tables(void)
{
	static bool callback_registered = false;
	Oid			ext;
	Oid			nsp;

	if (worker_tables_known)
		return true;
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(worker_tables_invalidated, (Datum) 0);
		callback_registered = true;
	}
	ext = get_extension_oid("igny8_ai", true);
	nsp = OidIsValid(ext) ? igny8_extension_namespace(ext) : InvalidOid;
	if (!OidIsValid(nsp))
		return false;
	for (int i = 0; i < (int) lengthof(worker_tables); i++)
		worker_table_oids[i] = get_relname_relid(worker_tables[i], nsp);
	worker_tables_known = true;
	return true;
}

/*
 * Refuse to wait for a worker while this transaction holds a lock on a
 * table the workers write that conflicts with their writes (ShareLock or
 * stronger: LOCK TABLE, TRUNCATE, ALTER TABLE, CREATE INDEX, VACUUM
 * FULL...).  The worker would wait for this transaction to end, and this
 * transaction for the worker, until the call's deadline, while the worker
 * served no one else.  Called before anything is sent or any slot taken.
 */
void
igny8_check_worker_locks(void)
{
	/*
	 * A relation lock of ShareLock or stronger is never a fast-path one: it
	 * is in the main lock table, on one of this backend's myProcLocks lists
	 * (an SHM_QUEUE in PostgreSQL 15).  With every list empty there is
	 * nothing to look for, and the tables are not looked up: on a backend's
	 * first call that opened pg_extension, a quarter of the samples of
	 * first calls under igny8_generate_text in a profile.  A transaction
	 * with an xid, or a session holding an advisory lock, has a list entry
	 * and does the lookup.  The lists are read without their partitions'
	 * locks, as LockReleaseAll() does: only this backend adds its own
	 * locks; another backend adds to them only weak relation locks it moves
	 * out of the fast path, or this backend's virtual xid lock (a
	 * concurrent CREATE INDEX waiting for it), and with either on a list
	 * the lookup is done.
	 */
	bool		in_main_lock_table = false;

	for (int i = 0; i < NUM_LOCK_PARTITIONS; i++)
	{
		SHM_QUEUE  *procLocks = &MyProc->myProcLocks[i];

		if (SHMQueueNext(procLocks, procLocks,
						 offsetof(PROCLOCK, procLink)) != NULL)
		{
			in_main_lock_table = true;
			break;
		}
	}
	if (!in_main_lock_table)
		return;
	if (!find_worker_tables())
		return;
	for (int i = 0; i < (int) lengthof(worker_tables); i++)
	{
		LOCKTAG		tag;

		if (!OidIsValid(worker_table_oids[i]))
			continue;
		SET_LOCKTAG_RELATION(tag, MyDatabaseId, worker_table_oids[i]);
		for (LOCKMODE mode = MaxLockMode; mode >= ShareLock; mode--)
		{
			if (!LockHeldByMe(&tag, mode))
				continue;
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("this transaction holds a lock on table \"%s\" that the igny8_ai workers need",
							worker_tables[i]),
					 errdetail("The transaction holds %s on it; the workers write there (usage rows, cached answers, jobs' outcomes), so a worker would wait for this transaction while it waits for the worker.",
							   GetLockmodeName(DEFAULT_LOCKMETHOD, mode)),
					 errhint("Call it in another transaction: before the one that takes the lock, or after that one ends.")));
		}
	}
}

static void
forget_slot(int slotno)
{
	for (int i = my_nslots - 1; i >= 0; i--)
	{
		if (my_slots[i] == slotno)
		{
			/* the order is kept: igny8_abandon_since() counts on it */
			memmove(&my_slots[i], &my_slots[i + 1],
					sizeof(int) * (my_nslots - i - 1));
			my_nslots--;
			return;
		}
	}
}

/*
 * Take a slot still QUEUED out of its worker's queue and free it: true.
 * False when no queue holds it: a worker took it (it is RUNNING, or about
 * to be: the worker pops it, then claims it), or it is not QUEUED.  A
 * queued slot is in the queue of slot->worker (the worker that claims it
 * from another's queue, or queues it again, becomes slot->worker), and
 * only a pop under that queue's lock takes it out: once removed under the
 * same lock, no worker can reach it.  So a slot queued to a worker that is
 * not running, or behind a deadline, is freed at once, instead of waiting
 * for a worker to pop it.
 */
static bool
dequeue_slot(int slotno)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	bool		queued;
	int			worker;

	SpinLockAcquire(&slot->mutex);
	queued = (slot->state == IGNY8_SLOT_QUEUED);
	worker = slot->worker;
	SpinLockRelease(&slot->mutex);
	if (!queued || !igny8_queue_remove(worker, slotno))
		return false;
	igny8_slot_release(slotno);
	return true;
}

/*
 * Give up a slot its worker still holds (queued or running): one still in
 * a queue is taken out and freed (dequeue_slot); any other is marked
 * abandoned, and the worker told, which aborts the transfer and frees it.
 * True in both cases: the slot is no longer ours.  *state (if not NULL):
 * the state the slot was in.
 */
static bool
abandon_held(int slotno, Igny8SlotState *state)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	Igny8SlotState was;
	int			worker;
	bool		held;

	if (dequeue_slot(slotno))
	{
		if (state != NULL)
			*state = IGNY8_SLOT_QUEUED;
		return true;
	}
	SpinLockAcquire(&slot->mutex);
	was = slot->state;
	worker = slot->worker;
	held = (was == IGNY8_SLOT_QUEUED || was == IGNY8_SLOT_RUNNING);
	if (held)
		slot->state = IGNY8_SLOT_ABANDONED;
	SpinLockRelease(&slot->mutex);

	if (held)
	{
		pg_atomic_write_u32(&igny8_shared->workers[worker].abandons, 1);
		igny8_wake_worker(worker);
	}
	if (state != NULL)
		*state = was;
	return held;
}

/*
 * Give up on a slot: free it if the worker is done with it, otherwise mark
 * it abandoned and let its worker abort the transfer and free it.
 */
static void
abandon_slot(int slotno)
{
	Igny8SlotState state;

	forget_slot(slotno);
	if (!abandon_held(slotno, &state) &&
		(state == IGNY8_SLOT_DONE || state == IGNY8_SLOT_FILLING))
		igny8_slot_release(slotno);
}

/* How many slots this backend holds: a mark for igny8_abandon_since(). */
int
igny8_slots_held(void)
{
	return my_nslots;
}

/*
 * Abandon the slots taken since igny8_slots_held() returned mark: those of
 * the call that failed, not those of a call it was made inside.
 */
void
igny8_abandon_since(int mark)
{
	while (my_nslots > mark)
		abandon_slot(my_slots[my_nslots - 1]);
}

/*
 * Give up on one slot a worker still holds (queued or running): true when
 * it was abandoned; false when it was answered meanwhile, and stays ours.
 */
static bool
give_up_slot(int slotno)
{
	if (!abandon_held(slotno, NULL))
		return false;
	forget_slot(slotno);
	return true;
}

/* At exit: every slot this backend holds. */
static void
exit_callback(int code, Datum arg)
{
	igny8_abandon_since(0);
}

/*
 * The error of a call that finds no worker to serve it; detail says how it
 * found out.
 */
static void no_worker_error(const char *detail) pg_attribute_noreturn();

static void
no_worker_error(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("no igny8_ai background worker is running"),
			 errdetail_internal("%s", detail),
			 errhint("Check the server log; the workers connect to the database named by igny8_ai.database (\"%s\").",
					 igny8_database)));
	pg_unreachable();
}

/* Is any worker running? */
static bool
any_worker_running(void)
{
	for (int w = 0; w < igny8_shared->nworkers; w++)
		if (igny8_worker_running(w))
			return true;
	return false;
}

/*
 * Take a free slot, or fail with a clear error when all are in use: when no
 * worker runs, that is what the error says (the slots are held by calls
 * waiting for one), not to raise igny8_ai.max_in_flight.
 */
static int
take_slot(void)
{
	int			slotno = igny8_slot_take();

	if (slotno < 0 && !any_worker_running())
		no_worker_error(psprintf("All %d request slots are held by calls waiting for a worker.",
								 igny8_shared->nslots));
	if (slotno < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many AI requests in progress"),
				 errdetail("All %d request slots are in use.",
						   igny8_shared->nslots),
				 errhint("Raise igny8_ai.max_in_flight (needs a restart), or submit fewer requests at once.")));
	my_slots[my_nslots++] = slotno;
	return slotno;
}

/*
 * The first running worker with fewer than IGNY8_SPILL_QUEUED requests
 * waiting in its queue and fewer than IGNY8_SPILL_IN_FLIGHT in its hands;
 * when no worker is under both, the running worker holding the fewest
 * (queued and in hand together).  A worker takes its whole queue at each
 * turn of its loop, so its queue is that long only when it has been away
 * from it (a long transaction, a lock, an image to decode) or cannot keep
 * up.  Keeping the calls on one worker until then is cheaper than
 * spreading them: its loop serves more calls per turn, one commit covers
 * their usage rows, and it stays warm in the CPU's caches instead of two
 * workers each being woken from sleep (test/bench/README.md, "Calls go to
 * the first worker").  The limit on the requests in its hands keeps slow
 * calls (seconds each, many at once) from all waiting on one worker, and
 * its answers within one worker's igny8_ai.answer_memory.
 *
 * A stalled worker (IGNY8_STALL_MS: a request has waited in its queue, and
 * its loop has not turned, for a second) is passed over while another
 * runs that is not: a call queued to it would wait until it turns again,
 * up to its deadline.  The requests already in its queue stay there (it
 * takes them when it turns; their callers give up at their deadlines).
 * When every running worker is stalled, the one holding the fewest.  now
 * is the call's submitted_at: no clock is read here.
 *
 * When none runs (they are starting, or restarting), any queue will do:
 * the first worker to run empties the queues of those that do not.
 */
static int
choose_worker(TimestampTz now)
{
	int			best = -1;
	uint32		best_held = PG_UINT32_MAX;
	int			stalled = -1;
	uint32		stalled_held = PG_UINT32_MAX;

	for (int w = 0; w < igny8_shared->nworkers; w++)
	{
		uint32		queued;
		uint32		in_flight;

		if (!igny8_worker_running(w))
			continue;
		queued = igny8_queue_length(w);
		in_flight = pg_atomic_read_u32(&igny8_shared->workers[w].in_flight);
		if (queued > 0 && igny8_worker_stalled(w, now))
		{
			if (queued + in_flight < stalled_held)
			{
				stalled = w;
				stalled_held = queued + in_flight;
			}
			continue;
		}
		if (queued < IGNY8_SPILL_QUEUED && in_flight < IGNY8_SPILL_IN_FLIGHT)
			return w;
		if (queued + in_flight < best_held)
		{
			best = w;
			best_held = queued + in_flight;
		}
	}
	if (best >= 0)
		return best;
	return stalled >= 0 ? stalled : 0;
}

/*
 * Refuse, before anything is submitted, a call that needs n slots at once
 * when there are not that many, or not that many free now.  (Others may
 * take free slots meanwhile: igny8_submit then fails the same way.)
 */
void
igny8_check_free_slots(int n)
{
	int			nfree;

	check_loaded();
	if (n > igny8_shared->nslots)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many prompts for the request slots"),
				 errdetail("The batch has %d prompts; igny8_ai.max_in_flight allows %d requests in progress at once.",
						   n, igny8_shared->nslots),
				 errhint("Split the batch, or raise igny8_ai.max_in_flight (needs a restart).")));

	SpinLockAcquire(&igny8_shared->free_mutex);
	nfree = igny8_shared->nfree;
	SpinLockRelease(&igny8_shared->free_mutex);
	/* as take_slot: the slots may be held by calls waiting for a worker */
	if (n > nfree && !any_worker_running())
		no_worker_error(psprintf("The batch needs %d request slots; %d of %d are free, the others held by calls waiting for a worker.",
								 n, nfree, igny8_shared->nslots));
	if (n > nfree)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many AI requests in progress"),
				 errdetail("The batch needs %d request slots; %d of %d are free.",
						   n, nfree, igny8_shared->nslots),
				 errhint("Retry when fewer requests are in progress, split the batch, or raise igny8_ai.max_in_flight (needs a restart).")));
}


/*
 * The error a worker left in a failed slot, copied into local memory
 * without raising it (the slot stays ours).
 */
void
igny8_slot_error(int slotno, Igny8SlotError *err)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	char	   *strs[3];

	igny8_unpack_strings(igny8_dsa(), slot->result, 3, strs);
	err->sqlerrcode = slot->sqlerrcode ? slot->sqlerrcode :
		ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
	err->message = strs[0] ? strs[0] : "AI request failed";
	err->detail = strs[1];
	err->hint = strs[2];
}

/* Raise the error a worker left in a slot (the slot stays ours). */
void
igny8_report_slot_error(int slotno)
{
	Igny8SlotError err;

	igny8_slot_error(slotno, &err);
	ereport(ERROR,
			(errcode(err.sqlerrcode),
			 errmsg_internal("%s", err.message),
			 err.detail ? errdetail_internal("%s", err.detail) : 0,
			 err.hint ? errhint("%s", err.hint) : 0));
}

/*
 * Put a request in a free slot, not yet queued (FILLING: an error before
 * fill_slot's caller queues it frees it, and nothing was sent).  The
 * request JSON is in the server encoding; providers get UTF-8.
 */
static int
fill_slot(Igny8Task task, const char *alias, const char *request,
		  int timeout_ms, bool has_account, int64 account_id,
		  const pg_uuid_t *request_id)
{
	Igny8Slot  *slot;
	int			slotno;
	char	   *utf8;

	check_loaded();
	igny8_check_workers_database();
	igny8_check_worker_locks();
	if (my_slots == NULL)
		my_slots = MemoryContextAlloc(TopMemoryContext,
									  sizeof(int) * igny8_shared->nslots);
	if (!exit_callback_registered)
	{
		before_shmem_exit(exit_callback, (Datum) 0);
		exit_callback_registered = true;
	}

	/* providers speak UTF-8, whatever the database's encoding */
	utf8 = pg_server_to_any(request, strlen(request), PG_UTF8);

	slotno = take_slot();
	slot = &igny8_slots[slotno];
	slot->task = task;
	slot->request_id = *request_id;
	strlcpy(slot->alias, alias, IGNY8_NAME_LEN);
	slot->has_account = has_account;
	slot->account_id = account_id;
	slot->timeout_ms = timeout_ms;
	slot->submitted_at = GetCurrentTimestamp();
	slot->deadline = TimestampTzPlusMilliseconds(slot->submitted_at,
												 timeout_ms);
	slot->caller_procno = MyProc->pgprocno;
	slot->sent = false;
	slot->success = false;
	slot->sqlerrcode = 0;
	/* the answer's fields: a previous request's must not show through */
	slot->provider[0] = '\0';
	slot->model_used[0] = '\0';
	slot->finish_reason[0] = '\0';
	slot->input_tokens = 0;
	slot->output_tokens = 0;
	strlcpy(slot->cost, "0", IGNY8_COST_LEN);
	slot->duration_ms = 0;
	slot->attempts = 0;
	slot->cached = false;
	slot->http_status = 0;
	slot->healthy = false;
	slot->health_code[0] = '\0';	/* set once a probe ran (job.c) */
	slot->result = InvalidDsaPointer;
	slot->flush_lsn = InvalidXLogRecPtr;
	slot->request = igny8_dsa_strdup(igny8_dsa(), utf8, strlen(utf8));
	if (utf8 != request)
		pfree(utf8);
	return slotno;
}

/* Queue a filled slot to a worker: from here on, it may be sent. */
static void
queue_slot(int slotno)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	int			worker = choose_worker(slot->submitted_at);

	SpinLockAcquire(&slot->mutex);
	slot->worker = worker;
	slot->claimed = false;
	slot->state = IGNY8_SLOT_QUEUED;
	SpinLockRelease(&slot->mutex);
	if (!igny8_queue_push(worker, slotno))
		elog(ERROR, "igny8_ai worker queue %d is full", worker);
	igny8_wake_worker(worker);
	/*
	 * The worker stopped after it was chosen: the others take over its
	 * queue, and are woken to.  (The push took the worker's lock, under
	 * which it marks itself stopped, so this read is not stale.)
	 */
	if (!igny8_worker_running(worker))
		igny8_wake_all_workers();
}

/*
 * Put a request in a free slot and queue it to a worker.  Returns the
 * slot, which this backend holds until igny8_release_slot (or an error
 * abandons it).
 */
int
igny8_submit(Igny8Task task, const char *alias, const char *request,
			 int timeout_ms, bool has_account, int64 account_id,
			 const pg_uuid_t *request_id)
{
	int			slotno = fill_slot(task, alias, request, timeout_ms,
								   has_account, account_id, request_id);

	queue_slot(slotno);
	return slotno;
}

/*
 * Submit n requests of one call, all or none: every slot is taken and
 * filled (its request in the payload memory) before the first is queued,
 * so that a lack of slots or of payload memory fails the call with
 * nothing sent.  The error abandons the slots taken, which are then only
 * filled, and freed at once.  slots[i] gets the slot of requests[i].
 */
void
igny8_submit_all(Igny8Task task, const char *alias, char **requests, int n,
				 int timeout_ms, bool has_account, int64 account_id,
				 const pg_uuid_t *request_ids, int *slots)
{
	for (int i = 0; i < n; i++)
		slots[i] = fill_slot(task, alias, requests[i], timeout_ms,
							 has_account, account_id, &request_ids[i]);
	for (int i = 0; i < n; i++)
		queue_slot(slots[i]);
}

/*
 * What a caller waits on: its latch, postmaster death and, where the
 * platform can report it, its client's socket closing.  The set is made on
 * the first wait and kept for the backend's life: making and freeing one
 * for every wait (epoll_create1, three epoll_ctl, close) was about an
 * eighth of a backend's CPU per call.
 */
static WaitEventSet *wait_set = NULL;

static WaitEventSet *
caller_wait_set(void)
{
	if (wait_set == NULL)
	{
		WaitEventSet *set = CreateWaitEventSet(TopMemoryContext, 3);

		AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET,
						  NULL, NULL);
		if (MyProcPort != NULL && MyProcPort->sock != PGINVALID_SOCKET &&
			WaitEventSetCanReportClosed())
			AddWaitEventToSet(set, WL_SOCKET_CLOSED, MyProcPort->sock,
							  NULL, NULL);
		wait_set = set;
	}
	return wait_set;
}

/*
 * Wait until every slot of slots[] is answered.  A cancel, statement_timeout,
 * a lost client, a missing worker or a worker past the deadline end the wait
 * with an error; the caller's PG_CATCH (or exit) abandons the slots.
 * (igny8_wait_or_give_up gives up on a late slot alone instead.)
 *
 * Before it returns, the usage rows of the answers are made durable.  A
 * worker commits the rows of synchronous calls without waiting for the WAL
 * flush and gives each answer the end of the WAL that holds them (usage.c):
 * the flush is done here, by the caller, who waits anyway.  The workers
 * then never stand still on the disk, and callers that flush at the same
 * moment share one fdatasync, as committing backends do.  An answer, an
 * error included, is thus never seen before the rows of its attempts would
 * survive a crash.
 */
static void
wait_slots(const int *slots, int n, bool *late)
{
	/* per slot: since when it has been queued to a worker not running */
	TimestampTz *no_worker_since = palloc0(sizeof(TimestampTz) * n);
	WaitEventSet *set = caller_wait_set();

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		bool		all_done = true;
		XLogRecPtr	flush_lsn = InvalidXLogRecPtr;
		WaitEvent	events[3];
		int			nevents;

		for (int i = 0; i < n; i++)
		{
			Igny8Slot  *slot = &igny8_slots[slots[i]];
			Igny8SlotState state;
			XLogRecPtr	lsn;

			if (late != NULL && late[i])
				continue;		/* given up on, no longer ours */
			SpinLockAcquire(&slot->mutex);
			state = slot->state;
			lsn = slot->flush_lsn;
			SpinLockRelease(&slot->mutex);
			if (state == IGNY8_SLOT_DONE)
			{
				flush_lsn = Max(flush_lsn, lsn);
				continue;
			}
			all_done = false;

			if (state != IGNY8_SLOT_QUEUED ||
				igny8_worker_running(slot->worker))
				no_worker_since[i] = 0;
			else if (no_worker_since[i] == 0)
				no_worker_since[i] = now;
			else if (TimestampDifferenceExceeds(no_worker_since[i], now,
												IGNY8_NO_WORKER_MS))
				no_worker_error(psprintf("The request waited %d ms for a worker.",
										 IGNY8_NO_WORKER_MS));
			if (TimestampDifferenceExceeds(slot->deadline, now,
										   IGNY8_WORKER_GRACE_MS) &&
				late != NULL)
			{
				/* unless it was answered meanwhile: the next round reads it */
				late[i] = give_up_slot(slots[i]);
				continue;
			}
			if (TimestampDifferenceExceeds(slot->deadline, now,
										   IGNY8_WORKER_GRACE_MS))
				ereport(ERROR,
						(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
						 errmsg("igny8_ai worker did not answer in time"),
						 errdetail("The request passed its deadline of %d ms by more than %d ms.",
								   slot->timeout_ms, IGNY8_WORKER_GRACE_MS)));
		}
		if (all_done)
		{
			pfree(no_worker_since);
			if (!XLogRecPtrIsInvalid(flush_lsn))
				XLogFlush(flush_lsn);
			return;
		}

		nevents = WaitEventSetWait(set, 1000, events, lengthof(events),
								   PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		for (int i = 0; i < nevents; i++)
		{
			if (events[i].events & WL_SOCKET_CLOSED)
				ereport(FATAL,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("connection to client lost")));
		}
		CHECK_FOR_INTERRUPTS();
	}
}

void
igny8_wait(const int *slots, int n)
{
	wait_slots(slots, n, NULL);
}

/*
 * igny8_wait, but a slot whose worker passed its deadline by more than the
 * grace is given up on alone (abandoned: the worker frees it, and the slot
 * is no longer the caller's to read or release), with late[i] set, and the
 * others are still waited for.  The other errors end the wait as in
 * igny8_wait.
 */
void
igny8_wait_or_give_up(const int *slots, int n, bool *late)
{
	for (int i = 0; i < n; i++)
		late[i] = false;
	wait_slots(slots, n, late);
}

/* Done with an answered slot: free it. */
void
igny8_release_slot(int slotno)
{
	forget_slot(slotno);
	igny8_slot_release(slotno);
}

/*
 * Request ids are version 7 UUIDs (RFC 9562): the first 48 bits are the
 * Unix time in milliseconds, the next 12 (after the version) the fraction
 * of that millisecond, and the last 62 random.  A process never makes an
 * id whose first 60 bits are not above its last one's (RFC 9562, 6.2,
 * method 3): ids made in the same microsecond, as a batch's are, or after
 * the clock stepped back, take the next value.  So the ids a process
 * makes sort in the order it made them, and each new ai_usage_log row
 * lands at the right end of the index on request_id, as on id and
 * created_at.  With random (version 4) ids every insert touched a random
 * leaf page of that index: on a log of 2 million rows, right after a
 * checkpoint, a call wrote 7.5 kB of WAL instead of 0.6, mostly a
 * full-page image of that page (test/bench/README.md, "Request ids in
 * time order").  The id tells when the call was made, to the
 * microsecond, which its rows' created_at tells anyway.  ComfyUI prompt
 * ids are made the same way (image.c).
 *
 * The random bytes come from pg_strong_random() for 64 ids at a time: each
 * call of OpenSSL's generator takes its locks and parameters again, which
 * was a few per cent of a backend's CPU per call when 1,000 connections
 * called at once (test/bench/README.md, part (c)).  A process never shares
 * them (the postmaster draws none, so a forked backend starts with an
 * empty pool).
 */
#define IGNY8_REQUEST_ID_POOL	64
#define IGNY8_REQUEST_ID_RANDOM	8	/* bytes 8..15 */

static uint8 request_id_pool[IGNY8_REQUEST_ID_POOL * IGNY8_REQUEST_ID_RANDOM];
static int	request_id_pool_left = 0;

/* the first 60 bits (time and fraction) of this process's last id */
static uint64 request_id_last = 0;

/* A new version 7 UUID for a request. */
void
igny8_new_request_id(pg_uuid_t *id)
{
	/* microseconds since 1970-01-01 */
	uint64		us = (uint64) (GetCurrentTimestamp() +
							   (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) *
							   SECS_PER_DAY * USECS_PER_SEC);
	/* milliseconds, then the fraction of the millisecond in 4096ths */
	uint64		stamp = (us / 1000) << 12 | ((us % 1000) * 4096 / 1000);

	if (request_id_pool_left == 0)
	{
		if (!pg_strong_random(request_id_pool, sizeof(request_id_pool)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random values")));
		request_id_pool_left = IGNY8_REQUEST_ID_POOL;
	}
	request_id_pool_left--;
	if (stamp <= request_id_last)
		stamp = request_id_last + 1;
	request_id_last = stamp;
	for (int i = 0; i < 6; i++)
		id->data[i] = (uint8) (stamp >> (52 - 8 * i));
	id->data[6] = 0x70 | (uint8) ((stamp >> 8) & 0x0f);
	id->data[7] = (uint8) stamp;
	memcpy(id->data + 8,
		   request_id_pool + request_id_pool_left * IGNY8_REQUEST_ID_RANDOM,
		   IGNY8_REQUEST_ID_RANDOM);
	/* used once: nothing is left of it in the pool */
	memset(request_id_pool + request_id_pool_left * IGNY8_REQUEST_ID_RANDOM,
		   0, IGNY8_REQUEST_ID_RANDOM);
	id->data[8] = (id->data[8] & 0x3f) | 0x80;
}

/*
 * Send a call to a worker and wait for its answer.  On success fills *ans;
 * on failure raises the worker's error.  The slot is released on every path.
 */
static void
run_call(Igny8Call *call, Igny8Answer *ans)
{
	int			slotno = -1;
	int			mark = igny8_slots_held();

	memset(ans, 0, sizeof(*ans));
	igny8_new_request_id(&ans->request_id);

	PG_TRY();
	{
		Igny8Slot  *slot;
		char	   *strs[2];

		slotno = igny8_submit(call->task, call->alias, call->request.data,
							  call->timeout_ms, call->has_account,
							  call->account_id, &ans->request_id);
		slot = &igny8_slots[slotno];
		igny8_wait(&slotno, 1);
		if (!slot->success)
			igny8_report_slot_error(slotno);

		/* the worker validated it and converted it to the database encoding */
		igny8_unpack_strings(igny8_dsa(), slot->result, 2, strs);
		ans->content = strs[0] ? strs[0] : "";
		ans->thinking = strs[1];
		memcpy(ans->provider, slot->provider, IGNY8_NAME_LEN);
		memcpy(ans->model_used, slot->model_used, IGNY8_MODEL_LEN);
		memcpy(ans->finish_reason, slot->finish_reason,
			   sizeof(ans->finish_reason));
		ans->input_tokens = slot->input_tokens;
		ans->output_tokens = slot->output_tokens;
		memcpy(ans->cost, slot->cost, IGNY8_COST_LEN);
		ans->duration_ms = slot->duration_ms;
		ans->attempts = slot->attempts;
		ans->cached = slot->cached;
	}
	PG_CATCH();
	{
		igny8_abandon_since(mark);
		PG_RE_THROW();
	}
	PG_END_TRY();

	igny8_release_slot(slotno);
}

/* ----- argument checks shared by the SQL functions ----- */

const char *
igny8_check_alias(text *model)
{
	char	   *alias = text_to_cstring(model);

	if (alias[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model must not be empty"),
				 errhint("Pass a model alias from igny8_models, such as \"gpt-4\".")));
	if (strlen(alias) >= IGNY8_NAME_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("model alias \"%s...\" is too long",
						pnstrdup(alias, pg_mbcliplen(alias, strlen(alias), 32))),
				 errdetail("Aliases are at most %d bytes.", IGNY8_NAME_LEN - 1)));
	return alias;
}

static void
check_max_tokens(int64 max_tokens)
{
	if (max_tokens <= 0 || max_tokens > INT_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_tokens must be a positive integer"),
				 errdetail("max_tokens was %lld.", (long long) max_tokens)));
}

static void
check_temperature(double t)
{
	if (isnan(t) || t < 0.0 || t > 2.0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("temperature must be between 0 and 2"),
				 errdetail("temperature was %g.", t)));
}

/*
 * An interval in milliseconds, in double, so that a huge one saturates
 * where it is converted instead of overflowing (a month is 30 days).
 */
double
igny8_interval_ms_double(const Interval *span)
{
	return (double) span->time / 1000.0 +
		(double) span->day * (double) (USECS_PER_DAY / 1000) +
		(double) span->month * DAYS_PER_MONTH * (double) (USECS_PER_DAY / 1000);
}

/*
 * An interval as a timeout in milliseconds, at least 1 and at most INT_MAX
 * (24 days: longer is the same as no limit).
 */
static int
interval_to_timeout_ms(Interval *span)
{
	double		ms = igny8_interval_ms_double(span);

	if (!(ms > 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must be positive")));
	if (ms >= (double) INT_MAX)
		return INT_MAX;
	return Max((int) ms, 1);
}

static void
resolve_account(Igny8Call *call, bool has_arg, int64 arg)
{
	igny8_resolve_account(has_arg, arg, &call->has_account, &call->account_id);
}

/*
 * The account a call is charged to: the argument, else the session's
 * igny8_ai.account_id, else none.  A role bound to an account (account.c)
 * is charged to it; naming another account, by argument, option or
 * setting, is an error rather than silently ignored, so that an
 * application that mixes up its accounts hears of it.
 */
void
igny8_resolve_account(bool has_arg, int64 arg, bool *has_account,
					  int64 *account_id)
{
	int64		bound;

	if (has_arg)
	{
		if (arg < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("account_id must not be negative"),
					 errdetail("account_id was %lld.", (long long) arg)));
		*has_account = true;
		*account_id = arg;
	}
	else if (igny8_account_id != NULL && igny8_account_id[0] != '\0')
	{
		*has_account = true;
		*account_id = strtoll(igny8_account_id, NULL, 10);
	}
	else
		*has_account = false;

	if (!igny8_role_account(GetUserId(), &bound))
		return;
	if (*has_account && *account_id != bound)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" cannot charge account %lld",
						GetUserNameFromId(GetUserId(), false),
						(long long) *account_id),
				 errdetail("The role is bound to account %lld; the %s named account %lld.",
						   (long long) bound,
						   has_arg ? "account_id argument or option" :
						   "setting igny8_ai.account_id",
						   (long long) *account_id),
				 errhint("Omit account_id: the calls of a bound role are charged to its account.")));
	*has_account = true;
	*account_id = bound;
}

/* A normalized request of len bytes must fit igny8_ai.max_prompt_size. */
void
igny8_check_request_size(Size len)
{
	Size		limit = (Size) igny8_max_prompt_kb * 1024;

	if (len > limit)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("AI request is too large"),
				 errdetail("The request is %zu bytes; igny8_ai.max_prompt_size allows %zu.",
						   len, limit),
				 errhint("Shorten the prompt, or raise igny8_ai.max_prompt_size.")));
}

static void
append_message(StringInfo buf, bool *first, const char *role,
			   const char *content)
{
	if (!*first)
		appendStringInfoChar(buf, ',');
	*first = false;
	appendStringInfoString(buf, "{\"role\":");
	escape_json(buf, role);
	appendStringInfoString(buf, ",\"content\":");
	escape_json(buf, content);
	appendStringInfoChar(buf, '}');
}

static void
append_options(StringInfo buf, const Igny8TextOptions *opts)
{
	if (opts->has_max_tokens)
		appendStringInfo(buf, ",\"max_tokens\":%d", opts->max_tokens);
	if (opts->has_temperature)
		appendStringInfo(buf, ",\"temperature\":%.17g", opts->temperature);
}

/*
 * Is s (in the database encoding) empty or whitespace only?  Whitespace
 * is Anthropic's (igny8_utf8_trim_end), Unicode spaces included, so that
 * what a provider would refuse as blank is refused here for all of them.
 * In a database that is not UTF-8, the text is judged as the providers
 * get it, converted to UTF-8; but text that ends with an ASCII character
 * other than whitespace is not blank, whatever the encoding (in every
 * server encoding a byte below 0x80 is that ASCII character), and needs
 * no conversion.  SQL_ASCII text is sent as its bytes: judged so.
 */
bool
igny8_is_blank(const char *s)
{
	int			encoding = GetDatabaseEncoding();
	size_t		len = strlen(s);
	char	   *utf8;
	bool		blank;

	if (encoding == PG_UTF8 || encoding == PG_SQL_ASCII)
		return igny8_utf8_trim_end(s, len) == 0;

	while (len > 0 && !IS_HIGHBIT_SET(s[len - 1]) &&
		   igny8_utf8_trim_end(s + len - 1, 1) == 0)
		len--;
	if (len == 0)
		return true;
	if (!IS_HIGHBIT_SET(s[len - 1]))
		return false;
	utf8 = pg_server_to_any(s, (int) len, PG_UTF8);
	blank = (igny8_utf8_trim_end(utf8, strlen(utf8)) == 0);
	if (utf8 != s)
		pfree(utf8);
	return blank;
}

/*
 * igny8_generate_text(prompt, model, max_tokens, temperature, system,
 *					   timeout, account_id) returns text
 */
Datum
igny8_generate_text(PG_FUNCTION_ARGS)
{
	Igny8Call	call;
	Igny8Answer ans;
	Igny8TextOptions opts;
	char	   *prompt;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("prompt must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model must not be null"),
				 errhint("Pass a model alias from igny8_models, such as \"gpt-4\".")));

	prompt = igny8_check_prompt(PG_GETARG_TEXT_PP(0));
	memset(&call, 0, sizeof(call));
	memset(&opts, 0, sizeof(opts));
	call.task = IGNY8_TASK_TEXT;
	call.alias = igny8_check_alias(PG_GETARG_TEXT_PP(1));
	if (!PG_ARGISNULL(2))
	{
		check_max_tokens(PG_GETARG_INT32(2));
		opts.has_max_tokens = true;
		opts.max_tokens = PG_GETARG_INT32(2);
	}
	if (!PG_ARGISNULL(3))
	{
		check_temperature(PG_GETARG_FLOAT8(3));
		opts.has_temperature = true;
		opts.temperature = PG_GETARG_FLOAT8(3);
	}
	if (!PG_ARGISNULL(4))
		opts.system = text_to_cstring(PG_GETARG_TEXT_PP(4));
	call.timeout_ms = PG_ARGISNULL(5) ? igny8_default_timeout_ms :
		interval_to_timeout_ms(PG_GETARG_INTERVAL_P(5));
	resolve_account(&call, !PG_ARGISNULL(6),
					PG_ARGISNULL(6) ? 0 : PG_GETARG_INT64(6));

	initStringInfo(&call.request);
	appendStringInfoString(&call.request, igny8_text_request(prompt, &opts));

	run_call(&call, &ans);
	PG_RETURN_TEXT_P(cstring_to_text(ans.content));
}

/* A cost (numeric text; NULL or empty: 0) as a numeric datum. */
Datum
igny8_cost_datum(const char *cost)
{
	return DirectFunctionCall3(numeric_in,
							   CStringGetDatum(cost && cost[0] ? cost : "0"),
							   ObjectIdGetDatum(InvalidOid),
							   Int32GetDatum(-1));
}

/* A prompt argument: not blank. */
char *
igny8_check_prompt(text *arg)
{
	char	   *prompt = text_to_cstring(arg);

	if (igny8_is_blank(prompt))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prompt must not be empty")));
	return prompt;
}

/*
 * The normalized request of a prompt: the system prompt of the options
 * (if not blank) and the prompt as messages, and the sampling options.
 * Checked against igny8_ai.max_prompt_size.
 */
char *
igny8_text_request(const char *prompt, const Igny8TextOptions *opts)
{
	StringInfoData buf;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"messages\":[");
	if (opts->system && !igny8_is_blank(opts->system))
		append_message(&buf, &first, "system", opts->system);
	append_message(&buf, &first, "user", prompt);
	appendStringInfoChar(&buf, ']');
	append_options(&buf, opts);
	appendStringInfoChar(&buf, '}');
	igny8_check_request_size(buf.len);
	return buf.data;
}

static void
bad_messages(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid messages"),
			 errdetail("%s", detail),
			 errhint("Pass a JSON array of objects such as [{\"role\": \"user\", \"content\": \"Hello\"}]; roles are system, user and assistant.")));
}

/* The length of s as escape_json() writes it, quotes included. */
static Size
json_string_len(const char *s)
{
	Size		len = 2;

	for (; *s; s++)
	{
		switch (*s)
		{
			case '\b':
			case '\f':
			case '\n':
			case '\r':
			case '\t':
			case '"':
			case '\\':
				len += 2;
				break;
			default:
				len += ((unsigned char) *s < ' ') ? 6 : 1;
				break;
		}
	}
	return len;
}

/*
 * The role and content of element i of the messages (1-based), checked:
 * an object with a valid "role" and a string "content", and no other key
 * (a key we would drop, such as Ollama's "images", would change the
 * answer without a word).  Nested values are not descended into.
 */
static void
read_message(JsonbValue *elem, int i, char **role, char **content)
{
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;
	char	   *key = NULL;

	*role = NULL;
	*content = NULL;
	if (elem->type != jbvBinary ||
		!JsonContainerIsObject(elem->val.binary.data))
		bad_messages(psprintf("Element %d is not an object.", i));
	it = JsonbIteratorInit(elem->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok != WJB_VALUE)
			continue;
		else if (strcmp(key, "role") == 0)
		{
			if (v.type == jbvString)
				*role = pnstrdup(v.val.string.val, v.val.string.len);
		}
		else if (strcmp(key, "content") == 0)
		{
			if (v.type == jbvString)
				*content = pnstrdup(v.val.string.val, v.val.string.len);
			else
				bad_messages(psprintf("Element %d has no string \"content\".", i));
		}
		else
			bad_messages(psprintf("Element %d has the key \"%.*s\"; a message has only \"role\" and \"content\".",
								  i, pg_mbcliplen(key, strlen(key), 64), key));
	}
	if (*role == NULL ||
		(strcmp(*role, "system") != 0 && strcmp(*role, "user") != 0 &&
		 strcmp(*role, "assistant") != 0))
		bad_messages(psprintf("Element %d has no valid \"role\".", i));
	if (*content == NULL)
		bad_messages(psprintf("Element %d has no string \"content\".", i));
}

/*
 * Copy the messages, checked, into the request; returns how many bytes
 * their copy would have taken beyond what was copied.  The request is
 * limited to igny8_ai.max_prompt_size: once it is past the limit, the
 * rest is still checked and measured, not copied, so that a huge argument
 * takes no more than about the limit.  The jsonb is read as it is stored,
 * whatever its depth (a value nested in a message is refused, not parsed).
 */
static Size
append_messages(StringInfo buf, Jsonb *messages)
{
	Size		limit = (Size) igny8_max_prompt_kb * 1024;
	Size		skipped = 0;
	bool		over = false;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;
	bool		first = true;
	bool		has_turn = false;
	bool		has_content = false;
	int			n;
	int			i = 0;

	if (!JB_ROOT_IS_ARRAY(messages) || JB_ROOT_IS_SCALAR(messages))
		bad_messages("messages must be a JSON array.");
	n = JB_ROOT_COUNT(messages);
	if (n == 0)
		bad_messages("messages must not be empty.");

	it = JsonbIteratorInit(&messages->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *role;
		char	   *content;
		bool		blank;

		if (tok != WJB_ELEM)
			continue;
		i++;
		read_message(&v, i, &role, &content);
		blank = igny8_is_blank(content);
		/* as Anthropic's rule: only a last assistant message may be empty */
		if (blank && (i < n || strcmp(role, "assistant") != 0))
			bad_messages(psprintf("Element %d has an empty \"content\"; only the last message, when it is the assistant's, may be empty.", i));
		if (strcmp(role, "system") != 0)
			has_turn = true;
		if (!blank)
			has_content = true;

		/* a content alone past the limit is past it escaped too */
		if (!over && (Size) buf->len + strlen(content) <= limit)
		{
			append_message(buf, &first, role, content);
			over = ((Size) buf->len > limit);
		}
		else
		{
			over = true;
			skipped += (first ? 0 : 1) + strlen("{\"role\":,\"content\":}") +
				json_string_len(role) + json_string_len(content);
			first = false;
		}
		pfree(role);
		pfree(content);
	}
	if (!has_turn)
		bad_messages("messages must hold at least one user or assistant message.");
	if (!has_content)
		bad_messages("Every message is empty: there is nothing to answer.");
	return skipped;
}

/*
 * Refuse a jsonb argument that is over igny8_ai.max_prompt_size before it
 * is converted or parsed: its binary size is close to its text size.
 */
void
igny8_check_jsonb_size(Jsonb *j, const char *what)
{
	Size		limit = (Size) igny8_max_prompt_kb * 1024;

	if (VARSIZE(j) > limit)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("AI request is too large"),
				 errdetail("The %s are %zu bytes; igny8_ai.max_prompt_size allows %zu.",
						   what, (Size) VARSIZE(j), limit),
				 errhint("Shorten the prompt, or raise igny8_ai.max_prompt_size.")));
}

/* A string option; an error if it is not a string. */
char *
igny8_option_string(JsonbValue *v, const char *name)
{
	if (v->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"%s\" must be a string", name)));
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* A numeric option, exactly as given; an error if it is not a number. */
Numeric
igny8_option_numeric(JsonbValue *v, const char *name)
{
	if (v->type != jbvNumeric)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"%s\" must be a number", name)));
	return v->val.numeric;
}

/*
 * A numeric option as a double.  Beyond a double's range it becomes
 * +/-HUGE_VAL or 0 (no error of its own): the option's own range check
 * then names the option, and a huge timeout means no limit.
 */
double
igny8_numeric_double(Numeric n)
{
	return DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
											  NumericGetDatum(n)));
}

/*
 * An option that must be a whole number within [min, max], read from the
 * numeric itself so that a large id is not rounded through a double.
 */
int64
igny8_option_integer(JsonbValue *v, const char *name, int64 min, int64 max,
			   const char *what)
{
	Numeric		n = igny8_option_numeric(v, name);
	Datum		d = NumericGetDatum(n);
	bool		ok;

	ok = !numeric_is_nan(n) && !numeric_is_inf(n) &&
		DatumGetBool(DirectFunctionCall2(numeric_eq, d,
										 DirectFunctionCall1(numeric_floor, d))) &&
		DatumGetInt32(DirectFunctionCall2(numeric_cmp, d,
										  NumericGetDatum(int64_to_numeric(min)))) >= 0 &&
		DatumGetInt32(DirectFunctionCall2(numeric_cmp, d,
										  NumericGetDatum(int64_to_numeric(max)))) <= 0;
	if (!ok)
	{
		char	   *shown = DatumGetCString(DirectFunctionCall1(numeric_out, d));

		/* a number of a thousand digits is shown by its start */
		if (strlen(shown) > 40)
			shown = psprintf("%.40s...", shown);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be %s", name, what),
				 errdetail("%s was %s.", name, shown)));
	}
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, d));
}

/*
 * Iterate over an options object: igny8_options_begin checks it (its size,
 * that it is an object), igny8_next_option gives each key and value in
 * turn and false at the end.
 */
JsonbIterator *
igny8_options_begin(Jsonb *opts)
{
	igny8_check_jsonb_size(opts, "options");
	if (!JB_ROOT_IS_OBJECT(opts) || JB_ROOT_IS_SCALAR(opts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a JSON object")));
	return JsonbIteratorInit(&opts->root);
}

bool
igny8_next_option(JsonbIterator **it, char **key, JsonbValue *v)
{
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(it, v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			*key = pnstrdup(v->val.string.val, v->val.string.len);
		else if (tok == WJB_VALUE)
			return true;
	}
	return false;
}

/* The "timeout" option: seconds, positive, as milliseconds (1 to INT_MAX). */
int
igny8_option_timeout_ms(JsonbValue *v)
{
	double		secs = igny8_numeric_double(igny8_option_numeric(v, "timeout"));
	int			ms;

	if (!(secs > 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must be positive"),
				 errdetail("The \"timeout\" option is in seconds.")));
	ms = (int) Min(secs * 1000.0, (double) INT_MAX);
	return Max(ms, 1);
}

/* The "account_id" option: a bigint that is not negative. */
int64
igny8_option_account_id(JsonbValue *v)
{
	return igny8_option_integer(v, "account_id", 0, PG_INT64_MAX,
								"a bigint that is not negative");
}

/*
 * The options of a text or chat call, checked: max_tokens, temperature,
 * timeout, account_id, and system where allow_system; with job non-NULL,
 * also the options of a submitted job (igny8_job_option).  The account is
 * resolved (igny8_resolve_account).
 */
void
igny8_text_options(Jsonb *options, bool allow_system, Igny8JobOptions *job,
				   Igny8TextOptions *opts)
{
	bool		has_account = false;
	int64		account_id = 0;

	memset(opts, 0, sizeof(*opts));
	opts->timeout_ms = igny8_default_timeout_ms;
	if (options != NULL)
	{
		JsonbIterator *it = igny8_options_begin(options);
		JsonbValue	v;
		char	   *key = NULL;

		while (igny8_next_option(&it, &key, &v))
		{
			if (strcmp(key, "max_tokens") == 0)
			{
				opts->max_tokens = (int) igny8_option_integer(&v, "max_tokens", 1, INT_MAX,
															  "a positive integer");
				opts->has_max_tokens = true;
			}
			else if (strcmp(key, "temperature") == 0)
			{
				opts->temperature = igny8_numeric_double(igny8_option_numeric(&v, "temperature"));
				check_temperature(opts->temperature);
				opts->has_temperature = true;
			}
			else if (strcmp(key, "timeout") == 0)
			{
				opts->timeout_ms = igny8_option_timeout_ms(&v);
				opts->has_timeout = true;
			}
			else if (strcmp(key, "account_id") == 0)
			{
				account_id = igny8_option_account_id(&v);
				has_account = true;
			}
			else if (allow_system && strcmp(key, "system") == 0)
				opts->system = igny8_option_string(&v, key);
			else if (job == NULL || !igny8_job_option(job, key, &v))
				igny8_unknown_option(key, allow_system ?
									 "system, max_tokens, temperature, timeout (seconds) and account_id" :
									 "max_tokens, temperature, timeout (seconds) and account_id",
									 job != NULL);
		}
	}
	igny8_resolve_account(has_account, account_id, &opts->has_account,
						  &opts->account_id);
}

/* An option no function of this kind knows. */
void
igny8_unknown_option(const char *key, const char *valid, bool job)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown option \"%s\"", key),
			 job ?
			 errhint("Valid options are %s, and for a submitted job priority, not_before, max_attempts and idempotency_key.", valid) :
			 errhint("Valid options are %s.", valid)));
}

/*
 * The normalized request of a chat: its messages, checked, and options.
 * Its length is what igny8_ai.max_prompt_size limits, as for a prompt.
 */
char *
igny8_chat_request(Jsonb *messages, const Igny8TextOptions *opts)
{
	StringInfoData buf;
	Size		skipped;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"messages\":[");
	skipped = append_messages(&buf, messages);
	appendStringInfoChar(&buf, ']');
	append_options(&buf, opts);
	appendStringInfoChar(&buf, '}');
	igny8_check_request_size(buf.len + skipped);
	return buf.data;
}

/*
 * igny8_chat(messages jsonb, model text, options jsonb) returns
 * igny8_completion
 */
Datum
igny8_chat(PG_FUNCTION_ARGS)
{
	Igny8Call	call;
	Igny8Answer ans;
	Igny8TextOptions opts;
	TupleDesc	tupdesc;
	Datum		values[12];
	bool		nulls[12];

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("messages must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model must not be null"),
				 errhint("Pass a model alias from igny8_models, such as \"gpt-4\".")));

	memset(&call, 0, sizeof(call));
	call.task = IGNY8_TASK_CHAT;
	call.alias = igny8_check_alias(PG_GETARG_TEXT_PP(1));
	igny8_text_options(PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2), false,
					   NULL, &opts);
	call.timeout_ms = opts.timeout_ms;
	call.has_account = opts.has_account;
	call.account_id = opts.account_id;
	initStringInfo(&call.request);
	appendStringInfoString(&call.request,
						   igny8_chat_request(PG_GETARG_JSONB_P(0), &opts));

	run_call(&call, &ans);

	memset(nulls, 0, sizeof(nulls));
	values[0] = CStringGetTextDatum(ans.content);
	if (ans.thinking)
		values[1] = CStringGetTextDatum(ans.thinking);
	else
		nulls[1] = true;
	values[2] = CStringGetTextDatum(ans.provider);
	values[3] = CStringGetTextDatum(ans.model_used);
	values[4] = Int32GetDatum((int32) Min(ans.input_tokens, PG_INT32_MAX));
	values[5] = Int32GetDatum((int32) Min(ans.output_tokens, PG_INT32_MAX));
	values[6] = igny8_cost_datum(ans.cost);
	values[7] = Float8GetDatum(ans.duration_ms);
	values[8] = UUIDPGetDatum(&ans.request_id);
	values[9] = Int32GetDatum(ans.attempts);
	if (ans.finish_reason[0])
		values[10] = CStringGetTextDatum(ans.finish_reason);
	else
		nulls[10] = true;
	values[11] = BoolGetDatum(ans.cached);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
