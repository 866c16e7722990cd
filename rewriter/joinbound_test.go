package rewriter

import (
	"slices"
	"strings"
	"testing"
)

// TestJoinBound: a join is bounded when unique-key equalities (or lists of
// key values) fix every relation, each through constants, parameters or
// relations fixed before it; GROUP BY on columns of fixed relations only
// bounds the groups.
// Everything the analysis cannot follow stays unbounded (54000).
func TestJoinBound(t *testing.T) {
	rw := New(testPolicy(""), testCatalog())
	sess := Session{Tenant: "7", HasTenant: true}
	cases := []struct {
		sql     string
		bounded bool
	}{
		// A patient and its clinic: the clinic's key is fixed by the patient.
		{"SELECT p.name, c.name FROM patients p JOIN clinics c ON c.id = p.clinic_id WHERE p.id = 6", true},
		{"SELECT p.name, c.name FROM patients p LEFT JOIN clinics c ON c.id = p.clinic_id WHERE p.id = $1", true},
		{"SELECT p.name, c.name FROM patients p, clinics c WHERE c.id = p.clinic_id AND p.id = 6", true},
		{"SELECT p.name, c.name FROM clinics c JOIN patients p ON c.id = p.clinic_id WHERE 6 = p.id", true},
		// An invoice, its patient and the patient's clinic: a chain.
		{"SELECT i.amount, p.name, c.name FROM invoices i JOIN patients p ON p.id = i.patient_id JOIN clinics c ON c.id = p.clinic_id WHERE i.id = 3", true},
		// Unqualified columns that only one relation has.
		{"SELECT amount, dob FROM invoices JOIN patients ON patients.id = patient_id WHERE invoices.id = 3", true},
		// The clinic's grouped count: one group.
		{"SELECT c.name, count(p.id) FROM clinics c LEFT JOIN patients p ON p.clinic_id = c.id WHERE c.id = 7 GROUP BY c.name", true},
		// Lists of key values: one row each.
		{"SELECT id FROM patients WHERE id IN (1, 2, 3)", true},
		{"SELECT id FROM patients WHERE id IN ($1, $2)", true},
		{"SELECT id FROM patients WHERE id = ANY (ARRAY[1, 2])", true},
		{"SELECT id FROM patients WHERE email IN ('a', 'b')", true}, // (clinic_id, email): the tenant fixes clinic_id
		{"SELECT p.name, c.name FROM patients p JOIN clinics c ON c.id = p.clinic_id WHERE p.id IN (6, 7)", true},
		{"SELECT id FROM patients WHERE id IN (" + strings.Repeat("1, ", 100) + "1)", false}, // 101 > max_rows
		{"SELECT id FROM patients WHERE id = ANY ($1)", false},                               // an array of unknown length
		{"SELECT id FROM patients WHERE id NOT IN (1, 2)", false},
		{"SELECT id FROM patients WHERE id IN (SELECT patient_id FROM invoices)", false},
		{"SELECT id FROM patients WHERE id IN (1, length(name))", false},
		{"SELECT id FROM patients WHERE id IN (1, 2) OR name = 'x'", false},
		// Not bounded: the patient's invoices are many.
		{"SELECT p.name, i.amount FROM patients p JOIN invoices i ON i.patient_id = p.id WHERE p.id = 6", false},
		// The LEFT JOIN's ON does not filter the left side.
		{"SELECT p.name, c.name FROM patients p LEFT JOIN clinics c ON c.id = p.clinic_id AND p.id = 6", false},
		// The clinic is fixed per patient, but the patients are many.
		{"SELECT p.name, c.name FROM patients p JOIN clinics c ON c.id = p.clinic_id", false},
		{"SELECT c.name, count(*) FROM patients p JOIN clinics c ON c.id = p.clinic_id GROUP BY c.name", false},
		// Grouped by a column of the unbounded side.
		{"SELECT p.name, count(*) FROM clinics c JOIN patients p ON p.clinic_id = c.id WHERE c.id = 7 GROUP BY p.name", false},
		{"SELECT c.name, count(*) FROM clinics c JOIN patients p ON p.clinic_id = c.id WHERE c.id = 7 GROUP BY ROLLUP (c.name)", false},
		{"SELECT c.name, count(*) FROM clinics c JOIN patients p ON p.clinic_id = c.id WHERE c.id = 7 GROUP BY 1", false},
		// Forms the analysis does not follow.
		{"SELECT p.name FROM patients p RIGHT JOIN clinics c ON c.id = p.clinic_id WHERE p.id = 6", false},
		{"SELECT p.name FROM patients p FULL JOIN clinics c ON c.id = p.clinic_id WHERE p.id = 6 AND c.id = 7", false},
		{"SELECT p.name FROM patients p JOIN clinics c USING (id) WHERE p.id = 6", false},
		{"SELECT p.name FROM patients p JOIN (SELECT id FROM clinics) c ON c.id = p.clinic_id WHERE p.id = 6", false},
		// An unqualified column two relations have is ambiguous (the server refuses it).
		{"SELECT p.name FROM patients p JOIN clinics c ON c.id = p.clinic_id WHERE id = 6", false},
		// A relation without a known unique key.
		{"SELECT p.name FROM patients p JOIN patient_summary s ON s.id = p.id WHERE p.id = 6", false},
		// A non-equality.
		{"SELECT p.name, c.name FROM patients p JOIN clinics c ON c.id > p.clinic_id WHERE p.id = 6", false},
	}
	for _, tc := range cases {
		d := rw.Decide(tc.sql, sess).Statements[0]
		unbounded := d.Verdict == VerdictRejected && d.Reason == ReasonUnbounded
		if d.Verdict == VerdictRejected && !unbounded {
			t.Errorf("%s: refused as %s; the case needs a statement refused only for its bound, if at all", tc.sql, d.Reason)
			continue
		}
		if unbounded == tc.bounded {
			t.Errorf("%s: unbounded=%v, want bounded=%v", tc.sql, unbounded, tc.bounded)
		}
	}
}

// TestArrayParamBound: in the extended protocol, key = ANY ($k) bounds a
// result when nothing else does, by max_rows values, and records $k for
// the proxy to check the array's length at Bind. A statement bounded
// otherwise records nothing (any array length then binds).
func TestArrayParamBound(t *testing.T) {
	rw := New(testPolicy(""), testCatalog())
	ext := Session{Tenant: "7", HasTenant: true, Extended: true}
	cases := []struct {
		sql    string
		arrays []int // nil: bounded without an array check; "rejected" below
		reject bool
	}{
		{"SELECT id FROM patients WHERE id = ANY ($1)", []int{1}, false},
		{"SELECT id FROM patients WHERE id = ANY ($1::bigint[])", []int{1}, false},
		{"SELECT p.name, c.name FROM patients p JOIN clinics c ON c.id = p.clinic_id WHERE p.id = ANY ($1)", []int{1}, false},
		{"SELECT id FROM patients WHERE id = ANY ($1) LIMIT 10", nil, false},
		{"SELECT id FROM patients WHERE id = 5 AND email = ANY ($1)", nil, false},
		// Two arrays multiply: more than max_rows.
		{"SELECT p.name FROM patients p JOIN invoices i ON i.patient_id = p.id WHERE p.id = ANY ($1) AND i.id = ANY ($2)", nil, true},
		{"SELECT id FROM patients WHERE id <> ALL ($1)", nil, true},
		{"SELECT id FROM patients WHERE name = ANY ($1)", nil, true},
	}
	for _, tc := range cases {
		d := rw.Decide(tc.sql, ext).Statements[0]
		if got := d.Verdict == VerdictRejected; got != tc.reject {
			t.Errorf("%s: rejected=%v (%s), want %v", tc.sql, got, d.Reason, tc.reject)
			continue
		}
		if !slices.Equal(d.ArrayParams, tc.arrays) {
			t.Errorf("%s: ArrayParams %v, want %v", tc.sql, d.ArrayParams, tc.arrays)
		}
		if len(d.ArrayParams) > 0 && d.MaxRows != 100 {
			t.Errorf("%s: MaxRows %d, want 100 for the Bind check", tc.sql, d.MaxRows)
		}
	}
	// The simple protocol has no Bind to check it at.
	if d := rw.Decide("SELECT id FROM patients WHERE id = ANY ('{1,2}')", Session{Tenant: "7", HasTenant: true}).Statements[0]; d.Reason != ReasonUnbounded {
		t.Errorf("simple protocol: verdict %s, reason %s; want unbounded", d.Verdict, d.Reason)
	}
}
