--
-- test/regress/prelude.sql: included by every pg_regress file (sql/*.sql),
-- so that any subset of them runs on its own, in any order:
--
--   \set ECHO none
--   \o /dev/null
--   \i test/regress/prelude.sql
--   \o
--   \set ECHO all
--
-- It creates the extension if it is not there, (re)defines the test
-- helpers, points the shipped providers at the backend simulator that
-- test/run started (its URLs are igny8_test.* settings of the temporary
-- instance), turns the pg_cron schedule off (in the transaction that
-- creates the extension, so that it never runs), resets the simulator,
-- and waits until the workers run with this configuration.  It prints
-- nothing.
--
SET client_min_messages = warning;
-- one transaction: the schedule CREATE EXTENSION makes never runs
BEGIN;
CREATE EXTENSION IF NOT EXISTS igny8_ai CASCADE;
SELECT igny8_set_health_schedule(NULL);
COMMIT;
CREATE EXTENSION IF NOT EXISTS dblink;

-- run a simulator control command; one row per output line
CREATE OR REPLACE FUNCTION sim(cmd text) RETURNS SETOF text
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_temp.sim_out') IS NULL THEN
        CREATE TEMP TABLE sim_out (line text);
    END IF;
    TRUNCATE sim_out;
    EXECUTE format('COPY sim_out FROM PROGRAM %L',
                   current_setting('igny8_test.simctl') || ' ' || cmd);
    RETURN QUERY SELECT line FROM sim_out;
END
$$;

-- wait until a condition (SQL returning boolean) holds; an error after
-- secs seconds, naming what was awaited.  pg_stat_activity (and the
-- statistics views) keep what they first showed until the transaction
-- ends: the snapshot is dropped before each look, or a condition on them
-- false at the first look would stay false
CREATE OR REPLACE FUNCTION wait_until(cond text, what text, secs int DEFAULT 30)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
BEGIN
    FOR i IN 1..secs * 20 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXECUTE 'SELECT (' || cond || ')' INTO ok;
        IF ok THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE EXCEPTION 'waited % s for %', secs, what;
END
$$;

-- wait until the simulator received n requests tagged t
CREATE OR REPLACE FUNCTION sim_wait_arrival(t text, n int DEFAULT 1) RETURNS void
LANGUAGE sql AS $$
    SELECT wait_until(format($q$(SELECT line::int FROM sim('log --tag %s --count') AS line) >= %s$q$, t, n),
                      format('%s request(s) tagged %s at the simulator', n, t));
$$;

-- wait until the simulator saw the request tagged t disconnect
CREATE OR REPLACE FUNCTION sim_wait_disconnect(t text, secs int DEFAULT 10) RETURNS text
LANGUAGE sql AS $$
    SELECT string_agg(line, ' ')
      FROM sim(format('wait-disconnect --tag %s --timeout %s', t, secs)) AS line
$$;

-- the answer of a query sent with dblink_send_query (its first column),
-- with the connection made ready for the next query
CREATE OR REPLACE FUNCTION dblink_answer(conn text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    a text;
BEGIN
    SELECT r.answer INTO a FROM dblink_get_result(conn) AS r(answer text);
    PERFORM * FROM dblink_get_result(conn) AS r(answer text);
    RETURN a;
END
$$;

-- every worker is running
CREATE OR REPLACE FUNCTION wait_for_workers() RETURNS bigint
LANGUAGE sql AS $$
    SELECT wait_until('(SELECT count(*) FROM igny8_worker_status() WHERE pid IS NOT NULL)
                        = current_setting(''igny8_ai.workers'')::int',
                      'the igny8_ai workers');
    SELECT count(*) FROM igny8_worker_status() WHERE pid IS NOT NULL;
$$;

-- every worker runs with the latest committed configuration
CREATE OR REPLACE FUNCTION wait_for_config() RETURNS boolean
LANGUAGE sql AS $$
    SELECT wait_until('(SELECT bool_and(config_current) FROM igny8_worker_status())',
                      'the workers to load the configuration');
$$;

-- wait until worker w's next look at igny8_jobs is more than secs seconds
-- away.  Its scan writes ai_usage_log (the outcomes of runs it takes
-- back): a test that locks ai_usage_log and needs the worker to take a
-- request before it blocks must not find it blocked in a scan instead
CREATE OR REPLACE FUNCTION wait_scan_away(w int, secs int DEFAULT 2) RETURNS boolean
LANGUAGE sql AS $$
    SELECT wait_until(format($q$(SELECT next_job_scan > clock_timestamp() + interval '%s s'
                                   FROM igny8_worker_status() WHERE worker = %s)$q$, secs, w),
                      format('worker %s''s next scan of igny8_jobs %s s away', w, secs));
$$;

-- reload postgresql.conf, and wait until every worker processed it
CREATE OR REPLACE FUNCTION reload_settings() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    before jsonb := (SELECT jsonb_object_agg(worker, settings_reloads)
                       FROM igny8_worker_status());
BEGIN
    PERFORM pg_reload_conf();
    RETURN wait_until(format($q$(SELECT bool_and(settings_reloads > (%L::jsonb->>worker::text)::bigint)
                                   FROM igny8_worker_status())$q$, before),
                      'the workers to reload postgresql.conf');
END
$$;

-- run a statement and show the error it raises, with the random request
-- id in the hint masked so that the output is stable
CREATE OR REPLACE FUNCTION show_error(query text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; det text; hnt text;
BEGIN
    EXECUTE query;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
    RETURN concat_ws(E'\n', 'ERROR ' || st || ': ' || msg,
                     'DETAIL: ' || nullif(det, ''),
                     'HINT: ' || regexp_replace(nullif(hnt, ''),
                        '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}',
                        '<request_id>', 'g'));
END
$$;

-- the attempts in the usage log, oldest first
CREATE OR REPLACE VIEW attempts AS
SELECT attempt, provider, model_used, http_status, success, error_message
  FROM ai_usage_log ORDER BY id;

-- the shipped providers, pointed at the simulator; nothing else
DELETE FROM igny8_providers
 WHERE id NOT IN ('self_hosted_ai', 'openai', 'anthropic', 'comfyui');
WITH want (id, base_url, api_key_ref, priority, max_concurrent, settings) AS (
    VALUES ('self_hosted_ai', current_setting('igny8_test.ollama_url'), NULL, 10, 8,
            '{"keep_alive": "30m"}'::jsonb),
           ('openai', current_setting('igny8_test.openai_url'), 'env:OPENAI_API_KEY', 5, 64,
            '{}'),
           ('anthropic', current_setting('igny8_test.anthropic_url'), 'env:ANTHROPIC_API_KEY', 4, 64,
            '{}'),
           ('comfyui', current_setting('igny8_test.comfyui_url'), NULL, 10, 2,
            '{}'))
UPDATE igny8_providers p
   SET base_url = w.base_url, api_key_ref = w.api_key_ref, priority = w.priority,
       max_concurrent = w.max_concurrent, settings = w.settings, enabled = true,
       connect_timeout = '5 s'
  FROM want w
 WHERE p.id = w.id
   AND (p.base_url, p.api_key_ref, p.priority, p.max_concurrent, p.settings,
        p.enabled, p.connect_timeout)
       IS DISTINCT FROM (w.base_url, w.api_key_ref, w.priority, w.max_concurrent,
                         w.settings, true, interval '5 s');

-- a self-hosted attempt's share of the GPU rent depends on how long it
-- took: the tests run without rent, so that the costs they show are exact
-- (sql/costs.sql sets its own rent)
UPDATE igny8_fixed_costs SET monthly_amount = 0 WHERE monthly_amount <> 0;

SELECT sim('reset');
SELECT wait_for_workers();
SELECT wait_for_config();
RESET client_min_messages;
