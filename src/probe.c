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
 * is saturated.  The timeout bounds the whole probe, however many requests
 * it makes (ComfyUI's makes one per node class of its workflows after
 * /system_stats): each is given what is left, and a probe that runs out of
 * time is a timeout.
 *
 * A probe that fails for a reason of ours (out of file descriptors or
 * memory: "local"; no probe for the kind or a key reference that cannot
 * be resolved: "config") says nothing about the provider: it gets its row
 * but leaves the provider's state and circuit alone, as a request that
 * fails so does (job.c); a configuration's error becomes its last_error.
 * A change of state a probe makes is announced by the worker, as a
 * request's is.
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

/* Does a probe's failure of this kind say nothing about the provider? */
static bool
failure_is_ours(const char *kind)
{
	return strcmp(kind, "local") == 0 || strcmp(kind, "config") == 0;
}

/*
 * Finish a probe: record the verdict in the shared state, unless the
 * failure was ours (code "local" or "config"; a configuration's error
 * becomes the provider's last_error all the same, so that
 * igny8_service_status shows it).  A success that left the state as the
 * failed requests made it says so in the detail.
 */
static void
finish_probe(Igny8Job *job, double latency_ms, const char *code)
{
	Igny8ProbeResult *r = &job->probe_result;

	if (!r->healthy && failure_is_ours(code))
	{
		if (strcmp(code, "config") == 0)
			igny8_health_note_error(job->probe->shared_index, r->summary);
		igny8_health_peek(job->probe->shared_index, &job->probe_change);
	}
	else
		igny8_health_report(job->probe->shared_index, r->healthy, true,
							r->degraded, false, latency_ms, r->summary,
							&job->probe_change);
	/*
	 * The change is announced by this worker, which made it, as a
	 * request's is: the server log now, NOTIFY in the transaction that
	 * the worker commits before it hands the probe's answer over.  The
	 * caller's transaction, which writes the probe's service_health_log
	 * row, may roll back, or have given up on a late probe: the change
	 * stands all the same, and so does its announcement.
	 */
	if (job->probe_change.changed)
	{
		igny8_health_alert(job->probe->id, &job->probe_change,
						   igny8_to_db_lossy(r->summary ? r->summary : ""));
		igny8_job_queue_notify(job->probe->id, &job->probe_change, code);
	}
	if (job->probe_change.requests_failing)
	{
		cJSON	   *detail = cJSON_Parse(r->detail_json);

		if (cJSON_IsObject(detail))
		{
			cJSON_AddBoolToObject(detail, "requests_failing", true);
			r->detail_json = igny8_json_print(detail);
		}
		cJSON_Delete(detail);
	}
	job->probe_code = code;
	job->success = true;
	igny8_job_set_state(job, JOB_FINISHED);
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
		job->probe_class = -1;
		job->probe_deadline = TimestampTzPlusMilliseconds(now,
														  igny8_probe_timeout_ms);
		memset(&http, 0, sizeof(http));
		proto->build_probe(p->key, p->settings, &http);
		job->transfer = igny8_http_start(p->base_url, &http,
										 igny8_probe_timeout_ms,
										 Min(p->connect_timeout_ms,
											 igny8_probe_timeout_ms),
										 p->proxy, p->ca_file, 0, job);
		job->attempt_start = now;
		igny8_job_set_state(job, JOB_HTTP);
	}
}

/*
 * ComfyUI: the node classes the enabled workflows on this provider use,
 * and the model files their loaders name, checked with GET
 * /object_info/{class} once for each class, one after another once
 * /system_stats answered.  A class ComfyUI does not have (a custom node
 * that is not installed) and missing files make the provider degraded and
 * are listed, as missing Ollama models are.
 */
static void
comfyui_collect(Igny8Job *job)
{
	Igny8Config *cfg = job->config;
	int			cap = 0;
	int			class_cap = 0;

	job->nprobe_files = 0;
	job->probe_files = NULL;
	job->nprobe_classes = 0;
	job->probe_classes = NULL;
	if (!job->probe->check_models)
		return;
	for (int i = 0; i < cfg->ndeployments; i++)
	{
		Igny8Deployment *d = &cfg->deployments[i];

		/* a workflow two deployments run adds its classes and files once */
		if (d->provider != job->probe || !d->enabled || d->workflow == NULL)
			continue;
		job->nprobe_classes = igny8_comfyui_node_classes(d->workflow->graph,
														 &job->probe_classes,
														 job->nprobe_classes,
														 &class_cap);
		job->nprobe_files = igny8_comfyui_model_files(d->workflow->graph,
													  &job->probe_files,
													  job->nprobe_files,
													  &cap);
	}
	job->probe_class_found = palloc(sizeof(Igny8ComfyClass) *
									Max(job->nprobe_classes, 1));
	for (int i = 0; i < job->nprobe_classes; i++)
		job->probe_class_found[i] = IGNY8_COMFY_CLASS_ERROR;	/* not asked */
}

/*
 * Ask about node class index, with what is left of the probe's time; false
 * (nothing sent) when none is left.
 */
static bool
comfyui_ask_class(Igny8Job *job, int index)
{
	Igny8Provider *p = job->probe;
	Igny8HttpRequest http;
	long		left_ms = (long) ((job->probe_deadline -
								   GetCurrentTimestamp()) / 1000);

	job->probe_class = index;
	if (left_ms < 1)
		return false;
	memset(&http, 0, sizeof(http));
	igny8_comfyui_build_object_info(job->probe_classes[index], p->key, &http);
	job->transfer = igny8_http_start(p->base_url, &http, (int) left_ms,
									 (int) Min((long) p->connect_timeout_ms,
											   left_ms),
									 p->proxy, p->ca_file, 0, job);
	igny8_job_set_state(job, JOB_HTTP);
	return true;
}

/*
 * The probe's time ran out before ComfyUI answered about a node class: the
 * verdict is a timeout, as if /system_stats had not answered in time.
 */
static void
comfyui_timed_out(Igny8Job *job, double latency_ms)
{
	job->probe_status = 0;
	probe_failed(job, "timeout",
				 psprintf("timed out: the probe did not finish within igny8_ai.health_probe_timeout (%d ms); GET /object_info/%s did not answer in time",
						  igny8_probe_timeout_ms,
						  job->probe_classes[job->probe_class]),
				 latency_ms);
}

/* Every class was asked about (or one could not be): the verdict. */
static void
comfyui_files_verdict(Igny8Job *job, const char *failure)
{
	Igny8ProbeResult *r = &job->probe_result;
	cJSON	   *detail = cJSON_Parse(r->detail_json);
	cJSON	   *missing = cJSON_CreateArray();
	cJSON	   *nodes = cJSON_CreateArray();
	StringInfoData names;
	StringInfoData node_names;
	int			nmissing = 0;
	int			nnodes = 0;

	initStringInfo(&names);
	initStringInfo(&node_names);
	for (int i = 0; i < job->nprobe_classes; i++)
	{
		if (job->probe_class_found[i] != IGNY8_COMFY_CLASS_UNKNOWN)
			continue;
		cJSON_AddItemToArray(nodes,
							 cJSON_CreateString(job->probe_classes[i]));
		if (nnodes++ > 0)
			appendStringInfoString(&node_names, ", ");
		appendStringInfoString(&node_names, job->probe_classes[i]);
	}
	for (int i = 0; i < job->nprobe_files; i++)
	{
		if (job->probe_files[i].present)
			continue;
		cJSON_AddItemToArray(missing,
							 cJSON_CreateString(job->probe_files[i].file));
		if (nmissing++ > 0)
			appendStringInfoString(&names, ", ");
		appendStringInfoString(&names, job->probe_files[i].file);
	}
	job->probe_nodes_missing = (nnodes > 0);
	if (cJSON_IsObject(detail))
	{
		cJSON_AddNumberToObject(detail, "nodes_checked", job->nprobe_classes);
		cJSON_AddItemToObject(detail, "nodes_missing", nodes);
		cJSON_AddNumberToObject(detail, "model_files_checked", job->nprobe_files);
		cJSON_AddItemToObject(detail, "model_files_missing", missing);
		if (failure)
			cJSON_AddStringToObject(detail, "model_files_error", failure);
		r->detail_json = igny8_json_print(detail);
	}
	else
	{
		cJSON_Delete(missing);
		cJSON_Delete(nodes);
	}
	cJSON_Delete(detail);
	if (nnodes > 0)
	{
		r->degraded = true;
		r->summary = psprintf("%d node%s missing: %s", nnodes,
							  nnodes == 1 ? "" : "s", node_names.data);
	}
	if (failure)
	{
		r->degraded = true;
		r->summary = psprintf("%s; could not check the model files: %s",
							  r->summary, failure);
	}
	else if (nmissing > 0)
	{
		r->degraded = true;
		r->summary = psprintf("%s%d model file%s missing: %s",
							  nnodes > 0 ? psprintf("%s; ", r->summary) : "",
							  nmissing, nmissing == 1 ? "" : "s", names.data);
	}
}

/* The short code of a probe's verdict, for NOTIFY. */
static const char *
probe_code(Igny8ProbeResult *r, bool nodes_missing, long status)
{
	if (r->healthy && nodes_missing)
		return "nodes_missing";
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
	if (job->probe_class >= 0)
	{
		/* ComfyUI's answer about one node class */
		const char *failure = NULL;

		if (t->result != CURLE_OK &&
			strcmp(igny8_http_failure_kind(t), "timeout") == 0)
		{
			/* it had what was left of the probe's time */
			igny8_http_free(t);
			comfyui_timed_out(job, latency_ms);
			MemoryContextSwitchTo(old);
			return;
		}
		if (t->result != CURLE_OK)
			failure = igny8_http_error_text(t);
		else
		{
			Igny8HttpResponse resp;
			const char *class_type = job->probe_classes[job->probe_class];
			Igny8ComfyClass found;

			igny8_http_answer(t, NULL, &resp);
			found = igny8_comfyui_parse_object_info(&resp, class_type,
													job->probe_files,
													job->nprobe_files);
			job->probe_class_found[job->probe_class] = found;
			if (found == IGNY8_COMFY_CLASS_ERROR)
				failure = (t->status < 200 || t->status >= 300) ?
					psprintf("GET /object_info/%s: HTTP %ld", class_type,
							 t->status) :
					psprintf("GET /object_info/%s: malformed answer",
							 class_type);
		}
		igny8_http_free(t);
		if (failure == NULL && ++job->probe_class < job->nprobe_classes)
		{
			if (!comfyui_ask_class(job, job->probe_class))
				comfyui_timed_out(job, latency_ms);
			MemoryContextSwitchTo(old);
			return;
		}
		comfyui_files_verdict(job, failure);
		finish_probe(job, latency_ms, probe_code(&job->probe_result,
												 job->probe_nodes_missing,
												 job->probe_status));
		MemoryContextSwitchTo(old);
		return;
	}
	if (t->result != CURLE_OK)
		probe_failed(job, igny8_http_failure_kind(t), igny8_http_error_text(t),
					 latency_ms);
	else
	{
		Igny8HttpResponse resp;
		int			nmodels;
		const char **models = configured_models(job->config, job->probe,
												&nmodels);

		igny8_http_answer(t, job->probe->key, &resp);
		memset(&job->probe_result, 0, sizeof(job->probe_result));
		igny8_probe_protocol(job->probe->kind)->parse_probe(&resp, models,
															nmodels,
															&job->probe_result);
		job->probe_result.summary = igny8_redact(job->probe_result.summary,
												 job->probe->key);
		job->probe_result.detail_json =
			igny8_redact(job->probe_result.detail_json, job->probe->key);
		job->probe_status = t->status;
		if (job->probe->kind == IGNY8_KIND_COMFYUI &&
			job->probe_result.healthy)
		{
			comfyui_collect(job);
			if (job->nprobe_classes > 0)
			{
				igny8_http_free(t);
				if (!comfyui_ask_class(job, 0))
					comfyui_timed_out(job, latency_ms);
				MemoryContextSwitchTo(old);
				return;
			}
		}
		finish_probe(job, latency_ms, probe_code(&job->probe_result, false,
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
