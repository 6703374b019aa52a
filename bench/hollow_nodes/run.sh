#!/usr/bin/env bash
# bench/hollow_nodes/run.sh: placement at scale through the real API server,
# as Kubernetes' kubemark measures it -- hollow nodes (Node objects that no
# kubelet runs; this script stands in for their kubelets by creating them
# Ready with their allocatable GPUs) -- Loadstar's controller against
# kube-scheduler v1.20.2 (built from the same Debian source package as the
# API server), placing the same Pods on the same nodes in the same run:
#   1. loadstar    an InferenceService of PODS replicas (engine-sim, one GPU
#                  each); the controller places, creates and binds every Pod
#   2. kube-scheduler  PODS Pods asking for one nvidia.com/gpu each, created
#                  by `kubectl create` (4 streams), bound by kube-scheduler
#                  with its defaults (client QPS 50, burst 100) and, with
#                  KS_QPS=N, once more at QPS N (burst 2N)
# Measured: seconds from the first request to the last Pod bound, Pods
# bound per second, and for Loadstar its reconcile passes (mean, longest)
# and peak memory (VmHWM). Bound Pods are counted from a watch.
#   bench/hollow_nodes/run.sh
# Environment: NODES (1250), PODS (10000), GPUS per node (8), KS_QPS
# (unset: kube-scheduler's defaults only), KEEP=1 (keep logs).
# Needs ../shared/k8s/apiserver (set up once) and kubectl.
set -euo pipefail
cd "$(dirname "$0")/../.."
nodes=${NODES:-1250}
pods=${PODS:-10000}
gpus=${GPUS:-8}
apiserver=${LOADSTAR_K8S_APISERVER:-$PWD/../shared/k8s/apiserver}
bin=$PWD/build/release/loadstar
K=${LOADSTAR_K8S_HOME:-$HOME/.cache/loadstar-k8s}
cmake --build --preset release --target loadstar >/dev/null
"$apiserver" build kube-scheduler >/dev/null
work=$(mktemp -d -p "$PWD/build" hollow.XXXX)
export KUBECONFIG=$("$apiserver" env | sed -n 's/^export KUBECONFIG=//p')
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  kubectl delete --raw "/api/v1/nodes?labelSelector=loadstar.bench%2Fhollow%3Dtrue" >/dev/null 2>&1 || true
  [ -f "$work/apiserver.started" ] && "$apiserver" stop >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
wait_until() {  # wait_until SECONDS WHAT CMD...
  local limit=$1 deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out after ${limit}s waiting for $what" >&2; exit 1; fi
    sleep 0.2
  done
}
if ! kubectl get --raw /readyz >/dev/null 2>&1; then
  RESET=1 "$apiserver" start >/dev/null
  touch "$work/apiserver.started"
fi
kubectl apply -f deploy/crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd -l app.kubernetes.io/part-of=loadstar >/dev/null
now() { date +%s.%N; }

# --- hollow nodes -------------------------------------------------------------
# Nodes may be created with their status; no node-lifecycle controller runs,
# so they stay Ready and untainted.
python3 - "$nodes" "$gpus" "$work" <<'PY'
import json, sys
n, gpus, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
streams = 4
for s in range(streams):
    items = []
    for i in range(s, n, streams):
        items.append({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"hollow-{i:05d}", "labels": {
                "loadstar.bench/hollow": "true", "kubernetes.io/hostname": f"hollow-{i:05d}",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559",
                "loadstar.dev/rack": f"rack-{i // 16}"}},
            "status": {"capacity": {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": gpus},
                       "allocatable": {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": gpus},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    json.dump({"apiVersion": "v1", "kind": "List", "items": items}, open(f"{work}/nodes-{s}.json", "w"))
PY
t0=$(now)
for s in 0 1 2 3; do kubectl create -f "$work/nodes-$s.json" >/dev/null & done
wait
# The API server's admission taints a new Node not-ready; the node
# lifecycle controller (not run here) would lift it once Ready.
kubectl taint nodes -l loadstar.bench/hollow=true node.kubernetes.io/not-ready:NoSchedule- >/dev/null
echo "$nodes hollow nodes ($gpus GPUs each) created in $(echo "$(now) - $t0" | bc | cut -c1-5)s"

# Follows the Pods of namespace NS with a watch and returns once COUNT are
# bound to a node; sets bound_at to that moment.
bound_at=
wait_bound() {  # wait_bound NS COUNT TIMEOUT
  local out=$work/bound-$1.watch watcher
  : > "$out"
  kubectl get pods -n "$1" -w -o jsonpath='{.metadata.name} {.spec.nodeName}{"\n"}' > "$out" 2>/dev/null &
  watcher=$!
  pids+=("$watcher")
  wait_until "$3" "$2 Pods of $1 bound" \
    awk -v want="$2" '$2 != "" && !seen[$1]++ {n++} END {exit !(n >= want)}' "$out"
  bound_at=$(now)
  kill "$watcher" 2>/dev/null || true
}

# Deletes every Pod of namespace NS at once (one deletecollection: kubectl
# delete --all sends one request per Pod and then waits on each) and waits
# until they are gone; no kubelet confirms deletions, so the grace is 0.
delete_pods() {  # delete_pods NS
  # The API server gives up on a long deletecollection after its request
  # timeout (what it deleted stays deleted): ask again until none is left.
  pods_gone() {
    kubectl delete --raw "/api/v1/namespaces/$1/pods?gracePeriodSeconds=0" >/dev/null 2>&1 || true
    [ -z "$(kubectl -n "$1" get pods -o name 2>/dev/null | head -n 1)" ]
  }
  wait_until 600 "the Pods of $1 to go" pods_gone "$1"
}

# --- 1. Loadstar --------------------------------------------------------------
run=$$  # namespaces of this run (no namespace controller: old ones never finish deleting)
ns=hollow-loadstar-$run
kubectl create namespace $ns >/dev/null
kubectl -n $ns create serviceaccount default >/dev/null 2>&1 || true
echo hollow-bench-token-0123456789abcdef > "$work/token"
"$bin" controller -n $ns --kubeconfig "$KUBECONFIG" --no-leader-elect --admin-port 0 \
  --node-selector loadstar.bench/hollow=true --token-file "$work/token" \
  > "$work/controller.log" 2>&1 &
controller=$!
pids+=("$controller")
wait_until 60 "the controller" grep -q "admin API on" "$work/controller.log"
admin=$(sed -nE 's|.*admin API on (http://[^ /]+)/.*|\1|p' "$work/controller.log" | head -n 1)
cat > "$work/service.yaml" <<YAML
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: m, namespace: $ns}
spec: {source: "hf://bench/m"}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat, namespace: $ns}
spec:
  model: m
  replicas: $pods
  engine: {name: engine-sim}
  resources: {gpu: {count: 1}}
YAML
t0=$(now)
kubectl apply -f "$work/service.yaml" >/dev/null
wait_bound $ns "$pods" 1800
ls_s=$(echo "$bound_at - $t0" | bc)
scrape() { metrics=$(curl -sf -H "Authorization: Bearer hollow-bench-token-0123456789abcdef" "$admin/metrics" || true); }
metric() { echo "$metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# The pass that created the last Pods ends after them: wait for two more.
scrape
after=$(( $(metric loadstar_controller_passes_total) + 2 ))
passes_past() { scrape; [ "$(metric loadstar_controller_passes_total)" -ge "$after" ]; }
wait_until 300 "the controller's passes to end" passes_past
passes=$(metric loadstar_controller_passes_total)
pass_sum=$(metric loadstar_controller_pass_seconds_total)
pass_max=$(metric loadstar_controller_pass_seconds_max)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$controller/status)

# --- an API server restart under the controller -------------------------------
# With every Pod in place, etcd and the API server stopped and started again
# (only where this script started them). The restarted server's request
# counters start at zero, so its LISTs are the relists; the controller's
# log says which informers listed again and whether it created anything.
restart=
if [ -f "$work/apiserver.started" ]; then
  created_before=$(grep -c "pod created" "$work/controller.log")
  lines_before=$(wc -l < "$work/controller.log")
  "$apiserver" stop >/dev/null
  sleep 2
  "$apiserver" start >/dev/null
  sleep 20  # the controller's watches break, back off and resume
  requests=$(kubectl get --raw /metrics | grep '^apiserver_request_total{' || true)
  count_requests() {  # count_requests VERB RESOURCE
    echo "$requests" | grep "verb=\"$1\"" | grep "resource=\"$2\"" |
      awk '{s += $NF} END {print s + 0}'
  }
  since=$(tail -n +"$((lines_before + 1))" "$work/controller.log")
  restart="API server restart: the restarted server served LIST pods $(count_requests LIST pods), nodes $(count_requests LIST nodes) and WATCH pods $(count_requests WATCH pods), nodes $(count_requests WATCH nodes) in 20 s; the controller's informers listed again $(echo "$since" | grep -c 'listed again' || true) times ($(echo "$since" | grep -c "listed again from the API server's cache" || true) from its cache) and it created $(( $(grep -c "pod created" "$work/controller.log") - created_before )) Pods"
  echo "$restart"
fi
kill "$controller"
wait "$controller" 2>/dev/null || true
# Free the nodes' GPUs for the second run: no kubelet confirms deletions,
# so the Pods go at once (grace 0).
kubectl -n $ns delete inferenceservice chat --wait=false >/dev/null
delete_pods $ns
echo "loadstar: $pods Pods bound in ${ls_s}s"

# --- 2. kube-scheduler --------------------------------------------------------
python3 - "$pods" "$work" <<'PY'
import json, sys
n, work = int(sys.argv[1]), sys.argv[2]
streams = 4
for s in range(streams):
    items = [{"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": f"chat-{i}", "labels": {"app": "chat"}},
              "spec": {"schedulerName": "default-scheduler",
                       "nodeSelector": {"loadstar.bench/hollow": "true"},
                       "automountServiceAccountToken": False,
                       "containers": [{"name": "engine", "image": "loadstar:0.1.0",
                                       "resources": {"limits": {"nvidia.com/gpu": "1"},
                                                     "requests": {"nvidia.com/gpu": "1"}}}]}}
             for i in range(s, n, streams)]
    json.dump({"apiVersion": "v1", "kind": "List", "items": items}, open(f"{work}/pods-{s}.json", "w"))
PY
ks_s=
ks_run() {  # ks_run NAME [QPS]: sets ks_s
  local ns=hollow-$1-$run config=() t0 scheduler
  kubectl create namespace "$ns" >/dev/null
  kubectl -n "$ns" create serviceaccount default >/dev/null 2>&1 || true
  if [ -n "${2:-}" ]; then
    cat > "$work/ks-$1.yaml" <<YAML
apiVersion: kubescheduler.config.k8s.io/v1beta1
kind: KubeSchedulerConfiguration
leaderElection: {leaderElect: false}
clientConnection: {kubeconfig: "$KUBECONFIG", qps: $2, burst: $(( $2 * 2 ))}
YAML
    config=(--config "$work/ks-$1.yaml")
  else
    config=(--kubeconfig "$KUBECONFIG" --leader-elect=false)
  fi
  "$K/bin/kube-scheduler" "${config[@]}" --authentication-kubeconfig "$KUBECONFIG" \
    --authorization-kubeconfig "$KUBECONFIG" --bind-address=127.0.0.1 --secure-port=0 --port=0 \
    > "$work/kube-scheduler-$1.log" 2>&1 &
  scheduler=$!
  pids+=("$scheduler")
  sleep 3  # its informers list the nodes
  t0=$(now)
  local creators=()
  for s in 0 1 2 3; do
    kubectl -n "$ns" create -f "$work/pods-$s.json" >/dev/null &
    creators+=($!)
  done
  wait_bound "$ns" "$pods" 1800
  wait "${creators[@]}"
  kill "$scheduler"
  delete_pods "$ns"
  ks_s=$(echo "$bound_at - $t0" | bc)
}
ks_run ks
ks_default_s=$ks_s
echo "kube-scheduler (defaults): $pods Pods bound in ${ks_default_s}s"
ks_fast_s=
if [ -n "${KS_QPS:-}" ]; then
  ks_run ksfast "$KS_QPS"
  ks_fast_s=$ks_s
  echo "kube-scheduler (QPS $KS_QPS): $pods Pods bound in ${ks_fast_s}s"
fi

printf "\n%-28s %10s %10s\n" placer seconds "pods/s"
printf "%-28s %10.2f %10.1f\n" "loadstar controller" "$ls_s" "$(echo "$pods / $ls_s" | bc -l)"
printf "%-28s %10.2f %10.1f\n" "kube-scheduler 1.20" "$ks_default_s" "$(echo "$pods / $ks_default_s" | bc -l)"
[ -n "${ks_fast_s:-}" ] && printf "%-28s %10.2f %10.1f\n" "kube-scheduler QPS $KS_QPS" "$ks_fast_s" "$(echo "$pods / $ks_fast_s" | bc -l)"
echo
echo "loadstar / kube-scheduler (defaults), pods/s: $(echo "scale=2; $ks_default_s / $ls_s" | bc)x (goal >= 2)"
[ -n "${ks_fast_s:-}" ] && echo "loadstar / kube-scheduler (QPS $KS_QPS): $(echo "scale=2; $ks_fast_s / $ls_s" | bc)x"
[ -n "$restart" ] && echo "$restart"
echo "controller: $passes reconcile passes, mean $(echo "scale=3; $pass_sum / $passes" | bc)s, longest ${pass_max}s; peak memory $((hwm / 1024)) MiB"
