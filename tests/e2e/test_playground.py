"""The Playground in a real browser: headless Debian Chromium driven by Playwright, against a real server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.test_serve import MODEL, served, trained_run

CHROMIUM = "/usr/bin/chromium"
KEY = "playground-key"
# As the machine notes say: root needs --no-sandbox, and a closed network wants no background fetches.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SCREENSHOT = os.environ.get("FEWSHOT_PLAYGROUND_SCREENSHOT")  # also save it here (the README's picture)


@pytest.fixture(scope="module")
def server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served(trained_run(data_dir, tmp_path_factory), "--api-key", KEY) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (make test installs it as root: apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


def test_a_two_shot_prompt_streams_with_probabilities_and_the_hover_box(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 820})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server}/")
    # The server has a key: the page asks for it before it can list the models.
    page.locator("#key-dialog").wait_for(state="visible")
    page.fill("#key", KEY)
    page.click("#key-save")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.locator("#model").input_value() == MODEL

    # The few-shot helper: two examples, a template, a query.
    page.click("#helper summary")
    rows = page.locator("#examples tbody tr")
    for i, (word, reverse) in enumerate([("stone", "enots"), ("river", "revir")]):
        rows.nth(i).locator(".input").fill(word)
        rows.nth(i).locator(".output").fill(reverse)
    page.fill("#query", "tower")
    page.click("#build")
    prompt = page.input_value("#prompt")
    assert prompt == "Input: stone\nOutput: enots\n\nInput: river\nOutput: revir\n\nInput: tower\nOutput:"

    page.fill("#temperature", "0")
    page.fill("#max_tokens", "12")
    page.check("#probs")
    page.click("#submit")
    page.wait_for_function("document.querySelector('#status').textContent === 'done'", timeout=60_000)
    tokens = page.locator("#outputs .output .token")
    assert tokens.count() >= 1
    shown = page.locator("#outputs .output").first.inner_text()

    # What streamed into the page is what the API gives for the same request.
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    expected = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0).choices[0].text
    assert shown == expected
    assert "rgba" in tokens.first.evaluate("e => getComputedStyle(e).backgroundColor")  # tinted

    tokens.first.hover()
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    cells = tooltip.locator("tr")
    assert cells.count() >= 5  # the chosen token and the 5 most likely (logprobs=5), with their logprobs
    assert tooltip.locator("tr.chosen").count() == 1
    logprobs = [float(cells.nth(i).locator("td").nth(1).inner_text()) for i in range(cells.count())]
    assert all(lp <= 0 for lp in logprobs) and logprobs == sorted(logprobs, reverse=True)
    for path in filter(None, [tmp_path / "playground.png", SCREENSHOT]):
        page.screenshot(path=str(path), full_page=True)
    assert (tmp_path / "playground.png").stat().st_size > 10_000
    assert not errors, errors
    page.close()
