package rewriter

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// rlsFixture: three tenants, rows with a NULL tenant, and cross-tenant
// references, so that a missing or misplaced predicate shows in the results.
const rlsFixture = `
CREATE TABLE clinics (id int PRIMARY KEY, name text);
CREATE TABLE patients (id int PRIMARY KEY, clinic_id int, name text, dob date);
CREATE TABLE invoices (id int PRIMARY KEY, clinic_id int, patient_id int, amount numeric, status text);
CREATE TABLE soap_notes (id int PRIMARY KEY, clinic_id int, patient_id int, note text);
CREATE TABLE orders (id int, clinic_id int, total numeric) PARTITION BY RANGE (id);
CREATE TABLE orders_a PARTITION OF orders FOR VALUES FROM (0) TO (100);
CREATE TABLE orders_b PARTITION OF orders FOR VALUES FROM (100) TO (1000);
INSERT INTO clinics VALUES (1, 'North'), (2, 'South'), (3, 'East'), (4, 'Empty');
INSERT INTO patients VALUES
 (1, 1, 'Ann', '1980-01-01'), (2, 1, 'Bob', '1990-02-02'), (3, 1, 'Cid', NULL),
 (4, 2, 'Dee', '1970-03-03'), (5, 2, 'Eve', '1985-04-04'), (6, 3, 'Fay', '2000-05-05'),
 (7, 3, 'Gus', '2001-06-06'), (8, NULL, 'Nul', NULL), (9, 2, 'Abe', '1999-09-09');
INSERT INTO invoices VALUES
 (1, 1, 1, 10, 'open'), (2, 1, 1, 20, 'paid'), (3, 1, 2, 5, 'void'), (4, 2, 4, 50, 'open'),
 (5, 2, 1, 99, 'open'), (6, 3, 6, 7, 'paid'), (7, NULL, 1, 1, 'open'), (8, 1, NULL, 3, 'open'),
 (9, 3, 4, 42, 'void'), (10, 2, 9, 15, 'paid');
INSERT INTO soap_notes VALUES (1, 1, 1, 'alpha'), (2, 2, 4, 'beta'), (3, 3, 6, 'gamma'), (4, NULL, 8, 'delta'), (5, 1, 5, 'cross');
INSERT INTO orders VALUES (1, 1, 10), (2, 2, 20), (150, 1, 30), (151, 3, 40), (152, NULL, 50);
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['patients','invoices','soap_notes','orders','orders_a','orders_b'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format($p$CREATE POLICY tenant ON %I USING (clinic_id = current_setting('app.clinic_id')::int) WITH CHECK (clinic_id = current_setting('app.clinic_id')::int)$p$, t);
    EXECUTE format('GRANT ALL ON %I TO app_user', t);
    -- as RLS deployments do: a row inserted without the tenant gets the session's
    EXECUTE format($p$ALTER TABLE %I ALTER clinic_id SET DEFAULT NULLIF(current_setting('app.clinic_id', true), '')::int$p$, t);
  END LOOP;
END $$;
GRANT ALL ON clinics TO app_user;
-- tg_dump shows every row of every table, whatever RLS allows the caller.
CREATE FUNCTION tg_dump() RETURNS text LANGUAGE sql SECURITY DEFINER AS $$
  SELECT concat_ws(E'\n',
    (SELECT string_agg(p::text, ',' ORDER BY id) FROM patients p),
    (SELECT string_agg(i::text, ',' ORDER BY id) FROM invoices i),
    (SELECT string_agg(s::text, ',' ORDER BY id) FROM soap_notes s),
    (SELECT string_agg(o::text, ',' ORDER BY id, o::text) FROM orders o)) -- orders has no key
$$;
GRANT EXECUTE ON FUNCTION tg_dump() TO app_user;
`

func rlsPolicy() *policy.Policy {
	return &policy.Policy{
		Tenant: policy.Tenant{Column: "clinic_id", Type: policy.TypeInteger, Setting: "app.clinic_id", Required: true},
		Tables: []policy.Table{{Name: "patients"}, {Name: "invoices"}, {Name: "soap_notes"}, {Name: "orders"},
			{Name: "orders_a"}, {Name: "orders_b"}},
		Limits: policy.Limits{MaxRows: 100000, Unbounded: policy.UnboundedCap},
	}
}

// rlsReads are app-shaped queries; each must give the same rows rewritten
// (as a superuser, which bypasses RLS) as under RLS (as app_user).
var rlsReads = []string{
	"SELECT * FROM patients",
	"TABLE invoices",
	"SELECT name FROM patients WHERE dob > '1985-01-01' ORDER BY name",
	"SELECT p.name, i.amount FROM patients p JOIN invoices i ON i.patient_id = p.id",
	"SELECT p.name, i.amount FROM patients p, invoices i WHERE i.patient_id = p.id",
	"SELECT p.name, i.amount FROM patients p LEFT JOIN invoices i ON i.patient_id = p.id",
	"SELECT p.name, i.amount FROM patients p RIGHT JOIN invoices i ON i.patient_id = p.id",
	"SELECT p.name, i.amount FROM patients p FULL JOIN invoices i ON i.patient_id = p.id",
	"SELECT p.name, i.amount FROM invoices i LEFT JOIN patients p ON p.id = i.patient_id WHERE i.amount > 5",
	"SELECT * FROM patients p LEFT JOIN soap_notes n USING (id)",
	"SELECT c.name, p.name FROM clinics c LEFT JOIN patients p ON p.clinic_id = c.id",
	"SELECT c.name, p.name, i.amount FROM clinics c LEFT JOIN (patients p LEFT JOIN invoices i ON i.patient_id = p.id) ON p.clinic_id = c.id",
	"SELECT j.name FROM (patients p JOIN invoices i ON i.patient_id = p.id) AS j",
	"SELECT name FROM patients WHERE id IN (SELECT patient_id FROM invoices WHERE status = 'open')",
	"SELECT name FROM patients WHERE id NOT IN (SELECT patient_id FROM invoices)",
	"SELECT name FROM patients p WHERE EXISTS (SELECT 1 FROM invoices i WHERE i.patient_id = p.id)",
	"SELECT name FROM patients p WHERE NOT EXISTS (SELECT 1 FROM soap_notes n WHERE n.patient_id = p.id)",
	"SELECT c.name, (SELECT count(*) FROM patients p WHERE p.clinic_id = c.id) FROM clinics c",
	"SELECT p.name, (SELECT sum(amount) FROM invoices i WHERE i.patient_id = p.id) FROM patients p",
	"WITH open AS (SELECT * FROM invoices WHERE status = 'open') SELECT o.id, p.name FROM open o JOIN patients p ON p.id = o.patient_id",
	"WITH RECURSIVE r(n) AS (SELECT min(id) FROM patients UNION ALL SELECT n + 1 FROM r WHERE n < 9) SELECT n, (SELECT name FROM patients WHERE id = n) FROM r",
	"SELECT name FROM patients UNION SELECT note FROM soap_notes",
	"SELECT patient_id FROM invoices INTERSECT SELECT id FROM patients",
	"SELECT id FROM patients EXCEPT SELECT patient_id FROM soap_notes",
	"SELECT p.name, l.amount FROM patients p, LATERAL (SELECT amount FROM invoices i WHERE i.patient_id = p.id ORDER BY amount DESC LIMIT 1) l",
	"SELECT p.name, l.amount FROM patients p LEFT JOIN LATERAL (SELECT amount FROM invoices i WHERE i.patient_id = p.id) l ON true",
	"SELECT name, row_number() OVER (ORDER BY id), count(*) OVER () FROM patients",
	"SELECT count(*), sum(amount), max(amount) FROM invoices",
	"SELECT status, count(*) FROM invoices GROUP BY status HAVING count(*) > 0",
	"SELECT DISTINCT ON (patient_id) patient_id, amount FROM invoices ORDER BY patient_id, amount DESC",
	"SELECT id, name FROM patients ORDER BY id LIMIT 2 OFFSET 1",
	"SELECT p FROM patients p",
	"SELECT * FROM orders",
	"SELECT * FROM ONLY orders",
	"SELECT * FROM orders_b",
	"SELECT o.id, p.name FROM orders o JOIN patients p ON p.clinic_id = o.clinic_id",
	"SELECT * FROM (SELECT patient_id, sum(amount) AS total FROM invoices GROUP BY patient_id) t JOIN patients p ON p.id = t.patient_id",
	"SELECT id FROM clinics WHERE id IN (SELECT clinic_id FROM patients)",
	"SELECT (SELECT max(amount) FROM invoices), (SELECT count(*) FROM soap_notes)",
}

// rlsWrites run inside a transaction that is rolled back; effect (every row
// of every table) and RETURNING rows must be the same.
var rlsWrites = []string{
	"INSERT INTO patients (id, name) VALUES (100, 'New'), (101, 'Newer') RETURNING id, clinic_id",
	"INSERT INTO invoices (id, patient_id, amount) SELECT 200 + id, id, 1 FROM patients RETURNING id",
	"INSERT INTO soap_notes (id, patient_id, note) SELECT 300 + i.id, i.patient_id, 'copy' FROM invoices i JOIN patients p ON p.id = i.patient_id",
	"INSERT INTO patients (id, name) VALUES (1, 'Dup') ON CONFLICT DO NOTHING",
	"UPDATE invoices SET status = 'paid' WHERE amount > 10 RETURNING id, status",
	"UPDATE invoices i SET status = 'x' FROM patients p WHERE p.id = i.patient_id AND p.name LIKE 'A%' RETURNING i.id",
	"UPDATE patients SET name = upper(name)",
	"DELETE FROM soap_notes WHERE note LIKE '%a%' RETURNING id",
	"DELETE FROM invoices i USING patients p WHERE p.id = i.patient_id RETURNING i.id",
	"DELETE FROM invoices WHERE patient_id NOT IN (SELECT id FROM patients)",
	"WITH d AS (DELETE FROM invoices WHERE status = 'void' RETURNING *) SELECT count(*) FROM d",
	"MERGE INTO invoices t USING (VALUES (1, 77), (4, 88), (6, 99)) s(pid, amt) ON t.patient_id = s.pid WHEN MATCHED THEN UPDATE SET amount = s.amt WHEN NOT MATCHED THEN INSERT (id, patient_id, amount) VALUES (900 + s.pid, s.pid, s.amt)",
	"MERGE INTO soap_notes t USING patients s ON t.patient_id = s.id WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT (id, patient_id, note) VALUES (500 + s.id, s.id, 'merged')",
	"INSERT INTO orders (id, total) VALUES (5, 1), (500, 2)",
	"UPDATE orders SET total = total + 1",
}

// rlsVerified are hand-scoped reads (%[1]d is the tenant): what the verify
// strategy accepts must return exactly what RLS returns.
var rlsVerified = []string{
	"SELECT * FROM patients WHERE clinic_id = %[1]d",
	"SELECT p.name, i.amount FROM patients p JOIN invoices i ON i.patient_id = p.id AND i.clinic_id = %[1]d WHERE p.clinic_id = %[1]d",
	"SELECT p.name, i.amount FROM patients p LEFT JOIN invoices i ON i.patient_id = p.id AND i.clinic_id = %[1]d WHERE p.clinic_id = %[1]d",
	"SELECT p.name FROM patients p WHERE p.clinic_id = %[1]d AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.clinic_id = %[1]d AND i.patient_id = p.id)",
	"SELECT * FROM (SELECT * FROM patients WHERE clinic_id = %[1]d) p FULL JOIN (SELECT * FROM invoices WHERE clinic_id = %[1]d) i ON i.patient_id = p.id",
	"SELECT name FROM patients WHERE clinic_id = current_setting('app.clinic_id')::int AND id NOT IN (SELECT patient_id FROM invoices WHERE clinic_id = %[1]d)",
	"SELECT c.name, p.name FROM clinics c LEFT JOIN patients p ON p.clinic_id = c.id AND p.clinic_id = %[1]d",
	"WITH o AS (SELECT * FROM invoices WHERE clinic_id = %[1]d) SELECT count(*) FROM o",
}

// rlsDatabase creates a database with rlsFixture and returns connections to
// it as the superuser (whom RLS does not restrict) and as app_user (whom it
// does), closed when the test ends.
func rlsDatabase(ctx context.Context, t *testing.T, prefix string) (su, app *pgx.Conn) {
	t.Helper()
	c := pgtest.Shared(t)
	db, err := c.CreateDatabase(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, db, rlsFixture); err != nil {
		t.Fatal(err)
	}
	for _, u := range []struct {
		user string
		conn **pgx.Conn
	}{{pgtest.SuperUser, &su}, {pgtest.AppUser, &app}} {
		conn, err := pgx.Connect(ctx, c.URL(u.user, "", db))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		*u.conn = conn
	}
	return su, app
}

func TestRLSDifferential(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	su, app := rlsDatabase(ctx, t, "rewriter_rls")
	r := New(rlsPolicy(), nil)
	vp := rlsPolicy()
	vp.Strategy = policy.StrategyVerify
	rv := New(vp, nil)
	rs := New(rlsPolicy(), nil, WithTenantSetting())
	// The fixture must tell scoped from unscoped: run unrewritten as the
	// superuser, almost every read differs from RLS.
	if _, err := app.Exec(ctx, "SET app.clinic_id = 1"); err != nil {
		t.Fatal(err)
	}
	same := 0
	for _, q := range rlsReads {
		if strings.Join(queryRows(ctx, t, su, q), "\n") == strings.Join(queryRows(ctx, t, app, q), "\n") {
			same++
		}
	}
	if same > len(rlsReads)/10 {
		t.Fatalf("fixture does not discriminate: %d of %d reads give RLS results unscoped", same, len(rlsReads))
	}
	for _, tenant := range []int{1, 2, 3} {
		ts := strconv.Itoa(tenant)
		if _, err := app.Exec(ctx, "SET app.clinic_id = "+ts); err != nil {
			t.Fatal(err)
		}
		for _, q := range rlsReads {
			t.Run(fmt.Sprintf("read/tenant%d/%s", tenant, q), func(t *testing.T) {
				want := queryRows(ctx, t, app, q)
				for _, ext := range []bool{false, true} {
					d := r.Decide(q, Session{Tenant: ts, HasTenant: true, Extended: ext}).Statements[0]
					if d.Verdict == VerdictRejected {
						t.Fatalf("rejected: %s %+v", d.Reason, d.Error)
					}
					var args []any
					if d.TenantParam > 0 {
						args = make([]any, d.TenantParam)
						args[d.TenantParam-1] = tenant
					}
					got := queryRows(ctx, t, su, d.SQL, args...)
					if strings.Join(got, "\n") != strings.Join(want, "\n") {
						t.Errorf("extended=%v differs from RLS\nrewritten: %s\nRLS:\n%s\nrewritten:\n%s", ext, d.SQL, strings.Join(want, "\n"), strings.Join(got, "\n"))
					}
				}
				// WithTenantSetting: the predicate reads the upstream setting.
				if _, err := su.Exec(ctx, "SET app.clinic_id = "+ts); err != nil {
					t.Fatal(err)
				}
				d := rs.Decide(q, Session{Tenant: ts, HasTenant: true}).Statements[0]
				if d.Verdict == VerdictRejected {
					t.Fatalf("rejected: %s %+v", d.Reason, d.Error)
				}
				if got := queryRows(ctx, t, su, d.SQL); strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("tenant-setting mode differs from RLS\nrewritten: %s", d.SQL)
				}
				// ... and with Session.TenantLiteral (a pinned session),
				// the same rows with the tenant written in.
				d = rs.Decide(q, Session{Tenant: ts, HasTenant: true, TenantLiteral: true}).Statements[0]
				if d.Verdict == VerdictRejected {
					t.Fatalf("rejected: %s %+v", d.Reason, d.Error)
				}
				if got := queryRows(ctx, t, su, d.SQL); strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("tenant-literal mode differs from RLS\nrewritten: %s", d.SQL)
				}
			})
		}
		for _, tmpl := range rlsVerified {
			q := fmt.Sprintf(tmpl, tenant)
			t.Run(fmt.Sprintf("verify/tenant%d/%s", tenant, tmpl), func(t *testing.T) {
				if su.PgConn().TxStatus() != 'I' {
					t.Fatal("superuser connection left in a transaction")
				}
				if _, err := su.Exec(ctx, "SET app.clinic_id = "+ts); err != nil {
					t.Fatal(err)
				}
				d := rv.Decide(q, Session{Tenant: ts, HasTenant: true}).Statements[0]
				// verify changes nothing but the LIMIT of cap mode
				tree, err := pg.Parse(q)
				if err != nil {
					t.Fatal(err)
				}
				dep, _ := pg.Deparse(tree)
				if d.Verdict == VerdictRejected || (d.SQL != q && d.SQL != dep+" LIMIT 100000") {
					t.Fatalf("verify did not accept a hand-scoped statement: %s %+v", d.Reason, d.Error)
				}
				want := queryRows(ctx, t, app, q)
				got := queryRows(ctx, t, su, d.SQL)
				if strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("verified statement differs from RLS\nRLS:\n%s\nverified:\n%s", strings.Join(want, "\n"), strings.Join(got, "\n"))
				}
			})
		}
		for _, q := range rlsWrites {
			t.Run(fmt.Sprintf("write/tenant%d/%s", tenant, q), func(t *testing.T) {
				wantRows, wantDump := writeEffect(ctx, t, app, q)
				d := r.Decide(q, Session{Tenant: ts, HasTenant: true}).Statements[0]
				if d.Verdict == VerdictRejected {
					t.Fatalf("rejected: %s %+v", d.Reason, d.Error)
				}
				gotRows, gotDump := writeEffect(ctx, t, su, d.SQL)
				if strings.Join(gotRows, "\n") != strings.Join(wantRows, "\n") || gotDump != wantDump {
					t.Errorf("differs from RLS\nrewritten: %s\nRLS rows: %v\nrw  rows: %v\nRLS effect:\n%s\nrw  effect:\n%s", d.SQL, wantRows, gotRows, wantDump, gotDump)
				}
				// extended protocol: the tenant is the appended parameter
				e := r.Decide(q, Session{Tenant: ts, HasTenant: true, Extended: true}).Statements[0]
				if e.Verdict == VerdictRejected || e.TenantParam == 0 {
					t.Fatalf("extended: %s %+v tenant_param=%d", e.Reason, e.Error, e.TenantParam)
				}
				args := make([]any, e.TenantParam)
				args[e.TenantParam-1] = tenant
				gotRows, gotDump = writeEffect(ctx, t, su, e.SQL, args...)
				if strings.Join(gotRows, "\n") != strings.Join(wantRows, "\n") || gotDump != wantDump {
					t.Errorf("extended differs from RLS\nrewritten: %s\nRLS rows: %v\nrw  rows: %v", e.SQL, wantRows, gotRows)
				}
			})
		}
	}
}

// queryRows runs q and returns its rows as sorted text lines.
func queryRows(ctx context.Context, t *testing.T, conn *pgx.Conn, q string, args ...any) []string {
	t.Helper()
	mode := []any{pgx.QueryExecModeSimpleProtocol}
	if len(args) > 0 {
		mode = append([]any{pgx.QueryExecModeExec}, args...)
	}
	rows, err := conn.Query(ctx, q, mode...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprint(vals...))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	sort.Strings(out)
	return out
}

// writeEffect runs q in a transaction and returns its rows and every row of
// every table afterwards, then rolls back.
func writeEffect(ctx context.Context, t *testing.T, conn *pgx.Conn, q string, args ...any) ([]string, string) {
	t.Helper()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	mode := []any{pgx.QueryExecModeSimpleProtocol}
	if len(args) > 0 {
		mode = append([]any{pgx.QueryExecModeExec}, args...)
	}
	rows, err := tx.Query(ctx, q, mode...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprint(vals...))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	sort.Strings(out)
	var dump string
	if err := tx.QueryRow(ctx, "SELECT tg_dump()").Scan(&dump); err != nil {
		t.Fatal(err)
	}
	return out, dump
}
