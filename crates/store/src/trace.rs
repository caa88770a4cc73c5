//! The change feed's stage trace: where one change's time goes on its way from its commit to
//! the feed's readers, for attributing the feed's latency (`meridian-bench --trace`).
//!
//! Each stage is one `debug` event of target [`TARGET`] with the stage's name (`stage`), the
//! revisions it concerns (`first`, `last`) and the time it happened (`at_us`: microseconds
//! since the Unix epoch, the clock a change's `committed_at_us` is stamped with, so that the
//! stages of one change line up across the processes of one machine). Off (one level check)
//! unless the log's filter asks for the target, e.g. `MERIDIAN_LOG=warn,meridian_feed_trace=debug`.

/// The target of the trace's events.
pub const TARGET: &str = "meridian_feed_trace";

/// Records that `stage` happened now for revisions `first..=last`.
pub fn stage(stage: &'static str, first: u64, last: u64) {
    if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        tracing::debug!(target: TARGET, stage, first, last, at_us = crate::sql::now_micros());
    }
}
