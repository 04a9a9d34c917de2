--
-- install: the extension's objects, the seed configuration it ships, and
-- the health schedule; the prelude that every test file includes has
-- created the extension and pointed the providers at the simulator
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
SELECT extname, extrelocatable FROM pg_extension
 WHERE extname IN ('igny8_ai', 'pg_cron') ORDER BY 1;

-- the seed's configuration ships as default rows; the providers were
-- edited by the prelude (base_url), so their origin says so
SELECT id, kind, api_key_ref, priority, enabled, max_concurrent, origin
  FROM igny8_providers ORDER BY priority DESC, id;
SELECT alias, provider_id, provider_model, task, workflow, timeout, queue_timeout,
       max_tokens, origin
  FROM igny8_models ORDER BY task DESC, alias, provider_id;
SELECT name, (SELECT count(*) FROM jsonb_object_keys(graph)) AS nodes,
       (SELECT string_agg(k, ' ' ORDER BY k) FROM jsonb_object_keys(bindings) k) AS bound,
       defaults, origin
  FROM igny8_workflows ORDER BY name;
SELECT alias, position, fallback_alias, origin
  FROM igny8_fallbacks ORDER BY alias, position;

-- the health check is scheduled every minute as one pg_cron job with a
-- fixed id; the prelude stopped it (the tests run it by hand), which keeps
-- the job, inactive
SELECT jobid = igny8_health_job_id() AS fixed_id, jobname, schedule, command,
       database = current_database() AS here, active
  FROM cron.job;

-- both workers are connected and run the current configuration
SELECT worker, pid IS NOT NULL AS running, in_flight, queued, config_current
  FROM igny8_worker_status() ORDER BY worker;
SELECT state, slots FROM igny8_slot_status();

-- nothing the extension made is executable or readable by PUBLIC, but
-- igny8_bound_account() and igny8_in_worker(): the row-level security
-- policies call them for whoever reads ai_usage_log or igny8_jobs (the
-- planner may call them before the table's privileges are checked), and
-- they tell a role only its own binding, and whether it is a worker
SELECT p.proname
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'igny8_ai'
 WHERE has_function_privilege('public', p.oid, 'EXECUTE')
 ORDER BY 1;
SELECT c.relname
  FROM pg_class c JOIN pg_depend d ON d.objid = c.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'igny8_ai'
 WHERE c.relkind IN ('r', 'v') AND has_table_privilege('public', c.oid, 'SELECT')
 ORDER BY 1;

-- every function of the extension written in SQL or PL/pgSQL runs with a
-- fixed search_path
SELECT p.proname, p.proconfig
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'igny8_ai'
 WHERE p.prolang <> (SELECT oid FROM pg_language WHERE lanname = 'c')
   AND p.proconfig IS DISTINCT FROM '{"search_path=pg_catalog, pg_temp"}'
 ORDER BY 1;
