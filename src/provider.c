/*-------------------------------------------------------------------------
 *
 * provider.c
 *	  Helpers shared by the text protocols and the health probes:
 *	  provider kinds, the generic classification of HTTP statuses, cJSON's
 *	  allocator, the small string and JSON utilities used by
 *	  provider_ollama.c, provider_openai.c, provider_anthropic.c and
 *	  provider_comfyui.c, and the parts of a probe result that all
 *	  backends share.
 *
 * Nothing here touches libcurl, SPI or shared memory, and nothing reports
 * through ereport(): failures go into an Igny8ProviderError.  The file
 * builds both into the server module and, with FRONTEND defined, into the
 * unit test and the fuzzer.
 *
 * src/provider.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include <stdarg.h>

#include "lib/stringinfo.h"
#include "provider.h"

/* Bytes of a non-JSON error body quoted in an error message. */
#define BODY_EXCERPT_MAX 100

/* Largest token count we report; keeps double -> int64 well defined. */
#define MAX_COUNT 9.0e18
#define MAX_COUNT_INT ((int64_t) MAX_COUNT)

/*
 * What an error body says when a prompt does not fit the deployment's
 * context window (compared ignoring case): OpenAI's code and message,
 * vLLM's message, Anthropic's, llama.cpp's server (its error type and
 * the wordings of several builds; Ollama quotes them in its own text when
 * asked not to truncate) and Ollama's own.
 */
static const char *const context_phrases[] = {
	"context_length_exceeded",	/* OpenAI error.code */
	"maximum context length",	/* OpenAI, vLLM: "This model's maximum
								 * context length is N tokens" */
	"prompt is too long",		/* Anthropic: "prompt is too long: N tokens >
								 * M maximum" */
	"exceed_context_size_error",	/* llama.cpp error.type */
	"exceeds the available context size",	/* llama.cpp: "request (N tokens)
											 * exceeds the available context
											 * size (M tokens), try ..." */
	"exceeds context size",		/* llama.cpp, later builds */
	"larger than the max context size", /* llama.cpp, older builds */
	"exceeds the context length",	/* Ollama: "the input length exceeds the
									 * context length" */
	"longer than the context length"	/* Ollama: "the prompt is longer than
										 * the context length currently
										 * available to the model" */
};

static const char *const kind_names[] = {
	"ollama",					/* IGNY8_KIND_OLLAMA */
	"openai",					/* IGNY8_KIND_OPENAI */
	"anthropic",				/* IGNY8_KIND_ANTHROPIC */
	"comfyui"					/* IGNY8_KIND_COMFYUI */
};

static char *vformat(const char *fmt, va_list args) pg_attribute_printf(1, 0);

/*
 * Map a provider kind name ("ollama", ...; case does not matter) to its
 * enum value; IGNY8_KIND_INVALID for NULL or an unknown name.
 */
Igny8ProviderKind
igny8_provider_kind_from_name(const char *name)
{
	int			i;

	if (name == NULL)
		return IGNY8_KIND_INVALID;
	for (i = 0; i < (int) lengthof(kind_names); i++)
	{
		if (pg_strcasecmp(name, kind_names[i]) == 0)
			return (Igny8ProviderKind) i;
	}
	return IGNY8_KIND_INVALID;
}

/* The lower-case name of a provider kind, or NULL for IGNY8_KIND_INVALID. */
const char *
igny8_provider_kind_name(Igny8ProviderKind kind)
{
	switch (kind)
	{
		case IGNY8_KIND_OLLAMA:
		case IGNY8_KIND_OPENAI:
		case IGNY8_KIND_ANTHROPIC:
		case IGNY8_KIND_COMFYUI:
			return kind_names[kind];
		case IGNY8_KIND_INVALID:
			break;
	}
	return NULL;
}

/* The text protocol of a kind; NULL for ComfyUI (images only) or invalid. */
const Igny8TextProtocol *
igny8_text_protocol(Igny8ProviderKind kind)
{
	switch (kind)
	{
		case IGNY8_KIND_OLLAMA:
			return &igny8_ollama_protocol;
		case IGNY8_KIND_OPENAI:
			return &igny8_openai_protocol;
		case IGNY8_KIND_ANTHROPIC:
			return &igny8_anthropic_protocol;
		case IGNY8_KIND_COMFYUI:
		case IGNY8_KIND_INVALID:
			break;
	}
	return NULL;
}

/* The health probe of a kind; NULL for IGNY8_KIND_INVALID. */
const Igny8ProbeProtocol *
igny8_probe_protocol(Igny8ProviderKind kind)
{
	switch (kind)
	{
		case IGNY8_KIND_OLLAMA:
			return &igny8_ollama_probe;
		case IGNY8_KIND_OPENAI:
			return &igny8_openai_probe;
		case IGNY8_KIND_ANTHROPIC:
			return &igny8_anthropic_probe;
		case IGNY8_KIND_COMFYUI:
			return &igny8_comfyui_probe;
		case IGNY8_KIND_INVALID:
			break;
	}
	return NULL;
}

/* cJSON allocation hooks.  cJSON passes a size_t; palloc takes a Size. */
static void *
json_malloc(size_t size)
{
	return palloc_extended((Size) size, MCXT_ALLOC_HUGE);
}

/* cJSON frees NULL pointers in places; pfree() must not see them. */
static void
json_free(void *ptr)
{
	if (ptr != NULL)
		pfree(ptr);
}

/*
 * Route cJSON's allocations to palloc() in CurrentMemoryContext.  Call once
 * per process before any cJSON use (cJSON's hooks are process-global).
 * cJSON then has no realloc and copies when it grows a print buffer.
 */
void
igny8_json_init(void)
{
	cJSON_Hooks hooks;

	hooks.malloc_fn = json_malloc;
	hooks.free_fn = json_free;
	cJSON_InitHooks(&hooks);
}

/*
 * Classify a non-2xx HTTP status by the generic rules of protocols.md
 * section 5, the way the official OpenAI and Anthropic SDKs do.
 *
 * should_retry is the x-should-retry header (1 true, 0 false, -1 absent).
 * When present it wins: true makes any error RETRY, false turns a RETRY
 * into FALLBACK.  2xx gives IGNY8_ERR_NONE; 1xx, 3xx and nonsense give
 * FALLBACK (this backend answered something we cannot use).
 */
Igny8ErrorClass
igny8_classify_status(long status, int should_retry)
{
	Igny8ErrorClass cls;

	if (status >= 200 && status < 300)
		return IGNY8_ERR_NONE;

	switch (status)
	{
		case 408:
		case 409:
		case 429:
		case 500:
		case 502:
		case 503:
		case 504:
		case 529:
			cls = IGNY8_ERR_RETRY;
			break;
		case 401:
		case 402:
		case 403:
		case 404:
			cls = IGNY8_ERR_FALLBACK;
			break;
		case 400:
		case 413:
		case 422:
			cls = IGNY8_ERR_CALLER;
			break;
		default:
			if (status >= 400 && status < 500)
				cls = IGNY8_ERR_CALLER;
			else if (status >= 500 && status < 600)
				cls = IGNY8_ERR_RETRY;
			else
				cls = IGNY8_ERR_FALLBACK;
			break;
	}

	if (should_retry == 1)
		cls = IGNY8_ERR_RETRY;
	else if (should_retry == 0 && cls == IGNY8_ERR_RETRY)
		cls = IGNY8_ERR_FALLBACK;
	return cls;
}

/*
 * Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0 if it is not one.
 */
static int
utf8_sequence_length(const unsigned char *s, size_t avail)
{
	unsigned char c = s[0];
	int			len;
	int			i;

	if (c < 0x80)
		return 1;
	else if (c >= 0xC2 && c <= 0xDF)
		len = 2;
	else if (c >= 0xE0 && c <= 0xEF)
		len = 3;
	else if (c >= 0xF0 && c <= 0xF4)
		len = 4;
	else
		return 0;

	if (avail < (size_t) len)
		return 0;
	for (i = 1; i < len; i++)
	{
		if ((s[i] & 0xC0) != 0x80)
			return 0;
	}
	if ((c == 0xE0 && s[1] < 0xA0) ||
		(c == 0xED && s[1] > 0x9F) ||
		(c == 0xF0 && s[1] < 0x90) ||
		(c == 0xF4 && s[1] > 0x8F))
		return 0;
	return len;
}

/*
 * Copy at most max bytes of msg[0..len) into a new palloc'd string, fit to
 * be shown in a log or an error message: never cut inside a UTF-8
 * sequence, control characters (NUL included) become spaces, bytes that
 * are not valid UTF-8 become '?', trailing spaces go, and "..." is
 * appended when something was cut.  The result has at most max + 3 bytes.
 */
char *
igny8_truncate_message(const char *msg, size_t len, size_t max)
{
	const unsigned char *in = (const unsigned char *) msg;
	char	   *result;
	size_t		pos = 0;
	size_t		out = 0;

	if (msg == NULL)
		return pstrdup("");

	/* every input byte yields at most one output byte */
	result = palloc(Min(len, max) + 4);
	while (pos < len)
	{
		int			seqlen = utf8_sequence_length(in + pos, len - pos);

		if (out + (seqlen > 0 ? seqlen : 1) > max)
			break;
		if (seqlen == 0)
		{
			result[out++] = '?';
			pos++;
		}
		else if (seqlen == 1 && (in[pos] < 0x20 || in[pos] == 0x7F))
		{
			result[out++] = ' ';
			pos++;
		}
		else
		{
			memcpy(result + out, in + pos, seqlen);
			out += seqlen;
			pos += seqlen;
		}
	}
	while (out > 0 && result[out - 1] == ' ')
		out--;
	if (pos < len)
	{
		memcpy(result + out, "...", 3);
		out += 3;
	}
	result[out] = '\0';
	return result;
}

/* Is str[0..len) well-formed UTF-8 (RFC 3629)?  A NUL byte counts as one. */
bool
igny8_utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *) str;
	size_t		pos = 0;

	while (pos < len)
	{
		int			seqlen = utf8_sequence_length(s + pos, len - pos);

		if (seqlen == 0)
			return false;
		pos += seqlen;
	}
	return true;
}

/*
 * The length of s[0..len) without its trailing whitespace: ASCII (space,
 * \t to \r, \x1c to \x1f) and the Unicode spaces (U+0085, U+00A0,
 * U+1680, U+2000 to U+200A, U+2028, U+2029, U+202F, U+205F, U+3000), as
 * UTF-8: what Python's str.isspace() calls whitespace, and so Anthropic
 * (whose API is Python) when it refuses a blank text or a start of the
 * answer that ends with whitespace.  0 when s is blank.
 */
size_t
igny8_utf8_trim_end(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *) s;

	for (;;)
	{
		if (len >= 1 && (u[len - 1] == ' ' ||
						 (u[len - 1] >= 0x09 && u[len - 1] <= 0x0d) ||
						 (u[len - 1] >= 0x1c && u[len - 1] <= 0x1f)))
			len -= 1;
		else if (len >= 2 && u[len - 2] == 0xc2 &&
				 (u[len - 1] == 0x85 || u[len - 1] == 0xa0))
			len -= 2;
		else if (len >= 3 && (u[len - 3] & 0xf0) == 0xe0 &&
				 (u[len - 2] & 0xc0) == 0x80 && (u[len - 1] & 0xc0) == 0x80)
		{
			unsigned int cp = ((u[len - 3] & 0x0f) << 12) |
				((u[len - 2] & 0x3f) << 6) | (u[len - 1] & 0x3f);

			if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
				cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
				cp == 0x205f || cp == 0x3000)
				len -= 3;
			else
				return len;
		}
		else
			return len;
	}
}

/*
 * Make a provider's label (a model name, a finish reason) fit for a
 * fixed-size buffer, in place: every byte that does not start a valid
 * UTF-8 sequence and every control character (U+0000-U+001F, U+007F)
 * becomes '?', and the label is cut at a character boundary to at most
 * max bytes, without "..." (strlen(label) <= max afterwards).
 */
void
igny8_clean_label(char *label, size_t max)
{
	unsigned char *s = (unsigned char *) label;
	size_t		len = strlen(label);
	size_t		pos = 0;

	while (pos < len)
	{
		int			seqlen = utf8_sequence_length(s + pos, len - pos);

		if (seqlen == 0)
		{
			s[pos] = '?';
			seqlen = 1;
		}
		else if (seqlen == 1 && (s[pos] < 0x20 || s[pos] == 0x7F))
			s[pos] = '?';
		if (pos + seqlen > max)
			break;
		pos += seqlen;
	}
	s[pos] = '\0';
}

/*
 * Does a JSON text contain a NUL: a \u0000 escape, or a raw NUL byte
 * (invalid JSON, which cJSON nevertheless copies into the string)?  Either
 * becomes a NUL byte in the parsed string, which cuts it without a word,
 * so a body with one must be caught before its strings are used.  An
 * escaped backslash followed by "u0000" (\\u0000 in the JSON text) is
 * not one.  Only meaningful for a body that parsed as JSON, where a
 * backslash can only stand inside a string.
 */
bool
igny8_json_has_nul(const char *body, size_t len)
{
	const char *p = body;
	const char *end;

	if (body == NULL)
		return false;
	if (memchr(body, '\0', len) != NULL)
		return true;
	end = body + len;
	while ((p = memchr(p, '\\', end - p)) != NULL)
	{
		if (end - p >= 6 && memcmp(p + 1, "u0000", 5) == 0)
			return true;
		p += 2;					/* the backslash and what it escapes */
		if (p >= end)
			break;
	}
	return false;
}

/* ASCII whitespace, independent of the locale. */
static bool
is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
		c == '\f' || c == '\v';
}

/*
 * Remove a leading reasoning block from a model's answer in place
 * (protocols.md 1.5, client rule).  If content starts, after whitespace,
 * with <think>, everything through the first </think> is dropped and the
 * rest is left-trimmed, moved to the start of the buffer; the trace in
 * between, trimmed, goes to *thinking (NULL if empty).  A block that never
 * closes (the answer was cut off by max_tokens while the model reasoned)
 * is all reasoning: the content is empty, the rest is the trace.  Without
 * a leading block the content is left as it is and *thinking is NULL.
 * thinking may be NULL.  Returns content.
 */
static char *
strip_think_in_place(char *content, char **thinking)
{
	char	   *p;
	char	   *start;
	char	   *end;
	char	   *close;

	if (thinking != NULL)
		*thinking = NULL;

	p = content;
	while (is_space(*p))
		p++;
	if (strncmp(p, "<think>", 7) != 0)
		return content;
	start = p + 7;
	close = strstr(start, "</think>");

	if (thinking != NULL)
	{
		end = close ? close : start + strlen(start);
		while (start < end && is_space(*start))
			start++;
		while (end > start && is_space(end[-1]))
			end--;
		if (end > start)
			*thinking = pnstrdup(start, end - start);
	}
	if (close == NULL)
	{
		content[0] = '\0';
		return content;
	}

	p = close + 8;
	while (is_space(*p))
		p++;
	memmove(content, p, strlen(p) + 1);
	return content;
}

/*
 * The same on a copy: the result is always a new palloc'd string, and
 * content is left alone.
 */
char *
igny8_strip_think(const char *content, char **thinking)
{
	if (content == NULL)
	{
		if (thinking != NULL)
			*thinking = NULL;
		return pstrdup("");
	}
	return strip_think_in_place(pstrdup(content), thinking);
}

/*
 * The answer in a string item of a parsed answer, without its reasoning
 * block (as igny8_strip_think), taken out of the tree rather than copied:
 * an answer may be as large as igny8_ai.max_response_size, and a copy of
 * it would double what the worker holds.  The item is left a string
 * without a value (valuestring NULL), and cJSON_Delete frees the tree
 * without the string, which is the caller's, palloc'd in the context the
 * tree was parsed in (cJSON's allocator is palloc, igny8_json_init).  Only
 * for a tree of the caller's own, freed before anything else reads it: the
 * parse_chat functions, whose tree igny8_parse_answer frees.  An item that
 * is not a string gives a new "".
 */
char *
igny8_take_answer(const cJSON *item, char **thinking)
{
	cJSON	   *own = (cJSON *) item;
	char	   *content;

	if (!cJSON_IsString(own) || own->valuestring == NULL)
		return igny8_strip_think(NULL, thinking);
	content = own->valuestring;
	own->valuestring = NULL;
	return strip_think_in_place(content, thinking);
}

/* Format into a new palloc'd string. */
static char *
vformat(const char *fmt, va_list args)
{
	size_t		len = 128;

	for (;;)
	{
		char	   *buf;
		size_t		needed;
		va_list		copy;

		buf = palloc(len);
		va_copy(copy, args);
		needed = pvsnprintf(buf, len, fmt, copy);
		va_end(copy);
		if (needed < len)
			return buf;
		pfree(buf);
		len = needed;
	}
}

/*
 * Append a "Name: value" header to out.  Control characters become
 * spaces, so that a CR or LF in a key or a setting cannot inject another
 * header.  Headers beyond IGNY8_MAX_HEADERS are dropped (the protocols
 * send at most four).
 */
void
igny8_add_header(Igny8HttpRequest *out, const char *fmt,...)
{
	va_list		args;
	char	   *header;
	char	   *p;

	va_start(args, fmt);
	header = vformat(fmt, args);
	va_end(args);

	for (p = header; *p != '\0'; p++)
	{
		if ((unsigned char) *p < 0x20 || *p == 0x7F)
			*p = ' ';
	}

	if (out->nheaders < IGNY8_MAX_HEADERS)
		out->headers[out->nheaders++] = header;
	else
		pfree(header);
}

/* Reset the outputs of a parse_chat function before it fills one. */
void
igny8_init_outputs(Igny8TextResult *result, Igny8ProviderError *err)
{
	memset(result, 0, sizeof(*result));
	igny8_init_error(err);
}

/* Reset an error before a parse function fills it: no error yet. */
void
igny8_init_error(Igny8ProviderError *err)
{
	memset(err, 0, sizeof(*err));
	err->cls = IGNY8_ERR_NONE;
	err->retry_after = -1;
}

/*
 * Fill *err with a class and a formatted message, cut to
 * IGNY8_ERRMSG_MAX bytes.
 */
void
igny8_set_error(Igny8ProviderError *err, Igny8ErrorClass cls,
				double retry_after, const char *fmt,...)
{
	va_list		args;
	char	   *text;

	va_start(args, fmt);
	text = vformat(fmt, args);
	va_end(args);

	err->cls = cls;
	err->retry_after = retry_after;
	err->drop_think = false;
	err->message = igny8_truncate_message(text, strlen(text),
										  IGNY8_ERRMSG_MAX);
	pfree(text);
}

/*
 * Fill *err for a non-2xx answer.  The message is the provider's own when
 * it gave one; otherwise "HTTP <status> from <provider>", followed by the
 * start of the body when there is one (a proxy's HTML or plain-text page).
 * retry_after is passed through from the response.
 */
void
igny8_set_http_error(Igny8ProviderError *err, Igny8ErrorClass cls,
					 const Igny8HttpResponse *resp, const char *provider,
					 const char *message)
{
	if (message != NULL && message[0] != '\0')
		igny8_set_error(err, cls, resp->retry_after, "%s", message);
	else if (resp->body != NULL && resp->body_len > 0)
	{
		char	   *excerpt;

		excerpt = igny8_truncate_message(resp->body, resp->body_len,
										 BODY_EXCERPT_MAX);
		igny8_set_error(err, cls, resp->retry_after, "HTTP %ld from %s: %s",
						resp->status, provider, excerpt);
		pfree(excerpt);
	}
	else
		igny8_set_error(err, cls, resp->retry_after, "HTTP %ld from %s",
						resp->status, provider);
}

/*
 * The message of an error body, whichever provider sent it: {"error":
 * "..."} (Ollama, ComfyUI's older builds, proxies), {"error": {"message":
 * "..."}} (OpenAI, Anthropic, ComfyUI, llama.cpp) or a top-level
 * "message" (older vLLM: {"object":"error","message":...}, gateways).
 * NULL when there is none.  Points into json.
 */
const char *
igny8_error_message(const cJSON *json)
{
	const cJSON *error = igny8_json_member(json, "error");
	const char *message = NULL;

	if (cJSON_IsString(error))
		message = error->valuestring;
	else if (cJSON_IsObject(error))
		message = igny8_json_string(error, "message");
	if (message == NULL)
		message = igny8_json_string(json, "message");
	return message;
}

/*
 * Does an error body say that the prompt is longer than the deployment's
 * context window (protocols.md 5)?  That limit belongs to the deployment,
 * so the call falls back: a later candidate may have a larger window.
 */
bool
igny8_context_exceeded(const cJSON *json)
{
	const cJSON *error = igny8_json_member(json, "error");
	const char *message = igny8_error_message(json);
	const char *type = igny8_json_string(error, "type");
	const char *code = igny8_json_string(error, "code");
	int			i;

	if ((code != NULL && strcmp(code, "context_length_exceeded") == 0) ||
		(type != NULL && strcmp(type, "exceed_context_size_error") == 0))
		return true;
	for (i = 0; i < (int) lengthof(context_phrases); i++)
	{
		if (igny8_str_contains(message, context_phrases[i]))
			return true;
	}
	return false;
}

/* Does haystack contain needle, ignoring ASCII case?  NULL-safe. */
bool
igny8_str_contains(const char *haystack, const char *needle)
{
	size_t		nlen;
	const char *p;

	if (haystack == NULL || needle == NULL)
		return false;
	nlen = strlen(needle);
	for (p = haystack; *p != '\0'; p++)
	{
		if (pg_strncasecmp(p, needle, nlen) == 0)
			return true;
	}
	return nlen == 0;
}

/*
 * Parse len bytes of body, followed by a NUL (body[len] == '\0'), as one
 * JSON value (see igny8_json_parse).
 */
static cJSON *
parse_terminated(const char *body, size_t len)
{
	const char *end = NULL;
	const char *limit = body + len;
	cJSON	   *json;

	json = cJSON_ParseWithLengthOpts(body, len, &end, false);
	if (json != NULL)
	{
		if (end == NULL || end < body || end > limit)
			end = body;			/* cannot happen; refuse the body */
		while (end < limit && is_space(*end))
			end++;
		if (end != limit)
		{
			cJSON_Delete(json);
			json = NULL;
		}
	}
	return json;
}

/*
 * Parse a response body that must be exactly one JSON value (whitespace
 * around it allowed).  Returns NULL for anything else: empty, truncated,
 * trailing data such as a second NDJSON line, nesting deeper than cJSON's
 * limit.  The body need not be NUL-terminated (it is copied then; a
 * response's body is parsed where it is when it is, igny8_json_parse_body).
 * Free with cJSON_Delete.
 */
cJSON *
igny8_json_parse(const char *body, size_t len)
{
	char	   *copy;
	cJSON	   *json;

	if (body == NULL || len == 0)
		return NULL;

	copy = palloc_extended(len + 1, MCXT_ALLOC_HUGE);
	memcpy(copy, body, len);
	copy[len] = '\0';
	json = parse_terminated(copy, len);
	pfree(copy);
	return json;
}

/*
 * Parse a response's body as igny8_json_parse does, without a copy when
 * the body is NUL-terminated (body_terminated): an answer may be as large
 * as igny8_ai.max_response_size, and a copy would add that much to what
 * the worker holds while it parses.
 */
cJSON *
igny8_json_parse_body(const Igny8HttpResponse *resp)
{
	if (resp->body == NULL || resp->body_len == 0)
		return NULL;
	if (!resp->body_terminated)
		return igny8_json_parse(resp->body, resp->body_len);
	Assert(resp->body[resp->body_len] == '\0');
	return parse_terminated(resp->body, resp->body_len);
}

/* Serialize a tree without whitespace into a new palloc'd string. */
char *
igny8_json_print(const cJSON *item)
{
	char	   *printed;
	char	   *result;

	printed = cJSON_PrintUnformatted(item);
	if (printed == NULL)
		return NULL;
	/* copy, so the result is palloc'd even if the hooks were not set */
	result = pstrdup(printed);
	cJSON_free(printed);
	return result;
}

/* The member key of a JSON object; NULL if absent or not an object. */
cJSON *
igny8_json_member(const cJSON *object, const char *key)
{
	if (!cJSON_IsObject(object))
		return NULL;
	return cJSON_GetObjectItemCaseSensitive(object, key);
}

/* The string member key of a JSON object; NULL if absent or no string. */
const char *
igny8_json_string(const cJSON *object, const char *key)
{
	const cJSON *item = igny8_json_member(object, key);

	if (!cJSON_IsString(item) || item->valuestring == NULL)
		return NULL;
	return item->valuestring;
}

/*
 * A counter member of a JSON object (tokens, bytes): 0 when absent, not a
 * number or negative (counters are omitted when zero by Ollama).
 */
int64_t
igny8_json_count(const cJSON *object, const char *key)
{
	const cJSON *item = igny8_json_member(object, key);
	double		value;

	if (!cJSON_IsNumber(item))
		return 0;
	value = item->valuedouble;
	if (!(value >= 0))			/* also NaN */
		return 0;
	if (value > MAX_COUNT)
		value = MAX_COUNT;
	return (int64_t) value;
}

/* The sum of two counts of igny8_json_count, kept at its upper bound. */
int64_t
igny8_count_add(int64_t a, int64_t b)
{
	if (a < 0)
		a = 0;
	if (b < 0)
		b = 0;
	if (a > MAX_COUNT_INT - b)
		return MAX_COUNT_INT;
	return a + b;
}

/*
 * Set member key of object to item, replacing every member of that name.
 * Takes ownership of item (freed if object is not an object).  key must
 * not point into object itself (a member's own name).
 */
void
igny8_json_set(cJSON *object, const char *key, cJSON *item)
{
	if (item == NULL)
		return;
	if (!cJSON_IsObject(object))
	{
		cJSON_Delete(item);
		return;
	}
	while (cJSON_GetObjectItemCaseSensitive(object, key) != NULL)
		cJSON_DeleteItemFromObjectCaseSensitive(object, key);
	if (!cJSON_AddItemToObject(object, key, item))
		cJSON_Delete(item);
}

/*
 * Copy every member of the object src into the object dst.  A member that
 * dst already has is replaced when overwrite is true, kept otherwise.
 * Does nothing unless both are objects.
 */
void
igny8_json_merge(cJSON *dst, const cJSON *src, bool overwrite)
{
	const cJSON *item;

	if (!cJSON_IsObject(dst) || !cJSON_IsObject(src))
		return;
	cJSON_ArrayForEach(item, src)
	{
		if (item->string == NULL)
			continue;
		if (!overwrite &&
			cJSON_GetObjectItemCaseSensitive(dst, item->string) != NULL)
			continue;
		igny8_json_set(dst, item->string, cJSON_Duplicate(item, true));
	}
}

/*
 * Fill a probe result.  The summary is cut and cleaned like an error
 * message (one line, at most IGNY8_ERRMSG_MAX + 3 bytes); detail, a cJSON
 * object, is printed into detail_json and freed.
 */
void
igny8_probe_finish(Igny8ProbeResult *out, bool healthy, bool degraded,
				   const char *summary, cJSON *detail)
{
	out->reachable = true;
	out->healthy = healthy;
	out->degraded = healthy && degraded;
	out->summary = igny8_truncate_message(summary, strlen(summary),
										  IGNY8_ERRMSG_MAX);
	out->detail_json = NULL;
	if (cJSON_IsObject(detail))
		out->detail_json = igny8_json_print(detail);
	if (out->detail_json == NULL)
		out->detail_json = pstrdup("{}");
	cJSON_Delete(detail);
}

/*
 * Fill a probe result for a non-2xx answer: "HTTP <status>: <text>", where
 * the text is the provider's message when it gave one, else the start of
 * the body (a proxy's page), else "empty response body".  The detail is
 * {"http_status":N,"error":"<text>"}.
 */
void
igny8_probe_http_error(const Igny8HttpResponse *resp, const char *message,
					   Igny8ProbeResult *out)
{
	char	   *text = NULL;
	char	   *summary;
	cJSON	   *detail;

	if (message != NULL)
		text = igny8_truncate_message(message, strlen(message),
									  IGNY8_ERRMSG_MAX);
	if ((text == NULL || text[0] == '\0') &&
		resp->body != NULL && resp->body_len > 0)
	{
		if (text != NULL)
			pfree(text);
		text = igny8_truncate_message(resp->body, resp->body_len,
									  BODY_EXCERPT_MAX);
	}
	if (text == NULL || text[0] == '\0')
	{
		if (text != NULL)
			pfree(text);
		text = pstrdup("empty response body");
	}

	detail = cJSON_CreateObject();
	cJSON_AddNumberToObject(detail, "http_status", (double) resp->status);
	cJSON_AddStringToObject(detail, "error", text);
	summary = psprintf("HTTP %ld: %s", resp->status, text);
	igny8_probe_finish(out, false, false, summary, detail);
	pfree(summary);
	pfree(text);
}

/*
 * Fill a probe result for a 2xx answer whose body is not what the probe
 * expects (not JSON, or not the shape of the probed route).
 */
void
igny8_probe_malformed(const Igny8HttpResponse *resp, const char *provider,
					  Igny8ProbeResult *out)
{
	char	   *summary;
	cJSON	   *detail;

	detail = cJSON_CreateObject();
	cJSON_AddNumberToObject(detail, "http_status", (double) resp->status);
	cJSON_AddStringToObject(detail, "error", "malformed response");
	summary = psprintf("malformed response from %s", provider);
	igny8_probe_finish(out, false, false, summary, detail);
	pfree(summary);
}

/* Does an Ollama-style model name end in a ":tag" (after any '/')? */
static bool
model_has_tag(const char *name)
{
	const char *colon = strrchr(name, ':');
	const char *slash = strrchr(name, '/');

	return colon != NULL && (slash == NULL || colon > slash);
}

/*
 * Is b the name a (its first len bytes) followed by "-" and an eight-digit
 * date, as Anthropic lists a model ("claude-haiku-4-5-20251001") that
 * configurations name by its alias ("claude-haiku-4-5")?
 */
static bool
model_dated_len(const char *a, size_t len, const char *b)
{
	int			i;

	if (len == 0 || strncmp(a, b, len) != 0 || b[len] != '-' ||
		strlen(b + len) != 9)
		return false;
	for (i = 1; i <= 8; i++)
	{
		if (b[len + i] < '0' || b[len + i] > '9')
			return false;
	}
	return true;
}

/*
 * Is b a dated id of the alias a?  "x" names "x-YYYYMMDD"; so do Anthropic's
 * older aliases "x-0" ("claude-sonnet-4-0" for "claude-sonnet-4-20250514")
 * and "x-latest" ("claude-3-7-sonnet-latest" for
 * "claude-3-7-sonnet-20250219"), which the API accepts but its model list
 * does not hold (protocols.md 4.3).
 */
static bool
model_dated(const char *a, const char *b)
{
	size_t		len = strlen(a);

	if (model_dated_len(a, len, b))
		return true;
	if (len > 2 && strcmp(a + len - 2, "-0") == 0)
		return model_dated_len(a, len - 2, b);
	if (len > 7 && strcmp(a + len - 7, "-latest") == 0)
		return model_dated_len(a, len - 7, b);
	return false;
}

/*
 * Do a configured model name and a listed one name the same model?  Equal
 * strings do, and so do "x" and "x:latest" either way round, since a name
 * without a tag means ":latest" (protocols.md 1.1).  Ollama's /v1/models
 * lists "x:latest" too, so the rule serves the OpenAI-compatible probe as
 * well; a name with a registry port ("host:5000/ns/x") has no tag.  A
 * configured "x", "x-0" or "x-latest" also names a listed "x-YYYYMMDD"
 * (Anthropic's dated ids, model_dated).
 */
static bool
model_name_equal(const char *a, const char *b)
{
	size_t		len;

	if (strcmp(a, b) == 0 || model_dated(a, b))
		return true;
	if (model_has_tag(a) == model_has_tag(b))
		return false;
	if (model_has_tag(a))
	{
		const char *swap = a;

		a = b;
		b = swap;
	}
	/* a has no tag, b has one */
	len = strlen(a);
	return strncmp(a, b, len) == 0 && strcmp(b + len, ":latest") == 0;
}

/*
 * Fill a healthy probe result from the configured models and the names a
 * server listed (listed may hold several names per model: nlisted names
 * for models_listed models).  Each distinct, non-empty configured name
 * is present or missing; any missing one makes the result degraded.
 * nmodels < 0 means that the models are not to be compared: the result is
 * healthy and says only how many the server listed.
 */
void
igny8_probe_models(const char *const *models, int nmodels,
				   const char *const *listed, int nlisted,
				   int models_listed, Igny8ProbeResult *out)
{
	cJSON	   *detail;
	cJSON	   *missing;
	StringInfoData names;
	char	   *summary;
	int			npresent = 0;
	int			nmissing = 0;
	int			i;
	int			j;

	if (nmodels < 0)
	{
		detail = cJSON_CreateObject();
		cJSON_AddNumberToObject(detail, "models_listed", models_listed);
		cJSON_AddFalseToObject(detail, "model_check");
		summary = psprintf("%d model%s listed (model check off)",
						   models_listed, models_listed == 1 ? "" : "s");
		igny8_probe_finish(out, true, false, summary, detail);
		pfree(summary);
		return;
	}

	missing = cJSON_CreateArray();
	initStringInfo(&names);
	for (i = 0; i < nmodels; i++)
	{
		const char *model = models[i];
		bool		seen = false;
		bool		found = false;

		if (model == NULL || model[0] == '\0')
			continue;
		for (j = 0; j < i && !seen; j++)
			seen = models[j] != NULL && strcmp(models[j], model) == 0;
		if (seen)
			continue;
		for (j = 0; j < nlisted && !found; j++)
			found = listed[j] != NULL && model_name_equal(model, listed[j]);
		if (found)
		{
			npresent++;
			continue;
		}
		if (nmissing > 0)
			appendStringInfoString(&names, ", ");
		appendStringInfoString(&names, model);
		cJSON_AddItemToArray(missing, cJSON_CreateString(model));
		nmissing++;
	}

	detail = cJSON_CreateObject();
	cJSON_AddNumberToObject(detail, "models_present", npresent);
	cJSON_AddNumberToObject(detail, "models_listed", models_listed);
	cJSON_AddItemToObject(detail, "models_missing", missing);

	if (nmissing == 1)
		summary = psprintf("model %s missing", names.data);
	else if (nmissing > 1)
		summary = psprintf("%d models missing: %s", nmissing, names.data);
	else if (npresent == 0)
		summary = pstrdup("running, no models configured");
	else if (npresent == 1)
		summary = pstrdup("1 configured model present");
	else
		summary = psprintf("all %d configured models present", npresent);
	igny8_probe_finish(out, true, nmissing > 0, summary, detail);
	pfree(summary);
	pfree(names.data);
}

/*
 * Read a list probe's answer (the Ollama, OpenAI-compatible and Anthropic
 * probes): a
 * 2xx must be an object whose member list_key is an array; the string
 * members name_keys of each entry all count as names of that entry's
 * model, and the configured models are checked against them
 * (igny8_probe_models).  provider names the server in a summary.
 */
void
igny8_probe_model_list(const Igny8HttpResponse *resp,
					   const char *const *models, int nmodels,
					   const char *provider, const char *list_key,
					   const char *const *name_keys, int nname_keys,
					   Igny8ProbeResult *out)
{
	cJSON	   *json;
	const cJSON *list;
	const cJSON *entry;
	const char **listed;
	int			nlisted = 0;
	int			i;

	memset(out, 0, sizeof(*out));
	json = igny8_json_parse_body(resp);
	list = igny8_json_member(json, list_key);
	if (resp->status < 200 || resp->status >= 300)
		igny8_probe_http_error(resp, igny8_error_message(json), out);
	else if (!cJSON_IsArray(list))
		igny8_probe_malformed(resp, provider, out);
	else
	{
		listed = palloc(sizeof(const char *) *
						((Size) cJSON_GetArraySize(list) * nname_keys + 1));
		cJSON_ArrayForEach(entry, list)
		{
			for (i = 0; i < nname_keys; i++)
			{
				const char *str = igny8_json_string(entry, name_keys[i]);

				if (str != NULL)
					listed[nlisted++] = str;
			}
		}
		igny8_probe_models(models, nmodels, listed, nlisted,
						   cJSON_GetArraySize(list), out);
		pfree(listed);
	}
	cJSON_Delete(json);
}

/* Free what a successful parse_chat put into *result, and clear it. */
static void
free_text_result(Igny8TextResult *result)
{
	if (result->content != NULL)
		pfree(result->content);
	if (result->thinking != NULL)
		pfree(result->thinking);
	if (result->model != NULL)
		pfree(result->model);
	if (result->finish_reason != NULL)
		pfree(result->finish_reason);
	memset(result, 0, sizeof(*result));
}

/*
 * Check the text of a successful answer and clean its labels (the rules
 * at the top of provider.h).  Returns false, with *result freed and *err
 * filled, when the answer must be refused.
 */
static bool
check_answer(const Igny8HttpResponse *resp, const char *provider,
			 Igny8TextResult *result, Igny8ProviderError *err)
{
	const char *problem = NULL;

	if (igny8_json_has_nul(resp->body, resp->body_len))
		problem = "a string contains a NUL character";
	else if (!igny8_utf8_valid(result->content, strlen(result->content)) ||
			 (result->thinking != NULL &&
			  !igny8_utf8_valid(result->thinking, strlen(result->thinking))))
		problem = "the answer is not valid UTF-8";
	if (problem != NULL)
	{
		free_text_result(result);
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from %s: %s", provider, problem);
		return false;
	}

	if (result->model != NULL)
		igny8_clean_label(result->model, IGNY8_MODEL_MAX);
	if (result->finish_reason != NULL)
		igny8_clean_label(result->finish_reason, IGNY8_FINISH_REASON_MAX);
	/* an empty label says nothing: as if it were absent */
	if (result->model != NULL && result->model[0] == '\0')
	{
		pfree(result->model);
		result->model = NULL;
	}
	if (result->finish_reason != NULL && result->finish_reason[0] == '\0')
	{
		pfree(result->finish_reason);
		result->finish_reason = NULL;
	}
	if (result->cached_input_tokens > result->input_tokens)
		result->cached_input_tokens = result->input_tokens;
	if (result->cache_write_input_tokens >
		result->input_tokens - result->cached_input_tokens)
		result->cache_write_input_tokens =
			result->input_tokens - result->cached_input_tokens;
	if (result->cache_write_input_tokens < 0)
		result->cache_write_input_tokens = 0;
	return true;
}

/*
 * The parse_chat of every text protocol: parse the body once, hand a 2xx to
 * the protocol's success reader and anything else to its error reader.  A
 * successful answer is then checked and cleaned (check_answer).  A 2xx
 * that cannot be read is worth one more try, not more (protocols.md 5).
 * provider names the server in error messages.
 */
bool
igny8_parse_answer(const Igny8HttpResponse *resp, const char *provider,
				   Igny8TextResult *result, Igny8ProviderError *err,
				   bool (*success) (const cJSON *json, long status,
									Igny8TextResult *result,
									Igny8ProviderError *err),
				   void (*failure) (const Igny8HttpResponse *resp,
									const cJSON *json,
									Igny8ProviderError *err))
{
	cJSON	   *json;
	bool		ok = false;

	igny8_init_outputs(result, err);
	json = igny8_json_parse_body(resp);
	if (resp->status >= 200 && resp->status < 300)
	{
		ok = success(json, resp->status, result, err);
		if (ok)
			ok = check_answer(resp, provider, result, err);
		if (!ok)
			err->retry_once = true;
	}
	else
	{
		failure(resp, json, err);
		/* cJSON cut the message at a NUL: say so rather than cut silently */
		if (err->message != NULL &&
			igny8_json_has_nul(resp->body, resp->body_len))
		{
			char	   *cut = err->message;
			bool		drop_think = err->drop_think;

			igny8_set_error(err, err->cls, err->retry_after,
							"%s (cut at a NUL character)", cut);
			err->drop_think = drop_think;
			pfree(cut);
		}
	}
	cJSON_Delete(json);
	return ok;
}

/* A GET of path, with the key as a bearer header when one is given. */
void
igny8_build_get(Igny8HttpRequest *out, const char *path,
				const char *bearer_key)
{
	memset(out, 0, sizeof(*out));
	out->method = "GET";
	out->path = pstrdup(path);
	if (bearer_key != NULL)
		igny8_add_header(out, "Authorization: Bearer %s", bearer_key);
}
