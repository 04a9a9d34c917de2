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
SELECT sim_wait_arrival('ct1');
SELECT now() AS trial_sent \gset
SELECT wait_until(format($q$clock_timestamp() > %L::timestamptz + interval '2.1 s'$q$, :'trial_sent'),
                  'another cool-down');
SELECT igny8_generate_text('While the trial runs [[sim ollama:tag=ct2]]', 'gpt-4');
SELECT line AS ct2_at_the_box FROM sim('log --role ollama --tag ct2 --count') AS line;
SELECT dblink_answer('trial') AS trial_answer;
SELECT dblink_disconnect('trial');
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT provider, success, count(*) FROM ai_usage_log GROUP BY 1, 2 ORDER BY 1, 2;

DROP FUNCTION cooled(text);
SELECT sim('reset') IS NOT NULL AS reset;
ALTER SYSTEM RESET igny8_ai.circuit_failure_threshold;
ALTER SYSTEM RESET igny8_ai.circuit_cooldown;
SELECT reload_settings();
SELECT count(*) AS checked FROM igny8_check_health();
