package guard_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy/guard"
)

// textGuard starts a guard that sends simple-protocol statements as text.
func textGuard(t *testing.T) *env {
	return startGuard(t, basePolicy, loadedCatalog(t, nil), func(o *guard.Options) { o.KeepSimple = true })
}

// sessionPair opens a pinned session on the guard that sends statements as
// text (ft) and one on the guard that prepares them (fp).
func sessionPair(t *testing.T, prep, text *env) (ft, fp *pgproto3.Frontend) {
	return rawFrontend(t, text), rawFrontend(t, prep)
}

// numbered returns shape with each of 1..n for its %d, then extra.
func numbered(shape string, n int, extra ...string) []string {
	var sqls []string
	for v := 1; v <= n; v++ {
		sqls = append(sqls, fmt.Sprintf(shape, v))
	}
	return append(sqls, extra...)
}

// TestReviewShapesShowWhatTextShows: many more shapes, each run with
// literals 1..8 (past PostgreSQL's five custom plans), compared reply for
// reply (notices and every error field included) with the text path.
func TestReviewShapesShowWhatTextShows(t *testing.T) {
	prep := start(t, basePolicy)
	text := textGuard(t)
	ft, fp := sessionPair(t, prep, text)
	shapes := []string{
		"SELECT %d AS x, 'a' AS y, 'b' FROM patients WHERE id = 1",
		"SELECT full_name FROM patients WHERE id = %d FOR UPDATE",
		"SELECT CASE WHEN id = %d THEN 'yes' ELSE 'no' END FROM patients WHERE id < 10 ORDER BY id",
		"SELECT full_name FROM patients WHERE id = %d UNION SELECT 'x'",
		"SELECT id FROM patients WHERE id = %d UNION ALL SELECT '5'",
		"SELECT id FROM patients WHERE status IN ('active', 'x%d') ORDER BY id LIMIT 5",
		"SELECT id FROM patients WHERE full_name LIKE 'patient %d%%' ORDER BY id",
		"SELECT ARRAY[%d, 2], '{a,b}'::text[] FROM patients WHERE id = 1",
		"SELECT id FROM patients WHERE id = ANY('{1,4,%d}') ORDER BY id",
		"SELECT id FROM patients ORDER BY id LIMIT %d OFFSET 1",
		"SELECT (SELECT count(*) FROM invoices WHERE patient_id = %d), full_name FROM patients WHERE id = 4",
		"WITH x AS (SELECT id, full_name FROM patients WHERE id > %d) SELECT full_name FROM x ORDER BY full_name LIMIT 2",
		"INSERT INTO invoices (id, patient_id, memo) VALUES (70%d, 4, 'm') ON CONFLICT (id) DO UPDATE SET memo = 'u' RETURNING id, memo",
		"SELECT id, row_number() OVER (ORDER BY id) FROM patients WHERE id < %d ORDER BY id",
		"SELECT string_agg(full_name, ', ' ORDER BY id) FROM patients WHERE id < %d",
		"SELECT count(*) FILTER (WHERE id > %d) FROM patients",
		"SELECT coalesce(NULL, 'x%d'), nullif(%d, 4) FROM patients WHERE id = 1",
		"SELECT id::text || '%d' FROM patients WHERE id = 1",
		"SELECT %d::bigint, 2.5::float8, '1 day'::interval, '%d'::smallint FROM patients WHERE id = 1",
		"SELECT length('abc%d'), 'abc' = 'abc%d', '%d' + 1 FROM patients WHERE id = 1",
		"SELECT '2020-01-0%d'::date + 1, to_char(%d, '999'), round(2.555, %d) FROM patients WHERE id = 1",
		"SELECT substring(full_name from %d for 3) FROM patients WHERE id = 1",
		"SELECT id FROM patients WHERE id BETWEEN %d AND 20 ORDER BY id",
		"SELECT id FROM patients WHERE (id, clinic_id) = (%d, 2)",
		"SELECT id FROM patients WHERE clinic_id = %d ORDER BY id LIMIT 3",
		"SELECT status, count(*) FROM patients GROUP BY status HAVING count(*) > %d",
		"SELECT max(id) + %d, min(full_name) || '%d' FROM patients",
		"SELECT '{\"a\":%d}'::jsonb -> 'a', '{\"a\":%d}'::json ->> 'a' FROM patients WHERE id = 1",
		"SELECT full_name FROM patients WHERE full_name ~ 'patient %d$'",
		"SELECT 'x' || %d, %d || 'x', '%d' FROM patients WHERE id = 1",
		"SELECT s.a FROM (SELECT '%d' AS a, id FROM patients WHERE id = 1) s",
		"INSERT INTO invoices (id, patient_id, memo) SELECT 80%d, 4, 'x' RETURNING memo",
		"UPDATE patients SET status = status || '%d' WHERE id = 4 RETURNING status",
		"SELECT EXISTS (SELECT 1 FROM invoices WHERE id = %d)",
		"SELECT id FROM patients WHERE id IN (SELECT patient_id FROM invoices WHERE id < %d) ORDER BY id",
		"SELECT %d = ANY(ARRAY[1,2]), 2147483647 + %d, 9223372036854775807 - %d FROM patients WHERE id = 1",
		"SELECT 00012, 1e-3, 5., .5e1, 0.1 + 0.2 = 0.3, %d FROM patients WHERE id = 1",
		"SELECT full_name FROM patients WHERE id = %d LIMIT '5'",
		"SELECT id FROM patients ORDER BY id FETCH FIRST %d ROWS ONLY",
		"SELECT full_name FROM patients WHERE id = %d AND email LIKE '%%TENANT2%%'",
		"SELECT full_name AS this_is_a_very_long_alias_name_that_is_more_than_sixty_three_bytes_long_x FROM patients WHERE id = %d",
		"SELECT 10 / %d FROM patients WHERE id = 1",
		"SELECT '%d'::regclass FROM patients WHERE id = 1",
		"SELECT pg_typeof(%d), pg_typeof(2.5), pg_typeof(3000000000) FROM patients WHERE id = 1",
		"SELECT v.a, v.b FROM (VALUES (%d, 'x'), (2, 'y')) v(a, b), patients p WHERE p.id = 1",
		"SELECT p.full_name, i.memo FROM patients p JOIN invoices i ON i.patient_id = p.id AND i.id > %d WHERE p.id < 10 ORDER BY p.id",
		"DELETE FROM soap_notes WHERE id = %d RETURNING note",
		"SELECT full_name FROM patients WHERE id = %d AND now() > '2020-01-01' AND 'now'::timestamptz > '2020-01-01'",
		"SELECT id FROM patients WHERE id > %d ORDER BY id LIMIT 60",
		"SELECT id FROM patients WHERE id > %d OFFSET 1000000000",
		"SELECT percentile_cont(0.%d) WITHIN GROUP (ORDER BY id) FROM patients",
		"SELECT full_name FROM patients WHERE id = %d AND status = 'active' AND id <> 2147483647",
		"SELECT status || '%d' AS s, count(*) FROM patients GROUP BY s ORDER BY s",
		"SELECT DISTINCT status, '%d' FROM patients",
		"SELECT full_name, %d AS k FROM patients WHERE id < 10 ORDER BY k, id",
		"SELECT id, lag(id, %d) OVER (ORDER BY id) FROM patients WHERE id < 10 ORDER BY id",
		"SELECT p.id, x.n FROM patients p, LATERAL (SELECT p.id * %d AS n) x WHERE p.id < 10 ORDER BY p.id",
		"SELECT id FROM patients WHERE id = %d OR full_name = 'x' OR status IS DISTINCT FROM 'y'",
		"SELECT generate_series(1, %d), full_name FROM patients WHERE id = 1",
		"UPDATE patients SET status = CASE WHEN id = %d THEN 'a' ELSE 'b' END WHERE id = 4",
		"SELECT full_name FROM patients WHERE id = %d AND 'x' IN ('x', 'y')",
	}
	for _, sh := range shapes {
		for v := 1; v <= 8; v++ {
			sql := strings.ReplaceAll(sh, "%d", fmt.Sprint(v))
			sql = strings.ReplaceAll(sql, "%%", "%")
			want, got := query(t, ft, sql), query(t, fp, sql)
			if fmt.Sprint(want) != fmt.Sprint(got) {
				t.Errorf("%s\n text: %q\n prep: %q", sql, want, got)
				break
			}
		}
	}
	for _, f := range preparedForms(t, fp) {
		t.Log(f)
	}
}

// compareRuns runs each statement through both guards and reports the
// first difference. An error's cursor position is left out when the
// prepared form's error has none: a literal's input error comes from the
// Bind there (README), and the text's position counts in the rewritten
// text, not the client's.
func compareRuns(t *testing.T, ft, fp *pgproto3.Frontend, sqls ...string) {
	t.Helper()
	for _, sql := range sqls {
		want, got := query(t, ft, sql), query(t, fp, sql)
		for i := range got {
			if i < len(want) && strings.Contains(got[i], " pos=0 ") {
				want[i] = posField.ReplaceAllString(want[i], " pos=0 ")
			}
		}
		if fmt.Sprint(want) != fmt.Sprint(got) {
			t.Errorf("%s\n text: %q\n prep: %q", sql, want, got)
		}
	}
}

var posField = regexp.MustCompile(` pos=[0-9]+ `)

// TestReviewErrorFieldsMatch: errors of statements in their prepared form
// carry what the text's would (but the position, see compareRuns; the
// context PostgreSQL adds for a parameter is removed).
func TestReviewErrorFieldsMatch(t *testing.T) {
	prep := start(t, basePolicy)
	text := textGuard(t)
	ft, fp := sessionPair(t, prep, text)
	compareRuns(t, ft, fp,
		"SELECT full_name FROM patients WHERE id = 1 AND status = 'a'",
		"SELECT full_name FROM patients WHERE id = 4 AND status = 'b'",
		"SELECT full_name FROM patients WHERE id = 7 AND status = 'c'",
		"SELECT full_name FROM patients WHERE id = 99999999999 AND status = 'c'",
		"SELECT full_name FROM patients WHERE id = 2147483647 + 1 AND status = 'c'",
	)
	compareRuns(t, ft, fp,
		"SELECT full_name FROM patients WHERE id = '1' AND status = 'a'",
		"SELECT full_name FROM patients WHERE id = '4' AND status = 'b'",
		"SELECT full_name FROM patients WHERE id = '7' AND status = 'c'",
		"SELECT full_name FROM patients WHERE id = 'x7' AND status = 'c'",
	)
}

// TestReviewGenericPlanSkipsAFoldedError: PostgreSQL folds constant
// expressions when it plans a statement, so 10/0 fails the text even when
// no row is read; a prepared statement on its generic plan (from the sixth
// execution) evaluates $1/$2 per row only.
func TestReviewGenericPlanSkipsAFoldedError(t *testing.T) {
	prep := start(t, basePolicy)
	text := textGuard(t)
	ft, fp := sessionPair(t, prep, text)
	const shape = "SELECT full_name, 10 / %d FROM patients WHERE id = 999"
	compareRuns(t, ft, fp, numbered(shape, 9, fmt.Sprintf(shape, 0))...)
}

// formName returns the name of the session's only prepared form.
func formName(t *testing.T, fe *pgproto3.Frontend) string {
	t.Helper()
	var names []string
	for _, l := range query(t, fe, "SELECT name FROM pg_prepared_statements WHERE name LIKE 'tg\\_prepared\\_%'") {
		if strings.HasPrefix(l, "D ") {
			names = append(names, strings.Trim(l[2:], `"`))
		}
	}
	require.Len(t, names, 1)
	return names[0]
}

// TestReviewPreparedFormNameHijack (found in review): the client read the
// guard's statement name from pg_prepared_statements, Closed it and Parsed
// a statement of its own under that name; the guard then bound its
// shape's literals to the client's statement, unchecked (70 rows past
// max_rows 50; under strategy verify, another tenant's rows). The names
// are reserved now: a protocol message that names one ends the session
// (42501), an SQL PREPARE, EXECUTE or DEALLOCATE of one is refused.
func TestReviewPreparedFormNameHijack(t *testing.T) {
	e := start(t, basePolicy)
	for _, msgs := range [][]pgproto3.FrontendMessage{
		{&pgproto3.Close{ObjectType: 'S'}},
		{&pgproto3.Parse{Query: "SELECT 1"}},
		{&pgproto3.Bind{}, &pgproto3.Execute{}},
		{&pgproto3.Describe{ObjectType: 'S'}},
	} {
		fe := rawFrontend(t, e)
		for _, id := range []int{1, 4, 7} {
			require.Equal(t, []string{"C UPDATE 1", "Z I"}, query(t, fe, fmt.Sprintf("UPDATE patients SET status = 'x' WHERE id = %d", id)))
		}
		name := formName(t, fe)
		switch m := msgs[0].(type) {
		case *pgproto3.Close:
			m.Name = name
		case *pgproto3.Parse:
			m.Name = strings.ToUpper(name[:3]) + name[3:]
		case *pgproto3.Bind:
			m.PreparedStatement = name
		case *pgproto3.Describe:
			m.Name = name
		}
		for _, m := range msgs {
			fe.Send(m)
		}
		fe.Send(&pgproto3.Sync{})
		require.NoError(t, fe.Flush())
		m, err := fe.Receive()
		require.NoError(t, err)
		er, ok := m.(*pgproto3.ErrorResponse)
		require.True(t, ok, "%T", m)
		require.Equal(t, "42501", er.Code)
		require.Contains(t, er.Message, "reserved")
		_, err = fe.Receive()
		require.Error(t, err, "the session ends")
	}

	fe := rawFrontend(t, e)
	for _, id := range []int{1, 4, 7} {
		require.Equal(t, []string{"C UPDATE 1", "Z I"}, query(t, fe, fmt.Sprintf("UPDATE patients SET status = 'v' WHERE id = %d", id)))
	}
	name := formName(t, fe)
	for _, sql := range []string{"DEALLOCATE " + name, "DEALLOCATE PREPARE " + strings.ToUpper(name), "EXECUTE " + name + "('v', 1)",
		"PREPARE tg_prepared_x AS SELECT 1"} {
		got := query(t, fe, sql)
		require.True(t, strings.HasPrefix(got[0], "E 42501 tenantguard: prepared statement names starting with tg_prepared_ are reserved"), "%s: %v", sql, got)
	}
	require.Equal(t, name, formName(t, fe))
	require.Equal(t, []string{"C UPDATE 1", "Z I"}, query(t, fe, "UPDATE patients SET status = 'v' WHERE id = 10"))
	forms := preparedForms(t, fe)
	require.Len(t, forms, 1)
	// The template was learnt in the sessions before: 1 prepared the
	// shape here, 4, 7 and 10 ran prepared.
	require.True(t, strings.HasSuffix(forms[0], " x3"), forms[0])
}

// guardStatements counts the session's statements of the guard upstream.
func guardStatements(t *testing.T, fe *pgproto3.Frontend) string {
	t.Helper()
	return query(t, fe, "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'tg\\_prepared\\_%'")[1]
}

// TestReviewFailedDiscardAllLeaksForms: DISCARD ALL inside a transaction
// block fails (25001) and DEALLOCATE ALL in a failed block fails (25P02),
// but the guard forgets its prepared forms at the decision, without closing
// them: they stay upstream, and each round leaks the session's forms again
// (here 3 a round; up to 64), without bound.
func TestReviewFailedDiscardAllLeaksForms(t *testing.T) {
	e := start(t, basePolicy)
	fe := rawFrontend(t, e)
	round := func() {
		for k := 0; k < 3; k++ {
			for _, id := range []int{1, 4, 7} {
				got := query(t, fe, fmt.Sprintf("SELECT full_name AS n%d FROM patients WHERE id = %d", k, id))
				require.Equal(t, "C SELECT 1", got[2], "%v", got)
			}
		}
	}
	round()
	require.Equal(t, `D "3"`, guardStatements(t, fe))
	require.Equal(t, []string{"C BEGIN", "Z T"}, query(t, fe, "BEGIN"))
	got := query(t, fe, "DISCARD ALL")
	require.True(t, strings.HasPrefix(got[0], "E 25001"), "%v", got)
	got = query(t, fe, "DEALLOCATE ALL")
	require.True(t, strings.HasPrefix(got[0], "E 25P02"), "%v", got)
	require.Equal(t, []string{"C ROLLBACK", "Z I"}, query(t, fe, "ROLLBACK"))
	require.Equal(t, `D "3"`, guardStatements(t, fe), "the forms are still upstream")
	round()
	require.Equal(t, `D "3"`, guardStatements(t, fe), "the session holds each shape once")
}

// TestReviewSchemaChangeFailsAClientsBlock: a migration in another session
// changes a column's type; the client's next statement of a prepared shape,
// inside its transaction block, fails with 0A000 and aborts the block,
// where its text (and KeepSimple) runs. The existing
// TestPreparedFormsAfterSchemaChanges pins the same error outside a block.
func TestReviewSchemaChangeFailsAClientsBlock(t *testing.T) {
	for _, keep := range []bool{true, false} {
		t.Run(fmt.Sprintf("keepSimple=%t", keep), func(t *testing.T) {
			e := startGuard(t, basePolicy, loadedCatalog(t, nil), func(o *guard.Options) { o.KeepSimple = keep })
			fe := rawFrontend(t, e)
			run := func(id int) []string {
				return query(t, fe, fmt.Sprintf("SELECT id, status FROM patients WHERE id = %d", id))
			}
			for _, id := range []int{1, 4, 7} {
				require.Equal(t, "C SELECT 1", run(id)[2])
			}
			_, err := e.direct(t).Exec(ctx(t), "ALTER TABLE patients ALTER COLUMN status TYPE varchar(20)")
			require.NoError(t, err)
			require.Equal(t, []string{"C BEGIN", "Z T"}, query(t, fe, "BEGIN"))
			require.Equal(t, []string{"C UPDATE 1", "Z T"}, query(t, fe, "UPDATE invoices SET memo = 'in block' WHERE id = 4"))
			got := run(10)
			require.Equal(t, []string{`D "10" "active"`, "C SELECT 1", "Z T"}, got[1:], "%v", got)
			require.Equal(t, []string{"C COMMIT", "Z I"}, query(t, fe, "COMMIT"))
		})
	}
}

// sendBatch sends messages without reading, then reads n ReadyForQuery's
// worth of replies.
func sendBatch(t *testing.T, fe *pgproto3.Frontend, n int, msgs ...pgproto3.FrontendMessage) []string {
	t.Helper()
	for _, m := range msgs {
		fe.Send(m)
	}
	require.NoError(t, fe.Flush())
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, transcript(t, fe)...)
	}
	return out
}

func q(sql string) pgproto3.FrontendMessage { return &pgproto3.Query{String: sql} }

// noPosition drops the position and context of errors (a known difference,
// TestReviewErrorFieldsMatch).
func noPosition(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		if j := strings.Index(l, " pos="); j >= 0 && strings.HasPrefix(l, "E ") {
			l = l[:j]
		}
		out[i] = l
	}
	return out
}

// TestReviewPipelinedQueriesMatchText: Queries (and an extended cycle)
// sent back to back before reading, with shapes being learnt, prepared and
// run prepared, errors, a transaction block with a savepoint, and a row
// guard cut: the transcript matches the text path's.
func TestReviewPipelinedQueriesMatchText(t *testing.T) {
	prep := start(t, basePolicy)
	text := textGuard(t)
	for _, e := range []*env{prep, text} {
		_, err := e.direct(t).Exec(ctx(t), "INSERT INTO patients (id, clinic_id, full_name) SELECT i, 2, 'extra ' || i || ' TENANT2' FROM generate_series(1000, 1059) i")
		require.NoError(t, err)
	}
	ft, fp := sessionPair(t, prep, text)
	for round := 0; round < 5; round++ {
		msgs := []pgproto3.FrontendMessage{
			q(fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", 1+3*round)),
			q(fmt.Sprintf("UPDATE invoices SET memo = 'r%d' WHERE id = %d", round, 4)),
			q(fmt.Sprintf("SELECT full_name FROM patients WHERE id = 'x%d'", round)),
			q(fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", 4+3*round)),
			q("BEGIN"),
			q(fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", 7)),
			q("SAVEPOINT s"),
			q(fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", 99999999999)),
			q("ROLLBACK TO SAVEPOINT s"),
			q(fmt.Sprintf("SELECT p.full_name FROM patients p WHERE p.id > %d AND p.clinic_id = 2 ORDER BY id LIMIT 50", round)),
			q(fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", 10)),
			q("COMMIT"),
			&pgproto3.Parse{Query: "SELECT full_name FROM patients WHERE id = $1"},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("13")}},
			&pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
			q(fmt.Sprintf("SELECT p.full_name, i.memo FROM patients p JOIN invoices i ON i.patient_id = p.id WHERE p.id > %d ORDER BY p.id LIMIT 50", round)),
			q(fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", 16)),
			q(fmt.Sprintf("SELECT full_name FROM patients WHERE id >= %d ORDER BY id LIMIT 55", round)),
			q(fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", 19)),
		}
		if round < 2 {
			// One at a time: every shape is learnt, then prepared.
			var batch []pgproto3.FrontendMessage
			for _, m := range msgs {
				batch = append(batch, m)
				switch m.(type) {
				case *pgproto3.Query, *pgproto3.Sync:
					want, got := sendBatch(t, ft, 1, batch...), sendBatch(t, fp, 1, batch...)
					require.Equal(t, noPosition(want), noPosition(got), "round %d", round)
					batch = nil
				}
			}
			continue
		}
		want, got := sendBatch(t, ft, 17, msgs...), sendBatch(t, fp, 17, msgs...)
		require.Equal(t, noPosition(want), noPosition(got), "round %d", round)
	}
	t.Log(preparedForms(t, fp))
}

// TestReviewCutInPreparedForm: a row-guard cut (max_rows 5, status claimed
// unique) of a statement in its prepared form, alone, pipelined and in a
// transaction block, shows what the text shows.
func TestReviewCutInPreparedForm(t *testing.T) {
	prep := startWith(t, rowGuard5Policy, rowGuard5Catalog())
	text := startGuard(t, rowGuard5Policy, loadedCatalog(t, rowGuard5Catalog()), func(o *guard.Options) { o.KeepSimple = true })
	ft, fp := sessionPair(t, prep, text)
	shape := func(v int) pgproto3.FrontendMessage {
		return q(fmt.Sprintf("SELECT full_name FROM patients WHERE status = 'active' AND id > %d", v))
	}
	for v := 0; v < 8; v++ {
		want, got := sendBatch(t, ft, 1, shape(v)), sendBatch(t, fp, 1, shape(v))
		require.Equal(t, noPosition(want), noPosition(got), "v %d", v)
	}
	for round := 0; round < 3; round++ {
		msgs := []pgproto3.FrontendMessage{shape(round), shape(20), q("BEGIN"), shape(1), shape(25), q("SELECT 1"), q("COMMIT"), shape(2)}
		want, got := sendBatch(t, ft, len(msgs), msgs...), sendBatch(t, fp, len(msgs), msgs...)
		require.Equal(t, noPosition(want), noPosition(got), "round %d", round)
	}
	forms := preparedForms(t, fp)
	require.Len(t, forms, 1, "%v", forms)
	t.Log(forms)
}

// TestReviewTenantSwitchesMatchText: a session without a startup tenant
// switches tenants with SET, SET LOCAL, RESET and DISCARD ALL between
// statements of prepared shapes; each statement sees its tenant's rows as
// the text does.
func TestReviewTenantSwitchesMatchText(t *testing.T) {
	prep := start(t, basePolicy)
	text := textGuard(t)
	open := func(e *env) *pgproto3.Frontend {
		hj, err := e.connect(t, "").PgConn().Hijack()
		require.NoError(t, err)
		t.Cleanup(func() { hj.Conn.Close() })
		require.NoError(t, hj.Conn.SetDeadline(time.Now().Add(30*time.Second)))
		return hj.Frontend
	}
	fp, ft := open(prep), open(text)
	var sqls []string
	for i, tenant := range []int{2, 3, 1, 2, 3, 3, 1, 2} {
		sqls = append(sqls, fmt.Sprintf("SET app.clinic_id = %d", tenant))
		for k := 0; k < 3; k++ {
			sqls = append(sqls,
				fmt.Sprintf("SELECT full_name FROM patients WHERE id < %d ORDER BY id LIMIT 3", 10+i+k),
				fmt.Sprintf("SELECT count(*) FROM invoices WHERE id > %d", i+k),
			)
		}
		sqls = append(sqls, "BEGIN", "SET LOCAL app.clinic_id = 1",
			fmt.Sprintf("SELECT full_name FROM patients WHERE id < %d ORDER BY id LIMIT 3", 20+i),
			"COMMIT",
			fmt.Sprintf("SELECT full_name FROM patients WHERE id < %d ORDER BY id LIMIT 3", 30+i))
		if i%3 == 2 {
			sqls = append(sqls, "DISCARD ALL", fmt.Sprintf("SELECT full_name FROM patients WHERE id < %d ORDER BY id LIMIT 3", 40+i))
		}
	}
	for _, sql := range sqls {
		want, got := query(t, ft, sql), query(t, fp, sql)
		require.Equal(t, noPosition(want), noPosition(got), sql)
	}
	t.Log(preparedForms(t, fp))
}

// TestReviewUnnamedLeftovers: a Query destroys the unnamed statement and
// portal; in its prepared form it destroys neither, and leaves an unnamed
// portal of its own inside a block. What the client's later Describe and
// Execute of them show.
func TestReviewUnnamedLeftovers(t *testing.T) {
	prep := start(t, basePolicy)
	text := textGuard(t)
	ft, fp := sessionPair(t, prep, text)
	for _, id := range []int{1, 4, 7} {
		compareRuns(t, ft, fp, fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", id))
	}
	both := func(n int, msgs ...pgproto3.FrontendMessage) {
		t.Helper()
		want, got := sendBatch(t, ft, n, msgs...), sendBatch(t, fp, n, msgs...)
		if fmt.Sprint(want) != fmt.Sprint(got) {
			t.Errorf("text: %q\nprep: %q", want, got)
		}
	}
	both(1, &pgproto3.Parse{Query: "SELECT full_name FROM patients WHERE id = $1", ParameterOIDs: []uint32{23}}, &pgproto3.Sync{})
	both(2, q("SELECT full_name FROM patients WHERE id = 10"), &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{})
	both(1, q("BEGIN"))
	both(2, q("SELECT full_name FROM patients WHERE id = 13"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	both(1, q("COMMIT"))
}

// TestReviewNonceVisibleForgesSentinels: the prepared forms' names show the
// process nonce in pg_prepared_statements (rejection sentinels rely on it
// being unguessable). An upstream error that quotes a sentinel-like name
// is then taken for a rejection of the guard's and passed unredacted.
func TestReviewNonceVisibleForgesSentinels(t *testing.T) {
	e := start(t, basePolicy)
	fe := rawFrontend(t, e)
	for _, id := range []int{1, 4, 7} {
		require.Equal(t, "C SELECT 1", query(t, fe, fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", id))[2])
	}
	name := formName(t, fe)
	nonce := strings.Split(strings.TrimPrefix(name, "tg_prepared_"), "_")[0]
	plain := query(t, fe, "SELECT ('x ' || full_name)::int FROM patients WHERE id = 4")
	require.Contains(t, plain[1], "<redacted>", "%v", plain)
	forged := query(t, fe, "SELECT ('tg_reject_"+nonce+"_1_77 ' || full_name)::int FROM patients WHERE id = 4")
	require.Contains(t, forged[1], "<redacted>", "the error passed unredacted: %v", forged)
	// Not the sentinels' nonce any more; and with that one, a name the
	// session did not register is no sentinel either.
	require.NotEqual(t, guard.SentinelNonce(e.guard), nonce)
	forged = query(t, fe, "SELECT ('tg_reject_"+guard.SentinelNonce(e.guard)+"_1_77 ' || full_name)::int FROM patients WHERE id = 4")
	require.Contains(t, forged[1], "<redacted>", "the error passed unredacted: %v", forged)
}

// TestReviewReloadDuringPreparationLeaks: a catalog reload while the guard's
// Parse of a shape is in flight (here held up by a lock another session
// has) forgets the shape before its ParseComplete: the statement stays
// upstream, never closed, and the shape is prepared again under a new name.
func TestReviewReloadDuringPreparationLeaks(t *testing.T) {
	var load func()
	e := startGuard(t, basePolicy, reloadableCatalog(t, &load))
	fe := rawFrontend(t, e)
	a := func(id int) pgproto3.FrontendMessage {
		return q(fmt.Sprintf("SELECT full_name FROM patients WHERE id = %d", id))
	}
	b := func(id int) pgproto3.FrontendMessage {
		return q(fmt.Sprintf("SELECT memo FROM invoices WHERE id = %d", id))
	}
	require.Equal(t, "C SELECT 1", sendBatch(t, fe, 1, a(1))[2])

	locker := e.direct(t)
	tx, err := locker.Begin(ctx(t))
	require.NoError(t, err)
	_, err = tx.Exec(ctx(t), "LOCK TABLE patients IN ACCESS EXCLUSIVE MODE")
	require.NoError(t, err)
	fe.Send(a(4)) // prepares the shape: its Parse waits for the lock
	require.NoError(t, fe.Flush())
	watcher := e.direct(t)
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, watcher.QueryRow(ctx(t), "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%patients%'").Scan(&n))
		return n > 0
	}, 10*time.Second, 10*time.Millisecond)
	load()
	hits := counterValue(t, e.metrics.RewriteCacheHits)
	fe.Send(b(4)) // learnt under the new catalog
	fe.Send(b(7)) // a hit under it: the session's forms are forgotten
	require.NoError(t, fe.Flush())
	require.Eventually(t, func() bool { // both decided before the lock goes
		return counterValue(t, e.metrics.RewriteCacheHits) > hits
	}, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, tx.Commit(ctx(t)))
	got := sendBatch(t, fe, 3)
	require.Len(t, got, 12, "%v", got)
	for _, id := range []int{10, 13, 16} {
		require.Equal(t, "C SELECT 1", sendBatch(t, fe, 1, a(id))[2])
	}
	var forms []string
	for _, f := range preparedForms(t, fe) {
		if strings.Contains(f, "patients") {
			forms = append(forms, f)
		}
	}
	require.Len(t, forms, 1, "one statement for the shape upstream: %v", forms)
}
