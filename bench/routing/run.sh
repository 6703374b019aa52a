#!/usr/bin/env bash
# bench/routing: round-robin vs least-request vs Loadstar's scored picker
# (prefix-cache affinity + load), replaying the Mooncake conversation trace
# against engine-sim replicas with prefix caching and a small KV pool.
#   bench/routing/run.sh      (from the repository root)
# Environment: REQUESTS (default 1500), REPLICAS (4), TIME_SCALE (5),
# RATES ("1.5 3": multiples of the trace's arrival rate), BLOCKS (KV blocks per
# replica; 28000 = 448k tokens, an H100 80GB serving an 8B model), PICKERS,
# UP_ARGS (extra flags for loadstar up), MAX_INPUT (skip longer prompts).
# GATEWAYS=N runs N gateways side by side (loadstar up --gateways) behind a
# round-robin split of the requests; SHARED=1 gives them a Redis
# (redis-server on a free port) through which they share their picks and
# load. KV_EVENTS=1 has the engine-sim replicas publish their KV events
# (spec.engine.kvEvents) for the gateways to route by. SCORERS='{...}' sets
# spec.routing.scorers. LOADSTAR_BIN runs another build's binary.
# REPLAY_GATEWAYS=1 sends everything to the first (a control: what
# running the others costs this machine).
# ENGINE=llama.cpp replays against real llama-server replicas instead
# (scripts/llama-server.sh build; a synthetic GGUF of GGUF_SIZE, SLOTS
# sequences and THREADS threads each, CONTEXT tokens per slot; real time).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${LOADSTAR_BIN:-build/release/loadstar}
replay=build/release/bench/trace_replay
cmake --build --preset release --target loadstar trace_replay >/dev/null
requests=${REQUESTS:-1500}
replicas=${REPLICAS:-4}
scale=${TIME_SCALE:-5}
rates=${RATES:-"1.5 3"}
blocks=${BLOCKS:-28000}
port=${PORT:-18080}
admin=$((port + 10))

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# The H100 profile's step costs, with a KV pool small enough that a replica
# holds only a few of the trace's long prompts.
cat > "$work/profiles.yaml" <<YAML
profiles:
  - name: h100-small-kv
    description: Llama 3.1 8B on one H100, KV pool cut to ${blocks} blocks
    base_ms: 6.0
    prefill_token_us: 35
    decode_seq_us: 40
    context_token_ns: 52
    num_gpu_blocks: ${blocks}
YAML

engine=${ENGINE:-engine-sim}
if [ "$engine" = llama.cpp ]; then
  scale=1
  scripts/llama-server.sh build >/dev/null
  model_spec="{source: \"synth://bench-gguf\", format: gguf, size: ${GGUF_SIZE:-26Mi}}"
  engine_spec="{name: llama.cpp, contextLength: ${CONTEXT:-8192}, maxSequences: ${SLOTS:-4}, threads: ${THREADS:-1}}"
else
  model_spec='{source: "synth://bench", size: 16Mi}'
  engine_spec="{name: engine-sim, args: [\"--profile\", \"h100-small-kv\", \"--profiles-file\", \"$work/profiles.yaml\", \"--time-scale\", \"${scale}\", \"--max-model-len\", \"40000\", \"--max-num-seqs\", \"64\", \"--log-level\", \"warn\"]${KV_EVENTS:+, kvEvents: true}}"
fi

results="$work/results.jsonl"
gateways=${GATEWAYS:-1}
redis_args=""
if [ "${SHARED:-0}" = 1 ]; then
  redis_port=$((port + 20))
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no > "$work/redis.log" 2>&1 &
  for _ in $(seq 100); do redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
  redis_args="--redis redis://127.0.0.1:$redis_port"
fi
for rate in $rates; do
  for picker in ${PICKERS:-round-robin least-request scored}; do
    cat > "$work/bench.yaml" <<YAML
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: bench}
spec: ${model_spec}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: bench
  replicas: ${replicas}
  engine: ${engine_spec}
  routing: {picker: ${picker}${SCORERS:+, scorers: ${SCORERS}}}
YAML
    rm -rf "$work/data/state"
    $bin up -f "$work/bench.yaml" --data-dir "$work/data" --port "$port" --admin-port "$admin" \
      --gateways "$gateways" $redis_args --log-level warn ${UP_ARGS:-} > "$work/up.log" 2>&1 &
    up_pid=$!
    for _ in $(seq 600); do
      ready=$(curl -sf "http://127.0.0.1:$admin/api/v1/services" 2>/dev/null |
              grep -o '"ready":[0-9]*' | head -1 | cut -d: -f2 || true)
      [ "${ready:-0}" = "$replicas" ] && break
      sleep 0.1
    done
    [ "${ready:-0}" = "$replicas" ] || { cat "$work/up.log"; exit 1; }
    label=$picker
    [ "$gateways" = 1 ] || label="$picker, $gateways gateways"
    [ "${SHARED:-0}" = 1 ] && label="$label, shared"
    echo "== rate ${rate}x, picker ${label}" >&2
    $replay --trace ../shared/traces/mooncake_conversation_trace.jsonl --requests "$requests" \
      --rate "$rate" --time-scale "$scale" --gateway-port "$port" \
      --gateways "${REPLAY_GATEWAYS:-$gateways}" \
      --admin-port "$admin" \
      --max-input "${MAX_INPUT:-32768}" \
      --label "$label" | tee -a "$results" || true
    kill -TERM $up_pid; wait $up_pid || true
  done
done
$replay --summarize "$results"
