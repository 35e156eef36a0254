"""Web pages and the local daemon: a page on another site (cross-site request forgery) or a
hostile name rebound to 127.0.0.1 (DNS rebinding) gets 403 in each API's error shape and
changes nothing; the daemon's own pages and local web UIs keep working, the latter with CORS.
Clients that are not browsers send no Origin and are unaffected (every other test)."""

import anthropic
import openai
import pytest
import requests

EVIL = "https://evil.example"


def test_openai_sdk_from_a_foreign_origin_is_refused(base_url, model_id):
    page = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0,
                         default_headers={"Origin": EVIL})
    with pytest.raises(openai.PermissionDeniedError) as e:
        page.chat.completions.create(model=model_id, max_tokens=2,
                                     messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 403
    assert e.value.body["code"] == "origin_not_allowed" and EVIL in e.value.body["message"]


def test_anthropic_sdk_from_a_foreign_origin_is_refused(base_url, model_id):
    page = anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=0,
                               default_headers={"Origin": EVIL})
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        page.messages.create(model=model_id, max_tokens=2,
                             messages=[{"role": "user", "content": "Hi"}])
    body = e.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "permission_error", body


def _serving(base_url):
    return requests.get(f"{base_url}/admin/api/serving", timeout=10).json()["serving"]


@pytest.mark.parametrize("headers", [
    {"Origin": EVIL},                     # a page on another site, fire-and-forget POST
    {"Origin": "null"},                   # a sandboxed frame or a file: page
    {"Host": "evil.example:8686"},        # DNS rebinding: the page's own name, resolved to us
    {"Host": "evil.example", "Origin": "http://evil.example"},
])
def test_admin_actions_from_web_pages_change_nothing(base_url, headers):
    assert _serving(base_url) is True
    r = requests.post(f"{base_url}/admin/api/serving/stop", headers=headers, timeout=10)
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["type"] == "permission_error" and err["code"] in ("origin_not_allowed", "host_not_allowed")
    r = requests.get(f"{base_url}/admin/api/status", headers=headers, timeout=10)
    assert r.status_code == 403, r.text
    assert _serving(base_url) is True, "a refused request stopped serving"


def test_own_pages_and_local_web_uis_work(base_url, model_id):
    port = base_url.rsplit(":", 1)[1]
    body = {"model": model_id, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    # The dashboard calls the daemon from its own origin.
    r = requests.post(f"{base_url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Origin": f"http://127.0.0.1:{port}"})
    assert r.status_code == 200, r.text
    # A web UI on another local port: preflight, then the request, both with CORS headers.
    ui = "http://localhost:3000"
    pre = requests.options(f"{base_url}/v1/chat/completions", timeout=10, headers={
        "Origin": ui, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization"})
    assert pre.status_code in (200, 204), pre.text
    assert pre.headers["access-control-allow-origin"] == ui
    assert "post" in pre.headers["access-control-allow-methods"].lower()
    r = requests.post(f"{base_url}/v1/chat/completions", json=body, timeout=60, headers={"Origin": ui})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ui
    # localhost as the host name is loopback too.
    r = requests.get(f"http://localhost:{port}/v1/models", timeout=10)
    assert r.status_code == 200 and r.json()["data"]
