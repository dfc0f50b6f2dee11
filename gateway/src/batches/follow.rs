//! The creating gateway follows its batch: it reads the results in input order as the workers
//! finish them and writes the output lines as it goes, so the files are ready the moment the
//! last request ends, instead of being written from scratch after it. While it follows, it keeps
//! a short lease in the batch's record, and other gateways leave the finishing to it; if it
//! stops (crash, restart, a Redis error), the lease lapses and any gateway that looks at the
//! batch writes the files the usual way.

use std::time::Duration;

use super::output::FileWriter;
use super::record::{BatchLines, BatchRecord};
use super::{finalize, input::job_id};
use crate::openai::now_secs;
use crate::state::Gateway;

/// How often the follower renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Follows batch `rec` (just published, `in_progress`) until its files are written; on any
/// failure gives the batch back to the other gateways. Runs on a task of its own.
pub fn spawn(gw: Gateway, rec: BatchRecord, lines: BatchLines) {
    tokio::spawn(async move {
        let id = rec.id.clone();
        if let Err(e) = follow(&gw, rec, lines).await {
            tracing::warn!(batch = %id, error = %e.message, "stopped following the batch; another look at it will write its files");
        }
        BatchRecord::drop_follower(&gw, &id).await;
    });
}

async fn follow(gw: &Gateway, rec: BatchRecord, lines: BatchLines) -> Result<(), crate::error::ApiError> {
    BatchRecord::renew_follower(gw, &rec.id).await?;
    let renewing = {
        let (gw, id) = (gw.clone(), rec.id.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                if BatchRecord::renew_follower(&gw, &id).await.is_err() {
                    return;
                }
            }
        })
    };
    let _stop_renewing = AbortOnDrop(renewing);
    let mut writer = FileWriter::new(&rec, lines);
    let job_lines = writer.job_lines();
    let ids: Vec<String> = job_lines.iter().map(|&l| job_id(&rec.id, l)).collect();
    let window = Duration::from_secs(rec.expires_at.saturating_sub(now_secs()));
    let mut order = job_lines.into_iter();
    let mut failed = None;
    gw.results()
        .await?
        .wait_many(&ids, Some(window), |r| match (r, order.next()) {
            (Ok(r), Some(line)) if failed.is_none() => writer.push(line, Some(&r), "completed"),
            (Err(e), _) if failed.is_none() => failed = Some(e),
            _ => {}
        })
        .await
        .map_err(|e| crate::error::ApiError::from_result(&e))?;
    if let Some(e) = failed {
        return Err(crate::error::ApiError::from_result(&e));
    }
    // Every request is final: finish the batch with the lines already written, unless another
    // gateway got there first (or it was cancelled meanwhile: it ends `cancelled`).
    let mut rec = BatchRecord::load(gw, &rec.id).await?;
    if !matches!(rec.status.as_str(), "in_progress" | "cancelling") || !rec.claim_finalizing(gw, now_secs()).await? {
        return Ok(());
    }
    let end = if rec.cancelling_at.is_some() { "cancelled" } else { "completed" };
    if let Err(e) = finalize(gw, &mut rec, end, Some(writer)).await {
        rec.release_finalizing(gw).await;
        return Err(e);
    }
    Ok(())
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
