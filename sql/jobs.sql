--
-- jobs: submitted jobs run after the submitting transaction commits, never
-- after a rollback; idempotency; cancel (queued and running); waiting in
-- the submitting transaction; batches; not_before; retention; row-level
-- security; bad input for every argument
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;
TRUNCATE igny8_jobs RESTART IDENTITY;

-- a submit runs after commit, not before
BEGIN;
SELECT igny8_submit_text('Job one [[sim ollama:tag=j1]]', 'gpt-4') AS j1 \gset
SELECT state, kind, model_alias, attempts, priority, max_attempts FROM igny8_jobs WHERE id = :j1;
-- waiting for it here cannot work: it starts when this commits
SELECT show_error(format('SELECT igny8_wait_job(%s)', :j1));
COMMIT;
SELECT state, provider, content IS NOT NULL AS has_content, attempts, error_code
  FROM igny8_wait_job(:j1, '30 s');
SELECT line AS j1_requests FROM sim('log --tag j1 --count') AS line;
-- its attempt is in ai_usage_log under the job's request_id
SELECT u.provider, u.success, u.task_type
  FROM ai_usage_log u JOIN igny8_jobs j ON j.request_id = u.request_id WHERE j.id = :j1;
-- a run's request id is a version 7 UUID made when the run was claimed
SELECT substr(request_id::text, 15, 1) AS uuid_version,
       substr(request_id::text, 20, 1) IN ('8', '9', 'a', 'b') AS rfc_variant,
       to_timestamp(('x' || lpad(substr(replace(request_id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint / 1000.0)
           BETWEEN date_trunc('milliseconds', started_at) AND finished_at AS made_when_run
  FROM igny8_jobs WHERE id = :j1;
SELECT started_at >= created_at AND finished_at >= started_at AS timed,
       duration_ms > 0 AS has_duration, input_tokens > 0 AS has_tokens,
       finish_reason, progress
  FROM igny8_job(:j1);

-- a rolled back submit is never sent: a later job has been, it has not
BEGIN;
SELECT igny8_submit_text('Never [[sim ollama:tag=j2]]', 'gpt-4') IS NOT NULL AS submitted;
ROLLBACK;
SELECT igny8_submit_text('After the rollback [[sim ollama:tag=j3]]', 'gpt-4') AS j3 \gset
SELECT state FROM igny8_wait_job(:j3, '30 s');
SELECT line AS j2_requests FROM sim('log --tag j2 --count') AS line;
SELECT count(*) AS rolled_back_rows FROM igny8_jobs WHERE request->>'messages' LIKE '%Never%';

-- idempotency: the same key gives the first job, and one request
SELECT igny8_submit_text('Once [[sim ollama:tag=j4]]', 'gpt-4', '{"idempotency_key": "article-42"}') AS k1 \gset
SELECT igny8_submit_text('Once [[sim ollama:tag=j4]]', 'gpt-4', '{"idempotency_key": "article-42"}') AS k2 \gset
SELECT :k1 = :k2 AS same_job;
SELECT state FROM igny8_wait_job(:k1, '30 s');
SELECT igny8_submit_text('Once [[sim ollama:tag=j4]]', 'gpt-4', '{"idempotency_key": "article-42"}') = :k1 AS same_after_finish;
SELECT line AS j4_requests FROM sim('log --tag j4 --count') AS line;
SELECT count(*) AS keyed_rows FROM igny8_jobs WHERE idempotency_key = 'article-42';

-- cancelling a queued job: it never starts
BEGIN;
SELECT igny8_submit_text('Cancelled early [[sim ollama:tag=j5]]', 'gpt-4') AS j5 \gset
SELECT igny8_cancel_job(:j5) AS cancelled;
COMMIT;
SELECT state, error_code, error_message, attempts FROM igny8_job(:j5);
SELECT igny8_submit_text('After the cancel [[sim ollama:tag=j6]]', 'gpt-4') AS j6 \gset
SELECT state FROM igny8_wait_job(:j6, '30 s');
SELECT line AS j5_requests FROM sim('log --tag j5 --count') AS line;
-- cancelling it again, or a finished job: false
SELECT igny8_cancel_job(:j5) AS again, igny8_cancel_job(:j1) AS finished;

-- cancelling a running job: its transfer is aborted, its attempt logged
SELECT igny8_submit_text('Cancelled late [[sim ollama:delay=30 tag=j7]]', 'gpt-4') AS j7 \gset
SELECT sim_wait_arrival('j7');
SELECT state, (progress->>'sent')::boolean AS sent, progress->>'provider' AS provider,
       progress->>'attempt' AS attempt
  FROM igny8_job(:j7);
SELECT igny8_cancel_job(:j7) AS cancelled;
SELECT state, error_code, error_message, provider FROM igny8_wait_job(:j7, '30 s');
SELECT sim_wait_disconnect('j7');
-- its cancel is done with
SELECT count(*) AS cancels_of_j7 FROM igny8_job_cancels WHERE job_id = :j7;
SELECT u.success, u.error_message
  FROM ai_usage_log u JOIN igny8_jobs j ON j.request_id = u.request_id WHERE j.id = :j7;

-- a cancel rolled back stops nothing
SELECT igny8_submit_text('Kept [[sim ollama:delay=3 tag=j8]]', 'gpt-4') AS j8 \gset
SELECT sim_wait_arrival('j8');
BEGIN;
SELECT igny8_cancel_job(:j8) AS cancelled;
ROLLBACK;
SELECT state FROM igny8_wait_job(:j8, '30 s');
SELECT cancel_requested FROM igny8_jobs WHERE id = :j8;

-- a cancel whose transaction stays open holds up no worker: the cancel is
-- a row of igny8_job_cancels, not a lock on the job's row, so the job's
-- worker writes its outcome meanwhile.  Committed after the job finished,
-- it changes nothing, and igny8_jobs_cleanup() deletes it
SELECT igny8_submit_text('Open cancel [[sim ollama:delay=3 tag=jx1]]', 'gpt-4') AS jx1 \gset
SELECT sim_wait_arrival('jx1');
SELECT dblink_connect('canceller', 'dbname=' || current_database());
SELECT dblink_exec('canceller', 'BEGIN');
SELECT cancelled FROM dblink('canceller', format('SELECT igny8_cancel_job(%s)', :jx1)) AS t(cancelled boolean);
SELECT state FROM igny8_wait_job(:jx1, '30 s');
SELECT dblink_exec('canceller', 'COMMIT');
SELECT state, cancel_requested FROM igny8_jobs WHERE id = :jx1;
SELECT count(*) AS cancels_of_jx1 FROM igny8_job_cancels WHERE job_id = :jx1;
SELECT igny8_jobs_cleanup() >= 0 AS cleaned;
SELECT count(*) AS cancels_of_jx1 FROM igny8_job_cancels WHERE job_id = :jx1;

-- a cancel rolled back frees the queued job's row it locked, which the
-- worker's claim passed over when the job came due (its not_before timer
-- fires meanwhile): the rollback has the workers look again, so the job
-- starts before any worker's next periodic scan
SELECT dblink_exec('canceller', 'BEGIN');
SELECT igny8_submit_text('Rolled back cancel [[sim ollama:tag=jrb]]', 'gpt-4',
                         jsonb_build_object('not_before', clock_timestamp() + interval '1 s')) AS jrb \gset
SELECT cancelled FROM dblink('canceller', format('SELECT igny8_cancel_job(%s)', :jrb)) AS t(cancelled boolean);
SELECT wait_until(format($q$clock_timestamp() > (SELECT not_before + interval '1 s' FROM igny8_jobs WHERE id = %s)$q$, :jrb),
                  'the job due, and passed over');
SELECT state FROM igny8_jobs WHERE id = :jrb;
SELECT wait_scan_away(0) AND wait_scan_away(1) AS scans_away;
SELECT min(next_job_scan) AS next_scan FROM igny8_worker_status() \gset
SELECT dblink_exec('canceller', 'ROLLBACK');
SELECT state, started_at < :'next_scan'::timestamptz AS started_at_the_rollback
  FROM igny8_wait_job(:jrb, '60 s');

-- a queued job cancelled in a prepared transaction: cancelled at COMMIT
-- PREPARED (its NOTIFY is sent just before a commit, never at PREPARE)
SELECT igny8_submit_text('Prepared cancel', 'gpt-4', '{"not_before": "2999-01-01"}') AS jx2 \gset
BEGIN;
SELECT igny8_cancel_job(:jx2) AS cancelled;
PREPARE TRANSACTION 'igny8_jobs_cancel_jx2';
SELECT state FROM igny8_jobs WHERE id = :jx2;
COMMIT PREPARED 'igny8_jobs_cancel_jx2';
SELECT state, error_code, cancel_requested FROM igny8_jobs WHERE id = :jx2;

-- a queued job's NOTIFY is sent once, by the commit; a cancel rolled back
-- to a savepoint sends none and cancels nothing
SELECT igny8_submit_text('Waited for', 'gpt-4', '{"not_before": "2999-01-01"}') AS jx3 \gset
SELECT igny8_submit_text('Kept by a savepoint', 'gpt-4', '{"not_before": "2999-01-01"}') AS jx4 \gset
SELECT dblink_connect('listener', 'dbname=' || current_database());
SELECT dblink_exec('listener', 'LISTEN igny8_ai_jobs');
BEGIN;
SAVEPOINT s;
SELECT igny8_cancel_job(:jx4) AS cancelled_then_rolled_back;
ROLLBACK TO SAVEPOINT s;
SELECT igny8_cancel_job(:jx3) AS cancelled;
COMMIT;
SELECT id = :jx3 AS jx3, state FROM igny8_jobs WHERE id IN (:jx3, :jx4) ORDER BY id;
NOTIFY igny8_ai_jobs, 'sentinel';
CREATE TEMP TABLE job_notices (payload text);
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        INSERT INTO job_notices SELECT extra FROM dblink_get_notify('listener');
        EXIT WHEN EXISTS (SELECT FROM job_notices WHERE payload = 'sentinel');
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT (payload::jsonb->>'id')::bigint = :jx3 AS jx3, payload::jsonb->>'state' AS state
  FROM job_notices WHERE payload <> 'sentinel'
   AND (payload::jsonb->>'id')::bigint IN (:jx3, :jx4);
SELECT count(*) AS sentinel FROM job_notices WHERE payload = 'sentinel';
SELECT dblink_disconnect(c) FROM unnest(ARRAY['canceller', 'listener']) c;

-- a failed job: its error, every attempt in ai_usage_log
SELECT igny8_submit_text('Refused [[sim ollama:status=400 openai:status=400 anthropic:status=400]]', 'gpt-4',
                         '{"max_attempts": 1}') AS jf \gset
SELECT state, error_code, error_message, attempts, content FROM igny8_wait_job(:jf, '30 s');

-- not_before: queued until then
SELECT igny8_submit_text('Later [[sim ollama:tag=j9]]', 'gpt-4',
                         jsonb_build_object('not_before', now() + interval '2 s')) AS j9 \gset
SELECT state FROM igny8_job(:j9);
SELECT state, started_at >= not_before AS not_early FROM igny8_wait_job(:j9, '30 s');

-- a timeout that passes returns the job as it stands
SELECT igny8_submit_text('Not yet', 'gpt-4', '{"not_before": "2999-01-01"}') AS j10 \gset
SELECT state FROM igny8_wait_job(:j10, '0.2 s');
SELECT igny8_cancel_job(:j10) AS cancelled;

-- chat and image jobs
SELECT igny8_submit_chat('[{"role": "user", "content": "Hi [[sim ollama:tag=j11]]"}]',
                         'gpt-4', '{"max_tokens": 50, "priority": "interactive"}') AS j11 \gset
SELECT state, content IS NOT NULL AS has_content, kind, priority FROM igny8_wait_job(:j11, '30 s');
SELECT igny8_submit_image('A lighthouse [[sim comfyui:tag=j12]]', 'dall-e-2', '512x512', '{"seed": 7}') AS j12 \gset
SELECT state, kind, provider, width, height, seed, substring(image from 2 for 3) AS png,
       length(image) > 100 AS has_image
  FROM igny8_wait_job(:j12, '60 s');

-- a batch: one job per prompt, ids in order, every prompt checked first
SELECT igny8_submit_batch(ARRAY['First [[sim ollama:tag=b1]]', 'Second [[sim ollama:tag=b2]]',
                                'Third [[sim ollama:tag=b3]]'], 'gpt-4', '{"max_tokens": 20}') AS batch \gset
SELECT ord, w.state, w.content IS NOT NULL AS has_content
  FROM unnest(:'batch'::bigint[]) WITH ORDINALITY AS b(id, ord), igny8_wait_job(b.id, '30 s') w
 ORDER BY ord;
SELECT j.request->'messages'->0->>'content' AS prompt
  FROM unnest(:'batch'::bigint[]) WITH ORDINALITY AS b(id, ord) JOIN igny8_jobs j ON j.id = b.id
 ORDER BY ord;
-- each run has a request id of its own (a claim takes the batch's jobs
-- together), and its usage row is under it
SELECT count(DISTINCT j.request_id) AS distinct_ids,
       count(*) FILTER (WHERE j.request_id IS NULL) AS without_id,
       count(*) FILTER (WHERE u.n = 1) AS one_usage_row_each
  FROM unnest(:'batch'::bigint[]) AS b(id) JOIN igny8_jobs j ON j.id = b.id
  CROSS JOIN LATERAL (SELECT count(*) AS n FROM ai_usage_log l
                       WHERE l.request_id = j.request_id) u;
SELECT array_length(igny8_submit_batch(ARRAY['a', 'b'], 'gpt-4', '{"idempotency_key": "batch-1", "not_before": "2999-01-01"}'), 1) AS n,
       igny8_submit_batch(ARRAY['a', 'b'], 'gpt-4', '{"idempotency_key": "batch-1"}')
       = igny8_submit_batch(ARRAY['a', 'b'], 'gpt-4', '{"idempotency_key": "batch-1"}') AS same_ids;
SELECT idempotency_key FROM igny8_jobs WHERE idempotency_key LIKE 'batch-1:%' ORDER BY 1;

-- bad input: an error each, and no job queued
SELECT count(*) AS jobs_before FROM igny8_jobs \gset
SELECT show_error('SELECT igny8_submit_text(NULL)');
SELECT show_error('SELECT igny8_submit_text(''  '')');
SELECT show_error('SELECT igny8_submit_text(''x'', NULL)');
SELECT show_error('SELECT igny8_submit_text(''x'', '''')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''[1]'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"colour": 1}'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"priority": "urgent"}'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"priority": 1}'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"not_before": "soon"}'')');
-- (its context names the option)
SELECT igny8_submit_text('x', 'gpt-4', '{"not_before": "soon"}');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"not_before": "infinity"}'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"max_attempts": 0}'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"max_attempts": 101}'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"max_attempts": 1.5}'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"idempotency_key": " "}'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"idempotency_key": 7}'')');
SELECT show_error(format('SELECT igny8_submit_text(''x'', ''gpt-4'', %L)',
                         jsonb_build_object('idempotency_key', repeat('k', 201))));
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"timeout": -1}'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"account_id": -1}'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''gpt-4'', ''{"system": 1}'')');
-- an alias that does not exist, or serves the other task (42704, 42809)
SELECT show_error('SELECT igny8_submit_text(''x'', ''no-such-alias'')');
SELECT show_error('SELECT igny8_submit_text(''x'', ''dall-e-3'')');
SELECT show_error('SELECT igny8_submit_chat(''[{"role": "user", "content": "x"}]'', ''no-such-alias'')');
SELECT show_error('SELECT igny8_submit_image(''x'', ''gpt-4'')');
SELECT show_error('SELECT igny8_submit_batch(ARRAY[''a''], ''dall-e-3'')');
SELECT show_error('SELECT igny8_submit_chat(NULL)');
SELECT show_error('SELECT igny8_submit_chat(''[]'')');
SELECT show_error('SELECT igny8_submit_chat(''[{"role": "user"}]'')');
SELECT show_error('SELECT igny8_submit_chat(''[{"role": "user", "content": "x"}]'', ''gpt-4'', ''{"system": "s"}'')');
SELECT show_error('SELECT igny8_submit_image(NULL)');
SELECT show_error('SELECT igny8_submit_image(''x'', ''dall-e-3'', ''huge'')');
SELECT show_error('SELECT igny8_submit_image(''x'', ''dall-e-3'', ''1024x1024'', ''{"steps": 0}'')');
SELECT show_error('SELECT igny8_submit_image(''x'', ''dall-e-3'', ''1024x1024'', ''{"max_attempts": "3"}'')');
SELECT show_error('SELECT igny8_submit_batch(NULL)');
SELECT show_error('SELECT igny8_submit_batch(''{}'')');
SELECT show_error('SELECT igny8_submit_batch(ARRAY[''a'', NULL])');
-- the error's context names the prompt at fault, also a null one
DO $$
DECLARE
    msg text;
    ctx text;
BEGIN
    PERFORM igny8_submit_batch(ARRAY['x', NULL, 'y'], 'gpt-4');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, ctx = PG_EXCEPTION_CONTEXT;
    RAISE NOTICE '% (context: %)', msg, split_part(ctx, E'\n', 1);
END
$$;
SELECT igny8_submit_batch(ARRAY['a', ' ']);
SELECT show_error('SELECT igny8_submit_batch(ARRAY[[''a''], [''b'']])');
SELECT show_error('SELECT igny8_submit_batch(ARRAY[''a''], NULL)');
SELECT show_error('SELECT igny8_submit_batch(ARRAY[''a''], ''gpt-4'', ''{"idempotency_key": "' || repeat('k', 195) || '"}'')');
SELECT show_error('SELECT igny8_job(NULL)');
SELECT show_error('SELECT igny8_job(-1)');
SELECT show_error('SELECT igny8_wait_job(NULL)');
SELECT show_error('SELECT igny8_wait_job(-1)');
SELECT show_error(format('SELECT igny8_wait_job(%s, ''-1 s'')', :j1));
SELECT show_error('SELECT igny8_cancel_job(NULL)');
SELECT show_error('SELECT igny8_cancel_job(-1)');
SELECT count(*) - :jobs_before AS jobs_added FROM igny8_jobs;

-- a job whose alias is deleted in its own transaction fails with the
-- router's error when it runs, and the workers go on (none restarts)
INSERT INTO igny8_models (alias, provider_id, provider_model) VALUES ('doomed', 'self_hosted_ai', 'qwen3:8b');
SELECT string_agg(pid::text, ',' ORDER BY worker) AS worker_pids FROM igny8_worker_status() \gset
BEGIN;
SELECT igny8_submit_text('Doomed [[sim ollama:tag=jd]]', 'doomed') AS jd \gset
DELETE FROM igny8_models WHERE alias = 'doomed';
COMMIT;
SELECT state, error_code, error_message, error_hint, attempts FROM igny8_wait_job(:jd, '30 s');
-- a submit with an idempotency key already used returns that job, even
-- when its alias has gone since (the alias is checked for new jobs only)
INSERT INTO igny8_models (alias, provider_id, provider_model) VALUES ('kept-key', 'self_hosted_ai', 'qwen3:8b');
SELECT igny8_submit_text('Kept', 'kept-key', '{"idempotency_key": "kk-1", "not_before": "2999-01-01"}') AS kk \gset
SELECT igny8_submit_batch(ARRAY['a', 'b'], 'kept-key', '{"idempotency_key": "kkb", "not_before": "2999-01-01"}') AS kkb \gset
DELETE FROM igny8_models WHERE alias = 'kept-key';
SELECT igny8_submit_text('Kept', 'kept-key', '{"idempotency_key": "kk-1"}') = :kk AS same_job;
SELECT igny8_submit_batch(ARRAY['a', 'b'], 'kept-key', '{"idempotency_key": "kkb"}') = :'kkb' AS same_jobs;
SELECT show_error($$SELECT igny8_submit_text('New', 'kept-key', '{"idempotency_key": "kk-2"}')$$);
SELECT igny8_cancel_job(id) FROM igny8_jobs WHERE model_alias = 'kept-key' ORDER BY id;
-- the hint of a failed run names its attempts, as the call's does
SELECT igny8_submit_text('All fail [[sim ollama:status=404]] [[sim openai:status=404]] [[sim anthropic:status=404]]',
                         'gpt-4-fallback', '{"max_attempts": 1}') AS jh \gset
SELECT state, error_code, error_hint = format('Check the providers in igny8_providers. The attempts are in ai_usage_log with request_id %s.', request_id) AS hint_names_attempts
  FROM igny8_wait_job(:jh, '30 s');
SELECT line AS jd_requests FROM sim('log --tag jd --count') AS line;
SELECT string_agg(pid::text, ',' ORDER BY worker) = :'worker_pids' AS same_workers FROM igny8_worker_status();

-- waiting in a REPEATABLE READ transaction cannot see the job finish
SELECT igny8_submit_text('Repeatable [[sim ollama:delay=3]]', 'gpt-4') AS jr \gset
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT show_error(format('SELECT igny8_wait_job(%s)', :jr));
COMMIT;
SELECT state FROM igny8_wait_job(:jr, '30 s');

-- nor cancel in one: its snapshot may show queued or running a job that a
-- worker claimed or finished since.  A job finished in the snapshot, or
-- submitted by the transaction itself, is no such case
SELECT igny8_submit_text('Later', 'gpt-4', '{"not_before": "2999-01-01"}') AS jq \gset
SELECT igny8_submit_text('Snapshot [[sim ollama:delay=3 tag=jrr]]', 'gpt-4') AS jrr \gset
SELECT sim_wait_arrival('jrr');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT show_error(format('SELECT igny8_cancel_job(%s)', :jq));
ROLLBACK;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT state AS jrr_in_snapshot FROM igny8_jobs WHERE id = :jrr;
SELECT dblink_connect('other', 'dbname=' || current_database());
SELECT state AS jrr_finished FROM dblink('other', format('SELECT state FROM igny8_wait_job(%s, ''30 s'')', :jrr)) AS t(state text);
SELECT dblink_disconnect('other');
SELECT show_error(format('SELECT igny8_cancel_job(%s)', :jrr));
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT igny8_cancel_job(:jr) AS finished_job;
SELECT igny8_submit_text('Own', 'gpt-4') AS jown \gset
SELECT igny8_cancel_job(:jown) AS own_job;
COMMIT;
SELECT state FROM igny8_job(:jown);
SELECT count(*) AS stray_cancels FROM igny8_job_cancels WHERE job_id IN (:jrr, :jown);
SELECT igny8_cancel_job(:jq) AS read_committed;

-- a prepared transaction's jobs run at COMMIT PREPARED
BEGIN;
SELECT igny8_submit_text('Prepared [[sim ollama:tag=jp]]', 'gpt-4') AS jp \gset
PREPARE TRANSACTION 'igny8_jobs_test';
SELECT line AS jp_requests_before FROM sim('log --tag jp --count') AS line;
COMMIT PREPARED 'igny8_jobs_test';
SELECT state FROM igny8_wait_job(:jp, '30 s');

-- row-level security: a role sees and cancels only its own jobs
CREATE ROLE igny8_jobs_a LOGIN;
CREATE ROLE igny8_jobs_b LOGIN;
CREATE ROLE igny8_jobs_none LOGIN;
SELECT igny8_grant_usage('igny8_jobs_a');
SELECT igny8_grant_usage('igny8_jobs_b');
SET ROLE igny8_jobs_none;
SELECT show_error('SELECT igny8_submit_text(''x'')');
RESET ROLE;
SET ROLE igny8_jobs_a;
SELECT igny8_submit_text('Mine [[sim ollama:tag=ja]]', 'gpt-4', '{"not_before": "2999-01-01"}') AS ja \gset
SELECT count(*) AS a_sees FROM igny8_jobs;
SELECT state FROM igny8_job(:ja);
RESET ROLE;
SET ROLE igny8_jobs_b;
SELECT count(*) AS b_sees FROM igny8_jobs;
SELECT show_error(format('SELECT igny8_job(%s)', :ja));
SELECT show_error(format('SELECT igny8_cancel_job(%s)', :ja));
SELECT show_error(format('SELECT igny8_wait_job(%s)', :ja));
-- the same idempotency key is another role's own
SELECT igny8_submit_text('Theirs', 'gpt-4', '{"idempotency_key": "article-42", "not_before": "2999-01-01"}') <> :k1 AS own_key;
SELECT show_error('UPDATE igny8_jobs SET state = ''succeeded''');
RESET ROLE;
SET ROLE igny8_jobs_a;
SELECT igny8_cancel_job(:ja) AS a_cancels;
RESET ROLE;
SELECT submitted_by, state FROM igny8_jobs WHERE id = :ja;
DELETE FROM igny8_jobs WHERE submitted_by IN ('igny8_jobs_a'::regrole, 'igny8_jobs_b'::regrole);
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM igny8_jobs_a, igny8_jobs_b;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM igny8_jobs_a, igny8_jobs_b;
REVOKE ALL ON SCHEMA public FROM igny8_jobs_a, igny8_jobs_b;
DROP ROLE igny8_jobs_a;
DROP ROLE igny8_jobs_b;
DROP ROLE igny8_jobs_none;

-- synchronous calls go ahead of the jobs waiting for a provider's place,
-- in the order they came
UPDATE igny8_providers SET max_concurrent = 1 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();
SELECT igny8_submit_text('Holds the place [[sim ollama:delay=3 tag=pa]]', 'gpt-4') AS pa \gset
SELECT sim_wait_arrival('pa');
SELECT igny8_submit_text('Waits [[sim ollama:tag=pb]]', 'gpt-4') AS pb \gset
SELECT wait_until(format($$(SELECT progress->>'waiting' = 'for a provider place' FROM igny8_job(%s))$$, :pb),
                  'the job to wait for a place');
SELECT dblink_connect('sync', 'dbname=' || current_database());
SELECT dblink_send_query('sync', $$SELECT igny8_generate_text('Sync [[sim ollama:tag=pc]]', 'gpt-4')$$);
SELECT wait_until($$(SELECT queued = 2 FROM igny8_service_status WHERE provider = 'self_hosted_ai')$$,
                  'the call to wait for a place too');
SELECT dblink_connect('sync2', 'dbname=' || current_database());
SELECT dblink_send_query('sync2', $$SELECT igny8_generate_text('Sync too [[sim ollama:tag=pd]]', 'gpt-4')$$);
SELECT wait_until($$(SELECT queued = 3 FROM igny8_service_status WHERE provider = 'self_hosted_ai')$$,
                  'the second call to wait for a place');
SELECT state, provider FROM igny8_wait_job(:pb, '30 s');
SELECT dblink_answer('sync') IS NOT NULL AS answered, dblink_answer('sync2') IS NOT NULL AS answered_too;
SELECT dblink_disconnect(c) FROM unnest(ARRAY['sync', 'sync2']) c;
SELECT string_agg(tag, ' ') AS order_of_arrival
  FROM sim('log --role ollama --field tag') AS tag WHERE tag IN ('pa', 'pb', 'pc', 'pd');
UPDATE igny8_providers SET max_concurrent = 8 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();

-- a job waits for a busy provider's place as long as it takes, past the
-- deployment's queue_timeout (after which a call falls back), and its
-- timeout counts from its first attempt
UPDATE igny8_providers SET max_concurrent = 1 WHERE id = 'self_hosted_ai';
UPDATE igny8_models SET queue_timeout = '0.2 s' WHERE alias = 'gpt-4' AND provider_id = 'self_hosted_ai';
SELECT wait_for_config();
SELECT igny8_submit_text('Holds [[sim ollama:delay=2 tag=qa]]', 'gpt-4') AS qa \gset
SELECT sim_wait_arrival('qa');
SELECT igny8_submit_text('Patient [[sim ollama:tag=qb]]', 'gpt-4', '{"timeout": 1}') AS qb \gset
SELECT state, provider, attempts FROM igny8_wait_job(:qb, '30 s');
SELECT state, provider FROM igny8_wait_job(:qa, '30 s');
SELECT count(*) AS qb_fallbacks FROM ai_usage_log u JOIN igny8_jobs j USING (request_id)
 WHERE j.id = :qb AND u.provider <> 'self_hosted_ai';
UPDATE igny8_models SET queue_timeout = '30 s' WHERE alias = 'gpt-4' AND provider_id = 'self_hosted_ai';
UPDATE igny8_providers SET max_concurrent = 8 WHERE id = 'self_hosted_ai';
SELECT wait_for_config();

-- image jobs on ComfyUI: where each is in ComfyUI's queue; a cancel
-- interrupts the running prompt by its own prompt_id, and the next runs
SELECT sim('reset');
SELECT igny8_submit_image('Long [[sim comfyui:run_time=3600 key=ci1]]', 'dall-e-2', '512x512') AS ci1 \gset
SELECT wait_until($$(SELECT count(*) FROM sim('log --role comfyui --key ci1 --path /prompt --count') l WHERE l::int >= 1)$$,
                  'the first prompt at ComfyUI');
SELECT igny8_submit_image('Next [[sim comfyui:key=ci2]]', 'dall-e-2', '512x512') AS ci2 \gset
SELECT wait_until($$(SELECT count(*) FROM sim('log --role comfyui --key ci2 --path /prompt --count') l WHERE l::int >= 1)$$,
                  'the second prompt at ComfyUI');
SELECT wait_until(format($$(SELECT progress ? 'comfyui_prompt_id' FROM igny8_job(%s))$$, :ci2),
                  'the second prompt id in the progress');
SELECT id = :ci1 AS first, progress->>'provider' AS provider, progress->>'comfyui_ahead' AS ahead,
       (progress->>'comfyui_prompt_id') IS NOT NULL AS has_prompt_id, (progress->>'sent')::boolean AS sent
  FROM igny8_job(:ci1)
UNION ALL
SELECT id = :ci1, progress->>'provider', progress->>'comfyui_ahead',
       (progress->>'comfyui_prompt_id') IS NOT NULL, (progress->>'sent')::boolean
  FROM igny8_job(:ci2);
SELECT progress->>'comfyui_prompt_id' AS ci1_prompt FROM igny8_job(:ci1) \gset
SELECT igny8_cancel_job(:ci1) AS cancelled;
SELECT state, error_code FROM igny8_wait_job(:ci1, '30 s');
SELECT state, provider, width FROM igny8_wait_job(:ci2, '60 s');
SELECT count(*) AS interrupts_of_ci1 FROM sim('log --role comfyui --path /interrupt --field prompt_id') l
 WHERE l = :'ci1_prompt';
SELECT l AS interrupt_kinds FROM sim('log --role comfyui --path /interrupt --field interrupt') l;

-- one account cannot take every running place: with a limit of 1 per
-- account, account 1's second and third jobs wait while account 2's runs
ALTER SYSTEM SET igny8_ai.max_running_jobs_per_account = 1;
SELECT reload_settings();
SELECT igny8_submit_batch(ARRAY['Busy [[sim ollama:delay=30 tag=ac1]]', 'Busy [[sim ollama:delay=30 tag=ac1]]',
                                'Busy [[sim ollama:delay=30 tag=ac1]]'], 'gpt-4', '{"account_id": 1}') AS busy \gset
SELECT sim_wait_arrival('ac1');
SELECT igny8_submit_text('Other account [[sim ollama:tag=ac2]]', 'gpt-4', '{"account_id": 2}') AS other \gset
SELECT state FROM igny8_wait_job(:other, '30 s');
SELECT line AS ac1_requests FROM sim('log --tag ac1 --count') AS line;
SELECT state, count(*) FROM igny8_jobs WHERE id = ANY (:'busy'::bigint[]) GROUP BY state ORDER BY state;
SELECT bool_and(igny8_cancel_job(id)) AS cancelled FROM unnest(:'busy'::bigint[]) AS id;
SELECT wait_until(format($$(SELECT bool_and(state = 'cancelled') FROM igny8_jobs WHERE id = ANY (%L::bigint[]))$$, :'busy'),
                  'the busy jobs to be cancelled');
ALTER SYSTEM RESET igny8_ai.max_running_jobs_per_account;
SELECT reload_settings();

-- igny8_ai.max_running_jobs holds server-wide, whatever the workers: with
-- 1, the two workers run one job at a time, and each job starts when the
-- one before ends.  The running rows are counted until every job finished
CREATE FUNCTION pg_temp.peak_running(ids bigint[], secs int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    peak int := 0;
    n int;
BEGIN
    FOR i IN 1..secs * 50 LOOP
        SELECT count(*) INTO n FROM igny8_jobs WHERE state = 'running';
        peak := greatest(peak, n);
        IF NOT EXISTS (SELECT FROM igny8_jobs WHERE id = ANY (ids)
                          AND state IN ('queued', 'running')) THEN
            RETURN peak;
        END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
    RAISE EXCEPTION 'waited % s for the capped jobs', secs;
END
$$;
ALTER SYSTEM SET igny8_ai.max_running_jobs = 1;
SELECT reload_settings();
SELECT igny8_submit_batch(ARRAY['Capped [[sim ollama:delay=2 tag=cap]]', 'Capped [[sim ollama:delay=2 tag=cap]]',
                                'Capped [[sim ollama:delay=2 tag=cap]]'], 'gpt-4') AS capped \gset
SELECT pg_temp.peak_running(:'capped', 60) AS peak_running;
SELECT state, count(*) FROM igny8_jobs WHERE id = ANY (:'capped'::bigint[]) GROUP BY state ORDER BY state;
SELECT line AS cap_requests FROM sim('log --tag cap --count') AS line;
SELECT line AS cap_concurrency FROM sim('max-concurrency --tag cap') AS line;
ALTER SYSTEM RESET igny8_ai.max_running_jobs;
SELECT reload_settings();

-- a worker stopped in mid-flight: the job runs again, and the attempt it
-- interrupted has its usage row (written when the row was taken back)
TRUNCATE ai_usage_log;
SELECT igny8_submit_text('Interrupted [[sim ollama:delay=2 tag=js]]', 'gpt-4') AS js \gset
SELECT sim_wait_arrival('js');
SELECT inflight->>'attempt' AS inflight_attempt, inflight->>'provider' AS inflight_provider
  FROM igny8_jobs WHERE id = :js;
SELECT pg_terminate_backend(s.pid) AS stopped
  FROM igny8_job(:js) j JOIN igny8_worker_status() s ON s.worker = (j.progress->>'worker')::int;
SELECT state, attempts FROM igny8_wait_job(:js, '60 s');
SELECT inflight FROM igny8_jobs WHERE id = :js;
SELECT line AS js_requests FROM sim('log --tag js --count') AS line;
SELECT success, error_message, attempt FROM ai_usage_log ORDER BY created_at;
SELECT wait_for_workers();
-- past max_attempts it fails as interrupted
SELECT igny8_submit_text('Interrupted once [[sim ollama:delay=2 tag=jt]]', 'gpt-4', '{"max_attempts": 1}') AS jt \gset
SELECT sim_wait_arrival('jt');
SELECT pg_terminate_backend(s.pid) AS stopped
  FROM igny8_job(:jt) j JOIN igny8_worker_status() s ON s.worker = (j.progress->>'worker')::int;
SELECT state, attempts, error_code, error_message FROM igny8_wait_job(:jt, '60 s');
SELECT line AS jt_requests FROM sim('log --tag jt --count') AS line;
SELECT wait_for_workers();
-- a worker stopped after it recorded a run's first attempt as in flight,
-- but before it sent it: the run sent nothing, so it does not count, and
-- the job (one attempt allowed) runs again instead of failing as
-- interrupted, with no usage row for the attempt never sent.  A trigger
-- holds the worker inside the transaction that records the attempt until
-- the worker has been told to stop
CREATE FUNCTION hold_intent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.inflight IS NOT NULL AND OLD.inflight IS NULL
       AND NEW.request::text LIKE '%tag=jint]%' THEN
        PERFORM pg_advisory_xact_lock_shared(4242);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER hold_intent BEFORE UPDATE ON igny8_jobs
    FOR EACH ROW EXECUTE FUNCTION hold_intent();
SELECT coalesce(max(id), 0) AS usage_before FROM ai_usage_log \gset
SELECT pg_advisory_lock(4242);
SELECT igny8_submit_text('Held before sending [[sim ollama:tag=jint]]', 'gpt-4', '{"max_attempts": 1}') AS jint \gset
SELECT wait_until($$(SELECT count(*) = 1 FROM pg_stat_activity a JOIN igny8_worker_status() w ON w.pid = a.pid
                      WHERE a.wait_event = 'advisory')$$, 'a worker held recording the attempt');
SELECT pg_terminate_backend(a.pid) AS stopped
  FROM pg_stat_activity a JOIN igny8_worker_status() w ON w.pid = a.pid WHERE a.wait_event = 'advisory';
SELECT pg_advisory_unlock(4242);
SELECT state, attempts, error_code FROM igny8_wait_job(:jint, '60 s');
SELECT line AS jint_requests FROM sim('log --tag jint --count') AS line;
SELECT success, error_message FROM ai_usage_log WHERE id > :usage_before;
DROP TRIGGER hold_intent ON igny8_jobs;
DROP FUNCTION hold_intent();
SELECT wait_for_workers();
-- a cancel that commits while a stopping worker gives its run back (the
-- give-back's snapshot cannot see it): the job is queued again with its
-- cancel pending, and is cancelled, not run again.  A trigger holds the
-- give-back until the cancel has committed
CREATE FUNCTION hold_give_back() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = 'running' AND NEW.state = 'queued'
       AND NEW.request::text LIKE '%tag=jgb]%' THEN
        PERFORM pg_advisory_xact_lock_shared(4243);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER hold_give_back BEFORE UPDATE ON igny8_jobs
    FOR EACH ROW EXECUTE FUNCTION hold_give_back();
SELECT igny8_submit_text('Given back [[sim ollama:delay=30 tag=jgb]]', 'gpt-4') AS jgb \gset
SELECT sim_wait_arrival('jgb');
SELECT pg_advisory_lock(4243);
SELECT pg_terminate_backend(s.pid) AS stopped
  FROM igny8_job(:jgb) j JOIN igny8_worker_status() s ON s.worker = (j.progress->>'worker')::int;
SELECT wait_until($$(SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'advisory'
                      AND backend_type = 'igny8_ai worker')$$, 'the worker giving the run back');
SELECT igny8_cancel_job(:jgb) AS cancelled;
SELECT pg_advisory_unlock(4243);
SELECT state, error_code FROM igny8_wait_job(:jgb, '30 s');
SELECT line AS jgb_requests FROM sim('log --tag jgb --count') AS line;
SELECT count(*) AS cancels_left FROM igny8_job_cancels WHERE job_id = :jgb;
DROP TRIGGER hold_give_back ON igny8_jobs;
DROP FUNCTION hold_give_back();
SELECT wait_for_workers();
-- a queued job with a pending cancel (what such a give-back can leave) is
-- never run: the claim that reaches it cancels it instead
SELECT igny8_submit_text('Pending cancel [[sim ollama:tag=jpc]]', 'gpt-4',
                         jsonb_build_object('not_before', now() + interval '2 s')) AS jpc \gset
INSERT INTO igny8_job_cancels (job_id) VALUES (:jpc);
SELECT state, error_code FROM igny8_wait_job(:jpc, '30 s');
SELECT line AS jpc_requests FROM sim('log --tag jpc --count') AS line;
SELECT count(*) AS cancels_left FROM igny8_job_cancels WHERE job_id = :jpc;

-- retention: finished jobs older than igny8_ai.job_retention go, the
-- others stay
SELECT count(*) AS finished FROM igny8_jobs WHERE finished_at IS NOT NULL \gset
UPDATE igny8_jobs SET finished_at = now() - interval '8 days', created_at = now() - interval '8 days'
 WHERE id IN (:j1, :j5, :jf);
SELECT igny8_jobs_cleanup() AS deleted;
SELECT count(*) AS left_finished FROM igny8_jobs WHERE finished_at IS NOT NULL;
SELECT :finished - 3 AS expected;
SELECT count(*) AS queued_kept FROM igny8_jobs WHERE state = 'queued';
DELETE FROM igny8_jobs WHERE state = 'queued';

-- waiting for a running job that this open transaction cancelled: its
-- worker learns of the cancel at the commit, so the wait is refused
SELECT igny8_submit_text('Cancel then wait [[sim ollama:delay=30 tag=jcw]]', 'gpt-4') AS jcw \gset
SELECT sim_wait_arrival('jcw');
BEGIN;
SELECT igny8_cancel_job(:jcw) AS cancelled;
SELECT show_error(format('SELECT igny8_wait_job(%s)', :jcw));
COMMIT;
SELECT state, error_code FROM igny8_wait_job(:jcw, '30 s');
SELECT sim_wait_disconnect('jcw');

-- a run is its job's by its request id, not by the job's id, which may
-- name another job by the time the run ends (TRUNCATE ... RESTART
-- IDENTITY here; DROP and CREATE EXTENSION likewise): the old run's
-- outcome is not written into the new job, whose own run goes on
TRUNCATE igny8_jobs RESTART IDENTITY;
SELECT igny8_submit_text('Old run [[sim ollama:delay=3 tag=jold reply=old-answer]]', 'gpt-4') AS jold \gset
SELECT sim_wait_arrival('jold');
SELECT request_id AS old_rid FROM igny8_jobs WHERE id = :jold \gset
TRUNCATE igny8_jobs RESTART IDENTITY;
SELECT igny8_submit_text('New run [[sim ollama:delay=8 tag=jnew reply=new-answer]]', 'gpt-4') AS jnew \gset
SELECT :jold = :jnew AS same_id;
SELECT sim_wait_arrival('jnew');
SELECT request_id AS new_rid FROM igny8_jobs WHERE id = :jnew \gset
-- while both runs are in flight (the old one has no usage row yet), the
-- job's progress is its own run's
SELECT count(*) AS old_run_usage_rows FROM ai_usage_log WHERE request_id = :'old_rid';
SELECT (j.progress->>'attempt_since')::timestamptz >= r.started_at AS progress_of_its_run
  FROM igny8_job(:jnew) j, igny8_jobs r WHERE r.id = :jnew;
-- the old run ends and logs its attempt; the new job is still running
SELECT wait_until(format($q$EXISTS (SELECT FROM ai_usage_log WHERE request_id = %L)$q$, :'old_rid'),
                  'the old run''s usage row');
SELECT state, content, request_id = :'new_rid' AS new_run FROM igny8_jobs WHERE id = :jnew;
SELECT progress IS NOT NULL AS has_progress FROM igny8_job(:jnew);
SELECT state, content, request_id = :'new_rid' AS new_run FROM igny8_wait_job(:jnew, '30 s');
SELECT request_id = :'new_rid' AS new_run, success FROM ai_usage_log
 WHERE request_id IN (:'old_rid', :'new_rid') ORDER BY id;

-- a job whose outcome cannot be written (a trigger a DBA put on
-- igny8_jobs refuses it; here as a full disk would): the job ends failed
-- with the reason, once, and its attempt keeps its usage row; the other
-- jobs are written as usual
CREATE FUNCTION refuse_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'no room left for job %', NEW.id
        USING ERRCODE = 'disk_full', DETAIL = 'refused by the test trigger';
END
$$;
CREATE TRIGGER refuse_outcome BEFORE UPDATE ON igny8_jobs FOR EACH ROW
    WHEN (NEW.state = 'succeeded' AND NEW.content LIKE '%unwritable-answer')
    EXECUTE FUNCTION refuse_outcome();
SELECT igny8_submit_text('Unwritable [[sim ollama:reply=unwritable-answer]]', 'gpt-4') AS junw \gset
SELECT state, error_code, error_message = format('could not write the outcome of job %s to igny8_jobs: no room left for job %s', :junw, :junw) AS says_why,
       error_detail, error_hint, content, attempts
  FROM igny8_wait_job(:junw, '30 s');
SELECT count(*) FILTER (WHERE u.success) AS usage_succeeded, count(*) AS usage_rows
  FROM ai_usage_log u JOIN igny8_jobs j USING (request_id) WHERE j.id = :junw;
SELECT igny8_submit_text('Writable [[sim ollama:reply=writable-answer]]', 'gpt-4') AS jw \gset
SELECT state, content FROM igny8_wait_job(:jw, '30 s');
-- outcomes written together (jobs submitted together, finishing in the
-- same turn of a worker's loop): the one refused ends failed, the others
-- are written
BEGIN;
SELECT min(id) AS jg_first, max(id) AS jg_last FROM (
  SELECT igny8_submit_text(format('Group %s [[sim ollama:reply=%s]]', i,
           CASE WHEN i = 6 THEN 'unwritable-answer' ELSE 'group-answer' END), 'gpt-4') AS id
    FROM generate_series(1, 12) AS i) s \gset
COMMIT;
SELECT count(*) FILTER (WHERE w.state = 'succeeded' AND w.content LIKE '%group-answer') AS succeeded,
       count(*) FILTER (WHERE w.state = 'failed' AND w.error_code = '53100') AS refused,
       sum(w.attempts) AS attempts
  FROM generate_series(:jg_first, :jg_last) AS g(id), igny8_wait_job(g.id, '30 s') AS w;
SELECT count(*) FILTER (WHERE u.success) AS usage_succeeded, count(*) AS usage_rows
  FROM ai_usage_log u JOIN igny8_jobs j USING (request_id) WHERE j.id BETWEEN :jg_first AND :jg_last;
DROP TRIGGER refuse_outcome ON igny8_jobs;
DROP FUNCTION refuse_outcome();
-- a write refused for a reason that passes (SQLSTATE class 40: a
-- deadlock, a serialization failure) is made again before the job is
-- failed: here the first write of the answer is refused as a deadlock
-- would be
CREATE SEQUENCE public.deadlock_once;
CREATE FUNCTION deadlock_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('public.deadlock_once') = 1 THEN
        RAISE EXCEPTION 'deadlock detected' USING ERRCODE = 'deadlock_detected';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER deadlock_once BEFORE UPDATE ON igny8_jobs FOR EACH ROW
    WHEN (NEW.state = 'succeeded' AND NEW.content LIKE '%deadlocked-answer')
    EXECUTE FUNCTION deadlock_once();
SELECT igny8_submit_text('Deadlocked [[sim ollama:reply=deadlocked-answer]]', 'gpt-4') AS jdl \gset
SELECT state, error_code, content, attempts FROM igny8_wait_job(:jdl, '30 s');
SELECT nextval('public.deadlock_once') - 1 AS writes_tried;
DROP TRIGGER deadlock_once ON igny8_jobs;
DROP FUNCTION deadlock_once();
DROP SEQUENCE public.deadlock_once;
SELECT state, attempts FROM igny8_jobs WHERE id = :junw;
-- an idempotency key is the role's, whatever the account: a submit with a
-- key the role used returns its job only for the same request (kind,
-- alias, account, prompt or messages, options; not priority, not_before or
-- max_attempts).  A different request is refused (23505), naming what
-- differs and nothing of the job's request, which may be another
-- account's when one role submits for many
SELECT igny8_submit_text('Tenant 7 secret', 'gpt-4', '{"account_id": 7, "idempotency_key": "t-1", "not_before": "2999-01-01"}') AS t7 \gset
SELECT igny8_submit_text('Tenant 7 secret', 'gpt-4', '{"account_id": 7, "idempotency_key": "t-1"}') = :t7 AS same_request_same_job,
       igny8_submit_text('Tenant 7 secret', 'gpt-4',
                         '{"account_id": 7, "idempotency_key": "t-1", "priority": "interactive", "max_attempts": 5}') = :t7 AS same_with_other_job_options;
SELECT show_error($$SELECT igny8_submit_text('Tenant 8 prompt', 'gpt-4', '{"account_id": 8, "idempotency_key": "t-1"}')$$);
SELECT show_error($$SELECT igny8_submit_text('Tenant 7 secret', 'gpt-4', '{"account_id": 8, "idempotency_key": "t-1"}')$$);
SELECT show_error($$SELECT igny8_submit_image('Tenant 8 prompt', 'dall-e-3', '1024x1024', '{"account_id": 8, "idempotency_key": "t-1"}')$$);
-- the account of the setting is compared as that of the option
BEGIN;
SET LOCAL igny8_ai.account_id = 8;
SELECT show_error($$SELECT igny8_submit_text('Tenant 7 secret', 'gpt-4', '{"idempotency_key": "t-1"}')$$);
COMMIT;
SELECT show_error($$SELECT igny8_submit_text('Tenant 7 secret', 'gpt-3.5-turbo', '{"account_id": 7, "idempotency_key": "t-1"}')$$);
SELECT show_error($$SELECT igny8_submit_text('Tenant 7 secret', 'gpt-4', '{"account_id": 7, "idempotency_key": "t-1", "temperature": 0.5}')$$);
SELECT show_error($$SELECT igny8_submit_text('Tenant 7 secret', 'gpt-4', '{"account_id": 7, "idempotency_key": "t-1", "timeout": 7}')$$);
-- a timeout not given is igny8_ai.default_timeout's: a retry under
-- another setting is the same request
BEGIN;
SET LOCAL igny8_ai.default_timeout = 123;
SELECT igny8_submit_text('Tenant 7 secret', 'gpt-4', '{"account_id": 7, "idempotency_key": "t-1"}') = :t7 AS same_under_another_default_timeout;
COMMIT;
SELECT show_error($$SELECT igny8_submit_chat('[{"role": "user", "content": "Tenant 7 secret"}]', 'gpt-4', '{"account_id": 7, "idempotency_key": "t-1"}')$$);
SELECT count(*) AS t1_jobs, bool_and(account_id = 7) AS account_7 FROM igny8_jobs WHERE idempotency_key = 't-1';
-- an image submitted without a seed gets a random one, which is not
-- compared; a seed given is
SELECT igny8_submit_image('Key image', 'dall-e-3', '1024x1024', '{"idempotency_key": "img-1", "not_before": "2999-01-01"}') AS i1 \gset
SELECT igny8_submit_image('Key image', 'dall-e-3', '1024x1024', '{"idempotency_key": "img-1"}') = :i1 AS same_image_job;
SELECT igny8_submit_image('Key image', 'dall-e-3', '1024x1024', format('{"idempotency_key": "img-1", "seed": %s}', seed)::jsonb) = :i1 AS same_seed_same_job
  FROM igny8_jobs WHERE id = :i1;
SELECT show_error(format($$SELECT igny8_submit_image('Key image', 'dall-e-3', '1024x1024', '{"idempotency_key": "img-1", "seed": %s}')$$,
                         CASE WHEN seed > 0 THEN seed - 1 ELSE 1 END))
  FROM igny8_jobs WHERE id = :i1;
SELECT show_error($$SELECT igny8_submit_image('Key image', 'dall-e-3', '512x512', '{"idempotency_key": "img-1"}')$$);
-- in a batch, each prompt's key is compared: one new prompt refuses the
-- batch, and nothing of it is queued
SELECT igny8_submit_batch(ARRAY['a', 'b'], 'gpt-4', '{"idempotency_key": "kb", "not_before": "2999-01-01"}') AS kb \gset
SELECT igny8_submit_batch(ARRAY['a', 'b'], 'gpt-4', '{"idempotency_key": "kb"}') = :'kb' AS same_batch;
SELECT show_error($$SELECT igny8_submit_batch(ARRAY['a', 'y', 'z'], 'gpt-4', '{"idempotency_key": "kb"}')$$);
SELECT count(*) AS kb_jobs FROM igny8_jobs WHERE idempotency_key LIKE 'kb:%';
DELETE FROM igny8_jobs WHERE state = 'queued';
-- two submits with one key at once: the second waits for the first's
-- transaction, then returns its job for the same request and refuses a
-- different one
SELECT dblink_connect('key1', 'dbname=' || current_database()) AS key1,
       dblink_connect('key2', 'dbname=' || current_database()) AS key2;
SELECT dblink_exec('key1', 'BEGIN');
SELECT id AS c1 FROM dblink('key1', $$SELECT igny8_submit_text('First', 'gpt-4', '{"idempotency_key": "conc-1", "not_before": "2999-01-01"}')$$) AS t(id bigint) \gset
SELECT dblink_send_query('key2', $$SELECT igny8_submit_text('First', 'gpt-4', '{"idempotency_key": "conc-1"}')$$);
SELECT wait_until($$EXISTS (SELECT FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                             AND query LIKE '%conc-1%' AND pid <> pg_backend_pid())$$, 'the second submit waiting');
SELECT dblink_exec('key1', 'COMMIT');
SELECT id = :c1 AS same_job FROM dblink_get_result('key2') AS t(id bigint);
SELECT count(*) AS done FROM dblink_get_result('key2') AS t(id bigint);
SELECT dblink_exec('key1', 'BEGIN');
SELECT id AS c2 FROM dblink('key1', $$SELECT igny8_submit_text('First', 'gpt-4', '{"idempotency_key": "conc-2", "not_before": "2999-01-01"}')$$) AS t(id bigint) \gset
SELECT dblink_send_query('key2', $$SELECT show_error($q$SELECT igny8_submit_text('Second', 'gpt-4', '{"idempotency_key": "conc-2"}')$q$)$$);
SELECT wait_until($$EXISTS (SELECT FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                             AND query LIKE '%conc-2%' AND pid <> pg_backend_pid())$$, 'the second submit waiting');
SELECT dblink_exec('key1', 'COMMIT');
SELECT e FROM dblink_get_result('key2') AS t(e text);
SELECT count(*) AS done FROM dblink_get_result('key2') AS t(e text);
SELECT dblink_disconnect('key1'), dblink_disconnect('key2');
SELECT count(*) AS conc_jobs FROM igny8_jobs WHERE idempotency_key IN ('conc-1', 'conc-2');
DELETE FROM igny8_jobs WHERE state = 'queued';
