//! Trigger rules, evaluated exactly as adnanh/webhook 2.8 does, including its error rules: a
//! missing value inside `or` only makes that branch false; a failed signature is an error (the
//! caller answers 500) unless `trigger-signature-soft-failures` is set and it sits inside `or`;
//! `not` of a missing value is true.

use std::net::IpAddr;

use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

use super::definition::{HmacAlgorithm, MatchRule, Rule};
use super::request::HookRequest;
use super::value::Lookup;

/// Why a rule could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A referenced value is not in the request.
    #[error("parameter node not found: {0}")]
    NotFound(String),
    /// A signature did not match.
    #[error("{0}")]
    Signature(String),
    /// Anything else (empty secret, bad address, unusable date).
    #[error("{0}")]
    Other(String),
}

impl From<Lookup> for RuleError {
    fn from(e: Lookup) -> Self {
        match e {
            Lookup::NotFound(k) => RuleError::NotFound(k),
            Lookup::NoParameters => RuleError::Other(e.to_string()),
        }
    }
}

/// Evaluate a rule: the verdict and, as in Go, an error that may come with it.
pub fn evaluate(rule: &Rule, req: &HookRequest) -> (bool, Option<RuleError>) {
    match rule {
        Rule::And(rules) => {
            for r in rules {
                match evaluate(r, req) {
                    (_, Some(e)) => return (false, Some(e)),
                    (false, None) => return (false, None),
                    (true, None) => {}
                }
            }
            (true, None)
        }
        Rule::Or(rules) => {
            for r in rules {
                let (ok, err) = evaluate(r, req);
                match err {
                    None | Some(RuleError::NotFound(_)) => {}
                    Some(RuleError::Signature(_)) if req.allow_signature_errors => {}
                    Some(e) => return (false, Some(e)),
                }
                if ok {
                    return (true, None);
                }
            }
            (false, None)
        }
        Rule::Not(inner) => {
            let (ok, err) = evaluate(inner, req);
            (!ok, err)
        }
        Rule::Match(m) => match evaluate_match(m, req) {
            Ok(ok) => (ok, None),
            Err(e) => (false, Some(e)),
        },
        Rule::Empty => (false, None),
    }
}

fn evaluate_match(rule: &MatchRule, req: &HookRequest) -> Result<bool, RuleError> {
    match rule {
        MatchRule::IpWhitelist { ranges } => {
            let ip = remote_ip(&req.remote_addr).ok_or_else(|| {
                RuleError::Other(format!(
                    "invalid IP address found in remote address '{}'",
                    req.remote_addr
                ))
            })?;
            Ok(ranges.iter().any(|(net, bits)| in_range(ip, *net, *bits)))
        }
        MatchRule::Scalr { secret } => check_scalr(req, secret, std::time::SystemTime::now()),
        MatchRule::Value { parameter, value } => {
            let arg = req.get(parameter)?;
            Ok(bool::from(arg.as_bytes().ct_eq(value.as_bytes())))
        }
        MatchRule::Regex { parameter, regex } => Ok(regex.is_match(&req.get(parameter)?)),
        MatchRule::Hmac {
            parameter,
            algorithm,
            secret,
        } => {
            let arg = req.get(parameter)?;
            check_hmac(*algorithm, &req.body, secret, &arg).map(|()| true)
        }
    }
}

/// `ip:port`, `[v6]:port` or a bare address → the address.
fn remote_ip(remote: &str) -> Option<IpAddr> {
    let trimmed = remote.trim_matches(|c| c == ' ' || c == '[' || c == ']');
    if let Ok(ip) = trimmed.parse() {
        return Some(ip);
    }
    let (host, _port) = trimmed.rsplit_once(':')?;
    host.trim_matches(|c| c == ' ' || c == '[' || c == ']')
        .parse()
        .ok()
}

fn in_range(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        // Go compares IPv4-mapped IPv6 addresses as IPv4.
        (IpAddr::V6(a), IpAddr::V4(_)) => a
            .to_ipv4_mapped()
            .is_some_and(|v4| in_range(IpAddr::V4(v4), net, bits)),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// adnanh's signature list: with commas, only the entries carrying the prefix count; without,
/// the prefix is optional.
fn signatures<'a>(header: &'a str, prefix: &str) -> Vec<&'a str> {
    if header.contains(',') {
        header
            .split(',')
            .filter_map(|part| part.strip_prefix(prefix))
            .collect()
    } else {
        vec![header.strip_prefix(prefix).unwrap_or(header)]
    }
}

/// Check a hex HMAC of `body` against the signature(s) in `header`.
pub fn check_hmac(
    algorithm: HmacAlgorithm,
    body: &[u8],
    secret: &str,
    header: &str,
) -> Result<(), RuleError> {
    if secret.is_empty() {
        return Err(RuleError::Other(
            "signature validation secret can not be empty".into(),
        ));
    }
    let (prefix, expected) = match algorithm {
        HmacAlgorithm::Sha1 => ("sha1=", mac::<hmac::Hmac<sha1::Sha1>>(secret, body)),
        HmacAlgorithm::Sha256 => ("sha256=", mac::<hmac::Hmac<sha2::Sha256>>(secret, body)),
        HmacAlgorithm::Sha512 => ("sha512=", mac::<hmac::Hmac<sha2::Sha512>>(secret, body)),
    };
    let given = signatures(header, prefix);
    if given
        .iter()
        .any(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())))
    {
        return Ok(());
    }
    let empty = if body.is_empty() { " on empty payload" } else { "" };
    Err(RuleError::Signature(if header.contains(',') {
        format!("invalid payload signatures {given:?}{empty}")
    } else {
        format!("invalid payload signature {}{empty}", given.join(""))
    }))
}

fn mac<M: Mac + KeyInit>(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    match <M as KeyInit>::new_from_slice(secret.as_bytes()) {
        Ok(mut m) => {
            m.update(body);
            hex::encode(m.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// Scalr: HMAC-SHA1 of body + `Date` header in `X-Signature`, and the date within 5 minutes.
fn check_scalr(req: &HookRequest, secret: &str, now: std::time::SystemTime) -> Result<bool, RuleError> {
    let header = |name: &str| req.headers.get(name).map(|v| v.to_arg());
    let (Some(signature), Some(date)) = (header("X-Signature"), header("Date")) else {
        return Ok(false);
    };
    if secret.is_empty() {
        return Err(RuleError::Other(
            "signature validation signing key can not be empty".into(),
        ));
    }
    let mut signed = req.body.to_vec();
    signed.extend_from_slice(date.as_bytes());
    let expected = mac::<hmac::Hmac<sha1::Sha1>>(secret, &signed);
    if !bool::from(signature.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(RuleError::Signature(format!(
            "invalid payload signature {signature}"
        )));
    }
    let when = parse_scalr_date(&date).ok_or_else(|| {
        RuleError::Other(format!(
            "parsing time {date:?} as \"Mon 02 Jan 2006 15:04:05 MST\": cannot parse"
        ))
    })?;
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if (now - when).abs() > 300 {
        return Err(RuleError::Signature("invalid payload signature outdated".into()));
    }
    Ok(true)
}

/// `Fri 08 Sep 2017 11:24:32 UTC` → Unix seconds (the zone name is taken as UTC, as Go does for
/// names it does not know).
fn parse_scalr_date(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split(' ').collect();
    let [_weekday, day, month, year, time, _zone] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::definition::parse;
    use crate::hooks::request::{headers_map, parse_json_payload};
    use bytes::Bytes;

    fn rule(yaml: &str) -> Rule {
        let text = format!("- id: a\n  execute-command: x\n  trigger-rule:\n{yaml}");
        parse(&text, "f").unwrap().0.remove(0).trigger_rule.unwrap()
    }

    fn request(body: &str, headers: &[(&str, &str)]) -> HookRequest {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        HookRequest {
            body: Bytes::from(body.to_string()),
            headers: headers_map(&h),
            payload: parse_json_payload(body.as_bytes()).ok().flatten(),
            remote_addr: "10.1.2.3:4567".into(),
            ..Default::default()
        }
    }

    fn sha256(secret: &str, body: &str) -> String {
        mac::<hmac::Hmac<sha2::Sha256>>(secret, body.as_bytes())
    }

    #[test]
    fn hmac_known_vector_and_prefixes() {
        // RFC 4231 test case 2.
        assert_eq!(
            sha256("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body = r#"{"a":1}"#;
        let good = sha256("s3cret", body);
        let r = rule(
            "    match: {type: payload-hmac-sha256, secret: s3cret, parameter: {source: header, name: X-Sig}}\n",
        );
        for header in [
            good.clone(),
            format!("sha256={good}"),
            format!("sha256=bad,sha256={good}"),
        ] {
            assert_eq!(
                evaluate(&r, &request(body, &[("x-sig", &header)])),
                (true, None),
                "{header}"
            );
        }
        // With commas, entries without the prefix do not count.
        let (ok, err) = evaluate(&r, &request(body, &[("x-sig", &format!("bad,{good}"))]));
        assert!(!ok && matches!(err, Some(RuleError::Signature(_))));
        let (ok, err) = evaluate(&r, &request(body, &[("x-sig", "sha256=00")]));
        assert!(!ok && matches!(err, Some(RuleError::Signature(_))), "{err:?}");
        for (kind, hex_len) in [("payload-hmac-sha1", 40), ("payload-hmac-sha512", 128)] {
            let r = rule(&format!(
                "    match: {{type: {kind}, secret: k, parameter: {{source: header, name: X-Sig}}}}\n"
            ));
            let sig = if hex_len == 40 {
                mac::<hmac::Hmac<sha1::Sha1>>("k", body.as_bytes())
            } else {
                mac::<hmac::Hmac<sha2::Sha512>>("k", body.as_bytes())
            };
            assert_eq!(sig.len(), hex_len);
            assert_eq!(evaluate(&r, &request(body, &[("x-sig", &sig)])), (true, None));
        }
    }

    #[test]
    fn or_tolerates_missing_values_and_soft_signature_failures() {
        let r = rule(
            "    or:\n      - match: {type: payload-hmac-sha1, secret: s, parameter: {source: header, name: X-Sig}}\n      - match: {type: value, value: yes, parameter: {source: url, name: token}}\n",
        );
        let mut req = request("{}", &[("x-sig", "wrong")]);
        req.query = crate::hooks::request::query_map("token=yes");
        let (ok, err) = evaluate(&r, &req);
        assert!(!ok && matches!(err, Some(RuleError::Signature(_))));
        req.allow_signature_errors = true;
        assert_eq!(evaluate(&r, &req), (true, None));
        // A missing header is only a false branch.
        let mut req = request("{}", &[]);
        req.query = crate::hooks::request::query_map("token=yes");
        assert_eq!(evaluate(&r, &req), (true, None));
    }

    #[test]
    fn and_not_empty_and_missing_values() {
        let and = rule(
            "    and:\n      - match: {type: value, value: x, parameter: {source: payload, name: a}}\n      - match: {type: regex, regex: '^re.*s$', parameter: {source: payload, name: b}}\n",
        );
        assert_eq!(
            evaluate(&and, &request(r#"{"a":"x","b":"refs"}"#, &[])),
            (true, None)
        );
        assert_eq!(
            evaluate(&and, &request(r#"{"a":"x","b":"nope"}"#, &[])),
            (false, None)
        );
        let (ok, err) = evaluate(&and, &request(r#"{"b":"refs"}"#, &[]));
        assert!(!ok && err == Some(RuleError::NotFound("a".into())));
        let not =
            rule("    not:\n      match: {type: value, value: x, parameter: {source: payload, name: a}}\n");
        assert_eq!(evaluate(&not, &request(r#"{"a":"y"}"#, &[])), (true, None));
        assert_eq!(evaluate(&not, &request(r#"{"a":"x"}"#, &[])), (false, None));
        let (ok, err) = evaluate(&not, &request("{}", &[]));
        assert!(ok && matches!(err, Some(RuleError::NotFound(_))));
        assert_eq!(
            evaluate(&rule("    and: []\n"), &request("{}", &[])),
            (true, None)
        );
        assert_eq!(
            evaluate(&rule("    or: []\n"), &request("{}", &[])),
            (false, None)
        );
        assert_eq!(evaluate(&rule("    {}\n"), &request("{}", &[])), (false, None));
    }

    #[test]
    fn ip_whitelist() {
        let r = rule("    match: {type: ip-whitelist, ip-range: '192.168.0.0/16 10.1.2.3 ::1'}\n");
        let mut req = request("", &[]);
        assert_eq!(evaluate(&r, &req), (true, None));
        req.remote_addr = "10.1.2.4:80".into();
        assert_eq!(evaluate(&r, &req), (false, None));
        req.remote_addr = "[::1]:80".into();
        assert_eq!(evaluate(&r, &req), (true, None));
        req.remote_addr = "[::2]:80".into();
        assert_eq!(evaluate(&r, &req), (false, None));
        req.remote_addr = "192.168.7.7:1".into();
        assert_eq!(evaluate(&r, &req), (true, None));
        req.remote_addr = "nonsense".into();
        assert!(matches!(evaluate(&r, &req).1, Some(RuleError::Other(_))));
    }

    #[test]
    fn scalr_signature_and_date_window() {
        let date = "Fri 08 Sep 2017 11:24:32 UTC";
        let when = parse_scalr_date(date).unwrap();
        assert_eq!(when, 1_504_869_872);
        let body = "payload";
        let sig = mac::<hmac::Hmac<sha1::Sha1>>("key", format!("{body}{date}").as_bytes());
        let req = request(body, &[("x-signature", &sig), ("date", date)]);
        let at = |secs: i64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        assert_eq!(check_scalr(&req, "key", at(when + 100)), Ok(true));
        assert!(matches!(
            check_scalr(&req, "key", at(when + 301)),
            Err(RuleError::Signature(_))
        ));
        assert!(matches!(
            check_scalr(&req, "other", at(when)),
            Err(RuleError::Signature(_))
        ));
        assert_eq!(check_scalr(&request(body, &[]), "key", at(when)), Ok(false));
    }
}
