--
-- chat: igny8_chat with messages, options, and the composite it returns
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
SELECT content, thinking, provider, model, input_tokens, output_tokens, cost,
       finish_reason, cached
  FROM igny8_chat(
    '[{"role":"system","content":"You write for a content platform."},
      {"role":"user","content":"Write a tagline about clouds"}]',
    'gpt-3.5-turbo');

SELECT content, provider, model, input_tokens, output_tokens, cost,
       duration_ms >= 0 AS timed, request_id IS NOT NULL AS has_id, attempts,
       finish_reason, cached
  FROM igny8_chat('[{"role":"user","content":"Hello"}]', 'gpt-4',
                  '{"max_tokens": 3, "temperature": 0.7, "timeout": 30, "account_id": 99}');

-- the request id is the usage log's; an account id above 2^53 is kept
-- exactly (it is read as a numeric, never through a double)
SELECT request_id FROM igny8_chat('[{"role":"user","content":"Which id?"}]', 'gpt-4',
                                  '{"account_id": 9007199254740993}') \gset
SELECT provider, account_id, task_type, success FROM ai_usage_log
 WHERE request_id = :'request_id';

-- (f(...)).* in the select list runs f once per column (PostgreSQL
-- expands it to (f(...)).content, (f(...)).thinking, ...): 12 calls.  In
-- FROM it runs once
SELECT count(*) AS usage_rows_before FROM ai_usage_log \gset
SELECT (igny8_chat('[{"role":"user","content":"Once per column"}]', 'gpt-4')).* \gset
SELECT count(*) - :usage_rows_before AS calls_made FROM ai_usage_log;
SELECT count(*) AS usage_rows_before FROM ai_usage_log \gset
SELECT * FROM igny8_chat('[{"role":"user","content":"Once"}]', 'gpt-4') \gset
SELECT count(*) - :usage_rows_before AS calls_made FROM ai_usage_log;
SELECT count(*) AS usage_rows_before FROM ai_usage_log \gset
SELECT t.n, c.content IS NOT NULL AS answered
  FROM (VALUES (1), (2)) t(n)
  CROSS JOIN LATERAL igny8_chat(jsonb_build_array(jsonb_build_object(
      'role', 'user', 'content', 'Row ' || t.n)), 'gpt-4') c;
SELECT count(*) - :usage_rows_before AS calls_made FROM ai_usage_log;

-- a conversation with assistant turns goes through as it is
SELECT igny8_chat(
    '[{"role":"user","content":"Hi [[sim ollama:tag=c1]]"},
      {"role":"assistant","content":"Hello!"},
      {"role":"user","content":"Tell me about clouds"}]', 'gpt-4') AS answer \gset
SELECT (:'answer'::igny8_completion).content;
SELECT sim('log --tag c1 --field body');

-- Anthropic: system messages go to the top-level "system" field, text
-- blocks are joined, max_tokens is always sent
UPDATE igny8_providers SET enabled = false WHERE id IN ('self_hosted_ai', 'openai');
SELECT content, provider, model, finish_reason FROM igny8_chat(
    '[{"role":"system","content":"Be brief. [[sim anthropic:tag=c2]]"},
      {"role":"user","content":"Hi"}]', 'gpt-4');
SELECT sim('log --tag c2 --field body');
SELECT h->>'x-api-key' AS api_key, h->>'anthropic-version' AS version,
       h->>'content-type' AS content_type
  FROM (SELECT sim('log --tag c2 --field headers')::jsonb AS h) s;
-- Anthropic counts the cached part of a prompt apart (here 5 tokens read
-- from the cache and 2 written to it, the rest uncached): input_tokens is
-- the whole prompt, as many as the same prompt without a cache
SELECT 'cached' AS prompt, input_tokens, output_tokens FROM igny8_chat(
    '[{"role":"user","content":"A prompt of ten words, most of them from cache [[sim anthropic:cache_read=5 cache_creation=2]]"}]',
    'gpt-4')
UNION ALL
SELECT 'uncached', input_tokens, output_tokens FROM igny8_chat(
    '[{"role":"user","content":"A prompt of ten words, most of them from cache"}]',
    'gpt-4');
-- OpenAI: Bearer key and usage
UPDATE igny8_providers SET enabled = true WHERE id = 'openai';
SELECT content, provider, model, input_tokens, output_tokens FROM igny8_chat(
    '[{"role":"user","content":"Hi [[sim openai:tag=c3]]"}]', 'gpt-4');
SELECT sim('log --tag c3 --field body');
SELECT sim('log --tag c3 --field headers')::jsonb->>'authorization' AS authorization;
UPDATE igny8_providers SET enabled = true WHERE id = 'self_hosted_ai';
-- a last assistant message may be empty (the others may not): sent as it is
SELECT content IS NOT NULL AS answered, provider FROM igny8_chat(
    '[{"role":"user","content":"Hi [[sim ollama:tag=c4]]"},{"role":"assistant","content":""}]', 'gpt-4');
SELECT sim('log --tag c4 --field body')::jsonb->'messages' AS sent;
-- Anthropic refuses a last assistant turn that ends with whitespace: it is
-- sent without it
SELECT provider, content IS NOT NULL AS answered FROM igny8_chat(
    '[{"role":"user","content":"Hi [[sim ollama:status=404]] [[sim openai:status=404]] [[sim anthropic:tag=c5]]"},{"role":"assistant","content":"Well, "}]',
    'gpt-4-fallback');
SELECT sim('log --role anthropic --tag c5 --field body')::jsonb->'messages'->1 AS sent;

-- igny8_ai.max_prompt_size limits the request as sent, the messages as
-- JSON text: thirty short messages fit in 1kB, although their jsonb is
-- larger than that
SET igny8_ai.max_prompt_size = '1kB';
SELECT pg_column_size(m) > 1024 AS stored_larger,
       (SELECT content FROM igny8_chat(m, 'gpt-4')) AS content
  FROM (SELECT jsonb_agg(jsonb_build_object('role', 'user', 'content',
                         CASE WHEN i < 30 THEN 'Hi' ELSE 'Hi [[sim ollama:reply=fits]]' END)
                         ORDER BY i) AS m
          FROM generate_series(1, 30) i) s;
RESET igny8_ai.max_prompt_size;
