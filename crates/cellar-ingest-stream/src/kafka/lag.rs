//! Consumer lag per owned partition, as librdkafka's statistics report it.

use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;

use super::{lock, GroupMembership};

/// Consumer lag per partition this member owns, as librdkafka last reported it (the broker's
/// high watermark minus the group's committed offset), refreshed every
/// `statistics.interval.ms` (5 s unless set).
#[derive(Debug, Clone, Default)]
pub struct ConsumerLag(Arc<Mutex<Vec<(String, i32, i64)>>>);

impl ConsumerLag {
    /// (topic, partition, lag) of every owned partition with a known lag.
    pub fn snapshot(&self) -> Vec<(String, i32, i64)> {
        lock(&self.0).clone()
    }
}

impl ClientContext for GroupMembership {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        super::iam::oauth_token(self.iam.as_deref())
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = Vec::new();
        for (name, topic) in &statistics.topics {
            for (id, p) in &topic.partitions {
                // Partition -1 is librdkafka's internal one; a lag of -1 means not known yet.
                if *id >= 0 && p.desired && p.consumer_lag >= 0 {
                    lag.push((name.clone(), *id, p.consumer_lag));
                }
            }
        }
        lag.sort();
        *lock(&self.lag.0) = lag;
    }
}
