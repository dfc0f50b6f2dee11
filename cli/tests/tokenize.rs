//! `genq tokenize`, run as the real binary: llama.cpp's own ids for its Llama 2 vocabulary
//! (every case of `ggml-vocab-llama-spm.gguf`, BOS first as the engine feeds a prompt), the
//! default model's chat markers with and without `--special`, a safetensors folder, and the
//! errors a user sees for a missing model or a bad input line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn genq(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_genq"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start genq");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("genq runs")
}

/// Each output line's `text` and `ids`.
fn lines(out: &Output) -> Vec<(String, Vec<u32>)> {
    assert!(
        out.status.success(),
        "genq tokenize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let text = v["text"].as_str().expect("text").to_owned();
            let ids = v["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|id| id.as_u64().expect("an id") as u32)
                .collect();
            (text, ids)
        })
        .collect()
}

fn llamacpp_models() -> PathBuf {
    genq_worker::engine::llama::llamacpp_src::dir().unwrap_or_else(|e| panic!("{e}")).join("models")
}

#[test]
fn tokenize_gives_llamacpps_ids_for_llama2_with_bos() {
    let gguf = llamacpp_models().join("ggml-vocab-llama-spm.gguf");
    let inp = std::fs::read_to_string(format!("{}.inp", gguf.display())).expect(".inp");
    let out = std::fs::read_to_string(format!("{}.out", gguf.display())).expect(".out");
    let texts: Vec<&str> = inp
        .strip_suffix(SEPARATOR)
        .unwrap_or(&inp)
        .split(SEPARATOR)
        .collect();
    let want: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|id| id.parse().expect("an id")).collect())
        .collect();
    assert_eq!(texts.len(), want.len());
    assert!(texts.len() > 40, "llama.cpp's cases went missing");
    let stdin: String = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
        .collect();
    let model = gguf.to_string_lossy();
    let got = lines(&genq(&["tokenize", "--model-path", &model, "-"], &stdin));
    assert_eq!(got.len(), texts.len());
    for ((text, ids), (want_text, want_ids)) in got.iter().zip(texts.iter().zip(&want)) {
        assert_eq!(text, want_text);
        // Llama 2 adds BOS (1) to a prompt; llama.cpp's cases are without it.
        assert_eq!(ids.first(), Some(&1), "{text:?}");
        assert_eq!(&ids[1..], want_ids.as_slice(), "{text:?}");
    }
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn tokenize_parses_chat_markers_only_with_special() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "the default model is missing at {}: run scripts/fetch-model.sh", model.display());
    let model = model.to_string_lossy();
    let text = "<|im_start|>user\nhi<|im_end|>";
    let special = lines(&genq(&["tokenize", "--model-path", &model, "--special", text], ""));
    // SmolLM2 adds no BOS; <|im_start|> is 1, <|im_end|> 2.
    assert_eq!(special, [(text.to_owned(), vec![1, 4093, 198, 6004, 2])]);
    let plain = lines(&genq(&["tokenize", "--model-path", &model, text], ""));
    assert!(
        !plain[0].1.contains(&1) && !plain[0].1.contains(&2),
        "markers are text without --special: {:?}",
        plain[0].1
    );
}

#[test]
fn tokenize_reads_a_safetensors_folders_tokenizer_json() {
    use genq_worker::engine::llama::synth::RandomModel;
    let dir = std::env::temp_dir().join(format!("genq-tokenize-{}", std::process::id()));
    RandomModel::tiny()
        .write(&dir, candle_core::DType::F32)
        .expect("write a tiny model");
    let got = lines(&genq(
        &["tokenize", "--model-path", &dir.to_string_lossy(), "the quick fox"],
        "",
    ));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(got, [("the quick fox".to_owned(), vec![2, 3, 5])]);
}

#[test]
fn tokenize_names_a_missing_model_and_a_bad_input_line() {
    let out = genq(&["tokenize", "--model-path", "/nonexistent/model.gguf", "hi"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");

    let gguf = llamacpp_models().join("ggml-vocab-llama-spm.gguf");
    let out = genq(
        &["tokenize", "--model-path", &gguf.to_string_lossy(), "-"],
        "\"fine\"\n{not json\n",
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing is printed before the input is read whole");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
}
