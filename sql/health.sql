--
-- health: probes of every provider, the circuit breaker that routing obeys,
-- NOTIFY and server-log alerts, igny8_service_status and the schedule
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
ALTER SYSTEM SET igny8_ai.circuit_failure_threshold = 3;
ALTER SYSTEM SET igny8_ai.circuit_cooldown = '2s';
ALTER SYSTEM SET igny8_ai.health_probe_timeout = '1s';
SELECT reload_settings();
SHOW igny8_ai.circuit_failure_threshold;

-- every provider is up: one row each, also in service_health_log
SELECT sim('reset') IS NOT NULL AS reset;
SELECT count(*) AS checked FROM igny8_check_health();
TRUNCATE service_health_log;
SELECT dblink_connect('listener', 'dbname=' || current_database());
SELECT dblink_exec('listener', 'LISTEN igny8_ai_health');
-- what the listener received: waits (bounded) for the expected number,
-- in order of arrival for each provider.  Any role may LISTEN, so the
-- payload carries only provider, states, failures, time and a short code:
-- keys lists its keys, so that any other shows up
CREATE FUNCTION notifications(expect int)
RETURNS TABLE (provider text, state text, previous text, code text, keys text)
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_temp.got') IS NULL THEN
        CREATE TEMP TABLE got (n serial, payload jsonb);
    END IF;
    TRUNCATE got;
    FOR i IN 1..100 LOOP
        INSERT INTO got (payload)
        SELECT extra::jsonb FROM dblink_get_notify('listener')
         WHERE notify_name = 'igny8_ai_health';
        EXIT WHEN (SELECT count(*) FROM got) >= expect;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN QUERY
        SELECT g.payload->>'provider', g.payload->>'state',
               g.payload->>'previous_state', g.payload->>'code',
               (SELECT string_agg(k, ',' ORDER BY k)
                  FROM jsonb_object_keys(g.payload) k)
          FROM got g ORDER BY g.payload->>'provider', g.n;
END
$$;

-- (ComfyUI's detail without its list of devices: the totals sum them)
SELECT provider, healthy, state, http_status, detail - 'devices' AS detail
  FROM igny8_check_health();
SELECT provider, healthy, state, http_status, latency_ms >= 0 AS timed
  FROM service_health_log ORDER BY id;

-- Ollama running without one of the configured models: degraded, and the
-- detail names it
SELECT sim($$config ollama '{"models": ["qwen3:32b", "qwen3:14b", "qwen3:8b"]}'$$) IS NOT NULL AS configured;
SELECT provider, healthy, state, detail FROM igny8_check_health()
 WHERE provider = 'self_hosted_ai';
SELECT * FROM notifications(1);

-- ComfyUI without a model file an enabled workflow needs: degraded, and
-- the detail names the file; a disabled deployment's files are not needed
SELECT sim($$config comfyui '{"remove_models": ["flux1-dev.safetensors"]}'$$) IS NOT NULL AS configured;
SELECT provider, healthy, state,
       detail->'model_files_missing' AS missing, detail->'model_files_checked' AS checked
  FROM igny8_check_health() WHERE provider = 'comfyui';
SELECT * FROM notifications(1);
UPDATE igny8_models SET enabled = false WHERE workflow = 'flux1-dev';
SELECT wait_for_config();
SELECT provider, healthy, state, detail->'model_files_missing' AS missing,
       detail->'model_files_checked' AS checked
  FROM igny8_check_health() WHERE provider = 'comfyui';
UPDATE igny8_models SET enabled = true WHERE workflow = 'flux1-dev';
SELECT sim($$config comfyui '{"add_models": ["diffusion_models/flux1-dev.safetensors"]}'$$) IS NOT NULL AS configured;
SELECT wait_for_config();

-- a single-model OpenAI-compatible server (llama.cpp, vLLM) lists only its
-- own id: the provider setting check_models false turns the comparison off
INSERT INTO igny8_providers (id, kind, base_url, settings)
VALUES ('single_model', 'openai', current_setting('igny8_test.ollama_url'), '{"check_models": false}');
INSERT INTO igny8_models (alias, provider_id, provider_model)
VALUES ('single', 'single_model', 'some-model-the-server-does-not-list');
SELECT provider, healthy, state, detail FROM igny8_check_health()
 WHERE provider = 'single_model';
UPDATE igny8_providers SET settings = '{}' WHERE id = 'single_model';
SELECT provider, healthy, state, detail FROM igny8_check_health()
 WHERE provider = 'single_model';
DELETE FROM igny8_providers WHERE id = 'single_model';
SELECT * FROM notifications(1);

-- Anthropic lists the models it serves: a configured model it retired is
-- missing (the shipped aliases match, a dated id matches its alias)
UPDATE igny8_models SET provider_model = 'claude-3-5-sonnet-latest'
 WHERE alias = 'gpt-4-fallback' AND provider_id = 'anthropic';
INSERT INTO igny8_models (alias, provider_id, provider_model)
VALUES ('haiku-4-5', 'anthropic', 'claude-haiku-4-5');
SELECT provider, healthy, state, detail FROM igny8_check_health()
 WHERE provider = 'anthropic';
SELECT * FROM notifications(1);
UPDATE igny8_models SET provider_model = 'claude-sonnet-5-5'
 WHERE alias = 'gpt-4-fallback' AND provider_id = 'anthropic';
DELETE FROM igny8_models WHERE alias = 'haiku-4-5';
SELECT provider, healthy, state, detail FROM igny8_check_health()
 WHERE provider = 'anthropic';
SELECT * FROM notifications(1);

-- the tunnel is down (port closed), then the box is too slow for the
-- probe timeout, then Ollama answers 500: each detail says which
SELECT sim('reset') IS NOT NULL AS reset;
SELECT sim('down ollama') IS NOT NULL AS down;
SELECT provider, healthy, state, http_status, detail FROM igny8_check_health()
 WHERE provider = 'self_hosted_ai';
SELECT sim('up ollama') IS NOT NULL AS up;
SELECT sim($$config ollama '{"delay": 3}'$$) IS NOT NULL AS slow;
SELECT provider, healthy, state, http_status, detail FROM igny8_check_health()
 WHERE provider = 'self_hosted_ai';
-- the third failure in a row opens the circuit: state down, and a WARNING
SELECT sim($$config ollama '{"delay": 0, "status": 500}'$$) IS NOT NULL AS failing;
SELECT provider, healthy, state, http_status, detail FROM igny8_check_health()
 WHERE provider = 'self_hosted_ai';
SELECT * FROM notifications(1);
SELECT provider, state, circuit_open, consecutive_failures,
       CASE WHEN provider = 'self_hosted_ai' THEN last_error END AS last_error,
       checks_24h, success_pct_24h
  FROM igny8_service_status ORDER BY provider;

-- with the circuit open, a request goes straight to the fallback: no
-- attempt on the self-hosted deployment
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Circuit open', 'gpt-4');
SELECT attempt, provider, success FROM ai_usage_log ORDER BY id;

-- recovery: a successful probe closes the circuit
SELECT sim('reset') IS NOT NULL AS reset;
SELECT provider, healthy, state FROM igny8_check_health()
 WHERE provider = 'self_hosted_ai';
SELECT * FROM notifications(1);
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Circuit closed', 'gpt-4');
SELECT attempt, provider, success FROM ai_usage_log ORDER BY id;

-- requests feed the breaker too: three refused connections open it, the
-- fourth request skips the self-hosted provider (the worker says so in the
-- server log with a WARNING, and with NOTIFY)
SELECT sim('down ollama') IS NOT NULL AS down;
TRUNCATE ai_usage_log;
SELECT count(*) FROM generate_series(1, 4) i,
       igny8_generate_text('Tunnel down ' || i, 'gpt-4') t;
SELECT provider, count(*) AS attempts FROM ai_usage_log
 GROUP BY provider ORDER BY provider;
SELECT state, circuit_open, consecutive_failures FROM igny8_service_status
 WHERE provider = 'self_hosted_ai';
-- after the cool-down one trial request passes; its success closes it
SELECT sim('up ollama') IS NOT NULL AS up;
SELECT wait_until($$(SELECT since + interval '2.1 s' < clock_timestamp()
                       FROM igny8_service_status WHERE provider = 'self_hosted_ai')$$,
                  'the cool-down of the open circuit');
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Trial', 'gpt-4');
SELECT attempt, provider, success FROM ai_usage_log ORDER BY id;
SELECT state, circuit_open, consecutive_failures FROM igny8_service_status
 WHERE provider = 'self_hosted_ai';
-- if every candidate's circuit is open, they are all still tried
SELECT sim($$config ollama '{"status": 503}'$$) IS NOT NULL AS failing;
SELECT sim($$config openai '{"status": 503}'$$) IS NOT NULL AS failing;
SELECT sim($$config anthropic '{"status": 503}'$$) IS NOT NULL AS failing;
DO $$
BEGIN
    FOR i IN 1..3 LOOP
        PERFORM igny8_check_health();
    END LOOP;
END
$$;
SELECT provider, state, circuit_open FROM igny8_service_status ORDER BY provider;
SELECT sim('reset') IS NOT NULL AS reset;
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('All open', 'gpt-3.5-turbo');
SELECT attempt, provider, success FROM ai_usage_log ORDER BY id;
SELECT count(*) AS checked FROM igny8_check_health();
-- the worker announced the changes the requests caused, the checks theirs
SELECT * FROM notifications(12);

-- a probe's success does not close a circuit that failing requests
-- opened: Ollama lists its models (GET /api/tags) while every generation
-- fails (a runner out of memory).  Three requests answered 500 open it;
-- the check that follows finds the box up (its detail says the requests
-- are failing), but the state stays down, the circuit open, and nothing is
-- announced; the trial request after the cool-down closes it
TRUNCATE ai_usage_log;
SELECT count(*) FROM generate_series(1, 3) i,
       igny8_generate_text('Runner broken ' || i || ' [[sim ollama:status=500]]', 'gpt-4') t;
SELECT provider, http_status, count(*) FROM ai_usage_log GROUP BY 1, 2 ORDER BY 1, 2;
SELECT state, circuit_open, consecutive_failures FROM igny8_service_status
 WHERE provider = 'self_hosted_ai';
SELECT * FROM notifications(2);
SELECT provider, healthy, state, detail->'requests_failing' AS requests_failing
  FROM igny8_check_health() WHERE provider = 'self_hosted_ai';
SELECT state, circuit_open, consecutive_failures, left(last_error, 8) AS last_error
  FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT wait_until($$(SELECT since + interval '2.1 s' < clock_timestamp()
                       FROM igny8_service_status WHERE provider = 'self_hosted_ai')$$,
                  'the cool-down of the open circuit');
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Trial after the runner came back', 'gpt-4');
SELECT attempt, provider, success FROM ai_usage_log ORDER BY id;
SELECT state, circuit_open, consecutive_failures FROM igny8_service_status
 WHERE provider = 'self_hosted_ai';
-- one change since the requests opened it: the trial's
SELECT * FROM notifications(1);

-- a check in a read-only transaction is refused before any probe is sent:
-- probes change the providers' state, which no rollback undoes
SELECT sim('down ollama') IS NOT NULL AS down;
BEGIN READ ONLY;
SELECT * FROM igny8_check_health();
ROLLBACK;
SET default_transaction_read_only = on;
SELECT * FROM igny8_check_health();
RESET default_transaction_read_only;
SELECT state, consecutive_failures FROM igny8_service_status
 WHERE provider = 'self_hosted_ai';
-- a check whose transaction rolls back: the change its probe made stands,
-- and the worker that made it announced it (NOTIFY, server log) all the
-- same; only the check's service_health_log rows are rolled back
TRUNCATE service_health_log;
BEGIN;
SELECT provider, healthy, state FROM igny8_check_health()
 WHERE provider = 'self_hosted_ai';
ROLLBACK;
SELECT state, consecutive_failures FROM igny8_service_status
 WHERE provider = 'self_hosted_ai';
SELECT * FROM notifications(1);
SELECT count(*) AS rows_kept FROM service_health_log;
-- a circuit that probes alone opened, a probe's success closes
SELECT sim('up ollama') IS NOT NULL AS up;
SELECT provider, healthy, state FROM igny8_check_health()
 WHERE provider = 'self_hosted_ai';
SELECT * FROM notifications(1);
-- so does it one that requests opened with failures on the way to the
-- provider (refused connections: the tunnel or the box was down), which
-- the probe, taking the same way, finds gone
SELECT sim('down ollama') IS NOT NULL AS down;
SELECT count(*) FROM generate_series(1, 3) i,
       igny8_generate_text('Tunnel down again ' || i, 'gpt-4') t;
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT sim('up ollama') IS NOT NULL AS up;
SELECT provider, healthy, state, detail->'requests_failing' AS requests_failing
  FROM igny8_check_health() WHERE provider = 'self_hosted_ai';
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT * FROM notifications(3);

-- ComfyUI without a custom node that an enabled workflow uses: the probe
-- asks GET /object_info/{class} once for each node class of the enabled
-- workflows, ComfyUI answers {} for one it does not have, and the provider
-- is degraded, the node named
INSERT INTO igny8_workflows (name, graph, bindings, defaults)
SELECT 'lightning-tiled',
       jsonb_set(graph, '{8,class_type}', '"VAEDecodeTiledPlus"'), bindings, defaults
  FROM igny8_workflows WHERE name = 'sdxl-lightning-4step';
INSERT INTO igny8_models (alias, provider_id, provider_model, task, workflow)
VALUES ('tiled', 'comfyui', 'lightning-tiled', 'image', 'lightning-tiled');
SELECT wait_for_config();
SELECT sim('reset') IS NOT NULL AS reset;
SELECT provider, healthy, state, detail->'nodes_missing' AS nodes_missing,
       detail->'nodes_checked' AS nodes_checked,
       detail->'model_files_missing' AS files_missing
  FROM igny8_check_health() WHERE provider = 'comfyui';
SELECT * FROM notifications(1);
-- one request for each class, however many workflows use it
SELECT count(DISTINCT path) AS classes, count(*) AS requests
  FROM sim('log --role comfyui --field path') AS path
 WHERE path LIKE '/object_info/%';
DELETE FROM igny8_models WHERE alias = 'tiled';
DELETE FROM igny8_workflows WHERE name = 'lightning-tiled';
SELECT wait_for_config();
SELECT provider, healthy, state, detail->'nodes_missing' AS nodes_missing
  FROM igny8_check_health() WHERE provider = 'comfyui';
SELECT * FROM notifications(1);
SELECT dblink_disconnect('listener');

-- a provider that refuses our key counts as failing, as its probe would:
-- three 401s open its circuit; a probe with the right key closes it
UPDATE igny8_providers SET api_key_ref = 'sk-wrong-key-abcdefghijklmnop' WHERE id = 'openai';
TRUNCATE ai_usage_log;
SELECT count(*) FROM generate_series(1, 3) i,
       igny8_generate_text('Refused ' || i || ' [[sim ollama:status=404]]', 'gpt-4') t;
SELECT provider, http_status, count(*) FROM ai_usage_log GROUP BY 1, 2 ORDER BY 1, 2;
SELECT state, circuit_open, consecutive_failures FROM igny8_service_status
 WHERE provider = 'openai';
-- with the key fixed, its probe succeeds, but a circuit that requests
-- opened stays open until a request succeeds
UPDATE igny8_providers SET api_key_ref = 'env:OPENAI_API_KEY' WHERE id = 'openai';
SELECT wait_for_config();
SELECT provider, healthy, state FROM igny8_check_health() WHERE provider = 'openai';
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'openai';
-- a provider the DBA disables is forgotten: state unknown, circuit
-- closed, so that no alert keeps firing about it; enabled again, it
-- starts afresh
UPDATE igny8_providers SET enabled = false WHERE id = 'openai';
SELECT wait_for_config();
SELECT provider, state, circuit_open, consecutive_failures, last_error
  FROM igny8_health_state() WHERE provider = 'openai';
SELECT enabled, state, circuit_open FROM igny8_service_status WHERE provider = 'openai';
UPDATE igny8_providers SET enabled = true WHERE id = 'openai';
SELECT wait_for_config();
SELECT provider, state FROM igny8_check_health() WHERE provider = 'openai';

-- the schedule: change it, run what pg_cron runs, turn it off
SELECT igny8_set_health_schedule('*/5 * * * *') IS NOT NULL AS scheduled;
SELECT jobname, schedule, command, active FROM cron.job;
TRUNCATE service_health_log;
SELECT command FROM cron.job WHERE jobname = 'igny8_ai_health_check' \gexec
SELECT count(*) AS rows_written FROM service_health_log;
SELECT igny8_set_health_schedule('every minute');
-- off: the job stays, inactive, so that a dump and restore keeps it off
SELECT igny8_set_health_schedule(NULL);
SELECT jobname, schedule, active FROM cron.job;

-- retention: the scheduled check deletes rows older than
-- igny8_ai.health_log_retention
-- in batches, at most 100,000 rows a run
INSERT INTO service_health_log (checked_at, provider, healthy, state)
SELECT now() - interval '30 days', 'old', true, 'healthy' FROM generate_series(1, 120000);
SELECT igny8_health_job();
SELECT count(*) FILTER (WHERE provider = 'old') AS old_rows,
       count(*) FILTER (WHERE provider <> 'old') > 0 AS recent_kept
  FROM service_health_log;
SELECT igny8_health_job();
SELECT count(*) FILTER (WHERE provider = 'old') AS old_rows,
       count(*) FILTER (WHERE provider <> 'old') > 0 AS recent_kept
  FROM service_health_log;

-- a monitoring role reads the status, never the keys
CREATE ROLE igny8_monitor;
SELECT igny8_grant_monitoring('igny8_monitor');
SET ROLE igny8_monitor;
SELECT provider, state, circuit_open FROM igny8_service_status ORDER BY provider;
SELECT count(*) > 0 AS can_read_log FROM service_health_log;
SELECT api_key_ref FROM igny8_providers;
SELECT igny8_check_health();
RESET ROLE;
DROP OWNED BY igny8_monitor;
DROP ROLE igny8_monitor;

-- one slow provider costs only its own row: ComfyUI answers every request
-- after 1.8 s, within the 2 s probe timeout, but its probe asks
-- /system_stats and then /object_info for each node class of the
-- workflows.  The whole probe is bounded by igny8_ai.health_probe_timeout:
-- ComfyUI's row says it timed out, every other provider has its own row
ALTER SYSTEM SET igny8_ai.health_probe_timeout = '2s';
SELECT reload_settings();
SELECT sim('reset') IS NOT NULL AS reset;
SELECT sim($$config comfyui '{"delay": 1.8}'$$) IS NOT NULL AS slow;
TRUNCATE service_health_log;
SELECT provider, healthy, state, http_status, detail->>'kind' AS kind,
       detail->>'error' LIKE 'timed out%' AS timed_out,
       latency_ms < 2500 AS within_timeout
  FROM igny8_check_health() ORDER BY provider;
SELECT provider, healthy, state, detail->>'kind' AS kind
  FROM service_health_log ORDER BY provider;
SELECT sim('reset') IS NOT NULL AS reset;
SELECT provider, healthy, state FROM igny8_check_health()
 WHERE provider = 'comfyui';

-- a probe that fails for a reason of ours (a key reference that cannot be
-- resolved) gets its row, but does not count against the provider's
-- circuit, as a request would not
UPDATE igny8_providers SET api_key_ref = 'env:IGNY8_NO_SUCH_VARIABLE' WHERE id = 'openai';
SELECT wait_for_config();
SELECT provider, healthy, state, latency_ms, detail->>'kind' AS kind, detail->>'error' AS error
  FROM igny8_check_health() WHERE provider = 'openai';
-- igny8_service_status shows why in last_error
SELECT state, circuit_open, consecutive_failures, last_error FROM igny8_service_status
 WHERE provider = 'openai';
UPDATE igny8_providers SET api_key_ref = 'env:OPENAI_API_KEY' WHERE id = 'openai';
SELECT wait_for_config();

-- a check that fails for another reason (here a trigger refuses its rows)
-- does not stop the rest of the scheduled job: a WARNING says why, and the
-- retention still runs
CREATE FUNCTION refuse_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.provider <> 'old' THEN
        RAISE EXCEPTION 'no new rows today';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER refuse_rows BEFORE INSERT ON service_health_log
    FOR EACH ROW EXECUTE FUNCTION refuse_rows();
TRUNCATE service_health_log;
INSERT INTO service_health_log (checked_at, provider, healthy, state)
VALUES (now() - interval '30 days', 'old', true, 'healthy');
SELECT igny8_health_job();
SELECT count(*) AS rows_left FROM service_health_log;
DROP TRIGGER refuse_rows ON service_health_log;
DROP FUNCTION refuse_rows();

ALTER SYSTEM RESET igny8_ai.circuit_failure_threshold;
ALTER SYSTEM RESET igny8_ai.circuit_cooldown;
ALTER SYSTEM RESET igny8_ai.health_probe_timeout;
SELECT reload_settings();

-- a call made inside igny8_check_health() (by a trigger on
-- service_health_log) that fails, its error caught, gives up only its own
-- request: the probes' answers stay the health check's, and every slot is
-- free afterwards
CREATE FUNCTION nested_call() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM igny8_generate_text('Nested [[sim ollama:status=400 openai:status=400 anthropic:status=400]]',
                                    'gpt-4');
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'nested call failed: %', SQLSTATE;
    END;
    RETURN NEW;
END
$$;
CREATE TRIGGER nested_call AFTER INSERT ON service_health_log
    FOR EACH ROW EXECUTE FUNCTION nested_call();
SELECT count(*) AS probes, count(*) = (SELECT count(*) FROM igny8_providers WHERE enabled) AS every_provider
  FROM igny8_check_health();
DROP TRIGGER nested_call ON service_health_log;
DROP FUNCTION nested_call();
SELECT wait_until($$(SELECT slots = current_setting('igny8_ai.max_in_flight')::int
                       FROM igny8_slot_status() WHERE state = 'free')$$, 'every slot free');
