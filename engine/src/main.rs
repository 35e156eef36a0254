//! The `wuwei` command: serve models, generate from the command line, convert GGUF files.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wuwei",
    version,
    about = "Local LLM server on MLX with OpenAI and Anthropic APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models in the models folders over the OpenAI and Anthropic APIs.
    Serve(wuwei::config::ServeArgs),
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

fn init_logs(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Serve(args) = cli.command {
        return serve(args);
    }
    init_logs(&std::env::var("WUWEI_LOG").unwrap_or_else(|_| "info".into()));
    match cli.command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Generate(args) => wuwei::generate::run(args),
        Command::Convert { gguf, out_dir } => {
            wuwei::gguf::convert_gguf(&gguf, &out_dir)
                .with_context(|| format!("converting {}", gguf.display()))?;
            eprintln!("wrote {}", out_dir.display());
            Ok(())
        }
    }
}

fn serve(args: wuwei::config::ServeArgs) -> anyhow::Result<()> {
    let mut cfg = wuwei::config::Config::load(&args)?;
    init_logs(&cfg.log_level);
    // Clients that name models we don't have (Claude Code's `claude-…`) get the default model.
    cfg.aliases
        .entry("claude-*".into())
        .or_insert_with(|| "default".into());
    let registry = wuwei::registry::Registry::new(wuwei::registry::RegistryConfig {
        model_dirs: cfg.models_dirs.clone(),
        default_model: cfg.default_model.clone(),
        aliases: cfg.aliases.clone(),
        scheduler: wuwei::scheduler::SchedulerConfig {
            max_running: cfg.max_running,
            prefill_chunk: cfg.prefill_chunk,
            kv: wuwei::kv::KvConfig::from_config(&cfg),
        },
        max_queue: cfg.max_queue,
        weights_mode: cfg.weights,
    });
    let ids = registry.model_ids();
    tracing::info!(dirs = ?cfg.models_dirs, models = ?ids, "models found");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        // Load the default model right away, so that /health turns ok when it is ready.
        if let Some(default) = registry.default_model() {
            let r = registry.clone();
            tokio::spawn(async move {
                if let Err(e) = r.ensure_loaded(&default).await {
                    tracing::error!(model = %default, error = %e, "loading the default model failed");
                }
            });
        }
        wuwei::server::serve(cfg, registry).await
    })
}
