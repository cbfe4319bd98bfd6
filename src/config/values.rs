//! Value types used in configuration files: strings with `${VAR}` interpolation, secrets that never
//! print, byte sizes and durations.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A string from a config file, with every `${NAME}` replaced from the environment. `$${` writes a
/// literal `${`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvString(String);

impl EnvString {
    /// The resolved text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Take the resolved text.
    pub fn into_string(self) -> String {
        self.0
    }
    /// A value written in code rather than read from a file.
    pub fn from_static(s: &str) -> Self {
        EnvString(s.to_string())
    }
}

impl fmt::Debug for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, |s| Ok(EnvString(s.to_string())))
    }
}

/// Deserialize a scalar: interpolate `${VAR}`, then convert with `parse`. Both run inside the
/// visitor, so an error is reported at the value's own line and key path.
pub fn parse_scalar<'de, D, T, F>(d: D, parse: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct ScalarVisitor<F>(F);

    impl<F> ScalarVisitor<F> {
        fn finish<T, E: serde::de::Error>(self, raw: &str) -> Result<T, E>
        where
            F: FnOnce(&str) -> Result<T, String>,
        {
            let text = interpolate(raw, &super::lookup_env).map_err(E::custom)?;
            (self.0)(&text).map_err(E::custom)
        }
    }

    impl<'de, T, F: FnOnce(&str) -> Result<T, String>> serde::de::Visitor<'de> for ScalarVisitor<F> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            self.finish(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
            self.finish(&v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
            self.finish(&v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
            self.finish(&v.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<T, E> {
            self.finish(&v.to_string())
        }
    }

    d.deserialize_str(ScalarVisitor(parse))
}

/// Replace `${NAME}` in `raw` using `lookup`.
pub(crate) fn interpolate(raw: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("`${{` without a closing `}}` in `{raw}`"))?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable reference"
                ));
            }
            let value = lookup(name).ok_or_else(|| {
                format!("environment variable {name} is not set (the file refers to ${{{name}}}); set it or write the value in the file")
            })?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A secret (token, password). Its `Debug` and `Display` print a mask, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(EnvString);

impl Secret {
    /// Wrap a secret given on the command line or in the environment.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(EnvString(value.into()))
    }
    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A size in bytes, written as `1048576`, `512KiB`, `10MiB`, `1GiB` (or kB/MB/GB, powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parse the textual form.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a size; write it like 1048576, 512KiB or 10MiB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{text}`; use KiB, MiB or GiB"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, ByteSize::parse)
    }
}

/// Durations are written as `30s`, `5m`, `1h 30m`, `500ms`.
pub mod duration {
    use super::*;

    /// Parse one duration.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("`{text}` is not a duration ({e}); write it like 30s, 5m or 1h"))
    }

    /// serde `with` adapter.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse_scalar(d, parse)
    }
}

/// serde `with` adapter for an optional duration.
pub mod opt_duration {
    use super::*;

    /// Deserialize `Option<Duration>`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct Wrapped(Duration);
        impl<'de> Deserialize<'de> for Wrapped {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                parse_scalar(d, duration::parse).map(Wrapped)
            }
        }
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_cases() {
        let env = |n: &str| match n {
            "A" => Some("x".to_string()),
            _ => None,
        };
        assert_eq!(interpolate("${A}/${A}", &env).unwrap(), "x/x");
        assert_eq!(interpolate("$${A}", &env).unwrap(), "${A}");
        assert_eq!(interpolate("cost $5", &env).unwrap(), "cost $5");
        assert!(interpolate("${B}", &env).unwrap_err().contains("B is not set"));
        assert!(interpolate("${A", &env).is_err());
        assert!(interpolate("${A-B}", &env).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("10MiB").unwrap().0, 10 << 20);
        assert_eq!(ByteSize::parse("16 KiB").unwrap().0, 16 << 10);
        assert_eq!(ByteSize::parse("1000").unwrap().0, 1000);
        assert!(ByteSize::parse("ten").is_err());
        assert!(ByteSize::parse("1PB").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "\"***\" ***");
    }
}
