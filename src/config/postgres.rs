//! `store: postgres://…`: the PostgreSQL connection URL, checked when the configuration is read,
//! with its TLS settings taken out (`sslmode`, `sslrootcert`, as libpq names them) and its
//! password kept out of every message.

use std::path::PathBuf;
use std::str::FromStr;

/// How the connection to PostgreSQL uses TLS (libpq's `sslmode` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without checking its certificate (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is checked only when `sslrootcert` is given.
    Require,
    /// TLS, and the server's certificate must chain to a trusted CA.
    VerifyCa,
    /// TLS, a trusted chain, and the certificate must name the host of the URL.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The `sslmode=` word.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A parsed `postgres://` or `postgresql://` store URL.
#[derive(Clone)]
pub struct PostgresUrl {
    /// The URL as written (holds the password: never shown).
    raw: String,
    /// The URL with its password replaced by `***`: the only form that is ever shown.
    masked: String,
    /// Connection settings for the driver (everything but the TLS keys).
    config: tokio_postgres::Config,
    /// `sslmode=`.
    pub ssl_mode: SslMode,
    /// `sslrootcert=`: the CA certificates (PEM) to trust for the database's certificate instead
    /// of the public web roots.
    pub root_cert: Option<PathBuf>,
}

impl PostgresUrl {
    /// Parse a `postgres://USER:PASS@HOST:PORT/DB?sslmode=…&sslrootcert=…` URL. Errors name the
    /// problem and never repeat the password.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw = text.trim().to_string();
        let masked = mask_password(&raw);
        let (base, query) = match raw.split_once('?') {
            Some((b, q)) => (b, q),
            None => (raw.as_str(), ""),
        };
        let mut ssl_mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| format!("{masked}: the value of `{key}` is not valid UTF-8 once decoded"))?;
            match key {
                "sslmode" => {
                    ssl_mode = SslMode::parse(&value).ok_or_else(|| {
                        format!(
                            "{masked}: sslmode `{value}` is not known; use disable, prefer, require, verify-ca or verify-full"
                        )
                    })?;
                }
                "sslrootcert" if value == "system" => root_cert = None,
                "sslrootcert" if value.is_empty() => {
                    return Err(format!(
                        "{masked}: sslrootcert names no file; write sslrootcert=/path/to/ca.pem"
                    ));
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(value.as_ref())),
                "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcompression" | "requiressl" => {
                    return Err(format!(
                        "{masked}: `{key}` is not supported; Ponte authenticates to PostgreSQL with a password (sslmode and sslrootcert are supported)"
                    ));
                }
                _ => rest.push(pair),
            }
        }
        let for_driver = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&for_driver).map_err(|e| {
            format!("{masked}: not a usable PostgreSQL URL ({e}); write it like postgres://USER:PASSWORD@HOST:5432/DATABASE")
        })?;
        if config.get_hosts().is_empty() {
            return Err(format!(
                "{masked}: names no host; write it like postgres://USER:PASSWORD@HOST:5432/DATABASE"
            ));
        }
        if config.get_user().is_none() {
            return Err(format!(
                "{masked}: names no user; write it like postgres://USER:PASSWORD@HOST:5432/DATABASE"
            ));
        }
        if config.get_dbname().is_none() {
            return Err(format!(
                "{masked}: names no database; write it like postgres://USER:PASSWORD@HOST:5432/DATABASE"
            ));
        }
        // The driver would use the URL's own sslmode; Ponte applies it with its own TLS set-up.
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if config.get_application_name().is_none() {
            config.application_name("ponte-relay");
        }
        Ok(PostgresUrl {
            raw,
            masked,
            config,
            ssl_mode,
            root_cert,
        })
    }

    /// The driver's connection settings.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked)
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({})", self.masked)
    }
}

impl PartialEq for PostgresUrl {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for PostgresUrl {}

/// The URL with the password of its user part, and any `password=` parameter, replaced by `***`.
pub fn mask_password(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let start = scheme_end + 3;
        let end = out[start..].find(['/', '?']).map_or(out.len(), |i| start + i);
        // The user part ends at the last `@` of the authority (a password may contain `@`).
        if let Some(at) = out[start..end].rfind('@') {
            let userinfo = &out[start..start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(start + colon + 1..start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k == "password" => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{base}{}", query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url_is_understood() {
        let u = PostgresUrl::parse(
            "postgres://ponte:s3cr%40t@db.example:6543/queue?sslmode=verify-full&sslrootcert=/etc/ponte/db%20ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(u.ssl_mode, SslMode::VerifyFull);
        assert_eq!(u.root_cert, Some(PathBuf::from("/etc/ponte/db ca.pem")));
        let c = u.config();
        assert_eq!(c.get_user(), Some("ponte"));
        assert_eq!(c.get_password(), Some(&b"s3cr@t"[..]));
        assert_eq!(c.get_dbname(), Some("queue"));
        assert_eq!(c.get_ports(), &[6543]);
        assert_eq!(c.get_connect_timeout(), Some(&std::time::Duration::from_secs(3)));
        assert_eq!(
            c.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require,
            "the driver must insist on TLS for verify-full"
        );
        assert!(PostgresUrl::parse("postgresql://u:p@h/d").is_ok());
        assert_eq!(
            PostgresUrl::parse("postgresql://u:p@h/d").unwrap().ssl_mode,
            SslMode::Prefer,
            "libpq's default"
        );
    }

    #[test]
    fn the_password_is_never_shown() {
        let text = "postgres://ponte:hunter2@db:5432/q?sslmode=require";
        let u = PostgresUrl::parse(text).unwrap();
        for shown in [u.to_string(), format!("{u:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("ponte:***@db:5432/q"), "{shown}");
        }
        assert_eq!(
            mask_password("postgres://u:p@ss:w@rd@h/d?password=x&sslmode=disable"),
            "postgres://u:***@h/d?password=***&sslmode=disable"
        );
        assert_eq!(mask_password("postgres://u@h/d"), "postgres://u@h/d");
        for bad in [
            "postgres://ponte:hunter2@db/q?sslmode=sometimes",
            "postgres://ponte:hunter2@db/q?sslcert=/x.pem",
            "postgres://ponte:hunter2@db:notaport/q",
            "postgres://ponte:hunter2@db/q?nosuchoption=1",
        ] {
            let err = PostgresUrl::parse(bad).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("ponte:***@db"), "{err}");
        }
    }

    #[test]
    fn mistakes_say_what_to_write() {
        let err = PostgresUrl::parse("postgres://u:p@h/d?sslmode=verify").unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
        let err = PostgresUrl::parse("postgres://u:p@h/d?sslrootcert=").unwrap_err();
        assert!(err.contains("sslrootcert=/path"), "{err}");
        let err = PostgresUrl::parse("postgres://u:p@h").unwrap_err();
        assert!(err.contains("no database"), "{err}");
        let err = PostgresUrl::parse("postgres:///d").unwrap_err();
        assert!(err.contains("no host"), "{err}");
        let err = PostgresUrl::parse("postgres://h/d").unwrap_err();
        assert!(err.contains("no user"), "{err}");
    }
}
