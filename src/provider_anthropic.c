/*-------------------------------------------------------------------------
 *
 * provider_anthropic.c
 *	  Anthropic's Messages protocol: POST /v1/messages.
 *
 * Anthropic takes the system prompt as a top-level "system" string and
 * only user and assistant turns in "messages", so the system messages of
 * the normalized request are pulled out and joined with blank lines.  Its
 * temperature range is 0-1 where the caller allows 0-2: above 1 we send 1.
 * The setting "anthropic_version" overrides the API version header.  See
 * docs/protocols.md section 4.
 *
 * The health probe is GET /v1/models, which costs nothing and proves the
 * key.  The configured models are checked against the ids it lists; an
 * alias (claude-haiku-4-5) matches its dated id (claude-haiku-4-5-20251001),
 * so a retired model shows up as missing.
 *
 * src/provider_anthropic.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include "lib/stringinfo.h"
#include "provider.h"

#define ANTHROPIC_NAME "Anthropic"
#define ANTHROPIC_VERSION "2023-06-01"

/* The anthropic-version header's value: the setting, or the default. */
static const char *
anthropic_version(const cJSON *settings)
{
	const char *version = igny8_json_string(settings, "anthropic_version");

	if (version == NULL || version[0] == '\0')
		version = ANTHROPIC_VERSION;
	return version;
}

/* Build POST /v1/messages. */
static void
anthropic_build_chat(const Igny8TextRequest *req, const char *api_key,
					 Igny8HttpRequest *out)
{
	cJSON	   *body;
	cJSON	   *messages;
	StringInfoData system;
	int			i;
	int			last;

	memset(out, 0, sizeof(*out));
	out->method = "POST";
	out->path = pstrdup("/v1/messages");
	igny8_add_header(out, "Content-Type: application/json");
	if (api_key != NULL)
		igny8_add_header(out, "x-api-key: %s", api_key);
	igny8_add_header(out, "anthropic-version: %s",
					 anthropic_version(req->settings));

	body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "model", req->model ? req->model : "");
	cJSON_AddNumberToObject(body, "max_tokens", req->max_tokens);

	/* the last turn (system messages go apart) */
	last = -1;
	for (i = 0; i < req->nmessages; i++)
		if (req->messages[i].role == NULL ||
			strcmp(req->messages[i].role, "system") != 0)
			last = i;

	initStringInfo(&system);
	messages = cJSON_CreateArray();
	for (i = 0; i < req->nmessages; i++)
	{
		const Igny8Message *msg = &req->messages[i];
		const char *content = msg->content ? msg->content : "";
		char	   *trimmed = NULL;
		cJSON	   *m;

		if (msg->role != NULL && strcmp(msg->role, "system") == 0)
		{
			if (content[0] == '\0')
				continue;
			if (system.len > 0)
				appendStringInfoString(&system, "\n\n");
			appendStringInfoString(&system, content);
			continue;
		}
		/*
		 * A last assistant turn is the start of the answer, and Anthropic
		 * refuses one that ends with whitespace ("final assistant content
		 * cannot end with trailing whitespace"): it goes without it.
		 */
		if (i == last && msg->role != NULL &&
			strcmp(msg->role, "assistant") == 0)
		{
			trimmed = pnstrdup(content,
							   igny8_utf8_trim_end(content, strlen(content)));
			content = trimmed;
		}
		/* other roles go as they are: Anthropic will reject them */
		m = cJSON_CreateObject();
		cJSON_AddStringToObject(m, "role", msg->role ? msg->role : "user");
		cJSON_AddStringToObject(m, "content", content);
		cJSON_AddItemToArray(messages, m);
		if (trimmed)
			pfree(trimmed);
	}
	if (system.len > 0)
		cJSON_AddStringToObject(body, "system", system.data);
	pfree(system.data);
	cJSON_AddItemToObject(body, "messages", messages);

	/* the caller allows 0-2, Anthropic 0-1 */
	if (req->has_temperature)
		cJSON_AddNumberToObject(body, "temperature",
								req->temperature > 1.0 ? 1.0 : req->temperature);

	out->body = igny8_json_print(body);
	cJSON_Delete(body);
}

/* Read a 2xx answer (protocols.md 4.1); false and *err if unusable. */
static bool
anthropic_parse_success(const cJSON *json, long status,
						Igny8TextResult *result, Igny8ProviderError *err)
{
	const cJSON *content;
	const cJSON *block;
	const cJSON *usage;
	const char *type;
	const char *str;
	StringInfoData text;
	StringInfoData thinking;
	int64_t		uncached;
	int64_t		cache_written;
	int64_t		cache_read;

	if (json == NULL)
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed JSON response from Anthropic (HTTP %ld)",
						status);
		return false;
	}
	if (!cJSON_IsObject(json))
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from Anthropic: not a JSON object");
		return false;
	}
	type = igny8_json_string(json, "type");
	if ((type != NULL && strcmp(type, "error") == 0) ||
		(igny8_json_member(json, "error") != NULL &&
		 !cJSON_IsNull(igny8_json_member(json, "error"))))
	{
		str = igny8_error_message(json);
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from Anthropic: error \"%s\"",
						str ? str : "(no message)");
		return false;
	}
	content = igny8_json_member(json, "content");
	if (!cJSON_IsArray(content))
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from Anthropic: no content array");
		return false;
	}

	/* the text blocks make the answer; other kinds (tool_use, ...) go */
	initStringInfo(&text);
	initStringInfo(&thinking);
	cJSON_ArrayForEach(block, content)
	{
		type = igny8_json_string(block, "type");
		if (type == NULL)
			continue;
		if (strcmp(type, "text") == 0)
		{
			str = igny8_json_string(block, "text");
			if (str != NULL)
				appendStringInfoString(&text, str);
		}
		else if (strcmp(type, "thinking") == 0)
		{
			str = igny8_json_string(block, "thinking");
			if (str != NULL && str[0] != '\0')
			{
				if (thinking.len > 0)
					appendStringInfoString(&thinking, "\n\n");
				appendStringInfoString(&thinking, str);
			}
		}
	}
	result->content = text.data;
	if (thinking.len > 0)
		result->thinking = thinking.data;
	else
		pfree(thinking.data);

	str = igny8_json_string(json, "model");
	result->model = str ? pstrdup(str) : NULL;
	str = igny8_json_string(json, "stop_reason");
	result->finish_reason = str ? pstrdup(str) : NULL;

	/*
	 * With prompt caching, input_tokens counts only the uncached part of
	 * the prompt: the whole is the sum of the three (protocols.md 4.1).
	 */
	usage = igny8_json_member(json, "usage");
	uncached = igny8_json_count(usage, "input_tokens");
	cache_written = igny8_json_count(usage, "cache_creation_input_tokens");
	cache_read = igny8_json_count(usage, "cache_read_input_tokens");
	result->input_tokens =
		igny8_count_add(igny8_count_add(uncached, cache_written), cache_read);
	result->cached_input_tokens = cache_read;
	result->cache_write_input_tokens = cache_written;
	result->output_tokens = igny8_json_count(usage, "output_tokens");
	return true;
}

/*
 * Classify a non-2xx answer (protocols.md 4.2).  The generic rules
 * (x-should-retry included) cover the statuses, 529 "Overloaded" among
 * them; billing problems fall back at once whatever the status, the 400
 * "credit balance is too low" in particular, and so does a 400 "prompt
 * is too long" (or a compatible server's context error), since another
 * deployment may have a larger context window (protocols.md 5).  A 413
 * from Cloudflare may have an HTML body: the status alone makes it a
 * caller error.
 */
static void
anthropic_parse_error(const Igny8HttpResponse *resp, const cJSON *json,
					  Igny8ProviderError *err)
{
	const cJSON *error = igny8_json_member(json, "error");
	const char *message = igny8_error_message(json);
	const char *type = igny8_json_string(error, "type");
	Igny8ErrorClass cls;

	cls = igny8_classify_status(resp->status, resp->should_retry);
	if ((type != NULL && strcmp(type, "billing_error") == 0) ||
		(resp->status == 400 &&
		 igny8_str_contains(message, "credit balance")))
		cls = IGNY8_ERR_FALLBACK;
	if (resp->status == 400 && igny8_context_exceeded(json))
		cls = IGNY8_ERR_FALLBACK;
	igny8_set_http_error(err, cls, resp, ANTHROPIC_NAME, message);
}

/* Read the answer to anthropic_build_chat's call, whatever its status. */
static bool
anthropic_parse_chat(const Igny8HttpResponse *resp, Igny8TextResult *result,
					 Igny8ProviderError *err)
{
	return igny8_parse_answer(resp, ANTHROPIC_NAME, result, err,
							  anthropic_parse_success, anthropic_parse_error);
}

const Igny8TextProtocol igny8_anthropic_protocol = {
	.name = "anthropic",
	.needs_key = true,
	.build_chat = anthropic_build_chat,
	.parse_chat = anthropic_parse_chat
};

/* Build GET /v1/models with the same key and version headers as a call. */
static void
anthropic_build_probe(const char *api_key, const cJSON *settings,
					  Igny8HttpRequest *out)
{
	memset(out, 0, sizeof(*out));
	out->method = "GET";
	/* one page holds every model (the default is 20) */
	out->path = pstrdup("/v1/models?limit=1000");
	if (api_key != NULL)
		igny8_add_header(out, "x-api-key: %s", api_key);
	igny8_add_header(out, "anthropic-version: %s",
					 anthropic_version(settings));
}

/*
 * Read the answer to anthropic_build_probe's call: {"data": [{"id": ...}]}.
 * The configured models are checked against the ids, a configured alias
 * matching a dated id ("claude-haiku-4-5" and "claude-haiku-4-5-20251001"),
 * so that a retired model shows as missing before a request finds out.
 */
static void
anthropic_parse_probe(const Igny8HttpResponse *resp,
					  const char *const *models, int nmodels,
					  Igny8ProbeResult *out)
{
	static const char *const name_keys[] = {"id"};

	igny8_probe_model_list(resp, models, nmodels, ANTHROPIC_NAME, "data",
						   name_keys, lengthof(name_keys), out);
}

const Igny8ProbeProtocol igny8_anthropic_probe = {
	.name = "anthropic",
	.build_probe = anthropic_build_probe,
	.parse_probe = anthropic_parse_probe
};
