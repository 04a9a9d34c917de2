/*-------------------------------------------------------------------------
 *
 * http1.h
 *	  An incremental parser of HTTP/1.0 and HTTP/1.1 responses (http1.c):
 *	  the status line, the headers, and the body delimited by
 *	  Content-Length, by chunked transfer coding, or by the end of the
 *	  connection.  Pure code, shared by the worker's built-in client
 *	  (http.c), the unit test and the fuzzer.
 *
 * src/http1.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef IGNY8_HTTP1_H
#define IGNY8_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Longest line kept whole, CR LF included: a status line or chunk size
 * longer is an error; a longer header line is read only as far as this (a
 * header the parser acts on is then an error, another one is passed over).
 */
#define HTTP1_LINE_MAX		8192
/* most bytes of one response's head (status line and headers), as libcurl */
#define HTTP1_HEAD_MAX		(300 * 1024)

typedef enum Http1State
{
	HTTP1_STATUS,				/* before or inside the status line */
	HTTP1_HEADERS,				/* reading header lines */
	HTTP1_BODY_LENGTH,			/* a body of Content-Length bytes */
	HTTP1_CHUNK_SIZE,			/* a chunk's size line */
	HTTP1_CHUNK_DATA,			/* a chunk's data */
	HTTP1_CHUNK_END,			/* the CR LF after a chunk's data */
	HTTP1_TRAILERS,				/* after the last chunk, up to a blank line */
	HTTP1_BODY_CLOSE,			/* a body that ends with the connection */
	HTTP1_DONE,
	HTTP1_FAILED
} Http1State;

/* what http1_feed and http1_eof say */
typedef enum Http1Result
{
	HTTP1_MORE,					/* the response is not complete yet */
	HTTP1_COMPLETE,				/* the response is complete */
	HTTP1_ERROR,				/* a malformed response: error says why */
	HTTP1_ABORTED,				/* a callback said stop */
	HTTP1_EMPTY,				/* (http1_eof) closed before any byte */
	HTTP1_PARTIAL				/* (http1_eof) closed inside the response */
} Http1Result;

typedef struct Http1Callbacks
{
	/*
	 * A header of the response: name and value NUL-terminated, the value
	 * without the spaces around it.  Called with name NULL when a new
	 * response starts (after an interim 1xx one), whose headers replace
	 * the earlier ones.  May be NULL.
	 */
	void		(*header) (void *arg, const char *name, const char *value);
	/* the head of the final response is complete; false: stop */
	bool		(*head_done) (void *arg, int status, int64_t content_length);
	/* a piece of the body; false: stop */
	bool		(*body) (void *arg, const char *data, size_t len);
} Http1Callbacks;

typedef struct Http1Parser
{
	Http1State	state;
	int			status;			/* the status of the response being read */
	int			minor;			/* HTTP/1.minor of it */
	bool		any_byte;		/* anything was received */
	bool		conn_close;		/* "Connection: close" */
	bool		conn_keep;		/* "Connection: keep-alive" */
	bool		chunked;
	bool		coded;			/* a transfer coding other than chunked */
	bool		close_delimited;	/* the body ends with the connection */
	int64_t		content_length; /* -1: none given */
	uint64_t	remaining;		/* bytes left of the body or of the chunk */
	size_t		head_bytes;		/* of the current response's head */
	const char *error;			/* why HTTP1_ERROR (a constant string) */
	Http1State	failed_in;		/* the state it was in then */
	bool		overlong;		/* the line is longer than what is kept */
	size_t		line_len;
	char		line[HTTP1_LINE_MAX];
} Http1Parser;

extern void http1_init(Http1Parser *p);
extern Http1Result http1_feed(Http1Parser *p, const char *data, size_t len,
							  size_t *used, const Http1Callbacks *cb,
							  void *arg);
extern Http1Result http1_eof(Http1Parser *p);
extern bool http1_keep_alive(const Http1Parser *p);

#endif							/* IGNY8_HTTP1_H */
