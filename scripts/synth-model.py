#!/usr/bin/env python3
"""Random-weight models of the families genq serves, written the way llama.cpp's converters write them.

Usage (from the repository root; the `gguf` package is llama.cpp's gguf-py):

    PYTHONPATH=.cache/llamacpp/src/vendor/llama.cpp/gguf-py "$(scripts/py-venv.sh)" \\
        scripts/synth-model.py --arch qwen2 --type q8_0 [--shape tiny] [--seed 0] [--hf] --out DIR

writes `DIR/model.gguf` (GGUFWriter) and, with `--hf` (f32 only), `DIR/hf/`: the same weights as a
Hugging Face folder (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`).
The paths written are printed, one per line. `--vocab-dir` points at llama.cpp's `models/` (default:
`.cache/llamacpp/src/vendor/llama.cpp/models` under the repository, from scripts/fetch-llamacpp-src.sh).

Deterministic: weights come from `numpy.random.RandomState(seed)` drawn tensor by tensor in a fixed
order (in blocks of rows, so the big shapes never hold a tensor twice), so the same seed and
arguments give byte-identical files on any machine. Weights ~ N(0, 0.5/sqrt(fan_in)); norm weights
1 + N(0, 0.1); biases N(0, 0.1). Quantized and f16/bf16 types apply to every 2-D tensor; norms,
biases and `rope_freqs` stay f32, as llama.cpp's quantizer leaves 1-D tensors.

The vocabulary is real: every `tokenizer.*` key (tokens, scores, token types, merges, special ids,
`pre`, chat template) is copied from llama.cpp's `models/ggml-vocab-<name>.gguf`.

Architectures (`--arch`; GGUF architecture, vocabulary, what the weights hold):

  llama3  `llama`, llama-bpe (Llama 3): GQA, untied `output.weight`, Llama 3.1 rope scaling as a
          `rope_freqs.weight` tensor of head_dim/2 factors computed as convert_hf_to_gguf.py does
          (factor 8, low 1, high 4; the original context is 64 for the tiny shape, 8192 otherwise,
          so the factors are not all 1 at head dim 16); q/k rows permuted as the converter permutes
          HF weights (the HF folder holds the unpermuted ones and `rope_scaling` in config.json).
  llama2  `llama`, llama-spm (SentencePiece, Llama 2 / Mistral): GQA, untied output, permuted q/k;
          the HF folder is a Mistral (`MistralForCausalLM`).
  qwen2   `qwen2`, qwen2: q/k/v biases, tied output (no `output.weight`), NEOX rope.
  qwen3   `qwen3`, qwen2: per-head `attn_q_norm`/`attn_k_norm`, head dim 2*hidden/heads set by
          `qwen3.attention.key_length`/`value_length`, untied output, NEOX rope.
  phi3    `phi3`, phi-3 (SentencePiece): fused `attn_qkv` (q, k, v rows), fused `ffn_up` of 2*n_ff
          rows (gate then up), `phi3.rope.dimension_count`, GQA, untied output, NEOX rope.
  gpt2    `gpt2`, gpt-2: `position_embd`, LayerNorm weights and biases, `attn_qkv` + bias,
          `attn_output` + bias, `ffn_up`/`ffn_down` + biases (n_ff = 4*hidden, GELU),
          `output_norm` + bias, tied output, no GQA, context at most 1024.

Shapes (`--shape`): `tiny` (2 layers, hidden 64, 4 heads / 2 KV heads, FFN 128, context 512: for
numerics tests), `qwen2.5-0.5b` and `llama-3.2-1b` (the real models' dimensions, for benchmarks).
Types (`--type`): f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import struct
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q

ROOT = pathlib.Path(__file__).resolve().parent.parent

TYPES = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "q5_0": (Q.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "q5_1": (Q.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
}

SHAPES = {
    "tiny": dict(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, ctx=512),
    "qwen2.5-0.5b": dict(layers=24, hidden=896, heads=14, kv_heads=2, ffn=4864, ctx=32768),
    "llama-3.2-1b": dict(layers=16, hidden=2048, heads=32, kv_heads=8, ffn=8192, ctx=131072),
}

# GGUF architecture, vocabulary file, HF model_type and class, rope base, norm epsilon.
ARCHS = {
    "llama3": dict(gguf="llama", vocab="llama-bpe", hf_type="llama", hf_class="LlamaForCausalLM",
                   theta=500000.0, eps=1e-5),
    "llama2": dict(gguf="llama", vocab="llama-spm", hf_type="mistral", hf_class="MistralForCausalLM",
                   theta=10000.0, eps=1e-5),
    "qwen2": dict(gguf="qwen2", vocab="qwen2", hf_type="qwen2", hf_class="Qwen2ForCausalLM",
                  theta=1000000.0, eps=1e-6),
    "qwen3": dict(gguf="qwen3", vocab="qwen2", hf_type="qwen3", hf_class="Qwen3ForCausalLM",
                  theta=1000000.0, eps=1e-6),
    "phi3": dict(gguf="phi3", vocab="phi-3", hf_type="phi3", hf_class="Phi3ForCausalLM",
                 theta=10000.0, eps=1e-5),
    "gpt2": dict(gguf="gpt2", vocab="gpt-2", hf_type="gpt2", hf_class="GPT2LMHeadModel",
                 theta=None, eps=1e-5),
}

# Llama 3.1 rope scaling (config.json `rope_scaling`); the original context is per shape.
LLAMA3_ROPE = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)

# Elements drawn (and quantized) at a time: bounds the memory of the big shapes.
BLOCK_ELEMENTS = 1 << 22

# Pre-tokenizer regexes of the real Hugging Face tokenizers (byte-level BPE).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class Spec:
    """One tensor: GGUF name and numpy shape (rows = output features), how it is drawn, and its HF twin."""

    name: str
    shape: tuple[int, ...]
    init: str  # "w" (matmul/embedding), "norm", "bias", or "fixed" (values given)
    hf_name: str | None = None
    to_hf: Callable[[np.ndarray], np.ndarray] | None = None  # GGUF layout -> HF layout
    values: np.ndarray | None = None
    hf_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.hf_shape is None:
            self.hf_shape = self.shape


@dataclass
class Model:
    arch: str
    shape_name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    ctx: int
    vocab: int
    tied: bool
    rope_orig_ctx: int = 0
    specs: list[Spec] = field(default_factory=list)


def unpermute(n_head: int) -> Callable[[np.ndarray], np.ndarray]:
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute (GGUF rows -> HF rows)."""

    def f(w: np.ndarray) -> np.ndarray:
        return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    return f


def transpose(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T)


def llama3_rope_factors(theta: float, head_dim: int, orig_ctx: int) -> np.ndarray:
    """`rope_freqs` as convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors computes it."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, low, high = LLAMA3_ROPE["factor"], LLAMA3_ROPE["low_freq_factor"], LLAMA3_ROPE["high_freq_factor"]
    low_wavelen, high_wavelen = orig_ctx / low, orig_ctx / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (orig_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def build(arch: str, shape_name: str, vocab: int) -> Model:
    s = dict(SHAPES[shape_name])
    a = ARCHS[arch]
    heads, kv = s["heads"], s["kv_heads"]
    head_dim = s["hidden"] // heads
    ffn, ctx = s["ffn"], s["ctx"]
    if arch == "qwen3":
        head_dim *= 2
    if arch == "gpt2":
        kv, ffn, ctx = heads, 4 * s["hidden"], min(ctx, 1024)
    m = Model(arch=arch, shape_name=shape_name, layers=s["layers"], hidden=s["hidden"], heads=heads,
              kv_heads=kv, head_dim=head_dim, ffn=ffn, ctx=ctx, vocab=vocab,
              tied=arch in ("qwen2", "gpt2"))
    h, q_out, kv_out = m.hidden, heads * head_dim, kv * head_dim
    add = m.specs.append

    if arch == "gpt2":
        add(Spec("token_embd.weight", (vocab, h), "w", "transformer.wte.weight"))
        add(Spec("position_embd.weight", (ctx, h), "w", "transformer.wpe.weight"))
        for i in range(m.layers):
            p, hp = f"blk.{i}.", f"transformer.h.{i}."
            t = lambda shape: tuple(reversed(shape))  # noqa: E731 (Conv1D weights are [in, out])
            add(Spec(p + "attn_norm.weight", (h,), "norm", hp + "ln_1.weight"))
            add(Spec(p + "attn_norm.bias", (h,), "bias", hp + "ln_1.bias"))
            add(Spec(p + "attn_qkv.weight", (3 * h, h), "w", hp + "attn.c_attn.weight", transpose, hf_shape=t((3 * h, h))))
            add(Spec(p + "attn_qkv.bias", (3 * h,), "bias", hp + "attn.c_attn.bias"))
            add(Spec(p + "attn_output.weight", (h, h), "w", hp + "attn.c_proj.weight", transpose, hf_shape=(h, h)))
            add(Spec(p + "attn_output.bias", (h,), "bias", hp + "attn.c_proj.bias"))
            add(Spec(p + "ffn_norm.weight", (h,), "norm", hp + "ln_2.weight"))
            add(Spec(p + "ffn_norm.bias", (h,), "bias", hp + "ln_2.bias"))
            add(Spec(p + "ffn_up.weight", (ffn, h), "w", hp + "mlp.c_fc.weight", transpose, hf_shape=(h, ffn)))
            add(Spec(p + "ffn_up.bias", (ffn,), "bias", hp + "mlp.c_fc.bias"))
            add(Spec(p + "ffn_down.weight", (h, ffn), "w", hp + "mlp.c_proj.weight", transpose, hf_shape=(ffn, h)))
            add(Spec(p + "ffn_down.bias", (h,), "bias", hp + "mlp.c_proj.bias"))
        add(Spec("output_norm.weight", (h,), "norm", "transformer.ln_f.weight"))
        add(Spec("output_norm.bias", (h,), "bias", "transformer.ln_f.bias"))
        return m

    add(Spec("token_embd.weight", (vocab, h), "w", "model.embed_tokens.weight"))
    if arch == "llama3":
        m.rope_orig_ctx = 64 if shape_name == "tiny" else 8192
        add(Spec("rope_freqs.weight", (head_dim // 2,), "fixed",
                 values=llama3_rope_factors(a["theta"], head_dim, m.rope_orig_ctx)))
    permute = arch in ("llama3", "llama2")
    for i in range(m.layers):
        p, hp = f"blk.{i}.", f"model.layers.{i}."
        add(Spec(p + "attn_norm.weight", (h,), "norm", hp + "input_layernorm.weight"))
        if arch == "phi3":
            add(Spec(p + "attn_qkv.weight", (q_out + 2 * kv_out, h), "w", hp + "self_attn.qkv_proj.weight"))
        else:
            add(Spec(p + "attn_q.weight", (q_out, h), "w", hp + "self_attn.q_proj.weight",
                     unpermute(heads) if permute else None))
            add(Spec(p + "attn_k.weight", (kv_out, h), "w", hp + "self_attn.k_proj.weight",
                     unpermute(kv) if permute else None))
            add(Spec(p + "attn_v.weight", (kv_out, h), "w", hp + "self_attn.v_proj.weight"))
            if arch == "qwen2":
                add(Spec(p + "attn_q.bias", (q_out,), "bias", hp + "self_attn.q_proj.bias"))
                add(Spec(p + "attn_k.bias", (kv_out,), "bias", hp + "self_attn.k_proj.bias"))
                add(Spec(p + "attn_v.bias", (kv_out,), "bias", hp + "self_attn.v_proj.bias"))
            if arch == "qwen3":
                add(Spec(p + "attn_q_norm.weight", (head_dim,), "norm", hp + "self_attn.q_norm.weight"))
                add(Spec(p + "attn_k_norm.weight", (head_dim,), "norm", hp + "self_attn.k_norm.weight"))
        add(Spec(p + "attn_output.weight", (h, q_out), "w", hp + "self_attn.o_proj.weight"))
        add(Spec(p + "ffn_norm.weight", (h,), "norm", hp + "post_attention_layernorm.weight"))
        if arch == "phi3":
            add(Spec(p + "ffn_up.weight", (2 * ffn, h), "w", hp + "mlp.gate_up_proj.weight"))
        else:
            add(Spec(p + "ffn_gate.weight", (ffn, h), "w", hp + "mlp.gate_proj.weight"))
            add(Spec(p + "ffn_up.weight", (ffn, h), "w", hp + "mlp.up_proj.weight"))
        add(Spec(p + "ffn_down.weight", (h, ffn), "w", hp + "mlp.down_proj.weight"))
    add(Spec("output_norm.weight", (h,), "norm", "model.norm.weight"))
    if not m.tied:
        add(Spec("output.weight", (vocab, h), "w", "lm_head.weight"))
    return m


def draw(rng: np.random.RandomState, spec: Spec):
    """Yields the tensor's f32 values in blocks of whole rows (GGUF layout), in drawing order."""
    if spec.init == "fixed":
        yield spec.values.astype(np.float32).reshape(spec.shape)
        return
    if spec.init == "norm":
        yield (1.0 + 0.1 * rng.standard_normal(spec.shape)).astype(np.float32)
        return
    if spec.init == "bias":
        yield (0.1 * rng.standard_normal(spec.shape)).astype(np.float32)
        return
    rows, cols = spec.shape
    std = 0.5 / math.sqrt(cols)
    step = max(1, BLOCK_ELEMENTS // cols)
    for r in range(0, rows, step):
        n = min(step, rows - r)
        yield (std * rng.standard_normal((n, cols))).astype(np.float32)


def gguf_type(spec: Spec, qtype: Q) -> Q:
    return qtype if len(spec.shape) == 2 else Q.F32


def encode(block: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return block.astype(np.float32)
    if qtype == Q.F16:
        return block.astype(np.float16)
    return gguf.quants.quantize(block, qtype)


def nbytes(spec: Spec, qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(spec.shape))
    if spec.shape[-1] % block:
        raise SystemExit(f"{spec.name}: row of {spec.shape[-1]} is not a multiple of {qtype.name}'s block of {block}")
    return n // block * size


def read_vocab(path: pathlib.Path) -> list[tuple[str, object, gguf.GGUFValueType, gguf.GGUFValueType | None]]:
    """Every `tokenizer.*` key of a vocabulary GGUF: (key, value, type, array item type)."""
    r = gguf.GGUFReader(path)
    out = []
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        out.append((key, f.contents(), f.types[0], sub))
    return out


def write_gguf(m: Model, tname: str, seed: int, vocab_kv, out: pathlib.Path, hf_dir: pathlib.Path | None) -> list[pathlib.Path]:
    a = ARCHS[m.arch]
    qtype, ftype = TYPES[tname]
    w = gguf.GGUFWriter(out, a["gguf"])
    w.add_name(f"genq-synth {m.arch} {m.shape_name} {tname} seed {seed}")
    w.add_block_count(m.layers)
    w.add_context_length(m.ctx)
    w.add_embedding_length(m.hidden)
    w.add_feed_forward_length(m.ffn)
    w.add_head_count(m.heads)
    if m.arch == "gpt2":
        w.add_layer_norm_eps(a["eps"])
    else:
        w.add_head_count_kv(m.kv_heads)
        w.add_rope_freq_base(a["theta"])
        w.add_layer_norm_rms_eps(a["eps"])
    if a["gguf"] == "llama":
        w.add_vocab_size(m.vocab)
        w.add_rope_dimension_count(m.head_dim)
    if m.arch == "qwen3":
        w.add_key_length(m.head_dim)
        w.add_value_length(m.head_dim)
    if m.arch == "phi3":
        w.add_rope_scaling_orig_ctx_len(m.ctx)
        w.add_rope_dimension_count(m.head_dim)
        w.add_sliding_window(0)
    w.add_file_type(int(ftype))
    if qtype not in (Q.F32, Q.F16, Q.BF16):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value, vtype, sub in vocab_kv:
        w.add_key_value(key, value, vtype, sub_type=sub)

    for spec in m.specs:
        t = gguf_type(spec, qtype)
        block, size = gguf.GGML_QUANT_SIZES[t]
        byte_shape = (*spec.shape[:-1], spec.shape[-1] // block * size)
        w.add_tensor_info(spec.name, byte_shape, np.dtype(np.uint8), nbytes(spec, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    hf = None
    if hf_dir is not None:
        hf = SafetensorsOut(hf_dir / "model.safetensors", [s for s in m.specs if s.hf_name is not None])

    rng = np.random.RandomState(seed)
    fout = w.fout[0]
    for spec in m.specs:
        t = gguf_type(spec, qtype)
        w.write_padding(fout, fout.tell())
        written = 0
        blocks = []
        for block in draw(rng, spec):
            data = encode(block, t)
            data.tofile(fout)
            written += data.nbytes
            if hf is not None and spec.hf_name is not None:
                if spec.to_hf is None:
                    hf.write(block)
                else:
                    blocks.append(block)  # a permutation or transpose needs the whole tensor
        if blocks:
            hf.write(spec.to_hf(np.concatenate(blocks)))
        assert written == nbytes(spec, t), spec.name
        w.write_padding(fout, fout.tell())
    w.close()
    files = [out]
    if hf is not None:
        files.append(hf.close())
    return files


class SafetensorsOut:
    """A `.safetensors` file written by hand (8-byte little-endian header length, JSON header, raw
    little-endian data) as the tensors come, in `specs` order; f32 only."""

    def __init__(self, path: pathlib.Path, specs: list[Spec]):
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        self.expected = []
        for s in specs:
            n = int(np.prod(s.hf_shape)) * 4
            header[s.hf_name] = {"dtype": "F32", "shape": list(s.hf_shape), "data_offsets": [offset, offset + n]}
            offset += n
        self.total = offset
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self.path = path
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)))
        self.f.write(raw)
        self.start = self.f.tell()

    def write(self, block: np.ndarray) -> None:
        block.astype("<f4").tofile(self.f)

    def close(self) -> pathlib.Path:
        written = self.f.tell() - self.start
        self.f.close()
        assert written == self.total, (written, self.total)
        return self.path


def vocab_dict(vocab_kv) -> dict[str, object]:
    return {k: v for k, v, _, _ in vocab_kv}


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Merges of a SentencePiece vocabulary, as Hugging Face's converters derive them: every split of
    a normal piece into two pieces of the vocabulary, ordered by the merged piece's score."""
    ids = {}
    for i, t in enumerate(tokens):
        if types[i] == 1:
            ids.setdefault(t, i)
    merges = []
    for piece, i in ids.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in ids and right in ids:
                merges.append((-scores[i], i, ids[left], left, right))
    merges.sort()
    return [(l, r) for _, _, _, l, r in merges]


def write_tokenizer(vocab_kv, dir: pathlib.Path) -> list[pathlib.Path]:
    v = vocab_dict(vocab_kv)
    tokens: list[str] = v["tokenizer.ggml.tokens"]
    types: list[int] = v["tokenizer.ggml.token_type"]
    model_kind = v["tokenizer.ggml.model"]
    pre = v.get("tokenizer.ggml.pre", "default")
    bos = v.get("tokenizer.ggml.bos_token_id")
    eos = v.get("tokenizer.ggml.eos_token_id")
    add_bos = v.get("tokenizer.ggml.add_bos_token", pre == "llama-bpe")

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(tokens)
        if types[i] in (2, 3, 4) and vocab.get(t) == i
    ]
    if model_kind == "gpt2":
        merges = [m.split(" ", 1) for m in v["tokenizer.ggml.merges"]]
        model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                 "ignore_merges": pre == "llama-bpe", "vocab": vocab, "merges": merges}
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        regex = {"llama-bpe": LLAMA3_REGEX, "qwen2": QWEN2_REGEX, "qwen35": QWEN2_REGEX}.get(pre)
        if regex is None:
            pre_tokenizer = dict(byte_level, use_regex=True)
        else:
            pre_tokenizer = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
                byte_level]}
        normalizer = None
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    elif model_kind == "llama":
        model = {"type": "BPE", "dropout": None, "unk_token": tokens[v.get("tokenizer.ggml.unknown_token_id", 0)],
                 "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                 "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                 "merges": [list(p) for p in spm_merges(tokens, v["tokenizer.ggml.scores"], types)]}
        normalizer = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
        pre_tokenizer = None
        decoder = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    else:
        raise SystemExit(f"tokenizer model {model_kind!r} has no tokenizer.json writer")

    post = None
    if add_bos and bos is not None:
        b = tokens[bos]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b: {"id": b, "ids": [bos], "tokens": [b]}}}
    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
           "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": post,
           "decoder": decoder, "model": model}
    tok_path = dir / "tokenizer.json"
    tok_path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")

    cfg = {"add_bos_token": bool(add_bos), "add_eos_token": False, "clean_up_tokenization_spaces": False,
           "model_max_length": 1 << 20, "tokenizer_class": "PreTrainedTokenizerFast"}
    if bos is not None:
        cfg["bos_token"] = tokens[bos]
    if eos is not None:
        cfg["eos_token"] = tokens[eos]
    if "tokenizer.chat_template" in v:
        cfg["chat_template"] = v["tokenizer.chat_template"]
    cfg_path = dir / "tokenizer_config.json"
    cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return [tok_path, cfg_path]


def write_config(m: Model, vocab_kv, dir: pathlib.Path) -> pathlib.Path:
    a = ARCHS[m.arch]
    v = vocab_dict(vocab_kv)
    bos, eos = v.get("tokenizer.ggml.bos_token_id"), v.get("tokenizer.ggml.eos_token_id")
    if m.arch == "gpt2":
        cfg = {"architectures": [a["hf_class"]], "model_type": a["hf_type"], "vocab_size": m.vocab,
               "n_embd": m.hidden, "n_head": m.heads, "n_layer": m.layers, "n_positions": m.ctx,
               "n_ctx": m.ctx, "n_inner": None, "activation_function": "gelu_new",
               "layer_norm_epsilon": a["eps"], "bos_token_id": bos, "eos_token_id": eos,
               "tie_word_embeddings": True, "torch_dtype": "float32"}
    else:
        cfg = {"architectures": [a["hf_class"]], "model_type": a["hf_type"], "vocab_size": m.vocab,
               "hidden_size": m.hidden, "intermediate_size": m.ffn, "num_hidden_layers": m.layers,
               "num_attention_heads": m.heads, "num_key_value_heads": m.kv_heads, "head_dim": m.head_dim,
               "max_position_embeddings": m.ctx, "rms_norm_eps": a["eps"], "rope_theta": a["theta"],
               "hidden_act": "silu", "tie_word_embeddings": m.tied, "bos_token_id": bos,
               "eos_token_id": eos, "attention_bias": m.arch == "qwen2", "torch_dtype": "float32"}
        if m.arch == "llama3":
            cfg["rope_scaling"] = dict(LLAMA3_ROPE, rope_type="llama3", original_max_position_embeddings=m.rope_orig_ctx)
        if m.arch in ("llama2", "qwen2", "qwen3", "phi3"):
            cfg["sliding_window"] = None
        if m.arch in ("qwen2", "qwen3"):
            cfg["use_sliding_window"] = False
        if m.arch == "phi3":
            cfg["original_max_position_embeddings"] = m.ctx
            cfg["rope_scaling"] = None
            cfg.pop("attention_bias")
    path = dir / "config.json"
    path.write_text(json.dumps(cfg, indent=1) + "\n", encoding="utf-8")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, choices=sorted(ARCHS))
    ap.add_argument("--type", required=True, choices=list(TYPES))
    ap.add_argument("--shape", default="tiny", choices=list(SHAPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hf", action="store_true", help="also write DIR/hf/ (f32 only)")
    ap.add_argument("--vocab-dir", type=pathlib.Path,
                    default=pathlib.Path(os.environ.get("GENQ_LLAMACPP_SRC", ROOT / ".cache/llamacpp/src/vendor/llama.cpp")) / "models")
    ap.add_argument("--out", required=True, type=pathlib.Path)
    args = ap.parse_args()
    if args.hf and args.type != "f32":
        ap.error("--hf writes f32 safetensors: use it with --type f32")

    vocab_path = args.vocab_dir / f"ggml-vocab-{ARCHS[args.arch]['vocab']}.gguf"
    if not vocab_path.exists():
        print(f"{vocab_path} not found: run scripts/fetch-llamacpp-src.sh (or pass --vocab-dir)", file=sys.stderr)
        return 1
    vocab_kv = read_vocab(vocab_path)
    n_vocab = len(vocab_dict(vocab_kv)["tokenizer.ggml.tokens"])
    m = build(args.arch, args.shape, n_vocab)

    args.out.mkdir(parents=True, exist_ok=True)
    hf_dir = None
    if args.hf:
        hf_dir = args.out / "hf"
        hf_dir.mkdir(exist_ok=True)
    files = write_gguf(m, args.type, args.seed, vocab_kv, args.out / "model.gguf", hf_dir)
    if hf_dir is not None:
        files.append(write_config(m, vocab_kv, hf_dir))
        files += write_tokenizer(vocab_kv, hf_dir)
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
