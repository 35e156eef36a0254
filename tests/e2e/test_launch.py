"""`wuwei launch claude|codex`: starts the daemon when none answers, then runs the agent with
its environment pointed at it. The agent here is a stand-in script that records what it was
given (and asks the daemon one question through the API it was pointed at)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from conftest import REPO_ROOT, _free_port

MODEL = "SmolLM2-135M-Instruct"

FAKE_AGENT = """#!{python}
import json, os, sys, urllib.request
record = {{"args": sys.argv[1:], "env": {{k: v for k, v in os.environ.items()
                                       if k.startswith(("ANTHROPIC_", "OPENAI_", "WUWEI_API_KEY"))}}}}
if "ANTHROPIC_BASE_URL" in os.environ:
    body = {{"model": os.environ["ANTHROPIC_MODEL"], "max_tokens": 2,
             "messages": [{{"role": "user", "content": "hi"}}]}}
    req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages",
                                 data=json.dumps(body).encode(),
                                 headers={{"content-type": "application/json",
                                          "authorization": "Bearer " + os.environ["ANTHROPIC_AUTH_TOKEN"]}})
    record["answer"] = json.load(urllib.request.urlopen(req, timeout=120))["type"]
open({out!r}, "w").write(json.dumps(record))
"""


def launch(tmp_path, port, agent, *extra):
    out = tmp_path / f"{agent}.json"
    script = tmp_path / f"fake-{agent}"
    script.write_text(FAKE_AGENT.format(python=sys.executable, out=str(out)))
    script.chmod(0o755)
    env = dict(os.environ)
    for var in ("WUWEI_API_KEY", "WUWEI_CONFIG", "WUWEI_HOST", "WUWEI_URL"):
        env.pop(var, None)
    env.update(
        WUWEI_PORT=str(port),
        WUWEI_MODELS=os.environ["WUWEI_TEST_MODELS"],
        WUWEI_KV_SSD_DIR=str(tmp_path / "kv"),
        TMPDIR=str(tmp_path),
    )
    binary = os.environ.get("WUWEI_BIN", str(REPO_ROOT / "target" / "release" / "wuwei"))
    done = subprocess.run(
        [binary, "launch", agent, "--program", str(script), "--model", MODEL, "--", *extra],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stderr


def test_launch_starts_the_daemon_then_runs_the_agent(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        claude, log = launch(tmp_path, port, "claude", "-p", "hello")
        assert "started the daemon" in log
        assert claude["args"] == ["-p", "hello"]
        env = claude["env"]
        assert env["ANTHROPIC_BASE_URL"] == url
        assert env["ANTHROPIC_AUTH_TOKEN"] and env["ANTHROPIC_API_KEY"] == ""
        assert env["ANTHROPIC_MODEL"] == MODEL and env["ANTHROPIC_SMALL_FAST_MODEL"] == MODEL
        assert claude["answer"] == "message"
        # The daemon outlives the agent; a second launch uses it.
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
        codex, log = launch(tmp_path, port, "codex", "exec", "hi")
        assert "started the daemon" not in log
        args = " ".join(codex["args"])
        assert f'model_providers.wuwei.base_url="{url}/v1"' in args
        assert 'wire_api="responses"' in args and 'model_provider="wuwei"' in args
        assert args.endswith(f"-m {MODEL} exec hi")
        assert codex["env"]["OPENAI_BASE_URL"] == f"{url}/v1"
    finally:
        try:
            requests.post(f"{url}/admin/api/shutdown", timeout=10)
        except requests.RequestException:
            pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{url}/health", timeout=1)
            except requests.RequestException:
                break
            time.sleep(0.25)
