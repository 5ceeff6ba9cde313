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
#   - also_copy includes src (the rest of the package) and tests;
#   - mutmut forks one child per mutant from a process that has already run the tests once: with an
#     OpenMP team of 2 (tests/conftest.py sets 2 threads) a child waits forever at the team's barrier for
#     a thread that fork did not copy, and tqdm's lock is a semaphore shared by all the children, so
#     one child killed while holding it hangs every later one; such hangs would be scored as "timeout",
#     i.e. as detected. A pytest plugin (mutation_threads, on the mutation venv's path) sets one torch
#     thread after conftest has run, turns tqdm's monitor thread off and gives tqdm a per-process lock,
#     so a timeout means the mutant itself made the tests hang.
set -euo pipefail
export OMP_NUM_THREADS=1
REPO="$(cd "$(dirname "$0")/.." && pwd)"
MODULE="${1:?usage: tools/mutation.sh src/gpt2kit/<module>.py [test files...]}"
shift
TESTS=("$@")
[ ${#TESTS[@]} -gt 0 ] || TESTS=(tests)
WORK="$(mktemp -d /tmp/gpt2kit-mutation.XXXXXX)"
cp -r "$REPO/src" "$REPO/tests" "$REPO/pyproject.toml" "$WORK/"
SITE="$("$REPO/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$REPO/.venv/bin/python" -m venv --without-pip "$WORK/venv"
mkdir "$WORK/plugins"
cat >"$WORK/plugins/mutation_threads.py" <<'PY'
"""No extra threads in tools/mutation.sh's test runs: a forked child cannot take a lock that a thread of
its parent held at the fork (an OpenMP team of 2, tqdm's monitor thread), and would hang."""
import threading

import pytest


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    import torch

    torch.set_num_threads(1)
    try:
        import tqdm
    except ImportError:
        return
    tqdm.tqdm.monitor_interval = 0
    # tqdm's default lock is a multiprocessing semaphore, shared by every forked child: a child killed for a
    # timeout while holding it would hang every later one. A thread lock is copied per child instead.
    tqdm.tqdm.set_lock(threading.RLock())
PY
printf '%s\n%s\n' "$SITE" "$WORK/plugins" >"$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/project-deps.pth"
if "$WORK/venv/bin/python" -c 'import gpt2kit' 2>/dev/null; then
  echo "tools/mutation.sh: gpt2kit is importable outside mutants/src; the mutants would not be tested" >&2
  exit 1
fi
quote() { printf '"%s", ' "$@"; }
cat >>"$WORK/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["$MODULE"]
also_copy = ["src", "tests"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "mutation_threads", "-q", "-x"]
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
