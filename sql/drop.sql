--
-- drop: DROP EXTENSION, or DROP SCHEMA ... CASCADE of its schema, leaves
-- nothing behind in pg_cron (neither the job nor the trigger on cron.job
-- that lets a restore bring the job back; after DROP SCHEMA the job's next
-- run removes it); a DROP of another schema or role does not touch cron.job
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
-- the prelude's view of the usage log is not the extension's
DROP VIEW attempts;
SELECT igny8_set_health_schedule('* * * * *') IS NOT NULL AS scheduled;
SELECT count(*) AS jobs FROM cron.job WHERE jobname = 'igny8_ai_health_check';

-- a role bound to an account, as a new connection sees it (every
-- backend reads one shared copy of igny8_account_roles)
CREATE ROLE igny8_drop_app;
SELECT igny8_grant_usage('igny8_drop_app', 701);
CREATE FUNCTION bound_elsewhere() RETURNS bigint LANGUAGE sql AS $$
    SELECT account FROM dblink('dbname=' || current_database(),
        'SET ROLE igny8_drop_app; SELECT igny8_bound_account()') AS t(account bigint)
$$;
SELECT bound_elsewhere() AS bound;

-- a DROP that is rolled back keeps the job, and the binding
BEGIN;
DROP EXTENSION igny8_ai;
ROLLBACK;
SELECT count(*) AS jobs FROM cron.job WHERE jobname = 'igny8_ai_health_check';
SELECT bound_elsewhere() AS still_bound;

DROP EXTENSION igny8_ai;
SELECT count(*) AS jobs FROM cron.job;
SELECT count(*) AS objects_left FROM pg_proc WHERE proname LIKE 'igny8%';
SELECT count(*) AS triggers_on_cron_job FROM pg_trigger
 WHERE tgrelid = 'cron.job'::regclass AND NOT tgisinternal
   AND tgname LIKE 'igny8%';

-- and it can be created again, with its schedule (the prelude of the next
-- test file creates it again anyway)
CREATE EXTENSION igny8_ai;
SELECT jobname, schedule, active FROM cron.job;
-- with a new igny8_account_roles: the role is bound no more
SELECT bound_elsewhere() IS NULL AS unbound;
DROP EXTENSION igny8_ai;
DROP FUNCTION bound_elsewhere();
DROP OWNED BY igny8_drop_app;
DROP ROLE igny8_drop_app;
SELECT count(*) AS jobs FROM cron.job;

-- in a schema whose name must be quoted: the health job's command, the
-- grants and the workers name it right
CREATE SCHEMA "Igny8 AI";
CREATE EXTENSION igny8_ai SCHEMA "Igny8 AI";
SELECT command FROM cron.job WHERE jobname = 'igny8_ai_health_check';
CREATE ROLE igny8_quoted_app;
SELECT "Igny8 AI".igny8_grant_usage('igny8_quoted_app');
SELECT "Igny8 AI".igny8_grant_monitoring('igny8_quoted_app');
SELECT "Igny8 AI".igny8_grant_worker('igny8_quoted_app');
SELECT has_function_privilege('igny8_quoted_app',
           '"Igny8 AI".igny8_chat(jsonb, text, jsonb)', 'EXECUTE') AS can_chat,
       has_table_privilege('igny8_quoted_app', '"Igny8 AI".igny8_service_status', 'SELECT') AS can_monitor;
\set VERBOSITY terse
SELECT "Igny8 AI".igny8_generate_text('Hello', 'no-such-alias');
\set VERBOSITY default
DROP EXTENSION igny8_ai;
DROP OWNED BY igny8_quoted_app;
DROP ROLE igny8_quoted_app;
DROP SCHEMA "Igny8 AI";
SELECT count(*) AS jobs FROM cron.job;

-- DROP SCHEMA ... CASCADE of the extension's schema drops the extension,
-- and with it the job and the trigger on cron.job; a DROP of another
-- extension or schema keeps both as they were
CREATE SCHEMA ai;
CREATE EXTENSION igny8_ai SCHEMA ai;
SELECT ai.igny8_set_health_schedule('*/3 * * * *') IS NOT NULL AS scheduled;
CREATE EXTENSION citext;
CREATE SCHEMA unrelated;
DROP EXTENSION citext;
-- a DROP SCHEMA takes no lock on cron.job (the pg_cron launcher and
-- cron.schedule() go on while its transaction is open)
BEGIN;
DROP SCHEMA unrelated;
SELECT count(*) AS cron_job_locks FROM pg_locks
 WHERE relation = 'cron.job'::regclass AND pid = pg_backend_pid();
COMMIT;
-- a role that is no superuser drops an extension and a schema of its own
-- (the event triggers write cron.job with the rights of the extension's
-- owner)
CREATE ROLE igny8_drop_dbo;
GRANT CREATE ON DATABASE contrib_regression TO igny8_drop_dbo;
SET ROLE igny8_drop_dbo;
CREATE SCHEMA dbo_own;
CREATE EXTENSION citext SCHEMA dbo_own;
DROP EXTENSION citext;
DROP SCHEMA dbo_own;
RESET ROLE;
REVOKE CREATE ON DATABASE contrib_regression FROM igny8_drop_dbo;
DROP ROLE igny8_drop_dbo;
BEGIN;
CREATE ROLE igny8_drop_owner;
DROP OWNED BY igny8_drop_owner;
DROP ROLE igny8_drop_owner;
COMMIT;
SELECT jobid = ai.igny8_health_job_id() AS same_job, jobname, schedule, command, active
  FROM cron.job;
SELECT count(*) AS triggers_on_cron_job FROM pg_trigger
 WHERE tgrelid = 'cron.job'::regclass AND NOT tgisinternal
   AND tgname LIKE 'igny8%';
SET client_min_messages = warning;
DROP SCHEMA ai CASCADE;
RESET client_min_messages;
SELECT count(*) AS triggers_on_cron_job FROM pg_trigger
 WHERE tgrelid = 'cron.job'::regclass AND NOT tgisinternal
   AND tgname LIKE 'igny8%';
-- the job is left to its next run, which finds igny8_health_job() gone and
-- unschedules it (run here as pg_cron would)
SELECT count(*) AS jobs FROM cron.job;
SELECT command FROM cron.job WHERE jobid = 8800000000000001 \gexec
SELECT count(*) AS jobs FROM cron.job;

-- a job left behind with its fixed id (a schema dropped before the drop
-- took the job with it) runs the new schema's function after CREATE
-- EXTENSION, and after igny8_set_health_schedule
SELECT cron.schedule('igny8_ai_health_check', '*/7 * * * *', 'SELECT gone.igny8_health_job()') AS made \gset
UPDATE cron.job SET jobid = 8800000000000001 WHERE jobid = :made;
CREATE SCHEMA ai2;
CREATE EXTENSION igny8_ai SCHEMA ai2;
SELECT jobid = ai2.igny8_health_job_id() AS same_job, schedule, command, active FROM cron.job;
UPDATE cron.job SET command = 'SELECT gone.igny8_health_job()';
SELECT ai2.igny8_set_health_schedule(NULL) IS NULL AS stopped;
SELECT schedule, command, active FROM cron.job;
UPDATE cron.job SET command = 'SELECT gone.igny8_health_job()';
SELECT ai2.igny8_set_health_schedule('*/2 * * * *') IS NOT NULL AS scheduled;
SELECT schedule, command, active FROM cron.job;
DROP EXTENSION igny8_ai;
DROP SCHEMA ai2;
SELECT count(*) AS jobs FROM cron.job;
