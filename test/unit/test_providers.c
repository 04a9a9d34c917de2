/*-------------------------------------------------------------------------
 *
 * test_providers.c
 *	  Unit tests of the pure protocol code: src/provider.c and
 *	  src/provider_{ollama,openai,anthropic,comfyui}.c, and of the key
 *	  redaction, src/redact.c, built as frontend code.
 *
 * The tests are tables of cases: for each protocol, the request that
 * build_chat makes from a normalized request (method, path, every header,
 * the JSON body), what parse_chat makes of every answer and error of
 * docs/protocols.md (the result's fields, or the error's class,
 * message, retry_after and flags), and likewise build_probe and
 * parse_probe of each health probe.  Every case also checks the
 * contract of provider.h that holds for all of them (valid UTF-8, no
 * control characters in messages and labels, bounded lengths, no key in
 * a body).  A few helpers of odd shapes keep plain checks.
 *
 * Prints one line per group of checks, a line per failed check, and
 * finally "N passed, M failed"; exits 1 if any check failed.  Built with
 * ASan, UBSan and leak detection (test/unit/Makefile): everything a case
 * allocates is freed.
 *
 * With "--write-corpus DIR" it also writes every response body it parses
 * into DIR as seeds for test/fuzz/fuzz_providers.c (first byte: the
 * selector the fuzzer reads).
 *
 * test/unit/test_providers.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include <stdio.h>

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "answer_buffer.h"
#include "http1.h"
#include "provider.h"
#include "redact.h"

/* must match test/fuzz/fuzz_providers.c */
static const long fuzz_statuses[16] = {
	200, 400, 401, 402, 403, 404, 408, 409,
	413, 429, 500, 502, 503, 504, 529, 302
};
#define FUZZ_NMODELS 9			/* configured models the fuzzer has */

static int	n_passed;
static int	n_failed;
static const char *group_name;
static int	group_checks;
static int	group_failed;
static const char *case_name;	/* the table row being checked, or NULL */
static int	case_index;
static const char *corpus_dir;
static int	corpus_count;

static const Igny8TextProtocol *const ollama = &igny8_ollama_protocol;
static const Igny8TextProtocol *const openai = &igny8_openai_protocol;
static const Igny8TextProtocol *const anthropic = &igny8_anthropic_protocol;

static const char *const class_names[] = {"NONE", "RETRY", "FALLBACK",
"CALLER"};

/* ---------- the harness ---------- */

static void
begin_group(const char *name)
{
	group_name = name;
	group_checks = 0;
	group_failed = 0;
	case_name = NULL;
}

static void
end_group(void)
{
	printf("%-4s %s (%d checks)\n", group_failed ? "FAIL" : "ok",
		   group_name, group_checks);
	fflush(stdout);
	case_name = NULL;
}

/* Name the table row that the next checks are about. */
static void
begin_case(int index, const char *name)
{
	case_index = index;
	case_name = name;
}

static bool check(bool ok, int line, const char *fmt,...)
			pg_attribute_printf(3, 4);

/*
 * Count one check; on failure print where (the table row, or else the
 * line) and the formatted reason.
 */
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
	if (case_name != NULL)
		printf("  FAILED case %d (%s): ", case_index, case_name);
	else
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
		printf("  bad expected JSON at line %d: %s\n", line, expected);
		abort();
	}
	ok = (a != NULL && cJSON_Compare(a, e, true));
	cJSON_Delete(a);
	cJSON_Delete(e);
	return check(ok, line, "JSON\n    got      %s\n    expected %s",
				 actual ? actual : "(null)", expected);
}

/* Valid UTF-8 by PostgreSQL's own verifier (which also refuses NUL)? */
static bool
pg_utf8(const char *s)
{
	int			len = (int) strlen(s);

	return pg_encoding_verifymbstr(PG_UTF8, s, len) == len;
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

/*
 * Check a string meant for people (a message, a summary, a label): valid
 * UTF-8, no control character, at most max bytes.
 */
static void
check_clean(const char *s, size_t max, const char *what, int line)
{
	if (!check(s != NULL, line, "%s is NULL", what))
		return;
	check(pg_utf8(s), line, "%s is not valid UTF-8: \"%s\"", what, s);
	check(printable(s), line, "%s has a control character: \"%s\"", what, s);
	check(strlen(s) <= max, line, "%s has %zu bytes, more than %zu", what,
		  strlen(s), max);
}

/* Free a palloc'd pointer that may be NULL. */
static void
free_maybe(void *ptr)
{
	if (ptr != NULL)
		pfree(ptr);
}

/* Free what build_chat or build_probe made. */
static void
free_request(Igny8HttpRequest *out)
{
	int			i;

	for (i = 0; i < out->nheaders; i++)
		pfree(out->headers[i]);
	free_maybe(out->path);
	free_maybe(out->body);
	memset(out, 0, sizeof(*out));
}

/* Free what parse_chat made. */
static void
free_answer(Igny8TextResult *r, Igny8ProviderError *e)
{
	free_maybe(r->content);
	free_maybe(r->thinking);
	free_maybe(r->model);
	free_maybe(r->finish_reason);
	free_maybe(e->message);
	memset(r, 0, sizeof(*r));
	memset(e, 0, sizeof(*e));
}

/* Free what parse_probe made. */
static void
free_probe(Igny8ProbeResult *r)
{
	free_maybe(r->summary);
	free_maybe(r->detail_json);
	memset(r, 0, sizeof(*r));
}

/*
 * Write one response as a fuzzer seed.  The first byte is the selector
 * test/fuzz/fuzz_providers.c reads: status (low 4 bits), and either
 * x-should-retry and retry-after (a chat answer) or the number of
 * configured models plus one (a probe, nmodels given as >= -1).
 */
static void
write_seed(const Igny8HttpResponse *resp, bool is_probe, int nmodels)
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
	if (is_probe)
		sel |= (unsigned char) ((Min(Max(nmodels, -1), FUZZ_NMODELS) + 1) << 4);
	else
	{
		if (resp->should_retry == 0)
			sel |= 1 << 4;
		else if (resp->should_retry == 1)
			sel |= 2 << 4;
		if (resp->retry_after >= 0)
			sel |= 2 << 6;
	}

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

/* Parse a chat answer (and write it as a seed when asked to). */
static bool
parse_answer(const Igny8TextProtocol *proto, long status, const char *body,
			 double retry_after, int should_retry,
			 Igny8TextResult *result, Igny8ProviderError *err)
{
	Igny8HttpResponse resp;

	resp.status = status;
	resp.body = body;
	resp.body_len = body ? strlen(body) : 0;
	resp.body_terminated = true;	/* parsed in place, as the worker does */
	resp.retry_after = retry_after;
	resp.should_retry = should_retry;
	if (corpus_dir != NULL)
		write_seed(&resp, false, 0);
	memset(result, 0x7f, sizeof(*result));	/* must be set on every path */
	memset(err, 0x7f, sizeof(*err));
	return proto->parse_chat(&resp, result, err);
}

/* Parse a probe answer (and write it as a seed when asked to). */
static void
parse_probe(const Igny8ProbeProtocol *proto, long status, const char *body,
			const char *const *models, int nmodels, Igny8ProbeResult *out)
{
	Igny8HttpResponse resp;

	resp.status = status;
	resp.body = body;
	resp.body_len = body ? strlen(body) : 0;
	resp.body_terminated = true;
	resp.retry_after = -1;
	resp.should_retry = -1;
	if (corpus_dir != NULL)
		write_seed(&resp, true, nmodels);
	memset(out, 0x7f, sizeof(*out));	/* parse_probe must set every field */
	proto->parse_probe(&resp, models, nmodels, out);
}

/* Parse JSON text that the test itself wrote; abort if it is not JSON. */
static cJSON *
test_json(const char *text)
{
	cJSON	   *json;

	if (text == NULL)
		return NULL;
	json = cJSON_Parse(text);
	if (json == NULL)
	{
		printf("bad JSON in a test case: %s\n", text);
		abort();
	}
	return json;
}

/*
 * Check the headers of a request: exactly the expected ones (a
 * NULL-terminated list), in order, none with a control character.
 */
static void
check_headers(const Igny8HttpRequest *out, const char *const *expected,
			  int line)
{
	int			n = 0;
	int			i;

	while (expected[n] != NULL)
		n++;
	check(out->nheaders == n, line, "nheaders = %d, expected %d",
		  out->nheaders, n);
	for (i = 0; i < out->nheaders; i++)
	{
		check(printable(out->headers[i]), line,
			  "header %d has a control character", i);
		if (i < n)
			check_str(out->headers[i], expected[i], "header", line);
	}
}

/* ---------- provider.c: kinds, classes, text helpers ---------- */

typedef struct KindCase
{
	Igny8ProviderKind kind;
	const char *name;
	const Igny8TextProtocol *text;
	const Igny8ProbeProtocol *probe;
} KindCase;

static const KindCase kind_cases[] = {
	{IGNY8_KIND_OLLAMA, "ollama", &igny8_ollama_protocol, &igny8_ollama_probe},
	{IGNY8_KIND_OPENAI, "openai", &igny8_openai_protocol, &igny8_openai_probe},
	{IGNY8_KIND_ANTHROPIC, "anthropic", &igny8_anthropic_protocol,
	&igny8_anthropic_probe},
	{IGNY8_KIND_COMFYUI, "comfyui", NULL, &igny8_comfyui_probe},
	{IGNY8_KIND_INVALID, NULL, NULL, NULL}
};

typedef struct KindNameCase
{
	const char *name;
	Igny8ProviderKind kind;
} KindNameCase;

static const KindNameCase kind_name_cases[] = {
	{"ollama", IGNY8_KIND_OLLAMA},
	{"openai", IGNY8_KIND_OPENAI},
	{"anthropic", IGNY8_KIND_ANTHROPIC},
	{"comfyui", IGNY8_KIND_COMFYUI},
	{"OpenAI", IGNY8_KIND_OPENAI},
	{"ANTHROPIC", IGNY8_KIND_ANTHROPIC},
	{"gemini", IGNY8_KIND_INVALID},
	{"ollama ", IGNY8_KIND_INVALID},
	{"", IGNY8_KIND_INVALID},
	{NULL, IGNY8_KIND_INVALID}
};

static void
test_kinds(void)
{
	int			i;

	begin_group("provider kinds and protocol tables");
	for (i = 0; i < (int) lengthof(kind_name_cases); i++)
	{
		const KindNameCase *c = &kind_name_cases[i];

		begin_case(i, c->name ? c->name : "NULL");
		check(igny8_provider_kind_from_name(c->name) == c->kind, __LINE__,
			  "kind of \"%s\" = %d, expected %d", c->name ? c->name : "NULL",
			  (int) igny8_provider_kind_from_name(c->name), (int) c->kind);
	}
	for (i = 0; i < (int) lengthof(kind_cases); i++)
	{
		const KindCase *c = &kind_cases[i];

		begin_case(i, c->name ? c->name : "invalid");
		CHECK_STR(igny8_provider_kind_name(c->kind), c->name);
		CHECK(igny8_text_protocol(c->kind) == c->text);
		CHECK(igny8_probe_protocol(c->kind) == c->probe);
		if (c->text != NULL)
			CHECK_STR(c->text->name, c->name);
		if (c->probe != NULL)
			CHECK_STR(c->probe->name, c->name);
	}
	case_name = NULL;
	CHECK(!ollama->needs_key);
	CHECK(!openai->needs_key);
	CHECK(anthropic->needs_key);
	end_group();
}

typedef struct ClassifyCase
{
	long		status;
	int			should_retry;
	Igny8ErrorClass cls;
} ClassifyCase;

static const ClassifyCase classify_cases[] = {
	{408, -1, IGNY8_ERR_RETRY}, {409, -1, IGNY8_ERR_RETRY},
	{429, -1, IGNY8_ERR_RETRY}, {500, -1, IGNY8_ERR_RETRY},
	{502, -1, IGNY8_ERR_RETRY}, {503, -1, IGNY8_ERR_RETRY},
	{504, -1, IGNY8_ERR_RETRY}, {529, -1, IGNY8_ERR_RETRY},
	{501, -1, IGNY8_ERR_RETRY}, {599, -1, IGNY8_ERR_RETRY},
	{401, -1, IGNY8_ERR_FALLBACK}, {402, -1, IGNY8_ERR_FALLBACK},
	{403, -1, IGNY8_ERR_FALLBACK}, {404, -1, IGNY8_ERR_FALLBACK},
	{302, -1, IGNY8_ERR_FALLBACK}, {100, -1, IGNY8_ERR_FALLBACK},
	{600, -1, IGNY8_ERR_FALLBACK}, {0, -1, IGNY8_ERR_FALLBACK},
	{400, -1, IGNY8_ERR_CALLER}, {413, -1, IGNY8_ERR_CALLER},
	{422, -1, IGNY8_ERR_CALLER}, {405, -1, IGNY8_ERR_CALLER},
	{418, -1, IGNY8_ERR_CALLER}, {451, -1, IGNY8_ERR_CALLER},
	{200, -1, IGNY8_ERR_NONE}, {204, 0, IGNY8_ERR_NONE},
	{299, 1, IGNY8_ERR_NONE},
	/* x-should-retry: true makes any error RETRY, false a RETRY FALLBACK */
	{503, 0, IGNY8_ERR_FALLBACK}, {429, 0, IGNY8_ERR_FALLBACK},
	{400, 0, IGNY8_ERR_CALLER}, {404, 0, IGNY8_ERR_FALLBACK},
	{400, 1, IGNY8_ERR_RETRY}, {404, 1, IGNY8_ERR_RETRY},
	{503, 1, IGNY8_ERR_RETRY}, {302, 1, IGNY8_ERR_RETRY}
};

static void
test_classify(void)
{
	int			i;

	begin_group("generic status classification");
	for (i = 0; i < (int) lengthof(classify_cases); i++)
	{
		const ClassifyCase *c = &classify_cases[i];
		Igny8ErrorClass cls = igny8_classify_status(c->status,
													c->should_retry);

		check(cls == c->cls, __LINE__,
			  "%ld with x-should-retry %d is %s, expected %s", c->status,
			  c->should_retry, class_names[cls], class_names[c->cls]);
	}
	end_group();
}

typedef struct TruncateCase
{
	const char *in;
	size_t		len;
	size_t		max;
	const char *out;
} TruncateCase;

static const TruncateCase truncate_cases[] = {
	{"hello", 5, 10, "hello"},
	{"hello", 5, 5, "hello"},
	{"hello world", 11, 5, "hello..."},
	{"hello world", 11, 6, "hello..."},
	{"hello", 3, 10, "hel"},
	/* e-acute is two bytes: never cut in the middle */
	{"h\xc3\xa9llo", 6, 2, "h..."},
	{"h\xc3\xa9llo", 6, 3, "h\xc3\xa9..."},
	{"\xe2\x82\xac", 3, 3, "\xe2\x82\xac"},
	{"\xe2\x82\xac", 3, 2, "..."},
	{"\xf0\x9f\x98\x80!", 5, 4, "\xf0\x9f\x98\x80..."},
	/* a sequence cut by len itself, invalid bytes, overlong forms */
	{"\xe2\x82\xac", 2, 10, "??"},
	{"ab\xff", 3, 10, "ab?"},
	{"\xc0\xaf", 2, 10, "??"},
	{"\xed\xa0\x80", 3, 10, "???"},
	{"\xf4\x90\x80\x80", 4, 10, "????"},
	{"\xc3(", 2, 10, "?("},
	/* control characters */
	{"a\nb\tc\rd\x7f" "e", 9, 20, "a b c d e"},
	{"ab\0cd", 5, 10, "ab cd"},
	{"line\n", 5, 10, "line"},
	{NULL, 0, 10, ""},
	{"abc", 3, 0, "..."}
};

static void
test_truncate(void)
{
	char		big[1000];
	char	   *s;
	int			i;

	begin_group("igny8_truncate_message");
	for (i = 0; i < (int) lengthof(truncate_cases); i++)
	{
		const TruncateCase *c = &truncate_cases[i];

		begin_case(i, c->out);
		s = igny8_truncate_message(c->in, c->len, c->max);
		CHECK_STR(s, c->out);
		check_clean(s, c->max + 3, "result", __LINE__);
		pfree(s);
	}
	case_name = NULL;
	memset(big, 'x', sizeof(big));
	s = igny8_truncate_message(big, sizeof(big), IGNY8_ERRMSG_MAX);
	CHECK_INT(strlen(s), IGNY8_ERRMSG_MAX + 3);
	CHECK(strcmp(s + IGNY8_ERRMSG_MAX, "...") == 0);
	pfree(s);
	end_group();
}

typedef struct LabelCase
{
	const char *in;
	size_t		max;
	const char *out;
} LabelCase;

static const LabelCase label_cases[] = {
	{"gpt-4o-mini-2024-07-18", IGNY8_MODEL_MAX, "gpt-4o-mini-2024-07-18"},
	{"", IGNY8_MODEL_MAX, ""},
	{"a\xff" "b", IGNY8_MODEL_MAX, "a?b"},
	{"a\nb\x7f", IGNY8_MODEL_MAX, "a?b?"},
	{"\t stop", IGNY8_FINISH_REASON_MAX, "? stop"},
	{"\xc0\xaf", 10, "??"},
	{"\xed\xa0\x80", 10, "???"},
	{"\xe2\x82", 10, "??"},
	{"\xf0\x9f\x98\x80", 4, "\xf0\x9f\x98\x80"},
	{"\xf0\x9f\x98\x80", 3, ""},
	{"h\xc3\xa9llo", 2, "h"},
	{"h\xc3\xa9llo", 3, "h\xc3\xa9"},
	{"h\xc3\xa9llo", 5, "h\xc3\xa9ll"},
	{"\xff\xff\xff", 2, "??"},
	{"abc", 0, ""},
	{"end_turn", IGNY8_FINISH_REASON_MAX, "end_turn"},
	{"model_context_window_exceeded", IGNY8_FINISH_REASON_MAX,
	"model_context_window_exceeded"}
};

typedef struct Utf8Case
{
	const char *in;
	size_t		len;
	bool		valid;
} Utf8Case;

static const Utf8Case utf8_cases[] = {
	{"", 0, true},
	{"plain ASCII", 11, true},
	{"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14, true},
	{"\xef\xbf\xbf\xf4\x8f\xbf\xbf", 7, true},	/* U+FFFF, U+10FFFF */
	{"a\0b", 3, true},			/* NUL is UTF-8; parse_chat refuses it */
	{"\xff", 1, false},
	{"\xc3", 1, false},			/* cut sequence */
	{"\xc3(", 2, false},
	{"\xc0\xaf", 2, false},		/* overlong */
	{"\xe0\x80\xaf", 3, false}, /* overlong */
	{"\xed\xa0\x80", 3, false}, /* surrogate */
	{"\xf4\x90\x80\x80", 4, false}, /* above U+10FFFF */
	{"\xf8\x88\x80\x80\x80", 5, false},
	{"\xe2\x82\xac", 2, false}	/* cut by len */
};

typedef struct NulCase
{
	const char *body;
	bool		has_nul;
} NulCase;

static const NulCase nul_cases[] = {
	{"{\"a\":\"x\\u0000y\"}", true},
	{"{\"a\":\"\\u0000\"}", true},
	{"{\"a\":\"\\\\u0000\"}", false},	/* an escaped backslash, then text */
	{"{\"a\":\"\\\\\\u0000\"}", true},	/* a backslash, then a NUL */
	{"{\"a\":\"\\\\\\\\u0000\"}", false},
	{"{\"a\":\"\\u00001\"}", true},
	{"{\"a\":\"\\u0001\\u0100\\u1000\"}", false},
	{"{\"\\u0000\":1}", true},
	{"\\u0000", true},
	{"\\u000", false},
	{"x\\", false},
	{"", false}
};

static void
test_text_helpers(void)
{
	char		longname[300];
	char	   *s;
	int			i;

	begin_group("igny8_clean_label, igny8_utf8_valid, igny8_json_has_nul");
	for (i = 0; i < (int) lengthof(label_cases); i++)
	{
		const LabelCase *c = &label_cases[i];

		begin_case(i, c->out);
		s = pstrdup(c->in);
		igny8_clean_label(s, c->max);
		CHECK_STR(s, c->out);
		check_clean(s, c->max, "label", __LINE__);
		pfree(s);
	}
	for (i = 0; i < (int) lengthof(utf8_cases); i++)
	{
		const Utf8Case *c = &utf8_cases[i];

		begin_case(i, "UTF-8");
		check(igny8_utf8_valid(c->in, c->len) == c->valid, __LINE__,
			  "igny8_utf8_valid = %d, expected %d",
			  (int) igny8_utf8_valid(c->in, c->len), (int) c->valid);
	}
	for (i = 0; i < (int) lengthof(nul_cases); i++)
	{
		const NulCase *c = &nul_cases[i];

		begin_case(i, c->body);
		check(igny8_json_has_nul(c->body, strlen(c->body)) ==
			  c->has_nul, __LINE__, "has_nul_escape = %d, expected %d",
			  (int) !c->has_nul, (int) c->has_nul);
	}
	case_name = NULL;
	/* the length given counts, not the terminating NUL */
	CHECK(igny8_json_has_nul("\\u0000", 6));
	CHECK(!igny8_json_has_nul("\\u0000", 5));
	CHECK(!igny8_json_has_nul(NULL, 0));
	/* a raw NUL byte (not JSON, but cJSON copies it into the string) */
	CHECK(igny8_json_has_nul("{\"a\":\"x\0y\"}", 11));
	CHECK(!igny8_json_has_nul("{\"a\":\"x\0y\"}", 7));

	/* a long name is cut to fit the worker's buffer */
	memset(longname, 'm', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	igny8_clean_label(longname, IGNY8_MODEL_MAX);
	CHECK_INT(strlen(longname), IGNY8_MODEL_MAX);
	/* ... at a character boundary: a euro sign across byte 127 goes */
	memset(longname, 'm', 126);
	strcpy(longname + 126, "\xe2\x82\xac tail");
	igny8_clean_label(longname, IGNY8_MODEL_MAX);
	CHECK_INT(strlen(longname), 126);
	CHECK(pg_utf8(longname));
	end_group();
}

typedef struct StripCase
{
	const char *in;
	const char *content;
	const char *thinking;
} StripCase;

static const StripCase strip_cases[] = {
	{"Paris.", "Paris.", NULL},
	{"<think>\nLet me think.\n</think>\n\nParis.", "Paris.", "Let me think."},
	{" \n <think>a</think>b", "b", "a"},
	/* the empty block of a model that did not think */
	{"<think>\n\n</think>\n\nParis.", "Paris.", NULL},
	/* no closing tag (cut off while reasoning): all of it is the trace */
	{"<think>still thinking", "", "still thinking"},
	{" <think>\n", "", NULL},
	/* only a leading block counts */
	{"Hi <think>x</think> there", "Hi <think>x</think> there", NULL},
	/* text without a block keeps its whitespace */
	{"  indented\n", "  indented\n", NULL},
	/* the first closing tag ends the block */
	{"<think>a</think>b</think>c", "b</think>c", "a"},
	{"<think>a</think>", "", "a"},
	{"<THINK>a</THINK>x", "<THINK>a</THINK>x", NULL},
	{"", "", NULL},
	{NULL, "", NULL}
};

static void
test_strip_think(void)
{
	char	   *thinking;
	char	   *content;
	int			i;

	begin_group("igny8_strip_think");
	for (i = 0; i < (int) lengthof(strip_cases); i++)
	{
		const StripCase *c = &strip_cases[i];

		begin_case(i, c->in ? c->in : "NULL");
		thinking = (char *) "untouched";
		content = igny8_strip_think(c->in, &thinking);
		CHECK_STR(content, c->content);
		CHECK_STR(thinking, c->thinking);
		free_maybe(content);
		free_maybe(thinking);
		/* without a place for the trace, the content is the same */
		content = igny8_strip_think(c->in, NULL);
		CHECK_STR(content, c->content);
		free_maybe(content);
	}
	end_group();
}

/*
 * igny8_take_answer: the same as igny8_strip_think, and the answer is the
 * item's own string, taken out of the tree (not a copy), which cJSON_Delete
 * then frees without it.
 */
static void
test_take_answer(void)
{
	int			i;

	begin_group("igny8_take_answer");
	for (i = 0; i < (int) lengthof(strip_cases); i++)
	{
		const StripCase *c = &strip_cases[i];
		cJSON	   *item;
		char	   *own;
		char	   *thinking;
		char	   *content;

		begin_case(i, c->in ? c->in : "NULL");
		item = c->in ? cJSON_CreateString(c->in) : cJSON_CreateNull();
		own = c->in ? item->valuestring : NULL;
		thinking = (char *) "untouched";
		content = igny8_take_answer(item, &thinking);
		CHECK_STR(content, c->content);
		CHECK_STR(thinking, c->thinking);
		if (c->in != NULL)
		{
			CHECK(content == own);
			CHECK(item->valuestring == NULL);
			CHECK(cJSON_IsString(item));
		}
		cJSON_Delete(item);		/* ASan: no double free, no leak */
		free_maybe(content);
		free_maybe(thinking);
	}
	end_group();
}

/*
 * igny8_json_parse_body: a NUL-terminated body is parsed where it is, with
 * the same verdicts as a copy of it (exactly one JSON value, whitespace
 * around it allowed).
 */
typedef struct ParseBodyCase
{
	const char *body;
	bool		ok;
} ParseBodyCase;

static const ParseBodyCase parse_body_cases[] = {
	{"{\"a\":\"b\"}", true},
	{" \n{\"a\":1}\n ", true},
	{"{\"a\":1}\n{\"a\":2}", false},
	{"{\"a\":", false},
	{"", false},
	{"\"x\"", true},
	{"nul", false},
	{"null", true}
};

static void
test_json_parse_body(void)
{
	int			i;

	begin_group("igny8_json_parse_body");
	for (i = 0; i < (int) lengthof(parse_body_cases); i++)
	{
		const ParseBodyCase *c = &parse_body_cases[i];
		Igny8HttpResponse resp;
		cJSON	   *json;
		char	   *exact;
		size_t		len = strlen(c->body);

		begin_case(i, c->body);
		memset(&resp, 0, sizeof(resp));
		resp.status = 200;
		resp.body = c->body;
		resp.body_len = len;
		resp.body_terminated = true;
		json = igny8_json_parse_body(&resp);
		CHECK((json != NULL) == c->ok);
		cJSON_Delete(json);

		/* not terminated: read from a buffer of exactly its bytes */
		exact = len > 0 ? malloc(len) : NULL;
		if (len > 0)
			memcpy(exact, c->body, len);
		resp.body = exact;
		resp.body_terminated = false;
		json = igny8_json_parse_body(&resp);
		CHECK((json != NULL) == c->ok);
		cJSON_Delete(json);
		free(exact);
	}
	end_group();
}

/*
 * igny8_answer_buffer_size: how far an answer's buffer grows within
 * igny8_ai.answer_memory.  A budget lowered (reload) below what the other
 * answers hold leaves nothing for this one: it is over the budget, never
 * given a buffer past it.
 */
typedef struct BufferCase
{
	const char *what;
	size_t		need;
	size_t		cap;
	size_t		max;
	size_t		held;			/* this buffer's cap included */
	size_t		budget;
	size_t		size;			/* 0: over the budget */
	bool		alone;
} BufferCase;

#define MB ((size_t) 1024 * 1024)

static const BufferCase buffer_cases[] = {
	{"the first piece: 16 kB", 100, 0, 64 * MB, 0, 256 * MB, 16384, false},
	{"doubles", 20000, 16384, 64 * MB, 16384, 256 * MB, 32768, false},
	{"a piece larger than double", 100000, 16384, 64 * MB, 16384, 256 * MB,
	100000, false},
	{"never past max + 1", 40 * MB, 33 * MB, 40 * MB, 33 * MB, 256 * MB,
	40 * MB + 1, false},
	{"near the budget: an eighth more", 4 * MB + 1, 4 * MB, 64 * MB,
	10 * MB, 12 * MB, 4 * MB + MB / 2, false},
	{"near the budget: up to what is left", 4 * MB + 1, 4 * MB, 64 * MB,
	11 * MB + 3 * MB / 4, 12 * MB, 4 * MB + MB / 4, false},
	{"others hold the rest: over, a retry may fit", 5 * MB, 4 * MB,
	64 * MB, 12 * MB, 12 * MB, 0, false},
	{"larger than the whole budget: over, alone", 13 * MB, 8 * MB, 64 * MB,
	8 * MB, 12 * MB, 0, true},
	{"budget lowered below what the others hold", 1 * MB + 1, 1 * MB,
	64 * MB, 101 * MB, 50 * MB, 0, false},
	{"budget lowered to exactly what the others hold", 1 * MB + 1, 1 * MB,
	64 * MB, 51 * MB, 50 * MB, 0, false},
	{"budget lowered below this answer alone", 60 * MB, 40 * MB, 64 * MB,
	140 * MB, 50 * MB, 0, true},
	{"budget lowered below this buffer, no other", 40 * MB + 1, 40 * MB,
	64 * MB, 40 * MB, 30 * MB, 0, true}
};

static void
test_answer_buffer(void)
{
	int			i;

	begin_group("igny8_answer_buffer_size");
	for (i = 0; i < (int) lengthof(buffer_cases); i++)
	{
		const BufferCase *c = &buffer_cases[i];
		bool		alone = !c->alone;
		size_t		size;

		begin_case(i, c->what);
		size = igny8_answer_buffer_size(c->need, c->cap, c->max, c->held,
										c->budget, &alone);
		CHECK_INT(size, c->size);
		CHECK(alone == c->alone);
		/* a buffer given is never past the budget, with the others' */
		if (size != 0)
		{
			CHECK(size >= c->need);
			CHECK(c->held - c->cap + size <= c->budget);
		}
	}
	end_group();
}

typedef struct ErrorTextCase
{
	const char *body;
	const char *message;		/* igny8_error_message, or NULL */
	bool		context;		/* igny8_context_exceeded */
} ErrorTextCase;

static const ErrorTextCase error_text_cases[] = {
	{"{\"error\":\"model is required\"}", "model is required", false},
	{"{\"error\":{\"message\":\"bad\",\"type\":\"t\"}}", "bad", false},
	{"{\"type\":\"error\",\"error\":{\"type\":\"api_error\"}}", NULL, false},
	{"{\"object\":\"error\",\"message\":\"old vLLM\",\"code\":400}",
	"old vLLM", false},
	{"{\"error\":{\"type\":\"t\"},\"message\":\"gateway\"}", "gateway", false},
	{"{\"message\":\"Unauthorized\"}", "Unauthorized", false},
	{"{\"error\":5,\"message\":6}", NULL, false},
	{"{\"message\":{\"content\":\"hi\"},\"done\":true}", NULL, false},
	{"[{\"error\":\"x\"}]", NULL, false},
	{"\"error\"", NULL, false},
	/* the context window is too small for the prompt */
	{"{\"error\":{\"message\":\"This model's maximum context length is 8192 "
		"tokens. However, your messages resulted in 9000 tokens.\","
		"\"type\":\"invalid_request_error\",\"param\":\"messages\","
		"\"code\":\"context_length_exceeded\"}}",
	"This model's maximum context length is 8192 tokens. However, your "
	"messages resulted in 9000 tokens.", true},
	{"{\"error\":{\"message\":\"x\",\"code\":\"context_length_exceeded\"}}",
	"x", true},
	{"{\"error\":{\"code\":400,\"message\":\"x\","
		"\"type\":\"exceed_context_size_error\"}}", "x", true},
	{"{\"error\":\"prompt is too long: 215000 tokens > 200000 maximum\"}",
	"prompt is too long: 215000 tokens > 200000 maximum", true},
	{"{\"error\":\"The Input Length Exceeds The Context Length\"}",
	"The Input Length Exceeds The Context Length", true},
	{"{\"error\":{\"message\":\"context_length_exceeded\",\"code\":null}}",
	"context_length_exceeded", true},
	/* other 400s */
	{"{\"error\":{\"message\":\"max_tokens is too large\","
		"\"code\":\"context_length\"}}", "max_tokens is too large", false},
	{"{\"error\":{\"message\":\"the context\",\"type\":\"exceed\"}}",
	"the context", false},
	{"{\"error\":{\"message\":\"Request too large\","
		"\"code\":\"rate_limit_exceeded\"}}", "Request too large", false}
};

static void
test_error_text(void)
{
	int			i;

	begin_group("igny8_error_message, igny8_context_exceeded");
	for (i = 0; i < (int) lengthof(error_text_cases); i++)
	{
		const ErrorTextCase *c = &error_text_cases[i];
		cJSON	   *json = test_json(c->body);

		begin_case(i, c->body);
		CHECK_STR(igny8_error_message(json), c->message);
		check(igny8_context_exceeded(json) == c->context, __LINE__,
			  "context_exceeded = %d, expected %d", (int) !c->context,
			  (int) c->context);
		cJSON_Delete(json);
	}
	case_name = NULL;
	CHECK(igny8_error_message(NULL) == NULL);
	CHECK(!igny8_context_exceeded(NULL));
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

	begin_group("headers, JSON and count helpers");
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
	free_request(&out);

	CHECK(igny8_str_contains("Your Credit Balance is low", "credit balance"));
	CHECK(!igny8_str_contains("credit", "credit balance"));
	CHECK(!igny8_str_contains(NULL, "x"));
	CHECK(!igny8_str_contains("x", NULL));
	CHECK(igny8_str_contains("", ""));

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

	json = test_json("{\"n\":3,\"neg\":-4,\"s\":\"5\",\"big\":1e30,\"f\":2.9}");
	CHECK_INT(igny8_json_count(json, "n"), 3);
	CHECK_INT(igny8_json_count(json, "neg"), 0);
	CHECK_INT(igny8_json_count(json, "s"), 0);
	CHECK_INT(igny8_json_count(json, "missing"), 0);
	CHECK_INT(igny8_json_count(json, "f"), 2);
	CHECK_INT(igny8_json_count(json, "big"), INT64CONST(9000000000000000000));
	CHECK_INT(igny8_json_count(NULL, "n"), 0);
	CHECK(igny8_json_string(json, "s") != NULL);
	CHECK(igny8_json_string(json, "n") == NULL);
	cJSON_Delete(json);
	json = test_json("[{\"a\":1}]");
	CHECK(igny8_json_member(json, "a") == NULL);
	cJSON_Delete(json);

	CHECK_INT(igny8_count_add(1, 2), 3);
	CHECK_INT(igny8_count_add(0, 0), 0);
	CHECK_INT(igny8_count_add(-1, 5), 5);
	CHECK_INT(igny8_count_add(INT64CONST(9000000000000000000), 1),
			  INT64CONST(9000000000000000000));
	CHECK_INT(igny8_count_add(INT64CONST(9000000000000000000),
							  INT64CONST(9000000000000000000)),
			  INT64CONST(9000000000000000000));

	dst = test_json("{\"a\":1,\"b\":2}");
	src = test_json("{\"b\":20,\"c\":30}");
	igny8_json_merge(dst, src, false);
	printed = igny8_json_print(dst);
	CHECK_JSON(printed, "{\"a\":1,\"b\":2,\"c\":30}");
	pfree(printed);
	igny8_json_merge(dst, src, true);
	printed = igny8_json_print(dst);
	CHECK_JSON(printed, "{\"a\":1,\"b\":20,\"c\":30}");
	pfree(printed);
	igny8_json_set(dst, "a", cJSON_CreateString("x"));
	printed = igny8_json_print(dst);
	CHECK_STR(printed, "{\"b\":20,\"c\":30,\"a\":\"x\"}");
	pfree(printed);
	igny8_json_set(NULL, "a", cJSON_CreateString("freed, not leaked"));
	cJSON_Delete(dst);
	cJSON_Delete(src);
	end_group();
}

/* ---------- build_chat ---------- */

static const Igny8Message basic_messages[] = {
	{"system", "You are terse."},
	{"user", "Hi"}
};

#define BASIC_MESSAGES_JSON \
	"[{\"role\":\"system\",\"content\":\"You are terse.\"}," \
	"{\"role\":\"user\",\"content\":\"Hi\"}]"

static const Igny8Message quoting_messages[] = {
	{"user", "say \"hi\"\n\\ \xc3\xa9"}
};

static const Igny8Message convo_messages[] = {
	{"system", "Be brief."},
	{"user", "Hi"},
	{"assistant", "Hello"},
	{"system", "Answer in French."},
	{"system", ""},
	{"user", "Bye"},
	{"user", "Really"}
};

static const Igny8Message user_hi[] = {{"user", "Hi"}};

/* a start of the answer, ending with whitespace, then a system message */
static const Igny8Message prefill_messages[] = {
	{"user", "Hi"},
	{"assistant", " Well,  \n\xc2\xa0\xe3\x80\x80\t"},
	{"system", "Be brief."}
};

/* an assistant turn that is not the last keeps its whitespace */
static const Igny8Message middle_assistant[] = {
	{"user", "Hi"},
	{"assistant", "Hello "},
	{"user", "Bye "}
};

static const Igny8Message null_fields[] = {{NULL, NULL}, {"system", NULL}};

#define MSGS(array) (array), lengthof(array)
#define NO_MSGS NULL, 0
#define CT "Content-Type: application/json"

#define OLLAMA_SETTINGS \
	"{\"keep_alive\":\"10m\",\"think\":true," \
	"\"options\":{\"num_ctx\":8192,\"temperature\":0.1," \
	"\"num_predict\":5,\"seed\":42},\"unknown\":1}"

typedef struct BuildCase
{
	const char *what;
	const Igny8TextProtocol *proto;
	const char *model;
	const Igny8Message *messages;
	int			nmessages;
	const char *settings;		/* JSON text or NULL */
	const char *api_key;
	int			max_tokens;		/* 0: 256 */
	bool		has_temperature;
	double		temperature;
	bool		omit_think;
	const char *path;
	const char *headers[IGNY8_MAX_HEADERS + 1];	/* exactly these, in order */
	const char *body;			/* compared as JSON */
	bool		exact;			/* and as text (the members' order) */
} BuildCase;

static const BuildCase build_cases[] = {
	/* Ollama */
	{"ollama: plain request", &igny8_ollama_protocol, "qwen3:32b",
		MSGS(basic_messages), NULL, NULL, 0, false, 0, false, "/api/chat",
		{CT, NULL},
		"{\"model\":\"qwen3:32b\",\"messages\":" BASIC_MESSAGES_JSON
		",\"stream\":false,\"options\":{\"num_predict\":256}}", true},
	{"ollama: settings merged, the request's values win",
		&igny8_ollama_protocol, "qwen3:32b", MSGS(basic_messages),
		OLLAMA_SETTINGS, NULL, 0, true, 0.7, false, "/api/chat", {CT, NULL},
		"{\"model\":\"qwen3:32b\",\"messages\":" BASIC_MESSAGES_JSON
		",\"stream\":false,\"options\":{\"num_ctx\":8192,"
		"\"temperature\":0.7,\"num_predict\":256,\"seed\":42},"
		"\"keep_alive\":\"10m\",\"think\":true}", false},
	{"ollama: without a request temperature the setting's stays",
		&igny8_ollama_protocol, "qwen3:32b", MSGS(basic_messages),
		OLLAMA_SETTINGS, NULL, 0, false, 0, false, "/api/chat", {CT, NULL},
		"{\"model\":\"qwen3:32b\",\"messages\":" BASIC_MESSAGES_JSON
		",\"stream\":false,\"options\":{\"num_ctx\":8192,"
		"\"temperature\":0.1,\"num_predict\":256,\"seed\":42},"
		"\"keep_alive\":\"10m\",\"think\":true}", false},
	{"ollama: omit_think after a \"does not support thinking\" refusal",
		&igny8_ollama_protocol, "qwen3:32b", MSGS(basic_messages),
		OLLAMA_SETTINGS, NULL, 0, false, 0, true, "/api/chat", {CT, NULL},
		"{\"model\":\"qwen3:32b\",\"messages\":" BASIC_MESSAGES_JSON
		",\"stream\":false,\"options\":{\"num_ctx\":8192,"
		"\"temperature\":0.1,\"num_predict\":256,\"seed\":42},"
		"\"keep_alive\":\"10m\"}", false},
	{"ollama: keep_alive as a number, think as a level",
		&igny8_ollama_protocol, "gpt-oss:20b", basic_messages, 1,
		"{\"keep_alive\":0,\"think\":\"high\"}", NULL, 0, false, 0, false,
		"/api/chat", {CT, NULL},
		"{\"model\":\"gpt-oss:20b\",\"messages\":[{\"role\":\"system\","
		"\"content\":\"You are terse.\"}],\"stream\":false,"
		"\"options\":{\"num_predict\":256},\"keep_alive\":0,"
		"\"think\":\"high\"}", false},
	{"ollama: settings of the wrong types are ignored",
		&igny8_ollama_protocol, "m", NO_MSGS,
		"{\"keep_alive\":true,\"think\":1,\"options\":\"x\",\"stream\":true}",
		NULL, 0, false, 0, false, "/api/chat", {CT, NULL},
		"{\"model\":\"m\",\"messages\":[],\"stream\":false,"
		"\"options\":{\"num_predict\":256}}", false},
	{"ollama: settings that are not an object", &igny8_ollama_protocol, "m",
		NO_MSGS, "[1]", NULL, 0, false, 0, false, "/api/chat", {CT, NULL},
		"{\"model\":\"m\",\"messages\":[],\"stream\":false,"
		"\"options\":{\"num_predict\":256}}", false},
	{"ollama: a key (for a proxy) becomes a bearer header",
		&igny8_ollama_protocol, "m", MSGS(basic_messages), NULL, "sk-secret",
		0, false, 0, false, "/api/chat",
		{CT, "Authorization: Bearer sk-secret", NULL},
		"{\"model\":\"m\",\"messages\":" BASIC_MESSAGES_JSON
		",\"stream\":false,\"options\":{\"num_predict\":256}}", false},
	{"ollama: strings are escaped", &igny8_ollama_protocol, "m",
		MSGS(quoting_messages), NULL, NULL, 0, false, 0, false, "/api/chat",
		{CT, NULL},
		"{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
		"\"content\":\"say \\\"hi\\\"\\n\\\\ \xc3\xa9\"}],"
		"\"stream\":false,\"options\":{\"num_predict\":256}}", false},
	{"ollama: NULL model, role and content", &igny8_ollama_protocol, NULL,
		MSGS(null_fields), NULL, NULL, 7, false, 0, false, "/api/chat",
		{CT, NULL},
		"{\"model\":\"\",\"messages\":[{\"role\":\"user\",\"content\":\"\"},"
		"{\"role\":\"system\",\"content\":\"\"}],\"stream\":false,"
		"\"options\":{\"num_predict\":7}}", false},

	/* OpenAI-compatible */
	{"openai: plain request", &igny8_openai_protocol, "gpt-4o-mini",
		MSGS(basic_messages), NULL, NULL, 0, false, 0, false,
		"/v1/chat/completions", {CT, NULL},
		"{\"model\":\"gpt-4o-mini\",\"messages\":" BASIC_MESSAGES_JSON
		",\"max_tokens\":256}", true},
	{"openai: temperature and key", &igny8_openai_protocol, "gpt-4o-mini",
		MSGS(basic_messages), NULL, "sk-test", 0, true, 0.2, false,
		"/v1/chat/completions", {CT, "Authorization: Bearer sk-test", NULL},
		"{\"model\":\"gpt-4o-mini\",\"messages\":" BASIC_MESSAGES_JSON
		",\"max_tokens\":256,\"temperature\":0.2}", false},
	{"openai: max_completion_tokens on request", &igny8_openai_protocol,
		"o3-mini", MSGS(basic_messages),
		"{\"max_tokens_field\":\"max_completion_tokens\"}", "sk-test", 0,
		false, 0, false, "/v1/chat/completions",
		{CT, "Authorization: Bearer sk-test", NULL},
		"{\"model\":\"o3-mini\",\"messages\":" BASIC_MESSAGES_JSON
		",\"max_completion_tokens\":256}", false},
	{"openai: an unknown max_tokens_field is ignored", &igny8_openai_protocol,
		"m", MSGS(basic_messages), "{\"max_tokens_field\":\"n_predict\"}",
		NULL, 0, false, 0, false, "/v1/chat/completions", {CT, NULL},
		"{\"model\":\"m\",\"messages\":" BASIC_MESSAGES_JSON
		",\"max_tokens\":256}", false},
	{"openai: extra_body added, never over the request's fields, no stream",
		&igny8_openai_protocol, "gpt-4o-mini", MSGS(basic_messages),
		"{\"extra_body\":{\"top_p\":0.5,\"model\":\"evil\","
		"\"stream\":true,\"reasoning_effort\":\"low\","
		"\"messages\":[],\"max_tokens\":1,\"temperature\":2,"
		"\"chat_template_kwargs\":{\"enable_thinking\":false}}}",
		NULL, 0, false, 0, false, "/v1/chat/completions", {CT, NULL},
		"{\"model\":\"gpt-4o-mini\",\"messages\":" BASIC_MESSAGES_JSON
		",\"max_tokens\":256,\"top_p\":0.5,\"reasoning_effort\":\"low\","
		"\"temperature\":2,"
		"\"chat_template_kwargs\":{\"enable_thinking\":false}}", false},
	{"openai: extra_body that is not an object", &igny8_openai_protocol, "m",
		NO_MSGS, "{\"extra_body\":[1,2]}", NULL, 0, false, 0, false,
		"/v1/chat/completions", {CT, NULL},
		"{\"model\":\"m\",\"messages\":[],\"max_tokens\":256}", false},

	/* Anthropic */
	{"anthropic: system messages joined and pulled out",
		&igny8_anthropic_protocol, "claude-sonnet-4-5", MSGS(convo_messages),
		NULL, "sk-ant-test", 0, false, 0, false, "/v1/messages",
		{CT, "x-api-key: sk-ant-test", "anthropic-version: 2023-06-01", NULL},
		"{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":256,"
		"\"system\":\"Be brief.\\n\\nAnswer in French.\","
		"\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
		"{\"role\":\"assistant\",\"content\":\"Hello\"},"
		"{\"role\":\"user\",\"content\":\"Bye\"},"
		"{\"role\":\"user\",\"content\":\"Really\"}]}", true},
	{"anthropic: a last assistant turn goes without its trailing whitespace",
		&igny8_anthropic_protocol, "c", MSGS(prefill_messages), NULL, "sk-k",
		0, false, 0, false, "/v1/messages",
		{CT, "x-api-key: sk-k", "anthropic-version: 2023-06-01", NULL},
		"{\"model\":\"c\",\"max_tokens\":256,\"system\":\"Be brief.\","
		"\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
		"{\"role\":\"assistant\",\"content\":\" Well,\"}]}", true},
	{"anthropic: other turns keep theirs",
		&igny8_anthropic_protocol, "c", MSGS(middle_assistant), NULL, "sk-k",
		0, false, 0, false, "/v1/messages",
		{CT, "x-api-key: sk-k", "anthropic-version: 2023-06-01", NULL},
		"{\"model\":\"c\",\"max_tokens\":256,"
		"\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
		"{\"role\":\"assistant\",\"content\":\"Hello \"},"
		"{\"role\":\"user\",\"content\":\"Bye \"}]}", true},
	{"anthropic: no key, no system, version from the settings",
		&igny8_anthropic_protocol, "claude-haiku-4-5", MSGS(user_hi),
		"{\"anthropic_version\":\"2024-10-22\"}", NULL, 0, false, 0, false,
		"/v1/messages", {CT, "anthropic-version: 2024-10-22", NULL},
		"{\"model\":\"claude-haiku-4-5\",\"max_tokens\":256,"
		"\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}", false},
	{"anthropic: temperature above 1 sent as 1", &igny8_anthropic_protocol,
		"c", MSGS(user_hi), NULL, "sk-k", 0, true, 1.5, false, "/v1/messages",
		{CT, "x-api-key: sk-k", "anthropic-version: 2023-06-01", NULL},
		"{\"model\":\"c\",\"max_tokens\":256,\"messages\":"
		"[{\"role\":\"user\",\"content\":\"Hi\"}],\"temperature\":1}", true},
	{"anthropic: temperature 2 sent as 1", &igny8_anthropic_protocol,
		"c", MSGS(user_hi), NULL, "sk-k", 0, true, 2.0, false, "/v1/messages",
		{CT, "x-api-key: sk-k", "anthropic-version: 2023-06-01", NULL},
		"{\"model\":\"c\",\"max_tokens\":256,\"messages\":"
		"[{\"role\":\"user\",\"content\":\"Hi\"}],\"temperature\":1}", true},
	{"anthropic: temperature 0.3 as is", &igny8_anthropic_protocol,
		"c", MSGS(user_hi), NULL, "sk-k", 0, true, 0.3, false, "/v1/messages",
		{CT, "x-api-key: sk-k", "anthropic-version: 2023-06-01", NULL},
		"{\"model\":\"c\",\"max_tokens\":256,\"messages\":"
		"[{\"role\":\"user\",\"content\":\"Hi\"}],\"temperature\":0.3}", true},
	{"anthropic: temperature 0 as is", &igny8_anthropic_protocol,
		"c", MSGS(user_hi), NULL, "sk-k", 0, true, 0, false, "/v1/messages",
		{CT, "x-api-key: sk-k", "anthropic-version: 2023-06-01", NULL},
		"{\"model\":\"c\",\"max_tokens\":256,\"messages\":"
		"[{\"role\":\"user\",\"content\":\"Hi\"}],\"temperature\":0}", true},
	{"anthropic: max_tokens, no temperature", &igny8_anthropic_protocol,
		"c", MSGS(user_hi), "{\"anthropic_version\":\"\"}", "sk-k", 64000, false,
		0, false, "/v1/messages",
		{CT, "x-api-key: sk-k", "anthropic-version: 2023-06-01", NULL},
		"{\"model\":\"c\",\"max_tokens\":64000,\"messages\":"
		"[{\"role\":\"user\",\"content\":\"Hi\"}]}", true},
	{"anthropic: a key with a line break cannot inject a header",
		&igny8_anthropic_protocol, "c", MSGS(user_hi), NULL, "k\r\nX-Evil: 1",
		0, false, 0, false, "/v1/messages",
		{CT, "x-api-key: k  X-Evil: 1", "anthropic-version: 2023-06-01",
		NULL},
		"{\"model\":\"c\",\"max_tokens\":256,\"messages\":"
		"[{\"role\":\"user\",\"content\":\"Hi\"}]}", true},
	{"anthropic: only system messages", &igny8_anthropic_protocol, "c",
		basic_messages, 1, NULL, "sk-k", 0, false, 0, false, "/v1/messages",
		{CT, "x-api-key: sk-k", "anthropic-version: 2023-06-01", NULL},
		"{\"model\":\"c\",\"max_tokens\":256,\"system\":\"You are terse.\","
		"\"messages\":[]}", true}
};

static void
test_build(void)
{
	int			i;

	begin_group("build_chat: method, path, headers, body");
	for (i = 0; i < (int) lengthof(build_cases); i++)
	{
		const BuildCase *c = &build_cases[i];
		Igny8TextRequest req;
		Igny8HttpRequest out;

		begin_case(i, c->what);
		memset(&req, 0, sizeof(req));
		req.model = c->model;
		req.messages = c->messages;
		req.nmessages = c->nmessages;
		req.max_tokens = c->max_tokens > 0 ? c->max_tokens : 256;
		req.has_temperature = c->has_temperature;
		req.temperature = c->temperature;
		req.settings = test_json(c->settings);
		req.omit_think = c->omit_think;

		memset(&out, 0x7f, sizeof(out));	/* must be set on every path */
		c->proto->build_chat(&req, c->api_key, &out);
		CHECK_STR(out.method, "POST");
		CHECK_STR(out.path, c->path);
		check_headers(&out, c->headers, __LINE__);
		CHECK_JSON(out.body, c->body);
		if (c->exact)
			CHECK_STR(out.body, c->body);
		if (c->api_key != NULL)
			check(strstr(out.body, c->api_key) == NULL, __LINE__,
				  "the key is in the body");
		free_request(&out);
		cJSON_Delete((cJSON *) req.settings);
	}
	end_group();
}

/* ---------- parse_chat: answers ---------- */

typedef struct AnswerCase
{
	const char *what;
	const Igny8TextProtocol *proto;
	const char *body;			/* of a 200 */
	const char *content;
	const char *thinking;
	const char *model;
	const char *finish_reason;
	int64_t		input_tokens;
	int64_t		cached_input_tokens;
	int64_t		output_tokens;
	int64_t		cache_write_input_tokens;	/* 0 unless given */
} AnswerCase;

#define BIG_COUNT INT64CONST(9000000000000000000)

static const AnswerCase answer_cases[] = {
	/* Ollama */
	{"ollama: thinking in its own field", &igny8_ollama_protocol,
		"{\"model\":\"qwen3:32b\",\"created_at\":\"2025-01-01T00:00:00.1Z\","
		"\"message\":{\"role\":\"assistant\",\"content\":\"Paris.\","
		"\"thinking\":\"The capital of France.\"},\"done\":true,"
		"\"done_reason\":\"stop\",\"total_duration\":123456,"
		"\"prompt_eval_count\":12,\"eval_count\":34,"
		"\"eval_duration\":1000}",
	"Paris.", "The capital of France.", "qwen3:32b", "stop", 12, 0, 34},
	{"ollama: thinking inline", &igny8_ollama_protocol,
		"{\"model\":\"deepseek-r1\",\"message\":{\"role\":\"assistant\","
		"\"content\":\"<think>\\nLet me think.\\n</think>\\n\\nParis.\"},"
		"\"done\":true,\"done_reason\":\"stop\",\"eval_count\":5}",
	"Paris.", "Let me think.", "deepseek-r1", "stop", 0, 0, 5},
	{"ollama: the empty block", &igny8_ollama_protocol,
		"{\"model\":\"qwen3\",\"message\":{\"role\":\"assistant\","
		"\"content\":\"<think>\\n\\n</think>\\n\\nParis.\"},\"done\":true}",
	"Paris.", NULL, "qwen3", NULL, 0, 0, 0},
	{"ollama: field and block: the field wins, the block goes",
		&igny8_ollama_protocol,
		"{\"model\":\"qwen3\",\"message\":{\"role\":\"assistant\","
		"\"content\":\"<think>inline</think>Paris.\","
		"\"thinking\":\"field\"},\"done\":true}",
	"Paris.", "field", "qwen3", NULL, 0, 0, 0},
	{"ollama: an empty field does not hide the block", &igny8_ollama_protocol,
		"{\"message\":{\"content\":\"<think>inline</think>Paris.\","
		"\"thinking\":\"\"},\"done\":true}",
	"Paris.", "inline", NULL, NULL, 0, 0, 0},
	{"ollama: counters, done_reason and model missing", &igny8_ollama_protocol,
		"{\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},"
		"\"done\":true}",
	"ok", NULL, NULL, NULL, 0, 0, 0},
	{"ollama: length, empty content, no \"done\"", &igny8_ollama_protocol,
		"{\"message\":{\"content\":\"\"},\"done_reason\":\"length\","
		"\"prompt_eval_count\":4096}",
	"", NULL, NULL, "length", 4096, 0, 0},
	{"ollama: an unclosed block, cut off by max_tokens, is all reasoning",
		&igny8_ollama_protocol,
		"{\"message\":{\"content\":\"<think>cut off \"},\"done\":true,"
		"\"done_reason\":\"length\"}",
	"", "cut off", NULL, "length", 0, 0, 0},
	{"ollama: error null, counters of the wrong types", &igny8_ollama_protocol,
		"{\"error\":null,\"message\":{\"content\":\"a\"},\"done\":true,"
		"\"prompt_eval_count\":\"7\",\"eval_count\":-3,\"model\":5}",
	"a", NULL, NULL, NULL, 0, 0, 0},

	/* OpenAI-compatible */
	{"openai: OpenAI's answer", &igny8_openai_protocol,
		"{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\","
		"\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\","
		"\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,"
		"\"message\":{\"role\":\"assistant\",\"content\":\"Hello!\","
		"\"refusal\":null,\"annotations\":[]},\"logprobs\":null,"
		"\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,"
		"\"completion_tokens\":3,\"total_tokens\":12,"
		"\"prompt_tokens_details\":{\"cached_tokens\":0},"
		"\"completion_tokens_details\":{\"reasoning_tokens\":0}}}",
	"Hello!", NULL, "gpt-4o-mini-2024-07-18", "stop", 9, 0, 3},
	{"openai: cached prompt tokens", &igny8_openai_protocol,
		"{\"model\":\"gpt-4o\",\"choices\":[{\"message\":{\"content\":\"x\"},"
		"\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":2006,"
		"\"completion_tokens\":300,\"total_tokens\":2306,"
		"\"prompt_tokens_details\":{\"cached_tokens\":1920,"
		"\"audio_tokens\":0}}}",
	"x", NULL, "gpt-4o", "stop", 2006, 1920, 300},
	{"openai: more cached tokens than prompt tokens is cut",
		&igny8_openai_protocol,
		"{\"choices\":[{\"message\":{\"content\":\"x\"}}],\"usage\":"
		"{\"prompt_tokens\":10,\"prompt_tokens_details\":{\"cached_tokens\":50}}}",
	"x", NULL, NULL, NULL, 10, 10, 0},
	{"openai: null content and a refusal: the refusal, its own reason kept",
		&igny8_openai_protocol,
		"{\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"message\":"
		"{\"role\":\"assistant\",\"content\":null,\"refusal\":\"no\"},"
		"\"finish_reason\":\"content_filter\"}],\"usage\":"
		"{\"prompt_tokens\":5,\"completion_tokens\":0}}",
	"no", NULL, "gpt-4o", "content_filter", 5, 0, 0},
	{"openai: a refusal with finish_reason stop says refusal",
		&igny8_openai_protocol,
		"{\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"message\":"
		"{\"role\":\"assistant\",\"content\":null,"
		"\"refusal\":\"I'm sorry, I cannot help with that.\"},"
		"\"finish_reason\":\"stop\"}],\"usage\":"
		"{\"prompt_tokens\":5,\"completion_tokens\":9}}",
	"I'm sorry, I cannot help with that.", NULL, "gpt-4o", "refusal", 5, 0, 9},
	{"openai: null content, no refusal (tool calls): an empty answer",
		&igny8_openai_protocol,
		"{\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"message\":"
		"{\"role\":\"assistant\",\"content\":null,\"refusal\":null,"
		"\"tool_calls\":[]},\"finish_reason\":\"tool_calls\"}]}",
	"", NULL, "gpt-4o", "tool_calls", 0, 0, 0},
	{"openai: Ollama's /v1, reasoning in its own field", &igny8_openai_protocol,
		"{\"id\":\"chatcmpl-7\",\"object\":\"chat.completion\","
		"\"model\":\"qwen3:8b\",\"system_fingerprint\":\"fp_ollama\","
		"\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
		"\"content\":\"4\",\"reasoning\":\"2 + 2 = 4\"},"
		"\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":11,"
		"\"completion_tokens\":20,\"total_tokens\":31}}",
	"4", "2 + 2 = 4", "qwen3:8b", "stop", 11, 0, 20},
	{"openai: vLLM's reasoning_content", &igny8_openai_protocol,
		"{\"model\":\"r1\",\"choices\":[{\"message\":{\"content\":\"yes\","
		"\"reasoning_content\":\"hmm\"},\"finish_reason\":\"stop\"}]}",
	"yes", "hmm", "r1", "stop", 0, 0, 0},
	{"openai: inline tags from a server without a reasoning parser",
		&igny8_openai_protocol,
		"{\"model\":\"r1\",\"choices\":[{\"message\":{\"content\":"
		"\"<think>\\nstep 1\\n</think>\\n\\nDone.\"},\"finish_reason\":\"length\"}]}",
	"Done.", "step 1", "r1", "length", 0, 0, 0},
	{"openai: reasoning field and inline tags: the field wins",
		&igny8_openai_protocol,
		"{\"choices\":[{\"message\":{\"content\":\"<think>x</think>ok\","
		"\"reasoning\":\"field\"}}]}",
	"ok", "field", NULL, NULL, 0, 0, 0},
	{"openai: usage, finish_reason, model and content missing",
		&igny8_openai_protocol,
		"{\"choices\":[{\"message\":{\"role\":\"assistant\"}}]}",
	"", NULL, NULL, NULL, 0, 0, 0},
	{"openai: llama.cpp's server, model file path as the model",
		&igny8_openai_protocol,
		"{\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"message\":"
		"{\"role\":\"assistant\",\"content\":\"Hi\"}}],\"created\":1,"
		"\"model\":\"/models/qwen3-8b-q4_k_m.gguf\",\"system_fingerprint\":"
		"\"b6000\",\"object\":\"chat.completion\",\"usage\":"
		"{\"completion_tokens\":2,\"prompt_tokens\":15,\"total_tokens\":17},"
		"\"id\":\"chatcmpl-x\",\"timings\":{\"prompt_n\":15}}",
	"Hi", NULL, "/models/qwen3-8b-q4_k_m.gguf", "stop", 15, 0, 2},

	/* Anthropic */
	{"anthropic: text blocks joined, thinking kept, others dropped",
		&igny8_anthropic_protocol,
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
	"Hello, world", "Let me see.", "claude-sonnet-4-5-20250929", "end_turn",
	10, 0, 5},
	{"anthropic: no usage, no model", &igny8_anthropic_protocol,
		"{\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"}],"
		"\"stop_reason\":\"max_tokens\"}",
	"Hi", NULL, NULL, "max_tokens", 0, 0, 0},
	{"anthropic: only non-text blocks: an empty answer",
		&igny8_anthropic_protocol,
		"{\"type\":\"message\",\"content\":[{\"type\":\"thinking\","
		"\"thinking\":\"a\"},{\"type\":\"thinking\",\"thinking\":\"b\"},"
		"{\"type\":\"text\"},{\"text\":\"untyped\"}],"
		"\"usage\":{\"input_tokens\":3}}",
	"", "a\n\nb", NULL, NULL, 3, 0, 0},
	{"anthropic: empty content", &igny8_anthropic_protocol,
		"{\"content\":[]}", "", NULL, NULL, NULL, 0, 0, 0},
	{"anthropic: an empty model and stop_reason are absent ones",
		&igny8_anthropic_protocol,
		"{\"model\":\"\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}],"
		"\"stop_reason\":\"\"}",
	"a", NULL, NULL, NULL, 0, 0, 0},
	{"anthropic: error null", &igny8_anthropic_protocol,
		"{\"content\":[{\"type\":\"text\",\"text\":\"a\"}],\"error\":null}",
	"a", NULL, NULL, NULL, 0, 0, 0},
	{"anthropic: prompt caching: the prompt is the sum of the three",
		&igny8_anthropic_protocol,
		"{\"type\":\"message\",\"model\":\"claude-haiku-4-5\",\"content\":"
		"[{\"type\":\"text\",\"text\":\"ok\"}],\"stop_reason\":\"end_turn\","
		"\"usage\":{\"input_tokens\":1,\"cache_creation_input_tokens\":4,"
		"\"cache_read_input_tokens\":100,\"output_tokens\":7,"
		"\"service_tier\":\"standard\"}}",
	"ok", NULL, "claude-haiku-4-5", "end_turn", 105, 100, 7, 4},
	{"anthropic: a cache write only", &igny8_anthropic_protocol,
		"{\"content\":[],\"usage\":{\"input_tokens\":3,"
		"\"cache_creation_input_tokens\":2000}}",
	"", NULL, NULL, NULL, 2003, 0, 0, 2000},
	{"anthropic: huge counts do not overflow", &igny8_anthropic_protocol,
		"{\"content\":[],\"usage\":{\"input_tokens\":9e18,"
		"\"cache_creation_input_tokens\":9e18,\"cache_read_input_tokens\":1e30}}",
	"", NULL, NULL, NULL, BIG_COUNT, BIG_COUNT, 0},
	{"anthropic: llama.cpp's /v1/messages", &igny8_anthropic_protocol,
		"{\"content\":[{\"text\":\"Hi\",\"type\":\"text\"}],\"id\":\"msg_x\","
		"\"model\":\"qwen3\",\"role\":\"assistant\",\"stop_reason\":\"end_turn\","
		"\"stop_sequence\":null,\"type\":\"message\",\"usage\":"
		"{\"input_tokens\":12,\"output_tokens\":2}}",
	"Hi", NULL, "qwen3", "end_turn", 12, 0, 2},

	/* the text is checked: valid UTF-8 passes whole, escaped or not */
	{"ollama: multi-byte content, raw and escaped", &igny8_ollama_protocol,
		"{\"message\":{\"content\":\"caf\xc3\xa9 \\u20ac \\ud83d\\ude00 "
		"\xf0\x9f\x98\x80\",\"thinking\":\"\xe6\x80\x9d\"},\"done\":true}",
	"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf0\x9f\x98\x80",
	"\xe6\x80\x9d", NULL, NULL, 0, 0, 0},
	{"ollama: an escaped backslash before u0000 is text, not a NUL",
		&igny8_ollama_protocol,
		"{\"message\":{\"content\":\"C:\\\\u0000\\\\x\"},\"done\":true}",
	"C:\\u0000\\x", NULL, NULL, NULL, 0, 0, 0},
	{"openai: control characters in the answer are kept",
		&igny8_openai_protocol,
		"{\"choices\":[{\"message\":{\"content\":\"a\\tb\\nc\\u0001\"}}]}",
	"a\tb\nc\x01", NULL, NULL, NULL, 0, 0, 0},

	/* the labels are cleaned, not refused */
	{"ollama: a model name with a bad byte and a line break",
		&igny8_ollama_protocol,
		"{\"model\":\"qwen\xff:8b\\n\",\"message\":{\"content\":\"ok\"},"
		"\"done\":true,\"done_reason\":\"st\\u007fop\"}",
	"ok", NULL, "qwen?:8b?", "st?op", 0, 0, 0},
	{"openai: a long model name and finish_reason are cut",
		&igny8_openai_protocol,
		"{\"model\":\""
		"0123456789012345678901234567890123456789012345678901234567890123"
		"4567890123456789012345678901234567890123456789012345678901234567"
		"89\",\"choices\":[{\"message\":{\"content\":\"ok\"},"
		"\"finish_reason\":\"a_finish_reason_longer_than_thirty_one\"}]}",
	"ok", NULL,
	"0123456789012345678901234567890123456789012345678901234567890123"
	"456789012345678901234567890123456789012345678901234567890123456",
	"a_finish_reason_longer_than_thi", 0, 0, 0},
	{"anthropic: a model name cut before a multi-byte character",
		&igny8_anthropic_protocol,
		"{\"model\":\""
		"0123456789012345678901234567890123456789012345678901234567890123"
		"45678901234567890123456789012345678901234567890123456789012345"
		"\xc3\xa9\",\"content\":[],\"stop_reason\":\"\xed\xa0\x80\"}",
	"", NULL,
	"0123456789012345678901234567890123456789012345678901234567890123"
	"45678901234567890123456789012345678901234567890123456789012345",
	"???", 0, 0, 0}
};

static void
test_answers(void)
{
	int			i;

	begin_group("parse_chat: answers");
	for (i = 0; i < (int) lengthof(answer_cases); i++)
	{
		const AnswerCase *c = &answer_cases[i];
		Igny8TextResult r;
		Igny8ProviderError e;

		begin_case(i, c->what);
		if (!check(parse_answer(c->proto, 200, c->body, -1, -1, &r, &e),
				   __LINE__, "parse failed: %s", e.message ? e.message : ""))
		{
			free_answer(&r, &e);
			continue;
		}
		CHECK(e.cls == IGNY8_ERR_NONE && e.message == NULL);
		CHECK(!e.drop_think && !e.retry_once);
		CHECK_STR(r.content, c->content);
		CHECK_STR(r.thinking, c->thinking);
		CHECK_STR(r.model, c->model);
		CHECK_STR(r.finish_reason, c->finish_reason);
		CHECK_INT(r.input_tokens, c->input_tokens);
		CHECK_INT(r.cached_input_tokens, c->cached_input_tokens);
		CHECK_INT(r.output_tokens, c->output_tokens);
		CHECK_INT(r.cache_write_input_tokens, c->cache_write_input_tokens);
		CHECK(r.content != NULL && pg_utf8(r.content));
		CHECK(r.thinking == NULL || pg_utf8(r.thinking));
		if (r.model != NULL)
			check_clean(r.model, IGNY8_MODEL_MAX, "model", __LINE__);
		if (r.finish_reason != NULL)
			check_clean(r.finish_reason, IGNY8_FINISH_REASON_MAX,
						"finish_reason", __LINE__);
		free_answer(&r, &e);
	}
	end_group();
}

/* ---------- parse_chat: errors ---------- */

#define ONCE 1					/* retry_once expected */
#define DROP_THINK 2			/* drop_think expected */
#define NOHDR -1, -1			/* no retry-after, no x-should-retry */

typedef struct ErrorCase
{
	const char *what;
	const Igny8TextProtocol *proto;
	long		status;
	const char *body;
	double		retry_after;	/* the response's, and err's expected */
	int			should_retry;
	Igny8ErrorClass cls;
	const char *message;		/* expected in err.message */
	int			flags;			/* ONCE, DROP_THINK */
} ErrorCase;

static char long_error_body[2100];	/* {"error":"yyy...y"}, see main() */

#define OPENAI_500 \
	"{\"error\":{\"message\":\"The server had an error while processing " \
	"your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}"
#define ANTHROPIC_AUTH \
	"{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\"," \
	"\"message\":\"invalid x-api-key\"}}"
#define ANTHROPIC_OVERLOADED \
	"{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"," \
	"\"message\":\"Overloaded\"}}"
#define LLAMACPP_CONTEXT \
	"{\"error\":{\"code\":400,\"message\":\"request (4476 tokens) exceeds " \
	"the available context size (4096 tokens), try increasing it\"," \
	"\"type\":\"exceed_context_size_error\",\"n_prompt_tokens\":4476," \
	"\"n_ctx\":4096}}"

static const ErrorCase error_cases[] = {
	/* Ollama: statuses and messages (protocols.md 1.4) */
	{"ollama: model is required", &igny8_ollama_protocol, 400,
		"{\"error\":\"model is required\"}", NOHDR,
	IGNY8_ERR_CALLER, "model is required", 0},
	{"ollama: invalid model name", &igny8_ollama_protocol, 400,
		"{\"error\":\"invalid model name\"}", NOHDR,
	IGNY8_ERR_CALLER, "invalid model name", 0},
	{"ollama: does not support thinking: retry without think",
		&igny8_ollama_protocol, 400,
		"{\"error\":\"\\\"qwen2.5\\\" does not support thinking\"}", NOHDR,
	IGNY8_ERR_RETRY, "\"qwen2.5\" does not support thinking", DROP_THINK},
	{"ollama: does not support tools", &igny8_ollama_protocol, 400,
		"{\"error\":\"\\\"qwen2.5\\\" does not support tools\"}", NOHDR,
	IGNY8_ERR_CALLER, "does not support tools", 0},
	{"ollama: model not found", &igny8_ollama_protocol, 404,
		"{\"error\":\"model 'llama9' not found\"}", NOHDR,
	IGNY8_ERR_FALLBACK, "model 'llama9' not found", 0},
	{"ollama: model not found, older wording", &igny8_ollama_protocol, 404,
		"{\"error\":\"model \\\"x\\\" not found, try pulling it first\"}", NOHDR,
	IGNY8_ERR_FALLBACK, "try pulling it first", 0},
	{"ollama: load failure, one retry", &igny8_ollama_protocol, 500,
		"{\"error\":\"model requires more system memory (64 GiB) than is available\"}",
		NOHDR, IGNY8_ERR_RETRY, "more system memory", ONCE},
	{"ollama: cloud model unreachable", &igny8_ollama_protocol, 502,
		"{\"error\":\"cloud model unreachable\"}", NOHDR,
	IGNY8_ERR_FALLBACK, "unreachable", 0},
	{"ollama: server busy", &igny8_ollama_protocol, 503,
		"{\"error\":\"server busy, please try again.  maximum pending requests exceeded\"}",
		2.0, -1, IGNY8_ERR_RETRY, "server busy", 0},
	/* Ollama: context window (protocols.md 5) */
	{"ollama: prompt longer than the context (shift off)",
		&igny8_ollama_protocol, 400,
		"{\"error\":\"the prompt is longer than the context length currently "
		"available to the model\"}", NOHDR,
	IGNY8_ERR_FALLBACK, "longer than the context length", 0},
	{"ollama: llama.cpp's context error quoted (truncate off)",
		&igny8_ollama_protocol, 400,
		"{\"error\":\"{\\\"error\\\":{\\\"code\\\":400,\\\"message\\\":"
		"\\\"request (8889 tokens) exceeds the available context size (4096 "
		"tokens), try increasing it\\\",\\\"type\\\":\\\"exceed_context_size_error\\\","
		"\\\"n_prompt_tokens\\\":8889,\\\"n_ctx\\\":4096}}\"}", NOHDR,
	IGNY8_ERR_FALLBACK, "exceeds the available context size", 0},
	{"ollama: the input length exceeds the context length",
		&igny8_ollama_protocol, 400,
		"{\"error\":\"the input length exceeds the context length\"}", NOHDR,
	IGNY8_ERR_FALLBACK, "the input length exceeds the context length", 0},
	{"ollama: a context error falls back whatever x-should-retry says",
		&igny8_ollama_protocol, 400,
		"{\"error\":\"the input length exceeds the context length\"}", 5, 1,
	IGNY8_ERR_FALLBACK, "exceeds the context length", 0},
	{"ollama: a context message in a 500 is a 500", &igny8_ollama_protocol,
		500, "{\"error\":\"the input length exceeds the context length\"}",
		NOHDR, IGNY8_ERR_RETRY, "exceeds the context length", ONCE},
	/* Ollama: a proxy's answers */
	{"ollama: proxy HTML", &igny8_ollama_protocol, 502,
		"<html><body>Bad Gateway</body></html>", NOHDR, IGNY8_ERR_FALLBACK,
	"HTTP 502 from Ollama: <html><body>Bad Gateway</body></html>", 0},
	{"ollama: no body", &igny8_ollama_protocol, 500, NULL, NOHDR,
	IGNY8_ERR_RETRY, "HTTP 500 from Ollama", ONCE},
	{"ollama: JSON without a message", &igny8_ollama_protocol, 500, "{}",
		NOHDR, IGNY8_ERR_RETRY, "HTTP 500 from Ollama: {}", ONCE},
	{"ollama: a proxy's error object", &igny8_ollama_protocol, 403,
		"{\"error\":{\"message\":\"forbidden by proxy\"}}", NOHDR,
	IGNY8_ERR_FALLBACK, "forbidden by proxy", 0},
	{"ollama: a gateway's top-level message", &igny8_ollama_protocol, 401,
		"{\"message\":\"Unauthorized\"}", NOHDR, IGNY8_ERR_FALLBACK,
	"Unauthorized", 0},
	{"ollama: plain text", &igny8_ollama_protocol, 401, "Unauthorized", NOHDR,
	IGNY8_ERR_FALLBACK, "HTTP 401 from Ollama: Unauthorized", 0},
	{"ollama: plain text with CR LF", &igny8_ollama_protocol, 504,
		"gateway timeout\r\n", NOHDR, IGNY8_ERR_RETRY,
	"HTTP 504 from Ollama: gateway timeout", 0},
	{"ollama: x-should-retry false", &igny8_ollama_protocol, 500,
		"{\"error\":\"runner crashed\"}", -1, 0, IGNY8_ERR_FALLBACK,
	"runner crashed", 0},
	{"ollama: x-should-retry true", &igny8_ollama_protocol, 502,
		"{\"error\":\"x\"}", 3, 1, IGNY8_ERR_RETRY, "x", 0},
	{"ollama: a long message is cut", &igny8_ollama_protocol, 400,
		long_error_body, NOHDR, IGNY8_ERR_CALLER, "yyy...", 0},

	/* Ollama: malformed 2xx answers */
	{"ollama: 200 with an error", &igny8_ollama_protocol, 200,
		"{\"error\":\"an error was encountered while running the model: unexpected EOF\"}",
		NOHDR, IGNY8_ERR_RETRY,
	"malformed response from Ollama: error \"an error was encountered", ONCE},
	{"ollama: done is false", &igny8_ollama_protocol, 200,
		"{\"model\":\"m\",\"message\":{\"content\":\"He\"},\"done\":false}",
		NOHDR, IGNY8_ERR_RETRY,
	"malformed response from Ollama: \"done\" is false", ONCE},
	{"ollama: no message", &igny8_ollama_protocol, 200,
		"{\"model\":\"m\",\"done\":true}", NOHDR, IGNY8_ERR_RETRY,
	"malformed response from Ollama: no message.content", ONCE},
	{"ollama: content not a string", &igny8_ollama_protocol, 200,
		"{\"message\":{\"content\":42},\"done\":true}", NOHDR,
	IGNY8_ERR_RETRY, "malformed response from Ollama", ONCE},
	{"ollama: message not an object", &igny8_ollama_protocol, 200,
		"{\"message\":\"hi\",\"done\":true}", NOHDR, IGNY8_ERR_RETRY,
	"malformed response from Ollama", ONCE},
	{"ollama: an array", &igny8_ollama_protocol, 200, "[1,2]", NOHDR,
	IGNY8_ERR_RETRY, "malformed response from Ollama: not a JSON object", ONCE},
	{"ollama: not JSON", &igny8_ollama_protocol, 200, "Ollama is running",
		NOHDR, IGNY8_ERR_RETRY, "malformed JSON response from Ollama (HTTP 200)",
	ONCE},
	{"ollama: cut JSON", &igny8_ollama_protocol, 200,
		"{\"model\":\"m\",\"message\":{\"content\":\"hi\"", NOHDR,
	IGNY8_ERR_RETRY, "malformed JSON response", ONCE},
	{"ollama: NDJSON stream", &igny8_ollama_protocol, 200,
		"{\"message\":{\"content\":\"He\"},\"done\":false}\n"
		"{\"message\":{\"content\":\"llo\"},\"done\":true}\n", NOHDR,
	IGNY8_ERR_RETRY, "malformed JSON response", ONCE},
	{"ollama: empty body", &igny8_ollama_protocol, 200, "", NOHDR,
	IGNY8_ERR_RETRY, "malformed JSON response", ONCE},
	{"ollama: no body at 200", &igny8_ollama_protocol, 200, NULL, NOHDR,
	IGNY8_ERR_RETRY, "malformed JSON response", ONCE},
	/* Ollama: the text must be valid UTF-8 without NUL */
	{"ollama: content not valid UTF-8", &igny8_ollama_protocol, 200,
		"{\"message\":{\"content\":\"caf\xe9\"},\"done\":true}", NOHDR,
		IGNY8_ERR_RETRY,
	"malformed response from Ollama: the answer is not valid UTF-8", ONCE},
	{"ollama: thinking not valid UTF-8", &igny8_ollama_protocol, 200,
		"{\"message\":{\"content\":\"ok\",\"thinking\":\"\xed\xa0\x80\"},"
		"\"done\":true}", NOHDR, IGNY8_ERR_RETRY,
	"malformed response from Ollama: the answer is not valid UTF-8", ONCE},
	{"ollama: inline trace not valid UTF-8", &igny8_ollama_protocol, 200,
		"{\"message\":{\"content\":\"<think>\xc0\xaf</think>ok\"},"
		"\"done\":true}", NOHDR, IGNY8_ERR_RETRY,
	"the answer is not valid UTF-8", ONCE},
	{"ollama: content with a NUL", &igny8_ollama_protocol, 200,
		"{\"message\":{\"content\":\"cut\\u0000here\"},\"done\":true}",
		NOHDR, IGNY8_ERR_RETRY,
		"malformed response from Ollama: a string contains a NUL character",
	ONCE},
	{"ollama: a NUL after an escaped backslash", &igny8_ollama_protocol, 200,
		"{\"message\":{\"content\":\"a\\\\\\u0000\"},\"done\":true}",
		NOHDR, IGNY8_ERR_RETRY, "NUL character", ONCE},

	/* OpenAI-compatible: statuses (protocols.md 3.3) */
	{"openai: context_length_exceeded falls back", &igny8_openai_protocol,
		400,
		"{\"error\":{\"message\":\"This model's maximum context length is 128000 tokens.\","
		"\"type\":\"invalid_request_error\",\"param\":\"messages\","
		"\"code\":\"context_length_exceeded\"}}", NOHDR,
	IGNY8_ERR_FALLBACK, "maximum context length is 128000 tokens", 0},
	{"openai: context_length_exceeded without its usual text",
		&igny8_openai_protocol, 400,
		"{\"error\":{\"message\":\"too many tokens\",\"type\":\"invalid_request_error\","
		"\"param\":null,\"code\":\"context_length_exceeded\"}}", -1, 1,
	IGNY8_ERR_FALLBACK, "too many tokens", 0},
	{"openai: vLLM's maximum context length", &igny8_openai_protocol, 400,
		"{\"object\":\"error\",\"message\":\"This model's maximum context "
		"length is 32768 tokens. However, you requested 40000 tokens (39000 "
		"in the messages, 1000 in the completion). Please reduce the length "
		"of the messages or completion.\",\"type\":\"BadRequestError\","
		"\"param\":null,\"code\":400}", NOHDR,
	IGNY8_ERR_FALLBACK, "maximum context length is 32768 tokens", 0},
	{"openai: llama.cpp's exceed_context_size_error", &igny8_openai_protocol,
		400, LLAMACPP_CONTEXT, NOHDR, IGNY8_ERR_FALLBACK,
	"request (4476 tokens) exceeds the available context size", 0},
	{"openai: llama.cpp's older context error", &igny8_openai_protocol, 400,
		"{\"error\":{\"code\":400,\"message\":\"the request exceeds the "
		"available context size, try increasing it\",\"type\":"
		"\"invalid_request_error\"}}", NOHDR,
	IGNY8_ERR_FALLBACK, "the request exceeds the available context size", 0},
	{"openai: unsupported parameter", &igny8_openai_protocol, 400,
		"{\"error\":{\"message\":\"Unsupported parameter: 'max_tokens' is not supported with this model.\","
		"\"type\":\"invalid_request_error\",\"param\":\"max_tokens\","
		"\"code\":\"unsupported_parameter\"}}", NOHDR,
	IGNY8_ERR_CALLER, "Unsupported parameter", 0},
	{"openai: bad key", &igny8_openai_protocol, 401,
		"{\"error\":{\"message\":\"Incorrect API key provided.\","
		"\"type\":\"invalid_request_error\",\"param\":null,"
		"\"code\":\"invalid_api_key\"}}", NOHDR,
	IGNY8_ERR_FALLBACK, "Incorrect API key provided.", 0},
	{"openai: region", &igny8_openai_protocol, 403,
		"{\"error\":{\"message\":\"Country, region, or territory not supported\","
		"\"type\":\"request_forbidden\",\"param\":null,"
		"\"code\":\"unsupported_country_region_territory\"}}", NOHDR,
	IGNY8_ERR_FALLBACK, "not supported", 0},
	{"openai: model not found", &igny8_openai_protocol, 404,
		"{\"error\":{\"message\":\"The model `gpt-9` does not exist or you do not have access to it.\","
		"\"type\":\"invalid_request_error\",\"param\":null,"
		"\"code\":\"model_not_found\"}}", NOHDR,
	IGNY8_ERR_FALLBACK, "does not exist", 0},
	{"openai: billing, whatever the headers say", &igny8_openai_protocol,
		429,
		"{\"error\":{\"message\":\"You exceeded your current quota, please check your plan and billing details.\","
		"\"type\":\"insufficient_quota\",\"param\":null,"
		"\"code\":\"insufficient_quota\"}}", 20, 1,
	IGNY8_ERR_FALLBACK, "exceeded your current quota", 0},
	{"openai: the spending limit reached, a 400", &igny8_openai_protocol, 400,
		"{\"error\":{\"message\":\"Billing hard limit has been reached\","
		"\"type\":\"invalid_request_error\",\"param\":null,"
		"\"code\":\"billing_hard_limit_reached\"}}", NOHDR,
	IGNY8_ERR_FALLBACK, "Billing hard limit", 0},
	{"openai: billing not active", &igny8_openai_protocol, 429,
		"{\"error\":{\"message\":\"Your account is not active, please check your billing details on our website.\","
		"\"type\":\"billing_not_active\",\"param\":null,"
		"\"code\":\"billing_not_active\"}}", 20, 1,
	IGNY8_ERR_FALLBACK, "not active", 0},
	{"openai: insufficient_quota as the code", &igny8_openai_protocol, 429,
		"{\"error\":{\"message\":\"quota\",\"type\":\"requests\","
		"\"param\":null,\"code\":\"insufficient_quota\"}}", NOHDR,
	IGNY8_ERR_FALLBACK, "quota", 0},
	{"openai: insufficient_quota as the type", &igny8_openai_protocol, 429,
		"{\"error\":{\"message\":\"quota\",\"type\":\"insufficient_quota\","
		"\"param\":null,\"code\":null}}", NOHDR,
	IGNY8_ERR_FALLBACK, "quota", 0},
	{"openai: request too large", &igny8_openai_protocol, 429,
		"{\"error\":{\"message\":\"Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 50000.\","
		"\"type\":\"tokens\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}",
		1, -1, IGNY8_ERR_FALLBACK, "Request too large", 0},
	{"openai: a plain rate limit", &igny8_openai_protocol, 429,
		"{\"error\":{\"message\":\"Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.\","
		"\"type\":\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}",
		1.5, -1, IGNY8_ERR_RETRY, "Rate limit reached", 0},
	{"openai: a rate limit without headers", &igny8_openai_protocol, 429,
		"{\"error\":{\"message\":\"slow down\"}}", NOHDR,
	IGNY8_ERR_RETRY, "slow down", 0},
	{"openai: 500", &igny8_openai_protocol, 500, OPENAI_500, NOHDR,
	IGNY8_ERR_RETRY, "The server had an error", 0},
	{"openai: 502", &igny8_openai_protocol, 502, OPENAI_500, NOHDR,
	IGNY8_ERR_RETRY, "The server had an error", 0},
	{"openai: 503", &igny8_openai_protocol, 503, OPENAI_500, NOHDR,
	IGNY8_ERR_RETRY, "The server had an error", 0},
	{"openai: 504", &igny8_openai_protocol, 504, OPENAI_500, NOHDR,
	IGNY8_ERR_RETRY, "The server had an error", 0},
	{"openai: 408", &igny8_openai_protocol, 408, OPENAI_500, NOHDR,
	IGNY8_ERR_RETRY, "The server had an error", 0},
	{"openai: 409", &igny8_openai_protocol, 409, OPENAI_500, NOHDR,
	IGNY8_ERR_RETRY, "The server had an error", 0},
	{"openai: x-should-retry false on a 500", &igny8_openai_protocol, 500,
		"{\"error\":{\"message\":\"boom\"}}", -1, 0,
	IGNY8_ERR_FALLBACK, "boom", 0},
	{"openai: x-should-retry false on a 429", &igny8_openai_protocol, 429,
		"{\"error\":{\"message\":\"wait\"}}", 4, 0,
	IGNY8_ERR_FALLBACK, "wait", 0},
	{"openai: x-should-retry true on a 409", &igny8_openai_protocol, 409,
		"{\"error\":{\"message\":\"lock\"}}", -1, 1,
	IGNY8_ERR_RETRY, "lock", 0},
	{"openai: x-should-retry true on a 400", &igny8_openai_protocol, 400,
		"{\"error\":{\"message\":\"flaky\"}}", -1, 1,
	IGNY8_ERR_RETRY, "flaky", 0},
	/* OpenAI-compatible: other servers' shapes */
	{"openai: older vLLM", &igny8_openai_protocol, 400,
		"{\"object\":\"error\",\"message\":\"max_tokens is too large\","
		"\"type\":\"BadRequestError\",\"param\":null,\"code\":400}", NOHDR,
	IGNY8_ERR_CALLER, "max_tokens is too large", 0},
	{"openai: Ollama's /v1 text error", &igny8_openai_protocol, 404,
		"{\"error\":\"model \\\"x\\\" not found\"}", NOHDR,
	IGNY8_ERR_FALLBACK, "model \"x\" not found", 0},
	{"openai: proxy HTML", &igny8_openai_protocol, 502,
		"<html><head><title>502 Bad Gateway</title></head></html>", NOHDR,
	IGNY8_ERR_RETRY, "HTTP 502 from OpenAI-compatible API: <html>", 0},
	{"openai: no body", &igny8_openai_protocol, 503, NULL, NOHDR,
	IGNY8_ERR_RETRY, "HTTP 503 from OpenAI-compatible API", 0},
	{"openai: FastAPI's 422", &igny8_openai_protocol, 422,
		"{\"detail\":[{\"loc\":[\"body\"]}]}", NOHDR, IGNY8_ERR_CALLER,
	"HTTP 422 from OpenAI-compatible API: {\"detail\"", 0},
	{"openai: a context phrase in a 500 is a 500", &igny8_openai_protocol,
		500, LLAMACPP_CONTEXT, NOHDR, IGNY8_ERR_RETRY,
	"exceeds the available context size", 0},
	/* OpenAI-compatible: malformed 2xx answers */
	{"openai: no choices", &igny8_openai_protocol, 200,
		"{\"id\":\"x\",\"object\":\"chat.completion\"}", NOHDR,
	IGNY8_ERR_RETRY, "malformed response from OpenAI-compatible API: no choices",
	ONCE},
	{"openai: empty choices", &igny8_openai_protocol, 200,
		"{\"choices\":[]}", NOHDR, IGNY8_ERR_RETRY, "no choices", ONCE},
	{"openai: a choice that is no object", &igny8_openai_protocol, 200,
		"{\"choices\":[1]}", NOHDR, IGNY8_ERR_RETRY,
	"no choices[0].message", ONCE},
	{"openai: content of the wrong type", &igny8_openai_protocol, 200,
		"{\"choices\":[{\"message\":{\"content\":[1]}}]}", NOHDR,
	IGNY8_ERR_RETRY, "message.content is not a string", ONCE},
	{"openai: 200 with an error", &igny8_openai_protocol, 200,
		"{\"error\":{\"message\":\"upstream failed\",\"code\":502}}", NOHDR,
	IGNY8_ERR_RETRY, "error \"upstream failed\"", ONCE},
	{"openai: a string", &igny8_openai_protocol, 200, "\"text\"", NOHDR,
	IGNY8_ERR_RETRY, "not a JSON object", ONCE},
	{"openai: SSE stream", &igny8_openai_protocol, 200,
		"data: {\"choices\":[]}\n\ndata: [DONE]\n\n", NOHDR,
	IGNY8_ERR_RETRY, "malformed JSON response", ONCE},
	{"openai: cut JSON", &igny8_openai_protocol, 200,
		"{\"choices\":[{\"message\":{\"content\":\"Hel", NOHDR,
	IGNY8_ERR_RETRY, "malformed JSON response", ONCE},
	{"openai: no body at 200", &igny8_openai_protocol, 200, NULL, NOHDR,
	IGNY8_ERR_RETRY, "malformed JSON response", ONCE},
	{"openai: content not valid UTF-8", &igny8_openai_protocol, 200,
		"{\"choices\":[{\"message\":{\"content\":\"\xf4\x90\x80\x80\"}}]}",
		NOHDR, IGNY8_ERR_RETRY,
		"malformed response from OpenAI-compatible API: the answer is not "
	"valid UTF-8", ONCE},
	{"openai: reasoning not valid UTF-8", &igny8_openai_protocol, 200,
		"{\"choices\":[{\"message\":{\"content\":\"ok\","
		"\"reasoning_content\":\"\xe2\x82\"}}]}", NOHDR,
	IGNY8_ERR_RETRY, "the answer is not valid UTF-8", ONCE},
	{"openai: a NUL in the content", &igny8_openai_protocol, 200,
		"{\"choices\":[{\"message\":{\"content\":\"\\u0000\"}}]}", NOHDR,
		IGNY8_ERR_RETRY,
		"malformed response from OpenAI-compatible API: a string contains a "
	"NUL character", ONCE},
	{"openai: a NUL anywhere in the answer", &igny8_openai_protocol, 200,
		"{\"id\":\"x\\u0000y\",\"choices\":[{\"message\":{\"content\":\"ok\"}}]}",
		NOHDR, IGNY8_ERR_RETRY, "NUL character", ONCE},

	/* Anthropic: statuses (protocols.md 4.2) */
	{"anthropic: invalid request", &igny8_anthropic_protocol, 400,
		"{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
		"\"message\":\"messages: roles must alternate\"},\"request_id\":\"req_1\"}",
		NOHDR, IGNY8_ERR_CALLER, "roles must alternate", 0},
	{"anthropic: credit balance too low", &igny8_anthropic_protocol, 400,
		"{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
		"\"message\":\"Your credit balance is too low to access the Anthropic API. "
		"Please go to Plans & Billing to upgrade or purchase credits.\"}}",
		NOHDR, IGNY8_ERR_FALLBACK, "credit balance is too low", 0},
	{"anthropic: prompt is too long", &igny8_anthropic_protocol, 400,
		"{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
		"\"message\":\"prompt is too long: 215000 tokens > 200000 maximum\"},"
		"\"request_id\":\"req_2\"}", NOHDR,
	IGNY8_ERR_FALLBACK, "prompt is too long: 215000 tokens > 200000 maximum", 0},
	{"anthropic: llama.cpp's context error on /v1/messages",
		&igny8_anthropic_protocol, 400, LLAMACPP_CONTEXT, NOHDR,
	IGNY8_ERR_FALLBACK, "exceeds the available context size", 0},
	{"anthropic: 401", &igny8_anthropic_protocol, 401, ANTHROPIC_AUTH, NOHDR,
	IGNY8_ERR_FALLBACK, "invalid x-api-key", 0},
	{"anthropic: 402", &igny8_anthropic_protocol, 402, ANTHROPIC_AUTH, NOHDR,
	IGNY8_ERR_FALLBACK, "invalid x-api-key", 0},
	{"anthropic: 403", &igny8_anthropic_protocol, 403, ANTHROPIC_AUTH, NOHDR,
	IGNY8_ERR_FALLBACK, "invalid x-api-key", 0},
	{"anthropic: 404", &igny8_anthropic_protocol, 404, ANTHROPIC_AUTH, NOHDR,
	IGNY8_ERR_FALLBACK, "invalid x-api-key", 0},
	{"anthropic: request too large", &igny8_anthropic_protocol, 413,
		"{\"type\":\"error\",\"error\":{\"type\":\"request_too_large\","
		"\"message\":\"Request exceeds the maximum allowed number of bytes.\"}}",
		NOHDR, IGNY8_ERR_CALLER, "maximum allowed number of bytes", 0},
	{"anthropic: Cloudflare's HTML 413", &igny8_anthropic_protocol, 413,
		"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n"
		"<body><center><h1>413 Request Entity Too Large</h1></center>"
		"<hr><center>cloudflare</center></body></html>", NOHDR,
	IGNY8_ERR_CALLER, "HTTP 413 from Anthropic: <html>  <head><title>413", 0},
	{"anthropic: 429 overloaded", &igny8_anthropic_protocol, 429,
		ANTHROPIC_OVERLOADED, 7, -1, IGNY8_ERR_RETRY, "Overloaded", 0},
	{"anthropic: 500 overloaded", &igny8_anthropic_protocol, 500,
		ANTHROPIC_OVERLOADED, 7, -1, IGNY8_ERR_RETRY, "Overloaded", 0},
	{"anthropic: 504 overloaded", &igny8_anthropic_protocol, 504,
		ANTHROPIC_OVERLOADED, 7, -1, IGNY8_ERR_RETRY, "Overloaded", 0},
	{"anthropic: 529 overloaded", &igny8_anthropic_protocol, 529,
		ANTHROPIC_OVERLOADED, 7, -1, IGNY8_ERR_RETRY, "Overloaded", 0},
	{"anthropic: rate limit", &igny8_anthropic_protocol, 429,
		"{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\","
		"\"message\":\"Number of request tokens has exceeded your per-minute rate limit\"}}",
		30, -1, IGNY8_ERR_RETRY, "rate limit", 0},
	{"anthropic: x-should-retry false", &igny8_anthropic_protocol, 529,
		ANTHROPIC_OVERLOADED, -1, 0, IGNY8_ERR_FALLBACK, "Overloaded", 0},
	{"anthropic: billing_error, whatever the headers say",
		&igny8_anthropic_protocol, 402,
		"{\"type\":\"error\",\"error\":{\"type\":\"billing_error\","
		"\"message\":\"billing\"}}", -1, 1, IGNY8_ERR_FALLBACK, "billing", 0},
	{"anthropic: empty body", &igny8_anthropic_protocol, 500, "", NOHDR,
	IGNY8_ERR_RETRY, "HTTP 500 from Anthropic", 0},
	{"anthropic: a proxy's text error", &igny8_anthropic_protocol, 503,
		"{\"error\":\"upstream connect error\"}", NOHDR, IGNY8_ERR_RETRY,
	"upstream connect error", 0},
	{"anthropic: an error without a message", &igny8_anthropic_protocol, 500,
		"{\"type\":\"error\",\"error\":{\"type\":\"api_error\"}}", NOHDR,
	IGNY8_ERR_RETRY, "HTTP 500 from Anthropic: {\"type\"", 0},
	/* Anthropic: malformed 2xx answers */
	{"anthropic: not JSON", &igny8_anthropic_protocol, 200, "not json", NOHDR,
	IGNY8_ERR_RETRY, "malformed JSON response from Anthropic (HTTP 200)", ONCE},
	{"anthropic: cut JSON", &igny8_anthropic_protocol, 200,
		"{\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"Hel",
		NOHDR, IGNY8_ERR_RETRY, "malformed JSON response", ONCE},
	{"anthropic: content a string", &igny8_anthropic_protocol, 200,
		"{\"type\":\"message\",\"content\":\"Hello\"}", NOHDR,
	IGNY8_ERR_RETRY, "no content array", ONCE},
	{"anthropic: no content", &igny8_anthropic_protocol, 200,
		"{\"type\":\"message\"}", NOHDR, IGNY8_ERR_RETRY,
	"no content array", ONCE},
	{"anthropic: 200 with an error", &igny8_anthropic_protocol, 200,
		ANTHROPIC_OVERLOADED, NOHDR, IGNY8_ERR_RETRY,
	"malformed response from Anthropic: error \"Overloaded\"", ONCE},
	{"anthropic: null", &igny8_anthropic_protocol, 200, "null", NOHDR,
	IGNY8_ERR_RETRY, "not a JSON object", ONCE},
	{"anthropic: content and a proxy's error", &igny8_anthropic_protocol, 200,
		"{\"content\":[],\"error\":{\"message\":\"proxy failed\"}}", NOHDR,
	IGNY8_ERR_RETRY, "error \"proxy failed\"", ONCE},
	{"anthropic: blanks", &igny8_anthropic_protocol, 200, "   ", NOHDR,
	IGNY8_ERR_RETRY, "malformed JSON response", ONCE},
	{"anthropic: a text block not valid UTF-8", &igny8_anthropic_protocol,
		200,
		"{\"content\":[{\"type\":\"text\",\"text\":\"ok \"},"
		"{\"type\":\"text\",\"text\":\"\xc3\"}]}", NOHDR, IGNY8_ERR_RETRY,
	"malformed response from Anthropic: the answer is not valid UTF-8", ONCE},
	{"anthropic: a thinking block not valid UTF-8", &igny8_anthropic_protocol,
		200,
		"{\"content\":[{\"type\":\"thinking\",\"thinking\":\"\xff\"},"
		"{\"type\":\"text\",\"text\":\"ok\"}]}", NOHDR, IGNY8_ERR_RETRY,
	"the answer is not valid UTF-8", ONCE},
	{"anthropic: a NUL in a text block", &igny8_anthropic_protocol, 200,
		"{\"content\":[{\"type\":\"text\",\"text\":\"a\\u0000b\"}]}", NOHDR,
		IGNY8_ERR_RETRY,
	"malformed response from Anthropic: a string contains a NUL character",
	ONCE}
};

static void
test_errors(void)
{
	int			i;

	begin_group("parse_chat: errors, classes and malformed answers");
	for (i = 0; i < (int) lengthof(error_cases); i++)
	{
		const ErrorCase *c = &error_cases[i];
		Igny8TextResult r;
		Igny8ProviderError e;
		bool		ok;

		begin_case(i, c->what);
		ok = parse_answer(c->proto, c->status, c->body, c->retry_after,
						  c->should_retry, &r, &e);
		if (!check(!ok, __LINE__, "parse succeeded"))
		{
			free_answer(&r, &e);
			continue;
		}
		check(e.cls == c->cls, __LINE__, "class %s, expected %s",
			  class_names[e.cls], class_names[c->cls]);
		check_clean(e.message, IGNY8_ERRMSG_MAX + 3, "message", __LINE__);
		CHECK_CONTAINS(e.message, c->message);
		check(e.retry_after == c->retry_after, __LINE__,
			  "retry_after %g, expected %g", e.retry_after, c->retry_after);
		check(e.drop_think == ((c->flags & DROP_THINK) != 0), __LINE__,
			  "drop_think %d", (int) e.drop_think);
		check(e.retry_once == ((c->flags & ONCE) != 0), __LINE__,
			  "retry_once %d", (int) e.retry_once);
		CHECK(r.content == NULL && r.thinking == NULL && r.model == NULL &&
			  r.finish_reason == NULL);
		free_answer(&r, &e);
	}
	case_name = NULL;

	/*
	 * A raw NUL byte inside a string (not JSON, but cJSON copies it) would
	 * cut the answer silently: refused like a \u0000 escape.
	 */
	{
		static const char ollama_body[] =
			"{\"message\":{\"content\":\"Part one\0part two\"},\"done\":true}";
		static const char openai_body[] =
			"{\"choices\":[{\"message\":{\"content\":\"Part one\0part two\"}}]}";
		static const char anthropic_body[] =
			"{\"content\":[{\"type\":\"text\",\"text\":\"Part one\0part two\"}]}";
		const struct
		{
			const Igny8TextProtocol *proto;
			const char *body;
			size_t		len;
		}			raw[] = {
			{&igny8_ollama_protocol, ollama_body, sizeof(ollama_body) - 1},
			{&igny8_openai_protocol, openai_body, sizeof(openai_body) - 1},
			{&igny8_anthropic_protocol, anthropic_body, sizeof(anthropic_body) - 1}
		};

		for (i = 0; i < (int) lengthof(raw); i++)
		{
			Igny8HttpResponse resp;
			Igny8TextResult r;
			Igny8ProviderError e;

			begin_case(i, "a raw NUL byte in the answer");
			memset(&resp, 0, sizeof(resp));
			resp.status = 200;
			resp.body = raw[i].body;
			resp.body_len = raw[i].len;
			resp.retry_after = -1;
			resp.should_retry = -1;
			CHECK(!raw[i].proto->parse_chat(&resp, &r, &e));
			CHECK(e.cls == IGNY8_ERR_RETRY && e.retry_once);
			CHECK_CONTAINS(e.message, "a string contains a NUL character");
			CHECK(r.content == NULL);
			free_answer(&r, &e);
		}
		case_name = NULL;
	}
	end_group();
}

/* ---------- health probes ---------- */

typedef struct ProbeBuildCase
{
	const char *what;
	const Igny8ProbeProtocol *proto;
	const char *api_key;
	const char *settings;		/* JSON text or NULL */
	const char *path;
	const char *headers[IGNY8_MAX_HEADERS + 1];	/* exactly these, in order */
} ProbeBuildCase;

static const ProbeBuildCase probe_build_cases[] = {
	{"ollama: no key", &igny8_ollama_probe, NULL, NULL, "/api/tags", {NULL}},
	{"ollama: a key for a proxy, settings ignored", &igny8_ollama_probe,
		"sk-proxy", "{\"anthropic_version\":\"x\"}", "/api/tags",
	{"Authorization: Bearer sk-proxy", NULL}},
	{"ollama: a key with a line break", &igny8_ollama_probe,
		"k\r\nX-Evil: 1", NULL, "/api/tags",
	{"Authorization: Bearer k  X-Evil: 1", NULL}},
	{"openai: a key", &igny8_openai_probe, "sk-test", NULL, "/v1/models",
	{"Authorization: Bearer sk-test", NULL}},
	{"openai: no key", &igny8_openai_probe, NULL, NULL, "/v1/models", {NULL}},
	{"anthropic: key and version", &igny8_anthropic_probe, "sk-ant-test",
		NULL, "/v1/models?limit=1000",
	{"x-api-key: sk-ant-test", "anthropic-version: 2023-06-01", NULL}},
	{"anthropic: version from the settings", &igny8_anthropic_probe,
		"sk-ant-test", "{\"anthropic_version\":\"2024-10-22\"}", "/v1/models?limit=1000",
	{"x-api-key: sk-ant-test", "anthropic-version: 2024-10-22", NULL}},
	{"anthropic: no key, empty version", &igny8_anthropic_probe, NULL,
		"{\"anthropic_version\":\"\"}", "/v1/models?limit=1000",
	{"anthropic-version: 2023-06-01", NULL}},
	{"comfyui: no key", &igny8_comfyui_probe, NULL, NULL, "/system_stats",
	{NULL}},
	{"comfyui: a key for a proxy", &igny8_comfyui_probe, "proxy-token", NULL,
	"/system_stats", {"Authorization: Bearer proxy-token", NULL}}
};

static void
test_probe_build(void)
{
	int			i;

	begin_group("build_probe: a GET without a body");
	for (i = 0; i < (int) lengthof(probe_build_cases); i++)
	{
		const ProbeBuildCase *c = &probe_build_cases[i];
		cJSON	   *settings = test_json(c->settings);
		Igny8HttpRequest out;

		begin_case(i, c->what);
		memset(&out, 0x7f, sizeof(out));
		c->proto->build_probe(c->api_key, settings, &out);
		CHECK_STR(out.method, "GET");
		CHECK_STR(out.path, c->path);
		CHECK(out.body == NULL);
		check_headers(&out, c->headers, __LINE__);
		free_request(&out);
		cJSON_Delete(settings);
	}
	end_group();
}

typedef struct ProbeCase
{
	const char *what;
	const Igny8ProbeProtocol *proto;
	long		status;
	const char *body;
	const char *const *models;
	int			nmodels;
	bool		healthy;
	bool		degraded;
	const char *summary;
	const char *detail;			/* compared as JSON */
} ProbeCase;

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

#define OPENAI_MODELS \
	"{\"object\":\"list\",\"data\":[" \
	"{\"id\":\"gpt-4o-mini\",\"object\":\"model\",\"created\":1721172741," \
	"\"owned_by\":\"system\"}," \
	"{\"id\":\"gpt-4o\",\"object\":\"model\",\"created\":1715367049," \
	"\"owned_by\":\"system\"}," \
	"{\"id\":\"o3-mini\",\"object\":\"model\",\"created\":1737146383," \
	"\"owned_by\":\"system\"}]}"

#define COMFYUI_SYSTEM \
	"\"system\":{\"os\":\"posix\",\"ram_total\":67108864000," \
	"\"ram_free\":50000000000,\"comfyui_version\":\"0.3.43\"," \
	"\"required_frontend_version\":\"1.23.4\",\"python_version\":\"3.12.3\"," \
	"\"pytorch_version\":\"2.7.1+cu128\",\"embedded_python\":false," \
	"\"argv\":[\"main.py\",\"--listen\"]}"

#define MALFORMED(status) \
	"{\"http_status\":" #status ",\"error\":\"malformed response\"}"
#define ALL_PRESENT(n, listed) \
	"{\"models_present\":" #n ",\"models_listed\":" #listed \
	",\"models_missing\":[]}"

static const char *const m_all[] = {"qwen3:32b", "llama3.2:latest"};
static const char *const m_untagged[] = {"llama3.2", "nomic-embed-text"};
static const char *const m_latest[] = {"mymodel:latest"};
static const char *const m_one_missing[] = {"qwen3:32b", "llama3.2",
"qwen3:8b"};
static const char *const m_two_missing[] = {"deepseek-r1:70b", "qwen3",
"qwen3:32b"};
static const char *const m_messy[] = {"qwen3:32b", NULL, "", "qwen3:32b",
"gone", "gone"};
static const char *const m_by_model[] = {"a:1", "b"};
static const char *const m_spaced[] = {"ns/x", "host:5000/ns/y",
"host:5000/ns/z:latest"};
static const char *const m_near[] = {"x", "x:latest2", "y:late"};
static const char *const m_openai[] = {"gpt-4o-mini", "o3-mini"};
static const char *const m_openai_missing[] = {"gpt-4o", "gpt-5",
"GPT-4O-MINI"};
static const char *const m_ollama_v1[] = {"llama3.2", "qwen3:latest",
"qwen3:8b"};
static const char *const m_vllm[] = {"Qwen/Qwen3-32B"};
static const char *const m_aliases[] = {"claude-3-5-sonnet-latest",
"claude-sonnet-4-5"};
static const char *const m_current[] = {"claude-sonnet-5-5",
"claude-haiku-5-5"};
static const char *const m_old_aliases[] = {"claude-sonnet-4-0",
	"claude-3-7-sonnet-latest", "claude-opus-4-0", "claude-sonnet-4-1",
"claude-3-5-haiku-latest"};
static const char *const m_checkpoints[] = {"sd_xl_base_1.0.safetensors"};

#define MODELS(array) (array), lengthof(array)
#define NO_MODELS NULL, 0
#define CHECK_OFF NULL, -1		/* "check_models": false */

static const ProbeCase probe_cases[] = {
	/* Ollama: /api/tags */
	{"ollama: all present", &igny8_ollama_probe, 200, OLLAMA_TAGS,
		MODELS(m_all), true, false, "all 2 configured models present",
	ALL_PRESENT(2, 3)},
	{"ollama: configured without a tag, listed as :latest",
		&igny8_ollama_probe, 200, OLLAMA_TAGS, MODELS(m_untagged), true, false,
	"all 2 configured models present", ALL_PRESENT(2, 3)},
	{"ollama: configured as :latest, listed without a tag",
		&igny8_ollama_probe, 200, "{\"models\":[{\"name\":\"mymodel\"}]}",
		MODELS(m_latest), true, false, "1 configured model present",
	ALL_PRESENT(1, 1)},
	{"ollama: a different tag is a different model", &igny8_ollama_probe, 200,
		OLLAMA_TAGS, MODELS(m_one_missing), true, true, "model qwen3:8b missing",
		"{\"models_missing\":[\"qwen3:8b\"],\"models_present\":2,"
	"\"models_listed\":3}"},
	{"ollama: two missing", &igny8_ollama_probe, 200, OLLAMA_TAGS,
		MODELS(m_two_missing), true, true,
		"2 models missing: deepseek-r1:70b, qwen3",
		"{\"models_missing\":[\"deepseek-r1:70b\",\"qwen3\"],"
	"\"models_present\":1,\"models_listed\":3}"},
	{"ollama: NULL, empty and repeated names", &igny8_ollama_probe, 200,
		OLLAMA_TAGS, MODELS(m_messy), true, true, "model gone missing",
		"{\"models_missing\":[\"gone\"],\"models_present\":1,"
	"\"models_listed\":3}"},
	{"ollama: no models configured", &igny8_ollama_probe, 200, OLLAMA_TAGS,
		NO_MODELS, true, false, "running, no models configured",
	ALL_PRESENT(0, 3)},
	{"ollama: an empty list", &igny8_ollama_probe, 200, "{\"models\":[]}",
		MODELS(m_all), true, true, "2 models missing: qwen3:32b, llama3.2:latest",
		"{\"models_missing\":[\"qwen3:32b\",\"llama3.2:latest\"],"
	"\"models_present\":0,\"models_listed\":0}"},
	{"ollama: \"model\" counts as well as \"name\", junk skipped",
		&igny8_ollama_probe, 200,
		"{\"models\":[{\"name\":\"alias\",\"model\":\"a:1\"},"
		"{\"model\":\"b:latest\"},7,{\"name\":3},null]}",
		MODELS(m_by_model), true, false, "all 2 configured models present",
	ALL_PRESENT(2, 5)},
	{"ollama: a namespace, a registry port that is not a tag",
		&igny8_ollama_probe, 200,
		"{\"models\":[{\"name\":\"ns/x:latest\"},"
		"{\"name\":\"host:5000/ns/y:latest\"},"
		"{\"name\":\"host:5000/ns/z\"},{\"name\":\"host:latest\"}]}",
		MODELS(m_spaced), true, false, "all 3 configured models present",
	ALL_PRESENT(3, 4)},
	{"ollama: near misses", &igny8_ollama_probe, 200,
		"{\"models\":[{\"name\":\"x:latest2\"},{\"name\":\"y\"},"
		"{\"name\":\"xx:latest\"}]}", MODELS(m_near), true, true,
		"2 models missing: x, y:late",
		"{\"models_missing\":[\"x\",\"y:late\"],\"models_present\":1,"
	"\"models_listed\":3}"},
	{"ollama: model check off", &igny8_ollama_probe, 200, OLLAMA_TAGS,
		CHECK_OFF, true, false, "3 models listed (model check off)",
	"{\"models_listed\":3,\"model_check\":false}"},
	{"ollama: model check off, one entry", &igny8_ollama_probe, 200,
		"{\"models\":[{\"name\":\"x\"}]}", CHECK_OFF, true, false,
		"1 model listed (model check off)",
	"{\"models_listed\":1,\"model_check\":false}"},
	{"ollama: model check off, empty list", &igny8_ollama_probe, 200,
		"{\"models\":[]}", CHECK_OFF, true, false,
		"0 models listed (model check off)",
	"{\"models_listed\":0,\"model_check\":false}"},
	{"ollama: model check off, malformed all the same", &igny8_ollama_probe,
		200, "{\"models\":{}}", CHECK_OFF, false, false,
	"malformed response from Ollama", MALFORMED(200)},
	{"ollama: model check off, an error all the same", &igny8_ollama_probe,
		500, "{\"error\":\"boom\"}", CHECK_OFF, false, false, "HTTP 500: boom",
	"{\"http_status\":500,\"error\":\"boom\"}"},
	/* Ollama: errors and malformed answers */
	{"ollama: 500", &igny8_ollama_probe, 500,
		"{\"error\":\"something went wrong\"}", MODELS(m_all), false, false,
		"HTTP 500: something went wrong",
	"{\"http_status\":500,\"error\":\"something went wrong\"}"},
	{"ollama: a proxy's error object", &igny8_ollama_probe, 401,
		"{\"error\":{\"message\":\"bad token\"}}", NO_MODELS, false, false,
	"HTTP 401: bad token", "{\"http_status\":401,\"error\":\"bad token\"}"},
	{"ollama: a gateway's top-level message", &igny8_ollama_probe, 401,
		"{\"message\":\"Unauthorized\"}", NO_MODELS, false, false,
	"HTTP 401: Unauthorized", "{\"http_status\":401,\"error\":\"Unauthorized\"}"},
	{"ollama: proxy HTML", &igny8_ollama_probe, 502,
		"<html><body>Bad Gateway</body></html>\r\n", NO_MODELS, false, false,
		"HTTP 502: <html><body>Bad Gateway</body></html>",
	"{\"http_status\":502,\"error\":\"<html><body>Bad Gateway</body></html>\"}"},
	{"ollama: no body", &igny8_ollama_probe, 503, NULL, NO_MODELS, false,
		false, "HTTP 503: empty response body",
	"{\"http_status\":503,\"error\":\"empty response body\"}"},
	{"ollama: a blank message", &igny8_ollama_probe, 404,
		"{\"error\":\"  \"}", NO_MODELS, false, false,
		"HTTP 404: {\"error\":\"  \"}",
	"{\"http_status\":404,\"error\":\"{\\\"error\\\":\\\"  \\\"}\"}"},
	{"ollama: a list at a non-2xx status is an error", &igny8_ollama_probe,
		302, "{\"models\":[]}", NO_MODELS, false, false,
		"HTTP 302: {\"models\":[]}",
	"{\"http_status\":302,\"error\":\"{\\\"models\\\":[]}\"}"},
	{"ollama: GET / text", &igny8_ollama_probe, 200, "Ollama is running",
		MODELS(m_all), false, false, "malformed response from Ollama",
	MALFORMED(200)},
	{"ollama: models null", &igny8_ollama_probe, 200, "{\"models\":null}",
		NO_MODELS, false, false, "malformed response from Ollama",
	MALFORMED(200)},
	{"ollama: an array", &igny8_ollama_probe, 200, "[{\"models\":[]}]",
		NO_MODELS, false, false, "malformed response from Ollama",
	MALFORMED(200)},
	{"ollama: 200 with an error", &igny8_ollama_probe, 200,
		"{\"error\":\"boom\"}", NO_MODELS, false, false,
	"malformed response from Ollama", MALFORMED(200)},
	{"ollama: 204", &igny8_ollama_probe, 204, NULL, NO_MODELS, false, false,
	"malformed response from Ollama", MALFORMED(204)},
	{"ollama: cut JSON", &igny8_ollama_probe, 200,
		"{\"models\":[{\"name\":\"a\"}", NO_MODELS, false, false,
	"malformed response from Ollama", MALFORMED(200)},

	/* OpenAI-compatible: /v1/models */
	{"openai: all present", &igny8_openai_probe, 200, OPENAI_MODELS,
		MODELS(m_openai), true, false, "all 2 configured models present",
	ALL_PRESENT(2, 3)},
	{"openai: ids are compared exactly, case included", &igny8_openai_probe,
		200, OPENAI_MODELS, MODELS(m_openai_missing), true, true,
		"2 models missing: gpt-5, GPT-4O-MINI",
		"{\"models_missing\":[\"gpt-5\",\"GPT-4O-MINI\"],"
	"\"models_present\":1,\"models_listed\":3}"},
	{"openai: no models configured", &igny8_openai_probe, 200, OPENAI_MODELS,
		NO_MODELS, true, false, "running, no models configured",
	ALL_PRESENT(0, 3)},
	{"openai: Ollama's /v1/models, tags defaulted both ways",
		&igny8_openai_probe, 200,
		"{\"object\":\"list\",\"data\":[{\"id\":\"llama3.2:latest\","
		"\"object\":\"model\",\"created\":1746000000,\"owned_by\":\"library\"},"
		"{\"id\":\"qwen3\",\"object\":\"model\",\"owned_by\":\"library\"}]}",
		MODELS(m_ollama_v1), true, true, "model qwen3:8b missing",
		"{\"models_missing\":[\"qwen3:8b\"],\"models_present\":2,"
	"\"models_listed\":2}"},
	{"openai: vLLM, an entry without an id", &igny8_openai_probe, 200,
		"{\"object\":\"list\",\"data\":[{\"id\":\"Qwen/Qwen3-32B\","
		"\"object\":\"model\",\"owned_by\":\"vllm\",\"root\":\"Qwen/Qwen3-32B\","
		"\"max_model_len\":32768},{\"object\":\"model\"}]}",
		MODELS(m_vllm), true, false, "1 configured model present",
	ALL_PRESENT(1, 2)},
	{"openai: an empty list", &igny8_openai_probe, 200,
		"{\"object\":\"list\",\"data\":[]}", MODELS(m_openai), true, true,
		"2 models missing: gpt-4o-mini, o3-mini",
		"{\"models_missing\":[\"gpt-4o-mini\",\"o3-mini\"],"
	"\"models_present\":0,\"models_listed\":0}"},
	{"openai: llama.cpp lists its model file, check on", &igny8_openai_probe,
		200,
		"{\"object\":\"list\",\"data\":[{\"id\":\"/models/qwen3-8b.gguf\","
		"\"object\":\"model\",\"created\":1,\"owned_by\":\"llamacpp\","
		"\"meta\":{\"n_ctx_train\":40960}}]}", MODELS(m_vllm), true, true,
		"model Qwen/Qwen3-32B missing",
		"{\"models_missing\":[\"Qwen/Qwen3-32B\"],\"models_present\":0,"
	"\"models_listed\":1}"},
	{"openai: llama.cpp lists its model file, check off", &igny8_openai_probe,
		200,
		"{\"object\":\"list\",\"data\":[{\"id\":\"/models/qwen3-8b.gguf\","
		"\"object\":\"model\",\"created\":1,\"owned_by\":\"llamacpp\","
		"\"meta\":{\"n_ctx_train\":40960}}]}", CHECK_OFF, true, false,
		"1 model listed (model check off)",
	"{\"models_listed\":1,\"model_check\":false}"},
	{"openai: OpenAI's list, check off", &igny8_openai_probe, 200,
		OPENAI_MODELS, CHECK_OFF, true, false,
		"3 models listed (model check off)",
	"{\"models_listed\":3,\"model_check\":false}"},
	{"openai: nmodels below -1 is off too", &igny8_openai_probe, 200,
		OPENAI_MODELS, m_openai, -7, true, false,
		"3 models listed (model check off)",
	"{\"models_listed\":3,\"model_check\":false}"},
	/* OpenAI-compatible: errors and malformed answers */
	{"openai: bad key", &igny8_openai_probe, 401,
		"{\"error\":{\"message\":\"Incorrect API key provided: sk-te***st.\","
		"\"type\":\"invalid_request_error\",\"param\":null,"
		"\"code\":\"invalid_api_key\"}}", MODELS(m_openai), false, false,
		"HTTP 401: Incorrect API key provided: sk-te***st.",
	"{\"http_status\":401,\"error\":\"Incorrect API key provided: sk-te***st.\"}"},
	{"openai: older vLLM", &igny8_openai_probe, 400,
		"{\"object\":\"error\",\"message\":\"bad\",\"type\":\"BadRequestError\","
		"\"code\":400}", NO_MODELS, false, false, "HTTP 400: bad",
	"{\"http_status\":400,\"error\":\"bad\"}"},
	{"openai: plain text", &igny8_openai_probe, 503, "upstream connect error",
		NO_MODELS, false, false, "HTTP 503: upstream connect error",
	"{\"http_status\":503,\"error\":\"upstream connect error\"}"},
	{"openai: empty body", &igny8_openai_probe, 500, "", NO_MODELS, false,
		false, "HTTP 500: empty response body",
	"{\"http_status\":500,\"error\":\"empty response body\"}"},
	{"openai: control characters never reach the summary",
		&igny8_openai_probe, 500,
		"{\"error\":{\"message\":\"line 1\\nline 2\\u0007\"}}", NO_MODELS,
		false, false, "HTTP 500: line 1 line 2",
	"{\"http_status\":500,\"error\":\"line 1 line 2\"}"},
	{"openai: no data", &igny8_openai_probe, 200, "{\"object\":\"list\"}",
		MODELS(m_openai), false, false,
	"malformed response from OpenAI-compatible API", MALFORMED(200)},
	{"openai: data an object", &igny8_openai_probe, 200,
		"{\"data\":{\"id\":\"x\"}}", MODELS(m_openai), false, false,
	"malformed response from OpenAI-compatible API", MALFORMED(200)},
	{"openai: an HTML page", &igny8_openai_probe, 200,
		"<!doctype html><title>LiteLLM</title>", MODELS(m_openai), false,
		false, "malformed response from OpenAI-compatible API",
	MALFORMED(200)},
	{"openai: 200 with an error", &igny8_openai_probe, 200,
		"{\"error\":{\"message\":\"proxy failed\"}}", NO_MODELS, false, false,
	"malformed response from OpenAI-compatible API", MALFORMED(200)},

	/* Anthropic: /v1/models, aliases match dated ids */
	{"anthropic: two listed, an alias present as a dated id, one retired",
		&igny8_anthropic_probe, 200,
		"{\"data\":[{\"type\":\"model\",\"id\":\"claude-sonnet-4-5-20250929\","
		"\"display_name\":\"Claude Sonnet 4.5\",\"created_at\":\"2025-09-29T00:00:00Z\"},"
		"{\"type\":\"model\",\"id\":\"claude-3-5-haiku-20241022\","
		"\"display_name\":\"Claude Haiku 3.5\",\"created_at\":\"2024-10-22T00:00:00Z\"}],"
		"\"has_more\":false,\"first_id\":\"claude-sonnet-4-5-20250929\","
		"\"last_id\":\"claude-3-5-haiku-20241022\"}",
		MODELS(m_aliases), true, true, "model claude-3-5-sonnet-latest missing",
	"{\"models_present\":1,\"models_listed\":2,\"models_missing\":[\"claude-3-5-sonnet-latest\"]}"},
	{"anthropic: -0 and -latest aliases match their base's dated id, and only that",
		&igny8_anthropic_probe, 200,
		"{\"data\":[{\"type\":\"model\",\"id\":\"claude-sonnet-4-20250514\"},"
		"{\"type\":\"model\",\"id\":\"claude-3-7-sonnet-20250219\"},"
		"{\"type\":\"model\",\"id\":\"claude-opus-4-1-20250805\"}],"
		"\"has_more\":false}",
		MODELS(m_old_aliases), true, true,
		"3 models missing: claude-opus-4-0, claude-sonnet-4-1, claude-3-5-haiku-latest",
		"{\"models_present\":2,\"models_listed\":3,\"models_missing\":"
	"[\"claude-opus-4-0\",\"claude-sonnet-4-1\",\"claude-3-5-haiku-latest\"]}"},
	{"anthropic: undated ids, and a date that is not one",
		&igny8_anthropic_probe, 200,
		"{\"data\":[{\"id\":\"claude-sonnet-5-5\"},{\"id\":\"claude-haiku-5-5-2026x001\"}]}",
		MODELS(m_current), true, true, "model claude-haiku-5-5 missing",
	"{\"models_present\":1,\"models_listed\":2,\"models_missing\":[\"claude-haiku-5-5\"]}"},
	{"anthropic: one listed, none configured", &igny8_anthropic_probe, 200,
		"{\"data\":[{\"id\":\"x\"}],\"has_more\":true}", NO_MODELS, true,
		false, "running, no models configured",
	"{\"models_present\":0,\"models_listed\":1,\"models_missing\":[]}"},
	{"anthropic: none listed", &igny8_anthropic_probe, 200, "{\"data\":[]}",
		MODELS(m_aliases), true, true,
		"2 models missing: claude-3-5-sonnet-latest, claude-sonnet-4-5",
		"{\"models_present\":0,\"models_listed\":0,\"models_missing\":"
	"[\"claude-3-5-sonnet-latest\",\"claude-sonnet-4-5\"]}"},
	{"anthropic: model check off", &igny8_anthropic_probe, 200,
		"{\"data\":[{\"id\":\"x\"}]}", CHECK_OFF, true, false,
	"1 model listed (model check off)", "{\"models_listed\":1,\"model_check\":false}"},
	{"anthropic: bad key", &igny8_anthropic_probe, 401,
		"{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","
		"\"message\":\"invalid x-api-key\"},\"request_id\":\"req_011\"}",
		MODELS(m_aliases), false, false, "HTTP 401: invalid x-api-key",
	"{\"http_status\":401,\"error\":\"invalid x-api-key\"}"},
	{"anthropic: overloaded", &igny8_anthropic_probe, 529,
		ANTHROPIC_OVERLOADED, NO_MODELS, false, false, "HTTP 529: Overloaded",
	"{\"http_status\":529,\"error\":\"Overloaded\"}"},
	{"anthropic: an error without a message", &igny8_anthropic_probe, 500,
		"{\"type\":\"error\",\"error\":{\"type\":\"api_error\"}}", NO_MODELS,
		false, false,
		"HTTP 500: {\"type\":\"error\",\"error\":{\"type\":\"api_error\"}}",
		"{\"http_status\":500,\"error\":\"{\\\"type\\\":\\\"error\\\","
	"\\\"error\\\":{\\\"type\\\":\\\"api_error\\\"}}\"}"},
	{"anthropic: 200 with an error", &igny8_anthropic_probe, 200,
		ANTHROPIC_OVERLOADED, NO_MODELS, false, false,
	"malformed response from Anthropic", MALFORMED(200)},
	{"anthropic: null", &igny8_anthropic_probe, 200, "null", NO_MODELS,
	false, false, "malformed response from Anthropic", MALFORMED(200)},
	{"anthropic: no body", &igny8_anthropic_probe, 200, NULL, NO_MODELS,
	false, false, "malformed response from Anthropic", MALFORMED(200)},

	/* ComfyUI: /system_stats, VRAM sums, no model check */
	{"comfyui: one device", &igny8_comfyui_probe, 200,
		"{" COMFYUI_SYSTEM ",\"devices\":[{\"name\":\"cuda:0 NVIDIA GeForce "
		"RTX 4090 : cudaMallocAsync\",\"type\":\"cuda\",\"index\":0,"
		"\"vram_total\":25769803776,\"vram_free\":21582210662,"
		"\"torch_vram_total\":0,\"torch_vram_free\":0}]}",
		MODELS(m_checkpoints), true, false,
		"1 device, 20.1 GiB of 24.0 GiB VRAM free",
		"{\"comfyui_version\":\"0.3.43\",\"devices\":[{\"name\":"
		"\"cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync\","
		"\"vram_total\":25769803776,\"vram_free\":21582210662}],"
	"\"vram_free\":21582210662,\"vram_total\":25769803776}"},
	{"comfyui: two devices", &igny8_comfyui_probe, 200,
		"{" COMFYUI_SYSTEM ",\"devices\":["
		"{\"name\":\"cuda:0 A\",\"type\":\"cuda\",\"index\":0,"
		"\"vram_total\":25769803776,\"vram_free\":21474836480,"
		"\"torch_vram_total\":1,\"torch_vram_free\":1},"
		"{\"name\":\"cuda:1 B\",\"type\":\"cuda\",\"index\":1,"
		"\"vram_total\":12884901888,\"vram_free\":1073741824}]}",
		CHECK_OFF, true, false, "2 devices, 21.0 GiB of 36.0 GiB VRAM free",
		"{\"comfyui_version\":\"0.3.43\",\"devices\":["
		"{\"name\":\"cuda:0 A\",\"vram_total\":25769803776,\"vram_free\":21474836480},"
		"{\"name\":\"cuda:1 B\",\"vram_total\":12884901888,\"vram_free\":1073741824}],"
	"\"vram_free\":22548578304,\"vram_total\":38654705664}"},
	{"comfyui: an old server, odd device entries", &igny8_comfyui_probe, 200,
		"{\"system\":{\"os\":\"nt\"},\"devices\":[{\"type\":\"cpu\","
		"\"vram_total\":8589934592,\"vram_free\":-5},\"junk\","
		"{\"name\":7,\"vram_total\":\"1\"}]}", NO_MODELS, true, false,
		"2 devices, 0.0 GiB of 8.0 GiB VRAM free",
		"{\"comfyui_version\":null,\"devices\":["
		"{\"name\":null,\"vram_total\":8589934592,\"vram_free\":0},"
		"{\"name\":null,\"vram_total\":0,\"vram_free\":0}],"
	"\"vram_free\":0,\"vram_total\":8589934592}"},
	{"comfyui: no devices", &igny8_comfyui_probe, 200,
		"{\"system\":{},\"devices\":[]}", NO_MODELS, true, false,
		"running, no devices reported",
		"{\"comfyui_version\":null,\"devices\":[],\"vram_free\":0,"
	"\"vram_total\":0}"},
	{"comfyui: a name with a line break and a bad byte is cleaned",
		&igny8_comfyui_probe, 200,
		"{\"system\":{\"comfyui_version\":\"v\\n1\"},\"devices\":"
		"[{\"name\":\"a\\tb\xff\",\"vram_total\":1073741824,"
		"\"vram_free\":536870912}]}", NO_MODELS, true, false,
		"1 device, 0.5 GiB of 1.0 GiB VRAM free",
		"{\"comfyui_version\":\"v 1\",\"devices\":[{\"name\":\"a b?\","
		"\"vram_total\":1073741824,\"vram_free\":536870912}],"
	"\"vram_free\":536870912,\"vram_total\":1073741824}"},
	{"comfyui: CUDA error", &igny8_comfyui_probe, 500,
		"{\"error\":{\"type\":\"server_error\",\"message\":\"CUDA error\","
		"\"details\":\"\",\"extra_info\":{}}}", NO_MODELS, false, false,
	"HTTP 500: CUDA error", "{\"http_status\":500,\"error\":\"CUDA error\"}"},
	{"comfyui: aiohttp's 404", &igny8_comfyui_probe, 404, "404: Not Found",
		NO_MODELS, false, false, "HTTP 404: 404: Not Found",
	"{\"http_status\":404,\"error\":\"404: Not Found\"}"},
	{"comfyui: a text error", &igny8_comfyui_probe, 403,
		"{\"error\":\"forbidden\"}", NO_MODELS, false, false,
	"HTTP 403: forbidden", "{\"http_status\":403,\"error\":\"forbidden\"}"},
	{"comfyui: no system", &igny8_comfyui_probe, 200, "{\"devices\":[]}",
		NO_MODELS, false, false, "malformed response from ComfyUI",
	MALFORMED(200)},
	{"comfyui: devices an object", &igny8_comfyui_probe, 200,
		"{\"system\":{},\"devices\":{}}", NO_MODELS, false, false,
	"malformed response from ComfyUI", MALFORMED(200)},
	{"comfyui: system a string", &igny8_comfyui_probe, 200,
		"{\"system\":\"x\",\"devices\":[]}", NO_MODELS, false, false,
	"malformed response from ComfyUI", MALFORMED(200)},
	{"comfyui: the web page", &igny8_comfyui_probe, 200,
		"<!DOCTYPE html><html>ComfyUI</html>", NO_MODELS, false, false,
	"malformed response from ComfyUI", MALFORMED(200)}
};

/* Check every string in a JSON tree: valid UTF-8, no control character. */
static void
check_json_strings(const cJSON *item, int line)
{
	const cJSON *child;

	if (cJSON_IsString(item))
		check(pg_utf8(item->valuestring) && printable(item->valuestring),
			  line, "detail string \"%s\" is not clean", item->valuestring);
	cJSON_ArrayForEach(child, item)
		check_json_strings(child, line);
}

static void
test_probes(void)
{
	int			i;

	begin_group("parse_probe: models, VRAM, errors and malformed answers");
	for (i = 0; i < (int) lengthof(probe_cases); i++)
	{
		const ProbeCase *c = &probe_cases[i];
		Igny8ProbeResult r;
		cJSON	   *detail;

		begin_case(i, c->what);
		parse_probe(c->proto, c->status, c->body, c->models, c->nmodels, &r);
		CHECK(r.reachable);
		check(r.healthy == c->healthy, __LINE__, "healthy = %d, expected %d",
			  (int) r.healthy, (int) c->healthy);
		check(r.degraded == c->degraded, __LINE__,
			  "degraded = %d, expected %d", (int) r.degraded, (int) c->degraded);
		CHECK_STR(r.summary, c->summary);
		check_clean(r.summary, IGNY8_ERRMSG_MAX + 3, "summary", __LINE__);
		CHECK_JSON(r.detail_json, c->detail);
		detail = r.detail_json ? cJSON_Parse(r.detail_json) : NULL;
		CHECK(cJSON_IsObject(detail));
		check_json_strings(detail, __LINE__);
		cJSON_Delete(detail);
		free_probe(&r);
	}
	end_group();
}

static void
test_long_probe_summaries(void)
{
	const char *models[40];
	Igny8ProbeResult r;
	cJSON	   *detail;
	int			i;

	begin_group("probes: long summaries are cut, details stay whole");
	for (i = 0; i < (int) lengthof(models); i++)
		models[i] = psprintf("some-rather-long-model-name-%02d:q4_K_M", i);
	parse_probe(&igny8_ollama_probe, 200, "{\"models\":[]}", models,
				lengthof(models), &r);
	CHECK(r.healthy && r.degraded);
	CHECK_INT(strlen(r.summary), IGNY8_ERRMSG_MAX + 3);
	CHECK(strncmp(r.summary, "40 models missing: some-rather-long", 35) == 0);
	CHECK(strcmp(r.summary + IGNY8_ERRMSG_MAX, "...") == 0);
	detail = cJSON_Parse(r.detail_json);
	CHECK_INT(cJSON_GetArraySize(cJSON_GetObjectItem(detail, "models_missing")),
			  40);
	cJSON_Delete(detail);
	free_probe(&r);
	for (i = 0; i < (int) lengthof(models); i++)
		pfree((char *) models[i]);

	parse_probe(&igny8_ollama_probe, 400, long_error_body, NULL, 0, &r);
	CHECK(!r.healthy && r.reachable);
	CHECK_INT(strlen(r.summary), IGNY8_ERRMSG_MAX + 3);
	CHECK(strncmp(r.summary, "HTTP 400: yyy", 13) == 0);
	detail = cJSON_Parse(r.detail_json);
	CHECK_INT(strlen(cJSON_GetStringValue(cJSON_GetObjectItem(detail, "error"))),
			  IGNY8_ERRMSG_MAX + 3);
	cJSON_Delete(detail);
	free_probe(&r);
	end_group();
}

/* ---------- images: PNG and base64 (provider_image.c) ---------- */

/*
 * A PNG written by Python's zlib and struct, not by this test: 2x3 RGBA,
 * a tEXt chunk, a compressed IDAT.
 */
static const char python_png[] =
"\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52"
"\x00\x00\x00\x02\x00\x00\x00\x03\x08\x06\x00\x00\x00\xb9\xea\xde"
"\x81\x00\x00\x00\x14\x74\x45\x58\x74\x53\x6f\x66\x74\x77\x61\x72"
"\x65\x00\x70\x79\x74\x68\x6f\x6e\x20\x7a\x6c\x69\x62\xf8\xb7\x5a"
"\xd0\x00\x00\x00\x14\x49\x44\x41\x54\x78\xda\x63\x60\x60\x64\x62"
"\xe6\xe2\xe6\xe1\x65\xc0\x60\x00\x00\x07\x47\x00\x9d\x96\x5c\xc1"
"\x49\x00\x00\x00\x00\x49\x45\x4e\x44\xae\x42\x60\x82";

/* CRC-32 bit by bit, independent of the table the code uses. */
static uint32_t
test_crc32(const unsigned char *buf, size_t len)
{
	uint32_t	c = 0xFFFFFFFF;
	size_t		i;
	int			k;

	for (i = 0; i < len; i++)
	{
		c ^= buf[i];
		for (k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xEDB88320 & (0 - (c & 1)));
	}
	return ~c;
}

static void
put_be32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char) (v >> 24);
	p[1] = (unsigned char) (v >> 16);
	p[2] = (unsigned char) (v >> 8);
	p[3] = (unsigned char) v;
}

/* Append a PNG chunk with its length and CRC. */
static void
add_chunk(StringInfo buf, const char *type, const void *data, size_t len)
{
	unsigned char head[8];
	unsigned char tail[4];
	unsigned char *crcbuf = palloc(len + 4);

	put_be32(head, (uint32_t) len);
	memcpy(head + 4, type, 4);
	memcpy(crcbuf, type, 4);
	if (len > 0)
		memcpy(crcbuf + 4, data, len);
	put_be32(tail, test_crc32(crcbuf, len + 4));
	appendBinaryStringInfo(buf, (const char *) head, 8);
	if (len > 0)
		appendBinaryStringInfo(buf, data, (int) len);
	appendBinaryStringInfo(buf, (const char *) tail, 4);
	pfree(crcbuf);
}

/* The 13 bytes of an IHDR. */
static void
make_ihdr(unsigned char *ihdr, uint32_t width, uint32_t height, int depth,
		  int color_type)
{
	put_be32(ihdr, width);
	put_be32(ihdr + 4, height);
	ihdr[8] = (unsigned char) depth;
	ihdr[9] = (unsigned char) color_type;
	ihdr[10] = 0;
	ihdr[11] = 0;
	ihdr[12] = 0;
}

/*
 * A real PNG of width x height 8-bit pixels of color type 2 (RGB) or 6
 * (RGBA): the rows, each after filter byte 0, in one stored (uncompressed)
 * deflate block of a zlib stream.  Small sizes only.  Returns the
 * palloc'd bytes and their count.
 */
static char *
make_png(int width, int height, int color_type, size_t *len)
{
	StringInfoData png;
	StringInfoData z;
	unsigned char ihdr[13];
	int			bpp = color_type == 6 ? 4 : 3;
	int			rowlen = 1 + width * bpp;
	int			rawlen = rowlen * height;
	unsigned char hdr[5];
	uint32_t	a = 1;
	uint32_t	b = 0;
	unsigned char adler[4];
	int			x;
	int			y;

	initStringInfo(&z);
	appendBinaryStringInfo(&z, "\x78\x01", 2);
	hdr[0] = 1;					/* final block, stored */
	hdr[1] = (unsigned char) (rawlen & 0xFF);
	hdr[2] = (unsigned char) (rawlen >> 8);
	hdr[3] = (unsigned char) (~rawlen & 0xFF);
	hdr[4] = (unsigned char) ((~rawlen >> 8) & 0xFF);
	appendBinaryStringInfo(&z, (const char *) hdr, 5);
	for (y = 0; y < height; y++)
	{
		for (x = 0; x < rowlen; x++)
		{
			unsigned char c = x == 0 ? 0 : (unsigned char) (x * 7 + y * 13);

			appendStringInfoChar(&z, (char) c);
			a = (a + c) % 65521;
			b = (b + a) % 65521;
		}
	}
	put_be32(adler, (b << 16) | a);
	appendBinaryStringInfo(&z, (const char *) adler, 4);

	initStringInfo(&png);
	appendBinaryStringInfo(&png, "\x89PNG\r\n\x1a\n", 8);
	make_ihdr(ihdr, width, height, 8, color_type);
	add_chunk(&png, "IHDR", ihdr, 13);
	add_chunk(&png, "IDAT", z.data, z.len);
	add_chunk(&png, "IEND", NULL, 0);
	pfree(z.data);
	*len = png.len;
	return png.data;
}

/* Base64 of data[0..len), padded (the test's own encoder). */
static char *
test_base64(const char *data, size_t len)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *s = (const unsigned char *) data;
	char	   *out = palloc((len + 2) / 3 * 4 + 1);
	char	   *o = out;
	size_t		i;

	for (i = 0; i + 2 < len; i += 3)
	{
		*o++ = alphabet[s[i] >> 2];
		*o++ = alphabet[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
		*o++ = alphabet[((s[i + 1] & 15) << 2) | (s[i + 2] >> 6)];
		*o++ = alphabet[s[i + 2] & 63];
	}
	if (len - i == 1)
	{
		*o++ = alphabet[s[i] >> 2];
		*o++ = alphabet[(s[i] & 3) << 4];
		*o++ = '=';
		*o++ = '=';
	}
	else if (len - i == 2)
	{
		*o++ = alphabet[s[i] >> 2];
		*o++ = alphabet[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
		*o++ = alphabet[(s[i + 1] & 15) << 2];
		*o++ = '=';
	}
	*o = '\0';
	return out;
}

/* How a PNG case spoils the good 3x2 RGB PNG (offsets into it). */
typedef enum PngSpoil
{
	SPOIL_NONE,
	SPOIL_SIGNATURE,			/* first byte 'x' */
	SPOIL_IHDR_CRC,				/* last byte of IHDR's CRC flipped */
	SPOIL_IDAT_CRC,				/* last byte of IDAT's CRC flipped */
	SPOIL_IHDR_DATA,			/* width changed, CRC left as it was */
	SPOIL_CUT,					/* the last `arg` bytes cut */
	SPOIL_TRAILING,				/* "junk" appended */
	SPOIL_EMPTY
} PngSpoil;

/* A PNG built from its parts, for the cases that need other chunks. */
typedef struct PngCase
{
	const char *what;
	PngSpoil	spoil;
	int			arg;
	/* when spoil is SPOIL_NONE and ihdr_len > 0, a PNG of these parts */
	int			ihdr_len;
	uint32_t	width;
	uint32_t	height;
	int			depth;
	int			color_type;
	const char *first;			/* chunk type before IHDR, or NULL */
	bool		idat;
	bool		iend;
	uint32_t	bad_len;		/* a chunk claiming this length, or 0 */
	bool		ok;
	int			out_width;
	int			out_height;
	const char *error;			/* expected *error */
} PngCase;

#define PARTS(w, h, depth, color) 13, w, h, depth, color, NULL, true, true, 0
#define GOOD3x2 0, 0, 0, 0, 0, NULL, false, false, 0

static const PngCase png_cases[] = {
	{"a 3x2 RGB PNG", SPOIL_NONE, 0, GOOD3x2, true, 3, 2, NULL},
	{"bad signature", SPOIL_SIGNATURE, 0, GOOD3x2, false, 0, 0,
	"not a PNG image"},
	{"IHDR CRC", SPOIL_IHDR_CRC, 0, GOOD3x2, false, 0, 0,
	"PNG IHDR CRC mismatch"},
	{"IHDR width changed under its CRC", SPOIL_IHDR_DATA, 0, GOOD3x2, false,
	0, 0, "PNG IHDR CRC mismatch"},
	{"IDAT CRC", SPOIL_IDAT_CRC, 0, GOOD3x2, false, 0, 0,
	"PNG chunk CRC mismatch"},
	{"IEND cut", SPOIL_CUT, 12, GOOD3x2, false, 0, 0, "truncated PNG image"},
	{"IEND's CRC cut", SPOIL_CUT, 1, GOOD3x2, false, 0, 0,
	"truncated PNG image"},
	{"half the file", SPOIL_CUT, 30, GOOD3x2, false, 0, 0,
	"truncated PNG image"},
	{"data after IEND", SPOIL_TRAILING, 0, GOOD3x2, false, 0, 0,
	"data after the PNG IEND chunk"},
	{"empty", SPOIL_EMPTY, 0, GOOD3x2, false, 0, 0, "not a PNG image"},
	{"RGBA 8", SPOIL_NONE, 0, PARTS(640, 480, 8, 6), true, 640, 480, NULL},
	{"RGB 16", SPOIL_NONE, 0, PARTS(1, 1, 16, 2), true, 1, 1, NULL},
	{"grey 1", SPOIL_NONE, 0, PARTS(7, 9, 1, 0), true, 7, 9, NULL},
	{"palette 4", SPOIL_NONE, 0, PARTS(7, 9, 4, 3), true, 7, 9, NULL},
	{"grey+alpha 16", SPOIL_NONE, 0, PARTS(2, 2, 16, 4), true, 2, 2, NULL},
	{"65535 wide", SPOIL_NONE, 0, PARTS(65535, 1, 8, 2), true, 65535, 1,
	NULL},
	{"65535 tall", SPOIL_NONE, 0, PARTS(1, 65535, 8, 2), true, 1, 65535,
	NULL},
	{"width 0", SPOIL_NONE, 0, PARTS(0, 5, 8, 2), false, 0, 0,
	"PNG size 0x5 out of range"},
	{"height 0", SPOIL_NONE, 0, PARTS(5, 0, 8, 2), false, 0, 0,
	"PNG size 5x0 out of range"},
	{"width 65536", SPOIL_NONE, 0, PARTS(65536, 5, 8, 2), false, 0, 0,
	"PNG size 65536x5 out of range"},
	{"width 2^32 - 1", SPOIL_NONE, 0, PARTS(0xFFFFFFFF, 5, 8, 2), false, 0, 0,
	"PNG size 4294967295x5 out of range"},
	{"RGB of depth 4", SPOIL_NONE, 0, PARTS(5, 5, 4, 2), false, 0, 0,
	"PNG IHDR has invalid fields"},
	{"palette of depth 16", SPOIL_NONE, 0, PARTS(5, 5, 16, 3), false, 0, 0,
	"PNG IHDR has invalid fields"},
	{"color type 5", SPOIL_NONE, 0, PARTS(5, 5, 8, 5), false, 0, 0,
	"PNG IHDR has invalid fields"},
	{"IHDR of length 12", SPOIL_NONE, 0, 12, 5, 5, 8, 2, NULL, true, true, 0,
	false, 0, 0, "PNG IHDR length is not 13"},
	{"a tEXt chunk before IHDR", SPOIL_NONE, 0, 13, 5, 5, 8, 2, "tEXt", true,
	true, 0, false, 0, 0, "PNG does not start with an IHDR chunk"},
	{"a second IHDR", SPOIL_NONE, 0, 13, 5, 5, 8, 2, "IHDR", true, true, 0,
	false, 0, 0, "PNG has a second IHDR chunk"},
	{"no IDAT", SPOIL_NONE, 0, 13, 5, 5, 8, 2, NULL, false, true, 0,
	false, 0, 0, "PNG has no IDAT chunk"},
	{"no IEND", SPOIL_NONE, 0, 13, 5, 5, 8, 2, NULL, true, false, 0,
	false, 0, 0, "truncated PNG image"},
	{"a chunk longer than the data", SPOIL_NONE, 0, 13, 5, 5, 8, 2, NULL,
	true, true, 1000, false, 0, 0, "truncated PNG image"},
	{"a chunk of length 2^31", SPOIL_NONE, 0, 13, 5, 5, 8, 2, NULL, true,
	true, 0x80000000, false, 0, 0, "PNG chunk length out of range"},
	{"a chunk of length 2^32 - 1", SPOIL_NONE, 0, 13, 5, 5, 8, 2, NULL, true,
	true, 0xFFFFFFFF, false, 0, 0, "PNG chunk length out of range"}
};

/* Build the bytes of one PNG case (palloc'd). */
static char *
png_case_bytes(const PngCase *c, size_t *len)
{
	StringInfoData png;
	unsigned char ihdr[13];
	char	   *good;
	size_t		goodlen;

	good = make_png(3, 2, 2, &goodlen);
	if (c->ihdr_len == 0)
	{
		switch (c->spoil)
		{
			case SPOIL_SIGNATURE:
				good[0] = 'x';
				break;
			case SPOIL_IHDR_CRC:
				good[8 + 8 + 13 + 3] ^= 1;
				break;
			case SPOIL_IHDR_DATA:
				good[8 + 8 + 3] = 4;
				break;
			case SPOIL_IDAT_CRC:
				good[goodlen - 12 - 1] ^= 0x80;
				break;
			case SPOIL_CUT:
				goodlen -= c->arg;
				break;
			case SPOIL_TRAILING:
				good = repalloc(good, goodlen + 4);
				memcpy(good + goodlen, "junk", 4);
				goodlen += 4;
				break;
			case SPOIL_EMPTY:
				goodlen = 0;
				break;
			case SPOIL_NONE:
				break;
		}
		*len = goodlen;
		return good;
	}
	pfree(good);

	initStringInfo(&png);
	appendBinaryStringInfo(&png, "\x89PNG\r\n\x1a\n", 8);
	if (c->first != NULL)
	{
		make_ihdr(ihdr, c->width, c->height, c->depth, c->color_type);
		add_chunk(&png, c->first, ihdr, 13);
	}
	make_ihdr(ihdr, c->width, c->height, c->depth, c->color_type);
	add_chunk(&png, "IHDR", ihdr, c->ihdr_len);
	add_chunk(&png, "tEXt", "Comment\0made by the test", 24);
	if (c->bad_len != 0)
	{
		unsigned char head[8];

		put_be32(head, c->bad_len);
		memcpy(head + 4, "zTXt", 4);
		appendBinaryStringInfo(&png, (const char *) head, 8);
		appendBinaryStringInfo(&png, "some bytes, fewer than it says", 30);
	}
	if (c->idat)
		add_chunk(&png, "IDAT", "\x78\x01\x01\x00\x00\xff\xff\x00\x00\x00\x01", 11);
	if (c->iend)
		add_chunk(&png, "IEND", NULL, 0);
	*len = png.len;
	return png.data;
}

static void
test_png(void)
{
	char	   *data;
	char	   *copy;
	char	   *error;
	size_t		len;
	size_t		cut;
	int			width;
	int			height;
	int			nbad;
	int			i;

	begin_group("igny8_png_check");
	for (i = 0; i < (int) lengthof(png_cases); i++)
	{
		const PngCase *c = &png_cases[i];
		bool		ok;

		begin_case(i, c->what);
		data = png_case_bytes(c, &len);
		/* an exact-size copy, so that ASan sees any read past the end */
		copy = palloc(Max(len, 1));
		memcpy(copy, data, len);
		width = height = -1;
		error = (char *) "untouched";
		ok = igny8_png_check(copy, len, &width, &height, &error);
		check(ok == c->ok, __LINE__, "igny8_png_check = %d, expected %d (%s)",
			  (int) ok, (int) c->ok, ok ? "" : error);
		CHECK_INT(width, c->out_width);
		CHECK_INT(height, c->out_height);
		CHECK_STR(error, c->error);
		if (error != NULL)
			check_clean(error, 60, "error", __LINE__);
		free_maybe(error);
		pfree(copy);
		pfree(data);
	}
	case_name = NULL;

	/* someone else's encoder: Python's zlib and struct */
	CHECK(igny8_png_check(python_png, sizeof(python_png) - 1, &width,
						  &height, &error));
	CHECK_INT(width, 2);
	CHECK_INT(height, 3);
	CHECK(error == NULL);

	/* every cut of a good PNG is refused, and so is every bit flipped */
	data = make_png(4, 3, 6, &len);
	CHECK(igny8_png_check(data, len, &width, &height, &error));
	nbad = 0;
	for (cut = 0; cut < len; cut++)
	{
		copy = palloc(Max(cut, 1));
		memcpy(copy, data, cut);
		if (igny8_png_check(copy, cut, &width, &height, &error))
			nbad++;
		free_maybe(error);
		pfree(copy);
	}
	check(nbad == 0, __LINE__, "%d cuts of the PNG were accepted", nbad);
	nbad = 0;
	copy = palloc(len);
	for (cut = 0; cut < len * 8; cut++)
	{
		memcpy(copy, data, len);
		copy[cut / 8] ^= (char) (1 << (cut % 8));
		if (igny8_png_check(copy, len, &width, &height, &error))
			nbad++;
		free_maybe(error);
	}
	check(nbad == 0, __LINE__, "%d bit flips of the PNG were accepted", nbad);
	pfree(copy);
	pfree(data);
	CHECK(!igny8_png_check(NULL, 0, &width, &height, &error));
	CHECK_STR(error, "not a PNG image");
	free_maybe(error);
	end_group();
}

typedef struct Base64Case
{
	const char *in;
	size_t		max;
	bool		ok;
	const char *out;			/* decoded, when ok */
	size_t		outlen;
} Base64Case;

#define NOMAX ((size_t) 1 << 30)

static const Base64Case base64_cases[] = {
	{"", NOMAX, true, "", 0},
	{"", 0, true, "", 0},
	{"Zg==", NOMAX, true, "f", 1},
	{"Zm8=", NOMAX, true, "fo", 2},
	{"Zm9v", NOMAX, true, "foo", 3},
	{"Zm9vYg==", NOMAX, true, "foob", 4},
	{"Zm9vYmE=", NOMAX, true, "fooba", 5},
	{"Zm9vYmFy", NOMAX, true, "foobar", 6},
	{"AAEC/w==", NOMAX, true, "\0\1\2\377", 4},
	{"+/+/", NOMAX, true, "\373\377\277", 3},
	{"AAAA", NOMAX, true, "\0\0\0", 3},
	/* the bound: decoded size against max */
	{"Zm9vYmFy", 6, true, "foobar", 6},
	{"Zm9vYmFy", 5, false, NULL, 0},
	{"Zm9vYmE=", 5, true, "fooba", 5},
	{"Zm9vYmE=", 4, false, NULL, 0},
	{"Zg==", 1, true, "f", 1},
	{"Zg==", 0, false, NULL, 0},
	/* lengths, padding, characters */
	{"Zg=", NOMAX, false, NULL, 0},
	{"Zg", NOMAX, false, NULL, 0},
	{"Zm9vY", NOMAX, false, NULL, 0},
	{"Z===", NOMAX, false, NULL, 0},
	{"====", NOMAX, false, NULL, 0},
	{"Zg=a", NOMAX, false, NULL, 0},
	{"Zg==Zg==", NOMAX, false, NULL, 0},
	{"Zm9v====", NOMAX, false, NULL, 0},
	{"=Zm9", NOMAX, false, NULL, 0},
	{"Zm9v\n", NOMAX, false, NULL, 0},
	{"Zm9\nvYmFy", NOMAX, false, NULL, 0},
	{" Zm9", NOMAX, false, NULL, 0},
	{"Zm9 ", NOMAX, false, NULL, 0},
	{"Zm-v", NOMAX, false, NULL, 0},	/* the URL-safe alphabet */
	{"Zm_v", NOMAX, false, NULL, 0},
	{"Zm9\xff", NOMAX, false, NULL, 0},
	{"Zm.v", NOMAX, false, NULL, 0}
};

static void
test_base64_decode(void)
{
	char	   *out;
	size_t		outlen;
	char		raw[300];
	int			i;
	int			nbad = 0;

	begin_group("igny8_base64_decode");
	for (i = 0; i < (int) lengthof(base64_cases); i++)
	{
		const Base64Case *c = &base64_cases[i];
		size_t		len = strlen(c->in);
		char	   *copy = palloc(Max(len, 1));
		bool		ok;

		begin_case(i, c->in);
		memcpy(copy, c->in, len);	/* not NUL-terminated */
		out = (char *) "untouched";
		outlen = 99;
		ok = igny8_base64_decode(copy, len, c->max, &out, &outlen);
		check(ok == c->ok, __LINE__, "decode = %d, expected %d", (int) ok,
			  (int) c->ok);
		if (ok && c->ok)
		{
			CHECK_INT(outlen, c->outlen);
			CHECK(memcmp(out, c->out, c->outlen) == 0);
			CHECK(out[outlen] == '\0');
			CHECK_INT(igny8_base64_decoded_len(copy, len), c->outlen);
		}
		else if (!ok)
			CHECK(out == NULL && outlen == 0);
		if (ok)
			pfree(out);
		pfree(copy);
	}
	case_name = NULL;

	/* the size comes from the length and the padding alone */
	CHECK_INT(igny8_base64_decoded_len("", 0), 0);
	CHECK_INT(igny8_base64_decoded_len("abc", 3), SIZE_MAX);
	CHECK_INT(igny8_base64_decoded_len("ab==", 4), 1);
	CHECK_INT(igny8_base64_decoded_len("abc=", 4), 2);
	CHECK_INT(igny8_base64_decoded_len("abcdabcd", 8), 6);

	/* what the test's own encoder writes decodes back, every length */
	for (i = 0; i < (int) sizeof(raw); i++)
		raw[i] = (char) (i * 37 + 11);
	for (i = 0; i <= (int) sizeof(raw); i++)
	{
		char	   *b64 = test_base64(raw, i);

		if (!igny8_base64_decode(b64, strlen(b64), i, &out, &outlen) ||
			outlen != (size_t) i || memcmp(out, raw, i) != 0)
			nbad++;
		else
			pfree(out);
		/* one byte short of the bound is refused */
		if (i > 0 && igny8_base64_decode(b64, strlen(b64), i - 1, &out,
										 &outlen))
		{
			nbad++;
			pfree(out);
		}
		pfree(b64);
	}
	check(nbad == 0, __LINE__, "%d round trips failed", nbad);
	CHECK(!igny8_base64_decode(NULL, 4, NOMAX, &out, &outlen));
	end_group();
}

/* ---------- images: ComfyUI (provider_comfyui.c) ---------- */

#define COMFY_ID "p-1"			/* must match test/fuzz/fuzz_providers.c */

/* protocols.md 2.5, with a title as exports carry them */
#define SDXL_GRAPH \
	"{\"4\":{\"class_type\":\"CheckpointLoaderSimple\"," \
	"\"inputs\":{\"ckpt_name\":\"sd_xl_base_1.0.safetensors\"}}," \
	"\"6\":{\"class_type\":\"CLIPTextEncode\",\"inputs\":{\"text\":\"a placeholder\"," \
	"\"clip\":[\"4\",1]},\"_meta\":{\"title\":\"Positive\"}}," \
	"\"7\":{\"class_type\":\"CLIPTextEncode\",\"inputs\":{\"text\":\"ugly\"," \
	"\"clip\":[\"4\",1]}}," \
	"\"5\":{\"class_type\":\"EmptyLatentImage\",\"inputs\":{\"width\":1024," \
	"\"height\":1024,\"batch_size\":1}}," \
	"\"3\":{\"class_type\":\"KSampler\",\"inputs\":{\"model\":[\"4\",0]," \
	"\"positive\":[\"6\",0],\"negative\":[\"7\",0],\"latent_image\":[\"5\",0]," \
	"\"seed\":0,\"steps\":25,\"cfg\":7.0,\"sampler_name\":\"euler\"," \
	"\"scheduler\":\"normal\",\"denoise\":1.0}}," \
	"\"8\":{\"class_type\":\"VAEDecode\",\"inputs\":{\"samples\":[\"3\",0]," \
	"\"vae\":[\"4\",2]}}," \
	"\"9\":{\"class_type\":\"SaveImage\",\"inputs\":{\"filename_prefix\":\"ComfyUI\"," \
	"\"images\":[\"8\",0]}}}"

#define SDXL_BINDINGS \
	"{\"prompt\":[\"6\",\"text\"],\"negative_prompt\":[\"7\",\"text\"]," \
	"\"width\":[\"5\",\"width\"],\"height\":[\"5\",\"height\"]," \
	"\"steps\":[\"3\",\"steps\"],\"cfg\":[\"3\",\"cfg\"],\"seed\":[\"3\",\"seed\"]," \
	"\"filename_prefix\":[\"9\",\"filename_prefix\"]}"

#define IDS "{\"client_id\":\"c-1\",\"prompt_id\":\"p-1\"}"

typedef struct SubmitBuildCase
{
	const char *what;
	const char *graph;			/* JSON text; NULL: SDXL_GRAPH */
	const char *bindings;		/* JSON text or NULL */
	const char *defaults;		/* JSON text or NULL */
	const char *prompt;
	const char *negative;
	int			width;
	int			height;
	int			steps;
	bool		has_cfg;
	double		cfg;
	uint64_t	seed;
	const char *prefix;
	bool		no_ids;			/* client_id and prompt_id NULL */
	const char *api_key;
	/* success: the body is top plus "prompt": the graph with changes */
	const char *changes;		/* {"node id": {"input": value}}, or NULL */
	const char *top;
	const char *text;			/* also in the body's text, or NULL */
	const char *error;			/* failure: the error, exactly */
} SubmitBuildCase;

static const SubmitBuildCase submit_build_cases[] = {
	{.what = "every binding, the request's values",
		.bindings = SDXL_BINDINGS, .prompt = "a red fox",
		.negative = "blurry", .width = 1216, .height = 832, .steps = 30,
		.has_cfg = true, .cfg = 6.5, .seed = 123456789,
		.prefix = "igny8/job-42",
		.changes = "{\"6\":{\"text\":\"a red fox\"},\"7\":{\"text\":\"blurry\"},"
		"\"5\":{\"width\":1216,\"height\":832},"
		"\"3\":{\"steps\":30,\"cfg\":6.5,\"seed\":123456789},"
		"\"9\":{\"filename_prefix\":\"igny8/job-42\"}}",
		.top = IDS, .text = "\"seed\":123456789,"},
	{.what = "the body, exactly", .graph =
		"{\"1\":{\"class_type\":\"X\",\"inputs\":{\"text\":\"t\",\"seed\":1}}}",
		.bindings = "{\"prompt\":[\"1\",\"text\"],\"seed\":[\"1\",\"seed\"]}",
		.prompt = "a cat", .seed = 42, .top = IDS,
		.changes = "{\"1\":{\"text\":\"a cat\",\"seed\":42}}",
		.text = "{\"prompt\":{\"1\":{\"class_type\":\"X\",\"inputs\":"
		"{\"text\":\"a cat\",\"seed\":42}}},\"client_id\":\"c-1\","
	"\"prompt_id\":\"p-1\"}"},
	{.what = "the largest seed, exactly", .bindings = SDXL_BINDINGS,
		.prompt = "p", .seed = UINT64CONST(18446744073709551615),
		.changes = "{\"6\":{\"text\":\"p\"},\"7\":{\"text\":\"\"},"
		"\"3\":{\"seed\":18446744073709551615}}",
	.top = IDS, .text = "\"seed\":18446744073709551615,"},
	{.what = "2^53 + 1, which a double cannot hold",
		.bindings = "{\"seed\":[\"3\",\"seed\"]}", .prompt = "p",
		.seed = UINT64CONST(9007199254740993),
		.changes = "{\"3\":{\"seed\":9007199254740993}}", .top = IDS,
	.text = "\"seed\":9007199254740993,"},
	{.what = "seed 0", .bindings = "{\"seed\":[\"3\",\"seed\"]}",
		.prompt = "p", .seed = 0, .changes = "{\"3\":{\"seed\":0}}",
	.top = IDS, .text = "\"seed\":0,"},
	{.what = "no bindings: the graph as it is", .prompt = "p", .seed = 5,
	.top = IDS},
	{.what = "empty bindings", .bindings = "{}", .prompt = "p", .seed = 5,
	.top = IDS},
	{.what = "a JSON null as bindings", .bindings = "null", .prompt = "p",
	.top = IDS},
	{.what = "a bound negative prompt that is NULL becomes empty",
		.bindings = "{\"negative_prompt\":[\"7\",\"text\"]}", .prompt = "p",
	.changes = "{\"7\":{\"text\":\"\"}}", .top = IDS},
	{.what = "... or its default",
		.bindings = "{\"negative_prompt\":[\"7\",\"text\"]}",
		.defaults = "{\"negative_prompt\":\"lowres\"}", .prompt = "p",
	.changes = "{\"7\":{\"text\":\"lowres\"}}", .top = IDS},
	{.what = "an unbound negative prompt stays the workflow's",
		.bindings = "{\"prompt\":[\"6\",\"text\"]}",
		.defaults = "{\"negative_prompt\":\"lowres\"}", .prompt = "p",
		.negative = "blurry", .changes = "{\"6\":{\"text\":\"p\"}}",
	.top = IDS},
	{.what = "no size, steps or cfg, no defaults: the workflow's",
		.bindings = SDXL_BINDINGS, .prompt = "p", .negative = "n",
		.seed = 7, .prefix = "x",
		.changes = "{\"6\":{\"text\":\"p\"},\"7\":{\"text\":\"n\"},"
	"\"3\":{\"seed\":7},\"9\":{\"filename_prefix\":\"x\"}}", .top = IDS},
	{.what = "no size, steps, cfg or prefix: the defaults",
		.bindings = SDXL_BINDINGS,
		.defaults = "{\"width\":512,\"height\":768,\"steps\":8,\"cfg\":1.5,"
		"\"filename_prefix\":\"igny8\",\"seed\":99,\"sampler\":\"x\"}",
		.prompt = "p", .seed = 7,
		.changes = "{\"6\":{\"text\":\"p\"},\"7\":{\"text\":\"\"},"
		"\"5\":{\"width\":512,\"height\":768},"
		"\"3\":{\"seed\":7,\"steps\":8,\"cfg\":1.5},"
	"\"9\":{\"filename_prefix\":\"igny8\"}}", .top = IDS},
	{.what = "the request's values win over the defaults",
		.bindings = SDXL_BINDINGS,
		.defaults = "{\"width\":512,\"height\":768,\"steps\":\"junk\","
		"\"cfg\":1.5,\"negative_prompt\":\"lowres\",\"prompt\":\"d\"}",
		.prompt = "p", .negative = "n", .width = 1024, .height = 1536,
		.steps = 4, .has_cfg = true, .cfg = 0, .seed = 1,
		.changes = "{\"6\":{\"text\":\"p\"},\"7\":{\"text\":\"n\"},"
		"\"5\":{\"width\":1024,\"height\":1536},"
	"\"3\":{\"seed\":1,\"steps\":4,\"cfg\":0}}", .top = IDS},
	{.what = "a key for a proxy; no ids", .bindings =
		"{\"prompt\":[\"6\",\"text\"]}", .prompt = "say \"hi\"\n\\ \xc3\xa9",
		.no_ids = true, .api_key = "proxy-token",
	.changes = "{\"6\":{\"text\":\"say \\\"hi\\\"\\n\\\\ \xc3\xa9\"}}", .top = "{}"},
	{.what = "a binding to the same input twice: the last wins",
		.bindings = "{\"prompt\":[\"6\",\"text\"],"
		"\"negative_prompt\":[\"6\",\"text\"]}", .prompt = "p",
	.negative = "n", .changes = "{\"6\":{\"text\":\"n\"}}", .top = IDS},

	/* refused */
	{.what = "an unknown parameter",
		.bindings = "{\"prompt\":[\"6\",\"text\"],\"sampler\":[\"3\",\"sampler_name\"]}",
	.prompt = "p", .error = "unknown binding \"sampler\""},
	{.what = "a node the graph lacks", .bindings = "{\"prompt\":[\"66\",\"text\"]}",
	.prompt = "p", .error = "binding \"prompt\": the workflow has no node 66"},
	{.what = "an input the node lacks", .bindings = "{\"width\":[\"6\",\"width\"]}",
		.prompt = "p", .width = 5,
	.error = "binding \"width\": node 6 (CLIPTextEncode) has no input \"width\""},
	{.what = "an input that is a link", .bindings = "{\"prompt\":[\"6\",\"clip\"]}",
		.prompt = "p",
	.error = "binding \"prompt\": input \"clip\" of node 6 (CLIPTextEncode) is a link, not a value"},
	{.what = "a binding that is a string", .bindings = "{\"prompt\":\"6\"}",
	.prompt = "p", .error = "binding \"prompt\" is not [\"node id\", \"input name\"]"},
	{.what = "a binding of one element", .bindings = "{\"prompt\":[\"6\"]}",
	.prompt = "p", .error = "binding \"prompt\" is not [\"node id\", \"input name\"]"},
	{.what = "a binding of three", .bindings = "{\"prompt\":[\"6\",\"text\",\"x\"]}",
	.prompt = "p", .error = "binding \"prompt\" is not [\"node id\", \"input name\"]"},
	{.what = "a node id that is a number", .bindings = "{\"prompt\":[6,\"text\"]}",
	.prompt = "p", .error = "binding \"prompt\" is not [\"node id\", \"input name\"]"},
	{.what = "bindings that are an array", .bindings = "[[\"6\",\"text\"]]",
	.prompt = "p", .error = "the bindings are not a JSON object"},
	{.what = "a graph that is an array", .graph = "[]", .prompt = "p",
	.error = "the workflow is not a JSON object"},
	{.what = "no graph", .graph = "null", .prompt = "p",
	.error = "the workflow is not a JSON object"},
	{.what = "a node without inputs", .graph = "{\"6\":{\"class_type\":\"X\"}}",
		.bindings = "{\"prompt\":[\"6\",\"text\"]}", .prompt = "p",
	.error = "binding \"prompt\": node 6 (X) has no input \"text\""},
	{.what = "a node without class_type", .graph = "{\"6\":{\"inputs\":{}}}",
		.bindings = "{\"prompt\":[\"6\",\"text\"]}", .prompt = "p",
	.error = "binding \"prompt\": node 6 (no class_type) has no input \"text\""},
	{.what = "a node that is not an object", .graph = "{\"6\":\"x\"}",
		.bindings = "{\"prompt\":[\"6\",\"text\"]}", .prompt = "p",
	.error = "binding \"prompt\": the workflow has no node 6"},
	{.what = "a default of the wrong type (steps)", .bindings = SDXL_BINDINGS,
		.defaults = "{\"steps\":\"30\"}", .prompt = "p",
	.error = "the default of \"steps\" is not a non-negative integer"},
	{.what = "a default of the wrong type (fraction)", .bindings = SDXL_BINDINGS,
		.defaults = "{\"width\":512.5}", .prompt = "p",
	.error = "the default of \"width\" is not a non-negative integer"},
	{.what = "a default of the wrong type (string)", .bindings = SDXL_BINDINGS,
		.defaults = "{\"negative_prompt\":5}", .prompt = "p",
	.error = "the default of \"negative_prompt\" is not a string"},
	{.what = "a default of the wrong type (number)", .bindings = SDXL_BINDINGS,
		.defaults = "{\"cfg\":\"high\"}", .prompt = "p",
	.error = "the default of \"cfg\" is not a number"}
};

/* Apply {"node id": {"input": value}} to a copy of the graph. */
static void
apply_changes(cJSON *graph, const char *changes)
{
	cJSON	   *json = test_json(changes);
	const cJSON *node;
	const cJSON *input;

	cJSON_ArrayForEach(node, json)
	{
		cJSON	   *target = cJSON_GetObjectItemCaseSensitive(graph,
															  node->string);
		cJSON	   *inputs = cJSON_GetObjectItemCaseSensitive(target, "inputs");

		cJSON_ArrayForEach(input, node)
			igny8_json_set(inputs, input->string, cJSON_Duplicate(input, true));
	}
	cJSON_Delete(json);
}

static void
test_comfyui_build_submit(void)
{
	int			i;

	begin_group("ComfyUI build_submit: bindings, defaults, body");
	for (i = 0; i < (int) lengthof(submit_build_cases); i++)
	{
		const SubmitBuildCase *c = &submit_build_cases[i];
		Igny8ImageRequest req;
		Igny8HttpRequest out;
		cJSON	   *graph = test_json(c->graph ? c->graph : SDXL_GRAPH);
		char	   *before = igny8_json_print(graph);
		char	   *after;
		char	   *error;
		bool		ok;

		begin_case(i, c->what);
		memset(&req, 0, sizeof(req));
		req.model = "sdxl";
		req.prompt = c->prompt;
		req.negative_prompt = c->negative;
		req.width = c->width;
		req.height = c->height;
		req.steps = c->steps;
		req.has_cfg = c->has_cfg;
		req.cfg = c->cfg;
		req.seed = c->seed;
		req.graph = graph;
		req.bindings = test_json(c->bindings);
		req.defaults = test_json(c->defaults);
		req.client_id = c->no_ids ? NULL : "c-1";
		req.prompt_id = c->no_ids ? NULL : "p-1";
		req.filename_prefix = c->prefix;

		memset(&out, 0x7f, sizeof(out));
		error = (char *) "untouched";
		ok = igny8_comfyui_build_submit(&req, c->api_key, &out, &error);
		if (c->error != NULL)
		{
			check(!ok, __LINE__, "build_submit succeeded");
			CHECK_STR(error, c->error);
			CHECK(out.path == NULL && out.body == NULL && out.nheaders == 0);
			if (error != NULL)
				check_clean(error, IGNY8_ERRMSG_MAX + 3, "error", __LINE__);
		}
		else if (check(ok, __LINE__, "build_submit failed: %s",
					   ok ? "" : error))
		{
			const char *bearer[] = {CT, NULL, NULL};
			cJSON	   *expected = test_json(c->top);
			cJSON	   *want_graph = cJSON_Duplicate(graph, true);
			char	   *text;

			CHECK(error == NULL);
			CHECK_STR(out.method, "POST");
			CHECK_STR(out.path, "/prompt");
			if (c->api_key != NULL)
				bearer[1] = psprintf("Authorization: Bearer %s", c->api_key);
			check_headers(&out, bearer, __LINE__);
			free_maybe((char *) bearer[1]);
			if (c->changes != NULL)
				apply_changes(want_graph, c->changes);
			cJSON_AddItemToObject(expected, "prompt", want_graph);
			text = igny8_json_print(expected);
			CHECK_JSON(out.body, text);
			pfree(text);
			cJSON_Delete(expected);
			if (c->text != NULL)
				CHECK_CONTAINS(out.body, c->text);
			if (c->api_key != NULL)
				check(strstr(out.body, c->api_key) == NULL, __LINE__,
					  "the key is in the body");
		}
		if (!ok)
			free_maybe(error);
		free_request(&out);

		/* the caller's graph is left as it was */
		after = igny8_json_print(graph);
		CHECK_STR(after, before);
		pfree(after);
		pfree(before);
		cJSON_Delete(graph);
		cJSON_Delete((cJSON *) req.bindings);
		cJSON_Delete((cJSON *) req.defaults);
	}
	end_group();
}

#define PREFIX 4				/* the message starts with the one given */

typedef struct SubmitParseCase
{
	const char *what;
	long		status;
	const char *body;
	double		retry_after;
	int			should_retry;
	bool		ok;
	const char *prompt_id;
	Igny8ErrorClass cls;
	const char *message;		/* exactly, or its start with PREFIX */
	int			flags;			/* ONCE, PREFIX */
	int64		number;			/* ok: ComfyUI's queue number, -1 none */
} SubmitParseCase;

/* the simulator's answers, which are ComfyUI 0.3's */
#define VALIDATION_HEAD \
	"{\"error\":{\"type\":\"prompt_outputs_failed_validation\"," \
	"\"message\":\"Prompt outputs failed validation\",\"details\":\"\"," \
	"\"extra_info\":{}},\"node_errors\":{"
#define CKPT_MISSING_ERROR \
	"{\"type\":\"value_not_in_list\",\"message\":\"Value not in list\"," \
	"\"details\":\"ckpt_name: 'flux1-dev-nope.safetensors' not in " \
	"['sd3.5_large.safetensors', 'sd_xl_base_1.0.safetensors', " \
	"'sdxl_lightning_4step.safetensors']\",\"extra_info\":{\"input_name\":" \
	"\"ckpt_name\",\"input_config\":[[\"sd3.5_large.safetensors\"," \
	"\"sd_xl_base_1.0.safetensors\",\"sdxl_lightning_4step.safetensors\"]," \
	"{\"tooltip\":\"The name of the checkpoint (model) to load.\"}]," \
	"\"received_value\":\"flux1-dev-nope.safetensors\"}}"
#define CKPT_MISSING \
	"\"4\":{\"errors\":[" CKPT_MISSING_ERROR "],\"dependent_outputs\":[\"9\"]," \
	"\"class_type\":\"CheckpointLoaderSimple\"}"
#define UNET_MISSING \
	"\"12\":{\"errors\":[{\"type\":\"value_not_in_list\",\"message\":" \
	"\"Value not in list\",\"details\":\"unet_name: 'flux1-dev.safetensors' " \
	"not in []\",\"extra_info\":{\"input_name\":\"unet_name\"," \
	"\"input_config\":[[],{}],\"received_value\":\"flux1-dev.safetensors\"}}]," \
	"\"dependent_outputs\":[\"9\"],\"class_type\":\"UNETLoader\"}"
#define VAE_MISSING \
	"\"10\":{\"errors\":[{\"type\":\"value_not_in_list\",\"message\":" \
	"\"Value not in list\",\"details\":\"vae_name: 'ae.safetensors' not in " \
	"[]\",\"extra_info\":{\"input_name\":\"vae_name\",\"received_value\":" \
	"\"ae.safetensors\"}}],\"dependent_outputs\":[\"9\"]," \
	"\"class_type\":\"VAELoader\"}"
#define KSAMPLER_BAD \
	"\"3\":{\"errors\":[{\"type\":\"value_smaller_than_min\",\"message\":" \
	"\"Value 0 smaller than min of 1\",\"details\":\"steps\",\"extra_info\":" \
	"{\"input_name\":\"steps\",\"input_config\":[\"INT\",{\"default\":20," \
	"\"min\":1,\"max\":10000}],\"received_value\":0}},{\"type\":" \
	"\"value_not_in_list\",\"message\":\"Value not in list\",\"details\":" \
	"\"sampler_name: 'nope' not in (list of length 45)\",\"extra_info\":" \
	"{\"input_name\":\"sampler_name\",\"input_config\":null," \
	"\"received_value\":\"nope\"}}],\"dependent_outputs\":[\"9\"]," \
	"\"class_type\":\"KSampler\"}"
#define SAMPLER_BAD \
	"\"3\":{\"errors\":[{\"type\":\"value_not_in_list\",\"message\":" \
	"\"Value not in list\",\"details\":\"sampler_name: 'nope' not in (list " \
	"of length 45)\",\"extra_info\":{\"input_name\":\"sampler_name\"," \
	"\"input_config\":null,\"received_value\":\"nope\"}}]," \
	"\"dependent_outputs\":[\"9\"],\"class_type\":\"KSampler\"}"
#define INNER_EXCEPTION \
	"\"8\":{\"errors\":[{\"type\":\"exception_during_inner_validation\"," \
	"\"message\":\"Exception when validating inner node\",\"details\":" \
	"\"'33'\",\"extra_info\":{\"input_name\":\"images\",\"exception_message\":" \
	"\"'33'\",\"exception_type\":\"KeyError\",\"traceback\":[\"  File " \
	"\\\"/opt/ComfyUI/execution.py\\\", line 1079, in validate_inputs\\n\"]," \
	"\"linked_node\":[\"8\",0]}}],\"dependent_outputs\":[\"9\"]," \
	"\"class_type\":\"VAEDecode\"}"
#define OUTER_EXCEPTION \
	"{\"error\":{\"type\":\"prompt_outputs_failed_validation\",\"message\":" \
	"\"Prompt outputs failed validation\",\"details\":\"Exception when " \
	"validating node: '88'\",\"extra_info\":{}},\"node_errors\":{\"9\":" \
	"{\"errors\":[{\"type\":\"exception_during_validation\",\"message\":" \
	"\"Exception when validating node\",\"details\":\"'88'\",\"extra_info\":" \
	"{\"exception_type\":\"KeyError\",\"traceback\":[]}}]," \
	"\"dependent_outputs\":[\"9\"],\"class_type\":\"SaveImage\"}}}"

static const SubmitParseCase submit_parse_cases[] = {
	{"queued", 200, "{\"prompt_id\": \"p-1\", \"number\": 0, \"node_errors\": {}}",
	NOHDR, true, "p-1", IGNY8_ERR_NONE, NULL, 0, 0},
	{"queued, some outputs dropped", 200,
		"{\"prompt_id\":\"4c1d1b8e-2f0c-4c55-9a3e-0b7f3e2a9d11\",\"number\":3,"
		"\"node_errors\":{" SAMPLER_BAD "}}", NOHDR, true,
	"4c1d1b8e-2f0c-4c55-9a3e-0b7f3e2a9d11", IGNY8_ERR_NONE, NULL, 0, 3},
	{"queued, a number asked for (a float)", 200,
		"{\"prompt_id\": \"p-2\", \"number\": 12.0, \"node_errors\": {}}",
	NOHDR, true, "p-2", IGNY8_ERR_NONE, NULL, 0, 12},
	{"queued at the front (a negative number)", 200,
		"{\"prompt_id\": \"p-3\", \"number\": -4, \"node_errors\": {}}",
	NOHDR, true, "p-3", IGNY8_ERR_NONE, NULL, 0, -1},
	{"no number", 200, "{\"prompt_id\": \"p-4\", \"node_errors\": {}}",
	NOHDR, true, "p-4", IGNY8_ERR_NONE, NULL, 0, -1},

	/* what this server lacks: another may have it */
	{"a checkpoint file missing", 400, VALIDATION_HEAD CKPT_MISSING "}}",
		NOHDR, false, NULL, IGNY8_ERR_FALLBACK,
		"node 4 (CheckpointLoaderSimple): ckpt_name: "
	"'flux1-dev-nope.safetensors' not in ['sd3.5_large.safetensors', ", PREFIX},
	{"the FLUX model file missing", 400, VALIDATION_HEAD UNET_MISSING "}}",
		NOHDR, false, NULL, IGNY8_ERR_FALLBACK,
	"node 12 (UNETLoader): unet_name: 'flux1-dev.safetensors' not in []", 0},
	{"two model files missing", 400,
		VALIDATION_HEAD UNET_MISSING "," VAE_MISSING "}}", NOHDR, false, NULL,
		IGNY8_ERR_FALLBACK,
	"node 12 (UNETLoader): unet_name: 'flux1-dev.safetensors' not in []", 0},
	{"a model file on a custom node", 400, VALIDATION_HEAD
		"\"20\":{\"class_type\":\"FluxModelPicker\",\"errors\":[{\"type\":"
		"\"value_not_in_list\",\"message\":\"Value not in list\",\"details\":"
		"\"model: 'flux1-schnell.GGUF' not in ['a.gguf']\",\"extra_info\":"
		"{\"received_value\":\"flux1-schnell.GGUF\"}}]}}}", NOHDR, false,
		NULL, IGNY8_ERR_FALLBACK,
	"node 20 (FluxModelPicker): model: 'flux1-schnell.GGUF' not in ['a.gguf']", 0},
	{"a custom node not installed", 400,
		"{\"error\": {\"type\": \"missing_node_type\", \"message\": \"Node "
		"'VAEDecodeX' not found. The custom node may not be installed.\", "
		"\"details\": \"Node ID '#8'\", \"extra_info\": {\"node_id\": \"8\", "
		"\"class_type\": \"VAEDecodeX\", \"node_title\": \"VAEDecodeX\"}}, "
		"\"node_errors\": {}}", NOHDR, false, NULL, IGNY8_ERR_FALLBACK,
		"node 8 (VAEDecodeX): Node 'VAEDecodeX' not found. The custom node "
	"may not be installed.", 0},
	{"older builds: a node class that does not exist", 400,
		"{\"error\":{\"type\":\"invalid_prompt\",\"message\":\"Cannot execute "
		"because node ImpactKSampler does not exist.\",\"details\":\"Node ID "
		"'#3'\",\"extra_info\":{}},\"node_errors\":[]}", NOHDR, false, NULL,
		IGNY8_ERR_FALLBACK,
		"Cannot execute because node ImpactKSampler does not exist.: Node ID "
	"'#3'", 0},

	/* what is wrong with the workflow */
	{"a model missing and a bad value", 400,
		VALIDATION_HEAD CKPT_MISSING "," KSAMPLER_BAD "}}", NOHDR, false,
		NULL, IGNY8_ERR_CALLER,
	"node 3 (KSampler): Value 0 smaller than min of 1: steps", 0},
	{"a sampler that is not in the list", 400,
		VALIDATION_HEAD SAMPLER_BAD "}}", NOHDR, false, NULL,
		IGNY8_ERR_CALLER,
	"node 3 (KSampler): sampler_name: 'nope' not in (list of length 45)", 0},
	{"an input image that is not there", 400, VALIDATION_HEAD
		"\"11\":{\"class_type\":\"LoadImage\",\"errors\":[{\"type\":"
		"\"value_not_in_list\",\"message\":\"Value not in list\",\"details\":"
		"\"image: 'in.png' not in []\",\"extra_info\":{\"received_value\":"
		"\"in.png\"}}]}}}", NOHDR, false, NULL, IGNY8_ERR_CALLER,
	"node 11 (LoadImage): image: 'in.png' not in []", 0},
	{"a link to a node that is not there", 400,
		VALIDATION_HEAD INNER_EXCEPTION "}}", NOHDR, false, NULL,
		IGNY8_ERR_CALLER,
	"node 8 (VAEDecode): Exception when validating inner node: '33'", 0},
	{"the output node's link broken", 400, OUTER_EXCEPTION, NOHDR, false,
		NULL, IGNY8_ERR_CALLER,
	"node 9 (SaveImage): Exception when validating node: '88'", 0},
	{"a node without class_type", 400,
		"{\"error\": {\"type\": \"missing_node_type\", \"message\": \"Node "
		"'ID #8' has no class_type. The workflow may be corrupted or a custom "
		"node is missing.\", \"details\": \"Node ID '#8'\", \"extra_info\": "
		"{\"node_id\": \"8\", \"class_type\": null, \"node_title\": null}}, "
		"\"node_errors\": {}}", NOHDR, false, NULL, IGNY8_ERR_CALLER,
		"node 8 (no class_type): Node 'ID #8' has no class_type. The workflow "
	"may be corrupted or a custom node is missing.", 0},
	{"no output node", 400,
		"{\"error\": {\"type\": \"prompt_no_outputs\", \"message\": \"Prompt "
		"has no outputs\", \"details\": \"\", \"extra_info\": {}}, "
		"\"node_errors\": {}}", NOHDR, false, NULL, IGNY8_ERR_CALLER,
	"Prompt has no outputs", 0},
	{"no prompt", 400,
		"{\"error\": {\"type\": \"no_prompt\", \"message\": \"No prompt "
		"provided\", \"details\": \"No prompt provided\", \"extra_info\": {}}, "
		"\"node_errors\": {}}", NOHDR, false, NULL, IGNY8_ERR_CALLER,
	"No prompt provided", 0},
	{"older builds: no prompt", 400,
		"{\"error\": \"no prompt\", \"node_errors\": []}", NOHDR, false, NULL,
	IGNY8_ERR_CALLER, "no prompt", 0},
	{"older builds: invalid_prompt of another kind", 400,
		"{\"error\":{\"type\":\"invalid_prompt\",\"message\":\"Cannot execute "
		"because a node is missing the class_type property.\",\"details\":"
		"\"Node ID '#3'\",\"extra_info\":{}},\"node_errors\":[]}", NOHDR,
		false, NULL, IGNY8_ERR_CALLER,
		"Cannot execute because a node is missing the class_type property.: "
	"Node ID '#3'", 0},
	{"failed validation without node errors", 400,
		VALIDATION_HEAD "}}", NOHDR, false, NULL, IGNY8_ERR_CALLER,
	"Prompt outputs failed validation", 0},
	{"node errors of odd shapes are skipped", 400,
		VALIDATION_HEAD "\"1\":5,\"2\":{\"errors\":{}},\"3\":{\"errors\":[7,"
		"{}]}}}", NOHDR, false, NULL, IGNY8_ERR_CALLER,
	"node 3 (no class_type): invalid", 0},
	{"a proxy's 400 page", 400, "<html>Bad Request</html>", NOHDR, false,
	NULL, IGNY8_ERR_CALLER, "HTTP 400 from ComfyUI: <html>Bad Request</html>", 0},
	{"control characters and bad UTF-8 in a node error", 400,
		VALIDATION_HEAD "\"3\":{\"class_type\":\"K\\nS\",\"errors\":[{\"type\":"
		"\"x\",\"message\":\"bad\\u0007 \xff value\"}]}}}", NOHDR, false, NULL,
	IGNY8_ERR_CALLER, "node 3 (K S): bad  ? value", 0},

	/* the server's trouble */
	{"a body that is not JSON (aiohttp's 500)", 500,
		"500 Internal Server Error\n\nServer got itself in trouble", NOHDR,
		false, NULL, IGNY8_ERR_RETRY,
	"HTTP 500 from ComfyUI: 500 Internal Server Error  Server got itself in trouble", 0},
	{"a 502 from a proxy, empty", 502, "", NOHDR, false, NULL,
	IGNY8_ERR_RETRY, "HTTP 502 from ComfyUI", 0},
	{"429 with retry-after", 429, "", 3, -1, false, NULL, IGNY8_ERR_RETRY,
	"HTTP 429 from ComfyUI", 0},
	{"503, x-should-retry false", 503, "", -1, 0, false, NULL,
	IGNY8_ERR_FALLBACK, "HTTP 503 from ComfyUI", 0},
	{"404: not ComfyUI", 404, "404: Not Found", NOHDR, false, NULL,
	IGNY8_ERR_FALLBACK, "HTTP 404 from ComfyUI: 404: Not Found", 0},
	{"401 from a proxy", 401, "{\"error\":\"bad token\"}", NOHDR, false,
	NULL, IGNY8_ERR_FALLBACK, "bad token", 0},

	/* a 200 that cannot be used */
	{"no prompt_id", 200, "{\"number\":0,\"node_errors\":{}}", NOHDR, false,
		NULL, IGNY8_ERR_RETRY, "malformed response from ComfyUI: no prompt_id",
	ONCE},
	{"an empty prompt_id", 200, "{\"prompt_id\":\"\"}", NOHDR, false, NULL,
	IGNY8_ERR_RETRY, "malformed response from ComfyUI: no prompt_id", ONCE},
	{"a prompt_id that is a number", 200, "{\"prompt_id\":5}", NOHDR, false,
		NULL, IGNY8_ERR_RETRY, "malformed response from ComfyUI: no prompt_id",
	ONCE},
	{"a prompt_id too long", 200, "{\"prompt_id\":\""
		"0123456789012345678901234567890123456789012345678901234567890123"
		"0123456789012345678901234567890123456789012345678901234567890123"
		"\"}", NOHDR, false, NULL, IGNY8_ERR_RETRY,
		"malformed response from ComfyUI: the prompt_id is not a short UTF-8 "
	"string", ONCE},
	{"a prompt_id of bad UTF-8", 200, "{\"prompt_id\":\"a\xff\"}", NOHDR,
		false, NULL, IGNY8_ERR_RETRY,
		"malformed response from ComfyUI: the prompt_id is not a short UTF-8 "
	"string", ONCE},
	{"a NUL in the prompt_id", 200, "{\"prompt_id\":\"p-1\\u0000x\"}", NOHDR,
		false, NULL, IGNY8_ERR_RETRY,
		"malformed response from ComfyUI: a string contains a NUL character",
	ONCE},
	{"not JSON", 200, "{\"prompt_id\": \"p-", NOHDR, false, NULL,
	IGNY8_ERR_RETRY, "malformed response from ComfyUI: not JSON", ONCE},
	{"empty", 200, "", NOHDR, false, NULL, IGNY8_ERR_RETRY,
	"malformed response from ComfyUI: not JSON", ONCE},
	{"an array", 200, "[\"p-1\"]", NOHDR, false, NULL, IGNY8_ERR_RETRY,
	"malformed response from ComfyUI: no prompt_id", ONCE}
};

/* Build a response as the transport would hand it over. */
static Igny8HttpResponse
make_response(long status, const char *body, size_t len, double retry_after,
			  int should_retry)
{
	Igny8HttpResponse resp;

	resp.status = status;
	resp.body = body;
	resp.body_len = len;
	resp.body_terminated = false;	/* len may end before a NUL */
	resp.retry_after = retry_after;
	resp.should_retry = should_retry;
	if (corpus_dir != NULL)
		write_seed(&resp, false, 0);
	return resp;
}

/* Check a classified error against its case. */
static void
check_error(const Igny8ProviderError *e, Igny8ErrorClass cls,
			const char *message, int flags, double retry_after, int line)
{
	check(e->cls == cls, line, "class %s, expected %s", class_names[e->cls],
		  class_names[cls]);
	check_clean(e->message, IGNY8_ERRMSG_MAX + 3, "message", line);
	if (flags & PREFIX)
		check(e->message != NULL &&
			  strncmp(e->message, message, strlen(message)) == 0, line,
			  "message \"%s\" does not start with \"%s\"",
			  e->message ? e->message : "(null)", message);
	else
		check_str(e->message, message, "message", line);
	check(e->retry_once == ((flags & ONCE) != 0), line, "retry_once %d",
		  (int) e->retry_once);
	CHECK(!e->drop_think);
	check(e->retry_after == retry_after, line, "retry_after %g, expected %g",
		  e->retry_after, retry_after);
}

static void
test_comfyui_parse_submit(void)
{
	int			i;

	begin_group("ComfyUI parse_submit: prompt_id and the 400s of /prompt");
	for (i = 0; i < (int) lengthof(submit_parse_cases); i++)
	{
		const SubmitParseCase *c = &submit_parse_cases[i];
		Igny8HttpResponse resp;
		Igny8ProviderError e;
		char	   *prompt_id;
		int64		number;
		bool		ok;

		begin_case(i, c->what);
		resp = make_response(c->status, c->body, strlen(c->body),
							 c->retry_after, c->should_retry);
		memset(&e, 0x7f, sizeof(e));
		prompt_id = (char *) "untouched";
		number = -7;
		ok = igny8_comfyui_parse_submit(&resp, &prompt_id, &number, &e);
		check(ok == c->ok, __LINE__, "parse_submit = %d, expected %d (%s)",
			  (int) ok, (int) c->ok, ok ? "" : e.message);
		if (ok)
		{
			CHECK_STR(prompt_id, c->prompt_id);
			CHECK_INT(number, c->number);
			CHECK(e.cls == IGNY8_ERR_NONE && e.message == NULL);
			CHECK(!e.retry_once && !e.drop_think);
		}
		else
		{
			CHECK(prompt_id == NULL);
			CHECK_INT(number, -1);
			check_error(&e, c->cls, c->message, c->flags, c->retry_after,
						__LINE__);
		}
		if (ok)
			pfree(prompt_id);
		free_maybe(e.message);
	}
	case_name = NULL;

	/* a long node error is cut like every message */
	{
		char	   *body;
		Igny8HttpResponse resp;
		Igny8ProviderError e;
		char	   *prompt_id;

		body = psprintf(VALIDATION_HEAD "\"4\":{\"class_type\":\"CheckpointLoaderSimple\","
						"\"errors\":[{\"type\":\"value_not_in_list\",\"details\":"
						"\"ckpt_name: 'x.safetensors' not in [%.*s]\"}]}}}",
						2000, long_error_body + 10);
		resp = make_response(400, body, strlen(body), -1, -1);
		CHECK(!igny8_comfyui_parse_submit(&resp, &prompt_id, NULL, &e));
		CHECK(e.cls == IGNY8_ERR_FALLBACK);
		CHECK_INT(strlen(e.message), IGNY8_ERRMSG_MAX + 3);
		CHECK(strncmp(e.message, "node 4 (CheckpointLoaderSimple): ckpt_name: "
					  "'x.safetensors' not in [yyy", 71) == 0);
		free_maybe(e.message);
		pfree(body);
	}
	end_group();
}

typedef struct HistoryCase
{
	const char *what;
	long		status;
	const char *body;
	Igny8ComfyState state;
	const char *images[5];		/* "filename|subfolder|type", NULL-ended */
	Igny8ErrorClass cls;
	const char *message;
	int			flags;
} HistoryCase;

#define HISTORY_PROMPT \
	"\"prompt\":[0,\"p-1\",{\"9\":{\"class_type\":\"SaveImage\",\"inputs\":" \
	"{\"filename_prefix\":\"igny8/t1\",\"images\":[\"8\",0]}}},{\"client_id\":" \
	"\"c-1\",\"create_time\":1796035700993},[\"9\"]]"
#define HISTORY_STARTED \
	"[\"execution_start\",{\"prompt_id\":\"p-1\",\"timestamp\":1796035701003}]," \
	"[\"execution_cached\",{\"nodes\":[\"4\",\"7\",\"5\"],\"prompt_id\":" \
	"\"p-1\",\"timestamp\":1796035701003}]"
#define HISTORY_SUCCESS(outputs) \
	"{\"p-1\":{" HISTORY_PROMPT ",\"outputs\":" outputs ",\"status\":" \
	"{\"status_str\":\"success\",\"completed\":true,\"messages\":[" \
	HISTORY_STARTED ",[\"execution_success\",{\"prompt_id\":\"p-1\"," \
	"\"timestamp\":1796035701003}]]},\"meta\":{\"9\":{\"node_id\":\"9\"," \
	"\"display_node\":\"9\",\"parent_node\":null,\"real_node_id\":\"9\"}}}}"
#define HISTORY_FAILED(event) \
	"{\"p-1\":{" HISTORY_PROMPT ",\"outputs\":{},\"status\":{\"status_str\":" \
	"\"error\",\"completed\":false,\"messages\":[" HISTORY_STARTED "," event \
	"]},\"meta\":{}}}"
#define OOM_EVENT \
	"[\"execution_error\",{\"prompt_id\":\"p-1\",\"node_id\":\"3\"," \
	"\"node_type\":\"KSampler\",\"executed\":[\"6\"],\"exception_message\":" \
	"\"CUDA out of memory. Tried to allocate 9.00 GiB. GPU 0 has a total " \
	"capacity of 23.52 GiB of which 2.18 GiB is free. Including non-PyTorch " \
	"memory, this process has 21.32 GiB memory in use.\\nThis error means " \
	"you ran out of memory on your GPU.\\n\\nTIPS: If the workflow worked " \
	"before you might have accidentally set the batch_size to a large " \
	"number.\",\"exception_type\":\"torch.OutOfMemoryError\",\"traceback\":" \
	"[\"  File \\\"/opt/ComfyUI/execution.py\\\", line 496, in execute\\n\"]," \
	"\"current_inputs\":{\"seed\":[729],\"steps\":[2]},\"current_outputs\":" \
	"[\"4\",\"7\",\"5\"],\"timestamp\":1796035721105}]"
#define RUNTIME_EVENT \
	"[\"execution_error\",{\"prompt_id\":\"p-1\",\"node_id\":\"3\"," \
	"\"node_type\":\"KSampler\",\"executed\":[\"6\"],\"exception_message\":" \
	"\"mat1 and mat2 shapes cannot be multiplied (154x2048 and 768x320)\\n\\n" \
	"\\nTIPS: If you have any 'Load CLIP' or '*CLIP Loader' nodes in your " \
	"workflow connected to this sampler node make sure the correct file(s) " \
	"and type is selected.\",\"exception_type\":\"RuntimeError\"," \
	"\"traceback\":[],\"current_inputs\":{},\"current_outputs\":[]," \
	"\"timestamp\":1796035721765}]"
#define INTERRUPTED_EVENT \
	"[\"execution_interrupted\",{\"prompt_id\":\"p-1\",\"node_id\":\"3\"," \
	"\"node_type\":\"KSampler\",\"executed\":[\"6\"],\"timestamp\":" \
	"1796035731470}]"
#define SAVED(name) \
	"{\"filename\":\"" name "\",\"subfolder\":\"igny8\",\"type\":\"output\"}"
#define PREVIEW(name) \
	"{\"filename\":\"" name "\",\"subfolder\":\"\",\"type\":\"temp\"}"

static const HistoryCase history_cases[] = {
	{"queued or running", 200, "{}", IGNY8_COMFY_PENDING, {NULL}, IGNY8_ERR_NONE, NULL, 0},
	{"another prompt's entry only", 200,
		"{\"p-2\":{\"outputs\":{},\"status\":{\"status_str\":\"success\"}}}",
	IGNY8_COMFY_PENDING, {NULL}, IGNY8_ERR_NONE, NULL, 0},
	{"done, one image", 200,
		HISTORY_SUCCESS("{\"9\":{\"images\":[" SAVED("t1_00001_.png") "]}}"),
	IGNY8_COMFY_DONE, {"t1_00001_.png|igny8|output"}, IGNY8_ERR_NONE, NULL, 0},
	{"a batch, two save nodes and a preview", 200,
		HISTORY_SUCCESS("{\"12\":{\"images\":[" PREVIEW("ComfyUI_temp_a_00001_.png")
						"]},\"9\":{\"images\":[" SAVED("t1_00001_.png") ","
						SAVED("t1_00002_.png") "]},\"19\":{\"images\":["
						"{\"filename\":\"b_00001_.png\",\"type\":\"output\"}]},"
						"\"20\":{\"text\":[\"not an image\"]}}"),
		IGNY8_COMFY_DONE, {"t1_00001_.png|igny8|output",
	"t1_00002_.png|igny8|output", "b_00001_.png||output"}, IGNY8_ERR_NONE, NULL, 0},
	{"previews only", 200,
		HISTORY_SUCCESS("{\"9\":{\"images\":[" PREVIEW("ComfyUI_temp_klfxh_00001_.png")
						"]}}"),
	IGNY8_COMFY_DONE, {"ComfyUI_temp_klfxh_00001_.png||temp"}, IGNY8_ERR_NONE, NULL, 0},
	{"odd image entries are skipped", 200,
		HISTORY_SUCCESS("{\"9\":{\"images\":[5,{\"filename\":\"\"},"
						"{\"subfolder\":\"x\"},{\"filename\":\"in.png\","
						"\"type\":\"input\"},{\"filename\":7},"
						"{\"filename\":\"ok.png\"}]},\"10\":{\"images\":{}},"
						"\"11\":[]}"),
	IGNY8_COMFY_DONE, {"ok.png||output"}, IGNY8_ERR_NONE, NULL, 0},
	{"a file name with odd characters", 200,
		HISTORY_SUCCESS("{\"9\":{\"images\":[{\"filename\":\"a b&c=d%\\u00e9.png\","
						"\"subfolder\":\"x/y\",\"type\":\"output\"}]}}"),
	IGNY8_COMFY_DONE, {"a b&c=d%\xc3\xa9.png|x/y|output"}, IGNY8_ERR_NONE, NULL, 0},
	{"older builds: no status", 200,
		"{\"p-1\":{\"outputs\":{\"9\":{\"images\":[" SAVED("t_00001_.png")
		"]}}}}", IGNY8_COMFY_DONE, {"t_00001_.png|igny8|output"}, IGNY8_ERR_NONE, NULL, 0},

	{"success without an image", 200, HISTORY_SUCCESS("{}"),
		IGNY8_COMFY_FAILED, {NULL}, IGNY8_ERR_FALLBACK,
	"the workflow produced no image", 0},
	{"success with input images only", 200,
		HISTORY_SUCCESS("{\"9\":{\"images\":[{\"filename\":\"in.png\","
						"\"type\":\"input\"}]}}"),
		IGNY8_COMFY_FAILED, {NULL}, IGNY8_ERR_FALLBACK,
	"the workflow produced no image", 0},
	{"out of memory", 200, HISTORY_FAILED(OOM_EVENT), IGNY8_COMFY_FAILED,
		{NULL}, IGNY8_ERR_RETRY,
		"execution error in node 3 (KSampler): torch.OutOfMemoryError: CUDA "
	"out of memory. Tried to allocate 9.00 GiB.", ONCE | PREFIX},
	{"a runtime error", 200, HISTORY_FAILED(RUNTIME_EVENT),
		IGNY8_COMFY_FAILED, {NULL}, IGNY8_ERR_RETRY,
		"execution error in node 3 (KSampler): RuntimeError: mat1 and mat2 "
		"shapes cannot be multiplied (154x2048 and 768x320)   TIPS: If you "
	"have any 'Load CLIP'", ONCE | PREFIX},
	{"an error without details", 200,
		"{\"p-1\":{\"outputs\":{},\"status\":{\"status_str\":\"error\","
		"\"messages\":[[\"execution_error\",5]]}}}", IGNY8_COMFY_FAILED,
	{NULL}, IGNY8_ERR_RETRY, "execution error", ONCE},
	{"status error, no message", 200,
		"{\"p-1\":{\"outputs\":{},\"status\":{\"status_str\":\"error\","
		"\"completed\":false,\"messages\":[]}}}", IGNY8_COMFY_FAILED,
	{NULL}, IGNY8_ERR_RETRY, "execution error", ONCE},
	{"interrupted", 200, HISTORY_FAILED(INTERRUPTED_EVENT),
	IGNY8_COMFY_FAILED, {NULL}, IGNY8_ERR_FALLBACK, "interrupted", 0},
	{"interrupted wins over an image", 200,
		"{\"p-1\":{\"outputs\":{\"9\":{\"images\":[" SAVED("t_00001_.png")
		"]}},\"status\":{\"status_str\":\"success\",\"messages\":["
		INTERRUPTED_EVENT "]}}}", IGNY8_COMFY_FAILED, {NULL},
	IGNY8_ERR_FALLBACK, "interrupted", 0},

	{"an unknown status_str", 200,
		"{\"p-1\":{\"outputs\":{},\"status\":{\"status_str\":\"cancelled\"}}}",
		IGNY8_COMFY_FAILED, {NULL}, IGNY8_ERR_RETRY,
	"malformed response from ComfyUI: unknown status_str", ONCE},
	{"an entry that is not an object", 200, "{\"p-1\":[]}",
		IGNY8_COMFY_FAILED, {NULL}, IGNY8_ERR_RETRY,
	"malformed response from ComfyUI: the history entry is not an object", ONCE},
	{"no outputs", 200,
		"{\"p-1\":{\"status\":{\"status_str\":\"success\"}}}",
		IGNY8_COMFY_FAILED, {NULL}, IGNY8_ERR_RETRY,
	"malformed response from ComfyUI: no outputs in the history entry", ONCE},
	{"not JSON", 200, "{\"p-1\":", IGNY8_COMFY_UNREAD, {NULL},
	IGNY8_ERR_RETRY, "malformed response from ComfyUI: not JSON", ONCE},
	{"an array", 200, "[]", IGNY8_COMFY_UNREAD, {NULL}, IGNY8_ERR_RETRY,
	"malformed response from ComfyUI: not a JSON object", ONCE},
	{"a NUL in a file name", 200,
		HISTORY_SUCCESS("{\"9\":{\"images\":[" SAVED("t1\\u0000.png") "]}}"),
		IGNY8_COMFY_UNREAD, {NULL}, IGNY8_ERR_RETRY,
	"malformed response from ComfyUI: a string contains a NUL character", ONCE},
	{"500", 500, "500 Internal Server Error\n\nServer got itself in trouble",
		IGNY8_COMFY_UNREAD, {NULL}, IGNY8_ERR_RETRY,
	"HTTP 500 from ComfyUI: 500 Internal Server Error  Server got itself in trouble", 0},
	{"404", 404, "", IGNY8_COMFY_UNREAD, {NULL}, IGNY8_ERR_FALLBACK,
	"HTTP 404 from ComfyUI", 0}
};

static void
test_comfyui_parse_history(void)
{
	Igny8ComfyImage *images;
	Igny8HttpResponse resp;
	Igny8ProviderError e;
	Igny8ComfyState state;
	int			nimages;
	int			i;
	int			j;

	begin_group("ComfyUI parse_history: pending, images, failures");
	for (i = 0; i < (int) lengthof(history_cases); i++)
	{
		const HistoryCase *c = &history_cases[i];
		int			n = 0;

		begin_case(i, c->what);
		resp = make_response(c->status, c->body, strlen(c->body), -1, -1);
		memset(&e, 0x7f, sizeof(e));
		images = (Igny8ComfyImage *) "untouched";
		nimages = -5;
		state = igny8_comfyui_parse_history(&resp, COMFY_ID, &images,
											&nimages, &e);
		check(state == c->state, __LINE__, "state %d, expected %d (%s)",
			  (int) state, (int) c->state,
			  state == IGNY8_COMFY_FAILED || state == IGNY8_COMFY_UNREAD ?
			  e.message : "");
		while (n < (int) lengthof(c->images) && c->images[n] != NULL)
			n++;
		CHECK_INT(nimages, n);
		if (state == IGNY8_COMFY_DONE && nimages == n)
		{
			for (j = 0; j < n; j++)
			{
				char	   *got = psprintf("%s|%s|%s", images[j].filename,
										   images[j].subfolder,
										   images[j].type);

				CHECK_STR(got, c->images[j]);
				pfree(got);
			}
		}
		if (state == IGNY8_COMFY_FAILED || state == IGNY8_COMFY_UNREAD)
			check_error(&e, c->cls, c->message, c->flags, -1, __LINE__);
		else
			CHECK(e.cls == IGNY8_ERR_NONE && e.message == NULL);
		if (state != IGNY8_COMFY_DONE)
			CHECK(images == NULL);
		for (j = 0; j < nimages; j++)
		{
			pfree(images[j].filename);
			pfree(images[j].subfolder);
			pfree(images[j].type);
		}
		if (state == IGNY8_COMFY_DONE)
			pfree(images);
		free_maybe(e.message);
	}
	case_name = NULL;

	/* without a prompt_id, the first entry */
	{
		const char *body = "{\"x\":{\"outputs\":{\"9\":{\"images\":["
			SAVED("a.png") "]}}}}";

		resp = make_response(200, body, strlen(body), -1, -1);
		state = igny8_comfyui_parse_history(&resp, NULL, &images, &nimages,
											&e);
		CHECK(state == IGNY8_COMFY_DONE && nimages == 1);
		if (state == IGNY8_COMFY_DONE)
		{
			CHECK_STR(images[0].filename, "a.png");
			pfree(images[0].filename);
			pfree(images[0].subfolder);
			pfree(images[0].type);
			pfree(images);
		}
		resp = make_response(200, "{}", 2, -1, -1);
		CHECK(igny8_comfyui_parse_history(&resp, NULL, &images, &nimages,
										  &e) == IGNY8_COMFY_PENDING);
	}
	end_group();
}

/* Check a built request: method, path, headers, body (JSON or NULL). */
static void
check_request(Igny8HttpRequest *out, const char *method, const char *path,
			  const char *api_key, const char *body, int line)
{
	const char *headers[3] = {NULL, NULL, NULL};
	int			n = 0;

	check_str(out->method, method, "method", line);
	check_str(out->path, path, "path", line);
	if (body != NULL)
		headers[n++] = CT;
	if (api_key != NULL)
		headers[n++] = psprintf("Authorization: Bearer %s", api_key);
	check_headers(out, headers, line);
	if (api_key != NULL)
		pfree((char *) headers[n - 1]);
	if (body == NULL)
		check(out->body == NULL, line, "a body: %s", out->body);
	else
		check_json(out->body, body, line);
}

typedef struct ViewCase
{
	const char *filename;
	const char *subfolder;
	const char *type;
	const char *path;
} ViewCase;

static const ViewCase view_cases[] = {
	{"t1_00001_.png", "igny8", "output",
	"/view?filename=t1_00001_.png&subfolder=igny8&type=output"},
	{"ComfyUI_temp_klfxh_00001_.png", "", "temp",
	"/view?filename=ComfyUI_temp_klfxh_00001_.png&subfolder=&type=temp"},
	{"a b&c=d%e+f?.png", "jobs/run 1", "output",
	"/view?filename=a%20b%26c%3Dd%25e%2Bf%3F.png&subfolder=jobs%2Frun%201&type=output"},
	{"\xc3\xa9~x-y.png", "#", "out put",
	"/view?filename=%C3%A9~x-y.png&subfolder=%23&type=out%20put"},
	{"a\r\nb.png", NULL, NULL,
	"/view?filename=a%0D%0Ab.png&subfolder=&type=output"}
};

static void
test_comfyui_requests(void)
{
	Igny8HttpRequest out;
	int			i;

	begin_group("ComfyUI build_history, build_view, build_cancel");
	igny8_comfyui_build_history("p-1", NULL, &out);
	check_request(&out, "GET", "/history/p-1", NULL, NULL, __LINE__);
	free_request(&out);
	igny8_comfyui_build_history("4c1d1b8e-2f0c-4c55-9a3e-0b7f3e2a9d11",
								"proxy-token", &out);
	check_request(&out, "GET", "/history/4c1d1b8e-2f0c-4c55-9a3e-0b7f3e2a9d11",
				  "proxy-token", NULL, __LINE__);
	free_request(&out);
	igny8_comfyui_build_history("a/b?c d", NULL, &out);
	check_request(&out, "GET", "/history/a%2Fb%3Fc%20d", NULL, NULL,
				  __LINE__);
	free_request(&out);

	for (i = 0; i < (int) lengthof(view_cases); i++)
	{
		Igny8ComfyImage image;

		begin_case(i, view_cases[i].path);
		image.filename = (char *) view_cases[i].filename;
		image.subfolder = (char *) view_cases[i].subfolder;
		image.type = (char *) view_cases[i].type;
		igny8_comfyui_build_view(&image, i == 0 ? "k" : NULL, &out);
		check_request(&out, "GET", view_cases[i].path, i == 0 ? "k" : NULL,
					  NULL, __LINE__);
		free_request(&out);
	}
	case_name = NULL;

	CHECK(igny8_comfyui_build_cancel(IGNY8_COMFY_CANCEL_DELETE, "p-1", NULL,
									 &out));
	check_request(&out, "POST", "/queue", NULL, "{\"delete\":[\"p-1\"]}",
				  __LINE__);
	free_request(&out);
	CHECK(igny8_comfyui_build_cancel(IGNY8_COMFY_CANCEL_INTERRUPT, "p-1",
									 "proxy-token", &out));
	check_request(&out, "POST", "/interrupt", "proxy-token",
				  "{\"prompt_id\":\"p-1\"}", __LINE__);
	CHECK_STR(out.body, "{\"prompt_id\":\"p-1\"}");
	free_request(&out);
	CHECK(igny8_comfyui_build_cancel(IGNY8_COMFY_CANCEL_QUEUED, "p-1", NULL,
									 &out));
	check_request(&out, "GET", "/queue", NULL, NULL, __LINE__);
	free_request(&out);
	CHECK(igny8_comfyui_build_cancel(IGNY8_COMFY_CANCEL_AWAIT, "p-1", "k",
									 &out));
	check_request(&out, "GET", "/history/p-1", "k", NULL, __LINE__);
	free_request(&out);
	CHECK(igny8_comfyui_build_cancel(IGNY8_COMFY_CANCEL_FORGET, "p-1", NULL,
									 &out));
	check_request(&out, "POST", "/history", NULL, "{\"delete\":[\"p-1\"]}",
				  __LINE__);
	free_request(&out);

	/* never an interrupt without an id: that would stop anyone's prompt */
	memset(&out, 0x7f, sizeof(out));
	CHECK(!igny8_comfyui_build_cancel(IGNY8_COMFY_CANCEL_INTERRUPT, NULL,
									  NULL, &out));
	CHECK(out.path == NULL && out.body == NULL && out.nheaders == 0);
	CHECK(!igny8_comfyui_build_cancel(IGNY8_COMFY_CANCEL_INTERRUPT, "", NULL,
									  &out));
	CHECK(out.path == NULL && out.body == NULL && out.nheaders == 0);
	CHECK(!igny8_comfyui_build_cancel(IGNY8_COMFY_CANCEL_DELETE, NULL, NULL,
									  &out));
	CHECK(!igny8_comfyui_build_cancel((Igny8ComfyCancel) 7, "p-1", NULL,
									  &out));
	CHECK(out.path == NULL && out.body == NULL && out.nheaders == 0);
	end_group();
}

/* ----- ComfyUI: the prompts of a worker's earlier incarnation in GET /queue ----- */

static void
test_comfyui_parse_queue_of(void)
{
	static const char *const prefix = "igny8_ai-7-42-0-";
	static const char *const own = "igny8_ai-7-42-0-200";
	static const char queue[] =
		"{\"queue_running\":[[3,\"p-run\",{},{\"client_id\":\"igny8_ai-7-42-0-100\"},[\"9\"]]],"
		"\"queue_pending\":["
		"[4,\"p-own\",{},{\"client_id\":\"igny8_ai-7-42-0-200\"},[]],"
		"[5,\"p-other-worker\",{},{\"client_id\":\"igny8_ai-7-42-1-100\"},[]],"
		"[6,\"p-worker-01\",{},{\"client_id\":\"igny8_ai-7-42-01-100\"},[]],"
		"[7,\"p-other-start\",{},{\"client_id\":\"igny8_ai-7-421-0-100\"},[]],"
		"[8,\"p-other-server\",{},{\"client_id\":\"igny8_ai-8-42-0-100\"},[]],"
		"[9,\"p-other-client\",{},{\"client_id\":\"someone\"},[]],"
		"[10,\"p-no-client\",{},{},[]],"
		"[11,\"p-no-extra\",{}],"
		"\"not an entry\",[12],[13,14,{},{\"client_id\":\"igny8_ai-7-42-0-1\"},[]],"
		"[15,\"\",{},{\"client_id\":\"igny8_ai-7-42-0-1\"},[]],"
		"[16,\"p-old\",{},{\"client_id\":\"igny8_ai-7-42-0-99\",\"extra_pnginfo\":{}},[\"9\"]]]}";
	static const struct
	{
		const char *name;
		long		status;
		const char *body;
	}			unread[] = {
		{"a 500", 500, "{\"queue_running\":[],\"queue_pending\":[]}"},
		{"not JSON", 200, "<html>"},
		{"an array", 200, "[]"},
		{"no queue", 200, "{\"error\":\"x\"}"},
	};
	Igny8HttpResponse resp;
	char	   *unset[1] = {NULL};
	char	  **ids;
	int			nids;

	begin_group("ComfyUI parse_queue_of: prompts an earlier run of a worker left");
	resp = make_response(200, queue, strlen(queue), -1, -1);
	CHECK(igny8_comfyui_parse_queue_of(&resp, prefix, own, &ids, &nids));
	/* running first, then waiting; never our own, another worker's or server's */
	CHECK(nids == 2);
	if (nids == 2)
	{
		CHECK_STR(ids[0], "p-run");
		CHECK_STR(ids[1], "p-old");
	}
	for (int i = 0; i < nids; i++)
		pfree(ids[i]);
	if (ids)
		pfree(ids);

	resp = make_response(200, "{\"queue_running\":[],\"queue_pending\":[]}",
						 strlen("{\"queue_running\":[],\"queue_pending\":[]}"),
						 -1, -1);
	ids = unset;
	CHECK(igny8_comfyui_parse_queue_of(&resp, prefix, own, &ids, &nids));
	CHECK(nids == 0 && ids == NULL);

	for (int i = 0; i < (int) lengthof(unread); i++)
	{
		begin_case(i, unread[i].name);
		resp = make_response(unread[i].status, unread[i].body,
							 strlen(unread[i].body), -1, -1);
		ids = unset;
		nids = -1;
		CHECK(!igny8_comfyui_parse_queue_of(&resp, prefix, own, &ids, &nids));
		CHECK(nids == 0 && ids == NULL);
	}
	case_name = NULL;
	end_group();
}

static void
test_comfyui_parse_queue_has(void)
{
	/*
	 * the running prompt's graph names the waiting one in a string: only
	 * an entry's id counts
	 */
	static const char queue[] =
		"{\"queue_running\":[[3,\"p-run\",{\"6\":{\"inputs\":{\"text\":\"p-wait\"}}},{},[\"9\"]]],"
		"\"queue_pending\":[\"p-odd\",[4],[5,6],[7,\"p-wait\",{},{},[]]]}";
	static const struct
	{
		const char *name;
		const char *id;
		bool		running;
		bool		waiting;
	}			cases[] = {
		{"running", "p-run", true, false},
		{"waiting", "p-wait", false, true},
		{"neither", "p-gone", false, false},
		{"a bare string is no entry", "p-odd", false, false},
	};
	static const struct
	{
		const char *name;
		long		status;
		const char *body;
	}			unread[] = {
		{"a 502", 502, "{\"queue_running\":[],\"queue_pending\":[]}"},
		{"not JSON", 200, "<html>"},
		{"an array", 200, "[[1,\"p-run\"]]"},
		{"no queue", 200, "{\"error\":\"x\"}"},
	};
	Igny8HttpResponse resp;
	bool		running;
	bool		waiting;

	begin_group("ComfyUI parse_queue_has: where GET /queue shows one prompt");
	resp = make_response(200, queue, strlen(queue), -1, -1);
	for (int i = 0; i < (int) lengthof(cases); i++)
	{
		begin_case(i, cases[i].name);
		running = waiting = !cases[i].running;
		CHECK(igny8_comfyui_parse_queue_has(&resp, cases[i].id, &running,
											&waiting));
		CHECK(running == cases[i].running);
		CHECK(waiting == cases[i].waiting);
	}
	/* one list is enough to be a queue */
	begin_case(lengthof(cases), "only queue_pending");
	resp = make_response(200, "{\"queue_pending\":[[1,\"p\"]]}",
						 strlen("{\"queue_pending\":[[1,\"p\"]]}"), -1, -1);
	CHECK(igny8_comfyui_parse_queue_has(&resp, "p", &running, &waiting));
	CHECK(!running && waiting);
	for (int i = 0; i < (int) lengthof(unread); i++)
	{
		begin_case(i, unread[i].name);
		resp = make_response(unread[i].status, unread[i].body,
							 strlen(unread[i].body), -1, -1);
		running = waiting = true;
		CHECK(!igny8_comfyui_parse_queue_has(&resp, "p-run", &running,
											 &waiting));
		CHECK(!running && !waiting);
	}
	case_name = NULL;
	end_group();
}

/* ----- ComfyUI: the model files a workflow needs (health probe) ----- */

static const char *const files_graph =
"{\"1\":{\"class_type\":\"UNETLoader\",\"inputs\":{\"unet_name\":\"flux1-dev.safetensors\",\"weight_dtype\":\"default\"}},"
"\"2\":{\"class_type\":\"DualCLIPLoader\",\"inputs\":{\"clip_name1\":\"t5xxl_fp16.safetensors\",\"clip_name2\":\"clip_l.safetensors\",\"type\":\"flux\"}},"
"\"3\":{\"class_type\":\"VAELoader\",\"inputs\":{\"vae_name\":\"ae.safetensors\"}},"
"\"4\":{\"class_type\":\"CheckpointLoaderSimple\",\"inputs\":{\"ckpt_name\":\"SDXL.CKPT\"}},"
"\"5\":{\"class_type\":\"CLIPTextEncode\",\"inputs\":{\"text\":\"a.safetensors\",\"clip\":[\"2\",0]}},"
"\"6\":{\"class_type\":\"VAELoader\",\"inputs\":{\"vae_name\":\"ae.safetensors\"}},"
"\"7\":{\"class_type\":\"LoraLoader\",\"inputs\":{\"lora_name\":\"x.gguf\",\"strength\":1,\"model\":[\"1\",0]}},"
"\"8\":\"not a node\",\"9\":{\"class_type\":\"UNETLoader\"}}";

static void
test_comfyui_model_files(void)
{
	cJSON	   *graph;
	Igny8ComfyFile *files = NULL;
	int			cap = 0;
	int			n;
	Igny8HttpRequest out;
	Igny8HttpResponse resp;
	static const struct
	{
		const char *class_type;
		const char *input;
		const char *file;
	}			want[] = {
		{"UNETLoader", "unet_name", "flux1-dev.safetensors"},
		{"DualCLIPLoader", "clip_name1", "t5xxl_fp16.safetensors"},
		{"DualCLIPLoader", "clip_name2", "clip_l.safetensors"},
		{"VAELoader", "vae_name", "ae.safetensors"},
		{"CheckpointLoaderSimple", "ckpt_name", "SDXL.CKPT"},
		{"LoraLoader", "lora_name", "x.gguf"},
	};
	const char *old_format =
		"{\"DualCLIPLoader\":{\"input\":{\"required\":{"
		"\"clip_name1\":[[\"clip_l.safetensors\",\"t5xxl_fp16.safetensors\"]],"
		"\"clip_name2\":[[\"t5xxl_fp16.safetensors\"]],\"type\":[[\"flux\"]]}}}}";
	const char *combo_format =
		"{\"UNETLoader\":{\"input\":{\"required\":{},\"optional\":{"
		"\"unet_name\":[\"COMBO\",{\"options\":[\"flux1-dev.safetensors\"]}]}}}}";

	begin_group("ComfyUI model files and /object_info");
	graph = cJSON_Parse(files_graph);
	n = igny8_comfyui_model_files(graph, &files, 0, &cap);
	CHECK_INT(n, (int) lengthof(want));
	for (int i = 0; i < n && i < (int) lengthof(want); i++)
	{
		CHECK_STR(files[i].class_type, want[i].class_type);
		CHECK_STR(files[i].input, want[i].input);
		CHECK_STR(files[i].file, want[i].file);
		CHECK(!files[i].present);
	}
	/* a second workflow adds only what is new */
	CHECK_INT(igny8_comfyui_model_files(graph, &files, n, &cap), n);

	igny8_comfyui_build_object_info("DualCLIPLoader", NULL, &out);
	check_request(&out, "GET", "/object_info/DualCLIPLoader", NULL, NULL,
				  __LINE__);
	free_request(&out);

	/* [[files], {...}]: clip_name1 listed, clip_name2 not */
	resp = make_response(200, old_format, strlen(old_format), -1, -1);
	CHECK_INT(igny8_comfyui_parse_object_info(&resp, "DualCLIPLoader", files, n),
			  IGNY8_COMFY_CLASS_FOUND);
	CHECK(files[1].present);
	CHECK(!files[2].present);
	CHECK(!files[0].present);
	/* ["COMBO", {"options": [...]}], in "optional" */
	resp = make_response(200, combo_format, strlen(combo_format), -1, -1);
	CHECK_INT(igny8_comfyui_parse_object_info(&resp, "UNETLoader", files, n),
			  IGNY8_COMFY_CLASS_FOUND);
	CHECK(files[0].present);
	/* a class the server does not know (a node not installed): {} */
	resp = make_response(200, "{}", 2, -1, -1);
	CHECK_INT(igny8_comfyui_parse_object_info(&resp, "VAELoader", files, n),
			  IGNY8_COMFY_CLASS_UNKNOWN);
	CHECK(!files[3].present);
	/* an error, a malformed body, the class without a description */
	resp = make_response(500, "500: Internal Server Error", 26, -1, -1);
	CHECK_INT(igny8_comfyui_parse_object_info(&resp, "VAELoader", files, n),
			  IGNY8_COMFY_CLASS_ERROR);
	resp = make_response(200, "{\"VAELoader\":", 13, -1, -1);
	CHECK_INT(igny8_comfyui_parse_object_info(&resp, "VAELoader", files, n),
			  IGNY8_COMFY_CLASS_ERROR);
	resp = make_response(200, "[]", 2, -1, -1);
	CHECK_INT(igny8_comfyui_parse_object_info(&resp, "VAELoader", files, n),
			  IGNY8_COMFY_CLASS_ERROR);
	resp = make_response(200, "{\"VAELoader\":1}", 15, -1, -1);
	CHECK_INT(igny8_comfyui_parse_object_info(&resp, "VAELoader", files, n),
			  IGNY8_COMFY_CLASS_ERROR);
	CHECK(!files[3].present);

	/* every node class, each once, in the order of the graph */
	{
		char	  **classes = NULL;
		int			class_cap = 0;
		int			nclasses;
		static const char *const want_classes[] = {"UNETLoader",
			"DualCLIPLoader", "VAELoader", "CheckpointLoaderSimple",
		"CLIPTextEncode", "LoraLoader"};

		nclasses = igny8_comfyui_node_classes(graph, &classes, 0, &class_cap);
		CHECK_INT(nclasses, (int) lengthof(want_classes));
		for (int i = 0; i < nclasses && i < (int) lengthof(want_classes); i++)
			CHECK_STR(classes[i], want_classes[i]);
		/* a second workflow adds only what is new */
		CHECK_INT(igny8_comfyui_node_classes(graph, &classes, nclasses,
											 &class_cap), nclasses);
		for (int i = 0; i < nclasses; i++)
			pfree(classes[i]);
		pfree(classes);
	}

	for (int i = 0; i < n; i++)
	{
		pfree(files[i].class_type);
		pfree(files[i].input);
		pfree(files[i].file);
	}
	pfree(files);
	cJSON_Delete(graph);
	end_group();
}


static void
test_comfyui_parse_view(void)
{
	Igny8HttpResponse resp;
	Igny8ImageResult r;
	Igny8ProviderError e;
	char	   *png;
	size_t		len;
	static const char html[] = "<html><body>Error</body></html>";
	const struct
	{
		long		status;
		const char *body;
		Igny8ErrorClass cls;
		const char *message;
		int			flags;
	}			bad[] = {
		{200, html, IGNY8_ERR_RETRY,
		"malformed image from ComfyUI: not a PNG image", ONCE},
		{200, "", IGNY8_ERR_RETRY,
		"malformed image from ComfyUI: not a PNG image", ONCE},
		{404, "", IGNY8_ERR_FALLBACK, "HTTP 404 from ComfyUI", 0},
		{400, "", IGNY8_ERR_FALLBACK, "HTTP 400 from ComfyUI", 0},
		{403, "403: Forbidden", IGNY8_ERR_FALLBACK,
		"HTTP 403 from ComfyUI: 403: Forbidden", 0},
		{500, "", IGNY8_ERR_RETRY, "HTTP 500 from ComfyUI", 0},
		{302, "", IGNY8_ERR_FALLBACK, "HTTP 302 from ComfyUI", 0}
	};
	int			i;

	begin_group("ComfyUI parse_view: the PNG, checked, not copied");
	png = make_png(16, 8, 6, &len);
	resp = make_response(200, png, len, -1, -1);
	memset(&r, 0x7f, sizeof(r));
	memset(&e, 0x7f, sizeof(e));
	CHECK(igny8_comfyui_parse_view(&resp, &r, &e));
	CHECK(r.data == png && r.len == len);
	CHECK_STR(r.mime_type, "image/png");
	CHECK_INT(r.width, 16);
	CHECK_INT(r.height, 8);
	CHECK(r.revised_prompt == NULL);
	CHECK(e.cls == IGNY8_ERR_NONE && e.message == NULL && !e.retry_once);

	/* a download cut short */
	resp = make_response(200, png, len / 2, -1, -1);
	memset(&r, 0x7f, sizeof(r));
	CHECK(!igny8_comfyui_parse_view(&resp, &r, &e));
	check_error(&e, IGNY8_ERR_RETRY,
				"malformed image from ComfyUI: truncated PNG image", ONCE, -1,
				__LINE__);
	CHECK(r.data == NULL && r.len == 0 && r.width == 0);
	free_maybe(e.message);
	/* a broken CRC */
	png[8 + 8 + 13 + 3] ^= 1;
	resp = make_response(200, png, len, -1, -1);
	CHECK(!igny8_comfyui_parse_view(&resp, &r, &e));
	check_error(&e, IGNY8_ERR_RETRY,
				"malformed image from ComfyUI: PNG IHDR CRC mismatch", ONCE, -1,
				__LINE__);
	free_maybe(e.message);
	pfree(png);

	for (i = 0; i < (int) lengthof(bad); i++)
	{
		begin_case(i, bad[i].message);
		resp = make_response(bad[i].status, bad[i].body,
							 strlen(bad[i].body), -1, -1);
		memset(&r, 0x7f, sizeof(r));
		memset(&e, 0x7f, sizeof(e));
		CHECK(!igny8_comfyui_parse_view(&resp, &r, &e));
		check_error(&e, bad[i].cls, bad[i].message, bad[i].flags, -1,
					__LINE__);
		CHECK(r.data == NULL);
		free_maybe(e.message);
	}
	end_group();
}

/* ---------- images: OpenAI (provider_openai.c) ---------- */

typedef struct SizeCase
{
	const char *model;
	int			width;
	int			height;
	int			out_width;
	int			out_height;
} SizeCase;

static const SizeCase size_cases[] = {
	{"dall-e-3", 1024, 1024, 1024, 1024},
	{"dall-e-3", 512, 512, 1024, 1024},
	{"dall-e-3", 1920, 1080, 1792, 1024},
	{"dall-e-3", 1080, 1920, 1024, 1792},
	{"dall-e-3", 1200, 1000, 1024, 1024},	/* 1.2: nearer square than 1.75 */
	{"dall-e-3", 1400, 1000, 1792, 1024},	/* 1.4: nearer 1.75 */
	{"dall-e-3", 1000, 1400, 1024, 1792},
	{"dall-e-3", 4000, 100, 1792, 1024},
	{"dall-e-3", 0, 0, 1024, 1024},
	{"dall-e-3", -5, 100, 1024, 1024},
	{"gpt-image-1", 1024, 1024, 1024, 1024},
	{"gpt-image-1", 1536, 1024, 1536, 1024},
	{"gpt-image-1", 800, 600, 1536, 1024},	/* 1.33: nearer 1.5 than 1 */
	{"gpt-image-1", 600, 800, 1024, 1536},
	{"gpt-image-1", 1100, 1000, 1024, 1024},
	{"gpt-image-1", 1920, 1080, 1536, 1024},
	{"gpt-image-1-mini", 832, 1216, 1024, 1536},
	{"gpt-image-1.5", 64, 64, 1024, 1024},
	{"gpt-image-1", 0, 768, 1024, 1024},
	{"dall-e-2", 100, 100, 256, 256},
	{"dall-e-2", 256, 256, 256, 256},
	{"dall-e-2", 362, 362, 256, 256},	/* area 2.00 x 256's, 2.00 / 512's */
	{"dall-e-2", 363, 363, 512, 512},
	{"dall-e-2", 512, 512, 512, 512},
	{"dall-e-2", 1000, 1000, 1024, 1024},
	{"dall-e-2", 2000, 500, 1024, 1024},	/* all square: area decides */
	{"dall-e-2", 0, 0, 1024, 1024},
	/* not a model of OpenAI's: as asked */
	{"flux-pro", 1000, 700, 1000, 700},
	{"sdxl-turbo", 0, 0, 0, 0},
	{"dall-e-4", 1000, 700, 1000, 700},
	{"DALL-E-3", 1000, 700, 1000, 700},
	{NULL, 640, 480, 640, 480}
};

static void
test_openai_image_size(void)
{
	int			i;

	begin_group("OpenAI image_size: the nearest size the model makes");
	for (i = 0; i < (int) lengthof(size_cases); i++)
	{
		const SizeCase *c = &size_cases[i];
		int			w = -1;
		int			h = -1;

		begin_case(i, c->model ? c->model : "NULL");
		igny8_openai_image_size(c->model, c->width, c->height, &w, &h);
		check(w == c->out_width && h == c->out_height, __LINE__,
			  "%dx%d gives %dx%d, expected %dx%d", c->width, c->height, w, h,
			  c->out_width, c->out_height);
	}
	end_group();
}

typedef struct ImageBuildCase
{
	const char *what;
	const char *model;
	const char *prompt;
	int			width;
	int			height;
	const char *quality;
	const char *style;
	const char *settings;		/* JSON text or NULL */
	const char *api_key;
	const char *body;			/* compared as JSON */
	bool		exact;			/* and as text */
} ImageBuildCase;

#define SK "sk-test-openai-0123456789"

static const ImageBuildCase image_build_cases[] = {
	{.what = "dall-e-3: hd, vivid, landscape", .model = "dall-e-3",
		.prompt = "a red fox", .width = 1920, .height = 1080, .quality = "hd",
		.style = "vivid", .api_key = SK,
		.body = "{\"model\":\"dall-e-3\",\"prompt\":\"a red fox\",\"n\":1,"
		"\"size\":\"1792x1024\",\"quality\":\"hd\",\"style\":\"vivid\","
	"\"response_format\":\"b64_json\"}", .exact = true},
	{.what = "dall-e-3: high is hd", .model = "dall-e-3", .prompt = "p",
		.width = 1024, .height = 1024, .quality = "high", .style = "natural",
		.api_key = SK,
		.body = "{\"model\":\"dall-e-3\",\"prompt\":\"p\",\"n\":1,"
		"\"size\":\"1024x1024\",\"quality\":\"hd\",\"style\":\"natural\","
	"\"response_format\":\"b64_json\"}"},
	{.what = "dall-e-3: anything else is standard, an unknown style none",
		.model = "dall-e-3", .prompt = "p", .width = 1024, .height = 1792,
		.quality = "low", .style = "cartoon", .api_key = SK,
		.body = "{\"model\":\"dall-e-3\",\"prompt\":\"p\",\"n\":1,"
		"\"size\":\"1024x1792\",\"quality\":\"standard\","
	"\"response_format\":\"b64_json\"}"},
	{.what = "dall-e-3: no quality, no style", .model = "dall-e-3",
		.prompt = "p", .width = 1024, .height = 1024, .api_key = SK,
		.body = "{\"model\":\"dall-e-3\",\"prompt\":\"p\",\"n\":1,"
	"\"size\":\"1024x1024\",\"response_format\":\"b64_json\"}"},
	{.what = "gpt-image-1: standard is medium, no style, no response_format",
		.model = "gpt-image-1", .prompt = "p", .width = 1024, .height = 1024,
		.quality = "standard", .style = "vivid", .api_key = SK,
		.body = "{\"model\":\"gpt-image-1\",\"prompt\":\"p\",\"n\":1,"
	"\"size\":\"1024x1024\",\"quality\":\"medium\"}", .exact = true},
	{.what = "gpt-image-1: hd is high", .model = "gpt-image-1", .prompt = "p",
		.width = 1024, .height = 1536, .quality = "HD", .api_key = SK,
		.body = "{\"model\":\"gpt-image-1\",\"prompt\":\"p\",\"n\":1,"
	"\"size\":\"1024x1536\",\"quality\":\"high\"}"},
	{.what = "gpt-image-1-mini: low as is", .model = "gpt-image-1-mini",
		.prompt = "p", .width = 1536, .height = 1024, .quality = "low",
		.api_key = SK,
		.body = "{\"model\":\"gpt-image-1-mini\",\"prompt\":\"p\",\"n\":1,"
	"\"size\":\"1536x1024\",\"quality\":\"low\"}"},
	{.what = "gpt-image-1.5: auto as is, an unknown quality none",
		.model = "gpt-image-1.5", .prompt = "p", .quality = "auto",
		.api_key = SK,
		.body = "{\"model\":\"gpt-image-1.5\",\"prompt\":\"p\",\"n\":1,"
	"\"size\":\"1024x1024\",\"quality\":\"auto\"}"},
	{.what = "gpt-image-1: an unknown quality is left out",
		.model = "gpt-image-1", .prompt = "p", .quality = "ultra",
		.api_key = SK,
		.body = "{\"model\":\"gpt-image-1\",\"prompt\":\"p\",\"n\":1,"
	"\"size\":\"1024x1024\"}"},
	{.what = "gpt-image-1: extra_body adds, never replaces",
		.model = "gpt-image-1", .prompt = "p", .width = 1024, .height = 1024,
		.settings = "{\"extra_body\":{\"background\":\"transparent\","
		"\"output_format\":\"png\",\"n\":4,\"model\":\"evil\","
		"\"stream\":true,\"moderation\":\"low\"}}", .api_key = SK,
		.body = "{\"model\":\"gpt-image-1\",\"prompt\":\"p\",\"n\":1,"
		"\"size\":\"1024x1024\",\"background\":\"transparent\","
	"\"output_format\":\"png\",\"moderation\":\"low\"}"},
	{.what = "dall-e-2: square sizes, no quality or style",
		.model = "dall-e-2", .prompt = "p", .width = 500, .height = 500,
		.quality = "hd", .style = "vivid", .api_key = SK,
		.body = "{\"model\":\"dall-e-2\",\"prompt\":\"p\",\"n\":1,"
	"\"size\":\"512x512\",\"response_format\":\"b64_json\"}"},
	{.what = "another server's model: the size asked, nothing else",
		.model = "sdxl-turbo", .prompt = "p", .width = 768, .height = 512,
		.quality = "hd", .style = "vivid",
		.body = "{\"model\":\"sdxl-turbo\",\"prompt\":\"p\",\"n\":1,"
	"\"size\":\"768x512\"}"},
	{.what = "... and b64_json asked for in extra_body", .model = "sdxl-turbo",
		.prompt = "p", .settings =
		"{\"extra_body\":{\"response_format\":\"b64_json\"}}",
		.body = "{\"model\":\"sdxl-turbo\",\"prompt\":\"p\",\"n\":1,"
	"\"response_format\":\"b64_json\"}"},
	{.what = "no model: the server's default", .prompt = "p", .width = 256,
		.height = 256,
	.body = "{\"prompt\":\"p\",\"n\":1,\"size\":\"256x256\"}"},
	{.what = "strings escaped", .model = "dall-e-3",
		.prompt = "say \"hi\"\n\\ \xc3\xa9", .api_key = SK,
		.body = "{\"model\":\"dall-e-3\",\"prompt\":\"say \\\"hi\\\"\\n\\\\ "
		"\xc3\xa9\",\"n\":1,\"size\":\"1024x1024\","
	"\"response_format\":\"b64_json\"}"},
	{.what = "extra_body that is not an object", .model = "gpt-image-1",
		.prompt = "p", .settings = "{\"extra_body\":[1]}",
		.body = "{\"model\":\"gpt-image-1\",\"prompt\":\"p\",\"n\":1,"
	"\"size\":\"1024x1024\"}"}
};

static void
test_openai_build_image(void)
{
	int			i;

	begin_group("OpenAI build_image: body per model");
	for (i = 0; i < (int) lengthof(image_build_cases); i++)
	{
		const ImageBuildCase *c = &image_build_cases[i];
		Igny8ImageRequest req;
		Igny8HttpRequest out;

		begin_case(i, c->what);
		memset(&req, 0, sizeof(req));
		req.model = c->model;
		req.prompt = c->prompt;
		req.width = c->width;
		req.height = c->height;
		req.quality = c->quality;
		req.style = c->style;
		req.seed = 42;
		req.settings = test_json(c->settings);
		memset(&out, 0x7f, sizeof(out));
		igny8_openai_build_image(&req, c->api_key, &out);
		check_request(&out, "POST", "/v1/images/generations", c->api_key,
					  c->body, __LINE__);
		if (c->exact)
			CHECK_STR(out.body, c->body);
		if (c->api_key != NULL)
			check(strstr(out.body, c->api_key) == NULL, __LINE__,
				  "the key is in the body");
		free_request(&out);
		cJSON_Delete((cJSON *) req.settings);
	}
	end_group();
}

#define MAX_EXACT ((size_t) -2)	/* max_image: the PNG's own size */
#define MAX_SHORT ((size_t) -3)	/* one byte less */

typedef struct ImageParseCase
{
	const char *what;
	long		status;
	const char *body;			/* "@B64@": the test PNG in base64, "@B64S@"
								 * with its '/' written "\/" */
	double		retry_after;
	int			should_retry;
	size_t		max;			/* 0: 1 MiB */
	bool		ok;
	const char *revised_prompt;
	Igny8ErrorClass cls;
	const char *message;
	int			flags;			/* ONCE, PREFIX */
} ImageParseCase;

#define POLICY_DALLE \
	"{\"error\": {\"message\": \"Your request was rejected as a result of " \
	"our safety system. Your prompt may contain text that is not allowed " \
	"by our safety system.\", \"type\": \"image_generation_user_error\", " \
	"\"param\": null, \"code\": \"content_policy_violation\"}}"
#define POLICY_MESSAGE \
	"Your request was rejected as a result of our safety system. Your " \
	"prompt may contain text that is not allowed by our safety system."

static const ImageParseCase image_parse_cases[] = {
	{"dall-e-3", 200, "{\"created\": 1796035746, \"data\": [{\"b64_json\": "
		"\"@B64@\", \"revised_prompt\": \"A photo of a red fox.\"}]}", NOHDR,
	0, true, "A photo of a red fox.", IGNY8_ERR_NONE, NULL, 0},
	{"gpt-image-1", 200, "{\"created\":1796035746,\"background\":\"opaque\","
		"\"data\":[{\"b64_json\":\"@B64@\"}],\"output_format\":\"png\","
		"\"quality\":\"high\",\"size\":\"1024x1024\",\"usage\":{"
		"\"input_tokens\":2,\"output_tokens\":4160,\"total_tokens\":4162}}",
	NOHDR, 0, true, NULL, IGNY8_ERR_NONE, NULL, 0},
	{"'/' escaped as '\\/'", 200, "{\"data\":[{\"b64_json\":\"@B64S@\"}]}",
	NOHDR, 0, true, NULL, IGNY8_ERR_NONE, NULL, 0},
	{"exactly at the bound", 200, "{\"data\":[{\"b64_json\":\"@B64@\"}]}",
	NOHDR, MAX_EXACT, true, NULL, IGNY8_ERR_NONE, NULL, 0},
	{"an empty revised_prompt is none", 200, "{\"data\":[{\"b64_json\":"
	"\"@B64@\",\"revised_prompt\":\"\"}]}", NOHDR, 0, true, NULL, IGNY8_ERR_NONE, NULL, 0},
	{"a revised_prompt of bad UTF-8 is dropped", 200, "{\"data\":[{"
	"\"b64_json\":\"@B64@\",\"revised_prompt\":\"a\xff\"}]}", NOHDR, 0, true, NULL, IGNY8_ERR_NONE, NULL, 0},
	{"a second image is ignored", 200, "{\"data\":[{\"b64_json\":\"@B64@\"},"
	"{\"b64_json\":\"!!\"}]}", NOHDR, 0, true, NULL, IGNY8_ERR_NONE, NULL, 0},

	/* too big: this deployment cannot serve it */
	{"one byte over the bound", 200, "{\"data\":[{\"b64_json\":\"@B64@\"}]}",
		NOHDR, MAX_SHORT, false, NULL, IGNY8_ERR_FALLBACK,
	"image larger than ", PREFIX},
	{"the simulator's oversize", 200, "{\"data\":[{\"b64_json\":\""
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}",
		NOHDR, 64, false, NULL, IGNY8_ERR_FALLBACK,
	"image larger than 64 bytes", 0},
	{"... under a larger bound: not a PNG", 200, "{\"data\":[{\"b64_json\":\""
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}",
		NOHDR, 0, false, NULL, IGNY8_ERR_RETRY,
	"malformed image from OpenAI-compatible API: not a PNG image", ONCE},

	/* a 2xx that cannot be used */
	{"not base64", 200, "{\"data\":[{\"b64_json\":\"@@@@\"}]}", NOHDR, 0,
		false, NULL, IGNY8_ERR_RETRY,
		"malformed response from OpenAI-compatible API: data[0].b64_json is "
	"not base64", ONCE},
	{"base64 cut", 200, "{\"data\":[{\"b64_json\":\"iVBORw0KGgoAAAANSUhEUg\"}]}",
		NOHDR, 0, false, NULL, IGNY8_ERR_RETRY,
		"malformed response from OpenAI-compatible API: data[0].b64_json is "
	"not base64", ONCE},
	{"not a PNG", 200, "{\"data\":[{\"b64_json\":\"aGVsbG8gd29ybGQh\"}]}",
		NOHDR, 0, false, NULL, IGNY8_ERR_RETRY,
	"malformed image from OpenAI-compatible API: not a PNG image", ONCE},
	{"a JPEG, as output_format said", 200, "{\"data\":[{\"b64_json\":"
		"\"/9j/4AAQSkZJRg==\"}],\"output_format\":\"jpeg\"}", NOHDR, 0, false,
	NULL, IGNY8_ERR_FALLBACK, "the image is jpeg, not PNG (output_format)", 0},
	{"a JPEG, output_format silent", 200, "{\"data\":[{\"b64_json\":"
		"\"/9j/4AAQSkZJRg==\"}]}", NOHDR, 0, false, NULL, IGNY8_ERR_RETRY,
	"malformed image from OpenAI-compatible API: not a PNG image", ONCE},
	{"a URL instead", 200, "{\"created\":1,\"data\":[{\"url\":"
		"\"http://127.0.0.1:1/images/img-x.png\",\"revised_prompt\":\"x\"}]}",
		NOHDR, 0, false, NULL, IGNY8_ERR_FALLBACK,
		"OpenAI-compatible API answered with an image URL, not b64_json (set "
	"\"response_format\" in extra_body)", 0},
	{"no data", 200, "{\"created\":1}", NOHDR, 0, false, NULL,
		IGNY8_ERR_RETRY, "malformed response from OpenAI-compatible API: no "
	"data[0]", ONCE},
	{"empty data", 200, "{\"data\":[]}", NOHDR, 0, false, NULL,
		IGNY8_ERR_RETRY, "malformed response from OpenAI-compatible API: no "
	"data[0]", ONCE},
	{"data[0] a string", 200, "{\"data\":[\"@B64@\"]}", NOHDR, 0, false,
		NULL, IGNY8_ERR_RETRY, "malformed response from OpenAI-compatible "
	"API: no data[0]", ONCE},
	{"b64_json null", 200, "{\"data\":[{\"b64_json\":null}]}", NOHDR, 0,
		false, NULL, IGNY8_ERR_RETRY, "malformed response from "
	"OpenAI-compatible API: no data[0].b64_json", ONCE},
	{"an error in a 200", 200, "{\"error\":{\"message\":\"boom\"}}", NOHDR,
		0, false, NULL, IGNY8_ERR_RETRY, "malformed response from "
	"OpenAI-compatible API: error \"boom\"", ONCE},
	{"not JSON", 200, "{\"data\":[{\"b64_json\":\"iVBO", NOHDR, 0, false,
		NULL, IGNY8_ERR_RETRY, "malformed response from OpenAI-compatible "
	"API: not JSON", ONCE},
	{"a NUL in revised_prompt", 200, "{\"data\":[{\"b64_json\":\"@B64@\","
		"\"revised_prompt\":\"a\\u0000b\"}]}", NOHDR, 0, false, NULL,
		IGNY8_ERR_RETRY, "malformed response from OpenAI-compatible API: a "
	"string contains a NUL character", ONCE},

	/* errors (protocols.md 3.3) */
	{"dall-e safety refusal", 400, POLICY_DALLE, NOHDR, 0, false, NULL,
	IGNY8_ERR_CALLER, POLICY_MESSAGE, 0},
	{"... even if the server says retry", 400, POLICY_DALLE, -1, 1, 0, false,
	NULL, IGNY8_ERR_CALLER, POLICY_MESSAGE, 0},
	{"dall-e's older refusal", 400, "{\"error\": {\"message\": \""
		POLICY_MESSAGE "\", \"type\": \"invalid_request_error\", \"param\": "
		"null, \"code\": \"content_policy_violation\"}}", NOHDR, 0, false,
	NULL, IGNY8_ERR_CALLER, POLICY_MESSAGE, 0},
	{"GPT image moderation", 400, "{\"error\": {\"message\": \"Your request "
		"was rejected by the safety system. If you believe this is an error, "
		"contact us at help.openai.com and include the request ID "
		"req_ab2bde2113454008880c4c560ee0f7de.\", \"type\": "
		"\"image_generation_user_error\", \"param\": null, \"code\": "
		"\"moderation_blocked\", \"moderation_details\": {\"moderation_stage\": "
		"\"input\", \"categories\": [\"violence\"]}}}", -1, 1, 0, false, NULL,
		IGNY8_ERR_CALLER, "Your request was rejected by the safety system. ",
	PREFIX},
	{"the spending limit reached: a 400 that falls back", 400,
		"{\"error\": {\"code\": \"billing_hard_limit_reached\", "
		"\"message\": \"Billing hard limit has been reached\", \"param\": "
		"null, \"type\": \"invalid_request_error\"}}", NOHDR, 0, false, NULL,
	IGNY8_ERR_FALLBACK, "Billing hard limit has been reached", 0},
	{"a user error without a code", 400, "{\"error\":{\"message\":\"no\","
		"\"type\":\"image_generation_user_error\",\"param\":null,\"code\":null}}",
	-1, 1, 0, false, NULL, IGNY8_ERR_CALLER, "no", 0},
	{"an unknown parameter", 400, "{\"error\": {\"message\": \"Unknown "
		"parameter: 'response_format'.\", \"type\": \"invalid_request_error\", "
		"\"param\": \"response_format\", \"code\": \"unknown_parameter\"}}",
		NOHDR, 0, false, NULL, IGNY8_ERR_CALLER,
	"Unknown parameter: 'response_format'.", 0},
	{"a bad key", 401, "{\"error\": {\"message\": \"Incorrect API key "
		"provided: bad.\", \"type\": \"invalid_request_error\", \"param\": "
		"null, \"code\": \"invalid_api_key\"}}", NOHDR, 0, false, NULL,
	IGNY8_ERR_FALLBACK, "Incorrect API key provided: bad.", 0},
	{"no access", 403, "{\"error\":{\"message\":\"Country not supported\"}}",
	NOHDR, 0, false, NULL, IGNY8_ERR_FALLBACK, "Country not supported", 0},
	{"no such model", 404, "{\"error\": {\"message\": \"The model "
		"`gpt-image-1` does not exist or you do not have access to it.\", "
		"\"type\": \"invalid_request_error\", \"param\": null, \"code\": "
		"\"model_not_found\"}}", NOHDR, 0, false, NULL, IGNY8_ERR_FALLBACK,
	"The model `gpt-image-1` does not exist or you do not have access to it.", 0},
	{"no quota", 429, "{\"error\": {\"message\": \"You exceeded your current "
		"quota, please check your plan and billing details.\", \"type\": "
		"\"insufficient_quota\", \"param\": null, \"code\": "
		"\"insufficient_quota\"}}", 1, -1, 0, false, NULL, IGNY8_ERR_FALLBACK,
	"You exceeded your current quota, please check your plan and billing details.", 0},
	{"rate limited", 429, "{\"error\": {\"message\": \"Rate limit reached "
		"for gpt-image-1 in organization org-igny8sim on requests per min "
		"(RPM): Limit 500, Used 500, Requested 1. Please try again in 1s.\", "
		"\"type\": \"requests\", \"param\": null, \"code\": "
		"\"rate_limit_exceeded\"}}", 1, -1, 0, false, NULL, IGNY8_ERR_RETRY,
	"Rate limit reached for gpt-image-1", PREFIX},
	{"server error", 500, "{\"error\": {\"message\": \"The server had an "
		"error while processing your request. Sorry about that!\", \"type\": "
		"\"server_error\", \"param\": null, \"code\": null}}", NOHDR, 0,
		false, NULL, IGNY8_ERR_RETRY,
	"The server had an error while processing your request. Sorry about that!", 0},
	{"overloaded, a proxy's page", 503, "<html>Slow Down</html>", 20, -1, 0,
		false, NULL, IGNY8_ERR_RETRY,
	"HTTP 503 from OpenAI-compatible API: <html>Slow Down</html>", 0}
};

/* The body of a case, with the test PNG's base64 put in. */
static char *
image_body(const char *template, const char *b64)
{
	StringInfoData buf;
	const char *p = template;

	initStringInfo(&buf);
	while (*p != '\0')
	{
		if (strncmp(p, "@B64S@", 6) == 0)
		{
			const char *q;

			for (q = b64; *q != '\0'; q++)
			{
				if (*q == '/')
					appendStringInfoChar(&buf, '\\');
				appendStringInfoChar(&buf, *q);
			}
			p += 6;
		}
		else if (strncmp(p, "@B64@", 5) == 0)
		{
			appendStringInfoString(&buf, b64);
			p += 5;
		}
		else
			appendStringInfoChar(&buf, *p++);
	}
	return buf.data;
}

static void
test_openai_parse_image(void)
{
	char	   *png;
	size_t		pnglen;
	char	   *b64;
	int			i;

	begin_group("OpenAI parse_image: b64_json, bound, PNG, errors");
	/* big enough that its base64 has a '/' to escape */
	png = make_png(24, 20, 2, &pnglen);
	b64 = test_base64(png, pnglen);
	if (strchr(b64, '/') == NULL)
	{
		printf("the test PNG's base64 has no '/'\n");
		abort();
	}
	for (i = 0; i < (int) lengthof(image_parse_cases); i++)
	{
		const ImageParseCase *c = &image_parse_cases[i];
		char	   *body = image_body(c->body, b64);
		Igny8HttpResponse resp;
		Igny8ImageResult r;
		Igny8ProviderError e;
		size_t		max = c->max;
		bool		ok;

		begin_case(i, c->what);
		if (max == 0)
			max = 1024 * 1024;
		else if (max == MAX_EXACT)
			max = pnglen;
		else if (max == MAX_SHORT)
			max = pnglen - 1;
		resp = make_response(c->status, body, strlen(body), c->retry_after,
							 c->should_retry);
		memset(&r, 0x7f, sizeof(r));
		memset(&e, 0x7f, sizeof(e));
		ok = igny8_openai_parse_image(&resp, max, &r, &e);
		check(ok == c->ok, __LINE__, "parse_image = %d, expected %d (%s)",
			  (int) ok, (int) c->ok, ok ? "" : e.message);
		if (ok)
		{
			CHECK(e.cls == IGNY8_ERR_NONE && e.message == NULL);
			CHECK(!e.retry_once);
			CHECK(r.len == pnglen && memcmp(r.data, png, pnglen) == 0);
			CHECK_STR(r.mime_type, "image/png");
			CHECK_INT(r.width, 24);
			CHECK_INT(r.height, 20);
			CHECK_STR(r.revised_prompt, c->revised_prompt);
			pfree(r.data);
			free_maybe(r.revised_prompt);
		}
		else
		{
			check_error(&e, c->cls, c->message, c->flags, c->retry_after,
						__LINE__);
			CHECK(r.data == NULL && r.len == 0 && r.revised_prompt == NULL &&
				  r.width == 0);
			free_maybe(e.message);
		}
		pfree(body);
	}
	pfree(b64);
	pfree(png);
	end_group();
}

/* ---------- the key redaction (src/redact.c) ---------- */

/* Redact body with igny8_redact_body as http.c does: a malloc'd result. */
static char *
redacted_body(const char *body, const char *key, long status)
{
	size_t		len = strlen(body);
	char	   *copy = pstrdup(body);
	char	   *out = igny8_redact_body(copy, &len, key, status);
	char	   *result;

	if (out == copy)
		return copy;
	pfree(copy);
	result = pnstrdup(out, len);
	check(strlen(out) == len, __LINE__,
		  "the redacted body's length %zu is not %zu", len, strlen(out));
	pfree(out);
	return result;
}

/* The forms a server may write a key (or anything) in. */
typedef enum RedactForm
{
	FORM_PLAIN,					/* as it is: a text/plain body */
	FORM_JSON,					/* '"' and '\\' escaped (Python json.dumps) */
	FORM_JSON_SLASH,			/* and '/' as "\/" (PHP's json_encode) */
	FORM_JSON_U,				/* '"', '\\', '/', '&', '<', '>' and non-ASCII
								 * as \u escapes (Go, ensure_ascii) */
	FORM_JSON_U_ALL,			/* every character a \u escape */
	FORM_NESTED,				/* FORM_JSON of a FORM_JSON text: an error
								 * body quoted inside another one */
	FORM_NESTED_SLASH			/* FORM_JSON_SLASH of a FORM_JSON_SLASH text */
} RedactForm;

static const char *const form_names[] = {"plain", "JSON", "JSON \\/",
"JSON \\u", "JSON all \\u", "nested JSON", "nested JSON \\/"};

/* Append s to buf as a JSON string's content in form (a one-level form). */
static void
append_form(StringInfo buf, const char *s, RedactForm form)
{
	const unsigned char *p = (const unsigned char *) s;

	while (*p)
	{
		int			clen = (*p < 0x80) ? 1 : pg_utf_mblen(p);
		pg_wchar	cp = (*p < 0x80) ? *p : utf8_to_unicode(p);
		bool		special = (*p == '"' || *p == '\\' || *p == '/');

		if (form == FORM_JSON_U_ALL ||
			(form == FORM_JSON_U && (special || *p >= 0x80 || *p == '&' ||
									 *p == '<' || *p == '>')))
		{
			const char *fmt = form == FORM_JSON_U_ALL ? "\\u%04X" : "\\u%04x";

			if (cp > 0xFFFF)
			{
				appendStringInfo(buf, fmt, 0xD800 + ((cp - 0x10000) >> 10));
				appendStringInfo(buf, fmt, 0xDC00 + ((cp - 0x10000) & 0x3FF));
			}
			else
				appendStringInfo(buf, fmt, cp);
		}
		else
		{
			if ((form != FORM_PLAIN && *p != '/' && special) ||
				(form == FORM_JSON_SLASH && *p == '/'))
				appendStringInfoChar(buf, '\\');
			appendBinaryStringInfo(buf, (const char *) p, clen);
		}
		p += clen;
	}
}

/*
 * An OpenAI-like 401 body that echoes key, followed by after, in form: text
 * for FORM_PLAIN, else JSON (for the nested forms, the inner error body as
 * the string of the outer one).  With raw_key, the key is written as it is
 * (as "[redacted]" is).  The rest of the message has a URL, whose "/" stay.
 */
static char *
echo_body(const char *key, bool raw_key, const char *after, RedactForm form)
{
	StringInfoData json;
	StringInfoData buf;
	RedactForm	inner = form == FORM_NESTED ? FORM_JSON :
		form == FORM_NESTED_SLASH ? FORM_JSON_SLASH : form;
	RedactForm	around = form == FORM_JSON_U_ALL ? FORM_JSON_U : inner;

	initStringInfo(&json);
	if (form != FORM_PLAIN)
		appendStringInfoString(&json, "{\"error\": {\"message\": \"");
	append_form(&json, "Incorrect API key provided: ", around);
	if (raw_key)
		appendStringInfoString(&json, key);
	else
		append_form(&json, key, inner);
	append_form(&json, after, around);
	append_form(&json, ". You can find your API key at "
				"https://platform.openai.com/account/api-keys.", around);
	if (form != FORM_PLAIN)
		appendStringInfoString(&json, "\", \"code\": \"invalid_api_key\"}}");
	if (inner == form)
		return json.data;
	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"error\": \"");
	append_form(&buf, json.data, inner);
	appendStringInfoString(&buf, "\"}");
	pfree(json.data);
	return buf.data;
}

/*
 * Every key of a set (a '/', '"' or '\\' at each position that matters: at
 * the start, before, at and after the 12th byte, at the end; two in a row;
 * characters Go and ensure_ascii write as \u escapes), echoed whole and cut
 * short in every form: the whole key, and any prefix of 12 bytes or more,
 * becomes "[redacted]", and nothing else of the body changes; a prefix of
 * 11 bytes is left alone.
 */
static void
test_redact_forms(void)
{
	const char *base = "sk-abcdefghijklmnopQRSTUVWXYZ0123456789tail";
	const char *inserts[] = {"/", "\"", "\\", "\\\"", "\"\\", "//", "\\\\",
	"/\\\"", "&", "<>", "\xc3\xa9", "\xf0\x9f\x94\x91"};
	const int	positions[] = {0, 3, 11, 12, 13, 19, 43};
	int			ncase = 0;

	begin_group("key redaction: a key echoed in every form, whole and cut");
	for (int i = 0; i < (int) lengthof(inserts); i++)
	{
		for (int j = 0; j < (int) lengthof(positions); j++)
		{
			int			pos = positions[j];
			char	   *key = psprintf("%.*s%s%s", pos, base, inserts[i],
									   base + pos);
			int			klen = (int) strlen(key);

			for (int f = FORM_PLAIN; f <= FORM_NESTED_SLASH; f++)
			{
				char	   *expected = echo_body("[redacted]", true, "", f);
				char	   *body = echo_body(key, false, "", f);
				char	   *out = redacted_body(body, key, 401);
				char	   *name = psprintf("key %s, %s", key, form_names[f]);

				begin_case(++ncase, name);
				CHECK_STR(out, expected);
				pfree(out);
				pfree(body);
				pfree(expected);

				/* cut short, as "sk-abcdefghijk...": 11 bytes up to all */
				for (int cut = IGNY8_REDACT_PREFIX - 1; cut < klen; cut++)
				{
					char	   *part;

					/* a cut inside a character is no echo */
					if (((unsigned char) key[cut] & 0xC0) == 0x80)
						continue;
					part = psprintf("%.*s", cut, key);
					body = echo_body(part, false, "...", f);
					expected = cut < IGNY8_REDACT_PREFIX ? pstrdup(body) :
						echo_body("[redacted]", true, "...", f);
					out = redacted_body(body, key, 401);
					check(strcmp(out, expected) == 0, __LINE__,
						  "cut to %d bytes:\n    got      %s\n    expected %s",
						  cut, out, expected);
					pfree(out);
					pfree(body);
					pfree(expected);
					pfree(part);
				}
				pfree(name);
			}
			pfree(key);
		}
	}
	end_group();
}

/* Single cases: the rules about length, status and what is left alone. */
typedef struct RedactCase
{
	const char *name;
	const char *key;
	long		status;
	const char *body;
	const char *expected;
} RedactCase;

static const RedactCase redact_cases[] = {
	{"a key with \"/\" after 12 bytes, echoed as json.dumps writes it",
		"sk-abcdefghijklmnop/QRSTUVWXYZ0123456789tail", 401,
		"{\"error\":{\"message\":\"Incorrect API key provided: "
		"sk-abcdefghijklmnop/QRSTUVWXYZ0123456789tail.\"}}",
	"{\"error\":{\"message\":\"Incorrect API key provided: [redacted].\"}}"},
	{"two echoes, in two forms",
		"sk-abcdefghijklmnop/QRSTUVWXYZ", 400,
		"sk-abcdefghijklmnop\\/QRSTUVWXYZ and sk-abcdefghijklmnop/QRSTUVWXYZ",
	"[redacted] and [redacted]"},
	{"echoed as OpenAI masks it: too little of it to count",
		"sk-proj-abcdefghijklmnopqrstuvwxyz", 401,
		"Incorrect API key provided: sk-proj-********************wxyz.",
	"Incorrect API key provided: sk-proj-********************wxyz."},
	{"a key of 8 bytes is matched whole only",
		"ollama12", 500, "ollama1 ollama12 ollama123",
	"ollama1 [redacted] [redacted]3"},
	{"a key under 4 bytes is not looked for", "abc", 500, "abc abc", "abc abc"},
	{"a placeholder key (under 16 bytes) stays in an answer",
		"EMPTY-abcdefgh", 200, "{\"content\":\"EMPTY-abcdefgh\"}",
	"{\"content\":\"EMPTY-abcdefgh\"}"},
	{"a placeholder key is redacted from an error",
		"EMPTY-abcdefgh", 404, "{\"error\":\"EMPTY-abcdefgh\"}",
	"{\"error\":\"[redacted]\"}"},
	{"a long key is redacted from an answer",
		"sk-abcdefghijklmnop/QRST", 200,
		"{\"model\":\"sk-abcdefghijklmnop/QRST\"}",
	"{\"model\":\"[redacted]\"}"},
	{"an escape the body ends in is left, not read past",
		"sk-abcdefghijklmnop/QRSTUVWXYZ", 401,
		"provided: sk-abcdefghijklmnop\\", "provided: [redacted]\\"},
	{"a \\u escape the body ends in is left, not read past",
		"sk-abcdefghijklmnop/QRSTUVWXYZ", 401,
		"provided: sk-abcdefghijklmnop\\u002", "provided: [redacted]\\u002"},
	{"an escaped quote before the key stays",
		"sk-abcdefghijklmnop/QRSTUVWXYZ", 401,
		"{\"e\":\"key \\\"sk-abcdefghijklmnop/QRSTUVWXYZ\\\" is wrong\"}",
	"{\"e\":\"key \\\"[redacted]\\\" is wrong\"}"},
	{"a key ending in \"\\\" before an escaped quote: the quote stays",
		"sk-abcdefghijklmnopQRSTUVWXYZ\\", 401,
		"{\"e\":\"key \\\"sk-abcdefghijklmnopQRSTUVWXYZ\\\\\\\" is wrong\"}",
	"{\"e\":\"key \\\"[redacted]\\\" is wrong\"}"},
	{"text that is not the key is not touched",
		"sk-abcdefghijklmnop/QRSTUVWXYZ", 401,
		"sk-abcdefgXijklmnop \\/\\\"\\\\\\u0041",
	"sk-abcdefgXijklmnop \\/\\\"\\\\\\u0041"},
};

static void
test_redact_cases(void)
{
	begin_group("key redaction: lengths, statuses, edges");
	for (int i = 0; i < (int) lengthof(redact_cases); i++)
	{
		const RedactCase *c = &redact_cases[i];
		char	   *out = redacted_body(c->body, c->key, c->status);

		begin_case(i + 1, c->name);
		CHECK_STR(out, c->expected);
		pfree(out);
		if (c->status < 200 || c->status >= 300)
		{
			/* igny8_redact (a parsed label or message) agrees */
			out = igny8_redact(c->body, c->key);
			CHECK_STR(out, c->expected);
			pfree(out);
		}
	}

	/*
	 * Long runs of escapes (100000 backslashes, 20000 "\u005c") before
	 * the key: each byte is looked at a bounded number of times, and the
	 * key after them is redacted.
	 */
	begin_case(lengthof(redact_cases) + 1, "long runs of escapes");
	{
		const char *key = "sk-abcdefghijklmnop/QRSTUVWXYZ";
		StringInfoData body;
		char	   *out;
		int			nredacted = 0;

		initStringInfo(&body);
		for (int i = 0; i < 100000; i++)
			appendStringInfoChar(&body, '\\');
		appendStringInfo(&body, "%s ", key);
		for (int i = 0; i < 20000; i++)
			appendStringInfoString(&body, "\\u005c");
		appendStringInfo(&body, "%s.", key);
		out = redacted_body(body.data, key, 401);
		for (const char *r = out; (r = strstr(r, "[redacted]")) != NULL; r++)
			nredacted++;
		CHECK_INT(nredacted, 2);
		CHECK(strstr(out, "QRSTUVWXYZ") == NULL);
		CHECK(strstr(out, "abcdefghijklmnop") == NULL);
		pfree(out);
		pfree(body.data);
	}
	end_group();
}

/* ---------- the HTTP/1.x response parser (src/http1.c) ---------- */

/* What the parser handed on while reading one response. */
typedef struct H1Seen
{
	StringInfoData body;
	StringInfoData headers;		/* "name=value;" of each, "|" at a reset */
	int			head_status;	/* what head_done was told, or 0 */
	int64_t		head_length;
	int64_t		max_length;		/* head_done refuses a longer body */
	size_t		body_limit;		/* body refuses more than this */
} H1Seen;

static void
h1_header(void *arg, const char *name, const char *value)
{
	H1Seen	   *seen = arg;

	if (name == NULL)
		appendStringInfoChar(&seen->headers, '|');
	else
		appendStringInfo(&seen->headers, "%s=%s;", name, value);
}

static bool
h1_head_done(void *arg, int status, int64_t content_length)
{
	H1Seen	   *seen = arg;

	seen->head_status = status;
	seen->head_length = content_length;
	return content_length <= seen->max_length;
}

static bool
h1_body(void *arg, const char *data, size_t len)
{
	H1Seen	   *seen = arg;

	if (seen->body.len + len > seen->body_limit)
		return false;
	appendBinaryStringInfo(&seen->body, data, len);
	return true;
}

static const Http1Callbacks h1_callbacks = {h1_header, h1_head_done, h1_body};

/* how a response is fed: whole, a byte at a time, or cut in two at cut */
typedef enum H1Split
{
	H1_WHOLE,
	H1_BYTES,
	H1_CUT
} H1Split;

/*
 * Feed text as the split says, then the end of the connection if eof;
 * the result, with what was seen in *seen (to be freed by the caller) and
 * the bytes left over after a complete response in *left.
 */
static Http1Result
h1_run(Http1Parser *p, const char *text, size_t len, H1Split split,
	   size_t cut, bool eof, H1Seen *seen, size_t *left)
{
	size_t		pos = 0;
	Http1Result r = HTTP1_MORE;

	initStringInfo(&seen->body);
	initStringInfo(&seen->headers);
	seen->head_status = 0;
	seen->head_length = 0;
	http1_init(p);
	*left = 0;
	while (pos < len && r == HTTP1_MORE)
	{
		size_t		n = len - pos;
		size_t		used;

		if (split == H1_BYTES)
			n = 1;
		else if (split == H1_CUT && pos < cut)
			n = cut - pos;
		r = http1_feed(p, text + pos, n, &used, &h1_callbacks, seen);
		if (!check(used <= n, __LINE__, "used %zu of %zu", used, n))
			break;
		if (r == HTTP1_MORE && used != n)
		{
			check(false, __LINE__, "MORE with %zu of %zu bytes used", used, n);
			break;
		}
		pos += used;
	}
	*left = len - pos;
	if (r == HTTP1_MORE && eof)
		r = http1_eof(p);
	return r;
}

typedef struct H1Case
{
	const char *name;
	const char *text;
	bool		eof;			/* the connection ends after the text */
	Http1Result result;
	int			status;
	const char *body;			/* NULL: not checked */
	bool		keep_alive;
	const char *headers;		/* NULL: not checked */
	size_t		left;			/* bytes after the response */
	const char *error;			/* the start of p->error, for errors */
} H1Case;

#define OK_HEAD "HTTP/1.1 200 OK\r\n"

/*
 * Lines of HTTP1_LINE_MAX fill bytes between prefix and suffix: a header
 * the parser reads, a trailer field, a chunk extension, a status line.
 */
typedef struct H1LongCase
{
	const char *prefix;
	char		fill;
	const char *suffix;
	Http1Result result;
	const char *body;			/* when complete */
	Http1State	failed_in;		/* on an error */
	const char *error;			/* on an error */
} H1LongCase;

static const H1LongCase h1_long_cases[] = {
	{OK_HEAD "Content-Length: ", '0', "1\r\n\r\nk",
	HTTP1_ERROR, NULL, HTTP1_HEADERS, "a header line of the response is too long"},
	{OK_HEAD "Transfer-Encoding: chunked\r\n\r\n1\r\nk\r\n0\r\nX-T: ", 't', "\r\n\r\n",
	HTTP1_COMPLETE, "k", 0, NULL},
	{OK_HEAD "Transfer-Encoding: chunked\r\n\r\n1;ext=", 'e', "\r\nk\r\n0\r\n\r\n",
	HTTP1_COMPLETE, "k", 0, NULL},
	{"HTTP/1.1 200 ", 'K', "\r\n\r\n",
	HTTP1_ERROR, NULL, HTTP1_STATUS, "a line of the response is too long"},
};

static const H1Case h1_cases[] = {
	{"content-length", OK_HEAD "Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
		false, HTTP1_COMPLETE, 200, "{\"a\":1}", true,
	"Content-Type=application/json;Content-Length=7;", 0, NULL},
	{"bytes after the response are left", OK_HEAD "Content-Length: 2\r\n\r\nabHTTP/1.1",
	false, HTTP1_COMPLETE, 200, "ab", true, NULL, 8, NULL},
	{"bare LF line ends, spaces around values", "HTTP/1.1 200 OK\nX-A:   v w  \nContent-Length:2\n\nab",
	false, HTTP1_COMPLETE, 200, "ab", true, "X-A=v w;Content-Length=2;", 0, NULL},
	{"no reason phrase", "HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n",
	false, HTTP1_COMPLETE, 503, "", true, NULL, 0, NULL},
	{"chunked, extensions and a trailer",
		OK_HEAD "Transfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n",
	false, HTTP1_COMPLETE, 200, "abc0123456789", true, NULL, 0, NULL},
	{"chunked wins over Content-Length", OK_HEAD "Content-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
	false, HTTP1_COMPLETE, 200, "ab", true, NULL, 0, NULL},
	{"gzip, chunked: chunked", OK_HEAD "Transfer-Encoding: gzip, chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n",
	false, HTTP1_COMPLETE, 200, "z", true, NULL, 0, NULL},
	{"chunked, gzip: up to the close", OK_HEAD "Transfer-Encoding: chunked, gzip\r\n\r\nraw bytes",
	true, HTTP1_COMPLETE, 200, "raw bytes", false, NULL, 0, NULL},
	{"interim responses passed over", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" OK_HEAD "Content-Length: 1\r\n\r\nq",
	false, HTTP1_COMPLETE, 200, "q", true, "|Link=x;|Content-Length=1;", 0, NULL},
	{"HTTP/1.0 up to the close", "HTTP/1.0 200 OK\r\n\r\nall of it",
	true, HTTP1_COMPLETE, 200, "all of it", false, NULL, 0, NULL},
	{"HTTP/1.0 keep-alive with a length", "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nk",
	false, HTTP1_COMPLETE, 200, "k", true, NULL, 0, NULL},
	{"Connection: close", OK_HEAD "Connection: upgrade, close\r\nContent-Length: 1\r\n\r\nk",
	false, HTTP1_COMPLETE, 200, "k", false, NULL, 0, NULL},
	{"204 has no body", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
	false, HTTP1_COMPLETE, 204, "", true, NULL, 0, NULL},
	{"the same length twice", OK_HEAD "Content-Length: 1\r\nContent-Length: 1\r\n\r\nk",
	false, HTTP1_COMPLETE, 200, "k", true, NULL, 0, NULL},
	{"folded line ignored", OK_HEAD "X-A: 1\r\n  more\r\nContent-Length: 0\r\n\r\n",
	false, HTTP1_COMPLETE, 200, "", true, "X-A=1;Content-Length=0;", 0, NULL},
	{"a list of equal lengths", OK_HEAD "Content-Length: 1, 1\r\n\r\nk",
	false, HTTP1_COMPLETE, 200, "k", true, NULL, 0, NULL},
	{"no colon", OK_HEAD "Content-Length 1\r\nContent-Length: 0\r\n\r\n",
	false, HTTP1_ERROR, 200, NULL, false, NULL, 0, "a header line of the response has no colon"},
	{"a space before the colon: passed over", OK_HEAD "Content-Length \t: 1\r\nRetry-After : 5\r\n\r\nk",
	true, HTTP1_COMPLETE, 200, "k", false, "", 0, NULL},
	{"204: its Content-Length not read", "HTTP/1.1 204 No Content\r\nContent-Length: abc\r\nContent-Length: 1\r\n\r\n",
	false, HTTP1_COMPLETE, 204, "", true, NULL, 0, NULL},
	{"chunk size followed by junk: passed over", OK_HEAD "Transfer-Encoding: chunked\r\n\r\n2 junk\r\nab\r\n0\r\n\r\n",
	false, HTTP1_COMPLETE, 200, "ab", true, NULL, 0, NULL},
	{"no name: passed over", OK_HEAD ": 1\r\n\r\nrest",
	true, HTTP1_COMPLETE, 200, "rest", false, "", 0, NULL},
	{"a name not a token: passed over", OK_HEAD "X(1): 1\r\nContent-Length: 0\r\n\r\n",
	false, HTTP1_COMPLETE, 200, "", true, "Content-Length=0;", 0, NULL},
	{"304 with a length has no body", "HTTP/1.1 304 Not Modified\r\nContent-Length: 99999999999\r\n\r\n",
	false, HTTP1_COMPLETE, 304, "", true, NULL, 0, NULL},
	{"blank lines before the status line", "\r\n\r\n" OK_HEAD "Content-Length: 0\r\n\r\n",
	false, HTTP1_COMPLETE, 200, "", true, NULL, 0, NULL},
	/* endings */
	{"closed before a byte", "", true, HTTP1_EMPTY, 0, NULL, false, NULL, 0, NULL},
	{"closed in the head", "HTTP/1.1 200 OK\r\nContent-Le", true, HTTP1_PARTIAL, 200, NULL, false, NULL, 0, NULL},
	{"closed in the body", OK_HEAD "Content-Length: 10\r\n\r\nabc", true, HTTP1_PARTIAL, 200, "abc", false, NULL, 0, NULL},
	{"closed in a chunk", OK_HEAD "Transfer-Encoding: chunked\r\n\r\n5\r\nab", true, HTTP1_PARTIAL, 200, "ab", false, NULL, 0, NULL},
	{"closed before the last chunk", OK_HEAD "Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n", true, HTTP1_PARTIAL, 200, "ab", false, NULL, 0, NULL},
	{"not complete yet", OK_HEAD "Content-Length: 10\r\n\r\nabc", false, HTTP1_MORE, 200, "abc", false, NULL, 0, NULL},
	/* malformed */
	{"an SSH banner", "SSH-2.0-OpenSSH_9.2p1\r\n", false, HTTP1_ERROR, 0, NULL, false, NULL, 0, "the response does not start"},
	{"HTTP/2 status line", "HTTP/2 200\r\n\r\n", false, HTTP1_ERROR, 0, NULL, false, NULL, 0, "the response does not start"},
	{"status not digits", "HTTP/1.1 2x0 OK\r\n\r\n", false, HTTP1_ERROR, 0, NULL, false, NULL, 0, "the response's status is not"},
	{"status below 100", "HTTP/1.1 099 X\r\n\r\n", false, HTTP1_ERROR, 0, NULL, false, NULL, 0, "the response's status is below"},
	{"status of four digits", "HTTP/1.1 2000 OK\r\n\r\n", false, HTTP1_ERROR, 0, NULL, false, NULL, 0, "the response does not start"},
	{"101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", false, HTTP1_ERROR, 101, NULL, false, NULL, 0, "the server switched"},
	{"two lengths", OK_HEAD "Content-Length: 1\r\nContent-Length: 2\r\n\r\nk", false, HTTP1_ERROR, 200, NULL, false, NULL, 0, "the response has two different"},
	{"length not a number", OK_HEAD "Content-Length: 1x\r\n\r\nk", false, HTTP1_ERROR, 200, NULL, false, NULL, 0, "the response's Content-Length is not"},
	{"a list of different lengths", OK_HEAD "Content-Length: 1, 2\r\n\r\nk", false, HTTP1_ERROR, 200, NULL, false, NULL, 0, "the response has two different"},
	{"a length list ending in a comma", OK_HEAD "Content-Length: 1,\r\n\r\nk", false, HTTP1_ERROR, 200, NULL, false, NULL, 0, "the response's Content-Length is not"},
	{"length too large", OK_HEAD "Content-Length: 99999999999999999999\r\n\r\n", false, HTTP1_ERROR, 200, NULL, false, NULL, 0, "the response's Content-Length is too large"},
	{"empty length", OK_HEAD "Content-Length:\r\n\r\n", false, HTTP1_ERROR, 200, NULL, false, NULL, 0, "the response's Content-Length is empty"},
	{"chunked twice", OK_HEAD "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", false, HTTP1_ERROR, 200, NULL, false, NULL, 0, "the response is chunked twice"},
	{"bad chunk size", OK_HEAD "Transfer-Encoding: chunked\r\n\r\nxyz\r\n", false, HTTP1_ERROR, 200, "", false, NULL, 0, "a chunk size of the response is not"},
	{"huge chunk", OK_HEAD "Transfer-Encoding: chunked\r\n\r\n11111111111111111\r\n", false, HTTP1_ERROR, 200, "", false, NULL, 0, "a chunk of the response is too large"},
	{"chunk longer than its size", OK_HEAD "Transfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n", false, HTTP1_ERROR, 200, "a", false, NULL, 0, "a chunk of the response is longer"},
};

static void
test_http1(void)
{
	begin_group("http1: responses, fed whole, byte by byte and cut in two");
	for (int i = 0; i < (int) lengthof(h1_cases); i++)
	{
		const H1Case *c = &h1_cases[i];
		size_t		len = strlen(c->text);

		/* every response is a seed of the fuzzer's http1 target too */
		if (corpus_dir != NULL && len > 0)
		{
			Igny8HttpResponse resp;

			memset(&resp, 0, sizeof(resp));
			resp.status = 200;
			resp.should_retry = -1;
			resp.retry_after = -1;
			resp.body = c->text;
			resp.body_len = len;
			write_seed(&resp, false, 0);
		}

		begin_case(i, c->name);
		/* whole, byte by byte, then cut at each position */
		for (size_t way = 0; way < len + 2; way++)
		{
			H1Split		split = way == 0 ? H1_WHOLE : way == 1 ? H1_BYTES : H1_CUT;
			Http1Parser p;
			H1Seen		seen;
			size_t		left;
			Http1Result r;

			seen.max_length = INT64_MAX;
			seen.body_limit = SIZE_MAX;
			r = h1_run(&p, c->text, len, split, way - 2, c->eof, &seen, &left);
			if (!check(r == c->result, __LINE__, "split %zu: result %d, expected %d (%s)",
					   way, (int) r, (int) c->result, p.error ? p.error : "no error"))
			{
				pfree(seen.body.data);
				pfree(seen.headers.data);
				break;
			}
			CHECK_INT(p.status, c->status);
			if (c->body != NULL)
				CHECK_STR(seen.body.data, c->body);
			if (c->headers != NULL)
				CHECK_STR(seen.headers.data, c->headers);
			if (r == HTTP1_COMPLETE)
			{
				CHECK_INT(http1_keep_alive(&p), c->keep_alive);
				CHECK_INT(left, c->left);
				CHECK_INT(seen.head_status, c->status);
			}
			else
				CHECK(!http1_keep_alive(&p));
			if (c->error != NULL)
				CHECK_CONTAINS(p.error, c->error);
			pfree(seen.body.data);
			pfree(seen.headers.data);
		}
	}
	end_group();

	begin_group("http1: limits and callbacks that stop");
	case_name = NULL;
	{
		Http1Parser p;
		H1Seen		seen;
		size_t		left;
		StringInfoData text;
		Http1Result r;
		const char *six = OK_HEAD "Content-Length: 6\r\n\r\nabcdef";
		const char *chunked = OK_HEAD "Transfer-Encoding: chunked\r\n\r\n";

		/* head_done told the length, and refusing it stops the parse */
		seen.max_length = 5;
		seen.body_limit = SIZE_MAX;
		r = h1_run(&p, six, strlen(six), H1_WHOLE, 0, false, &seen, &left);
		CHECK_INT(r, HTTP1_ABORTED);
		CHECK_INT(seen.head_length, 6);
		CHECK_STR(seen.body.data, "");
		pfree(seen.body.data);
		pfree(seen.headers.data);
		/* chunked: no length to tell */
		r = h1_run(&p, chunked, strlen(chunked), H1_WHOLE, 0, false, &seen, &left);
		CHECK_INT(r, HTTP1_MORE);
		CHECK_INT(seen.head_length, -1);
		pfree(seen.body.data);
		pfree(seen.headers.data);
		/* the body callback refusing stops it, and the state stays failed */
		seen.max_length = INT64_MAX;
		seen.body_limit = 3;
		r = h1_run(&p, six, strlen(six), H1_WHOLE, 0, false, &seen, &left);
		CHECK_INT(r, HTTP1_ABORTED);
		CHECK_STR(seen.body.data, "");
		{
			size_t		used;

			r = http1_feed(&p, "x", 1, &used, &h1_callbacks, &seen);
			CHECK_INT(r, HTTP1_ERROR);
			r = http1_eof(&p);
			CHECK_INT(r, HTTP1_ERROR);
		}
		pfree(seen.body.data);
		pfree(seen.headers.data);

		/*
		 * A header line longer than HTTP1_LINE_MAX: passed over, unless it
		 * is one the parser reads; a status line or a chunk size that long
		 * is an error.  HTTP1_LINE_MAX bytes with the CR LF are kept whole.
		 */
		seen.body_limit = SIZE_MAX;
		initStringInfo(&text);
		for (int extra = 0; extra < 2; extra++)
		{
			resetStringInfo(&text);
			appendStringInfoString(&text, OK_HEAD "X: ");
			while (text.len < (int) strlen(OK_HEAD) + HTTP1_LINE_MAX - 2 + extra)
				appendStringInfoChar(&text, 'v');
			appendStringInfoString(&text, "\r\nContent-Length: 0\r\n\r\n");
			r = h1_run(&p, text.data, text.len, H1_BYTES, 0, false, &seen, &left);
			CHECK_INT(r, HTTP1_COMPLETE);
			/* whole: delivered; one byte longer: passed over */
			CHECK_INT(seen.headers.len, extra ? 17 : 17 + 3 + HTTP1_LINE_MAX - 5);
			pfree(seen.body.data);
			pfree(seen.headers.data);
		}
		for (int i = 0; i < (int) lengthof(h1_long_cases); i++)
		{
			const H1LongCase *c = &h1_long_cases[i];

			resetStringInfo(&text);
			appendStringInfoString(&text, c->prefix);
			for (int j = 0; j < HTTP1_LINE_MAX; j++)
				appendStringInfoChar(&text, c->fill);
			appendStringInfoString(&text, c->suffix);
			r = h1_run(&p, text.data, text.len, H1_WHOLE, 0, false, &seen, &left);
			CHECK_INT(r, c->result);
			if (c->result == HTTP1_COMPLETE)
				CHECK_STR(seen.body.data, c->body);
			else
			{
				CHECK_INT(p.failed_in, c->failed_in);
				CHECK_CONTAINS(p.error, c->error);
			}
			pfree(seen.body.data);
			pfree(seen.headers.data);
		}

		/* a head of more than HTTP1_HEAD_MAX bytes */
		resetStringInfo(&text);
		appendStringInfoString(&text, OK_HEAD);
		while (text.len <= HTTP1_HEAD_MAX)
			appendStringInfoString(&text, "X-Padding: 0123456789012345678901234567890123456789\r\n");
		appendStringInfoString(&text, "Content-Length: 0\r\n\r\n");
		r = h1_run(&p, text.data, text.len, H1_WHOLE, 0, false, &seen, &left);
		CHECK_INT(r, HTTP1_ERROR);
		CHECK_CONTAINS(p.error, "the response's headers are too long");
		pfree(seen.body.data);
		pfree(seen.headers.data);
		/* ... counted per response: interim heads do not add up */
		resetStringInfo(&text);
		for (int i = 0; i < 3; i++)
		{
			appendStringInfoString(&text, "HTTP/1.1 103 Early Hints\r\n");
			while (text.len < (i + 1) * (HTTP1_HEAD_MAX * 2 / 3))
				appendStringInfoString(&text, "Link: 0123456789012345678901234567890123456789\r\n");
			appendStringInfoString(&text, "\r\n");
		}
		appendStringInfoString(&text, OK_HEAD "Content-Length: 0\r\n\r\n");
		r = h1_run(&p, text.data, text.len, H1_WHOLE, 0, false, &seen, &left);
		CHECK_INT(r, HTTP1_COMPLETE);
		pfree(seen.body.data);
		pfree(seen.headers.data);
		pfree(text.data);

		/* a NUL in a header line */
		{
			static const char nul[] = OK_HEAD "Content-Length: 1\0 9\r\n\r\nk";

			r = h1_run(&p, nul, sizeof(nul) - 1, H1_WHOLE, 0, false, &seen, &left);
			CHECK_INT(r, HTTP1_ERROR);
			CHECK_CONTAINS(p.error, "a header line of the response has a NUL byte");
			pfree(seen.body.data);
			pfree(seen.headers.data);
		}

		/* no callbacks at all */
		{
			static const Http1Callbacks none = {NULL, NULL, NULL};
			const char *resp = OK_HEAD "Content-Length: 2\r\n\r\nab";
			size_t		used;

			http1_init(&p);
			r = http1_feed(&p, resp, strlen(resp), &used, &none, NULL);
			CHECK_INT(r, HTTP1_COMPLETE);
			CHECK_INT(used, strlen(resp));
		}
	}
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

	/* {"error":"yyy...y"} with 2000 y */
	strcpy(long_error_body, "{\"error\":\"");
	memset(long_error_body + 10, 'y', 2000);
	strcpy(long_error_body + 2010, "\"}");

	test_kinds();
	test_classify();
	test_truncate();
	test_text_helpers();
	test_strip_think();
	test_take_answer();
	test_json_parse_body();
	test_answer_buffer();
	test_error_text();
	test_helpers();
	test_build();
	test_answers();
	test_errors();
	test_probe_build();
	test_probes();
	test_long_probe_summaries();
	test_png();
	test_base64_decode();
	test_comfyui_build_submit();
	test_comfyui_parse_submit();
	test_comfyui_parse_history();
	test_comfyui_requests();
	test_comfyui_parse_queue_of();
	test_comfyui_parse_queue_has();
	test_comfyui_model_files();
	test_comfyui_parse_view();
	test_openai_image_size();
	test_openai_build_image();
	test_openai_parse_image();
	test_redact_cases();
	test_redact_forms();
	test_http1();

	if (corpus_dir != NULL)
		printf("%d seeds written to %s\n", corpus_count, corpus_dir);
	printf("%d passed, %d failed\n", n_passed, n_failed);
	return n_failed > 0 ? 1 : 0;
}
