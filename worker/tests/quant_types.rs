//! Every GGUF tensor type genq accepts loads and computes the model its blocks stand for, on the
//! packed CPU path as well as on the f32 one; a file with another type is refused at load, naming
//! the tensor and its type.
//!
//! The test writes a small random-weight llama (2 layers, hidden 256 so that K-quant super-blocks
//! fit) with the default model's real vocabulary and tokenizer metadata, once per type, every
//! matrix in that type (norms stay f32, as llama.cpp's quantizer leaves them). The f32 path
//! dequantizes the file's blocks exactly, so it is the reference for that file; the packed path
//! keeps 4-, 5- and 8-bit blocks exactly and re-quantizes the others to 8 bits, and rounds
//! activations to 8 bits per block, so it must agree closely but not bitwise.
//!
//! Run: `cargo test -p genq-worker --test quant_types -- --nocapture`.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use genq_shared::valid::{validate, Limits};
use genq_shared::{JobKind, JobRequest};
use genq_worker::engine::llama::{LlamaEngine, LlamaSettings, LoadError, WeightFormat};
use genq_worker::engine::{Engine, StepLimits};

const HIDDEN: usize = 256;
const FFN: usize = 512;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;
const PROMPT: &str = "The quick brown fox jumps over the lazy dog, and 12 cats watch it.";

/// Mean and largest absolute difference allowed between the packed and the f32 path's log-probs
/// (nats), with log-probs of about -19 per token on this random model. Measured over the eleven
/// types: mean 0.05-0.09, max 0.12-0.25 (the 8-bit rounding of activations, and of the weights
/// for the types packed re-quantizes). A misread block layout (a swapped nibble, a wrong minimum
/// or high bit) scrambles the model and moves log-probs by whole nats.
const PACKED_MEAN: f64 = 0.15;
const PACKED_MAX: f64 = 0.5;

fn default_model() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "model not found at {}: run scripts/fetch-model.sh", path.display());
    path
}

/// Writes the test model with every matrix in `dtype` to `path`.
fn write_model(path: &Path, dtype: GgmlDType, vocab_source: &gguf_file::Content) {
    let vocab = match vocab_source.metadata.get("tokenizer.ggml.tokens") {
        Some(gguf_file::Value::Array(tokens)) => tokens.len(),
        _ => panic!("the default model has no tokenizer.ggml.tokens"),
    };
    let head_dim = HIDDEN / HEADS;
    let mut meta: Vec<(String, gguf_file::Value)> = vocab_source
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let u32v = |n: usize| gguf_file::Value::U32(n as u32);
    meta.extend([
        ("general.architecture".into(), gguf_file::Value::String("llama".into())),
        ("llama.block_count".into(), u32v(LAYERS)),
        ("llama.embedding_length".into(), u32v(HIDDEN)),
        ("llama.feed_forward_length".into(), u32v(FFN)),
        ("llama.attention.head_count".into(), u32v(HEADS)),
        ("llama.attention.head_count_kv".into(), u32v(KV_HEADS)),
        ("llama.context_length".into(), u32v(512)),
        ("llama.rope.dimension_count".into(), u32v(head_dim)),
        ("llama.rope.freq_base".into(), gguf_file::Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon".into(), gguf_file::Value::F32(1e-5)),
    ]);

    let dev = Device::Cpu;
    let matrix = |rows: usize, cols: usize, std: f64| -> QTensor {
        let t = Tensor::randn(0f32, std as f32, (rows, cols), &dev).expect("randn");
        let t = match dtype {
            GgmlDType::F16 => t.to_dtype(DType::F16).expect("f16"),
            GgmlDType::BF16 => t.to_dtype(DType::BF16).expect("bf16"),
            _ => t,
        };
        QTensor::quantize(&t, dtype).expect("quantize")
    };
    let norm = |n: usize| -> QTensor {
        let t = (Tensor::randn(0f32, 0.1, n, &dev).expect("randn") + 1.0).expect("add");
        QTensor::quantize(&t, GgmlDType::F32).expect("f32")
    };
    let proj = |rows: usize, cols: usize| matrix(rows, cols, 1.0 / (cols as f64).sqrt());
    let mut tensors: Vec<(String, QTensor)> = vec![
        // Tied head: the embedding's spread sets the logits' (about 4 after the final norm).
        ("token_embd.weight".into(), matrix(vocab, HIDDEN, 4.0 / (HIDDEN as f64).sqrt())),
        ("output_norm.weight".into(), norm(HIDDEN)),
    ];
    for i in 0..LAYERS {
        let n = |part: &str| format!("blk.{i}.{part}.weight");
        tensors.extend([
            (n("attn_norm"), norm(HIDDEN)),
            (n("attn_q"), proj(HEADS * head_dim, HIDDEN)),
            (n("attn_k"), proj(KV_HEADS * head_dim, HIDDEN)),
            (n("attn_v"), proj(KV_HEADS * head_dim, HIDDEN)),
            (n("attn_output"), proj(HIDDEN, HEADS * head_dim)),
            (n("ffn_norm"), norm(HIDDEN)),
            (n("ffn_gate"), proj(FFN, HIDDEN)),
            (n("ffn_up"), proj(FFN, HIDDEN)),
            (n("ffn_down"), proj(HIDDEN, FFN)),
        ]);
    }
    let meta: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = File::create(path).expect("create gguf");
    gguf_file::write(&mut file, &meta, &tensors).expect("write gguf");
}

fn settings(path: &Path, weights: WeightFormat) -> LlamaSettings {
    LlamaSettings {
        model_path: path.to_owned(),
        model_name: "quant-test".into(),
        device: "cpu".into(),
        weights,
    }
}

/// Per-token log-probs of [`PROMPT`] as a score job.
fn score(path: &Path, weights: WeightFormat) -> Vec<f64> {
    let mut engine = LlamaEngine::load(&settings(path, weights)).expect("load");
    let req = JobRequest { id: Some("s".into()), kind: JobKind::Score, ..JobRequest::prompt(PROMPT.to_string()) };
    let job = validate(&req, &Limits::default()).expect("valid score job");
    engine.encode_and_admit(0, &job, 0).expect("admit");
    let limits = StepLimits { max_prefill_tokens: 512 };
    for _ in 0..100 {
        for u in engine.step(&limits).expect("step") {
            if let Some(done) = u.done {
                return done.score.expect("a score").logprobs;
            }
        }
    }
    panic!("the score job did not finish");
}

fn differences(a: &[f64], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    (mean, diffs.iter().copied().fold(0.0, f64::max))
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn every_supported_gguf_type_loads_and_agrees_between_paths() {
    let mut src = File::open(default_model()).expect("open default model");
    let vocab_source = gguf_file::Content::read(&mut src).expect("read default model");
    let dir = tempfile::tempdir().expect("tempdir");
    let types = [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];
    println!("{:<6} {:>10} {:>10} {:>12}", "type", "mean diff", "max diff", "mean logprob");
    let mut reference: Option<Vec<f64>> = None;
    let mut failures = Vec::new();
    for dtype in types {
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        write_model(&path, dtype, &vocab_source);
        let f32_path = score(&path, WeightFormat::F32);
        let packed = score(&path, WeightFormat::Packed);
        let (mean, max) = differences(&f32_path, &packed);
        let avg = f32_path.iter().sum::<f64>() / f32_path.len() as f64;
        println!("{:<6} {mean:>10.4} {max:>10.4} {avg:>12.3}", format!("{dtype:?}"));
        assert!(f32_path.iter().all(|l| l.is_finite() && *l <= 0.0), "{dtype:?}: log-probs {f32_path:?}");
        if mean > PACKED_MEAN || max > PACKED_MAX {
            failures.push(format!("{dtype:?}: packed vs f32 log-probs differ by mean {mean:.4} / max {max:.4}"));
        }
        // Every file holds fresh random weights: the log-probs must differ from another type's,
        // or the type's blocks were not what the model ran.
        if let Some(first) = &reference {
            assert_ne!(first, &f32_path, "{dtype:?} scored exactly like the first type");
        } else {
            reference = Some(f32_path);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn a_gguf_with_an_unsupported_type_is_refused_naming_the_tensor() {
    let mut src = File::open(default_model()).expect("open default model");
    let vocab_source = gguf_file::Content::read(&mut src).expect("read default model");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q2k.gguf");
    write_model(&path, GgmlDType::Q2K, &vocab_source);
    let err = match LlamaEngine::load(&settings(&path, WeightFormat::Packed)) {
        Ok(_) => panic!("a Q2_K model loaded"),
        Err(e) => e,
    };
    assert!(matches!(err, LoadError::TensorType { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("`token_embd.weight` has type Q2_K") && msg.contains("Q6_K"), "{msg}");
}
