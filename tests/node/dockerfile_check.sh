#!/usr/bin/env bash
# deploy/Dockerfile cannot be built here (no base-image registry): check that
# it builds what scripts/images.sh builds. Its runtime stage installs exactly
# the packages images.sh puts in the image (less those bookworm-slim already
# holds), copies the binary to the same path, and runs it as the same user;
# its build stage installs the -dev libraries scripts/setup.sh does.
#
#   tests/node/dockerfile_check.sh LOADSTAR_BINARY
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:?usage: dockerfile_check.sh LOADSTAR_BINARY}
DF=$ROOT/deploy/Dockerfile
fail=0

# The package names of an `apt-get install` in the Dockerfile stage after FROM $1.
install_list() {
  awk -v from="$1" '
    /^FROM / { in_stage = ($2 == from) }
    in_stage && /apt-get install/ { on = 1 }
    on { line = $0; sub(/&&.*/, "", line); print line; if ($0 ~ /&&/ && !/apt-get install/) on = 0 }
  ' "$DF" | tr ' \\' '\n\n' | grep -E '^[a-z0-9][a-z0-9.+-]+$' |
    grep -vxE 'apt-get|install|update|RUN|cmake|-y|-qq' | sort -u
}

# bookworm-slim's own packages that images.sh has to add to an empty root.
in_slim="libc6 libgcc-s1 libstdc++6"
want=$("$ROOT/scripts/images.sh" packages "$BIN" | grep -vxF -f <(tr ' ' '\n' <<<"$in_slim") | sort -u)
have=$(install_list debian:bookworm-slim)
if [ "$want" != "$have" ]; then
  echo "deploy/Dockerfile's runtime packages differ from the image's (scripts/images.sh packages):"
  diff <(echo "$have") <(echo "$want") | sed 's/^</  Dockerfile only:/; s/^>/  image only:/' | grep only || true
  fail=1
fi

# The build stage's libraries are setup.sh's.
setup_libs=$(sed -n '/^packages=(/,/^)/p' "$ROOT/scripts/setup.sh" | sed -n '/# libraries/,/# tests/p' |
  grep -v '#' | tr ' ' '\n' | grep -E -- '-dev$' | sort -u)
build_libs=$(install_list 'debian:bookworm' | grep -E -- '-dev$' | sort -u)
if [ "$setup_libs" != "$build_libs" ]; then
  echo "deploy/Dockerfile's build libraries differ from scripts/setup.sh's:"
  diff <(echo "$build_libs") <(echo "$setup_libs") | sed 's/^</  Dockerfile only:/; s/^>/  setup.sh only:/' | grep only || true
  fail=1
fi

grep -q '^COPY --from=build /src/build/release/loadstar /usr/local/bin/loadstar$' "$DF" ||
  { echo "deploy/Dockerfile: the binary is not at /usr/local/bin/loadstar as in scripts/images.sh"; fail=1; }
grep -q '^USER 65532:65532$' "$DF" || { echo "deploy/Dockerfile: USER is not 65532:65532 as in scripts/images.sh"; fail=1; }
grep -q '^ENTRYPOINT \["loadstar"\]$' "$DF" || { echo "deploy/Dockerfile: ENTRYPOINT is not loadstar"; fail=1; }
grep -q -- '--config.entrypoint loadstar --config.user 65532:65532' "$ROOT/scripts/images.sh" ||
  { echo "scripts/images.sh: entrypoint/user changed; update deploy/Dockerfile and this check"; fail=1; }
[ $fail -eq 0 ] && echo "deploy/Dockerfile matches scripts/images.sh ($(wc -w <<<"$want") packages)"
exit $fail
