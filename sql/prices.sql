--
-- prices: igny8_prices, and the cost of each attempt, call and job
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- the shipped prices: external models only, per 1M tokens or per image
SELECT provider, model, unit, size, quality, price, valid_from, valid_to, origin
  FROM igny8_prices ORDER BY provider, model, unit, size, quality;

-- self-hosted: no price, cost 0
SELECT provider, model, input_tokens, output_tokens, cost
  FROM igny8_chat('[{"role": "user", "content": "Four words on clouds"}]', 'gpt-4');

-- the self-hosted answer fails, OpenAI's gpt-4 answers: 30 USD per 1M input
-- tokens, 60 per 1M output tokens; the simulator counts 4 and 9 tokens:
-- 4 * 30 / 1e6 + 9 * 60 / 1e6 = 0.00012 + 0.00054 = 0.000660
SELECT provider, model, input_tokens, output_tokens, cost
  FROM igny8_chat('[{"role": "user", "content": "Priced [[sim ollama:status=404]] one two three"}]', 'gpt-4');
SELECT provider, model_used, input_tokens, output_tokens, cost FROM ai_usage_log ORDER BY id;

-- OpenAI's cached tokens at their own price (gpt-4 has none shipped: one
-- for the test): 4 tokens, all cached, at 15 USD per 1M:
-- 4 * 15 / 1e6 + 9 * 60 / 1e6 = 0.00006 + 0.00054 = 0.000600
INSERT INTO igny8_prices (provider, model, unit, price)
VALUES ('openai', 'gpt-4', 'per_1m_cached_input_tokens', 15);
SELECT wait_for_config();
SELECT provider, input_tokens, output_tokens, cost
  FROM igny8_chat('[{"role": "user", "content": "Cached [[sim ollama:status=404]] [[sim openai:cached=4]] one two three"}]', 'gpt-4');
DELETE FROM igny8_prices WHERE unit = 'per_1m_cached_input_tokens' AND model = 'gpt-4';

-- Anthropic's cache reads and writes, each at its own price: 6 prompt
-- tokens, 4 read from the cache (0.10 USD per 1M), 2 written to it (1.25),
-- none plain (1.00), and 9 output tokens (5.00):
-- 4 * 0.10 / 1e6 + 2 * 1.25 / 1e6 + 9 * 5 / 1e6 = 0.0000479, rounded to
-- 0.000048 (at the input price it would be 0.000051)
SELECT provider, model, input_tokens, output_tokens, cost
  FROM igny8_chat('[{"role": "user", "content": "Anthropic [[sim ollama:status=404]] [[sim openai:status=403]] [[sim anthropic:cache_read=4 cache_creation=2]] one two three four five"}]',
                  'gpt-3.5-turbo');
SELECT provider, model_used, input_tokens, output_tokens, cost FROM ai_usage_log
 WHERE provider = 'anthropic' ORDER BY id;

-- a price from tomorrow does not change today's cost: still 0.000660
UPDATE igny8_prices SET valid_to = date_trunc('day', now()) + interval '1 day'
 WHERE provider = 'openai' AND model = 'gpt-4' AND unit = 'per_1m_input_tokens';
INSERT INTO igny8_prices (provider, model, unit, price, valid_from)
VALUES ('openai', 'gpt-4', 'per_1m_input_tokens', 100, date_trunc('day', now()) + interval '1 day');
SELECT wait_for_config();
SELECT provider, input_tokens, output_tokens, cost
  FROM igny8_chat('[{"role": "user", "content": "Priced [[sim ollama:status=404]] one two three"}]', 'gpt-4');

-- a price from now on (100 USD per 1M input tokens): the call costs
-- 4 * 100 / 1e6 + 9 * 60 / 1e6 = 0.000940 (an attempt in flight when a
-- price changes: costs.sql)
DELETE FROM igny8_prices WHERE provider = 'openai' AND model = 'gpt-4'
   AND unit = 'per_1m_input_tokens' AND valid_from > now();
UPDATE igny8_prices SET valid_to = now()
 WHERE provider = 'openai' AND model = 'gpt-4' AND unit = 'per_1m_input_tokens';
INSERT INTO igny8_prices (provider, model, unit, price, valid_from)
VALUES ('openai', 'gpt-4', 'per_1m_input_tokens', 100, now());
SELECT wait_for_config();
SELECT provider, input_tokens, output_tokens, cost
  FROM igny8_chat('[{"role": "user", "content": "Priced [[sim ollama:status=404]] one two three"}]', 'gpt-4');
-- back to the shipped price
DELETE FROM igny8_prices WHERE provider = 'openai' AND model = 'gpt-4'
   AND unit = 'per_1m_input_tokens' AND price = 100;
UPDATE igny8_prices SET valid_to = NULL
 WHERE provider = 'openai' AND model = 'gpt-4' AND unit = 'per_1m_input_tokens';

-- images: by size and quality (dall-e-3 1024x1024 standard 0.04, 1792x1024
-- hd 0.12; dall-e-2 512x512, any quality, 0.018)
SELECT wait_for_config();
SELECT provider, model, width, height, cost
  FROM igny8_generate_image('A lighthouse', 'dall-e-3-fallback', '1024x1024');
SELECT provider, model, width, height, cost
  FROM igny8_generate_image('A lighthouse', 'dall-e-3-fallback', '1792x1024', '{"quality": "hd"}');
SELECT provider, model, width, height, cost
  FROM igny8_generate_image('A lighthouse', 'dall-e-2-fallback', '512x512');
SELECT provider, model_used, images, image_width, image_height, cost
  FROM ai_usage_log WHERE task_type = 'image' ORDER BY id;

-- a submitted job: its cost is its attempts' (0 for the failed
-- self-hosted one, 0.000660 for OpenAI's)
SELECT igny8_submit_text('Job [[sim ollama:status=404]] one two three', 'gpt-4') AS job \gset
SELECT state, provider, input_tokens, output_tokens, cost FROM igny8_wait_job(:job);

-- bad prices are refused: negative, an unknown unit (per 1K, per token),
-- an empty validity, a size on a token price, a bad size, a validity
-- overlapping the shipped price's, and an unknown provider
INSERT INTO igny8_prices (provider, model, unit, price)
VALUES ('openai', 'gpt-5', 'per_1m_input_tokens', -1);
INSERT INTO igny8_prices (provider, model, unit, price)
VALUES ('opnai', 'gpt-5', 'per_1m_input_tokens', 1);
INSERT INTO igny8_prices (provider, model, unit, price)
VALUES ('openai', 'gpt-5', 'per_1k_input_tokens', 0.03);
INSERT INTO igny8_prices (provider, model, unit, price)
VALUES ('openai', 'gpt-5', 'per_token', 0.0015);
INSERT INTO igny8_prices (provider, model, unit, price, valid_from, valid_to)
VALUES ('openai', 'gpt-5', 'per_1m_input_tokens', 1, '2026-01-01', '2026-01-01');
INSERT INTO igny8_prices (provider, model, unit, size, price)
VALUES ('openai', 'gpt-5', 'per_1m_input_tokens', '1024x1024', 1);
INSERT INTO igny8_prices (provider, model, unit, size, price)
VALUES ('openai', 'dall-e-3', 'per_image', 'big', 1);
INSERT INTO igny8_prices (provider, model, unit, price, valid_from)
VALUES ('openai', 'gpt-4', 'per_1m_input_tokens', 40, '2026-06-01');
-- closing the old price first, then opening the new one, in one transaction
BEGIN;
INSERT INTO igny8_prices (provider, model, unit, price, valid_from)
VALUES ('openai', 'gpt-4', 'per_1m_output_tokens', 70, '2030-01-01');
UPDATE igny8_prices SET valid_to = '2030-01-01'
 WHERE provider = 'openai' AND model = 'gpt-4' AND unit = 'per_1m_output_tokens'
   AND valid_from = '-infinity';
COMMIT;
SELECT unit, price, valid_from, valid_to FROM igny8_prices
 WHERE provider = 'openai' AND model = 'gpt-4' ORDER BY unit, valid_from;
DELETE FROM igny8_prices WHERE provider = 'openai' AND model = 'gpt-4'
   AND valid_from = '2030-01-01';
UPDATE igny8_prices SET valid_to = NULL
 WHERE provider = 'openai' AND model = 'gpt-4' AND unit = 'per_1m_output_tokens';
SELECT wait_for_config();

-- two transactions that each add one of two overlapping prices: the later
-- to commit fails, under REPEATABLE READ (whose snapshot does not show the
-- other's price) with 40001, under READ COMMITTED with 23P01
SELECT dblink_connect('price_a', 'dbname=' || current_database());
SELECT dblink_connect('price_b', 'dbname=' || current_database());
SELECT dblink_exec('price_a', 'BEGIN ISOLATION LEVEL REPEATABLE READ');
SELECT dblink_exec('price_b', 'BEGIN ISOLATION LEVEL REPEATABLE READ');
SELECT * FROM dblink('price_a', $$SELECT count(*) FROM igny8_prices WHERE model = 'gpt-race'$$) AS t(n bigint);
SELECT * FROM dblink('price_b', $$SELECT count(*) FROM igny8_prices WHERE model = 'gpt-race'$$) AS t(n bigint);
SELECT dblink_exec('price_a', $$INSERT INTO igny8_prices (provider, model, unit, price, valid_from)
                               VALUES ('openai', 'gpt-race', 'per_1m_input_tokens', 1, '2026-01-01')$$);
SELECT dblink_exec('price_b', $$INSERT INTO igny8_prices (provider, model, unit, price, valid_from)
                               VALUES ('openai', 'gpt-race', 'per_1m_input_tokens', 2, '2027-01-01')$$);
SELECT dblink_exec('price_a', 'COMMIT');
SELECT show_error($$SELECT dblink_exec('price_b', 'COMMIT')$$);
SELECT dblink_exec('price_a', 'BEGIN');
SELECT dblink_exec('price_b', 'BEGIN');
SELECT dblink_exec('price_a', $$INSERT INTO igny8_prices (provider, model, unit, price, valid_from)
                               VALUES ('openai', 'gpt-race', 'per_1m_output_tokens', 1, '2026-01-01')$$);
SELECT dblink_exec('price_b', $$INSERT INTO igny8_prices (provider, model, unit, price, valid_from)
                               VALUES ('openai', 'gpt-race', 'per_1m_output_tokens', 2, '2027-01-01')$$);
SELECT dblink_exec('price_a', 'COMMIT');
SELECT show_error($$SELECT dblink_exec('price_b', 'COMMIT')$$);
SELECT dblink_disconnect('price_a');
SELECT dblink_disconnect('price_b');
SELECT unit, price, valid_from, valid_to FROM igny8_prices
 WHERE model = 'gpt-race' ORDER BY unit, valid_from;
-- a role that may write prices (with what the other checks of a price
-- need) needs no right for the overlap check, and gains none on the table
-- the writers take turns on
CREATE ROLE igny8_price_writer;
GRANT USAGE ON SCHEMA public TO igny8_price_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON igny8_prices TO igny8_price_writer;
GRANT SELECT ON igny8_providers TO igny8_price_writer;
GRANT SELECT, DELETE ON igny8_config_deletions TO igny8_price_writer;
GRANT EXECUTE ON FUNCTION igny8_config_key(text, jsonb), igny8_config_key_columns(text)
    TO igny8_price_writer;
SET ROLE igny8_price_writer;
INSERT INTO igny8_prices (provider, model, unit, price, valid_from)
VALUES ('openai', 'gpt-race', 'per_1m_cached_input_tokens', 1, '2026-01-01');
INSERT INTO igny8_prices (provider, model, unit, price, valid_from)
VALUES ('openai', 'gpt-race', 'per_1m_cached_input_tokens', 2, '2027-01-01');
SELECT unit, price, valid_from FROM igny8_prices
 WHERE model = 'gpt-race' AND unit = 'per_1m_cached_input_tokens';
SELECT show_error($$UPDATE igny8_overlap_turns SET turns = 0$$);
SELECT show_error($$SELECT igny8_overlap_turn('igny8_prices')$$);
RESET ROLE;
DELETE FROM igny8_prices WHERE model = 'gpt-race';
DROP OWNED BY igny8_price_writer;
DROP ROLE igny8_price_writer;
SELECT wait_for_config();
