//! Largest logit difference per position between the CPU backend's 8-bit-activation
//! products and exact f32 ones, on a prompt: a quick check that kernel changes stay
//! within quantization noise.
//!
//! `cargo run --release -p kiln-cpu --example logit_diff -- [MODEL.gguf] ["prompt"]`

use kiln_cpu::CpuBackend;
use kiln_model::loader::load_gguf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = match args.next() {
        Some(p) => std::path::PathBuf::from(p),
        None => kiln_model::fetch::ensure_default_model(true)?,
    };
    let prompt = args
        .next()
        .unwrap_or_else(|| "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n".into());
    let mut logits = Vec::new();
    for exact in [false, true] {
        let m = load_gguf(&path, CpuBackend::new(0).with_exact(exact))?;
        let ids = m.tokenizer.encode(&prompt, true, false);
        let mut kv = m.model.new_kv(ids.len())?;
        let mut st = m.model.new_state(ids.len(), ids.len())?;
        m.model.forward(&mut st, &mut kv, &ids, 0, true)?;
        logits.push((st.logits.clone(), m.model.cfg.vocab_size));
    }
    let vocab = logits[0].1;
    for (p, (a, b)) in logits[0]
        .0
        .chunks(vocab)
        .zip(logits[1].0.chunks(vocab))
        .enumerate()
    {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let am = kiln_model::sample::argmax(a);
        let bm = kiln_model::sample::argmax(b);
        println!("pos {p:3}: max |dlogit| {d:.3}  top-1 {am} vs {bm}");
    }
    Ok(())
}
