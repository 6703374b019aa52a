#!/usr/bin/env bash
# From a fresh Debian machine to OpenAI-compatible inference on this machine:
# installs what is needed, builds, writes the quickstart's synthetic model
# into Loadstar's model cache, and runs `loadstar up` (gateway on
# http://127.0.0.1:8080, admin API on :8090) until Ctrl-C.
#   ./scripts/quickstart.sh                            engine-sim replicas (the simulator)
#   ./scripts/quickstart.sh examples/llama-cpp.yaml    llama.cpp's llama-server, for real
set -euo pipefail
cd "$(dirname "$0")/.."
example=${1:-examples/quickstart.yaml}
./scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release --target loadstar
model_dir=var/cache/models/quickstart-llama
if [ "$example" = examples/quickstart.yaml ] && [ ! -d "$model_dir" ]; then
  ./build/release/loadstar model synth --size 1GiB -o "$model_dir" --name quickstart-llama
fi
# An example that names llama.cpp runs the llama-server setup.sh built
# from the source node-llama-cpp ships (cached in ~/.cache/loadstar-llama).
cat <<'MSG'

Starting Loadstar. Once both replicas are ready, try (in another terminal):
  curl localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"chat","messages":[{"role":"user","content":"Hello!"}]}'
  ./build/release/loadstar get replicas

MSG
exec ./build/release/loadstar up -f "$example" --data-dir var
