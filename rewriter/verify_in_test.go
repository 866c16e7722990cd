package rewriter

import (
	"slices"
	"testing"
)

// TestVerifyAcceptsOneValueIN: under verify, `clinic_id IN (<tenant>)` with
// a single value scopes a relation as `clinic_id = <tenant>` does (ORMs write
// a one-element list so); a list of more values, NOT IN, or another tenant's
// value does not.
func TestVerifyAcceptsOneValueIN(t *testing.T) {
	v := New(testPolicy("verify"), testCatalog(), WithCacheSize(0))
	s := Session{Tenant: "7", HasTenant: true}
	for _, c := range []struct {
		where  string
		reason string
	}{
		{"clinic_id IN (7)", ReasonScoped},
		{"p.clinic_id IN ('7') AND id = 3", ReasonScoped},
		{"clinic_id IN (current_setting('app.clinic_id')::int)", ReasonScoped},
		{"clinic_id IN (8)", ReasonCrossTenant},
		{"clinic_id IN (7, 8)", ReasonUnscoped},
		{"clinic_id IN (7, 7)", ReasonUnscoped}, // not worth recognising
		{"clinic_id NOT IN (7)", ReasonUnscoped},
		{"clinic_id IN (SELECT 7)", ReasonUnscoped},
		{"7 IN (clinic_id)", ReasonScoped}, // 7 = clinic_id
		{"clinic_id IN (7) OR id = 3", ReasonUnscoped},
	} {
		sql := "SELECT id FROM patients p WHERE " + c.where + " LIMIT 5"
		d := v.Decide(sql, s).Statements[0]
		if d.Reason != c.reason {
			t.Errorf("%s: %s %s, want %s", sql, d.Verdict, d.Reason, c.reason)
		}
	}
	// In the extended protocol the value is a parameter checked at Bind.
	sql := "UPDATE patients SET full_name = $1 WHERE clinic_id IN ($2) AND id = $3"
	d := v.Decide(sql, Session{Tenant: "7", HasTenant: true, Extended: true}).Statements[0]
	if d.Reason != ReasonScoped || !slices.Equal(d.VerifyParams, []int{2}) {
		t.Errorf("%s: %s %s verify params %v, want scoped with parameter 2 verified", sql, d.Verdict, d.Reason, d.VerifyParams)
	}
}
