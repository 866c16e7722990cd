package rewriter

import (
	"path/filepath"
	"testing"
)

// FuzzDecide: no input panics or hits an internal error, and every statement
// that is forwarded is scoped (re-parsed and checked by the structural
// checker). The seed corpus is every statement of the golden files.
func FuzzDecide(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*.json"))
	for _, file := range files {
		for _, gc := range readGolden(f, file) {
			f.Add(gc.SQL, gc.Session.Extended)
		}
	}
	r := New(testPolicy("default"), testCatalog(), WithCacheSize(0))
	v := New(testPolicy("verify"), testCatalog(), WithCacheSize(0))
	// The proxy's mode: the setting expression, and a literal for a pinned
	// session (Session.TenantLiteral).
	st := New(testPolicy("default"), testCatalog(), WithCacheSize(0), WithTenantSetting())
	f.Fuzz(func(t *testing.T, sql string, extended bool) {
		for _, rw := range []*Rewriter{r, v, st} {
			s := Session{Tenant: "7", HasTenant: true, Extended: extended, TenantLiteral: rw == st}
			res := rw.Decide(sql, s)
			for i, d := range res.Statements {
				if d.Reason == ReasonInternal {
					t.Fatalf("internal error on statement %d", i)
				}
				if d.Verdict == VerdictRejected || d.SQL == "" || d.Reason == ReasonRoleAllowed {
					continue
				}
				tenant := tenantAfter(s, res.Statements[:i])
				if p := checkScoped(rw.pol, rw.rels, d.SQL, tenant, d); len(p) > 0 {
					t.Fatalf("statement %d not scoped: %v\nin:  %s\nout: %s", i, p, sql, d.SQL)
				}
			}
		}
	})
}
