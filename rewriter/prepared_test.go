package rewriter

import "testing"

// Decisions say what a statement does to SQL-level prepared statements, on
// a cache hit and a literal-insensitive hit too (the proxy refuses an
// EXECUTE of a name decided under an earlier catalog: a decision that lost
// the field would let it run).
func TestDecisionsCarryPreparedOps(t *testing.T) {
	rw := New(testPolicy(""), testCatalog(), WithTenantSetting())
	cases := []struct {
		sql      string
		op, name string
	}{
		{"PREPARE q2 AS SELECT name FROM clinics WHERE id = $1", "prepare", "q2"},
		{"EXECUTE q1(7)", "execute", "q1"},
		{"EXECUTE q1(8)", "execute", "q1"}, // literal-insensitive hit
		{"EXECUTE q1(8)", "execute", "q1"}, // cache hit
		{"EXPLAIN EXECUTE q1(9)", "execute", "q1"},
		{"CREATE TABLE t AS EXECUTE q1(9)", "execute", "q1"},
		{"DEALLOCATE q2", "deallocate", "q2"},
		{"DEALLOCATE ALL", "deallocate", ""},
		{"DISCARD ALL", "deallocate", ""},
	}
	for _, tc := range cases {
		d := rw.Decide(tc.sql, Session{Tenant: "7", HasTenant: true, User: "admin"}).Statements[0]
		if d.Prepared == nil || d.Prepared.Op != tc.op || d.Prepared.Name != tc.name {
			t.Errorf("%s: Prepared %+v, want %s %q", tc.sql, d.Prepared, tc.op, tc.name)
		}
	}
	if d := rw.Decide("SELECT name FROM clinics WHERE id = 1", Session{Tenant: "7", HasTenant: true}).Statements[0]; d.Prepared != nil {
		t.Errorf("SELECT: Prepared %+v", d.Prepared)
	}
}
