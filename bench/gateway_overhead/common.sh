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
