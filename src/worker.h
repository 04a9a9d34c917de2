/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The background worker's modules: the main loop (worker.c), the jobs it
 *	  holds (job.c) and the health probes among them (probe.c), its cached
 *	  configuration (config.c), API key references (secrets.c), routing
 *	  (router.c), the HTTP transfers (http.c, http1.c), provider text into the
 *	  database encoding (encoding.c) and the usage log (usage.c).  These
 *	  run only in an igny8_ai worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IGNY8_WORKER_H
#define IGNY8_WORKER_H

#include "postgres.h"

#include <curl/curl.h>

#include "executor/spi.h"
#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "igny8_ai.h"
#include "provider.h"
#include "redact.h"

/* ----- config.c ----- */

typedef struct Igny8Provider
{
	char	   *id;
	Igny8ProviderKind kind;
	char	   *base_url;		/* without trailing '/' */
	char	   *key_ref;		/* as configured; safe to show */
	char	   *key;			/* resolved key, or NULL */
	char	   *key_error;		/* why key_ref could not be resolved */
	int			priority;
	bool		enabled;
	int			connect_timeout_ms;
	int			max_concurrent;
	char	   *proxy;			/* settings.proxy, or NULL: no proxy */
	char	   *ca_file;		/* settings.ca_file: CA bundle to trust */
	bool		check_models;	/* settings.check_models: the probe compares
								 * the configured models (default true) */
	int			shared_index;	/* in igny8_shared->providers, or -1 */
	cJSON	   *settings;		/* the provider's own settings, or NULL */
	int			gpu_clock;		/* the clock of the box whose rent pays for
								 * it (igny8_shared->gpu_clocks), or -1 */
	char	   *account_key_ref;	/* an account's copy with the account's
									 * own key: its reference; else NULL */
} Igny8Provider;

/* A ComfyUI workflow (igny8_workflows), parsed. */
typedef struct Igny8Workflow
{
	char	   *name;
	cJSON	   *graph;			/* API format: node id -> node */
	cJSON	   *bindings;		/* parameter -> [node id, input name] */
	cJSON	   *defaults;		/* parameter -> value */
} Igny8Workflow;

typedef struct Igny8Deployment
{
	char	   *alias;
	Igny8Provider *provider;
	char	   *model;			/* provider-side model */
	Igny8Task	task;			/* IGNY8_TASK_TEXT or IGNY8_TASK_IMAGE */
	int			timeout_ms;
	int			queue_timeout_ms;	/* longest wait for a provider place */
	int			max_tokens;		/* cap; 0 = none */
	int			weight;
	bool		enabled;
	cJSON	   *settings;		/* provider settings overlaid with ours */
	Igny8Workflow *workflow;	/* ComfyUI image deployments, else NULL */
	size_t		max_image_bytes;	/* settings.max_image_bytes */
} Igny8Deployment;

typedef struct Igny8Fallback
{
	char	   *alias;
	char	   *fallback;
} Igny8Fallback;

/* The units of igny8_prices. */
typedef enum Igny8PriceUnit
{
	IGNY8_PRICE_INPUT,			/* per 1M input tokens */
	IGNY8_PRICE_OUTPUT,			/* per 1M output tokens */
	IGNY8_PRICE_CACHED_INPUT,	/* per 1M cached input tokens */
	IGNY8_PRICE_CACHE_WRITE,	/* per 1M cache-write tokens */
	IGNY8_PRICE_IMAGE			/* per image of a size and quality */
} Igny8PriceUnit;

/* One row of igny8_prices. */
typedef struct Igny8Price
{
	char	   *provider;
	char	   *model;
	Igny8PriceUnit unit;
	char	   *size;			/* per image: "WxH", else "" */
	char	   *quality;		/* per image: "" for any */
	Datum		price;			/* numeric, USD per unit */
	TimestampTz valid_from;
	bool		has_valid_to;
	TimestampTz valid_to;
	int64		nano;			/* price * 1000, rounded up, for the budgets'
								 * estimates (price.c); -1 until computed */
} Igny8Price;

/* One row of igny8_fixed_costs. */
typedef struct Igny8FixedCost
{
	char	   *box;
	char	  **providers;
	int			nproviders;
	Datum		monthly_amount; /* numeric, USD per calendar month */
	TimestampTz valid_from;
	bool		has_valid_to;
	TimestampTz valid_to;
} Igny8FixedCost;

/* One row of igny8_reference_models. */
typedef struct Igny8ReferenceModel
{
	char	   *alias;
	char	   *provider;
	char	   *model;
} Igny8ReferenceModel;
/*
 * An account's rows of igny8_account_providers, applied: copies of the
 * providers with the account's key, priority and enabled flag, and of the
 * deployments pointing at those copies.  view is the configuration as
 * that account's calls are routed with (the rest shared with the
 * configuration it belongs to).
 */
typedef struct Igny8Account
{
	int64		account_id;
	struct Igny8Config *view;
	char	   *disabled;		/* the providers it turned off, for errors */
} Igny8Account;

/* A row of igny8_cache_settings. */
typedef struct Igny8CacheSetting
{
	char	   *alias;
	bool		enabled;
	Datum		ttl;			/* interval */
	int			max_entries;
	bool		nonzero_temperature;
} Igny8CacheSetting;
/* One row of igny8_budgets, in micro-USD. */
typedef enum Igny8BudgetPeriod
{
	IGNY8_BUDGET_DAY,
	IGNY8_BUDGET_MONTH
} Igny8BudgetPeriod;

typedef struct Igny8Budget
{
	int64		account_id;
	Igny8BudgetPeriod period;
	int64		limit;
	int64		warn;
	bool		self_hosted_only;	/* else refuse */
} Igny8Budget;

typedef struct Igny8Config
{
	MemoryContext cxt;
	int			refcount;		/* jobs still using it */
	char	   *schema;			/* the extension's schema, quoted */
	int			nproviders;
	Igny8Provider *providers;
	int			ndeployments;
	Igny8Deployment *deployments;
	int			nfallbacks;		/* ordered by alias, position */
	Igny8Fallback *fallbacks;
	int			nworkflows;
	Igny8Workflow *workflows;
	int			nprices;
	Igny8Price *prices;
	int			nfixed_costs;
	Igny8FixedCost *fixed_costs;
	TimestampTz rents_change;	/* when the next rent starts or ends, after
								 * the load (which clock a provider runs on
								 * changes then); 0: never */
	int			nreferences;
	Igny8ReferenceModel *references;
	int			naccounts;		/* ordered by account_id */
	Igny8Account *accounts;
	int			ncache;
	Igny8CacheSetting *cache;
	int			nbudgets;
	Igny8Budget *budgets;
} Igny8Config;

extern Igny8Config *igny8_config_load(void);
extern int	igny8_interval_ms(Datum interval);
extern Igny8Provider *igny8_config_provider(Igny8Config *config,
											const char *id);
extern void igny8_config_release(Igny8Config *config);
extern char *igny8_extension_schema(void);
extern Igny8Config *igny8_config_for_account(Igny8Config *config,
											 bool has_account, int64 account_id,
											 Igny8Account **account);
extern Igny8CacheSetting *igny8_config_cache(Igny8Config *config,
											 const char *alias);

/* ----- budget.c ----- */

/* Why a paid attempt does not fit a budget. */
typedef struct Igny8BudgetRefusal
{
	Igny8BudgetPeriod period;
	TimestampTz period_start;
	int64		spent;			/* micro-USD, as are the others */
	int64		reserved;
	int64		limit;
	int64		estimate;
	bool		self_hosted_only;	/* skip paid candidates, else refuse */
	bool		loading;		/* its spend is being summed: wait */
} Igny8BudgetRefusal;

extern void igny8_budgets_load(Igny8Config *config, const char *qschema);
extern bool igny8_budget_admit(int64 account_id, int64 estimate,
							   TimestampTz now, Igny8BudgetRefusal *refusal,
							   uint64 *made);
extern void igny8_budget_settle(int64 account_id, int64 reserved,
								uint64 made, const char *cost);
extern void igny8_budget_forget_worker(int worker);
extern TimestampTz igny8_budgets_unsummed_since(void);
extern void igny8_budgets_sum(const char *qschema);
extern void igny8_budgets_release(int worker);
extern bool igny8_budget_notices_pending(void);
extern void igny8_budget_queue_notices(void);
extern char *igny8_budget_refusal_detail(int64 account_id,
										 const Igny8BudgetRefusal *r);
extern const char *igny8_budget_period_name(Igny8BudgetPeriod period);
extern char *igny8_micro_text(int64 micro);
extern int64 igny8_numeric_micro(Numeric usd);

/* ----- secrets.c ----- */

extern char *igny8_resolve_key(const char *ref, char **error);
extern const char *igny8_key_ref_display(const char *ref);

/* ----- router.c ----- */

extern void igny8_route_deployments(Igny8Config *config, const char *alias,
									Igny8Task task,
									Igny8Deployment ***deployments,
									int *ndeployments);
extern bool igny8_route(Igny8Config *config, const char *alias,
						Igny8Task task, Igny8Deployment ***candidates,
						int *ncandidates, Igny8RouteError *err);
extern long igny8_backoff_ms(int retry, double retry_after);

/* ----- http.c ----- */

typedef struct Igny8Transfer
{
	CURL	   *easy;
	struct curl_slist *headers;
	char	   *body;			/* malloc'd response body, NUL-terminated */
	size_t		len;
	size_t		cap;
	size_t		max;			/* igny8_ai.max_response_size */
	bool		too_large;
	bool		over_budget;	/* igny8_ai.answer_memory was full */
	bool		over_budget_alone;	/* ... and the answer alone is larger */
	long		status;
	double		retry_after;
	int			should_retry;
	CURLcode	result;
	long		os_errno;		/* errno of a failed connect, or 0 */
	int			socket_errno;	/* libcurl's: errno of a failed socket() */
	char		errbuf[CURL_ERROR_SIZE];
	char	   *proxy_secret;	/* malloc'd: the proxy URL's user:password */
	bool		tunnel;			/* an https URL through a proxy: CONNECT */
	void	   *owner;
	bool		finished;
	bool		in_multi;		/* added to the multi handle */
	struct PlainTransfer *plain;	/* the built-in client's, or NULL */
} Igny8Transfer;

extern void igny8_http_init(void);
extern int	igny8_http_fd(void);
extern long igny8_http_timeout_ms(void);
extern Igny8Transfer *igny8_http_start(const char *base_url,
									   const Igny8HttpRequest *req,
									   int timeout_ms, int connect_timeout_ms,
									   const char *proxy, const char *ca_file,
									   size_t max_bytes, void *owner);
extern void igny8_http_free(Igny8Transfer *t);
extern void igny8_http_drive(bool fd_ready);
extern Igny8Transfer *igny8_http_next_finished(void);
extern const char *igny8_http_error_text(Igny8Transfer *t);
extern bool igny8_http_too_large(Igny8Transfer *t);
extern bool igny8_http_over_budget(Igny8Transfer *t);
extern char *igny8_http_take_body(Igny8Transfer *t, size_t *held);
extern void igny8_http_drop_body(char *body, size_t held);
extern bool igny8_http_local_failure(Igny8Transfer *t);
extern bool igny8_http_never_sent(Igny8Transfer *t);
extern void igny8_http_answer(Igny8Transfer *t, const char *key,
							  Igny8HttpResponse *resp);
extern void igny8_http_release_body(Igny8Transfer *t,
									 Igny8HttpResponse *resp);
extern const char *igny8_http_failure_kind(Igny8Transfer *t);
extern Igny8ErrorClass igny8_http_classify_transport(Igny8Transfer *t);

/* ----- encoding.c ----- */

extern void igny8_encoding_init(void);
extern char *igny8_from_db(const char *text);
extern char *igny8_to_db_exact(char *utf8);
extern char *igny8_to_db_lossy(const char *utf8);

/* ----- job.c, probe.c ----- */

typedef enum Igny8JobState
{
	JOB_READY,					/* start the next attempt now */
	JOB_WAIT_PLACE,				/* in its provider's wait queue */
	JOB_HTTP,					/* transfer in flight */
	JOB_BACKOFF,				/* retry at wake_at */
	JOB_POLL_WAIT,				/* a step of a remote job is due at wake_at
								 * (ComfyUI: poll its history) */
	JOB_INTENT,					/* a submitted job's attempt, its place
								 * held, waits until its row records it
								 * (jobtable.c) */
	JOB_CACHE_WAIT,				/* its answer is looked up in the response
								 * cache at wake_at (cache.c) */
	JOB_FINISHED				/* outcome known; publish after logging */
} Igny8JobState;

/* One attempt on one deployment, for the usage log and the error detail. */
typedef struct Igny8Attempt
{
	int			number;
	const char *provider;
	const char *model;
	TimestampTz at;
	long		http_status;	/* 0: no HTTP answer */
	bool		success;
	char	   *error;			/* in the database encoding */
	int64		input_tokens;	/* all of the prompt's tokens, of which */
	int64		cached_input_tokens;	/* ... read from the prompt cache */
	int64		cache_write_tokens; /* ... written to the prompt cache */
	int64		output_tokens;
	char	   *cost;			/* numeric text, set when its usage row is
								 * written (usage.c); NULL before */
	char	   *reference_cost; /* numeric text, set with cost; NULL: none */
	double		gpu_seconds;	/* its share of its box's time (gpuclock.c),
								 * or -1: no box pays for its provider */
	double		duration_ms;
	int			images;			/* images made (image attempts) */
	int			image_width;
	int			image_height;
	int			steps;			/* sampler steps (ComfyUI), or 0 */
	bool		sent;			/* reached the network: gets a usage row */
	bool		unsent;			/* ... but its transfer sent no byte (refused,
								 * DNS, TLS, connect timeout) */
	bool		logged;
	const char *api_key_ref;	/* the account's own key's reference, or
								 * NULL: the provider's key */
	bool		cached;			/* answered from igny8_response_cache */
	int64		budget_reserved;	/* micro-USD reserved on its account's
									 * budgets until its row commits */
	uint64		budget_made;	/* ... on those made up to this one */
} Igny8Attempt;

/* A request the worker holds, from its slot to its answer. */
typedef struct Igny8Job
{
	dlist_node	node;			/* in igny8_jobs */
	dlist_node	ended_node;		/* in igny8_jobs_ended, while ended_listed */
	bool		ended_listed;
	dlist_node	advance_node;	/* in igny8_jobs_to_advance, while
								 * advance_listed */
	bool		advance_listed;
	uint64		seq;			/* the order it was made in, in this worker */
	int			slotno;
	MemoryContext cxt;			/* everything of the job; deleted with it */
	Igny8Config *config;		/* the configuration it was routed with */

	/* the request */
	Igny8Task	task;
	pg_uuid_t	request_id;
	char	   *alias;
	bool		has_account;
	int64		account_id;
	int			timeout_ms;
	TimestampTz deadline;
	TimestampTz started;
	char	   *request_json;	/* UTF-8, as the caller converted it */
	Igny8Message *messages;
	int			nmessages;
	bool		has_max_tokens;
	int			max_tokens;
	bool		has_temperature;
	double		temperature;

	/* routing */
	Igny8Deployment **cands;
	int			ncands;
	int			cand;			/* current candidate */
	int			retries;		/* retries spent on the current candidate */
	bool		omit_think;

	/* progress */
	Igny8JobState state;
	TimestampTz wake_at;		/* BACKOFF: retry then; WAIT_PLACE: give up */
	TimestampTz wait_since;		/* WAIT_PLACE: joined the queue */
	TimestampTz attempt_start;
	int			gpu_clock;		/* the box clock the attempt runs on, or -1 */
	double		gpu_since;		/* ... and its reading at the start */
	double		gpu_seconds;	/* the share of the attempt that ended, for
								 * its Igny8Attempt, or -1 */
	Igny8Transfer *transfer;
	int			holding;		/* provider whose place it holds, or -1 */
	int			trial_index;	/* provider whose circuit trial the attempt
								 * holds, or -1 */
	TimestampTz trial_at;		/* ... and when it took it */
	List	   *attempts;		/* of Igny8Attempt */
	bool		abandoned;

	/* a run of a submitted job (jobtable.c), else job_id is 0 */
	int64		job_id;
	bool		job_cancelled;	/* stopped by igny8_cancel_job */
	bool		job_lost;		/* its row is left to recovery */
	bool		job_written;	/* its outcome is in its row, committed */
	int			inflight;		/* the attempt its row records as sent, or 0 */
	int			inflight_next;	/* ... once the transaction writing it
								 * commits */
	TimestampTz intent_at;		/* JOB_INTENT: since when */

	/* budgets (budget.c) */
	int64		budget_reserved;	/* reserved for the attempt in progress */
	uint64		budget_made;	/* on the budgets made up to this one */
	bool		budget_skipped; /* a paid candidate was skipped ... */
	Igny8BudgetRefusal budget_refusal;	/* ... because of this */

	/* outcome */
	bool		success;
	int			sqlerrcode;
	char	   *errmsg;
	char	   *errdetail;
	char	   *errhint;
	Igny8TextResult result;		/* content and thinking in the database
								 * encoding, the rest UTF-8 */
	Igny8Deployment *used;

	/* images (task IGNY8_TASK_IMAGE): the request ... */
	char	   *img_prompt;
	char	   *img_negative;
	char	   *img_quality;
	char	   *img_style;
	int			img_width;
	int			img_height;
	int			img_steps;		/* 0: the workflow's default */
	bool		img_has_cfg;
	double		img_cfg;
	uint64		img_seed;
	/* ... the current attempt's steps ... */
	int			step;			/* IGNY8_STEP_*, see image.c */
	TimestampTz attempt_deadline;	/* the deployment's timeout */
	char	   *prompt_id;		/* ComfyUI: the prompt submitted, or NULL */
	int64		prompt_number;	/* ... and its queue number, or -1 */
	Igny8ComfyImage *images;
	int			nimages;
	int			polls;
	/* ... and the image made */
	char	   *image;			/* malloc'd (a transfer's body) or palloc'd */
	bool		image_malloced;
	size_t		image_held;		/* malloc'd: bytes counted as held */
	size_t		image_len;
	int			image_width;
	int			image_height;
	char	   *revised_prompt;

	/* health probes (task IGNY8_TASK_HEALTH) */
	Igny8Provider *probe;		/* the provider probed */
	Igny8ProbeResult probe_result;
	long		probe_status;	/* HTTP status, 0 if none */
	const char *probe_code;		/* short reason, for NOTIFY */
	Igny8HealthChange probe_change;
	Igny8ComfyFile *probe_files;	/* ComfyUI: the model files checked */
	int			nprobe_files;
	char	  **probe_classes;	/* ComfyUI: the node classes checked */
	Igny8ComfyClass *probe_class_found; /* ... what /object_info said */
	int			nprobe_classes;
	int			probe_class;	/* the class being asked about, or -1 */
	bool		probe_nodes_missing;	/* ComfyUI: a class is not there */
	TimestampTz probe_deadline; /* the probe's start plus
								 * igny8_ai.health_probe_timeout: all of its
								 * requests end by then */

	/* the response cache (cache.c) */
	Igny8CacheSetting *cache;	/* its alias's setting, or NULL: uncached */
	uint8		cache_key[32];	/* sha256 of the request */
	bool		cache_owner;	/* it holds the key's pending row */
	bool		cache_looking;	/* looked up in the lookup transaction
								 * in progress (cache.c) */
	bool		cache_hit;		/* answered from the cache */
} Igny8Job;

/*
 * this worker's index and when it started (with the index, what tells this
 * incarnation from the next), its jobs, and NOTIFY payloads not yet sent
 */
extern int	igny8_worker_index;
extern TimestampTz igny8_worker_started_at;
extern dlist_head igny8_jobs;
extern List *igny8_pending_notifies;

/*
 * The jobs with an attempt not yet marked logged, or finished: what the
 * usage write, publishing and the response cache's writes look at, so
 * that they do not walk every job in flight.  A job is listed when an
 * attempt is added or it finishes, and leaves the list when it is
 * forgotten, or when its attempts are marked logged and it is not finished.
 */
extern dlist_head igny8_jobs_ended;

/*
 * The jobs in a state that igny8_job_advance moves on (neither in flight
 * nor finished), which the loop advances without walking the jobs in
 * flight; and a count of the times a job was listed there, which tells the
 * loop that a job became one to advance while it advanced the others.
 */
extern dlist_head igny8_jobs_to_advance;
extern uint64 igny8_jobs_to_advance_listed;
extern Igny8Job **igny8_jobs_in_order(dlist_head *list, size_t offset, int *n);

/*
 * What the loop would otherwise walk igny8_jobs at every turn to find out
 * (job.c): the jobs in each state, the submitted jobs among them, and the
 * attempts not yet marked logged (usage.c).  A job's state is changed only
 * through igny8_job_set_state, so that these stay true.
 */
typedef struct Igny8JobCounts
{
	int			in_state[JOB_FINISHED + 1];
	int			submitted;		/* jobs with a job_id */
	int			unlogged;		/* attempts added, not yet marked logged */
} Igny8JobCounts;

extern Igny8JobCounts igny8_job_counts;

static inline void
igny8_job_list_ended(Igny8Job *job)
{
	if (!job->ended_listed)
	{
		dlist_push_tail(&igny8_jobs_ended, &job->ended_node);
		job->ended_listed = true;
	}
}

static inline void
igny8_job_unlist_ended(Igny8Job *job)
{
	if (job->ended_listed)
	{
		dlist_delete(&job->ended_node);
		job->ended_listed = false;
	}
}

static inline void
igny8_job_unlist_advance(Igny8Job *job)
{
	if (job->advance_listed)
	{
		dlist_delete(&job->advance_node);
		job->advance_listed = false;
	}
}

static inline void
igny8_job_set_state(Igny8Job *job, Igny8JobState state)
{
	igny8_job_counts.in_state[job->state]--;
	igny8_job_counts.in_state[state]++;
	job->state = state;
	if (state == JOB_FINISHED)
		igny8_job_list_ended(job);
	if (state == JOB_HTTP || state == JOB_FINISHED)
		igny8_job_unlist_advance(job);
	else if (!job->advance_listed)
	{
		dlist_push_tail(&igny8_jobs_to_advance, &job->advance_node);
		job->advance_listed = true;
		igny8_jobs_to_advance_listed++;
	}
}

/* An attempt's usage row is written, or given up on: never twice. */
static inline void
igny8_attempt_mark_logged(Igny8Attempt *a)
{
	if (!a->logged)
		igny8_job_counts.unlogged--;
	a->logged = true;
}

/*
 * Built with IGNY8_CHECK_COUNTS (the test build, test/run), each turn of
 * the loop counts again, and looks for every job igny8_jobs_ended and
 * igny8_jobs_to_advance must hold, and stops the server if a count is
 * wrong or a job is missing.
 */
#ifdef IGNY8_CHECK_COUNTS
extern void igny8_job_counts_check(void);
#else
#define igny8_job_counts_check() ((void) 0)
#endif

/* the configuration this worker loaded last (NULL before the first) */
extern Igny8Config *igny8_worker_config(void);
/* the configuration to route jobs just claimed with (worker.c) */
extern Igny8Config *igny8_worker_claim_config(void);

extern Igny8Job *igny8_job_create(int slotno);
extern void igny8_job_route(Igny8Job *job, Igny8Config *config,
							const char *load_error);
extern bool igny8_job_advance(Igny8Job *job, TimestampTz now);
extern TimestampTz igny8_job_next_timeout(Igny8Job *job);
extern void igny8_job_transfer_done(Igny8Job *job, Igny8Transfer *t);
extern void igny8_job_abort(Igny8Job *job, const char *why);
extern bool igny8_job_sent(Igny8Job *job);
extern void igny8_job_finish_error(Igny8Job *job, int sqlerrcode, char *msg,
								   char *detail, char *hint);
extern void igny8_job_publish(Igny8Job *job);
extern void igny8_job_requeue(Igny8Job *job);
extern Igny8Attempt *igny8_job_add_attempt(Igny8Job *job, Igny8Deployment *d);
extern void igny8_job_queue_notify(const char *provider,
								   const Igny8HealthChange *change,
								   const char *code);

/*
 * What each kind of task does in an attempt (job.c's table): start the
 * attempt's first step (the candidate is checked, its place held), take
 * a finished transfer of it, and let go of what the provider still holds
 * when the job is stopped (nothing for a request that ends with its
 * transfer).
 */
typedef struct Igny8TaskOps
{
	const char *name;
	bool		routed;			/* attempts go to candidates, with places */
	bool		(*serves) (Igny8ProviderKind kind);
	void		(*start) (Igny8Job *job, TimestampTz now);
	void		(*done) (Igny8Job *job, Igny8Transfer *t);
	void		(*abort) (Igny8Job *job);
} Igny8TaskOps;

extern const Igny8TaskOps igny8_text_ops;
extern const Igny8TaskOps igny8_image_ops;
extern const Igny8TaskOps igny8_probe_ops;

/* job.c, for the task kinds */
extern void igny8_job_release_place(Igny8Job *job);
extern void igny8_job_conclude(Igny8Job *job, Igny8Attempt *a,
							   Igny8Provider *p, Igny8ErrorClass cls,
							   double retry_after, TimestampTz now);
extern void igny8_job_end_trial(Igny8Job *job);
extern void igny8_job_report_health(Igny8Job *job, Igny8Provider *p,
									Igny8Transfer *t, Igny8Attempt *a);
extern Igny8Attempt *igny8_job_end_attempt(Igny8Job *job, Igny8Transfer *t,
										   TimestampTz now);
extern bool igny8_job_deadline_reached(Igny8Job *job, TimestampTz now);
extern void igny8_job_next_candidate(Igny8Job *job, TimestampTz now);
extern void igny8_job_mark_sent(Igny8Job *job);

/* image.c */
extern bool igny8_image_parse_request(Igny8Job *job, const char *json);
extern void igny8_image_cleanup_done(Igny8Transfer *t);
extern void igny8_image_sweep(const Igny8Config *config);
extern TimestampTz igny8_image_cleanups_due(void);
extern bool igny8_image_cleanups_run(TimestampTz now);
extern void igny8_image_finish_cleanups(int max_ms);
extern void igny8_image_forget(Igny8Job *job);

/* jobtable.c: submitted jobs, taken from igny8_jobs and written back */
extern bool igny8_jobs_due(TimestampTz now);
extern TimestampTz igny8_jobs_next_due(void);
extern void igny8_jobs_take(Igny8Config *config);
extern void igny8_jobs_cancel_seen(void);
extern bool igny8_jobs_to_write(void);
extern void igny8_jobs_write(Igny8Config *config);
extern void igny8_jobs_flushed(bool committed);
extern void igny8_jobs_published(Igny8Job *job);
extern void igny8_jobs_wake_waiters(void);
extern void igny8_jobs_stop(Igny8Config *config);
extern void igny8_jobs_stopping(void);
extern void igny8_jobs_reset(void);
extern void igny8_job_note_progress(Igny8Job *job);

/* worker.c: the worker's transactions */
extern void igny8_worker_begin(const char *what);
extern void igny8_worker_commit(void);
extern bool igny8_worker_transaction(const char *what,
									 void (*body) (void *arg), void *arg);
extern void igny8_worker_recover(void);

/*
 * Statements a worker prepares once and keeps for its life, for the schema
 * of the extension they were made with (worker.c).
 */
typedef struct Igny8PlanSet
{
	SPIPlanPtr *plans;			/* nplans of them, NULL until prepared */
	int			nplans;
	char	   *schema;			/* what they were prepared for, or NULL */
} Igny8PlanSet;

extern SPIPlanPtr *igny8_plan_slot(Igny8PlanSet *set, int which,
								   const char *schema);
extern SPIPlanPtr igny8_plan_keep(const char *sql, int nargs, Oid *types,
								  const char *what);
extern SPIPlanPtr igny8_plan_get(Igny8PlanSet *set, int which,
								 const char *schema, const char *fmt,
								 int nargs, Oid *types, const char *what);
extern void igny8_plans_forget(Igny8PlanSet *set);

/* ----- cache.c ----- */

extern void igny8_cache_route(Igny8Job *job, Igny8Config *config);
extern void igny8_cache_lookup(void);
extern bool igny8_cache_to_write(Igny8Job *job);
extern void igny8_cache_write(Igny8Job *job);
extern void igny8_cache_written(bool committed);
extern void igny8_cache_reset(void);

/* ----- usage.c ----- */

/* What igny8_usage_flush() has to write, and who flushes its commit. */
typedef enum Igny8UsageWrite
{
	IGNY8_USAGE_NOTHING = 0,
	IGNY8_USAGE_CALLERS_FLUSH,	/* only synchronous calls' rows */
	IGNY8_USAGE_WORKER_FLUSHES, /* jobs' outcomes, or a synchronous standby */
	IGNY8_USAGE_UNFLUSHED		/* synchronous_commit = off */
} Igny8UsageWrite;

typedef struct Igny8UsageRow
{
	pg_uuid_t	request_id;
	TimestampTz at;
	bool		has_account;
	int64		account_id;
	const char *provider;
	const char *task;
	const char *alias;
	const char *model;
	int64		input_tokens;
	int64		output_tokens;
	const char *cost;			/* numeric text */
	const char *reference_cost; /* numeric text, or NULL */
	double		duration_ms;
	long		http_status;	/* 0: none */
	bool		success;
	const char *error;			/* NULL on success */
	int			attempt;
	bool		is_image;		/* images is 0, not NULL, on a failed one */
	int			images;			/* image rows: images made, size, steps; */
	int			image_width;	/* 0 = NULL */
	int			image_height;
	int			steps;
	const char *prompt;			/* NULL unless igny8_ai.log_content */
	const char *response;
	bool		cached;			/* answered from the response cache */
	const char *api_key_ref;	/* an account's own key, or NULL */
} Igny8UsageRow;

extern void igny8_usage_reset(void);
extern void igny8_usage_flush(Igny8Config *config, Igny8UsageWrite what);
extern Igny8UsageWrite igny8_usage_to_write(void);
extern XLogRecPtr igny8_usage_unflushed_lsn(void);

/* ----- price.c ----- */

extern char *igny8_attempt_cost(Igny8Config *config, Igny8Job *job,
								Igny8Attempt *a, const char *reported_model);
extern char *igny8_attempt_reference_cost(Igny8Config *config, Igny8Job *job,
										  Igny8Attempt *a);
extern char *igny8_job_cost(Igny8Job *job);
extern int64 igny8_attempt_estimate(Igny8Config *config, Igny8Job *job,
									 Igny8Deployment *d, int max_tokens,
									 TimestampTz at);
extern bool igny8_utc_month(TimestampTz at, TimestampTz *start,
							TimestampTz *next);

#endif							/* IGNY8_WORKER_H */
