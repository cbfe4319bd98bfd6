//! Command hooks end to end, each case run two ways: through the real `ponte webhook` binary (the
//! webhook.exe drop-in) and through a real relay and agent (`hooks:` ingress rule). The answers
//! must be adnanh/webhook 2.8's: status codes, texts, arguments as literal argv entries.
#![cfg(unix)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::process::Process;
use support::*;

/// Scripts the hooks run. Each prints what it received in a form the tests can compare exactly.
const SCRIPTS: &[(&str, &str)] = &[
    (
        "args.sh",
        "#!/bin/sh\nfor a in \"$@\"; do printf '[%s]\\n' \"$a\"; done\n",
    ),
    (
        "env.sh",
        "#!/bin/sh\nprintf 'who=[%s] token=[%s]\\n' \"$HOOK_who\" \"$TOKEN\"\n",
    ),
    ("fail.sh", "#!/bin/sh\necho failing output\nexit 3\n"),
    (
        "files.sh",
        "#!/bin/sh\nprintf 'doc=[%s] b64=[%s]\\n' \"$(cat \"$DOC_FILE\")\" \"$(cat \"$HOOK_BIN\")\"\necho \"$DOC_FILE\" > \"$PONTE_FILES_LOG\"\n",
    ),
    ("marker.sh", "#!/bin/sh\nprintf '%s' \"$1\" > \"$2\"\n"),
    // The background sleep is a grandchild: the timeout must kill it too.
    ("sleep.sh", "#!/bin/sh\nsleep 30 &\necho $! > \"$1\"\nsleep 30\n"),
    ("big.sh", "#!/bin/sh\nhead -c 10485760 /dev/zero | tr '\\0' x\n"),
    ("slow.sh", "#!/bin/sh\n: > \"$1\"\nsleep 2\necho done\n"),
];

/// A directory with the scripts and a hooks file using them.
struct Fixture {
    dir: tempfile::TempDir,
    hooks: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in SCRIPTS {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("script");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let d = dir.path().display().to_string();
        let hooks = dir.path().join("hooks.yaml");
        std::fs::write(&hooks, hooks_yaml(&d)).expect("hooks file");
        Fixture { dir, hooks }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn hooks_yaml(d: &str) -> String {
    format!(
        r#"
- id: args
  execute-command: ./args.sh
  command-working-directory: {d}
  include-command-output-in-response: true
  pass-arguments-to-command:
    - {{source: payload, name: a.b}}
    - {{source: payload, name: list.1}}
    - {{source: header, name: x-token}}
    - {{source: url, name: q}}
    - {{source: query, name: q}}
    - {{source: request, name: method}}
    - {{source: string, name: static arg}}
    - {{source: payload, name: missing}}
    - {{source: payload, name: num}}
- id: payload
  execute-command: {d}/args.sh
  include-command-output-in-response: true
  pass-arguments-to-command:
    - {{source: entire-payload}}
- id: raw
  execute-command: {d}/args.sh
  include-command-output-in-response: true
  pass-arguments-to-command:
    - {{source: raw-request-body}}
    - {{source: entire-query}}
- id: remote
  execute-command: {d}/args.sh
  include-command-output-in-response: true
  pass-arguments-to-command:
    - {{source: request, name: remote-addr}}
- id: value
  execute-command: /bin/true
  response-message: ok
  trigger-rule:
    match: {{type: value, value: secret, parameter: {{source: header, name: X-Token}}}}
- id: regex
  execute-command: /bin/true
  response-message: ok
  trigger-rule-mismatch-http-response-code: 403
  trigger-rule:
    match: {{type: regex, regex: '^refs/heads/(main|master)$', parameter: {{source: payload, name: ref}}}}
- id: hmac
  execute-command: {d}/args.sh
  include-command-output-in-response: true
  pass-arguments-to-command:
    - {{source: raw-request-body}}
  trigger-rule:
    match: {{type: payload-hmac-sha256, secret: s3cret, parameter: {{source: header, name: X-Hub-Signature-256}}}}
- id: soft
  execute-command: /bin/true
  response-message: ok
  trigger-signature-soft-failures: true
  trigger-rule:
    or:
      - match: {{type: payload-hmac-sha1, secret: s3cret, parameter: {{source: header, name: X-Hub-Signature}}}}
      - match: {{type: value, value: "yes", parameter: {{source: url, name: token}}}}
- id: ip
  execute-command: /bin/true
  response-message: ok
  trigger-rule:
    match: {{type: ip-whitelist, ip-range: "127.0.0.1/32 ::1"}}
- id: ip-deny
  execute-command: /bin/true
  trigger-rule:
    match: {{type: ip-whitelist, ip-range: 10.0.0.0/8}}
- id: not
  execute-command: /bin/true
  response-message: ok
  trigger-rule:
    and:
      - not: {{match: {{type: value, value: blocked, parameter: {{source: payload, name: user}}}}}}
      - match: {{type: value, value: push, parameter: {{source: header, name: X-Event}}}}
- id: post-only
  execute-command: /bin/true
  response-message: ok
  http-methods: [post]
- id: fail
  execute-command: {d}/fail.sh
  include-command-output-in-response: true
- id: fail-output
  execute-command: {d}/fail.sh
  include-command-output-in-response: true
  include-command-output-in-response-on-error: true
- id: missing
  execute-command: ./does-not-exist
  command-working-directory: {d}
  include-command-output-in-response: true
- id: missing-async
  execute-command: /nonexistent/program
- id: created
  execute-command: /bin/true
  response-message: created
  success-http-response-code: 201
  response-headers:
    - {{name: X-Hook, value: "yes"}}
    - {{name: Content-Type, value: application/json}}
- id: async
  execute-command: {d}/marker.sh
  response-message: started
  pass-arguments-to-command:
    - {{source: payload, name: text}}
    - {{source: payload, name: path}}
- id: env
  execute-command: {d}/env.sh
  include-command-output-in-response: true
  pass-environment-to-command:
    - {{source: payload, name: who}}
    - {{source: header, name: X-Token, envname: TOKEN}}
- id: files
  execute-command: {d}/files.sh
  command-working-directory: {d}
  include-command-output-in-response: true
  pass-environment-to-command:
    - {{source: string, name: ignored, envname: PONTE_FILES_LOG}}
  pass-file-to-command:
    - {{source: payload, name: doc, envname: DOC_FILE}}
    - {{source: payload, name: bin, base64decode: true}}
- id: json-param
  execute-command: {d}/args.sh
  include-command-output-in-response: true
  parse-parameters-as-json:
    - {{source: url, name: data}}
  pass-arguments-to-command:
    - {{source: url, name: data.inner.0}}
- id: forced-json
  execute-command: {d}/args.sh
  incoming-payload-content-type: application/json
  include-command-output-in-response: true
  pass-arguments-to-command:
    - {{source: payload, name: k}}
- id: sleep
  execute-command: {d}/sleep.sh
  command-timeout: 1s
  include-command-output-in-response: true
  pass-arguments-to-command:
    - {{source: payload, name: pidfile}}
- id: slow
  execute-command: {d}/slow.sh
  include-command-output-in-response: true
  pass-arguments-to-command:
    - {{source: url, name: started}}
- id: big
  execute-command: {d}/big.sh
  include-command-output-in-response: true
- id: meta
  execute-command: {d}/args.sh
  include-command-output-in-response: true
  pass-arguments-to-command:
    - {{source: payload, name: p}}
    - {{source: header, name: X-Meta}}
    - {{source: url, name: q}}
  pass-environment-to-command:
    - {{source: payload, name: p, envname: META}}
"#
    )
}

/// Where requests go: the `ponte webhook` binary or a relay in front of an agent.
enum Target {
    Webhook {
        process: Process,
        base: String,
    },
    Tunnel {
        relay: RelayHandle,
        agent: AgentHandle,
        certs: Certs,
    },
}

impl Target {
    async fn webhook(hooks: &Path, extra: &[&str]) -> Target {
        let file = hooks.to_str().unwrap();
        let mut args = vec![
            "webhook",
            "-ip",
            "127.0.0.1",
            "-port",
            "0",
            "-hooks",
            file,
            "-verbose",
        ];
        args.extend_from_slice(extra);
        let process = Process::spawn(&args);
        let addr = serving_address(&process).await;
        Target::Webhook {
            process,
            base: format!("http://{addr}"),
        }
    }

    async fn tunnel(hooks: &Path) -> Target {
        let certs = Certs::new();
        let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
        let mut agent = start_agent(&agent_yaml(
            &relay.url(true),
            Some(&certs),
            &format!("ingress:\n  - path: /hooks/\n    hooks: {}\n", hooks.display()),
        ));
        agent.connected().await;
        Target::Tunnel { relay, agent, certs }
    }

    fn url(&self, path: &str) -> String {
        match self {
            Target::Webhook { base, .. } => format!("{base}{path}"),
            Target::Tunnel { relay, .. } => format!("{}/t/demo{path}", relay.url(true)),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(ponte::body::boxed(Full::new(body.into())))
            .expect("request");
        let c = match self {
            Target::Webhook { .. } => client(None, false),
            Target::Tunnel { certs, .. } => client(Some(certs), false),
        };
        send(&c, req).await
    }

    async fn post_json(&self, path: &str, json: &str) -> Reply {
        self.send(
            "POST",
            path,
            &[("content-type", "application/json")],
            json.to_string(),
        )
        .await
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Target::Webhook { process, .. } => Some(process.pid()),
            Target::Tunnel { .. } => None,
        }
    }

    async fn stop(self) {
        if let Target::Tunnel { relay, agent, .. } = self {
            agent.stop().await;
            relay.stop().await;
        }
    }
}

/// The address `ponte webhook` logged in "serving hooks on …".
async fn serving_address(process: &Process) -> String {
    eventually("the serving hooks line", || async {
        process.output().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["message"]
                .as_str()?
                .starts_with("serving hooks on")
                .then(|| v["address"].as_str().map(str::to_string))?
        })
    })
    .await
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Webhook,
    Tunnel,
}

async fn target(mode: Mode, f: &Fixture) -> Target {
    match mode {
        Mode::Webhook => Target::webhook(&f.hooks, &[]).await,
        Mode::Tunnel => Target::tunnel(&f.hooks).await,
    }
}

/// One test per case and way of running it.
macro_rules! both_ways {
    ($case:ident) => {
        mod $case {
            use super::*;
            #[tokio::test]
            async fn through_ponte_webhook() {
                let f = Fixture::new();
                let t = target(Mode::Webhook, &f).await;
                super::$case(&t, &f).await;
                t.stop().await;
            }
            #[tokio::test]
            async fn through_relay_and_agent() {
                let f = Fixture::new();
                let t = target(Mode::Tunnel, &f).await;
                super::$case(&t, &f).await;
                t.stop().await;
            }
        }
    };
}

fn lines(r: &Reply) -> Vec<String> {
    r.text().lines().map(str::to_string).collect()
}

// === Cases ===

async fn sources_reach_the_program(t: &Target, _f: &Fixture) {
    let r = t
        .send(
            "POST",
            "/hooks/args?q=query%20value",
            &[("content-type", "application/json"), ("x-token", "tok")],
            r#"{"a": {"b": "nested"}, "list": ["zero", {"one": 1}], "num": 10.50}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        lines(&r),
        [
            "[nested]",
            r#"[{"one":1}]"#,
            "[tok]",
            "[query value]",
            "[query value]",
            "[POST]",
            "[static arg]",
            "[]",
            "[10.50]"
        ]
    );
}
both_ways!(sources_reach_the_program);

async fn payload_by_content_type(t: &Target, _f: &Fixture) {
    let json = t
        .post_json("/hooks/payload", r#"{"z": [1, 2.0], "a": "<&>"}"#)
        .await;
    assert_eq!(lines(&json), [r#"[{"a":"\u003c\u0026\u003e","z":[1,2.0]}]"#]);
    let array = t.post_json("/hooks/payload", "[1, 2]").await;
    assert_eq!(lines(&array), [r#"[{"root":[1,2]}]"#]);
    let form = t
        .send(
            "POST",
            "/hooks/payload",
            &[("content-type", "application/x-www-form-urlencoded")],
            "name=Jo%C3%A3o+Silva&x=1&x=2",
        )
        .await;
    assert_eq!(lines(&form), [r#"[{"name":"João Silva","x":"1"}]"#]);
    let xml = t
        .send(
            "POST",
            "/hooks/payload",
            &[("content-type", "application/xml")],
            r#"<consulta id="7"><paciente>Ana</paciente><paciente>Rui</paciente></consulta>"#,
        )
        .await;
    assert_eq!(
        lines(&xml),
        [r#"[{"consulta":{"-id":"7","paciente":["Ana","Rui"]}}]"#]
    );
    let multipart = t
        .send(
            "POST",
            "/hooks/payload",
            &[("content-type", "multipart/form-data; boundary=XyZ")],
            "--XyZ\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n--XyZ\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"d.json\"\r\nContent-Type: application/json\r\n\r\n{\"k\": true}\r\n--XyZ--\r\n",
        )
        .await;
    assert_eq!(lines(&multipart), [r#"[{"doc":{"k":true},"field":"value"}]"#]);
    let none = t
        .send("POST", "/hooks/payload", &[("content-type", "text/plain")], "x")
        .await;
    assert_eq!(lines(&none), ["[null]"]);
    let broken = t.post_json("/hooks/payload", "{not json").await;
    assert_eq!(lines(&broken), ["[null]"]);
    let bad_multipart = t
        .send(
            "POST",
            "/hooks/payload",
            &[("content-type", "multipart/form-data; boundary=Q")],
            "garbage",
        )
        .await;
    assert_eq!(bad_multipart.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        bad_multipart.text(),
        "Error occurred while parsing multipart form."
    );
    let raw = t
        .send(
            "PUT",
            "/hooks/raw?b=2&a=1",
            &[("content-type", "text/plain")],
            "raw body\nline 2",
        )
        .await;
    assert_eq!(
        r#"[raw body
line 2]
[{"a":"1","b":"2"}]
"#,
        raw.text()
    );
    let forced = t
        .send(
            "POST",
            "/hooks/forced-json",
            &[("content-type", "text/plain")],
            r#"{"k": "v"}"#,
        )
        .await;
    assert_eq!(lines(&forced), ["[v]"]);
    let json_param = t
        .send(
            "GET",
            "/hooks/json-param?data=%7B%22inner%22%3A%5B%22first%22%5D%7D",
            &[],
            "",
        )
        .await;
    assert_eq!(lines(&json_param), ["[first]"]);
}
both_ways!(payload_by_content_type);

async fn value_and_regex_rules(t: &Target, _f: &Fixture) {
    let ok = t.send("POST", "/hooks/value", &[("x-token", "secret")], "").await;
    assert_eq!((ok.status, ok.text().as_str()), (StatusCode::OK, "ok"));
    let wrong = t.send("POST", "/hooks/value", &[("x-token", "nope")], "").await;
    assert_eq!(
        (wrong.status, wrong.text().as_str()),
        (StatusCode::OK, "Hook rules were not satisfied.")
    );
    // A missing parameter is a plain mismatch, not an error.
    let missing = t.send("POST", "/hooks/value", &[], "").await;
    assert_eq!(
        (missing.status, missing.text().as_str()),
        (StatusCode::OK, "Hook rules were not satisfied.")
    );
    let main = t.post_json("/hooks/regex", r#"{"ref": "refs/heads/main"}"#).await;
    assert_eq!((main.status, main.text().as_str()), (StatusCode::OK, "ok"));
    let other = t.post_json("/hooks/regex", r#"{"ref": "refs/heads/dev"}"#).await;
    assert_eq!(
        (other.status, other.text().as_str()),
        (StatusCode::FORBIDDEN, "Hook rules were not satisfied.")
    );
    let not_ok = t
        .send(
            "POST",
            "/hooks/not",
            &[("content-type", "application/json"), ("x-event", "push")],
            r#"{"user": "ana"}"#,
        )
        .await;
    assert_eq!(not_ok.text(), "ok");
    let blocked = t
        .send(
            "POST",
            "/hooks/not",
            &[("content-type", "application/json"), ("x-event", "push")],
            r#"{"user": "blocked"}"#,
        )
        .await;
    assert_eq!(blocked.text(), "Hook rules were not satisfied.");
}
both_ways!(value_and_regex_rules);

fn hmac_sha256(secret: &str, body: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(body.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

async fn hmac_signatures(t: &Target, _f: &Fixture) {
    let body = r#"{"action": "opened"}"#;
    let good = hmac_sha256("s3cret", body);
    for sig in [
        format!("sha256={good}"),
        good.clone(),
        format!("sha256=0000,sha256={good}"),
    ] {
        let r = t
            .send("POST", "/hooks/hmac", &[("x-hub-signature-256", &sig)], body)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{sig}: {}", r.text());
        assert_eq!(r.text(), format!("[{body}]\n"));
    }
    // A bad signature is an evaluation error: 500, as adnanh answers.
    for sig in ["sha256=0000", "", &format!("sha1={good}")] {
        let r = t
            .send("POST", "/hooks/hmac", &[("x-hub-signature-256", sig)], body)
            .await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{sig:?}");
        assert_eq!(r.text(), "Error occurred while evaluating hook rules.");
    }
    // The body signed is the body sent: one changed byte fails.
    let r = t
        .send(
            "POST",
            "/hooks/hmac",
            &[("x-hub-signature-256", &format!("sha256={good}"))],
            body.replace("opened", "closed"),
        )
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let r = t.send("POST", "/hooks/hmac", &[], body).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "Hook rules were not satisfied.")
    );
    // Soft failures inside `or`: a bad signature only makes its branch false.
    let r = t
        .send(
            "POST",
            "/hooks/soft?token=yes",
            &[("x-hub-signature", "sha1=00")],
            "x",
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    let r = t
        .send(
            "POST",
            "/hooks/soft?token=no",
            &[("x-hub-signature", "sha1=00")],
            "x",
        )
        .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "Hook rules were not satisfied.")
    );
}
both_ways!(hmac_signatures);

async fn sender_address_and_ip_whitelist(t: &Target, _f: &Fixture) {
    let r = t.send("GET", "/hooks/remote", &[], "").await;
    let text = r.text();
    assert!(text.starts_with("[127.0.0.1:"), "{text}");
    let r = t.send("GET", "/hooks/ip", &[], "").await;
    assert_eq!(r.text(), "ok");
    let r = t.send("GET", "/hooks/ip-deny", &[], "").await;
    assert_eq!(r.text(), "Hook rules were not satisfied.");
}
both_ways!(sender_address_and_ip_whitelist);

async fn routing_methods_and_status_codes(t: &Target, _f: &Fixture) {
    let r = t.send("POST", "/hooks/nope", &[], "").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::NOT_FOUND, "Hook not found.")
    );
    let r = t.send("GET", "/hooks/post-only", &[], "").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "")
    );
    let r = t.send("POST", "/hooks/post-only", &[], "").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    let r = t.send("POST", "/hooks/created", &[], "").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.text(), "created");
    assert_eq!(r.header("x-hook"), "yes");
    assert_eq!(r.header("content-type"), "application/json");
    let r = t.send("POST", "/hooks/value", &[("x-token", "secret")], "").await;
    assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");
}
both_ways!(routing_methods_and_status_codes);

async fn command_failures(t: &Target, _f: &Fixture) {
    let r = t.send("POST", "/hooks/fail", &[], "").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        r.text(),
        "Error occurred while executing the hook's command. Please check your logs for more details."
    );
    let r = t.send("POST", "/hooks/fail-output", &[], "").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "failing output\n")
    );
    for id in ["missing", "missing-async"] {
        let r = t.send("POST", &format!("/hooks/{id}"), &[], "").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{id}");
        assert_eq!(
            r.text(),
            "Error occurred while executing the hook's command. Please check your logs for more details."
        );
    }
}
both_ways!(command_failures);

async fn async_hooks_answer_at_once_and_run(t: &Target, f: &Fixture) {
    let marker = f.path("marker.txt");
    let r = t
        .post_json(
            "/hooks/async",
            &format!(r#"{{"text": "ran; $(touch x)", "path": "{}"}}"#, marker.display()),
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "started"));
    let written = eventually("the async command", || async {
        std::fs::read_to_string(&marker).ok().filter(|t| !t.is_empty())
    })
    .await;
    assert_eq!(written, "ran; $(touch x)");
}
both_ways!(async_hooks_answer_at_once_and_run);

async fn environment_and_files(t: &Target, f: &Fixture) {
    let r = t
        .send(
            "POST",
            "/hooks/env",
            &[("content-type", "application/json"), ("x-token", "t0k")],
            r#"{"who": "Ana Maria"}"#,
        )
        .await;
    assert_eq!(r.text(), "who=[Ana Maria] token=[t0k]\n");
    let r = t
        .post_json(
            "/hooks/files",
            r#"{"doc": "line 1\nline 2", "bin": "aGVsbG8gd29ybGQ="}"#,
        )
        .await;
    assert_eq!(r.text(), "doc=[line 1\nline 2] b64=[hello world]\n");
    // The script logged where its file was: in the working directory, named after the
    // variable, and removed once the command ended.
    let written = std::fs::read_to_string(f.path("ignored")).expect("files.sh log");
    let path = PathBuf::from(written.trim());
    assert!(path.starts_with(f.dir.path()), "{}", path.display());
    assert!(
        path.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("DOC_FILE")
    );
    assert!(!path.exists(), "{} was left behind", path.display());
    let leftovers: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("DOC_FILE") || n.starts_with("HOOK_BIN"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
both_ways!(environment_and_files);

/// Shell metacharacters in every source reach the program as literal bytes and run nothing.
async fn shell_metacharacters_stay_literal(t: &Target, f: &Fixture) {
    let canary = f.path("pwned");
    let c = canary.display();
    let evil = [
        format!("$(touch {c})"),
        format!("`touch {c}`"),
        format!("; touch {c}"),
        format!("| touch {c}"),
        format!("&& touch {c}"),
        format!("\ntouch {c}\n"),
        format!("'\"; touch {c}; echo \"'"),
        "%PATH% ^& >out <in * ?".to_string(),
    ];
    for e in &evil {
        let body = serde_json::json!({ "p": e }).to_string();
        let q: String = url::form_urlencoded::byte_serialize(e.as_bytes()).collect();
        // HTTP trims a header value's outer spaces.
        let header = e.replace('\n', " ").trim().to_string();
        let r = t
            .send(
                "POST",
                &format!("/hooks/meta?q={q}"),
                &[("content-type", "application/json"), ("x-meta", &header)],
                body,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), format!("[{e}]\n[{header}]\n[{e}]\n"));
    }
    assert!(!canary.exists(), "a metacharacter was interpreted");
}
both_ways!(shell_metacharacters_stay_literal);

/// A command past its timeout is killed with its children; other hooks answer meanwhile.
async fn timeout_kills_the_process_tree(t: &Target, f: &Fixture) {
    let pidfile = f.path("grandchild.pid");
    let body = serde_json::json!({ "pidfile": pidfile.display().to_string() }).to_string();
    let slow = t.post_json("/hooks/sleep", &body);
    let other = async {
        // While the sleeper runs, another hook answers at once.
        let started = std::time::Instant::now();
        let r = t.send("POST", "/hooks/value", &[("x-token", "secret")], "").await;
        assert_eq!(r.text(), "ok");
        started.elapsed()
    };
    let started = std::time::Instant::now();
    let (r, other_took) = tokio::join!(slow, other);
    assert!(other_took < Duration::from_secs(1), "{other_took:?}");
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    eventually("the grandchild to be gone", || async {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        (!alive).then_some(())
    })
    .await;
}
both_ways!(timeout_kills_the_process_tree);

/// 10 MiB of output: the answer is cut at 1 MiB and the server's memory stays bounded.
async fn output_is_capped(t: &Target, _f: &Fixture) {
    let r = t.send("POST", "/hooks/big", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 1 << 20);
    assert!(r.body.iter().all(|b| *b == b'x'));
    if let Some(pid) = t.pid() {
        let peak = peak_rss_kib(pid);
        assert!(peak < 48 * 1024, "ponte webhook peaked at {peak} KiB");
    }
}
both_ways!(output_is_capped);

// === `ponte webhook` only ===

#[tokio::test]
async fn concurrency_limit_answers_503() {
    let f = Fixture::new();
    let t = Target::webhook(&f.hooks, &["-max-concurrent-hooks", "1"]).await;
    let started = f.path("slow.started");
    let first_path = format!("/hooks/slow?started={}", started.display());
    let first = t.send("POST", &first_path, &[], "");
    let second = async {
        // Sent once the first command is known to be running.
        eventually("the first command to start", || async {
            started.exists().then_some(())
        })
        .await;
        t.send("POST", "/hooks/slow?started=/dev/null", &[], "").await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!((first.status, first.text().as_str()), (StatusCode::OK, "done\n"));
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.header("retry-after"), "1");
    // Once the slot is free, hooks run again.
    let again = t.send("POST", "/hooks/fail-output", &[], "").await;
    assert_eq!(again.text(), "failing output\n");
}

#[tokio::test]
async fn root_prefix_global_headers_and_methods() {
    let f = Fixture::new();
    let t = Target::webhook(
        &f.hooks,
        &[
            "-urlprefix",
            "",
            "-header",
            "Access-Control-Allow-Origin=*",
            "-http-methods",
            "put , Patch",
        ],
    )
    .await;
    let r = t.send("PUT", "/value", &[("x-token", "secret")], "").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(r.header("access-control-allow-origin"), "*");
    let r = t.send("POST", "/value", &[("x-token", "secret")], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    // A hook's own list wins over the global one.
    let r = t.send("POST", "/post-only", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t.send("GET", "/", &[], "").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "OK"));
}

#[tokio::test]
async fn hot_reload_under_load_drops_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks.json");
    let version =
        |v: &str| format!(r#"[{{"id": "v", "execute-command": "/bin/true", "response-message": "{v}"}}]"#);
    std::fs::write(&hooks, version("v0")).unwrap();
    let t = Target::webhook(&hooks, &["-hotreload"]).await;
    let load = async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let r = t.send("POST", "/hooks/v", &[], "").await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            seen.insert(r.text());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    };
    let writer = async {
        for (i, v) in ["v1", "broken", "v2", "v3"].iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let text = if *v == "broken" {
                "[{\"id\": ".to_string()
            } else {
                version(v)
            };
            if i % 2 == 0 {
                std::fs::write(&hooks, text).unwrap();
            } else {
                // Editors often write a new file and rename it over the old one.
                let tmp = dir.path().join("hooks.json.tmp");
                std::fs::write(&tmp, text).unwrap();
                std::fs::rename(&tmp, &hooks).unwrap();
            }
        }
    };
    let (seen, ()) = tokio::join!(load, writer);
    let seen: Vec<_> = seen.into_iter().collect();
    assert!(
        seen.iter()
            .all(|s| ["v0", "v1", "v2", "v3"].contains(&s.as_str())),
        "{seen:?}"
    );
    eventually("v3 to be served", || async {
        (t.send("POST", "/hooks/v", &[], "").await.text() == "v3").then_some(())
    })
    .await;
    if let Target::Webhook { process, .. } = &t {
        assert!(
            process.output().contains("couldn't load hooks from file"),
            "the broken file was not reported"
        );
    }
}

/// The guide's steps with the shipped example pair (packaging/examples/hooks.yaml and
/// webhook_client.py): `webhook -port … -hooks config/hooks.yaml -verbose`, then the curl line.
#[tokio::test]
async fn seed_rute_ai_steps_work_with_ponte_alone() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/examples");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let hooks = dir.path().join("config/hooks.yaml");
    std::fs::write(
        &hooks,
        std::fs::read_to_string(examples.join("hooks.yaml"))
            .unwrap()
            .replace(
                "command-working-directory: .",
                &format!("command-working-directory: {}", dir.path().display()),
            ),
    )
    .unwrap();
    std::fs::copy(
        examples.join("webhook_client.py"),
        dir.path().join("webhook_client.py"),
    )
    .unwrap();
    let t = Target::webhook(&hooks, &[]).await;
    let r = t
        .post_json("/hooks/rute-webhook", r#"{"key1":"value1", "key2":"value2"}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json answer");
    assert_eq!(
        v,
        serde_json::json!({"status": "OK", "dados_recebidos_pelo_webhook": {"key1": "value1", "key2": "value2"}})
    );
    // GET is not a webhook here (http-methods: [POST]).
    let r = t.send("GET", "/hooks/rute-webhook", &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn command_line_errors_are_clear() {
    let f = Fixture::new();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ponte"))
            .args(args)
            .output()
            .expect("run ponte")
    };
    let out = run(&["webhook", "-socket", "/tmp/x.sock"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-socket is not supported"));
    let out = run(&["webhook", "-bogus"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
    let out = run(&["webhook", "-h"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--hooks",
        "--port",
        "--urlprefix",
        "--hotreload",
        "--template",
        "--http-methods",
        "--header",
        "--nopanic",
        "--x-request-id",
        "--secure",
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
    let out = run(&["webhook", "-version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("webhook version"));
    // A broken hooks file stops the start with file:line.
    let bad = f.path("bad.yaml");
    std::fs::write(
        &bad,
        "- id: x\n  execute-command: /bin/true\n  trigger-rule:\n    match: {type: nope}\n",
    )
    .unwrap();
    let out = run(&[
        "webhook",
        "-hooks",
        bad.to_str().unwrap(),
        "-port",
        "0",
        "-ip",
        "127.0.0.1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4", bad.display())) && err.contains("unknown match type `nope`"),
        "{err}"
    );
    // No hooks and no -verbose/-nopanic: refuse, as adnanh does.
    let empty = f.path("empty.json");
    std::fs::write(&empty, "[]").unwrap();
    let out = run(&[
        "webhook",
        "-hooks",
        empty.to_str().unwrap(),
        "-port",
        "0",
        "-ip",
        "127.0.0.1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("couldn't load any hooks"));
}

#[tokio::test]
async fn template_mode_renders_getenv_and_cat() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "s3cret \"quoted\"\n").unwrap();
    let hooks = dir.path().join("hooks.json");
    std::fs::write(
        &hooks,
        format!(
            r#"[{{"id": "t", "execute-command": "/bin/true", "response-message": "{{{{ cat "{}" | js }}}}|{{{{ getenv "HOME" }}}}|{{{{ getenv "PONTE_SURELY_UNSET_VAR" }}}}"}}]"#,
            secret.display()
        ),
    )
    .unwrap();
    let t = Target::webhook(&hooks, &["-template"]).await;
    let r = t.send("POST", "/hooks/t", &[], "").await;
    let home = std::env::var("HOME").unwrap_or_default();
    assert_eq!(
        (r.status, r.text()),
        (StatusCode::OK, format!("s3cret \"quoted\"|{home}|"))
    );
}

#[tokio::test]
async fn check_validates_the_hooks_file() {
    let f = Fixture::new();
    let run = |hooks: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ponte"))
            .args([
                "check",
                "--relay",
                "https://127.0.0.1:9",
                "--token",
                TOKEN,
                "--hooks",
            ])
            .arg(hooks)
            .env_remove("HTTPS_PROXY")
            .output()
            .expect("run ponte check")
    };
    let bad = f.path("bad.yaml");
    std::fs::write(&bad, "- id: x\n  execute-command: /bin/true\n  pass-arguments-to-command:\n    - {source: headers, name: a}\n").unwrap();
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4", bad.display())) && err.contains("unknown source `headers`"),
        "{err}"
    );
    // A good file is reported, then the (unreachable) relay is tried: exit 4, unreachable.
    let out = run(&f.hooks);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hook(s): args, payload"), "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hook that answers 5xx through a queued tunnel is retried by the relay like any delivery:
/// the webhook sent while the agent was offline runs once the program succeeds.
#[tokio::test]
async fn queued_tunnel_retries_a_failing_hook() {
    let f = Fixture::new();
    let d = f.dir.path().display();
    // Fails on its first run, succeeds on the second; each run is logged.
    let script = f.path("flaky.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$1\" >> {d}/runs.log\nif [ ! -e {d}/seen ]; then : > {d}/seen; echo not yet; exit 1; fi\necho ok\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hooks = f.path("queued.yaml");
    std::fs::write(
        &hooks,
        format!("- id: flaky\n  execute-command: {}\n  include-command-output-in-response: true\n  pass-arguments-to-command:\n    - {{source: payload, name: n}}\n", script.display()),
    )
    .unwrap();
    let certs = Certs::new();
    let db = f.path("relay.db");
    let relay = start_relay(&queue_yaml(&certs, &db, "queue", "", "")).await;
    let c = client(Some(&certs), false);
    let req = Request::builder()
        .method("POST")
        .uri(format!("{}/t/demo/hooks/flaky", relay.url(true)))
        .header("content-type", "application/json")
        .body(ponte::body::full(r#"{"n": 42}"#))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.header("ponte-delivery-id").to_string();
    let mut agent = start_agent(&agent_yaml(
        &relay.url(true),
        Some(&certs),
        &format!("ingress:\n  - path: /hooks/\n    hooks: {}\n", hooks.display()),
    ));
    agent.connected().await;
    let detail = eventually("the delivery to succeed", || async {
        let d = admin_json(&c, &relay.url(true), "GET", &format!("deliveries/{id}")).await;
        (d["status"] == "delivered").then_some(d)
    })
    .await;
    assert_eq!(std::fs::read_to_string(f.path("runs.log")).unwrap(), "42\n42\n");
    assert!(
        detail.to_string().contains("500"),
        "the failed attempt is recorded: {detail}"
    );
    agent.stop().await;
    relay.stop().await;
}

/// The same requests to adnanh/webhook (when a `webhook` binary is installed, e.g. Debian's
/// package) and to `ponte webhook`, with the same hooks file: the same status, body and content
/// type. Cases where Ponte differs on purpose (README, "Command hooks") are left out.
#[tokio::test]
async fn same_answers_as_adnanh_webhook() {
    let Some(webhook) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("webhook"))
            .find(|p| p.is_file())
    }) else {
        eprintln!("skipped: no adnanh/webhook binary on PATH (apt install webhook)");
        return;
    };
    let f = Fixture::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _adnanh = support::process::Owned(
        std::process::Command::new(&webhook)
            .args(["-ip", "127.0.0.1", "-port", &port.to_string(), "-hooks"])
            .arg(&f.hooks)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start adnanh/webhook"),
    );
    let adnanh_base = format!("http://127.0.0.1:{port}");
    eventually("adnanh/webhook to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let ponte = Target::webhook(&f.hooks, &[]).await;
    let adnanh = Target::Webhook {
        process: Process::spawn(&["--version"]),
        base: adnanh_base,
    };
    let body = r#"{"action": "opened"}"#;
    let good = hmac_sha256("s3cret", body);
    let json = ("content-type", "application/json");
    // (method, path, headers, body)
    type Case = (&'static str, String, Vec<(&'static str, String)>, String);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/hooks/args?q=x%20y".into(),
            vec![(json.0, json.1.into()), ("x-token", "tok".into())],
            r#"{"a": {"b": "n"}, "list": [0, {"one": 1.50}], "num": 7}"#.into(),
        ),
        (
            "POST",
            "/hooks/payload".into(),
            vec![(json.0, json.1.into())],
            r#"{"z": [1, 2.0, null, true], "a": "<&>", "u": "é\u2028"}"#.into(),
        ),
        (
            "POST",
            "/hooks/payload".into(),
            vec![(json.0, json.1.into())],
            "[1, {\"a\": []}]".into(),
        ),
        (
            "POST",
            "/hooks/payload".into(),
            vec![("content-type", "application/x-www-form-urlencoded".into())],
            "name=Jo%C3%A3o+Silva&x=1&x=2".into(),
        ),
        (
            "POST",
            "/hooks/payload".into(),
            vec![("content-type", "text/xml".into())],
            r#"<a id="1"><b>x</b><b>y</b><c k="v">t</c></a>"#.into(),
        ),
        (
            "POST",
            "/hooks/payload".into(),
            vec![("content-type", "text/plain".into())],
            "x".into(),
        ),
        (
            "POST",
            "/hooks/payload".into(),
            vec![(json.0, json.1.into())],
            "{broken".into(),
        ),
        ("PUT", "/hooks/raw?b=2&a=1".into(), vec![], "raw\nbody".into()),
        (
            "POST",
            "/hooks/value".into(),
            vec![("x-token", "secret".into())],
            String::new(),
        ),
        (
            "POST",
            "/hooks/value".into(),
            vec![("x-token", "nope".into())],
            String::new(),
        ),
        ("POST", "/hooks/value".into(), vec![], String::new()),
        (
            "POST",
            "/hooks/regex".into(),
            vec![(json.0, json.1.into())],
            r#"{"ref": "refs/heads/main"}"#.into(),
        ),
        (
            "POST",
            "/hooks/regex".into(),
            vec![(json.0, json.1.into())],
            r#"{"ref": "refs/heads/dev"}"#.into(),
        ),
        (
            "POST",
            "/hooks/hmac".into(),
            vec![("x-hub-signature-256", format!("sha256={good}"))],
            body.into(),
        ),
        (
            "POST",
            "/hooks/hmac".into(),
            vec![("x-hub-signature-256", format!("sha256=00,sha256={good}"))],
            body.into(),
        ),
        (
            "POST",
            "/hooks/hmac".into(),
            vec![("x-hub-signature-256", "sha256=00".into())],
            body.into(),
        ),
        ("POST", "/hooks/hmac".into(), vec![], body.into()),
        (
            "POST",
            "/hooks/soft?token=yes".into(),
            vec![("x-hub-signature", "sha1=00".into())],
            "x".into(),
        ),
        (
            "POST",
            "/hooks/soft?token=no".into(),
            vec![("x-hub-signature", "sha1=00".into())],
            "x".into(),
        ),
        ("GET", "/hooks/ip".into(), vec![], String::new()),
        ("GET", "/hooks/ip-deny".into(), vec![], String::new()),
        (
            "POST",
            "/hooks/not".into(),
            vec![(json.0, json.1.into()), ("x-event", "push".into())],
            r#"{"user": "ana"}"#.into(),
        ),
        (
            "POST",
            "/hooks/not".into(),
            vec![(json.0, json.1.into()), ("x-event", "push".into())],
            r#"{"user": "blocked"}"#.into(),
        ),
        ("GET", "/hooks/post-only".into(), vec![], String::new()),
        ("post", "/hooks/post-only".into(), vec![], String::new()),
        ("POST", "/hooks/".into(), vec![], String::new()),
        ("POST", "/hooks/a/b".into(), vec![], String::new()),
        ("POST", "/hooks/not".into(), vec![("x-event", "push".into())], String::new()),
        ("POST", "/hooks/payload".into(), vec![("content-type", "multipart/form-data; boundary=XyZ".into())], "--XyZ\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n--XyZ\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"d.json\"\r\nContent-Type: application/json\r\n\r\n{\"k\": true}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"bin\"; filename=\"b.bin\"\r\n\r\nxx\r\n--XyZ--\r\n".into()),
        ("POST", "/hooks/payload".into(), vec![("content-type", "multipart/form-data; boundary=Q".into())], "garbage".into()),
        ("POST", "/hooks/raw".into(), vec![("content-type", "multipart/form-data; boundary=Q".into())], "--Q\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n--Q--\r\n".into()),
        ("POST", "/hooks/post-only".into(), vec![], String::new()),
        ("POST", "/hooks/nope".into(), vec![], String::new()),
        ("GET", "/".into(), vec![], String::new()),
        ("GET", "/other".into(), vec![], String::new()),
        ("POST", "/hooks/fail".into(), vec![], String::new()),
        ("POST", "/hooks/fail-output".into(), vec![], String::new()),
        ("POST", "/hooks/missing".into(), vec![], String::new()),
        ("POST", "/hooks/created".into(), vec![], String::new()),
        (
            "POST",
            "/hooks/env".into(),
            vec![(json.0, json.1.into()), ("x-token", "t".into())],
            r#"{"who": "Ana"}"#.into(),
        ),
        (
            "POST",
            "/hooks/files".into(),
            vec![(json.0, json.1.into())],
            r#"{"doc": "d", "bin": "aGk="}"#.into(),
        ),
        (
            "GET",
            "/hooks/json-param?data=%7B%22inner%22%3A%5B%22first%22%5D%7D".into(),
            vec![],
            String::new(),
        ),
        (
            "POST",
            "/hooks/forced-json".into(),
            vec![("content-type", "text/plain".into())],
            r#"{"k": 1}"#.into(),
        ),
        (
            "POST",
            "/hooks/meta?q=%24(id)%3B%7C".into(),
            vec![(json.0, json.1.into()), ("x-meta", "`id` && 'x'".into())],
            r#"{"p": "$(id); \"quoted\"\nline"}"#.into(),
        ),
    ];
    for (method, path, headers, body) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let theirs = adnanh.send(method, path, &h, body.clone()).await;
        let ours = ponte.send(method, path, &h, body.clone()).await;
        assert_eq!(
            (ours.status, ours.text(), ours.header("content-type")),
            (theirs.status, theirs.text(), theirs.header("content-type")),
            "{method} {path} {body}"
        );
    }
}

/// The agent watches its hooks file: an edit is served without a restart, and a broken edit
/// keeps the previous hooks.
#[tokio::test]
async fn agent_reloads_its_hooks_file() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks.yaml");
    let version = |v: &str| format!("- id: v\n  execute-command: /bin/true\n  response-message: {v}\n");
    std::fs::write(&hooks, version("first")).unwrap();
    let t = Target::tunnel(&hooks).await;
    assert_eq!(t.send("POST", "/hooks/v", &[], "").await.text(), "first");
    std::fs::write(&hooks, "- id: v\n  execute-command: [broken\n").unwrap();
    std::fs::write(&hooks, version("second")).unwrap();
    eventually("the edited hook to be served", || async {
        (t.send("POST", "/hooks/v", &[], "").await.text() == "second").then_some(())
    })
    .await;
    std::fs::write(&hooks, "- id: v\n  execute-command: [broken\n").unwrap();
    // Two polls later the broken file has been seen and refused.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(t.send("POST", "/hooks/v", &[], "").await.text(), "second");
    t.stop().await;
}

/// A sender that hangs up does not free the command's slot while the command still runs: the
/// limit counts running programs, not open requests.
#[tokio::test]
async fn a_hung_up_sender_keeps_its_command_slot() {
    let f = Fixture::new();
    let t = Target::webhook(&f.hooks, &["-max-concurrent-hooks", "1"]).await;
    let started = f.path("slow.started");
    let path = format!("/hooks/slow?started={}", started.display());
    // The first sender gives up as soon as its command is running.
    let gave_up = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            _ = t.send("POST", &path, &[], "") => panic!("the slow hook answered early"),
            () = async {
                eventually("the first command to start", || async { started.exists().then_some(()) }).await;
            } => {}
        }
    })
    .await;
    assert!(gave_up.is_ok());
    let r = t.send("POST", "/hooks/fail-output", &[], "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    // Once the abandoned command ends, the slot is free again.
    eventually("the slot to free up", || async {
        (t.send("POST", "/hooks/fail-output", &[], "").await.text() == "failing output\n").then_some(())
    })
    .await;
}

#[tokio::test]
async fn secure_pidfile_and_logfile() {
    let f = Fixture::new();
    let certs = Certs::new();
    let pidfile = f.path("run/webhook.pid");
    let logfile = f.path("webhook.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let process = Process::spawn(&[
        "webhook",
        "-secure",
        "-cert",
        certs.cert.to_str().unwrap(),
        "-key",
        certs.key.to_str().unwrap(),
        "-ip",
        "127.0.0.1",
        "-port",
        &port.to_string(),
        "-hooks",
        f.hooks.to_str().unwrap(),
        "-pidfile",
        pidfile.to_str().unwrap(),
        "-logfile",
        logfile.to_str().unwrap(),
    ]);
    let pid = eventually("the pid file", || async {
        std::fs::read_to_string(&pidfile)
            .ok()
            .filter(|t| t.ends_with('\n'))
    })
    .await;
    assert_eq!(pid.trim(), process.pid().to_string());
    let c = client(Some(&certs), false);
    let r = send(
        &c,
        Request::builder()
            .method("POST")
            .uri(format!("https://127.0.0.1:{port}/hooks/value"))
            .header("x-token", "secret")
            .body(ponte::body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    let log = std::fs::read_to_string(&logfile).unwrap();
    assert!(
        log.contains(&format!("serving hooks on https://127.0.0.1:{port}/hooks/{{id}}")),
        "{log}"
    );
    assert!(log.contains("value hook triggered successfully"), "{log}");
    drop(process);
    // An unsafe TLS floor is refused with the reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ponte"))
        .args(["webhook", "-secure", "-tls-min-version", "1.0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-tls-min-version 1.0"));
}
