//! `kiln`: run small language models fast, from one binary.

mod bench;
mod bench_engine;
mod chat;
mod common;
mod irp;
mod ising;
mod memory;
mod profile;
mod quantize;
mod run;
mod serve;

use clap::{Parser, Subcommand};

/// kiln: run small language models fast on CPU and GPU.
#[derive(Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt, streaming the answer to the terminal.
    Run(run::RunArgs),
    /// Talk with the model, turn by turn.
    Chat(chat::ChatArgs),
    /// Measure the engine under concurrency: aggregate throughput, time to first token.
    BenchEngine(bench_engine::BenchEngineArgs),
    /// Serve the model over an OpenAI-compatible HTTP API, with a chat page at `/`.
    Serve(serve::ServeArgs),
    /// Measure load time, prefill and decode speed and peak memory.
    Bench(bench::BenchArgs),
    /// Fetch the default model (SmolLM2-135M-Instruct, Q4_1) if it is missing.
    Fetch,
    /// The Ising empathy engine: annealing, emotion, empathy, social attention, swarms.
    Ising(ising::IsingArgs),
    /// Answer one question by iterative refinement (IRP), score it (SNARC) and store it.
    Irp(irp::IrpArgs),
    /// The store of refined exchanges: stats, list, search, export.
    Memory(memory::MemoryArgs),
    /// Compare refinement settings over a file of questions, or time batched candidates.
    Profile(profile::ProfileCmdArgs),
    /// Write a GGUF model with its matrices in another type (f16, q8_0, q4_0, q4_1, q4_k),
    /// from a GGUF file or a Hugging Face folder.
    Quantize(quantize::QuantizeArgs),
    /// Write a Hugging Face model folder as a GGUF file (llama.cpp reads it too).
    Convert(quantize::ConvertArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::chat(a),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => serve::serve(a),
        Command::BenchEngine(a) => bench_engine::bench_engine(a),
        Command::Fetch => kiln_model::fetch::ensure_default_model(true)
            .map(|p| println!("{}", p.display()))
            .map_err(anyhow::Error::from),
        Command::Ising(a) => ising::run(a),
        Command::Irp(a) => irp::irp(a),
        Command::Memory(a) => memory::memory(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Convert(a) => quantize::convert(a),
        Command::Profile(a) => profile::profile(a),
    };
    if let Err(e) = result {
        eprintln!("kiln: error: {e:#}");
        std::process::exit(1);
    }
}
