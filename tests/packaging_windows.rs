//! The Windows build, for real, under wine: `ponte.exe agent` connects to a Linux relay started
//! here and proxies a request end to end; the MSI installs, its service starts and answers, an
//! upgrade keeps the edited configuration, `ponte service install/uninstall` registers a second
//! agent through the SCM, and uninstall removes it all. A second test runs `ponte.exe webhook`
//! with a `.exe` and a `.bat` hook.
//!
//! Needs wine (Debian packages wine and wine64), mingw (for the test-only bcryptprimitives.dll shim: Wine 8 lacks the DLL that
//! Rust's std imports; real Windows has it) and the artifacts of `packaging/build-all.sh`.
//! Every wine call has its output in a file (services inherit stdio and would hang a pipe) and a
//! time limit; the wineserver is ours (started with `-f -p`) and is stopped by its PID.

mod packaging_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use packaging_support::*;

const TEST: &str = "windows_build_under_wine";

/// One wine prefix with its own persistent wineserver, removed when dropped.
struct Wine {
    prefix: PathBuf,
    log: PathBuf,
    server: Option<Owned>,
    _dir: tempfile::TempDir,
}

impl Wine {
    fn new() -> Wine {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path().join("prefix");
        std::fs::create_dir_all(&prefix).expect("prefix dir");
        let log = dir.path().join("wine.log");
        let mut wine = Wine {
            prefix,
            log,
            server: None,
            _dir: dir,
        };
        // Create the prefix first, and let its temporary wineserver exit: a second server
        // started beside it leaves two services.exe fighting over the SCM.
        let (status, out) = wine.run_program("wineboot", &["-i"], Duration::from_secs(180));
        assert!(status.is_some_and(|s| s.success()), "wineboot failed: {out}");
        let (status, out) = wine.run_program("wineserver", &["-w"], Duration::from_secs(60));
        assert!(status.is_some_and(|s| s.success()), "wineserver -w: {out}");
        // Then our own: persistent, so services outlive the short wine calls that start them,
        // and in the foreground, so we hold its PID.
        let out = std::fs::File::create(wine.path("wineserver.log")).expect("log");
        let child = wine
            .cmd("wineserver")
            .args(["-f", "-p"])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start wineserver");
        wine.server = Some(Owned(child));
        // A wine call made before our server listens would start a server of its own.
        wait_until("our wineserver's socket", Duration::from_secs(20), || {
            wine.server_dir()
        });
        wine
    }

    /// Where wineserver keeps this prefix's socket: `server-DEV-INODE` under /tmp/.wine-UID
    /// (upstream) or /tmp/wine-XXXXXX (Debian, a new folder per server). Every match.
    fn server_dirs(&self) -> Vec<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(&self.prefix) else {
            return Vec::new();
        };
        let name = format!("server-{:x}-{:x}", meta.dev(), meta.ino());
        let Ok(entries) = std::fs::read_dir("/tmp") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("wine-") || n.starts_with(".wine-"))
            })
            .map(|p| p.join(&name))
            .filter(|p| p.exists())
            .collect()
    }

    /// The folder of the running server (the one with a socket).
    fn server_dir(&self) -> Option<PathBuf> {
        self.server_dirs().into_iter().find(|d| d.join("socket").exists())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.prefix.parent().expect("parent").join(name)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            // No Mono / Gecko installers (they would try to download), no display.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env_remove("DISPLAY");
        c
    }

    /// `wine args…`, output in the shared log; returns the status and this call's output.
    fn run(&self, args: &[&str], limit: Duration) -> (Option<std::process::ExitStatus>, String) {
        self.run_program("wine", args, limit)
    }

    fn run_program(
        &self,
        program: &str,
        args: &[&str],
        limit: Duration,
    ) -> (Option<std::process::ExitStatus>, String) {
        let mut c = self.cmd(program);
        c.args(args);
        run_logged(&mut c, &self.log, limit)
    }

    /// `C:\…` inside the prefix, as a Linux path.
    fn drive_c(&self, rel: &str) -> PathBuf {
        self.prefix.join("drive_c").join(rel)
    }

    fn sc_query(&self, service: &str) -> String {
        self.run(&["sc", "query", service], Duration::from_secs(30)).1
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        let dirs = self.server_dirs();
        // Ends every process of this prefix (services included), then our server by its PID.
        let _ = self
            .cmd("wineserver")
            .arg("-k")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if let Some(mut server) = self.server.take() {
            server.wait_for(Duration::from_secs(10));
        }
        // The servers' socket folders are ours too (named after our prefix's inode).
        for dir in dirs {
            let _ = std::fs::remove_dir_all(&dir);
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent); // only if now empty
            }
        }
    }
}

/// The last lines of a log file (msiexec writes UTF-16 or UTF-8), for failure messages.
fn tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = if bytes.starts_with(&[0xff, 0xfe]) {
        let units: Vec<u16> = bytes[2..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `Z:\…` for a Linux path (wine maps `/` to drive Z:).
fn z(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

fn build_shim(out: &Path) {
    let src = root().join("packaging/windows/test");
    let status = Command::new("x86_64-w64-mingw32-gcc")
        .args(["-O2", "-shared", "-o"])
        .arg(out)
        .arg(src.join("bcryptprimitives.c"))
        .arg(src.join("bcryptprimitives.def"))
        .arg("-ladvapi32")
        .status()
        .expect("run mingw gcc");
    assert!(status.success(), "building the bcryptprimitives shim failed");
}

#[test]
fn windows_build_under_wine() {
    if !require_tools(TEST, &["wine", "wineserver", "x86_64-w64-mingw32-gcc"]) {
        return;
    }
    let Some(exe) = require_artifact(TEST, "", "ponte-", "-x86_64-windows.exe") else {
        return;
    };
    let Some(msi) = require_artifact(TEST, "", "ponte-", "-x86_64.msi") else {
        return;
    };
    let Some(msi_next) = require_artifact(TEST, "test", "ponte-", "-x86_64.msi") else {
        return;
    };
    let started = std::time::Instant::now();
    let net = Loopback::start();
    let wine = Wine::new();
    build_shim(&wine.drive_c("windows/system32/bcryptprimitives.dll"));
    eprintln!("wine prefix ready in {:?}", started.elapsed());

    // 1. The bare exe, as a console program: agent → Linux relay → echo upstream.
    {
        let token = TOKENS[0].1;
        let mut agent = wine.cmd("wine");
        agent.arg(&exe).args([
            "agent",
            "--relay",
            &net.relay,
            "--token",
            token,
            "--upstream",
            &net.upstream,
        ]);
        let out = std::fs::File::create(wine.path("console-agent.log")).expect("log");
        let child = agent
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start wine ponte.exe");
        let _agent = Owned(child);
        let body = net.wait_served("demo", Duration::from_secs(60));
        assert!(body.contains("key1"), "{body}");
        let log = std::fs::read_to_string(wine.path("console-agent.log")).unwrap_or_default();
        assert!(log.contains("tunnel connected"), "console log: {log}");
        assert!(
            !log.contains("service manager"),
            "a console run is not a service: {log}"
        );
        eprintln!(
            "console agent served through the relay after {:?}",
            started.elapsed()
        );
    }
    // The console agent is gone (killed by PID on drop); wait until the relay notices.
    wait_until(
        "the console agent's tunnel to close",
        Duration::from_secs(30),
        || (net.post("demo").0 != 200).then_some(()),
    );

    // 2. The MSI. The configuration is prepared first, as an administrator would after a first
    //    install; the service must never overwrite it.
    let config = wine.drive_c("ProgramData/Ponte/agent.yaml");
    std::fs::create_dir_all(config.parent().expect("dir")).expect("ProgramData\\Ponte");
    let yaml = format!("{}# edited by the administrator\n", net.agent_yaml("demo"));
    std::fs::write(&config, &yaml).expect("write agent.yaml");
    let install_log = wine.path("msi-install.log");
    let (status, out) = wine.run(
        &["msiexec", "/i", &z(&msi), "/qn", "/l*v", &z(&install_log)],
        Duration::from_secs(180),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "msiexec /i failed ({status:?}): {out}\n{}",
        tail(&install_log)
    );
    assert!(
        wine.drive_c("Program Files/Ponte/ponte.exe").exists(),
        "ponte.exe not installed"
    );
    assert!(wine.drive_c("Program Files/Ponte/agent.example.yaml").exists());
    net.wait_served("demo", Duration::from_secs(60));
    assert!(
        wine.sc_query("ponte-agent").contains("RUNNING"),
        "{}",
        wine.sc_query("ponte-agent")
    );
    // Beside the configuration: C:\ProgramData\Ponte\logs.
    let service_log = wine.drive_c("ProgramData/Ponte/logs/ponte-agent.log");
    let log = std::fs::read_to_string(&service_log).unwrap_or_default();
    assert!(
        log.contains("started by the Windows service manager") && log.contains("tunnel connected"),
        "service log {}: {log}",
        service_log.display()
    );
    assert!(!log.contains('\u{1b}'), "colour codes in the log file: {log}");
    assert_eq!(std::fs::read_to_string(&config).expect("config"), yaml);
    eprintln!("MSI installed, service answered after {:?}", started.elapsed());

    // 3. SCM Stop cancels the shutdown token: a graceful stop, logged as such.
    let (_, out) = wine.run(&["sc", "stop", "ponte-agent"], Duration::from_secs(60));
    wait_until("the service to stop", Duration::from_secs(45), || {
        wine.sc_query("ponte-agent").contains("STOPPED").then_some(())
    });
    let log = std::fs::read_to_string(&service_log).unwrap_or_default();
    assert!(log.contains("service stopped"), "sc stop: {out}\nlog: {log}");
    let (status, out) = wine.run(&["sc", "start", "ponte-agent"], Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "sc start: {out}");
    net.wait_served("demo", Duration::from_secs(60));

    // 4. Upgrade to the next version: the service comes back, the edited file stays.
    let (status, out) = wine.run(
        &[
            "msiexec",
            "/i",
            &z(&msi_next),
            "/qn",
            "/l*v",
            &z(&wine.path("msi-upgrade.log")),
        ],
        Duration::from_secs(180),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "msiexec upgrade failed: {out}"
    );
    net.wait_served("demo", Duration::from_secs(60));
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        yaml,
        "upgrade touched agent.yaml"
    );
    let (_, products) = wine.run(
        &[
            "reg",
            "query",
            r"HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall",
            "/s",
        ],
        Duration::from_secs(30),
    );
    let next_version = msi_next
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("ponte-"))
        .and_then(|n| n.strip_suffix("-x86_64.msi"))
        .expect("version in the file name");
    let ponte_entries = products.matches("DisplayName    REG_SZ    Ponte").count();
    assert_eq!(
        ponte_entries, 1,
        "one Ponte product after the upgrade: {products}"
    );
    assert!(
        products.contains(next_version),
        "{next_version} not registered: {products}"
    );
    eprintln!("upgraded after {:?}", started.elapsed());

    // 5. `ponte service install/status/uninstall` through the SCM, for a second agent.
    let installed = r"C:\Program Files\Ponte\ponte.exe";
    let second = wine.drive_c("ProgramData/Ponte/agent-second.yaml");
    std::fs::write(&second, net.agent_yaml("t2")).expect("agent-second.yaml");
    let (status, out) = wine.run(
        &[installed, "service", "install", "--name", "second"],
        Duration::from_secs(60),
    );
    assert!(status.is_some_and(|s| s.success()), "service install: {out}");
    assert!(out.contains("ponte-agent-second"), "{out}");
    net.wait_served("t2", Duration::from_secs(60));
    let (_, out) = wine.run(
        &[installed, "service", "status", "--name", "second"],
        Duration::from_secs(30),
    );
    assert!(out.contains("Running"), "service status: {out}");
    let (status, out) = wine.run(
        &[installed, "service", "uninstall", "--name", "second"],
        Duration::from_secs(90),
    );
    assert!(status.is_some_and(|s| s.success()), "service uninstall: {out}");
    let query = wine.sc_query("ponte-agent-second");
    assert!(!query.contains("RUNNING"), "still there after uninstall: {query}");

    // 6. Uninstall: service and program gone; the user's configuration and logs stay.
    let (status, out) = wine.run(
        &[
            "msiexec",
            "/x",
            &z(&msi_next),
            "/qn",
            "/l*v",
            &z(&wine.path("msi-uninstall.log")),
        ],
        Duration::from_secs(180),
    );
    assert!(status.is_some_and(|s| s.success()), "msiexec /x failed: {out}");
    assert!(
        !wine.drive_c("Program Files/Ponte/ponte.exe").exists(),
        "ponte.exe left behind"
    );
    let query = wine.sc_query("ponte-agent");
    assert!(
        !query.contains("RUNNING") && !query.contains("STOPPED"),
        "service left behind: {query}"
    );
    wait_until(
        "the tunnel to close after uninstall",
        Duration::from_secs(30),
        || (net.post("demo").0 == 503).then_some(()),
    );
    assert!(config.exists(), "uninstall removed the user's configuration");
    eprintln!("uninstalled; whole wine test took {:?}", started.elapsed());
}

/// `POST` a JSON body to `127.0.0.1:port` over plain HTTP/1.1; the status and body.
fn post_json(port: u16, path: &str, json: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// `ponte.exe webhook` under wine runs a `.exe` and a `.bat` hook with arguments holding spaces,
/// quotes and cmd.exe metacharacters: each reaches the program as one argument (the `.exe` byte
/// for byte, the `.bat` in cmd.exe's quoted form) and no metacharacter runs anything.
#[test]
fn webhook_exe_runs_exe_and_bat_hooks_under_wine() {
    const TEST: &str = "webhook_exe_runs_exe_and_bat_hooks_under_wine";
    if !require_tools(TEST, &["wine", "wineserver", "x86_64-w64-mingw32-gcc"]) {
        return;
    }
    let Some(exe) = require_artifact(TEST, "", "ponte-", "-x86_64-windows.exe") else {
        return;
    };
    let wine = Wine::new();
    build_shim(&wine.drive_c("windows/system32/bcryptprimitives.dll"));
    let dir = wine.drive_c("hooks");
    std::fs::create_dir_all(&dir).expect("C:\\hooks");
    // A Windows program printing each argument as the C runtime parsed it.
    let src = wine.path("args.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(int argc, char **argv) {\n  for (int i = 1; i < argc; i++) printf(\"[%s]\\n\", argv[i]);\n  return 0;\n}\n",
    )
    .expect("args.c");
    let status = Command::new("x86_64-w64-mingw32-gcc")
        .arg("-O2")
        .arg("-o")
        .arg(dir.join("args.exe"))
        .arg(&src)
        .status()
        .expect("run mingw gcc");
    assert!(status.success(), "building args.exe failed");
    std::fs::write(
        dir.join("args.bat"),
        "@echo off\r\necho [%1]\r\necho [%2]\r\necho [%3]\r\n",
    )
    .expect("args.bat");
    let canary = dir.join("pwned.txt");
    let hooks = wine.path("hooks.json");
    std::fs::write(
        &hooks,
        r#"[
  {"id": "exe", "execute-command": "args.exe", "command-working-directory": "C:\\hooks",
   "include-command-output-in-response": true,
   "pass-arguments-to-command": [{"source": "payload", "name": "a"}, {"source": "payload", "name": "b"}, {"source": "payload", "name": "c"}]},
  {"id": "bat", "execute-command": "args.bat", "command-working-directory": "C:\\hooks",
   "include-command-output-in-response": true,
   "pass-arguments-to-command": [{"source": "payload", "name": "a"}, {"source": "payload", "name": "b"}, {"source": "payload", "name": "c"}]}
]"#,
    )
    .expect("hooks.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log = wine.path("webhook.log");
    let out = std::fs::File::create(&log).expect("log");
    let child = wine
        .cmd("wine")
        .arg(&exe)
        .args([
            "webhook",
            "-ip",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-verbose",
            "-hooks",
        ])
        .arg(z(&hooks))
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start wine ponte.exe webhook");
    let _server = Owned(child);
    wait_until("ponte.exe webhook to listen", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let payload =
        r#"{"a": "two words", "b": "say \"hi\" & echo x > C:\\hooks\\pwned.txt", "c": "100% | ^caret <in>"}"#;
    let (status, body) = post_json(port, "/hooks/exe", payload).expect("exe hook answered");
    let body = body.replace('\r', "");
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "[two words]\n[say \"hi\" & echo x > C:\\hooks\\pwned.txt]\n[100% | ^caret <in>]\n"
        ),
        "log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (status, body) = post_json(port, "/hooks/bat", payload).expect("bat hook answered");
    let body = body.replace('\r', "");
    eprintln!("bat hook answered {status}: {body}");
    assert_eq!(
        status,
        200,
        "log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // cmd.exe hands each argument to the batch file quoted, with inner quotes doubled (its own
    // convention); `&`, `>` and `|` stay inside the quotes and run nothing. Wine 8's cmd.exe
    // drops the `%` that std escapes as `%%cd:~,%` for real Windows.
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!(lines[0], r#"["two words"]"#);
    assert_eq!(lines[1], r#"["say ""hi"" & echo x > C:\hooks\pwned.txt"]"#);
    assert!(
        lines[2] == r#"["100% | ^caret <in>"]"# || lines[2] == r#"["100 | ^caret <in>"]"#,
        "{}",
        lines[2]
    );
    assert!(!canary.exists(), "a cmd.exe metacharacter was interpreted");
}
