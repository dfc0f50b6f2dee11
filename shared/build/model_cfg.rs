//! Build script of the crates whose tests read the default model: sets `cfg(genq_model)` when
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` is there, or when the test command requires it
//! (`GENQ_REQUIRE_MODEL=1`, set by `scripts/test.sh`). Model tests carry
//! `#[cfg_attr(not(genq_model), ignore = "...")]`: a bare `cargo test` without the model lists
//! them as ignored, and under the test command a missing model fails them.

use std::env;
use std::path::Path;

fn main() {
    let manifest = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let models = Path::new(&manifest).join("../models");
    println!("cargo::rustc-check-cfg=cfg(genq_model)");
    println!("cargo::rerun-if-env-changed=GENQ_REQUIRE_MODEL");
    // A folder: cargo compares the newest modification time inside it (always stale while missing).
    println!("cargo::rerun-if-changed={}", models.display());
    let required = env::var("GENQ_REQUIRE_MODEL").is_ok_and(|v| v == "1");
    if required || models.join("SmolLM2-135M-Instruct.Q4_1.gguf").exists() {
        println!("cargo::rustc-cfg=genq_model");
    }
}
