//! The rebalance callback, run by librdkafka on the fetch thread: an assignment starts at the
//! offsets reported to the driver, a revoke waits until the driver has committed and released
//! the partitions.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::{broker_error, lock, Fetched, GroupMembership};
use crate::source::TopicPartition;

/// How long an assignment waits for the group's committed offsets, per attempt.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);
const COMMITTED_ATTEMPTS: u32 = 3;

/// How long an assignment waits for a partition's low watermark when nothing is committed.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

impl GroupMembership {
    /// The offset each assigned partition resumes from: the group's committed offset, or the
    /// low watermark when nothing is committed. `None` when the lookup failed.
    fn resume_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        assigned: &TopicPartitionList,
    ) -> Vec<(TopicPartition, Option<i64>)> {
        let mut committed = None;
        for attempt in 1..=COMMITTED_ATTEMPTS {
            match consumer.committed_offsets(assigned.clone(), COMMITTED_TIMEOUT) {
                Ok(offsets) => {
                    committed = Some(offsets);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "looking up committed offsets failed")
                }
            }
        }
        assigned
            .elements()
            .iter()
            .map(|element| {
                let partition = self.topic_partition(element.topic(), element.partition());
                let offset = committed.as_ref().and_then(|c| {
                    match c
                        .find_partition(element.topic(), element.partition())
                        .map(|e| e.offset())
                    {
                        Some(Offset::Offset(offset)) if offset >= 0 => Some(offset),
                        // Nothing committed: fetching starts at the beginning (auto.offset.reset
                        // is earliest). Reporting an offset below the first kept one is safe,
                        // since the consumer accepts gaps, so fall back to 0.
                        Some(_) => Some(
                            consumer
                                .fetch_watermarks(
                                    element.topic(),
                                    element.partition(),
                                    WATERMARK_TIMEOUT,
                                )
                                .map_or(0, |(low, _)| low),
                        ),
                        None => None,
                    }
                });
                (partition, offset)
            })
            .collect()
    }

    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let resumes = self.resume_offsets(consumer, tpl);
        let mut report = Vec::new();
        for (partition, offset) in resumes {
            match offset {
                Some(offset) => {
                    // Fetch from exactly the offset reported, whatever the group's state says
                    // by the time the fetcher starts.
                    if let Err(e) = tpl.set_partition_offset(
                        &partition.topic,
                        partition.partition,
                        Offset::Offset(offset),
                    ) {
                        tracing::warn!(%partition, error = %e, "could not set the start offset");
                    }
                    report.push((partition, offset));
                }
                None => {
                    tracing::warn!(%partition, "resume offset unknown; reported at the first event");
                    lock(&self.unresolved).insert(partition);
                }
            }
        }
        let assigned = if matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        ) {
            consumer.incremental_assign(tpl)
        } else {
            consumer.assign(tpl)
        };
        if let Err(e) = assigned {
            tracing::error!(error = %e, "assigning partitions failed");
            self.hand_over(Fetched::Failed(broker_error("assigning partitions", &e)));
            return;
        }
        tracing::info!(partitions = tpl.count(), "partitions assigned");
        if report.is_empty() {
            return;
        }
        lock(&self.reported).extend(report.iter().map(|(tp, _)| tp.clone()));
        self.flush();
        self.hand_over(Fetched::Assigned(report));
    }

    /// Reports `revoked` to the driver and waits until it has committed and released them.
    fn hand_back(&self, consumer: &BaseConsumer<Self>, revoked: Vec<TopicPartition>) {
        {
            let mut unresolved = lock(&self.unresolved);
            for tp in &revoked {
                unresolved.remove(tp);
            }
        }
        let revoked: Vec<TopicPartition> = {
            let mut reported = lock(&self.reported);
            revoked
                .into_iter()
                .filter(|tp| reported.remove(tp))
                .collect()
        };
        if consumer.assignment_lost() {
            lock(&self.lost).extend(revoked.iter().cloned());
        }
        if revoked.is_empty() || self.closing() {
            return;
        }
        let round = self.round.fetch_add(1, Ordering::AcqRel) + 1;
        let mut outstanding: HashSet<TopicPartition> = revoked.iter().cloned().collect();
        if !self.flush() || !self.hand_over(Fetched::Revoked(round, revoked)) {
            return;
        }
        let started = Instant::now();
        let deadline = started + self.release_timeout;
        let releases = lock(&self.releases);
        while !outstanding.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match releases.recv_timeout(left) {
                Ok((r, released)) if r == round => {
                    for tp in &released {
                        outstanding.remove(tp);
                    }
                }
                // A late release of an earlier round: its rebalance already went ahead.
                Ok(_) => {}
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        partitions = outstanding.len(),
                        waited_ms = started.elapsed().as_millis() as u64,
                        "revoked partitions were not released in time; their next owner replays from the last commit"
                    );
                    return;
                }
                // The source is gone: nobody will release them.
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        tracing::debug!(
            waited_ms = started.elapsed().as_millis() as u64,
            "revoked partitions released"
        );
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked = tpl
            .elements()
            .iter()
            .map(|e| self.topic_partition(e.topic(), e.partition()))
            .collect();
        self.hand_back(consumer, revoked);
        let unassigned = if matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        ) {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = unassigned {
            tracing::error!(error = %e, "unassigning partitions failed");
        }
        tracing::info!(partitions = tpl.count(), "partitions revoked");
    }
}

impl ConsumerContext for GroupMembership {
    // Overridden rather than using pre/post hooks: the assignment must carry the offsets
    // reported to the driver, and the revoke must wait for the driver's release.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                // librdkafka's advice for a failed rebalance: drop the whole assignment. The
                // driver hands back what it owns first, as for a revoke.
                let code: RDKafkaErrorCode = other.into();
                tracing::error!(error = %code, "rebalance failed; dropping the assignment");
                let owned: Vec<TopicPartition> = lock(&self.reported).iter().cloned().collect();
                self.hand_back(consumer, owned);
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassigning partitions failed");
                }
            }
        }
    }
}
