/* igny8_ai--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION igny8_ai CASCADE" to load this file. \quit

--
-- Every function of this script runs with search_path = pg_catalog, pg_temp
-- and names the extension's own objects with @extschema@, so that nothing
-- created in a schema on a caller's path can be picked instead.  The same
-- holds for the SQL the background workers run (src/config.c, src/usage.c).
--
-- The script itself runs with search_path = the extension's schema (public
-- by default, where a database owner who is no superuser may create
-- objects), pg_catalog searched first.  What it stores (CHECK constraints,
-- defaults, index expressions, views, policies, trigger conditions) and
-- what it runs (the seed, DO blocks) names operators and functions as
-- OPERATOR(pg_catalog.op) and pg_catalog.name: an operator or function
-- planted in the schema beforehand that fits the argument types better
-- (numeric >= integer, format(text, text)) would otherwise be bound into
-- them for good and run as whoever writes the tables
-- (test/suites/install_search_path).
--

--
-- Configuration: providers, deployments of model aliases, fallbacks.
-- Edited with plain SQL; a committed change reaches the workers at once.
--
-- origin says where a row comes from: 'shipped' (CREATE EXTENSION made it
-- and nobody changed it), 'edited' (a shipped row that was changed, or a
-- shipped key added again) or 'added' (the DBA's own).  The triggers below
-- keep it; pg_dump keeps every row that is not 'shipped', and a restore
-- replaces the shipped row of the same key with it.
--

CREATE TABLE igny8_providers (
    id              text PRIMARY KEY
                    CHECK (id OPERATOR(pg_catalog.~) '^[a-z0-9_]{1,63}$'),
    kind            text NOT NULL
                    CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['ollama', 'openai', 'anthropic', 'comfyui'])),
    base_url        text NOT NULL
                    CHECK (base_url OPERATOR(pg_catalog.~*) '^https?://[^/?#@[:space:]]+(/[^?#[:space:]]*)?$'),
    api_key_ref     text,
    priority        integer NOT NULL DEFAULT 0,
    enabled         boolean NOT NULL DEFAULT true,
    connect_timeout interval NOT NULL DEFAULT '5 seconds'
                    CHECK (connect_timeout OPERATOR(pg_catalog.>) '0' AND connect_timeout OPERATOR(pg_catalog.<=) '5 minutes'),
    max_concurrent  integer NOT NULL DEFAULT 64 CHECK (max_concurrent OPERATOR(pg_catalog.>) 0),
    settings        jsonb NOT NULL DEFAULT '{}'
                    CHECK (pg_catalog.jsonb_typeof(settings) OPERATOR(pg_catalog.=) 'object'),
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    origin          text NOT NULL DEFAULT 'added'
                    CHECK (origin OPERATOR(pg_catalog.=) ANY (ARRAY['shipped', 'edited', 'added']))
);

COMMENT ON TABLE igny8_providers IS
    'AI backends igny8_ai can call; higher priority is tried first';
COMMENT ON COLUMN igny8_providers.api_key_ref IS
    'env:NAME (server environment), file:/path (first line), or the key itself (discouraged)';
COMMENT ON COLUMN igny8_providers.settings IS
    'extra settings: Ollama keep_alive, think, options; OpenAI max_tokens_field, extra_body; Anthropic anthropic_version; images: max_image_bytes; any: proxy, ca_file, check_models';
COMMENT ON COLUMN igny8_providers.origin IS
    'shipped (as CREATE EXTENSION made it), edited, or added; kept by triggers';

-- ComfyUI workflows: a graph in ComfyUI's API format (what "Export (API)"
-- writes: node id -> {class_type, inputs, _meta}), and where a call's
-- parameters go in it.  A trigger checks every row written (below).
CREATE TABLE igny8_workflows (
    name            text PRIMARY KEY
                    CHECK (name OPERATOR(pg_catalog.~) '^[a-z0-9_.-]{1,63}$'),
    graph           jsonb NOT NULL,
    bindings        jsonb NOT NULL,
    defaults        jsonb NOT NULL DEFAULT '{}',
    description     text,
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    origin          text NOT NULL DEFAULT 'added'
                    CHECK (origin OPERATOR(pg_catalog.=) ANY (ARRAY['shipped', 'edited', 'added']))
);

COMMENT ON TABLE igny8_workflows IS
    'ComfyUI workflows (API format) that image deployments on comfyui providers run';
COMMENT ON COLUMN igny8_workflows.graph IS
    'the graph as ComfyUI''s "Export (API)" writes it: node id -> {class_type, inputs, _meta}; needs a SaveImage node';
COMMENT ON COLUMN igny8_workflows.bindings IS
    'parameter -> [node id, input name]; parameters: prompt, negative_prompt, width, height, steps, cfg, seed, filename_prefix (prompt, width, height, seed and filename_prefix required)';
COMMENT ON COLUMN igny8_workflows.defaults IS
    'parameter -> value used when a call gives none (e.g. steps, cfg); else the graph''s own value';
COMMENT ON COLUMN igny8_workflows.origin IS
    'shipped (as CREATE EXTENSION made it), edited, or added; kept by triggers';

CREATE TABLE igny8_models (
    alias           text NOT NULL
                    CHECK (alias OPERATOR(pg_catalog.~) '^[^[:space:]]+$' AND pg_catalog.octet_length(alias) OPERATOR(pg_catalog.<=) 63),
    provider_id     text NOT NULL REFERENCES igny8_providers (id)
                    ON UPDATE CASCADE ON DELETE CASCADE,
    provider_model  text NOT NULL
                    CHECK (pg_catalog.octet_length(provider_model) OPERATOR(pg_catalog.>=) 1 AND pg_catalog.octet_length(provider_model) OPERATOR(pg_catalog.<=) 127),
    task            text NOT NULL DEFAULT 'text' CHECK (task OPERATOR(pg_catalog.=) ANY (ARRAY['text', 'image'])),
    -- a workflow in use cannot be deleted
    workflow        text REFERENCES igny8_workflows (name)
                    ON UPDATE CASCADE ON DELETE RESTRICT,
    timeout         interval NOT NULL DEFAULT '60 seconds'
                    CHECK (timeout OPERATOR(pg_catalog.>) '0' AND timeout OPERATOR(pg_catalog.<=) '1 day'),
    queue_timeout   interval NOT NULL DEFAULT '30 seconds'
                    CHECK (queue_timeout OPERATOR(pg_catalog.>=) '0' AND queue_timeout OPERATOR(pg_catalog.<=) '1 day'),
    max_tokens      integer CHECK (max_tokens OPERATOR(pg_catalog.>) 0),
    weight          integer NOT NULL DEFAULT 1 CHECK (weight OPERATOR(pg_catalog.>) 0),
    enabled         boolean NOT NULL DEFAULT true,
    settings        jsonb NOT NULL DEFAULT '{}'
                    CHECK (pg_catalog.jsonb_typeof(settings) OPERATOR(pg_catalog.=) 'object'),
    origin          text NOT NULL DEFAULT 'added'
                    CHECK (origin OPERATOR(pg_catalog.=) ANY (ARRAY['shipped', 'edited', 'added'])),
    PRIMARY KEY (alias, provider_id, provider_model),
    CONSTRAINT igny8_models_workflow_task CHECK (workflow IS NULL OR task OPERATOR(pg_catalog.=) 'image')
);

COMMENT ON TABLE igny8_models IS
    'deployments: a model alias served by a provider-side model';
COMMENT ON COLUMN igny8_models.max_tokens IS
    'cap on output tokens; a call asking for more gets this many';
COMMENT ON COLUMN igny8_models.queue_timeout IS
    'longest wait for a free place on the provider (max_concurrent) before the next candidate; 0: do not wait';
COMMENT ON COLUMN igny8_models.workflow IS
    'the igny8_workflows row an image deployment on a comfyui provider runs (required there, NULL elsewhere)';

CREATE TABLE igny8_fallbacks (
    alias           text NOT NULL,
    position        integer NOT NULL CHECK (position OPERATOR(pg_catalog.>) 0),
    fallback_alias  text NOT NULL,
    origin          text NOT NULL DEFAULT 'added'
                    CHECK (origin OPERATOR(pg_catalog.=) ANY (ARRAY['shipped', 'edited', 'added'])),
    PRIMARY KEY (alias, position),
    -- checked at the end of the transaction, so that a restore (or an
    -- update) may swap the fallbacks of two positions
    UNIQUE (alias, fallback_alias) DEFERRABLE INITIALLY DEFERRED,
    CHECK (alias OPERATOR(pg_catalog.<>) fallback_alias)
);

COMMENT ON TABLE igny8_fallbacks IS
    'for an alias, the aliases tried next, by position';

-- Prices of the external providers' models, in USD, each valid from
-- valid_from until valid_to (NULL: still valid).  The unit is part of the
-- row, so that a price per 1K tokens cannot pass for a price per token (the
-- seed's cost calculator took gpt-3.5-turbo's per-1K prices for per-token
-- prices, 1,000 times too high): a price is per 1M input tokens, per 1M
-- output tokens, per 1M cached input tokens (read from the provider's
-- prompt cache), per 1M cache-write tokens (written to it: Anthropic's
-- cache_creation_input_tokens), or per image of a size and a quality.
-- A trigger below refuses two rows of the same provider, model, unit, size
-- and quality whose validity overlaps.
CREATE TABLE igny8_prices (
    provider        text NOT NULL
                    CHECK (provider OPERATOR(pg_catalog.~) '^[a-z0-9_]{1,63}$'),
    model           text NOT NULL
                    CHECK (pg_catalog.octet_length(model) OPERATOR(pg_catalog.>=) 1 AND pg_catalog.octet_length(model) OPERATOR(pg_catalog.<=) 127),
    unit            text NOT NULL
                    CHECK (unit OPERATOR(pg_catalog.=) ANY (ARRAY[
                               'per_1m_input_tokens', 'per_1m_output_tokens',
                               'per_1m_cached_input_tokens',
                               'per_1m_cache_write_tokens', 'per_image'])),
    size            text NOT NULL DEFAULT '',
    quality         text NOT NULL DEFAULT '',
    price           numeric NOT NULL CHECK (price OPERATOR(pg_catalog.>=) 0 AND price OPERATOR(pg_catalog.<) 1000000),
    valid_from      timestamptz NOT NULL DEFAULT '-infinity',
    valid_to        timestamptz,
    origin          text NOT NULL DEFAULT 'added'
                    CHECK (origin OPERATOR(pg_catalog.=) ANY (ARRAY['shipped', 'edited', 'added'])),
    PRIMARY KEY (provider, model, unit, size, quality, valid_from),
    CONSTRAINT igny8_prices_validity CHECK (valid_to OPERATOR(pg_catalog.>) valid_from),
    -- images: a size (WIDTHxHEIGHT) and a quality ('' for any); tokens: neither
    CONSTRAINT igny8_prices_image CHECK (
        CASE WHEN unit OPERATOR(pg_catalog.=) 'per_image'
             THEN size OPERATOR(pg_catalog.~) '^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$'
                  AND quality OPERATOR(pg_catalog.~) '^[a-z0-9_]{0,31}$'
             ELSE size OPERATOR(pg_catalog.=) '' AND quality OPERATOR(pg_catalog.=) '' END)
);

COMMENT ON TABLE igny8_prices IS
    'list prices in USD of provider-side models, by unit, valid from valid_from until valid_to; the workers price each ai_usage_log row with the price valid at its created_at';
COMMENT ON COLUMN igny8_prices.provider IS
    'igny8_providers.id, as in ai_usage_log.provider';
COMMENT ON COLUMN igny8_prices.model IS
    'provider-side model, as igny8_models.provider_model';
COMMENT ON COLUMN igny8_prices.unit IS
    'per_1m_input_tokens, per_1m_output_tokens, per_1m_cached_input_tokens, per_1m_cache_write_tokens or per_image: never per token, never per 1K';
COMMENT ON COLUMN igny8_prices.size IS
    'per_image: WIDTHxHEIGHT; else empty';
COMMENT ON COLUMN igny8_prices.quality IS
    'per_image: the quality asked for (standard, hd, ...), empty for any; else empty';
COMMENT ON COLUMN igny8_prices.price IS
    'USD per unit';

-- Fixed costs beside the prices: the rent of a machine (a "box") that
-- serves one or more providers, in USD a month, valid from valid_from
-- until valid_to (NULL: still valid).  One rent pays for every provider
-- the box runs (the seed's GPU box runs Ollama, self_hosted_ai, and
-- ComfyUI, comfyui): their requests share the GPU, so they share its
-- hours (a self-hosted attempt's cost, price.c).  Triggers below refuse
-- an unknown provider, two rows of a box whose validity overlaps, and a
-- provider paid for by two boxes at once.
CREATE TABLE igny8_fixed_costs (
    box             text NOT NULL
                    CHECK (box OPERATOR(pg_catalog.~) '^[a-z0-9_]{1,63}$'),
    providers       text[] NOT NULL
                    CHECK (pg_catalog.cardinality(providers) OPERATOR(pg_catalog.>=) 1 AND pg_catalog.cardinality(providers) OPERATOR(pg_catalog.<=) 64
                           AND pg_catalog.array_position(providers, NULL) IS NULL),
    description     text NOT NULL DEFAULT '',
    monthly_amount  numeric NOT NULL
                    CHECK (monthly_amount OPERATOR(pg_catalog.>=) 0 AND monthly_amount OPERATOR(pg_catalog.<) 100000000),
    valid_from      timestamptz NOT NULL DEFAULT '-infinity',
    valid_to        timestamptz,
    origin          text NOT NULL DEFAULT 'added'
                    CHECK (origin OPERATOR(pg_catalog.=) ANY (ARRAY['shipped', 'edited', 'added'])),
    PRIMARY KEY (box, valid_from),
    CONSTRAINT igny8_fixed_costs_validity CHECK (valid_to OPERATOR(pg_catalog.>) valid_from)
);

COMMENT ON TABLE igny8_fixed_costs IS
    'fixed monthly costs in USD (the GPU box''s rent) of the providers a box runs, valid from valid_from until valid_to';
COMMENT ON COLUMN igny8_fixed_costs.box IS
    'the machine paid for; its providers share its hours';
COMMENT ON COLUMN igny8_fixed_costs.providers IS
    'igny8_providers.id of every provider the box runs';
COMMENT ON COLUMN igny8_fixed_costs.monthly_amount IS
    'USD per calendar month; an hour costs monthly_amount / the hours of its month';

-- What an alias stands for at OpenAI: ai_usage_log.reference_cost prices
-- every attempt of the alias at this provider-side model's prices
-- (igny8_prices), whoever served it.  An alias without a row has no
-- reference cost.  A trigger below refuses a model without a price.
CREATE TABLE igny8_reference_models (
    alias           text PRIMARY KEY
                    CHECK (alias OPERATOR(pg_catalog.~) '^[^[:space:]]+$' AND pg_catalog.octet_length(alias) OPERATOR(pg_catalog.<=) 63),
    provider        text NOT NULL DEFAULT 'openai'
                    CHECK (provider OPERATOR(pg_catalog.~) '^[a-z0-9_]{1,63}$'),
    model           text NOT NULL
                    CHECK (pg_catalog.octet_length(model) OPERATOR(pg_catalog.>=) 1 AND pg_catalog.octet_length(model) OPERATOR(pg_catalog.<=) 127),
    origin          text NOT NULL DEFAULT 'added'
                    CHECK (origin OPERATOR(pg_catalog.=) ANY (ARRAY['shipped', 'edited', 'added']))
);

COMMENT ON TABLE igny8_reference_models IS
    'for a model alias, the priced model (provider and provider-side model of igny8_prices) it stands for: ai_usage_log.reference_cost';

-- Shipped rows the DBA deleted (or whose key changed), so that a restore
-- deletes them again after CREATE EXTENSION made them.
CREATE TABLE igny8_config_deletions (
    table_name      text NOT NULL
                    CHECK (table_name OPERATOR(pg_catalog.=) ANY (ARRAY[
                               'igny8_providers', 'igny8_workflows',
                               'igny8_models', 'igny8_fallbacks',
                               'igny8_prices', 'igny8_fixed_costs',
                               'igny8_reference_models'])),
    key             jsonb NOT NULL,
    deleted_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (table_name, key)
);

COMMENT ON TABLE igny8_config_deletions IS
    'keys of shipped configuration rows that were deleted; kept by triggers, read by a restore';

--
-- Checks of workflows and image deployments, made before the seed's rows
-- go in, so that the shipped workflows are checked as any other.
--

-- Before a workflow is written: its graph is a ComfyUI API-format graph
-- whose links all lead somewhere, with a SaveImage node (the images the
-- extension fetches); each binding names an input that holds a value; the
-- defaults fit their parameters.  A refusal names the workflow and writes
-- nothing.
CREATE FUNCTION igny8_workflow_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    params CONSTANT text[] := ARRAY['prompt', 'negative_prompt', 'width', 'height',
                                    'steps', 'cfg', 'seed', 'filename_prefix'];
    required CONSTANT text[] := ARRAY['prompt', 'width', 'height', 'seed', 'filename_prefix'];
    texts CONSTANT text[] := ARRAY['prompt', 'negative_prompt', 'filename_prefix'];
    export_hint CONSTANT text :=
        'Export the workflow from ComfyUI with "Export (API)": an object of node id -> {"class_type", "inputs"}.';
    bind_hint CONSTANT text :=
        'A binding is "parameter": [node id, input name], the input holding the value the call replaces (e.g. "text" of a CLIPTextEncode node, "seed" of a KSampler node).';
    params_list CONSTANT text :=
        'prompt, negative_prompt, width, height, steps, cfg, seed, filename_prefix';
    wf text := NEW.name;
    node_id text;
    node jsonb;
    input_name text;
    val jsonb;
    param text;
    target jsonb;
    other text;
    want text;
    ok boolean;
    num numeric;
    lo numeric;
    hi numeric;
    whole boolean;
    saves integer := 0;
BEGIN
    IF NEW.graph IS NULL OR NEW.bindings IS NULL OR NEW.defaults IS NULL THEN
        RETURN NEW;     -- NOT NULL says so
    END IF;

    -- the graph
    IF pg_catalog.jsonb_typeof(NEW.graph) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION 'graph of workflow "%" is not a JSON object', wf
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('It is a JSON %s.', pg_catalog.jsonb_typeof(NEW.graph)),
                  HINT = export_hint;
    END IF;
    IF NEW.graph OPERATOR(pg_catalog.=) '{}'::jsonb THEN
        RAISE EXCEPTION 'graph of workflow "%" has no node', wf
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The graph is an empty object.',
                  HINT = export_hint;
    END IF;
    IF NEW.graph OPERATOR(pg_catalog.?&) ARRAY['nodes', 'links'] THEN
        RAISE EXCEPTION 'graph of workflow "%" is in ComfyUI''s UI format, not its API format', wf
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'It has "nodes" and "links": that is what "Save" writes, for the editor.',
                  HINT = export_hint;
    END IF;
    FOR node_id, node IN
        SELECT e.key, e.value FROM pg_catalog.jsonb_each(NEW.graph) e ORDER BY e.key
    LOOP
        IF pg_catalog.jsonb_typeof(node) OPERATOR(pg_catalog.<>) 'object' THEN
            RAISE EXCEPTION 'node "%" of workflow "%" is not a JSON object', node_id, wf
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('It is %s.', pg_catalog.left(node::text, 100)),
                      HINT = export_hint;
        END IF;
        IF coalesce(pg_catalog.jsonb_typeof(node OPERATOR(pg_catalog.->) 'class_type'), '')
               OPERATOR(pg_catalog.<>) 'string'
           OR node OPERATOR(pg_catalog.->>) 'class_type' OPERATOR(pg_catalog.=) '' THEN
            RAISE EXCEPTION 'node "%" of workflow "%" has no class_type', node_id, wf
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Every node needs "class_type", the name of its ComfyUI node class (a string).',
                      HINT = export_hint;
        END IF;
        IF node OPERATOR(pg_catalog.?) '_meta' AND
           pg_catalog.jsonb_typeof(node OPERATOR(pg_catalog.->) '_meta') OPERATOR(pg_catalog.<>) 'object' THEN
            RAISE EXCEPTION '_meta of node "%" of workflow "%" is not a JSON object', node_id, wf
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'ComfyUI reads "_meta" as an object such as {"title": "..."}.',
                      HINT = 'Drop "_meta", or make it an object.';
        END IF;
        IF coalesce(pg_catalog.jsonb_typeof(node OPERATOR(pg_catalog.->) 'inputs'), '')
               OPERATOR(pg_catalog.<>) 'object' THEN
            RAISE EXCEPTION 'inputs of node "%" of workflow "%" are not a JSON object', node_id, wf
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('Every node needs "inputs", an object of input name -> value or link; node "%s" (%s) has %s.',
                                                 node_id, node OPERATOR(pg_catalog.->>) 'class_type',
                                                 coalesce('a JSON ' OPERATOR(pg_catalog.||)
                                                          pg_catalog.jsonb_typeof(node OPERATOR(pg_catalog.->) 'inputs'),
                                                          'none')),
                      HINT = export_hint;
        END IF;
        IF node OPERATOR(pg_catalog.->>) 'class_type' OPERATOR(pg_catalog.=) 'SaveImage' THEN
            saves := saves OPERATOR(pg_catalog.+) 1;
        END IF;
        -- ComfyUI takes every array an input holds for a link
        FOR input_name, val IN
            SELECT i.key, i.value
              FROM pg_catalog.jsonb_each(node OPERATOR(pg_catalog.->) 'inputs') i
             WHERE pg_catalog.jsonb_typeof(i.value) OPERATOR(pg_catalog.=) 'array'
             ORDER BY i.key
        LOOP
            IF pg_catalog.jsonb_array_length(val) OPERATOR(pg_catalog.<>) 2
               OR pg_catalog.jsonb_typeof(val OPERATOR(pg_catalog.->) 0) OPERATOR(pg_catalog.<>) 'string'
               OR pg_catalog.jsonb_typeof(val OPERATOR(pg_catalog.->) 1) OPERATOR(pg_catalog.<>) 'number'
               OR NOT (val OPERATOR(pg_catalog.->>) 1) OPERATOR(pg_catalog.~) '^[0-9]+$' THEN
                RAISE EXCEPTION 'input "%" of node "%" of workflow "%" is not a valid link',
                                input_name, node_id, wf
                    USING ERRCODE = 'invalid_parameter_value',
                          DETAIL = pg_catalog.format('A link is [node id, output index]: a string and a whole number from 0; the input holds %s.',
                                                     pg_catalog.left(val::text, 100)),
                          HINT = export_hint;
            END IF;
            IF NOT NEW.graph OPERATOR(pg_catalog.?) (val OPERATOR(pg_catalog.->>) 0) THEN
                RAISE EXCEPTION 'node "%" of workflow "%" links to node "%", which the graph lacks',
                                node_id, wf, val OPERATOR(pg_catalog.->>) 0
                    USING ERRCODE = 'invalid_parameter_value',
                          DETAIL = pg_catalog.format('Input "%s" of node "%s" (%s) is the link %s.',
                                                     input_name, node_id,
                                                     node OPERATOR(pg_catalog.->>) 'class_type', val::text),
                          HINT = 'Every link names a node of the same graph; export the whole workflow again.';
            END IF;
        END LOOP;
    END LOOP;

    -- no cycle: ComfyUI could not order the nodes
    WITH RECURSIVE links (node, source) AS (
        SELECT n.key, i.value OPERATOR(pg_catalog.->>) 0
          FROM pg_catalog.jsonb_each(NEW.graph) n,
               pg_catalog.jsonb_each(n.value OPERATOR(pg_catalog.->) 'inputs') i
         WHERE pg_catalog.jsonb_typeof(i.value) OPERATOR(pg_catalog.=) 'array'
    ), feeds (node, source) AS (
        SELECT l.node, l.source FROM links l
        UNION
        SELECT f.node, l.source
          FROM feeds f JOIN links l ON l.node OPERATOR(pg_catalog.=) f.source
    )
    SELECT pg_catalog.min(f.node) INTO node_id
      FROM feeds f WHERE f.node OPERATOR(pg_catalog.=) f.source;
    IF node_id IS NOT NULL THEN
        RAISE EXCEPTION 'node "%" of workflow "%" is in a cycle of links', node_id, wf
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('Following the links into node "%s" leads back to it.', node_id),
                  HINT = 'A workflow''s links must not loop; export the workflow again.';
    END IF;

    IF saves OPERATOR(pg_catalog.=) 0 THEN
        RAISE EXCEPTION 'workflow "%" has no SaveImage node', wf
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('igny8_ai takes the images a SaveImage node writes; the graph has %s.',
                           (SELECT pg_catalog.string_agg(DISTINCT n.value OPERATOR(pg_catalog.->>) 'class_type', ', '
                                             ORDER BY n.value OPERATOR(pg_catalog.->>) 'class_type')
                              FROM pg_catalog.jsonb_each(NEW.graph) n)),
                  HINT = 'Add a SaveImage node fed by the decoded image (VAEDecode), then export the workflow again.';
    END IF;

    -- the bindings
    IF pg_catalog.jsonb_typeof(NEW.bindings) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION 'bindings of workflow "%" are not a JSON object', wf
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('They are a JSON %s.', pg_catalog.jsonb_typeof(NEW.bindings)),
                  HINT = bind_hint;
    END IF;
    FOR param, target IN
        SELECT b.key, b.value FROM pg_catalog.jsonb_each(NEW.bindings) b ORDER BY b.key
    LOOP
        IF NOT param OPERATOR(pg_catalog.=) ANY (params) THEN
            RAISE EXCEPTION 'workflow "%" binds unknown parameter "%"', wf, param
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'The parameters a workflow can bind are ' OPERATOR(pg_catalog.||) params_list OPERATOR(pg_catalog.||) '.',
                      HINT = 'Leave an input the call does not set as the graph has it.';
        END IF;
        ok := pg_catalog.jsonb_typeof(target) OPERATOR(pg_catalog.=) 'array';
        IF ok THEN
            ok := pg_catalog.jsonb_array_length(target) OPERATOR(pg_catalog.=) 2
                  AND pg_catalog.jsonb_typeof(target OPERATOR(pg_catalog.->) 0) OPERATOR(pg_catalog.=) 'string'
                  AND pg_catalog.jsonb_typeof(target OPERATOR(pg_catalog.->) 1) OPERATOR(pg_catalog.=) 'string';
        END IF;
        IF NOT ok THEN
            RAISE EXCEPTION 'binding "%" of workflow "%" is not [node id, input name]', param, wf
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('It is %s.', pg_catalog.left(target::text, 100)),
                      HINT = bind_hint;
        END IF;
        node_id := target OPERATOR(pg_catalog.->>) 0;
        input_name := target OPERATOR(pg_catalog.->>) 1;
        node := NEW.graph OPERATOR(pg_catalog.->) node_id;
        IF node IS NULL THEN
            RAISE EXCEPTION 'binding "%" of workflow "%" names node "%", which the graph lacks',
                            param, wf, node_id
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('The graph''s nodes are %s.',
                               (SELECT pg_catalog.string_agg(pg_catalog.format('"%s" (%s)', n.key,
                                                             n.value OPERATOR(pg_catalog.->>) 'class_type'),
                                                             ', ' ORDER BY n.key)
                                  FROM pg_catalog.jsonb_each(NEW.graph) n)),
                      HINT = bind_hint;
        END IF;
        val := node OPERATOR(pg_catalog.->) 'inputs' OPERATOR(pg_catalog.->) input_name;
        IF val IS NULL THEN
            RAISE EXCEPTION 'binding "%" of workflow "%" names input "%" of node "%", which that node lacks',
                            param, wf, input_name, node_id
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('Node "%s" (%s) has the inputs %s.', node_id,
                               node OPERATOR(pg_catalog.->>) 'class_type',
                               coalesce((SELECT pg_catalog.string_agg(pg_catalog.format('"%s"', i.key), ', ' ORDER BY i.key)
                                           FROM pg_catalog.jsonb_object_keys(node OPERATOR(pg_catalog.->) 'inputs') i (key)),
                                        '(none)')),
                      HINT = bind_hint;
        END IF;
        IF pg_catalog.jsonb_typeof(val) OPERATOR(pg_catalog.=) 'array' THEN
            RAISE EXCEPTION 'binding "%" of workflow "%" names input "%" of node "%", which is a link',
                            param, wf, input_name, node_id
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('That input is the link %s, from node "%s"; the call can only replace a value.',
                                                 val::text, val OPERATOR(pg_catalog.->>) 0),
                      HINT = bind_hint;
        END IF;
        want := CASE WHEN param OPERATOR(pg_catalog.=) ANY (texts) THEN 'string' ELSE 'number' END;
        IF pg_catalog.jsonb_typeof(val) OPERATOR(pg_catalog.<>) want THEN
            RAISE EXCEPTION 'binding "%" of workflow "%" names input "%" of node "%", which does not hold a %',
                            param, wf, input_name, node_id, want
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('"%s" is a %s, and the input holds %s.',
                                                 param, want, pg_catalog.left(val::text, 100)),
                      HINT = bind_hint;
        END IF;
        other := (SELECT b.key FROM pg_catalog.jsonb_each(NEW.bindings) b
                   WHERE b.key OPERATOR(pg_catalog.<) param
                     AND b.value OPERATOR(pg_catalog.=) target
                   ORDER BY b.key LIMIT 1);
        IF other IS NOT NULL THEN
            RAISE EXCEPTION 'bindings "%" and "%" of workflow "%" name the same input', other, param, wf
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('Both name input "%s" of node "%s".', input_name, node_id),
                      HINT = bind_hint;
        END IF;
    END LOOP;
    FOREACH param IN ARRAY required LOOP
        IF NOT NEW.bindings OPERATOR(pg_catalog.?) param THEN
            RAISE EXCEPTION 'workflow "%" does not bind "%"', wf, param
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Every workflow binds prompt, width, height, seed and filename_prefix: each call sets them.',
                      HINT = pg_catalog.format('Add "%s": [node id, input name] to the bindings.', param);
        END IF;
    END LOOP;

    -- the defaults
    IF pg_catalog.jsonb_typeof(NEW.defaults) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION 'defaults of workflow "%" are not a JSON object', wf
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('They are a JSON %s.', pg_catalog.jsonb_typeof(NEW.defaults)),
                  HINT = 'defaults maps a bound parameter to its value, e.g. {"steps": 20, "cfg": 1.0}.';
    END IF;
    FOR param, val IN
        SELECT d.key, d.value FROM pg_catalog.jsonb_each(NEW.defaults) d ORDER BY d.key
    LOOP
        IF NOT param OPERATOR(pg_catalog.=) ANY (params) THEN
            RAISE EXCEPTION 'defaults of workflow "%" give unknown parameter "%"', wf, param
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'The parameters are ' OPERATOR(pg_catalog.||) params_list OPERATOR(pg_catalog.||) '.',
                      HINT = 'defaults maps a bound parameter to its value, e.g. {"steps": 20, "cfg": 1.0}.';
        END IF;
        IF NOT NEW.bindings OPERATOR(pg_catalog.?) param THEN
            RAISE EXCEPTION 'defaults of workflow "%" give "%", which the workflow does not bind', wf, param
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'A default replaces the value of a bound input; this one would never be used.',
                      HINT = pg_catalog.format('Bind "%s" too, or drop its default.', param);
        END IF;
        -- what ComfyUI's KSampler, latent and SaveImage nodes accept
        whole := true;
        IF param OPERATOR(pg_catalog.=) ANY (texts) THEN
            lo := NULL;
        ELSIF param OPERATOR(pg_catalog.=) ANY (ARRAY['width', 'height']) THEN
            lo := 16; hi := 16384;
        ELSIF param OPERATOR(pg_catalog.=) 'steps' THEN
            lo := 1; hi := 10000;
        ELSIF param OPERATOR(pg_catalog.=) 'seed' THEN
            lo := 0; hi := 18446744073709551615;
        ELSE
            lo := 0; hi := 100; whole := false;     -- cfg
        END IF;
        IF lo IS NULL THEN
            want := 'a string';
            ok := pg_catalog.jsonb_typeof(val) OPERATOR(pg_catalog.=) 'string';
        ELSE
            want := pg_catalog.format('a %s from %s to %s',
                                      CASE WHEN whole THEN 'whole number' ELSE 'number' END, lo, hi);
            ok := pg_catalog.jsonb_typeof(val) OPERATOR(pg_catalog.=) 'number';
            IF ok THEN
                num := (val OPERATOR(pg_catalog.#>>) '{}')::numeric;
                ok := num OPERATOR(pg_catalog.>=) lo AND num OPERATOR(pg_catalog.<=) hi
                      AND (NOT whole OR num OPERATOR(pg_catalog.=) pg_catalog.trunc(num));
            END IF;
        END IF;
        IF NOT ok THEN
            RAISE EXCEPTION 'default "%" of workflow "%" is not valid', param, wf
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('"%s" takes %s; the default is %s.',
                                                 param, want, pg_catalog.left(val::text, 100)),
                      HINT = 'defaults maps a bound parameter to its value, e.g. {"steps": 20, "cfg": 1.0}.';
        END IF;
    END LOOP;
    RETURN NEW;
END
$$;

CREATE TRIGGER igny8_workflows_check
    BEFORE INSERT OR UPDATE ON igny8_workflows
    FOR EACH ROW EXECUTE FUNCTION igny8_workflow_check();

-- Before a workflow is deleted: one that deployments use is refused (the
-- foreign key would refuse it too, without saying what to do).
CREATE FUNCTION igny8_workflow_in_use() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    users text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.format('%s on %s', m.alias, m.provider_id),
                                 ', ' ORDER BY m.alias, m.provider_id)
      INTO users
      FROM @extschema@.igny8_models m
     WHERE m.workflow OPERATOR(pg_catalog.=) OLD.name;
    IF users IS NOT NULL THEN
        RAISE EXCEPTION 'workflow "%" is in use', OLD.name
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = pg_catalog.format('Deployments run it: %s.', users),
                  HINT = 'Point those deployments at another workflow (UPDATE igny8_models SET workflow = ...), or delete them, first.';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER igny8_workflows_in_use
    BEFORE DELETE ON igny8_workflows
    FOR EACH ROW EXECUTE FUNCTION igny8_workflow_in_use();

-- Before a deployment is written: its provider's kind serves its task
-- (text: ollama, openai, anthropic; images: comfyui, openai; as the
-- workers' src/job.c text_serves and src/image.c image_serves say, which
-- fail every attempt of any other pair); an image deployment on a ComfyUI
-- provider runs a workflow, and only there does a deployment have one.
CREATE FUNCTION igny8_deployment_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    provider_kind text;
BEGIN
    SELECT p.kind INTO provider_kind
      FROM @extschema@.igny8_providers p
     WHERE p.id OPERATOR(pg_catalog.=) NEW.provider_id;
    IF NOT FOUND THEN
        RETURN NEW;     -- the foreign key says so
    END IF;
    IF (CASE NEW.task
            WHEN 'text' THEN provider_kind OPERATOR(pg_catalog.<>) ALL (ARRAY['ollama', 'openai', 'anthropic'])
            WHEN 'image' THEN provider_kind OPERATOR(pg_catalog.<>) ALL (ARRAY['comfyui', 'openai'])
            ELSE false END) THEN    -- (another task: the CHECK on task says so)
        RAISE EXCEPTION '% deployment of alias "%" on provider "%" cannot work: a provider of kind % does not serve %',
                        NEW.task, NEW.alias, NEW.provider_id, provider_kind,
                        CASE NEW.task WHEN 'image' THEN 'images' ELSE 'text' END
            USING ERRCODE = 'check_violation',
                  DETAIL = pg_catalog.format('Every call of the alias would fail on provider "%s" (kind %s): it serves %s only.',
                                             NEW.provider_id, provider_kind,
                                             CASE WHEN provider_kind OPERATOR(pg_catalog.=) 'comfyui'
                                                  THEN 'images' ELSE 'text' END),
                  HINT = 'Deploy images on a provider of kind comfyui or openai, and text on one of kind ollama, openai or anthropic.';
    END IF;
    IF provider_kind OPERATOR(pg_catalog.=) 'comfyui' AND
       NEW.task OPERATOR(pg_catalog.=) 'image' AND NEW.workflow IS NULL THEN
        RAISE EXCEPTION 'image deployment of alias "%" on provider "%" has no workflow',
                        NEW.alias, NEW.provider_id
            USING ERRCODE = 'check_violation',
                  DETAIL = pg_catalog.format('Provider "%s" is a ComfyUI server: what it makes is a workflow of igny8_workflows.',
                                             NEW.provider_id),
                  HINT = 'Set workflow to the name of a row of igny8_workflows.';
    END IF;
    IF provider_kind OPERATOR(pg_catalog.<>) 'comfyui' AND NEW.workflow IS NOT NULL THEN
        RAISE EXCEPTION 'deployment of alias "%" on provider "%" has a workflow, but the provider is not a ComfyUI server',
                        NEW.alias, NEW.provider_id
            USING ERRCODE = 'check_violation',
                  DETAIL = pg_catalog.format('Only providers of kind comfyui run workflows; "%s" is of kind %s.',
                                             NEW.provider_id, provider_kind),
                  HINT = 'Set workflow to NULL, or deploy the alias on a comfyui provider.';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER igny8_models_check
    BEFORE INSERT OR UPDATE ON igny8_models
    FOR EACH ROW EXECUTE FUNCTION igny8_deployment_check();

-- After a provider's kind changed: its deployments still fit it (the kind
-- serves their task, as igny8_deployment_check above says; workflows).
CREATE FUNCTION igny8_provider_kind_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    misfit record;
BEGIN
    IF OLD.kind OPERATOR(pg_catalog.=) NEW.kind THEN
        RETURN NULL;
    END IF;
    SELECT m.alias, m.task, m.workflow,
           CASE m.task
               WHEN 'text' THEN NEW.kind OPERATOR(pg_catalog.<>) ALL (ARRAY['ollama', 'openai', 'anthropic'])
               WHEN 'image' THEN NEW.kind OPERATOR(pg_catalog.<>) ALL (ARRAY['comfyui', 'openai'])
               ELSE false END AS unserved
      INTO misfit
      FROM @extschema@.igny8_models m
     WHERE m.provider_id OPERATOR(pg_catalog.=) NEW.id
       AND (CASE m.task
                WHEN 'text' THEN NEW.kind OPERATOR(pg_catalog.<>) ALL (ARRAY['ollama', 'openai', 'anthropic'])
                WHEN 'image' THEN NEW.kind OPERATOR(pg_catalog.<>) ALL (ARRAY['comfyui', 'openai'])
                ELSE false END
            OR CASE WHEN NEW.kind OPERATOR(pg_catalog.=) 'comfyui'
                    THEN m.task OPERATOR(pg_catalog.=) 'image' AND m.workflow IS NULL
                    ELSE m.workflow IS NOT NULL END)
     ORDER BY 4 DESC, m.alias LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'provider "%" cannot become of kind %: % deployment of alias "%" does not fit it',
                        NEW.id, NEW.kind, misfit.task, misfit.alias
            USING ERRCODE = 'check_violation',
                  DETAIL = CASE WHEN misfit.unserved
                           THEN pg_catalog.format('A provider of kind %s does not serve %s: every call of the alias would fail on it.',
                                                  NEW.kind,
                                                  CASE misfit.task WHEN 'image' THEN 'images' ELSE 'text' END)
                           WHEN misfit.workflow IS NULL
                           THEN 'An image deployment on a ComfyUI provider needs a workflow; it has none.'
                           ELSE pg_catalog.format('It runs workflow "%s", and only providers of kind comfyui run workflows.',
                                                  misfit.workflow) END,
                  HINT = CASE WHEN misfit.unserved
                         THEN 'Move or delete the provider''s deployments first: images are served by kinds comfyui and openai, text by ollama, openai and anthropic.'
                         ELSE 'Move or delete the provider''s deployments first.' END;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER igny8_providers_kind_check
    AFTER UPDATE OF kind ON igny8_providers
    FOR EACH ROW EXECUTE FUNCTION igny8_provider_kind_check();

-- After a provider was renamed or deleted: the prices, reference models
-- and rents that name it follow, as its deployments and its settings per
-- account follow their foreign keys (ON UPDATE CASCADE ON DELETE
-- CASCADE).  No foreign key can do it here: a restore writes prices and
-- reference models before the providers added to the shipped ones (their
-- checks wait for the commit, and skip a restore), and a rent names its
-- providers in an array.  Left behind, the old name would price nothing
-- (a renamed OpenAI's attempts would cost 0 and pass every budget) and
-- pay no rent.  Prices and reference models are renamed or deleted.  A
-- rent is history as well (the months it was paid, and whose past work
-- it paid for, as ai_usage_log names it), which no change may rewrite:
-- a rent that has ended is left as it is; one that runs now ends now,
-- naming the provider as it did, and a copy goes on from now with the
-- provider renamed or left out; one that has not started is changed (a
-- rent of the deleted provider alone goes).  The rows' own triggers see
-- the change: origin and the deletions pg_dump keeps, the checks at
-- commit, and the workers reload once, at commit.  A delete does nothing
-- while a dump is restored (pg_dump sets check_function_bodies off): the
-- shipped provider a restore deletes again took its shipped rows with it
-- when the DBA deleted it, and the dump deletes those, or brings back
-- their edited rows, by itself.
CREATE FUNCTION igny8_provider_follow() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    renamed boolean := TG_OP OPERATOR(pg_catalog.=) 'UPDATE';
    rent record;
    rest text[];
BEGIN
    IF renamed AND OLD.id OPERATOR(pg_catalog.=) NEW.id THEN
        RETURN NULL;            -- the id was set, not changed
    END IF;
    IF NOT renamed AND
       pg_catalog.current_setting('check_function_bodies') OPERATOR(pg_catalog.=) 'off' THEN
        RETURN NULL;            -- a restore
    END IF;
    IF renamed THEN
        UPDATE @extschema@.igny8_prices p SET provider = NEW.id
         WHERE p.provider OPERATOR(pg_catalog.=) OLD.id;
        UPDATE @extschema@.igny8_reference_models r SET provider = NEW.id
         WHERE r.provider OPERATOR(pg_catalog.=) OLD.id;
    ELSE
        DELETE FROM @extschema@.igny8_reference_models r
         WHERE r.provider OPERATOR(pg_catalog.=) OLD.id;
        DELETE FROM @extschema@.igny8_prices p
         WHERE p.provider OPERATOR(pg_catalog.=) OLD.id;
    END IF;
    -- the rents: an ended one is left as it is; one that has not started
    -- is changed (a rent of the deleted provider alone goes); one that
    -- runs now ends now, naming the provider as it did, and goes on from
    -- now with the provider renamed or left out
    FOR rent IN SELECT f.* FROM @extschema@.igny8_fixed_costs f
              WHERE OLD.id OPERATOR(pg_catalog.=) ANY (f.providers)
                AND (f.valid_to IS NULL OR f.valid_to OPERATOR(pg_catalog.>) pg_catalog.now())
              ORDER BY f.box, f.valid_from
    LOOP
        rest := CASE WHEN renamed
                     THEN pg_catalog.array_replace(rent.providers, OLD.id, NEW.id)
                     ELSE pg_catalog.array_remove(rent.providers, OLD.id) END;
        IF rent.valid_from OPERATOR(pg_catalog.>=) pg_catalog.now() THEN
            IF pg_catalog.cardinality(rest) OPERATOR(pg_catalog.=) 0 THEN
                DELETE FROM @extschema@.igny8_fixed_costs f
                 WHERE f.box OPERATOR(pg_catalog.=) rent.box
                   AND f.valid_from OPERATOR(pg_catalog.=) rent.valid_from;
            ELSE
                UPDATE @extschema@.igny8_fixed_costs f SET providers = rest
                 WHERE f.box OPERATOR(pg_catalog.=) rent.box
                   AND f.valid_from OPERATOR(pg_catalog.=) rent.valid_from;
            END IF;
            CONTINUE;
        END IF;
        UPDATE @extschema@.igny8_fixed_costs f SET valid_to = pg_catalog.now()
         WHERE f.box OPERATOR(pg_catalog.=) rent.box
           AND f.valid_from OPERATOR(pg_catalog.=) rent.valid_from;
        IF pg_catalog.cardinality(rest) OPERATOR(pg_catalog.>) 0 THEN
            INSERT INTO @extschema@.igny8_fixed_costs
                   (box, providers, description, monthly_amount, valid_from, valid_to)
            VALUES (rent.box, rest, rent.description, rent.monthly_amount, pg_catalog.now(), rent.valid_to);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER igny8_providers_follow
    AFTER UPDATE OF id OR DELETE ON igny8_providers
    FOR EACH ROW EXECUTE FUNCTION igny8_provider_follow();

-- Before a fallback is written: its alias and its fallback alias are
-- aliases of igny8_models (a mistyped one would never be tried: the
-- router skips an alias without deployments).  On an UPDATE, the names it
-- changes.  As for igny8_cache_settings: not while a dump is restored
-- (pg_dump sets check_function_bodies off), whose fallbacks come before
-- the deployments they name, which no foreign key orders; and not when a
-- deployment goes (DELETE of an alias's last deployment, or a change of
-- its alias), which leaves the fallbacks that name it, skipped, until the
-- alias is deployed again.
CREATE FUNCTION igny8_fallback_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.current_setting('check_function_bodies') OPERATOR(pg_catalog.=) 'off' THEN
        RETURN NEW;             -- a restore
    END IF;
    IF (TG_OP = 'INSERT' OR NEW.alias IS DISTINCT FROM OLD.alias) AND
       NOT EXISTS (SELECT 1 FROM @extschema@.igny8_models m
                    WHERE m.alias OPERATOR(pg_catalog.=) NEW.alias) THEN
        RAISE EXCEPTION 'model alias "%" does not exist', NEW.alias
            USING ERRCODE = 'undefined_object',
                  DETAIL = pg_catalog.format('Fallback %s of alias "%s" (to "%s") would never be tried: the alias has no deployment in igny8_models.',
                                             NEW.position, NEW.alias, NEW.fallback_alias),
                  HINT = 'Model aliases are the "alias" column of igny8_models: deploy the alias first.';
    END IF;
    IF (TG_OP = 'INSERT' OR NEW.fallback_alias IS DISTINCT FROM OLD.fallback_alias) AND
       NOT EXISTS (SELECT 1 FROM @extschema@.igny8_models m
                    WHERE m.alias OPERATOR(pg_catalog.=) NEW.fallback_alias) THEN
        RAISE EXCEPTION 'fallback alias "%" of model alias "%" does not exist', NEW.fallback_alias, NEW.alias
            USING ERRCODE = 'undefined_object',
                  DETAIL = pg_catalog.format('Fallback %s of alias "%s" would never be tried: "%s" has no deployment in igny8_models.',
                                             NEW.position, NEW.alias, NEW.fallback_alias),
                  HINT = 'Model aliases are the "alias" column of igny8_models: deploy the fallback alias first.';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER igny8_fallbacks_check
    BEFORE INSERT OR UPDATE ON igny8_fallbacks
    FOR EACH ROW EXECUTE FUNCTION igny8_fallback_check();

-- Before a provider or a deployment is written: its settings are the keys
-- the workers read (src/config.c, src/provider_*.c), each of the type they
-- read; a misspelt key or a value of another type would be ignored, or
-- fail every call.  what names the row; proxy, ca_file and
-- check_models are read from the provider only.  Messages quote no value
-- of proxy (it may carry a password).
CREATE FUNCTION igny8_settings_check(settings jsonb, what text, on_provider boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    known constant text[] := ARRAY['anthropic_version', 'ca_file', 'check_models',
                                   'extra_body', 'keep_alive', 'max_image_bytes',
                                   'max_tokens_field', 'options', 'proxy', 'think'];
    provider_only constant text[] := ARRAY['ca_file', 'check_models', 'proxy'];
    hint constant text := 'The settings keys are anthropic_version, ca_file, check_models, extra_body, keep_alive, max_image_bytes, max_tokens_field, options, proxy and think (README, "settings keys").';
    k text;
    v jsonb;
    t text;
    want text;
    ok boolean;
    num numeric;
BEGIN
    FOR k, v IN SELECT s.key, s.value FROM pg_catalog.jsonb_each(settings) s ORDER BY s.key LOOP
        IF NOT k OPERATOR(pg_catalog.=) ANY (known) THEN
            RAISE EXCEPTION 'unknown settings key "%" of %', k, what
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'The workers read no such key: it would be ignored.',
                      HINT = hint;
        END IF;
        IF NOT on_provider AND k OPERATOR(pg_catalog.=) ANY (provider_only) THEN
            RAISE EXCEPTION 'settings key "%" of % belongs on its provider', k, what
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'proxy, ca_file and check_models are read from igny8_providers.settings only; on a deployment they would be ignored.',
                      HINT = pg_catalog.format('Set "%s" in the settings of the provider.', k);
        END IF;
        t := pg_catalog.jsonb_typeof(v);
        want := CASE k
            WHEN 'keep_alive' THEN 'a string ("30m") or a number of seconds'
            WHEN 'think' THEN 'true, false or a level ("low", "medium", "high")'
            WHEN 'options' THEN 'a JSON object'
            WHEN 'extra_body' THEN 'a JSON object'
            WHEN 'max_tokens_field' THEN 'a field name ("max_completion_tokens")'
            WHEN 'anthropic_version' THEN 'a version string ("2023-06-01")'
            WHEN 'proxy' THEN 'a proxy URL (http://host:3128, https://, socks5://, socks5h://, socks4://, socks4a://)'
            WHEN 'ca_file' THEN 'the absolute path of a PEM file'
            WHEN 'max_image_bytes' THEN 'a whole number of bytes, at least 1'
            ELSE 'true or false' END;      -- check_models
        ok := CASE k
            WHEN 'keep_alive' THEN t OPERATOR(pg_catalog.=) ANY (ARRAY['string', 'number'])
            WHEN 'think' THEN t OPERATOR(pg_catalog.=) ANY (ARRAY['boolean', 'string'])
            WHEN 'options' THEN t OPERATOR(pg_catalog.=) 'object'
            WHEN 'extra_body' THEN t OPERATOR(pg_catalog.=) 'object'
            WHEN 'max_tokens_field' THEN t OPERATOR(pg_catalog.=) 'string' AND
                 (v OPERATOR(pg_catalog.#>>) '{}') OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_]*$'
            WHEN 'anthropic_version' THEN t OPERATOR(pg_catalog.=) 'string' AND
                 (v OPERATOR(pg_catalog.#>>) '{}') OPERATOR(pg_catalog.~) '^[^[:space:][:cntrl:]]+$'
            -- no space or control character; a scheme, if any, one curl's
            -- proxies speak (without one, curl takes http://); "" is no
            -- proxy, as when the key is absent
            WHEN 'proxy' THEN t OPERATOR(pg_catalog.=) 'string' AND
                 (v OPERATOR(pg_catalog.#>>) '{}') OPERATOR(pg_catalog.~) '^[^[:space:][:cntrl:]]*$' AND
                 ((v OPERATOR(pg_catalog.#>>) '{}') OPERATOR(pg_catalog.!~) '://' OR
                  (v OPERATOR(pg_catalog.#>>) '{}') OPERATOR(pg_catalog.~*) '^(https?|socks4a?|socks5h?)://.')
            WHEN 'ca_file' THEN t OPERATOR(pg_catalog.=) 'string' AND
                 (v OPERATOR(pg_catalog.#>>) '{}') OPERATOR(pg_catalog.~) '^/[^[:cntrl:]]*$'
            WHEN 'max_image_bytes' THEN t OPERATOR(pg_catalog.=) 'number'
            ELSE t OPERATOR(pg_catalog.=) 'boolean' END;
        IF ok AND k OPERATOR(pg_catalog.=) 'max_image_bytes' THEN
            num := (v OPERATOR(pg_catalog.#>>) '{}')::numeric;
            ok := num OPERATOR(pg_catalog.>=) 1 AND num OPERATOR(pg_catalog.=) pg_catalog.trunc(num);
        END IF;
        IF NOT ok THEN
            RAISE EXCEPTION 'settings key "%" of % is not valid', k, what
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = CASE WHEN k OPERATOR(pg_catalog.=) 'proxy'
                               THEN pg_catalog.format('"%s" takes %s; the value is a JSON %s that is not one.', k, want, t)
                               ELSE pg_catalog.format('"%s" takes %s; the value is %s.', k, want,
                                                      pg_catalog.left(v::text, 100)) END,
                      HINT = hint;
        END IF;
    END LOOP;
END
$$;

-- Before a provider is written: its base_url has a port in range and does
-- not end in /v1 (the workers add the API path: /v1/v1/... would fail
-- every call), its api_key_ref is env:NAME, file:/absolute/path or a key,
-- and its settings are valid (above).  An UPDATE has only the columns it
-- changes checked: a row written before a check existed can still be
-- disabled, or have its priority changed.  The messages never repeat the
-- key reference (it could be a key) nor a URL's user information.
CREATE FUNCTION igny8_provider_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    authority text;
    port text;
    bad_port boolean;
    url_changed boolean := true;
    ref_changed boolean := true;
    settings_changed boolean := true;
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        url_changed := NEW.base_url IS DISTINCT FROM OLD.base_url;
        ref_changed := NEW.api_key_ref IS DISTINCT FROM OLD.api_key_ref;
        settings_changed := NEW.settings IS DISTINCT FROM OLD.settings;
    END IF;
    IF url_changed THEN
        -- host[:port], without user information (user:password@)
        authority := pg_catalog.substring(NEW.base_url, '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#@]*)');
        -- [IPv6]:port or host:port; no port: NULL
        port := pg_catalog.substring(authority, '^(?:\[[^]]*\]|[^:\[]*):(.*)$');
        bad_port := port OPERATOR(pg_catalog.!~) '^[0-9]{1,5}$';
        IF NOT bad_port THEN
            bad_port := port::integer OPERATOR(pg_catalog.<) 1 OR port::integer OPERATOR(pg_catalog.>) 65535;
        END IF;
        IF port IS NOT NULL AND bad_port THEN
            RAISE EXCEPTION 'base_url of provider "%" has an invalid port', NEW.id
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('The port is "%s"; a port is a number from 1 to 65535.',
                                                 pg_catalog.left(port, 20)),
                      HINT = 'Give the URL as scheme://host[:port][/path], e.g. http://gpu-box:11434.';
        END IF;
        IF NEW.base_url OPERATOR(pg_catalog.~*) '^[a-z]+://[^/]*(/.*)?/v1/*$' THEN
            RAISE EXCEPTION 'base_url of provider "%" ends in /v1', NEW.id
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'The workers add the API path (/v1/chat/completions, /v1/messages, /api/chat): every call would go to /v1/v1/... or /v1/api/....',
                      HINT = 'Leave /v1 out: https://api.openai.com, not https://api.openai.com/v1 (for Ollama''s OpenAI-compatible API, kind openai at the server''s root).';
        END IF;
    END IF;
    IF ref_changed AND NEW.api_key_ref IS NOT NULL AND
       (NEW.api_key_ref OPERATOR(pg_catalog.~) '^[[:space:]]*$' OR
        (NEW.api_key_ref OPERATOR(pg_catalog.~) '^env:' AND
         NEW.api_key_ref OPERATOR(pg_catalog.!~) '^env:[A-Za-z_][A-Za-z0-9_]*$') OR
        (NEW.api_key_ref OPERATOR(pg_catalog.~) '^file:' AND
         NEW.api_key_ref OPERATOR(pg_catalog.!~) '^file:/[^[:cntrl:]]+$')) THEN
        RAISE EXCEPTION 'invalid API key reference for provider "%"', NEW.id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'api_key_ref is env:NAME (a variable of the server''s environment), file:/absolute/path, or the key itself; NULL when the provider needs no key.',
                  HINT = 'Put the key in a file the server can read, and give its path as file:/path.';
    END IF;
    IF settings_changed THEN
        PERFORM @extschema@.igny8_settings_check(NEW.settings,
                                                 pg_catalog.format('provider "%s"', NEW.id), true);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER igny8_providers_check
    BEFORE INSERT OR UPDATE ON igny8_providers
    FOR EACH ROW EXECUTE FUNCTION igny8_provider_check();

-- Before a deployment is written: its settings are valid (above); an
-- UPDATE that leaves them as they were is not checked.
CREATE FUNCTION igny8_deployment_settings_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        IF NEW.settings IS NOT DISTINCT FROM OLD.settings THEN
            RETURN NEW;
        END IF;
    END IF;
    PERFORM @extschema@.igny8_settings_check(NEW.settings,
                                             pg_catalog.format('the deployment of alias "%s" on provider "%s"',
                                                               NEW.alias, NEW.provider_id), false);
    RETURN NEW;
END
$$;

CREATE TRIGGER igny8_models_settings_check
    BEFORE INSERT OR UPDATE OF settings ON igny8_models
    FOR EACH ROW EXECUTE FUNCTION igny8_deployment_settings_check();

--
-- The seed's configuration, as shipped rows.
--

INSERT INTO igny8_providers (id, kind, base_url, api_key_ref, priority,
                             max_concurrent, settings, origin) VALUES
    ('self_hosted_ai', 'ollama', 'http://localhost:11434', NULL, 10, 8,
     '{"keep_alive": "30m"}', 'shipped'),
    ('openai', 'openai', 'https://api.openai.com', 'env:OPENAI_API_KEY', 5, 64,
     '{}', 'shipped'),
    ('anthropic', 'anthropic', 'https://api.anthropic.com',
     'env:ANTHROPIC_API_KEY', 4, 64, '{}', 'shipped'),
    ('comfyui', 'comfyui', 'http://localhost:8188', NULL, 10, 2, '{}', 'shipped');

-- The image workflows, as ComfyUI's "Export (API)" writes them.  The
-- model files are named as their publishers name them; the description
-- says where each comes from and which folder of ComfyUI's models/ it
-- goes in.  The graphs' own prompt, size, seed and file name prefix are
-- placeholders that every call replaces (bindings).
INSERT INTO igny8_workflows (name, graph, bindings, defaults, description, origin) VALUES
    ('flux1-dev',
     $graph${
        "6":  {"class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Positive Prompt)"},
               "inputs": {"text": "", "clip": ["11", 0]}},
        "8":  {"class_type": "VAEDecode", "_meta": {"title": "VAE Decode"},
               "inputs": {"samples": ["13", 0], "vae": ["10", 0]}},
        "9":  {"class_type": "SaveImage", "_meta": {"title": "Save Image"},
               "inputs": {"filename_prefix": "igny8", "images": ["8", 0]}},
        "10": {"class_type": "VAELoader", "_meta": {"title": "Load VAE"},
               "inputs": {"vae_name": "ae.safetensors"}},
        "11": {"class_type": "DualCLIPLoader", "_meta": {"title": "DualCLIPLoader"},
               "inputs": {"clip_name1": "t5xxl_fp16.safetensors", "clip_name2": "clip_l.safetensors",
                          "type": "flux"}},
        "12": {"class_type": "UNETLoader", "_meta": {"title": "Load Diffusion Model"},
               "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "13": {"class_type": "KSampler", "_meta": {"title": "KSampler"},
               "inputs": {"model": ["12", 0], "positive": ["26", 0], "negative": ["33", 0],
                          "latent_image": ["27", 0], "seed": 0, "steps": 20, "cfg": 1.0,
                          "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "26": {"class_type": "FluxGuidance", "_meta": {"title": "FluxGuidance"},
               "inputs": {"guidance": 3.5, "conditioning": ["6", 0]}},
        "27": {"class_type": "EmptySD3LatentImage", "_meta": {"title": "EmptySD3LatentImage"},
               "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "33": {"class_type": "ConditioningZeroOut", "_meta": {"title": "ConditioningZeroOut"},
               "inputs": {"conditioning": ["6", 0]}}
     }$graph$,
     $bindings${"prompt": ["6", "text"], "width": ["27", "width"], "height": ["27", "height"],
                "steps": ["13", "steps"], "cfg": ["13", "cfg"], "seed": ["13", "seed"],
                "filename_prefix": ["9", "filename_prefix"]}$bindings$,
     '{"steps": 20, "cfg": 1.0}',
     'FLUX.1 [dev], 1024x1024, 20 steps, guidance 3.5 (no negative prompt: FLUX.1 [dev] ignores it). '
     'Files: flux1-dev.safetensors in models/diffusion_models and ae.safetensors in models/vae, '
     'from black-forest-labs/FLUX.1-dev (gated: accept its licence on Hugging Face first); '
     't5xxl_fp16.safetensors and clip_l.safetensors in models/text_encoders, '
     'from comfyanonymous/flux_text_encoders.',
     'shipped'),
    ('sd3.5-large',
     $graph${
        "3":  {"class_type": "KSampler", "_meta": {"title": "KSampler"},
               "inputs": {"model": ["13", 0], "positive": ["6", 0], "negative": ["7", 0],
                          "latent_image": ["5", 0], "seed": 0, "steps": 28, "cfg": 4.5,
                          "sampler_name": "euler", "scheduler": "sgm_uniform", "denoise": 1.0}},
        "4":  {"class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"},
               "inputs": {"ckpt_name": "sd3.5_large.safetensors"}},
        "5":  {"class_type": "EmptySD3LatentImage", "_meta": {"title": "EmptySD3LatentImage"},
               "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "6":  {"class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Positive Prompt)"},
               "inputs": {"text": "", "clip": ["11", 0]}},
        "7":  {"class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Negative Prompt)"},
               "inputs": {"text": "", "clip": ["11", 0]}},
        "8":  {"class_type": "VAEDecode", "_meta": {"title": "VAE Decode"},
               "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9":  {"class_type": "SaveImage", "_meta": {"title": "Save Image"},
               "inputs": {"filename_prefix": "igny8", "images": ["8", 0]}},
        "11": {"class_type": "TripleCLIPLoader", "_meta": {"title": "TripleCLIPLoader"},
               "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors",
                          "clip_name3": "t5xxl_fp16.safetensors"}},
        "13": {"class_type": "ModelSamplingSD3", "_meta": {"title": "ModelSamplingSD3"},
               "inputs": {"model": ["4", 0], "shift": 3.0}}
     }$graph$,
     $bindings${"prompt": ["6", "text"], "negative_prompt": ["7", "text"],
                "width": ["5", "width"], "height": ["5", "height"],
                "steps": ["3", "steps"], "cfg": ["3", "cfg"], "seed": ["3", "seed"],
                "filename_prefix": ["9", "filename_prefix"]}$bindings$,
     '{"steps": 28, "cfg": 4.5}',
     'Stable Diffusion 3.5 Large, 1024x1024, 28 steps, cfg 4.5, euler, sgm_uniform, shift 3. '
     'Files, from stabilityai/stable-diffusion-3.5-large (gated: accept its licence on Hugging Face first): '
     'sd3.5_large.safetensors in models/checkpoints (its VAE is inside; the text encoders are not), '
     'and text_encoders/clip_l.safetensors, clip_g.safetensors and t5xxl_fp16.safetensors in models/text_encoders.',
     'shipped'),
    ('sdxl-lightning-4step',
     $graph${
        "3":  {"class_type": "KSampler", "_meta": {"title": "KSampler"},
               "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                          "latent_image": ["5", 0], "seed": 0, "steps": 4, "cfg": 1.0,
                          "sampler_name": "euler", "scheduler": "sgm_uniform", "denoise": 1.0}},
        "4":  {"class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"},
               "inputs": {"ckpt_name": "sdxl_lightning_4step.safetensors"}},
        "5":  {"class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image"},
               "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "6":  {"class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Positive Prompt)"},
               "inputs": {"text": "", "clip": ["4", 1]}},
        "7":  {"class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Negative Prompt)"},
               "inputs": {"text": "", "clip": ["4", 1]}},
        "8":  {"class_type": "VAEDecode", "_meta": {"title": "VAE Decode"},
               "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9":  {"class_type": "SaveImage", "_meta": {"title": "Save Image"},
               "inputs": {"filename_prefix": "igny8", "images": ["8", 0]}}
     }$graph$,
     $bindings${"prompt": ["6", "text"], "negative_prompt": ["7", "text"],
                "width": ["5", "width"], "height": ["5", "height"],
                "steps": ["3", "steps"], "cfg": ["3", "cfg"], "seed": ["3", "seed"],
                "filename_prefix": ["9", "filename_prefix"]}$bindings$,
     '{"steps": 4, "cfg": 1.0}',
     'SDXL-Lightning 4-step, 1024x1024: 4 steps (the step count the checkpoint was distilled for), cfg 1.0, euler, sgm_uniform. '
     'File: sdxl_lightning_4step.safetensors (the all-in-one checkpoint, not the _unet or _lora file) in models/checkpoints, '
     'from ByteDance/SDXL-Lightning.',
     'shipped');

-- OpenAI gpt-4 has an 8,192-token context shared by prompt and answer: its
-- cap leaves half of it to the prompt.
INSERT INTO igny8_models (alias, provider_id, provider_model, timeout,
                          max_tokens, settings, origin) VALUES
    ('gpt-4',                  'self_hosted_ai', 'qwen3:32b',         '300 s', 8000, '{"think": false}', 'shipped'),
    ('gpt-4-turbo',            'self_hosted_ai', 'qwen3:30b-a3b',     '300 s', 8000, '{"think": false}', 'shipped'),
    ('gpt-3.5-turbo',          'self_hosted_ai', 'qwen3:14b',         '180 s', 4000, '{"think": false}', 'shipped'),
    ('gpt-3.5-turbo-fast',     'self_hosted_ai', 'qwen3:8b',          '120 s', 2048, '{"think": false}', 'shipped'),
    ('gpt-4-fallback',         'openai',         'gpt-4',              '60 s', 4096, '{}', 'shipped'),
    ('gpt-4-fallback',         'anthropic',      'claude-sonnet-5-5',  '60 s', 8000, '{}', 'shipped'),
    ('gpt-3.5-turbo-fallback', 'openai',         'gpt-3.5-turbo',      '60 s', 4000, '{}', 'shipped'),
    ('gpt-3.5-turbo-fallback', 'anthropic',      'claude-haiku-5-5',   '60 s', 4000, '{}', 'shipped');

-- Images: the ComfyUI box first, OpenAI's image models as the fallback.
INSERT INTO igny8_models (alias, provider_id, provider_model, task, workflow,
                          timeout, origin) VALUES
    ('dall-e-3',          'comfyui', 'flux1-dev',            'image', 'flux1-dev',            '120 s', 'shipped'),
    ('dall-e-2',          'comfyui', 'sdxl-lightning-4step', 'image', 'sdxl-lightning-4step', '60 s',  'shipped'),
    ('sd3.5',             'comfyui', 'sd3.5-large',          'image', 'sd3.5-large',          '180 s', 'shipped'),
    ('dall-e-3-fallback', 'openai',  'dall-e-3',             'image', NULL,                   '60 s',  'shipped'),
    ('dall-e-2-fallback', 'openai',  'dall-e-2',             'image', NULL,                   '60 s',  'shipped');

INSERT INTO igny8_fallbacks (alias, position, fallback_alias, origin) VALUES
    ('gpt-4',              1, 'gpt-4-fallback',         'shipped'),
    ('gpt-4',              2, 'gpt-3.5-turbo',          'shipped'),
    ('gpt-4-turbo',        1, 'gpt-4-fallback',         'shipped'),
    ('gpt-3.5-turbo',      1, 'gpt-3.5-turbo-fallback', 'shipped'),
    ('gpt-3.5-turbo-fast', 1, 'gpt-3.5-turbo-fallback', 'shipped'),
    ('dall-e-3',           1, 'dall-e-2',               'shipped'),
    ('dall-e-3',           2, 'dall-e-3-fallback',      'shipped'),
    ('dall-e-2',           1, 'dall-e-2-fallback',      'shipped'),
    ('sd3.5',              1, 'dall-e-3-fallback',      'shipped');

-- List prices in USD as of 2026-11, for the external models shipped above
-- (the operator must check them: providers change their prices).  The
-- self-hosted providers have none: their cost is the GPU's rent.  gpt-4 and
-- gpt-3.5-turbo have no cached price: OpenAI's prompt caching does not
-- serve them, and a cached token without its own price costs an input
-- token's.
INSERT INTO igny8_prices (provider, model, unit, size, quality, price, origin) VALUES
    ('openai',    'gpt-4',             'per_1m_input_tokens',        '', '', 30.00, 'shipped'),
    ('openai',    'gpt-4',             'per_1m_output_tokens',       '', '', 60.00, 'shipped'),
    ('openai',    'gpt-3.5-turbo',     'per_1m_input_tokens',        '', '',  0.50, 'shipped'),
    ('openai',    'gpt-3.5-turbo',     'per_1m_output_tokens',       '', '',  1.50, 'shipped'),
    ('anthropic', 'claude-sonnet-5-5', 'per_1m_input_tokens',        '', '',  3.00, 'shipped'),
    ('anthropic', 'claude-sonnet-5-5', 'per_1m_output_tokens',       '', '', 15.00, 'shipped'),
    ('anthropic', 'claude-sonnet-5-5', 'per_1m_cached_input_tokens', '', '',  0.30, 'shipped'),
    ('anthropic', 'claude-sonnet-5-5', 'per_1m_cache_write_tokens',  '', '',  3.75, 'shipped'),
    ('anthropic', 'claude-haiku-5-5',  'per_1m_input_tokens',        '', '',  1.00, 'shipped'),
    ('anthropic', 'claude-haiku-5-5',  'per_1m_output_tokens',       '', '',  5.00, 'shipped'),
    ('anthropic', 'claude-haiku-5-5',  'per_1m_cached_input_tokens', '', '',  0.10, 'shipped'),
    ('anthropic', 'claude-haiku-5-5',  'per_1m_cache_write_tokens',  '', '',  1.25, 'shipped'),
    ('openai',    'dall-e-3',          'per_image', '1024x1024', 'standard', 0.040, 'shipped'),
    ('openai',    'dall-e-3',          'per_image', '1024x1792', 'standard', 0.080, 'shipped'),
    ('openai',    'dall-e-3',          'per_image', '1792x1024', 'standard', 0.080, 'shipped'),
    ('openai',    'dall-e-3',          'per_image', '1024x1024', 'hd',       0.080, 'shipped'),
    ('openai',    'dall-e-3',          'per_image', '1024x1792', 'hd',       0.120, 'shipped'),
    ('openai',    'dall-e-3',          'per_image', '1792x1024', 'hd',       0.120, 'shipped'),
    ('openai',    'dall-e-2',          'per_image', '256x256',   '',         0.016, 'shipped'),
    ('openai',    'dall-e-2',          'per_image', '512x512',   '',         0.018, 'shipped'),
    ('openai',    'dall-e-2',          'per_image', '1024x1024', '',         0.020, 'shipped');

-- gpt-4-turbo's list prices: no deployment calls it, it is the reference
-- of the alias gpt-4-turbo (igny8_reference_models).
INSERT INTO igny8_prices (provider, model, unit, size, quality, price, origin) VALUES
    ('openai',    'gpt-4-turbo',       'per_1m_input_tokens',        '', '', 10.00, 'shipped'),
    ('openai',    'gpt-4-turbo',       'per_1m_output_tokens',       '', '', 30.00, 'shipped');

-- The seed's GPU rent, 200 USD a month, for the box that runs Ollama and
-- ComfyUI.
INSERT INTO igny8_fixed_costs (box, providers, description, monthly_amount, origin) VALUES
    ('gpu_box', '{self_hosted_ai,comfyui}',
     'GPU server rent (Ollama and ComfyUI share the GPU)', 200, 'shipped');

-- The OpenAI model each seed alias stands for.
INSERT INTO igny8_reference_models (alias, provider, model, origin) VALUES
    ('gpt-4',              'openai', 'gpt-4',         'shipped'),
    ('gpt-4-turbo',        'openai', 'gpt-4-turbo',   'shipped'),
    ('gpt-3.5-turbo',      'openai', 'gpt-3.5-turbo', 'shipped'),
    ('gpt-3.5-turbo-fast', 'openai', 'gpt-3.5-turbo', 'shipped'),
    ('dall-e-3',           'openai', 'dall-e-3',      'shipped'),
    ('dall-e-2',           'openai', 'dall-e-2',      'shipped');

--
-- Keeping origin, and restoring the configuration exactly.
--

-- The key columns of a configuration table.
CREATE FUNCTION igny8_config_key_columns(table_name text) RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE table_name
        WHEN 'igny8_providers' THEN ARRAY['id']
        WHEN 'igny8_workflows' THEN ARRAY['name']
        WHEN 'igny8_models' THEN ARRAY['alias', 'provider_id', 'provider_model']
        WHEN 'igny8_fallbacks' THEN ARRAY['alias', 'position']
        WHEN 'igny8_prices' THEN ARRAY['provider', 'model', 'unit', 'size', 'quality', 'valid_from']
        WHEN 'igny8_fixed_costs' THEN ARRAY['box', 'valid_from']
        WHEN 'igny8_reference_models' THEN ARRAY['alias']
    END
$$;

-- The key of a row, as jsonb.
CREATE FUNCTION igny8_config_key(table_name text, r jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.jsonb_object_agg(k, r OPERATOR(pg_catalog.->) k)
      FROM pg_catalog.unnest(@extschema@.igny8_config_key_columns(table_name)) AS k
$$;

-- A WHERE clause matching a table's key to the record or jsonb in $1.
CREATE FUNCTION igny8_config_key_match(table_name text, source text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format('(%s) OPERATOR(pg_catalog.=) (SELECT %s FROM %s)',
               pg_catalog.string_agg(pg_catalog.format('t.%I', k), ', '),
               pg_catalog.string_agg(pg_catalog.format('s.%I', k), ', '),
               source)
      FROM pg_catalog.unnest(@extschema@.igny8_config_key_columns(table_name)) AS k
$$;

-- Row trigger on the configuration tables, before a change: keep origin,
-- and let an INSERT of an edited shipped row (a restore: only a dump says
-- origin 'edited') replace the row of that key while it is as CREATE
-- EXTENSION made it.  Any other INSERT of a shipped key is an ordinary
-- insert (a unique violation, or the UPDATE of an ON CONFLICT clause).
CREATE FUNCTION igny8_config_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_key jsonb := @extschema@.igny8_config_key(TG_TABLE_NAME, pg_catalog.to_jsonb(NEW));
    old_key jsonb;
    cols text;
    vals text;
    shipped_row boolean;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        old_key := @extschema@.igny8_config_key(TG_TABLE_NAME, pg_catalog.to_jsonb(OLD));
        IF new_key OPERATOR(pg_catalog.=) old_key THEN
            NEW.origin := CASE WHEN OLD.origin OPERATOR(pg_catalog.=) 'added'
                               THEN 'added' ELSE 'edited' END;
            RETURN NEW;
        END IF;
    ELSIF NEW.origin OPERATOR(pg_catalog.=) 'edited' THEN
        EXECUTE pg_catalog.format(
            'SELECT EXISTS (SELECT 1 FROM @extschema@.%I t WHERE t.origin OPERATOR(pg_catalog.=) ''shipped'' AND %s)',
            TG_TABLE_NAME,
            @extschema@.igny8_config_key_match(TG_TABLE_NAME, '(SELECT ($1).*) s'))
          INTO shipped_row USING NEW;
        IF shipped_row THEN
            SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum),
                   pg_catalog.string_agg(pg_catalog.format('($1).%I', a.attname), ', ' ORDER BY a.attnum)
              INTO cols, vals
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID
               AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped;
            EXECUTE pg_catalog.format('UPDATE @extschema@.%I t SET (%s) = ROW(%s) WHERE %s',
                                      TG_TABLE_NAME, cols, vals,
                                      @extschema@.igny8_config_key_match(TG_TABLE_NAME, '(SELECT ($1).*) s'))
              USING NEW;
            RETURN NULL;
        END IF;
    END IF;
    -- an INSERT, or a new key: a shipped key that was deleted comes back
    DELETE FROM @extschema@.igny8_config_deletions d
     WHERE d.table_name OPERATOR(pg_catalog.=) TG_TABLE_NAME
       AND d.key OPERATOR(pg_catalog.=) new_key;
    NEW.origin := CASE WHEN FOUND THEN 'edited' ELSE 'added' END;
    RETURN NEW;
END
$$;

-- Row trigger on the configuration tables, after a change: a shipped key
-- that is gone (deleted, or changed to another) is recorded.
CREATE FUNCTION igny8_config_forget() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_key jsonb := @extschema@.igny8_config_key(TG_TABLE_NAME, pg_catalog.to_jsonb(OLD));
BEGIN
    IF OLD.origin OPERATOR(pg_catalog.<>) 'added' AND
       (TG_OP = 'DELETE' OR
        old_key OPERATOR(pg_catalog.<>)
            @extschema@.igny8_config_key(TG_TABLE_NAME, pg_catalog.to_jsonb(NEW))) THEN
        INSERT INTO @extschema@.igny8_config_deletions (table_name, key)
        VALUES (TG_TABLE_NAME, old_key) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

-- Statement trigger on the configuration tables, before a TRUNCATE: the
-- shipped keys that go are recorded, as a DELETE records them.
CREATE FUNCTION igny8_config_forget_all() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format(
        'INSERT INTO @extschema@.igny8_config_deletions (table_name, key)
         SELECT %L, @extschema@.igny8_config_key(%L, pg_catalog.to_jsonb(t))
           FROM @extschema@.%I t
          WHERE t.origin OPERATOR(pg_catalog.<>) ''added''
         ON CONFLICT DO NOTHING',
        TG_TABLE_NAME, TG_TABLE_NAME, TG_TABLE_NAME);
    RETURN NULL;
END
$$;

-- A recorded deletion (a restore brings it back): delete the shipped row
-- CREATE EXTENSION made again.  A shipped workflow that shipped
-- deployments still run stays until the restore has deleted or changed
-- them (igny8_workflows_release below): a dump lists the deletions first.
CREATE FUNCTION igny8_config_deletion_restored() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format(
        'DELETE FROM @extschema@.%I t WHERE t.origin OPERATOR(pg_catalog.=) ''shipped'' AND %s',
        NEW.table_name,
        @extschema@.igny8_config_key_match(NEW.table_name,
            pg_catalog.format('pg_catalog.jsonb_populate_record(NULL::@extschema@.%I, $1) s',
                              NEW.table_name)))
      USING NEW.key;
    RETURN NULL;
EXCEPTION WHEN foreign_key_violation THEN
    RETURN NULL;
END
$$;

-- Statement trigger on igny8_models, after a change: the shipped
-- workflows whose deletion a restore brought back, and that no deployment
-- runs any longer, go.
CREATE FUNCTION igny8_workflows_release() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- (writes nothing, and needs no right to, unless a restore left one)
    IF EXISTS (SELECT 1 FROM @extschema@.igny8_config_deletions d
                WHERE d.table_name OPERATOR(pg_catalog.=) 'igny8_workflows') THEN
        DELETE FROM @extschema@.igny8_workflows w
         WHERE w.origin OPERATOR(pg_catalog.=) 'shipped'
           AND EXISTS (SELECT 1 FROM @extschema@.igny8_config_deletions d
                        WHERE d.table_name OPERATOR(pg_catalog.=) 'igny8_workflows'
                          AND d.key OPERATOR(pg_catalog.=) pg_catalog.jsonb_build_object('name', w.name))
           AND NOT EXISTS (SELECT 1 FROM @extschema@.igny8_models m
                            WHERE m.workflow OPERATOR(pg_catalog.=) w.name);
    END IF;
    RETURN NULL;
END
$$;

-- The overlap checks of igny8_prices and igny8_fixed_costs take turns on
-- a row of this table: each updates its table's row before it looks, so
-- that two transactions cannot each add one of two overlapping rows.
-- Under READ COMMITTED the second waits for the first to end, then sees
-- its rows; under REPEATABLE READ or SERIALIZABLE, whose snapshot would
-- not show them, the second fails with 40001 (retry it).  Not
-- configuration: not dumped, made again by CREATE EXTENSION.
CREATE TABLE igny8_overlap_turns (
    table_name  text PRIMARY KEY,
    turns       bigint NOT NULL DEFAULT 0
);
INSERT INTO igny8_overlap_turns (table_name) VALUES ('igny8_prices'), ('igny8_fixed_costs');

COMMENT ON TABLE igny8_overlap_turns IS
    'one row per table whose rows may not overlap in time: its writers take turns on it at commit (internal)';

-- Take the turn of table t's overlap check (the caller is SECURITY
-- DEFINER: the writer of t needs no right on igny8_overlap_turns).
CREATE FUNCTION igny8_overlap_turn(t text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE @extschema@.igny8_overlap_turns o
       SET turns = o.turns OPERATOR(pg_catalog.+) 1
     WHERE o.table_name OPERATOR(pg_catalog.=) t;
EXCEPTION WHEN serialization_failure THEN
    RAISE EXCEPTION 'could not check % for overlaps: another transaction changed it since this one began', t
        USING ERRCODE = 'serialization_failure',
              DETAIL = 'Under REPEATABLE READ or SERIALIZABLE, the rows it committed are not seen, so an overlap with them could not be found.',
              HINT = 'Retry the transaction.';
END
$$;

-- At commit, a price row written may not overlap in validity another of
-- the same provider, model, unit, size and quality: checked then, so that
-- a change (or a restore) may close one price and open the next in any
-- order.  Writers take turns (igny8_overlap_turns).
CREATE FUNCTION igny8_prices_overlap_check() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    other record;
BEGIN
    PERFORM @extschema@.igny8_overlap_turn('igny8_prices');
    SELECT b.valid_from, b.valid_to, a.valid_from AS a_from, a.valid_to AS a_to
      INTO other
      FROM @extschema@.igny8_prices a
      JOIN @extschema@.igny8_prices b
        ON b.provider OPERATOR(pg_catalog.=) a.provider
       AND b.model OPERATOR(pg_catalog.=) a.model
       AND b.unit OPERATOR(pg_catalog.=) a.unit
       AND b.size OPERATOR(pg_catalog.=) a.size
       AND b.quality OPERATOR(pg_catalog.=) a.quality
       AND b.valid_from OPERATOR(pg_catalog.<>) a.valid_from
     WHERE a.provider OPERATOR(pg_catalog.=) NEW.provider
       AND a.model OPERATOR(pg_catalog.=) NEW.model
       AND a.unit OPERATOR(pg_catalog.=) NEW.unit
       AND a.size OPERATOR(pg_catalog.=) NEW.size
       AND a.quality OPERATOR(pg_catalog.=) NEW.quality
       AND a.valid_from OPERATOR(pg_catalog.=) NEW.valid_from
       AND pg_catalog.tstzrange(a.valid_from, a.valid_to)
           OPERATOR(pg_catalog.&&) pg_catalog.tstzrange(b.valid_from, b.valid_to)
     ORDER BY b.valid_from
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'price of % % % overlaps another in time', NEW.provider, NEW.model,
                        NEW.unit OPERATOR(pg_catalog.||)
                        CASE WHEN NEW.size OPERATOR(pg_catalog.=) '' THEN ''
                             ELSE pg_catalog.format(' %s %s', NEW.size, NEW.quality) END
            USING ERRCODE = 'exclusion_violation',
                  DETAIL = pg_catalog.format('One is valid from %s to %s, the other from %s to %s.',
                                             other.a_from, coalesce(other.a_to::text, '(open)'),
                                             other.valid_from, coalesce(other.valid_to::text, '(open)')),
                  HINT = 'Set valid_to of the old price to valid_from of the new one.';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER igny8_prices_no_overlap
    AFTER INSERT OR UPDATE ON igny8_prices
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION igny8_prices_overlap_check();

-- At commit: the provider of a price exists (a price of a mistyped
-- provider prices nothing, and its attempts count as unpaid for the
-- budgets).  Checked then, so that one transaction may add a provider and
-- its prices in either order; not during a restore (pg_dump turns
-- check_function_bodies off), which writes the prices before the
-- providers added to the shipped ones.
CREATE FUNCTION igny8_prices_provider_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.current_setting('check_function_bodies') OPERATOR(pg_catalog.=) 'off'
       OR EXISTS (SELECT 1 FROM @extschema@.igny8_providers r
                   WHERE r.id OPERATOR(pg_catalog.=) NEW.provider)
       OR NOT EXISTS (SELECT 1 FROM @extschema@.igny8_prices p
                       WHERE p.provider OPERATOR(pg_catalog.=) NEW.provider) THEN
        RETURN NULL;            -- known, restoring, or changed since
    END IF;
    RAISE EXCEPTION 'provider "%" of price % % does not exist', NEW.provider, NEW.model, NEW.unit
        USING ERRCODE = 'foreign_key_violation',
              DETAIL = 'A price is of a provider of igny8_providers.',
              HINT = 'Name the provider by its igny8_providers.id, e.g. openai or anthropic.';
END
$$;

CREATE CONSTRAINT TRIGGER igny8_prices_provider
    AFTER INSERT OR UPDATE ON igny8_prices
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION igny8_prices_provider_check();

-- At commit: every provider a fixed cost pays for exists (a rent for a
-- mistyped provider would charge nobody).  Not while a dump is restored
-- (pg_dump sets check_function_bodies off), which writes the rents before
-- the providers they name, each table in a transaction of its own.
CREATE FUNCTION igny8_fixed_costs_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    unknown text;
BEGIN
    IF pg_catalog.current_setting('check_function_bodies') OPERATOR(pg_catalog.=) 'off' THEN
        RETURN NULL;            -- a restore
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.igny8_fixed_costs f
                    WHERE f.box OPERATOR(pg_catalog.=) NEW.box
                      AND f.valid_from OPERATOR(pg_catalog.=) NEW.valid_from
                      AND f.providers OPERATOR(pg_catalog.=) NEW.providers) THEN
        RETURN NULL;            -- changed or deleted since
    END IF;
    -- a rent that has ended is history: it names the providers it paid
    -- for, deleted or renamed since as they may be (igny8_provider_follow)
    SELECT p INTO unknown
      FROM pg_catalog.unnest(NEW.providers) AS p
     WHERE NOT EXISTS (SELECT 1 FROM @extschema@.igny8_providers r
                        WHERE r.id OPERATOR(pg_catalog.=) p)
       AND (NEW.valid_to IS NULL OR NEW.valid_to OPERATOR(pg_catalog.>) pg_catalog.now())
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'provider "%" of fixed cost "%" does not exist', unknown, NEW.box
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = 'A fixed cost pays for providers of igny8_providers.',
                  HINT = 'Name the provider by its igny8_providers.id, e.g. self_hosted_ai or comfyui.';
    END IF;
    IF (SELECT pg_catalog.count(DISTINCT p) FROM pg_catalog.unnest(NEW.providers) AS p)
       OPERATOR(pg_catalog.<>) pg_catalog.cardinality(NEW.providers) THEN
        RAISE EXCEPTION 'fixed cost "%" names a provider twice', NEW.box
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER igny8_fixed_costs_providers
    AFTER INSERT OR UPDATE ON igny8_fixed_costs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION igny8_fixed_costs_check();

-- At commit, as for prices: a fixed cost written may not overlap in
-- validity another of its box, nor another box's that pays for one of
-- its providers (an hour of a provider is paid for once).  Writers take
-- turns (igny8_overlap_turns).
CREATE FUNCTION igny8_fixed_costs_overlap_check() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    other record;
BEGIN
    PERFORM @extschema@.igny8_overlap_turn('igny8_fixed_costs');
    SELECT b.box, b.valid_from, b.valid_to, a.valid_from AS a_from, a.valid_to AS a_to
      INTO other
      FROM @extschema@.igny8_fixed_costs a
      JOIN @extschema@.igny8_fixed_costs b
        ON (b.box OPERATOR(pg_catalog.=) a.box
            AND b.valid_from OPERATOR(pg_catalog.<>) a.valid_from)
        OR (b.box OPERATOR(pg_catalog.<>) a.box
            AND b.providers OPERATOR(pg_catalog.&&) a.providers)
     WHERE a.box OPERATOR(pg_catalog.=) NEW.box
       AND a.valid_from OPERATOR(pg_catalog.=) NEW.valid_from
       AND pg_catalog.tstzrange(a.valid_from, a.valid_to)
           OPERATOR(pg_catalog.&&) pg_catalog.tstzrange(b.valid_from, b.valid_to)
     ORDER BY b.box, b.valid_from
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'fixed cost of % overlaps another in time', NEW.box
            USING ERRCODE = 'exclusion_violation',
                  DETAIL = pg_catalog.format('One is valid from %s to %s, the other (box %s) from %s to %s.',
                                             other.a_from, coalesce(other.a_to::text, '(open)'),
                                             other.box,
                                             other.valid_from, coalesce(other.valid_to::text, '(open)')),
                  HINT = 'Set valid_to of the old cost to valid_from of the new one; a provider is paid for by one box at a time.';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER igny8_fixed_costs_no_overlap
    AFTER INSERT OR UPDATE ON igny8_fixed_costs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION igny8_fixed_costs_overlap_check();

-- At commit (a restore may write the mapping before the price): a
-- reference model has a price in igny8_prices.
CREATE FUNCTION igny8_reference_models_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @extschema@.igny8_reference_models r
                    WHERE r.alias OPERATOR(pg_catalog.=) NEW.alias) THEN
        RETURN NULL;            -- deleted since
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.igny8_prices p
                    WHERE p.provider OPERATOR(pg_catalog.=) NEW.provider
                      AND p.model OPERATOR(pg_catalog.=) NEW.model) THEN
        RAISE EXCEPTION 'reference model "%" of provider "%" has no price', NEW.model, NEW.provider
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = pg_catalog.format('Alias "%s" would have no reference cost.', NEW.alias),
                  HINT = 'Add its list prices to igny8_prices first, or name a priced model.';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER igny8_reference_models_priced
    AFTER INSERT OR UPDATE ON igny8_reference_models
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION igny8_reference_models_check();
CREATE TRIGGER igny8_config_deletions_restored
    AFTER INSERT ON igny8_config_deletions
    FOR EACH ROW EXECUTE FUNCTION igny8_config_deletion_restored();
CREATE TRIGGER igny8_models_release_workflows
    AFTER UPDATE OR DELETE OR TRUNCATE ON igny8_models
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_workflows_release();

-- updated_at follows changes, unless the change sets it (a restore does)
CREATE FUNCTION igny8_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := pg_catalog.now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER igny8_providers_touch
    BEFORE UPDATE ON igny8_providers
    FOR EACH ROW EXECUTE FUNCTION igny8_touch_updated_at();
CREATE TRIGGER igny8_workflows_touch
    BEFORE UPDATE ON igny8_workflows
    FOR EACH ROW EXECUTE FUNCTION igny8_touch_updated_at();

--
-- Configuration changes reach the workers when they commit.
--

CREATE FUNCTION igny8_config_changed() RETURNS trigger
    AS 'MODULE_PATHNAME', 'igny8_config_changed'
    LANGUAGE C;

-- The same four triggers on each configuration table the workers hold:
-- igny8_config_guard (origin), igny8_config_forget and
-- igny8_config_forget_all (deletions remembered for pg_dump), and
-- igny8_config_changed (the workers reload at commit).  Triggers of one
-- event fire in name order, whatever the order they are made in.  The
-- last is ENABLE ALWAYS, as on every table the workers load: a change made
-- with session_replication_role = replica (a logical replication
-- subscriber applying it, a data-only restore) must reach them too.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['igny8_providers', 'igny8_workflows', 'igny8_models',
                             'igny8_fallbacks', 'igny8_prices', 'igny8_fixed_costs',
                             'igny8_reference_models'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE ON %I'
                       ' FOR EACH ROW EXECUTE FUNCTION igny8_config_guard()',
                       t OPERATOR(pg_catalog.||) '_guard', t);
        EXECUTE pg_catalog.format('CREATE TRIGGER %I AFTER UPDATE OR DELETE ON %I'
                       ' FOR EACH ROW EXECUTE FUNCTION igny8_config_forget()',
                       t OPERATOR(pg_catalog.||) '_forget', t);
        EXECUTE pg_catalog.format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION igny8_config_forget_all()',
                       t OPERATOR(pg_catalog.||) '_forget_all', t);
        EXECUTE pg_catalog.format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION igny8_config_changed()',
                       t OPERATOR(pg_catalog.||) '_changed', t);
        EXECUTE pg_catalog.format('ALTER TABLE %I ENABLE ALWAYS TRIGGER %I',
                       t, t OPERATOR(pg_catalog.||) '_changed');
    END LOOP;
END
$$;

--
-- Settings per account: an account may bring its own API key for a
-- provider (billed on that key), turn a provider off, or change its
-- priority.  Read by the workers with the rest of the configuration.
--

CREATE TABLE igny8_account_providers (
    account_id      bigint NOT NULL CHECK (account_id OPERATOR(pg_catalog.>=) 0),
    provider        text NOT NULL REFERENCES igny8_providers (id)
                    ON UPDATE CASCADE ON DELETE CASCADE,
    enabled         boolean NOT NULL DEFAULT true,
    api_key_ref     text,
    priority        integer,
    PRIMARY KEY (account_id, provider)
);

COMMENT ON TABLE igny8_account_providers IS
    'per account: a provider turned off, its priority, or the account''s own API key for it; overrides igny8_providers for that account''s calls';
COMMENT ON COLUMN igny8_account_providers.api_key_ref IS
    'env:NAME or file:/path of the account''s own key, sent instead of the provider''s; NULL: the provider''s key';
COMMENT ON COLUMN igny8_account_providers.priority IS
    'the provider''s priority for this account; NULL: igny8_providers.priority';

-- Before a row is written: the provider exists and the key reference is
-- env:NAME or file:/path.  The message never repeats the reference (it
-- could be a key pasted by mistake).
CREATE FUNCTION igny8_account_provider_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @extschema@.igny8_providers p
                    WHERE p.id OPERATOR(pg_catalog.=) NEW.provider) THEN
        RAISE EXCEPTION 'provider "%" does not exist', NEW.provider
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'Providers are the "id" column of igny8_providers.';
    END IF;
    IF NEW.api_key_ref IS NOT NULL AND
       NEW.api_key_ref OPERATOR(pg_catalog.!~) '^(env:[A-Za-z_][A-Za-z0-9_]*|file:/[^[:cntrl:]]+)$' THEN
        RAISE EXCEPTION 'invalid API key reference for account % on provider "%"',
                        NEW.account_id, NEW.provider
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An account''s api_key_ref is env:NAME (a variable of the server''s environment) or file:/absolute/path; a key itself is not accepted.',
                  HINT = 'Put the key in a file the server can read, and give its path as file:/path.';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER igny8_account_providers_check
    BEFORE INSERT OR UPDATE ON igny8_account_providers
    FOR EACH ROW EXECUTE FUNCTION igny8_account_provider_check();
CREATE TRIGGER igny8_account_providers_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON igny8_account_providers
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_config_changed();
ALTER TABLE igny8_account_providers ENABLE ALWAYS TRIGGER igny8_account_providers_changed;

--
-- The response cache: opt-in per alias.  A worker answers a call from
-- igny8_response_cache when a row of the same key (sha256 of alias,
-- messages, temperature and max_tokens) is there and not expired; on a
-- miss the first worker to insert the key's row ('pending') sends the
-- request, and the others wait for its answer.
--

CREATE TABLE igny8_cache_settings (
    alias           text PRIMARY KEY
                    CHECK (alias OPERATOR(pg_catalog.~) '^[^[:space:]]+$' AND pg_catalog.octet_length(alias) OPERATOR(pg_catalog.<=) 63),
    enabled         boolean NOT NULL DEFAULT true,
    ttl             interval NOT NULL DEFAULT '1 day'
                    CHECK (ttl OPERATOR(pg_catalog.>) '0' AND ttl OPERATOR(pg_catalog.<=) '1 year'),
    max_entries     integer NOT NULL DEFAULT 10000
                    CHECK (max_entries OPERATOR(pg_catalog.>) 0),
    cache_nonzero_temperature boolean NOT NULL DEFAULT false
);

COMMENT ON TABLE igny8_cache_settings IS
    'model aliases whose text answers are cached in igny8_response_cache, for ttl, at most max_entries of them';
COMMENT ON COLUMN igny8_cache_settings.cache_nonzero_temperature IS
    'also cache calls whose temperature is above 0, or not given (the provider''s default is above 0)';

-- Before a row is written: the alias is a text alias of igny8_models.
-- Not while a dump is restored (pg_dump sets check_function_bodies off, as
-- PostgreSQL's own checks of forward references rely on): the table's rows
-- may come before those of igny8_models, which no foreign key orders.
CREATE FUNCTION igny8_cache_settings_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.current_setting('check_function_bodies') OPERATOR(pg_catalog.=) 'on' AND
       NOT EXISTS (SELECT 1 FROM @extschema@.igny8_models m
                    WHERE m.alias OPERATOR(pg_catalog.=) NEW.alias
                      AND m.task OPERATOR(pg_catalog.=) 'text') THEN
        RAISE EXCEPTION 'model alias "%" has no text deployment', NEW.alias
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'Only text answers are cached.',
                  HINT = 'Model aliases are the "alias" column of igny8_models.';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER igny8_cache_settings_check
    BEFORE INSERT OR UPDATE ON igny8_cache_settings
    FOR EACH ROW EXECUTE FUNCTION igny8_cache_settings_check();
CREATE TRIGGER igny8_cache_settings_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON igny8_cache_settings
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_config_changed();
ALTER TABLE igny8_cache_settings ENABLE ALWAYS TRIGGER igny8_cache_settings_changed;

CREATE TABLE igny8_response_cache (
    key             bytea PRIMARY KEY,
    alias           text NOT NULL,
    -- pending: a worker sends the request (until expires_at, or until that
    -- worker stops, or no call of it owns the row any more); ready: answered
    state           text NOT NULL CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'ready'])),
    provider        text,
    model           text,
    content         text,
    thinking        text,
    finish_reason   text,
    input_tokens    integer NOT NULL DEFAULT 0,
    output_tokens   integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    expires_at      timestamptz NOT NULL,
    -- pending: the worker sending it (igny8_worker_status().worker), when
    -- that worker started, and the call (ai_usage_log.request_id); a
    -- waiting call takes over a row whose worker has stopped or started
    -- again since
    owner_worker    integer,
    owner_started   timestamptz,
    owner_request   uuid
);

CREATE INDEX igny8_response_cache_alias_idx ON igny8_response_cache (alias, created_at);
CREATE INDEX igny8_response_cache_expires_idx ON igny8_response_cache (expires_at);

COMMENT ON TABLE igny8_response_cache IS
    'cached text answers, by sha256 of alias, messages, temperature, max_tokens and the deployments that may answer; written and read by the workers';

-- A changed ttl applies to the answers already stored: each is served for
-- the new ttl from when it was stored, as the column says.
CREATE FUNCTION igny8_cache_ttl_changed() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE @extschema@.igny8_response_cache c
       SET expires_at = c.created_at OPERATOR(pg_catalog.+) NEW.ttl
     WHERE c.alias OPERATOR(pg_catalog.=) NEW.alias
       AND c.state OPERATOR(pg_catalog.=) 'ready';
    RETURN NULL;
END
$$;

CREATE TRIGGER igny8_cache_ttl_changed
    AFTER UPDATE OF ttl ON igny8_cache_settings
    FOR EACH ROW WHEN (OLD.ttl OPERATOR(pg_catalog.<>) NEW.ttl)
    EXECUTE FUNCTION igny8_cache_ttl_changed();

-- Empty an alias's cache; returns the rows removed.
CREATE FUNCTION igny8_cache_purge(alias text) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    removed bigint;
BEGIN
    IF alias IS NULL THEN
        RAISE EXCEPTION 'alias must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    DELETE FROM @extschema@.igny8_response_cache c
     WHERE c.alias OPERATOR(pg_catalog.=) igny8_cache_purge.alias;
    GET DIAGNOSTICS removed = ROW_COUNT;
    IF removed OPERATOR(pg_catalog.=) 0 AND NOT EXISTS (
           SELECT 1 FROM @extschema@.igny8_cache_settings s
            WHERE s.alias OPERATOR(pg_catalog.=) igny8_cache_purge.alias) THEN
        RAISE EXCEPTION 'model alias "%" has no response cache', alias
            USING ERRCODE = 'undefined_object',
                  HINT = 'Cached aliases are the rows of igny8_cache_settings.';
    END IF;
    RETURN removed;
END
$$;

COMMENT ON FUNCTION igny8_cache_purge(text) IS
    'remove every cached answer of a model alias; returns how many';

-- Expired rows, in bounded batches (the scheduled job).
CREATE FUNCTION igny8_cache_cleanup() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    deleted bigint;
    total bigint := 0;
BEGIN
    FOR i IN 1..10 LOOP
        DELETE FROM @extschema@.igny8_response_cache
         WHERE key OPERATOR(pg_catalog.=) ANY (ARRAY(
                SELECT c.key FROM @extschema@.igny8_response_cache c
                 WHERE c.expires_at OPERATOR(pg_catalog.<) pg_catalog.now()
                 ORDER BY c.expires_at LIMIT 10000));
        GET DIAGNOSTICS deleted = ROW_COUNT;
        total := total OPERATOR(pg_catalog.+) deleted;
        EXIT WHEN deleted OPERATOR(pg_catalog.<) 10000;
    END LOOP;
    RETURN total;
END
$$;

COMMENT ON FUNCTION igny8_cache_cleanup() IS
    'delete expired rows of igny8_response_cache, at most 100,000 a run; returns how many';

-- the per-account settings and the cache settings are configuration; the
-- cached answers are not kept by pg_dump
SELECT pg_catalog.pg_extension_config_dump('igny8_account_providers', '');
SELECT pg_catalog.pg_extension_config_dump('igny8_cache_settings', '');

REVOKE ALL ON igny8_account_providers, igny8_cache_settings, igny8_response_cache
    FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_account_provider_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_cache_settings_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_cache_ttl_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_cache_purge(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_cache_cleanup() FROM PUBLIC;

--
-- Usage: one row per attempt, written by the workers.
--

CREATE TABLE ai_usage_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id      uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    account_id      bigint,
    provider        text NOT NULL,
    task_type       text NOT NULL,
    model_alias     text NOT NULL,
    model_used      text,
    input_tokens    integer NOT NULL DEFAULT 0,
    output_tokens   integer NOT NULL DEFAULT 0,
    cost            numeric(14, 6) NOT NULL DEFAULT 0,
    reference_cost  numeric(14, 6),
    cached          boolean NOT NULL DEFAULT false,
    duration_ms     double precision,
    http_status     integer,
    success         boolean NOT NULL,
    error_message   text,
    attempt         integer NOT NULL,
    -- the account's own key (igny8_account_providers), NULL: the provider's
    api_key_ref     text,
    prompt          text,
    response        text,
    -- image rows (task_type 'image')
    images          integer,
    image_width     integer,
    image_height    integer,
    steps           integer
);

CREATE INDEX ai_usage_log_created_at_idx ON ai_usage_log (created_at);
CREATE INDEX ai_usage_log_request_id_idx ON ai_usage_log (request_id);
CREATE INDEX ai_usage_log_account_idx ON ai_usage_log (account_id, created_at)
    WHERE account_id IS NOT NULL;

COMMENT ON TABLE ai_usage_log IS
    'one row per attempt on a provider, committed before the caller gets its answer';
COMMENT ON COLUMN ai_usage_log.images IS
    'images made by the attempt (image rows; NULL on text rows)';
COMMENT ON COLUMN ai_usage_log.steps IS
    'sampling steps sent to ComfyUI (image rows on comfyui providers)';
COMMENT ON COLUMN ai_usage_log.reference_cost IS
    'what the alias''s reference model (igny8_reference_models) would have cost for the same tokens or images; NULL: no reference';
COMMENT ON COLUMN ai_usage_log.cached IS
    'answered from igny8_response_cache: nothing was sent, cost 0';
COMMENT ON COLUMN ai_usage_log.api_key_ref IS
    'the account''s own key reference the attempt was sent with (igny8_account_providers); NULL: the provider''s key';

--
-- Health: probes on a pg_cron schedule, the circuit breaker's state, alerts.
--

CREATE TABLE service_health_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checked_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    provider        text NOT NULL,
    healthy         boolean NOT NULL,
    state           text NOT NULL
                    CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['unknown', 'healthy', 'degraded', 'down'])),
    latency_ms      double precision,
    http_status     integer,
    detail          jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX service_health_log_checked_at_idx ON service_health_log (checked_at);
CREATE INDEX service_health_log_provider_idx ON service_health_log (provider, checked_at);

COMMENT ON TABLE service_health_log IS
    'one row per provider per health check; old rows are deleted by the scheduled check';

--
-- What pg_dump keeps: the configuration rows that are not as shipped (a
-- restore puts them over the shipped ones), the deletions of shipped rows,
-- both logs, and the logs' identity sequences, so that rows written after
-- a restore get new ids.
--
SELECT pg_catalog.pg_extension_config_dump('igny8_providers',
    $$WHERE origin OPERATOR(pg_catalog.<>) 'shipped'$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_workflows',
    $$WHERE origin OPERATOR(pg_catalog.<>) 'shipped'$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_models',
    $$WHERE origin OPERATOR(pg_catalog.<>) 'shipped'$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_fallbacks',
    $$WHERE origin OPERATOR(pg_catalog.<>) 'shipped'$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_prices',
    $$WHERE origin OPERATOR(pg_catalog.<>) 'shipped'$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_fixed_costs',
    $$WHERE origin OPERATOR(pg_catalog.<>) 'shipped'$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_reference_models',
    $$WHERE origin OPERATOR(pg_catalog.<>) 'shipped'$$);
SELECT pg_catalog.pg_extension_config_dump('igny8_config_deletions', '');
SELECT pg_catalog.pg_extension_config_dump('ai_usage_log', '');
SELECT pg_catalog.pg_extension_config_dump('ai_usage_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('service_health_log', '');
SELECT pg_catalog.pg_extension_config_dump('service_health_log_id_seq', '');

--
-- Calls.
--

CREATE TYPE igny8_completion AS (
    content         text,
    thinking        text,
    provider        text,
    model           text,
    input_tokens    integer,
    output_tokens   integer,
    cost            numeric,
    duration_ms     double precision,
    request_id      uuid,
    attempts        integer,
    finish_reason   text,
    cached          boolean
);

-- An image and what made it; the image functions return it.
CREATE TYPE igny8_image AS (
    image           bytea,
    mime_type       text,
    width           integer,
    height          integer,
    seed            bigint,
    revised_prompt  text,
    provider        text,
    model           text,
    cost            numeric,
    duration_ms     double precision,
    request_id      uuid,
    attempts        integer
);

CREATE FUNCTION igny8_generate_text(
    prompt      text,
    model       text DEFAULT 'gpt-4',
    max_tokens  integer DEFAULT NULL,
    temperature double precision DEFAULT NULL,
    system      text DEFAULT NULL,
    timeout     interval DEFAULT NULL,
    account_id  bigint DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'igny8_generate_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_generate_text(text, text, integer, double precision, text, interval, bigint) IS
    'generate text for a prompt through the model alias, with fallback; returns the text';

CREATE FUNCTION igny8_chat(
    messages    jsonb,
    model       text DEFAULT 'gpt-4',
    options     jsonb DEFAULT '{}')
RETURNS igny8_completion
AS 'MODULE_PATHNAME', 'igny8_chat'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_chat(jsonb, text, jsonb) IS
    'chat completion for [{"role","content"}] messages; options: max_tokens, temperature, timeout (s), account_id';

CREATE FUNCTION igny8_generate_text_batch(
    prompts     text[],
    model       text DEFAULT 'gpt-4',
    options     jsonb DEFAULT '{}')
RETURNS TABLE (
    ord             integer,
    content         text,
    provider        text,
    model           text,
    input_tokens    integer,
    output_tokens   integer,
    cost            numeric,
    duration_ms     double precision,
    request_id      uuid,
    attempts        integer,
    error           text,
    sqlstate        text)
AS 'MODULE_PATHNAME', 'igny8_generate_text_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_generate_text_batch(text[], text, jsonb) IS
    'text for every prompt of an array, all in flight at once; one row per prompt in input order, a failed prompt''s row with error and sqlstate; options: max_tokens, temperature, system, timeout (s), account_id';

CREATE FUNCTION igny8_generate_image(
    prompt      text,
    model       text DEFAULT 'dall-e-3',
    size        text DEFAULT '1024x1024',
    options     jsonb DEFAULT '{}')
RETURNS igny8_image
AS 'MODULE_PATHNAME', 'igny8_generate_image'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_generate_image(text, text, text, jsonb) IS
    'one PNG image for a prompt through the image model alias, with fallback; options: negative_prompt, steps, cfg, seed, quality, style, timeout (s), account_id';

CREATE FUNCTION igny8_generate_images(
    prompt      text,
    model       text DEFAULT 'dall-e-3',
    size        text DEFAULT '1024x1024',
    n           integer DEFAULT 1,
    options     jsonb DEFAULT '{}')
RETURNS SETOF igny8_image
AS 'MODULE_PATHNAME', 'igny8_generate_images'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_generate_images(text, text, text, integer, jsonb) IS
    'n (1 to 8) images made at once, each with its own seed; options as igny8_generate_image';

--
-- Submitted jobs: a logged table the caller inserts into in its own
-- transaction; the workers take a job once that transaction commits, run it
-- outside any transaction, and write its result, its usage rows and a
-- NOTIFY igny8_ai_jobs in one transaction.  A role sees the jobs it
-- submitted (row-level security); the functions below do the writing.
--

CREATE TABLE igny8_jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['text', 'chat', 'image'])),
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'running', 'succeeded', 'failed', 'cancelled'])),
    model_alias     text NOT NULL,
    request         jsonb NOT NULL,
    account_id      bigint,
    submitted_by    regrole NOT NULL DEFAULT current_user::regrole,
    priority        text NOT NULL DEFAULT 'background'
                    CHECK (priority OPERATOR(pg_catalog.=) ANY (ARRAY['interactive', 'background'])),
    not_before      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    max_attempts    integer NOT NULL DEFAULT 3 CHECK (max_attempts OPERATOR(pg_catalog.>=) 1 AND max_attempts OPERATOR(pg_catalog.<=) 100),
    attempts        integer NOT NULL DEFAULT 0,
    timeout_ms      integer NOT NULL CHECK (timeout_ms OPERATOR(pg_catalog.>) 0),
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    -- the worker running it: its index and when it started
    worker          integer,
    worker_started  timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    -- the attempt sent and not yet in ai_usage_log: {attempt, provider,
    -- model, at}; recovery logs it if the worker died
    inflight        jsonb,
    -- the current run sent a request (a run that sent none is not counted
    -- when its worker dies)
    sent            boolean NOT NULL DEFAULT false,
    -- the result (of the last run); its attempts are in ai_usage_log
    request_id      uuid,
    provider        text,
    model           text,
    content         text,
    thinking        text,
    finish_reason   text,
    input_tokens    integer,
    output_tokens   integer,
    image           bytea,
    width           integer,
    height          integer,
    seed            bigint,
    revised_prompt  text,
    cost            numeric(14, 6),
    duration_ms     double precision,
    error_code      text,
    error_message   text,
    error_detail    text,
    error_hint      text
);

-- what the workers take, in order: interactive first, then oldest
CREATE INDEX igny8_jobs_queued_idx ON igny8_jobs
    ((priority OPERATOR(pg_catalog.<>) 'interactive'), id)
    WHERE state OPERATOR(pg_catalog.=) 'queued';
CREATE INDEX igny8_jobs_running_idx ON igny8_jobs (worker)
    WHERE state OPERATOR(pg_catalog.=) 'running';
CREATE INDEX igny8_jobs_finished_idx ON igny8_jobs (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE UNIQUE INDEX igny8_jobs_idempotency_idx ON igny8_jobs (submitted_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

COMMENT ON TABLE igny8_jobs IS
    'submitted AI jobs: queued by igny8_submit_*, run by the workers after the submitting transaction commits';

ALTER TABLE igny8_jobs ENABLE ROW LEVEL SECURITY;

-- a role sees its own jobs (and those of the roles it has the privileges of)
CREATE POLICY igny8_jobs_submitter ON igny8_jobs FOR SELECT
    USING (pg_catalog.pg_has_role(submitted_by, 'USAGE'));

-- A commit that inserted jobs wakes the workers.
CREATE FUNCTION igny8_jobs_submitted() RETURNS trigger
    AS 'MODULE_PATHNAME', 'igny8_jobs_submitted'
    LANGUAGE C;

CREATE TRIGGER igny8_jobs_submitted
    AFTER INSERT ON igny8_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_jobs_submitted();

SELECT pg_catalog.pg_extension_config_dump('igny8_jobs', '');
SELECT pg_catalog.pg_extension_config_dump('igny8_jobs_id_seq', '');

-- Cancels of running jobs (igny8_cancel_job), kept apart from igny8_jobs:
-- a cancel's transaction, open or prepared, must hold no lock on the row
-- that the job's worker writes (its outcome, the attempt it sends), or the
-- worker, and every request it holds, would wait for that transaction.
-- The worker reads them when told at commit and at its scans of
-- igny8_jobs, and deletes a job's row when it writes the job cancelled;
-- igny8_jobs_cleanup() deletes those left for jobs no longer running.
CREATE TABLE igny8_job_cancels (
    job_id        bigint PRIMARY KEY,
    requested_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE igny8_job_cancels IS
    'cancels of running jobs until their worker stops them (igny8_cancel_job); apart from igny8_jobs so that a cancel locks no row a worker writes';

SELECT pg_catalog.pg_extension_config_dump('igny8_job_cancels', '');

CREATE FUNCTION igny8_submit_text(
    prompt      text,
    model       text DEFAULT 'gpt-4',
    options     jsonb DEFAULT '{}')
RETURNS bigint
AS 'MODULE_PATHNAME', 'igny8_submit_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_submit_text(text, text, jsonb) IS
    'queue a text job, run after the transaction commits; options: system, max_tokens, temperature, timeout (s), account_id, priority, not_before, max_attempts, idempotency_key';

CREATE FUNCTION igny8_submit_chat(
    messages    jsonb,
    model       text DEFAULT 'gpt-4',
    options     jsonb DEFAULT '{}')
RETURNS bigint
AS 'MODULE_PATHNAME', 'igny8_submit_chat'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_submit_chat(jsonb, text, jsonb) IS
    'queue a chat job; options as igny8_chat and igny8_submit_text';

CREATE FUNCTION igny8_submit_image(
    prompt      text,
    model       text DEFAULT 'dall-e-3',
    size        text DEFAULT '1024x1024',
    options     jsonb DEFAULT '{}')
RETURNS bigint
AS 'MODULE_PATHNAME', 'igny8_submit_image'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_submit_image(text, text, text, jsonb) IS
    'queue an image job; options as igny8_generate_image and igny8_submit_text';

CREATE FUNCTION igny8_submit_batch(
    prompts     text[],
    model       text DEFAULT 'gpt-4',
    options     jsonb DEFAULT '{}')
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'igny8_submit_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_submit_batch(text[], text, jsonb) IS
    'queue one text job per prompt; returns their ids in the order of the prompts';

-- Is the worker that claimed a running job still running (recovery)?
CREATE FUNCTION igny8_worker_alive(worker integer, started timestamptz) RETURNS boolean
AS 'MODULE_PATHNAME', 'igny8_worker_alive'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

-- What the workers know of a running job that the table does not say.
CREATE FUNCTION igny8_job_progress(id bigint) RETURNS jsonb
AS 'MODULE_PATHNAME', 'igny8_job_progress'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

-- A job as igny8_job() and igny8_wait_job() return it: read as the caller
-- (security_invoker), so a role sees its own jobs only.
CREATE VIEW igny8_job_results WITH (security_invoker = true) AS
SELECT j.id, j.state, j.kind, j.model_alias, j.account_id, j.priority,
       j.attempts, j.max_attempts, j.created_at, j.not_before,
       j.started_at, j.finished_at, j.provider, j.model, j.content,
       j.thinking, j.finish_reason, j.input_tokens, j.output_tokens,
       j.image, j.width, j.height, j.seed, j.revised_prompt, j.cost,
       j.duration_ms, j.request_id, j.error_code, j.error_message,
       j.error_detail, j.error_hint,
       CASE WHEN j.state OPERATOR(pg_catalog.=) 'running'
            THEN @extschema@.igny8_job_progress(j.id) END AS progress
  FROM @extschema@.igny8_jobs j;

COMMENT ON VIEW igny8_job_results IS
    'submitted jobs with their results and, while running, their progress (a role sees its own)';

CREATE FUNCTION igny8_job(id bigint) RETURNS igny8_job_results
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r @extschema@.igny8_job_results;
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION 'job id must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO r FROM @extschema@.igny8_job_results j
     WHERE j.id OPERATOR(pg_catalog.=) igny8_job.id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', id
            USING ERRCODE = 'undefined_object',
                  HINT = 'A role sees the jobs it submitted; finished jobs are deleted after igny8_ai.job_retention.';
    END IF;
    RETURN r;
END
$$;

COMMENT ON FUNCTION igny8_job(bigint) IS
    'a submitted job: its state, attempts, timings, cost, error and result';

CREATE FUNCTION igny8_wait_job(id bigint, timeout interval DEFAULT NULL)
RETURNS igny8_job_results
AS 'MODULE_PATHNAME', 'igny8_wait_job'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_wait_job(bigint, interval) IS
    'wait until a submitted job has finished (or the timeout passed), then return it as igny8_job does';

CREATE FUNCTION igny8_cancel_job(id bigint) RETURNS boolean
AS 'MODULE_PATHNAME', 'igny8_cancel_job'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_cancel_job(bigint) IS
    'cancel a queued job, or stop a running one; false if it had already finished';

-- The retention of finished jobs, in bounded batches (the scheduled job).
CREATE FUNCTION igny8_jobs_cleanup() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    keep interval := pg_catalog.current_setting('igny8_ai.job_retention')::interval;
    deleted bigint;
    total bigint := 0;
BEGIN
    FOR i IN 1..10 LOOP
        DELETE FROM @extschema@.igny8_jobs
         WHERE id OPERATOR(pg_catalog.=) ANY (ARRAY(
                SELECT j.id FROM @extschema@.igny8_jobs j
                 WHERE j.finished_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) keep)
                 ORDER BY j.finished_at LIMIT 10000));
        GET DIAGNOSTICS deleted = ROW_COUNT;
        total := total OPERATOR(pg_catalog.+) deleted;
        EXIT WHEN deleted OPERATOR(pg_catalog.<) 10000;
    END LOOP;
    -- cancels that came when their job had finished, or was deleted
    DELETE FROM @extschema@.igny8_job_cancels c
     WHERE NOT EXISTS (SELECT FROM @extschema@.igny8_jobs j
                        WHERE j.id OPERATOR(pg_catalog.=) c.job_id
                          AND j.state OPERATOR(pg_catalog.=) ANY ('{queued,running}'));
    RETURN total;
END
$$;

COMMENT ON FUNCTION igny8_jobs_cleanup() IS
    'delete finished jobs older than igny8_ai.job_retention, at most 100,000 a run; returns how many';

--
-- Health checks.
--

CREATE FUNCTION igny8_check_health(
    OUT provider    text,
    OUT healthy     boolean,
    OUT state       text,
    OUT latency_ms  double precision,
    OUT http_status integer,
    OUT detail      jsonb)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'igny8_check_health'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

COMMENT ON FUNCTION igny8_check_health() IS
    'probe every enabled provider now (free calls only) and log the result in service_health_log';

CREATE FUNCTION igny8_health_state(
    OUT provider             text,
    OUT state                text,
    OUT since                timestamptz,
    OUT circuit_open         boolean,
    OUT consecutive_failures integer,
    OUT last_check           timestamptz,
    OUT last_latency_ms      double precision,
    OUT last_error           text,
    OUT in_flight            integer,
    OUT queued               integer,
    OUT requests             bigint,
    OUT errors               bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'igny8_health_state'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION igny8_health_state() IS
    'the health state, circuit breaker, places and attempt counters of each provider, from shared memory';

CREATE VIEW igny8_service_status AS
SELECT p.id AS provider,
       p.kind,
       p.enabled,
       coalesce(s.state, 'unknown') AS state,
       s.since,
       coalesce(s.circuit_open, false) AS circuit_open,
       coalesce(s.last_check, h.last_check) AS last_check,
       s.last_latency_ms,
       coalesce(s.consecutive_failures, 0) AS consecutive_failures,
       s.last_error,
       coalesce(s.in_flight, 0) AS in_flight,
       coalesce(s.queued, 0) AS queued,
       h.checks_24h,
       h.success_pct_24h,
       coalesce(s.requests, 0) AS requests,
       coalesce(s.errors, 0) AS errors,
       coalesce(u.requests_1h, 0) AS requests_1h,
       coalesce(u.errors_1h, 0) AS errors_1h,
       pg_catalog.round(100.0 OPERATOR(pg_catalog.*) u.errors_1h::numeric
                        OPERATOR(pg_catalog./) nullif(u.requests_1h, 0)::numeric, 1) AS error_pct_1h
  FROM @extschema@.igny8_providers p
  LEFT JOIN @extschema@.igny8_health_state() s ON s.provider OPERATOR(pg_catalog.=) p.id
  -- the last hour of ai_usage_log, one range scan of its created_at index;
  -- answers of the response cache reached no provider
  LEFT JOIN (
       SELECT l.provider,
              pg_catalog.count(*) AS requests_1h,
              pg_catalog.count(*) FILTER (WHERE NOT l.success) AS errors_1h
         FROM @extschema@.ai_usage_log l
        WHERE l.created_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour')
          AND NOT l.cached
        GROUP BY l.provider) u ON u.provider OPERATOR(pg_catalog.=) p.id
  LEFT JOIN LATERAL (
       SELECT pg_catalog.count(*) AS checks_24h,
              pg_catalog.round(100.0 OPERATOR(pg_catalog.*) (pg_catalog.count(*) FILTER (WHERE l.healthy))::numeric
                               OPERATOR(pg_catalog./) nullif(pg_catalog.count(*), 0)::numeric, 1) AS success_pct_24h,
              pg_catalog.max(l.checked_at) AS last_check
         FROM @extschema@.service_health_log l
        WHERE l.provider OPERATOR(pg_catalog.=) p.id
          AND l.checked_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '24 hours')) h ON true;

COMMENT ON VIEW igny8_service_status IS
    'per provider: state, since when, last check and latency, failures, requests in flight and waiting, share of successful checks over 24 hours, attempts and failed attempts since the server started and over the last hour';

-- What the pg_cron job runs: a check, then the retention of the log in
-- bounded batches (a big backlog is worked off over several runs).  A
-- probe that fails gives its provider a row (healthy false); a check that
-- fails as a whole (no worker running, a row it cannot write) leaves no
-- row, and is a WARNING in the server log: the clean-ups still run, so a
-- broken check does not also let the logs grow.
CREATE FUNCTION igny8_health_job() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    keep interval := pg_catalog.current_setting('igny8_ai.health_log_retention')::interval;
    deleted bigint;
    err_state text;
    err_message text;
    err_detail text;
BEGIN
    BEGIN
        PERFORM @extschema@.igny8_check_health();
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE,
                                err_message = MESSAGE_TEXT,
                                err_detail = PG_EXCEPTION_DETAIL;
        RAISE WARNING 'igny8_ai health check failed: %', err_message
            USING DETAIL = pg_catalog.concat_ws(' ', 'SQLSTATE ' OPERATOR(pg_catalog.||) err_state OPERATOR(pg_catalog.||) '.',
                                                NULLIF(err_detail, '')),
                  HINT = 'No provider got a row in service_health_log from this run; the clean-ups of the job still ran.';
    END;
    PERFORM @extschema@.igny8_jobs_cleanup();
    PERFORM @extschema@.igny8_cache_cleanup();
    FOR i IN 1..10 LOOP
        DELETE FROM @extschema@.service_health_log
         WHERE id OPERATOR(pg_catalog.=) ANY (ARRAY(
                SELECT l.id FROM @extschema@.service_health_log l
                 WHERE l.checked_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) keep)
                 ORDER BY l.id LIMIT 10000));
        GET DIAGNOSTICS deleted = ROW_COUNT;
        EXIT WHEN deleted OPERATOR(pg_catalog.<) 10000;
    END LOOP;
END
$$;

COMMENT ON FUNCTION igny8_health_job() IS
    'the scheduled health check: igny8_check_health() (a failure of the whole check is a WARNING), the retention of service_health_log and of finished jobs, expired cached answers';

--
-- The schedule: one pg_cron job, igny8_ai_health_check, with a fixed job
-- id.  pg_cron dumps cron.job, and a restore runs CREATE EXTENSION (which
-- makes the job) before it restores cron.job's rows: the trigger on
-- cron.job lets the restored row of the job replace the new one, so the
-- schedule comes back as it was, with no error.  Stopping the schedule
-- keeps the job, inactive, so that a restore stops it too.
--

CREATE FUNCTION igny8_health_job_id() RETURNS bigint
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS 'SELECT 8800000000000001::bigint';

COMMENT ON FUNCTION igny8_health_job_id() IS
    'the jobid of igny8_ai_health_check in cron.job';

-- The health job's command.  It runs igny8_health_job() while that
-- function exists, and otherwise unschedules itself: a DROP SCHEMA ...
-- CASCADE or DROP OWNED that takes the extension with it leaves the job
-- (no event trigger of the extension's fires for a DROP that drops it, and
-- one that fired for every DROP of any schema would make every such DROP
-- write cron.job), and the job's next run removes it.
CREATE FUNCTION igny8_health_job_command() RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format(
        'DO $igny8$ BEGIN IF pg_catalog.to_regprocedure(%L) IS NULL THEN'
        ' PERFORM cron.unschedule(%s); ELSE PERFORM %s.igny8_health_job(); END IF; END $igny8$',
        '@extschema@.igny8_health_job()', 8800000000000001, '@extschema@')	-- quoted already
$$;

-- (Re)schedule the health check, or stop it with NULL.  The job always
-- runs this schema's igny8_health_job(): a job left behind by an install
-- in another schema is taken over.
CREATE FUNCTION igny8_set_health_schedule(schedule text) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    job bigint := @extschema@.igny8_health_job_id();
    command text := @extschema@.igny8_health_job_command();
    made bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM cron.job j WHERE j.jobid OPERATOR(pg_catalog.=) job) THEN
        IF schedule IS NULL THEN
            RETURN NULL;
        END IF;
        -- pg_cron checks the schedule; the job then gets its fixed id
        made := cron.schedule('igny8_ai_health_check', schedule, command);
        UPDATE cron.job j SET jobid = job WHERE j.jobid OPERATOR(pg_catalog.=) made;
        RETURN job;
    END IF;
    IF schedule IS NULL THEN
        PERFORM cron.alter_job(job, command => command, active => false);
        RETURN NULL;
    END IF;
    PERFORM cron.alter_job(job, schedule => schedule, command => command, active => true);
    RETURN job;
END
$$;

COMMENT ON FUNCTION igny8_set_health_schedule(text) IS
    'schedule the health check (cron syntax, default every minute), or stop it with NULL';

-- A row for the job's id arrives in cron.job (a restore of pg_cron's
-- data): it replaces the job CREATE EXTENSION made.
CREATE FUNCTION igny8_cron_job_restored() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    here cron.job%ROWTYPE;
BEGIN
    -- The restored row keeps its schedule and whether it is active; where
    -- and as whom it runs are this server's: the job CREATE EXTENSION
    -- made here says so (the dump's may name another database, port or
    -- role, e.g. a restore into a database of another name).
    DELETE FROM cron.job j WHERE j.jobid OPERATOR(pg_catalog.=) NEW.jobid
        RETURNING j.* INTO here;
    IF FOUND THEN
        NEW.database := here.database;
        NEW.nodename := here.nodename;
        NEW.nodeport := here.nodeport;
        NEW.username := here.username;
    ELSE
        NEW.database := pg_catalog.current_database();
    END IF;
    NEW.command := @extschema@.igny8_health_job_command();
    RETURN NEW;
END
$$;

-- The trigger on cron.job that runs it.  It depends on the extension
-- (DEPENDS ON EXTENSION): whatever drops the extension (DROP EXTENSION,
-- DROP SCHEMA ... CASCADE, DROP OWNED) drops the trigger with it.
CREATE TRIGGER igny8_ai_health_job_restored
    BEFORE INSERT ON cron.job
    FOR EACH ROW WHEN (NEW.jobid OPERATOR(pg_catalog.=) 8800000000000001)
    EXECUTE FUNCTION igny8_cron_job_restored();
ALTER TRIGGER igny8_ai_health_job_restored ON cron.job DEPENDS ON EXTENSION igny8_ai;

-- every minute, as the seed asks
SELECT @extschema@.igny8_set_health_schedule('* * * * *');

-- DROP EXTENSION igny8_ai removes the health job at once.  Before any DROP
-- EXTENSION (which extension it drops is not known yet) the job, as it is,
-- is kept aside in a setting of the transaction and deleted; after the
-- command, if igny8_ai is still there (its trigger after the command went
-- with it otherwise), it is put back.  Only DROP EXTENSION: a DROP SCHEMA
-- or DROP OWNED, frequent in some applications and made by any role,
-- never touches cron.job; one that drops igny8_ai leaves the job to remove
-- itself (igny8_health_job_command).  The job's row is deleted and put
-- back, cron.job is not locked as a whole.  Plain PL/pgSQL, so that a DROP
-- EXTENSION works also when igny8_ai is no longer in
-- shared_preload_libraries (the first step of an uninstall); SECURITY
-- DEFINER, so that a role that may drop an extension of its own but may
-- not write cron.job can.  A DROP that fails or is rolled back keeps the
-- job.
CREATE FUNCTION igny8_before_drop() RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    job text;
BEGIN
    DELETE FROM cron.job j
     WHERE j.jobid OPERATOR(pg_catalog.=) @extschema@.igny8_health_job_id()
    RETURNING pg_catalog.to_jsonb(j)::text INTO job;
    PERFORM pg_catalog.set_config('igny8_ai_drop.job', coalesce(job, 'none'), true);
END
$$;

CREATE FUNCTION igny8_after_drop() RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    job text := pg_catalog.current_setting('igny8_ai_drop.job', true);
BEGIN
    IF coalesce(job, '') OPERATOR(pg_catalog.=) '' THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('igny8_ai_drop.job', '', true);
    IF job OPERATOR(pg_catalog.<>) 'none' THEN
        INSERT INTO cron.job
        SELECT * FROM pg_catalog.jsonb_populate_record(NULL::cron.job, job::jsonb);
    END IF;
END
$$;

CREATE EVENT TRIGGER igny8_ai_before_drop ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION igny8_before_drop();

CREATE EVENT TRIGGER igny8_ai_after_drop ON ddl_command_end
    WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION igny8_after_drop();

--
-- The workers and the request slots, for monitoring.
--

CREATE FUNCTION igny8_worker_status(
    OUT worker            integer,
    OUT pid               integer,
    OUT started_at        timestamptz,
    OUT in_flight         integer,
    OUT queued            integer,
    OUT served            bigint,
    OUT config_current    boolean,
    OUT settings_reloads  bigint,
    OUT last_job_scan     timestamptz,
    OUT next_job_scan     timestamptz,
    OUT last_turn         timestamptz,
    OUT stalled           boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'igny8_worker_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION igny8_worker_status() IS
    'each igny8_ai worker: pid (NULL when not running), requests held and queued, whether it runs the latest committed configuration, when it last scanned igny8_jobs and next scans it unless woken, when its loop last turned, and whether it is stalled (a request has waited in its queue, and its loop has not turned, for more than a second)';

CREATE FUNCTION igny8_slot_status(
    OUT state  text,
    OUT slots  integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'igny8_slot_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION igny8_slot_status() IS
    'the request slots (igny8_ai.max_in_flight) by state: free, filling, queued, running, done, abandoned';

-- Submitted jobs waiting and running, by priority, for a dashboard: every
-- state and priority has its row (zero when there is none), counted
-- through the partial indexes of queued and running jobs, so the finished
-- jobs kept for igny8_ai.job_retention are never read.  A queued job is
-- due from its not_before (its submission, unless it asked for later);
-- the longest wait is that of the oldest due job.  Read with the owner's
-- rights: a monitoring role counts every role's jobs, without seeing any.
CREATE VIEW igny8_job_queue AS
SELECT st.state,
       pr.priority,
       coalesce(c.jobs, 0) AS jobs,
       coalesce(c.due, 0) AS due,
       c.oldest_since
  FROM (VALUES ('queued'), ('running')) AS st(state)
  CROSS JOIN (VALUES ('interactive'), ('background')) AS pr(priority)
  LEFT JOIN (
       SELECT 'queued'::text AS state, j.priority, pg_catalog.count(*) AS jobs,
              pg_catalog.count(*) FILTER (WHERE j.not_before OPERATOR(pg_catalog.<=) pg_catalog.now()) AS due,
              pg_catalog.min(j.not_before) FILTER (WHERE j.not_before OPERATOR(pg_catalog.<=) pg_catalog.now()) AS oldest_since
         FROM @extschema@.igny8_jobs j
        WHERE j.state OPERATOR(pg_catalog.=) 'queued'
        GROUP BY j.priority
       UNION ALL
       SELECT 'running'::text, j.priority, pg_catalog.count(*), pg_catalog.count(*), pg_catalog.min(j.started_at)
         FROM @extschema@.igny8_jobs j
        WHERE j.state OPERATOR(pg_catalog.=) 'running'
        GROUP BY j.priority) c
       ON c.state OPERATOR(pg_catalog.=) st.state AND c.priority OPERATOR(pg_catalog.=) pr.priority;

COMMENT ON VIEW igny8_job_queue IS
    'submitted jobs queued (and due) and running, by priority, with the longest wait of a due job or the longest run';

--
-- Cost reports: cost per provider, the GPU rent, savings against OpenAI.
--

-- The fixed costs (rent) of [from_ts, to_ts), in USD: each row's monthly
-- amount times the part of each calendar month that lies in the period
-- and in the row's validity.  Months are calendar months in UTC, as the
-- workers count them when they charge an attempt its share (price.c), so
-- that a report does not depend on the session's time zone.
CREATE FUNCTION igny8_rent(from_ts timestamptz, to_ts timestamptz)
RETURNS numeric
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- an infinite bound would make the series of months endless
    PERFORM @extschema@.igny8_cost_period_check(from_ts, to_ts);
    RETURN (SELECT round(coalesce(sum(f.monthly_amount
                              * extract(epoch FROM least(to_ts, coalesce(f.valid_to, 'infinity'), b.month_end)
                                                   - greatest(from_ts, f.valid_from, b.month_start))
                              / extract(epoch FROM b.month_end - b.month_start)), 0), 6)
      FROM @extschema@.igny8_fixed_costs f,
           generate_series(date_trunc('month', from_ts AT TIME ZONE 'UTC'),
                           to_ts AT TIME ZONE 'UTC', interval '1 month') AS m,
           LATERAL (SELECT m AT TIME ZONE 'UTC' AS month_start,
                           (m + interval '1 month') AT TIME ZONE 'UTC' AS month_end) b
     WHERE least(to_ts, coalesce(f.valid_to, 'infinity'), b.month_end)
           > greatest(from_ts, f.valid_from, b.month_start));
END
$$;

COMMENT ON FUNCTION igny8_rent(timestamptz, timestamptz) IS
    'the fixed costs (GPU rent) of a period in USD, prorated by the seconds of each month it covers';

-- A period for the reports: finite, and not empty.
CREATE FUNCTION igny8_cost_period_check(from_ts timestamptz, to_ts timestamptz)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF from_ts IS NULL OR to_ts IS NULL OR NOT isfinite(from_ts) OR NOT isfinite(to_ts) THEN
        RAISE EXCEPTION 'a cost period must have finite bounds'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give from_ts and to_ts, e.g. date_trunc(''month'', now()) and date_trunc(''month'', now()) + interval ''1 month''.';
    END IF;
    IF to_ts <= from_ts THEN
        RAISE EXCEPTION 'a cost period must end after it starts'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The period is from %s to %s.', from_ts, to_ts);
    END IF;
END
$$;

-- The cost report of [from_ts, to_ts): a row per provider with usage in
-- the period, then a total row (provider NULL) that alone carries the
-- rent, the reference cost of the self-hosted work, the savings, the
-- return on the rent and the day it was earned back.
CREATE FUNCTION igny8_cost_report(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (
    provider                   text,
    attempts                   bigint,
    successes                  bigint,
    cached                     bigint,
    input_tokens               bigint,
    output_tokens              bigint,
    images                     bigint,
    cost                       numeric,
    reference_cost             numeric,
    rent                       numeric,
    self_hosted_reference_cost numeric,
    cache_savings              numeric,
    savings                    numeric,
    roi_pct                    numeric,
    earned_back_on             date)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    self_hosted text[];
    period_rent numeric;
    work numeric;
    cache numeric;
    back date;
BEGIN
    PERFORM @extschema@.igny8_cost_period_check(from_ts, to_ts);

    -- the providers a rent paid for during the period
    SELECT coalesce(array_agg(DISTINCT p), '{}') INTO self_hosted
      FROM @extschema@.igny8_fixed_costs f, unnest(f.providers) AS p
     WHERE f.valid_from < to_ts AND coalesce(f.valid_to, 'infinity') > from_ts;
    period_rent := @extschema@.igny8_rent(from_ts, to_ts);

    -- what OpenAI would have charged for the work the rent paid for (its
    -- successful attempts) and for the answers the cache gave, and the
    -- first day (in UTC) whose running total of that reached the rent
    SELECT coalesce(sum(d.work), 0), coalesce(sum(d.cache), 0),
           min(d.day) FILTER (WHERE period_rent > 0 AND d.running >= period_rent)
      INTO work, cache, back
      FROM (SELECT w.day, w.work, w.cache, sum(w.work) OVER (ORDER BY w.day) AS running
              FROM (SELECT (l.created_at AT TIME ZONE 'UTC')::date AS day,
                           sum(coalesce(l.reference_cost, 0)) AS work,
                           sum(coalesce(l.reference_cost, 0)) FILTER (WHERE l.cached) AS cache
                      FROM @extschema@.ai_usage_log l
                     WHERE l.created_at >= from_ts AND l.created_at < to_ts
                       AND (l.cached OR (l.success AND l.provider = ANY (self_hosted)))
                     GROUP BY 1) w) d;

    -- a row per provider and the total (provider NULL: never a provider)
    RETURN QUERY
    SELECT l.provider,
           count(*),
           count(*) FILTER (WHERE l.success),
           count(*) FILTER (WHERE l.cached),
           coalesce(sum(l.input_tokens), 0)::bigint,
           coalesce(sum(l.output_tokens), 0)::bigint,
           coalesce(sum(l.images), 0)::bigint,
           coalesce(sum(l.cost), 0),
           coalesce(sum(l.reference_cost), 0),
           CASE WHEN grouping(l.provider) = 1 THEN period_rent END,
           CASE WHEN grouping(l.provider) = 1 THEN work END,
           CASE WHEN grouping(l.provider) = 1 THEN cache END,
           CASE WHEN grouping(l.provider) = 1 THEN work - period_rent END,
           CASE WHEN grouping(l.provider) = 1 AND period_rent > 0
                THEN round(100 * (work - period_rent) / period_rent, 1) END,
           CASE WHEN grouping(l.provider) = 1 THEN back END
      FROM @extschema@.ai_usage_log l
     WHERE l.created_at >= from_ts AND l.created_at < to_ts
     GROUP BY GROUPING SETS ((l.provider), ())
     ORDER BY grouping(l.provider), l.provider;
    -- the total row comes even from a period without usage: it has its rent
END
$$;

COMMENT ON FUNCTION igny8_cost_report(timestamptz, timestamptz) IS
    'cost of [from_ts, to_ts): a row per provider, then a total row (provider NULL) with the rent, savings against OpenAI, ROI and the day the rent was earned back';

-- The report of each calendar month (in UTC) with usage, as its total row.
CREATE FUNCTION igny8_cost_months()
RETURNS TABLE (
    month                      date,
    attempts                   bigint,
    successes                  bigint,
    cached                     bigint,
    input_tokens               bigint,
    output_tokens              bigint,
    images                     bigint,
    cost                       numeric,
    reference_cost             numeric,
    rent                       numeric,
    self_hosted_reference_cost numeric,
    cache_savings              numeric,
    savings                    numeric,
    roi_pct                    numeric,
    earned_back_on             date,
    earned_back_day            integer)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.month::date, r.attempts, r.successes, r.cached, r.input_tokens,
           r.output_tokens, r.images, r.cost, r.reference_cost, r.rent,
           r.self_hosted_reference_cost, r.cache_savings, r.savings, r.roi_pct,
           r.earned_back_on,
           extract(day FROM r.earned_back_on)::integer
      FROM generate_series((SELECT date_trunc('month', min(l.created_at) AT TIME ZONE 'UTC')
                              FROM @extschema@.ai_usage_log l),
                           (SELECT max(l.created_at) AT TIME ZONE 'UTC'
                              FROM @extschema@.ai_usage_log l),
                           interval '1 month') AS m(month),
           @extschema@.igny8_cost_report(m.month AT TIME ZONE 'UTC',
                                         (m.month + interval '1 month') AT TIME ZONE 'UTC') r
     WHERE r.provider IS NULL
       AND r.attempts > 0       -- the months with usage (the first and last
                                -- found by the index on created_at)
     ORDER BY m.month
$$;

COMMENT ON FUNCTION igny8_cost_months() IS
    'the total row of igny8_cost_report for each calendar month with usage';

CREATE VIEW igny8_cost_monthly AS
SELECT * FROM @extschema@.igny8_cost_months();

COMMENT ON VIEW igny8_cost_monthly IS
    'per calendar month: attempts, tokens, images, cost, rent, savings against OpenAI, ROI on the rent, the day it was earned back';

-- This month's report (the calendar month in UTC), per provider: what a
-- dashboard reads.
CREATE VIEW igny8_cost_by_provider AS
SELECT r.provider, r.attempts, r.successes, r.input_tokens, r.output_tokens,
       r.images, r.cost, r.reference_cost
  FROM @extschema@.igny8_cost_report(
           pg_catalog.timezone('UTC'::text, pg_catalog.date_trunc('month'::text, pg_catalog.timezone('UTC'::text, pg_catalog.now()))),
           pg_catalog.timezone('UTC'::text, pg_catalog.date_trunc('month'::text, pg_catalog.timezone('UTC'::text, pg_catalog.now()))
                                            OPERATOR(pg_catalog.+) '1 mon'::interval)) r
 WHERE r.provider IS NOT NULL;

COMMENT ON VIEW igny8_cost_by_provider IS
    'this calendar month, per provider: attempts, successes, tokens, images, cost and reference cost';

-- Cost per account over [from_ts, to_ts), with the caller's rights: a
-- role reads only the usage rows it may read.
CREATE FUNCTION igny8_cost_by_account(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (
    account_id      bigint,
    attempts        bigint,
    successes       bigint,
    cached          bigint,
    input_tokens    bigint,
    output_tokens   bigint,
    images          bigint,
    cost            numeric,
    reference_cost  numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.igny8_cost_period_check(from_ts, to_ts);
    RETURN QUERY
    SELECT l.account_id, count(*), count(*) FILTER (WHERE l.success),
           count(*) FILTER (WHERE l.cached),
           coalesce(sum(l.input_tokens), 0)::bigint,
           coalesce(sum(l.output_tokens), 0)::bigint,
           coalesce(sum(l.images), 0)::bigint,
           coalesce(sum(l.cost), 0), coalesce(sum(l.reference_cost), 0)
      FROM @extschema@.ai_usage_log l
     WHERE l.created_at >= from_ts AND l.created_at < to_ts
     GROUP BY l.account_id
     ORDER BY l.account_id NULLS LAST;
END
$$;

COMMENT ON FUNCTION igny8_cost_by_account(timestamptz, timestamptz) IS
    'cost of [from_ts, to_ts) per account_id (NULL: calls without one), over the usage rows the caller may read';

--
-- Accounts and budgets.
--
-- A role bound to an account (igny8_grant_usage(role, account_id)) is
-- charged to it whatever it passes, and reads only that account's
-- ai_usage_log rows and jobs.  The callers look the binding up in C
-- (igny8_bound_account), from one copy of igny8_account_roles in shared
-- memory (account.c); a statement trigger invalidates it at commit.
--

CREATE TABLE igny8_account_roles (
    role            regrole PRIMARY KEY,
    account_id      bigint NOT NULL CHECK (account_id OPERATOR(pg_catalog.>=) 0),
    bound_at        timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE igny8_account_roles IS
    'roles bound to one account: their calls are charged to it, and they read only its ai_usage_log rows and jobs';

CREATE FUNCTION igny8_account_roles_changed() RETURNS trigger
    AS 'MODULE_PATHNAME', 'igny8_account_roles_changed'
    LANGUAGE C;

CREATE TRIGGER igny8_account_roles_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON igny8_account_roles
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_account_roles_changed();
-- It only announces the change (the backends' copies of the bindings are
-- dropped at commit): it fires with session_replication_role = replica
-- too, as on a logical replication subscriber, where a binding that
-- arrived unannounced would leave the role unbound for its row security.
ALTER TABLE igny8_account_roles ENABLE ALWAYS TRIGGER igny8_account_roles_changed;

-- The account the current role is bound to, or NULL when it is not bound.
CREATE FUNCTION igny8_bound_account() RETURNS bigint
    AS 'MODULE_PATHNAME', 'igny8_bound_account'
    LANGUAGE C STABLE PARALLEL SAFE;

-- Executable by PUBLIC: the policies below call it for whoever reads the
-- tables, and it tells a role nothing but its own binding.
COMMENT ON FUNCTION igny8_bound_account() IS
    'the account current_user is bound to (igny8_account_roles), or NULL';

-- A bound role reads its account's rows only; any other role reads all.
ALTER TABLE ai_usage_log ENABLE ROW LEVEL SECURITY;

CREATE POLICY igny8_usage_account ON ai_usage_log FOR SELECT
    USING (@extschema@.igny8_bound_account() IS NULL
           OR account_id OPERATOR(pg_catalog.=) @extschema@.igny8_bound_account());

CREATE POLICY igny8_jobs_account ON igny8_jobs AS RESTRICTIVE FOR SELECT
    USING (@extschema@.igny8_bound_account() IS NULL
           OR account_id OPERATOR(pg_catalog.=) @extschema@.igny8_bound_account());

-- The workers take and write every job, whoever submitted it, and write
-- every account's usage rows, as whatever role igny8_ai.username names
-- (with the grants of igny8_grant_worker).  The policies admit the worker
-- processes themselves, not a role by name or oid: made here, they come
-- back with CREATE EXTENSION after a dump and restore (pg_dump leaves out
-- policies on an extension's tables that its script did not make) or a
-- DROP and CREATE EXTENSION.  No other backend passes them.
CREATE FUNCTION igny8_in_worker() RETURNS boolean
    AS 'MODULE_PATHNAME', 'igny8_in_worker'
    LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION igny8_in_worker() IS
    'true in an igny8_ai worker process: the workers'' row-level security policies on igny8_jobs and ai_usage_log';

-- Whether a role is the one the workers connect as (igny8_ai.username;
-- empty: the bootstrap superuser).  igny8_grant_usage() refuses to bind
-- it: bound, the policies above would show the workers one account's
-- jobs and usage rows (account.c ignores a binding in a worker anyway).
CREATE FUNCTION igny8_is_worker_role(role regrole) RETURNS boolean
    AS 'MODULE_PATHNAME', 'igny8_is_worker_role'
    LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION igny8_is_worker_role(regrole) IS
    'true if role is the one the igny8_ai workers connect as (igny8_ai.username); igny8_grant_usage refuses to bind it';

CREATE POLICY igny8_jobs_worker ON igny8_jobs FOR ALL
    USING (@extschema@.igny8_in_worker());

CREATE POLICY igny8_usage_worker ON ai_usage_log FOR INSERT
    WITH CHECK (@extschema@.igny8_in_worker());

-- Remove a role's binding; the role keeps its grants and becomes unbound.
CREATE FUNCTION igny8_unbind_usage(role regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    DELETE FROM @extschema@.igny8_account_roles r
     WHERE r.role OPERATOR(pg_catalog.=) igny8_unbind_usage.role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'role "%" is not bound to an account', role
            USING ERRCODE = 'undefined_object',
                  HINT = 'The bound roles are in igny8_account_roles.';
    END IF;
END
$$;

COMMENT ON FUNCTION igny8_unbind_usage(regrole) IS
    'remove the account binding of a role made by igny8_grant_usage(role, account_id)';

-- Budgets: a limit in USD per account and period (a UTC day or month).
-- The workers check it before every paid attempt (src/budget.c).
CREATE TABLE igny8_budgets (
    account_id      bigint NOT NULL CHECK (account_id OPERATOR(pg_catalog.>=) 0),
    period          text NOT NULL CHECK (period OPERATOR(pg_catalog.=) ANY (ARRAY['day', 'month'])),
    limit_usd       numeric(14, 6) NOT NULL CHECK (limit_usd OPERATOR(pg_catalog.>=) 0),
    action          text NOT NULL DEFAULT 'refuse'
                    CHECK (action OPERATOR(pg_catalog.=) ANY (ARRAY['refuse', 'self_hosted_only'])),
    warn_fraction   numeric(4, 3) NOT NULL DEFAULT 0.8
                    CHECK (warn_fraction OPERATOR(pg_catalog.>) 0 AND warn_fraction OPERATOR(pg_catalog.<=) 1),
    PRIMARY KEY (account_id, period)
);

COMMENT ON TABLE igny8_budgets IS
    'spending limits per account and UTC day or month; the workers check them before every paid attempt';
COMMENT ON COLUMN igny8_budgets.action IS
    'when the limit would be passed: refuse (SQLSTATE 53400) or self_hosted_only (skip the paid candidates)';
COMMENT ON COLUMN igny8_budgets.warn_fraction IS
    'spend, as a fraction of limit_usd, that sends NOTIFY igny8_ai_budget once per period';

-- The spend the workers hold per budget (shared memory), for monitoring.
CREATE FUNCTION igny8_budget_status(
    OUT account_id    bigint,
    OUT period        text,
    OUT period_start  timestamptz,
    OUT spend         numeric,
    OUT reserved      numeric,
    OUT limit_usd     numeric,
    OUT action        text,
    OUT warned        boolean,
    OUT loading       boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'igny8_budget_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION igny8_budget_status() IS
    'each budget as the workers check it: the UTC period, the spend committed in it, the reservations of attempts in flight (USD), the limit, the action, whether the warning was sent';

CREATE TRIGGER igny8_budgets_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON igny8_budgets
    FOR EACH STATEMENT EXECUTE FUNCTION igny8_config_changed();
ALTER TABLE igny8_budgets ENABLE ALWAYS TRIGGER igny8_budgets_changed;

-- A role dropped while bound leaves its row behind (DROP ROLE sees no
-- dependency on a regrole value), shown as a bare OID: the dump leaves it
-- out, since restored into another cluster that OID may be another role's,
-- which would then be bound to the account.
SELECT pg_catalog.pg_extension_config_dump('igny8_account_roles',
    'WHERE EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) role::pg_catalog.oid)');
SELECT pg_catalog.pg_extension_config_dump('igny8_budgets', '');

--
-- Privileges: nothing for PUBLIC; helpers grant what each role needs.
--

REVOKE ALL ON FUNCTION igny8_generate_text(text, text, integer, double precision, text, interval, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_chat(jsonb, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_generate_text_batch(text[], text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_generate_image(text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_generate_images(text, text, text, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_submit_text(text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_submit_chat(jsonb, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_submit_image(text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_submit_batch(text[], text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_job(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_job_progress(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_wait_job(bigint, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_cancel_job(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_jobs_cleanup() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_worker_alive(integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_jobs_submitted() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_prices_overlap_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_prices_provider_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_key_columns(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_key(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_key_match(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_health_job_id() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_guard() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_forget() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_forget_all() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_config_deletion_restored() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_workflow_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_workflow_in_use() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_workflows_release() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_deployment_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_settings_check(jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_provider_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_deployment_settings_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_provider_kind_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_provider_follow() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_fallback_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_touch_updated_at() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_check_health() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_health_state() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_health_job() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_set_health_schedule(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_cron_job_restored() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_health_job_command() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_before_drop() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_after_drop() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_worker_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_slot_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_fixed_costs_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_fixed_costs_overlap_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_overlap_turn(text) FROM PUBLIC;
REVOKE ALL ON igny8_overlap_turns FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_reference_models_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_rent(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_cost_period_check(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_cost_report(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_cost_months() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_cost_by_account(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON igny8_fixed_costs, igny8_reference_models, igny8_cost_monthly,
    igny8_cost_by_provider FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_account_roles_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_budget_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_unbind_usage(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_is_worker_role(regrole) FROM PUBLIC;
REVOKE ALL ON igny8_account_roles, igny8_budgets FROM PUBLIC;
REVOKE ALL ON igny8_providers, igny8_workflows, igny8_models, igny8_fallbacks,
    igny8_prices, igny8_config_deletions, ai_usage_log, service_health_log, igny8_jobs,
    igny8_job_cancels, igny8_job_results, igny8_service_status, igny8_job_queue FROM PUBLIC;

-- Let a monitoring role read the health of the providers and the workers
-- (never keys).
CREATE FUNCTION igny8_grant_monitoring(role regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text := '@extschema@';	-- substituted as a quoted identifier
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %s TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.igny8_service_status, %s.service_health_log TO %s',
                              s, s, role);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.igny8_job_queue TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_health_state(), %s.igny8_worker_status(), %s.igny8_slot_status(), %s.igny8_budget_status() TO %s',
                              s, s, s, s, role);
    -- cost: the aggregates, never a usage row
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.igny8_cost_by_provider, %s.igny8_cost_monthly, %s.igny8_fixed_costs TO %s',
                              s, s, s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_cost_report(timestamptz, timestamptz), %s.igny8_cost_months(), %s.igny8_rent(timestamptz, timestamptz), %s.igny8_cost_period_check(timestamptz, timestamptz) TO %s',
                              s, s, s, s, role);
END
$$;

COMMENT ON FUNCTION igny8_grant_monitoring(regrole) IS
    'let a role read igny8_service_status, service_health_log, igny8_job_queue, the worker and slot status, the budgets'' spend, and the cost reports (igny8_cost_report, igny8_cost_by_provider, igny8_cost_monthly)';

-- Grant the calling functions to an application role; with an account,
-- bind the role to it (igny8_account_roles).
CREATE FUNCTION igny8_grant_usage(role regrole, account_id bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text := '@extschema@';	-- substituted as a quoted identifier
    tables oid[];
    calls oid[];
    bindings oid;
    offender oid;
    why text;
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF account_id IS NOT NULL THEN
        tables := ARRAY[pg_catalog.to_regclass(pg_catalog.format('%s.ai_usage_log', s)),
                        pg_catalog.to_regclass(pg_catalog.format('%s.igny8_jobs', s))]::oid[];
        bindings := pg_catalog.to_regclass(pg_catalog.format('%s.igny8_account_roles', s));
        -- the functions that make a call, charged to the account they name
        calls := ARRAY[pg_catalog.to_regprocedure(pg_catalog.format('%s.igny8_generate_text(text, text, integer, double precision, text, interval, bigint)', s)),
                       pg_catalog.to_regprocedure(pg_catalog.format('%s.igny8_chat(jsonb, text, jsonb)', s)),
                       pg_catalog.to_regprocedure(pg_catalog.format('%s.igny8_generate_text_batch(text[], text, jsonb)', s)),
                       pg_catalog.to_regprocedure(pg_catalog.format('%s.igny8_generate_image(text, text, text, jsonb)', s)),
                       pg_catalog.to_regprocedure(pg_catalog.format('%s.igny8_generate_images(text, text, text, integer, jsonb)', s)),
                       pg_catalog.to_regprocedure(pg_catalog.format('%s.igny8_submit_text(text, text, jsonb)', s)),
                       pg_catalog.to_regprocedure(pg_catalog.format('%s.igny8_submit_chat(jsonb, text, jsonb)', s)),
                       pg_catalog.to_regprocedure(pg_catalog.format('%s.igny8_submit_image(text, text, text, jsonb)', s)),
                       pg_catalog.to_regprocedure(pg_catalog.format('%s.igny8_submit_batch(text[], text, jsonb)', s))]::oid[];
        IF account_id OPERATOR(pg_catalog.<) 0 THEN
            RAISE EXCEPTION 'account_id must not be negative'
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('account_id was %s.', account_id);
        END IF;
        -- row-level security does not hold a role to its account if it
        -- is, or can SET ROLE to, a superuser, a role with BYPASSRLS or
        -- CREATEROLE (which can grant itself other roles), one that reads
        -- past the tables (REPLICATION streams the WAL; the server file
        -- roles read the data files or run programs as the server), one
        -- that can change the bindings (a column grant, or TRIGGER: a
        -- trigger runs as whoever binds next), the owner of the tables it
        -- protects or one that can put triggers on them (a trigger sees
        -- every row written), another role that may read them and is
        -- not bound to the same account (the policies let it read every
        -- row), or another role that may make calls and is not bound to
        -- the same account (it charges any account it names, or none,
        -- outside the budgets).  The role itself is looked at first, then
        -- the others by name, up to the first reason.
        FOR offender IN
            SELECT r.oid FROM pg_catalog.pg_roles r
             WHERE pg_catalog.pg_has_role(role::oid, r.oid, 'MEMBER')
             ORDER BY r.oid OPERATOR(pg_catalog.<>) role::oid, r.rolname
        LOOP
            SELECT CASE
                     WHEN r.rolsuper THEN 'is a superuser'
                     WHEN r.rolbypassrls THEN 'has BYPASSRLS'
                     WHEN r.rolcreaterole THEN 'has CREATEROLE (it can grant itself any role)'
                     WHEN r.rolreplication THEN 'has REPLICATION (it can stream the WAL, rows and all)'
                     WHEN r.rolname OPERATOR(pg_catalog.=) 'pg_read_server_files' THEN 'reads the server''s files'
                     WHEN r.rolname OPERATOR(pg_catalog.=) 'pg_write_server_files' THEN 'writes the server''s files'
                     WHEN r.rolname OPERATOR(pg_catalog.=) 'pg_execute_server_program' THEN 'runs programs on the server'
                     WHEN pg_catalog.has_table_privilege(r.oid, bindings, 'INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER')
                          OR pg_catalog.has_any_column_privilege(r.oid, bindings, 'INSERT, UPDATE')
                       THEN 'can change igny8_account_roles'
                     WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                   WHERE c.oid OPERATOR(pg_catalog.=) ANY (tables)
                                     AND c.relowner OPERATOR(pg_catalog.=) r.oid)
                       THEN 'owns ai_usage_log or igny8_jobs'
                     WHEN EXISTS (SELECT 1 FROM pg_catalog.unnest(tables) AS t(rel)
                                   WHERE pg_catalog.has_table_privilege(r.oid, t.rel, 'TRIGGER'))
                       THEN 'can put triggers on ai_usage_log or igny8_jobs (they see every account''s rows)'
                     WHEN r.oid OPERATOR(pg_catalog.<>) role::oid
                          AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                       WHERE c.oid OPERATOR(pg_catalog.=) ANY (tables)
                                         AND pg_catalog.has_any_column_privilege(r.oid, c.oid, 'SELECT'))
                          AND NOT EXISTS (SELECT 1 FROM @extschema@.igny8_account_roles b
                                           WHERE b.role::oid OPERATOR(pg_catalog.=) r.oid
                                             AND b.account_id OPERATOR(pg_catalog.=) igny8_grant_usage.account_id)
                       THEN 'reads ai_usage_log or igny8_jobs and is not bound to this account'
                     WHEN r.oid OPERATOR(pg_catalog.<>) role::oid
                          AND EXISTS (SELECT 1 FROM pg_catalog.unnest(calls) AS f(fn)
                                       WHERE pg_catalog.has_function_privilege(r.oid, f.fn, 'EXECUTE'))
                          AND NOT EXISTS (SELECT 1 FROM @extschema@.igny8_account_roles b
                                           WHERE b.role::oid OPERATOR(pg_catalog.=) r.oid
                                             AND b.account_id OPERATOR(pg_catalog.=) igny8_grant_usage.account_id)
                       THEN 'may call the generation or submit functions and is not bound to this account (its calls name any account, or none)'
                   END
              INTO why
              FROM pg_catalog.pg_roles r
             WHERE r.oid OPERATOR(pg_catalog.=) offender;
            EXIT WHEN why IS NOT NULL;
        END LOOP;
        IF why IS NOT NULL THEN
            RAISE EXCEPTION 'cannot bind role "%" to an account', role
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = CASE WHEN offender OPERATOR(pg_catalog.=) role::oid
                                    THEN pg_catalog.format('Role %s %s: row-level security would not hold it to one account.',
                                                           role, why)
                                    ELSE pg_catalog.format('Role %s can SET ROLE to %s, which %s: row-level security would not hold it to one account.',
                                                           role, offender::pg_catalog.regrole, why)
                               END,
                      HINT = 'Bind an application role of its own, without SUPERUSER, BYPASSRLS, CREATEROLE and REPLICATION, that is a member of no such role.';
        END IF;
        -- the workers take every account's jobs and sum every budget's
        -- spend: bound, row-level security would show them one account's
        IF @extschema@.igny8_is_worker_role(role) THEN
            RAISE EXCEPTION 'cannot bind role "%" to an account', role
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('Role %s is the role the igny8_ai workers connect as (igny8_ai.username): they run every account''s jobs and sum every account''s spend.', role),
                      HINT = 'Bind an application role of its own; the workers'' role stays unbound.';
        END IF;
        INSERT INTO @extschema@.igny8_account_roles AS b (role, account_id)
        VALUES (role, igny8_grant_usage.account_id)
        ON CONFLICT ON CONSTRAINT igny8_account_roles_pkey DO UPDATE
           SET account_id = excluded.account_id, bound_at = pg_catalog.now()
         WHERE b.account_id OPERATOR(pg_catalog.<>) excluded.account_id;
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %s TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_generate_text(text, text, integer, double precision, text, interval, bigint) TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_chat(jsonb, text, jsonb) TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_generate_text_batch(text[], text, jsonb) TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_generate_image(text, text, text, jsonb) TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_generate_images(text, text, text, integer, jsonb) TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_submit_text(text, text, jsonb), %s.igny8_submit_chat(jsonb, text, jsonb), %s.igny8_submit_image(text, text, text, jsonb), %s.igny8_submit_batch(text[], text, jsonb) TO %s',
                              s, s, s, s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_job(bigint), %s.igny8_job_progress(bigint), %s.igny8_wait_job(bigint, interval), %s.igny8_cancel_job(bigint) TO %s',
                              s, s, s, s, role);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.ai_usage_log, %s.igny8_jobs, %s.igny8_job_results TO %s',
                              s, s, s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_cost_by_account(timestamptz, timestamptz), %s.igny8_cost_period_check(timestamptz, timestamptz) TO %s',
                              s, s, role);
END
$$;

COMMENT ON FUNCTION igny8_grant_usage(regrole, bigint) IS
    'let a role call the generation functions, submit jobs and read its jobs, ai_usage_log and igny8_cost_by_account; with account_id, bind it to that account';

-- What the role named by igny8_ai.username needs to run the workers.
CREATE FUNCTION igny8_grant_worker(role regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text := '@extschema@';	-- substituted as a quoted identifier
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %s TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.igny8_providers, %s.igny8_workflows, %s.igny8_models, %s.igny8_fallbacks, %s.igny8_prices TO %s',
                              s, s, s, s, s, role);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.igny8_fixed_costs, %s.igny8_reference_models TO %s',
                              s, s, role);
    EXECUTE pg_catalog.format('GRANT INSERT ON %s.ai_usage_log TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.igny8_account_providers, %s.igny8_cache_settings TO %s',
                              s, s, role);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s.igny8_response_cache TO %s', s, role);
    -- the spend of the accounts with a budget is summed from ai_usage_log
    EXECUTE pg_catalog.format('GRANT SELECT ON %s.ai_usage_log, %s.igny8_budgets TO %s', s, s, role);
    EXECUTE pg_catalog.format('GRANT SELECT, UPDATE ON %s.igny8_jobs TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT SELECT, DELETE ON %s.igny8_job_cancels TO %s', s, role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.igny8_worker_alive(integer, timestamptz) TO %s', s, role);
    -- the policies igny8_jobs_worker and igny8_usage_worker let the
    -- worker processes take every job and write every account's usage rows
END
$$;

COMMENT ON FUNCTION igny8_grant_worker(regrole) IS
    'grant what the role of igny8_ai.username needs: read the configuration, write ai_usage_log, run igny8_jobs';

REVOKE ALL ON FUNCTION igny8_grant_monitoring(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_grant_usage(regrole, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION igny8_grant_worker(regrole) FROM PUBLIC;
