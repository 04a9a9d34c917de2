/*-------------------------------------------------------------------------
 *
 * provider_openai.c
 *	  The OpenAI chat completions protocol: POST /v1/chat/completions.
 *
 * Spoken by OpenAI itself and by the compatible servers (Ollama's /v1,
 * vLLM, LiteLLM, ...), so the key is optional.  The output limit goes in
 * "max_tokens", which all of them accept; a deployment whose model wants
 * "max_completion_tokens" (OpenAI reasoning models) says so with the
 * setting "max_tokens_field".  The setting "extra_body", an object, is
 * merged into the body: the request's own fields win over it, and its
 * "stream" is dropped since only one JSON answer can be read.  See
 * protocols.md sections 1.7 and 3.
 *
 * The health probe is GET /v1/models, which every one of these servers
 * answers with the ids of its models: OpenAI all it offers, vLLM,
 * LiteLLM and Ollama's /v1 those they serve.  The configured models are
 * checked against those ids.
 *
 * src/provider_openai.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include "provider.h"

#define OPENAI_NAME "OpenAI-compatible API"

/* Build POST /v1/chat/completions. */
static void
openai_build_chat(const Igny8TextRequest *req, const char *api_key,
				  Igny8HttpRequest *out)
{
	cJSON	   *body;
	cJSON	   *messages;
	const char *max_field;
	int			i;

	memset(out, 0, sizeof(*out));
	out->method = "POST";
	out->path = pstrdup("/v1/chat/completions");
	igny8_add_header(out, "Content-Type: application/json");
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

	max_field = igny8_json_string(req->settings, "max_tokens_field");
	if (max_field == NULL || strcmp(max_field, "max_completion_tokens") != 0)
		max_field = "max_tokens";
	cJSON_AddNumberToObject(body, max_field, req->max_tokens);
	if (req->has_temperature)
		cJSON_AddNumberToObject(body, "temperature", req->temperature);

	igny8_json_merge(body, igny8_json_member(req->settings, "extra_body"),
					 false);
	while (cJSON_GetObjectItemCaseSensitive(body, "stream") != NULL)
		cJSON_DeleteItemFromObjectCaseSensitive(body, "stream");

	out->body = igny8_json_print(body);
	cJSON_Delete(body);
}

/* Read a 2xx answer (protocols.md 3.1); false and *err if unusable. */
static bool
openai_parse_success(const cJSON *json, long status,
					 Igny8TextResult *result, Igny8ProviderError *err)
{
	const cJSON *choices;
	const cJSON *choice;
	const cJSON *message;
	const cJSON *content;
	const cJSON *usage;
	const char *reasoning;
	const char *str;
	char	   *inline_thinking;

	if (json == NULL)
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed JSON response from " OPENAI_NAME " (HTTP %ld)",
						status);
		return false;
	}
	if (!cJSON_IsObject(json))
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from " OPENAI_NAME ": not a JSON object");
		return false;
	}

	choices = igny8_json_member(json, "choices");
	if (!cJSON_IsArray(choices) || cJSON_GetArraySize(choices) < 1)
	{
		/* some proxies answer 200 with an error body */
		str = igny8_error_message(json);
		if (str != NULL)
			igny8_set_error(err, IGNY8_ERR_RETRY, -1,
							"malformed response from " OPENAI_NAME ": error \"%s\"",
							str);
		else
			igny8_set_error(err, IGNY8_ERR_RETRY, -1,
							"malformed response from " OPENAI_NAME ": no choices");
		return false;
	}
	choice = cJSON_GetArrayItem(choices, 0);
	message = igny8_json_member(choice, "message");
	if (!cJSON_IsObject(message))
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from " OPENAI_NAME ": no choices[0].message");
		return false;
	}

	/* content is null for a refusal or tool calls: an empty answer */
	content = igny8_json_member(message, "content");
	if (content != NULL && !cJSON_IsNull(content) && !cJSON_IsString(content))
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from " OPENAI_NAME ": message.content is not a string");
		return false;
	}

	/*
	 * Ollama's /v1 puts the trace in "reasoning", vLLM and DeepSeek in
	 * "reasoning_content"; a server without a reasoning parser leaves it
	 * inline in <think> tags.
	 */
	result->content = igny8_strip_think(cJSON_IsString(content) ?
										content->valuestring : "",
										&inline_thinking);
	reasoning = igny8_json_string(message, "reasoning");
	if (reasoning == NULL || reasoning[0] == '\0')
		reasoning = igny8_json_string(message, "reasoning_content");
	if (reasoning != NULL && reasoning[0] != '\0')
	{
		result->thinking = pstrdup(reasoning);
		if (inline_thinking != NULL)
			pfree(inline_thinking);
	}
	else
		result->thinking = inline_thinking;

	str = igny8_json_string(json, "model");
	result->model = str ? pstrdup(str) : NULL;
	str = igny8_json_string(choice, "finish_reason");
	result->finish_reason = str ? pstrdup(str) : NULL;
	usage = igny8_json_member(json, "usage");
	result->input_tokens = igny8_json_count(usage, "prompt_tokens");
	result->cached_input_tokens =
		igny8_json_count(igny8_json_member(usage, "prompt_tokens_details"),
						 "cached_tokens");
	result->output_tokens = igny8_json_count(usage, "completion_tokens");
	return true;
}

/*
 * Classify a non-2xx answer (protocols.md 3.3).  The generic rules
 * (x-should-retry included) cover the statuses; a 429 that is about
 * billing (insufficient_quota) or about a request larger than the whole
 * limit ("Request too large") falls back at once, whatever the headers
 * say, since waiting cannot fix it.  So does a 400 that says the prompt
 * is longer than the deployment's context (context_length_exceeded,
 * vLLM's and llama.cpp's wordings): another deployment may have a larger
 * window (protocols.md 5).
 */
static void
openai_parse_error(const Igny8HttpResponse *resp, const cJSON *json,
				   Igny8ProviderError *err)
{
	const cJSON *error = igny8_json_member(json, "error");
	const char *message = igny8_error_message(json);
	const char *type = igny8_json_string(error, "type");
	const char *code = igny8_json_string(error, "code");
	Igny8ErrorClass cls;

	cls = igny8_classify_status(resp->status, resp->should_retry);
	if (resp->status == 429)
	{
		if ((type != NULL && strcmp(type, "insufficient_quota") == 0) ||
			(code != NULL && strcmp(code, "insufficient_quota") == 0) ||
			igny8_str_contains(message, "Request too large"))
			cls = IGNY8_ERR_FALLBACK;
	}
	if (resp->status == 400 && igny8_context_exceeded(json))
		cls = IGNY8_ERR_FALLBACK;
	igny8_set_http_error(err, cls, resp, OPENAI_NAME, message);
}

/* Read the answer to openai_build_chat's call, whatever its status. */
static bool
openai_parse_chat(const Igny8HttpResponse *resp, Igny8TextResult *result,
				  Igny8ProviderError *err)
{
	return igny8_parse_answer(resp, OPENAI_NAME, result, err,
							  openai_parse_success, openai_parse_error);
}

const Igny8TextProtocol igny8_openai_protocol = {
	.name = "openai",
	.needs_key = false,
	.build_chat = openai_build_chat,
	.parse_chat = openai_parse_chat
};

/* Build GET /v1/models, with the key as a bearer header when given. */
static void
openai_build_probe(const char *api_key, const cJSON *settings,
				   Igny8HttpRequest *out)
{
	igny8_build_get(out, "/v1/models", api_key);
}

/*
 * Read the answer to openai_build_probe's call.  A 2xx must be an object
 * with a "data" array of {"id": ...} entries.
 */
static void
openai_parse_probe(const Igny8HttpResponse *resp, const char *const *models,
				   int nmodels, Igny8ProbeResult *out)
{
	static const char *const name_keys[] = {"id"};

	igny8_probe_model_list(resp, models, nmodels, OPENAI_NAME, "data",
						   name_keys, lengthof(name_keys), out);
}

const Igny8ProbeProtocol igny8_openai_probe = {
	.name = "openai",
	.build_probe = openai_build_probe,
	.parse_probe = openai_parse_probe
};
