"""The surprisal page (`gpt2kit score --html`) and the playground's Inspect view in a real headless Chromium:
the tokens render shaded, hovering shows the alternatives, a click draws the next-token bars, the detector
answers. Screenshots go to $INSPECT_SCREENSHOTS when set (docs/images for docs/inspect.md), else tmp.
Skips (with the reason) without chromium or playwright, as tests/test_serve_playground.py does."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_gpt

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run"]  # fmt: skip
TEXT = "The cat sat on the mat and looked out of the window at the rain, waiting for the sun to come back."

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    return Path(os.environ.get("INSPECT_SCREENSHOTS", tmp_path))


def name() -> str:
    return "gpt2kit-builtin" if os.environ.get("INSPECT_SCREENSHOTS") else "tiny-gpt2"


def model():
    """A tiny random model; the built-in one when taking the screenshots for the docs (real alternatives)."""
    if os.environ.get("INSPECT_SCREENSHOTS"):
        from gpt2kit.pretrained import from_pretrained

        return from_pretrained("builtin", device="cpu").eval()
    return tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=128)


def test_html_page_shows_tokens_and_tooltip(browser, shots, tmp_path):
    from gpt2kit.insight.html import render_html
    from gpt2kit.insight.surprisal import score_text
    from gpt2kit.tokenizer import Tokenizer

    scores = score_text(model(), Tokenizer(), TEXT)
    page_file = tmp_path / "score.html"
    page_file.write_text(render_html(scores, model=name()), encoding="utf-8")
    pg = browser.new_page(viewport={"width": 900, "height": 420})
    pg.goto(page_file.as_uri())
    toks = pg.locator(".tok")
    assert toks.count() == len(scores.tokens)
    assert pg.inner_text(".text").replace("\n", "") == TEXT.replace("\n", "")
    assert not pg.locator(".tok .tip").first.is_visible()
    toks.nth(3).hover()
    tip = toks.nth(3).locator(".tip")
    assert tip.is_visible() and "alternatives:" in tip.inner_text() and "rank" in tip.inner_text()
    pg.screenshot(path=str(shots / "score_html.png"))


def test_playground_inspect_view(browser, shots):
    from gpt2kit.serve.background import BackgroundServer
    from gpt2kit.serve.config import ServeConfig

    torch.manual_seed(0)
    with BackgroundServer(model(), ServeConfig(port=0, model_name=name())) as server:
        pg = browser.new_page(viewport={"width": 1000, "height": 900})
        pg.set_default_timeout(30_000)
        pg.goto(server.url + "/")
        pg.fill("#inspect-text", TEXT)
        pg.click("#inspect-run")
        pg.wait_for_function("document.getElementById('inspect-verdict').textContent.startsWith('Detector')")
        toks = pg.locator("#inspect-tokens .itok")
        assert toks.count() > 15
        assert pg.inner_text("#inspect-tokens").replace("\n", "").startswith("The cat sat")
        assert re.search(r"\d+ tokens scored in [\d.]+ s", pg.inner_text("#inspect-status"))
        assert "background" in toks.nth(4).get_attribute("style")  # shaded by its surprisal
        toks.nth(4).click()
        assert pg.locator("#inspect-chart .ibar").count() >= 5
        assert pg.locator("#inspect-chart .ibar.actual").count() <= 1
        toks.nth(4).hover()
        tip = toks.nth(4).locator(".itip")
        assert tip.is_visible() and "bits" in tip.inner_text() and "alternatives:" in tip.inner_text()
        pg.screenshot(path=str(shots / "playground_inspect.png"), full_page=True)
        toks.last.click()  # after the last token: one more request for the next position
        pg.wait_for_function("document.querySelector('#inspect-chart div') && "
                             "document.querySelector('#inspect-chart div').textContent.includes('position')")  # fmt: skip
        assert pg.locator("#inspect-chart .ibar").count() >= 5
        # the generate status line shows tokens and tokens/s
        pg.fill("#prompt", "Hello")
        pg.fill("#max-tokens", "8")
        pg.fill("#temperature", "0")
        pg.click("#generate")
        pg.wait_for_function("document.getElementById('status').textContent.startsWith('done')")
        assert re.search(r"\d+ tokens · [\d.–]+ tokens/s", pg.inner_text("#status"))
