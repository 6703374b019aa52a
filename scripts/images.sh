#!/usr/bin/env bash
# Loadstar's container images, built here from Debian's archive alone (no
# base-image registry): a root filesystem holding only the binary, the
# shared libraries it links (their Debian packages, found with ldd and dpkg,
# downloaded from the archive and unpacked without their docs), the CA
# bundle, and passwd/group/nsswitch files; assembled into an OCI image with
# umoci and written as a docker-archive with skopeo, which
# `ctr -n k8s.io images import` and `docker load` both read.
#
#   scripts/images.sh build [LOADSTAR_BINARY]   both images; prints the archives' paths
#   scripts/images.sh loadstar [LOADSTAR_BINARY] loadstar:0.1.0 (controller, gateway, agent,
#                                                 stage, engine-sim), default build/release/loadstar
#   scripts/images.sh llama                      llama.cpp's llama-server, built by
#                                                 scripts/llama-server.sh, at /app/llama-server as in
#                                                 llama.cpp's own server image
#   scripts/images.sh packages BINARY            the Debian packages an image of BINARY holds
#   scripts/images.sh files ARCHIVE              the files an image archive holds
#
# Downloaded packages are cached in $LOADSTAR_IMAGES_HOME (default
# ~/.cache/loadstar-images), outside any checkout; an image is rebuilt only
# when its binary changed. deploy/Dockerfile builds the same image for users
# with a registry (tests check both install the same packages).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
H=${LOADSTAR_IMAGES_HOME:-$HOME/.cache/loadstar-images}
LOADSTAR_TAG=loadstar:0.1.0

die() { echo "images.sh: $*" >&2; exit 1; }

need_tools() {
  local missing=()
  for t in umoci skopeo dpkg-deb apt-get; do command -v "$t" >/dev/null || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] || die "needs ${missing[*]} (./scripts/setup.sh --node installs them)"
}

# The Debian packages that own the shared libraries BINARY loads, and
# ca-certificates (TLS to Hub, S3, HTTPS backends) when it links OpenSSL.
packages_of() {
  local bin=$1 lib real pkg
  [ -x "$bin" ] || die "no executable at $bin"
  {
    ldd "$bin" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
      real=$(readlink -f "$lib")
      pkg=$(dpkg -S "$real" 2>/dev/null || dpkg -S "$lib" 2>/dev/null ||
            dpkg -S "/usr$real" 2>/dev/null || true)
      [ -n "$pkg" ] || die "no Debian package owns $lib (loaded by $bin)"
      echo "${pkg%%:*}"
    done
    # Not `ldd | grep -q`: grep leaving at the first match can make ldd die
    # of SIGPIPE, and with pipefail the test then fails (CI saw the image
    # lose ca-certificates that way, under load).
    case "$(ldd "$bin")" in *libssl*) echo ca-certificates ;; esac
  } | sort -u
}

# Downloads (cached) the packages at the versions installed here, the ones the
# binary was built and tested against.
fetch_debs() {
  mkdir -p "$H/debs"
  local p v want=()
  for p in "$@"; do
    v=$(dpkg-query -W -f='${Version}' "$p")
    ls "$H/debs/${p}_"*.deb >/dev/null 2>&1 && continue
    want+=("$p=$v")
  done
  [ ${#want[@]} -eq 0 ] || (cd "$H/debs" && apt-get download -qq -o APT::Sandbox::User=root "${want[@]}" >/dev/null) ||
    die "apt-get download ${want[*]} failed (is Debian's archive reachable?)"
}

# A root filesystem in $1 from the packages $2..: their files minus docs.
make_root() {
  local root=$1 p deb
  shift
  rm -rf "$root" && mkdir -p "$root"
  fetch_debs "$@"
  for p in "$@"; do
    deb=$(ls "$H/debs/${p}_"*.deb | head -n 1)
    dpkg-deb -x "$deb" "$root"
  done
  rm -rf "$root"/usr/share/{doc,man,info,lintian,locale,bug,gcc,gdb} "$root"/usr/lib/x86_64-linux-gnu/gconv
  # What ca-certificates' postinst would generate: the bundle OpenSSL reads.
  if [ -d "$root/usr/share/ca-certificates" ]; then
    mkdir -p "$root/etc/ssl/certs"
    find "$root/usr/share/ca-certificates" -name '*.crt' | sort | xargs cat > "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  # Debian keeps libraries under /lib through the /usr merge symlinks the
  # base-files package would create.
  for d in bin lib lib64 sbin; do
    if [ -d "$root/$d" ] && [ ! -L "$root/$d" ]; then
      mkdir -p "$root/usr/$d" && cp -a "$root/$d/." "$root/usr/$d/" && rm -rf "${root:?}/$d"
    fi
    ln -s "usr/$d" "$root/$d"
  done
  mkdir -p "$root/etc" "$root/tmp" "$root/root" "$root/home/nonroot" "$root/dev" "$root/proc" "$root/sys"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
}

# Writes the root in $1 as image $2 (NAME:TAG) to archive $3, with config $4...
assemble() {
  local root=$1 ref=$2 out=$3
  shift 3
  local w
  w=$(mktemp -d "$H/work.XXXXXX")
  umoci init --layout "$w/oci"
  umoci new --image "$w/oci:build"
  umoci unpack --rootless --image "$w/oci:build" "$w/bundle" >/dev/null
  cp -a "$root/." "$w/bundle/rootfs/"
  umoci repack --image "$w/oci:build" "$w/bundle"
  umoci config --image "$w/oci:build" --tag final --os linux --architecture amd64 \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin --author "loadstar scripts/images.sh" "$@"
  rm -f "$out.tmp"
  skopeo copy -q "oci:$w/oci:final" "docker-archive:$out.tmp:$ref" >/dev/null
  mv "$out.tmp" "$out"
  rm -rf "$w"
}

stamp_of() { sha256sum "$@" | sha256sum | cut -c1-16; }

# build_image BIN REF OUT ROOT_NAME INSTALL_PATH UMOCI_CONFIG...: the image
# of BIN at INSTALL_PATH, cached in OUT until BIN (or this script) changes.
build_image() {
  local bin=$1 ref=$2 out=$3 root=$H/root-$4 path=$5 stamp
  shift 5
  mkdir -p "$H"
  stamp=$(stamp_of "$bin" "$0")
  if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then echo "$out"; return; fi
  mapfile -t pkgs < <(packages_of "$bin")
  make_root "$root" "${pkgs[@]}"
  install -D -m 0755 "$bin" "$root$path"
  assemble "$root" "$ref" "$out" "$@"
  echo "$stamp" > "$out.stamp"
  echo "$out"
}

build_loadstar() {
  local bin=${1:-$ROOT/build/release/loadstar}
  [ -x "$bin" ] || die "no loadstar binary at $bin (cmake --build --preset release --target loadstar)"
  build_image "$bin" "$LOADSTAR_TAG" "$H/loadstar-0.1.0.tar" loadstar /usr/local/bin/loadstar \
    --config.entrypoint loadstar --config.user 65532:65532 --config.workingdir /
}

llama_ref() {
  local d commit
  d=$(dirname "$(dirname "$("$ROOT/scripts/llama-server.sh" path)")")
  commit=$(cut -c1-12 "$d/llama.cpp.commit")
  echo "loadstar/llama.cpp:server-$commit"
}

build_llama() {
  local bin ref
  bin=$("$ROOT/scripts/llama-server.sh" path) || die "llama-server is not built (scripts/llama-server.sh build)"
  ref=$(llama_ref)
  # As llama.cpp's server image: /app/llama-server is the entrypoint, root.
  build_image "$bin" "$ref" "$H/llama.cpp-${ref##*:}.tar" llama /app/llama-server \
    --config.entrypoint /app/llama-server --config.workingdir /app
}

files_of() {
  local archive=$1 w layer
  w=$(mktemp -d)
  tar -xf "$archive" -C "$w"
  for layer in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))[0]["Layers"]))' "$w/manifest.json"); do
    tar -tf "$w/$layer"
  done | sed 's|^\./||; s|/$||' | grep -v '^$' | sort -u
  rm -rf "$w"
}

cmd=${1:-build}
shift || true
case "$cmd" in
  build) need_tools; build_loadstar "$@"; build_llama ;;
  loadstar) need_tools; build_loadstar "$@" ;;
  llama) need_tools; build_llama ;;
  llama-ref) llama_ref ;;
  packages) packages_of "${1:?packages BINARY}" ;;
  files) files_of "${1:?files ARCHIVE}" ;;
  *) die "unknown command $cmd (build | loadstar | llama | llama-ref | packages | files)" ;;
esac
