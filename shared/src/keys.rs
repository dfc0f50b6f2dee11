//! The Redis key schema. The `{id}` hash tag keeps one job's keys in one Redis Cluster slot.

/// Field of a job's hash that `genq cancel` sets to ask for the job to be cancelled; the worker
/// reads it when it begins the job and between engine steps. Internal: not part of a result.
pub const CANCEL_FIELD: &str = "cancel_requested";

/// Field of a stream entry that carries a chunk of generated text.
pub const STREAM_TEXT_FIELD: &str = "text";

/// Field of the stream entry that ends a job's stream; its value is the job's final status.
pub const STREAM_END_FIELD: &str = "end";

/// Builds the Redis keys of jobs and batches under one prefix (`genq` by default; tests use
/// their own so they never collide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    prefix: String,
}

impl Default for KeySchema {
    fn default() -> Self {
        Self::new("genq")
    }
}

impl KeySchema {
    /// A schema whose keys all start with `prefix:`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// `genq:job:{<id>}`: the result hash.
    pub fn job(&self, id: &str) -> String {
        format!("{}:job:{{{id}}}", self.prefix)
    }

    /// `genq:job:{<id>}:done`: one element pushed when the job reaches a final status.
    pub fn done(&self, id: &str) -> String {
        format!("{}:job:{{{id}}}:done", self.prefix)
    }

    /// `genq:job:{<id>}:stream`: streamed text chunks, then an end marker.
    pub fn stream(&self, id: &str) -> String {
        format!("{}:job:{{{id}}}:stream", self.prefix)
    }

    /// `genq:batch:{<id>}`: counts per final status for a batch.
    pub fn batch(&self, id: &str) -> String {
        format!("{}:batch:{{{id}}}", self.prefix)
    }

    /// `genq:batch:{<id>}:members`: ids of the batch's jobs already counted, so a redelivered
    /// job is counted once.
    pub fn batch_members(&self, id: &str) -> String {
        format!("{}:batch:{{{id}}}:members", self.prefix)
    }

    /// `genq:workers:{<model>}`: sorted set of `model`'s workers, scored by their last heartbeat
    /// (Unix ms); the hash tag keeps one model's key in one Redis Cluster slot.
    pub fn workers(&self, model: &str) -> String {
        format!("{}:workers:{{{model}}}", self.prefix)
    }

    /// `genq:models`: sorted set of the models with workers, scored by the last heartbeat of any.
    pub fn models(&self) -> String {
        format!("{}:models", self.prefix)
    }

    /// `genq:file:{<id>}`: a file uploaded to the gateway (`/v1/files`), or a batch's output.
    pub fn file(&self, id: &str) -> String {
        format!("{}:file:{{{id}}}", self.prefix)
    }

    /// `genq:files`: sorted set of file ids, scored by creation time (Unix seconds).
    pub fn files(&self) -> String {
        format!("{}:files", self.prefix)
    }

    /// `genq:openai-batch:{<id>}`: an OpenAI batch's record (`/v1/batches`); the hash tag is the
    /// one of the batch's counters ([`KeySchema::batch`]).
    pub fn openai_batch(&self, id: &str) -> String {
        format!("{}:openai-batch:{{{id}}}", self.prefix)
    }

    /// `genq:openai-batches`: sorted set of batch ids, scored by creation time (Unix seconds).
    pub fn openai_batches(&self) -> String {
        format!("{}:openai-batches", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_share_one_cluster_hash_tag() {
        let keys = KeySchema::default();
        assert_eq!(keys.job("a1"), "genq:job:{a1}");
        assert_eq!(keys.done("a1"), "genq:job:{a1}:done");
        assert_eq!(keys.stream("a1"), "genq:job:{a1}:stream");
        assert_eq!(keys.batch("b"), "genq:batch:{b}");
        assert_eq!(KeySchema::new("t9").job("x"), "t9:job:{x}");
        assert_eq!(keys.workers("smollm2-135m-instruct"), "genq:workers:{smollm2-135m-instruct}");
        assert_eq!(keys.models(), "genq:models");
    }
}
