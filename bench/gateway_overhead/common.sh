# Sourced by run.sh and compare.sh: the set-up both measure with.
# write_manifests DIR: DIR/bench.yaml, one engine-sim replica with the
# zero-cost "free-gpu" profile (proxy overhead is not hidden behind
# simulated GPU time).
write_manifests() {
  cat > "$1/profiles.yaml" <<YAML
profiles:
  - {name: free-gpu, base_ms: 0, prefill_token_us: 0, decode_seq_us: 0, context_token_ns: 0, num_gpu_blocks: 200000}
YAML
  cat > "$1/bench.yaml" <<YAML
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: bench}
spec: {source: "synth://bench", size: 16Mi}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: bench}
spec:
  model: bench
  replicas: 1
  engine: {name: engine-sim, args: ["--profile", "free-gpu", "--profiles-file", "$1/profiles.yaml", "--max-num-seqs", "512"]}
YAML
}

# write_nginx_conf DIR ENGINE_PORT NGINX_PORT: DIR/nginx/nginx.conf, a
# plain reverse proxy (1 worker, keep-alive upstream, no buffering).
write_nginx_conf() {
  mkdir -p "$1/nginx"
  cat > "$1/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $1/nginx/nginx.pid;
error_log $1/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/nginx/body;
  proxy_temp_path $1/nginx/proxy;
  upstream engine { server 127.0.0.1:$2; keepalive 256; }
  server {
    listen 127.0.0.1:$3;
    client_max_body_size 8m;
    location / {
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
}

# up_ports LOG: once the `loadstar up` writing LOG listens and its replica
# is Ready, prints "GATEWAY_PORT ENGINE_PORT".
up_ports() {
  local gw admin engine=""
  for _ in $(seq 500); do grep -q "admin API" "$1" && break; sleep 0.02; done
  gw=$(sed -n 's|.*OpenAI API: http://127.0.0.1:\([0-9]*\)/v1.*|\1|p' "$1")
  admin=$(sed -n 's|.*admin API:  http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$1")
  for _ in $(seq 500); do
    engine=$(curl -s "localhost:$admin/api/v1/replicas" | sed -n 's/.*"port":\([0-9]*\).*"state":"Ready".*/\1/p')
    [ -n "$engine" ] && [ "$engine" != 0 ] && break; sleep 0.05
  done
  echo "$gw $engine"
}

# start_nginx DIR ENGINE_PORT: nginx (1 worker, core 0) in front of the
# engine on a free port; sets nginx_port, nginx_pid and nginx_worker.
start_nginx() {
  nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  write_nginx_conf "$1" "$2" "$nginx_port"
  taskset -c 0 nginx -c "$1/nginx/nginx.conf" &
  nginx_pid=$!
  for _ in $(seq 200); do curl -s -o /dev/null "localhost:$nginx_port/health" && break; sleep 0.02; done
  nginx_worker=$(pgrep -P "$nginx_pid" | head -1)
}
