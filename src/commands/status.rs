//! `ponte status`: the operator's overview of a relay over its admin API (`GET
//! /_ponte/admin/status`): every tunnel, its agents (address, version, since when), when one was
//! last seen, its requests in the last minute, and its queue (pending, failed, oldest pending).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Method;

use super::CommandError;
use super::deliveries::{AdminArgs, AdminClient};
use crate::protocol::admin::{ClusterStatus, StatusResponse, TunnelStatus};

/// Run `ponte status`.
pub fn run(args: AdminArgs) -> Result<(), CommandError> {
    let client = AdminClient::new(&args)?;
    super::runtime()?.block_on(async move {
        let (raw, status): (Bytes, StatusResponse) = client.call(Method::GET, "status").await?;
        if args.json {
            println!("{}", String::from_utf8_lossy(&raw));
        } else {
            print!("{}", render(&status));
        }
        Ok(())
    })
}

/// The status as the text `ponte status` prints.
pub fn render(s: &StatusResponse) -> String {
    let now = parse(&s.now);
    let ago = |t: &str| -> String {
        match (now, parse(t)) {
            (Some(now), Some(t)) => short(now.duration_since(t).unwrap_or_default()),
            _ => t.to_string(),
        }
    };
    let mut out = format!("relay {} up {}", s.version, ago(&s.started_at));
    if s.draining {
        out.push_str(" (draining: shutting down)");
    }
    out.push('\n');
    if s.tunnels.is_empty() {
        out.push_str("no tunnels configured\n");
        return out;
    }
    out.push_str(&format!(
        "\n{:<20} {:<8} {:>6}  {:<12} {:>7} {:>7} {:>6}  OLDEST PENDING\n",
        "TUNNEL", "DELIVERY", "AGENTS", "LAST SEEN", "REQ/MIN", "PENDING", "FAILED"
    ));
    for t in &s.tunnels {
        let last_seen = match (&t.last_seen, t.agents.is_empty()) {
            (_, false) => "now".to_string(),
            (Some(seen), true) => format!("{} ago", ago(seen)),
            (None, true) => "never".to_string(),
        };
        let (pending, failed, oldest) = match &t.queue {
            Some(q) => (q.pending.to_string(), q.failed.to_string(), oldest(t)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<20} {:<8} {:>6}  {:<12} {:>7} {:>7} {:>6}  {}\n",
            t.name,
            t.delivery,
            t.agents.len(),
            last_seen,
            t.requests_per_minute,
            pending,
            failed,
            oldest
        ));
    }
    if let Some(c) = &s.cluster {
        out.push_str(&nodes(c));
    }
    let online: Vec<_> = s
        .tunnels
        .iter()
        .flat_map(|t| t.agents.iter().map(move |a| (t, a)))
        .collect();
    if !online.is_empty() {
        out.push_str(&format!(
            "\n{:<20} {:<22} {:<14} {:<26} IN FLIGHT\n",
            "AGENT OF", "ADDRESS", "VERSION", "CONNECTED"
        ));
        for (t, a) in online {
            out.push_str(&format!(
                "{:<20} {:<22} {:<14} {:<26} {}\n",
                t.name,
                a.address,
                a.version.as_deref().unwrap_or("unknown"),
                format!("{} ago", ago(&a.connected_since)),
                a.streams_in_use
            ));
        }
    }
    out
}

/// The cluster's nodes: id (this one marked), advertise URL, last heartbeat, tunnels held.
fn nodes(c: &ClusterStatus) -> String {
    let mut out = format!(
        "\n{:<22} {:<30} {:<15} TUNNELS\n",
        "NODE", "ADVERTISE", "HEARTBEAT"
    );
    if let Some(e) = &c.error {
        out.push_str(&format!("(the nodes could not be read: {e})\n"));
    }
    for n in &c.nodes {
        let id = if n.id == c.node_id {
            format!("{} (this)", n.id)
        } else {
            n.id.clone()
        };
        let stale = if n.heartbeat_age_secs >= crate::cluster::ENTRY_TTL.as_secs() {
            " (gone?)"
        } else {
            ""
        };
        let tunnels = if n.tunnels.is_empty() {
            "-".to_string()
        } else {
            n.tunnels.join(",")
        };
        out.push_str(&format!(
            "{:<22} {:<30} {:<15} {}\n",
            id,
            n.advertise,
            format!("{} ago{stale}", short(Duration::from_secs(n.heartbeat_age_secs))),
            tunnels
        ));
    }
    out
}

/// The oldest pending delivery's age, and why it waits when no agent is there to take it.
fn oldest(t: &TunnelStatus) -> String {
    let Some(q) = &t.queue else {
        return "-".into();
    };
    let Some(age) = q.oldest_pending_age_secs else {
        return "-".into();
    };
    let age = short(Duration::from_secs(age));
    if t.waiting_for_agent() {
        format!("{age} (waiting for the agent)")
    } else {
        age
    }
}

fn parse(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(t).ok()
}

/// A duration in its two largest units: `45s`, `12m 5s`, `3h 12m`, `2d 4h`.
fn short(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, mins, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {s}s"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::admin::{AgentStatus, QueueStatus};

    fn tunnel(name: &str, agents: usize, pending: u64) -> TunnelStatus {
        TunnelStatus {
            name: name.into(),
            delivery: "queue".into(),
            agents: (0..agents)
                .map(|i| AgentStatus {
                    id: format!("agent-{i}"),
                    address: "203.0.113.5:51234".into(),
                    version: Some("0.1.0".into()),
                    connected_since: "2026-01-01T09:00:00Z".into(),
                    streams_in_use: 0,
                })
                .collect(),
            last_seen: Some("2026-01-01T09:55:00Z".into()),
            requests_per_minute: 42,
            queue: Some(QueueStatus {
                pending,
                in_flight: 0,
                failed: 1,
                oldest_pending: Some("2026-01-01T09:48:00Z".into()),
                oldest_pending_age_secs: Some(12 * 60),
            }),
        }
    }

    #[test]
    fn offline_tunnels_with_a_backlog_say_they_wait_for_the_agent() {
        let s = StatusResponse {
            version: "0.1.0".into(),
            now: "2026-01-01T10:00:00Z".into(),
            started_at: "2026-01-01T07:00:00Z".into(),
            draining: false,
            store: true,
            tunnels: vec![tunnel("offline", 0, 3), tunnel("online", 1, 3)],
            cluster: None,
        };
        let text = render(&s);
        let line = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap().to_string();
        assert!(text.starts_with("relay 0.1.0 up 3h 0m"), "{text}");
        assert!(line("offline").contains("5m 0s ago"), "{text}");
        assert!(
            line("offline").contains("12m 0s (waiting for the agent)"),
            "{text}"
        );
        assert!(line("online ").contains("now"), "{text}");
        assert!(
            text.contains("REQ/MIN") && line("online ").contains(" 42 "),
            "{text}"
        );
        assert!(!line("online ").contains("waiting"), "{text}");
        assert!(
            text.contains("203.0.113.5:51234") && text.contains("1h 0m ago"),
            "{text}"
        );
    }

    #[test]
    fn a_cluster_lists_its_nodes_and_marks_this_one_and_silent_ones() {
        use crate::protocol::admin::NodeStatus;
        let node = |id: &str, age: u64, tunnels: &[&str]| NodeStatus {
            id: id.into(),
            advertise: format!("https://{id}.internal:443"),
            started_at: "2026-01-01T07:00:00Z".into(),
            last_heartbeat: "2026-01-01T09:59:58Z".into(),
            heartbeat_age_secs: age,
            tunnels: tunnels.iter().map(|t| t.to_string()).collect(),
        };
        let s = StatusResponse {
            version: "0.1.0".into(),
            now: "2026-01-01T10:00:00Z".into(),
            started_at: "2026-01-01T07:00:00Z".into(),
            draining: false,
            store: true,
            tunnels: vec![tunnel("online", 1, 0)],
            cluster: Some(ClusterStatus {
                node_id: "relay-1".into(),
                nodes: vec![node("relay-1", 2, &["online"]), node("relay-2", 95, &[])],
                error: None,
            }),
        };
        let text = render(&s);
        let line = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap().to_string();
        assert!(text.contains("NODE"), "{text}");
        assert!(line("relay-1").contains("relay-1 (this)"), "{text}");
        assert!(line("relay-1").contains("https://relay-1.internal:443"), "{text}");
        assert!(
            line("relay-1").contains("2s ago") && line("relay-1").ends_with("online"),
            "{text}"
        );
        assert!(
            line("relay-2").contains("1m 35s ago (gone?)") && line("relay-2").ends_with(" -"),
            "{text}"
        );
    }

    #[test]
    fn short_durations() {
        assert_eq!(short(Duration::from_secs(45)), "45s");
        assert_eq!(short(Duration::from_secs(3 * 3600 + 12 * 60 + 5)), "3h 12m");
        assert_eq!(short(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2d 4h");
    }
}
