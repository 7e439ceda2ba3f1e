#!/usr/bin/env bash
# Makes sure the image `debian:bookworm-slim` exists, because every Dockerfile here starts FROM it.
# Online it is pulled; on a machine without an image registry it is built with debootstrap from the
# Debian mirror this machine's own apt sources name (no host name is written into the repo), then
# imported under the same tag, so the same Dockerfiles build online and offline.
set -euo pipefail

IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
SUITE=${BASE_SUITE:-bookworm}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE present"
  exit 0
fi
if timeout 60 docker pull "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE pulled"
  exit 0
fi
echo "base image $IMAGE absent and cannot be pulled: building it with debootstrap"

# The first URI of the machine's apt sources that serves "$SUITE" (deb822 or one-line format).
sources_uri() {
  local want=$1 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v want="$want" '
      BEGIN { RS=""; FS="\n" }
      {
        uris=""; suites=""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", $i); uris=$i }
          if ($i ~ /^Suites:/) { sub(/^Suites:[ \t]*/, "", $i); suites=" " $i " " }
        }
        if (uris != "" && index(suites, " " want " ") > 0) { split(uris, u, " "); print u[1]; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v want="$want" '$1 == "deb" { o = ($2 ~ /^\[/) ? 1 : 0; if ($(3+o) == want) { print $(2+o); exit } }' "$f"
  done
}

MIRROR=${DEBIAN_MIRROR:-$(sources_uri "$SUITE" | head -n1)}
SECURITY=${DEBIAN_SECURITY_MIRROR:-$(sources_uri "$SUITE-security" | head -n1)}
if [ -z "$MIRROR" ]; then
  echo "error: no Debian mirror for '$SUITE' found in /etc/apt/sources*; set DEBIAN_MIRROR" >&2
  exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  echo "installing debootstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

ROOT=$(mktemp -d /tmp/pgpool-sidecar-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >/dev/null

{
  echo "Types: deb"
  echo "URIs: $MIRROR"
  echo "Suites: $SUITE $SUITE-updates"
  echo "Components: main"
  echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
  if [ -n "$SECURITY" ]; then
    echo
    echo "Types: deb"
    echo "URIs: $SECURITY"
    echo "Suites: $SUITE-security"
    echo "Components: main"
    echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
  fi
} > "$ROOT/etc/apt/sources.list.d/debian.sources"
rm -f "$ROOT/etc/apt/sources.list"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/tmp/*

tar -C "$ROOT" -c . | docker import --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
echo "base image $IMAGE built from $MIRROR"
