#!/usr/bin/env bash
# bench/cold_start/loader.sh: `loadstar load` (io_uring, O_DIRECT, the fast
# loader engines start through) against fio's sequential O_DIRECT read of the
# same shard files with the same block size and queue depth (the disk's
# limit), and against a plain buffered read (cat) from a cold page cache.
# Issue 4's goal: loadstar load at >= 90% of fio's bandwidth.
#   bench/cold_start/loader.sh                (from the repository root)
# Needs fio (./scripts/setup.sh --bench). Environment: SIZE (synthetic model,
# default 4GiB), RUNS (default 6), DIR (where the model is written; default a
# temporary directory on the disk under test). Dropping the page cache
# before the buffered run needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$PWD/build/release/loadstar
cmake --build --preset release --target loadstar >/dev/null
size=${SIZE:-4GiB}
runs=${RUNS:-6}
work=${DIR:-$(mktemp -d -p "$PWD/build")}
trap 'rm -rf "$work/model"' EXIT
"$bin" model synth --size "$size" -o "$work/model" >/dev/null
shards=$(ls "$work"/model/*.safetensors)
bytes=$(cat $shards | wc -c)
mib() { echo "scale=0; $1 / 1048576" | bc; }
echo "model: $size in $(echo $shards | wc -w) shards ($(mib $bytes) MiB)"
# This VM's disk alternates between two speeds from one read to the next
# (host-side caching), whatever the reader: each tool runs RUNS times,
# interleaved, and the best and median of each are compared.
printf "%-4s %14s %14s %14s\n" run "fio MiB/s" "load MiB/s" "cat MiB/s"
fios=(); loads=(); cats=()
for run in $(seq 1 "$runs"); do
  fio_bw=$(fio --name=seq --rw=read --direct=1 --ioengine=io_uring --bs=8M --iodepth=16 \
    --numjobs=1 --readonly --output-format=json --filename="$(echo $shards | tr ' ' ':')" \
    | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]))')
  load_s=$("$bin" load --raw $shards | sed -E 's/.* in ([0-9.]+)s.*/\1/')
  load_bw=$(echo "scale=0; $bytes / $load_s" | bc)
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  start=$(date +%s.%N); cat $shards > /dev/null; end=$(date +%s.%N)
  cat_bw=$(echo "scale=0; $bytes / ($end - $start)" | bc)
  fios+=("$fio_bw"); loads+=("$load_bw"); cats+=("$cat_bw")
  printf "%-4s %14s %14s %14s\n" "$run" "$(mib $fio_bw)" "$(mib $load_bw)" "$(mib $cat_bw)"
done
stat() {  # best and median of the arguments
  printf "%s\n" "$@" | sort -n | awk '{v[NR]=$1} END {m = NR % 2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2; printf "%.0f %.0f\n", v[NR], m}'
}
read -r fio_best fio_med < <(stat "${fios[@]}")
read -r load_best load_med < <(stat "${loads[@]}")
read -r cat_best cat_med < <(stat "${cats[@]}")
echo "best:   fio $(mib $fio_best)  load $(mib $load_best)  cat $(mib $cat_best) MiB/s   load/fio $(echo "scale=3; $load_best / $fio_best" | bc)"
echo "median: fio $(mib $fio_med)  load $(mib $load_med)  cat $(mib $cat_med) MiB/s   load/fio $(echo "scale=3; $load_med / $fio_med" | bc)"
