//! The `kiln` binary as other tools call it.

use std::io::Write;
use std::process::{Command, Stdio};

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn model() -> std::path::PathBuf {
    kiln_model::fetch::ensure_default_model(true).expect("default model")
}

fn run_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = kiln()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn raw_json_run_matches_the_reference() {
    let m = model();
    let fixtures = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/smollm2-135m-q4_1-golden.jsonl"
    ))
    .unwrap();
    let case: serde_json::Value = serde_json::from_str(fixtures.lines().next().unwrap()).unwrap();
    let out = run_stdin(
        &[
            "run",
            "--model",
            m.to_str().unwrap(),
            "--raw",
            "--temperature",
            "0",
            "--max-tokens",
            "48",
            "--json",
        ],
        case["prompt"].as_str().unwrap(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["prompt_ids"], case["prompt_ids"]);
    // Equal up to the first position where the reference's top two are within 0.3.
    let tie = case["top5"]
        .as_array()
        .unwrap()
        .iter()
        .position(|t| t[0][1].as_f64().unwrap() - t[1][1].as_f64().unwrap() < 0.3)
        .unwrap_or(usize::MAX);
    let want = case["greedy_ids"].as_array().unwrap();
    let got = v["ids"].as_array().unwrap();
    let upto = tie.min(want.len());
    assert!(upto >= 2, "the comparison must cover some tokens");
    assert_eq!(got[..upto], want[..upto]);
    assert!(v["text"].as_str().unwrap().contains('4'), "{}", v["text"]);
    for k in ["load_s", "prefill_tok_s", "decode_tok_s"] {
        assert!(v["timings"][k].as_f64().is_some_and(|x| x > 0.0), "{k}");
    }
}

#[test]
fn chat_template_run_streams_an_answer() {
    let m = model();
    let out = kiln()
        .args([
            "run",
            "--model",
            m.to_str().unwrap(),
            "--temperature",
            "0",
            "-n",
            "16",
        ])
        .arg("What is 2+2?")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains('4'), "{text}");
}

#[test]
fn malformed_model_file_is_named_in_the_error() {
    let dir = std::env::temp_dir().join(format!("kiln-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("broken.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00\xff\xff").unwrap();
    let out = kiln()
        .args(["run", "--model", bad.to_str().unwrap(), "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.gguf") && err.contains("truncated"),
        "{err}"
    );
    let missing = dir.join("absent.gguf");
    let out = kiln()
        .args(["run", "--model", missing.to_str().unwrap(), "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("absent.gguf"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn hub_models_follow_the_hugging_face_variables() {
    let cache = std::env::temp_dir().join(format!("kiln-cli-hub-{}", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();
    let run = |model: &str, vars: &[(&str, &str)]| {
        let mut cmd = kiln();
        cmd.args(["run", "--model", model, "hi"])
            .env("HF_HUB_CACHE", &cache)
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_ENDPOINT");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let t = std::time::Instant::now();
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            t.elapsed(),
        )
    };
    // Offline: the cache only, and the error says how to fill it.
    let (err, _) = run("acme/tiny", &[("HF_HUB_OFFLINE", "1")]);
    assert!(
        err.contains("acme/tiny") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    // Online, against an endpoint where nothing listens: soon an error naming both.
    let (err, took) = run("acme/tiny", &[("HF_ENDPOINT", "http://127.0.0.1:1")]);
    assert!(
        err.contains("acme/tiny:") && err.contains("http://127.0.0.1:1"),
        "{err}"
    );
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    // Neither a file nor a repo id.
    let (err, _) = run("acme/tiny@", &[("HF_ENDPOINT", "http://127.0.0.1:1")]);
    assert!(err.contains("no such file or folder"), "{err}");
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn absurd_parameters_are_refused_by_name() {
    for (flag, val, word) in [
        ("--temperature", "-1", "temperature"),
        ("--top-p", "0", "top-p"),
        ("--max-tokens", "0", "max-tokens"),
        ("--prompt-lookup", "99", "prompt-lookup"),
    ] {
        let out = kiln()
            .args([
                "run",
                "--model",
                "/nonexistent.gguf",
                &format!("{flag}={val}"),
                "hi",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(word), "{flag}: {err}");
    }
}

/// A thread count past the pool's limit is refused by name where the CPU is opened (the
/// pool would otherwise cap it silently).
#[test]
fn too_many_threads_are_refused_by_name() {
    let out = kiln()
        .args(["run", "--threads", "5000", "--max-tokens", "2", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--threads 5000: at most 1024"), "{err}");
}

/// `--draft-max` or `--draft-p-min` out of range, or without a draft model: refused by the
/// argument parser, before any model loads.
#[test]
fn draft_flags_are_checked_before_loading() {
    for (args, word) in [
        (
            vec!["--draft", "/nonexistent.gguf", "--draft-max", "17"],
            "expected 1 to 16",
        ),
        (vec!["--draft-max", "4"], "--draft"),
        (
            vec!["--draft", "/nonexistent.gguf", "--draft-p-min", "1.5"],
            "expected a probability, 0 to 1",
        ),
        (
            vec!["--draft", "/nonexistent.gguf", "--draft-p-min", "NaN"],
            "expected a probability, 0 to 1",
        ),
        (vec!["--draft-p-min", "0.5"], "--draft"),
    ] {
        let out = kiln()
            .args(["run", "--model", "/nonexistent.gguf"])
            .args(&args)
            .arg("hi")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(word), "{args:?}: {err}");
    }
}

/// The developers' switches (`--dev`) and `--gpu-weights`: a name or value kiln does not know,
/// or one for another device, is an error that names it; one that applies is used.
#[test]
fn device_switches_are_checked_and_never_ignored() {
    let gguf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-qwen2/model.gguf"
    );
    for (args, usage, word) in [
        (vec!["--dev", "cuda-grafs=0"], true, "no such switch"),
        (vec!["--dev", "cuda-graphs"], true, "expected NAME=VALUE"),
        (
            vec!["--dev", "cuda-graphs=maybe"],
            true,
            "expected cuda-graphs=0 or cuda-graphs=1",
        ),
        (
            vec!["--dev", "cpu-isa=sse9"],
            true,
            "instruction set `sse9`",
        ),
        (
            vec!["--gpu-weights", "q3"],
            true,
            "expected f16, q8, q4 or quantized",
        ),
        (
            vec!["--gpu-weights", "q4"],
            false,
            "--gpu-weights applies to --device cuda only",
        ),
        (
            vec!["--gpu-weights", "q4", "--quantize", "q8_0"],
            false,
            "--quantize Q8_0 and --gpu-weights q4 ask for different types",
        ),
        (
            vec!["--dev", "cuda-graphs=0"],
            false,
            "cuda-graphs applies to --device cuda only",
        ),
        (
            vec!["--gpu-weights", "quantized"],
            false,
            "--gpu-weights applies to --device cuda only",
        ),
    ] {
        let out = kiln()
            .args(["run", "--model", gguf, "-n", "2"])
            .args(&args)
            .arg("hi")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        if usage {
            assert_eq!(out.status.code(), Some(2), "{args:?}");
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(word), "{args:?}: {err}");
    }
    // Switches for the CPU are used: the scalar kernels and f32 activations still answer.
    let out = kiln()
        .args(["run", "--model", gguf, "-n", "4", "--temperature", "0"])
        .args(["--dev", "cpu-isa=scalar", "--dev", "cpu-exact=1", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("scalar, f32 activations"), "{err}");
}

/// Flags that only one device or mode uses are refused elsewhere, by name, not ignored.
#[test]
fn flags_for_another_device_or_mode_are_refused() {
    for (args, word) in [
        (
            vec!["ising", "bench", "--block-threads", "33"],
            "expected a multiple of 32 from 32 to 256",
        ),
        (
            vec!["ising", "swarm", "--block-threads", "64"],
            "--block-threads applies to --device cuda only",
        ),
        (
            vec!["ising", "bench", "--block-threads", "64", "--repeats", "1"],
            "--block-threads applies to --device cuda only",
        ),
        (
            vec!["irp", "--no-memory", "--memory-sync", "normal", "hi"],
            "--no-memory",
        ),
    ] {
        let out = kiln().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(word), "{args:?}: {err}");
    }
}

#[test]
fn cuda_device_without_a_gpu_is_a_clear_error() {
    let bad = kiln()
        .args(["run", "--device", "tpu", "hi"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected cpu, cuda or cuda:N"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let gguf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-qwen2/model.gguf"
    );
    let out = kiln()
        .args(["run", "--device", "cuda", "--model", gguf, "-n", "4", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Built without the feature (as in CI) or run without a GPU: a one-line reason, no panic.
    // On a machine with a GPU and a CUDA build it simply runs.
    if !out.status.success() {
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("built without CUDA") || err.contains("NVIDIA driver"),
            "{err}"
        );
    }
}

/// The standard output of a kiln command that must succeed.
fn succeeds(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kiln quantize IN OUT --type TY`, which must succeed; returns its summary.
fn quantize_ok(input: &std::path::Path, output: &std::path::Path, ty: &str) -> String {
    succeeds(
        kiln()
            .args([
                "quantize",
                input.to_str().unwrap(),
                output.to_str().unwrap(),
            ])
            .args(["--type", ty]),
    )
}

/// The greedy continuation of "The capital of France is" by the model at `path`.
fn capital_of_france(path: &std::path::Path) -> String {
    succeeds(
        kiln()
            .args(["run", "-m", path.to_str().unwrap(), "-n", "12"])
            .args(["--temperature", "0", "--raw", "The capital of France is"]),
    )
}

#[test]
fn quantize_writes_a_model_that_runs_and_refuses_what_it_cannot_do() {
    let m = model();
    let dir = std::env::temp_dir().join(format!("kiln-quantize-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f16 = dir.join("f16.gguf");
    let text = quantize_ok(&m, &f16, "f16");
    assert!(
        text.contains("272 tensors") && text.contains("converted"),
        "{text}"
    );
    // The Q4_1 file's 211 matrices decoded to f16: more than twice the bytes.
    let (a, b) = (
        std::fs::metadata(&m).unwrap().len(),
        std::fs::metadata(&f16).unwrap().len(),
    );
    assert!(b > 2 * a, "{a} -> {b}");
    // The copy answers like a model: its tokenizer, template and weights came along.
    assert!(capital_of_france(&f16).contains("Paris"));
    // Back from f16 to q4_1: the default file's size and mix (4-bit matrices, the embedding
    // in q8_0), and its greedy answer.
    let q41 = dir.join("q4_1.gguf");
    let text = quantize_ok(&f16, &q41, "q4_1");
    assert!(text.contains("210 converted, 1 as q8_0"), "{text}");
    assert_eq!(
        std::fs::metadata(&q41).unwrap().len(),
        std::fs::metadata(&m).unwrap().len()
    );
    assert_eq!(capital_of_france(&q41), capital_of_france(&m));
    // What it cannot do is refused by name, and nothing is written.
    for (args, want) in [
        (
            vec!["--type", "q5_k"],
            "kiln quantize writes f16, q8_0, q4_0, q4_1 or q4_k",
        ),
        (
            vec!["--type", "f16"],
            "the output would overwrite the input",
        ),
    ] {
        let target = if want.contains("overwrite") {
            m.to_str().unwrap()
        } else {
            "/nonexistent/x.gguf"
        };
        let out = kiln()
            .args(["quantize", m.to_str().unwrap(), target])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(want), "{e}");
    }
    let out = kiln()
        .args([
            "quantize",
            dir.to_str().unwrap(),
            "/nonexistent/x.gguf",
            "--type",
            "f16",
        ])
        .output()
        .unwrap();
    // A folder that is not a model: what it lacks is named.
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no config.json"));
    let out = kiln()
        .args([
            "quantize",
            m.to_str().unwrap(),
            dir.to_str().unwrap(),
            "--type",
            "f16",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name the GGUF file to write"));
    assert!(!dir.join(".part").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kiln convert` writes a folder as GGUF that runs with the folder's greedy text, `kiln
/// quantize` takes a folder too, and what they cannot read is refused by name.
#[test]
fn convert_writes_a_folder_as_gguf_that_runs_the_same() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let dir = std::env::temp_dir().join(format!("kiln-convert-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let greedy = |model: &std::path::Path| {
        let out = kiln()
            .args(["run", "--model", model.to_str().unwrap()])
            .args(["-n", "12", "--temperature", "0", "--raw", "The sea"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    for arch in ["llama", "qwen2", "phi3"] {
        let hf = fixtures.join(format!("tiny-{arch}/hf"));
        let gguf = dir.join(format!("{arch}.gguf"));
        let out = kiln()
            .args(["convert", hf.to_str().unwrap(), gguf.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("({arch})")) && text.contains("MiB"),
            "{text}"
        );
        assert_eq!(greedy(&gguf), greedy(&hf), "{arch}");
    }
    // A folder straight to a quantized file.
    let q = dir.join("qwen2-q8.gguf");
    let text = quantize_ok(&fixtures.join("tiny-qwen2/hf"), &q, "q8_0");
    assert!(text.contains("converted"), "{text}");
    assert!(!greedy(&q).is_empty());
    for (args, word) in [
        (
            vec!["convert", q.to_str().unwrap(), "x.gguf"],
            "is not a folder",
        ),
        (
            vec!["convert", dir.to_str().unwrap(), "x.gguf"],
            "no config.json",
        ),
        (
            vec![
                "convert",
                fixtures.join("tiny-llama/hf").to_str().unwrap(),
                dir.to_str().unwrap(),
            ],
            "is a folder: name the GGUF file",
        ),
    ] {
        let out = kiln().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(word), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
