"""Dependencies point one way. This parses every module's imports and checks the package's layering rules."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "gpt2kit"

# package -> gpt2kit subpackages/modules it must never import
FORBIDDEN = {
    "model": {"tokenizer", "generate", "train", "data", "eval", "serve", "cli", "pretrained"},
    "tokenizer": {"model", "generate", "train", "data", "eval", "serve", "cli"},
    "generate": {"tokenizer", "train", "data", "eval", "serve", "cli"},
    "data": {"model", "generate", "train", "eval", "serve", "cli"},
    "train": {"serve", "cli"},
    "eval": {"serve", "cli", "train"},
    "serve": {"cli", "train"},
    "scaling": {"serve", "cli"},
}
# The one permitted exception, and only as an import inside a function (never at module level): the Hugging
# Face-style methods GPT.from_pretrained / GPT.save_pretrained delegate to gpt2kit.pretrained when called.
CALL_TIME_ONLY = {("model/gpt.py", "pretrained")}
HEAVY_OPTIONAL = {"transformers", "fastapi", "uvicorn", "matplotlib", "datasets", "lm_eval", "wandb", "tensorboard"}


def gpt2kit_imports(path: Path) -> tuple[set[str], set[str]]:
    """(gpt2kit first-level names imported anywhere, third-party top-level names imported at module level)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    internal, top_level = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for n in names:
            parts = n.split(".")
            if parts[0] == "gpt2kit" and len(parts) > 1:
                internal.add(parts[1])
            elif node in tree.body:
                top_level.add(parts[0])
    return internal, top_level


def _module_level_gpt2kit_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("gpt2kit.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt2kit.") and node.level == 0:
            names.add(node.module.split(".")[1])
    return names


def test_layering_rules():
    problems = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((PKG / package).rglob("*.py")) if (PKG / package).is_dir() else []:
            internal, _ = gpt2kit_imports(path)
            at_module_level = _module_level_gpt2kit_imports(path)
            for bad in sorted(internal & forbidden):
                if (path.relative_to(PKG).as_posix(), bad) in CALL_TIME_ONLY and bad not in at_module_level:
                    continue
                problems.append(f"{path.relative_to(PKG)} imports gpt2kit.{bad}")
    assert not problems, "\n".join(problems)


def test_optional_dependencies_are_imported_where_used():
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        _, top_level = gpt2kit_imports(path)
        for bad in sorted(top_level & HEAVY_OPTIONAL):
            if "serve" in path.parts and bad in {"fastapi", "uvicorn"}:
                continue  # the serve package exists to use them; importing gpt2kit never imports it
            problems.append(f"{path.relative_to(PKG)} imports {bad} at module level")
    assert not problems, "\n".join(problems)


def test_importing_gpt2kit_is_light():
    import subprocess
    import sys

    code = "import sys, gpt2kit; print(','.join(m for m in ('transformers','fastapi','matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    assert out == ""
