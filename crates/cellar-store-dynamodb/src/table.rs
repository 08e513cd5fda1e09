//! The table: its name, creation with the key schema of the crate docs, and TTL.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification, TimeToLiveStatus,
};

use cellar_store::{Result, StoreError};

use crate::keys::{PK, SK, TTL};
use crate::DynamoStore;

/// How long a new table may take to become active (seconds on AWS, at once locally).
const CREATE_TIMEOUT: Duration = Duration::from_secs(300);

/// Refuses names DynamoDB would refuse, before any request is sent.
pub(crate) fn check_table_name(name: &str) -> Result<()> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if (3..=255).contains(&name.len()) && valid_chars {
        return Ok(());
    }
    Err(table_error(
        name,
        "table names are 3 to 255 characters of a-z, A-Z, 0-9, `_`, `-` and `.`",
    ))
}

/// A table that cannot be used as configured; retrying will not help.
fn table_error(table: &str, reason: &str) -> StoreError {
    StoreError::InvalidInput {
        group: String::new(),
        entity: String::new(),
        reason: format!("DynamoDB table `{}`: {reason}", table.escape_debug()),
    }
}

fn definition(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot build a CreateTable request: {e}")))
}

fn key_element(name: &str, kind: KeyType) -> Result<KeySchemaElement> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot build a CreateTable request: {e}")))
}

impl DynamoStore {
    /// Creates the table if it is missing (on-demand billing, so nothing needs sizing) and
    /// waits until it is active; checks an existing table's keys; asks DynamoDB to delete
    /// expired records through TTL on `ttl`. A server without TTL (dynalite) gets a warning:
    /// `trim` still removes expired records.
    pub async fn ensure_table(&self) -> Result<()> {
        let described = self
            .throttled(|| self.client.describe_table().table_name(&self.table).send())
            .await;
        match described {
            Ok(answer) => {
                if let Some(table) = answer.table {
                    let keys: Vec<(&str, &KeyType)> = table
                        .key_schema()
                        .iter()
                        .map(|k| (k.attribute_name(), k.key_type()))
                        .collect();
                    if keys != [(PK, &KeyType::Hash), (SK, &KeyType::Range)] {
                        return Err(table_error(
                            &self.table,
                            &format!("exists with keys {keys:?}, not `{PK}` (hash, string) and `{SK}` (range, number)"),
                        ));
                    }
                }
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                self.create_table().await?;
            }
            Err(e) => return Err(self.backend_error("DescribeTable", e)),
        }
        self.wait_until_active().await?;
        self.enable_ttl().await;
        Ok(())
    }

    async fn create_table(&self) -> Result<()> {
        let attributes = vec![
            definition(PK, ScalarAttributeType::S)?,
            definition(SK, ScalarAttributeType::N)?,
        ];
        let key_schema = vec![
            key_element(PK, KeyType::Hash)?,
            key_element(SK, KeyType::Range)?,
        ];
        let created = self
            .throttled(|| {
                self.client
                    .create_table()
                    .table_name(&self.table)
                    .set_attribute_definitions(Some(attributes.clone()))
                    .set_key_schema(Some(key_schema.clone()))
                    .billing_mode(BillingMode::PayPerRequest)
                    .send()
            })
            .await;
        match created {
            Ok(_) => {
                tracing::info!(table = %self.table, "created the DynamoDB table");
                Ok(())
            }
            // Another process created it meanwhile.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(self.backend_error("CreateTable", e)),
        }
    }

    async fn wait_until_active(&self) -> Result<()> {
        let deadline = Instant::now() + CREATE_TIMEOUT;
        let mut pause = Duration::from_millis(50);
        loop {
            let answer = self
                .throttled(|| self.client.describe_table().table_name(&self.table).send())
                .await
                .map_err(|e| self.backend_error("DescribeTable", e))?;
            let status = answer.table.and_then(|t| t.table_status);
            if status == Some(TableStatus::Active) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Backend(format!(
                    "DynamoDB table `{}` is not active after {} s (status {status:?})",
                    self.table,
                    CREATE_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Turns on TTL on the `ttl` attribute unless it is on already. Failures only warn: the
    /// store works without it.
    async fn enable_ttl(&self) {
        let described = self
            .throttled(|| {
                self.client
                    .describe_time_to_live()
                    .table_name(&self.table)
                    .send()
            })
            .await;
        match described {
            Ok(answer) => {
                let description = answer.time_to_live_description;
                let status = description.as_ref().and_then(|d| d.time_to_live_status());
                let attribute = description.as_ref().and_then(|d| d.attribute_name());
                if matches!(
                    status,
                    Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
                ) {
                    if attribute != Some(TTL) {
                        tracing::warn!(table = %self.table, attribute, "TTL is on for another attribute; records past max_age are removed by trim only");
                    }
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(table = %self.table, error = %self.backend_error("DescribeTimeToLive", e), "the server does not report TTL; records past max_age are removed by trim only");
                return;
            }
        }
        let specification = match TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(TTL)
            .build()
        {
            Ok(specification) => specification,
            Err(e) => {
                tracing::warn!(table = %self.table, error = %e, "cannot build an UpdateTimeToLive request");
                return;
            }
        };
        let updated = self
            .throttled(|| {
                self.client
                    .update_time_to_live()
                    .table_name(&self.table)
                    .time_to_live_specification(specification.clone())
                    .send()
            })
            .await;
        match updated {
            Ok(_) => tracing::info!(table = %self.table, "enabled TTL on `{TTL}`"),
            Err(e) => {
                tracing::warn!(table = %self.table, error = %self.backend_error("UpdateTimeToLive", e), "cannot enable TTL; records past max_age are removed by trim only");
            }
        }
    }

    /// Deletes the table and every record in it (test tables, decommissioning). A missing
    /// table is not an error.
    pub async fn drop_table(&self) -> Result<()> {
        let deleted = self
            .throttled(|| self.client.delete_table().table_name(&self.table).send())
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(self.backend_error("DeleteTable", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_follow_dynamodb_rules() {
        assert!(check_table_name("cellar-online.v1_test").is_ok());
        for bad in ["ab", "has space", "", "é-table", &"x".repeat(256)] {
            assert!(check_table_name(bad).is_err(), "{bad}");
        }
    }
}
