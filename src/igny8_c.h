/*-------------------------------------------------------------------------
 *
 * igny8_c.h
 *	  First include of the files that also build outside the server.
 *
 * provider.c and provider_*.c are compiled into the extension, where they
 * need postgres.h, and with FRONTEND defined into the unit test and the
 * fuzzer (test/unit, test/fuzz), where postgres_fe.h provides palloc,
 * pstrdup and StringInfo from libpgcommon.  The choice is made here only.
 *
 * src/igny8_c.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef IGNY8_C_H
#define IGNY8_C_H

#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#endif							/* IGNY8_C_H */
