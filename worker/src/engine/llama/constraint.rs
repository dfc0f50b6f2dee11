//! Constrained decoding: a job's output `format` (JSON Schema, any JSON object, a regular
//! expression, a Lark grammar) compiled by llguidance against the model's vocabulary into a
//! per-sequence matcher. Before a sequence samples, its matcher gives the set of tokens that keep
//! the text inside the language (computed while the forward pass runs); after, it consumes the
//! token drawn. The end-of-sequence tokens are allowed exactly when the text is complete.

use std::sync::{Arc, OnceLock};

use genq_shared::OutputFormat;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use super::tokenizer::{SpecialIds, Tokenizer};

/// Each logits column's token bytes, `None` for a special token.
type TokenBytes = Vec<Option<Vec<u8>>>;

/// The model's vocabulary as llguidance reads it: each token's bytes, special tokens marked.
struct VocabEnv {
    trie: TokTrie,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    /// Not the model's own tokenization: llguidance then only masks, never forces tokens.
    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// Compiles formats for one model. The parser factory (about 0.2 s to build over a 49k
/// vocabulary) is built on the first format asked for, so workers that never see one pay
/// nothing.
pub(crate) struct Grammars {
    /// Each logits column's token bytes (`None`: special) and the end-of-sequence ids.
    vocab: Arc<(TokenBytes, Vec<u32>)>,
    factory: OnceLock<Result<Arc<ParserFactory>, String>>,
}

impl Grammars {
    /// For `tokenizer`'s vocabulary over logits rows `width` wide (columns past the vocabulary
    /// are never allowed); every stop token of `special` ends a complete text.
    pub(crate) fn new(tokenizer: &Tokenizer, special: &SpecialIds, width: usize) -> Self {
        let mut bytes = tokenizer.vocab_bytes();
        bytes.resize(width.max(bytes.len()), Some(Vec::new()));
        let ends = std::iter::once(special.eos).chain(special.extra_stops.iter().copied()).collect();
        Self { vocab: Arc::new((bytes, ends)), factory: OnceLock::new() }
    }

    fn factory(&self) -> Result<&Arc<ParserFactory>, String> {
        self.factory.get_or_init(|| build_factory(&self.vocab.0, &self.vocab.1)).as_ref().map_err(Clone::clone)
    }

    /// A matcher for `format`, or why it cannot be compiled (the library's message).
    pub(crate) fn compile(&self, format: &OutputFormat) -> Result<Constraint, String> {
        let parser = self.factory()?.create_parser(grammar(format)).map_err(|e| format!("cannot be compiled: {e:#}"))?;
        Ok(Constraint { matcher: Matcher::new(Ok(parser)), mask: None })
    }
}

fn build_factory(bytes: &[Option<Vec<u8>>], ends: &[u32]) -> Result<Arc<ParserFactory>, String> {
    // Special tokens carry llguidance's marker byte (never valid UTF-8 text): no grammar text
    // matches them.
    let words: Vec<Vec<u8>> = bytes
        .iter()
        .map(|b| b.clone().unwrap_or_else(|| vec![TokTrie::SPECIAL_TOKEN_MARKER]))
        .collect();
    let eos = *ends.first().ok_or("the model has no end-of-sequence token")?;
    let info = TokRxInfo::new(words.len() as u32, eos);
    let env: TokEnv = Arc::new(VocabEnv { trie: TokTrie::from(&info, &words).with_eos_tokens(ends) });
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| format!("building the grammar compiler: {e:#}"))?;
    factory.quiet();
    // Errors go back to job submitters: the message, not the parser's state or the grammar.
    factory.limits_mut().verbose_errors = false;
    Ok(Arc::new(factory))
}

/// The grammar of a format. JSON comes out compact (no optional whitespace, which a small
/// model could otherwise repeat until `max_new_tokens`) unless the schema sets llguidance's own
/// `x-guidance` options.
fn grammar(format: &OutputFormat) -> TopLevelGrammar {
    let compact = |mut schema: Value| {
        if let Value::Bool(true) = schema {
            schema = json!({});
        }
        if let Some(fields) = schema.as_object_mut() {
            fields.entry("x-guidance").or_insert_with(|| json!({ "whitespace_flexible": false }));
        }
        schema
    };
    match format {
        OutputFormat::JsonSchema { schema } => TopLevelGrammar::from_json_schema(compact(schema.clone())),
        OutputFormat::JsonObject {} => TopLevelGrammar::from_json_schema(compact(json!({ "type": "object" }))),
        OutputFormat::Regex { pattern } => TopLevelGrammar::from_regex(pattern),
        OutputFormat::Lark { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
    }
}

/// One sequence's position in its format's language.
pub(crate) struct Constraint {
    matcher: Matcher,
    /// The tokens allowed next, once computed for the current position.
    mask: Option<SimpleVob>,
}

impl Constraint {
    /// Computes the tokens allowed next, unless already known (the end tokens alone once the
    /// text is complete and cannot grow).
    pub(crate) fn prepare(&mut self) -> Result<(), String> {
        if self.mask.is_none() {
            self.mask = Some(self.matcher.compute_mask_or_eos().map_err(|e| format!("{e:#}"))?);
        }
        Ok(())
    }

    /// The tokens allowed next, if already computed.
    pub(crate) fn prepared(&self) -> Option<&SimpleVob> {
        self.mask.as_ref()
    }

    /// The tokens allowed next ([`Constraint::prepare`] first).
    pub(crate) fn allowed(&mut self) -> Result<&SimpleVob, String> {
        self.prepare()?;
        self.mask.as_ref().ok_or_else(|| "no mask".to_string())
    }

    /// A matcher at the same position, independent of this one (another sample of a job).
    pub(crate) fn deep_clone(&self) -> Constraint {
        Constraint { matcher: self.matcher.deep_clone(), mask: None }
    }

    /// Moves past `token` (one the mask allowed).
    pub(crate) fn accept(&mut self, token: u32) -> Result<(), String> {
        self.mask = None;
        self.matcher.consume_token(token).map_err(|e| format!("{e:#}"))
    }

    /// The text is complete and nothing more can follow.
    pub(crate) fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// The greedy pick among the tokens `mask` allows: the largest logit (the first of equal ones,
/// NaN never), `banned` tokens left out unless nothing else is allowed. What sampling the row
/// masked by [`apply`] at temperature 0 picks, without copying the row. `None` when no allowed
/// token has a finite logit.
pub(crate) fn greedy_pick(row: &[f32], mask: &SimpleVob, banned: &[u32]) -> Option<u32> {
    let best = |skip_banned: bool| {
        let mut best: Option<(usize, f32)> = None;
        mask.iter_set_entries(|i| {
            let Some(&v) = row.get(i) else { return };
            if (skip_banned && banned.contains(&(i as u32))) || !v.is_finite() {
                return;
            }
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((i, v));
            }
        });
        best.map(|(i, _)| i as u32)
    };
    best(true).or_else(|| best(false))
}

/// Sets every logit `mask` does not allow to minus infinity.
pub(crate) fn apply(mask: &SimpleVob, logits: &mut [f32]) {
    mask.iter_unset_entries(|i| {
        if let Some(l) = logits.get_mut(i) {
            *l = f32::NEG_INFINITY;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny vocabulary: one token per lowercase letter and digit, `{`, `}`, `"`, `:`, `,`,
    /// `[`, `]`, and the special end token 0.
    fn grammars() -> (Grammars, Vec<Vec<u8>>) {
        let mut words: Vec<Vec<u8>> = vec![Vec::new()];
        words.extend(b"abcdefghijklmnopqrstuvwxyz0123456789{}\":,[]- ".iter().map(|&b| vec![b]));
        let bytes: Vec<Option<Vec<u8>>> = std::iter::once(None).chain(words[1..].iter().cloned().map(Some)).collect();
        let g = Grammars { vocab: Arc::new((bytes, vec![0])), factory: OnceLock::new() };
        (g, words)
    }

    /// Drives `c` greedily: always the first allowed token in `prefer`'s order, else the first
    /// allowed; returns the text, or stops after `max` tokens.
    fn drive(c: &mut Constraint, words: &[Vec<u8>], prefer: &[u8], max: usize) -> (String, bool) {
        let mut out = Vec::new();
        for _ in 0..max {
            let mask = c.allowed().expect("mask").clone();
            let pick = prefer
                .iter()
                .filter_map(|b| words.iter().position(|w| w == &[*b]))
                .find(|&i| mask.is_allowed(i as u32))
                .or_else(|| (0..words.len()).find(|&i| mask.is_allowed(i as u32)))
                .expect("something allowed") as u32;
            if pick == 0 {
                return (String::from_utf8(out).expect("utf8"), true);
            }
            c.accept(pick).expect("accepted");
            out.extend_from_slice(&words[pick as usize]);
            if c.is_complete() {
                return (String::from_utf8(out).expect("utf8"), true);
            }
        }
        (String::from_utf8(out).expect("utf8"), false)
    }

    #[test]
    fn a_regex_allows_only_its_language_and_ends_when_complete() {
        let (g, words) = grammars();
        let mut c = g.compile(&OutputFormat::Regex { pattern: "(yes|no)-[0-9]{2}".into() }).expect("compiles");
        let (text, ended) = drive(&mut c, &words, b"zn", 20);
        assert_eq!((text.as_str(), ended), ("no-00", true));
        // The end token is never allowed before the text is complete.
        let mut c = g.compile(&OutputFormat::Regex { pattern: "ab+".into() }).expect("compiles");
        assert!(!c.allowed().expect("mask").is_allowed(0));
        c.accept(1).expect("a");
        assert!(!c.allowed().expect("mask").is_allowed(0));
        c.accept(2).expect("b");
        assert!(c.allowed().expect("mask").is_allowed(0), "ab is complete, ab+ may end");
        assert!(c.accept(3).is_err(), "c is outside the language");
    }

    #[test]
    fn a_json_schema_gives_compact_valid_json() {
        let (g, words) = grammars();
        let schema = json!({"type": "object", "properties": {"k": {"enum": ["a1", "b2"]}, "n": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 2}}, "required": ["k", "n"], "additionalProperties": false});
        let mut c = g.compile(&OutputFormat::JsonSchema { schema: schema.clone() }).expect("compiles");
        let (text, ended) = drive(&mut c, &words, b"b7,]}", 60);
        assert!(ended, "{text}");
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(jsonschema::is_valid(&schema, &value), "{text}");
        assert!(!text.contains(' '), "compact: {text}");
    }

    #[test]
    fn the_greedy_pick_is_what_sampling_the_masked_row_picks() {
        let (g, _) = grammars();
        let mut c = g.compile(&OutputFormat::Regex { pattern: "[a-c]x?".into() }).expect("compiles");
        let mask = c.allowed().expect("mask").clone();
        // Tokens 1..=3 are a, b, c; 0 is the end token (not allowed yet).
        let mut row = vec![9.0, 1.0, 5.0, 5.0, 8.0];
        row.resize(mask.len(), 7.0);
        assert_eq!(greedy_pick(&row, &mask, &[]), Some(2), "the first of equal allowed maxima; 0 and 4 are not allowed");
        assert_eq!(greedy_pick(&row, &mask, &[2, 3]), Some(1), "banned ones left out");
        assert_eq!(greedy_pick(&row, &mask, &[1, 2, 3]), Some(2), "unless nothing else is allowed");
        let mut nan = row.clone();
        nan[1] = f32::NAN;
        assert_eq!(greedy_pick(&nan, &mask, &[]), Some(2), "NaN is never picked");
        let hopeless = vec![f32::NEG_INFINITY; row.len()];
        assert_eq!(greedy_pick(&hopeless, &mask, &[]), None);
        let mut masked = row.clone();
        apply(&mask, &mut masked);
        let sampled = crate::engine::llama::sampler::Sampler::new(&genq_shared::valid::SamplingParams { temperature: 0.0, top_p: 1.0, top_k: None, repetition_penalty: 1.0, seed: None }, 1)
            .sample(&masked, &[])
            .expect("sample");
        assert_eq!(Some(sampled), greedy_pick(&row, &mask, &[]));
    }

    #[test]
    fn formats_that_do_not_compile_say_why() {
        let (g, _) = grammars();
        for (format, says) in [
            (OutputFormat::JsonSchema { schema: json!({"$ref": "#/nope"}) }, "nope"),
            (OutputFormat::JsonSchema { schema: json!({"type": "integer", "minimum": 5, "maximum": 1}) }, "minimum"),
            (OutputFormat::Regex { pattern: "(abc".into() }, "regex"),
            (OutputFormat::Lark { grammar: "start: foo".into() }, "foo"),
        ] {
            let err = g.compile(&format).err().unwrap_or_else(|| panic!("{format:?} compiled"));
            assert!(err.contains("cannot be compiled") && err.contains(says), "{format:?}: {err}");
        }
    }
}
