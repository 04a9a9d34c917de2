#!/usr/bin/env python3
"""Write a tiny llama-architecture GGUF model with random weights.

    python3 test/real/make_gguf.py OUT.gguf [--seed N]

Python 3 standard library only; the same seed gives the same bytes. The file
is about 0.5 MB: 2 layers, n_embd 64, 4 heads (2 KV heads), n_ff 128, a
SentencePiece-style ("llama") vocabulary of 415 tokens (<unk>, <s>, </s>,
the 256 byte-fallback tokens, "▁", the printable ASCII characters and some
common English pairs), F32 tensors, 127,168 parameters. llama-server loads
it and generates gibberish.

Some of the weights are not random, so that the tests can rely on what the
model does (the residual stream is dominated by the token embedding, because
the layers' random weights are small, so the next token depends mostly on
the current one):

  * it never generates </s>, <unk>, <s>, a byte token (so its text is
    always valid UTF-8), "~" or "!",
  * except that after a "~" it generates "!", and after a "!" it generates
    </s>. A prompt whose rendered text ends in "~" is therefore answered
    with "!" and a natural stop (finish_reason "stop", stop_reason
    "end_turn"); any other prompt runs until max_tokens ("length").

The chat template renders the messages' contents one per line, without a
generation prompt, so that the prompt's last character is the user's.

GGUF layout (ggml/include/gguf.h, ggml/src/gguf.cpp): magic "GGUF", version
3, tensor count and key/value count as uint64, the key/value pairs (string
key, uint32 type, value), the tensor infos (name, n_dims, ne[] innermost
first, ggml type, offset in the data section), then the data section aligned
to general.alignment (32), each tensor's data padded to the alignment.
"""

import argparse
import array
import random
import struct
import sys

# gguf value types
T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY = 4, 5, 6, 7, 8, 9
GGML_TYPE_F32 = 0
ALIGNMENT = 32

# llama_token_type (llama.h)
TOK_NORMAL, TOK_UNKNOWN, TOK_CONTROL, TOK_BYTE = 1, 2, 3, 6

N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_CTX_TRAIN = 8192
HEAD_DIM = N_EMBD // N_HEAD

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- message['content'] -}}"
    "{%- endfor -%}"
)

PAIRS = (
    "▁t th he ▁a in er an re on at en nd ti es or te of ed is it al ar st "
    "to nt ng se ha as ou io le ve co me de hi ri ro ic ne ea ra ce li ch "
    "ll be ma si om ur the ing ion and ▁the ▁and ▁of ▁to ▁in"
).split()

STOP_FROM, STOP_TO = "~", "!"   # "~" -> "!" -> </s>


def vocabulary():
    """(tokens, scores, types) of an SPM vocabulary with byte fallback."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TOK_UNKNOWN, TOK_CONTROL, TOK_CONTROL]
    for b in range(256):
        tokens.append("<0x%02X>" % b)
        types.append(TOK_BYTE)
    tokens.append("▁")
    types.append(TOK_NORMAL)
    for c in range(0x21, 0x7F):
        tokens.append(chr(c))
        types.append(TOK_NORMAL)
    for p in PAIRS:
        tokens.append(p)
        types.append(TOK_NORMAL)
    # single characters never merge by score; pairs merge, earlier first
    scores = [0.0] * len(tokens)
    first_pair = len(tokens) - len(PAIRS)
    for i in range(first_pair, len(tokens)):
        scores[i] = -float(i - first_pair)
    for i in range(3, first_pair):
        scores[i] = -1000.0
    assert len(set(tokens)) == len(tokens)
    return tokens, scores, types


class Writer:
    def __init__(self):
        self.kv = []       # encoded key/value pairs
        self.infos = []    # (name, ne, data bytes)

    @staticmethod
    def _str(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def u32(self, key, v):
        self.kv.append(self._str(key) + struct.pack("<II", T_UINT32, v))

    def f32(self, key, v):
        self.kv.append(self._str(key) + struct.pack("<If", T_FLOAT32, v))

    def boolean(self, key, v):
        self.kv.append(self._str(key) + struct.pack("<IB", T_BOOL, 1 if v else 0))

    def string(self, key, v):
        self.kv.append(self._str(key) + struct.pack("<I", T_STRING) + self._str(v))

    def array(self, key, elem_type, values):
        out = [self._str(key), struct.pack("<IIQ", T_ARRAY, elem_type, len(values))]
        if elem_type == T_STRING:
            out += [self._str(v) for v in values]
        elif elem_type == T_FLOAT32:
            out.append(struct.pack("<%df" % len(values), *values))
        elif elem_type == T_INT32:
            out.append(struct.pack("<%di" % len(values), *values))
        else:
            raise ValueError(elem_type)
        self.kv.append(b"".join(out))

    def tensor(self, name, ne, values):
        """ne: dimensions innermost first (ggml order); values: row-major
        with ne[0] varying fastest."""
        n = 1
        for d in ne:
            n *= d
        assert len(values) == n, (name, len(values), n)
        a = array.array("f", values)
        if sys.byteorder == "big":
            a.byteswap()
        self.infos.append((name, ne, a.tobytes()))

    def write(self, path):
        head = [b"GGUF", struct.pack("<IQQ", 3, len(self.infos), len(self.kv))]
        head += self.kv
        offset = 0
        for name, ne, data in self.infos:
            head.append(self._str(name) + struct.pack("<I", len(ne)))
            head.append(struct.pack("<%dQ" % len(ne), *ne))
            head.append(struct.pack("<IQ", GGML_TYPE_F32, offset))
            offset += pad(len(data))
        blob = b"".join(head)
        blob += b"\0" * (pad(len(blob)) - len(blob))
        with open(path, "wb") as f:
            f.write(blob)
            for _, _, data in self.infos:
                f.write(data)
                f.write(b"\0" * (pad(len(data)) - len(data)))


def pad(n):
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=8)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    def uniform(n, scale):
        return [(rng.random() * 2.0 - 1.0) * scale for _ in range(n)]

    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    eos = tokens.index("</s>")
    stop_from = tokens.index(STOP_FROM)
    stop_to = tokens.index(STOP_TO)
    never = {i for i, t in enumerate(types) if t != TOK_NORMAL} | {stop_from, stop_to}

    w = Writer()
    w.string("general.architecture", "llama")
    w.string("general.name", "igny8-tiny-random")
    w.u32("general.file_type", 0)  # all F32
    w.u32("llama.context_length", N_CTX_TRAIN)
    w.u32("llama.embedding_length", N_EMBD)
    w.u32("llama.block_count", N_LAYER)
    w.u32("llama.feed_forward_length", N_FF)
    w.u32("llama.attention.head_count", N_HEAD)
    w.u32("llama.attention.head_count_kv", N_HEAD_KV)
    w.f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.u32("llama.rope.dimension_count", HEAD_DIM)
    w.f32("llama.rope.freq_base", 10000.0)
    w.u32("llama.vocab_size", n_vocab)
    w.string("tokenizer.ggml.model", "llama")
    w.array("tokenizer.ggml.tokens", T_STRING, tokens)
    w.array("tokenizer.ggml.scores", T_FLOAT32, scores)
    w.array("tokenizer.ggml.token_type", T_INT32, types)
    w.u32("tokenizer.ggml.unknown_token_id", tokens.index("<unk>"))
    w.u32("tokenizer.ggml.bos_token_id", tokens.index("<s>"))
    w.u32("tokenizer.ggml.eos_token_id", eos)
    w.boolean("tokenizer.ggml.add_bos_token", True)
    w.boolean("tokenizer.ggml.add_eos_token", False)
    w.string("tokenizer.chat_template", CHAT_TEMPLATE)

    # Embeddings: dimension 0 is a constant "ordinary token" signal, 1 and 2
    # mark the stop chain's tokens, the rest is random.
    big = 4.0
    emb = []
    for t in range(n_vocab):
        row = [0.0, 0.0, 0.0] + uniform(N_EMBD - 3, 1.7)
        if t == stop_to:
            row[1] = big
        elif t == stop_from:
            row[2] = big
        else:
            row[0] = big
        emb += row
    w.tensor("token_embd.weight", [N_EMBD, n_vocab], emb)

    def small(n):
        return uniform(n, 0.05)

    for i in range(N_LAYER):
        b = "blk.%d." % i
        w.tensor(b + "attn_norm.weight", [N_EMBD], [1.0] * N_EMBD)
        w.tensor(b + "attn_q.weight", [N_EMBD, N_HEAD * HEAD_DIM], small(N_EMBD * N_HEAD * HEAD_DIM))
        w.tensor(b + "attn_k.weight", [N_EMBD, N_HEAD_KV * HEAD_DIM], small(N_EMBD * N_HEAD_KV * HEAD_DIM))
        w.tensor(b + "attn_v.weight", [N_EMBD, N_HEAD_KV * HEAD_DIM], small(N_EMBD * N_HEAD_KV * HEAD_DIM))
        w.tensor(b + "attn_output.weight", [N_HEAD * HEAD_DIM, N_EMBD], small(N_HEAD * HEAD_DIM * N_EMBD))
        w.tensor(b + "ffn_norm.weight", [N_EMBD], [1.0] * N_EMBD)
        w.tensor(b + "ffn_gate.weight", [N_EMBD, N_FF], small(N_EMBD * N_FF))
        w.tensor(b + "ffn_down.weight", [N_FF, N_EMBD], small(N_FF * N_EMBD))
        w.tensor(b + "ffn_up.weight", [N_EMBD, N_FF], small(N_EMBD * N_FF))

    w.tensor("output_norm.weight", [N_EMBD], [1.0] * N_EMBD)

    # Output projection, one row of N_EMBD per token: an ordinary context
    # (dimension 0 high) pushes the never-generated tokens far down; the stop
    # chain's dimensions pull "!" up after "~" and </s> up after "!".
    k = 10.0
    out = []
    for t in range(n_vocab):
        row = [0.0, 0.0, 0.0] + uniform(N_EMBD - 3, 0.5)
        if t in never:
            row[0] = -k
        if t == eos:
            row[1] = k
        if t == stop_to:
            row[2] = k
        out += row
    w.tensor("output.weight", [N_EMBD, n_vocab], out)

    w.write(args.out)


if __name__ == "__main__":
    main()
