#!/usr/bin/env bash
# Puts Compose v2 (Debian trixie's `docker-compose` package, a static-enough Go binary that links
# only libc) into a Docker CLI plugin directory of this checkout, without installing the package
# (it has the same name as bookworm's Compose v1, which stays the machine's `docker-compose`):
#   docker/compose-v2.sh          prints the DOCKER_CONFIG directory to use:
#   DOCKER_CONFIG=$(docker/compose-v2.sh) docker compose version
# The .deb is fetched by apt inside a debian:trixie-slim container (ensure-base-image.sh), so
# the archive and its signatures are apt's, not a URL written here.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$PWD/target/docker-cli
plugin=$dir/cli-plugins/docker-compose
if [ ! -x "$plugin" ]; then
  ./docker/base/ensure-base-image.sh trixie >&2
  mkdir -p "$dir/cli-plugins"
  work=$(mktemp -d "$dir/fetch.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  docker run --rm --network host -v "$work:/out" debian:trixie-slim bash -ec '
    cd /tmp
    apt-get update -qq
    apt-get download -qq docker-compose 2>/dev/null
    dpkg-deb -x docker-compose_*.deb /tmp/x
    install -m 0755 /tmp/x/usr/libexec/docker/cli-plugins/docker-compose /out/docker-compose
    chown '"$(id -u):$(id -g)"' /out/docker-compose
  ' >&2
  mv "$work/docker-compose" "$plugin"
fi
DOCKER_CONFIG=$dir docker compose version >&2
printf '%s\n' "$dir"
