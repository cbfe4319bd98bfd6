//! The tunnels of `relay.yaml`: names, token hashes, delivery mode, edge auth and queue settings.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use super::{ByteSize, EnvString, Secret, duration, parse_scalar};

/// A tunnel name: one DNS label, lowercase letters, digits and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelName(String);

impl TunnelName {
    /// Validate a name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && !s.starts_with('-')
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(TunnelName(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a valid tunnel name; use lowercase letters, digits and `-` (it becomes a DNS label)"
            ))
        }
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TunnelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TunnelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, TunnelName::parse)
    }
}

/// How a tunnel treats requests (see DESIGN.md, "Delivery modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Proxy live; agent offline → 503.
    #[default]
    Direct,
    /// Store durably, answer 202, deliver when the agent is up.
    Queue,
    /// Proxy live when the agent is up, queue when it is not.
    Fallback,
}

/// The SHA-256 of a token; the relay never keeps the token itself.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hash a presented token.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }
    /// Parse the hex form written as `token_sha256:`.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let bytes = hex::decode(s.trim()).map_err(|_| {
            "token_sha256 must be 64 hex digits (the output of `printf %s TOKEN | sha256sum`)".to_string()
        })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            "token_sha256 must be 64 hex digits (the output of `printf %s TOKEN | sha256sum`)".to_string()
        })?;
        Ok(TokenHash(arr))
    }
    /// Constant-time comparison.
    pub fn matches(&self, other: &TokenHash) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}…", hex::encode(&self.0[..4]))
    }
}

/// One tunnel's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawTunnel")]
pub struct TunnelConfig {
    /// Hashes of the tokens agents of this tunnel present.
    pub tokens: Vec<TokenHash>,
    /// What happens to requests: live proxy, durable queue, or both.
    pub delivery: DeliveryMode,
    /// Credentials the public sender must present (checked at the relay).
    pub auth: Option<EdgeAuth>,
    /// A lower body limit for this tunnel.
    pub max_body_bytes: Option<ByteSize>,
    /// Queue behaviour (used in `queue` and `fallback` modes).
    pub queue: QueueSettings,
}

/// Settings of the durable queue of one tunnel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Methods that are queued; others are proxied live (or 503 while offline).
    pub methods: Vec<EnvString>,
    /// Deliver strictly in arrival order (one at a time).
    pub ordered: bool,
    /// Deliveries in flight at once.
    pub concurrency: u32,
    /// Largest body accepted into the queue; larger gets 413.
    pub max_body_bytes: ByteSize,
    /// Waits between attempts; the last one repeats until `max_age`.
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// Give up (status `failed`) after this long since the request arrived.
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// Time one attempt may take before it counts as a timeout.
    #[serde(with = "duration")]
    pub attempt_timeout: Duration,
}

/// Default largest queued body: webhooks are small, and this bounds memory per delivery.
pub const DEFAULT_QUEUE_MAX_BODY: u64 = 10 * 1024 * 1024;

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            methods: ["POST", "PUT", "PATCH", "DELETE"]
                .iter()
                .map(|m| EnvString::from_static(m))
                .collect(),
            ordered: false,
            concurrency: 8,
            max_body_bytes: ByteSize(DEFAULT_QUEUE_MAX_BODY),
            // Standard Webhooks' example schedule: ~3 days in all once the last step repeats.
            retry_schedule: [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            max_age: Duration::from_secs(3 * 24 * 3600),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    struct Item(Duration);
    impl<'de> Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parse_scalar(d, duration::parse).map(Item)
        }
    }
    let items = Vec::<Item>::deserialize(d)?;
    if items.is_empty() {
        return Err(serde::de::Error::custom(
            "retry_schedule needs at least one duration",
        ));
    }
    if items.iter().any(|i| i.0.is_zero()) {
        return Err(serde::de::Error::custom(
            "retry_schedule: every wait must be longer than 0s (e.g. 50ms)",
        ));
    }
    Ok(items.into_iter().map(|i| i.0).collect())
}

/// Credentials required from public senders. When several are set, any one that matches admits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeAuth {
    /// HTTP basic auth (`Authorization: Basic …`), as SINtegre and many senders offer.
    #[serde(default)]
    pub basic: Option<BasicAuth>,
    /// A header that must carry an exact value, e.g. `Authorization: Bearer …`.
    #[serde(default)]
    pub header: Option<HeaderAuth>,
    /// A query parameter that must carry an exact value (for senders that cannot add headers,
    /// like Chatwoot). The parameter is removed before the request is forwarded.
    #[serde(default)]
    pub query: Option<QueryAuth>,
}

/// A user name and password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// User name.
    pub user: EnvString,
    /// Password.
    pub password: Secret,
}

/// A header name and the value it must have.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderAuth {
    /// Header name, case-insensitive.
    pub name: EnvString,
    /// Exact value.
    pub value: Secret,
}

/// A query parameter and the value it must have.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryAuth {
    /// Parameter name.
    pub name: EnvString,
    /// Exact value.
    pub value: Secret,
}

/// One value or a list of them (`token: x` or `token: [x, y]`). Hand-written rather than an
/// untagged enum so a bad value keeps its own error message and line.
struct OneOrMany<T>(Vec<T>);

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(serde::de::value::StrDeserializer::<E>::new(v)).map(|t| OneOrMany(vec![t]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    #[serde(default)]
    token: Option<OneOrMany<Secret>>,
    #[serde(default)]
    token_sha256: Option<OneOrMany<EnvString>>,
    #[serde(default)]
    delivery: DeliveryMode,
    #[serde(default)]
    auth: Option<EdgeAuth>,
    #[serde(default)]
    max_body_bytes: Option<ByteSize>,
    #[serde(default)]
    queue: QueueSettings,
}

impl TryFrom<RawTunnel> for TunnelConfig {
    type Error = String;

    fn try_from(raw: RawTunnel) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for t in raw.token.map(OneOrMany::into_vec).unwrap_or_default() {
            if t.expose().len() < 16 {
                return Err("token is shorter than 16 characters; use a long random value (e.g. `openssl rand -hex 32`)".into());
            }
            tokens.push(TokenHash::of(t.expose()));
        }
        for h in raw.token_sha256.map(OneOrMany::into_vec).unwrap_or_default() {
            tokens.push(TokenHash::from_hex(h.as_str())?);
        }
        if tokens.is_empty() {
            return Err(
                "the tunnel has no `token` or `token_sha256`; add one so its agent can connect".into(),
            );
        }
        if raw.queue.concurrency == 0 {
            return Err("queue.concurrency must be at least 1".into());
        }
        for m in &raw.queue.methods {
            if http::Method::from_bytes(m.as_str().as_bytes()).is_err() {
                return Err(format!("queue.methods: `{m}` is not an HTTP method"));
            }
        }
        Ok(TunnelConfig {
            tokens,
            delivery: raw.delivery,
            auth: raw.auth,
            max_body_bytes: raw.max_body_bytes,
            queue: raw.queue,
        })
    }
}
