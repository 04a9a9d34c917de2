#!/usr/bin/python3
"""
The key-leak test's calls (test/suites/key_leak runs it): every path on
which a provider key can fail or be echoed, against a server logging at
DEBUG1 with log_min_error_statement at DEBUG1, with a session LISTENing to
igny8_ai_health.  It writes everything a role could see (errors, usage and
health rows, the provider state, NOTIFY payloads) into OUT_DIR, for the
suite to search for any piece of the keys together with the server log.

Environment: IGNY8_PGHOST, IGNY8_PGPORT, IGNY8_PGDATABASE, OUT_DIR,
OLLAMA_URL, OPENAI_URL, ANTHROPIC_URL, COMFYUI_URL, OPENAI_TLS_URL, KEY_FILE,
ACCOUNT_KEY_FILE (an account's own OpenAI key, which the simulator refuses
and echoes), and the keys KEY_WRONG, KEY_LITERAL, KEY_OLLAMA, KEY_SLASH,
KEY_EARLY and KEY_LATE.
"""
import json
import os
import select
import sys

import psycopg2
import psycopg2.extensions

ENV = os.environ
OUT = ENV["OUT_DIR"]


def connect():
    conn = psycopg2.connect(host=ENV["IGNY8_PGHOST"], port=ENV["IGNY8_PGPORT"],
                            dbname=ENV["IGNY8_PGDATABASE"], user="postgres")
    conn.autocommit = True
    return conn


db = connect()
listener = connect()
listener.cursor().execute("LISTEN igny8_ai_health")
seen = open(os.path.join(OUT, "client.txt"), "w")
notes = open(os.path.join(OUT, "notify.txt"), "w")
steps = 0


def drain_notifies():
    listener.poll()
    while listener.notifies:
        notes.write(listener.notifies.pop(0).payload + "\n")


def configure(sql, *args):
    """A configuration change, with statement logging off in the session:
    a literal key in a statement is the DBA's own, not the extension's."""
    cur = db.cursor()
    cur.execute("SET log_min_error_statement = panic")
    cur.execute("SET log_min_messages = panic")
    cur.execute(sql, args)
    cur.execute("RESET log_min_error_statement")
    cur.execute("RESET log_min_messages")


def call(sql, *args):
    """Run a call; what the client sees (result or error) goes to
    client.txt."""
    global steps
    steps += 1
    cur = db.cursor()
    try:
        cur.execute(sql, args)
        for row in cur.fetchall():
            seen.write(repr(row) + "\n")
    except psycopg2.Error as exc:
        d = exc.diag
        for part in (d.message_primary, d.message_detail, d.message_hint,
                     d.context):
            if part:
                seen.write(part + "\n")
    drain_notifies()


def provider(pid, url, key):
    configure("UPDATE igny8_providers SET base_url = %s, api_key_ref = %s,"
              " settings = '{}' WHERE id = %s", url, key, pid)


# every change of state is an alert: a NOTIFY, and a LOG line
configure("ALTER SYSTEM SET igny8_ai.circuit_failure_threshold = 1")
call("SELECT pg_reload_conf()")

# 1. a wrong key, which OpenAI's 401 echoes; the fallback answers
provider("self_hosted_ai", ENV["OLLAMA_URL"], None)
provider("openai", ENV["OPENAI_URL"], ENV["KEY_WRONG"])
provider("anthropic", ENV["ANTHROPIC_URL"], "file:" + ENV["KEY_FILE"])
call("SELECT igny8_generate_text('Wrong key [[sim ollama:status=404]]', 'gpt-4')")
call("SELECT * FROM igny8_generate_image('Wrong key', 'dall-e-3-fallback')")
call("SELECT * FROM igny8_check_health()")

# 2. references that cannot be resolved: env, file, a literal key with a
# control character
provider("openai", ENV["OPENAI_URL"], "env:IGNY8_NO_SUCH_VARIABLE")
provider("anthropic", ENV["ANTHROPIC_URL"], "file:/nonexistent/igny8/key")
call("SELECT igny8_generate_text('Unresolvable [[sim ollama:status=404]]', 'gpt-4')")
call("SELECT * FROM igny8_check_health()")
provider("openai", ENV["OPENAI_URL"], ENV["KEY_LITERAL"] + "\x01")
call("SELECT igny8_generate_text('Literal [[sim ollama:status=404]]', 'gpt-4')")
call("SELECT * FROM igny8_check_health()")

# 3. a redirect (not followed) and a TLS failure, with a key that works
provider("openai", ENV["OPENAI_URL"], "env:OPENAI_API_KEY")
provider("anthropic", ENV["ANTHROPIC_URL"], "file:" + ENV["KEY_FILE"])
call("SELECT igny8_generate_text('Redirect [[sim ollama:status=404]]"
     " [[sim openai:redirect=/elsewhere]]', 'gpt-4')")
provider("openai", ENV["OPENAI_TLS_URL"], "env:OPENAI_API_KEY")
call("SELECT igny8_generate_text('TLS [[sim ollama:status=404]]', 'gpt-4')")
call("SELECT * FROM igny8_check_health()")
provider("openai", ENV["OPENAI_URL"], "env:OPENAI_API_KEY")

# 4. providers echoing the key: in an error, so that the key straddles
# the 100-byte excerpt of a plain body and the 200-byte cut of a JSON
# message at every offset; in the model field of an answer
provider("self_hosted_ai", ENV["OLLAMA_URL"], ENV["KEY_OLLAMA"])
for body, first in ((" plain", 80), ("", 180)):
    for offset in [0] + list(range(first, first + 21)):
        for status in (503, 401):
            call("SELECT igny8_generate_text(%s, 'gpt-4')",
                 "Echo [[sim any:echo_key=error status=%d key_offset=%d%s]]"
                 % (status, offset, body))
for role in ("ollama", "openai", "anthropic"):
    call("SELECT * FROM igny8_chat(%s, 'gpt-4')",
         json.dumps([{"role": "user",
                      "content": "Model [[sim %s:echo_key=model]]"
                                 " [[sim ollama:status=404]]" % role
                                 if role != "ollama" else
                                 "Model [[sim ollama:echo_key=model]]"}]))
call("SELECT * FROM igny8_check_health()")

# 4b. ComfyUI behind a proxy that takes a key, echoing it in an error of
# each step (submit, history poll, image) around the 200-byte cut
provider("comfyui", ENV["COMFYUI_URL"], ENV["KEY_OLLAMA"])
for step in ("prompt", "history", "view"):
    for offset in [0] + list(range(180, 201, 4)):
        call("SELECT * FROM igny8_generate_image(%s, 'dall-e-2', '512x512')",
             "Echo [[sim comfyui:on=%s echo_key=error status=500"
             " key_offset=%d]]" % (step, offset))
call("SELECT * FROM igny8_check_health()")

# 5. a key with "/" in it, refused by OpenAI and echoed in its 401, by a
# server that writes "/" as "\/" in JSON (as PHP does) and by one that
# writes it as it is (as Python's json.dumps does)
provider("openai", ENV["OPENAI_URL"], ENV["KEY_SLASH"])
for offset in [0] + list(range(180, 201)):
    call("SELECT igny8_generate_text(%s, 'gpt-4')",
         "Slash [[sim ollama:status=404]] [[sim openai:echo_key=error"
         " status=401 key_offset=%d escape_slash]]" % offset)
call("SELECT igny8_generate_text('Slash [[sim ollama:status=404]]', 'gpt-4')")
provider("openai", ENV["OPENAI_URL"], "env:OPENAI_API_KEY")

# 5b. keys with "/", '"' and "\" all before the 12th byte, and all past
# it: refused by OpenAI and echoed in its 401 (JSON, "/" as it is and as
# "\/"), and echoed by a server in an error around the 100- and 200-byte
# excerpts (JSON, JSON with "\/", plain text)
for key in (ENV["KEY_EARLY"], ENV["KEY_LATE"]):
    provider("openai", ENV["OPENAI_URL"], key)
    call("SELECT igny8_generate_text('Special [[sim ollama:status=404]]',"
         " 'gpt-4')")
    call("SELECT igny8_generate_text('Special [[sim ollama:status=404]]"
         " [[sim openai:escape_slash]]', 'gpt-4')")
    provider("openai", ENV["OPENAI_URL"], "env:OPENAI_API_KEY")
    provider("self_hosted_ai", ENV["OLLAMA_URL"], key)
    for form, first in (("", 180), (" escape_slash", 180), (" plain", 80)):
        for offset in [0] + list(range(first, first + 21, 4)):
            call("SELECT igny8_generate_text(%s, 'gpt-4')",
                 "Special [[sim any:echo_key=error status=503"
                 " key_offset=%d%s]]" % (offset, form))
provider("self_hosted_ai", ENV["OLLAMA_URL"], ENV["KEY_OLLAMA"])

# 6. an account's own key (igny8_account_providers), refused and echoed by
# OpenAI around the 200-byte cut.  The account turns Anthropic off, so
# that OpenAI is its only candidate, tried although its circuit is open.
configure("INSERT INTO igny8_account_providers (account_id, provider, enabled, api_key_ref)"
          " VALUES (42, 'openai', true, %s), (42, 'anthropic', false, NULL)",
          "file:" + ENV["ACCOUNT_KEY_FILE"])
for offset in [0] + list(range(180, 201, 4)):
    call("SELECT igny8_generate_text(%s, 'gpt-4-fallback', account_id => 42)",
         "Account [[sim openai:echo_key=error status=401 key_offset=%d]]"
         % offset)
call("SELECT * FROM igny8_chat(%s, 'gpt-4-fallback', '{\"account_id\": 42}')",
     json.dumps([{"role": "user", "content": "Account, plain 401"}]))

configure("ALTER SYSTEM RESET igny8_ai.circuit_failure_threshold")
call("SELECT pg_reload_conf()")


def dump(name, sql):
    cur = db.cursor()
    cur.execute(sql)
    with open(os.path.join(OUT, name), "w") as f:
        for row in cur.fetchall():
            f.write(" | ".join("" if v is None else str(v) for v in row) + "\n")


dump("usage.txt", "SELECT * FROM ai_usage_log ORDER BY id")
dump("health.txt", "SELECT * FROM service_health_log ORDER BY id")
dump("state.txt", "SELECT * FROM igny8_health_state()")
dump("status.txt", "SELECT * FROM igny8_service_status")
dump("activity.txt", "SELECT query FROM pg_stat_activity")
dump("accounts.txt", "SELECT * FROM igny8_account_providers")
dump("account_echoes.txt", "SELECT count(*) FROM ai_usage_log WHERE api_key_ref IS NOT NULL"
     " AND http_status = 401 AND error_message LIKE '%[redacted]%'")

# a moment for the last NOTIFYs, bounded
for _ in range(20):
    if select.select([listener], [], [], 0.1)[0]:
        drain_notifies()
seen.close()
notes.close()
print("%d calls made" % steps)
with open(os.path.join(OUT, "notify.txt")) as f:
    print("%d NOTIFY payloads received" % sum(1 for _ in f))
