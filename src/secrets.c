/*-------------------------------------------------------------------------
 *
 * secrets.c
 *	  API key references: "env:NAME" (the server's environment), "file:/path"
 *	  (first line of a file the server can read) or, discouraged, the key
 *	  itself.  Keys are resolved in the worker only, kept in its local
 *	  memory, and scrubbed out of any text that leaves it: a provider's
 *	  whole response body is redacted before anything is parsed or cut out
 *	  of it, so that no excerpt can keep part of a key.  A literal key is
 *	  never shown as a reference: it is "(literal key)".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "worker.h"

#define IGNY8_MAX_KEY_FILE	8192

/* A key may not carry characters that would break or inject a header. */
static bool
key_is_clean(const char *key)
{
	for (const char *p = key; *p; p++)
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			return false;
	return true;
}

static char *
trim(char *s)
{
	char	   *end;

	while (*s && isspace((unsigned char) *s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char) end[-1]))
		*--end = '\0';
	return s;
}

/*
 * Resolve a key reference.  Returns the key (palloc'd), or NULL with *error
 * set to a message that names the reference but never the key.  A NULL or
 * empty reference resolves to NULL without error: no key configured.
 */
char *
igny8_resolve_key(const char *ref, char **error)
{
	char	   *key;

	*error = NULL;
	if (ref == NULL || ref[0] == '\0')
		return NULL;

	if (strncmp(ref, "env:", 4) == 0)
	{
		const char *val = getenv(ref + 4);

		if (val == NULL || val[0] == '\0')
		{
			*error = psprintf("environment variable \"%s\" is not set in the server's environment",
							  ref + 4);
			return NULL;
		}
		key = trim(pstrdup(val));
	}
	else if (strncmp(ref, "file:", 5) == 0)
	{
		int			fd = open(ref + 5, O_RDONLY | PG_BINARY, 0);
		char	   *buf;
		ssize_t		n;
		char	   *nl;

		if (fd < 0)
		{
			*error = psprintf("could not open key file \"%s\": %m", ref + 5);
			return NULL;
		}
		buf = palloc(IGNY8_MAX_KEY_FILE + 1);
		n = read(fd, buf, IGNY8_MAX_KEY_FILE);
		if (n < 0)
		{
			/* before close(), which may change errno */
			*error = psprintf("could not read key file \"%s\": %m", ref + 5);
			close(fd);
			return NULL;
		}
		close(fd);
		buf[n] = '\0';
		nl = strchr(buf, '\n');
		if (nl)
			*nl = '\0';
		key = trim(buf);
	}
	else
		key = trim(pstrdup(ref));

	if (key[0] == '\0')
	{
		*error = pstrdup("the key is empty");
		return NULL;
	}
	if (!key_is_clean(key))
	{
		*error = pstrdup("the key has control characters");
		return NULL;
	}
	return key;
}

/*
 * A key reference as it may be shown: "env:NAME" and "file:/path" quoted,
 * a literal key as (literal key).
 */
const char *
igny8_key_ref_display(const char *ref)
{
	if (ref == NULL)
		return "(none)";
	if (strncmp(ref, "env:", 4) == 0 || strncmp(ref, "file:", 5) == 0)
		return psprintf("\"%s\"", ref);
	return "(literal key)";
}

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
