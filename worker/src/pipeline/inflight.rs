//! A delivery in flight: what settles it and what its result needs, carried with the job from the
//! intake through the engine thread to the writer (the scheduler's reply), so exactly one stage
//! owns it at any time. And the writer's input, [`ToWriter`], with its counting sender.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::mpsc;

use crate::scheduler::{EngineEvent, JobOutcome, Undelivered};
use crate::sink::JobStart;
use crate::source::{Settle, Settlement};

/// Who took a delivery, when, and for which job: what the job's start and its result record.
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    /// Job id.
    pub id: String,
    /// Model name.
    pub model: String,
    /// Worker name.
    pub worker: String,
    /// This start of the worker process.
    pub instance: String,
    /// Publish time, when known.
    pub created_ms: Option<u64>,
    /// When the worker took it (Unix ms).
    pub started_ms: u64,
}

impl Taken {
    /// The sink's record of the job starting, as a job of `kind`.
    pub(super) fn job_start(&self, kind: &str) -> JobStart {
        JobStart {
            id: self.id.clone(),
            kind: kind.to_string(),
            model: self.model.clone(),
            worker: self.worker.clone(),
            instance: self.instance.clone(),
            created_ms: self.created_ms,
            started_ms: self.started_ms,
        }
    }
}

/// One delivery not yet settled, and what its result needs.
pub(crate) struct InFlight {
    settler: Box<dyn Settle>,
    /// Counts the deliveries in flight (`genq_inflight_deliveries`).
    gauge: IntGauge,
    /// Job id.
    pub id: String,
    /// `generate` or `score`; none for a job that failed validation (its kind is unknown).
    pub kind: Option<String>,
    /// Model name.
    pub model: String,
    /// Worker name.
    pub worker: String,
    /// Publish time, when known.
    pub created_ms: Option<u64>,
    /// When the worker took it (Unix ms).
    pub started_ms: u64,
    /// The batch its result counts towards.
    pub batch: Option<String>,
    /// Whether its text is streamed.
    pub stream: bool,
    /// How the delivery is settled once its result is stored: `Ack`, or `DeadLetter` for poison.
    pub settle_as: Settlement,
}

impl InFlight {
    /// A delivery `taken` for a job of `kind` (none when it failed validation); counted in
    /// `gauge` until settled.
    pub(super) fn new(settler: Box<dyn Settle>, taken: &Taken, kind: Option<String>, gauge: IntGauge) -> Self {
        gauge.inc();
        Self {
            settler,
            gauge,
            id: taken.id.clone(),
            kind,
            model: taken.model.clone(),
            worker: taken.worker.clone(),
            created_ms: taken.created_ms,
            started_ms: taken.started_ms,
            batch: None,
            stream: false,
            settle_as: Settlement::Ack,
        }
    }

    /// Settles the delivery as its result asked (`settle_as`).
    pub(super) async fn settle_as_decided(self) {
        let how = self.settle_as;
        self.settle(how).await;
    }

    /// Settles the delivery `how`.
    pub(super) async fn settle(self, how: Settlement) {
        self.gauge.dec();
        settle(self.settler, how).await;
    }
}

/// Settles one delivery; a failure is logged (the broker redelivers an unsettled delivery).
pub(crate) async fn settle(settler: Box<dyn Settle>, how: Settlement) {
    if let Err(e) = settler.settle(how).await {
        tracing::warn!(error = %e, "could not settle a delivery; the broker will redeliver it");
    }
}

/// What the result writer takes: text to stream, final outcomes (from the engine, or decided
/// without running the job), and deliveries to put back.
pub(crate) enum ToWriter {
    /// New text of a streaming job.
    Chunk {
        /// Job id.
        id: String,
        /// Text.
        text: String,
    },
    /// The job reached a final status.
    Final {
        /// The delivery.
        job: InFlight,
        /// How it ended.
        outcome: JobOutcome,
    },
    /// Put the delivery back for another try.
    Requeue {
        /// The delivery.
        job: InFlight,
        /// Why.
        reason: String,
    },
}

impl From<EngineEvent<InFlight>> for ToWriter {
    fn from(ev: EngineEvent<InFlight>) -> Self {
        match ev {
            EngineEvent::Chunk { id, text } => ToWriter::Chunk { id, text },
            EngineEvent::Finished { reply, outcome } => ToWriter::Final { job: reply, outcome },
            EngineEvent::Retry { reply, reason } => ToWriter::Requeue { job: reply, reason },
        }
    }
}

impl ToWriter {
    /// The delivery this item carries (none for streamed text).
    pub(super) fn into_job(self) -> Option<InFlight> {
        match self {
            ToWriter::Chunk { .. } => None,
            ToWriter::Final { job, .. } | ToWriter::Requeue { job, .. } => Some(job),
        }
    }

    /// Whether this ends a delivery (a final outcome or a requeue), as opposed to streamed text.
    pub(super) fn ends_a_delivery(&self) -> bool {
        !matches!(self, ToWriter::Chunk { .. })
    }
}

/// The writer's channel, counting what ends a delivery, so the writer's own count of those
/// stored tells when everything sent so far is stored (the solo gate waits for that).
#[derive(Clone)]
pub(crate) struct WriterSender {
    tx: mpsc::Sender<ToWriter>,
    sent: Arc<AtomicU64>,
}

impl WriterSender {
    /// Wraps the sending half of the writer's channel.
    pub(super) fn new(tx: mpsc::Sender<ToWriter>) -> Self {
        Self { tx, sent: Arc::default() }
    }

    fn count(&self, item: &ToWriter) {
        if item.ends_a_delivery() {
            self.sent.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Sends from async code; gives the item back when the writer is gone.
    pub(super) async fn send(&self, item: ToWriter) -> Result<(), ToWriter> {
        self.count(&item);
        self.tx.send(item).await.map_err(|e| e.0)
    }

    /// Sends from the engine thread; when the writer is gone, gives back the delivery the item
    /// carried.
    pub(super) fn blocking_send(&self, item: ToWriter) -> Result<(), Undelivered<InFlight>> {
        self.count(&item);
        self.tx.blocking_send(item).map_err(|e| Undelivered(e.0.into_job().map(Box::new)))
    }

    /// Items that end a delivery sent so far.
    pub(super) fn endings_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}
