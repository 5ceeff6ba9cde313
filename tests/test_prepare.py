"""prepare: chunked parallel tokenization equals tiktoken on the whole text; val tail; JSONL; bad input."""

import json

import numpy as np
import pytest
import tiktoken

from gpt2kit.data.prepare import chunk_text, prepare, tail_cut
from gpt2kit.data.shards import find_shards, open_shard
from gpt2kit.errors import ConfigError, DataError, Gpt2kitWarning
from gpt2kit.tokenizer.gpt2_vocab import GPT2_PATTERN, mergeable_ranks

EOT = 50256


@pytest.fixture(scope="module")
def ref():
    """tiktoken itself (built from the same vocabulary file), the reference for our chunked encoding."""
    return tiktoken.Encoding(
        "ref-gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=mergeable_ranks(), special_tokens={"<|endoftext|>": EOT}
    )


def _assert_chunks_encode_as_the_whole(text, size, ref, name):
    chunks = chunk_text(text, size)
    assert len(chunks) > 10 and "".join(chunks) == text, name
    assert [i for c in chunks for i in ref.encode_ordinary(c)] == ref.encode_ordinary(text), name


def test_chunked_encoding_equals_whole_text_on_every_excerpt(excerpts_dir, ref):
    files = sorted(excerpts_dir.glob("*.txt"))
    assert len(files) == 7
    for path in files:
        _assert_chunks_encode_as_the_whole(path.read_text(encoding="utf-8"), 1024, ref, path.name)


@pytest.mark.corpora
def test_chunked_encoding_equals_whole_text_on_every_corpus(corpora_dir, ref):
    for path in sorted(corpora_dir.glob("*.txt")):
        _assert_chunks_encode_as_the_whole(path.read_text(encoding="utf-8")[:300_000], 4096, ref, path.name)


def test_chunk_cuts_tricky_whitespace(ref):
    text = ("a\n\n\nb  \n\n c\n\n'sd e\t\n\nf " * 400) + "x" * 5000 + " y"
    chunks = chunk_text(text, 64)
    assert "".join(chunks) == text and len(chunks) > 10
    assert [i for c in chunks for i in ref.encode_ordinary(c)] == ref.encode_ordinary(text)


def _read(out, split):
    return np.concatenate([open_shard(p) for p in find_shards(out, split)]).tolist()


def test_prepare_text_and_jsonl_with_val_tail(tmp_path, excerpts_dir, ref):
    src = tmp_path / "src"
    src.mkdir()
    a = (excerpts_dir / "austen.txt").read_text(encoding="utf-8")  # 80 KB
    b = (excerpts_dir / "kjv.txt").read_text(encoding="utf-8")  # 61 KB, long paragraphs (a chapter each)
    (src / "a.txt").write_text(a, encoding="utf-8")
    (src / "b.txt").write_text(b, encoding="utf-8")
    records = [{"text": f"record {i}: " + "word " * (i % 7)} for i in range(200)]
    (src / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    s = prepare([src], tmp_path / "out", val_tail=0.1, workers=2, progress=False)
    train, val = _read(tmp_path / "out", "train"), _read(tmp_path / "out", "val")
    ca, cb = tail_cut(a, 0.1), tail_cut(b, 0.1)
    assert abs(len(a) - ca - len(a) // 10) < 1_000 and a[ca - 1] == "\n"  # cut at a paragraph near 10 %
    assert abs(len(b) - cb - len(b) // 10) < 1_000 and b[cb] == " "  # no paragraph near: before a space
    want_train = [EOT, *ref.encode_ordinary(a[:ca]), EOT, *ref.encode_ordinary(b[:cb])]
    want_val = [EOT, *ref.encode_ordinary(a[ca:]), EOT, *ref.encode_ordinary(b[cb:])]
    for r in records[:180]:
        want_train += [EOT, *ref.encode_ordinary(r["text"])]
    for r in records[180:]:
        want_val += [EOT, *ref.encode_ordinary(r["text"])]
    assert train == want_train
    assert val == want_val
    assert (s.train.documents, s.val.documents) == (182, 22)
    assert s.train.tokens == len(want_train) and s.val.tokens == len(want_val)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["eot_placement"] == "prefix" and meta["val_tail"] == 0.1 and 3.5 < meta["bytes_per_token"] < 5
    with pytest.raises(DataError, match="already holds shards.*--overwrite"):
        prepare([src], tmp_path / "out", progress=False)


def test_paragraph_documents_and_val_files(tmp_path, ref):
    (tmp_path / "t.txt").write_text("First para.\n\nSecond  para.\n \nThird.")
    (tmp_path / "v.txt").write_text("Held out.")
    s = prepare(
        [tmp_path / "t.txt"], tmp_path / "out", val_files=[tmp_path / "v.txt"], docs="paragraph", workers=1, progress=False
    )
    assert _read(tmp_path / "out", "train") == [EOT, *ref.encode_ordinary("First para."), EOT, *ref.encode_ordinary("Second  para."),
                                                EOT, *ref.encode_ordinary("Third.")]  # fmt: skip
    assert _read(tmp_path / "out", "val") == [EOT, *ref.encode_ordinary("Held out.")]
    assert s.train.documents == 3 and s.val.documents == 1


def test_bad_inputs_fail_naming_the_file_or_are_skipped_loudly(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("Some good text. " * 50)
    cases = {
        "empty.txt": (b"  \n", "empty.txt: the file is empty"),
        "image.txt": (b"\x89PNG\r\n\x1a\n\0\0\0", "image.txt looks binary"),
        "latin1.txt": (
            "caf\u00e9 cr\u00e8me".encode("latin-1"),
            r"latin1.txt:1: not valid UTF-8 \(byte 0xe9 at offset 3\); convert it first, e.g. `iconv",
        ),
        "bad.jsonl": (b'{"text": "ok"}\n{"txt": "no"}\n', r"bad.jsonl:2: missing field 'text' \(found \['txt'\]\).*--text-field"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=message):
            prepare([good, tmp_path / name], tmp_path / f"out-{name}", workers=1, progress=False)
    with pytest.warns(Gpt2kitWarning) as warned:
        s = prepare([good, *(tmp_path / n for n in cases)], tmp_path / "skip", on_bad_input="skip", workers=1, progress=False)
    assert s.train.documents == 1 and len(s.skipped) == 4
    assert s.val.shards == [] and not list((tmp_path / "skip").glob("val_*"))  # no val split asked: no (empty) val shard
    shown = " ".join(str(w.message) for w in warned)
    assert all(f"skipping {tmp_path / n}" in shown for n in cases)
    with pytest.raises(DataError, match="does not exist"):
        prepare([tmp_path / "missing.txt"], tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="val_tail"):
        prepare([good], tmp_path / "o", val_tail=1.5, progress=False)


def test_hf_dataset_records_split_by_val_tail(tmp_path, monkeypatch, ref):
    import sys
    import types

    class FakeDataset:  # the slice of the `datasets` API that prepare uses
        column_names = ["text", "id"]

        def __init__(self, texts):
            self.texts = texts

        def __len__(self):
            return len(self.texts)

        def __getitem__(self, s):
            return {"text": self.texts[s], "id": list(range(len(self.texts)))[s]}

    texts = [f"document number {i}." for i in range(300)]
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, split: FakeDataset(texts) if (name, split) == ("org/corpus", "train") else 1 / 0
    monkeypatch.setitem(sys.modules, "datasets", fake)
    s = prepare([], tmp_path / "out", hf_dataset="org/corpus", val_tail=0.1, workers=1, progress=False)
    assert (s.train.documents, s.val.documents) == (270, 30)
    assert _read(tmp_path / "out", "val") == [i for t in texts[270:] for i in [EOT, *ref.encode_ordinary(t)]]
    with pytest.raises(DataError, match="has no field 'body'.*--text-field"):
        prepare([], tmp_path / "out2", hf_dataset="org/corpus", text_field="body", progress=False)


def _killed_prepare(src, out):
    """`gpt2kit prepare` killed with SIGKILL once its first shard is on disk, well before its ~35th."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "gpt2kit", "prepare", str(src), "--out", str(out), "--workers", "1", "--no-progress",
           "--shard-tokens", "10000"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # (a hang guard; the kill point is the first shard, not a time)
        while not list(out.glob("train_*.bin")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard appeared"
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL and not (out / "meta.json").exists()  # killed mid-run
    return cmd


@pytest.fixture(scope="module")
def many_texts(tmp_path_factory, excerpts_dir):
    src = tmp_path_factory.mktemp("kill-src")
    for copy in range(4):  # 1.4 MB, ~350k tokens
        for f in excerpts_dir.glob("*.txt"):
            (src / f"{f.stem}_{copy}.txt").write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    return src


def test_kill_9_during_prepare_then_rerun(tmp_path, many_texts):
    import subprocess

    out = tmp_path / "out"
    cmd = _killed_prepare(many_texts, out)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 2 and "already holds shards" in rerun.stderr and "--overwrite" in rerun.stderr
    assert rerun.stderr.count("\n") == 1 and "Traceback" not in rerun.stderr
    assert subprocess.run([*cmd, "--overwrite"], capture_output=True, timeout=600).returncode == 0
    prepare([many_texts], tmp_path / "ref", workers=1, shard_tokens=10_000, progress=False)  # never interrupted
    names = sorted(p.name for p in (tmp_path / "ref").glob("*.bin"))
    assert len(names) > 20 and sorted(p.name for p in out.glob("*.bin")) == names
    assert all((out / n).read_bytes() == (tmp_path / "ref" / n).read_bytes() for n in names)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train"] == json.loads((tmp_path / "ref" / "meta.json").read_text())["train"]


def test_train_refuses_the_shards_of_a_killed_prepare(tmp_path, many_texts):
    import subprocess
    import sys

    out = tmp_path / "out"
    _killed_prepare(many_texts, out)
    r = subprocess.run([sys.executable, "-m", "gpt2kit", "train", "--data", str(out), "--out-dir", str(tmp_path / "run"),
                        "--model", "tiny", "--max-steps", "1", "--threads", "1"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 2 and "prepare" in r.stderr, r.stderr[-500:]
