"""The command line: help, `info`, and one-line errors instead of tracebacks."""

import json
import os
import subprocess
import sys


def gpt2kit(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gpt2kit", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=120)  # fmt: skip


def test_help_lists_commands():
    r = gpt2kit("--help")
    assert r.returncode == 0
    assert "info" in r.stdout


WHAT_LOADED = """import sys
from gpt2kit.cli.__main__ import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("gpt2kit.cli.")))"""


def test_the_parser_loads_the_module_of_the_command_given_alone():
    from gpt2kit.cli.__main__ import COMMANDS

    def loaded(*argv):
        r = subprocess.run([sys.executable, "-c", WHAT_LOADED, *argv], capture_output=True, text=True, timeout=120)
        return r.stdout.splitlines()[-1], r.stdout + r.stderr

    top, out = loaded("--help")  # every command listed with its help, no command module and no torch loaded
    words = " ".join(out.split())  # the help's lines unwrapped
    assert top == "['gpt2kit.cli.__main__']" and all(f"{name} {help_line}" in words for name, (_, help_line) in COMMANDS.items()), out
    for argv in (["gen"], [], ["--version"]):  # a wrong or missing command: argparse's one line, still no torch
        assert "torch" not in loaded(*argv)[0]
    one, out = loaded("info", "--help")
    assert "'gpt2kit.cli.info'" in one and "gpt2kit.cli.generate'" not in one and "--kernels" in out


EVERY_HELP = """import contextlib, io, sys
from gpt2kit.cli.__main__ import COMMANDS, main
for name in COMMANDS:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([name, "--help"])
        except SystemExit:
            pass
    print(name, len(out.getvalue()), "torch" in sys.modules)"""


def test_every_commands_help_loads_no_torch():
    """`gpt2kit <command> --help` answers without importing torch (~1.5 s): the flags come from config dataclasses in
    modules that import none, and the packages above them import their heavy modules on first use (lazy.py)."""
    from gpt2kit.cli.__main__ import COMMANDS

    r = subprocess.run([sys.executable, "-c", EVERY_HELP], capture_output=True, text=True, timeout=120)
    lines = [ln.split() for ln in r.stdout.splitlines()]
    assert [ln[0] for ln in lines] == list(COMMANDS), r.stdout + r.stderr
    assert all(int(chars) > 200 and torch == "False" for _, chars, torch in lines), r.stdout


def test_info_preset_reports_exact_parameters():
    r = gpt2kit("info", "gpt2-medium", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["parameters"].startswith("354,823,168")
    assert report["config"]["n_layer"] == 24


def test_info_local_folder(tiny_hf_dir):
    r = gpt2kit("info", str(tiny_hf_dir))
    assert r.returncode == 0, r.stderr
    assert "n_embd" in r.stdout and str(tiny_hf_dir) in r.stdout


def test_errors_are_one_clean_line():
    r = gpt2kit("info", "org/no-such-model")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "org/no-such-model" in r.stderr and "local folder" in r.stderr


def test_a_command_freezes_what_it_loaded_out_of_the_collector():
    """What a command loads (torch's modules, the model) lives as long as it: frozen, so that no full collection
    walks it again while the command runs or as it exits (cli/common.py)."""
    import argparse
    import gc

    from gpt2kit.cli.common import load_model_and_tokenizer

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    model, _ = load_model_and_tokenizer(argparse.Namespace(model="builtin", device="cpu", dtype="auto", adapter=None))
    assert gc.is_tracked(model) and gc.get_freeze_count() > 1000
    assert not any(o is model for o in gc.get_objects())  # in no generation the collector walks: frozen
