--
-- costs: fixed costs (the GPU rent), a self-hosted attempt's share of it,
-- reference_cost, and the cost reports
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- the shipped rent (the prelude set it to 0 for the other tests) and the
-- OpenAI model each alias stands for
SELECT box, providers, description, valid_from, valid_to
  FROM igny8_fixed_costs ORDER BY box, valid_from;
SELECT alias, provider, model, origin FROM igny8_reference_models ORDER BY alias;

--
-- reference_cost: the same tokens at the alias's reference model
--

-- served by Ollama for gpt-4: the tokens at gpt-4's prices (30 and 60 USD
-- per 1M input and output tokens); cost 0 (no rent in this part)
SELECT provider, model, input_tokens, output_tokens, cost
  FROM igny8_chat('[{"role": "user", "content": "Reference one two three"}]', 'gpt-4');
SELECT provider, model_alias, input_tokens, output_tokens, cost, reference_cost,
       reference_cost = round(input_tokens * 30 / 1e6 + output_tokens * 60 / 1e6, 6) AS by_hand
  FROM ai_usage_log ORDER BY id;
-- gpt-3.5-turbo-fast stands for gpt-3.5-turbo (0.50 and 1.50)
SELECT provider, input_tokens, output_tokens
  FROM igny8_chat('[{"role": "user", "content": "Fast one two three"}]', 'gpt-3.5-turbo-fast');
SELECT model_alias, input_tokens, output_tokens, reference_cost,
       reference_cost = round(input_tokens * 0.5 / 1e6 + output_tokens * 1.5 / 1e6, 6) AS by_hand
  FROM ai_usage_log WHERE model_alias = 'gpt-3.5-turbo-fast';
-- an alias without a reference model: NULL
SELECT provider FROM igny8_chat('[{"role": "user", "content": "No reference"}]', 'gpt-4-fallback');
SELECT model_alias, provider, cost, reference_cost IS NULL AS no_reference
  FROM ai_usage_log WHERE model_alias = 'gpt-4-fallback';
-- a failed attempt has no tokens: its reference cost is 0
SELECT provider FROM igny8_chat('[{"role": "user", "content": "Fail [[sim ollama:status=404]] one two three"}]', 'gpt-4');
SELECT provider, success, input_tokens, output_tokens, cost, reference_cost
  FROM ai_usage_log WHERE request_id = (SELECT request_id FROM ai_usage_log ORDER BY id DESC LIMIT 1)
 ORDER BY id;

-- cached tokens are priced as price.c prices them, at the reference
-- model's prices: OpenAI serves 4 of the 4 prompt tokens from its cache;
-- with a cached price of 15 for gpt-4: 4 * 15 / 1e6 + 9 * 60 / 1e6 = 0.000600
INSERT INTO igny8_prices (provider, model, unit, price)
VALUES ('openai', 'gpt-4', 'per_1m_cached_input_tokens', 15);
SELECT wait_for_config();
SELECT provider, input_tokens, output_tokens, cost
  FROM igny8_chat('[{"role": "user", "content": "Cached [[sim ollama:status=404]] [[sim openai:cached=4]] one two three"}]', 'gpt-4');
SELECT provider, cost, reference_cost FROM ai_usage_log
 WHERE provider = 'openai' ORDER BY id DESC LIMIT 1;
-- Anthropic answers for gpt-3.5-turbo: 6 prompt tokens, 4 read from its
-- cache, 2 written to it, 9 output tokens.  At gpt-3.5-turbo, with a
-- cached price of 0.25 and no cache-write price (the input price, 0.50):
-- 4 * 0.25 / 1e6 + 2 * 0.50 / 1e6 + 9 * 1.50 / 1e6 = 0.0000155 -> 0.000016
INSERT INTO igny8_prices (provider, model, unit, price)
VALUES ('openai', 'gpt-3.5-turbo', 'per_1m_cached_input_tokens', 0.25);
SELECT wait_for_config();
SELECT provider, input_tokens, output_tokens, cost
  FROM igny8_chat('[{"role": "user", "content": "Anthropic [[sim ollama:status=404]] [[sim openai:status=403]] [[sim anthropic:cache_read=4 cache_creation=2]] one two three four five"}]',
                  'gpt-3.5-turbo');
SELECT provider, cost, reference_cost FROM ai_usage_log
 WHERE provider = 'anthropic' ORDER BY id DESC LIMIT 1;
DELETE FROM igny8_prices WHERE unit = 'per_1m_cached_input_tokens'
   AND model IN ('gpt-4', 'gpt-3.5-turbo');

-- a price change in the middle: from now on gpt-4 input tokens cost 100
-- per 1M at OpenAI.  An attempt in flight when the change commits (and the
-- workers load it) started before it: it keeps the price valid then (30);
-- a new one pays 100.
SELECT dblink_connect('a', 'dbname=' || current_database());
SELECT dblink_send_query('a',
    $$SELECT igny8_generate_text('In flight [[sim ollama:delay=5 tag=in_flight]] one two three', 'gpt-4')$$);
SELECT sim_wait_arrival('in_flight');
SELECT count(*) AS rows_before FROM ai_usage_log \gset
UPDATE igny8_prices SET valid_to = now()
 WHERE provider = 'openai' AND model = 'gpt-4' AND unit = 'per_1m_input_tokens';
INSERT INTO igny8_prices (provider, model, unit, price, valid_from)
VALUES ('openai', 'gpt-4', 'per_1m_input_tokens', 100, now());
SELECT wait_for_config();
-- the new prices are loaded while the attempt is still in flight
SELECT count(*) = :rows_before AS still_in_flight FROM ai_usage_log;
SELECT answer IS NOT NULL AS answered FROM dblink_get_result('a') AS t(answer text);
SELECT * FROM dblink_get_result('a') AS t(answer text);
SELECT dblink_disconnect('a');
SELECT input_tokens, output_tokens, reference_cost,
       reference_cost = round(input_tokens * 30 / 1e6 + output_tokens * 60 / 1e6, 6) AS at_old_price
  FROM ai_usage_log ORDER BY id DESC LIMIT 1;
SELECT provider FROM igny8_chat('[{"role": "user", "content": "After the change one two three"}]', 'gpt-4');
SELECT input_tokens, output_tokens, reference_cost,
       reference_cost = round(input_tokens * 100 / 1e6 + output_tokens * 60 / 1e6, 6) AS by_hand
  FROM ai_usage_log ORDER BY id DESC LIMIT 1;
DELETE FROM igny8_prices WHERE provider = 'openai' AND model = 'gpt-4'
   AND unit = 'per_1m_input_tokens' AND price = 100;
UPDATE igny8_prices SET valid_to = NULL
 WHERE provider = 'openai' AND model = 'gpt-4' AND unit = 'per_1m_input_tokens';

-- images: made by ComfyUI for dall-e-3, priced at dall-e-3 by size and
-- quality (1024x1024 standard 0.040, hd 0.080)
SELECT wait_for_config();
SELECT provider, width, height, cost FROM igny8_generate_image('A lighthouse', 'dall-e-3', '1024x1024');
SELECT provider, width, height, cost FROM igny8_generate_image('A lighthouse', 'dall-e-3', '1024x1024', '{"quality": "hd"}');
-- the quality is priced as OpenAI bills it: "high" on dall-e-3 is hd, at
-- ComfyUI (the reference) as at OpenAI; and dall-e-3 makes 1024x768 as
-- 1792x1024 (hd: 0.120)
SELECT provider, width, height, cost FROM igny8_generate_image('A lighthouse', 'dall-e-3', '1024x1024', '{"quality": "high"}');
SELECT provider, width, height, cost FROM igny8_generate_image('A lighthouse', 'dall-e-3-fallback', '1024x768', '{"quality": "high"}');
SELECT provider, model_alias, images, image_width, image_height, cost, reference_cost
  FROM ai_usage_log WHERE task_type = 'image' ORDER BY id;

--
-- A self-hosted attempt's share of the rent.  The rent is set so that the
-- box costs 1 USD a second this month (the month's seconds, in UTC): a
-- cost in USD is then the attempt's share in seconds.
--
SELECT extract(epoch FROM (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month')
                          - date_trunc('month', now() AT TIME ZONE 'UTC')) AS month_seconds \gset
UPDATE igny8_fixed_costs SET monthly_amount = :month_seconds WHERE box = 'gpu_box';
SELECT wait_for_config();
TRUNCATE ai_usage_log;

-- alone, an attempt pays for its whole duration
SELECT provider FROM igny8_chat('[{"role": "user", "content": "Alone [[sim ollama:delay=0.2]]"}]', 'gpt-4');
SELECT provider, duration_ms >= 200 AS delayed,
       abs(cost - round((duration_ms / 1000)::numeric, 6)) <= 0.000001 AS whole_duration
  FROM ai_usage_log;
TRUNCATE ai_usage_log;

-- two at once: A runs until it is cancelled; B runs (on whichever
-- worker) while A is in flight at the simulator.  B shares each of its
-- seconds with A, so it pays half of its duration; A pays for the rest of
-- the busy time: its duration minus B's half.  The two shares add up to
-- the time the box was busy (A's duration).
SELECT dblink_connect('a', 'dbname=' || current_database());
SELECT dblink_send_query('a',
    $$SELECT igny8_generate_text('A [[sim ollama:delay=30 tag=share_a]]', 'gpt-4')$$);
SELECT sim_wait_arrival('share_a');
SELECT igny8_generate_text('B [[sim ollama:delay=0.3 tag=share_b]]', 'gpt-4') IS NOT NULL AS b_answered;
SELECT dblink_cancel_query('a');
\set VERBOSITY sqlstate
SELECT * FROM dblink_get_result('a') AS t(answer text);
\set VERBOSITY default
SELECT * FROM dblink_get_result('a') AS t(answer text);
SELECT dblink_disconnect('a');
SELECT wait_until($$(SELECT count(*) FROM ai_usage_log) = 2$$, 'both attempts in ai_usage_log');
WITH r AS (
    SELECT success, cost, created_at AS s,
           created_at + duration_ms * interval '1 millisecond' AS e,
           (duration_ms / 1000)::numeric AS d
      FROM ai_usage_log),
a AS (SELECT * FROM r WHERE NOT success),
b AS (SELECT * FROM r WHERE success)
SELECT b.s > a.s AND b.e < a.e AS b_within_a,
       abs(b.cost - round(b.d / 2, 6)) <= 0.000001 AS b_pays_half,
       abs(a.cost - round(a.d - b.d / 2, 6)) <= 0.000001 AS a_pays_the_rest,
       abs(a.cost + b.cost - round(a.d, 6)) <= 0.000002 AS shares_add_up_to_busy_time,
       a.cost + b.cost < a.d + b.d AS less_than_both_durations
  FROM a, b;

-- Ollama and ComfyUI share the box: an image made while a text attempt
-- runs shares its seconds with it too
TRUNCATE ai_usage_log;
SELECT dblink_connect('a', 'dbname=' || current_database());
SELECT dblink_send_query('a',
    $$SELECT igny8_generate_text('Text [[sim ollama:delay=30 tag=share_t]]', 'gpt-4')$$);
SELECT sim_wait_arrival('share_t');
SELECT provider FROM igny8_generate_image('Shared GPU', 'dall-e-3', '1024x1024');
SELECT dblink_cancel_query('a');
\set VERBOSITY sqlstate
SELECT * FROM dblink_get_result('a') AS t(answer text);
\set VERBOSITY default
SELECT * FROM dblink_get_result('a') AS t(answer text);
SELECT dblink_disconnect('a');
SELECT wait_until($$(SELECT count(*) FROM ai_usage_log) = 2$$, 'both attempts in ai_usage_log');
WITH r AS (
    SELECT provider, cost, (duration_ms / 1000)::numeric AS d FROM ai_usage_log),
t AS (SELECT * FROM r WHERE provider = 'self_hosted_ai'),
i AS (SELECT * FROM r WHERE provider = 'comfyui')
SELECT abs(i.cost - round(i.d / 2, 6)) <= 0.000001 AS image_pays_half,
       abs(t.cost + i.cost - round(t.d, 6)) <= 0.000002 AS shares_add_up_to_busy_time
  FROM t, i;

-- A rent that starts later changes no clock before it starts.  A second
-- Ollama on the box, self_hosted_b; from 2100 on, the box keeps the first
-- two providers and z_box takes self_hosted_b.  Until then the three
-- share gpu_box's clock: an attempt on self_hosted_b made while one runs
-- on self_hosted_ai pays half of its duration.  (Taking the rows by box
-- and valid_from, the last one would win: self_hosted_b would run on
-- z_box's clock today and pay its whole duration, the box's time charged
-- twice.)
INSERT INTO igny8_providers (id, kind, base_url, priority)
VALUES ('self_hosted_b', 'ollama', current_setting('igny8_test.ollama_url'), 10);
INSERT INTO igny8_models (alias, provider_id, provider_model)
VALUES ('second-gpu', 'self_hosted_b', 'qwen3:32b');
BEGIN;
UPDATE igny8_fixed_costs SET providers = '{self_hosted_ai,comfyui,self_hosted_b}',
       valid_to = '2100-01-01 00:00+00' WHERE box = 'gpu_box';
INSERT INTO igny8_fixed_costs (box, providers, monthly_amount, valid_from)
VALUES ('gpu_box', '{self_hosted_ai,comfyui}', :month_seconds, '2100-01-01 00:00+00'),
       ('z_box', '{self_hosted_b}', :month_seconds, '2100-01-01 00:00+00');
COMMIT;
SELECT wait_for_config();
TRUNCATE ai_usage_log;
SELECT dblink_connect('a', 'dbname=' || current_database());
SELECT dblink_send_query('a',
    $$SELECT igny8_generate_text('First GPU [[sim ollama:delay=30 tag=box_a]]', 'gpt-4')$$);
SELECT sim_wait_arrival('box_a');
SELECT igny8_generate_text('Second GPU [[sim ollama:delay=0.3]]', 'second-gpu') IS NOT NULL AS b_answered;
SELECT dblink_cancel_query('a');
\set VERBOSITY sqlstate
SELECT * FROM dblink_get_result('a') AS t(answer text);
\set VERBOSITY default
SELECT * FROM dblink_get_result('a') AS t(answer text);
SELECT dblink_disconnect('a');
SELECT wait_until($$(SELECT count(*) FROM ai_usage_log) = 2$$, 'both attempts in ai_usage_log');
WITH r AS (
    SELECT provider, cost, (duration_ms / 1000)::numeric AS d FROM ai_usage_log),
a AS (SELECT * FROM r WHERE provider = 'self_hosted_ai'),
b AS (SELECT * FROM r WHERE provider = 'self_hosted_b')
SELECT abs(b.cost - round(b.d / 2, 6)) <= 0.000001 AS b_pays_half,
       abs(a.cost + b.cost - round(a.d, 6)) <= 0.000002 AS shares_add_up_to_busy_time
  FROM a, b;

-- when the new rents start (in two seconds here), the next request a worker
-- takes runs on them: self_hosted_b on z_box's clock, alone there, pays
-- its whole duration beside an attempt on gpu_box
BEGIN;
SELECT now() + interval '2 s' AS rents_start \gset
UPDATE igny8_fixed_costs SET valid_to = :'rents_start'
 WHERE box = 'gpu_box' AND valid_to = '2100-01-01 00:00+00';
UPDATE igny8_fixed_costs SET valid_from = :'rents_start'
 WHERE valid_from = '2100-01-01 00:00+00';
COMMIT;
SELECT wait_for_config();
SELECT wait_until(format('clock_timestamp() > %L', :'rents_start'), 'the new rents to start');
TRUNCATE ai_usage_log;
SELECT dblink_connect('a', 'dbname=' || current_database());
SELECT dblink_send_query('a',
    $$SELECT igny8_generate_text('First GPU [[sim ollama:delay=30 tag=box_b]]', 'gpt-4')$$);
SELECT sim_wait_arrival('box_b');
SELECT igny8_generate_text('Second GPU [[sim ollama:delay=0.3]]', 'second-gpu') IS NOT NULL AS b_answered;
SELECT dblink_cancel_query('a');
\set VERBOSITY sqlstate
SELECT * FROM dblink_get_result('a') AS t(answer text);
\set VERBOSITY default
SELECT * FROM dblink_get_result('a') AS t(answer text);
SELECT dblink_disconnect('a');
SELECT wait_until($$(SELECT count(*) FROM ai_usage_log) = 2$$, 'both attempts in ai_usage_log');
WITH r AS (
    SELECT provider, cost, created_at, (duration_ms / 1000)::numeric AS d FROM ai_usage_log),
a AS (SELECT * FROM r WHERE provider = 'self_hosted_ai'),
b AS (SELECT * FROM r WHERE provider = 'self_hosted_b')
SELECT a.created_at >= :'rents_start' AND b.created_at >= :'rents_start' AS after_the_start,
       abs(b.cost - round(b.d, 6)) <= 0.000001 AS b_pays_its_duration,
       abs(a.cost - round(a.d, 6)) <= 0.000001 AS a_pays_its_duration
  FROM a, b;
DELETE FROM igny8_fixed_costs WHERE box = 'z_box' OR valid_from = :'rents_start';
UPDATE igny8_fixed_costs SET providers = '{self_hosted_ai,comfyui}', valid_to = NULL
 WHERE box = 'gpu_box';
DELETE FROM igny8_providers WHERE id = 'self_hosted_b';
SELECT wait_for_config();

-- A provider renamed: its prices and reference models follow it, as its
-- deployments do; the rent that runs ends and goes on with the new name.
-- OpenAI's gpt-4 keeps its price (4 * 30 / 1e6 + 9 * 60 / 1e6 =
-- 0.000660), the GPU box its rent (an attempt alone pays its duration)
BEGIN;
UPDATE igny8_providers SET id = 'openai_main' WHERE id = 'openai';
UPDATE igny8_providers SET id = 'gpu_ollama' WHERE id = 'self_hosted_ai';
COMMIT;
SELECT wait_for_config();
SELECT provider, count(*) AS prices, min(origin) AS origin
  FROM igny8_prices GROUP BY provider ORDER BY provider;
SELECT alias, provider, model, origin FROM igny8_reference_models ORDER BY alias;
SELECT box, providers, origin FROM igny8_fixed_costs ORDER BY box, valid_from;
TRUNCATE ai_usage_log;
SELECT provider, input_tokens, output_tokens
  FROM igny8_chat('[{"role": "user", "content": "Renamed [[sim ollama:status=404]] one two three"}]', 'gpt-4');
SELECT provider, cost, reference_cost FROM ai_usage_log WHERE success;
TRUNCATE ai_usage_log;
SELECT provider FROM igny8_chat('[{"role": "user", "content": "Renamed GPU [[sim ollama:delay=0.2]]"}]', 'gpt-4');
SELECT provider, abs(cost - round((duration_ms / 1000)::numeric, 6)) <= 0.000001 AS whole_duration
  FROM ai_usage_log;
BEGIN;
UPDATE igny8_providers SET id = 'openai' WHERE id = 'openai_main';
UPDATE igny8_providers SET id = 'self_hosted_ai' WHERE id = 'gpu_ollama';
COMMIT;
SELECT provider, count(*) AS prices, min(origin) AS origin
  FROM igny8_prices GROUP BY provider ORDER BY provider;
-- the rent is history: it ended at each rename, naming the provider as
-- it was, and went on under the new name
SELECT box, providers, origin, valid_from = '-infinity' AS from_start, valid_to IS NULL AS runs
  FROM igny8_fixed_costs ORDER BY box, valid_from;
SELECT count(*) AS deletions_left FROM igny8_config_deletions;
-- back to the one shipped row, for the reports below
DELETE FROM igny8_fixed_costs WHERE box = 'gpu_box' AND valid_from > '-infinity';
UPDATE igny8_fixed_costs SET valid_to = NULL WHERE box = 'gpu_box';
UPDATE igny8_fixed_costs SET monthly_amount = 0 WHERE box = 'gpu_box';
SELECT wait_for_config();

--
-- The reports on a fixed data set (February and March 2026, 28 and 31
-- days): the rent is 200 USD until February 15th, 280 from then on.
--
TRUNCATE ai_usage_log;
UPDATE igny8_fixed_costs SET monthly_amount = 200, valid_to = '2026-02-15 00:00+00'
 WHERE box = 'gpu_box';
INSERT INTO igny8_fixed_costs (box, providers, description, monthly_amount, valid_from)
VALUES ('gpu_box', '{self_hosted_ai,comfyui}', 'a bigger GPU', 280, '2026-02-15 00:00+00');
INSERT INTO ai_usage_log (request_id, created_at, account_id, provider, task_type,
                          model_alias, input_tokens, output_tokens, cost, reference_cost,
                          cached, success, attempt, images)
VALUES (gen_random_uuid(), '2026-02-03 10:00+00', 1, 'self_hosted_ai', 'text', 'gpt-4', 1000, 2000, 30, 50, false, true, 1, NULL),
       (gen_random_uuid(), '2026-02-05 10:00+00', 1, 'self_hosted_ai', 'text', 'gpt-4', 0, 0, 0, 0, false, false, 1, NULL),
       (gen_random_uuid(), '2026-02-10 10:00+00', 2, 'self_hosted_ai', 'text', 'gpt-4', 3000, 4000, 60, 100, false, true, 1, NULL),
       (gen_random_uuid(), '2026-02-12 10:00+00', 2, 'openai', 'text', 'gpt-4', 100, 200, 12.5, 12.5, false, true, 2, NULL),
       (gen_random_uuid(), '2026-02-20 10:00+00', NULL, 'self_hosted_ai', 'text', 'gpt-4', 3000, 4000, 60, 100, false, true, 1, NULL),
       (gen_random_uuid(), '2026-02-25 10:00+00', 1, 'comfyui', 'image', 'dall-e-3', 0, 0, 50, 40, false, true, 1, 1000),
       (gen_random_uuid(), '2026-02-27 10:00+00', 2, 'openai', 'text', 'gpt-4', 100, 200, 0, 10, true, true, 1, NULL),
       (gen_random_uuid(), '2026-03-02 10:00+00', 1, 'self_hosted_ai', 'text', 'gpt-4', 10, 20, 1, 5, false, true, 1, NULL);

-- February: rent 200 * 14/28 + 280 * 14/28 = 240; the self-hosted work
-- would have cost 50 + 100 + 100 + 40 = 290 at OpenAI, and the cache
-- saved 10 (cache_savings): savings 300 - 240 = 60, ROI 60 / 240 = 25 %.  Running total:
-- 50 (3rd), 150 (10th), 250 (20th) >= 240: earned back on the 20th.  The
-- OpenAI attempt of the 12th is not self-hosted work.
SELECT * FROM igny8_cost_report('2026-02-01 00:00+00', '2026-03-01 00:00+00');
-- part of a month: February 10th to 20th is 5 days at 200 and 5 at 280:
-- (200 * 5 + 280 * 5) / 28 = 85.714286; the work was 100 (the 10th)
SELECT provider, attempts, cost, rent, self_hosted_reference_cost, savings, roi_pct, earned_back_on
  FROM igny8_cost_report('2026-02-10 00:00+00', '2026-02-20 00:00+00');
-- a period without usage still pays its rent (March 10th to 11th: 280 / 31)
SELECT * FROM igny8_cost_report('2026-03-10 00:00+00', '2026-03-11 00:00+00');
SELECT igny8_rent('2026-01-01 00:00+00', '2026-04-01 00:00+00') AS rent_q1;
-- per month: March is 280 of rent against 5 of work, never earned back
SELECT * FROM igny8_cost_monthly;
-- per account (NULL: calls without one)
SELECT * FROM igny8_cost_by_account('2026-02-01 00:00+00', '2026-04-01 00:00+00');
-- this month, per provider: nothing in the data set
SELECT count(*) AS this_month FROM igny8_cost_by_provider;

-- a monitoring role reads the reports, not the usage rows
CREATE ROLE igny8_cost_reader;
SELECT igny8_grant_monitoring('igny8_cost_reader');
SET ROLE igny8_cost_reader;
SELECT month, rent, savings, roi_pct, earned_back_day FROM igny8_cost_monthly;
SELECT count(*) FROM igny8_cost_by_provider;
SELECT count(*) FROM ai_usage_log;
-- igny8_rent runs with the reader's rights, and so does its period check
SELECT igny8_rent('2026-02-01 00:00+00', '2026-03-01 00:00+00') AS february_rent;
SELECT show_error($$SELECT igny8_rent('2026-03-01 00:00+00', '2026-02-01 00:00+00')$$);
RESET ROLE;

--
-- Bad input: nothing is written
--
CREATE TEMP TABLE fixed_before AS SELECT * FROM igny8_fixed_costs;
-- a negative amount
INSERT INTO igny8_fixed_costs (box, providers, monthly_amount, valid_from)
VALUES ('gpu_box', '{self_hosted_ai}', -1, '2030-01-01');
-- an unknown provider
INSERT INTO igny8_fixed_costs (box, providers, monthly_amount)
VALUES ('other_box', '{self_hosted_ai_typo}', 100);
-- no provider, a provider twice
INSERT INTO igny8_fixed_costs (box, providers, monthly_amount)
VALUES ('other_box', '{}', 100);
INSERT INTO igny8_fixed_costs (box, providers, monthly_amount)
VALUES ('other_box', '{openai,openai}', 100);
-- a validity overlapping the current rent's (refused at commit)
INSERT INTO igny8_fixed_costs (box, providers, monthly_amount, valid_from)
VALUES ('gpu_box', '{self_hosted_ai,comfyui}', 300, '2026-06-01');
-- a provider paid for by two boxes at once
INSERT INTO igny8_fixed_costs (box, providers, monthly_amount)
VALUES ('second_box', '{comfyui}', 50);
-- an empty validity
INSERT INTO igny8_fixed_costs (box, providers, monthly_amount, valid_from, valid_to)
VALUES ('other_box', '{openai}', 1, '2026-01-01', '2026-01-01');
SELECT count(*) AS fixed_costs_changed
  FROM ((TABLE igny8_fixed_costs EXCEPT TABLE fixed_before)
        UNION ALL (TABLE fixed_before EXCEPT TABLE igny8_fixed_costs)) d;
-- the providers are checked at commit: a rent may be written before the
-- provider it names, in the same transaction (as a restore does)
BEGIN;
INSERT INTO igny8_fixed_costs (box, providers, monthly_amount)
VALUES ('lab_box', '{lab_gpu}', 10);
INSERT INTO igny8_providers (id, kind, base_url) VALUES ('lab_gpu', 'ollama', 'http://127.0.0.1:9');
COMMIT;
SELECT box, providers, monthly_amount FROM igny8_fixed_costs WHERE box = 'lab_box';
-- a provider deleted: its prices and reference models go with it, as its
-- deployments go.  The rents are history: one that runs now ends now,
-- still naming it, and goes on from now without it (none when it was for
-- that provider alone); one that has not started loses it (and goes,
-- when it was for it alone)
INSERT INTO igny8_providers (id, kind, base_url) VALUES
    ('lab_gpu2', 'ollama', 'http://127.0.0.1:9'), ('lab_api', 'openai', 'http://127.0.0.1:9');
UPDATE igny8_fixed_costs SET providers = '{lab_gpu,lab_gpu2}' WHERE box = 'lab_box';
INSERT INTO igny8_fixed_costs (box, providers, monthly_amount) VALUES ('lab_box2', '{lab_api}', 5);
-- and the rents of tomorrow on
BEGIN;
UPDATE igny8_fixed_costs SET valid_to = now() + interval '1 day' WHERE box IN ('lab_box', 'lab_box2');
INSERT INTO igny8_fixed_costs (box, providers, monthly_amount, valid_from)
VALUES ('lab_box', '{lab_gpu,lab_gpu2}', 11, now() + interval '1 day'),
       ('lab_box2', '{lab_api}', 6, now() + interval '1 day');
COMMIT;
INSERT INTO igny8_prices (provider, model, unit, price)
VALUES ('lab_api', 'lab-model', 'per_1m_input_tokens', 1);
INSERT INTO igny8_reference_models (alias, provider, model) VALUES ('lab-alias', 'lab_api', 'lab-model');
DELETE FROM igny8_providers WHERE id IN ('lab_gpu', 'lab_api');
SELECT box, providers, monthly_amount, valid_from = '-infinity' AS from_start,
       valid_to <= now() AS ended, valid_from > now() AS later
  FROM igny8_fixed_costs WHERE box LIKE 'lab%' ORDER BY box, valid_from;
SELECT (SELECT count(*) FROM igny8_prices WHERE provider = 'lab_api') AS prices,
       (SELECT count(*) FROM igny8_reference_models WHERE alias = 'lab-alias') AS reference_models;
-- the rent that ended may still be edited; a rent that runs may not name a
-- provider that is gone, also when the name was added by an earlier
-- statement of the same transaction
UPDATE igny8_fixed_costs SET description = 'the lab box' WHERE box = 'lab_box'
RETURNING box, providers, description;
UPDATE igny8_fixed_costs SET providers = providers || '{lab_gone}'
 WHERE box = 'lab_box' AND valid_to IS NULL;
BEGIN;
UPDATE igny8_fixed_costs SET providers = providers || '{typo_gpu}'
 WHERE box = 'lab_box' AND valid_to IS NULL;
UPDATE igny8_fixed_costs SET description = 'typo' WHERE box = 'lab_box' AND valid_to IS NULL;
COMMIT;
SELECT count(*) AS lab_rents_with_typo FROM igny8_fixed_costs WHERE 'typo_gpu' = ANY (providers);
DELETE FROM igny8_fixed_costs WHERE box LIKE 'lab%';
DELETE FROM igny8_providers WHERE id = 'lab_gpu2';
-- two transactions that each add a rent for the same provider, from
-- different boxes: the later to commit fails, under REPEATABLE READ
-- (whose snapshot does not show the other's rent) with 40001, under READ
-- COMMITTED with 23P01; the provider's hours are paid for once
SELECT dblink_connect('rent_a', 'dbname=' || current_database());
SELECT dblink_connect('rent_b', 'dbname=' || current_database());
SELECT dblink_exec('rent_a', 'BEGIN ISOLATION LEVEL REPEATABLE READ');
SELECT dblink_exec('rent_b', 'BEGIN ISOLATION LEVEL REPEATABLE READ');
SELECT * FROM dblink('rent_a', 'SELECT count(*) FROM igny8_fixed_costs') AS t(n bigint);
SELECT * FROM dblink('rent_b', 'SELECT count(*) FROM igny8_fixed_costs') AS t(n bigint);
SELECT dblink_exec('rent_a', $$INSERT INTO igny8_fixed_costs (box, providers, monthly_amount, valid_from)
                              VALUES ('race_a', '{anthropic}', 100, '2030-02-01')$$);
SELECT dblink_exec('rent_b', $$INSERT INTO igny8_fixed_costs (box, providers, monthly_amount, valid_from)
                              VALUES ('race_b', '{anthropic}', 200, '2030-02-01')$$);
SELECT dblink_exec('rent_a', 'COMMIT');
SELECT show_error($$SELECT dblink_exec('rent_b', 'COMMIT')$$);
SELECT dblink_exec('rent_a', 'BEGIN');
SELECT dblink_exec('rent_b', 'BEGIN');
SELECT dblink_exec('rent_a', $$INSERT INTO igny8_fixed_costs (box, providers, monthly_amount, valid_from)
                              VALUES ('race_c', '{openai}', 100, '2030-03-01')$$);
SELECT dblink_exec('rent_b', $$INSERT INTO igny8_fixed_costs (box, providers, monthly_amount, valid_from)
                              VALUES ('race_d', '{openai}', 200, '2030-03-01')$$);
SELECT dblink_exec('rent_a', 'COMMIT');
SELECT show_error($$SELECT dblink_exec('rent_b', 'COMMIT')$$);
SELECT dblink_disconnect('rent_a');
SELECT dblink_disconnect('rent_b');
SELECT box, providers, monthly_amount, valid_from FROM igny8_fixed_costs
 WHERE box LIKE 'race%' ORDER BY box, valid_from;
DELETE FROM igny8_fixed_costs WHERE box LIKE 'race%';
-- an unknown reference model (refused at commit), a bad alias
INSERT INTO igny8_reference_models (alias, model) VALUES ('my-alias', 'gpt-9');
INSERT INTO igny8_reference_models (alias, model) VALUES ('my alias', 'gpt-4');
SELECT count(*) AS reference_models FROM igny8_reference_models;
-- a report period that is empty, reversed or unbounded
SELECT * FROM igny8_cost_report('2026-02-01', '2026-02-01');
SELECT * FROM igny8_cost_report('2026-03-01', '2026-02-01');
SELECT * FROM igny8_cost_report(NULL, '2026-02-01');
SELECT * FROM igny8_cost_by_account('-infinity', '2026-02-01');

-- back to the shipped rent (the prelude zeroes its amount)
DELETE FROM igny8_fixed_costs WHERE valid_from = '2026-02-15 00:00+00';
UPDATE igny8_fixed_costs SET valid_to = NULL WHERE box = 'gpu_box';
DROP OWNED BY igny8_cost_reader;
DROP ROLE igny8_cost_reader;
TRUNCATE ai_usage_log;
SELECT wait_for_config();
