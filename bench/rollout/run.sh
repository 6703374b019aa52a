#!/usr/bin/env bash
# bench/rollout/run.sh: a new model version rolled out under the Azure LLM
# conversation trace's load, against the same run without a rollout.
#   Run 1 (steady): REPLICAS engine-sim replicas serve a slice of the trace.
#   Run 2 (rollout): the same slice; ROLL_AT wall seconds in, the Model's
#     source changes (new bytes: a new revision) and the service rolls out
#     with its default bounds (maxSurge 25%, maxUnavailable 25%); every new
#     replica stages the new weights (SIZE, real I/O) before it starts.
# Reported: failed requests in each run (goal 0), TTFT p99 (model seconds)
# of the requests sent while the rollout ran against the same window of the
# steady run (goal <= 1.2x), the rollout's duration (apply to every replica
# at the new revision), and the extra GPU-seconds the surge cost (model
# seconds, run 2 minus run 1, from loadstar up's scheduler metrics). The
# noise floor: the same window's TTFT p99 in this pair's steady run against
# the next pair's (two runs without a rollout: an A/A comparison), so a
# ratio can be read against what chance alone gives on this machine.
#   bench/rollout/run.sh          (from the repository root)
# Environment: REQUESTS (3000), SKIP (trace seconds to skip, 900: the rise
# towards the peak), TIME_SCALE (10), REPLICAS (6), GPUS (8), MAX_SEQS (4),
# SIZE (model, 512MiB), PROFILE (llama-3.1-70b-h100x4), ROLL_AT (15), SLO (2),
# MAX_SURGE and MAX_UNAVAILABLE (the service's spec.rollout, 25% and 0;
# MAX_UNAVAILABLE=25% is a Deployment's default, for comparison), RUNS (pairs,
# 3), CHANGE (model: new weights; engine: the same weights, another engine
# flag, so no new bytes are written or read).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=build/release/loadstar
replay=build/release/bench/trace_replay
cmake --build --preset release --target loadstar trace_replay >/dev/null
requests=${REQUESTS:-3000}
skip=${SKIP:-900}
scale=${TIME_SCALE:-10}
replicas=${REPLICAS:-6}
gpus=${GPUS:-8}
seqs=${MAX_SEQS:-4}
size=${SIZE:-512MiB}
roll_at=${ROLL_AT:-15}
port=${PORT:-18380}
admin=$((port + 10))
work=$(mktemp -d)
up_pid=
cleanup() { [ -z "$up_pid" ] || kill "$up_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

resources() {  # resources SOURCE [ARGS]: the Model (from SOURCE), the Node and the service
  cat <<YAML
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: bench}
spec: {source: "$1", size: $size}
---
apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {name: box}
spec: {cpu: 64, memory: 256Gi, gpus: [{model: H100-80GB, memory: 80Gi, count: $gpus}]}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: bench
  replicas: $replicas
  resources: {gpu: {count: 1}}
  rollout: {maxSurge: ${MAX_SURGE:-25%}, maxUnavailable: ${MAX_UNAVAILABLE:-0}}
  engine:
    name: engine-sim
    args: ["--profile", "${PROFILE:-llama-3.1-70b-h100x4}", "--time-scale", "$scale",
           "--max-num-seqs", "$seqs", "--max-model-len", "16384", "--log-level", "warn"${2:+, $2}]
YAML
}

service_json() { curl -sf "http://127.0.0.1:$admin/api/v1/services"; }

run() {  # run LABEL ROLL: one replay; ROLL=1 rolls out a new model version midway
  rm -rf "$work/data"
  resources "synth://bench-v1" > "$work/v1.yaml"
  $bin up -f "$work/v1.yaml" --data-dir "$work/data" --port "$port" --admin-port "$admin" \
    --log-level warn > "$work/$1.up.log" 2>&1 &
  up_pid=$!
  local deadline=$((SECONDS + 120))
  until service_json 2>/dev/null | python3 -c \
      "import json,sys; s=json.load(sys.stdin)['items'][0]; sys.exit(s['ready'] < $replicas)" \
      2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { cat "$work/$1.up.log"; exit 1; }
    sleep 0.2
  done
  $replay --trace ../shared/traces/AzureLLMInferenceTrace_conv.csv --requests "$requests" \
    --max-input 16000 --skip-seconds "$skip" --time-scale "$scale" --slo-ttft "${SLO:-2}" \
    --gateway-port "$port" --admin-port "$admin" --label "$1" \
    --requests-out "$work/$1.requests" > "$work/$1.json" &
  local replay_pid=$!
  if [ "$2" = 1 ]; then
    sleep "$roll_at"
    if [ "${CHANGE:-model}" = engine ]; then  # same weights, another engine flag
      resources "synth://bench-v1" '"--seed", "2"' > "$work/v2.yaml"
    else
      resources "synth://bench-v2" > "$work/v2.yaml"
    fi
    date +%s.%N > "$work/$1.applied"
    $bin apply -f "$work/v2.yaml" --admin-port "$admin" > /dev/null
    deadline=$((SECONDS + 600))
    until service_json | python3 -c "
import json, sys
r = json.load(sys.stdin)['items'][0]['rollout']
sys.exit(not (r['revision'] == 2 and not r['rolling'] and len(r['revisions']) == 1
              and r['revisions'][0]['ready'] == $replicas))"; do
      [ $SECONDS -lt $deadline ] || { echo "rollout did not finish" >&2; break; }
      sleep 0.1
    done
    date +%s.%N > "$work/$1.done"
  fi
  wait "$replay_pid" || true
  kill -TERM "$up_pid"; wait "$up_pid" || true
  up_pid=
}

runs=${RUNS:-3}
for i in $(seq "$runs"); do
  echo "== steady $i" >&2
  run "steady$i" 0
  echo "== rollout $i" >&2
  run "rollout$i" 1
done
python3 - "$work" "$runs" <<'PY'
import json, sys
work, runs = sys.argv[1], int(sys.argv[2])
def load(label):
    lines = [json.loads(l) for l in open(f"{work}/{label}.requests")]
    return lines[0], lines[1:], json.load(open(f"{work}/{label}.json"))
def p99(v):
    v = sorted(v)
    return v[min(len(v) - 1, int(0.99 * len(v)))] if v else float("nan")
all_during, all_same, all_other, durations, extras, failed = [], [], [], [], [], [0, 0]
print(f"{'run':>4} {'rollout':>9} {'requests':>9} {'p99 during':>11} {'p99 steady':>11} {'ratio':>6} "
      f"{'A/A':>6} {'failed':>7} {'extra GPU-s':>12}")
for i in range(1, runs + 1):
    _, steady, steady_run = load(f"steady{i}")
    _, other, _ = load(f"steady{i % runs + 1}")
    head, rolled, rollout_run = load(f"rollout{i}")
    applied = float(open(f"{work}/rollout{i}.applied").read()) - head["start_unix"]
    done = float(open(f"{work}/rollout{i}.done").read()) - head["start_unix"]
    scale = head["time_scale"]
    # The same requests of the trace, sent while the rollout ran (in the
    # rollout run) and at the same times of the steady run.
    window = [k for k, r in enumerate(rolled) if applied <= r["sent_s"] <= done]
    during = [rolled[k]["ttft_s"] for k in window if rolled[k]["ok"]]
    same = [steady[k]["ttft_s"] for k in window if steady[k]["ok"]]
    again = [other[k]["ttft_s"] for k in window if k < len(other) and other[k]["ok"]]
    all_during += during
    all_same += same
    all_other += again
    durations.append((done - applied) * scale)
    extra = rollout_run["gpu_seconds"] - steady_run["gpu_seconds"]
    extras.append(extra)
    failed[0] += steady_run["failed"]
    failed[1] += rollout_run["failed"]
    print(f"{i:>4} {durations[-1]:>8.0f}s {len(window):>9} {p99(during):>10.3f}s {p99(same):>10.3f}s "
          f"{p99(during) / p99(same):>5.2f}x {p99(again) / p99(same):>5.2f}x "
          f"{rollout_run['failed']:>7} {extra:>12.0f}")
print(f"pooled over {runs} runs: TTFT p99 during the rollouts {p99(all_during):.3f}s "
      f"({len(all_during)} requests) against {p99(all_same):.3f}s for the same requests without "
      f"one: {p99(all_during) / p99(all_same):.2f}x (goal <= 1.2x); two steady runs of the same "
      f"windows: {p99(all_other) / p99(all_same):.2f}x (the noise floor)")
print(f"failed requests: {failed[1]} with rollouts, {failed[0]} without (goal 0); rollout "
      f"{sum(durations) / runs:.0f} model seconds on average; extra GPU-seconds "
      f"{sum(extras) / runs:.0f} per rollout (model time)")
PY
