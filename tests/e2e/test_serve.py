"""The real server, as a user runs it: `python -m fewshot.serve RUN`, driven by the official openai client.

One trained nano model serves every test here; a second server with an API key and a
one-slot queue covers 401, 429 and a graceful SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import torch

import fewshot
from fewshot.train.loop import train
from tests.conftest import tiny_config

CONTEXT = 128
MODEL = "nano"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(run: Path, *args: str, timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """A server subprocess on a free port; yields (base URL, process) once /health answers."""
    port = free_port()
    command = [sys.executable, "-m", "fewshot.serve", str(run), "--port", str(port), "--model-name", MODEL,
               "--log-level", "warning", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited: {process.stdout.read()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


_RUNS: dict[Path, Path] = {}


def trained_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nano model with a 128-token context, trained once per session for every server test."""
    if data_dir not in _RUNS:
        out = tmp_path_factory.mktemp("serve") / "run"
        train(tiny_config(data_dir, out, max_steps=12, context=CONTEXT))
        _RUNS[data_dir] = out
    return _RUNS[data_dir]


@pytest.fixture(scope="module")
def run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(data_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def server(run: Path) -> Iterator[str]:
    with served(run, "--max-batch", "8") as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def lm(run: Path):
    return fewshot.load(run)


def test_greedy_completion_matches_the_library(client, lm):
    completion = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=20, temperature=0)
    assert completion.object == "text_completion" and completion.model == MODEL and completion.id.startswith("cmpl-")
    (choice,) = completion.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length") and choice.logprobs is None
    assert choice.text == lm.generate("ROMEO:", max_tokens=20, temperature=0)
    assert completion.usage.prompt_tokens == len("ROMEO:")
    assert completion.usage.completion_tokens == len(lm.tokenizer.encode(choice.text))


@pytest.mark.slow  # two builds of the compiled step for this shape: ~30 s
def test_serve_compile_answers_what_the_library_generates(run, lm, tmp_path):
    with served(run, "--compile", "--max-batch", "4", timeout=300) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        prompts = ["ROMEO:", "JULIET: my", "KING"]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            texts = list(pool.map(lambda p: client.completions.create(model=MODEL, prompt=p, max_tokens=20,
                                                                       temperature=0).choices[0].text, prompts))
    assert texts == [lm.generate(p, max_tokens=20, temperature=0) for p in prompts]


def test_same_seed_same_text(client):
    def sample(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt="KING:", max_tokens=30, seed=seed, temperature=1.0,
                                         top_p=0.9, extra_body={"top_k": 50}, presence_penalty=0.5, frequency_penalty=0.5,
                                         user="tests").choices[0].text

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_streaming_adds_up_to_the_same_text_and_ends_with_usage(client):
    expected = client.completions.create(model=MODEL, prompt="JULIET:", max_tokens=24, temperature=0).choices[0].text
    chunks = list(client.completions.create(model=MODEL, prompt="JULIET:", max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.encode())


def test_echo_logprobs_with_no_new_tokens_score_the_prompt(client, lm):
    prompt = "Good night, good night!"
    completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    (choice,) = completion.choices
    ids = lm.tokenizer.encode(prompt)
    expected = torch.log_softmax(lm.logits(ids), dim=-1)
    assert choice.text == prompt
    logprobs = choice.logprobs
    assert logprobs.tokens == [lm.tokenizer.decode([i]) for i in ids]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    for t in range(1, len(ids)):
        assert logprobs.token_logprobs[t] == pytest.approx(expected[t - 1, ids[t]].item(), abs=1e-4)
        assert 3 <= len(logprobs.top_logprobs[t]) <= 4  # the top 3, plus the chosen token if it is not among them
    assert logprobs.text_offset == list(range(len(prompt)))
    assert completion.usage.completion_tokens == 0


def test_lm_eval_style_scoring_of_token_id_prompts(client, lm):
    # lm-eval's local-completions: token ids, echo, logprobs=1, max_tokens=1; it reads [ctxlen:-1].
    contexts = [lm.tokenizer.encode("Q: 2+2?\nA:"), lm.tokenizer.encode("Q: 3+3?\nA:")]
    continuation = lm.tokenizer.encode(" 4")
    prompts = [c + continuation for c in contexts]
    completion = client.completions.create(model=MODEL, prompt=prompts, max_tokens=1, echo=True, logprobs=1,
                                           temperature=0)
    choices = sorted(completion.choices, key=lambda c: c.index)
    assert [c.index for c in choices] == [0, 1]
    for context, choice in zip(contexts, choices):
        total = sum(choice.logprobs.token_logprobs[len(context):-1])
        assert total == pytest.approx(lm.score(lm.tokenizer.decode(context), " 4"), abs=1e-3)


def test_n_and_best_of(client):
    completion = client.completions.create(model=MODEL, prompt=["A", "B"], max_tokens=8, n=2, best_of=3, seed=1,
                                           logit_bias={str(256): -100})
    assert sorted(c.index for c in completion.choices) == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" for c in completion.choices)  # no end-of-text: full length
    assert completion.usage.completion_tokens == 2 * 3 * 8  # every sample is billed, as the reference API does
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL, prompt="A", n=2, best_of=3, stream=True)
    assert error.value.body["param"] == "best_of"


def test_stop_sequences_are_cut_off(client):
    free = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=40, temperature=0).choices[0].text
    stop = free[15:17]
    cut = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=40, temperature=0, stop=[stop, "zzzz"])
    assert cut.choices[0].text == free[: free.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_chat_completions_plain_and_streamed(client, lm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Romeo?"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    expected = lm.chat(messages, max_tokens=12, temperature=0)[0].text
    assert chat.choices[0].message.content == expected
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                                 stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with_logprobs = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, logprobs=True,
                                                   top_logprobs=2)
    content = with_logprobs.choices[0].logprobs.content
    assert len(content) >= 1 and all(len(t.top_logprobs) == 2 for t in content)


def test_models_health_and_openapi(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"} <= set(spec["paths"])


def test_every_error_class_maps_to_its_openai_exception(client, server):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL, prompt="A", temperature=9)
    assert error.value.status_code == 400 and error.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL, prompt="A" * 100, max_tokens=100)
    assert error.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="A", extra_body={"n": "two"})
    with pytest.raises(openai.NotFoundError) as error:
        client.completions.create(model="gpt-17", prompt="A")
    assert error.value.code == "model_not_found"
    malformed = httpx.post(f"{server}/v1/completions", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and set(malformed.json()["error"]) == {"message", "type", "param", "code"}


def test_a_client_that_disconnects_cancels_its_work(server):
    body = {"model": MODEL, "prompt": "A", "max_tokens": CONTEXT - 1, "stream": True, "logit_bias": {"256": -100}}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=30) as response:
        next(response.iter_lines())  # it started
    deadline = time.monotonic() + 10
    while httpx.get(f"{server}/health").json()["running"] > 0:
        assert time.monotonic() < deadline, "the abandoned stream kept running"
        time.sleep(0.05)


def schemathesis(server: str, max_examples: int, max_time: int) -> subprocess.CompletedProcess:
    """Fuzz every documented operation: no 5xx, and every response as documented.

    All checks but one: "positive data acceptance" expects a 2xx for any request the schema
    admits, and the API has rules no JSON schema can state: prompt + max_tokens within the
    context, best_of >= n, no streaming with best_of > n. Those are documented 400s.
    """
    command = [str(Path(sys.executable).with_name("st")), "run", f"{server}/openapi.json", "--checks", "all",
               "--exclude-checks", "positive_data_acceptance",
               "--max-examples", str(max_examples), "--seed", "1", "--request-timeout", "30",
               "--suppress-health-check", "all", "--phases", "examples,coverage,fuzzing", "--max-time", str(max_time)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=max_time + 240)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    return result


def test_schemathesis_finds_no_server_errors(server):
    schemathesis(server, max_examples=50, max_time=25)


@pytest.mark.slow
def test_schemathesis_at_length_finds_no_server_errors(server):
    result = schemathesis(server, max_examples=500, max_time=240)
    print(result.stdout[-3000:])  # the case counts, for the record (pytest -s)


# ---------------------------------------------------------------------------- a locked-down server


def test_api_key_rate_limit_and_graceful_sigterm(run):
    with served(run, "--api-key", "secret", "--max-batch", "1", "--max-queue", "1", "--drain-seconds", "20") as (url, process):
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as error:
            wrong.completions.create(model=MODEL, prompt="A")
        assert error.value.code == "invalid_api_key"
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "A"}).status_code == 401
        right = openai.OpenAI(base_url=f"{url}/v1", api_key="secret", max_retries=0, timeout=60)
        assert right.completions.create(model=MODEL, prompt="A", max_tokens=3).choices[0].text is not None

        # One slot, one queue place: a third request while two are in must get 429.
        long = {"model": MODEL, "prompt": "A", "max_tokens": CONTEXT - 1, "logit_bias": {"256": -100}}
        results: list = []

        # All at once (a barrier, not sleeps): a 127-token request takes ~0.1 s on an idle
        # machine, so requests spaced out in time would each find the server free.
        start = threading.Barrier(6)

        def call() -> None:
            start.wait()
            try:
                results.append(right.completions.create(**long))
            except openai.APIError as error:
                results.append(error)

        threads = [threading.Thread(target=call) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        limited = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert limited and all(r.response.headers.get("retry-after") for r in limited)
        assert all(isinstance(r, (openai.RateLimitError, openai.types.Completion)) for r in results)

        # SIGTERM mid-stream: the running stream still finishes, then the process exits cleanly.
        stream = right.completions.create(**long, stream=True)
        first = next(iter(stream))
        process.send_signal(signal.SIGTERM)
        rest = list(stream)
        assert rest[-1].choices[0].finish_reason == "length"
        assert first.choices[0].finish_reason is None and len(rest) > 1
        assert process.wait(timeout=30) == 0


@pytest.mark.parametrize("attention", ["rfa-gate,aft,sru,ssm", "aft-local,gau,xl,linear"])
def test_a_run_of_recurrent_mixers_from_the_cli_serves_what_the_model_computes(data_dir: Path, tmp_path: Path, attention: str):
    """RFA-Gate, AFT, the SRU and the SSM decode from a recurrent state, not a KV cache, and
    AFT-local, GAU and Transformer-XL from windows, chunks and segments (8 positions here) that
    start at each row's first token: the engine's batch of rows at their own positions (and its
    dummy tokens for idle rows) must leave each row's log-probabilities what one forward pass over
    that row alone gives. A model trained for seconds writes much the same greedy text after any
    prompt, so the logprobs are compared."""
    from tests.conftest import fewshot_command

    run = tmp_path / "recurrent"
    subprocess.run([*fewshot_command(), "train", "--data", str(data_dir), "--out", str(run), "--preset", "nano",
                    "--attention", attention, "--window", "8", "--context", str(CONTEXT), "--batch-size", "4",
                    "--max-steps", "12", "--precision", "fp32", "--no-progress"], check=True, capture_output=True, text=True)
    prompts = ["ROMEO:", "JULIET: O", "KING HENRY:\nWhat"]
    with served(run, "--max-batch", "2") as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        choices = {}

        def ask(prompt: str) -> None:
            choices[prompt] = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0,
                                                        logprobs=1).choices[0]

        threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]  # three requests, two slots
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    lm = fewshot.load(run)
    for prompt in prompts:
        choice = choices[prompt]
        assert choice.text == lm.generate(prompt, max_tokens=24, temperature=0)
        ids, new = lm.tokenizer.encode(prompt), lm.tokenizer.encode(choice.text)
        alone = torch.log_softmax(lm.logits(ids + new), dim=-1)[len(ids) - 1 : -1]
        expected = alone.gather(1, torch.tensor(new)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(choice.logprobs.token_logprobs), expected, atol=1e-4, rtol=1e-4)
