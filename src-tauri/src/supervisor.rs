//! Starting the daemon as a child process and noticing when it ends. When to start and
//! restart it is decided in `state.rs`; this module only does it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Exponential backoff: `base`, 2×, 4×, … up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempts: 0,
        }
    }

    /// The delay before the next attempt; counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempts.min(31)).unwrap_or(u32::MAX);
        self.attempts = self.attempts.saturating_add(1);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Attempts counted since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// How a process ended, in words for the status line: "exited with code 3", "was killed by
/// signal 9".
pub fn describe_exit(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    "exited".into()
}

/// The daemon child, shared between the thread that waits for it and the controller that
/// may stop it.
#[derive(Clone)]
pub struct DaemonProcess {
    pid: u32,
    child: Arc<Mutex<Option<Child>>>,
}

impl DaemonProcess {
    /// Starts `bin args…`; its output goes to `log` (appended) when given, so that a crash
    /// leaves its reason somewhere. `on_exit` is called from a waiting thread when it ends.
    pub fn spawn(
        bin: &Path,
        args: &[String],
        log: Option<&Path>,
        on_exit: impl FnOnce(ExitStatus) + Send + 'static,
    ) -> std::io::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null());
        // Its own process group: the daemon outlives the app ("Quit" leaves it running), so
        // a Ctrl-C meant for an app started from a terminal must not reach it.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        match log.map(open_log).transpose()? {
            Some(file) => {
                cmd.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(Some(child)));
        let waiter = child.clone();
        std::thread::Builder::new()
            .name("daemon-wait".into())
            .spawn(move || {
                // Poll rather than block in wait(): a blocking wait would hold the lock that
                // `terminate` needs.
                loop {
                    let done = {
                        let mut guard = waiter.lock().unwrap();
                        match guard.as_mut().map(Child::try_wait) {
                            Some(Ok(Some(status))) => {
                                guard.take();
                                Some(status)
                            }
                            Some(Ok(None)) => None,
                            Some(Err(e)) => {
                                tracing::warn!("waiting for the daemon: {e}");
                                None
                            }
                            None => return,
                        }
                    };
                    if let Some(status) = done {
                        on_exit(status);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })?;
        Ok(DaemonProcess { pid, child })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks the daemon to stop (SIGTERM: it drains requests and exits 0), and waits up to
    /// `grace` before killing it. The exit is still reported through `on_exit`.
    pub fn terminate(&self, grace: Duration) {
        #[cfg(unix)]
        {
            // SAFETY: kill(2) on a pid this process started and has not reaped yet (the
            // waiter reaps it only after it has exited), so the pid is still ours.
            let still_ours = self.child.lock().unwrap().is_some();
            if still_ours {
                unsafe {
                    libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if self.child.lock().unwrap().is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(child) = self.child.lock().unwrap().as_mut() {
            let _ = child.kill();
        }
    }
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Where the daemon child's output goes: `<data dir>/wuwei/daemon.log`.
pub fn default_log_path() -> Option<PathBuf> {
    let app = if cfg!(target_os = "macos") {
        "Wuwei"
    } else {
        "wuwei"
    };
    dirs::data_dir().map(|d| d.join(app).join("daemon.log"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<u64> = (0..6).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        // no overflow after very many attempts
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::from_secs(10));
    }

    #[cfg(unix)]
    #[test]
    fn a_child_exit_is_reported_with_its_code() {
        let (tx, rx) = mpsc::channel();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/daemon.log");
        let p = DaemonProcess::spawn(
            Path::new("/bin/sh"),
            &["-c".into(), "echo starting; exit 3".into()],
            Some(&log),
            move |status| tx.send(describe_exit(&status)).unwrap(),
        )
        .unwrap();
        assert!(p.pid() > 0);
        let how = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(how, "exited with code 3");
        assert_eq!(std::fs::read_to_string(log).unwrap(), "starting\n");
    }

    #[cfg(unix)]
    #[test]
    fn terminate_sends_sigterm_and_the_exit_is_still_reported() {
        let (tx, rx) = mpsc::channel();
        let p = DaemonProcess::spawn(
            Path::new("/bin/sh"),
            // exits 0 on SIGTERM, like the daemon
            &[
                "-c".into(),
                "trap 'exit 0' TERM; while :; do sleep 0.1; done".into(),
            ],
            None,
            move |status| tx.send(describe_exit(&status)).unwrap(),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300)); // let the shell set its trap
        p.terminate(Duration::from_secs(10));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            "exited with code 0"
        );
    }

    #[test]
    fn a_missing_binary_fails_to_spawn() {
        let r = DaemonProcess::spawn(Path::new("/nonexistent/wuwei"), &[], None, |_| {});
        assert!(r.is_err());
    }
}
