#!/bin/bash
#
# deploy/fallback-drill.sh: on a running system, turn the providers off in
# turn and check that the expected fallback answers; then put the
# configuration back exactly as it was.
#
set -euo pipefail

usage() {
	cat <<'USAGE'
usage: fallback-drill.sh [--no-images] [--help]

Connects with psql and the standard variables (PGHOST, PGPORT,
PGDATABASE, PGUSER, PGPASSWORD or ~/.pgpass) to the database that has
igny8_ai, as a superuser (the restore puts back each provider row's
origin and updated_at too, with session_replication_role).

Each step disables some providers (UPDATE igny8_providers SET enabled =
false), makes one call, and checks from the call's result and from its
ai_usage_log rows which provider answered and that no disabled provider
was tried:

  disabled                   call                     answered by
  (none)                     chat  gpt-4              self_hosted_ai
  self_hosted_ai             chat  gpt-4              openai
  self_hosted_ai, openai     chat  gpt-4              anthropic
  openai                     chat  gpt-4-fallback     anthropic
  anthropic                  chat  gpt-4-fallback     openai
  (none)                     image dall-e-3           comfyui
  comfyui                    image dall-e-3           openai

A provider already disabled before the drill stays disabled, and a step
that expects it is skipped.  Each chat asks for at most 16 tokens; the
OpenAI image step costs one dall-e-2 image (--no-images skips both image
steps).  Calls are attributed to account DRILL_ACCOUNT_ID (default none).

The configuration is restored when the drill ends, also on an error or
Ctrl-C, and compared with a snapshot taken before: provider, deployment,
fallback and workflow rows must be exactly as they were.  If the script
is killed outright (kill -9), run the restore file it names at the start:
psql -f FILE.

Exit status: 0 when every step passed and the configuration is as before,
1 otherwise, 2 on a usage error.
USAGE
}

IMAGES=1
while [ $# -gt 0 ]; do
	case $1 in
		--no-images) IMAGES=0 ;;
		-h | --help) usage; exit 0 ;;
		*) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
	shift
done

PSQL=(psql -X -q -At -v ON_ERROR_STOP=1)
q() { "${PSQL[@]}" -c "$1"; }

passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAILED: $*"; failed=$((failed + 1)); }

# --- the snapshot, and the restore ----------------------------------------------
# every configuration row, in full: the drill must leave them as they were
CONFIG_DIGEST_SQL="SELECT md5(concat_ws('|',
  (SELECT string_agg(to_jsonb(t)::text, ',' ORDER BY t.id) FROM igny8_providers t),
  (SELECT string_agg(to_jsonb(t)::text, ',' ORDER BY t.alias, t.provider_id, t.provider_model) FROM igny8_models t),
  (SELECT string_agg(to_jsonb(t)::text, ',' ORDER BY t.alias, t.position) FROM igny8_fallbacks t),
  (SELECT string_agg(to_jsonb(t)::text, ',' ORDER BY t.name) FROM igny8_workflows t),
  (SELECT string_agg(to_jsonb(t)::text, ',' ORDER BY t.table_name, t.key::text) FROM igny8_config_deletions t)))"

before=$(q "$CONFIG_DIGEST_SQL")
# (id, enabled, origin, updated_at) of every provider, as SQL
values=$(q "SELECT string_agg(format('(%L, %L::boolean, %L, %L::timestamptz)', id, enabled, origin, updated_at), ', ' ORDER BY id) FROM igny8_providers")
was_enabled=$(q "SELECT string_agg(id, ' ' ORDER BY id) FROM igny8_providers WHERE enabled")

RESTORE_FILE=$(mktemp "${TMPDIR:-/tmp}/igny8-drill-restore.XXXXXX.sql")
cat >"$RESTORE_FILE" <<SQL
-- igny8_ai fallback drill: puts igny8_providers back as it was.
BEGIN;
CREATE TEMP TABLE drill_before (id text, enabled boolean, origin text, updated_at timestamptz) ON COMMIT DROP;
INSERT INTO drill_before VALUES $values;
-- enabled, through the triggers: the workers reload at COMMIT
UPDATE igny8_providers p SET enabled = b.enabled
  FROM drill_before b WHERE p.id = b.id AND p.enabled IS DISTINCT FROM b.enabled;
-- then origin and updated_at, which the triggers above set to "edited" and now()
SET LOCAL session_replication_role = replica;
UPDATE igny8_providers p SET origin = b.origin, updated_at = b.updated_at
  FROM drill_before b WHERE p.id = b.id
   AND (p.origin, p.updated_at) IS DISTINCT FROM (b.origin, b.updated_at);
COMMIT;
SQL
echo "restore file (psql -f it if this script is killed): $RESTORE_FILE"

restored=0
restore() {
	[ "$restored" -eq 0 ] || return 0
	if "${PSQL[@]}" -f "$RESTORE_FILE"; then
		restored=1
		rm -f "$RESTORE_FILE"
	else
		echo "RESTORE FAILED: run psql -f $RESTORE_FILE" >&2
		return 1
	fi
}
on_exit() {
	local rc=$?
	trap '' INT TERM
	if [ "$restored" -eq 0 ]; then
		echo "restoring the providers"
		restore || rc=1
	fi
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# disable IDS...: exactly the providers named off, the others as before.
disable() {
	local list
	list=$(printf "'%s'," "$@")
	list=${list%,}
	[ $# -gt 0 ] || list="''"
	q "UPDATE igny8_providers p SET enabled = (b.enabled AND p.id NOT IN ($list))
	     FROM (VALUES $values) AS b(id, enabled, origin, updated_at)
	    WHERE p.id = b.id AND p.enabled IS DISTINCT FROM (b.enabled AND p.id NOT IN ($list))"
}

account=${DRILL_ACCOUNT_ID:-NULL}
[[ $account =~ ^([0-9]+|NULL)$ ]] || { echo "DRILL_ACCOUNT_ID must be a number" >&2; exit 2; }

# step KIND ALIAS EXPECTED [DISABLED...]
step() {
	local kind=$1 alias=$2 expected=$3 result provider request_id attempts tried
	shift 3
	local what="disabled: ${*:-none}; $kind $alias"
	if ! grep -qw -- "$expected" <<<"$was_enabled"; then
		echo "skipped: $what (provider $expected was disabled before the drill)"
		return 0
	fi
	disable "$@"
	echo "-- $what"
	if [ "$kind" = chat ]; then
		result=$(q "SELECT provider || ' ' || request_id FROM igny8_chat(
		    '[{\"role\": \"user\", \"content\": \"Fallback drill: answer with one word.\"}]',
		    '$alias', jsonb_strip_nulls(jsonb_build_object('max_tokens', 16, 'timeout', 180, 'account_id', $account)))" 2>&1) ||
			{ bad "$what: the call failed: $(tr '\n' ' ' <<<"$result")"; return 0; }
	else
		result=$(q "SELECT provider || ' ' || request_id FROM igny8_generate_image(
		    'Fallback drill: a white cloud', '$alias', '1024x1024',
		    jsonb_strip_nulls(jsonb_build_object('timeout', 300, 'account_id', $account)))" 2>&1) ||
			{ bad "$what: the call failed: $(tr '\n' ' ' <<<"$result")"; return 0; }
	fi
	read -r provider request_id <<<"$result"
	attempts=$(q "SELECT string_agg(provider || CASE WHEN success THEN '(ok)' ELSE '(failed)' END, ' ' ORDER BY attempt)
	                FROM ai_usage_log WHERE request_id = '$request_id'")
	tried=$(q "SELECT count(*) FROM ai_usage_log WHERE request_id = '$request_id'
	             AND provider IN ($(printf "'%s'," "${@:-}" | sed 's/,$//'))")
	if [ "$provider" = "$expected" ] &&
		grep -q -- "$expected(ok)\$" <<<"$attempts" && [ "$tried" = 0 ]; then
		ok "$what: answered by $provider (attempts: $attempts)"
	else
		bad "$what: answered by $provider, expected $expected (attempts: $attempts; attempts on disabled providers: $tried)"
	fi
}

echo "== fallback drill on $(q "SELECT current_database() || ' as ' || current_user")"
step chat gpt-4 self_hosted_ai
step chat gpt-4 openai self_hosted_ai
step chat gpt-4 anthropic self_hosted_ai openai
step chat gpt-4-fallback anthropic openai
step chat gpt-4-fallback openai anthropic
if [ "$IMAGES" -eq 1 ]; then
	step image dall-e-3 comfyui
	step image dall-e-3 openai comfyui
fi

echo "== restoring the configuration"
restore
after=$(q "$CONFIG_DIGEST_SQL")
if [ "$after" = "$before" ]; then
	ok "configuration exactly as before the drill"
else
	bad "configuration differs from before the drill (was the drill run as a superuser?)"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
