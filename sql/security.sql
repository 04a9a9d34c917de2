--
-- security: keys never leak; functions are not for PUBLIC; a grant helper
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- A database owner who is not a superuser can create objects in public
-- (PostgreSQL 15), the extension's schema.  An operator there that matches
-- argument types better than pg_catalog's would run, as whoever runs the
-- query, every time a worker (which connects as the bootstrap superuser)
-- ran unqualified SQL.  The workers set search_path to pg_catalog, the
-- extension's schema, pg_temp, and name everything: the trap never runs.
CREATE ROLE igny8_owner LOGIN;
SELECT current_user AS admin \gset
ALTER DATABASE contrib_regression OWNER TO igny8_owner;
SET ROLE igny8_owner;
CREATE FUNCTION public.igny8_trap(numeric, integer) RETURNS numeric
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.current_setting('is_superuser') OPERATOR(pg_catalog.=) 'on' THEN
        EXECUTE 'ALTER ROLE igny8_owner SUPERUSER';
    END IF;
    RETURN $1 OPERATOR(pg_catalog.*) $2;
END
$$;
CREATE OPERATOR public.* (LEFTARG = numeric, RIGHTARG = integer,
                          FUNCTION = public.igny8_trap);
CREATE FUNCTION public.igny8_trap(text, integer) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.current_setting('is_superuser') OPERATOR(pg_catalog.=) 'on' THEN
        EXECUTE 'ALTER ROLE igny8_owner SUPERUSER';
    END IF;
    RETURN false;
END
$$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = integer,
                          FUNCTION = public.igny8_trap);
RESET ROLE;
-- a configuration commit makes the workers reload; calls, probes and the
-- scheduled job run their SQL too
UPDATE igny8_providers SET enabled = enabled;
SELECT wait_for_config();
SELECT igny8_generate_text('After the trap was set', 'gpt-4');
SELECT count(*) AS probed FROM igny8_check_health();
SELECT igny8_health_job();
SELECT rolsuper AS owner_became_superuser FROM pg_roles WHERE rolname = 'igny8_owner';
-- the trap is live: unqualified SQL run by a superuser springs it
SELECT 1.5 * 2 AS springs_the_trap;
SELECT rolsuper AS owner_became_superuser FROM pg_roles WHERE rolname = 'igny8_owner';
ALTER ROLE igny8_owner NOSUPERUSER;
DROP OPERATOR public.* (numeric, integer);
DROP OPERATOR public.= (text, integer);
DROP FUNCTION public.igny8_trap(numeric, integer);
DROP FUNCTION public.igny8_trap(text, integer);
ALTER DATABASE contrib_regression OWNER TO :"admin";
DROP ROLE igny8_owner;

-- the OpenAI simulator echoes the received key in its 401 message; it is
-- redacted in the error detail and the usage log
UPDATE igny8_providers SET api_key_ref = 'sk-wrong-key-abcdefghijklmnop' WHERE id = 'openai';
SELECT show_error($$SELECT igny8_generate_text('Leak? [[sim ollama:status=404]] [[sim anthropic:status=404]]', 'gpt-4')$$);
SELECT provider, error_message FROM ai_usage_log ORDER BY id;
SELECT count(*) AS leaks FROM ai_usage_log
 WHERE error_message LIKE '%abcdefghijklmnop%';
UPDATE igny8_providers SET api_key_ref = 'env:OPENAI_API_KEY' WHERE id = 'openai';

-- a literal key (api_key_ref holding the key itself) that cannot be used
-- is never shown: errors, usage rows, health rows and the provider state
-- say "(literal key)"
UPDATE igny8_providers SET api_key_ref = E'sk-literal-secret-0042\x01' WHERE id = 'openai';
TRUNCATE ai_usage_log, service_health_log;
SELECT show_error($$SELECT igny8_generate_text('Literal [[sim ollama:status=404]] [[sim anthropic:status=404]]', 'gpt-4')$$);
SELECT provider, healthy, detail FROM igny8_check_health() WHERE provider = 'openai';
SELECT count(*) AS leaks
  FROM (SELECT error_message AS t FROM ai_usage_log
        UNION ALL SELECT detail::text FROM service_health_log
        UNION ALL SELECT last_error FROM igny8_health_state()) s
 WHERE t LIKE '%literal-secret%';
UPDATE igny8_providers SET api_key_ref = 'env:OPENAI_API_KEY' WHERE id = 'openai';

-- a key read from a file
\set keyfile `echo "$IGNY8_TEST_KEY_FILE"`
COPY (SELECT 'sk-ant-test-0123456789') TO :'keyfile';
UPDATE igny8_providers SET api_key_ref = 'file:' || :'keyfile' WHERE id = 'anthropic';
SELECT provider FROM igny8_chat('[{"role":"user","content":"File key [[sim ollama:status=404]] [[sim openai:status=404]]"}]',
                                'gpt-4');
UPDATE igny8_providers SET api_key_ref = 'env:ANTHROPIC_API_KEY' WHERE id = 'anthropic';

-- generation functions are not executable by PUBLIC
CREATE ROLE igny8_app LOGIN;
CREATE ROLE igny8_nobody LOGIN;
SET ROLE igny8_nobody;
SELECT igny8_generate_text('Hello', 'gpt-4');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4');
SELECT api_key_ref FROM igny8_providers;
SELECT count(*) FROM ai_usage_log;
UPDATE igny8_providers SET base_url = 'http://evil.example' WHERE id = 'openai';
RESET ROLE;

-- the helper grants them to an application role
SELECT igny8_grant_usage('igny8_app');
SET ROLE igny8_app;
SELECT igny8_generate_text('Hello from the app', 'gpt-4');
SELECT provider FROM igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4');
-- ... which still cannot see keys or change providers
SELECT api_key_ref FROM igny8_providers;
UPDATE igny8_providers SET base_url = 'http://evil.example' WHERE id = 'openai';
RESET ROLE;
SELECT igny8_grant_usage(NULL);

-- settings that only a superuser may change
SET ROLE igny8_app;
SET igny8_ai.max_prompt_size = '100MB';
SHOW igny8_ai.database;
RESET ROLE;

-- keys never reach pg_stat_activity: the workers show no query text
SELECT count(*) AS key_in_activity FROM pg_stat_activity
 WHERE query LIKE '%sk-test-openai%' AND pid <> pg_backend_pid();

-- redirects are not followed: a 302 from OpenAI is a failed attempt, and
-- the simulator saw no request at the Location it named
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Redirect [[sim ollama:status=404]] [[sim openai:redirect=/elsewhere tag=rd]]',
                           'gpt-4');
SELECT provider, http_status, success, error_message FROM ai_usage_log ORDER BY id;
SELECT sim('log --path /elsewhere --count') AS followed;

-- TLS is verified: a self-signed certificate is refused (no request gets
-- through), and trusted once the provider names it in settings.ca_file
UPDATE igny8_providers SET base_url = current_setting('igny8_test.openai_tls_url')
 WHERE id = 'openai';
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('TLS [[sim ollama:status=404]] [[sim openai:tag=tls1]]', 'gpt-4');
SELECT provider, http_status, success,
       error_message LIKE 'SSL certificate problem%' AS refused_certificate
  FROM ai_usage_log ORDER BY id;
SELECT sim('log --tag tls1 --role openai --count') AS reached_openai;
UPDATE igny8_providers
   SET settings = jsonb_build_object('ca_file', current_setting('igny8_test.work') || '/test/tmp/tls.crt')
 WHERE id = 'openai';
SELECT igny8_generate_text('TLS [[sim ollama:status=404]] [[sim openai:tag=tls2]]', 'gpt-4');
SELECT sim('log --tag tls2 --role openai --count') AS reached_openai;
UPDATE igny8_providers SET base_url = current_setting('igny8_test.openai_url'),
                           settings = '{}'
 WHERE id = 'openai';

-- a proxy's credentials stay out of errors and ai_usage_log: curl names
-- the proxy URL, password included, in some of its errors.  Also with '/'
-- and '@' in the password, and without a scheme (curl cannot parse those
-- either)
CREATE FUNCTION use_proxy(p text) RETURNS boolean LANGUAGE sql AS $$
    UPDATE igny8_providers SET settings = settings || jsonb_build_object('proxy', p)
     WHERE id = 'self_hosted_ai' RETURNING true;
$$;
TRUNCATE ai_usage_log;
SELECT use_proxy('http://proxyuser:s3cret-pw@[bad');
SELECT wait_for_config();
SELECT igny8_generate_text('Through a bad proxy', 'gpt-4') LIKE 'openai %' AS fell_back;
SELECT use_proxy('http://proxyuser:s3c/ret@pw@[bad');
SELECT wait_for_config();
SELECT igny8_generate_text('Through a bad proxy', 'gpt-4') LIKE 'openai %' AS fell_back;
SELECT use_proxy('proxyuser:s3#ret@[bad');
SELECT wait_for_config();
SELECT igny8_generate_text('Through a bad proxy', 'gpt-4') LIKE 'openai %' AS fell_back;
-- a password so long that curl cuts its message inside it
SELECT use_proxy('http://proxyuser:' || repeat('s3cretlong', 30) || '@[bad');
SELECT wait_for_config();
SELECT igny8_generate_text('Through a bad proxy', 'gpt-4') LIKE 'openai %' AS fell_back;
SELECT provider, error_message FROM ai_usage_log WHERE NOT success ORDER BY id;
-- a provider's proxy is used for every host: the server's NO_PROXY
-- (test/run sets NO_PROXY=127.0.0.1,localhost for this server) does not
-- route around it.  Through a proxy that is down the call falls back.
SELECT use_proxy(current_setting('igny8_test.dead_url'));
SELECT wait_for_config();
SELECT igny8_generate_text('Through a proxy that is down', 'gpt-4') LIKE 'openai %' AS fell_back;
SELECT provider, success, error_message FROM ai_usage_log ORDER BY id DESC LIMIT 2;
UPDATE igny8_providers SET settings = settings - 'proxy' WHERE id = 'self_hosted_ai';
SELECT wait_for_config();
DROP FUNCTION use_proxy(text);

DROP OWNED BY igny8_app;
DROP ROLE igny8_app;
DROP ROLE igny8_nobody;
