//! The `wuwei` command: serve models, generate from the command line, convert GGUF files.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wuwei", version, about = "Local LLM server on MLX with OpenAI and Anthropic APIs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for one prompt and print prompt/decode speed.
    Generate(wuwei::generate::GenerateArgs),
    /// Convert a GGUF file into an MLX-format model folder (loadable by mlx-lm too).
    Convert {
        /// The .gguf file.
        gguf: PathBuf,
        /// The folder to create.
        out_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WUWEI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Generate(args) => wuwei::generate::run(args),
        Command::Convert { gguf, out_dir } => {
            wuwei::gguf::convert_gguf(&gguf, &out_dir)
                .with_context(|| format!("converting {}", gguf.display()))?;
            eprintln!("wrote {}", out_dir.display());
            Ok(())
        }
    }
}
