//! Llama, Qwen2 and Phi-3 against transformers: tiny random-weight models with the real
//! structure, as Hugging Face folders and as GGUF, with and without a PEFT LoRA adapter.
//!
//! The fixtures and their reference logits come from `scripts/make_tiny_fixtures.py`
//! (transformers 5.17 / PyTorch 2.11 / PEFT 0.21, float64 forward on the CPU); see
//! `tests/fixtures/README.md`.

use std::path::{Path, PathBuf};

mod common;
use common::test_device;
use kiln_model::loader::{load, LoadOptions};
use kiln_model::quantize::QuantReport;
use kiln_model::quantize::QuantType;
use kiln_model::{Arch, RopeStyle};
use kiln_model::{Backend, Model, ModelConfig, ModelError};
use kiln_tokenizer::chat::ChatTemplate;
use kiln_tokenizer::chat::Message;
use kiln_tokenizer::TokenType;
use kiln_tokenizer::Tokenizer;
use serde::Deserialize;

/// Largest |logit - reference| allowed with f32 weights (logits have a standard deviation of
/// about 0.8). The reference is a float64 forward of the same f32 weights. kiln computes in
/// f32 but keeps its KV cache in f16, and that rounding (relative 2^-11) is all of the
/// difference: a float64 forward with K and V rounded to f16 lands within 1e-4 of kiln's
/// logits and, like kiln, 1.4e-3 to 3.9e-3 from the reference (see tests/fixtures/README.md).
const TOL_F32: f32 = 5e-3;

/// The same bound on the CUDA backend, which also rounds the weights to f16 (relative 2^-11):
/// measured on an H100, 4.5e-3 for the base models and 1.1e-2 with a LoRA adapter merged
/// (the merged f32 weights are rounded after the merge).
const TOL_F32_GPU: f32 = 1.5e-2;

fn tol_f32() -> f32 {
    match std::env::var("KILN_TEST_DEVICE") {
        Ok(d) if d != "cpu" => TOL_F32_GPU,
        _ => TOL_F32,
    }
}

#[derive(Deserialize)]
struct Prompt {
    text: String,
    ids: Vec<u32>,
    #[serde(default)]
    chat: Option<Vec<Message>>,
}

#[derive(Deserialize)]
struct Reference {
    vocab_size: usize,
    prompts: Vec<Prompt>,
    decoded: Vec<String>,
}

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(format!("tiny-{arch}"))
}

fn reference(arch: &str) -> Reference {
    let p = fixture(arch).join("reference.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("reference.json")
}

fn ref_logits(arch: &str, which: &str) -> Vec<f32> {
    let p = fixture(arch).join(format!("logits_{which}.f32"));
    let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Hf,
    Gguf,
}

fn open(arch: &str, format: Format, lora: bool, quantize: Option<QuantType>) -> Opened {
    let dir = fixture(arch);
    let path = match format {
        Format::Hf => dir.join("hf"),
        Format::Gguf => dir.join("model.gguf"),
    };
    let opts = LoadOptions {
        lora: lora.then(|| dir.join("lora")),
        quantize,
    };
    load_test(&path, 2, &opts)
        .unwrap_or_else(|e| panic!("loading {} ({format:?}, lora {lora}): {e}", path.display()))
}

/// The model, as a function from prompts to logits.
type LogitsFn = Box<dyn Fn(&[Prompt]) -> Vec<f32>>;

/// A model loaded on the test device: what the tests read of it, and its logits.
struct Opened {
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    quantized: Option<QuantReport>,
    /// Every position's logits of every prompt (see [`all_logits`]).
    logits: LogitsFn,
    /// The same, each token in a pass of its own, as decoding runs (see [`stepped_logits`]).
    stepped: LogitsFn,
}

/// Loads `path` on the test device with `threads` CPU threads.
fn load_test(path: &Path, threads: usize, opts: &LoadOptions) -> Result<Opened, ModelError> {
    load_on(test_device(threads), path, opts)
}

/// Loads `path` on `device`.
fn load_on(
    device: kiln_engine::device::Device,
    path: &Path,
    opts: &LoadOptions,
) -> Result<Opened, ModelError> {
    kiln_engine::with_backend!(device, b => {
        let m = load(path, b, opts)?;
        let model = std::rc::Rc::new(m.model);
        let again = model.clone();
        Ok(Opened {
            cfg: model.cfg.clone(),
            tokenizer: m.tokenizer,
            template: m.template,
            quantized: m.quantized,
            logits: Box::new(move |prompts| all_logits(&model, prompts)),
            stepped: Box::new(move |prompts| stepped_logits(&again, prompts)),
        })
    })
}

/// Every position's logits of every reference prompt, in the reference's layout.
fn all_logits<B: Backend>(m: &Model<B>, prompts: &[Prompt]) -> Vec<f32> {
    let mut out = Vec::new();
    for p in prompts {
        let n = p.ids.len();
        let mut kv = m.new_kv(n).unwrap();
        let mut st = m.new_state(n, n).unwrap();
        m.forward(&mut st, &mut kv, &p.ids, 0, true).unwrap();
        out.extend_from_slice(&st.logits);
    }
    out
}

/// As [`all_logits`], each token in a pass of its own (one row a pass: the decode kernels).
fn stepped_logits<B: Backend>(m: &Model<B>, prompts: &[Prompt]) -> Vec<f32> {
    let mut out = Vec::new();
    for p in prompts {
        let n = p.ids.len();
        let mut kv = m.new_kv(n).unwrap();
        let mut st = m.new_state(1, 1).unwrap();
        for (i, &id) in p.ids.iter().enumerate() {
            m.forward(&mut st, &mut kv, &[id], i, true).unwrap();
            out.extend_from_slice(&st.logits);
        }
    }
    out
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "logit counts differ");
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn check(arch: &str, format: Format, lora: bool) {
    let r = reference(arch);
    let m = open(arch, format, lora, None);
    let cfg = &m.cfg;
    assert_eq!(cfg.vocab_size, r.vocab_size);
    let want_arch = match arch {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        _ => Arch::Phi3,
    };
    assert_eq!(cfg.arch, want_arch);
    // GGUF llama q/k rows are permuted for adjacent-pair RoPE; everything else rotates halves.
    let style = if format == Format::Gguf && arch == "llama" {
        RopeStyle::Interleaved
    } else {
        RopeStyle::Halves
    };
    assert_eq!(cfg.rope_style, style);

    // Tokenization of plain text, BOS included where the model asks for it.
    for p in r.prompts.iter().filter(|p| p.chat.is_none()) {
        assert_eq!(
            m.tokenizer.encode(&p.text, true, true),
            p.ids,
            "{arch} {format:?}: ids of {:?}",
            p.text
        );
    }
    for (p, want) in r.prompts.iter().zip(&r.decoded) {
        let ids: Vec<u32> = p.ids.clone();
        assert_eq!(
            &m.tokenizer.decode(&ids, false),
            want,
            "{arch} {format:?}: decode"
        );
    }
    // The chat template renders what transformers renders, and tokenizes the same.
    let chat = r
        .prompts
        .iter()
        .find(|p| p.chat.is_some())
        .expect("a chat prompt");
    let rendered = m
        .template
        .render(chat.chat.as_ref().unwrap(), true)
        .unwrap();
    assert_eq!(rendered, chat.text, "{arch} {format:?}: chat template");
    let chat_ids = m.tokenizer.encode(&rendered, false, true);
    // Encoding the conversation through the template reads the template's control tokens
    // and tokenizes exactly as the rendered text does...
    let msgs = chat.chat.as_ref().unwrap();
    assert_eq!(
        m.template.encode(&m.tokenizer, msgs, true).unwrap(),
        m.tokenizer.encode(&rendered, true, true),
        "{arch} {format:?}: chat encode"
    );
    // ...and never reads control tokens that a message's content spells.
    let controls: Vec<u32> = (0..m.tokenizer.vocab_size() as u32)
        .filter(|&i| m.tokenizer.token_type(i) == Some(TokenType::Control))
        .collect();
    assert!(!controls.is_empty());
    let spelled: String = controls
        .iter()
        .filter_map(|&i| m.tokenizer.token_text(i))
        .collect::<Vec<_>>()
        .join("\n");
    let spoofed: Vec<Message> = msgs
        .iter()
        .map(|x| Message::new(&x.role, format!("{}{spelled}", x.content)))
        .collect();
    let control_ids = |ids: &[u32]| {
        let mut c: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|i| controls.contains(i))
            .collect();
        c.sort_unstable();
        c
    };
    let honest = m.template.encode(&m.tokenizer, msgs, true).unwrap();
    let spoof = m.template.encode(&m.tokenizer, &spoofed, true).unwrap();
    assert_eq!(
        control_ids(&spoof),
        control_ids(&honest),
        "{arch} {format:?}: control tokens spelled in content"
    );
    if format == Format::Hf || arch != "phi3" {
        assert_eq!(chat_ids, chat.ids, "{arch} {format:?}: chat prompt ids");
    } else {
        // GGUF's SentencePiece convention (llama.cpp) puts a space before the text after
        // every special token; this Phi-3 tokenizer.json (Metaspace, prepend_scheme
        // "first") does not. Real Phi-3 GGUFs differ from transformers the same way.
        assert_ne!(chat_ids, chat.ids);
    }

    let got = (m.logits)(&r.prompts);
    let want = ref_logits(arch, if lora { "lora" } else { "base" });
    let err = max_err(&got, &want);
    eprintln!(
        "{arch} {format:?} lora={lora}: max |dlogit| = {err:.2e} over {} logits",
        want.len()
    );
    assert!(
        err <= tol_f32(),
        "{arch} {format:?} lora={lora}: max logit error {err} > {}",
        tol_f32()
    );
    if lora {
        // The adapter must matter, or the test above proves nothing about merging.
        let base = ref_logits(arch, "base");
        assert!(
            max_err(&got, &base) > 0.5,
            "{arch}: the adapter changed nothing"
        );
    }
}

#[test]
fn llama_hf() {
    check("llama", Format::Hf, false);
}
#[test]
fn llama_gguf() {
    check("llama", Format::Gguf, false);
}
#[test]
fn llama_hf_lora() {
    check("llama", Format::Hf, true);
}
#[test]
fn llama_gguf_lora() {
    check("llama", Format::Gguf, true);
}
#[test]
fn qwen2_hf() {
    check("qwen2", Format::Hf, false);
}
#[test]
fn qwen2_gguf() {
    check("qwen2", Format::Gguf, false);
}
#[test]
fn qwen2_hf_lora() {
    check("qwen2", Format::Hf, true);
}
#[test]
fn qwen2_gguf_lora() {
    check("qwen2", Format::Gguf, true);
}
#[test]
fn phi3_hf() {
    check("phi3", Format::Hf, false);
}
#[test]
fn phi3_gguf() {
    check("phi3", Format::Gguf, false);
}
#[test]
fn phi3_hf_lora() {
    check("phi3", Format::Hf, true);
}
#[test]
fn phi3_gguf_lora() {
    check("phi3", Format::Gguf, true);
}

#[test]
fn structure_matches_the_real_models() {
    let l = open("llama", Format::Hf, false, None);
    assert_eq!((l.cfg.n_heads, l.cfg.n_kv_heads), (4, 1));
    assert!(!l.cfg.qkv_bias);
    let q = open("qwen2", Format::Hf, false, None);
    assert!(q.cfg.qkv_bias);
    assert_eq!(q.cfg.rope_base, 1_000_000.0);
    assert!(q
        .tokenizer
        .is_eog(q.tokenizer.token_id("<|im_end|>").unwrap()));
    let p = open("phi3", Format::Gguf, false, None);
    assert!(p.tokenizer.is_eog(p.tokenizer.token_id("<|end|>").unwrap()));
}

/// Copies a fixture folder with every float tensor re-encoded as `dtype`.
fn convert_folder(arch: &str, dtype: kiln_formats::safetensors::Dtype) -> PathBuf {
    use kiln_formats::safetensors::{from_f32, SafeTensors};
    let src = fixture(arch).join("hf");
    let dst = std::env::temp_dir().join(format!(
        "kiln-{arch}-{}-{}",
        dtype.name(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if !name.ends_with(".safetensors") {
            std::fs::copy(e.path(), dst.join(&name)).unwrap();
            continue;
        }
        let st = SafeTensors::open(e.path()).unwrap();
        let enc: Vec<(String, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .iter()
            .map(|(n, i)| {
                (
                    n.clone(),
                    i.shape.clone(),
                    from_f32(dtype, &st.to_f32(n).unwrap()).unwrap(),
                )
            })
            .collect();
        let list: Vec<_> = enc
            .iter()
            .map(|(n, s, b)| (n.as_str(), dtype, s.as_slice(), b.as_slice()))
            .collect();
        kiln_formats::safetensors::write(&dst.join(&name), &list, st.metadata()).unwrap();
    }
    dst
}

fn half_precision(dtype: kiln_formats::safetensors::Dtype, tol: f32) {
    for arch in ["llama", "qwen2", "phi3"] {
        let r = reference(arch);
        let dir = convert_folder(arch, dtype);
        let m = load_test(&dir, 2, &LoadOptions::default()).unwrap();
        let err = max_err(&(m.logits)(&r.prompts), &ref_logits(arch, "base"));
        eprintln!("{arch} {}: max |dlogit| = {err:.2e}", dtype.name());
        assert!(err <= tol, "{arch} {}: {err} > {tol}", dtype.name());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// F16 weights: rounding each weight to 11 bits moves logits by ~1e-2 at most here.
#[test]
fn f16_folders() {
    half_precision(kiln_formats::safetensors::Dtype::F16, 0.03);
}

/// BF16 weights: 8 bits of mantissa, ~8x the error of f16.
#[test]
fn bf16_folders() {
    half_precision(kiln_formats::safetensors::Dtype::BF16, 0.25);
}

/// Quantized on load (after the adapter is merged), logits stay near the reference. Q4_K
/// needs rows of 256 or more; these tiny models' rows (64 to 160) all fall back to Q8_0, as
/// llama.cpp falls back for such rows. The Q4_K encoder itself is tested in `quantize.rs`.
#[test]
fn quantize_on_load() {
    for (q, tol) in [(QuantType::Q8_0, 0.3), (QuantType::Q4K, 1.5)] {
        for arch in ["llama", "qwen2", "phi3"] {
            let r = reference(arch);
            let m = open(arch, Format::Hf, true, Some(q));
            let rep = m.quantized.clone().unwrap();
            assert_eq!(rep.kept, 0);
            assert!(rep.bytes_after < rep.bytes_before / 3, "{rep:?}");
            let err = max_err(&(m.logits)(&r.prompts), &ref_logits(arch, "lora"));
            eprintln!("{arch} {q:?}+lora: max |dlogit| = {err:.3} ({rep:?})");
            assert!(err <= tol, "{arch} {q:?}: {err} > {tol}");
        }
    }
}

/// `kiln quantize`'s function: each fixture's GGUF (f32 weights) written as f16, q8_0 and
/// q4_k loads, says what it did, keeps the tokenizer and template, and stays within the
/// bounds that quantizing on load meets against the float64 reference.
#[test]
fn quantized_files_load_and_agree_with_the_reference() {
    use kiln_model::quantize::{quantize_file, FileType};
    for (ty, tol) in [
        (FileType::F16, 0.02),
        (FileType::Q8_0, 0.3),
        (FileType::Q4K, 1.5),
        (FileType::Q4_0, 2.0),
        (FileType::Q4_1, 1.5),
    ] {
        for arch in ["llama", "qwen2", "phi3"] {
            let src = fixture(arch).join("model.gguf");
            let f = kiln_formats::gguf::GgufFile::open(&src).unwrap();
            let mut calls = 0;
            let (w, rep) = quantize_file(&f, ty, |done, total, _| {
                calls += 1;
                assert!(done <= total);
            })
            .unwrap();
            assert_eq!(calls, f.tensors().len());
            assert_eq!(rep.tensors, f.tensors().len());
            assert!(
                rep.converted + rep.fallback_q8_0 > 0,
                "{arch} {ty:?}: {rep:?}"
            );
            assert_eq!(rep.converted + rep.fallback_q8_0 + rep.kept, rep.tensors);
            assert!(rep.bytes_after < rep.bytes_before, "{arch} {ty:?}: {rep:?}");
            let out = std::env::temp_dir().join(format!(
                "kiln-quantize-{arch}-{ty:?}-{}.gguf",
                std::process::id()
            ));
            w.write_to(&out).unwrap();
            let g = kiln_formats::gguf::GgufFile::open(&out).unwrap();
            let want = match ty {
                FileType::F16 => 1,
                FileType::Q8_0 => 7,
                FileType::Q4K => 14,
                FileType::Q4_0 => 2,
                FileType::Q4_1 => 3,
            };
            assert_eq!(g.get_u64("general.file_type").unwrap(), want);
            drop(g);
            let a = open(arch, Format::Gguf, false, None);
            let b = load_test(&out, 2, &LoadOptions::default()).unwrap();
            let r = reference(arch);
            // The same tokenizer and chat template.
            for p in &r.prompts {
                assert_eq!(
                    a.tokenizer.encode(&p.text, true, true),
                    b.tokenizer.encode(&p.text, true, true)
                );
            }
            let msgs = [Message::new("user", "hi")];
            assert_eq!(
                a.template.render(&msgs, true).unwrap(),
                b.template.render(&msgs, true).unwrap()
            );
            let err = max_err(&(b.logits)(&r.prompts), &ref_logits(arch, "base"));
            eprintln!("{arch} {ty:?}: max |dlogit| = {err:.4} ({rep:?})");
            assert!(err <= tol, "{arch} {ty:?}: {err} > {tol}");
            std::fs::remove_file(&out).unwrap();
        }
    }
}

/// Quantized files decoded one token a pass give the logits of the whole prompt in one pass.
/// On the CPU they are the same to the bit (x is rounded to bytes per group of 32 either way).
/// On a GPU with `KILN_TEST_GPU_WEIGHTS=quantized` the one-row products read the weights in
/// place with x rounded to bytes (each product's output rounded for the next by the product
/// itself), while the prompt pass converts the weights to f16 and keeps x in f16. Which way a
/// value near half a step rounds follows the smallest difference upstream, so two devices'
/// rounded runs drift apart by about the rounding's whole effect; there the one-token passes
/// are held instead to be no further from the exact logits (the CPU's with f32 activations,
/// `cpu-exact`) than the CPU's own rounded ones are.
#[test]
fn quantized_files_decoded_one_token_a_pass_agree_with_the_prompt_pass() {
    use kiln_engine::device::{DevOptions, Device, DeviceKind, DeviceOptions};
    use kiln_model::quantize::{quantize_file, FileType};
    let in_place = common::test_kind() != DeviceKind::Cpu
        && std::env::var("KILN_TEST_GPU_WEIGHTS").is_ok_and(|s| s == "quantized");
    let rel = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        let norm =
            |v: &mut dyn Iterator<Item = f32>| v.map(|x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        norm(&mut a.iter().zip(b).map(|(x, y)| x - y)) / norm(&mut a.iter().copied())
    };
    let cpu = |exact: bool| {
        let dev = DevOptions {
            cpu_exact: exact,
            ..Default::default()
        };
        let opts = DeviceOptions {
            threads: 2,
            dev,
            ..Default::default()
        };
        Device::open_with(DeviceKind::Cpu, &opts).unwrap()
    };
    for ty in [FileType::Q8_0, FileType::Q4_0, FileType::Q4_1] {
        for arch in ["llama", "qwen2", "phi3"] {
            let f = kiln_formats::gguf::GgufFile::open(fixture(arch).join("model.gguf")).unwrap();
            let (w, _) = quantize_file(&f, ty, |_, _, _| {}).unwrap();
            let out = std::env::temp_dir().join(format!(
                "kiln-stepped-{arch}-{ty:?}-{}.gguf",
                std::process::id()
            ));
            w.write_to(&out).unwrap();
            let m = load_test(&out, 2, &LoadOptions::default()).unwrap();
            let p = &reference(arch).prompts;
            let stepped = (m.stepped)(p);
            let whole = (m.logits)(p);
            let own = rel(&whole, &stepped);
            if in_place {
                let load = |exact| load_on(cpu(exact), &out, &LoadOptions::default()).unwrap();
                let exact = (load(true).logits)(p);
                let (gpu, cpu) = (
                    rel(&exact, &stepped),
                    rel(&exact, &(load(false).stepped)(p)),
                );
                eprintln!(
                    "{arch} {ty:?}: one token a pass from exact {gpu:.2e}, the CPU's {cpu:.2e} (from the prompt pass {own:.2e})"
                );
                assert!(
                    gpu <= 1.5 * cpu + 2e-3,
                    "{arch} {ty:?}: one-token passes {gpu:.2e} from exact, the CPU's {cpu:.2e}"
                );
            } else {
                eprintln!(
                    "{arch} {ty:?}: one token a pass against the prompt pass, relative {own:.2e}"
                );
                assert!(own < 5e-3, "{arch} {ty:?}: stepped logits off by {own:.2e}");
            }
            std::fs::remove_file(&out).unwrap();
        }
    }
}

fn load_err(path: &Path, opts: &LoadOptions) -> String {
    match load_test(path, 1, opts) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// A scratch copy of a fixture folder to break.
fn scratch(arch: &str, tag: &str) -> PathBuf {
    let src = fixture(arch).join("hf");
    let dst = std::env::temp_dir().join(format!("kiln-{arch}-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

#[test]
fn absurd_sizes_in_model_files_are_refused_by_name() {
    let d = scratch("qwen2", "vocab");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    let mut huge = cfg.clone();
    huge["vocab_size"] = serde_json::json!(1u64 << 50);
    std::fs::write(d.join("config.json"), huge.to_string()).unwrap();
    let e = load_err(&d, &LoadOptions::default());
    assert!(
        e.contains("config.json") && e.contains("vocab_size") && e.contains("out of range"),
        "{e}"
    );
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    // A tokenizer.json id near 2^31: refused before a table of that size is made.
    let mut tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("tokenizer.json")).unwrap()).unwrap();
    tj["added_tokens"][0]["id"] = serde_json::json!((1u64 << 31) - 3);
    std::fs::write(d.join("tokenizer.json"), tj.to_string()).unwrap();
    let e = load_err(&d, &LoadOptions::default());
    assert!(
        e.contains("tokenizer.json") && e.contains("added_tokens holds id 2147483645"),
        "{e}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn folder_errors_name_the_problem() {
    let d = scratch("llama", "missing");
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    let e = load_err(&d, &LoadOptions::default());
    assert!(e.contains("no tokenizer.json"), "{e}");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = load_err(&d, &LoadOptions::default());
    assert!(
        e.contains("model.safetensors") && e.contains("found"),
        "{e}"
    );
    std::fs::remove_dir_all(&d).unwrap();

    let d = scratch("llama", "arch");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("LlamaForCausalLM", "GPT2LMHeadModel"),
    )
    .unwrap();
    let e = load_err(&d, &LoadOptions::default());
    assert!(
        e.contains("architecture `GPT2LMHeadModel` is not supported"),
        "{e}"
    );
    std::fs::remove_dir_all(&d).unwrap();

    let d = scratch("phi3", "longrope");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    cfg["rope_scaling"] =
        serde_json::json!({"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]});
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let e = load_err(&d, &LoadOptions::default());
    assert!(
        e.contains("RoPE scaling `longrope` is not implemented"),
        "{e}"
    );
    std::fs::remove_dir_all(&d).unwrap();

    let d = scratch("qwen2", "shard");
    std::fs::remove_file(d.join("model-00003-of-00005.safetensors")).unwrap();
    let e = load_err(&d, &LoadOptions::default());
    assert!(e.contains("model-00003-of-00005.safetensors"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();

    let e = load_err(&std::env::temp_dir(), &LoadOptions::default());
    assert!(e.contains("no config.json"), "{e}");

    // A template that does not compile names the file and the field it came from.
    let d = scratch("llama", "template");
    let path = d.join("tokenizer_config.json");
    let mut tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tc["chat_template"] = serde_json::json!("{% for %}");
    std::fs::write(&path, tc.to_string()).unwrap();
    let e = load_err(&d, &LoadOptions::default());
    assert!(
        e.contains("tokenizer_config.json: chat_template") && e.contains("cannot compile"),
        "{e}"
    );
    // `chat_template.jinja` comes first when it exists; an endless loop there fails when a
    // conversation is rendered, and the error says where the template was read.
    std::fs::write(
        d.join("chat_template.jinja"),
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    )
    .unwrap();
    let m = load_test(&d, 1, &LoadOptions::default()).unwrap();
    let msgs = [kiln_tokenizer::chat::Message::new("user", "hi")];
    let e = m.template.render(&msgs, true).unwrap_err().to_string();
    assert!(
        e.contains("chat_template.jinja") && e.contains("rendering failed"),
        "{e}"
    );
    // One that doubles a string without end is stopped at its memory budget, and disabled.
    std::fs::write(
        d.join("chat_template.jinja"),
        "{% set ns = namespace(s='ab') %}{% for m in messages %}{% for i in range(60) %}\
         {% set ns.s = ns.s ~ ns.s %}{% endfor %}{% endfor %}{{ ns.s }}",
    )
    .unwrap();
    let m = load_test(&d, 1, &LoadOptions::default()).unwrap();
    let e = m.template.render(&msgs, true).unwrap_err().to_string();
    assert!(
        e.contains("chat_template.jinja") && e.contains("stopped") && e.contains("MiB"),
        "{e}"
    );
    let e = m.template.render(&msgs, true).unwrap_err().to_string();
    assert!(e.contains("disabled"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn adapter_errors_name_the_problem() {
    // An adapter trained on another architecture does not fit.
    let opts = LoadOptions {
        lora: Some(fixture("phi3").join("lora")),
        quantize: None,
    };
    let e = load_err(&fixture("llama").join("hf"), &opts);
    assert!(e.contains("adapt") && e.contains("lora"), "{e}");
    let opts = LoadOptions {
        lora: Some(fixture("llama").join("hf")),
        quantize: None,
    };
    let e = load_err(&fixture("llama").join("hf"), &opts);
    assert!(e.contains("no adapter_config.json"), "{e}");
}
