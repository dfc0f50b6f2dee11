//! Random-weight Llama checkpoints written as a Hugging Face folder (`config.json`,
//! `tokenizer.json`, `model.safetensors`), so GPU checks and tests run a model of a real shape
//! with nothing to download. The text they produce is meaningless; the arithmetic is real.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

/// Words of `genq bench engine`'s prompts, so they tokenize to real ids, not `<unk>`.
const BENCH_WORDS: &[&str] = &[
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "far", "away",
];

/// The shape of a random Llama.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomLlama {
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of the MLP.
    pub ffn: usize,
    /// Vocabulary (a word-level tokenizer: `<unk>`, `</s>`, the bench words, then `w<N>`).
    pub vocab: usize,
    /// Context length.
    pub context_length: usize,
    /// Output head tied to the embedding (SmolLM2 ties it).
    pub tied: bool,
    /// Standard deviation of the logits, roughly: large values make greedy choices clear-cut,
    /// so two devices' rounding differences rarely flip one.
    pub logit_scale: f32,
}

impl RandomLlama {
    /// SmolLM2-135M's shape: 30 layers, hidden 576, 9 heads / 3 KV heads, FFN 1536, vocab 49152.
    pub fn smollm2() -> Self {
        Self {
            layers: 30,
            hidden: 576,
            heads: 9,
            kv_heads: 3,
            ffn: 1536,
            vocab: 49152,
            context_length: 8192,
            tied: true,
            logit_scale: 24.0,
        }
    }

    /// A 2-layer model (hidden 64, 4 heads / 2 KV heads) for equality checks between devices.
    pub fn tiny() -> Self {
        Self {
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            vocab: 512,
            context_length: 1024,
            tied: false,
            logit_scale: 16.0,
        }
    }

    /// Parameters (for bandwidth estimates).
    pub fn parameters(&self) -> usize {
        let d = self.hidden / self.heads;
        let attn = self.hidden * (2 * self.heads * d + 2 * self.kv_heads * d);
        let mlp = 3 * self.hidden * self.ffn;
        let head = if self.tied {
            0
        } else {
            self.vocab * self.hidden
        };
        self.layers * (attn + mlp + 2 * self.hidden) + self.vocab * self.hidden + head + self.hidden
    }

    /// Writes the checkpoint into `dir` with weights in `dtype` (f32, bf16 or f16).
    pub fn write(&self, dir: &Path, dtype: DType) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        self.write_tokenizer(dir)?;
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "max_position_embeddings": self.context_length,
            "vocab_size": self.vocab,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "tie_word_embeddings": self.tied,
            "torch_dtype": format!("{dtype:?}").to_lowercase(),
        });
        std::fs::write(dir.join("config.json"), config.to_string())?;

        let dev = Device::Cpu;
        // Projections with std 1/sqrt(fan_in) keep activations of order one through every layer.
        let proj = |rows: usize, cols: usize| -> Result<Tensor> {
            Tensor::randn(0f32, 1.0 / (cols as f32).sqrt(), (rows, cols), &dev)?.to_dtype(dtype)
        };
        let norm = |n: usize| -> Result<Tensor> {
            (Tensor::randn(0f32, 0.1, n, &dev)? + 1.0)?.to_dtype(dtype)
        };
        let d = self.hidden / self.heads;
        let mut t: HashMap<String, Tensor> = HashMap::new();
        // The final norm makes rows of unit size, so the head's std sets the logits' spread.
        let head_std = self.logit_scale / (self.hidden as f32).sqrt();
        let embed_std = if self.tied { head_std } else { 1.0 };
        t.insert(
            "model.embed_tokens.weight".into(),
            Tensor::randn(0f32, embed_std, (self.vocab, self.hidden), &dev)?.to_dtype(dtype)?,
        );
        if !self.tied {
            t.insert(
                "lm_head.weight".into(),
                Tensor::randn(0f32, head_std, (self.vocab, self.hidden), &dev)?.to_dtype(dtype)?,
            );
        }
        t.insert("model.norm.weight".into(), norm(self.hidden)?);
        for i in 0..self.layers {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            t.insert(p("self_attn.q_proj"), proj(self.heads * d, self.hidden)?);
            t.insert(p("self_attn.k_proj"), proj(self.kv_heads * d, self.hidden)?);
            t.insert(p("self_attn.v_proj"), proj(self.kv_heads * d, self.hidden)?);
            t.insert(p("self_attn.o_proj"), proj(self.hidden, self.heads * d)?);
            t.insert(p("mlp.gate_proj"), proj(self.ffn, self.hidden)?);
            t.insert(p("mlp.up_proj"), proj(self.ffn, self.hidden)?);
            t.insert(p("mlp.down_proj"), proj(self.hidden, self.ffn)?);
            t.insert(p("input_layernorm"), norm(self.hidden)?);
            t.insert(p("post_attention_layernorm"), norm(self.hidden)?);
        }
        candle_core::safetensors::save(&t, dir.join("model.safetensors"))
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
