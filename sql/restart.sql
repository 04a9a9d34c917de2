--
-- restart: a worker that exits is restarted by the postmaster; the
-- requests it held fail with a clear error instead of waiting for ever,
-- and the next calls are served
--
SELECT dblink_connect('held', 'dbname=' || current_database());
SELECT dblink_send_query('held',
    $$SELECT igny8_generate_text('Held [[sim ollama:delay=30 tag=rs]]', 'gpt-4')$$);
SELECT sim_wait_arrival('rs');
SELECT count(pg_terminate_backend(pid)) AS terminated
  FROM pg_stat_activity WHERE backend_type = 'igny8_ai worker';
SELECT * FROM dblink_get_result('held') AS t(answer text);
SELECT * FROM dblink_get_result('held') AS t(answer text);
SELECT dblink_disconnect('held');

-- the workers come back and serve again
SELECT wait_for_workers() AS workers;
SELECT igny8_generate_text('After the restart', 'gpt-4');
