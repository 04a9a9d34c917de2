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

-- a DROP that is rolled back keeps the job
BEGIN;
DROP EXTENSION igny8_ai;
ROLLBACK;
SELECT count(*) AS jobs FROM cron.job WHERE jobname = 'igny8_ai_health_check';

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
DROP EXTENSION igny8_ai;
SELECT count(*) AS jobs FROM cron.job;
