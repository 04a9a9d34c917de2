/*-------------------------------------------------------------------------
 *
 * redact.c
 *	  Scrubbing an API key out of text: a provider's whole response body is
 *	  redacted before anything is parsed or cut out of it, so that no
 *	  excerpt can keep part of a key, and the labels parsed from an answer
 *	  are redacted again.  Pure code: it also builds into the unit test
 *	  (test/unit) with FRONTEND defined.
 *
 * src/redact.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include "lib/stringinfo.h"
#include "redact.h"

/*
 * Shortest key worth redacting, the prefix that counts as the key, and the
 * shortest key redacted from the text of an answer.  A key shorter than
 * REDACT_ANSWER_MIN is a placeholder (vLLM's "EMPTY", "none", "ollama"):
 * matched in an answer, it would rewrite ordinary words, or a JSON member
 * name and with it the answer's structure.
 */
#define REDACT_MIN_KEY		4
#define REDACT_PREFIX		12
#define REDACT_ANSWER_MIN	16

/* The first occurrence of needle[0..nlen) in hay[0..len), or NULL. */
static const char *
find_bytes(const char *hay, size_t len, const char *needle, size_t nlen)
{
	const char *end = hay + len;

	while ((size_t) (end - hay) >= nlen)
	{
		const char *p = memchr(hay, needle[0], end - hay - nlen + 1);

		if (p == NULL)
			return NULL;
		if (memcmp(p, needle, nlen) == 0)
			return p;
		hay = p + 1;
	}
	return NULL;
}

/*
 * Redact len bytes of text (NULs allowed) into a new palloc'd,
 * NUL-terminated buffer, or return NULL when there is nothing to redact.
 * Every occurrence of the key, and of a prefix of it at least
 * REDACT_PREFIX long (providers echo keys cut short, "sk-abc...xyz"),
 * becomes "[redacted]".
 */
static char *
redact_buf(const char *text, size_t len, const char *key, size_t *outlen)
{
	StringInfoData buf;
	size_t		klen;
	size_t		plen;
	const char *p = text;
	const char *end = text + len;
	const char *hit;

	if (text == NULL || key == NULL || (klen = strlen(key)) < REDACT_MIN_KEY)
		return NULL;
	plen = Min(klen, (size_t) REDACT_PREFIX);
	hit = find_bytes(p, len, key, plen);
	if (hit == NULL)
		return NULL;

	initStringInfo(&buf);
	while (hit != NULL)
	{
		size_t		n = plen;

		/* swallow as much of the key as is there */
		while (n < klen && hit + n < end && hit[n] == key[n])
			n++;
		appendBinaryStringInfo(&buf, p, hit - p);
		appendStringInfoString(&buf, "[redacted]");
		p = hit + n;
		hit = find_bytes(p, end - p, key, plen);
	}
	appendBinaryStringInfo(&buf, p, end - p);
	*outlen = buf.len;
	return buf.data;
}

/* Copy text with the key redacted (see redact_buf). */
char *
igny8_redact(const char *text, const char *key)
{
	char	   *redacted;
	size_t		len;

	if (text == NULL)
		return NULL;
	redacted = redact_buf(text, strlen(text), key, &len);
	return redacted ? redacted : pstrdup(text);
}

/*
 * The key as a JSON string holds it: '"' and '\\' escaped, and '/' as
 * "\\/" when slash_too (JSON allows both, and some servers escape it).
 * NULL when that is the key itself.
 */
static char *
json_escaped_key(const char *key, bool slash_too)
{
	StringInfoData buf;
	bool		changed = false;

	initStringInfo(&buf);
	for (const char *k = key; *k; k++)
	{
		if (*k == '"' || *k == '\\' || (slash_too && *k == '/'))
		{
			appendStringInfoChar(&buf, '\\');
			changed = true;
		}
		appendStringInfoChar(&buf, *k);
	}
	if (changed)
		return buf.data;
	pfree(buf.data);
	return NULL;
}

/*
 * Redact a response body in place of the original: returns body itself
 * when the key is not in it (the common case costs one scan), else a
 * palloc'd copy, with *len updated.  Done before the body is parsed or cut,
 * so that neither a parsed field nor an excerpt can hold a key or a piece
 * of one.  The key is looked for as it is and as a JSON string escapes it.
 * A 2xx body (an answer) is left alone for a key shorter than
 * REDACT_ANSWER_MIN; the caller redacts the labels parsed from it.
 */
char *
igny8_redact_body(char *body, size_t *len, const char *key, long status)
{
	char	   *out = body;
	const char *forms[3];

	if (key == NULL)
		return body;
	if (status >= 200 && status < 300 && strlen(key) < REDACT_ANSWER_MIN)
		return body;
	/*
	 * The most escaped form first: the plain key's first REDACT_PREFIX
	 * bytes also begin its escaped forms, and redacting them first would
	 * leave the rest of an escaped key in the text.
	 */
	forms[0] = json_escaped_key(key, true);
	forms[1] = json_escaped_key(key, false);
	forms[2] = key;
	for (int i = 0; i < 3; i++)
	{
		char	   *redacted;
		size_t		newlen;

		if (forms[i] == NULL)
			continue;
		redacted = redact_buf(out, *len, forms[i], &newlen);
		if (redacted == NULL)
			continue;
		if (out != body)
			pfree(out);
		out = redacted;
		*len = newlen;
	}
	return out;
}
