/*-------------------------------------------------------------------------
 *
 * igny8_ai.h
 *	  Shared state of igny8_ai: GUCs, the request slots that callers and
 *	  background workers meet in, and the DSA area for payloads.
 *
 * A synchronous call goes through shared memory, never through a table: the
 * caller fills a free slot, queues its index to a worker and waits on its
 * own latch; the worker runs the request, writes the usage rows in its own
 * committed transaction, writes the result and sets the caller's latch.
 *
 * Slot state machine (the slot's spinlock guards every transition):
 *
 *	FREE --caller--> FILLING --caller--> QUEUED --worker--> RUNNING
 *	RUNNING --worker--> DONE --caller--> FREE
 *	RUNNING --worker--> QUEUED (nothing was sent, and the worker is
 *		stopping or was restarted: the request is queued again)
 *	QUEUED --caller gives up, takes it out of the queue--> FREE
 *	FILLING/QUEUED/RUNNING --caller gives up--> ABANDONED --worker--> FREE
 *		(QUEUED: when a worker popped it already, and claims it next)
 *	DONE --caller gives up--> FREE (the caller frees it itself)
 *
 * A worker moves a slot from QUEUED to RUNNING in the same step that takes
 * it from a queue (claimed), so no slot is ever out of every queue without
 * an owner.  A queue of a worker that is not running is emptied by the
 * others.
 *
 * Whoever moves a slot to FREE frees its dsa_pointers first.  Payloads are
 * only ever referenced through dsa_pointer; no process follows another's
 * local pointer.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IGNY8_AI_H
#define IGNY8_AI_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "fmgr.h"
#include "port/atomics.h"
#include "storage/spin.h"
#include "utils/dsa.h"
#include "utils/timestamp.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/uuid.h"

#define IGNY8_NAME_LEN		64	/* aliases, provider ids */
#define IGNY8_MODEL_LEN		128 /* provider-side model names */
#define IGNY8_COST_LEN		64	/* a cost as numeric text */
#define IGNY8_MAX_WORKERS	64
#define IGNY8_MAX_PROVIDERS 64	/* providers with shared state */

/*
 * A call goes to the first running worker with fewer requests than
 * IGNY8_SPILL_QUEUED waiting in its queue and fewer than
 * IGNY8_SPILL_IN_FLIGHT in its hands (dispatch.c, choose_worker).
 */
#define IGNY8_SPILL_QUEUED	32
#define IGNY8_SPILL_IN_FLIGHT 64
/* the highest igny8_ai.max_idle_connections */
#define IGNY8_MAX_IDLE_CONNECTIONS_LIMIT 4096

/*
 * A running worker is stalled when a request has waited in its queue for
 * more than IGNY8_STALL_MS and its loop has not turned for as long
 * (igny8_worker_stalled): it is stopped (SIGSTOP, a debugger), stuck in a
 * system call, or waits on a lock or a long transaction.  A worker that
 * turns takes its whole queue at each turn and is woken for every request
 * queued to it, so a request waits there for at most the rest of the
 * iteration in progress: some transfers' progress, a usage commit (its WAL
 * flush: milliseconds, tens on a slow disk), a configuration load, an
 * image decoded.  A second is well above those, and small against a
 * call's deadline (seconds to minutes).  An idle worker sleeps up to a
 * minute without turning: with nothing queued it is never stalled.
 * choose_worker() (dispatch.c) sends no new call to a stalled worker while
 * another one is not.
 */
#define IGNY8_STALL_MS		1000

typedef enum Igny8SlotState
{
	IGNY8_SLOT_FREE = 0,
	IGNY8_SLOT_FILLING,			/* owned by the caller, being written */
	IGNY8_SLOT_QUEUED,			/* in a worker's queue */
	IGNY8_SLOT_RUNNING,			/* owned by the worker */
	IGNY8_SLOT_DONE,			/* result written, owned by the caller */
	IGNY8_SLOT_ABANDONED		/* the caller left; the worker frees it */
} Igny8SlotState;

typedef enum Igny8Task
{
	IGNY8_TASK_TEXT = 0,
	IGNY8_TASK_CHAT,
	IGNY8_TASK_IMAGE,
	IGNY8_TASK_HEALTH			/* probe the provider named in alias */
} Igny8Task;

/* A provider's health, as routing and igny8_service_status see it. */
typedef enum Igny8HealthState
{
	IGNY8_HEALTH_UNKNOWN = 0,	/* no probe or request yet */
	IGNY8_HEALTH_HEALTHY,
	IGNY8_HEALTH_DEGRADED,		/* answering, but failing or incomplete */
	IGNY8_HEALTH_DOWN			/* circuit open */
} Igny8HealthState;

/* One synchronous request and its answer. */
typedef struct Igny8Slot
{
	slock_t		mutex;
	Igny8SlotState state;
	int			caller_procno;	/* pgprocno of the waiting backend */
	int			worker;			/* worker it is queued to, or held by */
	bool		claimed;		/* a worker took it from a queue */
	bool		sent;			/* an attempt of it reached the network */

	/*
	 * Its place in a provider's wait queue (places.c), guarded by that
	 * provider's mutex: wait_provider is -1 when it waits for no place.
	 */
	int			wait_provider;
	int			wait_prev;
	int			wait_next;

	/* the request, written by the caller while FILLING */
	Igny8Task	task;
	pg_uuid_t	request_id;
	char		alias[IGNY8_NAME_LEN];
	bool		has_account;
	int64		account_id;
	int			timeout_ms;		/* the deadline, as the caller gave it */
	TimestampTz submitted_at;	/* when the caller filled it */
	TimestampTz deadline;
	dsa_pointer request;		/* normalized request, JSON text */

	/* the answer, written by the worker before DONE */
	bool		success;
	int			sqlerrcode;		/* when !success */
	dsa_pointer result;			/* packed strings, see igny8_pack_strings */
	char		provider[IGNY8_NAME_LEN];
	char		model_used[IGNY8_MODEL_LEN];
	char		finish_reason[32];
	long		http_status;	/* health probes: the probe's status */
	bool		healthy;		/* health probes: the verdict */
	Igny8HealthState health_state;	/* health probes: state after it */
	Igny8HealthState health_prev;	/* ... and before it */
	int			consecutive_failures;	/* health probes: after it */
	char		health_code[32];	/* health probes: short reason code */
	int			image_width;	/* images: the size made */
	int			image_height;
	int64		input_tokens;
	int64		output_tokens;
	char		cost[IGNY8_COST_LEN];	/* numeric text: the sum of the
										 * attempts' costs */
	double		duration_ms;
	int			attempts;
	bool		cached;			/* answered from the response cache */

	/*
	 * The end of the WAL the caller must flush before it takes the answer:
	 * the usage rows were committed without waiting for their flush
	 * (usage.c), or InvalidXLogRecPtr when nothing is left to flush.
	 */
	XLogRecPtr	flush_lsn;

	/*
	 * A run of a submitted job (igny8_jobs) has no caller: job_id is its
	 * id, 0 for a synchronous call.  job_cancel is set by the commit of
	 * igny8_cancel_job.  What the worker knows of its progress, for
	 * igny8_job_progress: when and where its current attempt started, and
	 * ComfyUI's prompt_id and queue number of it.
	 */
	int64		job_id;
	bool		job_cancel;
	TimestampTz attempt_since;
	int			attempt_number;
	char		attempt_provider[IGNY8_NAME_LEN];
	char		remote_id[40];
	int64		remote_number;	/* -1: none */
} Igny8Slot;

/*
 * A worker's inbox (a ring of slot indexes, big enough for every slot) and
 * what it tells the others.  The mutex guards procno, pid, started_at, head,
 * queued and queued_since; held[] is guarded by the mutex of the provider
 * it counts, configs[] by providers_mutex.
 */
typedef struct Igny8WorkerShared
{
	slock_t		mutex;
	int			procno;			/* -1 while not running */
	int			pid;
	TimestampTz started_at;
	uint32		head;			/* ring index of the oldest entry */
	uint32		queued;			/* entries in the ring */
	TimestampTz queued_since;	/* while queued > 0: submitted_at of its
								 * oldest entry (set when the ring goes
								 * from empty to one entry, and when a
								 * caller takes out the oldest) */
	pg_atomic_uint64 last_turn; /* TimestampTz: when its loop last took its
								 * queue (worker.c), or when it started */
	pg_atomic_uint32 wakeup;	/* set before its latch: look at the world */
	pg_atomic_uint32 abandons;	/* set by a caller that gave up */
	pg_atomic_uint32 in_flight; /* requests the worker holds */
	pg_atomic_uint64 served;	/* requests completed since start */
	pg_atomic_uint64 config_generation; /* of the configuration it loaded */
	pg_atomic_uint64 reloads;	/* postgresql.conf reloads it processed */
	uint32		held[IGNY8_MAX_PROVIDERS];	/* places it holds, per provider */
	uint32		configs[IGNY8_MAX_PROVIDERS];	/* its configurations loaded
												 * and not yet released that
												 * name each provider's entry
												 * (health.c; guarded by
												 * providers_mutex) */
	uint32		gpu_running[IGNY8_MAX_PROVIDERS];	/* its attempts counted
													 * on each GPU clock
													 * (gpuclock.c) */
	pg_atomic_uint32 flushing;	/* in its usage transaction (worker.c) */
	pg_atomic_uint64 flush_waiters; /* bits of the workers waiting for it */
	pg_atomic_uint64 last_job_scan; /* TimestampTz of its last scan of
									 * igny8_jobs, 0 if none yet */
	pg_atomic_uint64 next_job_scan; /* ... and of the next one, unless
									 * woken before (jobtable.c) */
} Igny8WorkerShared;

/*
 * Per-provider state shared by all processes: its places (max_concurrent
 * transfers, handed out in order across workers; places.c), and the
 * health state and circuit breaker that probes and requests feed
 * (health.c).  The mutex guards every field but id, which
 * providers_mutex guards.  The transfers in flight are the sum of the
 * workers' held[] counts, so a worker that exits gives its places back by
 * zeroing its own counts.
 */
typedef struct Igny8ProviderShared
{
	char		id[IGNY8_NAME_LEN]; /* empty: unused entry */
	slock_t		mutex;

	/* places */
	int			max_concurrent;
	int			wait_head;		/* first waiting slot, or -1 */
	int			wait_tail;
	int			sync_tail;		/* last synchronous call's slot, or -1 */
	int			nwaiting;

	/* health */
	Igny8HealthState state;
	TimestampTz state_since;
	int			consecutive_failures;
	bool		circuit_open;
	TimestampTz opened_at;		/* when the circuit (re)opened */
	TimestampTz trial_at;		/* last trial let through, 0 if none */
	TimestampTz trial_until;	/* a trial is in flight until then at the
								 * latest (its attempt's deadline); 0: none */
	bool		probe_degraded; /* last probe: reachable but incomplete */
	bool		request_failed; /* the last request failed on the provider
								 * (an HTTP error, a timeout once sent): a
								 * probe's success then changes nothing,
								 * only a request's success does */
	TimestampTz last_check;		/* last probe */
	TimestampTz last_seen;		/* last probe or request outcome */
	double		last_latency_ms;
	char		last_error[256];

	/* attempts that reached the network since start, and the failed ones */
	uint64		requests;
	uint64		errors;
} Igny8ProviderShared;

/* What a health report changed, for alerts. */
typedef struct Igny8HealthChange
{
	bool		changed;
	Igny8HealthState from;
	Igny8HealthState to;
	int			consecutive_failures;
	bool		requests_failing;	/* a probe's success left the state as
									 * it was: the last request failed */
} Igny8HealthChange;

/*
 * A processor-sharing clock of a box (a machine whose rent pays for one or
 * more providers, igny8_fixed_costs): s is the integral of dt / n(t) in
 * seconds, n(t) the attempts running on the box, up to time t.  An
 * attempt's share of the box's time is s at its end minus s at its start
 * (gpuclock.c).
 */
typedef struct Igny8GpuClock
{
	double		s;
	TimestampTz t;
	int			n;
} Igny8GpuClock;

typedef struct Igny8Shared
{
	int			dsa_tranche;
	int			nslots;
	int			nworkers;
	pg_atomic_uint64 config_generation; /* bumped by config commits */
	pg_atomic_uint64 config_started;	/* bumped by the same commits before
										 * they are visible (extension.c) */
	pg_atomic_uint64 jobs_generation;	/* bumped by commits that queued jobs */
	pg_atomic_uint32 jobs_claim_missed; /* a worker found the claim lock
										 * taken: wake it after the claim */
	pg_atomic_uint64 jobs_scan_requests;	/* bumped to have every worker
											 * scan igny8_jobs (jobtable.c) */
	pg_atomic_uint32 jobs_capped;	/* a claim left due jobs queued at
									 * igny8_ai.max_running_jobs: wake the
									 * workers when a run ends */
	pg_atomic_uint64 jobs_runs_ended;	/* bumped when runs end (jobtable.c) */

	slock_t		free_mutex;
	int			nfree;			/* entries used in free_stack */

	slock_t		providers_mutex;	/* guards providers[].id */
	Igny8ProviderShared providers[IGNY8_MAX_PROVIDERS];

	Igny8WorkerShared workers[IGNY8_MAX_WORKERS];

	slock_t		gpu_mutex;		/* guards gpu_clocks and the workers'
								 * gpu_running */
	Igny8GpuClock gpu_clocks[IGNY8_MAX_PROVIDERS];
} Igny8Shared;

/*
 * Is a worker with queued requests in its queue, the oldest submitted at
 * queued_since, whose loop last turned at last_turn, stalled at now?
 */
static inline bool
igny8_stalled(uint32 queued, TimestampTz queued_since, TimestampTz last_turn,
			  TimestampTz now)
{
	return queued > 0 &&
		TimestampDifferenceExceeds(Max(queued_since, last_turn), now,
								   IGNY8_STALL_MS);
}

/* GUCs (igny8_ai.c) */
extern char *igny8_database;
extern char *igny8_username;
extern int	igny8_nworkers;
extern int	igny8_max_in_flight;
extern int	igny8_default_timeout_ms;
extern int	igny8_max_response_kb;
extern bool igny8_builtin_http_client;
extern int	igny8_max_idle_connections;
extern int	igny8_answer_memory_kb;
extern int	igny8_max_prompt_kb;
extern int	igny8_max_retries;
extern char *igny8_account_id;
extern bool igny8_log_content;
extern int	igny8_probe_timeout_ms;
extern int	igny8_circuit_threshold;
extern int	igny8_circuit_cooldown_ms;
extern int	igny8_health_retention_s;
extern int	igny8_payload_memory_kb;
extern int	igny8_max_running_jobs;
extern int	igny8_max_account_jobs;
extern int	igny8_job_retention_s;

/* shared memory (shmem.c) */
extern Igny8Shared *igny8_shared;
/*
 * How many times the postmaster has made igny8_ai's shared memory in this
 * run of the server: 1 at its start, one more after each crash restart.
 * Set in the postmaster, inherited by the processes it forks; 0 where it
 * is not known.
 */
extern int	igny8_shared_generation;
extern Igny8Slot *igny8_slots;
extern int *igny8_free_stack;
extern int *igny8_queues;		/* nworkers rings of nslots entries */
/* per backend (pgprocno): the job it waits for in igny8_wait_job, or 0 */
extern pg_atomic_uint64 *igny8_job_waiters;
extern int	igny8_nprocs;

extern void igny8_shmem_init(void);
extern dsa_area *igny8_dsa(void);
extern int	igny8_slot_take(void);
extern void igny8_slot_release(int slotno);
extern bool igny8_queue_push(int worker, int slotno);
extern int	igny8_queue_pop(int worker);
extern bool igny8_queue_remove(int worker, int slotno);
extern bool igny8_queue_empty(int worker);
extern uint32 igny8_queue_length(int worker);
extern bool igny8_worker_running(int worker);
extern bool igny8_worker_stalled(int worker, TimestampTz now);
extern bool igny8_worker_is(int worker, TimestampTz started);
extern void igny8_wake_worker(int worker);
extern void igny8_wake_all_workers(void);
extern void igny8_wake_proc(int procno);
extern dsa_pointer igny8_pack_strings(dsa_area *area, int n,
									  const char *const *strs);
extern int	igny8_unpack_strings(dsa_area *area, dsa_pointer dp, int n,
								 char **strs);
extern dsa_pointer igny8_dsa_strdup(dsa_area *area, const char *s, Size len);
/* A request checked and normalized by a SQL function, not yet sent. */
typedef struct Igny8Request
{
	Igny8Task	task;
	const char *alias;
	char	   *json;			/* normalized request, database encoding */
	int			timeout_ms;
	bool		has_timeout;	/* the caller gave it (not the setting's) */
	bool		has_account;
	int64		account_id;
	int64		seed;			/* images: the seed chosen */
	bool		has_seed;		/* images: the caller gave the seed */
} Igny8Request;

/* The options of a text or chat call, checked. */
typedef struct Igny8TextOptions
{
	bool		has_max_tokens;
	int			max_tokens;
	bool		has_temperature;
	double		temperature;
	char	   *system;			/* the system prompt, or NULL */
	int			timeout_ms;
	bool		has_timeout;	/* the option was given */
	bool		has_account;	/* resolved: the option, or the setting */
	int64		account_id;
} Igny8TextOptions;

/* The options that say how a submitted job runs (submit.c). */
typedef struct Igny8JobOptions
{
	bool		interactive;	/* priority "interactive" */
	bool		has_not_before;
	TimestampTz not_before;
	int			max_attempts;
	char	   *idempotency_key;
} Igny8JobOptions;

/* dispatch.c: argument checks shared by the SQL functions */
extern char *igny8_check_prompt(text *arg);
extern void igny8_text_options(Jsonb *options, bool allow_system,
							   Igny8JobOptions *job, Igny8TextOptions *opts);
extern void igny8_unknown_option(const char *key, const char *valid, bool job);
extern char *igny8_text_request(const char *prompt,
								const Igny8TextOptions *opts);
extern char *igny8_chat_request(Jsonb *messages, const Igny8TextOptions *opts);
extern const char *igny8_check_alias(text *model);
extern bool igny8_is_blank(const char *s);
extern Datum igny8_cost_datum(const char *cost);
extern void igny8_check_request_size(Size len);
extern void igny8_check_jsonb_size(Jsonb *j, const char *what);
extern Numeric igny8_option_numeric(JsonbValue *v, const char *name);
extern char *igny8_option_string(JsonbValue *v, const char *name);
extern double igny8_interval_ms_double(const Interval *span);
extern double igny8_numeric_double(Numeric n);
extern int64 igny8_option_integer(JsonbValue *v, const char *name,
								  int64 min, int64 max, const char *what);
extern void igny8_resolve_account(bool has_arg, int64 arg, bool *has_account,
								  int64 *account_id);
extern JsonbIterator *igny8_options_begin(Jsonb *opts);
extern bool igny8_next_option(JsonbIterator **it, char **key, JsonbValue *v);
extern int	igny8_option_timeout_ms(JsonbValue *v);
extern int64 igny8_option_account_id(JsonbValue *v);

extern dsa_pointer igny8_pack_blob(dsa_area *area, const char *data, Size len,
								   int n, const char *const *strs);
extern struct varlena *igny8_unpack_blob(dsa_area *area, dsa_pointer dp,
										 int n, char **strs);

/* places.c: a provider's max_concurrent places, in order across workers */
extern bool igny8_place_take(int worker, int provider, int slotno);
extern void igny8_place_leave_queue(int slotno);
extern void igny8_place_release(int worker, int provider);
extern void igny8_place_set_max(int provider, int max_concurrent);
extern void igny8_places_forget_worker(int worker);
extern int	igny8_place_in_flight(int provider);
extern int	igny8_place_waiting(int provider);

/* gpuclock.c */
extern double igny8_gpu_clock_start(int worker, int clock, TimestampTz now);
extern double igny8_gpu_clock_end(int worker, int clock, TimestampTz now);
extern void igny8_gpu_clock_forget_worker(int worker);

/* dispatch.c */
extern int	igny8_submit(Igny8Task task, const char *alias, const char *request,
						 int timeout_ms, bool has_account, int64 account_id,
						 const pg_uuid_t *request_id);
extern void igny8_submit_all(Igny8Task task, const char *alias,
							 char **requests, int n, int timeout_ms,
							 bool has_account, int64 account_id,
							 const pg_uuid_t *request_ids, int *slots);
extern void igny8_check_free_slots(int n);
extern void igny8_check_workers_database(void);
extern void igny8_check_worker_locks(void);
/* extra wait past the deadline before the caller stops trusting the worker */
#define IGNY8_WORKER_GRACE_MS	5000
extern void igny8_wait(const int *slots, int n);
extern void igny8_wait_or_give_up(const int *slots, int n, bool *late);
extern void igny8_release_slot(int slotno);
extern int	igny8_slots_held(void);
extern void igny8_abandon_since(int mark);
extern void igny8_report_slot_error(int slotno);

/* A failed slot's error, read without raising it (igny8_slot_error). */
typedef struct Igny8SlotError
{
	int			sqlerrcode;
	char	   *message;
	char	   *detail;			/* NULL if none */
	char	   *hint;			/* NULL if none */
} Igny8SlotError;

extern void igny8_slot_error(int slotno, Igny8SlotError *err);
extern void igny8_new_request_id(pg_uuid_t *id);

/* router.c: a refusal of the request before any attempt */
typedef struct Igny8RouteError
{
	int			sqlerrcode;
	char	   *message;
	char	   *detail;
	char	   *hint;
} Igny8RouteError;

extern void igny8_alias_error(const char *alias, Igny8Task task,
							  bool other_task, Igny8RouteError *err);

/* dispatch_image.c */
extern void igny8_image_job_request(FunctionCallInfo fcinfo,
									Igny8JobOptions *job, Igny8Request *req);

/* submit.c */
extern bool igny8_job_option(Igny8JobOptions *job, const char *key,
							 JsonbValue *v);
extern void igny8_jobs_announce(void);
extern void igny8_jobs_request_scan(void);
extern void igny8_wake_job_waiters(const int64 *ids, int n);
extern void igny8_wake_all_job_waiters(void);

/* budget.c: the spend of the budgets, in shared memory */
extern void igny8_budget_shmem_request(void);
extern void igny8_budget_shmem_startup(void);

/* account.c */
extern bool igny8_role_account(Oid role, int64 *account);
extern Oid	igny8_extension_namespace(Oid ext);
extern void igny8_account_init(void);
extern void igny8_account_shmem_request(void);
extern void igny8_account_shmem_startup(void);
extern void igny8_bindings_changed(void);

/* extension.c */
extern void igny8_extension_hooks_init(void);
extern void igny8_config_changed_at_commit(void);
extern void igny8_jobs_queued_at_commit(void);
extern void igny8_job_cancel_at_commit(int64 id, bool queued);
extern bool igny8_job_cancel_pending(int64 id);

/* health.c */
extern int	igny8_provider_index(const char *id, bool create);
extern void igny8_provider_unref(int index);
extern void igny8_provider_forget_unused(void);
extern const char *igny8_health_state_name(Igny8HealthState state);
extern void igny8_health_report(int index, bool ok, bool probe,
								bool probe_degraded, bool transport_failure,
								double latency_ms, const char *error,
								Igny8HealthChange *change);
extern void igny8_health_peek(int index, Igny8HealthChange *change);
extern void igny8_health_note_error(int index, const char *error);
extern void igny8_provider_forget_health(int index);
extern bool igny8_circuit_allows(int index);

/* igny8_circuit_take_trial: may an attempt be sent to the provider now? */
typedef enum Igny8CircuitVerdict
{
	IGNY8_CIRCUIT_CLOSED,		/* yes: its circuit is closed */
	IGNY8_CIRCUIT_TRIAL,		/* yes, as the open circuit's one trial */
	IGNY8_CIRCUIT_REFUSED		/* no: open, and no trial may pass now */
} Igny8CircuitVerdict;

extern Igny8CircuitVerdict igny8_circuit_take_trial(int index,
													TimestampTz until,
													TimestampTz *trial);
extern void igny8_circuit_end_trial(int index, TimestampTz trial);
extern void igny8_circuit_extend_trial(int index, TimestampTz trial,
									   TimestampTz until);
extern void igny8_provider_count_attempt(const char *id, bool success);
extern char *igny8_health_payload(const char *provider,
								  const Igny8HealthChange *change,
								  const char *code);
extern void igny8_health_alert(const char *provider,
							   const Igny8HealthChange *change,
							   const char *detail);

/* worker.c */
extern PGDLLEXPORT void igny8_worker_main(Datum main_arg);

#endif							/* IGNY8_AI_H */
