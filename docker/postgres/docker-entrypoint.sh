#!/usr/bin/env bash
# Entrypoint of the pgpool-sidecar PostgreSQL node image.
#
# Behaves like the official `postgres` image's entrypoint, so the two images are interchangeable:
#   * `postgres ...` (the default command; a first argument starting with `-` means `postgres -...`):
#     as root, prepare PGDATA and the socket directory, then re-run this script as `postgres`;
#     if "$PGDATA/PG_VERSION" is missing, initdb, run /docker-entrypoint-initdb.d/* against a
#     temporary socket-only server, stop it; finally exec the server.
#   * anything else (`bash -c ...`, `pg_basebackup ...`): exec'd as is, as the calling user.
#     The sidecar's one-off job containers (rewind, rebuild) rely on this.
#
# Variables (each may instead be read from a file named by the same variable + `_FILE`):
#   POSTGRES_PASSWORD            superuser password (required unless POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER                superuser name (default: postgres)
#   POSTGRES_DB                  database created at init (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS         extra initdb arguments, split on whitespace
#   POSTGRES_INITDB_WALDIR       optional separate WAL directory
#   POSTGRES_HOST_AUTH_METHOD    auth method for TCP connections (default: scram-sha-256)
set -Eeo pipefail

log() { printf '%s [docker-entrypoint] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# resolve_var NAME [DEFAULT]: export NAME from $NAME or from the file named by $NAME_FILE.
resolve_var() {
  local name=$1 default=${2-}
  local file_name="${name}_FILE"
  local value=${!name-} file=${!file_name-}
  if [ -n "$value" ] && [ -n "$file" ]; then
    die "both $name and $file_name are set; set only one of them"
  fi
  if [ -n "$file" ]; then
    [ -r "$file" ] || die "$file_name names '$file', which is not readable"
    value=$(<"$file")
  fi
  if [ -z "$value" ]; then
    value=$default
  fi
  export "$name=$value"
  unset "$file_name"
}

setup_env() {
  : "${PGDATA:=/var/lib/postgresql/data}"
  export PGDATA
  resolve_var POSTGRES_PASSWORD
  resolve_var POSTGRES_USER postgres
  resolve_var POSTGRES_DB "$POSTGRES_USER"
  resolve_var POSTGRES_INITDB_ARGS
  resolve_var POSTGRES_INITDB_WALDIR
  resolve_var POSTGRES_HOST_AUTH_METHOD scram-sha-256
  # Read here as well (the initdb.d script also understands the _FILE forms), so that a secret
  # file readable only by root is read before the privileges are dropped.
  if [ -n "${POSTGRES_REPLICATION_USER-}${POSTGRES_REPLICATION_USER_FILE-}" ]; then
    resolve_var POSTGRES_REPLICATION_USER
  fi
  if [ -n "${POSTGRES_REPLICATION_PASSWORD-}${POSTGRES_REPLICATION_PASSWORD_FILE-}" ]; then
    resolve_var POSTGRES_REPLICATION_PASSWORD
  fi
}

# Root part: own the data and socket directories, then run this script again as `postgres`.
prepare_as_root_and_drop() {
  mkdir -p "$PGDATA"
  chmod 0700 "$PGDATA" 2>/dev/null || :
  find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
  if [ -n "$POSTGRES_INITDB_WALDIR" ]; then
    mkdir -p "$POSTGRES_INITDB_WALDIR"
    find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 0700 "$POSTGRES_INITDB_WALDIR" 2>/dev/null || :
  fi
  mkdir -p /var/run/postgresql
  chown postgres:postgres /var/run/postgresql
  chmod 3777 /var/run/postgresql
  local self home
  self=$(readlink -f "${BASH_SOURCE[0]}")
  home=$(getent passwd postgres | cut -d: -f6)
  export HOME=${home:-/var/lib/postgresql}
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$self" "$@"
}

# psql against the temporary server: unix socket only, stop on the first error.
run_sql() {
  PGHOST='' PGHOSTADDR='' psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password \
    --username "$POSTGRES_USER" "$@"
}

init_cluster() {
  if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
    die "the database is not initialised and no superuser password is set:" \
      "set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE), or POSTGRES_HOST_AUTH_METHOD=trust" \
      "to allow every connection without a password (not recommended)"
  fi
  if ! id -un >/dev/null 2>&1; then
    die "uid $(id -u) has no entry in /etc/passwd; initdb needs one (run as root or as postgres)"
  fi

  log "initialising a new cluster in $PGDATA"
  # No --auth flags, as in the official image: initdb's own pg_hba.conf (trust on the socket and
  # loopback), then one line below for every other address.
  local -a args extra
  args=(--username="$POSTGRES_USER")
  if [ -n "$POSTGRES_INITDB_WALDIR" ]; then
    args+=(--waldir="$POSTGRES_INITDB_WALDIR")
  fi
  read -r -a extra <<<"$POSTGRES_INITDB_ARGS"
  if [ -n "$POSTGRES_PASSWORD" ]; then
    initdb "${args[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") "${extra[@]}"
  else
    initdb "${args[@]}" "${extra[@]}"
  fi

  {
    echo
    echo "# added by docker-entrypoint.sh"
    echo "listen_addresses = '*'"
  } >>"$PGDATA/postgresql.conf"
  {
    echo
    echo "# added by docker-entrypoint.sh"
    echo "host all all all $POSTGRES_HOST_AUTH_METHOD"
  } >>"$PGDATA/pg_hba.conf"

  # Only needed when POSTGRES_INITDB_ARGS made local connections ask for a password.
  export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"

  log "starting a temporary server (unix socket only) for the init scripts"
  pg_ctl -D "$PGDATA" -w -t 60 -o "-c listen_addresses='' -p ${PGPORT:-5432}" start

  if [ "$POSTGRES_DB" != postgres ]; then
    log "creating database $POSTGRES_DB"
    run_sql --dbname postgres --set=db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
  fi

  local f
  shopt -s nullglob
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh)
        if [ -x "$f" ]; then
          log "running $f"
          "$f"
        else
          log "sourcing $f"
          # shellcheck disable=SC1090
          . "$f"
        fi
        ;;
      *.sql)
        log "running $f"
        run_sql --dbname "$POSTGRES_DB" -f "$f"
        ;;
      *.sql.gz)
        log "running $f"
        gzip -dc "$f" | run_sql --dbname "$POSTGRES_DB"
        ;;
      *)
        log "ignoring $f"
        ;;
    esac
  done
  shopt -u nullglob

  log "stopping the temporary server"
  pg_ctl -D "$PGDATA" -w -t 120 -m fast stop
  unset PGPASSWORD
  log "init done"
}

main() {
  if [ "$#" -eq 0 ] || [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
  fi
  if [ "$1" != postgres ]; then
    exec "$@"
  fi

  setup_env

  local arg help=
  for arg in "$@"; do
    case "$arg" in
      -'?' | --help | --describe-config | -V | --version) help=1 ;;
    esac
  done

  if [ "$(id -u)" = 0 ]; then
    if [ -n "$help" ]; then
      exec setpriv --reuid=postgres --regid=postgres --init-groups "$@"
    fi
    prepare_as_root_and_drop "$@"
  fi

  if [ -z "$help" ]; then
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA" 2>/dev/null || :
    if [ -s "$PGDATA/PG_VERSION" ]; then
      log "PostgreSQL data found in $PGDATA (version $(<"$PGDATA/PG_VERSION")): skipping init"
    else
      init_cluster
    fi
  fi

  # The server does not need the secrets in its environment.
  unset POSTGRES_PASSWORD POSTGRES_REPLICATION_PASSWORD
  exec "$@"
}

main "$@"
