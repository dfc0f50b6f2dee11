//! Every architecture (llama, llama with Llama 3.1's RoPE scaling, qwen2, qwen3, phi3, gpt2)
//! through the same properties, on random-weight checkpoints written by [`RandomModel`] as a
//! Hugging Face folder and a GGUF file of the same weights:
//!
//! - the GGUF and the safetensors of one model give the same logits (names, fused tensors,
//!   llama's q/k permutation and each family's RoPE pairing all agree);
//! - a decoding row is bitwise the same alone and in a batch, on every weight format;
//! - chunked prefill gives the whole prefill's logits;
//! - the device code path (on the CPU) gives the CPU path's logits;
//! - the engine's seeded sampling and scores do not depend on the batch or the chunking;
//! - qwen2, qwen3 and phi3 match candle-transformers' implementations of them, and GPT-2 a
//!   plain f64 implementation written here from its definition;
//! - what genq does not know is refused at load, naming it.

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::{job, max_abs_diff, run_to_end};
use crate::engine::llama::arch::{Arch, HfConfig};
use crate::engine::llama::backend::{Backend, SeqCache, StepInput};
use crate::engine::llama::device::DeviceModel;
use crate::engine::llama::model::{KvCache, LlamaModel, SeqInput};
use crate::engine::llama::synth::RandomModel;
use crate::engine::llama::{LlamaEngine, LlamaSettings, WeightFormat};
use crate::engine::Engine;

const ARCHS: [Arch; 5] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Phi3, Arch::Gpt2];
const FORMATS: [WeightFormat; 4] = [
    WeightFormat::Native,
    WeightFormat::Q8_0,
    WeightFormat::F32,
    WeightFormat::Packed,
];

/// Every random model: each architecture, plus a llama with Llama 3.1's RoPE scaling.
fn models() -> Vec<(String, RandomModel)> {
    let mut v: Vec<(String, RandomModel)> = ARCHS
        .iter()
        .map(|&a| (a.name().to_string(), RandomModel::tiny_of(a)))
        .collect();
    let mut llama3 = RandomModel::tiny_of(Arch::Llama);
    llama3.llama3_rope = true;
    llama3.tied = true;
    v.push(("llama3".into(), llama3));
    v
}

/// Writes `m` (HF folder and `model.gguf` with projections in `gguf`) into a fresh folder.
fn write(m: &RandomModel, gguf: GgmlDType) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    m.write_both(dir.path(), DType::F32, Some(gguf)).expect("write model");
    dir
}

fn hf_config(dir: &Path) -> HfConfig {
    let text = std::fs::read_to_string(dir.join("config.json")).expect("config");
    serde_json::from_str(&text).expect("config json")
}

fn cpu_hf(dir: &Path, format: WeightFormat) -> LlamaModel {
    LlamaModel::from_safetensors(&hf_config(dir), &[dir.join("model.safetensors")], format).expect("load safetensors")
}

fn cpu_gguf(dir: &Path, format: WeightFormat) -> LlamaModel {
    let mut file = std::fs::File::open(dir.join("model.gguf")).expect("open gguf");
    let content = gguf_file::Content::read(&mut file).expect("gguf header");
    LlamaModel::from_gguf(&content, &mut file, format).expect("load gguf")
}

/// Every row's logits of `tokens` fed in `chunks`, concatenated (score-style: all rows).
fn all_logits(m: &LlamaModel, tokens: &[u32], chunks: &[usize]) -> Vec<f32> {
    let mut cache = KvCache::new(m.config(), 0);
    let mut at = 0;
    let mut out = Vec::new();
    for &n in chunks {
        let mut inputs = [SeqInput {
            cache: &mut cache,
            tokens: &tokens[at..at + n],
            all_logits: true,
        }];
        out.extend(
            m.forward(&mut inputs)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .expect("forward"),
        );
        at += n;
    }
    out
}

fn scale(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0)
}

const PROMPT: [u32; 11] = [2, 5, 9, 3, 7, 11, 4, 6, 20, 30, 8];

#[test]
fn every_arch_gguf_and_safetensors_of_the_same_weights_give_the_same_logits() {
    for (name, m) in models() {
        let dir = write(&m, GgmlDType::F32);
        let hf = all_logits(&cpu_hf(dir.path(), WeightFormat::F32), &PROMPT, &[PROMPT.len()]);
        let gguf = all_logits(&cpu_gguf(dir.path(), WeightFormat::F32), &PROMPT, &[PROMPT.len()]);
        let diff = max_abs_diff(&hf, &gguf);
        // Same weights, same math: only the order of float operations differs (RoPE pairing).
        assert!(diff < 1e-3 * scale(&hf), "{name}: GGUF and safetensors logits differ by {diff}");
    }
}

#[test]
fn llama3_rope_scaling_changes_the_logits_and_the_gguf_factors_match_the_config() {
    let mut plain = RandomModel::tiny_of(Arch::Llama);
    plain.tied = true;
    let mut scaled = plain.clone();
    scaled.llama3_rope = true;
    let dir = write(&scaled, GgmlDType::F32);
    let with = all_logits(&cpu_hf(dir.path(), WeightFormat::F32), &PROMPT, &[PROMPT.len()]);
    let gguf = cpu_gguf(dir.path(), WeightFormat::F32);
    let hf = cpu_hf(dir.path(), WeightFormat::F32);
    let factors = |m: &LlamaModel| m.config().rope.clone().and_then(|r| r.factors).expect("factors");
    assert_eq!(factors(&gguf), factors(&hf));
    // head dim 16, base 1e5, original context 64: high-frequency pairs keep 1, low ones get 8,
    // the ones between are smoothed.
    let f = factors(&hf);
    assert_eq!(f[0], 1.0);
    assert_eq!(f[7], 8.0);
    assert!(f.iter().any(|&x| x > 1.0 && x < 8.0), "{f:?}");
    // The same weights without the scaling give other logits: the factors are applied.
    std::fs::write(
        dir.path().join("config.json"),
        {
            let mut c: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).expect("read")).expect("json");
            c["rope_scaling"] = serde_json::Value::Null;
            c.to_string()
        },
    )
    .expect("rewrite config");
    let without = all_logits(&cpu_hf(dir.path(), WeightFormat::F32), &PROMPT, &[PROMPT.len()]);
    assert!(max_abs_diff(&with, &without) > 1e-2 * scale(&with));
}

#[test]
fn every_arch_decode_row_is_bitwise_the_same_alone_and_in_a_batch() {
    for (name, m) in models() {
        let dir = write(&m, GgmlDType::Q8_0);
        let mut models: Vec<(String, LlamaModel)> = FORMATS
            .iter()
            .map(|&f| (format!("{name} safetensors {f:?}"), cpu_hf(dir.path(), f)))
            .collect();
        models.push((format!("{name} gguf Q8_0 Native"), cpu_gguf(dir.path(), WeightFormat::Native)));
        models.push((format!("{name} gguf Q8_0 Packed"), cpu_gguf(dir.path(), WeightFormat::Packed)));
        for (what, model) in &models {
            let cfg = model.config();
            let decode_row = |others: &[&[u32]]| -> Vec<f32> {
                let mut cache = KvCache::new(cfg, 0);
                let mut inputs = [SeqInput {
                    cache: &mut cache,
                    tokens: &PROMPT[..5],
                    all_logits: false,
                }];
                model.forward(&mut inputs).expect("prefill");
                let mut other_caches: Vec<KvCache> = others.iter().map(|_| KvCache::new(cfg, 0)).collect();
                let mut inputs: Vec<SeqInput<'_>> = other_caches
                    .iter_mut()
                    .zip(others)
                    .map(|(c, t)| SeqInput {
                        cache: c,
                        tokens: t,
                        all_logits: false,
                    })
                    .collect();
                inputs.insert(
                    others.len() / 2,
                    SeqInput {
                        cache: &mut cache,
                        tokens: &[11],
                        all_logits: false,
                    },
                );
                let logits = model.forward(&mut inputs).expect("decode");
                logits.get(others.len() / 2).and_then(|t| t.to_vec1()).expect("row")
            };
            let alone = decode_row(&[]);
            let batched = decode_row(&[&[4], &[8, 9, 10, 11, 12, 13], &[30], &[1, 2]]);
            assert_eq!(alone, batched, "{what}: a decoding row depends on its batch");
            let long_prefill: Vec<u32> = (0..200).map(|i| 2 + (i % 10) as u32).collect();
            assert_eq!(alone, decode_row(&[&long_prefill]), "{what}: a decoding row depends on a long prefill beside it");
        }
    }
}

#[test]
fn every_arch_chunked_prefill_gives_the_whole_prefill_logits() {
    for (name, m) in models() {
        let dir = write(&m, GgmlDType::Q8_0);
        for (what, model) in [
            ("safetensors F32", cpu_hf(dir.path(), WeightFormat::F32)),
            ("safetensors Packed", cpu_hf(dir.path(), WeightFormat::Packed)),
            ("gguf Q8_0 Native", cpu_gguf(dir.path(), WeightFormat::Native)),
        ] {
            let whole = all_logits(&model, &PROMPT, &[PROMPT.len()]);
            for chunks in [&[1usize; 11][..], &[3, 5, 1, 2]] {
                let chunked = all_logits(&model, &PROMPT, chunks);
                let diff = max_abs_diff(&whole, &chunked);
                assert!(diff < 1e-4 * scale(&whole), "{name} {what} {chunks:?}: {diff}");
            }
        }
    }
}

/// One step: the (sequence, tokens fed) pairs, then the sequences dropped after it.
type Step = (Vec<(usize, Vec<u32>)>, Vec<usize>);

/// Logits of a fixed schedule of steps (joins, chunks, a leave and slot reuse) on `model`.
fn schedule_logits(model: &Backend) -> Vec<Vec<f32>> {
    let toks = |start: u32, n: usize| -> Vec<u32> { (0..n as u32).map(|i| (start + i * 7) % 500 + 2).collect() };
    let steps: Vec<Step> = vec![
        (vec![(0, toks(1, 7)), (1, toks(2, 2))], vec![]),
        (vec![(0, vec![5]), (1, toks(3, 3)), (2, toks(4, 5))], vec![]),
        (vec![(0, vec![6]), (1, vec![7]), (2, vec![8])], vec![1]),
        (vec![(3, toks(5, 4)), (0, vec![9]), (2, vec![10])], vec![]),
        (vec![(2, vec![11]), (3, vec![12]), (0, vec![13])], vec![]),
    ];
    let mut caches: Vec<Option<SeqCache>> = (0..4).map(|_| None).collect();
    let mut out = Vec::new();
    for (feeds, drops) in &steps {
        for (i, _) in feeds {
            if caches[*i].is_none() {
                caches[*i] = Some(model.new_cache(16));
            }
        }
        let mut slots: Vec<Option<&mut SeqCache>> = caches.iter_mut().map(Option::as_mut).collect();
        let mut inputs = Vec::new();
        for (i, tokens) in feeds {
            inputs.push(StepInput {
                cache: slots[*i].take().expect("once per step"),
                tokens,
                all_logits: tokens.len() > 1,
            });
        }
        out.push(
            model
                .forward(&mut inputs)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .expect("forward"),
        );
        for &d in drops {
            caches[d] = None;
        }
    }
    out
}

#[test]
fn every_arch_device_path_gives_the_cpu_logits() {
    for (name, m) in models() {
        let dir = write(&m, GgmlDType::F32);
        let cfg = hf_config(dir.path());
        let files = [dir.path().join("model.safetensors")];
        let cpu = Backend::Cpu(cpu_hf(dir.path(), WeightFormat::F32));
        let dev = DeviceModel::from_safetensors(&cfg, &files, WeightFormat::F32, &Device::Cpu).expect("device model");
        assert_eq!(cpu.config(), dev.config(), "{name}");
        let mut file = std::fs::File::open(dir.path().join("model.gguf")).expect("open");
        let content = gguf_file::Content::read(&mut file).expect("gguf");
        let dev_gguf = DeviceModel::from_gguf(&content, &mut file, WeightFormat::F32, &Device::Cpu).expect("device gguf");
        let want = schedule_logits(&cpu);
        for (what, dev) in [("safetensors", dev), ("gguf", dev_gguf)] {
            let got = schedule_logits(&Backend::Device(dev));
            for (step, (a, b)) in want.iter().zip(&got).enumerate() {
                let diff = max_abs_diff(a, b);
                // The CPU path keeps K/V in f16, the device path here in f32.
                assert!(diff < 2e-3 * scale(a), "{name} {what} step {step}: max |logit diff| {diff}");
            }
        }
    }
}

fn engine(dir: &Path, format: WeightFormat) -> LlamaEngine {
    LlamaEngine::load(&LlamaSettings {
        model_path: dir.to_path_buf(),
        model_name: "random".into(),
        device: "cpu".into(),
        weights: format,
    })
    .expect("load engine")
}

#[test]
fn every_arch_engine_samples_and_scores_the_same_alone_and_in_a_batch() {
    let seeded = job(r#"{"id":"s","prompt":"the quick brown fox jumps over","max_new_tokens":12,"min_new_tokens":12,"temperature":0.9,"top_p":0.95,"seed":7}"#);
    let greedy = job(r#"{"id":"g","prompt":"lazy dog and runs far away","max_new_tokens":12,"min_new_tokens":12,"temperature":0}"#);
    let score = job(r#"{"id":"c","kind":"score","prompt":"the quick brown fox jumps over the lazy dog and runs far away"}"#);
    let others = [
        job(r#"{"id":"o1","prompt":"dog dog fox","max_new_tokens":9,"temperature":1.0,"seed":1}"#),
        job(r#"{"id":"o2","prompt":"far away the quick brown fox jumps over the lazy dog","max_new_tokens":5,"temperature":0}"#),
    ];
    for (name, m) in models() {
        let dir = write(&m, GgmlDType::F32);
        for format in [WeightFormat::Packed, WeightFormat::F32] {
            let mut e = engine(dir.path(), format);
            e.encode_and_admit(1, &seeded, 7).expect("admit");
            e.encode_and_admit(2, &greedy, 0).expect("admit");
            e.encode_and_admit(3, &score, 0).expect("admit");
            let alone = run_to_end(&mut e, 512);
            // Others join first; a small budget chunks every prompt differently.
            for (i, o) in others.iter().enumerate() {
                e.encode_and_admit(10 + i as u64, o, i as u64).expect("admit");
            }
            e.encode_and_admit(1, &seeded, 7).expect("admit");
            e.encode_and_admit(2, &greedy, 0).expect("admit");
            e.encode_and_admit(3, &score, 0).expect("admit");
            let batched = run_to_end(&mut e, 3);
            for id in [1, 2] {
                assert_eq!(alone[&id].tokens, 12, "{name} {format:?}");
                assert_eq!(alone[&id].text, batched[&id].text, "{name} {format:?}: sequence {id} depends on its batch");
            }
            let s = |o: &super::Outcome| o.done.clone().and_then(|d| d.score).expect("score").logprobs;
            let (a, b) = (s(&alone[&3]), s(&batched[&3]));
            assert_eq!(a.len(), 12);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-4, "{name} {format:?}: score {x} vs {y}");
            }
        }
    }
}

/// Last-position logits of candle-transformers' `model` on `tokens`.
fn reference_logits(dir: &Path, tokens: &[u32], arch: Arch) -> Vec<f32> {
    use candle_transformers::models::{phi3, qwen2, qwen3};
    let dev = Device::Cpu;
    let text = std::fs::read_to_string(dir.join("config.json")).expect("config");
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &dev).expect("weights");
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let input = Tensor::new(tokens, &dev).and_then(|t| t.unsqueeze(0)).expect("input");
    let logits = match arch {
        Arch::Qwen2 => {
            let cfg: qwen2::Config = serde_json::from_str(&text).expect("qwen2 config");
            qwen2::ModelForCausalLM::new(&cfg, vb).and_then(|mut m| m.forward(&input, 0))
        }
        Arch::Qwen3 => {
            let cfg: qwen3::Config = serde_json::from_str(&text).expect("qwen3 config");
            qwen3::ModelForCausalLM::new(&cfg, vb).and_then(|mut m| m.forward(&input, 0))
        }
        Arch::Phi3 => {
            let cfg: phi3::Config = serde_json::from_str(&text).expect("phi3 config");
            phi3::Model::new(&cfg, vb).and_then(|mut m| m.forward(&input, 0))
        }
        other => panic!("no candle reference for {other:?}"),
    };
    logits.and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).expect("reference logits")
}

#[test]
fn qwen2_qwen3_and_phi3_match_candle_transformers() {
    for arch in [Arch::Qwen2, Arch::Qwen3, Arch::Phi3] {
        let dir = write(&RandomModel::tiny_of(arch), GgmlDType::F32);
        let ours = all_logits(&cpu_hf(dir.path(), WeightFormat::F32), &PROMPT, &[PROMPT.len()]);
        let vocab = ours.len() / PROMPT.len();
        let ours = &ours[ours.len() - vocab..];
        let theirs = reference_logits(dir.path(), &PROMPT, arch);
        let diff = max_abs_diff(ours, &theirs);
        // genq keeps K/V in f16 (candle in f32): the same 5e-3 of the largest logit as the
        // llama check in tests.rs; a wrong bias, norm or split differs by the logits' size.
        assert!(diff < 5e-3 * scale(&theirs), "{arch:?}: logits differ by {diff}");
    }
}

/// GPT-2's forward pass from its definition, in f64, straight from the safetensors names:
/// learned positions, pre-LayerNorm blocks, fused c_attn (`[in, out]`), GELU (tanh).
fn gpt2_reference(dir: &Path, tokens: &[u32]) -> Vec<f32> {
    let w = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).expect("weights");
    let get = |n: &str| -> Vec<f64> {
        w[n].to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).expect(n)
    };
    let cfg = hf_config(dir);
    let (h, heads, layers) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers);
    let ffn = cfg.intermediate_size.unwrap_or(4 * h);
    let d = h / heads;
    let eps = cfg.layer_norm_epsilon.unwrap_or(1e-5);
    let ln = |x: &[f64], g: &[f64], b: &[f64]| -> Vec<f64> {
        let m = x.iter().sum::<f64>() / x.len() as f64;
        let v = x.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / x.len() as f64;
        x.iter().zip(g).zip(b).map(|((a, g), b)| (a - m) / (v + eps).sqrt() * g + b).collect()
    };
    // Conv1D: y = x @ W + b with W `[in, out]`.
    let conv = |x: &[f64], wt: &[f64], b: &[f64], out: usize| -> Vec<f64> {
        (0..out).map(|j| b[j] + x.iter().enumerate().map(|(i, a)| a * wt[i * out + j]).sum::<f64>()).collect()
    };
    let (wte, wpe) = (get("wte.weight"), get("wpe.weight"));
    let n = tokens.len();
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .enumerate()
        .map(|(p, &t)| (0..h).map(|i| wte[t as usize * h + i] + wpe[p * h + i]).collect())
        .collect();
    for l in 0..layers {
        let p = |s: &str| get(&format!("h.{l}.{s}"));
        let (g1, b1, wa, ba, wo, bo) = (p("ln_1.weight"), p("ln_1.bias"), p("attn.c_attn.weight"), p("attn.c_attn.bias"), p("attn.c_proj.weight"), p("attn.c_proj.bias"));
        let (g2, b2, wf, bf, wp, bp) = (p("ln_2.weight"), p("ln_2.bias"), p("mlp.c_fc.weight"), p("mlp.c_fc.bias"), p("mlp.c_proj.weight"), p("mlp.c_proj.bias"));
        let qkv: Vec<Vec<f64>> = x.iter().map(|r| conv(&ln(r, &g1, &b1), &wa, &ba, 3 * h)).collect();
        let mut attn = vec![vec![0f64; h]; n];
        for t in 0..n {
            for hd in 0..heads {
                let q = &qkv[t][hd * d..(hd + 1) * d];
                let scores: Vec<f64> = (0..=t)
                    .map(|j| q.iter().zip(&qkv[j][h + hd * d..h + (hd + 1) * d]).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, p) in e.iter().enumerate() {
                    for i in 0..d {
                        attn[t][hd * d + i] += p / z * qkv[j][2 * h + hd * d + i];
                    }
                }
            }
        }
        for t in 0..n {
            let o = conv(&attn[t], &wo, &bo, h);
            for i in 0..h {
                x[t][i] += o[i];
            }
            let u = conv(&ln(&x[t], &g2, &b2), &wf, &bf, ffn);
            let g: Vec<f64> = u.iter().map(|&v| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())).collect();
            let m = conv(&g, &wp, &bp, h);
            for i in 0..h {
                x[t][i] += m[i];
            }
        }
    }
    let last = ln(&x[n - 1], &get("ln_f.weight"), &get("ln_f.bias"));
    let vocab = cfg.vocab_size;
    (0..vocab).map(|v| (0..h).map(|i| last[i] * wte[v * h + i]).sum::<f64>() as f32).collect()
}

#[test]
fn gpt2_matches_its_definition() {
    let dir = write(&RandomModel::tiny_of(Arch::Gpt2), GgmlDType::F32);
    let ours = all_logits(&cpu_hf(dir.path(), WeightFormat::F32), &PROMPT, &[PROMPT.len()]);
    let theirs = gpt2_reference(dir.path(), &PROMPT);
    let ours = &ours[ours.len() - theirs.len()..];
    let diff = max_abs_diff(ours, &theirs);
    // f16 K/V and GELU through f16 (as ggml) against f64 throughout.
    assert!(diff < 5e-3 * scale(&theirs), "logits differ by {diff}");
}

#[test]
fn unknown_architectures_and_tensors_are_refused_naming_them() {
    let dir = write(&RandomModel::tiny_of(Arch::Qwen2), GgmlDType::F32);
    let path = dir.path().join("config.json");
    let original = std::fs::read_to_string(&path).expect("config");
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c: serde_json::Value = serde_json::from_str(&original).expect("json");
        f(&mut c);
        std::fs::write(&path, c.to_string()).expect("write");
    };
    let err = |format| LlamaEngine::load(&LlamaSettings {
        model_path: dir.path().to_path_buf(),
        model_name: "x".into(),
        device: "cpu".into(),
        weights: format,
    })
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();

    edit(&|c| c["model_type"] = "mamba".into());
    let msg = err(WeightFormat::F32);
    assert!(msg.contains("mamba") && msg.contains("qwen2"), "{msg}");
    edit(&|c| c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
    let msg = err(WeightFormat::F32);
    assert!(msg.contains("yarn"), "{msg}");
    // A qwen2 file read as llama is fine (biases are optional there), but as qwen3 it lacks the
    // q/k norms: the missing tensor is named.
    edit(&|c| c["model_type"] = "qwen3".into());
    let msg = err(WeightFormat::F32);
    assert!(msg.contains("model.layers.0.self_attn.q_norm.weight"), "{msg}");
    // A tensor the architecture does not use (an expert router) is named.
    std::fs::write(&path, &original).expect("restore");
    let st = dir.path().join("model.safetensors");
    let mut t = candle_core::safetensors::load(&st, &Device::Cpu).expect("load");
    t.insert("model.layers.0.mlp.gate.weight".into(), Tensor::zeros((4, 64), DType::F32, &Device::Cpu).expect("zeros"));
    candle_core::safetensors::save(&t, &st).expect("save");
    let msg = err(WeightFormat::Packed);
    assert!(msg.contains("model.layers.0.mlp.gate.weight"), "{msg}");

    // GGUF: the architecture comes from general.architecture.
    let mut file = std::fs::File::open(dir.path().join("model.gguf")).expect("open");
    let mut content = gguf_file::Content::read(&mut file).expect("gguf");
    content
        .metadata
        .insert("general.architecture".into(), gguf_file::Value::String("falcon".into()));
    let msg = LlamaModel::from_gguf(&content, &mut file, WeightFormat::F32).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("falcon"), "{msg}");
}
