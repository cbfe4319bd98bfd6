//! Bearer tokens on the relay's own endpoints (the admin API and the public metrics): one parse,
//! one constant-time comparison, and failures counted against the address's login budget.

use http::Request;
use http::header;

use super::state::{ConnInfo, RelayState};
use crate::config::relay::TokenHash;

/// The token of an `Authorization: Bearer …` header, trimmed (possibly empty).
pub fn presented<B>(req: &Request<B>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Why a request was refused.
pub enum Refused {
    /// Too many wrong tokens from this address lately.
    Throttled,
    /// No bearer token.
    Missing,
    /// A wrong token (counted against the address).
    Rejected,
}

/// Check the request's bearer token against `expected`; `what` names the endpoint in the log.
pub fn check<B>(
    state: &RelayState,
    conn: ConnInfo,
    req: &Request<B>,
    expected: &str,
    what: &str,
) -> Result<(), Refused> {
    check_presented(state, conn, presented(req), expected, what)
}

/// Check a token taken from wherever the endpoint carries it against `expected`.
pub fn check_presented(
    state: &RelayState,
    conn: ConnInfo,
    presented: Option<&str>,
    expected: &str,
    what: &str,
) -> Result<(), Refused> {
    let ip = conn.peer.ip();
    if state.registry.login_throttled(ip) {
        return Err(Refused::Throttled);
    }
    let presented = presented.ok_or(Refused::Missing)?;
    // Hash both sides so the comparison takes the same time whatever the lengths.
    if TokenHash::of(presented).matches(&TokenHash::of(expected)) {
        Ok(())
    } else {
        state.registry.record_failed_login(ip);
        tracing::warn!(peer = %conn.peer, "{what} request with a wrong token refused");
        Err(Refused::Rejected)
    }
}
