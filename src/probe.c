/*-------------------------------------------------------------------------
 *
 * probe.c
 *	  The worker's side of a health probe: a job of task IGNY8_TASK_HEALTH
 *	  sends its provider's free probe call (provider*.c builds and reads
 *	  it), records the verdict in the provider's shared health state
 *	  (health.c), and hands the detail back to igny8_check_health().
 *
 * Probes take no provider place: they are cheap, bounded by
 * igny8_ai.health_probe_timeout, and must get through when the provider
 * is saturated.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/json.h"

#include "worker.h"

/*
 * The provider-side models configured on a provider, for its probe; *n is
 * -1 when the provider's settings turn the model check off.
 */
static const char **
configured_models(Igny8Config *cfg, Igny8Provider *p, int *n)
{
	const char **models = palloc(sizeof(char *) * Max(cfg->ndeployments, 1));

	*n = 0;
	if (!p->check_models)
	{
		*n = -1;
		return models;
	}
	for (int i = 0; i < cfg->ndeployments; i++)
	{
		Igny8Deployment *d = &cfg->deployments[i];
		bool		dup = false;

		if (d->provider != p || !d->enabled)
			continue;
		for (int j = 0; j < *n; j++)
			if (strcmp(models[j], d->model) == 0)
				dup = true;
		if (!dup)
			models[(*n)++] = d->model;
	}
	return models;
}

/* Finish a probe: record the verdict in the shared state. */
static void
finish_probe(Igny8Job *job, double latency_ms, const char *code)
{
	Igny8ProbeResult *r = &job->probe_result;

	igny8_health_report(job->probe->shared_index, r->healthy, true,
						r->degraded, latency_ms, r->summary,
						&job->probe_change);
	job->probe_code = code;
	job->success = true;
	job->state = JOB_FINISHED;
}

/* A probe that could not be sent or got no HTTP answer. */
static void
probe_failed(Igny8Job *job, const char *kind, const char *summary,
			 double latency_ms)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"error\": ");
	escape_json(&buf, summary);
	appendStringInfoString(&buf, ", \"kind\": ");
	escape_json(&buf, kind);
	appendStringInfoChar(&buf, '}');
	memset(&job->probe_result, 0, sizeof(job->probe_result));
	job->probe_result.summary = pstrdup(summary);
	job->probe_result.detail_json = buf.data;
	finish_probe(job, latency_ms, kind);
}

/* Send the free probe call of the job's provider. */
static void
probe_start(Igny8Job *job, TimestampTz now)
{
	Igny8Provider *p = job->probe;
	const Igny8ProbeProtocol *proto = igny8_probe_protocol(p->kind);
	Igny8HttpRequest http;

	if (proto == NULL)
		probe_failed(job, "config", "no probe for this provider kind", 0);
	else if (p->key_error != NULL)
		probe_failed(job, "config",
					 psprintf("API key reference %s could not be resolved: %s",
							  igny8_key_ref_display(p->key_ref), p->key_error),
					 0);
	else
	{
		memset(&http, 0, sizeof(http));
		proto->build_probe(p->key, p->settings, &http);
		job->transfer = igny8_http_start(p->base_url, &http,
										 igny8_probe_timeout_ms,
										 Min(p->connect_timeout_ms,
											 igny8_probe_timeout_ms),
										 p->proxy, p->ca_file, 0, job);
		job->attempt_start = now;
		job->state = JOB_HTTP;
	}
}

/* The short code of a probe's verdict, for NOTIFY. */
static const char *
probe_code(Igny8ProbeResult *r, long status)
{
	if (r->healthy)
		return r->degraded ? "models_missing" : "ok";
	if (status < 200 || status >= 300)
		return psprintf("http_%ld", status);
	return "malformed";
}

/* The answer (or failure) of a probe. */
static void
probe_done(Igny8Job *job, Igny8Transfer *t)
{
	double		latency_ms;
	MemoryContext old = MemoryContextSwitchTo(job->cxt);

	job->transfer = NULL;
	latency_ms = (double) (GetCurrentTimestamp() - job->attempt_start) / 1000.0;
	if (t->result != CURLE_OK)
		probe_failed(job, igny8_http_failure_kind(t), igny8_http_error_text(t),
					 latency_ms);
	else
	{
		Igny8HttpResponse resp;
		int			nmodels;
		const char **models = configured_models(job->config, job->probe,
												&nmodels);
		size_t		len = t->len;

		resp.status = t->status;
		resp.body = t->body ? igny8_redact_body(t->body, &len,
												job->probe->key,
												t->status) : "";
		resp.body_len = t->body ? len : 0;
		resp.retry_after = t->retry_after;
		resp.should_retry = t->should_retry;
		memset(&job->probe_result, 0, sizeof(job->probe_result));
		igny8_probe_protocol(job->probe->kind)->parse_probe(&resp, models,
															nmodels,
															&job->probe_result);
		job->probe_result.summary = igny8_redact(job->probe_result.summary,
												 job->probe->key);
		job->probe_result.detail_json =
			igny8_redact(job->probe_result.detail_json, job->probe->key);
		job->probe_status = t->status;
		finish_probe(job, latency_ms, probe_code(&job->probe_result,
												 t->status));
	}
	igny8_http_free(t);
	MemoryContextSwitchTo(old);
}

static bool
probe_serves(Igny8ProviderKind kind)
{
	return igny8_probe_protocol(kind) != NULL;
}

const Igny8TaskOps igny8_probe_ops = {
	.name = "health probes",
	.routed = false,
	.serves = probe_serves,
	.start = probe_start,
	.done = probe_done,
	.abort = NULL
};
