/*-------------------------------------------------------------------------
 *
 * redact.h
 *	  Scrubbing an API key out of text (redact.c); pure code, shared by the
 *	  extension and the unit test.
 *
 * src/redact.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef IGNY8_REDACT_H
#define IGNY8_REDACT_H

#include <stddef.h>

/*
 * Shortest key worth redacting, the prefix that counts as the key, and the
 * shortest key redacted from the text of an answer.  A key shorter than
 * IGNY8_REDACT_ANSWER_MIN is a placeholder (vLLM's "EMPTY", "none",
 * "ollama"): matched in an answer, it would rewrite ordinary words, or a
 * JSON member name and with it the answer's structure.
 */
#define IGNY8_REDACT_MIN_KEY		4
#define IGNY8_REDACT_PREFIX			12
#define IGNY8_REDACT_ANSWER_MIN		16

extern char *igny8_redact(const char *text, const char *key);
extern char *igny8_redact_body(char *body, size_t *len, const char *key,
							   long status);

#endif							/* IGNY8_REDACT_H */
