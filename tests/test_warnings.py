"""One warning channel (gpt2kit.errors.warn = Python's warnings), shown by the CLI as one line each."""

import sys
import warnings

import numpy as np

from gpt2kit import errors
from gpt2kit.cli.__main__ import main, show_warning
from gpt2kit.data.shards import write_shard


def test_cli_shows_a_warning_as_one_line(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show_warning
        errors.warn("first line\n  second line")
        warnings.warn("from another library", DeprecationWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == "gpt2kit: warning: first line second line\ngpt2kit: warning: DeprecationWarning: from another library\n"


def test_missing_matplotlib_warns_once_for_two_evals(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setattr(errors, "_warned", set())
    ids = np.random.default_rng(0).integers(0, 50257, 4096).astype(np.uint16)
    write_shard(tmp_path / "data" / "train_000000.bin", ids)  # no val shards: a second warning
    args = ["train", "--data", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out"), "--model", "tiny", "--block-size",
            "16", "--micro-batch", "2", "--max-steps", "2", "--eval-interval", "1", "--sample-tokens", "0", "--threads", "1",
            "--compile", "off", "--device", "cpu"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # so that only warn(once=True) can drop the repeat
        assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    plots = [line for line in err if "matplotlib is not" in line]
    assert plots == ["gpt2kit: warning: matplotlib is not installed (pip install gpt2kit[plot]); skipping loss.png."]
    assert any(line.startswith("gpt2kit: warning: ") and "has no val shards" in line for line in err)
    assert not any(".py:" in line for line in err)  # no file:line noise
