#!/usr/bin/env bash
# Builds the example Proxy-Wasm plugin with Debian's clang and wasm-ld (packages clang and lld;
# `make tools` installs them). Usage: examples/wasm/build.sh [OUT.wasm]  (default: next to the source).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/mesh_guard.wasm}"
clang --target=wasm32-unknown-unknown -O2 -nostdlib -ffreestanding -fno-builtin \
  -Wall -Wextra -Wno-unused-parameter -Werror \
  -Wl,--no-entry -Wl,--allow-undefined -Wl,--strip-all \
  -o "$out" "$here/mesh_guard.c"
echo "$out"
