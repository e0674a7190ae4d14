//! The chat page served at `/`, driven in headless Chromium (playwright-core). Needs node,
//! `playwright-core` under `target/node` and Chromium; `scripts/test.sh` installs them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn chat_page_streams_an_answer_in_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let node_modules = root.join("target/node/node_modules");
    assert!(
        node_modules.join("playwright-core").is_dir(),
        "playwright-core is missing: run `npm install --prefix target/node playwright-core@1` (scripts/test.sh does)"
    );
    let model = kiln_model::fetch::ensure_default_model(true).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "serve",
            "--port",
            "0",
            "--threads",
            "2",
            "--max-memory-mb",
            "512",
            "--default-max-tokens",
            "24",
            "--model",
        ])
        .arg(&model)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("kiln: listening on ") {
                let _ = tx.send(a.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server started");
    let artifacts = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("chat-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("node")
        .arg(root.join("crates/kiln-cli/tests/page/chat_page.js"))
        .arg(format!("{url}/"))
        .arg(&shot)
        .env("NODE_PATH", &node_modules)
        .output()
        .expect("node is installed");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shot.is_file(), "screenshot kept at {}", shot.display());
}
