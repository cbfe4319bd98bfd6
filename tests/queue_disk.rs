//! A queue store on a full disk (a 1 MiB tmpfs): every request the store cannot commit gets 503,
//! never 202; once space returns the relay accepts again without a restart, and the file is
//! intact. Needs permission to mount: skipped with a printed reason outside CI, a failure in CI.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use http::StatusCode;
use support::*;

/// A tmpfs mounted for one test, unmounted on drop (lazily if something still holds it).
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(TinyDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// Fill the file system with a file, leaving almost nothing.
fn fill(path: &Path) -> PathBuf {
    use std::io::Write;
    let filler = path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    filler
}

#[tokio::test]
async fn a_full_disk_answers_503_never_202_and_recovers_without_a_restart() {
    let disk = match TinyDisk::mount("1m") {
        Ok(d) => d,
        Err(why) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "SKIPPED a_full_disk_…: {why} (run as root to include this test; CI=true makes it fail)"
            );
            return;
        }
        Err(why) => panic!("disk-full test cannot run in CI: {why}"),
    };
    let certs = Certs::new();
    let db = disk.path().join("relay.db");
    let relay = start_relay(&queue_yaml(&certs, &db, "queue", "", "")).await;
    let c = client(Some(&certs), false);
    let base = relay.url(true);
    let url = format!("{base}/t/demo/hook");
    let body = vec![b'q'; 32 * 1024];

    let first = send(&c, request("POST", &url, body.clone())).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text());
    let mut accepted = vec![first.header("ponte-delivery-id").to_string()];
    let filler = fill(disk.path());
    let mut refused = 0;
    for _ in 0..40 {
        let r = send(&c, request("POST", &url, body.clone())).await;
        match r.status {
            StatusCode::ACCEPTED => {
                assert_eq!(refused, 0, "a 202 after the store reported full");
                accepted.push(r.header("ponte-delivery-id").to_string());
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(r.headers.contains_key("retry-after"));
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!(refused, 3, "the disk never filled");

    std::fs::remove_file(&filler).unwrap();
    let again = eventually("the relay to accept again", || async {
        let r = send(&c, request("POST", &url, body.clone())).await;
        (r.status == StatusCode::ACCEPTED).then(|| r.header("ponte-delivery-id").to_string())
    })
    .await;
    accepted.push(again);

    let (up, log) = recording_upstream(|_, _| StatusCode::OK).await;
    let agent = start_agent_to(&base, &certs, &up.url());
    eventually("every accepted request delivered", || async {
        let got: Vec<String> = log
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.header("ponte-delivery-id").to_string())
            .collect();
        accepted.iter().all(|id| got.contains(id)).then_some(())
    })
    .await;
    agent.stop().await;
    relay.stop().await;

    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
}
