#!/usr/bin/python3
"""
simctl.py - query and steer a running igny8_sim.py from the shell or SQL.

    /usr/bin/python3 test/sim/simctl.py [--state-dir DIR] [--copy] COMMAND ...

DIR defaults to $IGNY8_SIM_STATE; the simulator's ports are read from
DIR/ports.json.  Every command prints line-oriented, stable output so that
pg_regress expected files can contain it, e.g. through

    COPY t FROM PROGRAM '/usr/bin/python3 .../simctl.py --copy log --count';

--copy escapes backslashes (and tabs, CRs) for COPY's text format, so that
JSON read that way comes back byte for byte.

Commands:
    log [--role R] [--tag T] [--key K] [--path P] [--prompt-id ID]
        [--count | --field F]
    reset | status | counts | ports
    down ROLE | up ROLE
    config ROLE JSON
    port ROLE | url ROLE
    wait-disconnect --tag T [--role R] [--timeout S]
    wait-requests --tag T [--role R] [--count N] [--timeout S]

Exit status: 0 on success (wait-* too, whatever the outcome), 1 when the
simulator cannot be reached or refuses the call, 2 on a usage error.
"""

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

ROLES = ("ollama", "openai", "anthropic", "comfyui")

# Never go through an HTTP proxy from the environment: it is all loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SimctlError(Exception):
    pass


def load_ports(state_dir):
    if not state_dir:
        raise SimctlError("no state directory: use --state-dir or set "
                          "IGNY8_SIM_STATE")
    path = os.path.join(state_dir, "ports.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise SimctlError("cannot read %s: %s" % (path, exc))


def control(ports, method, path, params=None, body=None):
    """Call the control API; return the decoded JSON answer."""
    url = "http://127.0.0.1:%d%s" % (ports["control"], path)
    if params:
        params = {k: v for k, v in params.items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
    data = None if body is None else body.encode("utf-8")
    if method == "POST" and data is None:
        data = b""
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type":
                                              "application/json"})
    try:
        with OPENER.open(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()
        raise SimctlError("control %s %s: HTTP %d %s"
                          % (method, path, exc.code, detail))
    except (urllib.error.URLError, OSError) as exc:
        raise SimctlError("cannot reach the simulator control port: %s"
                          % exc)


def render(value):
    """One value as one line: strings bare, everything else as JSON."""
    if isinstance(value, str):
        return value.replace("\n", "\\n")
    return json.dumps(value, sort_keys=True)


def emit(args, text):
    if args.copy:
        text = (text.replace("\\", "\\\\").replace("\t", "\\t")
                .replace("\r", "\\r"))
    print(text)


def emit_json(args, obj):
    emit(args, json.dumps(obj, sort_keys=True))


def role_arg(value):
    if value not in ROLES:
        raise argparse.ArgumentTypeError("unknown role %r (one of %s)"
                                         % (value, ", ".join(ROLES)))
    return value


def wait_for(ports, params, done, timeout):
    """Poll the log until done(records) or TIMEOUT; return the verdict."""
    deadline = time.monotonic() + timeout
    while True:
        if done(control(ports, "GET", "/log", params)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def run(args):
    if args.command in ("port", "url"):
        ports = load_ports(args.state_dir)
        port = ports[args.role]
        emit(args, str(port) if args.command == "port"
             else "http://127.0.0.1:%d" % port)
        return

    ports = load_ports(args.state_dir)
    if args.command == "log":
        records = control(ports, "GET", "/log", {
            "role": args.role, "tag": args.tag, "key": args.key,
            "path": args.path, "prompt_id": args.prompt_id})
        if args.count:
            emit(args, str(len(records)))
        elif args.field:
            for record in records:
                emit(args, render(record.get(args.field)))
        else:
            emit_json(args, records)
    elif args.command == "reset":
        emit_json(args, control(ports, "POST", "/reset"))
    elif args.command in ("status", "counts", "ports"):
        emit_json(args, control(ports, "GET", "/" + args.command))
    elif args.command in ("down", "up"):
        emit_json(args, control(ports, "POST", "/%s/%s"
                                % (args.command, args.role)))
    elif args.command == "config":
        try:
            json.loads(args.json)
        except ValueError as exc:
            raise SimctlError("config: bad JSON: %s" % exc)
        emit_json(args, control(ports, "POST", "/config/" + args.role,
                                body=args.json))
    elif args.command == "wait-disconnect":
        ok = wait_for(ports, {"tag": args.tag, "role": args.role},
                      lambda recs: any(r["disconnect"] for r in recs),
                      args.timeout)
        emit(args, "disconnected" if ok else "not disconnected")
    elif args.command == "connections":
        # distinct client connections (source ports) the requests came on
        records = control(ports, "GET", "/log", {"tag": args.tag,
                                                 "role": args.role})
        emit(args, str(len({r["client_port"] for r in records})))
    elif args.command == "max-concurrency":
        # the most requests that were in progress at the same moment: from
        # the request to the start of its answer (a client may send its
        # next request before the simulator has logged the end of this one)
        records = control(ports, "GET", "/log", {"tag": args.tag,
                                                 "role": args.role})
        events = []
        for r in records:
            events.append((r["t_start"], 1))
            events.append((r.get("t_reply") or r["t_end"] or float("inf"), -1))
        peak = now = 0
        for _, step in sorted(events, key=lambda e: (e[0], e[1])):
            now += step
            peak = max(peak, now)
        emit(args, str(peak))
    elif args.command == "wait-requests":
        ok = wait_for(ports, {"tag": args.tag, "role": args.role},
                      lambda recs: sum(r["t_end"] is not None
                                       for r in recs) >= args.count,
                      args.timeout)
        emit(args, "ok" if ok else "timeout")


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=argparse.SUPPRESS,
                        help="simulator state directory "
                        "(default: $IGNY8_SIM_STATE)")
    common.add_argument("--copy", action="store_true",
                        default=argparse.SUPPRESS,
                        help="escape output for COPY ... FROM PROGRAM")

    parser = argparse.ArgumentParser(
        prog="simctl.py", parents=[common],
        description="Control a running igny8 backend simulator.")
    sub = parser.add_subparsers(dest="command", required=True)

    log = sub.add_parser("log", parents=[common],
                         help="recorded requests, oldest first")
    log.add_argument("--role", type=role_arg)
    log.add_argument("--tag")
    log.add_argument("--key")
    log.add_argument("--path")
    log.add_argument("--prompt-id", help="ComfyUI requests about this "
                     "prompt")
    out = log.add_mutually_exclusive_group()
    out.add_argument("--count", action="store_true",
                     help="print the number of matching requests")
    out.add_argument("--field", help="print this field, one line each")

    for name, text in (("reset", "clear log, counters and settings"),
                       ("status", "which roles are up"),
                       ("counts", "requests per role since reset"),
                       ("ports", "the ports the simulator uses")):
        sub.add_parser(name, parents=[common], help=text)

    for name, text in (("down", "stop listening, drop connections"),
                       ("up", "listen again on the same port"),
                       ("port", "print the role's port"),
                       ("url", "print the role's base URL")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("role", type=role_arg)
    for p in (sub.choices["port"], sub.choices["url"]):
        # port/url also know the control and dead ports.
        p._actions[-1].type = None
        p._actions[-1].choices = ROLES + ("control", "dead")

    config = sub.add_parser("config", parents=[common],
                            help="change a role's run-time settings")
    config.add_argument("role", type=role_arg)
    config.add_argument("json", help='e.g. \'{"delay": 0.5}\'')

    wd = sub.add_parser("wait-disconnect", parents=[common],
                        help="wait until a tagged request saw its client "
                        "disconnect")
    wd.add_argument("--tag", required=True)
    wd.add_argument("--role", type=role_arg)
    wd.add_argument("--timeout", type=float, default=10.0)

    for name, text in (("connections",
                        "number of client connections tagged requests used"),
                       ("max-concurrency",
                        "most tagged requests in progress at one moment")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--tag", required=True)
        p.add_argument("--role", type=role_arg)

    wr = sub.add_parser("wait-requests", parents=[common],
                        help="wait until N tagged requests have finished")
    wr.add_argument("--tag", required=True)
    wr.add_argument("--role", type=role_arg)
    wr.add_argument("--count", type=int, default=1)
    wr.add_argument("--timeout", type=float, default=10.0)
    return parser


def main(argv=None):
    # Behave like a Unix filter when piped into head and the like.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # A value the locale's encoding lacks (a UTF-8 tag in a LATIN1 or
    # ASCII locale) is printed escaped rather than failing the command.
    sys.stdout.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    if not hasattr(args, "state_dir"):
        args.state_dir = os.environ.get("IGNY8_SIM_STATE")
    if not hasattr(args, "copy"):
        args.copy = False
    try:
        run(args)
    except SimctlError as exc:
        print("simctl: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
