package guard_test

import (
	"context"

	"fmt"
	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/guard"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
	"github.com/tenantguard/tenantguard/rewriter"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
)

// TestRev4FoldedExpressionsStillPrepared (found in review): PostgreSQL
// folds a cast of a number, or an immutable function without arguments
// (pi()), when it plans the text, so the text failed where the prepared
// form's generic plan (from the sixth execution) did not. Those shapes go
// as text now. An assignment to a column (UPDATE SET, INSERT ... SELECT)
// is the difference left, as the README says: the text's coercion of an
// out-of-range number fails when planned, the prepared form's only for a
// row it writes.
func TestRev4FoldedExpressionsStillPrepared(t *testing.T) {
	prep := start(t, basePolicy)
	text := textGuard(t)
	run := func(shape string, bad int64) (ft, fp *pgproto3.Frontend, sqls []string) {
		ft, fp = sessionPair(t, prep, text)
		return ft, fp, numbered(shape, 9, fmt.Sprintf(shape, bad))
	}
	for _, sh := range []struct {
		shape string
		bad   int64
	}{
		{"SELECT full_name, %d::smallint FROM patients WHERE id = 999", 40000},
		{"SELECT full_name, 1 / (%d * pi()) FROM patients WHERE id = 999", 0},
		{"INSERT INTO invoices (id, patient_id) SELECT id, %d::smallint FROM invoices WHERE id = 999", 40000},
	} {
		ft, fp, sqls := run(sh.shape, sh.bad)
		compareRuns(t, ft, fp, sqls...)
		require.Empty(t, preparedForms(t, fp), sh.shape)
	}
	ft, fp, sqls := run("UPDATE invoices SET patient_id = %d.5 WHERE id = 999", 99999999999)
	for _, sql := range sqls[:9] {
		compareRuns(t, ft, fp, sql)
	}
	last := sqls[9]
	require.True(t, strings.HasPrefix(query(t, ft, last)[0], "E 22003"))
	require.Equal(t, []string{"C UPDATE 0", "Z I"}, query(t, fp, last), "the README's difference")
}

// TestRev4NoticesOfTheText (found in review): PostgreSQL's parse of a
// Query may raise a NOTICE (an identifier truncated). A prepared form's
// Bind has no parse, so the client missed the notice, and on the run that
// prepared the shape it got it twice (the guard's Parse, then its Query).
// Such shapes go as text now, and notices during the guard's Parse are
// dropped.
func TestRev4NoticesOfTheText(t *testing.T) {
	prep := start(t, basePolicy)
	text := textGuard(t)
	ft, fp := sessionPair(t, prep, text)
	compareRuns(t, ft, fp, numbered("SELECT name AS this_is_a_very_long_alias_name_that_is_more_than_sixty_three_bytes_long_x FROM clinics WHERE id = %d", 4)...)
	// A shape with an identifier PostgreSQL truncates is not prepared.
	require.Empty(t, preparedForms(t, fp))
}

// ddlPolicy is basePolicy with app_user allowed DDL (a migration role that
// is still scoped).
const ddlPolicy = basePolicy + `  app_user:
    ddl: true
`

// TestRev4ExplainCreateTableAsExecuteReachesAReservedName (found in review, fixed): preparedOp
// sees EXECUTE alone, in EXPLAIN and in CREATE TABLE AS, but not in EXPLAIN
// of CREATE TABLE AS: a role allowed DDL runs the guard's prepared form
// with parameters of its own choosing (no LIMIT check, no row guard), and
// the statements it prepared itself are run without the "decided under an
// earlier policy or catalog" check.
func TestRev4ExplainCreateTableAsExecuteReachesAReservedName(t *testing.T) {
	e := start(t, ddlPolicy)
	fe := rawFrontend(t, e)
	for _, id := range []int{1, 4, 7} {
		require.Equal(t, "C SELECT 1", query(t, fe, fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", id))[2])
	}
	name := formName(t, fe)
	got := query(t, fe, "CREATE TEMP TABLE a AS EXECUTE "+name+"(4)")
	require.True(t, strings.HasPrefix(got[0], "E 42501"), "%v", got)
	got = query(t, fe, "EXPLAIN ANALYZE CREATE TEMP TABLE b AS EXECUTE "+name+"(4)")
	require.True(t, strings.HasPrefix(got[0], "E 42501"), "the reserved name was executed: %v", got)
}

// TestRev4ClientRaised26000TurnsFormsOffAndLeaks (found in review): any
// 26000 of a statement in its prepared form was taken for "the upstream
// lost a prepared statement", though a function may raise it (RAISE
// SQLSTATE '26000'): the session's forms were forgotten, their Closes never
// sent, and the feature turned off. Only the server's error naming the
// statement counts now.
func TestRev4ClientRaised26000TurnsFormsOffAndLeaks(t *testing.T) {
	withFunc := func(c *pgtest.Cluster, db string) func() *rewriter.Catalog {
		require.NoError(t, c.Exec(context.Background(), db, `CREATE FUNCTION public.check_id(i int) RETURNS int LANGUAGE plpgsql AS $f$
BEGIN IF i = 0 THEN RAISE SQLSTATE '26000' USING MESSAGE = 'no such thing'; END IF; RETURN i; END $f$`))
		return loadedCatalog(t, nil)(c, db)
	}
	e := startGuard(t, basePolicy+"  app_user:\n    functions: [public.check_id]\n", withFunc)
	fe := rawFrontend(t, e)
	for _, id := range []int{1, 4, 7} {
		require.Equal(t, "C SELECT 1", query(t, fe, fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", id))[2])
	}
	for _, v := range []int{1, 2, 3} {
		got := query(t, fe, fmt.Sprintf("SELECT full_name, check_id(id - %d) FROM patients WHERE id = 4", v))
		require.Len(t, got, 4, "%v", got)
	}
	require.Equal(t, `D "2"`, guardStatements(t, fe))
	got := query(t, fe, "SELECT full_name, check_id(id - 4) FROM patients WHERE id = 4")
	require.True(t, strings.HasPrefix(got[1], "E 26000"), "%v", got)
	for _, id := range []int{10, 13, 16} {
		require.Equal(t, "C SELECT 1", query(t, fe, fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", id))[2])
	}
	// Nothing was forgotten or turned off: the function's shape ran
	// prepared twice (the second time into its error), the other shape
	// four times.
	forms := preparedForms(t, fe)
	require.Len(t, forms, 2, "%v", forms)
	require.True(t, strings.HasSuffix(forms[0], " x4"), "the shape still runs prepared: %v", forms)
	require.True(t, strings.HasSuffix(forms[1], " x2"), "%v", forms)
}

// TestRev4DeallocateAllPreparedForLater (found in review, fixed): trackPrepared forgets the forms
// when DEALLOCATE ALL is decided, at its Parse; a statement prepared with
// it and executed later drops the guard's statements upstream unseen. The
// next statement of a prepared shape fails with "prepared statement
// tg_prepared_... does not exist" where its text runs (and the session's
// forms are off from then on).
func TestRev4DeallocateAllPreparedForLater(t *testing.T) {
	e := start(t, basePolicy)
	fe := rawFrontend(t, e)
	run := func(id int) []string {
		return query(t, fe, fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", id))
	}
	require.Equal(t, "C SELECT 1", run(1)[1+1])
	got := sendBatch(t, fe, 1, &pgproto3.Parse{Name: "s1", Query: "DEALLOCATE ALL"}, &pgproto3.Sync{})
	require.Equal(t, []string{"*pgproto3.ParseComplete", "Z I"}, got)
	for _, id := range []int{4, 7} { // prepare the shape, run it prepared
		require.Equal(t, "C SELECT 1", run(id)[2])
	}
	got = sendBatch(t, fe, 1, &pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	require.Equal(t, []string{"*pgproto3.BindComplete", "C DEALLOCATE ALL", "Z I"}, got)
	got = run(10)
	require.Equal(t, []string{`D "patient 10 TENANT2"`, "C SELECT 1", "Z I"}, got[1:], "%v", got)
}

// TestRev4FatalDuringPreparationIsDropped (found in review, fixed): the guard takes every
// ErrorResponse while its own Parse is answered for the Parse's, a FATAL
// too: a session terminated while the guard prepares a shape (its Parse
// waits for a lock) loses the server's 57P01 message; the client sees the
// connection end with no error.
func TestRev4FatalDuringPreparationIsDropped(t *testing.T) {
	for _, keep := range []bool{true, false} {
		t.Run(fmt.Sprintf("keepSimple=%t", keep), func(t *testing.T) { fatalDuringPreparation(t, keep) })
	}
}

func fatalDuringPreparation(t *testing.T, keep bool) {
	e := startGuard(t, basePolicy, loadedCatalog(t, nil), func(o *guard.Options) { o.KeepSimple = keep })
	fe := rawFrontend(t, e)
	require.Equal(t, "C SELECT 1", query(t, fe, "SELECT full_name FROM patients WHERE id = 1")[2])
	var pid int
	for _, l := range query(t, fe, "SELECT pg_backend_pid()") {
		if strings.HasPrefix(l, "D ") {
			_, err := fmt.Sscanf(strings.Trim(l[2:], `"`), "%d", &pid)
			require.NoError(t, err)
		}
	}
	require.NotZero(t, pid)
	locker := e.direct(t)
	tx, err := locker.Begin(ctx(t))
	require.NoError(t, err)
	_, err = tx.Exec(ctx(t), "LOCK TABLE patients IN ACCESS EXCLUSIVE MODE")
	require.NoError(t, err)
	fe.Send(q("SELECT full_name FROM patients WHERE id = 4")) // prepares the shape: its Parse waits
	require.NoError(t, fe.Flush())
	watcher := e.direct(t)
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, watcher.QueryRow(ctx(t), "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", pid).Scan(&n))
		return n > 0
	}, 10*time.Second, 10*time.Millisecond)
	_, err = watcher.Exec(ctx(t), "SELECT pg_terminate_backend($1)", pid)
	require.NoError(t, err)
	var msgs []string
	for {
		m, err := fe.Receive()
		if err != nil {
			break
		}
		msgs = append(msgs, fmt.Sprintf("%T %+v", m, m))
	}
	require.NoError(t, tx.Rollback(ctx(t)))
	require.NotEmpty(t, msgs, "the client got no error before the connection ended")
	require.Contains(t, strings.Join(msgs, "\n"), "57P01")
}

// sessionCapture is the guard's hooks, remembering the last session.
type sessionCapture struct {
	*guard.Guard
	mu   sync.Mutex
	last *proxy.Session
}

func (h *sessionCapture) OnStartup(s *proxy.Session) error {
	h.mu.Lock()
	h.last = s
	h.mu.Unlock()
	return h.Guard.OnStartup(s)
}

// TestRev4RejectionsLeakInAFailedBlock (found in review, fixed): a refusal's sentinel answered
// with 25P02 (a failed transaction block) is popped as an ordinary error
// and its registration stays in c.rejects for the rest of the session; so
// does a refused Parse or Bind skipped after an earlier error of its
// cycle. A client grows the proxy's memory without bound.
func TestRev4RejectionsLeakInAFailedBlock(t *testing.T) {
	e := start(t, basePolicy)
	hooks := &sessionCapture{Guard: e.guard}
	serve(t, e, e.guard, func(cfg *proxy.Config) { cfg.Hooks = hooks })
	fe := rawFrontend(t, e)
	require.Equal(t, []string{"C BEGIN", "Z T"}, query(t, fe, "BEGIN"))
	got := query(t, fe, "SELECT 1 / 0")
	require.True(t, strings.HasPrefix(got[0], "E 22012"), "%v", got)
	for i := 0; i < 20; i++ {
		got = query(t, fe, "SELECT full_name FROM patients")
		require.True(t, strings.HasPrefix(got[0], "E 25P02"), "%v", got)
	}
	require.Equal(t, []string{"C ROLLBACK", "Z I"}, query(t, fe, "ROLLBACK"))
	for i := 0; i < 20; i++ {
		got = sendBatch(t, fe, 1,
			&pgproto3.Bind{PreparedStatement: "nope"}, &pgproto3.Execute{},
			&pgproto3.Parse{Name: "r", Query: "SELECT full_name FROM patients"}, &pgproto3.Sync{})
		require.True(t, strings.HasPrefix(got[0], "E 26000"), "%v", got)
	}
	hooks.mu.Lock()
	s := hooks.last
	hooks.mu.Unlock()
	require.Equal(t, 0, guard.PendingRejections(s), "registrations nobody will match")
}
