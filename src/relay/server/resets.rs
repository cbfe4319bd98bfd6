//! Rapid-reset budgets. A public request cancelled shortly after it was sent still cost a stream
//! on the agent's tunnel (opened, then reset): thousands of them are the rapid-reset attack
//! (CVE-2023-44487), paced so HTTP/2's own limit never sees them. Each connection, and each
//! client address (an IPv6 /64), may cancel a bounded number of young requests per window; past
//! the connection's budget it is cut with GOAWAY (ENHANCE_YOUR_CALM), past the address's budget
//! the address's new connections are refused until the window ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::relay::{Limits, RAPID_RESET_AGE, RESET_WINDOW};

/// Entries kept before old windows are swept from the address table.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// A count within a window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

impl Window {
    fn new() -> Self {
        Window {
            start: Instant::now(),
            count: 0,
        }
    }

    /// Count one, starting a fresh window when the old one is over; returns the count.
    fn add(&mut self) -> u32 {
        if self.start.elapsed() >= RESET_WINDOW {
            *self = Window::new();
        }
        self.count += 1;
        self.count
    }

    fn current(&self) -> u32 {
        if self.start.elapsed() >= RESET_WINDOW {
            0
        } else {
            self.count
        }
    }
}

/// Budgets shared by all connections.
pub struct ResetBudgets {
    per_connection: u32,
    per_address: u32,
    addresses: Mutex<HashMap<IpAddr, Window>>,
}

impl ResetBudgets {
    /// From the limits; the per-address budget is off behind a trusted proxy, where every client
    /// arrives from the proxy's address.
    pub fn new(limits: &Limits, trust_forwarded_headers: bool) -> Arc<Self> {
        Arc::new(ResetBudgets {
            per_connection: limits.max_resets_per_connection,
            per_address: if trust_forwarded_headers {
                0
            } else {
                limits.max_resets_per_address
            },
            addresses: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        self.addresses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Has this address used up its budget (refuse its new connections)?
    pub fn address_blocked(&self, ip: IpAddr) -> bool {
        self.per_address > 0
            && self
                .table()
                .get(&address_key(ip))
                .is_some_and(|w| w.current() > self.per_address)
    }

    /// The budget of one new connection from `ip`.
    pub fn connection(self: &Arc<Self>, ip: IpAddr) -> ConnResets {
        ConnResets {
            budgets: self.clone(),
            key: address_key(ip),
            window: Mutex::new(Window::new()),
            exceeded: CancellationToken::new(),
        }
    }

    /// Count one for `key`; true when the address is now over its budget.
    fn add_for_address(&self, key: IpAddr) -> bool {
        if self.per_address == 0 {
            return false;
        }
        let mut table = self.table();
        if table.len() >= MAX_TRACKED_ADDRESSES {
            table.retain(|_, w| w.current() > 0);
        }
        table.entry(key).or_insert_with(Window::new).add() > self.per_address
    }
}

/// One connection's reset budget.
pub struct ConnResets {
    budgets: Arc<ResetBudgets>,
    key: IpAddr,
    window: Mutex<Window>,
    exceeded: CancellationToken,
}

impl ConnResets {
    /// A request of this connection was cancelled `age` after it arrived. Young ones count; when
    /// the connection or its address goes over budget, [`ConnResets::exceeded`] fires.
    pub fn record(&self, age: Duration) {
        if age >= RAPID_RESET_AGE {
            // A sender giving up on a slow answer, not an attack.
            return;
        }
        let per_connection = self.budgets.per_connection;
        let connection_over = per_connection > 0
            && self.window.lock().unwrap_or_else(|p| p.into_inner()).add() > per_connection;
        let address_over = self.budgets.add_for_address(self.key);
        if connection_over || address_over {
            self.exceeded.cancel();
        }
    }

    /// Resolves once the connection has gone over budget.
    pub fn exceeded(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.exceeded.cancelled()
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64 (one subscriber's prefix,
/// so rotating addresses within it does not buy a fresh budget).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(per_connection: u32, per_address: u32) -> Arc<ResetBudgets> {
        let limits = Limits {
            max_resets_per_connection: per_connection,
            max_resets_per_address: per_address,
            ..Limits::default()
        };
        ResetBudgets::new(&limits, false)
    }

    fn young() -> Duration {
        Duration::from_millis(10)
    }

    #[test]
    fn a_connection_over_its_budget_is_flagged() {
        let b = budgets(3, 0);
        let conn = b.connection("192.0.2.1".parse().unwrap());
        for _ in 0..3 {
            conn.record(young());
        }
        assert!(!conn.exceeded.is_cancelled());
        // Old requests cancelled by a patient sender do not count.
        conn.record(RAPID_RESET_AGE);
        assert!(!conn.exceeded.is_cancelled());
        conn.record(young());
        assert!(conn.exceeded.is_cancelled());
    }

    #[test]
    fn an_address_over_its_budget_is_blocked_across_connections() {
        let b = budgets(0, 4);
        let ip: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        // Another address in the same /64 shares the budget.
        let neighbour: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let (one, two) = (b.connection(ip), b.connection(neighbour));
        for _ in 0..2 {
            one.record(young());
            two.record(young());
        }
        assert!(!b.address_blocked(ip));
        assert!(b.address_blocked(neighbour) == b.address_blocked(ip));
        two.record(young());
        assert!(two.exceeded.is_cancelled());
        assert!(b.address_blocked(ip));
        assert!(!b.address_blocked("2001:db8:1:3::1".parse().unwrap()));
        assert!(!b.address_blocked("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn zero_turns_a_budget_off() {
        let b = budgets(0, 0);
        let conn = b.connection("192.0.2.1".parse().unwrap());
        for _ in 0..1000 {
            conn.record(young());
        }
        assert!(!conn.exceeded.is_cancelled());
        assert!(!b.address_blocked("192.0.2.1".parse().unwrap()));
    }
}
