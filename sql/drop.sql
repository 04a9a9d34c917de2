--
-- drop: DROP EXTENSION leaves no pg_cron job behind
--
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

-- and it can be created again, with its schedule
CREATE EXTENSION igny8_ai;
SELECT jobname, schedule FROM cron.job;
DROP EXTENSION igny8_ai;
SELECT count(*) AS jobs FROM cron.job;
