#!/usr/bin/env python3
"""
A raw HTTP/1.1 server for test/suites/http_client: it answers Ollama's
/api/chat with a fixed reply, framed in the ways a real server or a
mis-pointed tunnel may frame it, chosen by the first segment of the
request's path (a provider's base_url of http://127.0.0.1:PORT/<case>):

  length      Content-Length, kept alive (also "next" and "fresh", to tell
              the calls of one check apart in the log)
  chunked     chunked transfer coding, odd chunk sizes, an extension, a
              trailer, sent in pieces
  interim     "100 Continue" and "103 Early Hints" before the answer
  http10      HTTP/1.0, no length: the body ends with the connection
  stale       the first "stale" request on a connection is answered and
              the connection kept; the next one on it is read and the
              connection closed without an answer (a server that closed
              an idle connection as the request came)
  slowstale   as stale, but the connection is closed 1.5 s after the
              request came (longer than the test's connect timeout)
  bytewise    the head sent one byte at a time
  partial     Content-Length 100 bytes more than the body, then closed
  big         Content-Length of 100,000,000 bytes, then nothing for 2 s
  twolengths  two different Content-Length headers
  ssh         an SSH server's banner (a tunnel to the wrong port)
  busy        503 with retry-after
  badchunk    a chunked body whose second chunk size is not hexadecimal
  slow        the answer after 3 s
  idleclose   the answer, kept alive, and the connection closed 0.2 s later
              (a server's idle timeout)
  gate        the answer, kept alive, once three "gate" requests are in
              (three calls in flight at once, on three connections); a
              503 if the three are not in within 10 s

A second listener, on [::1] only (no 127.0.0.1), answers the same way:
"localhost" must reach it through its second address.  Its port is one
that nothing holds on 127.0.0.1, and a socket bound there (not listening)
keeps it so: a connection to 127.0.0.1 on that port is refused, never
answered by another test's server that happens to listen on the same
number.  Its port goes to PORT_FILE.v6, or "none" when this machine has
no IPv6.

Writes its port to PORT_FILE, and one JSON line per request to LOG_FILE:
the case, the connection's number, the request's number on it, the
request line, the header names in order, Host, Content-Length and the
body's length; and one per connection when it ends, with the case
"(closed)" and "by": "client" (the client closed or reset it) or "server".
"""
import json
import os
import socket
import sys
import threading
import time

REPLY = "hello from the raw server"
ANSWER = json.dumps({
    "model": "qwen3:32b", "created_at": "2026-12-03T00:00:00Z",
    "message": {"role": "assistant", "content": REPLY},
    "done": True, "done_reason": "stop",
    "prompt_eval_count": 3, "eval_count": 5}).encode()
HEAD = b"Content-Type: application/json; charset=utf-8\r\n"

lock = threading.Lock()
connections = 0
gate = threading.Barrier(3)


def log(path, record):
    with lock:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_request(conn, buf):
    """(request line, [(name, value)], body, rest of buf) or None at EOF."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1))
               for line in lines[1:]]
    length = 0
    for name, value in headers:
        if name.lower() == "content-length":
            length = int(value)
    while len(buf) < length:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    return lines[0], headers, buf[:length], buf[length:]


def send_pieces(conn, data, size, pause):
    for i in range(0, len(data), size):
        conn.sendall(data[i:i + size])
        time.sleep(pause)


def handle(conn, number, log_path):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    index = 0
    stale = {}              # requests of "stale" and of "slowstale" here
    by = "server"
    try:
        while True:
            got = read_request(conn, buf)
            if got is None:
                by = "client"
                return
            line, headers, body, buf = got
            path = line.split(" ")[1] if line.count(" ") >= 2 else ""
            case = path.split("/")[1] if path.count("/") >= 2 else ""
            values = {n.lower(): v for n, v in headers}
            log(log_path, {
                "case": case, "connection": number, "index": index,
                "line": line, "names": [n.lower() for n, _ in headers],
                "headers": [[n.lower(), v] for n, v in headers],
                "host": values.get("host"),
                "content_length": values.get("content-length"),
                "body_length": len(body)})
            index += 1
            length = b"Content-Length: %d\r\n" % len(ANSWER)
            if case in ("length", "next", "fresh"):
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + HEAD + length +
                             b"\r\n" + ANSWER)
            elif case == "chunked":
                out = b"HTTP/1.1 200 OK\r\n" + HEAD + \
                    b"Transfer-Encoding: chunked\r\n\r\n"
                for i in range(0, len(ANSWER), 7):
                    piece = ANSWER[i:i + 7]
                    ext = b";step=%d" % i if i % 2 else b""
                    out += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
                out += b"0\r\nX-Trailer: done\r\n\r\n"
                send_pieces(conn, out, 50, 0.001)
            elif case == "interim":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n"
                             b"HTTP/1.1 103 Early Hints\r\n"
                             b"Link: </style.css>; rel=preload\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\n" + HEAD + length +
                             b"\r\n" + ANSWER)
            elif case == "http10":
                conn.sendall(b"HTTP/1.0 200 OK\r\n" + HEAD + b"\r\n" +
                             ANSWER)
                return
            elif case in ("stale", "slowstale"):
                stale[case] = stale.get(case, 0) + 1
                if stale[case] > 1:
                    if case == "slowstale":
                        time.sleep(1.5)
                    return          # read, then closed unanswered
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + HEAD + length +
                             b"\r\n" + ANSWER)
            elif case == "bytewise":
                send_pieces(conn, b"HTTP/1.1 200 OK\r\n" + HEAD + length +
                            b"\r\n", 1, 0.001)
                conn.sendall(ANSWER)
            elif case == "partial":
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + HEAD +
                             b"Content-Length: %d\r\n\r\n" %
                             (len(ANSWER) + 100) + ANSWER)
                return
            elif case == "big":
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + HEAD +
                             b"Content-Length: 100000000\r\n\r\n" +
                             ANSWER[:10])
                time.sleep(2)
                return
            elif case == "twolengths":
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + HEAD + length +
                             b"Content-Length: %d\r\n\r\n" %
                             (len(ANSWER) + 1) + ANSWER + b" ")
                return
            elif case == "ssh":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
                time.sleep(0.2)
                return
            elif case == "badchunk":
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + HEAD +
                             b"Transfer-Encoding: chunked\r\n\r\n" +
                             b"%x\r\n%s\r\nzz\r\n" % (10, ANSWER[:10]))
                time.sleep(0.2)
                return
            elif case == "slow":
                time.sleep(3)
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + HEAD + length +
                             b"\r\n" + ANSWER)
            elif case == "idleclose":
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + HEAD + length +
                             b"\r\n" + ANSWER)
                time.sleep(0.2)
                return
            elif case == "gate":
                try:
                    gate.wait(timeout=10)
                    conn.sendall(b"HTTP/1.1 200 OK\r\n" + HEAD + length +
                                 b"\r\n" + ANSWER)
                except threading.BrokenBarrierError:
                    gate.reset()
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\n"
                                 b"Content-Length: 0\r\n\r\n")
            elif case == "busy":
                error = b'{"error":"server busy, please try again"}'
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\n" + HEAD +
                             b"retry-after: 0\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(error) +
                             error)
            else:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\n"
                             b"Content-Length: 0\r\n\r\n")
    except OSError:
        by = "client"
    finally:
        conn.close()
        log(log_path, {"case": "(closed)", "connection": number, "by": by})


def serve(srv, log_path):
    global connections
    while True:
        conn, _ = srv.accept()
        with lock:
            connections += 1
            number = connections
        threading.Thread(target=handle, args=(conn, number, log_path),
                         daemon=True).start()


def write_port(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def v6_listener():
    """A listener on [::1] only, and a socket bound (not listening) to
    127.0.0.1 on the same port, or OSError when there is no IPv6."""
    for _ in range(100):
        srv6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        srv6.bind(("::1", 0))
        hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            hold.bind(("127.0.0.1", srv6.getsockname()[1]))
        except OSError:
            # that number is taken on 127.0.0.1: another one
            hold.close()
            srv6.close()
            continue
        srv6.listen(128)
        return srv6, hold
    raise RuntimeError("no port free on both [::1] and 127.0.0.1")


def main():
    port_file, log_path = sys.argv[1], sys.argv[2]
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    try:
        # hold stays bound as long as main runs
        srv6, hold = v6_listener()
    except OSError:
        write_port(port_file + ".v6", "none")
    else:
        threading.Thread(target=serve, args=(srv6, log_path),
                         daemon=True).start()
        write_port(port_file + ".v6", str(srv6.getsockname()[1]))
    write_port(port_file, str(srv.getsockname()[1]))
    serve(srv, log_path)


if __name__ == "__main__":
    main()
