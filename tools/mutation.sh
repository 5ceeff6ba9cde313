#!/usr/bin/env bash
# Mutation testing with mutmut 3.8, outside CI: how many deliberate small bugs the tests catch.
#
#   tools/mutation.sh src/gpt2kit/generate/content_filter.py tests/test_content_filter.py tests/test_engine.py
#
# Mutates the one module given, runs the given test files (default: tests/) against each mutant, prints
# mutmut's results and a score line. Needs `pip install mutmut==3.8.1` in .venv. Works in a copy under
# /tmp, never in the checkout. Two traps it avoids:
#   - the editable install of gpt2kit (a .pth adding src/) would shadow mutmut's mutated copy: mutmut runs
#     from a venv that sees .venv's packages but not that .pth, so gpt2kit imports only from mutants/src;
#   - also_copy includes src (the rest of the package) and tests.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
MODULE="${1:?usage: tools/mutation.sh src/gpt2kit/<module>.py [test files...]}"
shift
TESTS=("$@")
[ ${#TESTS[@]} -gt 0 ] || TESTS=(tests)
WORK="$(mktemp -d /tmp/gpt2kit-mutation.XXXXXX)"
cp -r "$REPO/src" "$REPO/tests" "$REPO/pyproject.toml" "$WORK/"
SITE="$("$REPO/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$REPO/.venv/bin/python" -m venv --without-pip "$WORK/venv"
echo "$SITE" >"$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/project-deps.pth"
if "$WORK/venv/bin/python" -c 'import gpt2kit' 2>/dev/null; then
  echo "tools/mutation.sh: gpt2kit is importable outside mutants/src; the mutants would not be tested" >&2
  exit 1
fi
quote() { printf '"%s", ' "$@"; }
cat >>"$WORK/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["$MODULE"]
also_copy = ["src", "tests"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
pytest_add_cli_args_test_selection = [$(quote "${TESTS[@]}")]
TOML
cd "$WORK"
"$WORK/venv/bin/python" -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" || true
"$WORK/venv/bin/python" -m mutmut results --all true >results.txt || true
"$WORK/venv/bin/python" - "$MODULE" <<'PY'
import re, sys
from collections import Counter
rows = [l.strip() for l in open("results.txt") if ":" in l]
status = Counter(l.rsplit(":", 1)[1].strip() for l in rows)
killed = status["killed"] + status["timeout"]  # a timeout is a detected mutant
total = sum(status.values())
print(f"{sys.argv[1]}: {killed}/{total} mutants detected ({100 * killed / max(total, 1):.0f} %), {dict(status)}")
for l in rows:
    if l.rsplit(":", 1)[1].strip() not in ("killed", "timeout"):
        print("  survivor:", l)
PY
echo "work folder (mutants, results.txt; 'mutmut show NAME' there): $WORK"
