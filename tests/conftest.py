"""Shared fixtures: tiny random GPT-2s saved by transformers, excerpts of the corpora, the whole corpora."""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

import pytest
import torch

from gpt2kit import machine
from gpt2kit.generate import threads

# The suite never reads the user's environment: a key, a server address or a torchrun rank set in the shell
# would change what the code under test does (GPT2KIT_API_KEY turned two server tests into 401s).
# Cleared at import, before any test or the subprocesses they start can see them.
_KEEP = {"GPT2KIT_CORPORA"}
for _name in [n for n in os.environ if n not in _KEEP and n.startswith(("GPT2KIT_", "OPENAI_"))]:
    del os.environ[_name]
for _name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
    os.environ.pop(_name, None)
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Tests run on the CPU, as on a machine without a GPU: a device left to `auto` (from_pretrained, the CLI in a
# subprocess) is the CPU here too. The tests marked gpu name their device.
os.environ["GPT2KIT_DEVICE"] = "cpu"
# measured kernel choices go to a folder of this run, never the user's ~/.cache (model/kernels.py)
os.environ["GPT2KIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="gpt2kit-test-cache-")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
# Small public-domain excerpts shipped with the repo (tests/fixtures/README.md): what the suite reads.
EXCERPTS = REPO / "tests" / "fixtures" / "corpora"
# The whole corpora (41 MB), for the tests marked `corpora` only. GPT2KIT_CORPORA points elsewhere where
# ../shared does not travel (the lent GPU machine gets the repo alone).
CORPORA = Path(os.environ.get("GPT2KIT_CORPORA", REPO.parent / "shared" / "corpora"))
CORPORA_MISSING = f"needs the whole corpora: none at {CORPORA} (set GPT2KIT_CORPORA to run it)"


def pytest_collection_modifyitems(config, items):
    no_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA GPU")
    no_corpora = None if CORPORA.is_dir() else pytest.mark.skip(reason=CORPORA_MISSING)
    for item in items:
        if "corpora_dir" in getattr(item, "fixturenames", ()) and "corpora" not in item.keywords:
            raise pytest.UsageError(f"{item.nodeid} reads the whole corpora: mark it @pytest.mark.corpora")
        if no_gpu and "gpu" in item.keywords:
            item.add_marker(no_gpu)
        if no_corpora and "corpora" in item.keywords:
            item.add_marker(no_corpora)


@pytest.fixture(scope="session")
def excerpts_dir() -> Path:
    """tests/fixtures/corpora: the first 22-80 KB of each corpus file, same names."""
    return EXCERPTS


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    """The whole corpora; only for tests marked `corpora` (skipped where the corpora are absent)."""
    if not CORPORA.is_dir():
        pytest.skip(CORPORA_MISSING)
    return CORPORA


class ScriptedRunner:
    """A mock decode runner (the Engine's `runner`): after the token at position p it predicts `script[p + 1]`
    (positions from the cache plan), every other token at -1e9. Stopping, streaming and filtering logic then
    runs on exact, known tokens over the real KVCache, in milliseconds."""

    def __init__(self, script, vocab=50257):
        self.script, self.vocab = list(script), vocab

    def _logits(self, positions):
        out = torch.full((len(positions), self.vocab), -1e9)
        for i, p in enumerate(positions.tolist()):
            out[i, self.script[min(p + 1, len(self.script) - 1)]] = 0.0
        return out

    def prefill(self, idx, cache, mask, logits=True):
        plan = cache.plan(idx.shape[1], mask)
        return self._logits(plan.position_ids[:, -1]) if logits else None

    def decode(self, tokens, cache, mask, out=None):
        """As DecodeRunner.decode: `out` (B, V' <= V) gets the logits' first V' columns and is returned."""
        logits = self._logits(cache.plan(1, mask).position_ids[:, 0])
        return logits if out is None else out.copy_(logits[:, : out.shape[1]])


def save_hf_gpt2(folder: Path, seed: int = 0, **config) -> Path:
    """A random-weight transformers GPT2LMHeadModel (with tokenizer files) saved to `folder`."""
    import transformers

    from gpt2kit.tokenizer.gpt2_vocab import write_hf_tokenizer_files

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**{"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128, **config})
    model = transformers.GPT2LMHeadModel(cfg).eval()
    perturb_(model)
    model.save_pretrained(folder)
    write_hf_tokenizer_files(Path(folder))
    return Path(folder)


def perturb_(model: torch.nn.Module, scale: float = 0.1, seed: int = 1234) -> torch.nn.Module:
    """Give every bias a non-zero value and every LayerNorm a non-identity scale, in place.

    Fresh GPT-2 inits (ours and transformers') have zero biases and identity LayerNorms, and then a kernel
    that drops a bias or a LayerNorm that is skipped computes the same numbers: test models must not."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=g) * scale)
            elif ("ln_" in name or "ln_f" in name) and name.endswith(".weight"):
                p.mul_(1 + torch.randn(p.shape, generator=g) * scale)
    return model


def huge_kib(lo: int, hi: int) -> int:
    """KiB of anonymous huge pages in this process's mappings that overlap lo..hi (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a mapping's header line
                start, end = (int(x, 16) for x in fields[0].split("-"))
                inside = start < hi and lo < end
            elif inside and fields[0] == "AnonHugePages:":
                total += int(fields[1])
    return total


@pytest.fixture
def huge_asks(monkeypatch) -> list[int]:
    """The sizes `hugepages.empty` asks `hugepages.anonymous` for (fresh memory advised for huge pages), in order."""
    from gpt2kit import hugepages

    asks = []
    real = hugepages.anonymous
    monkeypatch.setattr(hugepages, "anonymous", lambda nbytes: asks.append(nbytes) or real(nbytes))
    return asks


def tiny_gpt(seed: int = 0, **config):
    """A random-weight GPT (ours) in eval mode, biases and LayerNorms perturbed (see perturb_)."""
    from gpt2kit import GPT, GPTConfig

    torch.manual_seed(seed)
    return perturb_(GPT(GPTConfig(**config)), seed=seed + 1234).eval()


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide random GPT-2 in Hugging Face format (model.safetensors + config.json + vocab)."""
    return save_hf_gpt2(tmp_path_factory.mktemp("tiny_hf"))


def gemv_buildable() -> pytest.MarkDecorator:
    """Skip only where gemv.c (and attend.c) cannot be built here: the switch, the platform, the CPU's flags, the
    sources, the compiler, checked without building. Never on the build's own result, so a failed build fails."""
    from gpt2kit.model import gemv

    why = gemv.not_buildable()
    return pytest.mark.skipif(why is not None, reason=f"gemv.c: {why}")


def causal_not_buildable() -> str | None:
    """Why causal.c cannot be built here (gemv_buildable's reasons, or a CPU without AVX-512 BF16), checked without
    building: never the build's own result."""
    from gpt2kit.model import gemv

    return gemv.not_buildable() or (None if {"avx512f", "avx512bw", "avx512_bf16"} <= gemv.cpu_flags() else "no AVX-512 BF16")


def causal_buildable() -> pytest.MarkDecorator:
    """Skip only where causal.c cannot be built here (causal_not_buildable)."""
    why = causal_not_buildable()
    return pytest.mark.skipif(why is not None, reason=f"causal.c: {why}")


# ---- gemv.py's library: the builds a test runs on ---------------------------------------------------------
def _gemv_builds() -> list[str]:
    """The builds this CPU can test: its own, and the AVX2 ones (with and without AVX-VNNI) it can also run."""
    from gpt2kit.model import gemv

    flags = gemv.cpu_flags()
    extra = ["-mno-avx512f"] if "avx512f" in flags and {"avx2", "fma"} <= flags else []
    return ["", *extra, *(["-mno-avx512f -mno-avxvnni"] if "avx_vnni" in flags else [])]


def _forget_gemv_builds() -> None:
    from gpt2kit.model import gemv
    from gpt2kit.model import linear as L

    gemv._build.cache_clear()
    L._gemv_works.cache_clear()


@pytest.fixture(params=_gemv_builds(), ids=lambda f: f or "native")
def build(request, monkeypatch):
    """gemv.c built with these extra compiler flags (in the user cache, as a user's build), forgotten after."""
    from gpt2kit.model import gemv

    monkeypatch.setenv(gemv.CFLAGS, request.param)
    _forget_gemv_builds()
    yield request.param
    _forget_gemv_builds()


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A build into an empty cache directory, forgotten again afterwards."""
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    _forget_gemv_builds()
    yield tmp_path
    _forget_gemv_builds()


def needs_gemv(dtype) -> pytest.MarkDecorator:
    """Skip where gemv.c's kernels for `dtype` do not run here, saying why (gemv.unavailable)."""
    from gpt2kit.model import gemv

    why = gemv.unavailable(dtype)
    return pytest.mark.skipif(why is not None, reason=f"gemv.c for {dtype}: {why}")


def bf16_in_build(build: str) -> bool:
    """Whether a build with these extra flags has the bf16 kernels: the CPU's flags and the build's alone (a test
    that skips on the build's own result would hide a broken build). Every build has them (AVX-512 BF16's, or
    AVX2's in float32 FMAs) where the CPU has AVX2 with FMA or AVX-512; `build` no longer matters."""
    from gpt2kit.model import gemv

    flags = gemv.cpu_flags()
    return {"avx2", "fma"} <= flags or {"avx512f", "avx512bw", "avx512vl"} <= flags


def fake_pass(cost):
    """A kernel_timing._pass on no clock: each call of a kernel k takes cost(k) microseconds ({role: seconds})."""

    def run(calls):
        spent: dict[str, float] = {}
        for role, kernel, _ in calls:
            spent[role] = spent.get(role, 0.0) + cost(kernel) / 1e6
        return spent

    return run


REAL_BUSY_METER = machine.busy_meter


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """Every measurement sees an idle machine, so that whether a choice is cached does not depend on what else the
    test machine runs (test_kernel_busy.py tests the meter and a busy machine's measurement)."""
    monkeypatch.setattr(machine, "busy_meter", lambda path=None: lambda: 0.0)
    monkeypatch.setattr(threads, "_shared", None)  # the engines' thread governor, made again on this quiet machine


@pytest.fixture(autouse=True)
def collector_unfrozen():
    """The CLI freezes what it has loaded out of the cyclic collector (cli/common.py), for the life of its process;
    the tests run many commands in one process, so each test's frozen objects are handed back to the collector."""
    yield
    gc.unfreeze()
