/*-------------------------------------------------------------------------
 *
 * fuzz_providers.c
 *	  libFuzzer target for the pure protocol code (src/provider*.c).
 *
 * Input: one selector byte, then a response body.  The selector picks the
 * HTTP status (low 4 bits), x-should-retry (next 2) and retry-after (top
 * 2).  The body goes to the parse_chat function of every text protocol,
 * to igny8_strip_think and igny8_truncate_message, and, when it is a JSON
 * object, to every build_chat as the deployment settings.  Besides the
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
	}
	cJSON_Delete(settings);

	free_maybe((char *) resp.body);
	return 0;
}
