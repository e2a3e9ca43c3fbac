"""SmolLM2-135M through the CLI: imported by conftest's `smollm2_run`, then prompted."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fewshot.config import PRESETS, ModelConfig
from fewshot.files import read_json
from tests.conftest import fewshot_command


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*fewshot_command(), *args], capture_output=True, text=True, timeout=300)


def test_the_metadata_maps_onto_the_smollm2_preset(smollm2_run: Path) -> None:
    config = read_json(smollm2_run / "config.json")
    assert ModelConfig.from_dict(config["model"]) == PRESETS["smollm2-135m"].model
    assert config["tokenizer"]["stop"] == ["<|im_end|>"] and config["tokenizer"]["parse_special"] is True
    assert "<|im_start|>assistant" in config["tokenizer"]["chat_template"]


def test_generate_answers_a_factual_question(smollm2_run: Path) -> None:
    done = run("generate", str(smollm2_run), "--prompt", "Q: What is the capital of France?\\nA:", "--temperature", "0",
               "--max-tokens", "8", "--stats")
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert "peak RSS" in done.stderr


def test_chat_uses_the_models_template_and_stops_at_end_of_turn(smollm2_run: Path) -> None:
    """Turns come from stdin; each reply ends at <|im_end|>, which is never printed."""
    done = subprocess.run([*fewshot_command(), "chat", str(smollm2_run), "--temperature", "0", "--max-tokens", "40"],
                          input="What is the capital of France?\n/exit\n", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert "<|im_end|>" not in done.stdout and "<|im_start|>" not in done.stdout


def test_serve_answers_the_openai_client_on_completions_and_chat(smollm2_run: Path) -> None:
    import openai

    from tests.e2e.test_serve import served

    with served(smollm2_run, "--model-name", "smollm2") as (url, _process):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        completion = client.completions.create(model="smollm2", prompt="Q: What is the capital of France?\nA:",
                                               max_tokens=8, temperature=0, stop=["\n"])
        assert "Paris" in completion.choices[0].text and completion.choices[0].finish_reason == "stop"
        chat = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=30,
                                              messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in chat.choices[0].message.content and chat.choices[0].finish_reason == "stop"
        assert "<|im_end|>" not in chat.choices[0].message.content
