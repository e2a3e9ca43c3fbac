"""fewshot.serve.protocol: OpenAI request bodies -> engine requests, and results -> OpenAI responses."""

import pytest

from fewshot.inference.lm import LM
from fewshot.serve.engine import Finished
from fewshot.serve.protocol import APIError, chat_plan, chat_response, completion_plan, completion_response
from fewshot.serve.schemas import ChatRequest, CompletionRequest
from tests.conftest import tiny_lm

CONTEXT = 64


@pytest.fixture(scope="module")
def lm() -> LM:
    return tiny_lm(CONTEXT)


def finished(sample: int, text: str, logprob_sum: float = 0.0) -> Finished:
    return Finished(sample, text, tuple(text.encode()), "length", (), (), logprob_sum)


def test_a_prompt_that_leaves_no_room_for_max_tokens_is_a_400_on_prompt(lm: LM) -> None:
    with pytest.raises(APIError) as caught:
        completion_plan(CompletionRequest(prompt="x" * (CONTEXT - 4), max_tokens=8), lm)
    assert caught.value.status == 400
    assert caught.value.body()["error"]["param"] == "prompt"
    assert caught.value.body()["error"]["code"] == "context_length_exceeded"
    completion_plan(CompletionRequest(prompt="x" * (CONTEXT - 8), max_tokens=8), lm)  # exactly full fits


def test_best_of_below_n_and_streamed_best_of_are_400s_on_best_of(lm: LM) -> None:
    for body in (CompletionRequest(prompt="a", n=3, best_of=2), CompletionRequest(prompt="a", n=1, best_of=2, stream=True)):
        with pytest.raises(APIError) as caught:
            completion_plan(body, lm)
        assert caught.value.status == 400 and caught.value.body()["error"]["param"] == "best_of"


def test_sampling_options_map_onto_the_engine_request(lm: LM) -> None:
    plan = completion_plan(CompletionRequest(prompt=["ab", "cde"], n=2, best_of=3, max_tokens=5, temperature=0.5,
                                             stop="\n", seed=-1, logit_bias={"65": 3.0}), lm)
    options = plan.request.options
    assert plan.request.prompts == (tuple(b"ab"), tuple(b"cde")) and plan.prompt_tokens == 5
    assert options.n == 3 and plan.n == 2 and plan.request.rank  # best_of samples, n returned, ranked
    assert options.temperature == 0.5 and options.stop == ("\n",) and plan.request.max_tokens == 5
    assert options.seed == 2**64 - 1  # the API's signed seed, wrapped into torch's range
    assert options.logit_bias == ((65, 3.0),)


def test_a_logit_bias_id_outside_the_vocabulary_is_a_400(lm: LM) -> None:
    # It used to be dropped silently; the library refuses it too (SamplingOptions.check_vocab).
    with pytest.raises(APIError) as caught:
        completion_plan(CompletionRequest(prompt="a", logit_bias={"65": 3.0, "99999": 5.0}), lm)
    error = caught.value.body()["error"]
    assert caught.value.status == 400 and error["param"] == "logit_bias" and "99999" in error["message"]
    with pytest.raises(APIError) as caught:
        chat_plan(ChatRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=1, logit_bias={"260": 1.0}), lm)
    assert caught.value.body()["error"]["param"] == "logit_bias"


def test_counts_are_checked_before_anything_is_tokenised(lm: LM, monkeypatch) -> None:
    import fewshot.serve.protocol as protocol

    monkeypatch.setattr(protocol, "prompt_token_ids", lambda *a: pytest.fail("tokenised before the count check"))
    with pytest.raises(APIError) as caught:
        completion_plan(CompletionRequest(prompt=["a"] * 1025, best_of=2, max_tokens=1), lm)
    assert caught.value.body()["error"]["param"] == "prompt"
    monkeypatch.setattr(lm, "chat_prompt", lambda *a: pytest.fail("rendered before the count check"))
    with pytest.raises(APIError) as caught:
        chat_plan(ChatRequest(messages=[{"role": "user", "content": "x"}] * (protocol.MAX_MESSAGES + 1)), lm)
    assert caught.value.body()["error"]["param"] == "messages"


def test_a_bad_sampling_value_is_a_400_naming_its_param(lm: LM) -> None:
    with pytest.raises(APIError) as caught:
        completion_plan(CompletionRequest(prompt="a", max_tokens=1, logit_bias={"1": float("nan")}), lm)
    assert caught.value.status == 400 and caught.value.body()["error"]["param"] == "logit_bias"


def test_best_of_keeps_each_prompts_most_likely_samples_in_order(lm: LM) -> None:
    plan = completion_plan(CompletionRequest(prompt=["a", "b"], n=1, best_of=2, max_tokens=2), lm)
    samples = [finished(0, "xx", -4.0), finished(1, "yy", -1.0), finished(2, "zz", -0.5), finished(3, "ww", -9.0)]
    picked = plan.pick(samples)
    assert [(index, f.text) for index, f in picked] == [(0, "yy"), (1, "zz")]


def test_a_completion_response_has_one_choice_per_prompt_and_n_with_usage(lm: LM) -> None:
    plan = completion_plan(CompletionRequest(prompt=["ab", "c"], n=2, max_tokens=2), lm)
    samples = [finished(i, text) for i, text in enumerate(["p", "qq", "r", "ss"])]
    body = completion_response(lm, plan, samples, "cmpl-1", 123, "tiny")
    assert body["object"] == "text_completion" and body["model"] == "tiny" and body["created"] == 123
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "p", "length"), (1, "qq", "length"), (2, "r", "length"), (3, "ss", "length")]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}


def test_a_chat_request_renders_the_template_and_answers_as_chat_completion(lm: LM) -> None:
    plan = chat_plan(ChatRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=3), lm)
    assert bytes(plan.request.prompts[0]).decode() == "User: Hi\nAssistant:"
    assert "\nUser:" in plan.request.options.stop
    body = chat_response(lm, plan, [finished(0, " Hello")], "chatcmpl-1", 5, "tiny")
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": " Hello"}
    assert body["usage"]["completion_tokens"] == len(" Hello")
