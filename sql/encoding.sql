--
-- encoding: provider text that is not valid UTF-8, or holds a NUL, in
-- every field.  An answer (content, thinking) is malformed: retried once,
-- then the next candidate; never stored, returned or cut short.  Labels
-- (model, finish reason, error text) are stored cleaned: each byte that is
-- not UTF-8 becomes U+FFFD or '?', a NUL a space, and a long name is cut
-- at a character boundary.  Everything stored is valid in the database
-- encoding, so a COPY of the usage log reads back.
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- the answer itself: invalid UTF-8, then a NUL, from each protocol
SELECT igny8_generate_text('Bad answer [[sim ollama:badutf8=content]]', 'gpt-4');
SELECT * FROM attempts;
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('NUL answer [[sim ollama:nul=content]]', 'gpt-4');
SELECT * FROM attempts;
TRUNCATE ai_usage_log;
SELECT igny8_generate_text('Bad answers [[sim ollama:status=404]] [[sim openai:badutf8=content]]', 'gpt-4');
SELECT igny8_generate_text('NUL answers [[sim ollama:status=404]] [[sim openai:nul=content]]', 'gpt-4');
SELECT show_error($$SELECT igny8_generate_text('Bad answers [[sim ollama:status=404]] [[sim openai:status=404]] [[sim anthropic:badutf8=content]]', 'gpt-4')$$);
SELECT show_error($$SELECT igny8_generate_text('NUL answers [[sim ollama:status=404]] [[sim openai:status=404]] [[sim anthropic:nul=content]]', 'gpt-4')$$);
SELECT provider, success, error_message FROM ai_usage_log WHERE NOT success ORDER BY id;

-- the reasoning trace is part of the answer: the same
TRUNCATE ai_usage_log;
SELECT content, thinking, provider FROM igny8_chat(
    '[{"role":"user","content":"Think [[sim ollama:badutf8=thinking]]"}]', 'gpt-4');
SELECT content, thinking, provider FROM igny8_chat(
    '[{"role":"user","content":"Think [[sim ollama:nul=thinking]]"}]', 'gpt-4');
SELECT provider, success, error_message FROM ai_usage_log WHERE NOT success ORDER BY id;

-- labels are kept, cleaned
TRUNCATE ai_usage_log;
SELECT provider, model, finish_reason FROM igny8_chat(
    '[{"role":"user","content":"Label [[sim ollama:badutf8=model]]"}]', 'gpt-4');
SELECT provider, model, finish_reason FROM igny8_chat(
    '[{"role":"user","content":"Label [[sim ollama:nul=model]]"}]', 'gpt-4');
SELECT provider, model, finish_reason FROM igny8_chat(
    '[{"role":"user","content":"Label [[sim ollama:badutf8=finish]]"}]', 'gpt-4');
SELECT provider, model, finish_reason FROM igny8_chat(
    '[{"role":"user","content":"Label [[sim ollama:nul=finish]]"}]', 'gpt-4');
-- a model name of 201 bytes is cut inside the limit of 127, at a character
SELECT octet_length(model) AS bytes, model ~ '^mé+$' AS whole_characters
  FROM igny8_chat('[{"role":"user","content":"Long [[sim ollama:long_model=100]]"}]', 'gpt-4');
SELECT octet_length(model_used) AS bytes FROM ai_usage_log ORDER BY id DESC LIMIT 1;
-- error text
SELECT igny8_generate_text('Error text [[sim ollama:status=404 badutf8=error]]', 'gpt-4');
SELECT igny8_generate_text('Error text [[sim ollama:status=404 nul=error]]', 'gpt-4');
SELECT provider, model_used, error_message FROM ai_usage_log ORDER BY id;

-- whatever was stored is valid text: the usage log goes out and back in
CREATE TEMP TABLE usage_copy (LIKE ai_usage_log);
\set usage_file `echo "$IGNY8_SIM_STATE/../usage.copy"`
COPY (SELECT * FROM ai_usage_log) TO :'usage_file';
COPY usage_copy FROM :'usage_file';
SELECT (SELECT count(*) FROM usage_copy) = (SELECT count(*) FROM ai_usage_log) AS copied_back;
