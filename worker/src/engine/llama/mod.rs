//! The candle engine for Llama-family models: [`LlamaEngine`] loads a GGUF file or a Hugging Face
//! safetensors folder and runs continuous batching on the CPU or a GPU, one packed forward per step.
//!
//! - [`arch`]: the architectures (llama, qwen2, qwen3, phi3, gpt2) and what varies between them.
//! - [`layout`]: where each tensor lives in a GGUF or Hugging Face checkpoint, read into one
//!   description the CPU and device models both build from.
//! - [`model`]: the CPU model and its packed forward pass.
//! - [`linear`]: CPU projections (formats, fusing, biases) and a batch-invariant matmul.
//! - [`attention`]: the CPU path's per-sequence KV cache and attention.
//! - [`packed`]: genq's own quantized matmul (4/8-bit weights; AMX, AVX-512 VNNI, AVX-VNNI or AVX2), the CPU default.
//! - [`backend`]: the CPU/device switch (`worker.device`) the engine talks to.
//! - [`device`]: the device path (slot-pool KV cache, batched attention).
//! - [`synth`]: random-weight checkpoints of every architecture (GPU checks and tests need no
//!   download).
//! - [`sampler`]: per-sequence sampling with a seeded RNG.
//! - [`detok`]: streaming detokenization that never splits a character.
//! - [`llamacpp_src`]: where the tests find llama.cpp's sources.
//! - [`gguf_types`]: the tensor types of a GGUF file, checked before loading.
//! - [`tokenizer`]: tokenizers from GGUF metadata or `tokenizer.json`, special token ids.
//! - [`chat`]: chat templates.
//! - [`prompt`]: the prompt encoder (template and tokenizer), run before admission.
//! - [`samples`]: jobs with several samples (`n`), which share one prefill.
//! - [`prefix`]: the CPU path's prefix cache (prompt blocks computed once, reused by later jobs).
//! - [`constraint`]: constrained decoding (a job's `format`: JSON Schema, regex, Lark grammar).
//!
//! This module owns the sequences' life: admission (context checks), the
//! step plan (prefill chunks under the token budget plus one token per decoding sequence),
//! sampling, stops and scoring. The scheduler decides which jobs are admitted and when.

pub mod arch;
mod attention;
pub mod chat;
mod constraint;
pub mod detok;
pub(crate) mod gguf_types;
pub mod backend;
pub mod device;
pub mod llamacpp_src;
mod layout;
mod linear;
mod logprobs;
pub mod model;
pub(crate) mod packed;
pub mod prefix;
mod prompt;
pub(crate) mod sampler;
mod samples;
pub mod synth;
#[cfg(test)]
mod tests;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use genq_shared::job::JobKind;
use genq_shared::{FinishReason, ValidJob};
use rayon::prelude::*;

use self::chat::ChatTemplate;
use self::constraint::{Constraint, Grammars};
use self::detok::Detokenizer;
pub use self::model::WeightFormat;
use self::backend::{Backend, DeviceChoice, SeqCache, StepInput};
use self::model::HfConfig;
use self::prompt::LlamaPrompts;
use self::prefix::{block_keys, PrefixCache, BLOCK_TOKENS};
use self::sampler::Sampler;
use self::samples::Samples;
use self::tokenizer::hf::{json_ids, token_text};
use self::tokenizer::{SpecialIds, Tokenizer};
use super::stops::StopMatcher;
use super::{
    check_score_length, input_field, AdmitError, Admitted, Engine, EngineError, EngineInfo,
    Logprobs, PrefixStats, PromptEncoder, Score, SeqDone, SeqId, SeqUpdate, StepLimits,
};
use self::logprobs::{log_prob, token_logprob, TokenTexts};
use genq_shared::result::TokenLogprob;

/// Tokens a sequence may not draw now: EOS and end-of-turn tokens until `min_new_tokens` exist.
fn banned(special: &SpecialIds, seq: &Sequence) -> Vec<u32> {
    if seq.generated < seq.min_new {
        std::iter::once(special.eos).chain(special.extra_stops.iter().copied()).collect()
    } else {
        Vec::new()
    }
}

/// How one sequence of a step uses the step's logits: its rows start at `first_row` (one per
/// fed token when `all_rows`, else one), it fed `tokens`, and a token is sampled from its last
/// row, `sample_row`, when `samples`.
struct RowUse {
    id: SeqId,
    tokens: usize,
    first_row: usize,
    all_rows: bool,
    sample_row: usize,
    samples: bool,
}

/// What to load and how.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaSettings {
    /// A `.gguf` file, or a folder with `config.json`, `tokenizer.json` and `*.safetensors`.
    pub model_path: PathBuf,
    /// The name jobs route to (`smollm2-135m-instruct`).
    pub model_name: String,
    /// `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
    pub device: String,
    /// How projection weights are held in memory.
    pub weights: WeightFormat,
}

/// The model could not be loaded; the worker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The model file or folder (or a file it needs) is not there.
    #[error("model not found at {}: run scripts/fetch-model.sh", path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// A device this build cannot use (the message says why: unknown, or no `cuda` feature).
    #[error("{0}")]
    Device(String),
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The weights or the GGUF header are unusable.
    #[error("loading model weights from {}: {source}", path.display())]
    Weights {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: candle_core::Error,
    },
    /// `config.json` or `tokenizer_config.json` is unusable.
    #[error("reading {}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer could not be built.
    #[error("loading the tokenizer: {0}")]
    Tokenizer(#[from] tokenizer::TokenizerError),
    /// The GGUF holds a tensor of a type genq does not load (the error names the tensor).
    #[error("{}: {source}", path.display())]
    TensorType {
        /// The file.
        path: PathBuf,
        /// The tensor and its type.
        source: gguf_types::GgufTypeError,
    },
    /// The model's chat template could not be compiled.
    #[error("compiling the chat template: {0}")]
    ChatTemplate(String),
}

/// One admitted job.
struct Sequence {
    kind: JobKind,
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Another sample of a job, waiting for the job's own sequence to prefill the prompt (it
    /// then starts from a copy of that cache); not stepped meanwhile.
    parked: bool,
    /// The prefix cache's keys of the prompt's whole blocks.
    block_keys: Vec<u64>,
    /// Prompt blocks already offered to the prefix cache.
    offered_blocks: usize,
    cache: SeqCache,
    /// The last sampled token, fed at the next step.
    pending: Option<u32>,
    generated: usize,
    max_new: usize,
    min_new: usize,
    sampler: Sampler,
    detok: Detokenizer,
    stops: StopMatcher,
    /// Score jobs: log-probs gathered so far.
    logprobs: Vec<f64>,
    /// Alternatives per generated token's log-prob, when the job asked (`logprobs`).
    top_logprobs: Option<usize>,
    /// Alternatives per prompt token's log-prob, when the job asked (`prompt_logprobs`).
    prompt_top_logprobs: Option<usize>,
    /// Log-probs of the tokens generated so far (with `top_logprobs`).
    generated_logprobs: Vec<TokenLogprob>,
    /// Log-probs of the prompt tokens prefilled so far (with `prompt_top_logprobs`).
    prompt_logprobs: Vec<TokenLogprob>,
    /// The job's output format, where it has one.
    constraint: Option<Constraint>,
}

impl Sequence {
    /// Whether a prefill step needs the logits of every fed token, not just the last.
    fn reads_prompt_rows(&self) -> bool {
        self.kind == JobKind::Score || self.prompt_top_logprobs.is_some()
    }

    /// The log-probs asked for, taken out of the sequence when it finishes.
    fn take_logprobs(&mut self) -> Logprobs {
        Logprobs {
            prompt: self.prompt_top_logprobs.map(|_| std::mem::take(&mut self.prompt_logprobs)),
            generated: self.top_logprobs.map(|_| std::mem::take(&mut self.generated_logprobs)),
        }
    }
}

/// The candle Llama engine. Runs on one thread; every sequence owns its cache and sampler.
pub struct LlamaEngine {
    info: EngineInfo,
    model: Backend,
    prompts: Arc<LlamaPrompts>,
    /// How log-prob entries spell their tokens.
    token_texts: TokenTexts,
    /// Every sequence: the jobs' own and the other samples of jobs with several.
    seqs: BTreeMap<SeqId, Sequence>,
    /// Jobs with several samples.
    samples: Samples,
    /// Prompt blocks computed before (CPU path; none when off).
    prefix: Option<PrefixCache>,
    /// Compiles jobs' output formats against the vocabulary.
    grammars: Grammars,
}

fn weights_err(path: &Path) -> impl FnOnce(candle_core::Error) -> LoadError + '_ {
    move |source| LoadError::Weights {
        path: path.to_owned(),
        source,
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| LoadError::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl LlamaEngine {
    /// Loads the model, its tokenizer and chat template.
    pub fn load(settings: &LlamaSettings) -> Result<Self, LoadError> {
        let device = DeviceChoice::parse(&settings.device).map_err(LoadError::Device)?;
        let path = &settings.model_path;
        if !path.exists() {
            return Err(LoadError::NotFound { path: path.clone() });
        }
        let (model, tokenizer, special, template) = if path.is_dir() {
            Self::load_safetensors(path, settings.weights, device)?
        } else {
            Self::load_gguf(path, settings.weights, device)?
        };
        let info = EngineInfo {
            model: settings.model_name.clone(),
            device: device.label(),
            kernel: match (device, settings.weights) {
                (DeviceChoice::Cpu, WeightFormat::Packed) => packed::Kernel::active().name().to_string(),
                _ => "candle".to_string(),
            },
            context_length: model.config().context_length,
        };
        tracing::info!(
            model = %settings.model_name,
            path = %path.display(),
            device = %info.device,
            weights = ?settings.weights,
            kernel = %info.kernel,
            layers = model.config().layers,
            context_length = info.context_length,
            "llama engine loaded"
        );
        let grammars = Grammars::new(&tokenizer, &special, model.config().vocab);
        Ok(Self {
            info,
            grammars,
            token_texts: TokenTexts::new(&tokenizer),
            prompts: Arc::new(LlamaPrompts {
                tokenizer,
                special,
                template,
                vocab: model.config().vocab,
            }),
            model,
            seqs: BTreeMap::new(),
            samples: Samples::default(),
            prefix: None,
        })
    }

    fn load_gguf(
        path: &Path,
        format: WeightFormat,
        device: DeviceChoice,
    ) -> Result<(Backend, Tokenizer, SpecialIds, ChatTemplate), LoadError> {
        let mut file = File::open(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        gguf_types::check(&mut file).map_err(|source| LoadError::TensorType {
            path: path.to_owned(),
            source,
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(weights_err(path))?;
        let tokenizer = tokenizer::tokenizer_from_gguf(&content)?;
        let special = tokenizer::special_ids(&tokenizer);
        let template = match chat::chat_template_from_gguf(&content, &tokenizer) {
            Some(t) => t.map_err(|e| LoadError::ChatTemplate(e.to_string()))?,
            None => ChatTemplate::chatml(),
        };
        let model = Backend::from_gguf(&content, &mut file, format, device)
            .map_err(weights_err(path))?;
        Ok((model, tokenizer, special, template))
    }

    fn load_safetensors(
        dir: &Path,
        format: WeightFormat,
        device: DeviceChoice,
    ) -> Result<(Backend, Tokenizer, SpecialIds, ChatTemplate), LoadError> {
        let need = |name: &str| {
            let p = dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(LoadError::NotFound { path: p })
            }
        };
        let config_path = need("config.json")?;
        let config_json = read_json(&config_path)?;
        let config: HfConfig =
            serde_json::from_value(config_json.clone()).map_err(|e| LoadError::Config {
                path: config_path.clone(),
                message: e.to_string(),
            })?;
        let tokenizer = tokenizer::tokenizer_from_file(&need("tokenizer.json")?)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| LoadError::Io {
                path: dir.to_owned(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(LoadError::NotFound {
                path: dir.join("*.safetensors"),
            });
        }

        // Special ids: config.json, then tokenizer_config.json for BOS and the template.
        let tok_config_path = dir.join("tokenizer_config.json");
        let tok_config = if tok_config_path.exists() {
            Some(read_json(&tok_config_path)?)
        } else {
            None
        };
        let special = tokenizer::hf::special_ids(&config_json, tok_config.as_ref(), &tokenizer);
        let template = match tok_config
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(|v| v.as_str())
        {
            Some(src) => {
                let name = |id: Option<u32>| {
                    id.and_then(|id| tokenizer.id_to_token(id))
                        .unwrap_or_default()
                };
                // The strings the template sees are tokenizer_config.json's, as transformers
                // passes them (Llama 3.1 Instruct: eos_token `<|eot_id|>`, where config.json's
                // first eos id is `<|end_of_text|>`); the ids' names when it has none.
                let bos_name = token_text(tok_config.as_ref(), "bos_token").unwrap_or_else(|| {
                    name(json_ids(config_json.get("bos_token_id")).first().copied())
                });
                let eos_name = token_text(tok_config.as_ref(), "eos_token")
                    .unwrap_or_else(|| name(Some(special.eos)));
                ChatTemplate::new(src.to_string(), bos_name, eos_name)
                    .map_err(|e| LoadError::ChatTemplate(e.to_string()))?
            }
            None => ChatTemplate::chatml(),
        };
        let model = Backend::from_safetensors(&config, &files, format, device)
            .map_err(weights_err(dir))?;
        Ok((model, tokenizer, special, template))
    }

    /// The CPU model, for tests of its packed forward (panics on the device path).
    #[cfg(test)]
    fn cpu_model(&self) -> &self::model::LlamaModel {
        match &self.model {
            Backend::Cpu(m) => m,
            Backend::Device(_) => panic!("not the CPU model"),
        }
    }

    /// Keeps up to `bytes` of prompt blocks' keys and values for later jobs that start with the
    /// same tokens (`worker.prefix_cache_mib`; 0 turns it off): f16 rows in memory on the CPU
    /// path, tensors in the KV pool's dtype on a device.
    pub fn with_prefix_cache(mut self, bytes: usize) -> Self {
        let cfg = self.model.config();
        let row = cfg.kv_heads * cfg.head_dim;
        let value_bytes = match &self.model {
            Backend::Cpu(_) => std::mem::size_of::<half::f16>(),
            Backend::Device(m) => m.dtype().size_in_bytes(),
        };
        self.prefix = (bytes > 0).then(|| PrefixCache::new(bytes, cfg.layers, row, value_bytes));
        self
    }

    /// A sequence for `job` (one of its samples), drawing with `seed`; `parked` waits for the
    /// job's own sequence to prefill the prompt.
    fn new_sequence(&self, job: &ValidJob, prompt: Vec<u32>, seed: u64, max_new: usize, parked: bool) -> Sequence {
        let mut sampler = Sampler::new(&job.sampling, seed);
        for &t in &prompt {
            sampler.observe(t);
        }
        let positions = match job.kind {
            JobKind::Generate => prompt.len() + max_new.min(256),
            JobKind::Score => prompt.len(),
        };
        Sequence {
            kind: job.kind,
            block_keys: if self.prefix.is_some() { block_keys(&prompt) } else { Vec::new() },
            offered_blocks: 0,
            cache: self.model.new_cache(if parked { 0 } else { positions }),
            detok: Detokenizer::new(&prompt),
            prompt,
            prefilled: 0,
            parked,
            pending: None,
            generated: 0,
            max_new,
            min_new: (job.min_new_tokens as usize).min(max_new),
            sampler,
            stops: StopMatcher::new(job.stop.clone()),
            logprobs: Vec::new(),
            top_logprobs: job.logprobs.map(|k| k as usize),
            prompt_top_logprobs: job.prompt_logprobs.map(|k| k as usize),
            generated_logprobs: Vec::new(),
            prompt_logprobs: Vec::new(),
            constraint: None,
        }
    }

    /// Before a prefilling sequence's next chunk: copies the prompt blocks the prefix cache holds
    /// into its cache. True when it should wait this step instead, its next block being computed
    /// by another sequence (it copies that block next step).
    fn reuse_prefix(prefix: &mut PrefixCache, seq: &mut Sequence, computing: &std::collections::HashSet<u64>) -> bool {
        // Score jobs and prompt log-probs read every prompt row: they compute them all.
        if seq.reads_prompt_rows() {
            return false;
        }
        if seq.cache.len() != seq.prefilled {
            return false;
        }
        seq.prefilled += prefix.extend(&seq.prompt, &seq.block_keys, &mut seq.cache);
        let next = seq.prefilled / BLOCK_TOKENS;
        prefix.keeps_blocks()
            && seq.prefilled.is_multiple_of(BLOCK_TOKENS)
            && (next + 1) * BLOCK_TOKENS < seq.prompt.len()
            && seq.block_keys.get(next).is_some_and(|k| computing.contains(k) && !prefix.holds(*k))
    }

    /// After a forward: the prompt blocks the step's prefilling sequences completed go to the
    /// prefix cache.
    fn offer_prefixes(&mut self, in_step: &[(SeqId, usize)]) {
        let Some(prefix) = self.prefix.as_mut() else { return };
        for (id, _) in in_step {
            let Some(seq) = self.seqs.get_mut(id) else { continue };
            if seq.pending.is_some() || seq.offered_blocks >= seq.block_keys.len() {
                continue;
            }
            seq.offered_blocks = prefix.offer(&seq.prompt, &seq.block_keys, &seq.cache, seq.offered_blocks);
        }
    }

    /// Takes one step's logits (`[rows, vocab]`, rows in `in_step` order): samples decoding
    /// sequences, records prompt progress and scores; returns the updates.
    fn accept_step(&mut self, in_step: Vec<(SeqId, usize)>, logits: &[f32], vocab: usize) -> Result<Vec<SeqUpdate>, EngineError> {
        let uses = self.row_uses(&in_step);
        let picks = self.stateless_picks(&uses, logits, vocab);
        let row = |r: usize| logits.get(r * vocab..(r + 1) * vocab).ok_or_else(|| EngineError("missing logits row".into()));
        let mut updates = Vec::with_capacity(uses.len());
        for (u, pick) in uses.into_iter().zip(picks) {
            let Some(seq) = self.seqs.get_mut(&u.id) else {
                continue;
            };
            let mut prompt_done_row = None;
            let update = if seq.pending.is_some() {
                Self::accept_logits(&self.prompts.tokenizer, &self.token_texts, &self.prompts.special, u.id, seq, row(u.first_row)?, pick)?
            } else {
                let start = seq.prefilled;
                seq.prefilled += u.tokens;
                let prompt_done = seq.prefilled == seq.prompt.len();
                if let (Some(k), 0) = (seq.prompt_top_logprobs, start) {
                    seq.prompt_logprobs.push(token_logprob(&self.prompts.tokenizer, &self.token_texts, None, seq.prompt[0], k));
                }
                if u.all_rows {
                    // Row i scores the prompt token after it; rows in parallel (a long prompt
                    // asking for alternatives would otherwise hold up the step).
                    let (tokenizer, texts, prompt) = (&self.prompts.tokenizer, &self.token_texts, &seq.prompt);
                    let (score, top) = (seq.kind == JobKind::Score, seq.prompt_top_logprobs);
                    let scored: Vec<(Option<f64>, Option<TokenLogprob>)> = (0..u.tokens)
                        .into_par_iter()
                        .filter_map(|i| {
                            let target = *prompt.get(start + i + 1)?;
                            let row = row(u.first_row + i);
                            Some(row.map(|row| (score.then(|| log_prob(row, target)), top.map(|k| token_logprob(tokenizer, texts, Some(row), target, k)))))
                        })
                        .collect::<Result<_, _>>()?;
                    for (lp, entry) in scored {
                        seq.logprobs.extend(lp);
                        seq.prompt_logprobs.extend(entry);
                    }
                }
                match seq.kind {
                    JobKind::Score => {
                        let done = prompt_done.then(|| {
                            let logprobs = std::mem::take(&mut seq.logprobs);
                            let mean = if logprobs.is_empty() {
                                0.0
                            } else {
                                logprobs.iter().sum::<f64>() / logprobs.len() as f64
                            };
                            SeqDone {
                                finish_reason: None,
                                score: Some(Score {
                                    logprobs,
                                    perplexity: (-mean).exp(),
                                }),
                                logprobs: seq.take_logprobs(),
                                samples: Vec::new(),
                                error: None,
                            }
                        });
                        SeqUpdate {
                            id: u.id,
                            text: String::new(),
                            new_tokens: 0,
                            done,
                        }
                    }
                    JobKind::Generate => {
                        let row = row(u.sample_row)?;
                        if u.samples {
                            prompt_done_row = Some(row);
                            Self::accept_logits(&self.prompts.tokenizer, &self.token_texts, &self.prompts.special, u.id, seq, row, pick)?
                        } else {
                            SeqUpdate {
                                id: u.id,
                                text: String::new(),
                                new_tokens: 0,
                                done: None,
                            }
                        }
                    }
                }
            };
            if let Some(row) = prompt_done_row {
                updates.extend(self.start_siblings(u.id, row)?);
            }
            if update.done.is_some() {
                self.seqs.remove(&u.id);
            }
            updates.push(update);
        }
        Ok(self.samples.fold(updates))
    }

    /// Job `id` has just prefilled its prompt, whose last row is `row`: its parked siblings start
    /// from a copy of its cache and draw their first token from the same row.
    fn start_siblings(&mut self, id: SeqId, row: &[f32]) -> Result<Vec<SeqUpdate>, EngineError> {
        let parked: Vec<SeqId> = self.samples.siblings(id).iter().copied().filter(|s| self.seqs.get(s).is_some_and(|q| q.parked)).collect();
        // One copy of the job's cache per parked sibling (none where caches are not copied).
        let Some(mut copies) = parked
            .iter()
            .map(|_| self.seqs.get(&id).and_then(|s| self.model.fork_cache(&s.cache)))
            .collect::<Option<Vec<SeqCache>>>()
        else {
            return Ok(Vec::new());
        };
        let mut updates = Vec::with_capacity(parked.len());
        for sid in parked {
            let Some(sib) = self.seqs.get_mut(&sid) else { continue };
            sib.parked = false;
            sib.cache = copies.pop().expect("one copy per parked sibling");
            sib.prefilled = sib.prompt.len();
            let update = Self::accept_logits(&self.prompts.tokenizer, &self.token_texts, &self.prompts.special, sid, sib, row, None)?;
            if update.done.is_some() {
                self.seqs.remove(&sid);
            }
            updates.push(update);
        }
        Ok(updates)
    }

    /// Where each sequence of the step finds its logits rows (one per fed token for a score job
    /// being prefilled, else one) and whether a token is sampled from its row.
    fn row_uses(&self, in_step: &[(SeqId, usize)]) -> Vec<RowUse> {
        let mut first_row = 0;
        let mut uses = Vec::with_capacity(in_step.len());
        for &(id, tokens) in in_step {
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            let decoding = seq.pending.is_some();
            let all_rows = !decoding && seq.reads_prompt_rows();
            let rows = if all_rows { tokens } else { 1 };
            let samples = decoding || (seq.kind == JobKind::Generate && seq.prefilled + tokens == seq.prompt.len());
            uses.push(RowUse { id, tokens, first_row, all_rows, sample_row: first_row + rows - 1, samples });
            first_row += rows;
        }
        uses
    }

    /// For each of `uses`, the pick its sampler makes without state when it samples
    /// ([`Sampler::stateless_pick`]), found in parallel; `None` where the row is sampled (or
    /// not) in order afterwards.
    fn stateless_picks(&self, uses: &[RowUse], logits: &[f32], vocab: usize) -> Vec<Option<Result<u32, String>>> {
        uses.par_iter()
            .map(|u| {
                let seq = self.seqs.get(&u.id).filter(|_| u.samples)?;
                let row = logits.get(u.sample_row * vocab..(u.sample_row + 1) * vocab)?;
                let banned = banned(&self.prompts.special, seq);
                match &seq.constraint {
                    None => Some(seq.sampler.stateless_pick(row, &banned)?.map_err(|e| e.to_string())),
                    // A greedy pick under a format whose mask the forward's side thread computed.
                    Some(c) => {
                        let mask = c.prepared().filter(|_| seq.sampler.is_stateless())?;
                        // Nothing drawable: sampled in order, which fails the job alone.
                        Some(Ok(constraint::greedy_pick(row, mask, &banned)?))
                    }
                }
            })
            .collect()
    }

    /// Samples from one logits row (or takes `pick`, its stateless choice) and advances the
    /// sequence's text; returns the update.
    fn accept_logits(
        tokenizer: &Tokenizer,
        texts: &TokenTexts,
        special: &SpecialIds,
        id: SeqId,
        seq: &mut Sequence,
        logits: &[f32],
        pick: Option<Result<u32, String>>,
    ) -> Result<SeqUpdate, EngineError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            EngineError(format!("sequence {id}: {what}: {e}"))
        };
        let banned = banned(special, seq);
        // A format that cannot go on fails this job alone (a grammar limit, no token allowed).
        let format_failed = |seq: &mut Sequence, e: String| SeqUpdate {
            id,
            text: String::new(),
            new_tokens: 0,
            done: Some(SeqDone { finish_reason: None, score: None, logprobs: seq.take_logprobs(), samples: Vec::new(), error: Some(format!("`format` {e}")) }),
        };
        let token = match (pick, seq.constraint.as_mut()) {
            (Some(pick), _) => pick.map_err(|e| fail("sampling", &e))?,
            (None, Some(constraint)) => {
                let mut row = logits.to_vec();
                match constraint.allowed() {
                    Ok(mask) => constraint::apply(mask, &mut row),
                    Err(e) => return Ok(format_failed(seq, e)),
                }
                if !row.iter().any(|l| l.is_finite()) {
                    return Ok(format_failed(seq, "allows no token the model can draw here".into()));
                }
                // `min_new_tokens` holds the end off only while the format allows another token.
                let more = row.iter().enumerate().any(|(i, &l)| l.is_finite() && !banned.contains(&(i as u32)));
                seq.sampler.sample(&row, if more { &banned } else { &[] }).map_err(|e| fail("sampling", &e))?
            }
            (None, None) => seq.sampler.sample(logits, &banned).map_err(|e| fail("sampling", &e))?,
        };
        if let Some(constraint) = seq.constraint.as_mut() {
            if let Err(e) = constraint.accept(token) {
                return Ok(format_failed(seq, e));
            }
        }
        seq.sampler.observe(token);
        if let Some(k) = seq.top_logprobs {
            seq.generated_logprobs.push(token_logprob(tokenizer, texts, Some(logits), token, k));
        }
        seq.generated += 1;
        let armed = seq.generated >= seq.min_new;
        let end_token = special.is_stop(token);
        // The format's text is complete and cannot grow: it ends as at an end token.
        let complete = !end_token && seq.constraint.as_ref().is_some_and(Constraint::is_complete);
        let length = seq.generated >= seq.max_new;
        let mut piece = if end_token {
            String::new()
        } else {
            seq.detok
                .push(tokenizer, token)
                .map_err(|e| fail("detokenizing", &e))?
        };
        if end_token || complete || length {
            piece.push_str(
                &seq.detok
                    .flush(tokenizer)
                    .map_err(|e| fail("detokenizing", &e))?,
            );
        }
        let check = seq.stops.push(&piece, armed);
        let mut text = check.emit;
        let reason = if check.stopped {
            Some(FinishReason::Stop)
        } else if end_token || complete || length {
            text.push_str(&seq.stops.flush());
            Some(if end_token || complete {
                FinishReason::Stop
            } else {
                FinishReason::Length
            })
        } else {
            seq.pending = Some(token);
            None
        };
        Ok(SeqUpdate {
            id,
            text,
            new_tokens: 1,
            done: reason.map(|r| SeqDone {
                finish_reason: Some(r),
                score: None,
                logprobs: seq.take_logprobs(),
                samples: Vec::new(),
                error: None,
            }),
        })
    }
}

impl Engine for LlamaEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn encoder(&self) -> Arc<dyn PromptEncoder> {
        self.prompts.clone()
    }

    fn admit(
        &mut self,
        id: SeqId,
        job: &ValidJob,
        prompt: Vec<u32>,
        seed: u64,
    ) -> Result<Admitted, AdmitError> {
        let ctx = self.info.context_length;
        let field = input_field(job);
        check_score_length(job, prompt.len())?;
        if prompt.len() > ctx || (job.kind == JobKind::Generate && prompt.len() >= ctx) {
            return Err(AdmitError {
                field,
                message: format!("has {} tokens, the context length is {ctx}", prompt.len()),
            });
        }
        let max_new = job.new_token_budget(prompt.len());
        if job.kind == JobKind::Generate && prompt.len() + max_new > ctx {
            return Err(AdmitError {
                field: "max_new_tokens",
                message: format!(
                    "({max_new}) plus the prompt's {} tokens exceeds the context length {ctx}",
                    prompt.len()
                ),
            });
        }
        if self.seqs.contains_key(&id) {
            return Err(AdmitError {
                field: "id",
                message: format!("sequence {id} is already running"),
            });
        }
        let prompt_tokens = prompt.len();
        let others = job.n.saturating_sub(1) as usize;
        // One matcher per sample, all compiled before anything is admitted.
        let mut constraints = Vec::with_capacity(others + 1);
        if let Some(format) = &job.format {
            let first = self.grammars.compile(format).map_err(|message| AdmitError { field: "format", message })?;
            constraints.extend((0..others).map(|_| first.deep_clone()));
            constraints.push(first);
        }
        let mut constraint = || constraints.pop();
        // The other samples wait for this one's prefill where caches can be copied.
        let parked = others > 0 && self.model.copies_caches();
        for (i, sid) in self.samples.add(id, others).into_iter().enumerate() {
            let sibling = self.new_sequence(job, prompt.clone(), seed.wrapping_add(i as u64 + 1), max_new, parked);
            self.seqs.insert(sid, Sequence { prompt_top_logprobs: None, constraint: constraint(), ..sibling });
        }
        let first = self.new_sequence(job, prompt, seed, max_new, false);
        self.seqs.insert(id, Sequence { constraint: constraint(), ..first });
        Ok(Admitted { prompt_tokens })
    }

    fn step(&mut self, limits: &StepLimits) -> Result<Vec<SeqUpdate>, EngineError> {
        // Plan: one token for each decoding sequence, prompt chunks (oldest first) under the budget.
        let mut budget = limits.max_prefill_tokens.max(1);
        let mut in_step: Vec<(SeqId, usize)> = Vec::new();
        let mut inputs: Vec<StepInput<'_>> = Vec::new();
        // Prompt blocks being computed this step: a sequence about to compute one of them waits
        // a step and copies it from the prefix cache instead.
        let mut computing: std::collections::HashSet<u64> = std::collections::HashSet::new();
        // Formats of sequences that sample this step: their masks are computed during the forward.
        let mut masks_to_compute: Vec<&mut Constraint> = Vec::new();
        // Oldest job first; a job's other samples right after it (where they prefill on their
        // own, on a device, they must not fall behind every newer job).
        let mut order: Vec<(SeqId, &mut Sequence)> = self.seqs.iter_mut().map(|(&id, s)| (id, s)).collect();
        if !self.samples.is_empty() {
            order.sort_by_key(|(id, _)| (self.samples.job_of(*id), *id));
        }
        for (id, seq) in order {
            if seq.parked {
                continue;
            }
            if let (None, Some(prefix)) = (&seq.pending, self.prefix.as_mut()) {
                if Self::reuse_prefix(prefix, seq, &computing) {
                    continue;
                }
            }
            let tokens: &[u32] = match &seq.pending {
                Some(t) => std::slice::from_ref(t),
                None => {
                    let n = (seq.prompt.len() - seq.prefilled).min(budget);
                    if n == 0 {
                        continue;
                    }
                    budget -= n;
                    let blocks = seq.prefilled / BLOCK_TOKENS..(seq.prefilled + n).div_ceil(BLOCK_TOKENS);
                    computing.extend(blocks.filter_map(|b| seq.block_keys.get(b).copied()));
                    &seq.prompt[seq.prefilled..seq.prefilled + n]
                }
            };
            in_step.push((id, tokens.len()));
            let samples = seq.pending.is_some() || seq.prefilled + tokens.len() == seq.prompt.len();
            let all_logits = seq.pending.is_none() && seq.reads_prompt_rows();
            if let (true, Some(c)) = (samples, seq.constraint.as_mut()) {
                masks_to_compute.push(c);
            }
            inputs.push(StepInput {
                cache: &mut seq.cache,
                tokens,
                all_logits,
            });
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let model = &self.model;
        let logits = if masks_to_compute.is_empty() {
            model.forward(&mut inputs)
        } else {
            // On a thread of their own while the forward runs. A mask that fails here is asked
            // again when its sequence samples, which reports the error.
            std::thread::scope(|scope| {
                scope.spawn(move || masks_to_compute.into_iter().for_each(|c| drop(c.prepare())));
                model.forward(&mut inputs)
            })
        }
        .map_err(|e| EngineError(format!("forward: {e}")))?;
        drop(inputs);
        self.offer_prefixes(&in_step);
        let vocab = self.model.config().vocab;
        model::with_f32(&logits, |logits| self.accept_step(in_step, logits, vocab))
            .map_err(|e| EngineError(format!("reading logits: {e}")))?
    }

    fn release(&mut self, id: SeqId) {
        self.seqs.remove(&id);
        for sibling in self.samples.remove(id) {
            self.seqs.remove(&sibling);
        }
    }

    fn active(&self) -> usize {
        self.seqs.len()
    }

    fn cached_tokens(&self) -> usize {
        self.seqs.values().map(|s| s.cache.len()).sum()
    }

    fn prefix_cache(&self) -> PrefixStats {
        self.prefix.as_ref().map(PrefixCache::stats).unwrap_or_default()
    }
}
