#!/usr/bin/env bash
# bench/autoscale/run.sh: the Azure LLM conversation trace, time-compressed,
# against engine-sim replicas on a fixed GPU inventory, under five policies:
#   static-peak   replicas for the peak, always on
#   static-mean   replicas for the mean, always on
#   keda-like     queue length (waiting per replica), 30 s polling window,
#                 300 s cooldown before scaling down
#   knative-like  concurrency (in flight per replica), 60 s stable / 6 s panic
#   loadstar      TTFT p90 against the SLO plus in-flight (3.5) and waiting,
#                 60 s / 6 s windows, panic at 2x, 300 s scale-down
#                 stabilization (the HPA's default), 10% tolerance
#   loadstar-slo  `slo: {ttft: SLO}` and every other setting its default:
#                 the miss curve learned (not in the default POLICIES); the
#                 slots declared (maxSequences), so the gateway's flow control
#                 is on by default, its queue ordered by the SLO
#                 (docs/gateway.md)
# Replicas are small (MAX_SEQS 4 requests at once) so that a replica is a
# fine step of capacity: with 16 the hour needed 2 to 3, and rounding up to
# whole replicas, not the policy, decided the cost. The autoscaled policies
# start at MEAN replicas, as a service already running when the hour begins.
# Windows are in trace (model) seconds and divided by TIME_SCALE for the
# wall-clock controller. Every replica start loads a real synthetic model
# (SIZE) through the fast loader, so cold starts cost real I/O.
# Reported per policy: TTFT SLO attainment, GPU-seconds (model time), cold
# starts, TTFT p50/p90/p99, and apart the requests that met a cold start
# (sent or waiting while a replica was starting, or held at zero; see
# bench/lib/trace_replay.cpp): how many, their SLO attainment and TTFT.
# Last, the demand static-peak measured (requests in flight per trace second)
# and the clairvoyant bound on any autoscaler's GPU-seconds for 10 s and
# 60 s windows: the cost goal can be judged against what is possible.
#   bench/autoscale/run.sh        (from the repository root)
# The default replays the whole trace (19,366 requests, its hour: a rise to
# a peak at minute 31 and a fall to under half of it) in six minutes a policy.
# Environment: REQUESTS (default 20000: all), SKIP (trace seconds to skip, 0),
# RATE (multiple of the trace's rate, 1), TIME_SCALE (10), SLO (TTFT SLO in
# model seconds, 2), PEAK (replicas for static-peak and max, 12), MEAN (6),
# START (the autoscaled policies' replicas at the start, MEAN),
# SIZE (model, 512MiB), PROFILE (engine-sim profile, llama-3.1-70b-h100x4),
# MAX_SEQS (4), POLICIES; the Loadstar policy's settings: LS_TTFT_SHARE
# (TTFT p90 target as a share of the SLO, 0.5), LS_IN_FLIGHT (3.5), LS_PANIC
# (2), LS_DOWN (scale-down stabilization, trace seconds, 300), LS_WAITING (2), LS_TOL
# (tolerance, 0.1), LS_PANIC_WINDOW (trace seconds, 6). KEEP=DIR
# keeps each policy's controller log (its scale decisions, at info level)
# as DIR/POLICY.log. SIM=1 runs the same policies through `loadstar sim
# autoscale` instead (virtual time: seconds for all five; COLD_START, the
# modelled replica start in wall seconds, 1.3 as measured here). TRACE
# replays another trace in the same CSV form (bench/autoscale/traces.py
# makes them; default the conversation trace); MIN=0 lets the autoscaled
# policies go to zero after 300 trace seconds without a request.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=build/release/loadstar
replay=build/release/bench/trace_replay
cmake --build --preset release --target loadstar trace_replay >/dev/null
requests=${REQUESTS:-20000}
skip=${SKIP:-0}
rate=${RATE:-1}
scale=${TIME_SCALE:-10}
slo=${SLO:-2}
peak=${PEAK:-12}
mean=${MEAN:-6}
start=${START:-$mean}
trace=${TRACE:-../shared/traces/AzureLLMInferenceTrace_conv.csv}
min=${MIN:-1}
seqs=${MAX_SEQS:-4}
size=${SIZE:-512MiB}
port=${PORT:-18280}
admin=$((port + 10))
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
w() { echo "scale=3; $1 / $scale" | bc | sed 's/^\./0./'; }  # model seconds -> wall "Ns"

policy_spec() {
  case $1 in
    static-peak) echo "replicas: $peak" ;;
    static-mean) echo "replicas: $mean" ;;
    keda-like) cat <<Y
replicas: $start
autoscaling:
    maxReplicas: $peak
    targets: {waitingPerReplica: 2}
    stableWindow: $(w 30)s
    panicWindow: $(w 30)s
    scaleDownStabilization: $(w 300)s
Y
    ;;
    knative-like) cat <<Y
replicas: $start
autoscaling:
    maxReplicas: $peak
    targets: {inFlightPerReplica: $seqs}
    stableWindow: $(w 60)s
    panicWindow: $(w 6)s
    scaleDownStabilization: $(w 0)s
    tolerance: 0
Y
    ;;
    loadstar-slo) cat <<Y
replicas: $start
autoscaling:
    maxReplicas: $peak
    slo: {ttft: $(w "$slo")s}
    stableWindow: $(w 60)s
    panicWindow: $(w 6)s
    scaleDownStabilization: $(w 60)s
Y
    ;;
    loadstar) cat <<Y
replicas: $start
autoscaling:
    maxReplicas: $peak
    targets: {ttftP90: $(w "$slo * ${LS_TTFT_SHARE:-0.5}")s, inFlightPerReplica: ${LS_IN_FLIGHT:-3.5}, waitingPerReplica: ${LS_WAITING:-2}}
    panicThreshold: ${LS_PANIC:-2}
    stableWindow: $(w 60)s
    panicWindow: $(w "${LS_PANIC_WINDOW:-6}")s
    scaleDownStabilization: $(w "${LS_DOWN:-300}")s
    tolerance: ${LS_TOL:-0.1}
Y
    ;;
  esac
}

service() {  # service NAME POLICY: the InferenceService under POLICY
  local floor=""
  case $2 in static-*) ;; *) [ "$min" = 1 ] || floor="minReplicas: $min
  idleTimeout: $(w 300)s" ;; esac
  cat <<YAML
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: $1}
spec:
  model: bench
  resources: {gpu: {count: 1}}
  engine:
    name: engine-sim
    maxSequences: $seqs
    args: ["--profile", "${PROFILE:-llama-3.1-70b-h100x4}", "--time-scale", "$scale", "--max-model-len", "16384",
           "--log-level", "warn"]
  $(policy_spec "$2" | sed '2,$s/^/  /')
  $floor
YAML
}

policies=${POLICIES:-static-peak static-mean keda-like knative-like loadstar}
if [ -n "${SIM:-}" ]; then
  # The same policies in `loadstar sim autoscale` (virtual time, seconds a
  # policy; a model of this run, not this run: see docs/autoscaling.md).
  for policy in $policies; do echo "---"; service "$policy" "$policy"; done > "$work/sim.yaml"
  exec $bin sim autoscale -f "$work/sim.yaml" --trace "$trace" \
    --requests "$requests" --max-input 16000 --skip-seconds "$skip" --rate "$rate" --slo-ttft "$slo" \
    --cold-start "${COLD_START:-1.3}"
fi

results="$work/results.jsonl"
for policy in $policies; do
  cat > "$work/bench.yaml" <<YAML
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: bench}
spec: {source: "synth://bench", size: $size}
---
apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {name: box}
spec: {cpu: 64, memory: 256Gi, gpus: [{model: H100-80GB, memory: 80Gi, count: $peak}]}
---
$(service chat "$policy")
YAML
  rm -rf "$work/data/state"
  $bin up -f "$work/bench.yaml" --data-dir "$work/data" --port "$port" --admin-port "$admin" \
    --log-level "$([ -n "${KEEP:-}" ] && echo info || echo warn)" > "$work/up.log" 2>&1 &
  up_pid=$!
  want=1  # an autoscaled policy may shrink its START replicas before the trace begins
  case $policy in static-peak) want=$peak ;; static-mean) want=$mean ;; esac
  for _ in $(seq 1200); do
    ready=$(curl -sf "http://127.0.0.1:$admin/api/v1/services" 2>/dev/null |
            grep -o '"ready":[0-9]*' | head -1 | cut -d: -f2 || true)
    [ "${ready:-0}" -ge "$want" ] && break
    sleep 0.1
  done
  [ "${ready:-0}" -ge "$want" ] || { cat "$work/up.log"; exit 1; }
  echo "== $policy" >&2
  $replay --trace "$trace" --requests "$requests" \
    --max-input 16000 --skip-seconds "$skip" --rate "$rate" --time-scale "$scale" --slo-ttft "$slo" \
    --gateway-port "$port" --admin-port "$admin" --label "$policy" \
    --replica-capacity "$seqs" | tee -a "$results" || true
  kill -TERM $up_pid; wait $up_pid || true
  [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP" && cp "$work/up.log" "$KEEP/$policy.log"; }
done
python3 - "$results" "$peak" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peak = next((r["gpu_seconds"] for r in runs if r["label"] == "static-peak"), None)
print(f"\n{'policy':<14} {'SLO met':>8} {'GPU-s':>9} {'vs peak':>8} {'cold':>5} {'TTFT p50':>9} {'p90':>8} {'p99':>8} {'failed':>7}"
      f" | {'met cold':>8} {'SLO met':>8} {'p50':>8} {'p99':>8}")
def s(v):
    return f"{v:7.3f}s" if v is not None else "       -"
for r in runs:
    rel = f"{r['gpu_seconds'] / peak:.2f}" if peak else "-"
    print(f"{r['label']:<14} {100 * r['slo_attainment']:>7.2f}% {r['gpu_seconds']:>9.0f} {rel:>8} "
          f"{r['cold_starts']:>5.0f} {r['ttft_p50_s']:>8.3f}s {r['ttft_p90_s']:>7.3f}s {r['ttft_p99_s']:>7.3f}s {r['failed']:>7}"
          f" | {r['met_cold_start']:>8} {100 * r['met_cold_start_slo_attainment']:>7.2f}% "
          f"{s(r['met_cold_start_ttft_p50_s'])} {s(r['met_cold_start_ttft_p99_s'])}")
print(f"(SLO: TTFT <= {runs[0]['slo_ttft_s']}s model time; {runs[0]['requests']} requests over "
      f"{runs[0]['trace_seconds']:.0f} trace seconds)")
# The demand curve as static-peak measured it (it queues least), and the
# clairvoyant bound: no policy serving every request at once costs less.
base = next((r for r in runs if r["label"] == "static-peak"), runs[0])
d = base.get("demand")
if d:
    def vs(g):
        return f" = {g / peak:.2f} of static-peak" if peak else ""
    print(f"demand under {base['label']}: {d['peak_in_flight']} requests in flight at the busiest "
          f"second, {d['mean_in_flight']:.1f} on average ({d['replica_capacity']} per replica); "
          f"replicas for the busiest second: {d['static_replicas']}, {d['static_gpu_seconds']:.0f} GPU-s{vs(d['static_gpu_seconds'])}")
    for w in (10, 60):
        g = d[f"clairvoyant_{w}s_gpu_seconds"]
        print(f"clairvoyant autoscaler, {w:>2} s windows (the replicas each window's busiest second "
              f"needs, ready at once): {g:.0f} GPU-s{vs(g)}")
PY
