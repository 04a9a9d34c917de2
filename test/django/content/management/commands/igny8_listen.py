"""
manage.py igny8_listen: fill articles from their finished jobs.

LISTENs on igny8_ai_jobs, where every finished job sends {"id": N,
"state": "succeeded"} in the transaction that writes its result, and fills
the pending articles of each job from igny8_jobs.  At start, after LISTEN,
it catches up on the finished jobs whose articles are still pending: a
notification sent while no listener ran is not lost, and none sent during
the catch-up is either (the LISTEN came first; a job applied twice changes
nothing).

Runs until SIGTERM or SIGINT (then it exits 0 after the article it is on),
or as its options bound it:

  --once              catch up, then exit
  --until-idle N      exit once no notification came for N seconds
  --max-seconds N     exit after N seconds in all

Each line it prints is one event: "listening ...", "job N succeeded:
M article(s)", "stopped: ...".
"""
import json
import os
import select
import signal
import time

from django.core.management.base import BaseCommand
from django.db import connection

from content.models import Igny8Job
from content.services import (NOTIFY_CHANNEL, apply_job_result,
                              finished_jobs_of_pending_articles)


class Command(BaseCommand):
    help = "Fill articles from their finished igny8_ai jobs (LISTEN igny8_ai_jobs)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true",
                            help="catch up on finished jobs of pending articles, then exit")
        parser.add_argument("--until-idle", type=float, metavar="SECONDS",
                            help="exit once no notification came for SECONDS")
        parser.add_argument("--max-seconds", type=float, metavar="SECONDS",
                            help="exit after SECONDS in all")

    def handle(self, *args, once=False, until_idle=None, max_seconds=None, **options):
        self.filled = 0
        self.stop_signal = None
        start = time.monotonic()
        # a signal makes the wake-up pipe readable, so that select returns at
        # once; the handler only notes it, the loop ends after the current job
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        old_handlers = {s: signal.signal(s, self._on_signal)
                        for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            connection.ensure_connection()
            with connection.cursor() as cur:
                cur.execute("LISTEN " + NOTIFY_CHANNEL)
            caught_up = sum(self._apply(job) for job in finished_jobs_of_pending_articles())
            self._say("listening on %s (caught up: %d article(s))" % (NOTIFY_CHANNEL, caught_up))
            if once:
                reason = "once"
            else:
                reason = self._listen(connection.connection, wake_r, start,
                                      until_idle, max_seconds)
            self._say("stopped: %s (%d article(s) filled)" % (reason, self.filled))
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            os.close(wake_r)
            os.close(wake_w)
            connection.close()      # and with the session, the LISTEN

    def _listen(self, pg, wake_r, start, until_idle, max_seconds):
        last_event = time.monotonic()
        while True:
            if self.stop_signal is not None:
                return signal.Signals(self.stop_signal).name
            # what psycopg2 collected, also during our own queries
            if pg.notifies:
                self._notified(pg.notifies.pop(0))
                last_event = time.monotonic()
                continue
            now = time.monotonic()
            waits = [60.0]
            if max_seconds is not None:
                if now - start >= max_seconds:
                    return "max-seconds"
                waits.append(start + max_seconds - now)
            if until_idle is not None:
                if now - last_event >= until_idle:
                    return "idle"
                waits.append(last_event + until_idle - now)
            ready, _, _ = select.select([pg, wake_r], [], [], max(0.0, min(waits)))
            if wake_r in ready:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
            if pg in ready:
                pg.poll()

    def _notified(self, notify):
        try:
            job_id = int(json.loads(notify.payload)["id"])
        except (ValueError, KeyError, TypeError):
            self._say("ignored a notification: %r" % notify.payload)
            return
        job = Igny8Job.objects.defer("image", "request").filter(id=job_id).first()
        if job is not None:       # another role's job is not visible (RLS)
            self._apply(job)

    def _apply(self, job):
        n = apply_job_result(job)
        if n:
            self.filled += n
            self._say("job %d %s: %d article(s)" % (job.id, job.state, n))
        return n

    def _on_signal(self, signum, frame):
        self.stop_signal = signum

    def _say(self, line):
        self.stdout.write(line)
        self.stdout.flush()
