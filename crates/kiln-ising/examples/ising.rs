//! Stand-alone `kiln ising` until the `kiln` binary wires it in:
//! `cargo run --release -p kiln-ising --example ising -- bench --json`.

use clap::Parser;
use kiln_ising::cli::{run, IsingArgs};

/// The `kiln ising` command line on its own.
#[derive(Parser)]
#[command(name = "kiln-ising", about = "Ising empathy engine")]
struct Cli {
    #[command(flatten)]
    ising: IsingArgs,
}

fn main() -> anyhow::Result<()> {
    run(Cli::parse().ising)
}
