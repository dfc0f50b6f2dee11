//! Tests of the whole engine: the real SmolLM2 GGUF (skipped with a notice when it is missing)
//! and a tiny random-weight safetensors Llama written to a temporary folder.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use genq_shared::valid::{validate, Limits};
use genq_shared::{FinishReason, JobRequest, ValidJob};

use super::model::{KvCache, SeqInput};
use super::{LlamaEngine, LlamaSettings, WeightFormat};
use crate::engine::{Engine, SeqDone, SeqId, StepLimits};

mod archs;
mod logprobs;
mod prefix;
mod samples;
mod structured;

fn gguf_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The real model in `format` (its tests are ignored without `cfg(genq_model)`).
fn smollm2(format: WeightFormat) -> LlamaEngine {
    let path = gguf_path();
    assert!(
        path.exists(),
        "the default model is missing at {}: run scripts/fetch-model.sh",
        path.display()
    );
    let settings = LlamaSettings {
        model_path: path,
        model_name: "smollm2-135m-instruct".into(),
        device: "cpu".into(),
        weights: format,
    };
    LlamaEngine::load(&settings).expect("load the GGUF")
}

fn job(json: &str) -> ValidJob {
    let req: JobRequest = serde_json::from_str(json).expect("json");
    validate(&req, &Limits::default()).expect("valid")
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    text: String,
    tokens: usize,
    done: Option<SeqDone>,
}

fn run_to_end(engine: &mut LlamaEngine, budget: usize) -> BTreeMap<SeqId, Outcome> {
    let mut out: BTreeMap<SeqId, Outcome> = BTreeMap::new();
    let mut steps = 0;
    while engine.active() > 0 {
        steps += 1;
        assert!(steps < 10_000, "engine does not finish");
        for u in engine
            .step(&StepLimits {
                max_prefill_tokens: budget,
            })
            .expect("step")
        {
            let e = out.entry(u.id).or_default();
            assert!(
                e.done.is_none(),
                "sequence {} reported after it finished",
                u.id
            );
            e.text.push_str(&u.text);
            e.tokens += u.new_tokens;
            if u.done.is_some() {
                e.done = u.done;
            }
        }
    }
    out
}

fn finish(o: &Outcome) -> Option<FinishReason> {
    o.done.as_ref().and_then(|d| d.finish_reason)
}

#[test]
fn llama_engine_is_send() {
    fn send<T: Send>() {}
    send::<LlamaEngine>();
}

#[test]
fn missing_model_names_the_path_and_the_fetch_script() {
    let settings = LlamaSettings {
        model_path: "/nonexistent/model.gguf".into(),
        model_name: "m".into(),
        device: "cpu".into(),
        weights: WeightFormat::for_this_cpu(64),
    };
    let err = LlamaEngine::load(&settings).err().expect("missing file");
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/model.gguf") && msg.contains("scripts/fetch-model.sh"),
        "{msg}"
    );
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn greedy_capital_of_france_is_paris() {
    let mut e = smollm2(WeightFormat::for_this_cpu(64));
    assert_eq!(e.info().context_length, 8192);
    assert_eq!(e.info().device, "cpu");
    e.encode_and_admit(
        1,
        &job(
            r#"{"id":"a","prompt":"The capital of France is","max_new_tokens":8,"temperature":0}"#,
        ),
        0,
    )
    .expect("admit");
    e.encode_and_admit(
        2,
        &job(r#"{"id":"b","prompt":"The capital of France is","max_new_tokens":8,"temperature":0,"stop":["Paris"]}"#),
        0,
    )
    .expect("admit");
    let out = run_to_end(&mut e, 512);
    println!("greedy: {:?}", out[&1].text);
    assert!(out[&1].text.contains("Paris"), "{:?}", out[&1].text);
    assert_eq!(finish(&out[&1]), Some(FinishReason::Length));
    assert_eq!(out[&1].tokens, 8);
    // The stop string ends the twin job and is not part of its text.
    assert_eq!(finish(&out[&2]), Some(FinishReason::Stop));
    assert!(!out[&2].text.contains("Paris"));
    assert!(out[&1].text.starts_with(&out[&2].text));
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn chat_job_is_answered_and_ends_at_end_of_turn() {
    let mut e = smollm2(WeightFormat::for_this_cpu(64));
    e.encode_and_admit(
        1,
        &job(r#"{"id":"a","messages":[{"role":"user","content":"What is the capital of France? Answer in one word."}],"max_new_tokens":40,"temperature":0}"#),
        0,
    )
    .expect("admit");
    let out = run_to_end(&mut e, 512);
    println!("chat: {:?} {:?}", out[&1].text, out[&1].done);
    assert!(out[&1].text.contains("Paris"), "{:?}", out[&1].text);
    assert_eq!(
        finish(&out[&1]),
        Some(FinishReason::Stop),
        "ends on <|im_end|>"
    );
    assert!(!out[&1].text.contains("<|im_end|>"));
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn min_new_tokens_holds_off_end_of_turn() {
    let mut e = smollm2(WeightFormat::for_this_cpu(64));
    e.encode_and_admit(
        1,
        &job(r#"{"id":"a","messages":[{"role":"user","content":"Say yes."}],"max_new_tokens":30,"min_new_tokens":30,"temperature":0}"#),
        0,
    )
    .expect("admit");
    let out = run_to_end(&mut e, 512);
    assert_eq!(out[&1].tokens, 30);
    assert_eq!(finish(&out[&1]), Some(FinishReason::Length));
}

const OTHER_PROMPTS: [&str; 7] = [
    r#"{"id":"o1","prompt":"Once upon a time","max_new_tokens":30,"temperature":0.7,"seed":1}"#,
    r#"{"id":"o2","prompt":"def fibonacci(n):","max_new_tokens":12,"temperature":0}"#,
    r#"{"id":"o3","messages":[{"role":"user","content":"Write a haiku about rain."}],"max_new_tokens":25,"temperature":1.0,"top_k":40,"seed":9}"#,
    r#"{"id":"o4","prompt":"1, 2, 3, 4,","max_new_tokens":20,"temperature":0,"repetition_penalty":1.3}"#,
    r#"{"id":"o5","kind":"score","prompt":"The quick brown fox jumps over the lazy dog, again and again and again."}"#,
    r#"{"id":"o6","prompt":"In a distant galaxy, far beyond the reach of any telescope ever built by humans, there was a small planet where","max_new_tokens":16,"temperature":0.9,"top_p":0.8,"seed":3}"#,
    r#"{"id":"o7","prompt":"Q: What is 2+2?\nA:","max_new_tokens":5,"temperature":0}"#,
];

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn seeded_and_greedy_text_is_the_same_alone_and_in_a_batch() {
    let mut e = smollm2(WeightFormat::for_this_cpu(64));
    let seeded = job(
        r#"{"id":"s","prompt":"My favourite animal is","max_new_tokens":24,"temperature":0.8,"top_p":0.95,"seed":42}"#,
    );
    let greedy = job(
        r#"{"id":"g","prompt":"Here is a recipe for pancakes:","max_new_tokens":24,"temperature":0}"#,
    );

    e.encode_and_admit(1, &seeded, 42).expect("admit");
    let alone_seeded = run_to_end(&mut e, 512)[&1].text.clone();
    e.encode_and_admit(1, &greedy, 0).expect("admit");
    let alone_greedy = run_to_end(&mut e, 512)[&1].text.clone();

    // Others join before and after; a small budget chunks every prompt differently than alone.
    for (i, other) in OTHER_PROMPTS.iter().enumerate().take(4) {
        e.encode_and_admit(10 + i as u64, &job(other), 1000 + i as u64)
            .expect("admit");
    }
    e.step(&StepLimits {
        max_prefill_tokens: 5,
    })
    .expect("step");
    e.encode_and_admit(1, &seeded, 42).expect("admit");
    e.encode_and_admit(2, &greedy, 0).expect("admit");
    for (i, other) in OTHER_PROMPTS.iter().enumerate().skip(4) {
        e.encode_and_admit(10 + i as u64, &job(other), 1000 + i as u64)
            .expect("admit");
    }
    let batched = run_to_end(&mut e, 7);
    println!("seeded: {alone_seeded:?}\ngreedy: {alone_greedy:?}");
    assert_eq!(batched[&1].text, alone_seeded);
    assert_eq!(batched[&2].text, alone_greedy);
    assert!(!alone_seeded.is_empty() && !alone_greedy.is_empty());
    assert_eq!(batched.len(), 2 + OTHER_PROMPTS.len());
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn different_seeds_give_different_text() {
    let mut e = smollm2(WeightFormat::for_this_cpu(64));
    let j = job(
        r#"{"id":"s","prompt":"My favourite animal is","max_new_tokens":16,"temperature":1.0}"#,
    );
    e.encode_and_admit(1, &j, 1).expect("admit");
    e.encode_and_admit(2, &j, 2).expect("admit");
    e.encode_and_admit(3, &j, 1).expect("admit");
    let out = run_to_end(&mut e, 512);
    assert_eq!(out[&1].text, out[&3].text);
    assert_ne!(out[&1].text, out[&2].text);
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn score_gives_one_logprob_per_predicted_token() {
    let mut e = smollm2(WeightFormat::for_this_cpu(64));
    let j =
        job(r#"{"id":"s","kind":"score","prompt":"The quick brown fox jumps over the lazy dog."}"#);
    let admitted = e.encode_and_admit(1, &j, 0).expect("admit");
    let out = run_to_end(&mut e, 512);
    let done = out[&1].done.clone().expect("done");
    assert_eq!(done.finish_reason, None);
    let score = done.score.expect("score");
    assert_eq!(score.logprobs.len(), admitted.prompt_tokens - 1);
    assert!(
        score.logprobs.iter().all(|&l| l <= 0.0 && l.is_finite()),
        "{:?}",
        score.logprobs
    );
    assert!(
        score.perplexity.is_finite() && score.perplexity > 1.0,
        "{}",
        score.perplexity
    );
    let mean = score.logprobs.iter().sum::<f64>() / score.logprobs.len() as f64;
    assert!((score.perplexity - (-mean).exp()).abs() < 1e-9);
    println!("perplexity {}", score.perplexity);

    // Chunked scoring gives the same numbers.
    e.encode_and_admit(1, &j, 0).expect("admit");
    let chunked = run_to_end(&mut e, 3)[&1]
        .done
        .clone()
        .and_then(|d| d.score)
        .expect("score");
    for (a, b) in chunked.logprobs.iter().zip(&score.logprobs) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    // Natural text scores better than shuffled words.
    e.encode_and_admit(
        1,
        &job(
            r#"{"id":"s","kind":"score","prompt":"dog lazy the over jumps fox brown quick The."}"#,
        ),
        0,
    )
    .expect("admit");
    let shuffled = run_to_end(&mut e, 512)[&1]
        .done
        .clone()
        .and_then(|d| d.score)
        .expect("score");
    assert!(
        shuffled.perplexity > score.perplexity,
        "{} vs {}",
        shuffled.perplexity,
        score.perplexity
    );
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn max_length_counts_digits_cjk_and_emoji_with_the_real_tokenizer() {
    let mut e = smollm2(WeightFormat::for_this_cpu(64));
    // Byte counts say little about token counts: SmolLM2 splits digits one by one.
    let prompts = [
        "123456789012345678901234567890",
        "東京は日本の首都であり、世界最大の都市圏です。",
        "🎉🚀🌍✨🔥 emoji party 🎈🎁",
    ];
    for (i, prompt) in prompts.iter().enumerate() {
        let j = job(&serde_json::json!({"id": format!("m{i}"), "prompt": prompt, "max_length": 50, "min_new_tokens": 50, "temperature": 0}).to_string());
        let prompt_tokens = e.encode_and_admit(i as u64, &j, 0).expect("admit").prompt_tokens;
        assert!(prompt_tokens < 50, "{prompt:?}: {prompt_tokens} tokens");
        let out = run_to_end(&mut e, 64);
        assert_eq!(prompt_tokens + out[&(i as u64)].tokens, 50, "{prompt:?}: {prompt_tokens} prompt tokens");
        assert_eq!(finish(&out[&(i as u64)]), Some(FinishReason::Length));
    }
    assert_eq!(e.encoder().encode(&job(r#"{"id":"d","prompt":"123456789012345678901234567890"}"#)).expect("encode").len(), 30);
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn a_one_token_score_job_is_refused_naming_the_prompt() {
    let mut e = smollm2(WeightFormat::for_this_cpu(64));
    let one = job(r#"{"id":"s","kind":"score","prompt":"Hello"}"#);
    assert_eq!(e.encoder().encode(&one).expect("encode").len(), 1, "SmolLM2 adds no BOS");
    let err = e.encode_and_admit(1, &one, 0).expect_err("nothing to score");
    assert_eq!(err.field, "prompt");
    assert!(err.message.contains("at least 2"), "{err}");
    e.encode_and_admit(2, &job(r#"{"id":"t","kind":"score","prompt":"Hello world"}"#), 0).expect("two tokens score");
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn long_prompt_chunked_prefill_gives_the_same_greedy_text() {
    let mut e = smollm2(WeightFormat::for_this_cpu(64));
    let prompt = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg \
                  combined movable metal type, oil-based ink and a wooden press adapted from wine making. \
                  Within a few decades printing spread across Europe, and the number of books grew quickly. \
                  The most important consequence of this invention was";
    let j = job(&format!(
        r#"{{"id":"l","prompt":{},"max_new_tokens":20,"temperature":0}}"#,
        serde_json::json!(prompt)
    ));
    let admitted = e.encode_and_admit(1, &j, 0).expect("admit");
    assert!(admitted.prompt_tokens > 40, "{}", admitted.prompt_tokens);
    let whole = run_to_end(&mut e, 4096)[&1].text.clone();
    e.encode_and_admit(1, &j, 0).expect("admit");
    let mut steps_prefilling = 0;
    loop {
        let u = e
            .step(&StepLimits {
                max_prefill_tokens: 13,
            })
            .expect("step");
        if u[0].new_tokens > 0 {
            break;
        }
        steps_prefilling += 1;
    }
    assert_eq!(steps_prefilling, admitted.prompt_tokens.div_ceil(13) - 1);
    e.release(1);
    assert_eq!(e.active(), 0);
    e.encode_and_admit(1, &j, 0).expect("admit");
    let chunked = run_to_end(&mut e, 13)[&1].text.clone();
    println!("{whole:?}");
    assert_eq!(chunked, whole);
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn prompt_plus_max_new_tokens_over_the_context_is_refused() {
    let mut e = smollm2(WeightFormat::for_this_cpu(64));
    let err = e
        .encode_and_admit(
            1,
            &job(r#"{"id":"a","prompt":"Hello there","max_new_tokens":8191}"#),
            0,
        )
        .expect_err("over the context");
    assert_eq!(err.field, "max_new_tokens");
    e.encode_and_admit(
        1,
        &job(r#"{"id":"a","prompt":"Hello there","max_new_tokens":8190}"#),
        0,
    )
    .expect("fits exactly");
    let long = "word ".repeat(8200);
    let err = e
        .encode_and_admit(
            2,
            &job(&format!(
                r#"{{"id":"b","prompt":"{long}","max_new_tokens":1}}"#
            )),
            0,
        )
        .expect_err("long");
    assert_eq!(err.field, "prompt");
}

// ---------------------------------------------------------------------------------------------
// A tiny random Llama in Hugging Face layout.

const TINY_WORDS: [&str; 30] = [
    "the", "a", "cat", "dog", "sat", "on", "mat", "ran", "to", "house", "red", "blue", "big",
    "small", "and", "or", "it", "was", "is", "very", "happy", "sad", "in", "out", "up", "down",
    "one", "two", "three", "four",
];

/// Writes config.json, tokenizer.json and model.safetensors for a 2-layer Llama (hidden 64,
/// 4 heads, 2 kv heads) with random weights; returns the folder.
fn write_tiny_llama(dir: &Path) -> usize {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;

    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (i, w) in ["<unk>", "</s>"]
        .iter()
        .chain(TINY_WORDS.iter())
        .enumerate()
    {
        vocab.insert((*w).to_string(), i as u32);
    }
    let n_vocab = vocab.len();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("<unk>".into())
        .build()
        .expect("wordlevel");
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.save(dir.join("tokenizer.json"), false)
        .expect("save tokenizer");

    let (hidden, heads, kv_heads, ffn, layers) = (64usize, 4usize, 2usize, 128usize, 2usize);
    let head_dim = hidden / heads;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "vocab_size": n_vocab,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");

    let dev = Device::Cpu;
    let rand = |shape: (usize, usize)| Tensor::randn(0f32, 0.3, shape, &dev).expect("randn");
    let norm = |n: usize| (Tensor::randn(0f32, 0.1, n, &dev).expect("randn") + 1.0).expect("add");
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("model.embed_tokens.weight".into(), rand((n_vocab, hidden)));
    t.insert("lm_head.weight".into(), rand((n_vocab, hidden)));
    t.insert("model.norm.weight".into(), norm(hidden));
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        t.insert(p("self_attn.q_proj"), rand((heads * head_dim, hidden)));
        t.insert(p("self_attn.k_proj"), rand((kv_heads * head_dim, hidden)));
        t.insert(p("self_attn.v_proj"), rand((kv_heads * head_dim, hidden)));
        t.insert(p("self_attn.o_proj"), rand((hidden, heads * head_dim)));
        t.insert(p("mlp.gate_proj"), rand((ffn, hidden)));
        t.insert(p("mlp.up_proj"), rand((ffn, hidden)));
        t.insert(p("mlp.down_proj"), rand((hidden, ffn)));
        t.insert(p("input_layernorm"), norm(hidden));
        t.insert(p("post_attention_layernorm"), norm(hidden));
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).expect("save weights");
    n_vocab
}

fn tiny(dir: &Path, format: WeightFormat) -> LlamaEngine {
    LlamaEngine::load(&LlamaSettings {
        model_path: dir.to_path_buf(),
        model_name: "tiny".into(),
        device: "cpu".into(),
        weights: format,
    })
    .expect("load tiny llama")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tiny_safetensors_llama_generates_greedily() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_llama(dir.path());
    for format in [WeightFormat::Native, WeightFormat::Q8_0, WeightFormat::F32, WeightFormat::Packed] {
        let mut e = tiny(dir.path(), format);
        assert_eq!(e.info().context_length, 512);
        let kernel = if format == WeightFormat::Packed { super::packed::Kernel::active().name() } else { "candle" };
        assert_eq!(e.info().kernel, kernel, "{format:?}");
        let j = job(
            r#"{"id":"t","prompt":"the cat sat on the mat","max_new_tokens":10,"temperature":0}"#,
        );
        assert_eq!(e.encode_and_admit(1, &j, 0).expect("admit").prompt_tokens, 6);
        e.encode_and_admit(2, &j, 0).expect("admit");
        let out = run_to_end(&mut e, 4);
        let o = &out[&1];
        println!("{format:?}: {:?} {:?}", o.text, o.done);
        assert!(o.tokens >= 1 && o.tokens <= 10);
        assert!(
            o.text
                .split_whitespace()
                .all(|w| w == "<unk>" || TINY_WORDS.contains(&w)),
            "{:?}",
            o.text
        );
        assert_eq!(
            out[&1].text, out[&2].text,
            "two identical greedy jobs differ"
        );
        if finish(o) == Some(FinishReason::Length) {
            assert_eq!(o.tokens, 10);
        }
    }
}

#[test]
fn tiny_llama_refuses_empty_and_oversized_prompts() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_llama(dir.path());
    let mut e = tiny(dir.path(), WeightFormat::F32);
    let err = e
        .encode_and_admit(
            1,
            &job(r#"{"id":"t","prompt":"   ","max_new_tokens":4}"#),
            0,
        )
        .expect_err("empty");
    assert_eq!(err.field, "prompt");
    let err = e
        .encode_and_admit(
            1,
            &job(r#"{"id":"t","prompt":"the cat","max_new_tokens":511}"#),
            0,
        )
        .expect_err("too long");
    assert_eq!(err.field, "max_new_tokens");
    e.encode_and_admit(
        1,
        &job(r#"{"id":"t","prompt":"the cat","max_new_tokens":510}"#),
        0,
    )
    .expect("fits");
    let out = run_to_end(&mut e, 512);
    assert!(out[&1].tokens <= 510);
}

/// Logits of `tokens` fed in `chunks` (sizes), last row of the last chunk.
fn logits_fed_in_chunks(e: &LlamaEngine, tokens: &[u32], chunks: &[usize]) -> Vec<f32> {
    let mut cache = KvCache::new(e.model.config(), 0);
    let mut at = 0;
    let mut last = Vec::new();
    for &n in chunks {
        let mut inputs = [SeqInput {
            cache: &mut cache,
            tokens: &tokens[at..at + n],
            all_logits: false,
        }];
        last = e
            .cpu_model()
            .forward(&mut inputs)
            .expect("forward")
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("vec");
        at += n;
    }
    assert_eq!(at, tokens.len());
    assert_eq!(cache.len(), tokens.len());
    last
}

#[test]
fn tiny_llama_prefill_and_token_by_token_give_the_same_logits() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_llama(dir.path());
    let e = tiny(dir.path(), WeightFormat::F32);
    let tokens: Vec<u32> = vec![2, 5, 9, 3, 7, 11, 4, 6, 20, 30, 8];
    let whole = logits_fed_in_chunks(&e, &tokens, &[tokens.len()]);
    let one_by_one = logits_fed_in_chunks(&e, &tokens, &[1; 11]);
    let mixed = logits_fed_in_chunks(&e, &tokens, &[3, 5, 1, 2]);
    assert!(
        max_abs_diff(&whole, &one_by_one) < 1e-4,
        "{}",
        max_abs_diff(&whole, &one_by_one)
    );
    assert!(
        max_abs_diff(&whole, &mixed) < 1e-4,
        "{}",
        max_abs_diff(&whole, &mixed)
    );

    // A long prompt takes the multi-threaded attention path when fed whole.
    let long: Vec<u32> = (0..400u32).map(|i| 2 + (i * 7 + i / 5) % 30).collect();
    let long_whole = logits_fed_in_chunks(&e, &long, &[long.len()]);
    let long_chunked = logits_fed_in_chunks(&e, &long, &[1; 400]);
    let diff = max_abs_diff(&long_whole, &long_chunked);
    assert!(diff < 1e-4, "{diff}");

    // The same tokens in a batch with another sequence give the same logits.
    let mut c1 = KvCache::new(e.model.config(), 0);
    let mut c2 = KvCache::new(e.model.config(), 0);
    let other = [7u32, 7, 8];
    let mut inputs = [
        SeqInput {
            cache: &mut c2,
            tokens: &other,
            all_logits: true,
        },
        SeqInput {
            cache: &mut c1,
            tokens: &tokens,
            all_logits: false,
        },
    ];
    let batched = e.cpu_model().forward(&mut inputs).expect("forward");
    assert_eq!(batched.dims2().expect("2d").0, 4);
    let row: Vec<f32> = batched.get(3).and_then(|t| t.to_vec1()).expect("row");
    assert!(max_abs_diff(&whole, &row) < 1e-5);
}

#[test]
fn tiny_llama_decode_row_is_bitwise_the_same_alone_and_in_a_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_llama(dir.path());
    let prompt: Vec<u32> = vec![2, 5, 9, 3, 7];
    for format in [WeightFormat::Native, WeightFormat::Q8_0, WeightFormat::F32, WeightFormat::Packed] {
        let e = tiny(dir.path(), format);
        let cfg = e.model.config();
        let decode_row = |others: &[&[u32]]| -> Vec<f32> {
            let mut cache = KvCache::new(cfg, 0);
            let mut inputs = [SeqInput {
                cache: &mut cache,
                tokens: &prompt,
                all_logits: false,
            }];
            e.cpu_model().forward(&mut inputs).expect("prefill");
            let mut other_caches: Vec<KvCache> =
                others.iter().map(|_| KvCache::new(cfg, 0)).collect();
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
            let logits = e.cpu_model().forward(&mut inputs).expect("decode");
            logits
                .get(others.len() / 2)
                .and_then(|t| t.to_vec1())
                .expect("row")
        };
        let alone = decode_row(&[]);
        let batched = decode_row(&[&[4], &[8, 9, 10, 11, 12, 13], &[30], &[1, 2]]);
        assert_eq!(
            alone, batched,
            "{format:?}: a decoding row depends on its batch"
        );
        let long_prefill: Vec<u32> = (0..300).map(|i| 2 + (i % 10) as u32).collect();
        let beside_prefill = decode_row(&[&long_prefill]);
        assert_eq!(
            alone, beside_prefill,
            "{format:?}: a decoding row depends on a long prefill sharing its step"
        );
    }
}

#[test]
fn tiny_llama_matches_candle_reference_llama() {
    use candle_transformers::models::llama as reference;
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_llama(dir.path());
    let e = tiny(dir.path(), WeightFormat::F32);
    let tokens: Vec<u32> = vec![2, 5, 9, 3, 7, 11, 4];
    let ours = logits_fed_in_chunks(&e, &tokens, &[tokens.len()]);

    let dev = Device::Cpu;
    let cfg_json = std::fs::read_to_string(dir.path().join("config.json")).expect("config");
    let cfg: reference::LlamaConfig = serde_json::from_str(&cfg_json).expect("llama config");
    let cfg = cfg.into_config(false);
    let weights = candle_core::safetensors::load(dir.path().join("model.safetensors"), &dev)
        .expect("weights");
    let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &dev);
    let model = reference::Llama::load(vb, &cfg).expect("reference model");
    let mut cache = reference::Cache::new(true, DType::F32, &cfg, &dev).expect("cache");
    let input = Tensor::new(tokens.as_slice(), &dev)
        .and_then(|t| t.unsqueeze(0))
        .expect("input");
    let theirs: Vec<f32> = model
        .forward(&input, 0, &mut cache)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("logits");
    // genq keeps keys and values in f16 (candle's reference in f32), so the logits differ by
    // rounding that scales with them: measured up to 2.5e-3 of the largest logit over 80 runs
    // with fresh random weights (f16 keeps about 5e-4 relative). A wrong rotation, mask or
    // head layout differs by the logits' own size.
    let scale = theirs.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
    let diff = max_abs_diff(&ours, &theirs);
    assert!(
        diff < 5e-3 * scale,
        "logits differ by {diff}, over 5e-3 of the largest logit {scale}"
    );
}

// ---------------------------------------------------------------------------------------------
// Throughput (release mode): cargo test --release -p genq-worker --lib engine::llama::tests::decode_throughput -- --ignored --nocapture

fn decode_tokens_per_second(format: WeightFormat, batch: usize) -> f64 {
    let load = Instant::now();
    let mut e = smollm2(format);
    let loaded = load.elapsed();
    for i in 0..batch {
        let j = job(&format!(
            r#"{{"id":"b{i}","prompt":"Write a long story about a robot number {i} who learns to paint.","max_new_tokens":64,"min_new_tokens":64,"temperature":0.7,"seed":{i}}}"#
        ));
        e.encode_and_admit(i as u64, &j, i as u64).expect("admit");
    }
    // Prefill everything and the first token, then time pure decode steps.
    e.step(&StepLimits {
        max_prefill_tokens: 4096,
    })
    .expect("prefill");
    let start = Instant::now();
    let mut tokens = 0;
    for _ in 0..32 {
        tokens += e
            .step(&StepLimits {
                max_prefill_tokens: 4096,
            })
            .expect("step")
            .iter()
            .map(|u| u.new_tokens)
            .sum::<usize>();
    }
    let tps = tokens as f64 / start.elapsed().as_secs_f64();
    println!(
        "{format:?} batch {batch:>2}: {tps:7.1} tokens/s (load {:.1}s)",
        loaded.as_secs_f64()
    );
    tps
}

#[test]
#[ignore = "benchmark; run in release mode"]
fn decode_throughput() {
    let formats = match std::env::var("GENQ_BENCH_FORMATS").as_deref() {
        Ok("native") => vec![WeightFormat::Native],
        Ok("q8_0") => vec![WeightFormat::Q8_0],
        Ok("f32") => vec![WeightFormat::F32],
        _ => vec![WeightFormat::Native, WeightFormat::Q8_0, WeightFormat::F32],
    };
    for format in formats {
        for batch in [1, 4, 16] {
            // Best of two: the machine may be shared.
            for _ in 0..2 {
                decode_tokens_per_second(format, batch);
            }
        }
    }
}
