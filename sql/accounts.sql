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
-- members of such a role, or of the tables' owner, can SET ROLE to it
CREATE ROLE igny8_acct_via_bypass LOGIN IN ROLE igny8_acct_bypass;
CREATE ROLE igny8_acct_owner NOLOGIN;
CREATE ROLE igny8_acct_via_owner LOGIN IN ROLE igny8_acct_owner;
ALTER TABLE igny8_jobs OWNER TO igny8_acct_owner;

-- bad input: nothing is bound
SELECT show_error($$SELECT igny8_grant_usage(NULL, 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_a', -1)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_bypass', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_via_bypass', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_via_owner', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_no_such_role', 601)$$);
SELECT show_error($$SELECT igny8_unbind_usage('igny8_acct_free')$$);
SELECT show_error($$SELECT igny8_unbind_usage(NULL)$$);
SELECT count(*) AS bound FROM igny8_account_roles;
ALTER TABLE igny8_jobs OWNER TO CURRENT_USER;

-- one role bound to account 601, one unbound (the one-argument call)
SELECT igny8_grant_usage('igny8_acct_a', 601);
SELECT igny8_grant_usage('igny8_acct_free');
SELECT role, account_id FROM igny8_account_roles ORDER BY role::text;
-- a role that can SET ROLE to igny8_acct_free (unbound: it reads every
-- account's rows), or that has CREATEROLE, is not bound either
CREATE ROLE igny8_acct_via_free LOGIN IN ROLE igny8_acct_free;
CREATE ROLE igny8_acct_creator LOGIN CREATEROLE;
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_via_free', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_creator', 601)$$);
SELECT count(*) AS bound FROM igny8_account_roles;
DROP ROLE igny8_acct_via_free;
DROP ROLE igny8_acct_creator;
-- nor one that can SET ROLE to a role that may call or submit and is not
-- bound to the same account: there it names any account, or none (no
-- budget), though it reads nothing
CREATE ROLE igny8_acct_caller NOLOGIN;
GRANT EXECUTE ON FUNCTION igny8_chat(jsonb, text, jsonb) TO igny8_acct_caller;
CREATE ROLE igny8_acct_submitter NOLOGIN;
GRANT EXECUTE ON FUNCTION igny8_submit_image(text, text, text, jsonb) TO igny8_acct_submitter;
CREATE ROLE igny8_acct_via_caller LOGIN IN ROLE igny8_acct_caller;
CREATE ROLE igny8_acct_via_submitter LOGIN IN ROLE igny8_acct_submitter;
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_via_caller', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_via_submitter', 601)$$);
SELECT count(*) AS bound FROM igny8_account_roles;
-- a caller bound to the same account is no way out
SELECT igny8_grant_usage('igny8_acct_caller', 601);
SELECT igny8_grant_usage('igny8_acct_via_caller', 601);
SELECT igny8_unbind_usage('igny8_acct_via_caller');
SELECT igny8_unbind_usage('igny8_acct_caller');
DROP OWNED BY igny8_acct_caller, igny8_acct_submitter, igny8_acct_via_caller;
DROP ROLE igny8_acct_via_caller, igny8_acct_via_submitter, igny8_acct_caller, igny8_acct_submitter;
-- nor one that reads past row security (the WAL, the data files) or can
-- change the bindings, itself or through a role it can SET ROLE to
CREATE ROLE igny8_acct_repl LOGIN REPLICATION;
CREATE ROLE igny8_acct_files LOGIN IN ROLE pg_read_server_files;
CREATE ROLE igny8_acct_writer LOGIN IN ROLE pg_write_server_files;
CREATE ROLE igny8_acct_program NOLOGIN IN ROLE pg_execute_server_program;
CREATE ROLE igny8_acct_via_program LOGIN IN ROLE igny8_acct_program;
CREATE ROLE igny8_acct_rebinder LOGIN;
GRANT UPDATE ON igny8_account_roles TO igny8_acct_rebinder;
-- (a column grant is enough to rebind; TRIGGER runs code as the next binder)
CREATE ROLE igny8_acct_colupd LOGIN;
GRANT UPDATE (account_id) ON igny8_account_roles TO igny8_acct_colupd;
CREATE ROLE igny8_acct_trigger LOGIN;
GRANT TRIGGER ON igny8_account_roles TO igny8_acct_trigger;
-- (a trigger on the log sees every account's rows)
CREATE ROLE igny8_acct_logtrigger LOGIN;
GRANT TRIGGER ON ai_usage_log TO igny8_acct_logtrigger;
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_repl', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_files', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_writer', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_via_program', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_rebinder', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_colupd', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_trigger', 601)$$);
SELECT show_error($$SELECT igny8_grant_usage('igny8_acct_logtrigger', 601)$$);
SELECT count(*) AS bound FROM igny8_account_roles;
-- without those, the same role binds
REVOKE UPDATE ON igny8_account_roles FROM igny8_acct_rebinder;
SELECT igny8_grant_usage('igny8_acct_rebinder', 601);
SELECT igny8_unbind_usage('igny8_acct_rebinder');
DROP OWNED BY igny8_acct_rebinder, igny8_acct_colupd, igny8_acct_trigger, igny8_acct_logtrigger;
DROP ROLE igny8_acct_repl, igny8_acct_files, igny8_acct_writer, igny8_acct_via_program, igny8_acct_program,
    igny8_acct_rebinder, igny8_acct_colupd, igny8_acct_trigger, igny8_acct_logtrigger;

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
SELECT replace(show_error(format('SELECT igny8_job(%s)', :job_free)), 'job ' || :job_free || ' ', 'job N ') AS show_error;
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

-- Every backend reads one shared copy of igny8_account_roles: a new
-- connection (dblink) sees what was committed before it asked, nothing
-- uncommitted; the transaction that changes a binding sees its own change;
-- a rollback leaves the committed binding.
CREATE FUNCTION bound_elsewhere(r text) RETURNS bigint LANGUAGE sql AS $$
    SELECT account FROM dblink('dbname=' || current_database(),
        format('SET ROLE %I; SELECT igny8_bound_account()', r)) AS t(account bigint)
$$;
SELECT igny8_grant_usage('igny8_acct_a', 604);
SELECT bound_elsewhere('igny8_acct_a') AS new_connection, bound_elsewhere('igny8_acct_free') AS free;
BEGIN;
SELECT igny8_grant_usage('igny8_acct_a', 605);
SELECT bound_elsewhere('igny8_acct_a') AS new_connection_before_commit;
SET LOCAL ROLE igny8_acct_a;
SELECT igny8_bound_account() AS own_transaction;
ROLLBACK;
SELECT bound_elsewhere('igny8_acct_a') AS after_rollback;
SET ROLE igny8_acct_a;
SELECT igny8_bound_account() AS this_session;
RESET ROLE;
-- other rows on both sides of the role in the copy, changed without
-- igny8_grant_usage: the trigger announces any change
INSERT INTO igny8_account_roles (role, account_id)
SELECT o::oid::regrole, 700 + g
  FROM generate_series(1, 5) g,
       LATERAL (VALUES ('igny8_acct_a'::regrole::oid::bigint - 1000 + g),
                       ('igny8_acct_a'::regrole::oid::bigint + 1000 + g)) v(o);
SELECT bound_elsewhere('igny8_acct_a') AS among_others;
UPDATE igny8_account_roles SET account_id = 606 WHERE role = 'igny8_acct_a'::regrole;
SELECT bound_elsewhere('igny8_acct_a') AS updated;
-- a change applied as a logical replication subscriber applies it
-- (session_replication_role = replica) is announced too (ENABLE ALWAYS)
SET session_replication_role = replica;
UPDATE igny8_account_roles SET account_id = 607 WHERE role = 'igny8_acct_a'::regrole;
RESET session_replication_role;
SELECT bound_elsewhere('igny8_acct_a') AS applied_as_replica;
UPDATE igny8_account_roles SET account_id = 606 WHERE role = 'igny8_acct_a'::regrole;
-- more bindings than the shared copy holds (1024): every backend reads the
-- table itself, with the same answers
INSERT INTO igny8_account_roles (role, account_id)
SELECT (4000000000 - g)::oid::regrole, 800 FROM generate_series(1, 1100) g;
SELECT bound_elsewhere('igny8_acct_a') AS too_many_for_the_copy,
       bound_elsewhere('igny8_acct_free') AS free;
-- ... and a change made then is seen as well
UPDATE igny8_account_roles SET account_id = 608 WHERE role = 'igny8_acct_a'::regrole;
SELECT bound_elsewhere('igny8_acct_a') AS changed_while_too_many;
UPDATE igny8_account_roles SET account_id = 606 WHERE role = 'igny8_acct_a'::regrole;
DELETE FROM igny8_account_roles WHERE account_id >= 700;
SELECT bound_elsewhere('igny8_acct_a') AS back_in_the_copy;
TRUNCATE igny8_account_roles;
SELECT bound_elsewhere('igny8_acct_a') AS after_truncate;
DROP FUNCTION bound_elsewhere(text);

DELETE FROM igny8_jobs;
DELETE FROM igny8_account_roles;
DROP OWNED BY igny8_acct_a, igny8_acct_free, igny8_acct_bypass;
DROP ROLE igny8_acct_a;
DROP ROLE igny8_acct_free;
DROP ROLE igny8_acct_via_bypass;
DROP ROLE igny8_acct_bypass;
DROP ROLE igny8_acct_via_owner;
DROP ROLE igny8_acct_owner;
