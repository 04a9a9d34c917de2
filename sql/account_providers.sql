--
-- account_providers: settings per account (igny8_account_providers): an
-- account's own API key, a provider turned off, a priority of its own
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all

-- the account's own OpenAI key, in a file the server reads, which the
-- simulator accepts besides the provider's key
SELECT current_setting('data_directory') || '/igny8_account_42.key' AS keyfile \gset
COPY (SELECT 'sk-test-account-42-0123456789abcdef') TO :'keyfile';
SELECT sim($$config openai '{"extra_keys": ["sk-test-account-42-0123456789abcdef"]}'$$) IS NOT NULL AS accepted;

-- bad input: nothing is written
SELECT show_error($$INSERT INTO igny8_account_providers (account_id, provider) VALUES (42, 'nosuch')$$);
SELECT show_error($$INSERT INTO igny8_account_providers (account_id, provider, api_key_ref)
                    VALUES (42, 'openai', 'sk-pasted-by-mistake-0123456789')$$);
SELECT show_error($$INSERT INTO igny8_account_providers (account_id, provider, api_key_ref)
                    VALUES (42, 'openai', 'vault:openai/42')$$);
SELECT show_error($$INSERT INTO igny8_account_providers (account_id, provider, api_key_ref)
                    VALUES (42, 'openai', 'env:')$$);
SELECT show_error($$INSERT INTO igny8_account_providers (account_id, provider, api_key_ref)
                    VALUES (42, 'openai', 'file:relative/path')$$);
SELECT show_error($$INSERT INTO igny8_account_providers (account_id, provider) VALUES (NULL, 'openai')$$);
SELECT show_error($$INSERT INTO igny8_account_providers (account_id, provider) VALUES (-1, 'openai')$$);
SELECT count(*) AS rows_written FROM igny8_account_providers;

-- account 42: its own key for OpenAI
INSERT INTO igny8_account_providers (account_id, provider, api_key_ref)
VALUES (42, 'openai', 'file:' || :'keyfile');
SELECT wait_for_config();

SELECT provider, cached FROM igny8_chat('[{"role":"user","content":"Own key [[sim any:tag=ak1]]"}]',
                                'gpt-4-fallback', '{"account_id": 42}');
-- the simulator received the account's key, not the provider's
SELECT h->>'authorization' = 'Bearer sk-test-account-42-0123456789abcdef' AS account_key_sent
  FROM (SELECT sim('log --tag ak1 --field headers')::jsonb AS h) s;
-- ... and the usage row names its reference (never the key)
SELECT account_id, provider, success,
       replace(api_key_ref, current_setting('data_directory'), '$PGDATA') AS api_key_ref
  FROM ai_usage_log WHERE error_message IS NULL ORDER BY id DESC LIMIT 1;

-- another account, and a call without one, use the provider's key
SELECT provider FROM igny8_chat('[{"role":"user","content":"Provider key [[sim any:tag=ak2]]"}]',
                                'gpt-4-fallback', '{"account_id": 7}');
SELECT h->>'authorization' LIKE 'Bearer sk-test-openai-%' AS provider_key_sent
  FROM (SELECT sim('log --tag ak2 --field headers')::jsonb AS h) s;
SELECT account_id, provider, api_key_ref FROM ai_usage_log ORDER BY id DESC LIMIT 1;
SELECT provider FROM igny8_chat('[{"role":"user","content":"No account [[sim any:tag=ak3]]"}]',
                                'gpt-4-fallback');
SELECT account_id, provider, api_key_ref FROM ai_usage_log ORDER BY id DESC LIMIT 1;

-- a key the provider echoes in its answer is redacted there too
SELECT model FROM igny8_chat('[{"role":"user","content":"Echo [[sim openai:echo_key=model]]"}]',
                             'gpt-4-fallback', '{"account_id": 42}');
SELECT model_used FROM ai_usage_log ORDER BY id DESC LIMIT 1;

-- the key is in no table and no activity
SELECT count(*) AS rows_with_key
  FROM (SELECT u::text AS t FROM ai_usage_log u
        UNION ALL SELECT h::text FROM service_health_log h
        UNION ALL SELECT j::text FROM igny8_jobs j
        UNION ALL SELECT a::text FROM igny8_account_providers a
        UNION ALL SELECT s::text FROM igny8_health_state() s
        UNION ALL SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid()) x
 WHERE t LIKE '%sk-test-account-42%';

-- a key reference that cannot be resolved: the provider is skipped for
-- that account, and the attempt says why
INSERT INTO igny8_account_providers (account_id, provider, api_key_ref)
VALUES (45, 'openai', 'file:/nonexistent/igny8_key');
SELECT wait_for_config();
SELECT provider FROM igny8_chat('[{"role":"user","content":"Missing key file"}]',
                                'gpt-4-fallback', '{"account_id": 45}');
SELECT show_error($$SELECT igny8_chat('[{"role":"user","content":"Missing key file [[sim anthropic:status=404]]"}]',
                                      'gpt-4-fallback', '{"account_id": 45}')$$);

-- an account's own key refused (401) is that account's problem: its calls
-- fall back, but the provider, with its own key, stays up for the others
SELECT current_setting('data_directory') || '/igny8_account_48.key' AS badkeyfile \gset
COPY (SELECT 'sk-test-account-48-revoked') TO :'badkeyfile';
INSERT INTO igny8_account_providers (account_id, provider, api_key_ref)
VALUES (48, 'openai', 'file:' || :'badkeyfile');
SELECT wait_for_config();
ALTER SYSTEM SET igny8_ai.circuit_failure_threshold = 3;
SELECT reload_settings();
SELECT n, provider, attempts
  FROM generate_series(1, 3) n,
       igny8_chat(jsonb_build_array(jsonb_build_object('role', 'user', 'content', 'Revoked key ' || n)),
                  'gpt-4-fallback', '{"account_id": 48}');
SELECT http_status, count(*) FROM ai_usage_log
 WHERE account_id = 48 AND provider = 'openai' GROUP BY http_status;
SELECT state, circuit_open, consecutive_failures
  FROM igny8_health_state() WHERE provider = 'openai';
SELECT provider FROM igny8_chat('[{"role":"user","content":"Another account"}]',
                                'gpt-4-fallback', '{"account_id": 7}');
ALTER SYSTEM RESET igny8_ai.circuit_failure_threshold;
SELECT reload_settings();

-- an account turns a provider off: its calls skip it, others' do not
INSERT INTO igny8_account_providers (account_id, provider, enabled)
VALUES (43, 'self_hosted_ai', false);
SELECT wait_for_config();
SELECT provider FROM igny8_chat('[{"role":"user","content":"Skip the GPU box"}]',
                                'gpt-4', '{"account_id": 43}');
SELECT provider FROM igny8_chat('[{"role":"user","content":"Use the GPU box"}]',
                                'gpt-4', '{"account_id": 44}');

-- every provider off: the "no provider" error, and why
INSERT INTO igny8_account_providers (account_id, provider, enabled) VALUES
    (44, 'self_hosted_ai', false), (44, 'openai', false), (44, 'anthropic', false);
SELECT wait_for_config();
SELECT count(*) AS rows_before FROM ai_usage_log \gset
SELECT show_error($$SELECT igny8_generate_text('Nothing left', 'gpt-4', account_id => 44)$$);
SELECT count(*) - :rows_before AS usage_rows FROM ai_usage_log;

-- an account's priority: Anthropic before OpenAI for account 46 only
INSERT INTO igny8_account_providers (account_id, provider, priority)
VALUES (46, 'anthropic', 20);
SELECT wait_for_config();
SELECT provider FROM igny8_chat('[{"role":"user","content":"Priority"}]',
                                'gpt-4-fallback', '{"account_id": 46}');
SELECT provider FROM igny8_chat('[{"role":"user","content":"Priority"}]',
                                'gpt-4-fallback', '{"account_id": 47}');

-- an account cannot turn on a provider that is off for everyone
UPDATE igny8_providers SET enabled = false WHERE id = 'anthropic';
SELECT wait_for_config();
SELECT provider FROM igny8_chat('[{"role":"user","content":"Priority, anthropic off"}]',
                                'gpt-4-fallback', '{"account_id": 46}');
UPDATE igny8_providers SET enabled = true WHERE id = 'anthropic';

-- the application role cannot read the table
CREATE ROLE igny8_account_app LOGIN;
SELECT igny8_grant_usage('igny8_account_app');
SET ROLE igny8_account_app;
SELECT show_error('SELECT api_key_ref FROM igny8_account_providers');
SELECT show_error($$INSERT INTO igny8_account_providers (account_id, provider, api_key_ref)
                    VALUES (1, 'openai', 'env:HOME')$$);
RESET ROLE;

SELECT account_id, provider, enabled, priority, api_key_ref IS NOT NULL AS own_key
  FROM igny8_account_providers ORDER BY account_id, provider;

-- an account's key with "/", '"' and "\" past its 12th byte, echoed by
-- OpenAI: redacted whole however the body writes it (as json.dumps does in
-- the 401 of a refused key, "/" as "\/", as plain text), in the error and
-- the usage rows (an account's own key refused leaves the provider's
-- state alone).  CSV with a quote character the key lacks writes the key
-- to the file as it is
SELECT current_setting('data_directory') || '/igny8_account_49.key' AS keyfile49 \gset
SELECT E'sk-test-account-49/qx"zw\\vu/9876543210' AS key49 \gset
COPY (SELECT :'key49') TO :'keyfile49' (FORMAT csv, QUOTE E'\x01');
INSERT INTO igny8_account_providers (account_id, provider, enabled, api_key_ref)
VALUES (49, 'openai', true, 'file:' || :'keyfile49'), (49, 'anthropic', false, NULL);
SELECT wait_for_config();
SELECT show_error($$SELECT igny8_generate_text('Refused key', 'gpt-4-fallback', account_id => 49)$$);
-- the simulator takes the key from now on, and echoes it as told
SELECT sim(format($$config openai '%s'$$,
                  json_build_object('extra_keys', json_build_array('sk-test-account-42-0123456789abcdef',
                                                                   :'key49')))) IS NOT NULL AS accepted;
SELECT show_error($$SELECT igny8_generate_text('Echoed key [[sim openai:echo_key=error status=401 escape_slash]]',
                                               'gpt-4-fallback', account_id => 49)$$);
SELECT show_error($$SELECT igny8_generate_text('Echoed key [[sim openai:echo_key=error status=401 plain]]',
                                               'gpt-4-fallback', account_id => 49)$$);
SELECT http_status, error_message FROM ai_usage_log WHERE account_id = 49 ORDER BY id;
SELECT last_error FROM igny8_service_status WHERE provider = 'openai';
SELECT count(*) AS rows_with_key
  FROM (SELECT u::text AS t FROM ai_usage_log u
        UNION ALL SELECT h::text FROM service_health_log h
        UNION ALL SELECT s::text FROM igny8_health_state() s) x
 WHERE t ~ 'qx"+zw|zw\\+vu|/9876543210';

-- clean up
DROP OWNED BY igny8_account_app;
DROP ROLE igny8_account_app;
DELETE FROM igny8_account_providers;
SELECT wait_for_config();
COPY (SELECT '') TO :'keyfile';
COPY (SELECT '') TO :'keyfile49';
