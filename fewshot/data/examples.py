"""Fine-tuning examples: JSONL lines -> token ids with a loss mask.

Two shapes, one per line:

    {"prompt": "Q: 2+2?\\nA:", "completion": " 4"}       the loss covers the completion (and the
                                                        end-of-text token after it)
    {"messages": [{"role": "user", "content": "Hi"},   the loss covers the assistant turns, as
                  {"role": "assistant", "content": "Hello"}]}   the run's chat template renders them

A conversation is rendered once per message, and each message's share of the text is the
difference between consecutive renderings; so every template that renders a conversation as
a growing string works, whatever its markup. The pieces are tokenised one by one and joined,
as GPT-3's scoring joins context and continuation, so the mask falls on token boundaries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fewshot.errors import FewshotError
from fewshot.files import read_jsonl
from fewshot.tokenizer import Tokenizer

# messages, add_generation_prompt -> text: the run's chat template (fewshot.chat)
Render = Callable[[list[dict[str, str]], bool], str]


@dataclass(frozen=True)
class TrainingExample:
    ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]  # per token: is it one the model learns to predict

    @property
    def trained_tokens(self) -> int:
        return sum(self.loss_mask[1:])  # the first token is never predicted


def read_examples(path: str | Path, tokenizer: Tokenizer, render: Render, context: int) -> list[TrainingExample]:
    """Every line of a JSONL file as an example; a bad line is one error naming its line and field."""
    examples = []
    for where, record in read_jsonl(path, "examples"):
        example = _example(record, tokenizer, render, where)
        if example.trained_tokens == 0:
            raise FewshotError(f"{where}: no tokens to train on (the completion or assistant turn is empty)")
        if len(example.ids) > context + 1:
            raise FewshotError(f"{where}: {len(example.ids)} tokens, more than the model's context of {context} (+1); shorten it")
        examples.append(example)
    return examples


def _example(record: object, tokenizer: Tokenizer, render: Render, where: str) -> TrainingExample:
    if not isinstance(record, dict):
        raise FewshotError(f"{where}: expected a JSON object with prompt and completion, or messages")
    if "messages" in record:
        return _conversation(record["messages"], tokenizer, render, where)
    for field in ("prompt", "completion"):
        if not isinstance(record.get(field), str):
            raise FewshotError(f'{where}: "{field}" must be a string (a line holds prompt and completion, or messages)')
    eot = getattr(tokenizer, "eot_id", None)
    return _join([(record["prompt"], False), (record["completion"], True)], tokenizer, [] if eot is None else [eot])


def _conversation(messages: object, tokenizer: Tokenizer, render: Render, where: str) -> TrainingExample:
    if not isinstance(messages, list) or not messages:
        raise FewshotError(f'{where}: "messages" must be a non-empty list')
    for index, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)):
            raise FewshotError(f'{where}: messages[{index}] needs a string "role" and "content"')
    if not any(m["role"] == "assistant" for m in messages):
        raise FewshotError(f"{where}: no assistant turn to learn")
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    pieces, done = [], ""
    for index, turn in enumerate(turns):
        if turn["role"] == "assistant":
            # The template's own opening of the assistant turn is context, not something to learn.
            opened = _render(render, turns[:index], True, where) if index else ""
            pieces.append((_extend(done, opened, where), False))
            done = opened
        text = _render(render, turns[: index + 1], False, where)
        pieces.append((_extend(done, text, where), turn["role"] == "assistant"))
        done = text
    return _join(pieces, tokenizer, [])


def _render(render: Render, turns: list[dict[str, str]], add_generation_prompt: bool, where: str) -> str:
    try:
        return render(turns, add_generation_prompt)
    except FewshotError as error:
        raise FewshotError(f"{where}: {error}") from None


def _extend(done: str, text: str, where: str) -> str:
    if not text.startswith(done):
        raise FewshotError(f"{where}: the chat template does not render a conversation as a growing text, so its "
                           "assistant turns cannot be told apart; use prompt/completion lines instead")
    return text[len(done):]


def _join(pieces: Sequence[tuple[str, bool]], tokenizer: Tokenizer, end: list[int]) -> TrainingExample:
    ids: list[int] = []
    mask: list[bool] = []
    for text, learned in pieces:
        piece = tokenizer.encode(text) if text else []
        ids += piece
        mask += [learned] * len(piece)
    ids += end
    mask += [True] * len(end)
    return TrainingExample(tuple(ids), tuple(mask))


def pack(examples: Sequence[TrainingExample], context: int) -> list[TrainingExample]:
    """Examples joined end to end into sequences of at most context + 1 tokens, in order.

    Fewer, fuller batches: no padding is trained through. An example never straddles two
    sequences, and each keeps its own mask; attention does cross into the examples before it,
    as in GPT-3's packed pre-training documents, which end-of-text separates.
    """
    packed: list[TrainingExample] = []
    ids: list[int] = []
    mask: list[bool] = []
    for example in examples:
        if ids and len(ids) + len(example.ids) > context + 1:
            packed.append(TrainingExample(tuple(ids), tuple(mask)))
            ids, mask = [], []
        ids += example.ids
        mask += example.loss_mask
    if ids:
        packed.append(TrainingExample(tuple(ids), tuple(mask)))
    return packed
