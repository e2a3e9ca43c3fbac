"""fewshot.data.examples and ExampleSampler: fine-tuning lines, their loss masks, their batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.chat import Message, render_chat
from fewshot.data.examples import TrainingExample, read_examples
from fewshot.data.sampling import ExampleSampler, padded_batch
from fewshot.errors import FewshotError
from fewshot.tokenizer import ByteTokenizer

TOKENIZER = ByteTokenizer()


def default_render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return render_chat([Message(m["role"], m["content"]) for m in messages], None,
                       add_generation_prompt=add_generation_prompt).text


def write(tmp_path: Path, *records: object) -> Path:
    path = tmp_path / "examples.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def learned_text(example: TrainingExample) -> str:
    return bytes(i for i, m in zip(example.ids, example.loss_mask) if m and i < 256).decode()


def test_a_prompt_completion_line_learns_exactly_the_completion_and_the_end_token(tmp_path: Path) -> None:
    [example] = read_examples(write(tmp_path, {"prompt": "Q: 2+2?\nA:", "completion": " 4"}), TOKENIZER, default_render, 64)
    assert example.ids == (*b"Q: 2+2?\nA:", *b" 4", TOKENIZER.eot_id)
    assert example.loss_mask == (False,) * 10 + (True,) * 3
    assert learned_text(example) == " 4"


def test_a_conversation_learns_exactly_the_assistant_turns_of_the_default_transcript(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    [example] = read_examples(write(tmp_path, {"messages": messages}), TOKENIZER, default_render, 256)
    text = bytes(example.ids).decode()
    assert text == "System: Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: 2+2?\nAssistant: 4\n"
    # "Assistant:" is the template's own opening of the turn: context, not learned
    assert learned_text(example) == " Hello.\n 4\n"


def test_a_models_own_template_marks_its_assistant_turns(tmp_path: Path) -> None:
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return render_chat([Message(m["role"], m["content"]) for m in messages], template,
                           add_generation_prompt=add_generation_prompt).text

    [example] = read_examples(write(tmp_path, {"messages": [{"role": "user", "content": "Hi"},
                                                            {"role": "assistant", "content": "Yo"}]}), TOKENIZER, render, 256)
    assert bytes(example.ids).decode() == "<|user|>Hi<|end|><|assistant|>Yo<|end|>"
    assert learned_text(example) == "Yo<|end|>"


@pytest.mark.parametrize("line, message", [
    ("not json", r"examples.jsonl:2: not JSON"),
    ('["a list"]', r"examples.jsonl:2: expected a JSON object"),
    ('{"prompt": "x"}', r'examples.jsonl:2: "completion" must be a string'),
    ('{"prompt": 3, "completion": "y"}', r'examples.jsonl:2: "prompt" must be a string'),
    ('{"messages": []}', r'examples.jsonl:2: "messages" must be a non-empty list'),
    ('{"messages": [{"role": "user"}]}', r'examples.jsonl:2: messages\[0\] needs a string "role" and "content"'),
    ('{"messages": [{"role": "user", "content": "hi"}]}', r"examples.jsonl:2: no assistant turn"),
    ('{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}', r"examples.jsonl:2: .*unknown role"),
    ('{"prompt": "' + "x" * 80 + '", "completion": "y"}', r"examples.jsonl:2: 82 tokens, more than the model's context of 64"),
])
def test_a_bad_line_is_reported_with_its_number_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, {"prompt": "fine", "completion": " ok"}, line)
    with pytest.raises(FewshotError, match=message):
        read_examples(path, TOKENIZER, default_render, 64)


def test_an_empty_file_and_a_file_with_nothing_to_learn_are_one_error_each(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(FewshotError, match="no examples"):
        read_examples(empty, TOKENIZER, default_render, 64)
    with pytest.raises(FewshotError, match="no tokens to train on"):
        read_examples(write(tmp_path, {"prompt": "x", "completion": ""}), ByteTokenizerWithoutEnd(), default_render, 64)


class ByteTokenizerWithoutEnd(ByteTokenizer):
    eot_id = None


def test_padding_never_trains_and_the_target_is_the_next_token() -> None:
    short = TrainingExample((1, 2, 3), (False, True, True))
    long = TrainingExample((5, 6, 7, 8, 9), (False, False, True, False, True))
    x, y = padded_batch([short, long])
    assert x.tolist() == [[1, 2, 0, 0], [5, 6, 7, 8]]
    assert y.tolist() == [[2, 3, -1, -1], [-1, 7, -1, 9]]


EXAMPLES = [TrainingExample(tuple(range(i, i + 3 + i % 4)), (False,) + (True,) * (2 + i % 4)) for i in range(13)]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 20), st.integers(0, 2**31))
def test_a_resumed_sampler_draws_the_batches_an_uninterrupted_one_would(batch: int, accum: int, stop: int, seed: int) -> None:
    straight = ExampleSampler(EXAMPLES, batch, accum, seed)
    for _ in range(stop):
        straight.next_step()
    resumed = ExampleSampler(EXAMPLES, batch, accum, seed)
    resumed.load_state_dict(straight.state_dict())
    for a, b in zip(straight.next_step(), resumed.next_step()):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_every_example_is_seen_once_per_epoch_and_ranks_split_each_step() -> None:
    sampler = ExampleSampler(EXAMPLES, 2, 1, seed=3)
    seen = [i for step in range(7) for i in sampler.indices(step)]
    assert sorted(seen[: len(EXAMPLES)]) == list(range(len(EXAMPLES)))  # epoch 0 is a permutation
    ranks = [ExampleSampler(EXAMPLES, 1, 1, seed=3, rank=r, world_size=2) for r in range(2)]
    assert all(r.indices(5) == sampler.indices(5) for r in ranks)  # the same global batch everywhere
    mine = [r.next_step()[0][0] for r in ranks]
    assert torch.equal(mine[0], padded_batch([EXAMPLES[sampler.indices(0)[0]]])[0])
    assert torch.equal(mine[1], padded_batch([EXAMPLES[sampler.indices(0)[1]]])[0])


@given(st.lists(st.integers(2, 9), min_size=1, max_size=30), st.integers(8, 20))
def test_packing_keeps_every_token_and_mask_in_order_within_the_context(lengths: list[int], context: int) -> None:
    from fewshot.data.examples import pack

    examples = [TrainingExample(tuple(range(n)), tuple(i % 2 == 1 for i in range(n))) for n in lengths]
    packed = pack(examples, context)
    assert [t for e in packed for t in e.ids] == [t for e in examples for t in e.ids]
    assert [m for e in packed for m in e.loss_mask] == [m for e in examples for m in e.loss_mask]
    assert all(len(e.ids) <= context + 1 for e in packed)
    assert len(packed) <= len(examples)
