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

-- Anthropic overloaded (529) twice, then answers
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Overloaded [[sim ollama:status=404]] [[sim openai:status=404]] [[sim anthropic:status=529 retry_after=0 times=2 key=r3]]',
                           'gpt-4-turbo');
SELECT * FROM attempts;

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
