--
-- failures: timeouts, oversized and truncated responses
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- the deployment's timeout ends a slow attempt; the fallback answers
UPDATE igny8_models SET timeout = '1 s' WHERE alias = 'gpt-4';
SELECT igny8_generate_text('Slow [[sim ollama:delay=5]]', 'gpt-4');
SELECT * FROM attempts;
UPDATE igny8_models SET timeout = '300 s' WHERE alias = 'gpt-4';

-- the overall deadline (timeout argument) ends the whole request
TRUNCATE ai_usage_log;
SELECT show_error($$SELECT igny8_generate_text('Very slow [[sim any:delay=10]]', 'gpt-4', timeout => '1.5 s')$$);
SELECT * FROM attempts;

-- when the last candidate is the one that used up the deadline, the error
-- is the deadline's too
INSERT INTO igny8_models (alias, provider_id, provider_model, timeout)
VALUES ('solo-slow', 'self_hosted_ai', 'qwen3:8b', '60 s');
SELECT show_error($$SELECT igny8_generate_text('Slow and alone [[sim ollama:delay=10]]', 'solo-slow', timeout => '1 s')$$);
DELETE FROM igny8_models WHERE alias = 'solo-slow';

-- ... and so does igny8_ai.default_timeout
TRUNCATE ai_usage_log;
SET igny8_ai.default_timeout = '1s';
SELECT show_error($$SELECT igny8_generate_text('Very slow [[sim any:delay=10]]', 'gpt-4')$$);
RESET igny8_ai.default_timeout;
SELECT count(*) AS attempts FROM ai_usage_log;

-- a response over igny8_ai.max_response_size is cut off and falls back
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Huge [[sim ollama:oversize=70000000]]', 'gpt-4');
SELECT * FROM attempts;

-- an answer that does not fit in igny8_ai.payload_memory (32MB here) is a
-- clear error, and the worker goes on serving
TRUNCATE ai_usage_log;
SHOW igny8_ai.payload_memory;
SELECT igny8_generate_text('Big [[sim ollama:oversize=40000000]]', 'gpt-4');
SELECT provider, success FROM ai_usage_log ORDER BY id;
SELECT igny8_generate_text('Small again', 'gpt-4');

-- igny8_ai.answer_memory, for text: an answer of a little over half of
-- it, alone in flight, fits (near the limit the buffer grows by an eighth,
-- not twice); one larger than all of it fails its attempt and goes to the
-- next candidate at once (a retry could not fit it either)
TRUNCATE ai_usage_log;
ALTER SYSTEM SET igny8_ai.answer_memory = '1536kB';
SELECT reload_settings();
SELECT length(igny8_generate_text('Big [[sim ollama:oversize=1100000]]', 'gpt-4')) AS answer_length;
SELECT left(igny8_generate_text('Bigger [[sim ollama:oversize=2000000]]', 'gpt-4'), 13) AS answered_by;
SELECT attempt, provider, success, error_message FROM ai_usage_log ORDER BY id;
ALTER SYSTEM RESET igny8_ai.answer_memory;
SELECT reload_settings();

-- one slow request does not delay another (a worker holds many at once)
TRUNCATE ai_usage_log;
-- two slow requests, in the hands of the worker the fast one goes to
SELECT dblink_connect('slow', 'dbname=' || current_database());
SELECT dblink_send_query('slow',
    $$SELECT igny8_generate_text('Slow one [[sim ollama:delay=4 tag=sl]]', 'gpt-4')$$);
SELECT dblink_connect('slow2', 'dbname=' || current_database());
SELECT dblink_send_query('slow2',
    $$SELECT igny8_generate_text('Slow two [[sim ollama:delay=4 tag=sl]]', 'gpt-4')$$);
SELECT sim_wait_arrival('sl', 2);
SELECT clock_timestamp() AS t0 \gset
SELECT igny8_generate_text('Fast one', 'gpt-4');
SELECT clock_timestamp() - :'t0' < interval '3 s' AS not_delayed;
SELECT * FROM dblink_get_result('slow') AS t(answer text);
SELECT * FROM dblink_get_result('slow2') AS t(answer text);
SELECT dblink_disconnect('slow');
SELECT dblink_disconnect('slow2');

-- connections to a backend are kept alive between requests: 20 calls in a
-- row use at most one connection per worker
SELECT count(*) FROM generate_series(1, 20) i,
       igny8_generate_text('Keep alive ' || i || ' [[sim ollama:tag=ka]]', 'gpt-4') t;
SELECT sim('connections --tag ka')::int <= 2 AS reused;

-- a call made while the calling transaction holds a lock on a table the
-- workers write that conflicts with their writes (ShareLock or stronger:
-- LOCK TABLE, TRUNCATE, ALTER TABLE, CREATE INDEX) is refused at once:
-- the worker would wait for the transaction, the transaction for the
-- worker.  Every calling function; nothing is sent, no slot is taken
-- (short timeouts: without the check, each call would wait for its
-- deadline)
TRUNCATE ai_usage_log;
BEGIN;
SET LOCAL statement_timeout = '20 s';
LOCK TABLE ai_usage_log IN SHARE MODE;
SELECT show_error($$SELECT igny8_generate_text('Self-deadlock', 'gpt-4', timeout => '3 s')$$);
SELECT show_error($$SELECT * FROM igny8_chat('[{"role":"user","content":"Self-deadlock"}]', 'gpt-4', '{"timeout": 3}')$$);
SELECT show_error($$SELECT * FROM igny8_generate_text_batch(ARRAY['One', 'Two'], 'gpt-4', '{"timeout": 3}')$$);
SELECT show_error($$SELECT * FROM igny8_generate_image('A cloud', options => '{"timeout": 3}')$$);
SELECT show_error($$SELECT * FROM igny8_generate_images('A cloud', n => 2, options => '{"timeout": 3}')$$);
SELECT show_error($$SELECT * FROM igny8_check_health()$$);
SELECT state, slots FROM igny8_slot_status() WHERE slots > 0;
ROLLBACK;
-- the response cache and the jobs' tables too: a TRUNCATE holds ACCESS
-- EXCLUSIVE until the transaction ends
BEGIN;
SET LOCAL statement_timeout = '20 s';
TRUNCATE igny8_response_cache;
SELECT show_error($$SELECT igny8_generate_text('Self-deadlock', 'gpt-4', timeout => '3 s')$$);
ROLLBACK;
BEGIN;
SET LOCAL statement_timeout = '20 s';
LOCK TABLE igny8_jobs IN EXCLUSIVE MODE;
SELECT show_error($$SELECT igny8_generate_text('Self-deadlock', 'gpt-4', timeout => '3 s')$$);
ROLLBACK;
-- waiting for a job is refused the same way (the job's worker writes its
-- outcome and usage row); a job that is not due yet stays queued
SELECT igny8_submit_text('Later', 'gpt-4', '{"not_before": "2999-01-01"}') AS later_job \gset
BEGIN;
LOCK TABLE ai_usage_log IN SHARE ROW EXCLUSIVE MODE;
SELECT show_error(format('SELECT igny8_wait_job(%s, %L)', :later_job, '3 s'));
ROLLBACK;
SELECT igny8_cancel_job(:later_job);
DELETE FROM igny8_jobs WHERE id = :later_job;
SELECT count(*) AS usage_rows FROM ai_usage_log;
-- a lock that does not conflict with the workers' writes is no obstacle:
-- rows of the log deleted in the transaction of the call
BEGIN;
DELETE FROM ai_usage_log;
LOCK TABLE ai_usage_log IN SHARE UPDATE EXCLUSIVE MODE;
SELECT igny8_generate_text('Alongside a delete', 'gpt-4');
COMMIT;
SELECT count(*) AS usage_rows FROM ai_usage_log;
