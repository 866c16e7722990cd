package guard_test

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/admin"
	"github.com/tenantguard/tenantguard/proxy/audit"
	"github.com/tenantguard/tenantguard/proxy/catalog"
	"github.com/tenantguard/tenantguard/proxy/guard"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
	"github.com/tenantguard/tenantguard/rewriter"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

//go:embed testdata/fixture.sql
var fixtureSQL string

const basePolicy = `
version: 1
mode: enforce
tenant:
  column: clinic_id
  type: integer
  setting: app.clinic_id
tables: [patients, invoices, soap_notes]
limits:
  max_rows: 50
roles:
  postgres:
    bypass: true
`

// syncBuffer collects audit lines from concurrent sessions.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is a fixture database with tenantguard in front of it.
type env struct {
	c       *pgtest.Cluster
	db      string
	addr    string
	audit   *syncBuffer
	metrics *admin.Metrics
	holder  *policy.Holder
	guard   *guard.Guard // startGuard's
}

// start starts tenantguard in front of a fresh fixture database, with the
// catalog loaded from it as serve does.
func start(t *testing.T, policyYAML string) *env {
	t.Helper()
	return startWith(t, policyYAML, nil)
}

func startWith(t *testing.T, policyYAML string, cat *rewriter.Catalog) *env {
	t.Helper()
	return startGuard(t, policyYAML, loadedCatalog(t, cat))
}

// loadedCatalog is the catalog source of startWith: cat, or the fixture
// database's catalog loaded once.
func loadedCatalog(t *testing.T, cat *rewriter.Catalog) func(c *pgtest.Cluster, db string) func() *rewriter.Catalog {
	return func(c *pgtest.Cluster, db string) func() *rewriter.Catalog {
		if cat == nil {
			conn, err := c.Connect(context.Background(), db)
			require.NoError(t, err)
			cat, err = catalog.LoadConn(context.Background(), conn, catalog.Options{})
			conn.Close(context.Background())
			require.NoError(t, err)
		}
		return func() *rewriter.Catalog { return cat }
	}
}

// startGuard starts tenantguard with the catalog source catalogFor returns
// for the fixture database.
func startGuard(t *testing.T, policyYAML string, catalogFor func(c *pgtest.Cluster, db string) func() *rewriter.Catalog, with ...func(*guard.Options)) *env {
	t.Helper()
	c := pgtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := c.CreateDatabase(ctx, "guard_"+t.Name())
	require.NoError(t, err)
	require.NoError(t, c.Exec(ctx, db, fixtureSQL))
	catalogFn := catalogFor(c, db)
	pol, err := policy.Parse([]byte(policyYAML), "test.yaml")
	require.NoError(t, err)
	e := &env{c: c, db: db, audit: &syncBuffer{}, metrics: admin.NewMetrics(), holder: policy.NewHolder(pol)}
	al, err := audit.New(audit.Options{Stdout: e.audit})
	require.NoError(t, err)
	opts := guard.Options{Policies: e.holder, Audit: al, Metrics: e.metrics, Logger: zaptest.NewLogger(t),
		Catalog: catalogFn}
	for _, w := range with {
		w(&opts)
	}
	e.guard = guard.New(opts)
	serve(t, e, e.guard, nil)
	return e
}

// serve starts a proxy server with the hooks g in front of e's cluster
// (with changing its configuration) and points e at it.
func serve(t *testing.T, e *env, g *guard.Guard, with func(*proxy.Config)) {
	t.Helper()
	loops := 0 // TENANTGUARD_TEST_EVENT_LOOPS: see proxy's main_test.go
	if v := os.Getenv("TENANTGUARD_TEST_EVENT_LOOPS"); v != "" {
		var err error
		loops, err = strconv.Atoi(v)
		require.NoError(t, err, "TENANTGUARD_TEST_EVENT_LOOPS")
	}
	cfg := proxy.Config{
		Upstream:   proxy.UpstreamConfig{Host: e.c.Host, Port: e.c.Port, SSLMode: "disable"},
		Logger:     zaptest.NewLogger(t),
		Hooks:      g,
		EventLoops: loops,
	}
	if with != nil {
		with(&cfg)
	}
	srv, err := proxy.NewServer(cfg)
	require.NoError(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	sctx, scancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, l) }()
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer dcancel()
		_ = srv.Shutdown(dctx)
		scancel()
		<-done
	})
	e.addr = l.Addr().String()
}

// url is a connection URL through the proxy; params are extra query
// parameters (options, app.clinic_id, ...).
func (e *env) url(user string, params ...string) string {
	u := url.URL{Scheme: "postgres", Host: e.addr, Path: "/" + e.db, User: url.User(user)}
	q := url.Values{"sslmode": {"disable"}}
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	// libpq-style URLs encode spaces as %20 (pgx does not read '+' as a space).
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

// connect opens a pgx connection through the proxy as app_user with the
// tenant as a startup parameter ("" for none).
func (e *env) connect(t *testing.T, tenant string, params ...string) *pgx.Conn {
	t.Helper()
	if tenant != "" {
		params = append(params, "app.clinic_id", tenant)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.url(pgtest.AppUser, params...))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// direct opens a superuser connection straight to the fixture database.
func (e *env) direct(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := e.c.Connect(context.Background(), e.db)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

var modes = []struct {
	name string
	mode pgx.QueryExecMode
}{
	{"simple", pgx.QueryExecModeSimpleProtocol},
	{"extended", pgx.QueryExecModeCacheStatement},
	{"describe", pgx.QueryExecModeDescribeExec},
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// strings reads a single text column.
func queryStrings(t *testing.T, conn *pgx.Conn, mode pgx.QueryExecMode, sql string, args ...any) []string {
	t.Helper()
	rows, err := conn.Query(ctx(t), sql, append([]any{mode}, args...)...)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err, sql)
	return out
}

// pgErr asserts err is a PostgreSQL error with the code, a tenantguard
// message and a hint.
func pgErr(t *testing.T, err error, code string) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	require.True(t, errors.As(err, &pe), "want a PostgreSQL error %s, got %v", code, err)
	require.Equal(t, code, pe.Code, pe.Message)
	return pe
}

func tenantErr(t *testing.T, err error, code string) {
	t.Helper()
	pe := pgErr(t, err, code)
	require.True(t, strings.HasPrefix(pe.Message, "tenantguard:"), pe.Message)
	require.NotEmpty(t, pe.Hint)
}

// onlyMarker asserts that every value carries the tenant's marker and no other.
func onlyMarker(t *testing.T, tenant string, values []string) {
	t.Helper()
	for _, v := range values {
		for _, other := range []string{"TENANT1", "TENANT2", "TENANT3", "NOTENANT"} {
			if other != "TENANT"+tenant {
				require.NotContains(t, v, other)
			}
		}
		require.Contains(t, v, "TENANT"+tenant)
	}
}

func TestScopedReadsInEveryProtocol(t *testing.T) {
	e := start(t, basePolicy)
	for _, tenant := range []string{"1", "2", "3"} {
		conn := e.connect(t, tenant)
		for _, m := range modes {
			t.Run(m.name+"/tenant"+tenant, func(t *testing.T) {
				names := queryStrings(t, conn, m.mode, "SELECT full_name FROM patients ORDER BY id LIMIT 50")
				require.Len(t, names, 10)
				onlyMarker(t, tenant, names)
				var n int64
				require.NoError(t, conn.QueryRow(ctx(t), "SELECT count(*) FROM patients", m.mode).Scan(&n))
				require.EqualValues(t, 10, n)
				memos := queryStrings(t, conn, m.mode,
					"SELECT i.memo FROM patients p LEFT JOIN invoices i ON i.patient_id = p.id WHERE p.id > $1 ORDER BY p.id LIMIT 20", 0)
				require.NotEmpty(t, memos)
				onlyMarker(t, tenant, memos)
			})
		}
	}
}

func TestNoTenantIsRefused(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "")
	for _, m := range modes {
		_, err := conn.Exec(ctx(t), "SELECT full_name FROM patients LIMIT 5", m.mode)
		tenantErr(t, err, "42501")
	}
	// Non-tenant tables still work.
	names := queryStrings(t, conn, pgx.QueryExecModeSimpleProtocol, "SELECT name FROM clinics ORDER BY id")
	require.Len(t, names, 3)
}

func TestUnboundedIsRefused(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "1")
	for _, m := range modes {
		_, err := conn.Exec(ctx(t), "SELECT full_name FROM patients", m.mode)
		tenantErr(t, err, "54000")
		_, err = conn.Exec(ctx(t), "SELECT full_name FROM patients LIMIT 1000", m.mode)
		tenantErr(t, err, "54000")
	}
	// A LIMIT parameter is checked at Bind.
	_, err := conn.Exec(ctx(t), "SELECT full_name FROM patients LIMIT $1", 1000)
	tenantErr(t, err, "54000")
	names := queryStrings(t, conn, pgx.QueryExecModeCacheStatement, "SELECT full_name FROM patients ORDER BY id LIMIT $1", 3)
	require.Len(t, names, 3)
	// So is an OFFSET parameter.
	_, err = conn.Exec(ctx(t), "SELECT full_name FROM patients ORDER BY id LIMIT 5 OFFSET $1", 100000000)
	tenantErr(t, err, "54000")
	names = queryStrings(t, conn, pgx.QueryExecModeCacheStatement, "SELECT full_name FROM patients ORDER BY id LIMIT 5 OFFSET $1", 8)
	require.Len(t, names, 2)
}

func TestRejectionFailsTheTransaction(t *testing.T) {
	e := start(t, basePolicy)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			conn := e.connect(t, "1")
			_, err := conn.Exec(ctx(t), "BEGIN", m.mode)
			require.NoError(t, err)
			_, err = conn.Exec(ctx(t), "INSERT INTO clinics VALUES (42, 'not committed')", m.mode)
			require.NoError(t, err)
			_, err = conn.Exec(ctx(t), "SELECT * FROM patients", m.mode)
			tenantErr(t, err, "54000")
			_, err = conn.Exec(ctx(t), "SELECT 1", m.mode)
			pgErr(t, err, "25P02")
			tag, err := conn.Exec(ctx(t), "COMMIT", m.mode)
			require.NoError(t, err)
			require.Equal(t, "ROLLBACK", tag.String())
			var n int
			require.NoError(t, e.direct(t).QueryRow(ctx(t), "SELECT count(*) FROM clinics WHERE id = 42").Scan(&n))
			require.Zero(t, n, "the row inserted before the rejection must not be committed")
			// The connection stays usable.
			require.Len(t, queryStrings(t, conn, m.mode, "SELECT name FROM clinics ORDER BY id"), 3)
		})
	}
}

func TestExtendedRejectionDiscardsUntilSync(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "2")
	b := &pgx.Batch{}
	b.Queue("INSERT INTO clinics VALUES (43, 'implicit txn')")
	b.Queue("SELECT full_name FROM patients") // unbounded: rejected
	b.Queue("INSERT INTO clinics VALUES (44, 'never runs')")
	err := conn.SendBatch(ctx(t), b).Close()
	tenantErr(t, err, "54000")
	var n int
	require.NoError(t, e.direct(t).QueryRow(ctx(t), "SELECT count(*) FROM clinics WHERE id IN (43, 44)").Scan(&n))
	require.Zero(t, n, "the batch is one implicit transaction: nothing of it may commit")
	names := queryStrings(t, conn, pgx.QueryExecModeCacheStatement, "SELECT full_name FROM patients ORDER BY id LIMIT 5")
	onlyMarker(t, "2", names)
}

func TestTenantSwitchKeepsPreparedStatementsRight(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "1")
	const q = "SELECT full_name FROM patients WHERE id > $1 ORDER BY id LIMIT 5"
	for _, tenant := range []string{"1", "2", "3", "1"} {
		_, err := conn.Exec(ctx(t), "SET app.clinic_id = "+tenant)
		require.NoError(t, err)
		names := queryStrings(t, conn, pgx.QueryExecModeCacheStatement, q, 0)
		require.Len(t, names, 5)
		onlyMarker(t, tenant, names)
	}
	// SET LOCAL ends with the transaction; ROLLBACK undoes a SET.
	tx, err := conn.Begin(ctx(t))
	require.NoError(t, err)
	_, err = tx.Exec(ctx(t), "SET LOCAL app.clinic_id = 3")
	require.NoError(t, err)
	onlyMarker(t, "3", queryStrings(t, conn, pgx.QueryExecModeCacheStatement, q, 0))
	require.NoError(t, tx.Commit(ctx(t)))
	onlyMarker(t, "1", queryStrings(t, conn, pgx.QueryExecModeCacheStatement, q, 0))
	tx, err = conn.Begin(ctx(t))
	require.NoError(t, err)
	_, err = tx.Exec(ctx(t), "SET app.clinic_id = 2")
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx(t)))
	onlyMarker(t, "1", queryStrings(t, conn, pgx.QueryExecModeCacheStatement, q, 0))
	// RESET goes back to the startup tenant.
	_, err = conn.Exec(ctx(t), "SET app.clinic_id = 3")
	require.NoError(t, err)
	_, err = conn.Exec(ctx(t), "RESET app.clinic_id")
	require.NoError(t, err)
	onlyMarker(t, "1", queryStrings(t, conn, pgx.QueryExecModeSimpleProtocol, "SELECT full_name FROM patients ORDER BY id LIMIT 3"))
}

func TestSetConfigIdiom(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "")
	for _, m := range modes {
		for _, tenant := range []string{"3", "2"} {
			var got string
			require.NoError(t, conn.QueryRow(ctx(t), "SELECT set_config('app.clinic_id', $1, false)", m.mode, tenant).Scan(&got))
			require.Equal(t, tenant, got)
			onlyMarker(t, tenant, queryStrings(t, conn, m.mode, "SELECT note FROM soap_notes ORDER BY id LIMIT 10"))
		}
		_, err := conn.Exec(ctx(t), "SELECT set_config('app.clinic_id', $1, false)", m.mode, "2 OR 1=1")
		tenantErr(t, err, "42501")
		// set_config inside a larger expression is tampering.
		_, err = conn.Exec(ctx(t), "SELECT full_name FROM patients WHERE set_config('app.clinic_id', '1', false) IS NOT NULL LIMIT 1", m.mode)
		tenantErr(t, err, "42501")
	}
}

func TestStartupParserDifferentialsRefused(t *testing.T) {
	e := start(t, basePolicy)
	for name, params := range map[string][]string{
		"scs via options -c":    {"options", "-c standard_conforming_strings=off"},
		"scs via options --":    {"options", "--standard-conforming-strings=off"},
		"scs as a parameter":    {"standard_conforming_strings", "off"},
		"client_encoding SJIS":  {"client_encoding", "SJIS"},
		"role at startup":       {"options", "-c role=postgres"},
		"invalid tenant":        {"app.clinic_id", "1 OR 1=1"},
		"scs false":             {"options", "-c standard_conforming_strings=false"},
		"scs 0 with dashes":     {"options", "--standard_conforming_strings=0"},
		"scs after tenant":      {"options", "-c app.clinic_id=1 -c standard_conforming_strings=off"},
		"scs escaped space":     {"options", `-c standard_conforming_strings=of\ f`},
		"scs upper case":        {"options", "-c STANDARD_CONFORMING_STRINGS=off"},
		"client_encoding BIG5":  {"client_encoding", "BIG5"},
		"client_encoding -c":    {"options", "-c client_encoding=SJIS"},
		"client_encoding --":    {"options", "--client-encoding=GBK"},
		"session_authorization": {"options", "-c session_authorization=postgres"},
		"unknown switch":        {"options", "-D /tmp"},
		// Every value is checked, not only the one the server keeps.
		"scs off in options, on as a parameter": {"options", "-c standard_conforming_strings=off", "standard_conforming_strings", "on"},
		"bad tenant in options, good parameter": {"options", "-c app.clinic_id=1x", "app.clinic_id", "1"},
		// Names differing in case are one setting to the server.
		"tenant twice in two cases": {"app.clinic_id", "1", "APP.CLINIC_ID", "2"},
		"scs twice in two cases":    {"standard_conforming_strings", "on", "STANDARD_CONFORMING_STRINGS", "off"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := pgx.Connect(ctx(t), e.url(pgtest.AppUser, params...))
			refusedAtStartup(t, err)
		})
	}
	// The tenant in options is read like a startup parameter.
	conn := e.connect(t, "", "options", "-c app.clinic_id=3")
	onlyMarker(t, "3", queryStrings(t, conn, pgx.QueryExecModeSimpleProtocol, "SELECT full_name FROM patients ORDER BY id LIMIT 3"))
}

func TestWritesStayInTheTenant(t *testing.T) {
	e := start(t, basePolicy)
	direct := e.direct(t)
	before := func() map[int]string {
		rows, err := direct.Query(ctx(t), "SELECT id, status FROM patients WHERE clinic_id IS DISTINCT FROM 1 ORDER BY id")
		require.NoError(t, err)
		out := map[int]string{}
		for rows.Next() {
			var id int
			var s string
			require.NoError(t, rows.Scan(&id, &s))
			out[id] = s
		}
		require.NoError(t, rows.Err())
		return out
	}
	others := before()
	for _, m := range modes {
		conn := e.connect(t, "1")
		tag, err := conn.Exec(ctx(t), "UPDATE patients SET status = 'archived'", m.mode)
		require.NoError(t, err)
		require.EqualValues(t, 10, tag.RowsAffected())
		_, err = conn.Exec(ctx(t), "UPDATE patients SET clinic_id = 2 WHERE id = 3", m.mode)
		tenantErr(t, err, "42501")
		_, err = conn.Exec(ctx(t), "INSERT INTO patients (id, clinic_id, full_name) VALUES (500, 2, 'x')", m.mode)
		tenantErr(t, err, "42501")
		tag, err = conn.Exec(ctx(t), "DELETE FROM soap_notes WHERE id > 0", m.mode)
		require.NoError(t, err)
		require.LessOrEqual(t, tag.RowsAffected(), int64(10))
	}
	require.Equal(t, others, before(), "rows of other tenants must never change")
	var n int
	require.NoError(t, direct.QueryRow(ctx(t), "SELECT count(*) FROM soap_notes WHERE clinic_id <> 1").Scan(&n))
	require.Equal(t, 20, n)
	// An INSERT without the tenant column gets the session's tenant.
	conn := e.connect(t, "2")
	_, err := conn.Exec(ctx(t), "INSERT INTO invoices (id, patient_id, memo) VALUES (900, 2, 'new TENANT2')")
	require.NoError(t, err)
	var clinic *int
	require.NoError(t, direct.QueryRow(ctx(t), "SELECT clinic_id FROM invoices WHERE id = 900").Scan(&clinic))
	require.NotNil(t, clinic)
	require.Equal(t, 2, *clinic)
}

func TestErrorsDoNotEchoValues(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "1")
	// p2's email belongs to tenant 3 (2 % 3 = 2 -> clinic 3).
	var email string
	require.NoError(t, e.direct(t).QueryRow(ctx(t), "SELECT email FROM patients WHERE clinic_id = 3 ORDER BY id LIMIT 1").Scan(&email))
	_, err := conn.Exec(ctx(t), "INSERT INTO patients (id, full_name, email) VALUES (700, 'dup', $1)", email)
	pe := pgErr(t, err, "23505")
	all := pe.Message + pe.Detail + pe.Hint + pe.Where
	require.NotContains(t, all, "TENANT3")
	require.NotContains(t, all, email)
	// A row value the statement does not contain never comes back in an error.
	_, err = conn.Exec(ctx(t), "SELECT id FROM patients WHERE full_name::int > 0 LIMIT 5")
	pe = pgErr(t, err, "22P02")
	require.NotContains(t, pe.Message+pe.Detail+pe.Where, "TENANT")
	require.Contains(t, pe.Message, "<redacted>")
}

func TestBypassRoleSeesEverything(t *testing.T) {
	e := start(t, basePolicy)
	conn, err := pgx.Connect(ctx(t), e.url(pgtest.SuperUser))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var n int
	require.NoError(t, conn.QueryRow(ctx(t), "SELECT count(*) FROM patients").Scan(&n))
	require.Equal(t, 31, n)
	require.Contains(t, e.audit.String(), `"decision":"bypassed"`)
}

func TestAuditModeForwardsAndLogs(t *testing.T) {
	e := start(t, strings.Replace(basePolicy, "mode: enforce", "mode: audit", 1))
	conn := e.connect(t, "1")
	names := queryStrings(t, conn, pgx.QueryExecModeSimpleProtocol, "SELECT full_name FROM patients WHERE full_name <> 'AUDITLITERAL'")
	require.Len(t, names, 31, "audit mode never changes a statement")
	out := e.audit.String()
	require.Contains(t, out, `"decision":"rejected"`)
	require.Contains(t, out, `"reason":"unbounded"`)
	require.NotContains(t, out, "AUDITLITERAL", "no literal reaches the audit trail")
}

func TestAuditTrailHasNoLiterals(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "1")
	secrets := []string{"SECRETSIMPLE", "SECRETPARAM", "SECRETREJECT"}
	_, err := conn.Exec(ctx(t), "SELECT full_name FROM patients WHERE full_name <> 'SECRETSIMPLE' LIMIT 1", pgx.QueryExecModeSimpleProtocol)
	require.NoError(t, err)
	_, err = conn.Exec(ctx(t), "SELECT full_name FROM patients WHERE full_name <> $1 LIMIT 1", "SECRETPARAM")
	require.NoError(t, err)
	_, err = conn.Exec(ctx(t), "SELECT full_name FROM patients WHERE full_name = 'SECRETREJECT'")
	require.Error(t, err)
	out := e.audit.String()
	for _, s := range secrets {
		require.NotContains(t, out, s)
	}
	require.Contains(t, out, `"event":"connect"`)
	require.Contains(t, out, `"auth_method":"trust"`)
	require.Contains(t, out, `"tenant":"1"`)
	require.Contains(t, out, `"kind":"select"`)
	require.Contains(t, out, `"rows":1`)
}

func TestRowGuardCutsLongResults(t *testing.T) {
	e := start(t, strings.Replace(basePolicy, "max_rows: 50", "max_rows: 5", 1))
	conn := e.connect(t, "1")
	// A set-returning function multiplies rows past the bound the LIMIT gave.
	_, err := conn.Exec(ctx(t), "SELECT full_name, generate_series(1, 10) FROM patients WHERE id = 3")
	if err != nil {
		// Refused up front is as good as cut at run time.
		pgErr(t, err, "54000")
	} else {
		t.Fatalf("a result above max_rows reached the client")
	}
	require.Len(t, queryStrings(t, conn, pgx.QueryExecModeSimpleProtocol, "SELECT full_name FROM patients ORDER BY id LIMIT 5"), 5)
}

func TestRowGuardCutsAtRunTime(t *testing.T) {
	// A stale catalog claims status is unique, so the statement passes the
	// static bound; the run-time guard must still cut it.
	e := startRowGuard5(t)
	conn := e.connect(t, "1")
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			rows, err := conn.Query(ctx(t), "SELECT full_name FROM patients WHERE status = 'active'", m.mode)
			require.NoError(t, err)
			n := 0
			for rows.Next() {
				n++
			}
			tenantErr(t, rows.Err(), "54000")
			require.Equal(t, 5, n, "the rows up to max_rows reach the client, and none after")
			// The session goes on.
			require.Len(t, queryStrings(t, conn, m.mode, "SELECT full_name FROM patients WHERE id = 3"), 1)
		})
	}
	require.Contains(t, e.audit.String(), `"reason":"row_limit"`)
}

func TestMetricsCountDecisions(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "1")
	for i := 0; i < 3; i++ {
		_, err := conn.Exec(ctx(t), "SELECT full_name FROM patients WHERE id = "+strconv.Itoa(i+1)+" LIMIT 1", pgx.QueryExecModeSimpleProtocol)
		require.NoError(t, err)
		if i == 1 { // another kind in between: each label keeps its own count
			_, err = conn.Exec(ctx(t), "UPDATE patients SET full_name = full_name WHERE id = 1", pgx.QueryExecModeSimpleProtocol)
			require.NoError(t, err)
		}
	}
	_, err := conn.Exec(ctx(t), "SELECT full_name FROM patients")
	require.Error(t, err)
	mfs, err := e.metrics.Registry.Gather()
	require.NoError(t, err)
	found := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += fmt.Sprintf(",%s=%s", l.GetName(), l.GetValue())
			}
			found[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	require.GreaterOrEqual(t, found["tenantguard_statements_total,decision=rewritten,kind=select"], 3.0)
	require.Equal(t, 1.0, found["tenantguard_statements_total,decision=rewritten,kind=update"])
	require.Equal(t, 1.0, found["tenantguard_statements_total,decision=rejected,kind=select"])
	require.Equal(t, 1.0, found["tenantguard_rejections_total,reason=unbounded"])
	require.Equal(t, 1.0, found["tenantguard_client_connections"])
}

func TestNotificationChannelsArePerTenant(t *testing.T) {
	e := start(t, basePolicy)
	l1 := e.connect(t, "1")
	l2 := e.connect(t, "2")
	for _, l := range []*pgx.Conn{l1, l2} {
		_, err := l.Exec(ctx(t), "LISTEN updates")
		require.NoError(t, err)
	}
	n1 := e.connect(t, "1")
	_, err := n1.Exec(ctx(t), "NOTIFY updates, 'from-TENANT1'")
	require.NoError(t, err)
	got, err := l1.WaitForNotification(ctx(t))
	require.NoError(t, err)
	require.Equal(t, "updates", got.Channel, "the namespace is invisible to the application")
	require.Equal(t, "from-TENANT1", got.Payload)
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = l2.WaitForNotification(short)
	require.Error(t, err, "tenant 2 must not hear tenant 1's notification")
	require.True(t, errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout"), "%v", err)
	// pg_notify would bypass the namespace.
	_, err = n1.Exec(ctx(t), "SELECT pg_notify('updates', 'x')")
	tenantErr(t, err, "42501")
	_, err = l1.Exec(ctx(t), "UNLISTEN *")
	require.NoError(t, err)
}

func TestPolicySwapUnderLoad(t *testing.T) {
	e := start(t, basePolicy)
	alt, err := policy.Parse([]byte(strings.Replace(basePolicy, "max_rows: 50", "max_rows: 40", 1)), "alt.yaml")
	require.NoError(t, err)
	orig := e.holder.Load()
	const workers = 4
	stop := make(chan struct{})
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		conn := e.connect(t, strconv.Itoa(1+w%3))
		mode := modes[w%len(modes)].mode
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				rows, err := conn.Query(context.Background(), "SELECT full_name FROM patients ORDER BY id LIMIT 10", mode)
				if err == nil {
					_, err = pgx.CollectRows(rows, pgx.RowTo[string])
				}
				if err != nil {
					errs <- fmt.Errorf("query %d: %w", n, err)
					return
				}
				n++
			}
		}()
	}
	for i := 0; i < 200; i++ {
		if i%2 == 0 {
			e.holder.Store(alt)
		} else {
			e.holder.Store(orig)
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	for w := 0; w < workers; w++ {
		require.NoError(t, <-errs, "no client query may fail because of a reload")
	}
	// The decision cache follows the policy in force.
	strict, err := policy.Parse([]byte(strings.Replace(basePolicy, "max_rows: 50", "max_rows: 2", 1)), "strict.yaml")
	require.NoError(t, err)
	conn := e.connect(t, "1")
	_, err = conn.Exec(ctx(t), "SELECT full_name FROM patients ORDER BY id LIMIT 10")
	require.NoError(t, err)
	e.holder.Store(strict)
	_, err = conn.Exec(ctx(t), "SELECT full_name FROM patients ORDER BY id LIMIT 10")
	tenantErr(t, err, "54000")
}

func TestFunctionCallIsRefusedForOrdinaryRoles(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "1")
	var oid uint32
	require.NoError(t, conn.QueryRow(ctx(t), "SELECT 'int4pl'::regproc::oid").Scan(&oid))
	hj, err := conn.PgConn().Hijack()
	require.NoError(t, err)
	defer hj.Conn.Close()
	fe := hj.Frontend
	fe.Send(&pgproto3.FunctionCall{Function: oid, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{{0, 0, 0, 2}, {0, 0, 0, 40}}, ResultFormatCode: 1})
	require.NoError(t, fe.Flush())
	require.NoError(t, hj.Conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	var gotErr *pgproto3.ErrorResponse
	for {
		m, err := fe.Receive()
		require.NoError(t, err)
		switch r := m.(type) {
		case *pgproto3.FunctionCallResponse:
			t.Fatal("a FunctionCall reached the server")
		case *pgproto3.ErrorResponse:
			cp := *r
			gotErr = &cp
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	require.NotNil(t, gotErr)
	require.Equal(t, "42501", gotErr.Code)
	require.True(t, strings.HasPrefix(gotErr.Message, "tenantguard:"), gotErr.Message)
	// The session goes on.
	fe.Send(&pgproto3.Query{String: "SELECT 1"})
	require.NoError(t, fe.Flush())
	for {
		m, err := fe.Receive()
		require.NoError(t, err)
		if _, ok := m.(*pgproto3.ErrorResponse); ok {
			t.Fatal("the session is broken after the refusal")
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
}

// refusedAtStartup asserts a connection was refused with a FATAL error:
// tenantguard's own 42501 once the login succeeded, or the server's own
// refusal of the setting during the login (permission denied to set role,
// a value that is not a boolean), which comes first.
func refusedAtStartup(t *testing.T, err error) {
	t.Helper()
	var pe *pgconn.PgError
	require.True(t, errors.As(err, &pe), "want a FATAL refusal, got %v", err)
	require.Equal(t, "FATAL", pe.Severity)
	if strings.HasPrefix(pe.Message, "tenantguard:") {
		require.Equal(t, "42501", pe.Code)
		require.NotEmpty(t, pe.Hint)
	}
}

func TestUnauthenticatedClientLearnsNoPolicy(t *testing.T) {
	e := start(t, basePolicy)
	// A user that does not exist gets the server's authentication error,
	// not tenantguard's refusal of its startup settings.
	_, err := pgx.Connect(ctx(t), e.url("no_such_user", "options", "-c standard_conforming_strings=off"))
	pe := pgErr(t, err, "28000")
	require.NotContains(t, pe.Message, "tenantguard")
}

func TestMultiStatementWithTrailingLineComment(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "1")
	// The first statement ends in a line comment; the second is rewritten.
	results, err := conn.PgConn().Exec(ctx(t), "SELECT 1 -- first\n; SELECT full_name FROM patients ORDER BY id LIMIT 3").ReadAll()
	require.NoError(t, err)
	require.Len(t, results, 2)
	require.Len(t, results[1].Rows, 3)
	for _, r := range results[1].Rows {
		onlyMarker(t, "1", []string{string(r[0])})
	}
}

// explain runs EXPLAIN (COSTS OFF) in the simple protocol and returns the
// plan: it shows how the upstream received the rewritten statement.
func explain(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	res, err := conn.PgConn().Exec(ctx(t), "EXPLAIN (COSTS OFF) "+sql).ReadAll()
	require.NoError(t, err)
	var b strings.Builder
	for _, r := range res {
		for _, row := range r.Rows {
			b.Write(row[0])
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// TestPinnedTenantIsALiteral: while the tenant is the startup one, simple
// statements reach PostgreSQL scoped with a literal (planned like the
// hand-written predicate); after the session changes its tenant they read
// the upstream setting again, and the rows stay right throughout.
func TestPinnedTenantIsALiteral(t *testing.T) {
	e := start(t, basePolicy)
	const q = "SELECT full_name FROM patients WHERE id > 0 ORDER BY id LIMIT 50"
	simple := func(t *testing.T, conn *pgx.Conn) []string {
		return queryStrings(t, conn, pgx.QueryExecModeSimpleProtocol, q)
	}

	pinned := e.connect(t, "2")
	plan := explain(t, pinned, q)
	require.Contains(t, plan, "clinic_id = 2", "a pinned session is scoped with a literal")
	require.NotContains(t, plan, "InitPlan")
	onlyMarker(t, "2", simple(t, pinned))

	// Any tenant change ends the pin for good, even back to the same value.
	_, err := pinned.PgConn().Exec(ctx(t), "SET app.clinic_id = 3").ReadAll()
	require.NoError(t, err)
	require.Contains(t, explain(t, pinned, q), "InitPlan", "after SET the setting is read upstream")
	onlyMarker(t, "3", simple(t, pinned))
	_, err = pinned.PgConn().Exec(ctx(t), "SET app.clinic_id = 2").ReadAll()
	require.NoError(t, err)
	require.Contains(t, explain(t, pinned, q), "InitPlan")
	onlyMarker(t, "2", simple(t, pinned))

	// A SET in the same string as the statement: the statement after it
	// reads the setting.
	res, err := e.connect(t, "1").PgConn().Exec(ctx(t), "SET app.clinic_id = 3; EXPLAIN (COSTS OFF) "+q).ReadAll()
	require.NoError(t, err)
	require.Len(t, res, 2)
	var plan2 strings.Builder
	for _, row := range res[1].Rows {
		plan2.Write(row[0])
	}
	require.Contains(t, plan2.String(), "InitPlan")

	// No startup tenant: the setting, never a literal.
	late := e.connect(t, "")
	_, err = late.PgConn().Exec(ctx(t), "SET app.clinic_id = 1").ReadAll()
	require.NoError(t, err)
	require.Contains(t, explain(t, late, q), "InitPlan")
	onlyMarker(t, "1", simple(t, late))

	// The extended protocol: a literal while pinned (the statement is
	// prepared again if the tenant changes, see reprepare_test.go), the
	// setting after the pin ended.
	extended := func(conn *pgx.Conn) string {
		var got string
		rows, err := conn.Query(ctx(t), "EXPLAIN (COSTS OFF) "+q, pgx.QueryExecModeDescribeExec)
		require.NoError(t, err)
		for rows.Next() {
			var line string
			require.NoError(t, rows.Scan(&line))
			got += line + "\n"
		}
		require.NoError(t, rows.Err())
		return got
	}
	require.Contains(t, extended(pinned), "InitPlan")
	fresh := extended(e.connect(t, "2"))
	require.Contains(t, fresh, "clinic_id = 2")
	require.NotContains(t, fresh, "InitPlan")
}

// TestStartupTenantFollowsTheServer: when a startup parameter and options
// both set the tenant, PostgreSQL applies the parameter last; tenantguard's
// tenant (rows and audit) is the one the server holds.
func TestStartupTenantFollowsTheServer(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "1", "options", "-c app.clinic_id=2")
	var server string
	require.NoError(t, conn.QueryRow(ctx(t), "SELECT current_setting('app.clinic_id')", pgx.QueryExecModeSimpleProtocol).Scan(&server))
	for _, m := range modes {
		onlyMarker(t, server, queryStrings(t, conn, m.mode, "SELECT full_name FROM patients ORDER BY id LIMIT 3"))
	}
	require.Contains(t, e.audit.String(), `"tenant":"`+server+`"`)
	t.Logf("the server's tenant is the startup parameter's: %s", server)
}

// TestRowGuardCountsEachPipelinedExecute: two executions of the unnamed
// portal in one pipeline are counted apart; together they may pass
// max_rows, each alone does not.
func TestRowGuardCountsEachPipelinedExecute(t *testing.T) {
	e := startRowGuard5(t)
	var ids []int64
	rows, err := e.direct(t).Query(ctx(t), "SELECT id FROM patients WHERE clinic_id = 1 AND status = 'active' ORDER BY id")
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		require.NoError(t, rows.Scan(&id))
		ids = append(ids, id)
	}
	require.NoError(t, rows.Err())
	require.GreaterOrEqual(t, len(ids), 6, "fixture: tenant 1 needs six active patients")

	const q = "SELECT full_name FROM patients WHERE status = $1 AND id > $2 AND id <= $3"
	// pgx pipelines a batch: Bind/Execute to the unnamed portal twice, then
	// Sync (prepared statements, and the unnamed statement with exec).
	for _, mode := range []string{"cache_statement", "exec"} {
		conn := e.connect(t, "1", "default_query_exec_mode", mode)
		b := &pgx.Batch{}
		b.Queue(q, "active", int64(0), ids[2])
		b.Queue(q, "active", ids[2], ids[5])
		br := conn.SendBatch(ctx(t), b)
		for i := 0; i < 2; i++ {
			rows, err := br.Query()
			require.NoError(t, err, "%s: execute %d", mode, i+1)
			names, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err, "%s: execute %d", mode, i+1)
			require.Len(t, names, 3)
		}
		require.NoError(t, br.Close())
	}
}

// reloadableCatalog is a catalog source for startGuard that loads the
// fixture database's catalog at start and again whenever *load is called
// (synchronously, unlike the Refresher).
func reloadableCatalog(t *testing.T, load *func()) func(c *pgtest.Cluster, db string) func() *rewriter.Catalog {
	return func(c *pgtest.Cluster, db string) func() *rewriter.Catalog {
		var cur atomic.Pointer[rewriter.Catalog]
		*load = func() {
			conn, err := c.Connect(context.Background(), db)
			require.NoError(t, err)
			defer conn.Close(context.Background())
			cat, err := catalog.LoadConn(context.Background(), conn, catalog.Options{})
			require.NoError(t, err)
			cur.Store(cat)
		}
		(*load)()
		return cur.Load
	}
}

// A view created after the catalog was loaded is refused (0A000,
// unknown_relation) instead of passing as a non-tenant relation, and the
// refusal asks for a reload; once the catalog lists the views they are judged
// by what they read: refused without the tenant column, scoped with it. A
// function created since is not taken for a builtin (unknown_function).
func TestRelationCreatedAfterTheCatalogLoad(t *testing.T) {
	var reloads atomic.Int32
	var load func()
	e := startGuard(t, basePolicy, reloadableCatalog(t, &load), func(o *guard.Options) {
		o.ReloadCatalog = func() { reloads.Add(1); load() }
	})
	direct := e.direct(t)
	_, err := direct.Exec(ctx(t), `CREATE VIEW late_names AS SELECT id, full_name FROM patients;
CREATE VIEW late_scoped AS SELECT id, clinic_id, full_name FROM patients;
GRANT SELECT ON late_names, late_scoped TO `+pgtest.AppUser)
	require.NoError(t, err)
	var mine int
	require.NoError(t, direct.QueryRow(ctx(t), "SELECT count(*) FROM patients WHERE clinic_id = 1").Scan(&mine))
	require.Positive(t, mine)

	conn := e.connect(t, "1")
	var n int
	err = conn.QueryRow(ctx(t), "SELECT count(*) FROM late_names").Scan(&n)
	pe := pgErr(t, err, "0A000")
	assert.Contains(t, pe.Message, "late_names is not in tenantguard's catalog")
	assert.NotEmpty(t, pe.Hint)
	assert.Equal(t, int32(1), reloads.Load(), "the refusal asks for a reload")
	assert.Contains(t, e.audit.String(), `"reason":"unknown_relation"`)

	// Reloaded: the views are known now.
	err = conn.QueryRow(ctx(t), "SELECT count(*) FROM late_names").Scan(&n)
	pe = pgErr(t, err, "0A000")
	assert.Contains(t, pe.Message, "does not expose the tenant column")
	for _, m := range modes {
		require.NoError(t, conn.QueryRow(ctx(t), "SELECT count(*) FROM late_scoped", m.mode).Scan(&n), m.name)
		assert.Equal(t, mine, n, "%s: only the tenant's rows", m.name)
	}

	// A function created since: not taken for a builtin.
	_, err = direct.Exec(ctx(t), `CREATE FUNCTION late_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM patients'`)
	require.NoError(t, err)
	err = conn.QueryRow(ctx(t), "SELECT late_count()").Scan(&n)
	pe = pgErr(t, err, "0A000")
	assert.Contains(t, pe.Message, "function late_count is not in tenantguard's catalog")
	assert.Equal(t, int32(2), reloads.Load(), "the refusal asks for a reload")
	err = conn.QueryRow(ctx(t), "SELECT late_count()").Scan(&n)
	pe = pgErr(t, err, "42501") // listed now, and it reads a tenant table
	assert.Contains(t, pe.Message, "late_count")

	// DDL through tenantguard reloads the catalog once it is committed.
	admin, err := pgx.Connect(ctx(t), e.url(pgtest.SuperUser))
	require.NoError(t, err)
	defer admin.Close(context.Background())
	before := reloads.Load()
	_, err = admin.Exec(ctx(t), "CREATE TABLE late_plain (id int)")
	require.NoError(t, err)
	assert.Equal(t, before+1, reloads.Load(), "autocommit DDL")
	tx, err := admin.Begin(ctx(t))
	require.NoError(t, err)
	_, err = tx.Exec(ctx(t), "CREATE TABLE late_plain2 (id int)")
	require.NoError(t, err)
	assert.Equal(t, before+1, reloads.Load(), "not before the commit")
	require.NoError(t, tx.Commit(ctx(t)))
	assert.Equal(t, before+2, reloads.Load(), "after the commit")
	_, err = admin.Exec(ctx(t), "SELECT 1")
	require.NoError(t, err)
	assert.Equal(t, before+2, reloads.Load(), "no DDL, no reload")
}

// A statement prepared (extended protocol) under one catalog is decided
// again at Bind once the catalog changed: PostgreSQL re-plans it when
// search_path changes, and the name may now reach a view over tenant tables
// that the new catalog refuses (review B3).
func TestPreparedStatementsAreDecidedAgainAfterACatalogChange(t *testing.T) {
	var load func()
	e := startGuard(t, basePolicy, reloadableCatalog(t, &load))
	direct := e.direct(t)
	_, err := direct.Exec(ctx(t), `CREATE TABLE plain_t (id int PRIMARY KEY, name text);
INSERT INTO plain_t VALUES (1, 'plain');
GRANT SELECT ON plain_t TO `+pgtest.AppUser)
	require.NoError(t, err)
	load()

	conn := e.connect(t, "1") // pgx caches prepared statements
	const q = "SELECT name FROM plain_t WHERE id = 1"
	var name string
	require.NoError(t, conn.QueryRow(ctx(t), q).Scan(&name))
	assert.Equal(t, "plain", name)
	// And one prepared in SQL.
	sqlConn := e.connect(t, "1")
	_, err = sqlConn.Exec(ctx(t), "PREPARE p AS "+q, pgx.QueryExecModeSimpleProtocol)
	require.NoError(t, err)
	require.NoError(t, sqlConn.QueryRow(ctx(t), "EXECUTE p", pgx.QueryExecModeSimpleProtocol).Scan(&name))
	assert.Equal(t, "plain", name)

	_, err = direct.Exec(ctx(t), `CREATE SCHEMA rep;
CREATE VIEW rep.plain_t AS SELECT id, full_name AS name FROM patients;
GRANT USAGE ON SCHEMA rep TO `+pgtest.AppUser+`;
GRANT SELECT ON rep.plain_t TO `+pgtest.AppUser)
	require.NoError(t, err)
	load()
	_, err = conn.Exec(ctx(t), "SET search_path = rep, public")
	require.NoError(t, err)
	err = conn.QueryRow(ctx(t), q).Scan(&name)
	pe := pgErr(t, err, "0A000")
	assert.Contains(t, pe.Message, "does not expose the tenant column")

	_, err = sqlConn.Exec(ctx(t), "SET search_path = rep, public", pgx.QueryExecModeSimpleProtocol)
	require.NoError(t, err)
	err = sqlConn.QueryRow(ctx(t), "EXECUTE p", pgx.QueryExecModeSimpleProtocol).Scan(&name)
	pe = pgErr(t, err, "0A000")
	assert.Contains(t, pe.Message, "prepared statement p was decided under an earlier policy or catalog")
	_, err = sqlConn.Exec(ctx(t), "DEALLOCATE p", pgx.QueryExecModeSimpleProtocol)
	require.NoError(t, err)
	_, err = sqlConn.Exec(ctx(t), "PREPARE p AS "+q, pgx.QueryExecModeSimpleProtocol)
	pe = pgErr(t, err, "0A000") // decided again: the name reaches the view now
	assert.Contains(t, pe.Message, "does not expose the tenant column")
}

// startRowGuard5 starts tenantguard with max_rows 5 and a catalog that
// (wrongly) calls patients.status unique, so that a statement on one status
// passes the static bound and only the run-time row guard can cut it.
func startRowGuard5(t *testing.T) *env {
	t.Helper()
	return startWith(t, rowGuard5Policy, rowGuard5Catalog())
}

// rowGuard5Policy allows 5 rows a result.
var rowGuard5Policy = strings.Replace(basePolicy, "max_rows: 50", "max_rows: 5", 1)

// rowGuard5Catalog claims status unique, so that a read by status passes
// the static bound and the row guard cuts it at run time.
func rowGuard5Catalog() *rewriter.Catalog {
	return &rewriter.Catalog{Relations: map[string]*rewriter.Relation{
		"public.patients": {Schema: "public", Name: "patients", Kind: rewriter.KindTable,
			Columns: []string{"id", "clinic_id", "full_name", "email", "status"}, UniqueKeys: [][]string{{"id"}, {"status"}}},
	}}
}

// TestJoinBoundedByUniqueKeys: a lookup joined to its parent by unique keys
// (a patient and its clinic, an invoice and its patient), and a list of
// primary-key values, pass without a LIMIT in every protocol, scoped to the session's tenant: another
// tenant's id finds nothing. The patient's invoices (many) stay refused.
func TestJoinBoundedByUniqueKeys(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "2")
	const withClinic = "SELECT p.full_name || ' / ' || c.name FROM patients p JOIN clinics c ON c.id = p.clinic_id WHERE p.id = $1"
	const chain = "SELECT i.memo || ' / ' || p.full_name FROM invoices i LEFT JOIN patients p ON p.id = i.patient_id JOIN clinics c ON c.id = p.clinic_id WHERE i.id = $1"
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			got := queryStrings(t, conn, m.mode, withClinic, 4)
			require.Len(t, got, 1)
			onlyMarker(t, "2", got)
			require.Contains(t, got[0], "clinic two")
			require.Empty(t, queryStrings(t, conn, m.mode, withClinic, 3), "patient 3 is tenant 1's")
			got = queryStrings(t, conn, m.mode, chain, 4)
			require.Len(t, got, 1)
			onlyMarker(t, "2", got)
			require.Empty(t, queryStrings(t, conn, m.mode, chain, 3))
			got = queryStrings(t, conn, m.mode, "SELECT full_name FROM patients WHERE id IN (4, 5, 7) ORDER BY id")
			require.Len(t, got, 2, "4 and 7 are tenant 2's, 5 is tenant 3's")
			onlyMarker(t, "2", got)
			_, err := conn.Exec(ctx(t), "SELECT p.full_name, i.memo FROM patients p JOIN invoices i ON i.patient_id = p.id WHERE p.id = $1", m.mode, 4)
			pgErr(t, err, "54000")
		})
	}
}

// TestArrayParamCheckedAtBind: WHERE id = ANY ($1) is bounded by the
// array's length, checked at Bind in binary (pgx) and text form: at most
// max_rows elements (50 here), one dimension in text. The simple protocol
// has no Bind to check it at: an array literal there is unbounded.
func TestArrayParamCheckedAtBind(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "2")
	const q = "SELECT full_name FROM patients WHERE id = ANY ($1) ORDER BY id"
	many := make([]int32, 51)
	for i := range many {
		many[i] = int32(i + 1)
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			if m.mode == pgx.QueryExecModeSimpleProtocol {
				_, err := conn.Exec(ctx(t), q, m.mode, []int32{4, 7})
				pgErr(t, err, "54000")
				return
			}
			got := queryStrings(t, conn, m.mode, q, []int32{4, 5, 7})
			require.Len(t, got, 2, "4 and 7 are tenant 2's, 5 is tenant 3's")
			onlyMarker(t, "2", got)
			got = queryStrings(t, conn, m.mode, q, many[:50])
			onlyMarker(t, "2", got)
			_, err := conn.Exec(ctx(t), q, m.mode, many)
			pe := pgErr(t, err, "54000")
			require.Contains(t, pe.Message, "array bound to parameter $1")
		})
	}
	t.Run("text", func(t *testing.T) {
		_, send := rawSession(t, e)
		r := send(&pgproto3.Parse{Name: "a", Query: "SELECT full_name FROM patients WHERE id = ANY ($1::int[])"},
			&pgproto3.Bind{PreparedStatement: "a", Parameters: [][]byte{[]byte(`{4, "5", 7}`)}}, &pgproto3.Execute{}, &pgproto3.Sync{})
		require.Equal(t, "12DCZ", r.types, "%v", r.errs)
		require.Len(t, r.rows, 2)
		onlyMarker(t, "2", r.rows)
		for _, v := range []string{"{{4},{7}}", "{" + strings.Repeat("1,", 50) + "1}", "not an array"} {
			r = send(&pgproto3.Bind{PreparedStatement: "a", Parameters: [][]byte{[]byte(v)}}, &pgproto3.Execute{}, &pgproto3.Sync{})
			require.Equal(t, "EZ", r.types, "%s", v)
			require.Equal(t, "54000", r.errs[0].Code, "%s", v)
		}
		r = send(&pgproto3.Bind{PreparedStatement: "a", Parameters: [][]byte{[]byte(`{"4,5",7}`)}}, &pgproto3.Execute{}, &pgproto3.Sync{})
		require.Equal(t, "EZ", r.types, "a quoted comma is one element: the server reads \"4,5\" and refuses it as an integer")
		require.Equal(t, "22P02", r.errs[0].Code)
	})
}
