--
-- usage: the usage rows are committed by the worker before the caller
-- gets its answer, whatever the caller's transaction does
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- a caller that rolls back still leaves its rows
BEGIN;
SELECT igny8_generate_text('Rolled back', 'gpt-4');
ROLLBACK;
SELECT provider, success, attempt FROM ai_usage_log;

-- the row is visible to the caller as soon as the call returns
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT igny8_generate_text('Visible', 'gpt-4') IS NOT NULL AS answered;
SELECT count(*) AS rows_seen FROM ai_usage_log;
COMMIT;

-- a caller that fails after the answer keeps the rows too
DO $$
BEGIN
    PERFORM igny8_generate_text('Then fail', 'gpt-4');
    RAISE EXCEPTION 'application error after the call';
END
$$;
SELECT count(*) AS rows_after_error FROM ai_usage_log;

-- prompts and outputs are stored only when asked
ALTER SYSTEM SET igny8_ai.log_content = on;
SELECT reload_settings();
SELECT igny8_generate_text('Remember me', 'gpt-4');
SELECT prompt, response FROM ai_usage_log WHERE prompt IS NOT NULL;
ALTER SYSTEM RESET igny8_ai.log_content;
SELECT reload_settings();

-- many calls in one statement: every one logged once
TRUNCATE ai_usage_log;
SELECT count(*) FROM generate_series(1, 200) i, igny8_generate_text('Bulk ' || i, 'gpt-3.5-turbo-fast') t;
SELECT count(*) AS rows, count(DISTINCT request_id) AS requests, bool_and(success) AS all_ok
  FROM ai_usage_log;

-- request ids are version 7 UUIDs (RFC 9562): the call's time, in Unix
-- milliseconds, in their first 48 bits, so that new rows land at the end
-- of the index on request_id, and ids sort in the order calls were made
SELECT count(*) FILTER (WHERE substr(request_id::text, 15, 1) = '7') AS version_7,
       count(*) FILTER (WHERE substr(request_id::text, 20, 1) IN ('8', '9', 'a', 'b')) AS rfc_variant,
       count(*) FILTER (WHERE to_timestamp(('x' || lpad(substr(replace(request_id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint / 1000.0)
                              BETWEEN created_at - interval '1 minute' AND created_at) AS made_when_called
  FROM ai_usage_log;
SELECT count(*) FILTER (WHERE request_id > prev) AS in_call_order,
       count(*) FILTER (WHERE request_id <= prev) AS out_of_order
  FROM (SELECT request_id, lag(request_id) OVER (ORDER BY id) AS prev FROM ai_usage_log) r
 WHERE prev IS NOT NULL;
-- a batch's ids are made within microseconds of each other: they still
-- sort in the order of its prompts, and are distinct
SELECT count(*) FILTER (WHERE request_id > prev) AS in_prompt_order,
       count(*) FILTER (WHERE request_id <= prev) AS out_of_order
  FROM (SELECT request_id, lag(request_id) OVER (ORDER BY ord) AS prev
          FROM igny8_generate_text_batch(array(SELECT 'Batch ' || i FROM generate_series(1, 50) i),
                                         'gpt-3.5-turbo-fast')) b
 WHERE prev IS NOT NULL;

-- the rows a worker writes together go in by INSERTs of up to 8 rows
-- (USAGE_BATCH, usage.c), one statement each (one command id, cmin, in
-- the transaction).  ai_usage_log is locked: the worker's first write
-- (or a scan of igny8_jobs it starts once it holds the batch; none is due
-- when the lock is taken) waits while the answers of a 20-prompt batch
-- arrive (each 1 s after its request, so all 20 are sent first), then the
-- rest are written together
TRUNCATE ai_usage_log;
UPDATE igny8_providers SET max_concurrent = 20 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();
SELECT dblink_connect('locker', 'dbname=' || current_database());
SELECT dblink_connect('caller', 'dbname=' || current_database());
SELECT wait_scan_away(0);
SELECT dblink_exec('locker', 'BEGIN');
SELECT dblink_exec('locker', 'LOCK TABLE ai_usage_log IN ACCESS EXCLUSIVE MODE');
SELECT dblink_send_query('caller',
    $$SELECT count(*) FROM igny8_generate_text_batch(
        array(SELECT 'Together ' || i || ' [[sim ollama:delay=1 tag=rows]]'
                FROM generate_series(1, 20) i), 'gpt-4')$$);
SELECT sim('wait-requests --tag rows --count 20 --timeout 20');
SELECT wait_until($$(SELECT a.wait_event_type = 'Lock' FROM pg_stat_activity a
                     JOIN igny8_worker_status() w ON w.pid = a.pid WHERE w.worker = 0)$$,
                  'the worker waiting on the lock');
SELECT dblink_exec('locker', 'COMMIT');
SELECT answered FROM dblink_get_result('caller') AS r(answered bigint);
SELECT count(*) AS rows, count(DISTINCT request_id) AS requests, bool_and(success) AS all_ok
  FROM ai_usage_log;
SELECT max(n) AS most_rows_per_insert
  FROM (SELECT count(*) AS n FROM ai_usage_log GROUP BY xmin::text, cmin::text) s;
SELECT dblink_disconnect('caller');
SELECT dblink_disconnect('locker');
UPDATE igny8_providers SET max_concurrent = 8 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();
