/* igny8_ai--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION igny8_ai CASCADE" to load this file. \quit

--
-- Every function of this script runs with search_path = pg_catalog, pg_temp
-- and names the extension's own objects with @extschema@, so that nothing
-- created in a schema on a caller's path can be picked instead.  The same
-- holds for the SQL the background workers run (src/config.c, src/usage.c).
--

--
-- Configuration: providers, deployments of model aliases, fallbacks.
-- Edited with plain SQL; a committed change reaches the workers at once.
--
-- origin says where a row comes from: 'shipped' (CREATE EXTENSION made it
-- and nobody changed it), 'edited' (a shipped row that was changed, or a
-- shipped key added again) or 'added' (the DBA's own).  The triggers below
-- keep it; pg_dump keeps every row that is not 'shipped', and a restore
-- replaces the shipped row of the same key with it.
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
    updated_at      timestamptz NOT NULL DEFAULT now(),
    origin          text NOT NULL DEFAULT 'added'
                    CHECK (origin IN ('shipped', 'edited', 'added'))
);

COMMENT ON TABLE igny8_providers IS
    'AI backends igny8_ai can call; higher priority is tried first';
COMMENT ON COLUMN igny8_providers.api_key_ref IS
    'env:NAME (server environment), file:/path (first line), or the key itself (discouraged)';
COMMENT ON COLUMN igny8_providers.settings IS
    'extra settings: Ollama keep_alive, think, options; OpenAI max_tokens_field, extra_body; Anthropic anthropic_version; any: proxy, ca_file, check_models';
COMMENT ON COLUMN igny8_providers.origin IS
    'shipped (as CREATE EXTENSION made it), edited, or added; kept by triggers';

CREATE TABLE igny8_models (
    alias           text NOT NULL
                    CHECK (alias ~ '^[^[:space:]]+$' AND octet_length(alias) <= 63),
    provider_id     text NOT NULL REFERENCES igny8_providers (id)
                    ON UPDATE CASCADE ON DELETE CASCADE,
    provider_model  text NOT NULL
                    CHECK (octet_length(provider_model) BETWEEN 1 AND 127),
    task            text NOT NULL DEFAULT 'text' CHECK (task IN ('text', 'image')),
    timeout         interval NOT NULL DEFAULT '60 seconds'
                    CHECK (timeout > '0' AND timeout <= '1 day'),
    queue_timeout   interval NOT NULL DEFAULT '30 seconds'
                    CHECK (queue_timeout >= '0' AND queue_timeout <= '1 day'),
    max_tokens      integer CHECK (max_tokens > 0),
    weight          integer NOT NULL DEFAULT 1 CHECK (weight > 0),
    enabled         boolean NOT NULL DEFAULT true,
    settings        jsonb NOT NULL DEFAULT '{}'
                    CHECK (jsonb_typeof(settings) = 'object'),
    origin          text NOT NULL DEFAULT 'added'
                    CHECK (origin IN ('shipped', 'edited', 'added')),
    PRIMARY KEY (alias, provider_id, provider_model)
);

COMMENT ON TABLE igny8_models IS
    'deployments: a model alias served by a provider-side model';
COMMENT ON COLUMN igny8_models.max_tokens IS
    'cap on output tokens; a call asking for more gets this many';
COMMENT ON COLUMN igny8_models.queue_timeout IS
    'longest wait for a free place on the provider (max_concurrent) before the next candidate; 0: do not wait';

CREATE TABLE igny8_fallbacks (
    alias           text NOT NULL,
    position        integer NOT NULL CHECK (position > 0),
    fallback_alias  text NOT NULL,
    origin          text NOT NULL DEFAULT 'added'
                    CHECK (origin IN ('shipped', 'edited', 'added')),
    PRIMARY KEY (alias, position),
    -- checked at the end of the transaction, so that a restore (or an
    -- update) may swap the fallbacks of two positions
    UNIQUE (alias, fallback_alias) DEFERRABLE INITIALLY DEFERRED,
    CHECK (alias <> fallback_alias)
);

COMMENT ON TABLE igny8_fallbacks IS
    'for an alias, the aliases tried next, by position';

-- Shipped rows the DBA deleted (or whose key changed), so that a restore
-- deletes them again after CREATE EXTENSION made them.
CREATE TABLE igny8_config_deletions (
    table_name      text NOT NULL
                    CHECK (table_name IN ('igny8_providers', 'igny8_models', 'igny8_fallbacks')),
    key             jsonb NOT NULL,
    deleted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, key)
);

COMMENT ON TABLE igny8_config_deletions IS
    'keys of shipped configuration rows that were deleted; kept by triggers, read by a restore';

--
-- The seed's configuration, as shipped rows.
--

INSERT INTO igny8_providers (id, kind, base_url, api_key_ref, priority,
                             max_concurrent, settings, origin) VALUES
    ('self_hosted_ai', 'ollama', 'http://localhost:11434', NULL, 10, 8,
     '{"keep_alive": "30m"}', 'shipped'),
    ('openai', 'openai', 'https://api.openai.com', 'env:OPENAI_API_KEY', 5, 64,
     '{}', 'shipped'),
    ('anthropic', 'anthropic', 'https://api.anthropic.com',
     'env:ANTHROPIC_API_KEY', 4, 64, '{}', 'shipped');

-- OpenAI gpt-4 has an 8,192-token context shared by prompt and answer: its
-- cap leaves half of it to the prompt.
INSERT INTO igny8_models (alias, provider_id, provider_model, timeout,
                          max_tokens, settings, origin) VALUES
    ('gpt-4',                  'self_hosted_ai', 'qwen3:32b',         '300 s', 8000, '{"think": false}', 'shipped'),
    ('gpt-4-turbo',            'self_hosted_ai', 'qwen3:30b-a3b',     '300 s', 8000, '{"think": false}', 'shipped'),
    ('gpt-3.5-turbo',          'self_hosted_ai', 'qwen3:14b',         '180 s', 4000, '{"think": false}', 'shipped'),
    ('gpt-3.5-turbo-fast',     'self_hosted_ai', 'qwen3:8b',          '120 s', 2048, '{"think": false}', 'shipped'),
    ('gpt-4-fallback',         'openai',         'gpt-4',              '60 s', 4096, '{}', 'shipped'),
    ('gpt-4-fallback',         'anthropic',      'claude-sonnet-5-5',  '60 s', 8000, '{}', 'shipped'),
    ('gpt-3.5-turbo-fallback', 'openai',         'gpt-3.5-turbo',      '60 s', 4000, '{}', 'shipped'),
    ('gpt-3.5-turbo-fallback', 'anthropic',      'claude-haiku-5-5',   '60 s', 4000, '{}', 'shipped');

INSERT INTO igny8_fallbacks (alias, position, fallback_alias, origin) VALUES
    ('gpt-4',              1, 'gpt-4-fallback',         'shipped'),
    ('gpt-4',              2, 'gpt-3.5-turbo',          'shipped'),
    ('gpt-4-turbo',        1, 'gpt-4-fallback',         'shipped'),
    ('gpt-3.5-turbo',      1, 'gpt-3.5-turbo-fallback', 'shipped'),
    ('gpt-3.5-turbo-fast', 1, 'gpt-3.5-turbo-fallback', 'shipped');

--
-- Keeping origin, and restoring the configuration exactly.
--

-- The key columns of a configuration table.
CREATE FUNCTION igny8_config_key_columns(table_name text) RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE table_name
        WHEN 'igny8_providers' THEN ARRAY['id']
        WHEN 'igny8_models' THEN ARRAY['alias', 'provider_id', 'provider_model']
        WHEN 'igny8_fallbacks' THEN ARRAY['alias', 'position']
    END
$$;

-- The key of a row, as jsonb.
CREATE FUNCTION igny8_config_key(table_name text, r jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.jsonb_object_agg(k, r OPERATOR(pg_catalog.->) k)
      FROM pg_catalog.unnest(@extschema@.igny8_config_key_columns(table_name)) AS k
$$;

-- A WHERE clause matching a table's key to the record or jsonb in $1.
CREATE FUNCTION igny8_config_key_match(table_name text, source text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format('(%s) OPERATOR(pg_catalog.=) (SELECT %s FROM %s)',
               pg_catalog.string_agg(pg_catalog.format('t.%I', k), ', '),
               pg_catalog.string_agg(pg_catalog.format('s.%I', k), ', '),
               source)
      FROM pg_catalog.unnest(@extschema@.igny8_config_key_columns(table_name)) AS k
$$;

-- Row trigger on the configuration tables, before a change: keep origin,
-- and let an INSERT of an edited shipped row (a restore: only a dump says
-- origin 'edited') replace the row of that key while it is as CREATE
-- EXTENSION made it.  Any other INSERT of a shipped key is an ordinary
-- insert (a unique violation, or the UPDATE of an ON CONFLICT clause).
CREATE FUNCTION igny8_config_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_key jsonb := @extschema@.igny8_config_key(TG_TABLE_NAME, pg_catalog.to_jsonb(NEW));
    old_key jsonb;
    cols text;
    vals text;
    shipped_row boolean;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        old_key := @extschema@.igny8_config_key(TG_TABLE_NAME, pg_catalog.to_jsonb(OLD));
        IF new_key OPERATOR(pg_catalog.=) old_key THEN
            NEW.origin := CASE WHEN OLD.origin OPERATOR(pg_catalog.=) 'added'
                               THEN 'added' ELSE 'edited' END;
            RETURN NEW;
        END IF;
    ELSIF NEW.origin OPERATOR(pg_catalog.=) 'edited' THEN
        EXECUTE pg_catalog.format(
            'SELECT EXISTS (SELECT 1 FROM @extschema@.%I t WHERE t.origin OPERATOR(pg_catalog.=) ''shipped'' AND %s)',
            TG_TABLE_NAME,
            @extschema@.igny8_config_key_match(TG_TABLE_NAME, '(SELECT ($1).*) s'))
          INTO shipped_row USING NEW;
        IF shipped_row THEN
            SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum),
                   pg_catalog.string_agg(pg_catalog.format('($1).%I', a.attname), ', ' ORDER BY a.attnum)
              INTO cols, vals
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID
               AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped;
            EXECUTE pg_catalog.format('UPDATE @extschema@.%I t SET (%s) = ROW(%s) WHERE %s',
                                      TG_TABLE_NAME, cols, vals,
                                      @extschema@.igny8_config_key_match(TG_TABLE_NAME, '(SELECT ($1).*) s'))
              USING NEW;
            RETURN NULL;
        END IF;
    END IF;
    -- an INSERT, or a new key: a shipped key that was deleted comes back
    DELETE FROM @extschema@.igny8_config_deletions d
     WHERE d.table_name OPERATOR(pg_catalog.=) TG_TABLE_NAME
       AND d.key OPERATOR(pg_catalog.=) new_key;
    NEW.origin := CASE WHEN FOUND THEN 'edited' ELSE 'added' END;
    RETURN NEW;
END
$$;

-- Row trigger on the configuration tables, after a change: a shipped key
-- that is gone (deleted, or changed to another) is recorded.
CREATE FUNCTION igny8_config_forget() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_key jsonb := @extschema@.igny8_config_key(TG_TABLE_NAME, pg_catalog.to_jsonb(OLD));
BEGIN
    IF OLD.origin OPERATOR(pg_catalog.<>) 'added' AND
       (TG_OP = 'DELETE' OR
        old_key OPERATOR(pg_catalog.<>)
            @extschema@.igny8_config_key(TG_TABLE_NAME, pg_catalog.to_jsonb(NEW))) THEN
        INSERT INTO @extschema@.igny8_config_deletions (table_name, key)
        VALUES (TG_TABLE_NAME, old_key) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

-- Statement trigger on the configuration tables, before a TRUNCATE: the
-- shipped keys that go are recorded, as a DELETE records them.
CREATE FUNCTION igny8_config_forget_all() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format(
        'INSERT INTO @extschema@.igny8_config_deletions (table_name, key)
         SELECT %L, @extschema@.igny8_config_key(%L, pg_catalog.to_jsonb(t))
           FROM @extschema@.%I t
          WHERE t.origin OPERATOR(pg_catalog.<>) ''added''
         ON CONFLICT DO NOTHING',
        TG_TABLE_NAME, TG_TABLE_NAME, TG_TABLE_NAME);
    RETURN NULL;
END
$$;

-- A recorded deletion (a restore brings it back): delete the shipped row
-- CREATE EXTENSION made again.
CREATE FUNCTION igny8_config_deletion_restored() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format(
        'DELETE FROM @extschema@.%I t WHERE t.origin OPERATOR(pg_catalog.=) ''shipped'' AND %s',
        NEW.table_name,
        @extschema@.igny8_config_key_match(NEW.table_name,
            pg_catalog.format('pg_catalog.jsonb_populate_record(NULL::@extschema@.%I, $1) s',
                              NEW.table_name)))
      USING NEW.key;
    RETURN NULL;
END
$$;

CREATE TRIGGER igny8_providers_guard
    BEFORE INSERT OR UPDATE ON igny8_providers
    FOR EACH ROW EXECUTE FUNCTION igny8_config_guard();
CREATE TRIGGER igny8_models_guard
    BEFORE INSERT OR UPDATE ON igny8_models
    FOR EACH ROW EXECUTE FUNCTION igny8_config_guard();
CREATE TRIGGER igny8_fallbacks_guard
    BEFORE INSERT OR UPDATE ON igny8_fallbacks
    FOR EACH ROW EXECUTE FUNCTION igny8_config_guard();
CREATE TRIGGER igny8_providers_forget
    AFTER UPDATE OR DELETE ON igny8_providers
    FOR EACH ROW EXECUTE FUNCTION igny8_config_forget();
CREATE TRIGGER igny8_models_forget
    AFTER UPDATE OR DELETE ON igny8_models
    FOR EACH ROW EXECUTE FUNCTION igny8_config_forget();
CREATE TRIGGER igny8_fallbacks_forget
    AFTER UPDATE OR DELETE ON igny8_fallbacks
    FOR EACH ROW EXECUTE FUNCTION igny8_config_forget();
CREATE TRIGGER igny8_providers_forget_all
    BEFORE TRUNCATE ON igny8_providers
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_config_forget_all();
CREATE TRIGGER igny8_models_forget_all
    BEFORE TRUNCATE ON igny8_models
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_config_forget_all();
CREATE TRIGGER igny8_fallbacks_forget_all
    BEFORE TRUNCATE ON igny8_fallbacks
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_config_forget_all();
CREATE TRIGGER igny8_config_deletions_restored
    AFTER INSERT ON igny8_config_deletions
    FOR EACH ROW EXECUTE FUNCTION igny8_config_deletion_restored();

-- updated_at follows changes, unless the change sets it (a restore does)
CREATE FUNCTION igny8_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := pg_catalog.now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER igny8_providers_touch
    BEFORE UPDATE ON igny8_providers
    FOR EACH ROW EXECUTE FUNCTION igny8_touch_updated_at();

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

--
-- What pg_dump keeps: the configuration rows that are not as shipped (a
-- restore puts them over the shipped ones), the deletions of shipped rows,
-- both logs, and the logs' identity sequences, so that rows written after
-- a restore get new ids.
--
SELECT pg_catalog.pg_extension_config_dump('igny8_providers',
    $$WHERE origin OPERATOR(pg_catalog.<>) 'shipped'$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_models',
    $$WHERE origin OPERATOR(pg_catalog.<>) 'shipped'$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_fallbacks',
    $$WHERE origin OPERATOR(pg_catalog.<>) 'shipped'$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_config_deletions', '');
SELECT pg_catalog.pg_extension_config_dump('ai_usage_log', '');
SELECT pg_catalog.pg_extension_config_dump('ai_usage_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('service_health_log', '');
SELECT pg_catalog.pg_extension_config_dump('service_health_log_id_seq', '');

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

CREATE FUNCTION igny8_generate_image(
    prompt      text,
    model       text DEFAULT 'dall-e-3',
    size        text DEFAULT '1024x1024',
    options     jsonb DEFAULT '{}')
RETURNS igny8_image
AS 'MODULE_PATHNAME', 'igny8_generate_image'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_generate_image(text, text, text, jsonb) IS
    'one PNG image for a prompt through the image model alias, with fallback; options: negative_prompt, steps, cfg, seed, quality, style, timeout (s), account_id';

CREATE FUNCTION igny8_generate_images(
    prompt      text,
    model       text DEFAULT 'dall-e-3',
    size        text DEFAULT '1024x1024',
    n           integer DEFAULT 1,
    options     jsonb DEFAULT '{}')
RETURNS SETOF igny8_image
AS 'MODULE_PATHNAME', 'igny8_generate_images'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_generate_images(text, text, text, integer, jsonb) IS
    'n (1 to 8) images made at once, each with its own seed; options as igny8_generate_image';

--
-- Health checks.
--

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
    OUT in_flight            integer,
    OUT queued               integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'igny8_health_state'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION igny8_health_state() IS
    'the health state, circuit breaker and places of each provider, from shared memory';

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
       coalesce(s.queued, 0) AS queued,
       h.checks_24h,
       h.success_pct_24h
  FROM igny8_providers p
  LEFT JOIN igny8_health_state() s ON s.provider = p.id
  LEFT JOIN LATERAL (
       SELECT count(*) AS checks_24h,
              -- numeric with numeric: operators that pg_catalog has exactly
              round(100.0 * (count(*) FILTER (WHERE l.healthy))::numeric
                    / nullif(count(*), 0)::numeric, 1) AS success_pct_24h,
              max(l.checked_at) AS last_check
         FROM service_health_log l
        WHERE l.provider = p.id
          AND l.checked_at > now() - interval '24 hours') h ON true;

COMMENT ON VIEW igny8_service_status IS
    'per provider: state, since when, last check and latency, failures, requests in flight and waiting, share of successful checks over 24 hours';

-- What the pg_cron job runs: a check, then the retention of the log in
-- bounded batches (a big backlog is worked off over several runs).
CREATE FUNCTION igny8_health_job() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    keep interval := pg_catalog.current_setting('igny8_ai.health_log_retention')::interval;
    deleted bigint;
BEGIN
    PERFORM @extschema@.igny8_check_health();
    FOR i IN 1..10 LOOP
        DELETE FROM @extschema@.service_health_log
         WHERE id OPERATOR(pg_catalog.=) ANY (ARRAY(
                SELECT l.id FROM @extschema@.service_health_log l
                 WHERE l.checked_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) keep)
                 ORDER BY l.id LIMIT 10000));
        GET DIAGNOSTICS deleted = ROW_COUNT;
        EXIT WHEN deleted OPERATOR(pg_catalog.<) 10000;
    END LOOP;
END
$$;

COMMENT ON FUNCTION igny8_health_job() IS
    'the scheduled health check: igny8_check_health() and the retention of service_health_log';

--
-- The schedule: one pg_cron job, igny8_ai_health_check, with a fixed job
-- id.  pg_cron dumps cron.job, and a restore runs CREATE EXTENSION (which
-- makes the job) before it restores cron.job's rows: the trigger on
-- cron.job lets the restored row of the job replace the new one, so the
-- schedule comes back as it was, with no error.  Stopping the schedule
-- keeps the job, inactive, so that a restore stops it too.
--

CREATE FUNCTION igny8_health_job_id() RETURNS bigint
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS 'SELECT 8800000000000001::bigint';

COMMENT ON FUNCTION igny8_health_job_id() IS
    'the jobid of igny8_ai_health_check in cron.job';

-- (Re)schedule the health check, or stop it with NULL.
CREATE FUNCTION igny8_set_health_schedule(schedule text) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    job bigint := @extschema@.igny8_health_job_id();
    made bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM cron.job j WHERE j.jobid OPERATOR(pg_catalog.=) job) THEN
        IF schedule IS NULL THEN
            RETURN NULL;
        END IF;
        -- pg_cron checks the schedule; the job then gets its fixed id
        made := cron.schedule('igny8_ai_health_check', schedule,
                              pg_catalog.format('SELECT %s.igny8_health_job()',
                                                '@extschema@'));	-- quoted already
        UPDATE cron.job j SET jobid = job WHERE j.jobid OPERATOR(pg_catalog.=) made;
        RETURN job;
    END IF;
    IF schedule IS NULL THEN
        PERFORM cron.alter_job(job, active => false);
        RETURN NULL;
    END IF;
    PERFORM cron.alter_job(job, schedule => schedule, active => true);
    RETURN job;
END
$$;

COMMENT ON FUNCTION igny8_set_health_schedule(text) IS
    'schedule the health check (cron syntax, default every minute), or stop it with NULL';

-- A row for the job's id arrives in cron.job (a restore of pg_cron's
-- data): it replaces the job CREATE EXTENSION made.
CREATE FUNCTION igny8_cron_job_restored() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM cron.job j WHERE j.jobid OPERATOR(pg_catalog.=) NEW.jobid;
    RETURN NEW;
END
$$;

CREATE TRIGGER igny8_ai_health_job_restored
    BEFORE INSERT ON cron.job
    FOR EACH ROW WHEN (NEW.jobid = 8800000000000001)
    EXECUTE FUNCTION igny8_cron_job_restored();

-- DROP EXTENSION igny8_ai: remove the job and the trigger first.
CREATE FUNCTION igny8_forget_cron() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DROP TRIGGER IF EXISTS igny8_ai_health_job_restored ON cron.job;
    DELETE FROM cron.job j
     WHERE j.jobid OPERATOR(pg_catalog.=) @extschema@.igny8_health_job_id();
END
$$;

-- every minute, as the seed asks
SELECT igny8_set_health_schedule('* * * * *');

CREATE FUNCTION igny8_on_drop_extension() RETURNS event_trigger
AS 'MODULE_PATHNAME', 'igny8_on_drop_extension'
LANGUAGE C;

CREATE EVENT TRIGGER igny8_ai_drop_extension ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION igny8_on_drop_extension();

--
-- The workers and the request slots, for monitoring.
--

CREATE FUNCTION igny8_worker_status(
    OUT worker            integer,
    OUT pid               integer,
    OUT started_at        timestamptz,
    OUT in_flight         integer,
    OUT queued            integer,
    OUT served            bigint,
    OUT config_current    boolean,
    OUT settings_reloads  bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'igny8_worker_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION igny8_worker_status() IS
    'each igny8_ai worker: pid (NULL when not running), requests held and queued, whether it runs the latest committed configuration';

CREATE FUNCTION igny8_slot_status(
    OUT state  text,
    OUT slots  integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'igny8_slot_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION igny8_slot_status() IS
    'the request slots (igny8_ai.max_in_flight) by state: free, filling, queued, running, done, abandoned';

--
-- Privileges: nothing for PUBLIC; helpers grant what each role needs.
--

REVOKE ALL ON FUNCTION igny8_generate_text(text, text, integer, double precision, text, interval, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_chat(jsonb, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_generate_image(text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_generate_images(text, text, text, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_key_columns(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_key(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_key_match(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_health_job_id() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_guard() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_forget() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_forget_all() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_deletion_restored() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_touch_updated_at() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_check_health() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_health_state() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_health_job() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_set_health_schedule(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_cron_job_restored() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_forget_cron() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_on_drop_extension() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_worker_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_slot_status() FROM PUBLIC;
REVOKE ALL ON igny8_providers, igny8_models, igny8_fallbacks,
    igny8_config_deletions, ai_usage_log, service_health_log,
    igny8_service_status FROM PUBLIC;

-- Let a monitoring role read the health of the providers and the workers
-- (never keys).
CREATE FUNCTION igny8_grant_monitoring(role regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text := '@extschema@';	-- substituted as a quoted identifier
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %s TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.igny8_service_status, %s.service_health_log TO %s',
                              s, s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_health_state(), %s.igny8_worker_status(), %s.igny8_slot_status() TO %s',
                              s, s, s, role);
END
$$;

COMMENT ON FUNCTION igny8_grant_monitoring(regrole) IS
    'let a role read igny8_service_status, service_health_log and the worker and slot status';

-- Grant the calling functions to an application role.
CREATE FUNCTION igny8_grant_usage(role regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text := '@extschema@';	-- substituted as a quoted identifier
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %s TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_generate_text(text, text, integer, double precision, text, interval, bigint) TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_chat(jsonb, text, jsonb) TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_generate_image(text, text, text, jsonb) TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_generate_images(text, text, text, integer, jsonb) TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.ai_usage_log TO %s', s, role);
END
$$;

COMMENT ON FUNCTION igny8_grant_usage(regrole) IS
    'let a role call the generation functions and read ai_usage_log';

-- What the role named by igny8_ai.username needs to run the workers.
CREATE FUNCTION igny8_grant_worker(role regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text := '@extschema@';	-- substituted as a quoted identifier
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %s TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.igny8_providers, %s.igny8_models, %s.igny8_fallbacks TO %s',
                              s, s, s, role);
    EXECUTE pg_catalog.format('GRANT INSERT ON %s.ai_usage_log TO %s', s, role);
END
$$;

COMMENT ON FUNCTION igny8_grant_worker(regrole) IS
    'grant what the role of igny8_ai.username needs: read the configuration, write ai_usage_log';

REVOKE ALL ON FUNCTION igny8_grant_monitoring(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_grant_usage(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_grant_worker(regrole) FROM PUBLIC;
