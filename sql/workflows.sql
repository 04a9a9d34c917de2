--
-- workflows: the ComfyUI workflows and the image routing the extension
-- ships; a workflow added with one INSERT; every refusal of a workflow or
-- of an image deployment that does not fit, each with its SQLSTATE and
-- nothing written; what a restore does with workflows
--
\set ECHO none
\o /dev/null
\i test/regress/prelude.sql
\o
\set ECHO all
-- (what earlier tests recorded is left out below)
CREATE TEMP TABLE deletions_before AS SELECT table_name, key FROM igny8_config_deletions;
CREATE TEMP VIEW new_deletions AS
SELECT table_name, key FROM igny8_config_deletions
EXCEPT SELECT table_name, key FROM deletions_before;

-- the shipped ComfyUI provider (pointed at the simulator by the prelude)
SELECT id, kind, api_key_ref, priority, max_concurrent, settings
  FROM igny8_providers WHERE kind = 'comfyui';

-- the shipped workflows, the model files their loaders name, their
-- bindings and defaults; the description names every file and where it
-- comes from
SELECT w.name, w.origin,
       (SELECT string_agg(i.value #>> '{}', ' ' ORDER BY i.value #>> '{}')
          FROM jsonb_each(w.graph) n, jsonb_each(n.value->'inputs') i
         WHERE i.value #>> '{}' LIKE '%.safetensors') AS files
  FROM igny8_workflows w ORDER BY w.name;
SELECT name, bindings, defaults FROM igny8_workflows ORDER BY name;
SELECT name, description FROM igny8_workflows ORDER BY name;
SELECT w.name, f.file
  FROM igny8_workflows w,
       LATERAL (SELECT DISTINCT i.value #>> '{}' AS file
                  FROM jsonb_each(w.graph) n, jsonb_each(n.value->'inputs') i
                 WHERE i.value #>> '{}' LIKE '%.safetensors') f
 WHERE strpos(w.description, f.file) = 0;

-- the image routing: aliases on the ComfyUI box, OpenAI's image models as
-- fallbacks
SELECT alias, provider_id, provider_model, workflow, timeout, origin
  FROM igny8_models WHERE task = 'image' ORDER BY alias, provider_id;
SELECT f.alias, f.position, f.fallback_alias
  FROM igny8_fallbacks f
 WHERE f.alias IN (SELECT alias FROM igny8_models WHERE task = 'image')
 ORDER BY f.alias, f.position;

-- the usage log has the image columns; igny8_image is what the image
-- calls return
SELECT attname, format_type(atttypid, atttypmod), attnotnull
  FROM pg_attribute
 WHERE attrelid = 'ai_usage_log'::regclass
   AND attname IN ('images', 'image_width', 'image_height', 'steps')
 ORDER BY attnum;
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute WHERE attrelid = 'igny8_image'::regclass ORDER BY attnum;

-- an operator's own workflow: one INSERT of what ComfyUI's "Export (API)"
-- wrote, with its bindings; then an image alias that runs it
INSERT INTO igny8_workflows (name, graph, bindings, defaults, description) VALUES
('sdxl-base',
 '{"3": {"class_type": "KSampler",
         "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                    "latent_image": ["5", 0], "seed": 1, "steps": 25, "cfg": 7.0,
                    "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
   "4": {"class_type": "CheckpointLoaderSimple",
         "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
   "5": {"class_type": "EmptyLatentImage",
         "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
   "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cloud", "clip": ["4", 1]}},
   "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
   "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
   "9": {"class_type": "SaveImage", "_meta": {"title": "Save Image"},
         "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}}',
 '{"prompt": ["6", "text"], "negative_prompt": ["7", "text"],
   "width": ["5", "width"], "height": ["5", "height"], "steps": ["3", "steps"],
   "cfg": ["3", "cfg"], "seed": ["3", "seed"], "filename_prefix": ["9", "filename_prefix"]}',
 '{"steps": 25, "cfg": 7.0, "negative_prompt": "blurry"}',
 'SDXL base 1.0: sd_xl_base_1.0.safetensors in models/checkpoints');
INSERT INTO igny8_models (alias, provider_id, provider_model, task, workflow, timeout)
VALUES ('poster', 'comfyui', 'sdxl-base', 'image', 'sdxl-base', '90 s');
SELECT name, origin, updated_at > now() - interval '1 minute' AS recent
  FROM igny8_workflows WHERE name = 'sdxl-base';
SELECT alias, provider_id, task, workflow, origin FROM igny8_models WHERE alias = 'poster';
-- the workers load the configuration with it
SELECT wait_for_config();
SELECT bool_and(config_current) AS current FROM igny8_worker_status();

-- a change to a shipped workflow makes it edited (pg_dump keeps it) and
-- moves updated_at
BEGIN;
UPDATE igny8_workflows SET defaults = '{"steps": 8, "cfg": 1.0}'
 WHERE name = 'sdxl-lightning-4step'
RETURNING name, defaults, origin, updated_at = now() AS touched;
ROLLBACK;

-- Refusals.  Each tries to write the workflow "bad" from a valid graph
-- with one thing wrong, and shows the error, then how many rows named
-- "bad" there are.
CREATE TEMP TABLE base AS
SELECT graph, bindings FROM igny8_workflows WHERE name = 'sdxl-base';
CREATE FUNCTION try_workflow(g jsonb, b jsonb DEFAULT NULL, d jsonb DEFAULT '{}')
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    e text;
BEGIN
    e := show_error(format('INSERT INTO igny8_workflows (name, graph, bindings, defaults) VALUES (%L, %L, %L, %L)',
                           'bad', g, coalesce(b, (SELECT bindings FROM base)), d));
    RETURN e || E'\nrows: ' || (SELECT count(*) FROM igny8_workflows WHERE name = 'bad');
END
$$;
\pset format unaligned
\pset tuples_only on
-- the graph: not an object, empty, the editor's format instead of the API's
SELECT try_workflow('[]');
SELECT try_workflow('{}');
SELECT try_workflow('{"nodes": [], "links": [], "version": 0.4}');
-- a node that is not an object, without class_type, with inputs that are
-- not an object, with a _meta that is not an object
SELECT try_workflow(graph || '{"10": "KSampler"}') FROM base;
SELECT try_workflow(graph #- '{3,class_type}') FROM base;
SELECT try_workflow(jsonb_set(graph, '{3,class_type}', '""')) FROM base;
SELECT try_workflow(jsonb_set(graph, '{8,inputs}', '["3", 0]')) FROM base;
SELECT try_workflow(graph #- '{5,inputs}') FROM base;
SELECT try_workflow(jsonb_set(graph, '{9,_meta}', '"Save"')) FROM base;
-- links: to a node the graph lacks, malformed, in a cycle
SELECT try_workflow(jsonb_set(graph, '{8,inputs,samples}', '["30", 0]')) FROM base;
SELECT try_workflow(jsonb_set(graph, '{8,inputs,samples}', '["3", -1]')) FROM base;
SELECT try_workflow(jsonb_set(graph, '{8,inputs,samples}', '["3"]')) FROM base;
SELECT try_workflow(jsonb_set(graph, '{5,inputs,batch_size}', '["8", 0]')) FROM base;
-- no SaveImage node (a PreviewImage is no output the extension fetches)
SELECT try_workflow(jsonb_set(graph, '{9,class_type}', '"PreviewImage"')) FROM base;
-- bindings: not an object, not a pair, to a node or an input the graph
-- lacks, to a link, to an input holding the wrong kind of value, an
-- unknown parameter, two parameters on one input, a required one missing
SELECT try_workflow(graph, '["6", "text"]') FROM base;
SELECT try_workflow(graph, bindings || '{"seed": ["3"]}') FROM base;
SELECT try_workflow(graph, bindings || '{"seed": ["30", "seed"]}') FROM base;
SELECT try_workflow(graph, bindings || '{"seed": ["3", "noise_seed"]}') FROM base;
SELECT try_workflow(graph, bindings || '{"seed": ["3", "model"]}') FROM base;
SELECT try_workflow(graph, bindings || '{"seed": ["3", "sampler_name"]}') FROM base;
SELECT try_workflow(graph, bindings || '{"prompt": ["3", "steps"]}') FROM base;
SELECT try_workflow(graph, bindings || '{"guidance": ["3", "cfg"]}') FROM base;
SELECT try_workflow(graph, bindings || '{"steps": ["3", "seed"]}') FROM base;
SELECT try_workflow(graph, bindings - 'seed') FROM base;
SELECT try_workflow(graph, bindings - 'filename_prefix') FROM base;
SELECT try_workflow(graph, bindings - 'width') FROM base;
-- defaults: not an object, an unknown parameter, one that is not bound,
-- values that do not fit
SELECT try_workflow(graph, NULL, '[]') FROM base;
SELECT try_workflow(graph, NULL, '{"sampler_name": "euler"}') FROM base;
SELECT try_workflow(graph, bindings - 'steps', '{"steps": 4}') FROM base;
SELECT try_workflow(graph, NULL, '{"steps": 0}') FROM base;
SELECT try_workflow(graph, NULL, '{"steps": 4.5}') FROM base;
SELECT try_workflow(graph, NULL, '{"cfg": "high"}') FROM base;
SELECT try_workflow(graph, NULL, '{"width": 20000}') FROM base;
SELECT try_workflow(graph, NULL, '{"seed": -1}') FROM base;
SELECT try_workflow(graph, NULL, '{"negative_prompt": 7}') FROM base;
-- the table's own constraints
-- (their first line: the detail lists the row, with its updated_at)
SELECT split_part(show_error($$INSERT INTO igny8_workflows (name, graph, bindings)
                               SELECT 'Bad Name', graph, bindings FROM base$$), E'\n', 1);
SELECT split_part(show_error($$INSERT INTO igny8_workflows (name, graph, bindings)
                               VALUES ('bad', NULL, '{}')$$), E'\n', 1);
SELECT split_part(show_error($$INSERT INTO igny8_workflows (name, graph, bindings)
                               SELECT 'sdxl-lightning-4step', graph, bindings FROM base$$), E'\n', 1);
-- an update that would break a shipped workflow changes nothing
SELECT show_error($$UPDATE igny8_workflows SET graph = graph - '9'
                     WHERE name = 'flux1-dev'$$);
\pset format aligned
\pset tuples_only off
SELECT name, origin, graph ? '9' AS has_save_image FROM igny8_workflows
 WHERE name = 'flux1-dev';
SELECT count(*) AS workflows, count(*) FILTER (WHERE name = 'bad') AS bad
  FROM igny8_workflows;
SELECT count(*) AS new_deletions FROM new_deletions;

-- image deployments: on a ComfyUI provider an image alias runs a
-- workflow, elsewhere none; a text deployment has none
\pset format unaligned
\pset tuples_only on
SELECT show_error($$INSERT INTO igny8_models (alias, provider_id, provider_model, task)
                    VALUES ('poster2', 'comfyui', 'sdxl-base', 'image')$$);
SELECT show_error($$UPDATE igny8_models SET workflow = NULL WHERE alias = 'dall-e-3'$$);
SELECT show_error($$INSERT INTO igny8_models (alias, provider_id, provider_model, task, workflow)
                    VALUES ('poster2', 'openai', 'dall-e-3', 'image', 'sdxl-base')$$);
SELECT show_error($$INSERT INTO igny8_models (alias, provider_id, provider_model, task, workflow)
                    VALUES ('poster2', 'comfyui', 'sdxl-base', 'text', 'sdxl-base')$$);
SELECT show_error($$INSERT INTO igny8_models (alias, provider_id, provider_model, task, workflow)
                    VALUES ('poster2', 'comfyui', 'sdxl-base', 'image', 'no-such-workflow')$$);
-- a provider whose deployments would no longer fit keeps its kind
SELECT show_error($$UPDATE igny8_providers SET kind = 'openai' WHERE id = 'comfyui'$$);
-- a workflow that deployments run cannot be deleted
SELECT show_error($$DELETE FROM igny8_workflows WHERE name = 'flux1-dev'$$);
SELECT show_error($$DELETE FROM igny8_workflows WHERE name = 'sdxl-base'$$);
SELECT show_error($$TRUNCATE igny8_workflows$$);
\pset format aligned
\pset tuples_only off
SELECT count(*) AS poster2 FROM igny8_models WHERE alias = 'poster2';
SELECT kind FROM igny8_providers WHERE id = 'comfyui';

-- once no deployment runs it, it can: a shipped one is recorded, so that
-- a restore deletes it again
BEGIN;
UPDATE igny8_models SET workflow = 'sdxl-base' WHERE alias = 'dall-e-3';
DELETE FROM igny8_workflows WHERE name = 'flux1-dev';
SELECT table_name, key FROM new_deletions;
ROLLBACK;

-- a renamed workflow: its deployments follow (they are edited), the
-- shipped name is recorded as deleted
BEGIN;
UPDATE igny8_workflows SET name = 'flux1-dev-fp16' WHERE name = 'flux1-dev';
SELECT alias, workflow, origin FROM igny8_models WHERE alias = 'dall-e-3';
SELECT name, origin FROM igny8_workflows WHERE name LIKE 'flux%';
SELECT table_name, key FROM new_deletions;
ROLLBACK;

-- What a restore does, in a dump's order: the deletions first, then the
-- workflows, then the deployments.  The recorded deletion of a shipped
-- workflow that shipped deployments still run waits for them; the edited
-- deployment that no longer runs it lets it go.  An edited shipped
-- workflow replaces the one CREATE EXTENSION made.
BEGIN;
INSERT INTO igny8_config_deletions (table_name, key)
VALUES ('igny8_workflows', '{"name": "flux1-dev"}');
SELECT name, origin FROM igny8_workflows WHERE name = 'flux1-dev';
INSERT INTO igny8_workflows (name, graph, bindings, defaults, description, updated_at, origin)
SELECT name, graph, bindings, '{"steps": 6, "cfg": 1.0}', description,
       '2026-01-01 00:00:00+00', 'edited'
  FROM igny8_workflows WHERE name = 'sdxl-lightning-4step';
SELECT name, defaults, updated_at, origin FROM igny8_workflows
 WHERE name = 'sdxl-lightning-4step';
INSERT INTO igny8_models (alias, provider_id, provider_model, task, workflow, timeout, origin)
VALUES ('dall-e-3', 'comfyui', 'flux1-dev', 'image', 'sdxl-lightning-4step', '120 s', 'edited');
SELECT alias, workflow, origin FROM igny8_models WHERE alias = 'dall-e-3';
SELECT count(*) AS flux1_dev FROM igny8_workflows WHERE name = 'flux1-dev';
ROLLBACK;

-- TRUNCATE ... CASCADE takes the deployments with it, and records the
-- shipped keys of both
BEGIN;
TRUNCATE igny8_workflows CASCADE;
SELECT table_name, count(*) FROM new_deletions GROUP BY 1 ORDER BY 1;
ROLLBACK;

-- the worker role reads the workflows
CREATE ROLE igny8_wf_worker;
SELECT igny8_grant_worker('igny8_wf_worker');
SELECT has_table_privilege('igny8_wf_worker', 'igny8_workflows', 'SELECT') AS can_read,
       has_table_privilege('igny8_wf_worker', 'igny8_workflows', 'INSERT') AS can_write;
DROP OWNED BY igny8_wf_worker;
DROP ROLE igny8_wf_worker;

-- clean up
DROP FUNCTION try_workflow(jsonb, jsonb, jsonb);
DELETE FROM igny8_models WHERE alias = 'poster';
DELETE FROM igny8_workflows WHERE name = 'sdxl-base';
SELECT count(*) AS workflows FROM igny8_workflows;
SELECT count(*) AS new_deletions FROM new_deletions;
