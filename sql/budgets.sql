--
-- budgets: igny8_budgets, checked by the workers before every paid attempt
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;
DELETE FROM igny8_budgets;

-- an alias whose only deployment is paid (OpenAI's gpt-4), falling back to
-- a self-hosted one
INSERT INTO igny8_models (alias, provider_id, provider_model, timeout, max_tokens)
VALUES ('budget-paid', 'openai', 'gpt-4', '60 s', 4096),
       ('budget-local', 'self_hosted_ai', 'qwen3:8b', '60 s', 2048);
INSERT INTO igny8_fallbacks (alias, position, fallback_alias)
VALUES ('budget-paid', 1, 'budget-local');

-- bad input: a clear error, nothing stored
SELECT show_error($$INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (501, 'day', -1)$$);
SELECT show_error($$INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (501, 'week', 1)$$);
SELECT show_error($$INSERT INTO igny8_budgets (account_id, period, limit_usd, action) VALUES (501, 'day', 1, 'warn')$$);
SELECT show_error($$INSERT INTO igny8_budgets (account_id, period, limit_usd, warn_fraction) VALUES (501, 'day', 1, 1.5)$$);
SELECT show_error($$INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (-1, 'day', 1)$$);
SELECT show_error($$INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (501, NULL, 1)$$);
SELECT count(*) AS budgets FROM igny8_budgets;

-- account 501 spent 0.099 USD today before it had a budget; its budget of
-- 0.10 a day is rebuilt from ai_usage_log
INSERT INTO ai_usage_log (request_id, account_id, provider, task_type, model_alias,
                          success, attempt, cost)
VALUES (gen_random_uuid(), 501, 'openai', 'chat', 'budget-paid', true, 1, 0.099);
INSERT INTO igny8_budgets (account_id, period, limit_usd, action, warn_fraction)
VALUES (501, 'day', 0.10, 'refuse', 0.5);
SELECT wait_for_config();

-- refuse: the estimate of the OpenAI attempt is (8 + 8 + 20 bytes) input
-- tokens at 30 USD per 1M and 20 output tokens (max_tokens) at 60:
-- 36 * 30 / 1e6 + 20 * 60 / 1e6 = 0.002280; 0.099 + 0.00228 > 0.10
SELECT show_error($$SELECT igny8_chat('[{"role": "user", "content": "Budget one two three"}]',
                                      'budget-paid', '{"account_id": 501, "max_tokens": 20}')$$);
SELECT count(*) AS rows_after_refusal FROM ai_usage_log;
-- another account has no budget: the same call goes to OpenAI
SELECT provider, cost FROM igny8_chat('[{"role": "user", "content": "Budget one two three"}]',
                                      'budget-paid', '{"account_id": 502, "max_tokens": 20}');
-- a call without a paid candidate is not concerned
SELECT provider, cost FROM igny8_chat('[{"role": "user", "content": "Budget one two three"}]',
                                      'gpt-4', '{"account_id": 501, "max_tokens": 20}');
-- an image at OpenAI is estimated at the size and quality OpenAI bills:
-- dall-e-3 makes 1024x768 as 1792x1024 (0.080), and "high" is hd (0.080)
SELECT show_error($$SELECT igny8_generate_image('Budget picture', 'dall-e-3-fallback', '1024x768',
                                                '{"account_id": 501}')$$);
SELECT show_error($$SELECT igny8_generate_image('Budget picture', 'dall-e-3-fallback', '1024x1024',
                                                '{"account_id": 501, "quality": "high"}')$$);
SELECT count(*) AS image_rows FROM ai_usage_log WHERE task_type = 'image';

-- a submitted job is refused the same way
SELECT igny8_submit_chat('[{"role": "user", "content": "Budget one two three"}]',
                         'budget-paid', '{"account_id": 501, "max_tokens": 20}') AS job \gset
SELECT state, error_code, error_message FROM igny8_wait_job(:job, '60 s');

-- self_hosted_only: the OpenAI candidate is skipped, the self-hosted
-- fallback answers
UPDATE igny8_budgets SET action = 'self_hosted_only' WHERE account_id = 501;
SELECT wait_for_config();
TRUNCATE ai_usage_log;
INSERT INTO ai_usage_log (request_id, account_id, provider, task_type, model_alias,
                          success, attempt, cost)
VALUES (gen_random_uuid(), 501, 'openai', 'chat', 'budget-paid', true, 1, 0.099);
SELECT provider, model, cost FROM igny8_chat('[{"role": "user", "content": "Budget one two three"}]',
                                             'budget-paid', '{"account_id": 501, "max_tokens": 20}');
SELECT provider, model_used, success, cost FROM ai_usage_log ORDER BY id;
-- and when no self-hosted candidate is left, the budget's error
SELECT show_error($$SELECT igny8_chat('[{"role": "user", "content": "Budget one two three [[sim ollama:status=404]]"}]',
                                      'budget-paid', '{"account_id": 501, "max_tokens": 20}')$$);
-- two budgets passed: a month budget that refuses wins over the day's
-- self_hosted_only, and the call fails without a self-hosted attempt
INSERT INTO igny8_budgets (account_id, period, limit_usd, action)
VALUES (501, 'month', 0.10, 'refuse');
SELECT wait_for_config();
SELECT count(*) AS rows_before FROM ai_usage_log \gset
SELECT show_error($$SELECT igny8_chat('[{"role": "user", "content": "Budget one two three"}]',
                                      'budget-paid', '{"account_id": 501, "max_tokens": 20}')$$);
SELECT count(*) - :rows_before AS rows_written FROM ai_usage_log;
DELETE FROM igny8_budgets WHERE account_id = 501 AND period = 'month';
SELECT wait_for_config();

-- account 504 spent 0.099 today, and gets a budget of 0.20 with a warning
-- at 0.10: the paid candidate is used and its cost counts; the spend
-- crosses the threshold once, and NOTIFY igny8_ai_budget says so once in
-- the period.  (Account 501 was warned when its budget was made: it had
-- spent more than its threshold already.)
INSERT INTO ai_usage_log (request_id, account_id, provider, task_type, model_alias,
                          success, attempt, cost)
VALUES (gen_random_uuid(), 504, 'openai', 'chat', 'budget-paid', true, 1, 0.099);
INSERT INTO igny8_budgets (account_id, period, limit_usd, action, warn_fraction)
VALUES (504, 'day', 0.20, 'refuse', 0.5);
SELECT wait_for_config();
SELECT dblink_connect('listener', 'dbname=' || current_database());
SELECT dblink_exec('listener', 'LISTEN igny8_ai_budget');
CREATE TEMP TABLE notices (payload text);
-- the notices received up to the sentinel this session sent just before
-- (a notice the workers committed earlier is delivered before it)
CREATE FUNCTION notices_until_sentinel() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..600 LOOP
        INSERT INTO notices SELECT extra FROM dblink_get_notify('listener');
        IF EXISTS (SELECT 1 FROM notices WHERE payload = 'sentinel') THEN
            DELETE FROM notices WHERE payload = 'sentinel';
            RETURN (SELECT count(*) FROM notices);
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE EXCEPTION 'the sentinel notice did not arrive';
END
$$;
-- 0.099 + 0.00066 = 0.09966: under the threshold
SELECT provider, cost FROM igny8_chat('[{"role": "user", "content": "Budget one two three"}]',
                                      'budget-paid', '{"account_id": 504, "max_tokens": 20}');
NOTIFY igny8_ai_budget, 'sentinel';
SELECT notices_until_sentinel() AS notices;
-- 0.10032: over it
SELECT provider, cost FROM igny8_chat('[{"role": "user", "content": "Budget one two three"}]',
                                      'budget-paid', '{"account_id": 504, "max_tokens": 20}');
NOTIFY igny8_ai_budget, 'sentinel';
SELECT notices_until_sentinel() AS notices;
SELECT p->>'account_id' AS account_id, p->>'period' AS period, p->>'spend' AS spend,
       p->>'limit' AS "limit", p->>'warn_at' AS warn_at,
       (p->>'period_start')::timestamptz = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS utc_day
  FROM (SELECT payload::jsonb AS p FROM notices) n;
-- 0.10098: still over it, no second notice
SELECT provider, cost FROM igny8_chat('[{"role": "user", "content": "Budget one two three"}]',
                                      'budget-paid', '{"account_id": 504, "max_tokens": 20}');
NOTIFY igny8_ai_budget, 'sentinel';
SELECT notices_until_sentinel() AS notices;
-- a limit lowered below the spend: the notice is sent when the workers
-- load it, though no cost is counted again (a refused call adds none)
DELETE FROM notices;
INSERT INTO ai_usage_log (request_id, account_id, provider, task_type, model_alias,
                          success, attempt, cost)
VALUES (gen_random_uuid(), 510, 'openai', 'chat', 'budget-paid', true, 1, 0.05);
INSERT INTO igny8_budgets (account_id, period, limit_usd, action, warn_fraction)
VALUES (510, 'day', 1, 'refuse', 0.5);
SELECT wait_for_config();
NOTIFY igny8_ai_budget, 'sentinel';
SELECT notices_until_sentinel() AS notices;
UPDATE igny8_budgets SET limit_usd = 0.04 WHERE account_id = 510;
SELECT wait_for_config();
SELECT show_error($$SELECT igny8_chat('[{"role": "user", "content": "Budget one two three"}]',
                                      'budget-paid', '{"account_id": 510, "max_tokens": 20}')$$);
NOTIFY igny8_ai_budget, 'sentinel';
SELECT notices_until_sentinel() AS notices;
SELECT p->>'account_id' AS account_id, p->>'spend' AS spend, p->>'limit' AS "limit",
       p->>'warn_at' AS warn_at
  FROM (SELECT payload::jsonb AS p FROM notices) n;
SELECT spend, limit_usd, warned FROM igny8_budget_status() WHERE account_id = 510;
SELECT dblink_disconnect('listener');
SELECT account_id, sum(cost) FROM ai_usage_log GROUP BY account_id ORDER BY account_id;

-- a failed attempt that was billed nothing gives its reservation back at
-- once: account 505 has 0.0036 left, room for the OpenAI attempt's
-- estimate (0.00339) but not for it and the Anthropic fallback's
-- (0.000519) together, and the fallback after a 404 still fits
INSERT INTO igny8_models (alias, provider_id, provider_model, timeout, max_tokens)
VALUES ('budget-two', 'openai', 'gpt-4', '60 s', 4096),
       ('budget-sonnet', 'anthropic', 'claude-sonnet-5-5', '60 s', 4096);
INSERT INTO igny8_fallbacks (alias, position, fallback_alias)
VALUES ('budget-two', 1, 'budget-sonnet');
INSERT INTO ai_usage_log (request_id, account_id, provider, task_type, model_alias,
                          success, attempt, cost)
VALUES (gen_random_uuid(), 505, 'openai', 'chat', 'budget-paid', true, 1, 0.0964);
INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (505, 'day', 0.10);
SELECT wait_for_config();
SELECT provider FROM igny8_chat('[{"role": "user", "content": "Budget fallback [[sim openai:status=404 times=1 key=bf1]]"}]',
                                'budget-two', '{"account_id": 505, "max_tokens": 20}');
SELECT attempt, provider, http_status, success FROM ai_usage_log
 WHERE account_id = 505 AND model_used IS NOT NULL ORDER BY id;
-- and so does one that never reached its provider (a refused connection):
-- account 508 has the same room, and a prompt of the same 57 bytes
INSERT INTO igny8_providers (id, kind, base_url, api_key_ref)
VALUES ('openai_down', 'openai', current_setting('igny8_test.dead_url'), 'env:OPENAI_API_KEY');
INSERT INTO igny8_prices (provider, model, unit, price)
VALUES ('openai_down', 'gpt-4', 'per_1m_input_tokens', 30),
       ('openai_down', 'gpt-4', 'per_1m_output_tokens', 60);
INSERT INTO igny8_models (alias, provider_id, provider_model, timeout, max_tokens)
VALUES ('budget-down', 'openai_down', 'gpt-4', '60 s', 4096);
INSERT INTO igny8_fallbacks (alias, position, fallback_alias)
VALUES ('budget-down', 1, 'budget-sonnet');
INSERT INTO ai_usage_log (request_id, account_id, provider, task_type, model_alias,
                          success, attempt, cost)
VALUES (gen_random_uuid(), 508, 'openai', 'chat', 'budget-paid', true, 1, 0.0964);
INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (508, 'day', 0.10);
SELECT wait_for_config();
SELECT provider FROM igny8_chat('[{"role": "user", "content": "Budget fallback after a connection that was refused, ok!!"}]',
                                'budget-down', '{"account_id": 508, "max_tokens": 20}');
SELECT attempt, provider, http_status, success, error_message FROM ai_usage_log
 WHERE account_id = 508 AND model_used IS NOT NULL ORDER BY id;
SELECT reserved FROM igny8_budget_status() WHERE account_id = 508;

-- a budget made while an attempt is in flight holds none of its
-- reservation: when that attempt's row commits, the new month budget keeps
-- what a later attempt reserved on it (the day budget holds both)
INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (506, 'day', 1);
SELECT wait_for_config();
SELECT dblink_connect('first', 'dbname=' || current_database());
SELECT dblink_connect('second', 'dbname=' || current_database());
SELECT dblink_send_query('first',
    $$SELECT provider FROM igny8_chat('[{"role": "user", "content": "Reserve one [[sim openai:delay=3 tag=rs1]]"}]',
                                      'budget-paid', '{"account_id": 506, "max_tokens": 20}')$$);
SELECT wait_until($$(SELECT count(*) FROM sim('log --role openai --tag rs1 --count') l WHERE l::int >= 1)$$,
                  'the first attempt at OpenAI');
INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (506, 'month', 1);
SELECT wait_for_config();
SELECT dblink_send_query('second',
    $$SELECT provider FROM igny8_chat('[{"role": "user", "content": "Reserve two [[sim openai:delay=60 tag=rs2]]"}]',
                                      'budget-paid', '{"account_id": 506, "max_tokens": 20}')$$);
SELECT wait_until($$(SELECT count(*) FROM sim('log --role openai --tag rs2 --count') l WHERE l::int >= 1)$$,
                  'the second attempt at OpenAI');
SELECT period, reserved FROM igny8_budget_status() WHERE account_id = 506 ORDER BY period;
SELECT dblink_answer('first') AS first_answered_by;
SELECT wait_until($$(SELECT reserved < 0.004 FROM igny8_budget_status()
                      WHERE account_id = 506 AND period = 'day')$$,
                  'the first reservation given back');
SELECT period, reserved FROM igny8_budget_status() WHERE account_id = 506 ORDER BY period;
SELECT dblink_cancel_query('second');
SELECT dblink_disconnect('first');
SELECT dblink_disconnect('second');

-- a month budget of 0 refuses every paid attempt, fallbacks included, and
-- lets the self-hosted ones through
INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (503, 'month', 0);
SELECT wait_for_config();
SELECT provider FROM igny8_chat('[{"role": "user", "content": "Month"}]', 'gpt-4',
                                '{"account_id": 503, "max_tokens": 20}');
-- (the detail lists the self-hosted attempt that failed before)
SELECT show_error($$SELECT igny8_chat('[{"role": "user", "content": "Month [[sim ollama:status=500]]"}]',
                                      'gpt-4', '{"account_id": 503, "max_tokens": 20}')$$);
-- an image estimated above the limit alone: a hint for images
SELECT show_error($$SELECT igny8_generate_image('Month picture', 'dall-e-3-fallback', '1024x1024',
                                                '{"account_id": 503}')$$);
-- nothing spent is nothing to warn of: no notice for a limit of 0
SELECT spend, warned FROM igny8_budget_status() WHERE account_id = 503;
-- the session's igny8_ai.account_id is the account too
SET igny8_ai.account_id = 503;
SELECT show_error($$SELECT igny8_generate_text('Month', 'budget-paid', 20)$$);
RESET igny8_ai.account_id;
-- a budget removed no longer applies
DELETE FROM igny8_budgets WHERE account_id = 503;
SELECT wait_for_config();
SELECT provider FROM igny8_chat('[{"role": "user", "content": "Month"}]', 'budget-paid',
                                '{"account_id": 503, "max_tokens": 20}');

-- at the most budgets shared memory holds (1,024), a budget that replaces
-- another in one transaction is enforced at once
DELETE FROM igny8_budgets;
INSERT INTO igny8_budgets (account_id, period, limit_usd)
SELECT 10000 + i, 'day', 1 FROM generate_series(1, 1024) i;
SELECT wait_for_config();
SELECT count(*) AS entries FROM igny8_budget_status();
BEGIN;
DELETE FROM igny8_budgets WHERE account_id = 10001;
INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (509, 'day', 0);
COMMIT;
SELECT wait_for_config();
SELECT count(*) AS entries, count(*) FILTER (WHERE account_id = 509) AS replaced,
       count(*) FILTER (WHERE account_id = 10001) AS gone
  FROM igny8_budget_status();
SELECT show_error($$SELECT igny8_generate_text('Replaced', 'budget-paid', 20, account_id => 509)$$);
DELETE FROM igny8_budgets;
SELECT wait_for_config();

-- while a budget's spend is summed from ai_usage_log (loading), its entry
-- holds only what committed since: a paid attempt of its account waits
-- for the sum, and fails with 55000 if its timeout comes first.  (A NaN
-- cost makes the workers' sum fail, so the budget of 511 stays loading;
-- the sum is made after the configuration's load, which succeeds, and is
-- tried again after 1, 2, 4, then every 8 s.)
INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (512, 'day', 1);
SELECT wait_for_config();
INSERT INTO ai_usage_log (request_id, account_id, provider, task_type, model_alias,
                          success, attempt, cost)
VALUES (gen_random_uuid(), 511, 'openai', 'chat', 'budget-paid', true, 1, 0.099),
       (gen_random_uuid(), 511, 'openai', 'chat', 'budget-paid', false, 2, 'NaN');
INSERT INTO igny8_budgets (account_id, period, limit_usd) VALUES (511, 'day', 0.10);
SELECT wait_until($$(SELECT loading FROM igny8_budget_status() WHERE account_id = 511)$$,
                  'the budget of 511 made');
SELECT show_error($$SELECT igny8_chat('[{"role": "user", "content": "Loading one two three"}]',
                                      'budget-paid', '{"account_id": 511, "max_tokens": 20, "timeout": 2}')$$);
SELECT count(*) AS attempts_while_loading FROM ai_usage_log WHERE account_id = 511 AND model_used IS NOT NULL;
SELECT spend, loading FROM igny8_budget_status() WHERE account_id = 511;
SELECT count(*) AS workers_with_the_configuration FROM igny8_worker_status() WHERE config_current;
-- once the sum can be made, it is made with no other change: the spend is
-- known and the attempt refused
DELETE FROM ai_usage_log WHERE account_id = 511 AND cost = 'NaN';
SELECT wait_until($$(SELECT NOT loading FROM igny8_budget_status() WHERE account_id = 511)$$,
                  'the spend of 511 summed', 20);
SELECT spend, loading FROM igny8_budget_status() WHERE account_id = 511;
SELECT show_error($$SELECT igny8_chat('[{"role": "user", "content": "Loading one two three"}]',
                                      'budget-paid', '{"account_id": 511, "max_tokens": 20, "timeout": 2}')$$);
DELETE FROM igny8_budgets;
SELECT wait_for_config();

-- the budgets are configuration: pg_dump keeps them
SELECT c.oid::regclass AS dumped
  FROM pg_extension e, unnest(e.extconfig) c(oid)
 WHERE e.extname = 'igny8_ai' AND c.oid IN ('igny8_budgets'::regclass, 'igny8_account_roles'::regclass)
 ORDER BY 1;

DELETE FROM igny8_budgets;
DELETE FROM igny8_fallbacks WHERE alias IN ('budget-paid', 'budget-two', 'budget-down');
DELETE FROM igny8_models WHERE alias IN ('budget-paid', 'budget-local', 'budget-two', 'budget-sonnet', 'budget-down');
DELETE FROM igny8_prices WHERE provider = 'openai_down';
DELETE FROM igny8_providers WHERE id = 'openai_down';
DROP FUNCTION notices_until_sentinel();
SELECT wait_for_config();
