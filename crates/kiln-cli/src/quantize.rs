//! `kiln quantize IN.gguf OUT.gguf --type f16|q8_0|q4_0|q4_1|q4_k`: a GGUF model with its
//! matrices in another type, metadata (tokenizer, chat template) copied.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_model::quantize::{quantize_file, FileType};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The GGUF model to read.
    pub input: PathBuf,
    /// The GGUF file to write (written beside it first, then renamed into place).
    pub output: PathBuf,
    /// f16 (every matrix, quantized ones decoded), q8_0 or q4_k (float matrices, as
    /// `--quantize` does on load; q4_k falls back to q8_0 where rows do not fill 256 values),
    /// q4_0 or q4_1 (float matrices; the token embedding and output head as q8_0).
    #[arg(long = "type", value_parser = FileType::from_name)]
    pub ty: FileType,
}

pub fn quantize(a: QuantizeArgs) -> anyhow::Result<()> {
    if a.input.is_dir() {
        bail!(
            "{} is a folder: kiln quantize reads GGUF files (a Hugging Face folder runs as it is, \
             and `--quantize q8_0|q4_k` quantizes it on load)",
            a.input.display()
        );
    }
    let same = match (a.input.canonicalize(), a.output.canonicalize()) {
        (Ok(i), Ok(o)) => i == o,
        _ => false,
    };
    if same {
        bail!(
            "{}: the output would overwrite the input",
            a.output.display()
        );
    }
    if a.output.is_dir() {
        bail!(
            "{} is a folder: name the GGUF file to write",
            a.output.display()
        );
    }
    let t0 = Instant::now();
    let file = kiln_formats::gguf::GgufFile::open(&a.input)?;
    let bar = ProgressBar::new(file.tensors().len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tensors {msg}")
            .expect("a valid template"),
    );
    let (writer, r) = quantize_file(&file, a.ty, |done, _, name| {
        bar.set_position(done as u64);
        bar.set_message(name.to_owned());
    })?;
    bar.finish_and_clear();
    let mut part = a.output.clone().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let written = writer
        .write_to(&part)
        .with_context(|| format!("writing {}", part.display()))
        .and_then(|()| {
            std::fs::rename(&part, &a.output)
                .with_context(|| format!("renaming {} to {}", part.display(), a.output.display()))
        });
    if written.is_err() {
        // Nothing half-written is left behind.
        let _ = std::fs::remove_file(&part);
    }
    written?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{} -> {} ({:?}): {} tensors, {} converted, {} as q8_0 (for q4_k: rows not a multiple of 256; for q4_0 and q4_1: the embedding and output head), {} kept; \
         tensor data {:.1} MiB -> {:.1} MiB; {:.1} s",
        a.input.display(),
        a.output.display(),
        a.ty,
        r.tensors,
        r.converted,
        r.fallback_q8_0,
        r.kept,
        mib(r.bytes_before),
        mib(r.bytes_after),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
