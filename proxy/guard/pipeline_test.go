package guard_test

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
)

// The tests of this file came from a review of the pinned-literal change:
// each one failed before the fix its comment names.

// rawSession opens a pinned session (tenant 2) through the guard and
// returns its frontend and a send helper that reads up to ReadyForQuery.
func rawSession(t *testing.T, e *env) (*pgproto3.Frontend, func(msgs ...pgproto3.FrontendMessage) received) {
	conn := e.connect(t, "2")
	hj, err := conn.PgConn().Hijack()
	require.NoError(t, err)
	t.Cleanup(func() { hj.Conn.Close() })
	require.NoError(t, hj.Conn.SetDeadline(time.Now().Add(20*time.Second)))
	fe := hj.Frontend
	return fe, func(msgs ...pgproto3.FrontendMessage) received {
		t.Helper()
		for _, m := range msgs {
			fe.Send(m)
		}
		require.NoError(t, fe.Flush())
		return receiveUntilReady(t, fe)
	}
}

// TestSyncDuringCopyInEndsNoCycle: a server in copy-in mode ignores a Sync
// (libpq sends one after Execute and another after CopyDone), so it ends no
// cycle of the guard's either; counted, it put the guard a cycle ahead, and
// a failed Parse's record was confirmed by the next ParseComplete, clearing
// the name's literal mark (the pinned statement then ran under tenant 3).
func TestSyncDuringCopyInEndsNoCycle(t *testing.T) {
	e := start(t, basePolicy)
	_, send := rawSession(t, e)
	const q = "SELECT full_name FROM patients WHERE id > $1 ORDER BY id LIMIT 3"
	zero := [][]byte{[]byte("0")}

	require.Equal(t, "1Z", send(&pgproto3.Parse{Name: "s1", Query: q}, &pgproto3.Sync{}).types)
	r := send(&pgproto3.Parse{Query: "COPY clinics FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Sync{}, // ignored by the server in copy-in mode
		&pgproto3.CopyData{Data: []byte("9001\tcopied\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
	require.Equal(t, "12CZ", r.types, "%v", r.errs)
	require.Equal(t, "CZ", send(&pgproto3.Query{String: "SET app.clinic_id = 3"}).types)
	r = send(&pgproto3.Parse{Name: "s1", Query: q}, &pgproto3.Sync{})
	require.Equal(t, "EZ", r.types)
	require.Equal(t, "42P05", r.errs[0].Code)
	require.Equal(t, "1Z", send(&pgproto3.Parse{Name: "s3", Query: "SELECT 1"}, &pgproto3.Sync{}).types)
	require.Equal(t, []string{"3"}, send(&pgproto3.Query{String: "SELECT current_setting('app.clinic_id')"}).rows)
	r = send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: zero}, &pgproto3.Execute{}, &pgproto3.Sync{})
	require.Equal(t, "2DCZ", r.types)
	t.Logf("rows after SET app.clinic_id = 3: %v; upstream text: %s", r.rows, upstreamQuery(t, e))
	onlyMarker(t, "3", r.rows)
}

// TestHiddenTenantChangesEndThePin: every way of changing the tenant the
// guard accepts (case-folded or quoted setting names, pg_catalog.set_config,
// SET ... TO, SET LOCAL in a block) ends the pin, so later statements read
// the tenant the server holds (this one passed before the fixes).
func TestHiddenTenantChangesEndThePin(t *testing.T) {
	e := start(t, basePolicy)
	cases := [][]string{
		{"PREPARE setit(text) AS SELECT set_config('app.clinic_id', $1, false)", "EXECUTE setit('3')"},
		{"SELECT set_config('APP.CLINIC_ID', '3', false)"},
		{`SET "app"."clinic_id" = 3`},
		{"SET app.CLINIC_ID = 3"},
		{"SELECT pg_catalog.set_config('app.clinic_id', '3', false)"},
		{"SET app.clinic_id TO 3"},
		{"BEGIN", "SET LOCAL app.clinic_id = 3", "COMMIT"},
	}
	for _, stmts := range cases {
		_, send := rawSession(t, e)
		ok := true
		for _, s := range stmts {
			r := send(&pgproto3.Query{String: s})
			if len(r.errs) > 0 {
				t.Logf("%q refused: %s %s", s, r.errs[0].Code, r.errs[0].Message)
				ok = false
			}
		}
		if !ok {
			send(&pgproto3.Query{String: "ROLLBACK"})
			continue
		}
		show := send(&pgproto3.Query{String: "SELECT current_setting('app.clinic_id')"})
		rows := send(&pgproto3.Query{String: "SELECT full_name FROM patients ORDER BY id LIMIT 2"})
		t.Logf("%q: server setting %v, rows %v %v", stmts, show.rows, rows.rows, rows.errs)
		if len(show.rows) == 1 && len(rows.rows) > 0 {
			for _, v := range rows.rows {
				require.Contains(t, v, "TENANT"+show.rows[0], "%q", stmts)
			}
		}
	}
}

// TestDeallocateAllIsNotUndone: a Close the server skipped is not undone
// when a DEALLOCATE ALL came after it; undone, the guard prepared the
// deallocated statement again itself and the client's Bind ran instead of
// failing with 26000 as on PostgreSQL.
func TestDeallocateAllIsNotUndone(t *testing.T) {
	e := start(t, basePolicy)
	fe, send := rawSession(t, e)
	const q = "SELECT full_name FROM patients WHERE id > $1 ORDER BY id LIMIT 3"
	zero := [][]byte{[]byte("0")}
	require.Equal(t, "1Z", send(&pgproto3.Parse{Name: "s1", Query: q}, &pgproto3.Sync{}).types)
	require.Equal(t, "CZ", send(&pgproto3.Query{String: "SET app.clinic_id = 3"}).types)
	for _, m := range []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT 1 / 0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{}, &pgproto3.Query{String: "DEALLOCATE ALL"}} {
		fe.Send(m)
	}
	require.NoError(t, fe.Flush())
	require.Equal(t, "1EZ", receiveUntilReady(t, fe).types)
	require.Equal(t, "CZ", receiveUntilReady(t, fe).types)
	r := send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: zero}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Logf("replies %s rows %v", r.types, r.rows)
	require.Equal(t, "EZ", r.types, "PostgreSQL: s1 was deallocated")
	require.Equal(t, "26000", r.errs[0].Code)
}

// TestFailedSetThenPipelinedBegin: a failed implicit transaction's SET is
// undone even when a BEGIN was pipelined after it (the guard used to look
// at its own state, already inside that BEGIN's block, and kept tenant 3
// while the server held 2).
func TestFailedSetThenPipelinedBegin(t *testing.T) {
	e := start(t, basePolicy)
	fe, send := rawSession(t, e)
	fe.Send(&pgproto3.Query{String: "SET app.clinic_id = 3; SELECT 1 / 0"})
	fe.Send(&pgproto3.Query{String: "BEGIN"})
	require.NoError(t, fe.Flush())
	require.Equal(t, "CEZ", receiveUntilReady(t, fe).types)
	require.Equal(t, "CZ", receiveUntilReady(t, fe).types)
	show := send(&pgproto3.Query{String: "SELECT current_setting('app.clinic_id')"})
	r := send(&pgproto3.Query{String: "INSERT INTO patients (id, clinic_id, full_name) VALUES (1000, 3, 'x') RETURNING clinic_id"})
	t.Logf("server setting %v; insert of clinic 3: %s %v %v", show.rows, r.types, r.rows, r.errs)
	send(&pgproto3.Query{String: "COMMIT"})
	require.Equal(t, []string{"2"}, show.rows)
	require.NotEmpty(t, r.errs, "PostgreSQL holds tenant 2: an insert into clinic 3 is cross-tenant")
}

// TestRowGuardCutThenErrorUndoesSet: the row guard cuts a result, a SET
// later in the same cycle runs, then an error rolls the implicit
// transaction back: the SET is undone although the cycle's replies are
// being cut (onError used to return before undoing).
func TestRowGuardCutThenErrorUndoesSet(t *testing.T) {
	e := startRowGuard5(t)
	_, send := rawSession(t, e)
	r := send(
		&pgproto3.Parse{Query: "SELECT full_name FROM patients WHERE status = 'active'"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SET app.clinic_id = 3"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT 1 / 0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	t.Logf("cut cycle replies: %s", r.types)
	require.Equal(t, "54000", r.errs[0].Code)
	requireServerAndGuardOnTenant2(t, send)
}

// TestSkippedPreparingAgainIsRetried: the guard's Close+Parse for s1 is
// skipped by an error earlier in its cycle, and the next cycle, sent in the
// same flush, was decided before that failure was seen: the name keeps its
// literal mark until the server confirms a Parse, so that Bind prepares s1
// again too (onBind used to clear the mark at once, and tenant 2's literal
// ran under tenant 3).
func TestSkippedPreparingAgainIsRetried(t *testing.T) {
	e := start(t, basePolicy)
	fe, send := rawSession(t, e)
	const q = "SELECT full_name FROM patients WHERE id > $1 ORDER BY id LIMIT 3"
	zero := [][]byte{[]byte("0")}
	require.Equal(t, "1Z", send(&pgproto3.Parse{Name: "s1", Query: q}, &pgproto3.Sync{}).types)
	require.Equal(t, "CZ", send(&pgproto3.Query{String: "SET app.clinic_id = 3"}).types)
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: "SELECT 1 / 0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "s1", Parameters: zero}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "s1", Parameters: zero}, &pgproto3.Execute{}, &pgproto3.Sync{},
	} {
		fe.Send(m)
	}
	require.NoError(t, fe.Flush())
	require.Equal(t, "1EZ", receiveUntilReady(t, fe).types)
	r := receiveUntilReady(t, fe)
	t.Logf("second cycle: %s rows %v; upstream text: %s", r.types, r.rows, upstreamQuery(t, e))
	require.Equal(t, "2DCZ", r.types)
	onlyMarker(t, "3", r.rows)
}

// TestFailedSetThenEmptyTransaction: a failed cycle's SET is undone when a
// later pipelined cycle only opened and closed an empty transaction (the
// undo compared whole tracker states, transaction bookkeeping included).
func TestFailedSetThenEmptyTransaction(t *testing.T) {
	e := start(t, basePolicy)
	fe, send := rawSession(t, e)
	fe.Send(&pgproto3.Query{String: "SET app.clinic_id = 3; SELECT 1 / 0"})
	fe.Send(&pgproto3.Query{String: "BEGIN"})
	fe.Send(&pgproto3.Query{String: "COMMIT"})
	require.NoError(t, fe.Flush())
	require.Equal(t, "CEZ", receiveUntilReady(t, fe).types)
	require.Equal(t, "CZ", receiveUntilReady(t, fe).types)
	require.Equal(t, "CZ", receiveUntilReady(t, fe).types)
	requireServerAndGuardOnTenant2(t, send)
}

// TestReadyKeepsLaterPortals: an idle ReadyForQuery ends the portals of the
// cycles the server finished, not those the client already bound for the
// next cycle (clearing them lost a SET's tenant effect at its Execute, and
// the session stayed pinned while the server held tenant 3).
func TestReadyKeepsLaterPortals(t *testing.T) {
	e := start(t, basePolicy)
	fe, send := rawSession(t, e)
	fe.Send(&pgproto3.Query{String: "SELECT 1"})
	fe.Send(&pgproto3.Parse{Query: "SET app.clinic_id = 3"})
	fe.Send(&pgproto3.Bind{})
	require.NoError(t, fe.Flush())
	require.Equal(t, "TDCZ", receiveUntilReady(t, fe).types) // the guard has seen this ReadyForQuery
	require.Equal(t, "12CZ", send(&pgproto3.Execute{}, &pgproto3.Sync{}).types)
	show := send(&pgproto3.Query{String: "SELECT current_setting('app.clinic_id')"})
	r := send(&pgproto3.Query{String: "SELECT full_name FROM patients ORDER BY id LIMIT 2"})
	t.Logf("server setting %v; rows %v; upstream text: %s", show.rows, r.rows, upstreamQuery(t, e))
	require.Equal(t, []string{"3"}, show.rows)
	onlyMarker(t, "3", r.rows)
}

// TestReadyKeepsLaterPortalsRowGuard: the same portal keeps its row guard:
// a result above max_rows is cut.
func TestReadyKeepsLaterPortalsRowGuard(t *testing.T) {
	e := startRowGuard5(t)
	fe, send := rawSession(t, e)
	fe.Send(&pgproto3.Query{String: "SELECT 1"})
	fe.Send(&pgproto3.Parse{Query: "SELECT full_name FROM patients WHERE status = 'active'"})
	fe.Send(&pgproto3.Bind{})
	require.NoError(t, fe.Flush())
	require.Equal(t, "TDCZ", receiveUntilReady(t, fe).types)
	r := send(&pgproto3.Execute{}, &pgproto3.Sync{})
	t.Logf("replies %s, %d rows", r.types, len(r.rows))
	require.LessOrEqual(t, len(r.rows), 5, "no row past max_rows reaches the client")
}

// TestCopyFailingBeforeCopyInKeepsStep: a COPY ... FROM STDIN that fails
// before copy-in (here: the server does not know the column) leaves the server skipping to
// a Sync, so it answers the Sync libpq sends after Execute after all, and
// the one after CopyDone too: the guard stays in step with both replies.
func TestCopyFailingBeforeCopyInKeepsStep(t *testing.T) {
	e := start(t, basePolicy)
	fe, send := rawSession(t, e)
	const q = "SELECT full_name FROM patients WHERE id > $1 ORDER BY id LIMIT 3"
	zero := [][]byte{[]byte("0")}
	require.Equal(t, "1Z", send(&pgproto3.Parse{Name: "s1", Query: q}, &pgproto3.Sync{}).types)
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: "COPY clinics (no_such_column) FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.CopyData{Data: []byte("1\t2\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{},
	} {
		fe.Send(m)
	}
	require.NoError(t, fe.Flush())
	r := receiveUntilReady(t, fe)
	require.Equal(t, "12EZ", r.types)
	require.Equal(t, "42703", r.errs[0].Code, "the server's own error, before copy-in")
	require.Equal(t, "Z", receiveUntilReady(t, fe).types)
	// In step: a tenant switch, then the pinned statement prepared again.
	require.Equal(t, "CZ", send(&pgproto3.Query{String: "SET app.clinic_id = 3"}).types)
	require.Equal(t, "EZ", send(&pgproto3.Parse{Name: "s1", Query: q}, &pgproto3.Sync{}).types)
	require.Equal(t, "1Z", send(&pgproto3.Parse{Name: "s3", Query: "SELECT 1"}, &pgproto3.Sync{}).types)
	r = send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: zero}, &pgproto3.Execute{}, &pgproto3.Sync{})
	require.Equal(t, "2DCZ", r.types)
	onlyMarker(t, "3", r.rows)
}

// requireServerAndGuardOnTenant2: the server holds tenant 2, and so does the
// guard: an INSERT into clinic 3 is refused as cross-tenant.
func requireServerAndGuardOnTenant2(t *testing.T, send func(msgs ...pgproto3.FrontendMessage) received) {
	t.Helper()
	show := send(&pgproto3.Query{String: "SELECT current_setting('app.clinic_id')"})
	ins := send(&pgproto3.Query{String: "INSERT INTO patients (id, clinic_id, full_name) VALUES (1000, 3, 'x') RETURNING clinic_id"})
	t.Logf("server setting %v; insert of clinic 3: %s %v %v", show.rows, ins.types, ins.rows, ins.errs)
	require.Equal(t, []string{"2"}, show.rows)
	require.NotEmpty(t, ins.errs, "PostgreSQL holds tenant 2: an insert into clinic 3 is cross-tenant")
}

// TestRowGuardCutDropsLaterReplies: after the row guard's 54000 the client
// sees nothing more of the cycle until ReadyForQuery: no BindComplete,
// RowDescription or NoData of the statements pipelined after the cut one
// (a BindComplete used to follow the error).
func TestRowGuardCutDropsLaterReplies(t *testing.T) {
	e := startRowGuard5(t)
	_, send := rawSession(t, e)
	r := send(
		&pgproto3.Parse{Query: "SELECT full_name FROM patients WHERE status = 'active'"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SET app.clinic_id = 2"}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Sync{})
	require.Equal(t, "12DEZ", r.types)
	require.Equal(t, "54000", r.errs[0].Code)
	// The session goes on, in step.
	require.Equal(t, "TDCZ", send(&pgproto3.Query{String: "SELECT 1"}).types)
}

// TestFailedCopyKeepsStep: a COPY ... FROM STDIN the server refuses before
// copy-in gets no CopyDone from pgx; the Syncs after it end cycles as
// usual (the guard took them for Syncs a server in copy-in mode ignores,
// and fell out of step with the server).
func TestFailedCopyKeepsStep(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "2")
	const q = "SELECT full_name FROM patients WHERE id > $1 ORDER BY id LIMIT 3"
	for _, src := range []string{"simple", "extended"} {
		_, err := conn.CopyFrom(ctx(t), pgx.Identifier{"clinics"}, []string{"no_such_column"}, pgx.CopyFromRows([][]any{{1}}))
		pgErr(t, err, "42703")
		if src == "extended" {
			_, err = conn.Exec(ctx(t), "COPY clinics (no_such_column) FROM STDIN", pgx.QueryExecModeDescribeExec)
			require.Error(t, err)
		}
		for _, tenant := range []string{"2", "3", "1", "2"} {
			_, err = conn.Exec(ctx(t), "SET app.clinic_id = "+tenant)
			require.NoError(t, err)
			onlyMarker(t, tenant, queryStrings(t, conn, pgx.QueryExecModeCacheStatement, q, 0))
		}
	}
}

// TestSkippedRefusalIsAudited: a refused statement whose sentinel the
// server skips (an earlier statement of its Query failed) is still audited,
// once, as the refusal it was, and its sentinel is forgotten.
func TestSkippedRefusalIsAudited(t *testing.T) {
	e := start(t, basePolicy)
	_, send := rawSession(t, e)
	r := send(&pgproto3.Query{String: "SELECT 1/0; SELECT full_name FROM patients"})
	require.Equal(t, "EZ", r.types)
	require.Equal(t, "22012", r.errs[0].Code)
	var refused []string
	for _, l := range strings.Split(e.audit.String(), "\n") {
		if strings.Contains(l, `"reason":"unbounded"`) {
			refused = append(refused, l)
		}
	}
	require.Len(t, refused, 1, "%s", e.audit.String())
	require.Contains(t, refused[0], `"decision":"rejected"`)
	require.Contains(t, refused[0], `"result":"not_executed"`)
	require.Contains(t, refused[0], `"sqlstate":"54000"`)
	// The session goes on: the same refusal, answered this time.
	r = send(&pgproto3.Query{String: "SELECT full_name FROM patients"})
	require.Equal(t, "EZ", r.types)
	require.Equal(t, "54000", r.errs[0].Code)
}
