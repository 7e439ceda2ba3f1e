#!/usr/bin/env bash
# Prepares a freshly initialised node for streaming replication, pg_rewind and pg_basebackup.
#
# Runs once, from /docker-entrypoint-initdb.d/, while the entrypoint's temporary (unix-socket only)
# server is up. Works in this project's node image and when mounted into the official `postgres`
# image, executed or sourced (so it never calls `exit` and keeps its names to itself).
#
#   POSTGRES_REPLICATION_USER[_FILE], POSTGRES_REPLICATION_PASSWORD[_FILE]
#       when both are set and the user is not POSTGRES_USER, that role is created (or updated)
#       WITH REPLICATION LOGIN, and may run the functions pg_rewind calls on its source server.

pgpool_sidecar_repl_value() {
  local name=$1
  local file_name="${name}_FILE"
  local value=${!name-} file=${!file_name-}
  if [ -n "$value" ] && [ -n "$file" ]; then
    echo "10-replication.sh: both $name and $file_name are set; set only one of them" >&2
    return 1
  fi
  if [ -n "$file" ]; then
    value=$(<"$file") || return 1
  fi
  printf '%s' "$value"
}

pgpool_sidecar_repl_setup() {
  local pgdata=${PGDATA:?PGDATA is not set}
  local superuser=${POSTGRES_USER:-postgres}
  local auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  local marker='# added by 10-replication.sh'
  local repl_user repl_password

  repl_user=$(pgpool_sidecar_repl_value POSTGRES_REPLICATION_USER) || return 1
  repl_password=$(pgpool_sidecar_repl_value POSTGRES_REPLICATION_PASSWORD) || return 1

  if ! grep -qxF "$marker" "$pgdata/pg_hba.conf"; then
    printf '\n%s\nhost replication all all %s\n' "$marker" "$auth" >>"$pgdata/pg_hba.conf" || return 1
  fi
  if ! grep -qxF "$marker" "$pgdata/postgresql.conf"; then
    # wal_log_hints: pg_rewind works without data checksums. max_connections: pgpool's children
    # and pools need more than the default 100; set here rather than with `-c` on the command
    # line, where every reload would log it as an error in the file. The others take effect when
    # the entrypoint starts the real server after the init scripts.
    cat >>"$pgdata/postgresql.conf" <<CONF || return 1

$marker
wal_level = replica
wal_log_hints = on
max_wal_senders = 16
max_replication_slots = 16
hot_standby = on
wal_keep_size = '256MB'
max_connections = 200
CONF
  fi
  echo "10-replication.sh: replication settings added to $pgdata" >&2

  if [ -z "$repl_user" ] || [ -z "$repl_password" ]; then
    echo "10-replication.sh: POSTGRES_REPLICATION_USER/PASSWORD not both set: no replication role created" >&2
    return 0
  fi
  if [ "$repl_user" = "$superuser" ]; then
    echo "10-replication.sh: replication user is the superuser $superuser: no role created" >&2
    return 0
  fi

  # Names and password travel as psql variables (:"ident", :'literal'), never spliced into SQL.
  PGHOST='' PGHOSTADDR='' psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password \
    --username "$superuser" --dbname postgres \
    --set=repl_user="$repl_user" --set=repl_password="$repl_password" <<'SQL' || return 1
SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'repl_user') AS repl_user_exists \gset
\if :repl_user_exists
ALTER ROLE :"repl_user" WITH REPLICATION LOGIN PASSWORD :'repl_password';
\else
CREATE ROLE :"repl_user" WITH REPLICATION LOGIN PASSWORD :'repl_password';
\endif
GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO :"repl_user";
GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO :"repl_user";
GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO :"repl_user";
GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO :"repl_user";
SQL
  echo "10-replication.sh: replication role $repl_user ready" >&2
}

if (return 0 2>/dev/null); then
  # Sourced by an entrypoint: report failure to it without leaving our names behind.
  pgpool_sidecar_repl_rc=0
  pgpool_sidecar_repl_setup || pgpool_sidecar_repl_rc=$?
  unset -f pgpool_sidecar_repl_value pgpool_sidecar_repl_setup
  if [ "$pgpool_sidecar_repl_rc" -ne 0 ]; then
    unset pgpool_sidecar_repl_rc
    return 1
  fi
  unset pgpool_sidecar_repl_rc
else
  set -Eeuo pipefail
  pgpool_sidecar_repl_setup
fi
