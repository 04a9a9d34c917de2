/*-------------------------------------------------------------------------
 *
 * redact.c
 *	  Scrubbing an API key out of text: a provider's whole response body is
 *	  redacted before anything is parsed or cut out of it, so that no
 *	  excerpt can keep part of a key, and the labels parsed from an answer
 *	  are redacted again.  Pure code: it also builds into the unit test
 *	  (test/unit) with FRONTEND defined.
 *
 * A server may echo a key in any of several forms, even within one body:
 * as it is (a text body; JSON need not escape "/", and Python's json.dumps
 * does not), JSON-escaped ("\/" as PHP writes it, "\"", "\\"), with \uXXXX
 * escapes (Go writes "&", "<" and ">" so, Python's ensure_ascii every
 * non-ASCII character), or escaped twice when a proxy quotes the upstream's
 * error body inside its own JSON string ("\\\/").  Looking for a few fixed
 * spellings of the whole key, one after the other, cannot work: spellings
 * that begin alike match each other's beginnings, and the first one tried
 * cuts the key where it stops agreeing with the text, leaving the rest in
 * clear.  So the key is matched character by character, each character in
 * whichever of these forms the text has it.
 *
 * src/redact.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "redact.h"

/* not a code point: a key's byte that is no valid UTF-8 */
#define NO_CODE_POINT	((pg_wchar) 0xFFFFFFFF)

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The 4 hex digits at p (p + 4 <= end), or -1. */
static int
hex4(const char *p, const char *end)
{
	int			v = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++)
	{
		int			d = hex_digit(p[i]);

		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/*
 * Most escaping taken before one character: more than nesting JSON four
 * levels deep gives (15 backslashes), and bounded so that a run of
 * backslashes costs a bounded look at each of its bytes, not one to its
 * end.
 */
#define MAX_ESCAPE	64

/*
 * The end of a run of backslashes at p, or p when there is none or it is
 * longer than MAX_ESCAPE.
 */
static const char *
skip_backslashes(const char *p, const char *end)
{
	const char *q = p;

	while (q < end && *q == '\\')
	{
		if (q - p == MAX_ESCAPE)
			return p;
		q++;
	}
	return q;
}

/*
 * A \u escape whose backslashes end at p ("uXXXX", p at the 'u'): its code
 * point in *cp, a surrogate pair (however many backslashes its second half
 * has) made one; returns its end, or NULL when there is none.
 */
static const char *
read_u_escape(const char *p, const char *end, pg_wchar *cp)
{
	int			hi;
	int			lo;
	const char *q;

	if (p >= end || *p != 'u' || (hi = hex4(p + 1, end)) < 0)
		return NULL;
	p += 5;
	if (hi < 0xD800 || hi > 0xDBFF)
	{
		*cp = hi;
		return p;
	}
	q = skip_backslashes(p, end);
	if (q == p || q >= end || *q != 'u' || (lo = hex4(q + 1, end)) < 0 ||
		lo < 0xDC00 || lo > 0xDFFF)
		return NULL;
	*cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
	return q + 5;
}

/*
 * The end of the escape noise at p: runs of backslashes, and \u escapes of
 * a backslash ("\u005c", "\\u005C"), which is what escaping, once or more,
 * puts before a character.  p when there is none.
 */
static const char *
skip_escapes(const char *p, const char *end)
{
	const char *start = p;

	for (;;)
	{
		const char *q = skip_backslashes(p, end);
		const char *u;
		pg_wchar	cp;

		if (q == p)
			return p;
		if (q - start > MAX_ESCAPE)
			return start;
		u = read_u_escape(q, end, &cp);
		if (u == NULL || cp != '\\')
			return q;
		p = u;
	}
}

/*
 * The escape noise at p after the key's own trailing backslashes (the key
 * has run out, or stops agreeing with the text, right after them): taken
 * as theirs, but not the backslash of an escape that follows in JSON
 * ("\"" after "...\\", as a key ending in "\" is escaped before a closing
 * quote), which would change the text's structure.
 */
static const char *
skip_trailing_escapes(const char *p, const char *end)
{
	const char *q = skip_escapes(p, end);

	if (q > p && q < end && q[-1] == '\\' && *q != '\0' &&
		strchr("\"\\/bfnrtu", *q) != NULL)
	{
		const char *run = q;

		while (run > p && run[-1] == '\\')
			run--;
		if ((q - run) % 2 == 1)
			q--;
	}
	return q;
}

/*
 * How far the text at t spells the key, its characters in any of the forms
 * of the header comment.  Returns the end of the match (t if none) and sets
 * *matched to the number of the key's bytes it covers.
 *
 * The key's own backslashes are taken for escape noise, like the text's:
 * escaping doubles them (or writes them "\u005c") and may put more before a
 * character, so a "\" of the key and the noise around it are not told
 * apart.  That redacts, at most, a backslash next to a key, never less
 * than the key.
 */
static const char *
match_key(const char *t, const char *end, const char *key, size_t klen,
		  size_t *matched)
{
	size_t		n = 0;
	size_t		pending = 0;	/* key backslashes the text has not had */

	for (;;)
	{
		const unsigned char *k;
		int			clen;
		pg_wchar	cp;
		const char *u;
		const char *after;
		pg_wchar	ucp;

		while (n < klen && key[n] == '\\')
		{
			n++;
			pending++;
		}
		if (n == klen)
			break;

		/* the key's next character: its bytes, and its code point */
		k = (const unsigned char *) key + n;
		clen = 1;
		cp = *k;
		if (*k >= 0x80)
		{
			clen = pg_utf_mblen(k);
			if ((size_t) clen <= klen - n && pg_utf8_islegal(k, clen))
				cp = utf8_to_unicode(k);
			else
			{
				clen = 1;
				cp = NO_CODE_POINT;
			}
		}

		/* as it is */
		if (end - t >= clen && memcmp(t, k, clen) == 0)
		{
			t += clen;
			n += clen;
			pending = 0;
			continue;
		}
		/* escaped: the character, or a \u escape of it, after the noise */
		u = skip_escapes(t, end);
		if (u == t)
			break;
		after = read_u_escape(u, end, &ucp);
		if (after != NULL && ucp == cp)
			t = after;
		else if (end - u >= clen && memcmp(u, k, clen) == 0)
			t = u + clen;
		else
			break;
		n += clen;
		pending = 0;
	}
	if (pending > 0)
	{
		/* they count only if the text has them */
		const char *u = skip_trailing_escapes(t, end);

		if (u == t)
			n -= pending;
		t = u;
	}
	*matched = n;
	return t;
}

/*
 * Redact len bytes of text (NULs allowed) into a new palloc'd,
 * NUL-terminated buffer, or return NULL when there is nothing to redact.
 * Every occurrence of the key, and of a prefix of it at least
 * IGNY8_REDACT_PREFIX bytes long (providers echo keys cut short,
 * "sk-abc...xyz"), in any of the forms of the header comment, becomes
 * "[redacted]".
 */
static char *
redact_buf(const char *text, size_t len, const char *key, size_t *outlen)
{
	StringInfoData buf;
	size_t		klen;
	size_t		plen;
	const char *first;
	const char *p = text;
	const char *end = text + len;

	if (text == NULL || key == NULL ||
		(klen = strlen(key)) < IGNY8_REDACT_MIN_KEY)
		return NULL;
	plen = Min(klen, (size_t) IGNY8_REDACT_PREFIX);
	/* a match begins with the key's first character, or with an escape */
	first = key + strspn(key, "\\");
	if (*first == '\0')
		return NULL;

	buf.data = NULL;
	for (const char *t = text; t < end; t++)
	{
		const char *mend;
		size_t		n;

		if (*t != *first && *t != '\\')
			continue;
		mend = match_key(t, end, key, klen, &n);
		if (n < plen || mend == t)
			continue;
		if (buf.data == NULL)
			initStringInfo(&buf);
		appendBinaryStringInfo(&buf, p, t - p);
		appendStringInfoString(&buf, "[redacted]");
		p = mend;
		t = mend - 1;
	}
	if (buf.data == NULL)
		return NULL;
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
 * Redact a response body in place of the original: returns body itself
 * when the key is not in it (the common case costs one scan), else a
 * palloc'd copy, with *len updated.  Done before the body is parsed or cut,
 * so that neither a parsed field nor an excerpt can hold a key or a piece
 * of one.  A 2xx body (an answer) is left alone for a key shorter than
 * IGNY8_REDACT_ANSWER_MIN; the caller redacts the labels parsed from it.
 */
char *
igny8_redact_body(char *body, size_t *len, const char *key, long status)
{
	char	   *redacted;
	size_t		newlen;

	if (key == NULL)
		return body;
	if (status >= 200 && status < 300 &&
		strlen(key) < IGNY8_REDACT_ANSWER_MIN)
		return body;
	redacted = redact_buf(body, *len, key, &newlen);
	if (redacted == NULL)
		return body;
	*len = newlen;
	return redacted;
}
