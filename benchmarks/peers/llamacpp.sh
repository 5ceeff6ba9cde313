#!/usr/bin/env bash
# llama.cpp, the CPU speed peer: built once into a cache folder by tools/llamacpp.sh (see there); prints its bin folder.
exec "$(dirname "$0")/../../tools/llamacpp.sh" "$@"
