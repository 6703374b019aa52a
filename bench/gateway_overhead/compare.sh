#!/usr/bin/env bash
# bench/gateway_overhead/compare.sh: several loadstar builds side by side
# against nginx, streaming, in one run.
#   bench/gateway_overhead/compare.sh OLD_BINARY build/release/loadstar
# Each binary runs `loadstar up` with its own engine-sim replica (the
# bench's zero-cost profile); nginx proxies to the first one's engine. Then
# RUNS rounds, each a SECONDS-long wrk run (64 connections, 18-event
# streams) through nginx and through every gateway in turn, so that drift
# on a shared machine hits all of them alike. Printed per round: requests/s
# and the proxy's CPU per request (user+system, from /proc); then the
# medians, and each one's ratio to nginx's in the same rounds. Server side
# on core 0, wrk on core 1, as run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] || { echo "usage: $0 BINARY..."; exit 2; }
for tool in wrk nginx taskset curl python3; do command -v $tool >/dev/null || { echo "needs $tool (./scripts/setup.sh --bench)"; exit 1; }; done
RUNS=${RUNS:-7}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
STREAM=${STREAM:-true}

work=$(mktemp -d)
pids=()
cleanup() {
  [ -n "${nginx_pid:-}" ] && kill "$nginx_pid" 2>/dev/null
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
. bench/gateway_overhead/common.sh
write_manifests "$work"
ports=()
engine_port=""
for i in $(seq 0 $(($# - 1))); do
  bin=$(realpath "${@:$((i + 1)):1}")
  taskset -c 0 "$bin" up -f "$work/bench.yaml" --port 0 --admin-port 0 --workers 1 \
    --data-dir "$work/var$i" --log-level warn > "$work/up$i.log" 2>&1 &
  pids+=($!)
  read -r gw port <<<"$(up_ports "$work/up$i.log")"
  ports+=("$gw")
  [ -n "$engine_port" ] || engine_port=$port
done

start_nginx "$work" "$engine_port"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime+stime, 10 ms ticks
run() {  # run PORT PID -> "rps/cpu_us_per_request"
  local t0 t1 n; t0=$(cpu_ticks "$2")
  MODEL=bench STREAM=$STREAM PROMPT_WORDS=100 MAX_TOKENS=16 taskset -c 1 wrk -t1 -c64 -d"${SECONDS_PER_RUN}"s \
    -s bench/lib/completion.lua "http://127.0.0.1:$1" > "$work/wrk.txt"
  t1=$(cpu_ticks "$2")
  grep -q "non200=0" "$work/wrk.txt" || { cat "$work/wrk.txt"; echo "non-200 answers"; exit 1; }
  n=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  echo "$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/wrk.txt")/$(awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN {printf "%.1f", (b - a) * 10000 / n}')"
}
echo "stream=$STREAM, 64 connections, ${SECONDS_PER_RUN}s per run, $RUNS rounds; requests/s / proxy CPU us per request"
for r in $(seq "$RUNS"); do
  line="nginx $(run "$nginx_port" "$nginx_worker")"
  for i in "${!ports[@]}"; do line="$line | bin$i $(run "${ports[$i]}" "${pids[$i]}")"; done
  echo "$line" | tee -a "$work/rounds.txt"
done
for i in $(seq 0 $(($# - 1))); do echo "bin$i = ${@:$((i + 1)):1}"; done
python3 - "$work/rounds.txt" <<'PY'
import statistics, sys
cols = {}
for line in open(sys.argv[1]):
    for part in line.split('|'):
        name, val = part.split()
        rps, cpu = val.split('/')
        cols.setdefault(name, []).append((float(rps), float(cpu)))
n = cols['nginx']
for k, v in cols.items():
    cpu = statistics.median(x[1] / y[1] for x, y in zip(v, n))
    tput = statistics.median(x[0] / y[0] for x, y in zip(v, n))
    print(f"{k:6} median {statistics.median(x[1] for x in v):6.1f} us/request, "
          f"{statistics.median(x[0] for x in v):6.0f} requests/s; against nginx: CPU {cpu:.2f}x, throughput {tput:.2f}x")
PY
