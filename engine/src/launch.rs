//! `wuwei launch claude|codex [--model M] [-- ARGS]`: runs a coding agent on the local models.
//! Starts the daemon (`wuwei serve`, detached, its log in the temp folder) when none answers on
//! the configured port, waits until it is healthy, then replaces itself with the agent, its
//! environment pointed at the daemon: Claude Code through the Anthropic API
//! (`ANTHROPIC_BASE_URL`, a token, the model for every tier), Codex through the Responses API
//! (a `wuwei` model provider given with `-c`, and the model with `-m`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use wuwei_api::Client;

/// How long a daemon started here may take to answer `/health` (it loads the default model).
const START_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Agent {
    /// Claude Code (`claude`), over the Anthropic Messages API.
    Claude,
    /// OpenAI's Codex CLI (`codex`), over the Responses API.
    Codex,
}

#[derive(Debug, clap::Args)]
pub struct LaunchArgs {
    /// The agent to run.
    #[arg(value_enum)]
    pub agent: Agent,
    /// The model the agent uses [default: the daemon's default model]
    #[arg(long)]
    pub model: Option<String>,
    /// The daemon's URL [default: http://127.0.0.1:<port from the config>]; a daemon is started
    /// only for the default URL.
    #[arg(long, env = "WUWEI_URL")]
    pub url: Option<String>,
    /// The daemon's API key [default: the config's]
    #[arg(long, env = "WUWEI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The agent's program [default: `claude` or `codex` on the PATH]
    #[arg(long)]
    pub program: Option<PathBuf>,
    /// Arguments for the agent, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The agent's command line and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What the agent runs with: `url` is the daemon's root (no `/v1`), `key` its API key (a
/// placeholder when it has none: the agents insist on one), `model` the model to use.
pub fn agent_command(
    agent: Agent,
    program: Option<PathBuf>,
    url: &str,
    key: Option<&str>,
    model: &str,
    extra: &[String],
) -> AgentCommand {
    let url = url.trim_end_matches('/');
    let token = key.unwrap_or("wuwei").to_string();
    match agent {
        Agent::Claude => {
            let mut env = vec![
                ("ANTHROPIC_BASE_URL".to_string(), url.to_string()),
                ("ANTHROPIC_AUTH_TOKEN".to_string(), token),
                // An API key of the user's own would win over the token: not this time.
                ("ANTHROPIC_API_KEY".to_string(), String::new()),
            ];
            for var in [
                "ANTHROPIC_MODEL",
                "ANTHROPIC_SMALL_FAST_MODEL",
                "ANTHROPIC_DEFAULT_OPUS_MODEL",
                "ANTHROPIC_DEFAULT_SONNET_MODEL",
                "ANTHROPIC_DEFAULT_HAIKU_MODEL",
            ] {
                env.push((var.to_string(), model.to_string()));
            }
            AgentCommand {
                program: program.unwrap_or_else(|| "claude".into()),
                args: extra.to_vec(),
                env,
            }
        }
        Agent::Codex => {
            let mut args: Vec<String> = [
                "model_provider=\"wuwei\"".to_string(),
                "model_providers.wuwei.name=\"Wuwei\"".to_string(),
                format!("model_providers.wuwei.base_url=\"{url}/v1\""),
                "model_providers.wuwei.wire_api=\"responses\"".to_string(),
                "model_providers.wuwei.env_key=\"WUWEI_API_KEY\"".to_string(),
            ]
            .into_iter()
            .flat_map(|c| ["-c".to_string(), c])
            .collect();
            args.extend(["-m".to_string(), model.to_string()]);
            args.extend(extra.iter().cloned());
            AgentCommand {
                program: program.unwrap_or_else(|| "codex".into()),
                args,
                env: vec![
                    ("WUWEI_API_KEY".to_string(), token.clone()),
                    ("OPENAI_BASE_URL".to_string(), format!("{url}/v1")),
                    ("OPENAI_API_KEY".to_string(), token),
                ],
            }
        }
    }
}

/// Starts `wuwei serve` detached from this terminal (its own process group; output to a log
/// file), and waits for `/health`.
fn start_daemon(client: &Client) -> anyhow::Result<()> {
    let log_path = std::env::temp_dir().join("wuwei-launch.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the wuwei binary")?;
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let mut child = command.spawn().context("cannot start `wuwei serve`")?;
    eprintln!(
        "wuwei: started the daemon (pid {}, log {})",
        child.id(),
        log_path.display()
    );
    let started = Instant::now();
    loop {
        if client.health().is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the daemon exited ({status}) before it answered; see {}",
                log_path.display()
            );
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "the daemon did not answer within {} s; see {}",
                START_TIMEOUT.as_secs(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits while the daemon answers but is still loading (503 on `/health`).
fn wait_healthy(client: &Client) -> anyhow::Result<()> {
    let started = Instant::now();
    while let Err(e) = client.health() {
        if e.is_unreachable() || started.elapsed() > START_TIMEOUT {
            return Err(e).context(format!(
                "the daemon at {} is not healthy",
                client.base_url()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

pub fn run(args: LaunchArgs) -> anyhow::Result<()> {
    let cfg = crate::config::Config::load(&crate::config::ServeArgs::default()).ok();
    let default_url = format!(
        "http://127.0.0.1:{}",
        cfg.as_ref().map_or(crate::config::DEFAULT_PORT, |c| c.port)
    );
    let url = args.url.clone().unwrap_or_else(|| default_url.clone());
    let key = args.api_key.clone().or_else(|| cfg.and_then(|c| c.api_key));
    let client = Client::new(&url, key.clone());
    match client.health() {
        Ok(()) => {}
        Err(e) if e.is_unreachable() && url == default_url => start_daemon(&client)?,
        Err(e) if e.is_unreachable() => {
            return Err(e).context(format!("cannot reach the Wuwei daemon at {url}"))
        }
        Err(_) => wait_healthy(&client)?,
    }
    let model = match args.model.clone() {
        Some(m) => m,
        None => {
            let models = client.models().context("cannot list the daemon's models")?;
            match models.iter().find(|m| m.default).or(models.first()) {
                Some(m) => m.id.clone(),
                None => bail!("the daemon has no models; put one in its models folder"),
            }
        }
    };
    let command = agent_command(
        args.agent,
        args.program.clone(),
        &url,
        key.as_deref(),
        &model,
        &args.args,
    );
    eprintln!(
        "wuwei: running {} on {model} at {url}",
        command.program.display()
    );
    let mut process = Command::new(&command.program);
    process
        .args(&command.args)
        .envs(command.env.iter().cloned());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = process.exec();
        Err(err).with_context(|| not_found_hint(args.agent, &command.program))
    }
    #[cfg(not(unix))]
    {
        let status = process
            .status()
            .with_context(|| not_found_hint(args.agent, &command.program))?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

fn not_found_hint(agent: Agent, program: &std::path::Path) -> String {
    let package = match agent {
        Agent::Claude => "@anthropic-ai/claude-code",
        Agent::Codex => "@openai/codex",
    };
    format!(
        "cannot run {} (install it: npm install -g {package})",
        program.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_gets_the_anthropic_environment() {
        let c = agent_command(
            Agent::Claude,
            None,
            "http://127.0.0.1:8686/",
            None,
            "qwen3",
            &["-p".into(), "hi".into()],
        );
        assert_eq!(c.program, PathBuf::from("claude"));
        assert_eq!(c.args, ["-p", "hi"]);
        let env: std::collections::HashMap<_, _> = c.env.into_iter().collect();
        assert_eq!(env["ANTHROPIC_BASE_URL"], "http://127.0.0.1:8686");
        assert_eq!(env["ANTHROPIC_AUTH_TOKEN"], "wuwei");
        assert_eq!(env["ANTHROPIC_MODEL"], "qwen3");
        assert_eq!(env["ANTHROPIC_SMALL_FAST_MODEL"], "qwen3");
    }

    #[test]
    fn codex_gets_a_responses_provider() {
        let c = agent_command(
            Agent::Codex,
            None,
            "http://127.0.0.1:8686",
            Some("k"),
            "qwen3",
            &["exec".into(), "hi".into()],
        );
        assert_eq!(c.program, PathBuf::from("codex"));
        let joined = c.args.join(" ");
        assert!(joined.contains("model_providers.wuwei.base_url=\"http://127.0.0.1:8686/v1\""));
        assert!(joined.contains("wire_api=\"responses\""));
        assert!(joined.ends_with("-m qwen3 exec hi"), "{joined}");
        assert!(c.env.contains(&("WUWEI_API_KEY".into(), "k".into())));
    }
}
