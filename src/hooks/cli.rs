//! `ponte webhook`'s command line: adnanh/webhook's flags, accepted as Go writes them
//! (`-hooks hooks.yaml -port 8000 -verbose`, `-port=8000`, `-verbose=false`) and with double
//! dashes. Go's flag syntax is not clap's, so [`normalize_go_flags`] rewrites the argv first.

use std::ffi::OsString;
use std::path::PathBuf;

/// Flags that take a value (`-name value` or `-name=value`).
const VALUE_FLAGS: &[&str] = &[
    "hooks",
    "ip",
    "port",
    "urlprefix",
    "http-methods",
    "header",
    "cert",
    "key",
    "max-multipart-mem",
    "x-request-id-limit",
    "logfile",
    "pidfile",
    "tls-min-version",
    "cipher-suites",
    "setuid",
    "setgid",
    "socket",
    "max-body-size",
    "command-timeout",
    "max-concurrent-hooks",
];

/// Boolean flags (`-verbose`, `-verbose=true`, `-verbose=false`).
const BOOL_FLAGS: &[&str] = &[
    "verbose",
    "debug",
    "nopanic",
    "hotreload",
    "template",
    "secure",
    "version",
    "x-request-id",
    "list-cipher-suites",
];

/// Rewrite the arguments after the `webhook` subcommand from Go's flag syntax to clap's:
/// `-name` → `--name`, `-name=false` dropped, `-help`/`-h` → `--help`. A value that follows a
/// flag taking one is left alone even if it starts with a dash; `--` ends the flags.
pub fn normalize_go_flags(args: Vec<OsString>) -> Vec<OsString> {
    // The subcommand is the first word that is neither a global flag nor its value.
    const GLOBAL_VALUE_FLAGS: &[&str] = &["--log-level", "--log-format", "--worker-threads"];
    let mut sub = None;
    let mut i = 1;
    while let Some(a) = args.get(i) {
        let t = a.to_string_lossy();
        if GLOBAL_VALUE_FLAGS.contains(&t.as_ref()) {
            i += 2;
            continue;
        }
        if !t.starts_with('-') {
            sub = (t == "webhook").then_some(i);
            break;
        }
        i += 1;
    }
    let Some(sub) = sub else {
        return args;
    };
    let mut out: Vec<OsString> = args[..=sub].to_vec();
    let mut rest = args[sub + 1..].iter();
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg.clone());
            continue;
        };
        if text == "--" {
            out.push(arg.clone());
            out.extend(rest.cloned());
            break;
        }
        let Some(body) = text.strip_prefix("--").or_else(|| text.strip_prefix('-')) else {
            out.push(arg.clone());
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            out.push("--help".into());
            continue;
        }
        if BOOL_FLAGS.contains(&name) {
            match value.map(str::to_ascii_lowercase).as_deref() {
                None | Some("true" | "1" | "t") => out.push(format!("--{name}").into()),
                Some("false" | "0" | "f") => {}
                // Let clap report the odd value against the flag's name.
                Some(_) => out.push(format!("--{body}").into()),
            }
            continue;
        }
        out.push(format!("--{body}").into());
        if VALUE_FLAGS.contains(&name)
            && value.is_none()
            && let Some(v) = rest.next()
        {
            out.push(v.clone());
        }
    }
    out
}

/// The flags of `ponte webhook` (adnanh/webhook 2.8's, plus a few of Ponte's).
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Flags are written as adnanh/webhook writes them (-hooks hooks.yaml -port 8000 -verbose) or with two dashes.\nHooks are served at http://IP:PORT/URLPREFIX/ID."
)]
pub struct WebhookFlags {
    /// Hooks file (JSON or YAML); repeat to load several [default: hooks.json].
    #[arg(long = "hooks", value_name = "FILE")]
    pub hooks: Vec<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub ip: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    /// URL prefix: hooks are served at /PREFIX/ID (empty: /ID).
    #[arg(long, default_value = "hooks")]
    pub urlprefix: String,
    /// Log every request and command (info level).
    #[arg(long)]
    pub verbose: bool,
    /// Log at debug level, including request heads.
    #[arg(long)]
    pub debug: bool,
    /// Start even when no hook could be loaded, without -verbose.
    #[arg(long)]
    pub nopanic: bool,
    /// Reload the hooks files when they change (checked every second); a broken file keeps the
    /// previous hooks.
    #[arg(long)]
    pub hotreload: bool,
    /// Render the hooks files as Go templates (getenv, cat, credential).
    #[arg(long)]
    pub template: bool,
    /// Serve HTTPS with -cert and -key.
    #[arg(long)]
    pub secure: bool,
    /// Certificate (PEM) for -secure.
    #[arg(long, default_value = "cert.pem")]
    pub cert: PathBuf,
    /// Private key (PEM) for -secure.
    #[arg(long, default_value = "key.pem")]
    pub key: PathBuf,
    /// Lowest TLS version for -secure: 1.2 or 1.3.
    #[arg(long = "tls-min-version", default_value = "1.2")]
    pub tls_min_version: String,
    /// Methods allowed for hooks that list none, comma-separated (e.g. POST).
    #[arg(long = "http-methods", value_name = "METHODS")]
    pub http_methods: Option<String>,
    /// Response header for every hook, NAME=VALUE; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub header: Vec<String>,
    /// Use the X-Request-Id header, when present, as the request id in logs.
    #[arg(long = "x-request-id")]
    pub x_request_id: bool,
    /// Truncate X-Request-Id to this many characters (0: no limit).
    #[arg(long = "x-request-id-limit", default_value_t = 0)]
    pub x_request_id_limit: usize,
    /// Accepted for compatibility; multipart bodies are held in memory within -max-body-size.
    #[arg(long = "max-multipart-mem", default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_multipart_mem: i64,
    /// Write the log to this file instead of stderr (implies -verbose).
    #[arg(long, value_name = "FILE")]
    pub logfile: Option<PathBuf>,
    /// Write the process id to this file while running.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Print the version and exit.
    #[arg(long)]
    pub version: bool,
    /// Largest request body accepted (Ponte), e.g. 10MiB; larger ones get 413.
    #[arg(long = "max-body-size", default_value = "10MiB", value_name = "SIZE")]
    pub max_body_size: String,
    /// Time a command may run before it is killed with its children (Ponte); a hook's
    /// `command-timeout` overrides it.
    #[arg(long = "command-timeout", default_value = "60s", value_name = "DURATION")]
    pub command_timeout: String,
    /// Commands running at once (Ponte); more requests get 503 until one ends.
    #[arg(long = "max-concurrent-hooks", default_value_t = super::exec::DEFAULT_MAX_CONCURRENT)]
    pub max_concurrent_hooks: usize,
    /// Not supported (a Unix socket or Windows named pipe); use -ip and -port.
    #[arg(long, hide = true)]
    pub socket: Option<String>,
    /// Not supported; run the service as the user it should run as.
    #[arg(long, hide = true)]
    pub setuid: Option<String>,
    /// Not supported; run the service as the group it should run as.
    #[arg(long, hide = true)]
    pub setgid: Option<String>,
    /// Not supported; rustls chooses safe cipher suites itself.
    #[arg(long = "cipher-suites", hide = true)]
    pub cipher_suites: Option<String>,
    /// Not supported; rustls chooses safe cipher suites itself.
    #[arg(long = "list-cipher-suites", hide = true)]
    pub list_cipher_suites: bool,
}

impl WebhookFlags {
    /// The first flag given that Ponte does not support, with the reason and what to do.
    pub fn unsupported(&self) -> Option<String> {
        if self.socket.is_some() {
            return Some("-socket is not supported by ponte webhook; listen on -ip and -port".into());
        }
        if self.setuid.is_some() || self.setgid.is_some() {
            return Some(
                "-setuid/-setgid are not supported by ponte webhook; start it as the user it should run as (e.g. User= in the systemd unit)"
                    .into(),
            );
        }
        if self.cipher_suites.is_some() || self.list_cipher_suites {
            return Some(
                "-cipher-suites/-list-cipher-suites are not supported: rustls offers only modern suites; remove the flag"
                    .into(),
            );
        }
        None
    }

    /// The log level these flags ask for.
    pub fn log_level(&self) -> &'static str {
        if self.debug {
            "debug"
        } else if self.verbose || self.logfile.is_some() {
            "info"
        } else {
            "warn"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_go_flags(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_flags_become_clap_flags() {
        assert_eq!(
            norm(&[
                "ponte",
                "webhook",
                "-port",
                "8000",
                "-hooks",
                "config/hooks.yaml",
                "-verbose"
            ]),
            [
                "ponte",
                "webhook",
                "--port",
                "8000",
                "--hooks",
                "config/hooks.yaml",
                "--verbose"
            ]
        );
        assert_eq!(
            norm(&[
                "ponte",
                "webhook",
                "-port=8000",
                "--hooks=a.json",
                "-hotreload=true",
                "-template=false"
            ]),
            ["ponte", "webhook", "--port=8000", "--hooks=a.json", "--hotreload"]
        );
        // A value starting with a dash stays a value.
        assert_eq!(
            norm(&["ponte", "webhook", "-header", "-x=1", "-urlprefix", ""]),
            ["ponte", "webhook", "--header", "-x=1", "--urlprefix", ""]
        );
        assert_eq!(norm(&["ponte", "webhook", "-h"]), ["ponte", "webhook", "--help"]);
        assert_eq!(
            norm(&["ponte", "webhook", "-help"]),
            ["ponte", "webhook", "--help"]
        );
        assert_eq!(
            norm(&["ponte", "webhook", "-verbose=maybe"]),
            ["ponte", "webhook", "--verbose=maybe"]
        );
        // Global flags before the subcommand and other subcommands are untouched.
        assert_eq!(
            norm(&["ponte", "--log-format", "json", "webhook", "-nopanic"]),
            ["ponte", "--log-format", "json", "webhook", "--nopanic"]
        );
        assert_eq!(
            norm(&["ponte", "agent", "-c", "x"]),
            ["ponte", "agent", "-c", "x"]
        );
        assert_eq!(
            norm(&["ponte", "agent", "--hooks", "webhook", "-c", "x"]),
            ["ponte", "agent", "--hooks", "webhook", "-c", "x"]
        );
        assert_eq!(
            norm(&["ponte", "webhook", "--", "-verbose"]),
            ["ponte", "webhook", "--", "-verbose"]
        );
    }
}
