//! Tokenizer tests on real vocabularies: the default model's GGUF (skipped when not fetched)
//! and llama.cpp's vocabulary-only GGUFs (`scripts/fetch-llamacpp-src.sh`).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};

use super::*;

/// The default model, shared with the chat template tests (whose tests are ignored without
/// `cfg(genq_model)`).
pub(crate) fn smollm2_gguf() -> Content {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut file = File::open(&path).unwrap_or_else(|e| {
        panic!(
            "the default model is missing at {}: run scripts/fetch-model.sh ({e})",
            path.display()
        )
    });
    Content::read(&mut file).expect("read the GGUF header")
}

/// llama.cpp's sources.
fn llamacpp_src() -> PathBuf {
    crate::engine::llama::llamacpp_src::dir().unwrap_or_else(|e| panic!("{e}"))
}

/// The tokenizer of llama.cpp's `models/ggml-vocab-<name>.gguf`.
fn vocab(name: &str) -> Tokenizer {
    let path = llamacpp_src().join(format!("models/ggml-vocab-{name}.gguf"));
    let mut file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let content = Content::read(&mut file).expect("read the GGUF header");
    tokenizer_from_gguf(&content).expect("tokenizer")
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn reference_corpus() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_corpus.json");
    let json = std::fs::read_to_string(&path).expect("the reference fixture is in the tree");
    serde_json::from_str(&json).expect("fixture is a list of {text, ids}")
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn matches_reference_corpus() {
    let content = smollm2_gguf();
    let tok = tokenizer_from_gguf(&content).expect("tokenizer");
    let corpus = reference_corpus();
    assert!(corpus.len() >= 20, "fixture lost its cases");
    let mut failures = Vec::new();
    for case in &corpus {
        let ids = tok.encode(case.text.as_str(), true).expect("encode");
        if ids != case.ids {
            failures.push(format!(
                "{:?}\n   ours {ids:?}\n   ref  {:?}",
                case.text, case.ids
            ));
            continue;
        }
        let text = tok.decode(&ids, false).expect("decode");
        if text != case.text {
            failures.push(format!("{:?} decodes to {text:?}", case.text));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn chat_markers_are_single_tokens_only_when_special_tokens_are_parsed() {
    let content = smollm2_gguf();
    let tok = tokenizer_from_gguf(&content).expect("tokenizer");
    let text = "<|im_start|>user\nhi<|im_end|>";
    let ids = tok.encode(text, true).expect("encode");
    assert_eq!(ids, [1, 4093, 198, 6004, 2]);
    assert_eq!(tok.decode(&ids, true).expect("decode"), "user\nhi");
    assert_eq!(tok.decode(&ids, false).expect("decode"), text);
    let literal = tok.encode(text, false).expect("encode");
    assert!(!literal.contains(&1) && !literal.contains(&2), "{literal:?}");
    assert_eq!(tok.decode(&literal, true).expect("decode"), text);
    // SmolLM2 asks for no BOS.
    let special = special_ids(&tok);
    let plain = prompt_ids(&tok, &special, "hi", true).expect("encode");
    assert_eq!(plain, [6004]);
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn digits_are_split_one_by_one() {
    let content = smollm2_gguf();
    let tok = tokenizer_from_gguf(&content).expect("tokenizer");
    let texts = |text: &str| -> Vec<String> {
        let ids = tok.encode(text, false).expect("encode");
        ids.iter().filter_map(|&id| tok.id_to_token(id)).collect()
    };
    assert_eq!(texts("2024"), ["2", "0", "2", "4"]);
    // Every `\p{N}` is split off, not just ASCII digits: without it " ½" is ["ĠÂ", "½"].
    assert_eq!(texts(" ½"), ["Ġ", "Â½"]);
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn smollm2_special_ids() {
    let content = smollm2_gguf();
    let tok = tokenizer_from_gguf(&content).expect("tokenizer");
    let ids = special_ids(&tok);
    assert_eq!(ids.bos, None);
    assert_eq!(ids.eos, 2);
    assert_eq!(tok.id_to_token(2).as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.id_to_token(0).as_deref(), Some("<|endoftext|>"));
    assert!(ids.is_stop(2) && ids.is_stop(0) && !ids.is_stop(1));
    // Besides <|endoftext|>, llama.cpp also ends on the repository-name token it knows from
    // fill-in-the-middle vocabularies.
    let mut stops: Vec<String> = ids
        .extra_stops
        .iter()
        .filter_map(|&id| tok.id_to_token(id))
        .collect();
    stops.sort();
    assert_eq!(stops, ["<reponame>", "<|endoftext|>"]);
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn bos_is_prepended_when_the_gguf_asks() {
    let mut content = smollm2_gguf();
    content
        .metadata
        .insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    let tok = tokenizer_from_gguf(&content).expect("tokenizer");
    let special = special_ids(&tok);
    assert_eq!(special.bos, Some(1));
    assert_eq!(prompt_ids(&tok, &special, "hi", true).expect("encode"), [1, 6004]);
}

#[test]
fn llama3_adds_bos_and_stops_at_eot() {
    let tok = vocab("llama-bpe");
    let special = special_ids(&tok);
    assert_eq!(special.bos, Some(128000));
    let eot = tok.token_to_id("<|eot_id|>").expect("<|eot_id|>");
    assert_eq!(eot, 128009);
    assert!(special.is_stop(eot), "{special:?}");
    assert!(!special.is_stop(128000));
    // " Hello world" from llama.cpp's own cases, after BOS.
    let ids = prompt_ids(&tok, &special, " Hello world", false).expect("encode");
    assert_eq!(ids, [128000, 22691, 1917]);
}

#[test]
fn qwen2_adds_no_bos_and_stops_at_im_end() {
    let tok = vocab("qwen2");
    let special = special_ids(&tok);
    assert_eq!(special.bos, None);
    let im_end = tok.token_to_id("<|im_end|>").expect("<|im_end|>");
    assert!(special.is_stop(im_end), "{special:?}");
    let im_start = tok.token_to_id("<|im_start|>").expect("<|im_start|>");
    assert!(!special.is_stop(im_start));
    let ids = tok.encode("<|im_start|>user", true).expect("encode");
    assert_eq!(ids.first(), Some(&im_start));
}

#[test]
fn phi3_adds_bos_and_stops_at_end() {
    let tok = vocab("phi-3");
    let special = special_ids(&tok);
    assert_eq!(special.bos, Some(1));
    let end = tok.token_to_id("<|end|>").expect("<|end|>");
    assert!(special.is_stop(end), "{special:?}");
    // Phi-3's special tokens swallow the whitespace after them; text after one gets
    // SentencePiece's prefix space again.
    let user = tok.token_to_id("<|user|>").expect("<|user|>");
    let ids = tok.encode("<|user|>\nHi<|end|>", true).expect("encode");
    let hi = tok.encode("Hi", false).expect("encode");
    assert_eq!(ids, [vec![user], hi, vec![end]].concat());
}

#[test]
fn llama2_adds_bos_stops_at_eos_and_decodes_without_the_prefix_space() {
    let tok = vocab("llama-spm");
    let special = special_ids(&tok);
    assert_eq!(special.bos, Some(1));
    assert_eq!(special.eos, 2);
    assert_eq!(tok.id_to_token(2).as_deref(), Some("</s>"));
    let ids = prompt_ids(&tok, &special, "Hello world", false).expect("encode");
    assert_eq!(ids, [1, 15043, 3186]);
    // As llama.cpp's detokenize: the prefix space is dropped from the first token, unless a
    // BOS before it was left out.
    assert_eq!(tok.decode(&ids[1..], true).expect("decode"), "Hello world");
    assert_eq!(tok.decode(&ids, true).expect("decode"), " Hello world");
    assert_eq!(tok.decode(&ids, false).expect("decode"), "<s> Hello world");
    // A character outside the vocabulary falls back to its bytes and decodes back.
    let ids = tok.encode("𝔸", false).expect("encode");
    assert!(ids.len() > 2, "{ids:?}");
    assert_eq!(tok.decode(&ids, false).expect("decode"), "𝔸");
    // `<s>` in text is a token only when special tokens are parsed.
    assert_eq!(tok.encode("<s>", true).expect("encode"), [1]);
    assert_ne!(tok.encode("<s>", false).expect("encode"), [1]);
}

#[test]
fn missing_tokenizer_json_names_the_path() {
    let err =
        tokenizer_from_file(Path::new("/nonexistent/tokenizer.json")).expect_err("no such file");
    assert!(
        err.to_string().contains("/nonexistent/tokenizer.json"),
        "{err}"
    );
}

#[test]
fn tokenizer_json_parses_special_tokens_only_when_asked() {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let vocab: HashMap<String, u32> = [("<unk>", 0), ("<|end|>", 1), ("hi", 2)]
        .into_iter()
        .map(|(t, i)| (t.to_owned(), i))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .expect("word level");
    let mut hf = tokenizers::Tokenizer::new(model);
    hf.with_pre_tokenizer(Some(Whitespace {}));
    hf.add_special_tokens([tokenizers::AddedToken::from("<|end|>", true)])
        .expect("added");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokenizer.json");
    hf.save(&path, false).expect("save");
    let tok = tokenizer_from_file(&path).expect("load");
    assert_eq!(tok.encode("hi<|end|>", true).expect("encode"), [2, 1]);
    assert_ne!(tok.encode("hi<|end|>", false).expect("encode"), [2, 1]);
    assert_eq!(tok.decode(&[2, 1], true).expect("decode"), "hi");
}

fn synthetic(metadata: Vec<(&str, Value)>) -> Content {
    Content {
        magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
        metadata: metadata
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<HashMap<_, _>>(),
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String((*s).into())).collect())
}

#[test]
fn refuses_an_unknown_tokenizer_model_naming_the_known_ones() {
    let content = synthetic(vec![("tokenizer.ggml.model", Value::String("t5".into()))]);
    let err = tokenizer_from_gguf(&content).expect_err("t5 is unsupported");
    assert!(
        matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "t5"),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("llama") && message.contains("gpt2"), "{message}");
}

#[test]
fn refuses_an_unknown_pre_tokenizer_naming_the_known_ones() {
    let content = synthetic(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("kimi-k2".into())),
    ]);
    let err = tokenizer_from_gguf(&content).expect_err("kimi-k2 splitting is not implemented");
    assert!(
        matches!(err, TokenizerError::UnsupportedPreTokenizer(ref p) if p == "kimi-k2"),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("llama-bpe") && message.contains("qwen2") && message.contains("smollm"),
        "{message}"
    );
}

#[test]
fn reports_missing_merges() {
    let content = synthetic(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b"])),
    ]);
    let err = tokenizer_from_gguf(&content).expect_err("no merges");
    assert_eq!(
        err.to_string(),
        "GGUF metadata `tokenizer.ggml.merges` is missing"
    );
}

#[test]
fn user_defined_tokens_are_matched_and_kept_when_decoding() {
    let content = synthetic(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens", strings(&["<ctl>", "<think>", "a", "b", "ab"])),
        ("tokenizer.ggml.merges", strings(&["a b"])),
        (
            "tokenizer.ggml.token_type",
            Value::Array(vec![
                Value::I32(3),
                Value::I32(4),
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
            ]),
        ),
    ]);
    let tok = tokenizer_from_gguf(&content).expect("tokenizer");
    let ids = tok.encode("<ctl><think>ab", true).expect("encode");
    assert_eq!(ids, [0, 1, 4]);
    assert_eq!(tok.decode(&ids, true).expect("decode"), "<think>ab");
    // Without parsing special tokens the control token is text, the user-defined one is not.
    let ids = tok.encode("<think>ab", false).expect("encode");
    assert_eq!(ids, [1, 4]);
}
