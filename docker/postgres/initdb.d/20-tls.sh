#!/usr/bin/env bash
# Makes a freshly initialised node offer TLS: a self-signed server certificate and key in PGDATA
# and `ssl = on`. Clients with libpq's default sslmode=prefer (pgpool, standbys streaming from
# this node) then encrypt without any setting of theirs; standbys built with pg_basebackup or
# pg_rewind get the same files with the rest of PGDATA.
#
# Runs once, from /docker-entrypoint-initdb.d/, like 10-replication.sh (executed or sourced, so
# it never calls `exit`). Replace server.crt/server.key in PGDATA and reload to use a real
# certificate. Only in the node flavour: the official image offers no TLS by itself.

pgpool_sidecar_tls_setup() {
  local pgdata=${PGDATA:?PGDATA is not set}
  local marker='# added by 20-tls.sh'
  if [ ! -e "$pgdata/server.key" ]; then
    # The key is created 0600 by the umask, never readable by others even while being written.
    (umask 077 && openssl req -new -x509 -nodes -days 3650 -newkey ec \
      -pkeyopt ec_paramgen_curve:prime256v1 -subj "/CN=$(hostname)" \
      -keyout "$pgdata/server.key" -out "$pgdata/server.crt" 2>/dev/null) || return 1
  fi
  if ! grep -qxF "$marker" "$pgdata/postgresql.conf"; then
    printf '\n%s\nssl = on\n' "$marker" >>"$pgdata/postgresql.conf" || return 1
  fi
  echo "20-tls.sh: TLS on with a self-signed certificate in $pgdata" >&2
}

if (return 0 2>/dev/null); then
  pgpool_sidecar_tls_rc=0
  pgpool_sidecar_tls_setup || pgpool_sidecar_tls_rc=$?
  unset -f pgpool_sidecar_tls_setup
  if [ "$pgpool_sidecar_tls_rc" -ne 0 ]; then
    unset pgpool_sidecar_tls_rc
    return 1
  fi
  unset pgpool_sidecar_tls_rc
else
  set -Eeuo pipefail
  pgpool_sidecar_tls_setup
fi
