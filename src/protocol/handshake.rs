//! The connect handshake: path, upgrade token and the headers each side sends.

use http::HeaderName;

/// Path of the agent's upgrade request on the relay.
pub const CONNECT_PATH: &str = "/_ponte/v1/connect";
/// Path prefix reserved on the relay's own host (connect, health, metrics, admin).
pub const RESERVED_PREFIX: &str = "/_ponte/";
/// Health endpoint on the relay.
pub const HEALTH_PATH: &str = "/_ponte/health";
/// Readiness endpoint on the relay: 200 while it takes requests, 503 while it drains.
pub const READY_PATH: &str = "/_ponte/ready";
/// Prometheus metrics on the relay's public port (needs `metrics_token`).
pub const METRICS_PATH: &str = "/_ponte/metrics";
/// The `Upgrade` token of protocol v1: HTTP/2 with reversed roles.
pub const UPGRADE_TOKEN: &str = "ponte-h2";

/// Agent → relay: the agent's version.
pub static PONTE_VERSION: HeaderName = HeaderName::from_static("ponte-version");
/// Agent → relay: an id that stays the same across reconnects of one agent process, so the relay
/// can evict the stale session of a connection that died silently.
pub static PONTE_AGENT_ID: HeaderName = HeaderName::from_static("ponte-agent-id");
/// Agent → relay: which of the agent's concurrent sessions this is (`0`, `1`, … below its
/// `ha_connections`). The relay replaces an older session of the same agent *and* slot (a dead
/// connection being re-dialled), never a sibling slot. Absent from older agents: read it as 0.
pub static PONTE_AGENT_SLOT: HeaderName = HeaderName::from_static("ponte-agent-slot");
/// Most sessions one agent instance may hold on a relay (slots `0..MAX_AGENT_SLOTS`): the most
/// `ha_connections` allows. The relay folds a higher slot into this range, so one agent id never
/// holds more connections than this.
pub const MAX_AGENT_SLOTS: u32 = 8;
/// Relay → agent (in the 101): the tunnel the token belongs to.
pub static PONTE_TUNNEL: HeaderName = HeaderName::from_static("ponte-tunnel");
/// Relay → agent (in the 101): where the public can reach the tunnel.
pub static PONTE_PUBLIC_URL: HeaderName = HeaderName::from_static("ponte-public-url");
/// Relay → agent (in the 101): how many agents (distinct instance ids, this one included) now
/// serve the tunnel. More than one splits requests between them, which is a mistake when they
/// were meant to serve different upstreams. Absent from older relays: read it as 1.
pub static PONTE_TUNNEL_AGENTS: HeaderName = HeaderName::from_static("ponte-tunnel-agents");
/// Relay → agent (in the 101): the id of the relay node that took the login (`cluster.node_id`, or
/// a random id per relay process when no cluster is configured), so an agent with several sessions
/// can tell whether two of them reached the same node. Absent from older relays: the agent then
/// takes each address for its own node.
pub static PONTE_NODE: HeaderName = HeaderName::from_static("ponte-node");
/// On responses Ponte itself generated (not the upstream): a short machine-readable cause.
pub static PONTE_ERROR: HeaderName = HeaderName::from_static("ponte-error");
/// Agent → relay, on the answer to a websocket CONNECT that the upstream did not upgrade: the
/// upstream's own status. The CONNECT's status cannot carry a 2xx, which on an HTTP/2 CONNECT
/// means "tunnel open", so the agent answers such a status as 502 and names the real one here;
/// the relay gives the sender the real one.
pub static PONTE_UPSTREAM_STATUS: HeaderName = HeaderName::from_static("ponte-upstream-status");
/// On queued requests and their deliveries: the stable delivery id.
pub static PONTE_DELIVERY_ID: HeaderName = HeaderName::from_static("ponte-delivery-id");
/// On deliveries: the attempt number, starting at 1.
pub static PONTE_ATTEMPT: HeaderName = HeaderName::from_static("ponte-attempt");

/// Largest reason text either side reads from a refused handshake.
pub const MAX_REASON_BYTES: usize = 4096;
