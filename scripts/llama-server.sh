#!/usr/bin/env bash
# llama.cpp's llama-server, built from the source that ships inside the npm
# package node-llama-cpp (llama/gitRelease.bundle, a git bundle of llama.cpp
# at the release the package pins), once per package version, cached
# outside any checkout like the test API server.
#
#   scripts/llama-server.sh build   fetch the package (no install scripts), clone the bundle,
#                                   CMake CPU build of llama-server only, nothing fetched at
#                                   build time (~7 min on 2 cores, once); prints the binary
#   scripts/llama-server.sh path    the binary's path (exit 1 if not built)
#   scripts/llama-server.sh vocab   the directory of llama.cpp's vocabulary-only GGUF files
#                                   (models/ggml-vocab-*.gguf: real tokenizers, no weights)
#
# State: $LOADSTAR_LLAMA_HOME (default ~/.cache/loadstar-llama)/<package version>/.
set -euo pipefail
VERSION=${NODE_LLAMA_CPP_VERSION:-3.22.1}
HOME_DIR=${LOADSTAR_LLAMA_HOME:-$HOME/.cache/loadstar-llama}
D=$HOME_DIR/$VERSION
BIN=$D/bin/llama-server
JOBS=${JOBS:-2}

die() { echo "llama-server.sh: $*" >&2; exit 1; }

build() {
  if [ -x "$BIN" ] && [ -d "$D/vocab" ]; then echo "$BIN"; return; fi
  command -v npm >/dev/null || die "needs npm (./scripts/setup.sh)"
  command -v cmake >/dev/null && command -v git >/dev/null || die "needs cmake and git"
  mkdir -p "$D"
  local work=$D/work
  rm -rf "$work" && mkdir -p "$work"
  echo "llama-server.sh: fetching node-llama-cpp@$VERSION (npm pack: no install scripts run)" >&2
  (cd "$work" && npm pack "node-llama-cpp@$VERSION" --silent >/dev/null)
  tar xzf "$work/node-llama-cpp-$VERSION.tgz" -C "$work" package/llama/gitRelease.bundle \
    package/llama/llama.cpp.info.json
  cp "$work/package/llama/llama.cpp.info.json" "$D/"
  git -c advice.detachedHead=false clone -q "$work/package/llama/gitRelease.bundle" "$work/src"
  git -C "$work/src" rev-parse HEAD > "$D/llama.cpp.commit"
  echo "llama-server.sh: building llama-server (llama.cpp $(cut -c1-12 "$D/llama.cpp.commit"), CPU, $JOBS jobs)" >&2
  # Server only; no web UI (it would be downloaded), no HTTPS, no tests.
  cmake -S "$work/src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DGGML_NATIVE=ON -DGGML_CCACHE=OFF >"$work/cmake.log" 2>&1 ||
    { tail -20 "$work/cmake.log" >&2; die "cmake failed (log: $work/cmake.log)"; }
  cmake --build "$work/build" --target llama-server -j "$JOBS" >"$work/build.log" 2>&1 ||
    { tail -20 "$work/build.log" >&2; die "build failed (log: $work/build.log)"; }
  mkdir -p "$D/bin" "$D/vocab"
  cp "$work/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
  cp "$work/src"/models/ggml-vocab-*.gguf "$D/vocab/"
  rm -rf "$work"
  echo "$BIN"
}

case "${1:-build}" in
  build) build ;;
  path) [ -x "$BIN" ] || exit 1; echo "$BIN" ;;
  vocab) [ -d "$D/vocab" ] || exit 1; echo "$D/vocab" ;;
  *) die "usage: $0 build|path|vocab" ;;
esac
