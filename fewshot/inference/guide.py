"""Structured outputs: decoding that can only write text a grammar accepts, through llguidance.

A `Guide` names what the text must be (OpenAI's `response_format`, vLLM's
`structured_outputs`): a JSON schema, any JSON object, a regular expression, one of a list
of choices, or a context-free grammar (Lark, or GBNF as llama.cpp writes it). llguidance
turns it into a grammar and, at each step, into the set of tokens that keep the text
inside the grammar; the sampler only picks among those. For few-shot classification a
choice over the label words means every answer is a valid label.

Why llguidance (docs/serve/README.md has the numbers): on this project's two
tokenizer kinds it masked a token in 0.1-0.2 ms, compiled JSON schemas in about 1 ms
(xgrammar took 173 ms on a 49k vocabulary), and it installs as one 8 MB wheel; xgrammar
was faster per token on the byte vocabulary (0.02 ms) but pulls in Triton, 1 GB.

The vocabulary llguidance sees is the model's: every id's bytes from the tokenizer, and ids
the tokenizer does not have (a head padded to a round size) or that stop the text are
special, so no grammar can spell them. Stop ids end the text when the grammar allows it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fewshot.errors import FewshotError

KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
# JSON as json.dumps writes it: no free whitespace between tokens. With it allowed, a small
# model spent its whole token budget on newlines and indents before closing the object (seen
# in tests/e2e/test_serve_structured.py); vLLM has the same switch (disable_any_whitespace).
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Guide:
    kind: str  # one of KINDS
    # json_schema: the schema as JSON text; regex and grammar: their text; choice: a JSON list
    # of strings; json_object: unused.
    spec: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FewshotError(f"guide: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @classmethod
    def choice(cls, choices: list[str]) -> Guide:
        if not choices or not all(isinstance(c, str) and c for c in choices):
            raise FewshotError("guide: choice needs a non-empty list of non-empty strings")
        return cls("choice", json.dumps(choices))


@functools.lru_cache(maxsize=256)
def grammar_of(guide: Guide) -> str:
    """The llguidance grammar of a guide (not yet checked against a vocabulary)."""
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import any_to_lark

    if guide.kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_LAYOUT)
    if guide.kind == "json_schema":
        try:
            schema = json.loads(guide.spec)
        except json.JSONDecodeError as error:
            raise FewshotError(f"guide: the JSON schema is not JSON: {error}") from None
        if not isinstance(schema, (dict, bool)):
            raise FewshotError(f"guide: a JSON schema is an object or a boolean, got {type(schema).__name__}")
        try:
            return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
        except (ValueError, TypeError, RuntimeError) as error:
            raise FewshotError(f"guide: invalid JSON schema: {error}") from None
    if guide.kind == "regex":
        return LLMatcher.grammar_from_regex(guide.spec)
    if guide.kind == "choice":
        # One alternation of escaped literals: a regex, as the label words are plain text.
        return LLMatcher.grammar_from_regex("(" + "|".join(_escape(c) for c in json.loads(guide.spec)) + ")")
    try:
        lark = any_to_lark(guide.spec)  # GBNF (llama.cpp's) becomes Lark; Lark stays as it is
    except Exception as error:  # noqa: BLE001 - the converter raises bare Exceptions on bad grammars
        raise FewshotError(f"guide: the grammar does not parse: {error}") from None
    return LLMatcher.grammar_from_lark(lark)


def _escape(text: str) -> str:
    # llguidance reads Rust's regex syntax: escape every character that could be an operator.
    return "".join("\\" + c if c in r"\.+*?()|[]{}^$#&-~" else c for c in text)


@functools.lru_cache(maxsize=4)
def vocabulary(tokenizer, vocab_size: int):
    """llguidance's view of the model's vocabulary; built once per tokenizer (0.5-2 s)."""
    from llguidance import LLTokenizer, TokenizerWrapper

    stops = set(getattr(tokenizer, "stop_ids", {tokenizer.eot_id}))
    special = [i for i in range(vocab_size) if i in stops or i >= tokenizer.vocab_size]

    class Wrapped:
        eos_token_id = tokenizer.eot_id
        bos_token_id = None
        special_token_ids = special
        tokens = [b"" if i in stops or i >= tokenizer.vocab_size else tokenizer.decode_bytes([i])
                  for i in range(vocab_size)]

        def __call__(self, text: bytes | str) -> list[int]:
            if isinstance(text, bytes):
                text = text.decode("utf-8", errors="replace")
            return list(tokenizer.encode(text))

    return LLTokenizer(TokenizerWrapper(Wrapped()), n_vocab=vocab_size, eos_token=sorted(stops))


class Matcher:
    """One sequence's place in its grammar: which tokens may come next, and the ones that came.

    `Matcher.start` checks a guide and computes its first mask, which is where llguidance
    builds its lexer lazily: up to seconds for a big regex, so it happens off the serving
    engine's thread, once per request; every sample then decodes with a `copy`, which shares
    what was built.
    """

    def __init__(self, matcher, vocab_size: int, stop_id: int) -> None:
        self._matcher, self.vocab_size, self.stop_id = matcher, vocab_size, stop_id

    @classmethod
    def start(cls, guide: Guide, tokenizer, vocab_size: int) -> Matcher:
        """A matcher at the start of the guide's grammar; a FewshotError for a grammar llguidance
        cannot build (a bad regex, schema or grammar)."""
        from llguidance import LLMatcher

        grammar, vocab = grammar_of(guide), vocabulary(tokenizer, vocab_size)
        error, messages = LLMatcher.validate_grammar_with_warnings(grammar, vocab)
        if error:
            raise FewshotError(f"guide: {messages[0] if messages else 'invalid'}")
        matcher = cls(LLMatcher(vocab, grammar), vocab_size, tokenizer.eot_id)
        matcher.allowed()
        return matcher

    def copy(self) -> Matcher:
        return Matcher(self._matcher.deep_copy(), self.vocab_size, self.stop_id)

    def allowed(self) -> Tensor:
        """(vocab,) bool: the tokens that keep the text inside the grammar (a stop id once it may end)."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = torch.from_numpy(np.unpackbits(bits, bitorder="little")[: self.vocab_size].astype(bool))
        if not allowed.any():  # a dead end (it should not happen): end the text rather than sample from nothing
            allowed[self.stop_id] = True
        return allowed

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise FewshotError(f"guide: token {token} is outside the grammar: {self._matcher.get_error()}")

    @property
    def done(self) -> bool:
        """Nothing more can follow: the grammar is complete (a closed JSON object, a choice)."""
        return self._matcher.is_stopped()


def mask_logits(logits: Tensor, matchers: list[Matcher | None]) -> Tensor:
    """logits (B, V) with the tokens each row's grammar forbids at -inf (rows without one as they are)."""
    if all(m is None for m in matchers):
        return logits
    masked = logits.clone()
    for row, matcher in enumerate(matchers):
        if matcher is not None:
            masked[row].masked_fill_(~matcher.allowed().to(logits.device), float("-inf"))
    return masked
