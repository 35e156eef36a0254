"""Model registry end to end: the folder watcher, integrity checks, and the memory guard
(budget, LRU eviction, pinning, busy models, 507, memory pressure, idle TTL), against the real
daemon and real copies of the test model."""

import json
import shutil
import threading
import time

import pytest
import requests

from conftest import running_daemon
from registry_helpers import Admin, EventCollector, copy_model, model_source_dir, wait_until


def chat(url, model, max_tokens=4, stream=False, prompt="Say hi"):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return requests.post(f"{url}/v1/chat/completions", json=body, stream=stream, timeout=300)


def v1_ids(url):
    return {m["id"] for m in requests.get(f"{url}/v1/models", timeout=10).json()["data"]}


def test_watcher_add_remove_and_missing_shard(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    copy_model(models / "first")
    src = model_source_dir()
    monkeypatch.setenv("WUWEI_TEST_MODELS", str(models))
    with running_daemon(tmp_path, extra_env={"WUWEI_WEIGHTS": "native"}) as url:
        admin = Admin(url)
        assert v1_ids(url) == {"first"}
        events = EventCollector(admin)

        # Added (two levels deep, org/name): listed within 2 s of the copy finishing.
        shutil.copytree(src, models / "org" / "second")
        copied = time.monotonic()
        wait_until(lambda: "org/second" in v1_ids(url), 5, "org/second in /v1/models")
        assert time.monotonic() - copied < 2.5
        assert admin.models()["org/second"]["state"] == "available"
        events.wait_for(lambda e: e["type"] == "model_discovered" and e["model"] == "org/second")

        # Renamed: the old id goes, the new one comes.
        (models / "org" / "second").rename(models / "org" / "renamed")
        wait_until(lambda: v1_ids(url) == {"first", "org/renamed"}, 3, "rename seen")
        events.wait_for(lambda e: e["type"] == "model_removed" and e["model"] == "org/second")

        # Removed.
        shutil.rmtree(models / "org")
        wait_until(lambda: v1_ids(url) == {"first"}, 3, "removal seen")
        assert "org/renamed" not in admin.models()

        # A sharded model with a shard missing: listed as incomplete with the reason, not
        # offered by /v1/models, never loaded.
        broken = models / "broken"
        broken.mkdir()
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(src / name, broken / name)
        header_len = int.from_bytes((src / "model.safetensors").read_bytes()[:8], "little")
        header = json.loads((src / "model.safetensors").read_bytes()[8 : 8 + header_len])
        names = [k for k in header if k != "__metadata__"]
        half = len(names) // 2
        weight_map = {n: "model-00001-of-00002.safetensors" for n in names[:half]}
        weight_map.update({n: "model-00002-of-00002.safetensors" for n in names[half:]})
        shutil.copy(src / "model.safetensors", broken / "model-00001-of-00002.safetensors")
        (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        m = wait_until(lambda: admin.models().get("broken"), 3, "broken listed")
        assert m["state"] == "incomplete", m
        assert "model-00002-of-00002.safetensors" in m["reason"], m
        assert "broken" not in v1_ids(url)
        r = chat(url, "broken")
        assert r.status_code == 400, r.text
        assert "incomplete" in r.json()["error"]["message"]
        r = admin.post("/models/load", {"model": "broken"})
        assert r.status_code == 400, r.text
        assert admin.models()["broken"]["state"] == "incomplete"
        events.close()


@pytest.fixture
def three_models(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a", "b", "c"):
        copy_model(models / name)
    monkeypatch.setenv("WUWEI_TEST_MODELS", str(models))
    return models


def estimate(url):
    """Memory one copy of the test model is counted for (weights + reserved KV)."""
    r = requests.get(f"{url}/admin/api/models", timeout=10).json()
    return r["models"][0]["estimated_memory_bytes"]


class ActiveSampler:
    """Samples MLX's active memory from the status endpoint in the background."""

    def __init__(self, admin):
        self.admin, self.samples, self.stop = admin, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                m = self.admin.status()["memory"]
                self.samples.append((m["mlx"]["active_bytes"], m["budget_bytes"]))
            except Exception:
                pass
            time.sleep(0.05)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        return self.samples


def test_budget_lru_pinning_busy_and_507(tmp_path, three_models):
    # Native weights: the load peak equals the steady size, so "room for two" is exact.
    env = {"WUWEI_WEIGHTS": "native", "WUWEI_KV_RESERVE_TOKENS": "512", "WUWEI_DEFAULT_MODEL": "a"}
    # First learn the estimate, then run with a budget of two and a half models.
    with running_daemon(tmp_path, extra_env=env) as url:
        one = estimate(url)
    budget = int(one * 2.5)
    env["WUWEI_MEMORY_BUDGET"] = str(budget)
    with running_daemon(tmp_path, extra_env=env) as url:
        admin = Admin(url)
        sampler = ActiveSampler(admin)
        events = EventCollector(admin, since=0)
        assert admin.status()["memory"]["budget_bytes"] == budget
        wait_until(lambda: admin.loaded() == {"a"}, 60, "default model a loaded at start")

        # LRU: a, then b loaded; a used again; loading c evicts b (least recently used).
        admin.action("load", "b")
        assert admin.loaded() == {"a", "b"}
        assert chat(url, "a").status_code == 200
        admin.action("load", "c")
        assert admin.loaded() == {"a", "c"}
        events.wait_for(lambda e: e["type"] == "model_evicted" and e["model"] == "b" and e["reason"] == "budget")

        # Pinned is never evicted: pin a, use c (so a is LRU), load b: c goes, not a.
        admin.action("pin", "a")
        assert chat(url, "c").status_code == 200
        admin.action("load", "b")
        assert admin.loaded() == {"a", "b"}
        events.wait_for(lambda e: e["type"] == "model_evicted" and e["model"] == "c")

        # A model with an active stream is never evicted: stream on b (unpinned), then
        # loading c must not take b; with a pinned and b busy nothing can go: 507.
        stream = chat(url, "b", max_tokens=60, stream=True, prompt="Write a long story about a dragon who learns to bake bread.")
        assert stream.status_code == 200
        lines = stream.iter_lines(decode_unicode=True)
        first = next(l for l in lines if l.startswith("data: "))
        assert json.loads(first[6:])["choices"]
        r = admin.post("/models/load", {"model": "c"})
        assert r.status_code == 507, r.text
        msg = r.json()["error"]["message"]
        assert "Pinned: a" in msg and "Busy: b" in msg and "missing" in msg, msg
        r = chat(url, "c")
        assert r.status_code == 507, r.text
        # Pinning a model that cannot load fails the same way and leaves it unpinned.
        r = admin.post("/models/pin", {"model": "c"})
        assert r.status_code == 507, r.text
        assert admin.models()["c"]["pinned"] is False
        # The stream finishes normally.
        rest = [l for l in lines if l.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        assert admin.loaded() == {"a", "b"}
        events.wait_for(lambda e: e["type"] == "load_failed" and e["model"] == "c")

        # Once b is idle, c can load (b evicted by budget).
        admin.action("load", "c")
        assert admin.loaded() == {"a", "c"}

        # Manual unload; pinned cannot be unloaded before unpinning.
        assert admin.post("/models/unload", {"model": "a"}).status_code == 400
        admin.action("unpin", "a")
        admin.action("unload", "a")
        assert admin.loaded() == {"c"}
        events.wait_for(lambda e: e["type"] == "model_unloaded" and e["model"] == "a" and e["reason"] == "manual")

        samples = sampler.close()
        events.close()
        assert samples, "no memory samples"
        worst = max(active for active, _ in samples)
        assert worst <= budget * 1.05, f"MLX active memory {worst} exceeded the budget {budget} by more than 5%"
        peak = admin.status()["memory"]["mlx"]["peak_bytes"]
        assert peak <= budget * 1.05, f"MLX peak memory {peak} exceeded the budget {budget}"


def test_memory_pressure_and_idle_ttl(tmp_path, three_models):
    env = {
        "WUWEI_WEIGHTS": "native",
        "WUWEI_KV_RESERVE_TOKENS": "512",
        "WUWEI_DEFAULT_MODEL": "a",
        "WUWEI_PINNED": "a",
        "WUWEI_MONITOR_INTERVAL_MS": "200",
    }
    with running_daemon(tmp_path, extra_env=env) as url:
        admin = Admin(url)
        events = EventCollector(admin, since=0)
        wait_until(lambda: "a" in admin.loaded(), 60, "pinned a loaded at start")
        admin.action("load", "b")
        admin.action("load", "c")
        assert chat(url, "c").status_code == 200  # b is now the least recently used

        # Simulated pressure: every byte counts as needed. Idle unpinned models go, LRU
        # first, each with reason memory_pressure; the pinned one stays.
        r = admin.patch("/settings", {"memory_pressure_threshold": "100%"})
        assert r.status_code == 200, r.text
        first = events.wait_for(lambda e: e["type"] == "model_evicted" and e["reason"] == "memory_pressure")
        assert first["model"] == "b"
        events.wait_for(lambda e: e["type"] == "model_evicted" and e["model"] == "c" and e["reason"] == "memory_pressure")
        assert admin.loaded() == {"a"}
        admin.patch("/settings", {"memory_pressure_threshold": "0%"})

        # Idle TTL 0: unloaded right after its request.
        admin.patch("/settings", {"idle_ttl_secs": 0})
        assert chat(url, "b").status_code == 200
        events.wait_for(lambda e: e["type"] == "model_evicted" and e["model"] == "b" and e["reason"] == "ttl", timeout=10)
        assert admin.loaded() == {"a"}, "pinned models ignore the TTL"
        events.close()
