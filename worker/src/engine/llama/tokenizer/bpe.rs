//! Byte-level BPE as llama.cpp does it (`llm_tokenizer_bpe_session`): the text is split by the
//! pre-tokenizer's regexes (each one cuts every piece the previous ones left: matches and the
//! text between them), each piece's bytes are mapped to GPT-2's printable characters, and the
//! adjacent pair with the lowest merge rank is merged first (the leftmost on a tie). With
//! `ignore_merges` (Llama 3) a piece that is already a token is taken whole. A final symbol
//! that is not a token is written byte by byte.
//!
//! The regexes are llama.cpp's, per `tokenizer.ggml.pre` ([`PreTokenizer::named`]), run with
//! `fancy-regex`; llama.cpp runs the common ones through hand-written matchers of the same
//! meaning. Pre-tokenizers llama.cpp implements only by hand (Kimi K2, AFMoE digits, tiny Aya)
//! or whose `\p{Lu}` classes it reads as "any letter" are not offered.

use std::collections::{BinaryHeap, HashMap};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Content;
use fancy_regex::Regex;

use super::gguf::{array, bad, MERGES_KEY};
use super::TokenizerError;

/// Llama 3's regex (llama.cpp's `LLAMA3`, also DBRX and Smaug).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's regex.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Qwen2's regex: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's: Qwen2's with combining marks kept in words.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// DeepSeek V3 (and Hunyuan dense): digits in threes, CJK runs, then words with marks.
const DEEPSEEK3: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
/// GPT-4o (and Llama 4): case-aware words.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's Tekken.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// BLOOM, Poro, GPT-3 Finnish.
const BLOOM: &str = r" ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+";
const DEEPSEEK_LLM_LETTERS: &str = r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+";

/// One pre-tokenizer of llama.cpp's table and the vocabulary flags that come with its name.
#[derive(Debug, Clone, Copy)]
pub(super) struct PreTokenizer {
    /// The `tokenizer.ggml.pre` names llama.cpp gives this behaviour.
    names: &'static [&'static str],
    regexes: &'static [&'static str],
    /// A piece that is already a token is taken whole, without merging.
    ignore_merges: bool,
    /// BOS is prepended unless `tokenizer.ggml.add_bos_token` says otherwise.
    pub add_bos: bool,
    /// The vocabulary has no BOS unless the GGUF names one (ChatGLM).
    pub no_bos: bool,
}

const fn pre(names: &'static [&'static str], regexes: &'static [&'static str]) -> PreTokenizer {
    PreTokenizer {
        names,
        regexes,
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
    }
}

/// llama.cpp's pre-tokenizers that genq runs (those needing hand-written matchers, Gemma 4's
/// SentencePiece-style BPE and the BERT-like ones with separators are left out).
const PRE_TOKENIZERS: &[PreTokenizer] = &[
    PreTokenizer {
        ignore_merges: true,
        add_bos: true,
        ..pre(
            &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"],
            &[LLAMA3],
        )
    },
    pre(&["dbrx", "smaug-bpe"], &[LLAMA3]),
    pre(
        &["deepseek-llm"],
        &[r"[\r\n]", DEEPSEEK_LLM_LETTERS, r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+", r"\s+$", r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+", r"\p{N}+"],
    ),
    pre(&["deepseek-coder"], &[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+", r"\p{N}"]),
    pre(
        &["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"],
        &[r"\p{N}{1,3}", r"[\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+", DEEPSEEK3],
    ),
    pre(&["falcon"], &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"]),
    pre(
        &["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"],
        &[r"\p{N}", GPT2],
    ),
    pre(
        &["gpt-2", "phi-2", "gigachat", "a.x-4.0", "mellum", "exaone4", "mpt", "olmo", "jais", "trillion", "granite-docling"],
        &[GPT2],
    ),
    pre(
        &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open", "grok-2"],
        &[QWEN2],
    ),
    pre(&["qwen35"], &[QWEN35]),
    pre(&["poro-chat", "bloom", "gpt3-finnish"], &[BLOOM]),
    pre(&["viking"], &[BLOOM, r"\p{N}"]),
    PreTokenizer {
        no_bos: true,
        ..pre(&["chatglm-bpe"], &[LLAMA3])
    },
    PreTokenizer {
        no_bos: true,
        ignore_merges: true,
        ..pre(&["glm4", "glm5"], &[LLAMA3])
    },
    PreTokenizer {
        ignore_merges: true,
        add_bos: true,
        ..pre(&["tekken"], &[TEKKEN])
    },
    pre(&["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], &[GPT4O]),
    pre(
        &["seed-coder"],
        &[r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"],
    ),
    pre(
        &["bailingmoe", "bailingmoe2", "llada-moe"],
        &[r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"],
    ),
    pre(
        &["ufakzeka"],
        &[r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    ),
    pre(&["laguna"], &[r"[^\n]+|[\n]+", QWEN2]),
    PreTokenizer {
        ignore_merges: true,
        ..pre(
            &["minicpm5"],
            &[r"\p{N}{1,3}", r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
        )
    },
    pre(
        &["default"],
        &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    ),
];

impl PreTokenizer {
    /// llama.cpp's pre-tokenizer for `tokenizer.ggml.pre = name`.
    pub(super) fn named(name: &str) -> Option<Self> {
        PRE_TOKENIZERS.iter().find(|p| p.names.contains(&name)).copied()
    }

    /// Every name [`Self::named`] knows, for error messages.
    pub(super) fn known_names() -> Vec<&'static str> {
        PRE_TOKENIZERS.iter().flat_map(|p| p.names.iter().copied()).collect()
    }
}

/// A byte-level BPE model: the pre-tokenizer's compiled regexes and the merge ranks.
#[derive(Debug)]
pub(super) struct Bpe {
    regexes: Vec<Regex>,
    /// `"left right"` -> rank (the first listing of a pair wins, as in llama.cpp).
    ranks: HashMap<String, u32>,
    ignore_merges: bool,
}

/// A run of a piece: `piece[start..start + len]`; `len == 0` once merged into its left.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge; ordered so the heap pops the lowest rank, then the leftmost.
#[derive(Debug, PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Bpe {
    /// Compiles `pre`'s regexes and reads the merges from `content`.
    pub(super) fn new(content: &Content, pre: PreTokenizer) -> Result<Self, TokenizerError> {
        let regexes = pre
            .regexes
            .iter()
            .map(|r| {
                Regex::new(r).map_err(|e| TokenizerError::Regex {
                    pattern: (*r).to_owned(),
                    message: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let merges = array(content, MERGES_KEY)?;
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            let merge = merge
                .to_string()
                .map_err(|_| bad(MERGES_KEY, "holds a non-string"))?;
            // llama.cpp splits at the first space after the first byte.
            let at = merge.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1);
            let Some(at) = at else {
                return Err(bad(MERGES_KEY, &format!("holds `{merge}`, not `left right`")));
            };
            let key = format!("{} {}", &merge[..at], &merge[at + 1..]);
            let rank = u32::try_from(rank).map_err(|_| bad(MERGES_KEY, "is too long"))?;
            ranks.entry(key).or_insert(rank);
        }
        Ok(Self {
            regexes,
            ranks,
            ignore_merges: pre.ignore_merges,
        })
    }

    /// Appends the ids of `text` (a fragment between special tokens) to `out`.
    pub(super) fn encode(
        &self,
        ids: &HashMap<String, u32>,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        for piece in self.split(text)? {
            let mapped: String = piece.bytes().map(|b| byte_map().to_char[b as usize]).collect();
            self.merge(ids, &mapped, out);
        }
        Ok(())
    }

    /// The pre-tokenizer's pieces of `text`.
    fn split<'t>(&self, text: &'t str) -> Result<Vec<&'t str>, TokenizerError> {
        let mut pieces = vec![text];
        for regex in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut at = 0;
                for m in regex.find_iter(piece) {
                    let m = m.map_err(|e| TokenizerError::Regex {
                        pattern: regex.as_str().to_owned(),
                        message: e.to_string(),
                    })?;
                    if m.start() == m.end() {
                        continue;
                    }
                    if m.start() > at {
                        next.push(&piece[at..m.start()]);
                    }
                    next.push(m.as_str());
                    at = m.end();
                }
                if at < piece.len() {
                    next.push(&piece[at..]);
                }
            }
            pieces = next;
        }
        Ok(pieces)
    }

    /// BPE-merges one byte-mapped piece and appends its ids.
    fn merge(&self, ids: &HashMap<String, u32>, word: &str, out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(&id) = ids.get(word) {
                out.push(id);
                return;
            }
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
        for (start, c) in word.char_indices() {
            let i = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: (start + c.len_utf8() < word.len()).then_some(i + 1),
            });
        }
        let mut key = String::new();
        let mut queue = BinaryHeap::new();
        let mut try_add = |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: Option<usize>, right: Option<usize>| {
            let (Some(left), Some(right)) = (left, right) else {
                return;
            };
            let (l, r) = (symbols[left], symbols[right]);
            key.clear();
            key.push_str(&word[l.start..l.start + l.len]);
            key.push(' ');
            key.push_str(&word[r.start..r.start + r.len]);
            if let Some(&rank) = self.ranks.get(key.as_str()) {
                queue.push(Bigram {
                    rank,
                    left,
                    right,
                    len: l.len + r.len,
                });
            }
        };
        for i in 1..symbols.len() {
            try_add(&mut queue, &symbols, Some(i - 1), Some(i));
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
            if l.len == 0 || r.len == 0 || l.next != Some(bigram.right) || l.len + r.len != bigram.len {
                continue;
            }
            symbols[bigram.left].len += r.len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(bigram.left);
            }
            let left = symbols[bigram.left];
            try_add(&mut queue, &symbols, left.prev, Some(bigram.left));
            try_add(&mut queue, &symbols, Some(bigram.left), left.next);
        }
        for s in symbols.iter().filter(|s| s.len > 0) {
            let piece = &word[s.start..s.start + s.len];
            match ids.get(piece) {
                Some(&id) => out.push(id),
                // llama.cpp looks up each byte of the mapped text as a one-byte token and
                // drops those that are not one.
                None => out.extend(piece.bytes().filter_map(|b| {
                    std::str::from_utf8(&[b]).ok().and_then(|s| ids.get(s).copied())
                })),
            }
        }
    }
}

/// GPT-2's byte <-> printable character table.
struct ByteMap {
    to_char: [char; 256],
    to_byte: HashMap<char, u8>,
}

fn byte_map() -> &'static ByteMap {
    static MAP: OnceLock<ByteMap> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut to_char = ['\0'; 256];
        let mut extra = 256u32;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let cp = if printable {
                u32::from(b)
            } else {
                extra += 1;
                extra - 1
            };
            to_char[b as usize] = char::from_u32(cp).unwrap_or('\u{FFFD}');
        }
        let to_byte = to_char.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        ByteMap { to_char, to_byte }
    })
}

/// Appends the bytes a byte-level token text stands for; a character outside GPT-2's table
/// (a malformed vocabulary) is kept as its own UTF-8.
pub(super) fn unmap_bytes(text: &str, out: &mut Vec<u8>) {
    let map = byte_map();
    for c in text.chars() {
        match map.to_byte.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}
