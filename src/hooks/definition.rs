//! The hooks file: adnanh/webhook 2.8's JSON or YAML list of hooks, read with a YAML parser (as
//! adnanh does, so JSON with tabs, comments or a trailing comma still loads), and checked once at
//! load time so a typo in a rule is an error with its line instead of a hook that never fires.
//!
//! Go's decoder is forgiving in ways existing files rely on, and so is this one: keys match
//! case-insensitively (`"Secret"` is `secret`), a number or boolean where a string is expected is
//! used as text (`value: 42`), YAML 1.1 booleans (`yes`, `on`) are booleans, and an unknown key is
//! ignored with a warning.

use std::cell::RefCell;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::config::ConfigError;

/// One hook, checked and ready to serve.
#[derive(Debug, Clone, Default)]
pub struct Hook {
    /// `id`: served at `/<prefix>/<id>`.
    pub id: String,
    /// `execute-command`.
    pub execute_command: String,
    /// `command-working-directory` (empty: the server's own).
    pub working_directory: String,
    /// `response-message`.
    pub response_message: String,
    /// `response-headers`.
    pub response_headers: Vec<(String, String)>,
    /// `include-command-output-in-response`.
    pub capture_output: bool,
    /// `include-command-output-in-response-on-error`.
    pub capture_output_on_error: bool,
    /// `pass-environment-to-command`.
    pub pass_environment: Vec<Argument>,
    /// `pass-arguments-to-command`.
    pub pass_arguments: Vec<Argument>,
    /// `pass-file-to-command`.
    pub pass_file: Vec<Argument>,
    /// `parse-parameters-as-json`.
    pub json_parameters: Vec<Argument>,
    /// `trigger-rule` (none: always triggers).
    pub trigger_rule: Option<Rule>,
    /// `trigger-rule-mismatch-http-response-code` (0: 200).
    pub mismatch_status: i64,
    /// `trigger-signature-soft-failures`.
    pub signature_soft_failures: bool,
    /// `incoming-payload-content-type`.
    pub incoming_content_type: String,
    /// `success-http-response-code` (0: 200).
    pub success_status: i64,
    /// `http-methods`, upper-cased and trimmed.
    pub http_methods: Vec<String>,
    /// `command-timeout` (a Ponte addition adnanh ignores): how long the command may run.
    pub command_timeout: Option<Duration>,
}

/// Where a value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `header`.
    Header,
    /// `url` or `query`.
    Query,
    /// `payload`.
    Payload,
    /// `raw-request-body`.
    RawBody,
    /// `request` with name `method`.
    Method,
    /// `request` with name `remote-addr`.
    RemoteAddr,
    /// `string`: the name itself.
    Literal,
    /// `entire-payload`.
    EntirePayload,
    /// `entire-headers`.
    EntireHeaders,
    /// `entire-query`.
    EntireQuery,
}

/// A reference to a request value (`{source, name, envname, base64decode}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argument {
    /// The source.
    pub source: Source,
    /// The name within the source (for headers: canonicalised, `X-Hub-Signature`).
    pub name: String,
    /// `envname`.
    pub envname: String,
    /// `base64decode` (files only).
    pub base64decode: bool,
}

/// A trigger rule.
#[derive(Debug, Clone)]
pub enum Rule {
    /// `and`: every child.
    And(Vec<Rule>),
    /// `or`: any child.
    Or(Vec<Rule>),
    /// `not`.
    Not(Box<Rule>),
    /// `match`.
    Match(Box<MatchRule>),
    /// A rule object with none of the four keys: never satisfied (as in adnanh).
    Empty,
}

/// HMAC algorithms of the `payload-hmac-*` rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlgorithm {
    /// SHA-1, signatures may carry `sha1=`.
    Sha1,
    /// SHA-256, `sha256=`.
    Sha256,
    /// SHA-512, `sha512=`.
    Sha512,
}

/// A `match` rule.
#[derive(Debug, Clone)]
pub enum MatchRule {
    /// `value`: constant-time equality.
    Value {
        /// The parameter.
        parameter: Argument,
        /// The expected value.
        value: String,
    },
    /// `regex` (RE2 syntax, as Go's).
    Regex {
        /// The parameter.
        parameter: Argument,
        /// The compiled expression.
        regex: regex::Regex,
    },
    /// `payload-hmac-*` (and the deprecated `payload-hash-*`).
    Hmac {
        /// The parameter holding the signature(s).
        parameter: Argument,
        /// The algorithm.
        algorithm: HmacAlgorithm,
        /// The shared secret.
        secret: String,
    },
    /// `ip-whitelist`.
    IpWhitelist {
        /// The ranges.
        ranges: Vec<(IpAddr, u8)>,
    },
    /// `scalr-signature`.
    Scalr {
        /// The signing key.
        secret: String,
    },
}

thread_local! {
    // Collected while one file is deserialised (serde runs synchronously on this thread).
    static WARNINGS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn warn(message: String) {
    WARNINGS.with(|w| w.borrow_mut().push(message));
}

/// Parse a hooks file's text (after templating). `origin` names it in errors. Returns the hooks
/// and warnings (unknown keys, deprecated rule types) to log.
pub fn parse(text: &str, origin: &str) -> Result<(Vec<Hook>, Vec<String>), ConfigError> {
    WARNINGS.with(|w| w.borrow_mut().clear());
    let result = serde_norway::from_str::<Option<Vec<RawHook>>>(text);
    let warnings = WARNINGS.with(|w| std::mem::take(&mut *w.borrow_mut()));
    let raw = result.map_err(|e| crate::config::yaml_error(origin, text, &e))?;
    let warnings = warnings.into_iter().map(|w| format!("{origin}: {w}")).collect();
    let mut hooks: Vec<Hook> = Vec::new();
    for (i, r) in raw.unwrap_or_default().into_iter().enumerate() {
        let hook = r.0;
        if hook.id.is_empty() {
            return Err(ConfigError::invalid(
                origin,
                format!(
                    "hook #{}: `id` is missing; every hook needs an id (its URL is /hooks/<id>)",
                    i + 1
                ),
            ));
        }
        if hook.execute_command.is_empty() {
            return Err(ConfigError::invalid(
                origin,
                format!(
                    "hook `{}`: `execute-command` is missing; name the program to run",
                    hook.id
                ),
            ));
        }
        if hooks.iter().any(|h| h.id == hook.id) {
            return Err(ConfigError::invalid(
                origin,
                format!("hook `{}` is defined twice; every id must be unique", hook.id),
            ));
        }
        hooks.push(hook);
    }
    Ok((hooks, warnings))
}

// === Deserialisation ===

/// Lower-cased key, as Go's JSON decoder matches struct tags case-insensitively.
fn key_of(k: &str) -> String {
    k.to_ascii_lowercase()
}

/// A string field: Go's YAML-to-JSON step turns numbers and booleans into text for string
/// targets; `null` is the empty string.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A boolean field: YAML 1.1 spellings (`yes`, `on`, `y`) count, as in go-yaml v2.
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                match v {
                    "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
                        Ok(Flag(true))
                    }
                    "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
                        Ok(Flag(false))
                    }
                    other => Err(E::custom(format!(
                        "`{other}` is not true or false; write true or false"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// An integer field (status codes); `null` is 0.
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number such as 200")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom("the number is too large"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Int, E> {
                Ok(Int(0))
            }
        }
        d.deserialize_any(V)
    }
}

/// A list field; `null` is empty.
struct List<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(List(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default()))
    }
}

/// Read a mapping key by key; `field` returns `Ok(false)` for keys it does not know, which are
/// skipped with a warning.
fn read_fields<'de, A, F>(mut map: A, what: &str, mut field: F) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    F: FnMut(&str, &mut A) -> Result<bool, A::Error>,
{
    while let Some(Text(k)) = map.next_key::<Text>()? {
        if !field(&key_of(&k), &mut map)? {
            map.next_value::<IgnoredAny>()?;
            warn(format!(
                "{what}: unknown key `{k}` ignored (adnanh/webhook ignores it too; check the spelling)"
            ));
        }
    }
    Ok(())
}

struct RawHook(Hook);

impl<'de> Deserialize<'de> for RawHook {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHook;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hook (a mapping with `id` and `execute-command`)")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawHook, A::Error> {
                let mut h = Hook::default();
                read_fields(map, "hook", |k, m| {
                    match k {
                        "id" => h.id = m.next_value::<Text>()?.0,
                        "execute-command" => h.execute_command = m.next_value::<Text>()?.0,
                        "command-working-directory" => h.working_directory = m.next_value::<Text>()?.0,
                        "response-message" => h.response_message = m.next_value::<Text>()?.0,
                        "response-headers" => {
                            h.response_headers = m
                                .next_value::<List<ResponseHeader>>()?
                                .0
                                .into_iter()
                                .map(|r| (r.name, r.value))
                                .collect()
                        }
                        "include-command-output-in-response" => h.capture_output = m.next_value::<Flag>()?.0,
                        "include-command-output-in-response-on-error" => {
                            h.capture_output_on_error = m.next_value::<Flag>()?.0
                        }
                        "pass-environment-to-command" => {
                            h.pass_environment = m.next_value::<ArgumentList>()?.0
                        }
                        "pass-arguments-to-command" => h.pass_arguments = m.next_value::<ArgumentList>()?.0,
                        "pass-file-to-command" => h.pass_file = m.next_value::<ArgumentList>()?.0,
                        "parse-parameters-as-json" => h.json_parameters = m.next_value::<ArgumentList>()?.0,
                        "trigger-rule" => h.trigger_rule = m.next_value::<Option<RawRule>>()?.map(|r| r.0),
                        "trigger-rule-mismatch-http-response-code" => {
                            h.mismatch_status = m.next_value::<Int>()?.0
                        }
                        "trigger-signature-soft-failures" => {
                            h.signature_soft_failures = m.next_value::<Flag>()?.0
                        }
                        "incoming-payload-content-type" => {
                            h.incoming_content_type = m.next_value::<Text>()?.0
                        }
                        "success-http-response-code" => h.success_status = m.next_value::<Int>()?.0,
                        "http-methods" => {
                            h.http_methods = m
                                .next_value::<List<Text>>()?
                                .0
                                .into_iter()
                                .map(|t| t.0.trim().to_uppercase())
                                .collect()
                        }
                        "command-timeout" => {
                            let t = m.next_value::<Text>()?.0;
                            let d = crate::config::duration::parse(&t).map_err(de::Error::custom)?;
                            if d.is_zero() {
                                return Err(de::Error::custom("command-timeout must be more than 0s"));
                            }
                            h.command_timeout = Some(d);
                        }
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Ok(RawHook(h))
            }
        }
        d.deserialize_map(V)
    }
}

struct ResponseHeader {
    name: String,
    value: String,
}

impl<'de> Deserialize<'de> for ResponseHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ResponseHeader;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header: {name: ..., value: ...}")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ResponseHeader, A::Error> {
                let (mut name, mut value) = (String::new(), String::new());
                read_fields(map, "response header", |k, m| {
                    match k {
                        "name" => name = m.next_value::<Text>()?.0,
                        "value" => value = m.next_value::<Text>()?.0,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(de::Error::custom(format!(
                        "response header name `{name}` is not a valid header name"
                    )));
                }
                if http::HeaderValue::from_str(&value).is_err() {
                    return Err(de::Error::custom(format!(
                        "response header `{name}`: the value contains characters a header cannot carry"
                    )));
                }
                Ok(ResponseHeader { name, value })
            }
        }
        d.deserialize_map(V)
    }
}

struct RawArgument(Argument);

/// A list of value references; `null` is empty.
struct ArgumentList(Vec<Argument>);

impl<'de> Deserialize<'de> for ArgumentList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = List::<RawArgument>::deserialize(d)?;
        Ok(ArgumentList(raw.0.into_iter().map(|a| a.0).collect()))
    }
}

/// Go's `textproto.CanonicalMIMEHeaderKey`: `x-hub-signature` → `X-Hub-Signature`. Keys with
/// characters outside a token are left as they are, as Go does.
pub fn canonical_header(name: &str) -> String {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return name.to_string();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

impl<'de> Deserialize<'de> for RawArgument {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawArgument;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value reference: {source: ..., name: ...}")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawArgument, A::Error> {
                let (mut source, mut name, mut envname, mut b64) =
                    (String::new(), String::new(), String::new(), false);
                read_fields(map, "argument", |k, m| {
                    match k {
                        "source" => source = m.next_value::<Text>()?.0,
                        "name" => name = m.next_value::<Text>()?.0,
                        "envname" => envname = m.next_value::<Text>()?.0,
                        "base64decode" => b64 = m.next_value::<Flag>()?.0,
                        // adnanh 2.8 ignores this too; accepted without a warning.
                        "headers-to-add-to-signature-payload" => {
                            m.next_value::<IgnoredAny>()?;
                        }
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                let source = match source.as_str() {
                    "header" => {
                        name = canonical_header(&name);
                        Source::Header
                    }
                    "url" | "query" => Source::Query,
                    "payload" => Source::Payload,
                    "raw-request-body" => Source::RawBody,
                    "string" => Source::Literal,
                    "entire-payload" => Source::EntirePayload,
                    "entire-headers" => Source::EntireHeaders,
                    "entire-query" => Source::EntireQuery,
                    "request" => match name.to_ascii_lowercase().as_str() {
                        "method" => Source::Method,
                        "remote-addr" => Source::RemoteAddr,
                        other => {
                            return Err(de::Error::custom(format!(
                                "source `request` has no value `{other}`; use name: method or name: remote-addr"
                            )));
                        }
                    },
                    "" => {
                        return Err(de::Error::custom(
                            "`source` is missing; use one of header, url, query, payload, request, string, raw-request-body, entire-payload, entire-headers, entire-query",
                        ));
                    }
                    other => {
                        return Err(de::Error::custom(format!(
                            "unknown source `{other}`; use one of header, url, query, payload, request, string, raw-request-body, entire-payload, entire-headers, entire-query"
                        )));
                    }
                };
                Ok(RawArgument(Argument {
                    source,
                    name,
                    envname,
                    base64decode: b64,
                }))
            }
        }
        d.deserialize_map(V)
    }
}

struct RawRule(Rule);

/// A list of rules (`and`/`or`); `null` counts as absent.
struct RuleList(Option<Vec<Rule>>);

impl<'de> Deserialize<'de> for RuleList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RuleList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of rules")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RuleList, E> {
                Ok(RuleList(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RuleList, A::Error> {
                let mut rules = Vec::new();
                while let Some(r) = seq.next_element::<RawRule>()? {
                    rules.push(r.0);
                }
                Ok(RuleList(Some(rules)))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rule: and, or, not or match")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRule, A::Error> {
                let (mut and, mut or, mut not, mut matcher) = (None, None, None, None);
                read_fields(map, "trigger rule", |k, m| {
                    match k {
                        "and" => and = m.next_value::<RuleList>()?.0,
                        "or" => or = m.next_value::<RuleList>()?.0,
                        "not" => not = m.next_value::<Option<RawRule>>()?.map(|r| r.0),
                        "match" => matcher = m.next_value::<Option<RawMatch>>()?.map(|r| r.0),
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                // adnanh evaluates the first of and, or, not, match that is set.
                let rule = if let Some(rules) = and {
                    Rule::And(rules)
                } else if let Some(rules) = or {
                    Rule::Or(rules)
                } else if let Some(r) = not {
                    Rule::Not(Box::new(r))
                } else if let Some(m) = matcher {
                    Rule::Match(Box::new(m))
                } else {
                    Rule::Empty
                };
                Ok(RawRule(rule))
            }
        }
        d.deserialize_map(V)
    }
}

struct RawMatch(MatchRule);

/// Parse `ip-range`: space-separated CIDRs; a bare address is one host.
fn parse_ranges(text: &str) -> Result<Vec<(IpAddr, u8)>, String> {
    text.split_whitespace()
        .map(|r| {
            let (addr, bits) = match r.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (r, None),
            };
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("ip-range: `{r}` is not an IP address or CIDR range"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("ip-range: `{r}` has an invalid prefix length"))?,
            };
            Ok((ip, bits))
        })
        .collect()
}

impl<'de> Deserialize<'de> for RawMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMatch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a match rule: {type: ..., parameter: ...}")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawMatch, A::Error> {
                let (mut kind, mut regex, mut secret, mut value, mut ip_range) = (
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                );
                let mut parameter: Option<Argument> = None;
                read_fields(map, "match rule", |k, m| {
                    match k {
                        "type" => kind = m.next_value::<Text>()?.0,
                        "regex" => regex = m.next_value::<Text>()?.0,
                        "secret" => secret = m.next_value::<Text>()?.0,
                        "value" => value = m.next_value::<Text>()?.0,
                        "ip-range" => ip_range = m.next_value::<Text>()?.0,
                        "parameter" => parameter = m.next_value::<Option<RawArgument>>()?.map(|a| a.0),
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                let need_parameter = |kind: &str| {
                    parameter.clone().ok_or_else(|| {
                        de::Error::custom(format!(
                            "match type `{kind}` needs a `parameter` ({{source: ..., name: ...}})"
                        ))
                    })
                };
                let hmac = |algorithm, deprecated: Option<&str>| -> Result<MatchRule, A::Error> {
                    if let Some(new) = deprecated {
                        warn(format!(
                            "match type `{kind}` is deprecated; use `{new}` (same meaning)"
                        ));
                    }
                    if secret.is_empty() {
                        warn(format!(
                            "match type `{kind}` has an empty secret: every request will be refused with 500"
                        ));
                    }
                    Ok(MatchRule::Hmac {
                        parameter: need_parameter(&kind)?,
                        algorithm,
                        secret: secret.clone(),
                    })
                };
                let rule = match kind.as_str() {
                    "value" => MatchRule::Value {
                        parameter: need_parameter(&kind)?,
                        value: value.clone(),
                    },
                    "regex" => MatchRule::Regex {
                        parameter: need_parameter(&kind)?,
                        regex: regex::Regex::new(&regex).map_err(|e| {
                            de::Error::custom(format!("regex `{regex}` does not compile: {e}"))
                        })?,
                    },
                    "payload-hmac-sha1" => hmac(HmacAlgorithm::Sha1, None)?,
                    "payload-hmac-sha256" => hmac(HmacAlgorithm::Sha256, None)?,
                    "payload-hmac-sha512" => hmac(HmacAlgorithm::Sha512, None)?,
                    "payload-hash-sha1" => hmac(HmacAlgorithm::Sha1, Some("payload-hmac-sha1"))?,
                    "payload-hash-sha256" => hmac(HmacAlgorithm::Sha256, Some("payload-hmac-sha256"))?,
                    "payload-hash-sha512" => hmac(HmacAlgorithm::Sha512, Some("payload-hmac-sha512"))?,
                    "ip-whitelist" => MatchRule::IpWhitelist {
                        ranges: parse_ranges(&ip_range).map_err(de::Error::custom)?,
                    },
                    "scalr-signature" => MatchRule::Scalr {
                        secret: secret.clone(),
                    },
                    other => {
                        return Err(de::Error::custom(format!(
                            "unknown match type `{other}`; use value, regex, payload-hmac-sha1, payload-hmac-sha256, payload-hmac-sha512, ip-whitelist or scalr-signature"
                        )));
                    }
                };
                Ok(RawMatch(rule))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Hook {
        let (mut hooks, _) = parse(text, "hooks.yaml").unwrap();
        assert_eq!(hooks.len(), 1);
        hooks.remove(0)
    }

    fn err(text: &str) -> String {
        parse(text, "hooks.yaml").unwrap_err().to_string()
    }

    #[test]
    fn json_with_tabs_comments_and_trailing_comma_loads() {
        let text = "[\n\t{\n\t\t\"id\": \"a\",\n\t\t\"execute-command\": \"/bin/true\",\n\t\t\"http-methods\": [\"post \", \"Get\",],\n\t}\n]\n# trailing comment\n";
        let h = one(text);
        assert_eq!(h.id, "a");
        assert_eq!(h.http_methods, vec!["POST", "GET"]);
    }

    #[test]
    fn keys_match_case_insensitively_and_scalars_become_text() {
        let h = one(
            "- ID: x\n  Execute-Command: run\n  include-command-output-in-response: yes\n  trigger-rule:\n    match: {Type: value, Value: 42, parameter: {source: header, name: x-token}}\n",
        );
        assert!(h.capture_output);
        match h.trigger_rule {
            Some(Rule::Match(m)) => match *m {
                MatchRule::Value { parameter, value } => {
                    assert_eq!(value, "42");
                    assert_eq!(parameter.name, "X-Token");
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_keys_warn_and_known_mistakes_fail_with_a_line() {
        let (_, warnings) = parse("- id: a\n  execute-command: x\n  pre-hook-command: y\n", "f").unwrap();
        assert!(
            warnings[0].contains("unknown key `pre-hook-command`"),
            "{warnings:?}"
        );
        let e = err(
            "- id: a\n  execute-command: x\n  trigger-rule:\n    match:\n      type: regex\n      regex: '('\n      parameter: {source: url, name: q}\n",
        );
        assert!(e.starts_with("hooks.yaml:"), "{e}");
        assert!(e.contains("does not compile"), "{e}");
        let e = err(
            "- id: a\n  execute-command: x\n  trigger-rule:\n    match: {type: valeu, parameter: {source: url, name: q}}\n",
        );
        assert!(
            e.contains("hooks.yaml:4") && e.contains("unknown match type `valeu`"),
            "{e}"
        );
        let e = err(
            "- id: a\n  execute-command: x\n  pass-arguments-to-command:\n    - {source: paylod, name: q}\n",
        );
        assert!(e.contains("unknown source `paylod`"), "{e}");
        assert!(err("- id: a\n").contains("execute-command"));
        assert!(err("- id: a\n  execute-command: x\n- id: a\n  execute-command: y\n").contains("twice"));
        assert!(
            err("- id: a\n  execute-command: x\n  success-http-response-code: '200'\n")
                .contains("hooks.yaml:3")
        );
    }

    #[test]
    fn rules_take_the_first_key_set_and_deprecated_types_warn() {
        let (hooks, warnings) = parse(
            "- id: a\n  execute-command: x\n  trigger-rule:\n    or:\n      - match: {type: payload-hash-sha1, secret: s, parameter: {source: header, name: X-Sig}}\n      - match: {type: ip-whitelist, ip-range: '10.0.0.0/8 ::1'}\n      - {}\n",
            "f",
        )
        .unwrap();
        assert!(warnings[0].contains("deprecated"), "{warnings:?}");
        match &hooks[0].trigger_rule {
            Some(Rule::Or(rules)) => {
                assert_eq!(rules.len(), 3);
                assert!(matches!(rules[2], Rule::Empty));
                match &rules[1] {
                    Rule::Match(m) => match &**m {
                        MatchRule::IpWhitelist { ranges } => {
                            assert_eq!(ranges[1], ("::1".parse().unwrap(), 128));
                        }
                        other => panic!("{other:?}"),
                    },
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_names_are_canonical() {
        assert_eq!(canonical_header("x-hub-signature-256"), "X-Hub-Signature-256");
        assert_eq!(canonical_header("CONTENT-type"), "Content-Type");
        assert_eq!(canonical_header("bad name"), "bad name");
    }

    #[test]
    fn empty_file_and_command_timeout() {
        assert!(parse("", "f").unwrap().0.is_empty());
        assert!(parse("[]", "f").unwrap().0.is_empty());
        let h = one("- id: a\n  execute-command: x\n  command-timeout: 2s\n");
        assert_eq!(h.command_timeout, Some(Duration::from_secs(2)));
    }
}
