# shellcheck shell=bash
#
# test/lib.sh: a throwaway PostgreSQL 15 with igny8_ai, and the backend
# simulator, for test/demo and the suites that need a server of their own.
# Source it from bash, as root; set IGNY8_TMP to a directory first.
#
PY=/usr/bin/python3
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=$("$PG_CONFIG" --bindir)
export IGNY8_SIM_OPENAI_KEY=${IGNY8_SIM_OPENAI_KEY:-sk-test-openai-0123456789}
export IGNY8_SIM_ANTHROPIC_KEY=${IGNY8_SIM_ANTHROPIC_KEY:-sk-ant-test-0123456789}
IGNY8_LIB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

as_pg() { runuser -u postgres -- "$@"; }

free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_sim: the simulator, state in $IGNY8_TMP/sim; sets SIM_PID.
start_sim() {
	mkdir -p "$IGNY8_TMP/sim"
	chown postgres:postgres "$IGNY8_TMP/sim"
	as_pg "$PY" "$IGNY8_LIB_ROOT/test/sim/igny8_sim.py" --state-dir "$IGNY8_TMP/sim" \
		>"$IGNY8_TMP/sim.log" 2>&1 &
	SIM_PID=$!
	for _ in $(seq 1 100); do
		[ -s "$IGNY8_TMP/sim/ports.json" ] && return 0
		sleep 0.1
	done
	cat "$IGNY8_TMP/sim.log" >&2
	return 1
}

# sim_url ROLE: the base URL of a simulator role.
sim_url() {
	echo "http://127.0.0.1:$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" \
		"$IGNY8_TMP/sim/ports.json" "$1")"
}

# start_pg DB: initdb in $IGNY8_TMP/data, preload pg_cron and igny8_ai for
# database DB (created before the workers start), start; sets PG_PORT.
# OPENAI_API_KEY and ANTHROPIC_API_KEY reach the server's environment.
start_pg() {
	local db=$1
	PG_PORT=$(free_port)
	as_pg "$PGBIN/initdb" -D "$IGNY8_TMP/data" -U postgres --auth=trust >"$IGNY8_TMP/initdb.log" 2>&1 ||
		{ cat "$IGNY8_TMP/initdb.log" >&2; return 1; }
	echo "CREATE DATABASE $db" |
		as_pg "$PGBIN/postgres" --single -D "$IGNY8_TMP/data" postgres >>"$IGNY8_TMP/initdb.log" 2>&1 ||
		{ cat "$IGNY8_TMP/initdb.log" >&2; return 1; }
	cat >>"$IGNY8_TMP/data/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = ''
unix_socket_directories = '$IGNY8_TMP'
shared_preload_libraries = 'pg_cron,igny8_ai'
cron.database_name = '$db'
igny8_ai.database = '$db'
CONF
	as_pg env OPENAI_API_KEY="${OPENAI_API_KEY:-}" ANTHROPIC_API_KEY="${ANTHROPIC_API_KEY:-}" \
		"$PGBIN/pg_ctl" -D "$IGNY8_TMP/data" -l "$IGNY8_TMP/server.log" -w start >/dev/null ||
		{ tail -20 "$IGNY8_TMP/server.log" >&2; return 1; }
}

# stop_all: the server and the simulator, if started.
stop_all() {
	[ -f "$IGNY8_TMP/data/postmaster.pid" ] &&
		as_pg "$PGBIN/pg_ctl" -D "$IGNY8_TMP/data" -m fast stop >/dev/null 2>&1
	[ -n "${SIM_PID:-}" ] && kill "$SIM_PID" 2>/dev/null
	return 0
}

# psql_db DB ARGS...: psql as postgres on the throwaway server.
psql_db() {
	local db=$1
	shift
	as_pg "$PGBIN/psql" -h "$IGNY8_TMP" -p "$PG_PORT" -d "$db" -X -v ON_ERROR_STOP=1 "$@"
}
