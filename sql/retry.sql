--
-- retry: transient errors are retried on the same deployment with backoff,
-- honouring retry-after, then fall back
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- Ollama busy once (503): retried, then answered by Ollama itself
SELECT igny8_generate_text('Busy [[sim ollama:status=503 times=1 key=r1]]', 'gpt-4');
SELECT * FROM attempts;

-- OpenAI rate-limited once with retry-after: 1 s; the retry waits for it
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Rate limited [[sim ollama:status=404]] [[sim openai:status=429 retry_after=1 times=1 key=r2]]',
                           'gpt-4');
SELECT * FROM attempts;
SELECT (max(created_at) - min(created_at)) >= interval '0.9 s' AS waited
  FROM ai_usage_log WHERE provider = 'openai';

-- Anthropic overloaded (529) twice, then answers; its retry-after: 0 is
-- not taken (protocols.md 3.3: only 0 < wait <= 60 s), the retries back
-- off (at least 0.375 s, then 0.75 s)
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Overloaded [[sim ollama:status=404]] [[sim openai:status=404]] [[sim anthropic:status=529 retry_after=0 times=2 key=r3]]',
                           'gpt-4-turbo');
SELECT * FROM attempts;
SELECT (max(created_at) - min(created_at)) >= interval '1 s' AS backed_off
  FROM ai_usage_log WHERE provider = 'anthropic';

-- a 500 that persists: the retries (igny8_ai.max_retries = 2) are spent,
-- then the next candidate answers
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Broken [[sim ollama:status=500 retry_after=0]]', 'gpt-4');
SELECT * FROM attempts;

-- a connection dropped mid-body is retried once
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Dropped [[sim ollama:drop times=1 key=r4]]', 'gpt-4');
SELECT * FROM attempts;

-- malformed JSON from a 200 is retried, then falls back
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Garbage [[sim ollama:malformed]] [[sim openai:malformed times=1 key=r5]]',
                           'gpt-4');
SELECT * FROM attempts;

-- a retry that would pass the deadline is not made
TRUNCATE ai_usage_log;
SELECT show_error($$SELECT igny8_generate_text('Too late [[sim ollama:status=404]] [[sim openai:status=429 retry_after=30]] [[sim anthropic:status=404]]',
                                             'gpt-4-turbo', timeout => '3 s')$$);
SELECT * FROM attempts;
-- nor one that would leave less than an attempt's minimum (100 ms) before
-- it: the next candidate is tried at once
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Nearly too late [[sim ollama:status=404]] [[sim openai:status=429 retry_after=2.95]]',
                           'gpt-4-turbo', timeout => '3 s');
SELECT * FROM attempts;

-- a call's own short timeout says nothing about the provider: a backend
-- that answers in 2 s is not failing for calls that allow 1 s
SELECT igny8_generate_text('Healthy first', 'gpt-4') IS NOT NULL AS answered;
SELECT show_error($$SELECT igny8_generate_text('Slow one [[sim ollama:delay=2]]', 'gpt-4', timeout => '1 s')$$);
SELECT show_error($$SELECT igny8_generate_text('Slow two [[sim ollama:delay=2]]', 'gpt-4', timeout => '1 s')$$);
SELECT state, consecutive_failures FROM igny8_service_status WHERE provider = 'self_hosted_ai';
-- the deployment's own timeout does count
INSERT INTO igny8_models (alias, provider_id, provider_model, timeout)
VALUES ('slow-local', 'self_hosted_ai', 'qwen3:8b', '1 s');
SELECT wait_for_config();
SELECT show_error($$SELECT igny8_generate_text('Slow three [[sim ollama:delay=2]]', 'slow-local', timeout => '30 s')$$);
SELECT state, consecutive_failures FROM igny8_service_status WHERE provider = 'self_hosted_ai';
DELETE FROM igny8_models WHERE alias = 'slow-local';
SELECT igny8_generate_text('Healthy again', 'gpt-4') IS NOT NULL AS answered;
