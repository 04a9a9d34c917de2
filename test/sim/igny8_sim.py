#!/usr/bin/python3
"""
igny8_sim.py - backend protocol simulator for the igny8_ai test suite.

One process serves every backend igny8_ai talks to, each on its own
loopback port picked at start-up (never a fixed port: a machine may run two
copies of the suite):

    ollama      Ollama native API (/api/...) and its OpenAI-compatible layer
    openai      OpenAI chat completions, models, image generation
    anthropic   Anthropic Messages API
    comfyui     ComfyUI: node catalogue, prompt validation, one execution
                queue, history, output images, interrupts, cache
    control     JSON API to read the request log and steer the simulator

plus a "dead" port that is never listened on (connections are refused).
When everything listens, the port numbers are written atomically to
STATE_DIR/ports.json.

The wire formats follow docs/protocols.md.  Replies are
deterministic so that pg_regress expected files stay stable: a chat reply
is "<role> <model>: <reply text>", token counts are word counts.

Tests steer a backend through directives embedded in the prompt text:

    [[sim TARGET:ACTION ACTION ...]]

TARGET is a role name or "any"; each ACTION is "name" or "name=value".  See
README.md in this directory for the list of actions and the control API.

Python 3 standard library only.  Run with /usr/bin/python3.
"""

import argparse
import base64
import collections
import hashlib
import heapq
import http.server
import io
import itertools
import json
import os
import posixpath
import random
import re
import resource
import select
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import uuid
import zlib

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

BACKEND_ROLES = ("ollama", "openai", "anthropic", "comfyui")
DIRECTIVE_TARGETS = ("ollama", "openai", "anthropic", "comfyui", "any")

DEFAULT_REPLY = "Clouds are visible masses of water droplets."
THINKING_TEXT = "Let me think about clouds."
THINKING_SIGNATURE = "c2ltdWxhdGVkIHNpZ25hdHVyZQ=="  # Anthropic thinking
DEFAULT_OLLAMA_MODELS = ("qwen3:32b", "qwen3:30b-a3b", "qwen3:14b", "qwen3:8b")
OLLAMA_VERSION = "0.12.6"

DEFAULT_OPENAI_KEY = "sk-test-openai-0123456789"
DEFAULT_ANTHROPIC_KEY = "sk-ant-test-0123456789"

OPENAI_MODELS = ("gpt-4", "gpt-4-turbo", "gpt-4o", "gpt-4o-mini",
                 "gpt-3.5-turbo", "dall-e-2", "dall-e-3", "gpt-image-1")
# what Anthropic's /v1/models listed in November 2026: current ids are
# undated; an older model keeps its dated id
ANTHROPIC_MODELS = (("claude-opus-5-5", "Claude Opus 5.5"),
                    ("claude-sonnet-5-5", "Claude Sonnet 5.5"),
                    ("claude-haiku-5-5", "Claude Haiku 5.5"),
                    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5"))

# /v1/images/generations, per model: sizes, qualities, styles (None: not
# checked), the default size and quality, and the limits of n and of the
# prompt's length.
_GPT_IMAGE = {"size": ("1024x1024", "1024x1536", "1536x1024", "auto"),
              "quality": ("low", "medium", "high", "auto"),
              "background": ("transparent", "opaque", "auto"),
              "output_format": ("png", "jpeg", "webp"),
              "size_default": "auto", "quality_default": "auto",
              "n_max": 10, "prompt_max": 32000}
OPENAI_IMAGE_MODELS = {
    "gpt-image-1": _GPT_IMAGE, "gpt-image-1-mini": _GPT_IMAGE,
    "gpt-image-1.5": _GPT_IMAGE,
    "dall-e-2": {"size": ("256x256", "512x512", "1024x1024"),
                 "quality": ("standard",),
                 "size_default": "1024x1024", "quality_default": "standard",
                 "n_max": 10, "prompt_max": 1000},
    "dall-e-3": {"size": ("1024x1024", "1024x1792", "1792x1024"),
                 "quality": ("standard", "hd"), "style": ("vivid", "natural"),
                 "size_default": "1024x1024", "quality_default": "standard",
                 "n_max": 1, "prompt_max": 4000},
}
# Output tokens of one GPT image, by quality and size (OpenAI's table).
OPENAI_IMAGE_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
URL_IMAGES_KEPT = 1000          # images whose url still answers

# exec_error= kinds of the ComfyUI role (see ComfyEngine.failure).
COMFY_EXEC_ERRORS = ("oom", "runtime", "corrupt", "exception")

# Fixed timestamps for listings, so that they never change between runs.
LISTING_EPOCH = 1735689600                        # 2025-01-01T00:00:00Z
LISTING_TIME = "2025-01-01T00:00:00Z"

LOG_CAPACITY = 10000            # requests kept in the in-memory log
LOG_BODY_LIMIT = 4096           # bytes of a request body kept in the log
POLL_INTERVAL = 0.05            # disconnect polling while delaying (s)
OVERSIZE_CHUNK = 65536          # write size for oversize bodies

# Body of the "malformed" directive: announced as JSON, cut off mid-object.
MALFORMED_BODY = b'{"model": "x", "message": {'

# Placeholder that an oversize content stands in for while the JSON
# envelope is serialised; it survives json.dumps unchanged.
OVERSIZE_MARK = "@@igny8-sim-oversize@@"

# Reason phrases http.HTTPStatus does not know.
EXTRA_REASONS = {499: "Client Closed Request", 529: "Overloaded"}

# badutf8: a string carrying this placeholder goes on the wire with the
# placeholder replaced by raw invalid UTF-8 (two bytes that never occur in
# UTF-8, then a 3-byte sequence cut after its second byte).  It survives
# json.dumps unchanged, like OVERSIZE_MARK.
BADUTF8_MARK = "@@igny8-sim-badutf8@@"
BADUTF8_BYTES = b"\xff\xfe\xe2\x82"

# Fields badutf8= and nul= can spoil.
TAINT_FIELDS = ("content", "thinking", "model", "finish", "error")

# What echo_key= says when no key came with the request.
NO_KEY = "no-key"

# Filler words that pad an echoed key to key_offset bytes.
FILLER = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do "
          "eiusmod tempor incididunt ut labore et dolore magna aliqua ")

# The context-length errors of status=400 context, as each server words
# them.  Ollama: runner/ollamarunner/runner.go errorInputTooLong (relayed
# with 400), also llm/llama_server.go normalizeEmbeddingError.
OPENAI_CONTEXT_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, your "
    "messages resulted in 9000 tokens. Please reduce the length of the "
    "messages.")
ANTHROPIC_CONTEXT_MESSAGE = "prompt is too long: 210000 tokens > 200000 maximum"
OLLAMA_CONTEXT_MESSAGE = "the input length exceeds the context length"


def count_words(text):
    """Token count used everywhere: whitespace-separated words."""
    return len(text.split())


def rfc3339_now():
    """Current UTC time in RFC 3339 with nanoseconds, as Ollama writes it."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + \
        ".%09dZ" % frac


# --------------------------------------------------------------------------
# PNG images
# --------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The chunk that pads an image to image_bytes=N: ancillary (decoders skip
# it), private, safe to copy.  Its data is seeded noise, so a client that
# checks CRCs reads every byte of it.
PNG_PAD_CHUNK = b"igNy"

# What the png= directive does to an image.
PNG_FAULTS = ("notpng", "badcrc", "truncated", "wrongsize")

# png=notpng: what a proxy's error page looks like, served as image/png.
NOT_PNG_BODY = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n"
                b"<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
                b"</body>\r\n</html>\r\n")

_SHIFT_TABLES = []              # 256 translate tables: byte + k mod 256


def png_chunk(kind, data):
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def make_png(width=1, height=1, rgb=(135, 206, 235)):
    """Build a small valid RGB PNG of one colour (sky blue)."""
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", header) +
            png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


TINY_PNG = make_png()


def _gradient_idat(width, height, seed):
    """
    Compressed pixel rows of a gradient picked by SEED: each channel ramps
    across the width, and every row shifts all channels by a ramp down the
    height.  A row is one bytes.translate of the first, so 1024x1024 takes
    milliseconds.
    """
    if not _SHIFT_TABLES:
        ramp = bytes(range(256)) * 2
        _SHIFT_TABLES.extend(ramp[k:k + 256] for k in range(256))
    rnd = random.Random(seed)
    base = bytearray(3 * width)
    for channel in range(3):
        start, turns = rnd.randrange(256), rnd.randrange(1, 4)
        base[channel::3] = bytes((start + 256 * turns * x // width) & 255
                                 for x in range(width))
    down = rnd.randrange(1, 4)
    comp = zlib.compressobj(6)
    out, rows = [], []
    for y in range(height):
        rows.append(b"\x00")         # filter type None
        rows.append(base.translate(_SHIFT_TABLES[256 * down * y // height
                                                 & 255]))
        if len(rows) >= 128:
            out.append(comp.compress(b"".join(rows)))
            rows = []
    out.append(comp.compress(b"".join(rows)))
    out.append(comp.flush())
    return b"".join(out)


def _noise_idat(width, height, seed):
    """Seeded noise pixels, stored without compression (level 0)."""
    noise = random.Random(seed).randbytes(3 * width * height)
    row = 3 * width
    raw = b"".join(b"\x00" + noise[i:i + row]
                   for i in range(0, len(noise), row))
    return zlib.compress(raw, 0)


def render_png(width, height, seed, texts=(), fault=None, size_bytes=None):
    """
    The PNG of a simulated image: WIDTH x HEIGHT 8-bit RGB, its pixels a
    gradient chosen by SEED (any int or str), with a tEXt chunk for each
    (keyword, text) of TEXTS.  SIZE_BYTES makes it that many bytes when it
    would be smaller: the pixels become stored noise when that fits, and a
    private ancillary chunk of noise pads the rest.  FAULT is one of
    PNG_FAULTS: notpng (an HTML error page instead), badcrc (the IDAT CRC
    is wrong), truncated (the first half of the file only), wrongsize
    (IHDR and pixels are half the size asked for, at least 8x8).
    """
    if fault == "notpng":
        return NOT_PNG_BODY
    if fault == "wrongsize":
        width, height = max(8, width // 2), max(8, height // 2)
    seed = str(seed)
    head = PNG_SIGNATURE + png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    head += b"".join(png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" +
                               text.encode("latin-1", "replace"))
                     for key, text in texts)
    idat = png_chunk(b"IDAT", _gradient_idat(width, height, seed))
    end = png_chunk(b"IEND", b"")
    pad = b""
    if size_bytes is not None and \
            len(head) + len(idat) + len(end) < size_bytes:
        if height * (3 * width + 1) + len(head) + len(end) < size_bytes:
            idat = png_chunk(b"IDAT", _noise_idat(width, height, seed))
        short = size_bytes - len(head) - len(idat) - len(end)
        if short >= 12:
            pad = png_chunk(PNG_PAD_CHUNK,
                            random.Random(seed + "pad").randbytes(short - 12))
    if fault == "badcrc":
        idat = idat[:-4] + bytes(b ^ 0xFF for b in idat[-4:])
    data = head + idat + pad + end
    if fault == "truncated":
        data = data[:len(data) // 2]
    return data


class ImageSpec:
    """A simulated image, kept as its recipe and rendered when fetched."""

    __slots__ = ("width", "height", "seed", "texts", "fault", "size_bytes")

    def __init__(self, width, height, seed, texts=(), fault=None,
                 size_bytes=None):
        self.width, self.height, self.seed = width, height, str(seed)
        self.texts = tuple(texts)
        self.fault, self.size_bytes = fault, size_bytes

    def key(self):
        return (self.width, self.height, self.seed, self.texts, self.fault,
                self.size_bytes)


class PngCache:
    """The last few rendered images, so that a re-fetch costs nothing."""

    def __init__(self, entries=8):
        self.lock = threading.Lock()
        self.entries = entries
        self.data = collections.OrderedDict()

    def get(self, spec):
        key = spec.key()
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        data = render_png(spec.width, spec.height, spec.seed, spec.texts,
                          spec.fault, spec.size_bytes)
        with self.lock:
            self.data[key] = data
            while len(self.data) > self.entries:
                self.data.popitem(last=False)
        return data


PNG_CACHE = PngCache()


def new_id(prefix, length=24):
    return prefix + uuid.uuid4().hex[:length]


# --------------------------------------------------------------------------
# Directives
# --------------------------------------------------------------------------

DIRECTIVE_RE = re.compile(r"\[\[sim\s+([^\s:\]]*)\s*:(.*?)\]\]", re.S)


class Directive:
    """One [[sim TARGET:ACTIONS]] block, parsed."""

    def __init__(self, target, actions, errors):
        self.target = target
        self.actions = actions          # name -> converted value
        self.errors = errors            # human-readable parse problems


def _flag(value):
    if value is not None:
        raise ValueError("takes no value")
    return True


def _positive_int(value):
    n = int(value)
    if n < 0:
        raise ValueError("must be >= 0")
    return n


def _seconds(value):
    s = float(value)
    if s < 0 or s != s:
        raise ValueError("must be >= 0")
    return s


def _status(value):
    n = int(value)
    if not 100 <= n <= 599:
        raise ValueError("not an HTTP status")
    return n


def _word(value):
    if not value:
        raise ValueError("needs a value")
    return value


def _drop(value):
    if value in (None, "fin"):
        return "fin"
    if value == "rst":
        return "rst"
    raise ValueError("must be fin or rst")


def _think(value):
    if value not in ("field", "inline", "empty", "none"):
        raise ValueError("must be field, inline, empty or none")
    return value


def _reply(value):
    """Underscores become spaces, and a \\uXXXX escape the character it
    names, so that a prompt in ASCII (or a LATIN1 database) can ask for
    any text."""
    if value is None:
        raise ValueError("needs a value")
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)),
                  value.replace("_", " "))


def _echo_key(value):
    if value not in ("model", "error"):
        raise ValueError("must be model or error")
    return value


def _taint_field(value):
    if value not in TAINT_FIELDS:
        raise ValueError("must be one of " + ", ".join(TAINT_FIELDS))
    return value


def _png_fault(value):
    if value not in PNG_FAULTS:
        raise ValueError("must be one of " + ", ".join(PNG_FAULTS))
    return value


def _image_size(value):
    m = re.fullmatch(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})", value or "")
    if m is None:
        raise ValueError("must be WIDTHxHEIGHT")
    return int(m.group(1)), int(m.group(2))


def _exec_error(value):
    if value not in COMFY_EXEC_ERRORS:
        raise ValueError("must be one of " + ", ".join(COMFY_EXEC_ERRORS))
    return value


def _scope(value):
    if value not in ("prompt", "history", "view"):
        raise ValueError("must be prompt, history or view")
    return value


def _content_policy(value):
    if value in (None, "current"):
        return "current"
    if value == "legacy":
        return "legacy"
    raise ValueError("must be current or legacy")


# Action name -> converter of its textual value (None when absent).
ACTIONS = {
    "status": _status,
    "quota": _flag,
    "retry_after": _word,
    "retry_after_ms": _word,
    "times": _positive_int,
    "key": _word,
    "tag": _word,
    "delay": _seconds,
    "drop": _drop,
    "malformed": _flag,
    "oversize": _positive_int,
    "think": _think,
    "nothinksupport": _flag,
    "reply": _reply,
    "close": _flag,
    "redirect": _word,
    "echo_key": _echo_key,
    "key_offset": _positive_int,
    "plain": _flag,
    "escape_slash": _flag,
    "badutf8": _taint_field,
    "nul": _taint_field,
    "model_name": _reply,
    "thinking_text": _reply,
    "long_model": _positive_int,
    "cache_read": _positive_int,
    "cache_creation": _positive_int,
    "cached": _positive_int,
    "context": _flag,
    "png": _png_fault,
    "png_size": _image_size,
    "image_bytes": _positive_int,
    "content_policy": _content_policy,
    "step_delay": _seconds,
    "run_time": _seconds,
    "exec_error": _exec_error,
    "exec_node": _word,
    "on": _scope,
}


def parse_directives(text):
    """Return (text without directives, [Directive, ...])."""
    found = []
    for match in DIRECTIVE_RE.finditer(text):
        target = match.group(1).lower()
        actions, errors = {}, []
        if target not in DIRECTIVE_TARGETS:
            errors.append("unknown target %r" % target)
        for item in match.group(2).split():
            name, sep, value = item.partition("=")
            convert = ACTIONS.get(name)
            if convert is None:
                errors.append("unknown action %r" % name)
                continue
            try:
                actions[name] = convert(value if sep else None)
            except (TypeError, ValueError) as exc:
                # TypeError: a number action without a value
                errors.append("bad action %r: %s" % (item, exc))
        found.append(Directive(target, actions, errors))
    return DIRECTIVE_RE.sub("", text), found


class Behaviour:
    """What the directives obeyed by one role ask of one request."""

    def __init__(self):
        self.status = None
        self.quota = False
        self.retry_after = None
        self.retry_after_ms = None
        self.delay = None
        self.drop = None                # None, "fin" or "rst"
        self.malformed = False
        self.oversize = None
        self.think = None
        self.nothinksupport = False
        self.reply = None
        self.thinking_text = None       # Ollama's trace, else THINKING_TEXT
        self.close = False
        self.redirect = None            # path for a 302 Location header
        self.echo_key = None            # None, "model" or "error"
        self.key_offset = None
        self.plain = False
        self.escape_slash = False       # JSON bodies write "/" as "\/"
        self.badutf8 = None             # one of TAINT_FIELDS
        self.nul = None                 # one of TAINT_FIELDS
        self.model_name = None
        self.long_model = None
        self.cache_read = None
        self.cache_creation = None
        self.cached = None
        self.context = False
        self.png = None                 # one of PNG_FAULTS
        self.png_size = None            # (width, height)
        self.image_bytes = None
        self.content_policy = None      # "current" or "legacy"
        self.step_delay = None          # ComfyUI: seconds per sampler step
        self.run_time = None            # ComfyUI: seconds of sampling
        self.exec_error = None          # ComfyUI: one of COMFY_EXEC_ERRORS
        self.exec_node = None           # ComfyUI: the node that fails
        self.on = None                  # ComfyUI: prompt, history or view
        self.key = None
        self.tag = None
        self.errors = []

    def apply(self, actions):
        for name, value in actions.items():
            if name not in ("times", "key", "tag"):
                setattr(self, name, value)

    def failure_status(self):
        """The status to fail with, if any: status=N, else what context
        (400) or echo_key=error (401) imply."""
        if self.status is not None:
            return self.status
        if self.context:
            return 400
        if self.echo_key == "error":
            return 401
        return None

    def taints(self, field):
        return field in (self.badutf8, self.nul)

    def taint(self, field, text, at=None):
        """
        TEXT spoiled as badutf8=FIELD / nul=FIELD ask (else unchanged): a
        NUL character and/or BADUTF8_MARK inserted at AT (default: the
        middle).
        """
        if text is None or not self.taints(field):
            return text
        if at is None:
            at = len(text) // 2
        insert = ("\x00" if self.nul == field else "") + \
            (BADUTF8_MARK if self.badutf8 == field else "")
        return text[:at] + insert + text[at:]


def wire(text):
    """TEXT as UTF-8 bytes, with every BADUTF8_MARK made raw bad bytes."""
    data = text.encode("utf-8")
    if BADUTF8_MARK in text:
        data = data.replace(BADUTF8_MARK.encode(), BADUTF8_BYTES)
    return data


def filler(size):
    """SIZE bytes of filler words, ending in a space (ASCII)."""
    if size <= 0:
        return ""
    text = FILLER * (size // len(FILLER) + 1)
    return text[:size - 1] + " "


def resolve_behaviour(role, directives, state):
    """
    Merge the directives that ROLE obeys (its own and "any") into one
    Behaviour.  A directive with times=N is active only for the first N
    requests carrying its key (counted per role and key); once exhausted,
    its actions are ignored.  Later directives override earlier ones.
    The tag is recorded whichever role a directive addresses, so that one
    tag follows a call across fallbacks.
    """
    behaviour = Behaviour()
    mine = [d for d in directives if d.target in (role, "any")]

    # Each key counts once per request, however many directives carry it.
    keys = []
    for d in mine:
        if "key" in d.actions or "times" in d.actions:
            k = d.actions.get("key")
            if k not in keys:
                keys.append(k)
    seen = {k: state.bump_times(role, k) for k in keys}

    for d in directives:
        behaviour.errors.extend(d.errors)
        if behaviour.tag is None and "tag" in d.actions:
            behaviour.tag = d.actions["tag"]
    for d in mine:
        if behaviour.key is None and "key" in d.actions:
            behaviour.key = d.actions["key"]
        times = d.actions.get("times")
        if times is not None and seen[d.actions.get("key")] > times:
            continue
        behaviour.apply(d.actions)
    return behaviour


# --------------------------------------------------------------------------
# Shared state: request log, counters, run-time configuration
# --------------------------------------------------------------------------

class SimState:
    """Everything the handlers and the control API share, under one lock."""

    def __init__(self, defaults):
        self.lock = threading.Lock()
        self.defaults = defaults        # role -> default config dict
        self.reset()

    def reset(self):
        """Clear the log, the counters and the run-time configuration."""
        with self.lock:
            self.log = collections.deque(maxlen=LOG_CAPACITY)
            self.seq = 0
            self.counts = {role: 0 for role in BACKEND_ROLES}
            self.times = {}
            self.config = json.loads(json.dumps(self.defaults))
            self.loaded = {}            # ollama model -> load time

    # -- request log ------------------------------------------------------

    def open_record(self, role, method, path, query, headers,
                    client_port=None):
        with self.lock:
            self.seq += 1
            self.counts[role] += 1
            rec = {
                "seq": self.seq, "role": role, "method": method,
                "path": path, "query": query, "key": None, "tag": None,
                "headers": headers, "body": None, "status": None,
                "t_start": time.time(), "t_end": None,
                "disconnect": False, "t_disconnect": None,
                "directive_errors": [], "client_port": client_port,
            }
            self.log.append(rec)
            return rec

    def update(self, rec, **fields):
        with self.lock:
            rec.update(fields)

    def query_log(self, role=None, tag=None, key=None, path=None,
                  prompt_id=None):
        """Matching records, oldest first, serialised under the lock."""
        with self.lock:
            out = [r for r in self.log
                   if (role is None or r["role"] == role) and
                   (tag is None or r["tag"] == tag) and
                   (key is None or r["key"] == key) and
                   (path is None or r["path"] == path) and
                   (prompt_id is None or r.get("prompt_id") == prompt_id)]
            return json.loads(json.dumps(out))

    def get_counts(self):
        with self.lock:
            return dict(self.counts)

    def bump_times(self, role, key):
        """Count one more request carrying KEY at ROLE; return the count."""
        with self.lock:
            n = self.times.get((role, key), 0) + 1
            self.times[(role, key)] = n
            return n

    # -- configuration ----------------------------------------------------

    def role_config(self, role):
        with self.lock:
            return json.loads(json.dumps(self.config[role]))

    def change_config(self, role, changes):
        """Validate and apply CHANGES; return the new config or raise."""
        with self.lock:
            cfg = self.config[role]
            for name, value in changes.items():
                if role == "comfyui" and name in ("add_models",
                                                  "remove_models"):
                    if not isinstance(value, list) or \
                            not all(isinstance(m, str) for m in value):
                        raise ValueError("%s must be a list of strings"
                                         % name)
                    cfg["models"] = comfy_edit_models(
                        cfg["models"], name[:-len("_models")], value)
                    continue
                if name not in cfg:
                    raise ValueError("unknown setting %r for role %r"
                                     % (name, role))
                if name == "delay":
                    if value is None:
                        value = 0.0
                    if isinstance(value, bool) or \
                            not isinstance(value, (int, float)) or value < 0:
                        raise ValueError("delay must be a number >= 0")
                    value = float(value)
                elif name == "status":
                    if value == 0:
                        value = None
                    if value is not None and (
                            isinstance(value, bool) or
                            not isinstance(value, int) or
                            not 100 <= value <= 599):
                        raise ValueError("status must be an HTTP status, "
                                         "0 or null")
                elif name == "step_delay":
                    if isinstance(value, bool) or \
                            not isinstance(value, (int, float)) or value < 0:
                        raise ValueError("step_delay must be a number >= 0")
                    value = float(value)
                elif name == "old_server":
                    if not isinstance(value, bool):
                        raise ValueError("old_server must be true or false")
                elif name == "models" and role == "comfyui":
                    if not isinstance(value, dict):
                        raise ValueError("models must be an object: folder "
                                         "-> list of file names")
                    replaced = dict(cfg["models"])
                    for folder, files in value.items():
                        folder = COMFY_LEGACY_FOLDERS.get(folder, folder)
                        if folder not in COMFY_MODEL_FOLDERS:
                            raise ValueError("unknown model folder %r"
                                             % folder)
                        if not isinstance(files, list) or \
                                not all(isinstance(f, str) for f in files):
                            raise ValueError("models[%r] must be a list of "
                                             "strings" % folder)
                        replaced[folder] = sorted(set(files))
                    value = replaced
                elif name in ("models", "no_think_models", "extra_keys"):
                    if not isinstance(value, list) or \
                            not all(isinstance(m, str) for m in value):
                        raise ValueError("%s must be a list of strings"
                                         % name)
                cfg[name] = value
            return json.loads(json.dumps(cfg))

    def mark_loaded(self, model):
        with self.lock:
            self.loaded[model] = time.time()

    def mark_unloaded(self, model):
        with self.lock:
            self.loaded.pop(model, None)

    def loaded_models(self):
        with self.lock:
            return sorted(self.loaded.items())


def loggable_body(raw, payload):
    """The body as the log keeps it: parsed JSON if small, else text."""
    if not raw:
        return None
    if payload is not None:
        text = json.dumps(payload)
        if len(text) <= LOG_BODY_LIMIT:
            return payload
        shrunk = _shrink_strings(payload, 256)
        if len(json.dumps(shrunk)) <= LOG_BODY_LIMIT:
            return shrunk
    return raw[:LOG_BODY_LIMIT].decode("utf-8", "replace")


def _shrink_strings(obj, limit):
    if isinstance(obj, str):
        if len(obj) > limit:
            return obj[:limit] + "...(%d chars)" % len(obj)
        return obj
    if isinstance(obj, list):
        return [_shrink_strings(v, limit) for v in obj]
    if isinstance(obj, dict):
        return {k: _shrink_strings(v, limit) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------
# Reply text
# --------------------------------------------------------------------------

class Answer:
    """
    The text of a reply: either literal (possibly truncated to a token
    limit) or, for the oversize directive, SIZE generated bytes that are
    never held in memory at once.
    """

    def __init__(self, text=None, truncated=False, oversize=None,
                 behaviour=None):
        self.text = text                # clean: what the words count
        self.truncated = truncated
        self.oversize = oversize
        self.behaviour = behaviour or Behaviour()

    @classmethod
    def build(cls, role, model, behaviour, limit=None):
        if behaviour.oversize is not None:
            return cls(oversize=behaviour.oversize, behaviour=behaviour)
        text = "%s %s: %s" % (role, model, behaviour.reply or DEFAULT_REPLY)
        words = text.split()
        if limit is not None and limit >= 0 and len(words) > limit:
            return cls(" ".join(words[:limit]), truncated=True,
                       behaviour=behaviour)
        return cls(text, behaviour=behaviour)

    @property
    def words(self):
        if self.oversize is not None:
            # The generated text is "yyyyyyyyy " repeated.
            full, rest = divmod(self.oversize, 10)
            return full + (1 if rest else 0)
        return count_words(self.text)

    def literal(self):
        """The text itself (spoiled as badutf8/nul=content ask), or the
        oversize placeholder."""
        if self.oversize is not None:
            return OVERSIZE_MARK
        return self.behaviour.taint("content", self.text)

    def halves(self):
        """The text in two pieces (Anthropic's two blocks), the first
        spoiled as badutf8/nul=content ask."""
        mid = len(self.text) // 2
        return [self.behaviour.taint("content", self.text[:mid]),
                self.text[mid:]]

    def deltas(self):
        """Pieces for a streamed reply: words, or 64 KiB chunks.  The
        middle piece is spoiled as badutf8/nul=content ask."""
        if self.oversize is not None:
            return oversize_chunks(self.oversize)
        pieces = re.findall(r"\s*\S+\s*", self.text) or [self.text]
        mid = len(pieces) // 2
        pieces[mid] = self.behaviour.taint("content", pieces[mid])
        return iter(pieces)


def oversize_chunks(size, pattern="yyyyyyyyy "):
    """SIZE bytes of PATTERN repeated, in OVERSIZE_CHUNK pieces (str)."""
    block = pattern * (OVERSIZE_CHUNK // len(pattern))
    sent = 0
    while sent < size:
        n = min(len(block), size - sent)
        yield block[:n]
        sent += n


# --------------------------------------------------------------------------
# HTTP plumbing shared by the backend roles
# --------------------------------------------------------------------------

class ClientGone(Exception):
    """The client closed the connection while we were delaying."""


class ServerGoingDown(Exception):
    """The role was taken down while a request was in progress."""


class SimServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server for one role that can kill its connections."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address, handler, sim, role, backend=None):
        self.sim = sim
        self.role = role
        self.backend = backend
        self.going_down = False
        self.active = set()
        self.active_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self):
        # HTTPServer.server_bind calls getfqdn(), which may stall on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self):
        # An answer goes out in two writes (the headers, then the body).
        # With Nagle's algorithm the body waits for the client's delayed
        # ACK of the headers, about 40 ms on a kept-alive connection.
        # Ollama (Go's net/http) and ComfyUI (aiohttp) set TCP_NODELAY on
        # every connection they accept; so does the simulator.
        request, client_address = super().get_request()
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return request, client_address

    def process_request(self, request, client_address):
        with self.active_lock:
            self.active.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.active_lock:
            self.active.discard(request)
        super().shutdown_request(request)

    def kill_connections(self):
        """Shut down every open connection; blocked readers wake up."""
        with self.active_lock:
            conns = list(self.active)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        # A client that went away is business as usual here.
        if isinstance(sys.exc_info()[1], (OSError, ServerGoingDown)):
            return
        super().handle_error(request, client_address)


class SimHandler(http.server.BaseHTTPRequestHandler):
    """
    Request handler shared by the backend roles.  It reads and records the
    request, resolves directives, applies the delay and the role-wide
    failure setting, then hands over to the role's backend object, which
    answers through the send_* helpers below.
    """

    protocol_version = "HTTP/1.1"
    server_version = "igny8-sim"
    sys_version = ""
    timeout = 300                   # idle keep-alive connections

    def version_string(self):
        return self.server_version

    # Every method goes through the same path; backends route by method.
    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def log_message(self, fmt, *args):
        if self.server.sim.verbose:
            sys.stderr.write("igny8_sim %s: %s\n" %
                             (self.server.role, fmt % args))

    # -- request side -----------------------------------------------------

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self):
        server = self.server
        state = server.sim.state
        role = server.role
        split = urllib.parse.urlsplit(self.path)
        self.path_only = split.path
        self.query = urllib.parse.parse_qs(split.query)
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = headers[name] + ", " + value \
                if name in headers else value
        self.rec = state.open_record(role, self.command, split.path,
                                     split.query or None, headers,
                                     self.client_address[1])
        self.behaviour = Behaviour()
        self.request_id = new_id("req_sim", 20)
        try:
            try:
                self.raw_body = self._read_body()
            except ValueError:
                self.close_connection = True
                self.send_text(400, "bad request framing")
                return
            self.payload, self.json_error = None, None
            if self.raw_body:
                try:
                    self.payload = json.loads(self.raw_body)
                except ValueError as exc:
                    self.json_error = str(exc)
            state.update(self.rec,
                         body=loggable_body(self.raw_body, self.payload))

            # Directives come from the prompt text the backend points at.
            texts = server.backend.directive_texts(self)
            clean, directives = [], []
            for text in texts:
                stripped, found = parse_directives(text)
                clean.append(stripped)
                directives.extend(found)
            self.input_words = sum(count_words(t) for t in clean)
            directives = server.backend.select_directives(self, directives)
            self.behaviour = resolve_behaviour(role, directives, state)
            if self.behaviour.errors:
                sys.stderr.write("igny8_sim %s: directive problems: %s\n" %
                                 (role, "; ".join(self.behaviour.errors)))
            state.update(self.rec, key=self.behaviour.key,
                         tag=self.behaviour.tag,
                         directive_errors=self.behaviour.errors)

            config = state.role_config(role)
            delay = self.behaviour.delay
            if delay is None:
                delay = config["delay"]
            if delay:
                self.sleep_watching(delay)
            if config["status"]:
                server.backend.send_status_error(self, config["status"])
            else:
                server.backend.handle(self)
        except ClientGone:
            self.close_connection = True
            state.update(self.rec, status=499)
        except ServerGoingDown:
            self.close_connection = True
        except (ConnectionError, socket.timeout, OSError):
            # Writing failed: the client is gone.
            self.close_connection = True
            if not server.going_down:
                state.update(self.rec, disconnect=True,
                             t_disconnect=time.time())
        finally:
            state.update(self.rec, t_end=time.time())

    def sleep_watching(self, seconds):
        """
        Sleep, watching the socket: if the client closes the connection
        (readable with nothing to read), record the disconnect and raise
        ClientGone.  Polls every POLL_INTERVAL seconds.  A backend whose
        server finishes a request it has read when its client goes away
        (finishes_after_disconnect) only records the disconnect and sleeps
        on: the request is then handled, and its answer goes nowhere.
        """
        deadline = time.monotonic() + seconds
        sock = self.connection
        # poll, not select: select fails on descriptors >= 1024.
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLHUP |
                        select.POLLERR)
        watching = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.server.going_down:
                raise ServerGoingDown()
            step = min(POLL_INTERVAL, remaining)
            if not watching:
                time.sleep(step)        # the client left: sleep on
                continue
            if not poller.poll(step * 1000):
                continue
            if self.server.going_down:
                raise ServerGoingDown()
            try:
                data = sock.recv(1, socket.MSG_PEEK)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                self.server.sim.state.update(self.rec, disconnect=True,
                                             t_disconnect=time.time())
                if self.server.backend.finishes_after_disconnect:
                    watching = False
                    continue
                raise ClientGone()
            # The client sent more data (pipelining): just wait.
            time.sleep(min(POLL_INTERVAL,
                           max(0.0, deadline - time.monotonic())))

    # -- response side ----------------------------------------------------

    def _start(self, status, headers):
        """Status line and headers, with the directive-driven extras."""
        # the answer leaves now: a request its client sends because of it
        # starts later (simctl max-concurrency counts up to here)
        self.server.sim.state.update(self.rec, t_reply=time.time())
        reason = EXTRA_REASONS.get(status)
        self.send_response(status, reason)
        b = self.behaviour
        for name, value in headers:
            self.send_header(name, value)
        for name, value in self.server.backend.extra_headers(self, status):
            self.send_header(name, value)
        if b.retry_after is not None:
            self.send_header("retry-after", b.retry_after)
        if b.retry_after_ms is not None:
            self.send_header("retry-after-ms", b.retry_after_ms)
        if b.close:
            self.send_header("Connection", "close")   # sets close_connection
        self.end_headers()
        self.server.sim.state.update(self.rec, status=status)

    def _abort(self):
        """End the connection mid-body, as the drop directive asks."""
        self.close_connection = True
        conn = self.connection
        if self.behaviour.drop == "rst":
            # Linger 0: close() sends RST (unread data at the peer may be
            # discarded with it).
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            struct.pack("ii", 1, 0))
            # The socket really closes only once its file objects are
            # closed too; the stdlib still flushes wfile afterwards, so
            # leave it harmless stand-ins.
            self.rfile.close()
            self.wfile.close()
            conn.close()
            self.rfile, self.wfile = io.BytesIO(), io.BytesIO()
        else:
            conn.shutdown(socket.SHUT_RDWR)

    def send_bytes(self, status, body, content_type, headers=(),
                   length=None):
        """
        Send a body with Content-Length.  BODY is bytes, or an iterable of
        bytes whose total is LENGTH.  Honours drop (half the body, then the
        connection is cut) and HEAD (no body).
        """
        if isinstance(body, (bytes, bytearray)):
            length = len(body)
            body = [bytes(body)]
        self._start(status, list(headers) + [
            ("Content-Type", content_type), ("Content-Length", str(length))])
        if self.command == "HEAD":
            return
        budget = length // 2 if self.behaviour.drop else None
        sent = 0
        for part in body:
            if budget is not None:
                part = part[:budget - sent]
            if part:
                self.wfile.write(part)
                sent += len(part)
            if budget is not None and sent >= budget:
                break
        if budget is not None:
            self._abort()

    def send_json(self, status, obj, headers=(), oversize=None,
                  pattern="yyyyyyyyy ",
                  content_type="application/json; charset=utf-8",
                  ensure_ascii=False):
        """
        Send OBJ as JSON (non-ASCII raw in UTF-8, unless ENSURE_ASCII).
        With OVERSIZE (a byte count), the first OVERSIZE_MARK string inside
        OBJ is replaced on the wire by that many bytes of PATTERN repeated,
        generated chunk by chunk.
        """
        text = json.dumps(obj, ensure_ascii=ensure_ascii)
        if self.behaviour.escape_slash:
            # as PHP's json_encode does; "/" stands only inside strings
            text = text.replace("/", "\\/")
        if oversize is None:
            return self.send_bytes(status, wire(text), content_type, headers)
        head, tail = text.split(OVERSIZE_MARK, 1)
        head, tail = wire(head), wire(tail)
        parts = itertools.chain(
            [head], (c.encode("ascii")
                     for c in oversize_chunks(oversize, pattern)), [tail])
        return self.send_bytes(status, parts, content_type, headers,
                               length=len(head) + oversize + len(tail))

    def send_text(self, status, text, headers=()):
        self.send_bytes(status, wire(text), "text/plain; charset=utf-8",
                        headers)

    def send_malformed(self):
        self.send_bytes(200, MALFORMED_BODY, "application/json")

    def send_stream(self, status, content_type, events, headers=()):
        """
        Send EVENTS (iterable of bytes) with chunked transfer encoding, as
        Ollama (NDJSON) and the OpenAI/Anthropic SSE endpoints do.  With
        drop, half of the events are sent and the connection is cut.
        """
        if self.request_version == "HTTP/1.0":
            # No chunked encoding for HTTP/1.0: delimit by closing.
            self.close_connection = True
            self._start(status, list(headers) + [
                ("Content-Type", content_type), ("Connection", "close")])
            if self.command != "HEAD":
                for event in events:
                    self.wfile.write(event)
            return
        if self.behaviour.drop:
            events = list(events)
            cut = max(1, len(events) // 2)
        else:
            cut = None
        self._start(status, list(headers) + [
            ("Content-Type", content_type), ("Transfer-Encoding", "chunked")])
        if self.command == "HEAD":
            return
        for i, event in enumerate(events):
            if cut is not None and i == cut:
                self._abort()
                return
            if event:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.write(b"0\r\n\r\n")


def ndjson(obj):
    return wire(json.dumps(obj, ensure_ascii=False)) + b"\n"


def sse(obj, event=None):
    data = obj if isinstance(obj, str) else json.dumps(obj,
                                                      ensure_ascii=False)
    head = "event: %s\n" % event if event else ""
    return wire(head + "data: " + data + "\n\n")


def message_texts(messages):
    """Text of chat messages: string contents and text parts/blocks."""
    if not isinstance(messages, list):
        return
    for message in messages:
        if not isinstance(message, dict):
            continue
        yield from content_texts(message.get("content"))


def content_texts(content):
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def all_strings(obj):
    """Every string value inside a JSON document (ComfyUI graphs)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, list):
        for v in obj:
            yield from all_strings(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from all_strings(v)


# --------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------

class Backend:
    """Base class of a simulated backend: routing and common hooks."""

    role = None
    # a request whose client went away during its delay is still handled
    finishes_after_disconnect = False

    def __init__(self, sim):
        self.sim = sim

    def routes(self):
        """{(method, path): function(ex)}; HEAD uses the GET entry."""
        return {}

    def route(self, method, path):
        return self.routes().get((method, path))

    def handle(self, ex):
        method = "GET" if ex.command == "HEAD" else ex.command
        fn = self.route(method, ex.path_only)
        if fn is None:
            return self.not_found(ex)
        return fn(ex)

    def directive_texts(self, ex):
        """Strings of this request that may carry directives."""
        return []

    def select_directives(self, ex, directives):
        """The directives of this request's texts that it obeys."""
        return directives

    def extra_headers(self, ex, status):
        """Headers every response of this role carries."""
        return []

    def send_status_error(self, ex, status, model=None):
        """Answer with STATUS and this protocol's error body for it."""
        raise NotImplementedError

    def not_found(self, ex):
        raise NotImplementedError

    # -- what the echo_key, model_name, badutf8 and nul directives ask ----

    def received_key(self, ex):
        """The API key the request came with (Bearer token), or None."""
        auth = ex.headers.get("Authorization")
        if auth is not None and auth[:7].lower() == "bearer ":
            return auth[7:]
        return None

    def reply_model(self, ex, model):
        """The model field of a successful answer to a request for MODEL."""
        b = ex.behaviour
        if b.echo_key == "model":
            model = self.received_key(ex) or NO_KEY
        elif b.long_model is not None:
            model = "m" + "\u00e9" * b.long_model
        elif b.model_name is not None:
            model = b.model_name
        return b.taint("model", model)

    def error_message(self, ex, message):
        """MESSAGE of a status error, as echo_key=error, badutf8=error
        and nul=error ask."""
        b = ex.behaviour
        if b.echo_key != "error":
            return b.taint("error", message)
        key = self.received_key(ex) or NO_KEY
        if b.key_offset is None:
            head = "Incorrect API key provided: "
            tail = ". You can find your API key in your account settings."
        else:
            head, tail = filler(b.key_offset), " is not a valid API key."
        # spoil the text after the key: the key stays whole, at its offset
        return b.taint("error", head + key + tail,
                       len(head) + len(key) + len(tail) // 2)

    def send_error_body(self, ex, status, body):
        """
        Send the protocol's error BODY (a dict whose message is
        body["error"]["message"] or body["error"]) for STATUS, with the
        message changed as error_message says; with plain, the message
        alone as text/plain instead.
        """
        err = body.get("error")
        holder, field = (err, "message") if isinstance(err, dict) \
            else (body, "error")
        message = self.error_message(ex, holder[field])
        if ex.behaviour.plain:
            return ex.send_text(status, message)
        holder[field] = message
        ex.send_json(status, body)

    def directive_failure(self, ex, model=None):
        """
        Apply the failure directives that come after validation: status
        and malformed.  Return True when a response was sent.
        """
        b = ex.behaviour
        if b.redirect is not None:
            # a client must not follow this: it would leave the provider
            ex.send_bytes(302, b'{"moved": true}', "application/json",
                          headers=[("Location", b.redirect)])
            return True
        status = b.failure_status()
        if status is not None and status != 200:
            self.send_status_error(ex, status, model)
            return True
        if b.malformed:
            ex.send_malformed()
            return True
        return False


# -- OpenAI-shaped pieces shared by the OpenAI role and Ollama's /v1 --------

def openai_error_body(message, type_, param=None, code=None):
    return {"error": {"message": message, "type": type_, "param": param,
                      "code": code}}


def py_quote(value):
    """VALUE as a Python repr would quote it in OpenAI's messages."""
    return repr(value) if isinstance(value, str) else json.dumps(value)


def json_type_name(value):
    """What OpenAI calls the JSON type of VALUE in its messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def openai_choices(values, last="and"):
    """'a', 'b', and 'c' (two: 'a' and 'b'), as OpenAI lists them."""
    quoted = ["'%s'" % v for v in values]
    if len(quoted) <= 2:
        return (" %s " % last).join(quoted)
    return ", ".join(quoted[:-1]) + ", %s " % last + quoted[-1]


def openai_policy_error(model, flavour, request_id):
    """The 400 of a safety rejection (content_policy directive)."""
    if model.startswith("gpt-image"):
        body = openai_error_body(
            "Your request was rejected by the safety system. If you believe "
            "this is an error, contact us at help.openai.com and include the "
            "request ID %s." % request_id, "image_generation_user_error",
            None, "moderation_blocked")
        body["error"]["moderation_details"] = {"moderation_stage": "input",
                                               "categories": ["violence"]}
        return body
    return openai_error_body(
        "Your request was rejected as a result of our safety system. Your "
        "prompt may contain text that is not allowed by our safety system.",
        "invalid_request_error" if flavour == "legacy"
        else "image_generation_user_error", None,
        "content_policy_violation")


def openai_usage(ex, answer, full_usage):
    """The usage object; cached=N fills prompt_tokens_details."""
    usage = {"prompt_tokens": ex.input_words,
             "completion_tokens": answer.words,
             "total_tokens": ex.input_words + answer.words}
    cached = ex.behaviour.cached
    if full_usage:
        usage["prompt_tokens_details"] = {"cached_tokens": cached or 0,
                                          "audio_tokens": 0}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0}
    elif cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def openai_completion(ex, model, answer, content, finish, *,
                      fingerprint, reasoning=None, full_usage,
                      reasoning_field="reasoning"):
    """A non-streaming chat.completion object."""
    message = {"role": "assistant", "content": content}
    if reasoning is not None:
        message[reasoning_field] = reasoning
    if full_usage:
        message["refusal"] = None
        message["annotations"] = []
    choice = {"index": 0, "message": message}
    if full_usage:
        choice["logprobs"] = None
    choice["finish_reason"] = finish
    usage = openai_usage(ex, answer, full_usage)
    body = {"id": new_id("chatcmpl-", 29), "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage,
            "system_fingerprint": fingerprint}
    if full_usage:
        body["service_tier"] = "default"
    return body


def openai_stream_events(ex, model, answer, prefix_pieces, finish, *,
                         fingerprint, reasoning=None, include_usage,
                         reasoning_field="reasoning"):
    """SSE chunks of a streamed chat completion, ending in [DONE]."""
    cid = new_id("chatcmpl-", 29)
    created = int(time.time())

    def chunk(delta, finish_reason=None, **extra):
        body = {"id": cid, "object": "chat.completion.chunk",
                "created": created, "model": model,
                "system_fingerprint": fingerprint,
                "choices": [{"index": 0, "delta": delta,
                             "finish_reason": finish_reason}]}
        body.update(extra)
        return sse(body)

    yield chunk({"role": "assistant", "content": ""})
    if reasoning is not None:
        yield chunk({"role": "assistant", "content": "",
                     reasoning_field: reasoning})
    for piece in prefix_pieces:
        yield chunk({"content": piece})
    for piece in answer.deltas():
        yield chunk({"content": piece})
    yield chunk({}, finish)
    if include_usage:
        usage = openai_usage(ex, answer, False)
        body = {"id": cid, "object": "chat.completion.chunk",
                "created": created, "model": model,
                "system_fingerprint": fingerprint, "choices": [],
                "usage": usage}
        yield sse(body)
    yield sse("[DONE]")


# -- Ollama -----------------------------------------------------------------

def ollama_full_name(name):
    """name[:tag] with the tag defaulting to latest."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def ollama_model_details(name):
    """Deterministic /api/tags entry for an installed model."""
    base = name.rsplit("/", 1)[-1].split(":")[0]
    tag = name.split(":", 1)[1] if ":" in name else "latest"
    family = re.sub(r"[^a-z0-9].*$", "", base.lower()) or base
    m = re.search(r"(\d+(?:\.\d+)?)b", tag)
    billions = float(m.group(1)) if m else 8.0
    digest = hashlib.sha256(name.encode()).hexdigest()
    details = {"parent_model": "", "format": "gguf", "family": family,
               "families": [family],
               "parameter_size": "%gB" % billions,
               "quantization_level": "Q4_K_M"}
    return {"name": name, "model": name,
            "modified_at": LISTING_TIME.replace("Z", ".000000000Z"),
            "size": int(billions * 600_000_000), "digest": digest,
            "details": details}


class OllamaBackend(Backend):
    role = "ollama"

    # Messages of protocols.md 1.4 for the status directive.
    MESSAGES = {
        400: "invalid character 'x' looking for beginning of value",
        403: "forbidden",
        404: "model '{model}' not found",
        499: "request canceled",
        500: "llama runner process has terminated: cudaMalloc failed: "
             "out of memory",
        502: "cloud model unreachable",
        503: "server busy, please try again.  maximum pending requests "
             "exceeded",
    }

    def routes(self):
        return {
            ("GET", "/"): self.root,
            ("GET", "/api/version"): self.version,
            ("GET", "/api/tags"): self.tags,
            ("GET", "/api/ps"): self.ps,
            ("POST", "/api/chat"): self.chat,
            ("POST", "/api/generate"): self.generate,
            ("POST", "/v1/chat/completions"): self.v1_chat,
            ("GET", "/v1/models"): self.v1_models,
        }

    def directive_texts(self, ex):
        p = ex.payload
        if not isinstance(p, dict) or ex.command != "POST":
            return []
        if ex.path_only in ("/api/chat", "/v1/chat/completions"):
            return list(message_texts(p.get("messages")))
        if ex.path_only == "/api/generate":
            return [t for t in (p.get("system"), p.get("prompt"))
                    if isinstance(t, str)]
        return []

    # -- errors -----------------------------------------------------------

    def message_for(self, status, model):
        text = self.MESSAGES.get(status)
        if text is None:
            try:
                text = http.HTTPStatus(status).phrase.lower()
            except ValueError:
                text = "simulated error %d" % status
        return text.replace("{model}", model or "")

    @staticmethod
    def error_body(ex, status, message):
        """An error body in the shape of the endpoint being served."""
        if ex.path_only.startswith("/v1/"):
            type_ = {400: "invalid_request_error",
                     404: "not_found_error"}.get(status, "api_error")
            return openai_error_body(message, type_)
        return {"error": message}

    def error(self, ex, status, message):
        ex.send_json(status, self.error_body(ex, status, message))

    def send_status_error(self, ex, status, model=None):
        if model is None and isinstance(ex.payload, dict):
            model = ex.payload.get("model")
            model = model if isinstance(model, str) else None
        if status == 400 and ex.behaviour.context:
            message = OLLAMA_CONTEXT_MESSAGE
        else:
            message = self.message_for(status, model)
        self.send_error_body(ex, status,
                             self.error_body(ex, status, message))

    def not_found(self, ex):
        ex.send_text(404, "404 page not found")

    # -- discovery --------------------------------------------------------

    def installed(self):
        return self.sim.state.role_config("ollama")["models"]

    def is_installed(self, model):
        full = ollama_full_name(model)
        return any(ollama_full_name(m) == full for m in self.installed())

    def root(self, ex):
        ex.send_text(200, "Ollama is running")

    def version(self, ex):
        ex.send_json(200, {"version": OLLAMA_VERSION})

    def tags(self, ex):
        no_think = self.sim.state.role_config("ollama")["no_think_models"]
        models = []
        for name in self.installed():
            entry = ollama_model_details(name)
            entry["capabilities"] = ["completion"] if name in no_think \
                else ["completion", "thinking"]
            models.append(entry)
        ex.send_json(200, {"models": models})

    def ps(self, ex):
        models = []
        for name, loaded_at in self.sim.state.loaded_models():
            entry = ollama_model_details(name)
            stamp = time.gmtime(loaded_at + 300)
            entry.update({
                "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp),
                "size_vram": entry["size"], "context_length": 4096})
            models.append(entry)
        ex.send_json(200, {"models": models})

    # -- generation -------------------------------------------------------

    def validate(self, ex):
        """
        Checks common to /api/chat and /api/generate.  Returns the model
        name, or None after having sent the error.
        """
        p = ex.payload
        if not ex.raw_body:
            self.error(ex, 400, "missing request body")
            return None
        if ex.json_error is not None or not isinstance(p, dict):
            self.error(ex, 400, "invalid request body: %s" %
                       (ex.json_error or "expected a JSON object"))
            return None
        model = p.get("model")
        if not model:
            self.error(ex, 400, "model is required")
            return None
        if not isinstance(model, str):
            self.error(ex, 400, "invalid model name")
            return None
        if not self.is_installed(model):
            self.error(ex, 404, "model '%s' not found" % model)
            return None
        think = p.get("think")
        wants_think = think is True or (isinstance(think, str) and think)
        no_think = self.sim.state.role_config("ollama")["no_think_models"]
        if wants_think and (ex.behaviour.nothinksupport or
                            ollama_full_name(model) in
                            {ollama_full_name(m) for m in no_think}):
            self.error(ex, 400, '"%s" does not support thinking' % model)
            return None
        stream = p.get("stream")
        if stream is not None and not isinstance(stream, bool):
            self.error(ex, 400, "json: cannot unmarshal %s into Go struct "
                       "field .stream of type bool" % type(stream).__name__)
            return None
        return model

    @staticmethod
    def stats(ex, answer):
        """Timing and count fields; zero counters are omitted."""
        prompt_ns = ex.input_words * 1_000_000
        eval_ns = answer.words * 10_000_000
        load_ns = 1_000_000
        fields = {"total_duration": load_ns + prompt_ns + eval_ns + 500_000,
                  "load_duration": load_ns,
                  "prompt_eval_count": ex.input_words,
                  "prompt_eval_duration": prompt_ns,
                  "eval_count": answer.words, "eval_duration": eval_ns}
        return {k: v for k, v in fields.items() if v}

    @staticmethod
    def thinking_parts(behaviour):
        """
        (thinking field or None, content prefix) for the thinking shape
        the directives ask; badutf8/nul=thinking spoil the thinking text,
        and imply think=field when no shape is given.
        """
        shape = behaviour.think
        if shape is None and behaviour.taints("thinking"):
            shape = "field"
        text = behaviour.taint("thinking",
                               behaviour.thinking_text or THINKING_TEXT)
        if shape == "field":
            return text, ""
        if shape == "inline":
            return None, "<think>" + text + "</think>\n\n"
        if shape == "empty":
            return None, "<think>\n\n</think>\n\n"
        return None, ""

    @staticmethod
    def prefix_pieces(prefix):
        return [p for p in re.split(r"(<think>|</think>)", prefix) if p]

    def num_predict(self, p):
        options = p.get("options")
        if isinstance(options, dict):
            n = options.get("num_predict")
            if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
                return n
        return None

    def load_reply(self, ex, model, text_field):
        """Empty prompt / messages: load (or unload) the model."""
        p = ex.payload
        keep_alive = p.get("keep_alive")
        unload = keep_alive in (0, "0", "0s")
        if unload:
            self.sim.state.mark_unloaded(model)
        else:
            self.sim.state.mark_loaded(model)
        body = {"model": self.reply_model(ex, model),
                "created_at": rfc3339_now()}
        if text_field == "message":
            body["message"] = {"role": "assistant", "content": ""}
        else:
            body["response"] = ""
        body.update({"done_reason": ex.behaviour.taint(
            "finish", "unload" if unload else "load"), "done": True})
        ex.send_json(200, body)

    def chat(self, ex):
        self._generate(ex, "message")

    def generate(self, ex):
        self._generate(ex, "response")

    def _generate(self, ex, text_field):
        model = self.validate(ex)
        if model is None:
            return
        p = ex.payload
        if text_field == "message":
            messages = p.get("messages")
            if messages is not None and not isinstance(messages, list):
                return self.error(ex, 400, "json: cannot unmarshal messages")
            empty = not messages
        else:
            empty = not p.get("prompt")
        if self.directive_failure(ex, model):
            return
        if empty:
            return self.load_reply(ex, model, text_field)

        self.sim.state.mark_loaded(model)
        answer = Answer.build("ollama", model, ex.behaviour,
                              self.num_predict(p))
        done_reason = ex.behaviour.taint(
            "finish", "length" if answer.truncated else "stop")
        thinking, prefix = self.thinking_parts(ex.behaviour)
        model = self.reply_model(ex, model)

        if p.get("stream", True) is False:
            body = {"model": model, "created_at": rfc3339_now()}
            if text_field == "message":
                body["message"] = {"role": "assistant",
                                   "content": prefix + answer.literal()}
                if thinking is not None:
                    body["message"]["thinking"] = thinking
            else:
                body["response"] = prefix + answer.literal()
                if thinking is not None:
                    body["thinking"] = thinking
            body.update({"done": True, "done_reason": done_reason})
            if text_field == "response":
                body["context"] = list(range(1, ex.input_words +
                                             min(answer.words, 64) + 1))
            body.update(self.stats(ex, answer))
            return ex.send_json(200, body, oversize=answer.oversize)

        ex.send_stream(200, "application/x-ndjson",
                       self._stream_lines(ex, model, text_field, answer,
                                          thinking, prefix, done_reason))

    def _stream_lines(self, ex, model, text_field, answer, thinking, prefix,
                      done_reason):
        def line(content, thought=None, **extra):
            body = {"model": model, "created_at": rfc3339_now()}
            if text_field == "message":
                body["message"] = {"role": "assistant", "content": content}
                if thought is not None:
                    body["message"]["thinking"] = thought
            else:
                body["response"] = content
                if thought is not None:
                    body["thinking"] = thought
            body["done"] = False
            body.update(extra)
            return ndjson(body)

        if thinking is not None:
            for piece in re.findall(r"\S+\s*", thinking):
                yield line("", piece)
        for piece in self.prefix_pieces(prefix):
            yield line(piece)
        for piece in answer.deltas():
            yield line(piece)
        final = {"done": True, "done_reason": done_reason}
        if text_field == "response":
            final["context"] = list(range(1, ex.input_words +
                                          min(answer.words, 64) + 1))
        final.update(self.stats(ex, answer))
        yield line("", **final)

    # -- OpenAI-compatible layer (protocols.md 1.7) ------------------------

    def v1_models(self, ex):
        data = [{"id": m, "object": "model", "created": LISTING_EPOCH,
                 "owned_by": m.split("/", 1)[0] if "/" in m else "library"}
                for m in self.installed()]
        ex.send_json(200, {"object": "list", "data": data})

    def v1_chat(self, ex):
        p = ex.payload
        if ex.json_error is not None or not isinstance(p, dict):
            return self.error(ex, 400, "invalid request body: %s" %
                              (ex.json_error or "expected a JSON object"))
        model = p.get("model")
        if not isinstance(model, str) or not model:
            return self.error(ex, 400, "model is required")
        if not self.is_installed(model):
            return self.error(ex, 404, "model '%s' not found" % model)
        effort = p.get("reasoning_effort")
        if isinstance(p.get("reasoning"), dict):
            effort = p["reasoning"].get("effort", effort)
        if isinstance(effort, str) and effort != "none" and \
                ex.behaviour.nothinksupport:
            return self.error(ex, 400,
                              '"%s" does not support thinking' % model)
        messages = p.get("messages")
        if not isinstance(messages, list) or not messages:
            return self.error(ex, 400, "invalid message format")
        if self.directive_failure(ex, model):
            return
        self.sim.state.mark_loaded(model)
        limit = p.get("max_tokens", p.get("max_completion_tokens"))
        if not isinstance(limit, int) or isinstance(limit, bool):
            limit = None
        answer = Answer.build("ollama", model, ex.behaviour, limit)
        finish = ex.behaviour.taint(
            "finish", "length" if answer.truncated else "stop")
        reasoning, prefix = self.thinking_parts(ex.behaviour)
        model = self.reply_model(ex, model)
        if p.get("stream") is True:
            so = p.get("stream_options")
            include = isinstance(so, dict) and so.get("include_usage") is True
            events = openai_stream_events(
                ex, model, answer, self.prefix_pieces(prefix), finish,
                fingerprint="fp_ollama", reasoning=reasoning,
                include_usage=include)
            return ex.send_stream(200, "text/event-stream", events)
        body = openai_completion(ex, model, answer, prefix + answer.literal(),
                                 finish, fingerprint="fp_ollama",
                                 reasoning=reasoning, full_usage=False)
        ex.send_json(200, body, oversize=answer.oversize)


# -- OpenAI -----------------------------------------------------------------

class OpenAIBackend(Backend):
    role = "openai"

    def __init__(self, sim):
        super().__init__(sim)
        self.images_lock = threading.Lock()
        self.url_images = collections.OrderedDict()     # name -> ImageSpec

    def routes(self):
        return {
            ("POST", "/v1/chat/completions"): self.chat,
            ("GET", "/v1/models"): self.models,
            ("POST", "/v1/images/generations"): self.images,
        }

    def route(self, method, path):
        if method == "GET" and re.fullmatch(r"/images/[\w.-]+\.png", path):
            return self.image_file
        return super().route(method, path)

    def directive_texts(self, ex):
        p = ex.payload
        if not isinstance(p, dict) or ex.command != "POST":
            return []
        if ex.path_only == "/v1/chat/completions":
            return list(message_texts(p.get("messages")))
        if ex.path_only == "/v1/images/generations":
            return [p["prompt"]] if isinstance(p.get("prompt"), str) else []
        return []

    def extra_headers(self, ex, status):
        limited = status == 429
        reset = (ex.behaviour.retry_after or "1") + "s" if limited else "12ms"
        # the id a safety rejection's message names, else a fresh one
        rid = getattr(ex, "openai_request_id", None) or new_id("req_", 32)
        return [("x-request-id", rid),
                ("openai-processing-ms", "42"),
                ("openai-version", "2020-10-01"),
                ("x-ratelimit-limit-requests", "500"),
                ("x-ratelimit-limit-tokens", "30000"),
                ("x-ratelimit-remaining-requests", "0" if limited else "499"),
                ("x-ratelimit-remaining-tokens",
                 "0" if limited else "29000"),
                ("x-ratelimit-reset-requests", reset),
                ("x-ratelimit-reset-tokens", reset)]

    # -- errors -----------------------------------------------------------

    @staticmethod
    def received_key(ex):
        auth = ex.headers.get("Authorization")
        if auth is None:
            return None
        return auth[7:] if auth[:7].lower() == "bearer " else auth

    def auth_error_body(self, ex):
        key = self.received_key(ex)
        if key is None:
            return openai_error_body(
                "You didn't provide an API key. You need to provide your "
                "API key in an Authorization header using Bearer auth "
                "(i.e. Authorization: Bearer YOUR_KEY), or as the password "
                "field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username and "
                "password. You can obtain an API key from "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error", None, "invalid_api_key")
        # The full key is echoed on purpose: igny8_ai must redact it.
        return openai_error_body(
            "Incorrect API key provided: %s. You can find your API key at "
            "https://platform.openai.com/account/api-keys." % key,
            "invalid_request_error", None, "invalid_api_key")

    def check_auth(self, ex):
        """True when the bearer key is right; else sends 401."""
        key = self.received_key(ex)
        if key == self.sim.openai_key or \
                key in self.sim.state.role_config("openai")["extra_keys"]:
            return True
        ex.send_json(401, self.auth_error_body(ex))
        return False

    def send_status_error(self, ex, status, model=None):
        if model is None and isinstance(ex.payload, dict):
            model = ex.payload.get("model")
        model = model if isinstance(model, str) else "gpt-4"
        wait = ex.behaviour.retry_after or "1"
        if status == 401:
            body = self.auth_error_body(ex)
        elif status == 400 and ex.behaviour.context:
            body = openai_error_body(OPENAI_CONTEXT_MESSAGE,
                                     "invalid_request_error", "messages",
                                     "context_length_exceeded")
        elif status == 400 and ex.behaviour.quota:
            # the spending limit an organisation set is reached: what the
            # images endpoint (and chat) answer, a 400, not the 429
            body = openai_error_body("Billing hard limit has been reached",
                                     "invalid_request_error", None,
                                     "billing_hard_limit_reached")
        elif status == 429 and ex.behaviour.quota:
            body = openai_error_body(
                "You exceeded your current quota, please check your plan "
                "and billing details. For more information on this error, "
                "read the docs: https://platform.openai.com/docs/guides/"
                "error-codes/api-errors.",
                "insufficient_quota", None, "insufficient_quota")
        elif status == 429:
            body = openai_error_body(
                "Rate limit reached for %s in organization org-igny8sim on "
                "requests per min (RPM): Limit 500, Used 500, Requested 1. "
                "Please try again in %ss. Visit https://platform.openai.com/"
                "account/rate-limits to learn more." % (model, wait),
                "requests", None, "rate_limit_exceeded")
        elif status == 400:
            body = openai_error_body(
                "Unrecognized request argument supplied: igny8_sim",
                "invalid_request_error", None, None)
        elif status == 403:
            body = openai_error_body(
                "Country, region, or territory not supported",
                "request_forbidden", None,
                "unsupported_country_region_territory")
        elif status == 404:
            body = openai_error_body(
                "The model `%s` does not exist or you do not have access "
                "to it." % model, "invalid_request_error", None,
                "model_not_found")
        elif status == 500:
            body = openai_error_body(
                "The server had an error while processing your request. "
                "Sorry about that!", "server_error")
        elif status == 503:
            body = openai_error_body(
                "The server is overloaded or not ready yet.", "server_error")
        else:
            try:
                phrase = http.HTTPStatus(status).phrase
            except ValueError:
                phrase = "Simulated error %d" % status
            body = openai_error_body(
                phrase + ".", "server_error" if status >= 500
                else "invalid_request_error")
        self.send_error_body(ex, status, body)

    def invalid(self, ex, message, param=None, code=None):
        ex.send_json(400, openai_error_body(message, "invalid_request_error",
                                            param, code))

    def not_found(self, ex):
        ex.send_json(404, openai_error_body(
            "Invalid URL (%s %s)" % (ex.command, ex.path_only),
            "invalid_request_error"))

    def parse_error(self, ex):
        self.invalid(ex, "We could not parse the JSON body of your request. "
                     "(HINT: This likely means you aren't using your HTTP "
                     "library correctly. The OpenAI API expects a JSON "
                     "payload, but what was sent was not valid JSON. If you "
                     "have trouble figuring out how to fix this, please "
                     "contact us through our help center at "
                     "help.openai.com.)")

    # -- endpoints --------------------------------------------------------

    def models(self, ex):
        if not self.check_auth(ex):
            return
        data = [{"id": m, "object": "model", "created": LISTING_EPOCH,
                 "owned_by": "openai" if m.startswith("gpt") else "system"}
                for m in OPENAI_MODELS]
        ex.send_json(200, {"object": "list", "data": data})

    def chat(self, ex):
        if not self.check_auth(ex):
            return
        p = ex.payload
        if ex.json_error is not None or not isinstance(p, dict):
            return self.parse_error(ex)
        model = p.get("model")
        if not isinstance(model, str) or not model:
            return self.invalid(ex, "you must provide a model parameter")
        messages = p.get("messages")
        if messages is None:
            return self.invalid(ex, "Missing required parameter: "
                                "'messages'.", "messages",
                                "missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            return self.invalid(
                ex, "Invalid 'messages': empty array. Expected an array "
                "with minimum length 1, but got an empty array instead.",
                "messages", "empty_array")
        if "max_tokens" in p and "max_completion_tokens" in p:
            return self.invalid(
                ex, "max_tokens and max_completion_tokens cannot both be "
                "set. Use max_completion_tokens.", "max_tokens")
        limit = p.get("max_completion_tokens", p.get("max_tokens"))
        if limit is not None and (not isinstance(limit, int) or
                                  isinstance(limit, bool) or limit < 1):
            return self.invalid(
                ex, "Invalid 'max_tokens': integer below minimum value. "
                "Expected a value >= 1.", "max_tokens",
                "integer_below_min_value")
        if self.directive_failure(ex, model):
            return
        b = ex.behaviour
        answer = Answer.build("openai", model, b, limit)
        finish = b.taint("finish", "length" if answer.truncated else "stop")
        model = self.reply_model(ex, model)
        # badutf8/nul=thinking: a reasoning trace where vLLM and DeepSeek
        # put it (OpenAI itself sends none)
        reasoning = b.taint("thinking", THINKING_TEXT) \
            if b.taints("thinking") else None
        if p.get("stream") is True:
            so = p.get("stream_options")
            include = isinstance(so, dict) and so.get("include_usage") is True
            events = openai_stream_events(
                ex, model, answer, [], finish, fingerprint="fp_igny8sim",
                include_usage=include, reasoning=reasoning,
                reasoning_field="reasoning_content")
            return ex.send_stream(200, "text/event-stream; charset=utf-8",
                                  events)
        body = openai_completion(ex, model, answer, answer.literal(), finish,
                                 fingerprint="fp_igny8sim", full_usage=True,
                                 reasoning=reasoning,
                                 reasoning_field="reasoning_content")
        ex.send_json(200, body, oversize=answer.oversize)

    def images(self, ex):
        if not self.check_auth(ex):
            return
        p = ex.payload
        if ex.json_error is not None or not isinstance(p, dict):
            return self.parse_error(ex)
        prompt = p.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return self.invalid(ex, "Missing required parameter: 'prompt'.",
                                "prompt", "missing_required_parameter")
        model = p.get("model")
        if model is None:
            model = "dall-e-2"
        rules = OPENAI_IMAGE_MODELS.get(model)
        if rules is None:
            return self.invalid(ex, "Invalid value: %s. Supported values "
                                "are: %s." % (py_quote(model),
                                              openai_choices(
                                                  OPENAI_IMAGE_MODELS)),
                                "model", "invalid_value")
        gpt_image = model.startswith("gpt-image")
        clean = DIRECTIVE_RE.sub("", prompt).strip()
        if len(clean) > rules["prompt_max"]:
            return self.invalid(
                ex, "Invalid 'prompt': string too long. Expected a string "
                "with maximum length %d, but got a string with length %d "
                "instead." % (rules["prompt_max"], len(clean)), "prompt",
                "string_above_max_length")
        n = p.get("n", 1)
        if n is None:
            n = 1
        if not isinstance(n, int) or isinstance(n, bool):
            return self.invalid(ex, "Invalid type for 'n': expected an "
                                "integer, but got %s instead."
                                % json_type_name(n), "n", "invalid_type")
        if n < 1:
            return self.invalid(ex, "Invalid 'n': integer below minimum "
                                "value. Expected a value >= 1, but got %d "
                                "instead." % n, "n", "integer_below_min_value")
        if n > rules["n_max"]:
            return self.invalid(ex, "Invalid 'n': integer above maximum "
                                "value. Expected a value <= %d, but got %d "
                                "instead." % (rules["n_max"], n), "n",
                                "integer_above_max_value")
        for name in ("size", "quality", "style", "background",
                     "output_format"):
            allowed = rules.get(name)
            value = p.get(name)
            if allowed is None or value is None:
                continue
            if not isinstance(value, str):
                return self.invalid(ex, "Invalid type for '%s': expected "
                                    "one of %s, but got %s instead."
                                    % (name, openai_choices(allowed, "or"),
                                       json_type_name(value)), name,
                                    "invalid_type")
            if value not in allowed:
                return self.invalid(ex, "Invalid value: %s. Supported "
                                    "values are: %s." % (
                                        py_quote(value),
                                        openai_choices(allowed)), name,
                                    "invalid_value")
        fmt = p.get("response_format")
        if gpt_image and fmt is not None:
            return self.invalid(ex, "Unknown parameter: 'response_format'.",
                                "response_format", "unknown_parameter")
        if fmt not in (None, "url", "b64_json"):
            return self.invalid(ex, "Invalid value: %s. Supported values "
                                "are: 'url' and 'b64_json'." % py_quote(fmt),
                                "response_format", "invalid_value")
        b = ex.behaviour
        if b.content_policy is not None and b.failure_status() is None:
            ex.openai_request_id = new_id("req_", 32)
            return self.send_error_body(ex, 400, openai_policy_error(
                model, b.content_policy, ex.openai_request_id))
        if self.directive_failure(ex, model):
            return
        size = p.get("size") or rules["size_default"]
        if size == "auto":
            size = "1024x1024"
        width, height = (int(v) for v in size.split("x"))
        if b.png_size is not None:
            width, height = b.png_size
        quality = p.get("quality") or rules["quality_default"]
        as_url = not gpt_image and fmt in (None, "url")
        # oversize: the first image's b64_json becomes that many bytes of
        # "A" (valid base64, not a valid PNG).
        oversize = None if as_url else b.oversize
        data = []
        for i in range(n):
            spec = ImageSpec(width, height, "%s|%s|%d" % (model, clean, i),
                             fault=b.png, size_bytes=b.image_bytes)
            item = {}
            if as_url:
                name = new_id("img-", 24)
                self.store_image(name, spec)
                host, port = ex.server.server_address[:2]
                item["url"] = "http://%s:%d/images/%s.png" % (host, port,
                                                              name)
            elif oversize is not None and i == 0:
                item["b64_json"] = OVERSIZE_MARK
            else:
                item["b64_json"] = base64.b64encode(
                    PNG_CACHE.get(spec)).decode()
            if model == "dall-e-3":
                item["revised_prompt"] = clean
            data.append(item)
        body = {"created": int(time.time())}
        if gpt_image:
            body["background"] = "opaque" if p.get("background") in (
                None, "auto") else p["background"]
        body["data"] = data
        if gpt_image:
            if quality == "auto":
                quality = "medium"
            out_tokens = n * OPENAI_IMAGE_TOKENS[quality][size]
            body.update({"output_format": p.get("output_format") or "png",
                         "quality": quality, "size": size,
                         "usage": {"input_tokens": ex.input_words,
                                   "input_tokens_details": {
                                       "image_tokens": 0,
                                       "text_tokens": ex.input_words},
                                   "output_tokens": out_tokens,
                                   "total_tokens": ex.input_words +
                                   out_tokens}})
        ex.send_json(200, body, oversize=oversize, pattern="AAAA")

    def store_image(self, name, spec):
        with self.images_lock:
            self.url_images[name] = spec
            while len(self.url_images) > URL_IMAGES_KEPT:
                self.url_images.popitem(last=False)

    def image_file(self, ex):
        name = ex.path_only[len("/images/"):-len(".png")]
        with self.images_lock:
            spec = self.url_images.get(name)
        if spec is None:
            # what the blob store answers for an expired or unknown URL
            return ex.send_bytes(
                404, b'<?xml version="1.0" encoding="utf-8"?><Error><Code>'
                b'BlobNotFound</Code><Message>The specified blob does not '
                b'exist.</Message></Error>', "application/xml")
        ex.send_bytes(200, PNG_CACHE.get(spec), "image/png")


# -- Anthropic ----------------------------------------------------------------

class AnthropicBackend(Backend):
    role = "anthropic"

    ERRORS = {
        400: ("invalid_request_error",
              'messages: roles must alternate between "user" and '
              '"assistant", but found multiple "user" roles in a row'),
        401: ("authentication_error", "invalid x-api-key"),
        402: ("billing_error", "Your credit balance is too low to access "
              "the Anthropic API. Please go to Plans & Billing to upgrade "
              "or purchase credits."),
        403: ("permission_error", "Your API key does not have permission "
              "to use the specified resource."),
        404: ("not_found_error", "model: {model}"),
        413: ("request_too_large", "Request exceeds the maximum allowed "
              "number of bytes."),
        429: ("rate_limit_error", "This request would exceed the rate limit "
              "for your organization of 50 requests per minute. For "
              "details, refer to: https://docs.claude.com/en/api/"
              "rate-limits. You can see the response headers for current "
              "usage. Please reduce the prompt length or the maximum tokens "
              "requested, or try again later. You may also contact sales at "
              "https://www.anthropic.com/contact-sales to discuss your "
              "options for a rate limit increase."),
        500: ("api_error", "Internal server error"),
        504: ("timeout_error", "Request timeout"),
        529: ("overloaded_error", "Overloaded"),
    }

    def routes(self):
        return {("POST", "/v1/messages"): self.messages,
                ("GET", "/v1/models"): self.models}

    def directive_texts(self, ex):
        p = ex.payload
        if not isinstance(p, dict) or ex.command != "POST" or \
                ex.path_only != "/v1/messages":
            return []
        return list(content_texts(p.get("system"))) + \
            list(message_texts(p.get("messages")))

    def extra_headers(self, ex, status):
        headers = [("request-id", ex.request_id)]
        if status == 429:
            reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
                time.time() + float(ex.behaviour.retry_after or 1)))
            headers += [("anthropic-ratelimit-requests-limit", "50"),
                        ("anthropic-ratelimit-requests-remaining", "0"),
                        ("anthropic-ratelimit-requests-reset", reset)]
        return headers

    def error(self, ex, status, type_, message):
        ex.send_json(status, {"type": "error",
                              "error": {"type": type_, "message": message},
                              "request_id": ex.request_id})

    def invalid(self, ex, message):
        self.error(ex, 400, "invalid_request_error", message)

    def received_key(self, ex):
        return ex.headers.get("x-api-key")

    def send_status_error(self, ex, status, model=None):
        if model is None and isinstance(ex.payload, dict):
            model = ex.payload.get("model")
        if status == 400 and ex.behaviour.context:
            type_, message = "invalid_request_error", \
                ANTHROPIC_CONTEXT_MESSAGE
        elif status == 400 and ex.behaviour.quota:
            type_, message = "invalid_request_error", self.ERRORS[402][1]
        elif status in self.ERRORS:
            type_, message = self.ERRORS[status]
        else:
            type_ = "api_error" if status >= 500 else "invalid_request_error"
            try:
                message = http.HTTPStatus(status).phrase
            except ValueError:
                message = "Simulated error %d" % status
        self.send_error_body(ex, status, {
            "type": "error",
            "error": {"type": type_,
                      "message": message.replace("{model}",
                                                 str(model or ""))},
            "request_id": ex.request_id})

    def not_found(self, ex):
        self.error(ex, 404, "not_found_error", "Not Found")

    def check_headers(self, ex):
        """x-api-key, then anthropic-version.  False when an error went."""
        if ex.headers.get("x-api-key") != self.sim.anthropic_key:
            self.error(ex, 401, "authentication_error", "invalid x-api-key")
            return False
        if not ex.headers.get("anthropic-version"):
            self.invalid(ex, "anthropic-version: header is required")
            return False
        return True

    def models(self, ex):
        if not self.check_headers(ex):
            return
        data = [{"type": "model", "id": mid, "display_name": name,
                 "created_at": LISTING_TIME}
                for mid, name in ANTHROPIC_MODELS]
        ex.send_json(200, {"data": data, "has_more": False,
                           "first_id": data[0]["id"],
                           "last_id": data[-1]["id"]})

    def messages(self, ex):
        if not self.check_headers(ex):
            return
        p = ex.payload
        if ex.json_error is not None or not isinstance(p, dict):
            return self.invalid(ex, "There was an error parsing the body of "
                                "your request: it is not valid JSON.")
        model = p.get("model")
        if not isinstance(model, str) or not model:
            return self.invalid(ex, "model: Field required")
        if "max_tokens" not in p:
            return self.invalid(ex, "max_tokens: Field required")
        limit = p["max_tokens"]
        if not isinstance(limit, int) or isinstance(limit, bool):
            return self.invalid(ex, "max_tokens: Input should be a valid "
                                "integer")
        if limit < 1:
            return self.invalid(ex, "max_tokens: Input should be greater "
                                "than or equal to 1")
        messages = p.get("messages")
        if messages is None:
            return self.invalid(ex, "messages: Field required")
        if not isinstance(messages, list):
            return self.invalid(ex, "messages: Input should be a valid list")
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role == "system":
                return self.invalid(
                    ex, 'messages: Unexpected role "system". The Messages '
                    'API accepts a top-level `system` parameter, not '
                    '"system" as an input message role.')
            if role not in ("user", "assistant"):
                return self.invalid(ex, "messages.%d.role: Input should be "
                                    "'user' or 'assistant'" % i)
            content = message.get("content")
            if (content == "" or content == []) and not (
                    i == len(messages) - 1 and role == "assistant"):
                return self.invalid(
                    ex, "messages.%d: all messages must have non-empty "
                    "content except for the optional final assistant "
                    "message" % i)
            if (i == len(messages) - 1 and role == "assistant"
                    and isinstance(content, str) and content
                    and content != content.rstrip()):
                return self.invalid(ex, "messages: final assistant content "
                                    "cannot end with trailing whitespace")
            if (isinstance(content, str) and content
                    and not content.strip()):
                return self.invalid(ex, "messages: text content blocks "
                                    "must contain non-whitespace text")
        temperature = p.get("temperature")
        if (isinstance(temperature, (int, float))
                and not isinstance(temperature, bool)
                and not 0 <= temperature <= 1):
            return self.invalid(ex, "temperature: Input should be %s" % (
                "less than or equal to 1" if temperature > 1
                else "greater than or equal to 0"))
        system = p.get("system")
        if system is not None and not isinstance(system, (str, list)):
            return self.invalid(ex, "system: Input should be a valid string")
        if self.directive_failure(ex, model):
            return

        b = ex.behaviour
        answer = Answer.build("anthropic", model, b, limit)
        stop = b.taint("finish", "max_tokens" if answer.truncated
                       else "end_turn")
        model = self.reply_model(ex, model)
        # badutf8/nul=thinking: an extended-thinking block comes first
        thinking = b.taint("thinking", THINKING_TEXT) \
            if b.taints("thinking") else None
        if p.get("stream") is True:
            return ex.send_stream(200, "text/event-stream; charset=utf-8",
                                  self.stream_events(ex, model, answer, stop,
                                                     thinking))
        # Two text blocks, so that a client must join them.
        if answer.oversize is not None:
            blocks = [{"type": "text", "text": answer.literal()}]
        else:
            blocks = [{"type": "text", "text": t}
                      for t in answer.halves() if t]
        if thinking is not None:
            blocks.insert(0, {"type": "thinking", "thinking": thinking,
                              "signature": THINKING_SIGNATURE})
        body = {"id": new_id("msg_sim", 20), "type": "message",
                "role": "assistant", "model": model, "content": blocks,
                "stop_reason": stop, "stop_sequence": None,
                "usage": dict(self.input_usage(ex),
                              output_tokens=answer.words,
                              service_tier="standard")}
        ex.send_json(200, body, oversize=answer.oversize)

    @staticmethod
    def input_usage(ex):
        """
        The input side of usage.  With cache_read=N cache_creation=M,
        input_tokens counts only the uncached rest, as the real API does.
        """
        b = ex.behaviour
        read, created = b.cache_read or 0, b.cache_creation or 0
        return {"input_tokens": max(0, ex.input_words - read - created),
                "cache_creation_input_tokens": created,
                "cache_read_input_tokens": read}

    def stream_events(self, ex, model, answer, stop, thinking=None):
        usage = {"input_tokens": ex.input_words, "output_tokens": 1}
        b = ex.behaviour
        if b.cache_read is not None or b.cache_creation is not None:
            usage.update(self.input_usage(ex))
        message = {"id": new_id("msg_sim", 20), "type": "message",
                   "role": "assistant", "model": model, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": usage}
        yield sse({"type": "message_start", "message": message},
                  "message_start")
        index = 0
        if thinking is not None:
            yield sse({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "thinking",
                                         "thinking": ""}},
                      "content_block_start")
            yield sse({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "thinking_delta",
                                 "thinking": thinking}},
                      "content_block_delta")
            yield sse({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "signature_delta",
                                 "signature": THINKING_SIGNATURE}},
                      "content_block_delta")
            yield sse({"type": "content_block_stop", "index": 0},
                      "content_block_stop")
            index = 1
        yield sse({"type": "content_block_start", "index": index,
                   "content_block": {"type": "text", "text": ""}},
                  "content_block_start")
        yield sse({"type": "ping"}, "ping")
        for piece in answer.deltas():
            yield sse({"type": "content_block_delta", "index": index,
                       "delta": {"type": "text_delta", "text": piece}},
                      "content_block_delta")
        yield sse({"type": "content_block_stop", "index": index},
                  "content_block_stop")
        yield sse({"type": "message_delta",
                   "delta": {"stop_reason": stop, "stop_sequence": None},
                   "usage": {"output_tokens": answer.words}},
                  "message_delta")
        yield sse({"type": "message_stop"}, "message_stop")


# -- ComfyUI ------------------------------------------------------------------
#
# A ComfyUI 0.3.x server in miniature: the nodes of the shipped workflows
# (object_info), validation as execution.validate_prompt does it, one
# execution queue worked by one thread, history, SaveImage files served by
# /view, interrupts, and ComfyUI's output cache.  Shapes and messages follow
# ComfyUI's server.py and execution.py.

COMFY_ROOT = "/opt/ComfyUI"
COMFY_DIRS = {"output": COMFY_ROOT + "/output", "temp": COMFY_ROOT + "/temp",
              "input": COMFY_ROOT + "/input"}
COMFY_HISTORY_MAX = 10000               # execution.MAXIMUM_HISTORY_SIZE
# ComfyUI looks for an interrupt before each node and after each sampler
# step (throw_exception_if_processing_interrupted): the step under way
# finishes first.  An interrupt takes effect after this long, or at the end
# of a shorter step; its history entry is written then.
COMFY_INTERRUPT_LATENCY = 0.25
COMFY_SENSITIVE = ("auth_token_comfy_org", "api_key_comfy_org")
COMFY_MAX_RESOLUTION = 16384

# folder_paths.folder_names_and_paths, in its order: GET /models.
COMFY_MODEL_FOLDERS = (
    "checkpoints", "configs", "loras", "vae", "text_encoders",
    "diffusion_models", "clip_vision", "style_models", "embeddings",
    "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
    "latent_upscale_models", "custom_nodes", "hypernetworks", "photomaker",
    "classifiers", "model_patches", "audio_encoders")
# Old names ComfyUI still maps (the control API accepts them too).
COMFY_LEGACY_FOLDERS = {"clip": "text_encoders", "unet": "diffusion_models"}

# The model files installed: FLUX.1 [dev] (split loaders), SD 3.5 Large,
# SDXL-Lightning 4-step and SDXL base.
COMFY_DEFAULT_MODELS = {
    "checkpoints": ["sd3.5_large.safetensors", "sd_xl_base_1.0.safetensors",
                    "sdxl_lightning_4step.safetensors"],
    "diffusion_models": ["flux1-dev.safetensors"],
    "text_encoders": ["clip_g.safetensors", "clip_l.safetensors",
                      "t5xxl_fp16.safetensors"],
    "vae": ["ae.safetensors"],
}

COMFY_SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp",
    "heun", "heunpp2", "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde",
    "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v",
    "deis", "cfgpp_ud10_ab", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc",
    "uni_pc_bh2"]
COMFY_SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential",
                    "ddim_uniform", "beta", "normal", "linear_quadratic",
                    "kl_optimal"]

_SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_SAVE_DESCRIPTION = "Saves the input images to your ComfyUI output directory."

# Node classes: their inputs as INPUT_TYPES gives them ("@folder" stands
# for the sorted list of that model folder's files), RETURN_TYPES and the
# other attributes server.node_info reports.  Loaders are the nodes that
# read a model file (exec_error=corrupt fails the first of them).
COMFY_NODE_DEFS = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": ["@checkpoints", {
            "tooltip": "The name of the checkpoint (model) to load."}]}},
        "output": ["MODEL", "CLIP", "VAE"],
        "display_name": "Load Checkpoint", "category": "loaders",
        "description": "Loads a diffusion model checkpoint, diffusion "
        "models are used to denoise latents.",
        "output_tooltips": [
            "The model used for denoising latents.",
            "The CLIP model used for encoding text prompts.",
            "The VAE model used for encoding and decoding images to and "
            "from latent space."],
        "loads": ("checkpoints", "ckpt_name")},
    "UNETLoader": {
        "input": {"required": {
            "unet_name": ["@diffusion_models"],
            "weight_dtype": [["default", "fp8_e4m3fn", "fp8_e4m3fn_fast",
                              "fp8_e5m2"]]}},
        "output": ["MODEL"], "display_name": "Load Diffusion Model",
        "category": "advanced/loaders",
        "loads": ("diffusion_models", "unet_name")},
    "DualCLIPLoader": {
        "input": {"required": {
            "clip_name1": ["@text_encoders"], "clip_name2": ["@text_encoders"],
            "type": [["sdxl", "sd3", "flux", "hunyuan_video", "hidream"]]},
            "optional": {"device": [["default", "cpu"], {"advanced": True}]}},
        "output": ["CLIP"], "category": "advanced/loaders",
        "description": "[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, "
        "clip-g / clip-l, t5 / clip-g, t5\nflux: clip-l, t5\nhidream: at "
        "least one of t5 or llama, recommended t5 and llama",
        "loads": ("text_encoders", "clip_name1")},
    "TripleCLIPLoader": {
        "input": {"required": {
            "clip_name1": ["@text_encoders"], "clip_name2": ["@text_encoders"],
            "clip_name3": ["@text_encoders"]}},
        "output": ["CLIP"], "category": "advanced/loaders",
        "description": "[Recipes]\n\nsd3: clip-l, clip-g, t5",
        "python_module": "comfy_extras.nodes_sd3",
        "loads": ("text_encoders", "clip_name1")},
    "VAELoader": {
        "input": {"required": {"vae_name": ["@vae"]}},
        "output": ["VAE"], "display_name": "Load VAE", "category": "loaders",
        "loads": ("vae", "vae_name")},
    "CLIPTextEncode": {
        "input": {"required": {
            "text": ["STRING", {"multiline": True, "dynamicPrompts": True,
                                "tooltip": "The text to be encoded."}],
            "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding "
                              "the text."}]}},
        "output": ["CONDITIONING"],
        "display_name": "CLIP Text Encode (Prompt)",
        "category": "conditioning",
        "description": "Encodes a text prompt using a CLIP model into an "
        "embedding that can be used to guide the diffusion model towards "
        "generating specific images.",
        "output_tooltips": ["A conditioning containing the embedded text "
                            "used to guide the diffusion model."]},
    "FluxGuidance": {
        "input": {"required": {
            "conditioning": ["CONDITIONING"],
            "guidance": ["FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0,
                                   "step": 0.1}]}},
        "output": ["CONDITIONING"], "category": "advanced/conditioning/flux",
        "python_module": "comfy_extras.nodes_flux"},
    "ConditioningZeroOut": {
        "input": {"required": {"conditioning": ["CONDITIONING"]}},
        "output": ["CONDITIONING"], "category": "advanced/conditioning"},
    "EmptyLatentImage": {
        "input": {"required": {
            "width": ["INT", {"default": 512, "min": 16,
                              "max": COMFY_MAX_RESOLUTION, "step": 8,
                              "tooltip": "The width of the latent images "
                              "in pixels."}],
            "height": ["INT", {"default": 512, "min": 16,
                               "max": COMFY_MAX_RESOLUTION, "step": 8,
                               "tooltip": "The height of the latent images "
                               "in pixels."}],
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096,
                                   "tooltip": "The number of latent images "
                                   "in the batch."}]}},
        "output": ["LATENT"], "display_name": "Empty Latent Image",
        "category": "latent",
        "description": "Create a new batch of empty latent images to be "
        "denoised via sampling.",
        "output_tooltips": ["The empty latent image batch."]},
    "EmptySD3LatentImage": {
        "input": {"required": {
            "width": ["INT", {"default": 1024, "min": 16,
                              "max": COMFY_MAX_RESOLUTION, "step": 16}],
            "height": ["INT", {"default": 1024, "min": 16,
                               "max": COMFY_MAX_RESOLUTION, "step": 16}],
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]}},
        "output": ["LATENT"], "category": "latent/sd3",
        "python_module": "comfy_extras.nodes_sd3"},
    "KSampler": {
        "input": {"required": {
            "model": ["MODEL", {"tooltip": "The model used for denoising "
                                "the input latent."}],
            "seed": ["INT", {"default": 0, "min": 0,
                             "max": 0xffffffffffffffff,
                             "control_after_generate": True,
                             "tooltip": "The random seed used for creating "
                             "the noise."}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000,
                              "tooltip": "The number of steps used in the "
                              "denoising process."}],
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0,
                              "step": 0.1, "round": 0.01,
                              "tooltip": "The Classifier-Free Guidance scale "
                              "balances creativity and adherence to the "
                              "prompt. Higher values result in images more "
                              "closely matching the prompt however too high "
                              "values will negatively impact quality."}],
            "sampler_name": [COMFY_SAMPLERS, {
                "tooltip": "The algorithm used when sampling, this can "
                "affect the quality, speed, and style of the generated "
                "output."}],
            "scheduler": [COMFY_SCHEDULERS, {
                "tooltip": "The scheduler controls how noise is gradually "
                "removed to form the image."}],
            "positive": ["CONDITIONING", {"tooltip": "The conditioning "
                                          "describing the attributes you "
                                          "want to include in the image."}],
            "negative": ["CONDITIONING", {"tooltip": "The conditioning "
                                          "describing the attributes you "
                                          "want to exclude from the "
                                          "image."}],
            "latent_image": ["LATENT", {"tooltip": "The latent image to "
                                        "denoise."}],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0,
                                  "step": 0.01,
                                  "tooltip": "The amount of denoising "
                                  "applied, lower values will maintain the "
                                  "structure of the initial image allowing "
                                  "for image to image sampling."}]}},
        "output": ["LATENT"], "category": "sampling",
        "description": "Uses the provided model, positive and negative "
        "conditioning to denoise the latent image.",
        "output_tooltips": ["The denoised latent."]},
    "VAEDecode": {
        "input": {"required": {
            "samples": ["LATENT", {"tooltip": "The latent to be decoded."}],
            "vae": ["VAE", {"tooltip": "The VAE model used for decoding the "
                            "latent."}]}},
        "output": ["IMAGE"], "display_name": "VAE Decode",
        "category": "latent",
        "description": "Decodes latent images back into pixel space images.",
        "output_tooltips": ["The decoded image."]},
    "SaveImage": {
        "input": {"required": {
            "images": ["IMAGE", {"tooltip": "The images to save."}],
            "filename_prefix": ["STRING", {
                "default": "ComfyUI",
                "tooltip": "The prefix for the file to save. This may "
                "include formatting information such as %date:yyyy-MM-dd% "
                "or %Empty Latent Image.width% to include values from "
                "nodes."}]},
            "hidden": _SAVE_HIDDEN},
        "output": [], "output_node": True, "display_name": "Save Image",
        "category": "image", "description": _SAVE_DESCRIPTION},
    "PreviewImage": {
        "input": {"required": {"images": ["IMAGE"]}, "hidden": _SAVE_HIDDEN},
        "output": [], "output_node": True, "display_name": "Preview Image",
        "category": "image", "description": _SAVE_DESCRIPTION},
    "ModelSamplingSD3": {
        "input": {"required": {
            "model": ["MODEL"],
            "shift": ["FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0,
                                "step": 0.01}]}},
        "output": ["MODEL"], "category": "advanced/model",
        "python_module": "comfy_extras.nodes_model_advanced"},
}


def comfy_edit_models(models, op, names):
    """
    MODELS (folder -> files) with NAMES added or removed (OP "add" or
    "remove").  A name is FOLDER/FILE, or for removal a bare FILE, which
    goes from every folder.  Folders may use the legacy names clip and unet.
    """
    out = {folder: list(files) for folder, files in models.items()}
    for name in names:
        folder, _, file = name.partition("/")
        folder = COMFY_LEGACY_FOLDERS.get(folder, folder)
        if folder not in COMFY_MODEL_FOLDERS or not file:
            if op == "add":
                raise ValueError(
                    "%r: a model to add is FOLDER/FILE, FOLDER one of %s"
                    % (name, ", ".join(COMFY_MODEL_FOLDERS)))
            folders, file = list(out), name
        else:
            folders = [folder]
        for f in folders:
            files = out.setdefault(f, [])
            if op == "add" and file not in files:
                files.append(file)
            elif op == "remove" and file in files:
                files.remove(file)
            files.sort()
    return {f: files for f, files in out.items() if files}


def comfy_object_info(models):
    """GET /object_info for the installed MODELS (folder -> file names)."""
    out = {}
    for name, d in COMFY_NODE_DEFS.items():
        inputs = {}
        for section in ("required", "optional", "hidden"):
            if section not in d["input"]:
                continue
            specs = {}
            for key, spec in d["input"][section].items():
                if isinstance(spec, list) and isinstance(spec[0], str) and \
                        spec[0].startswith("@"):
                    spec = [sorted(models.get(spec[0][1:], []))] + spec[1:]
                specs[key] = json.loads(json.dumps(spec))
            inputs[section] = specs
        info = {"input": inputs,
                "input_order": {k: list(v) for k, v in inputs.items()},
                "output": list(d["output"]),
                "output_is_list": [False] * len(d["output"]),
                "output_name": list(d["output"]),
                "name": name,
                "display_name": d.get("display_name", name),
                "description": d.get("description", ""),
                "python_module": d.get("python_module", "nodes"),
                "category": d["category"],
                "output_node": d.get("output_node", False)}
        if "output_tooltips" in d:
            info["output_tooltips"] = list(d["output_tooltips"])
        out[name] = info
    return out


# -- validation (execution.validate_prompt) ----------------------------------

class ComfyServerError(Exception):
    """What makes aiohttp answer 500: the real handler raised."""


class PyError(Exception):
    """
    A Python exception inside ComfyUI's validation or execution: its type
    as full_type_name writes it, its message (str(ex)) and traceback lines.
    """

    def __init__(self, type_name, message, frames=()):
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.frames = list(frames)


def _frame(line, func, code):
    return '  File "%s/execution.py", line %d, in %s\n    %s\n' % (
        COMFY_ROOT, line, func, code)


_LINK_FRAME = _frame(1036, "validate_inputs",
                     "o_class_type = prompt[o_id]['class_type']")
_INNER_FRAME = _frame(1079, "validate_inputs",
                      "r2 = await validate_inputs(prompt_id, prompt, o_id, "
                      "validated)")
_OUTER_FRAME = _frame(1231, "validate_prompt",
                      "m = await validate_inputs(prompt_id, prompt, o, "
                      "validated)")


def comfy_is_link(value):
    """comfy_execution.graph_utils.is_link."""
    return isinstance(value, list) and len(value) == 2 and \
        isinstance(value[0], str) and isinstance(value[1], (int, float)) \
        and not isinstance(value[1], bool)


def _types_match(received, wanted):
    """comfy_execution.validation.validate_node_input (not strict)."""
    if received == wanted:
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in wanted.split(",")}
    if "*" in got or "*" in want:
        return True
    return not got.isdisjoint(want)


def _py_str(value):
    """str() of a JSON value as Python prints it (f-strings in ComfyUI)."""
    return str(value)


def _node_title(node, default):
    meta = node.get("_meta", {})
    if not isinstance(meta, dict):
        raise ComfyServerError("_meta is not an object")
    return meta.get("title", default)


def comfy_validate(graph, info, targets=None):
    """
    ComfyUI's validate_prompt on GRAPH (node id -> {class_type, inputs})
    with the node classes of INFO (object_info).  Widget values are
    converted in place (INT, FLOAT, STRING, BOOLEAN), as ComfyUI does.
    Return (valid, error, good_outputs, node_errors); raise
    ComfyServerError where the real server crashes (answers 500).
    """
    if isinstance(graph, (list, str)) and not graph:
        graph = {}
    if not isinstance(graph, dict):
        raise ComfyServerError("prompt is not an object")
    outputs = []
    for x, node in graph.items():
        if not isinstance(node, dict):
            raise ComfyServerError("node %s is not an object" % x)
        if "class_type" not in node:
            title = _node_title(node, None)
            return False, {
                "type": "missing_node_type",
                "message": "Node '%s' has no class_type. The workflow may be "
                "corrupted or a custom node is missing."
                % (title or "ID #%s" % x),
                "details": "Node ID '#%s'" % x,
                "extra_info": {"node_id": x, "class_type": None,
                               "node_title": title}}, [], {}
        class_type = node["class_type"]
        if isinstance(class_type, (list, dict)):
            raise ComfyServerError("unhashable class_type")
        if class_type not in info:
            title = _node_title(node, class_type)
            return False, {
                "type": "missing_node_type",
                "message": "Node '%s' not found. The custom node may not be "
                "installed." % _py_str(title),
                "details": "Node ID '#%s'" % x,
                "extra_info": {"node_id": x, "class_type": class_type,
                               "node_title": title}}, [], {}
        if info[class_type]["output_node"] and \
                (targets is None or x in targets):
            outputs.append(x)
    if not outputs:
        return False, {"type": "prompt_no_outputs",
                       "message": "Prompt has no outputs", "details": "",
                       "extra_info": {}}, [], {}

    validated = {}
    good, failed, node_errors = [], [], {}
    for o in outputs:
        try:
            valid, reasons = _validate_inputs(graph, info, o, validated, set())
        except PyError as ex:
            valid = False
            reasons = [{"type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": ex.message,
                        "extra_info": {"exception_type": ex.type_name,
                                       "traceback": [_OUTER_FRAME] +
                                       ex.frames}}]
            validated[o] = (False, reasons)
        if valid:
            good.append(o)
            continue
        failed.append((o, reasons))
        for node_id, (ok, node_reasons) in validated.items():
            # upstream errors make the nodes downstream invalid too, with
            # no errors of their own: those are not reported
            if not ok and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons, "dependent_outputs": [],
                        "class_type": graph[node_id]["class_type"]}
                node_errors[node_id]["dependent_outputs"].append(o)
    if not good:
        details = "\n".join("%s: %s" % (e["message"], e["details"])
                            for _, reasons in failed for e in reasons)
        return False, {"type": "prompt_outputs_failed_validation",
                       "message": "Prompt outputs failed validation",
                       "details": details, "extra_info": {}}, [], node_errors
    return True, None, good, node_errors


def _py_convert(kind, value):
    """int(), float(), str() or bool() as Python does them, or PyError."""
    try:
        if kind == "INT":
            return int(value)
        if kind == "FLOAT":
            return float(value)
        if kind == "STRING":
            return str(value)
        return bool(value)
    except (TypeError, ValueError, OverflowError) as ex:
        raise PyError(type(ex).__name__, str(ex))


def _validate_inputs(graph, info, uid, validated, visiting):
    """execution.validate_inputs for node UID: (valid, errors)."""
    if uid in validated:
        return validated[uid]
    if uid in visiting:
        raise PyError("RecursionError", "maximum recursion depth exceeded")
    visiting = visiting | {uid}
    node = graph[uid]
    if "inputs" not in node:
        raise PyError("KeyError", "'inputs'",
                      [_frame(1000, "validate_inputs",
                              "inputs = prompt[unique_id]['inputs']")])
    inputs = node["inputs"]
    if not isinstance(inputs, dict):
        raise PyError("TypeError", "argument of type '%s' is not iterable"
                      % type(inputs).__name__)
    spec_all = info[node["class_type"]]["input"]
    errors, valid = [], True
    for category in ("required", "optional"):
        for x, spec in spec_all.get(category, {}).items():
            if x not in inputs:
                if category == "required":
                    errors.append({"type": "required_input_missing",
                                   "message": "Required input is missing",
                                   "details": x,
                                   "extra_info": {"input_name": x}})
                continue
            val = inputs[x]
            input_type = spec[0]
            config = [input_type, spec[1] if len(spec) > 1 else {}]
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append({
                        "type": "bad_linked_input",
                        "message": "Bad linked input, must be a length-2 "
                        "list of [node_id, slot_index]",
                        "details": x,
                        "extra_info": {"input_name": x,
                                       "input_config": config,
                                       "received_value": val}})
                    continue
                o_id, slot = val
                if isinstance(o_id, (list, dict)):
                    raise PyError("TypeError", "unhashable type: '%s'"
                                  % type(o_id).__name__, [_LINK_FRAME])
                if o_id not in graph:
                    raise PyError("KeyError", repr(o_id), [_LINK_FRAME])
                returns = info[graph[o_id]["class_type"]]["output"]
                if isinstance(slot, bool):
                    slot = int(slot)
                if not isinstance(slot, int):
                    raise PyError("TypeError", "tuple indices must be "
                                  "integers or slices, not %s"
                                  % type(slot).__name__, [_LINK_FRAME])
                if not -len(returns) <= slot < len(returns):
                    raise PyError("IndexError", "tuple index out of range",
                                  [_LINK_FRAME])
                received = returns[slot]
                if not _types_match(received, input_type):
                    errors.append({
                        "type": "return_type_mismatch",
                        "message": "Return type mismatch between linked "
                        "nodes",
                        "details": "%s, received_type(%s) mismatch "
                        "input_type(%s)" % (x, received, input_type),
                        "extra_info": {"input_name": x,
                                       "input_config": config,
                                       "received_type": received,
                                       "linked_node": val}})
                    continue
                try:
                    ok, _ = _validate_inputs(graph, info, o_id, validated,
                                             visiting)
                    if not ok:
                        valid = False
                except PyError as ex:
                    valid = False
                    validated[o_id] = (False, [{
                        "type": "exception_during_inner_validation",
                        "message": "Exception when validating inner node",
                        "details": ex.message,
                        "extra_info": {"input_name": x,
                                       "input_config": config,
                                       "exception_message": ex.message,
                                       "exception_type": ex.type_name,
                                       "traceback": [_INNER_FRAME] +
                                       ex.frames,
                                       "linked_node": val}}])
                continue
            if isinstance(val, dict) and "__value__" in val:
                val = inputs[x] = val["__value__"]
            if input_type in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                try:
                    converted = _py_convert(input_type, val)
                except PyError as ex:
                    errors.append({
                        "type": "invalid_input_type",
                        "message": "Failed to convert an input value to a "
                        "%s value" % input_type,
                        "details": "%s, %s, %s" % (x, _py_str(val),
                                                   ex.message),
                        "extra_info": {"input_name": x,
                                       "input_config": config,
                                       "received_value": val,
                                       "exception_message": ex.message}})
                    continue
                val = inputs[x] = converted
            limits = config[1]
            if "min" in limits and val < limits["min"]:
                errors.append({
                    "type": "value_smaller_than_min",
                    "message": "Value %s smaller than min of %s"
                    % (_py_str(val), _py_str(limits["min"])),
                    "details": x,
                    "extra_info": {"input_name": x, "input_config": config,
                                   "received_value": val}})
                continue
            if "max" in limits and val > limits["max"]:
                errors.append({
                    "type": "value_bigger_than_max",
                    "message": "Value %s bigger than max of %s"
                    % (_py_str(val), _py_str(limits["max"])),
                    "details": x,
                    "extra_info": {"input_name": x, "input_config": config,
                                   "received_value": val}})
                continue
            if isinstance(input_type, list):
                if isinstance(val, str) and "\\" in val:
                    val = val.replace("\\", "/")
                if val not in input_type:
                    if len(input_type) > 20:
                        listed = "(list of length %d)" % len(input_type)
                        config = None
                    else:
                        listed = str(input_type)
                    errors.append({
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "%s: '%s' not in %s" % (x, _py_str(val),
                                                           listed),
                        "extra_info": {"input_name": x,
                                       "input_config": config,
                                       "received_value": val}})
    result = (not errors and valid, errors)
    validated[uid] = result
    return result


# -- execution ----------------------------------------------------------------

# exec_error: the exception each kind raises, as ComfyUI reports it.
COMFY_OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 9.00 GiB. GPU 0 has a total "
    "capacity of 23.52 GiB of which 2.18 GiB is free. Including non-PyTorch "
    "memory, this process has 21.32 GiB memory in use. Of the allocated "
    "memory 19.87 GiB is allocated by PyTorch, and 1.01 GiB is reserved by "
    "PyTorch but unallocated. If reserved but unallocated memory is large "
    "try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
    "fragmentation.  See documentation for Memory Management  "
    "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
COMFY_OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\nTIPS: If the "
    "workflow worked before you might have accidentally set the batch_size "
    "to a large number.")
COMFY_SHAPE_TIPS = (
    "\n\nTIPS: If you have any 'Load CLIP' or '*CLIP Loader' nodes in your "
    "workflow connected to this sampler node make sure the correct file(s) "
    "and type is selected.")

# str() of the objects nodes pass along, for execution_error current_inputs
_COMFY_REPRS = {
    "MODEL": "<comfy.model_patcher.ModelPatcher object at 0x%x>",
    "CLIP": "<comfy.sd.CLIP object at 0x%x>",
    "VAE": "<comfy.sd.VAE object at 0x%x>",
    "CONDITIONING": "[[tensor([[[-0.3885,  0.0230, -0.0521,  ...,  0.1853, "
    "-0.2307,  0.1066]]]), {'pooled_output': tensor([[-0.6992,  0.3086, "
    " ...]])}]]",
    "LATENT": "{'samples': tensor([[[[0., 0., 0.,  ..., 0., 0., 0.]]]])}",
    "IMAGE": "tensor([[[[0.5216, 0.4627, 0.3961],\n          ...]]]])",
}

_EXEC_FRAMES = [
    _frame(496, "execute", "output_data, output_ui, has_subgraph, "
           "has_pending_tasks = await get_output_data(prompt_id, unique_id, "
           "obj, input_data_all, execution_block_cb=execution_block_cb, "
           "pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)"),
    _frame(315, "get_output_data", "return_values = await "
           "_async_map_node_over_list(prompt_id, unique_id, obj, "
           "input_data_all, obj.FUNCTION, allow_interrupt=True, "
           "execution_block_cb=execution_block_cb, "
           "pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)"),
    _frame(289, "_async_map_node_over_list", "await process_inputs("
           "input_dict, i)"),
    _frame(277, "process_inputs", "result = f(**inputs)"),
]


def _source_frame(path, line, func, code):
    return '  File "%s/%s", line %d, in %s\n    %s\n' % (COMFY_ROOT, path,
                                                       line, func, code)


def now_ms():
    return int(time.time() * 1000)


class ComfyJob:
    """An accepted prompt: its queue item and what its directives ask."""

    def __init__(self, number, prompt_id, graph, extra_data, outputs,
                 sensitive, behaviour, step_delay):
        self.number = number
        self.prompt_id = prompt_id
        self.graph = graph
        self.extra_data = extra_data
        self.outputs = outputs
        self.sensitive = sensitive
        b = behaviour
        self.step_delay = b.step_delay if b.step_delay is not None \
            else step_delay
        self.run_time = b.run_time
        self.exec_error = b.exec_error
        self.exec_node = b.exec_node
        self.png = b.png
        self.png_size = b.png_size
        self.image_bytes = b.image_bytes

    def item(self):
        """[number, prompt_id, prompt, extra_data, outputs_to_execute]"""
        return [self.number, self.prompt_id, self.graph, self.extra_data,
                list(self.outputs)]


class _Interrupted(Exception):
    def __init__(self, node_id):
        super().__init__(node_id)
        self.node_id = node_id


class _Reset(Exception):
    """The simulator was reset while a prompt ran: forget it."""


class _Plan:
    """How long the nodes of one run take, and which one fails."""

    def __init__(self, job, order):
        graph = job.graph
        samplers = [n for n in order if graph[n]["class_type"] == "KSampler"]
        steps = sum(graph[n]["inputs"]["steps"] for n in samplers)
        self.step_time, self.node_time = job.step_delay, 0.0
        if job.run_time is not None:
            self.step_time = job.run_time / steps if steps else 0.0
            if not steps and order:
                self.node_time = job.run_time / len(order)
        self.fail = None
        if job.exec_error is None:
            return
        if job.exec_node is not None:
            self.fail = job.exec_node if job.exec_node in order else None
        elif job.exec_error == "corrupt":
            loaders = [n for n in order if "loads" in
                       COMFY_NODE_DEFS[graph[n]["class_type"]]]
            self.fail = (loaders or order or [None])[0]
        else:
            self.fail = (samplers or order or [None])[0]


def _comfy_signatures(graph):
    """
    Node id -> its cache key: the class, its widget values and the keys of
    the nodes it links to (CacheKeySetInputSignature).  Equal keys mean the
    cached output can be reused, whatever the node ids.
    """
    memo = {}

    def sig(n, stack):
        if n in memo:
            return memo[n]
        node = graph.get(n)
        if not isinstance(node, dict) or n in stack:
            return "missing"
        inputs = node.get("inputs")
        parts = [node.get("class_type")]
        if isinstance(inputs, dict):
            for key in sorted(inputs):
                value = inputs[key]
                if comfy_is_link(value):
                    parts.append([key, "link", sig(value[0], stack | {n}),
                                  value[1]])
                else:
                    parts.append([key, value])
        memo[n] = hashlib.sha256(json.dumps(parts, sort_keys=True,
                                            default=str).encode()).hexdigest()
        return memo[n]

    for n in graph:
        sig(n, frozenset())
    return memo


def _comfy_order(graph, outputs, done):
    """The nodes to run for OUTPUTS, inputs first; DONE ones are cached."""
    order, seen = [], set(done)

    def visit(n):
        if n in seen:
            return
        seen.add(n)
        for value in graph[n]["inputs"].values():
            if comfy_is_link(value) and value[0] in graph:
                visit(value[0])
        order.append(n)

    for o in outputs:
        visit(o)
    return order


def _comfy_prefix_vars(prefix, width, height):
    """folder_paths.get_save_image_path's compute_vars."""
    now = time.localtime()
    for name, value in (("width", width), ("height", height),
                        ("year", now.tm_year), ("month", "%02d" % now.tm_mon),
                        ("day", "%02d" % now.tm_mday),
                        ("hour", "%02d" % now.tm_hour),
                        ("minute", "%02d" % now.tm_min),
                        ("second", "%02d" % now.tm_sec)):
        prefix = prefix.replace("%" + name + "%", str(value))
    return prefix


class ComfyEngine:
    """
    ComfyUI's PromptQueue and PromptExecutor: one queue (ordered by number),
    one prompt executed at a time by one thread, the history of finished
    prompts, the files SaveImage/PreviewImage wrote, and the output cache of
    the last prompt.
    """

    def __init__(self):
        self.cond = threading.Condition()
        self.interrupt_flag = threading.Event()
        self.epoch = 0
        self._clear()
        threading.Thread(target=self._work, name="sim-comfyui-queue",
                         daemon=True).start()

    def _clear(self):
        self.pending = []               # heap: (number, prompt_id, seq, job)
        self.seq = 0
        self.running = None
        self.history = {}               # prompt_id -> entry, oldest first
        self.files = {}                 # full path -> (ImageSpec, prompt_id)
        self.cache = {}                 # signature -> (outputs, ui)
        self.number = 0
        self.texts = {}                 # prompt_id -> directive strings
        self.preview_suffix = {}        # PreviewImage node id -> suffix

    def reset(self):
        """Forget everything; a running prompt is stopped and dropped."""
        with self.cond:
            self.epoch += 1
            self._clear()
            self.interrupt_flag.set()
            self.cond.notify_all()

    def _check(self, epoch):
        if epoch != self.epoch:
            raise _Reset()

    # -- the queue (server.py routes) -------------------------------------

    def take_number(self):
        with self.cond:
            number = self.number
            self.number += 1
            return number

    def submit(self, job, texts):
        with self.cond:
            self.seq += 1
            heapq.heappush(self.pending, (job.number, job.prompt_id,
                                          self.seq, job))
            if texts:
                self.texts[job.prompt_id] = texts
            self.cond.notify_all()

    def queue_lists(self):
        with self.cond:
            running = [self.running.item()] if self.running else []
            pending = [entry[-1].item() for entry in sorted(self.pending)]
            return json.loads(json.dumps({"queue_running": running,
                                          "queue_pending": pending}))

    def remaining(self):
        with self.cond:
            return len(self.pending) + (self.running is not None)

    def delete_pending(self, prompt_id):
        with self.cond:
            for i, entry in enumerate(self.pending):
                if entry[1] == prompt_id:
                    self.pending.pop(i)
                    heapq.heapify(self.pending)
                    return True
            return False

    def clear_pending(self):
        with self.cond:
            self.pending = []

    def interrupt(self, prompt_id):
        """
        POST /interrupt: with a prompt id, only if that prompt runs; without,
        whatever runs.  Return whether a running prompt was hit.
        """
        with self.cond:
            running = self.running
            if prompt_id:
                hit = running is not None and running.prompt_id == prompt_id
                if hit:
                    self.interrupt_flag.set()
            else:
                hit = running is not None
                self.interrupt_flag.set()
            return hit

    def get_history(self, prompt_id=None, max_items=None, offset=-1):
        """PromptQueue.get_history."""
        with self.cond:
            if prompt_id is not None:
                entry = self.history.get(prompt_id)
                return {} if entry is None else \
                    json.loads(json.dumps({prompt_id: entry}))
            if offset < 0 and max_items is not None:
                offset = len(self.history) - max_items
            out = {}
            for i, key in enumerate(self.history):
                if i >= offset:
                    out[key] = self.history[key]
                    if max_items is not None and len(out) >= max_items:
                        break
            return json.loads(json.dumps(out))

    def delete_history(self, prompt_id):
        """Delete an entry; return whether there was one."""
        with self.cond:
            return self.history.pop(prompt_id, None) is not None

    def clear_history(self):
        with self.cond:
            self.history = {}

    def texts_of(self, prompt_id):
        with self.cond:
            return list(self.texts.get(prompt_id, []))

    def file(self, path):
        with self.cond:
            return self.files.get(path)

    def running_id(self):
        with self.cond:
            return self.running.prompt_id if self.running else None

    # -- the worker (main.prompt_worker) ----------------------------------

    def _work(self):
        while True:
            with self.cond:
                while not self.pending:
                    self.cond.wait()
                job = heapq.heappop(self.pending)[-1]
                self.running = job
                epoch = self.epoch
                # execute() starts with interrupt_processing(False)
                self.interrupt_flag.clear()
            try:
                entry = self._execute(job, epoch)
            except _Reset:
                entry = None
            except Exception:           # a bug must not stop the queue
                sys.excepthook(*sys.exc_info())
                entry = None
            with self.cond:
                if entry is not None and epoch == self.epoch:
                    if len(self.history) > COMFY_HISTORY_MAX:
                        self.history.pop(next(iter(self.history)))
                    self.history[job.prompt_id] = entry
                if self.running is job:
                    self.running = None
                self.cond.notify_all()

    def _wait(self, seconds, node_id):
        """Sleep SECONDS unless interrupted (then raise _Interrupted)."""
        if seconds > 0:
            if self.interrupt_flag.wait(seconds):
                time.sleep(min(seconds, COMFY_INTERRUPT_LATENCY))
                raise _Interrupted(node_id)
        elif self.interrupt_flag.is_set():
            raise _Interrupted(node_id)

    def _execute(self, job, epoch):
        """Run JOB as PromptExecutor.execute; return its history entry."""
        graph, pid = job.graph, job.prompt_id
        messages = []

        def note(event, data):
            data["timestamp"] = now_ms()
            messages.append([event, data])

        note("execution_start", {"prompt_id": pid})
        sigs = _comfy_signatures(graph)
        with self.cond:
            self._check(epoch)
            cached = {n: self.cache[sigs[n]] for n in graph
                      if sigs[n] in self.cache}
        note("execution_cached", {"nodes": list(cached), "prompt_id": pid})
        results = {n: entry[0] for n, entry in cached.items()}
        ui = {n: entry[1] for n, entry in cached.items()
              if entry[1] is not None}
        order = _comfy_order(graph, job.outputs, cached)
        plan = _Plan(job, order)
        executed, fresh = [], {}
        try:
            for nid in order:
                # nodes.before_node_execution()
                self._wait(plan.node_time, nid)
                outputs, node_ui = self._run_node(job, nid, results, plan,
                                                  epoch)
                results[nid] = outputs
                if node_ui is not None:
                    ui[nid] = node_ui
                executed.append(nid)
                fresh[sigs[nid]] = (outputs, node_ui)
        except _Interrupted as ex:
            note("execution_interrupted", {
                "prompt_id": pid, "node_id": ex.node_id,
                "node_type": graph[ex.node_id]["class_type"],
                "executed": list(executed)})
            success = False
        except PyError as ex:
            nid = ex.node_id
            note("execution_error", {
                "prompt_id": pid, "node_id": nid,
                "node_type": graph[nid]["class_type"],
                "executed": list(executed),
                "exception_message": ex.message,
                "exception_type": ex.type_name,
                "traceback": ex.frames,
                "current_inputs": ex.current_inputs,
                "current_outputs": list(cached)})
            success = False
        else:
            note("execution_success", {"prompt_id": pid})
            success = True
        with self.cond:
            self._check(epoch)
            # the cache keeps what this prompt used (clean_unused)
            used = set(sigs.values())
            cache = {s: e for s, e in self.cache.items() if s in used}
            cache.update(fresh)
            self.cache = cache
        return {"prompt": job.item(),
                "outputs": ui,
                "status": {"status_str": "success" if success else "error",
                           "completed": success, "messages": messages},
                "meta": {n: {"node_id": n, "display_node": n,
                             "parent_node": None, "real_node_id": n}
                         for n in ui}}

    def _run_node(self, job, nid, results, plan, epoch):
        """One node's outputs (a tuple) and UI output (or None)."""
        node = job.graph[nid]
        class_type = node["class_type"]
        values = {}
        for key, value in node["inputs"].items():
            if comfy_is_link(value) and value[0] in results:
                values[key] = results[value[0]][int(value[1])]
            else:
                values[key] = value
        if nid == plan.fail:
            raise self._failure(job, nid, class_type, values)
        d = COMFY_NODE_DEFS[class_type]
        if "loads" in d:
            return tuple({"type": t, "node": nid} for t in d["output"]), None
        if class_type in ("EmptyLatentImage", "EmptySD3LatentImage"):
            # torch.zeros([batch, channels, height // 8, width // 8])
            return ({"type": "LATENT", "width": values["width"] // 8 * 8,
                     "height": values["height"] // 8 * 8,
                     "batch": values["batch_size"], "seed": None},), None
        if class_type == "KSampler":
            for _ in range(values["steps"]):
                self._wait(plan.step_time, nid)
            latent = dict(values["latent_image"])
            latent["seed"] = values["seed"]
            return (latent,), None
        if class_type == "VAEDecode":
            image = dict(values["samples"])
            image["type"] = "IMAGE"
            return (image,), None
        if class_type in ("SaveImage", "PreviewImage"):
            temp = class_type == "PreviewImage"
            if temp:
                with self.cond:
                    suffix = self.preview_suffix.setdefault(nid, "".join(
                        random.choice("abcdefghijklmnopqrstupvxyz")
                        for _ in range(5)))
                prefix = "ComfyUI_temp_" + suffix
            else:
                prefix = values["filename_prefix"]
            images = self._save(job, nid, values["images"], prefix, temp,
                                values, epoch)
            return (), {"images": images}
        if class_type == "ModelSamplingSD3":
            return (values["model"],), None
        return tuple({"type": t, "node": nid} for t in d["output"]), None

    def _save(self, job, nid, image, prefix, temp, values, epoch):
        """SaveImage.save_images: name and register the files."""
        width, height = image["width"], image["height"]
        if job.png_size is not None:
            width, height = job.png_size
        if "%" in prefix:
            prefix = _comfy_prefix_vars(prefix, width, height)
        base = COMFY_DIRS["temp" if temp else "output"]
        norm = posixpath.normpath(prefix)
        subfolder, filename = posixpath.dirname(norm), posixpath.basename(norm)
        folder = posixpath.normpath(posixpath.join(base, subfolder))
        common = posixpath.commonpath((base, folder))
        if common != base:
            raise self._error(
                nid, "Exception", "**** ERROR: Saving image outside the "
                "output folder is not allowed.\n full_output_folder: %s\n"
                "         output_dir: %s\n         commonpath: %s\n"
                % (folder, base, common),
                [_source_frame("nodes.py", 1645, "save_images",
                               "full_output_folder, filename, counter, "
                               "subfolder, filename_prefix = folder_paths."
                               "get_save_image_path(filename_prefix, "
                               "self.output_dir, images[0].shape[1], "
                               "images[0].shape[0])"),
                 _source_frame("folder_paths.py", 471, "get_save_image_path",
                               "raise Exception(err)")], values)
        texts = [("prompt", json.dumps(job.graph))]
        extra = job.extra_data.get("extra_pnginfo")
        if isinstance(extra, dict):
            texts += [(str(k)[:79], json.dumps(v)) for k, v in extra.items()]
        results = []
        with self.cond:
            self._check(epoch)
            counter = 0
            for path in self.files:
                head, name = posixpath.split(path)
                if head != folder or name[:len(filename) + 1] != \
                        filename + "_":
                    continue
                try:
                    digits = int(name[len(filename) + 1:].split("_")[0])
                except ValueError:
                    digits = 0
                counter = max(counter, digits)
            counter += 1
            for i in range(image["batch"]):
                name = "%s_%05d_.png" % (
                    filename.replace("%batch_num%", str(i)), counter)
                spec = ImageSpec(width, height, "comfy|%s|%d"
                                 % (image["seed"], i), texts, job.png,
                                 job.image_bytes)
                self.files[posixpath.join(folder, name)] = (spec,
                                                            job.prompt_id)
                results.append({"filename": name, "subfolder": subfolder,
                                "type": "temp" if temp else "output"})
                counter += 1
        return results

    @staticmethod
    def _error(nid, type_name, message, frames, values, tips=""):
        """The PyError a failing node reports (message, then the tips)."""
        ex = PyError(type_name, "%s\n%s" % (message, tips),
                     _EXEC_FRAMES + frames)
        ex.node_id = nid
        address = 0x7f3a00000000 + int(hashlib.sha256(
            nid.encode()).hexdigest()[:8], 16) * 16
        ex.current_inputs = {}
        for key, value in values.items():
            if isinstance(value, dict) and "type" in value:
                value = _COMFY_REPRS[value["type"]]
                if "%x" in value:
                    value %= address
            elif value is not None and \
                    not isinstance(value, (int, float, bool, str)):
                value = str(value)
            ex.current_inputs[key] = [value]
        return ex

    def _failure(self, job, nid, class_type, values):
        """The exception exec_error=KIND raises in node NID."""
        kind = job.exec_error
        if kind == "oom":
            return self._error(
                nid, "torch.OutOfMemoryError", COMFY_OOM_MESSAGE,
                [_source_frame("comfy/ldm/modules/attention.py", 520,
                               "attention_pytorch",
                               "out = comfy.ops.scaled_dot_product_attention"
                               "(q, k, v, attn_mask=mask, dropout_p=0.0, "
                               "is_causal=False)")], values, COMFY_OOM_TIPS)
        if kind == "runtime":
            return self._error(
                nid, "RuntimeError", "mat1 and mat2 shapes cannot be "
                "multiplied (154x2048 and 768x320)",
                [_source_frame("comfy/ops.py", 75,
                               "forward_comfy_cast_weights",
                               "return torch.nn.functional.linear(input, "
                               "weight, bias)")], values,
                COMFY_SHAPE_TIPS if "Sampler" in class_type else "")
        if kind == "corrupt":
            folder, key = COMFY_NODE_DEFS[class_type].get(
                "loads", ("checkpoints", None))
            path = "%s/models/%s/%s" % (COMFY_ROOT, folder,
                                        values.get(key, "model.safetensors"))
            return self._error(
                nid, "ValueError", "Error while deserializing header: "
                "HeaderTooLarge\n\nFile path: %s\n\nThe safetensors file is "
                "corrupt or invalid. Make sure this is actually a "
                "safetensors file and not a ckpt or pt or other filetype."
                % path,
                [_source_frame("comfy/utils.py", 65, "load_torch_file",
                               "raise ValueError(\"{}\\n\\nFile path: {}\\n\\n"
                               "The safetensors file is corrupt or invalid. "
                               "Make sure this is actually a safetensors "
                               "file and not a ckpt or pt or other "
                               "filetype.\".format(message, ckpt))")],
                values)
        return self._error(
            nid, "Exception", "Simulated failure in %s" % class_type,
            [_source_frame("nodes.py", 1525, "sample",
                           "raise Exception(\"Simulated failure\")")], values)


# -- the HTTP role (server.py) ------------------------------------------------

COMFY_ROUTES = (
    (r"/system_stats", {"GET": "system_stats"}),
    (r"/prompt", {"GET": "prompt_info", "POST": "prompt"}),
    (r"/queue", {"GET": "queue", "POST": "queue_change"}),
    (r"/interrupt", {"POST": "interrupt"}),
    (r"/history", {"GET": "history", "POST": "history_change"}),
    (r"/history/([^/]+)", {"GET": "history_one"}),
    (r"/view", {"GET": "view"}),
    (r"/object_info", {"GET": "object_info"}),
    (r"/object_info/([^/]+)", {"GET": "object_info_one"}),
    (r"/models", {"GET": "model_folders"}),
    (r"/models/([^/]+)", {"GET": "model_files"}),
    (r"/embeddings", {"GET": "embeddings"}),
)

# aiohttp's answer when a handler raises.
AIOHTTP_500 = "500 Internal Server Error\n\nServer got itself in trouble"


def comfy_api_path(path):
    """Every route also answers under /api/."""
    return path[4:] if path.startswith("/api/") else path


class ComfyUIBackend(Backend):
    role = "comfyui"
    # aiohttp does not cancel a web handler when its client disconnects
    # (handler_cancellation is off by default): a POST /prompt that was
    # read is queued even if the client left while it was handled
    finishes_after_disconnect = True

    def __init__(self, sim):
        super().__init__(sim)
        self.engine = ComfyEngine()

    def reset(self):
        self.engine.reset()

    def match(self, ex):
        """(handler name or None, route's methods, path arguments)."""
        method = "GET" if ex.command == "HEAD" else ex.command
        path = comfy_api_path(ex.path_only)
        for pattern, methods in COMFY_ROUTES:
            m = re.fullmatch(pattern, path)
            if m:
                args = [urllib.parse.unquote(g) for g in m.groups()]
                return methods.get(method), methods, args
        return None, None, []

    def handle(self, ex):
        name, methods, args = self.match(ex)
        if methods is None:
            return self.not_found(ex)
        if name is None:
            allowed = sorted(set(methods) | ({"HEAD"} if "GET" in methods
                                             else set()))
            return ex.send_text(405, "405: Method Not Allowed",
                                [("Allow", ",".join(allowed))])
        try:
            return getattr(self, name)(ex, *args)
        except ComfyServerError:
            return ex.send_text(500, AIOHTTP_500)

    # -- directives -------------------------------------------------------

    def scope(self, ex):
        """Which directives of a graph this request obeys (their on=)."""
        name = self.match(ex)[0]
        return {"prompt": "prompt", "history_one": "history",
                "view": "view"}.get(name)

    def directive_texts(self, ex):
        scope = self.scope(ex)
        if scope == "prompt":
            if isinstance(ex.payload, dict):
                return list(all_strings(ex.payload.get("prompt")))
        elif scope == "history":
            return self.engine.texts_of(self.match(ex)[2][0])
        elif scope == "view":
            found = self.view_file(ex)
            if isinstance(found, tuple):
                return self.engine.texts_of(found[1])
        return []

    def select_directives(self, ex, directives):
        """
        A graph's directives act where their on= says: on POST /prompt by
        default, on=history on GET /history/{id} of that prompt, on=view on
        GET /view of its images.  Elsewhere only their tag is kept, so that
        one tag follows a prompt through its polls and downloads.
        """
        scope = self.scope(ex)
        out = []
        for d in directives:
            if d.actions.get("on", "prompt") == scope:
                out.append(d if scope == "prompt"
                           else Directive(d.target, d.actions, []))
            else:
                tag = {"tag": d.actions["tag"]} if "tag" in d.actions else {}
                out.append(Directive(d.target, tag, d.errors
                                     if scope == "prompt" else []))
        return out

    # -- answers ----------------------------------------------------------

    def send_status_error(self, ex, status, model=None):
        # ComfyUI's 5xx come from aiohttp as plain text.
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        ex.send_text(status, self.error_message(ex, "%d: %s" %
                                                (status, phrase)))

    def not_found(self, ex):
        ex.send_text(404, "404: Not Found")

    @staticmethod
    def json(ex, obj, status=200):
        # aiohttp's json_response: json.dumps with its defaults (ASCII)
        ex.send_json(status, obj, ensure_ascii=True)

    @staticmethod
    def empty(ex):
        # web.Response(status=200)
        ex.send_bytes(200, b"", "application/octet-stream")

    @staticmethod
    def body(ex, default=None):
        """await request.json(): the JSON body, or ComfyServerError."""
        if ex.json_error is not None or not ex.raw_body:
            if default is not None:
                return default
            raise ComfyServerError("bad JSON body")
        return ex.payload

    def models(self):
        return self.sim.state.role_config("comfyui")["models"]

    def old_server(self):
        """
        A build from before the prompt_id-targeted interrupt (ComfyUI PR
        9607, August 2025): POST /prompt ignores a caller's prompt_id and
        names the prompt with a uuid4 of its own, and POST /interrupt
        ignores its body and interrupts whatever runs.
        """
        return self.sim.state.role_config("comfyui")["old_server"]

    # -- routes -----------------------------------------------------------

    def system_stats(self, ex):
        gib = 1024 ** 3
        devices = [{"name": "cuda:%d NVIDIA GeForce RTX 4090 : "
                    "cudaMallocAsync" % i, "type": "cuda", "index": i,
                    "vram_total": 24 * gib, "vram_free": 22 * gib,
                    "torch_vram_total": 0, "torch_vram_free": 0}
                   for i in range(2)]
        self.json(ex, {"system": {
            "os": "posix", "ram_total": 128 * gib, "ram_free": 100 * gib,
            "comfyui_version": "0.3.60",
            "required_frontend_version": "1.26.0",
            "python_version": "3.11.2", "pytorch_version": "2.8.0+cu128",
            "embedded_python": False,
            "argv": ["main.py", "--listen", "127.0.0.1"]},
            "devices": devices})

    def prompt_info(self, ex):
        self.json(ex, {"exec_info": {
            "queue_remaining": self.engine.remaining()}})

    def queue(self, ex):
        self.json(ex, self.engine.queue_lists())

    def prompt(self, ex):
        data = self.body(ex)
        if not isinstance(data, (dict, list)):
            raise ComfyServerError("body is not an object")
        if "number" in data:
            try:
                number = float(data["number"])
            except (TypeError, ValueError):
                raise ComfyServerError("bad number")
        else:
            number = self.engine.take_number()
            if isinstance(data, dict) and data.get("front"):
                number = -number
        if "prompt" not in data:
            return self.json(ex, {"error": {
                "type": "no_prompt", "message": "No prompt provided",
                "details": "No prompt provided", "extra_info": {}},
                "node_errors": {}}, 400)
        if not isinstance(data, dict):
            raise ComfyServerError("body is not an object")
        # validation converts values in place: not in the logged body
        graph = json.loads(json.dumps(data["prompt"]))
        # an old build names every prompt itself, whatever the client sent
        prompt_id = str(data["prompt_id"]) if "prompt_id" in data and \
            not self.old_server() else str(uuid.uuid4())
        targets = data.get("partial_execution_targets")
        extra = json.loads(json.dumps(data.get("extra_data", {})))
        client_id = data.get("client_id")
        self.sim.state.update(ex.rec, prompt_id=prompt_id,
                              client_id=client_id)
        valid, error, good, node_errors = comfy_validate(
            graph, comfy_object_info(self.models()), targets)
        if not valid:
            return self.json(ex, {"error": error,
                                  "node_errors": node_errors}, 400)
        if not isinstance(extra, dict):
            raise ComfyServerError("extra_data is not an object")
        b = ex.behaviour
        if b.redirect is not None or b.failure_status() not in (None, 200):
            # nothing queued: the answer is an error
            return self.directive_failure(ex)
        if "client_id" in data:
            extra["client_id"] = client_id
        sensitive = {k: extra.pop(k) for k in COMFY_SENSITIVE if k in extra}
        extra["create_time"] = now_ms()
        step_delay = self.sim.state.role_config("comfyui")["step_delay"]
        job = ComfyJob(number, prompt_id, graph, extra, good, sensitive, b,
                       step_delay)
        texts = [t for t in all_strings(graph) if "[[sim" in t]
        self.engine.submit(job, texts)
        # malformed and drop spoil the answer of a prompt that was queued
        if b.malformed:
            return ex.send_malformed()
        self.json(ex, {"prompt_id": prompt_id, "number": number,
                       "node_errors": node_errors})

    def queue_change(self, ex):
        data = self.body(ex)
        if not isinstance(data, (dict, list)):
            raise ComfyServerError("body is not an object")
        if "clear" in data and data["clear"]:
            self.engine.clear_pending()
        if "delete" in data:
            if not isinstance(data["delete"], list):
                raise ComfyServerError("delete is not a list")
            for prompt_id in data["delete"]:
                self.engine.delete_pending(prompt_id)
        self.empty(ex)

    def interrupt(self, ex):
        if self.old_server():
            # nodes.interrupt_processing() without reading the body: a
            # global interrupt whatever it names (logged with the prompt_id
            # it named, for the tests)
            data = ex.payload if ex.json_error is None else None
            named = data.get("prompt_id") if isinstance(data, dict) else None
            hit = self.engine.interrupt(None)
            self.sim.state.update(
                ex.rec, prompt_id=named if isinstance(named, str) and named
                else None, interrupt="global", interrupted=hit)
            return self.empty(ex)
        data = self.body(ex, default={})
        if not isinstance(data, dict):
            raise ComfyServerError("body is not an object")
        prompt_id = data.get("prompt_id")
        hit = self.engine.interrupt(prompt_id)
        self.sim.state.update(
            ex.rec, prompt_id=prompt_id if prompt_id else None,
            interrupt="prompt" if prompt_id else "global", interrupted=hit)
        self.empty(ex)

    def history(self, ex):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(ex.path).query,
                                      keep_blank_values=True)
        try:
            max_items = query.get("max_items", [None])[0]
            max_items = None if max_items is None else int(max_items)
            offset = int(query.get("offset", ["-1"])[0])
        except ValueError:
            raise ComfyServerError("bad number")
        self.json(ex, self.engine.get_history(max_items=max_items,
                                              offset=offset))

    def history_one(self, ex, prompt_id):
        self.sim.state.update(ex.rec, prompt_id=prompt_id)
        if self.directive_failure(ex):
            return
        self.json(ex, self.engine.get_history(prompt_id=prompt_id))

    def history_change(self, ex):
        data = self.body(ex)
        if not isinstance(data, (dict, list)):
            raise ComfyServerError("body is not an object")
        if "clear" in data and data["clear"]:
            self.engine.clear_history()
        if "delete" in data:
            if not isinstance(data["delete"], list):
                raise ComfyServerError("delete is not a list")
            # the entries that were there, for the tests ("forgotten")
            forgotten = [prompt_id for prompt_id in data["delete"]
                         if self.engine.delete_history(prompt_id)]
            self.sim.state.update(ex.rec, forgotten=forgotten)
        self.empty(ex)

    def view_file(self, ex):
        """
        server.view_image's checks for GET /view: a status (400, 403, 404)
        or (ImageSpec, prompt_id, file name), kept for the request.
        """
        # EX is the connection's handler, kept across keep-alive requests:
        # the answer is this request's (its record), not the connection's
        cached = getattr(ex, "comfy_view", None)
        if cached is not None and cached[0] is ex.rec:
            return cached[1]
        found = self._view_file(ex)
        ex.comfy_view = (ex.rec, found)
        return found

    def _view_file(self, ex):
        query = {}
        for key, value in urllib.parse.parse_qsl(
                urllib.parse.urlsplit(ex.path).query, keep_blank_values=True):
            query.setdefault(key, value)
        if "filename" not in query:
            return 404
        filename, kind = query["filename"], None
        for name in COMFY_DIRS:
            if filename.endswith(" [%s]" % name):
                filename, kind = filename[:-len(name) - 3], name
        if not filename:
            return 400
        if filename[0] == "/" or ".." in filename:
            return 400
        folder = COMFY_DIRS.get(kind or query.get("type", "output"))
        if folder is None:
            return 400
        if "subfolder" in query:
            full = posixpath.normpath(posixpath.join(folder,
                                                     query["subfolder"]))
            if posixpath.commonpath((full, folder)) != folder:
                return 403
            folder = full
        filename = posixpath.basename(filename)
        found = self.engine.file(posixpath.join(folder, filename))
        if found is None:
            return 404
        return found[0], found[1], filename

    def view(self, ex):
        found = self.view_file(ex)
        if not isinstance(found, tuple):
            return ex.send_bytes(found, b"", "application/octet-stream")
        spec, prompt_id, filename = found
        self.sim.state.update(ex.rec, prompt_id=prompt_id)
        if self.directive_failure(ex):
            return
        ex.send_bytes(200, PNG_CACHE.get(spec), "image/png", [
            ("Content-Disposition", 'filename="%s"' % filename)])

    def object_info(self, ex):
        self.json(ex, comfy_object_info(self.models()))

    def object_info_one(self, ex, name):
        info = comfy_object_info(self.models())
        self.json(ex, {name: info[name]} if name in info else {})

    def model_folders(self, ex):
        self.json(ex, list(COMFY_MODEL_FOLDERS))

    def model_files(self, ex, folder):
        if folder not in COMFY_MODEL_FOLDERS:
            return ex.send_bytes(404, b"", "application/octet-stream")
        self.json(ex, sorted(self.models().get(folder, [])))

    def embeddings(self, ex):
        self.json(ex, [])


BACKENDS = {"ollama": OllamaBackend, "openai": OpenAIBackend,
            "anthropic": AnthropicBackend, "comfyui": ComfyUIBackend}


# --------------------------------------------------------------------------
# Control API
# --------------------------------------------------------------------------

class ControlHandler(http.server.BaseHTTPRequestHandler):
    """JSON API to read the log and steer the simulator (see README)."""

    protocol_version = "HTTP/1.1"
    server_version = "igny8-sim-control"
    sys_version = ""
    timeout = 300

    def log_message(self, fmt, *args):
        if self.server.sim.verbose:
            sys.stderr.write("igny8_sim control: %s\n" % (fmt % args))

    def version_string(self):
        return self.server_version

    def do_GET(self):
        self._dispatch()

    do_POST = do_GET

    def _reply(self, status, obj):
        body = (json.dumps(obj, sort_keys=True) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self):
        sim = self.server.sim
        split = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in
                 urllib.parse.parse_qs(split.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        parts = [p for p in split.path.split("/") if p]
        route = (self.command, parts[0] if parts else "")
        arg = parts[1] if len(parts) > 1 else None
        try:
            if route == ("GET", "log"):
                return self._reply(200, sim.state.query_log(
                    role=query.get("role"), tag=query.get("tag"),
                    key=query.get("key"), path=query.get("path"),
                    prompt_id=query.get("prompt_id")))
            if route == ("GET", "counts"):
                return self._reply(200, sim.state.get_counts())
            if route == ("GET", "status"):
                return self._reply(200, sim.role_status())
            if route == ("GET", "ports"):
                return self._reply(200, sim.ports)
            if route == ("GET", "config"):
                return self._reply(200, {r: sim.state.role_config(r)
                                         for r in BACKEND_ROLES})
            if route == ("POST", "reset"):
                sim.reset()
                return self._reply(200, {"ok": True})
            if route in (("POST", "down"), ("POST", "up")):
                if arg not in BACKEND_ROLES:
                    return self._reply(404, {"error": "unknown role %r"
                                             % arg})
                if route[1] == "down":
                    sim.listeners[arg].stop()
                else:
                    sim.listeners[arg].start()
                return self._reply(200, {"role": arg,
                                         "up": sim.listeners[arg].is_up})
            if route == ("POST", "config"):
                if arg not in BACKEND_ROLES:
                    return self._reply(404, {"error": "unknown role %r"
                                             % arg})
                changes = json.loads(raw or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("body must be a JSON object")
                return self._reply(200, sim.state.change_config(arg,
                                                                changes))
        except ValueError as exc:
            return self._reply(400, {"error": str(exc)})
        except OSError as exc:
            return self._reply(409, {"error": str(exc)})
        self._reply(404, {"error": "no such control call: %s %s"
                          % (self.command, split.path)})


# --------------------------------------------------------------------------
# Listeners and process life cycle
# --------------------------------------------------------------------------

class RoleListener:
    """One role's server, which can be taken down and brought back up."""

    def __init__(self, sim, role, host, handler, backend=None,
                 tls_context=None):
        self.sim = sim
        self.role = role
        self.host = host
        self.handler = handler
        self.backend = backend
        self.tls_context = tls_context  # serve HTTPS with it when set
        self.port = 0
        self.server = None
        self.lock = threading.Lock()

    @property
    def is_up(self):
        return self.server is not None

    def start(self):
        """Listen (again) on our port; port 0 the first time."""
        with self.lock:
            if self.server is not None:
                return
            server = SimServer((self.host, self.port), self.handler,
                               self.sim, self.role, self.backend)
            if self.tls_context is not None:
                server.socket = self.tls_context.wrap_socket(
                    server.socket, server_side=True)
            self.port = server.server_address[1]
            thread = threading.Thread(target=server.serve_forever,
                                      kwargs={"poll_interval": 0.1},
                                      name="sim-" + self.role, daemon=True)
            thread.start()
            self.server = server

    def stop(self):
        """Close the listening socket and every open connection."""
        with self.lock:
            server, self.server = self.server, None
            if server is None:
                return
            server.going_down = True
            server.shutdown()
            server.server_close()
            server.kill_connections()


class Simulator:
    def __init__(self, args):
        self.verbose = args.verbose
        self.openai_key = os.environ.get("IGNY8_SIM_OPENAI_KEY",
                                         DEFAULT_OPENAI_KEY)
        self.anthropic_key = os.environ.get("IGNY8_SIM_ANTHROPIC_KEY",
                                            DEFAULT_ANTHROPIC_KEY)
        defaults = {role: {"delay": 0.0, "status": None}
                    for role in BACKEND_ROLES}
        defaults["ollama"]["models"] = args.ollama_models
        defaults["ollama"]["no_think_models"] = args.no_think_models
        models = comfy_edit_models(COMFY_DEFAULT_MODELS, "remove",
                                   args.comfyui_remove_models)
        defaults["comfyui"]["models"] = comfy_edit_models(
            models, "add", args.comfyui_add_models)
        defaults["comfyui"]["step_delay"] = args.comfyui_step_delay
        # a build from before the targeted interrupt (ComfyUIBackend)
        defaults["comfyui"]["old_server"] = args.comfyui_old_server
        # more keys the OpenAI role accepts (an account's own key)
        defaults["openai"]["extra_keys"] = []
        self.state = SimState(defaults)
        self.listeners = {
            role: RoleListener(self, role, args.host, SimHandler,
                               BACKENDS[role](self))
            for role in BACKEND_ROLES}
        self.listeners["control"] = RoleListener(self, "control", args.host,
                                                 ControlHandler)
        if args.tls_cert:
            # the OpenAI role again, over HTTPS with the given certificate
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
            self.listeners["openai_tls"] = RoleListener(
                self, "openai", args.host, SimHandler,
                BACKENDS["openai"](self), tls_context=ctx)
        self.host = args.host
        self.ports = {}

    def reset(self):
        """POST /reset: the log, counters and settings, and ComfyUI's
        queue, history, files and cache."""
        self.state.reset()
        self.listeners["comfyui"].backend.reset()

    def role_status(self):
        return {role: "up" if self.listeners[role].is_up else "down"
                for role in BACKEND_ROLES}

    def start(self):
        for listener in self.listeners.values():
            listener.start()
        # A port nobody listens on: bind, note, close.
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind((self.host, 0))
        dead = probe.getsockname()[1]
        probe.close()
        self.ports = {role: listener.port
                      for role, listener in self.listeners.items()}
        self.ports["dead"] = dead
        self.ports["pid"] = os.getpid()

    def stop(self):
        # all at once: each waits up to a poll interval for its server
        threads = [threading.Thread(target=listener.stop)
                   for listener in self.listeners.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def write_atomically(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def csv_list(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Backend protocol simulator for the igny8_ai tests.")
    parser.add_argument("--state-dir", required=True,
                        help="directory where ports.json is written")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pidfile", help="write the process id here")
    parser.add_argument("--ollama-models", type=csv_list,
                        default=list(DEFAULT_OLLAMA_MODELS),
                        help="comma-separated installed Ollama models")
    parser.add_argument("--no-think-models", type=csv_list, default=[],
                        help="comma-separated Ollama models that refuse "
                        "think")
    parser.add_argument("--comfyui-step-delay", type=float, default=0.0,
                        metavar="S", help="ComfyUI: seconds per sampler "
                        "step (default 0)")
    parser.add_argument("--comfyui-old-server", action="store_true",
                        help="ComfyUI: behave as a build from before the "
                        "prompt_id-targeted interrupt (own prompt ids, "
                        "every interrupt global)")
    parser.add_argument("--comfyui-remove-models", type=csv_list,
                        default=[], metavar="LIST",
                        help="ComfyUI: comma-separated model files to "
                        "leave out, FOLDER/FILE or FILE (every folder)")
    parser.add_argument("--comfyui-add-models", type=csv_list, default=[],
                        metavar="LIST",
                        help="ComfyUI: comma-separated model files to add, "
                        "FOLDER/FILE")
    parser.add_argument("--tls-cert",
                        help="PEM certificate: also serve the OpenAI role "
                        "over HTTPS (port \"openai_tls\")")
    parser.add_argument("--tls-key", help="PEM key of --tls-cert")
    parser.add_argument("--verbose", action="store_true",
                        help="log every request to stderr")
    args = parser.parse_args(argv)
    if not args.comfyui_step_delay >= 0:
        parser.error("--comfyui-step-delay must be >= 0")
    try:
        comfy_edit_models({}, "add", args.comfyui_add_models)
    except ValueError as exc:
        parser.error("--comfyui-add-models: %s" % exc)

    # Hundreds of concurrent connections need more than the usual soft
    # limit of 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 65536:
        hard = 65536
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    os.makedirs(args.state_dir, exist_ok=True)
    ports_path = os.path.join(args.state_dir, "ports.json")
    remove_quietly(ports_path)      # never let a runner read stale ports

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    sim = Simulator(args)
    sim.start()
    if args.pidfile:
        write_atomically(args.pidfile, "%d\n" % os.getpid())
    write_atomically(ports_path, json.dumps(sim.ports) + "\n")
    print("igny8_sim: ready %s state=%s" % (
        " ".join("%s=%s" % kv for kv in sim.ports.items()), args.state_dir),
        flush=True)

    while not stop.wait(0.05):
        pass

    sim.stop()
    remove_quietly(ports_path)
    if args.pidfile:
        remove_quietly(args.pidfile)
    print("igny8_sim: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
