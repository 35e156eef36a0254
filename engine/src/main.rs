//! The `wuwei` command: serve models, generate from the command line, convert GGUF files.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// jemalloc, unprefixed, so that it replaces `malloc` for libmlx and OpenBLAS as well as for
/// Rust: with glibc's allocator, a burst of concurrent sequences left the heap fragmented and
/// every later decode step paid for it in `malloc` and MLX's graph bookkeeping.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// List the models the running daemon knows (state, size, memory).
    Ls(ClientArgs),
    /// Show the running daemon's loaded models and memory.
    Ps(ClientArgs),
    /// Load a model now.
    Load(ModelArgs),
    /// Unload a model.
    Unload(ModelArgs),
    /// Pin a model: load it and never evict it.
    Pin(ModelArgs),
    /// Unpin a model.
    Unpin(ModelArgs),
    /// Stop serving: new requests get 503 (loaded models stay loaded).
    Stop(ClientArgs),
    /// Start serving again.
    Start(ClientArgs),
    /// Run Claude Code or Codex on the local models (starting the daemon if none answers).
    Launch(wuwei::launch::LaunchArgs),
}

/// How the admin commands reach the daemon.
#[derive(clap::Args)]
struct ClientArgs {
    /// The daemon's URL [default: http://127.0.0.1:<port from the config>]
    #[arg(long, env = "WUWEI_URL")]
    url: Option<String>,
    /// The daemon's API key [default: the config's]
    #[arg(long, env = "WUWEI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// The model id (as `wuwei ls` shows it).
    model: String,
    #[command(flatten)]
    client: ClientArgs,
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
    let admin_result = match cli.command {
        Command::Serve(args) => return serve(args),
        Command::Ls(c) => client::ls(&c),
        Command::Ps(c) => client::ps(&c),
        Command::Load(m) => client::model_action(&m, "load"),
        Command::Unload(m) => client::model_action(&m, "unload"),
        Command::Pin(m) => client::model_action(&m, "pin"),
        Command::Unpin(m) => client::model_action(&m, "unpin"),
        Command::Stop(c) => client::serving(&c, false),
        Command::Start(c) => client::serving(&c, true),
        Command::Launch(args) => wuwei::launch::run(args),
        other => {
            run_local(other)?;
            return Ok(());
        }
    };
    // The admin commands report a failure as one line, not a backtrace.
    if let Err(e) = admin_result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

fn run_local(command: Command) -> anyhow::Result<()> {
    init_logs(&std::env::var("WUWEI_LOG").unwrap_or_else(|_| "info".into()));
    match command {
        Command::Serve(_)
        | Command::Ls(_)
        | Command::Ps(_)
        | Command::Load(_)
        | Command::Unload(_)
        | Command::Pin(_)
        | Command::Unpin(_)
        | Command::Stop(_)
        | Command::Start(_)
        | Command::Launch(_) => unreachable!("handled above"),
        Command::Generate(args) => wuwei::generate::run(args),
        Command::Convert { gguf, out_dir } => {
            wuwei::gguf::convert_gguf(&gguf, &out_dir)
                .with_context(|| format!("converting {}", gguf.display()))?;
            eprintln!("wrote {}", out_dir.display());
            Ok(())
        }
    }
}

/// One line that says what the models will run on and in which precision.
fn log_device(weights: wuwei::model::WeightsMode) {
    let device = wuwei::device::info();
    tracing::info!(
        backend = ?device.backend,
        device = %device.name,
        device_memory = device.memory_bytes.map(wuwei::memory::format_bytes),
        activations = ?wuwei::device::activations(),
        weights = ?weights,
        cpu_levers = wuwei::device::cpu_levers(),
        openblas = wuwei::device::openblas_core(),
        "compute device"
    );
    if wuwei::device::openblas_misdetected() {
        tracing::warn!(
            "OpenBLAS did not recognise this CPU and runs its generic SSE3 kernels; start with \
             OPENBLAS_CORETYPE=SkylakeX (AVX-512) or Haswell (AVX2) for faster f32 matmuls"
        );
    }
}

fn serve(args: wuwei::config::ServeArgs) -> anyhow::Result<()> {
    let mut cfg = wuwei::config::Config::load(&args)?;
    init_logs(&cfg.log_level);
    // Clients that name models we don't have (Claude Code's `claude-…`) get the default model.
    cfg.aliases
        .entry("claude-*".into())
        .or_insert_with(|| "default".into());
    wuwei::device::set_activations(cfg.activations);
    log_device(cfg.weights);
    let kv = cfg.kv_config();
    let ssd = kv.ssd.clone();
    let registry = wuwei::registry::Registry::new(wuwei::registry::RegistryConfig {
        model_dirs: cfg.models_dirs.clone(),
        default_model: cfg.default_model.clone(),
        aliases: cfg.aliases.clone(),
        scheduler: wuwei::scheduler::SchedulerConfig {
            max_running: cfg.max_running,
            prefill_chunk: cfg.prefill_chunk(),
            kv,
            // Set per model by the registry (its reserved KV and what a position costs).
            kv_budget_bytes: None,
            kv_cost: Default::default(),
            kv_quant: cfg.kv_quant(),
        },
        max_queue: cfg.max_queue,
        weights_mode: cfg.weights,
        memory_budget: cfg.memory_budget,
        memory_reserve: cfg.memory_reserve,
        pressure_threshold: cfg.memory_pressure_threshold,
        pinned: cfg.pinned.clone(),
        idle_ttl_secs: cfg.idle_ttl_secs,
        kv_reserve_tokens: cfg.kv_reserve_tokens,
        per_model: cfg.per_model.clone(),
        monitor_interval: std::time::Duration::from_millis(cfg.monitor_interval_ms),
    });
    let ids = registry.model_ids();
    tracing::info!(dirs = ?cfg.models_dirs, models = ?ids, budget = %wuwei::memory::format_bytes(registry.budget()), "models found");
    if cfg.watch_models {
        wuwei::watcher::spawn(registry.clone(), wuwei::watcher::WatchTiming::default())?;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let served = runtime.block_on(async move {
        // Pinned models and the default one load right away, so /health turns ok when they
        // are ready.
        let r = registry.clone();
        tokio::spawn(async move { r.load_at_start().await });
        tokio::spawn(registry.clone().run_monitor());
        tokio::spawn(wuwei::admin::publish_cache_stats(registry.clone()));
        // `POST /admin/api/shutdown` ends the daemon the way SIGTERM does.
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let admin = wuwei::admin::router(registry.clone(), &cfg, stop.clone());
        let asked = async move { stop.notified().await };
        wuwei::server::serve_with_admin(cfg, registry, Some(admin), asked).await
    });
    // The server has drained its streams. Don't let blocking work still in flight (a model
    // load, file scans) hold the exit: engine threads end with the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    // KV blocks still queued for the SSD tier get a moment to reach the disk.
    if let Some(ssd) = &ssd {
        ssd.flush(std::time::Duration::from_secs(2));
    }
    let code = match &served {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    };
    // Leave without running C++ static destructors: libmlx's global state (allocator, stream
    // threads) would be torn down while an engine thread may still be inside MLX (a load that
    // just finished, a step), which corrupted the heap at exit (seen: "malloc(): invalid size"
    // and SIGABRT after SIGTERM). Everything that must persist is already on disk.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit only ends the process; no Rust state is used afterwards.
    unsafe { libc::_exit(code) }
}

/// `wuwei ls|ps|load|…`: clients of the running daemon's admin API, through the same typed
/// client the menu-bar app uses.
mod client {
    use wuwei_api::Client;

    use super::{ClientArgs, ModelArgs};
    use wuwei::memory::format_bytes;

    fn connect(args: &ClientArgs) -> Client {
        let cfg = wuwei::config::Config::load(&wuwei::config::ServeArgs::default()).ok();
        let url = match &args.url {
            Some(u) => u.clone(),
            None => {
                let port = cfg.as_ref().map_or(wuwei::config::DEFAULT_PORT, |c| c.port);
                format!("http://127.0.0.1:{port}")
            }
        };
        let key = args.api_key.clone().or_else(|| cfg.and_then(|c| c.api_key));
        Client::new(&url, key)
    }

    /// A failure as one line; an unreachable daemon says what to start.
    fn explain(client: &Client, e: wuwei_api::Error) -> anyhow::Error {
        if e.is_unreachable() {
            anyhow::Error::new(e).context(format!(
                "cannot reach the Wuwei daemon at {} (is `wuwei serve` running?)",
                client.base_url()
            ))
        } else {
            e.into()
        }
    }

    pub fn ls(args: &ClientArgs) -> anyhow::Result<()> {
        let client = connect(args);
        let models = client.models().map_err(|e| explain(&client, e))?;
        println!(
            "{:<44} {:<11} {:>10} {:>10}  FLAGS",
            "ID", "STATE", "SIZE", "MEMORY"
        );
        for m in models {
            let mut flags = Vec::new();
            if m.default {
                flags.push("default".to_string());
            }
            if m.pinned {
                flags.push("pinned".to_string());
            }
            let mut state = m.state.as_str().to_string();
            if let Some(p) = m.progress {
                state = format!("{state} {:.0}%", p * 100.0);
            }
            if let Some(reason) = m.reason {
                flags.push(reason);
            }
            println!(
                "{:<44} {:<11} {:>10} {:>10}  {}",
                m.id,
                state,
                format_bytes(m.size_bytes),
                format_bytes(m.estimated_memory_bytes),
                flags.join(", ")
            );
        }
        Ok(())
    }

    pub fn ps(args: &ClientArgs) -> anyhow::Result<()> {
        let client = connect(args);
        let s = client.status().map_err(|e| explain(&client, e))?;
        let mem = &s.memory;
        println!(
            "{} · budget {} · counted {} · MLX active {} · system available {} of {}",
            s.state,
            format_bytes(mem.budget_bytes),
            format_bytes(mem.counted_bytes),
            format_bytes(mem.mlx.active_bytes),
            format_bytes(mem.system.available_bytes),
            format_bytes(mem.system.total_bytes),
        );
        println!(
            "{:<44} {:>10} {:>10} {:>8} {:>8}  FLAGS",
            "MODEL", "MEMORY", "KV", "RUNNING", "WAITING"
        );
        for m in &s.loaded {
            let mut flags = Vec::new();
            if m.pinned {
                flags.push("pinned");
            }
            if m.unloading {
                flags.push("unloading");
            }
            println!(
                "{:<44} {:>10} {:>10} {:>8} {:>8}  {}",
                m.id,
                format_bytes(m.memory_bytes),
                format_bytes(m.kv_bytes),
                m.running,
                m.waiting,
                flags.join(", ")
            );
        }
        Ok(())
    }

    pub fn model_action(args: &ModelArgs, action: &str) -> anyhow::Result<()> {
        let client = connect(&args.client);
        let model = args.model.as_str();
        let done = match action {
            "load" => client.load(model),
            "unload" => client.unload(model),
            "pin" => client.pin(model),
            "unpin" => client.unpin(model),
            other => anyhow::bail!("unknown action {other}"),
        };
        done.map_err(|e| explain(&client, e))?;
        println!("{action}: {model}");
        Ok(())
    }

    pub fn serving(args: &ClientArgs, on: bool) -> anyhow::Result<()> {
        let client = connect(args);
        client.set_serving(on).map_err(|e| explain(&client, e))?;
        println!("{}", if on { "serving" } else { "stopped" });
        Ok(())
    }
}
