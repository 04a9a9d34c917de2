--
-- drop: DROP EXTENSION leaves nothing behind in pg_cron (neither the job
-- nor the trigger on cron.job that lets a restore bring the job back)
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
