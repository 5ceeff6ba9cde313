"""Export a model to a format another runtime loads as its own.

  gpt2kit export gguf --model builtin --out builtin.gguf --type q8_0     # llama.cpp and the apps built on it
  gpt2kit export onnx --model builtin --out builtin-onnx                 # onnxruntime, with a KV cache

GGUF: one file with the weights (f32, f16 or q8_0 matrices) and GPT-2's tokenizer, which llama.cpp runs as a
GPT-2 (`llama-completion -m builtin.gguf -p "Hello"`). ONNX: DIR/model.onnx (past/present key-value inputs
and outputs, dynamic batch and length) and DIR/config.json; examples/onnx_generate.py is a generation loop.
docs/export.md has the details and the checks against llama.cpp and onnxruntime. Needs the `export` extra:
pip install "gpt2kit[export]".
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gpt2kit.export import GGUF_TYPES

    p.add_argument("format", choices=("gguf", "onnx"), help="gguf: one file for llama.cpp; onnx: a folder for onnxruntime")
    p.add_argument("--model", required=True, help="a preset (gpt2, ...), 'builtin', a hub id or a model folder")
    p.add_argument("--out", required=True, help="gguf: the file to write; onnx: the folder to write")
    p.add_argument("--type", default="f32", choices=GGUF_TYPES, help="gguf only: the type of the weight matrices")


def run(args: argparse.Namespace) -> None:
    from gpt2kit.errors import ConfigError
    from gpt2kit.pretrained import from_pretrained

    if args.format == "onnx" and args.type != "f32":
        raise ConfigError(f"--type {args.type} applies to gguf only: the ONNX export is fp32 (drop --type).")
    model = from_pretrained(args.model, device="cpu", dtype="fp32")
    if args.format == "gguf":
        from gpt2kit.export.gguf import export_gguf

        path = export_gguf(model, args.out, type=args.type, name=str(args.model))
        print(f"wrote {path} ({args.type}, {path.stat().st_size / 2**20:.1f} MiB)")
    else:
        from gpt2kit.export.onnx import export_onnx

        folder = export_onnx(model, args.out)
        print(f"wrote {folder}/model.onnx and {folder}/config.json")
