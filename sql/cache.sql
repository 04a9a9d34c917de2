--
-- cache: the response cache (igny8_cache_settings, igny8_response_cache,
-- igny8_cache_purge)
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all

-- how many requests the simulator received with a tag
CREATE FUNCTION sim_count(t text) RETURNS int
LANGUAGE sql AS $$ SELECT line::int FROM sim(format('log --tag %s --count', t)) AS line $$;

-- bad input: nothing is written
SELECT show_error($$INSERT INTO igny8_cache_settings (alias) VALUES ('nosuch')$$);
SELECT show_error($$INSERT INTO igny8_cache_settings (alias) VALUES ('dall-e-3')$$);
SELECT show_error($$INSERT INTO igny8_cache_settings (alias, ttl) VALUES ('gpt-4', '0 s')$$);
SELECT show_error($$INSERT INTO igny8_cache_settings (alias, max_entries) VALUES ('gpt-4', 0)$$);
SELECT show_error($$SELECT igny8_cache_purge(NULL)$$);
SELECT show_error($$SELECT igny8_cache_purge('gpt-4')$$);
SELECT count(*) AS rows_written FROM igny8_cache_settings;

-- gpt-4 is cached for an hour, at most 4 answers
INSERT INTO igny8_cache_settings (alias, ttl, max_entries) VALUES ('gpt-4', '1 hour', 4);
SELECT wait_for_config();

-- a miss sends the request; the same call again is a hit: nothing is
-- sent, and the answer is the same
SELECT content, provider, model, input_tokens, output_tokens, cost, attempts, cached
  FROM igny8_chat('[{"role":"user","content":"Cache me [[sim any:tag=h1]]"}]', 'gpt-4',
                  '{"temperature": 0}');
SELECT content, provider, model, input_tokens, output_tokens, cost, attempts, cached
  FROM igny8_chat('[{"role":"user","content":"Cache me [[sim any:tag=h1]]"}]', 'gpt-4',
                  '{"temperature": 0}');
SELECT sim_count('h1') AS requests;
-- two usage rows: the hit's is cached, costs 0, has the answer's tokens
SELECT provider, model_used, input_tokens, output_tokens, cost, success, cached, http_status
  FROM ai_usage_log ORDER BY id DESC LIMIT 2;
-- and the cost it saved: the same tokens at gpt-4's reference price
-- (2 x $30 + 9 x $60 per 1M = 0.000600), on the hit as on the miss
SELECT cached, reference_cost FROM ai_usage_log ORDER BY id DESC LIMIT 2;
SELECT alias, state, provider, model, input_tokens, output_tokens,
       expires_at - created_at AS ttl, octet_length(key) AS key_bytes
  FROM igny8_response_cache;

-- the text function reads the same cache (same messages, same options)
SELECT igny8_generate_text('Cache me [[sim any:tag=h1]]', 'gpt-4', temperature => 0);
SELECT sim_count('h1') AS requests;
SELECT cached FROM ai_usage_log ORDER BY id DESC LIMIT 1;

-- a hit's usage row is the worker's: a caller that rolls back keeps it
SELECT count(*) AS rows_before FROM ai_usage_log \gset
BEGIN;
SELECT cached FROM igny8_chat('[{"role":"user","content":"Cache me [[sim any:tag=h1]]"}]', 'gpt-4',
                              '{"temperature": 0}');
ROLLBACK;
SELECT count(*) - :rows_before AS usage_rows_kept FROM ai_usage_log;

-- keys that differ: the messages, the system prompt, max_tokens
SELECT cached FROM igny8_chat('[{"role":"user","content":"Cache me too [[sim any:tag=h1]]"}]', 'gpt-4',
                              '{"temperature": 0}');
SELECT cached FROM igny8_chat('[{"role":"system","content":"Be brief."},
                                {"role":"user","content":"Cache me [[sim any:tag=h1]]"}]', 'gpt-4',
                              '{"temperature": 0}');
SELECT cached FROM igny8_chat('[{"role":"system","content":"Be brief."},
                                {"role":"user","content":"Cache me [[sim any:tag=h1]]"}]', 'gpt-4',
                              '{"temperature": 0}');
SELECT igny8_generate_text('Cache me [[sim any:tag=h1]]', 'gpt-4', temperature => 0,
                           system => 'Be verbose.') IS NOT NULL AS answered;
SELECT cached FROM ai_usage_log ORDER BY id DESC LIMIT 1;
SELECT cached FROM igny8_chat('[{"role":"user","content":"Cache me [[sim any:tag=h1]]"}]', 'gpt-4',
                              '{"temperature": 0, "max_tokens": 5}');
SELECT cached FROM igny8_chat('[{"role":"user","content":"Cache me [[sim any:tag=h1]]"}]', 'gpt-4-turbo',
                              '{"temperature": 0}');
SELECT sim_count('h1') AS requests;

-- temperature above 0, or none (the provider's default), is not cached ...
SELECT cached FROM igny8_chat('[{"role":"user","content":"Warm [[sim any:tag=t1]]"}]', 'gpt-4',
                              '{"temperature": 0.7}');
SELECT cached FROM igny8_chat('[{"role":"user","content":"Warm [[sim any:tag=t1]]"}]', 'gpt-4',
                              '{"temperature": 0.7}');
SELECT cached FROM igny8_chat('[{"role":"user","content":"Warm [[sim any:tag=t1]]"}]', 'gpt-4');
SELECT cached FROM igny8_chat('[{"role":"user","content":"Warm [[sim any:tag=t1]]"}]', 'gpt-4');
SELECT sim_count('t1') AS requests;
-- ... unless the alias allows it; then a changed temperature is a miss
UPDATE igny8_cache_settings SET cache_nonzero_temperature = true WHERE alias = 'gpt-4';
SELECT wait_for_config();
SELECT cached FROM igny8_chat('[{"role":"user","content":"Warm [[sim any:tag=t2]]"}]', 'gpt-4',
                              '{"temperature": 0.7}');
SELECT cached FROM igny8_chat('[{"role":"user","content":"Warm [[sim any:tag=t2]]"}]', 'gpt-4',
                              '{"temperature": 0.7}');
SELECT cached FROM igny8_chat('[{"role":"user","content":"Warm [[sim any:tag=t2]]"}]', 'gpt-4',
                              '{"temperature": 0.8}');
SELECT sim_count('t2') AS requests;
UPDATE igny8_cache_settings SET cache_nonzero_temperature = false WHERE alias = 'gpt-4';
SELECT wait_for_config();

-- an alias that is not cached sends every call
SELECT cached FROM igny8_chat('[{"role":"user","content":"Uncached [[sim any:tag=u1]]"}]', 'gpt-3.5-turbo',
                              '{"temperature": 0}');
SELECT cached FROM igny8_chat('[{"role":"user","content":"Uncached [[sim any:tag=u1]]"}]', 'gpt-3.5-turbo',
                              '{"temperature": 0}');
SELECT sim_count('u1') AS requests;
SELECT count(*) AS rows_of_uncached FROM igny8_response_cache WHERE alias = 'gpt-3.5-turbo';

-- a failed call leaves nothing in the cache
SELECT show_error($$SELECT igny8_chat('[{"role":"user","content":"Fail [[sim any:status=400]] [[sim any:tag=f1]]"}]',
                                      'gpt-4', '{"temperature": 0}')$$);
SELECT count(*) AS rows_of_failure FROM igny8_response_cache WHERE state = 'pending';

-- the size bound: the newest 4 answers stay
SELECT igny8_cache_purge('gpt-4') AS purged;
SELECT i, c.cached
  FROM generate_series(1, 6) AS i,
       LATERAL igny8_chat(format('[{"role":"user","content":"Bound %s [[sim any:tag=b1]]"}]', i)::jsonb,
                          'gpt-4', '{"temperature": 0}') AS c;
SELECT count(*) AS cached_answers FROM igny8_response_cache WHERE alias = 'gpt-4';
-- the oldest two went: asking again sends them
SELECT i, c.cached
  FROM generate_series(6, 1, -1) AS i,
       LATERAL igny8_chat(format('[{"role":"user","content":"Bound %s [[sim any:tag=b1]]"}]', i)::jsonb,
                          'gpt-4', '{"temperature": 0}') AS c;
SELECT sim_count('b1') AS requests;

-- purge: the alias's rows go, the next call is a miss
SELECT igny8_cache_purge('gpt-4') AS purged;
SELECT count(*) AS left_after_purge FROM igny8_response_cache;
SELECT cached FROM igny8_chat('[{"role":"user","content":"Bound 6 [[sim any:tag=b1]]"}]',
                              'gpt-4', '{"temperature": 0}');

-- TTL: an answer is served until it expires, then sent again; the
-- scheduled cleanup removes expired rows
SELECT igny8_cache_purge('gpt-4') AS purged;
UPDATE igny8_cache_settings SET ttl = '1 second' WHERE alias = 'gpt-4';
SELECT wait_for_config();
SELECT cached FROM igny8_chat('[{"role":"user","content":"Short-lived [[sim any:tag=e1]]"}]', 'gpt-4',
                              '{"temperature": 0}');
SELECT wait_until($$(SELECT bool_and(expires_at < clock_timestamp()) FROM igny8_response_cache)$$,
                  'the cached answer to expire');
SELECT cached FROM igny8_chat('[{"role":"user","content":"Short-lived [[sim any:tag=e1]]"}]', 'gpt-4',
                              '{"temperature": 0}');
SELECT sim_count('e1') AS requests;
SELECT wait_until($$(SELECT bool_and(expires_at < clock_timestamp()) FROM igny8_response_cache)$$,
                  'the cached answer to expire');
SELECT igny8_cache_cleanup() AS cleaned;
SELECT count(*) AS left_after_cleanup FROM igny8_response_cache;
UPDATE igny8_cache_settings SET ttl = '1 hour' WHERE alias = 'gpt-4';
SELECT wait_for_config();

-- a changed ttl applies to the answers already stored, from when each was
-- stored: lowered, an answer of the old ttl is no longer served
SELECT cached FROM igny8_chat('[{"role":"user","content":"Stored for an hour [[sim any:tag=e2]]"}]', 'gpt-4',
                              '{"temperature": 0}');
UPDATE igny8_cache_settings SET ttl = '1 second' WHERE alias = 'gpt-4';
SELECT wait_for_config();
SELECT expires_at - created_at AS ttl_now FROM igny8_response_cache WHERE state = 'ready';
SELECT wait_until($$(SELECT bool_and(expires_at < clock_timestamp()) FROM igny8_response_cache)$$,
                  'the cached answer to expire');
SELECT cached FROM igny8_chat('[{"role":"user","content":"Stored for an hour [[sim any:tag=e2]]"}]', 'gpt-4',
                              '{"temperature": 0}');
SELECT sim_count('e2') AS requests;
UPDATE igny8_cache_settings SET ttl = '1 hour' WHERE alias = 'gpt-4';
SELECT wait_for_config();
SELECT expires_at - created_at AS ttl_raised FROM igny8_response_cache WHERE state = 'ready';

-- a deployment of the alias changed (here its max_tokens cap): the
-- answers the old one gave are not served; changed back, they are again
SELECT igny8_cache_purge('gpt-4') AS purged;
SELECT cached FROM igny8_chat('[{"role":"user","content":"Capped [[sim any:tag=d1]]"}]', 'gpt-4',
                              '{"temperature": 0}');
SELECT cached FROM igny8_chat('[{"role":"user","content":"Capped [[sim any:tag=d1]]"}]', 'gpt-4',
                              '{"temperature": 0}');
SELECT max_tokens AS cap_before FROM igny8_models WHERE alias = 'gpt-4' AND provider_id = 'self_hosted_ai' \gset
UPDATE igny8_models SET max_tokens = 3000 WHERE alias = 'gpt-4' AND provider_id = 'self_hosted_ai';
SELECT wait_for_config();
SELECT cached FROM igny8_chat('[{"role":"user","content":"Capped [[sim any:tag=d1]]"}]', 'gpt-4',
                              '{"temperature": 0}');
SELECT sim_count('d1') AS requests;
UPDATE igny8_models SET max_tokens = NULLIF(:'cap_before', '')::integer
 WHERE alias = 'gpt-4' AND provider_id = 'self_hosted_ai';
SELECT wait_for_config();
SELECT cached FROM igny8_chat('[{"role":"user","content":"Capped [[sim any:tag=d1]]"}]', 'gpt-4',
                              '{"temperature": 0}');
SELECT sim_count('d1') AS requests;
SELECT igny8_cache_purge('gpt-4') AS purged;

-- while the GPU box is down (its circuit open), its cached answers are
-- still served: the key covers the alias's deployments, not those routing
-- takes at the moment
ALTER SYSTEM SET igny8_ai.circuit_failure_threshold = 3;
ALTER SYSTEM SET igny8_ai.circuit_cooldown = '600s';
SELECT reload_settings();
SELECT provider, cached FROM igny8_chat('[{"role":"user","content":"Outage [[sim any:tag=o1]]"}]', 'gpt-4',
                                        '{"temperature": 0}');
SELECT sim('down ollama') IS NOT NULL AS down;
SELECT count(*) AS answered FROM generate_series(1, 3) i, igny8_generate_text('Box down ' || i, 'gpt-4') t;
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT provider, cached FROM igny8_chat('[{"role":"user","content":"Outage [[sim any:tag=o1]]"}]', 'gpt-4',
                                        '{"temperature": 0}');
SELECT sim_count('o1') AS requests;
SELECT sim('up ollama') IS NOT NULL AS up;
-- the box is back: requests opened its circuit, so its trial, a request,
-- closes it (no cool-down left here), not a probe
ALTER SYSTEM RESET igny8_ai.circuit_failure_threshold;
ALTER SYSTEM SET igny8_ai.circuit_cooldown = 0;
SELECT reload_settings();
SELECT igny8_generate_text('Box back', 'gpt-4');
ALTER SYSTEM RESET igny8_ai.circuit_cooldown;
SELECT reload_settings();
SELECT state, circuit_open FROM igny8_service_status WHERE provider = 'self_hosted_ai';
SELECT igny8_cache_purge('gpt-4') AS purged;

-- two identical calls at once make one request: the second waits for
-- the first's answer (the simulator holds the first for a second)
SELECT dblink_connect('c1', 'dbname=' || current_database());
SELECT dblink_connect('c2', 'dbname=' || current_database());
-- the same chat over c1 and, once it reached the simulator (tag), over
-- c2, the second with options of its own added
CREATE FUNCTION send_together(content text, tag text, second_options jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    messages jsonb := jsonb_build_array(jsonb_build_object('role', 'user', 'content', content));
    options jsonb := '{"temperature": 0}';
BEGIN
    PERFORM dblink_send_query('c1', format('SELECT cached FROM igny8_chat(%L, %L, %L)',
                                           messages, 'gpt-4', options));
    PERFORM sim_wait_arrival(tag);
    PERFORM dblink_send_query('c2', format('SELECT cached FROM igny8_chat(%L, %L, %L)',
                                           messages, 'gpt-4', options || second_options));
END
$$;
SELECT send_together('Together [[sim any:delay=1 tag=cc]]', 'cc');
SELECT dblink_answer('c1') AS first_cached, dblink_answer('c2') AS second_cached;
SELECT sim_count('cc') AS requests;

-- an outcome of a call sent over dblink: its answer, or its error's
-- SQLSTATE (and detail when asked)
CREATE FUNCTION dblink_outcome(conn text, with_detail boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    a text;
    st text;
    d text;
BEGIN
    BEGIN
        SELECT r.answer INTO a FROM dblink_get_result(conn) AS r(answer text);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, d = PG_EXCEPTION_DETAIL;
        a := 'ERROR ' || st || CASE WHEN with_detail THEN ': ' || d ELSE '' END;
    END;
    PERFORM * FROM dblink_get_result(conn) AS r(answer text);
    RETURN a;
END
$$;
-- the first fails: the second, which waited for it, sends its own request
SELECT send_together('Together fail [[sim any:delay=1 status=400 tag=cf]]', 'cf');
SELECT dblink_outcome('c1') AS first, dblink_outcome('c2') AS second;
SELECT sim_count('cf') AS requests;
-- a call waiting for an identical one still ends at its own deadline
-- (the timeout is not part of the key)
SELECT send_together('Together slow [[sim any:delay=3 tag=cs]]', 'cs', '{"timeout": 1}');
SELECT dblink_outcome('c2', true) AS waiting_one;
SELECT dblink_outcome('c1') AS first;
SELECT sim_count('cs') AS requests;
-- a pending row whose worker stopped is taken over at once.  A slow call
-- holds the provider's only place; a cached call takes its key (pending,
-- in the same worker, the first) and waits for the place.  That worker
-- is stopped: the slow call is interrupted, and the cached one, which
-- sent nothing, is queued again for another worker, which finds the key
-- pending for a worker that is gone, takes it over and sends.  (Before,
-- the row was left to expire at the call's deadline, which the call
-- reached first, waiting for it: 38000.)
UPDATE igny8_providers SET max_concurrent = 1 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();
SELECT dblink_send_query('c1',
    $$SELECT igny8_generate_text('Hold the place [[sim any:delay=30 tag=hp]]', 'gpt-4')$$);
SELECT sim_wait_arrival('hp');
SELECT dblink_send_query('c2',
    format('SELECT cached FROM igny8_chat(%L, %L, %L)',
           '[{"role":"user","content":"Orphan [[sim any:tag=co]]"}]', 'gpt-4',
           '{"temperature": 0, "timeout": 20}'));
SELECT wait_until($$(SELECT count(*) FROM igny8_response_cache c
                       JOIN igny8_worker_status() w ON w.worker = c.owner_worker
                                                   AND w.started_at = c.owner_started
                      WHERE c.state = 'pending') = 1$$,
                  'the key pending, taken by a running worker');
SELECT c.owner_worker = w.worker AS same_worker_as_the_slow_call
  FROM igny8_response_cache c, igny8_worker_status() w
 WHERE c.state = 'pending' AND w.in_flight = 2;
SELECT pg_terminate_backend(w.pid) AS stopped
  FROM igny8_response_cache c JOIN igny8_worker_status() w ON w.worker = c.owner_worker
 WHERE c.state = 'pending';
SELECT dblink_outcome('c1') AS slow_one, dblink_outcome('c2') AS cached_one;
SELECT sim_count('co') AS requests;
-- its answer was stored: the same call again is a hit
SELECT cached FROM igny8_chat('[{"role":"user","content":"Orphan [[sim any:tag=co]]"}]', 'gpt-4',
                              '{"temperature": 0}');
SELECT count(*) AS pending_rows FROM igny8_response_cache WHERE state = 'pending';
SELECT wait_for_workers() AS workers;
UPDATE igny8_providers SET max_concurrent = 8 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();

-- the usage row of a miss's answer cannot be written: the call fails, and
-- its pending row is deleted in a transaction of its own, so that the
-- next identical call does not wait for it (it would until the first
-- call's deadline, 20 s, past its own 5 s: 38000)
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'refused by the test';
END
$$;
CREATE TRIGGER refuse_usage BEFORE INSERT ON ai_usage_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse();
SELECT show_error($$SELECT igny8_chat('[{"role":"user","content":"Unlogged [[sim any:tag=ul]]"}]',
                                      'gpt-4', '{"temperature": 0, "timeout": 20}')$$);
DROP TRIGGER refuse_usage ON ai_usage_log;
SELECT count(*) AS pending_rows FROM igny8_response_cache WHERE state = 'pending';
SELECT cached FROM igny8_chat('[{"role":"user","content":"Unlogged [[sim any:tag=ul]]"}]', 'gpt-4',
                              '{"temperature": 0, "timeout": 5}');
SELECT sim_count('ul') AS requests;

-- the same, and the pending row cannot be deleted either: it stays,
-- owned by a worker that runs but holds no call of that key, and the
-- next identical call, in that worker (the first), takes it over
CREATE TRIGGER refuse_usage BEFORE INSERT ON ai_usage_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse();
CREATE TRIGGER refuse_delete BEFORE DELETE ON igny8_response_cache
    FOR EACH STATEMENT EXECUTE FUNCTION refuse();
SELECT show_error($$SELECT igny8_chat('[{"role":"user","content":"Unlogged again [[sim any:tag=ua]]"}]',
                                      'gpt-4', '{"temperature": 0, "timeout": 20}')$$);
DROP TRIGGER refuse_usage ON ai_usage_log;
DROP TRIGGER refuse_delete ON igny8_response_cache;
SELECT c.owner_worker, w.started_at = c.owner_started AS owner_running
  FROM igny8_response_cache c JOIN igny8_worker_status() w ON w.worker = c.owner_worker
 WHERE c.state = 'pending';
SELECT cached FROM igny8_chat('[{"role":"user","content":"Unlogged again [[sim any:tag=ua]]"}]', 'gpt-4',
                              '{"temperature": 0, "timeout": 5}');
SELECT cached FROM igny8_chat('[{"role":"user","content":"Unlogged again [[sim any:tag=ua]]"}]', 'gpt-4',
                              '{"temperature": 0, "timeout": 5}');
SELECT sim_count('ua') AS requests;
SELECT count(*) AS pending_rows FROM igny8_response_cache WHERE state = 'pending';
DROP FUNCTION refuse();
DROP FUNCTION dblink_outcome(text, boolean);
DROP FUNCTION send_together(text, text, jsonb);
SELECT dblink_disconnect('c1'), dblink_disconnect('c2');

-- disabled: calls go out again
UPDATE igny8_cache_settings SET enabled = false WHERE alias = 'gpt-4';
SELECT wait_for_config();
SELECT cached FROM igny8_chat('[{"role":"user","content":"Together [[sim any:delay=1 tag=cc]]"}]',
                              'gpt-4', '{"temperature": 0}');
SELECT sim_count('cc') AS requests;

-- the application role cannot read the cache or purge it
CREATE ROLE igny8_cache_app LOGIN;
SELECT igny8_grant_usage('igny8_cache_app');
SET ROLE igny8_cache_app;
SELECT show_error('SELECT content FROM igny8_response_cache');
SELECT show_error($$SELECT igny8_cache_purge('gpt-4')$$);
RESET ROLE;
DROP OWNED BY igny8_cache_app;
DROP ROLE igny8_cache_app;

-- clean up
DELETE FROM igny8_cache_settings;
DELETE FROM igny8_response_cache;
SELECT wait_for_config();
DROP FUNCTION sim_count(text);
