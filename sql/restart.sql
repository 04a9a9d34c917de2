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

-- the calls held at Ollama were interrupted (SQLSTATE 57000) ...
SELECT show_error($$SELECT * FROM dblink_get_result('c1') AS t(answer text)$$);
SELECT show_error($$SELECT * FROM dblink_get_result('c2') AS t(answer text)$$);
-- ... the waiting ones were served after the restart, by Ollama
SELECT * FROM dblink_get_result('c3') AS t(answer text);
SELECT * FROM dblink_get_result('c4') AS t(answer text);
SELECT dblink_disconnect('c' || i) FROM generate_series(1, 4) i;

-- one usage row per request that reached a backend: the interrupted ones
-- say so, and none is missing
SELECT sim('log --tag rs --count') AS reached_ollama,
       count(*) FILTER (WHERE error_message = 'interrupted: the igny8_ai worker was stopped') AS interrupted_rows,
       count(*) FILTER (WHERE success) AS answered_rows
  FROM ai_usage_log;
SELECT provider, success, http_status, error_message FROM ai_usage_log ORDER BY success, id;

-- the workers came back, the places are free, nothing is counted twice
SELECT wait_for_workers() AS workers;
SELECT in_flight, queued FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT sum(in_flight) AS held_by_workers FROM igny8_worker_status();
SELECT igny8_generate_text('After the restart', 'gpt-4');
UPDATE igny8_providers SET max_concurrent = 8 WHERE id = 'self_hosted_ai';
