"""Every module is readable in one sitting: at most 400 lines, and every function at most 80.

The one exception is the training loop's body (train/loop.py `_train`), whose steps read in order from top
to bottom; splitting it into helpers would hide that flow."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "gpt2kit"
MAX_MODULE, MAX_FUNCTION = 400, 80
EXEMPT = {("train/loop.py", "_train")}


def test_modules_and_functions_stay_short():
    too_long = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE:
            too_long.append(f"{rel}: {text.count(chr(10))} lines (> {MAX_MODULE})")
        for node in ast.walk(ast.parse(text, filename=rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in EXEMPT:
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines (> {MAX_FUNCTION})")
    assert not too_long, "split these:\n" + "\n".join(too_long)
