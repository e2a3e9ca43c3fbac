"""The app in-process (FastAPI's TestClient): the guard in front of the routes, and how errors leave."""

from __future__ import annotations

import logging

import pytest

from fewshot.errors import FewshotError
from fewshot.inference.lm import LM
from fewshot.serve import ServeOptions, create_app
from tests.conftest import tiny_lm

LIMIT_MB = 0.01  # 10,000 bytes


@pytest.fixture(scope="module")
def lm() -> LM:
    return tiny_lm(64)


@pytest.fixture(scope="module")
def client(lm):
    from fastapi.testclient import TestClient

    app = create_app(lm, ServeOptions(model_name="nano", api_key="k", max_body_mb=LIMIT_MB))
    with TestClient(app, raise_server_exceptions=False, headers={"authorization": "Bearer k"}) as client:
        yield client


def openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert code is None or error["code"] == code
    return error


def test_a_wrong_key_is_refused_before_the_body_is_read(client):
    # Malformed and too big: a 401 all the same, so the body was never looked at.
    for headers in ({"authorization": "Bearer nope"}, {"authorization": ""}):
        response = client.post("/v1/completions", content=b"{" * 50_000, headers=headers)
        openai_error(response, 401, "invalid_api_key")
    assert client.get("/health", headers={"authorization": ""}).status_code == 200  # /health needs no key


def test_a_body_over_the_limit_is_413_by_length_and_by_counting_chunks(client):
    error = openai_error(client.post("/v1/completions", content=b"x" * 10_001), 413, "request_too_large")
    assert error["type"] == "invalid_request_error" and error["param"] is None

    def chunks():
        for _ in range(20):
            yield b"x" * 1000

    openai_error(client.post("/v1/completions", content=chunks()), 413, "request_too_large")  # no Content-Length
    assert client.post("/v1/completions", json={"prompt": "a" * 9000, "max_tokens": 1}).status_code == 400  # fits; too long a prompt


def test_a_failing_chat_template_is_a_400_on_messages(client, lm, monkeypatch):
    def failing(messages):
        raise FewshotError("chat: ZeroDivisionError: division by zero (raised by the chat template of the model)")

    monkeypatch.setattr(lm, "chat_prompt", failing)
    response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    error = openai_error(response, 400)
    assert error["param"] == "messages" and error["message"].startswith("chat:")


def test_a_bug_is_a_generic_500_and_one_logged_traceback(client, lm, monkeypatch, caplog):
    def buggy(messages):
        return 1 / 0

    monkeypatch.setattr(lm, "chat_prompt", buggy)
    with caplog.at_level(logging.ERROR, logger="fewshot.serve"):
        response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    error = openai_error(response, 500, "internal_error")
    assert error["message"] == "internal error; see the server log" and "division" not in response.text
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and logged[0].exc_info[0] is ZeroDivisionError
