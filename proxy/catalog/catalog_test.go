package catalog

import (
	"context"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy/pgtest"
	"github.com/tenantguard/tenantguard/rewriter"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// clinicSchema has one of each thing the loader must read.
const clinicSchema = `
CREATE SCHEMA clinic;
CREATE TABLE clinic.patients (
  id int PRIMARY KEY,
  clinic_id int NOT NULL,
  mrn text,
  email text,
  deleted_at timestamptz,
  legacy text
);
CREATE UNIQUE INDEX patients_clinic_mrn ON clinic.patients (clinic_id, mrn);
CREATE UNIQUE INDEX patients_email_live ON clinic.patients (email) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX patients_lower_email ON clinic.patients (lower(email));
CREATE INDEX patients_clinic ON clinic.patients (clinic_id) INCLUDE (email);
ALTER TABLE clinic.patients ENABLE ROW LEVEL SECURITY;
ALTER TABLE clinic.patients FORCE ROW LEVEL SECURITY;
ALTER TABLE clinic.patients DROP COLUMN legacy;

CREATE VIEW clinic.patient_names AS SELECT p.id, p.clinic_id, p.mrn FROM clinic.patients p;
CREATE VIEW clinic.patient_count AS SELECT count(*) AS n FROM clinic.patients;
CREATE TABLE clinic.visits (clinic_id int, amount numeric);
CREATE VIEW clinic.names_and_visits AS
  SELECT n.mrn, v.amount FROM clinic.patient_names n JOIN clinic.visits v USING (clinic_id);

CREATE TABLE clinic.invoices (id int, clinic_id int NOT NULL, amount numeric, PRIMARY KEY (clinic_id, id))
  PARTITION BY LIST (clinic_id);
CREATE TABLE clinic.invoices_1 PARTITION OF clinic.invoices FOR VALUES IN (1);
CREATE TABLE clinic.invoices_2 PARTITION OF clinic.invoices FOR VALUES IN (2);
CREATE MATERIALIZED VIEW clinic.invoice_totals AS
  SELECT clinic_id, sum(amount) AS total FROM clinic.invoices GROUP BY clinic_id;

CREATE TABLE clinic.notes (id int, clinic_id int, body text);
CREATE TABLE clinic.soap_notes (signed boolean NOT NULL DEFAULT false) INHERITS (clinic.notes);

CREATE FUNCTION clinic.patient_total(c int) RETURNS bigint LANGUAGE plpgsql AS
$$BEGIN RETURN (SELECT count(*) FROM clinic.patients WHERE clinic_id = c); END$$;
CREATE FUNCTION clinic.add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT a + b';
CREATE FUNCTION clinic.add(a bigint, b bigint) RETURNS SETOF bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT a - b';
CREATE FUNCTION clinic.next_id(c int) RETURNS int LANGUAGE sql RETURN c + 1;
CREATE PROCEDURE clinic.purge(c int) LANGUAGE sql AS 'DELETE FROM clinic.patients WHERE clinic_id = c';
CREATE FUNCTION public.mixed(a int) RETURNS int LANGUAGE sql AS 'SELECT a';
CREATE FUNCTION public.mixed(a text) RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN 1; END';
CREATE TABLE public."Odd Name" ("Col" int);
`

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newDatabase creates a database holding sql and returns a superuser
// connection to it.
func newDatabase(t testing.TB, ctx context.Context, sql string) (*pgtest.Cluster, string, *pgx.Conn) {
	t.Helper()
	c := pgtest.Shared(t)
	db, err := c.CreateDatabase(ctx, "catalog")
	require.NoError(t, err)
	if sql != "" {
		require.NoError(t, c.Exec(ctx, db, sql))
	}
	conn, err := c.Connect(ctx, db)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return c, db, conn
}

func TestLoad(t *testing.T) {
	ctx := testContext(t)
	_, _, conn := newDatabase(t, ctx, clinicSchema+"\nCREATE SEQUENCE clinic.ticket_seq;")

	got, err := LoadConn(ctx, conn, Options{})
	require.NoError(t, err)
	assert.Equal(t, map[string]bool{"clinic.ticket_seq": true}, got.Sequences, "sequences, not relations")
	again, err := LoadConn(ctx, conn, Options{})
	require.NoError(t, err)
	assert.True(t, reflect.DeepEqual(got, again), "two loads of the same schema are equal (the Refresher keeps the catalog then)")

	want := &rewriter.Catalog{
		Relations: map[string]*rewriter.Relation{
			"clinic.patients": {
				Schema: "clinic", Name: "patients", Kind: rewriter.KindTable,
				Columns: []string{"id", "clinic_id", "mrn", "email", "deleted_at"}, // dropped column left out
				NotNull: []string{"id", "clinic_id"},
				// The primary key first, then by index name; the partial
				// and the expression unique indexes are not keys.
				UniqueKeys: [][]string{{"id"}, {"clinic_id", "mrn"}},
				Indexes: [][]string{
					{"id"},
					{"clinic_id"}, // INCLUDE columns are not key columns
					{"clinic_id", "mrn"},
					{"email"}, // partial
					{"lower(email)"},
				},
				RLSEnabled: true, RLSForced: true,
			},
			"clinic.patient_names": {
				Schema: "clinic", Name: "patient_names", Kind: rewriter.KindView,
				Columns: []string{"id", "clinic_id", "mrn"},
				Reads:   []string{"clinic.patients"},
			},
			"clinic.patient_count": {
				Schema: "clinic", Name: "patient_count", Kind: rewriter.KindView,
				Columns: []string{"n"},
				Reads:   []string{"clinic.patients"},
			},
			"clinic.names_and_visits": {
				Schema: "clinic", Name: "names_and_visits", Kind: rewriter.KindView,
				Columns: []string{"mrn", "amount"},
				// Direct reads only: patients is reached through patient_names.
				Reads: []string{"clinic.patient_names", "clinic.visits"},
			},
			"clinic.visits": {
				Schema: "clinic", Name: "visits", Kind: rewriter.KindTable,
				Columns: []string{"clinic_id", "amount"},
			},
			"clinic.invoices": {
				Schema: "clinic", Name: "invoices", Kind: rewriter.KindPartitioned,
				Columns:    []string{"id", "clinic_id", "amount"},
				NotNull:    []string{"id", "clinic_id"},
				Children:   []string{"clinic.invoices_1", "clinic.invoices_2"},
				UniqueKeys: [][]string{{"clinic_id", "id"}},
				Indexes:    [][]string{{"clinic_id", "id"}},
			},
			"clinic.invoices_1": {
				Schema: "clinic", Name: "invoices_1", Kind: rewriter.KindTable,
				Columns:    []string{"id", "clinic_id", "amount"},
				NotNull:    []string{"id", "clinic_id"},
				Parents:    []string{"clinic.invoices"},
				UniqueKeys: [][]string{{"clinic_id", "id"}},
				Indexes:    [][]string{{"clinic_id", "id"}},
			},
			"clinic.invoices_2": {
				Schema: "clinic", Name: "invoices_2", Kind: rewriter.KindTable,
				Columns:    []string{"id", "clinic_id", "amount"},
				NotNull:    []string{"id", "clinic_id"},
				Parents:    []string{"clinic.invoices"},
				UniqueKeys: [][]string{{"clinic_id", "id"}},
				Indexes:    [][]string{{"clinic_id", "id"}},
			},
			"clinic.invoice_totals": {
				Schema: "clinic", Name: "invoice_totals", Kind: rewriter.KindMatView,
				Columns: []string{"clinic_id", "total"},
				Reads:   []string{"clinic.invoices"},
			},
			"clinic.notes": {
				Schema: "clinic", Name: "notes", Kind: rewriter.KindTable,
				Columns:  []string{"id", "clinic_id", "body"},
				Children: []string{"clinic.soap_notes"},
			},
			"clinic.soap_notes": {
				Schema: "clinic", Name: "soap_notes", Kind: rewriter.KindTable,
				Columns: []string{"id", "clinic_id", "body", "signed"},
				NotNull: []string{"signed"},
				Parents: []string{"clinic.notes"},
			},
			"public.Odd Name": {
				Schema: "public", Name: "Odd Name", Kind: rewriter.KindTable,
				Columns: []string{"Col"},
			},
		},
		Functions: map[string]*rewriter.Function{
			"clinic.patient_total": {
				Schema: "clinic", Name: "patient_total", Language: "plpgsql", Kind: "f",
				Body: "BEGIN RETURN (SELECT count(*) FROM clinic.patients WHERE clinic_id = c); END",
			},
			"clinic.add": {
				// Two overloads merged: flags ORed, bodies joined in
				// identity-argument order (bigint before integer).
				Schema: "clinic", Name: "add", Language: "sql", Kind: "f",
				SecurityDefiner: true, ReturnsSet: true,
				Body: "SELECT a - b\n;\nSELECT a + b",
			},
			"clinic.next_id": {
				Schema: "clinic", Name: "next_id", Language: "sql", Kind: "f",
				Body: "RETURN (c + 1)",
			},
			"clinic.purge": {
				Schema: "clinic", Name: "purge", Language: "sql", Kind: "p",
				Body: "DELETE FROM clinic.patients WHERE clinic_id = c",
			},
			"public.mixed": {
				// The riskier language of the two overloads wins.
				Schema: "public", Name: "mixed", Language: "plpgsql", Kind: "f",
				Body: "SELECT a\n;\nBEGIN RETURN 1; END",
			},
		},
	}
	got = withoutSystem(t, got, true)
	assert.Equal(t, want, got)
}

// withoutSystem checks the catalog's completeness and its pg_catalog
// relation, function and operator names (samples: the lists depend on the
// version)
// and returns it without them, for comparison.
func withoutSystem(t *testing.T, c *rewriter.Catalog, complete bool) *rewriter.Catalog {
	t.Helper()
	assert.Equal(t, complete, c.Complete, "Complete: every user schema loaded")
	for _, name := range []string{"pg_class", "pg_namespace", "pg_tables", "pg_stat_activity", "pg_views"} {
		assert.True(t, c.SystemRelations[name], "system relation %s", name)
	}
	for name := range c.SystemRelations {
		assert.True(t, strings.HasPrefix(name, "pg_"), "system relation %q", name)
	}
	for _, name := range []string{"count", "lower", "now", "set_config", "current_setting", "generate_series"} {
		assert.True(t, c.SystemFunctions[name], "system function %s", name)
	}
	for _, name := range []string{"patient_total", "add", "next_id"} { // the fixture's own
		assert.False(t, c.SystemFunctions[name], "user function %s taken for a builtin", name)
	}
	for _, op := range []string{"=", "+", "||", "~~", "@>"} {
		assert.True(t, c.SystemOperators[op], "system operator %s", op)
	}
	for _, name := range []string{"uuid", "jsonb", "int4", "text"} {
		assert.True(t, c.TypeNames[name], "type %s", name)
	}
	cp := *c
	cp.Complete, cp.SystemRelations, cp.SystemFunctions, cp.SystemOperators, cp.TypeNames = false, nil, nil, nil, nil
	cp.Sequences = nil // checked by the callers that have some
	return &cp
}

func TestLoadSchemasOption(t *testing.T) {
	ctx := testContext(t)
	_, _, conn := newDatabase(t, ctx, `
CREATE SCHEMA a; CREATE SCHEMA b;
CREATE TABLE a.t (x int); CREATE TABLE b.t (x int);
CREATE TABLE a.parent (x int); CREATE TABLE b.child () INHERITS (a.parent);
CREATE VIEW b.v AS SELECT x FROM a.t;
CREATE FUNCTION a.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION b.f() RETURNS int LANGUAGE sql AS 'SELECT 2';
`)
	got, err := LoadConn(ctx, conn, Options{Schemas: []string{"b"}})
	require.NoError(t, err)
	got = withoutSystem(t, got, false) // schema a is not loaded: not complete
	assert.Equal(t, &rewriter.Catalog{
		Relations: map[string]*rewriter.Relation{
			"b.t": {Schema: "b", Name: "t", Kind: rewriter.KindTable, Columns: []string{"x"}},
			// Names outside the loaded schemas are still given.
			"b.child": {Schema: "b", Name: "child", Kind: rewriter.KindTable, Columns: []string{"x"}, Parents: []string{"a.parent"}},
			"b.v":     {Schema: "b", Name: "v", Kind: rewriter.KindView, Columns: []string{"x"}, Reads: []string{"a.t"}},
		},
		Functions: map[string]*rewriter.Function{
			"b.f": {Schema: "b", Name: "f", Language: "sql", Kind: "f", Body: "SELECT 2"},
		},
	}, got)
}

// TestLoadCode: the code that runs without being named in a statement —
// operators, casts, triggers, column defaults and rules — is loaded.
func TestLoadCode(t *testing.T) {
	ctx := testContext(t)
	_, _, conn := newDatabase(t, ctx, `
CREATE SCHEMA app;
CREATE FUNCTION app.leak(int, int) RETURNS text LANGUAGE sql AS 'SELECT 1::text';
CREATE FUNCTION app.leak(text, text) RETURNS text LANGUAGE sql AS 'SELECT 2::text';
CREATE OPERATOR app.### (LEFTARG = int, RIGHTARG = int, FUNCTION = app.leak);
CREATE OPERATOR app.### (LEFTARG = text, RIGHTARG = text, FUNCTION = app.leak);
CREATE OPERATOR app.%%% (LEFTARG = int, RIGHTARG = int, FUNCTION = pg_catalog.int4pl);
CREATE TYPE app.money2 AS (v int);
CREATE FUNCTION app.to_money2(int) RETURNS app.money2 LANGUAGE sql AS 'SELECT ROW($1)::app.money2';
CREATE CAST (int AS app.money2) WITH FUNCTION app.to_money2(int);
CREATE FUNCTION app.shout() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE FUNCTION app.stamp() RETURNS text LANGUAGE sql AS 'SELECT 1::text';
CREATE TABLE app.feedback (id int, body text DEFAULT app.stamp(), n int GENERATED ALWAYS AS (id + 1) STORED);
CREATE TRIGGER a BEFORE INSERT ON app.feedback FOR EACH ROW EXECUTE FUNCTION app.shout();
CREATE TRIGGER b AFTER UPDATE ON app.feedback FOR EACH ROW EXECUTE FUNCTION app.shout();
CREATE TABLE app.quiet (id int);
CREATE TRIGGER off BEFORE INSERT ON app.quiet FOR EACH ROW EXECUTE FUNCTION app.shout();
ALTER TABLE app.quiet DISABLE TRIGGER off;
CREATE TABLE app.ruled (id int);
CREATE RULE echo AS ON INSERT TO app.ruled DO ALSO NOTIFY ruled;
CREATE VIEW app.plain AS SELECT id FROM app.ruled;
`)
	got, err := LoadConn(ctx, conn, Options{})
	require.NoError(t, err)
	assert.Equal(t, map[string][]string{"###": {"app.leak"}, "%%%": {"pg_catalog.int4pl"}}, got.Operators)
	assert.Equal(t, map[string][]string{"money2": {"app.to_money2"}}, got.Casts)
	fb := got.Relations["app.feedback"]
	require.NotNil(t, fb)
	assert.Equal(t, []string{"app.shout"}, fb.Triggers, "one entry per function; enabled triggers only")
	assert.Equal(t, []string{"app.stamp"}, fb.Defaults, "builtin functions of defaults are left out")
	assert.False(t, fb.HasRules)
	assert.Empty(t, got.Relations["app.quiet"].Triggers, "a disabled trigger does not run")
	assert.True(t, got.Relations["app.ruled"].HasRules)
	assert.False(t, got.Relations["app.plain"].HasRules, "a view's _RETURN rule is not a rule here")
}

func TestLoadEmptyDatabase(t *testing.T) {
	ctx := testContext(t)
	_, _, conn := newDatabase(t, ctx, "")
	got, err := Load(ctx, conn, Options{})
	require.NoError(t, err)
	got = withoutSystem(t, got, true)
	assert.Equal(t, &rewriter.Catalog{
		Relations: map[string]*rewriter.Relation{},
		Functions: map[string]*rewriter.Function{},
	}, got, "system schemas are skipped")
}

func TestLoadFailsOnBrokenConnection(t *testing.T) {
	ctx := testContext(t)
	_, _, conn := newDatabase(t, ctx, "")
	require.NoError(t, conn.Close(ctx))
	_, err := LoadConn(ctx, conn, Options{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "catalog: ")
}
