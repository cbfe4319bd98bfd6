//! Console sessions: a random id in an `HttpOnly`, `SameSite=Strict` cookie, kept in memory
//! with an expiry, each with its own CSRF token for the forms. A relay restart logs everyone
//! out, which is fine for an operator's page.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::inspect::web;

/// A session ends this long after login, whatever happens.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// … or after this long without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// Sessions held at once; the oldest goes first (only someone with the token can make one).
pub const MAX_SESSIONS: usize = 256;

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token its forms carry.
    pub csrf: String,
    created: Instant,
    last_used: Instant,
}

/// Every live session.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Open a session; returns its id (for the cookie).
    pub fn open(&self) -> String {
        let id = web::random_token();
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                csrf: web::random_token(),
                created: now,
                last_used: now,
            },
        );
        id
    }

    /// The live session with this id, refreshed.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.lock();
        let session = map.get_mut(id)?;
        if !live(session, now) {
            map.remove(id);
            return None;
        }
        session.last_used = now;
        Some(session.clone())
    }

    /// End a session.
    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.created) < SESSION_LIFETIME && now.duration_since(s.last_used) < SESSION_IDLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_bounded_and_closable() {
        let s = Sessions::default();
        let a = s.open();
        let b = s.open();
        assert_ne!(a, b);
        let sa = s.get(&a).unwrap();
        assert_ne!(sa.csrf, s.get(&b).unwrap().csrf);
        assert!(s.get("guess").is_none());
        s.close(&a);
        assert!(s.get(&a).is_none());
        for _ in 0..MAX_SESSIONS + 10 {
            s.open();
        }
        assert!(s.lock().len() <= MAX_SESSIONS);
    }

    #[test]
    fn idle_and_old_sessions_end() {
        let now = Instant::now();
        let fresh = Session {
            csrf: String::new(),
            created: now,
            last_used: now,
        };
        assert!(live(&fresh, now));
        assert!(!live(&fresh, now + SESSION_IDLE));
        let old = Session {
            created: now,
            last_used: now + SESSION_LIFETIME - Duration::from_secs(1),
            ..fresh
        };
        assert!(!live(&old, now + SESSION_LIFETIME));
    }
}
