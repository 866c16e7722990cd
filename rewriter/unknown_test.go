package rewriter

import (
	"testing"
)

// A complete catalog (the proxy's, loaded from every user schema) turns a
// relation it does not list into an unknown one: a view over tenant tables
// created after the catalog was loaded must not pass as a non-tenant
// relation until the next load.
func TestCompleteCatalogRefusesUnknownRelations(t *testing.T) {
	cat := testCatalog()
	cat.Complete = true
	cat.SystemRelations = map[string]bool{"pg_class": true, "pg_namespace": true}
	cat.SystemFunctions = map[string]bool{"count": true, "lower": true, "now": true, "extract": true, "set_config": true}
	cat.SystemOperators = map[string]bool{"=": true, "+": true, "<": true, "~~": true}
	cat.Sequences = map[string]bool{"public.clinics_id_seq": true}
	cat.TypeNames = map[string]bool{"uuid": true, "jsonb": true, "mood": true, "int4": true}
	cat.Operators = map[string][]string{"@@@": {"public.slugify"}}
	rw := New(testPolicy(""), cat)
	partial := New(testPolicy(""), testCatalog())

	cases := []struct {
		sql, user string
		unknown   bool
		reason    string // default unknown_relation
	}{
		// An unqualified function neither builtin nor in the catalog.
		{"SELECT new_fn()", "", true, ReasonUnknownFunction},
		{"SELECT name FROM clinics WHERE id = new_fn()", "", true, ReasonUnknownFunction},
		{"SELECT count(*) FROM clinics", "", false, ""},
		{"SELECT public.new_fn()", "", true, ReasonUnknownFunction},
		{"SELECT other.new_fn()", "", true, ReasonUnknownFunction},
		// name(x) with a type's name is a cast.
		{"SELECT uuid('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'), jsonb('{}'), mood('happy')", "", false, ""},
		// Operators: builtin, listed (checked through their functions) or
		// unknown.
		{"SELECT 1 ### 2", "", true, ReasonUnknownFunction},
		{"SELECT name FROM clinics WHERE id = 1 AND name ### 'x'", "", true, ReasonUnknownFunction},
		{"SELECT name FROM clinics WHERE id ### ANY(ARRAY[1])", "", true, ReasonUnknownFunction},
		{"SELECT name FROM clinics WHERE id OPERATOR(public.###) 1", "", true, ReasonUnknownFunction},
		{"SELECT name FROM clinics WHERE id = 1 ORDER BY name USING ###", "", true, ReasonUnknownFunction},
		{"SELECT name FROM clinics WHERE id = 1 + 1 AND name LIKE 'a%' ORDER BY name USING <", "", false, ""},
		{"SELECT name FROM clinics WHERE id OPERATOR(pg_catalog.=) 1", "", false, ""},
		{"SELECT name FROM clinics WHERE id BETWEEN 1 AND 2 AND id IN (1, 2)", "", false, ""},
		{"SELECT name @@@ 'x' FROM clinics WHERE id = 1", "", false, ""},
		{"SELECT lower(name), now(), extract(year FROM now()) FROM clinics WHERE id = 1", "", false, ""},
		{"SELECT slugify(name) FROM clinics WHERE id = 1", "", false, ""},
		// Read or written: refused.
		{"SELECT id, name FROM new_view WHERE id = 1", "", true, ""},
		{"SELECT c.name FROM clinics c JOIN new_view v ON v.id = c.id WHERE c.id = 1", "", true, ""},
		{"SELECT name FROM clinics WHERE id IN (SELECT id FROM new_view)", "", true, ""},
		{"SELECT name FROM clinics WHERE EXISTS (SELECT 1 FROM other.clinics)", "", true, ""},
		{"SELECT x FROM pg_temp.scratch", "", true, ""},
		{"INSERT INTO new_table (id) VALUES (1)", "", true, ""},
		{"UPDATE new_table SET x = 1 WHERE id = 1", "", true, ""},
		{"DELETE FROM new_table WHERE id = 1", "", true, ""},
		{"MERGE INTO new_table t USING clinics c ON t.id = c.id WHEN MATCHED THEN DELETE", "", true, ""},
		{"COPY new_table TO STDOUT", "", true, ""},
		{"TRUNCATE new_table", "", true, ""},
		{"WITH a AS (SELECT id FROM new_view) SELECT id FROM a", "", true, ""},
		// A CTE name covers only references in its scope: not its own
		// (non-recursive) body, not earlier siblings, not other
		// subqueries, never a write target.
		{"WITH new_view AS (SELECT * FROM new_view) SELECT * FROM new_view", "", true, ""},
		{"SELECT * FROM new_view WHERE EXISTS (WITH new_view AS (SELECT 1) SELECT 1 FROM new_view)", "", true, ""},
		{"WITH x AS (SELECT * FROM new_view), new_view AS (SELECT 1) SELECT * FROM x", "", true, ""},
		{"SELECT * FROM new_view UNION ALL SELECT * FROM (WITH new_view AS (SELECT 0 AS id) SELECT * FROM new_view) s", "", true, ""},
		{"WITH new_table AS (SELECT 1) UPDATE new_table SET x = 1 WHERE id = 1", "", true, ""},
		{"WITH new_table AS (SELECT 1) DELETE FROM new_table WHERE id = 1", "", true, ""},
		{"WITH new_table AS (SELECT 1) INSERT INTO new_table (id) VALUES (1)", "", true, ""},
		{"WITH new_table AS (SELECT 1) MERGE INTO new_table t USING clinics c ON t.id = c.id WHEN MATCHED THEN DELETE", "", true, ""},
		// Known, system, CTE or created by the statement: decided as before.
		{"SELECT name FROM clinics WHERE id = 1", "", false, ""},
		{"SELECT last_value FROM clinics_id_seq", "", false, ""},
		{"SELECT last_value FROM public.clinics_id_seq", "", false, ""},
		{"SELECT last_value FROM other.clinics_id_seq", "", true, ""},
		{"SELECT name FROM public.clinics WHERE id = 1", "", false, ""},
		{"WITH new_view AS (SELECT id FROM clinics WHERE id = 1) SELECT id FROM new_view", "", false, ""},
		{"SELECT id FROM (WITH w AS (SELECT 1 AS id) SELECT id FROM w) s", "", false, ""},
		{"WITH a AS (SELECT id FROM clinics WHERE id = 1), b AS (SELECT id FROM a) SELECT id FROM b WHERE id IN (SELECT id FROM a)", "", false, ""},
		{"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT n FROM r", "", false, ""},
		{"WITH RECURSIVE a AS (SELECT id FROM b), b AS (SELECT id FROM clinics WHERE id = 1) SELECT id FROM a", "", false, ""},
		{"WITH w AS (SELECT 1 AS id) SELECT c.name FROM clinics c JOIN w ON w.id = c.id WHERE c.id = 1", "", false, ""},
		{"WITH w AS (SELECT 1 AS id) INSERT INTO clinics (id, name) SELECT id, 'x' FROM w", "", false, ""},
		{"WITH w AS (SELECT 1 AS id) UPDATE clinics SET name = 'x' FROM w WHERE clinics.id = w.id", "", false, ""},
		{"WITH w AS (SELECT 1 AS id) DELETE FROM clinics USING w WHERE clinics.id = w.id", "", false, ""},
		{"WITH w AS (SELECT 1 AS id) MERGE INTO clinics c USING w ON c.id = w.id WHEN MATCHED THEN DELETE", "", false, ""},
		{"WITH d AS (DELETE FROM clinics WHERE id = 1 RETURNING id) SELECT id FROM d", "", false, ""},
		{"SELECT (WITH w AS (SELECT 1 AS id) SELECT id FROM w)", "", false, ""},
		{"SELECT relname FROM pg_class WHERE oid = 1", "", false, ""},
		{"SELECT nspname FROM pg_catalog.pg_namespace WHERE oid = 1", "", false, ""},
		{"SELECT table_name FROM information_schema.tables LIMIT 5", "", false, ""},
		{"CREATE TABLE brand_new (id int)", "admin", false, ""},
		// DDL a role may run is not scoped; the view is judged by what it
		// reads once the catalog lists it.
		{"CREATE VIEW v2 AS SELECT id FROM new_view", "admin", false, ""},
		{"TRUNCATE new_table", "admin", false, ""},
		// A role with the ddl right uses what it has just created.
		{"INSERT INTO new_table (id) VALUES (1)", "admin", false, ""},
		{"SELECT x FROM pg_temp.scratch", "admin", false, ""},
		{"SELECT new_fn()", "admin", false, ""},
		{"SELECT 1 ### 2", "admin", false, ""},
		{"SELECT id, name FROM patients WHERE id = 1", "", false, ""},
	}
	for _, tc := range cases {
		sess := Session{Tenant: "7", HasTenant: true, User: tc.user}
		res := rw.Decide(tc.sql, sess)
		if len(res.Statements) != 1 {
			t.Fatalf("%s: %d statements", tc.sql, len(res.Statements))
		}
		d := res.Statements[0]
		want := tc.reason
		if want == "" {
			want = ReasonUnknownRelation
		}
		got := d.Verdict == VerdictRejected && d.Reason == want
		if got != tc.unknown {
			t.Errorf("%s (user %q): verdict %s, reason %s; want %s=%v", tc.sql, tc.user, d.Verdict, d.Reason, want, tc.unknown)
			continue
		}
		if got {
			if d.Error == nil || d.Error.SQLState != "0A000" || d.Error.Hint == "" {
				t.Errorf("%s: error %+v, want 0A000 with a hint", tc.sql, d.Error)
			}
			// Without Complete the same statement is not refused for this
			// reason: the flag is what refuses it.
			if p := partial.Decide(tc.sql, sess).Statements[0]; p.Reason == want {
				t.Errorf("%s: refused as unknown by a catalog that is not complete", tc.sql)
			}
		}
	}
}
