#!/usr/bin/env bash
# bench/autoscale/generalise.sh: do the autoscaling policies hold on traces
# they were not tuned on? `loadstar sim autoscale` (virtual time: the real
# autoscaler and engine cores) on every trace here and synthetic shapes, at
# several multiples of their rates, each against the hindsight-best static
# count (the fewest static replicas that meet GOAL within the SLO) and the
# clairvoyant bound, both found by the simulator in the same run.
#   bench/autoscale/generalise.sh            (from the repository root)
# Policies:
#   tuned  the settings bench/autoscale/run.sh tuned on the conversation
#          trace: TTFT p90 1 s, in-flight 3.5 and waiting 2 per replica,
#          300 s scale-down stabilization
#   slo    `slo: {ttft: 2s}` and nothing else: every other setting its
#          default (60 s / 6 s windows, 60 s scale-down stabilization); the
#          miss curve is learned (src/autoscaler/slo_capacity.h). With the
#          engine's slots declared (maxSequences), the gateway's flow control
#          is on by default: beyond 4 in flight per replica requests wait in
#          the gateway's queue, those that can still meet the SLO first.
#   slo-engine-queue  slo with the slots passed as the engine's own flag
#          (--max-num-seqs 4), which the gateway does not read: no flow
#          control, the backlog waits in the engines' first-come queues.
# Each policy is simulated on its own, against baselines under its own
# gateway: the static counts for `slo` have the same queue (which helps a
# static count too), those for `tuned` have none.
# Both start at 6 replicas, may go to 0 after the default idle timeout and
# up to MAX (40). Replicas: engine-sim llama-3.1-70b-h100x4, 4 requests at
# once (maxSequences; as bench/autoscale/run.sh), cold start 1.3 s wall (13
# model seconds).
# Traces (generated under a temporary directory by traces.py, nothing
# copied into the repository): conv (Azure conversation, its hour), mooncake
# (Mooncake's conversation trace: 12k-token prompts on average), and the
# conv trace's request mix under the shapes diurnal, quiet, bursts, steps,
# plus mooncake's mix under diurnal.
# ORACLES=1 adds, per run, the cheapest reactive oracle that meets GOAL
# (`--oracles`: it knows each moment's need as it comes; 16 more simulations
# a run) beside the oracle with foresight, which is always there.
# Environment: TRACES, RATES (default "0.5 1 2"), POLICIES, GOAL (0.99),
# MAX (40), SLO (2, model seconds), OUT (keep the JSON lines here), BIN (the
# loadstar binary; default: build it), SEED (1: the synthetic traces' draw;
# another draws other arrivals and requests for the same shapes).
# STARTS (default 6: replicas at the start) and PERIODS (0.1: wall seconds
# between controller passes) take several values to run each trace, rate
# and policy once per pair: changes that should not matter, which show how
# far one run is from the next (on Mooncake's trace a cell's cost spans 2x;
# docs/benchmarks.md, "How noisy one run is"). The baselines are found on
# the first pair and judge every pair; with more than one pair a summary
# per cell (runs that meet the goal, ranges) follows the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN:-build/release/loadstar}
[ -n "${BIN:-}" ] || cmake --build --preset release --target loadstar >/dev/null
traces=${TRACES:-conv mooncake diurnal quiet bursts steps mooncake-diurnal}
rates=${RATES:-0.5 1 2}
policies=${POLICIES:-tuned slo}
goal=${GOAL:-0.99}
max=${MAX:-40}
slo=${SLO:-2}
oracles=${ORACLES:-0}
seed=${SEED:-1}
starts=${STARTS:-6}
periods=${PERIODS:-0.1}
oracle_flag=""
[ "$oracles" = 1 ] && oracle_flag=--oracles
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
conv=../shared/traces/AzureLLMInferenceTrace_conv.csv
python3 bench/autoscale/traces.py mooncake ../shared/traces/mooncake_conversation_trace.jsonl \
  "$work/mooncake.csv"
for shape in diurnal quiet bursts steps; do
  python3 bench/autoscale/traces.py synth "$shape" "$conv" "$work/$shape.csv" --seed "$seed"
done
python3 bench/autoscale/traces.py synth diurnal "$work/mooncake.csv" "$work/mooncake-diurnal.csv" \
  --seed "$seed"
cp "$conv" "$work/conv.csv"

w() { python3 -c "print(f'{$1 / 10:g}s')"; }  # model seconds -> wall, at --time-scale 10
policy() {
  case $1 in
    tuned) cat <<Y
  autoscaling:
    maxReplicas: $max
    targets: {ttftP90: $(w "$slo / 2"), inFlightPerReplica: 3.5, waitingPerReplica: 2}
    stableWindow: $(w 60)
    panicWindow: $(w 6)
    scaleDownStabilization: $(w 300)
Y
    ;;
    slo | slo-engine-queue) cat <<Y
  autoscaling:
    maxReplicas: $max
    slo: {ttft: $(w "$slo")}
    stableWindow: $(w 60)
    panicWindow: $(w 6)
    scaleDownStabilization: $(w 60)
Y
    ;;
  esac
}
manifest() {
  local p=$1 start=$2 slots="maxSequences: 4" flag=""
  if [ "$p" = slo-engine-queue ]; then slots="" flag='"--max-num-seqs", "4", '; fi
  cat <<YAML
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: $p}
spec:
  model: bench
  replicas: $start
  minReplicas: 0
  idleTimeout: $(w 300)
  engine:
    name: engine-sim
    $slots
    args: ["--profile", "llama-3.1-70b-h100x4", "--time-scale", "10", $flag"--max-model-len", "32768"]
$(policy "$p")
YAML
}

results=${OUT:-$work/results.jsonl}
: > "$results"
for t in $traces; do
  for r in $rates; do
    for p in $policies; do
      first=1
      for start in $starts; do
        for period in $periods; do
          echo "== $t x$r $p (start $start, period $period)" >&2
          manifest "$p" "$start" > "$work/policy.yaml"
          base=""
          [ "$first" = 1 ] && base="--baselines $max --goal $goal $oracle_flag"
          # shellcheck disable=SC2086 # $base: several flags or none
          $bin sim autoscale -f "$work/policy.yaml" --trace "$work/$t.csv" --rate "$r" \
            --max-input 16000 --slo-ttft "$slo" --cold-start 1.3 --period "$period" $base \
            --json "$work/one.jsonl" >&2
          [ "$first" = 1 ] && cp "$work/one.jsonl" "$work/first.jsonl"
          first=0
          python3 -c "
import json
first = json.loads(open('$work/first.jsonl').readline())
for l in open('$work/one.jsonl'):
    d = json.loads(l)
    for k, v in first.items():  # the first pair's baselines judge every pair
        if k.startswith(('best_static', 'clairvoyant', 'foresight', 'reactive')):
            d.setdefault(k, v)
    d.update(trace='$t', rate=$r, start=$start, period=$period)
    print(json.dumps(d))" >> "$results"
        done
      done
    done
  done
done
python3 - "$results" "$goal" "$oracles" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
goal = float(sys.argv[2])
oracles = sys.argv[3] == "1"
pairs = {(r.get("start"), r.get("period")) for r in runs}
# The oracles' cells: share within the SLO / GPU-seconds as a multiple of the best static.
def cell(share, gpu_s, best):
    return f"{100 * share:.2f}% / {gpu_s / best:.2f}" if best else f"{100 * share:.2f}% / -"
print(f"\n{'trace':<17} {'rate':>4} {'policy':<6} {'SLO met':>8} {'':6} {'GPU-s':>8} {'vs best':>8} "
      f"{'vs clairv.':>10} {'cold':>5} | {'best static':>11} {'its SLO':>8} {'its GPU-s':>9} | "
      f"{'foresight':>16} | reactive oracle (headroom, memory)")
for r in runs:
    best = r.get("best_static_gpu_seconds")
    rel = f"{r['gpu_seconds'] / best:.2f}" if best else "-"
    cl = r.get("clairvoyant_gpu_seconds") or 0
    rcl = f"{r['gpu_seconds'] / cl:.2f}" if cl else "-"
    mark = "" if r["slo_attainment"] >= goal else "(miss)"
    its = f"{100 * r['best_static_slo_attainment']:.2f}%" if best else "-"
    fore = cell(r["foresight_slo_attainment"], r["foresight_gpu_seconds"], best)
    if "reactive_gpu_seconds" in r:
        react = (cell(r["reactive_slo_attainment"], r["reactive_gpu_seconds"], best) +
                 f" ({r['reactive_headroom']:g}, {r['reactive_memory_s']:g} s)")
    else:
        react = "none of the 16 meets the goal" if oracles else "- (ORACLES=1)"
    label = r["label"] if len(pairs) == 1 else f"{r['label']} {r['start']}/{r['period']:g}"
    print(f"{r['trace']:<17} {r['rate']:>4g} {label:<6} {100 * r['slo_attainment']:>7.2f}% "
          f"{mark:6} {r['gpu_seconds']:>8.0f} {rel:>8} {rcl:>10} {r['cold_starts']:>5} | "
          f"{r.get('best_static_replicas', '-'):>11} {its:>8} {best or 0:>9.0f} | "
          f"{fore:>16} | {react}")
if len(pairs) > 1:
    import math
    cells = {}
    for r in runs:
        cells.setdefault((r["trace"], r["rate"], r["label"]), []).append(r)
    print(f"\n{len(pairs)} runs a cell (STARTS x PERIODS): runs that meet the goal / meet "
          f"{100 * goal:g}%, then the ranges of the share within the SLO and of the cost")
    every = []
    for (t, rate, label), rs in cells.items():
        best = rs[0].get("best_static_gpu_seconds")
        if not best:
            continue
        cost = [r["gpu_seconds"] / best for r in rs]
        share = [r["slo_attainment"] for r in rs]
        met = sum(s >= goal for s in share)
        ok = sum(s >= goal and c <= 1.02 for s, c in zip(share, cost))
        every += list(zip(share, cost))
        print(f"{t:<17} {rate:>4g} {label:<6} {ok:>2} / {met:>2} of {len(rs):<3} "
              f"{100 * min(share):6.2f}-{100 * max(share):6.2f}%  {min(cost):.2f}-{max(cost):.2f}x")
    if every:
        geo = math.exp(sum(math.log(c) for _, c in every) / len(every))
        print(f"all {len(every)} runs: {sum(s >= goal and c <= 1.02 for s, c in every)} meet the "
              f"goal, {sum(s >= goal for s, _ in every)} meet {100 * goal:g}%, geometric mean cost "
              f"{geo:.3f}, mean share missed {100 * sum(1 - s for s, _ in every) / len(every):.2f}%")
PY
