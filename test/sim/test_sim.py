#!/usr/bin/python3
"""
Self-test of the igny8 backend simulator, through real HTTP.

    cd /work/main && /usr/bin/python3 -m unittest test/sim/test_sim.py

One simulator is started for the module (plus short-lived ones for the
signal tests); every test resets it first.
"""

import atexit
import base64
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import uuid
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SIM = os.path.join(HERE, "igny8_sim.py")
SIMCTL = os.path.join(HERE, "simctl.py")
PYTHON = "/usr/bin/python3"

# Non-default keys, to check that the environment is honoured.
OPENAI_KEY = "sk-test-openai-unittest-4242"
ANTHROPIC_KEY = "sk-ant-test-unittest-4242"

REPLY = "Clouds are visible masses of water droplets."

SIM_PROC = None
PORTS = None
STATE_DIR = None
READY_LINE = None


def die_with_parent():
    """In a child: SIGTERM when the test process dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG,
                                                signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def start_simulator(state_dir, extra=()):
    """Start a simulator; return (process, ports, first stdout line)."""
    env = dict(os.environ, IGNY8_SIM_OPENAI_KEY=OPENAI_KEY,
               IGNY8_SIM_ANTHROPIC_KEY=ANTHROPIC_KEY)
    proc = subprocess.Popen([PYTHON, SIM, "--state-dir", state_dir] +
                            list(extra), env=env, stdout=subprocess.PIPE,
                            text=True, preexec_fn=die_with_parent)
    path = os.path.join(state_dir, "ports.json")
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("simulator did not start")
        time.sleep(0.02)
    with open(path) as f:
        ports = json.load(f)
    return proc, ports, proc.stdout.readline()


def setUpModule():
    global SIM_PROC, PORTS, STATE_DIR, READY_LINE
    # SIGTERM ends the test like Ctrl-C, so that the simulator is stopped
    # and the state directory removed (at exit at the latest)
    signal.signal(signal.SIGTERM, interrupt)
    atexit.register(tearDownModule)
    STATE_DIR = tempfile.mkdtemp(prefix="igny8_sim_test_")
    SIM_PROC, PORTS, READY_LINE = start_simulator(STATE_DIR)


def interrupt(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def tearDownModule():
    """Stop the module's simulator and remove its state (once)."""
    global SIM_PROC
    proc, SIM_PROC = SIM_PROC, None
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    if STATE_DIR is not None:
        shutil.rmtree(STATE_DIR, ignore_errors=True)


# --------------------------------------------------------------------------
# Client helpers
# --------------------------------------------------------------------------

class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers          # lower-case names
        self.body = body

    def json(self):
        return json.loads(self.body)

    def lines(self):
        return [json.loads(x) for x in self.body.decode().splitlines() if x]

    def sse_data(self):
        """The data: payloads of an SSE body, decoded unless [DONE]."""
        out = []
        for line in self.body.decode().splitlines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
        return out


def call(role, method, path, body=None, headers=None, conn=None,
         timeout=10):
    """One HTTP request; BODY is a dict (sent as JSON), bytes or None."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", PORTS[role],
                                          timeout=timeout)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                     data)
    finally:
        if own:
            conn.close()


def control(method, path, body=None):
    r = call("control", method, path, body)
    return r.status, r.json()


def ollama_chat(content, model="qwen3:32b", **extra):
    body = {"model": model, "stream": False,
            "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return call("ollama", "POST", "/api/chat", body)


def openai_chat(content, key=OPENAI_KEY, model="gpt-4", **extra):
    body = {"model": model, "messages": [{"role": "user",
                                          "content": content}]}
    body.update(extra)
    headers = {"Authorization": "Bearer " + key} if key is not None else {}
    return call("openai", "POST", "/v1/chat/completions", body, headers)


def openai_image(key=OPENAI_KEY, **body):
    """POST /v1/images/generations; BODY defaults to prompt "a cloud"."""
    body.setdefault("prompt", "a cloud")
    headers = {"Authorization": "Bearer " + key} if key is not None else {}
    return call("openai", "POST", "/v1/images/generations", body, headers)


def anthropic_msg(content, key=ANTHROPIC_KEY, version="2023-06-01",
                  **extra):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100,
            "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    headers = {}
    if key is not None:
        headers["x-api-key"] = key
    if version is not None:
        headers["anthropic-version"] = version
    return call("anthropic", "POST", "/v1/messages", body, headers)


def raw_request(role, path, body, extra_headers=""):
    """Send a POST by hand on a raw socket and return the socket."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", PORTS[role]), timeout=10)
    sock.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  "application/json\r\nContent-Length: %d\r\n%s\r\n"
                  % (path, len(payload), extra_headers)).encode() + payload)
    return sock


def read_raw(sock):
    """Read head and whatever body arrives until EOF or reset."""
    data = b""
    reset = False
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            reset = True
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body, reset


def simctl(*args):
    out = subprocess.run([PYTHON, SIMCTL, "--state-dir", STATE_DIR] +
                         list(args), capture_output=True, text=True,
                         timeout=30)
    return out.returncode, out.stdout, out.stderr


def png_parse(data):
    """
    Walk a PNG: signature, chunk CRCs, IHDR, the inflated IDAT stream
    (8-bit RGB rows, each a filter byte and 3 bytes a pixel).  Return
    {"width", "height", "chunks": [types], "text": {keyword: text}}, or
    None when anything is wrong.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos, idat, chunks, text, ihdr = 8, [], [], {}, None
    while pos + 12 <= len(data):
        length, = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        if len(chunk) != length or pos + 12 + length > len(data):
            return None
        crc, = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + chunk) & 0xFFFFFFFF != crc:
            return None
        chunks.append(kind.decode("latin-1"))
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"tEXt":
            key, _, value = chunk.partition(b"\x00")
            text[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
        if kind == b"IEND":
            break
    if pos != len(data) or not chunks or chunks[0] != "IHDR" or \
            chunks[-1] != "IEND" or ihdr is None or \
            ihdr[2:] != (8, 2, 0, 0, 0):
        return None
    width, height = ihdr[:2]
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        return None
    row = 3 * width + 1
    if len(raw) != height * row or \
            any(raw[i] > 4 for i in range(0, len(raw), row)):
        return None
    return {"width": width, "height": height, "chunks": chunks, "text": text}


def png_is_valid(data, width=1, height=1):
    """A whole valid RGB PNG of WIDTH x HEIGHT."""
    info = png_parse(data)
    return info is not None and (info["width"], info["height"]) == \
        (width, height)


class SimTestCase(unittest.TestCase):
    def setUp(self):
        for role in ("ollama", "openai", "anthropic", "comfyui"):
            control("POST", "/up/" + role)
        status, _ = control("POST", "/reset")
        self.assertEqual(status, 200)

    def log(self, **filters):
        query = "&".join("%s=%s" % kv for kv in filters.items())
        return control("GET", "/log?" + query)[1]


# --------------------------------------------------------------------------
# Start-up
# --------------------------------------------------------------------------

class TestStartup(SimTestCase):
    def test_ports_file(self):
        self.assertEqual(set(PORTS), {"ollama", "openai", "anthropic",
                                      "comfyui", "control", "dead", "pid"})
        self.assertEqual(PORTS["pid"], SIM_PROC.pid)
        self.assertEqual(len({PORTS[r] for r in PORTS if r != "pid"}), 6)
        self.assertTrue(READY_LINE.startswith("igny8_sim: ready "))

    def test_dead_port_refuses(self):
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", PORTS["dead"]), timeout=2)

    def test_accepted_connections_nodelay(self):
        # As Ollama's and ComfyUI's servers do: without TCP_NODELAY a
        # kept-alive connection's answer waits ~40 ms for a delayed ACK.
        import importlib.util
        spec = importlib.util.spec_from_file_location("igny8_sim", SIM)
        sim = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sim)
        server = sim.SimServer(("127.0.0.1", 0), sim.SimHandler, None,
                               "ollama")
        client = None
        request = None
        try:
            client = socket.create_connection(server.server_address,
                                              timeout=5)
            request, _ = server.get_request()
            self.assertNotEqual(request.getsockopt(socket.IPPROTO_TCP,
                                                   socket.TCP_NODELAY), 0)
        finally:
            for s in (request, client):
                if s is not None:
                    s.close()
            server.server_close()

    def test_signals_stop_cleanly(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            state = tempfile.mkdtemp(prefix="igny8_sim_sig_")
            pidfile = os.path.join(state, "sim.pid")
            try:
                proc, ports, _ = start_simulator(state,
                                                 ["--pidfile", pidfile])
                with open(pidfile) as f:
                    self.assertEqual(int(f.read()), proc.pid)
                self.assertEqual(call_port(ports["ollama"], "/").status, 200)
                proc.send_signal(sig)
                self.assertEqual(proc.wait(10), 0)
                proc.stdout.close()
                self.assertFalse(os.path.exists(os.path.join(state,
                                                             "ports.json")))
                self.assertFalse(os.path.exists(pidfile))
            finally:
                shutil.rmtree(state, ignore_errors=True)


def call_port(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return Reply(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Ollama
# --------------------------------------------------------------------------

class TestOllama(SimTestCase):
    def test_root_and_head(self):
        r = call("ollama", "GET", "/")
        self.assertEqual((r.status, r.body), (200, b"Ollama is running"))
        r = call("ollama", "HEAD", "/")
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertEqual(r.headers["content-length"], "17")

    def test_version_tags_ps(self):
        self.assertIn("version", call("ollama", "GET", "/api/version").json())
        self.assertEqual(call("ollama", "HEAD", "/api/version").status, 200)
        models = call("ollama", "GET", "/api/tags").json()["models"]
        self.assertEqual([m["name"] for m in models],
                         ["qwen3:32b", "qwen3:30b-a3b", "qwen3:14b",
                          "qwen3:8b"])
        for key in ("name", "model", "modified_at", "size", "digest"):
            self.assertIn(key, models[0])
        self.assertEqual(set(models[0]["details"]),
                         {"parent_model", "format", "family", "families",
                          "parameter_size", "quantization_level"})
        self.assertEqual(call("ollama", "GET", "/api/ps").json(),
                         {"models": []})
        ollama_chat("hi")
        ps = call("ollama", "GET", "/api/ps").json()["models"]
        self.assertEqual([m["name"] for m in ps], ["qwen3:32b"])
        for key in ("expires_at", "size_vram", "context_length", "details"):
            self.assertIn(key, ps[0])

    def test_chat_non_streaming(self):
        r = ollama_chat("Tell me about clouds")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith(
            "application/json"))
        body = r.json()
        self.assertEqual(body["model"], "qwen3:32b")
        self.assertEqual(body["message"],
                         {"role": "assistant",
                          "content": "ollama qwen3:32b: " + REPLY})
        self.assertIs(body["done"], True)
        self.assertEqual(body["done_reason"], "stop")
        self.assertEqual(body["prompt_eval_count"], 4)
        self.assertEqual(body["eval_count"], 9)
        for key in ("created_at", "total_duration", "load_duration",
                    "prompt_eval_duration", "eval_duration"):
            self.assertIn(key, body)
        self.assertIsInstance(body["eval_duration"], int)

    def test_zero_counters_omitted(self):
        body = ollama_chat("[[sim any:tag=z]]").json()
        self.assertNotIn("prompt_eval_count", body)
        self.assertNotIn("prompt_eval_duration", body)

    def test_chat_streams_by_default(self):
        r = call("ollama", "POST", "/api/chat", {
            "model": "qwen3:14b",
            "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual(r.headers["content-type"], "application/x-ndjson")
        lines = r.lines()
        self.assertGreater(len(lines), 3)
        self.assertTrue(all(x["done"] is False for x in lines[:-1]))
        self.assertIs(lines[-1]["done"], True)
        self.assertEqual(lines[-1]["done_reason"], "stop")
        self.assertEqual(lines[-1]["message"]["content"], "")
        self.assertEqual(lines[-1]["eval_count"], 9)
        text = "".join(x["message"]["content"] for x in lines)
        self.assertEqual(text, "ollama qwen3:14b: " + REPLY)

    def test_num_predict_truncates(self):
        body = ollama_chat("hi", options={"num_predict": 3}).json()
        self.assertEqual(body["message"]["content"],
                         "ollama qwen3:32b: Clouds")
        self.assertEqual(body["done_reason"], "length")
        self.assertEqual(body["eval_count"], 3)

    def test_model_errors(self):
        r = ollama_chat("hi", model="llama3:70b")
        self.assertEqual((r.status, r.json()),
                         (404, {"error": "model 'llama3:70b' not found"}))
        r = call("ollama", "POST", "/api/chat", b"{not json")
        self.assertEqual(r.status, 400)
        self.assertEqual(list(r.json()), ["error"])
        r = call("ollama", "POST", "/api/chat", {"messages": []})
        self.assertEqual((r.status, r.json()),
                         (400, {"error": "model is required"}))
        r = call("ollama", "POST", "/api/chat", b"")
        self.assertEqual(r.json(), {"error": "missing request body"})

    def test_untagged_model_means_latest(self):
        control("POST", "/config/ollama", {"models": ["llama3",
                                                      "qwen3:8b"]})
        self.assertEqual(ollama_chat("hi", model="llama3").status, 200)
        self.assertEqual(ollama_chat("hi", model="llama3:latest").status,
                         200)
        self.assertEqual(ollama_chat("hi", model="qwen3:32b").status, 404)
        self.assertEqual(ollama_chat("hi", model="qwen3").status, 404)

    def test_thinking_shapes(self):
        answer = "ollama qwen3:32b: " + REPLY
        msg = ollama_chat("hi [[sim ollama:think=field]]").json()["message"]
        self.assertEqual(msg["thinking"], "Let me think about clouds.")
        self.assertEqual(msg["content"], answer)
        msg = ollama_chat("hi [[sim ollama:think=inline]]").json()["message"]
        self.assertEqual(msg["content"], "<think>Let me think about clouds."
                         "</think>\n\n" + answer)
        self.assertNotIn("thinking", msg)
        msg = ollama_chat("hi [[sim ollama:think=empty]]").json()["message"]
        self.assertEqual(msg["content"], "<think>\n\n</think>\n\n" + answer)
        msg = ollama_chat("hi [[sim ollama:think=none]]").json()["message"]
        self.assertEqual(msg, {"role": "assistant", "content": answer})
        msg = ollama_chat("hi [[sim ollama:think=field "
                          "thinking_text=\\u2014_why]]").json()["message"]
        self.assertEqual(msg["thinking"], "\u2014 why")

    def test_thinking_streamed(self):
        r = call("ollama", "POST", "/api/chat", {
            "model": "qwen3:32b", "think": True,
            "messages": [{"role": "user",
                          "content": "[[sim ollama:think=field]]"}]})
        lines = r.lines()
        thinking = "".join(x["message"].get("thinking", "") for x in lines)
        content = "".join(x["message"]["content"] for x in lines)
        self.assertEqual(thinking, "Let me think about clouds.")
        self.assertEqual(content, "ollama qwen3:32b: " + REPLY)

    def test_no_thinking_support(self):
        err = {"error": "\"qwen3:32b\" does not support thinking"}
        r = ollama_chat("hi [[sim ollama:nothinksupport]]", think=True)
        self.assertEqual((r.status, r.json()), (400, err))
        r = ollama_chat("hi [[sim ollama:nothinksupport]]", think="high")
        self.assertEqual(r.status, 400)
        r = ollama_chat("hi [[sim ollama:nothinksupport]]", think=False)
        self.assertEqual(r.status, 200)
        control("POST", "/config/ollama", {"no_think_models": ["qwen3:8b"]})
        r = ollama_chat("hi", model="qwen3:8b", think=True)
        self.assertEqual(r.json(),
                         {"error": "\"qwen3:8b\" does not support thinking"})
        self.assertEqual(ollama_chat("hi", think=True).status, 200)

    def test_generate(self):
        r = call("ollama", "POST", "/api/generate", {
            "model": "qwen3:8b", "prompt": "Why is the sky blue?",
            "stream": False})
        body = r.json()
        self.assertEqual(body["response"], "ollama qwen3:8b: " + REPLY)
        self.assertEqual(body["prompt_eval_count"], 5)
        self.assertIsInstance(body["context"], list)
        lines = call("ollama", "POST", "/api/generate", {
            "model": "qwen3:8b", "prompt": "hi"}).lines()
        self.assertEqual("".join(x["response"] for x in lines),
                         "ollama qwen3:8b: " + REPLY)
        load = call("ollama", "POST", "/api/generate",
                    {"model": "qwen3:8b"}).json()
        self.assertEqual(load["done_reason"], "load")
        unload = call("ollama", "POST", "/api/generate",
                      {"model": "qwen3:8b", "keep_alive": 0}).json()
        self.assertEqual(unload["done_reason"], "unload")

    def test_status_directives(self):
        for status, message in (
                (503, "server busy, please try again.  maximum pending "
                      "requests exceeded"),
                (404, "model 'qwen3:32b' not found")):
            r = ollama_chat("hi [[sim ollama:status=%d]]" % status)
            self.assertEqual((r.status, r.json()),
                             (status, {"error": message}))
        r = ollama_chat("hi [[sim ollama:status=500]]")
        self.assertEqual(r.status, 500)
        self.assertIn("llama runner process has terminated",
                      r.json()["error"])

    def test_openai_compatible_layer(self):
        r = call("ollama", "POST", "/v1/chat/completions", {
            "model": "qwen3:30b-a3b",
            "messages": [{"role": "user", "content": "two words"}]},
            {"Authorization": "Bearer anything"})
        body = r.json()
        self.assertTrue(body["id"].startswith("chatcmpl-"))
        self.assertEqual(body["object"], "chat.completion")
        self.assertEqual(body["system_fingerprint"], "fp_ollama")
        self.assertEqual(body["choices"][0]["message"]["content"],
                         "ollama qwen3:30b-a3b: " + REPLY)
        self.assertEqual(body["choices"][0]["finish_reason"], "stop")
        self.assertEqual(body["usage"], {"prompt_tokens": 2,
                                         "completion_tokens": 9,
                                         "total_tokens": 11})
        r = call("ollama", "POST", "/v1/chat/completions", {
            "model": "nope", "messages": [{"role": "user", "content": "x"}]})
        self.assertEqual((r.status, r.json()), (404, {"error": {
            "message": "model 'nope' not found", "type": "not_found_error",
            "param": None, "code": None}}))
        r = call("ollama", "POST", "/v1/chat/completions", {
            "model": "qwen3:8b", "max_tokens": 2,
            "messages": [{"role": "user",
                          "content": "[[sim ollama:think=field]]"}]})
        choice = r.json()["choices"][0]
        self.assertEqual(choice["finish_reason"], "length")
        self.assertEqual(choice["message"]["reasoning"],
                         "Let me think about clouds.")
        data = call("ollama", "GET", "/v1/models").json()
        self.assertEqual(data["object"], "list")
        self.assertEqual(data["data"][0], {"id": "qwen3:32b",
                                           "object": "model",
                                           "created": 1735689600,
                                           "owned_by": "library"})

    def test_openai_compatible_stream(self):
        r = call("ollama", "POST", "/v1/chat/completions", {
            "model": "qwen3:8b", "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]})
        self.assertTrue(r.headers["content-type"].startswith(
            "text/event-stream"))
        events = r.sse_data()
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(events[-2]["usage"]["completion_tokens"], 9)
        text = "".join(e["choices"][0]["delta"].get("content", "")
                       for e in events[:-2])
        self.assertEqual(text, "ollama qwen3:8b: " + REPLY)


# --------------------------------------------------------------------------
# OpenAI
# --------------------------------------------------------------------------

class TestOpenAI(SimTestCase):
    def test_wrong_key_echoed_in_full(self):
        r = openai_chat("hi", key="sk-wrong-secret-777")
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json(), {"error": {
            "message": "Incorrect API key provided: sk-wrong-secret-777. "
                       "You can find your API key at "
                       "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error", "param": None,
            "code": "invalid_api_key"}})
        r = openai_chat("hi", key=None)
        self.assertEqual(r.status, 401)
        self.assertEqual(set(r.json()["error"]),
                         {"message", "type", "param", "code"})
        self.assertEqual(r.json()["error"]["code"], "invalid_api_key")

    def test_completion(self):
        r = openai_chat("Write about clouds", model="gpt-4o-mini")
        self.assertEqual(r.status, 200)
        self.assertIn("x-request-id", r.headers)
        self.assertIn("x-ratelimit-remaining-requests", r.headers)
        body = r.json()
        self.assertEqual(body["object"], "chat.completion")
        self.assertEqual(body["model"], "gpt-4o-mini")
        choice = body["choices"][0]
        self.assertEqual(choice["message"]["content"],
                         "openai gpt-4o-mini: " + REPLY)
        self.assertIsNone(choice["message"]["refusal"])
        self.assertEqual(choice["finish_reason"], "stop")
        self.assertEqual(body["usage"]["prompt_tokens"], 3)
        self.assertEqual(body["usage"]["completion_tokens"], 9)
        self.assertEqual(body["usage"]["total_tokens"], 12)
        self.assertIn("completion_tokens_details", body["usage"])

    def test_max_tokens(self):
        for field in ("max_tokens", "max_completion_tokens"):
            choice = openai_chat("hi", **{field: 4}).json()["choices"][0]
            self.assertEqual(choice["message"]["content"],
                             "openai gpt-4: Clouds are")
            self.assertEqual(choice["finish_reason"], "length")
        r = openai_chat("hi", max_tokens=4, max_completion_tokens=4)
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")

    def test_validation(self):
        auth = {"Authorization": "Bearer " + OPENAI_KEY}
        r = call("openai", "POST", "/v1/chat/completions",
                 {"messages": [{"role": "user", "content": "x"}]}, auth)
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")
        r = call("openai", "POST", "/v1/chat/completions",
                 {"model": "gpt-4"}, auth)
        self.assertEqual((r.status, r.json()["error"]["param"]),
                         (400, "messages"))
        r = call("openai", "POST", "/v1/chat/completions", b"{", auth)
        self.assertEqual(r.status, 400)
        r = call("openai", "GET", "/v1/nothing", None, auth)
        self.assertEqual(r.status, 404)
        self.assertEqual(set(r.json()["error"]),
                         {"message", "type", "param", "code"})

    def test_rate_limit(self):
        r = openai_chat("hi [[sim openai:status=429 retry_after=2]]")
        self.assertEqual(r.status, 429)
        self.assertEqual(r.headers["retry-after"], "2")
        self.assertEqual(r.headers["x-ratelimit-remaining-requests"], "0")
        self.assertEqual(r.headers["x-ratelimit-reset-requests"], "2s")
        err = r.json()["error"]
        self.assertEqual((err["type"], err["code"]),
                         ("requests", "rate_limit_exceeded"))
        self.assertIn("Please try again in 2s", err["message"])

    def test_quota_and_server_errors(self):
        err = openai_chat("[[sim openai:status=429 quota]]").json()["error"]
        self.assertEqual((err["type"], err["code"]),
                         ("insufficient_quota", "insufficient_quota"))
        err = openai_chat("[[sim openai:status=400 quota]]").json()["error"]
        self.assertEqual((err["type"], err["code"], err["message"]),
                         ("invalid_request_error", "billing_hard_limit_reached",
                          "Billing hard limit has been reached"))
        for status, type_ in ((500, "server_error"), (503, "server_error"),
                              (400, "invalid_request_error")):
            r = openai_chat("[[sim openai:status=%d]]" % status)
            self.assertEqual(r.status, status)
            self.assertEqual(r.json()["error"]["type"], type_)
            self.assertEqual(set(r.json()["error"]),
                             {"message", "type", "param", "code"})
        r = openai_chat("[[sim openai:status=404]]", model="gpt-9")
        self.assertEqual(r.json()["error"]["code"], "model_not_found")
        r = openai_chat("[[sim openai:status=401]]")
        self.assertIn(OPENAI_KEY, r.json()["error"]["message"])

    def test_models(self):
        r = call("openai", "GET", "/v1/models", None,
                 {"Authorization": "Bearer " + OPENAI_KEY})
        data = r.json()
        self.assertEqual(data["object"], "list")
        self.assertIn("gpt-4", [m["id"] for m in data["data"]])
        self.assertEqual(call("openai", "GET", "/v1/models").status, 401)

    def test_images(self):
        auth = {"Authorization": "Bearer " + OPENAI_KEY}
        r = call("openai", "POST", "/v1/images/generations", {
            "model": "dall-e-3", "prompt": "a cloud",
            "response_format": "b64_json"}, auth)
        body = r.json()
        self.assertEqual(len(body["data"]), 1)
        self.assertTrue(png_is_valid(base64.b64decode(
            body["data"][0]["b64_json"]), 1024, 1024))
        self.assertEqual(body["data"][0]["revised_prompt"], "a cloud")
        r = call("openai", "POST", "/v1/images/generations", {
            "model": "dall-e-2", "prompt": "a cloud"}, auth)
        url = r.json()["data"][0]["url"]
        path = url.split("%d" % PORTS["openai"], 1)[1]
        image = call("openai", "GET", path)
        self.assertEqual(image.headers["content-type"], "image/png")
        self.assertTrue(png_is_valid(image.body, 1024, 1024))
        r = call("openai", "POST", "/v1/images/generations", {
            "model": "gpt-image-1", "prompt": "a cloud"}, auth)
        self.assertIn("b64_json", r.json()["data"][0])
        r = call("openai", "POST", "/v1/images/generations", {
            "model": "gpt-image-1", "prompt": "x",
            "response_format": "b64_json"}, auth)
        self.assertEqual(r.status, 400)

    def test_image_sizes_per_model(self):
        def size_error(body, message):
            r = openai_image(**body)
            self.assertEqual(r.status, 400)
            self.assertEqual(r.json(), {"error": {
                "message": message, "type": "invalid_request_error",
                "param": "size", "code": "invalid_value"}})
        size_error({"model": "dall-e-2", "size": "1792x1024"},
                   "Invalid value: '1792x1024'. Supported values are: "
                   "'256x256', '512x512', and '1024x1024'.")
        size_error({"model": "dall-e-3", "size": "512x512"},
                   "Invalid value: '512x512'. Supported values are: "
                   "'1024x1024', '1024x1792', and '1792x1024'.")
        size_error({"model": "gpt-image-1", "size": "512x512"},
                   "Invalid value: '512x512'. Supported values are: "
                   "'1024x1024', '1024x1536', '1536x1024', and 'auto'.")
        # the default model is dall-e-2, whose sizes stop at 1024
        size_error({"size": "1024x1536"},
                   "Invalid value: '1024x1536'. Supported values are: "
                   "'256x256', '512x512', and '1024x1024'.")
        r = openai_image(model="gpt-image-1", size=1024)
        self.assertEqual(r.json()["error"]["code"], "invalid_type")
        for model, size in (("dall-e-2", "256x256"), ("dall-e-2", "512x512"),
                            ("dall-e-3", "1792x1024"),
                            ("dall-e-3", "1024x1792"),
                            ("gpt-image-1", "1536x1024"),
                            ("gpt-image-1", "1024x1536")):
            r = openai_image(model=model, size=size,
                             **({} if model.startswith("gpt") else
                                {"response_format": "b64_json"}))
            self.assertEqual(r.status, 200, (model, size))
            w, h = (int(v) for v in size.split("x"))
            self.assertTrue(png_is_valid(base64.b64decode(
                r.json()["data"][0]["b64_json"]), w, h), (model, size))
        # auto and the defaults make 1024x1024
        body = openai_image(model="gpt-image-1").json()
        self.assertEqual(body["size"], "1024x1024")
        self.assertTrue(png_is_valid(base64.b64decode(
            body["data"][0]["b64_json"]), 1024, 1024))

    def test_image_parameters(self):
        r = openai_image(model="dall-e-3", n=2)
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"], {
            "message": "Invalid 'n': integer above maximum value. Expected "
            "a value <= 1, but got 2 instead.",
            "type": "invalid_request_error", "param": "n",
            "code": "integer_above_max_value"})
        self.assertEqual(openai_image(n=11).json()["error"]["code"],
                         "integer_above_max_value")
        self.assertEqual(openai_image(n=0).json()["error"]["code"],
                         "integer_below_min_value")
        self.assertEqual(openai_image(n="2").json()["error"]["code"],
                         "invalid_type")
        r = openai_image(model="dall-e-3", quality="high")
        self.assertEqual(r.json()["error"]["message"],
                         "Invalid value: 'high'. Supported values are: "
                         "'standard' and 'hd'.")
        self.assertEqual(r.json()["error"]["param"], "quality")
        r = openai_image(model="gpt-image-1", quality="hd")
        self.assertEqual(r.json()["error"]["message"],
                         "Invalid value: 'hd'. Supported values are: 'low', "
                         "'medium', 'high', and 'auto'.")
        self.assertEqual(openai_image(model="dall-e-3", quality="hd",
                                      style="natural").status, 200)
        self.assertEqual(openai_image(model="dall-e-3",
                                      style="pastel").status, 400)
        r = openai_image(model="gpt-image-1", response_format="url")
        self.assertEqual((r.status, r.json()["error"]["param"]),
                         (400, "response_format"))
        self.assertEqual(openai_image(model="dall-e-2",
                                      response_format="png").status, 400)
        r = openai_image(model="sdxl")
        self.assertEqual((r.status, r.json()["error"]["param"]),
                         (400, "model"))
        r = openai_image(model="dall-e-2", prompt="x " * 600)
        self.assertEqual(r.json()["error"]["code"], "string_above_max_length")
        self.assertEqual(openai_image(key="sk-wrong").status, 401)
        r = openai_image(prompt="a cloud [[sim openai:status=429 "
                         "retry_after=2]]")
        self.assertEqual((r.status, r.headers["retry-after"]), (429, "2"))
        self.assertEqual(r.json()["error"]["code"], "rate_limit_exceeded")
        self.assertEqual(openai_image(
            prompt="[[sim openai:status=500]]").status, 500)

    def test_image_responses(self):
        # dall-e-2: urls by default, n distinct images, no revised_prompt
        body = openai_image(n=3, size="256x256").json()
        self.assertEqual(sorted(body), ["created", "data"])
        pictures = set()
        for item in body["data"]:
            self.assertEqual(list(item), ["url"])
            path = item["url"].split("%d" % PORTS["openai"], 1)[1]
            image = call("openai", "GET", path)
            self.assertEqual(image.status, 200)
            self.assertTrue(png_is_valid(image.body, 256, 256))
            pictures.add(image.body)
        self.assertEqual(len(pictures), 3)
        self.assertEqual(call("openai", "GET", "/images/img-none.png").status,
                         404)
        # dall-e-3: one image, revised_prompt without the directives
        body = openai_image(model="dall-e-3", prompt="a cloud [[sim "
                            "any:tag=im3]]").json()
        self.assertEqual(body["data"][0]["revised_prompt"], "a cloud")
        self.assertNotIn("usage", body)
        # gpt-image: b64 only, usage by quality and size, no revised_prompt
        body = openai_image(model="gpt-image-1", prompt="two words",
                            quality="low", size="1024x1536", n=2).json()
        self.assertEqual(list(body), ["created", "background", "data",
                                      "output_format", "quality", "size",
                                      "usage"])
        self.assertEqual([list(d) for d in body["data"]], [["b64_json"]] * 2)
        self.assertEqual((body["quality"], body["size"],
                          body["output_format"]), ("low", "1024x1536", "png"))
        self.assertEqual(body["usage"], {
            "input_tokens": 2, "input_tokens_details": {
                "image_tokens": 0, "text_tokens": 2},
            "output_tokens": 816, "total_tokens": 818})
        # the same request makes the same picture
        a = openai_image(model="gpt-image-1", prompt="same").json()
        b = openai_image(model="gpt-image-1", prompt="same").json()
        self.assertEqual(a["data"], b["data"])

    def test_image_content_policy(self):
        r = openai_image(model="dall-e-3", prompt="x [[sim openai:"
                         "content_policy]]")
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json(), {"error": {
            "message": "Your request was rejected as a result of our safety "
            "system. Your prompt may contain text that is not allowed by "
            "our safety system.", "type": "image_generation_user_error",
            "param": None, "code": "content_policy_violation"}})
        r = openai_image(model="dall-e-2", prompt="x [[sim openai:"
                         "content_policy=legacy]]")
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")
        self.assertEqual(r.json()["error"]["code"],
                         "content_policy_violation")
        r = openai_image(model="gpt-image-1", prompt="x [[sim openai:"
                         "content_policy times=1 key=cp1]]")
        err = r.json()["error"]
        self.assertEqual((r.status, err["type"], err["code"]),
                         (400, "image_generation_user_error",
                          "moderation_blocked"))
        self.assertIn("include the request ID %s."
                      % r.headers["x-request-id"], err["message"])
        self.assertEqual(err["moderation_details"]["moderation_stage"],
                         "input")
        self.assertEqual(openai_image(model="gpt-image-1", prompt="x [[sim "
                                      "openai:content_policy times=1 "
                                      "key=cp1]]").status, 200)
        # validation comes first
        r = openai_image(model="dall-e-3", size="1x1", prompt="x [[sim "
                         "openai:content_policy]]")
        self.assertEqual(r.json()["error"]["param"], "size")

    def test_image_png_directives(self):
        def image(directives, model="gpt-image-1", **extra):
            body = openai_image(model=model, prompt="p [[sim openai:%s]]"
                                % directives, **extra).json()
            return base64.b64decode(body["data"][0]["b64_json"])
        data = image("image_bytes=4000000")
        self.assertEqual(len(data), 4000000)
        self.assertTrue(png_is_valid(data, 1024, 1024))
        data = image("image_bytes=100")      # smaller than the image: as is
        self.assertTrue(png_is_valid(data, 1024, 1024))
        self.assertTrue(png_is_valid(image("png_size=64x48"), 64, 48))
        self.assertTrue(png_is_valid(image("png=wrongsize"), 512, 512))
        data = image("png=badcrc")
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        self.assertIsNone(png_parse(data))
        self.assertIsNone(png_parse(image("png=truncated")))
        self.assertTrue(image("png=notpng").startswith(b"<html>"))
        # through a url too
        body = openai_image(prompt="p [[sim openai:png=wrongsize]]",
                            size="512x512").json()
        path = body["data"][0]["url"].split("%d" % PORTS["openai"], 1)[1]
        self.assertTrue(png_is_valid(call("openai", "GET", path).body,
                                     256, 256))

    def test_stream(self):
        r = openai_chat("hi", stream=True)
        events = r.sse_data()
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(events[0]["object"], "chat.completion.chunk")
        text = "".join(e["choices"][0]["delta"].get("content", "")
                       for e in events[:-1])
        self.assertEqual(text, "openai gpt-4: " + REPLY)
        self.assertEqual(events[-2]["choices"][0]["finish_reason"], "stop")


# --------------------------------------------------------------------------
# Anthropic
# --------------------------------------------------------------------------

class TestAnthropic(SimTestCase):
    def test_auth(self):
        for key in (None, "sk-ant-wrong"):
            r = anthropic_msg("hi", key=key)
            self.assertEqual(r.status, 401)
            body = r.json()
            self.assertEqual(body["type"], "error")
            self.assertEqual(body["error"], {
                "type": "authentication_error",
                "message": "invalid x-api-key"})
            self.assertTrue(body["request_id"].startswith("req_"))
            self.assertEqual(r.headers["request-id"], body["request_id"])

    def test_version_header_required(self):
        r = anthropic_msg("hi", version=None)
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")

    def test_message(self):
        r = anthropic_msg("Tell me about clouds",
                          system="You are terse and kind.")
        self.assertEqual(r.status, 200)
        self.assertIn("request-id", r.headers)
        body = r.json()
        self.assertTrue(body["id"].startswith("msg_"))
        self.assertEqual((body["type"], body["role"], body["model"]),
                         ("message", "assistant", "claude-sonnet-4-5"))
        self.assertEqual(len(body["content"]), 2)
        self.assertEqual("".join(b["text"] for b in body["content"]),
                         "anthropic claude-sonnet-4-5: " + REPLY)
        self.assertEqual(body["stop_reason"], "end_turn")
        self.assertIsNone(body["stop_sequence"])
        self.assertEqual(body["usage"]["input_tokens"], 9)
        self.assertEqual(body["usage"]["output_tokens"], 9)

    def test_system_blocks_and_max_tokens(self):
        body = anthropic_msg("hi", max_tokens=2, system=[
            {"type": "text", "text": "Be brief [[sim anthropic:tag=s]]"}]
        ).json()
        self.assertEqual("".join(b["text"] for b in body["content"]),
                         "anthropic claude-sonnet-4-5:")
        self.assertEqual(body["stop_reason"], "max_tokens")
        self.assertEqual(body["usage"]["input_tokens"], 3)
        self.assertEqual(len(self.log(tag="s")), 1)

    def test_validation(self):
        r = call("anthropic", "POST", "/v1/messages", {
            "model": "claude", "max_tokens": 10, "messages": [
                {"role": "system", "content": "x"},
                {"role": "user", "content": "hi"}]},
            {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")
        self.assertIn("system", r.json()["error"]["message"])
        for broken in ({"max_tokens": None}, {"max_tokens": "10"}):
            body = {"model": "claude", "max_tokens": 10,
                    "messages": [{"role": "user", "content": "hi"}]}
            body.update(broken)
            if broken["max_tokens"] is None:
                del body["max_tokens"]
            r = call("anthropic", "POST", "/v1/messages", body,
                     {"x-api-key": ANTHROPIC_KEY,
                      "anthropic-version": "2023-06-01"})
            self.assertEqual(r.status, 400)
            self.assertIn("max_tokens", r.json()["error"]["message"])

    def test_empty_content(self):
        """Only a final assistant message may be empty."""
        headers = {"x-api-key": ANTHROPIC_KEY,
                   "anthropic-version": "2023-06-01"}
        for messages, status in (
                ([{"role": "user", "content": ""}], 400),
                ([{"role": "user", "content": []}], 400),
                ([{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": ""},
                  {"role": "user", "content": "again"}], 400),
                ([{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": ""}], 200),
                ([{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "Well, "}], 400),
                ([{"role": "user", "content": "hi "},
                  {"role": "assistant", "content": "Well,"}], 200)):
            r = call("anthropic", "POST", "/v1/messages",
                     {"model": "claude", "max_tokens": 10,
                      "messages": messages}, headers)
            self.assertEqual(r.status, status, messages)
            if status == 400 and messages[-1]["content"] == "Well, ":
                self.assertEqual(r.json()["error"]["message"],
                                 "messages: final assistant content cannot "
                                 "end with trailing whitespace")
            elif status == 400:
                err = r.json()["error"]
                self.assertEqual(err["type"], "invalid_request_error")
                self.assertEqual(
                    err["message"],
                    "messages.%d: all messages must have non-empty content "
                    "except for the optional final assistant message"
                    % (len(messages) - 1 if len(messages) == 1 else 1))

    def test_blank_content_and_temperature(self):
        """Whitespace-only text is refused; temperature is 0 to 1."""
        headers = {"x-api-key": ANTHROPIC_KEY,
                   "anthropic-version": "2023-06-01"}
        for extra, messages, message in (
                ({}, [{"role": "user", "content": " \n "}],
                 "messages: text content blocks must contain "
                 "non-whitespace text"),
                ({"temperature": 1.5}, [{"role": "user", "content": "hi"}],
                 "temperature: Input should be less than or equal to 1"),
                ({"temperature": -0.1}, [{"role": "user", "content": "hi"}],
                 "temperature: Input should be greater than or equal to 0"),
                ({"temperature": 1}, [{"role": "user", "content": "hi"}],
                 None)):
            body = {"model": "claude", "max_tokens": 10,
                    "messages": messages}
            body.update(extra)
            r = call("anthropic", "POST", "/v1/messages", body, headers)
            if message is None:
                self.assertEqual(r.status, 200)
            else:
                self.assertEqual((r.status, r.json()["error"]["message"]),
                                 (400, message))

    def test_error_directives(self):
        cases = ((429, "rate_limit_error"), (500, "api_error"),
                 (529, "overloaded_error"), (404, "not_found_error"),
                 (400, "invalid_request_error"),
                 (401, "authentication_error"))
        for status, type_ in cases:
            r = anthropic_msg("[[sim anthropic:status=%d retry_after=3]]"
                              % status)
            self.assertEqual(r.status, status)
            body = r.json()
            self.assertEqual(set(body), {"type", "error", "request_id"})
            self.assertEqual(body["error"]["type"], type_)
            self.assertEqual(r.headers["retry-after"], "3")
            self.assertEqual(r.headers["request-id"], body["request_id"])
        r = anthropic_msg("[[sim anthropic:status=529]]")
        self.assertEqual(r.json()["error"]["message"], "Overloaded")

    def test_models(self):
        r = call("anthropic", "GET", "/v1/models", None,
                 {"x-api-key": ANTHROPIC_KEY,
                  "anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["data"][0]["type"], "model")

    def test_stream(self):
        r = anthropic_msg("hi", stream=True)
        events = r.sse_data()
        self.assertEqual(events[0]["type"], "message_start")
        self.assertEqual(events[-1]["type"], "message_stop")
        text = "".join(e["delta"]["text"] for e in events
                       if e["type"] == "content_block_delta")
        self.assertEqual(text, "anthropic claude-sonnet-4-5: " + REPLY)


# --------------------------------------------------------------------------
# ComfyUI
# --------------------------------------------------------------------------

SDXL_CKPTS = ["sd3.5_large.safetensors", "sd_xl_base_1.0.safetensors",
              "sdxl_lightning_4step.safetensors"]


def sdxl_graph(seed=1, prefix="igny8", text="a cloud", steps=4, width=1024,
               height=1024, batch=1, ckpt="sd_xl_base_1.0.safetensors"):
    """The minimal SDXL txt2img graph of protocols.md 2.5."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode",
              "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode",
              "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": width, "height": height,
                         "batch_size": batch}},
        "3": {"class_type": "KSampler",
              "inputs": {"model": ["4", 0], "positive": ["6", 0],
                         "negative": ["7", 0], "latent_image": ["5", 0],
                         "seed": seed, "steps": steps, "cfg": 7,
                         "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
        "8": {"class_type": "VAEDecode",
              "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage",
              "inputs": {"filename_prefix": prefix, "images": ["8", 0]},
              "_meta": {"title": "Save Image"}},
    }


def flux_graph(seed=1, prefix="flux", text="a cloud"):
    """FLUX.1 [dev] with split loaders (protocols.md 2.5)."""
    return {
        "10": {"class_type": "UNETLoader",
               "inputs": {"unet_name": "flux1-dev.safetensors",
                          "weight_dtype": "default"}},
        "11": {"class_type": "DualCLIPLoader",
               "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                          "clip_name2": "clip_l.safetensors",
                          "type": "flux"}},
        "12": {"class_type": "VAELoader",
               "inputs": {"vae_name": "ae.safetensors"}},
        "6": {"class_type": "CLIPTextEncode",
              "inputs": {"text": text, "clip": ["11", 0]}},
        "26": {"class_type": "FluxGuidance",
               "inputs": {"guidance": 3.5, "conditioning": ["6", 0]}},
        "33": {"class_type": "ConditioningZeroOut",
               "inputs": {"conditioning": ["6", 0]}},
        "27": {"class_type": "EmptySD3LatentImage",
               "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "3": {"class_type": "KSampler",
              "inputs": {"model": ["10", 0], "positive": ["26", 0],
                         "negative": ["33", 0], "latent_image": ["27", 0],
                         "seed": seed, "steps": 20, "cfg": 1.0,
                         "sampler_name": "euler", "scheduler": "simple",
                         "denoise": 1.0}},
        "8": {"class_type": "VAEDecode",
              "inputs": {"samples": ["3", 0], "vae": ["12", 0]}},
        "9": {"class_type": "SaveImage",
              "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


def sd35_graph(seed=1, prefix="sd35"):
    """SD 3.5 Large: checkpoint, three text encoders, shift 3."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "sd3.5_large.safetensors"}},
        "11": {"class_type": "TripleCLIPLoader",
               "inputs": {"clip_name1": "clip_l.safetensors",
                          "clip_name2": "clip_g.safetensors",
                          "clip_name3": "t5xxl_fp16.safetensors"}},
        "13": {"class_type": "ModelSamplingSD3",
               "inputs": {"model": ["4", 0], "shift": 3.0}},
        "6": {"class_type": "CLIPTextEncode",
              "inputs": {"text": "a cloud", "clip": ["11", 0]}},
        "7": {"class_type": "CLIPTextEncode",
              "inputs": {"text": "", "clip": ["11", 0]}},
        "5": {"class_type": "EmptySD3LatentImage",
              "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "3": {"class_type": "KSampler",
              "inputs": {"model": ["13", 0], "positive": ["6", 0],
                         "negative": ["7", 0], "latent_image": ["5", 0],
                         "seed": seed, "steps": 28, "cfg": 4.5,
                         "sampler_name": "dpmpp_2m",
                         "scheduler": "sgm_uniform",
                         "denoise": 1.0}},
        "8": {"class_type": "VAEDecode",
              "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def comfy(method, path, body=None, raw=None):
    return call("comfyui", method, path, raw if raw is not None else body)


def comfy_prompt(graph, **extra):
    body = {"prompt": graph, "client_id": "client-1"}
    body.update(extra)
    return comfy("POST", "/prompt", body)


def with_directive(graph, directive, node="6"):
    """GRAPH with DIRECTIVE appended to node NODE's text."""
    graph = json.loads(json.dumps(graph))
    graph[node]["inputs"]["text"] += " " + directive
    return graph


def wait_history(prompt_id, timeout=10):
    """The history entry of PROMPT_ID once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        body = comfy("GET", "/history/" + prompt_id).json()
        if body:
            return body[prompt_id]
        if time.monotonic() > deadline:
            raise AssertionError("no history for %s" % prompt_id)
        time.sleep(0.02)


def wait_running(prompt_id, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        running = comfy("GET", "/queue").json()["queue_running"]
        if running and running[0][1] == prompt_id:
            return
        if time.monotonic() > deadline:
            raise AssertionError("%s never ran" % prompt_id)
        time.sleep(0.01)


def events(entry):
    return [m[0] for m in entry["status"]["messages"]]


def event(entry, name):
    return [m[1] for m in entry["status"]["messages"] if m[0] == name][0]


class TestComfyUIInfo(SimTestCase):
    def test_system_stats_and_api_prefix(self):
        stats = comfy("GET", "/system_stats").json()
        self.assertIn("vram_free", stats["devices"][0])
        self.assertEqual(comfy("GET", "/api/queue").json(),
                         {"queue_running": [], "queue_pending": []})
        self.assertEqual(comfy("GET", "/api/prompt").json(),
                         {"exec_info": {"queue_remaining": 0}})
        r = comfy("GET", "/nothing")
        self.assertEqual((r.status, r.body), (404, b"404: Not Found"))
        r = comfy("GET", "/interrupt")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.headers["allow"], "POST")

    def test_object_info(self):
        info = comfy("GET", "/object_info").json()
        self.assertEqual(sorted(info), sorted([
            "CheckpointLoaderSimple", "UNETLoader", "DualCLIPLoader",
            "TripleCLIPLoader", "VAELoader", "CLIPTextEncode",
            "FluxGuidance", "ConditioningZeroOut", "EmptyLatentImage",
            "EmptySD3LatentImage", "KSampler", "VAEDecode", "SaveImage",
            "PreviewImage", "ModelSamplingSD3"]))
        ks = info["KSampler"]
        req = ks["input"]["required"]
        self.assertEqual((req["steps"][0], req["steps"][1]["min"],
                          req["steps"][1]["max"]), ("INT", 1, 10000))
        self.assertEqual((req["cfg"][0], req["cfg"][1]["min"],
                          req["cfg"][1]["max"]), ("FLOAT", 0.0, 100.0))
        self.assertEqual(req["seed"][1]["max"], 0xffffffffffffffff)
        self.assertIn("euler", req["sampler_name"][0])
        self.assertIn("sgm_uniform", req["scheduler"][0])
        self.assertEqual(req["model"][0], "MODEL")
        self.assertEqual(ks["input_order"]["required"][:3],
                         ["model", "seed", "steps"])
        self.assertEqual((ks["output"], ks["output_name"],
                          ks["output_is_list"], ks["output_node"]),
                         (["LATENT"], ["LATENT"], [False], False))
        lat = info["EmptyLatentImage"]["input"]["required"]
        self.assertEqual([lat["width"][1][k] for k in ("min", "max", "step")],
                         [16, 16384, 8])
        self.assertEqual([lat["batch_size"][1][k] for k in ("min", "max")],
                         [1, 4096])
        self.assertEqual(info["SaveImage"]["output"], [])
        self.assertTrue(info["SaveImage"]["output_node"])
        self.assertTrue(info["PreviewImage"]["output_node"])
        self.assertEqual(info["SaveImage"]["input"]["hidden"],
                         {"prompt": "PROMPT",
                          "extra_pnginfo": "EXTRA_PNGINFO"})
        self.assertEqual(info["CheckpointLoaderSimple"]["output"],
                         ["MODEL", "CLIP", "VAE"])
        self.assertEqual(info["CheckpointLoaderSimple"]["input"]["required"]
                         ["ckpt_name"][0], SDXL_CKPTS)
        self.assertEqual(info["UNETLoader"]["input"]["required"]
                         ["unet_name"][0], ["flux1-dev.safetensors"])
        clips = ["clip_g.safetensors", "clip_l.safetensors",
                 "t5xxl_fp16.safetensors"]
        for name in ("clip_name1", "clip_name2"):
            self.assertEqual(info["DualCLIPLoader"]["input"]["required"]
                             [name][0], clips)
        self.assertEqual(info["TripleCLIPLoader"]["input"]["required"]
                         ["clip_name3"][0], clips)
        self.assertIn("flux", info["DualCLIPLoader"]["input"]["required"]
                      ["type"][0])
        self.assertEqual(info["VAELoader"]["input"]["required"]["vae_name"][0],
                         ["ae.safetensors"])
        self.assertEqual(info["FluxGuidance"]["output"], ["CONDITIONING"])
        self.assertEqual(info["ModelSamplingSD3"]["output"], ["MODEL"])
        one = comfy("GET", "/object_info/KSampler").json()
        self.assertEqual(one, {"KSampler": ks})
        self.assertEqual(comfy("GET", "/object_info/NoSuchNode").json(), {})
        self.assertEqual(comfy("GET", "/api/object_info/VAEDecode").json(),
                         {"VAEDecode": info["VAEDecode"]})

    def test_models(self):
        folders = comfy("GET", "/models").json()
        for folder in ("checkpoints", "vae", "text_encoders",
                       "diffusion_models", "loras"):
            self.assertIn(folder, folders)
        self.assertEqual(comfy("GET", "/models/checkpoints").json(),
                         SDXL_CKPTS)
        self.assertEqual(comfy("GET", "/models/diffusion_models").json(),
                         ["flux1-dev.safetensors"])
        self.assertEqual(comfy("GET", "/models/loras").json(), [])
        self.assertEqual(comfy("GET", "/models/nope").status, 404)
        self.assertEqual(comfy("GET", "/models/clip").status, 404)

    def test_remove_and_add_models(self):
        status, cfg = control("POST", "/config/comfyui", {
            "remove_models": ["flux1-dev.safetensors", "vae/ae.safetensors"]})
        self.assertEqual(status, 200)
        self.assertNotIn("diffusion_models", cfg["models"])
        self.assertEqual(comfy("GET", "/models/diffusion_models").json(), [])
        r = comfy_prompt(flux_graph())
        self.assertEqual(r.status, 400)
        body = r.json()
        self.assertEqual(body["error"]["type"],
                         "prompt_outputs_failed_validation")
        err = body["node_errors"]["10"]
        self.assertEqual((err["class_type"], err["dependent_outputs"]),
                         ("UNETLoader", ["9"]))
        self.assertEqual(err["errors"][0]["type"], "value_not_in_list")
        self.assertEqual(err["errors"][0]["details"],
                         "unet_name: 'flux1-dev.safetensors' not in []")
        self.assertEqual(body["node_errors"]["12"]["errors"][0]["details"],
                         "vae_name: 'ae.safetensors' not in []")
        status, cfg = control("POST", "/config/comfyui", {
            "add_models": ["unet/flux1-dev.safetensors",
                           "vae/ae.safetensors",
                           "loras/detail.safetensors"]})
        self.assertEqual(cfg["models"]["loras"], ["detail.safetensors"])
        self.assertEqual(comfy_prompt(flux_graph()).status, 200)
        status, cfg = control("POST", "/config/comfyui", {
            "models": {"checkpoints": ["only.safetensors"]}})
        self.assertEqual(comfy("GET", "/models/checkpoints").json(),
                         ["only.safetensors"])
        for bad in ({"add_models": ["flux1-dev.safetensors"]},
                    {"add_models": "x"}, {"models": {"nope": []}},
                    {"step_delay": -1}):
            self.assertEqual(control("POST", "/config/comfyui", bad)[0], 400)
        control("POST", "/reset")
        self.assertEqual(comfy("GET", "/models/checkpoints").json(),
                         SDXL_CKPTS)

    def test_models_on_the_command_line(self):
        state = tempfile.mkdtemp(prefix="igny8_sim_models_")
        proc = None
        try:
            proc, ports, _ = start_simulator(state, [
                "--comfyui-remove-models",
                "flux1-dev.safetensors,checkpoints/sd3.5_large.safetensors",
                "--comfyui-add-models", "loras/detail.safetensors"])
            conn = http.client.HTTPConnection("127.0.0.1", ports["comfyui"],
                                              timeout=10)
            got = {}
            for folder in ("diffusion_models", "checkpoints", "loras"):
                conn.request("GET", "/models/" + folder)
                got[folder] = json.loads(conn.getresponse().read())
            conn.close()
            self.assertEqual(got, {
                "diffusion_models": [],
                "checkpoints": ["sd_xl_base_1.0.safetensors",
                                "sdxl_lightning_4step.safetensors"],
                "loras": ["detail.safetensors"]})
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
                proc.stdout.close()
            shutil.rmtree(state, ignore_errors=True)
        out = subprocess.run([PYTHON, SIM, "--state-dir", "/nonexistent",
                              "--comfyui-add-models", "nofolder.safetensors"],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 2)
        self.assertIn("--comfyui-add-models", out.stderr)


class TestComfyUIValidation(SimTestCase):
    def rejected(self, graph, **extra):
        r = comfy_prompt(graph, **extra)
        self.assertEqual(r.status, 400, r.body)
        self.assertEqual(r.headers["content-type"],
                         "application/json; charset=utf-8")
        return r.json()

    def node_error(self, graph, node):
        body = self.rejected(graph)
        self.assertEqual(body["error"]["type"],
                         "prompt_outputs_failed_validation")
        self.assertEqual(body["error"]["message"],
                         "Prompt outputs failed validation")
        return body["node_errors"][node]

    def test_valid_graphs(self):
        for graph in (sdxl_graph(), flux_graph(), sd35_graph(),
                      sdxl_graph(ckpt="sdxl_lightning_4step.safetensors")):
            r = comfy_prompt(graph)
            self.assertEqual(r.status, 200, r.body)
            body = r.json()
            self.assertEqual(sorted(body), ["node_errors", "number",
                                            "prompt_id"])
            self.assertEqual(body["node_errors"], {})
            self.assertEqual(str(uuid.UUID(body["prompt_id"])),
                             body["prompt_id"])

    def test_body_errors(self):
        r = comfy("POST", "/prompt", {"client_id": "c1"})
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json(), {"error": {
            "type": "no_prompt", "message": "No prompt provided",
            "details": "No prompt provided", "extra_info": {}},
            "node_errors": {}})
        for raw in (b"{not json", b"", b'"text"', b'{"prompt": [1]}',
                    b'{"prompt": {"1": "x"}}'):
            r = comfy("POST", "/prompt", raw=raw)
            self.assertEqual(r.status, 500, raw)
            self.assertEqual(r.body, b"500 Internal Server Error\n\n"
                             b"Server got itself in trouble")

    def test_missing_node_type(self):
        graph = sdxl_graph()
        graph["5"]["class_type"] = "EmptyLatentImageX"
        body = self.rejected(graph)
        self.assertEqual(body, {"error": {
            "type": "missing_node_type",
            "message": "Node 'EmptyLatentImageX' not found. The custom node "
            "may not be installed.",
            "details": "Node ID '#5'",
            "extra_info": {"node_id": "5", "class_type": "EmptyLatentImageX",
                           "node_title": "EmptyLatentImageX"}},
            "node_errors": {}})
        graph["5"]["_meta"] = {"title": "My latent"}
        self.assertEqual(self.rejected(graph)["error"]["message"],
                         "Node 'My latent' not found. The custom node may "
                         "not be installed.")
        graph = sdxl_graph()
        del graph["8"]["class_type"]
        self.assertEqual(self.rejected(graph)["error"], {
            "type": "missing_node_type",
            "message": "Node 'ID #8' has no class_type. The workflow may be "
            "corrupted or a custom node is missing.",
            "details": "Node ID '#8'",
            "extra_info": {"node_id": "8", "class_type": None,
                           "node_title": None}})

    def test_no_outputs(self):
        graph = sdxl_graph()
        del graph["9"]
        self.assertEqual(self.rejected(graph), {"error": {
            "type": "prompt_no_outputs", "message": "Prompt has no outputs",
            "details": "", "extra_info": {}}, "node_errors": {}})
        self.assertEqual(self.rejected({})["error"]["type"],
                         "prompt_no_outputs")
        # partial_execution_targets names the outputs to run
        body = self.rejected(sdxl_graph(),
                             partial_execution_targets=["8"])
        self.assertEqual(body["error"]["type"], "prompt_no_outputs")

    def test_required_input_missing(self):
        graph = sdxl_graph()
        del graph["3"]["inputs"]["cfg"]
        err = self.node_error(graph, "3")
        self.assertEqual(err, {"errors": [{
            "type": "required_input_missing",
            "message": "Required input is missing", "details": "cfg",
            "extra_info": {"input_name": "cfg"}}],
            "dependent_outputs": ["9"], "class_type": "KSampler"})
        # an optional input may be left out
        graph = flux_graph()
        self.assertNotIn("device", graph["11"]["inputs"])
        self.assertEqual(comfy_prompt(graph).status, 200)

    def test_links(self):
        graph = sdxl_graph()
        graph["8"]["inputs"]["samples"] = ["3", 0, 1]
        err = self.node_error(graph, "8")["errors"][0]
        self.assertEqual((err["type"], err["message"], err["details"]),
                         ("bad_linked_input", "Bad linked input, must be a "
                          "length-2 list of [node_id, slot_index]",
                          "samples"))
        self.assertEqual(err["extra_info"]["received_value"], ["3", 0, 1])
        # a link to a node that is not there: ComfyUI's KeyError, reported
        # by the node that linked to the broken one
        graph = sdxl_graph()
        graph["3"]["inputs"]["negative"] = ["12", 0]
        body = self.rejected(graph)
        self.assertEqual(body["error"]["details"], "")
        err = body["node_errors"]["3"]["errors"][0]
        self.assertEqual((err["type"], err["message"], err["details"]),
                         ("exception_during_inner_validation",
                          "Exception when validating inner node", "'12'"))
        info = err["extra_info"]
        self.assertEqual((info["input_name"], info["exception_type"],
                          info["exception_message"], info["linked_node"]),
                         ("samples", "KeyError", "'12'", ["3", 0]))
        self.assertIsInstance(info["traceback"], list)
        # the same on the output node itself
        graph = sdxl_graph()
        graph["9"]["inputs"]["images"] = ["8", 3]
        err = self.node_error(graph, "9")["errors"][0]
        self.assertEqual((err["type"], err["details"]),
                         ("exception_during_validation",
                          "tuple index out of range"))
        self.assertEqual(err["extra_info"]["exception_type"], "IndexError")
        graph = sdxl_graph()
        graph["3"]["inputs"]["latent_image"] = ["4", 0]
        err = self.node_error(graph, "3")["errors"][0]
        self.assertEqual(err, {
            "type": "return_type_mismatch",
            "message": "Return type mismatch between linked nodes",
            "details": "latent_image, received_type(MODEL) mismatch "
            "input_type(LATENT)",
            "extra_info": {"input_name": "latent_image",
                           "input_config": ["LATENT", {
                               "tooltip": "The latent image to denoise."}],
                           "received_type": "MODEL",
                           "linked_node": ["4", 0]}})

    def test_values(self):
        def first_error(**inputs):
            graph = sdxl_graph()
            graph["3"]["inputs"].update(inputs)
            return self.node_error(graph, "3")["errors"][0]
        err = first_error(steps="abc")
        self.assertEqual((err["type"], err["message"], err["details"]),
                         ("invalid_input_type", "Failed to convert an input "
                          "value to a INT value", "steps, abc, invalid "
                          "literal for int() with base 10: 'abc'"))
        self.assertEqual(err["extra_info"]["received_value"], "abc")
        err = first_error(steps=0)
        self.assertEqual(err, {
            "type": "value_smaller_than_min",
            "message": "Value 0 smaller than min of 1", "details": "steps",
            "extra_info": {"input_name": "steps",
                           "input_config": ["INT", {
                               "default": 20, "min": 1, "max": 10000,
                               "tooltip": "The number of steps used in the "
                               "denoising process."}],
                           "received_value": 0}})
        err = first_error(cfg=101)
        self.assertEqual((err["type"], err["message"]),
                         ("value_bigger_than_max",
                          "Value 101.0 bigger than max of 100.0"))
        err = first_error(seed=-1)
        self.assertEqual(err["message"], "Value -1 smaller than min of 0")
        err = first_error(seed=0x10000000000000000)
        self.assertEqual(err["type"], "value_bigger_than_max")
        err = first_error(sampler_name="euler_a")
        self.assertEqual(err, {
            "type": "value_not_in_list", "message": "Value not in list",
            "details": "sampler_name: 'euler_a' not in (list of length 45)",
            "extra_info": {"input_name": "sampler_name",
                           "input_config": None,
                           "received_value": "euler_a"}})
        graph = sdxl_graph(width=16392)
        err = self.node_error(graph, "5")["errors"][0]
        self.assertEqual(err["message"],
                         "Value 16392 bigger than max of 16384")
        graph = sdxl_graph(ckpt="x.safetensors")
        err = self.node_error(graph, "4")
        self.assertEqual(err["errors"][0]["details"],
                         "ckpt_name: 'x.safetensors' not in %s" % (
                             "['sd3.5_large.safetensors', "
                             "'sd_xl_base_1.0.safetensors', "
                             "'sdxl_lightning_4step.safetensors']"))
        self.assertEqual(err["errors"][0]["extra_info"]["input_config"][0],
                         SDXL_CKPTS)
        # several nodes at once, each reported
        graph = sdxl_graph(ckpt="x.safetensors", batch=0)
        body = self.rejected(graph)
        self.assertEqual(sorted(body["node_errors"]), ["4", "5"])

    def test_conversion_and_partial_success(self):
        graph = sdxl_graph()
        graph["3"]["inputs"]["steps"] = "4"
        graph["3"]["inputs"]["denoise"] = {"__value__": 1}
        graph["10"] = {"class_type": "PreviewImage",
                       "inputs": {"images": ["8", 7]}}
        r = comfy_prompt(graph, prompt_id="conv-1")
        self.assertEqual(r.status, 200)
        errors = r.json()["node_errors"]
        self.assertEqual(list(errors), ["10"])
        self.assertEqual(errors["10"]["dependent_outputs"], ["10"])
        entry = wait_history("conv-1")
        stored = entry["prompt"][2]["3"]["inputs"]
        self.assertEqual((stored["steps"], stored["cfg"], stored["denoise"]),
                         (4, 7.0, 1.0))
        self.assertIsInstance(stored["cfg"], float)
        # the log keeps the body as it came
        sent = self.log(path="/prompt")[0]["body"]["prompt"]["3"]["inputs"]
        self.assertEqual((sent["steps"], sent["cfg"]), ("4", 7))
        self.assertIsInstance(sent["cfg"], int)
        self.assertEqual(entry["prompt"][4], ["9"])
        self.assertEqual(list(entry["outputs"]), ["9"])

    def test_ids_numbers_and_client(self):
        r = comfy_prompt(sdxl_graph(), prompt_id="my-own-id")
        self.assertEqual(r.json()["prompt_id"], "my-own-id")
        self.assertEqual(r.json()["number"], 0)
        # the counter moves on every POST /prompt, even a rejected one
        comfy("POST", "/prompt", {"client_id": "x"})
        self.assertEqual(comfy_prompt(sdxl_graph(seed=2)).json()["number"], 2)
        self.assertEqual(comfy_prompt(sdxl_graph(seed=3),
                                      front=True).json()["number"], -3)
        self.assertEqual(comfy_prompt(sdxl_graph(seed=4),
                                      number=7).json()["number"], 7.0)
        # accepted again without a uniqueness check
        self.assertEqual(comfy_prompt(sdxl_graph(seed=5),
                                      prompt_id="my-own-id").status, 200)
        rec = self.log(path="/prompt")[0]
        self.assertEqual((rec["prompt_id"], rec["client_id"]),
                         ("my-own-id", "client-1"))
        self.assertEqual(rec["body"]["client_id"], "client-1")
        entry = wait_history("my-own-id")
        extra = entry["prompt"][3]
        self.assertEqual(extra["client_id"], "client-1")
        self.assertIsInstance(extra["create_time"], int)


class TestComfyUIQueue(SimTestCase):
    def test_lifecycle_and_history_shape(self):
        graph = with_directive(sdxl_graph(seed=11),
                               "[[sim comfyui:run_time=1]]")
        r = comfy_prompt(graph, extra_data={"extra_pnginfo": {"k": 1}})
        pid = r.json()["prompt_id"]
        wait_running(pid)
        self.assertEqual(comfy("GET", "/history/" + pid).json(), {})
        self.assertEqual(comfy("GET", "/prompt").json(),
                         {"exec_info": {"queue_remaining": 1}})
        queue = comfy("GET", "/queue").json()
        self.assertEqual(queue["queue_pending"], [])
        number, qid, qgraph, extra, outputs = queue["queue_running"][0]
        self.assertEqual((number, qid, outputs), (0, pid, ["9"]))
        self.assertEqual(qgraph["5"], graph["5"])
        self.assertEqual(extra["client_id"], "client-1")
        entry = wait_history(pid)
        self.assertEqual(list(entry), ["prompt", "outputs", "status", "meta"])
        self.assertEqual(entry["prompt"][:2], [0, pid])
        self.assertEqual(entry["prompt"][4], ["9"])
        self.assertEqual(entry["outputs"], {"9": {"images": [{
            "filename": "igny8_00001_.png", "subfolder": "",
            "type": "output"}]}})
        status = entry["status"]
        self.assertEqual((status["status_str"], status["completed"]),
                         ("success", True))
        self.assertEqual(events(entry), ["execution_start",
                                         "execution_cached",
                                         "execution_success"])
        for name, data in status["messages"]:
            self.assertEqual(data["prompt_id"], pid)
            self.assertIsInstance(data["timestamp"], int)
        self.assertEqual(event(entry, "execution_cached")["nodes"], [])
        self.assertEqual(entry["meta"], {"9": {
            "node_id": "9", "display_node": "9", "parent_node": None,
            "real_node_id": "9"}})
        took = (event(entry, "execution_success")["timestamp"] -
                event(entry, "execution_start")["timestamp"])
        self.assertGreaterEqual(took, 950)
        self.assertEqual(comfy("GET", "/prompt").json(),
                         {"exec_info": {"queue_remaining": 0}})

    def test_order_delete_and_clear(self):
        # q0 runs until it is interrupted, the others take no time
        for i, run in enumerate((30, 0, 0, 0)):
            graph = with_directive(sdxl_graph(seed=100 + i),
                                   "[[sim comfyui:run_time=%s]]" % run)
            comfy_prompt(graph, prompt_id="q%d" % i)
        wait_running("q0")
        queue = comfy("GET", "/queue").json()
        self.assertEqual([q[1] for q in queue["queue_pending"]],
                         ["q1", "q2", "q3"])
        self.assertEqual([q[0] for q in queue["queue_pending"]], [1, 2, 3])
        r = comfy("POST", "/queue", {"delete": ["q2", "q0"]})
        self.assertEqual((r.status, r.body), (200, b""))
        queue = comfy("GET", "/queue").json()
        self.assertEqual([q[1] for q in queue["queue_running"]], ["q0"])
        self.assertEqual([q[1] for q in queue["queue_pending"]],
                         ["q1", "q3"])
        self.assertEqual(comfy("GET", "/prompt").json()["exec_info"]
                         ["queue_remaining"], 3)
        comfy("POST", "/interrupt", {"prompt_id": "q0"})
        starts = {}
        for pid in ("q0", "q1", "q3"):
            entry = wait_history(pid)
            self.assertEqual(entry["status"]["status_str"],
                             "error" if pid == "q0" else "success")
            starts[pid] = event(entry, "execution_start")["timestamp"]
        self.assertLessEqual(starts["q0"], starts["q1"])
        self.assertLessEqual(starts["q1"], starts["q3"])
        self.assertEqual(list(comfy("GET", "/history").json()),
                         ["q0", "q1", "q3"])
        self.assertEqual(comfy("GET", "/history/q2").json(), {})
        # front jumps the queue; clear empties what waits
        comfy_prompt(with_directive(sdxl_graph(seed=200),
                                    "[[sim comfyui:run_time=30]]"),
                     prompt_id="c0")
        wait_running("c0")
        comfy_prompt(sdxl_graph(seed=201), prompt_id="c1")
        comfy_prompt(sdxl_graph(seed=202), prompt_id="c2", front=True)
        self.assertEqual([q[1] for q in comfy("GET", "/queue").json()
                          ["queue_pending"]], ["c2", "c1"])
        comfy("POST", "/queue", {"clear": True})
        self.assertEqual(comfy("GET", "/queue").json()["queue_pending"], [])
        comfy("POST", "/interrupt", {"prompt_id": "c0"})
        wait_history("c0")
        time.sleep(0.2)
        self.assertEqual(sorted(comfy("GET", "/history").json()),
                         ["c0", "q0", "q1", "q3"])

    def test_interrupt_one_prompt(self):
        comfy_prompt(with_directive(sdxl_graph(seed=300),
                                    "[[sim comfyui:run_time=30]]"),
                     prompt_id="long")
        comfy_prompt(sdxl_graph(seed=301), prompt_id="next")
        wait_running("long")
        # not running: nothing happens
        r = comfy("POST", "/interrupt", {"prompt_id": "next"})
        self.assertEqual((r.status, r.body), (200, b""))
        time.sleep(0.1)
        self.assertEqual(comfy("GET", "/queue").json()["queue_running"][0][1],
                         "long")
        start = time.monotonic()
        comfy("POST", "/interrupt", {"prompt_id": "long"})
        entry = wait_history("long")
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual((entry["status"]["status_str"],
                          entry["status"]["completed"]), ("error", False))
        self.assertEqual(events(entry), ["execution_start",
                                         "execution_cached",
                                         "execution_interrupted"])
        data = event(entry, "execution_interrupted")
        self.assertEqual(sorted(data), ["executed", "node_id", "node_type",
                                        "prompt_id", "timestamp"])
        self.assertEqual((data["prompt_id"], data["node_id"],
                          data["node_type"]), ("long", "3", "KSampler"))
        self.assertEqual(sorted(data["executed"]), ["4", "5", "6", "7"])
        self.assertEqual(entry["outputs"], {})
        # the other prompt is untouched and finishes
        self.assertEqual(wait_history("next")["status"]["status_str"],
                         "success")
        recs = self.log(path="/interrupt")
        self.assertEqual([(r["prompt_id"], r["interrupt"], r["interrupted"])
                          for r in recs],
                         [("next", "prompt", False), ("long", "prompt", True)])

    def test_global_interrupt(self):
        # with nothing running it is logged and changes nothing
        comfy("POST", "/interrupt")
        pid = comfy_prompt(sdxl_graph(seed=400)).json()["prompt_id"]
        self.assertEqual(wait_history(pid)["status"]["status_str"], "success")
        comfy_prompt(with_directive(sdxl_graph(seed=401),
                                    "[[sim comfyui:run_time=30]]"),
                     prompt_id="g1")
        wait_running("g1")
        comfy("POST", "/interrupt", raw=b"{}")
        self.assertIn("execution_interrupted", events(wait_history("g1")))
        recs = self.log(path="/interrupt")
        self.assertEqual([(r["prompt_id"], r["interrupt"], r["interrupted"])
                          for r in recs],
                         [(None, "global", False), (None, "global", True)])

    def test_old_server(self):
        # a build from before the targeted interrupt: its own prompt ids,
        # and every interrupt is global, whatever its body names
        status, cfg = control("POST", "/config/comfyui", {"old_server": True})
        self.assertEqual((status, cfg["old_server"]), (200, True))
        self.assertEqual(control("POST", "/config/comfyui",
                                 {"old_server": 1})[0], 400)
        long_id = comfy_prompt(with_directive(sdxl_graph(seed=450),
                                              "[[sim comfyui:run_time=30]]"),
                               prompt_id="mine").json()["prompt_id"]
        self.assertNotEqual(long_id, "mine")
        self.assertEqual(str(uuid.UUID(long_id, version=4)), long_id)
        next_id = comfy_prompt(sdxl_graph(seed=451)).json()["prompt_id"]
        wait_running(long_id)
        # named the waiting prompt, it stops the running one all the same
        r = comfy("POST", "/interrupt", {"prompt_id": next_id})
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertIn("execution_interrupted", events(wait_history(long_id)))
        self.assertEqual(wait_history(next_id)["status"]["status_str"],
                         "success")
        # a body that is not JSON is not read
        self.assertEqual(comfy("POST", "/interrupt", raw=b"[").status, 200)
        recs = self.log(path="/interrupt")
        self.assertEqual([(r["prompt_id"], r["interrupt"], r["interrupted"])
                          for r in recs],
                         [(next_id, "global", True),
                          (None, "global", False)])
        self.assertEqual([r["prompt_id"] for r in self.log(path="/prompt")],
                         [long_id, next_id])
        # a reset makes it a current build again
        control("POST", "/reset")
        self.assertEqual(comfy_prompt(sdxl_graph(seed=452),
                                      prompt_id="mine").json()["prompt_id"],
                         "mine")

    def test_history_routes(self):
        for i in range(3):
            comfy_prompt(sdxl_graph(seed=500 + i), prompt_id="h%d" % i)
        wait_history("h2")
        self.assertEqual(list(comfy("GET", "/history").json()),
                         ["h0", "h1", "h2"])
        self.assertEqual(list(comfy("GET", "/history?max_items=2").json()),
                         ["h1", "h2"])
        self.assertEqual(list(comfy("GET", "/api/history?max_items=1&"
                                    "offset=0").json()), ["h0"])
        self.assertEqual(comfy("GET", "/history?max_items=x").status, 500)
        r = comfy("POST", "/history", {"delete": ["h1"]})
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertEqual(list(comfy("GET", "/history").json()), ["h0", "h2"])
        self.assertEqual(comfy("GET", "/history/h1").json(), {})
        self.assertEqual(list(comfy("GET", "/history/h2").json()), ["h2"])
        comfy("POST", "/history", {"clear": True})
        self.assertEqual(comfy("GET", "/history").json(), {})
        # files stay: deleting history does not delete outputs
        self.assertEqual(comfy("GET", "/view?filename=igny8_00001_.png&"
                               "type=output").status, 200)

    def test_reset_empties_everything(self):
        comfy_prompt(with_directive(sdxl_graph(seed=600),
                                    "[[sim comfyui:run_time=30]]"),
                     prompt_id="r0")
        comfy_prompt(sdxl_graph(seed=601), prompt_id="r1")
        wait_running("r0")
        control("POST", "/reset")
        self.assertEqual(comfy("GET", "/queue").json(),
                         {"queue_running": [], "queue_pending": []})
        time.sleep(0.2)
        self.assertEqual(comfy("GET", "/history").json(), {})
        self.assertEqual(comfy_prompt(sdxl_graph()).json()["number"], 0)


class TestComfyUIExecution(SimTestCase):
    def test_step_delay(self):
        graph = with_directive(sdxl_graph(steps=10),
                               "[[sim comfyui:step_delay=0.05]]")
        pid = comfy_prompt(graph).json()["prompt_id"]
        entry = wait_history(pid)
        took = (event(entry, "execution_success")["timestamp"] -
                event(entry, "execution_start")["timestamp"])
        self.assertGreaterEqual(took, 480)
        # the setting, from the control API
        control("POST", "/config/comfyui", {"step_delay": 0.04})
        pid = comfy_prompt(sdxl_graph(seed=2, steps=10)).json()["prompt_id"]
        entry = wait_history(pid)
        took = (event(entry, "execution_success")["timestamp"] -
                event(entry, "execution_start")["timestamp"])
        self.assertGreaterEqual(took, 380)

    def test_cache(self):
        first = comfy_prompt(sdxl_graph(seed=7)).json()["prompt_id"]
        a = wait_history(first)
        again = comfy_prompt(sdxl_graph(seed=7)).json()["prompt_id"]
        b = wait_history(again)
        self.assertEqual(sorted(event(b, "execution_cached")["nodes"]),
                         ["3", "4", "5", "6", "7", "8", "9"])
        self.assertEqual(b["outputs"], a["outputs"])
        self.assertEqual(b["status"]["status_str"], "success")
        # a new seed: only the sampler and what follows it run again
        third = comfy_prompt(sdxl_graph(seed=8)).json()["prompt_id"]
        c = wait_history(third)
        self.assertEqual(sorted(event(c, "execution_cached")["nodes"]),
                         ["4", "5", "6", "7"])
        self.assertEqual(c["outputs"]["9"]["images"][0]["filename"],
                         "igny8_00002_.png")
        # node ids do not matter, only what the nodes compute
        graph = sdxl_graph(seed=8)
        graph["90"] = graph.pop("9")
        d = wait_history(comfy_prompt(graph).json()["prompt_id"])
        self.assertEqual(len(event(d, "execution_cached")["nodes"]), 7)

    def test_exec_error_oom_then_retry(self):
        graph = with_directive(sdxl_graph(seed=21),
                               "[[sim comfyui:exec_error=oom times=1 "
                               "key=oom1]]")
        pid = comfy_prompt(graph).json()["prompt_id"]
        entry = wait_history(pid)
        self.assertEqual((entry["status"]["status_str"],
                          entry["status"]["completed"]), ("error", False))
        self.assertEqual(events(entry), ["execution_start",
                                         "execution_cached",
                                         "execution_error"])
        err = event(entry, "execution_error")
        self.assertEqual(sorted(err), [
            "current_inputs", "current_outputs", "exception_message",
            "exception_type", "executed", "node_id", "node_type",
            "prompt_id", "timestamp", "traceback"])
        self.assertEqual((err["prompt_id"], err["node_id"], err["node_type"],
                          err["exception_type"]),
                         (pid, "3", "KSampler", "torch.OutOfMemoryError"))
        self.assertTrue(err["exception_message"].startswith(
            "CUDA out of memory. Tried to allocate "))
        self.assertTrue(err["exception_message"].endswith(
            "\nThis error means you ran out of memory on your GPU.\n\nTIPS: "
            "If the workflow worked before you might have accidentally set "
            "the batch_size to a large number."))
        self.assertEqual(sorted(err["executed"]), ["4", "5", "6", "7"])
        self.assertTrue(all(isinstance(t, str) for t in err["traceback"]))
        self.assertEqual(err["current_inputs"]["seed"], [21])
        self.assertEqual(err["current_inputs"]["sampler_name"], ["euler"])
        self.assertTrue(err["current_inputs"]["model"][0].startswith(
            "<comfy.model_patcher.ModelPatcher object at 0x"))
        self.assertEqual(err["current_outputs"], [])
        self.assertEqual(entry["outputs"], {})
        # the same graph again: times=1 is spent, what ran is cached
        pid = comfy_prompt(graph).json()["prompt_id"]
        entry = wait_history(pid)
        self.assertEqual(entry["status"]["status_str"], "success")
        self.assertEqual(sorted(event(entry, "execution_cached")["nodes"]),
                         ["4", "5", "6", "7"])

    def test_other_exec_errors(self):
        graph = with_directive(flux_graph(), "[[sim comfyui:exec_error="
                               "corrupt]]")
        err = event(wait_history(comfy_prompt(graph).json()["prompt_id"]),
                    "execution_error")
        self.assertEqual((err["node_id"], err["node_type"],
                          err["exception_type"]),
                         ("10", "UNETLoader", "ValueError"))
        self.assertIn("HeaderTooLarge", err["exception_message"])
        self.assertIn("/models/diffusion_models/flux1-dev.safetensors",
                      err["exception_message"])
        graph = with_directive(sdxl_graph(seed=3), "[[sim comfyui:"
                               "exec_error=runtime]]")
        err = event(wait_history(comfy_prompt(graph).json()["prompt_id"]),
                    "execution_error")
        self.assertEqual(err["exception_type"], "RuntimeError")
        self.assertIn("TIPS: If you have any 'Load CLIP'",
                      err["exception_message"])
        graph = with_directive(sdxl_graph(seed=4), "[[sim comfyui:"
                               "exec_error=exception exec_node=8]]")
        entry = wait_history(comfy_prompt(graph).json()["prompt_id"])
        err = event(entry, "execution_error")
        self.assertEqual((err["node_id"], err["node_type"],
                          err["exception_type"]), ("8", "VAEDecode",
                                                   "Exception"))
        self.assertIn("3", err["executed"])
        # saving outside the output folder fails in SaveImage
        entry = wait_history(comfy_prompt(sdxl_graph(
            seed=5, prefix="../escape")).json()["prompt_id"])
        err = event(entry, "execution_error")
        self.assertEqual((err["node_type"], err["exception_type"]),
                         ("SaveImage", "Exception"))
        self.assertTrue(err["exception_message"].startswith(
            "**** ERROR: Saving image outside the output folder is not "
            "allowed."))

    def test_http_directives_on_prompt(self):
        graph = with_directive(sdxl_graph(), "[[sim comfyui:status=503]]")
        r = comfy_prompt(graph, prompt_id="s503")
        self.assertEqual((r.status, r.body), (503, b"503: Service "
                                              b"Unavailable"))
        # validation comes first
        bad = with_directive(sdxl_graph(steps=0), "[[sim comfyui:status=503]]")
        self.assertEqual(comfy_prompt(bad).status, 400)
        # dropped answer: the prompt was queued all the same
        graph = with_directive(sdxl_graph(seed=9), "[[sim comfyui:drop]]")
        sock = raw_request("comfyui", "/prompt", {"prompt": graph,
                                                  "prompt_id": "dropped"})
        status_line, headers, body, _ = read_raw(sock)
        sock.close()
        self.assertIn(" 200 ", status_line)
        self.assertLess(len(body), int(headers["content-length"]))
        self.assertEqual(wait_history("dropped")["status"]["status_str"],
                         "success")
        # a client that leaves while its prompt is being taken: the
        # disconnect is logged, and the prompt is queued all the same
        graph = with_directive(sdxl_graph(seed=12), "[[sim comfyui:"
                               "delay=2 tag=left]]")
        sock = raw_request("comfyui", "/prompt", {"prompt": graph,
                                                  "prompt_id": "left"})
        deadline = time.monotonic() + 1.5      # read, and in its delay
        while not self.log(tag="left"):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        sock.close()
        self.assertEqual(wait_history("left")["status"]["status_str"],
                         "success")
        rec = self.log(tag="left")[0]
        self.assertIs(rec["disconnect"], True)
        self.assertEqual(rec["prompt_id"], "left")
        self.assertEqual(comfy("GET", "/history/s503").json(), {})
        start = time.monotonic()
        graph = with_directive(sdxl_graph(seed=10),
                               "[[sim comfyui:delay=0.3]]")
        self.assertEqual(comfy_prompt(graph).status, 200)
        self.assertGreaterEqual(time.monotonic() - start, 0.3)
        graph = with_directive(sdxl_graph(seed=11), "[[sim comfyui:"
                               "malformed]]")
        r = comfy_prompt(graph, prompt_id="garbled")
        self.assertRaises(ValueError, r.json)
        self.assertEqual(wait_history("garbled")["status"]["status_str"],
                         "success")

    def test_directives_on_history_and_view(self):
        graph = with_directive(sdxl_graph(seed=30), "[[sim comfyui:on=history "
                               "status=502 times=2 key=h1]] [[sim comfyui:"
                               "on=view status=500 times=1 key=v1]] [[sim "
                               "any:tag=job30]]")
        r = comfy_prompt(graph, prompt_id="p30")
        self.assertEqual(r.status, 200)
        time.sleep(0.2)
        codes = [comfy("GET", "/history/p30").status for _ in range(3)]
        self.assertEqual(codes, [502, 502, 200])
        name = wait_history("p30")["outputs"]["9"]["images"][0]["filename"]
        path = "/view?filename=%s&subfolder=&type=output" % name
        self.assertEqual([comfy("GET", path).status for _ in range(2)],
                         [500, 200])
        # the tag follows the prompt through its polls and downloads
        paths = [r["path"] for r in self.log(tag="job30")]
        self.assertEqual(paths[0], "/prompt")
        self.assertEqual(set(paths[1:]), {"/history/p30", "/view"})
        graph = with_directive(sdxl_graph(seed=31), "[[sim comfyui:on=view "
                               "drop]]")
        comfy_prompt(graph, prompt_id="p31")
        name = wait_history("p31")["outputs"]["9"]["images"][0]["filename"]
        conn = http.client.HTTPConnection("127.0.0.1", PORTS["comfyui"],
                                          timeout=10)
        conn.request("GET", "/view?filename=" + name)
        resp = conn.getresponse()
        self.assertRaises(http.client.IncompleteRead, resp.read)
        conn.close()


class TestComfyUIImages(SimTestCase):
    def test_names_and_view(self):
        entries = [wait_history(comfy_prompt(g).json()["prompt_id"])
                   for g in (sdxl_graph(seed=1),
                             sdxl_graph(seed=2),
                             sdxl_graph(seed=3, prefix="jobs/run1/igny8"),
                             sdxl_graph(seed=4, prefix="other", batch=2,
                                        width=512, height=768))]
        images = [e["outputs"]["9"]["images"] for e in entries]
        self.assertEqual(images, [
            [{"filename": "igny8_00001_.png", "subfolder": "",
              "type": "output"}],
            [{"filename": "igny8_00002_.png", "subfolder": "",
              "type": "output"}],
            [{"filename": "igny8_00001_.png", "subfolder": "jobs/run1",
              "type": "output"}],
            [{"filename": "other_00001_.png", "subfolder": "",
              "type": "output"},
             {"filename": "other_00002_.png", "subfolder": "",
              "type": "output"}]])
        start = time.monotonic()
        r = comfy("GET", "/view?filename=igny8_00001_.png&subfolder=&"
                  "type=output")
        self.assertLess(time.monotonic() - start, 2)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-type"], "image/png")
        self.assertEqual(r.headers["content-disposition"],
                         'filename="igny8_00001_.png"')
        info = png_parse(r.body)
        self.assertIsNotNone(info)
        self.assertEqual((info["width"], info["height"]), (1024, 1024))
        self.assertEqual(json.loads(info["text"]["prompt"])["3"]["inputs"]
                         ["seed"], 1)
        seed1 = r.body
        self.assertEqual(comfy("GET", "/api/view?filename=igny8_00001_.png")
                         .body, seed1)
        seed2 = comfy("GET", "/view?filename=igny8_00002_.png").body
        self.assertNotEqual(png_parse(seed2), None)
        self.assertNotEqual(seed1, seed2)
        sub = comfy("GET", "/view?filename=igny8_00001_.png&"
                    "subfolder=jobs/run1&type=output")
        self.assertEqual(sub.status, 200)
        for name in ("other_00001_.png", "other_00002_.png"):
            info = png_parse(comfy("GET", "/view?filename=" + name).body)
            self.assertEqual((info["width"], info["height"]), (512, 768))
        self.assertNotEqual(comfy("GET", "/view?filename=other_00001_.png")
                            .body, comfy("GET", "/view?filename="
                                         "other_00002_.png").body)

    def test_view_over_one_connection(self):
        # a client that keeps its connection gets each file it asks for
        for seed in (11, 12):
            wait_history(comfy_prompt(sdxl_graph(seed=seed, prefix="ka"))
                         .json()["prompt_id"])
        conn = http.client.HTTPConnection("127.0.0.1", PORTS["comfyui"],
                                          timeout=10)
        try:
            seeds = [json.loads(png_parse(call(
                "comfyui", "GET", "/view?filename=ka_%05d_.png" % n,
                conn=conn).body)["text"]["prompt"])["3"]["inputs"]["seed"]
                for n in (1, 2, 1)]
            missing = call("comfyui", "GET", "/view?filename=ka_00009_.png",
                           conn=conn).status
        finally:
            conn.close()
        self.assertEqual(seeds, [11, 12, 11])
        self.assertEqual(missing, 404)

    def test_view_errors(self):
        wait_history(comfy_prompt(sdxl_graph()).json()["prompt_id"])
        for query, status in (("", 404), ("filename=", 400),
                              ("filename=nope.png", 404),
                              ("filename=../igny8_00001_.png", 400),
                              ("filename=/etc/passwd", 400),
                              ("filename=igny8_00001_.png&subfolder=../..",
                               403),
                              ("filename=igny8_00001_.png&subfolder=/etc",
                               403),
                              ("filename=igny8_00001_.png&type=bogus", 400),
                              ("filename=igny8_00001_.png&type=temp", 404),
                              ("filename=igny8_00001_.png&subfolder=x", 404),
                              ("filename=igny8_00001_.png%20%5Boutput%5D&"
                               "type=temp", 200)):
            r = comfy("GET", "/view?" + query)
            self.assertEqual(r.status, status, query)

    def test_preview_and_odd_sizes(self):
        entry = wait_history(comfy_prompt(sd35_graph()).json()["prompt_id"])
        image = entry["outputs"]["9"]["images"][0]
        self.assertEqual(image["type"], "temp")
        self.assertRegex(image["filename"],
                         r"^ComfyUI_temp_[a-z]{5}_00001_\.png$")
        r = comfy("GET", "/view?filename=%s&type=temp" % image["filename"])
        self.assertTrue(png_is_valid(r.body, 1024, 1024))
        # a latent is width // 8: the image is a multiple of 8
        entry = wait_history(comfy_prompt(sdxl_graph(
            width=1020, height=100, prefix="odd")).json()["prompt_id"])
        r = comfy("GET", "/view?filename=odd_00001_.png")
        self.assertTrue(png_is_valid(r.body, 1016, 96))

    def test_png_directives(self):
        def made(directives, prefix):
            graph = with_directive(sdxl_graph(prefix=prefix),
                                   "[[sim comfyui:%s]]" % directives)
            wait_history(comfy_prompt(graph).json()["prompt_id"])
            return comfy("GET", "/view?filename=%s_00001_.png" % prefix).body
        self.assertTrue(png_is_valid(made("png=wrongsize", "ws"), 512, 512))
        self.assertTrue(png_is_valid(made("png_size=64x32", "ps"), 64, 32))
        data = made("image_bytes=4000000", "big")
        self.assertEqual(len(data), 4000000)
        self.assertTrue(png_is_valid(data, 1024, 1024))
        data = made("png=badcrc", "crc")
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        self.assertIsNone(png_parse(data))
        self.assertIsNone(png_parse(made("png=truncated", "cut")))
        self.assertTrue(made("png=notpng", "html").startswith(b"<html>"))


INSTALL_SCRIPT = os.path.join(HERE, "..", "..", "sql", "igny8_ai--1.0.sql")

# One shipped workflow of the install script's INSERT INTO igny8_workflows:
# ('name', $graph$...$graph$, $bindings$...$bindings$, '{defaults}', ...
SHIPPED_WORKFLOW_RE = re.compile(
    r"\(\s*'([a-z0-9_.-]+)',\s*\$graph\$(.*?)\$graph\$,\s*"
    r"\$bindings\$(.*?)\$bindings\$,\s*'(\{[^']*\})',\s*((?:'(?:[^']|'')*'\s*)+),",
    re.S)


def shipped_workflows():
    """The workflows the install script ships: name -> (graph, bindings,
    defaults, description)."""
    with open(INSTALL_SCRIPT) as f:
        script = f.read()
    start = script.index("INSERT INTO igny8_workflows")
    end = script.index(";\n", start)
    out = {}
    for m in SHIPPED_WORKFLOW_RE.finditer(script, start, end):
        description = "".join(part.replace("''", "'") for part in
                              re.findall(r"'((?:[^']|'')*)'", m.group(5)))
        out[m.group(1)] = (json.loads(m.group(2)), json.loads(m.group(3)),
                           json.loads(m.group(4)), description)
    return out


def fill_bindings(graph, bindings, values):
    """GRAPH with the bound inputs set to VALUES (parameter -> value), as
    the extension fills them in."""
    graph = json.loads(json.dumps(graph))
    for param, value in values.items():
        if param in bindings:
            node, name = bindings[param]
            graph[node]["inputs"][name] = value
    return graph


class TestShippedWorkflows(SimTestCase):
    """
    The workflows sql/igny8_ai--1.0.sql ships are valid ComfyUI graphs for
    the simulator's node catalogue and model files, once the extension has
    filled in their bindings, and they run to a SaveImage output of the
    size asked for.
    """

    def setUp(self):
        super().setUp()
        self.workflows = shipped_workflows()
        self.info = comfy("GET", "/object_info").json()

    def test_the_three(self):
        self.assertEqual(sorted(self.workflows),
                         ["flux1-dev", "sd3.5-large", "sdxl-lightning-4step"])

    def test_bindings_name_widget_inputs(self):
        for name, (graph, bindings, defaults, _) in self.workflows.items():
            for param, (node, input_name) in bindings.items():
                spec = self.info[graph[node]["class_type"]]["input"]
                inputs = dict(spec.get("required", {}),
                              **spec.get("optional", {}))
                self.assertIn(input_name, inputs, (name, param))
                # a widget (a value), not a link type such as MODEL
                self.assertTrue(isinstance(inputs[input_name][0], list) or
                                inputs[input_name][0] in
                                ("INT", "FLOAT", "STRING"), (name, param))
            self.assertTrue(set(defaults) <= set(bindings), name)

    def test_description_names_every_model_file(self):
        for name, (graph, _, _, description) in self.workflows.items():
            files = {v for node in graph.values()
                     for v in node["inputs"].values()
                     if isinstance(v, str) and v.endswith(".safetensors")}
            self.assertTrue(files, name)
            for file in files:
                self.assertIn(file, description, name)

    def test_valid_and_run(self):
        for n, (name, (graph, bindings, defaults, _)) in \
                enumerate(sorted(self.workflows.items())):
            values = dict(defaults, prompt="a cloud over the sea",
                          negative_prompt="blurry", width=832, height=1216,
                          seed=2 ** 63 + n, filename_prefix="wf%d/igny8" % n)
            r = comfy_prompt(fill_bindings(graph, bindings, values))
            self.assertEqual(r.status, 200, (name, r.body))
            self.assertEqual(r.json()["node_errors"], {}, name)
            entry = wait_history(r.json()["prompt_id"])
            self.assertEqual(entry["status"]["status_str"], "success", name)
            saves = [node for node, v in graph.items()
                     if v["class_type"] == "SaveImage"]
            self.assertEqual(sorted(entry["outputs"]), saves, name)
            image = entry["outputs"][saves[0]]["images"][0]
            self.assertEqual((image["subfolder"], image["type"]),
                             ("wf%d" % n, "output"), name)
            data = comfy("GET", "/view?filename=%s&subfolder=%s&type=output"
                         % (image["filename"], image["subfolder"])).body
            self.assertTrue(png_is_valid(data, 832, 1216), name)
            sent = json.loads(png_parse(data)["text"]["prompt"])
            self.assertEqual(sent[bindings["prompt"][0]]["inputs"]
                             [bindings["prompt"][1]], "a cloud over the sea")

    def test_model_files_missing(self):
        # a box without the files: ComfyUI names the loader's file, which
        # the extension takes for "try the next candidate"
        files = sorted({v for graph, _, _, _ in self.workflows.values()
                        for node in graph.values()
                        for v in node["inputs"].values()
                        if isinstance(v, str) and v.endswith(".safetensors")})
        status, _ = control("POST", "/config/comfyui",
                            {"remove_models": files})
        self.assertEqual(status, 200)
        for name, (graph, bindings, _, _) in self.workflows.items():
            r = comfy_prompt(fill_bindings(graph, bindings, {"seed": 1}))
            self.assertEqual(r.status, 400, name)
            errors = [e["type"] for node in r.json()["node_errors"].values()
                      for e in node["errors"]]
            self.assertTrue(errors, name)
            self.assertEqual(set(errors), {"value_not_in_list"}, name)


class TestComfyUILog(SimTestCase):
    def test_requests_per_route_and_prompt(self):
        graph = with_directive(sdxl_graph(seed=50),
                               "[[sim comfyui:run_time=0.3]]")
        pid = comfy_prompt(graph).json()["prompt_id"]
        polls = 0
        while not comfy("GET", "/history/" + pid).json():
            polls += 1
            time.sleep(0.05)
        comfy("GET", "/view?filename=igny8_00001_.png")
        comfy("GET", "/queue")
        comfy("POST", "/interrupt", {"prompt_id": pid})
        recs = self.log(role="comfyui", prompt_id=pid)
        self.assertEqual([r["path"] for r in recs],
                         ["/prompt"] + ["/history/" + pid] * (polls + 1) +
                         ["/view", "/interrupt"])
        self.assertEqual(len(self.log(role="comfyui", path="/queue")), 1)
        code, out, _ = simctl("log", "--role", "comfyui", "--prompt-id", pid,
                              "--count")
        self.assertEqual((code, out), (0, "%d\n" % (polls + 4)))
        code, out, _ = simctl("log", "--path", "/interrupt", "--field",
                              "interrupt")
        self.assertEqual(out, "prompt\n")


# --------------------------------------------------------------------------
# Directives
# --------------------------------------------------------------------------

class TestDirectives(SimTestCase):
    def test_targets(self):
        self.assertEqual(ollama_chat("[[sim openai:status=500]]").status,
                         200)
        self.assertEqual(ollama_chat("[[sim any:status=500]]").status, 500)
        self.assertEqual(openai_chat("[[sim any:status=503]]").status, 503)
        r = openai_chat("[[sim ollama:status=500]] [[sim openai:status=400]]")
        self.assertEqual(r.status, 400)

    def test_removed_before_counting_and_reply(self):
        body = ollama_chat("one two [[sim any:reply=Short_answer_here. "
                           "tag=t1]] three").json()
        self.assertEqual(body["prompt_eval_count"], 3)
        self.assertEqual(body["message"]["content"],
                         "ollama qwen3:32b: Short answer here.")
        self.assertEqual(body["eval_count"], 5)

    def test_times_and_key(self):
        directive = "[[sim any:status=503 times=2 key=k1]]"
        self.assertEqual([ollama_chat(directive).status for _ in range(4)],
                         [503, 503, 200, 200])
        # Another key has its own counter, and each role its own.
        self.assertEqual(ollama_chat(directive.replace("k1", "k2")).status,
                         503)
        self.assertEqual(openai_chat(directive).status, 503)
        # Counted across connections: one keep-alive connection here.
        conn = http.client.HTTPConnection("127.0.0.1", PORTS["ollama"],
                                          timeout=10)
        body = {"model": "qwen3:8b", "stream": False, "messages": [
            {"role": "user", "content": "[[sim ollama:status=500 times=1 "
             "key=k3]]"}]}
        self.assertEqual(call("ollama", "POST", "/api/chat", body).status,
                         500)
        self.assertEqual(call("ollama", "POST", "/api/chat", body,
                              conn=conn).status, 200)
        conn.close()
        self.assertEqual([r["key"] for r in self.log(key="k1")],
                         ["k1"] * 5)
        control("POST", "/reset")
        self.assertEqual(ollama_chat(directive).status, 503)

    def test_delay(self):
        start = time.monotonic()
        r = ollama_chat("[[sim ollama:delay=0.4]]")
        self.assertEqual(r.status, 200)
        self.assertGreaterEqual(time.monotonic() - start, 0.4)

    def test_disconnect_detected(self):
        sock = raw_request("ollama", "/api/chat", {
            "model": "qwen3:32b", "stream": False,
            "messages": [{"role": "user",
                          "content": "[[sim ollama:delay=5 tag=dc]]"}]})
        time.sleep(0.3)
        sock.close()
        code, out, _ = simctl("wait-disconnect", "--tag", "dc",
                              "--timeout", "3")
        self.assertEqual((code, out), (0, "disconnected\n"))
        rec = self.log(tag="dc")[0]
        self.assertIs(rec["disconnect"], True)
        self.assertLess(rec["t_disconnect"] - rec["t_start"], 1.5)
        self.assertGreaterEqual(rec["t_disconnect"] - rec["t_start"], 0.25)
        self.assertEqual(rec["status"], 499)
        code, out, _ = simctl("wait-disconnect", "--tag", "nobody",
                              "--timeout", "0.2")
        self.assertEqual((code, out), (0, "not disconnected\n"))

    def test_drop(self):
        sock = raw_request("openai", "/v1/chat/completions", {
            "model": "gpt-4", "messages": [
                {"role": "user", "content": "[[sim openai:drop]]"}]},
            "Authorization: Bearer %s\r\n" % OPENAI_KEY)
        status, headers, body, _ = read_raw(sock)
        sock.close()
        self.assertIn(" 200 ", status)
        self.assertGreater(int(headers["content-length"]), len(body))
        self.assertGreater(len(body), 0)
        # With http.client the short body is an IncompleteRead.
        with self.assertRaises(http.client.IncompleteRead):
            ollama_chat("[[sim ollama:drop]]")

    def test_drop_rst_and_stream(self):
        sock = raw_request("ollama", "/api/chat", {
            "model": "qwen3:32b", "stream": False, "messages": [
                {"role": "user", "content": "[[sim ollama:drop=rst]]"}]})
        status, headers, body, reset = read_raw(sock)
        sock.close()
        self.assertTrue(reset or
                        int(headers["content-length"]) > len(body))
        sock = raw_request("ollama", "/api/chat", {
            "model": "qwen3:32b", "messages": [
                {"role": "user", "content": "[[sim ollama:drop]]"}]})
        status, headers, body, _ = read_raw(sock)
        sock.close()
        self.assertEqual(headers["transfer-encoding"], "chunked")
        self.assertFalse(body.endswith(b"0\r\n\r\n"))

    def test_malformed(self):
        r = ollama_chat("[[sim ollama:malformed]]")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-type"], "application/json")
        with self.assertRaises(ValueError):
            r.json()
        r = anthropic_msg("[[sim any:malformed]]")
        self.assertEqual(r.status, 200)
        with self.assertRaises(ValueError):
            r.json()

    def test_oversize(self):
        size = 3_000_000
        r = ollama_chat("[[sim ollama:oversize=%d]]" % size)
        self.assertEqual(int(r.headers["content-length"]), len(r.body))
        body = r.json()
        self.assertEqual(len(body["message"]["content"]), size)
        self.assertEqual(body["eval_count"], size // 10)
        r = openai_chat("[[sim openai:oversize=100000]]")
        self.assertEqual(len(r.json()["choices"][0]["message"]["content"]),
                         100000)
        r = anthropic_msg("[[sim anthropic:oversize=70000]]")
        self.assertEqual(len(r.json()["content"][0]["text"]), 70000)
        lines = call("ollama", "POST", "/api/chat", {
            "model": "qwen3:8b", "messages": [
                {"role": "user", "content": "[[sim any:oversize=200000]]"}]}
        ).lines()
        self.assertEqual(sum(len(x["message"]["content"]) for x in lines),
                         200000)

    def test_close(self):
        sock = raw_request("ollama", "/api/chat", {
            "model": "qwen3:32b", "stream": False, "messages": [
                {"role": "user", "content": "[[sim ollama:close]]"}]})
        status, headers, body, _ = read_raw(sock)     # ends at EOF
        sock.close()
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(len(body), int(headers["content-length"]))
        self.assertEqual(json.loads(body)["done"], True)

    def test_keep_alive(self):
        conn = http.client.HTTPConnection("127.0.0.1", PORTS["ollama"],
                                          timeout=10)
        call("ollama", "GET", "/api/tags", conn=conn)
        first = conn.sock
        r = call("ollama", "POST", "/api/chat", {
            "model": "qwen3:8b", "messages": []}, conn=conn)
        self.assertEqual(r.status, 200)
        self.assertIs(conn.sock, first)
        conn.close()

    def test_retry_after_ms_and_bad_directives(self):
        r = openai_chat("[[sim openai:status=503 retry_after_ms=1500]]")
        self.assertEqual(r.headers["retry-after-ms"], "1500")
        r = ollama_chat("[[sim ollama:bogus delay=x tag=bad]]")
        self.assertEqual(r.status, 200)
        errors = self.log(tag="bad")[0]["directive_errors"]
        self.assertEqual(len(errors), 2)


# --------------------------------------------------------------------------
# Misbehaving backends: keys echoed, spoiled strings, odd models, usage
# --------------------------------------------------------------------------

BAD_BYTES = b"\xff\xfe\xe2\x82"


def lenient(body):
    """A body with raw invalid UTF-8, decoded so that JSON can parse it:
    the bad bytes become the lone surrogates U+DCxx."""
    return json.loads(body.decode("utf-8", "surrogateescape"))


BAD_TEXT = BAD_BYTES.decode("utf-8", "surrogateescape")
ANTHROPIC_REPLY = "anthropic claude-sonnet-4-5: " + REPLY
ANTHROPIC_FIRST_HALF = ANTHROPIC_REPLY[:len(ANTHROPIC_REPLY) // 2]


def ollama_auth(content, key=None, path="/api/chat", **extra):
    body = {"model": "qwen3:8b", "stream": False,
            "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    headers = {"Authorization": "Bearer " + key} if key else {}
    return call("ollama", "POST", path, body, headers)


class TestMisbehaviour(SimTestCase):
    def test_echo_key_model(self):
        r = openai_chat("hi [[sim openai:echo_key=model]]")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["model"], OPENAI_KEY)
        # the content still names the requested model
        self.assertEqual(r.json()["choices"][0]["message"]["content"],
                         "openai gpt-4: " + REPLY)
        events = openai_chat("hi [[sim openai:echo_key=model]]",
                             stream=True).sse_data()
        self.assertEqual({e["model"] for e in events[:-1]}, {OPENAI_KEY})
        r = anthropic_msg("hi [[sim anthropic:echo_key=model]]")
        self.assertEqual(r.json()["model"], ANTHROPIC_KEY)
        events = anthropic_msg("hi [[sim anthropic:echo_key=model]]",
                               stream=True).sse_data()
        self.assertEqual(events[0]["message"]["model"], ANTHROPIC_KEY)
        r = ollama_auth("hi [[sim ollama:echo_key=model]]")
        self.assertEqual(r.json()["model"], "no-key")
        r = ollama_auth("hi [[sim ollama:echo_key=model]]", "sk-ollama-77")
        self.assertEqual(r.json()["model"], "sk-ollama-77")
        lines = ollama_auth("hi [[sim ollama:echo_key=model]]",
                            "sk-ollama-77", stream=True).lines()
        self.assertEqual({x["model"] for x in lines}, {"sk-ollama-77"})
        r = ollama_auth("hi [[sim ollama:echo_key=model]]", "sk-v1-78",
                        path="/v1/chat/completions")
        self.assertEqual(r.json()["model"], "sk-v1-78")
        r = ollama_auth("hi [[sim ollama:echo_key=model]]", "sk-gen-79",
                        path="/api/generate", prompt="hi "
                        "[[sim ollama:echo_key=model]]")
        self.assertEqual(r.json()["model"], "sk-gen-79")

    def test_echo_key_error(self):
        r = openai_chat("[[sim openai:status=429 echo_key=error]]")
        self.assertEqual(r.status, 429)
        err = r.json()["error"]
        self.assertEqual(err["code"], "rate_limit_exceeded")
        self.assertEqual(err["message"],
                         "Incorrect API key provided: %s. You can find your "
                         "API key in your account settings." % OPENAI_KEY)
        # alone it means 401
        r = anthropic_msg("[[sim anthropic:echo_key=error]]")
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json()["error"]["type"], "authentication_error")
        self.assertIn(ANTHROPIC_KEY, r.json()["error"]["message"])
        r = ollama_auth("[[sim ollama:status=503 echo_key=error]]",
                        "sk-oll-1234567890")
        self.assertEqual(r.status, 503)
        self.assertIn("sk-oll-1234567890", r.json()["error"])
        self.assertIn("no-key", ollama_auth(
            "[[sim ollama:status=500 echo_key=error]]").json()["error"])

    def test_key_offset(self):
        for offset in (0, 1, 90, 95, 190, 199, 250):
            d = "[[sim any:status=500 echo_key=error key_offset=%d]]" % offset
            for role, reply, key, msg in (
                    ("openai", openai_chat(d), OPENAI_KEY,
                     lambda b: b["error"]["message"]),
                    ("anthropic", anthropic_msg(d), ANTHROPIC_KEY,
                     lambda b: b["error"]["message"]),
                    ("ollama", ollama_auth(d, "sk-ollama-offset-1"),
                     "sk-ollama-offset-1", lambda b: b["error"])):
                with self.subTest(role=role, offset=offset):
                    self.assertEqual(reply.status, 500)
                    text = msg(reply.json()).encode()
                    self.assertEqual(text.index(key.encode()), offset)
                    self.assertEqual(text[offset + len(key):],
                                     b" is not a valid API key.")
                    if offset:
                        self.assertEqual(text[offset - 1:offset], b" ")
                        self.assertRegex(text[:offset].decode(),
                                         r"^[a-z ]+$")
        # cut at 100 bytes, the key is cut through
        r = openai_chat("[[sim openai:status=400 echo_key=error "
                        "key_offset=90]]")
        cut = r.json()["error"]["message"].encode()[:100]
        self.assertNotIn(OPENAI_KEY.encode(), cut)
        self.assertTrue(cut.endswith(OPENAI_KEY.encode()[:10]))

    def test_plain_error_body(self):
        d = "[[sim any:status=502 echo_key=error key_offset=20 plain]]"
        for role, reply, key in (
                ("openai", openai_chat(d), OPENAI_KEY),
                ("anthropic", anthropic_msg(d), ANTHROPIC_KEY),
                ("ollama", ollama_auth(d), "no-key")):
            with self.subTest(role=role):
                self.assertEqual(reply.status, 502)
                self.assertTrue(reply.headers["content-type"].startswith(
                    "text/plain"))
                self.assertEqual(reply.body.index(key.encode()), 20)
                with self.assertRaises(ValueError):
                    json.loads(reply.body)
                self.assertEqual(int(reply.headers["content-length"]),
                                 len(reply.body))
        # plain without echo_key: the role's own message, as text
        r = anthropic_msg("[[sim anthropic:status=529 plain]]")
        self.assertEqual((r.status, r.body), (529, b"Overloaded"))

    def test_escape_slash(self):
        key = "sk-abc/def/ghi-0123456789"
        r = openai_chat("[[sim openai:status=401 echo_key=error escape_slash]]",
                        key=key)
        self.assertEqual(r.status, 401)
        self.assertIn(b"sk-abc\\/def\\/ghi-0123456789", r.body)
        self.assertNotIn(key.encode(), r.body)
        # still JSON, and the message holds the key itself
        self.assertIn(key, r.json()["error"]["message"])
        # an answer too: every "/" of the body escaped
        r = ollama_chat("A/B [[sim ollama:escape_slash reply=x/y]]")
        self.assertEqual(r.status, 200)
        self.assertNotRegex(r.body, rb"[^\\]/")
        self.assertIn(b"x\\/y", r.body)
        self.assertEqual(r.json()["message"]["content"],
                         "ollama qwen3:32b: x/y")

    def check_spoiled(self, reply, get, clean, mark):
        """The field GET picks holds CLEAN with MARK inserted."""
        value = get(lenient(reply.body))
        self.assertIn(mark, value)
        self.assertEqual(value.replace(mark, ""), clean)
        return value

    def test_badutf8(self):
        content = "openai gpt-4: " + REPLY
        for field, get, clean in (
                ("content", lambda b: b["choices"][0]["message"]["content"],
                 content),
                ("thinking",
                 lambda b: b["choices"][0]["message"]["reasoning_content"],
                 "Let me think about clouds."),
                ("model", lambda b: b["model"], "gpt-4"),
                ("finish", lambda b: b["choices"][0]["finish_reason"],
                 "stop")):
            with self.subTest(role="openai", field=field):
                r = openai_chat("hi [[sim openai:badutf8=%s]]" % field)
                self.assertEqual(r.status, 200)
                self.assertIn(BAD_BYTES, r.body)
                with self.assertRaises(UnicodeDecodeError):
                    r.body.decode("utf-8")
                self.check_spoiled(r, get, clean, BAD_TEXT)
        for field, get, clean in (
                ("content", lambda b: b["message"]["content"],
                 "ollama qwen3:8b: " + REPLY),
                ("thinking", lambda b: b["message"]["thinking"],
                 "Let me think about clouds."),
                ("model", lambda b: b["model"], "qwen3:8b"),
                ("finish", lambda b: b["done_reason"], "stop")):
            with self.subTest(role="ollama", field=field):
                r = ollama_auth("hi [[sim ollama:badutf8=%s]]" % field)
                self.assertIn(BAD_BYTES, r.body)
                self.check_spoiled(r, get, clean, BAD_TEXT)
        for field, get, clean in (
                ("content", lambda b: b["content"][0]["text"],
                 ANTHROPIC_FIRST_HALF),
                ("thinking", lambda b: b["content"][0]["thinking"],
                 "Let me think about clouds."),
                ("model", lambda b: b["model"], "claude-sonnet-4-5"),
                ("finish", lambda b: b["stop_reason"], "end_turn")):
            with self.subTest(role="anthropic", field=field):
                r = anthropic_msg("hi [[sim anthropic:badutf8=%s]]" % field)
                self.assertIn(BAD_BYTES, r.body)
                self.check_spoiled(r, get, clean, BAD_TEXT)
        # the thinking block comes first, and the text is still all there
        body = lenient(anthropic_msg("[[sim any:badutf8=thinking]]").body)
        self.assertEqual([b["type"] for b in body["content"]],
                         ["thinking", "text", "text"])
        # error messages, JSON and plain
        for role, reply, get in (
                ("openai", openai_chat("[[sim any:status=503 "
                                       "badutf8=error]]"),
                 lambda b: b["error"]["message"]),
                ("anthropic", anthropic_msg("[[sim any:status=529 "
                                            "badutf8=error]]"),
                 lambda b: b["error"]["message"]),
                ("ollama", ollama_auth("[[sim any:status=500 "
                                       "badutf8=error]]"),
                 lambda b: b["error"])):
            with self.subTest(role=role, field="error"):
                self.assertIn(BAD_BYTES, reply.body)
                self.assertIn(BAD_TEXT, get(lenient(reply.body)))
        r = openai_chat("[[sim any:status=400 echo_key=error badutf8=error "
                        "plain]]")
        self.assertIn(BAD_BYTES, r.body)
        self.assertIn(OPENAI_KEY.encode(), r.body)
        # streams carry the bytes too
        r = ollama_auth("hi [[sim ollama:badutf8=content]]", stream=True)
        self.assertIn(BAD_BYTES, r.body)
        text = "".join(json.loads(line)["message"]["content"] for line in
                       r.body.decode("utf-8", "surrogateescape").splitlines())
        self.assertEqual(text.replace(BAD_TEXT, ""),
                         "ollama qwen3:8b: " + REPLY)
        for reply in (openai_chat("hi [[sim any:badutf8=finish]]",
                                  stream=True),
                      anthropic_msg("hi [[sim any:badutf8=model]]",
                                    stream=True)):
            self.assertIn(BAD_BYTES, reply.body)

    def test_nul(self):
        for field, get in (
                ("content", lambda b: b["message"]["content"]),
                ("thinking", lambda b: b["message"]["thinking"]),
                ("model", lambda b: b["model"]),
                ("finish", lambda b: b["done_reason"])):
            with self.subTest(field=field):
                r = ollama_auth("hi [[sim ollama:nul=%s]]" % field)
                self.assertIn(b"\\u0000", r.body)
                value = get(r.json())
                self.assertIn("\x00", value)
                self.assertNotIn(value[0], "\x00")
                self.assertNotIn(value[-1], "\x00")
        r = openai_chat("hi [[sim openai:nul=finish]]")
        self.assertEqual(r.json()["choices"][0]["finish_reason"],
                         "st\x00op")
        r = anthropic_msg("hi [[sim anthropic:nul=finish]]")
        self.assertEqual(r.json()["stop_reason"], "end_\x00turn")
        r = anthropic_msg("[[sim anthropic:status=429 nul=error]]")
        self.assertIn("\x00", r.json()["error"]["message"])
        r = ollama_auth("[[sim ollama:status=503 nul=error]]")
        self.assertIn("\x00", r.json()["error"])
        # with echo_key=error the key stays whole
        r = openai_chat("[[sim openai:status=401 echo_key=error nul=error "
                        "badutf8=error key_offset=30]]")
        message = lenient(r.body)["error"]["message"]
        self.assertIn("\x00", message)
        self.assertEqual(message.index(OPENAI_KEY), 30)
        self.assertIn(b"\\u0000", r.body)
        for offset in (0, 60, 95, 195):
            r = anthropic_msg("[[sim anthropic:status=500 echo_key=error "
                              "badutf8=error key_offset=%d plain]]" % offset)
            self.assertEqual(r.body.index(ANTHROPIC_KEY.encode()), offset)
            self.assertIn(BAD_BYTES, r.body)
        r = call("ollama", "POST", "/api/chat", {
            "model": "qwen3:8b", "messages": [{"role": "user", "content":
                                              "[[sim any:nul=thinking]]"}]})
        self.assertIn("\x00", "".join(x["message"].get("thinking", "")
                                      for x in r.lines()))

    def test_model_name_and_long_model(self):
        r = openai_chat("hi [[sim openai:model_name=gpt-4-0613_(served)]]")
        self.assertEqual(r.json()["model"], "gpt-4-0613 (served)")
        r = ollama_auth("hi [[sim ollama:model_name=caf\u00e9_\u96f2]]")
        self.assertEqual(r.json()["model"], "caf\u00e9 \u96f2")
        for n in (0, 1, 50, 100, 200):
            r = anthropic_msg("hi [[sim anthropic:long_model=%d]]" % n)
            model = r.json()["model"]
            self.assertEqual(model, "m" + "\u00e9" * n)
            self.assertEqual(len(model.encode()), 1 + 2 * n)
        r = ollama_auth("hi [[sim ollama:long_model=3 badutf8=model]]")
        self.assertEqual(lenient(r.body)["model"].replace(BAD_TEXT, ""),
                         "m\u00e9\u00e9\u00e9")

    def test_cache_usage(self):
        words = "one two three four five six seven eight nine ten"
        r = anthropic_msg(words + " [[sim anthropic:cache_read=6 "
                          "cache_creation=3]]")
        usage = r.json()["usage"]
        self.assertEqual((usage["input_tokens"],
                          usage["cache_read_input_tokens"],
                          usage["cache_creation_input_tokens"]), (1, 6, 3))
        usage = anthropic_msg(words + " [[sim anthropic:cache_read=105]]"
                              ).json()["usage"]
        self.assertEqual((usage["input_tokens"],
                          usage["cache_read_input_tokens"],
                          usage["cache_creation_input_tokens"]), (0, 105, 0))
        events = anthropic_msg(words + " [[sim anthropic:cache_read=4]]",
                               stream=True).sse_data()
        usage = events[0]["message"]["usage"]
        self.assertEqual((usage["input_tokens"],
                          usage["cache_read_input_tokens"],
                          usage["cache_creation_input_tokens"]), (6, 4, 0))
        usage = openai_chat(words + " [[sim openai:cached=7]]").json()["usage"]
        self.assertEqual(usage["prompt_tokens"], 10)
        self.assertEqual(usage["prompt_tokens_details"]["cached_tokens"], 7)
        usage = openai_chat(words).json()["usage"]
        self.assertEqual(usage["prompt_tokens_details"]["cached_tokens"], 0)
        events = openai_chat(words + " [[sim openai:cached=7]]", stream=True,
                             stream_options={"include_usage": True}
                             ).sse_data()
        self.assertEqual(events[-2]["usage"]["prompt_tokens_details"],
                         {"cached_tokens": 7})

    def test_context_errors(self):
        r = openai_chat("[[sim openai:status=400 context]]")
        self.assertEqual((r.status, r.json()), (400, {"error": {
            "message": "This model's maximum context length is 8192 tokens. "
                       "However, your messages resulted in 9000 tokens. "
                       "Please reduce the length of the messages.",
            "type": "invalid_request_error", "param": "messages",
            "code": "context_length_exceeded"}}))
        r = anthropic_msg("[[sim anthropic:status=400 context]]")
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"], {
            "type": "invalid_request_error",
            "message": "prompt is too long: 210000 tokens > 200000 maximum"})
        r = ollama_auth("[[sim ollama:status=400 context]]")
        self.assertEqual((r.status, r.json()), (400, {
            "error": "the input length exceeds the context length"}))
        r = ollama_auth("[[sim ollama:context]]", path="/v1/chat/completions")
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["message"],
                         "the input length exceeds the context length")
        # context alone means 400; a plain 400 is an ordinary bad request
        self.assertEqual(openai_chat("[[sim openai:context]]").status, 400)
        self.assertEqual(openai_chat("[[sim openai:status=400]]").json(), {
            "error": {"message": "Unrecognized request argument supplied: "
                                 "igny8_sim",
                      "type": "invalid_request_error", "param": None,
                      "code": None}})
        self.assertIn("roles must alternate", anthropic_msg(
            "[[sim anthropic:status=400]]").json()["error"]["message"])

    def test_reply_any_utf8(self):
        d = "[[sim any:reply=caf\u00e9_\u96f2_\u20ac_\U0001f600 tag=u8]]"
        reply = "caf\u00e9 \u96f2 \u20ac \U0001f600"
        r = ollama_auth("hi " + d)
        self.assertEqual(int(r.headers["content-length"]), len(r.body))
        self.assertEqual(r.json()["message"]["content"],
                         "ollama qwen3:8b: " + reply)
        self.assertEqual(r.json()["eval_count"], 6)
        self.assertEqual(openai_chat("hi " + d).json()["choices"][0]
                         ["message"]["content"], "openai gpt-4: " + reply)
        self.assertEqual("".join(b["text"] for b in anthropic_msg(
            "hi " + d).json()["content"]), "anthropic claude-sonnet-4-5: " +
            reply)
        lines = ollama_auth("hi " + d, stream=True).lines()
        self.assertEqual("".join(x["message"]["content"] for x in lines),
                         "ollama qwen3:8b: " + reply)
        events = anthropic_msg("hi " + d, stream=True).sse_data()
        self.assertEqual("".join(e["delta"]["text"] for e in events
                                 if e["type"] == "content_block_delta"),
                         "anthropic claude-sonnet-4-5: " + reply)
        # the prompt may come \\u-escaped too
        r = call("openai", "POST", "/v1/chat/completions", json.dumps({
            "model": "gpt-4", "messages": [{"role": "user", "content": d}]},
            ensure_ascii=True).encode(),
            {"Authorization": "Bearer " + OPENAI_KEY})
        self.assertEqual(r.json()["choices"][0]["message"]["content"],
                         "openai gpt-4: " + reply)
        self.assertEqual(len(self.log(tag="u8")), 6)
        self.assertEqual(simctl("log", "--tag", "u8", "--count")[1], "6\n")
        # simctl prints a UTF-8 tag escaped where the locale lacks it
        ollama_auth("hi [[sim any:tag=t\u96f2]]")
        out = subprocess.run(
            [PYTHON, SIMCTL, "--state-dir", STATE_DIR, "log", "--tag",
             "t\u96f2", "--field", "tag"], capture_output=True,
            env=dict(os.environ, PYTHONIOENCODING="ascii"), timeout=30)
        self.assertEqual((out.returncode, out.stdout), (0, b"t\\u96f2\n"))
        self.assertEqual(simctl("log", "--tag", "t\u96f2", "--field",
                                "tag")[1], "t\u96f2\n")
        # a literal \uXXXX in the directive names a character: an ASCII
        # prompt (a LATIN1 database's) can ask for any text
        r = ollama_auth("hi [[sim ollama:reply=\\u96f2_caf\\u00e9 "
                        "model_name=m\\u00e9\\u6a21]]")
        self.assertEqual(r.json()["message"]["content"],
                         "ollama qwen3:8b: \u96f2 caf\u00e9")
        self.assertEqual(r.json()["model"], "m\u00e9\u6a21")

    def test_bad_values(self):
        r = ollama_auth("hi [[sim ollama:badutf8=usage nul echo_key=x "
                        "long_model=-1 cached tag=bv]]")
        self.assertEqual(r.status, 200)
        self.assertEqual(len(self.log(tag="bv")[0]["directive_errors"]), 5)


# --------------------------------------------------------------------------
# Control API
# --------------------------------------------------------------------------

class TestControl(SimTestCase):
    def test_log(self):
        ollama_chat("first [[sim any:tag=a key=ka]]")
        openai_chat("second [[sim any:tag=a]]")
        ollama_chat("third [[sim any:tag=b]]")
        recs = self.log(tag="a")
        self.assertEqual([r["role"] for r in recs], ["ollama", "openai"])
        rec = recs[0]
        for key in ("role", "method", "path", "key", "tag", "headers",
                    "body", "status", "t_start", "t_end", "disconnect",
                    "t_disconnect"):
            self.assertIn(key, rec)
        self.assertEqual((rec["method"], rec["path"], rec["status"],
                          rec["key"]), ("POST", "/api/chat", 200, "ka"))
        self.assertEqual(rec["body"]["model"], "qwen3:32b")
        self.assertEqual(rec["headers"]["content-type"], "application/json")
        self.assertLessEqual(rec["t_start"], rec["t_end"])
        self.assertEqual(len(self.log(role="ollama")), 2)
        self.assertEqual(len(self.log(role="ollama", tag="a")), 1)
        self.assertEqual(len(self.log(key="ka")), 1)
        self.assertEqual(recs[1]["headers"]["authorization"],
                         "Bearer " + OPENAI_KEY)

    def test_big_body_truncated(self):
        ollama_chat("x" * 20000 + " [[sim any:tag=big]]")
        body = self.log(tag="big")[0]["body"]
        self.assertLessEqual(len(json.dumps(body)), 4096 + 100)

    def test_counts_and_reset(self):
        ollama_chat("hi")
        ollama_chat("hi")
        call("comfyui", "GET", "/queue")
        self.assertEqual(control("GET", "/counts")[1],
                         {"ollama": 2, "openai": 0, "anthropic": 0,
                          "comfyui": 1})
        control("POST", "/reset")
        self.assertEqual(control("GET", "/log")[1], [])
        self.assertEqual(control("GET", "/counts")[1]["ollama"], 0)

    def test_extra_keys(self):
        self.assertEqual(openai_chat("hi", key="sk-account-42-abcdef").status,
                         401)
        status, cfg = control("POST", "/config/openai",
                              {"extra_keys": ["sk-account-42-abcdef"]})
        self.assertEqual((status, cfg["extra_keys"]),
                         (200, ["sk-account-42-abcdef"]))
        self.assertEqual(openai_chat("hi", key="sk-account-42-abcdef").status,
                         200)
        self.assertEqual(openai_chat("hi").status, 200)
        control("POST", "/reset")
        self.assertEqual(openai_chat("hi", key="sk-account-42-abcdef").status,
                         401)

    def test_config(self):
        status, cfg = control("POST", "/config/openai", {"delay": 0.3})
        self.assertEqual((status, cfg["delay"]), (200, 0.3))
        start = time.monotonic()
        openai_chat("hi")
        self.assertGreaterEqual(time.monotonic() - start, 0.3)
        control("POST", "/config/ollama", {"status": 503})
        r = call("ollama", "GET", "/api/tags")
        self.assertEqual((r.status, r.json()), (503, {
            "error": "server busy, please try again.  maximum pending "
                     "requests exceeded"}))
        control("POST", "/config/anthropic", {"status": 529})
        self.assertEqual(anthropic_msg("hi").json()["error"]["type"],
                         "overloaded_error")
        control("POST", "/reset")
        self.assertEqual(call("ollama", "GET", "/api/tags").status, 200)
        status, cfg = control("POST", "/config/ollama", {"nope": 1})
        self.assertEqual(status, 400)
        status, _ = control("POST", "/config/ollama", {"delay": "slow"})
        self.assertEqual(status, 400)

    def test_down_and_up(self):
        conn = http.client.HTTPConnection("127.0.0.1", PORTS["ollama"],
                                          timeout=10)
        call("ollama", "GET", "/", conn=conn)
        sock = conn.sock
        self.assertEqual(control("POST", "/down/ollama"),
                         (200, {"role": "ollama", "up": False}))
        self.assertEqual(control("GET", "/status")[1]["ollama"], "down")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", PORTS["ollama"]),
                                     timeout=2)
        # The open keep-alive connection was closed by the server.
        sock.settimeout(2)
        self.assertEqual(sock.recv(10), b"")
        conn.close()
        # Other roles are unaffected.
        self.assertEqual(call("comfyui", "GET", "/queue").status, 200)
        self.assertEqual(control("POST", "/up/ollama")[1]["up"], True)
        self.assertEqual(call("ollama", "GET", "/").status, 200)
        self.assertEqual(control("GET", "/status")[1],
                         {"ollama": "up", "openai": "up", "anthropic": "up",
                          "comfyui": "up"})

    def test_down_during_delay(self):
        result = {}

        def slow():
            try:
                result["r"] = ollama_chat("[[sim ollama:delay=5 tag=dd]]")
            except (OSError, http.client.HTTPException) as exc:
                result["e"] = exc
        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.3)
        start = time.monotonic()
        control("POST", "/down/ollama")
        thread.join(5)
        self.assertLess(time.monotonic() - start, 2)
        self.assertIn("e", result)
        self.assertIs(self.log(tag="dd")[0]["disconnect"], False)


# --------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------

class TestConcurrency(SimTestCase):
    def test_many_slow_requests_in_parallel(self):
        count, statuses = 200, []
        lock = threading.Lock()

        def one(i):
            role = ("ollama", "openai", "anthropic")[i % 3]
            text = "[[sim any:delay=1 tag=par]]"
            r = {"ollama": ollama_chat, "openai": openai_chat,
                 "anthropic": anthropic_msg}[role](text)
            with lock:
                statuses.append(r.status)
        threads = [threading.Thread(target=one, args=(i,))
                   for i in range(count)]
        start = time.monotonic()
        for t in threads:
            t.start()
        # A fast request is not held up by the slow ones.
        fast_start = time.monotonic()
        self.assertEqual(call("ollama", "GET", "/").status, 200)
        self.assertLess(time.monotonic() - fast_start, 0.5)
        for t in threads:
            t.join(20)
        self.assertEqual(statuses, [200] * count)
        self.assertLess(time.monotonic() - start, 6)


# --------------------------------------------------------------------------
# simctl.py
# --------------------------------------------------------------------------

class TestSimctl(SimTestCase):
    def test_ports_and_urls(self):
        self.assertEqual(simctl("port", "openai")[1],
                         "%d\n" % PORTS["openai"])
        self.assertEqual(simctl("url", "anthropic")[1],
                         "http://127.0.0.1:%d\n" % PORTS["anthropic"])
        self.assertEqual(simctl("port", "dead")[1], "%d\n" % PORTS["dead"])
        env = dict(os.environ, IGNY8_SIM_STATE=STATE_DIR)
        out = subprocess.run([PYTHON, SIMCTL, "port", "ollama"], env=env,
                             capture_output=True, text=True)
        self.assertEqual(out.stdout, "%d\n" % PORTS["ollama"])

    def test_log_outputs(self):
        ollama_chat("[[sim any:tag=s1]]")
        ollama_chat("[[sim any:tag=s1 status=503]]")
        self.assertEqual(simctl("log", "--tag", "s1", "--count")[1], "2\n")
        self.assertEqual(simctl("log", "--tag", "s1", "--field",
                                "status")[1], "200\n503\n")
        self.assertEqual(simctl("log", "--tag", "s1", "--field",
                                "disconnect")[1], "false\nfalse\n")
        self.assertEqual(simctl("log", "--tag", "s1", "--field",
                                "path")[1], "/api/chat\n/api/chat\n")
        out = simctl("log", "--tag", "s1")[1]
        self.assertEqual(out.count("\n"), 1)
        self.assertEqual(len(json.loads(out)), 2)

    def test_copy_escaping(self):
        ollama_chat('quote " and backslash \\ [[sim any:tag=cp]]')
        out = simctl("--copy", "log", "--tag", "cp")[1]
        self.assertNotIn("\t", out)
        # Undo COPY's text-format escaping: the JSON comes back intact.
        unescaped = out.rstrip("\n").replace("\\\\", "\\")
        self.assertEqual(json.loads(unescaped)[0]["tag"], "cp")
        self.assertEqual(simctl("log", "--copy", "--count")[1], "1\n")

    def test_control_commands(self):
        self.assertEqual(simctl("status")[1],
                         '{"anthropic": "up", "comfyui": "up", '
                         '"ollama": "up", "openai": "up"}\n')
        self.assertEqual(simctl("down", "openai")[1],
                         '{"role": "openai", "up": false}\n')
        self.assertEqual(simctl("up", "openai")[1],
                         '{"role": "openai", "up": true}\n')
        out = simctl("config", "ollama", '{"models": ["a:1"]}')[1]
        self.assertEqual(json.loads(out)["models"], ["a:1"])
        self.assertEqual(simctl("reset")[1], '{"ok": true}\n')
        self.assertEqual(simctl("counts")[1],
                         '{"anthropic": 0, "comfyui": 0, "ollama": 0, '
                         '"openai": 0}\n')
        code, _, err = simctl("config", "ollama", "{bad")
        self.assertEqual(code, 1)
        self.assertIn("bad JSON", err)

    def test_wait_requests(self):
        threading.Timer(0.2, ollama_chat,
                        ["[[sim any:tag=w1 delay=0.2]]"]).start()
        self.assertEqual(simctl("wait-requests", "--tag", "w1",
                                "--timeout", "5")[1], "ok\n")
        self.assertEqual(simctl("wait-requests", "--tag", "w2",
                                "--timeout", "0.1")[1], "timeout\n")

    def test_unreachable(self):
        out = subprocess.run(
            [PYTHON, SIMCTL, "--state-dir", "/nonexistent", "status"],
            capture_output=True, text=True)
        self.assertEqual((out.returncode, out.stdout), (1, ""))
        self.assertIn("cannot read", out.stderr)


if __name__ == "__main__":
    unittest.main()
