#!/usr/bin/env bash
# bench/disaggregation: prefill/decode disaggregation against aggregated
# serving at the same GPU count, replaying the Mooncake conversation trace
# against engine-sim replicas (H100 8B step costs, RDMA link between pools).
#   bench/disaggregation/run.sh      (from the repository root)
# Each run is one configuration of GPUS replicas: "agg" (every replica
# serves whole requests, scored picker) or "pd:P" (P prefill replicas and
# GPUS-P decode replicas). Reported per run: TTFT p50/p90/p99, time per
# output token (TPOT) p50/p99, inter-token gaps p99, and goodput — the share
# of requests within both SLO_TTFT and SLO_TPOT (model seconds), DistServe's
# measure; and smooth goodput — within SLO_TTFT with no gap between two
# tokens over SLO_ITL (a stream that never stalls).
# Environment: REQUESTS (default 600), GPUS (4), CONFIGS ("agg pd:1 pd:2"),
# RATES ("1.5"), MIXES ("1:1 0.1:1": input scale:output scale of the
# trace's lengths), SLO_TTFT (2), SLO_TPOT (0.025), SLO_ITL (0.1), TIME_SCALE (5),
# NON_CACHED (nonCachedTokens, 512), LINK (rdma), BATCH_TOKENS (the engines'
# --max-num-batched-tokens: 8192, vLLM V1's default for its API server on an
# 80 GB GPU; a prefill chunk that size stalls every decode in its step).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${LOADSTAR_BIN:-build/release/loadstar}
replay=build/release/bench/trace_replay
cmake --build --preset release --target loadstar trace_replay >/dev/null
requests=${REQUESTS:-600}
gpus=${GPUS:-4}
scale=${TIME_SCALE:-5}
port=${PORT:-18180}
admin=$((port + 10))
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/profiles.yaml" <<YAML
profiles:
  - name: h100
    description: Llama 3.1 8B on one H100 (the built-in profile's costs)
    base_ms: 6.0
    prefill_token_us: 35
    decode_seq_us: 40
    context_token_ns: 52
    num_gpu_blocks: 28000
YAML
args="[\"--profile\", \"h100\", \"--profiles-file\", \"$work/profiles.yaml\", \"--time-scale\", \"${scale}\", \"--max-model-len\", \"40000\", \"--max-num-seqs\", \"128\", \"--max-num-batched-tokens\", \"${BATCH_TOKENS:-8192}\", \"--log-level\", \"warn\"]"
results="$work/results.jsonl"
for mix in ${MIXES:-"1:1 0.1:1"}; do
  in_scale=${mix%%:*}
  out_scale=${mix##*:}
  for rate in ${RATES:-1.5}; do
    for config in ${CONFIGS:-"agg pd:1 pd:2"}; do
      if [ "$config" = agg ]; then
        replicas=$gpus
        prefill=""
        label="aggregated ${gpus}"
      else
        p=${config#pd:}
        replicas=$((gpus - p))
        prefill="  prefill: {replicas: $p, nonCachedTokens: ${NON_CACHED:-512}, link: ${LINK:-rdma}}"
        label="${p}P+${replicas}D"
      fi
      cat > "$work/bench.yaml" <<YAML
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: bench}
spec: {source: "synth://bench", size: 16Mi}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: bench
  replicas: ${replicas}
  engine: {name: engine-sim, args: ${args}}
  routing: {picker: scored}
${prefill}
YAML
      rm -rf "$work/data/state"
      $bin up -f "$work/bench.yaml" --data-dir "$work/data" --port "$port" --admin-port "$admin" \
        --log-level warn > "$work/up.log" 2>&1 &
      up_pid=$!
      want=$gpus
      for _ in $(seq 600); do
        ready=$(curl -sf "http://127.0.0.1:$admin/api/v1/replicas" 2>/dev/null |
                grep -o '"state":"Ready"' | wc -l || true)
        [ "${ready:-0}" = "$want" ] && break
        sleep 0.1
      done
      [ "${ready:-0}" = "$want" ] || { cat "$work/up.log"; exit 1; }
      echo "== mix ${mix}, rate ${rate}x, ${label}" >&2
      $replay --trace ../shared/traces/mooncake_conversation_trace.jsonl --requests "$requests" \
        --rate "$rate" --time-scale "$scale" --gateway-port "$port" --admin-port "$admin" \
        --max-input 32768 --input-scale "$in_scale" --output-scale "$out_scale" \
        --slo-ttft "${SLO_TTFT:-2}" --slo-tpot "${SLO_TPOT:-0.025}" --slo-itl "${SLO_ITL:-0.1}" \
        --label "$label mix $mix" > "$work/run.json" || true
      disaggregated=$(curl -s "http://127.0.0.1:$port/metrics" |
        awk '/^loadstar_gateway_disaggregated_requests_total/ {s += $2} END {print s + 0}')
      python3 - "$work/run.json" "$disaggregated" <<'PY' | tee -a "$results"
import json, sys
r = json.load(open(sys.argv[1]))
r["disaggregated"] = float(sys.argv[2])
print(json.dumps(r))
PY
      kill -TERM $up_pid; wait $up_pid || true
    done
  done
done
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'run':<28} {'rate':>5} {'TTFT p50':>9} {'p90':>7} {'p99':>7} {'TPOT p50':>9} {'p99':>7} "
      f"{'ITL p99':>8} {'goodput':>8} {'smooth':>7} {'disagg':>7} {'failed':>6}")
for r in rows:
    print(f"{r['label']:<28} {r['rate']:>5} {r['ttft_p50_s']:>9.2f} {r['ttft_p90_s']:>7.2f} "
          f"{r['ttft_p99_s']:>7.2f} {r['tpot_p50_s']*1000:>7.1f}ms {r['tpot_p99_s']*1000:>5.1f}ms "
          f"{r['itl_p99_s']*1000:>6.1f}ms {r['goodput']*100:>7.1f}% "
          f"{r['smooth_goodput']*100:>6.1f}% {int(r['disaggregated']):>7} "
          f"{r['failed']:>6}")
PY
