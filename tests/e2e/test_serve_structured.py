"""Structured outputs through the real server and the official openai client."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import openai
import pytest

from tests.e2e.test_serve import MODEL, served, trained_run

LABELS = ["positive", "negative", "neutral", "mixed"]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
          "required": ["name", "age"], "additionalProperties": False}
FEW_SHOT = "Review: great fun\nSentiment: positive\n\nReview: dull and slow\nSentiment: negative\n\nReview: it was ok\nSentiment:"


@pytest.fixture(scope="module")
def client(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    with served(trained_run(data_dir, tmp_path_factory), "--max-batch", "16") as (url, _):
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_response_format_json_schema_validates_on_both_endpoints(client):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    texts = [c.text for c in client.completions.create(
        model=MODEL, prompt="A person as JSON:", max_tokens=100, temperature=1.0, seed=1, n=4,
        extra_body={"response_format": response_format}).choices]
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A person, as JSON"}],
                                          max_tokens=90, temperature=0.7, seed=2, response_format=response_format)
    texts.append(chat.choices[0].message.content)
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)  # complete and valid, though the model never saw JSON


def test_json_object_is_an_object_when_it_ends(client):
    choices = client.completions.create(model=MODEL, prompt="{", max_tokens=120, temperature=1.0, seed=3, n=8,
                                        extra_body={"response_format": {"type": "json_object"}}).choices
    for choice in choices:  # "length": cut off by max_tokens, a prefix of an object
        assert choice.text.startswith("{")
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.text), dict)
    assert any(choice.finish_reason == "stop" for choice in choices)


def test_guided_choice_only_ever_returns_a_listed_label(client):
    """200 requests sampled at temperature 1, in vLLM's new and old spellings."""
    def ask(i: int) -> str:
        extra = {"structured_outputs": {"choice": LABELS}} if i % 2 else {"guided_choice": LABELS}
        return client.completions.create(model=MODEL, prompt=FEW_SHOT, max_tokens=8, temperature=1.0,
                                         extra_body=extra).choices[0].text

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(200)))
    assert set(answers) <= set(LABELS)
    assert len(set(answers)) > 1  # sampled, not stuck on one label


def test_regex_and_grammar_constrain_the_text(client):
    for extra, pattern in (({"structured_outputs": {"regex": r"[0-9]{3}-[a-z]{2}"}}, r"[0-9]{3}-[a-z]{2}"),
                           ({"guided_regex": r"(yes|no), [A-Z][a-z]+"}, r"(yes|no), [A-Z][a-z]+"),
                           ({"structured_outputs": {"grammar": 'root ::= "a" ("," "a")*'}}, r"a(,a)*"),  # GBNF
                           ({"guided_grammar": 'start: NUM "+" NUM\nNUM: /[1-9][0-9]?/'}, r"[1-9][0-9]?\+[1-9][0-9]?")):  # Lark
        for seed in range(3):
            text = client.completions.create(model=MODEL, prompt="Q:", max_tokens=12, temperature=1.0, seed=seed,
                                             extra_body=extra).choices[0].text
            assert re.fullmatch(pattern, text) or (pattern == r"a(,a)*" and re.fullmatch(r"a(,a)*,?", text)), (extra, text)


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "[z-a]"}, "guided_regex"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_choice": ["a"], "guided_regex": "b"}, "guided_regex"),
    ({"guided_choice": ["a"], "prompt_lookup": 4}, "prompt_lookup"),
])
def test_bad_constraints_are_a_400_naming_the_parameter(client, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="x", max_tokens=4, extra_body=extra)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param, caught.value.body
