package rewriter_test

import (
	"context"
	"io"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/admin"
	"github.com/tenantguard/tenantguard/proxy/audit"
	"github.com/tenantguard/tenantguard/proxy/catalog"
	"github.com/tenantguard/tenantguard/proxy/guard"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
	"github.com/tenantguard/tenantguard/rewriter"
)

const rlsProxyPolicy = `
version: 1
mode: enforce
tenant:
  column: clinic_id
  type: integer
  setting: app.clinic_id
tables: [patients, invoices, soap_notes, orders, orders_a, orders_b]
limits:
  max_rows: 100000
  unbounded: cap
roles:
  postgres:
    functions: [tg_dump] # the test's view of every row after a write
`

// TestRLSDifferentialThroughProxy is TestRLSDifferentialRandom end to end:
// the generated statements go through tenantguard (the guard, its caches,
// the literal path and the simple-protocol statements' prepared forms) to
// the server, as the superuser (which RLS does not restrict: what it sees
// is tenantguard's doing), over pgx in the simple, extended and
// describe-exec modes, in sessions pinned to their tenant and in one that
// SETs it. Each must return (and for a write change, rolled back) what RLS
// returns for app_user with the same tenant. TENANTGUARD_RLS_RANDOM and
// TENANTGUARD_RLS_SEED as for TestRLSDifferentialRandom (default 200).
func TestRLSDifferentialThroughProxy(t *testing.T) {
	n, seed := rewriter.RLSRandomArgs(400)
	n /= 2
	c := pgtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	db, err := c.CreateDatabase(ctx, "rewriter_rls_proxy")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, db, rewriter.RLSFixture); err != nil {
		t.Fatal(err)
	}
	addr, metrics := serveRLSProxy(t, c, db, rlsProxyPolicy)
	// verify: the hand-scoped statements through a proxy that adds nothing
	vaddr, _ := serveRLSProxy(t, c, db, "strategy: verify\n"+rlsProxyPolicy)

	app, err := pgx.Connect(ctx, c.URL(pgtest.AppUser, "", db))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	through := func(addr, tenant string) *pgx.Conn {
		u := url.URL{Scheme: "postgres", Host: addr, Path: "/" + db, User: url.User(pgtest.SuperUser)}
		q := url.Values{"sslmode": {"disable"}}
		if tenant != "" {
			q.Set("app.clinic_id", tenant)
		}
		u.RawQuery = q.Encode()
		conn, err := pgx.Connect(ctx, u.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	pinned := map[int]*pgx.Conn{1: through(addr, "1"), 2: through(addr, "2"), 3: through(addr, "3")}
	setter := through(addr, "")
	vpinned := map[int]*pgx.Conn{1: through(vaddr, "1"), 2: through(vaddr, "2"), 3: through(vaddr, "3")}
	vsetter := through(vaddr, "")

	modes := []struct {
		name string
		mode pgx.QueryExecMode
	}{
		{"simple", pgx.QueryExecModeSimpleProtocol},
		{"extended", pgx.QueryExecModeCacheStatement},
		{"describe", pgx.QueryExecModeDescribeExec},
	}
	gen := rewriter.NewRLSGen(seed)
	var compared, refused, invalid, differs, verified, withParams, multi int
	prevRead := ""
	for i := 0; i < n; i++ {
		tenant := 1 + i%3
		ts := strconv.Itoa(tenant)
		q, write := gen.Next(tenant, i%2 == 1) // every other one written hand-scoped
		for _, conn := range []*pgx.Conn{app, setter, vsetter} {
			if _, err := conn.Exec(ctx, "SET app.clinic_id = "+ts); err != nil {
				t.Fatal(err)
			}
		}
		// The statement, again (a simple-protocol statement now goes in
		// its prepared form), and with other numbers (the literal path).
		q2 := otherNumbers(q)
		want, wantErr := rewriter.RLSRun(ctx, app, write, q, pgx.QueryExecModeSimpleProtocol)
		want2, wantErr2 := rewriter.RLSRun(ctx, app, write, q2, pgx.QueryExecModeSimpleProtocol)
		if wantErr != nil || wantErr2 != nil {
			invalid++ // the generator's, or RLS refusing a write (TestRLSDifferentialRandom checks those)
			continue
		}
		compared++
		// ... and with parameters for its numbers, checked at Bind (the
		// extended modes only).
		qp, paramArgs := paramify(q)
		wantP, wantErrP := rewriter.RLSRun(ctx, app, write, qp, pgx.QueryExecModeCacheStatement, paramArgs...)
		type session struct {
			name string
			conn *pgx.Conn
		}
		sessions := []session{{"pinned", pinned[tenant]}, {"set", setter}}
		scoped := i%2 == 1
		if scoped {
			sessions = append(sessions, session{"verify pinned", vpinned[tenant]}, session{"verify set", vsetter})
		}
		for _, sess := range sessions {
			for _, m := range modes {
				runs := []string{q, q, q2}
				if m.mode != pgx.QueryExecModeSimpleProtocol && wantErrP == nil && len(paramArgs) > 0 {
					runs = append(runs, qp)
					withParams++
				}
				for k, v := range runs {
					q, want, args := v, want, []any(nil)
					switch k {
					case 2:
						want = want2
					case 3:
						want, args = wantP, paramArgs
					}
					got, err := rewriter.RLSRun(ctx, sess.conn, write, q, m.mode, args...)
					switch {
					case err != nil && strings.Contains(err.Error(), "tenantguard:"):
						refused++
						if testing.Verbose() {
							t.Logf("refused (%s session, %s): %v: %s", sess.name, m.name, err, q)
						}
					case err != nil:
						differs++
						t.Errorf("statement %d (tenant %d, %s session, %s): RLS runs it, through tenantguard it fails: %v\n %s", i, tenant, sess.name, m.name, err, q)
					case got != want:
						differs++
						t.Errorf("statement %d (tenant %d, %s session, %s) differs from RLS\n %s\nRLS:\n%s\nthrough tenantguard:\n%s", i, tenant, sess.name, m.name, q, want, got)
					case strings.HasPrefix(sess.name, "verify"):
						verified++
					}
				}
			}
		}
		// Two reads in one simple-protocol Query: tenantguard rebuilds
		// the Query from its statements.
		if !write && prevRead != "" {
			mq := prevRead + ";\n" + q
			if want, err := multiRun(ctx, app, mq); err == nil {
				for _, conn := range []*pgx.Conn{pinned[tenant], setter} {
					got, err := multiRun(ctx, conn, mq)
					switch {
					case err != nil && strings.Contains(err.Error(), "tenantguard:"):
						refused++
					case err != nil:
						differs++
						t.Errorf("statements %d (tenant %d) in one Query: RLS runs them, through tenantguard they fail: %v\n %s", i, tenant, err, mq)
					case got != want:
						differs++
						t.Errorf("statements %d (tenant %d) in one Query differ from RLS\n %s\nRLS:\n%s\nthrough tenantguard:\n%s", i, tenant, mq, want, got)
					default:
						multi++
					}
				}
			}
		}
		if !write {
			prevRead = q
		}
		if differs > 10 {
			t.Fatal("too many differences")
		}
	}
	prepared := counterValue(t, metrics.SimpleStatementsPrepared)
	t.Logf("seed %d: %d statements compared with RLS in 6 ways each, the hand-scoped half in 6 more under verify (3 runs each: the statement, again, "+
		"and with other numbers), %d runs refused by tenantguard, %d verify runs matched RLS, %d invalid; %.0f simple-protocol statements went in their prepared form",
		seed, compared, refused, verified, invalid, prepared)
	t.Logf("%d extended-protocol runs with parameters for the numbers, %d two-statement Queries matched RLS", withParams, multi)
	if multi == 0 {
		t.Fatal("no two-statement Query compared")
	}
	if compared < n/2 || verified < compared || prepared < float64(compared)/4 {
		t.Fatalf("only %d of %d statements compared, %d runs refused, %.0f prepared forms: the test proves little", compared, n, refused, prepared)
	}
}

// multiRun runs sql as one simple-protocol Query and returns every
// result's rows (sorted within each result).
func multiRun(ctx context.Context, conn *pgx.Conn, sql string) (string, error) {
	results, err := conn.PgConn().Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	var out []string
	for _, r := range results {
		if r.Err != nil {
			return "", r.Err
		}
		var rows []string
		for _, row := range r.Rows {
			var cells []string
			for _, v := range row {
				cells = append(cells, string(v))
			}
			rows = append(rows, strings.Join(cells, "|"))
		}
		sort.Strings(rows)
		out = append(out, strings.Join(rows, "\n"))
	}
	return strings.Join(out, "\n--\n"), nil
}

// paramify returns q with a parameter for every number that is not part
// of a name, and the numbers as arguments.
func paramify(q string) (string, []any) {
	var args []any
	return mapNumbers(q, func(n int) string {
		args = append(args, n)
		return "$" + strconv.Itoa(len(args))
	}), args
}

// otherNumbers returns q with every number that is not part of a name
// changed.
func otherNumbers(q string) string {
	return mapNumbers(q, func(n int) string { return strconv.Itoa(n%7 + 1) })
}

// mapNumbers returns q with every number that is not part of a name
// replaced by f of it.
func mapNumbers(q string, f func(int) string) string {
	var b strings.Builder
	for i := 0; i < len(q); i++ {
		c := q[i]
		if c >= '0' && c <= '9' && (i == 0 || !isNameByte(q[i-1])) {
			j := i
			for j < len(q) && q[j] >= '0' && q[j] <= '9' {
				j++
			}
			n, _ := strconv.Atoi(q[i:j])
			b.WriteString(f(n))
			i = j - 1
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func isNameByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// serveRLSProxy starts tenantguard with policyYAML in front of db and
// returns its address.
func serveRLSProxy(t *testing.T, c *pgtest.Cluster, db, policyYAML string) (string, *admin.Metrics) {
	t.Helper()
	ctx := context.Background()
	conn, err := c.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.LoadConn(ctx, conn, catalog.Options{})
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse([]byte(policyYAML), "rls.yaml")
	if err != nil {
		t.Fatal(err)
	}
	al, err := audit.New(audit.Options{Stdout: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	metrics := admin.NewMetrics()
	g := guard.New(guard.Options{Policies: policy.NewHolder(pol), Audit: al, Metrics: metrics, Logger: zap.NewNop(),
		Catalog: func() *rewriter.Catalog { return cat }})
	srv, err := proxy.NewServer(proxy.Config{
		Upstream: proxy.UpstreamConfig{Host: c.Host, Port: c.Port, SSLMode: "disable"},
		Logger:   zap.NewNop(),
		Hooks:    g,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, l) }()
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		_ = srv.Shutdown(dctx)
		scancel()
		<-done
	})
	return l.Addr().String(), metrics
}
