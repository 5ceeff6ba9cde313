"""Export a gpt2kit model to the formats other runtimes load as their own.

  - `export_gguf` (gguf.py): one GGUF file that llama.cpp (and the apps built on it) runs as a GPT-2,
    written with the `gguf` package, llama.cpp's own writer.
  - `export_onnx` (onnx.py): an ONNX graph with past/present key-value inputs and outputs for onnxruntime.

Both need the optional `export` extra (`pip install "gpt2kit[export]"`) and import it only when called.
"""

from __future__ import annotations

from gpt2kit.export.gguf import GGUF_TYPES, export_gguf
from gpt2kit.export.onnx import export_onnx

__all__ = ["GGUF_TYPES", "export_gguf", "export_onnx"]
