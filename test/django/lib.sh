# shellcheck shell=bash
#
# test/django/lib.sh: what the Django suites share.  Source it after
# test/lib.sh and igny8_traps.
#
# django_server: the simulator and a throwaway server with the database
# app, igny8_ai created in it and every provider pointed at the simulator;
# the scheduled health check off.  Sets DJANGO_ENV, the environment the
# Django application connects with (test/django/igny8_example/settings.py):
# as postgres unless IGNY8_PGUSER is added to it.
django_server() {
	local ollama_url openai_url anthropic_url comfyui_url
	# read by start_pg, and DJANGO_ENV by the suites
	# shellcheck disable=SC2034
	OPENAI_API_KEY=$IGNY8_SIM_OPENAI_KEY
	# shellcheck disable=SC2034
	ANTHROPIC_API_KEY=$IGNY8_SIM_ANTHROPIC_KEY
	start_sim
	start_pg app
	# one command substitution a command (see lib.sh)
	ollama_url=$(sim_url ollama)
	openai_url=$(sim_url openai)
	anthropic_url=$(sim_url anthropic)
	comfyui_url=$(sim_url comfyui)
	psql_db app -q >/dev/null <<SQL
SET client_min_messages = warning;
-- one transaction: the schedule CREATE EXTENSION makes never runs
BEGIN;
CREATE EXTENSION igny8_ai CASCADE;
SELECT igny8_set_health_schedule(NULL);
COMMIT;
UPDATE igny8_providers SET base_url = '$ollama_url' WHERE id = 'self_hosted_ai';
UPDATE igny8_providers SET base_url = '$openai_url' WHERE id = 'openai';
UPDATE igny8_providers SET base_url = '$anthropic_url' WHERE id = 'anthropic';
UPDATE igny8_providers SET base_url = '$comfyui_url' WHERE id = 'comfyui';
SQL
	# shellcheck disable=SC2034
	DJANGO_ENV=(IGNY8_PGHOST="$IGNY8_TMP" IGNY8_PGPORT="$PG_PORT" IGNY8_PGDATABASE=app
		IGNY8_SIM_STATE="$IGNY8_TMP/sim")
}
