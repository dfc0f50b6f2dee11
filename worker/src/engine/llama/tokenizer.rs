//! Tokenizers for Llama-family models: built from a GGUF file's own vocabulary and merges, or
//! read from a `tokenizer.json` next to safetensors weights; and the special token ids (BOS,
//! EOS, other end-of-turn tokens) that generation needs.
//!
//! Only byte-level BPE GGUFs (`tokenizer.ggml.model = "gpt2"`) are supported, with the
//! pre-tokenizers whose rules are known here (`smollm` and its llama.cpp twins, and plain
//! `gpt2`); anything else is refused rather than tokenized subtly wrong. Chat templates live in
//! [`super::chat`]; streaming detokenisation is not this module's business.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";

/// GGUF token type of control tokens (`<|im_start|>`): special, never produced by BPE.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of user-defined tokens: matched whole in text, kept when decoding.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Tokens that end a turn in the chat formats we know, besides the model's EOS. llama.cpp
/// stops on the same ones (its "end of generation" set).
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
];

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key the tokenizer needs is absent from the GGUF.
    #[error("GGUF metadata `{0}` is missing")]
    MissingKey(&'static str),
    /// A metadata key has the wrong type or an unusable value.
    #[error("GGUF metadata `{key}` {message}")]
    BadValue {
        /// The key at fault.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer family this module does not build.
    #[error("GGUF tokenizer model `{0}` is not supported (only `gpt2`, byte-level BPE)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer whose splitting rules are not implemented.
    #[error("GGUF pre-tokenizer `{0}` is not supported (known: smollm, starcoder, refact, gpt2)")]
    UnsupportedPreTokenizer(String),
    /// The `tokenizers` crate refused the vocabulary, merges or added tokens.
    #[error("building the tokenizer failed: {0}")]
    Build(#[source] tokenizers::Error),
    /// A `tokenizer.json` could not be read or parsed.
    #[error("reading tokenizer `{}`: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: tokenizers::Error,
    },
}

/// Token ids that shape generation, read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialIds {
    /// The token to prepend to every prompt: `tokenizer.ggml.bos_token_id`, or `None` when
    /// `tokenizer.ggml.add_bos_token` is false or absent (SmolLM2: its BOS id 1 is
    /// `<|im_start|>`, which the chat template writes itself).
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id` (SmolLM2: 2, `<|im_end|>`).
    pub eos: u32,
    /// Other tokens that end generation: the end-of-turn tokens (`<|im_end|>`,
    /// `<|endoftext|>`, `<|eot_id|>`, ...) present in the vocabulary, without `eos` itself and
    /// without duplicates (SmolLM2: `[0]`, `<|endoftext|>`).
    pub extra_stops: Vec<u32>,
}

impl SpecialIds {
    /// Whether generating `id` ends the sequence.
    pub fn is_stop(&self, id: u32) -> bool {
        id == self.eos || self.extra_stops.contains(&id)
    }
}

/// Builds the byte-level BPE tokenizer stored in a GGUF file's metadata.
///
/// Pre-tokenizer `Sequence[Digits(individual), ByteLevel(no prefix space, GPT-2 regex)]` for
/// `smollm`/`starcoder`/`refact` (`ByteLevel` alone for `gpt2`), `ByteLevel` decoder, no
/// post-processor: encoding never adds BOS (see [`SpecialIds::bos`]). Control tokens become
/// special added tokens and user-defined ones plain added tokens, so both are recognised whole
/// in text (`<|im_start|>` is one token); only control tokens are dropped by
/// `decode(.., skip_special_tokens = true)`.
pub fn tokenizer_from_gguf(content: &Content) -> Result<Tokenizer, TokenizerError> {
    let model = string(content, KEY_MODEL)?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel(model.clone()));
    }
    let pre_tokenizer = pre_tokenizer(string(content, KEY_PRE)?)?;

    let tokens = array(content, KEY_TOKENS)?
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| TokenizerError::BadValue {
                    key: KEY_TOKENS,
                    message: "holds a non-string".into(),
                })
        })
        .collect::<Result<Vec<String>, _>>()?;
    let token_types = match content.metadata.get(KEY_TOKEN_TYPE) {
        Some(value) => {
            let types = value
                .to_vec()
                .map_err(|_| bad(KEY_TOKEN_TYPE, "is not an array"))?
                .iter()
                .map(|v| integer(v).ok_or_else(|| bad(KEY_TOKEN_TYPE, "holds a non-integer")))
                .collect::<Result<Vec<i64>, _>>()?;
            if types.len() != tokens.len() {
                return Err(bad(
                    KEY_TOKEN_TYPE,
                    &format!("has {} entries for {} tokens", types.len(), tokens.len()),
                ));
            }
            types
        }
        // Without types nothing is special; encoding then splits `<|im_start|>` into pieces.
        None => vec![1; tokens.len()],
    };
    let merges = array(content, KEY_MERGES)?
        .iter()
        .map(|v| {
            let merge = v
                .to_string()
                .map_err(|_| bad(KEY_MERGES, "holds a non-string"))?;
            let (left, right) = merge
                .split_once(' ')
                .ok_or_else(|| bad(KEY_MERGES, &format!("holds `{merge}`, not `left right`")))?;
            Ok((left.to_owned(), right.to_owned()))
        })
        .collect::<Result<Merges, TokenizerError>>()?;

    let id_of =
        |i: usize| u32::try_from(i).map_err(|_| bad(KEY_TOKENS, "holds more than u32::MAX tokens"));
    let mut vocab = Vocab::default();
    for (i, token) in tokens.iter().enumerate() {
        // A token listed twice keeps its first id; the second id then decodes to nothing.
        if !vocab.contains_key(token) {
            vocab.insert(token.clone(), id_of(i)?);
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(TokenizerError::Build)?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&token_types)
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(token, &t)| {
            AddedToken::from(token.clone(), t == TOKEN_TYPE_CONTROL).normalized(false)
        })
        .collect();
    // `add_tokens` keeps each token's own `special` flag and, as the tokens are already in the
    // vocabulary, their GGUF ids.
    tokenizer.add_tokens(added).map_err(TokenizerError::Build)?;
    Ok(tokenizer)
}

/// Reads the special token ids from `content`, naming them through `tok`.
///
/// Missing metadata is tolerated: no BOS; EOS falls back to the first of `<|im_end|>`,
/// `<|endoftext|>`, `</s>` found in the vocabulary, else id 0.
pub fn special_ids(content: &Content, tok: &Tokenizer) -> SpecialIds {
    let id = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(integer)
            .and_then(|v| u32::try_from(v).ok())
    };
    let add_bos = content
        .metadata
        .get(KEY_ADD_BOS)
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let bos = if add_bos { id(KEY_BOS) } else { None };
    let eos = id(KEY_EOS)
        .or_else(|| {
            ["<|im_end|>", "<|endoftext|>", "</s>"]
                .iter()
                .find_map(|t| tok.token_to_id(t))
        })
        .unwrap_or(0);
    let mut extra_stops = Vec::new();
    for token in END_OF_TURN_TOKENS {
        if let Some(id) = tok.token_to_id(token) {
            if id != eos && !extra_stops.contains(&id) {
                extra_stops.push(id);
            }
        }
    }
    SpecialIds {
        bos,
        eos,
        extra_stops,
    }
}

/// Reads a Hugging Face `tokenizer.json` (safetensors model folders).
pub fn tokenizer_from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_file(path).map_err(|source| TokenizerError::File {
        path: path.to_owned(),
        source,
    })
}

/// The pre-tokenizer llama.cpp applies for `tokenizer.ggml.pre = name`.
fn pre_tokenizer(name: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    // No prefix space; trim_offsets only moves offsets, never ids.
    let byte_level = ByteLevel::new(false, true, true);
    match name {
        // llama.cpp gives these one rule: every `\p{N}` on its own, then the GPT-2 regex.
        "smollm" | "starcoder" | "refact" => {
            Ok(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
        }
        "gpt2" => Ok(byte_level.into()),
        other => Err(TokenizerError::UnsupportedPreTokenizer(other.to_owned())),
    }
}

fn bad(key: &'static str, message: &str) -> TokenizerError {
    TokenizerError::BadValue {
        key,
        message: message.to_owned(),
    }
}

fn string<'a>(content: &'a Content, key: &'static str) -> Result<&'a String, TokenizerError> {
    content
        .metadata
        .get(key)
        .ok_or(TokenizerError::MissingKey(key))?
        .to_string()
        .map_err(|_| bad(key, "is not a string"))
}

fn array<'a>(content: &'a Content, key: &'static str) -> Result<&'a Vec<Value>, TokenizerError> {
    content
        .metadata
        .get(key)
        .ok_or(TokenizerError::MissingKey(key))?
        .to_vec()
        .map_err(|_| bad(key, "is not an array"))
}

/// Any GGUF integer type as `i64` (writers differ: ids are `u32`, token types `i32`).
fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The default model, shared with the chat template tests.
    pub(crate) fn smollm2_gguf() -> Option<Content> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !path.exists() {
            println!("skipped: {} is missing", path.display());
            return None;
        }
        let mut file = std::fs::File::open(&path).expect("open the GGUF");
        Some(Content::read(&mut file).expect("read the GGUF header"))
    }

    #[derive(serde::Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
    }

    fn reference_corpus() -> Vec<Case> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_corpus.json");
        let json = std::fs::read_to_string(&path).expect("the reference fixture is in the tree");
        serde_json::from_str(&json).expect("fixture is a list of {text, ids}")
    }

    #[test]
    fn matches_reference_corpus() {
        let Some(content) = smollm2_gguf() else {
            return;
        };
        let tok = tokenizer_from_gguf(&content).expect("tokenizer");
        let corpus = reference_corpus();
        assert!(corpus.len() >= 20, "fixture lost its cases");
        let mut failures = Vec::new();
        for case in &corpus {
            let ids = tok
                .encode(case.text.as_str(), true)
                .expect("encode")
                .get_ids()
                .to_vec();
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
    fn chat_markers_are_single_tokens_and_skippable() {
        let Some(content) = smollm2_gguf() else {
            return;
        };
        let tok = tokenizer_from_gguf(&content).expect("tokenizer");
        let enc = tok
            .encode("<|im_start|>user\nhi<|im_end|>", true)
            .expect("encode");
        assert_eq!(enc.get_ids(), &[1, 4093, 198, 6004, 2]);
        assert_eq!(tok.decode(enc.get_ids(), true).expect("decode"), "user\nhi");
        // No BOS is added even with add_special_tokens = true.
        let plain = tok.encode("hi", true).expect("encode");
        assert_eq!(plain.get_ids(), &[6004]);
    }

    #[test]
    fn digits_are_split_one_by_one() {
        let Some(content) = smollm2_gguf() else {
            return;
        };
        let tok = tokenizer_from_gguf(&content).expect("tokenizer");
        let enc = tok.encode("2024", false).expect("encode");
        assert_eq!(enc.get_tokens(), &["2", "0", "2", "4"]);
        // Every `\p{N}` is split off, not just ASCII digits. SmolLM2's vocabulary has no
        // multi-digit tokens, so this is where a missing Digits step shows: " ½" would be
        // ["ĠÂ", "½"].
        let enc = tok.encode(" ½", false).expect("encode");
        assert_eq!(enc.get_tokens(), &["Ġ", "Â½"]);
    }

    #[test]
    fn smollm2_special_ids() {
        let Some(content) = smollm2_gguf() else {
            return;
        };
        let tok = tokenizer_from_gguf(&content).expect("tokenizer");
        let ids = special_ids(&content, &tok);
        assert_eq!(
            ids,
            SpecialIds {
                bos: None,
                eos: 2,
                extra_stops: vec![0],
            }
        );
        assert_eq!(tok.id_to_token(2).as_deref(), Some("<|im_end|>"));
        assert_eq!(tok.id_to_token(0).as_deref(), Some("<|endoftext|>"));
        assert!(ids.is_stop(2) && ids.is_stop(0) && !ids.is_stop(1));
    }

    #[test]
    fn bos_is_prepended_only_when_the_gguf_asks() {
        let Some(mut content) = smollm2_gguf() else {
            return;
        };
        content
            .metadata
            .insert(KEY_ADD_BOS.into(), Value::Bool(true));
        let tok = tokenizer_from_gguf(&content).expect("tokenizer");
        assert_eq!(special_ids(&content, &tok).bos, Some(1));
    }

    #[test]
    fn tokenizer_json_round_trips() {
        let Some(content) = smollm2_gguf() else {
            return;
        };
        let tok = tokenizer_from_gguf(&content).expect("tokenizer");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenizer.json");
        tok.save(&path, false).expect("save");
        let loaded = tokenizer_from_file(&path).expect("load");
        for case in reference_corpus() {
            let ids = loaded.encode(case.text.as_str(), true).expect("encode");
            assert_eq!(ids.get_ids(), case.ids.as_slice(), "{:?}", case.text);
        }
    }

    #[test]
    fn missing_tokenizer_json_names_the_path() {
        let err = tokenizer_from_file(Path::new("/nonexistent/tokenizer.json"))
            .expect_err("no such file");
        assert!(
            err.to_string().contains("/nonexistent/tokenizer.json"),
            "{err}"
        );
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
    fn refuses_sentencepiece_gguf() {
        let content = synthetic(vec![(KEY_MODEL, Value::String("llama".into()))]);
        let err = tokenizer_from_gguf(&content).expect_err("llama tokenizer is unsupported");
        assert!(
            matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "llama"),
            "{err}"
        );
    }

    #[test]
    fn refuses_unknown_pre_tokenizer() {
        let content = synthetic(vec![
            (KEY_MODEL, Value::String("gpt2".into())),
            (KEY_PRE, Value::String("qwen2".into())),
        ]);
        let err = tokenizer_from_gguf(&content).expect_err("qwen2 splitting is not implemented");
        assert!(
            matches!(err, TokenizerError::UnsupportedPreTokenizer(_)),
            "{err}"
        );
    }

    #[test]
    fn reports_missing_merges() {
        let content = synthetic(vec![
            (KEY_MODEL, Value::String("gpt2".into())),
            (KEY_PRE, Value::String("smollm".into())),
            (KEY_TOKENS, strings(&["a", "b"])),
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
            (KEY_MODEL, Value::String("gpt2".into())),
            (KEY_PRE, Value::String("gpt2".into())),
            (KEY_TOKENS, strings(&["<ctl>", "<think>", "a", "b", "ab"])),
            (KEY_MERGES, strings(&["a b"])),
            (
                KEY_TOKEN_TYPE,
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
        let enc = tok.encode("<ctl><think>ab", false).expect("encode");
        assert_eq!(enc.get_ids(), &[0, 1, 4]);
        assert_eq!(
            tok.decode(enc.get_ids(), true).expect("decode"),
            "<think>ab"
        );
    }
}
