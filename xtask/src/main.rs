//! `cargo xtask`: build automation for hull.
//!
//! Every task a developer or CI runs goes through here, so that the README's
//! two commands (`cargo xtask node` and `cargo xtask test`) install what they
//! need and do the same thing on every machine.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod deps;
mod test;
mod util;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "hull build automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the Debian packages hull's build, tests and dev node need.
    Deps,
    /// Run the whole test suite: lints, unit and integration tests, VM tests.
    Test(test::TestArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Deps => deps::install(),
        Command::Test(args) => test::run_all(args),
    }
}
