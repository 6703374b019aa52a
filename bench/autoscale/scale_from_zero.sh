#!/usr/bin/env bash
# bench/autoscale/scale_from_zero.sh: the first token of a request that
# arrives while its service is at zero replicas and its weights are already
# staged on the node, against the model's load time (issue 7's goal: load
# time + 1 s at most). The baseline, in the same run, is the same request to
# a warm replica.
#   bench/autoscale/scale_from_zero.sh        (from the repository root)
# Needs curl and bc (./scripts/setup.sh --bench).
# Environment: SIZE (synthetic model size, default 4GiB), RUNS (default 3),
# DROP_CACHES=1 (drop the page cache before each cold request; needs root),
# ENGINE=llama.cpp (a real llama-server on a synthetic GGUF of SIZE instead
# of engine-sim; scripts/llama-server.sh build).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$PWD/build/release/loadstar
cmake --build --preset release --target loadstar >/dev/null
size=${SIZE:-4GiB}
runs=${RUNS:-3}
port=${PORT:-18180}
admin=$((port + 10))
if [ "${ENGINE:-engine-sim}" = llama.cpp ]; then
  scripts/llama-server.sh build >/dev/null
  model_spec="{source: \"synth://cold\", format: gguf, size: $size}"
  engine_spec="{name: llama.cpp, maxSequences: 2, threads: 1}"
else
  model_spec="{source: \"synth://cold\", size: $size}"
  engine_spec='{name: engine-sim, args: ["--time-scale", "1"]}'
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/svc.yaml" <<YAML
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: cold}
spec: $model_spec
---
apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {name: box}
spec: {cpu: 8, memory: 32Gi, gpus: [{model: A100-80GB, memory: 80Gi, count: 1}]}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: cold
  replicas: 1
  minReplicas: 0
  idleTimeout: 2s
  engine: $engine_spec
  resources: {gpu: {count: 1}}
  autoscaling: {maxReplicas: 1}
YAML
"$bin" up -f "$work/svc.yaml" --data-dir "$work/var" --port "$port" --admin-port "$admin" \
  --log-level warn > "$work/up.log" 2>&1 &
replicas() { curl -s "localhost:$admin/api/v1/replicas"; }
wait_for() {  # wait_for COMMAND...: until it succeeds (120 s at most)
  for _ in $(seq 1200); do "$@" && return 0; sleep 0.1; done
  echo "timed out: $*" >&2; cat "$work/up.log" >&2; exit 1
}
none() { [ "$(replicas)" = '{"items":[]}' ]; }
# Seconds to the first SSE data line of one streaming request.
ttft() {
  local start end
  start=$(date +%s.%N)
  curl -sN "localhost:$port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"chat","messages":[{"role":"user","content":"Hello there"}],"max_tokens":8,"stream":true}' |
    while IFS= read -r line; do
      if [[ $line == data:* ]]; then date +%s.%N; break; fi
    done > "$work/first"
  end=$(cat "$work/first")
  echo "$end - $start" | bc -l
}
loading() {  # the replica's launch-to-ready time, from its cold-start timeline
  "$bin" describe replica chat-0 --admin-port "$admin" | awk '$3 == "loading" {sub("s", "", $4); print $4}'
}
echo "model: $size synthetic ${ENGINE:-engine-sim} model (staged: written once, then read by every start)"
# The first request waits for the model to be written (staged) and loaded.
ttft > /dev/null
printf "%-5s %12s %12s %14s %12s\n" run "TTFT cold" "load time" "TTFT - load" "TTFT warm"
for i in $(seq "$runs"); do
  wait_for none
  if [ "${DROP_CACHES:-0}" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
  cold=$(ttft)
  load=$(loading)
  warm=$(ttft)
  printf "%-5s %11.3fs %11.3fs %13.3fs %11.3fs\n" "$i" "$cold" "$load" "$(echo "$cold - $load" | bc -l)" "$warm"
done
echo "goal: TTFT cold <= load time + 1 s"
