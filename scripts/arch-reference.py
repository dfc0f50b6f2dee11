#!/usr/bin/env python3
"""llama.cpp reference outputs for genq's model families (`worker/tests/arch_reference.rs`).

For each architecture of scripts/synth-model.py (llama3, llama2, qwen2, qwen3, phi3, gpt2) and each
weight type (f32, q8_0), this writes the tiny random-weight model with a real vocabulary
(`synth-model.py --arch ARCH --type TYPE --shape tiny --seed SEED`), runs llama.cpp on it (through
llama-cpp-python's ctypes bindings, used straight from the sdist in .cache/llamacpp/src, against a
libllama.so built from the sdist's vendored llama.cpp) and writes
`worker/tests/fixtures/arch_reference/<arch>-<type>.json` with:

  - the generator command, the seed, the model file's SHA-256 (the test regenerates the model and
    checks it is byte-identical) and llama.cpp's version;
  - `fixed_ids`: 64 token ids drawn from `RandomState(seed + 1)` (the same for every prompt);
  - for each prompt (text, and its ids as llama.cpp tokenizes it: `add_bos=True`, i.e. BOS where
    the vocabulary asks for it, `special=False`):
      `score`: one scoring pass over the prompt (one batch, logits for every position): per
      position the largest logit, its id, the top 8 (id, logit) and the logits at `fixed_ids`;
      `greedy`: 32 greedy tokens (argmax over all logits, nothing banned, one token per decode
      call after the prompt) and, per step, the gap between the best and second-best logit.

Settings: n_ctx 512 (the tiny model's context), n_batch 512, n_threads 2, one sequence at a time,
an f32 KV cache (genq's CPU cache is f32; llama.cpp's default is f16) and no flash attention.
Logits are rounded to 4 decimals (the test's tolerance is 1e-3 of the largest logit, ~2e-3).

Regenerate (from the repository root; builds libllama.so in .cache/llamacpp on first use):

    scripts/arch-reference.sh [--arch ARCH ...] [--type TYPE ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARCHS = ["llama3", "llama2", "qwen2", "qwen3", "phi3", "gpt2"]
TYPES = ["f32", "q8_0"]
SEED = 17
NEW_TOKENS = 32
N_FIXED = 64
TOP = 8
N_CTX = 512
N_THREADS = 2
KV_F32 = 0

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    'def add(a, b):\n    return a + b\n\nprint(add(2, 3))',
    "Once upon a time, in a village of 1,234 people, a café opened. Ça marche!",
]


def llama_cpp_version(src: pathlib.Path | None) -> str:
    import llama_cpp

    commit = "unknown"
    if src is not None and (src / "CHANGELOG.md").exists():
        m = re.search(r"ggml-org/llama\.cpp@([0-9a-f]+)", (src / "CHANGELOG.md").read_text())
        if m:
            commit = m.group(1)
    return f"llama-cpp-python {llama_cpp.__version__}, vendored llama.cpp ggml-org/llama.cpp@{commit}"


def r4(x: float) -> float:
    return round(float(x), 4)


def top2_gap(row: np.ndarray) -> float:
    a, b = np.partition(row, -2)[-2:]
    return float(b - a)


def reference(arch: str, wtype: str, seed: int, src: pathlib.Path | None, tmp: pathlib.Path) -> dict:
    from llama_cpp import Llama

    out_dir = tmp / f"{arch}-{wtype}"
    cmd = ["scripts/synth-model.py", "--arch", arch, "--type", wtype, "--shape", "tiny", "--seed", str(seed)]
    subprocess.run([sys.executable, *cmd, "--out", str(out_dir)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    gguf_path = out_dir / "model.gguf"
    sha = hashlib.sha256(gguf_path.read_bytes()).hexdigest()

    llm = Llama(model_path=str(gguf_path), n_ctx=N_CTX, n_batch=512, n_threads=N_THREADS,
                n_threads_batch=N_THREADS, logits_all=True, seed=0, type_k=KV_F32, type_v=KV_F32,
                flash_attn=False, verbose=False)
    n_vocab = llm.n_vocab()
    fixed = sorted(int(i) for i in np.random.RandomState(seed + 1).choice(n_vocab, N_FIXED, replace=False))

    prompts = []
    for text in PROMPTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: llm.n_tokens, :n_vocab], dtype=np.float32)
        score = {"max": [], "argmax": [], "top": [], "fixed": []}
        for row in logits:
            order = np.argsort(-row, kind="stable")[:TOP]
            score["max"].append(r4(row[order[0]]))
            score["argmax"].append(int(order[0]))
            score["top"].append([[int(i), r4(row[i])] for i in order])
            score["fixed"].append([r4(row[i]) for i in fixed])
        greedy, gaps = [], []
        row = logits[-1]
        for step in range(NEW_TOKENS):
            tok = int(np.argmax(row))
            greedy.append(tok)
            gaps.append(r4(top2_gap(row)))
            if step + 1 < NEW_TOKENS:
                llm.eval([tok])
                row = np.array(llm.scores[llm.n_tokens - 1, :n_vocab], dtype=np.float32)
        prompts.append({"text": text, "ids": ids, "score": score, "greedy": {"ids": greedy, "gaps": gaps}})
        print(f"{arch}-{wtype}: {len(ids)} prompt tokens, max logit {max(score['max']):.3f}, "
              f"greedy {greedy[:8]}..., smallest gap {min(gaps):.4f}", file=sys.stderr)
    del llm
    return {
        "about": ("Reference outputs of llama.cpp for worker/tests/arch_reference.rs. Generated by "
                  "scripts/arch-reference.py (regenerate with scripts/arch-reference.sh); do not edit by hand."),
        "regenerate": f"scripts/arch-reference.sh --arch {arch} --type {wtype}",
        "generator": " ".join(cmd + ["--out", "DIR"]),
        "arch": arch,
        "type": wtype,
        "seed": seed,
        "gguf_sha256": sha,
        "llama_cpp": llama_cpp_version(src),
        "settings": {"n_ctx": N_CTX, "n_batch": 512, "n_threads": N_THREADS, "kv_cache": "f32",
                     "flash_attn": False, "add_bos": True, "special": False,
                     "greedy": "argmax over all logits, one decode call per token"},
        "n_vocab": n_vocab,
        "fixed_ids": fixed,
        "prompts": prompts,
    }


def dump(doc: dict) -> str:
    """One prompt part per line keeps the file reviewable and diffable."""
    lines = ["{"]
    keys = list(doc)
    for i, k in enumerate(keys):
        comma = "," if i + 1 < len(keys) else ""
        if k != "prompts":
            lines.append(f" {json.dumps(k)}: {json.dumps(doc[k], ensure_ascii=False)}{comma}")
            continue
        lines.append(' "prompts": [')
        for j, p in enumerate(doc[k]):
            lines.append("  {")
            lines.append(f'   "text": {json.dumps(p["text"], ensure_ascii=False)},')
            lines.append(f'   "ids": {json.dumps(p["ids"])},')
            lines.append(f'   "greedy": {json.dumps(p["greedy"])},')
            lines.append('   "score": {')
            sk = list(p["score"])
            for n, s in enumerate(sk):
                lines.append(f'    {json.dumps(s)}: [')
                rows = p["score"][s]
                if s in ("max", "argmax"):
                    lines[-1] = f'    {json.dumps(s)}: {json.dumps(rows)}' + ("," if n + 1 < len(sk) else "")
                    continue
                for r, row in enumerate(rows):
                    lines.append("     " + json.dumps(row, separators=(",", ":")) + ("," if r + 1 < len(rows) else ""))
                lines.append("    ]" + ("," if n + 1 < len(sk) else ""))
            lines.append("   }")
            lines.append("  }" + ("," if j + 1 < len(doc[k]) else ""))
        lines.append(" ]" + comma)
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", choices=ARCHS, help="default: all")
    ap.add_argument("--type", action="append", choices=TYPES, help="default: all")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "worker/tests/fixtures/arch_reference")
    args = ap.parse_args()

    src = None
    for p in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if p and (pathlib.Path(p) / "llama_cpp").is_dir():
            src = pathlib.Path(p)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch or ARCHS:
            for wtype in args.type or TYPES:
                doc = reference(arch, wtype, args.seed, src, pathlib.Path(tmp))
                path = args.out_dir / f"{arch}-{wtype}.json"
                path.write_text(dump(doc), encoding="utf-8")
                json.loads(path.read_text(encoding="utf-8"))
                print(f"wrote {path} ({path.stat().st_size // 1024} KB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
