--
-- cancel: statement_timeout, pg_cancel_backend and a client that goes away
-- end the wait at once, and the worker aborts the HTTP transfer (the
-- simulator sees the connection close)
--
TRUNCATE ai_usage_log;

-- statement_timeout: SQLSTATE 57014, and the backend sees the disconnect
SET statement_timeout = '1s';
\set VERBOSITY sqlstate
SELECT igny8_generate_text('Cancel me [[sim ollama:delay=30 tag=k1]]', 'gpt-4');
\set VERBOSITY default
RESET statement_timeout;
SELECT sim_wait_disconnect('k1');

-- pg_cancel_backend from another session
SELECT dblink_connect('victim', 'dbname=' || current_database());
SELECT pid AS victim_pid FROM dblink('victim', 'SELECT pg_backend_pid()') AS t(pid int) \gset
SELECT dblink_send_query('victim',
    $$SELECT igny8_generate_text('Cancel me too [[sim ollama:delay=30 tag=k2]]', 'gpt-4')$$);
-- once the request reached the simulator
SELECT sim_wait_arrival('k2');
SELECT pg_cancel_backend(:victim_pid);
\set VERBOSITY sqlstate
SELECT * FROM dblink_get_result('victim') AS t(answer text);
\set VERBOSITY default
SELECT * FROM dblink_get_result('victim') AS t(answer text);
SELECT sim_wait_disconnect('k2');
-- the session is usable afterwards
SELECT * FROM dblink('victim', $$SELECT igny8_generate_text('Still here', 'gpt-4')$$) AS t(answer text);
SELECT dblink_disconnect('victim');

-- the client disconnects while waiting
SELECT dblink_connect('gone', 'dbname=' || current_database());
SELECT dblink_send_query('gone',
    $$SELECT igny8_generate_text('Nobody will read this [[sim ollama:delay=30 tag=k3]]', 'gpt-4')$$);
SELECT sim_wait_arrival('k3');
SELECT dblink_disconnect('gone');
SELECT sim_wait_disconnect('k3');

-- each cancelled attempt left a usage row saying so (bounded wait: the
-- worker writes it right after aborting)
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT count(*) FROM ai_usage_log
                    WHERE error_message = 'cancelled by the caller') >= 3;
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT provider, success, error_message, http_status
  FROM ai_usage_log WHERE NOT success ORDER BY id;

-- every slot came back: many calls still work
SELECT count(*) AS answered
  FROM generate_series(1, 20) i, igny8_generate_text('Again ' || i, 'gpt-4') t;
