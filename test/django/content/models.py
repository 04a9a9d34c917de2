"""
The platform's Article, and the tables igny8_ai owns, seen from Django.

The extension's tables are unmanaged (managed = False): migrate never
creates, alters or drops them, and the application only reads them; the
extension writes them.  Their primary keys are the tables' own bigint ids.
"""
from django.db import models


class Article(models.Model):
    """An article whose body igny8_ai writes (through a job, see services)."""

    DRAFT = "draft"
    PENDING = "pending"        # a job was submitted; its result is not in yet
    GENERATED = "generated"
    FAILED = "failed"
    STATUSES = [(s, s) for s in (DRAFT, PENDING, GENERATED, FAILED)]

    title = models.CharField(max_length=300)
    body = models.TextField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=STATUSES, default=DRAFT)
    ai_provider = models.CharField(max_length=100, null=True, blank=True)
    ai_cost = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    ai_generation_time = models.FloatField(null=True, blank=True,
                                           help_text="seconds")
    ai_job_id = models.BigIntegerField(null=True, blank=True, db_index=True)

    class Meta:
        db_table = "content_article"

    def __str__(self):
        return self.title


class AIUsageLog(models.Model):
    """ai_usage_log: one row per attempt of every call."""

    id = models.BigIntegerField(primary_key=True)
    request_id = models.UUIDField()
    created_at = models.DateTimeField()
    account_id = models.BigIntegerField(null=True)
    provider = models.TextField()
    task_type = models.TextField()
    model_alias = models.TextField()
    model_used = models.TextField(null=True)
    input_tokens = models.IntegerField()
    output_tokens = models.IntegerField()
    cost = models.DecimalField(max_digits=14, decimal_places=6)
    duration_ms = models.FloatField(null=True)
    http_status = models.IntegerField(null=True)
    success = models.BooleanField()
    error_message = models.TextField(null=True)
    attempt = models.IntegerField()
    prompt = models.TextField(null=True)
    response = models.TextField(null=True)
    images = models.IntegerField(null=True)
    image_width = models.IntegerField(null=True)
    image_height = models.IntegerField(null=True)
    steps = models.IntegerField(null=True)

    class Meta:
        managed = False
        db_table = "ai_usage_log"


class ServiceHealthLog(models.Model):
    """service_health_log: one row per provider per health check."""

    id = models.BigIntegerField(primary_key=True)
    checked_at = models.DateTimeField()
    provider = models.TextField()
    healthy = models.BooleanField()
    state = models.TextField()
    latency_ms = models.FloatField(null=True)
    http_status = models.IntegerField(null=True)
    detail = models.JSONField()

    class Meta:
        managed = False
        db_table = "service_health_log"


class Igny8Job(models.Model):
    """igny8_jobs: the submitted jobs (row-level security: a role sees its own)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINISHED = (SUCCEEDED, FAILED, CANCELLED)

    id = models.BigIntegerField(primary_key=True)
    kind = models.TextField()
    state = models.TextField()
    model_alias = models.TextField()
    request = models.JSONField()
    account_id = models.BigIntegerField(null=True)
    # regrole: read as its name
    submitted_by = models.TextField()
    priority = models.TextField()
    not_before = models.DateTimeField(null=True)
    max_attempts = models.IntegerField()
    attempts = models.IntegerField()
    timeout_ms = models.IntegerField(null=True)
    idempotency_key = models.TextField(null=True)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    cancel_requested = models.BooleanField()
    request_id = models.UUIDField(null=True)
    provider = models.TextField(null=True)
    model = models.TextField(null=True)
    content = models.TextField(null=True)
    thinking = models.TextField(null=True)
    finish_reason = models.TextField(null=True)
    input_tokens = models.IntegerField(null=True)
    output_tokens = models.IntegerField(null=True)
    image = models.BinaryField(null=True)
    width = models.IntegerField(null=True)
    height = models.IntegerField(null=True)
    seed = models.BigIntegerField(null=True)
    revised_prompt = models.TextField(null=True)
    cost = models.DecimalField(max_digits=20, decimal_places=10, null=True)
    duration_ms = models.FloatField(null=True)
    error_code = models.TextField(null=True)
    error_message = models.TextField(null=True)
    error_detail = models.TextField(null=True)
    error_hint = models.TextField(null=True)

    class Meta:
        managed = False
        db_table = "igny8_jobs"

    @property
    def finished(self):
        return self.state in self.FINISHED
