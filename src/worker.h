/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The background worker's modules: its cached configuration (config.c),
 *	  API key references (secrets.c), routing (router.c), the libcurl multi
 *	  loop (http.c) and the usage log (usage.c).  These run only in an
 *	  igny8_ai worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IGNY8_WORKER_H
#define IGNY8_WORKER_H

#include "postgres.h"

#include <curl/curl.h>

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "igny8_ai.h"
#include "provider.h"

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
	int			shared_index;	/* in igny8_shared->providers, or -1 */
	cJSON	   *settings;		/* the provider's own settings, or NULL */
} Igny8Provider;

typedef struct Igny8Deployment
{
	char	   *alias;
	Igny8Provider *provider;
	char	   *model;			/* provider-side model */
	Igny8Task	task;			/* IGNY8_TASK_TEXT or IGNY8_TASK_IMAGE */
	int			timeout_ms;
	int			max_tokens;		/* cap; 0 = none */
	int			weight;
	bool		enabled;
	cJSON	   *settings;		/* provider settings overlaid with ours */
} Igny8Deployment;

typedef struct Igny8Fallback
{
	char	   *alias;
	char	   *fallback;
} Igny8Fallback;

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
} Igny8Config;

extern Igny8Config *igny8_config_load(void);
extern Igny8Provider *igny8_config_provider(Igny8Config *config,
											const char *id);
extern void igny8_config_release(Igny8Config *config);
extern char *igny8_extension_schema(void);

/* ----- secrets.c ----- */

extern char *igny8_resolve_key(const char *ref, char **error);
extern char *igny8_redact(const char *text, const char *key);

/* ----- router.c ----- */

/* a refusal of the request before any attempt */
typedef struct Igny8RouteError
{
	int			sqlerrcode;
	char	   *message;
	char	   *detail;
	char	   *hint;
} Igny8RouteError;

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
	long		status;
	double		retry_after;
	int			should_retry;
	CURLcode	result;
	long		os_errno;		/* errno of a failed connect, or 0 */
	char		errbuf[CURL_ERROR_SIZE];
	void	   *owner;
	bool		finished;
} Igny8Transfer;

extern void igny8_http_init(void);
extern int	igny8_http_fd(void);
extern long igny8_http_timeout_ms(void);
extern Igny8Transfer *igny8_http_start(const char *base_url,
									   const Igny8HttpRequest *req,
									   int timeout_ms, int connect_timeout_ms,
									   const char *proxy, const char *ca_file,
									   void *owner);
extern void igny8_http_free(Igny8Transfer *t);
extern void igny8_http_drive(bool fd_ready);
extern Igny8Transfer *igny8_http_next_finished(void);
extern const char *igny8_http_error_text(Igny8Transfer *t);
extern bool igny8_http_too_large(Igny8Transfer *t);
extern bool igny8_http_local_failure(Igny8Transfer *t);
extern const char *igny8_http_failure_kind(Igny8Transfer *t);
extern Igny8ErrorClass igny8_http_classify_transport(Igny8Transfer *t);

/* ----- usage.c ----- */

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
	double		cost;
	double		duration_ms;
	long		http_status;	/* 0: none */
	bool		success;
	const char *error;			/* NULL on success */
	int			attempt;
	const char *prompt;			/* NULL unless igny8_ai.log_content */
	const char *response;
} Igny8UsageRow;

extern void igny8_usage_reset(void);
extern void igny8_usage_insert(const char *schema, const Igny8UsageRow *row);

#endif							/* IGNY8_WORKER_H */
