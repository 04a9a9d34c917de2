--
-- wakeup: requests queued while the workers wait on a lock are answered as
-- soon as the lock is released.  A lock wait sleeps on the same latch a
-- caller sets; the worker must look at its queue after every wait, not
-- only when it finds its latch set (its idle wait is a minute, and the
-- answers are awaited for 20 s at most).  The lock is held past
-- deadlock_timeout: the deadlock check is what wakes a lock waiter and
-- resets its latch
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;
SELECT dblink_connect('locker', 'dbname=' || current_database());
SELECT dblink_connect('w' || i, 'dbname=' || current_database()) FROM generate_series(1, 6) i;

-- both workers block writing their usage row
SELECT dblink_exec('locker', 'BEGIN');
SELECT dblink_exec('locker', 'LOCK TABLE ai_usage_log IN ACCESS EXCLUSIVE MODE');
SELECT dblink_send_query('w' || i,
    format($$SELECT igny8_generate_text('Blocked %s', 'gpt-4')$$, i))
  FROM generate_series(1, 2) i;
SELECT wait_until($$(SELECT count(*) FROM pg_stat_activity
                     WHERE backend_type = 'igny8_ai worker' AND wait_event_type = 'Lock') = 2$$,
                  'both workers waiting on the lock');
-- more requests are queued to them meanwhile
SELECT dblink_send_query('w' || i,
    format($$SELECT igny8_generate_text('Queued %s', 'gpt-4')$$, i))
  FROM generate_series(3, 6) i;
SELECT wait_until($$(SELECT sum(queued) FROM igny8_worker_status()) = 4$$,
                  'four requests in the workers'' queues');
SELECT pg_sleep_for(current_setting('deadlock_timeout')::interval + interval '0.5 s');
SELECT dblink_exec('locker', 'COMMIT');
SELECT wait_until($$(SELECT bool_and(dblink_is_busy('w' || i) = 0)
                       FROM generate_series(1, 6) i)$$, 'the six answers', 20);
SELECT count(*) AS answered FROM generate_series(1, 6) i
 WHERE dblink_answer('w' || i) LIKE 'ollama%';

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
SELECT pg_sleep_for(current_setting('deadlock_timeout')::interval + interval '0.5 s');
SELECT dblink_exec('locker', 'COMMIT');
SELECT wait_until($$(SELECT bool_and(dblink_is_busy('w' || i) = 0)
                       FROM generate_series(1, 6) i)$$, 'the six answers', 20);
SELECT count(*) AS answered FROM generate_series(1, 6) i
 WHERE dblink_answer('w' || i) LIKE 'ollama%';
SELECT wait_for_config();

SELECT dblink_disconnect('w' || i) FROM generate_series(1, 6) i;
SELECT dblink_disconnect('locker');
SELECT count(*) AS usage_rows FROM ai_usage_log;
