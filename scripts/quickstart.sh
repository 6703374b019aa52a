#!/usr/bin/env bash
# From a fresh Debian machine to a running OpenAI-compatible server: installs
# what is needed, builds, writes a synthetic model, and serves it with the
# engine simulator on http://127.0.0.1:8000 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release --target loadstar
model_dir=var/models/quickstart-llama
if [ ! -d "$model_dir" ]; then
  ./build/release/loadstar model synth --size 1GiB -o "$model_dir" --name quickstart-llama
fi
cat <<MSG

Serving quickstart-llama on http://127.0.0.1:8000 once its weights are loaded. Try:
  curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"quickstart-llama","messages":[{"role":"user","content":"Hello!"}]}'

MSG
exec ./build/release/loadstar engine-sim --model "$model_dir" --port 8000
