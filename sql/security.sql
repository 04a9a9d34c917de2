--
-- security: keys never leak; functions are not for PUBLIC; a grant helper
--
TRUNCATE ai_usage_log;

-- the OpenAI simulator echoes the received key in its 401 message; it is
-- redacted in the error detail and the usage log
UPDATE igny8_providers SET api_key_ref = 'sk-wrong-key-abcdefghijklmnop' WHERE id = 'openai';
SELECT show_error($$SELECT igny8_generate_text('Leak? [[sim ollama:status=404]] [[sim anthropic:status=404]]', 'gpt-4')$$);
SELECT provider, error_message FROM ai_usage_log ORDER BY id;
SELECT count(*) AS leaks FROM ai_usage_log
 WHERE error_message LIKE '%abcdefghijklmnop%';
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

DROP OWNED BY igny8_app;
DROP ROLE igny8_app;
DROP ROLE igny8_nobody;
