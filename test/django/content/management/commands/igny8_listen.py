"""
manage.py igny8_listen: fill articles from their finished jobs.

LISTENs on igny8_ai_jobs, where every finished job sends {"id": N,
"state": "succeeded"} in the transaction that writes its result, and fills
the pending articles of each job from igny8_jobs.  At start, after LISTEN,
it catches up on the finished jobs whose articles are still pending: a
notification sent while no listener ran is not lost, and none sent during
the catch-up is either (the LISTEN came first; a job applied twice changes
nothing).

When its connection is lost (PostgreSQL restarted, the session
terminated) it connects again, 1 s later, then at growing intervals up to
30 s while that fails, and catches up the same way: the jobs that finished
meanwhile are applied then.  A connection that stays silent for 60 s is
checked with a query, so that one that died without a word is noticed.
Its session is named igny8_listen (application_name).

Runs until SIGTERM or SIGINT (then it exits 0 after the article it is on),
or as its options bound it:

  --once              catch up, then exit
  --until-idle N      exit once no notification came for N seconds
  --max-seconds N     exit after N seconds in all

Each line it prints is one event: "listening ...", "job N succeeded:
M article(s)", "connection lost: ...", "cannot connect: ...", "listening
... again ...", "stopped: ...".
"""
import json
import os
import select
import signal
import time

import psycopg2
from django.core.management.base import BaseCommand
from django.db import connection
from django.db.utils import InterfaceError, OperationalError

from content.models import Igny8Job
from content.services import (NOTIFY_CHANNEL, apply_job_result,
                              finished_jobs_of_pending_articles)

# What a lost connection raises: psycopg2's own errors on the raw
# connection (poll), Django's wrapped ones through the ORM.
LOST = (psycopg2.OperationalError, psycopg2.InterfaceError, OperationalError, InterfaceError)
SILENCE = 60.0          # seconds without a word before the connection is checked
MAX_DELAY = 30.0        # the longest wait between two attempts to reconnect


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
            # the first connection's failure is an error: a wrong setting
            # shows at once, and a service manager restarts the command
            caught_up = self._start_listening()
            self._say("listening on %s (caught up: %d article(s))" % (NOTIFY_CHANNEL, caught_up))
            if once:
                reason = "once"
            else:
                reason = self._listen(wake_r, start, until_idle, max_seconds)
            self._say("stopped: %s (%d article(s) filled)" % (reason, self.filled))
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            os.close(wake_r)
            os.close(wake_w)
            connection.close()      # and with the session, the LISTEN

    def _start_listening(self):
        """Connect, LISTEN, then catch up (in that order: nothing finished
        in between is missed); the number of articles the catch-up filled."""
        connection.ensure_connection()
        with connection.cursor() as cur:
            cur.execute("SET application_name = 'igny8_listen'")
            cur.execute("LISTEN " + NOTIFY_CHANNEL)
        return sum(self._apply(job) for job in finished_jobs_of_pending_articles())

    def _listen(self, wake_r, start, until_idle, max_seconds):
        last_event = time.monotonic()
        pg = connection.connection
        while True:
            if self.stop_signal is not None:
                return signal.Signals(self.stop_signal).name
            try:
                # what psycopg2 collected, also during our own queries
                if pg.notifies:
                    self._notified(pg.notifies.pop(0))
                    last_event = time.monotonic()
                    continue
                now = time.monotonic()
                waits = [SILENCE]
                if max_seconds is not None:
                    if now - start >= max_seconds:
                        return "max-seconds"
                    waits.append(start + max_seconds - now)
                if until_idle is not None:
                    if now - last_event >= until_idle:
                        return "idle"
                    waits.append(last_event + until_idle - now)
                wait = max(0.0, min(waits))
                ready, _, _ = select.select([pg, wake_r], [], [], wait)
                if wake_r in ready:
                    self._drain(wake_r)
                if pg in ready:
                    pg.poll()
                elif not ready and wait == SILENCE:
                    # a connection that died without a word (a cable, a
                    # firewall) shows only when used
                    with pg.cursor() as cur:
                        cur.execute("SELECT 1")
            except LOST as e:
                self._say("connection lost: %s" % _first_line(e))
                reason = self._reconnect(wake_r, start, max_seconds)
                if reason is not None:
                    return reason
                pg = connection.connection
                last_event = time.monotonic()

    def _reconnect(self, wake_r, start, max_seconds):
        """Connect again and catch up: None once listening again, else why
        it gave up (a signal, --max-seconds)."""
        delay = 1.0
        while True:
            try:
                connection.close()
            except LOST:
                pass            # it is gone already
            # wait, unless a signal comes or the time is up
            wait = delay
            if max_seconds is not None:
                left = start + max_seconds - time.monotonic()
                if left <= 0:
                    return "max-seconds"
                wait = min(wait, left)
            if self.stop_signal is None:
                ready, _, _ = select.select([wake_r], [], [], wait)
                if ready:
                    self._drain(wake_r)
            if self.stop_signal is not None:
                return signal.Signals(self.stop_signal).name
            if max_seconds is not None and time.monotonic() - start >= max_seconds:
                return "max-seconds"
            try:
                caught_up = self._start_listening()
            except LOST as e:
                delay = min(delay * 2, MAX_DELAY)
                self._say("cannot connect: %s; again in %.0f s" % (_first_line(e), delay))
                continue
            self._say("listening on %s again (caught up: %d article(s))"
                      % (NOTIFY_CHANNEL, caught_up))
            return None

    @staticmethod
    def _drain(wake_r):
        try:
            os.read(wake_r, 512)
        except BlockingIOError:
            pass

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


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
