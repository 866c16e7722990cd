package rewriter

import (
	"fmt"
	"testing"
)

// TestPreparedForms: which statements the literal path serves with a
// prepared form, the form's text and its parameters' types and values.
func TestPreparedForms(t *testing.T) {
	rw := New(testPolicy("default"), testCatalog(), WithTenantSetting())
	pinned := Session{Tenant: "7", HasTenant: true, StartupTenant: "7", HasStartupTenant: true, TenantLiteral: true}
	for _, c := range []struct {
		sql  string // %d: a literal that changes between the statements
		form string // "" for none
		oids []uint32
		args []string
	}{
		{"SELECT full_name FROM patients WHERE id = %d", "SELECT full_name FROM patients WHERE patients.clinic_id = 7 AND id = $1", []uint32{23}, []string{"3"}},
		{"SELECT %d, 2.5, 'it''s', 3000000000, 99999999999999999999, 1e3 FROM patients WHERE id = 1",
			"SELECT $1, $2, $3, $4, $5, $6 FROM patients WHERE patients.clinic_id = 7 AND id = $7",
			[]uint32{23, 1700, 0, 20, 1700, 1700, 23}, []string{"3", "2.5", "it's", "3000000000", "99999999999999999999", "1e3", "1"}},
		{"UPDATE patients SET full_name = 'x' WHERE id = %d", "UPDATE patients SET full_name = $1 WHERE patients.clinic_id = 7 AND id = $2", []uint32{0, 23}, []string{"x", "3"}},
		// Column positions, type modifiers, groupings and orderings need
		// constants; the integer boundaries type differently after a minus.
		{"SELECT full_name, id FROM patients WHERE id IN (1, %d) ORDER BY 2", "", nil, nil},
		{"SELECT full_name::varchar(4) FROM patients WHERE id = %d", "", nil, nil},
		{"SELECT * FROM patients WHERE id = %d", "", nil, nil},
		{"SELECT p.* FROM patients p WHERE id = %d", "", nil, nil},
		{"UPDATE patients SET full_name = 'x' WHERE id = %d RETURNING *", "", nil, nil},
		{"SELECT full_name FROM patients WHERE id = %d AND id > -2147483648", "", nil, nil},
		{"SELECT full_name FROM patients WHERE id = %d AND id > -9223372036854775808", "", nil, nil},
	} {
		var d *Decision
		for _, v := range []int{1, 2, 3} {
			res := rw.Decide(fmt.Sprintf(c.sql, v), pinned)
			if len(res.Statements) != 1 || res.Statements[0].Verdict == VerdictRejected {
				t.Fatalf("%s: %+v", c.sql, res.Statements)
			}
			d = &res.Statements[0]
		}
		if c.form == "" {
			if d.Upstream != nil {
				t.Errorf("%s: prepared form %q, want none", c.sql, d.Upstream.SQL())
			}
			continue
		}
		if d.Upstream == nil {
			t.Errorf("%s: no prepared form", c.sql)
			continue
		}
		if got := d.Upstream.SQL(); got != c.form {
			t.Errorf("%s: form %q, want %q", c.sql, got, c.form)
		}
		if got := fmt.Sprint(d.Upstream.ParamOIDs()); got != fmt.Sprint(c.oids) {
			t.Errorf("%s: types %s, want %v", c.sql, got, c.oids)
		}
		if got := fmt.Sprintf("%q", d.Upstream.Args); got != fmt.Sprintf("%q", c.args) {
			t.Errorf("%s: args %s, want %q", c.sql, got, c.args)
		}
	}
}
