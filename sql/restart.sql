--
-- restart: a worker that exits is restarted by the postmaster; the
-- requests it held fail with a clear error instead of waiting for ever,
-- and the next calls are served
--
SELECT dblink_connect('held', 'dbname=' || current_database());
SELECT dblink_send_query('held',
    $$SELECT igny8_generate_text('Held [[sim ollama:delay=30 tag=rs]]', 'gpt-4')$$);
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT line FROM sim('log --tag rs --count') AS line) <> '0';
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT count(pg_terminate_backend(pid)) AS terminated
  FROM pg_stat_activity WHERE backend_type = 'igny8_ai worker';
SELECT * FROM dblink_get_result('held') AS t(answer text);
SELECT * FROM dblink_get_result('held') AS t(answer text);
SELECT dblink_disconnect('held');

-- the workers come back (bounded wait) and serve again
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN (SELECT count(*) FROM pg_stat_activity
                    WHERE backend_type = 'igny8_ai worker') = 2;
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT count(*) AS workers FROM pg_stat_activity WHERE backend_type = 'igny8_ai worker';
SELECT igny8_generate_text('After the restart', 'gpt-4');
