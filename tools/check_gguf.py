"""Check `gpt2kit export gguf` files with llama.cpp itself (developer-run; results go to docs/export.md).

    tools/llamacpp.sh                      # once: builds llama.cpp's tools into ~/.cache/gpt2kit/llamacpp
    python tools/check_gguf.py [--text FILE] [--json results.json]

For two models (a random-weight GPT-2, 4 x 128, n_positions 256, every bias and LayerNorm perturbed, with
GPT-2's full vocabulary; and the built-in model), each exported as f32, f16 and q8_0:
  1. tokenization: `llama-tokenize --ids` on the held-out text == gpt2kit's Tokenizer.encode_ordinary;
  2. perplexity: `llama-perplexity -c N` against gpt2kit's scorer (`score_tokens`, what `gpt2kit eval perplexity`
     runs) on exactly llama-perplexity's windows: the text's tokens cut into consecutive chunks of N, no BOS
     (GPT-2's vocabulary adds none), each chunk scoring only its second half (positions N/2+1 .. N-1, the
     rest is context); tolerance 0.5 % (f32), 2 % (f16, q8_0);
  3. greedy text: `llama-simple -n 32` (greedy sampler) == gpt2kit's greedy 32 tokens (f32);
  4. the file itself == what llama.cpp's own convert_hf_to_gguf.py writes for the model's save_pretrained
     folder at the same type (same tensors, bit for bit, and the same metadata but the descriptive general.*).
The held-out text defaults to the end of corpora/austen.txt (the built-in model's validation tail).
Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import gpt2kit
from gpt2kit.eval.loglikelihood import score_tokens
from gpt2kit.export.gguf import export_gguf
from gpt2kit.generate import SamplingParams, generate

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {"f32": 0.005, "f16": 0.02, "q8_0": 0.02}
PROMPT = "It is a truth universally acknowledged, that"


def llama_bin() -> Path:
    out = subprocess.run([str(ROOT / "tools" / "llamacpp.sh"), "--bin"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("llama.cpp is not built: run tools/llamacpp.sh first")
    return Path(out.stdout.strip())


def run(*cmd) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{out.stderr.decode(errors='replace')[-2000:]}")
    return out


def random_model() -> gpt2kit.GPT:
    torch.manual_seed(0)
    model = gpt2kit.GPT(gpt2kit.GPTConfig(n_layer=4, n_embd=128, n_head=4, n_positions=256))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            elif "ln_" in name and name.endswith(".weight"):
                p.mul_(1 + torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def our_perplexity(model, ids: list[int], n_ctx: int) -> tuple[float, int]:
    """llama-perplexity's protocol (tools/perplexity/perplexity.cpp, `perplexity`) with gpt2kit's scorer."""
    first = n_ctx // 2
    chunks = [ids[i * n_ctx : (i + 1) * n_ctx] for i in range(len(ids) // n_ctx)]
    requests = [(c[: first + 1], c[first + 1 :]) for c in chunks]  # logits at first..n_ctx-2 predict first+1..n_ctx-1
    scores = score_tokens(model, requests, batch_size=4)
    n = int(scores.n_tokens.sum())
    return math.exp(-float(scores.logprob.sum()) / n), n


def llama_perplexity(bindir: Path, gguf: Path, text: Path, n_ctx: int, type: str) -> float:
    # --no-repack for q8_0: on AMX CPUs llama.cpp 11434 repacks Q8_0 weights for its AMX kernels and then
    # crashes (segfault, for converter-made files too); the plain CPU kernels compute the same model
    extra = ["--no-repack"] if type == "q8_0" else []
    out = run(bindir / "llama-perplexity", "-m", gguf, "-f", text, "-c", n_ctx, "-b", n_ctx, "-t", os.cpu_count() or 2, *extra)
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", (out.stdout + out.stderr).decode(errors="replace"))
    if not found:
        raise RuntimeError("llama-perplexity printed no final estimate")
    return float(found.group(1))


def converter_matches(model, gguf_file: Path, type: str, workdir: Path) -> str:
    """Compare our file with what llama.cpp's convert_hf_to_gguf.py writes for the same model and type."""
    import gguf as ggufpy
    import numpy as np

    source = llama_bin().parent / "source"
    if not (source / "convert_hf_to_gguf.py").is_file():
        return "skipped (no llama.cpp source in the cache)"
    folder = workdir / f"hf-{gguf_file.stem.rsplit('-', 1)[0]}"  # one save_pretrained folder per model
    if not (folder / "config.json").is_file():
        gpt2kit.save_pretrained(model, folder)
    theirs_file = workdir / f"converted-{type}.gguf"
    env = {**os.environ, "PYTHONPATH": str(source / "gguf-py")}
    subprocess.run([sys.executable, str(source / "convert_hf_to_gguf.py"), str(folder), "--outtype", type,
                    "--outfile", str(theirs_file)], check=True, capture_output=True, env=env)  # fmt: skip
    ours, theirs = ggufpy.GGUFReader(str(gguf_file)), ggufpy.GGUFReader(str(theirs_file))
    t_ours, t_theirs = {t.name: t for t in ours.tensors}, {t.name: t for t in theirs.tensors}
    problems = []
    if set(t_ours) != set(t_theirs):
        problems.append(f"tensor names differ: {sorted(set(t_ours) ^ set(t_theirs))}")
    for name in set(t_ours) & set(t_theirs):
        a, b = t_ours[name], t_theirs[name]
        if a.tensor_type != b.tensor_type or list(a.shape) != list(b.shape) or not np.array_equal(a.data, b.data):
            problems.append(f"{name} differs")
    # descriptive fields: the converter adds general.* facts it reads from a folder (size label, type, ...)
    skip = {k for k in set(ours.fields) | set(theirs.fields) if k.startswith("general.") and k != "general.architecture"}
    skip |= {"GGUF.kv_count"}
    f_ours = {k: f.contents() for k, f in ours.fields.items() if k not in skip}
    f_theirs = {k: f.contents() for k, f in theirs.fields.items() if k not in skip}
    for k in sorted(set(f_ours) | set(f_theirs)):
        if f_ours.get(k) != f_theirs.get(k):
            problems.append(f"metadata {k}: ours {str(f_ours.get(k))[:60]!r}, converter {str(f_theirs.get(k))[:60]!r}")
    return "identical" if not problems else "; ".join(problems[:6])


def check(name: str, model, text_file: Path, bindir: Path, workdir: Path) -> dict:
    tok = gpt2kit.Tokenizer()
    n_ctx = model.config.n_positions
    text = text_file.read_text(encoding="utf-8")
    ids = tok.encode_ordinary(text)
    files = {t: export_gguf(model, workdir / f"{name}-{t}.gguf", type=t, name=name) for t in TOLERANCE}
    result: dict = {"model": name, "n_ctx": n_ctx, "text_tokens": len(ids)}

    listed = run(bindir / "llama-tokenize", "-m", files["f32"], "-f", text_file, "--ids", "--log-disable").stdout
    llama_ids = json.loads(listed.decode().strip().splitlines()[-1])
    result["tokenization_equal"] = llama_ids == ids

    ppl, n_scored = our_perplexity(model, ids, n_ctx)
    result["perplexity"] = {"gpt2kit": ppl, "tokens_scored": n_scored}
    for t, f in files.items():
        theirs = llama_perplexity(bindir, f, text_file, n_ctx, t)
        rel = abs(theirs - ppl) / ppl
        result["perplexity"][t] = {"llama.cpp": theirs, "rel_diff": rel, "ok": rel <= TOLERANCE[t]}

    prompt_ids = tok.encode_ordinary(PROMPT)
    ours = generate(model, [prompt_ids], SamplingParams(max_new_tokens=32, temperature=0.0))[0].token_ids
    printed = run(bindir / "llama-simple", "-m", files["f32"], "-n", 32, PROMPT).stdout
    theirs_bytes = printed.removeprefix(PROMPT.encode()).removesuffix(b"\n")
    result["greedy"] = {"gpt2kit": tok.decode(ours), "llama.cpp": theirs_bytes.decode(errors="replace"),
                        "equal": theirs_bytes == tok.decode_bytes(ours), "tokens": len(ours)}  # fmt: skip
    result["converter"] = {t: converter_matches(model, f, t, workdir) for t, f in files.items()}
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    corpora = Path(os.environ.get("GPT2KIT_CORPORA", ROOT.parent / "shared" / "corpora"))
    p.add_argument("--text", type=Path, default=None, help="held-out text (default: the last 30,000 characters of austen.txt)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--models", default="random,builtin")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 2)
    bindir = llama_bin()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        text_file = args.text
        if text_file is None:
            tail = (corpora / "austen.txt").read_text(encoding="utf-8")[-30000:]
            text_file = workdir / "heldout.txt"
            text_file.write_text(tail[tail.index("\n") + 1 :].strip(), encoding="utf-8")
        models = {"random": random_model, "builtin": lambda: gpt2kit.from_pretrained("builtin")}
        results = [check(name, models[name](), text_file, bindir, workdir) for name in args.models.split(",")]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = all(passed(r) for r in results)
    return 0 if ok else 1


def passed(r: dict) -> bool:
    ppl_ok = all(v["ok"] for k, v in r["perplexity"].items() if k in TOLERANCE)
    converter_ok = all(v == "identical" or v.startswith("skipped") for v in r["converter"].values())
    return r["tokenization_equal"] and ppl_ok and r["greedy"]["equal"] and converter_ok


if __name__ == "__main__":
    sys.exit(main())
