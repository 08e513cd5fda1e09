//! [`KafkaConnection`]: how every Kafka client Cellar builds reaches the cluster (brokers, TLS,
//! SASL, and the operator's further librdkafka properties), turned into a librdkafka
//! configuration in one place, so the stream source, the publishers, the admin client, the
//! dead-letter reader and the batch workers cannot differ.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};

use super::config_error;
use super::iam::{ClusterContext, MskIamSigner};
use crate::source::BrokerError;

/// How the connection to the brokers is carried (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a client authenticates over SASL (librdkafka's `sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// AWS MSK's IAM access control: OAUTHBEARER tokens signed with credentials from the AWS
    /// credential chain.
    #[serde(rename = "AWS_MSK_IAM")]
    AwsMskIam,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::AwsMskIam => "AWS_MSK_IAM",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS and SASL settings of a Kafka connection, named as in Cellar's `[ingest.kafka]`
/// section. Empty strings are unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    pub protocol: SecurityProtocol,
    /// PEM file of the CAs that sign the brokers' certificates; unset: the system's.
    pub ca_file: String,
    /// PEM client certificate, for brokers that authenticate clients by certificate.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    pub sasl_mechanism: Option<SaslMechanism>,
    pub sasl_username: String,
    /// A secret reference (`${NAME}`, `${file:PATH}`) or the password itself; resolved when a
    /// client is built.
    pub sasl_password: String,
}

/// A setting of [`KafkaSecurity`] that is wrong, or wrong with the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityError {
    /// The setting's name in `[ingest.kafka]`.
    pub setting: &'static str,
    pub problem: String,
}

impl fmt::Display for SecurityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.problem)
    }
}

impl std::error::Error for SecurityError {}

fn wrong(setting: &'static str, problem: impl Into<String>) -> SecurityError {
    SecurityError {
        setting,
        problem: problem.into(),
    }
}

fn set(value: &str) -> bool {
    !value.trim().is_empty()
}

impl KafkaSecurity {
    /// Every combination that cannot work is refused here, without IO, naming the setting.
    pub fn validate(&self) -> Result<(), SecurityError> {
        let protocol = self.protocol;
        if !protocol.tls() {
            for (setting, value) in [
                ("ca_file", &self.ca_file),
                ("cert_file", &self.cert_file),
                ("key_file", &self.key_file),
            ] {
                if set(value) {
                    return Err(wrong(
                        setting,
                        format!(
                            "is a TLS setting, but security_protocol is `{protocol}`: use `ssl` or `sasl_ssl`"
                        ),
                    ));
                }
            }
        }
        match (set(&self.cert_file), set(&self.key_file)) {
            (true, false) => {
                return Err(wrong(
                    "key_file",
                    "is needed with cert_file: the client certificate's private key",
                ))
            }
            (false, true) => {
                return Err(wrong(
                    "cert_file",
                    "is needed with key_file: the client certificate the key belongs to",
                ))
            }
            _ => {}
        }
        match (protocol.sasl(), self.sasl_mechanism) {
            (true, None) => {
                return Err(wrong(
                    "sasl_mechanism",
                    format!(
                        "is needed with security_protocol `{protocol}`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or AWS_MSK_IAM"
                    ),
                ))
            }
            (false, Some(mechanism)) => {
                return Err(wrong(
                    "sasl_mechanism",
                    format!(
                        "is `{mechanism}`, but security_protocol is `{protocol}`: use `sasl_ssl` (or `sasl_plaintext`)"
                    ),
                ))
            }
            _ => {}
        }
        if !protocol.sasl() {
            for (setting, value) in [
                ("sasl_username", &self.sasl_username),
                ("sasl_password", &self.sasl_password),
            ] {
                if set(value) {
                    return Err(wrong(
                        setting,
                        format!(
                            "is a SASL setting, but security_protocol is `{protocol}`: use `sasl_ssl` (or `sasl_plaintext`)"
                        ),
                    ));
                }
            }
        }
        match self.sasl_mechanism {
            Some(SaslMechanism::AwsMskIam) => {
                for (setting, value) in [
                    ("sasl_username", &self.sasl_username),
                    ("sasl_password", &self.sasl_password),
                ] {
                    if set(value) {
                        return Err(wrong(
                            setting,
                            "is not used by AWS_MSK_IAM, whose credentials come from the AWS credential chain: remove it",
                        ));
                    }
                }
                if protocol != SecurityProtocol::SaslSsl {
                    return Err(wrong(
                        "security_protocol",
                        format!("is `{protocol}`, but AWS_MSK_IAM needs `sasl_ssl`"),
                    ));
                }
            }
            Some(mechanism) => {
                if !set(&self.sasl_username) {
                    return Err(wrong(
                        "sasl_username",
                        format!("is needed with sasl_mechanism `{mechanism}`"),
                    ));
                }
                if !set(&self.sasl_password) {
                    return Err(wrong(
                        "sasl_password",
                        format!(
                            "is needed with sasl_mechanism `{mechanism}` (a secret reference such as `${{KAFKA_PASSWORD}}`)"
                        ),
                    ));
                }
                cellar_spec::secret::references(&self.sasl_password)
                    .map_err(|e| wrong("sasl_password", e.to_string()))?;
            }
            None => {}
        }
        Ok(())
    }

    /// The librdkafka properties these settings stand for, the password resolved. Reads the
    /// files named, so a missing one is reported with its setting rather than as librdkafka's
    /// OpenSSL error.
    fn properties(&self) -> Result<Vec<(&'static str, String)>, SecurityError> {
        self.validate()?;
        let mut properties = Vec::new();
        if self.protocol != SecurityProtocol::Plaintext {
            properties.push(("security.protocol", self.protocol.as_str().to_owned()));
        }
        for (setting, property, value) in [
            ("ca_file", "ssl.ca.location", &self.ca_file),
            ("cert_file", "ssl.certificate.location", &self.cert_file),
            ("key_file", "ssl.key.location", &self.key_file),
        ] {
            if set(value) {
                readable(setting, value.trim())?;
                properties.push((property, value.trim().to_owned()));
            }
        }
        match self.sasl_mechanism {
            None => {}
            // The tokens come from the clients' context (`KafkaConnection::context`).
            Some(SaslMechanism::AwsMskIam) => {
                properties.push(("sasl.mechanism", "OAUTHBEARER".to_owned()));
            }
            Some(mechanism) => {
                let password = cellar_spec::secret::resolve(&self.sasl_password)
                    .map_err(|e| wrong("sasl_password", e.to_string()))?;
                properties.push(("sasl.mechanism", mechanism.as_str().to_owned()));
                properties.push(("sasl.username", self.sasl_username.trim().to_owned()));
                properties.push(("sasl.password", password.expose().to_owned()));
            }
        }
        Ok(properties)
    }
}

fn readable(setting: &'static str, path: &str) -> Result<(), SecurityError> {
    std::fs::File::open(Path::new(path))
        .map(|_| ())
        .map_err(|e| wrong(setting, format!("cannot read `{path}`: {e}")))
}

/// How to reach a Kafka cluster: what every Kafka client Cellar builds starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaConnection {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    pub security: KafkaSecurity,
    /// Further librdkafka properties (`session.timeout.ms`, ...): the escape hatch for what the
    /// settings do not cover. One contradicting a security setting is refused.
    pub properties: Vec<(String, String)>,
}

impl KafkaConnection {
    /// A plaintext connection to the cluster at `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> KafkaConnection {
        KafkaConnection {
            bootstrap_servers: bootstrap_servers.into(),
            ..KafkaConnection::default()
        }
    }

    /// The librdkafka configuration of a client of this cluster: the brokers, the security
    /// settings, the further properties, then the `required` properties the client depends
    /// on. A further property contradicting a security setting or a required property is
    /// refused, naming it.
    pub fn client_config(&self, required: &[(&str, &str)]) -> Result<ClientConfig, BrokerError> {
        let security = self
            .security
            .properties()
            .map_err(|e| config_error(format!("kafka {e}")))?;
        for (name, value) in &self.properties {
            if let Some((_, ours)) = security.iter().find(|(p, _)| p == name) {
                if ours != value {
                    let shown = if *name == "sasl.password" {
                        "***"
                    } else {
                        value
                    };
                    return Err(config_error(format!(
                        "kafka property `{name}` = `{shown}` contradicts the security settings: set it in one place"
                    )));
                }
            }
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        let mut all: Vec<(&str, &str)> = security.iter().map(|(p, v)| (*p, v.as_str())).collect();
        all.extend_from_slice(required);
        super::apply_properties(&mut config, &self.properties, &all)?;
        Ok(config)
    }
}

impl KafkaConnection {
    /// The context every client of this cluster is created with
    /// (`create_with_context(connection.context()?)`): it signs AWS MSK IAM tokens when the
    /// connection uses AWS_MSK_IAM.
    pub fn context(&self) -> Result<ClusterContext, BrokerError> {
        Ok(ClusterContext::new(self.iam_signer()?))
    }

    pub(super) fn iam_signer(&self) -> Result<Option<Arc<MskIamSigner>>, BrokerError> {
        if self.security.sasl_mechanism != Some(SaslMechanism::AwsMskIam) {
            return Ok(None);
        }
        MskIamSigner::for_cluster(&self.bootstrap_servers)
            .map(|signer| Some(Arc::new(signer)))
            .map_err(|e| config_error(format!("kafka sasl_mechanism: {e}")))
    }
}

impl From<&str> for KafkaConnection {
    fn from(bootstrap_servers: &str) -> KafkaConnection {
        KafkaConnection::new(bootstrap_servers)
    }
}

impl From<&String> for KafkaConnection {
    fn from(bootstrap_servers: &String) -> KafkaConnection {
        KafkaConnection::new(bootstrap_servers.as_str())
    }
}

impl From<String> for KafkaConnection {
    fn from(bootstrap_servers: String) -> KafkaConnection {
        KafkaConnection::new(bootstrap_servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scram() -> KafkaSecurity {
        KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: "cellar".into(),
            sasl_password: "${CELLAR_TEST_KAFKA_PASSWORD_UNSET}".into(),
            ..KafkaSecurity::default()
        }
    }

    #[test]
    fn wrong_combinations_name_the_setting() {
        let cases: Vec<(KafkaSecurity, &str, &str)> = vec![
            (
                KafkaSecurity {
                    ca_file: "/ca.pem".into(),
                    ..KafkaSecurity::default()
                },
                "ca_file",
                "`plaintext`",
            ),
            (
                KafkaSecurity {
                    protocol: SecurityProtocol::Ssl,
                    cert_file: "/c.pem".into(),
                    ..KafkaSecurity::default()
                },
                "key_file",
                "private key",
            ),
            (
                KafkaSecurity {
                    protocol: SecurityProtocol::SaslSsl,
                    ..KafkaSecurity::default()
                },
                "sasl_mechanism",
                "is needed",
            ),
            (
                KafkaSecurity {
                    protocol: SecurityProtocol::Ssl,
                    sasl_mechanism: Some(SaslMechanism::Plain),
                    ..KafkaSecurity::default()
                },
                "sasl_mechanism",
                "`sasl_ssl`",
            ),
            (
                KafkaSecurity {
                    sasl_password: "x".into(),
                    ..KafkaSecurity::default()
                },
                "sasl_password",
                "SASL setting",
            ),
            (
                KafkaSecurity {
                    sasl_username: String::new(),
                    ..scram()
                },
                "sasl_username",
                "SCRAM-SHA-512",
            ),
            (
                KafkaSecurity {
                    sasl_password: "${unclosed".into(),
                    ..scram()
                },
                "sasl_password",
                "not closed",
            ),
            (
                KafkaSecurity {
                    protocol: SecurityProtocol::SaslPlaintext,
                    sasl_mechanism: Some(SaslMechanism::AwsMskIam),
                    ..KafkaSecurity::default()
                },
                "security_protocol",
                "AWS_MSK_IAM needs `sasl_ssl`",
            ),
        ];
        for (security, setting, says) in cases {
            let err = security.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
            assert!(err.problem.contains(says), "{err}");
        }
        scram().validate().unwrap();
    }

    #[test]
    fn security_settings_become_librdkafka_properties_and_the_password_is_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not read here").unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let connection = KafkaConnection {
            bootstrap_servers: "b:9093".into(),
            security: KafkaSecurity {
                ca_file: ca.display().to_string(),
                sasl_password: format!("${{file:{}}}", password.display()),
                ..scram()
            },
            properties: vec![("session.timeout.ms".into(), "6000".into())],
        };
        let config = connection
            .client_config(&[("enable.auto.commit", "false")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.get("bootstrap.servers"), Some("b:9093"));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("ssl.ca.location"), ca.to_str());
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("cellar"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(config.get("session.timeout.ms"), Some("6000"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));

        // A plaintext connection sets no security property: one given as a further property
        // (as before these settings existed) still applies.
        let legacy = KafkaConnection {
            properties: vec![("security.protocol".into(), "ssl".into())],
            ..KafkaConnection::new("b:9093")
        };
        let config = legacy.client_config(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.get("security.protocol"), Some("ssl"));
    }

    #[test]
    fn a_property_contradicting_a_setting_a_missing_file_or_secret_is_refused_without_the_password()
    {
        let contradicting = KafkaConnection {
            security: KafkaSecurity {
                sasl_password: "hunter2".into(),
                ..scram()
            },
            properties: vec![("sasl.password".into(), "other".into())],
            ..KafkaConnection::new("b:9093")
        };
        let err = contradicting.client_config(&[]).unwrap_err();
        assert!(err.message.contains("`sasl.password`"), "{err}");
        assert!(!err.message.contains("hunter2") && !err.message.contains("other"));

        let missing_file = KafkaConnection {
            security: KafkaSecurity {
                protocol: SecurityProtocol::Ssl,
                ca_file: "/nonexistent/ca.pem".into(),
                ..KafkaSecurity::default()
            },
            ..KafkaConnection::new("b:9093")
        };
        let err = missing_file.client_config(&[]).unwrap_err();
        assert!(
            err.message
                .starts_with("kafka ca_file: cannot read `/nonexistent/ca.pem`"),
            "{err}"
        );

        let unset = KafkaConnection {
            security: scram(),
            ..KafkaConnection::new("b:9093")
        };
        let err = unset.client_config(&[]).unwrap_err();
        assert!(
            err.message
                .contains("sasl_password: environment variable `CELLAR_TEST_KAFKA_PASSWORD_UNSET`"),
            "{err}"
        );

        let iam = KafkaConnection {
            security: KafkaSecurity {
                protocol: SecurityProtocol::SaslSsl,
                sasl_mechanism: Some(SaslMechanism::AwsMskIam),
                ..KafkaSecurity::default()
            },
            ..KafkaConnection::new("b:9093")
        };
        let config = iam.client_config(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.get("sasl.mechanism"), Some("OAUTHBEARER"));
        assert_eq!(config.get("sasl.username"), None);
        if ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .all(|v| std::env::var_os(v).is_none())
        {
            let err = iam.context().unwrap_err();
            assert!(err.message.contains("AWS region"), "{err}");
        }
        let msk = KafkaConnection {
            bootstrap_servers: "b-1.c.x.c2.kafka.eu-west-1.amazonaws.com:9098".into(),
            ..iam
        };
        let context = msk.context().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            context.signer().map(MskIamSigner::region),
            Some("eu-west-1")
        );
    }
}
