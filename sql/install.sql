--
-- setup: install the extension, check the seed configuration, and point the
-- providers at the backend simulator that test/run started.
--
CREATE EXTENSION igny8_ai CASCADE;
SELECT extname, extrelocatable FROM pg_extension
 WHERE extname IN ('igny8_ai', 'pg_cron') ORDER BY 1;

-- the seed's configuration ships as default rows
SELECT id, kind, base_url, api_key_ref, priority, enabled
  FROM igny8_providers ORDER BY priority DESC;
SELECT alias, provider_id, provider_model, task, timeout, max_tokens
  FROM igny8_models ORDER BY alias, provider_id;
SELECT alias, position, fallback_alias
  FROM igny8_fallbacks ORDER BY alias, position;

-- the health check is scheduled every minute; the tests run it by hand
-- instead (health.sql), so that it cannot change states under them
SELECT jobname, schedule, command, database = current_database() AS here, active
  FROM cron.job;
SELECT igny8_set_health_schedule(NULL);
SELECT count(*) AS jobs FROM cron.job;

-- test helper: run a simulator control command; one row per output line
CREATE FUNCTION sim(cmd text) RETURNS SETOF text
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

-- test helper: wait (bounded) until the simulator saw a request tagged t
-- disconnect
CREATE FUNCTION sim_wait_disconnect(t text, secs int DEFAULT 10) RETURNS text
LANGUAGE sql AS $$
    SELECT string_agg(line, ' ')
      FROM sim(format('wait-disconnect --tag %s --timeout %s', t, secs)) AS line
$$;

-- test helper: run a statement and show the error it raises, with the
-- random request id in the hint masked so that the output is stable
CREATE FUNCTION show_error(query text) RETURNS text
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

-- test helper: wait (bounded) until the simulator received a request
-- tagged t
CREATE FUNCTION sim_wait_arrival(t text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT line FROM sim('log --tag ' || t || ' --count') AS line) <> '0';
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;

-- test helper: wait (bounded) until the igny8_ai workers are connected
CREATE FUNCTION wait_for_workers() RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN (SELECT count(*) FROM pg_stat_activity
                    WHERE backend_type = 'igny8_ai worker')
                  = current_setting('igny8_ai.workers')::int;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN (SELECT count(*) FROM pg_stat_activity
             WHERE backend_type = 'igny8_ai worker');
END
$$;

-- point the providers at the simulator
UPDATE igny8_providers SET base_url = current_setting('igny8_test.ollama_url')
 WHERE id = 'self_hosted_ai';
UPDATE igny8_providers SET base_url = current_setting('igny8_test.openai_url')
 WHERE id = 'openai';
UPDATE igny8_providers SET base_url = current_setting('igny8_test.anthropic_url')
 WHERE id = 'anthropic';

-- the simulator is up and reset
SELECT sim('reset') IS NOT NULL AS reset;

-- both workers are connected
SELECT wait_for_workers() AS workers;
