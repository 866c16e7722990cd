#!/usr/bin/env bash
# Runs pgx's own test suite (the pgx module source in the Go module cache)
# against a throwaway PostgreSQL cluster directly and then through the
# proxy, and compares the results. Needs the PostgreSQL server binaries and
# the pgx module in the module cache (it is a dependency of this module).
#
#   proxy/testdata/pgx-suite.sh [report-file]
#
# Environment: TENANTGUARD_PGX_PACKAGES overrides the packages
# (default ". ./pgconn ./pgtype ./pgxpool ./stdlib"); TENANTGUARD_PGX_SUITE_PLAIN=1
# runs the ordinary connection strings in plain TCP on both legs (default: TLS).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
report="${1:-${TMPDIR:-/tmp}/tenantguard-pgx-suite.txt}"
cd "$root"
TENANTGUARD_PGX_SUITE=1 TENANTGUARD_PGX_SUITE_REPORT="$report" \
  go test ./proxy/ -run '^TestPgxSuite$' -count=1 -timeout 90m -v
echo "report: $report"
