//! Node to node: a public request passed from a relay node without a session for its tunnel to a
//! node that holds one, over HTTP/2 on the peer's ordinary listener.

use http::HeaderName;

/// Path of forwarded requests on a peer node (under the relay's reserved prefix).
pub const FORWARD_PATH: &str = "/_ponte/v1/cluster/forward";

/// The shared `cluster.secret`, proving the sender is a node of the cluster. A header of its own,
/// so the forwarded request keeps the sender's `Authorization` untouched.
pub static PONTE_CLUSTER_SECRET: HeaderName = HeaderName::from_static("ponte-cluster-secret");
/// The tunnel the forwarded request is for.
pub static PONTE_FORWARD_TUNNEL: HeaderName = HeaderName::from_static("ponte-forward-tunnel");
/// The URI of the stream on the tunnel (public scheme and host, forwarded path and query), as the
/// first node built it after routing and edge auth.
pub static PONTE_FORWARD_URI: HeaderName = HeaderName::from_static("ponte-forward-uri");
/// The id of the node that forwarded the request, for the receiving node's access log.
pub static PONTE_FORWARD_NODE: HeaderName = HeaderName::from_static("ponte-forward-node");
