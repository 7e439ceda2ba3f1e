#!/usr/bin/env bash
# Builds the sidecar binary on the host and the images the stack uses, with the classic builder
# and host networking (apt reaches the Debian archive; nothing is pulled from a registry):
#   build-images.sh            pgpool+sidecar, the default node image (PostgreSQL 17), Prometheus
#   build-images.sh --matrix   also the test matrix: PostgreSQL 15 and 18 node images and the
#                              official-like node images (FLAVOR=official, PostgreSQL 17, 18)
# Every image starts FROM a debian:<suite>-slim that ensure-base-image.sh provides offline.
# Docker's layer cache makes a second run cheap; each image is built once per run.
set -euo pipefail
cd "$(dirname "$0")/.."

matrix=0
case "${1-}" in
  --matrix) matrix=1 ;;
  "") ;;
  *) echo "usage: $0 [--matrix]" >&2; exit 64 ;;
esac

suites=(trixie)
[ "$matrix" = 1 ] && suites+=(bookworm sid)
./docker/base/ensure-base-image.sh "${suites[@]}"

cargo build --release --locked

build() {
  local tag=$1; shift
  local started=$SECONDS
  docker build -q --network host -t "$tag" "$@" >/dev/null
  echo "image $tag built in $((SECONDS - started)) s"
}

build pgpool-sidecar:local -f docker/pgpool/Dockerfile.local .
build pgpool-sidecar-postgres:17 docker/postgres
build pgpool-sidecar-prometheus:local docker/prometheus
if [ "$matrix" = 1 ]; then
  build pgpool-sidecar-postgres:15 --build-arg BASE=debian:bookworm-slim --build-arg PG_MAJOR=15 \
    docker/postgres
  build pgpool-sidecar-postgres:18 --build-arg BASE=debian:sid-slim --build-arg PG_MAJOR=18 \
    --build-arg PGDATA=/var/lib/postgresql/18/docker --build-arg PG_VOLUME=/var/lib/postgresql \
    docker/postgres
  build pgpool-sidecar-postgres-official:17 --build-arg FLAVOR=official docker/postgres
  build pgpool-sidecar-postgres-official:18 --build-arg BASE=debian:sid-slim --build-arg PG_MAJOR=18 \
    --build-arg PGDATA=/var/lib/postgresql/18/docker --build-arg PG_VOLUME=/var/lib/postgresql \
    --build-arg FLAVOR=official docker/postgres
fi
docker run --rm --entrypoint pgpool pgpool-sidecar:local --version
