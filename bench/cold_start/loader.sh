#!/usr/bin/env bash
# bench/cold_start/loader.sh: `loadstar load` (io_uring, O_DIRECT, the fast
# loader engines start through) against fio's sequential O_DIRECT read of the
# same shard files with the same block size and queue depth (the disk's
# limit), and against a plain buffered read (cat) from a cold page cache.
# Issue 4's goal: loadstar load at >= 90% of fio's bandwidth.
#   bench/cold_start/loader.sh                (from the repository root)
# Needs fio (./scripts/setup.sh --bench). Environment: SIZE (synthetic model,
# default 4GiB), RUNS (default 3), DIR (where the model is written; default a
# temporary directory on the disk under test). Dropping the page cache
# before the buffered run needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$PWD/build/release/loadstar
cmake --build --preset release --target loadstar >/dev/null
size=${SIZE:-4GiB}
runs=${RUNS:-3}
work=${DIR:-$(mktemp -d -p "$PWD/build")}
trap 'rm -rf "$work/model"' EXIT
"$bin" model synth --size "$size" -o "$work/model" >/dev/null
shards=$(ls "$work"/model/*.safetensors)
bytes=$(cat $shards | wc -c)
mib() { echo "scale=0; $1 / 1048576" | bc; }
echo "model: $size in $(echo $shards | wc -w) shards ($(mib $bytes) MiB)"
printf "%-4s %14s %14s %14s %8s\n" run "fio MiB/s" "load MiB/s" "cat MiB/s" "load/fio"
for run in $(seq 1 "$runs"); do
  fio_bw=$(fio --name=seq --rw=read --direct=1 --ioengine=io_uring --bs=8M --iodepth=16 \
    --numjobs=1 --readonly --output-format=json $(for s in $shards; do printf -- "--filename=%s " "$s"; done | sed 's/ --filename=/:/g') \
    | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]))')
  load_out=$("$bin" load --raw $shards)
  load_s=$(echo "$load_out" | sed -E 's/.* in ([0-9.]+)s.*/\1/')
  load_bw=$(echo "scale=0; $bytes / $load_s" | bc)
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  start=$(date +%s.%N); cat $shards > /dev/null; end=$(date +%s.%N)
  cat_bw=$(echo "scale=0; $bytes / ($end - $start)" | bc)
  printf "%-4s %14s %14s %14s %8s\n" "$run" "$(mib $fio_bw)" "$(mib $load_bw)" "$(mib $cat_bw)" \
    "$(echo "scale=3; $load_bw / $fio_bw" | bc)"
done
