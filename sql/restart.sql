--
-- restart: a worker told to stop (pg_terminate_backend, a fast shutdown)
-- gives every request an outcome before it exits: a request that sent
-- nothing is queued again and served by the worker that comes back; a
-- transfer in flight is aborted and logged as interrupted; the provider's
-- places are given back
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;
UPDATE igny8_providers SET max_concurrent = 2 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();

-- two calls reach Ollama and are held there; two more wait for a place
SELECT dblink_connect('c' || i, 'dbname=' || current_database()) FROM generate_series(1, 4) i;
SELECT dblink_send_query('c' || i,
    format($$SELECT igny8_generate_text('Held %s [[sim ollama:delay=30 tag=rs]]', 'gpt-4')$$, i))
  FROM generate_series(1, 2) i;
SELECT sim_wait_arrival('rs', 2);
SELECT dblink_send_query('c' || i,
    format($$SELECT igny8_generate_text('Waiting %s [[sim any:tag=rw]]', 'gpt-4')$$, i))
  FROM generate_series(3, 4) i;
SELECT wait_until($$(SELECT queued = 2 FROM igny8_service_status WHERE provider = 'self_hosted_ai')$$,
                  'two calls waiting for a place');
SELECT in_flight, queued FROM igny8_service_status WHERE provider = 'self_hosted_ai';

SELECT count(pg_terminate_backend(pid)) AS terminated
  FROM igny8_worker_status() WHERE pid IS NOT NULL;

-- what each caller got: an answer, or SQLSTATE 57000 (interrupted)
CREATE FUNCTION outcome(conn text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    a text;
BEGIN
    SELECT r.answer INTO a FROM dblink_get_result(conn) AS r(answer text);
    RETURN CASE WHEN a LIKE 'ollama %' THEN 'answered by Ollama' ELSE a END;
EXCEPTION WHEN OTHERS THEN
    RETURN CASE WHEN SQLSTATE = '57000' AND SQLERRM LIKE '%was interrupted'
                THEN 'interrupted' ELSE SQLSTATE || ': ' || SQLERRM END;
END
$$;
-- the calls held at Ollama were interrupted; the waiting ones were queued
-- again and answered after the restart (or, when a place freed by the
-- stopping worker let one go out just before its own worker stopped,
-- interrupted too: both workers stop at the same moment)
SELECT outcome('c1') AS c1, outcome('c2') AS c2;
SELECT outcome('c3') IN ('answered by Ollama', 'interrupted') AS c3_has_an_outcome,
       outcome('c4') IN ('answered by Ollama', 'interrupted') AS c4_has_an_outcome;
SELECT dblink_disconnect('c' || i) FROM generate_series(1, 4) i;

-- a usage row for every request that reached Ollama, none missing; the
-- interrupted ones say so (chat requests only: the scheduled health check
-- may probe /api/tags meanwhile).  A row beyond the requests is an
-- interrupted attempt that may have reached Ollama: a worker that took a
-- waiting call when the other freed its place, and stopped before Ollama
-- read the request, logs the transfer it had started
SELECT wait_until($$(SELECT count(*) FROM ai_usage_log) >= 4$$, 'the usage rows');
SELECT r.requests <= count(*) AS every_request_has_a_row,
       count(*) - r.requests
       <= count(*) FILTER (WHERE error_message = 'interrupted: the igny8_ai worker was stopped')
       AS more_rows_only_interrupted,
       count(*) FILTER (WHERE error_message = 'interrupted: the igny8_ai worker was stopped')
       >= 2 AS held_ones_interrupted
  FROM ai_usage_log,
       (SELECT line::int AS requests FROM sim('log --role ollama --path /api/chat --count') AS line) r
 WHERE provider = 'self_hosted_ai' GROUP BY r.requests;
SELECT DISTINCT provider, http_status, error_message
  FROM ai_usage_log WHERE NOT success;

-- the workers came back, the places are free, nothing is counted twice
SELECT wait_for_workers() AS workers;
SELECT in_flight, queued FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT sum(in_flight) AS held_by_workers FROM igny8_worker_status();
SELECT igny8_generate_text('After the restart', 'gpt-4');
UPDATE igny8_providers SET max_concurrent = 8 WHERE id = 'self_hosted_ai';

-- a worker does not take transaction settings from its database: with
-- read-only transactions and repeatable read set for the database (new
-- sessions take them), a restarted worker still writes its usage rows and
-- runs a submitted job.  (statement_timeout and lock_timeout never
-- interrupt a worker: their timers raise SIGINT, which it ignores)
SELECT array_agg(pid) AS old_pids FROM igny8_worker_status() \gset
SELECT format('ALTER DATABASE %I SET %s', current_database(), s)
  FROM unnest(ARRAY['default_transaction_read_only = on',
                    'default_transaction_isolation = ''repeatable read''']) s \gexec
SELECT count(pg_terminate_backend(pid)) AS terminated
  FROM igny8_worker_status() WHERE pid IS NOT NULL;
SELECT wait_until(format($$(SELECT count(*) FROM igny8_worker_status()
                             WHERE pid IS NOT NULL AND pid <> ALL (%L::int[]))
                            = current_setting('igny8_ai.workers')::int$$, :'old_pids'),
                  'the workers to start again');
SELECT wait_for_config();
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Pinned settings [[sim ollama:tag=pin]]', 'gpt-4');
SELECT count(*) AS rows, bool_and(success) AS all_ok FROM ai_usage_log;
SELECT igny8_submit_text('Pinned job [[sim ollama:tag=pin]]', 'gpt-4') AS pinned_job \gset
SELECT state FROM igny8_wait_job(:pinned_job, '30 s');
SELECT count(*) AS rows_with_the_job FROM ai_usage_log;
SELECT format('ALTER DATABASE %I RESET %s', current_database(), s)
  FROM unnest(ARRAY['default_transaction_read_only', 'default_transaction_isolation']) s \gexec
