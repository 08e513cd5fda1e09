//! The engine: partitions' states behind one lock, runner tasks that each run a bounded number
//! of events concurrently, and one concurrency budget shared by every partition.
//!
//! Scheduling is synchronous and short: under the lock, an event that finishes updates its
//! partition, releases its key's next event, feeds the concurrency limit one sample and starts
//! as many ready events as the limit allows, taking partitions in turn so that a busy partition
//! cannot starve a quiet one. No await happens under the lock.
//!
//! The events an event's completion starts run in the runner it finished in, beside the others
//! there, rather than each in a task of its own, which cost a spawn and a trip through the
//! scheduler per event. Runners are capped so that events still spread over the runtime's
//! threads; what does not fit starts a new runner. Which runner an event runs in changes nothing
//! else: per-key order, the limit and the offsets are all kept under the lock.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;

use rustc_hash::FxHashMap;

use super::concurrency::ConcurrencyLimit;
use super::partition::{Outcome, PartitionStats, PartitionWorker};
use super::{
    BufferState, ConsumerConfig, ConsumerError, Event, EventProcessor, FailedEvent, FailureHandler,
    ProcessError, Revoked, Stall, TopicPartition,
};

/// Most events one runner task runs at once.
const RUNNER_EVENTS: usize = 64;

/// Processes the events of any number of partitions in parallel, in offset order per key, and
/// answers each partition's commit position. Cheap to clone: clones share one engine.
pub struct ParallelConsumer<P> {
    shared: Arc<Shared<P>>,
}

impl<P> Clone for ParallelConsumer<P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<P> {
    state: Mutex<State<P>>,
    /// Woken after every finished event and every revoke, for drivers waiting for room, for a
    /// drained partition or for a revoke to settle.
    changed: Notify,
    processor: Arc<dyn EventProcessor<P>>,
    failure_handler: Arc<dyn FailureHandler<P>>,
    /// Where event tasks run; captured at construction so `submit` works from any thread.
    runtime: Handle,
    config: ConsumerConfig,
}

struct State<P> {
    partitions: FxHashMap<TopicPartition, Assigned<P>>,
    /// Partitions with events ready to run, in the order they get the next free slot.
    turns: VecDeque<TopicPartition>,
    limit: ConcurrencyLimit,
    /// Events running across all partitions, including those of revoked partitions that have
    /// not returned yet: they still load the store.
    in_flight: usize,
    /// Distinguishes a re-assigned partition from its previous assignment, so that events
    /// abandoned by a revoke cannot complete offsets of the new one.
    next_generation: u64,
}

struct Assigned<P> {
    worker: PartitionWorker<P>,
    generation: u64,
    /// Whether the partition is in `turns`, so that it is queued at most once.
    has_turn: bool,
}

/// An event taken from its partition and counted in flight, to be run by a runner.
struct Started<P> {
    partition: TopicPartition,
    generation: u64,
    event: Event<P>,
}

/// How a run event ended, to be recorded under the lock.
struct Finished {
    partition: TopicPartition,
    generation: u64,
    offset: i64,
    key: Option<Bytes>,
    latency: Duration,
    outcome: Outcome,
}

impl<P: Send + Sync + 'static> ParallelConsumer<P> {
    /// An engine running `processor` on every event and `failure_handler` on those that fail.
    /// Must be called inside a tokio runtime, where the events will run.
    pub fn new(
        config: ConsumerConfig,
        processor: impl EventProcessor<P>,
        failure_handler: impl FailureHandler<P>,
    ) -> Result<Self, ConsumerError> {
        config.validate()?;
        let runtime = Handle::try_current().map_err(|_| ConsumerError::NoRuntime)?;
        let limit = ConcurrencyLimit::new(config.concurrency.clone())?;
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    partitions: FxHashMap::default(),
                    turns: VecDeque::new(),
                    limit,
                    in_flight: 0,
                    next_generation: 0,
                }),
                changed: Notify::new(),
                processor: Arc::new(processor),
                failure_handler: Arc::new(failure_handler),
                runtime,
                config,
            }),
        })
    }

    /// Takes `partition` on, consuming from `start` (its committed position).
    pub fn assign(&self, partition: TopicPartition, start: i64) -> Result<(), ConsumerError> {
        let mut state = self.shared.lock();
        if state.partitions.contains_key(&partition) {
            return Err(ConsumerError::AlreadyAssigned(partition));
        }
        let generation = state.next_generation;
        state.next_generation += 1;
        let config = &self.shared.config;
        let worker = PartitionWorker::new(
            start,
            config.partition_buffer,
            config.resume_buffer,
            Instant::now(),
        );
        tracing::debug!(%partition, start, "partition assigned");
        state.partitions.insert(
            partition,
            Assigned {
                worker,
                generation,
                has_turn: false,
            },
        );
        Ok(())
    }

    /// Hands over a batch of `partition`'s events, in offset order, and starts what may run.
    /// The batch is accepted whole or rejected whole; `Full` asks the driver to pause the
    /// partition until [`wait_for_room`](Self::wait_for_room) returns.
    pub fn submit(
        &self,
        partition: &TopicPartition,
        events: impl IntoIterator<Item = Event<P>>,
    ) -> Result<BufferState, ConsumerError> {
        let events: Vec<Event<P>> = events.into_iter().collect();
        let mut started = Vec::new();
        let buffer = {
            let mut state = self.shared.lock();
            let state = &mut *state;
            let assigned = state
                .partitions
                .get_mut(partition)
                .ok_or_else(|| ConsumerError::NotAssigned(partition.clone()))?;
            let buffer = assigned.worker.accept(partition, events, Instant::now())?;
            if assigned.worker.has_ready() && !assigned.has_turn {
                assigned.has_turn = true;
                state.turns.push_back(partition.clone());
            }
            self.shared.dispatch(state, &mut started);
            buffer
        };
        self.shared.spawn_runners(started);
        Ok(buffer)
    }

    /// Whether `partition` can take more events.
    pub fn buffer_state(&self, partition: &TopicPartition) -> Result<BufferState, ConsumerError> {
        self.shared
            .lock()
            .partitions
            .get(partition)
            .map(|assigned| assigned.worker.buffer_state())
            .ok_or_else(|| ConsumerError::NotAssigned(partition.clone()))
    }

    /// Waits until `partition` has room (its unfinished events fell to the resume mark).
    pub async fn wait_for_room(&self, partition: &TopicPartition) -> Result<(), ConsumerError> {
        self.shared
            .wait_until(|state| match state.partitions.get(partition) {
                None => Some(Err(ConsumerError::NotAssigned(partition.clone()))),
                Some(assigned) if assigned.worker.buffer_state() == BufferState::HasRoom => {
                    Some(Ok(()))
                }
                Some(_) => None,
            })
            .await
    }

    /// Waits until every accepted event of `partition` has finished, and returns its commit
    /// position. Never returns while an event is parked: bound it with a timeout.
    pub async fn wait_drained(&self, partition: &TopicPartition) -> Result<i64, ConsumerError> {
        self.shared
            .wait_until(|state| match state.partitions.get(partition) {
                None => Some(Err(ConsumerError::NotAssigned(partition.clone()))),
                Some(assigned) if assigned.worker.buffered() == 0 => {
                    Some(Ok(assigned.worker.committable()))
                }
                Some(_) => None,
            })
            .await
    }

    /// The position to commit for `partition`: every event below it is finished.
    pub fn committable(&self, partition: &TopicPartition) -> Option<i64> {
        self.shared
            .lock()
            .partitions
            .get(partition)
            .map(|assigned| assigned.worker.committable())
    }

    /// The commit position of every assigned partition, for a periodic commit.
    pub fn commit_positions(&self) -> Vec<(TopicPartition, i64)> {
        let state = self.shared.lock();
        let mut positions: Vec<_> = state
            .partitions
            .iter()
            .map(|(partition, assigned)| (partition.clone(), assigned.worker.committable()))
            .collect();
        positions.sort_unstable();
        positions
    }

    /// A snapshot of `partition`, for metrics.
    pub fn partition_stats(&self, partition: &TopicPartition) -> Option<PartitionStats> {
        self.shared
            .lock()
            .partitions
            .get(partition)
            .map(|assigned| assigned.worker.stats())
    }

    /// The current adaptive concurrency limit (a metric).
    pub fn concurrency_limit(&self) -> usize {
        self.shared.lock().limit.current()
    }

    /// Events running now across all partitions (a metric).
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }

    /// Partitions whose commit position has not moved for `stall_after` while they had
    /// unfinished work, each with the offset that blocks it.
    pub fn stalled(&self) -> Vec<Stall> {
        let now = Instant::now();
        let after = self.shared.config.stall_after;
        let state = self.shared.lock();
        let mut stalls: Vec<Stall> = state
            .partitions
            .iter()
            .filter_map(|(partition, assigned)| {
                let (offset, stuck_for, reason) = assigned.worker.stall(now, after)?;
                Some(Stall {
                    partition: partition.clone(),
                    offset,
                    stuck_for,
                    reason,
                })
            })
            .collect();
        stalls.sort_by(|a, b| a.partition.cmp(&b.partition));
        stalls
    }

    /// Events whose failure handler failed, across all partitions, by partition and offset.
    pub fn failures(&self) -> Vec<FailedEvent> {
        let state = self.shared.lock();
        let mut failures: Vec<FailedEvent> = state
            .partitions
            .iter()
            .flat_map(|(partition, assigned)| {
                assigned
                    .worker
                    .parked()
                    .map(move |(offset, key, error)| FailedEvent {
                        partition: partition.clone(),
                        offset,
                        key: key.cloned(),
                        error: error.to_owned(),
                    })
            })
            .collect();
        failures.sort_by(|a, b| (&a.partition, a.offset).cmp(&(&b.partition, b.offset)));
        failures
    }

    /// Gives `partition` up: stops starting its events, drops those not yet running, waits up
    /// to `timeout` for the running ones, and returns the final commit position (commit it
    /// before the partition moves on). Events still running at the timeout are abandoned: their
    /// results no longer count, and the next owner replays them.
    pub async fn revoke(
        &self,
        partition: &TopicPartition,
        timeout: Duration,
    ) -> Result<Revoked, ConsumerError> {
        let (dropped, generation) = {
            let mut state = self.shared.lock();
            let assigned = state
                .partitions
                .get_mut(partition)
                .ok_or_else(|| ConsumerError::NotAssigned(partition.clone()))?;
            if assigned.worker.is_revoking() {
                return Err(ConsumerError::Revoking(partition.clone()));
            }
            (assigned.worker.begin_revoke(), assigned.generation)
        };
        // Dropped events shrank buffers: drivers waiting for room must re-check.
        self.shared.changed.notify_waiters();
        let settled = tokio::time::timeout(
            timeout,
            self.shared
                .wait_until(|state| match state.partitions.get(partition) {
                    Some(assigned)
                        if assigned.generation == generation && assigned.worker.in_flight() > 0 =>
                    {
                        None
                    }
                    _ => Some(()),
                }),
        )
        .await;
        let mut state = self.shared.lock();
        let assigned = match state.partitions.remove(partition) {
            Some(assigned) if assigned.generation == generation => assigned,
            Some(other) => {
                state.partitions.insert(partition.clone(), other);
                return Err(ConsumerError::NotAssigned(partition.clone()));
            }
            None => return Err(ConsumerError::NotAssigned(partition.clone())),
        };
        let revoked = Revoked {
            committable: assigned.worker.committable(),
            dropped,
            abandoned: assigned.worker.in_flight(),
        };
        if settled.is_err() {
            tracing::warn!(
                %partition,
                abandoned = revoked.abandoned,
                committable = revoked.committable,
                "revoke timed out with events in flight"
            );
        } else {
            tracing::debug!(
                %partition,
                dropped,
                committable = revoked.committable,
                "partition revoked"
            );
        }
        Ok(revoked)
    }

    /// Every assigned partition, sorted.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        let state = self.shared.lock();
        let mut partitions: Vec<_> = state.partitions.keys().cloned().collect();
        partitions.sort_unstable();
        partitions
    }
}

impl<P: Send + Sync + 'static> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, State<P>> {
        // Nothing panics under the lock; if something ever did, the counters are still
        // consistent enough to keep going rather than to take the whole consumer down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts ready events, partitions in turn, while the concurrency limit allows; the caller
    /// runs them.
    fn dispatch(&self, state: &mut State<P>, started: &mut Vec<Started<P>>) {
        let limit = state.limit.current();
        while state.in_flight < limit {
            let Some(partition) = state.turns.pop_front() else {
                break;
            };
            let Some(assigned) = state.partitions.get_mut(&partition) else {
                continue;
            };
            assigned.has_turn = false;
            let Some(event) = assigned.worker.next_ready() else {
                continue;
            };
            let generation = assigned.generation;
            if assigned.worker.has_ready() {
                assigned.has_turn = true;
                state.turns.push_back(partition.clone());
            }
            state.in_flight += 1;
            started.push(Started {
                partition,
                generation,
                event,
            });
        }
    }

    /// Runs `events` in new runner tasks, [`RUNNER_EVENTS`] at most in each.
    fn spawn_runners(self: &Arc<Self>, mut events: Vec<Started<P>>) {
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(RUNNER_EVENTS));
            let shared = Arc::clone(self);
            self.runtime
                .spawn(async move { shared.run_events(events).await });
            events = rest;
        }
    }

    /// Runs `events` concurrently, and the events their completions start, until none is left;
    /// events beyond [`RUNNER_EVENTS`] go to a new runner.
    async fn run_events(self: Arc<Self>, events: Vec<Started<P>>) {
        let mut running: FuturesUnordered<_> = events.into_iter().map(|e| self.run(e)).collect();
        let mut started = Vec::new();
        while let Some(finished) = running.next().await {
            self.finish(finished, &mut started);
            let room = RUNNER_EVENTS.saturating_sub(running.len());
            if started.len() > room {
                self.spawn_runners(started.split_off(room));
            }
            running.extend(started.drain(..).map(|e| self.run(e)));
        }
    }

    /// Runs one event through the processor, and the failure handler if needed.
    async fn run(&self, started: Started<P>) -> Finished {
        let Started {
            partition,
            generation,
            event,
        } = started;
        let started = Instant::now();
        let processed = guarded(self.processor.process(&partition, &event)).await;
        let latency = started.elapsed();
        let outcome = match processed {
            Ok(()) => Outcome::Processed,
            Err(error) => {
                tracing::warn!(
                    %partition,
                    offset = event.offset,
                    error = %error,
                    "event processing failed, handing it to the failure handler"
                );
                match guarded(self.failure_handler.on_failure(&partition, &event, &error)).await {
                    Ok(()) => Outcome::HandedOver,
                    Err(handler_error) => {
                        tracing::error!(
                            %partition,
                            offset = event.offset,
                            error = %error,
                            handler_error = %handler_error,
                            "failure handler failed, the offset blocks its partition"
                        );
                        Outcome::Parked {
                            error: handler_error.to_string(),
                        }
                    }
                }
            }
        };
        Finished {
            partition,
            generation,
            offset: event.offset,
            key: event.key,
            latency,
            outcome,
        }
    }

    /// Records how an event ended; the events this lets start are added to `started`.
    fn finish(&self, finished: Finished, started: &mut Vec<Started<P>>) {
        let Finished {
            partition,
            generation,
            offset,
            key,
            latency,
            outcome,
        } = finished;
        {
            let mut state = self.lock();
            let state = &mut *state;
            let running = state.in_flight;
            state.in_flight = state.in_flight.saturating_sub(1);
            let failed = outcome != Outcome::Processed;
            state.limit.on_sample(latency, failed, running);
            match state.partitions.get_mut(&partition) {
                Some(assigned) if assigned.generation == generation => {
                    let now = Instant::now();
                    if let Err(error) = assigned.worker.finish(offset, key.as_ref(), outcome, now) {
                        // A bookkeeping mismatch; the offset stays unfinished, which is safe.
                        tracing::error!(%partition, offset, %error, "event completion rejected");
                    }
                    if assigned.worker.has_ready() && !assigned.has_turn {
                        assigned.has_turn = true;
                        state.turns.push_back(partition);
                    }
                }
                _ => {
                    tracing::debug!(%partition, offset, "result of a revoked partition ignored");
                }
            }
            self.dispatch(state, started);
        }
        self.changed.notify_waiters();
    }

    /// Resolves when `check` answers, re-checking after every change.
    async fn wait_until<T>(&self, mut check: impl FnMut(&State<P>) -> Option<T>) -> T {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before checking, so a change between the check and the await is not
            // missed.
            changed.as_mut().enable();
            if let Some(answer) = check(&self.lock()) {
                return answer;
            }
            changed.await;
        }
    }
}

/// Runs a user future, turning a panic into an error so that one bad event cannot leak its
/// concurrency slot or leave its offset unaccounted for.
async fn guarded(
    future: impl Future<Output = Result<(), ProcessError>>,
) -> Result<(), ProcessError> {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(panic_message(panic).into()),
    }
}

fn panic_message(panic: Box<dyn Any + Send>) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string payload".to_owned());
    format!("panicked: {detail}")
}
