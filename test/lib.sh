# shellcheck shell=bash
#
# test/lib.sh: a throwaway PostgreSQL 15 with igny8_ai, the backend
# simulator, and the process control that test/run, test/demo and the
# suites share.  Source it from bash, as root; set IGNY8_TMP to a directory
# first.
#
# Everything started here can be stopped reliably, also on Ctrl-C:
#
#   - the simulator and other long jobs run in a session and process group
#     of their own (setsid), so that a terminal's SIGINT does not hit them
#     half-way, and stop_group reaches every process of the job, wrapper
#     or child: SIGTERM to the group, a bounded wait until the group is
#     gone, then SIGKILL;
#   - PostgreSQL is started with pg_ctl, which puts the postmaster in a
#     session of its own, and stopped with pg_ctl stop -m fast, then
#     -m immediate;
#   - stop_all does both for whatever was started; igny8_traps makes it run
#     on EXIT, INT and TERM.
#
# When test/run starts a script that sources this file, the script's
# temporary directory is recorded in $IGNY8_RUN_DIRS, so that test/run can
# tell that a left-over postmaster was the script's.
#
PY=/usr/bin/python3
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=$("$PG_CONFIG" --bindir)
export IGNY8_SIM_OPENAI_KEY=${IGNY8_SIM_OPENAI_KEY:-sk-test-openai-0123456789}
export IGNY8_SIM_ANTHROPIC_KEY=${IGNY8_SIM_ANTHROPIC_KEY:-sk-ant-test-0123456789}
IGNY8_LIB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

IGNY8_GROUPS=()     # process groups started with spawn, oldest first
IGNY8_PGDATA=()     # data directories of servers started with pg_ctl

if [ -n "${IGNY8_RUN_DIRS:-}" ] && [ -n "${IGNY8_TMP:-}" ]; then
	echo "$IGNY8_TMP" >>"$IGNY8_RUN_DIRS"
fi

# AS_PG_JOB CMD...: CMD as postgres, e.g. for spawn.  setpriv execs CMD,
# where runuser would stay on as its parent, and on SIGTERM wait 2 s more
# before it exits.  The environment is kept, with what runuser sets.
IGNY8_PG_HOME=$(getent passwd postgres | cut -d: -f6)
AS_PG_JOB=(setpriv --reuid=postgres --regid=postgres --init-groups
	env HOME="${IGNY8_PG_HOME:-/var/lib/postgresql}" USER=postgres
	LOGNAME=postgres SHELL=/bin/bash)

# as_pg CMD...: CMD as postgres.
as_pg() { "${AS_PG_JOB[@]}" "$@"; }

free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_until SECONDS CMD...: run CMD every 0.1 s until it succeeds (0), or
# give up after SECONDS (1).
wait_until() {
	local tries=$(($1 * 10))
	shift
	until "$@"; do
		tries=$((tries - 1))
		[ "$tries" -gt 0 ] || return 1
		sleep 0.1
	done
}

# group_alive PGID: some process of the group still exists (or its
# leader, which may not have made the group yet).
group_alive() { kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }
group_gone() { ! group_alive "$1"; }

# spawn CMD...: CMD in the background, in a new session and process group
# (setsid), with stdin from /dev/null; SPAWNED is its pid.  The shell has
# no job control, so the child is no group leader and setsid does not
# fork: the pid is also the group's id.  stop_all stops the group.
spawn() {
	setsid "$@" </dev/null &
	SPAWNED=$!
	IGNY8_GROUPS+=("$SPAWNED")
}

# stop_group PGID [SECONDS]: SIGTERM to the whole group, wait until it is
# gone (10 s, or SECONDS), then SIGKILL and wait 5 s more.
stop_group() {
	local pgid=$1 grace=${2:-10}
	if group_alive "$pgid"; then
		kill -TERM -- "-$pgid" 2>/dev/null || kill -TERM "$pgid" 2>/dev/null
		if ! wait_until "$grace" group_gone "$pgid"; then
			echo "process group $pgid still running ${grace}s after SIGTERM: SIGKILL" >&2
			kill -KILL -- "-$pgid" 2>/dev/null || kill -KILL "$pgid" 2>/dev/null
			wait_until 5 group_gone "$pgid" ||
				echo "process group $pgid survived SIGKILL" >&2
		fi
	fi
	# collect the exit status, so that no zombie is left (quietly: no
	# "Terminated" notice), and forget the group: its id may be reused
	if group_gone "$pgid"; then
		wait "$pgid" 2>/dev/null
		forget_group "$pgid"
	fi
	return 0
}

forget_group() {
	local g kept=()
	for g in "${IGNY8_GROUPS[@]}"; do
		[ "$g" = "$1" ] || kept+=("$g")
	done
	IGNY8_GROUPS=("${kept[@]}")
}

# job CMD...: CMD as a job of its own like spawn, but with the caller's
# stdin; wait for it and return its status.  In the wait builtin, a
# trapped INT or TERM is acted on at once (stop_all then stops the job).
# In the foreground, a command would first be waited for, and bash would
# not act on an INT at all if the command caught it and exited normally
# (as psql does when it cancels a query).
job() {
	local rc
	setsid "$@" <&0 &
	SPAWNED=$!
	IGNY8_GROUPS+=("$SPAWNED")
	wait "$SPAWNED"
	rc=$?
	stop_group "$SPAWNED"
	return "$rc"
}

# run_job LOG CMD...: like job CMD, with stdin /dev/null and the output in
# LOG (only the job's: what the traps print while it runs must not go
# there).
run_job() {
	local log=$1 rc
	shift
	spawn "$@" >"$log" 2>&1
	wait "$SPAWNED"
	rc=$?
	stop_group "$SPAWNED"
	return "$rc"
}

# start_sim: the simulator (IGNY8_SIM_SCRIPT, default this checkout's),
# as postgres, with the arguments in the array IGNY8_SIM_ARGS if set, state
# in $IGNY8_TMP/sim, log in $IGNY8_TMP/sim.log; waits (15 s at most) for
# ports.json.  Sets SIM_PID.
start_sim() {
	local state=$IGNY8_TMP/sim
	mkdir -p "$state"
	chown postgres:postgres "$state"
	spawn "${AS_PG_JOB[@]}" "$PY" \
		"${IGNY8_SIM_SCRIPT:-$IGNY8_LIB_ROOT/test/sim/igny8_sim.py}" \
		--state-dir "$state" ${IGNY8_SIM_ARGS[@]+"${IGNY8_SIM_ARGS[@]}"} \
		>"$IGNY8_TMP/sim.log" 2>&1
	SIM_PID=$SPAWNED
	if wait_until 15 sim_started; then
		[ -s "$state/ports.json" ] && return 0
	fi
	cat "$IGNY8_TMP/sim.log" >&2
	stop_group "$SIM_PID"
	return 1
}

# sim_started: ports.json is there, or the simulator is gone.
sim_started() { [ -s "$IGNY8_TMP/sim/ports.json" ] || group_gone "$SIM_PID"; }

# stop_sim: the simulator, if started (it removes ports.json).
stop_sim() {
	[ -n "${SIM_PID:-}" ] && stop_group "$SIM_PID"
	return 0
}

# sim_port ROLE: the port of a simulator role (ROLE may also be control,
# dead or openai_tls), read from the one-line ports.json by bash itself.
sim_port() {
	local json re="\"$1\": *([0-9]+)"
	read -r json <"$IGNY8_TMP/sim/ports.json" || return 1
	[[ $json =~ $re ]] || return 1
	echo "${BASH_REMATCH[1]}"
}

# sim_url ROLE: the base URL of a simulator role.
sim_url() {
	echo "http://127.0.0.1:$(sim_port "$1")"
}

# start_pg DB [PRELOAD]: initdb in $IGNY8_TMP/data, preload PRELOAD
# (default pg_cron and igny8_ai) for database DB (created before the
# workers start, unless it is postgres), start and wait until it accepts
# connections; sets PG_PORT.  OPENAI_API_KEY and ANTHROPIC_API_KEY reach
# the server's environment.  The server takes no TCP connections: pg_cron
# runs its jobs in background workers (README, "Setting up
# postgresql.conf"), with room for them in max_worker_processes.
start_pg() {
	local db=$1 preload=${2:-pg_cron,igny8_ai}
	PG_PORT=$(free_port)
	as_pg "$PGBIN/initdb" -D "$IGNY8_TMP/data" -U postgres --auth=trust >"$IGNY8_TMP/initdb.log" 2>&1 ||
		{ cat "$IGNY8_TMP/initdb.log" >&2; return 1; }
	if [ "$db" != postgres ]; then
		echo "CREATE DATABASE $db" |
			as_pg "$PGBIN/postgres" --single -D "$IGNY8_TMP/data" postgres >>"$IGNY8_TMP/initdb.log" 2>&1 ||
			{ cat "$IGNY8_TMP/initdb.log" >&2; return 1; }
	fi
	cat >>"$IGNY8_TMP/data/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = ''
unix_socket_directories = '$IGNY8_TMP'
shared_preload_libraries = '$preload'
cron.database_name = '$db'
cron.use_background_workers = on
max_worker_processes = 16
igny8_ai.database = '$db'
CONF
	# registered before the start: an interrupted start is stopped too
	IGNY8_PGDATA+=("$IGNY8_TMP/data")
	IGNY8_PG_STARTING=$IGNY8_TMP/data
	as_pg env OPENAI_API_KEY="${OPENAI_API_KEY:-}" ANTHROPIC_API_KEY="${ANTHROPIC_API_KEY:-}" \
		"$PGBIN/pg_ctl" -D "$IGNY8_TMP/data" -l "$IGNY8_TMP/server.log" -t 60 -w start >/dev/null ||
		{ tail -20 "$IGNY8_TMP/server.log" >&2; return 1; }
	IGNY8_PG_STARTING=
}

# pg_running DATADIR: a postmaster runs on DATADIR.
pg_running() { as_pg "$PGBIN/pg_ctl" -D "$1" status >/dev/null 2>&1; }

# stop_pg DATADIR: stop the server on DATADIR, if one runs: fast, then
# immediate, each waited for (30 s at most).  A start that was cut short
# may not have written postmaster.pid yet: wait for it a moment.
stop_pg() {
	local data=$1
	[ -d "$data" ] || return 0
	if [ ! -f "$data/postmaster.pid" ]; then
		[ "$data" = "${IGNY8_PG_STARTING:-}" ] || return 0
		wait_until 2 test -f "$data/postmaster.pid" || return 0
	fi
	pg_running "$data" || return 0
	as_pg "$PGBIN/pg_ctl" -D "$data" -m fast -t 30 -w stop >/dev/null 2>&1 && return 0
	echo "PostgreSQL in $data did not stop fast: immediate" >&2
	as_pg "$PGBIN/pg_ctl" -D "$data" -m immediate -t 30 -w stop >/dev/null 2>&1 ||
		echo "PostgreSQL in $data did not stop" >&2
	return 0
}

# stop_all: every server and job started here, newest first: the
# PostgreSQL servers, then the process groups.  Safe to call twice.
stop_all() {
	local - i groups
	set +e
	for ((i = ${#IGNY8_PGDATA[@]} - 1; i >= 0; i--)); do
		stop_pg "${IGNY8_PGDATA[i]}"
	done
	IGNY8_PGDATA=()
	groups=("${IGNY8_GROUPS[@]}")
	for ((i = ${#groups[@]} - 1; i >= 0; i--)); do
		stop_group "${groups[i]}" "${IGNY8_STOP_GRACE:-10}"
	done
	return 0
}

# A caution for the scripts: bash 5.2 runs a trap that comes while it
# expands the second command substitution of one command with a broken
# parser state (the trap fails, and so does the command).  So no command
# here has more than one $(...): assign them one by one.
#
# igny8_traps DIR: at exit, stop_all, then remove DIR (the variable
# IGNY8_EXIT_DIR; none if empty) unless IGNY8_KEEP_TMP is set.  INT and
# TERM end the script (130, 143) through that exit; further ones are
# ignored meanwhile, and none of it runs under set -e.
igny8_traps() {
	IGNY8_EXIT_DIR=$1
	# the script's stdout and stderr, for the exit: a trap runs with the
	# redirections of the command it interrupts (psql_db ... >/dev/null)
	exec {IGNY8_STDOUT}>&1 {IGNY8_STDERR}>&2
	trap igny8_on_exit EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}
igny8_on_exit() {
	local rc=$?
	trap '' INT TERM
	set +e
	exec 1>&"$IGNY8_STDOUT" 2>&"$IGNY8_STDERR"
	case $rc in
		130 | 143) echo "${0#"$IGNY8_LIB_ROOT"/}: interrupted; stopping what it started" >&2 ;;
	esac
	stop_all
	if [ -n "${IGNY8_EXIT_DIR:-}" ] && [ -d "$IGNY8_EXIT_DIR" ]; then
		if [ -n "${IGNY8_KEEP_TMP:-}" ]; then
			echo "kept $IGNY8_EXIT_DIR (IGNY8_KEEP_TMP)" >&2
		else
			rm -rf "$IGNY8_EXIT_DIR"
		fi
	fi
	exit "$rc"
}
# Until the script sets its own: INT and TERM end it through its EXIT trap
# (which bash does not always run on a signal).
trap 'exit 130' INT
trap 'exit 143' TERM

# psql_db DB ARGS...: psql as postgres on the throwaway server.
psql_db() {
	local db=$1
	shift
	as_pg "$PGBIN/psql" -h "$IGNY8_TMP" -p "$PG_PORT" -d "$db" -X -v ON_ERROR_STOP=1 "$@"
}

# psql_job DB ARGS...: the same as a job (see job), for a script that must
# stop at once on Ctrl-C; no pager (a job has no terminal).
psql_job() {
	local db=$1
	shift
	job "${AS_PG_JOB[@]}" "$PGBIN/psql" -h "$IGNY8_TMP" -p "$PG_PORT" -d "$db" \
		-X -P pager=off -v ON_ERROR_STOP=1 "$@"
}

# check NAME GOT WANT: one "ok: NAME" or "FAILED: NAME" line, counted;
# check_summary: "N passed, M failed", and fails when one did.
IGNY8_PASSED=0
IGNY8_FAILED=0
check() {
	if [ "$2" = "$3" ]; then
		echo "ok: $1"
		IGNY8_PASSED=$((IGNY8_PASSED + 1))
	else
		printf 'FAILED: %s\n    got:  %s\n    want: %s\n' "$1" "$2" "$3"
		IGNY8_FAILED=$((IGNY8_FAILED + 1))
	fi
}
check_summary() {
	echo "$IGNY8_PASSED passed, $IGNY8_FAILED failed"
	[ "$IGNY8_FAILED" -eq 0 ]
}

# config_snapshot DB: what a dump and restore or an upgrade must keep
# exactly: the configuration, its deletions, the pg_cron jobs.  A row as
# shipped is not dumped: a restore has CREATE EXTENSION make it again, at
# another time, so its updated_at is not compared.
config_snapshot() {
	psql_db "$1" -At <<'SQL'
SELECT 'provider', id, kind, base_url, coalesce(api_key_ref, '-'), priority, enabled,
       connect_timeout, max_concurrent, settings, origin,
       CASE WHEN origin <> 'shipped' THEN updated_at::text ELSE 'as shipped' END
  FROM igny8_providers ORDER BY id;
SELECT 'workflow', name, md5(graph::text), bindings, defaults,
       md5(coalesce(description, '-')), origin,
       CASE WHEN origin <> 'shipped' THEN updated_at::text ELSE 'as shipped' END
  FROM igny8_workflows ORDER BY name;
SELECT 'model', alias, provider_id, provider_model, task, coalesce(workflow, '-'),
       timeout, queue_timeout, coalesce(max_tokens, 0), weight, enabled, settings, origin
  FROM igny8_models ORDER BY 2, 3, 4;
SELECT 'fallback', alias, position, fallback_alias, origin
  FROM igny8_fallbacks ORDER BY 2, 3;
SELECT 'price', provider, model, unit, size, quality, price, valid_from,
       coalesce(valid_to::text, '-'), origin
  FROM igny8_prices ORDER BY 2, 3, 4, 5, 6, 8;
SELECT 'fixed cost', box, providers, description, monthly_amount, valid_from,
       coalesce(valid_to::text, '-'), origin
  FROM igny8_fixed_costs ORDER BY 2, 6;
SELECT 'reference', alias, provider, model, origin
  FROM igny8_reference_models ORDER BY 2;
SELECT 'deleted', table_name, key FROM igny8_config_deletions ORDER BY 2, 3::text;
SELECT 'binding', role, account_id, bound_at FROM igny8_account_roles ORDER BY 2::text;
SELECT 'budget', account_id, period, limit_usd, action, warn_fraction
  FROM igny8_budgets ORDER BY 2, 3;
SELECT 'account provider', account_id, provider, enabled, coalesce(api_key_ref, '-'),
       coalesce(priority::text, '-')
  FROM igny8_account_providers ORDER BY 2, 3;
SELECT 'cache', alias, enabled, ttl, max_entries, cache_nonzero_temperature
  FROM igny8_cache_settings ORDER BY 2;
SELECT 'job', jobid, jobname, schedule, command, active FROM cron.job ORDER BY jobid;
SQL
}
