//! lm-evaluation-harness end to end: `scripts/lm-eval.sh` (lm-eval's `local-completions` model on
//! the gateway's `/v1/completions`) scores the real model on a slice of the local tasks in
//! `eval/`: log-likelihood items through `echo` + `logprobs`, short answers through generation.

use std::process::Command;
use std::time::Duration;

use genq_tests::gateway::GatewayProcess;
use genq_tests::{default_model, workspace_root, Sandbox};

const TOKEN: &str = "test-token-lm-eval";

/// The value of `metric` in `task`'s row of lm-eval's results table.
fn score(table: &str, task: &str, metric: &str) -> Option<f64> {
    let mut current = String::new();
    for line in table.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 8 {
            continue;
        }
        let name = cells[1].trim_start_matches("- ").trim();
        if !name.is_empty() {
            current = name.to_string();
        }
        if current == task && cells[5] == metric {
            return cells[7].parse().ok();
        }
    }
    None
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn lm_eval_scores_the_real_model_through_the_gateway() {
    let model = default_model();
    let sb = Sandbox::new("lmeval");
    let worker = sb.worker(&["--model-path", model.to_str().unwrap_or_default(), "--max-batch-size", "16"]);
    let gw = GatewayProcess::start(&sb, &["--request-timeout", "120"], &[("GENQ__GATEWAY__API_KEYS", TOKEN)]);
    worker.wait_ready(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(workspace_root().join("scripts/lm-eval.sh"))
        .args(["--limit", "10"])
        .env("GENQ_LM_EVAL_URL", format!("{}/v1/completions", gw.base))
        .env("GENQ_LM_EVAL_MODEL", &sb.model)
        .env("GENQ_API_KEY", TOKEN)
        .output()
        .expect("run scripts/lm-eval.sh");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let log = || format!("stdout:\n{table}\nstderr:\n{}\ngateway log:\n{}", String::from_utf8_lossy(&out.stderr), gw.log_text());
    assert!(out.status.success(), "lm-eval failed\n{}", log());
    // Full-set figures are in the README; on the first ten items of each task the model knows
    // every capital and most opposites, and answers most short questions.
    let capitals = score(&table, "genq_facts_capitals", "acc").unwrap_or_else(|| panic!("no capitals row\n{}", log()));
    assert!(capitals >= 0.9, "capitals acc {capitals}\n{}", log());
    let opposites = score(&table, "genq_facts_opposites", "acc").unwrap_or_else(|| panic!("no opposites row\n{}", log()));
    assert!(opposites >= 0.8, "opposites acc {opposites}\n{}", log());
    let qa = score(&table, "genq_qa", "exact_match").unwrap_or_else(|| panic!("no genq_qa row\n{}", log()));
    assert!(qa >= 0.5, "genq_qa exact_match {qa}\n{}", log());
    drop(gw);
    drop(worker);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(sb.cleanup());
}
