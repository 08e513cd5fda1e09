//! Requests as DynamoDB wants them sent: batches cut to its limits, unprocessed entries and
//! throttling retried with exponential backoff, and errors turned into [`StoreError`]s naming
//! the operation and table.

use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, WriteRequest};
use futures::{StreamExt, TryStreamExt};

use cellar_store::{Result, StoreError};

use crate::{keys, DynamoStore};

/// Keys in one BatchGetItem: DynamoDB's limit.
pub(crate) const BATCH_GET_KEYS: usize = 100;
/// Requests in one BatchWriteItem: DynamoDB's limit.
pub(crate) const BATCH_WRITE_ITEMS: usize = 25;
/// Requests one store call keeps in flight: enough to hide round trips, few enough not to
/// flood the connection pool or the table's partitions.
pub(crate) const CONCURRENCY: usize = 16;
/// Rounds a batch may come back with unprocessed entries before the call fails.
const BATCH_ROUNDS: u32 = 10;
/// Retries of a throttled request, on top of the SDK's own.
const THROTTLE_RETRIES: u32 = 8;
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_CAP: Duration = Duration::from_secs(3);

/// The error codes DynamoDB answers when a table or account is over its throughput.
const THROTTLING_CODES: [&str; 3] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
];

/// Waits before retry `attempt` (from 1): exponential, capped, with jitter so that writers
/// throttled together do not retry together.
pub(crate) async fn backoff(attempt: u32) {
    let exponential = BACKOFF_BASE.saturating_mul(1 << attempt.min(10));
    let ceiling = exponential.min(BACKOFF_CAP);
    let jitter = rand::random_range(0.5..=1.0);
    tokio::time::sleep(ceiling.mul_f64(jitter)).await;
}

fn is_throttling<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    e.code()
        .is_some_and(|code| THROTTLING_CODES.contains(&code))
}

impl DynamoStore {
    /// Sends a request built by `call`, again after a backoff while DynamoDB throttles it.
    pub(crate) async fn throttled<T, E, Fut>(
        &self,
        mut call: impl FnMut() -> Fut,
    ) -> std::result::Result<T, SdkError<E>>
    where
        Fut: Future<Output = std::result::Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Err(e) if is_throttling(&e) && attempt < THROTTLE_RETRIES => {
                    attempt += 1;
                    tracing::debug!(table = %self.table, attempt, "DynamoDB throttled a request; backing off");
                    backoff(attempt).await;
                }
                answer => return answer,
            }
        }
    }

    /// A failed request as a retryable store error.
    pub(crate) fn backend_error<E: Error + 'static>(
        &self,
        operation: &str,
        e: SdkError<E>,
    ) -> StoreError {
        StoreError::Backend(format!(
            "DynamoDB {operation} on table `{}` failed: {}",
            self.table,
            DisplayErrorContext(&e)
        ))
    }

    /// The items of `keys` (distinct, at most [`BATCH_GET_KEYS`]) that exist, in no order,
    /// with the given attributes only.
    pub(crate) async fn batch_get(
        &self,
        keys: Vec<HashMap<String, AttributeValue>>,
        attributes: &[&str],
    ) -> Result<Vec<HashMap<String, AttributeValue>>> {
        let mut pending = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(true)
            .projection_expression(keys::projection(attributes))
            .set_expression_attribute_names(Some(keys::names(attributes)))
            .build()
            .map_err(|e| {
                StoreError::Backend(format!("cannot build a BatchGetItem request: {e}"))
            })?;
        let mut items = Vec::new();
        let mut rounds = 0;
        loop {
            let answer = self
                .throttled(|| {
                    self.client
                        .batch_get_item()
                        .request_items(&self.table, pending.clone())
                        .send()
                })
                .await
                .map_err(|e| self.backend_error("BatchGetItem", e))?;
            if let Some(got) = answer.responses.and_then(|mut r| r.remove(&self.table)) {
                items.extend(got);
            }
            let unprocessed = answer
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table))
                .filter(|rest| !rest.keys().is_empty());
            let Some(rest) = unprocessed else {
                return Ok(items);
            };
            rounds += 1;
            if rounds > BATCH_ROUNDS {
                return Err(StoreError::Backend(format!(
                    "DynamoDB BatchGetItem on table `{}` left {} keys unprocessed after {BATCH_ROUNDS} retries",
                    self.table,
                    rest.keys().len()
                )));
            }
            backoff(rounds).await;
            pending = rest;
        }
    }

    /// Sends write requests in batches of [`BATCH_WRITE_ITEMS`], several at once. A batch must
    /// not hold two requests for one key (DynamoDB refuses it).
    pub(crate) async fn batch_write(&self, requests: Vec<WriteRequest>) -> Result<()> {
        let mut batches = Vec::with_capacity(requests.len().div_ceil(BATCH_WRITE_ITEMS));
        let mut requests = requests.into_iter();
        loop {
            let batch: Vec<WriteRequest> = requests.by_ref().take(BATCH_WRITE_ITEMS).collect();
            if batch.is_empty() {
                break;
            }
            batches.push(batch);
        }
        futures::stream::iter(batches)
            .map(|batch| self.write_batch(batch))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn write_batch(&self, mut pending: Vec<WriteRequest>) -> Result<()> {
        let mut rounds = 0;
        loop {
            let answer = self
                .throttled(|| {
                    self.client
                        .batch_write_item()
                        .request_items(&self.table, pending.clone())
                        .send()
                })
                .await
                .map_err(|e| self.backend_error("BatchWriteItem", e))?;
            let unprocessed = answer
                .unprocessed_items
                .and_then(|mut u| u.remove(&self.table))
                .filter(|rest| !rest.is_empty());
            let Some(rest) = unprocessed else {
                return Ok(());
            };
            rounds += 1;
            if rounds > BATCH_ROUNDS {
                return Err(StoreError::Backend(format!(
                    "DynamoDB BatchWriteItem on table `{}` left {} writes unprocessed after {BATCH_ROUNDS} retries",
                    self.table,
                    rest.len()
                )));
            }
            backoff(rounds).await;
            pending = rest;
        }
    }
}
