package guard_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy/catalog"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
	"github.com/tenantguard/tenantguard/rewriter"
)

// Review 2: joinBound / key lists / = ANY ($k) (485df7d, 11600f9,
// 00ec466) and the abort after a cut (b798fca), on a real PostgreSQL.

// TestReview2ColumnAliasListReadsAnotherTenant: a column alias list renames
// the columns of a tenant relation, and the guard injects its predicate on
// the name clinic_id, which the list gave to another column. As tenant 2,
// FROM patients p(clinic_id, cid) reads the patient whose id is 2 (tenant
// 3's), FROM invoices i(a, b, clinic_id) the invoices of patient 2 of any
// clinic. Cross-tenant read in every protocol, before the fix; now refused
// (0A000). (rewriter: TestReview2ColumnAliasListRenamesTenantColumn.)
func TestReview2ColumnAliasListReadsAnotherTenant(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "2")
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			for _, q := range []string{
				"SELECT full_name FROM patients p(clinic_id, cid) LIMIT 10",
				"SELECT memo FROM invoices i(a, b, clinic_id) LIMIT 10",
				"SELECT note FROM soap_notes s(clinic_id, cid) WHERE s.clinic_id = 2 LIMIT 10",
			} {
				rows, err := conn.Query(ctx(t), q, m.mode)
				if err == nil {
					var got []string
					got, err = pgx.CollectRows(rows, pgx.RowTo[string])
					for _, v := range got {
						assert.NotContains(t, v, "TENANT3", "%s: another tenant's row", q)
						assert.NotContains(t, v, "TENANT1", "%s: another tenant's row", q)
					}
				}
				pe := pgErr(t, err, "0A000")
				assert.Contains(t, pe.Message, "column alias list", q)
			}
		})
	}
}

// TestReview2StaticBoundOverMaxRows: statements the static analysis bounds
// by <= max_rows (5 here) that return more rows on the server; only the
// run-time row guard stops them (54000 after 5 rows were produced), where
// SPEC §2 wants them refused before they run. Each asserts the refusal is
// the static one (no rows, the "not bounded" message).
func TestReview2StaticBoundOverMaxRows(t *testing.T) {
	// The catalog as serve loads it, after an inheritance parent with a
	// primary key and a child holding the same id 9 more times.
	pol := strings.Replace(rowGuard5Policy, "tables: [patients, invoices, soap_notes]", "tables: [patients, invoices, soap_notes, base]", 1)
	require.NotEqual(t, rowGuard5Policy, pol)
	e := startGuard(t, pol, func(c *pgtest.Cluster, db string) func() *rewriter.Catalog {
		require.NoError(t, c.Exec(context.Background(), db, `CREATE TABLE base (id int PRIMARY KEY, clinic_id int, v text);
			CREATE TABLE kid () INHERITS (base);
			INSERT INTO base SELECT 1, 2, 'base TENANT2';
			INSERT INTO kid SELECT 1, 2, 'kid ' || i || ' TENANT2' FROM generate_series(1, 9) i;
			GRANT SELECT ON base, kid TO app_user`))
		conn, err := c.Connect(context.Background(), db)
		require.NoError(t, err)
		defer conn.Close(context.Background())
		cat, err := catalog.LoadConn(context.Background(), conn, catalog.Options{})
		require.NoError(t, err)
		return func() *rewriter.Catalog { return cat }
	})
	conn := e.connect(t, "2")
	ids := make([]string, 30)
	for i := range ids {
		ids[i] = strconv.Itoa(i + 1)
	}
	all := "{" + strings.Join(ids, ",") + "}" // 10 of them are tenant 2's
	for _, q := range []string{
		// ARRAY[array]: a two-dimensional array, one "value" for the bound.
		"SELECT full_name FROM patients WHERE id = ANY (ARRAY['" + all + "'::int[]])",
		// A recursive CTE named like the table takes the table's key.
		"WITH RECURSIVE patients AS (SELECT 1 AS id, clinic_id, full_name FROM public.patients) SELECT full_name FROM patients WHERE id = 1",
		// A set-returning function outside the target list.
		"SELECT full_name FROM patients WHERE id = 4 ORDER BY generate_series(1, 10)",
		"SELECT count(*)::text FROM patients ORDER BY generate_series(1, 10)",
		// A column alias list moves the name id onto status.
		"SELECT fn FROM patients AS p(pid, clinic_id, fn, em, id) WHERE id = 'active'",
		// A builtin set-returning function not on the list.
		"SELECT (ts_parse('default', repeat('x ', 10))).token FROM patients WHERE id = 4",
		// Grouping sets over one fixed row: a row per set.
		"SELECT full_name FROM patients WHERE id = 4 GROUP BY GROUPING SETS ((full_name), (full_name), (full_name), (full_name), (full_name), (full_name))",
		"SELECT p.full_name FROM patients p JOIN clinics c ON c.id = p.clinic_id WHERE p.id = 4 GROUP BY GROUPING SETS ((p.full_name), (p.full_name), (p.full_name), (p.full_name), (p.full_name), (p.full_name))",
		// The parent's primary key does not hold in its child.
		"SELECT v FROM base WHERE id = 1",
	} {
		got, err := func() ([]string, error) {
			rows, err := conn.Query(ctx(t), q, pgx.QueryExecModeSimpleProtocol)
			if err != nil {
				return nil, err
			}
			return pgx.CollectRows(rows, pgx.RowTo[string])
		}()
		if err == nil {
			assert.LessOrEqual(t, len(got), 5, "%s: %d rows with max_rows 5", q, len(got))
			continue
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			t.Errorf("%s: %v", q, err)
			continue
		}
		assert.True(t, pe.Code == "54000" && strings.Contains(pe.Message, "not bounded") ||
			pe.Code == "0A000" && strings.Contains(pe.Message, "column alias list"),
			"%s: let through by the static bound, cut at run time (or failed otherwise): %s %s", q, pe.Code, pe.Message)
	}
}

// TestReview2AbortBeforeOddNextMessages: after a cut in a transaction
// block the guard's abort Query goes upstream in front of the client's
// next message, whatever it is. For each kind of next message: the client
// gets the replies to its own messages only (none of the abort's), the
// transaction is failed (a later statement gets 25P02, COMMIT rolls the
// write back), and the session stays in step (ROLLBACK is answered, the
// next over-limit result is cut). Run with TENANTGUARD_TEST_EVENT_LOOPS=-1
// for the goroutine relay.
func TestReview2AbortBeforeOddNextMessages(t *testing.T) {
	e := startRowGuard5(t)
	email := func() string {
		t.Helper()
		var v string
		require.NoError(t, e.direct(t).QueryRow(ctx(t), "SELECT email FROM patients WHERE id = 4").Scan(&v))
		return v
	}
	before := email()
	for _, tc := range []struct {
		name  string
		msgs  []pgproto3.FrontendMessage
		types []string // the cycles the client gets for msgs
	}{
		{"function call", []pgproto3.FrontendMessage{&pgproto3.FunctionCall{Function: 1598}}, []string{"EZ"}},
		{"copy fail outside copy", []pgproto3.FrontendMessage{&pgproto3.CopyFail{Message: "x"}, &pgproto3.Query{String: "SELECT 1"}}, []string{"EZ"}},
		{"copy done outside copy", []pgproto3.FrontendMessage{&pgproto3.CopyDone{}, &pgproto3.Query{String: "SELECT 1"}}, []string{"EZ"}},
		{"flush then sync", []pgproto3.FrontendMessage{&pgproto3.Flush{}, &pgproto3.Sync{}}, []string{"Z"}},
		{"describe sync", []pgproto3.FrontendMessage{&pgproto3.Describe{ObjectType: 'S', Name: "nope"}, &pgproto3.Sync{}}, []string{"EZ"}},
		{"close sync", []pgproto3.FrontendMessage{&pgproto3.Close{ObjectType: 'S', Name: "nope"}, &pgproto3.Sync{}}, []string{"3Z"}},
		{"sync", []pgproto3.FrontendMessage{&pgproto3.Sync{}}, []string{"Z"}},
		{"refused query", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT full_name FROM patients"}}, []string{"EZ"}},
		{"empty query", []pgproto3.FrontendMessage{&pgproto3.Query{String: ""}}, []string{"Z"}},
		{"tenant switch", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SET app.clinic_id = 3"}}, []string{"EZ"}},
		{"refused parse", []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT full_name FROM patients"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}}, []string{"EZ"}},
		{"parse bind execute", []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}}, []string{"EZ"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fe, send := rawSession(t, e)
			r := send(&pgproto3.Query{String: "BEGIN; UPDATE patients SET email = 'in-cut-block' WHERE id = 4"})
			require.Equal(t, "CCZ", r.types, "%v", r.errs)
			r = send(&pgproto3.Query{String: cutQuery})
			require.Equal(t, "TDEZ", r.types)
			require.Equal(t, byte('E'), r.status)
			for _, m := range tc.msgs {
				fe.Send(m)
			}
			require.NoError(t, fe.Flush())
			for i, want := range tc.types {
				r = receiveUntilReady(t, fe)
				assert.Equal(t, want, r.types, "cycle %d: %s", i, describe([]received{r}))
				assert.Equal(t, "E", string(r.status), "cycle %d: the transaction is failed", i)
				for _, er := range r.errs {
					assert.NotContains(t, er.Message, "tg_reject_", "the guard's sentinel reaches the client")
				}
			}
			r = send(&pgproto3.Query{String: "SELECT full_name FROM patients WHERE id = 4"})
			assert.Equal(t, "EZ", r.types, "%s", describe([]received{r}))
			if len(r.errs) > 0 {
				assert.Equal(t, "25P02", r.errs[0].Code)
			}
			r = send(&pgproto3.Query{String: "COMMIT"})
			assert.Equal(t, "CZ", r.types, "%s", describe([]received{r}))
			assert.Equal(t, "I", string(r.status))
			assert.Equal(t, before, email(), "the write in the cut block was rolled back")
			r = send(&pgproto3.Query{String: cutQuery})
			assert.Equal(t, "TDEZ", r.types, "the row guard still cuts (got %d rows)", len(r.rows))
			assert.Equal(t, "I", string(r.status))
		})
	}
}

// TestReview2PipelinedRecoveryAfterCut: the client pipelines, behind a
// cycle that the row guard cuts in a transaction block, a cycle that
// recovers from the error as PostgreSQL wants (ROLLBACK TO SAVEPOINT, or
// ROLLBACK; BEGIN: a new block). On PostgreSQL that cycle ends 'T' and the
// block is usable. The guard still holds abortWanted from the cut and
// takes that cycle's 'T' for the cut's block: it shows the client 'E' and
// fails the recovered (or brand-new) block upstream, so the client's next
// statement gets 25P02. Fix: clear abortWanted when a later cycle of the
// client's ends, or began, the cut block: record at the cut which client
// statements of pipelined cycles are transaction control (ROLLBACK,
// COMMIT, ROLLBACK TO SAVEPOINT, BEGIN: Decision.TxOp) and cancel the
// abort when one of them ran; or, simpler, send the abort right behind the
// cut cycle only when no pipelined cycle holds transaction control, and
// otherwise fail those cycles' statements as the server would (25P02).
func TestReview2PipelinedRecoveryAfterCut(t *testing.T) {
	e := startRowGuard5(t)
	for _, tc := range []struct {
		name, setup, recover string
	}{
		{"rollback to savepoint", "BEGIN; SAVEPOINT s", "ROLLBACK TO SAVEPOINT s"},
		{"rollback and begin", "BEGIN", "ROLLBACK; BEGIN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fe, send := rawSession(t, e)
			r := send(&pgproto3.Query{String: tc.setup})
			require.Equal(t, "T", string(r.status), "%v", r.errs)
			fe.Send(&pgproto3.Query{String: cutQuery})
			fe.Send(&pgproto3.Query{String: tc.recover})
			require.NoError(t, fe.Flush())
			r = receiveUntilReady(t, fe)
			require.Equal(t, "TDEZ", r.types)
			require.Equal(t, "E", string(r.status))
			r = receiveUntilReady(t, fe)
			assert.Empty(t, r.errs)
			assert.Equal(t, "T", string(r.status), "%s ran and recovered: PostgreSQL reports an open, usable block", tc.recover)
			r = send(&pgproto3.Query{String: "SELECT full_name FROM patients WHERE id = 4"})
			assert.Equal(t, "TDCZ", r.types, "a statement in the recovered block: %s", describe([]received{r}))
			untilRollback(t, fe)
		})
	}
}

// TestReview2AbortOverClientTLS: the abort after a cut, round after round,
// with a TLS client (and, with TENANTGUARD_TEST_EVENT_LOOPS=-1, the
// goroutine relay): each cut fails the block upstream before the client's
// next message, ROLLBACK TO SAVEPOINT recovers it, and the write made
// after the savepoint and before the cut never commits.
func TestReview2AbortOverClientTLS(t *testing.T) {
	e, fe := rowGuard5TLSSession(t, 60*time.Second)
	send := func(q string) received {
		t.Helper()
		fe.Send(&pgproto3.Query{String: q})
		require.NoError(t, fe.Flush())
		return receiveUntilReady(t, fe)
	}
	var before string
	require.NoError(t, e.direct(t).QueryRow(ctx(t), "SELECT email FROM patients WHERE id = 4").Scan(&before))
	require.Equal(t, "CZ", send("BEGIN").types)
	for i := 0; i < 40; i++ {
		require.Equal(t, "CZ", send("SAVEPOINT s").types, "round %d", i)
		require.Equal(t, "CZ", send("UPDATE patients SET email = 'tls-"+strconv.Itoa(i)+"' WHERE id = 4").types, "round %d", i)
		r := send(cutQuery)
		require.Equal(t, "TDEZ", r.types, "round %d", i)
		require.Equal(t, "E", string(r.status), "round %d", i)
		if i%2 == 0 {
			r = send("SELECT 1")
			require.Equal(t, "EZ", r.types, "round %d", i)
			require.Equal(t, "25P02", r.errs[0].Code, "round %d", i)
		}
		r = send("ROLLBACK TO SAVEPOINT s")
		require.Equal(t, "CZ", r.types, "round %d: %s", i, describe([]received{r}))
		require.Equal(t, "T", string(r.status), "round %d", i)
	}
	r := send("COMMIT")
	require.Equal(t, "CZ", r.types)
	require.Equal(t, "I", string(r.status))
	var after string
	require.NoError(t, e.direct(t).QueryRow(ctx(t), "SELECT email FROM patients WHERE id = 4").Scan(&after))
	require.Equal(t, before, after, "every write after a savepoint and before a cut was rolled back")
}
