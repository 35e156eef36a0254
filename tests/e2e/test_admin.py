"""The admin API end to end: authentication, status and model listings, action round trips,
serving on/off, the SSD cache switch, runtime settings, bad model ids, the events stream
and the `wuwei ls|ps|load|unload|pin|unpin|stop|start` commands."""

import os
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import REPO_ROOT, running_daemon
from registry_helpers import Admin, EventCollector, copy_model, wait_until

KEY = "admin-test-key"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("admin")
    models = tmp / "models"
    models.mkdir()
    copy_model(models / "m1")
    copy_model(models / "org" / "m2")
    old = os.environ.get("WUWEI_TEST_MODELS")
    os.environ["WUWEI_TEST_MODELS"] = str(models)
    try:
        env = {"WUWEI_API_KEY": KEY, "WUWEI_WEIGHTS": "native", "WUWEI_KV_RESERVE_TOKENS": "256",
               "WUWEI_DEFAULT_MODEL": "m1"}
        with running_daemon(tmp, extra_env=env) as url:
            yield url, models
    finally:
        os.environ["WUWEI_TEST_MODELS"] = old


@pytest.fixture
def admin(daemon):
    return Admin(daemon[0], KEY)


def test_unauthorized_calls_get_401(daemon):
    url = daemon[0]
    no_key, wrong = Admin(url), Admin(url, "wrong")
    for a in (no_key, wrong):
        for path in ("/status", "/models", "/settings", "/events", "/serving"):
            assert a.get(path).status_code == 401, path
        for path in ("/models/load", "/models/unload", "/models/pin", "/serving/stop", "/cache"):
            assert a.post(path, {"model": "m1"}).status_code == 401, path
    assert Admin(url, KEY).status()["serving"] is True


def test_status_and_models_shapes(admin):
    wait_until(lambda: "m1" in admin.loaded(), 60, "default model loaded")
    s = admin.status()
    assert s["state"] == "serving" and s["version"] and s["port"] > 0 and s["uptime_secs"] > 0
    # The daemon names itself (its pid: a restart shows as a new one) and its model folders.
    os.kill(s["pid"], 0)
    assert any(Path(d).is_dir() for d in s["models_dirs"]), s["models_dirs"]
    mem = s["memory"]
    for k in ("total_bytes", "used_bytes", "available_bytes"):
        assert mem["system"][k] > 0
    assert mem["mlx"]["active_bytes"] > 0 and mem["budget_bytes"] > 0
    # Each test daemon has its own SSD cache folder (conftest): the tier is there and on.
    ssd = s["ssd_cache"]
    assert ssd["available"] is True and ssd["enabled"] is True, ssd
    assert Path(ssd["dir"]).name == "kv" and ssd["cap_bytes"] > 0
    for k in ("bytes_used", "blocks", "hits", "misses", "writes", "writes_dropped", "write_errors",
              "read_errors", "read_timeouts", "corrupt_dropped", "errors"):
        assert isinstance(ssd[k], int) and ssd[k] >= 0, (k, ssd)
    assert ssd["hit_rate"] is None or 0 <= ssd["hit_rate"] <= 1
    (m1,) = [m for m in s["loaded"] if m["id"] == "m1"]
    for k in ("memory_bytes", "kv_bytes", "running", "waiting", "last_used", "pinned"):
        assert k in m1
    ram = m1["prefix_cache"]
    assert ram["block_size"] == 32 and ram["budget_bytes"] > 0 and ram["blocks_free"] > 0, ram
    models = admin.models()
    assert set(models) == {"m1", "org/m2"}
    assert models["m1"]["state"] == "loaded" and models["m1"]["default"] is True
    assert models["org/m2"]["state"] == "available"
    assert models["org/m2"]["size_bytes"] > 100_000_000
    assert models["org/m2"]["estimated_memory_bytes"] > 0
    assert "claude-*" in models["m1"]["aliases"]


def test_actions_round_trip(admin, daemon):
    url = daemon[0]
    events = EventCollector(admin)
    admin.action("load", "org/m2")
    assert admin.models()["org/m2"]["state"] == "loaded"
    admin.action("pin", "org/m2")
    assert admin.models()["org/m2"]["pinned"] is True
    admin.action("unpin", "org/m2")
    assert admin.models()["org/m2"]["pinned"] is False
    admin.action("default", "org/m2")
    assert admin.models()["org/m2"]["default"] is True
    r = requests.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=120)
    assert r.status_code == 200 and r.json()["model"] == "org/m2", r.text
    admin.action("default", "m1")
    admin.action("unload", "org/m2")
    assert admin.models()["org/m2"]["state"] == "available"
    for kind in ("model_loaded", "model_pinned", "model_unpinned", "default_changed", "model_unloaded"):
        events.wait_for(lambda e, k=kind: e["type"] == k and e.get("model") == "org/m2")

    # Serving off: new requests get a clear 503; models stay loaded. Back on: served again.
    admin.post("/serving/stop")
    assert admin.get("/serving").json() == {"serving": False}
    assert admin.status()["state"] == "stopped"
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    h = {"Authorization": f"Bearer {KEY}"}
    r = requests.post(f"{url}/v1/chat/completions", headers=h, json=body, timeout=60)
    assert r.status_code == 503 and "stopped" in r.json()["error"]["message"], r.text
    assert "m1" in admin.loaded()
    admin.post("/serving/start")
    assert requests.post(f"{url}/v1/chat/completions", headers=h, json=body, timeout=120).status_code == 200
    events.wait_for(lambda e: e["type"] == "serving_changed" and e["serving"] is False)
    events.wait_for(lambda e: e["type"] == "serving_changed" and e["serving"] is True)

    # The SSD cache switch: off and on at runtime, each change an event; repeating is a no-op.
    r = admin.post("/cache", {"enabled": False})
    assert r.status_code == 200 and r.json()["changed"] is True, r.text
    assert r.json()["ssd_cache"]["enabled"] is False
    assert admin.get("/cache").json()["enabled"] is False
    assert admin.status()["ssd_cache"]["enabled"] is False
    assert admin.post("/cache", {"enabled": False}).json()["changed"] is False
    r = admin.post("/cache", {"enabled": True})
    assert r.status_code == 200 and r.json()["changed"] is True and r.json()["ssd_cache"]["enabled"] is True
    assert admin.get("/cache").json()["enabled"] is True
    off = events.wait_for(lambda e: e["type"] == "cache_toggled" and e["enabled"] is False)
    on = events.wait_for(lambda e: e["type"] == "cache_toggled" and e["enabled"] is True)
    assert off["seq"] < on["seq"] and on["ssd_cache"]["enabled"] is True
    assert len([e for e in events.events if e["type"] == "cache_toggled"]) == 2

    # Runtime settings round trip; bad values are 400 naming the field.
    r = admin.patch("/settings", {"idle_ttl_secs": 600, "memory_pressure_threshold": "1%"})
    assert r.status_code == 200, r.text
    s = admin.get("/settings").json()
    assert s["idle_ttl_secs"] == 600 and s["memory_pressure_threshold"] == "1%"
    r = admin.patch("/settings", {"memory_budget": "lots"})
    assert r.status_code == 400 and "memory_budget" in r.text
    r = admin.patch("/settings", {"no_such_setting": 1})
    assert r.status_code == 400
    admin.patch("/settings", {"idle_ttl_secs": -1, "memory_pressure_threshold": "0%"})
    events.close()


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "enabled"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": 1}, "enabled"),
        ({"enabled": None}, "enabled"),
        ({"enabled": True, "persist": True}, "persist"),
        ([True], "body"),
        ("off", "body"),
    ],
)
def test_bad_cache_bodies_are_400(admin, body, param):
    before = admin.get("/cache").json()["enabled"]
    r = requests.post(admin.url + "/cache", json=body, headers=admin.headers, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"], err
    assert admin.get("/cache").json()["enabled"] is before


def test_cache_body_that_is_not_json_is_400(admin):
    for data, ctype in ((b"{enabled: true}", "application/json"), (b"\xff\xfe", "application/json"),
                        (b"enabled=true", "application/x-www-form-urlencoded"), (b"", "application/json")):
        r = requests.post(admin.url + "/cache", data=data, timeout=30,
                          headers={**admin.headers, "Content-Type": ctype})
        assert r.status_code == 400, (data, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_cache_switch_without_an_ssd_tier(tmp_path):
    """Prefix caching off: no tier to switch; off is a no-op, on is 409, both say so."""
    with running_daemon(tmp_path, extra_env={"WUWEI_KV_CACHE": "0", "WUWEI_WEIGHTS": "native"}) as url:
        a = Admin(url)
        assert a.get("/cache").json()["available"] is False
        r = a.post("/cache", {"enabled": False})
        assert r.status_code == 200 and r.json()["changed"] is False
        r = a.post("/cache", {"enabled": True})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "ssd_cache_unavailable"
        assert r.json()["ssd_cache"]["available"] is False


@pytest.mark.parametrize("bad", ["../x", "../../etc/passwd", "/etc/passwd", "a\u0000b", "m1/../m1", ""])
def test_bad_model_ids_are_400(admin, daemon, bad):
    for action in ("load", "unload", "pin", "unpin", "default"):
        r = admin.post(f"/models/{action}", {"model": bad})
        assert r.status_code == 400, (action, bad, r.text)
        assert r.json()["error"]["param"] == "model"
    # An unknown but well-formed id is 404, not a file-system lookup.
    assert admin.post("/models/load", {"model": "nope"}).status_code == 404


def test_cli_commands(admin, daemon):
    url = daemon[0]
    binary = Path(os.environ.get("WUWEI_BIN", REPO_ROOT / "target" / "release" / "wuwei"))
    env = dict(os.environ, WUWEI_URL=url, WUWEI_API_KEY=KEY)

    def cli(*args, ok=True):
        p = subprocess.run([str(binary), *args], env=env, capture_output=True, text=True, timeout=300)
        assert (p.returncode == 0) == ok, (args, p.stdout, p.stderr)
        return p.stdout + p.stderr

    out = cli("ls")
    assert "m1" in out and "org/m2" in out
    cli("load", "org/m2")
    assert "org/m2" in cli("ps")
    cli("pin", "org/m2")
    assert admin.models()["org/m2"]["pinned"]
    cli("unpin", "org/m2")
    cli("unload", "org/m2")
    assert admin.models()["org/m2"]["state"] == "available"
    cli("stop")
    assert admin.status()["serving"] is False
    cli("start")
    assert admin.status()["serving"] is True
    assert "bad model id" in cli("load", "../x", ok=False)
    bad_env = dict(env, WUWEI_API_KEY="wrong")
    p = subprocess.run([str(binary), "ls"], env=bad_env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "401" in p.stderr


def test_shutdown_call_drains_and_exits_cleanly(tmp_path):
    """`POST /admin/api/shutdown` (the app's "Quit and stop the daemon" for a daemon it did
    not start) ends the daemon as SIGTERM does: a stream already running finishes, new
    connections are refused, and the process exits 0 (checked by running_daemon)."""
    # A grace period long enough for the stream on a loaded CI machine: the test is about
    # draining, not about the default's length.
    env = {"WUWEI_API_KEY": KEY, "WUWEI_WEIGHTS": "native", "WUWEI_SHUTDOWN_GRACE_SECS": "60"}
    with running_daemon(tmp_path, extra_env=env) as url:
        assert Admin(url).post("/shutdown", {}).status_code == 401
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {"max_tokens": 16, "temperature": 0, "stream": True,
                "messages": [{"role": "user", "content": "Count to twenty."}]}
        with requests.post(f"{url}/v1/chat/completions", json=body, headers=headers,
                           stream=True, timeout=120) as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith(b"data: "))
            r = requests.post(f"{url}/admin/api/shutdown", headers=headers, json={}, timeout=10)
            assert r.status_code == 202, r.text
            assert r.json()["stopping"] is True
            rest = [line for line in lines if line.startswith(b"data: ")]
        assert first and rest[-1] == b"data: [DONE]", "the running stream finished"

        def gone():
            try:
                requests.get(f"{url}/health", timeout=2)
                return False
            except requests.ConnectionError:
                return True
        wait_until(gone, 30, "the daemon to stop listening")
    log = (tmp_path / "daemon.log").read_text()
    assert "shutdown asked through the admin API" in log
