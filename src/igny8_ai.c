/*-------------------------------------------------------------------------
 *
 * igny8_ai.c
 *	  Module entry point: the GUCs, and the registration of the shared
 *	  memory (shmem.c), the background workers (worker.c) and the hooks
 *	  (extension.c).
 *
 * The module must be in shared_preload_libraries: the request slots and the
 * workers exist only if the postmaster set them up.  During a binary
 * upgrade (pg_upgrade) nothing is started, as pg_cron does.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "utils/guc.h"

#include "igny8_ai.h"
#include "provider.h"

PG_MODULE_MAGIC;

/* GUC variables */
char	   *igny8_database = NULL;
char	   *igny8_username = NULL;
int			igny8_nworkers = 2;
int			igny8_max_in_flight = 1024;
int			igny8_default_timeout_ms = 600 * 1000;
int			igny8_max_response_kb = 64 * 1024;
int			igny8_answer_memory_kb = 256 * 1024;
int			igny8_max_prompt_kb = 1024;
int			igny8_max_retries = 2;
char	   *igny8_account_id = NULL;
bool		igny8_log_content = false;
int			igny8_probe_timeout_ms = 5000;
int			igny8_circuit_threshold = 3;
int			igny8_circuit_cooldown_ms = 30000;
int			igny8_health_retention_s = 7 * 24 * 3600;
int			igny8_payload_memory_kb = 1024 * 1024;
int			igny8_max_running_jobs = 256;
int			igny8_max_account_jobs = 192;
int			igny8_job_retention_s = 7 * 24 * 3600;
bool		igny8_builtin_http_client = true;
int			igny8_max_idle_connections = 256;

void		_PG_init(void);
static bool check_account_id(char **newval, void **extra, GucSource source);

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("igny8_ai must be loaded via shared_preload_libraries"),
				 errdetail("The request slots and background workers of igny8_ai are created when the server starts."),
				 errhint("Add igny8_ai to shared_preload_libraries in postgresql.conf (after pg_cron) and restart the server.")));

	/* pg_upgrade's servers run no workers and serve no calls */
	if (IsBinaryUpgrade)
		return;

	DefineCustomStringVariable("igny8_ai.database",
							   gettext_noop("Database the igny8_ai background workers connect to."),
							   gettext_noop("The extension must be created in this database."),
							   &igny8_database,
							   "postgres",
							   PGC_POSTMASTER,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("igny8_ai.username",
							   gettext_noop("Role the igny8_ai background workers connect as."),
							   gettext_noop("Empty: the bootstrap superuser.  The role needs LOGIN and the grants of igny8_grant_worker()."),
							   &igny8_username,
							   "",
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

	DefineCustomIntVariable("igny8_ai.answer_memory",
							gettext_noop("Memory each worker may hold for answers in flight (images above all)."),
							gettext_noop("An answer that would pass it fails its attempt, which is retried once."),
							&igny8_answer_memory_kb,
							256 * 1024, 1024, INT_MAX / 1024,
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

	DefineCustomBoolVariable("igny8_ai.builtin_http_client",
							 gettext_noop("Send plain-HTTP calls to numeric addresses and localhost with the workers' own HTTP/1.1 client."),
							 gettext_noop("Off: libcurl sends every call.  https, proxies and host names always go through libcurl."),
							 &igny8_builtin_http_client,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.max_idle_connections",
							gettext_noop("Kept-alive connections each worker keeps open and idle for reuse."),
							gettext_noop("When more are idle, the one idle longest is closed.  0: every connection is closed after its answer."),
							&igny8_max_idle_connections,
							256, 0, IGNY8_MAX_IDLE_CONNECTIONS_LIMIT,
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

	DefineCustomIntVariable("igny8_ai.max_running_jobs",
							gettext_noop("Submitted jobs the workers run at once, server-wide."),
							gettext_noop("At most half of igny8_ai.max_in_flight: synchronous calls keep the rest."),
							&igny8_max_running_jobs,
							256, 1, 65536,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.max_running_jobs_per_account",
							gettext_noop("Submitted jobs of one account the workers run at once."),
							gettext_noop("Keeps one account from taking every running place; jobs without an account count as one account."),
							&igny8_max_account_jobs,
							192, 1, 65536,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("igny8_ai.job_retention",
							gettext_noop("Age after which the scheduled job deletes finished jobs from igny8_jobs."),
							NULL,
							&igny8_job_retention_s,
							7 * 24 * 3600, 1, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("igny8_ai");

	/* cJSON allocates with palloc in every process, never with malloc */
	igny8_json_init();
	igny8_shmem_init();
	igny8_extension_hooks_init();
	igny8_account_init();

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

/* The account id setting must be empty or a bigint that is not negative. */
static bool
check_account_id(char **newval, void **extra, GucSource source)
{
	char	   *end;
	long long	v;

	if (*newval == NULL || **newval == '\0')
		return true;
	errno = 0;
	v = strtoll(*newval, &end, 10);
	if (errno != 0 || *end != '\0' || end == *newval || v < 0)
	{
		GUC_check_errdetail("igny8_ai.account_id must be empty or a bigint that is not negative.");
		return false;
	}
	return true;
}
