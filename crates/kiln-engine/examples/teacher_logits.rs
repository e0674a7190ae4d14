//! Teacher-forced logits of every position of a token sequence, written as raw little-endian
//! f32 (`ids.len() * vocab` values): for comparing a backend with a reference (PyTorch).
//!
//! `cargo run --release -p kiln-engine [--features cuda] --example teacher_logits -- MODEL cpu|cuda IDS OUT`
//! where IDS is a comma-separated list of token ids.

use std::io::Write;

use kiln_engine::device::{Device, DeviceKind};
use kiln_model::loader::{load, LoadOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, device, ids, out] = &args[..] else {
        return Err("usage: teacher_logits MODEL cpu|cuda IDS OUT".into());
    };
    let kind = DeviceKind::parse(device)?;
    let ids: Vec<u32> = ids
        .split(',')
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<_, _>>()?;
    let device = Device::open(kind, 0)?;
    kiln_engine::with_backend!(device, b => {
        let m = load(std::path::Path::new(model), b, &LoadOptions::default())?;
        let mut kv = m.model.new_kv(ids.len())?;
        let mut st = m.model.new_state(ids.len(), ids.len())?;
        m.model.forward(&mut st, &mut kv, &ids, 0, true)?;
        let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
        for v in &st.logits {
            f.write_all(&v.to_le_bytes())?;
        }
        f.flush()?;
        eprintln!(
            "{} positions x {} logits from {} on {}",
            ids.len(),
            m.model.cfg.vocab_size,
            m.name,
            kiln_model::Backend::describe(&m.model.backend)
        );
    });
    Ok(())
}
