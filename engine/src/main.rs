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
        | Command::Start(_) => unreachable!("handled above"),
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
        "compute device"
    );
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
    let monitor_ms = std::env::var("WUWEI_MONITOR_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let kv = wuwei::kv::KvConfig::from_config(&cfg);
    let ssd = kv.ssd.clone();
    let registry = wuwei::registry::Registry::new(wuwei::registry::RegistryConfig {
        model_dirs: cfg.models_dirs.clone(),
        default_model: cfg.default_model.clone(),
        aliases: cfg.aliases.clone(),
        scheduler: wuwei::scheduler::SchedulerConfig {
            max_running: cfg.max_running,
            prefill_chunk: cfg.prefill_chunk,
            kv,
            // Set per model by the registry (its reserved KV).
            kv_budget_tokens: None,
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
        monitor_interval: std::time::Duration::from_millis(monitor_ms),
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

/// `wuwei ls|ps|load|…`: clients of the running daemon's admin API.
mod client {
    use anyhow::{bail, Context};
    use serde_json::Value;

    use super::{ClientArgs, ModelArgs};
    use wuwei::memory::format_bytes;

    fn target(args: &ClientArgs) -> anyhow::Result<(String, Option<String>)> {
        let cfg = wuwei::config::Config::load(&wuwei::config::ServeArgs::default()).ok();
        let url = match &args.url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let port = cfg.as_ref().map_or(wuwei::config::DEFAULT_PORT, |c| c.port);
                format!("http://127.0.0.1:{port}")
            }
        };
        let key = args.api_key.clone().or_else(|| cfg.and_then(|c| c.api_key));
        Ok((url, key))
    }

    fn call(
        args: &ClientArgs,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (url, key) = target(args)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let full = format!("{url}/admin/api{path}");
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut response = if method == "GET" {
            let mut req = agent.get(&full);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        } else {
            let mut req = agent.post(&full);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.send_json(body.unwrap_or(Value::Object(Default::default())))
        }
        .with_context(|| {
            format!("cannot reach the Wuwei daemon at {url} (is `wuwei serve` running?)")
        })?;
        let status = response.status();
        let value: Value = response
            .body_mut()
            .read_json()
            .with_context(|| format!("{full}: the answer is not JSON"))?;
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .unwrap_or("request failed");
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(value)
    }

    pub fn ls(args: &ClientArgs) -> anyhow::Result<()> {
        let v = call(args, "GET", "/models", None)?;
        println!(
            "{:<44} {:<11} {:>10} {:>10}  FLAGS",
            "ID", "STATE", "SIZE", "MEMORY"
        );
        for m in v["models"].as_array().into_iter().flatten() {
            let mut flags = Vec::new();
            if m["default"] == true {
                flags.push("default".to_string());
            }
            if m["pinned"] == true {
                flags.push("pinned".to_string());
            }
            let mut state = m["state"].as_str().unwrap_or("?").to_string();
            if let Some(p) = m["progress"].as_f64() {
                state = format!("{state} {:.0}%", p * 100.0);
            }
            if let Some(reason) = m["reason"].as_str() {
                flags.push(reason.to_string());
            }
            println!(
                "{:<44} {:<11} {:>10} {:>10}  {}",
                m["id"].as_str().unwrap_or("?"),
                state,
                format_bytes(m["size_bytes"].as_u64().unwrap_or(0)),
                format_bytes(m["estimated_memory_bytes"].as_u64().unwrap_or(0)),
                flags.join(", ")
            );
        }
        Ok(())
    }

    pub fn ps(args: &ClientArgs) -> anyhow::Result<()> {
        let v = call(args, "GET", "/status", None)?;
        let mem = &v["memory"];
        let b = |x: &Value| format_bytes(x.as_u64().unwrap_or(0));
        println!(
            "{} · budget {} · counted {} · MLX active {} · system available {} of {}",
            v["state"].as_str().unwrap_or("?"),
            b(&mem["budget_bytes"]),
            b(&mem["counted_bytes"]),
            b(&mem["mlx"]["active_bytes"]),
            b(&mem["system"]["available_bytes"]),
            b(&mem["system"]["total_bytes"]),
        );
        println!(
            "{:<44} {:>10} {:>10} {:>8} {:>8}  FLAGS",
            "MODEL", "MEMORY", "KV", "RUNNING", "WAITING"
        );
        for m in v["loaded"].as_array().into_iter().flatten() {
            let mut flags = Vec::new();
            if m["pinned"] == true {
                flags.push("pinned");
            }
            if m["unloading"] == true {
                flags.push("unloading");
            }
            println!(
                "{:<44} {:>10} {:>10} {:>8} {:>8}  {}",
                m["id"].as_str().unwrap_or("?"),
                b(&m["memory_bytes"]),
                b(&m["kv_bytes"]),
                m["running"].as_u64().unwrap_or(0),
                m["waiting"].as_u64().unwrap_or(0),
                flags.join(", ")
            );
        }
        Ok(())
    }

    pub fn model_action(args: &ModelArgs, action: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({"model": args.model});
        call(
            &args.client,
            "POST",
            &format!("/models/{action}"),
            Some(body),
        )?;
        println!("{action}: {}", args.model);
        Ok(())
    }

    pub fn serving(args: &ClientArgs, on: bool) -> anyhow::Result<()> {
        let path = if on {
            "/serving/start"
        } else {
            "/serving/stop"
        };
        call(args, "POST", path, None)?;
        println!("{}", if on { "serving" } else { "stopped" });
        Ok(())
    }
}
