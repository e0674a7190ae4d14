//! Replays `fuzz/seeds/request` through the `request` fuzz target's check
//! (`fuzz/checks/request.rs`) on stable Rust.

use std::path::PathBuf;

#[path = "../../../fuzz/checks/request.rs"]
mod request;

#[test]
fn request_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/request");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| request::check(&bytes));
        assert!(r.is_ok(), "input {} fails its check", p.display());
        n += 1;
    }
    assert!(n > 0, "{} is empty", dir.display());
}
