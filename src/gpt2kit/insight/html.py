"""A self-contained HTML page of a text's surprisal: every token shaded from green (expected) to red
(surprising), its alternatives in a tooltip on hover, the summary on top. No script, no external file:
the page is one string (CSS :hover tooltips), so it opens anywhere and can be mailed or archived."""

from __future__ import annotations

import html
import json

from gpt2kit.insight.surprisal import TextScores

MAX_BITS = 16.0  # surprisal shown fully red


def shade(bits: float) -> str:
    """Surprisal in bits -> an HSL background: hue 120 (green) at 0 bits to 0 (red) at MAX_BITS."""
    hue = 120.0 * (1.0 - min(max(bits, 0.0), MAX_BITS) / MAX_BITS)
    return f"hsl({hue:.0f}, 75%, 78%)"


CSS = """
body { font: 16px/1.9 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
.summary { font-size: 14px; background: #f4f4f4; padding: .6rem 1rem; border-radius: 6px; }
.summary b { font-weight: 600; }
.text { white-space: pre-wrap; margin-top: 1.2rem; }
.tok { position: relative; border-radius: 3px; padding: 1px 0; cursor: default; }
.tok .tip { display: none; position: absolute; left: 0; top: 1.9em; z-index: 10; background: #222; color: #eee;
  font: 12px/1.4 ui-monospace, monospace; padding: .4rem .6rem; border-radius: 4px; white-space: pre; min-width: 14rem; }
.tok:hover .tip { display: block; }
.tok:hover { outline: 2px solid #333; }
.legend span { padding: 0 .5rem; border-radius: 3px; }
"""


def tooltip(t) -> str:
    lines = [f"{t.label}  {t.bits:.2f} bits  rank {t.rank}", "alternatives:"]
    lines += [f"  {a:<16} {p:7.2%}" for a, p in t.top]
    return "\n".join(lines)


def render_html(scores: TextScores, title: str = "gpt2kit score", model: str = "") -> str:
    """TextScores -> a complete HTML document (str)."""
    s = scores.summary()
    g = s["gltr"]
    summary = (f"<b>{s['tokens']}</b> tokens{(' &middot; model <b>' + html.escape(model) + '</b>') if model else ''} &middot; "
               f"perplexity <b>{s['perplexity']:.2f}</b> &middot; <b>{s['bits_per_byte']:.3f}</b> bits/byte &middot; "
               f"GLTR: top-10 <b>{g['top10']:.0%}</b>, top-100 <b>{g['top100']:.0%}</b>, top-1000 <b>{g['top1000']:.0%}</b>")  # fmt: skip
    legend = " ".join(f'<span style="background:{shade(b)}">{b:g} bits</span>' for b in (0, 2, 4, 8, 12, 16))
    spans = []
    for t in scores.tokens:
        spans.append(
            f'<span class="tok" data-i="{t.index}" data-rank="{t.rank}" style="background:{shade(t.bits)}">'
            f'{html.escape(t.text)}<span class="tip">{html.escape(tooltip(t))}</span></span>'
        )
    data = html.escape(json.dumps(s))
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f'<div class="summary" data-summary="{data}">{summary}<div class="legend">surprisal: {legend}</div></div>\n'
        f'<div class="text">{"".join(spans)}</div>\n</body></html>\n'
    )
