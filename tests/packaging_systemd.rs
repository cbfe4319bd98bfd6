//! The Linux packaging for real: a systemd-nspawn container booted from the host's own root
//! (read-only, with a throw-away overlay) runs `ponte service install` with a hand-copied binary,
//! then the .deb: files land with the right owners and modes, the agent unit reports READY and
//! STATUS, serves traffic, is restarted after `kill -9` and after a watchdog timeout, a named
//! instance works, an upgrade keeps the edited configuration, and purge removes everything.
//! A second test runs lintian and `systemd-analyze verify` on the host.
//!
//! The container shares the host's network namespace, so agents inside reach the relay this
//! test runs on 127.0.0.1. Needs root, systemd-nspawn, nsenter and `packaging/build-all.sh`'s
//! .deb files; the mount and the container are cleaned up even when an assertion fails.

mod packaging_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use packaging_support::*;

const TEST: &str = "deb_and_units_in_a_booted_container";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The host root bind-mounted read-only on `dir`; unmounted when dropped.
struct RootBind(PathBuf);

impl RootBind {
    fn new(dir: &Path) -> RootBind {
        std::fs::create_dir_all(dir).expect("mountpoint");
        let ok = Command::new("mount").arg("--bind").arg("/").arg(dir).status();
        assert!(ok.is_ok_and(|s| s.success()), "mount --bind / {}", dir.display());
        let bind = RootBind(dir.to_owned());
        let ok = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(dir)
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "remount read-only");
        bind
    }
}

impl Drop for RootBind {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A booted container; powered off (or killed by PID) when dropped.
struct Container {
    nspawn: Owned,
    init_pid: u32,
    log: PathBuf,
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

impl Container {
    fn boot(rootfs: &Path, dist: &Path, share: &Path, log: &Path) -> Container {
        let out = std::fs::File::create(log).expect("log");
        let machine = format!("ponte-test-{}", std::process::id());
        let child = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(rootfs)
            .args([
                "--volatile=overlay",
                "--register=no",
                "--link-journal=no",
                "--keep-unit",
            ])
            .args(["--console=passive", "-b", "--machine", &machine])
            .arg(format!("--bind-ro={}:/mnt/dist", dist.display()))
            .arg(format!("--bind={}:/mnt/test", share.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start systemd-nspawn");
        let nspawn = Owned(child);
        let root_pid = nspawn.0.id();
        // The container's PID 1 is the `systemd` process below nspawn.
        let init_pid = wait_until("the container's systemd", Duration::from_secs(30), || {
            let mut queue = children(root_pid);
            while let Some(pid) = queue.pop() {
                if comm(pid) == "systemd" {
                    return Some(pid);
                }
                queue.extend(children(pid));
            }
            None
        });
        let container = Container {
            nspawn,
            init_pid,
            log: log.to_owned(),
        };
        wait_until("the container to finish booting", Duration::from_secs(90), || {
            let (_, out) = container.sh("systemctl is-system-running");
            matches!(out.trim(), "running" | "degraded").then_some(())
        });
        container
    }

    /// Run a shell command inside; (success, stdout+stderr). Bounded to 120 s.
    fn sh(&self, script: &str) -> (bool, String) {
        let mut cmd = Command::new("nsenter");
        cmd.args([
            "-t",
            &self.init_pid.to_string(),
            "-a",
            "--",
            "/bin/sh",
            "-c",
            script,
        ]);
        let log = self.log.with_extension("cmds.log");
        let (status, out) = run_logged(&mut cmd, &log, Duration::from_secs(120));
        (status.is_some_and(|s| s.success()), out)
    }

    /// Run inside and require success.
    fn ok(&self, script: &str) -> String {
        let (ok, out) = self.sh(script);
        assert!(ok, "`{script}` failed in the container:\n{out}");
        out
    }

    fn prop(&self, unit: &str, prop: &str) -> String {
        self.sh(&format!("systemctl show -P {prop} {unit}"))
            .1
            .trim()
            .to_string()
    }

    fn wait_connected(&self, unit: &str) -> String {
        wait_until(
            &format!("{unit} to report STATUS=connected"),
            Duration::from_secs(60),
            || {
                let status = self.prop(unit, "StatusText");
                (self.prop(unit, "ActiveState") == "active" && status.starts_with("connected to "))
                    .then_some(status)
            },
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.sh("systemctl poweroff --no-block");
        if self.nspawn.wait_for(Duration::from_secs(30)).is_none() {
            eprintln!("container did not power off in 30 s; killed systemd-nspawn by PID");
        }
    }
}

#[test]
fn deb_and_units_in_a_booted_container() {
    if !is_root() {
        skip(TEST, "needs root (mount, systemd-nspawn)");
        return;
    }
    if !require_tools(TEST, &["systemd-nspawn", "nsenter", "mount"]) {
        return;
    }
    let Some(deb) = require_artifact(TEST, "", "ponte_", "_amd64.deb") else {
        return;
    };
    let Some(deb_next) = require_artifact(TEST, "test", "ponte_", "_amd64.deb") else {
        return;
    };
    let release = root().join("target/release/ponte");
    if !release.exists() {
        skip(TEST, "no target/release/ponte: run packaging/build-all.sh first");
        return;
    }
    let started = std::time::Instant::now();
    let net = Loopback::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("bin")).expect("share dir");
    // The service user (not root) must reach the files in the shared folder.
    for p in [dir.path(), share.as_path(), &share.join("bin")] {
        let _ = Command::new("chmod").arg("755").arg(p).status();
    }
    std::fs::copy(&release, share.join("bin/ponte")).expect("copy binary");
    std::fs::write(share.join("agent-a.yaml"), net.agent_yaml("demo")).expect("agent-a.yaml");
    let _ = Command::new("chmod")
        .arg("644")
        .arg(share.join("agent-a.yaml"))
        .status();
    let dist = deb.parent().expect("dist").to_owned();
    let deb_name = deb.file_name().expect("name").to_string_lossy().into_owned();
    let deb_next_name = deb_next.file_name().expect("name").to_string_lossy().into_owned();

    let bind = RootBind::new(&dir.path().join("rootfs"));
    let ct = Container::boot(&bind.0, &dist, &share, &dir.path().join("nspawn.log"));
    eprintln!("container booted in {:?}", started.elapsed());

    // 1. A binary copied by hand: `ponte service install` writes the unit and starts it.
    let out = ct.ok("/mnt/test/bin/ponte service install --config /mnt/test/agent-a.yaml");
    assert!(
        out.contains("wrote /etc/systemd/system/ponte-agent.service"),
        "{out}"
    );
    let unit = ct.ok("cat /etc/systemd/system/ponte-agent.service");
    assert!(unit.contains("ExecStart=/mnt/test/bin/ponte agent"), "{unit}");
    ct.wait_connected("ponte-agent.service");
    net.wait_served("demo", Duration::from_secs(30));
    let status = ct.ok("/mnt/test/bin/ponte service status");
    assert!(
        status.contains("active (running)") && status.contains("status: connected to"),
        "{status}"
    );
    ct.ok("/mnt/test/bin/ponte service uninstall");
    assert!(
        !ct.sh("test -e /etc/systemd/system/ponte-agent.service").0,
        "unit left behind"
    );
    assert!(
        !ct.sh("test -e /etc/systemd/system/ponte-agent.service.d/50-ponte-install.conf")
            .0
    );
    assert_eq!(ct.prop("ponte-agent.service", "LoadState"), "not-found");
    // install created the service user; remove it so the .deb's own user creation is tested.
    ct.ok("getent passwd ponte && userdel ponte");
    eprintln!("hand install/uninstall done after {:?}", started.elapsed());

    // 2. The .deb: files, owners, modes, user, conffiles; units verify.
    // Container images (this host's too) often carry Docker's policy-rc.d, which forbids
    // maintainer scripts to start or stop services; a real machine has none. The overlay is
    // throw-away, so the host keeps its own.
    ct.ok("rm -f /usr/sbin/policy-rc.d");
    ct.ok(&format!(
        "DEBIAN_FRONTEND=noninteractive dpkg -i /mnt/dist/{deb_name}"
    ));
    let modes = ct.ok(
        "stat -c '%n %U:%G %a' /usr/bin/ponte /etc/ponte /etc/ponte/agent.yaml /etc/ponte/relay.yaml \
         /usr/lib/systemd/system/ponte-agent.service /usr/lib/systemd/system/ponte-agent@.service \
         /usr/lib/systemd/system/ponte-relay.service",
    );
    for expected in [
        "/usr/bin/ponte root:root 755",
        "/etc/ponte root:ponte 750",
        "/etc/ponte/agent.yaml root:ponte 640",
        "/etc/ponte/relay.yaml root:ponte 640",
        "/usr/lib/systemd/system/ponte-agent.service root:root 644",
        "/usr/lib/systemd/system/ponte-agent@.service root:root 644",
        "/usr/lib/systemd/system/ponte-relay.service root:root 644",
    ] {
        assert!(
            modes.lines().any(|l| l == expected),
            "want `{expected}` in:\n{modes}"
        );
    }
    let user = ct.ok("getent passwd ponte");
    assert!(
        user.contains("/usr/sbin/nologin") || user.contains("/bin/false"),
        "{user}"
    );
    let conffiles = ct.ok("dpkg-query -W -f='${Conffiles}' ponte");
    assert!(
        conffiles.contains("/etc/ponte/agent.yaml") && conffiles.contains("/etc/ponte/relay.yaml"),
        "{conffiles}"
    );
    ct.ok(
        "cd /usr/lib/systemd/system && systemd-analyze verify --man=no ponte-agent.service ponte-relay.service ponte-agent@check.service",
    );
    // The units are installed, not enabled: the example needs a relay and a token first.
    assert_eq!(ct.prop("ponte-agent.service", "UnitFileState"), "disabled");

    // The one edited configuration file; then one command.
    std::fs::write(share.join("agent.yaml"), net.agent_yaml("demo")).expect("agent.yaml");
    ct.ok("cat /mnt/test/agent.yaml > /etc/ponte/agent.yaml");
    let out = ct.ok("ponte service install");
    assert!(
        !out.contains("wrote /etc/systemd/system"),
        "packaged unit must be used as is: {out}"
    );
    assert_eq!(ct.prop("ponte-agent.service", "UnitFileState"), "enabled");
    let status = ct.wait_connected("ponte-agent.service");
    assert!(status.contains(&net.relay.replace("http://", "")), "{status}");
    assert_eq!(ct.prop("ponte-agent.service", "User"), "ponte");
    let pid = ct.prop("ponte-agent.service", "MainPID");
    let owner = ct.ok(&format!("stat -c %U /proc/{pid}"));
    assert_eq!(owner.trim(), "ponte", "the agent runs as the dedicated user");
    net.wait_served("demo", Duration::from_secs(30));
    eprintln!("deb installed and serving after {:?}", started.elapsed());

    // 3. kill -9: systemd restarts it, and it connects again.
    ct.ok(&format!("kill -9 {pid}"));
    wait_until("a restart after kill -9", Duration::from_secs(30), || {
        (ct.prop("ponte-agent.service", "NRestarts") == "1").then_some(())
    });
    ct.wait_connected("ponte-agent.service");
    let pid2 = ct.prop("ponte-agent.service", "MainPID");
    assert_ne!(pid, pid2);
    net.wait_served("demo", Duration::from_secs(30));

    // 4. A frozen process stops petting the watchdog: systemd kills and restarts it.
    ct.ok(
        "mkdir -p /etc/systemd/system/ponte-agent.service.d && \
         printf '[Service]\\nWatchdogSec=3s\\n' > /etc/systemd/system/ponte-agent.service.d/watchdog-test.conf && \
         systemctl daemon-reload && systemctl restart ponte-agent.service",
    );
    ct.wait_connected("ponte-agent.service");
    let frozen = ct.prop("ponte-agent.service", "MainPID");
    let restarts = ct.prop("ponte-agent.service", "NRestarts");
    ct.ok(&format!("kill -STOP {frozen}"));
    wait_until(
        "a restart after the watchdog timeout",
        Duration::from_secs(45),
        || {
            let now = ct.prop("ponte-agent.service", "MainPID");
            (now != frozen && now != "0" && ct.prop("ponte-agent.service", "NRestarts") != restarts)
                .then_some(())
        },
    );
    let journal = ct.ok("journalctl -u ponte-agent.service --no-pager -o cat");
    assert!(
        journal.contains("Watchdog timeout"),
        "no watchdog timeout in the journal:\n{journal}"
    );
    ct.wait_connected("ponte-agent.service");
    net.wait_served("demo", Duration::from_secs(30));
    ct.ok("rm /etc/systemd/system/ponte-agent.service.d/watchdog-test.conf && systemctl daemon-reload");
    eprintln!("kill -9 and watchdog restarts done after {:?}", started.elapsed());

    // 5. A second, named agent from the template.
    std::fs::write(share.join("agent-second.yaml"), net.agent_yaml("t2")).expect("agent-second.yaml");
    ct.ok("cat /mnt/test/agent-second.yaml > /etc/ponte/agent-second.yaml && chgrp ponte /etc/ponte/agent-second.yaml && chmod 640 /etc/ponte/agent-second.yaml");
    ct.ok("ponte service install --name second");
    ct.wait_connected("ponte-agent@second.service");
    net.wait_served("t2", Duration::from_secs(30));
    ct.ok("ponte service uninstall --name second");
    assert_eq!(ct.prop("ponte-agent@second.service", "ActiveState"), "inactive");

    // 6. Upgrade: the edited configuration stays and the running agent is restarted.
    let before = ct.prop("ponte-agent.service", "MainPID");
    ct.ok(&format!(
        "DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold /mnt/dist/test/{deb_next_name}"
    ));
    let version = ct.ok("dpkg-query -W -f='${Version}' ponte");
    let expected_version = deb_next_name
        .strip_prefix("ponte_")
        .and_then(|n| n.strip_suffix("_amd64.deb"))
        .expect("version in the file name");
    assert_eq!(version.trim(), expected_version);
    assert_eq!(
        ct.ok("cat /etc/ponte/agent.yaml"),
        net.agent_yaml("demo"),
        "upgrade replaced the edited file"
    );
    wait_until("a restart after the upgrade", Duration::from_secs(30), || {
        let now = ct.prop("ponte-agent.service", "MainPID");
        (now != before && now != "0").then_some(())
    });
    ct.wait_connected("ponte-agent.service");
    net.wait_served("demo", Duration::from_secs(30));

    // 7. Purge: program, units, configuration and state are gone.
    ct.ok("DEBIAN_FRONTEND=noninteractive dpkg --purge ponte");
    for gone in [
        "/usr/bin/ponte",
        "/etc/ponte",
        "/usr/lib/systemd/system/ponte-agent.service",
        "/usr/lib/systemd/system/ponte-agent@.service",
        "/usr/lib/systemd/system/ponte-relay.service",
        "/etc/systemd/system/multi-user.target.wants/ponte-agent.service",
        "/var/lib/ponte",
    ] {
        assert!(
            !ct.sh(&format!("test -e {gone} || test -L {gone}")).0,
            "{gone} survived the purge"
        );
    }
    assert_ne!(ct.prop("ponte-agent.service", "ActiveState"), "active");
    eprintln!("purged; whole container test took {:?}", started.elapsed());
}

#[test]
fn deb_is_lintian_clean_and_units_verify() {
    const TEST: &str = "deb_is_lintian_clean_and_units_verify";
    if !require_tools(TEST, &["lintian", "systemd-analyze"]) {
        return;
    }
    let Some(deb) = require_artifact(TEST, "", "ponte_", "_amd64.deb") else {
        return;
    };
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("run lintian");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("lintian:\n{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));

    // Offline verification of the units as shipped (ExecStart must exist: point it at the build).
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = root().join("target/release/ponte");
    let exe = if exe.exists() {
        exe
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_ponte"))
    };
    let mut units = Vec::new();
    for name in [
        "ponte-agent.service",
        "ponte-agent@.service",
        "ponte-relay.service",
    ] {
        let text = std::fs::read_to_string(root().join("systemd").join(name)).expect("unit");
        let text = text.replace("/usr/bin/ponte", &exe.display().to_string());
        let target = dir.path().join(name);
        std::fs::write(&target, text).expect("write unit");
        // Names relative to the folder, so the instance finds its template there.
        units.push(if name.ends_with("@.service") {
            "ponte-agent@check.service"
        } else {
            name
        });
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .current_dir(dir.path())
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn rpm_holds_the_same_files() {
    const TEST: &str = "rpm_holds_the_same_files";
    if !require_tools(TEST, &["rpm"]) {
        return;
    }
    let Some(rpm) = require_artifact(TEST, "", "ponte-", ".x86_64.rpm") else {
        return;
    };
    let query = |args: &[&str]| {
        let out = Command::new("rpm")
            .args(args)
            .arg(&rpm)
            .output()
            .expect("run rpm");
        assert!(
            out.status.success(),
            "rpm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(query(&["-K"]).contains("digests OK"));
    let files = query(&["-qplv"]);
    for (mode, owner, path) in [
        ("-rwxr-xr-x", "root     root", "/usr/bin/ponte"),
        (
            "-rw-r--r--",
            "root     root",
            "/usr/lib/systemd/system/ponte-agent.service",
        ),
        (
            "-rw-r--r--",
            "root     root",
            "/usr/lib/systemd/system/ponte-agent@.service",
        ),
        (
            "-rw-r--r--",
            "root     root",
            "/usr/lib/systemd/system/ponte-relay.service",
        ),
        ("drwxr-x---", "root     ponte", "/etc/ponte"),
        ("-rw-r-----", "root     ponte", "/etc/ponte/agent.yaml"),
        ("-rw-r-----", "root     ponte", "/etc/ponte/relay.yaml"),
    ] {
        assert!(
            files
                .lines()
                .any(|l| l.starts_with(mode) && l.contains(owner) && l.ends_with(path)),
            "want {mode} {owner} {path} in:\n{files}"
        );
    }
    let config = query(&["-qpc"]);
    assert!(
        config.contains("/etc/ponte/agent.yaml") && config.contains("/etc/ponte/relay.yaml"),
        "{config}"
    );
    let scripts = query(&["-qp", "--scripts"]);
    assert!(scripts.contains("useradd -r -g ponte"), "{scripts}");
}
