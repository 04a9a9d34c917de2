#!/usr/bin/python3
"""deploy/alert-listener.py: igny8_ai health alerts to a webhook or by mail.

LISTENs on igny8_ai_health (the extension NOTIFYs it on every change of a
provider's state) and turns each payload of a provider going down (and,
unless --no-recoveries, each of one that was down coming back; --states
chooses other states)

    {"provider": "self_hosted_ai", "state": "down", "previous_state": "degraded",
     "code": "connection_refused", "consecutive_failures": 3, "at": "..."}

into a POST of JSON to a URL (--webhook), or a mail through an SMTP server
(--smtp-host, --mail-from, --mail-to), or both.  Mail goes to port 25 in
plain text, upgraded with --smtp-starttls (give --smtp-port 587 for a
submission port), or over TLS from the start with --smtp-ssl (port 465
unless --smtp-port says otherwise); not both.  The payload carries no
provider text and no key, so any role that may connect may listen.

It reconnects when the connection drops (a restart, a network cut),
waiting 1 s, then longer up to 30 s; notifications sent while it was
disconnected are lost (NOTIFY is not queued for absent listeners): on
reconnecting it says so in its log, and igny8_service_status has the
current states.

A delivery that fails in any way (no answer, an HTTP error, a reply that
is not HTTP, a mail server that refuses) is logged and retried or
skipped; the listener goes on with the next alert.

The webhook URL may come from IGNY8_ALERT_WEBHOOK instead of --webhook
(it is a secret; deploy/vps/igny8-alert-listener.service passes it so).

Python 3 standard library and psycopg2 only (Debian: python3-psycopg2).

Examples:
    alert-listener.py --dsn 'dbname=app user=monitor' \\
        --webhook https://hooks.example.com/T000/B000/XXXX
    SMTP_PASSWORD=... alert-listener.py --dsn 'dbname=app' \\
        --smtp-host smtp.example.com --smtp-port 587 --smtp-starttls \\
        --smtp-user alerts@example.com \\
        --mail-from alerts@example.com --mail-to dba@example.com
"""

import argparse
import email.message
import json
import logging
import os
import select
import signal
import smtplib
import sys
import time
import urllib.request

import psycopg2
import psycopg2.extensions

CHANNEL = "igny8_ai_health"
log = logging.getLogger("igny8-alert-listener")


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="igny8_ai health alerts (LISTEN igny8_ai_health) to a webhook or by mail",
        epilog="The connection string may also come from the PG* variables "
               "(PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD).")
    p.add_argument("--dsn", default="",
                   help="libpq connection string (default: the PG* environment)")
    p.add_argument("--webhook", metavar="URL", default=os.environ.get("IGNY8_ALERT_WEBHOOK") or None,
                   help="POST each alert as JSON to URL (default: $IGNY8_ALERT_WEBHOOK; "
                        "a webhook URL is a secret: the environment keeps it out of ps)")
    p.add_argument("--webhook-timeout", type=float, default=10.0, metavar="S")
    p.add_argument("--smtp-host", help="send each alert by mail through this SMTP server")
    p.add_argument("--smtp-port", type=int,
                   help="default 465 with --smtp-ssl, else 25")
    p.add_argument("--smtp-starttls", action="store_true", help="STARTTLS before logging in")
    p.add_argument("--smtp-ssl", action="store_true",
                   help="SMTP over TLS from the first byte (port 465 unless --smtp-port)")
    p.add_argument("--smtp-user", help="login; the password comes from SMTP_PASSWORD")
    p.add_argument("--mail-from")
    p.add_argument("--mail-to", action="append", default=[], metavar="ADDR",
                   help="recipient (repeat for more)")
    p.add_argument("--states", default="down",
                   help="states that raise an alert, comma-separated (default: %(default)s; "
                        "down,degraded,healthy for every change)")
    p.add_argument("--recoveries", action=argparse.BooleanOptionalAction, default=True,
                   help="also alert when a provider that was down is no longer down "
                        "(default: on)")
    p.add_argument("--keepalive", type=float, default=30.0, metavar="S",
                   help="check the connection every S seconds of silence (default 30)")
    p.add_argument("--max-alerts", type=int, default=0, metavar="N",
                   help="exit after N alerts (for tests; default: run for ever)")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    if not a.webhook and not a.smtp_host:
        p.error("give --webhook URL (or IGNY8_ALERT_WEBHOOK), or --smtp-host with --mail-from "
                "and --mail-to, or both")
    if a.smtp_host and (not a.mail_from or not a.mail_to):
        p.error("--smtp-host needs --mail-from and --mail-to")
    # one or the other: STARTTLS upgrades a plain connection, which
    # --smtp-ssl never has
    if a.smtp_ssl and a.smtp_starttls:
        p.error("--smtp-ssl and --smtp-starttls exclude each other: --smtp-ssl "
                "(port 465) is TLS from the start, --smtp-starttls (port 587) upgrades a plain connection")
    if a.smtp_port is None:
        a.smtp_port = 465 if a.smtp_ssl else 25
    a.states = {s.strip() for s in a.states.split(",") if s.strip()}
    return a


def summary(alert):
    text = "igny8_ai: provider %s is %s (was %s)" % (
        alert.get("provider", "?"), alert.get("state", "?"), alert.get("previous_state", "?"))
    if alert.get("code") and alert.get("code") != "ok":
        text += ", %s" % alert["code"]
    if alert.get("consecutive_failures"):
        text += ", %s failures in a row" % alert["consecutive_failures"]
    return text


def describe(e):
    """An exception for the log: its class, and its text when it has one
    (http.client.RemoteDisconnected's says little without the class)."""
    text = str(e).strip()
    return "%s: %s" % (type(e).__name__, text) if text else type(e).__name__


def send_webhook(args, alert):
    # "text" makes it readable as is in Slack- and Mattermost-style hooks;
    # "alert" is the payload as the database sent it
    body = json.dumps({"text": summary(alert), "alert": alert}).encode()
    req = urllib.request.Request(args.webhook, data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": "igny8-alert-listener"})
    # Any failure counts, not only URLError and OSError: a reply that is
    # not HTTP (a broken proxy) raises http.client.HTTPException
    # (BadStatusLine, LineTooLong, IncompleteRead), which would otherwise
    # end the listener and lose every later alert.  Exception, not
    # BaseException: KeyboardInterrupt and SystemExit (SIGTERM) still stop it.
    for attempt in range(3):
        try:
            with urllib.request.urlopen(req, timeout=args.webhook_timeout) as r:
                r.read()
            return True
        except Exception as e:
            log.warning("webhook POST failed (attempt %d of 3): %s", attempt + 1, describe(e))
            if attempt < 2:
                time.sleep(2 ** attempt)
    log.warning("alert not sent to the webhook: %s", summary(alert))
    return False


def send_mail(args, alert):
    msg = email.message.EmailMessage()
    msg["Subject"] = summary(alert)
    msg["From"] = args.mail_from
    msg["To"] = ", ".join(args.mail_to)
    msg.set_content(summary(alert) + "\n\n" + json.dumps(alert, indent=2) +
                    "\n\nSELECT * FROM igny8_service_status;  -- for the provider's last error\n")
    try:
        cls = smtplib.SMTP_SSL if args.smtp_ssl else smtplib.SMTP
        with cls(args.smtp_host, args.smtp_port, timeout=30) as s:
            if args.smtp_starttls:
                s.starttls()
            if args.smtp_user:
                s.login(args.smtp_user, os.environ.get("SMTP_PASSWORD", ""))
            s.send_message(msg)
        return True
    except Exception as e:      # as for the webhook: any failure, logged
        log.warning("mail failed: %s", describe(e))
        return False


def handle(args, payload):
    try:
        alert = json.loads(payload)
        if not isinstance(alert, dict):
            raise ValueError("not an object")
    except ValueError as e:
        log.warning("ignored a payload that is not a JSON object (%s): %.200s", e, payload)
        return False
    # a recovery: the end of a down that was alerted on
    recovery = (args.recoveries and alert.get("previous_state") == "down"
                and alert.get("state") != "down" and "down" in args.states)
    if alert.get("state") not in args.states and not recovery:
        log.info("not alerting on state %s: %s", alert.get("state"), summary(alert))
        return False
    log.info("%s", summary(alert))
    if args.webhook:
        send_webhook(args, alert)
    if args.smtp_host:
        send_mail(args, alert)
    return True


def connect(args):
    conn = psycopg2.connect(args.dsn, application_name="igny8-alert-listener",
                            keepalives=1, keepalives_idle=30, keepalives_interval=10,
                            keepalives_count=3)
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    with conn.cursor() as cur:
        cur.execute("LISTEN " + CHANNEL)
    return conn


def run(args):
    sent = 0
    delay = 1.0
    first = True
    while True:
        try:
            conn = connect(args)
        except psycopg2.Error as e:
            log.warning("cannot connect (%s); again in %.0f s", str(e).strip(), delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
            continue
        log.info("listening on %s%s", CHANNEL,
                 "" if first else " again (alerts sent while disconnected are lost: "
                                  "see igny8_service_status)")
        first = False
        delay = 1.0
        try:
            while True:
                ready, _, _ = select.select([conn], [], [], args.keepalive)
                if not ready:
                    with conn.cursor() as cur:   # a silent, dead connection shows here
                        cur.execute("SELECT 1")
                    continue
                conn.poll()
                while conn.notifies:
                    n = conn.notifies.pop(0)
                    if n.channel != CHANNEL:
                        continue
                    if handle(args, n.payload):
                        sent += 1
                        if args.max_alerts and sent >= args.max_alerts:
                            conn.close()
                            return 0
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            log.warning("connection lost (%s); reconnecting", str(e).strip())
            try:
                conn.close()
            except psycopg2.Error:
                pass
            time.sleep(delay)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
