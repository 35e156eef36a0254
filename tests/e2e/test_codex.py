"""OpenAI's Codex CLI itself (npm `@openai/codex`, pinned in tests/e2e/codex/package.json) run
non-interactively with `codex exec` against the daemon's Responses API, through the recording
proxy of test_claude_code.py, as `wuwei launch codex` configures it: a custom model provider
with `wire_api = "responses"` and its key in an environment variable.

The model is SmolLM2-135M-Instruct with temperature 0 from its generation_config (Codex sends
no sampling settings). Its 8k context cannot hold Codex's whole default request (~8.8k
tokens: long base instructions and ~19 KB of tool definitions, multi-agent ones the largest),
so the run swaps the base instructions for one line (`model_instructions_file`), leaves out
the permissions and environment context, and turns off web search and the optional tool
features; Codex still sends its shell, stdin, user-input and image tools, its skills list, a
developer message, `reasoning`, `include: ["reasoning.encrypted_content"]`, `store: false`
and `prompt_cache_key`. The test asserts a real round trip: Codex streamed a response from
/v1/responses, printed the model's answer, and exited 0. Codex's default request, too long for
SmolLM2, gets OpenAI's `context_length_exceeded`, which Codex reports as such.
"""

import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT, running_daemon
from test_claude_code import ARTIFACTS, RecordingProxy
from test_sampling_defaults import MODEL, greedy_model_folder

CODEX_DIR = REPO_ROOT / "tests" / "e2e" / "codex"
CODEX_BIN = CODEX_DIR / "node_modules" / ".bin" / "codex"
# Codex features that add tools (or instructions) a small local model has no room for.
DISABLED_FEATURES = ["multi_agent", "goals", "apps", "plugins", "skill_search", "tool_suggest",
                     "image_generation", "sleep_tool", "browser_use", "computer_use"]


@pytest.fixture(scope="module")
def codex_bin():
    if not CODEX_BIN.exists():
        npm = shutil.which("npm")
        if not npm:
            pytest.fail("npm is needed to install the Codex CLI (tests/e2e/codex)")
        subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=CODEX_DIR, check=True,
                       timeout=600)
    version = subprocess.run([str(CODEX_BIN), "--version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0, version.stderr
    return CODEX_BIN


@pytest.fixture(scope="module")
def greedy_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("codex")
    with running_daemon(root, models=greedy_model_folder(root)) as url:
        yield url


def codex_env(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update(CODEX_HOME=str(home), WUWEI_API_KEY="local-wuwei-key", NO_COLOR="1")
    return env


def run_codex(codex_bin, daemon_url, workdir, prompt, name, trimmed=True, timeout=420):
    """Runs `codex exec PROMPT` through a recording proxy, its request trimmed to fit SmolLM2
    or (`trimmed=False`) as Codex sends it by default; returns (process, exchanges)."""
    home, project = workdir / "codex-home", workdir / "project"
    home.mkdir()
    project.mkdir()
    instructions = workdir / "instructions.md"
    instructions.write_text("You are a helpful assistant. Answer briefly.\n")
    with RecordingProxy(daemon_url) as proxy:
        config = {
            "model_provider": '"wuwei"',
            "model_providers.wuwei.name": '"Wuwei"',
            "model_providers.wuwei.base_url": f'"{proxy.url}/v1"',
            "model_providers.wuwei.wire_api": '"responses"',
            "model_providers.wuwei.env_key": '"WUWEI_API_KEY"',
            # One try: a failure shows at once instead of after retries.
            "model_providers.wuwei.request_max_retries": "0",
            "model_providers.wuwei.stream_max_retries": "0",
            # Nothing leaves the machine but requests to the daemon.
            "analytics.enabled": "false",
        }
        if trimmed:
            config.update({
                "model_instructions_file": json.dumps(str(instructions)),
                "include_permissions_instructions": "false",
                "include_environment_context": "false",
                "web_search": '"disabled"',
            })
        args = [str(codex_bin), "exec", "--skip-git-repo-check", "-m", MODEL]
        for key, value in config.items():
            args += ["-c", f"{key}={value}"]
        for feature in DISABLED_FEATURES if trimmed else []:
            args += ["--disable", feature]
        proc = subprocess.run(args + [prompt], cwd=project, env=codex_env(home),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS.parent / f"codex-{name}.json").write_text(json.dumps({
        "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
        "exchanges": proxy.exchanges}, indent=2))
    return proc, proxy.exchanges


def sse_events(text):
    """The JSON `data:` payloads of an SSE body, in order."""
    return [json.loads(line[len("data:"):]) for line in text.splitlines()
            if line.startswith("data:") and line[len("data:"):].strip() not in ("", "[DONE]")]


def test_codex_exec_round_trip(codex_bin, greedy_url, tmp_path):
    proc, exchanges = run_codex(codex_bin, greedy_url, tmp_path, "Say hello.", "round-trip")
    output = proc.stdout + proc.stderr
    sent = [e for e in exchanges if e["path"].split("?")[0] == "/v1/responses"]
    assert sent, f"Codex sent no /v1/responses request: {output}"
    assert all(e["status"] == 200 for e in sent), [(e["status"], e["response"][:300]) for e in sent]
    request = sent[0]["body"]
    assert request["model"] == MODEL and request["stream"] is True
    assert request["tools"], "Codex offered its tools"
    metadata = json.loads(request["client_metadata"]["x-codex-turn-metadata"])
    assert metadata["analytics_enabled"] is False, metadata
    events = sse_events(sent[-1]["response"])
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    answer = "".join(part["text"] for item in completed["output"] if item["type"] == "message"
                     for part in item["content"] if part["type"] == "output_text")
    assert answer.strip(), completed
    assert answer.strip() in proc.stdout, (answer, output)
    assert proc.returncode == 0, output


def test_codex_default_request_overflowing_the_context_is_reported(codex_bin, greedy_url, tmp_path):
    proc, exchanges = run_codex(codex_bin, greedy_url, tmp_path, "Say hello.", "overflow",
                                trimmed=False, timeout=120)
    output = proc.stdout + proc.stderr
    sent = [e for e in exchanges if e["path"].split("?")[0] == "/v1/responses"]
    assert sent and all(e["status"] == 400 for e in sent), [(e["status"], e["response"][:300]) for e in sent]
    error = json.loads(sent[0]["response"])["error"]
    assert error["code"] == "context_length_exceeded", error
    # Codex tells the user in its own words, and gives up.
    assert "context window" in output, output
    assert proc.returncode != 0
