--
-- rename: a provider renamed (or deleted) while requests routed before the
-- change run on it.  They go on with the provider as it was, under its old
-- id: a later candidate or a retry on it is sent at once, with its places
-- and its circuit; the old id's shared state goes when the last of them
-- ends
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- a provider of the test's own (no prices, no rent), behind Ollama
INSERT INTO igny8_providers (id, kind, base_url, api_key_ref, priority)
VALUES ('relay', 'openai', current_setting('igny8_test.openai_url'), 'env:OPENAI_API_KEY', 5);
INSERT INTO igny8_models (alias, provider_id, provider_model, queue_timeout)
VALUES ('inflight', 'self_hosted_ai', 'qwen3:8b', '3 s'),
       ('inflight-relay', 'relay', 'gpt-4', '3 s');
INSERT INTO igny8_fallbacks (alias, position, fallback_alias)
VALUES ('inflight', 1, 'inflight-relay'), ('inflight', 2, 'gpt-4-fallback');
SELECT wait_for_config();

-- a call at Ollama when the fallback's provider is renamed: once Ollama
-- failed, the fallback is sent to the provider under its old id, which
-- answers (no wait for a place that would never come)
SELECT dblink_connect('rn', 'dbname=' || current_database());
SELECT dblink_send_query('rn',
    $$SELECT igny8_generate_text('Renamed in flight [[sim ollama:delay=5 status=404 tag=rn1]]', 'inflight')$$);
SELECT sim_wait_arrival('rn1');
UPDATE igny8_providers SET id = 'relay_a' WHERE id = 'relay';
SELECT wait_for_config();
-- every worker runs the renamed configuration while the call is at Ollama
SELECT in_flight FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT dblink_answer('rn') AS answer;
SELECT * FROM attempts;

-- a job in its backoff before a retry when its provider is renamed: the
-- retry is sent when the backoff ends, to the provider under its old id
TRUNCATE ai_usage_log;
SELECT igny8_submit_text('Renamed in backoff [[sim ollama:status=404]] [[sim openai:status=503 retry_after=3 times=1 key=rn2 tag=rn2]]',
                         'inflight', '{"timeout": 30}') AS rj \gset
SELECT wait_until($$(SELECT line::int FROM sim('log --tag rn2 --role openai --count') AS line) = 1$$,
                  'the first attempt on relay_a');
SELECT wait_until($$(SELECT in_flight = 0 FROM igny8_service_status WHERE provider = 'relay_a')$$,
                  'the first attempt on relay_a to end');
UPDATE igny8_providers SET id = 'relay_b' WHERE id = 'relay_a';
SELECT wait_for_config();
-- every worker runs the renamed configuration before the retry is sent
SELECT line AS rn2_requests_at_openai FROM sim('log --tag rn2 --role openai --count') AS line;
SELECT state, provider, error_code FROM igny8_wait_job(:rj, '60 s');
SELECT * FROM attempts;

-- the old ids' state went with the requests that used it
SELECT wait_until($$NOT EXISTS (SELECT FROM igny8_health_state()
                                 WHERE provider IN ('relay', 'relay_a'))$$,
                  'the old ids to leave igny8_health_state()');
SELECT provider FROM igny8_health_state() WHERE provider LIKE 'relay%';

SELECT dblink_disconnect('rn');
DELETE FROM igny8_fallbacks WHERE alias = 'inflight';
DELETE FROM igny8_models WHERE alias IN ('inflight', 'inflight-relay');
DELETE FROM igny8_providers WHERE id = 'relay_b';
SELECT wait_for_config();
