//! Random-weight checkpoints of every architecture genq runs, written as a Hugging Face folder
//! (`config.json`, `tokenizer.json`, `model.safetensors`) and, from the same weights, as a GGUF
//! file with llama.cpp's names and conventions (llama's q/k rows permuted for interleaved RoPE,
//! phi3's gate and up fused, GPT-2's `Conv1D` weights transposed back). GPU checks and tests run
//! a model of a real shape with nothing to download. The text they produce is meaningless; the
//! arithmetic is real.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};

use super::arch::Arch;
use super::layout::{file_name, Format, Part};

/// Words of `genq bench engine`'s prompts, so they tokenize to real ids, not `<unk>`.
const BENCH_WORDS: &[&str] = &[
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "far", "away",
];

/// The shape of a random model.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomModel {
    /// The family, and so the tensors and the config written.
    pub arch: Arch,
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head (`hidden / heads` unless set: qwen3's is independent).
    pub head_dim: usize,
    /// Width of the MLP.
    pub ffn: usize,
    /// Vocabulary (a word-level tokenizer: `<unk>`, `</s>`, the bench words, then `w<N>`).
    pub vocab: usize,
    /// Context length.
    pub context_length: usize,
    /// Output head tied to the embedding (SmolLM2 and GPT-2 tie it).
    pub tied: bool,
    /// Llama 3.1's RoPE scaling (`rope_scaling.rope_type = llama3`, `rope_freqs` in GGUF), with
    /// an original context of 64 so that every kind of factor occurs in a small head.
    pub llama3_rope: bool,
    /// Standard deviation of the logits, roughly: large values make greedy choices clear-cut,
    /// so two devices' rounding differences rarely flip one.
    pub logit_scale: f32,
}

/// Tensors by role: (part, layer, bias).
type Tensors = HashMap<(Part, Option<usize>, bool), Tensor>;

/// RoPE base of the random models.
const ROPE_THETA: f64 = 100_000.0;

impl RandomModel {
    /// SmolLM2-135M's shape: 30 layers, hidden 576, 9 heads / 3 KV heads, FFN 1536, vocab 49152.
    pub fn smollm2() -> Self {
        Self {
            arch: Arch::Llama,
            layers: 30,
            hidden: 576,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            ffn: 1536,
            vocab: 49152,
            context_length: 8192,
            tied: true,
            llama3_rope: false,
            logit_scale: 24.0,
        }
    }

    /// A 2-layer llama (hidden 64, 4 heads / 2 KV heads) for equality checks between devices.
    pub fn tiny() -> Self {
        Self {
            arch: Arch::Llama,
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            ffn: 128,
            vocab: 512,
            context_length: 1024,
            tied: false,
            llama3_rope: false,
            logit_scale: 16.0,
        }
    }

    /// A 2-layer model of `arch`: qwen3 with a head dim of 32 (not hidden / heads), GPT-2 with
    /// as many KV heads as heads and a tied head, the others as [`RandomModel::tiny`].
    pub fn tiny_of(arch: Arch) -> Self {
        let mut m = Self::tiny();
        m.arch = arch;
        match arch {
            Arch::Qwen3 => m.head_dim = 32,
            Arch::Gpt2 => {
                m.kv_heads = m.heads;
                m.tied = true;
            }
            _ => {}
        }
        m
    }

    /// Parameters (for bandwidth estimates).
    pub fn parameters(&self) -> usize {
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let attn = self.hidden * (2 * q + 2 * kv);
        let (mlp, norms) = match self.arch {
            Arch::Gpt2 => (2 * self.hidden * self.ffn, 4 * self.hidden),
            _ => (3 * self.hidden * self.ffn, 2 * self.hidden),
        };
        let head = if self.tied { 0 } else { self.vocab * self.hidden };
        let positions = if self.gpt2() { self.context_length * self.hidden } else { 0 };
        self.layers * (attn + mlp + norms) + self.vocab * self.hidden + head + self.hidden + positions
    }

    fn gpt2(&self) -> bool {
        self.arch == Arch::Gpt2
    }

    fn biased_qkv(&self) -> bool {
        matches!(self.arch, Arch::Qwen2 | Arch::Gpt2)
    }

    /// Every tensor with random values, by llama.cpp's role, weights `[out, in]`, in f32.
    fn tensors(&self) -> Result<Tensors> {
        let dev = Device::Cpu;
        // Projections with std 1/sqrt(fan_in) keep activations of order one through every layer.
        let proj = |rows: usize, cols: usize| Tensor::randn(0f32, 1.0 / (cols as f32).sqrt(), (rows, cols), &dev);
        let norm = |n: usize| Tensor::randn(0f32, 0.1, n, &dev)? + 1.0;
        let bias = |n: usize| Tensor::randn(0f32, 0.3, n, &dev);
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let mut t = HashMap::new();
        // The final norm makes rows of unit size, so the head's std sets the logits' spread.
        let head_std = self.logit_scale / (self.hidden as f32).sqrt();
        let embed_std = if self.tied { head_std } else { 1.0 };
        t.insert((Part::TokenEmbd, None, false), Tensor::randn(0f32, embed_std, (self.vocab, self.hidden), &dev)?);
        if !self.tied {
            t.insert((Part::Output, None, false), Tensor::randn(0f32, head_std, (self.vocab, self.hidden), &dev)?);
        }
        if self.gpt2() {
            t.insert((Part::PositionEmbd, None, false), Tensor::randn(0f32, 0.5, (self.context_length, self.hidden), &dev)?);
        }
        t.insert((Part::OutputNorm, None, false), norm(self.hidden)?);
        if self.gpt2() {
            t.insert((Part::OutputNorm, None, true), bias(self.hidden)?);
        }
        for i in 0..self.layers {
            let l = Some(i);
            for p in [Part::AttnNorm, Part::FfnNorm] {
                t.insert((p, l, false), norm(self.hidden)?);
                if self.gpt2() {
                    t.insert((p, l, true), bias(self.hidden)?);
                }
            }
            match self.arch {
                Arch::Phi3 | Arch::Gpt2 => {
                    t.insert((Part::AttnQkv, l, false), proj(q + 2 * kv, self.hidden)?);
                    if self.biased_qkv() {
                        t.insert((Part::AttnQkv, l, true), bias(q + 2 * kv)?);
                    }
                }
                _ => {
                    for (p, rows) in [(Part::AttnQ, q), (Part::AttnK, kv), (Part::AttnV, kv)] {
                        t.insert((p, l, false), proj(rows, self.hidden)?);
                        if self.biased_qkv() {
                            t.insert((p, l, true), bias(rows)?);
                        }
                    }
                }
            }
            if self.arch == Arch::Qwen3 {
                t.insert((Part::AttnQNorm, l, false), norm(self.head_dim)?);
                t.insert((Part::AttnKNorm, l, false), norm(self.head_dim)?);
            }
            t.insert((Part::AttnOutput, l, false), proj(self.hidden, q)?);
            match self.arch {
                Arch::Gpt2 => {
                    t.insert((Part::FfnUp, l, false), proj(self.ffn, self.hidden)?);
                    t.insert((Part::FfnUp, l, true), bias(self.ffn)?);
                    t.insert((Part::AttnOutput, l, true), bias(self.hidden)?);
                    t.insert((Part::FfnDown, l, true), bias(self.hidden)?);
                }
                Arch::Phi3 => {
                    t.insert((Part::FfnUp, l, false), proj(2 * self.ffn, self.hidden)?);
                }
                _ => {
                    t.insert((Part::FfnGate, l, false), proj(self.ffn, self.hidden)?);
                    t.insert((Part::FfnUp, l, false), proj(self.ffn, self.hidden)?);
                }
            }
            t.insert((Part::FfnDown, l, false), proj(self.hidden, self.ffn)?);
        }
        Ok(t)
    }

    fn model_type(&self) -> &'static str {
        self.arch.name()
    }

    /// `config.json` of the Hugging Face folder.
    fn config_json(&self, dtype: DType) -> serde_json::Value {
        let dtype = format!("{dtype:?}").to_lowercase();
        if self.gpt2() {
            return serde_json::json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "n_embd": self.hidden,
                "n_layer": self.layers,
                "n_head": self.heads,
                "n_positions": self.context_length,
                "n_ctx": self.context_length,
                "n_inner": self.ffn,
                "layer_norm_epsilon": 1e-5,
                "activation_function": "gelu_new",
                "vocab_size": self.vocab,
                "bos_token_id": 0,
                "eos_token_id": 1,
                "tie_word_embeddings": true,
                "torch_dtype": dtype,
            });
        }
        let class = match self.arch {
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Phi3 => "Phi3ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let mut c = serde_json::json!({
            "architectures": [class],
            "model_type": self.model_type(),
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": ROPE_THETA,
            "max_position_embeddings": self.context_length,
            "sliding_window": self.context_length,
            "max_window_layers": self.layers,
            "use_sliding_window": false,
            "attention_bias": self.biased_qkv(),
            "vocab_size": self.vocab,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "tie_word_embeddings": self.tied,
            "torch_dtype": dtype,
        });
        if self.llama3_rope {
            c["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            });
        }
        c
    }

    /// Writes the Hugging Face folder into `dir` with weights in `dtype` (f32, bf16 or f16).
    pub fn write(&self, dir: &Path, dtype: DType) -> Result<()> {
        self.write_both(dir, dtype, None)
    }

    /// Writes the Hugging Face folder into `dir` and, from the same weights, `dir/model.gguf`
    /// with projections in `gguf_type` (norms, biases and RoPE factors in F32).
    pub fn write_both(&self, dir: &Path, dtype: DType, gguf_type: Option<GgmlDType>) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        self.write_tokenizer(dir)?;
        std::fs::write(dir.join("config.json"), self.config_json(dtype).to_string())?;
        let tensors = self.tensors()?;
        let mut hf: HashMap<String, Tensor> = HashMap::new();
        for (&(part, layer, bias), t) in &tensors {
            let Some((name, transposed)) = file_name(self.arch, Format::Hf, part, layer, bias) else {
                candle_core::bail!("synth: {part:?} has no Hugging Face name for {:?}", self.arch);
            };
            let t = if transposed { t.t()?.contiguous()? } else { t.clone() };
            hf.insert(name, t.to_dtype(dtype)?);
        }
        candle_core::safetensors::save(&hf, dir.join("model.safetensors"))?;
        if let Some(q) = gguf_type {
            self.write_gguf(&dir.join("model.gguf"), &tensors, q)?;
        }
        Ok(())
    }

    /// The GGUF file of `tensors`: llama.cpp's names and metadata keys.
    fn write_gguf(
        &self,
        path: &Path,
        tensors: &Tensors,
        qtype: GgmlDType,
    ) -> Result<()> {
        use gguf_file::Value as V;
        let a = self.arch.name();
        let key = |k: &str| format!("{a}.{k}");
        let u32v = |n: usize| V::U32(n as u32);
        let mut md: Vec<(String, V)> = vec![
            ("general.architecture".into(), V::String(a.into())),
            (key("context_length"), u32v(self.context_length)),
            (key("embedding_length"), u32v(self.hidden)),
            (key("block_count"), u32v(self.layers)),
            (key("feed_forward_length"), u32v(self.ffn)),
            (key("attention.head_count"), u32v(self.heads)),
        ];
        if self.gpt2() {
            md.push((key("attention.layer_norm_epsilon"), V::F32(1e-5)));
        } else {
            md.push((key("attention.head_count_kv"), u32v(self.kv_heads)));
            md.push((key("attention.layer_norm_rms_epsilon"), V::F32(1e-5)));
            md.push((key("rope.freq_base"), V::F32(ROPE_THETA as f32)));
            md.push((key("rope.dimension_count"), u32v(self.head_dim)));
            if self.head_dim * self.heads != self.hidden {
                md.push((key("attention.key_length"), u32v(self.head_dim)));
                md.push((key("attention.value_length"), u32v(self.head_dim)));
            }
        }
        let mut q: Vec<(String, QTensor)> = Vec::new();
        for (&(part, layer, bias), t) in tensors {
            let Some((name, _)) = file_name(self.arch, Format::Gguf, part, layer, bias) else {
                continue;
            };
            // llama.cpp's converter permutes llama's q/k rows so that interleaved RoPE pairs
            // the dimensions Hugging Face's rotate-halves pairs.
            let t = match part {
                Part::AttnQ if self.arch == Arch::Llama => permute(t, self.heads)?,
                Part::AttnK if self.arch == Arch::Llama => permute(t, self.kv_heads)?,
                _ => t.clone(),
            };
            let matrix = t.rank() == 2 && !matches!(part, Part::TokenEmbd | Part::PositionEmbd);
            let ty = if matrix && t.dim(1)? % qtype.block_size() == 0 { qtype } else { GgmlDType::F32 };
            q.push((name, QTensor::quantize(&t, ty)?));
        }
        if self.llama3_rope {
            let cfg = super::arch::ModelConfig::from_hf(&serde_json::from_value(self.config_json(DType::F32)).map_err(candle_core::Error::wrap)?)?;
            if let Some(f) = cfg.rope.and_then(|r| r.factors) {
                let n = f.len();
                q.push(("rope_freqs.weight".into(), QTensor::quantize(&Tensor::from_vec(f, n, &Device::Cpu)?, GgmlDType::F32)?));
            }
        }
        q.sort_by(|x, y| x.0.cmp(&y.0));
        let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut f = std::fs::File::create(path)?;
        gguf_file::write(&mut f, &md_refs, &t_refs)
    }

    /// A word-level tokenizer over `vocab` words, split on whitespace.
    fn write_tokenizer(&self, dir: &Path) -> Result<()> {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::Whitespace;

        let mut words: Vec<String> = ["<unk>", "</s>"]
            .iter()
            .chain(BENCH_WORDS)
            .map(|w| w.to_string())
            .collect();
        let fixed = words.len();
        words.extend((fixed..self.vocab).map(|i| format!("w{i}")));
        words.truncate(self.vocab);
        let vocab = words
            .into_iter()
            .enumerate()
            .map(|(i, w)| (w, i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("<unk>".into())
            .build()
            .map_err(|e| candle_core::Error::Msg(format!("tokenizer: {e}")))?;
        let mut tok = tokenizers::Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(Whitespace {}));
        tok.save(dir.join("tokenizer.json"), false)
            .map_err(|e| candle_core::Error::Msg(format!("tokenizer: {e}")))
    }
}

/// llama.cpp's converter's q/k permutation: within each head, rows `(pair, half)` become
/// `(half, pair)`, so that GGUF's interleaved RoPE rotates what HF's halves RoPE rotates.
fn permute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}
