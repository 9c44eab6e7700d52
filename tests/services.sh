#!/usr/bin/env bash
# Start (or stop) the PostgreSQL and Redis servers the tests use, on loopback, with throwaway data.
#   bash tests/services.sh start|stop|env
# Ports: ROUTEYARD_TEST_PG_PORT (55432), ROUTEYARD_TEST_REDIS_PORT (56379). Data: /tmp/routeyard-test-services.
set -euo pipefail

PG_PORT=${ROUTEYARD_TEST_PG_PORT:-55432}
REDIS_PORT=${ROUTEYARD_TEST_REDIS_PORT:-56379}
ROOT=${ROUTEYARD_TEST_SERVICES_DIR:-/tmp/routeyard-test-services}
PGDATA="$ROOT/pg"

die() { echo "tests/services.sh: $*" >&2; exit 1; }

pg_bin() {
  for d in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin /usr/local/bin /usr/bin; do
    [ -n "$d" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  die "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them, e.g. 'apt-get install -y postgresql'."
}

# initdb refuses to run as root: run the server as the 'postgres' user then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_pg() {
  local bin; bin=$(pg_bin)
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then echo "postgres already up on $PG_PORT"; return; fi
  mkdir -p "$ROOT"; chmod 755 "$ROOT"
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    rm -rf "$PGDATA"; mkdir -p "$PGDATA"
    [ "$(id -u)" = 0 ] && chown postgres "$PGDATA"
    as_pg "$bin/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 >/dev/null \
      || die "initdb failed for $PGDATA"
  fi
  as_pg "$bin/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 \
    -o "-p $PG_PORT -k $PGDATA -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
    || die "postgres did not start; see $PGDATA/server.log"
  echo "postgres up on 127.0.0.1:$PG_PORT"
}

start_redis() {
  if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing redis-server with apt-get"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null \
        || die "could not install redis-server with apt-get; install it and run again"
    else
      die "redis-server not found; install it (e.g. 'sudo apt-get install -y redis-server') and run again"
    fi
  fi
  if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then echo "redis already up on $REDIS_PORT"; return; fi
  mkdir -p "$ROOT/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --dir "$ROOT/redis" \
    --logfile "$ROOT/redis/redis.log" --pidfile "$ROOT/redis/redis.pid" --save "" --appendonly no \
    || die "redis-server did not start; see $ROOT/redis/redis.log"
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null || die "redis not answering on $REDIS_PORT"
  echo "redis up on 127.0.0.1:$REDIS_PORT"
}

case "${1:-start}" in
  start) start_pg; start_redis ;;
  stop)
    as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true ;;
  env)
    echo "export ROUTEYARD_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/postgres"
    echo "export ROUTEYARD_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0" ;;
  *) die "usage: $0 start|stop|env" ;;
esac
