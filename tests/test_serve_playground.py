"""The playground page in a real headless Chromium: type a prompt, press Generate, streamed text appears;
Stop aborts a stream; chat mode; the API key field. Skips (with the reason) without chromium or playwright;
CI installs Debian's `chromium` and the `playwright` Python package (never `playwright install`)."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import tiny_gpt
from gpt2kit.serve.background import BackgroundServer
from gpt2kit.serve.config import ServeConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run"]  # fmt: skip
KEY = "sk-playground"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package (pip install playwright)")
    torch.manual_seed(0)
    model = tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=128)
    server = BackgroundServer(model, ServeConfig(port=0, api_key=KEY, model_name="tiny-gpt2", max_tokens_limit=100))
    step = server.worker.engine.step

    def slow_step(emit=None):  # ~50 tokens/s, so that Stop can land mid-stream
        import time

        time.sleep(0.02)
        return step(emit)

    server.worker.engine.step = slow_step
    with server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            pg = browser.new_page()
            pg.set_default_timeout(20_000)
            pg.goto(server.url + "/")
            yield pg
        finally:
            browser.close()


def test_generate_streams_text_into_the_page(page):
    assert "tiny-gpt2" in page.inner_text("#model-name")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.fill("#prompt", "Hello from the browser")
    page.fill("#max-tokens", "12")
    page.fill("#temperature", "0")
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('done')")
    text = page.inner_text("#completion")
    assert text.strip(), "no streamed text appeared"
    assert page.inner_text("#output").startswith("Hello from the browser")


def test_stop_button_aborts_the_stream(page):
    page.fill("#max-tokens", "100")
    page.fill("#temperature", "1")
    page.fill("#prompt", "A very long story")
    page.click("#generate")
    page.wait_for_function("document.getElementById('completion') && document.getElementById('completion').textContent.length > 0")
    page.click("#stop")
    page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
    assert page.is_enabled("#generate")


def test_chat_mode_and_wrong_key(page):
    page.select_option("#mode", "chat")
    page.fill("#max-tokens", "8")
    page.fill("#prompt", "Hi there")
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('done')")
    assert page.locator("#chat-log .msg").count() == 2
    assert page.locator("#chat-log .msg").nth(0).inner_text() == "User: Hi there"
    page.fill("#api-key", "wrong")
    page.fill("#prompt", "Again")
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').classList.contains('error')")
    assert "API key" in page.inner_text("#status")
