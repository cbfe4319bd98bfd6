//! Running a hook's command safely: never through a shell (each argument is one argv entry, on
//! Windows quoted by Rust's `Command`, which also runs `.bat`/`.cmd` files safely since the
//! CVE-2024-24576 fix), with a timeout after which the whole process tree is killed, a limit on
//! how many commands run at once, and stdout+stderr captured into one buffer that stops growing
//! at a cap while the pipe keeps being drained (so a chatty program never blocks on it).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default time a command may run before its process tree is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of commands running at once; more requests get 503 until one finishes. A
/// clinic PC runs a handful of hooks; this keeps a burst from starting hundreds of programs.
pub const DEFAULT_MAX_CONCURRENT: usize = 16;
/// Captured output kept per command (stdout and stderr together); the rest is read and dropped.
pub const OUTPUT_CAP: usize = 1 << 20;
/// After a kill, how long to wait for the output pipe to close.
const AFTER_KILL: Duration = Duration::from_secs(2);

/// Limits applied to every command.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Default timeout (a hook's `command-timeout` overrides it).
    pub timeout: Duration,
    /// Commands running at once.
    pub max_concurrent: usize,
    /// Output bytes kept.
    pub output_cap: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: DEFAULT_TIMEOUT,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            output_cap: OUTPUT_CAP,
        }
    }
}

/// Hands out the right to run one command.
#[derive(Debug, Clone)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    /// `n` commands at once.
    pub fn new(n: usize) -> Self {
        Slots(Arc::new(Semaphore::new(n.max(1))))
    }

    /// A slot, or `None` when every one is taken.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Request id, for log lines.
    pub request_id: String,
    /// The resolved program.
    pub program: PathBuf,
    /// `argv[0]` as written in the hooks file.
    pub argv0: String,
    /// The arguments.
    pub args: Vec<String>,
    /// Extra environment variables (the server's own are inherited).
    pub env: Vec<(String, String)>,
    /// Files to write first; the variable names their path.
    pub files: Vec<(String, Vec<u8>)>,
    /// Working directory (`None`: the server's).
    pub cwd: Option<PathBuf>,
    /// How long it may run.
    pub timeout: Duration,
    /// Output bytes kept.
    pub output_cap: usize,
}

/// Why a command did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// It could not be started.
    #[error("cannot start the command: {0}")]
    Spawn(String),
    /// It ended with a failure status.
    #[error("{0}")]
    Failed(String),
    /// It ran past its timeout and was killed.
    #[error("the command ran longer than {0:?} and was killed with its child processes")]
    TimedOut(Duration),
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// stdout and stderr, interleaved as written, at most the cap.
    pub output: Vec<u8>,
    /// More output was written than kept.
    pub truncated: bool,
    /// Success, or why not.
    pub result: Result<(), ExecError>,
}

/// Find the program as adnanh 2.8 does: an absolute path as is; with a working directory, the
/// command relative to it; otherwise (and as a fallback for a bare name) a search of `PATH`.
pub fn resolve(command: &str, cwd: &str) -> Result<PathBuf, String> {
    let path = Path::new(command);
    if path.is_absolute() || cwd.is_empty() {
        if has_separator(command) {
            return executable(path).ok_or_else(|| not_found(command));
        }
    } else if let Some(p) = executable(&Path::new(cwd).join(path)) {
        return Ok(p);
    } else if has_separator(command) {
        return Err(not_found(&Path::new(cwd).join(path).display().to_string()));
    }
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .find_map(|dir| executable(&dir.join(command)))
        .ok_or_else(|| not_found(command))
}

fn not_found(what: &str) -> String {
    format!("exec: {what:?}: executable file not found or not executable")
}

fn has_separator(command: &str) -> bool {
    command.contains('/') || (cfg!(windows) && command.contains('\\'))
}

/// The path if it is an executable file (on Windows, also with a `PATHEXT` extension added).
fn executable(path: &Path) -> Option<PathBuf> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| path.to_path_buf())
    }
    #[cfg(not(unix))]
    {
        let exts = std::env::var("PATHEXT").unwrap_or_else(|_| ".COM;.EXE;.BAT;.CMD".into());
        let has_ext = path.extension().is_some_and(|e| {
            exts.split(';').any(|x| {
                x.trim_start_matches('.')
                    .eq_ignore_ascii_case(&e.to_string_lossy())
            })
        });
        if has_ext && path.is_file() {
            return Some(path.to_path_buf());
        }
        exts.split(';').filter(|x| !x.is_empty()).find_map(|x| {
            let mut p = path.as_os_str().to_owned();
            p.push(x.to_ascii_lowercase());
            let p = PathBuf::from(p);
            p.is_file().then_some(p)
        })
    }
}

/// Temporary files holding `pass-file-to-command` values, removed when dropped.
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Err(e) = std::fs::remove_file(p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %p.display(), error = %e, "cannot remove a hook's temporary file");
            }
        }
    }
}

/// Write each file as `<dir>/<ENVNAME><random>` (Go's `TempFile` naming) and return the
/// variables pointing at them.
fn write_files(inv: &Invocation) -> (TempFiles, Vec<(String, String)>) {
    let dir = inv.cwd.clone().unwrap_or_else(std::env::temp_dir);
    let mut made = TempFiles(Vec::new());
    let mut vars = Vec::new();
    for (env, data) in &inv.files {
        let mut attempt = 0;
        loop {
            let path = dir.join(format!("{env}{}", rand::random::<u32>()));
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            match created {
                Ok(mut f) => {
                    let written = std::io::Write::write_all(&mut f, data);
                    made.0.push(path.clone());
                    match written {
                        Ok(()) => vars.push((env.clone(), path.display().to_string())),
                        Err(e) => {
                            tracing::warn!(request = %inv.request_id, file = %path.display(), error = %e, "error writing a hook file")
                        }
                    }
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 10 => {
                    attempt += 1;
                }
                Err(e) => {
                    tracing::warn!(request = %inv.request_id, dir = %dir.display(), error = %e, "error creating a hook file");
                    break;
                }
            }
        }
    }
    (made, vars)
}

/// Read the pipe to its end, keeping at most `cap` bytes.
fn read_capped(mut pipe: std::io::PipeReader, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, truncated)
}

/// Kill the command and everything it started.
fn kill_tree(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // The child leads its own process group (process_group(0)), so this reaches its
        // children too.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(windows)]
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("taskkill")
            .args(["/T", "/F", "/PID", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.start_kill();
}

fn describe_status(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("signal: {sig}");
        }
    }
    match status.code() {
        Some(c) => format!("exit status {c}"),
        None => status.to_string(),
    }
}

/// Run one command to its end (or its timeout). Callers run this in a task of its own, so a
/// sender that hangs up does not stop the command, as with adnanh.
pub async fn run(inv: Invocation) -> Outcome {
    let fail = |e: String| Outcome {
        output: Vec::new(),
        truncated: false,
        result: Err(ExecError::Spawn(e)),
    };
    let (files, file_vars) = write_files(&inv);
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let spawned = {
        let writer2 = match writer.try_clone() {
            Ok(w) => w,
            Err(e) => return fail(e.to_string()),
        };
        let mut cmd = tokio::process::Command::new(&inv.program);
        cmd.args(&inv.args)
            .envs(inv.env.iter().map(|(k, v)| (k, v)))
            .envs(file_vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer2))
            .kill_on_drop(true);
        if let Some(dir) = &inv.cwd {
            cmd.current_dir(dir);
        }
        #[cfg(unix)]
        {
            cmd.process_group(0);
            cmd.arg0(&inv.argv0);
        }
        #[cfg(windows)]
        {
            // No console window pops up on a desktop for each webhook.
            const CREATE_NO_WINDOW: u32 = 0x0800_0000;
            cmd.creation_flags(CREATE_NO_WINDOW);
        }
        // The command (and so our copies of the pipe's write end) is dropped at the end of
        // this block; otherwise the reader would never see the end of the output.
        cmd.spawn()
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let cap = inv.output_cap;
    let mut output = tokio::task::spawn_blocking(move || read_capped(reader, cap));
    let deadline = tokio::time::Instant::now() + inv.timeout;
    let mut timed_out = false;
    let status = tokio::select! {
        s = child.wait() => s,
        _ = tokio::time::sleep_until(deadline) => {
            timed_out = true;
            kill_tree(&mut child);
            child.wait().await
        }
    };
    // A background process of the command may still hold the pipe open: wait for it only until
    // the deadline, then kill the group so the reader ends.
    let read_until = if timed_out {
        tokio::time::Instant::now() + AFTER_KILL
    } else {
        deadline
    };
    let (data, truncated) = match tokio::time::timeout_at(read_until, &mut output).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => (Vec::new(), false),
        Err(_) => {
            timed_out = true;
            kill_tree(&mut child);
            match tokio::time::timeout(AFTER_KILL, &mut output).await {
                Ok(Ok(r)) => r,
                _ => (Vec::new(), false),
            }
        }
    };
    drop(files);
    let result = if timed_out {
        Err(ExecError::TimedOut(inv.timeout))
    } else {
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(ExecError::Failed(describe_status(s))),
            Err(e) => Err(ExecError::Failed(e.to_string())),
        }
    };
    Outcome {
        output: data,
        truncated,
        result,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> Invocation {
        Invocation {
            request_id: "t".into(),
            program: PathBuf::from("/bin/sh"),
            argv0: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("HOOK_X".into(), "x value".into())],
            files: Vec::new(),
            cwd: None,
            timeout,
            output_cap: 64,
        }
    }

    #[tokio::test]
    async fn output_is_combined_and_capped() {
        let out = run(sh(
            "echo out; echo err >&2; echo $HOOK_X",
            Duration::from_secs(10),
        ))
        .await;
        assert_eq!(out.result, Ok(()));
        assert_eq!(String::from_utf8_lossy(&out.output), "out\nerr\nx value\n");
        let big = run(sh("yes | head -c 100000", Duration::from_secs(10))).await;
        assert!(big.truncated);
        assert_eq!(big.output.len(), 64);
    }

    #[tokio::test]
    async fn failure_status_and_timeout_kill_the_group() {
        let out = run(sh("echo bad; exit 3", Duration::from_secs(10))).await;
        assert_eq!(out.result, Err(ExecError::Failed("exit status 3".into())));
        assert_eq!(out.output, b"bad\n");
        let started = std::time::Instant::now();
        // The grandchild `sleep` holds the pipe; killing the group ends it.
        let out = run(sh("sleep 30 & sleep 30", Duration::from_millis(300))).await;
        assert_eq!(out.result, Err(ExecError::TimedOut(Duration::from_millis(300))));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn files_are_written_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = sh("cat \"$HOOK_F\"; echo \"$HOOK_F\"", Duration::from_secs(10));
        inv.cwd = Some(dir.path().to_path_buf());
        inv.files = vec![("HOOK_F".into(), b"content;".to_vec())];
        let out = run(inv).await;
        let text = String::from_utf8_lossy(&out.output).into_owned();
        assert!(text.starts_with("content;"), "{text}");
        let path = text.trim_start_matches("content;").trim();
        assert!(
            path.starts_with(&dir.path().join("HOOK_F").display().to_string()),
            "{path}"
        );
        assert!(!Path::new(path).exists());
    }

    #[test]
    fn resolution() {
        assert!(resolve("sh", "").unwrap().ends_with("sh"));
        assert!(resolve("/bin/sh", "/nonexistent").is_ok());
        assert!(resolve("./nope", "").is_err());
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(
            resolve("./run.sh", dir.path().to_str().unwrap()).is_err(),
            "not executable"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            resolve("./run.sh", dir.path().to_str().unwrap()).unwrap(),
            dir.path().join("./run.sh")
        );
        assert_eq!(
            resolve("run.sh", dir.path().to_str().unwrap()).unwrap(),
            dir.path().join("run.sh")
        );
        // A bare name not in the directory is looked up in PATH.
        assert!(resolve("sh", dir.path().to_str().unwrap()).is_ok());
    }
}
