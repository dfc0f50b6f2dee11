#!/usr/bin/env python3
"""llama.cpp reference outputs for genq's candle Llama engine (`worker/tests/llamacpp_reference.rs`).

Runs llama.cpp (through llama-cpp-python's ctypes bindings, used straight from the sdist in
.cache/llamacpp/src, against a libllama.so built from the sdist's vendored llama.cpp) on the
GGUF genq serves and writes `worker/tests/fixtures/llamacpp_reference.json`:

  - `generate`: for each prompt, the prompt token ids (tokenized with `add_bos=False`, as
    SmolLM2's `add_bos_token` is false, and `special=True`, so `<|im_start|>` is one token), the
    first N greedy token ids (argmax over the logits; the end-of-turn tokens in `banned` are
    masked out, as genq does while `min_new_tokens` is not reached), and the gap between the
    best and second-best logit at each step (a small gap marks a near tie, where an independent
    implementation may legitimately pick the other token);
  - `score`: for each prompt, the prompt token ids and the log-prob of each token after the
    first given the ones before it (`logits_all=True`, log-softmax in float64).

Settings: n_ctx 2048, n_threads 2, n_batch 512 (each prompt is evaluated in one batch), one
sequence at a time, an f32 KV cache (like genq's; llama.cpp's default is f16) and no flash
attention.

`calibration` records how far llama.cpp moves from itself when only the KV cache is switched to
its default f16: leading greedy tokens still equal per prompt, and the log-prob differences. The
test uses these figures to judge what agreement an independent implementation can reach.

Regenerate (from the repository root; builds libllama.so in .cache/llamacpp on first use):

    scripts/llamacpp-reference.sh

which runs this file as

    PYTHONPATH=.cache/llamacpp/src LLAMA_CPP_LIB_PATH=.cache/llamacpp/lib \\
        python3 scripts/llamacpp-reference.py \\
        --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out worker/tests/fixtures/llamacpp_reference.json

To add a case, append it to GENERATE or SCORE below and regenerate.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys

import numpy as np

NEW_TOKENS = 24
N_CTX = 2048
N_THREADS = 2

# ggml_type ids for the KV cache. The reference uses f32 (genq's cache is f32); f16 is llama.cpp's
# default and is run only for the calibration figures.
KV_F32 = 0
KV_F16 = 1

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(*turns: tuple[str, str], open_assistant: bool = True) -> str:
    """ChatML as SmolLM2's template renders it (the generation prompt opens an assistant turn)."""
    text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    if open_assistant:
        text += "<|im_start|>assistant\n"
    return text


LONG_PARAGRAPH = (
    "The Industrial Revolution began in Great Britain in the second half of the eighteenth "
    "century and spread to continental Europe and North America over the following decades. "
    "It replaced hand production with machines, introduced new chemical and iron-making "
    "processes, and made steam power the engine of factories, mines and railways. Cities grew "
    "quickly as workers moved from the countryside, wages and living standards eventually rose, "
    "and the pace of technological change has never slowed since. Historians still debate"
)

GENERATE: list[tuple[str, str]] = [
    ("plain-short", "The capital of France is"),
    ("plain-story", "Once upon a time, in a small village by the sea,"),
    ("plain-long", LONG_PARAGRAPH),
    ("code-python", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'),
    ("code-rust", "fn main() {\n    let numbers = vec![1, 2, 3, 4, 5];\n    let total: i32 ="),
    ("numbers", "1, 1, 2, 3, 5, 8, 13, 21,"),
    ("arithmetic", "Q: What is 12 + 35?\nA:"),
    ("chat-short", chatml(("system", SYSTEM), ("user", "What is the capital of Japan?"))),
    (
        "chat-long",
        chatml(
            ("system", SYSTEM),
            ("user", "Summarize the following text in one sentence.\n\n" + LONG_PARAGRAPH + " its causes."),
        ),
    ),
    ("chat-code", chatml(("system", SYSTEM), ("user", "Write a Python function that reverses a string."))),
    ("chat-numbers", chatml(("system", SYSTEM), ("user", "List the first five prime numbers."))),
    ("plain-translate", "Translate to French: Good morning, how are you?\nFrench:"),
]

SCORE: list[tuple[str, str]] = [
    ("score-plain", "The quick brown fox jumps over the lazy dog. It was a sunny day in the park."),
    ("score-long", LONG_PARAGRAPH + " its causes."),
    (
        "score-chat",
        chatml(
            ("system", SYSTEM),
            ("user", "What is 7 times 8?"),
            ("assistant", "7 times 8 is 56."),
            open_assistant=False,
        ),
    ),
    ("score-code", "def add(a, b):\n    return a + b\n\n\nprint(add(2, 3))  # 5\n"),
]

# Tokens that end a turn; genq bans them (and EOS) until min_new_tokens exist.
END_OF_TURN = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>"]


def llama_cpp_version(src: pathlib.Path | None) -> str:
    import llama_cpp

    commit = "unknown"
    if src is not None and (src / "CHANGELOG.md").exists():
        m = re.search(r"ggml-org/llama\.cpp@([0-9a-f]+)", (src / "CHANGELOG.md").read_text())
        if m:
            commit = m.group(1)
    return f"llama-cpp-python {llama_cpp.__version__}, vendored llama.cpp ggml-org/llama.cpp@{commit}"


def log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="worker/tests/fixtures/llamacpp_reference.json")
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    gguf = pathlib.Path(args.gguf)
    if not gguf.exists():
        print(f"{gguf} not found: run scripts/fetch-model.sh", file=sys.stderr)
        return 1
    src = None
    for p in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if p and (pathlib.Path(p) / "llama_cpp").is_dir():
            src = pathlib.Path(p)
            break

    def load(kv_type: int) -> Llama:
        return Llama(
            model_path=str(gguf),
            n_ctx=N_CTX,
            n_batch=512,
            n_threads=N_THREADS,
            n_threads_batch=N_THREADS,
            logits_all=True,
            seed=0,
            type_k=kv_type,
            type_v=kv_type,
            verbose=False,
        )

    llm = load(KV_F32)
    n_vocab = llm.n_vocab()

    def tokenize(text: str) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    banned = {llm.token_eos()}
    for t in END_OF_TURN:
        ids = tokenize(t)
        if len(ids) == 1 and llm.detokenize(ids, special=True).decode("utf-8", "replace") == t:
            banned.add(ids[0])
    banned_ids = sorted(banned)

    def evaluate(model: Llama, tokens: list[int]) -> np.ndarray:
        model.reset()
        model.eval(tokens)
        return model.scores[: model.n_tokens, :n_vocab]

    def greedy(model: Llama, prompt: list[int]) -> tuple[list[int], list[float]]:
        evaluate(model, prompt)
        out, margins = [], []
        for _ in range(NEW_TOKENS):
            row = model.scores[model.n_tokens - 1, :n_vocab].astype(np.float64).copy()
            row[banned_ids] = -np.inf
            order = np.argsort(-row, kind="stable")
            tok = int(order[0])
            margins.append(round(float(row[order[0]] - row[order[1]]), 4))
            out.append(tok)
            model.eval([tok])
        return out, margins

    def score_logprobs(model: Llama, prompt: list[int]) -> list[float]:
        logits = evaluate(model, prompt)
        return [round(float(log_softmax(logits[i])[prompt[i + 1]]), 6) for i in range(len(prompt) - 1)]

    generate = []
    for name, text in GENERATE:
        prompt = tokenize(text)
        out, margins = greedy(llm, prompt)
        completion = llm.detokenize(out, prev_tokens=prompt).decode("utf-8", "replace")
        print(f"{name:16} {len(prompt):4} prompt tokens -> {completion!r}", file=sys.stderr)
        generate.append(
            {"name": name, "text": text, "prompt_ids": prompt, "greedy_ids": out, "margins": margins,
             "completion": completion}
        )

    score = []
    for name, text in SCORE:
        prompt = tokenize(text)
        lps = score_logprobs(llm, prompt)
        print(f"{name:16} {len(prompt):4} tokens, mean log-prob {np.mean(lps):.4f}", file=sys.stderr)
        score.append({"name": name, "text": text, "prompt_ids": prompt, "logprobs": lps})

    # Calibration: llama.cpp against itself with its default f16 KV cache instead of f32. How far
    # this moves greedy tokens and log-probs shows how sensitive the model is to rounding alone.
    del llm
    f16 = load(KV_F16)
    for case in generate:
        out, _ = greedy(f16, case["prompt_ids"])
        case["f16_kv_leading_match"] = next(
            (i for i, (a, b) in enumerate(zip(out, case["greedy_ids"])) if a != b), NEW_TOKENS
        )
    diffs = []
    for case in score:
        lps = score_logprobs(f16, case["prompt_ids"])
        diffs += [abs(a - b) for a, b in zip(lps, case["logprobs"])]
    calibration = {
        "what": "llama.cpp with an f16 KV cache (its default) against this f32-KV reference",
        "generate_leading_match": [c["f16_kv_leading_match"] for c in generate],
        "score_mean_abs_diff": round(float(np.mean(diffs)), 4),
        "score_max_abs_diff": round(float(np.max(diffs)), 4),
    }
    print(f"calibration: {calibration}", file=sys.stderr)

    doc = {
        "about": (
            "Reference outputs of llama.cpp for worker/tests/llamacpp_reference.rs. Generated by "
            "scripts/llamacpp-reference.py (regenerate with scripts/llamacpp-reference.sh); do not edit by hand."
        ),
        "llama_cpp": llama_cpp_version(src),
        "model": gguf.name,
        "settings": {"n_ctx": N_CTX, "n_threads": N_THREADS, "n_batch": 512, "add_bos": False,
                     "special": True, "sampling": "argmax over logits, banned ids masked",
                     "logprobs": "log_softmax in float64 over logits_all rows",
                     "kv_cache": "f32", "flash_attn": False},
        "new_tokens": NEW_TOKENS,
        "banned": banned_ids,
        "calibration": calibration,
        "generate": generate,
        "score": score,
    }
    # One case per line keeps the file reviewable.
    lines = ["{"]
    keys = list(doc)
    for i, k in enumerate(keys):
        comma = "," if i + 1 < len(keys) else ""
        v = doc[k]
        if isinstance(v, list) and v and isinstance(v[0], dict):
            lines.append(f" {json.dumps(k)}: [")
            for j, case in enumerate(v):
                lines.append("  " + json.dumps(case, ensure_ascii=False) + ("," if j + 1 < len(v) else ""))
            lines.append(" ]" + comma)
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{comma}")
    lines.append("}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(out.read_text(encoding="utf-8"))
    print(f"wrote {out} ({len(generate)} generate, {len(score)} score cases)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
