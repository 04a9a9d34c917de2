/*-------------------------------------------------------------------------
 *
 * fuzz_providers.c
 *	  libFuzzer target for the pure protocol code (src/provider*.c).
 *
 * Input: one selector byte, then a response body.  The selector's low 4
 * bits pick the HTTP status.  For a chat answer or an image the next 2
 * bits pick x-should-retry and the top 2 retry-after (and, for OpenAI
 * images, the largest image accepted); for a probe the top 4 bits pick
 * how many of a fixed list of configured model names it gets, the value
 * minus one (0: -1, the model check off).
 *
 * The environment variable IGNY8_FUZZ_TARGET picks what runs on each
 * input, so that each parser can be fuzzed on its own (test/fuzz/run):
 *	 chat-ollama, chat-openai, chat-anthropic
 *		 that protocol's parse_chat, and its build_chat with the body as the
 *		 deployment settings when the body is a JSON object;
 *	 probe-ollama, probe-openai, probe-anthropic, probe-comfyui
 *		 that probe's parse_probe, and its build_probe likewise;
 *	 image-submit
 *		 ComfyUI's parse_submit, and build_submit with the body as the
 *		 workflow (or as {"graph", "bindings", "defaults"});
 *	 image-history
 *		 ComfyUI's parse_history, and build_view of each image it lists;
 *	 image-view
 *		 ComfyUI's parse_view and igny8_png_check on the body;
 *	 image-queue
 *		 ComfyUI's parse_queue_of (a worker's earlier prompts in GET /queue);
 *	 image-openai
 *		 OpenAI's parse_image, igny8_base64_decode on the body, and
 *		 build_image with the body as the deployment settings;
 *	 http1
 *		 the HTTP/1.x response parser (src/http1.c) on the whole input as
 *		 the bytes of a connection: fed whole, a byte at a time, and cut in
 *		 two where the selector says, it must come to the same result,
 *		 status, body, headers and keep-alive each way;
 *	 all (the default)
 *		 every one of those, plus igny8_strip_think, igny8_truncate_message,
 *		 igny8_clean_label and igny8_utf8_valid on the body.
 *
 * Besides the sanitizers' findings (the target is built with ASan, UBSan
 * and leak detection, so every cJSON tree must be freed), it aborts when
 * an output breaks the contract of provider.h: classes and flags, lengths,
 * and every string a parser returns (answer, labels, messages, summaries,
 * the strings of a probe's detail) valid UTF-8, checked with PostgreSQL's
 * own verifier, and without control characters where people read it.
 *
 * Build and run: make -C test/unit fuzz [FUZZ_TARGET=...] [FUZZ_TIME=60],
 * or test/fuzz/run.
 *
 * test/fuzz/fuzz_providers.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include <stdio.h>
#include <stdlib.h>

#include "http1.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
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

/*
 * Configured models: tags, no tags, a registry port, repeats, junk.  The
 * unit test's seeds say how many to use (test_providers.c FUZZ_NMODELS).
 */
static const char *const probe_models[] = {
	"qwen3:32b", "llama3.2", "gpt-4o-mini", "x:latest", "", NULL,
	"host:5000/ns/y", "qwen3:32b", "a"
};

static const Igny8Message messages[] = {
	{"system", "s1"},
	{"user", "u1"},
	{"assistant", "a1"},
	{"system", "s2"},
	{"user", "u2"}
};

/* The image parsers a target may pick. */
typedef enum FuzzImage
{
	IMAGE_NONE,
	IMAGE_SUBMIT,
	IMAGE_HISTORY,
	IMAGE_VIEW,
	IMAGE_OPENAI,
	IMAGE_QUEUE
} FuzzImage;

/* What IGNY8_FUZZ_TARGET can name; all three empty means all. */
typedef struct FuzzTarget
{
	const char *name;
	const Igny8TextProtocol *chat;
	const Igny8ProbeProtocol *probe;
	FuzzImage	image;
	bool		http1;
} FuzzTarget;

static const FuzzTarget targets[] = {
	{"all", NULL, NULL, IMAGE_NONE, false},
	{"chat-ollama", &igny8_ollama_protocol, NULL, IMAGE_NONE, false},
	{"chat-openai", &igny8_openai_protocol, NULL, IMAGE_NONE, false},
	{"chat-anthropic", &igny8_anthropic_protocol, NULL, IMAGE_NONE, false},
	{"probe-ollama", NULL, &igny8_ollama_probe, IMAGE_NONE, false},
	{"probe-openai", NULL, &igny8_openai_probe, IMAGE_NONE, false},
	{"probe-anthropic", NULL, &igny8_anthropic_probe, IMAGE_NONE, false},
	{"probe-comfyui", NULL, &igny8_comfyui_probe, IMAGE_NONE, false},
	{"image-submit", NULL, NULL, IMAGE_SUBMIT, false},
	{"image-history", NULL, NULL, IMAGE_HISTORY, false},
	{"image-view", NULL, NULL, IMAGE_VIEW, false},
	{"image-openai", NULL, NULL, IMAGE_OPENAI, false},
	{"image-queue", NULL, NULL, IMAGE_QUEUE, false},
	{"http1", NULL, NULL, IMAGE_NONE, true}
};

/* must match test/unit/test_providers.c (COMFY_ID) */
#define FUZZ_PROMPT_ID "p-1"

/* The largest OpenAI image accepted, by the selector's top 2 bits. */
static const size_t max_images[4] = {1 << 20, 0, 100, 4096};

/* Models of each OpenAI image family, and others. */
static const char *const image_models[8] = {
	"dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini",
	"sdxl-turbo", NULL, "dall-e-9", ""
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

static const FuzzTarget *target = &targets[0];

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

/* True if s has no control character (U+0000-U+001F, U+007F). */
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

/* Valid UTF-8 by PostgreSQL's verifier (which also refuses NUL)? */
static bool
pg_utf8(const char *s, size_t len)
{
	return pg_encoding_verifymbstr(PG_UTF8, s, (int) len) == (int) len;
}

/* A string people read: valid UTF-8, no control character, <= max bytes. */
static bool
clean_text(const char *s, size_t max)
{
	size_t		len = strlen(s);

	return len <= max && pg_utf8(s, len) && printable(s);
}

/* Is every string in the tree clean (valid UTF-8, no control character)? */
static bool
clean_json_strings(const cJSON *item)
{
	const cJSON *child;

	if (cJSON_IsString(item) &&
		!clean_text(item->valuestring, IGNY8_ERRMSG_MAX + 3))
		return false;
	if (item->string != NULL && !clean_text(item->string, 64))
		return false;
	cJSON_ArrayForEach(child, item)
	{
		if (!clean_json_strings(child))
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
		FUZZ_ASSERT(err.cls == IGNY8_ERR_NONE && err.message == NULL);
		FUZZ_ASSERT(!err.retry_once && !err.drop_think);
		FUZZ_ASSERT(result.content != NULL);
		FUZZ_ASSERT(pg_utf8(result.content, strlen(result.content)));
		FUZZ_ASSERT(result.thinking == NULL ||
					pg_utf8(result.thinking, strlen(result.thinking)));
		FUZZ_ASSERT(result.model == NULL ||
					clean_text(result.model, IGNY8_MODEL_MAX));
		FUZZ_ASSERT(result.finish_reason == NULL ||
					clean_text(result.finish_reason,
							   IGNY8_FINISH_REASON_MAX));
		FUZZ_ASSERT(result.input_tokens >= 0 && result.output_tokens >= 0);
		FUZZ_ASSERT(result.cached_input_tokens >= 0 &&
					result.cached_input_tokens <= result.input_tokens);
		/* cJSON would have cut a string at a \u0000 */
		FUZZ_ASSERT(!igny8_json_has_nul(resp->body, resp->body_len));
	}
	else
	{
		FUZZ_ASSERT(err.cls != IGNY8_ERR_NONE);
		FUZZ_ASSERT(err.message != NULL);
		FUZZ_ASSERT(clean_text(err.message, IGNY8_ERRMSG_MAX + 3));
		FUZZ_ASSERT(!err.drop_think || err.cls == IGNY8_ERR_RETRY);
		FUZZ_ASSERT(!err.retry_once || err.cls == IGNY8_ERR_RETRY);
		FUZZ_ASSERT(result.content == NULL && result.thinking == NULL &&
					result.model == NULL && result.finish_reason == NULL);
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
	FUZZ_ASSERT(out.method != NULL && strcmp(out.method, "POST") == 0);
	FUZZ_ASSERT(out.path != NULL && out.path[0] == '/');
	FUZZ_ASSERT(out.body != NULL);
	body = igny8_json_parse(out.body, strlen(out.body));
	FUZZ_ASSERT(cJSON_IsObject(body));
	FUZZ_ASSERT(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(body, "model")));
	FUZZ_ASSERT(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(body, "messages")));
	FUZZ_ASSERT(cJSON_GetObjectItemCaseSensitive(body, "stream") == NULL ||
				cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(body, "stream")));
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
	bool		lists = (proto == &igny8_ollama_probe ||
						 proto == &igny8_openai_probe ||
						 proto == &igny8_anthropic_probe);

	proto->parse_probe(resp, nmodels > 0 ? probe_models : NULL, nmodels,
					   &result);
	FUZZ_ASSERT(result.reachable);
	FUZZ_ASSERT(!result.degraded || result.healthy);
	FUZZ_ASSERT(!result.healthy ||
				(resp->status >= 200 && resp->status < 300));
	FUZZ_ASSERT(result.summary != NULL && result.summary[0] != '\0');
	FUZZ_ASSERT(clean_text(result.summary, IGNY8_ERRMSG_MAX + 3));
	FUZZ_ASSERT(result.detail_json != NULL);
	FUZZ_ASSERT(pg_utf8(result.detail_json, strlen(result.detail_json)));
	detail = igny8_json_parse(result.detail_json, strlen(result.detail_json));
	FUZZ_ASSERT(cJSON_IsObject(detail));
	FUZZ_ASSERT(clean_json_strings(detail));
	if (!result.healthy)
	{
		FUZZ_ASSERT(member_number(detail, "http_status") == resp->status);
		FUZZ_ASSERT(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(detail,
																	"error")));
	}
	else if (lists && nmodels < 0)
	{
		FUZZ_ASSERT(!result.degraded);
		FUZZ_ASSERT(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(detail,
																   "model_check")));
		FUZZ_ASSERT(cJSON_GetObjectItemCaseSensitive(detail,
													 "models_missing") == NULL);
		FUZZ_ASSERT(member_number(detail, "models_listed") >= 0);
		FUZZ_ASSERT(strstr(result.summary, "(model check off)") != NULL);
	}
	else if (lists)
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
		FUZZ_ASSERT(false);		/* every probe is one of the above */
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

/* The text helpers, on the body as a model's answer and as a label. */
static void
fuzz_text(const uint8_t *data, size_t size, uint8_t sel)
{
	const char *body = (const char *) data + 1;
	size_t		len = size - 1;
	char	   *text;
	char	   *stripped;
	char	   *thinking;
	char	   *cut;
	size_t		textlen;

	text = pnstrdup(body, len);
	textlen = strlen(text);
	stripped = igny8_strip_think(text, &thinking);
	FUZZ_ASSERT(stripped != NULL && strlen(stripped) <= textlen);
	FUZZ_ASSERT(thinking == NULL || (thinking[0] != '\0' &&
									 strlen(thinking) <= textlen));
	/* the block goes at ASCII boundaries: valid text stays valid */
	if (pg_utf8(text, textlen))
	{
		FUZZ_ASSERT(pg_utf8(stripped, strlen(stripped)));
		FUZZ_ASSERT(thinking == NULL || pg_utf8(thinking, strlen(thinking)));
	}
	free_maybe(stripped);
	free_maybe(thinking);

	/* igny8_utf8_valid agrees with PostgreSQL's verifier (save for NUL) */
	FUZZ_ASSERT(igny8_utf8_valid(text, textlen) == pg_utf8(text, textlen));
	if (memchr(body, '\0', len) == NULL)
		FUZZ_ASSERT(igny8_utf8_valid(body, len) == pg_utf8(body, len));

	/* a label is cut clean, and a clean one that fits stays as it was */
	cut = pstrdup(text);
	igny8_clean_label(cut, sel % 160);
	FUZZ_ASSERT(clean_text(cut, sel % 160));
	if (clean_text(text, sel % 160))
		FUZZ_ASSERT(strcmp(cut, text) == 0);
	pfree(cut);
	pfree(text);

	cut = igny8_truncate_message(body, len, sel);
	FUZZ_ASSERT(clean_text(cut, (size_t) sel + 3));
	pfree(cut);
}

/* ----- images ----- */

/* Is err a classified failure as provider.h promises? */
static void
check_failure(const Igny8HttpResponse *resp, const Igny8ProviderError *err)
{
	FUZZ_ASSERT(err->cls != IGNY8_ERR_NONE);
	FUZZ_ASSERT(err->message != NULL);
	FUZZ_ASSERT(clean_text(err->message, IGNY8_ERRMSG_MAX + 3));
	FUZZ_ASSERT(!err->drop_think);
	FUZZ_ASSERT(!err->retry_once || err->cls == IGNY8_ERR_RETRY);
	/* a 2xx that fails is malformed, or says where to go next */
	if (resp->status >= 200 && resp->status < 300)
		FUZZ_ASSERT(err->cls != IGNY8_ERR_CALLER);
}

/* Is a built request a sane GET or POST of JSON? */
static void
check_request(Igny8HttpRequest *out, const char *method)
{
	int			i;

	FUZZ_ASSERT(out->method != NULL && strcmp(out->method, method) == 0);
	FUZZ_ASSERT(out->path != NULL && out->path[0] == '/');
	/* percent-encoding leaves nothing to split a URL or a header */
	FUZZ_ASSERT(printable(out->path) && strchr(out->path, ' ') == NULL &&
				strchr(out->path, '#') == NULL);
	if (strcmp(method, "GET") == 0)
		FUZZ_ASSERT(out->body == NULL);
	else
	{
		cJSON	   *body;

		FUZZ_ASSERT(out->body != NULL);
		body = igny8_json_parse(out->body, strlen(out->body));
		FUZZ_ASSERT(cJSON_IsObject(body));
		cJSON_Delete(body);
	}
	for (i = 0; i < out->nheaders; i++)
	{
		FUZZ_ASSERT(printable(out->headers[i]));
		pfree(out->headers[i]);
	}
	pfree(out->path);
	free_maybe(out->body);
}

/* ComfyUI's parse_queue_of: prompts of one client_id prefix but one. */
static void
fuzz_queue(const Igny8HttpResponse *resp)
{
	char	  **ids;
	int			nids;

	if (igny8_comfyui_parse_queue_of(resp, "igny8_ai-7-42-0-",
									 "igny8_ai-7-42-0-200", &ids, &nids))
	{
		FUZZ_ASSERT(resp->status == 200);
		FUZZ_ASSERT(nids >= 0 && (nids == 0) == (ids == NULL));
		for (int i = 0; i < nids; i++)
		{
			FUZZ_ASSERT(ids[i][0] != '\0');
			FUZZ_ASSERT(strlen(ids[i]) <= IGNY8_PROMPT_ID_MAX);
			FUZZ_ASSERT(pg_utf8(ids[i], strlen(ids[i])));
			pfree(ids[i]);
		}
		if (ids)
			pfree(ids);
	}
	else
		FUZZ_ASSERT(nids == 0 && ids == NULL);
}

/* ComfyUI's parse_submit, and build_submit with the body as a workflow. */
static void
fuzz_submit(const Igny8HttpResponse *resp, const cJSON *json, uint8_t sel)
{
	Igny8ProviderError err;
	Igny8ImageRequest req;
	Igny8HttpRequest out;
	char	   *prompt_id;
	int64		number;
	char	   *error;
	char	   *before;
	char	   *after;
	cJSON	   *bindings = NULL;

	if (igny8_comfyui_parse_submit(resp, &prompt_id, &number, &err))
	{
		FUZZ_ASSERT(resp->status >= 200 && resp->status < 300);
		FUZZ_ASSERT(err.cls == IGNY8_ERR_NONE && err.message == NULL);
		FUZZ_ASSERT(prompt_id != NULL && prompt_id[0] != '\0');
		FUZZ_ASSERT(strlen(prompt_id) <= IGNY8_PROMPT_ID_MAX);
		FUZZ_ASSERT(pg_utf8(prompt_id, strlen(prompt_id)));
		FUZZ_ASSERT(number >= -1);
		pfree(prompt_id);
	}
	else
	{
		FUZZ_ASSERT(prompt_id == NULL && number == -1);
		check_failure(resp, &err);
		pfree(err.message);
	}

	if (!cJSON_IsObject(json))
		return;
	memset(&req, 0, sizeof(req));
	req.prompt = "a red fox";
	req.negative_prompt = (sel & 1) ? "blurry" : NULL;
	req.width = (sel & 2) ? 1024 : 0;
	req.height = (sel & 2) ? 768 : 0;
	req.steps = (sel & 4) ? 20 : 0;
	req.has_cfg = (sel & 8) != 0;
	req.cfg = 6.5;
	req.seed = (sel & 16) ? UINT64CONST(18446744073709551615) : 42;
	req.client_id = "c-1";
	req.prompt_id = (sel & 32) ? NULL : "p-1";
	req.filename_prefix = "igny8/p-1";
	if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(json, "graph")))
	{
		req.graph = cJSON_GetObjectItemCaseSensitive(json, "graph");
		req.bindings = cJSON_GetObjectItemCaseSensitive(json, "bindings");
		req.defaults = cJSON_GetObjectItemCaseSensitive(json, "defaults");
	}
	else
	{
		/* the first node's first input, whatever they are */
		const cJSON *node = json->child;
		const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(node, "inputs");

		req.graph = json;
		if (node != NULL && node->string != NULL && cJSON_IsObject(inputs) &&
			inputs->child != NULL && inputs->child->string != NULL)
		{
			cJSON	   *binding = cJSON_CreateArray();

			cJSON_AddItemToArray(binding, cJSON_CreateString(node->string));
			cJSON_AddItemToArray(binding,
								 cJSON_CreateString(inputs->child->string));
			bindings = cJSON_CreateObject();
			cJSON_AddItemToObject(bindings, (sel & 64) ? "seed" : "prompt",
								  binding);
			req.bindings = bindings;
		}
	}

	before = igny8_json_print(req.graph);
	if (igny8_comfyui_build_submit(&req, (sel & 128) ? "key\r\nX: 1" : NULL,
								   &out, &error))
	{
		cJSON	   *body = igny8_json_parse(out.body, strlen(out.body));

		FUZZ_ASSERT(error == NULL);
		FUZZ_ASSERT(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(body,
																	"prompt")));
		FUZZ_ASSERT(strcmp(out.path, "/prompt") == 0);
		cJSON_Delete(body);
		check_request(&out, "POST");
	}
	else
	{
		FUZZ_ASSERT(error != NULL && clean_text(error, IGNY8_ERRMSG_MAX + 3));
		FUZZ_ASSERT(out.path == NULL && out.body == NULL && out.nheaders == 0);
		pfree(error);
	}
	/* the caller's workflow is never changed */
	after = igny8_json_print(req.graph);
	FUZZ_ASSERT(strcmp(before, after) == 0);
	pfree(before);
	pfree(after);
	cJSON_Delete(bindings);
}

/* ComfyUI's parse_history, and build_view of what it lists. */
static void
fuzz_history(const Igny8HttpResponse *resp, uint8_t sel)
{
	Igny8ProviderError err;
	Igny8ComfyImage *images;
	Igny8HttpRequest out;
	Igny8ComfyState state;
	int			nimages;
	int			i;

	state = igny8_comfyui_parse_history(resp, (sel & 128) ? NULL :
										FUZZ_PROMPT_ID, &images, &nimages,
										&err);
	switch (state)
	{
		case IGNY8_COMFY_PENDING:
			FUZZ_ASSERT(resp->status >= 200 && resp->status < 300);
			FUZZ_ASSERT(images == NULL && nimages == 0);
			FUZZ_ASSERT(err.cls == IGNY8_ERR_NONE && err.message == NULL);
			break;
		case IGNY8_COMFY_DONE:
			FUZZ_ASSERT(resp->status >= 200 && resp->status < 300);
			FUZZ_ASSERT(images != NULL && nimages > 0);
			FUZZ_ASSERT(err.cls == IGNY8_ERR_NONE && err.message == NULL);
			for (i = 0; i < nimages; i++)
			{
				FUZZ_ASSERT(images[i].filename[0] != '\0');
				FUZZ_ASSERT(images[i].subfolder != NULL);
				/* saved images, or previews when nothing was saved */
				FUZZ_ASSERT(strcmp(images[i].type, images[0].type) == 0);
				FUZZ_ASSERT(strcmp(images[i].type, "output") == 0 ||
							strcmp(images[i].type, "temp") == 0);
				igny8_comfyui_build_view(&images[i], NULL, &out);
				FUZZ_ASSERT(strncmp(out.path, "/view?filename=", 15) == 0);
				check_request(&out, "GET");
			}
			for (i = 0; i < nimages; i++)
			{
				pfree(images[i].filename);
				pfree(images[i].subfolder);
				pfree(images[i].type);
			}
			pfree(images);
			break;
		case IGNY8_COMFY_FAILED:
		case IGNY8_COMFY_UNREAD:
			FUZZ_ASSERT(images == NULL && nimages == 0);
			check_failure(resp, &err);
			pfree(err.message);
			break;
		default:
			FUZZ_ASSERT(false);
	}
}

/* ComfyUI's parse_view, and igny8_png_check on the same bytes. */
static void
fuzz_view(const Igny8HttpResponse *resp)
{
	Igny8ProviderError err;
	Igny8ImageResult result;
	char	   *error;
	int			width;
	int			height;
	bool		png;

	png = igny8_png_check(resp->body, resp->body_len, &width, &height,
						  &error);
	if (png)
	{
		FUZZ_ASSERT(error == NULL);
		FUZZ_ASSERT(width >= 1 && width <= 65535);
		FUZZ_ASSERT(height >= 1 && height <= 65535);
		/* signature, IHDR, IDAT and IEND at the least */
		FUZZ_ASSERT(resp->body_len >= 8 + 25 + 12 + 12);
	}
	else
	{
		FUZZ_ASSERT(error != NULL && clean_text(error, 64));
		FUZZ_ASSERT(width == 0 && height == 0);
		pfree(error);
	}

	if (igny8_comfyui_parse_view(resp, &result, &err))
	{
		FUZZ_ASSERT(png);
		FUZZ_ASSERT(resp->status >= 200 && resp->status < 300);
		FUZZ_ASSERT(err.cls == IGNY8_ERR_NONE && err.message == NULL);
		FUZZ_ASSERT(result.data == resp->body &&
					result.len == resp->body_len);
		FUZZ_ASSERT(result.width == width && result.height == height);
		FUZZ_ASSERT(strcmp(result.mime_type, "image/png") == 0);
	}
	else
	{
		FUZZ_ASSERT(result.data == NULL && result.len == 0);
		FUZZ_ASSERT(!png || resp->status < 200 || resp->status >= 300);
		check_failure(resp, &err);
		/* the file name came from the server: never the caller's fault */
		FUZZ_ASSERT(err.cls != IGNY8_ERR_CALLER);
		pfree(err.message);
	}
}

/* Base64 of data[0..len), padded. */
static char *
encode_base64(const unsigned char *s, size_t len)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char	   *out = palloc((len + 2) / 3 * 4 + 1);
	char	   *o = out;
	size_t		i;

	for (i = 0; i < len; i += 3)
	{
		uint32_t	v = (uint32_t) s[i] << 16;

		if (i + 1 < len)
			v |= (uint32_t) s[i + 1] << 8;
		if (i + 2 < len)
			v |= s[i + 2];
		*o++ = alphabet[(v >> 18) & 63];
		*o++ = alphabet[(v >> 12) & 63];
		*o++ = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
		*o++ = i + 2 < len ? alphabet[v & 63] : '=';
	}
	*o = '\0';
	return out;
}

/* OpenAI's parse_image and build_image, and base64 on the raw body. */
static void
fuzz_openai_image(const Igny8HttpResponse *resp, const cJSON *settings,
				  uint8_t sel, const uint8_t *data, size_t size)
{
	size_t		max = max_images[(sel >> 6) & 3];
	Igny8ProviderError err;
	Igny8ImageResult result;
	Igny8ImageRequest req;
	Igny8HttpRequest out;
	char	   *decoded;
	size_t		len;
	int			i;

	if (igny8_openai_parse_image(resp, max, &result, &err))
	{
		int			width;
		int			height;
		char	   *error;

		FUZZ_ASSERT(resp->status >= 200 && resp->status < 300);
		FUZZ_ASSERT(err.cls == IGNY8_ERR_NONE && err.message == NULL);
		FUZZ_ASSERT(result.data != NULL && result.len <= max);
		FUZZ_ASSERT(igny8_png_check(result.data, result.len, &width, &height,
									&error));
		FUZZ_ASSERT(width == result.width && height == result.height);
		FUZZ_ASSERT(result.revised_prompt == NULL ||
					pg_utf8(result.revised_prompt,
							strlen(result.revised_prompt)));
		pfree(result.data);
		free_maybe(result.revised_prompt);
	}
	else
	{
		FUZZ_ASSERT(result.data == NULL && result.revised_prompt == NULL);
		check_failure(resp, &err);
		pfree(err.message);
	}

	/* decoding and encoding again gives the text back */
	if (igny8_base64_decode(resp->body, resp->body_len, max, &decoded, &len))
	{
		char	   *again = encode_base64((unsigned char *) decoded, len);
		size_t		n = strlen(again);

		FUZZ_ASSERT(len <= max);
		FUZZ_ASSERT(len == igny8_base64_decoded_len(resp->body,
													resp->body_len));
		FUZZ_ASSERT(n == resp->body_len);
		/* but for the unused low bits of the last character */
		if (n > 0)
		{
			size_t		last = n - 1;

			while (last > 0 && again[last] == '=')
				last--;
			FUZZ_ASSERT(memcmp(again, resp->body, last) == 0);
			FUZZ_ASSERT(memcmp(again + last + 1, resp->body + last + 1,
							   n - last - 1) == 0);
		}
		pfree(again);
		pfree(decoded);
	}
	else
		FUZZ_ASSERT(decoded == NULL && len == 0);

	/* the size asked, fitted to a model */
	for (i = 0; i < (int) lengthof(image_models); i++)
	{
		int			w = size > 2 ? (int) ((data[1] << 8) | data[2]) - 100 : 0;
		int			h = size > 4 ? (int) ((data[3] << 8) | data[4]) - 100 : 0;
		int			ow;
		int			oh;

		igny8_openai_image_size(image_models[i], w, h, &ow, &oh);
		if (i < 4)
			FUZZ_ASSERT(ow >= 256 && ow <= 1792 && oh >= 256 && oh <= 1792);
		else
			FUZZ_ASSERT(ow == w && oh == h);
	}

	if (!cJSON_IsObject(settings))
		return;
	memset(&req, 0, sizeof(req));
	req.model = image_models[sel & 7];
	req.prompt = "a red fox";
	req.width = (sel & 8) ? 1920 : 0;
	req.height = (sel & 8) ? 1080 : 0;
	req.quality = (sel & 16) ? "hd" : "low";
	req.style = (sel & 32) ? "vivid" : NULL;
	req.settings = settings;
	igny8_openai_build_image(&req, (sel & 64) ? "key\r\nX: 1" : NULL, &out);
	{
		cJSON	   *body = igny8_json_parse(out.body, strlen(out.body));
		const cJSON *n = cJSON_GetObjectItemCaseSensitive(body, "n");

		FUZZ_ASSERT(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(body,
																	"prompt")));
		FUZZ_ASSERT(cJSON_IsNumber(n) && n->valuedouble == 1);
		FUZZ_ASSERT(cJSON_GetObjectItemCaseSensitive(body, "stream") == NULL);
		cJSON_Delete(body);
	}
	check_request(&out, "POST");
}

/* ----- the HTTP/1.x response parser ----- */

typedef struct FuzzHttp1
{
	StringInfoData out;			/* headers, head, body, as they came */
	size_t		body_len;
} FuzzHttp1;

static void
fh_header(void *arg, const char *name, const char *value)
{
	FuzzHttp1  *f = arg;

	if (name == NULL)
		appendStringInfoString(&f->out, "<reset>");
	else
	{
		FUZZ_ASSERT(name[0] != '\0' && strchr(name, ':') == NULL);
		appendStringInfo(&f->out, "<h %s=%s>", name, value);
	}
}

static bool
fh_head_done(void *arg, int status, int64_t content_length)
{
	FuzzHttp1  *f = arg;

	FUZZ_ASSERT(status >= 200 && status <= 999);
	FUZZ_ASSERT(content_length >= -1);
	appendStringInfo(&f->out, "<head %d %lld>", status, (long long) content_length);
	/* a length over a limit stops it, as the worker's client does */
	return content_length < 1000;
}

static bool
fh_body(void *arg, const char *data, size_t len)
{
	FuzzHttp1  *f = arg;

	FUZZ_ASSERT(len > 0);
	f->body_len += len;
	appendBinaryStringInfo(&f->out, data, len);
	return true;
}

static const Http1Callbacks fh_callbacks = {fh_header, fh_head_done, fh_body};

/* Feed data in pieces of at most piece bytes (0: whole), then the end. */
static char *
fuzz_http1_run(const uint8_t *data, size_t size, size_t piece)
{
	Http1Parser *p = palloc(sizeof(Http1Parser));
	FuzzHttp1	f;
	size_t		pos = 0;
	Http1Result r = HTTP1_MORE;
	char	   *summary;

	initStringInfo(&f.out);
	f.body_len = 0;
	http1_init(p);
	while (pos < size && r == HTTP1_MORE)
	{
		size_t		n = (piece == 0 || size - pos < piece) ? size - pos : piece;
		size_t		used;

		r = http1_feed(p, (const char *) data + pos, n, &used, &fh_callbacks, &f);
		FUZZ_ASSERT(used <= n);
		FUZZ_ASSERT(r != HTTP1_MORE || used == n);
		FUZZ_ASSERT(r != HTTP1_ERROR || p->error != NULL);
		pos += used;
	}
	if (r == HTTP1_MORE)
		r = http1_eof(p);
	FUZZ_ASSERT(r != HTTP1_MORE);
	FUZZ_ASSERT(!http1_keep_alive(p) || r == HTTP1_COMPLETE);
	summary = psprintf("%d %d %d %zu %s|%s", (int) r, p->status,
					   (int) http1_keep_alive(p), size - pos,
					   r == HTTP1_ERROR ? p->error : "", f.out.data);
	pfree(f.out.data);
	pfree(p);
	return summary;
}

static void
fuzz_http1(const uint8_t *data, size_t size, uint8_t sel)
{
	char	   *whole = fuzz_http1_run(data, size, 0);
	char	   *bytes = fuzz_http1_run(data, size, 1);
	char	   *cut = fuzz_http1_run(data, size, (size_t) sel % 64 + 2);

	/* how the bytes came in pieces must not matter */
	FUZZ_ASSERT(strcmp(whole, bytes) == 0);
	FUZZ_ASSERT(strcmp(whole, cut) == 0);
	pfree(whole);
	pfree(bytes);
	pfree(cut);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *name = getenv("IGNY8_FUZZ_TARGET");
	int			i;

	igny8_json_init();
	if (name == NULL || name[0] == '\0')
		return 0;
	for (i = 0; i < (int) lengthof(targets); i++)
	{
		if (strcmp(name, targets[i].name) == 0)
		{
			target = &targets[i];
			return 0;
		}
	}
	fprintf(stderr, "IGNY8_FUZZ_TARGET=%s is none of:", name);
	for (i = 0; i < (int) lengthof(targets); i++)
		fprintf(stderr, " %s", targets[i].name);
	fprintf(stderr, "\n");
	exit(2);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Igny8HttpResponse resp;
	uint8_t		sel;
	int			nmodels;
	cJSON	   *settings;
	bool		all = (target->chat == NULL && target->probe == NULL &&
					   target->image == IMAGE_NONE && !target->http1);
	int			i;

	if (size < 1)
		return 0;
	sel = data[0];
	if (all || target->http1)
		fuzz_http1(data + 1, size - 1, sel);
	if (target->http1)
		return 0;

	/* a copy of exactly the body, so that ASan sees any overread */
	resp.status = statuses[sel & 15];
	resp.should_retry = should_retries[(sel >> 4) & 3];
	resp.retry_after = retry_afters[(sel >> 6) & 3];
	resp.body_len = size - 1;
	resp.body_terminated = false;	/* parsed from a copy, as exact */
	resp.body = resp.body_len > 0 ? palloc(resp.body_len) : NULL;
	if (resp.body_len > 0)
		memcpy((char *) resp.body, data + 1, resp.body_len);
	nmodels = Min((int) (sel >> 4), (int) lengthof(probe_models) + 1) - 1;

	for (i = 0; i < (int) lengthof(protocols); i++)
	{
		if (all || target->chat == protocols[i])
			fuzz_parse(protocols[i], &resp);
	}
	for (i = 0; i < (int) lengthof(probes); i++)
	{
		if (all || target->probe == probes[i])
			fuzz_probe(probes[i], &resp, nmodels);
	}
	if (all)
		fuzz_text(data, size, sel);

	/* the body as deployment settings, or as a workflow */
	settings = igny8_json_parse(resp.body, resp.body_len);
	if (all || target->image == IMAGE_SUBMIT)
		fuzz_submit(&resp, settings, sel);
	if (all || target->image == IMAGE_HISTORY)
		fuzz_history(&resp, sel);
	if (all || target->image == IMAGE_VIEW)
		fuzz_view(&resp);
	if (all || target->image == IMAGE_QUEUE)
		fuzz_queue(&resp);
	if (all || target->image == IMAGE_OPENAI)
		fuzz_openai_image(&resp, settings, sel, data, size);
	if (cJSON_IsObject(settings))
	{
		for (i = 0; i < (int) lengthof(protocols); i++)
		{
			if (all || target->chat == protocols[i])
				fuzz_build(protocols[i], settings, sel);
		}
		for (i = 0; i < (int) lengthof(probes); i++)
		{
			if (all || target->probe == probes[i])
				fuzz_build_probe(probes[i], settings, sel);
		}
	}
	cJSON_Delete(settings);

	free_maybe((char *) resp.body);
	return 0;
}
