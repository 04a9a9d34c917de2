--
-- circuit: an open circuit's trial request, taken by the attempt that is
-- sent (not by routing), one at a time
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
ALTER SYSTEM SET igny8_ai.circuit_failure_threshold = 3;
ALTER SYSTEM SET igny8_ai.circuit_cooldown = '2s';
SELECT reload_settings();
SELECT sim('reset') IS NOT NULL AS reset;
SELECT count(*) AS checked FROM igny8_check_health();
-- seconds since the provider's state last changed
CREATE FUNCTION cooled(provider text) RETURNS text LANGUAGE sql AS $$
    SELECT format($q$(SELECT since + interval '2.1 s' < clock_timestamp()
                        FROM igny8_service_status WHERE provider = %L)$q$, provider)
$$;

-- OpenAI's circuit opens: three calls find it refusing connections
SELECT sim('down openai') IS NOT NULL AS down;
SELECT count(*) FROM generate_series(1, 3) i,
       igny8_generate_text('OpenAI down ' || i || ' [[sim ollama:status=404]]', 'gpt-4') t;
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'openai';
SELECT sim('up openai') IS NOT NULL AS up;
SELECT wait_until(cooled('openai'), 'the cool-down of the open circuit');
-- a call the self-hosted provider answers does not use OpenAI's trial:
-- the next call that needs OpenAI gets it, and its success closes the circuit
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Answered first', 'gpt-4');
SELECT igny8_generate_text('Needs OpenAI [[sim ollama:status=404]]', 'gpt-4');
SELECT attempt, provider, success FROM ai_usage_log ORDER BY id;
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'openai';

-- the self-hosted provider's circuit opens; after the cool-down one trial
-- goes out, and while it is in flight (its answer takes 4 s, longer than
-- another cool-down) the other calls go to the fallback
SELECT sim('down ollama') IS NOT NULL AS down;
SELECT count(*) FROM generate_series(1, 3) i,
       igny8_generate_text('Box down ' || i, 'gpt-4') t;
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT sim('up ollama') IS NOT NULL AS up;
SELECT wait_until(cooled('self_hosted_ai'), 'the cool-down of the open circuit');
TRUNCATE ai_usage_log;
SELECT dblink_connect('trial', 'dbname=' || current_database());
SELECT dblink_send_query('trial',
    $$SELECT igny8_generate_text('Trial [[sim ollama:delay=4 tag=ct1]]', 'gpt-4')$$);
SELECT wait_until($$(SELECT line::int FROM sim('log --role ollama --tag ct1 --count') AS line) >= 1$$,
                  'the trial at the box');
SELECT now() AS trial_sent \gset
SELECT wait_until(format($q$clock_timestamp() > %L::timestamptz + interval '2.1 s'$q$, :'trial_sent'),
                  'another cool-down');
SELECT igny8_generate_text('While the trial runs [[sim ollama:tag=ct2]]', 'gpt-4');
SELECT line AS ct2_at_the_box FROM sim('log --role ollama --tag ct2 --count') AS line;
SELECT dblink_answer('trial') AS trial_answer;
SELECT dblink_disconnect('trial');
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT provider, success, count(*) FROM ai_usage_log GROUP BY 1, 2 ORDER BY 1, 2;

-- a trial that ends with nothing to say of the provider (the caller's own
-- 1 s deadline cuts it short) leaves the circuit open: the next calls wait
-- out the cool-down since the trial's start (5 s here) and go to the
-- fallback meanwhile, not one trial after another to a box that answers in 6
ALTER SYSTEM SET igny8_ai.circuit_cooldown = '5s';
SELECT reload_settings();
SELECT sim('down ollama') IS NOT NULL AS down;
SELECT count(*) FROM generate_series(1, 3) i,
       igny8_generate_text('Box down again ' || i, 'gpt-4') t;
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT sim('up ollama') IS NOT NULL AS up;
SELECT sim($$config ollama '{"delay": 6}'$$) IS NOT NULL AS slow;
SELECT wait_until(replace(cooled('self_hosted_ai'), '2.1 s', '5.1 s'), 'the cool-down of the open circuit');
TRUNCATE ai_usage_log;
SELECT show_error(format($q$SELECT igny8_generate_text('Short %s', 'gpt-4', timeout => '1 s')$q$, i))
  FROM generate_series(1, 3) i;
SELECT provider, success, count(*) FROM ai_usage_log GROUP BY 1, 2 ORDER BY 1, 2;
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'self_hosted_ai';

-- a failure reported while a trial is in flight (here the box's probe,
-- which times out) starts a new cool-down but leaves the trial alone:
-- after that cool-down, calls still go to the fallback, not to a second
-- trial
ALTER SYSTEM SET igny8_ai.circuit_cooldown = '2s';
ALTER SYSTEM SET igny8_ai.health_probe_timeout = '1s';
SELECT reload_settings();
-- (the cool-down since the last trial's start: its attempt's created_at)
SELECT wait_until($$clock_timestamp() > (SELECT max(created_at) + interval '2.2 s' FROM ai_usage_log
                                          WHERE provider = 'self_hosted_ai')$$,
                  'the cool-down since the last trial');
SELECT dblink_connect('trial', 'dbname=' || current_database());
SELECT dblink_send_query('trial',
    $$SELECT igny8_generate_text('Second trial [[sim ollama:tag=ct3]]', 'gpt-4')$$);
SELECT wait_until($$(SELECT line::int FROM sim('log --role ollama --tag ct3 --count') AS line) >= 1$$,
                  'the second trial at the box');
SELECT healthy FROM igny8_check_health() WHERE provider = 'self_hosted_ai';
SELECT now() AS probed \gset
SELECT wait_until(format($q$clock_timestamp() > %L::timestamptz + interval '2.1 s'$q$, :'probed'),
                  'the cool-down the probe started');
SELECT igny8_generate_text('While the second trial runs [[sim ollama:tag=ct4]]', 'gpt-4');
SELECT line AS ct4_at_the_box FROM sim('log --role ollama --tag ct4 --count') AS line;
SELECT dblink_answer('trial') AS trial_answer;
SELECT dblink_disconnect('trial');
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'self_hosted_ai';
ALTER SYSTEM RESET igny8_ai.health_probe_timeout;

DROP FUNCTION cooled(text);
SELECT sim('reset') IS NOT NULL AS reset;
ALTER SYSTEM RESET igny8_ai.circuit_failure_threshold;
ALTER SYSTEM RESET igny8_ai.circuit_cooldown;
SELECT reload_settings();
SELECT count(*) AS checked FROM igny8_check_health();
