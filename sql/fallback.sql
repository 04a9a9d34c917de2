--
-- fallback: self-hosted -> OpenAI -> Anthropic, and the caller-error stop
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- the self-hosted backend is down (port closed): OpenAI answers, and both
-- attempts are in the usage log
UPDATE igny8_providers SET base_url = current_setting('igny8_test.dead_url')
 WHERE id = 'self_hosted_ai';
SELECT igny8_generate_text('Write a 100-word article about clouds', 'gpt-4');
SELECT * FROM attempts;
SELECT count(DISTINCT request_id) AS requests FROM ai_usage_log;
UPDATE igny8_providers SET base_url = current_setting('igny8_test.ollama_url')
 WHERE id = 'self_hosted_ai';

-- Ollama lacks the model (404): no retry, straight to the fallback
TRUNCATE ai_usage_log;
UPDATE igny8_models SET provider_model = 'qwen3:235b' WHERE alias = 'gpt-4';
SELECT igny8_generate_text('Missing model', 'gpt-4');
SELECT * FROM attempts;
UPDATE igny8_models SET provider_model = 'qwen3:32b' WHERE alias = 'gpt-4';

-- OpenAI refuses the key (401): Anthropic answers; the key is not echoed
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Bad key [[sim ollama:status=500]] [[sim openai:status=401]]',
                           'gpt-4');
SELECT * FROM attempts;

-- OpenAI is out of quota (429 insufficient_quota): never retried
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Quota [[sim ollama:status=404]] [[sim openai:status=429 quota]]',
                           'gpt-4');
SELECT * FROM attempts;

-- everything fails: one error whose detail lists every attempt
TRUNCATE ai_usage_log;
SELECT show_error($$SELECT igny8_generate_text('Nothing works [[sim any:status=404]]', 'gpt-4')$$);
SELECT * FROM attempts;

-- a caller error (HTTP 400) stops at once: no other provider is tried
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Bad request [[sim ollama:status=400]]', 'gpt-4');
SELECT * FROM attempts;
-- ... at OpenAI and at Anthropic too (an ordinary 400, not the context one)
TRUNCATE ai_usage_log;
SELECT show_error($$SELECT igny8_generate_text('Bad request [[sim ollama:status=404]] [[sim openai:status=400]]', 'gpt-4')$$);
SELECT show_error($$SELECT igny8_generate_text('Bad request [[sim ollama:status=404]] [[sim openai:status=404]] [[sim anthropic:status=400]]', 'gpt-4-turbo')$$);
SELECT * FROM attempts;

-- a prompt longer than a deployment's context is that deployment's limit:
-- the next candidate is tried (it may have a larger window), from each
-- protocol's own wording of the error
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Too long [[sim ollama:status=400 context]] [[sim openai:status=400 context]]', 'gpt-4');
SELECT * FROM attempts;

-- the fallback chain follows fallback aliases recursively: gpt-4-turbo's
-- self-hosted model and both of its fallback deployments
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Chain [[sim ollama:status=404]] [[sim openai:status=403]]',
                           'gpt-4-turbo');
SELECT * FROM attempts;

-- chat through the fallback reports who answered
SELECT provider, model, content FROM igny8_chat(
    '[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi [[sim ollama:status=502]]"}]',
    'gpt-3.5-turbo');
