#!/usr/bin/env bash
# make demo: a throwaway PostgreSQL with the clinic sample schema, and
# tenantguard in front of it with the sample policy. Ctrl-C stops everything
# and removes the cluster.
#
# Environment: PATIENTS (default 50000), LISTEN (default 127.0.0.1:6432),
# ADMIN (default 127.0.0.1:9187), TENANTGUARD (binary, default bin/tenantguard).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
patients=${PATIENTS:-50000}
listen=${LISTEN:-127.0.0.1:6432}
admin=${ADMIN:-127.0.0.1:9187}
bin=${TENANTGUARD:-$root/bin/tenantguard}
policy=$root/testdata/policy/clinic.yaml

bindir=$(pg_config --bindir 2>/dev/null || true)
if [ ! -x "$bindir/initdb" ]; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
fi
if [ ! -x "$bindir/initdb" ]; then
  echo "demo: PostgreSQL server binaries not found; install them: apt-get install postgresql-15" >&2
  exit 2
fi

free_port() {
  # Below the ephemeral range: a port there can be the local end of an
  # outgoing connection, free to the probe below and not to a bind.
  local p lo
  lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % (lo > 22000 ? lo - 20000 : 2000)))
    if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "$p"; return; fi
  done
  echo "demo: no free port found" >&2; exit 1
}

work=$(mktemp -d /tmp/tenantguard-demo.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$work"
  as_pg=(runuser -u postgres --)
fi
port=$(free_port)
tg_pid=""

cleanup() {
  trap - EXIT INT TERM
  [ -n "$tg_pid" ] && kill "$tg_pid" 2>/dev/null && wait "$tg_pid" 2>/dev/null || true
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$work"
  echo "demo: stopped; nothing left running."
}
trap cleanup EXIT INT TERM

echo "demo: starting PostgreSQL on 127.0.0.1:$port (data in $work)"
"${as_pg[@]}" "$bindir/initdb" -D "$work/data" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync >/dev/null
cat >>"$work/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = ''
fsync = off
CONF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null

upstream="postgres://postgres@127.0.0.1:$port/clinic?sslmode=disable"
psql -q -X "postgres://postgres@127.0.0.1:$port/postgres" -c "CREATE DATABASE clinic" -c "CREATE ROLE app LOGIN" -c "CREATE ROLE migrator LOGIN"
echo "demo: loading the clinic schema (200 clinics, $patients patients)"
psql -q -X "$upstream" -v patients="$patients" -f "$root/testdata/demo/schema.sql"
psql -q -X "$upstream" -c "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app, migrator" \
  -c "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app, migrator"

"$bin" serve --listen "$listen" --admin "$admin" --upstream "$upstream" --policy "$policy" --log-format console &
tg_pid=$!
for _ in $(seq 1 50); do
  (exec 3<>/dev/tcp/${listen%:*}/${listen##*:}) 2>/dev/null && break
  kill -0 "$tg_pid" 2>/dev/null || { echo "demo: tenantguard did not start" >&2; exit 1; }
  sleep 0.2
done

cat <<MSG

tenantguard is listening on $listen, in front of the clinic database.
Connect as the application, for clinic 7:

  psql "postgres://app@$listen/clinic?options=-c%20app.clinic_id%3D7"

then try:
  SELECT id, full_name FROM patients ORDER BY id LIMIT 5;   -- only clinic 7's patients
  SELECT count(*) FROM patients;                             -- counts clinic 7 only
  SELECT * FROM patients;                                    -- refused: unbounded (54000)
  SET app.clinic_id = 8;                                     -- switch tenant

Metrics: http://$admin/metrics   Health: http://$admin/healthz
Press Ctrl-C to stop everything.
MSG
wait "$tg_pid"
