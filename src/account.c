/*-------------------------------------------------------------------------
 *
 * account.c
 *	  Roles bound to an account (igny8_account_roles), on the caller's
 *	  side: the account a call is charged to is resolved in dispatch.c and
 *	  submit.c (igny8_resolve_account), which asks here whether the
 *	  current role is bound, and the row-level security policies of
 *	  ai_usage_log and igny8_jobs ask igny8_bound_account().
 *
 * The binding is read with an index scan of igny8_account_roles, without
 * SPI and without privilege checks (a bound role cannot read the table),
 * and cached per backend for the role last asked about.  A statement
 * trigger on the table invalidates its relcache entry at commit, which
 * reaches every backend; the relcache callback below then drops the
 * cached binding.  A call therefore runs no query unless the bindings
 * changed since the backend's last call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "igny8_ai.h"

PG_FUNCTION_INFO_V1(igny8_bound_account);
PG_FUNCTION_INFO_V1(igny8_account_roles_changed);

/* the cached answer for one role; valid until an invalidation */
static bool cache_valid = false;
static bool callback_registered = false;
static Oid	cached_table = InvalidOid;	/* igny8_account_roles, if found */
static Oid	cached_role = InvalidOid;
static bool cached_bound = false;
static int64 cached_account = 0;

static void
bindings_invalidated(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == cached_table)
		cache_valid = false;
}

/* The schema of the extension, or InvalidOid (PostgreSQL 15 exports none). */
static Oid
extension_schema(Oid ext)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	Oid			nsp = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(ext));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		nsp = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
}

/* Look the role up in igny8_account_roles, bypassing the cache. */
static bool
lookup_binding(Oid role, int64 *account)
{
	Oid			ext;
	Oid			nsp;
	Oid			relid;
	Oid			indexid;
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	bool		found = false;

	cached_table = InvalidOid;
	ext = get_extension_oid("igny8_ai", true);
	if (!OidIsValid(ext))
		return false;
	nsp = extension_schema(ext);
	if (!OidIsValid(nsp))
		return false;
	relid = get_relname_relid("igny8_account_roles", nsp);
	indexid = get_relname_relid("igny8_account_roles_pkey", nsp);
	if (!OidIsValid(relid) || !OidIsValid(indexid))
		return false;
	cached_table = relid;

	rel = table_open(relid, AccessShareLock);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(role));
	scan = systable_beginscan(rel, indexid, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, 2, RelationGetDescr(rel), &isnull);

		if (!isnull)
		{
			*account = DatumGetInt64(d);
			found = true;
		}
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * Is the role bound to an account?  If so, *account is set.  Needs a
 * transaction.
 */
bool
igny8_role_account(Oid role, int64 *account)
{
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(bindings_invalidated, (Datum) 0);
		callback_registered = true;
	}
	if (!cache_valid || cached_role != role)
	{
		int64		a = 0;

		cache_valid = false;
		cached_bound = lookup_binding(role, &a);
		cached_account = a;
		cached_role = role;
		cache_valid = true;
	}
	if (cached_bound)
		*account = cached_account;
	return cached_bound;
}

/*
 * The account current_user is bound to, or NULL: what the row-level
 * security policies of ai_usage_log and igny8_jobs compare with.
 */
Datum
igny8_bound_account(PG_FUNCTION_ARGS)
{
	int64		account;

	if (!igny8_role_account(GetUserId(), &account))
		PG_RETURN_NULL();
	PG_RETURN_INT64(account);
}

/*
 * The statement trigger of igny8_account_roles: every backend forgets its
 * cached binding when the change commits (and this one at once).
 */
Datum
igny8_account_roles_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("igny8_account_roles_changed() must be called as a trigger")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}
