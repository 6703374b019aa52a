#!/usr/bin/env bash
# A real one-node Kubernetes on this machine, for Loadstar's node tests: the
# test API server and controller manager (LOADSTAR_K8S_APISERVER, the script
# ../shared/k8s/apiserver), a kubelet, kube-scheduler and kube-proxy built
# from the same Kubernetes 1.20 source, Debian's containerd and runc, the CNI
# bridge, host-local and portmap plugins, and a device plugin advertising
# fake NVIDIA GPUs (tests/support/fake_gpu_plugin). Images come from
# scripts/images.sh and are imported with ctr; nothing is pulled.
#
#   scripts/node.sh setup   install Debian packages, build kubelet, kube-scheduler, kube-proxy, the
#                           fake GPU plugin and the pause image (once, cached; needs root)
#   scripts/node.sh up      start everything, import the images, wait for the Node to be Ready
#   scripts/node.sh import ARCHIVE...   import more image archives
#   scripts/node.sh down    stop exactly what `up` started (by pid), remove its containers, mounts,
#                           network namespaces, cni0, iptables chains and cgroups, restore sysctls
#   scripts/node.sh env     print `export KUBECONFIG=...`, the node's address and containerd's socket
#
# Needs root: it changes the host (sysctls, iptables, a bridge, cgroups) and
# `down` puts back what `up` changed. Built parts live in $LOADSTAR_NODE_HOME
# (default ~/.cache/loadstar-node); the kubelet's state in /var/lib/kubelet
# (where device plugins register), which must not belong to another kubelet.
# Environment: GPUS (2), GPU_REPLICAS (1: time-slicing off), MIG ("" e.g.
# 1g.10gb=2), GPU_PREFER (last: the plugin prefers the highest device IDs, as
# NVIDIA's states a preference of its own; none), NODE_NAME (loadstar-node).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
APISERVER=${LOADSTAR_K8S_APISERVER:-$ROOT/../shared/k8s/apiserver}
KH=${LOADSTAR_K8S_HOME:-$HOME/.cache/loadstar-k8s}
H=${LOADSTAR_NODE_HOME:-$HOME/.cache/loadstar-node}
S=$H/state  # this run's scratch: containerd, CNI, logs, pids
NODE=${NODE_NAME:-loadstar-node}
KUBELET_ROOT=/var/lib/kubelet
POD_CIDR=10.88.0.0/16
API_PORT=${API_PORT:-16443}
SYSCTLS="vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables"

die() { echo "node.sh: $*" >&2; exit 1; }
log() { echo "node.sh: $*" >&2; }

[ -x "$APISERVER" ] || die "no API server script at $APISERVER (set LOADSTAR_K8S_APISERVER)"

node_ip() {
  ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}'
}

setup() {
  [ "$(id -u)" -eq 0 ] || die "setup needs root"
  local p missing=()
  for p in containerd runc containernetworking-plugins conntrack iptables socat umoci skopeo python3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  "$APISERVER" setup >/dev/null
  "$APISERVER" build kubelet kube-scheduler kube-proxy >/dev/null
  mkdir -p "$H/bin"
  local src=$KH/gopath/src/k8s.io/kubernetes
  # The fake GPU plugin, built in the Kubernetes tree against the kubelet's
  # device-plugin stub (GOPATH mode, vendored dependencies, nothing fetched).
  if [ ! -x "$H/bin/fake-gpu-plugin" ] || [ "$ROOT/tests/support/fake_gpu_plugin/main.go" -nt "$H/bin/fake-gpu-plugin" ]; then
    mkdir -p "$src/test/loadstar/fake-gpu-plugin"
    cp "$ROOT/tests/support/fake_gpu_plugin/main.go" "$src/test/loadstar/fake-gpu-plugin/"
    (cd "$src" && env GO111MODULE=off GOFLAGS= GOPROXY=off CGO_ENABLED=0 GOPATH="$KH/gopath" \
      GOCACHE="$KH/gocache" HOME="$KH/home" go build -ldflags "-s -w" -o "$H/bin/fake-gpu-plugin" \
      ./test/loadstar/fake-gpu-plugin) || die "building the fake GPU plugin failed"
  fi
  # The pause image: Kubernetes' own pause.c, static, in an image of its own.
  if [ ! -f "$H/pause.tar" ]; then
    local w; w=$(mktemp -d)
    mkdir -p "$w/root"
    gcc -Os -static -DVERSION=3.4.1 -o "$w/root/pause" "$src/build/pause/linux/pause.c" || die "cannot build pause"
    strip "$w/root/pause"
    umoci init --layout "$w/oci" && umoci new --image "$w/oci:b"
    umoci unpack --rootless --image "$w/oci:b" "$w/bundle" >/dev/null
    cp "$w/root/pause" "$w/bundle/rootfs/pause"
    umoci repack --image "$w/oci:b" "$w/bundle"
    umoci config --image "$w/oci:b" --tag final --os linux --architecture amd64 --config.entrypoint /pause
    skopeo copy -q "oci:$w/oci:final" "docker-archive:$H/pause.tar:loadstar/pause:3.4.1" >/dev/null
    rm -rf "$w"
  fi
  log "ready in $H"
}

alive() { [ -f "$S/$1.pid" ] && kill -0 "$(cat "$S/$1.pid")" 2>/dev/null; }

start_bg() {  # NAME CMD...: runs CMD in the background, its pid in $S/NAME.pid
  local name=$1; shift
  # Its own session: a signal to the caller's process group (a test
  # runner's timeout) does not take the node down halfway; `down` does.
  setsid "$@" </dev/null >"$S/logs/$name.log" 2>&1 &
  echo $! > "$S/$name.pid"
}

kubectl_() { kubectl --kubeconfig "$KH/kubeconfig" "$@"; }

wait_for() {  # SECONDS DESCRIPTION CMD...: CMD until it succeeds, or fail
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out waiting for $what (logs: $S/logs)"
    sleep 0.5
  done
}

write_configs() {
  local ip=$1
  mkdir -p "$S"/{containerd/root,containerd/state,cni/net.d,cni/ipam,logs,kubelet-pki}
  containerd config default > "$S/containerd/config.toml"
  python3 - "$S" <<'PY'
import re, sys
s = sys.argv[1]
p = f"{s}/containerd/config.toml"
c = open(p).read()
def setkey(c, key, value):
    new, n = re.subn(rf'(?m)^(\s*){re.escape(key)} = .*$', lambda m: f'{m.group(1)}{key} = {value}', c)
    assert n >= 1, key
    return new
c = setkey(c, "root", f'"{s}/containerd/root"')
c = setkey(c, "state", f'"{s}/containerd/state"')
c = re.sub(r'(?m)^(\s*)address = "/run/containerd/containerd.sock"', rf'\1address = "{s}/containerd/containerd.sock"', c)
c = setkey(c, "sandbox_image", '"docker.io/loadstar/pause:3.4.1"')
# runc cannot lower oom_score_adj here (no CAP_SYS_RESOURCE in the bounding set).
c = setkey(c, "restrict_oom_score_adj", "true")
c = setkey(c, "bin_dir", '"/usr/lib/cni"')
c = setkey(c, "conf_dir", f'"{s}/cni/net.d"')
c = setkey(c, "SystemdCgroup", "false")
open(p, "w").write(c)
PY
  # The bridge plugin also writes its own iptables chains (CNI-*), removed by `down`.
  cat > "$S/cni/net.d/10-loadstar.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "loadstar-node", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$S/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  cat > "$S/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
makeIPTablesUtilChains: false
evictionHard: {memory.available: 50Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
address: $ip
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
EOF
  cat > "$S/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KH/kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE
bindAddress: $ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0}
EOF
}

import_images() {
  local a
  for a in "$@"; do
    [ -f "$a" ] || die "no image archive at $a"
    ctr --address "$S/containerd/containerd.sock" -n k8s.io images import --no-unpack=false "$a" >/dev/null ||
      die "importing $a failed"
  done
}

up() {
  [ "$(id -u)" -eq 0 ] || die "up needs root"
  [ -x "$KH/bin/kubelet" ] && [ -x "$H/bin/fake-gpu-plugin" ] && [ -f "$H/pause.tar" ] ||
    die "not set up: run '$0 setup' first"
  if [ -f "$S/up" ]; then
    # An earlier run that was never brought down (a killed test): its
    # processes, containers and host changes are ours to clean first.
    log "an earlier run was not brought down; bringing it down first"
    down
  fi
  if [ -d "$KUBELET_ROOT" ] && [ -n "$(ls -A "$KUBELET_ROOT" 2>/dev/null)" ]; then
    die "$KUBELET_ROOT is in use (another kubelet?); refusing to share it"
  fi
  ip link show cni0 >/dev/null 2>&1 && die "a cni0 bridge exists already; refusing to take it over"
  local ip; ip=$(node_ip)
  [ -n "$ip" ] || die "cannot find this host's address (ip route get)"
  rm -rf "$S" && mkdir -p "$S/logs"
  touch "$S/up"
  echo "$ip" > "$S/node-ip"
  [ -d /var/lib/loadstar ] || touch "$S/created-var-lib-loadstar"
  ls /run/netns 2>/dev/null | sort > "$S/netns.before" || true
  chains > "$S/chains.before"
  local k
  for k in $SYSCTLS; do
    sysctl -n "$k" >/dev/null 2>&1 && echo "$k=$(sysctl -n "$k")" >> "$S/sysctls.saved"
  done
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || log "no br_netfilter: Services to Pods on this node may not answer"
  write_configs "$ip"

  # A test API server left running (an integration run killed at its
  # timeout never reaches its own stop): this node needs it reset and with
  # a controller manager. `stop` ends exactly the processes its `start`
  # recorded, by pid.
  if ls "$KH"/run/*.pid >/dev/null 2>&1; then
    log "stopping the test API server left running ($(cd "$KH/run" && echo *.pid))"
    "$APISERVER" stop >/dev/null 2>&1 || true
  fi
  RESET=1 WITH_KCM=1 setsid "$APISERVER" start >"$S/logs/apiserver-start.log" 2>&1 ||
    die "the API server did not start: $(tail -n 1 "$S/logs/apiserver-start.log")"
  touch "$S/apiserver-started"
  # The API server listens on loopback; Pods reach it as the `kubernetes`
  # Service (10.0.0.1:443) through kube-proxy to this relay on the node's
  # address (the server's certificate names 10.0.0.1).
  start_bg api-relay socat "TCP-LISTEN:$API_PORT,bind=$ip,reuseaddr,fork" "TCP:127.0.0.1:$API_PORT"
  wait_for 30 "the kubernetes Service" kubectl_ get service kubernetes
  kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Endpoints
metadata: {name: kubernetes, namespace: default}
subsets:
- addresses: [{ip: $ip}]
  ports: [{name: https, port: $API_PORT, protocol: TCP}]
EOF

  start_bg containerd containerd --config "$S/containerd/config.toml"
  wait_for 30 "containerd" ctr --address "$S/containerd/containerd.sock" version
  import_images "$H/pause.tar"

  mkdir -p "$KUBELET_ROOT"
  start_bg kubelet "$KH/bin/kubelet" --config "$S/kubelet.yaml" --kubeconfig "$KH/kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$S/containerd/containerd.sock" \
    --pod-infra-container-image=docker.io/loadstar/pause:3.4.1 --hostname-override="$NODE" \
    --node-ip="$ip" --root-dir="$KUBELET_ROOT" --cert-dir="$S/kubelet-pki" --v=1
  start_bg kube-scheduler "$KH/bin/kube-scheduler" --kubeconfig "$KH/kubeconfig" \
    --authentication-kubeconfig "$KH/kubeconfig" --authorization-kubeconfig "$KH/kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=10259 --port=0
  start_bg kube-proxy "$KH/bin/kube-proxy" --config "$S/kube-proxy.yaml"
  wait_for 90 "Node $NODE to be Ready" sh -c \
    "kubectl --kubeconfig '$KH/kubeconfig' get node '$NODE' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  # No node-lifecycle controller runs (see the apiserver script): lift the
  # not-ready taint it would have lifted.
  kubectl_ taint node "$NODE" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
  wait_for 30 "the kubelet's device-plugin socket" test -S "$KUBELET_ROOT/device-plugins/kubelet.sock"
  start_bg fake-gpu-plugin "$H/bin/fake-gpu-plugin" -gpus "${GPUS:-2}" -replicas "${GPU_REPLICAS:-1}" \
    -mig "${MIG:-}" -node "$NODE" -prefer "${GPU_PREFER:-last}"
  if [ "${GPUS:-2}" -gt 0 ]; then
    wait_for 30 "nvidia.com/gpu on $NODE" sh -c \
      "kubectl --kubeconfig '$KH/kubeconfig' get node '$NODE' -o jsonpath='{.status.allocatable.nvidia\\.com/gpu}' | grep -q '[1-9]'"
  fi
  log "up: node $NODE at $ip (state $S)"
}

stop_pid() {  # NAME: TERM, then KILL after 10 s, the process `up` started under NAME
  local f=$S/$1.pid pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

chains() {  # TABLE CHAIN lines of the iptables chains that exist now
  local t
  for t in nat filter mangle; do iptables -t "$t" -S 2>/dev/null | awk -v t="$t" '/^-N /{print t, $2}'; done | sort
}

# The KUBE-* (kubelet, kube-proxy) and CNI-* (bridge, portmap) chains made
# since `up`: rules jumping to them deleted first, then the chains.
remove_chains() {
  [ -f "$S/chains.before" ] || return 0
  local new t chain rule
  new=$(chains | comm -13 "$S/chains.before" - | awk '$2 ~ /^(KUBE-|CNI-)/')
  [ -n "$new" ] || return 0
  while read -r t chain; do
    iptables -t "$t" -S 2>/dev/null | grep -E -- "-j $chain( |\$)" | sed 's/^-A/-D/' |
      while read -r rule; do eval iptables -t "$t" "$rule" 2>/dev/null || true; done || true
  done <<< "$new"
  while read -r t chain; do iptables -t "$t" -F "$chain" 2>/dev/null || true; done <<< "$new"
  while read -r t chain; do iptables -t "$t" -X "$chain" 2>/dev/null || true; done <<< "$new"
}

down() {
  [ -d "$S" ] || { log "not up"; return 0; }
  local sock=$S/containerd/containerd.sock
  stop_pid fake-gpu-plugin
  stop_pid kubelet
  stop_pid kube-scheduler
  # Every container of this node: tasks killed, containers removed (their
  # shims exit with them).
  if alive containerd; then
    local c
    for c in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks kill -s KILL "$c" >/dev/null 2>&1 || true
    done
    sleep 1
    for c in $(ctr --address "$sock" -n k8s.io containers ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
      ctr --address "$sock" -n k8s.io containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  stop_pid containerd
  # Shims of this containerd (named by its socket, so no other's) that outlived it.
  local p
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  stop_pid kube-proxy
  "$KH/bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  stop_pid api-relay
  [ -f "$S/apiserver-started" ] && "$APISERVER" stop >/dev/null 2>&1 || true
  # Mounts under the kubelet's and containerd's directories, deepest first.
  awk '{print $2}' /proc/self/mounts | grep -E "^($KUBELET_ROOT|$S|/run/containerd/io.containerd)" | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done || true
  # Network namespaces the CNI plugins made during this run.
  if [ -f "$S/netns.before" ]; then
    for p in $(ls /run/netns 2>/dev/null | sort | comm -13 "$S/netns.before" -); do
      umount "/run/netns/$p" 2>/dev/null || true; rm -f "/run/netns/$p"
    done
  fi
  ip link show cni0 >/dev/null 2>&1 && ip link delete cni0 || true
  remove_chains
  # The kubelet's cgroups (cgroupfs driver), leaves first.
  local d
  for d in /sys/fs/cgroup/*/kubepods; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  if [ -f "$S/sysctls.saved" ]; then
    while IFS= read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done < "$S/sysctls.saved"
  fi
  rm -rf "$KUBELET_ROOT"
  [ -f "$S/created-var-lib-loadstar" ] && rm -rf /var/lib/loadstar
  rm -rf "$S"
  log "down"
}

case "${1:-}" in
  setup) setup ;;
  up) up ;;
  down) down ;;
  import) shift; import_images "$@" ;;
  env)
    echo "export KUBECONFIG=$KH/kubeconfig"
    if [ -f "$S/node-ip" ]; then
      echo "export LOADSTAR_NODE_IP=$(cat "$S/node-ip")"
      echo "export LOADSTAR_NODE_CONTAINERD=$S/containerd/containerd.sock"
    fi ;;
  *) sed -n '2,25p' "$0"; exit 2 ;;
esac
