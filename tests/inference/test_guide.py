"""Structured outputs: what llguidance lets through, and bad constraints as one FewshotError."""

from __future__ import annotations

import json
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.errors import FewshotError
from fewshot.inference.guide import Guide, Matcher, mask_logits
from fewshot.tokenizer import ByteTokenizer

VOCAB = 260  # the byte tokenizer's 257 and a padded head, as models here have


def walk(guide: Guide, seed: int, limit: int = 60) -> tuple[str, bool]:
    """Random allowed tokens until the grammar is done or a stop id is picked: (text, ended)."""
    tokenizer = ByteTokenizer()
    matcher, out = Matcher.start(guide, tokenizer, VOCAB).copy(), []
    generator = torch.Generator().manual_seed(seed)
    for _ in range(limit):
        allowed = matcher.allowed()
        assert not allowed[257:].any()  # ids the tokenizer lacks are never allowed
        choices = allowed.nonzero()[:, 0]
        token = choices[torch.randint(len(choices), (1,), generator=generator)].item()
        if token == tokenizer.eot_id:
            return tokenizer.decode(out), True
        matcher.consume(token)
        out.append(token)
        if matcher.done:
            return tokenizer.decode(out), True
    return tokenizer.decode(out), False


@pytest.mark.parametrize("seed", range(5))
def test_random_walks_stay_inside_the_grammar(seed):
    labels = ["a-b & c#d~", "x.y (z)", "plain words", "a|b"]
    text, ended = walk(Guide.choice(labels), seed)
    assert ended and text in labels
    text, ended = walk(Guide("regex", r"[0-9]{2}-[a-c]+"), seed, limit=12)
    assert re.fullmatch(r"[0-9]{2}-[a-c]*", text)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"enum": ["p", "q"]}},
              "required": ["n", "s"], "additionalProperties": False}
    text, ended = walk(Guide("json_schema", json.dumps(schema)), seed, limit=200)
    if ended:
        value = json.loads(text)
        assert set(value) == {"n", "s"} and isinstance(value["n"], int) and value["s"] in ("p", "q")
    text, ended = walk(Guide("grammar", 'root ::= "yes" | "no" | "maybe"'), seed)
    assert ended and text in ("yes", "no", "maybe")


def test_mask_logits_leaves_unguided_rows_alone():
    tokenizer = ByteTokenizer()
    logits = torch.randn(2, VOCAB)
    masked = mask_logits(logits, [None, Matcher.start(Guide.choice(["ab"]), tokenizer, VOCAB)])
    assert torch.equal(masked[0], logits[0])
    assert torch.isfinite(masked[1]).nonzero()[:, 0].tolist() == [ord("a")]
    assert mask_logits(logits, [None, None]) is logits


@pytest.mark.parametrize("guide", [Guide("regex", "(("), Guide("regex", "[z-a]"), Guide("json_schema", "{not json"),
                                   Guide("json_schema", '{"type": "nonsense"}'), Guide("json_schema", "[1, 2]"),
                                   Guide("grammar", ""), Guide("grammar", "root ::= ("), Guide("grammar", "start: undefined_rule")])
def test_bad_constraints_are_one_fewshot_error(guide):
    with pytest.raises(FewshotError, match="^guide: "):
        Matcher.start(guide, ByteTokenizer(), VOCAB)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["regex", "grammar", "json_schema"]), spec=st.text(max_size=40))
def test_any_constraint_text_is_accepted_or_refused_never_a_crash(kind, spec):
    try:
        Matcher.start(Guide(kind, spec), ByteTokenizer(), VOCAB)
    except FewshotError:
        pass
