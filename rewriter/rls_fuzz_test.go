package rewriter

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

// rlsFuzzFixture is rlsFixture with policies that a session can turn off
// for itself (SET LOCAL app.rls_off = on): the fuzz target runs a statement
// under RLS and its rewrite without RLS as the same role in the same
// session, so that whatever depends on the role or the session
// (current_user, privileges, the backend's pid) is the same in both.
var rlsFuzzFixture = strings.ReplaceAll(rlsFixture,
	"clinic_id = current_setting('app.clinic_id')::int)",
	"current_setting('app.rls_off', true) = 'on' OR clinic_id = current_setting('app.clinic_id')::int)")

// FuzzRLSDifferential: a statement the rewriter accepts, run rewritten
// without RLS, returns and changes (rolled back) exactly what it returns and
// changes run as written under RLS, or fails where RLS fails. Statements
// whose results depend on the moment or chance (now(), random(), system
// columns, LIMIT without a total order) or on the server's state are not
// compared, nor recursive ones (the fuzzer soon finds endless ones). The
// seeds are the RLS differential's corpus; statements run for 200 ms at most.
func FuzzRLSDifferential(f *testing.F) {
	for _, q := range rlsReads {
		f.Add(q, uint8(1))
	}
	for _, q := range rlsWrites {
		f.Add(q, uint8(2))
	}
	var (
		once sync.Once
		conn *pgx.Conn
		r    *Rewriter
	)
	f.Fuzz(func(t *testing.T, q string, tb uint8) {
		once.Do(func() {
			c := pgtest.Shared(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			db, err := c.CreateDatabase(ctx, "rewriter_rls_fuzz")
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Exec(ctx, db, rlsFuzzFixture); err != nil {
				t.Fatal(err)
			}
			conn, err = pgx.Connect(ctx, c.URL(pgtest.AppUser, "", db)+"&options=-c%20statement_timeout%3D200")
			if err != nil {
				t.Fatal(err)
			}
			r = New(rlsPolicy(), nil)
		})
		if conn == nil {
			t.Skip("no connection")
		}
		if len(q) > 2000 || !repeatable(q) {
			return
		}
		tenant := 1 + int(tb%3)
		ts := strconv.Itoa(tenant)
		res := r.Decide(q, Session{Tenant: ts, HasTenant: true})
		if len(res.Statements) != 1 {
			return
		}
		d := res.Statements[0]
		switch d.Kind {
		case "select", "insert", "update", "delete", "merge":
		default:
			return
		}
		if d.Verdict == VerdictRejected || d.TenantEffect != nil || d.SQL == "" {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := conn.Exec(ctx, "SET app.clinic_id = "+ts); err != nil {
			t.Fatal(err)
		}
		want, err := rlsRunOff(ctx, conn, q, false)
		if err != nil {
			return // RLS (or the server) refuses it
		}
		got, err := rlsRunOff(ctx, conn, d.SQL, true)
		if err != nil {
			if strings.Contains(err.Error(), "57014") {
				return // timed out
			}
			t.Fatalf("tenant %d: RLS runs it, the rewrite fails: %v\n in:  %s\n out: %s", tenant, err, q, d.SQL)
		}
		if got != want {
			t.Fatalf("tenant %d: the rewrite differs from RLS\n in:  %s\n out: %s\nRLS:\n%s\nrewritten:\n%s", tenant, q, d.SQL, want, got)
		}
	})
}

// rlsRunOff is rlsRun in a transaction of its own, with RLS turned off for
// it when off.
func rlsRunOff(ctx context.Context, conn *pgx.Conn, q string, off bool) (string, error) {
	if off {
		if _, err := conn.Exec(ctx, "SET app.rls_off = on"); err != nil {
			return "", err
		}
		defer func() { _, _ = conn.Exec(context.Background(), "RESET app.rls_off") }()
	}
	return rlsRun(ctx, conn, true, q)
}

// repeatable reports whether q's results can be compared run to run: no
// clock, chance, system column, statistics or unordered cut.
func repeatable(q string) bool {
	l := strings.ToLower(q)
	for _, w := range []string{"now", "time", "random", "uuid", "xact", "txid", "xmin", "xmax", "cmin", "cmax", "ctid",
		"pg_", "stat", "recursive", "limit", "fetch", "offset", "tablesample", "rls_off", "agg", "distinct", "sleep", "setseed", "age(",
		"nextval", "currval", "lastval", "setval", "over", "row_number", "first_value", "last_value", "nth_value", "lag", "lead"} {
		if strings.Contains(l, w) {
			return false
		}
	}
	return true
}
