"""
The platform's AI calls, through igny8_ai.

AIEngineRouter replaces the class of that name that called LiteLLM and the
OpenAI SDK from Python: the routing, retries, fallbacks, usage log and
health checks are the extension's now, and the application calls it with
raw SQL on Django's own connection (django.db.connection), so that a call
takes part in the caller's transaction and Django maps its errors
(DataError, ProgrammingError, InternalError, OperationalError).

Two ways to call:

  - synchronous (generate_text, chat, generate_image): the statement
    returns with the answer; the request is made and logged even if the
    caller's transaction rolls back;
  - jobs (submit_text, submit_chat, submit_image, submit_batch): the
    statement returns a job id at once; the job is a row of igny8_jobs
    that runs once the transaction commits, and not at all if it rolls
    back.  job(), wait() and cancel() follow it; each finished job sends
    NOTIFY igny8_ai_jobs (the igny8_listen command acts on those).
"""
import datetime
import json

from django.db import connection, transaction

from .models import Article, Igny8Job

NOTIFY_CHANNEL = "igny8_ai_jobs"


def _rows(sql, params=()):
    with connection.cursor() as cur:
        cur.execute(sql, params)
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def _one(sql, params=()):
    rows = _rows(sql, params)
    return rows[0] if rows else None


def _options(options):
    """The options jsonb: keys with None values left out, intervals in seconds."""
    out = {}
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, datetime.timedelta):
            value = value.total_seconds()
        elif isinstance(value, datetime.datetime):
            value = value.isoformat()
        out[key] = value
    return json.dumps(out)


def _interval(seconds):
    if seconds is None or isinstance(seconds, datetime.timedelta):
        return seconds
    return datetime.timedelta(seconds=seconds)


class AIEngineRouter:
    """Text, chat and images through igny8_ai; every method is one statement."""

    def __init__(self, text_model="gpt-4", image_model="dall-e-3", account_id=None):
        self.text_model = text_model
        self.image_model = image_model
        self.account_id = account_id

    # --- synchronous calls ---------------------------------------------------

    def generate_text(self, prompt, model=None, max_tokens=None, temperature=None,
                      system=None, timeout=None, account_id=None):
        """The text only (igny8_generate_text)."""
        named = {"max_tokens": max_tokens, "temperature": temperature, "system": system,
                 "timeout": _interval(timeout),
                 "account_id": account_id if account_id is not None else self.account_id}
        named = {k: v for k, v in named.items() if v is not None}
        args = "".join(", %s => %%s" % k for k in named)
        with connection.cursor() as cur:
            cur.execute("SELECT igny8_generate_text(%s, %s" + args + ")",
                        [prompt, model or self.text_model] + list(named.values()))
            return cur.fetchone()[0]

    def chat(self, messages, model=None, **options):
        """igny8_chat: a dict of its columns (content, provider, cost, request_id, ...)."""
        return _one("SELECT * FROM igny8_chat(%s::jsonb, %s, %s::jsonb)",
                    [json.dumps(messages), model or self.text_model,
                     self._options(options)])

    def generate_image(self, prompt, model=None, size="1024x1024", **options):
        """igny8_generate_image: a dict; "image" is the file's bytes."""
        row = _one("SELECT * FROM igny8_generate_image(%s, %s, %s, %s::jsonb)",
                   [prompt, model or self.image_model, size, self._options(options)])
        row["image"] = bytes(row["image"])
        return row

    # --- jobs -------------------------------------------------------------------

    def submit_text(self, prompt, model=None, **options):
        """A text job's id (igny8_submit_text); it runs once the transaction commits."""
        return self._scalar("SELECT igny8_submit_text(%s, %s, %s::jsonb)",
                            [prompt, model or self.text_model, self._options(options)])

    def submit_chat(self, messages, model=None, **options):
        return self._scalar("SELECT igny8_submit_chat(%s::jsonb, %s, %s::jsonb)",
                            [json.dumps(messages), model or self.text_model,
                             self._options(options)])

    def submit_image(self, prompt, model=None, size="1024x1024", **options):
        return self._scalar("SELECT igny8_submit_image(%s, %s, %s, %s::jsonb)",
                            [prompt, model or self.image_model, size,
                             self._options(options)])

    def submit_batch(self, prompts, model=None, **options):
        """One text job a prompt: their ids, in the prompts' order."""
        return self._scalar("SELECT igny8_submit_batch(%s::text[], %s, %s::jsonb)",
                            [list(prompts), model or self.text_model,
                             self._options(options)])

    def job(self, job_id):
        """igny8_job: a dict of the job's state and result.  A job the role
        does not see (another role's, never committed, or deleted after
        igny8_ai.job_retention) is a ProgrammingError ("job N does not exist")."""
        return self._job(_one("SELECT * FROM igny8_job(%s)", [job_id]))

    def wait(self, job_id, timeout=None):
        """igny8_wait_job: the job once finished, or as it is when timeout
        (seconds or a timedelta) has passed; the caller checks "state"."""
        return self._job(_one("SELECT * FROM igny8_wait_job(%s, %s)",
                              [job_id, _interval(timeout)]))

    def cancel(self, job_id):
        """igny8_cancel_job: True if the job was still queued or running."""
        return self._scalar("SELECT igny8_cancel_job(%s)", [job_id])

    # --- helpers ------------------------------------------------------------------

    def _options(self, options):
        if self.account_id is not None:
            options.setdefault("account_id", self.account_id)
        return _options(options)

    @staticmethod
    def _scalar(sql, params):
        with connection.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]

    @staticmethod
    def _job(row):
        if row is None or row.get("id") is None:
            return None
        if row.get("image") is not None:
            row["image"] = bytes(row["image"])
        return row


def generate_article_content(article_title, model="gpt-4", router=None, **options):
    """
    Save a pending Article and submit the job that writes its body, in one
    transaction: the job exists, and runs, only if the article does.  Inside
    an outer atomic block the job waits for the outer commit (and is gone
    with an outer rollback).  Returns the article; igny8_listen fills it in.
    """
    router = router or AIEngineRouter()
    options.setdefault("system", "You write clear, factual articles for a content platform.")
    with transaction.atomic():
        article = Article.objects.create(title=article_title, status=Article.PENDING)
        # submitting the same article twice gives the same job
        options.setdefault("idempotency_key", "article-%d" % article.pk)
        article.ai_job_id = router.submit_text(
            "Write an article titled: %s" % article_title, model, **options)
        article.save(update_fields=["ai_job_id"])
    return article


def apply_job_result(job):
    """
    Fill the pending articles of a finished job (an Igny8Job) from its
    result; returns how many were filled.  One UPDATE, of pending rows only:
    applying a job twice (a notification and the catch-up) changes nothing.
    """
    if job.state not in Igny8Job.FINISHED:
        return 0
    fields = {"ai_provider": job.provider, "ai_cost": job.cost,
              "ai_generation_time": (job.duration_ms / 1000.0
                                     if job.duration_ms is not None else None)}
    if job.state == Igny8Job.SUCCEEDED:
        fields.update(status=Article.GENERATED, body=job.content)
    else:
        fields.update(status=Article.FAILED)
    return Article.objects.filter(ai_job_id=job.id, status=Article.PENDING).update(**fields)


def finished_jobs_of_pending_articles():
    """The finished jobs whose articles are still pending (what a listener
    that was not running has missed)."""
    pending = Article.objects.filter(status=Article.PENDING, ai_job_id__isnull=False)
    return (Igny8Job.objects.defer("image", "request")
            .filter(id__in=pending.values("ai_job_id"), state__in=Igny8Job.FINISHED)
            .order_by("id"))


def store_image(data, name, storage=None):
    """Keep an image's bytes in a file storage (default: MEDIA_ROOT's);
    returns the name it was saved under."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    return (storage or default_storage).save(name, ContentFile(bytes(data)))
