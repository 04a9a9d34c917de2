/*-------------------------------------------------------------------------
 *
 * places.c
 *	  A provider's places: at most max_concurrent transfers to it at once,
 *	  across all workers, handed out in the order the requests asked.
 *
 * Each worker counts the places it holds in its own row of shared memory
 * (held[], guarded by the provider's mutex), and a provider's transfers in
 * flight are the sum over the workers.  A worker that exits, or starts
 * again after an exit, zeroes its row, so places held by a worker that
 * died are given back rather than leaked.
 *
 * A request that finds no free place joins the provider's wait queue, a
 * list threaded through the slots (wait_prev, wait_next), synchronous
 * calls ahead of the runs of submitted jobs; it may take a
 * place once it is among the first (max_concurrent - in flight) of the
 * queue.  Whoever frees a place wakes the workers of the requests that may
 * now take one.  A request leaves the queue when it takes a place, gives
 * up (its deployment's queue_timeout, the deadline, its caller), or its
 * worker exits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "igny8_ai.h"

/* Transfers in flight to a provider.  Needs the provider's mutex. */
static int
in_flight_locked(int provider)
{
	int			n = 0;

	for (int w = 0; w < igny8_shared->nworkers; w++)
		n += igny8_shared->workers[w].held[provider];
	return n;
}

/*
 * Add a slot to a provider's queue: a synchronous call goes after the
 * synchronous calls waiting, before the first run of a submitted job,
 * which goes last.  So the queue is the calls, then the runs, and
 * sync_tail keeps the last call: this is done in constant time, under a
 * spinlock, whatever the queue's length.  Needs the provider's mutex.
 */
static void
enqueue_locked(Igny8ProviderShared *p, int provider, int slotno)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	int			before = -1;	/* the slot it goes before, -1: the end */

	if (slot->job_id == 0)
	{
		before = (p->sync_tail >= 0) ?
			igny8_slots[p->sync_tail].wait_next : p->wait_head;
		p->sync_tail = slotno;
	}
	slot->wait_provider = provider;
	slot->wait_next = before;
	slot->wait_prev = (before >= 0) ? igny8_slots[before].wait_prev : p->wait_tail;
	if (slot->wait_prev >= 0)
		igny8_slots[slot->wait_prev].wait_next = slotno;
	else
		p->wait_head = slotno;
	if (before >= 0)
		igny8_slots[before].wait_prev = slotno;
	else
		p->wait_tail = slotno;
	p->nwaiting++;
}

/* Take a slot out of its provider's queue.  Needs the provider's mutex. */
static void
unlink_locked(Igny8ProviderShared *p, int slotno)
{
	Igny8Slot  *slot = &igny8_slots[slotno];

	/* the call before the last one is a call too, or there is none */
	if (p->sync_tail == slotno)
		p->sync_tail = slot->wait_prev;
	if (slot->wait_prev >= 0)
		igny8_slots[slot->wait_prev].wait_next = slot->wait_next;
	else
		p->wait_head = slot->wait_next;
	if (slot->wait_next >= 0)
		igny8_slots[slot->wait_next].wait_prev = slot->wait_prev;
	else
		p->wait_tail = slot->wait_prev;
	slot->wait_provider = -1;
	slot->wait_prev = slot->wait_next = -1;
	p->nwaiting--;
}

/*
 * The workers of the requests at the head of the queue that may take a
 * place now, as a bit mask.  Needs the provider's mutex.
 */
static uint64
waiters_to_wake_locked(Igny8ProviderShared *p, int provider)
{
	int			nfree = p->max_concurrent - in_flight_locked(provider);
	uint64		mask = 0;

	for (int s = p->wait_head; s >= 0 && nfree > 0; s = igny8_slots[s].wait_next)
	{
		int			w = igny8_slots[s].worker;

		if (w >= 0 && w < IGNY8_MAX_WORKERS)
			mask |= UINT64CONST(1) << w;
		nfree--;
	}
	return mask;
}

static void
wake_mask(uint64 mask)
{
	for (int w = 0; mask != 0; w++, mask >>= 1)
		if (mask & 1)
			igny8_wake_worker(w);
}

/*
 * Try to take a place on provider for slotno, on behalf of worker.  True
 * when taken (the caller must igny8_place_release it later).  Otherwise the
 * slot is (or stays) in the provider's queue, and its worker is woken when
 * its turn may have come.
 */
bool
igny8_place_take(int worker, int provider, int slotno)
{
	Igny8ProviderShared *p = &igny8_shared->providers[provider];
	Igny8Slot  *slot = &igny8_slots[slotno];
	bool		taken = false;
	int			nfree;
	int			pos = 0;

	/* a request waits on one provider at a time (see igny8_place_leave_queue) */
	Assert(slot->wait_provider < 0 || slot->wait_provider == provider);
	SpinLockAcquire(&p->mutex);
	nfree = p->max_concurrent - in_flight_locked(provider);
	/*
	 * Free places beyond those the queue's requests may take are a new
	 * request's to take (joining the queue, it would be among the first
	 * nfree, with nobody left to wake it).
	 */
	if (slot->wait_provider < 0 && nfree > p->nwaiting)
		taken = true;
	else
	{
		/*
		 * A synchronous call joins ahead of the jobs' runs, perhaps among
		 * the first nfree at once.
		 */
		if (slot->wait_provider < 0)
			enqueue_locked(p, provider, slotno);
		/* among the first nfree of the queue? */
		for (int s = p->wait_head; s >= 0 && pos < nfree;
			 s = igny8_slots[s].wait_next, pos++)
		{
			if (s == slotno)
			{
				taken = true;
				unlink_locked(p, slotno);
				break;
			}
		}
	}
	if (taken)
		igny8_shared->workers[worker].held[provider]++;
	SpinLockRelease(&p->mutex);
	return taken;
}

/* Take a slot out of whatever wait queue it is in, if any. */
void
igny8_place_leave_queue(int slotno)
{
	Igny8Slot  *slot = &igny8_slots[slotno];
	int			provider = slot->wait_provider;
	Igny8ProviderShared *p;
	uint64		mask = 0;

	/* only the slot's own worker puts it in or takes it out of a queue */
	if (provider < 0)
		return;
	p = &igny8_shared->providers[provider];
	SpinLockAcquire(&p->mutex);
	if (slot->wait_provider == provider)
	{
		unlink_locked(p, slotno);
		/* those behind it may move up into a free place */
		mask = waiters_to_wake_locked(p, provider);
	}
	SpinLockRelease(&p->mutex);
	wake_mask(mask);
}

/* Give back a place worker held on provider; wake whoever may take it. */
void
igny8_place_release(int worker, int provider)
{
	Igny8ProviderShared *p = &igny8_shared->providers[provider];
	uint64		mask;

	SpinLockAcquire(&p->mutex);
	if (igny8_shared->workers[worker].held[provider] > 0)
		igny8_shared->workers[worker].held[provider]--;
	mask = waiters_to_wake_locked(p, provider);
	SpinLockRelease(&p->mutex);
	wake_mask(mask);
}

/* The configuration says how many places a provider has. */
void
igny8_place_set_max(int provider, int max_concurrent)
{
	Igny8ProviderShared *p = &igny8_shared->providers[provider];
	uint64		mask = 0;

	SpinLockAcquire(&p->mutex);
	if (p->max_concurrent != max_concurrent)
	{
		p->max_concurrent = max_concurrent;
		mask = waiters_to_wake_locked(p, provider);
	}
	SpinLockRelease(&p->mutex);
	wake_mask(mask);
}

/*
 * A worker exited, or starts after an exit: give back every place it held
 * and take its requests out of the wait queues.  Its configurations are
 * gone too: they no longer keep providers' entries (health.c).
 */
void
igny8_places_forget_worker(int worker)
{
	SpinLockAcquire(&igny8_shared->providers_mutex);
	memset(igny8_shared->workers[worker].configs, 0,
		   sizeof(igny8_shared->workers[worker].configs));
	SpinLockRelease(&igny8_shared->providers_mutex);

	for (int i = 0; i < IGNY8_MAX_PROVIDERS; i++)
	{
		Igny8ProviderShared *p = &igny8_shared->providers[i];
		uint64		mask;

		SpinLockAcquire(&p->mutex);
		igny8_shared->workers[worker].held[i] = 0;
		for (int s = p->wait_head; s >= 0;)
		{
			int			next = igny8_slots[s].wait_next;

			if (igny8_slots[s].worker == worker)
				unlink_locked(p, s);
			s = next;
		}
		mask = waiters_to_wake_locked(p, i);
		SpinLockRelease(&p->mutex);
		wake_mask(mask & ~(UINT64CONST(1) << worker));
	}
}

int
igny8_place_in_flight(int provider)
{
	Igny8ProviderShared *p = &igny8_shared->providers[provider];
	int			n;

	SpinLockAcquire(&p->mutex);
	n = in_flight_locked(provider);
	SpinLockRelease(&p->mutex);
	return n;
}

int
igny8_place_waiting(int provider)
{
	Igny8ProviderShared *p = &igny8_shared->providers[provider];
	int			n;

	SpinLockAcquire(&p->mutex);
	n = p->nwaiting;
	SpinLockRelease(&p->mutex);
	return n;
}
