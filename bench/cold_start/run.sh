#!/usr/bin/env bash
# bench/cold_start/run.sh: the published cold-start case at small scale on
# one machine. Hosts are network namespaces on one bridge: an origin serving
# a synthetic safetensors model through nginx over a slow "cross-region"
# link (tbf), and NODES node hosts with `loadstar agent` on faster links.
# Measured, in one run, from "scale to NODES replicas" to all NODES engines
# healthy (engine-sim answering /health after loading through the fast
# loader), and the origin's egress:
#   1. direct     every node's agent pulls straight from the origin (no peers)
#   2. aria2c     every node runs `aria2c -x16` against the origin (a parallel
#                 HTTP downloader; download time only)
#   3. peer       agents that know each other: chunks fetched once, shared
#   4. prefetched the model already staged: scale-up only loads from disk
# plus fio's sequential O_DIRECT read of the staged shards (the disk's limit)
# and `loadstar load` on them.
#   sudo bench/cold_start/run.sh              (root: namespaces, tc)
# Needs iproute2, nginx, aria2c, fio, curl, bc, python3 (./scripts/setup.sh --bench).
# Environment: SIZE (default 1GiB), NODES (4), ORIGIN_RATE (tbf rate of the
# origin's link, default 400mbit), NODE_RATE (each node's link, 4gbit),
# CHUNK (the agents' chunk size, default 4Mi: finer pipelining between peers
# than the agent's 16Mi default), TRACE=1 (progress every 0.5 s), KEEP=1
# (keep the work directory and its logs), SCENARIOS (default
# "direct aria2c peer prefetched"; prefetched needs peer before it),
# PEERS (api: the default when ../shared/k8s/apiserver is here -- agents
# find each other as the DaemonSet's do, through the Endpoints of a
# headless Service on a real API server, which each node's namespace
# reaches through a socat relay on its loopback; flags: --peer by hand).
# ORIGIN_CONNECTIONS: the agents' --origin-connections.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$PWD/build/release/loadstar
cmake --build --preset release --target loadstar >/dev/null
size=${SIZE:-1GiB}
nodes=${NODES:-4}
origin_rate=${ORIGIN_RATE:-400mbit}
node_rate=${NODE_RATE:-4gbit}
chunk=${CHUNK:-4Mi}
work=$(mktemp -d -p "$PWD/build" cold-start.XXXX)
chmod 755 "$work"  # nginx workers read the origin as an unprivileged user
ns() { ip netns exec "$@"; }
# Ends the processes this script started, by the PIDs it recorded in
# $work/*.pid (network namespaces do not isolate processes: a pkill run
# "inside" one reaches every Loadstar process on the host).
stop_pids() {  # stop_pids GLOB
  local f
  for f in $work/$1; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}
# Runs CMD until it succeeds; fails the run after SECONDS.
wait_until() {  # wait_until SECONDS WHAT CMD...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out after ${deadline}s waiting for $what" >&2; exit 1; fi
    sleep 0.05
  done
}
apiserver=${LOADSTAR_K8S_APISERVER:-$PWD/../shared/k8s/apiserver}
peers_mode=${PEERS:-$([ -x "$apiserver" ] && echo api || echo flags)}
cleanup() {
  stop_pids "node*-engine.pid"
  stop_pids "node*-agent.pid"
  stop_pids "node*-relay.pid"
  [ -f "$work/apiserver.started" ] && "$apiserver" stop >/dev/null 2>&1 || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  for h in ls-origin ls-sw $(seq -f "ls-node%g" 1 "$nodes"); do ip netns del "$h" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# --- hosts --------------------------------------------------------------------
ip netns add ls-sw
ns ls-sw ip link add br0 type bridge
ns ls-sw ip link set br0 up
host() {  # host NAME IP RATE
  ip netns add "$1"
  ip link add "$1-e" type veth peer name "$1-p"
  ip link set "$1-e" netns "$1"
  ip link set "$1-p" netns ls-sw
  ns "$1" ip link set "$1-e" name eth0
  ns "$1" ip addr add "$2/24" dev eth0
  ns "$1" ip link set eth0 up
  ns "$1" ip link set lo up
  ns ls-sw ip link set "$1-p" master br0
  ns ls-sw ip link set "$1-p" up
  ns "$1" tc qdisc add dev eth0 root tbf rate "$3" burst 1mb latency 100ms
}
host ls-origin 10.77.0.1 "$origin_rate"
for n in $(seq 1 "$nodes"); do host ls-node$n 10.77.0.$((10 + n)) "$node_rate"; done

# --- origin -------------------------------------------------------------------
mkdir -p "$work/origin"
"$bin" model synth --size "$size" -o "$work/origin/m" >/dev/null
bytes=$(cat "$work"/origin/m/* | wc -c)
# Digests published next to the model, so every agent verifies every file.
python3 - "$work/origin/m" <<'PY'
import hashlib, json, os, sys
d = sys.argv[1]
files = []
for name in sorted(os.listdir(d)):
    h = hashlib.sha256()
    with open(os.path.join(d, name), 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    files.append({'path': name, 'size': os.path.getsize(os.path.join(d, name)), 'sha256': h.hexdigest()})
json.dump({'files': files}, open(os.path.join(d, 'loadstar-manifest.json'), 'w'))
PY
mkdir -p "$work/nginx"
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $work/nginx;
  server { listen 10.77.0.1:8000; root $work/origin; }
}
CONF
ns ls-origin nginx -c "$work/nginx.conf" -p "$work/nginx"
url=http://10.77.0.1:8000/m/
origin_tx() { ns ls-origin cat /sys/class/net/eth0/statistics/tx_bytes; }
now() { date +%s.%N; }
mib() { echo "scale=0; $1 / 1048576" | bc; }
rate_bits=$(echo "$origin_rate" | sed -E 's/mbit/*1000000/; s/gbit/*1000000000/' | bc)
origin_s=$(echo "scale=2; $bytes * 8 / $rate_bits" | bc)
echo "model $(mib $bytes) MiB, $nodes nodes, origin link $origin_rate (one copy: ${origin_s}s), node links $node_rate, peers by $peers_mode"

# --- peers through the API --------------------------------------------------------
# As in a cluster: Endpoints loadstar-agent-peers list the node agents'
# addresses, and each agent follows them (--peer-service). The server
# listens on the host's loopback; each node namespace gets a relay on its
# own loopback (same address, so TLS still verifies 127.0.0.1).
if [ "$peers_mode" = api ]; then
  if ! KUBECONFIG=$("$apiserver" env | sed -n 's/^export KUBECONFIG=//p') kubectl get --raw /readyz >/dev/null 2>&1; then
    "$apiserver" start >/dev/null
    touch "$work/apiserver.started"
  fi
  export KUBECONFIG=$("$apiserver" env | sed -n 's/^export KUBECONFIG=//p')
  api_port=$(sed -nE 's|.*server: https://127\.0\.0\.1:([0-9]+).*|\1|p' "$KUBECONFIG")
  kubectl create namespace loadstar-bench --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  python3 - "$nodes" <<'PY' | kubectl apply -f - >/dev/null
import json, sys
n = int(sys.argv[1])
print(json.dumps({"apiVersion": "v1", "kind": "Endpoints",
                  "metadata": {"name": "loadstar-agent-peers", "namespace": "loadstar-bench"},
                  "subsets": [{"addresses": [{"ip": f"10.77.0.{10 + i}"} for i in range(1, n + 1)],
                               "ports": [{"name": "http", "port": 8070}]}]}))
PY
  for n in $(seq 1 "$nodes"); do
    ip netns exec ls-node$n socat TCP-LISTEN:$api_port,bind=127.0.0.1,reuseaddr,fork \
      EXEC:"nsenter --net=/proc/$$/ns/net socat STDIO TCP\:127.0.0.1\:$api_port" 2>/dev/null &
    echo $! > "$work/node$n-relay.pid"
  done
fi

# The agents listen off loopback: they need the internal token, as in a cluster.
export LOADSTAR_TOKEN=${LOADSTAR_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
auth=(-H "Authorization: Bearer $LOADSTAR_TOKEN")
start_agents() {  # start_agents PEERS(0|1)
  for n in $(seq 1 "$nodes"); do
    peers=()
    if [ "$1" = 1 ] && [ "$peers_mode" = api ]; then
      peers=(--peer-service loadstar-agent-peers --peer-port-name http -n loadstar-bench --kubeconfig "$KUBECONFIG")
    elif [ "$1" = 1 ]; then
      for m in $(seq 1 "$nodes"); do [ "$m" != "$n" ] && peers+=(--peer "http://10.77.0.$((10 + m)):8070"); done
    fi
    ip netns exec ls-node$n "$bin" agent --host 10.77.0.$((10 + n)) --port 8070 --cache-dir "$work/node$n/cache" --chunk-size "$chunk" \
      ${ORIGIN_CONNECTIONS:+--origin-connections "$ORIGIN_CONNECTIONS"} "${peers[@]}" > "$work/node$n-agent.log" 2>&1 &
    # Not through the ns function: a background function runs in a subshell,
    # whose pid is not the agent's. ip netns exec execs the agent.
    echo $! > "$work/node$n-agent.pid"
  done
  for n in $(seq 1 "$nodes"); do
    wait_until 30 "node $n's agent" ns ls-node$n curl -sf -o /dev/null http://10.77.0.$((10 + n)):8070/health
    # Running agents have found their peers before any scale-out.
    if [ "$1" = 1 ]; then wait_until 30 "node $n's agent to find its peers" peers_found "$n"; fi
  done
}
peers_found() {  # peers_found N: node N's agent knows every other node
  [ "$(ns ls-node$1 curl -sf "${auth[@]}" http://10.77.0.$((10 + $1)):8070/metrics |
      awk '/^loadstar_agent_peers / {print $2}')" = "$((nodes - 1))" ]
}
stop_agents() {
  stop_pids "node*-agent.pid"
  sleep 0.5
}
engine_up() {  # engine_up N: node N's engine answers /health (ends the run if it exited)
  if ! kill -0 "$(cat "$work/node$1-engine.pid")" 2>/dev/null; then
    echo "node $1: the engine exited: $(tail -n 2 "$work/node$1-engine.log")" >&2
    ls -la "$work/node$1/cache/models/m/" "$work/node$1/cache/models/m/current/" >&2 || true
    tail -n 3 "$work/node$1-agent.log" >&2
    exit 1
  fi
  [ -s "$work/node$1.port" ] && ns ls-node$1 curl -sf -o /dev/null "http://127.0.0.1:$(cat "$work/node$1.port")/health"
}
# One node's replica: stage (unless prefetched), then the engine until healthy.
replica() {  # replica N STAGE(0|1)
  local n=$1 a=http://10.77.0.$((10 + $1)):8070 dir
  if [ "$2" = 1 ]; then
    # As a replica Pod's init container stages: `loadstar stage` follows
    # the agent's progress and ends when the weights are in place. (The
    # run used to poll with curl and python3 every 50 ms from four loops:
    # through pyenv's shims that was half of the two cores, taken from the
    # agents it measured.)
    if ! ns ls-node$n "$bin" stage m --source "$url" --agent "$a" --timeout 3600 \
        > "$work/node$n-stage.log" 2>&1; then
      echo "node $n: staging failed: $(tail -n 2 "$work/node$n-stage.log")" >&2
      tail -5 "$work/node$n-agent.log" >&2
      exit 1
    fi
  fi
  # The version the agent published (models/NAME/current), as engines read it.
  dir=$work/node$n/cache/models/m/current
  rm -f "$work/node$n.port"
  ip netns exec ls-node$n "$bin" engine-sim --model "$dir" --port 0 --port-file "$work/node$n.port" \
    > "$work/node$n-engine.log" 2>&1 &
  echo $! > "$work/node$n-engine.pid"
  wait_until 600 "node $n's engine" engine_up "$n"
}
scale_out() {  # scale_out STAGE(0|1): prints seconds and origin egress
  local before t0 t1
  before=$(origin_tx)
  t0=$(now)
  if [ -n "${TRACE:-}" ]; then  # origin MiB sent and each agent's MiB verified, every 0.5 s
    ( while sleep 0.5; do
        line="$(echo "$(now) - $t0" | bc | cut -c1-5)s origin $(( ($(origin_tx) - before) >> 20 ))"
        for n in $(seq 1 "$nodes"); do
          line+=" n$n $(ns ls-node$n curl -s "${auth[@]}" http://10.77.0.$((10 + n)):8070/v1/models/m |
            python3 -c 'import json,sys; print(json.load(sys.stdin).get("staging",{}).get("bytes_done",0)>>20)' 2>/dev/null)"
        done
        echo "$line" >&2
      done ) &
    tracer=$!
  fi
  for n in $(seq 1 "$nodes"); do replica $n "$1" & done
  wait $(jobs -p | grep -v "^${tracer:-none}$" | tail -n "$nodes")
  t1=$(now)
  [ -n "${tracer:-}" ] && kill "$tracer" && tracer=
  echo "$(echo "$t1 - $t0" | bc) $(( $(origin_tx) - before ))"
  stop_pids "node*-engine.pid"
}

scenarios=" ${SCENARIOS:-direct aria2c peer prefetched} "
wants() { [[ $scenarios == *" $1 "* ]]; }
direct_s=0 direct_egress=0 aria_s=0 aria_egress=0 peer_s=0 peer_egress=0 pre_s=0 pre_egress=0 from_peers=0

# 1. direct
if wants direct; then
start_agents 0
read -r direct_s direct_egress < <(scale_out 1)
stop_agents
rm -rf "$work"/node*/cache
fi

# 2. aria2c -x16 on every node at once
if wants aria2c; then
for n in $(seq 1 "$nodes"); do
  for f in "$work"/origin/m/*; do echo "$url$(basename "$f")"; done > "$work/node$n-urls"
done
before=$(origin_tx); t0=$(now)
for n in $(seq 1 "$nodes"); do
  ns ls-node$n aria2c -q -x16 -s16 -k1M --file-allocation=none -d "$work/node$n/aria" -i "$work/node$n-urls" &
done
wait $(jobs -p | tail -n "$nodes")
aria_s=$(echo "$(now) - $t0" | bc); aria_egress=$(( $(origin_tx) - before ))
rm -rf "$work"/node*/aria
fi

# 3. peer
if wants peer; then
start_agents 1
read -r peer_s peer_egress < <(scale_out 1)
from_peers=0
for n in $(seq 1 "$nodes"); do
  v=$(ns ls-node$n curl -sf "${auth[@]}" http://10.77.0.$((10 + n)):8070/metrics | awk '/fetched_bytes_total\{source="peer"\}/ {print $2}')
  from_peers=$(echo "$from_peers + ${v:-0}" | bc)
done
fi

# 4. prefetched: staged already; the page cache dropped so loads hit the disk
if wants prefetched; then
sync; echo 3 > /proc/sys/vm/drop_caches
read -r pre_s pre_egress < <(scale_out 0)
fi
stop_agents
[ -d "$work/node1/cache/models/m/current" ] || exit 0  # nothing staged: no disk figures

# The disk's limit on the staged shards, and the fast loader on the same files.
shards=$(ls "$work"/node1/cache/models/m/current/*.safetensors)
# This VM's disk swings between ~1 and ~2 GiB/s from one read to the next
# whatever the reader, so each tool reads three times, interleaved; the best
# of each is compared.
shard_bytes=$(cat $shards | wc -c)
fio_bw=0; load_bw=0
for i in 1 2 3; do
  f=$(fio --name=seq --rw=read --direct=1 --ioengine=io_uring --bs=8M --iodepth=16 --readonly \
    --output-format=json --filename="$(echo $shards | tr ' ' ':')" |
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]))')
  l=$(echo "scale=0; $shard_bytes / $("$bin" load --raw $shards | sed -E 's/.* in ([0-9.]+)s.*/\1/')" | bc)
  [ "$f" -gt "$fio_bw" ] && fio_bw=$f
  [ "$l" -gt "$load_bw" ] && load_bw=$l
done
load_one_s=$(echo "scale=2; $bytes / $load_bw" | bc)

printf "\n%-12s %10s %14s %12s\n" scenario seconds "origin MiB" "egress/size"
for row in "direct $direct_s $direct_egress" "aria2c-x16 $aria_s $aria_egress" \
           "peer $peer_s $peer_egress" "prefetched $pre_s $pre_egress"; do
  set -- $row
  printf "%-12s %10.2f %14s %12.3f\n" "$1" "$2" "$(mib "$3")" "$(echo "scale=3; $3 / $bytes" | bc)"
done
echo
echo "peer bytes fetched from peers: $(mib "$from_peers") MiB over $nodes nodes"
ratio() {  # ratio A B: A / B, or "-" when a scenario did not run
  if [ "$(echo "$1 > 0 && $2 > 0" | bc)" = 1 ]; then echo "$(echo "scale=2; $1 / $2" | bc)x"; else echo -; fi
}
echo "direct / peer: $(ratio "$direct_s" "$peer_s")   peer / prefetched: $(ratio "$peer_s" "$pre_s")"
echo "best of 3: fio O_DIRECT: $(mib "$fio_bw") MiB/s   loadstar load: $(mib "$load_bw") MiB/s   ratio $(echo "scale=3; $load_bw / $fio_bw" | bc)"
echo "goals: peer egress <= 1.05 x size: $(echo "scale=3; $peer_egress / $bytes" | bc)"
echo "       peer scale-out <= 1.2 x (size / origin bw) + load = $(echo "scale=2; 1.2 * $origin_s + $load_one_s" | bc)s: ${peer_s}s"
echo "       prefetched <= 1.2 x (size / fio bw) = $(echo "scale=2; 1.2 * $bytes / $fio_bw" | bc)s per node;"
echo "         the $nodes nodes share this one disk: 1.2 x $nodes x size / fio bw = $(echo "scale=2; 1.2 * $nodes * $bytes / $fio_bw" | bc)s: ${pre_s}s"
echo "       loadstar load >= 0.9 x fio: $(echo "scale=3; $load_bw / $fio_bw" | bc)"
