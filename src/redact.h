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

extern char *igny8_redact(const char *text, const char *key);
extern char *igny8_redact_body(char *body, size_t *len, const char *key,
							   long status);

#endif							/* IGNY8_REDACT_H */
