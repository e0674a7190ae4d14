//! `kiln quantize IN OUT.gguf --type f16|q8_0|q4_0|q4_1|q4_k`: a GGUF model with its matrices
//! in another type, metadata (tokenizer, chat template) copied; IN a GGUF file or a Hugging
//! Face folder (converted first, as `kiln convert` does).
//!
//! `kiln convert FOLDER OUT.gguf`: a Hugging Face folder as a GGUF file that llama.cpp reads,
//! matrices in the folder's float type.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_formats::gguf::{GgufFile, GgufWriter};
use kiln_model::convert::{folder_to_gguf, ConvertReport};
use kiln_model::quantize::{quantize_file, FileType};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The model to read: a GGUF file, or a Hugging Face folder (config.json,
    /// *.safetensors, tokenizer.json).
    pub input: PathBuf,
    /// The GGUF file to write (written beside it first, then renamed into place).
    pub output: PathBuf,
    /// f16 (every matrix, quantized ones decoded), q8_0 or q4_k (float matrices, as
    /// `--quantize` does on load; q4_k falls back to q8_0 where rows do not fill 256 values),
    /// q4_0 or q4_1 (float matrices; the token embedding and output head as q8_0).
    #[arg(long = "type", value_parser = FileType::from_name)]
    pub ty: FileType,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The Hugging Face model folder (config.json, *.safetensors, tokenizer.json) of a
    /// Llama, Qwen2 or Phi-3 model.
    pub input: PathBuf,
    /// The GGUF file to write (written beside it first, then renamed into place).
    pub output: PathBuf,
}

fn bar(len: usize, what: &str) -> ProgressBar {
    ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} tensors {what} {{msg}}"
        ))
        .expect("a valid template"),
    )
}

/// The output path checked: not the input, not a folder.
fn check_output(input: &Path, output: &Path) -> anyhow::Result<()> {
    let same = match (input.canonicalize(), output.canonicalize()) {
        (Ok(i), Ok(o)) => i == o,
        _ => false,
    };
    if same {
        bail!("{}: the output would overwrite the input", output.display());
    }
    if output.is_dir() {
        bail!(
            "{} is a folder: name the GGUF file to write",
            output.display()
        );
    }
    Ok(())
}

/// Writes `writer` to `output` through a `.part` file beside it; nothing half-written is left.
fn write(writer: &GgufWriter, output: &Path) -> anyhow::Result<()> {
    let mut part = output.to_path_buf().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let written = writer
        .write_to(&part)
        .with_context(|| format!("writing {}", part.display()))
        .and_then(|()| {
            std::fs::rename(&part, output)
                .with_context(|| format!("renaming {} to {}", part.display(), output.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    written
}

/// The folder converted to GGUF in memory, with a progress bar.
fn convert_folder(dir: &Path) -> anyhow::Result<(GgufWriter, ConvertReport)> {
    let b = bar(0, "converted");
    let r = folder_to_gguf(dir, |done, total, name| {
        b.set_length(total as u64);
        b.set_position(done as u64);
        b.set_message(name.to_owned());
    })
    .with_context(|| format!("converting {}", dir.display()));
    b.finish_and_clear();
    r
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

pub fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    if !a.input.is_dir() {
        bail!(
            "{} is not a folder: kiln convert reads a Hugging Face model folder (kiln quantize rewrites GGUF files)",
            a.input.display()
        );
    }
    check_output(&a.input, &a.output)?;
    let t0 = Instant::now();
    let (writer, r) = convert_folder(&a.input)?;
    write(&writer, &a.output)?;
    println!(
        "{} -> {} ({}): {} tensors; tensor data {:.1} MiB -> {:.1} MiB; {:.1} s",
        a.input.display(),
        a.output.display(),
        r.arch,
        r.tensors,
        mib(r.bytes_in),
        mib(r.bytes_out),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn quantize(a: QuantizeArgs) -> anyhow::Result<()> {
    check_output(&a.input, &a.output)?;
    let t0 = Instant::now();
    let file = if a.input.is_dir() {
        // Converted in memory, then read as the GGUF file it would be.
        let (w, _) = convert_folder(&a.input)?;
        let name = a.input.join("(converted).gguf");
        GgufFile::from_bytes(name, w.to_bytes())
            .with_context(|| format!("reading back the conversion of {}", a.input.display()))?
    } else {
        GgufFile::open(&a.input)?
    };
    let b = bar(file.tensors().len(), "");
    let (writer, r) = quantize_file(&file, a.ty, |done, _, name| {
        b.set_position(done as u64);
        b.set_message(name.to_owned());
    })?;
    b.finish_and_clear();
    drop(file);
    write(&writer, &a.output)?;
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
