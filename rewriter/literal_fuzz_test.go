package rewriter

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzLiteralCache is TestLiteralCacheIsExact with the literals chosen by
// the fuzzer: a rewriter that learnt a template from one statement decides
// the same statement with other literals (a for the even ones, b for the odd
// ones; a string literal gets a or b quoted) exactly as a rewriter without
// any cache does, in both directions, for two tenants, with and without the
// tenant as a literal, under inject and verify.
func FuzzLiteralCache(f *testing.F) {
	files := goldenFiles(f)
	for _, file := range files {
		for _, gc := range readGolden(f, file) {
			if !gc.Session.Extended {
				f.Add(gc.SQL, "8", "2147483648")
			}
		}
	}
	f.Add("SELECT full_name FROM patients WHERE id = 5 LIMIT 10 OFFSET 3", "0", "00")
	f.Add("UPDATE patients SET full_name = 'a' WHERE id = 5", "it's", "1e3")
	f.Add("INSERT INTO patients (clinic_id, full_name) VALUES (7, 'x')", "007", "7.0")
	f.Add("SELECT full_name FROM patients WHERE clinic_id IN (7) AND id = 5 LIMIT 3", "8", "7")
	f.Add("DELETE FROM invoices WHERE clinic_id IN ('7') AND id = 5", "7", "8")
	policies := []string{"default", "verify"}
	f.Fuzz(func(t *testing.T, sql, a, b string) {
		_, lits, ok := scanLiterals(sql)
		if !ok || len(sql) > 4096 {
			return
		}
		v := substituteLiterals(sql, lits, a, b)
		for _, pol := range policies {
			fresh := New(testPolicy(pol), testCatalog(), WithTenantSetting(), WithCacheSize(0))
			for _, pair := range [][2]string{{sql, v}, {v, sql}} {
				learn, decide := pair[0], pair[1]
				cached := New(testPolicy(pol), testCatalog(), WithTenantSetting())
				base := Session{Tenant: "7", HasTenant: true}
				lit := base
				lit.TenantLiteral = true
				for _, s := range []Session{base, lit} {
					cached.Decide(learn, s)
					for _, sess := range []Session{s, withTenant(s, "8")} {
						got, want := cached.Decide(decide, sess), fresh.Decide(decide, sess)
						gj, _ := json.Marshal(got)
						wj, _ := json.Marshal(want)
						if string(gj) != string(wj) {
							t.Fatalf("%s, learnt %q, decided %q (tenant %s, literal %v):\n cached %s\n fresh  %s",
								pol, learn, decide, sess.Tenant, sess.TenantLiteral, gj, wj)
						}
					}
				}
			}
		}
	})
}

// substituteLiterals replaces sql's literals: a for the even ones, b for
// the odd ones, quoted (quotes doubled) where the literal is a string.
func substituteLiterals(sql string, lits []literalSpan, a, b string) string {
	var sb strings.Builder
	last := 0
	for k, l := range lits {
		sb.WriteString(sql[last:l.start])
		r := a
		if k%2 == 1 {
			r = b
		}
		if strings.HasPrefix(sql[l.start:l.end], "'") {
			r = "'" + strings.ReplaceAll(r, "'", "''") + "'"
		}
		sb.WriteString(r)
		last = l.end
	}
	sb.WriteString(sql[last:])
	return sb.String()
}
