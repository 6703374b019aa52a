#!/usr/bin/env bash
# bench/gateway_streams: how many long streams one front door holds, and at
# what memory. Two engine-sim replicas (steps of STEP_MS, so a 200-token
# stream lasts seconds), STREAMS concurrent streamed chat completions from
# one client (bench/lib/stream_flood), through:
#   nginx      Debian's, one worker, keep-alive upstream to both replicas,
#              no buffering, worker_rlimit_nofile raised (the baseline)
#   loadstar   the gateway of `loadstar up` (one worker thread)
# Reported per path: streams completed, refused (503) and failed, peak
# memory over idle (VmHWM - VmRSS before) per stream, CPU per stream.
# Goal (issue 26): 10,000 streams held with none lost; memory per stream
# measured and bounded. Uses root's limits where it has them.
#   ./scripts/setup.sh --bench && STREAMS=10000 bench/gateway_streams/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${LOADSTAR_BIN:-$PWD/build/release/loadstar}
flood=$PWD/build/release/bench/stream_flood
for tool in nginx curl; do command -v $tool >/dev/null || { echo "needs $tool (./scripts/setup.sh --bench)"; exit 1; }; done
cmake --build --preset release --target loadstar stream_flood >/dev/null

STREAMS=${STREAMS:-10000}
TOKENS=${TOKENS:-60}
STEP_MS=${STEP_MS:-1000}

work=$(mktemp -d)
cleanup() {
  [ -n "${nginx_pid:-}" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  [ -n "${up_pid:-}" ] && kill -INT "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
cat > "$work/profiles.yaml" <<YAML
profiles:
  - {name: steps, base_ms: $STEP_MS, prefill_token_us: 0, decode_seq_us: 0, context_token_ns: 0, num_gpu_blocks: 400000}
YAML
cat > "$work/bench.yaml" <<YAML
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: chat}
spec: {source: "synth://chat", size: 16Mi}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: chat
  replicas: 2
  routing: {picker: least-request}
  engine: {name: engine-sim, args: ["--profile", "steps", "--profiles-file", "$work/profiles.yaml", "--max-num-seqs", "$STREAMS", "--max-num-batched-tokens", "1000000"]}
YAML
"$bin" up -f "$work/bench.yaml" --port 0 --admin-port 0 --workers 1 --data-dir "$work/var" \
  --log-level warn > "$work/up.log" 2>&1 &
up_pid=$!
deadline=$((SECONDS + 60))
until grep -q "admin API" "$work/up.log"; do [ $SECONDS -lt $deadline ] || { cat "$work/up.log"; exit 1; }; sleep 0.05; done
gw_port=$(sed -n 's|.*OpenAI API: http://127.0.0.1:\([0-9]*\)/v1.*|\1|p' "$work/up.log")
admin_port=$(sed -n 's|.*admin API:  http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$work/up.log")
ports=()
until [ ${#ports[@]} -eq 2 ]; do
  [ $SECONDS -lt $deadline ] || { echo "replicas not ready"; exit 1; }
  mapfile -t ports < <(curl -s "localhost:$admin_port/api/v1/replicas" | tr '{' '\n' | grep '"state":"Ready"' | sed -n 's/.*"port":\([0-9]*\).*/\1/p')
  sleep 0.1
done

nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 32768; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  upstream engine { least_conn; server 127.0.0.1:${ports[0]}; server 127.0.0.1:${ports[1]}; keepalive 256; }
  server {
    listen 127.0.0.1:$nginx_port backlog=8192;
    location / {
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
NGINX
nginx -c "$work/nginx/nginx.conf" &
nginx_pid=$!
for _ in $(seq 200); do curl -s -o /dev/null "localhost:$nginx_port/health" && break; sleep 0.02; done
nginx_worker=$(pgrep -P "$nginx_pid" | head -1)

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() {  # run NAME PORT PID
  local before t0 out hwm t1
  before=$(kib "$3" VmRSS); t0=$(cpu_ticks "$3")
  # The peak is read from VmHWM: reset it first where the kernel allows.
  echo 5 > "/proc/$3/clear_refs" 2>/dev/null || true
  out=$("$flood" --port "$2" --streams "$STREAMS" --max-tokens "$TOKENS" --timeout 600 2>"$work/$1-flood.log") || true
  hwm=$(kib "$3" VmHWM); t1=$(cpu_ticks "$3")
  echo "$1 $out before_kib=$before hwm_kib=$hwm cpu_ticks=$((t1 - t0))"
  grep '^  [0-9]* x ' "$work/$1-flood.log" | sed "s/^/  $1 error: /" >&2 || true
}
echo "two engine-sim replicas on :${ports[0]} :${ports[1]} (steps of ${STEP_MS} ms); $STREAMS streams of $TOKENS tokens; fd limit $(ulimit -n)"
n=$(run nginx "$nginx_port" "$nginx_worker")
l=$(run loadstar "$gw_port" "$up_pid")
echo "$n"; echo "$l"
for line in "$n" "$l"; do
  echo "$line" | tr ' ' '\n' | awk -F= -v streams="$STREAMS" '
    NR == 1 {name = $0; next}
    {v[$1] = $2}
    END {
      split(v["status"], codes, ","); refused = 0
      for (i in codes) { split(codes[i], kv, ":"); if (kv[1] == 503) refused = kv[2] }
      per = (v["hwm_kib"] - v["before_kib"]) * 1024 / streams
      printf "  %-9s completed %5d/%d  refused(503) %4d  failed %4d  all open after %6.2fs  memory/stream %6.1f KB  CPU/stream %5.0f us\n",
        name, v["done"], streams, refused, streams - v["done"] - refused, v["all_open_s"], per / 1000, v["cpu_ticks"] * 10000 / streams
    }'
done
