//! Child processes the tests start: killed by their own PID when dropped, never by name.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A child process killed (by its PID) when dropped.
pub struct Owned(pub Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Owned {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Wait for the exit, killing it after `limit`.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if start.elapsed() > limit {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (with the `kill` utility, by PID) and wait for a graceful exit.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.0.id();
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        self.wait_for(super::WAIT)
            .unwrap_or_else(|| panic!("process {pid} did not exit after SIGTERM"))
    }
}
