#!/usr/bin/env bash
# bench/lora: many LoRA adapters of one base model over a few replicas —
# Loadstar's scored picker (adapter affinity + load) against adapter-blind
# least-request, replaying the Azure LLM conversation trace with each
# request naming one of ADAPTERS adapters drawn with Zipf popularity.
#   bench/lora/run.sh      (from the repository root)
# Environment: ADAPTERS (default 100), ZIPF (1.0), REPLICAS (4), MAX_LORAS
# (adapters one replica batches at once, vLLM's --max-loras; 4), MAX_CPU_LORAS
# (its host cache; 12), RANK (8), REQUESTS (3000), TIME_SCALE (10), RATES
# ("4 8": multiples of the trace's arrival rate), PICKERS.
# Reports TTFT p50/p90/p99, output tokens/s and the engines' adapter loads
# (disk to host memory) per model minute; the table's "p90 vs LR" column is
# least-request's p90 over each run's.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=build/release/loadstar
replay=build/release/bench/trace_replay
cmake --build --preset release --target loadstar trace_replay >/dev/null
adapters=${ADAPTERS:-100}
replicas=${REPLICAS:-4}
scale=${TIME_SCALE:-10}
port=${PORT:-18380}
admin=$((port + 10))

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
$bin model synth --size 16MiB -o "$work/base" >/dev/null
{
  cat <<YAML
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: bench}
spec: {source: "file://$work/base"}
YAML
  names=""
  for k in $(seq 0 $((adapters - 1))); do
    $bin model synth --lora-of "$work/base" --rank "${RANK:-8}" --seed "$((k + 1))" \
      -o "$work/adapters/a$k" >/dev/null
    cat <<YAML
---
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: adapter-$k}
spec: {source: "file://$work/adapters/a$k", adapterOf: bench}
YAML
    names="$names${names:+, }adapter-$k"
  done
  echo "---"
  echo "# ADAPTERS: [$names]"
} > "$work/models.yaml"

results="$work/results.jsonl"
for rate in ${RATES:-"4 8"}; do
  for picker in ${PICKERS:-least-request scored}; do
    { cat "$work/models.yaml"; cat <<YAML
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: bench
  replicas: ${replicas}
  engine: {name: engine-sim, args: ["--profile", "llama-3.1-8b-h100-80gb", "--time-scale", "${scale}", "--max-model-len", "16384", "--log-level", "warn"]}
  routing: {picker: ${picker}}
  lora: {adapters: [$(grep '^# ADAPTERS' "$work/models.yaml" | sed 's/.*\[\(.*\)\]/\1/')], maxLoras: ${MAX_LORAS:-4}, maxCpuLoras: ${MAX_CPU_LORAS:-12}}
YAML
    } > "$work/bench.yaml"
    rm -rf "$work/data/state"
    $bin up -f "$work/bench.yaml" --data-dir "$work/data" --port "$port" --admin-port "$admin" \
      --log-level warn ${UP_ARGS:-} > "$work/up.log" 2>&1 &
    up_pid=$!
    for _ in $(seq 1200); do
      ready=$(curl -sf "http://127.0.0.1:$admin/api/v1/services" 2>/dev/null |
              grep -o '"ready":[0-9]*' | head -1 | cut -d: -f2 || true)
      [ "${ready:-0}" = "$replicas" ] && break
      sleep 0.1
    done
    [ "${ready:-0}" = "$replicas" ] || { cat "$work/up.log"; exit 1; }
    echo "== rate ${rate}x, picker ${picker}" >&2
    $replay --trace ../shared/traces/AzureLLMInferenceTrace_conv.csv \
      --requests "${REQUESTS:-3000}" --rate "$rate" --time-scale "$scale" \
      --gateway-port "$port" --admin-port "$admin" \
      --adapters "$adapters" --adapter-zipf "${ZIPF:-1.0}" --adapter-prefix adapter- \
      --label "$picker" | tee -a "$results" || true
    kill -TERM $up_pid; wait $up_pid || true
  done
done
$replay --summarize "$results"
