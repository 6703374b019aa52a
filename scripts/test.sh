#!/usr/bin/env bash
# The whole test suite: set up, build, run every test (release build), the
# unit tests again under ASan+UBSan, then each parser's fuzzer (ASan+UBSan)
# for a short while. CI runs exactly this; on 2 cores it takes about 40
# minutes (one-time cached builds aside), most of it the two builds.
#
# LOADSTAR_SANITIZE_ALL=1 also runs the integration tests under ASan+UBSan
# (about 20 more minutes to build and 20 to run on 2 cores: too long for CI;
# run it before a change to the gateway's or controller's concurrency lands).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Kubernetes mode is tested against a real API server: built once (about 15
# minutes on 2 cores, cached outside the checkout), started and stopped by
# the tests themselves. Where it exists, its tests must run, not skip.
k8s=${LOADSTAR_K8S_APISERVER:-../shared/k8s/apiserver}
if [ -x "$k8s" ]; then
  "$k8s" setup
  export LOADSTAR_K8S_APISERVER=$(realpath "$k8s") LOADSTAR_REQUIRE_K8S=1
else
  echo "test: no test API server at $k8s; the Kubernetes tests will be skipped" >&2
fi
# Kubernetes on a real node (scripts/node.sh: kubelet, containerd, kube-proxy,
# built once like the API server): needs root, as a kubelet does; where it
# can run, its test must run, not skip.
if [ -x "$k8s" ] && [ "$(id -u)" -eq 0 ]; then
  ./scripts/node.sh setup
  export LOADSTAR_REQUIRE_NODE=1
else
  echo "test: the real-node test needs root and the test API server; it will be skipped" >&2
fi
# llama.cpp's llama-server (setup.sh built it): its tests must run, not skip;
# so must the dashboard's in Chromium (setup.sh installed it).
export LOADSTAR_REQUIRE_LLAMA=1 LOADSTAR_REQUIRE_BROWSER=1
cmake --preset release >/dev/null
cmake --build --preset release
ctest --preset release
cmake --preset asan-ubsan -DLOADSTAR_BUILD_BENCH=OFF >/dev/null
if [ "${LOADSTAR_SANITIZE_ALL:-0}" = 1 ]; then
  cmake --build --preset asan-ubsan --target unit_tests integration_tests loadstar
  ctest --preset asan-ubsan -R '^(unit|integration)$'
else
  cmake --build --preset asan-ubsan --target unit_tests
  ctest --preset asan-ubsan -R '^unit$'
fi
./scripts/fuzz.sh 10
