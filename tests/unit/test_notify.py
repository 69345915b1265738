"""Webhook notifications (worker/notify) against a real HTTP server on 127.0.0.1: what is
posted, retries and give-ups, a slow webhook, the bounded queue, and no patient data."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from webhook_server import WebhookServer, refused_url

from worker.config import load_settings
from worker.errors import ConfigError
from worker.notify import Dispatcher, notify_now, open_dispatcher
from worker.notify.delivery import Webhook
from worker.notify.events import item_data
from worker.notify.payload import envelope
from worker.runtime.retry import RetryPolicy

QUICK = {"notify.backoff_base": "0.01", "notify.backoff_cap": "0.02", "notify.timeout": "2"}


def settings(*urls: str, **more: str):
    overrides = {**QUICK, "notify.urls": ",".join(urls), **{k.replace("__", "."): v for k, v in more.items()}}
    return load_settings(None, environ={}, overrides=overrides)


@pytest.fixture
def hook():
    server = WebhookServer()
    yield server
    server.close()


def test_notify_now_posts_the_event_as_json_with_the_bearer_token(hook, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "s3cret")
    named = settings(hook.url, notify__token_env="HOOK_TOKEN")  # noqa: S106 (a variable's name)
    ok = notify_now(named, "drift", {"figure": "positive_rate", "p": 0.001})
    assert ok is True
    [request] = hook.requests
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["json"]
    assert body["source"] == "xray-screen" and body["event"] == "drift"
    assert body["data"] == {"figure": "positive_rate", "p": 0.001}
    assert body["time"].endswith("Z") and body["host"]


def test_notify_now_is_a_no_op_without_webhooks_or_for_an_event_not_chosen(hook):
    assert notify_now(settings(), "drift", {}) is True
    assert notify_now(settings(hook.url, notify__events="failure"), "drift", {}) is True
    assert hook.requests == []


def test_a_token_variable_that_is_not_set_is_a_configuration_error(hook, caplog):
    s = settings(hook.url, notify__token_env="NOT_SET_ANYWHERE_X")  # noqa: S106 (a variable's name)
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE_X"):
        open_dispatcher(s)
    assert notify_now(s, "drift", {}) is False  # never raises
    assert hook.requests == []


def test_a_webhook_that_is_down_is_retried_then_given_up_without_raising(caplog):
    caplog.set_level(logging.WARNING)
    ok = notify_now(settings(refused_url(), notify__max_attempts="3"), "failure", {"path": "x"})
    assert ok is False
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2
    assert any("not delivered after 3 attempts" in r.getMessage() for r in caplog.records)


def test_a_5xx_is_retried_until_the_webhook_answers():
    server = WebhookServer(statuses=[503, 502])
    try:
        assert notify_now(settings(server.url, notify__max_attempts="3"), "stopped", {}) is True
        assert len(server.requests) == 3
    finally:
        server.close()


def test_a_4xx_is_final_not_retried():
    server = WebhookServer(statuses=[404])
    try:
        assert notify_now(settings(server.url, notify__max_attempts="5"), "stopped", {}) is False
        assert len(server.requests) == 1
    finally:
        server.close()


def test_one_failing_webhook_of_two_makes_notify_now_false_but_the_other_gets_it(hook):
    assert notify_now(settings(hook.url, refused_url(), notify__max_attempts="1"), "drift", {}) is False
    assert len(hook.requests) == 1


def test_a_slow_webhook_is_cut_off_by_the_timeout():
    server = WebhookServer(hang=True)
    try:
        started = time.monotonic()
        ok = notify_now(
            settings(server.url, notify__timeout="0.3", notify__max_attempts="2"), "drift", {"x": 1}
        )
        assert ok is False
        assert time.monotonic() - started < 3.0  # two timeouts and a short backoff, not the hang
        assert server.wait_for(2, timeout=1)
    finally:
        server.close()


# -- the background dispatcher ----------------------------------------------------------


def dispatcher(url: str, *, queue_size: int = 100, flush: float = 5.0, timeout: float = 2.0) -> Dispatcher:
    return Dispatcher(
        [Webhook(url, timeout=timeout)],
        events=("positive", "failure", "started", "stopped"),
        policy=RetryPolicy(initial=0.01, maximum=0.01, attempts=2),
        queue_size=queue_size,
        flush_seconds=flush,
    )


def test_publish_never_waits_on_a_hanging_webhook():
    server = WebhookServer(hang=True)
    d = dispatcher(server.url, queue_size=1000, flush=0.1, timeout=0.5)
    try:
        started = time.monotonic()
        for n in range(500):
            d.publish("positive", {"n": n})
        assert time.monotonic() - started < 0.5  # the 500 publishes did not wait for the webhook
        assert server.wait_for(1)
    finally:
        d.close()
        server.close()


def test_a_full_queue_drops_the_oldest_and_counts_it():
    server = WebhookServer(hang=True)
    d = dispatcher(server.url, queue_size=2)
    try:
        d.publish("positive", {"n": 0})
        assert server.wait_for(1)  # n=0 is in flight, hanging; the queue is empty
        for n in range(1, 5):
            d.publish("failure", {"n": n})  # n=1 and n=2 are pushed out by n=3 and n=4
        assert d.counts()[("dropped", "failure")] == 2 and d.queued == 2
        server.release()
        assert d.wait_idle(10)
        assert [b["data"]["n"] for b in server.bodies()] == [0, 3, 4]
        assert d.counts()[("sent", "positive")] == 1 and d.counts()[("sent", "failure")] == 2
    finally:
        server.close()
        d.close()


def test_close_flushes_what_is_queued():
    server = WebhookServer()
    d = dispatcher(server.url)
    try:
        for event in ("started", "positive", "stopped"):
            d.publish(event, {})
        d.close()
        assert [b["event"] for b in server.bodies()] == ["started", "positive", "stopped"]
        d.publish("failure", {})  # closed: dropped, counted
        assert d.counts()[("dropped", "failure")] == 1
    finally:
        server.close()


def test_close_is_bounded_when_the_webhook_hangs():
    server = WebhookServer(hang=True)
    d = dispatcher(server.url, flush=0.3, timeout=0.5)
    try:
        for n in range(5):
            d.publish("positive", {"n": n})
        assert server.wait_for(1)
        started = time.monotonic()
        d.close()
        assert time.monotonic() - started < 0.3 + 0.5 + 1.5
        assert d.counts()[("dropped", "positive")] >= 3  # still queued when the flush ended
    finally:
        server.close()


def test_an_event_not_chosen_is_not_queued(hook):
    d = Dispatcher([Webhook(hook.url)], events=("failure",), policy=RetryPolicy(attempts=1))
    d.publish("positive", {"n": 1})
    assert d.queued == 0 and not d.wants("positive")
    d.close()
    assert hook.requests == []


# -- no patient data ------------------------------------------------------------------


class _Facts:
    sop_instance_uid = "1.2.3.4"
    study_instance_uid = "1.2.3"
    patient_id = "PID-12345"
    accession_number = "ACC-999"


class _Decoded:
    dicom = _Facts()


class _Prediction:
    decoded = _Decoded()


class _Item:
    event_id = "0b8f6d2e-aaaa-bbbb-cccc-000000000001"
    outcome = "screened"
    name = "/srv/inbox/1.2.3.4.dcm"
    destination = "/srv/processed/PNEUMONIA/2026-12-02/1.2.3.4.dcm"
    sha256 = "ab" * 32
    label = "PNEUMONIA"
    positive_probability = 0.93
    prediction = _Prediction()
    reason = None


def test_payloads_carry_ids_and_paths_but_no_patient_data_by_default(hook):
    data = {**item_data(_Item()), "patient_name": "DOE^JANE", "patient_birth_date": "19700101"}
    assert notify_now(settings(hook.url), "positive", data)
    sent = hook.bodies()[0]["data"]
    assert sent["sop_instance_uid"] == "1.2.3.4" and sent["content_sha256"] == "ab" * 32
    assert sent["path"].endswith("1.2.3.4.dcm") and sent["audit_event_id"].startswith("0b8f")
    text = str(hook.bodies())
    for secret in ("PID-12345", "ACC-999", "DOE^JANE", "19700101"):
        assert secret not in text


def test_include_patient_data_adds_the_ids_but_never_the_name_or_birth_date():
    data = {
        **item_data(_Item()),
        "patient_name": "DOE^JANE",
        "nested": {"patient_birth_date": "19700101"},
        "films": [{"patient_name": "DOE^JANE", "sop_instance_uid": "1.2"}],
    }
    sent = envelope("positive", data, include_patient_data=True)["data"]
    assert sent["patient_id"] == "PID-12345" and sent["accession_number"] == "ACC-999"
    assert "patient_name" not in sent and sent["nested"] == {}
    assert sent["films"] == [{"sop_instance_uid": "1.2"}]


def test_an_unknown_event_is_refused_by_the_settings(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"\[notify\] events"):
        settings("http://127.0.0.1:1/x", notify__events="positive,exploded")
    with pytest.raises(ConfigError, match=r"\[notify\] urls"):
        settings("ftp://example.org/x")
