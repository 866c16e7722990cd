package guard_test

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/admin"
	"github.com/tenantguard/tenantguard/proxy/audit"
	"github.com/tenantguard/tenantguard/proxy/guard"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
	"github.com/tenantguard/tenantguard/rewriter"
)

// Tests written while reviewing the dynamic backend interest (the guard
// asks for BindComplete, NoData, RowDescription and ParameterDescription
// only while a row-guard cut drops a cycle's replies).

const cutQuery = "SELECT full_name FROM patients WHERE status = 'active'" // 10 rows for tenant 2, max_rows 5

func param(v string) [][]byte { return [][]byte{[]byte(v)} }

// TestCutThenPipelinedCycles: the cycles pipelined after a cut one (in the
// same write, so in the same upstream read buffer as the cut) get every
// reply of theirs: the guard stops asking for them, and stops dropping
// them, at the cut cycle's ReadyForQuery. A cut inside a multi-statement
// simple Query drops the later statement's RowDescription too.
func TestCutThenPipelinedCycles(t *testing.T) {
	e := startRowGuard5(t)
	fe, send := rawSession(t, e)
	r := send(
		&pgproto3.Parse{Name: "big", Query: cutQuery}, &pgproto3.Bind{PreparedStatement: "big"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Parse{Name: "one", Query: "SELECT full_name FROM patients WHERE id = $1"},
		&pgproto3.Bind{PreparedStatement: "one", Parameters: param("4")}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Describe{ObjectType: 'S', Name: "one"}, &pgproto3.Bind{PreparedStatement: "one", Parameters: param("7")}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Query{String: cutQuery + "; SELECT 1"},
		&pgproto3.Bind{PreparedStatement: "big"}, &pgproto3.Execute{}, // cut again, then a NoData in the same cycle
		&pgproto3.Parse{Query: "SET app.clinic_id = 2"}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Query{String: "SELECT full_name FROM patients WHERE id = 10"},
	)
	require.Equal(t, "12DEZ", r.types)
	require.Equal(t, "54000", r.errs[0].Code)
	require.Len(t, r.rows, 5)
	r = receiveUntilReady(t, fe)
	require.Equal(t, "12TDCZ", r.types, "%v", r.errs)
	onlyMarker(t, "2", r.rows)
	r = receiveUntilReady(t, fe)
	require.Equal(t, "tT2DCZ", r.types, "%v", r.errs)
	r = receiveUntilReady(t, fe)
	require.Equal(t, "TDEZ", r.types, "the second statement's RowDescription, row and tag are dropped")
	require.Len(t, r.rows, 5)
	r = receiveUntilReady(t, fe)
	require.Equal(t, "2DEZ", r.types, "no ParseComplete, BindComplete, NoData or tag after the cut")
	r = receiveUntilReady(t, fe)
	require.Equal(t, "TDCZ", r.types)
	onlyMarker(t, "2", r.rows)
}

// TestCutAcrossHandBack: a cut that starts in the event loop (OnRows) and
// goes on on the relay goroutines (a DataRow over 64 KiB hands the session
// back): the replies after the cut are still dropped there, and the next
// cycle, on the goroutines, gets its replies again.
func TestCutAcrossHandBack(t *testing.T) {
	e := startRowGuard5(t)
	_, err := e.direct(t).Exec(ctx(t), "UPDATE patients SET full_name = repeat('x', 200000) || ' TENANT2' WHERE id = 4")
	require.NoError(t, err)
	fe, send := rawSession(t, e)
	r := send(
		&pgproto3.Parse{Query: cutQuery}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "one", Query: "SELECT full_name FROM patients WHERE id = $1"},
		&pgproto3.Bind{PreparedStatement: "one", Parameters: param("4")}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "one", Parameters: param("7")}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "one", Parameters: param("4")}, &pgproto3.Execute{}, &pgproto3.Sync{},
	)
	require.Equal(t, "12DEZ", r.types)
	require.Equal(t, "54000", r.errs[0].Code)
	r = receiveUntilReady(t, fe)
	require.Equal(t, "2TDCZ", r.types, "%v", r.errs)
	onlyMarker(t, "2", r.rows)
	r = receiveUntilReady(t, fe)
	require.Equal(t, "2DCZ", r.types, "%v", r.errs)
	require.Len(t, r.rows, 1)
	require.True(t, strings.HasSuffix(r.rows[0], " TENANT2"))
}

// TestCutOverClientTLS: a client TLS session runs on two relay goroutines
// (OnFrontend and OnBackend concurrently): cuts and the cycles after them
// in one long pipeline, under -race, with the interest switching on the
// backend goroutine while the frontend one decides the next messages.
func TestCutOverClientTLS(t *testing.T) {
	_, fe := rowGuard5TLSSession(t, 30*time.Second)
	fe.Send(&pgproto3.Parse{Name: "big", Query: cutQuery})
	fe.Send(&pgproto3.Parse{Name: "one", Query: "SELECT full_name FROM patients WHERE id = $1"})
	fe.Send(&pgproto3.Sync{})
	require.NoError(t, fe.Flush())
	require.Equal(t, "11Z", receiveUntilReady(t, fe).types)
	const rounds = 50
	go func() {
		for i := 0; i < rounds; i++ {
			fe.Send(&pgproto3.Bind{PreparedStatement: "big"})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Bind{PreparedStatement: "one", Parameters: param("4")})
			fe.Send(&pgproto3.Describe{ObjectType: 'P'})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Sync{})
			fe.Send(&pgproto3.Describe{ObjectType: 'S', Name: "one"})
			fe.Send(&pgproto3.Bind{PreparedStatement: "one", Parameters: param("7")})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Sync{})
			if err := fe.Flush(); err != nil {
				return
			}
		}
	}()
	for i := 0; i < rounds; i++ {
		r := receiveUntilReady(t, fe)
		require.Equal(t, "2DEZ", r.types, "round %d", i)
		r = receiveUntilReady(t, fe)
		require.Equal(t, "tT2DCZ", r.types, "round %d: %v", i, r.errs)
		onlyMarker(t, "2", r.rows)
	}
}

// TestCutAuditsWhatRan: the statements after the cut one in its cycle still
// run upstream (the server saw no error: the client alone is told the cycle
// failed, see the README's limits), so the audit records them as they ran,
// not as skipped.
func TestCutAuditsWhatRan(t *testing.T) {
	e := startRowGuard5(t)
	_, send := rawSession(t, e)
	r := send(&pgproto3.Query{String: cutQuery + "; UPDATE patients SET email = 'changed-after-cut' WHERE id = 4; SELECT 1/0"})
	require.Equal(t, "TDEZ", r.types)
	require.Equal(t, "54000", r.errs[0].Code)
	var email string
	require.NoError(t, e.direct(t).QueryRow(ctx(t), "SELECT email FROM patients WHERE id = 4").Scan(&email))
	require.NotEqual(t, "changed-after-cut", email, "the division by zero fails the implicit transaction upstream: nothing of it commits")

	r = send(&pgproto3.Query{String: cutQuery + "; UPDATE patients SET email = 'changed-after-cut' WHERE id = 4"})
	require.Equal(t, "TDEZ", r.types)
	require.NoError(t, e.direct(t).QueryRow(ctx(t), "SELECT email FROM patients WHERE id = 4").Scan(&email))
	require.Equal(t, "changed-after-cut", email, "without an error upstream the UPDATE commits")

	var updates []string
	for _, l := range strings.Split(e.audit.String(), "\n") {
		if strings.Contains(l, `"kind":"update"`) {
			updates = append(updates, l)
		}
	}
	require.Len(t, updates, 2, "%s", e.audit.String())
	require.Contains(t, updates[0], `"rows":1`, "the UPDATE ran (and rolled back with its transaction): %s", updates[0])
	require.NotContains(t, updates[0], "not_executed", "%s", updates[0])
	require.Contains(t, e.audit.String(), `"sqlstate":"22012"`, "the division's failure is audited")
	require.Contains(t, updates[1], `"rows":1`, "%s", updates[1])
	require.NotContains(t, updates[1], "not_executed", "%s", updates[1])
}

// TestCutFailsItsTransactionBlock: a cut inside a transaction block fails
// the transaction upstream, as the error the client is told of would have:
// the next statement gets 25P02 from the server, COMMIT rolls back (the
// writes before the cut and the one after it in the same Query or pipeline
// are undone), and ROLLBACK TO SAVEPOINT recovers what came before the
// savepoint, exactly as in PostgreSQL. Outside a transaction block nothing
// is added (TestCutAuditsWhatRan).
func TestCutFailsItsTransactionBlock(t *testing.T) {
	e := startRowGuard5(t)
	_, send := rawSession(t, e)
	email := func() string { return patient4Email(t, e) }
	before := email()
	ready := func(r received, types string, status byte) {
		t.Helper()
		require.Equal(t, types, r.types, "%v", r.errs)
		require.Equal(t, string(status), string(r.status))
	}

	t.Run("simple", func(t *testing.T) {
		ready(send(&pgproto3.Query{String: "BEGIN; UPDATE patients SET email = 'before-cut' WHERE id = 4"}), "CCZ", 'T')
		r := send(&pgproto3.Query{String: cutQuery + "; UPDATE patients SET email = 'after-cut' WHERE id = 4"})
		ready(r, "TDEZ", 'E')
		require.Equal(t, "54000", r.errs[0].Code)
		r = send(&pgproto3.Query{String: "SELECT full_name FROM patients WHERE id = 4"})
		ready(r, "EZ", 'E')
		require.Equal(t, "25P02", r.errs[0].Code, "the server itself refuses statements in the failed transaction")
		ready(send(&pgproto3.Query{String: "COMMIT"}), "CZ", 'I')
		require.Equal(t, before, email(), "COMMIT of the failed transaction rolled back both writes")
	})

	t.Run("extended", func(t *testing.T) {
		ready(send(&pgproto3.Query{String: "BEGIN"}), "CZ", 'T')
		r := send(
			&pgproto3.Parse{Query: "UPDATE patients SET email = 'before-cut' WHERE id = 4"}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: cutQuery}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: "UPDATE patients SET email = 'after-cut' WHERE id = 4"}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Sync{})
		ready(r, "12C12DEZ", 'E')
		require.Equal(t, "54000", r.errs[0].Code)
		r = send(&pgproto3.Parse{Query: "COMMIT"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		ready(r, "12CZ", 'I')
		require.Equal(t, before, email())
	})

	t.Run("savepoint", func(t *testing.T) {
		ready(send(&pgproto3.Query{String: "BEGIN; UPDATE patients SET email = 'kept' WHERE id = 4; SAVEPOINT s"}), "CCCZ", 'T')
		ready(send(&pgproto3.Query{String: cutQuery + "; UPDATE patients SET email = 'after-cut' WHERE id = 4"}), "TDEZ", 'E')
		ready(send(&pgproto3.Query{String: "ROLLBACK TO SAVEPOINT s"}), "CZ", 'T')
		ready(send(&pgproto3.Query{String: "COMMIT"}), "CZ", 'I')
		require.Equal(t, "kept", email(), "the write before the savepoint commits, the one after the cut does not")
	})

	t.Run("pipelined", func(t *testing.T) {
		// A cycle the client sent before the cut cycle's ReadyForQuery is
		// upstream before the guard's abort Query: it runs (the client is
		// shown the transaction failed), and the transaction fails after
		// it, before anything the client sends next.
		was := email()
		fe, _ := rawSession(t, e)
		fe.Send(&pgproto3.Query{String: "BEGIN; UPDATE patients SET email = 'before-cut' WHERE id = 4"})
		fe.Send(&pgproto3.Query{String: cutQuery})
		fe.Send(&pgproto3.Query{String: "SELECT full_name FROM patients WHERE id = 4"})
		require.NoError(t, fe.Flush())
		ready(receiveUntilReady(t, fe), "CCZ", 'T')
		ready(receiveUntilReady(t, fe), "TDEZ", 'E')
		ready(receiveUntilReady(t, fe), "TDCZ", 'E')
		fe.Send(&pgproto3.Query{String: "SELECT 1"})
		require.NoError(t, fe.Flush())
		r := receiveUntilReady(t, fe)
		ready(r, "EZ", 'E')
		require.Equal(t, "25P02", r.errs[0].Code)
		fe.Send(&pgproto3.Query{String: "COMMIT"})
		require.NoError(t, fe.Flush())
		ready(receiveUntilReady(t, fe), "CZ", 'I')
		require.Equal(t, was, email())
	})

	require.NotContains(t, e.audit.String(), "tg_reject_", "the guard's own Query is not a client statement")
	ready(send(&pgproto3.Query{String: "SELECT full_name FROM patients WHERE id = 4"}), "TDCZ", 'I')
}

// rowGuard5TLSSession serves the row-guard setup (max_rows 5, status taken
// for unique) over client TLS and returns a raw session pinned to tenant 2
// on it (and the setup), its connection closed at the end of the test.
func rowGuard5TLSSession(t *testing.T, deadline time.Duration) (*env, *pgproto3.Frontend) {
	t.Helper()
	e := startRowGuard5(t)
	// A second server over the same guard setup, answering TLS.
	pol, err := policy.Parse([]byte(rowGuard5Policy), "test.yaml")
	require.NoError(t, err)
	al, err := audit.New(audit.Options{Stdout: &syncBuffer{}})
	require.NoError(t, err)
	cat := rowGuard5Catalog()
	g := guard.New(guard.Options{Policies: policy.NewHolder(pol), Audit: al, Metrics: admin.NewMetrics(), Logger: zaptest.NewLogger(t),
		Catalog: func() *rewriter.Catalog { return cat }})
	serve(t, e, g, func(cfg *proxy.Config) { cfg.TLSCertFile, cfg.TLSKeyFile = e.c.CertFile, e.c.KeyFile })
	u := strings.Replace(e.url(pgtest.AppUser, "app.clinic_id", "2"), "sslmode=disable", "sslmode=require", 1)
	conn, err := pgx.Connect(ctx(t), u)
	require.NoError(t, err)
	hj, err := conn.PgConn().Hijack()
	require.NoError(t, err)
	t.Cleanup(func() { hj.Conn.Close() })
	_, isTLS := hj.Conn.(*tls.Conn)
	require.True(t, isTLS)
	require.NoError(t, hj.Conn.SetDeadline(time.Now().Add(deadline)))
	return e, hj.Frontend
}

// patient4Email reads patient 4's email directly on the server (what has
// committed).
func patient4Email(t *testing.T, e *env) string {
	t.Helper()
	var v string
	require.NoError(t, e.direct(t).QueryRow(ctx(t), "SELECT email FROM patients WHERE id = 4").Scan(&v))
	return v
}
