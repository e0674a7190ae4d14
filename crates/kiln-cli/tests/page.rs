//! The chat page served at `/`, driven in headless Chromium (playwright-core). Needs node,
//! `playwright-core` under `target/node` and Chromium; `scripts/test.sh` installs them.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::Server;

#[test]
fn chat_page_streams_an_answer_in_chromium() {
    drive_page(&[], None, "chat-page.png");
}

#[test]
fn chat_page_asks_for_the_api_key_once_and_uses_it() {
    drive_page(
        &["--api-key", "page-key"],
        Some("page-key"),
        "chat-page-key.png",
    );
}

#[test]
fn chat_page_constrains_the_answer_to_a_schema() {
    let schema = r#"{"type":"object","properties":{"city":{"type":"string","maxLength":24},"country":{"type":"string","maxLength":24}},"required":["city","country"]}"#;
    drive_page_with(&[], None, "chat-page-schema.png", Some(schema));
}

/// Starts a server with `args`, drives its page in Chromium (answering a key prompt with
/// `key`), and keeps a screenshot named `shot_name`.
fn drive_page(args: &[&str], key: Option<&str>, shot_name: &str) {
    drive_page_with(args, key, shot_name, None)
}

/// As [`drive_page`], with a JSON schema typed into the page's answer format box: the answer
/// must then be JSON with the schema's required keys.
fn drive_page_with(args: &[&str], key: Option<&str>, shot_name: &str, schema: Option<&str>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let node_modules = root.join("target/node/node_modules");
    assert!(
        node_modules.join("playwright-core").is_dir(),
        "playwright-core is missing: run `npm install --prefix target/node playwright-core@1` (scripts/test.sh does)"
    );
    let mut server_args = vec![
        "--default-max-tokens",
        if schema.is_some() { "48" } else { "24" },
    ];
    server_args.extend_from_slice(args);
    let server = Server::start(&server_args);
    let url = server.url("");
    let artifacts = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join(shot_name);
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("node")
        .arg(root.join("crates/kiln-cli/tests/page/chat_page.js"))
        .arg(format!("{url}/"))
        .arg(&shot)
        .args(key)
        .env("NODE_PATH", &node_modules)
        .envs(schema.map(|s| ("KILN_PAGE_SCHEMA", s)))
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
