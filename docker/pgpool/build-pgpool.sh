#!/usr/bin/env bash
# Builds pgpool-II's server binary the way Debian builds its pgpool2 package (same source
# package, same configure flags), with the patches beside this script applied: each patch says
# what it fixes in pgpool's failover handling and what was measured. Writes <out>/pgpool and
# <out>/pgpool2.version (the source package's version, which the image checks against the
# installed pgpool2 package, whose PCP tools and libraries the binary runs beside).
# Usage: build-pgpool.sh <out-dir>   (inside a debian:trixie-slim build stage, as root)
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)

# Source entries beside the binary ones, whichever format the base image uses.
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] && sed -i 's/^Types: deb$/Types: deb deb-src/' "$f"
done
if [ -s /etc/apt/sources.list ]; then
  sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/pgpool-src.list
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
  dpkg-dev build-essential libpq-dev libssl-dev libpam0g-dev libldap-dev libmemcached-dev

mkdir -p /tmp/pgpool-src
cd /tmp/pgpool-src
apt-get source --only-source pgpool2
cd pgpool2-*/
for p in "$here"/*.patch; do
  echo "applying $(basename "$p")"
  patch -p1 --forward < "$p"
done
# debian/rules' configure line.
./configure --prefix=/usr --sysconfdir=/etc/pgpool2 --bindir=/usr/sbin \
  --includedir=/usr/include/pgpool2 --disable-rpath --with-ldap --with-openssl --with-pam \
  --with-memcached=/usr/include/libmemcached > /dev/null
make -C src -j"$(nproc)" > /dev/null
install -D -m 0755 src/pgpool "$out/pgpool"
dpkg-parsechangelog -S Version > "$out/pgpool2.version"
echo "built pgpool $(cat "$out/pgpool2.version") with $(ls "$here"/*.patch | wc -l) patches"
