package guard_test

// End-to-end threat-class suite (SPEC §3): every statement goes through the
// proxy as app_user, in the simple and the extended protocol (and
// describe-exec), and everything the client receives — rows, errors with
// their detail, hint and context, notices, notifications and COPY data — is
// scanned for the marker of another tenant (fixture.sql: every text value
// carries TENANT1, TENANT2, TENANT3 or NOTENANT). Writes are checked against
// a snapshot of the other tenants' rows taken straight from the database.
// The proxy runs with a catalog loaded from the live schema, as `serve`
// does (RequireCatalog).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy/catalog"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
	"github.com/tenantguard/tenantguard/rewriter"
)

// threatSetup adds to the fixture the objects through which tenant rows can
// be reached indirectly. It is run (as the superuser) on the proxied
// database and on the database the catalog is loaded from.
const threatSetup = `
CREATE SCHEMA other;
CREATE TABLE other.patients (LIKE public.patients INCLUDING ALL);
INSERT INTO other.patients SELECT id, clinic_id, 'other ' || full_name, 'other.' || email, status FROM public.patients;
GRANT USAGE ON SCHEMA other TO app_user;
GRANT SELECT ON other.patients TO app_user;

CREATE TABLE patients_archive () INHERITS (patients);
INSERT INTO patients_archive VALUES (200, 4, 'archived 200 NOTENANT', 'a200.NOTENANT@example.org', 'archived'),
  (201, NULL, 'archived 201 NOTENANT', 'a201.NOTENANT@example.org', 'archived');
GRANT SELECT, INSERT, UPDATE, DELETE ON patients_archive TO app_user;

CREATE VIEW patient_cards AS SELECT id, clinic_id, full_name FROM patients;
CREATE VIEW patient_names AS SELECT id, full_name FROM patients;
CREATE VIEW card_names AS SELECT id, full_name FROM patient_cards;
CREATE MATERIALIZED VIEW patient_mv AS SELECT id, clinic_id, full_name FROM patients;
CREATE MATERIALIZED VIEW names_mv AS SELECT full_name FROM patients;
GRANT SELECT ON patient_cards, patient_names, card_names, patient_mv, names_mv TO app_user;

CREATE FUNCTION all_names() RETURNS SETOF text LANGUAGE sql STABLE AS $$ SELECT full_name FROM patients $$;
CREATE FUNCTION dump_names() RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text; BEGIN SELECT string_agg(full_name, ',') INTO r FROM patients; RETURN r; END $$;
CREATE FUNCTION run_sql(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text; BEGIN EXECUTE q INTO r; RETURN r; END $$;
CREATE FUNCTION escaped_names() RETURNS text LANGUAGE sql AS $$ SELECT string_agg(full_name, ',') FROM U&"pat\0069ents" $$;
CREATE FUNCTION via_view() RETURNS text LANGUAGE sql AS $$ SELECT string_agg(full_name, ',') FROM patient_names $$;
CREATE FUNCTION via_function() RETURNS text LANGUAGE sql AS $$ SELECT dump_names() $$;
CREATE FUNCTION via_xml() RETURNS text LANGUAGE sql AS $$ SELECT query_to_xml('SELECT full_name FROM pat' || 'ients', true, false, '')::text $$;
CREATE FUNCTION leak_op(int, int) RETURNS text LANGUAGE sql AS $$ SELECT string_agg(full_name, ',') FROM patients $$;
CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = leak_op);
CREATE PROCEDURE copy_names() LANGUAGE sql AS $$ INSERT INTO clinics SELECT id + 1000, full_name FROM patients $$;

CREATE FUNCTION switch_tenant() RETURNS text LANGUAGE sql AS $$ SELECT set_config('app.clinic_id', '2', false) $$;
CREATE FUNCTION switch_tenant_pl() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET app.clinic_id = 2; END $$;
CREATE PROCEDURE switch_proc() LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('app.clinic_id', '2', false); END $$;

CREATE TABLE feedback (id int PRIMARY KEY, body text);
CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'names: %', (SELECT string_agg(full_name, ',') FROM patients); RETURN NEW; END $$;
CREATE TRIGGER feedback_shout BEFORE INSERT ON feedback FOR EACH ROW EXECUTE FUNCTION shout();
GRANT SELECT, INSERT ON feedback TO app_user;
CREATE TABLE stamped (id int PRIMARY KEY, names text DEFAULT dump_names());
CREATE TABLE ruled (id int PRIMARY KEY);
CREATE RULE ruled_echo AS ON INSERT TO ruled DO ALSO SELECT string_agg(full_name, ',') FROM patients;
GRANT SELECT, INSERT ON stamped, ruled TO app_user;
ANALYZE;
`

// startThreats starts tenantguard in front of a fixture database with
// threatSetup applied, and a catalog loaded from an identical database.
func startThreats(t *testing.T, policyYAML string) *env {
	t.Helper()
	return startCatalog(t, policyYAML, threatSetup)
}

// startCatalog starts tenantguard in front of a fixture database with setup
// applied, with the catalog loaded from an identical database (as serve
// does: RequireCatalog).
func startCatalog(t *testing.T, policyYAML, setup string) *env {
	t.Helper()
	c := pgtest.Shared(t)
	cx := ctx(t)
	scratch, err := c.CreateDatabase(cx, "threat_catalog")
	require.NoError(t, err)
	require.NoError(t, c.Exec(cx, scratch, fixtureSQL+";\n"+setup))
	conn, err := c.Connect(cx, scratch)
	require.NoError(t, err)
	cat, err := catalog.LoadConn(cx, conn, catalog.Options{})
	conn.Close(context.Background())
	require.NoError(t, err)
	require.NotNil(t, cat.Relations["public.patients"], "the catalog must describe the fixture")
	e := startWith(t, policyYAML, cat)
	if setup != "" {
		require.NoError(t, c.Exec(cx, e.db, setup))
	}
	return e
}

var allMarkers = []string{"TENANT1", "TENANT2", "TENANT3", "NOTENANT"}

// foreignMarkers returns the markers a session of tenant must never see.
func foreignMarkers(tenant string) []string {
	var out []string
	for _, m := range allMarkers {
		if m != "TENANT"+tenant {
			out = append(out, m)
		}
	}
	return out
}

// scanner is a connection through the proxy that records everything the
// client receives.
type scanner struct {
	e      *env
	tenant string // the tenant whose data the session may see
	params []string
	conn   *pgx.Conn

	mu   sync.Mutex
	oob  bytes.Buffer // notices and notifications not yet checked
	nots []*pgconn.Notification
}

func (e *env) scanner(t *testing.T, tenant string, params ...string) *scanner {
	t.Helper()
	s := &scanner{e: e, tenant: tenant, params: params}
	s.connect(t)
	return s
}

func (s *scanner) connect(t *testing.T) {
	t.Helper()
	params := append([]string(nil), s.params...)
	if s.tenant != "" {
		params = append(params, "app.clinic_id", s.tenant)
	}
	cfg, err := pgx.ParseConfig(s.e.url(pgtest.AppUser, params...))
	require.NoError(t, err)
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.oob.WriteString("NOTICE " + errorText((*pgconn.PgError)(n)) + "\n")
	}
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.oob.WriteString("NOTIFY " + n.Channel + " " + n.Payload + "\n")
		s.nots = append(s.nots, n)
	}
	cx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cx, cfg)
	require.NoError(t, err)
	s.conn = conn
	t.Cleanup(func() { conn.Close(context.Background()) })
}

// errorText renders every field of an error or notice a client can show.
func errorText(pe *pgconn.PgError) string {
	return strings.Join([]string{pe.Severity, pe.Code, pe.Message, pe.Detail, pe.Hint, pe.Where,
		pe.SchemaName, pe.TableName, pe.ColumnName, pe.DataTypeName, pe.ConstraintName, pe.InternalQuery}, " | ")
}

// outcome is everything one statement returned.
type outcome struct {
	rows [][]string
	tags []string
	copy string
	err  error
}

func (o *outcome) text() string {
	var b strings.Builder
	for _, r := range o.rows {
		b.WriteString(strings.Join(r, "\t"))
		b.WriteByte('\n')
	}
	b.WriteString(strings.Join(o.tags, ";"))
	b.WriteString(o.copy)
	if o.err != nil {
		var pe *pgconn.PgError
		if errors.As(o.err, &pe) {
			b.WriteString(errorText(pe))
		} else {
			b.WriteString(o.err.Error())
		}
	}
	return b.String()
}

// column returns the first column of every row.
func (o *outcome) column() []string {
	var out []string
	for _, r := range o.rows {
		if len(r) > 0 {
			out = append(out, r[0])
		}
	}
	return out
}

// Protocol variants of the scanner.
const (
	pSimple   = "simple"   // one Query message (pgconn.Exec, all results read)
	pExtended = "extended" // named prepared statement (pgx cache-statement mode)
	pDescribe = "describe" // unnamed statement, Describe then Execute
	pCopy     = "copy"     // COPY ... TO STDOUT (pgconn.CopyTo)
)

var extendedModes = map[string]pgx.QueryExecMode{pExtended: pgx.QueryExecModeCacheStatement, pDescribe: pgx.QueryExecModeDescribeExec}

// run sends one statement and collects everything the client receives. It
// never fails the test by itself: callers check the outcome.
func (s *scanner) run(t *testing.T, proto, sql string, args ...any) *outcome {
	t.Helper()
	if s.conn.IsClosed() {
		s.connect(t)
	}
	cx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	o := &outcome{}
	switch proto {
	case pSimple:
		results, err := s.conn.PgConn().Exec(cx, sql).ReadAll()
		for _, r := range results {
			for _, row := range r.Rows {
				o.rows = append(o.rows, rawRow(row))
			}
			o.tags = append(o.tags, r.CommandTag.String())
			if r.Err != nil && o.err == nil {
				o.err = r.Err
			}
		}
		if o.err == nil {
			o.err = err
		}
	case pCopy:
		var buf bytes.Buffer
		tag, err := s.conn.PgConn().CopyTo(cx, &buf, sql)
		o.copy, o.err = buf.String(), err
		o.tags = append(o.tags, tag.String())
	default:
		rows, err := s.conn.Query(cx, sql, append([]any{extendedModes[proto]}, args...)...)
		if err != nil {
			o.err = err
			break
		}
		for rows.Next() {
			vals, verr := rows.Values()
			row := rawRow(rows.RawValues())
			if verr == nil {
				for _, v := range vals {
					row = append(row, fmt.Sprint(v))
				}
			}
			o.rows = append(o.rows, row)
		}
		rows.Close()
		o.err = rows.Err()
		o.tags = append(o.tags, rows.CommandTag().String())
	}
	require.NotErrorIs(t, o.err, context.DeadlineExceeded, "statement hung: %s", sql)
	return o
}

// waitNotification waits for the notification with payload and returns it
// with every notification received before it.
func (s *scanner) waitNotification(t *testing.T, payload string) []*pgconn.Notification {
	t.Helper()
	for {
		s.mu.Lock()
		for i, n := range s.nots {
			if n.Payload == payload {
				got := s.nots[:i+1]
				s.nots = s.nots[i+1:]
				s.mu.Unlock()
				return got
			}
		}
		s.mu.Unlock()
		require.NoError(t, s.conn.PgConn().WaitForNotification(ctx(t)))
	}
}

func rawRow(row [][]byte) []string {
	out := make([]string, len(row))
	for i, v := range row {
		if v == nil {
			out[i] = "NULL"
		} else {
			out[i] = string(v)
		}
	}
	return out
}

// clean asserts that nothing the client received since the last check —
// the outcome and every notice and notification — carries another tenant's
// marker.
func (s *scanner) clean(t *testing.T, sql string, o *outcome) {
	t.Helper()
	s.mu.Lock()
	oob := s.oob.String()
	s.oob.Reset()
	s.mu.Unlock()
	// Case-insensitive: identifiers in error messages are folded to lower case.
	got := strings.ToUpper(o.text() + "\n" + oob)
	for _, m := range foreignMarkers(s.tenant) {
		require.NotContains(t, got, m, "tenant %s received another tenant's data (%s)\nstatement: %s", s.tenant, m, sql)
	}
}

// Expectations of a probe.
const (
	wantOK     = "ok"     // succeeds (with only the tenant's data)
	wantReject = "reject" // a tenantguard rejection of any SQLSTATE
	wantEither = "either" // succeeds, or is refused by tenantguard
	wantAny    = "any"    // any outcome, errors of the upstream included: only the marker scan counts
)

// expect checks an outcome: wantOK, wantReject, wantEither, a tenantguard
// SQLSTATE ("42501"), or "pg:<SQLSTATE>" for an error of the upstream.
func expect(t *testing.T, sql string, o *outcome, want string) {
	t.Helper()
	switch {
	case want == wantOK:
		require.NoError(t, o.err, sql)
	case want == wantReject:
		requireRejection(t, sql, o.err)
	case want == wantAny:
	case want == wantEither:
		if o.err != nil {
			requireRejection(t, sql, o.err)
		}
	case strings.HasPrefix(want, "pg:"):
		var pe *pgconn.PgError
		require.True(t, errors.As(o.err, &pe), "want a PostgreSQL error %s for %s, got %v", want, sql, o.err)
		require.Equal(t, want[3:], pe.Code, "%s: %s", sql, pe.Message)
	default:
		require.Error(t, o.err, "want %s: %s", want, sql)
		tenantErr(t, o.err, want)
	}
}

// requireRejection asserts a tenantguard rejection: one of the SQLSTATEs of
// SPEC §1, a message starting with "tenantguard:" and a hint.
func requireRejection(t *testing.T, sql string, err error) {
	t.Helper()
	var pe *pgconn.PgError
	require.True(t, errors.As(err, &pe), "want a tenantguard rejection for %s, got %v", sql, err)
	require.Contains(t, []string{"42501", "54000", "0A000", "42601"}, pe.Code, "%s: %s", sql, pe.Message)
	require.True(t, strings.HasPrefix(pe.Message, "tenantguard:"), "%s: %s", sql, pe.Message)
	require.NotEmpty(t, pe.Hint, sql)
}

// probe is one statement of a threat corpus.
type probe struct {
	sql    string
	want   string
	protos []string // default: simple, extended, describe
	// rls: read-only; when it succeeds its rows must equal the rows the
	// same statement returns under row-level security.
	rls bool
}

var defaultProtos = []string{pSimple, pExtended, pDescribe}

func (p probe) protocols() []string {
	if len(p.protos) > 0 {
		return p.protos
	}
	return defaultProtos
}

func probeName(i int, sql string) string {
	sql = strings.Join(strings.Fields(sql), " ")
	if len(sql) > 70 {
		sql = sql[:70]
	}
	return fmt.Sprintf("%02d %s", i, sql)
}

// runCorpus runs every probe for tenant in every protocol on one
// connection per protocol, and checks that the other tenants' rows did not
// change.
func runCorpus(t *testing.T, e *env, rls *rlsDB, tenant string, corpus []probe) {
	t.Helper()
	before := othersSnapshot(t, e, tenant)
	for _, proto := range []string{pSimple, pExtended, pDescribe, pCopy} {
		var s *scanner
		for i, p := range corpus {
			if !contains(p.protocols(), proto) {
				continue
			}
			if s == nil {
				s = e.scanner(t, tenant)
			}
			t.Run(proto+"/"+probeName(i, p.sql), func(t *testing.T) {
				o := s.run(t, proto, p.sql)
				s.clean(t, p.sql, o)
				expect(t, p.sql, o, p.want)
				if p.want == wantEither || p.want == wantAny {
					var pe *pgconn.PgError
					if errors.As(o.err, &pe) {
						t.Logf("OUTCOME refused %s: %s", pe.Code, pe.Message)
					} else {
						t.Logf("OUTCOME ran: %v", o.tags)
					}
				}
				if p.rls && o.err == nil && rls != nil && proto != pCopy {
					want := rls.rows(t, tenant, proto, p.sql)
					require.Equal(t, want, sortedRows(o, proto), "rows through the proxy differ from RLS: %s", p.sql)
				}
			})
		}
	}
	require.Equal(t, before, othersSnapshot(t, e, tenant), "rows of other tenants must never change")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// othersSnapshot renders every row of the tenant tables that does not
// belong to tenant, read directly as the superuser.
func othersSnapshot(t *testing.T, e *env, tenant string) string {
	t.Helper()
	conn, err := e.c.Connect(ctx(t), e.db)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var b strings.Builder
	for _, table := range []string{"patients", "invoices", "soap_notes", "other.patients"} {
		rows, err := conn.Query(ctx(t), "SELECT row_to_json(x)::text FROM "+table+" x WHERE clinic_id IS DISTINCT FROM $1 ORDER BY id", tenant)
		require.NoError(t, err)
		vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		b.WriteString(table + ":\n" + strings.Join(vals, "\n") + "\n")
	}
	return b.String()
}

// sortedRows renders an outcome's rows for comparison: the text columns of
// the simple protocol, the decoded values of the extended ones.
func sortedRows(o *outcome, proto string) []string {
	out := []string{}
	for _, r := range o.rows {
		if proto != pSimple {
			r = r[len(r)/2:] // rawRow then decoded values
		}
		out = append(out, strings.Join(r, "\t"))
	}
	sort.Strings(out)
	return out
}

// rlsDB is a copy of the fixture with row-level security on the tenant
// tables, read directly (no proxy) as app_user: the reference semantics.
type rlsDB struct {
	c  *pgtest.Cluster
	db string
}

const rlsSetup = `
ALTER TABLE patients ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE soap_notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant ON patients USING (clinic_id = current_setting('app.clinic_id')::int) WITH CHECK (clinic_id = current_setting('app.clinic_id')::int);
CREATE POLICY tenant ON invoices USING (clinic_id = current_setting('app.clinic_id')::int) WITH CHECK (clinic_id = current_setting('app.clinic_id')::int);
CREATE POLICY tenant ON soap_notes USING (clinic_id = current_setting('app.clinic_id')::int) WITH CHECK (clinic_id = current_setting('app.clinic_id')::int);
`

func newRLSDB(t *testing.T, extra string) *rlsDB {
	t.Helper()
	c := pgtest.Shared(t)
	db, err := c.CreateDatabase(ctx(t), "threat_rls")
	require.NoError(t, err)
	require.NoError(t, c.Exec(ctx(t), db, fixtureSQL+";\n"+extra+";\n"+rlsSetup))
	return &rlsDB{c: c, db: db}
}

func (r *rlsDB) connect(t *testing.T, tenant string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx(t), r.c.URL(pgtest.AppUser, "", r.db)+"&app.clinic_id="+tenant)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// rows runs a read-only statement under RLS for tenant in the same
// protocol and returns its sorted rows.
func (r *rlsDB) rows(t *testing.T, tenant, proto, sql string) []string {
	t.Helper()
	conn := r.connect(t, tenant)
	s := &scanner{conn: conn, tenant: tenant}
	o := s.run(t, proto, sql)
	require.NoError(t, o.err, "under RLS: %s", sql)
	return sortedRows(o, proto)
}

// ---------------------------------------------------------------------------
// Scoping gaps: every place a relation can appear.

func TestThreatScopingGaps(t *testing.T) {
	e := startThreats(t, basePolicy)
	rls := newRLSDB(t, threatSetup)
	corpus := []probe{
		{sql: "SELECT full_name FROM patients ORDER BY id LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT p.full_name, i.memo FROM patients p JOIN invoices i ON i.patient_id = p.id LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT p.full_name, i.memo FROM patients p, invoices i WHERE i.patient_id <> p.id LIMIT 50", want: wantOK},
		{sql: "SELECT p.full_name, i.memo FROM patients p LEFT JOIN invoices i ON i.patient_id = p.id LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT p.full_name, i.memo FROM patients p RIGHT JOIN invoices i ON i.patient_id = p.id LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT p.full_name, i.memo FROM patients p FULL JOIN invoices i ON i.patient_id = p.id LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT p.full_name, i.memo FROM patients p FULL JOIN invoices i ON false LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT c.name, p.full_name FROM clinics c LEFT JOIN patients p ON p.clinic_id = c.id LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT c.name, p.full_name FROM patients p RIGHT JOIN clinics c ON p.clinic_id <> c.id LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT * FROM clinics c LEFT JOIN (patients p LEFT JOIN invoices i ON i.patient_id = p.id) ON p.clinic_id = c.id LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT j.full_name FROM (patients p JOIN invoices i ON i.patient_id = p.id) AS j LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT s.n FROM (SELECT full_name AS n FROM patients) s LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT * FROM (SELECT * FROM (SELECT full_name FROM patients) a) b LIMIT 50", want: wantOK, rls: true},
		{sql: "WITH c AS (SELECT full_name FROM patients) SELECT * FROM c LIMIT 50", want: wantOK, rls: true},
		{sql: "WITH c AS MATERIALIZED (SELECT email FROM patients) SELECT * FROM c LIMIT 50", want: wantOK, rls: true},
		{sql: "WITH patients AS (SELECT full_name, clinic_id FROM patients) SELECT full_name FROM patients LIMIT 50", want: wantOK, rls: true},
		{sql: "WITH RECURSIVE r(id, n) AS (SELECT id, full_name FROM patients WHERE id = 3 UNION ALL SELECT p.id, p.full_name FROM patients p JOIN r ON p.id = r.id + 1) SELECT n FROM r LIMIT 50", want: wantOK, rls: true},
		{sql: "WITH RECURSIVE r(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM r WHERE id < 40) SELECT p.full_name FROM r JOIN patients p ON p.id = r.id LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients UNION SELECT memo FROM invoices LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients UNION ALL SELECT note FROM soap_notes LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT memo FROM invoices INTERSECT SELECT memo FROM invoices LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT memo FROM invoices EXCEPT SELECT full_name FROM patients LIMIT 50", want: wantOK, rls: true},
		{sql: "(SELECT email FROM patients LIMIT 10) UNION ALL (SELECT memo FROM invoices LIMIT 10)", want: wantOK, rls: true},
		{sql: "SELECT p.full_name, l.memo FROM patients p, LATERAL (SELECT memo FROM invoices i WHERE i.patient_id <> p.id ORDER BY i.id LIMIT 1) l LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT c.name, l.full_name FROM clinics c CROSS JOIN LATERAL (SELECT full_name FROM patients p WHERE p.clinic_id <> c.id LIMIT 2) l LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT 'TENANT' || c.id FROM clinics c WHERE EXISTS (SELECT 1 FROM patients p WHERE p.clinic_id = c.id) LIMIT 10", want: wantOK, rls: true},
		{sql: "SELECT c.id FROM clinics c WHERE NOT EXISTS (SELECT 1 FROM patients p WHERE p.clinic_id = c.id) LIMIT 10", want: wantOK, rls: true},
		{sql: "SELECT 'TENANT' || c.id FROM clinics c WHERE c.id IN (SELECT clinic_id FROM invoices) LIMIT 10", want: wantOK, rls: true},
		{sql: "SELECT c.id FROM clinics c WHERE c.id NOT IN (SELECT clinic_id FROM soap_notes) LIMIT 10", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients WHERE id NOT IN (SELECT patient_id FROM invoices WHERE patient_id IS NOT NULL) LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT (SELECT string_agg(full_name, ',') FROM patients)", want: wantOK, rls: true},
		{sql: "SELECT (SELECT count(*) FROM patients), (SELECT max(memo) FROM invoices)", want: wantOK, rls: true},
		{sql: "SELECT c.name, (SELECT string_agg(full_name, ',') FROM patients p WHERE p.clinic_id = c.id) FROM clinics c LIMIT 10", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients WHERE id = (SELECT max(id) FROM patients)", want: wantEither, rls: true}, // refused as unbounded (54000) although the key equality bounds it
		{sql: "SELECT name FROM clinics WHERE (SELECT count(*) FROM patients) > 20 LIMIT 10", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients WHERE email = ANY (ARRAY(SELECT email FROM patients)) LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT unnest(ARRAY(SELECT full_name FROM patients)) LIMIT 50", want: wantEither, rls: true},
		{sql: "SELECT array_to_string(ARRAY(SELECT full_name FROM patients), ',')", want: wantOK, rls: true},
		{sql: "SELECT (SELECT json_agg(p) FROM patients p)::text", want: wantOK, rls: true},
		{sql: "SELECT * FROM unnest((SELECT array_agg(email) FROM patients)) LIMIT 50", want: wantEither, rls: true},
		{sql: "VALUES ((SELECT string_agg(full_name, ',') FROM patients))", want: wantOK, rls: true},
		{sql: "SELECT x.full_name FROM (VALUES (1)) v CROSS JOIN LATERAL (SELECT full_name FROM patients LIMIT 50) x", want: wantEither, rls: true}, // refused as unbounded (54000): the one-row VALUES is not counted
		{sql: "SELECT full_name FROM LATERAL (SELECT * FROM patients) x LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT count(*) FILTER (WHERE clinic_id <> 1), count(*) FROM patients", want: wantOK, rls: true},
		{sql: "SELECT 'x' FROM patients HAVING count(*) > 20", want: wantEither, rls: true},
		{sql: "SELECT full_name, count(*) OVER () FROM patients LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients ORDER BY (SELECT count(*) FROM invoices), id LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients WHERE EXISTS (SELECT 1 FROM patients p2 WHERE p2.id = patients.id + 1) LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT (s.p).full_name FROM (SELECT p FROM patients p) s LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM (TABLE patients) t LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients* LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM public.patients * LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients FOR SHARE SKIP LOCKED LIMIT 50", want: wantEither},
		{sql: "SELECT p.full_name FROM patients p NATURAL JOIN invoices i LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT * FROM json_populate_recordset(NULL::patients, (SELECT json_agg(p) FROM patients p)) LIMIT 50", want: wantEither, rls: true},
		{sql: "SELECT full_name FROM patients WHERE id = ANY (SELECT id FROM patients) LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT status, count(*) FROM patients GROUP BY ROLLUP (status) LIMIT 10", want: wantOK, rls: true},
		{sql: "SELECT DISTINCT ON (status) full_name FROM patients ORDER BY status, id LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients UNION ALL SELECT full_name FROM other.patients LIMIT 50", want: wantOK},
		{sql: "TABLE patients", want: "54000"},
		{sql: "TABLE patients LIMIT 50", want: wantEither, rls: true},
		{sql: "SELECT full_name FROM ONLY patients LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT x.full_name FROM patients AS x LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT patients.full_name FROM patients patients LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT invoices.full_name FROM patients AS invoices LIMIT 50", want: wantOK},
		{sql: `SELECT full_name FROM "patients" LIMIT 50`, want: wantOK, rls: true},
		{sql: `SELECT full_name FROM PATIENTS LIMIT 50`, want: wantOK, rls: true},
		{sql: "SELECT full_name FROM public.patients LIMIT 50", want: wantOK, rls: true},
		{sql: `SELECT full_name FROM "public"."patients" LIMIT 50`, want: wantOK, rls: true},
		{sql: `SELECT full_name FROM PUBLIC."patients" LIMIT 50`, want: wantOK, rls: true},
		{sql: "SELECT full_name FROM " + e.db + ".public.patients LIMIT 50", want: wantOK},
		{sql: `SELECT full_name FROM U&"pat\0069ents" LIMIT 50`, want: wantOK, rls: true},
		{sql: `SELECT full_name FROM U&"p!0061tients" UESCAPE '!' LIMIT 50`, want: wantOK, rls: true},
		{sql: `SELECT full_name FROM public.U&"\0070atients" LIMIT 50`, want: wantOK, rls: true},
		{sql: "SELECT full_name FROM other.patients LIMIT 50", want: wantOK},
		// Inheritance: rows of a child table (clinic 4 and NULL) reached
		// through the parent and directly.
		{sql: "SELECT p.tableoid::regclass::text, full_name FROM patients p ORDER BY id DESC LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients_archive LIMIT 50", want: wantOK},
		{sql: "SELECT full_name FROM ONLY patients_archive LIMIT 50", want: wantOK},
		{sql: "SELECT a.full_name FROM patients p JOIN patients_archive a ON a.id <> p.id LIMIT 50", want: wantOK},
		{sql: "SELECT p FROM patients p LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT row_to_json(p) FROM patients p LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients TABLESAMPLE SYSTEM (100) LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients WHERE clinic_id = 2 LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients WHERE clinic_id = 1 OR clinic_id = 2 OR clinic_id IS NULL LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients WHERE true OR clinic_id <> 1 LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients WHERE id = 1 LIMIT 5", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients p WHERE p.clinic_id = current_setting('app.clinic_id')::int + 1 LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients FOR UPDATE LIMIT 50", want: wantEither},
		// Views: one that exposes the tenant column is scoped, one that
		// hides it cannot be scoped and is refused.
		{sql: "SELECT full_name FROM patient_cards LIMIT 50", want: wantOK},
		{sql: "SELECT full_name FROM patient_cards WHERE clinic_id = 2 LIMIT 50", want: wantOK},
		{sql: "SELECT full_name FROM patient_names LIMIT 50", want: "0A000"},
		{sql: "SELECT count(*) FROM patient_names", want: "0A000"},
		{sql: "SELECT full_name FROM card_names LIMIT 50", want: "0A000"},
		{sql: "SELECT full_name FROM public.patient_names LIMIT 50", want: "0A000"},
		{sql: "SELECT full_name FROM patient_mv LIMIT 50", want: wantOK},
		{sql: "SELECT full_name FROM names_mv LIMIT 50", want: "0A000"},
		{sql: "WITH w AS (DELETE FROM soap_notes WHERE clinic_id IS DISTINCT FROM current_setting('app.clinic_id')::int RETURNING note) SELECT note FROM w", want: wantEither},
		{sql: "WITH w AS (DELETE FROM invoices WHERE id > 1000 RETURNING memo) SELECT count(*) FROM w", want: wantEither},
		{sql: "WITH w AS (UPDATE invoices SET memo = memo WHERE id < 5 RETURNING memo) SELECT string_agg(memo, ',') FROM w", want: wantEither},
	}
	for _, tenant := range []string{"1", "2"} {
		t.Run("tenant"+tenant, func(t *testing.T) { runCorpus(t, e, rls, tenant, corpus) })
	}
	t.Run("COPY", func(t *testing.T) {
		runCorpus(t, e, nil, "3", []probe{
			{sql: "COPY patients TO STDOUT", want: wantOK, protos: []string{pCopy}},
			{sql: "COPY public.patients (full_name, email) TO STDOUT WITH (FORMAT csv)", want: wantOK, protos: []string{pCopy}},
			{sql: `COPY "patients" TO STDOUT WITH (FORMAT binary)`, want: wantOK, protos: []string{pCopy}},
			{sql: "COPY (SELECT p.full_name, i.memo FROM patients p FULL JOIN invoices i ON i.patient_id = p.id) TO STDOUT", want: wantEither, protos: []string{pCopy}},
			{sql: "COPY (SELECT full_name FROM patients ORDER BY id LIMIT 50) TO STDOUT", want: wantOK, protos: []string{pCopy}},
			{sql: "COPY (WITH x AS (SELECT memo FROM invoices) SELECT * FROM x LIMIT 50) TO STDOUT", want: wantOK, protos: []string{pCopy}},
			{sql: "COPY other.patients TO STDOUT", want: wantOK, protos: []string{pCopy}},
			{sql: "COPY patient_names TO STDOUT", want: wantReject, protos: []string{pCopy}},
			{sql: "COPY (SELECT * FROM patient_names) TO STDOUT", want: wantReject, protos: []string{pCopy}},
			{sql: "COPY patient_cards TO STDOUT", want: wantEither, protos: []string{pCopy}},
			{sql: "COPY (SELECT dump_names()) TO STDOUT", want: wantReject, protos: []string{pCopy}},
			{sql: "COPY patients TO '/tmp/tenantguard_patients'", want: "42501", protos: []string{pSimple}},
			{sql: "COPY patients TO PROGRAM 'cat'", want: "42501", protos: []string{pSimple}},
		})
	})
	t.Run("search_path", func(t *testing.T) {
		for _, proto := range []string{pSimple, pExtended} {
			s := e.scanner(t, "1")
			o := s.run(t, pSimple, "SET search_path = other, public")
			expect(t, "SET search_path", o, wantOK)
			o = s.run(t, proto, "SELECT full_name FROM patients ORDER BY id LIMIT 50")
			s.clean(t, "after SET search_path", o)
			expect(t, "after SET search_path", o, wantOK)
			require.Len(t, o.rows, 10)
			require.True(t, strings.HasPrefix(o.rows[0][0], "other "), "unqualified patients resolves to other.patients: %v", o.rows[0])
			o = s.run(t, pSimple, "SET search_path = pg_catalog")
			expect(t, "SET search_path", o, wantOK)
			o = s.run(t, proto, "SELECT full_name FROM patients LIMIT 50")
			s.clean(t, "after SET search_path = pg_catalog", o)
			expect(t, "patients is not on the path", o, "pg:42P01")
			o = s.run(t, proto, "SELECT full_name FROM public.patients LIMIT 50")
			s.clean(t, "qualified after SET search_path", o)
			expect(t, "qualified", o, wantOK)
			require.Len(t, o.rows, 10)
			o = s.run(t, pSimple, "SELECT set_config('search_path', 'other', false)")
			s.clean(t, "set_config search_path", o)
			expect(t, "set_config of search_path", o, wantEither)
		}
	})
	requireAuditClean(t, e)
}

// requireAuditClean asserts that no row value reached the audit trail.
func requireAuditClean(t *testing.T, e *env) {
	t.Helper()
	out := e.audit.String()
	for _, m := range allMarkers {
		require.NotContains(t, out, m, "a row value reached the audit trail")
	}
}

// ---------------------------------------------------------------------------
// Parser differentials.

func TestThreatParserDifferentials(t *testing.T) {
	e := startThreats(t, basePolicy)
	rls := newRLSDB(t, threatSetup)
	corpus := []probe{
		{sql: "SELECT /* FROM clinics */ full_name FROM patients -- WHERE clinic_id = 2\nLIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients /* WHERE clinic_id = 2 */ LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM /* a /* nested */ still a comment FROM clinics */ patients LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients LIMIT 50 /* /* */ ; SELECT full_name FROM patients */", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients --\\\nLIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients --; SELECT email FROM patients\r\nLIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients/**/LIMIT/**/50", want: wantOK, rls: true},
		{sql: "SELECT $$ FROM clinics; SELECT full_name FROM patients $$ AS x, full_name FROM patients LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT $t$ ' $$ FROM clinics $t$ AS x, full_name FROM patients LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT $a$$b$ $a$ AS x, email FROM patients LIMIT 50", want: wantOK, rls: true},
		{sql: `SELECT E'\' FROM clinics; SELECT full_name FROM patients --' AS x, full_name FROM patients LIMIT 50`, want: wantOK, rls: true},
		{sql: `SELECT 'a\' AS x, full_name FROM patients LIMIT 50`, want: wantOK, rls: true},
		{sql: `SELECT 'a\'' AS x, full_name FROM patients LIMIT 50 -- '`, want: wantOK, rls: true},
		{sql: `SELECT full_name FROM patients WHERE full_name <> E'\x27 OR true --' LIMIT 50`, want: wantOK, rls: true},
		{sql: `SELECT U&'\0027' AS x, full_name FROM patients LIMIT 50`, want: wantOK, rls: true},
		{sql: "SELECT 'x' 'y' AS x, full_name FROM patients LIMIT 50", want: "pg:42601"},
		{sql: "SELECT 'x'\n'y' AS x, full_name FROM patients LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM patients WHERE full_name = 'a; DELETE FROM invoices' LIMIT 50", want: wantOK, rls: true},
		{sql: "SELECT full_name FROM\tpatients\fLIMIT 50", want: wantOK, rls: true},
		// The parser's reading can be changed by settings: refused.
		{sql: "SET standard_conforming_strings = off", want: "42501"},
		{sql: "SET standard_conforming_strings TO 'off'", want: "42501"},
		{sql: "SET SESSION standard_conforming_strings = false", want: "42501"},
		{sql: "SET standard_conforming_strings = 0", want: "42501"},
		{sql: "SET standard_conforming_strings TO DEFAULT", want: wantEither},
		{sql: "SELECT set_config('standard_conforming_strings', 'off', false)", want: "42501"},
		{sql: "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false)", want: "42501"},
		{sql: "SELECT set_config('standard_conforming_strings', 'off', true)", want: "42501"},
		{sql: "SET client_encoding = 'SJIS'", want: "42501"},
		{sql: "SET client_encoding TO 'BIG5'", want: "42501"},
		{sql: "SET client_encoding = 'GBK'", want: "42501"},
		{sql: "SET NAMES 'SJIS'", want: "42501"},
		{sql: "SET SESSION client_encoding = 'sjis'", want: "42501"},
		{sql: "SELECT set_config('client_encoding', 'SJIS', false)", want: "42501"},
		{sql: "SET escape_string_warning = off", want: wantEither},
		{sql: "SET backslash_quote = on", want: wantEither},
		{sql: "ALTER ROLE app_user SET standard_conforming_strings = off", want: "42501"},
		{sql: "ALTER DATABASE " + e.db + " SET client_encoding = 'SJIS'", want: "42501"},
		{sql: "DO $$ BEGIN SET standard_conforming_strings = off; END $$", want: "42501"},
		// Multi-statement strings in the extended protocol.
		{sql: "SELECT full_name FROM patients LIMIT 1; DELETE FROM invoices", want: "42601", protos: []string{pExtended, pDescribe}},
		{sql: "SELECT full_name FROM patients LIMIT 1; SET standard_conforming_strings = off", want: wantReject},
	}
	for _, tenant := range []string{"1", "3"} {
		t.Run("tenant"+tenant, func(t *testing.T) { runCorpus(t, e, rls, tenant, corpus) })
	}
	t.Run("SET LOCAL in a transaction", func(t *testing.T) {
		for _, setting := range []string{"standard_conforming_strings = off", "client_encoding = 'SJIS'"} {
			s := e.scanner(t, "1")
			expect(t, "BEGIN", s.run(t, pSimple, "BEGIN"), wantOK)
			o := s.run(t, pSimple, "SET LOCAL "+setting)
			s.clean(t, setting, o)
			expect(t, "SET LOCAL "+setting, o, "42501")
			expect(t, "failed transaction", s.run(t, pSimple, "SELECT 1"), "pg:25P02")
			o = s.run(t, pSimple, "COMMIT")
			require.NoError(t, o.err)
			require.Equal(t, []string{"ROLLBACK"}, o.tags)
			o = s.run(t, pSimple, "SHOW standard_conforming_strings; SHOW client_encoding")
			require.NoError(t, o.err)
			require.Equal(t, [][]string{{"on"}, {"UTF8"}}, o.rows)
		}
	})
	t.Run("multi-statement strings are one transaction", func(t *testing.T) {
		before := othersSnapshot(t, e, "1")
		s := e.scanner(t, "1")
		for i, sql := range []string{
			"INSERT INTO clinics VALUES (50, 'x'); SELECT full_name FROM patients",
			"INSERT INTO clinics VALUES (51, 'x'); SET standard_conforming_strings = off; SELECT 1",
			"UPDATE patients SET status = 'mixed' WHERE id = 3; UPDATE patients SET clinic_id = 2 WHERE id = 3",
			"UPDATE patients SET status = 'mixed' WHERE id = 6; SELECT query FROM pg_stat_activity",
			"DELETE FROM soap_notes WHERE id = 9; COPY patients FROM STDIN",
			"INSERT INTO clinics VALUES (52, 'x'); SELECT set_config('app.clinic_id', '2', false), 1",
		} {
			o := s.run(t, pSimple, sql)
			s.clean(t, sql, o)
			requireRejection(t, sql, o.err)
			_ = i
		}
		direct := e.direct(t)
		var n int
		require.NoError(t, direct.QueryRow(ctx(t), "SELECT count(*) FROM clinics WHERE id >= 50").Scan(&n))
		require.Zero(t, n, "nothing of a rejected multi-statement string may commit")
		require.NoError(t, direct.QueryRow(ctx(t), "SELECT count(*) FROM patients WHERE status = 'mixed'").Scan(&n))
		require.Zero(t, n)
		require.NoError(t, direct.QueryRow(ctx(t), "SELECT count(*) FROM soap_notes WHERE id = 9").Scan(&n))
		require.Equal(t, 1, n)
		require.Equal(t, before, othersSnapshot(t, e, "1"))
	})
	requireAuditClean(t, e)
}

// ---------------------------------------------------------------------------
// Indirection: views, functions, prepared statements, cursors, EXPLAIN,
// COPY, CREATE TABLE AS.

func TestThreatIndirection(t *testing.T) {
	e := startThreats(t, basePolicy)
	corpus := []probe{
		{sql: "SELECT all_names() LIMIT 50", want: "42501"},
		{sql: "SELECT * FROM all_names() LIMIT 50", want: "42501"},
		{sql: "SELECT dump_names()", want: "42501"},
		{sql: "SELECT public.dump_names()", want: "42501"},
		{sql: `SELECT "dump_names"()`, want: "42501"},
		{sql: "SELECT run_sql('SELECT string_agg(full_name, '','') FROM patients')", want: "42501"},
		{sql: "SELECT full_name FROM patients WHERE full_name <> dump_names() LIMIT 50", want: "42501"},
		{sql: "SELECT escaped_names()", want: "42501"},
		{sql: "SELECT via_view()", want: "42501"},
		{sql: "SELECT via_function()", want: "42501"},
		{sql: "SELECT via_xml()", want: "42501"},
		{sql: "SELECT 1 ### 1", want: wantReject},
		{sql: "SELECT leak_op(1, 1)", want: "42501"},
		{sql: "CALL copy_names()", want: "42501"},
		{sql: "SELECT query_to_xml('SELECT full_name FROM patients', true, false, '')", want: "42501"},
		{sql: "SELECT table_to_xml('patients', true, false, '')", want: "42501"},
		{sql: "SELECT xmlelement(name x, (SELECT string_agg(full_name, ',') FROM patients))", want: wantOK},
		{sql: "SELECT * FROM ts_stat('SELECT to_tsvector(full_name) FROM patients') LIMIT 50", want: "42501"},
		{sql: "SELECT dblink('dbname=x', 'SELECT 1')", want: "42501"},
		{sql: "DO $$ BEGIN RAISE NOTICE '%', (SELECT string_agg(full_name, ',') FROM patients); END $$", want: "42501"},
		{sql: "EXPLAIN SELECT full_name FROM patients LIMIT 50", want: wantOK},
		{sql: "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF, TIMING OFF) SELECT full_name FROM patients LIMIT 50", want: wantOK},
		{sql: "EXPLAIN ANALYZE SELECT full_name FROM patients", want: wantEither},
		{sql: "EXPLAIN ANALYZE UPDATE patients SET clinic_id = 2", want: "42501"},
		{sql: "EXPLAIN (ANALYZE, VERBOSE) UPDATE invoices SET memo = memo WHERE id < 10 RETURNING memo", want: wantOK},
		{sql: "EXPLAIN ANALYZE SELECT dump_names()", want: "42501"},
		{sql: "EXPLAIN ANALYZE DELETE FROM soap_notes WHERE clinic_id = 2", want: wantOK},
		{sql: "CREATE TABLE dump AS SELECT * FROM patients", want: "42501"},
		{sql: "CREATE TEMP TABLE dump AS SELECT * FROM patients LIMIT 50", want: "42501"},
		{sql: "SELECT * INTO dump FROM patients", want: "42501"},
		{sql: "SELECT * INTO TEMP dump FROM patients LIMIT 50", want: "42501"},
		{sql: "CREATE MATERIALIZED VIEW dump AS SELECT * FROM patients", want: "42501"},
		{sql: "CREATE VIEW dump AS SELECT * FROM patients", want: "42501"},
		{sql: "CREATE TEMP VIEW dump AS SELECT * FROM patients", want: "42501"},
		{sql: "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT string_agg(full_name, ',') FROM patients $$", want: "42501"},
		{sql: "REFRESH MATERIALIZED VIEW names_mv", want: "42501"},
		{sql: "ALTER TABLE patients DISABLE ROW LEVEL SECURITY", want: "42501"},
		{sql: "INSERT INTO feedback VALUES (1, 'hello') ON CONFLICT DO NOTHING", want: wantEither},
		{sql: "INSERT INTO stamped (id) VALUES (1) ON CONFLICT DO NOTHING RETURNING names", want: wantEither},
		{sql: "INSERT INTO ruled SELECT coalesce(max(id), 0) + 1 FROM ruled", want: wantEither},
	}
	t.Run("corpus", func(t *testing.T) { runCorpus(t, e, nil, "1", corpus) })

	t.Run("EXECUTE of a SQL PREPARE after a tenant switch", func(t *testing.T) {
		s := e.scanner(t, "1")
		expect(t, "PREPARE", s.run(t, pSimple, "PREPARE q AS SELECT full_name FROM patients ORDER BY id LIMIT 50"), wantOK)
		o := s.run(t, pSimple, "EXECUTE q")
		s.clean(t, "EXECUTE q", o)
		require.NoError(t, o.err)
		onlyMarker(t, "1", o.column())
		require.Len(t, o.rows, 10)
		expect(t, "SET", s.run(t, pSimple, "SET app.clinic_id = 2"), wantOK)
		s.tenant = "2"
		for _, proto := range defaultProtos {
			// RLS semantics: the statement runs as the tenant at execution time.
			o = s.run(t, proto, "EXECUTE q")
			s.clean(t, "EXECUTE q after switch", o)
			expect(t, "EXECUTE q", o, wantEither)
			if o.err == nil {
				onlyMarker(t, "2", o.column())
			}
		}
		// A prepared statement with a parameter.
		expect(t, "PREPARE", s.run(t, pSimple, "PREPARE q2(int) AS SELECT full_name FROM patients WHERE id > $1 ORDER BY id LIMIT 50"), wantOK)
		expect(t, "SET", s.run(t, pSimple, "SET app.clinic_id = 3"), wantOK)
		s.tenant = "3"
		o = s.run(t, pSimple, "EXECUTE q2(0)")
		s.clean(t, "EXECUTE q2", o)
		expect(t, "EXECUTE q2", o, wantEither)
		if o.err == nil {
			onlyMarker(t, "3", o.column())
		}
		expect(t, "PREPARE unbounded", s.run(t, pSimple, "PREPARE q3 AS SELECT full_name FROM patients"), "54000")
		expect(t, "PREPARE cross-tenant write", s.run(t, pSimple, "PREPARE q4 AS UPDATE patients SET clinic_id = 2"), "42501")
		expect(t, "EXECUTE refused", s.run(t, pSimple, "EXECUTE q3"), "pg:26000")
	})

	t.Run("cursors", func(t *testing.T) {
		for _, proto := range []string{pSimple, pExtended} {
			s := e.scanner(t, "1")
			expect(t, "BEGIN", s.run(t, pSimple, "BEGIN"), wantOK)
			o := s.run(t, proto, "DECLARE c CURSOR FOR SELECT full_name FROM patients ORDER BY id LIMIT 50")
			expect(t, "DECLARE", o, wantOK)
			o = s.run(t, proto, "FETCH 3 FROM c")
			s.clean(t, "FETCH", o)
			require.NoError(t, o.err)
			require.Len(t, o.rows, 3)
			expect(t, "DECLARE unbounded", s.run(t, proto, "DECLARE d CURSOR FOR SELECT full_name FROM patients"), "54000")
			expect(t, "ROLLBACK", s.run(t, pSimple, "ROLLBACK"), wantOK)

			expect(t, "BEGIN", s.run(t, pSimple, "BEGIN"), wantOK)
			expect(t, "DECLARE", s.run(t, proto, "DECLARE c CURSOR FOR SELECT full_name FROM patients ORDER BY id LIMIT 50"), wantOK)
			o = s.run(t, proto, "FETCH 3 FROM c")
			s.clean(t, "FETCH", o)
			onlyMarker(t, "1", o.column())
			// A tenant switch in the middle of a cursor: the rows fetched
			// afterwards are of the cursor's tenant or of the new one, never
			// of a third tenant or of no tenant.
			expect(t, "SET", s.run(t, pSimple, "SET LOCAL app.clinic_id = 2"), wantOK)
			o = s.run(t, proto, "FETCH ALL FROM c")
			require.NoError(t, o.err)
			for _, v := range o.column() {
				require.True(t, strings.Contains(v, "TENANT1") || strings.Contains(v, "TENANT2"), v)
			}
			require.NotContains(t, o.text(), "TENANT3")
			require.NotContains(t, o.text(), "NOTENANT")
			expect(t, "COMMIT", s.run(t, pSimple, "COMMIT"), wantOK)

			// WITH HOLD survives the transaction: a pooled connection handed
			// to another tenant must not be able to read it unscoped.
			expect(t, "DECLARE WITH HOLD", s.run(t, proto, "DECLARE h CURSOR WITH HOLD FOR SELECT email FROM patients ORDER BY id LIMIT 50"), wantOK)
			o = s.run(t, proto, "FETCH 2 FROM h")
			s.clean(t, "FETCH h", o)
			onlyMarker(t, "1", o.column())
			expect(t, "CLOSE", s.run(t, proto, "CLOSE h"), wantOK)
			o = s.run(t, proto, "MOVE FORWARD 1000 IN c")
			require.Error(t, o.err, "the cursor ended with its transaction")
		}
	})
	requireAuditClean(t, e)
}

// ---------------------------------------------------------------------------
// Writes across tenants.

func TestThreatCrossTenantWrites(t *testing.T) {
	e := startThreats(t, basePolicy)
	// Patient 1 belongs to tenant 2, patient 2 to tenant 3, patient 3 to
	// tenant 1 (clinic = 1 + id % 3); patient 100 has no tenant.
	corpus := []probe{
		{sql: "UPDATE patients SET clinic_id = 2 WHERE id = 3", want: "42501"},
		{sql: "UPDATE patients SET clinic_id = 2 WHERE id = 1", want: "42501"},
		{sql: "UPDATE patients SET clinic_id = NULL WHERE id = 3", want: "42501"},
		{sql: "UPDATE patients SET clinic_id = clinic_id + 1 WHERE id = 3", want: "42501"},
		{sql: "UPDATE patients SET (full_name, clinic_id) = (SELECT 'x', 2) WHERE id = 3", want: "42501"},
		{sql: "UPDATE patients p SET clinic_id = c.id FROM clinics c WHERE c.id = 2 AND p.id = 3", want: "42501"},
		{sql: "UPDATE patients SET full_name = 'hacked' WHERE id = 1 RETURNING full_name", want: wantOK},
		{sql: "UPDATE patients SET full_name = 'hacked' WHERE id = 100 RETURNING full_name", want: wantOK},
		{sql: "UPDATE patients SET full_name = 'hacked' WHERE id IN (200, 201) RETURNING full_name", want: wantOK},
		{sql: "UPDATE patients_archive SET full_name = 'hacked' RETURNING full_name", want: wantOK},
		{sql: "DELETE FROM patients_archive RETURNING full_name", want: wantOK},
		{sql: "INSERT INTO patients_archive (id, clinic_id, full_name) VALUES (203, 2, 'x')", want: "42501"},
		{sql: "UPDATE patients SET status = 'x' WHERE clinic_id = 2 OR clinic_id IS NULL RETURNING full_name", want: wantOK},
		{sql: "UPDATE patients SET clinic_id = current_setting('app.clinic_id')::int WHERE id = 1 RETURNING full_name", want: wantEither},
		{sql: "UPDATE patients SET clinic_id = current_setting('app.clinic_id')::int WHERE clinic_id IS NULL RETURNING full_name", want: wantEither},
		{sql: "UPDATE patients SET full_name = (SELECT string_agg(full_name, ',') FROM patients) WHERE id = 3 RETURNING full_name", want: wantOK},
		{sql: "UPDATE invoices i SET memo = p.full_name FROM patients p WHERE p.id <> i.patient_id AND i.id = 6 RETURNING i.memo, p.email", want: wantOK},
		{sql: "INSERT INTO patients (id, clinic_id, full_name) VALUES (501, 2, 'x')", want: "42501"},
		{sql: "INSERT INTO patients (id, clinic_id, full_name) VALUES (502, NULL, 'x')", want: "42501"},
		{sql: "INSERT INTO patients VALUES (503, 2, 'x', NULL, 'active')", want: "42501"},
		{sql: "INSERT INTO patients (id, clinic_id, full_name) VALUES (504, 1, 'x'), (505, 3, 'y')", want: "42501"},
		{sql: "INSERT INTO patients (id, clinic_id, full_name) VALUES (506, (SELECT 2), 'x')", want: "42501"},
		{sql: "INSERT INTO patients (id, clinic_id, full_name) SELECT 507, 2, 'x'", want: "42501"},
		{sql: "INSERT INTO invoices (id, clinic_id, patient_id, memo) SELECT id + 1000, clinic_id, id, memo FROM invoices WHERE id < 50", want: "42501"},
		{sql: "INSERT INTO invoices (id, patient_id, memo) SELECT id + 2000, id, memo FROM invoices WHERE clinic_id = 2 ON CONFLICT (id) DO NOTHING RETURNING memo", want: wantOK},
		{sql: "INSERT INTO invoices (id, patient_id, memo) SELECT i.id + 3000, i.patient_id, p.full_name FROM invoices i JOIN patients p ON p.id <> i.patient_id WHERE i.id = 6 ON CONFLICT (id) DO NOTHING RETURNING memo, clinic_id", want: wantOK},
		{sql: "INSERT INTO clinics (id, name) SELECT id + 200, full_name FROM patients WHERE clinic_id IS DISTINCT FROM current_setting('app.clinic_id')::int RETURNING name", want: wantOK},
		{sql: "INSERT INTO patients (id, full_name) VALUES (1, 'pwned') ON CONFLICT (id) DO UPDATE SET full_name = excluded.full_name RETURNING full_name, email", want: wantEither},
		{sql: "INSERT INTO patients (id, full_name) VALUES (100, 'pwned') ON CONFLICT (id) DO UPDATE SET full_name = excluded.full_name RETURNING full_name, email", want: wantEither},
		{sql: "INSERT INTO patients AS p (id, full_name) VALUES (2, 'pwned') ON CONFLICT (id) DO UPDATE SET full_name = p.full_name || ' seen' RETURNING p.full_name", want: wantEither},
		{sql: "INSERT INTO patients (id, full_name, email) VALUES (601, 'x', 'p2.TEN' || 'ANT3@example.org') ON CONFLICT (email) DO UPDATE SET full_name = 'pwned' RETURNING email", want: wantEither},
		{sql: "INSERT INTO patients (id, full_name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET clinic_id = 2", want: "42501"},
		{sql: "INSERT INTO patients (id, full_name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET clinic_id = current_setting('app.clinic_id')::int RETURNING full_name", want: wantEither},
		{sql: "INSERT INTO patients (id, full_name) VALUES (3, 'x') ON CONFLICT (id) DO UPDATE SET clinic_id = excluded.clinic_id", want: "42501"},
		{sql: "INSERT INTO patients (id, full_name) VALUES (1, 'x') ON CONFLICT DO NOTHING RETURNING full_name", want: wantOK},
		{sql: "MERGE INTO patients t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET full_name = 'merged'", want: wantEither},
		{sql: "MERGE INTO soap_notes t USING (VALUES (1), (2), (100)) s(id) ON t.id = s.id WHEN MATCHED THEN DELETE", want: wantEither},
		{sql: "MERGE INTO patients t USING (VALUES (1)) s(id) ON t.id = s.id WHEN NOT MATCHED THEN INSERT (id, clinic_id, full_name) VALUES (700, 2, 'x')", want: "42501"},
		{sql: "MERGE INTO patients t USING (VALUES (3)) s(id) ON t.id = s.id WHEN MATCHED THEN UPDATE SET clinic_id = 2", want: "42501"},
		{sql: "MERGE INTO invoices t USING patients s ON t.patient_id = s.id WHEN MATCHED THEN UPDATE SET memo = s.full_name", want: wantEither},
		{sql: "MERGE INTO invoices t USING (SELECT string_agg(full_name, ',') AS full_name FROM patients WHERE id <> 6) s ON t.id = 6 WHEN MATCHED THEN UPDATE SET memo = s.full_name", want: wantEither},
		{sql: "MERGE INTO patients t USING (VALUES (1, 'x')) s(id, n) ON t.id = s.id WHEN NOT MATCHED THEN INSERT (id, full_name) VALUES (s.id, s.n)", want: "pg:23505"},
		{sql: "DELETE FROM patients WHERE id = 1", want: wantOK},
		{sql: "DELETE FROM patients WHERE id = 100 RETURNING full_name", want: wantOK},
		{sql: "DELETE FROM invoices i USING patients p WHERE p.id = i.patient_id AND p.clinic_id = 2 RETURNING i.memo, p.full_name", want: wantOK},
		{sql: "DELETE FROM soap_notes n USING patients p WHERE p.id <> n.patient_id AND n.id = 12 RETURNING n.note, p.full_name", want: wantOK},
		{sql: "DELETE FROM soap_notes WHERE clinic_id <> 1 RETURNING note", want: wantOK},
		{sql: "WITH d AS (DELETE FROM invoices WHERE id = 1 RETURNING memo) SELECT memo FROM d", want: wantEither},
		{sql: "WITH u AS (UPDATE patients SET clinic_id = 2 WHERE id = 3 RETURNING id) SELECT id FROM u", want: wantReject},
		{sql: "WITH i AS (INSERT INTO patients (id, clinic_id, full_name) VALUES (702, 2, 'x') RETURNING id) SELECT id FROM i", want: wantReject},
		{sql: "TRUNCATE patients", want: "42501"},
		{sql: "TRUNCATE invoices, soap_notes", want: "42501"},
		{sql: "LOCK TABLE patients IN ACCESS EXCLUSIVE MODE", want: "42501"},
		{sql: "COPY patients FROM STDIN", want: "42501", protos: []string{pSimple}},
		{sql: "COPY invoices (id, clinic_id, patient_id, memo) FROM STDIN", want: "42501", protos: []string{pSimple}},
		{sql: "COPY soap_notes FROM '/etc/passwd'", want: "42501", protos: []string{pSimple}},
	}
	// Each tenant gets its own copy of the corpus against the shared database.
	for _, tenant := range []string{"1", "3"} {
		t.Run("tenant"+tenant, func(t *testing.T) { runCorpus(t, e, nil, tenant, corpus) })
	}

	t.Run("COPY FROM STDIN with data", func(t *testing.T) {
		before := othersSnapshot(t, e, "1")
		s := e.scanner(t, "1")
		cx := ctx(t)
		_, err := s.conn.PgConn().CopyFrom(cx, strings.NewReader("800\t2\tcopied\t\\N\tactive\n"), "COPY patients FROM STDIN")
		tenantErr(t, err, "42501")
		_, err = s.conn.PgConn().CopyFrom(cx, strings.NewReader("801\t1\tcopied\t\\N\tactive\n"), "COPY public.patients (id, clinic_id, full_name, email, status) FROM STDIN")
		tenantErr(t, err, "42501")
		// The connection goes on.
		o := s.run(t, pSimple, "SELECT full_name FROM patients ORDER BY id LIMIT 3")
		require.NoError(t, o.err)
		onlyMarker(t, "1", o.column())
		require.Equal(t, before, othersSnapshot(t, e, "1"))
		var n int
		require.NoError(t, e.direct(t).QueryRow(ctx(t), "SELECT count(*) FROM patients WHERE id >= 800").Scan(&n))
		require.Zero(t, n)
	})

	t.Run("written rows carry the session's tenant", func(t *testing.T) {
		// Invoices inserted by a tenant reference its own patients and carry its tenant.
		var wrong int
		require.NoError(t, e.direct(t).QueryRow(ctx(t),
			"SELECT count(*) FROM invoices WHERE id >= 2000 AND clinic_id NOT IN (1, 3)").Scan(&wrong))
		require.Zero(t, wrong)
		var names []string
		rows, err := e.direct(t).Query(ctx(t), "SELECT name FROM clinics WHERE id > 3")
		require.NoError(t, err)
		names, err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		require.Empty(t, names, "INSERT ... SELECT from another tenant's rows must copy nothing")
	})

	t.Run("locks do not reach other tenants' rows", func(t *testing.T) {
		s := e.scanner(t, "1")
		expect(t, "BEGIN", s.run(t, pSimple, "BEGIN"), wantOK)
		o := s.run(t, pSimple, "SELECT full_name FROM patients WHERE id IN (1, 2, 3) LIMIT 5 FOR UPDATE")
		require.NoError(t, o.err)
		require.Len(t, o.rows, 1)
		other := e.scanner(t, "2")
		expect(t, "lock_timeout", other.run(t, pSimple, "SET lock_timeout = '5s'"), wantOK)
		o = other.run(t, pSimple, "UPDATE patients SET status = 'locked?' WHERE id = 1")
		require.NoError(t, o.err, "tenant 1's FOR UPDATE must not lock tenant 2's row")
		expect(t, "ROLLBACK", s.run(t, pSimple, "ROLLBACK"), wantOK)
	})
	requireAuditClean(t, e)
}

// ---------------------------------------------------------------------------
// Tenant context tampering.

func TestThreatTenantTampering(t *testing.T) {
	e := startThreats(t, basePolicy)
	corpus := []probe{
		{sql: "SELECT full_name FROM patients WHERE set_config('app.clinic_id', '2', false) IS NOT NULL LIMIT 1", want: "42501"},
		{sql: "SELECT (SELECT set_config('app.clinic_id', '2', false))", want: "42501"},
		{sql: "WITH s AS (SELECT set_config('app.clinic_id', '2', false)) SELECT * FROM s", want: "42501"},
		{sql: "SELECT set_config('app.clinic_id', '2', false), 1", want: "42501"},
		{sql: "SELECT set_config('app.clinic_id', '2', false) FROM clinics LIMIT 1", want: "42501"},
		{sql: "SELECT set_config('app.clinic_id', '2', false)::text || ''", want: "42501"},
		{sql: "SELECT set_config(x, '2', false) FROM (VALUES ('app.clinic_id')) v(x)", want: "42501"},
		{sql: "SELECT set_config('app.' || 'clinic_id', '2', false)", want: "42501"},
		{sql: "SELECT set_config('app.clinic_id', (SELECT '2'), false)", want: "42501"},
		{sql: "SELECT pg_catalog.set_config('app.clinic_id', '2', false) WHERE true", want: "42501"},
		{sql: "SELECT full_name FROM patients p JOIN LATERAL (SELECT set_config('app.clinic_id', '2', true)) s ON true LIMIT 1", want: "42501"},
		{sql: "SELECT count(*) FROM patients GROUP BY set_config('app.clinic_id', '2', false) LIMIT 1", want: "42501"},
		{sql: "VALUES (set_config('app.clinic_id', '2', false))", want: "42501"},
		{sql: "SELECT * FROM set_config('app.clinic_id', '2', false)", want: "42501"},
		{sql: "UPDATE patients SET status = set_config('app.clinic_id', '2', false) WHERE id = 3", want: "42501"},
		{sql: "INSERT INTO clinics VALUES (90, set_config('app.clinic_id', '2', false))", want: "42501"},
		{sql: "DO $$ BEGIN PERFORM set_config('app.clinic_id', '2', false); END $$", want: "42501"},
		{sql: "DO $$ BEGIN SET app.clinic_id = 2; END $$", want: "42501"},
		{sql: "SET app.clinic_id = '2; SELECT 1'", want: "42501"},
		{sql: "SET app.clinic_id = '1 OR 1=1'", want: "42501"},
		{sql: "SET app.clinic_id = 'abc'", want: "42501"},
		{sql: "SELECT set_config('app.clinic_id', '2 OR true', false)", want: "42501"},
		{sql: "SET ROLE postgres", want: "42501"},
		{sql: "SET SESSION ROLE postgres", want: "42501"},
		{sql: "SET SESSION AUTHORIZATION postgres", want: "42501"},
		{sql: "SET SESSION AUTHORIZATION DEFAULT", want: wantEither},
		{sql: "RESET ROLE", want: wantEither},
		{sql: "SET ROLE NONE", want: wantEither},
		{sql: "SELECT set_config('role', 'postgres', false)", want: "42501"},
		{sql: "SELECT set_config('session_authorization', 'postgres', false)", want: "42501"},
		{sql: "SET row_security = off", want: "42501"},
		{sql: "ALTER ROLE app_user SET app.clinic_id = 2", want: "42501"},
		{sql: "SELECT full_name FROM patients ORDER BY id LIMIT 50", want: wantOK},
	}
	t.Run("corpus", func(t *testing.T) {
		runCorpus(t, e, nil, "1", corpus)
	})
	// A function or procedure that changes the tenant setting is the same
	// tampering as set_config inside a larger statement. Each probe is
	// followed by a read that must still be the session's tenant's.
	for _, call := range []string{"SELECT switch_tenant()", "SELECT switch_tenant_pl()", "CALL switch_proc()", "SELECT * FROM switch_tenant()"} {
		t.Run(call, func(t *testing.T) {
			runCorpus(t, e, nil, "1", []probe{
				{sql: call, want: wantEither},
				{sql: "SELECT full_name FROM patients ORDER BY id LIMIT 50", want: wantOK},
				{sql: "SELECT current_setting('app.clinic_id')", want: wantOK},
			})
		})
	}

	// tenantIs asserts the rows the session reads now are of tenant, in
	// every protocol.
	tenantIs := func(t *testing.T, s *scanner, tenant string) {
		t.Helper()
		for _, proto := range defaultProtos {
			o := s.run(t, proto, "SELECT full_name FROM patients ORDER BY id LIMIT 50")
			require.NoError(t, o.err)
			require.Len(t, o.rows, 10, proto)
			onlyMarker(t, tenant, o.column())
			o = s.run(t, proto, "SELECT current_setting('app.clinic_id')")
			require.NoError(t, o.err)
			require.Equal(t, tenant, o.rows[0][0], "the upstream's setting")
		}
	}
	type step struct {
		sql  string
		want string
	}
	for _, tc := range []struct {
		name  string
		steps []step
		end   string // tenant afterwards
	}{
		{"SET then ROLLBACK", []step{{"BEGIN", wantOK}, {"SET app.clinic_id = 2", wantOK}, {"ROLLBACK", wantOK}}, "1"},
		{"SET LOCAL then COMMIT", []step{{"BEGIN", wantOK}, {"SET LOCAL app.clinic_id = 2", wantOK}, {"COMMIT", wantOK}}, "1"},
		{"SET then COMMIT", []step{{"BEGIN", wantOK}, {"SET app.clinic_id = 2", wantOK}, {"COMMIT", wantOK}}, "2"},
		{"SAVEPOINT then ROLLBACK TO", []step{{"BEGIN", wantOK}, {"SAVEPOINT s", wantOK}, {"SET app.clinic_id = 2", wantOK}, {"ROLLBACK TO s", wantOK}, {"COMMIT", wantOK}}, "1"},
		{"nested savepoints", []step{{"BEGIN", wantOK}, {"SET app.clinic_id = 2", wantOK}, {"SAVEPOINT a", wantOK}, {"SET app.clinic_id = 3", wantOK}, {"SAVEPOINT b", wantOK}, {"SET app.clinic_id = 1", wantOK}, {"ROLLBACK TO a", wantOK}, {"COMMIT", wantOK}}, "2"},
		{"RELEASE keeps the SET", []step{{"BEGIN", wantOK}, {"SAVEPOINT a", wantOK}, {"SET app.clinic_id = 3", wantOK}, {"RELEASE a", wantOK}, {"COMMIT", wantOK}}, "3"},
		{"SET LOCAL in a savepoint then RELEASE then ROLLBACK", []step{{"BEGIN", wantOK}, {"SAVEPOINT a", wantOK}, {"SET LOCAL app.clinic_id = 3", wantOK}, {"RELEASE a", wantOK}, {"ROLLBACK", wantOK}}, "1"},
		{"error then COMMIT rolls back", []step{{"BEGIN", wantOK}, {"SET app.clinic_id = 2", wantOK}, {"SELECT 1/0", "pg:22012"}, {"COMMIT", wantOK}}, "1"},
		{"rejection then COMMIT rolls back", []step{{"BEGIN", wantOK}, {"SET app.clinic_id = 2", wantOK}, {"SELECT full_name FROM patients", "54000"}, {"COMMIT", wantOK}}, "1"},
		{"error after ROLLBACK TO", []step{{"BEGIN", wantOK}, {"SET app.clinic_id = 2", wantOK}, {"SAVEPOINT a", wantOK}, {"SET app.clinic_id = 3", wantOK}, {"SELECT 1/0", "pg:22012"}, {"ROLLBACK TO a", wantOK}, {"COMMIT", wantOK}}, "2"},
		{"implicit transaction fails", []step{{"SET app.clinic_id = 2; SELECT 1/0", "pg:22012"}}, "1"},
		{"implicit transaction rejected", []step{{"SET app.clinic_id = 2; SELECT full_name FROM patients", "54000"}}, "1"},
		{"implicit transaction commits", []step{{"SET app.clinic_id = 2; SELECT 1", wantOK}}, "2"},
		{"COMMIT AND CHAIN ends SET LOCAL", []step{{"BEGIN", wantOK}, {"SET LOCAL app.clinic_id = 3", wantOK}, {"COMMIT AND CHAIN", wantOK}, {"COMMIT", wantOK}}, "1"},
		{"SET LOCAL outside a transaction", []step{{"SET LOCAL app.clinic_id = 3", wantOK}}, "1"},
		{"RESET ALL", []step{{"SET app.clinic_id = 3", wantOK}, {"RESET ALL", wantOK}}, "1"},
		{"RESET", []step{{"SET app.clinic_id = 3", wantOK}, {"RESET app.clinic_id", wantOK}}, "1"},
		{"SET TO DEFAULT", []step{{"SET app.clinic_id = 3", wantOK}, {"SET app.clinic_id TO DEFAULT", wantOK}}, "1"},
		{"DISCARD ALL", []step{{"SET app.clinic_id = 3", wantOK}, {"DISCARD ALL", wantOK}}, "1"},
		{"set_config idiom", []step{{"SELECT set_config('app.clinic_id', '3', false)", wantOK}}, "3"},
		{"set_config local then ROLLBACK", []step{{"BEGIN", wantOK}, {"SELECT set_config('app.clinic_id', '3', true)", wantOK}, {"ROLLBACK", wantOK}}, "1"},
		{"tampering rejected in a transaction", []step{{"BEGIN", wantOK}, {"SELECT set_config('app.clinic_id', '3', false), 1", "42501"}, {"ROLLBACK", wantOK}}, "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := e.scanner(t, "1")
			s.tenant = "" // checked below, after the steps
			for _, st := range tc.steps {
				o := s.run(t, pSimple, st.sql)
				expect(t, st.sql, o, st.want)
				if st.sql == "COMMIT" && strings.Contains(tc.name, "rolls back") {
					require.Equal(t, []string{"ROLLBACK"}, o.tags)
				}
			}
			s.tenant = tc.end
			tenantIs(t, s, tc.end)
		})
	}

	t.Run("same steps in the extended protocol", func(t *testing.T) {
		s := e.scanner(t, "1")
		b := &pgx.Batch{}
		b.Queue("SELECT set_config('app.clinic_id', $1, false)", "2")
		b.Queue("SELECT full_name FROM patients") // unbounded: the batch fails
		err := s.conn.SendBatch(ctx(t), b).Close()
		tenantErr(t, err, "54000")
		tenantIs(t, s, "1")
		tx, err := s.conn.Begin(ctx(t))
		require.NoError(t, err)
		_, err = tx.Exec(ctx(t), "SELECT set_config('app.clinic_id', $1, false)", "3")
		require.NoError(t, err)
		_, err = tx.Exec(ctx(t), "SAVEPOINT a")
		require.NoError(t, err)
		_, err = tx.Exec(ctx(t), "SELECT set_config('app.clinic_id', $1, false)", "2")
		require.NoError(t, err)
		_, err = tx.Exec(ctx(t), "ROLLBACK TO a")
		require.NoError(t, err)
		require.NoError(t, tx.Commit(ctx(t)))
		tenantIs(t, s, "3")
	})

	t.Run("connection reuse across tenants", func(t *testing.T) {
		// pgxpool style: one connection, no startup tenant, each request sets
		// its tenant; the statement cache is shared by all of them.
		s := e.scanner(t, "")
		const q = "SELECT full_name FROM patients WHERE id > $1 ORDER BY id LIMIT 50"
		// Prepared before any tenant is set (pools and ORMs do): refused at
		// Bind, then right for each tenant.
		for _, proto := range []string{pExtended, pDescribe} {
			expect(t, "no tenant yet", s.run(t, proto, q, 0), "42501")
		}
		for round := 0; round < 2; round++ {
			for _, tenant := range []string{"1", "2", "3"} {
				for _, how := range []string{"SET", "set_config", "SET LOCAL"} {
					s.tenant = tenant
					var tx pgx.Tx
					switch how {
					case "SET":
						expect(t, how, s.run(t, pSimple, "SET app.clinic_id = "+tenant), wantOK)
					case "set_config":
						o := s.run(t, pExtended, "SELECT set_config('app.clinic_id', '"+tenant+"', false)")
						expect(t, how, o, wantOK)
					case "SET LOCAL":
						var err error
						tx, err = s.conn.Begin(ctx(t))
						require.NoError(t, err)
						_, err = tx.Exec(ctx(t), "SET LOCAL app.clinic_id = "+tenant)
						require.NoError(t, err)
					}
					for _, proto := range []string{pExtended, pDescribe} {
						o := s.run(t, proto, q, 0)
						s.clean(t, q, o)
						require.NoError(t, o.err)
						require.Len(t, o.rows, 10)
					}
					if tx != nil {
						require.NoError(t, tx.Commit(ctx(t)))
					}
					// Back to the pool: no tenant.
					expect(t, "RESET", s.run(t, pSimple, "RESET app.clinic_id"), wantOK)
					s.tenant = ""
					o := s.run(t, pExtended, q, 0)
					expect(t, "no tenant after RESET", o, "42501")
				}
			}
		}
		// A SQL-level prepared statement made by one request, executed by the next.
		s.tenant = "1"
		expect(t, "SET", s.run(t, pSimple, "SET app.clinic_id = 1"), wantOK)
		expect(t, "PREPARE", s.run(t, pSimple, "PREPARE shared AS SELECT email FROM patients ORDER BY id LIMIT 50"), wantOK)
		expect(t, "RESET", s.run(t, pSimple, "RESET app.clinic_id"), wantOK)
		s.tenant = ""
		o := s.run(t, pSimple, "EXECUTE shared")
		s.clean(t, "EXECUTE without tenant", o)
		for _, r := range o.rows {
			for _, m := range allMarkers {
				require.NotContains(t, r[0], m, "EXECUTE without a tenant returned tenant rows")
			}
		}
		expect(t, "SET", s.run(t, pSimple, "SET app.clinic_id = 2"), wantOK)
		s.tenant = "2"
		o = s.run(t, pSimple, "EXECUTE shared")
		s.clean(t, "EXECUTE shared as tenant 2", o)
		if o.err == nil {
			onlyMarker(t, "2", o.column())
		} else {
			requireRejection(t, "EXECUTE shared", o.err)
		}
	})
	requireAuditClean(t, e)
}

// ---------------------------------------------------------------------------
// Side channels.

func TestThreatSideChannels(t *testing.T) {
	e := startThreats(t, basePolicy)
	// Another session of tenant 2 leaves a statement with its marker in
	// pg_stat_activity.
	t2 := e.scanner(t, "2")
	o := t2.run(t, pSimple, "SELECT full_name FROM patients WHERE full_name <> 'TENANT2 secret' ORDER BY id LIMIT 1")
	require.NoError(t, o.err)
	// p2's email belongs to tenant 3.
	const foreignEmail = "'p2.TEN' || 'ANT3@example.org'"
	corpus := []probe{
		{sql: "INSERT INTO patients (id, full_name, email) VALUES (700, 'dup', " + foreignEmail + ")", want: "pg:23505"},
		{sql: "UPDATE patients SET email = " + foreignEmail + " WHERE id = 3", want: "pg:23505"},
		{sql: "INSERT INTO patients (id, full_name) VALUES (1, 'dup')", want: "pg:23505"},
		{sql: "SELECT full_name::int FROM patients WHERE id = 3 LIMIT 5", want: "pg:22P02"},
		{sql: "SELECT id FROM patients WHERE full_name::int > 0 LIMIT 50", want: "pg:22P02"},
		{sql: "SELECT id FROM patients WHERE email::int > 0 OR false LIMIT 50", want: "pg:22P02"},
		{sql: "SELECT id FROM patients WHERE translate(full_name, ' ', '')::json IS NOT NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE translate(full_name, ' ', '')::jsonb IS NOT NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE full_name::xml IS NOT NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE to_date(full_name, 'YYYY') IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE ('{' || translate(full_name, ' ', ',') || '}')::int[] IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE full_name::regclass IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE full_name::regproc IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE full_name::date IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE full_name::inet IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE email::uuid IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE full_name::tsquery IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE full_name ~ ('(' || full_name) LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE format(full_name || ' %s %s') IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE jsonb_path_query_first('{}', full_name::jsonpath) IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE to_date(full_name, 'FMMonth') IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE replace(full_name, ' ', '_')::regclass IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE replace(full_name, ' ', '_')::regrole IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE replace(full_name, ' ', '_')::regtype IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE replace(full_name, ' ', '_')::regnamespace IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE current_setting(replace(full_name, ' ', '_')) IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE has_table_privilege(replace(full_name, ' ', '_'), 'select') LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE xmlparse(document full_name) IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE full_name::interval IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE full_name::bool LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE ('\"' || full_name)::json IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT id FROM patients WHERE to_tsquery(full_name) IS NULL LIMIT 50", want: wantAny},
		{sql: "SELECT full_name FROM patients WHERE 1 / (id - 1) = 0 LIMIT 50", want: wantOK},
		// Were the user's predicate evaluated on other tenants' rows, this
		// would be an oracle on their values (it would fail exactly when
		// patient 1, tenant 2's, has a name ending in its marker). Under RLS
		// it returns tenant 1's rows; today it does through the proxy too
		// (this predicate is costlier than the tenant one), unlike the one
		// above.
		{sql: "SELECT full_name FROM patients WHERE 1 / (CASE WHEN id = 1 AND full_name LIKE '%TEN' || 'ANT2' THEN 0 ELSE 1 END) = 1 LIMIT 50", want: wantOK},
		{sql: "SELECT p.id FROM patients p JOIN invoices i ON i.memo::int = p.id LIMIT 50", want: wantAny},
		{sql: "SELECT (SELECT full_name::int FROM patients WHERE id = 1)", want: wantAny},
		{sql: "SELECT id FROM invoices WHERE memo::numeric > 0 LIMIT 50", want: wantAny},
		{sql: "NOTIFY \"2:updates\", 'from tenant 1'", want: wantEither},
		{sql: "LISTEN \"2:updates\"", want: wantEither},
		{sql: "SELECT pg_notify('2:updates', 'x')", want: "42501"},
		{sql: "NOTIFY U&\"\\0032:updates\", 'x'", want: wantEither},
		{sql: "SELECT pg_advisory_lock(1)", want: "42501"},
		{sql: "SELECT pg_try_advisory_lock(1)", want: "42501"},
		{sql: "SELECT pg_advisory_xact_lock(1)", want: "42501"},
		{sql: "SELECT pg_advisory_lock_shared(1)", want: "42501"},
		{sql: "SELECT pg_catalog.pg_advisory_lock(1, 2)", want: "42501"},
		{sql: "SELECT pg_advisory_unlock_all()", want: "42501"},
		{sql: "SELECT query FROM pg_stat_activity", want: "42501"},
		{sql: "SELECT query FROM pg_catalog.pg_stat_activity LIMIT 10", want: "42501"},
		{sql: `SELECT query FROM "pg_stat_activity" LIMIT 10`, want: "42501"},
		{sql: "WITH a AS (SELECT query FROM pg_stat_activity) SELECT * FROM a LIMIT 10", want: "42501"},
		{sql: "SELECT (SELECT string_agg(query, ',') FROM pg_stat_activity)", want: "42501"},
		{sql: "SELECT * FROM pg_stat_get_activity(NULL) LIMIT 10", want: "42501"},
		{sql: "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s LIMIT 10", want: "42501"},
		{sql: "SELECT query FROM pg_stat_statements LIMIT 10", want: "42501"},
		{sql: "SELECT histogram_bounds::text FROM pg_stats WHERE tablename = 'patients' LIMIT 10", want: "42501"},
		{sql: "SELECT histogram_bounds::text FROM pg_catalog.pg_stats LIMIT 10", want: "42501"},
		{sql: `SELECT histogram_bounds::text FROM PG_CATALOG."pg_stats" LIMIT 10`, want: "42501"},
		{sql: `SELECT histogram_bounds::text FROM U&"pg_st\0061ts" LIMIT 10`, want: "42501"},
		{sql: "SELECT s.most_common_vals::text FROM pg_stats s JOIN clinics c ON true LIMIT 10", want: "42501"},
		{sql: "SELECT * FROM pg_stats_ext LIMIT 10", want: "42501"},
		{sql: "SELECT * FROM pg_stats_ext_exprs LIMIT 10", want: "42501"},
		{sql: "SELECT * FROM pg_locks LIMIT 10", want: "42501"},
		{sql: "SELECT * FROM pg_prepared_statements LIMIT 10", want: wantEither},
		{sql: "SELECT * FROM pg_stat_user_tables LIMIT 10", want: wantEither},
		{sql: "SELECT stxdndistinct::text FROM pg_statistic_ext_data LIMIT 10", want: wantEither},
		{sql: "SELECT pg_terminate_backend(pg_backend_pid())", want: "42501"},
		{sql: "SELECT pg_cancel_backend(1)", want: "42501"},
		{sql: "SELECT pg_read_file('/etc/hostname')", want: "42501"},
		{sql: "SELECT lo_import('/etc/hostname')", want: "42501"},
	}
	t.Run("corpus", func(t *testing.T) { runCorpus(t, e, nil, "1", corpus) })

	t.Run("notifications", func(t *testing.T) {
		l1 := e.scanner(t, "1")
		l2 := e.scanner(t, "2")
		for _, sql := range []string{"LISTEN updates", `LISTEN "2:updates"`, `LISTEN "updates"`} {
			o := l1.run(t, pSimple, sql)
			l1.clean(t, sql, o)
			expect(t, sql, o, wantEither)
		}
		expect(t, "LISTEN", l2.run(t, pSimple, "LISTEN updates"), wantOK)
		// Tenant 2 notifies with its marker; tenant 1 then notifies itself.
		// Notifications arrive in commit order: when tenant 1 hears its own
		// last one, tenant 2's would already have arrived.
		n2 := e.scanner(t, "2")
		expect(t, "NOTIFY", n2.run(t, pSimple, "NOTIFY updates, 'TEN' || 'ANT2'"), wantReject)
		expect(t, "NOTIFY", n2.run(t, pSimple, "NOTIFY updates, 'payload of TENANT2'"), wantOK)
		for _, proto := range defaultProtos {
			o := n2.run(t, proto, "SELECT pg_notify('updates', 'x')")
			expect(t, "pg_notify", o, "42501")
		}
		n1 := e.scanner(t, "1")
		expect(t, "NOTIFY", n1.run(t, pSimple, "NOTIFY \"2:updates\", 'fake'"), wantEither)
		expect(t, "NOTIFY", n1.run(t, pSimple, "NOTIFY updates, 'end of TENANT1'"), wantOK)
		got := l1.waitNotification(t, "end of TENANT1")
		l1.clean(t, "notifications", &outcome{})
		require.Equal(t, "updates", got[len(got)-1].Channel, "the namespace is invisible")
		for _, n := range got {
			require.NotEqual(t, "payload of TENANT2", n.Payload)
		}
		expect(t, "NOTIFY", n2.run(t, pSimple, "NOTIFY updates, 'end of TENANT2'"), wantOK)
		got = l2.waitNotification(t, "end of TENANT2")
		l2.clean(t, "notifications", &outcome{})
		var payloads []string
		for _, n := range got {
			payloads = append(payloads, n.Payload)
			require.Equal(t, "updates", n.Channel)
		}
		require.Equal(t, []string{"payload of TENANT2", "end of TENANT2"}, payloads, "tenant 2 hears its own notifications only")
	})

	t.Run("advisory locks are not shared across tenants", func(t *testing.T) {
		for _, proto := range defaultProtos {
			s := e.scanner(t, "1")
			o := s.run(t, proto, "SELECT pg_advisory_lock($1)")
			expect(t, "advisory lock", o, "42501")
		}
	})
	requireAuditClean(t, e)
}

// ---------------------------------------------------------------------------
// Resource abuse.

func TestThreatResourceAbuse(t *testing.T) {
	e := startThreats(t, basePolicy)
	corpus := []probe{
		{sql: "SELECT full_name FROM patients", want: "54000"},
		{sql: "SELECT full_name FROM patients LIMIT 1000", want: "54000"},
		{sql: "SELECT full_name FROM patients LIMIT 51", want: "54000"},
		{sql: "SELECT full_name FROM patients LIMIT ALL", want: "54000"},
		{sql: "SELECT full_name FROM patients LIMIT NULL", want: "54000"},
		{sql: "SELECT full_name FROM patients LIMIT (SELECT 5)", want: "54000"},
		{sql: "SELECT full_name FROM patients LIMIT 50.5", want: wantEither},
		{sql: "SELECT full_name FROM patients LIMIT '1000'", want: wantReject},
		{sql: "SELECT full_name FROM patients LIMIT 10 + 1000", want: wantReject},
		{sql: "SELECT full_name FROM patients LIMIT -1", want: wantEither},
		{sql: "SELECT full_name FROM patients ORDER BY id FETCH FIRST 1000 ROWS ONLY", want: "54000"},
		{sql: "SELECT full_name FROM patients ORDER BY status FETCH FIRST 5 ROWS WITH TIES", want: "54000"},
		{sql: "SELECT full_name FROM patients ORDER BY id LIMIT 10 OFFSET 10000000", want: "54000"},
		{sql: "SELECT full_name FROM patients ORDER BY id OFFSET 10000000", want: "54000"},
		{sql: "SELECT full_name FROM patients ORDER BY id LIMIT 50 OFFSET 5", want: wantOK},
		{sql: "SELECT pg_sleep(5)", want: "42501"},
		{sql: "SELECT pg_sleep_for('5 seconds')", want: "42501"},
		{sql: "SELECT pg_sleep_until(now() + interval '5 seconds')", want: "42501"},
		{sql: "SELECT full_name FROM patients WHERE id = (SELECT pg_sleep(5)::text::int) LIMIT 1", want: "42501"},
		{sql: "SELECT full_name FROM patients, generate_series(1, 100000) g LIMIT 50", want: wantOK},
		{sql: "SELECT a.full_name FROM patients a CROSS JOIN patients b LIMIT 50", want: wantOK},
		{sql: "SELECT a.full_name FROM patients a CROSS JOIN generate_series(1, 100) g LIMIT 1000", want: "54000"},
		{sql: "SELECT generate_series(1, 1000000), full_name FROM patients WHERE id = 3", want: "54000"},
		{sql: "SELECT generate_series(1, 1000000), count(*) FROM patients", want: "54000"},
		{sql: "SELECT full_name, unnest(ARRAY[1, 2, 3]) FROM patients ORDER BY id LIMIT 50", want: wantEither},
		{sql: "SELECT status, count(*) FROM patients GROUP BY status", want: "54000"},
		{sql: "SELECT full_name FROM patients GROUP BY full_name LIMIT 50", want: wantOK},
		{sql: "(SELECT full_name FROM patients LIMIT 50) UNION ALL (SELECT email FROM patients LIMIT 50)", want: "54000"},
		{sql: "SELECT * FROM (SELECT full_name FROM patients) s", want: "54000"},
		{sql: "WITH s AS (SELECT full_name FROM patients) SELECT * FROM s", want: "54000"},
		{sql: "SELECT full_name FROM patients WHERE id IN (3, 6, 9)", want: wantEither},
		// patients_archive INHERITS patients (threatSetup): the parent's
		// unique email does not hold across the hierarchy, so it bounds
		// nothing here (a unique-key lookup is bounded elsewhere).
		{sql: "SELECT full_name FROM patients WHERE email = 'p3.x'", want: "54000"},
		{sql: "SELECT full_name FROM ONLY patients WHERE email = 'p3.x' LIMIT 1", want: wantOK},
		{sql: "DECLARE c CURSOR FOR SELECT full_name FROM patients", want: "54000"},
		{sql: "LOCK TABLE invoices", want: "42501"},
	}
	t.Run("corpus", func(t *testing.T) { runCorpus(t, e, nil, "1", corpus) })

	t.Run("LIMIT parameters are checked at Bind", func(t *testing.T) {
		s := e.scanner(t, "1")
		for _, proto := range []string{pExtended, pDescribe} {
			for _, limit := range []any{1000, int64(51), "1000", nil} {
				o := s.run(t, proto, "SELECT full_name FROM patients ORDER BY id LIMIT $1", limit)
				s.clean(t, "LIMIT $1", o)
				if limit == nil {
					expect(t, "LIMIT NULL", o, wantReject)
					continue
				}
				expect(t, fmt.Sprint("LIMIT ", limit), o, "54000")
			}
			o := s.run(t, proto, "SELECT full_name FROM patients ORDER BY id LIMIT $1 OFFSET $2", 5, 10000000)
			s.clean(t, "OFFSET $2", o)
			expect(t, "OFFSET parameter", o, wantEither)
			o = s.run(t, proto, "SELECT full_name FROM patients ORDER BY id LIMIT $1", 5)
			s.clean(t, "LIMIT 5", o)
			require.NoError(t, o.err)
			require.Len(t, o.rows, 5)
		}
	})
	requireAuditClean(t, e)
}

// ---------------------------------------------------------------------------
// psql.

func TestThreatPsql(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("psql not installed")
	}
	e := startThreats(t, basePolicy)
	psql := func(t *testing.T, env []string, tenantOptions string, cmds ...string) string {
		t.Helper()
		args := []string{"-X", "-A", "-t", "-v", "ON_ERROR_STOP=0", e.url(pgtest.AppUser, "options", tenantOptions)}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		cx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cx, "psql", args...)
		cmd.Env = append(append(os.Environ(), "PGCLIENTENCODING=UTF8", "PGCONNECT_TIMEOUT=10"), env...)
		out, _ := cmd.CombinedOutput()
		require.NoError(t, cx.Err(), "psql hung")
		return string(out)
	}
	cmds := []string{
		"SELECT full_name FROM patients ORDER BY id LIMIT 50",
		"SELECT p.full_name, i.memo FROM patients p FULL JOIN invoices i ON i.patient_id = p.id LIMIT 50",
		"SELECT full_name FROM patients",
		"SELECT full_name FROM patient_names LIMIT 50",
		"SELECT dump_names()",
		"SELECT set_config('app.clinic_id', '2', false), 1",
		"SET standard_conforming_strings = off",
		"SET client_encoding = 'SJIS'",
		"SELECT id FROM patients WHERE translate(full_name, ' ', '')::json IS NOT NULL LIMIT 50",
		"SELECT id FROM patients WHERE replace(full_name, ' ', '_')::regclass IS NULL LIMIT 50",
		"INSERT INTO patients (id, full_name, email) VALUES (700, 'dup', 'p2.TEN' || 'ANT3@example.org')",
		"COPY patients TO STDOUT",
		"COPY (SELECT memo FROM invoices) TO STDOUT",
		"SELECT query FROM pg_stat_activity",
		"BEGIN; SET LOCAL app.clinic_id = 2; ROLLBACK; SELECT email FROM patients ORDER BY id LIMIT 50",
		"SELECT 'TENANT' || c.id FROM clinics c WHERE EXISTS (SELECT 1 FROM patients p WHERE p.clinic_id = c.id) LIMIT 10",
		`\copy (SELECT full_name FROM patients ORDER BY id LIMIT 50) TO STDOUT`,
		`\copy patients FROM STDIN`,
	}
	for _, tenant := range []string{"1", "2", "3"} {
		t.Run("tenant"+tenant, func(t *testing.T) {
			before := othersSnapshot(t, e, tenant)
			out := psql(t, nil, "-c app.clinic_id="+tenant, cmds...)
			for _, m := range foreignMarkers(tenant) {
				require.NotContains(t, strings.ToUpper(out), m, "psql output of tenant %s:\n%s", tenant, out)
			}
			require.Contains(t, out, "TENANT"+tenant)
			require.Contains(t, out, "tenantguard:")
			require.Contains(t, out, "HINT:")
			require.Equal(t, before, othersSnapshot(t, e, tenant))
		})
	}
	t.Run("client encoding from the environment", func(t *testing.T) {
		out := psql(t, []string{"PGCLIENTENCODING=SJIS"}, "-c app.clinic_id=1", "SELECT full_name FROM patients ORDER BY id LIMIT 50")
		require.Contains(t, out, "tenantguard:")
		for _, m := range allMarkers {
			require.NotContains(t, out, m)
		}
	})
	t.Run("scs in PGOPTIONS", func(t *testing.T) {
		out := psql(t, nil, "-c app.clinic_id=1 -c standard_conforming_strings=off", "SELECT full_name FROM patients ORDER BY id LIMIT 50")
		require.Contains(t, out, "tenantguard:")
		for _, m := range allMarkers {
			require.NotContains(t, out, m)
		}
	})
	requireAuditClean(t, e)
}

// ---------------------------------------------------------------------------
// RLS equivalence: ordinary application queries return through the proxy
// exactly what they return under row-level security.

func TestThreatRLSEquivalence(t *testing.T) {
	e := startCatalog(t, basePolicy, "")
	rls := newRLSDB(t, "")
	queries := []string{
		"SELECT id, full_name, email, status FROM patients ORDER BY id LIMIT 50",
		"SELECT full_name FROM patients WHERE id = 3",
		"SELECT count(*), min(id), max(id) FROM patients",
		"SELECT count(*) FROM invoices",
		"SELECT status, count(*) FROM patients GROUP BY status ORDER BY status LIMIT 10",
		"SELECT p.full_name, count(i.id) AS n FROM patients p LEFT JOIN invoices i ON i.patient_id = p.id GROUP BY p.full_name ORDER BY p.full_name LIMIT 50",
		"SELECT p.full_name, i.memo FROM patients p JOIN invoices i ON i.patient_id = p.id ORDER BY p.id LIMIT 50",
		"SELECT p.full_name, i.memo FROM patients p LEFT JOIN invoices i ON i.patient_id = p.id ORDER BY p.id LIMIT 50",
		"SELECT p.full_name, i.memo FROM patients p RIGHT JOIN invoices i ON i.patient_id = p.id ORDER BY i.id LIMIT 50",
		"SELECT p.full_name, n.note FROM patients p FULL JOIN soap_notes n ON n.patient_id = p.id ORDER BY p.id, n.id LIMIT 50",
		"SELECT c.name, count(p.id) FROM clinics c LEFT JOIN patients p ON p.clinic_id = c.id GROUP BY c.name ORDER BY c.name LIMIT 10",
		"SELECT c.name, (SELECT count(*) FROM patients p WHERE p.clinic_id = c.id) FROM clinics c ORDER BY c.id LIMIT 10",
		"SELECT id, full_name, row_number() OVER (ORDER BY id DESC) FROM patients ORDER BY id LIMIT 50",
		"SELECT id, sum(id) OVER (PARTITION BY status ORDER BY id) FROM patients ORDER BY id LIMIT 50",
		"WITH recent AS (SELECT id, patient_id FROM invoices WHERE id > 10) SELECT p.full_name FROM recent r JOIN patients p ON p.id = r.patient_id ORDER BY p.id LIMIT 50",
		"WITH RECURSIVE r(id) AS (SELECT min(id) FROM patients UNION ALL SELECT (SELECT min(p.id) FROM patients p WHERE p.id > r.id) FROM r WHERE r.id IS NOT NULL) SELECT id FROM r LIMIT 50",
		"SELECT full_name FROM patients ORDER BY id LIMIT 5 OFFSET 5",
		"SELECT full_name FROM patients WHERE id > 10 ORDER BY id LIMIT 3",
		"SELECT full_name FROM patients p WHERE EXISTS (SELECT 1 FROM invoices i WHERE i.patient_id = p.id) ORDER BY id LIMIT 50",
		"SELECT full_name FROM patients p WHERE NOT EXISTS (SELECT 1 FROM soap_notes n WHERE n.patient_id = p.id AND n.id > 15) ORDER BY id LIMIT 50",
		"SELECT full_name FROM patients WHERE id IN (SELECT patient_id FROM invoices) ORDER BY id LIMIT 50",
		"SELECT full_name FROM patients WHERE id NOT IN (SELECT patient_id FROM invoices WHERE id < 15) ORDER BY id LIMIT 50",
		"SELECT c.id FROM clinics c WHERE NOT EXISTS (SELECT 1 FROM patients p WHERE p.clinic_id = c.id) ORDER BY c.id LIMIT 10",
		"SELECT full_name FROM patients UNION SELECT memo FROM invoices ORDER BY 1 LIMIT 50",
		"SELECT p.full_name, l.memo FROM patients p CROSS JOIN LATERAL (SELECT memo FROM invoices i WHERE i.patient_id >= p.id ORDER BY i.id LIMIT 1) l ORDER BY p.id LIMIT 50",
		"SELECT DISTINCT status FROM patients ORDER BY status LIMIT 10",
		"SELECT string_agg(full_name, ',' ORDER BY id) FROM patients",
		"SELECT json_agg(email ORDER BY id)::text FROM patients",
		"SELECT status FROM patients GROUP BY status HAVING count(*) > 1 ORDER BY status LIMIT 10",
		"SELECT (SELECT max(memo) FROM invoices), (SELECT count(*) FROM soap_notes)",
	}
	// Writes with RETURNING, each in a transaction that is rolled back.
	writes := []string{
		"INSERT INTO patients (id, clinic_id, full_name) VALUES (900, current_setting('app.clinic_id')::int, 'new') ON CONFLICT (id) DO UPDATE SET status = 'upserted' RETURNING id, full_name, status",
		"UPDATE patients SET status = 'seen' WHERE id <= 12 RETURNING id, full_name, status",
		"DELETE FROM soap_notes WHERE id < 10 RETURNING id, note",
		"UPDATE invoices i SET memo = p.full_name FROM patients p WHERE p.id = i.patient_id RETURNING i.id, i.memo",
	}
	// rejectedByProxy lists the statements the proxy refuses although RLS
	// runs them, each with why the refusal is genuinely needed.
	rejectedByProxy := map[string]string{}
	for _, tenant := range []string{"1", "2", "3"} {
		proxied := e.connect(t, tenant)
		direct := rls.connect(t, tenant)
		for _, m := range []struct {
			name string
			mode pgx.QueryExecMode
		}{{"simple", pgx.QueryExecModeSimpleProtocol}, {"extended", pgx.QueryExecModeCacheStatement}, {"describe", pgx.QueryExecModeDescribeExec}} {
			for i, q := range queries {
				t.Run(fmt.Sprintf("tenant%s/%s/%s", tenant, m.name, probeName(i, q)), func(t *testing.T) {
					want, err := collect(ctx(t), direct, m.mode, q)
					require.NoError(t, err, "under RLS")
					got, err := collect(ctx(t), proxied, m.mode, q)
					if why, ok := rejectedByProxy[q]; ok {
						tenantErr(t, err, "54000")
						t.Log(why)
						return
					}
					require.NoError(t, err, "through the proxy")
					require.Equal(t, want, got)
				})
			}
			for i, q := range writes {
				t.Run(fmt.Sprintf("tenant%s/%s/write/%s", tenant, m.name, probeName(i, q)), func(t *testing.T) {
					run := func(conn *pgx.Conn) ([]string, error) {
						tx, err := conn.Begin(ctx(t))
						require.NoError(t, err)
						defer func() { require.NoError(t, tx.Rollback(ctx(t))) }()
						return collect(ctx(t), tx, m.mode, q)
					}
					want, err := run(direct)
					require.NoError(t, err, "under RLS")
					got, err := run(proxied)
					require.NoError(t, err, "through the proxy")
					require.Equal(t, want, got)
				})
			}
		}
	}
}

// querier is a *pgx.Conn or a pgx.Tx.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// collect runs a query and returns its rows rendered as text, sorted.
func collect(cx context.Context, q querier, mode pgx.QueryExecMode, sql string) ([]string, error) {
	rows, err := q.Query(cx, sql, mode)
	if err != nil {
		return nil, err
	}
	out := []string{}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			rows.Close()
			return nil, err
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = fmt.Sprint(v)
		}
		out = append(out, strings.Join(parts, "\t"))
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	sort.Strings(out)
	return out, nil
}

// ---------------------------------------------------------------------------
// The verify strategy: nothing is rewritten, an unscoped or cross-tenant
// statement is refused.

func TestThreatVerifyStrategy(t *testing.T) {
	e := startThreats(t, strings.Replace(basePolicy, "mode: enforce\n", "mode: enforce\nstrategy: verify\n", 1))
	corpus := []probe{
		{sql: "SELECT full_name FROM patients LIMIT 50", want: "42501"},
		{sql: "SELECT full_name FROM patients WHERE clinic_id = 1 LIMIT 50", want: wantOK},
		{sql: "SELECT full_name FROM patients WHERE clinic_id = '1' LIMIT 50", want: wantOK},
		{sql: "SELECT full_name FROM patients WHERE clinic_id = current_setting('app.clinic_id')::int LIMIT 50", want: wantOK},
		{sql: "SELECT full_name FROM patients WHERE clinic_id = 2 LIMIT 50", want: "42501"},
		{sql: "SELECT full_name FROM patients WHERE clinic_id = 1 OR clinic_id = 2 LIMIT 50", want: "42501"},
		{sql: "SELECT full_name FROM patients WHERE clinic_id = 1 OR true LIMIT 50", want: "42501"},
		{sql: "SELECT full_name FROM patients WHERE NOT (clinic_id <> 1) LIMIT 50", want: "42501"},
		{sql: "SELECT full_name FROM patients WHERE clinic_id = 1 + 1 LIMIT 50", want: wantReject},
		{sql: "SELECT full_name FROM patients WHERE clinic_id IN (1, 2) LIMIT 50", want: wantReject},
		{sql: "SELECT full_name FROM patients WHERE (clinic_id, id) = (1, 3)", want: wantReject},
		{sql: "SELECT p.full_name, i.memo FROM patients p LEFT JOIN invoices i ON i.patient_id = p.id WHERE p.clinic_id = 1 LIMIT 50", want: "42501"},
		{sql: "SELECT p.full_name, i.memo FROM patients p LEFT JOIN invoices i ON i.patient_id = p.id AND i.clinic_id = 1 WHERE p.clinic_id = 1 LIMIT 50", want: wantOK},
		{sql: "SELECT p.full_name, i.memo FROM patients p LEFT JOIN invoices i ON i.patient_id = p.id WHERE p.clinic_id = 1 AND i.clinic_id = 1 LIMIT 50", want: wantEither},
		{sql: "SELECT full_name FROM patients WHERE clinic_id = 1 AND id IN (SELECT patient_id FROM invoices) LIMIT 50", want: "42501"},
		{sql: "SELECT full_name FROM patients p WHERE p.clinic_id = 1 AND EXISTS (SELECT 1 FROM invoices i WHERE i.clinic_id = 2 AND i.patient_id = p.id) LIMIT 50", want: "42501"},
		{sql: "WITH x AS (SELECT full_name FROM patients) SELECT * FROM x WHERE true LIMIT 50", want: "42501"},
		{sql: "SELECT full_name FROM patients WHERE clinic_id = 1 UNION ALL SELECT memo FROM invoices LIMIT 50", want: "42501"},
		{sql: "UPDATE patients SET status = 'v' WHERE clinic_id = 2", want: "42501"},
		{sql: "UPDATE patients SET status = 'v' WHERE id = 1", want: "42501"},
		{sql: "UPDATE patients SET clinic_id = 2 WHERE clinic_id = 1 AND id = 3", want: "42501"},
		{sql: "DELETE FROM soap_notes WHERE clinic_id = 2", want: "42501"},
		{sql: "INSERT INTO patients (id, clinic_id, full_name) VALUES (800, 2, 'x')", want: "42501"},
		{sql: "INSERT INTO patients (id, full_name) VALUES (801, 'x')", want: "42501"},
		{sql: "COPY patients TO STDOUT", want: wantReject, protos: []string{pCopy}},
		{sql: "COPY (SELECT full_name FROM patients WHERE clinic_id = 1 LIMIT 50) TO STDOUT", want: wantOK, protos: []string{pCopy}},
	}
	t.Run("corpus", func(t *testing.T) { runCorpus(t, e, nil, "1", corpus) })
	t.Run("tenant parameters are checked at Bind", func(t *testing.T) {
		before := othersSnapshot(t, e, "1")
		s := e.scanner(t, "1")
		const q = "SELECT full_name FROM patients WHERE clinic_id = $1 ORDER BY id LIMIT 50"
		for _, proto := range []string{pExtended, pDescribe} {
			for _, arg := range []any{2, int64(3), "2", "1 OR true", nil} {
				o := s.run(t, proto, q, arg)
				s.clean(t, q, o)
				require.Error(t, o.err, "bound %v", arg)
				var pe *pgconn.PgError
				if errors.As(o.err, &pe) && strings.HasPrefix(pe.Message, "tenantguard:") {
					requireRejection(t, q, o.err)
				}
			}
			for _, arg := range []any{1, int64(1), "1"} {
				o := s.run(t, proto, q, arg)
				s.clean(t, q, o)
				require.NoError(t, o.err)
				require.Len(t, o.rows, 10)
			}
			o := s.run(t, proto, "UPDATE patients SET status = 'verified' WHERE clinic_id = $1 AND id = $2", 2, 1)
			s.clean(t, "UPDATE", o)
			tenantErr(t, o.err, "42501")
			o = s.run(t, proto, "INSERT INTO patients (id, clinic_id, full_name) VALUES ($1, $2, 'x')", 810, 2)
			s.clean(t, "INSERT", o)
			tenantErr(t, o.err, "42501")
		}
		// A statement verified for tenant 1 and executed again after a
		// switch to tenant 2 is decided again: refused, never tenant 1's rows.
		const lit = "SELECT full_name FROM patients WHERE clinic_id = 1 ORDER BY id LIMIT 50"
		for _, proto := range []string{pExtended, pDescribe} {
			o := s.run(t, proto, lit)
			s.clean(t, lit, o)
			require.NoError(t, o.err)
			require.Len(t, o.rows, 10)
		}
		expect(t, "SET", s.run(t, pSimple, "SET app.clinic_id = 2"), wantOK)
		s.tenant = "2"
		for _, proto := range []string{pExtended, pDescribe, pSimple} {
			o := s.run(t, proto, lit)
			s.clean(t, lit, o)
			tenantErr(t, o.err, "42501")
		}
		require.Equal(t, before, othersSnapshot(t, e, "1"))
	})
	requireAuditClean(t, e)
}

// Without a catalog, tenantguard cannot see into views and functions: an
// ordinary session is refused (57P03) until the catalog is loaded, so no
// view or function over a tenant table can get through.
func TestThreatWithoutCatalog(t *testing.T) {
	e := startGuard(t, basePolicy, func(*pgtest.Cluster, string) func() *rewriter.Catalog {
		return func() *rewriter.Catalog { return nil }
	})
	require.NoError(t, e.c.Exec(ctx(t), e.db, threatSetup))
	_, err := pgx.Connect(ctx(t), e.url(pgtest.AppUser, "app.clinic_id", "1"))
	require.Error(t, err)
	tenantErr(t, err, "57P03")
	// A bypass role does not depend on the catalog.
	conn, err := pgx.Connect(ctx(t), e.url(pgtest.SuperUser))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var n int
	require.NoError(t, conn.QueryRow(ctx(t), "SELECT count(*) FROM patient_names").Scan(&n))
	require.Positive(t, n)
}
