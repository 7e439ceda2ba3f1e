#!/usr/bin/env bash
# Builds the sidecar binary on the host and every image the stack uses (pgpool+sidecar,
# PostgreSQL node, Prometheus) with the classic builder. Images start FROM debian:bookworm-slim,
# which ensure-base-image.sh provides offline.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked
docker-compose -p pgpool-sidecar-build -f compose/docker-compose.yml --profile monitoring build
