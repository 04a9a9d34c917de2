/*-------------------------------------------------------------------------
 *
 * gpuclock.c
 *	  The share of a box's time that each self-hosted attempt used, so that
 *	  the box's rent (igny8_fixed_costs) is charged to the attempts that ran
 *	  on it, and an hour in which several ran at once is paid for once.
 *
 * Each box has a processor-sharing clock in shared memory: S(t), the
 * integral of dt / n(t), where n(t) is the number of attempts running on
 * the box's providers at time t, across all workers (Ollama and ComfyUI
 * on one GPU count together).  An attempt that runs from t0 to t1 is
 * charged S(t1) - S(t0) seconds: alone, its duration; beside another for
 * its whole duration, half of it.  The shares of all attempts add up to
 * the time the box was busy.  Every start and end advances the clock and
 * changes n under one spinlock.  A reading never moves back: a worker
 * whose timestamp is older than the clock's last update advances nothing.
 * The clock of a box is the entry of the shared index of its first
 * provider (config.c).  A worker that exits takes its attempts off the
 * clocks (igny8_gpu_clock_forget_worker), as it gives back its places.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "igny8_ai.h"

/* Bring a clock to now.  Needs gpu_mutex. */
static void
advance_locked(Igny8GpuClock *c, TimestampTz now)
{
	if (now <= c->t)
		return;
	if (c->n > 0 && c->t != 0)
		c->s += (double) (now - c->t) / 1000000.0 / c->n;
	c->t = now;
}

/* An attempt of worker starts on clock: the clock's reading. */
double
igny8_gpu_clock_start(int worker, int clock, TimestampTz now)
{
	Igny8GpuClock *c = &igny8_shared->gpu_clocks[clock];
	double		s;

	SpinLockAcquire(&igny8_shared->gpu_mutex);
	advance_locked(c, now);
	c->n++;
	igny8_shared->workers[worker].gpu_running[clock]++;
	s = c->s;
	SpinLockRelease(&igny8_shared->gpu_mutex);
	return s;
}

/* An attempt of worker on clock ends: the clock's reading. */
double
igny8_gpu_clock_end(int worker, int clock, TimestampTz now)
{
	Igny8GpuClock *c = &igny8_shared->gpu_clocks[clock];
	double		s;

	SpinLockAcquire(&igny8_shared->gpu_mutex);
	advance_locked(c, now);
	s = c->s;
	if (igny8_shared->workers[worker].gpu_running[clock] > 0)
	{
		igny8_shared->workers[worker].gpu_running[clock]--;
		if (c->n > 0)
			c->n--;
	}
	SpinLockRelease(&igny8_shared->gpu_mutex);
	return s;
}

/* A worker exited, or starts after an exit: its attempts run no more. */
void
igny8_gpu_clock_forget_worker(int worker)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&igny8_shared->gpu_mutex);
	for (int i = 0; i < IGNY8_MAX_PROVIDERS; i++)
	{
		uint32		running = igny8_shared->workers[worker].gpu_running[i];

		if (running == 0)
			continue;
		advance_locked(&igny8_shared->gpu_clocks[i], now);
		igny8_shared->gpu_clocks[i].n -= Min((int) running,
											 igny8_shared->gpu_clocks[i].n);
		igny8_shared->workers[worker].gpu_running[i] = 0;
	}
	SpinLockRelease(&igny8_shared->gpu_mutex);
}
