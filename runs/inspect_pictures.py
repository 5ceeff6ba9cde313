"""Make docs/inspect.md's pictures of `gpt2kit score`'s terminal colours and `gpt2kit attention`'s grid,
with the built-in model. (The HTML page and playground pictures come from tests/test_insight_browser.py
with INSPECT_SCREENSHOTS=docs/images; the detector histogram from runs/detect_calibrate.py --write.)

    python runs/inspect_pictures.py          # needs matplotlib, playwright and Debian's chromium
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. The quantum fluctuations of his bank account, however, were purple.")  # fmt: skip


def xterm256(n: int) -> str:
    """An xterm-256 colour index (16..231: the 6x6x6 cube) -> #rrggbb."""
    n -= 16
    levels = [0, 95, 135, 175, 215, 255]
    return f"#{levels[n // 36]:02x}{levels[n // 6 % 6]:02x}{levels[n % 6]:02x}"


def ansi_to_html(text: str) -> str:
    out, pos = [], 0
    for m in re.finditer(r"\x1b\[48;5;(\d+)m\x1b\[38;5;16m(.*?)\x1b\[0m", text, flags=re.S):
        out.append(html.escape(text[pos : m.start()]))
        out.append(f'<span style="background:{xterm256(int(m.group(1)))};color:#000">{html.escape(m.group(2))}</span>')
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def main() -> None:
    gpt2kit = [sys.executable, "-m", "gpt2kit"]
    run = lambda *a: subprocess.run([*gpt2kit, *a], check=True, capture_output=True, text=True).stdout  # noqa: E731
    shaded = run("score", TEXT, "--color", "always")
    page = ("<html><body style='margin:0;background:#1e1e1e;color:#ddd;font:15px/1.5 monospace;padding:14px;"
            f"white-space:pre-wrap;width:900px'><div>$ gpt2kit score \"It is a truth universally ...\"</div>{ansi_to_html(shaded)}"
            "</body></html>")  # fmt: skip
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--headless"])
        pg = browser.new_page(viewport={"width": 930, "height": 160})
        pg.set_content(page)
        pg.screenshot(path=str(OUT / "score_terminal.png"), full_page=True)
        browser.close()
    run("attention", "The cat sat on the mat because it was tired.", "--layer", "all", "--head", "mean",
        "--out", str(OUT / "attention_grid.png"))  # fmt: skip
    print(f"wrote {OUT}/score_terminal.png and attention_grid.png")


if __name__ == "__main__":
    main()
