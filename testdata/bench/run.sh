#!/usr/bin/env bash
# make bench: direct PostgreSQL vs PgBouncer (session pooling) vs tenantguard,
# side by side on one machine and one data set, with pgbench custom scripts;
# then tenantguard's memory per idle connection and while streaming a large
# result. Everything is set up here and torn down on exit, Ctrl-C or failure:
# a throwaway PostgreSQL cluster with the clinic data set, PgBouncer (installed
# with apt-get when missing), and tenantguard built from this checkout.
#
# Environment (defaults in brackets):
#   BENCH_PATIENTS    patients loaded into the clinic schema [500000]
#   BENCH_DURATION    seconds per pgbench run [15]
#   BENCH_CLIENTS     pgbench clients [8]; BENCH_THREADS pgbench threads [2]
#   BENCH_WARMUP      seconds per warm-up run [3]
#   BENCH_ROUNDS      rounds of direct, PgBouncer, tenantguard per row; the table
#                     shows the median of each column [1]
#   BENCH_WORKLOADS   [lookup page write]; BENCH_MODES [prepared simple]
#   BENCH_AUDIT_NULL  1 = also run a tenantguard with audit to /dev/null [1]
#   BENCH_IDLE_CONNS  idle connections for the memory test [1000]; 0 skips it
#   BENCH_STREAM_ROWS rows of the streamed result [1000000]; 0 skips it
#   BENCH_TG_SQL      auto | unscoped | scoped: SQL sent through tenantguard [auto:
#                     unscoped when enforcement is on, hand-scoped when it is a relay]
#   BENCH_OUT         file that also receives the results (markdown)
#   TENANTGUARD       tenantguard binary to use instead of building one
#   BENCH_TG_ENV      environment for tenantguard, e.g. 'GOMAXPROCS=1 GOGC=200'
#   BENCH_PG_CONF     extra postgresql.conf lines, e.g. 'log_statement = all'
#   BENCH_KEEP_LOGS   1 = keep the logs and audit files (the data directory goes)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/testdata/bench
patients=${BENCH_PATIENTS:-500000}
duration=${BENCH_DURATION:-15}
clients=${BENCH_CLIENTS:-8}
threads=${BENCH_THREADS:-2}
warmup=${BENCH_WARMUP:-3}
rounds=${BENCH_ROUNDS:-1}
workloads=${BENCH_WORKLOADS:-lookup page write}
modes=${BENCH_MODES:-prepared simple}
audit_null=${BENCH_AUDIT_NULL:-1}
idle_conns=${BENCH_IDLE_CONNS:-1000}
stream_rows=${BENCH_STREAM_ROWS:-1000000}
tg_sql=${BENCH_TG_SQL:-auto}
bench_out=${BENCH_OUT:-}
policy=$root/testdata/policy/clinic.yaml
tenant=7 # the scoped scripts write clinic_id = 7

die() { echo "bench: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

for v in patients duration clients threads warmup rounds idle_conns stream_rows audit_null; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[ "$patients" -ge 1000 ] || die "BENCH_PATIENTS must be at least 1000"
[ "$duration" -ge 1 ] && [ "$clients" -ge 1 ] && [ "$threads" -ge 1 ] && [ "$rounds" -ge 1 ] ||
  die "BENCH_DURATION, BENCH_CLIENTS, BENCH_THREADS and BENCH_ROUNDS must be positive"
case $tg_sql in auto | unscoped | scoped) ;; *) die "BENCH_TG_SQL must be auto, unscoped or scoped" ;; esac
for w in $workloads; do [ -f "$here/$w.sql" ] && [ -f "$here/${w}_scoped.sql" ] || die "unknown workload '$w'"; done
for m in $modes; do case $m in prepared | simple | extended) ;; *) die "unknown pgbench mode '$m'" ;; esac; done

# ---- privileges and tools ----------------------------------------------------
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run: $* (run as root, or install sudo)"
  fi
}

bindir=$(pg_config --bindir 2>/dev/null || true)
if [ ! -x "$bindir/initdb" ]; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
fi
[ -x "$bindir/initdb" ] || die "PostgreSQL server binaries not found; install them: apt-get install postgresql-15"
command -v pgbench >/dev/null || die "pgbench not found; install it: apt-get install postgresql-client-15"
command -v psql >/dev/null || die "psql not found; install it: apt-get install postgresql-client-15"

find_pgbouncer() { command -v pgbouncer 2>/dev/null || { [ -x /usr/sbin/pgbouncer ] && echo /usr/sbin/pgbouncer; } || true; }
pgbouncer_bin=$(find_pgbouncer)
if [ -z "$pgbouncer_bin" ]; then
  say "installing PgBouncer: apt-get install -y pgbouncer"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null ||
    { as_root apt-get update >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null; } ||
    die "apt-get install -y pgbouncer failed"
  # The package may start its own service; this benchmark runs its own instance.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet pgbouncer 2>/dev/null; then
    as_root systemctl stop pgbouncer || true
  fi
  pgbouncer_bin=$(find_pgbouncer)
  [ -n "$pgbouncer_bin" ] || die "pgbouncer not found after installing it"
fi

# ---- scratch space and cleanup -----------------------------------------------
work=$(mktemp -d /tmp/tenantguard-bench.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root needs the postgres OS user (it comes with the postgresql package)"
  chown postgres: "$work"
  chmod 755 "$work"
  as_pg=(runuser -u postgres --)
fi
pg_started=""
bg_pids=()

stop_pid() { # pid: TERM, a second TERM (tenantguard: close now), then KILL
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    [ "$i" = 10 ] && kill -TERM "$pid" 2>/dev/null
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for pid in "${bg_pids[@]}"; do stop_pid "$pid"; done
  if [ -f "$work/pgbouncer.pid" ]; then stop_pid "$(cat "$work/pgbouncer.pid")"; fi
  if [ -n "$pg_started" ]; then
    "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null 2>&1 ||
      "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -m immediate -w stop >/dev/null 2>&1
  fi
  if [ "$rc" = 130 ] || [ "$rc" = 143 ]; then
    say "interrupted"
  elif [ "$rc" != 0 ] && [ -z "${BENCH_KEEP_LOGS:-}" ]; then
    say "failed (exit $rc); rerun with BENCH_KEEP_LOGS=1 to keep the logs"
  fi
  if [ -n "${BENCH_KEEP_LOGS:-}" ]; then
    rm -rf "$work/data" "$work/bin"
    say "logs kept in $work"
  else
    rm -rf "$work"
  fi
  say "stopped; nothing left running."
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

used_ports=" "
free_port() {
  # Below the kernel's ephemeral range (32768 and up by default): a port
  # there can be the local end of some outgoing connection, which nothing
  # answers on, so the probe below finds it free and the bind then fails.
  local p lo
  lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % (lo > 22000 ? lo - 20000 : 2000)))
    case $used_ports in *" $p "*) continue ;; esac
    if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then used_ports+="$p "; echo "$p"; return; fi
  done
  die "no free port found"
}

wait_port() { # port pid name
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0
    if [ -n "$2" ] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

export PGSSLMODE=disable PGCONNECT_TIMEOUT=10
unset PGOPTIONS PGSERVICE PGPASSWORD PGUSER PGDATABASE PGHOST PGPORT

# The commit the binary is built from (HEAD may move while the benchmark runs);
# changes to test files do not count as uncommitted.
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$root" diff --quiet HEAD -- '*.go' ':!*_test.go' go.mod go.sum 2>/dev/null ||
  [ -n "$(git -C "$root" ls-files --others --exclude-standard -- '*.go' ':!*_test.go' 2>/dev/null)" ]; then
  commit="$commit (+ uncommitted changes)"
fi
[ -n "${TENANTGUARD:-}" ] && commit="$commit (binary: $TENANTGUARD)"

# ---- build ---------------------------------------------------------------------
mkdir -p "$work/bin"
if [ -n "${TENANTGUARD:-}" ]; then
  tg_bin=$TENANTGUARD
  [ -x "$tg_bin" ] || die "TENANTGUARD=$tg_bin is not executable"
else
  say "building tenantguard"
  (cd "$root" && go build -trimpath -o "$work/bin/tenantguard" ./cmd/tenantguard) || die "go build ./cmd/tenantguard failed"
  tg_bin=$work/bin/tenantguard
fi
if [ "$idle_conns" -gt 0 ]; then
  (cd "$root" && go build -o "$work/bin/idleconns" ./testdata/bench/idleconns) || die "go build ./testdata/bench/idleconns failed"
fi

# ---- PostgreSQL ------------------------------------------------------------------
pg_port=$(free_port)
say "starting PostgreSQL on 127.0.0.1:$pg_port (data in $work)"
"${as_pg[@]}" "$bindir/initdb" -D "$work/data" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync >/dev/null
cat >>"$work/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = ''
fsync = off
max_connections = $((idle_conns + clients * 4 + 100))
shared_buffers = 256MB
${BENCH_PG_CONF:-}
CONF
# setsid: servers run in their own session, so a Ctrl-C reaches only this
# script and pgbench, and the cleanup stops the servers in order.
"${as_pg[@]}" setsid "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null
pg_started=1

super="postgres://postgres@127.0.0.1:$pg_port"
psql -q -X -v ON_ERROR_STOP=1 "$super/postgres" -c "CREATE DATABASE clinic" \
  -c "CREATE ROLE app LOGIN" -c "CREATE ROLE migrator LOGIN"
say "loading the clinic schema (200 clinics, $patients patients)"
psql -q -X "$super/clinic" -v patients="$patients" -f "$root/testdata/demo/schema.sql"
psql -q -X -v ON_ERROR_STOP=1 "$super/clinic" \
  -c "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app, migrator" \
  -c "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app, migrator" \
  -c "VACUUM (ANALYZE)"

# Patients of clinic 7 are ids 6 + 200*n (schema.sql: clinic_id = 1 + (p % 200)).
maxn=$(((patients - 6) / 200))
check=$(psql -X -At "$super/clinic" -c "SELECT count(*), count(*) FILTER (WHERE id % 200 = 6), max(id) FROM patients WHERE clinic_id = $tenant")
[ "$check" = "$((maxn + 1))|$((maxn + 1))|$((6 + 200 * maxn))" ] ||
  die "clinic $tenant's patient ids are not 6 + 200*n for n in 0..$maxn (got count|matching|max = $check); schema.sql changed?"
clinic_rows=$((maxn + 1))

# ---- PgBouncer (session pooling) ---------------------------------------------------
pgb_port=$(free_port)
printf '"app" ""\n"migrator" ""\n' >"$work/userlist.txt"
cat >"$work/pgbouncer.ini" <<INI
[databases]
clinic = host=127.0.0.1 port=$pg_port dbname=clinic

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgb_port
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = session
default_pool_size = $((clients + 2))
max_client_conn = $((clients + 50))
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
INI
[ "$(id -u)" = 0 ] && chown postgres: "$work/userlist.txt" "$work/pgbouncer.ini"
"${as_pg[@]}" "$pgbouncer_bin" -d "$work/pgbouncer.ini" || die "pgbouncer did not start (see $work/pgbouncer.log)"
wait_port "$pgb_port" "" || die "pgbouncer does not listen on $pgb_port"
pgb_version=$("$pgbouncer_bin" --version | head -n1)

# ---- tenantguard -----------------------------------------------------------------------
# start_tg name audit-file: starts an instance, sets tg_port and tg_pid.
start_tg() {
  local name=$1 audit=$2
  tg_port=$(free_port)
  # shellcheck disable=SC2086 # BENCH_TG_ENV is a list of NAME=value words
  env ${BENCH_TG_ENV:-} setsid "$tg_bin" serve --listen "127.0.0.1:$tg_port" --upstream "$super/clinic?sslmode=disable" \
    --policy "$policy" --admin off --log-format json --drain-timeout 2s --audit.file "$audit" \
    >"$work/tenantguard-$name.log" 2>&1 &
  tg_pid=$!
  bg_pids+=("$tg_pid")
  wait_port "$tg_port" "$tg_pid" || { tail -n 20 "$work/tenantguard-$name.log" >&2; die "tenantguard ($name) did not start"; }
  # setsid execs in place (a background job is no group leader): $! is tenantguard.
  [ "$(readlink "/proc/$tg_pid/exe" 2>/dev/null)" = "$(readlink -f "$tg_bin")" ] ||
    [ "$(cat "/proc/$tg_pid/comm" 2>/dev/null)" = "$(basename "$tg_bin" | cut -c1-15)" ] ||
    die "cannot find tenantguard's process id"
  local url="postgres://app@127.0.0.1:$tg_port/clinic?options=-c%20app.clinic_id%3D$tenant"
  for _ in $(seq 1 50); do
    psql -X -At "$url" -c "SELECT 1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  psql -X -At "$url" -c "SELECT 1" >&2 || true
  die "tenantguard ($name) does not answer queries"
}

start_tg audit "$work/audit.jsonl"
tg_audit_port=$tg_port
tg_procs=$(sed -n 's/.*"msg":"tenantguard serving".*"procs":\([0-9]*\).*/\1/p' "$work/tenantguard-audit.log" | head -n1)
tg_procs=${tg_procs:-unknown}
tg_loops=$(sed -n 's/.*"msg":"tenantguard serving".*"event_loops":\([0-9]*\).*/\1/p' "$work/tenantguard-audit.log" | head -n1)
tg_loops=${tg_loops:-unknown}
case $(sed -n 's/.*"msg":"tenantguard serving".*"event_loops_block":\([a-z]*\).*/\1/p' "$work/tenantguard-audit.log" | head -n1) in
  true) tg_loops+=" (each waiting on its own thread)" ;;
  false) tg_loops+=" (parking on the runtime's poller)" ;;
esac
tg_audit_pid=$tg_pid
targets="direct pgbouncer tg"
if [ "$audit_null" = 1 ]; then
  start_tg nullaudit /dev/null
  tg_null_port=$tg_port
  targets="$targets tgnull"
fi

tg_url="postgres://app@127.0.0.1:$tg_audit_port/clinic?options=-c%20app.clinic_id%3D$tenant"
# Enforcement on: an unscoped count sees only clinic 7 (or is refused).
total=$(psql -X -At "$super/clinic" -c "SELECT count(*) FROM patients")
seen=$(psql -X -At "$tg_url" -c "SELECT count(*) FROM patients" 2>/dev/null || echo refused)
if [ "$seen" = "$total" ]; then enforcement=off; else enforcement=on; fi
say "tenantguard enforcement: $enforcement (unscoped count through it: $seen of $total, clinic $tenant has $clinic_rows)"
if [ "$tg_sql" = auto ]; then
  if [ "$enforcement" = on ]; then tg_sql=unscoped; else tg_sql=scoped; fi
fi
if [ "$enforcement" = off ]; then
  say "WARNING: tenantguard is a pure relay in this build; its column measures relay cost only"
fi
tg_suffix=""
[ "$tg_sql" = scoped ] && tg_suffix=_scoped

# Every script tenantguard will run must be accepted; psql shows the error if not.
for w in $workloads; do
  sql=$(grep -v -e '^--' -e '^\\' "$here/$w$tg_suffix.sql" | sed -e 's/:id/6/g' -e 's/:d/1/g')
  out=$(psql -X -At -v ON_ERROR_STOP=1 "$tg_url" -c "$sql" 2>&1) ||
    die "tenantguard refused the $w script ($w$tg_suffix.sql): $out"
done

# ---- pgbench -----------------------------------------------------------------------------
port_of() {
  case $1 in direct) echo "$pg_port" ;; pgbouncer) echo "$pgb_port" ;; tg) echo "$tg_audit_port" ;; tgnull) echo "$tg_null_port" ;; esac
}

# run_pgbench target mode workload seconds [round]: prints "tps latency_ms".
run_pgbench() {
  local target=$1 mode=$2 w=$3 secs=$4 round=${5:-warmup} script log
  local env=(env -u PGOPTIONS)
  script=$here/${w}_scoped.sql
  if [ "$target" = tg ] || [ "$target" = tgnull ]; then
    env=(env "PGOPTIONS=-c app.clinic_id=$tenant")
    script=$here/$w$tg_suffix.sql
  fi
  log=$work/pgbench-$target-$mode-$w-$round.log
  local rc=0
  "${env[@]}" pgbench -n -h 127.0.0.1 -p "$(port_of "$target")" -U app -c "$clients" -j "$threads" \
    -T "$secs" -M "$mode" -D maxn="$maxn" -f "$script" clinic >"$log" 2>&1 || rc=$?
  if [ "$rc" -gt 128 ]; then exit "$rc"; fi # interrupted
  if [ "$rc" != 0 ]; then
    tail -n 20 "$log" >&2
    die "pgbench failed: $target, -M $mode, $(basename "$script")"
  fi
  local tps lat
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$log")
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' "$log")
  [ -n "$tps" ] && [ -n "$lat" ] || { cat "$log" >&2; die "cannot read tps/latency from pgbench ($target, $mode, $w)"; }
  echo "$tps $lat"
}

if [ "$warmup" -gt 0 ]; then
  # Every path once per workload: caches, PgBouncer's server pool, Go's heap.
  say "warm-up: ${warmup}s per workload and path"
  for w in $workloads; do
    for t in $targets; do run_pgbench "$t" prepared "$w" "$warmup" >/dev/null; done
  done
fi
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# median field: median of column field (1 = tps, 2 = latency) of ';'-separated runs.
median() {
  echo "$1" | tr ';' '\n' | awk 'NF' | sort -g -k"$2" |
    awk -v f="$2" '{ v[NR] = $f } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

results=()
for w in $workloads; do
  for m in $modes; do
    declare -A runs=()
    for ((round = 1; round <= rounds; round++)); do
      for t in $targets; do
        r=$(run_pgbench "$t" "$m" "$w" "$duration" "$round")
        say "$w -M $m $t$([ "$rounds" -gt 1 ] && echo " (round $round/$rounds)"): tps latency_ms = $r"
        runs[$t]+="$r;"
      done
    done
    row="$w $m"
    for t in $targets; do row="$row $(median "${runs[$t]}" 1) $(median "${runs[$t]}" 2)"; done
    results+=("$row")
    unset runs
  done
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
mem_lines=("- After all pgbench runs, the tenantguard that served them (audit to a file) had an RSS of $(rss_kib "$tg_audit_pid") KiB.")

# ---- memory -------------------------------------------------------------------------------
# Fresh instances so earlier runs do not inflate the baselines.
if [ "$idle_conns" -gt 0 ]; then
  start_tg idle "$work/audit-idle.jsonl"
  say "memory: $idle_conns idle connections through tenantguard"
  idle=$("$work/bin/idleconns" -pid "$tg_pid" -n "$idle_conns" \
    -url "postgres://app@127.0.0.1:$tg_port/clinic?sslmode=disable&options=-c%20app.clinic_id%3D$tenant") ||
    die "idle connection test failed"
  read -r _ before idle_rss per closed <<<"$(echo "$idle" | tr ' ' '\n' | cut -d= -f2 | tr '\n' ' ')"
  mem_lines+=("- Idle connections: $idle_conns sessions (each ran one statement, then sat idle) took tenantguard's RSS from $before KiB to $idle_rss KiB: **$per KiB per idle connection** (RSS after they closed: $closed KiB).")
  stop_pid "$tg_pid"
fi
if [ "$stream_rows" -gt 0 ]; then
  start_tg stream "$work/audit-stream.jsonl"
  stream_sql="SELECT g, repeat('x', 100) FROM generate_series(1, $stream_rows) g"
  # app: enforced role (no tenant relation, so allowed); migrator: bypass role.
  for role in app migrator; do
    say "memory: streaming $stream_rows rows through tenantguard as $role"
    base=$(rss_kib "$tg_pid")
    start=$(date +%s.%N)
    psql -X -q -At -v ON_ERROR_STOP=1 "postgres://$role@127.0.0.1:$tg_port/clinic?options=-c%20app.clinic_id%3D$tenant" \
      -c "$stream_sql" >/dev/null 2>"$work/stream.err" &
    psql_pid=$!
    bg_pids+=("$psql_pid")
    peak=$base samples=0
    while kill -0 "$psql_pid" 2>/dev/null; do
      r=$(rss_kib "$tg_pid")
      [ "$r" -gt "$peak" ] && peak=$r
      samples=$((samples + 1))
      sleep 0.1
    done
    wait "$psql_pid" || { cat "$work/stream.err" >&2; die "streaming $stream_rows rows through tenantguard as $role failed"; }
    secs=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { print a - b }')
    after=$(rss_kib "$tg_pid")
    mem_lines+=("- Streaming $stream_rows rows (about $((stream_rows * 110 / 1048576)) MiB) as \`$role\` in $(printf '%.1f' "$secs") s: RSS $base KiB before, **peak $peak KiB** (+$((peak - base)) KiB; $samples samples, every 100 ms), $after KiB after.")
  done
  mem_lines+=("  (\`$stream_sql\`, psql -At to /dev/null; app is enforced, migrator is the policy's bypass role.)")
  stop_pid "$tg_pid"
fi

# ---- report -------------------------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
mem=$(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
pgv=$("$bindir/postgres" --version)

report() {
  echo "### tenantguard benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc) CPUs ($cpu), $mem RAM, $(uname -sr). $pgv, $pgb_version (session pooling), $(go version 2>/dev/null | cut -d' ' -f3)."
  echo "Commit $commit; tenantguard enforcement **$enforcement**, SQL through tenantguard: $tg_sql$( [ "$tg_sql" = unscoped ] && echo " (tenant set with PGOPTIONS='-c app.clinic_id=$tenant')"); audit to a file on disk; tenantguard procs (GOMAXPROCS): $tg_procs, event loops: $tg_loops${BENCH_TG_ENV:+ (environment: $BENCH_TG_ENV)}."
  echo "Load average (1/5/15 min) before the measured runs: $load_before; after: $load_after (other work on the machine skews the ratios)."
  echo "Data: 200 clinics, $patients patients. pgbench -n -c $clients -j $threads -T $duration per run; direct, PgBouncer and tenantguard back to back per row$([ "$rounds" -gt 1 ] && echo ", $rounds rounds, medians shown")."
  echo
  local hdr="| workload | mode | direct tps | PgBouncer tps | tenantguard tps | tg/PgB | tg/direct | direct ms | PgB ms | tg ms | PgB +ms | tg +ms |"
  local sep="|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  if [ "$audit_null" = 1 ]; then
    hdr="$hdr tg no-audit tps | tg no-audit ms |"
    sep="$sep---:|---:|"
  fi
  echo "$hdr"
  echo "$sep"
  for row in "${results[@]}"; do
    echo "$row" | awk '{
      w=$1; m=$2; dt=$3; dl=$4; bt=$5; bl=$6; tt=$7; tl=$8
      printf "| %s | %s | %.0f | %.0f | %.0f | %.2f | %.2f | %.3f | %.3f | %.3f | %+.3f | %+.3f |", w, m, dt, bt, tt, tt/bt, tt/dt, dl, bl, tl, bl-dl, tl-dl
      if (NF >= 10) printf " %.0f | %.3f |", $9, $10
      printf "\n"
    }'
  done
  echo
  echo "tg/PgB and tg/direct are throughput ratios (target tg/PgB >= 1.00); +ms is average latency added over direct (target: tg +ms <= PgB +ms)."
  if [ "${#mem_lines[@]}" -gt 0 ]; then
    echo
    echo "Memory (tenantguard VmRSS; the idle and streaming tests each start a fresh instance):"
    echo
    printf '%s\n' "${mem_lines[@]}"
  fi
}

echo >&2
if [ -n "$bench_out" ]; then
  report | tee "$bench_out"
else
  report
fi
