//! Connections to a standalone Redis or a Redis Cluster, and script calls pipelined on them.

use std::collections::HashMap;
use std::time::Duration;

use cellar_spec::secret::{self, Secret};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisResult, Value};

use super::scripts::{ScriptCall, BUMP_GENERATION, MERGE_SERIES, PUT_IF_NEWER};
use super::{RemoteConfig, RemoteError};

/// A standalone Redis through a reconnecting multiplexed connection, or a Redis Cluster.
#[derive(Clone)]
pub(super) enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Connects lazily: nothing is dialled until the first command, so a Redis that is down
    /// when the server starts only opens the breaker.
    pub(super) fn open(config: &RemoteConfig) -> std::result::Result<Connection, RemoteError> {
        let urls = config
            .urls
            .iter()
            .map(|url| secret::resolve(url))
            .collect::<Result<Vec<Secret>, _>>()?;
        match urls.as_slice() {
            [] => Err(RemoteError::NoUrl),
            [url] => {
                let client =
                    cellar_store_redis::client(url.expose(), &config.tls, "cache", "remote_")?;
                let manager_config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.write_timeout.max(config.timeout)))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                Ok(Connection::Standalone(
                    ConnectionManager::new_lazy_with_config(client, manager_config)?,
                ))
            }
            urls => {
                let client = cellar_store_redis::cluster_client(
                    &seeds(urls),
                    &config.tls,
                    "cache",
                    "remote_",
                )?
                .retries(2)
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.write_timeout.max(config.timeout))
                .build()?;
                let cluster_config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_response_timeout(config.write_timeout.max(config.timeout));
                Ok(Connection::Cluster(
                    client.get_pending_async_connection_with_config(cluster_config),
                ))
            }
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Connection::Standalone(c) => cmd.query_async(c).await,
            Connection::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn query_pipeline(&mut self, pipe: &redis::Pipeline) -> RedisResult<Vec<Value>> {
        match self {
            Connection::Standalone(c) => pipe.query_async(c).await,
            Connection::Cluster(c) => pipe.query_async(c).await,
        }
    }

    pub(super) async fn mget(&mut self, keys: &[Vec<u8>]) -> RedisResult<Vec<Option<Vec<u8>>>> {
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(&k[..]);
        }
        self.query(&cmd).await
    }

    pub(super) async fn get(&mut self, key: &[u8]) -> RedisResult<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.query(&cmd).await
    }

    pub(super) async fn del(&mut self, keys: &[Vec<u8>]) -> RedisResult<()> {
        let mut cmd = redis::cmd("DEL");
        for k in keys {
            cmd.arg(&k[..]);
        }
        self.query::<Value>(&cmd).await.map(|_| ())
    }

    /// Runs script calls pipelined: one pipeline on a standalone Redis, one per slot on a
    /// cluster (a cluster pipeline must stay within one slot), all at once. Returns each call's
    /// reply, a server error as `Value::ServerError`.
    async fn run_calls(&mut self, calls: &[&ScriptCall]) -> RedisResult<Vec<Value>> {
        let groups: Vec<Vec<usize>> = match self {
            Connection::Standalone(_) => vec![(0..calls.len()).collect()],
            Connection::Cluster(_) => {
                let mut by_slot: HashMap<redis::cluster_routing::Slot, Vec<usize>> = HashMap::new();
                for (i, c) in calls.iter().enumerate() {
                    by_slot
                        .entry(redis::cluster_routing::Slot::for_key(&c.key))
                        .or_default()
                        .push(i);
                }
                by_slot.into_values().collect()
            }
        };
        let runs = groups.into_iter().map(|indices| {
            let mut conn = self.clone();
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &indices {
                pipe.add_command(calls[i].cmd());
            }
            async move {
                let replies = conn.query_pipeline(&pipe).await?;
                Ok::<_, redis::RedisError>((indices, replies))
            }
        });
        let mut out = vec![Value::Nil; calls.len()];
        for run in futures::future::join_all(runs).await {
            let (indices, replies) = run?;
            for (i, reply) in indices.into_iter().zip(replies) {
                out[i] = reply;
            }
        }
        Ok(out)
    }

    /// Runs script calls, loading the scripts when Redis does not know them (the first time,
    /// and after a restart emptied its script cache) and running those calls again.
    pub(super) async fn run_scripts(&mut self, calls: &[ScriptCall]) -> RedisResult<Vec<Value>> {
        let all: Vec<&ScriptCall> = calls.iter().collect();
        let mut replies = self.run_calls(&all).await?;
        let unknown: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                matches!(r, Value::ServerError(e)
                    if e.kind() == Some(redis::ServerErrorKind::NoScript))
            })
            .map(|(i, _)| i)
            .collect();
        if unknown.is_empty() {
            return Ok(replies);
        }
        self.load_scripts().await?;
        let again: Vec<&ScriptCall> = unknown.iter().map(|&i| &calls[i]).collect();
        let retried = self.run_calls(&again).await?;
        for (i, reply) in unknown.into_iter().zip(retried) {
            replies[i] = reply;
        }
        Ok(replies)
    }

    async fn load_scripts(&mut self) -> RedisResult<()> {
        for source in [PUT_IF_NEWER, MERGE_SERIES, BUMP_GENERATION] {
            let mut cmd = redis::cmd("SCRIPT");
            cmd.arg("LOAD").arg(source);
            self.query::<Value>(&cmd).await?;
        }
        Ok(())
    }
}

/// The resolved seed URLs, for the cluster client.
fn seeds(urls: &[Secret]) -> Vec<String> {
    urls.iter().map(|u| u.expose().to_owned()).collect()
}
