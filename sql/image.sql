--
-- image: igny8_generate_image and igny8_generate_images through the
-- simulator's ComfyUI (submit, history polls, /view) and OpenAI images;
-- fallbacks, cancellation of ComfyUI prompts, limits, usage rows, input
-- checks and privileges
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- the size a PNG says it has (its IHDR), or why it is not one
CREATE FUNCTION png_size(b bytea) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN substring(b FROM 1 FOR 8) = '\x89504e470d0a1a0a'::bytea
                 AND substring(b FROM 13 FOR 4) = '\x49484452'::bytea
           THEN ((get_byte(b, 16)::bigint << 24) | (get_byte(b, 17) << 16)
                 | (get_byte(b, 18) << 8) | get_byte(b, 19))::text || 'x' ||
                ((get_byte(b, 20)::bigint << 24) | (get_byte(b, 21) << 16)
                 | (get_byte(b, 22) << 8) | get_byte(b, 23))::text
           ELSE 'not a PNG' END
$$;

-- every shipped image alias makes a PNG of the size asked for
SELECT a.alias, png_size(i.image), i.mime_type, i.width, i.height,
       i.provider, i.model, i.attempts, i.seed IS NOT NULL AS has_seed,
       i.revised_prompt IS NOT NULL AS revised
  FROM (VALUES ('dall-e-3', '1024x1024'), ('dall-e-2', '768x512'),
               ('sd3.5', '512x768'), ('dall-e-3-fallback', '1792x1024'),
               ('dall-e-2-fallback', '512x512')) AS a(alias, size),
       LATERAL igny8_generate_image('A lighthouse at dusk', a.alias, a.size) i
 ORDER BY a.alias;

-- OpenAI makes the nearest size its model supports, and says so
SELECT png_size(image), width, height, provider, model
  FROM igny8_generate_image('A wide beach', 'dall-e-3-fallback', '1600x896');

-- the seed given is the seed used, and ComfyUI got it
SELECT seed, png_size(image)
  FROM igny8_generate_image('Seeded [[sim comfyui:key=seeded]]', 'dall-e-2', '512x512',
                            '{"seed": 4242, "steps": 6, "cfg": 1.5, "negative_prompt": "blur"}');
SELECT line FROM sim('log --role comfyui --key seeded --path /prompt --field body') AS line
 WHERE line LIKE '%"seed": 4242%' AND line LIKE '%"steps": 6%' AND line LIKE '%blur%'
 LIMIT 1 \gset
SELECT :'line' <> '' AS comfyui_got_seed_steps_and_negative_prompt;

-- each image a request of its own: n = 4 are 4 different images, seeds
SELECT count(*) AS images, count(DISTINCT md5(image)) AS distinct_images,
       count(DISTINCT seed) AS distinct_seeds,
       bool_and(png_size(image) = '512x512') AS all_512,
       count(DISTINCT request_id) AS requests
  FROM igny8_generate_images('Four kittens', 'dall-e-2', '512x512', 4);
-- with a seed given, the images have seed, seed + 1, ...
SELECT array_agg(seed ORDER BY seed) AS seeds
  FROM igny8_generate_images('Two seeds', 'dall-e-2', '512x512', 2, '{"seed": 10}');

-- usage rows: one per attempt, task image, with the image's facts
SELECT task_type, model_alias, provider, model_used, success, images,
       image_width, image_height, steps
  FROM ai_usage_log ORDER BY id LIMIT 3;
SELECT count(*) FILTER (WHERE task_type = 'image') = count(*) AS all_image_rows,
       count(*) FILTER (WHERE success AND images = 1) = count(*) AS one_image_each
  FROM ai_usage_log;

-- FLUX's model file is missing: ComfyUI refuses the workflow
-- (value_not_in_list), and dall-e-3 moves on to SDXL-Lightning at once
TRUNCATE ai_usage_log;
SELECT count(*) AS config FROM sim($$config comfyui '{"remove_models": ["flux1-dev.safetensors"]}'$$);
SELECT png_size(image), provider, model, attempts
  FROM igny8_generate_image('No flux today', 'dall-e-3');
SELECT attempt, provider, model_used, http_status, success,
       error_message LIKE '%unet_name%flux1-dev.safetensors%' AS names_the_file
  FROM ai_usage_log ORDER BY id;
SELECT sim('reset');

-- an out-of-memory execution error is retried once on the same
-- deployment, then the next candidate is tried
TRUNCATE ai_usage_log;
SELECT png_size(image), provider, model, attempts
  FROM igny8_generate_image('OOM once [[sim comfyui:exec_error=oom times=1 key=oom1]]', 'dall-e-3');
SELECT attempt, provider, model_used, success,
       error_message LIKE '%OutOfMemoryError%' AS oom, error_message IS NULL AS no_error
  FROM ai_usage_log ORDER BY id;
TRUNCATE ai_usage_log;
SELECT png_size(image), provider, model, attempts
  FROM igny8_generate_image('OOM always [[sim comfyui:exec_error=oom]]', 'sd3.5');
SELECT attempt, provider, model_used, success,
       error_message LIKE '%OutOfMemoryError%' AS oom, error_message IS NULL AS no_error
  FROM ai_usage_log ORDER BY id;

-- ComfyUI down (connection refused): OpenAI images
TRUNCATE ai_usage_log;
UPDATE igny8_providers SET base_url = current_setting('igny8_test.dead_url')
 WHERE id = 'comfyui';
SELECT wait_for_config();
SELECT png_size(image), provider, model, revised_prompt IS NOT NULL AS revised
  FROM igny8_generate_image('ComfyUI is down', 'dall-e-3');
SELECT attempt, provider, model_used, success, error_message
  FROM ai_usage_log ORDER BY id;
UPDATE igny8_providers SET base_url = current_setting('igny8_test.comfyui_url')
 WHERE id = 'comfyui';
SELECT wait_for_config();

-- OpenAI refuses the prompt (content policy): the caller's error, no
-- other provider is tried
TRUNCATE ai_usage_log;
SELECT show_error($$SELECT igny8_generate_image('Refused [[sim openai:content_policy]]', 'dall-e-3-fallback')$$);
SELECT attempt, provider, http_status, success FROM ai_usage_log ORDER BY id;

-- an image over the deployment's max_image_bytes: a clear failure, the
-- next candidate, and the workers live on
TRUNCATE ai_usage_log;
SELECT array_agg(pid ORDER BY worker) AS pids FROM igny8_worker_status() \gset
UPDATE igny8_models SET settings = settings || '{"max_image_bytes": 100000}'
 WHERE alias IN ('dall-e-2', 'dall-e-2-fallback');
SELECT wait_for_config();
SELECT show_error($$SELECT igny8_generate_image('Huge [[sim any:image_bytes=300000]]', 'dall-e-2', '512x512')$$);
SELECT attempt, provider, model_used, success, error_message
  FROM ai_usage_log ORDER BY id;
SELECT array_agg(pid ORDER BY worker) = :'pids' AS same_workers FROM igny8_worker_status();
UPDATE igny8_models SET settings = settings - 'max_image_bytes'
 WHERE alias IN ('dall-e-2', 'dall-e-2-fallback');
SELECT wait_for_config();
SELECT png_size(image) AS after FROM igny8_generate_image('Small again', 'dall-e-2', '512x512');

-- igny8_ai.answer_memory caps what a worker holds for answers in flight:
-- an image larger than all of it fails its attempt (not retried: it could
-- not fit again), and the workers live on
TRUNCATE ai_usage_log;
ALTER SYSTEM SET igny8_ai.answer_memory = '1MB';
SELECT reload_settings();
SELECT show_error($$SELECT igny8_generate_image('Big [[sim any:image_bytes=2000000]]', 'dall-e-2', '512x512')$$);
SELECT attempt, provider, success, error_message FROM ai_usage_log ORDER BY id;
ALTER SYSTEM RESET igny8_ai.answer_memory;
SELECT reload_settings();
SELECT png_size(image) AS after, octet_length(image) AS bytes
  FROM igny8_generate_image('Big again [[sim any:image_bytes=2000000]]', 'dall-e-2', '512x512');
SELECT array_agg(pid ORDER BY worker) = :'pids' AS same_workers FROM igny8_worker_status();

-- a broken image (not a PNG, wrong size) is not returned
TRUNCATE ai_usage_log;
SELECT png_size(image), provider
  FROM igny8_generate_image('Broken [[sim comfyui:png=notpng]]', 'dall-e-2', '512x512');
SELECT png_size(image), provider
  FROM igny8_generate_image('Wrong size [[sim comfyui:png=wrongsize]]', 'dall-e-2', '512x512');
SELECT provider, success, error_message FROM ai_usage_log WHERE NOT success ORDER BY id;

-- cancelling: a prompt still waiting in ComfyUI's queue is deleted from
-- it (and, not running, not interrupted); a running one is interrupted by
-- its own prompt_id only, and another client's prompt still finishes
SELECT sim('reset');
SELECT dblink_connect('run', 'dbname=' || current_database());
SELECT dblink_connect('wait', 'dbname=' || current_database());
SELECT dblink_connect('other', 'dbname=' || current_database());
-- "run" occupies ComfyUI; "other" and "wait" queue behind it
SELECT dblink_send_query('run',
    $$SELECT png_size(image) FROM igny8_generate_image('Long [[sim comfyui:run_time=3600 key=run]]', 'dall-e-2', '512x512')$$);
SELECT wait_until($$(SELECT count(*) FROM sim('log --role comfyui --key run --path /prompt --count') l WHERE l::int >= 1)$$,
                  'the long prompt at ComfyUI');
SELECT dblink_send_query('other',
    $$SELECT png_size(image) FROM igny8_generate_image('Other client [[sim comfyui:key=other]]', 'sd3.5', '512x512')$$);
SELECT wait_until($$(SELECT count(*) FROM sim('log --role comfyui --key other --path /prompt --count') l WHERE l::int >= 1)$$,
                  'the other prompt at ComfyUI');
-- comfyui takes 2 requests at once: "wait" waits for a place in igny8_ai
SELECT pid AS wait_pid FROM dblink('wait', 'SELECT pg_backend_pid()') AS t(pid int) \gset
SELECT dblink_send_query('wait',
    $$SELECT png_size(image) FROM igny8_generate_image('Waiting [[sim comfyui:key=wait]]', 'dall-e-2', '512x512')$$);
SELECT wait_until($$(SELECT queued = 1 FROM igny8_service_status WHERE provider = 'comfyui')$$,
                  'the third request waiting for a place');
-- cancel the one queued inside ComfyUI ("other")
SELECT pid AS other_pid FROM pg_stat_activity
 WHERE query LIKE '%Other client%' AND pid <> pg_backend_pid() AND backend_type = 'client backend' \gset
SELECT pg_cancel_backend(:other_pid);
SELECT count(*) AS rows FROM dblink_get_result('other', false) AS r(a text);
SELECT dblink_error_message('other') LIKE '%canceling statement%' AS other_cancelled;
SELECT wait_until($$(SELECT count(*) FROM sim('log --role comfyui --path /queue --count') l WHERE l::int >= 1)$$,
                  'the queue delete');
SELECT (SELECT l FROM sim('log --role comfyui --key other --path /prompt --field prompt_id') l LIMIT 1) AS other_id \gset
SELECT count(*) AS deletes_of_other FROM sim('log --role comfyui --path /queue --field body') l
 WHERE l LIKE '%' || :'other_id' || '%';
-- cancel the running one: interrupted by its prompt_id, never globally
-- (the only interrupt sent)
SELECT pid AS run_pid FROM pg_stat_activity
 WHERE query LIKE '%Long [[sim%' AND pid <> pg_backend_pid() AND backend_type = 'client backend' \gset
SELECT pg_cancel_backend(:run_pid);
SELECT count(*) AS rows FROM dblink_get_result('run', false) AS r(a text);
SELECT dblink_error_message('run') LIKE '%canceling statement%' AS run_cancelled;
-- "wait" now runs, and finishes
SELECT dblink_answer('wait') AS waiting_one_finished;
SELECT l AS interrupt_kinds FROM sim('log --role comfyui --path /interrupt --field interrupt') l;
SELECT (SELECT l FROM sim('log --role comfyui --key run --path /prompt --field prompt_id') l LIMIT 1) AS run_id \gset
SELECT count(*) AS interrupts_of_run FROM sim('log --role comfyui --path /interrupt --field prompt_id') l
 WHERE l = :'run_id';
-- once ComfyUI has written the interrupted prompt's history entry, the
-- entry is deleted: the prompt's text does not stay on the box
SELECT wait_until(format($$(SELECT count(*) = 1 FROM sim('log --role comfyui --path /history --field forgotten') l
                            WHERE l LIKE '%%' || %L || '%%')$$, :'run_id'),
                  'the history entry of the interrupted prompt deleted');
SELECT dblink_disconnect(c) FROM unnest(ARRAY['run', 'wait', 'other']) c;

-- statement_timeout ends the call, and its prompt is cleaned up too
SELECT sim('reset');
SET statement_timeout = '1s';
SELECT igny8_generate_image('Timeout [[sim comfyui:run_time=3600 key=st]]', 'dall-e-2', '512x512');
RESET statement_timeout;
SELECT wait_until($$(SELECT count(*) FROM sim('log --role comfyui --path /interrupt --count') l WHERE l::int >= 1)$$,
                  'the interrupt after statement_timeout');
SELECT l AS interrupt_kinds FROM sim('log --role comfyui --path /interrupt --field interrupt') l;
SELECT wait_until($$(SELECT in_flight = 0 FROM igny8_service_status WHERE provider = 'comfyui')$$,
                  'the place given back');

-- a call that ends while ComfyUI is still taking its POST /prompt: ComfyUI
-- queues a prompt it has read even when its client has left, so the worker
-- waits for the answer, then cleans the prompt up: whether the delete finds
-- it waiting or the interrupt finds it running, it ends neither queued nor
-- running, and without a history entry
CREATE TEMP TABLE comfy_out (line text);
CREATE FUNCTION comfy_get(path text) RETURNS text
LANGUAGE plpgsql AS $f$
BEGIN
    TRUNCATE comfy_out;
    EXECUTE format('COPY comfy_out FROM PROGRAM %L WITH (FORMAT csv, QUOTE %L, DELIMITER %L)',
                   'curl -sS ' || current_setting('igny8_test.comfyui_url') || path,
                   E'\x01', E'\x02');
    RETURN (SELECT string_agg(line, E'\n') FROM comfy_out);
END
$f$;
-- once ComfyUI has answered the POST /prompt tagged key (after its call
-- ended), is its prompt gone: neither queued, nor running, nor in the
-- history?
CREATE FUNCTION gone_after_answer(key text) RETURNS boolean
LANGUAGE plpgsql AS $f$
DECLARE
    id text;
BEGIN
    PERFORM wait_until(format($q$(SELECT count(*) FROM sim('log --role comfyui --key %s --path /prompt --field t_reply') l
                                   WHERE l LIKE '%%.%%') = 1$q$, key),
                       'the answer to the POST of ' || key);
    SELECT l INTO id FROM sim('log --role comfyui --key ' || key || ' --path /prompt --field prompt_id') l LIMIT 1;
    RETURN wait_until(format($q$position(%L in comfy_get('/queue')) = 0 AND comfy_get('/history/' || %L) = '{}'$q$,
                             id, id),
                      'the prompt of ' || key || ' gone from ComfyUI');
END
$f$;
-- (the call runs in a connection of its own, cancelled once its POST is
-- at the simulator)
CREATE FUNCTION cancelled_at_arrival(query text, tag text) RETURNS boolean
LANGUAGE plpgsql AS $f$
DECLARE
    caller int;
    cancelled boolean;
BEGIN
    PERFORM dblink_connect(tag, 'dbname=' || current_database());
    SELECT pid INTO caller FROM dblink(tag, 'SELECT pg_backend_pid()') AS t(pid int);
    PERFORM dblink_send_query(tag, query);
    PERFORM sim_wait_arrival(tag);
    PERFORM pg_cancel_backend(caller);
    PERFORM count(*) FROM dblink_get_result(tag, false) AS r(a text);
    cancelled := dblink_error_message(tag) LIKE '%canceling statement%';
    PERFORM dblink_disconnect(tag);
    RETURN cancelled;
END
$f$;
SELECT sim('reset');
SELECT cancelled_at_arrival($$SELECT png_size(image) FROM igny8_generate_image('Slow submit [[sim comfyui:delay=2 run_time=3600 key=ss tag=ss]]', 'dall-e-2', '512x512')$$,
                            'ss') AS ss_cancelled;
SELECT gone_after_answer('ss') AS ss_gone;
-- the worker did not close the connection
SELECT count(*) AS disconnects FROM sim('log --role comfyui --key ss --path /prompt --field disconnect') l
 WHERE l = 'true';

-- a POST /prompt with no answer within the deployment's timeout: curl
-- gives up, and ComfyUI queues the prompt afterwards.  Not knowing, the
-- cleanup deletes and interrupts again at every round, and looks for all
-- its rounds: the prompt is gone from ComfyUI in the end
SELECT sim('reset');
INSERT INTO igny8_models (alias, provider_id, provider_model, task, workflow, timeout)
VALUES ('img-late', 'comfyui', 'sdxl-lightning-4step', 'image', 'sdxl-lightning-4step', '1 s');
SELECT wait_for_config();
SELECT split_part(show_error($$SELECT igny8_generate_image('Late [[sim comfyui:delay=2 run_time=3600 key=late]]', 'img-late', '512x512')$$), ':', 1) AS error;
SELECT gone_after_answer('late') AS late_gone;
SELECT count(*) AS disconnects FROM sim('log --role comfyui --key late --path /prompt --field disconnect') l
 WHERE l = 'true';
-- the same when the call is cancelled first: the POST the worker kept
-- going for its cleanup times out in its turn, and that cleanup is unsure
SELECT sim('reset');
SELECT cancelled_at_arrival($$SELECT png_size(image) FROM igny8_generate_image('Late cancelled [[sim comfyui:delay=2 run_time=3600 key=late2 tag=late2]]', 'img-late', '512x512')$$,
                            'late2') AS late2_cancelled;
SELECT gone_after_answer('late2') AS late2_gone;
DELETE FROM igny8_models WHERE alias = 'img-late';
SELECT wait_for_config();
DROP FUNCTION gone_after_answer(text);
DROP FUNCTION comfy_get(text);
DROP FUNCTION cancelled_at_arrival(text, text);
DROP TABLE comfy_out;

-- a poll answered 503 says nothing of the prompt, which may still run: it
-- is interrupted by its prompt_id, not left to hold the GPU while the
-- retry's prompt waits behind it
SELECT sim('reset');
SELECT png_size(image) AS size
  FROM igny8_generate_image('Poll fails [[sim comfyui:run_time=2 tag=pf]] [[sim comfyui:on=history status=503 times=1 key=pf1]]',
                            'dall-e-2', '512x512');
SELECT line AS prompts FROM sim('log --role comfyui --tag pf --path /prompt --count') line;
SELECT (SELECT l FROM sim('log --role comfyui --tag pf --path /prompt --field prompt_id') l LIMIT 1) AS pf_first \gset
SELECT wait_until(format($$(SELECT count(*) = 1 FROM sim('log --role comfyui --path /interrupt --field prompt_id') l
                            WHERE l = %L)$$, :'pf_first'),
                  'the interrupt of the first prompt');

-- a 502 to the submission (a proxy in front of ComfyUI) may come after
-- ComfyUI queued the prompt under the id igny8_ai gave it: that id is
-- deleted from the queue too (the retry submits a prompt of its own)
SELECT sim('reset');
SELECT png_size(image) AS size
  FROM igny8_generate_image('Submit fails [[sim comfyui:tag=ps]] [[sim comfyui:status=502 times=1 key=ps1]]',
                            'dall-e-2', '512x512');
SELECT (SELECT l FROM sim('log --role comfyui --tag ps --path /prompt --field prompt_id') l LIMIT 1) AS ps_first \gset
SELECT wait_until(format($$(SELECT count(*) >= 1 FROM sim('log --role comfyui --path /queue --field body') l
                            WHERE l LIKE '%%' || %L || '%%')$$, :'ps_first'),
                  'the queue delete of the first prompt');
-- a 5xx is no answer from ComfyUI: that cleanup deletes and interrupts at
-- every round, for all its rounds (about 20 s), then deletes the history
-- entry, if any
SELECT wait_until(format($$(SELECT count(*) = 1 FROM sim('log --role comfyui --path /history --field body') l
                            WHERE l LIKE '%%delete%%' || %L || '%%')$$, :'ps_first'),
                  'the end of the first prompt''s cleanup', 60);
SELECT count(*) AS deletes_of_first FROM sim('log --role comfyui --path /queue --field body') l
 WHERE l LIKE '%' || :'ps_first' || '%';

-- a worker told to stop interrupts the ComfyUI prompt it was waiting for
SELECT sim('reset');
SELECT dblink_connect('stop', 'dbname=' || current_database());
SELECT dblink_send_query('stop',
    $$SELECT png_size(image) FROM igny8_generate_image('Stopping [[sim comfyui:run_time=3600 key=stop]]', 'dall-e-2', '512x512')$$);
SELECT wait_until($$(SELECT count(*) FROM sim('log --role comfyui --key stop --path /prompt --count') l WHERE l::int >= 1)$$,
                  'the prompt at ComfyUI');
SELECT count(pg_terminate_backend(pid)) AS terminated
  FROM igny8_worker_status() WHERE pid IS NOT NULL;
SET client_min_messages = warning;	-- dblink relays the error as a notice
SELECT count(*) AS rows FROM dblink_get_result('stop', false) AS r(a text);
RESET client_min_messages;
SELECT dblink_error_message('stop') LIKE '%was interrupted%' AS interrupted;
SELECT wait_until($$(SELECT count(*) FROM sim('log --role comfyui --path /interrupt --count') l WHERE l::int >= 1)$$,
                  'the interrupt from the stopping worker');
SELECT l AS interrupt_kinds FROM sim('log --role comfyui --path /interrupt --field interrupt') l;
SELECT dblink_disconnect('stop');
SELECT wait_for_workers() AS workers;

-- a prompt that does not finish within its deployment's timeout counts
-- against ComfyUI's health, as a request that times out does: a stuck
-- queue answers every poll with "{}", and three such prompts are three
-- failures in a row (the tests' circuit threshold is 1000, so its circuit
-- stays closed); a probe's success does not make it healthy again (the
-- probe does not run a prompt), a prompt that finishes does
SELECT sim('reset');
TRUNCATE ai_usage_log;
INSERT INTO igny8_models (alias, provider_id, provider_model, task, workflow, timeout)
VALUES ('img-stuck', 'comfyui', 'sdxl-lightning-4step', 'image', 'sdxl-lightning-4step', '1 s');
SELECT wait_for_config();
SELECT i, split_part(show_error(format($$SELECT igny8_generate_image('Stuck %s [[sim comfyui:run_time=3600]]', 'img-stuck', '512x512')$$, i)), ':', 1) AS error
  FROM generate_series(1, 3) i;
SELECT provider, success, error_message LIKE '%timed out%' AS timed_out
  FROM ai_usage_log ORDER BY id;
-- (each was interrupted, and its history entry deleted once written)
SELECT wait_until($$(SELECT count(*) = 3 FROM sim('log --role comfyui --path /history --field forgotten') l
                     WHERE l LIKE '%-%')$$,
                  'the three history entries deleted');
SELECT state, circuit_open, consecutive_failures FROM igny8_service_status
 WHERE provider = 'comfyui';
SELECT healthy, state FROM igny8_check_health() WHERE provider = 'comfyui';
SELECT png_size(image), provider FROM igny8_generate_image('Unstuck', 'dall-e-2', '512x512');
SELECT state, circuit_open, consecutive_failures FROM igny8_service_status
 WHERE provider = 'comfyui';
DELETE FROM igny8_models WHERE alias = 'img-stuck';
SELECT wait_for_config();

-- helpers: the simulator's ComfyUI requests, oldest first; a call to its
-- ComfyUI as another client would make it; the prompt_id ComfyUI gave
-- the POST /prompt tagged key, once answered; the prompt running there
CREATE FUNCTION comfy_log() RETURNS SETOF jsonb
LANGUAGE sql AS $f$
    SELECT jsonb_array_elements(l::jsonb) FROM sim('log --copy --role comfyui') l
$f$;
CREATE TEMP TABLE comfy_out (line text);
CREATE FUNCTION comfy_call(path text, body text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $f$
BEGIN
    TRUNCATE comfy_out;
    EXECUTE format('COPY comfy_out FROM PROGRAM %L WITH (FORMAT csv, QUOTE %L, DELIMITER %L)',
                   'curl -sS ' || coalesce('-d ' || quote_literal(body) || ' ', '') ||
                   current_setting('igny8_test.comfyui_url') || path,
                   E'\x01', E'\x02');
    RETURN (SELECT string_agg(line, E'\n') FROM comfy_out);
END
$f$;
CREATE FUNCTION comfy_prompt_id(key text) RETURNS text
LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM wait_until(format($q$(SELECT count(*) FROM sim('log --role comfyui --key %s --path /prompt --field t_reply') l
                                   WHERE l LIKE '%%.%%') >= 1$q$, key),
                       'the answer to the POST of ' || key);
    RETURN (SELECT l FROM sim('log --role comfyui --key ' || key || ' --path /prompt --field prompt_id') l LIMIT 1);
END
$f$;
CREATE FUNCTION comfy_running() RETURNS text
LANGUAGE sql AS $f$
    SELECT comfy_call('/queue')::jsonb #>> '{queue_running,0,1}'
$f$;

-- a ComfyUI from before the targeted interrupt (the simulator's
-- old_server) names every prompt itself, and any POST /interrupt stops
-- whatever runs there, whatever prompt_id it names.  A call cancelled
-- while its prompt waits behind another call's has it deleted from the
-- queue, then sees in GET /queue that it does not run: nothing is
-- interrupted, and the other call's prompt runs on
SELECT sim('reset');
SELECT l::jsonb -> 'old_server' AS old_server
  FROM sim($$config comfyui '{"old_server": true}'$$) l;
SELECT dblink_connect('old_a', 'dbname=' || current_database());
SELECT dblink_connect('old_b', 'dbname=' || current_database());
SELECT dblink_send_query('old_a',
    $$SELECT provider FROM igny8_generate_image('Old A [[sim comfyui:run_time=3600 key=olda]]', 'dall-e-2', '512x512')$$);
SELECT comfy_prompt_id('olda') AS old_a \gset
SELECT wait_until(format('comfy_running() = %L', :'old_a'), 'the prompt of A running');
SELECT pid AS old_b_pid FROM dblink('old_b', 'SELECT pg_backend_pid()') AS t(pid int) \gset
SELECT dblink_send_query('old_b',
    $$SELECT provider FROM igny8_generate_image('Old B [[sim comfyui:key=oldb]]', 'dall-e-2', '512x512')$$);
SELECT comfy_prompt_id('oldb') AS old_b \gset
SELECT comfy_running() = :'old_a' AS a_runs;
SELECT pg_cancel_backend(:old_b_pid);
SELECT count(*) AS rows FROM dblink_get_result('old_b', false) AS r(a text);
SELECT dblink_error_message('old_b') LIKE '%canceling statement%' AS b_cancelled;
-- B's cleanup reads its history last, after the queue delete (an
-- interrupt, if any, comes before that read)
SELECT wait_until(format($$(SELECT count(*) FROM comfy_log() r
                             WHERE r->>'method' = 'GET' AND r->>'prompt_id' = %L
                               AND (r->>'seq')::int > (SELECT max((d->>'seq')::int) FROM comfy_log() d
                                                        WHERE d->>'path' = '/queue' AND d->'body'->'delete' ? %L)) >= 1$$,
                         :'old_b', :'old_b'),
                  'the end of the cleanup of B');
SELECT count(*) AS interrupts FROM comfy_log() r WHERE r->>'path' = '/interrupt';
SELECT comfy_running() = :'old_a' AS a_still_runs;
-- cancelled in its turn, A is seen running and interrupted (on this
-- server, globally: A is what runs)
SELECT pid AS old_a_pid FROM pg_stat_activity
 WHERE query LIKE '%Old A [[sim%' AND pid <> pg_backend_pid() AND backend_type = 'client backend' \gset
SELECT pg_cancel_backend(:old_a_pid);
SELECT count(*) AS rows FROM dblink_get_result('old_a', false) AS r(a text);
SELECT dblink_error_message('old_a') LIKE '%canceling statement%' AS a_cancelled;
SELECT wait_until(format($$(SELECT count(*) = 1 FROM comfy_log() r WHERE r->'forgotten' ? %L)$$, :'old_a'),
                  'the history entry of A deleted');
SELECT r->>'prompt_id' = :'old_a' AS names_a, r->>'interrupt' AS kind, r->>'interrupted' AS hit
  FROM comfy_log() r WHERE r->>'path' = '/interrupt';
SELECT dblink_disconnect(c) FROM unnest(ARRAY['old_a', 'old_b']) c;

-- a call cancelled while it downloads its image: its prompt has finished,
-- so only its history entry is deleted.  Nothing is deleted from the
-- queue and nothing interrupted: on this server that would stop the
-- prompt that runs next, another call's
SELECT sim('reset');
SELECT l::jsonb -> 'old_server' AS old_server
  FROM sim($$config comfyui '{"old_server": true}'$$) l;
SELECT dblink_connect('old_v', 'dbname=' || current_database());
SELECT dblink_connect('old_n', 'dbname=' || current_database());
SELECT pid AS old_v_pid FROM dblink('old_v', 'SELECT pg_backend_pid()') AS t(pid int) \gset
SELECT dblink_send_query('old_v',
    $$SELECT provider FROM igny8_generate_image('Old V [[sim comfyui:on=view delay=60 tag=oldv]]', 'dall-e-2', '512x512')$$);
SELECT wait_until($$(SELECT count(*) FROM sim('log --role comfyui --tag oldv --path /view --count') l WHERE l::int >= 1)$$,
                  'the download of V');
SELECT (SELECT l FROM sim('log --role comfyui --tag oldv --path /prompt --field prompt_id') l LIMIT 1) AS old_v \gset
SELECT dblink_send_query('old_n',
    $$SELECT provider FROM igny8_generate_image('Old N [[sim comfyui:run_time=3600 key=oldn]]', 'dall-e-2', '512x512')$$);
SELECT comfy_prompt_id('oldn') AS old_n \gset
SELECT wait_until(format('comfy_running() = %L', :'old_n'), 'the prompt of N running');
SELECT pg_cancel_backend(:old_v_pid);
SELECT count(*) AS rows FROM dblink_get_result('old_v', false) AS r(a text);
SELECT dblink_error_message('old_v') LIKE '%canceling statement%' AS v_cancelled;
SELECT wait_until(format($$(SELECT count(*) = 1 FROM comfy_log() r WHERE r->'forgotten' ? %L)$$, :'old_v'),
                  'the history entry of V deleted');
SELECT count(*) FILTER (WHERE r->>'path' = '/interrupt') AS interrupts,
       count(*) FILTER (WHERE r->>'path' = '/queue' AND r->>'method' = 'POST') AS queue_deletes
  FROM comfy_log() r;
SELECT comfy_running() = :'old_n' AS n_still_runs;
SELECT pid AS old_n_pid FROM pg_stat_activity
 WHERE query LIKE '%Old N [[sim%' AND pid <> pg_backend_pid() AND backend_type = 'client backend' \gset
SELECT pg_cancel_backend(:old_n_pid);
SELECT count(*) AS rows FROM dblink_get_result('old_n', false) AS r(a text);
SELECT wait_until(format($$(SELECT count(*) = 1 FROM comfy_log() r WHERE r->'forgotten' ? %L)$$, :'old_n'),
                  'the history entry of N deleted');
SELECT dblink_disconnect(c) FROM unnest(ARRAY['old_v', 'old_n']) c;

-- a prompt ComfyUI drops (another client's "Clear Queue", a restart) never
-- gets a history entry: every tenth poll answered "{}" is a GET /queue
-- instead, and a prompt neither waiting nor running there, and still
-- without an entry, ends its attempt at once.  It is retried (once), and
-- ComfyUI's health does not suffer: it answered every request
SELECT sim('reset');
TRUNCATE ai_usage_log;
INSERT INTO igny8_models (alias, provider_id, provider_model, task, workflow, timeout)
VALUES ('img-drop', 'comfyui', 'sdxl-lightning-4step', 'image', 'sdxl-lightning-4step', '30 s');
SELECT wait_for_config();
SELECT dblink_connect('drop_l', 'dbname=' || current_database());
SELECT dblink_connect('drop_v', 'dbname=' || current_database());
SELECT dblink_send_query('drop_l',
    $$SELECT provider FROM igny8_generate_image('Drop L [[sim comfyui:run_time=3600 key=dropl]]', 'dall-e-2', '512x512')$$);
SELECT comfy_prompt_id('dropl') AS drop_l \gset
SELECT wait_until(format('comfy_running() = %L', :'drop_l'), 'the long prompt running');
SELECT dblink_send_query('drop_v',
    $$SELECT provider || ' ' || attempts FROM igny8_generate_image('Drop V [[sim comfyui:key=dropv]]', 'img-drop', '512x512')$$);
SELECT comfy_prompt_id('dropv') AS drop_v \gset
SELECT comfy_call('/queue', '{"clear": true}') AS cleared;
SELECT position(:'drop_v' IN comfy_call('/queue')) = 0 AS v_gone;
-- the retry submits the prompt again; it waits behind the long one,
-- which is then cancelled
SELECT wait_until($$(SELECT count(*) FROM sim('log --role comfyui --key dropv --path /prompt --count') l WHERE l::int >= 2)$$,
                  'the retry of V', 60);
SELECT pid AS drop_l_pid FROM pg_stat_activity
 WHERE query LIKE '%Drop L [[sim%' AND pid <> pg_backend_pid() AND backend_type = 'client backend' \gset
SELECT pg_cancel_backend(:drop_l_pid);
SELECT count(*) AS rows FROM dblink_get_result('drop_l', false) AS r(a text);
SELECT dblink_answer('drop_v') AS v_answer;
SELECT attempt, provider, success, http_status,
       replace(error_message, :'drop_v', '<id>') AS error_message
  FROM ai_usage_log WHERE model_alias = 'img-drop' ORDER BY id;
SELECT state, consecutive_failures FROM igny8_service_status WHERE provider = 'comfyui';
SELECT wait_until(format($$(SELECT count(*) = 1 FROM comfy_log() r WHERE r->'forgotten' ? %L)$$, :'drop_l'),
                  'the history entry of the long prompt deleted');
SELECT dblink_disconnect(c) FROM unnest(ARRAY['drop_l', 'drop_v']) c;
DELETE FROM igny8_models WHERE alias = 'img-drop';
SELECT wait_for_config();
DROP FUNCTION comfy_running();
DROP FUNCTION comfy_prompt_id(text);
DROP FUNCTION comfy_call(text, text);
DROP FUNCTION comfy_log();
DROP TABLE comfy_out;

-- bad input: a clear error, nothing sent, nothing logged
TRUNCATE ai_usage_log;
SELECT sim('reset');
SELECT show_error($$SELECT igny8_generate_image(NULL)$$);
SELECT show_error($$SELECT igny8_generate_image('  ')$$);
SELECT show_error($$SELECT igny8_generate_image(U&'\3000\00A0\2003')$$);
SELECT show_error($$SELECT igny8_generate_image('x', NULL)$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', NULL)$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '1024')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '0x0')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '99999x99999')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '1000x1001')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '1024x1024', '{"steps": 0}')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '1024x1024', '{"steps": 151}')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '1024x1024', '{"cfg": -1}')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '1024x1024', '{"cfg": 1e400}')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '1024x1024', '{"cfg": 1e-400}')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '1024x1024', '{"seed": -1}')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '1024x1024', '{"quality": "ultra"}')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '1024x1024', '{"colour": "red"}')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'dall-e-3', '1024x1024', '[1]')$$);
SELECT show_error($$SELECT * FROM igny8_generate_images('x', 'dall-e-3', '1024x1024', 0)$$);
SELECT show_error($$SELECT * FROM igny8_generate_images('x', 'dall-e-3', '1024x1024', 9)$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'no-such-alias')$$);
SELECT show_error($$SELECT igny8_generate_image('x', 'gpt-4')$$);
SELECT count(*) AS usage_rows FROM ai_usage_log;
SELECT count(*) AS requests_at_the_simulator FROM sim('log --count') l WHERE l::int > 0;

-- igny8_generate_images takes its n request slots all at once or not at
-- all: with 2 free, n = 3 is refused before anything is sent.  Another
-- session holds all the other slots with a batch that waits (the alias's
-- provider takes 8 at once; the rest wait for a place, for up to an hour)
INSERT INTO igny8_models (alias, provider_id, provider_model, queue_timeout)
VALUES ('hold-alias', 'self_hosted_ai', 'qwen3:8b', '1 hour');
SELECT wait_for_config();
SELECT dblink_connect('hold', 'dbname=' || current_database());
SELECT dblink_send_query('hold', format(
    $q$SELECT count(*) FROM igny8_generate_text_batch(
          array(SELECT 'Hold [[sim ollama:delay=3600 tag=hold]]' FROM generate_series(1, %s)),
          'hold-alias', '{"timeout": 3600}')$q$,
    current_setting('igny8_ai.max_in_flight')::int - 2));
SELECT wait_until($$(SELECT slots FROM igny8_slot_status() WHERE state = 'free') = 2$$,
                  'all request slots but two to be taken');
SELECT show_error($$SELECT * FROM igny8_generate_images('Three [[sim any:tag=three]]', 'dall-e-2', '512x512', 3)$$);
SELECT dblink_cancel_query('hold');
\set VERBOSITY terse
SELECT * FROM dblink_get_result('hold') AS r(answered bigint);
\set VERBOSITY default
SELECT dblink_disconnect('hold');
SELECT wait_until($$(SELECT slots FROM igny8_slot_status() WHERE state = 'free')
                     = current_setting('igny8_ai.max_in_flight')::int$$,
                  'every request slot to be free');
SELECT count(*) AS image_usage_rows FROM ai_usage_log WHERE task_type = 'image';
SELECT sim('log --tag three --count') AS three_at_the_simulator;
DELETE FROM igny8_models WHERE alias = 'hold-alias';

-- privileges: not for PUBLIC; igny8_grant_usage grants both
CREATE ROLE igny8_image_user;
SELECT has_function_privilege('igny8_image_user', 'igny8_generate_image(text, text, text, jsonb)', 'EXECUTE') AS before_image,
       has_function_privilege('igny8_image_user', 'igny8_generate_images(text, text, text, integer, jsonb)', 'EXECUTE') AS before_images;
SELECT igny8_grant_usage('igny8_image_user');
SELECT has_function_privilege('igny8_image_user', 'igny8_generate_image(text, text, text, jsonb)', 'EXECUTE') AS after_image,
       has_function_privilege('igny8_image_user', 'igny8_generate_images(text, text, text, integer, jsonb)', 'EXECUTE') AS after_images;
SET ROLE igny8_image_user;
SELECT png_size(image) AS as_granted_role FROM igny8_generate_image('Granted', 'dall-e-2', '512x512');
RESET ROLE;
DROP OWNED BY igny8_image_user;
DROP ROLE igny8_image_user;
DROP FUNCTION png_size(bytea);
