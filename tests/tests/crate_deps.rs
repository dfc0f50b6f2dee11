//! The crates follow the parts: the client library and the gateway link no model code, and the
//! client library no HTTP server or command-line parser. Read from `cargo tree` (offline, from
//! the lock file), so a dependency added to the wrong crate fails here.

use std::collections::BTreeSet;
use std::process::Command;

/// The packages `package` links (normal dependencies, every feature it turns on), by name.
fn linked_packages(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(genq_tests::workspace_root())
        .args(["tree", "--offline", "--locked", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo} tree: {e}"));
    assert!(out.status.success(), "cargo tree -p {package} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(names.contains(package), "cargo tree listed no {package}: {names:?}");
    names
}

/// The members of `names` that are `forbidden` or start with one of `forbidden_prefixes`.
fn offenders(names: &BTreeSet<String>, forbidden: &[&str], forbidden_prefixes: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| forbidden.contains(&n.as_str()) || forbidden_prefixes.iter().any(|p| n.starts_with(p)))
        .cloned()
        .collect()
}

/// Model code: candle and the crates only it and the tokenizer bring.
const MODEL_CODE: [&str; 7] = ["genq-worker", "tokenizers", "gemm", "minijinja", "safetensors", "rayon", "half"];

#[test]
fn the_client_library_links_no_model_code_no_http_server_and_no_cli_parser() {
    let names = linked_packages("genq-producer");
    let mut forbidden = MODEL_CODE.to_vec();
    forbidden.extend(["axum", "clap", "indicatif", "tracing-subscriber", "genq-gateway", "genq-cli"]);
    let found = offenders(&names, &forbidden, &["candle"]);
    assert!(found.is_empty(), "genq-producer links {found:?}");
    assert!(names.contains("genq-protocol") && names.contains("genq-shared"), "{names:?}");
}

#[test]
fn the_gateway_links_no_model_code() {
    let names = linked_packages("genq-gateway");
    let found = offenders(&names, &MODEL_CODE, &["candle"]);
    assert!(found.is_empty(), "genq-gateway links {found:?}");
    assert!(names.contains("axum"), "the check reads the gateway's real tree: {names:?}");
}

#[test]
fn the_contract_crate_does_no_io() {
    let names = linked_packages("genq-shared");
    let found = offenders(&names, &["tokio", "lapin", "redis", "axum", "genq-protocol"], &["candle"]);
    assert!(found.is_empty(), "genq-shared links {found:?}");
}

#[test]
fn the_command_line_embeds_the_worker() {
    // The one crate allowed to: `genq run` and `genq bench` run the model in process. Also shows
    // that the checks above would see model code if it were there.
    let names = linked_packages("genq-cli");
    assert!(names.contains("genq-worker") && names.iter().any(|n| n.starts_with("candle")), "{names:?}");
}
