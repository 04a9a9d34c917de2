#!/usr/bin/python3
"""
igny8_sim.py - backend protocol simulator for the igny8_ai test suite.

One process serves every backend igny8_ai talks to, each on its own
loopback port picked at start-up (never a fixed port: a machine may run two
copies of the suite):

    ollama      Ollama native API (/api/...) and its OpenAI-compatible layer
    openai      OpenAI chat completions, models, image generation
    anthropic   Anthropic Messages API
    comfyui     a minimal ComfyUI stub (health, queue, prompt, history)
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
    "long_model": _positive_int,
    "cache_read": _positive_int,
    "cache_creation": _positive_int,
    "cached": _positive_int,
    "context": _flag,
    "png": _png_fault,
    "png_size": _image_size,
    "image_bytes": _positive_int,
    "content_policy": _content_policy,
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

    def query_log(self, role=None, tag=None, key=None, path=None):
        """Matching records, oldest first, serialised under the lock."""
        with self.lock:
            out = [r for r in self.log
                   if (role is None or r["role"] == role) and
                   (tag is None or r["tag"] == tag) and
                   (key is None or r["key"] == key) and
                   (path is None or r["path"] == path)]
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
                elif name in ("models", "no_think_models"):
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
        ClientGone.  Polls every POLL_INTERVAL seconds.
        """
        deadline = time.monotonic() + seconds
        sock = self.connection
        # poll, not select: select fails on descriptors >= 1024.
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLHUP |
                        select.POLLERR)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.server.going_down:
                raise ServerGoingDown()
            step = min(POLL_INTERVAL, remaining)
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
                  content_type="application/json; charset=utf-8"):
        """
        Send OBJ as JSON.  With OVERSIZE (a byte count), the first
        OVERSIZE_MARK string inside OBJ is replaced on the wire by that many
        bytes of PATTERN repeated, generated chunk by chunk.
        """
        text = json.dumps(obj, ensure_ascii=False)
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
        text = behaviour.taint("thinking", THINKING_TEXT)
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
        if self.received_key(ex) == self.sim.openai_key:
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
                "This model's maximum context length is 8192 tokens. "
                "However, your messages resulted in 8500 tokens. Please "
                "reduce the length of the messages.",
                "invalid_request_error", "messages",
                "context_length_exceeded")
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
              "prompt is too long: 215000 tokens > 200000 maximum"),
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


# -- ComfyUI (minimal stub; the full simulation comes later) -----------------

class ComfyUIBackend(Backend):
    role = "comfyui"

    def route(self, method, path):
        if path.startswith("/api/"):
            path = path[4:]
        if method == "GET" and path.startswith("/history/"):
            return self.history
        return {("GET", "/system_stats"): self.system_stats,
                ("GET", "/queue"): self.queue,
                ("GET", "/prompt"): self.prompt_info,
                ("POST", "/prompt"): self.prompt}.get((method, path))

    def directive_texts(self, ex):
        if ex.command == "POST" and isinstance(ex.payload, dict):
            return list(all_strings(ex.payload.get("prompt")))
        return []

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

    def system_stats(self, ex):
        gib = 1024 ** 3
        devices = [{"name": "cuda:%d NVIDIA GeForce RTX 4090 : "
                    "cudaMallocAsync" % i, "type": "cuda", "index": i,
                    "vram_total": 24 * gib, "vram_free": 22 * gib,
                    "torch_vram_total": 0, "torch_vram_free": 0}
                   for i in range(2)]
        ex.send_json(200, {"system": {
            "os": "posix", "ram_total": 128 * gib, "ram_free": 100 * gib,
            "comfyui_version": "0.3.60",
            "required_frontend_version": "1.26.0",
            "python_version": "3.11.2", "pytorch_version": "2.8.0+cu128",
            "embedded_python": False,
            "argv": ["main.py", "--listen", "127.0.0.1"]},
            "devices": devices})

    def queue(self, ex):
        ex.send_json(200, {"queue_running": [], "queue_pending": []})

    def prompt_info(self, ex):
        ex.send_json(200, {"exec_info": {"queue_remaining": 0}})

    def prompt(self, ex):
        p = ex.payload
        if not isinstance(p, dict) or "prompt" not in p:
            return ex.send_json(400, {
                "error": {"type": "no_prompt", "message": "No prompt provided",
                          "details": "No prompt provided", "extra_info": {}},
                "node_errors": {}})
        if self.directive_failure(ex):
            return
        prompt_id = p.get("prompt_id") or str(uuid.uuid4())
        ex.send_json(200, {"prompt_id": prompt_id, "number": ex.rec["seq"],
                           "node_errors": {}})

    def history(self, ex):
        ex.send_json(200, {})


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
                    key=query.get("key"), path=query.get("path")))
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
                sim.state.reset()
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
    parser.add_argument("--tls-cert",
                        help="PEM certificate: also serve the OpenAI role "
                        "over HTTPS (port \"openai_tls\")")
    parser.add_argument("--tls-key", help="PEM key of --tls-cert")
    parser.add_argument("--verbose", action="store_true",
                        help="log every request to stderr")
    args = parser.parse_args(argv)

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
