"""The public API the README and docs show: every `gpt2kit` import in their Python snippets works, the README's
library snippet runs, and the Hugging Face-style methods GPT.from_pretrained / model.save_pretrained."""

import ast
import re
from pathlib import Path

import pytest
import torch

import gpt2kit
from gpt2kit import GPT

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def _gpt2kit_imports() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for block in _python_blocks(path):
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "gpt2kit" in ast.unparse(node):
                    found.append((path.name, ast.unparse(node)))
    return found


def test_docs_show_gpt2kit_imports():
    assert len(_gpt2kit_imports()) >= 5 and any(name == "README.md" for name, _ in _gpt2kit_imports())


@pytest.mark.parametrize("doc, statement", _gpt2kit_imports())
def test_every_import_in_the_docs_works(doc, statement):
    exec(statement, {})


def test_readme_library_snippet_runs(tmp_path, monkeypatch):
    [snippet] = [b for b in _python_blocks(ROOT / "README.md") if "from_pretrained" in b]
    snippet = snippet.replace('from_pretrained("gpt2")', 'from_pretrained("builtin")')  # offline: the shipped model
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)
    assert scope["c"].text and (tmp_path / "my-gpt2" / "model.safetensors").is_file()


def test_readme_names_are_public():
    for name in (
        "GPT",
        "GPTConfig",
        "Tokenizer",
        "SamplingParams",
        "TextGenerator",
        "Engine",
        "from_pretrained",
        "save_pretrained",
    ):
        assert name in gpt2kit.__all__ and hasattr(gpt2kit, name)
    from gpt2kit import tokenizer

    assert "ReferenceBPE" not in tokenizer.__all__ and not hasattr(tokenizer, "ReferenceBPE")


def test_hugging_face_style_methods_round_trip(tmp_path):
    model = GPT.from_pretrained("builtin", device="cpu", dtype="float32")
    assert isinstance(model, GPT) and not model.training
    folder = model.save_pretrained(tmp_path / "copy")
    again = GPT.from_pretrained(folder)
    assert (tmp_path / "copy" / "config.json").is_file()
    ids = torch.tensor([[50256, 464, 3290, 318]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids)[0], model(ids)[0])
