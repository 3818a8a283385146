"""Switchyard's own rate limits as the official `openai` SDK sees them: a 429 `rate_limited`
carrying OpenAI's `x-ratelimit-*` headers and `Retry-After` / `retry-after-ms`, which the SDK's
built-in retry honours, so a client over its limit succeeds after waiting instead of failing.
A 402 `insufficient_balance` is not retried."""

import json
import re
import urllib.request

import openai
import pytest

PROMPT = [{"role": "user", "content": "hi"}]
RPM = 30


def call(base_url, key, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base_url + path, data=data, method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


def new_key(base_url, admin_key, project, limits=None):
    key = call(base_url, admin_key, "POST", "/v1/keys", {"project_id": project, "role": "member"})
    if limits:
        call(base_url, admin_key, "PATCH", f"/v1/keys/{key['id']}", {"limits": limits})
    return key["key"]


def key_refusals(base_url):
    with urllib.request.urlopen(base_url + "/metrics", timeout=30) as res:
        text = res.read().decode()
    m = re.search(r'^switchyard_rate_limited_total\{scope="key"\} (\d+)', text, re.M)
    return int(m.group(1)) if m else 0


def test_the_sdk_retry_honours_retry_after_and_then_succeeds(base_url, admin_key):
    key = new_key(base_url, admin_key, "sdk-rl", {"requests_per_minute": RPM})
    eager = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=30)
    # Spend the whole minute's burst; the refusal carries what an SDK paces by.
    for _ in range(RPM * 3):
        try:
            eager.chat.completions.create(model="chat-default", messages=PROMPT)
        except openai.RateLimitError as err:
            refusal = err
            break
    else:
        pytest.fail("the key's limit never refused")
    headers = refusal.response.headers
    assert refusal.status_code == 429
    assert refusal.body["code"] == "rate_limited"
    assert headers["x-ratelimit-limit-requests"] == str(RPM)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"\d+(ms|s|m\d+s)", headers["x-ratelimit-reset-requests"])
    # One request refills every 60/RPM seconds: within the SDK's 60 s ceiling for honouring it.
    assert 1 <= int(headers["retry-after"]) <= 60 // RPM + 1
    assert int(headers["retry-after-ms"]) > 0

    before = key_refusals(base_url)
    patient = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=3, timeout=30)
    res = patient.chat.completions.create(model="chat-default", messages=PROMPT)
    assert res.choices[0].message.content
    # The SDK was refused at least once and retried after the server's Retry-After.
    assert key_refusals(base_url) > before


def test_an_insufficient_balance_is_not_retried(base_url, admin_key):
    key = new_key(base_url, admin_key, "sdk-broke")
    call(base_url, admin_key, "POST", "/v1/projects/sdk-broke/balance", {"amount_micros": 0})
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=3, timeout=30)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="chat-default", messages=PROMPT)
    err = raised.value
    assert err.status_code == 402
    assert err.body["code"] == "insufficient_balance"
    assert err.body["type"] == "insufficient_quota"
    balance = call(base_url, key, "GET", "/v1/balance")
    assert balance["balance_micros"] == 0 and balance["held_micros"] == 0
