--
-- wakeup: requests queued while the workers wait on a lock are answered as
-- soon as the lock is released.  A lock wait sleeps on the same latch a
-- caller sets; the worker must look at its queue after every wait, not
-- only when it finds its latch set (its idle wait is a minute, and the
-- answers are awaited for 20 s at most).  The lock is held past
-- deadlock_timeout: the deadlock check is what wakes a lock waiter and
-- resets its latch.  Which worker a call goes to is checked here too
-- (choose_worker in dispatch.c): the first, until it is stalled or holds
-- 64; when every worker is past those, the one holding the fewest
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;
SELECT dblink_connect('locker', 'dbname=' || current_database());
SELECT count(dblink_connect('w' || i, 'dbname=' || current_database())) AS connected
  FROM generate_series(1, 6) i;

-- A call goes to the first worker until it is stalled: a request has
-- waited in its queue, and its loop has not turned, for more than a
-- second (IGNY8_STALL_MS, igny8_ai.h).  Worker 0 takes a request and
-- blocks writing its usage row; the next call waits in its queue, and
-- once worker 0 is stalled the next two go to worker 1 (which may be
-- blocked too, writing or scanning igny8_jobs, and stalled in turn: it
-- still holds fewer than worker 0; what it holds and what waits in its
-- queue are counted together).  The call in worker 0's queue stays there.
-- Worker 0 is not about to scan igny8_jobs, which would block it before
-- it takes the request.
SELECT wait_scan_away(0);
SELECT dblink_exec('locker', 'BEGIN');
SELECT dblink_exec('locker', 'LOCK TABLE ai_usage_log IN ACCESS EXCLUSIVE MODE');
SELECT dblink_send_query('w1', $$SELECT igny8_generate_text('Blocked 1', 'gpt-4')$$);
SELECT wait_until($$(SELECT a.wait_event_type = 'Lock' AND w.in_flight = 1
                       FROM pg_stat_activity a JOIN igny8_worker_status() w ON w.pid = a.pid
                      WHERE w.worker = 0)$$,
                  'worker 0 holding the request and waiting on the lock');
SELECT dblink_send_query('w2', $$SELECT igny8_generate_text('Queued 2', 'gpt-4')$$);
SELECT wait_until($$(SELECT queued = 1 AND stalled FROM igny8_worker_status() WHERE worker = 0)$$,
                  'worker 0 stalled, one request in its queue');
SELECT dblink_send_query('w3', $$SELECT igny8_generate_text('Passed over 3', 'gpt-4')$$);
SELECT wait_until($$(SELECT in_flight + queued FROM igny8_worker_status() WHERE worker = 1) = 1$$,
                  'the third request at worker 1');
SELECT dblink_send_query('w4', $$SELECT igny8_generate_text('Passed over 4', 'gpt-4')$$);
SELECT wait_until($$(SELECT in_flight + queued FROM igny8_worker_status() WHERE worker = 1) = 2$$,
                  'two requests at worker 1');
SELECT worker, in_flight + queued AS requests FROM igny8_worker_status() ORDER BY worker;
SELECT in_flight, queued, stalled, last_turn < now() - interval '1 s' AS turned_before
  FROM igny8_worker_status() WHERE worker = 0;
SELECT pg_sleep_for(current_setting('deadlock_timeout')::interval + interval '0.5 s');
SELECT dblink_exec('locker', 'COMMIT');
SELECT wait_until($$(SELECT bool_and(dblink_is_busy('w' || i) = 0)
                       FROM generate_series(1, 4) i)$$, 'the 4 answers', 20);
SELECT count(*) AS answered FROM generate_series(1, 4) i
 WHERE dblink_answer('w' || i) LIKE 'ollama%';
SELECT count(*) AS stalled FROM igny8_worker_status() WHERE stalled;

-- the same while the workers reload their configuration and wait on a
-- lock on igny8_fallbacks
SELECT dblink_exec('locker', 'BEGIN');
SELECT dblink_exec('locker', 'LOCK TABLE igny8_fallbacks IN ACCESS EXCLUSIVE MODE');
UPDATE igny8_providers SET priority = priority WHERE id = 'self_hosted_ai';
SELECT wait_until($$(SELECT count(*) FROM pg_stat_activity
                     WHERE backend_type = 'igny8_ai worker' AND wait_event_type = 'Lock') = 2$$,
                  'both workers waiting on the lock');
SELECT dblink_send_query('w' || i,
    format($$SELECT igny8_generate_text('Queued %s', 'gpt-4')$$, i))
  FROM generate_series(1, 6) i;
SELECT wait_until($$(SELECT sum(queued) FROM igny8_worker_status()) = 6$$,
                  'six requests in the workers'' queues');
-- all six in the first worker's queue: it holds fewer than 32
SELECT worker, queued FROM igny8_worker_status() ORDER BY worker;
SELECT pg_sleep_for(current_setting('deadlock_timeout')::interval + interval '0.5 s');
SELECT dblink_exec('locker', 'COMMIT');
SELECT wait_until($$(SELECT bool_and(dblink_is_busy('w' || i) = 0)
                       FROM generate_series(1, 6) i)$$, 'the six answers', 20);
SELECT count(*) AS answered FROM generate_series(1, 6) i
 WHERE dblink_answer('w' || i) LIKE 'ollama%';
SELECT wait_for_config();

SELECT count(dblink_disconnect('w' || i)) AS disconnected FROM generate_series(1, 6) i;
SELECT dblink_disconnect('locker');
SELECT count(*) AS usage_rows FROM ai_usage_log;

-- A worker holding 64 requests (IGNY8_SPILL_IN_FLIGHT) takes no more,
-- however short its queue: slow calls do not all wait on one worker.
-- Eight batches of eight slow prompts go to worker 0 one after another,
-- each once the one before is in its hands; the next eight go to worker 1
UPDATE igny8_providers SET max_concurrent = 200 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();
SELECT count(dblink_connect('h' || i, 'dbname=' || current_database())) AS connected
  FROM generate_series(1, 20) i;
CREATE FUNCTION send_held(conn text, prompts int) RETURNS int
LANGUAGE sql AS $$
    SELECT dblink_send_query(conn,
        format($q$SELECT count(*) FROM igny8_generate_text_batch(
                    array(SELECT '%s.' || j || ' [[sim any:delay=30 tag=held]]'
                            FROM generate_series(1, %s) j), 'gpt-4')$q$, conn, prompts));
$$;
DO $$
BEGIN
    FOR i IN 1..8 LOOP
        PERFORM send_held('h' || i, 8);
        PERFORM wait_until(format('(SELECT in_flight FROM igny8_worker_status() WHERE worker = 0) = %s', 8 * i),
                           format('%s requests in worker 0''s hands', 8 * i));
    END LOOP;
END
$$;
SELECT send_held('h9', 8);
SELECT wait_until($$(SELECT in_flight FROM igny8_worker_status() WHERE worker = 1) = 8$$,
                  'the 65th to 72nd requests in worker 1''s hands');
SELECT worker, in_flight, queued FROM igny8_worker_status() ORDER BY worker;
-- Once every worker holds 64, a call goes to the one holding the fewest
-- (the first of those that hold equally few): worker 0, 1, 0, 1
DO $$
BEGIN
    FOR i IN 10..16 LOOP
        PERFORM send_held('h' || i, 8);
        PERFORM wait_until(format('(SELECT in_flight FROM igny8_worker_status() WHERE worker = 1) = %s', 8 * (i - 8)),
                           format('%s requests in worker 1''s hands', 8 * (i - 8)));
    END LOOP;
END
$$;
-- (each call is sent once the one before is in a worker's hands, none
-- queued: a request taken from a queue is in neither count for a moment)
CREATE TEMP TABLE went_to (call int, worker int);
DO $$
DECLARE
    before int[];
    w int;
BEGIN
    FOR i IN 17..20 LOOP
        before := array(SELECT in_flight FROM igny8_worker_status() ORDER BY worker);
        PERFORM send_held('h' || i, 1);
        PERFORM wait_until(format($q$(SELECT sum(queued) = 0 AND sum(in_flight) = %s
                                        FROM igny8_worker_status())$q$,
                                  before[1] + before[2] + 1),
                           format('call %s in a worker''s hands', i));
        SELECT worker INTO w FROM igny8_worker_status()
         WHERE in_flight > before[worker + 1];
        INSERT INTO went_to VALUES (i, w);
    END LOOP;
END
$$;
SELECT * FROM went_to ORDER BY call;
SELECT worker, in_flight, queued FROM igny8_worker_status() ORDER BY worker;
-- the callers leave; their requests end at the simulator before the next test
SELECT count(dblink_disconnect('h' || i)) AS disconnected FROM generate_series(1, 20) i;
SELECT wait_until($$(SELECT sum(in_flight) FROM igny8_worker_status()) = 0$$,
                  'the workers to drop the abandoned requests');
SELECT sim('wait-requests --tag held --count 132 --timeout 30');
DROP FUNCTION send_held(text, int);
UPDATE igny8_providers SET max_concurrent = 8 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();
