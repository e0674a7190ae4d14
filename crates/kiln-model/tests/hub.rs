//! Downloads from the Hugging Face Hub, without the network: a Hub that cannot be reached, one
//! that never answers, and a small one served here on 127.0.0.1 with the requests hf-hub
//! makes (the file list, then for each file its metadata and its bytes).
#![cfg(feature = "hub")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_model::hf::{resolve, HubOptions};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-hub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn online(cache: &Path, endpoint: &str) -> HubOptions {
    HubOptions {
        endpoint: Some(endpoint.to_owned()),
        timeout: Duration::from_secs(2),
        ..HubOptions::new(cache.to_path_buf())
    }
}

#[test]
fn an_unreachable_hub_is_a_quick_error_naming_the_repo() {
    let cache = temp("unreachable");
    let t = Instant::now();
    let e = resolve("acme/tiny", &online(&cache, "http://127.0.0.1:1"))
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        e.starts_with("acme/tiny:") && e.contains("http://127.0.0.1:1"),
        "{e}"
    );
    // Nothing was written but the cache folder itself.
    assert!(std::fs::read_dir(&cache).unwrap().next().is_none());
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn a_silent_hub_is_an_error_within_the_timeout() {
    // Connections are accepted (the listen queue) and never answered.
    let quiet = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", quiet.local_addr().unwrap());
    let cache = temp("silent");
    let hub = HubOptions {
        timeout: Duration::from_millis(500),
        ..online(&cache, &endpoint)
    };
    let t = Instant::now();
    let e = resolve("acme/tiny-GGUF/t.gguf", &hub)
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        e.starts_with("acme/tiny-GGUF/t.gguf:") && e.contains("did not answer"),
        "{e}"
    );
    drop(quiet);
    std::fs::remove_dir_all(&cache).unwrap();
}

/// A request as the fake Hub saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

/// A Hub on 127.0.0.1 with one commit of one repo.
struct FakeHub {
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeHub {
    /// Serves `repo` at revision `main` (commit [`SHA`]) with `files`; the files in `locked`
    /// answer 401.
    fn start(repo: &str, files: &[(&str, Vec<u8>)], locked: &[&str]) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let files: HashMap<String, Vec<u8>> = files
            .iter()
            .map(|(n, b)| ((*n).to_owned(), b.clone()))
            .collect();
        let locked: Vec<String> = locked.iter().map(|s| (*s).to_owned()).collect();
        let (repo, log) = (repo.to_owned(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                answer(conn, &repo, &files, &locked, &log);
            }
        });
        FakeHub { endpoint, seen }
    }

    fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }
}

/// Answers one request and closes the connection.
fn answer(
    conn: TcpStream,
    repo: &str,
    files: &HashMap<String, Vec<u8>>,
    locked: &[String],
    log: &Mutex<Vec<Seen>>,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        authorization: headers.get("authorization").cloned(),
    });
    let mut out = conn;
    let reply = |out: &mut TcpStream, status: &str, extra: &[(String, String)], body: &[u8]| {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = out.write_all(head.as_bytes());
        let _ = out.write_all(body);
    };
    if path == format!("/api/models/{repo}/revision/main") {
        let siblings: Vec<_> = files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "sha": SHA, "siblings": siblings }).to_string();
        return reply(&mut out, "200 OK", &[], body.as_bytes());
    }
    let prefix = format!("/{repo}/resolve/main/");
    let Some(file) = path.strip_prefix(&prefix) else {
        return reply(&mut out, "404 Not Found", &[], b"");
    };
    if locked.iter().any(|l| l == file) {
        return reply(&mut out, "401 Unauthorized", &[], b"");
    }
    let Some(bytes) = files.get(file) else {
        return reply(&mut out, "404 Not Found", &[], b"");
    };
    // `Range: bytes=A-B` or `bytes=A-`.
    let (from, to) = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().unwrap_or(bytes.len() - 1);
            (a, b.min(bytes.len() - 1))
        })
        .unwrap_or((0, bytes.len() - 1));
    let extra = [
        (
            "ETag".to_owned(),
            format!("\"etag-{}\"", file.replace('/', "-")),
        ),
        ("X-Repo-Commit".to_owned(), SHA.to_owned()),
        (
            "Content-Range".to_owned(),
            format!("bytes {from}-{to}/{}", bytes.len()),
        ),
    ];
    reply(
        &mut out,
        "206 Partial Content",
        &extra,
        &bytes[from..=to.max(from)],
    );
}

#[test]
fn a_sharded_model_lands_in_the_cache_layout_the_hf_tools_use() {
    let index = serde_json::json!({
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
        }
    })
    .to_string();
    let hub = FakeHub::start(
        "acme/tiny",
        &[
            ("config.json", b"{\"model_type\": \"llama\"}".to_vec()),
            ("tokenizer.json", b"{}".to_vec()),
            ("README.md", b"not downloaded".to_vec()),
            ("model.safetensors.index.json", index.into_bytes()),
            ("model-00001-of-00002.safetensors", vec![1u8; 3000]),
            ("model-00002-of-00002.safetensors", vec![2u8; 10]),
        ],
        &[],
    );
    let cache = temp("sharded");
    let opts = HubOptions {
        token: Some("hf_secret".into()),
        ..online(&cache, &hub.endpoint)
    };
    let dir = resolve("acme/tiny", &opts).unwrap();
    let root = cache.join("models--acme--tiny");
    assert_eq!(dir, root.join("snapshots").join(SHA));
    assert_eq!(
        std::fs::read_to_string(root.join("refs/main")).unwrap(),
        SHA
    );
    assert_eq!(
        std::fs::read(dir.join("model-00001-of-00002.safetensors")).unwrap(),
        vec![1u8; 3000]
    );
    assert_eq!(
        std::fs::read(dir.join("model-00002-of-00002.safetensors")).unwrap(),
        vec![2u8; 10]
    );
    // Snapshot files point at blobs, as the hf CLI leaves them.
    assert!(root.join("blobs/etag-config.json").is_file());
    assert!(!dir.join("README.md").exists());
    let seen = hub.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|s| s.authorization.as_deref() == Some("Bearer hf_secret")),
        "{seen:?}"
    );
    // Found in the cache from now on, offline too.
    let before = hub.paths().len();
    let offline = HubOptions {
        offline: true,
        ..HubOptions::new(cache.clone())
    };
    assert_eq!(resolve("acme/tiny", &offline).unwrap(), dir);
    assert_eq!(resolve("acme/tiny", &opts).unwrap(), dir);
    assert_eq!(hub.paths().len(), before);
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn one_gguf_file_of_a_repo() {
    let hub = FakeHub::start(
        "acme/tiny-GGUF",
        &[
            ("tiny.Q4_0.gguf", b"GGUF q4".to_vec()),
            ("tiny.Q8_0.gguf", b"GGUF q8".to_vec()),
        ],
        &[],
    );
    let cache = temp("gguf");
    let opts = online(&cache, &hub.endpoint);
    let path = resolve("acme/tiny-GGUF/tiny.Q4_0.gguf", &opts).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"GGUF q4");
    assert!(hub.paths().iter().all(|p| !p.contains("Q8_0")));
    // A file the repo lacks, and a folder model asked of a GGUF repo, say what there is.
    let e = resolve("acme/tiny-GGUF/tiny.Q5_K.gguf", &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tiny.Q5_K.gguf") && e.contains("tiny.Q8_0.gguf"),
        "{e}"
    );
    let e = resolve("acme/tiny-GGUF", &opts).unwrap_err().to_string();
    assert!(
        e.contains("no config.json") && e.contains("acme/tiny-GGUF/FILE.gguf"),
        "{e}"
    );
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn refusals_of_the_hub_are_named() {
    let hub = FakeHub::start(
        "acme/gated",
        &[
            ("config.json", b"{}".to_vec()),
            ("tokenizer.json", b"{}".to_vec()),
            ("model.safetensors", vec![0u8; 8]),
        ],
        &["model.safetensors"],
    );
    let cache = temp("gated");
    let opts = online(&cache, &hub.endpoint);
    let e = resolve("acme/gated", &opts).unwrap_err().to_string();
    assert!(
        e.starts_with("acme/gated:") && e.contains("401") && e.contains("HF_TOKEN"),
        "{e}"
    );
    // The download stopped after config.json and tokenizer.json: what it left is no cached
    // model (offline it is missing), and online the download is tried again.
    let offline = HubOptions {
        offline: true,
        ..HubOptions::new(cache.clone())
    };
    let e = resolve("acme/gated", &offline).unwrap_err().to_string();
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
    let before = hub.paths().len();
    assert!(resolve("acme/gated", &opts).is_err());
    assert!(hub.paths().len() > before, "not asked again");
    // A timeout that is no number of seconds stops a download before any request.
    let before = hub.paths().len();
    let bad = HubOptions {
        bad_timeout: Some("ten".into()),
        ..opts.clone()
    };
    let e = resolve("acme/gated", &bad).unwrap_err().to_string();
    assert!(e.contains("HF_HUB_ETAG_TIMEOUT is `ten`"), "{e}");
    assert_eq!(hub.paths().len(), before);
    let e = resolve("acme/missing@v9", &opts).unwrap_err().to_string();
    assert!(
        e.starts_with("acme/missing@v9:") && e.contains("no repo acme/missing at revision `v9`"),
        "{e}"
    );
    std::fs::remove_dir_all(&cache).unwrap();
}
