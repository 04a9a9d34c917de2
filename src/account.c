/*-------------------------------------------------------------------------
 *
 * account.c
 *	  Roles bound to an account (igny8_account_roles), on the caller's
 *	  side: the account a call is charged to is resolved in dispatch.c and
 *	  submit.c (igny8_resolve_account), which asks here whether the
 *	  current role is bound, and the row-level security policies of
 *	  ai_usage_log and igny8_jobs ask igny8_bound_account().
 *
 * Each backend keeps the answer for the role it last asked about, until a
 * relcache invalidation of the table (the statement trigger on the table
 * sends one at commit; so do DDL on it and vacuum).  Behind it, a copy of
 * the whole table sits in shared memory (up to IGNY8_SHARED_BINDINGS rows)
 * for every backend: a backend's first call then reads no catalog and
 * opens no table.  Building a relcache entry for the table and its index
 * and finding the extension's schema cost a fresh backend about as much
 * CPU as the rest of its first call; a thousand new connections calling
 * at once paid it a thousand times (pg_extension's page also makes each
 * of them compute the xmin horizons over every PGPROC).
 *
 * The copy is of one database's table, the database of the backend that
 * filled it; backends of another read their own table (and may fill the
 * copy with it in turn).  It is valid while its generation is the current
 * one.  The generation goes up:
 *	- at the commit of a transaction in which the trigger ran (any insert,
 *	  update, delete, truncate or COPY), and after any COMMIT PREPARED
 *	  (extension.c), once the change is visible to new snapshots;
 *	- in any process that takes in a relcache invalidation of the table
 *	  (or a reset of its caches), as the per-backend copy did: DROP,
 *	  ALTER TABLE and the like; and again at the commit of such a
 *	  transaction if it wrote anything.
 * The backend that fills the copy records the table's OID and the
 * generation before it takes its snapshot, and publishes only if the
 * generation has not moved since; so a change committed after that
 * snapshot either stops the publication or invalidates it.  A transaction
 * that changed the table itself, a parallel operation (it cannot take a
 * new snapshot) and a hot standby (no trigger runs there) read the table
 * as before, without the shared copy.  Rows changed with the trigger
 * disabled (session_replication_role = replica, ALTER TABLE ... DISABLE
 * TRIGGER) are not announced until the trigger is enabled again (that
 * ALTER TABLE invalidates the table) or another change goes through it;
 * without the shared copy a new backend read them at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "igny8_ai.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(igny8_bound_account);
PG_FUNCTION_INFO_V1(igny8_account_roles_changed);

/* the cached answer for one role; valid until an invalidation */
static bool cache_valid = false;
static Oid	cached_table = InvalidOid;	/* igny8_account_roles, if found */
static Oid	cached_role = InvalidOid;
static bool cached_bound = false;
static int64 cached_account = 0;

/* rows of igny8_account_roles the shared copy holds at most */
#define IGNY8_SHARED_BINDINGS	1024

typedef struct Igny8Binding
{
	Oid			role;
	int64		account;
} Igny8Binding;

/* The copy of igny8_account_roles that every backend reads. */
typedef struct Igny8BindingsShared
{
	pg_atomic_uint32 table;		/* the table's OID, once a backend found it */
	slock_t		mutex;			/* guards the rest */
	Oid			database;		/* the database of that table */
	uint64		generation;		/* goes up with every change */
	uint64		filled;			/* the generation entries[] describe, or 0 */
	int			n;				/* -1: the table had more rows than fit */
	Igny8Binding entries[IGNY8_SHARED_BINDINGS];	/* sorted by role */
} Igny8BindingsShared;

static Igny8BindingsShared *bindings = NULL;

/* this transaction ran the table's trigger: it may see its own changes */
static bool xact_wrote_bindings = false;
/* this transaction took in an invalidation of the table */
static bool xact_saw_invalidation = false;
/* ... and had written something when it was about to commit */
static bool bump_at_commit = false;

void
igny8_account_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(Igny8BindingsShared)));
}

/* Called under AddinShmemInitLock. */
void
igny8_account_shmem_startup(void)
{
	bool		found;

	bindings = ShmemInitStruct("igny8_ai account bindings",
							   sizeof(Igny8BindingsShared), &found);
	if (!found)
	{
		pg_atomic_init_u32(&bindings->table, InvalidOid);
		SpinLockInit(&bindings->mutex);
		bindings->database = InvalidOid;
		bindings->generation = 1;
		bindings->filled = 0;
		bindings->n = 0;
	}
}

/* The shared copy is out of date: the next backend to ask fills it again. */
void
igny8_bindings_changed(void)
{
	if (bindings == NULL)
		return;
	SpinLockAcquire(&bindings->mutex);
	bindings->generation++;
	SpinLockRelease(&bindings->mutex);
}

static void
bindings_invalidated(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == cached_table)
		cache_valid = false;
	if (bindings != NULL &&
		(relid == InvalidOid ||
		 relid == (Oid) pg_atomic_read_u32(&bindings->table)))
	{
		cache_valid = false;
		igny8_bindings_changed();
		if (IsTransactionState())
			xact_saw_invalidation = true;
	}
}

static void
bindings_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			/* a DDL change of the table that wrote rows: announce it too */
			bump_at_commit = xact_wrote_bindings ||
				(xact_saw_invalidation &&
				 TransactionIdIsValid(GetTopTransactionIdIfAny()));
			return;
		case XACT_EVENT_COMMIT:
			/* the change is visible to new snapshots from now on */
			if (bump_at_commit)
				igny8_bindings_changed();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			/* COMMIT PREPARED announces it (extension.c), ROLLBACK never */
			break;
		default:
			return;
	}
	xact_wrote_bindings = false;
	xact_saw_invalidation = false;
	bump_at_commit = false;
}

/*
 * Called from _PG_init, in the postmaster: every process the server
 * starts has the callbacks, so that whichever takes in an invalidation of
 * the table invalidates the shared copy.
 */
void
igny8_account_init(void)
{
	CacheRegisterRelcacheCallback(bindings_invalidated, (Datum) 0);
	RegisterXactCallback(bindings_xact_callback, NULL);
}

static int
binding_cmp(const void *a, const void *b)
{
	Oid			ra = ((const Igny8Binding *) a)->role;
	Oid			rb = ((const Igny8Binding *) b)->role;

	return (ra > rb) - (ra < rb);
}

/*
 * May this backend use (and fill) the shared copy now?  Not under
 * SERIALIZABLE either: the fill reads the whole table, which would take a
 * predicate lock on all of it where the lookup takes one on the role's
 * index entry.
 */
static bool
shared_copy_usable(void)
{
	return bindings != NULL && !xact_wrote_bindings &&
		!IsInParallelMode() && !RecoveryInProgress() &&
		!IsolationIsSerializable();
}

/* What the shared copy says of a role (shared_lookup). */
typedef enum SharedAnswer
{
	SHARED_ANSWERED,			/* *bound and *account are set */
	SHARED_MISS,				/* not current: read the table, filling it */
	SHARED_UNUSABLE				/* look the role up in the table's index */
} SharedAnswer;

/*
 * The role's binding from the shared copy, if it is current.  A copy
 * current for a table with more rows than it holds (n < 0) sends every
 * backend to the table's index, as without the copy, rather than to read
 * the whole table again to fill it.
 */
static SharedAnswer
shared_lookup(Oid role, bool *bound, int64 *account)
{
	SharedAnswer answer = SHARED_MISS;
	Oid			table = InvalidOid;

	if (!shared_copy_usable())
		return SHARED_UNUSABLE;
	SpinLockAcquire(&bindings->mutex);
	if (bindings->filled != 0 && bindings->filled == bindings->generation &&
		bindings->database == MyDatabaseId)
	{
		if (bindings->n < 0)
			answer = SHARED_UNUSABLE;
		else
		{
			Igny8Binding key;
			Igny8Binding *hit;

			key.role = role;
			hit = bsearch(&key, bindings->entries, bindings->n,
						  sizeof(Igny8Binding), binding_cmp);
			*bound = (hit != NULL);
			if (hit)
				*account = hit->account;
			table = (Oid) pg_atomic_read_u32(&bindings->table);
			answer = SHARED_ANSWERED;
		}
	}
	SpinLockRelease(&bindings->mutex);
	if (answer == SHARED_ANSWERED)
		cached_table = table;
	return answer;
}

/*
 * The schema of the extension ext, or InvalidOid (PostgreSQL 15 exports
 * no such function).
 */
Oid
igny8_extension_namespace(Oid ext)
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

/*
 * Read a whole igny8_account_roles with a snapshot taken now, looking for
 * the role on the way; publish it as the shared copy if it fits and
 * nothing changed since generation gen was read (before the snapshot).
 */
static bool
fill_shared_copy(Relation rel, uint64 gen, Oid role, int64 *account)
{
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	Igny8Binding *rows = palloc(sizeof(Igny8Binding) * IGNY8_SHARED_BINDINGS);
	int			n = 0;
	bool		fits = true;
	bool		found = false;
	SysScanDesc scan;
	HeapTuple	tup;

	scan = systable_beginscan(rel, InvalidOid, false, snap, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		role_null;
		bool		account_null;
		Datum		r = heap_getattr(tup, 1, RelationGetDescr(rel), &role_null);
		Datum		a = heap_getattr(tup, 2, RelationGetDescr(rel), &account_null);

		if (role_null || account_null)
			continue;
		if (DatumGetObjectId(r) == role)
		{
			*account = DatumGetInt64(a);
			found = true;
		}
		if (n < IGNY8_SHARED_BINDINGS)
		{
			rows[n].role = DatumGetObjectId(r);
			rows[n].account = DatumGetInt64(a);
			n++;
		}
		else
			fits = false;
	}
	systable_endscan(scan);
	UnregisterSnapshot(snap);

	/*
	 * Too many rows: that is published instead, and until the table changes
	 * every backend looks its role up in the index, as without the copy.
	 */
	if (fits)
		qsort(rows, n, sizeof(Igny8Binding), binding_cmp);
	SpinLockAcquire(&bindings->mutex);
	if (bindings->generation == gen)
	{
		if (fits)
			memcpy(bindings->entries, rows, sizeof(Igny8Binding) * n);
		bindings->n = fits ? n : -1;
		bindings->filled = gen;
	}
	SpinLockRelease(&bindings->mutex);
	pfree(rows);
	return found;
}

/*
 * Look the role up in igny8_account_roles, bypassing the caches; fill the
 * shared copy on the way if fill.
 */
static bool
lookup_binding(Oid role, int64 *account, bool fill)
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
	uint64		gen = 0;

	cached_table = InvalidOid;
	ext = get_extension_oid("igny8_ai", true);
	if (!OidIsValid(ext))
		return false;
	nsp = igny8_extension_namespace(ext);
	if (!OidIsValid(nsp))
		return false;
	relid = get_relname_relid("igny8_account_roles", nsp);
	indexid = get_relname_relid("igny8_account_roles_pkey", nsp);
	if (!OidIsValid(relid) || !OidIsValid(indexid))
		return false;
	cached_table = relid;

	/*
	 * From here on an invalidation of the table moves the generation (the
	 * callback knows its OID), and a commit that changed it moves it too:
	 * both read before the snapshot is taken.
	 */
	if (fill)
	{
		SpinLockAcquire(&bindings->mutex);
		/*
		 * The copy is of one database's table (a database made from a
		 * template that had the extension has its own): another's copy
		 * gives way.
		 */
		if (bindings->database != MyDatabaseId)
		{
			bindings->database = MyDatabaseId;
			bindings->filled = 0;
			bindings->generation++;
		}
		pg_atomic_write_u32(&bindings->table, relid);
		gen = bindings->generation;
		SpinLockRelease(&bindings->mutex);
	}

	rel = table_open(relid, AccessShareLock);
	if (fill)
		found = fill_shared_copy(rel, gen, role, account);
	else
	{
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
	}
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * Is the role bound to an account?  If so, *account is set.  Needs a
 * transaction.
 *
 * Never in a worker: the workers take every account's jobs and sum every
 * budget's spend from ai_usage_log, whatever their role.  Bound (a binding
 * made before igny8_ai.username named the role, or written into the table
 * by hand: igny8_grant_usage refuses it), the policies would show them one
 * account's rows: the other accounts' jobs would stay queued and their
 * budgets would count nothing spent.
 */
bool
igny8_role_account(Oid role, int64 *account)
{
	if (igny8_worker_index >= 0)
		return false;
	if (!cache_valid || cached_role != role)
	{
		int64		a = 0;
		bool		bound = false;
		SharedAnswer answer;

		cache_valid = false;
		answer = shared_lookup(role, &bound, &a);
		if (answer != SHARED_ANSWERED)
			bound = lookup_binding(role, &a, answer == SHARED_MISS);
		cached_bound = bound;
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
	/* this transaction reads the table itself; its commit announces it */
	xact_wrote_bindings = true;
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}
