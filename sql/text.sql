--
-- text: igny8_generate_text answered by the self-hosted (Ollama) provider
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
SELECT igny8_generate_text('Write a 100-word article about clouds', 'gpt-4');

-- the default model is gpt-4
SELECT igny8_generate_text('Write about rain');

-- one usage row per attempt, with tokens, provider-side model and status
SELECT provider, task_type, model_alias, model_used, input_tokens,
       output_tokens, cost, http_status, success, error_message, attempt,
       account_id, duration_ms >= 0 AS timed, prompt IS NULL AS no_prompt
  FROM ai_usage_log ORDER BY id;

-- what Ollama received: stream false, num_predict from the deployment's cap,
-- keep_alive and think from the settings, the system prompt first
SELECT igny8_generate_text('Describe fog [[sim ollama:tag=t1]]', 'gpt-3.5-turbo',
                           max_tokens => 50, temperature => 0.2,
                           system => 'You are terse.');
SELECT sim('log --tag t1 --field body');

-- max_tokens above the deployment cap is capped (gpt-3.5-turbo: 4000)
SELECT igny8_generate_text('Cap me [[sim ollama:tag=t2]]', 'gpt-3.5-turbo',
                           max_tokens => 100000) IS NOT NULL AS answered;
SELECT sim('log --tag t2 --field body');

-- the answer is cut at num_predict words
SELECT igny8_generate_text('Short [[sim ollama:reply=one_two_three_four_five_six]]',
                           'gpt-4', max_tokens => 3);

-- a timeout longer than any deadline saturates instead of overflowing
SELECT igny8_generate_text('Patient [[sim ollama:reply=done]]', 'gpt-4',
                           timeout => '100000000 years');

-- account attribution: argument, else igny8_ai.account_id
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Account by argument', 'gpt-4', account_id => 7) IS NOT NULL AS ok;
SET igny8_ai.account_id = 42;
SELECT igny8_generate_text('Account by setting', 'gpt-4') IS NOT NULL AS ok;
BEGIN;
SET LOCAL igny8_ai.account_id = 43;
SELECT igny8_generate_text('Account by SET LOCAL', 'gpt-4') IS NOT NULL AS ok;
COMMIT;
SELECT igny8_generate_text('Argument wins', 'gpt-4', account_id => 8) IS NOT NULL AS ok;
RESET igny8_ai.account_id;
SELECT igny8_generate_text('No account', 'gpt-4') IS NOT NULL AS ok;
SELECT account_id FROM ai_usage_log ORDER BY id;

-- thinking: the three shapes Ollama may send; content never carries it
SELECT content, thinking FROM igny8_chat(
    '[{"role":"user","content":"Think [[sim ollama:think=field]]"}]', 'gpt-4');
SELECT content, thinking FROM igny8_chat(
    '[{"role":"user","content":"Think [[sim ollama:think=inline]]"}]', 'gpt-4');
SELECT content, thinking FROM igny8_chat(
    '[{"role":"user","content":"Think [[sim ollama:think=empty]]"}]', 'gpt-4');

-- a model that refuses "think" is retried once without it
UPDATE igny8_models SET settings = '{"think": true}' WHERE alias = 'gpt-3.5-turbo-fast';
SELECT igny8_generate_text('No thinking here [[sim ollama:nothinksupport tag=t3]]',
                           'gpt-3.5-turbo-fast');
SELECT sim('log --tag t3 --field status');
UPDATE igny8_models SET settings = '{"think": false}' WHERE alias = 'gpt-3.5-turbo-fast';

-- prompts and outputs are stored only when igny8_ai.log_content is on
SELECT count(*) FILTER (WHERE prompt IS NOT NULL OR response IS NOT NULL) AS stored
  FROM ai_usage_log;
