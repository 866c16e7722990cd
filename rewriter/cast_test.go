package rewriter

import (
	"strings"
	"testing"
)

// TestTenantValueCasts: a cast is looked through, where an expression must
// stand for the tenant, only when it keeps the value whole. A length,
// precision or character(n) changes it: '17'::varchar(1)::int is 1, and
// current_setting('app.clinic_id'::varchar(8)) reads another setting
// (app.clin, which any session may set). Found by FuzzDecide: under
// strategy verify such a conjunct passed as the tenant's, and in either
// mode such a value was written as the tenant's (tenant 17 inserted a row
// of tenant 1).
func TestTenantValueCasts(t *testing.T) {
	s := Session{Tenant: "17", HasTenant: true}
	changes := []string{
		"'17'::varchar(1)::int",
		"'17'::char(1)::int",
		"'17'::character(1)::int",
		"CAST(CAST('17' AS varchar(1)) AS integer)",
		"'17'::numeric(1,0)::int",
		"current_setting('app.clinic_id')::varchar(1)::int",
		"current_setting('app.clinic_id'::varchar(8))::int",
		"current_setting(varchar(8) 'app.clinic_id')::int",
		"current_setting('app.clinic_id')::bpchar::int",
		"current_setting('app.clinic_id')::int[]",
		"('17'::varchar(1))::int",
		"(SELECT current_setting('app.clinic_id')::varchar(1)::int)",
	}
	keeps := []string{
		"17",
		"'17'",
		"'17'::int",
		"'17'::integer",
		"CAST('17' AS bigint)",
		"'17'::pg_catalog.int4",
		"'17'::text::int",
		"'17'::varchar::int",
		"current_setting('app.clinic_id')::int",
		"current_setting('app.clinic_id'::text)::integer",
		"current_setting('app.clinic_id', true)::bigint",
		"(SELECT current_setting('app.clinic_id')::int)",
	}
	for _, mode := range []string{"default", "verify"} {
		r := New(testPolicy(mode), testCatalog(), WithCacheSize(0))
		decide := func(sql string) *Decision {
			t.Helper()
			res := r.Decide(sql, s)
			if len(res.Statements) != 1 {
				t.Fatalf("%s: %d statements", sql, len(res.Statements))
			}
			return &res.Statements[0]
		}
		for _, v := range changes {
			// Written as the tenant's: refused in both modes.
			for _, sql := range []string{
				"INSERT INTO invoices (clinic_id, patient_id, amount) VALUES (" + v + ", 1, 1)",
				"UPDATE invoices SET clinic_id = " + v + " WHERE clinic_id = 17 AND id = 1",
			} {
				if d := decide(sql); d.Verdict != VerdictRejected {
					t.Errorf("%s: %s %s: %s", mode, d.Verdict, d.Reason, sql)
				}
			}
			// As the scope: verify refuses it, inject adds its own.
			sql := "DELETE FROM invoices WHERE clinic_id = " + v
			d := decide(sql)
			switch {
			case mode == "verify" && d.Verdict != VerdictRejected:
				t.Errorf("verify: %s %s: %s", d.Verdict, d.Reason, sql)
			case mode == "default" && d.Verdict != VerdictRejected && !strings.Contains(d.SQL, "invoices.clinic_id = 17"):
				t.Errorf("default: not scoped: %s", d.SQL)
			}
		}
		// The tenant set: the value set must be the one tracked.
		for _, sql := range []string{
			"SELECT set_config('app.clinic_id', '17'::varchar(1), false)",
			"SELECT set_config('app.clinic_id'::varchar(8), '8', false)",
		} {
			if d := decide(sql); d.Verdict != VerdictRejected {
				t.Errorf("%s: %s %s: %s", mode, d.Verdict, d.Reason, sql)
			}
		}
		if d := decide("SELECT set_config('app.clinic_id', '17'::text, false)"); d.Verdict == VerdictRejected || d.TenantEffect == nil || d.TenantEffect.Value != "17" {
			t.Errorf("%s: set_config with ::text: %s %s %+v", mode, d.Verdict, d.Reason, d.TenantEffect)
		}
		for _, v := range keeps {
			for _, sql := range []string{
				"INSERT INTO invoices (clinic_id, patient_id, amount) VALUES (" + v + ", 1, 1)",
				"DELETE FROM invoices WHERE clinic_id = " + v,
			} {
				if d := decide(sql); d.Verdict == VerdictRejected {
					t.Errorf("%s: refused %s: %s", mode, d.Reason, sql)
				}
			}
		}
	}
}

// TestLimitValueCasts: a LIMIT bounds a result only through casts that
// keep its value: '150'::numeric(2,-2) is 200.
func TestLimitValueCasts(t *testing.T) {
	r := New(testPolicy("default"), testCatalog(), WithCacheSize(0))
	s := Session{Tenant: "7", HasTenant: true}
	for sql, bounded := range map[string]bool{
		"SELECT * FROM invoices LIMIT 50":                    true,
		"SELECT * FROM invoices LIMIT 50::int":               true,
		"SELECT * FROM invoices LIMIT CAST(50 AS bigint)":    true,
		"SELECT * FROM invoices LIMIT 50::numeric(2,-2)":     false,
		"SELECT * FROM invoices LIMIT '50'::varchar(1)::int": false,
	} {
		d := r.Decide(sql, s).Statements[0]
		if got := d.Verdict != VerdictRejected; got != bounded {
			t.Errorf("%s: %s %s, want bounded %v", sql, d.Verdict, d.Reason, bounded)
		}
	}
}

// TestStatementTextKeepsUnicodeSpaces: a statement's text is trimmed of
// the SQL scanner's whitespace only. PostgreSQL reads U+00A0 (and U+0085,
// U+2000...) as part of an identifier: trimmed, `x<U+00A0>` became `x`,
// another name (found by FuzzDecide on `SELECT?<U+00A0>`).
func TestStatementTextKeepsUnicodeSpaces(t *testing.T) {
	r := New(testPolicy("default"), testCatalog(), WithCacheSize(0))
	s := Session{Tenant: "7", HasTenant: true}
	for _, sp := range []string{"\u00a0", "\u0085", "\u2003"} {
		sql := "SELECT 1 AS x" + sp + "; SELECT 2 AS y" + sp
		res := r.Decide(sql, s)
		if len(res.Statements) != 2 {
			t.Fatalf("%q: %d statements", sql, len(res.Statements))
		}
		for i, want := range []string{"SELECT 1 AS x" + sp, "SELECT 2 AS y" + sp} {
			if d := res.Statements[i]; d.Verdict == VerdictRejected || d.SQL != want {
				t.Errorf("%q, statement %d: %s %q, want %q", sql, i, d.Verdict, d.SQL, want)
			}
		}
	}
}

// TestTenantValueCastsByTenantType: which casts keep a value whole depends
// on the tenant's type. For a text tenant a number's cast rewrites the
// string ('007'::int::text is '7', another tenant), as a uuid's does
// ('{A0EE…}'::uuid::text); for an integer tenant they keep it.
func TestTenantValueCastsByTenantType(t *testing.T) {
	cases := []struct {
		variant, tenant, value string
		kept                   bool
	}{
		{"text", "007", "'007'", true},
		{"text", "007", "'007'::varchar", true},
		{"text", "007", "'007'::int::text", false},
		{"text", "007", "'007'::numeric::text", false},
		{"text", "007", "current_setting('app.clinic_id')::int::text", false},
		{"text", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'::uuid::text", false},
		{"default", "7", "'007'::int", true},
		{"default", "7", "'7'::text::int", true},
		{"bigint", "7", "'7'::numeric::int8", true},
		{"uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::text::uuid", true},
		{"uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::int::uuid", false},
	}
	for _, tc := range cases {
		r := New(testPolicy(tc.variant), testCatalog(), WithCacheSize(0))
		sql := "INSERT INTO invoices (clinic_id, patient_id, amount) VALUES (" + tc.value + ", 1, 1)"
		d := r.Decide(sql, Session{Tenant: tc.tenant, HasTenant: true}).Statements[0]
		if kept := d.Verdict != VerdictRejected; kept != tc.kept {
			t.Errorf("%s tenant %s: %s %s, want kept %v: %s", tc.variant, tc.tenant, d.Verdict, d.Reason, tc.kept, sql)
		}
	}
}
