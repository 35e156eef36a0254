//! The daemon's settings: built-in defaults, overridden by a TOML file, then by `WUWEI_*`
//! environment variables, then by `wuwei serve` flags (each later source wins).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::value::StrDeserializer;
use serde::{Deserialize, Serialize};

use crate::kv::quant::KvQuant;
use crate::kv::{self, ssd, KvConfig};
use crate::memory::Amount;

/// The port the daemon listens on unless told otherwise (chosen to stay clear of the ports
/// other local servers use: 8000, 8080, 1234, 11434).
pub const DEFAULT_PORT: u16 = 8686;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value {value:?} for environment variable {var}: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
    #[error("invalid setting `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// Everything the daemon can be told. Every field has a default, so no file is needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Folders searched for models. Setting it (file, env or flag) replaces the default list.
    pub models_dirs: Vec<PathBuf>,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>` or `x-api-key: <key>`.
    pub api_key: Option<String>,
    /// Web origins (besides the daemon's own and loopback ones) whose pages may call the
    /// daemon from a browser, e.g. `https://chat.example.com`; `*` allows any. Requests from
    /// other origins get 403 (see server::browser_guard).
    pub allowed_origins: Vec<String>,
    /// Sequences decoded together per model.
    pub max_running: usize,
    /// Requests waiting for a slot before new ones are refused with 503.
    pub max_queue: usize,
    /// Prompt tokens read per scheduler step (unset: by device, see
    /// `device::default_prefill_chunk`).
    pub prefill_chunk: Option<usize>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// After SIGTERM/SIGINT, how long running streams may go on before they are cut.
    pub shutdown_grace_secs: u64,
    /// Model served when a request names none (or an alias points nowhere).
    pub default_model: Option<String>,
    /// Requested model name pattern (`*` matches any run of characters) → model id, e.g.
    /// `"claude-*" = "qwen3-4b"`.
    pub aliases: BTreeMap<String, String>,
    /// `tracing` filter, e.g. `info` or `wuwei=debug`.
    pub log_level: String,
    /// How model weights are held: `auto` (default: `dequantized` on CPU when it fits in a
    /// quarter of available memory, else `native`), `native` (as stored, exact parity with
    /// mlx-lm) or `dequantized` (quantized layers expanded to float32: more memory, but CPU
    /// matmuls go through BLAS and batch).
    pub weights: crate::model::WeightsMode,
    /// The dtype activations are computed in: `auto` (default: the checkpoint's dtype on a
    /// GPU, float32 on the CPU), `checkpoint` or `float32`.
    pub activations: crate::device::Activations,
    /// Prefix reuse: prompts that start like an earlier one reuse its KV blocks.
    pub kv_cache: bool,
    /// Positions per KV block (the unit of sharing and of SSD files).
    pub kv_block_size: usize,
    /// Positions between snapshots of a hybrid model's recurrent state (prefix reuse).
    pub kv_snapshot_interval: usize,
    /// RAM for cached KV blocks per model, in bytes (default: 1/8 of memory, at most 4 GiB).
    pub kv_ram_bytes: Option<u64>,
    /// The SSD tier of the KV cache (on/off; also switchable at runtime).
    pub kv_ssd: bool,
    /// Its folder (default `~/Library/Caches/Wuwei/kv` on macOS, `$XDG_CACHE_HOME/wuwei/kv`).
    pub kv_ssd_dir: Option<PathBuf>,
    /// Its size cap in bytes (default 10% of the filesystem; never over 90% of free space).
    pub kv_ssd_max_bytes: Option<u64>,
    /// Longest wait for SSD blocks on a prefix hit before recomputing instead.
    pub kv_ssd_read_timeout_ms: u64,
    /// Running sequences' KV stored quantized at this many bits (4 or 8; 2, 3, 5, 6 also
    /// work), as mlx-lm's `--kv-bits`; unset: as computed. Per model: `kv_bits` in
    /// `[models."id"]` (0 there turns it off for that model).
    pub kv_bits: Option<i32>,
    /// Values per scale/bias group of quantized KV (32, 64 or 128), as `--kv-group-size`.
    pub kv_group_size: i32,
    /// Memory all loaded models may use together: bytes (`"24GiB"`, `12884901888`) or a share
    /// of RAM (`"75%"`). Unset: total RAM minus `memory_reserve`.
    pub memory_budget: Option<Amount>,
    /// Kept free for the OS and other apps when `memory_budget` is unset.
    pub memory_reserve: Amount,
    /// When the system's available memory falls below this (bytes or a share of RAM), idle
    /// unpinned models are unloaded, least recently used first.
    pub memory_pressure_threshold: Amount,
    /// Models loaded at start and never evicted.
    pub pinned: Vec<String>,
    /// Seconds an idle model stays loaded: 0 unloads it after each request, negative never.
    pub idle_ttl_secs: i64,
    /// KV-cache memory counted for each loaded model, in tokens (0: the model's context).
    pub kv_reserve_tokens: usize,
    /// Whether to watch the models folders for models added, removed or renamed.
    pub watch_models: bool,
    /// How often the monitor looks at available memory and idle TTLs, in milliseconds.
    pub monitor_interval_ms: u64,
    /// Per-model settings, `[models."org/name"]` in the file.
    #[serde(rename = "models")]
    pub per_model: BTreeMap<String, ModelSettings>,
}

/// Settings of one model (`[models."id"]`); unset fields keep the model's own defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Caps the context length (prompt + output) below the model's own (or below what
    /// `rope_scaling` extends it to).
    pub context_length: Option<usize>,
    /// Extends the model's context with a RoPE scaling its config.json does not have
    /// (`{ type = "yarn", factor = 4.0 }`; see [`crate::loader::RopeScaling`]).
    pub rope_scaling: Option<crate::loader::RopeScaling>,
    /// Sampling used when a request gives none.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    /// Whether reasoning models think when the request does not say.
    pub thinking: Option<bool>,
    /// Overrides `idle_ttl_secs` for this model.
    pub idle_ttl_secs: Option<i64>,
    /// How the model writes tool calls (`hermes`, `llama3`, `qwen3_coder`, `minimax`, `glm45`,
    /// `harmony`, `none`), when the choice made from its chat template and config is wrong.
    pub tool_parser: Option<crate::text::output_parser::ToolParser>,
    /// Overrides `kv_bits` for this model (0: not quantized).
    pub kv_bits: Option<i32>,
    /// Overrides `kv_group_size` for this model.
    pub kv_group_size: Option<i32>,
}

impl ModelSettings {
    /// The KV format of this model given the global defaults (`None`: not quantized).
    pub fn kv_quant(&self, default: Option<KvQuant>) -> Option<KvQuant> {
        let bits = match self.kv_bits {
            Some(0) => return None,
            Some(b) => b,
            None => default?.bits,
        };
        let group = self
            .kv_group_size
            .or(default.map(|d| d.group_size))
            .unwrap_or(KvQuant::DEFAULT_GROUP_SIZE);
        // Checked when the config was read.
        KvQuant::new(bits, group).ok()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_string(),
            port: DEFAULT_PORT,
            models_dirs: default_models_dirs(),
            api_key: None,
            allowed_origins: Vec::new(),
            max_running: 8,
            max_queue: 64,
            prefill_chunk: None,
            max_body_bytes: 32 * 1024 * 1024,
            shutdown_grace_secs: 10,
            default_model: None,
            aliases: BTreeMap::new(),
            log_level: "info".to_string(),
            weights: crate::model::WeightsMode::default(),
            activations: crate::device::Activations::default(),
            memory_budget: None,
            memory_reserve: Amount::Percent(20.0),
            memory_pressure_threshold: Amount::Percent(5.0),
            pinned: Vec::new(),
            idle_ttl_secs: -1,
            kv_reserve_tokens: 0,
            watch_models: true,
            monitor_interval_ms: 500,
            per_model: BTreeMap::new(),
            kv_cache: true,
            kv_block_size: kv::DEFAULT_BLOCK_SIZE,
            kv_snapshot_interval: kv::DEFAULT_SNAPSHOT_INTERVAL,
            kv_ram_bytes: None,
            kv_ssd: true,
            kv_ssd_dir: None,
            kv_ssd_max_bytes: None,
            kv_ssd_read_timeout_ms: 1000,
            kv_bits: None,
            kv_group_size: KvQuant::DEFAULT_GROUP_SIZE,
        }
    }
}

/// Flags of `wuwei serve`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1]
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on [default: 8686]
    #[arg(long)]
    pub port: Option<u16>,
    /// Folder(s) with models (repeatable; replaces the default list)
    #[arg(long = "models", value_name = "DIR", num_args = 1..)]
    pub models: Vec<PathBuf>,
    /// Config file [default: ~/.config/wuwei/config.toml when it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Require this key from clients
    #[arg(long)]
    pub api_key: Option<String>,
    /// Model used when a request names none
    #[arg(long)]
    pub default_model: Option<String>,
    /// Log filter, e.g. `info` or `wuwei=debug`
    #[arg(long)]
    pub log_level: Option<String>,
}

/// The folder where Wuwei keeps the model it downloads or ships with:
/// `$XDG_DATA_HOME/wuwei/models` (or `~/.local/share/wuwei/models`) on Linux,
/// `~/Library/Application Support/Wuwei/models` on macOS.
pub fn default_model_store() -> Option<PathBuf> {
    let app = if cfg!(target_os = "macos") {
        "Wuwei"
    } else {
        "wuwei"
    };
    dirs::data_dir().map(|d| d.join(app).join("models"))
}

/// `~/models` and the model store.
pub fn default_models_dirs() -> Vec<PathBuf> {
    let mut dirs_list = Vec::new();
    if let Some(home) = dirs::home_dir() {
        dirs_list.push(home.join("models"));
    }
    if let Some(store) = default_model_store() {
        dirs_list.push(store);
    }
    dirs_list
}

/// `~/.config/wuwei/config.toml` (the XDG config dir on Linux, `~/.config` on macOS too,
/// where command-line tools' users look for it).
pub fn default_config_path() -> Option<PathBuf> {
    let base = if cfg!(target_os = "macos") {
        dirs::home_dir().map(|h| h.join(".config"))
    } else {
        dirs::config_dir()
    };
    base.map(|b| b.join("wuwei").join("config.toml"))
}

/// Replaces a leading `~` with the home folder, so files and env vars may use it.
fn expand_tilde(path: &Path) -> PathBuf {
    let Ok(rest) = path.strip_prefix("~") else {
        return path.to_path_buf();
    };
    match dirs::home_dir() {
        Some(home) => home.join(rest),
        None => path.to_path_buf(),
    }
}

impl Config {
    /// Resolves the configuration from the process environment, the config file and `args`.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        Self::resolve(args, |name| std::env::var(name).ok(), default_config_path())
    }

    /// [`Config::load`] with the environment and default file location given, for tests.
    pub fn resolve(
        args: &ServeArgs,
        env: impl Fn(&str) -> Option<String>,
        default_file: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        // The file: flag, then WUWEI_CONFIG, then the default location when it exists.
        let explicit_file = args.config.clone().or_else(|| {
            env("WUWEI_CONFIG")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let mut config = match explicit_file {
            Some(path) => Self::from_file(&expand_tilde(&path))?,
            None => match default_file.filter(|p| p.is_file()) {
                Some(path) => Self::from_file(&path)?,
                None => Config::default(),
            },
        };
        config.apply_env(&env)?;
        config.apply_args(args);
        config.models_dirs = config.models_dirs.iter().map(|p| expand_tilde(p)).collect();
        config.kv_ssd_dir = config.kv_ssd_dir.as_deref().map(expand_tilde);
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The `WUWEI_*` variables, each named once with the field it sets.
    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let var = EnvVars(env);
        var.text("WUWEI_HOST", &mut self.host);
        var.parse("WUWEI_PORT", &mut self.port)?;
        var.with("WUWEI_MODELS", &mut self.models_dirs, |v| {
            Ok(std::env::split_paths(v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect())
        })?;
        var.some_text("WUWEI_API_KEY", &mut self.api_key);
        var.with("WUWEI_ALLOWED_ORIGINS", &mut self.allowed_origins, |v| {
            Ok(comma_list(v))
        })?;
        var.some_text("WUWEI_DEFAULT_MODEL", &mut self.default_model);
        var.parse("WUWEI_MAX_RUNNING", &mut self.max_running)?;
        var.parse("WUWEI_MAX_QUEUE", &mut self.max_queue)?;
        var.parse("WUWEI_MAX_BODY_BYTES", &mut self.max_body_bytes)?;
        var.text("WUWEI_LOG", &mut self.log_level);
        var.some("WUWEI_MEMORY_BUDGET", &mut self.memory_budget)?;
        var.parse("WUWEI_MEMORY_RESERVE", &mut self.memory_reserve)?;
        var.parse(
            "WUWEI_PRESSURE_THRESHOLD",
            &mut self.memory_pressure_threshold,
        )?;
        var.with("WUWEI_PINNED", &mut self.pinned, |v| Ok(comma_list(v)))?;
        var.parse("WUWEI_IDLE_TTL", &mut self.idle_ttl_secs)?;
        var.parse("WUWEI_KV_RESERVE_TOKENS", &mut self.kv_reserve_tokens)?;
        var.parse("WUWEI_WATCH_MODELS", &mut self.watch_models)?;
        var.named("WUWEI_WEIGHTS", &mut self.weights)?;
        var.parse("WUWEI_ACTIVATIONS", &mut self.activations)?;
        var.with("WUWEI_KV_CACHE", &mut self.kv_cache, parse_bool)?;
        var.parse("WUWEI_KV_BLOCK_SIZE", &mut self.kv_block_size)?;
        var.parse("WUWEI_KV_SNAPSHOT_INTERVAL", &mut self.kv_snapshot_interval)?;
        var.some("WUWEI_KV_RAM_BYTES", &mut self.kv_ram_bytes)?;
        var.with("WUWEI_KV_SSD", &mut self.kv_ssd, parse_bool)?;
        var.with("WUWEI_KV_SSD_DIR", &mut self.kv_ssd_dir, |v| {
            Ok(Some(PathBuf::from(v)))
        })?;
        var.some("WUWEI_KV_SSD_MAX_BYTES", &mut self.kv_ssd_max_bytes)?;
        var.parse(
            "WUWEI_KV_SSD_READ_TIMEOUT_MS",
            &mut self.kv_ssd_read_timeout_ms,
        )?;
        var.some("WUWEI_PREFILL_CHUNK", &mut self.prefill_chunk)?;
        var.some("WUWEI_KV_BITS", &mut self.kv_bits)?;
        var.parse("WUWEI_KV_GROUP_SIZE", &mut self.kv_group_size)?;
        var.parse("WUWEI_MONITOR_INTERVAL_MS", &mut self.monitor_interval_ms)?;
        var.parse("WUWEI_SHUTDOWN_GRACE_SECS", &mut self.shutdown_grace_secs)?;
        Ok(())
    }

    fn apply_args(&mut self, args: &ServeArgs) {
        if let Some(host) = &args.host {
            self.host = host.clone();
        }
        if let Some(port) = args.port {
            self.port = port;
        }
        if !args.models.is_empty() {
            self.models_dirs = args.models.clone();
        }
        if let Some(key) = &args.api_key {
            self.api_key = Some(key.clone());
        }
        if let Some(model) = &args.default_model {
            self.default_model = Some(model.clone());
        }
        if let Some(level) = &args.log_level {
            self.log_level = level.clone();
        }
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        let positive = [
            ("max_running", self.max_running),
            ("prefill_chunk", self.prefill_chunk.unwrap_or(1)),
            ("max_body_bytes", self.max_body_bytes),
            ("kv_block_size", self.kv_block_size),
            ("kv_snapshot_interval", self.kv_snapshot_interval),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    message: "must be at least 1".to_string(),
                });
            }
        }
        if self.kv_block_size > 4096 {
            return Err(ConfigError::Invalid {
                field: "kv_block_size",
                message: "must be at most 4096".to_string(),
            });
        }
        let invalid_kv = |message: String| ConfigError::Invalid {
            field: "kv_bits",
            message,
        };
        if let Some(bits) = self.kv_bits {
            KvQuant::new(bits, self.kv_group_size).map_err(invalid_kv)?;
        } else {
            KvQuant::new(8, self.kv_group_size).map_err(invalid_kv)?;
        }
        for (id, m) in &self.per_model {
            if let Some(rope) = &m.rope_scaling {
                rope.validate().map_err(|message| ConfigError::Invalid {
                    field: "rope_scaling",
                    message: format!("[models.\"{id}\"]: {message}"),
                })?;
            }
            let bits = m.kv_bits.filter(|&b| b != 0).or(self.kv_bits).unwrap_or(8);
            let group = m.kv_group_size.unwrap_or(self.kv_group_size);
            KvQuant::new(bits, group).map_err(|e| invalid_kv(format!("[models.\"{id}\"]: {e}")))?;
        }
        if self.host.trim().is_empty() {
            return Err(ConfigError::Invalid {
                field: "host",
                message: "must not be empty".to_string(),
            });
        }
        for origin in &self.allowed_origins {
            let o = origin.trim().trim_end_matches('/');
            let valid = o == "*"
                || o.split_once("://").is_some_and(|(scheme, rest)| {
                    !scheme.is_empty() && !rest.is_empty() && !rest.contains(['/', '@', ' '])
                });
            if !valid {
                return Err(ConfigError::Invalid {
                    field: "allowed_origins",
                    message: format!(
                        "{origin:?} is not an origin: write scheme://host[:port] (no path), or *"
                    ),
                });
            }
        }
        // An empty key would make every client "authorized" by sending nothing; treat it as unset.
        if self.api_key.as_deref().is_some_and(|k| k.is_empty()) {
            self.api_key = None;
        }
        Ok(())
    }

    /// Prompt tokens read per scheduler step: as set, else the device's default.
    pub fn prefill_chunk(&self) -> usize {
        self.prefill_chunk
            .unwrap_or_else(|| crate::device::default_prefill_chunk(crate::device::info().backend))
    }

    /// The global KV format (`None`: not quantized); `ModelSettings::kv_quant` applies a
    /// model's own.
    pub fn kv_quant(&self) -> Option<KvQuant> {
        self.kv_bits
            .and_then(|bits| KvQuant::new(bits, self.kv_group_size).ok())
    }

    /// The prefix-cache settings, opening the SSD tier when it has a folder. The store is
    /// shared by every model; the admin API toggles it through `KvConfig::ssd`.
    pub fn kv_config(&self) -> KvConfig {
        let ssd = self
            .kv_ssd_dir
            .clone()
            .or_else(ssd::default_dir)
            .map(|dir| {
                let mut c = ssd::SsdConfig::new(dir);
                c.enabled = self.kv_ssd;
                c.max_bytes = self.kv_ssd_max_bytes;
                c.read_timeout = std::time::Duration::from_millis(self.kv_ssd_read_timeout_ms);
                ssd::SsdStore::open(c)
            });
        KvConfig {
            enabled: self.kv_cache,
            block_size: self.kv_block_size,
            snapshot_interval: self.kv_snapshot_interval,
            ram_bytes: self
                .kv_ram_bytes
                .map_or_else(kv::default_ram_bytes, |b| b as usize),
            ssd,
            model_path: None,
            weights_mode: format!("{:?}", self.weights),
            model_overrides: String::new(),
        }
    }

    /// The model an alias pattern maps `requested` to, if any. Exact keys win over patterns;
    /// among patterns, the longest (most specific) wins.
    pub fn resolve_alias(&self, requested: &str) -> Option<&str> {
        resolve_alias(&self.aliases, requested)
    }
}

/// A comma-separated environment value as its trimmed, non-empty items.
fn comma_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A switch: true/false, 1/0, on/off, yes/no.
fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err("expected true/false (or 1/0, on/off)".to_string()),
    }
}

/// The environment as `apply_env` reads it: a variable that is unset or empty leaves its
/// field alone; one that does not parse is an error naming it and its value.
struct EnvVars<'a, F>(&'a F);

impl<F: Fn(&str) -> Option<String>> EnvVars<'_, F> {
    /// Sets `field` from `var` through `parse`.
    fn with<T>(
        &self,
        var: &str,
        field: &mut T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<(), ConfigError> {
        let Some(value) = (self.0)(var).filter(|v| !v.is_empty()) else {
            return Ok(());
        };
        *field = parse(&value).map_err(|message| ConfigError::Env {
            var: var.to_string(),
            value: value.clone(),
            message,
        })?;
        Ok(())
    }

    fn text(&self, var: &str, field: &mut String) {
        let _ = self.with(var, field, |v| Ok(v.to_string()));
    }

    fn some_text(&self, var: &str, field: &mut Option<String>) {
        let _ = self.with(var, field, |v| Ok(Some(v.to_string())));
    }

    /// Through `FromStr`, trimmed.
    fn parse<T: FromStr>(&self, var: &str, field: &mut T) -> Result<(), ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        self.with(var, field, |v| {
            v.trim().parse().map_err(|e: T::Err| e.to_string())
        })
    }

    fn some<T: FromStr>(&self, var: &str, field: &mut Option<T>) -> Result<(), ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        self.with(var, field, |v| {
            v.trim()
                .parse()
                .map(Some)
                .map_err(|e: T::Err| e.to_string())
        })
    }

    /// By the name the config file uses (the type's `Deserialize`), e.g. `native`.
    fn named<T: serde::de::DeserializeOwned>(
        &self,
        var: &str,
        field: &mut T,
    ) -> Result<(), ConfigError> {
        self.with(var, field, |v| {
            T::deserialize(StrDeserializer::<serde::de::value::Error>::new(v.trim()))
                .map_err(|e| e.to_string())
        })
    }
}

/// The target `aliases` maps `requested` to, if any. Exact keys win over patterns; among
/// patterns, the longest (most specific) wins.
pub fn resolve_alias<'a>(
    aliases: &'a BTreeMap<String, String>,
    requested: &str,
) -> Option<&'a str> {
    {
        if let Some(target) = aliases.get(requested) {
            return Some(target);
        }
        aliases
            .iter()
            .filter(|(pattern, _)| pattern.contains('*') && glob_match(pattern, requested))
            .max_by_key(|(pattern, _)| pattern.len())
            .map(|(_, target)| target.as_str())
    }
}

/// `*`-only glob matching (`*` = any run of characters, including none).
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn write_file(dir: &Path, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wuwei-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn defaults_need_no_file() {
        let cfg = Config::resolve(&ServeArgs::default(), env_of(&[]), None).unwrap();
        assert_eq!(cfg.host, "127.0.0.1");
        assert_eq!(cfg.port, 8686);
        assert_eq!(cfg.max_running, 8);
        assert_eq!(cfg.max_queue, 64);
        assert_eq!(cfg.prefill_chunk, None);
        assert_eq!(cfg.prefill_chunk(), 512, "on the CPU");
        assert_eq!(cfg.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(cfg.shutdown_grace_secs, 10);
        assert_eq!(cfg.api_key, None);
        let store = default_model_store().unwrap();
        assert!(cfg.models_dirs.contains(&store), "{:?}", cfg.models_dirs);
        assert!(cfg.models_dirs[0].ends_with("models"));
        // A missing default file is not an error.
        let missing = temp_dir("missing").join("config.toml");
        let cfg2 = Config::resolve(&ServeArgs::default(), env_of(&[]), Some(missing)).unwrap();
        assert_eq!(cfg, cfg2);
    }

    #[test]
    fn allowed_origins_from_file_and_env_are_checked() {
        let dir = temp_dir("origins");
        let file = write_file(&dir, "allowed_origins = [\"https://chat.example.com\"]\n");
        let cfg = Config::resolve(&ServeArgs::default(), env_of(&[]), Some(file.clone())).unwrap();
        assert_eq!(cfg.allowed_origins, vec!["https://chat.example.com"]);
        let env = env_of(&[("WUWEI_ALLOWED_ORIGINS", "http://a.example:3000, *,")]);
        let cfg = Config::resolve(&ServeArgs::default(), &env, Some(file.clone())).unwrap();
        assert_eq!(cfg.allowed_origins, vec!["http://a.example:3000", "*"]);
        for bad in [
            "chat.example.com",
            "https://chat.example.com/path",
            "https://",
        ] {
            let env = env_of(&[("WUWEI_ALLOWED_ORIGINS", bad)]);
            let err = Config::resolve(&ServeArgs::default(), &env, None).unwrap_err();
            assert!(err.to_string().contains("allowed_origins"), "{bad}: {err}");
        }
    }

    #[test]
    fn precedence_flags_over_env_over_file_over_defaults() {
        let dir = temp_dir("precedence");
        let file = write_file(
            &dir,
            r#"
host = "0.0.0.0"
port = 9001
api_key = "from-file"
max_queue = 5
models_dirs = ["/file/models"]
[aliases]
"claude-*" = "smollm2"
"#,
        );
        // File only (found at the default location).
        let cfg = Config::resolve(&ServeArgs::default(), env_of(&[]), Some(file.clone())).unwrap();
        assert_eq!(cfg.host, "0.0.0.0");
        assert_eq!(cfg.port, 9001);
        assert_eq!(cfg.api_key.as_deref(), Some("from-file"));
        assert_eq!(cfg.max_queue, 5);
        assert_eq!(cfg.max_running, 8, "unset fields keep their default");
        assert_eq!(cfg.models_dirs, vec![PathBuf::from("/file/models")]);

        // Env over file.
        let env = env_of(&[
            ("WUWEI_PORT", "9002"),
            ("WUWEI_API_KEY", "from-env"),
            ("WUWEI_MODELS", "/env/a:/env/b"),
        ]);
        let cfg = Config::resolve(&ServeArgs::default(), &env, Some(file.clone())).unwrap();
        assert_eq!(cfg.host, "0.0.0.0");
        assert_eq!(cfg.port, 9002);
        assert_eq!(cfg.api_key.as_deref(), Some("from-env"));
        assert_eq!(
            cfg.models_dirs,
            vec![PathBuf::from("/env/a"), PathBuf::from("/env/b")]
        );

        // Flags over env.
        let args = ServeArgs {
            port: Some(9003),
            models: vec![PathBuf::from("/flag/models")],
            ..ServeArgs::default()
        };
        let cfg = Config::resolve(&args, &env, Some(file.clone())).unwrap();
        assert_eq!(cfg.port, 9003);
        assert_eq!(cfg.api_key.as_deref(), Some("from-env"));
        assert_eq!(cfg.models_dirs, vec![PathBuf::from("/flag/models")]);
        assert_eq!(cfg.resolve_alias("claude-sonnet-4-5"), Some("smollm2"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kv_bits_globally_per_model_and_from_env() {
        let cfg = Config::from_toml(
            "kv_bits = 8\n[models.\"a\"]\nkv_bits = 4\nkv_group_size = 32\n[models.\"b\"]\nkv_bits = 0\n",
        )
        .unwrap();
        let global = cfg.kv_quant();
        assert_eq!(global, Some(KvQuant::new(8, 64).unwrap()));
        assert_eq!(
            cfg.per_model["a"].kv_quant(global),
            Some(KvQuant::new(4, 32).unwrap())
        );
        assert_eq!(cfg.per_model["b"].kv_quant(global), None);
        assert_eq!(ModelSettings::default().kv_quant(global), global);
        assert_eq!(Config::default().kv_quant(), None, "off by default");
        let env = env_of(&[("WUWEI_KV_BITS", "4"), ("WUWEI_KV_GROUP_SIZE", "128")]);
        let cfg = Config::resolve(&ServeArgs::default(), env, None).unwrap();
        assert_eq!(cfg.kv_quant(), Some(KvQuant::new(4, 128).unwrap()));
        let env = env_of(&[("WUWEI_KV_BITS", "7")]);
        let err = Config::resolve(&ServeArgs::default(), env, None).unwrap_err();
        assert!(err.to_string().contains("kv_bits"), "{err}");
    }

    #[test]
    fn explicit_config_file_from_flag_or_env() {
        let dir = temp_dir("explicit");
        let file = write_file(&dir, "port = 7777\n");
        let from_env = Config::resolve(
            &ServeArgs::default(),
            env_of(&[("WUWEI_CONFIG", file.to_str().unwrap())]),
            None,
        )
        .unwrap();
        assert_eq!(from_env.port, 7777);
        let args = ServeArgs {
            config: Some(file.clone()),
            ..ServeArgs::default()
        };
        assert_eq!(
            Config::resolve(&args, env_of(&[]), None).unwrap().port,
            7777
        );
        // An explicit file that does not exist is an error naming it.
        let args = ServeArgs {
            config: Some(dir.join("nope.toml")),
            ..ServeArgs::default()
        };
        let err = Config::resolve(&args, env_of(&[]), None).unwrap_err();
        assert!(err.to_string().contains("nope.toml"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_values_are_errors_naming_the_source() {
        let err = Config::resolve(
            &ServeArgs::default(),
            env_of(&[("WUWEI_PORT", "eighty")]),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("WUWEI_PORT"), "{err}");

        let dir = temp_dir("bad");
        let file = write_file(&dir, "prot = 1\n");
        let err = Config::resolve(&ServeArgs::default(), env_of(&[]), Some(file)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("config.toml") && msg.contains("prot"), "{msg}");

        let file = write_file(&dir, "port = \"x\"\n");
        let err = Config::resolve(&ServeArgs::default(), env_of(&[]), Some(file)).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");

        let file = write_file(&dir, "max_running = 0\n");
        let err = Config::resolve(&ServeArgs::default(), env_of(&[]), Some(file)).unwrap_err();
        assert!(err.to_string().contains("max_running"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flags_parse_with_clap() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cli = Cli::try_parse_from([
            "wuwei",
            "--port",
            "9999",
            "--models",
            "/a",
            "/b",
            "--api-key",
            "k",
        ])
        .unwrap();
        assert_eq!(cli.serve.port, Some(9999));
        assert_eq!(
            cli.serve.models,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(cli.serve.api_key.as_deref(), Some("k"));
        assert!(Cli::try_parse_from(["wuwei", "--port", "70000"]).is_err());
    }

    #[test]
    fn tilde_and_empty_key() {
        let env = env_of(&[("WUWEI_MODELS", "~/m1")]);
        let cfg = Config::resolve(&ServeArgs::default(), env, None).unwrap();
        assert_eq!(cfg.models_dirs, vec![dirs::home_dir().unwrap().join("m1")]);
        let dir = temp_dir("emptykey");
        let file = write_file(&dir, "api_key = \"\"\n");
        let cfg = Config::resolve(&ServeArgs::default(), env_of(&[]), Some(file)).unwrap();
        assert_eq!(cfg.api_key, None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rope_scaling_per_model() {
        use crate::loader::{RopeScaling, RopeScalingKind};
        let cfg = Config::from_toml(
            "[models.a]\nrope_scaling = { type = \"yarn\", factor = 4.0 }\n\
             [models.b]\nrope_scaling = { rope_type = \"linear\", factor = 2, \
             original_max_position_embeddings = 1000 }\n",
        )
        .unwrap();
        let a = cfg.per_model["a"].rope_scaling.clone().unwrap();
        assert_eq!((a.kind, a.factor), (RopeScalingKind::Yarn, 4.0));
        assert_eq!(a.context(32768), 131072);
        let b: &RopeScaling = cfg.per_model["b"].rope_scaling.as_ref().unwrap();
        assert_eq!(b.context(8192), 2000);
        for bad in [
            "type = \"yarn\", factor = 0.5",
            "type = \"dynamic\", factor = 2.0",
            "type = \"yarn\", factor = 2.0, bogus = 1",
        ] {
            let parsed = Config::from_toml(&format!("[models.x]\nrope_scaling = {{ {bad} }}"));
            let invalid = parsed.map_or(true, |mut c| c.validate().is_err());
            assert!(invalid, "{bad}");
        }
    }

    #[test]
    fn memory_and_model_settings() {
        let cfg = Config::from_toml(
            r#"
memory_budget = "75%"
memory_reserve = "4GiB"
pinned = ["a"]
idle_ttl_secs = 300
[models."org/name"]
context_length = 4096
temperature = 0.6
thinking = false
idle_ttl_secs = 0
tool_parser = "qwen3_coder"
"#,
        )
        .unwrap();
        assert_eq!(cfg.memory_budget, Some(Amount::Percent(75.0)));
        assert_eq!(cfg.memory_reserve, Amount::Bytes(4 << 30));
        assert_eq!(cfg.pinned, vec!["a".to_string()]);
        let m = &cfg.per_model["org/name"];
        assert_eq!(
            (m.context_length, m.thinking, m.idle_ttl_secs),
            (Some(4096), Some(false), Some(0))
        );
        assert!(Config::from_toml("memory_budget = \"lots\"").is_err());
        assert_eq!(
            m.tool_parser,
            Some(crate::text::output_parser::ToolParser::Qwen3Coder)
        );
        assert!(Config::from_toml("[models.x]\nbogus = 1")
            .unwrap_err()
            .contains("bogus"));
        assert!(Config::from_toml("[models.x]\ntool_parser = \"xml\"")
            .unwrap_err()
            .contains("tool_parser"));
        let env = env_of(&[
            ("WUWEI_MEMORY_BUDGET", "1GiB"),
            ("WUWEI_PINNED", "a, b"),
            ("WUWEI_PRESSURE_THRESHOLD", "100%"),
        ]);
        let cfg = Config::resolve(&ServeArgs::default(), env, None).unwrap();
        assert_eq!(cfg.memory_budget, Some(Amount::Bytes(1 << 30)));
        assert_eq!(cfg.pinned, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(cfg.memory_pressure_threshold, Amount::Percent(100.0));
        let err = Config::resolve(
            &ServeArgs::default(),
            env_of(&[("WUWEI_MEMORY_RESERVE", "x")]),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("WUWEI_MEMORY_RESERVE"), "{err}");
    }

    #[test]
    fn weights_by_name_and_the_monitor_interval_from_env() {
        let env = env_of(&[
            ("WUWEI_WEIGHTS", "dequantized"),
            ("WUWEI_MONITOR_INTERVAL_MS", "250"),
            ("WUWEI_KV_SSD", "off"),
        ]);
        let cfg = Config::resolve(&ServeArgs::default(), env, None).unwrap();
        assert_eq!(cfg.weights, crate::model::WeightsMode::Dequantized);
        assert_eq!(cfg.monitor_interval_ms, 250);
        assert!(!cfg.kv_ssd);
        for (var, bad) in [
            ("WUWEI_WEIGHTS", "fast"),
            ("WUWEI_MONITOR_INTERVAL_MS", "soon"),
            ("WUWEI_KV_SSD", "maybe"),
        ] {
            let err = Config::resolve(&ServeArgs::default(), env_of(&[(var, bad)]), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(var) && err.contains(bad), "{err}");
        }
        assert_eq!(Config::default().monitor_interval_ms, 500);
    }

    #[test]
    fn alias_patterns() {
        let mut cfg = Config::default();
        cfg.aliases.insert("claude-*".into(), "a".into());
        cfg.aliases.insert("claude-opus-*".into(), "b".into());
        cfg.aliases.insert("gpt-4o".into(), "c".into());
        cfg.aliases.insert("*-mini".into(), "d".into());
        assert_eq!(cfg.resolve_alias("claude-sonnet-4"), Some("a"));
        assert_eq!(cfg.resolve_alias("claude-opus-4-1"), Some("b"));
        assert_eq!(cfg.resolve_alias("gpt-4o"), Some("c"));
        assert_eq!(cfg.resolve_alias("gpt-4o-mini"), Some("d"));
        assert_eq!(cfg.resolve_alias("llama"), None);
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(glob_match("a*", "a"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(!glob_match("a*b*c", "acb"));
    }
}
