#!/usr/bin/env bash
# A PostgreSQL server on loopback, for MLflow's tracking store in tests and for trying a multi-node setup.
#
#   scripts/postgres_server.sh install   # Debian's postgresql package (root)
#   scripts/postgres_server.sh start     # a few seconds; prints the O2O_POSTGRES to export
#   scripts/postgres_server.sh stop      # stops the server 'start' started
#
# Local socket connections are trusted (the admin commands here); TCP needs a password.
# The cluster lives under $O2O_PG_DIR (default /tmp/o2o-pg), listens on 127.0.0.1:$O2O_PG_PORT (default 54329)
# and has a role o2o (password o2o) that may create databases: O2O_POSTGRES=postgresql://o2o:o2o@127.0.0.1:PORT
# names the server, a database is added after it (postgresql://o2o:o2o@127.0.0.1:PORT/mlflow).
set -euo pipefail

DIR=${O2O_PG_DIR:-/tmp/o2o-pg}
PORT=${O2O_PG_PORT:-54329}
log() { echo "[postgres_server] $*" >&2; }

bindir() {  # the newest installed server's binaries
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] || { log "PostgreSQL is not installed: run '$0 install' (root)"; exit 1; }
  echo "$found"
}

as_postgres() {  # initdb and the server refuse to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bin; bin=$(bindir)
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR"
  if [ ! -f "$DIR/data/PG_VERSION" ]; then
    as_postgres "$bin/initdb" -D "$DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >"$DIR/initdb.log" 2>&1 \
      || { log "initdb failed"; tail -n 20 "$DIR/initdb.log" >&2; return 1; }
  fi
  as_postgres "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c max_connections=200" start >/dev/null
  psql -h "$DIR" -p "$PORT" -U postgres -qAt -c "SELECT 1 FROM pg_roles WHERE rolname = 'o2o'" | grep -q 1 \
    || psql -h "$DIR" -p "$PORT" -U postgres -q -c "CREATE ROLE o2o LOGIN CREATEDB PASSWORD 'o2o'"
  echo "export O2O_POSTGRES=postgresql://o2o:o2o@127.0.0.1:$PORT" >"$DIR/env"
  log "server up: export O2O_POSTGRES=postgresql://o2o:o2o@127.0.0.1:$PORT"
}

stop() {
  [ -f "$DIR/data/postmaster.pid" ] || { log "no server running in $DIR"; return 0; }
  as_postgres "$(bindir)/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null && log "stopped the server in $DIR"
}

case "${1:-}" in
  install)
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
