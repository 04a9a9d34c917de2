/*-------------------------------------------------------------------------
 *
 * http1.c
 *	  An incremental parser of HTTP/1.0 and HTTP/1.1 responses, for the
 *	  worker's built-in client (http.c).
 *
 * Bytes are fed as they arrive, split anywhere.  The parser keeps one line
 * at a time (the status line, a header, a chunk's size) and hands the body
 * on as it comes, so a response of any size costs its own memory only.
 * What it accepts (RFC 9112):
 *
 * - a status line "HTTP/1.0" or "HTTP/1.1", a three-digit status, an
 *   optional reason; interim 1xx responses are read and passed over (101
 *   is an error: nothing asked to switch protocols);
 * - header lines ended by CR LF or a bare LF.  Passed over, as libcurl
 *   7.88 does: a line starting with a space (obsolete folding), a name with
 *   a character other than RFC 9110's token characters (a space before the
 *   colon included), a line longer than HTTP1_LINE_MAX of a header not
 *   read here.  A line without a colon, as in libcurl, and a NUL anywhere
 *   in a header line are errors;
 * - the body: none for 204 and 304; chunked when the last transfer coding
 *   is "chunked" (Content-Length then ignored); up to the end of the
 *   connection when another transfer coding is last or no length is
 *   given; else Content-Length bytes.  Two different Content-Length values
 *   are an error (a list of equal ones is one value).
 *
 * Limits: a status line of HTTP1_LINE_MAX bytes (libcurl takes 100 kB), a
 * head of HTTP1_HEAD_MAX.  A chunk size line may be longer: what follows
 * the digits is passed over.  An error says in failed_in where it was met,
 * so that a caller can tell a malformed head from a malformed chunked body.
 *
 * No allocation, no PostgreSQL: the unit test and the fuzzer link it as is.
 *
 * src/http1.c
 *
 *-------------------------------------------------------------------------
 */
#include <stddef.h>
#include <string.h>

#include "http1.h"

static char
lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char) (c - 'A' + 'a') : c;
}

/* ASCII case-insensitive equality of a counted string and a lowercase one */
static bool
token_is(const char *s, size_t len, const char *word)
{
	size_t		i;

	for (i = 0; i < len; i++)
	{
		if (word[i] == '\0' || lower(s[i]) != word[i])
			return false;
	}
	return word[len] == '\0';
}

static bool
is_space(char c)
{
	return c == ' ' || c == '\t';
}

/* a character of a header name (RFC 9110's tchar) */
static bool
is_tchar(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* forget what the last response said: a new one starts */
static void
new_response(Http1Parser *p)
{
	p->status = 0;
	p->minor = 0;
	p->conn_close = false;
	p->conn_keep = false;
	p->chunked = false;
	p->coded = false;
	p->close_delimited = false;
	p->content_length = -1;
	p->remaining = 0;
	p->head_bytes = 0;
	p->line_len = 0;
	p->overlong = false;
	p->state = HTTP1_STATUS;
}

void
http1_init(Http1Parser *p)
{
	p->any_byte = false;
	p->error = NULL;
	p->failed_in = HTTP1_STATUS;
	new_response(p);
}

static Http1Result
fail(Http1Parser *p, const char *why)
{
	p->failed_in = p->state;
	p->state = HTTP1_FAILED;
	p->error = why;
	return HTTP1_ERROR;
}

static Http1Result
status_line(Http1Parser *p, const char *line, size_t len)
{
	int			status = 0;

	if (len == 0)
		return HTTP1_MORE;		/* blank lines before it: passed over */
	if (len < 12 || memcmp(line, "HTTP/1.", 7) != 0 ||
		(line[7] != '0' && line[7] != '1') || line[8] != ' ' ||
		(len > 12 && line[12] != ' '))
		return fail(p, "the response does not start with an HTTP/1.0 or HTTP/1.1 status line");
	for (int i = 9; i < 12; i++)
	{
		if (line[i] < '0' || line[i] > '9')
			return fail(p, "the response's status is not three digits");
		status = status * 10 + (line[i] - '0');
	}
	if (status < 100)
		return fail(p, "the response's status is below 100");
	p->status = status;
	p->minor = line[7] - '0';
	p->state = HTTP1_HEADERS;
	return HTTP1_MORE;
}

/*
 * The next element of a comma-separated header value, without the spaces
 * around it and without its ";" parameters; NULL at the end.  *s moves
 * past it.
 */
static const char *
next_element(const char **s, size_t *len)
{
	const char *p = *s;
	const char *start;

	while (is_space(*p) || *p == ',')
		p++;
	if (*p == '\0')
	{
		*s = p;
		return NULL;
	}
	start = p;
	while (*p != '\0' && *p != ',' && *p != ';')
		p++;
	*len = p - start;
	while (*len > 0 && is_space(start[*len - 1]))
		(*len)--;
	while (*p != '\0' && *p != ',')
		p++;					/* the element's parameters */
	*s = p;
	return start;
}

/* "Transfer-Encoding": the last coding decides how the body is framed */
static Http1Result
transfer_encoding(Http1Parser *p, const char *value)
{
	const char *start;
	size_t		len;

	while ((start = next_element(&value, &len)) != NULL)
	{
		if (token_is(start, len, "chunked"))
		{
			if (p->chunked)
				return fail(p, "the response is chunked twice");
			p->chunked = true;
		}
		else
		{
			/* a coding after "chunked": the body ends with the connection */
			p->chunked = false;
			p->coded = true;
		}
	}
	return HTTP1_MORE;
}

static Http1Result
content_length(Http1Parser *p, const char *value)
{
	const char *s = value;

	/* one number, or a list of equal ones (RFC 9110, 8.6) */
	do
	{
		int64_t		n = 0;
		const char *start;

		while (is_space(*s))
			s++;
		start = s;
		for (; *s >= '0' && *s <= '9'; s++)
		{
			if (n > (INT64_MAX - 9) / 10)
				return fail(p, "the response's Content-Length is too large");
			n = n * 10 + (*s - '0');
		}
		if (s == start)
			return fail(p, *start == '\0' && start == value ?
						"the response's Content-Length is empty" :
						"the response's Content-Length is not a number");
		while (is_space(*s))
			s++;
		if (*s != '\0' && *s != ',')
			return fail(p, "the response's Content-Length is not a number");
		if (p->content_length >= 0 && p->content_length != n)
			return fail(p, "the response has two different Content-Length values");
		p->content_length = n;
	} while (*s++ == ',');
	return HTTP1_MORE;
}

static void
connection(Http1Parser *p, const char *value)
{
	const char *start;
	size_t		len;

	while ((start = next_element(&value, &len)) != NULL)
	{
		if (token_is(start, len, "close"))
			p->conn_close = true;
		else if (token_is(start, len, "keep-alive"))
			p->conn_keep = true;
	}
}

/* The blank line that ends a response's head. */
static Http1Result
end_of_head(Http1Parser *p, const Http1Callbacks *cb, void *arg)
{
	if (p->status < 200)
	{
		if (p->status == 101)
			return fail(p, "the server switched protocols, which nothing asked for");
		/* an interim response (100 Continue, 103 Early Hints): the next */
		new_response(p);
		if (cb->header != NULL)
			cb->header(arg, NULL, NULL);
		return HTTP1_MORE;
	}
	if (cb->head_done != NULL &&
		!cb->head_done(arg, p->status,
					   (p->chunked || p->status == 204 || p->status == 304) ?
					   -1 : p->content_length))
	{
		p->state = HTTP1_FAILED;
		return HTTP1_ABORTED;
	}
	if (p->status == 204 || p->status == 304)
		p->state = HTTP1_DONE;
	else if (p->chunked)
		p->state = HTTP1_CHUNK_SIZE;
	else if (p->coded || p->content_length < 0)
	{
		p->state = HTTP1_BODY_CLOSE;
		p->close_delimited = true;
	}
	else if (p->content_length == 0)
		p->state = HTTP1_DONE;
	else
	{
		p->remaining = (uint64_t) p->content_length;
		p->state = HTTP1_BODY_LENGTH;
	}
	return p->state == HTTP1_DONE ? HTTP1_COMPLETE : HTTP1_MORE;
}

/* Is this one of the headers that frame the body (and so must be whole)? */
static bool
framing_header(const char *name, size_t len)
{
	return token_is(name, len, "content-length") ||
		token_is(name, len, "transfer-encoding") ||
		token_is(name, len, "connection");
}

/* A header line; overlong: only its first HTTP1_LINE_MAX - 1 bytes kept */
static Http1Result
header_line(Http1Parser *p, char *line, size_t len, bool overlong,
			const Http1Callbacks *cb, void *arg)
{
	char	   *colon;
	char	   *value;
	char	   *end;
	Http1Result r = HTTP1_MORE;

	if (len == 0 && !overlong)
		return end_of_head(p, cb, arg);
	/* a NUL would cut the name or the value short where it is read */
	if (memchr(line, '\0', len) != NULL)
		return fail(p, "a header line of the response has a NUL byte");
	if (is_space(line[0]))
		return HTTP1_MORE;		/* obsolete line folding: not ours to read */
	colon = memchr(line, ':', len);
	if (colon == NULL)
		return fail(p, "a header line of the response has no colon");
	for (char *c = line; c < colon; c++)
	{
		/* a space before the colon too: libcurl reads no such header */
		if (!is_tchar(*c))
			return HTTP1_MORE;	/* not a header name: passed over */
	}
	if (colon == line)
		return HTTP1_MORE;
	if (overlong)
	{
		/* cut short: only a header read here must be whole */
		if (framing_header(line, colon - line))
			return fail(p, "a header line of the response is too long");
		return HTTP1_MORE;
	}
	*colon = '\0';
	value = colon + 1;
	end = line + len;
	while (value < end && is_space(*value))
		value++;
	while (end > value && is_space(end[-1]))
		end--;
	*end = '\0';

	/* 204 and 304 have no body: what would frame one is not read */
	if (p->status == 204 || p->status == 304)
		;
	else if (token_is(line, colon - line, "content-length"))
		r = content_length(p, value);
	else if (token_is(line, colon - line, "transfer-encoding"))
		r = transfer_encoding(p, value);
	else if (token_is(line, colon - line, "connection"))
		connection(p, value);
	if (r == HTTP1_MORE && cb->header != NULL)
		cb->header(arg, line, value);
	return r;
}

static Http1Result
chunk_size_line(Http1Parser *p, const char *line, size_t len)
{
	uint64_t	n = 0;
	size_t		i = 0;

	for (; i < len; i++)
	{
		char		c = lower(line[i]);
		int			d;

		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else
			break;
		if (n > (UINT64_MAX >> 4))
			return fail(p, "a chunk of the response is too large");
		n = (n << 4) | (uint64_t) d;
	}
	if (i == 0)
		return fail(p, "a chunk size of the response is not a hexadecimal number");
	/* what follows the digits (extensions) is passed over, as libcurl does */
	if (n == 0)
		p->state = HTTP1_TRAILERS;
	else
	{
		p->remaining = n;
		p->state = HTTP1_CHUNK_DATA;
	}
	return HTTP1_MORE;
}

/* One complete line (no CR LF) in the state it was read in. */
static Http1Result
line_done(Http1Parser *p, const Http1Callbacks *cb, void *arg)
{
	char	   *line = p->line;
	size_t		len = p->line_len;
	bool		overlong = p->overlong;

	p->line_len = 0;
	p->overlong = false;
	line[len] = '\0';
	switch (p->state)
	{
		case HTTP1_STATUS:
			return status_line(p, line, len);
		case HTTP1_HEADERS:
			return header_line(p, line, len, overlong, cb, arg);
		case HTTP1_CHUNK_SIZE:
			/* a long extension is cut short: the size is in the part kept */
			return chunk_size_line(p, line, len);
		case HTTP1_CHUNK_END:
			if (len != 0)
				return fail(p, "a chunk of the response is longer than its size");
			p->state = HTTP1_CHUNK_SIZE;
			return HTTP1_MORE;
		case HTTP1_TRAILERS:
			if (overlong)
				return HTTP1_MORE;	/* a long trailer field: passed over */
			if (len == 0)
			{
				p->state = HTTP1_DONE;
				return HTTP1_COMPLETE;
			}
			return HTTP1_MORE;	/* a trailer field: not ours to read */
		default:
			return fail(p, "internal error: a line in a body state");
	}
}

Http1Result
http1_feed(Http1Parser *p, const char *data, size_t len, size_t *used,
		   const Http1Callbacks *cb, void *arg)
{
	size_t		i = 0;
	Http1Result r = HTTP1_MORE;

	if (len > 0)
		p->any_byte = true;
	while (i < len && r == HTTP1_MORE)
	{
		switch (p->state)
		{
			case HTTP1_BODY_LENGTH:
			case HTTP1_CHUNK_DATA:
			case HTTP1_BODY_CLOSE:
				{
					size_t		n = len - i;

					if (p->state != HTTP1_BODY_CLOSE && p->remaining < n)
						n = (size_t) p->remaining;
					if (cb->body != NULL && !cb->body(arg, data + i, n))
					{
						p->state = HTTP1_FAILED;
						r = HTTP1_ABORTED;
						break;
					}
					i += n;
					if (p->state == HTTP1_BODY_CLOSE)
						break;
					p->remaining -= n;
					if (p->remaining == 0)
					{
						if (p->state == HTTP1_CHUNK_DATA)
							p->state = HTTP1_CHUNK_END;
						else
						{
							p->state = HTTP1_DONE;
							r = HTTP1_COMPLETE;
						}
					}
					break;
				}
			case HTTP1_DONE:
				r = HTTP1_COMPLETE;
				break;
			case HTTP1_FAILED:
				r = HTTP1_ERROR;
				break;
			default:
				{
					/* a line: up to and with its LF */
					const char *nl = memchr(data + i, '\n', len - i);
					size_t		n = (nl != NULL ? (size_t) (nl - (data + i)) : len - i);
					bool		head = (p->state == HTTP1_STATUS ||
										p->state == HTTP1_HEADERS);

					size_t		keep = n;

					if (head)
					{
						p->head_bytes += n + (nl != NULL);
						if (p->head_bytes > HTTP1_HEAD_MAX)
						{
							r = fail(p, "the response's headers are too long");
							break;
						}
					}
					if (p->line_len + n >= HTTP1_LINE_MAX)
					{
						if (p->state != HTTP1_HEADERS &&
							p->state != HTTP1_TRAILERS &&
							p->state != HTTP1_CHUNK_SIZE)
						{
							r = fail(p, "a line of the response is too long");
							break;
						}
						/* keep its start: enough to tell which header */
						p->overlong = true;
						keep = HTTP1_LINE_MAX - 1 - p->line_len;
					}
					memcpy(p->line + p->line_len, data + i, keep);
					p->line_len += keep;
					i += n;
					if (nl == NULL)
						break;
					i++;		/* the LF */
					if (p->line_len > 0 && p->line[p->line_len - 1] == '\r')
						p->line_len--;
					r = line_done(p, cb, arg);
					break;
				}
		}
	}
	if (r == HTTP1_MORE && p->state == HTTP1_DONE)
		r = HTTP1_COMPLETE;
	*used = i;
	return r;
}

Http1Result
http1_eof(Http1Parser *p)
{
	switch (p->state)
	{
		case HTTP1_BODY_CLOSE:
			p->state = HTTP1_DONE;
			return HTTP1_COMPLETE;
		case HTTP1_DONE:
			return HTTP1_COMPLETE;
		case HTTP1_FAILED:
			return HTTP1_ERROR;
		default:
			return p->any_byte ? HTTP1_PARTIAL : HTTP1_EMPTY;
	}
}

/* May the connection carry another request after this complete response? */
bool
http1_keep_alive(const Http1Parser *p)
{
	if (p->state != HTTP1_DONE || p->close_delimited || p->conn_close)
		return false;
	return p->minor >= 1 || p->conn_keep;
}
