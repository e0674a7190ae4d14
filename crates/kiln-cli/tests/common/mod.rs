//! Shared by the integration tests that start `kiln serve`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `kiln serve` process on loopback with the default model; killed when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its port.
    pub port: u16,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with(extra, &[])
    }

    /// As `start`, with these environment variables set for the server.
    pub fn start_with(extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let model = kiln_model::fetch::ensure_default_model(true).expect("default model");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "serve",
                "--port",
                "0",
                "--threads",
                "2",
                "--max-memory-mb",
                "512",
            ])
            .arg("--model")
            .arg(&model)
            .args(extra)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kiln serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // The server listens first, then loads the model: its port once it says it is ready.
        std::thread::spawn(move || {
            let mut port = None;
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("kiln: listening on http://") {
                    port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                }
                if !sent && line == "kiln: ready" {
                    tx.send(port.expect("listening before ready")).unwrap();
                    sent = true;
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server start");
        Server { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--max-time", "120"])
            .args(args)
            .output()
            .expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    pub fn post(&self, path: &str, body: &str, extra: &[&str]) -> (u16, serde_json::Value) {
        let url = self.url(path);
        // Bodies go through a file: some are larger than a command line may be.
        let file = std::env::temp_dir().join(format!(
            "kiln-body-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&file, body).unwrap();
        let data = format!("@{}", file.display());
        // No `Expect: 100-continue` (curl adds it to large bodies): with it, a body refused
        // for its size can end with the interim 100 as the last status curl saw.
        let mut args = vec![
            "-H",
            "content-type: application/json",
            "-H",
            "Expect:",
            "--data-binary",
            &data,
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        let (code, text) = self.curl(&args);
        let _ = std::fs::remove_file(&file);
        (
            code,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub fn health(&self) -> serde_json::Value {
        let (_, t) = self.curl(&[&self.url("/health")]);
        serde_json::from_str(&t).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
