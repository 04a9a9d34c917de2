/*-------------------------------------------------------------------------
 *
 * provider_ollama.c
 *	  Ollama's native chat protocol: POST /api/chat, one JSON answer.
 *
 * The request asks for a single JSON object ("stream": false).  Settings
 * used (all optional): "keep_alive" (string or number, copied as is),
 * "think" (boolean or level string; left out when the request has
 * omit_think) and "options" (an object merged into the request's options;
 * the request's num_predict and temperature win).  See protocols.md
 * section 1 for the fields and the error statuses.
 *
 * The health probe is GET /api/tags (protocols.md 1.6), the list of the
 * models the server has, against which the configured ones are checked.
 *
 * src/provider_ollama.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include "provider.h"

#define OLLAMA_NAME "Ollama"

/* Build POST /api/chat with "stream": false. */
static void
ollama_build_chat(const Igny8TextRequest *req, const char *api_key,
				  Igny8HttpRequest *out)
{
	cJSON	   *body;
	cJSON	   *messages;
	cJSON	   *options;
	cJSON	   *item;
	int			i;

	memset(out, 0, sizeof(*out));
	out->method = "POST";
	out->path = pstrdup("/api/chat");
	igny8_add_header(out, "Content-Type: application/json");
	/* Ollama itself has no auth, but a proxy in front of it may */
	if (api_key != NULL)
		igny8_add_header(out, "Authorization: Bearer %s", api_key);

	body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "model", req->model ? req->model : "");
	messages = cJSON_AddArrayToObject(body, "messages");
	for (i = 0; i < req->nmessages; i++)
	{
		const Igny8Message *msg = &req->messages[i];
		cJSON	   *m = cJSON_CreateObject();

		cJSON_AddStringToObject(m, "role", msg->role ? msg->role : "user");
		cJSON_AddStringToObject(m, "content",
								msg->content ? msg->content : "");
		cJSON_AddItemToArray(messages, m);
	}
	cJSON_AddFalseToObject(body, "stream");

	options = cJSON_CreateObject();
	igny8_json_merge(options, igny8_json_member(req->settings, "options"),
					 true);
	igny8_json_set(options, "num_predict",
				   cJSON_CreateNumber(req->max_tokens));
	if (req->has_temperature)
		igny8_json_set(options, "temperature",
					   cJSON_CreateNumber(req->temperature));
	cJSON_AddItemToObject(body, "options", options);

	item = igny8_json_member(req->settings, "keep_alive");
	if (cJSON_IsString(item) || cJSON_IsNumber(item))
		cJSON_AddItemToObject(body, "keep_alive", cJSON_Duplicate(item, true));

	if (!req->omit_think)
	{
		item = igny8_json_member(req->settings, "think");
		if (cJSON_IsBool(item) || cJSON_IsString(item))
			cJSON_AddItemToObject(body, "think", cJSON_Duplicate(item, true));
	}

	out->body = igny8_json_print(body);
	cJSON_Delete(body);
}

/* Read a 2xx answer (protocols.md 1.2); false and *err if unusable. */
static bool
ollama_parse_success(const cJSON *json, long status,
					 Igny8TextResult *result, Igny8ProviderError *err)
{
	const cJSON *message;
	const cJSON *error;
	const cJSON *content;
	const char *thinking;
	const char *str;
	char	   *inline_thinking;

	if (json == NULL)
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed JSON response from Ollama (HTTP %ld)",
						status);
		return false;
	}
	if (!cJSON_IsObject(json))
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from Ollama: not a JSON object");
		return false;
	}

	/* a failure after the headers were sent: {"error": "..."} in a 200 */
	error = igny8_json_member(json, "error");
	if (error != NULL && !cJSON_IsNull(error))
	{
		str = cJSON_IsString(error) ? error->valuestring : NULL;
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from Ollama: error \"%s\"",
						str ? str : "(not a string)");
		return false;
	}
	if (cJSON_IsFalse(igny8_json_member(json, "done")))
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from Ollama: \"done\" is false");
		return false;
	}
	message = igny8_json_member(json, "message");
	content = igny8_json_member(message, "content");
	if (!cJSON_IsString(content) || content->valuestring == NULL)
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from Ollama: no message.content string");
		return false;
	}

	/*
	 * The trace is in message.thinking on current servers; 0.9-0.11 era
	 * builds may leave it inline as <think>...</think>.  Strip the block in
	 * any case, and prefer the field when both exist.
	 */
	result->content = igny8_take_answer(content, &inline_thinking);
	thinking = igny8_json_string(message, "thinking");
	if (thinking != NULL && thinking[0] != '\0')
	{
		result->thinking = pstrdup(thinking);
		if (inline_thinking != NULL)
			pfree(inline_thinking);
	}
	else
		result->thinking = inline_thinking;

	str = igny8_json_string(json, "model");
	result->model = str ? pstrdup(str) : NULL;
	str = igny8_json_string(json, "done_reason");
	result->finish_reason = str ? pstrdup(str) : NULL;
	result->input_tokens = igny8_json_count(json, "prompt_eval_count");
	result->cached_input_tokens = 0;	/* Ollama does not say */
	result->output_tokens = igny8_json_count(json, "eval_count");
	return true;
}

/*
 * Classify a non-2xx answer (protocols.md 1.4).  Ollama's own table wins
 * where it differs from the generic rules: a 502 (cloud model unreachable)
 * falls back at once, and a 400 "does not support thinking" is retried
 * with drop_think so that the worker resends the call without "think".
 * The worker must not do that when the call had omit_think already.  A
 * 400 that says the prompt does not fit the context window falls back,
 * whatever the headers say (protocols.md 5).
 */
static void
ollama_parse_error(const Igny8HttpResponse *resp, const cJSON *json,
				   Igny8ProviderError *err)
{
	const char *message = igny8_error_message(json);
	Igny8ErrorClass cls;

	cls = igny8_classify_status(resp->status, resp->should_retry);
	if (resp->status == 502 && resp->should_retry != 1)
		cls = IGNY8_ERR_FALLBACK;
	if (resp->status == 400 && igny8_context_exceeded(json))
		cls = IGNY8_ERR_FALLBACK;

	if (resp->status == 400 &&
		igny8_str_contains(message, "does not support thinking"))
	{
		igny8_set_http_error(err, IGNY8_ERR_RETRY, resp, OLLAMA_NAME,
							 message);
		err->drop_think = true;
		return;
	}
	igny8_set_http_error(err, cls, resp, OLLAMA_NAME, message);
	/* a load failure (out of memory, runner crashed): once is reasonable */
	if (resp->status == 500 && cls == IGNY8_ERR_RETRY)
		err->retry_once = true;
}

/* Read the answer to ollama_build_chat's call, whatever its status. */
static bool
ollama_parse_chat(const Igny8HttpResponse *resp, Igny8TextResult *result,
				  Igny8ProviderError *err)
{
	return igny8_parse_answer(resp, OLLAMA_NAME, result, err,
							  ollama_parse_success, ollama_parse_error);
}

const Igny8TextProtocol igny8_ollama_protocol = {
	.name = "ollama",
	.needs_key = false,
	.build_chat = ollama_build_chat,
	.parse_chat = ollama_parse_chat
};

/* Build GET /api/tags; a key goes as a bearer header, for a proxy. */
static void
ollama_build_probe(const char *api_key, const cJSON *settings,
				   Igny8HttpRequest *out)
{
	igny8_build_get(out, "/api/tags", api_key);
}

/*
 * Read the answer to ollama_build_probe's call.  A 2xx must be an object
 * with a "models" array; each entry's "name" and "model" both count as
 * names of that model.
 */
static void
ollama_parse_probe(const Igny8HttpResponse *resp, const char *const *models,
				   int nmodels, Igny8ProbeResult *out)
{
	static const char *const name_keys[] = {"name", "model"};

	igny8_probe_model_list(resp, models, nmodels, OLLAMA_NAME, "models",
						   name_keys, lengthof(name_keys), out);
}

const Igny8ProbeProtocol igny8_ollama_probe = {
	.name = "ollama",
	.build_probe = ollama_build_probe,
	.parse_probe = ollama_parse_probe
};
