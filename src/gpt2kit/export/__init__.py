"""Export a gpt2kit model to the formats other runtimes load as their own.

  - `export_gguf` (gguf.py): one GGUF file that llama.cpp (and the apps built on it) runs as a GPT-2,
    written with the `gguf` package, llama.cpp's own writer.
  - `export_onnx` (onnx.py): an ONNX graph with past/present key-value inputs and outputs for onnxruntime.

Both need the optional `export` extra (`pip install "gpt2kit[export]"`) and import it only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpt2kit.lazy import exports

GGUF_TYPES = ("f32", "f16", "q8_0")  # the weight matrices' types export_gguf writes (here: `gpt2kit export --help` needs no torch)
_WHERE = {"export_gguf": "gpt2kit.export.gguf", "export_onnx": "gpt2kit.export.onnx"}
__getattr__, __dir__ = exports(__name__, _WHERE)  # imported on first use

if TYPE_CHECKING:
    from gpt2kit.export.gguf import export_gguf
    from gpt2kit.export.onnx import export_onnx

__all__ = ["GGUF_TYPES", "export_gguf", "export_onnx"]
