--
-- config: a committed change to the configuration tables reaches the
-- workers without a restart; priority, weight and enabled are obeyed
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- change the provider-side model: the next call uses it
UPDATE igny8_models SET provider_model = 'qwen3:14b' WHERE alias = 'gpt-4';
SELECT igny8_generate_text('Which model?', 'gpt-4');
UPDATE igny8_models SET provider_model = 'qwen3:32b' WHERE alias = 'gpt-4';
SELECT igny8_generate_text('Which model?', 'gpt-4');

-- an uncommitted change is not seen by the workers
BEGIN;
UPDATE igny8_models SET provider_model = 'qwen3:8b' WHERE alias = 'gpt-4';
ROLLBACK;
SELECT igny8_generate_text('Which model?', 'gpt-4');

-- a change made in a prepared transaction reaches them at COMMIT PREPARED,
-- from whichever session commits it; ROLLBACK PREPARED changes nothing
BEGIN;
UPDATE igny8_models SET provider_model = 'qwen3:8b' WHERE alias = 'gpt-4';
PREPARE TRANSACTION 'igny8_config_change';
SELECT igny8_generate_text('Prepared, not committed', 'gpt-4');
SELECT dblink_exec('dbname=' || current_database(), $$COMMIT PREPARED 'igny8_config_change'$$);
SELECT wait_for_config();
SELECT igny8_generate_text('Committed prepared', 'gpt-4');
BEGIN;
UPDATE igny8_models SET provider_model = 'qwen3:32b' WHERE alias = 'gpt-4';
PREPARE TRANSACTION 'igny8_config_undo';
ROLLBACK PREPARED 'igny8_config_undo';
SELECT igny8_generate_text('Rolled back prepared', 'gpt-4');
UPDATE igny8_models SET provider_model = 'qwen3:32b' WHERE alias = 'gpt-4';

-- a new alias works at once
INSERT INTO igny8_models (alias, provider_id, provider_model, timeout, max_tokens)
VALUES ('writer', 'self_hosted_ai', 'qwen3:8b', '30 s', 512);
SELECT igny8_generate_text('New alias', 'writer');

-- priority: the higher priority provider is tried first
INSERT INTO igny8_models (alias, provider_id, provider_model)
VALUES ('writer', 'openai', 'gpt-4o-mini');
SELECT igny8_generate_text('Priority', 'writer');
UPDATE igny8_providers SET priority = 20 WHERE id = 'openai';
SELECT igny8_generate_text('Priority', 'writer');
UPDATE igny8_providers SET priority = 5 WHERE id = 'openai';

-- equal priority: the load is spread by weight.  With weights 9 and 1,
-- 400 calls give the heavier about 360 (standard deviation 6); if weights
-- were ignored it would get about 200 (deviation 10), so "at least 300"
-- tells the two apart with no chance worth naming of either being wrong
INSERT INTO igny8_providers (id, kind, base_url, priority)
VALUES ('second_box', 'ollama', current_setting('igny8_test.ollama_url'), 10);
INSERT INTO igny8_models (alias, provider_id, provider_model, weight)
VALUES ('writer', 'second_box', 'qwen3:8b', 9);
TRUNCATE ai_usage_log;
SELECT count(*) FROM generate_series(1, 400) i,
       igny8_generate_text('Spread ' || i, 'writer') t;
SELECT provider, count(*) >= 300 AS heavy, count(*) BETWEEN 1 AND 100 AS light
  FROM ai_usage_log GROUP BY provider ORDER BY provider;

-- a disabled deployment is skipped
UPDATE igny8_models SET enabled = false WHERE alias = 'writer' AND provider_id = 'second_box';
TRUNCATE ai_usage_log;
SELECT count(*) FROM generate_series(1, 10) i,
       igny8_generate_text('Disabled ' || i, 'writer') t;
SELECT provider, count(*) FROM ai_usage_log GROUP BY provider;

-- a fallback added at run time is used
DELETE FROM igny8_models WHERE alias = 'writer' AND provider_id <> 'self_hosted_ai';
INSERT INTO igny8_fallbacks VALUES ('writer', 1, 'gpt-3.5-turbo-fallback');
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Fallback [[sim ollama:status=404]]', 'writer');
SELECT provider, model_used, success FROM ai_usage_log ORDER BY id;

-- providers come and go: the shared state of one that is deleted is freed
-- (at most 64 providers have one at a time), so the seventieth provider
-- made over time still gets a circuit breaker and a max_concurrent limit
DO $$
BEGIN
    FOR i IN 1..70 LOOP
        EXECUTE format('INSERT INTO igny8_providers (id, kind, base_url) VALUES (%L, %L, %L)',
                       'passing_' || i, 'ollama', current_setting('igny8_test.ollama_url'));
        COMMIT;
        PERFORM wait_for_config();
        EXECUTE format('DELETE FROM igny8_providers WHERE id = %L', 'passing_' || i);
        COMMIT;
        PERFORM wait_for_config();
    END LOOP;
END
$$;
INSERT INTO igny8_providers (id, kind, base_url)
VALUES ('last_one', 'ollama', current_setting('igny8_test.ollama_url'));
SELECT provider, state FROM igny8_check_health() WHERE provider = 'last_one';
SELECT provider, state FROM igny8_health_state() WHERE provider = 'last_one';
SELECT count(*) <= 64 AS bounded FROM igny8_health_state();
DELETE FROM igny8_providers WHERE id = 'last_one';

DELETE FROM igny8_fallbacks WHERE alias = 'writer';
DELETE FROM igny8_models WHERE alias = 'writer';
DELETE FROM igny8_providers WHERE id = 'second_box';

-- TRUNCATE records the shipped keys it removes, as DELETE does, so that a
-- restore does not bring them back; with CASCADE, those of the
-- deployments too
BEGIN;
TRUNCATE igny8_fallbacks;
SELECT key FROM igny8_config_deletions WHERE table_name = 'igny8_fallbacks'
 ORDER BY key->>'alias', key->>'position';
TRUNCATE igny8_providers CASCADE;
SELECT table_name, count(*) FROM igny8_config_deletions GROUP BY 1 ORDER BY 1;
ROLLBACK;

-- an upsert of a shipped key updates what it names and keeps the rest
BEGIN;
INSERT INTO igny8_providers (id, kind, base_url)
VALUES ('openai', 'openai', 'https://gateway.example')
ON CONFLICT (id) DO UPDATE SET base_url = EXCLUDED.base_url
RETURNING id, base_url, api_key_ref, max_concurrent, origin;
ROLLBACK;
-- a plain INSERT of a shipped key is a duplicate
INSERT INTO igny8_providers (id, kind, base_url) VALUES ('openai', 'openai', 'https://gateway.example');

-- two positions may swap their fallbacks; a duplicate is refused at commit
BEGIN;
UPDATE igny8_fallbacks
   SET fallback_alias = CASE position WHEN 1 THEN 'gpt-3.5-turbo' ELSE 'gpt-4-fallback' END
 WHERE alias = 'gpt-4';
SELECT position, fallback_alias, origin FROM igny8_fallbacks WHERE alias = 'gpt-4' ORDER BY position;
ROLLBACK;
UPDATE igny8_fallbacks SET fallback_alias = 'gpt-3.5-turbo' WHERE alias = 'gpt-4' AND position = 1;
SELECT position, fallback_alias FROM igny8_fallbacks WHERE alias = 'gpt-4' ORDER BY position;

-- a deployment whose provider's kind does not serve its task is refused
-- (every call would fail): images are made by comfyui and openai, text by
-- ollama, openai and anthropic; so is a change of a provider's kind that
-- would leave one.  Nothing is written
\pset format unaligned
\pset tuples_only on
SELECT show_error($$INSERT INTO igny8_models (alias, provider_id, provider_model, task)
                    VALUES ('poster3', 'self_hosted_ai', 'flux1-dev', 'image')$$);
SELECT show_error($$INSERT INTO igny8_models (alias, provider_id, provider_model, task)
                    VALUES ('poster3', 'anthropic', 'claude-haiku-5-5', 'image')$$);
SELECT show_error($$INSERT INTO igny8_models (alias, provider_id, provider_model)
                    VALUES ('poster3', 'comfyui', 'flux1-dev')$$);
SELECT show_error($$UPDATE igny8_models SET provider_id = 'anthropic' WHERE alias = 'dall-e-3-fallback'$$);
SELECT show_error($$UPDATE igny8_models SET task = 'image' WHERE alias = 'gpt-4'$$);
SELECT show_error($$UPDATE igny8_providers SET kind = 'comfyui' WHERE id = 'self_hosted_ai'$$);
SELECT show_error($$UPDATE igny8_providers SET kind = 'anthropic' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET kind = 'ollama' WHERE id = 'comfyui'$$);
\pset format aligned
\pset tuples_only off
SELECT count(*) AS poster3 FROM igny8_models WHERE alias = 'poster3';
SELECT id, kind, origin FROM igny8_providers ORDER BY id;
SELECT alias, provider_id, task, origin FROM igny8_models
 WHERE alias IN ('gpt-4', 'dall-e-3-fallback') ORDER BY alias, provider_id;
-- what a kind serves is accepted: images on OpenAI; Anthropic's text
-- deployments fit the kinds openai and ollama
BEGIN;
INSERT INTO igny8_models (alias, provider_id, provider_model, task)
VALUES ('poster3', 'openai', 'dall-e-3', 'image');
UPDATE igny8_providers SET kind = 'openai' WHERE id = 'anthropic';
UPDATE igny8_providers SET kind = 'ollama' WHERE id = 'anthropic';
SELECT alias, provider_id, task, origin FROM igny8_models WHERE alias = 'poster3';
SELECT kind FROM igny8_providers WHERE id = 'anthropic';
ROLLBACK;

-- a fallback's alias and fallback alias are aliases of igny8_models: a
-- mistyped one, which would never be tried, is refused, by an INSERT or
-- an UPDATE.  Nothing is written
\pset format unaligned
\pset tuples_only on
SELECT show_error($$INSERT INTO igny8_fallbacks VALUES ('gpt-4', 3, 'gpt-4-fallbak')$$);
SELECT show_error($$INSERT INTO igny8_fallbacks VALUES ('gtp-4', 1, 'gpt-4-fallback')$$);
SELECT show_error($$UPDATE igny8_fallbacks SET fallback_alias = 'gpt-35-turbo'
                     WHERE alias = 'gpt-4' AND position = 2$$);
SELECT show_error($$UPDATE igny8_fallbacks SET alias = 'gpt4' WHERE alias = 'gpt-4'$$);
\pset format aligned
\pset tuples_only off
SELECT alias, position, fallback_alias, origin FROM igny8_fallbacks ORDER BY alias, position;
-- not while a dump is restored (pg_dump sets check_function_bodies off):
-- its fallbacks come before the deployments they name
BEGIN;
SET LOCAL check_function_bodies = off;
INSERT INTO igny8_fallbacks VALUES ('restored', 1, 'gpt-4'), ('gpt-4', 3, 'restored');
SELECT alias, position, fallback_alias, origin FROM igny8_fallbacks
 WHERE 'restored' IN (alias, fallback_alias) ORDER BY alias, position;
ROLLBACK;

-- a deployment may go while fallbacks name its alias (as the cache
-- settings of an alias stay): they stay and are skipped until the alias
-- is deployed again; an update that keeps their names is accepted, a
-- row that names the gone alias anew is not
INSERT INTO igny8_models (alias, provider_id, provider_model)
VALUES ('writer2', 'self_hosted_ai', 'qwen3:8b'), ('gone', 'self_hosted_ai', 'qwen3:8b');
INSERT INTO igny8_fallbacks VALUES ('writer2', 1, 'gone'), ('writer2', 2, 'gpt-3.5-turbo-fallback');
DELETE FROM igny8_models WHERE alias = 'gone';
SELECT alias, position, fallback_alias FROM igny8_fallbacks WHERE alias = 'writer2' ORDER BY position;
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Gone [[sim ollama:status=404]]', 'writer2');
SELECT provider, model_used, model_alias, success FROM ai_usage_log ORDER BY id;
UPDATE igny8_fallbacks SET position = 3 WHERE alias = 'writer2' AND position = 1;
\pset format unaligned
\pset tuples_only on
SELECT show_error($$INSERT INTO igny8_fallbacks VALUES ('gpt-4', 3, 'gone')$$);
\pset format aligned
\pset tuples_only off
SELECT alias, position, fallback_alias FROM igny8_fallbacks WHERE alias = 'writer2' ORDER BY position;
DELETE FROM igny8_fallbacks WHERE alias = 'writer2';
DELETE FROM igny8_models WHERE alias = 'writer2';

-- a key file that is no regular file (here a FIFO no one writes to) is
-- refused at once, as a key reference that cannot be resolved: the
-- workers loading the configuration are not held, calls fall back, and
-- the attempt and the probe say why.  A symbolic link to a key file is
-- followed (Kubernetes and systemd mount secrets so)
SELECT current_setting('data_directory') || '/igny8_fifo.key' AS fifokey,
       current_setting('data_directory') || '/igny8_link.key' AS linkkey,
       current_setting('data_directory') || '/igny8_target.key' AS targetkey \gset
SELECT format('rm -f %s && mkfifo %s', :'fifokey', :'fifokey') AS mkfifo,
       format('rm -f %s && ln -s %s %s', :'linkkey', :'targetkey', :'linkkey') AS mklink \gset
COPY (SELECT 1 WHERE false) TO PROGRAM :'mkfifo';
COPY (SELECT 'sk-test-openai-0123456789') TO :'targetkey';
COPY (SELECT 1 WHERE false) TO PROGRAM :'mklink';
UPDATE igny8_providers SET api_key_ref = 'file:' || :'fifokey' WHERE id = 'openai';
SELECT wait_for_config();
TRUNCATE ai_usage_log;
SELECT provider FROM igny8_chat('[{"role":"user","content":"FIFO key"}]', 'gpt-4-fallback');
\pset format unaligned
\pset tuples_only on
SELECT replace(show_error($$SELECT igny8_chat('[{"role":"user","content":"FIFO key [[sim anthropic:status=404]]"}]',
                                              'gpt-4-fallback')$$),
               current_setting('data_directory'), '$PGDATA');
\pset format aligned
\pset tuples_only off
SELECT provider, healthy, replace(detail::text, current_setting('data_directory'), '$PGDATA') AS detail
  FROM igny8_check_health() WHERE provider = 'openai';
UPDATE igny8_providers SET api_key_ref = 'file:' || :'linkkey' WHERE id = 'openai';
SELECT wait_for_config();
SELECT provider FROM igny8_chat('[{"role":"user","content":"Linked key"}]', 'gpt-4-fallback');
UPDATE igny8_providers SET api_key_ref = 'env:OPENAI_API_KEY' WHERE id = 'openai';
SELECT format('rm -f %s %s %s', :'fifokey', :'linkkey', :'targetkey') AS rmkeys \gset
COPY (SELECT 1 WHERE false) TO PROGRAM :'rmkeys';

-- a configuration table locked for a long time holds up no call: a
-- configuration change committed meanwhile makes the workers try a load,
-- which waits for the lock only briefly; they go on with the
-- configuration they had (an answer in flight, new calls), and load the
-- new one once the lock is gone
TRUNCATE ai_usage_log;
SELECT dblink_connect('inflight', 'dbname=' || current_database());
SELECT dblink_send_query('inflight',
    $$SELECT igny8_generate_text('In flight [[sim ollama:delay=2 tag=lk1]]', 'gpt-4')$$);
SELECT sim_wait_arrival('lk1');
SELECT dblink_connect('locker', 'dbname=' || current_database());
-- (the lock goes by itself after a minute, should a call never come)
SELECT dblink_send_query('locker',
    'BEGIN; LOCK TABLE igny8_prices IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT');
SELECT wait_until($$(SELECT count(*) = 1 FROM pg_locks
                      WHERE relation = 'igny8_prices'::regclass
                        AND mode = 'AccessExclusiveLock' AND granted)$$,
                  'the lock on igny8_prices');
UPDATE igny8_models SET provider_model = 'qwen3:14b' WHERE alias = 'gpt-4';
SELECT dblink_answer('inflight') AS in_flight;
SELECT n, t FROM generate_series(1, 3) n, igny8_generate_text('Locked ' || n, 'gpt-4') t;
SELECT count(*) AS usage_rows FROM ai_usage_log;
SELECT count(*) AS still_locked FROM pg_locks
 WHERE relation = 'igny8_prices'::regclass AND mode = 'AccessExclusiveLock' AND granted;
SELECT bool_or(config_current) AS config_current FROM igny8_worker_status();
SELECT dblink_cancel_query('locker');
SELECT dblink_disconnect('locker');
SELECT dblink_disconnect('inflight');
SELECT wait_for_config();
SELECT igny8_generate_text('Which model?', 'gpt-4');

-- a change made with session_replication_role = replica (a logical
-- replication subscriber applying it, a data-only restore) reaches the
-- workers too
SET session_replication_role = replica;
UPDATE igny8_models SET provider_model = 'qwen3:8b' WHERE alias = 'gpt-4';
RESET session_replication_role;
SELECT wait_for_config();
SELECT igny8_generate_text('Which model?', 'gpt-4');
SELECT tgrelid::regclass AS table_name, tgname, tgenabled FROM pg_trigger
 WHERE tgfoid = 'igny8_config_changed'::regproc ORDER BY tgrelid::regclass::text;
UPDATE igny8_models SET provider_model = 'qwen3:32b' WHERE alias = 'gpt-4';

-- a provider's base_url, api_key_ref and settings, and a deployment's
-- settings, are checked when written: a port out of range, a base_url
-- ending in /v1, a key reference that cannot name a key, an unknown
-- settings key or a value of another type than the workers read would
-- otherwise be ignored or fail every call.  Nothing is written; no
-- message repeats a key reference or a proxy
\pset format unaligned
\pset tuples_only on
SELECT show_error($$UPDATE igny8_providers SET base_url = 'http://127.0.0.1:99999' WHERE id = 'self_hosted_ai'$$);
SELECT show_error($$UPDATE igny8_providers SET base_url = 'http://127.0.0.1:notaport' WHERE id = 'self_hosted_ai'$$);
SELECT show_error($$UPDATE igny8_providers SET base_url = 'http://[::1]:0' WHERE id = 'self_hosted_ai'$$);
SELECT show_error($$UPDATE igny8_providers SET base_url = 'https://api.openai.com/v1' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET base_url = 'https://gateway.example/openai/V1/' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET api_key_ref = '' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET api_key_ref = 'env:' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET api_key_ref = 'file:relative/key' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET settings = '{"proxy": "not a url"}' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET settings = '{"proxy": "ftp://user:pw@proxy:21"}' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET settings = '{"proxy": 5}' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET settings = '{"extra_body": "x"}' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET settings = '{"ca_file": "certs/box.pem"}' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET settings = '{"max_image_bytes": -5}' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET settings = '{"check_models": "no"}' WHERE id = 'openai'$$);
SELECT show_error($$UPDATE igny8_providers SET settings = '{"options": [1]}' WHERE id = 'self_hosted_ai'$$);
SELECT show_error($$UPDATE igny8_providers SET settings = '{"keep_alive": "30m", "keepalive": "30m"}' WHERE id = 'self_hosted_ai'$$);
SELECT show_error($$INSERT INTO igny8_providers (id, kind, base_url, settings)
                    VALUES ('box3', 'ollama', 'http://127.0.0.1:11434', '{"think": 1}')$$);
SELECT show_error($$UPDATE igny8_models SET settings = '{"thinking": false}' WHERE alias = 'gpt-4'$$);
SELECT show_error($$UPDATE igny8_models SET settings = '{"proxy": "http://proxy:3128"}' WHERE alias = 'gpt-4'$$);
SELECT show_error($$UPDATE igny8_models SET settings = '{"max_image_bytes": 1.5}' WHERE alias = 'dall-e-3'$$);
\pset format aligned
\pset tuples_only off
SELECT id, api_key_ref, settings FROM igny8_providers ORDER BY id;
SELECT alias, provider_id, settings FROM igny8_models WHERE alias IN ('gpt-4', 'dall-e-3');
-- what the README's examples and the workers read is accepted
BEGIN;
UPDATE igny8_providers
   SET base_url = 'https://[::1]:8443/gateway/',
       settings = '{"proxy": "socks5h://user:pw@proxy:1080", "ca_file": "/etc/ssl/box.pem",
                    "check_models": false, "max_image_bytes": 67108864,
                    "extra_body": {"store": false}, "max_tokens_field": "max_completion_tokens"}'
 WHERE id = 'openai';
UPDATE igny8_providers SET api_key_ref = 'file:/run/secrets/anthropic',
       settings = '{"anthropic_version": "2023-06-01", "proxy": "proxy.internal:3128"}'
 WHERE id = 'anthropic';
UPDATE igny8_providers SET api_key_ref = 'sk-a-literal-key',
       settings = '{"keep_alive": -1, "think": "low", "options": {"num_ctx": 8192}}'
 WHERE id = 'self_hosted_ai';
UPDATE igny8_models SET settings = '{"think": true, "keep_alive": "5m", "options": {"top_p": 0.9}}'
 WHERE alias = 'gpt-4';
UPDATE igny8_models SET settings = '{"max_image_bytes": 100000}' WHERE alias = 'dall-e-3';
SELECT count(*) AS accepted FROM igny8_providers WHERE settings <> '{}';
ROLLBACK;
-- a URL's user information (refused by the column's check, after this
-- trigger) is not taken for a port nor quoted; an IPv6 host without a
-- port and an empty proxy (no proxy, as without the key) are accepted
\pset format unaligned
\pset tuples_only on
SELECT show_error($$UPDATE igny8_providers SET base_url = 'http://admin:s3cret@127.0.0.1:99999' WHERE id = 'self_hosted_ai'$$);
\pset format aligned
\pset tuples_only off
BEGIN;
UPDATE igny8_providers SET base_url = 'https://[2001:db8::1]/' WHERE id = 'openai';
UPDATE igny8_providers SET settings = '{"proxy": ""}' WHERE id = 'self_hosted_ai';
SELECT base_url FROM igny8_providers WHERE id = 'openai';
SELECT settings FROM igny8_providers WHERE id = 'self_hosted_ai';
ROLLBACK;
-- an UPDATE has only the columns it changes checked: a row written before
-- a check existed (here: written with the checks disabled) can still be
-- disabled or reordered; changing the invalid column is refused
BEGIN;
ALTER TABLE igny8_providers DISABLE TRIGGER igny8_providers_check;
ALTER TABLE igny8_models DISABLE TRIGGER igny8_models_settings_check;
UPDATE igny8_providers SET base_url = 'https://api.openai.com/v1', api_key_ref = 'file:relative/key',
       settings = '{"temperature": 0.2}' WHERE id = 'openai';
UPDATE igny8_models SET settings = '{"temperature": 0.2}' WHERE alias = 'gpt-4';
ALTER TABLE igny8_providers ENABLE TRIGGER igny8_providers_check;
ALTER TABLE igny8_models ENABLE TRIGGER igny8_models_settings_check;
UPDATE igny8_providers SET enabled = false, priority = priority + 1 WHERE id = 'openai';
UPDATE igny8_models SET settings = settings, enabled = false WHERE alias = 'gpt-4';
SELECT id, enabled FROM igny8_providers WHERE id = 'openai';
SELECT alias, provider_id, enabled FROM igny8_models WHERE alias = 'gpt-4' ORDER BY provider_id;
SAVEPOINT s;
UPDATE igny8_providers SET settings = '{"temperature": 0.3}' WHERE id = 'openai';
ROLLBACK TO s;
UPDATE igny8_models SET settings = '{"temperature": 0.3}' WHERE alias = 'gpt-4';
ROLLBACK;
