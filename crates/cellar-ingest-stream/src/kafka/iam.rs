//! AWS MSK IAM access control: SASL OAUTHBEARER with, as the token, a SigV4-presigned
//! `kafka-cluster:Connect` request signed with credentials from the AWS credential chain
//! (environment, profile, web identity, container or instance role).
//!
//! librdkafka asks for a token when a client starts and again at 80% of the last one's
//! lifetime, through [`ClusterContext`] (and the stream source's own context), on the thread
//! that polls the client. The credential chain is async: it runs on a runtime of its own, on a
//! thread of its own, so the call works from any thread, a runtime's worker included.

use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rdkafka::client::OAuthToken;
use rdkafka::consumer::ConsumerContext;
use rdkafka::ClientContext;

use super::lock;

/// How long a token is valid: MSK's signers use 15 minutes.
const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
/// Credentials that expire sooner than this are fetched again before signing.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);
/// How long the credential chain may take (instance metadata, STS) before the token fails;
/// librdkafka asks again.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(30);
const SIGNING_NAME: &str = "kafka-cluster";

/// Signs MSK IAM tokens for one cluster's region.
#[derive(Debug)]
pub struct MskIamSigner {
    region: String,
    /// The last credentials the chain gave, reused until they are about to expire.
    credentials: Mutex<Option<Credentials>>,
}

impl MskIamSigner {
    /// A signer for the cluster at `bootstrap_servers`: its region is read from an MSK broker
    /// name (`b-1.c.x.c2.kafka.eu-west-1.amazonaws.com:9098`), else from `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`.
    pub fn for_cluster(bootstrap_servers: &str) -> Result<MskIamSigner, String> {
        let region = region_of(bootstrap_servers)
            .or_else(|| {
                ["AWS_REGION", "AWS_DEFAULT_REGION"]
                    .iter()
                    .filter_map(|v| std::env::var(v).ok())
                    .find(|r| !r.trim().is_empty())
            })
            .ok_or_else(|| {
                format!(
                    "AWS_MSK_IAM needs the cluster's AWS region: none in the broker names `{bootstrap_servers}`, and neither AWS_REGION nor AWS_DEFAULT_REGION is set"
                )
            })?;
        Ok(MskIamSigner {
            region: region.trim().to_owned(),
            credentials: Mutex::new(None),
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// A token signed now, with credentials from the chain.
    pub fn token(&self) -> Result<OAuthToken, String> {
        let credentials = self.credentials()?;
        presigned_token(&self.region, &credentials, SystemTime::now())
    }

    fn credentials(&self) -> Result<Credentials, String> {
        let fresh = |c: &Credentials| {
            c.expiry()
                .is_none_or(|at| at > SystemTime::now() + CREDENTIALS_MARGIN)
        };
        if let Some(credentials) = lock(&self.credentials).as_ref().filter(|c| fresh(c)) {
            return Ok(credentials.clone());
        }
        let region = self.region.clone();
        let fetched = std::thread::scope(|s| {
            s.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("starting the AWS credential runtime: {e}"))?;
                runtime.block_on(chain_credentials(region))
            })
            .join()
            .unwrap_or_else(|_| Err("the AWS credential chain panicked".to_owned()))
        })?;
        *lock(&self.credentials) = Some(fetched.clone());
        Ok(fetched)
    }
}

async fn chain_credentials(region: String) -> Result<Credentials, String> {
    use aws_smithy_http_client::tls;
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let lookup = async {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region))
            .http_client(https)
            .load()
            .await;
        let provider = sdk
            .credentials_provider()
            .ok_or_else(|| "no AWS credential provider is configured".to_owned())?;
        provider
            .provide_credentials()
            .await
            .map_err(|e| format!("AWS credentials: {}", source_chain(&e)))
    };
    tokio::time::timeout(CREDENTIALS_TIMEOUT, lookup)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "AWS credentials: the credential chain did not answer within {}s",
                CREDENTIALS_TIMEOUT.as_secs()
            ))
        })
}

fn source_chain(e: &dyn Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// The region in an MSK broker name: `...kafka.<region>.amazonaws.com` (provisioned) or
/// `...kafka-serverless.<region>.amazonaws.com` (serverless).
fn region_of(bootstrap_servers: &str) -> Option<String> {
    bootstrap_servers.split(',').find_map(|server| {
        let host = server.trim().rsplit_once(':').map_or(server, |(h, _)| h);
        let labels: Vec<&str> = host.split('.').collect();
        let at = labels
            .iter()
            .position(|l| *l == "kafka" || *l == "kafka-serverless")?;
        match labels.get(at + 1..) {
            Some([region, "amazonaws", "com", ..]) if !region.is_empty() => {
                Some((*region).to_owned())
            }
            _ => None,
        }
    })
}

/// The MSK IAM token: the URL `https://kafka.<region>.amazonaws.com/?Action=kafka-cluster:Connect`
/// presigned with SigV4 for `TOKEN_LIFETIME` (or until the credentials expire, if sooner),
/// base64url-encoded without padding.
pub(crate) fn presigned_token(
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<OAuthToken, String> {
    let url = format!("https://kafka.{region}.amazonaws.com/?Action=kafka-cluster%3AConnect");
    let identity = Identity::from(credentials.clone());
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| format!("signing the MSK IAM token: {e}"))?
        .into();
    let signable = SignableRequest::new(
        "GET",
        url.as_str(),
        std::iter::empty(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| format!("signing the MSK IAM token: {e}"))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| format!("signing the MSK IAM token: {e}"))?
        .into_parts();
    let mut request = http::Request::builder()
        .method("GET")
        .uri(url.as_str())
        .body(())
        .map_err(|e| format!("signing the MSK IAM token: {e}"))?;
    instructions.apply_to_request_http1x(&mut request);
    // Not signed: MSK reads it as the client's name, as AWS's own signers send it.
    let signed = format!("{}&User-Agent=cellar", request.uri());
    let mut expires = now + TOKEN_LIFETIME;
    if let Some(at) = credentials.expiry() {
        expires = expires.min(at);
    }
    let lifetime_ms = expires
        .duration_since(UNIX_EPOCH)
        .map_err(|e| format!("signing the MSK IAM token: {e}"))?
        .as_millis();
    Ok(OAuthToken {
        token: URL_SAFE_NO_PAD.encode(signed),
        // Not used by MSK: the token names the identity.
        principal_name: "cellar".to_owned(),
        lifetime_ms: i64::try_from(lifetime_ms).unwrap_or(i64::MAX),
    })
}

/// A token for librdkafka's OAUTHBEARER refresh: from the signer if the connection uses
/// AWS_MSK_IAM. librdkafka asks only when `sasl.mechanism` is OAUTHBEARER.
pub(super) fn oauth_token(signer: Option<&MskIamSigner>) -> Result<OAuthToken, Box<dyn Error>> {
    match signer {
        Some(signer) => signer.token().map_err(|e| {
            tracing::warn!(error = %e, "kafka: no MSK IAM token");
            e.into()
        }),
        None => Err("sasl.mechanism OAUTHBEARER needs `sasl_mechanism = \"AWS_MSK_IAM\"` or librdkafka's `sasl.oauthbearer.method = oidc`".into()),
    }
}

/// The context of the Kafka clients Cellar builds (producers, admin and dead-letter clients,
/// batch workers; the stream source has its own): it answers librdkafka's token requests.
#[derive(Debug, Clone, Default)]
pub struct ClusterContext {
    signer: Option<Arc<MskIamSigner>>,
}

impl ClusterContext {
    pub(super) fn new(signer: Option<Arc<MskIamSigner>>) -> ClusterContext {
        ClusterContext { signer }
    }

    pub(super) fn signer(&self) -> Option<&MskIamSigner> {
        self.signer.as_deref()
    }

    pub(super) fn shared_signer(&self) -> Option<Arc<MskIamSigner>> {
        self.signer.clone()
    }
}

impl ClientContext for ClusterContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn Error>> {
        oauth_token(self.signer())
    }
}

impl ConsumerContext for ClusterContext {}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    fn hmac(key: &[u8], data: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 3986 encoding, as SigV4's canonical query string wants it.
    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_token_is_a_presigned_connect_url_whose_signature_checks_out() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session/token+with=odd chars".into()),
            None,
            "test",
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_796_500_800); // 2026-12-05T20:00:00Z
        let token = presigned_token("eu-west-1", &credentials, now).unwrap();
        assert!(!token.token.contains('=') && !token.token.contains('+'));
        assert_eq!(
            token.lifetime_ms,
            (1_796_500_800 + 900) * 1000,
            "15 minutes from now"
        );
        let url = String::from_utf8(URL_SAFE_NO_PAD.decode(&token.token).unwrap()).unwrap();
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "https://kafka.eu-west-1.amazonaws.com/");
        let mut params: Vec<(String, String)> = query
            .split('&')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (decode(k), decode(v))
            })
            .collect();
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {name} in {url}"))
        };
        assert_eq!(get("Action"), "kafka-cluster:Connect");
        assert_eq!(get("X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
        assert_eq!(
            get("X-Amz-Credential"),
            "AKIDEXAMPLE/20261205/eu-west-1/kafka-cluster/aws4_request"
        );
        assert_eq!(get("X-Amz-Date"), "20261205T200000Z");
        assert_eq!(get("X-Amz-Expires"), "900");
        assert_eq!(get("X-Amz-SignedHeaders"), "host");
        assert_eq!(get("X-Amz-Security-Token"), "session/token+with=odd chars");
        assert_eq!(get("User-Agent"), "cellar");
        let signature = get("X-Amz-Signature");

        // The signature, computed here from SigV4's definition.
        params.retain(|(k, _)| k != "X-Amz-Signature" && k != "User-Agent");
        params.sort();
        let canonical_query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let canonical_request = format!(
            "GET\n/\n{}\nhost:kafka.eu-west-1.amazonaws.com\n\nhost\n{}",
            canonical_query.join("&"),
            hex(&Sha256::digest(b""))
        );
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n20261205T200000Z\n20261205/eu-west-1/kafka-cluster/aws4_request\n{}",
            hex(&Sha256::digest(canonical_request.as_bytes()))
        );
        let key = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20261205");
        let key = hmac(&key, "eu-west-1");
        let key = hmac(&key, "kafka-cluster");
        let key = hmac(&key, "aws4_request");
        assert_eq!(signature, hex(&hmac(&key, &string_to_sign)));
    }

    #[test]
    fn a_token_lives_no_longer_than_its_credentials() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_500_800);
        let credentials = Credentials::new(
            "AKID",
            "secret",
            None,
            Some(now + Duration::from_secs(60)),
            "test",
        );
        let token = presigned_token("us-east-1", &credentials, now).unwrap();
        assert_eq!(token.lifetime_ms, (1_796_500_800 + 60) * 1000);
    }

    #[test]
    fn the_region_comes_from_msk_broker_names() {
        assert_eq!(
            region_of("b-1.orders.abc123.c2.kafka.eu-west-1.amazonaws.com:9098").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region_of("localhost:9092,boot-x.c1.kafka-serverless.us-east-2.amazonaws.com:9098")
                .as_deref(),
            Some("us-east-2")
        );
        assert_eq!(region_of("kafka.internal:9092"), None);
        assert_eq!(region_of("b-1.kafka.example.com:9092"), None);
    }

    #[test]
    fn without_a_signer_the_token_request_is_refused_with_the_setting_to_use() {
        let Err(err) = oauth_token(None) else {
            panic!("a token without a signer")
        };
        assert!(err.to_string().contains("AWS_MSK_IAM"), "{err}");
    }
}
