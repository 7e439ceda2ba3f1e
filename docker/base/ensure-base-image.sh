#!/usr/bin/env bash
# Makes sure the Debian base images exist, because every Dockerfile here starts FROM one of them:
#   ensure-base-image.sh [suite ...]     (default: trixie; e.g. `trixie bookworm sid`)
# makes `debian:<suite>-slim` for each suite. Online it is pulled; on a machine without an image
# registry it is built with debootstrap from the Debian mirror this machine's own apt sources
# name (no host name is written into the repo), then imported under the same tag, so the same
# Dockerfiles build online and offline. Suites are built one after the other (2 cores).
set -euo pipefail

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=("${BASE_SUITE:-trixie}")

# The first URI of the machine's apt sources that serves "$1" (deb822 or one-line format).
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
        if (uris != "" && (want == "*" || index(suites, " " want " ") > 0)) { split(uris, u, " "); print u[1]; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v want="$want" '$1 == "deb" { o = ($2 ~ /^\[/) ? 1 : 0; if (want == "*" || $(3+o) == want) { print $(2+o); exit } }' "$f"
  done
}

# The machine's Debian archive: the mirror of its own suite serves every other suite too.
archive_uri() {
  local uri
  uri=$(sources_uri "$1" | head -n1)
  [ -n "$uri" ] || uri=$(sources_uri '*' | grep -v -- '-security' | head -n1)
  printf '%s' "$uri"
}

security_uri() {
  local uri
  uri=$(sources_uri "$1-security" | head -n1)
  [ -n "$uri" ] || uri=$(sources_uri '*' | grep -- '-security' | head -n1)
  printf '%s' "$uri"
}

build_suite() {
  local suite=$1 image="debian:$1-slim"
  if docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image present"
    return 0
  fi
  if timeout 60 docker pull "$image" >/dev/null 2>&1; then
    echo "base image $image pulled"
    return 0
  fi
  echo "base image $image absent and cannot be pulled: building it with debootstrap"
  local mirror security=
  mirror=${DEBIAN_MIRROR:-$(archive_uri "$suite")}
  if [ -z "$mirror" ]; then
    echo "error: no Debian mirror found in /etc/apt/sources*; set DEBIAN_MIRROR" >&2
    return 1
  fi
  local updates="$suite-updates"
  case "$suite" in
    sid|unstable) updates= ;;
    *) security=${DEBIAN_SECURITY_MIRROR:-$(security_uri "$suite")} ;;
  esac

  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi

  local root
  root=$(mktemp -d "/tmp/pgpool-sidecar-base-$suite.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" RETURN
  debootstrap --variant=minbase "$suite" "$root" "$mirror" >/dev/null

  {
    echo "Types: deb"
    echo "URIs: $mirror"
    echo "Suites: $suite${updates:+ $updates}"
    echo "Components: main"
    echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    if [ -n "$security" ]; then
      echo
      echo "Types: deb"
      echo "URIs: $security"
      echo "Suites: $suite-security"
      echo "Components: main"
      echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    fi
  } > "$root/etc/apt/sources.list.d/debian.sources"
  rm -f "$root/etc/apt/sources.list"
  if [ -z "$updates" ]; then
    # sid's Release file is valid for a week only; a mirror that serves a snapshot (as this
    # workplace's does) would make every later `apt-get update` fail. sid images are for tests.
    echo 'Acquire::Check-Valid-Until "false";' > "$root/etc/apt/apt.conf.d/99pgpool-sidecar-snapshot"
  fi
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*

  tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$image" >/dev/null
  echo "base image $image built from $mirror"
}

for suite in "${suites[@]}"; do
  build_suite "$suite"
done
