//! Where llama.cpp's sources are, for the tests that check genq against llama.cpp's own files
//! (its `models/ggml-vocab-*` tokenizer cases, `models/templates`, the `gguf-py` writer):
//! `GENQ_LLAMACPP_SRC`, else where `scripts/fetch-llamacpp-src.sh` unpacks them in the
//! repository. Nothing at run time reads them.

use std::path::{Path, PathBuf};

/// The vendored llama.cpp folder (it holds `models/`), or an error that says how to get it.
pub fn dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("GENQ_LLAMACPP_SRC").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/llamacpp/src/vendor/llama.cpp"),
        PathBuf::from,
    );
    if dir.join("models").is_dir() {
        Ok(dir)
    } else {
        Err(format!(
            "llama.cpp's sources are not at {}: run scripts/fetch-llamacpp-src.sh (or set \
             GENQ_LLAMACPP_SRC to a llama.cpp source tree)",
            dir.display()
        ))
    }
}
