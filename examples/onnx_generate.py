"""Greedy text generation with a gpt2kit model exported to ONNX: the model runs in onnxruntime alone.

    gpt2kit export onnx --model builtin --out gpt2-onnx
    python examples/onnx_generate.py gpt2-onnx "The meaning of life is" --max-new-tokens 32

The graph (see src/gpt2kit/export/onnx.py) takes `input_ids` (B, T) and, per layer l, the cached
`past_key_values.{l}.key/value` (B, nh, P, hs); it returns `logits` (B, T, V) and `present.{l}.key/value`
(B, nh, P + T, hs). Generation is then:

  1. prefill: run the whole prompt with an empty cache (P = 0);
  2. take the argmax of the last position's logits as the next token;
  3. decode: run that one token with the returned `present.*` as the new `past_key_values.*`;
     repeat 2-3 until max_new_tokens, <|endoftext|>, or the context (n_positions) is full.

Only `main` needs gpt2kit, for its tokenizer (GPT-2's vocabulary ships inside it, so nothing downloads);
`greedy` needs numpy and onnxruntime only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

EOT = 50256  # <|endoftext|>


def load(folder: str | Path, threads: int | None = None) -> tuple[ort.InferenceSession, dict]:
    """The onnxruntime session for folder/model.onnx, and the model's config.json."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(Path(folder) / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return session, json.loads((Path(folder) / "config.json").read_text())


def empty_past(config: dict, batch: int) -> dict[str, np.ndarray]:
    """A cache holding nothing yet: every layer's keys and values with P = 0 columns."""
    nh, hs = config["n_head"], config["n_embd"] // config["n_head"]
    shape = (batch, nh, 0, hs)  # (B, nh, P, hs)
    return {f"past_key_values.{i}.{kv}": np.zeros(shape, np.float32) for i in range(config["n_layer"]) for kv in ("key", "value")}


def greedy(
    session: ort.InferenceSession, config: dict, prompt: list[int], max_new_tokens: int, stop_at_eot: bool = True
) -> list[int]:
    """The greedy continuation of one prompt (token ids), without the prompt and without a final <|endoftext|>."""
    names = [o.name for o in session.get_outputs()]  # "logits", then "present.{l}.key/value"
    past = empty_past(config, batch=1)
    ids = np.array([prompt], dtype=np.int64)  # (1, T): the whole prompt first, then one token per step
    out: list[int] = []
    n_ctx = config["n_positions"]
    for _ in range(max_new_tokens):
        if len(prompt) + len(out) > n_ctx:
            break  # the next step would need a position the model does not have
        results = dict(zip(names, session.run(None, {"input_ids": ids, **past})))
        token = int(results["logits"][0, -1].argmax())
        if token == EOT and stop_at_eot:
            break
        out.append(token)
        past = {name.replace("present.", "past_key_values."): value for name, value in results.items() if name != "logits"}
        ids = np.array([[token]], dtype=np.int64)  # (1, 1)
    return out


def main() -> None:
    from gpt2kit import Tokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a folder written by `gpt2kit export onnx`")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own choice)")
    args = p.parse_args()
    session, config = load(args.folder, args.threads)
    tok = Tokenizer()
    tokens = greedy(session, config, tok.encode_ordinary(args.prompt), args.max_new_tokens)
    print(args.prompt + tok.decode(tokens))


if __name__ == "__main__":
    main()
