/* igny8_ai--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION igny8_ai CASCADE" to load this file. \quit

--
-- Configuration: providers, deployments of model aliases, fallbacks.
-- Edited with plain SQL; a committed change reaches the workers at once.
--

CREATE TABLE igny8_providers (
    id              text PRIMARY KEY
                    CHECK (id ~ '^[a-z0-9_]{1,63}$'),
    kind            text NOT NULL
                    CHECK (kind IN ('ollama', 'openai', 'anthropic', 'comfyui')),
    base_url        text NOT NULL
                    CHECK (base_url ~* '^https?://[^/?#@[:space:]]+(/[^?#[:space:]]*)?$'),
    api_key_ref     text,
    priority        integer NOT NULL DEFAULT 0,
    enabled         boolean NOT NULL DEFAULT true,
    connect_timeout interval NOT NULL DEFAULT '5 seconds'
                    CHECK (connect_timeout > '0' AND connect_timeout <= '5 minutes'),
    max_concurrent  integer NOT NULL DEFAULT 64 CHECK (max_concurrent > 0),
    settings        jsonb NOT NULL DEFAULT '{}'
                    CHECK (jsonb_typeof(settings) = 'object'),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE igny8_providers IS
    'AI backends igny8_ai can call; higher priority is tried first';
COMMENT ON COLUMN igny8_providers.api_key_ref IS
    'env:NAME (server environment), file:/path (first line), or the key itself (discouraged)';
COMMENT ON COLUMN igny8_providers.settings IS
    'extra settings: Ollama keep_alive, think, options; OpenAI max_tokens_field, extra_body; Anthropic anthropic_version; any: proxy';

CREATE TABLE igny8_models (
    alias           text NOT NULL CHECK (alias ~ '^[^[:space:]]{1,63}$'),
    provider_id     text NOT NULL REFERENCES igny8_providers (id)
                    ON UPDATE CASCADE ON DELETE CASCADE,
    provider_model  text NOT NULL CHECK (length(provider_model) BETWEEN 1 AND 127),
    task            text NOT NULL DEFAULT 'text' CHECK (task IN ('text', 'image')),
    timeout         interval NOT NULL DEFAULT '60 seconds'
                    CHECK (timeout > '0' AND timeout <= '1 day'),
    max_tokens      integer CHECK (max_tokens > 0),
    weight          integer NOT NULL DEFAULT 1 CHECK (weight > 0),
    enabled         boolean NOT NULL DEFAULT true,
    settings        jsonb NOT NULL DEFAULT '{}'
                    CHECK (jsonb_typeof(settings) = 'object'),
    PRIMARY KEY (alias, provider_id, provider_model)
);

COMMENT ON TABLE igny8_models IS
    'deployments: a model alias served by a provider-side model';
COMMENT ON COLUMN igny8_models.max_tokens IS
    'cap on output tokens; a call asking for more gets this many';

CREATE TABLE igny8_fallbacks (
    alias           text NOT NULL,
    position        integer NOT NULL CHECK (position > 0),
    fallback_alias  text NOT NULL,
    PRIMARY KEY (alias, position),
    UNIQUE (alias, fallback_alias),
    CHECK (alias <> fallback_alias)
);

COMMENT ON TABLE igny8_fallbacks IS
    'for an alias, the aliases tried next, by position';

--
-- Usage: one row per attempt, written by the workers.
--

CREATE TABLE ai_usage_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id      uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    account_id      bigint,
    provider        text NOT NULL,
    task_type       text NOT NULL,
    model_alias     text NOT NULL,
    model_used      text,
    input_tokens    integer NOT NULL DEFAULT 0,
    output_tokens   integer NOT NULL DEFAULT 0,
    cost            numeric(14, 6) NOT NULL DEFAULT 0,
    duration_ms     double precision,
    http_status     integer,
    success         boolean NOT NULL,
    error_message   text,
    attempt         integer NOT NULL,
    prompt          text,
    response        text
);

CREATE INDEX ai_usage_log_created_at_idx ON ai_usage_log (created_at);
CREATE INDEX ai_usage_log_request_id_idx ON ai_usage_log (request_id);
CREATE INDEX ai_usage_log_account_idx ON ai_usage_log (account_id, created_at)
    WHERE account_id IS NOT NULL;

COMMENT ON TABLE ai_usage_log IS
    'one row per attempt on a provider, committed before the caller gets its answer';

-- pg_dump keeps the usage log and the configuration the DBA added.  The
-- rows this script inserts are left out (CREATE EXTENSION recreates them on
-- restore, and dumping them too would collide); a change to one of them
-- must be made again after a restore.
SELECT pg_catalog.pg_extension_config_dump('igny8_providers',
    $$WHERE id NOT IN ('self_hosted_ai', 'openai', 'anthropic')$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_models',
    $$WHERE (alias, provider_id) NOT IN (('gpt-4', 'self_hosted_ai'),
        ('gpt-4-turbo', 'self_hosted_ai'), ('gpt-3.5-turbo', 'self_hosted_ai'),
        ('gpt-3.5-turbo-fast', 'self_hosted_ai'), ('gpt-4-fallback', 'openai'),
        ('gpt-4-fallback', 'anthropic'), ('gpt-3.5-turbo-fallback', 'openai'),
        ('gpt-3.5-turbo-fallback', 'anthropic'))$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_fallbacks',
    $$WHERE (alias, position) NOT IN (('gpt-4', 1), ('gpt-4', 2),
        ('gpt-4-turbo', 1), ('gpt-3.5-turbo', 1), ('gpt-3.5-turbo-fast', 1))$$);
SELECT pg_catalog.pg_extension_config_dump('ai_usage_log', '');

--
-- Configuration changes reach the workers when they commit.
--

CREATE FUNCTION igny8_config_changed() RETURNS trigger
    AS 'MODULE_PATHNAME', 'igny8_config_changed'
    LANGUAGE C;

CREATE TRIGGER igny8_providers_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON igny8_providers
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_config_changed();
CREATE TRIGGER igny8_models_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON igny8_models
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_config_changed();
CREATE TRIGGER igny8_fallbacks_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON igny8_fallbacks
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_config_changed();

CREATE FUNCTION igny8_touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END
$$;

CREATE TRIGGER igny8_providers_touch
    BEFORE UPDATE ON igny8_providers
    FOR EACH ROW EXECUTE FUNCTION igny8_touch_updated_at();

--
-- The seed's configuration, as default rows.
--

INSERT INTO igny8_providers (id, kind, base_url, api_key_ref, priority,
                             max_concurrent, settings) VALUES
    ('self_hosted_ai', 'ollama', 'http://localhost:11434', NULL, 10, 8,
     '{"keep_alive": "30m"}'),
    ('openai', 'openai', 'https://api.openai.com', 'env:OPENAI_API_KEY', 5, 64,
     '{}'),
    ('anthropic', 'anthropic', 'https://api.anthropic.com',
     'env:ANTHROPIC_API_KEY', 4, 64, '{}');

INSERT INTO igny8_models (alias, provider_id, provider_model, timeout,
                          max_tokens, settings) VALUES
    ('gpt-4',                  'self_hosted_ai', 'qwen3:32b',     '300 s', 8000, '{"think": false}'),
    ('gpt-4-turbo',            'self_hosted_ai', 'qwen3:30b-a3b', '300 s', 8000, '{"think": false}'),
    ('gpt-3.5-turbo',          'self_hosted_ai', 'qwen3:14b',     '180 s', 4000, '{"think": false}'),
    ('gpt-3.5-turbo-fast',     'self_hosted_ai', 'qwen3:8b',      '120 s', 2048, '{"think": false}'),
    ('gpt-4-fallback',         'openai',         'gpt-4',          '60 s', 8000, '{}'),
    ('gpt-4-fallback',         'anthropic',      'claude-3-5-sonnet-latest', '60 s', 8000, '{}'),
    ('gpt-3.5-turbo-fallback', 'openai',         'gpt-3.5-turbo',  '60 s', 4000, '{}'),
    ('gpt-3.5-turbo-fallback', 'anthropic',      'claude-3-5-haiku-latest',  '60 s', 4000, '{}');

INSERT INTO igny8_fallbacks (alias, position, fallback_alias) VALUES
    ('gpt-4',              1, 'gpt-4-fallback'),
    ('gpt-4',              2, 'gpt-3.5-turbo'),
    ('gpt-4-turbo',        1, 'gpt-4-fallback'),
    ('gpt-3.5-turbo',      1, 'gpt-3.5-turbo-fallback'),
    ('gpt-3.5-turbo-fast', 1, 'gpt-3.5-turbo-fallback');

--
-- Calls.
--

CREATE TYPE igny8_completion AS (
    content         text,
    thinking        text,
    provider        text,
    model           text,
    input_tokens    integer,
    output_tokens   integer,
    cost            numeric,
    duration_ms     double precision,
    request_id      uuid,
    attempts        integer,
    finish_reason   text,
    cached          boolean
);

CREATE FUNCTION igny8_generate_text(
    prompt      text,
    model       text DEFAULT 'gpt-4',
    max_tokens  integer DEFAULT NULL,
    temperature double precision DEFAULT NULL,
    system      text DEFAULT NULL,
    timeout     interval DEFAULT NULL,
    account_id  bigint DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'igny8_generate_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_generate_text(text, text, integer, double precision, text, interval, bigint) IS
    'generate text for a prompt through the model alias, with fallback; returns the text';

CREATE FUNCTION igny8_chat(
    messages    jsonb,
    model       text DEFAULT 'gpt-4',
    options     jsonb DEFAULT '{}')
RETURNS igny8_completion
AS 'MODULE_PATHNAME', 'igny8_chat'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_chat(jsonb, text, jsonb) IS
    'chat completion for [{"role","content"}] messages; options: max_tokens, temperature, timeout (s), account_id';

REVOKE ALL ON FUNCTION igny8_generate_text(text, text, integer, double precision, text, interval, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_chat(jsonb, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_touch_updated_at() FROM PUBLIC;

--
-- Health: probes on a pg_cron schedule, the circuit breaker's state, alerts.
--

CREATE TABLE service_health_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checked_at      timestamptz NOT NULL DEFAULT now(),
    provider        text NOT NULL,
    healthy         boolean NOT NULL,
    state           text NOT NULL
                    CHECK (state IN ('unknown', 'healthy', 'degraded', 'down')),
    latency_ms      double precision,
    http_status     integer,
    detail          jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX service_health_log_checked_at_idx ON service_health_log (checked_at);
CREATE INDEX service_health_log_provider_idx ON service_health_log (provider, checked_at);

COMMENT ON TABLE service_health_log IS
    'one row per provider per health check; old rows are deleted by the scheduled check';

SELECT pg_catalog.pg_extension_config_dump('service_health_log', '');

CREATE FUNCTION igny8_check_health(
    OUT provider    text,
    OUT healthy     boolean,
    OUT state       text,
    OUT latency_ms  double precision,
    OUT http_status integer,
    OUT detail      jsonb)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'igny8_check_health'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_check_health() IS
    'probe every enabled provider now (free calls only) and log the result in service_health_log';

CREATE FUNCTION igny8_health_state(
    OUT provider             text,
    OUT state                text,
    OUT since                timestamptz,
    OUT circuit_open         boolean,
    OUT consecutive_failures integer,
    OUT last_check           timestamptz,
    OUT last_latency_ms      double precision,
    OUT last_error           text,
    OUT in_flight            integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'igny8_health_state'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION igny8_health_state() IS
    'the health state and circuit breaker of each provider, from shared memory';

CREATE VIEW igny8_service_status AS
SELECT p.id AS provider,
       p.kind,
       p.enabled,
       coalesce(s.state, 'unknown') AS state,
       s.since,
       coalesce(s.circuit_open, false) AS circuit_open,
       coalesce(s.last_check, h.last_check) AS last_check,
       s.last_latency_ms,
       coalesce(s.consecutive_failures, 0) AS consecutive_failures,
       s.last_error,
       coalesce(s.in_flight, 0) AS in_flight,
       h.checks_24h,
       h.success_pct_24h
  FROM igny8_providers p
  LEFT JOIN igny8_health_state() s ON s.provider = p.id
  LEFT JOIN LATERAL (
       SELECT count(*) AS checks_24h,
              round(100.0 * count(*) FILTER (WHERE l.healthy)
                    / nullif(count(*), 0), 1) AS success_pct_24h,
              max(l.checked_at) AS last_check
         FROM service_health_log l
        WHERE l.provider = p.id
          AND l.checked_at > now() - interval '24 hours') h ON true;

COMMENT ON VIEW igny8_service_status IS
    'per provider: state, since when, last check and latency, failures, share of successful checks over 24 hours';

-- What the pg_cron job runs: a check, then the retention of the log in
-- bounded batches (a big backlog is worked off over several runs).
CREATE FUNCTION igny8_health_job() RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    keep interval := current_setting('igny8_ai.health_log_retention')::interval;
    deleted bigint;
BEGIN
    PERFORM igny8_check_health();
    FOR i IN 1..10 LOOP
        DELETE FROM service_health_log
         WHERE id IN (SELECT id FROM service_health_log
                       WHERE checked_at < now() - keep
                       ORDER BY id LIMIT 10000);
        GET DIAGNOSTICS deleted = ROW_COUNT;
        EXIT WHEN deleted < 10000;
    END LOOP;
END
$$;

COMMENT ON FUNCTION igny8_health_job() IS
    'the scheduled health check: igny8_check_health() and the retention of service_health_log';

-- (Re)schedule the health check, or stop it with NULL.
CREATE FUNCTION igny8_set_health_schedule(schedule text) RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    job bigint;
BEGIN
    IF schedule IS NULL THEN
        PERFORM cron.unschedule(jobid) FROM cron.job
         WHERE jobname = 'igny8_ai_health_check';
        RETURN NULL;
    END IF;
    SELECT cron.schedule('igny8_ai_health_check', schedule,
                         pg_catalog.format('SELECT %I.igny8_health_job()',
                                           pg_catalog.current_schema()))
      INTO job;
    RETURN job;
END
$$;

COMMENT ON FUNCTION igny8_set_health_schedule(text) IS
    'schedule the health check (cron syntax, default every minute), or stop it with NULL';

-- every minute, as the seed asks
SELECT igny8_set_health_schedule('* * * * *');

-- DROP EXTENSION igny8_ai removes the job first
CREATE FUNCTION igny8_on_drop_extension() RETURNS event_trigger
AS 'MODULE_PATHNAME', 'igny8_on_drop_extension'
LANGUAGE C;

CREATE EVENT TRIGGER igny8_ai_drop_extension ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION igny8_on_drop_extension();

REVOKE ALL ON FUNCTION igny8_check_health() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_health_state() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_health_job() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_set_health_schedule(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_on_drop_extension() FROM PUBLIC;
REVOKE ALL ON service_health_log, igny8_service_status FROM PUBLIC;

-- Let a monitoring role read the health of the providers (never keys).
CREATE FUNCTION igny8_grant_monitoring(role regrole) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    schema_name text := pg_catalog.quote_ident(pg_catalog.current_schema());
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %s TO %s', schema_name, role);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.igny8_service_status, %s.service_health_log TO %s',
                              schema_name, schema_name, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_health_state() TO %s',
                              schema_name, role);
END
$$;

COMMENT ON FUNCTION igny8_grant_monitoring(regrole) IS
    'let a role read igny8_service_status and service_health_log';

REVOKE ALL ON FUNCTION igny8_grant_monitoring(regrole) FROM PUBLIC;

--
-- Grant the calling functions to an application role.
--

CREATE FUNCTION igny8_grant_usage(role regrole) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    schema_name text := pg_catalog.quote_ident(pg_catalog.current_schema());
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %s TO %s', schema_name, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_generate_text(text, text, integer, double precision, text, interval, bigint) TO %s', schema_name, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_chat(jsonb, text, jsonb) TO %s', schema_name, role);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.ai_usage_log TO %s', schema_name, role);
END
$$;

COMMENT ON FUNCTION igny8_grant_usage(regrole) IS
    'let a role call the generation functions and read ai_usage_log';

REVOKE ALL ON FUNCTION igny8_grant_usage(regrole) FROM PUBLIC;

REVOKE ALL ON igny8_providers, igny8_models, igny8_fallbacks, ai_usage_log FROM PUBLIC;
