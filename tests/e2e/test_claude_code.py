"""Claude Code itself (npm `@anthropic-ai/claude-code`, pinned in tests/e2e/claude_code/
package.json) run non-interactively with `-p` against the daemon, through a recording proxy
that keeps every request and response (docs/CLAUDE_CODE.md describes what it sends).

- SmolLM2 (8k context): Claude Code's request is ~49 KB, but SmolLM2's template drops the
  12 tool definitions, leaving ~4.2k tokens, which fit. A user prompt of ~6k words makes the
  request overflow; the user must see the daemon's `prompt is too long` error, and the
  daemon goes on serving.
- A random-weight Qwen3-style model with a 40k context (make_thinking_model.py): the
  session completes, and every stream passes the strict validator.
"""

import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from conftest import REPO_ROOT, running_daemon
from sse_validator import validate

CLAUDE_DIR = REPO_ROOT / "tests" / "e2e" / "claude_code"
CLAUDE_BIN = CLAUDE_DIR / "node_modules" / ".bin" / "claude"
# Where the recordings go (inspected when docs/CLAUDE_CODE.md is updated).
ARTIFACTS = Path(os.environ.get("WUWEI_ARTIFACTS", REPO_ROOT / "artifacts")) / "claude_code"
HIDDEN_HEADERS = {"x-api-key", "authorization"}


@pytest.fixture(scope="module")
def claude_bin():
    if not CLAUDE_BIN.exists():
        npm = shutil.which("npm")
        if not npm:
            pytest.fail("npm is needed to install Claude Code (tests/e2e/claude_code)")
        subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=CLAUDE_DIR, check=True, timeout=600)
    version = subprocess.run([str(CLAUDE_BIN), "--version"], capture_output=True, text=True, timeout=60,
                             env=claude_env("http://127.0.0.1:9", Path("/tmp")))
    assert version.returncode == 0, version.stderr
    return CLAUDE_BIN


class RecordingProxy:
    """Forwards HTTP requests to `upstream`, streaming responses through, and records each
    exchange: method, path, headers (keys hidden), JSON body, status, response body text."""

    def __init__(self, upstream):
        host_port = upstream.removeprefix("http://")
        self.exchanges = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPConnection(host_port, timeout=600)
                conn.request(self.command, self.path, body=body, headers=headers)
                upstream_response = conn.getresponse()
                self.send_response(upstream_response.status)
                for k, v in upstream_response.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("connection", "close")
                self.end_headers()
                received = []
                while True:
                    chunk = upstream_response.read1(65536)
                    if not chunk:
                        break
                    received.append(chunk)
                    self.wfile.write(chunk)
                    self.wfile.flush()
                conn.close()
                try:
                    request_json = json.loads(body) if body else None
                except ValueError:
                    request_json = body.decode(errors="replace")
                proxy.exchanges.append({
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): ("<hidden>" if k.lower() in HIDDEN_HEADERS else v)
                                for k, v in self.headers.items()},
                    "body": request_json,
                    "status": upstream_response.status,
                    "content_type": upstream_response.getheader("content-type", ""),
                    "response": b"".join(received).decode(errors="replace"),
                })

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def claude_env(base_url, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY="sk-ant-dummy-key-for-local-wuwei",
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_BUG_COMMAND="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        CLAUDE_CODE_DISABLE_TERMINAL_TITLE="1",
        CI="1",
    )
    return env


def run_claude(claude_bin, daemon_url, workdir, prompt, name, timeout=480):
    """Runs `claude -p PROMPT` through a recording proxy; returns (process, exchanges)."""
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    project = workdir / "project"
    project.mkdir(exist_ok=True)
    with RecordingProxy(daemon_url) as proxy:
        proc = subprocess.run(
            [str(claude_bin), "-p", prompt, "--output-format", "text"],
            cwd=project, env=claude_env(proxy.url, home), capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps({
        "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
        "exchanges": proxy.exchanges}, indent=2))
    return proc, proxy.exchanges


def message_requests(exchanges):
    return [e for e in exchanges if e["path"].split("?")[0] == "/v1/messages"]


def test_smollm2_context_too_small_is_reported(claude_bin, base_url, tmp_path):
    prompt = "Summarize this: " + "the quick brown fox jumps over the lazy dog " * 700
    proc, exchanges = run_claude(claude_bin, base_url, tmp_path, prompt, "smollm2")
    output = proc.stdout + proc.stderr
    sent = message_requests(exchanges)
    assert sent, f"Claude Code sent no /v1/messages request: {output}"
    refused = [e for e in sent if e["status"] == 400]
    assert refused, [(e["status"], e["response"][:200]) for e in sent]
    for e in refused:
        error = json.loads(e["response"])
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert error["error"]["message"].startswith("prompt is too long: "), error
    assert "prompt is too long" in output.lower(), output
    # Still serving.
    assert requests.get(f"{base_url}/health", timeout=10).status_code == 200
    r = requests.post(f"{base_url}/v1/messages", json={
        "model": "claude-sonnet-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}, timeout=60)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def long_context_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long-context-models")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests/reference/make_thinking_model.py"),
         str(REPO_ROOT / ".deps/test-models/SmolLM2-135M-Instruct"),
         str(REPO_ROOT / "engine/tests/fixtures/templates/qwen3.jinja"),
         str(folder / "qwen3-random-40k"), "--context", "40960"],
        check=True,
    )
    with running_daemon(tmp_path_factory.mktemp("long-context-daemon"), models=folder) as url:
        yield url


def test_session_completes_on_long_context_model(claude_bin, long_context_url, tmp_path):
    proc, exchanges = run_claude(claude_bin, long_context_url, tmp_path, "Say hi.", "long_context")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    sent = message_requests(exchanges)
    assert sent, output
    for e in sent:
        assert e["status"] == 200, (e["status"], e["response"][:500])
        if e["content_type"].startswith("text/event-stream"):
            result = validate(e["response"])
            assert "error" not in result, result
        else:
            body = json.loads(e["response"])
            assert body["type"] == "message", body
    main = max(sent, key=lambda e: len(json.dumps(e["body"])))
    assert main["body"]["stream"] is True
    assert main["body"]["max_tokens"] >= 1
    assert "api error" not in output.lower(), output
