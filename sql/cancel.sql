--
-- cancel: statement_timeout, pg_cancel_backend and a client that goes away
-- end the wait at once, and the worker aborts the HTTP transfer (the
-- simulator sees the connection close)
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
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
SELECT wait_until($$(SELECT count(*) FROM ai_usage_log
                      WHERE error_message = 'cancelled by the caller') >= 3$$,
                  'three cancelled attempts in ai_usage_log');
SELECT provider, success, error_message, http_status
  FROM ai_usage_log WHERE NOT success ORDER BY id;

-- every slot came back: all are free again, as shared memory counts them
-- (the caller frees a slot it abandoned only once its worker let go of it)
SELECT wait_until($$(SELECT slots FROM igny8_slot_status() WHERE state = 'free')
                     = current_setting('igny8_ai.max_in_flight')::int$$,
                  'every request slot to be free');
SELECT state, slots FROM igny8_slot_status() WHERE slots > 0;

-- a cancelled call that waited for a provider place leaves the queue: the
-- place goes to the next caller, and nothing stays counted
UPDATE igny8_providers SET max_concurrent = 1 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();
SELECT dblink_connect('holder', 'dbname=' || current_database());
SELECT dblink_send_query('holder',
    $$SELECT igny8_generate_text('Holds the place [[sim ollama:delay=2 tag=k4]]', 'gpt-4')$$);
SELECT sim_wait_arrival('k4');
SET statement_timeout = '500ms';
\set VERBOSITY sqlstate
SELECT igny8_generate_text('Waits, then gives up [[sim ollama:tag=k5]]', 'gpt-4');
\set VERBOSITY default
RESET statement_timeout;
SELECT * FROM dblink_get_result('holder') AS t(answer text);
SELECT dblink_disconnect('holder');
SELECT sim('log --tag k5 --role ollama --count') AS cancelled_reached_ollama;
SELECT wait_until($$(SELECT in_flight = 0 AND queued = 0 FROM igny8_service_status
                     WHERE provider = 'self_hosted_ai')$$, 'the place to be given back');
SELECT igny8_generate_text('Next in line', 'gpt-4');
UPDATE igny8_providers SET max_concurrent = 8 WHERE id = 'self_hosted_ai';
