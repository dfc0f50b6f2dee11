//! AMQP topology names: exchanges, per-model queues, routing keys, and the quorum-queue arguments.

use crate::job::Priority;

/// Direct exchange that jobs are published to.
pub const JOBS_EXCHANGE: &str = "genq.jobs";
/// Fanout exchange that rejected and over-delivered jobs are dead-lettered to.
pub const DEAD_LETTER_EXCHANGE: &str = "genq.dlx";
/// Queue bound to the dead-letter exchange, for a person to read.
pub const DEAD_QUEUE: &str = "genq.dead";
/// Header carrying the producer's clock at publish, in Unix milliseconds.
pub const CREATED_MS_HEADER: &str = "genq-created-ms";
/// Header a worker sets on a job of a bulk message it dead-letters on its own: why.
pub const DEAD_REASON_HEADER: &str = "genq-dead-reason";

/// Routing key of a job for `model` at `priority`.
pub fn routing_key(model: &str, priority: Priority) -> String {
    match priority {
        Priority::Normal => model.to_string(),
        Priority::High => format!("{model}.high"),
        Priority::Low => format!("{model}.low"),
    }
}

/// Queue that holds `model`'s jobs of `priority`.
pub fn queue_name(model: &str, priority: Priority) -> String {
    format!("{JOBS_EXCHANGE}.{}", routing_key(model, priority))
}

/// Limits set as arguments on each job queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// `x-delivery-limit`: deliveries before a job is dead-lettered.
    pub delivery_limit: u32,
    /// `x-max-length`: ready messages before publishes are rejected (backpressure).
    pub max_length: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_and_low_priority_jobs_route_to_their_own_queues() {
        assert_eq!(queue_name("m", Priority::Normal), "genq.jobs.m");
        assert_eq!(queue_name("m", Priority::High), "genq.jobs.m.high");
        assert_eq!(routing_key("m", Priority::High), "m.high");
        assert_eq!(queue_name("m", Priority::Low), "genq.jobs.m.low");
    }
}
