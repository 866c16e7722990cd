package rewriter

import (
	"fmt"
	"path/filepath"
	"strings"
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

// checkUpstream: a decision's prepared form, with the statement's own
// literals written back, is exactly the text the decision sends, and its
// arguments are those literals' values.
func checkUpstream(t *testing.T, sql string, d *Decision) {
	t.Helper()
	u := d.Upstream
	_, lits, ok := scanLiterals(sql)
	if !ok || len(lits) != len(u.Args) {
		t.Fatalf("%q: %d arguments for %d literals", sql, len(u.Args), len(lits))
	}
	var b strings.Builder
	u.Form.write(&b, u.TenantLit, func(k int) (string, bool) {
		l := lits[k-1]
		return sql[l.start:l.end], true
	})
	if b.String() != d.SQL {
		t.Fatalf("%q: the prepared form with its literals is\n %s\nthe decision sends\n %s", sql, b.String(), d.SQL)
	}
	for i, l := range lits {
		want := sql[l.start:l.end]
		if want[0] == '\'' {
			want = strings.ReplaceAll(want[1:len(want)-1], "''", "'")
		}
		if u.Args[i] != want {
			t.Fatalf("%q: argument %d is %q, want %q", sql, i+1, u.Args[i], want)
		}
	}
}

// FuzzPreparedForm: whatever the statement, a prepared form is the
// decision's text with parameters for its literals (checkUpstream), and it
// is scoped as that text is (the structural checker, on the form itself).
func FuzzPreparedForm(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*.json"))
	for _, file := range files {
		for _, gc := range readGolden(f, file) {
			if !gc.Session.Extended {
				f.Add(gc.SQL)
			}
		}
	}
	f.Fuzz(func(t *testing.T, sql string) {
		rw := New(testPolicy("default"), testCatalog(), WithTenantSetting())
		for _, s := range []Session{
			{Tenant: "7", HasTenant: true},
			{Tenant: "7", HasTenant: true, StartupTenant: "7", HasStartupTenant: true, TenantLiteral: true},
		} {
			rw.Decide(sql, s) // learn
			res := rw.Decide(sql, s)
			if len(res.Statements) != 1 || res.Statements[0].Upstream == nil {
				continue
			}
			d := &res.Statements[0]
			checkUpstream(t, sql, d)
			form := d.Upstream.SQL()
			// A literal the decision compared with the tenant (verify) is a
			// parameter of the form, checked again for each statement
			// before its Bind: the checker takes it as the extended
			// protocol's verified parameters.
			fd := *d
			for i, a := range d.Upstream.Args {
				if got, err := CanonicalTenant(rw.pol.Tenant.Type, a); err == nil && got == s.Tenant {
					fd.VerifyParams = append(fd.VerifyParams, i+1)
				}
			}
			if p := checkScoped(rw.pol, rw.rels, form, s.Tenant, fd); len(p) > 0 {
				t.Fatalf("prepared form not scoped: %v\nin:   %s\nform: %s", p, sql, form)
			}
		}
	})
}

// TestPreparedFormsNeverFoldParameters: an expression of parameters and
// constants alone would be folded (and fail, for 10 / 0) when the text is
// planned, not in a generic plan: such shapes go as text. A parameter
// compared with a column, cast, listed or next to now() is fine.
func TestPreparedFormsNeverFoldParameters(t *testing.T) {
	rw := New(testPolicy("default"), testCatalog(), WithTenantSetting())
	s := Session{Tenant: "7", HasTenant: true}
	for sql, want := range map[string]bool{
		"SELECT name, 10 / %d FROM patients WHERE id = 1":                                              false,
		"SELECT name, %d::smallint FROM patients WHERE id = 1":                                         false,
		"SELECT name FROM patients WHERE id = %d AND pi() > 3":                                         false,
		"SELECT name FROM patients WHERE id = %d AND random() > 0.5":                                   true,
		"SELECT name FROM patients WHERE id = %d AND 5 + 1 = 6":                                        false,
		"SELECT name FROM patients WHERE id = %d AND (CASE WHEN 1 = 1 THEN 2 END) = 2":                 false,
		"SELECT name FROM patients WHERE id = %d AND coalesce(2, 3) = 2":                               false,
		"SELECT name FROM patients WHERE id = %d AND name = lower('X')":                                false,
		"SELECT name FROM patients WHERE id = %d":                                                      true,
		"SELECT name FROM patients WHERE id = '%d'::int":                                               true,
		"SELECT name FROM patients WHERE id IN (1, 2, %d)":                                             true,
		"SELECT name FROM patients WHERE id = %d AND name = ANY (ARRAY['a', 'b'])":                     true,
		"SELECT name FROM patients WHERE id = %d AND now() > '2020-01-01'":                             true,
		"SELECT name, %d FROM patients WHERE id = 1":                                                   true,
		"SELECT name FROM patients WHERE id = %d AND lower(name) = 'x'":                                true,
		"SELECT name FROM patients WHERE id = %d AND EXISTS (SELECT 1 FROM patients q WHERE q.id = 4)": true,
	} {
		var d *Decision
		for _, v := range []int{1, 2, 3} {
			res := rw.Decide(fmt.Sprintf(sql, v), s)
			if len(res.Statements) != 1 || res.Statements[0].Verdict == VerdictRejected {
				t.Fatalf("%s: %+v", sql, res.Statements)
			}
			d = &res.Statements[0]
		}
		if got := d.Upstream != nil; got != want {
			t.Errorf("%s: prepared form %v, want %v", sql, got, want)
		}
	}
}
