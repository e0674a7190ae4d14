//! `kiln irp`, `kiln memory`, `kiln profile`, `kiln chat --refine` and the server's `refine`
//! field, end to end on the default model with short answers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::Server;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn model() -> PathBuf {
    kiln_model::fetch::ensure_default_model(true).expect("default model")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-irp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str], mem: &Path) -> Output {
    kiln()
        .args(args)
        .env("KILN_MEMORY", mem)
        .output()
        .expect("run kiln")
}

fn stdout_json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "kiln failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

#[test]
fn irp_json_then_memory_commands() {
    let d = scratch("irp");
    let mem = d.join("memory.db");
    let m = model();
    let m = m.to_str().unwrap();
    let o = run(
        &[
            "irp",
            "Why is the sky blue?",
            "--json",
            "--model",
            m,
            "--profile",
            "edge",
            "--set",
            "max_tokens=16",
        ],
        &mem,
    );
    let v = stdout_json(&o);
    for k in [
        "answer",
        "iterations",
        "energies",
        "temperatures",
        "best_index",
        "halt_reason",
        "energy_terms",
        "timings",
        "snarc",
    ] {
        assert!(!v[k].is_null(), "missing {k}: {v}");
    }
    for k in [
        "load_s",
        "prefill_s",
        "decode_s",
        "energy_s",
        "snarc_s",
        "total_s",
    ] {
        assert!(v["timings"][k].as_f64().is_some(), "timings.{k}");
    }
    for k in [
        "surprise", "novelty", "arousal", "reward", "conflict", "total",
    ] {
        let x = v["snarc"][k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "snarc.{k} = {x}");
    }
    assert!(v["snarc"]["salient"].is_boolean());
    assert!(v["snarc"]["explanations"]["novelty"].is_string());
    let n = v["iterations"].as_u64().unwrap() as usize;
    assert!((1..=3).contains(&n));
    assert_eq!(v["energies"].as_array().unwrap().len(), n);
    let id = v["memory"]["id"].as_i64().unwrap();

    // Refine mode, stored too.
    let o = run(
        &[
            "irp",
            "Name a prime number.",
            "--json",
            "--model",
            m,
            "--mode",
            "refine",
            "--set",
            "max_tokens=12",
            "--set",
            "iterations=2",
        ],
        &mem,
    );
    let v2 = stdout_json(&o);
    assert_eq!(v2["mode"], "refine");

    let o = run(&["memory", "stats", "--json"], &mem);
    let s = stdout_json(&o);
    assert_eq!(s["exchanges"], 2);
    let o = run(&["memory", "list", "--json"], &mem);
    assert!(o.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["id"], id);
    assert_eq!(lines[1]["question"], "Why is the sky blue?");
    let o = run(&["memory", "search", "sky blue", "--json"], &mem);
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], id);
    let out = d.join("sleep.jsonl");
    let o = run(
        &[
            "memory",
            "export",
            "--format",
            "jsonl",
            "-o",
            out.to_str().unwrap(),
        ],
        &mem,
    );
    assert!(o.status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 2);
    let l: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(l["messages"][0]["content"], "Why is the sky blue?");
    assert_eq!(l["messages"][1]["role"], "assistant");
    let o = run(&["memory", "export", "--salient"], &mem);
    assert!(o.status.success());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_profiles_and_memory_files_are_named() {
    let d = scratch("errors");
    let mem = d.join("memory.db");
    let prof = d.join("mine.yaml");
    std::fs::write(&prof, "iterations: 3\ntemprature: 0.5\n").unwrap();
    let o = run(&["irp", "q", "--profile", prof.to_str().unwrap()], &mem);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("temprature") && e.contains("mine.yaml"), "{e}");
    std::fs::write(&prof, "iterations: 100\n").unwrap();
    let o = run(&["irp", "q", "--profile", prof.to_str().unwrap()], &mem);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("iterations") && e.contains("mine.yaml"), "{e}");
    let o = run(&["irp", "q", "--set", "max_tokens=0"], &mem);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("max_tokens") && e.contains("command line"),
        "{e}"
    );

    let bad = d.join("corrupt.db");
    std::fs::write(&bad, vec![7u8; 4096]).unwrap();
    let o = run(&["memory", "stats"], &bad);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("corrupt") && e.contains("corrupt.db"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn profile_compare_writes_table_json_and_svg() {
    let d = scratch("compare");
    let q = d.join("q.txt");
    std::fs::write(&q, "# two questions\nWhat is 2+2?\nName a colour.\n").unwrap();
    let o = kiln()
        .args(["profile", "--compare", "1,2", "--questions"])
        .arg(&q)
        .args(["--set", "max_tokens=8", "--model"])
        .arg(model())
        .arg("--out")
        .arg(&d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| 1 iterations |") && table.contains("| 2 iterations |"),
        "{table}"
    );
    assert!(table.contains("change vs baseline") && table.contains("peak RSS"));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("profile-compare.json")).unwrap())
            .unwrap();
    assert_eq!(j["configs"].as_array().unwrap().len(), 2);
    assert_eq!(j["configs"][0]["change_vs_baseline_pct"], 0.0);
    let svg = std::fs::read_to_string(d.join("profile-compare.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn chat_refine_stores_every_exchange() {
    let d = scratch("chat");
    let mem = d.join("memory.db");
    let prof = d.join("tiny.yaml");
    std::fs::write(
        &prof,
        "iterations: 2\nmax_tokens: 10\nhistory_exchanges: 1\n",
    )
    .unwrap();
    let mut child = kiln()
        .args(["chat", "--refine"])
        .arg(&prof)
        .arg("--model")
        .arg(model())
        .arg("--memory")
        .arg(&mem)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\nAnd of Italy?\n/exit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(e.matches("stored #").count(), 2, "{e}");
    let o = run(&["memory", "list", "--json"], &mem);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["question"], "And of Italy?");
    assert_eq!(rows[0]["source"], "chat");
    assert_eq!(rows[0]["session"], rows[1]["session"]);
    // The second question's surprise is measured against the first.
    let why = rows[0]["snarc"]["surprise"]["why"].as_str().unwrap();
    assert!(
        why.starts_with("model:") && why.contains("1 earlier exchange"),
        "{why}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn server_refine_field() {
    let server = Server::start(&[]);
    let port = server.port;
    let post = |body: &str| -> (u16, String) {
        let o = Command::new("curl")
            .args([
                "-sS",
                "-w",
                "\n%{http_code}",
                "--max-time",
                "120",
                "-H",
                "content-type: application/json",
                "-d",
                body,
            ])
            .arg(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .output()
            .expect("curl");
        let t = String::from_utf8_lossy(&o.stdout).into_owned();
        let (b, c) = t.rsplit_once('\n').unwrap_or(("", "0"));
        (c.trim().parse().unwrap_or(0), b.to_owned())
    };
    let (code, body) = post(
        r#"{"messages":[{"role":"user","content":"Why is the sky blue?"}],"max_tokens":8,"seed":3,
            "refine":{"profile":"edge","max_tokens":12}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let r = &v["refinement"];
    assert_eq!(r["profile"], "edge");
    let n = r["iterations"].as_u64().unwrap() as usize;
    assert_eq!(r["energies"].as_array().unwrap().len(), n);
    assert!(r["halt_reason"].is_string() && r["best_index"].is_u64());
    assert!(v["snarc"]["total"].is_f64());
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= n as u64);
    // Streaming: the answer in one chunk with the refinement info.
    let (code, body) = post(
        r#"{"messages":[{"role":"user","content":"Hi"}],"stream":true,"refine":{"profile":"edge","max_tokens":6}}"#,
    );
    assert_eq!(code, 200);
    let chunks: Vec<serde_json::Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .any(|c| c["refinement"].is_object() && c["snarc"].is_object()));
    assert!(body.trim_end().ends_with("data: [DONE]"));
    // Errors name the field.
    let (code, body) =
        post(r#"{"messages":[{"role":"user","content":"Hi"}],"refine":{"iterations":0}}"#);
    assert_eq!(code, 400);
    assert!(body.contains("refine.iterations"), "{body}");
    let (code, body) =
        post(r#"{"messages":[{"role":"user","content":"Hi"}],"n":2,"refine":"edge"}"#);
    assert_eq!(code, 400, "{body}");
}
