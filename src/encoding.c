/*-------------------------------------------------------------------------
 *
 * encoding.c
 *	  Provider text into the database encoding.
 *
 * Providers speak UTF-8, and so does the worker inside: it converts what
 * it reads from the database (configuration, a request's alias) to UTF-8
 * with igny8_from_db(), and what it stores or returns back.  The protocol
 * code (provider*.c) refuses an answer that is not valid UTF-8 or holds a
 * NUL, and cleans the labels (model, finish reason, error text).  Here the
 * worker turns what it stores or returns into the database's encoding,
 * before it reaches a text datum:
 *
 *	- an answer (content, thinking) is converted exactly, or not at all:
 *	  igny8_to_db_exact() returns NULL when a character has no equivalent
 *	  in the database encoding (a LATIN1 database and a Chinese answer),
 *	  and the worker treats the attempt as a malformed answer;
 *	- a label is converted with a '?' for each character the database
 *	  encoding lacks (and for each byte that is not UTF-8), so that a model
 *	  name or an error message always gets stored.
 *
 * The conversion functions are looked up once, in a transaction, when the
 * worker starts; the conversions themselves need none.  A UTF-8 database
 * needs no conversion, and SQL_ASCII takes the bytes as they are.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include "worker.h"

static int	db_encoding = PG_UTF8;
static bool need_conversion = false;
static FmgrInfo to_db;
static FmgrInfo from_db;

/* Look up the conversion from UTF-8; needs a transaction. */
void
igny8_encoding_init(void)
{
	Oid			proc;

	db_encoding = GetDatabaseEncoding();
	need_conversion = (db_encoding != PG_UTF8 && db_encoding != PG_SQL_ASCII);
	if (!need_conversion)
		return;
	proc = FindDefaultConversionProc(PG_UTF8, db_encoding);
	if (!OidIsValid(proc))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("no conversion from UTF8 to %s",
						pg_encoding_to_char(db_encoding)),
				 errdetail("igny8_ai converts the answers of providers, which are UTF-8, to the database encoding.")));
	fmgr_info_cxt(proc, &to_db, TopMemoryContext);
	proc = FindDefaultConversionProc(db_encoding, PG_UTF8);
	if (!OidIsValid(proc))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("no conversion from %s to UTF8",
						pg_encoding_to_char(db_encoding))));
	fmgr_info_cxt(proc, &from_db, TopMemoryContext);
}

/* Text of the database (valid in its encoding) as UTF-8; NULL stays NULL. */
char *
igny8_from_db(const char *text)
{
	size_t		len;
	char	   *dest;

	if (text == NULL || !need_conversion)
		return text ? pstrdup(text) : NULL;
	len = strlen(text);
	dest = palloc_extended(len * MAX_CONVERSION_GROWTH + 1, MCXT_ALLOC_HUGE);
	(void) FunctionCall6(&from_db,
						 Int32GetDatum(db_encoding),
						 Int32GetDatum(PG_UTF8),
						 CStringGetDatum(text),
						 CStringGetDatum(dest),
						 Int32GetDatum((int) len),
						 BoolGetDatum(false));
	return dest;
}

/*
 * Convert len bytes of valid UTF-8 into dest (room for len *
 * MAX_CONVERSION_GROWTH + 1 bytes, NUL-terminated); returns how many bytes
 * of src were converted before the first character the database encoding
 * lacks.
 */
static int
convert_prefix(const char *src, int len, char *dest)
{
	return DatumGetInt32(FunctionCall6(&to_db,
									   Int32GetDatum(PG_UTF8),
									   Int32GetDatum(db_encoding),
									   CStringGetDatum(src),
									   CStringGetDatum(dest),
									   Int32GetDatum(len),
									   BoolGetDatum(true)));
}

static char *
alloc_dest(size_t len)
{
	return palloc_extended(len * MAX_CONVERSION_GROWTH + 1, MCXT_ALLOC_HUGE);
}

/*
 * An answer in the database encoding, or NULL when it is not valid UTF-8
 * or has a character the database encoding lacks.  In a UTF-8 database
 * that is utf8 itself, not a copy: an answer may be as large as
 * igny8_ai.max_response_size.
 */
char *
igny8_to_db_exact(char *utf8)
{
	size_t		len = strlen(utf8);
	char	   *dest;

	if (!pg_verify_mbstr(PG_UTF8, utf8, (int) len, true))
		return NULL;
	if (!need_conversion)
		return utf8;
	dest = alloc_dest(len);
	if ((size_t) convert_prefix(utf8, (int) len, dest) != len)
	{
		pfree(dest);
		return NULL;
	}
	return dest;
}

/*
 * A label in the database encoding: each byte that is not UTF-8, and each
 * character the database encoding lacks, becomes '?'.
 */
char *
igny8_to_db_lossy(const char *utf8)
{
	StringInfoData valid;
	const unsigned char *p = (const unsigned char *) utf8;
	char	   *dest;
	char	   *out;
	int			pos = 0;

	if (utf8 == NULL)
		return NULL;

	/* first, valid UTF-8 */
	initStringInfo(&valid);
	while (*p)
	{
		int			l = pg_utf_mblen(p);
		bool		ok = true;

		for (int i = 1; i < l && ok; i++)
			ok = (p[i] != '\0');
		if (ok && pg_utf8_islegal(p, l))
		{
			appendBinaryStringInfo(&valid, (const char *) p, l);
			p += l;
		}
		else
		{
			appendStringInfoChar(&valid, '?');
			p++;
		}
	}
	if (!need_conversion)
		return valid.data;

	/* then piece by piece, skipping a character where the conversion stops */
	dest = alloc_dest(valid.len);
	dest[0] = '\0';			/* an empty label has no piece to convert */
	out = dest;
	while (pos < valid.len)
	{
		int			done = convert_prefix(valid.data + pos, valid.len - pos, out);

		out += strlen(out);
		pos += done;
		if (pos < valid.len)
		{
			*out++ = '?';
			*out = '\0';
			pos += pg_utf_mblen((const unsigned char *) valid.data + pos);
		}
	}
	pfree(valid.data);
	return dest;
}
