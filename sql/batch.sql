--
-- batch: igny8_generate_text_batch sends every prompt at once and answers
-- one row per prompt in input order; a failed prompt fills its row's error
-- and sqlstate instead of failing the call; input checks, cancellation
-- and privileges
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
TRUNCATE ai_usage_log;

-- rows in input order, ord from 1; successful rows have no error
SELECT ord, content, provider, model, input_tokens, output_tokens, cost,
       attempts, error, sqlstate, duration_ms >= 0 AS timed,
       request_id IS NOT NULL AS has_request_id
  FROM igny8_generate_text_batch(ARRAY['First [[sim ollama:reply=one]]',
                                       'Second [[sim ollama:reply=two]]',
                                       'Third [[sim ollama:reply=three]]',
                                       'Fourth [[sim ollama:reply=four]]']);

-- one request each: a request id of its own, one usage row each
SELECT count(*) AS usage_rows, count(DISTINCT request_id) AS requests,
       bool_and(task_type = 'text') AS all_text
  FROM ai_usage_log;

-- all prompts are in flight at once: the simulator saw five slow
-- requests in progress together
TRUNCATE ai_usage_log;
SELECT count(*) AS answered, count(DISTINCT request_id) AS requests
  FROM igny8_generate_text_batch(
        array(SELECT 'Slow ' || i || ' [[sim ollama:delay=2 tag=conc]]'
                FROM generate_series(1, 5) i));
SELECT sim('max-concurrency --tag conc') AS max_in_progress;

-- a partial failure: every provider failing for one prompt (38000), a
-- provider refusing another (400, 22023); the others are answered
TRUNCATE ai_usage_log;
CREATE TEMP TABLE partial AS
SELECT * FROM igny8_generate_text_batch(ARRAY[
    'Fine [[sim ollama:reply=fine]]',
    'Nothing works [[sim any:status=404]]',
    'Bad request [[sim ollama:status=400]]',
    'Also fine [[sim ollama:reply=also_fine]]'], 'gpt-4');
SELECT ord, content, provider, model, input_tokens, output_tokens, cost,
       attempts, sqlstate FROM partial ORDER BY ord;
SELECT ord, error FROM partial WHERE error IS NOT NULL ORDER BY ord;
-- usage rows: one per attempt, under each row's request_id
SELECT p.ord, p.attempts, count(u.id) AS usage_rows,
       count(u.id) FILTER (WHERE u.success) AS succeeded
  FROM partial p LEFT JOIN ai_usage_log u USING (request_id)
 GROUP BY p.ord, p.attempts ORDER BY p.ord;
SELECT count(*) AS usage_rows_of_other_requests FROM ai_usage_log
 WHERE request_id NOT IN (SELECT request_id FROM partial);

-- options: system applied to every prompt, max_tokens (the answers are
-- cut at 3 words), temperature, account_id on every usage row
TRUNCATE ai_usage_log;
SELECT ord, content FROM igny8_generate_text_batch(
    ARRAY['Opt one [[sim ollama:reply=a_b_c_d tag=opt]]',
          'Opt two [[sim ollama:reply=e_f_g_h tag=opt]]'],
    'gpt-3.5-turbo',
    '{"system": "You are terse.", "max_tokens": 3, "temperature": 0.5,
      "timeout": 30, "account_id": 77}');
SELECT count(*) FILTER (WHERE line LIKE '%{"content": "You are terse.", "role": "system"}, {"content": "Opt %'
                          AND line LIKE '%"num_predict": 3%'
                          AND line LIKE '%"temperature": 0.5%') AS with_system_and_options
  FROM sim('log --tag opt --field body') AS line;
SELECT account_id, count(*) FROM ai_usage_log GROUP BY account_id;

-- an unknown alias fails every row (nothing is sent, nothing logged)
TRUNCATE ai_usage_log;
SELECT ord, content, attempts, error, sqlstate
  FROM igny8_generate_text_batch(ARRAY['a', 'b'], 'gpt-5-ultra');
SELECT count(*) AS usage_rows FROM ai_usage_log;

-- an empty array returns no rows
SELECT count(*) AS no_rows FROM igny8_generate_text_batch('{}');
SELECT count(*) AS no_rows FROM igny8_generate_text_batch(ARRAY[]::text[], 'gpt-4');

-- bad input: refused before anything is sent or logged
SELECT sim('reset');
TRUNCATE ai_usage_log;
\set VERBOSITY default
SELECT * FROM igny8_generate_text_batch(NULL);
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello', NULL, 'World']);
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello', 'World', E' \n\t']);
SELECT * FROM igny8_generate_text_batch(ARRAY['', 'World']);
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello', U&'\3000\00A0\2003']);
SELECT * FROM igny8_generate_text_batch(ARRAY[['a', 'b'], ['c', 'd']]);
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], NULL);
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], '');
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], repeat('m', 100));
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], 'gpt-4', '[]');
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], 'gpt-4', '{"n": 2}');
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], 'gpt-4', '{"max_tokens": 0}');
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], 'gpt-4', '{"max_tokens": 1.5}');
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], 'gpt-4', '{"temperature": 3}');
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], 'gpt-4', '{"temperature": "hot"}');
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], 'gpt-4', '{"timeout": 0}');
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], 'gpt-4', '{"account_id": -1}');
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], 'gpt-4', '{"system": 5}');
SELECT * FROM igny8_generate_text_batch(ARRAY['Hello'], 'gpt-4', '{"system": null}');
SET igny8_ai.max_prompt_size = '1kB';
SELECT * FROM igny8_generate_text_batch(ARRAY['Short', repeat('x', 2000)]);
SELECT * FROM igny8_generate_text_batch(ARRAY['Short'], 'gpt-4',
                                        jsonb_build_object('system', repeat('s', 2000)));
RESET igny8_ai.max_prompt_size;
-- more prompts than igny8_ai.max_in_flight (1024) request slots
SHOW igny8_ai.max_in_flight;
SELECT * FROM igny8_generate_text_batch(array_fill('Hello'::text, ARRAY[1025]));
SELECT count(*) AS usage_rows FROM ai_usage_log;
SELECT sim('log --count') AS requests_at_the_simulator;

-- a batch larger than igny8_ai.payload_memory (32MB here) is refused
-- whole: every prompt is put in the shared memory before any is sent
TRUNCATE ai_usage_log;
SHOW igny8_ai.payload_memory;
SELECT count(*) FROM igny8_generate_text_batch(
        array(SELECT repeat('x', 1000000) || ' [[sim ollama:delay=3 tag=pm]]'
                FROM generate_series(1, 40)));
SELECT wait_until($$(SELECT slots FROM igny8_slot_status() WHERE state = 'free')
                     = current_setting('igny8_ai.max_in_flight')::int$$,
                  'every request slot to be free');
SELECT count(*) AS usage_rows FROM ai_usage_log;
SELECT sim('log --tag pm --count') AS requests_at_the_simulator;
-- the memory taken came back: a batch that fits goes through
SELECT count(*) AS answered FROM igny8_generate_text_batch(
        array(SELECT repeat('x', 1000000) || ' [[sim ollama:reply=fits]]'
                FROM generate_series(1, 20)))
 WHERE content LIKE '%: fits';
TRUNCATE ai_usage_log;

-- statement_timeout during the wait abandons every prompt's request: the
-- backends see the disconnects, and every slot comes back
SET statement_timeout = '1s';
\set VERBOSITY sqlstate
SELECT * FROM igny8_generate_text_batch(
        array(SELECT 'Cancel ' || i || ' [[sim ollama:delay=30 tag=bk]]'
                FROM generate_series(1, 3) i));
\set VERBOSITY default
RESET statement_timeout;
SELECT wait_until($$(SELECT count(*) FROM sim('log --tag bk --field disconnect') d
                      WHERE d = 'true') = 3$$, 'three disconnects');
SELECT wait_until($$(SELECT slots FROM igny8_slot_status() WHERE state = 'free')
                     = current_setting('igny8_ai.max_in_flight')::int$$,
                  'every request slot to be free');
SELECT ord, content FROM igny8_generate_text_batch(ARRAY['Still here [[sim ollama:reply=yes]]']);

-- privileges: not for PUBLIC; igny8_grant_usage grants it
CREATE ROLE igny8_batch_user;
SELECT has_function_privilege('igny8_batch_user', 'igny8_generate_text_batch(text[], text, jsonb)',
                              'EXECUTE') AS before_grant;
SET ROLE igny8_batch_user;
SELECT * FROM igny8_generate_text_batch(ARRAY['Not yet']);
RESET ROLE;
SELECT igny8_grant_usage('igny8_batch_user');
SELECT has_function_privilege('igny8_batch_user', 'igny8_generate_text_batch(text[], text, jsonb)',
                              'EXECUTE') AS after_grant;
SET ROLE igny8_batch_user;
SELECT ord, content, error FROM igny8_generate_text_batch(ARRAY['Granted [[sim ollama:reply=granted]]']);
RESET ROLE;
DROP OWNED BY igny8_batch_user;
DROP ROLE igny8_batch_user;
