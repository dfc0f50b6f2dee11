//! Settling AMQP deliveries in batches. Every settlement of one channel goes through one task, in
//! the order it was asked for, so acks can be combined safely: one `basic.ack` with
//! `multiple=true` covers a run of deliveries only when every earlier delivery tag on the channel
//! is settled too (or is in the same run); any other ack is sent on its own. Requeues and
//! dead-letters are always sent one by one.
//!
//! [`AckLedger`] is the pure bookkeeping (unit-tested without a broker); [`spawn_settler`] is the
//! task that sends the frames.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};

use super::{Settle, SettleFuture, Settlement};

/// Delivery tags of one channel that are not settled yet, including tags not seen yet: the broker
/// numbers a channel's deliveries 1, 2, 3, ... across all its consumers, and one consumer's
/// delivery can reach us after a later one of another consumer, so a gap is a delivery in transit
/// that a multiple ack must not cover.
#[derive(Debug, Default)]
pub(crate) struct AckLedger {
    unsettled: BTreeSet<u64>,
    next_tag: u64,
}

/// The frames that settle a run of acks.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AckPlan {
    /// One `basic.ack` with `multiple=true` up to this tag, when set.
    pub multiple_up_to: Option<u64>,
    /// Tags acked one by one (an earlier delivery is still unsettled).
    pub single: Vec<u64>,
}

impl AckLedger {
    /// Records a delivery taken from the channel.
    pub(crate) fn delivered(&mut self, tag: u64) {
        let first = self.next_tag.max(1);
        if tag >= first {
            self.unsettled.extend(first..tag);
            self.next_tag = tag + 1;
        }
        self.unsettled.insert(tag);
    }

    /// Records a delivery settled on its own (requeued, dead-lettered).
    pub(crate) fn settled(&mut self, tag: u64) {
        self.unsettled.remove(&tag);
    }

    /// Marks `tags` acked and says which frames do it: the tags below every delivery still
    /// unsettled are covered by one multiple ack; the others are acked singly.
    pub(crate) fn plan_acks(&mut self, tags: &mut Vec<u64>) -> AckPlan {
        for t in tags.iter() {
            self.unsettled.remove(t);
        }
        let lowest_open = self.unsettled.first().copied().unwrap_or(u64::MAX);
        tags.sort_unstable();
        let below = tags.partition_point(|&t| t < lowest_open);
        let plan = AckPlan {
            multiple_up_to: below.checked_sub(1).map(|i| tags[i]),
            single: tags[below..].to_vec(),
        };
        tags.clear();
        plan
    }

    /// Deliveries not settled yet (gaps included).
    #[cfg(test)]
    pub(crate) fn unsettled(&self) -> usize {
        self.unsettled.len()
    }
}

/// A request to the settling task.
enum Command {
    Settle(u64, Settlement),
    /// Answered once every earlier request's frame is sent.
    Flush(oneshot::Sender<()>),
}

/// The sending side of one channel's settling task; cloned into every delivery's settler.
#[derive(Clone)]
pub(crate) struct SettlerHandle {
    tx: mpsc::UnboundedSender<Command>,
    ledger: Arc<Mutex<AckLedger>>,
}

impl SettlerHandle {
    /// Records a delivery and returns its settler.
    pub(crate) fn track(&self, tag: u64) -> Box<dyn Settle> {
        if let Ok(mut l) = self.ledger.lock() {
            l.delivered(tag);
        }
        Box::new(AmqpSettler { tag, handle: self.clone() })
    }

    /// Waits until every settlement asked for so far has been sent.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct AmqpSettler {
    tag: u64,
    handle: SettlerHandle,
}

impl Settle for AmqpSettler {
    fn settle(self: Box<Self>, how: Settlement) -> SettleFuture {
        // Queued for the channel's settling task; a send error means the task ended with its
        // channel, and the broker redelivers what was not settled.
        let _ = self.handle.tx.send(Command::Settle(self.tag, how));
        Box::pin(async { Ok(()) })
    }
}

/// Most requests settled in one pass.
const MAX_PASS: usize = 4096;

/// Starts the settling task of `channel`. It ends when every handle is dropped.
pub(crate) fn spawn_settler(channel: Channel) -> SettlerHandle {
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let ledger: Arc<Mutex<AckLedger>> = Arc::default();
    let handle = SettlerHandle { tx, ledger: ledger.clone() };
    tokio::spawn(async move {
        let mut pass = Vec::with_capacity(64);
        let mut acks = Vec::with_capacity(64);
        let mut flushes = Vec::new();
        while rx.recv_many(&mut pass, MAX_PASS).await > 0 {
            for cmd in pass.drain(..) {
                match cmd {
                    Command::Settle(tag, Settlement::Ack) => acks.push(tag),
                    Command::Settle(tag, how) => {
                        send_acks(&channel, &ledger, &mut acks).await;
                        send_one(&channel, tag, how).await;
                        if let Ok(mut l) = ledger.lock() {
                            l.settled(tag);
                        }
                    }
                    Command::Flush(done) => {
                        send_acks(&channel, &ledger, &mut acks).await;
                        flushes.push(done);
                    }
                }
            }
            send_acks(&channel, &ledger, &mut acks).await;
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    });
    handle
}

async fn send_acks(channel: &Channel, ledger: &Mutex<AckLedger>, acks: &mut Vec<u64>) {
    if acks.is_empty() {
        return;
    }
    let Ok(plan) = ledger.lock().map(|mut l| l.plan_acks(acks)) else { return };
    if let Some(tag) = plan.multiple_up_to {
        if let Err(e) = channel.basic_ack(tag, BasicAckOptions { multiple: true }).await {
            tracing::warn!(error = %e, "could not ack deliveries; the broker will redeliver them");
        }
    }
    for tag in plan.single {
        if let Err(e) = channel.basic_ack(tag, BasicAckOptions { multiple: false }).await {
            tracing::warn!(error = %e, "could not ack a delivery; the broker will redeliver it");
        }
    }
}

async fn send_one(channel: &Channel, tag: u64, how: Settlement) {
    let result = match how {
        Settlement::Ack => channel.basic_ack(tag, BasicAckOptions { multiple: false }).await,
        Settlement::DeadLetter => channel.basic_reject(tag, BasicRejectOptions { requeue: false }).await,
        Settlement::Requeue => channel.basic_nack(tag, BasicNackOptions { requeue: true, multiple: false }).await,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, ?how, "could not settle a delivery; the broker will redeliver it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(tags: &[u64]) -> AckLedger {
        let mut l = AckLedger::default();
        for &t in tags {
            l.delivered(t);
        }
        l
    }

    #[test]
    fn a_run_from_the_oldest_delivery_is_one_multiple_ack() {
        let mut l = ledger(&[1, 2, 3, 4, 5]);
        let plan = l.plan_acks(&mut vec![3, 1, 2]);
        assert_eq!(plan, AckPlan { multiple_up_to: Some(3), single: vec![] });
        assert_eq!(l.unsettled(), 2);
    }

    #[test]
    fn acks_past_an_unsettled_delivery_go_one_by_one() {
        let mut l = ledger(&[1, 2, 3, 4, 5]);
        let plan = l.plan_acks(&mut vec![1, 3, 5]);
        assert_eq!(plan, AckPlan { multiple_up_to: Some(1), single: vec![3, 5] });
        // Once 2 and 4 are settled too, later acks are multiple again.
        l.settled(2);
        let plan = l.plan_acks(&mut vec![4]);
        assert_eq!(plan, AckPlan { multiple_up_to: Some(4), single: vec![] });
    }

    #[test]
    fn a_delivery_not_seen_yet_blocks_a_multiple_ack() {
        // Tag 2 went to the other consumer and has not reached us: acking 3 with multiple=true
        // would ack it unprocessed.
        let mut l = ledger(&[1, 3]);
        let plan = l.plan_acks(&mut vec![1, 3]);
        assert_eq!(plan, AckPlan { multiple_up_to: Some(1), single: vec![3] });
        l.delivered(2);
        assert_eq!(l.plan_acks(&mut vec![2]), AckPlan { multiple_up_to: Some(2), single: vec![] });
        assert_eq!(l.unsettled(), 0);
    }

    #[test]
    fn a_requeued_delivery_stops_blocking_once_settled() {
        let mut l = ledger(&[1, 2, 3]);
        l.settled(1);
        assert_eq!(l.plan_acks(&mut vec![2, 3]), AckPlan { multiple_up_to: Some(3), single: vec![] });
    }
}
