//! Running `kiln serve` for tests: a binary baked from the chat_tiny fixture's plan, started
//! on a free loopback port, and small HTTP helpers on curl.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

pub const CHAT_FIXTURE: &str = "tests/fixtures/chat_tiny";

/// `kiln plan init --from-hf tests/fixtures/chat_tiny` + `KILN_PLAN=... cargo build`, once.
pub fn serve_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-build");
        std::fs::create_dir_all(&target).unwrap();
        let plan = target.join("chat_tiny.toml");
        let dir = super::repo_path(CHAT_FIXTURE);
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["plan", "init", "--from-hf"])
            .arg(&dir)
            .arg("-o")
            .arg(&plan)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        super::plan_build::build_kiln(&plan, "chat_tiny", &[]).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// The chat_tiny server of the server tests.
pub type Server = Serving;

/// A started `kiln serve` and every line it has written to stderr so far.
pub struct Serving {
    pub child: Child,
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Reads stderr into `log` until the process closes it.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Serving {
    /// `kiln serve` baked from the chat_tiny fixture, on a free loopback port.
    pub fn start() -> Serving {
        let mut cmd = Command::new(serve_binary());
        cmd.args(["serve", "--bind", "127.0.0.1:0"]);
        Serving::spawn(cmd)
    }

    /// Spawns `cmd` and waits for its `serving ... on http://ADDR` line; panics with the log
    /// if the process ends first.
    pub fn spawn(mut cmd: Command) -> Serving {
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let status = child.wait().unwrap();
                panic!("kiln exited ({status}) before serving:\n{}", log.lock().unwrap().join("\n"));
            };
            log.lock().unwrap().push(line.clone());
            if line.contains("serving") && line.contains("http://") {
                let tail = line.rsplit("http://").next().unwrap();
                break tail
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                    .collect::<String>();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Serving { child, base: format!("http://{addr}"), log, reader: Some(reader) }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the process to end (at most `limit`) and for its stderr to be read out.
    pub fn wait(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("kiln did not exit within {limit:?}:\n{}", self.log_text());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (status, headers, body) of a curl request.
pub fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl").args(["-sS", "-D", "-", "--max-time", "60"]).args(args).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

pub fn post(base: &str, path: &str, body: &str) -> (u16, String, String) {
    curl(&["-H", "Content-Type: application/json", "-d", body, &format!("{base}{path}")])
}

pub fn post_json(base: &str, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, _, text) = post(base, path, &body.to_string());
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// `data:` payloads of an SSE body.
pub fn sse_events(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

/// A metric's value from /metrics (the first series whose line starts with `prefix`).
pub fn metric(base: &str, prefix: &str) -> f64 {
    let (_, _, body) = curl(&[&format!("{base}/metrics")]);
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in:\n{body}"))
}

/// A Python venv with the pinned openai client (and jsonschema), made once under target/.
#[allow(dead_code)]
pub fn python_with_openai() -> std::path::PathBuf {
    let venv = super::repo_path("target/pyenv");
    let python = venv.join("bin/python");
    // Marked with the requirements it was made from: a changed list installs again.
    let ready = venv.join(".requirements-installed");
    let req = super::repo_path("tools/requirements-client.txt");
    let wanted = std::fs::read_to_string(&req).unwrap();
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(wanted.as_str()) {
        let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "python3 -m venv failed: the openai client test needs Python 3");
        let out = Command::new(&python).args(["-m", "pip", "install", "-q", "-r"]).arg(&req).output().unwrap();
        assert!(
            out.status.success(),
            "pip install -r tools/requirements-client.txt failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&ready, wanted).unwrap();
    }
    python
}
