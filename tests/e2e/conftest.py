"""Starts the real daemon for the end-to-end tests.

Environment:
  WUWEI_BIN          the daemon binary (default: target/release/wuwei from the repo root)
  WUWEI_TEST_MODELS  folder with the test model (SmolLM2-135M-Instruct); required
"""

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_daemon(log_dir, extra_env=None, extra_args=(), models=None):
    """Starts `wuwei serve` on a free loopback port, waits for /health, yields its URL, and
    on exit checks that SIGTERM ends it cleanly (exit 0). `models`: the models folder
    (default: $WUWEI_TEST_MODELS)."""
    binary = Path(os.environ.get("WUWEI_BIN", REPO_ROOT / "target" / "release" / "wuwei"))
    models = str(models) if models else os.environ.get("WUWEI_TEST_MODELS")
    if not models:
        pytest.fail("set WUWEI_TEST_MODELS to the folder holding the test model")
    if not binary.exists():
        pytest.fail(f"daemon binary not found: {binary} (set WUWEI_BIN or build it)")
    port = _free_port()
    log_path = Path(log_dir) / "daemon.log"
    log = open(log_path, "w")
    env = dict(os.environ)
    # The test daemon must not pick up the developer's own settings.
    for var in ("WUWEI_API_KEY", "WUWEI_CONFIG", "WUWEI_HOST", "WUWEI_PORT", "WUWEI_MODELS"):
        env.pop(var, None)
    env.setdefault("WUWEI_LOG", "info")
    # Each test daemon gets its own SSD KV-cache folder: no state shared between tests or runs.
    env["WUWEI_KV_SSD_DIR"] = str(Path(log_dir) / "kv")
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [str(binary), "serve", "--host", "127.0.0.1", "--port", str(port), "--models", models, *extra_args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                log.flush()
                pytest.fail(f"daemon exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"daemon not healthy after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        log.close()
        # SIGTERM must end the daemon cleanly (exit 0) within its grace period.
        assert code == 0, f"daemon exit code {code}:\n{log_path.read_text()}"


@pytest.fixture(scope="session")
def base_url(tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("wuwei")) as url:
        yield url


@pytest.fixture(scope="session")
def client(base_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model_id(client):
    models = client.models.list().data
    assert models, "the daemon lists no models"
    return models[0].id


@pytest.fixture(scope="session")
def anthropic_recorder():
    """Records every event stream the Anthropic client receives (see sse_validator)."""
    from sse_validator import RecordingTransport

    return RecordingTransport()


def make_anthropic_client(url, recorder, api_key="unused"):
    import anthropic
    import httpx2

    return anthropic.Anthropic(
        base_url=url,
        api_key=api_key,
        max_retries=0,
        timeout=120,
        http_client=httpx2.Client(transport=recorder, timeout=120),
    )


@pytest.fixture(scope="session")
def anthropic_client(base_url, anthropic_recorder):
    return make_anthropic_client(base_url, anthropic_recorder)


@pytest.fixture(autouse=True)
def _validate_anthropic_streams(request):
    """After each test, every Anthropic stream it received must pass the strict validator."""
    yield
    if "anthropic_recorder" not in request.fixturenames:
        return
    from sse_validator import validate

    for path, text in request.getfixturevalue("anthropic_recorder").take():
        validate(text)
