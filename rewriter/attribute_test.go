package rewriter

import (
	"strings"
	"testing"
)

// Attribute notation calls a function without a call in the text: c.f is
// f(c) when f is not a column of c, and (x).f is f(x). Such functions are
// checked like calls (review B5).
func TestAttributeNotationCallsAreChecked(t *testing.T) {
	cat := testCatalog()
	cat.Functions["public.name"] = &Function{Schema: "public", Name: "name", Language: "plpgsql", Body: "BEGIN RETURN 1; END"}
	rw := New(testPolicy(""), cat)
	complete := testCatalog()
	complete.Complete = true
	crw := New(testPolicy(""), complete)
	// With a complete catalog, c.f that is neither a column of c nor a
	// known function may call a function created since the load.
	for _, sql := range []string{"SELECT c.ctid, c.xmin, c.tableoid::regclass FROM clinics c WHERE c.id = 1"} {
		if d := crw.Decide(sql, Session{Tenant: "7", HasTenant: true}).Statements[0]; d.Verdict == VerdictRejected {
			t.Errorf("%s: refused (%s): system columns are columns", sql, d.Reason)
		}
	}
	for _, sql := range []string{"SELECT c.late_fn FROM clinics c WHERE c.id = 1", "SELECT (NULL::clinics).late_fn"} {
		if d := crw.Decide(sql, Session{Tenant: "7", HasTenant: true}).Statements[0]; d.Reason != ReasonUnknownFunction {
			t.Errorf("%s: verdict %s, reason %s; want unknown_function", sql, d.Verdict, d.Reason)
		} else if want := "tenantguard: column or function late_fn is not in tenantguard's catalog"; !strings.HasPrefix(d.Error.Message, want) {
			t.Errorf("%s: message %q; want it to start %q (a mistyped column looks like this)", sql, d.Error.Message, want)
		}
		if d := rw.Decide(sql, Session{Tenant: "7", HasTenant: true}).Statements[0]; d.Verdict == VerdictRejected {
			t.Errorf("%s: refused (%s) without a complete catalog", sql, d.Reason)
		}
	}
	cases := []struct {
		sql     string
		refused bool
	}{
		{"SELECT c.patient_count FROM clinics c WHERE c.id = 1", true},
		{"SELECT clinics.patient_count FROM clinics WHERE id = 1", true},
		{"SELECT public.clinics.patient_count FROM public.clinics WHERE id = 1", true},
		{"SELECT (c).patient_count FROM clinics c WHERE c.id = 1", true},
		{"SELECT (NULL::clinics).patient_count", true},
		{"SELECT name FROM clinics c WHERE c.id = 1 AND c.patient_count > 0", true},
		// A column of that name is a column, even when a function of that
		// name exists; safe functions pass as they would when called.
		{"SELECT c.name FROM clinics c WHERE c.id = 1", false},
		{"SELECT (c).name FROM clinics c WHERE c.id = 1", false},
		{"SELECT (NULL::clinics).name", false},
		{"SELECT c.slugify FROM clinics c WHERE c.id = 1", false},
		{"SELECT c.id FROM clinics c WHERE c.id = 1", false},
	}
	for _, tc := range cases {
		d := rw.Decide(tc.sql, Session{Tenant: "7", HasTenant: true}).Statements[0]
		got := d.Verdict == VerdictRejected && d.Reason == ReasonDeniedFunction
		if got != tc.refused {
			t.Errorf("%s: verdict %s, reason %s; want refused as denied_function=%v", tc.sql, d.Verdict, d.Reason, tc.refused)
		}
	}
}

// TestDeniedStatementsAreNamedAsSQL: a refused statement is named as its
// SQL reads ("DROP TABLE"), not as the parser's node ("DropStmt").
func TestDeniedStatementsAreNamedAsSQL(t *testing.T) {
	rw := New(testPolicy(""), testCatalog())
	for sql, want := range map[string]string{
		"DROP TABLE patients":                   "statement DROP TABLE is not allowed",
		"DROP INDEX patients_pkey":              "statement DROP INDEX is not allowed",
		"CREATE TABLE t (a int)":                "statement CREATE TABLE is not allowed",
		"ALTER TABLE patients ADD COLUMN x int": "statement ALTER TABLE is not allowed",
		"CREATE ROLE r":                         "statement CREATE ROLE is not allowed",
		"CHECKPOINT":                            "statement CHECKPOINT is not allowed",
		"REFRESH MATERIALIZED VIEW v":           "statement REFRESH MATERIALIZED VIEW is not allowed",
		"ALTER TABLE patients RENAME TO p":      "statement ALTER ... RENAME is not allowed",
		"CREATE EXTENSION x":                    "statement CREATE EXTENSION is not allowed",
	} {
		d := rw.Decide(sql, Session{Tenant: "7", HasTenant: true}).Statements[0]
		if d.Reason != ReasonDeniedStatement || d.Error == nil {
			t.Errorf("%s: verdict %s, reason %s; want denied_statement", sql, d.Verdict, d.Reason)
			continue
		}
		if !strings.Contains(d.Error.Message, want) || strings.Contains(d.Error.Message, "Stmt") {
			t.Errorf("%s: message %q; want it to contain %q", sql, d.Error.Message, want)
		}
	}
}
