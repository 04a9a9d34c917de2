--
-- bad_input: every refusal is a clear error, and leaves nothing behind
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
\set VERBOSITY default
TRUNCATE ai_usage_log;

-- prompt
SELECT igny8_generate_text(NULL, 'gpt-4');
SELECT igny8_generate_text('', 'gpt-4');
SELECT igny8_generate_text(E'  \n\t ', 'gpt-4');
-- blank is what a provider calls blank (Anthropic: Python's isspace), the
-- Unicode spaces and the ASCII separators included
SELECT igny8_generate_text(U&'\00A0\00A0', 'gpt-4');
SELECT igny8_generate_text(U&'\3000\2003\205F\2028\0085\1680\202F', 'gpt-4');
SELECT igny8_generate_text(E'\x1c\x1d\x1e\x1f ', 'gpt-4');
SELECT igny8_submit_text(U&'\2009', 'gpt-4');
SELECT igny8_generate_text(repeat('x', 2 * 1024 * 1024), 'gpt-4');
SET igny8_ai.max_prompt_size = '1kB';
SELECT igny8_generate_text(repeat('x', 2000), 'gpt-4');
RESET igny8_ai.max_prompt_size;

-- model alias
SELECT igny8_generate_text('Hello', NULL);
SELECT igny8_generate_text('Hello', '');
SELECT igny8_generate_text('Hello', repeat('m', 100));
SELECT igny8_generate_text('Hello', 'gpt-5-ultra');
INSERT INTO igny8_models (alias, provider_id, provider_model, enabled)
VALUES ('disabled-alias', 'self_hosted_ai', 'qwen3:8b', false);
SELECT igny8_generate_text('Hello', 'disabled-alias');
-- a disabled provider disables its deployments
INSERT INTO igny8_providers (id, kind, base_url, enabled)
VALUES ('spare', 'ollama', 'http://127.0.0.1:1', false);
INSERT INTO igny8_models (alias, provider_id, provider_model)
VALUES ('spare-alias', 'spare', 'qwen3:8b');
SELECT igny8_generate_text('Hello', 'spare-alias');
-- an image alias cannot serve text
INSERT INTO igny8_models (alias, provider_id, provider_model, task)
VALUES ('image-alias', 'openai', 'dall-e-3', 'image');
SELECT igny8_generate_text('Hello', 'image-alias');
DELETE FROM igny8_models WHERE alias IN ('disabled-alias', 'spare-alias', 'image-alias');
DELETE FROM igny8_providers WHERE id = 'spare';

-- max_tokens, temperature, timeout
SELECT igny8_generate_text('Hello', 'gpt-4', max_tokens => 0);
SELECT igny8_generate_text('Hello', 'gpt-4', max_tokens => -5);
SELECT igny8_generate_text('Hello', 'gpt-4', temperature => -0.1);
SELECT igny8_generate_text('Hello', 'gpt-4', temperature => 2.5);
SELECT igny8_generate_text('Hello', 'gpt-4', temperature => 'NaN');
SELECT igny8_generate_text('Hello', 'gpt-4', timeout => '0 s');
SELECT igny8_generate_text('Hello', 'gpt-4', timeout => '-1 s');

-- account: a bigint that is not negative, however it is given
SET igny8_ai.account_id = 'abc';
SET igny8_ai.account_id = '12x';
SET igny8_ai.account_id = '-5';
SELECT igny8_generate_text('Hello', 'gpt-4', account_id => -1);
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"account_id": -1}');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"account_id": 1.5}');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"account_id": 9223372036854775808}');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"account_id": "7"}');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"max_tokens": 1e400}');

-- messages
SELECT igny8_chat(NULL, 'gpt-4');
SELECT igny8_chat('{"role":"user","content":"Hi"}', 'gpt-4');
SELECT igny8_chat('[]', 'gpt-4');
SELECT igny8_chat('[1]', 'gpt-4');
SELECT igny8_chat('[{"content":"Hi"}]', 'gpt-4');
SELECT igny8_chat('[{"role":"robot","content":"Hi"}]', 'gpt-4');
SELECT igny8_chat('[{"role":"user","content":42}]', 'gpt-4');
SELECT igny8_chat('[{"role":"system","content":"Only a system prompt"}]', 'gpt-4');
-- an empty or blank content, but in a last assistant message
SELECT igny8_chat('[{"role":"user","content":""}]', 'gpt-4');
SELECT igny8_chat('[{"role":"system","content":"  "},{"role":"user","content":"Hi"}]', 'gpt-4');
SELECT igny8_chat('[{"role":"user","content":"Hi"},{"role":"assistant","content":""},{"role":"user","content":"Again"}]', 'gpt-4');
SELECT igny8_submit_chat('[{"role":"user","content":"Hi"},{"role":"user","content":"\n"}]', 'gpt-4');
SELECT igny8_chat('not json', 'gpt-4');
SELECT igny8_chat('[{"role":"user","content":"\u3000\u00a0"}]', 'gpt-4');
SELECT igny8_chat('[{"role":"user","content":"Hi"},{"role":"user","content":"\u001f\u2028"}]', 'gpt-4');
-- a conversation with nothing in it at all
SELECT igny8_chat('[{"role":"assistant","content":""}]', 'gpt-4');
SELECT igny8_chat('[{"role":"assistant","content":" \u3000 "}]', 'gpt-4');
-- a message has role and content only: another key is not dropped silently
SELECT igny8_chat('[{"role":"user","content":"Hi","name":"bob"}]', 'gpt-4');
SELECT igny8_chat('[{"role":"user","content":"What is in it?","images":["iVBORw0KGgo="]}]', 'gpt-4');
SELECT igny8_chat('[{"role":"assistant","content":"","tool_calls":[]},{"role":"user","content":"Hi"}]', 'gpt-4');
SELECT igny8_chat(jsonb_build_array(jsonb_build_object('role', 'user', 'content', 'Hi', repeat('k', 100), 1)), 'gpt-4');
-- however deep a message nests, the error says what is wrong with it
SELECT igny8_chat(('[{"role":"user","content":"Hi","extra":' || repeat('[', 2000)
                   || repeat(']', 2000) || '}]')::jsonb, 'gpt-4');
SELECT igny8_chat(('[{"role":"user","content":' || repeat('[', 2000)
                   || repeat(']', 2000) || '}]')::jsonb, 'gpt-4');
-- the request over igny8_ai.max_prompt_size: its size is that of the
-- request as sent (messages as JSON text, and options), measured even for
-- the messages past the limit, which are not copied
SET igny8_ai.max_prompt_size = '1kB';
SELECT igny8_chat(jsonb_build_array(jsonb_build_object('role', 'user', 'content', repeat('x', 5000))), 'gpt-4');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4',
                  jsonb_build_object('max_tokens', 5, 'padding', repeat('x', 5000)));
SELECT show_error(format('SELECT igny8_chat(%L, %L, %L)',
                         jsonb_build_array(jsonb_build_object('role', 'user', 'content', a),
                                           jsonb_build_object('role', 'assistant', 'content', b)),
                         'gpt-4', '{"max_tokens": 5}')) AS error,
       octet_length('{"messages":[{"role":"user","content":' || to_json(a)::text
                    || '},{"role":"assistant","content":' || to_json(b)::text
                    || '}],"max_tokens":5}') AS request_bytes
  FROM (VALUES (repeat(E'\x01', 300), E'tab\t "quote" back\\slash \x1f\n\r\b\f é'),
               (repeat('x', 2000), E'tab\t "quote" back\\slash \x1f\n\r\b\f é')) AS v(a, b);
RESET igny8_ai.max_prompt_size;

-- options
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '[]');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"max_token": 5}');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"max_tokens": 0}');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"max_tokens": 1.5}');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"max_tokens": "5"}');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"temperature": 3}');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"timeout": 0}');
-- numbers beyond a double's range name their option
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"temperature": 1e400}');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"timeout": -1e400}');
SELECT igny8_chat('[{"role":"user","content":"Hi"}]', 'gpt-4', '{"timeout": 1e-400}');

-- a provider whose key reference cannot be resolved: the error names the
-- provider and the reference, never a key
INSERT INTO igny8_providers (id, kind, base_url, api_key_ref, priority)
VALUES ('keyless', 'openai', current_setting('igny8_test.openai_url'),
        'env:IGNY8_NO_SUCH_VARIABLE', 1),
       ('keyfile', 'anthropic', current_setting('igny8_test.anthropic_url'),
        'file:/nonexistent/igny8/key', 1);
INSERT INTO igny8_models (alias, provider_id, provider_model)
VALUES ('keyless-alias', 'keyless', 'gpt-4'),
       ('keyfile-alias', 'keyfile', 'claude-3-5-haiku-latest');
SELECT igny8_generate_text('Hello', 'keyless-alias');
SELECT igny8_generate_text('Hello', 'keyfile-alias');
DELETE FROM igny8_providers WHERE id IN ('keyless', 'keyfile');

-- configuration is checked too
\set VERBOSITY terse
INSERT INTO igny8_providers (id, kind, base_url) VALUES ('ftp', 'ollama', 'ftp://example.com');
INSERT INTO igny8_providers (id, kind, base_url) VALUES ('nokind', 'gemini', 'http://127.0.0.1:1');
INSERT INTO igny8_providers (id, kind, base_url) VALUES ('Bad Id', 'ollama', 'http://127.0.0.1:1');
INSERT INTO igny8_models (alias, provider_id, provider_model) VALUES ('x', 'nosuch', 'm');
INSERT INTO igny8_models (alias, provider_id, provider_model, max_tokens) VALUES ('x', 'openai', 'm', 0);
-- aliases and models are limited in bytes, as the shared memory holds them
INSERT INTO igny8_models (alias, provider_id, provider_model) VALUES (repeat('é', 40), 'openai', 'm');
INSERT INTO igny8_models (alias, provider_id, provider_model) VALUES ('x', 'openai', repeat('é', 64));
INSERT INTO igny8_models (alias, provider_id, provider_model, queue_timeout) VALUES ('x', 'openai', 'm', '-1 s');
INSERT INTO igny8_fallbacks VALUES ('gpt-4', 9, 'gpt-4');
\set VERBOSITY default

-- a refused call leaves no memory behind in the backend: the JSON trees of
-- its arguments live in the call's memory, not in malloc'd memory that an
-- error would leak.  3000 calls refused after parsing 64 kB of messages
-- each would leak hundreds of megabytes; the resident size grows by less
-- than 30 MB
CREATE TEMP TABLE rss (at text, kb bigint);
CREATE FUNCTION backend_rss_kb() RETURNS bigint LANGUAGE sql AS $$
    SELECT (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'),
                         'VmRSS:\s+(\d+) kB'))[1]::bigint
$$;
INSERT INTO rss VALUES ('before', backend_rss_kb());
DO $$
DECLARE
    msgs jsonb := jsonb_build_array(
        jsonb_build_object('role', 'user', 'content', repeat('cloud ', 10000)),
        jsonb_build_object('role', 'robot', 'content', 'refused'));
BEGIN
    FOR i IN 1..3000 LOOP
        BEGIN
            PERFORM igny8_chat(msgs, 'gpt-4');
        EXCEPTION WHEN invalid_parameter_value THEN
            NULL;
        END;
    END LOOP;
END
$$;
INSERT INTO rss VALUES ('after', backend_rss_kb());
SELECT (SELECT kb FROM rss WHERE at = 'after') - (SELECT kb FROM rss WHERE at = 'before')
       < 30 * 1024 AS no_leak;
DROP FUNCTION backend_rss_kb();

-- nothing was attempted, nothing was logged, nothing was left configured
SELECT count(*) AS usage_rows FROM ai_usage_log;
SELECT count(*) AS providers FROM igny8_providers;
SELECT count(*) AS models FROM igny8_models;
