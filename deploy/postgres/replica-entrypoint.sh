#!/bin/sh
# A streaming replica: clone the primary on first start (pg_basebackup -R writes the
# standby configuration), then run as a hot standby.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h postgres-primary -U "$POSTGRES_USER"; do sleep 1; done
  export PGPASSWORD="$REPLICATION_PASSWORD"
  pg_basebackup -h postgres-primary -U replicator -D "$PGDATA" -R -X stream -P
  chmod 0700 "$PGDATA"
fi
exec docker-entrypoint.sh postgres -c hot_standby=on -c hot_standby_feedback=on
