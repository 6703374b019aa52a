#!/usr/bin/env bash
# The scheduler's trace-driven benchmark (not a test). For each openb pod
# list, the FGD paper's fill experiment: tasks in arrival order, never
# leaving, inflated to 130% of GPU capacity; the GPU allocation ratio per
# placement policy, unallocated GPUs against best-fit, and tasks placed per
# second on one core. Then the same on a synthetic 10,000-node cluster (the
# openb node mix repeated), and the three-team queue scenario.
#
#   bench/scheduler/run.sh            # results under var/bench/scheduler
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${LOADSTAR_BIN:-build/release/loadstar}  # or another build to compare
traces=${TRACES:-../shared/traces}
out=${OUT:-var/bench/scheduler}
[ -x "$bin" ] || { cmake --preset release >/dev/null && cmake --build --preset release --target loadstar; }
pin=""
command -v taskset >/dev/null && pin="taskset -c 0"

for list in default gpushare40 multigpu20 gpuspec10; do
  echo "== openb_pod_list_$list"
  $pin $bin sim schedule --nodes "$traces/openb_node_list_gpu_node.csv" \
    --pods "$traces/openb_pod_list_$list.csv" -o "$out/$list"
  echo
done
echo "== synthetic cluster: 10,000 nodes, openb_pod_list_default"
$pin $bin sim schedule --nodes "$traces/openb_node_list_gpu_node.csv" \
  --pods "$traces/openb_pod_list_default.csv" --synthetic-nodes 10000 \
  --policies best-fit,fgd,loadstar -o "$out/synthetic-10k"
echo
echo "== queues: three teams, deserved 50/30/20%, weights 1/2/1"
$pin $bin sim queues -o "$out/queues"
