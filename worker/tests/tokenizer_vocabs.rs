//! genq's GGUF tokenizers against llama.cpp's own tokenizer test cases.
//!
//! llama.cpp ships vocabulary-only GGUFs, `models/ggml-vocab-<name>.gguf`, most with cases:
//! `.inp` holds texts separated by lines `__ggml_vocab_test__`, `.out` one line of ids per
//! text, written by llama.cpp with `add_special = false, parse_special = false`
//! (`tests/test-tokenizer-0.cpp`). For every vocabulary with cases this test tokenizes each text
//! the same way and requires llama.cpp's ids exactly, then decodes the ids (special tokens
//! kept) and requires the text back exactly: SentencePiece's prefix space is put in by
//! encoding and taken out by decoding, and genq never applies llama.cpp's `clean_spaces`
//! pass, so no normalisation is allowed.
//!
//! The vocabularies of the model families genq serves ([`REQUIRED`]) must load and pass;
//! others whose tokenizer genq refuses are reported and skipped. llama.cpp's sources are found
//! at `GENQ_LLAMACPP_SRC`, else `.cache/llamacpp/src/vendor/llama.cpp` at the repository root
//! (`scripts/fetch-llamacpp-src.sh` puts them there).
//!
//! Run: `cargo test -p genq-worker --test tokenizer_vocabs -- --nocapture`.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use genq_worker::engine::llama::tokenizer::{tokenizer_from_gguf, TokenizerError};

/// Vocabularies that must be supported and pass every case.
const REQUIRED: &[&str] = &[
    "llama-bpe",
    "llama-spm",
    "qwen2",
    "qwen35",
    "phi-3",
    "gpt-2",
    "starcoder",
    "refact",
];

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn llamacpp_src() -> PathBuf {
    genq_worker::engine::llama::llamacpp_src::dir().unwrap_or_else(|e| panic!("{e}"))
}

/// One vocabulary's cases: (text, llama.cpp's ids).
fn cases(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| {
        let path = PathBuf::from(format!("{}.{ext}", gguf.display()));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let inp = read("inp");
    let out = read("out");
    // As test-tokenizer-0.cpp reads them: the separator ends every text, the last included.
    let mut texts = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(SEPARATOR) {
            Some(at) => {
                texts.push(rest[..at].to_owned());
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => {
                texts.push(rest.to_owned());
                rest = "";
            }
        }
    }
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().unwrap_or_else(|e| panic!("{}.out: `{id}`: {e}", gguf.display())))
                .collect()
        })
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{}: .inp and .out hold different numbers of cases",
        gguf.display()
    );
    texts.into_iter().zip(ids).collect()
}

/// What happened to one vocabulary.
enum Outcome {
    /// Every case matched.
    Passed(usize),
    /// genq refuses the tokenizer type.
    Refused(TokenizerError),
    /// Cases that did not match.
    Failed(Vec<String>),
}

fn check(gguf: &Path) -> Outcome {
    let mut file = File::open(gguf).unwrap_or_else(|e| panic!("{}: {e}", gguf.display()));
    let content =
        Content::read(&mut file).unwrap_or_else(|e| panic!("{}: not a GGUF: {e}", gguf.display()));
    let tok = match tokenizer_from_gguf(&content) {
        Ok(tok) => tok,
        Err(
            e @ (TokenizerError::UnsupportedModel(_) | TokenizerError::UnsupportedPreTokenizer(_)),
        ) => return Outcome::Refused(e),
        Err(e) => return Outcome::Failed(vec![format!("loading: {e}")]),
    };
    let cases = cases(gguf);
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let ids = match tok.encode(text, false) {
            Ok(ids) => ids,
            Err(e) => {
                failures.push(format!("{text:?}: {e}"));
                continue;
            }
        };
        if &ids != want {
            failures.push(format!("{text:?}\n      genq      {ids:?}\n      llama.cpp {want:?}"));
            continue;
        }
        match tok.decode(&ids, false) {
            Ok(back) if &back == text => {}
            Ok(back) => failures.push(format!("{text:?} decodes to {back:?}")),
            Err(e) => failures.push(format!("{text:?} does not decode: {e}")),
        }
    }
    if failures.is_empty() {
        Outcome::Passed(cases.len())
    } else {
        Outcome::Failed(failures)
    }
}

#[test]
fn gguf_tokenizers_match_llamacpp_on_its_own_cases() {
    let models = llamacpp_src().join("models");
    let mut vocabs: Vec<(String, PathBuf)> = std::fs::read_dir(&models)
        .unwrap_or_else(|e| panic!("{}: {e}", models.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let name = name.strip_prefix("ggml-vocab-")?.strip_suffix(".gguf")?.to_owned();
            PathBuf::from(format!("{}.inp", path.display()))
                .exists()
                .then_some((name, path))
        })
        .collect();
    vocabs.sort();

    let mut problems = Vec::new();
    let mut passed = Vec::new();
    for required in REQUIRED {
        if !vocabs.iter().any(|(name, _)| name == required) {
            problems.push(format!("{required}: ggml-vocab-{required}.gguf with cases is missing"));
        }
    }
    for (name, path) in &vocabs {
        match check(path) {
            Outcome::Passed(n) => {
                println!("{name}: {n} cases pass");
                passed.push(name.clone());
            }
            Outcome::Refused(e) if !REQUIRED.contains(&name.as_str()) => {
                println!("{name}: skipped, genq refuses it: {e}");
            }
            Outcome::Refused(e) => problems.push(format!("{name}: refused: {e}")),
            Outcome::Failed(failures) => problems.push(format!(
                "{name}: {} cases differ from llama.cpp:\n    {}",
                failures.len(),
                failures.join("\n    ")
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        REQUIRED.iter().all(|r| passed.iter().any(|p| p == r)),
        "required vocabularies not checked: passed {passed:?}"
    );
}
