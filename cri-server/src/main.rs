//! hulld: serves the CRI v1 RuntimeService and ImageService on a unix socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cri_server::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_CONFIG_TOML, LogFormat};
use cri_server::error::error_chain;

#[derive(Parser)]
#[command(
    name = "hulld",
    version,
    about = "hull: a CRI runtime that runs every pod in its own microVM"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CRI (the default when no command is given).
    Serve,
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the default configuration file, every key documented.
    Default,
    /// Check a configuration file and print it with every default filled in.
    Check,
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let (path, named) = match &cli.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    Ok(Config::load(&path, named)?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Config {
            command: ConfigCommand::Default,
        }) => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(())
        }
        Some(Command::Config {
            command: ConfigCommand::Check,
        }) => {
            let config = load_config(&cli)?;
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
        Some(Command::Serve) | None => {
            let config = load_config(&cli)?;
            init_logging(&config);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(cri_server::daemon::serve(config))?;
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let chain: &(dyn std::error::Error + 'static) = err.as_ref();
            eprintln!("hulld: {}", error_chain(chain));
            ExitCode::FAILURE
        }
    }
}
