#!/usr/bin/python3
"""
The example application end to end: articles whose bodies igny8_ai jobs
write, filled in by the igny8_listen command, against a throwaway server
and the simulator (test/suites/django_app sets them up).

Environment: IGNY8_PGHOST, IGNY8_PGPORT, IGNY8_PGDATABASE, IGNY8_PGUSER
(the application's role, not a superuser: it sees its own jobs only),
IGNY8_MEDIA_ROOT, IGNY8_SIM_STATE (the simulator's state directory).

Every wait is for a confirmed state (a job finished, an article filled, a
line the listener printed), polled under a deadline.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "igny8_example.settings")
import django  # noqa: E402

django.setup()

import psycopg2  # noqa: E402
import simctl  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.files.storage import FileSystemStorage  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.utils import ProgrammingError  # noqa: E402

from content.models import AIUsageLog, Article, Igny8Job, ServiceHealthLog  # noqa: E402
from content.services import (AIEngineRouter, generate_article_content,  # noqa: E402
                              store_image)

MANAGE = os.path.join(HERE, "manage.py")
DEADLINE = 60           # seconds, for anything to happen
SIM_PORTS = simctl.load_ports(os.environ["IGNY8_SIM_STATE"])
ANSWER = "ollama qwen3:32b: Clouds are visible masses of water droplets."
router = AIEngineRouter()


def setUpModule():
    call_command("migrate", verbosity=0)


def sim_requests(tag):
    """The requests the simulator got that carry [[sim any:tag=TAG]]."""
    return simctl.control(SIM_PORTS, "GET", "/log", {"tag": tag})


def wait_for(what, probe, timeout=DEADLINE):
    """probe() until it gives something true; that, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("not within %ss: %s" % (timeout, what))
        time.sleep(0.1)


def other_connection(user=None):
    """A second session (psycopg2, autocommit), as the application's role
    or as USER."""
    db = settings.DATABASES["default"]
    conn = psycopg2.connect(host=db["HOST"], port=db["PORT"], dbname=db["NAME"],
                            user=user or db["USER"])
    conn.autocommit = True
    return conn


def finished(job_id):
    job = router.wait(job_id, 30)
    assert job is not None, "job %d not visible" % job_id
    assert job["state"] in Igny8Job.FINISHED, "job %d still %s" % (job_id, job["state"])
    return job


class Listener:
    """manage.py igny8_listen ARGS as a subprocess, its output in a file;
    stopped (SIGTERM, then SIGKILL) at the latest when the test ends."""

    def __init__(self, test, *args):
        self.out = tempfile.NamedTemporaryFile("w+", prefix="igny8_listen.", delete=False)
        test.addCleanup(os.unlink, self.out.name)
        self.proc = subprocess.Popen([sys.executable, MANAGE, "igny8_listen"] + list(args),
                                     stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT)
        test.addCleanup(self.kill)

    def output(self):
        with open(self.out.name) as f:
            return f.read()

    def wait_line(self, start):
        """The first line that starts with START; fails if the listener ends first."""
        def probe():
            for line in self.output().splitlines():
                if line.startswith(start):
                    return line
            if self.proc.poll() is not None:
                raise AssertionError("igny8_listen exited (%s) before %r:\n%s"
                                     % (self.proc.returncode, start, self.output()))
            return None
        return wait_for("igny8_listen printing %r" % start, probe)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


def pending(*articles):
    return Article.objects.filter(pk__in=[a.pk for a in articles], status=Article.PENDING)


class ExampleAppTest(unittest.TestCase):

    def assert_filled_from_job(self, article):
        article.refresh_from_db()
        job = Igny8Job.objects.get(id=article.ai_job_id)
        self.assertEqual(job.state, Igny8Job.SUCCEEDED)
        self.assertEqual(article.status, Article.GENERATED)
        self.assertEqual(article.body, ANSWER)
        self.assertEqual(article.body, job.content)
        self.assertEqual(article.ai_provider, "self_hosted_ai")
        self.assertIsNotNone(article.ai_cost)
        self.assertEqual(article.ai_cost, job.cost)
        self.assertGreater(article.ai_generation_time, 0)
        self.assertAlmostEqual(article.ai_generation_time, job.duration_ms / 1000.0)

    def test_a_job_runs_only_once_its_transaction_commits(self):
        other = other_connection()
        self.addCleanup(other.close)
        with transaction.atomic():
            article = generate_article_content("Harbour clouds [[sim any:tag=commit1]]")
            self.assertIsNotNone(article.ai_job_id)
            # meanwhile another session's job is submitted and runs to the end
            with other.cursor() as cur:
                cur.execute("SELECT igny8_submit_text('Meanwhile [[sim any:tag=commit1b]]')")
                other_id = cur.fetchone()[0]
                cur.execute("SELECT state FROM igny8_wait_job(%s, '30s')", [other_id])
                self.assertEqual(cur.fetchone()[0], "succeeded")
                # the uncommitted one is neither visible nor sent
                cur.execute("SELECT count(*) FROM igny8_jobs WHERE id = %s", [article.ai_job_id])
                self.assertEqual(cur.fetchone()[0], 0)
            self.assertEqual(sim_requests("commit1"), [])
            self.assertEqual(router.job(article.ai_job_id)["state"], Igny8Job.QUEUED)
        self.assertEqual(finished(article.ai_job_id)["state"], Igny8Job.SUCCEEDED)
        self.assertEqual(len(sim_requests("commit1")), 1)

    def test_a_rolled_back_submission_sends_nothing(self):
        class Rollback(Exception):
            pass

        with self.assertRaises(Rollback):
            with transaction.atomic():
                article = generate_article_content("Rolled back [[sim any:tag=rolledback1]]")
                job_id = article.ai_job_id
                raise Rollback()
        self.assertFalse(Article.objects.filter(pk=article.pk).exists())
        with self.assertRaisesRegex(ProgrammingError, "job %d does not exist" % job_id):
            router.job(job_id)
        self.assertFalse(Igny8Job.objects.filter(id=job_id).exists())
        # a job submitted after it runs to the end; the rolled-back one never ran
        later = generate_article_content("After the rollback [[sim any:tag=rolledback1b]]")
        self.assertEqual(finished(later.ai_job_id)["state"], Igny8Job.SUCCEEDED)
        self.assertEqual(len(sim_requests("rolledback1b")), 1)
        self.assertEqual(sim_requests("rolledback1"), [])

    def test_listener_fills_articles_and_catches_up(self):
        # finished while no listener ran: the listener's catch-up fills it
        missed = generate_article_content("Missed while nobody listened")
        self.assertEqual(finished(missed.ai_job_id)["state"], Igny8Job.SUCCEEDED)
        missed.refresh_from_db()
        self.assertEqual(missed.status, Article.PENDING)

        listener = Listener(self, "--max-seconds", str(4 * DEADLINE))
        listener.wait_line("listening on igny8_ai_jobs")
        # the catch-up comes before "listening"
        self.assert_filled_from_job(missed)

        # while it listens: three articles, and one whose job fails
        articles = [generate_article_content(t) for t in
                    ("Cumulus", "Stratus", "Cirrus [[sim ollama:delay=0.5]]")]
        failing = generate_article_content("Nothing works [[sim any:status=404]]",
                                           max_attempts=1)
        wait_for("the articles filled by the listener",
                 lambda: not pending(*articles, failing).exists())
        for article in articles:
            self.assert_filled_from_job(article)
        failing.refresh_from_db()
        self.assertEqual(failing.status, Article.FAILED)
        self.assertIsNone(failing.body)
        self.assertEqual(Igny8Job.objects.get(id=failing.ai_job_id).state, Igny8Job.FAILED)

        self.assertEqual(listener.stop(), 0)
        out = listener.output()
        for article in [missed] + articles:
            self.assertIn("job %d succeeded: 1 article(s)" % article.ai_job_id, out)
        self.assertIn("job %d failed: 1 article(s)" % failing.ai_job_id, out)
        self.assertRegex(out.splitlines()[-1], r"^stopped: SIGTERM \(\d+ article\(s\) filled\)$")

    def test_listener_reconnects_and_catches_up(self):
        # the listener's session ends (a server restart, pg_terminate_backend)
        # and it may not log in again for a while: a job that finishes
        # meanwhile is applied once it is back
        admin = other_connection("postgres")
        self.addCleanup(admin.close)
        role = settings.DATABASES["default"]["USER"]
        listener = Listener(self, "--max-seconds", str(4 * DEADLINE))
        listener.wait_line("listening on igny8_ai_jobs")

        def sql(query, params=()):
            with admin.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else None

        with connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            own_pid = cur.fetchone()[0]
        sql("ALTER ROLE %s NOLOGIN" % role)
        self.addCleanup(sql, "ALTER ROLE %s LOGIN" % role)
        # the role's sessions: this test's and the listener's
        self.assertEqual(sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE usename = %s AND pid <> %s", [role, own_pid]), [(True,)])
        listener.wait_line("connection lost: ")
        # it tried again, and was refused: it is not listening now
        listener.wait_line("cannot connect: ")
        article = generate_article_content("While the listener was away")
        self.assertEqual(finished(article.ai_job_id)["state"], Igny8Job.SUCCEEDED)
        article.refresh_from_db()
        self.assertEqual(article.status, Article.PENDING)

        sql("ALTER ROLE %s LOGIN" % role)
        self.assertRegex(listener.wait_line("listening on igny8_ai_jobs again"),
                         r"^listening on igny8_ai_jobs again \(caught up: [1-9]\d* article\(s\)\)$")
        # applied by the catch-up, which comes before that line
        out = listener.output()
        self.assertLess(out.index("job %d succeeded: 1 article(s)" % article.ai_job_id),
                        out.index("listening on igny8_ai_jobs again"))
        self.assert_filled_from_job(article)
        # its new session is named, for pg_stat_activity
        self.assertEqual(sql("SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
                             " AND application_name = 'igny8_listen'", [role]), [(1,)])
        # and it listens: a job finished now is applied from its notification
        later = generate_article_content("After the listener came back")
        wait_for("the article filled by the listener", lambda: not pending(later).exists())
        self.assert_filled_from_job(later)
        self.assertEqual(listener.stop(), 0)
        self.assertIn("job %d succeeded: 1 article(s)" % later.ai_job_id, listener.output())

    def test_listener_once_catches_up_and_exits(self):
        article = generate_article_content("Once")
        finished(article.ai_job_id)
        run = subprocess.run([sys.executable, MANAGE, "igny8_listen", "--once"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=DEADLINE)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("job %d succeeded: 1 article(s)" % article.ai_job_id, run.stdout)
        self.assertRegex(run.stdout.splitlines()[-1], r"^stopped: once \(\d+ article\(s\) filled\)$")
        self.assert_filled_from_job(article)

    def test_listener_until_idle_and_max_seconds(self):
        for args, reason in ((["--until-idle", "0.5"], "idle"),
                             (["--max-seconds", "0.5"], "max-seconds")):
            run = subprocess.run([sys.executable, MANAGE, "igny8_listen"] + args,
                                 stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=DEADLINE)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            self.assertRegex(run.stdout.splitlines()[-1], r"^stopped: %s " % reason)

    def test_image_job_saved_to_file_storage(self):
        job_id = router.submit_image("A red bicycle, product photo", "dall-e-3", "768x512",
                                     seed=7, account_id=42)
        job = finished(job_id)
        self.assertEqual(job["state"], Igny8Job.SUCCEEDED, job.get("error_message"))
        self.assertEqual((job["kind"], job["width"], job["height"], job["seed"]),
                         ("image", 768, 512, 7))
        self.assertEqual((job["provider"], job["model"]), ("comfyui", "flux1-dev"))
        data = job["image"]
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual((int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")),
                         (768, 512))
        storage = FileSystemStorage(location=settings.MEDIA_ROOT)
        name = store_image(data, "products/bicycle-job-%d.png" % job_id, storage)
        with storage.open(name, "rb") as f:
            self.assertEqual(f.read(), data)
        # the same bytes through the unmanaged model
        self.assertEqual(bytes(Igny8Job.objects.get(id=job_id).image), data)
        self.assertEqual(
            list(AIUsageLog.objects.filter(request_id=job["request_id"], success=True)
                 .values_list("task_type", "account_id", "images", "image_width",
                              "image_height")),
            [("image", 42, 1, 768, 512)])

    def test_router_calls(self):
        self.assertEqual(router.generate_text("Write about clouds"), ANSWER)
        self.assertEqual(router.generate_text("Short [[sim ollama:reply=one_two_three_four]]",
                                              max_tokens=3, timeout=30, system="Be brief."),
                         "ollama qwen3:32b: one")
        chat = router.chat([{"role": "user", "content": "Clouds"}], "gpt-3.5-turbo")
        self.assertEqual((chat["provider"], chat["model"]), ("self_hosted_ai", "qwen3:14b"))

        chat_job = finished(router.submit_chat(
            [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "A tagline"}], "gpt-3.5-turbo"))
        self.assertEqual((chat_job["state"], chat_job["kind"]), ("succeeded", "chat"))
        self.assertEqual(chat_job["model"], "qwen3:14b")

        ids = router.submit_batch(["One", "Two", "Three"])
        self.assertEqual(len(ids), 3)
        self.assertEqual([finished(i)["content"] for i in ids], [ANSWER] * 3)

        slow = router.submit_text("Slow [[sim ollama:delay=30]]", max_attempts=1)
        wait_for("the slow job running", lambda: router.job(slow)["state"] == "running")
        self.assertTrue(router.cancel(slow))
        self.assertEqual(finished(slow)["state"], Igny8Job.CANCELLED)
        self.assertFalse(router.cancel(slow))

    def test_unmanaged_models(self):
        article = generate_article_content("Usage")
        job = finished(article.ai_job_id)
        usage = AIUsageLog.objects.get(request_id=job["request_id"])
        self.assertEqual((usage.task_type, usage.provider, usage.success),
                         ("text", "self_hosted_ai", True))
        self.assertEqual(usage.cost, job["cost"])
        # the suite ran a health check before
        self.assertTrue(ServiceHealthLog.objects.filter(provider="self_hosted_ai").exists())

    def test_other_roles_jobs_are_not_seen(self):
        conn = other_connection("postgres")
        self.addCleanup(conn.close)
        with conn.cursor() as cur:
            cur.execute("SELECT igny8_submit_text('Not yours')")
            job_id = cur.fetchone()[0]
            cur.execute("SELECT state FROM igny8_wait_job(%s, '30s')", [job_id])
            self.assertEqual(cur.fetchone()[0], "succeeded")
        self.assertFalse(Igny8Job.objects.filter(id=job_id).exists())


if __name__ == "__main__":
    unittest.main(verbosity=2)
