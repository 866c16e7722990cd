package rewriter

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

func TestScanLiterals(t *testing.T) {
	for _, c := range []struct {
		sql  string
		key  string
		lits []string
	}{
		{"SELECT * FROM patients WHERE id = 17 LIMIT 5", "SELECT * FROM patients WHERE id = \x00n LIMIT \x00n", []string{"17", "5"}},
		{"select a from t where s = 'it''s' and x>1.5e3", "select a from t where s = \x00s and x>\x00n", []string{"'it''s'", "1.5e3"}},
		{`SELECT "we""ird" FROM t2 WHERE n = .5`, "SELECT \"we\"\"ird\" FROM t2 WHERE n = \x00n", []string{".5"}},
		{"SELECT x::int FROM t WHERE y = '7'::text", "SELECT x::int FROM t WHERE y = \x00s::text", []string{"'7'"}},
	} {
		key, lits, ok := scanLiterals(c.sql)
		if !ok {
			t.Fatalf("%q: not scanned", c.sql)
		}
		if key != c.key {
			t.Errorf("%q: key %q, want %q", c.sql, key, c.key)
		}
		var got []string
		for _, l := range lits {
			got = append(got, c.sql[l.start:l.end])
		}
		if strings.Join(got, "|") != strings.Join(c.lits, "|") {
			t.Errorf("%q: literals %q, want %q", c.sql, got, c.lits)
		}
	}
	// Everything the scanner does not fully understand goes the full way.
	for _, sql := range []string{
		"SELECT 1 -- comment", "SELECT /* c */ 1", "SELECT $1", "SELECT $$x$$", "SELECT E'a\\nb'",
		"SELECT 'a\\b'", "SELECT B'101'", "SELECT X'1F'", "SELECT U&'\\0041'", `SELECT U&"a" FROM t WHERE 1 = 1`,
		"SELECT 0x1F", "SELECT 1_000", "SELECT 123abc", "SELECT 'a'\n'b'", "SELECT 'unterminated",
		"SELECT a FROM t", // no literal: the text cache serves it
		"SELECT é FROM t WHERE x = 1e", "SELECT 1\x01", "SELECT 1 FROM t WHERE x = 007", "SELECT 1 FROM t WHERE x = '\xaa'", "SELECT 1 FROM t WHERE x = 'a\x00'",
	} {
		if _, _, ok := scanLiterals(sql); ok {
			t.Errorf("%q: scanned, want the full path", sql)
		}
	}
}

// variants returns copies of sql with its literals changed: numbers to other
// numbers (small, and large enough to cross max_rows and offset bounds),
// strings to other strings and to the tenant values of the fixtures.
func variants(sql string) []string {
	_, lits, ok := scanLiterals(sql)
	if !ok {
		return nil
	}
	repl := func(f func(k int, old string) string) string {
		var b strings.Builder
		last := 0
		for k, l := range lits {
			b.WriteString(sql[last:l.start])
			b.WriteString(f(k, sql[l.start:l.end]))
			last = l.end
		}
		b.WriteString(sql[last:])
		return b.String()
	}
	var out []string
	for _, n := range []string{"1", "7", "8", "99", "101", "1000000"} {
		out = append(out, repl(func(_ int, old string) string {
			if strings.HasPrefix(old, "'") {
				return "'" + n + "'"
			}
			return n
		}))
	}
	out = append(out, repl(func(k int, old string) string {
		if strings.HasPrefix(old, "'") {
			return "'other" + strconv.Itoa(k) + "'"
		}
		return strconv.Itoa(k + 2)
	}))
	return out
}

// TestLiteralCacheIsExact is the differential test of the literal-insensitive
// path: over the golden corpus, a statement decided from a template learnt
// from another statement with other literals must be decided exactly as a
// fresh rewriter without any cache decides it.
func TestLiteralCacheIsExact(t *testing.T) {
	cached := rewriterSet{}
	fresh := rewriterSet{}
	hits, forms := 0, 0
	for _, file := range goldenFiles(t) {
		for _, gc := range readGolden(t, file) {
			s := gc.Session.session()
			if s.Extended {
				continue
			}
			rc := cached.get(gc.Policy, WithTenantSetting())
			rf := fresh.get(gc.Policy, WithTenantSetting(), WithCacheSize(0))
			rc.Decide(gc.SQL, s) // learn
			for _, v := range variants(gc.SQL) {
				lit := s
				lit.TenantLiteral = true
				for _, sess := range []Session{s, withTenant(s, "8"), lit, withTenant(lit, "8")} {
					got := rc.Decide(v, sess)
					want := rf.Decide(v, sess)
					if got.CacheHit {
						hits++
					}
					if len(got.Statements) == 1 && got.Statements[0].Upstream != nil {
						forms++
						checkUpstream(t, v, &got.Statements[0])
					}
					gj, _ := json.Marshal(got)
					wj, _ := json.Marshal(want)
					if string(gj) != string(wj) {
						t.Errorf("%s: %q (tenant %q):\n cached %s\n fresh  %s", gc.Comment, v, sess.Tenant, gj, wj)
					}
				}
			}
		}
	}
	if hits == 0 {
		t.Fatal("the literal path never hit: the test proves nothing")
	}
	if forms == 0 {
		t.Fatal("no decision had a prepared form: the check proves nothing")
	}
	t.Logf("%d decisions served from templates learnt with other literals, %d with a prepared form", hits, forms)
}

// TestLiteralCacheServesEveryTenant: a template learnt in one tenant's
// session serves the sessions of other tenants, with and without the
// literal tenant (pinned sessions), and renders nothing for them when the
// abstract decision does not depend on the tenant. Before, a pinned
// session's template held its tenant's literal and every other tenant's
// statement took the full parse.
func TestLiteralCacheServesEveryTenant(t *testing.T) {
	rs := New(testPolicy("default"), testCatalog(), WithTenantSetting())
	pinned := func(tenant string) Session {
		return Session{Tenant: tenant, HasTenant: true, StartupTenant: tenant, HasStartupTenant: true, TenantLiteral: true}
	}
	const sql = "SELECT full_name FROM patients WHERE id = %d LIMIT 5"
	rs.Decide(fmt.Sprintf(sql, 1), pinned("7")) // learn
	lt := rs.literals.get(append(literalKeyPrefix(nil, ""), "SELECT full_name FROM patients WHERE id = \x00n LIMIT \x00n"...))
	if lt == nil || lt.qt == nil || !lt.proven[0] || !lt.proven[1] || lt.abstract == nil {
		t.Fatalf("template not learnt for both modes with a tenant-free abstract decision: %+v", lt)
	}
	for i, s := range []Session{pinned("8"), pinned("7"), pinned("123"), withTenant(Session{}, "9")} {
		res := rs.Decide(fmt.Sprintf(sql, 100+i), s)
		if !res.CacheHit {
			t.Errorf("tenant %s (literal %v): not served by the template", s.Tenant, s.TenantLiteral)
		}
		d := res.Statements[0]
		want := "clinic_id = " + s.Tenant
		if !s.TenantLiteral {
			want = "current_setting("
		}
		if d.Verdict != VerdictRewritten || !strings.Contains(d.SQL, want) || !strings.Contains(d.SQL, fmt.Sprintf("id = %d", 100+i)) {
			t.Errorf("tenant %s: %s %q, want it rewritten with %q", s.Tenant, d.Verdict, d.SQL, want)
		}
	}
	// An invalid tenant is not served from the tenant-free decision: the
	// full path rejects it.
	if res := rs.Decide(fmt.Sprintf(sql, 200), withTenant(Session{}, "x7")); res.Statements[0].Verdict != VerdictRejected {
		t.Errorf("invalid tenant: %s %q, want rejected", res.Statements[0].Verdict, res.Statements[0].SQL)
	}
}

// TestLiteralCacheBypassSetInvalidFirst: a bypass role's SET of an invalid
// tenant, decided first, does not teach a template that serves the role's
// valid SETs without their tenant effect (found in review; the guard would
// have kept the old tenant for the session's audit).
func TestLiteralCacheBypassSetInvalidFirst(t *testing.T) {
	rc := New(testPolicy("default"), testCatalog(), WithTenantSetting())
	rf := New(testPolicy("default"), testCatalog(), WithTenantSetting(), WithCacheSize(0))
	s := Session{User: "migrator"}
	rc.Decide("SET app.clinic_id = 'abc'", s) // learn from an invalid value
	for _, v := range []string{"8", "9"} {
		sql := "SET app.clinic_id = '" + v + "'"
		got, want := rc.Decide(sql, s), rf.Decide(sql, s)
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(want)
		if string(gj) != string(wj) {
			t.Errorf("%s:\n cached %s\n fresh  %s", sql, gj, wj)
		}
		if e := got.Statements[0].TenantEffect; e == nil || e.Value != v {
			t.Errorf("%s: tenant effect %+v, want a SET of %s", sql, e, v)
		}
	}
}

func withTenant(s Session, tenant string) Session {
	s.Tenant, s.HasTenant = tenant, true
	return s
}

// TestTenantLiteralIsLiteralMode: with WithTenantSetting and
// Session.TenantLiteral, every simple-protocol statement of the golden
// corpus is rewritten exactly as the literal-mode rewriter (the tenant as a
// literal, the goldens' own mode) rewrites it, or, where the template keeps
// the setting expression, exactly as without TenantLiteral. Both are checked
// for two tenants, on a fresh decision and on a cache hit.
func TestTenantLiteralIsLiteralMode(t *testing.T) {
	literalMode := rewriterSet{}
	setting := rewriterSet{}
	same, kept, literal := 0, 0, 0
	for _, file := range goldenFiles(t) {
		for _, gc := range readGolden(t, file) {
			s := gc.Session.session()
			if s.Extended || !s.HasTenant || gc.Policy == "setting" { // "setting" is not literal mode
				continue
			}
			rl := literalMode.get(gc.Policy)
			rs := setting.get(gc.Policy, WithTenantSetting())
			for _, tenant := range []string{s.Tenant, "8"} {
				base := withTenant(s, tenant)
				lit := base
				lit.TenantLiteral = true
				want := rl.Decide(gc.SQL, base)
				plain := rs.Decide(gc.SQL, base)
				for round := 0; round < 2; round++ { // fresh, then a cache hit
					got := rs.Decide(gc.SQL, lit)
					if len(got.Statements) != len(want.Statements) {
						t.Fatalf("%s: %d statements, literal mode %d", gc.Comment, len(got.Statements), len(want.Statements))
					}
					for i := range got.Statements {
						g, w, p := got.Statements[i], want.Statements[i], plain.Statements[i]
						if g.Verdict != p.Verdict || g.Reason != p.Reason {
							t.Errorf("%s [%d]: TenantLiteral changed the decision: %s/%s, without %s/%s", gc.Comment, i, g.Verdict, g.Reason, p.Verdict, p.Reason)
						}
						switch {
						case g.SQL == w.SQL:
							same++
							if g.SQL != p.SQL {
								literal++
							}
						case g.SQL == p.SQL && strings.Contains(g.SQL, "current_setting("):
							kept++
						default:
							t.Errorf("%s [%d] tenant %s:\n got          %s\n literal mode %s\n setting      %s", gc.Comment, i, tenant, g.SQL, w.SQL, p.SQL)
						}
					}
				}
			}
		}
	}
	if literal == 0 {
		t.Fatal("no statement was rendered with a literal tenant: the test proves nothing")
	}
	t.Logf("%d statements rendered as in literal mode (%d of them with a literal tenant where the setting expression was), %d kept the setting expression", same, literal, kept)
}

// TestTenantLiteralOnlyForStatementsThatRunNow: a pinned session's literal
// tenant goes only into statements that run once, now, with no tenant change
// before them in the string. A cursor (run at FETCH), a materialized view
// (stored, refreshed by any session), SQL PREPARE (run at EXECUTE), and
// statements after SET, SET LOCAL, RESET, set_config or DISCARD keep the
// expression, read when they run. The same holds for a Parse message
// (Session.Extended).
func TestTenantLiteralOnlyForStatementsThatRunNow(t *testing.T) {
	rs := New(testPolicy("default"), testCatalog(), WithTenantSetting())
	const lit = "clinic_id = 7"
	base := Session{Tenant: "7", HasTenant: true, StartupTenant: "7", HasStartupTenant: true, TenantLiteral: true}
	admin := base
	admin.User = "admin"
	reporter := base
	reporter.User = "reporter"
	ext := base // a Parse message (the proxy prepares it again after a tenant switch)
	ext.Extended = true
	cases := []struct {
		name    string
		sql     string
		s       Session
		literal []bool // per statement: the literal, or the expression
	}{
		{"select", "SELECT full_name FROM patients WHERE id = 1 LIMIT 1", base, []bool{true}},
		{"update", "UPDATE patients SET full_name = 'x' WHERE id = 1", base, []bool{true}},
		{"explain", "EXPLAIN SELECT full_name FROM patients WHERE id = 1 LIMIT 1", base, []bool{true}},
		{"cursor", "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT full_name FROM patients LIMIT 5", base, []bool{false, false}},
		{"prepare", "PREPARE p AS SELECT full_name FROM patients WHERE id = $1 LIMIT 1", base, []bool{false}},
		{"after set", "SET app.clinic_id = '7'; SELECT full_name FROM patients WHERE id = 1 LIMIT 1", base, []bool{false, false}},
		{"after set local", "BEGIN; SET LOCAL app.clinic_id = '7'; SELECT full_name FROM patients WHERE id = 1 LIMIT 1", base, []bool{false, false, false}},
		{"after reset", "RESET app.clinic_id; SELECT full_name FROM patients WHERE id = 1 LIMIT 1", base, []bool{false, false}},
		{"after set_config", "SELECT set_config('app.clinic_id', '7', false); SELECT full_name FROM patients WHERE id = 1 LIMIT 1", reporter, []bool{false, false}},
		{"after discard", "DISCARD ALL; SELECT full_name FROM patients WHERE id = 1 LIMIT 1", base, []bool{false, false}},
		{"materialized view", "CREATE MATERIALIZED VIEW mv AS SELECT full_name FROM patients WITH NO DATA", admin, []bool{false}},
		{"explain materialized view", "EXPLAIN ANALYZE CREATE MATERIALIZED VIEW mv AS SELECT full_name FROM patients", admin, []bool{false}},
		{"extended select", "SELECT full_name FROM patients WHERE id = $1 LIMIT 1", ext, []bool{true}},
		{"extended update", "UPDATE patients SET full_name = $2 WHERE id = $1", ext, []bool{true}},
		{"extended join", "SELECT p.full_name FROM patients p JOIN invoices i ON i.patient_id = p.id WHERE p.id = $1 LIMIT 5", ext, []bool{true}},
		{"extended cursor", "DECLARE c CURSOR FOR SELECT full_name FROM patients LIMIT 5", ext, []bool{false}},
		{"extended prepare", "PREPARE p AS SELECT full_name FROM patients WHERE id = $1 LIMIT 1", ext, []bool{false}},
	}
	for _, c := range cases {
		for round := 0; round < 2; round++ { // fresh, then a cache hit
			d := rs.Decide(c.sql, c.s)
			if len(d.Statements) != len(c.literal) {
				t.Fatalf("%s: %d statements, want %d", c.name, len(d.Statements), len(c.literal))
			}
			for i, want := range c.literal {
				st := d.Statements[i]
				if st.Verdict == VerdictRejected {
					t.Fatalf("%s [%d]: rejected (%s): the case proves nothing", c.name, i, st.Reason)
				}
				if !strings.Contains(st.SQL, "patients") {
					continue // no tenant table in this statement (BEGIN, SET, ...)
				}
				if got := strings.Contains(st.SQL, lit); got != want {
					t.Errorf("%s [%d] round %d: literal %v, want %v: %s", c.name, i, round, got, want, st.SQL)
				}
				if !want && !strings.Contains(st.SQL, "current_setting(") {
					t.Errorf("%s [%d]: neither the literal nor the expression: %s", c.name, i, st.SQL)
				}
			}
		}
	}
}
