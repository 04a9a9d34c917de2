/*-------------------------------------------------------------------------
 *
 * test_providers.c
 *	  Unit tests of the pure protocol code: src/provider.c and
 *	  src/provider_{ollama,openai,anthropic,comfyui}.c, built as frontend
 *	  code.
 *
 * Checks, for each protocol, the HTTP request that build_chat makes
 * (method, path, headers, exact JSON body) and what parse_chat makes of
 * every response shape and error of reference/protocols.md; likewise for
 * each health probe, build_probe and parse_probe.  Prints one
 * line per group of checks, a line per failed check, and finally
 * "N passed, M failed"; exits 1 if any check failed.
 *
 * With "--write-corpus DIR" it also writes every response body it parses
 * into DIR as seeds for test/fuzz/fuzz_providers.c (first byte: the
 * status selector the fuzzer uses).
 *
 * test/unit/test_providers.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include <stdio.h>

#include "provider.h"

/* must match test/fuzz/fuzz_providers.c */
static const long fuzz_statuses[16] = {
	200, 400, 401, 402, 403, 404, 408, 409,
	413, 429, 500, 502, 503, 504, 529, 302
};

static int	n_passed;
static int	n_failed;
static const char *group_name;
static int	group_checks;
static int	group_failed;
static const char *corpus_dir;
static int	corpus_count;

static const Igny8TextProtocol *ollama = &igny8_ollama_protocol;
static const Igny8TextProtocol *openai = &igny8_openai_protocol;
static const Igny8TextProtocol *anthropic = &igny8_anthropic_protocol;

/* ---------- the harness ---------- */

static void
begin_group(const char *name)
{
	group_name = name;
	group_checks = 0;
	group_failed = 0;
}

static void
end_group(void)
{
	printf("%-4s %s (%d checks)\n", group_failed ? "FAIL" : "ok",
		   group_name, group_checks);
	fflush(stdout);
}

static bool check(bool ok, int line, const char *fmt,...)
			pg_attribute_printf(3, 4);

/* Count one check; on failure print the line and the formatted reason. */
static bool
check(bool ok, int line, const char *fmt,...)
{
	va_list		args;

	group_checks++;
	if (ok)
	{
		n_passed++;
		return true;
	}
	n_failed++;
	group_failed++;
	printf("  FAILED line %d: ", line);
	va_start(args, fmt);
	vprintf(fmt, args);
	va_end(args);
	printf("\n");
	return false;
}

#define CHECK(cond) check((cond), __LINE__, "%s", #cond)
#define CHECK_STR(actual, expected) \
	check_str((actual), (expected), #actual, __LINE__)
#define CHECK_INT(actual, expected) \
	check((long long) (actual) == (long long) (expected), __LINE__, \
		  "%s = %lld, expected %lld", #actual, \
		  (long long) (actual), (long long) (expected))
#define CHECK_CONTAINS(actual, needle) \
	check((actual) != NULL && strstr((actual), (needle)) != NULL, __LINE__, \
		  "%s = \"%s\" does not contain \"%s\"", #actual, \
		  (actual) ? (actual) : "(null)", (needle))
#define CHECK_JSON(actual, expected) \
	check_json((actual), (expected), __LINE__)

/* Compare two strings, either of which may be NULL. */
static bool
check_str(const char *actual, const char *expected, const char *what,
		  int line)
{
	bool		ok;

	if (actual == NULL || expected == NULL)
		ok = (actual == expected);
	else
		ok = (strcmp(actual, expected) == 0);
	return check(ok, line, "%s = %s%s%s, expected %s%s%s", what,
				 actual ? "\"" : "", actual ? actual : "(null)",
				 actual ? "\"" : "",
				 expected ? "\"" : "", expected ? expected : "(null)",
				 expected ? "\"" : "");
}

/* Compare a JSON text with the expected one: same members, any order. */
static bool
check_json(const char *actual, const char *expected, int line)
{
	cJSON	   *a = actual ? cJSON_Parse(actual) : NULL;
	cJSON	   *e = cJSON_Parse(expected);
	bool		ok;

	if (e == NULL)
	{
		printf("  bad expected JSON at line %d\n", line);
		abort();
	}
	ok = (a != NULL && cJSON_Compare(a, e, true));
	cJSON_Delete(a);
	cJSON_Delete(e);
	return check(ok, line, "JSON body\n    got      %s\n    expected %s",
				 actual ? actual : "(null)", expected);
}

/* Write one response as a fuzzer seed (first byte: status selector). */
static void
write_seed(const Igny8HttpResponse *resp)
{
	char		path[1024];
	FILE	   *f;
	unsigned char sel = 0;
	int			i;

	for (i = 0; i < (int) lengthof(fuzz_statuses); i++)
	{
		if (fuzz_statuses[i] == resp->status)
			sel = (unsigned char) i;
	}
	if (resp->should_retry == 0)
		sel |= 1 << 4;
	else if (resp->should_retry == 1)
		sel |= 2 << 4;
	if (resp->retry_after >= 0)
		sel |= 2 << 6;

	snprintf(path, sizeof(path), "%s/seed-%03d", corpus_dir, corpus_count++);
	f = fopen(path, "wb");
	if (f == NULL)
	{
		perror(path);
		exit(2);
	}
	fputc(sel, f);
	if (resp->body_len > 0)
		fwrite(resp->body, 1, resp->body_len, f);
	fclose(f);
}

/* Parse an answer with retry_after and x-should-retry given. */
static bool
parse_full(const Igny8TextProtocol *proto, long status, const char *body,
		   double retry_after, int should_retry,
		   Igny8TextResult *result, Igny8ProviderError *err)
{
	Igny8HttpResponse resp;

	resp.status = status;
	resp.body = body;
	resp.body_len = body ? strlen(body) : 0;
	resp.retry_after = retry_after;
	resp.should_retry = should_retry;
	if (corpus_dir != NULL)
		write_seed(&resp);
	return proto->parse_chat(&resp, result, err);
}

/* Parse an answer without retry headers. */
static bool
parse(const Igny8TextProtocol *proto, long status, const char *body,
	  Igny8TextResult *result, Igny8ProviderError *err)
{
	return parse_full(proto, status, body, -1, -1, result, err);
}

/*
 * Check that an answer is a failure of class cls whose message contains
 * needle (if not NULL), with the given retry_after and drop_think.
 */
static void
check_error_full(const Igny8TextProtocol *proto, long status,
				 const char *body, double retry_after, int should_retry,
				 Igny8ErrorClass cls, const char *needle,
				 double expect_retry_after, bool drop_think, int line)
{
	static const char *const names[] = {"NONE", "RETRY", "FALLBACK", "CALLER"};
	Igny8TextResult result;
	Igny8ProviderError err;
	bool		ok;

	ok = parse_full(proto, status, body, retry_after, should_retry,
					&result, &err);
	check(!ok, line, "%s %ld: parse succeeded", proto->name, status);
	if (ok)
		return;
	check(err.cls == cls, line, "%s %ld (should_retry %d): class %s, expected %s",
		  proto->name, status, should_retry, names[err.cls], names[cls]);
	check(err.message != NULL &&
		  strlen(err.message) <= IGNY8_ERRMSG_MAX + 3, line,
		  "%s %ld: message missing or too long", proto->name, status);
	if (needle != NULL)
		check(err.message != NULL && strstr(err.message, needle) != NULL,
			  line, "%s %ld: message \"%s\" does not contain \"%s\"",
			  proto->name, status, err.message ? err.message : "(null)",
			  needle);
	check(err.retry_after == expect_retry_after, line,
		  "%s %ld: retry_after %g, expected %g", proto->name, status,
		  err.retry_after, expect_retry_after);
	check(err.drop_think == drop_think, line, "%s %ld: drop_think %d",
		  proto->name, status, (int) err.drop_think);
	/* one retry only: a 2xx that cannot be read, an Ollama load failure */
	check(err.retry_once == ((status >= 200 && status < 300) ||
							 (proto == ollama && status == 500)),
		  line, "%s %ld: retry_once %d", proto->name, status,
		  (int) err.retry_once);
}

#define CHECK_ERROR(proto, status, body, cls, needle) \
	check_error_full((proto), (status), (body), -1, -1, (cls), (needle), \
					 -1, false, __LINE__)
#define CHECK_ERROR_H(proto, status, body, retry_after, should_retry, cls, \
					  needle, expect_retry_after) \
	check_error_full((proto), (status), (body), (retry_after), \
					 (should_retry), (cls), (needle), \
					 (expect_retry_after), false, __LINE__)

/* A normalized request; settings given as JSON text or NULL. */
static Igny8TextRequest
make_request(const char *model, const Igny8Message *messages, int n,
			 const char *settings)
{
	Igny8TextRequest req;

	memset(&req, 0, sizeof(req));
	req.model = model;
	req.messages = messages;
	req.nmessages = n;
	req.max_tokens = 256;
	req.has_temperature = false;
	req.temperature = 0;
	req.settings = settings ? cJSON_Parse(settings) : NULL;
	if (settings != NULL && req.settings == NULL)
	{
		printf("bad settings JSON: %s\n", settings);
		abort();
	}
	req.omit_think = false;
	return req;
}

/* Is key a member of the JSON object text body? */
static bool
has_member(const char *body, const char *key)
{
	cJSON	   *json = cJSON_Parse(body);
	bool		found = cJSON_GetObjectItemCaseSensitive(json, key) != NULL;

	cJSON_Delete(json);
	return found;
}

static const Igny8Message basic_messages[] = {
	{"system", "You are terse."},
	{"user", "Hi"}
};

#define BASIC_MESSAGES_JSON \
	"[{\"role\":\"system\",\"content\":\"You are terse.\"}," \
	"{\"role\":\"user\",\"content\":\"Hi\"}]"

/* ---------- provider.c ---------- */

static void
test_kinds(void)
{
	begin_group("provider kinds and protocol table");
	CHECK(igny8_provider_kind_from_name("ollama") == IGNY8_KIND_OLLAMA);
	CHECK(igny8_provider_kind_from_name("openai") == IGNY8_KIND_OPENAI);
	CHECK(igny8_provider_kind_from_name("anthropic") == IGNY8_KIND_ANTHROPIC);
	CHECK(igny8_provider_kind_from_name("comfyui") == IGNY8_KIND_COMFYUI);
	CHECK(igny8_provider_kind_from_name("OpenAI") == IGNY8_KIND_OPENAI);
	CHECK(igny8_provider_kind_from_name("gemini") == IGNY8_KIND_INVALID);
	CHECK(igny8_provider_kind_from_name("") == IGNY8_KIND_INVALID);
	CHECK(igny8_provider_kind_from_name(NULL) == IGNY8_KIND_INVALID);
	CHECK_STR(igny8_provider_kind_name(IGNY8_KIND_OLLAMA), "ollama");
	CHECK_STR(igny8_provider_kind_name(IGNY8_KIND_OPENAI), "openai");
	CHECK_STR(igny8_provider_kind_name(IGNY8_KIND_ANTHROPIC), "anthropic");
	CHECK_STR(igny8_provider_kind_name(IGNY8_KIND_COMFYUI), "comfyui");
	CHECK_STR(igny8_provider_kind_name(IGNY8_KIND_INVALID), NULL);
	CHECK(igny8_text_protocol(IGNY8_KIND_OLLAMA) == &igny8_ollama_protocol);
	CHECK(igny8_text_protocol(IGNY8_KIND_OPENAI) == &igny8_openai_protocol);
	CHECK(igny8_text_protocol(IGNY8_KIND_ANTHROPIC) == &igny8_anthropic_protocol);
	CHECK(igny8_text_protocol(IGNY8_KIND_COMFYUI) == NULL);
	CHECK(igny8_text_protocol(IGNY8_KIND_INVALID) == NULL);
	CHECK_STR(ollama->name, "ollama");
	CHECK_STR(openai->name, "openai");
	CHECK_STR(anthropic->name, "anthropic");
	CHECK(!ollama->needs_key);
	CHECK(!openai->needs_key);
	CHECK(anthropic->needs_key);
	end_group();
}

static void
test_classify(void)
{
	static const long retry[] = {408, 409, 429, 500, 502, 503, 504, 529, 501, 599};
	static const long fallback[] = {401, 402, 403, 404, 302, 100, 600};
	static const long caller[] = {400, 413, 422, 405, 418, 451};
	int			i;

	begin_group("generic status classification");
	for (i = 0; i < (int) lengthof(retry); i++)
		check(igny8_classify_status(retry[i], -1) == IGNY8_ERR_RETRY,
			  __LINE__, "%ld is RETRY", retry[i]);
	for (i = 0; i < (int) lengthof(fallback); i++)
		check(igny8_classify_status(fallback[i], -1) == IGNY8_ERR_FALLBACK,
			  __LINE__, "%ld is FALLBACK", fallback[i]);
	for (i = 0; i < (int) lengthof(caller); i++)
		check(igny8_classify_status(caller[i], -1) == IGNY8_ERR_CALLER,
			  __LINE__, "%ld is CALLER", caller[i]);
	CHECK(igny8_classify_status(200, -1) == IGNY8_ERR_NONE);
	CHECK(igny8_classify_status(204, 0) == IGNY8_ERR_NONE);
	/* x-should-retry */
	CHECK(igny8_classify_status(503, 0) == IGNY8_ERR_FALLBACK);
	CHECK(igny8_classify_status(429, 0) == IGNY8_ERR_FALLBACK);
	CHECK(igny8_classify_status(400, 0) == IGNY8_ERR_CALLER);
	CHECK(igny8_classify_status(404, 0) == IGNY8_ERR_FALLBACK);
	CHECK(igny8_classify_status(400, 1) == IGNY8_ERR_RETRY);
	CHECK(igny8_classify_status(404, 1) == IGNY8_ERR_RETRY);
	CHECK(igny8_classify_status(503, 1) == IGNY8_ERR_RETRY);
	end_group();
}

static void
test_truncate(void)
{
	char	   *s;
	char		big[1000];

	begin_group("igny8_truncate_message");
	CHECK_STR(igny8_truncate_message("hello", 5, 10), "hello");
	CHECK_STR(igny8_truncate_message("hello", 5, 5), "hello");
	CHECK_STR(igny8_truncate_message("hello world", 11, 5), "hello...");
	CHECK_STR(igny8_truncate_message("hello world", 11, 6), "hello...");
	CHECK_STR(igny8_truncate_message("hello", 3, 10), "hel");
	/* e-acute is two bytes: never cut in the middle */
	CHECK_STR(igny8_truncate_message("h\xc3\xa9llo", 6, 2), "h...");
	CHECK_STR(igny8_truncate_message("h\xc3\xa9llo", 6, 3), "h\xc3\xa9...");
	CHECK_STR(igny8_truncate_message("\xe2\x82\xac", 3, 3), "\xe2\x82\xac");
	CHECK_STR(igny8_truncate_message("\xe2\x82\xac", 3, 2), "...");
	CHECK_STR(igny8_truncate_message("\xf0\x9f\x98\x80!", 5, 4), "\xf0\x9f\x98\x80...");
	/* a sequence cut by len itself, invalid bytes, overlong forms */
	CHECK_STR(igny8_truncate_message("\xe2\x82\xac", 2, 10), "??");
	CHECK_STR(igny8_truncate_message("ab\xff", 3, 10), "ab?");
	CHECK_STR(igny8_truncate_message("\xc0\xaf", 2, 10), "??");
	CHECK_STR(igny8_truncate_message("\xed\xa0\x80", 3, 10), "???");
	CHECK_STR(igny8_truncate_message("\xf4\x90\x80\x80", 4, 10), "????");
	CHECK_STR(igny8_truncate_message("\xc3(", 2, 10), "?(");
	/* control characters */
	CHECK_STR(igny8_truncate_message("a\nb\tc\rd\x7f" "e", 9, 20), "a b c d e");
	CHECK_STR(igny8_truncate_message("ab\0cd", 5, 10), "ab cd");
	CHECK_STR(igny8_truncate_message("line\n", 5, 10), "line");
	CHECK_STR(igny8_truncate_message(NULL, 0, 10), "");
	CHECK_STR(igny8_truncate_message("abc", 3, 0), "...");
	memset(big, 'x', sizeof(big));
	s = igny8_truncate_message(big, sizeof(big), IGNY8_ERRMSG_MAX);
	CHECK_INT(strlen(s), IGNY8_ERRMSG_MAX + 3);
	CHECK(strcmp(s + IGNY8_ERRMSG_MAX, "...") == 0);
	end_group();
}

static void
test_strip_think(void)
{
	char	   *thinking = (char *) "untouched";
	char	   *content;

	begin_group("igny8_strip_think");
	content = igny8_strip_think("Paris.", &thinking);
	CHECK_STR(content, "Paris.");
	CHECK_STR(thinking, NULL);
	content = igny8_strip_think("<think>\nLet me think.\n</think>\n\nParis.", &thinking);
	CHECK_STR(content, "Paris.");
	CHECK_STR(thinking, "Let me think.");
	content = igny8_strip_think(" \n <think>a</think>b", &thinking);
	CHECK_STR(content, "b");
	CHECK_STR(thinking, "a");
	/* the empty block of a model that did not think */
	content = igny8_strip_think("<think>\n\n</think>\n\nParis.", &thinking);
	CHECK_STR(content, "Paris.");
	CHECK_STR(thinking, NULL);
	/* no closing tag: keep everything */
	content = igny8_strip_think("<think>still thinking", &thinking);
	CHECK_STR(content, "<think>still thinking");
	CHECK_STR(thinking, NULL);
	/* only a leading block counts */
	content = igny8_strip_think("Hi <think>x</think> there", &thinking);
	CHECK_STR(content, "Hi <think>x</think> there");
	CHECK_STR(thinking, NULL);
	/* text without a block keeps its whitespace */
	content = igny8_strip_think("  indented\n", &thinking);
	CHECK_STR(content, "  indented\n");
	/* the first closing tag ends the block */
	content = igny8_strip_think("<think>a</think>b</think>c", &thinking);
	CHECK_STR(content, "b</think>c");
	CHECK_STR(thinking, "a");
	content = igny8_strip_think("<think>a</think>", &thinking);
	CHECK_STR(content, "");
	CHECK_STR(thinking, "a");
	content = igny8_strip_think("<think>a</think>x", NULL);
	CHECK_STR(content, "x");
	content = igny8_strip_think(NULL, &thinking);
	CHECK_STR(content, "");
	CHECK_STR(thinking, NULL);
	content = igny8_strip_think("<THINK>a</THINK>x", &thinking);
	CHECK_STR(content, "<THINK>a</THINK>x");
	end_group();
}

static void
test_helpers(void)
{
	Igny8HttpRequest out;
	cJSON	   *json;
	cJSON	   *dst;
	cJSON	   *src;
	char	   *printed;
	char		unterminated[8];
	int			i;

	begin_group("headers and JSON helpers");
	memset(&out, 0, sizeof(out));
	igny8_add_header(&out, "X-Count: %d", 42);
	CHECK_INT(out.nheaders, 1);
	CHECK_STR(out.headers[0], "X-Count: 42");
	/* a CR/LF in a value cannot start another header */
	igny8_add_header(&out, "x-api-key: %s", "abc\r\nX-Evil: 1");
	CHECK_STR(out.headers[1], "x-api-key: abc  X-Evil: 1");
	for (i = 0; i < 20; i++)
		igny8_add_header(&out, "X-Filler: %d", i);
	CHECK_INT(out.nheaders, IGNY8_MAX_HEADERS);

	CHECK(igny8_str_contains("Your Credit Balance is low", "credit balance"));
	CHECK(!igny8_str_contains("credit", "credit balance"));
	CHECK(!igny8_str_contains(NULL, "x"));
	CHECK(!igny8_str_contains("x", NULL));

	json = igny8_json_parse(" {\"a\":1} \n", 10);
	CHECK(cJSON_IsObject(json));
	cJSON_Delete(json);
	CHECK(igny8_json_parse("{\"a\":1} x", 9) == NULL);
	CHECK(igny8_json_parse("{\"a\":1}\n{\"a\":2}\n", 16) == NULL);
	CHECK(igny8_json_parse("{\"a\":1", 6) == NULL);
	CHECK(igny8_json_parse("", 0) == NULL);
	CHECK(igny8_json_parse(NULL, 0) == NULL);
	CHECK(igny8_json_parse("{\"a\":1}\0", 8) == NULL);
	memcpy(unterminated, "[1,2]   ", 8);	/* no NUL in the buffer */
	json = igny8_json_parse(unterminated, 5);
	CHECK(cJSON_GetArraySize(json) == 2);
	cJSON_Delete(json);

	json = cJSON_Parse("{\"n\":3,\"neg\":-4,\"s\":\"5\",\"big\":1e30,\"f\":2.9}");
	CHECK_INT(igny8_json_count(json, "n"), 3);
	CHECK_INT(igny8_json_count(json, "neg"), 0);
	CHECK_INT(igny8_json_count(json, "s"), 0);
	CHECK_INT(igny8_json_count(json, "missing"), 0);
	CHECK_INT(igny8_json_count(json, "f"), 2);
	CHECK(igny8_json_count(json, "big") > 0);
	CHECK_INT(igny8_json_count(NULL, "n"), 0);
	CHECK(igny8_json_string(json, "s") != NULL);
	CHECK(igny8_json_string(json, "n") == NULL);
	cJSON_Delete(json);
	json = cJSON_Parse("[{\"a\":1}]");
	CHECK(igny8_json_member(json, "a") == NULL);
	cJSON_Delete(json);

	dst = cJSON_Parse("{\"a\":1,\"b\":2}");
	src = cJSON_Parse("{\"b\":20,\"c\":30}");
	igny8_json_merge(dst, src, false);
	printed = igny8_json_print(dst);
	CHECK_JSON(printed, "{\"a\":1,\"b\":2,\"c\":30}");
	igny8_json_merge(dst, src, true);
	printed = igny8_json_print(dst);
	CHECK_JSON(printed, "{\"a\":1,\"b\":20,\"c\":30}");
	igny8_json_set(dst, "a", cJSON_CreateString("x"));
	printed = igny8_json_print(dst);
	CHECK_STR(printed, "{\"b\":20,\"c\":30,\"a\":\"x\"}");
	cJSON_Delete(dst);
	cJSON_Delete(src);
	end_group();
}

/* ---------- Ollama ---------- */

static void
test_ollama_build(void)
{
	Igny8TextRequest req;
	Igny8HttpRequest out;

	begin_group("ollama: build /api/chat");
	req = make_request("qwen3:32b", basic_messages, 2, NULL);
	ollama->build_chat(&req, NULL, &out);
	CHECK_STR(out.method, "POST");
	CHECK_STR(out.path, "/api/chat");
	CHECK_INT(out.nheaders, 1);
	CHECK_STR(out.headers[0], "Content-Type: application/json");
	CHECK_STR(out.body,
			  "{\"model\":\"qwen3:32b\",\"messages\":" BASIC_MESSAGES_JSON
			  ",\"stream\":false,\"options\":{\"num_predict\":256}}");

	/* settings: keep_alive, think, options merged; request values win */
	req = make_request("qwen3:32b", basic_messages, 2,
					   "{\"keep_alive\":\"10m\",\"think\":true,"
					   "\"options\":{\"num_ctx\":8192,\"temperature\":0.1,"
					   "\"num_predict\":5,\"seed\":42},\"unknown\":1}");
	req.has_temperature = true;
	req.temperature = 0.7;
	ollama->build_chat(&req, NULL, &out);
	CHECK_JSON(out.body,
			   "{\"model\":\"qwen3:32b\",\"messages\":" BASIC_MESSAGES_JSON
			   ",\"stream\":false,\"options\":{\"num_ctx\":8192,"
			   "\"temperature\":0.7,\"num_predict\":256,\"seed\":42},"
			   "\"keep_alive\":\"10m\",\"think\":true}");

	/* without a request temperature the setting's stays */
	req.has_temperature = false;
	ollama->build_chat(&req, NULL, &out);
	CHECK_JSON(out.body,
			   "{\"model\":\"qwen3:32b\",\"messages\":" BASIC_MESSAGES_JSON
			   ",\"stream\":false,\"options\":{\"num_ctx\":8192,"
			   "\"temperature\":0.1,\"num_predict\":256,\"seed\":42},"
			   "\"keep_alive\":\"10m\",\"think\":true}");

	/* omit_think after a "does not support thinking" refusal */
	req.omit_think = true;
	ollama->build_chat(&req, NULL, &out);
	CHECK(!has_member(out.body, "think"));
	CHECK(has_member(out.body, "keep_alive"));

	/* keep_alive as a number, think as a level */
	req = make_request("gpt-oss:20b", basic_messages, 1,
					   "{\"keep_alive\":0,\"think\":\"high\"}");
	ollama->build_chat(&req, NULL, &out);
	CHECK_JSON(out.body,
			   "{\"model\":\"gpt-oss:20b\",\"messages\":[{\"role\":\"system\","
			   "\"content\":\"You are terse.\"}],\"stream\":false,"
			   "\"options\":{\"num_predict\":256},\"keep_alive\":0,"
			   "\"think\":\"high\"}");

	/* settings of the wrong types are ignored */
	req = make_request("m", basic_messages, 0,
					   "{\"keep_alive\":true,\"think\":1,\"options\":\"x\","
					   "\"stream\":true}");
	ollama->build_chat(&req, NULL, &out);
	CHECK_JSON(out.body,
			   "{\"model\":\"m\",\"messages\":[],\"stream\":false,"
			   "\"options\":{\"num_predict\":256}}");
	req = make_request("m", basic_messages, 0, "[1]");
	ollama->build_chat(&req, NULL, &out);
	CHECK_JSON(out.body,
			   "{\"model\":\"m\",\"messages\":[],\"stream\":false,"
			   "\"options\":{\"num_predict\":256}}");

	/* a key (for a proxy in front of Ollama) becomes a bearer header */
	req = make_request("m", basic_messages, 2, NULL);
	ollama->build_chat(&req, "sk-secret", &out);
	CHECK_INT(out.nheaders, 2);
	CHECK_STR(out.headers[1], "Authorization: Bearer sk-secret");
	CHECK(strstr(out.body, "sk-secret") == NULL);

	/* strings are escaped */
	{
		static const Igny8Message quoting[] = {{"user", "say \"hi\"\n\\ \xc3\xa9"}};

		req = make_request("m", quoting, 1, NULL);
		ollama->build_chat(&req, NULL, &out);
		CHECK_JSON(out.body,
				   "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
				   "\"content\":\"say \\\"hi\\\"\\n\\\\ \xc3\xa9\"}],"
				   "\"stream\":false,\"options\":{\"num_predict\":256}}");
	}
	end_group();
}

static void
test_ollama_parse(void)
{
	Igny8TextResult r;
	Igny8ProviderError e;

	begin_group("ollama: parse answers (thinking shapes, counters)");
	/* thinking in its own field */
	CHECK(parse(ollama, 200,
				"{\"model\":\"qwen3:32b\",\"created_at\":\"2025-01-01T00:00:00.1Z\","
				"\"message\":{\"role\":\"assistant\",\"content\":\"Paris.\","
				"\"thinking\":\"The capital of France.\"},\"done\":true,"
				"\"done_reason\":\"stop\",\"total_duration\":123456,"
				"\"prompt_eval_count\":12,\"eval_count\":34,"
				"\"eval_duration\":1000}", &r, &e));
	CHECK_STR(r.content, "Paris.");
	CHECK_STR(r.thinking, "The capital of France.");
	CHECK_STR(r.model, "qwen3:32b");
	CHECK_STR(r.finish_reason, "stop");
	CHECK_INT(r.input_tokens, 12);
	CHECK_INT(r.output_tokens, 34);
	CHECK(e.cls == IGNY8_ERR_NONE);

	/* thinking inline */
	CHECK(parse(ollama, 200,
				"{\"model\":\"deepseek-r1\",\"message\":{\"role\":\"assistant\","
				"\"content\":\"<think>\\nLet me think.\\n</think>\\n\\nParis.\"},"
				"\"done\":true,\"done_reason\":\"stop\",\"eval_count\":5}",
				&r, &e));
	CHECK_STR(r.content, "Paris.");
	CHECK_STR(r.thinking, "Let me think.");
	CHECK_INT(r.input_tokens, 0);
	CHECK_INT(r.output_tokens, 5);

	/* the empty block */
	CHECK(parse(ollama, 200,
				"{\"model\":\"qwen3\",\"message\":{\"role\":\"assistant\","
				"\"content\":\"<think>\\n\\n</think>\\n\\nParis.\"},\"done\":true}",
				&r, &e));
	CHECK_STR(r.content, "Paris.");
	CHECK_STR(r.thinking, NULL);

	/* field and block: the field wins, the block still goes */
	CHECK(parse(ollama, 200,
				"{\"model\":\"qwen3\",\"message\":{\"role\":\"assistant\","
				"\"content\":\"<think>inline</think>Paris.\","
				"\"thinking\":\"field\"},\"done\":true}", &r, &e));
	CHECK_STR(r.content, "Paris.");
	CHECK_STR(r.thinking, "field");

	/* an empty field does not hide the block */
	CHECK(parse(ollama, 200,
				"{\"message\":{\"content\":\"<think>inline</think>Paris.\","
				"\"thinking\":\"\"},\"done\":true}", &r, &e));
	CHECK_STR(r.thinking, "inline");

	/* counters, done_reason and model all missing */
	CHECK(parse(ollama, 200,
				"{\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},"
				"\"done\":true}", &r, &e));
	CHECK_STR(r.content, "ok");
	CHECK_STR(r.model, NULL);
	CHECK_STR(r.finish_reason, NULL);
	CHECK_INT(r.input_tokens, 0);
	CHECK_INT(r.output_tokens, 0);

	/* length, empty content, no "done" at all */
	CHECK(parse(ollama, 200,
				"{\"message\":{\"content\":\"\"},\"done_reason\":\"length\","
				"\"prompt_eval_count\":4096}", &r, &e));
	CHECK_STR(r.content, "");
	CHECK_STR(r.finish_reason, "length");
	CHECK_INT(r.input_tokens, 4096);

	/* an unclosed block is left alone */
	CHECK(parse(ollama, 200,
				"{\"message\":{\"content\":\"<think>cut off\"},\"done\":true,"
				"\"done_reason\":\"length\"}", &r, &e));
	CHECK_STR(r.content, "<think>cut off");
	CHECK_STR(r.thinking, NULL);
	end_group();
}

static void
test_ollama_errors(void)
{
	char	   *longbody;

	begin_group("ollama: errors and classes");
	CHECK_ERROR(ollama, 400, "{\"error\":\"model is required\"}",
				IGNY8_ERR_CALLER, "model is required");
	CHECK_ERROR(ollama, 400, "{\"error\":\"invalid model name\"}",
				IGNY8_ERR_CALLER, "invalid model name");
	check_error_full(ollama, 400,
					 "{\"error\":\"\\\"qwen2.5\\\" does not support thinking\"}",
					 -1, -1, IGNY8_ERR_RETRY, "does not support thinking",
					 -1, true, __LINE__);
	CHECK_ERROR(ollama, 400,
				"{\"error\":\"\\\"qwen2.5\\\" does not support tools\"}",
				IGNY8_ERR_CALLER, "does not support tools");
	CHECK_ERROR(ollama, 404, "{\"error\":\"model 'llama9' not found\"}",
				IGNY8_ERR_FALLBACK, "model 'llama9' not found");
	CHECK_ERROR(ollama, 404,
				"{\"error\":\"model \\\"x\\\" not found, try pulling it first\"}",
				IGNY8_ERR_FALLBACK, "try pulling it first");
	CHECK_ERROR(ollama, 500,
				"{\"error\":\"model requires more system memory (64 GiB) than is available\"}",
				IGNY8_ERR_RETRY, "more system memory");
	CHECK_ERROR(ollama, 502, "{\"error\":\"cloud model unreachable\"}",
				IGNY8_ERR_FALLBACK, "unreachable");
	CHECK_ERROR_H(ollama, 503,
				  "{\"error\":\"server busy, please try again.  maximum pending requests exceeded\"}",
				  2.0, -1, IGNY8_ERR_RETRY, "server busy", 2.0);
	/* a proxy's answers */
	CHECK_ERROR(ollama, 502, "<html><body>Bad Gateway</body></html>",
				IGNY8_ERR_FALLBACK,
				"HTTP 502 from Ollama: <html><body>Bad Gateway</body></html>");
	CHECK_ERROR(ollama, 500, NULL, IGNY8_ERR_RETRY, "HTTP 500 from Ollama");
	CHECK_ERROR(ollama, 500, "{}", IGNY8_ERR_RETRY, "HTTP 500 from Ollama: {}");
	CHECK_ERROR(ollama, 403, "{\"error\":{\"message\":\"forbidden by proxy\"}}",
				IGNY8_ERR_FALLBACK, "forbidden by proxy");
	CHECK_ERROR(ollama, 401, "Unauthorized", IGNY8_ERR_FALLBACK,
				"HTTP 401 from Ollama: Unauthorized");
	CHECK_ERROR(ollama, 504, "gateway timeout\r\n", IGNY8_ERR_RETRY,
				"HTTP 504 from Ollama: gateway timeout");
	/* x-should-retry from a proxy */
	CHECK_ERROR_H(ollama, 500, "{\"error\":\"runner crashed\"}", -1, 0,
				  IGNY8_ERR_FALLBACK, "runner crashed", -1);
	CHECK_ERROR_H(ollama, 502, "{\"error\":\"x\"}", 3, 1,
				  IGNY8_ERR_RETRY, "x", 3);

	/* a long message is cut */
	longbody = palloc(2100);
	strcpy(longbody, "{\"error\":\"");
	memset(longbody + 10, 'y', 2000);
	strcpy(longbody + 2010, "\"}");
	CHECK_ERROR(ollama, 400, longbody, IGNY8_ERR_CALLER, "yyy...");
	end_group();

	begin_group("ollama: malformed 200 answers");
	CHECK_ERROR(ollama, 200, "{\"error\":\"an error was encountered while running the model: unexpected EOF\"}",
				IGNY8_ERR_RETRY, "malformed response from Ollama: error \"an error was encountered");
	CHECK_ERROR(ollama, 200,
				"{\"model\":\"m\",\"message\":{\"content\":\"He\"},\"done\":false}",
				IGNY8_ERR_RETRY, "malformed response from Ollama: \"done\" is false");
	CHECK_ERROR(ollama, 200, "{\"model\":\"m\",\"done\":true}",
				IGNY8_ERR_RETRY, "malformed response from Ollama: no message.content");
	CHECK_ERROR(ollama, 200, "{\"message\":{\"content\":42},\"done\":true}",
				IGNY8_ERR_RETRY, "malformed response from Ollama");
	CHECK_ERROR(ollama, 200, "{\"message\":\"hi\",\"done\":true}",
				IGNY8_ERR_RETRY, "malformed response from Ollama");
	CHECK_ERROR(ollama, 200, "[1,2]", IGNY8_ERR_RETRY,
				"malformed response from Ollama: not a JSON object");
	CHECK_ERROR(ollama, 200, "Ollama is running", IGNY8_ERR_RETRY,
				"malformed JSON response");
	CHECK_ERROR(ollama, 200, "{\"model\":\"m\",\"message\":{\"content\":\"hi\"",
				IGNY8_ERR_RETRY, "malformed JSON response");
	CHECK_ERROR(ollama, 200,
				"{\"message\":{\"content\":\"He\"},\"done\":false}\n"
				"{\"message\":{\"content\":\"llo\"},\"done\":true}\n",
				IGNY8_ERR_RETRY, "malformed JSON response");
	CHECK_ERROR(ollama, 200, "", IGNY8_ERR_RETRY, "malformed JSON response");
	CHECK_ERROR(ollama, 200, NULL, IGNY8_ERR_RETRY, "malformed JSON response");
	end_group();
}

/* ---------- OpenAI ---------- */

static void
test_openai_build(void)
{
	Igny8TextRequest req;
	Igny8HttpRequest out;

	begin_group("openai: build /v1/chat/completions");
	req = make_request("gpt-4o-mini", basic_messages, 2, NULL);
	openai->build_chat(&req, NULL, &out);
	CHECK_STR(out.method, "POST");
	CHECK_STR(out.path, "/v1/chat/completions");
	CHECK_INT(out.nheaders, 1);
	CHECK_STR(out.headers[0], "Content-Type: application/json");
	CHECK_STR(out.body,
			  "{\"model\":\"gpt-4o-mini\",\"messages\":" BASIC_MESSAGES_JSON
			  ",\"max_tokens\":256}");

	req.has_temperature = true;
	req.temperature = 0.2;
	openai->build_chat(&req, "sk-test", &out);
	CHECK_INT(out.nheaders, 2);
	CHECK_STR(out.headers[0], "Content-Type: application/json");
	CHECK_STR(out.headers[1], "Authorization: Bearer sk-test");
	CHECK_JSON(out.body,
			   "{\"model\":\"gpt-4o-mini\",\"messages\":" BASIC_MESSAGES_JSON
			   ",\"max_tokens\":256,\"temperature\":0.2}");
	CHECK(strstr(out.body, "sk-test") == NULL);

	req = make_request("o3-mini", basic_messages, 2,
					   "{\"max_tokens_field\":\"max_completion_tokens\"}");
	openai->build_chat(&req, "sk-test", &out);
	CHECK_JSON(out.body,
			   "{\"model\":\"o3-mini\",\"messages\":" BASIC_MESSAGES_JSON
			   ",\"max_completion_tokens\":256}");
	req = make_request("m", basic_messages, 2,
					   "{\"max_tokens_field\":\"n_predict\"}");
	openai->build_chat(&req, NULL, &out);
	CHECK(has_member(out.body, "max_tokens"));
	CHECK(!has_member(out.body, "n_predict"));

	/* extra_body: added, never over the request's own fields, no stream */
	req = make_request("gpt-4o-mini", basic_messages, 2,
					   "{\"extra_body\":{\"top_p\":0.5,\"model\":\"evil\","
					   "\"stream\":true,\"reasoning_effort\":\"low\","
					   "\"messages\":[],\"max_tokens\":1,\"temperature\":2,"
					   "\"chat_template_kwargs\":{\"enable_thinking\":false}}}");
	openai->build_chat(&req, NULL, &out);
	CHECK_JSON(out.body,
			   "{\"model\":\"gpt-4o-mini\",\"messages\":" BASIC_MESSAGES_JSON
			   ",\"max_tokens\":256,\"top_p\":0.5,\"reasoning_effort\":\"low\","
			   "\"temperature\":2,"
			   "\"chat_template_kwargs\":{\"enable_thinking\":false}}");
	req = make_request("m", basic_messages, 0, "{\"extra_body\":[1,2]}");
	openai->build_chat(&req, NULL, &out);
	CHECK_JSON(out.body, "{\"model\":\"m\",\"messages\":[],\"max_tokens\":256}");
	end_group();
}

static void
test_openai_parse(void)
{
	Igny8TextResult r;
	Igny8ProviderError e;

	begin_group("openai: parse answers");
	CHECK(parse(openai, 200,
				"{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\","
				"\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\","
				"\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,"
				"\"message\":{\"role\":\"assistant\",\"content\":\"Hello!\","
				"\"refusal\":null,\"annotations\":[]},\"logprobs\":null,"
				"\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,"
				"\"completion_tokens\":3,\"total_tokens\":12,"
				"\"prompt_tokens_details\":{\"cached_tokens\":0},"
				"\"completion_tokens_details\":{\"reasoning_tokens\":0}}}",
				&r, &e));
	CHECK_STR(r.content, "Hello!");
	CHECK_STR(r.thinking, NULL);
	CHECK_STR(r.model, "gpt-4o-mini-2024-07-18");
	CHECK_STR(r.finish_reason, "stop");
	CHECK_INT(r.input_tokens, 9);
	CHECK_INT(r.output_tokens, 3);

	/* null content (tool calls, refusal) is an empty answer */
	CHECK(parse(openai, 200,
				"{\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"message\":"
				"{\"role\":\"assistant\",\"content\":null,\"refusal\":\"no\"},"
				"\"finish_reason\":\"content_filter\"}],\"usage\":"
				"{\"prompt_tokens\":5,\"completion_tokens\":0}}", &r, &e));
	CHECK_STR(r.content, "");
	CHECK_STR(r.finish_reason, "content_filter");
	CHECK_INT(r.output_tokens, 0);

	/* Ollama's /v1: reasoning in its own field */
	CHECK(parse(openai, 200,
				"{\"id\":\"chatcmpl-7\",\"object\":\"chat.completion\","
				"\"model\":\"qwen3:8b\",\"system_fingerprint\":\"fp_ollama\","
				"\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
				"\"content\":\"4\",\"reasoning\":\"2 + 2 = 4\"},"
				"\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":11,"
				"\"completion_tokens\":20,\"total_tokens\":31}}", &r, &e));
	CHECK_STR(r.content, "4");
	CHECK_STR(r.thinking, "2 + 2 = 4");
	CHECK_INT(r.input_tokens, 11);
	CHECK_INT(r.output_tokens, 20);

	/* vLLM: reasoning_content */
	CHECK(parse(openai, 200,
				"{\"model\":\"r1\",\"choices\":[{\"message\":{\"content\":\"yes\","
				"\"reasoning_content\":\"hmm\"},\"finish_reason\":\"stop\"}]}",
				&r, &e));
	CHECK_STR(r.content, "yes");
	CHECK_STR(r.thinking, "hmm");

	/* inline tags from a server without a reasoning parser */
	CHECK(parse(openai, 200,
				"{\"model\":\"r1\",\"choices\":[{\"message\":{\"content\":"
				"\"<think>\\nstep 1\\n</think>\\n\\nDone.\"},\"finish_reason\":\"length\"}]}",
				&r, &e));
	CHECK_STR(r.content, "Done.");
	CHECK_STR(r.thinking, "step 1");
	CHECK_STR(r.finish_reason, "length");

	/* reasoning field and inline tags: the field wins, the tags go */
	CHECK(parse(openai, 200,
				"{\"choices\":[{\"message\":{\"content\":\"<think>x</think>ok\","
				"\"reasoning\":\"field\"}}]}", &r, &e));
	CHECK_STR(r.content, "ok");
	CHECK_STR(r.thinking, "field");

	/* missing usage, finish_reason, model and content */
	CHECK(parse(openai, 200, "{\"choices\":[{\"message\":{\"role\":\"assistant\"}}]}",
				&r, &e));
	CHECK_STR(r.content, "");
	CHECK_STR(r.model, NULL);
	CHECK_STR(r.finish_reason, NULL);
	CHECK_INT(r.input_tokens, 0);
	CHECK_INT(r.output_tokens, 0);
	end_group();
}

static void
test_openai_errors(void)
{
	static const long retry[] = {500, 502, 503, 504, 408, 409};
	int			i;

	begin_group("openai: errors and classes");
	CHECK_ERROR(openai, 400,
				"{\"error\":{\"message\":\"This model's maximum context length is 128000 tokens.\","
				"\"type\":\"invalid_request_error\",\"param\":\"messages\","
				"\"code\":\"context_length_exceeded\"}}",
				IGNY8_ERR_CALLER, "maximum context length is 128000 tokens");
	CHECK_ERROR(openai, 400,
				"{\"error\":{\"message\":\"Unsupported parameter: 'max_tokens' is not supported with this model.\","
				"\"type\":\"invalid_request_error\",\"param\":\"max_tokens\","
				"\"code\":\"unsupported_parameter\"}}",
				IGNY8_ERR_CALLER, "Unsupported parameter");
	CHECK_ERROR(openai, 401,
				"{\"error\":{\"message\":\"Incorrect API key provided.\","
				"\"type\":\"invalid_request_error\",\"param\":null,"
				"\"code\":\"invalid_api_key\"}}",
				IGNY8_ERR_FALLBACK, "Incorrect API key provided.");
	CHECK_ERROR(openai, 403,
				"{\"error\":{\"message\":\"Country, region, or territory not supported\","
				"\"type\":\"request_forbidden\",\"param\":null,"
				"\"code\":\"unsupported_country_region_territory\"}}",
				IGNY8_ERR_FALLBACK, "not supported");
	CHECK_ERROR(openai, 404,
				"{\"error\":{\"message\":\"The model `gpt-9` does not exist or you do not have access to it.\","
				"\"type\":\"invalid_request_error\",\"param\":null,"
				"\"code\":\"model_not_found\"}}",
				IGNY8_ERR_FALLBACK, "does not exist");
	/* billing: never retried, whatever the headers say */
	CHECK_ERROR_H(openai, 429,
				  "{\"error\":{\"message\":\"You exceeded your current quota, please check your plan and billing details.\","
				  "\"type\":\"insufficient_quota\",\"param\":null,"
				  "\"code\":\"insufficient_quota\"}}",
				  20, 1, IGNY8_ERR_FALLBACK, "exceeded your current quota", 20);
	CHECK_ERROR(openai, 429,
				"{\"error\":{\"message\":\"quota\",\"type\":\"requests\","
				"\"param\":null,\"code\":\"insufficient_quota\"}}",
				IGNY8_ERR_FALLBACK, "quota");
	CHECK_ERROR(openai, 429,
				"{\"error\":{\"message\":\"quota\",\"type\":\"insufficient_quota\","
				"\"param\":null,\"code\":null}}",
				IGNY8_ERR_FALLBACK, "quota");
	CHECK_ERROR_H(openai, 429,
				  "{\"error\":{\"message\":\"Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 50000.\","
				  "\"type\":\"tokens\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}",
				  1, -1, IGNY8_ERR_FALLBACK, "Request too large", 1);
	/* a plain rate limit: retry after what the headers said */
	CHECK_ERROR_H(openai, 429,
				  "{\"error\":{\"message\":\"Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.\","
				  "\"type\":\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}",
				  1.5, -1, IGNY8_ERR_RETRY, "Rate limit reached", 1.5);
	CHECK_ERROR_H(openai, 429, "{\"error\":{\"message\":\"slow down\"}}",
				  -1, -1, IGNY8_ERR_RETRY, "slow down", -1);
	for (i = 0; i < (int) lengthof(retry); i++)
		CHECK_ERROR(openai, retry[i],
					"{\"error\":{\"message\":\"The server had an error while processing your request.\","
					"\"type\":\"server_error\",\"param\":null,\"code\":null}}",
					IGNY8_ERR_RETRY, "The server had an error");
	/* x-should-retry */
	CHECK_ERROR_H(openai, 500, "{\"error\":{\"message\":\"boom\"}}", -1, 0,
				  IGNY8_ERR_FALLBACK, "boom", -1);
	CHECK_ERROR_H(openai, 429, "{\"error\":{\"message\":\"wait\"}}", 4, 0,
				  IGNY8_ERR_FALLBACK, "wait", 4);
	CHECK_ERROR_H(openai, 409, "{\"error\":{\"message\":\"lock\"}}", -1, 1,
				  IGNY8_ERR_RETRY, "lock", -1);
	CHECK_ERROR_H(openai, 400, "{\"error\":{\"message\":\"flaky\"}}", -1, 1,
				  IGNY8_ERR_RETRY, "flaky", -1);
	/* other servers' shapes */
	CHECK_ERROR(openai, 400,
				"{\"object\":\"error\",\"message\":\"max_tokens is too large\","
				"\"type\":\"BadRequestError\",\"param\":null,\"code\":400}",
				IGNY8_ERR_CALLER, "max_tokens is too large");
	CHECK_ERROR(openai, 404, "{\"error\":\"model \\\"x\\\" not found\"}",
				IGNY8_ERR_FALLBACK, "model \"x\" not found");
	CHECK_ERROR(openai, 502, "<html><head><title>502 Bad Gateway</title></head></html>",
				IGNY8_ERR_RETRY, "HTTP 502 from OpenAI-compatible API: <html>");
	CHECK_ERROR(openai, 503, NULL, IGNY8_ERR_RETRY,
				"HTTP 503 from OpenAI-compatible API");
	CHECK_ERROR(openai, 422, "{\"detail\":[{\"loc\":[\"body\"]}]}",
				IGNY8_ERR_CALLER, "HTTP 422 from OpenAI-compatible API: {\"detail\"");
	end_group();

	begin_group("openai: malformed 200 answers");
	CHECK_ERROR(openai, 200, "{\"id\":\"x\",\"object\":\"chat.completion\"}",
				IGNY8_ERR_RETRY, "no choices");
	CHECK_ERROR(openai, 200, "{\"choices\":[]}", IGNY8_ERR_RETRY, "no choices");
	CHECK_ERROR(openai, 200, "{\"choices\":[1]}", IGNY8_ERR_RETRY,
				"no choices[0].message");
	CHECK_ERROR(openai, 200, "{\"choices\":[{\"message\":{\"content\":[1]}}]}",
				IGNY8_ERR_RETRY, "message.content is not a string");
	CHECK_ERROR(openai, 200,
				"{\"error\":{\"message\":\"upstream failed\",\"code\":502}}",
				IGNY8_ERR_RETRY, "error \"upstream failed\"");
	CHECK_ERROR(openai, 200, "\"text\"", IGNY8_ERR_RETRY, "not a JSON object");
	CHECK_ERROR(openai, 200, "data: {\"choices\":[]}\n\ndata: [DONE]\n\n",
				IGNY8_ERR_RETRY, "malformed JSON response");
	CHECK_ERROR(openai, 200, "{\"choices\":[{\"message\":{\"content\":\"Hel",
				IGNY8_ERR_RETRY, "malformed JSON response");
	CHECK_ERROR(openai, 200, NULL, IGNY8_ERR_RETRY, "malformed JSON response");
	end_group();
}

/* ---------- Anthropic ---------- */

static void
test_anthropic_build(void)
{
	static const Igny8Message convo[] = {
		{"system", "Be brief."},
		{"user", "Hi"},
		{"assistant", "Hello"},
		{"system", "Answer in French."},
		{"system", ""},
		{"user", "Bye"},
		{"user", "Really"}
	};
	static const Igny8Message no_system[] = {{"user", "Hi"}};
	Igny8TextRequest req;
	Igny8HttpRequest out;

	begin_group("anthropic: build /v1/messages");
	req = make_request("claude-sonnet-4-5", convo, lengthof(convo), NULL);
	anthropic->build_chat(&req, "sk-ant-test", &out);
	CHECK_STR(out.method, "POST");
	CHECK_STR(out.path, "/v1/messages");
	CHECK_INT(out.nheaders, 3);
	CHECK_STR(out.headers[0], "Content-Type: application/json");
	CHECK_STR(out.headers[1], "x-api-key: sk-ant-test");
	CHECK_STR(out.headers[2], "anthropic-version: 2023-06-01");
	CHECK_STR(out.body,
			  "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":256,"
			  "\"system\":\"Be brief.\\n\\nAnswer in French.\","
			  "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
			  "{\"role\":\"assistant\",\"content\":\"Hello\"},"
			  "{\"role\":\"user\",\"content\":\"Bye\"},"
			  "{\"role\":\"user\",\"content\":\"Really\"}]}");
	CHECK(strstr(out.body, "sk-ant-test") == NULL);

	/* no key, no system, version from the settings */
	req = make_request("claude-haiku-4-5", no_system, 1,
					   "{\"anthropic_version\":\"2024-10-22\"}");
	anthropic->build_chat(&req, NULL, &out);
	CHECK_INT(out.nheaders, 2);
	CHECK_STR(out.headers[0], "Content-Type: application/json");
	CHECK_STR(out.headers[1], "anthropic-version: 2024-10-22");
	CHECK_JSON(out.body,
			   "{\"model\":\"claude-haiku-4-5\",\"max_tokens\":256,"
			   "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}");
	CHECK(!has_member(out.body, "system"));

	/* temperature: 0-1 as is, above 1 sent as 1 */
	req = make_request("c", no_system, 1, NULL);
	req.has_temperature = true;
	req.temperature = 1.5;
	anthropic->build_chat(&req, "k", &out);
	CHECK_JSON(out.body,
			   "{\"model\":\"c\",\"max_tokens\":256,\"messages\":"
			   "[{\"role\":\"user\",\"content\":\"Hi\"}],\"temperature\":1}");
	req.temperature = 2.0;
	anthropic->build_chat(&req, "k", &out);
	CHECK_CONTAINS(out.body, "\"temperature\":1}");
	req.temperature = 0.3;
	anthropic->build_chat(&req, "k", &out);
	CHECK_CONTAINS(out.body, "\"temperature\":0.3}");
	req.temperature = 0;
	anthropic->build_chat(&req, "k", &out);
	CHECK_CONTAINS(out.body, "\"temperature\":0}");
	req.max_tokens = 64000;
	req.has_temperature = false;
	anthropic->build_chat(&req, "k", &out);
	CHECK(!has_member(out.body, "temperature"));
	CHECK_CONTAINS(out.body, "\"max_tokens\":64000");

	/* a key with a line break cannot inject a header */
	anthropic->build_chat(&req, "k\r\nX-Evil: 1", &out);
	CHECK_INT(out.nheaders, 3);
	CHECK(strchr(out.headers[1], '\n') == NULL);
	CHECK(strchr(out.headers[1], '\r') == NULL);
	end_group();
}

static void
test_anthropic_parse(void)
{
	Igny8TextResult r;
	Igny8ProviderError e;

	begin_group("anthropic: parse answers (joined text blocks, thinking)");
	CHECK(parse(anthropic, 200,
				"{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\","
				"\"model\":\"claude-sonnet-4-5-20250929\",\"content\":["
				"{\"type\":\"thinking\",\"thinking\":\"Let me see.\",\"signature\":\"abc\"},"
				"{\"type\":\"text\",\"text\":\"Hello, \"},"
				"{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"f\",\"input\":{}},"
				"{\"type\":\"redacted_thinking\",\"data\":\"xyz\"},"
				"{\"type\":\"text\",\"text\":\"world\"}],"
				"\"stop_reason\":\"end_turn\",\"stop_sequence\":null,"
				"\"usage\":{\"input_tokens\":10,\"output_tokens\":5,"
				"\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0}}",
				&r, &e));
	CHECK_STR(r.content, "Hello, world");
	CHECK_STR(r.thinking, "Let me see.");
	CHECK_STR(r.model, "claude-sonnet-4-5-20250929");
	CHECK_STR(r.finish_reason, "end_turn");
	CHECK_INT(r.input_tokens, 10);
	CHECK_INT(r.output_tokens, 5);

	CHECK(parse(anthropic, 200,
				"{\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"}],"
				"\"stop_reason\":\"max_tokens\"}", &r, &e));
	CHECK_STR(r.content, "Hi");
	CHECK_STR(r.thinking, NULL);
	CHECK_STR(r.model, NULL);
	CHECK_STR(r.finish_reason, "max_tokens");
	CHECK_INT(r.input_tokens, 0);
	CHECK_INT(r.output_tokens, 0);

	/* only non-text blocks: an empty answer */
	CHECK(parse(anthropic, 200,
				"{\"type\":\"message\",\"content\":[{\"type\":\"thinking\","
				"\"thinking\":\"a\"},{\"type\":\"thinking\",\"thinking\":\"b\"},"
				"{\"type\":\"text\"},{\"text\":\"untyped\"}],"
				"\"usage\":{\"input_tokens\":3}}", &r, &e));
	CHECK_STR(r.content, "");
	CHECK_STR(r.thinking, "a\n\nb");
	CHECK_INT(r.input_tokens, 3);
	CHECK(parse(anthropic, 200, "{\"content\":[]}", &r, &e));
	CHECK_STR(r.content, "");
	end_group();
}

static void
test_anthropic_errors(void)
{
	static const long fallback[] = {401, 402, 403, 404};
	static const long retry[] = {429, 500, 504, 529};
	Igny8TextResult r;
	Igny8ProviderError e;
	int			i;

	begin_group("anthropic: errors and classes");
	CHECK_ERROR(anthropic, 400,
				"{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
				"\"message\":\"messages: roles must alternate\"},\"request_id\":\"req_1\"}",
				IGNY8_ERR_CALLER, "roles must alternate");
	CHECK_ERROR(anthropic, 400,
				"{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
				"\"message\":\"Your credit balance is too low to access the Anthropic API. "
				"Please go to Plans & Billing to upgrade or purchase credits.\"}}",
				IGNY8_ERR_FALLBACK, "credit balance is too low");
	for (i = 0; i < (int) lengthof(fallback); i++)
		CHECK_ERROR(anthropic, fallback[i],
					"{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","
					"\"message\":\"invalid x-api-key\"}}",
					IGNY8_ERR_FALLBACK, "invalid x-api-key");
	CHECK_ERROR(anthropic, 413,
				"{\"type\":\"error\",\"error\":{\"type\":\"request_too_large\","
				"\"message\":\"Request exceeds the maximum allowed number of bytes.\"}}",
				IGNY8_ERR_CALLER, "maximum allowed number of bytes");
	/* Cloudflare's 413 is HTML */
	CHECK_ERROR(anthropic, 413,
				"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n"
				"<body><center><h1>413 Request Entity Too Large</h1></center>"
				"<hr><center>cloudflare</center></body></html>",
				IGNY8_ERR_CALLER, "HTTP 413 from Anthropic: <html>  <head><title>413");
	for (i = 0; i < (int) lengthof(retry); i++)
		CHECK_ERROR_H(anthropic, retry[i],
					  "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
					  "\"message\":\"Overloaded\"}}",
					  7, -1, IGNY8_ERR_RETRY, "Overloaded", 7);
	CHECK_ERROR_H(anthropic, 429,
				  "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\","
				  "\"message\":\"Number of request tokens has exceeded your per-minute rate limit\"}}",
				  30, -1, IGNY8_ERR_RETRY, "rate limit", 30);
	/* x-should-retry */
	CHECK_ERROR_H(anthropic, 529,
				  "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
				  "\"message\":\"Overloaded\"}}",
				  -1, 0, IGNY8_ERR_FALLBACK, "Overloaded", -1);
	CHECK_ERROR_H(anthropic, 402,
				  "{\"type\":\"error\",\"error\":{\"type\":\"billing_error\","
				  "\"message\":\"billing\"}}",
				  -1, 1, IGNY8_ERR_FALLBACK, "billing", -1);
	CHECK_ERROR(anthropic, 500, "", IGNY8_ERR_RETRY, "HTTP 500 from Anthropic");
	CHECK_ERROR(anthropic, 503, "{\"error\":\"upstream connect error\"}",
				IGNY8_ERR_RETRY, "upstream connect error");
	CHECK_ERROR(anthropic, 500, "{\"type\":\"error\",\"error\":{\"type\":\"api_error\"}}",
				IGNY8_ERR_RETRY, "HTTP 500 from Anthropic: {\"type\"");
	end_group();

	begin_group("anthropic: malformed 200 answers");
	CHECK_ERROR(anthropic, 200, "not json", IGNY8_ERR_RETRY,
				"malformed JSON response");
	CHECK_ERROR(anthropic, 200,
				"{\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"Hel",
				IGNY8_ERR_RETRY, "malformed JSON response");
	CHECK_ERROR(anthropic, 200, "{\"type\":\"message\",\"content\":\"Hello\"}",
				IGNY8_ERR_RETRY, "no content array");
	CHECK_ERROR(anthropic, 200, "{\"type\":\"message\"}",
				IGNY8_ERR_RETRY, "no content array");
	CHECK_ERROR(anthropic, 200,
				"{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
				"\"message\":\"Overloaded\"}}",
				IGNY8_ERR_RETRY, "malformed response from Anthropic: error \"Overloaded\"");
	CHECK_ERROR(anthropic, 200, "null", IGNY8_ERR_RETRY, "not a JSON object");
	CHECK_ERROR(anthropic, 200,
				"{\"content\":[],\"error\":{\"message\":\"proxy failed\"}}",
				IGNY8_ERR_RETRY, "error \"proxy failed\"");
	CHECK(parse(anthropic, 200, "{\"content\":[{\"type\":\"text\",\"text\":\"a\"}],"
				"\"error\":null}", &r, &e));
	CHECK_STR(r.content, "a");
	CHECK_ERROR(anthropic, 200, "   ", IGNY8_ERR_RETRY, "malformed JSON response");
	end_group();
}

/* ---------- health probes ---------- */

/* Parse a probe answer (and write it as a seed when asked to). */
static void
probe(const Igny8ProbeProtocol *proto, long status, const char *body,
	  const char *const *models, int nmodels, Igny8ProbeResult *out)
{
	Igny8HttpResponse resp;

	resp.status = status;
	resp.body = body;
	resp.body_len = body ? strlen(body) : 0;
	resp.retry_after = -1;
	resp.should_retry = -1;
	if (corpus_dir != NULL)
		write_seed(&resp);
	memset(out, 0x7f, sizeof(*out));	/* parse_probe must set every field */
	proto->parse_probe(&resp, models, nmodels, out);
}

/* Is text a JSON object? */
static bool
is_json_object(const char *text)
{
	cJSON	   *json = text ? cJSON_Parse(text) : NULL;
	bool		ok = cJSON_IsObject(json);

	cJSON_Delete(json);
	return ok;
}

/*
 * Check the flags, the summary and the detail (compared as JSON) of a
 * probe result.
 */
static void
check_probe(const Igny8ProbeResult *r, bool healthy, bool degraded,
			const char *summary, const char *detail, int line)
{
	check(r->reachable, line, "probe: not reachable");
	check(r->healthy == healthy, line, "probe: healthy = %d, expected %d",
		  (int) r->healthy, (int) healthy);
	check(r->degraded == degraded, line, "probe: degraded = %d, expected %d",
		  (int) r->degraded, (int) degraded);
	check_str(r->summary, summary, "summary", line);
	check(is_json_object(r->detail_json), line,
		  "probe: detail_json is not a JSON object: %s",
		  r->detail_json ? r->detail_json : "(null)");
	check_json(r->detail_json, detail, line);
}

#define CHECK_PROBE(r, healthy, degraded, summary, detail) \
	check_probe(&(r), (healthy), (degraded), (summary), (detail), __LINE__)

/* Check that a probe request is a GET without a body. */
static void
check_probe_request(const Igny8HttpRequest *out, const char *path,
					int nheaders, int line)
{
	check_str(out->method, "GET", "method", line);
	check_str(out->path, path, "path", line);
	check(out->body == NULL, line, "probe request has a body");
	check(out->nheaders == nheaders, line, "nheaders = %d, expected %d",
		  out->nheaders, nheaders);
}

#define CHECK_PROBE_REQUEST(out, path, nheaders) \
	check_probe_request(&(out), (path), (nheaders), __LINE__)

/* Does any header of the request start with prefix (case ignored)? */
static bool
has_header(const Igny8HttpRequest *out, const char *prefix)
{
	int			i;

	for (i = 0; i < out->nheaders; i++)
	{
		if (pg_strncasecmp(out->headers[i], prefix, strlen(prefix)) == 0)
			return true;
	}
	return false;
}

static const Igny8ProbeProtocol *ollama_probe = &igny8_ollama_probe;
static const Igny8ProbeProtocol *openai_probe = &igny8_openai_probe;
static const Igny8ProbeProtocol *anthropic_probe = &igny8_anthropic_probe;
static const Igny8ProbeProtocol *comfyui_probe = &igny8_comfyui_probe;

#define OLLAMA_TAGS \
	"{\"models\":[" \
	"{\"name\":\"qwen3:32b\",\"model\":\"qwen3:32b\"," \
	"\"modified_at\":\"2025-05-01T10:00:00.123456789+02:00\"," \
	"\"size\":20201253588,\"digest\":\"e1c9f234c6eb\"," \
	"\"details\":{\"parent_model\":\"\",\"format\":\"gguf\"," \
	"\"family\":\"qwen3\",\"families\":[\"qwen3\"]," \
	"\"parameter_size\":\"32.8B\",\"quantization_level\":\"Q4_K_M\"}}," \
	"{\"name\":\"llama3.2:latest\",\"model\":\"llama3.2:latest\"," \
	"\"size\":2019393189,\"details\":{\"family\":\"llama\"}}," \
	"{\"name\":\"nomic-embed-text:latest\",\"model\":\"nomic-embed-text:latest\"}]}"

static void
test_probe_table(void)
{
	begin_group("probes: protocol table");
	CHECK(igny8_probe_protocol(IGNY8_KIND_OLLAMA) == &igny8_ollama_probe);
	CHECK(igny8_probe_protocol(IGNY8_KIND_OPENAI) == &igny8_openai_probe);
	CHECK(igny8_probe_protocol(IGNY8_KIND_ANTHROPIC) == &igny8_anthropic_probe);
	CHECK(igny8_probe_protocol(IGNY8_KIND_COMFYUI) == &igny8_comfyui_probe);
	CHECK(igny8_probe_protocol(IGNY8_KIND_INVALID) == NULL);
	CHECK_STR(ollama_probe->name, "ollama");
	CHECK_STR(openai_probe->name, "openai");
	CHECK_STR(anthropic_probe->name, "anthropic");
	CHECK_STR(comfyui_probe->name, "comfyui");
	end_group();
}

static void
test_ollama_probe(void)
{
	static const char *const all[] = {"qwen3:32b", "llama3.2:latest"};
	static const char *const untagged[] = {"llama3.2", "nomic-embed-text"};
	static const char *const one_missing[] = {"qwen3:32b", "llama3.2",
	"qwen3:8b"};
	static const char *const two_missing[] = {"deepseek-r1:70b", "qwen3",
	"qwen3:32b"};
	static const char *const messy[] = {"qwen3:32b", NULL, "", "qwen3:32b",
	"gone", "gone"};
	cJSON	   *settings = cJSON_Parse("{\"anthropic_version\":\"x\"}");
	Igny8HttpRequest out;
	Igny8ProbeResult r;

	begin_group("ollama probe: build GET /api/tags");
	ollama_probe->build_probe(NULL, NULL, &out);
	CHECK_PROBE_REQUEST(out, "/api/tags", 0);
	ollama_probe->build_probe("sk-proxy", settings, &out);
	CHECK_PROBE_REQUEST(out, "/api/tags", 1);
	CHECK_STR(out.headers[0], "Authorization: Bearer sk-proxy");
	ollama_probe->build_probe("k\r\nX-Evil: 1", NULL, &out);
	CHECK_INT(out.nheaders, 1);
	CHECK(strchr(out.headers[0], '\n') == NULL);
	end_group();

	begin_group("ollama probe: models present, missing, tag defaulting");
	probe(ollama_probe, 200, OLLAMA_TAGS, all, lengthof(all), &r);
	CHECK_PROBE(r, true, false, "all 2 configured models present",
				"{\"models_present\":2,\"models_listed\":3,\"models_missing\":[]}");
	/* configured without a tag, listed as :latest */
	probe(ollama_probe, 200, OLLAMA_TAGS, untagged, lengthof(untagged), &r);
	CHECK_PROBE(r, true, false, "all 2 configured models present",
				"{\"models_present\":2,\"models_listed\":3,\"models_missing\":[]}");
	/* configured as :latest, listed without a tag (the other way round) */
	{
		static const char *const latest[] = {"mymodel:latest"};

		probe(ollama_probe, 200, "{\"models\":[{\"name\":\"mymodel\"}]}",
			  latest, 1, &r);
		CHECK_PROBE(r, true, false, "1 configured model present",
					"{\"models_present\":1,\"models_listed\":1,\"models_missing\":[]}");
	}
	/* a different tag is a different model */
	probe(ollama_probe, 200, OLLAMA_TAGS, one_missing, lengthof(one_missing),
		  &r);
	CHECK_PROBE(r, true, true, "model qwen3:8b missing",
				"{\"models_missing\":[\"qwen3:8b\"],\"models_present\":2,"
				"\"models_listed\":3}");
	probe(ollama_probe, 200, OLLAMA_TAGS, two_missing, lengthof(two_missing),
		  &r);
	CHECK_PROBE(r, true, true, "2 models missing: deepseek-r1:70b, qwen3",
				"{\"models_missing\":[\"deepseek-r1:70b\",\"qwen3\"],"
				"\"models_present\":1,\"models_listed\":3}");
	/* NULL, empty and repeated names are counted once or not at all */
	probe(ollama_probe, 200, OLLAMA_TAGS, messy, lengthof(messy), &r);
	CHECK_PROBE(r, true, true, "model gone missing",
				"{\"models_missing\":[\"gone\"],\"models_present\":1,"
				"\"models_listed\":3}");
	/* no models configured */
	probe(ollama_probe, 200, OLLAMA_TAGS, NULL, 0, &r);
	CHECK_PROBE(r, true, false, "running, no models configured",
				"{\"models_present\":0,\"models_listed\":3,\"models_missing\":[]}");
	probe(ollama_probe, 200, "{\"models\":[]}", all, lengthof(all), &r);
	CHECK_PROBE(r, true, true, "2 models missing: qwen3:32b, llama3.2:latest",
				"{\"models_missing\":[\"qwen3:32b\",\"llama3.2:latest\"],"
				"\"models_present\":0,\"models_listed\":0}");
	/* the "model" field counts as well as "name"; junk entries are skipped */
	{
		static const char *const by_model[] = {"a:1", "b"};

		probe(ollama_probe, 200,
			  "{\"models\":[{\"name\":\"alias\",\"model\":\"a:1\"},"
			  "{\"model\":\"b:latest\"},7,{\"name\":3},null]}",
			  by_model, 2, &r);
		CHECK_PROBE(r, true, false, "all 2 configured models present",
					"{\"models_present\":2,\"models_listed\":5,\"models_missing\":[]}");
	}
	/* a namespace, and a registry port that is not a tag */
	{
		static const char *const spaced[] = {"ns/x", "host:5000/ns/y",
		"host:5000/ns/z:latest"};

		probe(ollama_probe, 200,
			  "{\"models\":[{\"name\":\"ns/x:latest\"},"
			  "{\"name\":\"host:5000/ns/y:latest\"},"
			  "{\"name\":\"host:5000/ns/z\"},{\"name\":\"host:latest\"}]}",
			  spaced, 3, &r);
		CHECK_PROBE(r, true, false, "all 3 configured models present",
					"{\"models_present\":3,\"models_listed\":4,\"models_missing\":[]}");
	}
	{
		static const char *const near[] = {"x", "x:latest2", "y:late"};

		probe(ollama_probe, 200,
			  "{\"models\":[{\"name\":\"x:latest2\"},{\"name\":\"y\"},"
			  "{\"name\":\"xx:latest\"}]}", near, 3, &r);
		CHECK_PROBE(r, true, true, "2 models missing: x, y:late",
					"{\"models_missing\":[\"x\",\"y:late\"],\"models_present\":1,"
					"\"models_listed\":3}");
	}
	end_group();

	begin_group("ollama probe: errors and malformed answers");
	probe(ollama_probe, 500, "{\"error\":\"something went wrong\"}", all, 2,
		  &r);
	CHECK_PROBE(r, false, false, "HTTP 500: something went wrong",
				"{\"http_status\":500,\"error\":\"something went wrong\"}");
	probe(ollama_probe, 401, "{\"error\":{\"message\":\"bad token\"}}", NULL,
		  0, &r);
	CHECK_PROBE(r, false, false, "HTTP 401: bad token",
				"{\"http_status\":401,\"error\":\"bad token\"}");
	probe(ollama_probe, 502, "<html><body>Bad Gateway</body></html>\r\n",
		  NULL, 0, &r);
	CHECK_PROBE(r, false, false,
				"HTTP 502: <html><body>Bad Gateway</body></html>",
				"{\"http_status\":502,\"error\":\"<html><body>Bad Gateway</body></html>\"}");
	probe(ollama_probe, 503, NULL, NULL, 0, &r);
	CHECK_PROBE(r, false, false, "HTTP 503: empty response body",
				"{\"http_status\":503,\"error\":\"empty response body\"}");
	probe(ollama_probe, 404, "{\"error\":\"  \"}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "HTTP 404: {\"error\":\"  \"}",
				"{\"http_status\":404,\"error\":\"{\\\"error\\\":\\\"  \\\"}\"}");
	/* a 2xx list is still an error when the status is not 2xx */
	probe(ollama_probe, 302, "{\"models\":[]}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "HTTP 302: {\"models\":[]}",
				"{\"http_status\":302,\"error\":\"{\\\"models\\\":[]}\"}");
	probe(ollama_probe, 200, "Ollama is running", all, 2, &r);
	CHECK_PROBE(r, false, false, "malformed response from Ollama",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(ollama_probe, 200, "{\"models\":null}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "malformed response from Ollama",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(ollama_probe, 200, "[{\"models\":[]}]", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "malformed response from Ollama",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(ollama_probe, 200, "{\"error\":\"boom\"}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "malformed response from Ollama",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(ollama_probe, 204, NULL, NULL, 0, &r);
	CHECK_PROBE(r, false, false, "malformed response from Ollama",
				"{\"http_status\":204,\"error\":\"malformed response\"}");
	probe(ollama_probe, 200, "{\"models\":[{\"name\":\"a\"}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "malformed response from Ollama",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	end_group();
	cJSON_Delete(settings);
}

static void
test_long_probe_summaries(void)
{
	const char *models[40];
	char	   *longbody;
	Igny8ProbeResult r;
	cJSON	   *detail;
	int			i;

	begin_group("probes: long summaries are cut, details stay whole");
	for (i = 0; i < (int) lengthof(models); i++)
		models[i] = psprintf("some-rather-long-model-name-%02d:q4_K_M", i);
	probe(ollama_probe, 200, "{\"models\":[]}", models, lengthof(models), &r);
	CHECK(r.healthy && r.degraded);
	CHECK_INT(strlen(r.summary), IGNY8_ERRMSG_MAX + 3);
	CHECK(strncmp(r.summary, "40 models missing: some-rather-long", 35) == 0);
	CHECK(strcmp(r.summary + IGNY8_ERRMSG_MAX, "...") == 0);
	detail = cJSON_Parse(r.detail_json);
	CHECK_INT(cJSON_GetArraySize(cJSON_GetObjectItem(detail, "models_missing")),
			  40);
	cJSON_Delete(detail);

	longbody = palloc(2100);
	strcpy(longbody, "{\"error\":\"");
	memset(longbody + 10, 'y', 2000);
	strcpy(longbody + 2010, "\"}");
	probe(ollama_probe, 400, longbody, NULL, 0, &r);
	CHECK(!r.healthy && r.reachable);
	CHECK_INT(strlen(r.summary), IGNY8_ERRMSG_MAX + 3);
	CHECK(strncmp(r.summary, "HTTP 400: yyy", 13) == 0);
	detail = cJSON_Parse(r.detail_json);
	CHECK_INT(strlen(cJSON_GetStringValue(cJSON_GetObjectItem(detail, "error"))),
			  IGNY8_ERRMSG_MAX + 3);
	cJSON_Delete(detail);

	/* control characters never reach the summary */
	probe(openai_probe, 500, "{\"error\":{\"message\":\"line 1\\nline 2\\u0007\"}}",
		  NULL, 0, &r);
	CHECK_STR(r.summary, "HTTP 500: line 1 line 2");
	end_group();
}

#define OPENAI_MODELS \
	"{\"object\":\"list\",\"data\":[" \
	"{\"id\":\"gpt-4o-mini\",\"object\":\"model\",\"created\":1721172741," \
	"\"owned_by\":\"system\"}," \
	"{\"id\":\"gpt-4o\",\"object\":\"model\",\"created\":1715367049," \
	"\"owned_by\":\"system\"}," \
	"{\"id\":\"o3-mini\",\"object\":\"model\",\"created\":1737146383," \
	"\"owned_by\":\"system\"}]}"

static void
test_openai_probe(void)
{
	static const char *const two[] = {"gpt-4o-mini", "o3-mini"};
	static const char *const missing[] = {"gpt-4o", "gpt-5", "GPT-4O-MINI"};
	Igny8HttpRequest out;
	Igny8ProbeResult r;

	begin_group("openai probe: build GET /v1/models");
	openai_probe->build_probe("sk-test", NULL, &out);
	CHECK_PROBE_REQUEST(out, "/v1/models", 1);
	CHECK_STR(out.headers[0], "Authorization: Bearer sk-test");
	openai_probe->build_probe(NULL, NULL, &out);
	CHECK_PROBE_REQUEST(out, "/v1/models", 0);
	CHECK(!has_header(&out, "Authorization"));
	end_group();

	begin_group("openai probe: parse");
	probe(openai_probe, 200, OPENAI_MODELS, two, lengthof(two), &r);
	CHECK_PROBE(r, true, false, "all 2 configured models present",
				"{\"models_present\":2,\"models_listed\":3,\"models_missing\":[]}");
	/* ids are compared exactly, case included */
	probe(openai_probe, 200, OPENAI_MODELS, missing, lengthof(missing), &r);
	CHECK_PROBE(r, true, true, "2 models missing: gpt-5, GPT-4O-MINI",
				"{\"models_missing\":[\"gpt-5\",\"GPT-4O-MINI\"],"
				"\"models_present\":1,\"models_listed\":3}");
	probe(openai_probe, 200, OPENAI_MODELS, NULL, 0, &r);
	CHECK_PROBE(r, true, false, "running, no models configured",
				"{\"models_present\":0,\"models_listed\":3,\"models_missing\":[]}");
	/* Ollama's /v1/models: tag defaulting both ways */
	{
		static const char *const ollama_names[] = {"llama3.2", "qwen3:latest",
		"qwen3:8b"};

		probe(openai_probe, 200,
			  "{\"object\":\"list\",\"data\":[{\"id\":\"llama3.2:latest\","
			  "\"object\":\"model\",\"created\":1746000000,\"owned_by\":\"library\"},"
			  "{\"id\":\"qwen3\",\"object\":\"model\",\"owned_by\":\"library\"}]}",
			  ollama_names, 3, &r);
		CHECK_PROBE(r, true, true, "model qwen3:8b missing",
					"{\"models_missing\":[\"qwen3:8b\"],\"models_present\":2,"
					"\"models_listed\":2}");
	}
	/* vLLM: one model; entries without an id are listed but match nothing */
	{
		static const char *const vllm[] = {"Qwen/Qwen3-32B"};

		probe(openai_probe, 200,
			  "{\"object\":\"list\",\"data\":[{\"id\":\"Qwen/Qwen3-32B\","
			  "\"object\":\"model\",\"owned_by\":\"vllm\",\"root\":\"Qwen/Qwen3-32B\","
			  "\"max_model_len\":32768},{\"object\":\"model\"}]}",
			  vllm, 1, &r);
		CHECK_PROBE(r, true, false, "1 configured model present",
					"{\"models_present\":1,\"models_listed\":2,\"models_missing\":[]}");
	}
	probe(openai_probe, 200, "{\"object\":\"list\",\"data\":[]}", two, 2, &r);
	CHECK_PROBE(r, true, true, "2 models missing: gpt-4o-mini, o3-mini",
				"{\"models_missing\":[\"gpt-4o-mini\",\"o3-mini\"],"
				"\"models_present\":0,\"models_listed\":0}");
	end_group();

	begin_group("openai probe: errors and malformed answers");
	probe(openai_probe, 401,
		  "{\"error\":{\"message\":\"Incorrect API key provided: sk-te***st.\","
		  "\"type\":\"invalid_request_error\",\"param\":null,"
		  "\"code\":\"invalid_api_key\"}}", two, 2, &r);
	CHECK_PROBE(r, false, false,
				"HTTP 401: Incorrect API key provided: sk-te***st.",
				"{\"http_status\":401,\"error\":\"Incorrect API key provided: sk-te***st.\"}");
	probe(openai_probe, 400,
		  "{\"object\":\"error\",\"message\":\"bad\",\"type\":\"BadRequestError\","
		  "\"code\":400}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "HTTP 400: bad",
				"{\"http_status\":400,\"error\":\"bad\"}");
	probe(openai_probe, 503, "upstream connect error", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "HTTP 503: upstream connect error",
				"{\"http_status\":503,\"error\":\"upstream connect error\"}");
	probe(openai_probe, 500, "", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "HTTP 500: empty response body",
				"{\"http_status\":500,\"error\":\"empty response body\"}");
	probe(openai_probe, 200, "{\"object\":\"list\"}", two, 2, &r);
	CHECK_PROBE(r, false, false, "malformed response from OpenAI-compatible API",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(openai_probe, 200, "{\"data\":{\"id\":\"x\"}}", two, 2, &r);
	CHECK_PROBE(r, false, false, "malformed response from OpenAI-compatible API",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(openai_probe, 200, "<!doctype html><title>LiteLLM</title>", two, 2,
		  &r);
	CHECK_PROBE(r, false, false, "malformed response from OpenAI-compatible API",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(openai_probe, 200, "{\"error\":{\"message\":\"proxy failed\"}}", NULL,
		  0, &r);
	CHECK_PROBE(r, false, false, "malformed response from OpenAI-compatible API",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	end_group();
}

static void
test_anthropic_probe(void)
{
	static const char *const aliases[] = {"claude-3-5-sonnet-latest",
	"claude-sonnet-4-5"};
	cJSON	   *settings = cJSON_Parse("{\"anthropic_version\":\"2024-10-22\"}");
	cJSON	   *empty_version = cJSON_Parse("{\"anthropic_version\":\"\"}");
	Igny8HttpRequest out;
	Igny8ProbeResult r;

	begin_group("anthropic probe: build GET /v1/models");
	anthropic_probe->build_probe("sk-ant-test", NULL, &out);
	CHECK_PROBE_REQUEST(out, "/v1/models", 2);
	CHECK_STR(out.headers[0], "x-api-key: sk-ant-test");
	CHECK_STR(out.headers[1], "anthropic-version: 2023-06-01");
	CHECK(!has_header(&out, "Authorization"));
	anthropic_probe->build_probe("sk-ant-test", settings, &out);
	CHECK_PROBE_REQUEST(out, "/v1/models", 2);
	CHECK_STR(out.headers[1], "anthropic-version: 2024-10-22");
	anthropic_probe->build_probe(NULL, empty_version, &out);
	CHECK_PROBE_REQUEST(out, "/v1/models", 1);
	CHECK_STR(out.headers[0], "anthropic-version: 2023-06-01");
	CHECK(!has_header(&out, "x-api-key"));
	end_group();

	begin_group("anthropic probe: parse (no model check)");
	probe(anthropic_probe, 200,
		  "{\"data\":[{\"type\":\"model\",\"id\":\"claude-sonnet-4-5-20250929\","
		  "\"display_name\":\"Claude Sonnet 4.5\",\"created_at\":\"2025-09-29T00:00:00Z\"},"
		  "{\"type\":\"model\",\"id\":\"claude-3-5-haiku-20241022\","
		  "\"display_name\":\"Claude Haiku 3.5\",\"created_at\":\"2024-10-22T00:00:00Z\"}],"
		  "\"has_more\":false,\"first_id\":\"claude-sonnet-4-5-20250929\","
		  "\"last_id\":\"claude-3-5-haiku-20241022\"}",
		  aliases, lengthof(aliases), &r);
	CHECK_PROBE(r, true, false, "2 models listed", "{\"models_listed\":2}");
	probe(anthropic_probe, 200, "{\"data\":[{\"id\":\"x\"}],\"has_more\":true}",
		  NULL, 0, &r);
	CHECK_PROBE(r, true, false, "1 model listed", "{\"models_listed\":1}");
	probe(anthropic_probe, 200, "{\"data\":[]}", aliases, 2, &r);
	CHECK_PROBE(r, true, false, "0 models listed", "{\"models_listed\":0}");
	end_group();

	begin_group("anthropic probe: errors and malformed answers");
	probe(anthropic_probe, 401,
		  "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","
		  "\"message\":\"invalid x-api-key\"},\"request_id\":\"req_011\"}",
		  aliases, 2, &r);
	CHECK_PROBE(r, false, false, "HTTP 401: invalid x-api-key",
				"{\"http_status\":401,\"error\":\"invalid x-api-key\"}");
	probe(anthropic_probe, 529,
		  "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
		  "\"message\":\"Overloaded\"}}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "HTTP 529: Overloaded",
				"{\"http_status\":529,\"error\":\"Overloaded\"}");
	probe(anthropic_probe, 500,
		  "{\"type\":\"error\",\"error\":{\"type\":\"api_error\"}}", NULL, 0, &r);
	CHECK_PROBE(r, false, false,
				"HTTP 500: {\"type\":\"error\",\"error\":{\"type\":\"api_error\"}}",
				"{\"http_status\":500,\"error\":\"{\\\"type\\\":\\\"error\\\","
				"\\\"error\\\":{\\\"type\\\":\\\"api_error\\\"}}\"}");
	probe(anthropic_probe, 200,
		  "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
		  "\"message\":\"Overloaded\"}}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "malformed response from Anthropic",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(anthropic_probe, 200, "null", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "malformed response from Anthropic",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(anthropic_probe, 200, NULL, NULL, 0, &r);
	CHECK_PROBE(r, false, false, "malformed response from Anthropic",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	end_group();
	cJSON_Delete(settings);
	cJSON_Delete(empty_version);
}

#define COMFYUI_SYSTEM \
	"\"system\":{\"os\":\"posix\",\"ram_total\":67108864000," \
	"\"ram_free\":50000000000,\"comfyui_version\":\"0.3.43\"," \
	"\"required_frontend_version\":\"1.23.4\",\"python_version\":\"3.12.3\"," \
	"\"pytorch_version\":\"2.7.1+cu128\",\"embedded_python\":false," \
	"\"argv\":[\"main.py\",\"--listen\"]}"

static void
test_comfyui_probe(void)
{
	static const char *const checkpoints[] = {"sd_xl_base_1.0.safetensors"};
	Igny8HttpRequest out;
	Igny8ProbeResult r;

	begin_group("comfyui probe: build GET /system_stats");
	comfyui_probe->build_probe(NULL, NULL, &out);
	CHECK_PROBE_REQUEST(out, "/system_stats", 0);
	comfyui_probe->build_probe("proxy-token", NULL, &out);
	CHECK_PROBE_REQUEST(out, "/system_stats", 1);
	CHECK_STR(out.headers[0], "Authorization: Bearer proxy-token");
	end_group();

	begin_group("comfyui probe: parse (VRAM sums, no model check)");
	probe(comfyui_probe, 200,
		  "{" COMFYUI_SYSTEM ",\"devices\":[{\"name\":\"cuda:0 NVIDIA GeForce "
		  "RTX 4090 : cudaMallocAsync\",\"type\":\"cuda\",\"index\":0,"
		  "\"vram_total\":25769803776,\"vram_free\":21582210662,"
		  "\"torch_vram_total\":0,\"torch_vram_free\":0}]}",
		  checkpoints, 1, &r);
	CHECK_PROBE(r, true, false, "1 device, 20.1 GiB of 24.0 GiB VRAM free",
				"{\"comfyui_version\":\"0.3.43\",\"devices\":[{\"name\":"
				"\"cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync\","
				"\"vram_total\":25769803776,\"vram_free\":21582210662}],"
				"\"vram_free\":21582210662,\"vram_total\":25769803776}");
	CHECK_CONTAINS(r.detail_json, "\"vram_total\":25769803776");

	probe(comfyui_probe, 200,
		  "{" COMFYUI_SYSTEM ",\"devices\":["
		  "{\"name\":\"cuda:0 A\",\"type\":\"cuda\",\"index\":0,"
		  "\"vram_total\":25769803776,\"vram_free\":21474836480,"
		  "\"torch_vram_total\":1,\"torch_vram_free\":1},"
		  "{\"name\":\"cuda:1 B\",\"type\":\"cuda\",\"index\":1,"
		  "\"vram_total\":12884901888,\"vram_free\":1073741824}]}",
		  NULL, 0, &r);
	CHECK_PROBE(r, true, false, "2 devices, 21.0 GiB of 36.0 GiB VRAM free",
				"{\"comfyui_version\":\"0.3.43\",\"devices\":["
				"{\"name\":\"cuda:0 A\",\"vram_total\":25769803776,\"vram_free\":21474836480},"
				"{\"name\":\"cuda:1 B\",\"vram_total\":12884901888,\"vram_free\":1073741824}],"
				"\"vram_free\":22548578304,\"vram_total\":38654705664}");

	/* an old server: no version; odd device entries */
	probe(comfyui_probe, 200,
		  "{\"system\":{\"os\":\"nt\"},\"devices\":[{\"type\":\"cpu\","
		  "\"vram_total\":8589934592,\"vram_free\":-5},\"junk\","
		  "{\"name\":7,\"vram_total\":\"1\"}]}", NULL, 0, &r);
	CHECK_PROBE(r, true, false, "2 devices, 0.0 GiB of 8.0 GiB VRAM free",
				"{\"comfyui_version\":null,\"devices\":["
				"{\"name\":null,\"vram_total\":8589934592,\"vram_free\":0},"
				"{\"name\":null,\"vram_total\":0,\"vram_free\":0}],"
				"\"vram_free\":0,\"vram_total\":8589934592}");
	probe(comfyui_probe, 200, "{\"system\":{},\"devices\":[]}", NULL, 0, &r);
	CHECK_PROBE(r, true, false, "running, no devices reported",
				"{\"comfyui_version\":null,\"devices\":[],\"vram_free\":0,"
				"\"vram_total\":0}");
	/* a device name with a line break and a bad byte is cleaned */
	probe(comfyui_probe, 200,
		  "{\"system\":{\"comfyui_version\":\"v\\n1\"},\"devices\":"
		  "[{\"name\":\"a\\tb\xff\",\"vram_total\":1073741824,"
		  "\"vram_free\":536870912}]}", NULL, 0, &r);
	CHECK_PROBE(r, true, false, "1 device, 0.5 GiB of 1.0 GiB VRAM free",
				"{\"comfyui_version\":\"v 1\",\"devices\":[{\"name\":\"a b?\","
				"\"vram_total\":1073741824,\"vram_free\":536870912}],"
				"\"vram_free\":536870912,\"vram_total\":1073741824}");
	end_group();

	begin_group("comfyui probe: errors and malformed answers");
	probe(comfyui_probe, 500,
		  "{\"error\":{\"type\":\"server_error\",\"message\":\"CUDA error\","
		  "\"details\":\"\",\"extra_info\":{}}}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "HTTP 500: CUDA error",
				"{\"http_status\":500,\"error\":\"CUDA error\"}");
	probe(comfyui_probe, 404, "404: Not Found", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "HTTP 404: 404: Not Found",
				"{\"http_status\":404,\"error\":\"404: Not Found\"}");
	probe(comfyui_probe, 403, "{\"error\":\"forbidden\"}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "HTTP 403: forbidden",
				"{\"http_status\":403,\"error\":\"forbidden\"}");
	probe(comfyui_probe, 200, "{\"devices\":[]}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "malformed response from ComfyUI",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(comfyui_probe, 200, "{\"system\":{},\"devices\":{}}", NULL, 0, &r);
	CHECK_PROBE(r, false, false, "malformed response from ComfyUI",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(comfyui_probe, 200, "{\"system\":\"x\",\"devices\":[]}", NULL, 0,
		  &r);
	CHECK_PROBE(r, false, false, "malformed response from ComfyUI",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	probe(comfyui_probe, 200, "<!DOCTYPE html><html>ComfyUI</html>", NULL, 0,
		  &r);
	CHECK_PROBE(r, false, false, "malformed response from ComfyUI",
				"{\"http_status\":200,\"error\":\"malformed response\"}");
	end_group();
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0)
		corpus_dir = argv[2];
	else if (argc != 1)
	{
		fprintf(stderr, "usage: %s [--write-corpus DIR]\n", argv[0]);
		return 2;
	}

	igny8_json_init();

	test_kinds();
	test_classify();
	test_truncate();
	test_strip_think();
	test_helpers();
	test_ollama_build();
	test_ollama_parse();
	test_ollama_errors();
	test_openai_build();
	test_openai_parse();
	test_openai_errors();
	test_anthropic_build();
	test_anthropic_parse();
	test_anthropic_errors();
	test_probe_table();
	test_ollama_probe();
	test_long_probe_summaries();
	test_openai_probe();
	test_anthropic_probe();
	test_comfyui_probe();

	if (corpus_dir != NULL)
		printf("%d seeds written to %s\n", corpus_count, corpus_dir);
	printf("%d passed, %d failed\n", n_passed, n_failed);
	return n_failed > 0 ? 1 : 0;
}
