--
-- accounts: roles bound to an account (igny8_grant_usage(role, account_id)),
-- charged to it whatever they pass, reading only its usage rows and jobs
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;
DELETE FROM igny8_jobs;

CREATE ROLE igny8_acct_a LOGIN;
CREATE ROLE igny8_acct_free LOGIN;
CREATE ROLE igny8_acct_bypass LOGIN BYPASSRLS;

-- bad input: nothing is bound
SELECT show_error($$SELECT igny8_grant_usage(NULL, 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_a', -1)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_bypass', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_no_such_role', 601)$$);
SELECT show_error($$SELECT igny8_unbind_usage('igny8_acct_free')$$);
SELECT show_error($$SELECT igny8_unbind_usage(NULL)$$);
SELECT count(*) AS bound FROM igny8_account_roles;

-- one role bound to account 601, one unbound (the one-argument call)
SELECT igny8_grant_usage('igny8_acct_a', 601);
SELECT igny8_grant_usage('igny8_acct_free');
SELECT role, account_id FROM igny8_account_roles ORDER BY role::text;

-- the bound role is charged to its account, whatever it omits
SET ROLE igny8_acct_a;
SELECT igny8_bound_account();
SELECT igny8_generate_text('Bound one', 'gpt-4');
SELECT igny8_generate_text('Bound two', 'gpt-4', account_id => 601);
SELECT content FROM igny8_chat('[{"role": "user", "content": "Bound chat"}]', 'gpt-4');
-- naming another account is refused (42501), by argument, option or setting
SELECT show_error($$SELECT igny8_generate_text('Other', 'gpt-4', account_id => 602)$$);
SELECT show_error($$SELECT igny8_chat('[{"role": "user", "content": "Other"}]', 'gpt-4', '{"account_id": 602}')$$);
SELECT show_error($$SELECT igny8_submit_text('Other', 'gpt-4', '{"account_id": 602}')$$);
SELECT show_error($$SELECT igny8_generate_image('Other', 'dall-e-3', '1024x1024', '{"account_id": 602}')$$);
SELECT show_error($$SELECT * FROM igny8_generate_images('Other', 'dall-e-3', '1024x1024', 2, '{"account_id": 602}')$$);
SELECT show_error($$SELECT * FROM igny8_generate_text_batch(ARRAY['Other'], 'gpt-4', '{"account_id": 602}')$$);
SELECT show_error($$SELECT igny8_submit_image('Other', 'dall-e-3', '1024x1024', '{"account_id": 602}')$$);
SELECT show_error($$SELECT igny8_submit_batch(ARRAY['Other'], 'gpt-4', '{"account_id": 602}')$$);
SET igny8_ai.account_id = 602;
SELECT show_error($$SELECT igny8_generate_text('Other', 'gpt-4')$$);
SET igny8_ai.account_id = 601;
SELECT igny8_generate_text('Bound setting', 'gpt-4');
RESET igny8_ai.account_id;
SELECT igny8_submit_text('Bound job', 'gpt-4') AS job_a \gset
RESET ROLE;
SELECT r.state, j.account_id FROM igny8_wait_job(:job_a, '60 s') r JOIN igny8_jobs j USING (id);

-- the unbound role passes any account, as before
SET ROLE igny8_acct_free;
SELECT igny8_bound_account() IS NULL AS unbound;
SELECT igny8_generate_text('Free', 'gpt-4', account_id => 602);
SELECT igny8_generate_text('Free none', 'gpt-4');
SELECT igny8_submit_text('Free job', 'gpt-4', '{"account_id": 602}') AS job_free \gset
RESET ROLE;
SELECT state FROM igny8_wait_job(:job_free, '60 s');

-- what was charged where
SELECT account_id, count(*) FROM ai_usage_log GROUP BY account_id ORDER BY account_id;

-- the bound role reads only its account's usage rows and jobs
SET ROLE igny8_acct_a;
SELECT account_id, count(*) FROM ai_usage_log GROUP BY account_id ORDER BY account_id;
SELECT account_id, count(*) FROM igny8_jobs GROUP BY account_id;
SELECT replace(show_error(format('SELECT igny8_job(%s)', :job_free)), :job_free::text, 'N') AS show_error;
-- and its cost per account (with the caller's rights) is only its own
SELECT account_id, attempts
  FROM igny8_cost_by_account(now() - interval '1 hour', now() + interval '1 hour');
RESET ROLE;

-- the unbound role reads every account's usage rows (and its own jobs)
SET ROLE igny8_acct_free;
SELECT account_id, count(*) FROM ai_usage_log GROUP BY account_id ORDER BY account_id;
SELECT account_id, count(*) FROM igny8_jobs GROUP BY account_id;
RESET ROLE;

-- a binding changed elsewhere reaches a session that already asked
SELECT dblink_connect('other', 'dbname=' || current_database());
SELECT dblink_exec('other', 'SET ROLE igny8_acct_a');
SELECT * FROM dblink('other', 'SELECT igny8_bound_account()') AS t(account bigint);
SELECT igny8_grant_usage('igny8_acct_a', 603);
SELECT * FROM dblink('other', 'SELECT igny8_bound_account()') AS t(account bigint);
SELECT igny8_unbind_usage('igny8_acct_a');
SELECT * FROM dblink('other', 'SELECT igny8_bound_account() IS NULL') AS t(unbound boolean);
SELECT * FROM dblink('other', $$SELECT igny8_generate_text('Unbound now', 'gpt-4', account_id => 602)$$) AS t(answer text);
SELECT dblink_disconnect('other');

DELETE FROM igny8_jobs;
DELETE FROM igny8_account_roles;
DROP OWNED BY igny8_acct_a, igny8_acct_free, igny8_acct_bypass;
DROP ROLE igny8_acct_a;
DROP ROLE igny8_acct_free;
DROP ROLE igny8_acct_bypass;
