package rewriter

import (
	"strings"
	"testing"
)

// FuzzReviewPreparedForms: a statement decided three times (the third a
// literal-path hit) never panics, and its prepared form, when it has one,
// has as many parameter types as values and a text that parses.
func FuzzReviewPreparedForms(f *testing.F) {
	for _, s := range []string{
		"SELECT full_name FROM patients WHERE id = 1",
		"SELECT 1, 2.5, 'it''s', 3000000000, 99999999999999999999, 1e3 FROM patients WHERE id = 1",
		"UPDATE patients SET full_name = 'x' WHERE id = 00002147483648",
		"SELECT full_name FROM patients WHERE id = 2147483648",
		"INSERT INTO patients (id, full_name) VALUES (1, '')",
		"SELECT full_name FROM patients WHERE id IN (1, 2, 3) ORDER BY 1 LIMIT 5",
	} {
		f.Add(s)
	}
	rw := New(testPolicy("default"), testCatalog(), WithTenantSetting())
	pinned := Session{Tenant: "7", HasTenant: true, StartupTenant: "7", HasStartupTenant: true, TenantLiteral: true}
	f.Fuzz(func(t *testing.T, sql string) {
		for i := 0; i < 3; i++ {
			res := rw.Decide(sql, pinned)
			for _, d := range res.Statements {
				if d.Upstream == nil {
					continue
				}
				u := d.Upstream
				if len(u.ParamOIDs()) != len(u.Args) {
					t.Fatalf("%q: %d types, %d values", sql, len(u.ParamOIDs()), len(u.Args))
				}
				if form := u.SQL(); strings.Count(form, "$") < 1 && len(u.Args) > 0 {
					t.Fatalf("%q: form %q without parameters", sql, form)
				}
			}
		}
	})
}
