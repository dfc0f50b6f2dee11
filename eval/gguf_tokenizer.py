"""Write a Hugging Face tokenizer folder from a GGUF file's byte-level BPE vocabulary, so that
lm-eval's `local-completions` model can count context tokens as the served model does.
Usage: python eval/gguf_tokenizer.py MODEL.gguf OUT_DIR (needs `gguf`, `tokenizers`, `transformers`).
Handles `tokenizer.ggml.model = gpt2` with the pre-tokenizers listed in PRE.
"""
import sys

from gguf import GGUFReader
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# llama.cpp's `tokenizer.ggml.pre` name -> the pre-tokenizer steps before byte-level splitting.
PRE = {
    "smollm": [pre_tokenizers.Digits(individual_digits=True)],
    "gpt-2": [],
}
CONTROL = 3


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def main(gguf_path, out_dir):
    r = GGUFReader(gguf_path)
    kind, pre = field(r, "tokenizer.ggml.model"), field(r, "tokenizer.ggml.pre", "gpt-2")
    if kind != "gpt2" or pre not in PRE:
        sys.exit(f"unsupported tokenizer: model={kind} pre={pre}")
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(r, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(PRE[pre] + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t, ty in zip(tokens, types) if ty == CONTROL])

    def name(key):
        i = field(r, key)
        return None if i is None else tokens[i]

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=name("tokenizer.ggml.bos_token_id"),
        eos_token=name("tokenizer.ggml.eos_token_id"),
        unk_token=name("tokenizer.ggml.unknown_token_id"),
        pad_token=name("tokenizer.ggml.padding_token_id"),
        add_bos_token=bool(field(r, "tokenizer.ggml.add_bos_token", False)),
        clean_up_tokenization_spaces=False,
    )
    hf.save_pretrained(out_dir)


if __name__ == "__main__":
    main(*sys.argv[1:])
