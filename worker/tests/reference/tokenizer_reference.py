#!/usr/bin/env python3
"""Reference tokenizations for genq-worker's GGUF tokenizer (`engine::llama::tokenizer`).

Writes `worker/tests/fixtures/tokenizer_corpus.json`: a list of `{"text": ..., "ids": [...]}`
that the Rust test `tokenizer::tests::matches_reference_corpus` must reproduce exactly.

Two tokenizers are built here, neither of them from genq's Rust code, and the fixture is
written only when they agree on every text:

  A. a pure-Python byte-level BPE that follows llama.cpp's rules for `tokenizer.ggml.pre =
     "smollm"`: control/user-defined tokens are split out first, then every `\\p{N}` is
     isolated, then the GPT-2 regex, then bytes -> GPT-2 unicode alphabet, then BPE by merge
     rank;
  B. the Python `tokenizers` package (Hugging Face's own bindings) configured like
     SmolLM2's `tokenizer.json`: BPE, pre-tokenizer Sequence[Digits(individual_digits=True),
     ByteLevel(add_prefix_space=False, use_regex=True)], ByteLevel decoder, the control
     tokens as special added tokens, user-defined tokens as plain added tokens.

Vocabulary, merges and token types are read from the GGUF with the `gguf` package
(llama.cpp's own reader).

Regenerate (from the repository root):

    pip install gguf tokenizers regex
    python3 worker/tests/reference/tokenizer_reference.py \\
        --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out worker/tests/fixtures/tokenizer_corpus.json

`--check` compares against the existing fixture instead of writing it (exit status 1 on a
difference).  To add a case, append it to CORPUS below and regenerate.
"""

from __future__ import annotations

import argparse
import json
import sys

import regex
from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

CORPUS = [
    "",
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It wasn't me, I'm sure they'll say.",
    "12345 3.14159",
    # Only non-ASCII numerals tell a missing Digits step apart: SmolLM2's vocabulary has no
    # multi-digit tokens, but " ½" is ["Ġ", "Â½"] with Digits and ["ĠÂ", "½"] without.
    "Add ½ cup and ¼ tsp; area 3 m², volume 10³ cm³, x² + y²",
    "Ⅻ ٣٤٥ १२३",
    "Version 2.0.1 costs $1,299.99 (or 1e-9 per atom); call 555-0100.",
    "Crème brûlée, naïve café, Ångström, façade, Straße.",
    "e\u0301 vs \u00e9",
    "日本語のテキストと中文文本。",
    "한국어 문장입니다.",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم. नमस्ते दुनिया",
    "Emoji: 😀🎉👍🏽 👨\u200d👩\u200d👧 ❤️",
    "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n\n\nclass Foo:\n\tpass\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{v:?}\");\n}",
    "a   b\n\n\tc",
    "   leading and trailing spaces   ",
    "line one\r\nline two\r\n",
    "\n\n\n",
    "HELLO World hElLo WORLD",
    "https://example.com/path?query=1&other=two#frag",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|><|endoftext|>",
    "text<|endoftext|>more text",
    "<|im_sta not special <|im_end",
    "<repo_name>genq<file_sep>src/main.rs\n",
    "¯\\_(ツ)_/¯ ~!@#$%^&*()_+-=[]{}|;':\",./<>?",
]

GPT2_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
)


def read_gguf(path: str):
    reader = GGUFReader(path)

    def field(key):
        f = reader.fields.get(key)
        if f is None:
            sys.exit(f"{path}: missing {key}")
        return f.contents()

    model = field("tokenizer.ggml.model")
    pre = field("tokenizer.ggml.pre")
    if model != "gpt2" or pre != "smollm":
        sys.exit(f"{path}: this reference handles gpt2/smollm, not {model}/{pre}")
    tokens = field("tokenizer.ggml.tokens")
    merges = field("tokenizer.ggml.merges")
    types = field("tokenizer.ggml.token_type")
    return tokens, merges, types


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class PurePythonBpe:
    """Tokenizer A: no Hugging Face code involved."""

    def __init__(self, tokens, merges, types):
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.inv = dict(enumerate(tokens))
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.special = [t for t, ty in zip(tokens, types) if ty in (3, 4)]
        self.special_set = set(self.special)
        alts = sorted(self.special, key=len, reverse=True)
        self.special_re = regex.compile("(" + "|".join(regex.escape(s) for s in alts) + ")")
        self.digit_re = regex.compile(r"\p{N}")
        self.gpt2_re = regex.compile(GPT2_PATTERN)
        self.b2u = bytes_to_unicode()
        self.u2b = {u: b for b, u in self.b2u.items()}

    def bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            best = None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            a, b = parts[best[1]], parts[best[1] + 1]
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def pre_split(self, text: str) -> list[str]:
        # llama.cpp "smollm": \p{N} isolated, then the GPT-2 regex on what lies between.
        pieces, last = [], 0
        for m in self.digit_re.finditer(text):
            if m.start() > last:
                pieces.append(text[last : m.start()])
            pieces.append(m.group())
            last = m.end()
        if last < len(text):
            pieces.append(text[last:])
        words = []
        for p in pieces:
            words.extend(m.group() for m in self.gpt2_re.finditer(p))
        return words

    def encode(self, text: str) -> list[int]:
        ids = []
        for chunk in self.special_re.split(text):
            if not chunk:
                continue
            if chunk in self.special_set:
                ids.append(self.vocab[chunk])
                continue
            for word in self.pre_split(chunk):
                mapped = "".join(self.b2u[b] for b in word.encode("utf-8"))
                ids.extend(self.vocab[t] for t in self.bpe(mapped))
        return ids

    def decode(self, ids: list[int]) -> str:
        out = bytearray()
        for i in ids:
            tok = self.inv[i]
            if tok in self.special_set:
                out.extend(tok.encode("utf-8"))
            else:
                out.extend(self.u2b[c] for c in tok)
        return out.decode("utf-8")


def hf_tokenizer(tokens, merges, types) -> Tokenizer:
    """Tokenizer B: Hugging Face `tokenizers`, configured like SmolLM2's tokenizer.json."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merge_pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merge_pairs))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # Control tokens (3) are special; user-defined ones (4) are added tokens kept in decoded
    # text, as in Hugging Face's tokenizer.json and llama.cpp. Both are matched in input text.
    tok.add_tokens(
        [AddedToken(t, special=ty == 3, normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)]
    )
    return tok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="worker/tests/fixtures/tokenizer_corpus.json")
    ap.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = ap.parse_args()

    tokens, merges, types = read_gguf(args.gguf)
    a = PurePythonBpe(tokens, merges, types)
    b = hf_tokenizer(tokens, merges, types)

    cases, failed = [], False
    for text in CORPUS:
        ids_a = a.encode(text)
        ids_b = b.encode(text, add_special_tokens=True).ids
        if ids_a != ids_b:
            failed = True
            print(f"DISAGREE on {text!r}:\n  pure-python {ids_a}\n  tokenizers  {ids_b}")
        for name, dec in (("pure-python", a.decode(ids_a)), ("tokenizers", b.decode(ids_b, skip_special_tokens=False))):
            if dec != text:
                failed = True
                print(f"{name} does not round-trip {text!r}: got {dec!r}")
        cases.append({"text": text, "ids": ids_a})
    if failed:
        print("reference tokenizers disagree; fixture not written", file=sys.stderr)
        return 1

    rendered = json.dumps(cases, ensure_ascii=False, indent=1) + "\n"
    if args.check:
        with open(args.out, encoding="utf-8") as f:
            if f.read() != rendered:
                print(f"{args.out} differs from the reference", file=sys.stderr)
                return 1
        print(f"{args.out}: {len(cases)} cases match")
        return 0
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(rendered)
    print(f"wrote {len(cases)} cases to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
