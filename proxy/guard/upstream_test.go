package guard_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
)

// transcript reads the replies up to ReadyForQuery, each as a line with
// everything a client could see of it: notices and every error field
// included.
func transcript(t *testing.T, fe *pgproto3.Frontend) []string {
	t.Helper()
	var out []string
	for {
		m, err := fe.Receive()
		require.NoError(t, err)
		switch m := m.(type) {
		case *pgproto3.RowDescription:
			var b strings.Builder
			b.WriteString("T")
			for _, f := range m.Fields {
				// Table OIDs differ between the tests' databases: only
				// whether there is one is compared.
				fmt.Fprintf(&b, " %s/%t/%d/%d/%d/%d/%d", f.Name, f.TableOID != 0, f.TableAttributeNumber, f.DataTypeOID, f.DataTypeSize, f.TypeModifier, f.Format)
			}
			out = append(out, b.String())
		case *pgproto3.DataRow:
			var b strings.Builder
			b.WriteString("D")
			for _, v := range m.Values {
				if v == nil {
					b.WriteString(" NULL")
				} else {
					fmt.Fprintf(&b, " %q", v)
				}
			}
			out = append(out, b.String())
		case *pgproto3.CommandComplete:
			out = append(out, "C "+string(m.CommandTag))
		case *pgproto3.ErrorResponse:
			out = append(out, fmt.Sprintf("E %s %s detail=%q hint=%q pos=%d where=%q", m.Code, m.Message, m.Detail, m.Hint, m.Position, m.Where))
		case *pgproto3.NoticeResponse:
			out = append(out, fmt.Sprintf("N %s %s", m.Code, m.Message))
		case *pgproto3.ParameterStatus:
		case *pgproto3.ReadyForQuery:
			return append(out, "Z "+string(m.TxStatus))
		default:
			out = append(out, fmt.Sprintf("%T", m))
		}
	}
}

// rawFrontend opens a pinned session (tenant 2) and returns its frontend.
func rawFrontend(t *testing.T, e *env) *pgproto3.Frontend {
	hj, err := e.connect(t, "2").PgConn().Hijack()
	require.NoError(t, err)
	t.Cleanup(func() { hj.Conn.Close() })
	require.NoError(t, hj.Conn.SetDeadline(time.Now().Add(30*time.Second)))
	return hj.Frontend
}

func query(t *testing.T, fe *pgproto3.Frontend, sql string) []string {
	t.Helper()
	fe.Send(&pgproto3.Query{String: sql})
	require.NoError(t, fe.Flush())
	return transcript(t, fe)
}

// preparedForms lists the session's statements prepared in their prepared
// form, with their executions so far.
func preparedForms(t *testing.T, fe *pgproto3.Frontend) []string {
	t.Helper()
	var forms []string
	for _, l := range query(t, fe, "SELECT statement || ' x' || (generic_plans + custom_plans) FROM pg_prepared_statements WHERE name LIKE 'tg\\_prepared\\_%' ORDER BY prepare_time") {
		if strings.HasPrefix(l, "D ") {
			forms = append(forms, strings.Trim(l[2:], `"`))
		}
	}
	return forms
}

// TestSimpleShapesPreparedUpstream: the third statement of a shape (the
// first teaches the literal path, the second prepares the shape on the
// side) and every later one run upstream as a Bind to one prepared
// statement, and the client sees exactly what its Query would have shown.
func TestSimpleShapesPreparedUpstream(t *testing.T) {
	e := start(t, basePolicy)
	fe := rawFrontend(t, e)
	for i, id := range []int{1, 4, 7, 10, 13, 16} {
		got := query(t, fe, fmt.Sprintf("SELECT id, full_name FROM patients WHERE id = %d", id))
		require.Equal(t, []string{
			got[0], fmt.Sprintf(`D "%d" "patient %d TENANT2"`, id, id), "C SELECT 1", "Z I",
		}, got, "statement %d", i+1)
		require.True(t, strings.HasPrefix(got[0], "T id/true/1/23/"), got[0])
	}
	forms := preparedForms(t, fe)
	require.Len(t, forms, 1, "%v", forms)
	require.Contains(t, forms[0], "id = $1")
	require.Contains(t, forms[0], "clinic_id")
	require.True(t, strings.HasSuffix(forms[0], " x4"), "executions: %s", forms[0])
}

// TestKeepSimpleSendsText: with KeepSimple nothing is prepared upstream.
func TestKeepSimpleSendsText(t *testing.T) {
	e := textGuard(t)
	fe := rawFrontend(t, e)
	for _, id := range []int{1, 4, 7, 10} {
		require.Equal(t, "C SELECT 1", query(t, fe, fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", id))[2])
	}
	require.Empty(t, preparedForms(t, fe))
}

// TestPreparedFormsShowWhatTextShows runs statements of many shapes, each
// with changing literals, through a guard that prepares them and one that
// sends their text: the clients see the same replies, field for field. The
// shapes where a parameter would not stand for its literal (a column
// position, an argument whose type PostgreSQL infers only from a literal)
// go as text; the others were prepared.
func TestPreparedFormsShowWhatTextShows(t *testing.T) {
	prep := start(t, basePolicy)
	text := textGuard(t)
	shapes := []struct {
		sql  string
		runs int // in the prepared form; -1: not prepared
	}{
		{"SELECT id, full_name, status FROM patients WHERE id = %d", 3},
		{"SELECT full_name FROM patients WHERE email = 'p%d.TENANT2@example.org'", 3},
		{"SELECT %d, 2.5, 'x', 3000000000, 99999999999999999999, 1e3, .5 FROM patients WHERE id = 1", 3},
		{"SELECT %d, -7 FROM patients WHERE id = 1", -1}, // the literal path leaves out negative numbers
		{"SELECT 'a' || full_name, '{1,2}'::int[], 'it''s' FROM patients WHERE id = %d", 3},
		{"SELECT full_name, id FROM patients WHERE id IN (1, 4, %d) ORDER BY 2 DESC", -1},
		{"SELECT json_build_object('name', full_name, 'n', %d) FROM patients WHERE id = 1", -1},
		{"SELECT pg_typeof('x'), %d FROM patients WHERE id = 1", -1},
		{"SELECT full_name FROM patients WHERE id = %d AND id > -2147483648", -1},
		{"SELECT full_name::varchar(4), %d FROM patients WHERE id = 1", -1},
		{"SELECT full_name FROM patients WHERE id > %d ORDER BY id LIMIT 3", 3},
		{"SELECT count(*), max(full_name) FROM patients WHERE id < %d", 3},
		{"UPDATE patients SET status = 'seen %d' WHERE id = 4", 3},
		{"INSERT INTO invoices (id, patient_id, memo) VALUES (50%d, 4, 'memo') RETURNING id, memo", 3},
		{"DELETE FROM invoices WHERE id = 50%d", 3},
		{"SELECT full_name FROM patients WHERE id = 'x%d'", 0}, // 22P02, at its Bind or its parse
		{"SELECT full_name FROM patients WHERE id = %d AND now() > '2020-01-01'", 3},
	}
	ft, fp := sessionPair(t, prep, text)
	var want []int
	for _, sh := range shapes {
		for _, v := range []int{1, 4, 7, 10, 13} {
			sql := fmt.Sprintf(sh.sql, v)
			compareRuns(t, ft, fp, sql)
		}
		if sh.runs >= 0 {
			want = append(want, sh.runs)
		}
	}
	forms := preparedForms(t, fp)
	require.Len(t, forms, len(want), "%s", strings.Join(forms, "\n"))
	for i, f := range forms {
		require.True(t, strings.HasSuffix(f, fmt.Sprintf(" x%d", want[i])), "want %d runs: %s", want[i], f)
	}
	require.Empty(t, preparedForms(t, ft))
}

// TestPreparedFormsInTransactionBlocks: shapes are prepared, and run in
// their prepared form, only in implicit transactions: inside a block a
// prepared form that failed where its text would not (a column's type
// changed) would fail the block. The block keeps its own behaviour.
func TestPreparedFormsInTransactionBlocks(t *testing.T) {
	e := start(t, basePolicy)
	fe := rawFrontend(t, e)
	require.Equal(t, []string{"C BEGIN", "Z T"}, query(t, fe, "BEGIN"))
	for _, id := range []int{1, 4, 7} {
		require.Equal(t, "Z T", query(t, fe, fmt.Sprintf("UPDATE patients SET status = 'b%d' WHERE id = %d", id, id))[1])
	}
	require.Equal(t, []string{"C COMMIT", "Z I"}, query(t, fe, "COMMIT"))
	require.Empty(t, preparedForms(t, fe), "nothing prepared inside the block")

	for _, id := range []int{10, 13} { // the second prepares the shape
		require.Equal(t, []string{"C UPDATE 1", "Z I"}, query(t, fe, fmt.Sprintf("UPDATE patients SET status = 'c%d' WHERE id = %d", id, id)))
	}
	require.Equal(t, []string{"C BEGIN", "Z T"}, query(t, fe, "BEGIN"))
	require.Equal(t, []string{"C UPDATE 1", "Z T"}, query(t, fe, "UPDATE patients SET status = 'rolled back' WHERE id = 16"))
	got := query(t, fe, "UPDATE patients SET status = 'c' WHERE id = 'nope'")
	require.Len(t, got, 2)
	require.True(t, strings.HasPrefix(got[0], "E 22P02"), got[0])
	require.Equal(t, "Z E", got[1])
	got = query(t, fe, "UPDATE patients SET status = 'x' WHERE id = 19")
	require.True(t, strings.HasPrefix(got[0], "E 25P02"), got[0])
	require.Equal(t, []string{"C ROLLBACK", "Z I"}, query(t, fe, "ROLLBACK"))
	require.Equal(t, []string{`D "active"`}, query(t, fe, "SELECT status FROM patients WHERE id = 16")[1:2])

	forms := preparedForms(t, fe)
	require.Len(t, forms, 1, "%v", forms)
	// 10 prepared the shape, 13 ran prepared; in the block 16, 'nope' and
	// 19 went as text.
	require.True(t, strings.HasSuffix(forms[0], " x1"), forms[0])
}

// TestPreparedFormsAfterDiscardAll: DISCARD ALL drops the session's
// prepared statements, the guard's too; the shape is prepared again.
func TestPreparedFormsAfterDiscardAll(t *testing.T) {
	e := start(t, basePolicy)
	fe := rawFrontend(t, e)
	run := func(id int) {
		require.Equal(t, "C SELECT 1", query(t, fe, fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", id))[2])
	}
	for _, id := range []int{1, 4, 7} {
		run(id)
	}
	require.Len(t, preparedForms(t, fe), 1)
	require.Equal(t, []string{"C DISCARD ALL", "Z I"}, query(t, fe, "DISCARD ALL"))
	for _, id := range []int{10, 13, 16, 19} {
		run(id)
	}
	forms := preparedForms(t, fe)
	require.Len(t, forms, 1, "%v", forms)
	require.True(t, strings.HasSuffix(forms[0], " x3"), forms[0])
}

// TestPreparedFormsPastTheCap: a session holds at most 64 prepared forms
// upstream; preparing another closes the least recently used one, in the
// same write. The metrics count the shapes and the statements.
func TestPreparedFormsPastTheCap(t *testing.T) {
	e := start(t, basePolicy)
	fe := rawFrontend(t, e)
	const shapes = 70
	for k := 0; k < shapes; k++ {
		for _, id := range []int{1, 4, 7} {
			got := query(t, fe, fmt.Sprintf("SELECT full_name AS name%d FROM patients WHERE id = %d", k, id))
			require.Equal(t, "C SELECT 1", got[2], "%v", got)
		}
	}
	forms := preparedForms(t, fe)
	require.Len(t, forms, 64)
	require.Contains(t, forms[0], "AS name6 ", "shapes 0-5 were closed, oldest first")
	require.Equal(t, float64(shapes), counterValue(t, e.metrics.SimpleShapes.WithLabelValues("ok")))
	require.Equal(t, float64(0), counterValue(t, e.metrics.SimpleShapes.WithLabelValues("refused")))
	require.Equal(t, float64(shapes), counterValue(t, e.metrics.SimpleStatementsPrepared))

	// A closed shape is prepared again when it comes back.
	for _, id := range []int{10, 13} {
		require.Equal(t, fmt.Sprintf(`D "patient %d TENANT2"`, id), query(t, fe, fmt.Sprintf("SELECT full_name AS name0 FROM patients WHERE id = %d", id))[1])
	}
	forms = preparedForms(t, fe)
	require.Len(t, forms, 64)
	require.Contains(t, forms[63], "AS name0 ")
	require.True(t, strings.HasSuffix(forms[63], " x1"), forms[63])
}

// TestPreparedFormsAfterSchemaChanges: another catalog (a reload) means
// new shapes: the old prepared statements are closed with the first new
// Parse. A statement with a star is never prepared (its columns change
// with the table's); a column whose type changes fails a prepared form
// once, as it fails an application's own prepared statements, and the
// shape is prepared again.
func TestPreparedFormsAfterSchemaChanges(t *testing.T) {
	var load func()
	e := startGuard(t, basePolicy, reloadableCatalog(t, &load))
	fe := rawFrontend(t, e)
	run := func(id int) []string {
		return query(t, fe, fmt.Sprintf("SELECT id, status FROM patients WHERE id = %d", id))
	}
	for _, id := range []int{1, 4, 7} {
		require.Equal(t, "C SELECT 1", run(id)[2])
	}
	require.Len(t, preparedForms(t, fe), 1)
	load()
	for _, id := range []int{10, 13, 16} { // learn, prepare (closing the old one), run
		require.Equal(t, "C SELECT 1", run(id)[2])
	}
	forms := preparedForms(t, fe)
	require.Len(t, forms, 1, "%v", forms)
	require.True(t, strings.HasSuffix(forms[0], " x1"), forms[0])

	for _, id := range []int{1, 4, 7, 10} {
		require.Equal(t, "C SELECT 1", query(t, fe, fmt.Sprintf("SELECT * FROM patients WHERE id = %d", id))[2])
	}
	_, err := e.direct(t).Exec(ctx(t), "ALTER TABLE patients ADD COLUMN extra integer")
	require.NoError(t, err)
	got := query(t, fe, "SELECT * FROM patients WHERE id = 13")
	require.Equal(t, "C SELECT 1", got[2], "%v", got)
	require.Contains(t, got[0], " extra/")

	_, err = e.direct(t).Exec(ctx(t), "ALTER TABLE patients ALTER COLUMN status TYPE varchar(20)")
	require.NoError(t, err)
	got = run(19)
	require.Equal(t, []string{`E 0A000 cached plan must not change result type detail="" hint="" pos=0 where=""`, "Z I"}, got)
	for _, id := range []int{22, 25, 28} { // prepare again (closing the old one), run
		got = run(id)
		require.Equal(t, "C SELECT 1", got[2], "%v", got)
		require.Contains(t, got[0], "status/true/5/1043/")
	}
	forms = preparedForms(t, fe)
	require.Len(t, forms, 1, "%v", forms)
	require.True(t, strings.HasSuffix(forms[0], " x2"), forms[0])
}
