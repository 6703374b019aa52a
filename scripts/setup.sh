#!/usr/bin/env bash
# Installs what Loadstar's build and tests need on Debian 12 (bookworm), and
# the npm packages of the JS tests. Safe to run again: it installs only what
# is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  # toolchain
  g++ cmake ninja-build pkg-config git
  # libraries (Boost 1.81, not bookworm's default 1.74)
  libboost1.81-dev libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev prometheus-cpp-dev
  nlohmann-json3-dev libsimdjson-dev libxxhash-dev libssl-dev liburing-dev libpugixml-dev
  libhiredis-dev libzmq3-dev libmsgpuck-dev libmimalloc-dev
  # tests: GoogleTest, promtool (prometheus), libFuzzer (clang)
  googletest libgtest-dev libgmock-dev libbenchmark-dev prometheus curl clang libclang-rt-14-dev
  # tests: nginx as an HTTPS origin, openssl to make its certificate
  nginx-light openssl
  # tests: Redis for tenant limits shared across gateways
  redis-server
  # tests: the dashboard in a real browser (driven by playwright-core from npm)
  chromium
)
# `setup.sh --bench` adds what the benchmarks under bench/ drive (load
# generator, nginx as the reverse-proxy baseline).
if [ "${1:-}" = "--bench" ]; then
  packages+=(wrk bc fio aria2 iproute2 python3)
fi
# tests: kubectl for Kubernetes mode (Debian's is 1.20, matching the test
# API server); any kubectl already on the PATH will do.
if ! command -v kubectl >/dev/null; then
  packages+=(kubernetes-client)
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# JS test dependencies (the official openai client, playwright-core), pinned
# by package-lock.json.
if [ ! -d tests/js/node_modules/openai ] || [ ! -d tests/js/node_modules/playwright-core ] || [ tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]; then
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi

# llama.cpp's llama-server, the real engine of examples/llama-cpp.yaml and
# of the tests: built once from the source inside the npm package
# node-llama-cpp (about 7 minutes on 2 cores), cached in
# ~/.cache/loadstar-llama, outside the checkout.
./scripts/llama-server.sh build >/dev/null
