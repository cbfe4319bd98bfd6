//! Which relay node each of the agent's sessions holds. Every slot's reconnect loop claims its
//! node here after the handshake: a second session on a node already held by another slot is
//! refused (the loop closes it and tries another address), so `ha_connections` sessions end up
//! on distinct nodes. The combined state is published on the agent's status channel.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::dial::{Handshake, Target};
use super::status::{AgentStatus, SessionView};

/// One live session.
struct Live {
    /// The address or URL it was dialled at.
    key: String,
    /// The node it landed on: the relay's `Ponte-Node`, or the address for relays without one.
    node: String,
    view: SessionView,
    tunnel: String,
    public_url: String,
}

/// Another slot already holds the node this session reached.
#[derive(Debug)]
pub struct AlreadyHeld {
    /// That slot.
    pub slot: usize,
}

#[derive(Default)]
struct Table {
    live: Vec<Option<Live>>,
    /// Targets found to lead to a node a slot held at the time (another address of that node):
    /// (key, node). Skipped while that node is held, so they are not dialled over and over.
    aliases: Vec<(String, String)>,
    /// The last real failure (not "every node is taken"), shown while no session is up.
    last_error: Option<(Duration, String)>,
    /// Sessions opened by a slot that had one before: reconnects, for the status.
    reconnects: u64,
    /// "Running with fewer sessions" was said since the agent last had all it wanted.
    told_fewer: bool,
    stopping: bool,
}

/// The agent's sessions, one entry per slot.
pub struct Board {
    table: Mutex<Table>,
    status: watch::Sender<AgentStatus>,
    /// Has a slot ever had a session (for the reconnect count).
    opened: Mutex<Vec<bool>>,
}

impl Board {
    /// A board for `slots` sessions publishing on `status`.
    pub fn new(slots: usize, status: watch::Sender<AgentStatus>) -> Self {
        let table = Table {
            live: (0..slots).map(|_| None).collect(),
            ..Table::default()
        };
        Board {
            table: Mutex::new(table),
            status,
            opened: Mutex::new(vec![false; slots]),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table stays consistent across a panic elsewhere; keep serving.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions wanted.
    pub fn wanted(&self) -> usize {
        self.lock().live.len()
    }

    /// Does a slot other than `slot` hold the node `key` leads to: a session dialled at `key`,
    /// or one on the node a session dialled at `key` landed on before?
    pub fn key_held_by_other(&self, slot: usize, key: &str) -> bool {
        let table = self.lock();
        let held = |pred: &dyn Fn(&Live) -> bool| {
            table
                .live
                .iter()
                .enumerate()
                .any(|(i, l)| i != slot && l.as_ref().is_some_and(pred))
        };
        held(&|l| l.key == key)
            || table
                .aliases
                .iter()
                .any(|(k, node)| k == key && held(&|l| l.node == *node))
    }

    /// Record `slot`'s new session on `target`, unless another slot holds that node already.
    /// Checked and recorded under one lock, so two slots landing on one node at once cannot
    /// both keep it.
    pub fn claim(&self, slot: usize, target: &Target, handshake: &Handshake) -> Result<(), AlreadyHeld> {
        let node = match &handshake.node {
            Some(id) => format!("node {id}"),
            None => format!("address {}", target.key()),
        };
        let mut table = self.lock();
        if let Some(other) = table
            .live
            .iter()
            .enumerate()
            .find(|(i, l)| *i != slot && l.as_ref().is_some_and(|l| l.node == node))
            .map(|(i, _)| i)
        {
            let key = target.key();
            table.aliases.retain(|(k, _)| *k != key);
            table.aliases.push((key, node));
            return Err(AlreadyHeld { slot: other });
        }
        let key = target.key();
        table.aliases.retain(|(k, _)| *k != key);
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if std::mem::replace(&mut opened[slot], true) {
            table.reconnects += 1;
        }
        table.live[slot] = Some(Live {
            key,
            node,
            view: SessionView {
                slot,
                relay: target.display(),
                node: handshake.node.clone(),
                since: SystemTime::now(),
            },
            tunnel: handshake.tunnel.clone(),
            public_url: handshake.public_url.clone(),
        });
        if table.live.iter().all(Option::is_some) {
            table.told_fewer = false;
        }
        self.publish(&table);
        Ok(())
    }

    /// `slot` has no session and waits `delay` before its next attempt because of `error`.
    /// `all_held` says the only obstacle was that every reachable node already has a session of
    /// this agent: not an error worth showing while no session is up.
    pub fn waiting(&self, slot: usize, delay: Duration, error: String, all_held: bool) {
        let mut table = self.lock();
        table.live[slot] = None;
        if !all_held || table.last_error.is_none() {
            table.last_error = Some((delay, error));
        }
        self.publish(&table);
    }

    /// The first time since the agent last had all its sessions: true, so the caller says once
    /// that it runs with fewer.
    pub fn first_time_fewer(&self) -> bool {
        let mut table = self.lock();
        !std::mem::replace(&mut table.told_fewer, true)
    }

    /// Sessions up now.
    pub fn live_count(&self) -> usize {
        self.lock().live.iter().filter(|l| l.is_some()).count()
    }

    /// The agent is stopping.
    pub fn stopping(&self) {
        let mut table = self.lock();
        table.stopping = true;
        self.publish(&table);
    }

    fn publish(&self, table: &Table) {
        let live: Vec<&Live> = table.live.iter().flatten().collect();
        let status = if table.stopping {
            AgentStatus::Stopping
        } else if let Some(first) = live.first() {
            AgentStatus::Connected {
                relay: live
                    .iter()
                    .map(|l| l.view.relay.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                tunnel: first.tunnel.clone(),
                public_url: first.public_url.clone(),
                connects: table.reconnects + 1,
                since: live
                    .iter()
                    .map(|l| l.view.since)
                    .min()
                    .unwrap_or_else(SystemTime::now),
                sessions: live.iter().map(|l| l.view.clone()).collect(),
                wanted: table.live.len(),
            }
        } else {
            match &table.last_error {
                Some((delay, error)) => AgentStatus::Retrying {
                    delay: *delay,
                    error: error.clone(),
                },
                None => AgentStatus::Starting,
            }
        };
        self.status.send_if_modified(|current| {
            if *current == status {
                return false;
            }
            *current = status;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(node: Option<&str>) -> Handshake {
        Handshake {
            tunnel: "demo".into(),
            public_url: "https://relay.test/t/demo/".into(),
            agents: 1,
            node: node.map(String::from),
        }
    }

    fn target(addr: &str) -> Target {
        Target::at("https://relay.test:443", addr.parse().unwrap())
    }

    #[test]
    fn two_slots_never_hold_one_node() {
        let (tx, rx) = watch::channel(AgentStatus::Starting);
        let board = Board::new(2, tx);
        board
            .claim(0, &target("127.0.0.1:1"), &handshake(Some("a")))
            .unwrap();
        // Another address, same node (one node reachable at two addresses): refused.
        let held = board
            .claim(1, &target("127.0.0.2:1"), &handshake(Some("a")))
            .unwrap_err();
        assert_eq!(held.slot, 0);
        board
            .claim(1, &target("127.0.0.2:1"), &handshake(Some("b")))
            .unwrap();
        match &*rx.borrow() {
            AgentStatus::Connected {
                sessions,
                wanted,
                connects,
                ..
            } => {
                assert_eq!((sessions.len(), *wanted, *connects), (2, 2, 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(board.key_held_by_other(1, "127.0.0.1:1"));
        assert!(!board.key_held_by_other(0, "127.0.0.1:1"));
        // 127.0.0.2 led to node a once, but now leads to node b: no longer an alias of a.
        assert!(!board.key_held_by_other(1, "127.0.0.2:1"));
        // Slot 0 lost: still connected through slot 1; its return counts as a reconnect.
        board.waiting(0, Duration::from_secs(1), "lost".into(), false);
        assert!(rx.borrow().is_connected());
        board
            .claim(0, &target("127.0.0.1:1"), &handshake(Some("a")))
            .unwrap();
        assert!(matches!(
            &*rx.borrow(),
            AgentStatus::Connected { connects: 2, .. }
        ));
    }

    #[test]
    fn relays_without_node_ids_are_told_apart_by_address() {
        let (tx, rx) = watch::channel(AgentStatus::Starting);
        let board = Board::new(2, tx);
        board.claim(0, &target("127.0.0.1:1"), &handshake(None)).unwrap();
        assert!(board.claim(1, &target("127.0.0.1:1"), &handshake(None)).is_err());
        board.claim(1, &target("[::1]:1"), &handshake(None)).unwrap();
        board.waiting(0, Duration::from_secs(2), "down".into(), false);
        board.waiting(1, Duration::from_secs(30), "all held".into(), true);
        // No session: the real error is shown, not the "all held" note.
        match &*rx.borrow() {
            AgentStatus::Retrying { error, .. } => assert_eq!(error, "down"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn another_address_of_a_held_node_is_skipped_until_that_node_is_lost() {
        let (tx, _rx) = watch::channel(AgentStatus::Starting);
        let board = Board::new(2, tx);
        board
            .claim(0, &target("127.0.0.1:1"), &handshake(Some("a")))
            .unwrap();
        assert!(!board.key_held_by_other(1, "127.0.0.2:1"), "not known yet");
        board
            .claim(1, &target("127.0.0.2:1"), &handshake(Some("a")))
            .unwrap_err();
        assert!(board.key_held_by_other(1, "127.0.0.2:1"), "known alias of node a");
        board.waiting(0, Duration::from_secs(1), "lost".into(), false);
        assert!(!board.key_held_by_other(1, "127.0.0.2:1"), "node a is free again");
    }
}
