//! The chat page served at `/`, driven in headless Chromium (playwright-core). Needs node,
//! `playwright-core` under `target/node` and Chromium; `scripts/test.sh` installs them.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::Server;

#[test]
fn chat_page_streams_an_answer_in_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let node_modules = root.join("target/node/node_modules");
    assert!(
        node_modules.join("playwright-core").is_dir(),
        "playwright-core is missing: run `npm install --prefix target/node playwright-core@1` (scripts/test.sh does)"
    );
    let server = Server::start(&["--default-max-tokens", "24"]);
    let url = server.url("");
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
    drop(server);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shot.is_file(), "screenshot kept at {}", shot.display());
}
