#!/usr/bin/env bash
# Quick start: builds everything this machine lacks (base image included), starts the cluster
# (pgpool + sidecar, pg-0 primary, pg-1 and pg-2 standbys) and returns once pgpool accepts
# queries with every standby attached.
# Extra arguments go to `docker-compose up`, e.g. `--profile monitoring` is set by MONITORING=1.
set -euo pipefail
cd "$(dirname "$0")/.."

./docker/base/ensure-base-image.sh
./docker/build-images.sh

project=${COMPOSE_PROJECT_NAME:-pgpool-sidecar}
profile=()
[ "${MONITORING:-0}" = 1 ] && profile=(--profile monitoring)
docker-compose -p "$project" -f compose/docker-compose.yml "${profile[@]}" up -d "$@"

port=${SIDECAR_HTTP_PORT:-9720}
echo "waiting for the cluster to be ready (http://127.0.0.1:$port/status)"
for _ in $(seq 1 180); do
  if status=$(curl -fsS "http://127.0.0.1:$port/status" 2>/dev/null) &&
     curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 &&
     [ "$(printf '%s' "$status" | grep -o '"state":"streaming"' | wc -l)" -ge 2 ]; then
    echo "ready: pgpool on 127.0.0.1:${PGPOOL_PORT:-5432}, sidecar on 127.0.0.1:$port"
    exit 0
  fi
  sleep 1
done
echo "cluster not ready after 180 s; logs:" >&2
docker-compose -p "$project" -f compose/docker-compose.yml logs --tail 50 >&2
exit 1
