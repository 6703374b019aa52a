#!/usr/bin/env bash
# bench/gateway_overhead: what a proxy in front of the engine costs.
#   ./scripts/setup.sh --bench && bench/gateway_overhead/run.sh
# One engine-sim replica (zero-cost "free-gpu" profile, so proxy overhead is
# not hidden behind simulated GPU time), reached three ways in one run:
#   direct       wrk -> engine
#   nginx        wrk -> nginx (Debian's, plain reverse proxy, keep-alive
#                upstream, no buffering) -> engine
#   loadstar     wrk -> loadstar gateway (`loadstar up`) -> engine
# Server side pinned to core 0, wrk to core 1; nginx has 1 worker process,
# the gateway 1 worker thread. Reported: added latency p50/p99 over direct at
# fixed concurrency, and maximum requests/s; ratios to nginx.
# Goals (issue 26): added p99 <= 1.5x nginx's; throughput >= 0.9x nginx's; CPU per
# request <= 1.2x nginx's (the stable signal: compare.sh takes medians).
set -euo pipefail
cd "$(dirname "$0")/../.."
# LOADSTAR_BIN: another build to measure (e.g. the commit before a change).
bin=${LOADSTAR_BIN:-$PWD/build/release/loadstar}
for tool in wrk nginx taskset curl; do command -v $tool >/dev/null || { echo "needs $tool (./scripts/setup.sh --bench)"; exit 1; }; done
[ -n "${LOADSTAR_BIN:-}" ] || cmake --build --preset release --target loadstar >/dev/null

CONC=${CONC:-16}          # connections for the latency runs
MAX_CONC=${MAX_CONC:-64}  # connections for the throughput runs
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}

work=$(mktemp -d)
cleanup() {
  [ -n "${nginx_pid:-}" ] && kill "$nginx_pid" 2>/dev/null
  [ -n "${up_pid:-}" ] && kill -INT "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
. bench/gateway_overhead/common.sh
write_manifests "$work"
taskset -c 0 "$bin" up -f "$work/bench.yaml" --port 0 --admin-port 0 --workers 1 --data-dir "$work/var" \
  --log-level warn > "$work/up.log" 2>&1 &
up_pid=$!
read -r gw_port engine_port <<<"$(up_ports "$work/up.log")"
start_nginx "$work" "$engine_port"

cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }  # utime+stime, 10 ms ticks
run() {  # run PORT MODEL CONNECTIONS STREAM [PROXY_PID] -> "rps p50_us p99_us proxy_cpu_us_per_request"
  local t0; t0=$(cpu_ticks "${5:-}")
  MODEL=$2 STREAM=$4 PROMPT_WORDS=100 MAX_TOKENS=16 taskset -c 1 wrk -t1 -c"$3" -d"${SECONDS_PER_RUN}"s \
    -s bench/lib/completion.lua "http://127.0.0.1:$1" > "$work/wrk.txt"
  local t1; t1=$(cpu_ticks "${5:-}")
  grep -q "non200=0" "$work/wrk.txt" || { cat "$work/wrk.txt"; echo "non-200 answers"; exit 1; }
  local n; n=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  echo "$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt") $(sed -n 's/p50_us=//p' "$work/wrk.txt") $(sed -n 's/p99_us=//p' "$work/wrk.txt") $(awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN {printf "%.0f", (b - a) * 10000 / n}')"
}

echo "engine-sim on :$engine_port, nginx on :$nginx_port, loadstar gateway on :$gw_port"
echo "prompt 100 words, 16 output tokens; latency at $CONC connections, throughput at $MAX_CONC; ${SECONDS_PER_RUN}s per run"
for stream in false true; do
  # The engine serves the replica's model under the service's name ("bench").
  read -r d_rps d50 d99 _ <<<"$(run "$engine_port" bench "$CONC" $stream)"
  read -r n_rps n50 n99 _ <<<"$(run "$nginx_port" bench "$CONC" $stream)"
  read -r l_rps l50 l99 _ <<<"$(run "$gw_port" bench "$CONC" $stream)"
  read -r dm _ _ _ <<<"$(run "$engine_port" bench "$MAX_CONC" $stream)"
  read -r nm _ _ ncpu <<<"$(run "$nginx_port" bench "$MAX_CONC" $stream "$nginx_worker")"
  read -r lm _ _ lcpu <<<"$(run "$gw_port" bench "$MAX_CONC" $stream "$up_pid")"
  echo
  echo "stream=$stream"
  awk -v d50="$d50" -v d99="$d99" -v n50="$n50" -v n99="$n99" -v l50="$l50" -v l99="$l99" \
      -v dm="$dm" -v nm="$nm" -v lm="$lm" -v ncpu="$ncpu" -v lcpu="$lcpu" 'BEGIN {
    printf "  %-10s %10s %10s %11s %11s %11s %15s\n", "path", "p50 (us)", "p99 (us)", "added p50", "added p99",
      "max req/s", "proxy CPU/req"
    printf "  %-10s %10d %10d %11s %11s %11.0f %15s\n", "direct", d50, d99, "-", "-", dm, "-"
    printf "  %-10s %10d %10d %11d %11d %11.0f %12d us\n", "nginx", n50, n99, n50 - d50, n99 - d99, nm, ncpu
    printf "  %-10s %10d %10d %11d %11d %11.0f %12d us\n", "loadstar", l50, l99, l50 - d50, l99 - d99, lm, lcpu
    an = n99 - d99; al = l99 - d99
    printf "  added p99 loadstar/nginx: %.2fx (goal <= 1.5x); throughput loadstar/nginx: %.2fx (goal >= 0.9x); CPU per request loadstar/nginx: %.2fx (goal <= 1.2x)\n",
      (an > 0 ? al / an : 0), lm / nm, lcpu / ncpu
  }'
done
