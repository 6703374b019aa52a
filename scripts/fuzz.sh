#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for SECONDS (default
# 20) from the seed corpus in fuzz/corpus. A crash leaves its input in
# build/fuzz/crash-*; turn it into a unit test before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
for target in safetensors resources openai_request gateway_text scheduler_trace agent_manifest kube; do
  work=build/fuzz/corpus-$target
  mkdir -p "$work"
  echo "fuzzing $target for ${seconds}s"
  (cd build/fuzz && ./fuzz/${target}_fuzz -max_total_time="$seconds" -print_final_stats=0 \
    -timeout=10 -rss_limit_mb=2048 "corpus-$target" "../../fuzz/corpus/$target" 2>&1 | tail -2)
done
