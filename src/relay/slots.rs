//! Connection slots. Every open connection holds one of `max_connections`; anonymous clients may
//! hold at most `max_connections − reserved_agent_connections` of them, so an agent can still log
//! in while idle or hostile clients hold everything they can. A connection is anonymous until its
//! agent login succeeds; then it gives its public slot back and keeps only its place in the total.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::relay::Limits;

/// The relay's connection slots.
pub struct Slots {
    all: Arc<Semaphore>,
    public: Arc<Semaphore>,
}

impl Slots {
    /// Slots for the configured limits (validated: the reserve is smaller than the total).
    pub fn new(limits: &Limits) -> Self {
        let reserved = limits.reserved_agent_connections();
        Slots {
            all: Arc::new(Semaphore::new(limits.max_connections)),
            public: Arc::new(Semaphore::new(limits.max_connections.saturating_sub(reserved))),
        }
    }

    /// A slot for a new connection: a public one while any is free, otherwise one from the
    /// reserve, which only an agent login may use. `None` when every slot is taken.
    pub fn acquire(&self) -> Option<ConnSlot> {
        let all = self.all.clone().try_acquire_owned().ok()?;
        let public = self.public.clone().try_acquire_owned().ok();
        Some(ConnSlot(Arc::new(Inner {
            reserved: public.is_none(),
            public: Mutex::new(public),
            _all: all,
        })))
    }
}

/// One connection's slot. Clones share it: the connection holds one, and after a login the agent
/// session holds another, so the slot lives as long as the session.
#[derive(Clone)]
pub struct ConnSlot(Arc<Inner>);

struct Inner {
    reserved: bool,
    public: Mutex<Option<OwnedSemaphorePermit>>,
    _all: OwnedSemaphorePermit,
}

impl ConnSlot {
    /// True when the connection got a reserved slot: it may only log an agent in.
    pub fn is_reserved(&self) -> bool {
        self.0.reserved
    }

    /// The connection is an agent session now: its public slot goes back to anonymous clients.
    pub fn promote_to_agent(&self) {
        self.0.public.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, reserved: usize) -> Limits {
        Limits {
            max_connections: max,
            reserved_agent_connections: Some(reserved),
            ..Limits::default()
        }
    }

    #[test]
    fn anonymous_clients_never_get_the_reserve() {
        let slots = Slots::new(&limits(4, 1));
        let public: Vec<ConnSlot> = (0..3).map(|_| slots.acquire().unwrap()).collect();
        assert!(public.iter().all(|s| !s.is_reserved()));
        // Public slots are gone: the next connection gets the reserve, and then nothing is left.
        let reserve = slots.acquire().unwrap();
        assert!(reserve.is_reserved());
        assert!(slots.acquire().is_none());
        // An agent that logged in on a public slot gives that public slot back.
        public[0].promote_to_agent();
        drop(reserve);
        let next = slots.acquire().unwrap();
        assert!(!next.is_reserved());
        // The agent still counts against the total while its session lives.
        assert!(slots.acquire().is_none());
        let session = public[0].clone();
        drop(public);
        let (_a, _b) = (slots.acquire().unwrap(), slots.acquire().unwrap());
        assert!(slots.acquire().is_none());
        drop(session);
        assert!(slots.acquire().unwrap().is_reserved());
    }
}
