"""Shared helpers of the registry and admin end-to-end tests: model folder copies, admin calls,
and an event collector reading the admin SSE stream."""

import json
import shutil
import threading
import time
from pathlib import Path

import requests

import os


def model_source_dir() -> Path:
    return Path(os.environ["WUWEI_TEST_MODELS"]) / "SmolLM2-135M-Instruct"


def copy_model(dest: Path) -> Path:
    shutil.copytree(model_source_dir(), dest)
    return dest


class Admin:
    def __init__(self, url, key=None):
        self.url = f"{url}/admin/api"
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def get(self, path, **kw):
        return requests.get(self.url + path, headers=self.headers, timeout=120, **kw)

    def post(self, path, body=None, **kw):
        return requests.post(self.url + path, json=body or {}, headers=self.headers, timeout=300, **kw)

    def patch(self, path, body):
        return requests.patch(self.url + path, json=body, headers=self.headers, timeout=60)

    def models(self):
        r = self.get("/models")
        assert r.status_code == 200, r.text
        return {m["id"]: m for m in r.json()["models"]}

    def status(self):
        r = self.get("/status")
        assert r.status_code == 200, r.text
        return r.json()

    def loaded(self):
        return {m["id"] for m in self.status()["loaded"]}

    def action(self, what, model):
        r = self.post(f"/models/{what}", {"model": model})
        assert r.status_code == 200, r.text
        return r.json()

    def events(self, since=0, wait_s=0.0):
        """Remembered events (replayed from the SSE stream)."""
        collector = EventCollector(self, since=since)
        time.sleep(wait_s)
        collector.close()
        return collector.events


class EventCollector:
    """Reads /admin/api/events in a background thread."""

    def __init__(self, admin: Admin, since=None):
        self.events = []
        params = {} if since is None else {"since": since}
        self.response = requests.get(
            admin.url + "/events", headers=admin.headers, stream=True, timeout=60, params=params
        )
        assert self.response.status_code == 200, self.response.text
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)
        time.sleep(0.3)

    def _run(self):
        try:
            for line in self.response.iter_lines(decode_unicode=True):
                self.ready.set()
                if line and line.startswith("data: "):
                    self.events.append(json.loads(line[6:]))
        except Exception:
            pass

    def wait_for(self, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in list(self.events):
                if predicate(e):
                    return e
            time.sleep(0.1)
        raise AssertionError(f"no matching event in {timeout}s; got {self.events}")

    def close(self):
        self.response.close()


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
