package rewriter

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
)

var update = flag.Bool("update", false, "rewrite the expected decisions of testdata/rewriter/*.json")

// goldenDir holds the golden files: testdata/rewriter at the module root.
const goldenDir = "../testdata/rewriter"

type goldenSession struct {
	Tenant        *string `json:"tenant,omitempty"`
	StartupTenant *string `json:"startup_tenant,omitempty"`
	User          string  `json:"user,omitempty"`
	Extended      bool    `json:"extended,omitempty"`
}

func (g goldenSession) session() Session {
	s := Session{User: g.User, Extended: g.Extended}
	if g.Tenant != nil {
		s.Tenant, s.HasTenant = *g.Tenant, true
	}
	if g.StartupTenant != nil {
		s.StartupTenant, s.HasStartupTenant = *g.StartupTenant, true
	}
	return s
}

type goldenCase struct {
	Comment  string        `json:"comment"`
	SQL      string        `json:"sql"`
	Session  goldenSession `json:"session"`
	Policy   string        `json:"policy,omitempty"`
	Expected *Result       `json:"expected,omitempty"`
}

func readGolden(t testing.TB, path string) []goldenCase {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var cases []goldenCase
	if err := dec.Decode(&cases); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cases
}

func goldenFiles(t testing.TB) []string {
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files in %s: %v", goldenDir, err)
	}
	sort.Strings(files)
	return files
}

// rewriters are shared per policy variant so that the golden run also goes
// through the cache.
type rewriterSet map[string]*Rewriter

func (rs rewriterSet) get(variant string, opts ...Option) *Rewriter {
	if r, ok := rs[variant]; ok {
		return r
	}
	if variant == "setting" {
		opts = append(opts, WithTenantSetting())
	}
	r := New(testPolicy(variant), testCatalog(), opts...)
	rs[variant] = r
	return r
}

func TestGolden(t *testing.T) {
	rs := rewriterSet{}
	fresh := rewriterSet{}
	for _, file := range goldenFiles(t) {
		cases := readGolden(t, file)
		t.Run(filepath.Base(file), func(t *testing.T) {
			seen := map[string]bool{}
			for i := range cases {
				gc := &cases[i]
				if seen[gc.Comment] {
					t.Errorf("duplicate comment %q", gc.Comment)
				}
				seen[gc.Comment] = true
				t.Run(gc.Comment, func(t *testing.T) {
					r := rs.get(gc.Policy)
					s := gc.Session.session()
					got := r.Decide(gc.SQL, s)
					if *update {
						gc.Expected = got
					} else if gc.Expected == nil {
						t.Fatalf("no expected decision; run with -update")
					} else {
						assertSameResult(t, gc.Expected, got)
					}
					checkInvariants(t, r, gc.SQL, s, got)
					// a second decision is a cache hit and must be identical
					again := r.Decide(gc.SQL, s)
					if !again.CacheHit {
						t.Errorf("second decision was not a cache hit")
					}
					assertSameResult(t, got, again)
					// and equal to a fresh decision without cache
					nc := fresh.get(gc.Policy, WithCacheSize(0))
					assertSameResult(t, nc.Decide(gc.SQL, s), got)
				})
			}
		})
		if *update {
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetEscapeHTML(false)
			enc.SetIndent("", "  ")
			if err := enc.Encode(cases); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func assertSameResult(t *testing.T, want, got *Result) {
	t.Helper()
	wb, _ := json.MarshalIndent(want, "", "  ")
	gb, _ := json.MarshalIndent(got, "", "  ")
	if !bytes.Equal(wb, gb) {
		t.Errorf("decision differs\nwant: %s\n got: %s", wb, gb)
	}
}

// TestStrategyCorpora: the inject and verify golden files decide the same
// statements.
func TestStrategyCorpora(t *testing.T) {
	inj := readGolden(t, filepath.Join(goldenDir, "scoping_inject.json"))
	ver := readGolden(t, filepath.Join(goldenDir, "scoping_verify.json"))
	if len(inj) != len(ver) {
		t.Fatalf("inject has %d cases, verify %d", len(inj), len(ver))
	}
	for i := range inj {
		if inj[i].SQL != ver[i].SQL || !reflect.DeepEqual(inj[i].Session, ver[i].Session) {
			t.Errorf("case %d differs: %q vs %q", i, inj[i].SQL, ver[i].SQL)
		}
		if ver[i].Policy != "verify" {
			t.Errorf("verify case %q does not use the verify policy", ver[i].Comment)
		}
	}
}

// TestCacheTwoTenants: over the whole corpus, a cached template rendered for
// two tenants in turn gives exactly the fresh decisions.
func TestCacheTwoTenants(t *testing.T) {
	rs := rewriterSet{}
	fresh := rewriterSet{}
	for _, file := range goldenFiles(t) {
		for _, gc := range readGolden(t, file) {
			for _, tenant := range []string{"7", "8", "00000000-0000-0000-0000-000000000007"} {
				s := gc.Session.session()
				if s.HasTenant {
					s.Tenant = tenant
				}
				got := rs.get(gc.Policy).Decide(gc.SQL, s)
				want := fresh.get(gc.Policy, WithCacheSize(0)).Decide(gc.SQL, s)
				assertSameResult(t, want, got)
			}
		}
	}
}

// checkInvariants holds for every decision of the corpus.
func checkInvariants(t *testing.T, r *Rewriter, sql string, s Session, res *Result) {
	t.Helper()
	lits := literalsOf(sql)
	for i, d := range res.Statements {
		if d.Verdict == VerdictRejected {
			if d.Error == nil {
				t.Errorf("statement %d rejected without error", i)
				continue
			}
			switch d.Error.SQLState {
			case "42501", "54000", "0A000", "42601":
			default:
				t.Errorf("statement %d: unexpected SQLSTATE %s", i, d.Error.SQLState)
			}
			if !strings.HasPrefix(d.Error.Message, "tenantguard: ") || d.Error.Hint == "" || d.Reason == "" {
				t.Errorf("statement %d: bad error %+v", i, d.Error)
			}
			for _, l := range lits {
				if strings.Contains(d.Error.Message, l) || strings.Contains(d.Error.Hint, l) {
					t.Errorf("statement %d: error echoes literal %q: %+v", i, l, d.Error)
				}
			}
			if d.SQL != "" && d.Enforced {
				t.Errorf("statement %d: rejected but has SQL", i)
			}
			continue
		}
		if d.Error != nil {
			t.Errorf("statement %d: %s with an error", i, d.Verdict)
		}
		if strings.Contains(d.Normalized, "'") {
			t.Errorf("statement %d: normalized form holds a string literal: %s", i, d.Normalized)
		}
		if !d.Enforced || d.Verdict == VerdictBypassed || d.SQL == "" {
			continue
		}
		if d.Reason == ReasonRoleAllowed || d.Reason == ReasonNoTenant {
			continue
		}
		tenant := s.Tenant
		if i > 0 {
			// a multi-statement string may have changed the tenant: the
			// checker takes it from the decisions before.
			tenant = tenantAfter(s, res.Statements[:i])
		}
		if problems := checkScoped(r.pol, r.rels, d.SQL, tenant, d); len(problems) > 0 {
			t.Errorf("statement %d not scoped: %v\nSQL: %s", i, problems, d.SQL)
		}
	}
}

func tenantAfter(s Session, ds []Decision) string {
	ts := &tenantState{cur: s, session: s}
	for i := range ds {
		ts.apply(&ds[i], s)
	}
	return ts.cur.Tenant
}

// literalsOf returns the string and number constants of sql (at least two
// characters long, to keep single digits of the fixture out).
func literalsOf(sql string) []string {
	sc, err := pg.Scan(sql)
	if err != nil {
		return nil
	}
	var out []string
	for _, tk := range sc.Tokens {
		switch tk.Token {
		case pg.Token_SCONST, pg.Token_ICONST, pg.Token_FCONST, pg.Token_USCONST, pg.Token_BCONST, pg.Token_XCONST:
			v := strings.Trim(sql[tk.Start:tk.End], "'$")
			if len(v) >= 2 && v != "100" && !settingNames[strings.ToLower(v)] {
				out = append(out, v)
			}
		}
	}
	return out
}

// settingNames may appear in messages: they name settings, not data.
var settingNames = map[string]bool{"app.clinic_id": true, "role": true, "search_path": true}

// TestConcurrentDecide: one Rewriter shared by goroutines deciding the corpus
// for different tenants gives each the decision a fresh Rewriter gives (run
// with -race).
func TestConcurrentDecide(t *testing.T) {
	var cases []goldenCase
	for _, file := range goldenFiles(t) {
		for _, gc := range readGolden(t, file) {
			if gc.Policy == "" {
				cases = append(cases, gc)
			}
		}
	}
	shared := New(testPolicy("default"), testCatalog(), WithCacheSize(64)) // small: evictions too
	fresh := New(testPolicy("default"), testCatalog(), WithCacheSize(0))
	errs := make(chan string, 4)
	done := make(chan struct{})
	for g := 0; g < 4; g++ {
		go func(g int) {
			defer func() { done <- struct{}{} }()
			for i, gc := range cases {
				s := gc.Session.session()
				if s.HasTenant {
					s.Tenant = strconv.Itoa(1 + (i+g)%5)
				}
				got, _ := json.Marshal(shared.Decide(gc.SQL, s))
				want, _ := json.Marshal(fresh.Decide(gc.SQL, s))
				if !bytes.Equal(got, want) {
					select {
					case errs <- gc.Comment:
					default:
					}
					return
				}
			}
		}(g)
	}
	for g := 0; g < 4; g++ {
		<-done
	}
	close(errs)
	for c := range errs {
		t.Errorf("concurrent decision differs: %s", c)
	}
	if n := shared.cache.len(); n > 64 {
		t.Errorf("cache holds %d templates, bound is 64", n)
	}
}

// TestMaxParam: the scanner and the tree agree on the highest parameter of
// every golden statement (the tenant parameter must never reuse a number).
func TestMaxParam(t *testing.T) {
	for _, file := range goldenFiles(t) {
		for _, gc := range readGolden(t, file) {
			tree, err := pg.Parse(gc.SQL)
			if err != nil {
				continue
			}
			for _, raw := range tree.Stmts {
				text := stmtText(gc.SQL, raw)
				if a, b := maxParamOf(text, raw.Stmt), maxParam(raw.Stmt); a != b {
					t.Errorf("%s: scanner says $%d, tree says $%d", gc.Comment, a, b)
				}
			}
		}
	}
}

// TestTemplateHoldsNoTenant: the cached template of every golden statement,
// compiled while a session with an unusual tenant decides it, holds that
// tenant nowhere.
func TestTemplateHoldsNoTenant(t *testing.T) {
	const tenant = "424242"
	rs := rewriterSet{}
	for _, file := range goldenFiles(t) {
		for _, gc := range readGolden(t, file) {
			if gc.Policy == "uuid" || gc.Policy == "text" || strings.Contains(gc.SQL, tenant) {
				continue
			}
			r := rs.get(gc.Policy)
			s := gc.Session.session()
			s.Tenant, s.HasTenant = tenant, true
			r.Decide(gc.SQL, s)
			_, roleKey := r.role(s.User)
			tpl, ok := r.cache.get(cacheKey{sql: gc.SQL, extended: s.Extended, role: roleKey})
			var extra []string
			if !ok && r.literals != nil && !s.Extended {
				// Served by the literal-insensitive cache instead.
				if k, _, lok := scanLiterals(gc.SQL); lok {
					if lt := r.literals.get(append(literalKeyPrefix(nil, roleKey), k...)); lt != nil && lt.qt != nil {
						tpl, ok = lt.qt, true
						extra = append([]string{lt.sql}, lt.text.segments...)
					}
				}
			}
			if !ok {
				t.Fatalf("%s: not cached", gc.Comment)
			}
			for _, p := range extra {
				if strings.Contains(p, tenant) {
					t.Errorf("%s: literal template holds the tenant: %s", gc.Comment, p)
				}
			}
			for _, st := range tpl.stmts {
				b, _ := json.Marshal(st.d)
				parts := append([]string{string(b), st.orig}, st.segments...)
				for _, ch := range st.checks {
					parts = append(parts, ch.value)
				}
				for _, p := range parts {
					if strings.Contains(p, tenant) {
						t.Errorf("%s: template holds the tenant: %s", gc.Comment, p)
					}
				}
			}
		}
	}
}

// TestRedecideAtBind: a statement prepared (extended protocol) under one
// tenant and bound after a switch is decided again, as DependsOnTenant asks.
func TestRedecideAtBind(t *testing.T) {
	r := New(testPolicy("verify"), testCatalog())
	sql := "SELECT * FROM patients p WHERE p.clinic_id = 7 AND p.id = $1"
	parse := r.Decide(sql, Session{Tenant: "7", HasTenant: true, Extended: true}).Statements[0]
	if parse.Verdict != VerdictAllowed || !parse.DependsOnTenant {
		t.Fatalf("at Parse: %+v", parse)
	}
	bind := r.Decide(sql, Session{Tenant: "8", HasTenant: true, Extended: true})
	if !bind.CacheHit || bind.Statements[0].Verdict != VerdictRejected || bind.Statements[0].Reason != ReasonCrossTenant {
		t.Fatalf("at Bind after a switch: %+v", bind.Statements[0])
	}
	inj := New(testPolicy("default"), testCatalog())
	d := inj.Decide("INSERT INTO patients (name, clinic_id) VALUES ($1, 7)", Session{Tenant: "7", HasTenant: true, Extended: true}).Statements[0]
	if d.TenantParam != 2 || strings.Contains(d.SQL, " 7)") {
		t.Fatalf("inject must bind the tenant, not keep the literal: %+v", d)
	}
}
