#!/usr/bin/env bash
# One control plane for serving and jobs (not a test): a simulated day on
# the openb cluster (1,213 nodes, 6,212 GPUs) in virtual time with the
# product's own scheduler and autoscaler cores. Serving follows the Azure
# LLM trace's arrival-rate shape; training and batch jobs are drawn from an
# openb pod list (sizes, GPU shares, models, lifetimes; best-effort QoS as
# batch). Once on one cluster shared through Loadstar's queues, then on
# statically split clusters swept in 5% steps; prints the utilisation of
# each and the shared cluster's gain over the best split that keeps the
# serving SLO (goal: >= 20 points, SLO kept). Run on two pod lists so the
# gain is not one workload's, at three serving peaks (~8 min a run).
#
#   bench/shared_cluster/run.sh        # results under var/bench/shared_cluster
#   PEAKS=0.9 LISTS=default bench/shared_cluster/run.sh   # one of them
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${LOADSTAR_BIN:-build/release/loadstar}
traces=${TRACES:-../shared/traces}
out=${OUT:-var/bench/shared_cluster}
[ -x "$bin" ] || { cmake --preset release >/dev/null && cmake --build --preset release --target loadstar; }
# Serving's peak as a share of the cluster: the gain is bounded by what the
# best split leaves idle, which grows with serving's share (docs/benchmarks.md).
for peak in ${PEAKS:-0.5 0.75 0.9}; do
  for list in ${LISTS:-default gpushare40}; do
    echo "== openb_pod_list_$list, serving peak $peak of the GPUs"
    /usr/bin/time -f "(%e s)" $bin sim shared --nodes "$traces/openb_node_list_gpu_node.csv" \
      --pods "$traces/openb_pod_list_$list.csv" --trace "$traces/AzureLLMInferenceTrace_conv.csv" \
      --serving-peak-share "$peak" -o "$out/$list-$peak" "$@"
    echo
  done
done
