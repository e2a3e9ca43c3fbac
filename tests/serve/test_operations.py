"""Operations endpoints in-process: /metrics, /tokenize, /detokenize, max_model_len, chat content parts."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fewshot.inference.lm import LM
from fewshot.serve import ServeOptions, create_app
from tests.conftest import tiny_lm

CONTEXT = 96


@pytest.fixture(scope="module")
def lm() -> LM:
    return tiny_lm(CONTEXT)


@pytest.fixture
def client(lm):
    from fastapi.testclient import TestClient

    with TestClient(create_app(lm, ServeOptions(model_name="nano", api_key="k")), raise_server_exceptions=False,
                    headers={"authorization": "Bearer k"}) as client:
        yield client


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, parsed by prometheus_client's own parser: (name, labels) -> value."""
    response = client.get("/metrics", headers={"authorization": ""})  # Prometheus sends no key
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_metrics_counters_move_by_what_the_requests_did(client, lm):
    before = scrape(client)
    prompt = "Input: cat\nOutput: tac\n\nInput: dog\nOutput:"  # 43 bytes: two full 16-token blocks
    for _ in range(3):
        response = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 5, "temperature": 0,
                                                        "logit_bias": {str(lm.tokenizer.eot_id): -100}})
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 5
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": -1}).status_code == 400
    assert client.post("/v1/completions", json={"prompt": "x"}, headers={"authorization": "Bearer no"}).status_code == 401
    after = scrape(client)

    def moved(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("fewshot_requests_total", route="/v1/completions", status="200") == 3
    assert moved("fewshot_requests_total", route="/v1/completions", status="400") == 1
    assert moved("fewshot_requests_total", route="/v1/completions", status="401") == 1
    assert moved("fewshot_prompt_tokens_total") == 3 * len(prompt)
    assert moved("fewshot_generation_tokens_total") == 15
    assert moved("fewshot_time_to_first_token_seconds_count") == 3
    assert moved("fewshot_inter_token_latency_seconds_count") == 3 * 4
    # Two full blocks (32 tokens) looked up per request; the first request stored them.
    assert moved("fewshot_prefix_cache_queried_tokens_total") == 3 * 32
    assert moved("fewshot_prefix_cache_hit_tokens_total") == 2 * 32
    assert after[("fewshot_num_requests_running", ())] == 0 and after[("fewshot_num_requests_waiting", ())] == 0
    assert after[("fewshot_prefix_cache_bytes", ())] > 0
    client.get("/no/such/path")
    assert scrape(client)[("fewshot_requests_total", (("route", "other"), ("status", "404")))] >= 1


def test_tokenize_and_detokenize_as_vllm_has_them(client, lm):
    response = client.post("/tokenize", json={"model": "nano", "prompt": "héllo", "return_token_strs": True})
    body = response.json()
    assert body["tokens"] == lm.tokenizer.encode("héllo") and body["count"] == len("héllo".encode())
    assert body["max_model_len"] == CONTEXT and len(body["token_strs"]) == body["count"]
    assert client.post("/detokenize", json={"tokens": body["tokens"]}).json() == {"prompt": "héllo"}
    messages = [{"role": "user", "content": "hi"}]
    chat = client.post("/tokenize", json={"messages": messages}).json()
    assert lm.tokenizer.decode(chat["tokens"]) == lm.chat_prompt(messages).text and chat["token_strs"] is None
    for bad, param in (({"prompt": "a", "messages": messages}, "messages"), ({}, "prompt"),
                       ({"prompt": "a", "model": "other"}, "model")):
        response = client.post("/tokenize", json=bad)
        assert response.status_code in (400, 404) and response.json()["error"]["param"] == param
    response = client.post("/detokenize", json={"tokens": [lm.model.config.vocab_size]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tokens"
    assert client.post("/tokenize", json={"prompt": "a"}, headers={"authorization": ""}).status_code == 401


def test_models_give_max_model_len_and_chat_takes_text_parts(client):
    (card,) = client.get("/v1/models").json()["data"]
    assert card["max_model_len"] == CONTEXT
    parts = {"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi"}]}
    joined = {"role": "user", "content": "Say\nhi"}
    answers = [client.post("/v1/chat/completions", json={"messages": [m], "max_tokens": 6, "temperature": 0}).json()
               for m in (parts, joined)]
    assert answers[0]["choices"][0]["message"] == answers[1]["choices"][0]["message"]
    assert answers[0]["usage"] == answers[1]["usage"]
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}
    response = client.post("/v1/chat/completions", json={"messages": [image]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
