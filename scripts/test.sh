#!/usr/bin/env bash
# The whole test suite: set up, build, run every test (release build), the
# unit and integration tests again under ASan+UBSan, then each parser's
# fuzzer for a short while.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release
ctest --preset release
cmake --preset asan-ubsan -DLOADSTAR_BUILD_BENCH=OFF >/dev/null
cmake --build --preset asan-ubsan --target unit_tests integration_tests loadstar
ctest --preset asan-ubsan -R '^(unit|integration)$'
./scripts/fuzz.sh 10
