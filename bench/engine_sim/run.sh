#!/usr/bin/env bash
# bench/engine_sim: how much load one core of engine-sim sustains, and the
# largest --time-scale at which its step loop still keeps time.
#   bench/engine_sim/run.sh            (from the repository root; needs wrk)
# Part 1 replays the Azure trace through the engine core alone (CPU cost).
# Part 2 pins engine-sim to core 0 and drives it with wrk from core 1:
#   a) "free GPU" profile (zero step cost): the requests/s the process itself
#      sustains, against the A100 profile's modelled capacity as the baseline;
#   b) A100 profile at fixed concurrency, time scale 1..N: a loop that keeps
#      time delivers the same model-time throughput at every scale.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=build/release/loadstar
core_bench=build/release/bench/engine_sim_core_bench
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
cmake --build --preset release --target loadstar engine_sim_core_bench >/dev/null

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
$bin model synth --size 16MiB -o "$work/bench" >/dev/null
cat > "$work/profiles.yaml" <<YAML
profiles:
  - name: free-gpu
    description: zero step cost, so only the simulator's own CPU limits it
    base_ms: 0
    prefill_token_us: 0
    decode_seq_us: 0
    context_token_ns: 0
    num_gpu_blocks: 200000
YAML

echo "== 1. engine core alone, Azure conversation trace =="
$core_bench ../shared/traces/AzureLLMInferenceTrace_conv.csv 1

start_engine() {  # start_engine PROFILE SCALE -> sets port
  rm -f "$work/port"
  taskset -c 0 $bin engine-sim --model "$work/bench" --served-model-name bench --port 0 \
    --port-file "$work/port" --profile "$1" --profiles-file "$work/profiles.yaml" \
    --time-scale "$2" --max-num-seqs 256 --log-level warn &
  engine_pid=$!
  for _ in $(seq 500); do
    [ -f "$work/port" ] && curl -sf "localhost:$(cat "$work/port")/health" >/dev/null && break
    sleep 0.02
  done
  port=$(cat "$work/port")
}
stop_engine() { kill "$engine_pid"; wait "$engine_pid" 2>/dev/null || true; }
run_wrk() {  # run_wrk CONNECTIONS SECONDS -> prints requests/s
  PROMPT_WORDS=100 MAX_TOKENS=${MAX_TOKENS:-32} taskset -c 1 wrk -t1 -c"$1" -d"$2"s \
    -s bench/lib/completion.lua "http://127.0.0.1:$port" > "$work/wrk.txt"
  grep -q "non200=0" "$work/wrk.txt" || { cat "$work/wrk.txt"; echo "errors!"; exit 1; }
  awk '/Requests\/sec/ {print $2}' "$work/wrk.txt"
}
lag_fraction() {  # share of steps that ended more than 1 ms late
  curl -s "localhost:$port/metrics" | awk '
    /^loadstar_engine_sim_step_lag_seconds_bucket/ && /le="0.001"/ {ok=$NF}
    /^loadstar_engine_sim_step_lag_seconds_count/ {n=$NF}
    END {printf "%.3f", (n > 0 ? 1 - ok / n : 0)}'
}

echo
echo "== 2a. requests/s at time scale 1 (100-token prompts, 32 output tokens, 64 connections) =="
start_engine free-gpu 1
free=$(run_wrk 64 8)
stop_engine
start_engine llama-3.1-8b-a100-80gb 1
a100=$(run_wrk 64 8)
stop_engine
echo "engine-sim, free-GPU profile (the simulator's own limit): $free req/s"
echo "engine-sim, A100 profile (the modelled GPU's limit):      $a100 req/s"
awk -v f="$free" -v a="$a100" 'BEGIN {printf "ratio simulator capacity / modelled A100 capacity: %.1fx\n", f / a}'

echo
echo "== 2b. keeping time: A100 profile, 32 connections, 64 output tokens =="
echo "(model tokens/s = generated tokens / (wall seconds x scale); a loop that keeps time holds it constant)"
printf "%8s %16s %18s %10s %16s\n" scale "wall tokens/s" "model tokens/s" ratio "steps >1ms late"
generated() { curl -s "localhost:$port/metrics" | awk '/^vllm:generation_tokens_total/ {print $NF}'; }
base=""
for scale in 1 2 5 10 20 50 100 200 500; do
  start_engine llama-3.1-8b-a100-80gb "$scale"
  t0=$(date +%s.%N); g0=$(generated)
  MAX_TOKENS=64 run_wrk 32 5 >/dev/null
  t1=$(date +%s.%N); g1=$(generated)
  late=$(lag_fraction)
  stop_engine
  wall=$(awk -v a="$g0" -v b="$g1" -v s="$t0" -v e="$t1" 'BEGIN {printf "%.0f", (b - a) / (e - s)}')
  model=$(awk -v w="$wall" -v s="$scale" 'BEGIN {printf "%.0f", w / s}')
  [ -n "$base" ] || base=$model
  printf "%8s %16s %18s %9.2fx %16s\n" "$scale" "$wall" "$model" "$(awk -v m="$model" -v b="$base" 'BEGIN {printf "%.2f", m / b}')" "$late"
done
