//! What several test binaries share: running the Python reference scripts of tests/reference.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use serde_json::{json, Value};

/// The repository's root (engine/'s parent).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// One tests/reference/script_server.py process: mlx-lm imported once, scripts run in turn.
struct ScriptServer {
    _child: Child,
    requests: ChildStdin,
    replies: BufReader<ChildStdout>,
}

impl ScriptServer {
    fn start() -> ScriptServer {
        let mut child = Command::new(root().join(".venv/bin/python"))
            .arg(root().join("tests/reference/script_server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run .venv/bin/python (scripts/setup.sh installs it)");
        ScriptServer {
            requests: child.stdin.take().unwrap(),
            replies: BufReader::new(child.stdout.take().unwrap()),
            _child: child,
        }
    }

    fn run(&mut self, args: &[&str]) -> Option<Value> {
        let request = json!({ "argv": args }).to_string();
        writeln!(self.requests, "{request}").ok()?;
        self.requests.flush().ok()?;
        let mut line = String::new();
        match self.replies.read_line(&mut line) {
            Ok(n) if n > 0 => serde_json::from_str(&line).ok(),
            _ => None,
        }
    }
}

/// Idle servers; a test thread takes one (or starts one) and gives it back when its script is
/// done, so there are never more than the test threads that ran scripts at the same time.
static IDLE: Mutex<Vec<ScriptServer>> = Mutex::new(Vec::new());

/// `python SCRIPT ARGS...`'s stdout, asserting that it succeeded — run in a long-lived
/// interpreter (tests/reference/script_server.py) so that mlx-lm is imported once per test
/// binary and thread rather than once per script.
pub fn python(args: &[&str]) -> String {
    let server = IDLE.lock().unwrap().pop();
    let mut server = server.unwrap_or_else(ScriptServer::start);
    let reply = server
        .run(args)
        .unwrap_or_else(|| panic!("python {args:?}: the script server died (see stderr)"));
    IDLE.lock().unwrap().push(server);
    assert!(
        reply["ok"].as_bool().unwrap(),
        "python {args:?} failed: {}",
        reply["error"].as_str().unwrap()
    );
    reply["stdout"].as_str().unwrap().to_string()
}
