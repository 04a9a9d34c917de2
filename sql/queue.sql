--
-- queue: a provider's max_concurrent is shared by all workers; requests
-- beyond it wait in the order they asked, at most their deployment's
-- queue_timeout, then go to the next candidate
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;
UPDATE igny8_providers SET max_concurrent = 2 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();
SELECT dblink_connect('q' || i, 'dbname=' || current_database()) FROM generate_series(1, 20) i;

-- order: two calls hold both places; four more join the queue one after
-- the other, and get the places in that order
SELECT dblink_send_query('q' || i,
    $$SELECT igny8_generate_text('Holder [[sim ollama:delay=1.5 tag=qh]]', 'gpt-4')$$)
  FROM generate_series(1, 2) i;
SELECT sim_wait_arrival('qh', 2);
SELECT dblink_send_query('q' || (i + 2),
           format($$SELECT igny8_generate_text('Waiter %s [[sim ollama:delay=0.5 tag=qw%s]]', 'gpt-4')$$, i, i)),
       wait_until(format($$(SELECT queued = %s FROM igny8_service_status
                            WHERE provider = 'self_hosted_ai')$$, i),
                  format('waiter %s in the queue', i))
  FROM generate_series(1, 4) i;
SELECT in_flight, queued FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT count(*) AS answered_by_ollama
  FROM generate_series(1, 6) i WHERE dblink_answer('q' || i) LIKE 'ollama%';
-- the first two waiters reached Ollama before the last two, and never
-- more than two were there at once
SELECT (SELECT max(line::int) FROM (SELECT sim('log --tag qw1 --field seq') UNION ALL
                                   SELECT sim('log --tag qw2 --field seq')) s(line))
     < (SELECT min(line::int) FROM (SELECT sim('log --tag qw3 --field seq') UNION ALL
                                   SELECT sim('log --tag qw4 --field seq')) s(line)) AS in_order;
SELECT sim('max-concurrency --tag qh --role ollama') AS holders_at_once;

-- 20 calls at once on a provider capped at 2, each holding its place for
-- 0.4 s, queue_timeout 1 s: at most two at Ollama at any time; the calls
-- that waited longer than the queue_timeout were answered by the fallback
UPDATE igny8_models SET queue_timeout = '1 s'
 WHERE alias = 'gpt-4' AND provider_id = 'self_hosted_ai';
SELECT wait_for_config();
TRUNCATE ai_usage_log;
SELECT sim('reset') IS NOT NULL AS reset;
SELECT dblink_send_query('q' || i,
    format($$SELECT igny8_generate_text('Burst %s [[sim ollama:delay=0.4 tag=qb]] [[sim any:tag=qb]]', 'gpt-4')$$, i))
  FROM generate_series(1, 20) i;
SELECT dblink_answer('q' || i) ~ '^(ollama|openai) ' AS answered, count(*)
  FROM generate_series(1, 20) i GROUP BY 1;
SELECT sim('max-concurrency --tag qb --role ollama')::int <= 2 AS at_most_two_at_ollama;
SELECT count(DISTINCT request_id) AS calls,
       count(*) FILTER (WHERE success) AS answers,
       count(*) FILTER (WHERE success AND provider = 'self_hosted_ai') >= 2 AS ollama_served_some,
       count(*) FILTER (WHERE success AND provider = 'openai') >= 10 AS fallback_served_the_rest,
       count(*) FILTER (WHERE NOT success) AS failed_rows
  FROM ai_usage_log;
-- a call that went to the fallback sent nothing to Ollama, so it has no
-- row for it: one row per call
SELECT count(*) = count(DISTINCT request_id) AS one_row_per_call FROM ai_usage_log;
SELECT wait_until($$(SELECT in_flight = 0 AND queued = 0 FROM igny8_service_status
                     WHERE provider = 'self_hosted_ai')$$, 'the places to be free');

-- queue_timeout 0: no wait at all
UPDATE igny8_providers SET max_concurrent = 1 WHERE id = 'self_hosted_ai';
UPDATE igny8_models SET queue_timeout = '0'
 WHERE alias = 'gpt-4' AND provider_id = 'self_hosted_ai';
SELECT wait_for_config();
TRUNCATE ai_usage_log;
SELECT dblink_send_query('q1',
    $$SELECT igny8_generate_text('Holder [[sim ollama:delay=2 tag=qz]]', 'gpt-4')$$);
SELECT sim_wait_arrival('qz');
SELECT igny8_generate_text('No wait', 'gpt-4');
SELECT dblink_answer('q1');
SELECT provider, success FROM ai_usage_log ORDER BY id;

-- the last candidate waits its queue_timeout, then the call fails and
-- says why
INSERT INTO igny8_models (alias, provider_id, provider_model, queue_timeout)
VALUES ('solo', 'self_hosted_ai', 'qwen3:8b', '0.5 s');
SELECT wait_for_config();
SELECT dblink_send_query('q1',
    $$SELECT igny8_generate_text('Holder [[sim ollama:delay=2 tag=qs]]', 'gpt-4')$$);
SELECT sim_wait_arrival('qs');
SELECT regexp_replace(show_error($$SELECT igny8_generate_text('Too busy', 'solo')$$),
                      'after [0-9]+ ms', 'after N ms');
SELECT dblink_answer('q1');

DELETE FROM igny8_models WHERE alias = 'solo';
UPDATE igny8_models SET queue_timeout = '30 s' WHERE alias = 'gpt-4';
UPDATE igny8_providers SET max_concurrent = 8 WHERE id = 'self_hosted_ai';
SELECT dblink_disconnect('q' || i) FROM generate_series(1, 20) i;
