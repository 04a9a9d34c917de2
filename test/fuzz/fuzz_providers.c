/*-------------------------------------------------------------------------
 *
 * fuzz_providers.c
 *	  libFuzzer target for the pure protocol code (src/provider*.c).
 *
 * Input: one selector byte, then a response body.  The selector picks the
 * HTTP status (low 4 bits), x-should-retry (next 2) and retry-after (top
 * 2).  The body goes to the parse_chat function of every text protocol,
 * to the parse_probe function of every health probe (with some of a fixed
 * list of configured model names, as many as the body's length modulo
 * the list's length plus one), to igny8_strip_think and
 * igny8_truncate_message, and, when it is a JSON object, to every
 * build_chat and build_probe as the deployment settings.  Besides the
 * sanitizers' findings (the target is built with ASan, UBSan and leak
 * detection, so every cJSON tree must be freed), it aborts when an output
 * breaks the contract of provider.h.
 *
 * Build and run: make -C test/unit fuzz [FUZZ_TIME=60]
 *
 * test/fuzz/fuzz_providers.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include <stdio.h>

#include "provider.h"

int			LLVMFuzzerInitialize(int *argc, char ***argv);
int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* must match test/unit/test_providers.c */
static const long statuses[16] = {
	200, 400, 401, 402, 403, 404, 408, 409,
	413, 429, 500, 502, 503, 504, 529, 302
};
static const int should_retries[4] = {-1, 0, 1, -1};
static const double retry_afters[4] = {-1, 0, 1.5, 30};

static const Igny8Message messages[] = {
	{"system", "s1"},
	{"user", "u1"},
	{"assistant", "a1"},
	{"system", "s2"},
	{"user", "u2"}
};

static const Igny8TextProtocol *const protocols[] = {
	&igny8_ollama_protocol,
	&igny8_openai_protocol,
	&igny8_anthropic_protocol
};

static const Igny8ProbeProtocol *const probes[] = {
	&igny8_ollama_probe,
	&igny8_openai_probe,
	&igny8_anthropic_probe,
	&igny8_comfyui_probe
};

/* configured models: tags, no tags, a registry port, repeats, junk */
static const char *const probe_models[] = {
	"qwen3:32b", "llama3.2", "gpt-4o-mini", "x:latest", "", NULL,
	"host:5000/ns/y", "qwen3:32b", "a"
};

#define FUZZ_ASSERT(cond) \
	do { \
		if (!(cond)) \
		{ \
			fprintf(stderr, "contract broken: %s (line %d)\n", #cond, __LINE__); \
			abort(); \
		} \
	} while (0)

/* Free a palloc'd pointer that may be NULL. */
static void
free_maybe(void *ptr)
{
	if (ptr != NULL)
		pfree(ptr);
}

/* True if s has no control character (messages must be printable). */
static bool
printable(const char *s)
{
	for (; *s != '\0'; s++)
	{
		if ((unsigned char) *s < 0x20 || *s == 0x7F)
			return false;
	}
	return true;
}

/* Parse the response with one protocol and check the outputs. */
static void
fuzz_parse(const Igny8TextProtocol *proto, const Igny8HttpResponse *resp)
{
	Igny8TextResult result;
	Igny8ProviderError err;

	if (proto->parse_chat(resp, &result, &err))
	{
		FUZZ_ASSERT(resp->status >= 200 && resp->status < 300);
		FUZZ_ASSERT(result.content != NULL);
		FUZZ_ASSERT(err.cls == IGNY8_ERR_NONE && err.message == NULL);
		FUZZ_ASSERT(result.input_tokens >= 0 && result.output_tokens >= 0);
	}
	else
	{
		FUZZ_ASSERT(err.cls != IGNY8_ERR_NONE);
		FUZZ_ASSERT(err.message != NULL);
		FUZZ_ASSERT(strlen(err.message) <= IGNY8_ERRMSG_MAX + 3);
		FUZZ_ASSERT(printable(err.message));
		FUZZ_ASSERT(!err.drop_think || err.cls == IGNY8_ERR_RETRY);
		FUZZ_ASSERT(result.content == NULL);
	}
	free_maybe(result.content);
	free_maybe(result.thinking);
	free_maybe(result.model);
	free_maybe(result.finish_reason);
	free_maybe(err.message);
}

/* Build a request with the given settings and check the outputs. */
static void
fuzz_build(const Igny8TextProtocol *proto, const cJSON *settings,
		   uint8_t sel)
{
	Igny8TextRequest req;
	Igny8HttpRequest out;
	cJSON	   *body;
	int			i;

	memset(&req, 0, sizeof(req));
	req.model = "m";
	req.messages = messages;
	req.nmessages = (sel & 1) ? lengthof(messages) : 2;
	req.max_tokens = 16;
	req.has_temperature = (sel & 2) != 0;
	req.temperature = (sel & 4) ? 1.7 : 0.5;
	req.settings = settings;
	req.omit_think = (sel & 8) != 0;

	proto->build_chat(&req, (sel & 16) ? "key\r\nX-Injected: 1" : NULL, &out);
	FUZZ_ASSERT(out.method != NULL && out.path != NULL && out.path[0] == '/');
	FUZZ_ASSERT(out.body != NULL);
	body = igny8_json_parse(out.body, strlen(out.body));
	FUZZ_ASSERT(cJSON_IsObject(body));
	FUZZ_ASSERT(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(body, "model")));
	FUZZ_ASSERT(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(body, "messages")));
	cJSON_Delete(body);
	FUZZ_ASSERT(out.nheaders >= 1 && out.nheaders <= IGNY8_MAX_HEADERS);
	for (i = 0; i < out.nheaders; i++)
	{
		FUZZ_ASSERT(printable(out.headers[i]));
		pfree(out.headers[i]);
	}
	pfree(out.path);
	pfree(out.body);
}

/* A number member of a JSON object, or -1 if absent or not a number. */
static double
member_number(const cJSON *json, const char *key)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(json, key);

	return cJSON_IsNumber(item) ? item->valuedouble : -1;
}

/* Parse the response with one health probe and check the outputs. */
static void
fuzz_probe(const Igny8ProbeProtocol *proto, const Igny8HttpResponse *resp,
		   int nmodels)
{
	Igny8ProbeResult result;
	cJSON	   *detail;
	const cJSON *missing;
	const cJSON *item;

	proto->parse_probe(resp, nmodels > 0 ? probe_models : NULL, nmodels,
					   &result);
	FUZZ_ASSERT(result.reachable);
	FUZZ_ASSERT(!result.degraded || result.healthy);
	FUZZ_ASSERT(!result.healthy ||
				(resp->status >= 200 && resp->status < 300));
	FUZZ_ASSERT(result.summary != NULL && result.summary[0] != '\0');
	FUZZ_ASSERT(strlen(result.summary) <= IGNY8_ERRMSG_MAX + 3);
	FUZZ_ASSERT(printable(result.summary));
	FUZZ_ASSERT(result.detail_json != NULL);
	detail = igny8_json_parse(result.detail_json, strlen(result.detail_json));
	FUZZ_ASSERT(cJSON_IsObject(detail));
	if (!result.healthy)
	{
		FUZZ_ASSERT(member_number(detail, "http_status") == resp->status);
		FUZZ_ASSERT(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(detail,
																	"error")));
	}
	else if (proto == &igny8_ollama_probe || proto == &igny8_openai_probe)
	{
		missing = cJSON_GetObjectItemCaseSensitive(detail, "models_missing");
		FUZZ_ASSERT(cJSON_IsArray(missing));
		FUZZ_ASSERT(result.degraded == (cJSON_GetArraySize(missing) > 0));
		FUZZ_ASSERT(member_number(detail, "models_present") >= 0);
		FUZZ_ASSERT(member_number(detail, "models_present") +
					cJSON_GetArraySize(missing) <= nmodels);
		FUZZ_ASSERT(member_number(detail, "models_listed") >= 0);
		cJSON_ArrayForEach(item, missing)
			FUZZ_ASSERT(cJSON_IsString(item) && item->valuestring[0] != '\0');
	}
	else if (proto == &igny8_comfyui_probe)
	{
		FUZZ_ASSERT(!result.degraded);
		FUZZ_ASSERT(member_number(detail, "vram_free") >= 0);
		FUZZ_ASSERT(member_number(detail, "vram_total") >= 0);
		FUZZ_ASSERT(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(detail,
																   "devices")));
	}
	else
	{
		FUZZ_ASSERT(!result.degraded);
		FUZZ_ASSERT(member_number(detail, "models_listed") >= 0);
	}
	cJSON_Delete(detail);
	pfree(result.summary);
	pfree(result.detail_json);
}

/* Build a probe request with the given settings and check it. */
static void
fuzz_build_probe(const Igny8ProbeProtocol *proto, const cJSON *settings,
				 uint8_t sel)
{
	Igny8HttpRequest out;
	int			i;

	proto->build_probe((sel & 16) ? "key\r\nX-Injected: 1" : NULL, settings,
					   &out);
	FUZZ_ASSERT(out.method != NULL && strcmp(out.method, "GET") == 0);
	FUZZ_ASSERT(out.path != NULL && out.path[0] == '/');
	FUZZ_ASSERT(out.body == NULL);
	FUZZ_ASSERT(out.nheaders >= 0 && out.nheaders <= 2);
	for (i = 0; i < out.nheaders; i++)
	{
		FUZZ_ASSERT(printable(out.headers[i]));
		pfree(out.headers[i]);
	}
	pfree(out.path);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	igny8_json_init();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Igny8HttpResponse resp;
	uint8_t		sel;
	char	   *text;
	char	   *stripped;
	char	   *thinking;
	char	   *cut;
	cJSON	   *settings;
	int			i;

	if (size < 1)
		return 0;
	sel = data[0];

	/* a copy of exactly the body, so that ASan sees any overread */
	resp.status = statuses[sel & 15];
	resp.should_retry = should_retries[(sel >> 4) & 3];
	resp.retry_after = retry_afters[(sel >> 6) & 3];
	resp.body_len = size - 1;
	resp.body = resp.body_len > 0 ? palloc(resp.body_len) : NULL;
	if (resp.body_len > 0)
		memcpy((char *) resp.body, data + 1, resp.body_len);

	for (i = 0; i < (int) lengthof(protocols); i++)
		fuzz_parse(protocols[i], &resp);
	for (i = 0; i < (int) lengthof(probes); i++)
		fuzz_probe(probes[i], &resp,
				   (int) (resp.body_len % (lengthof(probe_models) + 1)));

	/* the body as a model's answer and as an error text */
	text = pnstrdup((const char *) data + 1, size - 1);
	stripped = igny8_strip_think(text, &thinking);
	FUZZ_ASSERT(stripped != NULL && strlen(stripped) <= strlen(text));
	FUZZ_ASSERT(thinking == NULL || (thinking[0] != '\0' &&
									 strlen(thinking) <= strlen(text)));
	free_maybe(stripped);
	free_maybe(thinking);
	pfree(text);

	cut = igny8_truncate_message(resp.body, resp.body_len, sel);
	FUZZ_ASSERT(strlen(cut) <= (size_t) sel + 3);
	FUZZ_ASSERT(printable(cut));
	pfree(cut);

	/* the body as deployment settings */
	settings = igny8_json_parse(resp.body, resp.body_len);
	if (cJSON_IsObject(settings))
	{
		for (i = 0; i < (int) lengthof(protocols); i++)
			fuzz_build(protocols[i], settings, sel);
		for (i = 0; i < (int) lengthof(probes); i++)
			fuzz_build_probe(probes[i], settings, sel);
	}
	cJSON_Delete(settings);

	free_maybe((char *) resp.body);
	return 0;
}
