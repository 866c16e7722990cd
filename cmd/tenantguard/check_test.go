package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
	"github.com/tenantguard/tenantguard/rewriter"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/check")

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const (
	clinicPolicy   = "../../testdata/policy/clinic.yaml"
	discoverPolicy = "testdata/check/discover.yaml"
)

// checkRun is the outcome of one command line.
type checkRun struct {
	code           int
	stdout, stderr string
}

func runCheckCmd(t *testing.T, stdin string, args ...string) checkRun {
	t.Helper()
	var out, errb bytes.Buffer
	code := runWith(append([]string{"check"}, args...), strings.NewReader(stdin), &out, &errb)
	return checkRun{code: code, stdout: out.String(), stderr: errb.String()}
}

// golden compares the run with testdata/check/NAME.golden (or rewrites it
// with -update). The file holds the exit status, stdout and stderr.
func (r checkRun) golden(t *testing.T, name string) {
	t.Helper()
	got := fmt.Sprintf("exit %d\n=== stdout\n%s=== stderr\n%s", r.code, r.stdout, r.stderr)
	path := filepath.Join("testdata", "check", name+".golden")
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "missing golden file; run go test ./cmd/tenantguard/ -run TestCheck -update")
	assert.Equal(t, string(want), got, "golden %s differs; rerun with -update if the change is intended", path)
}

func TestCheckGolden(t *testing.T) {
	cases := []struct {
		name  string
		stdin string
		args  []string
		code  int
	}{
		{name: "allowed", code: 0, args: []string{"--policy", clinicPolicy, "--tenant", "7",
			"SELECT 1", "SELECT now()"}},
		{name: "rewritten", code: 0, args: []string{"--policy", clinicPolicy, "--tenant", "7",
			"SELECT p.name FROM patients p JOIN invoices i ON i.patient_id = p.id LIMIT 20"}},
		{name: "rejected", code: 1, args: []string{"--policy", clinicPolicy, "--tenant", "7",
			"SELECT * FROM patients LIMIT 5", "SELECT * FROM patients", "UPDATE invoices SET clinic_id = 9 WHERE id = 1"}},
		{name: "multi_set", code: 0, args: []string{"--policy", clinicPolicy,
			"SET app.clinic_id = 8; SELECT count(*) FROM invoices",
			"SELECT * FROM patients WHERE id = 1 LIMIT 1"}},
		{name: "no_tenant", code: 1, args: []string{"--policy", clinicPolicy, "SELECT * FROM patients LIMIT 1"}},
		{name: "role_bypass", code: 0, args: []string{"--policy", clinicPolicy, "--role", "migrator",
			"DELETE FROM patients", "DROP TABLE invoices"}},
		{name: "role_ordinary", code: 1, args: []string{"--policy", clinicPolicy, "--tenant", "7", "--role", "app",
			"DROP TABLE invoices"}},
		{name: "catalog_none", code: 0, args: []string{"--policy", discoverPolicy, "--tenant", "7",
			"SELECT * FROM visits LIMIT 5"}},
		{name: "catalog_json", code: 0, args: []string{"--policy", discoverPolicy, "--tenant", "7",
			"--catalog", "testdata/check/catalog.json",
			"SELECT * FROM visits LIMIT 5", "SELECT * FROM countries", "SELECT name FROM patients WHERE id = 3"}},
		{name: "catalog_yaml", code: 0, args: []string{"--policy", discoverPolicy, "--tenant", "7",
			"--catalog", "testdata/check/catalog.yaml",
			"SELECT * FROM visits LIMIT 5", "SELECT * FROM countries", "SELECT name FROM patients WHERE id = 3"}},
		{name: "stdin", code: 1, stdin: "SET app.clinic_id = 3;\nSELECT id, name\n  FROM patients\n  LIMIT 10;\nSELECT * FROM invoices;\n",
			args: []string{"--policy", clinicPolicy}},
		{name: "extended", code: 0, args: []string{"--policy", clinicPolicy, "--tenant", "7", "--extended",
			"SELECT * FROM patients WHERE name = $1 LIMIT $2"}},
		{name: "extended_multi", code: 1, args: []string{"--policy", clinicPolicy, "--tenant", "7", "--extended",
			"SELECT 1; SELECT 2"}},
		{name: "audit_mode", code: 1, args: []string{"--policy", "testdata/check/audit.yaml", "--tenant", "7",
			"SELECT * FROM patients"}},
		{name: "parse_error", code: 1, args: []string{"--policy", clinicPolicy, "--tenant", "7", "SELEC * FROM patients"}},
		{name: "json", code: 1, args: []string{"--policy", clinicPolicy, "--tenant", "7", "--format", "json",
			"SET app.clinic_id = 8; SELECT * FROM patients LIMIT 3", "SELECT * FROM invoices"}},
		{name: "expect_pass", code: 0, args: []string{"--policy", clinicPolicy, "--tenant", "7",
			"--expect", "testdata/check/expect_pass.yaml"}},
		{name: "expect_pass_json", code: 0, args: []string{"--policy", clinicPolicy, "--tenant", "7",
			"--expect", "testdata/check/expect_pass.json"}},
		{name: "expect_fail", code: 1, args: []string{"--policy", clinicPolicy, "--tenant", "7",
			"--expect", "testdata/check/expect_fail.yaml"}},
		{name: "expect_fail_format_json", code: 1, args: []string{"--policy", clinicPolicy, "--tenant", "7",
			"--format", "json", "--expect", "testdata/check/expect_fail.yaml"}},
		{name: "expect_bad", code: 2, args: []string{"--policy", clinicPolicy,
			"--expect", "testdata/check/expect_bad.yaml"}},
		{name: "bad_policy", code: 2, args: []string{"--policy", "testdata/check/bad_policy.yaml", "SELECT 1"}},
		{name: "missing_policy", code: 2, args: []string{"SELECT 1"}},
		{name: "unreadable_policy", code: 2, args: []string{"--policy", "testdata/check/nonexistent.yaml", "SELECT 1"}},
		{name: "bad_format", code: 2, args: []string{"--policy", clinicPolicy, "--format", "xml", "SELECT 1"}},
		{name: "bad_flag", code: 2, args: []string{"--policy", clinicPolicy, "--tenatn", "7", "SELECT 1"}},
		{name: "bad_catalog", code: 2, args: []string{"--policy", clinicPolicy, "--catalog", "testdata/check/expect_bad.yaml", "SELECT 1"}},
		{name: "empty_input", code: 2, args: []string{"--policy", clinicPolicy, "  "}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runCheckCmd(t, c.stdin, c.args...)
			assert.Equal(t, c.code, r.code, "exit status; stderr: %s", r.stderr)
			r.golden(t, "check_"+c.name)
		})
	}
}

func TestCheckBadPolicyNamesFileLineKey(t *testing.T) {
	r := runCheckCmd(t, "", "--policy", "testdata/check/bad_policy.yaml", "SELECT 1")
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, "testdata/check/bad_policy.yaml:6: limits.unbounded")
	assert.Empty(t, r.stdout)
	assert.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line: %q", r.stderr)
}

func TestCheckBadTenantDoesNotEcho(t *testing.T) {
	for _, v := range []string{"x7; DROP TABLE patients", "99999999999", ""} {
		r := runCheckCmd(t, "", "--policy", clinicPolicy, "--tenant", v, "SELECT 1")
		assert.Equal(t, exitUsage, r.code, "tenant %q", v)
		assert.Contains(t, r.stderr, "--tenant")
		if v != "" {
			assert.NotContains(t, r.stderr, v)
		}
		assert.Empty(t, r.stdout)
	}
	// The tenant of an expectations case is validated the same way.
	dir := t.TempDir()
	path := filepath.Join(dir, "cases.yaml")
	require.NoError(t, os.WriteFile(path, []byte("- sql: SELECT 1\n  tenant: secret-clinic\n  decision: allowed\n"), 0o644))
	r := runCheckCmd(t, "", "--policy", clinicPolicy, "--expect", path)
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, path+":1: tenant")
	assert.NotContains(t, r.stderr, "secret-clinic")
}

func TestCheckJSONShape(t *testing.T) {
	r := runCheckCmd(t, "", "--policy", clinicPolicy, "--tenant", "7", "--format", "json",
		"SET app.clinic_id = 8; SELECT * FROM patients LIMIT 3", "SELECT * FROM invoices")
	require.Equal(t, exitRejected, r.code, r.stderr)
	var doc struct {
		Statements []struct {
			Input     string            `json:"input"`
			Statement string            `json:"statement"`
			Decision  rewriter.Decision `json:"decision"`
		} `json:"statements"`
		Allowed  int `json:"allowed"`
		Rejected int `json:"rejected"`
	}
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&doc))
	require.Len(t, doc.Statements, 3)
	assert.Equal(t, 2, doc.Allowed)
	assert.Equal(t, 1, doc.Rejected)
	assert.Equal(t, "SET app.clinic_id = 8; SELECT * FROM patients LIMIT 3", doc.Statements[1].Input)
	assert.Equal(t, "SELECT * FROM patients LIMIT 3", doc.Statements[1].Statement)
	assert.Equal(t, rewriter.VerdictRewritten, doc.Statements[1].Decision.Verdict)
	assert.Contains(t, doc.Statements[1].Decision.SQL, "clinic_id = 8")
	assert.Equal(t, rewriter.VerdictRejected, doc.Statements[2].Decision.Verdict)
	require.NotNil(t, doc.Statements[2].Decision.Error)
	assert.Equal(t, "54000", doc.Statements[2].Decision.Error.SQLState)
}

// lastSQL decides inputs in one session and returns the SQL sent for the
// last statement.
func lastSQL(t *testing.T, inputs ...string) string {
	t.Helper()
	args := append([]string{"--policy", clinicPolicy, "--tenant", "7", "--format", "json"}, inputs...)
	r := runCheckCmd(t, "", args...)
	var doc checkReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &doc), "stdout %q stderr %q", r.stdout, r.stderr)
	require.NotEmpty(t, doc.Statements)
	return doc.Statements[len(doc.Statements)-1].Decision.SQL
}

func TestCheckTenantCarriesAcrossInputs(t *testing.T) {
	const q = "SELECT * FROM patients LIMIT 1"
	for _, c := range []struct {
		name   string
		inputs []string
		tenant string
	}{
		{"startup", []string{q}, "7"},
		{"set", []string{"SET app.clinic_id = 8", q}, "8"},
		{"set_config", []string{"SELECT set_config('app.clinic_id', '8', false)", q}, "8"},
		{"reset", []string{"SET app.clinic_id = 8", "RESET app.clinic_id", q}, "7"},
		{"discard_all", []string{"SET app.clinic_id = 8", "DISCARD ALL", q}, "7"},
		{"set_local_in_tx", []string{"BEGIN", "SET LOCAL app.clinic_id = 9", q}, "9"},
		{"set_local_ends_with_commit", []string{"BEGIN", "SET LOCAL app.clinic_id = 9", "COMMIT", q}, "7"},
		{"set_local_outside_tx", []string{"SET LOCAL app.clinic_id = 9", q}, "7"},
		{"set_committed", []string{"BEGIN", "SET app.clinic_id = 9", "COMMIT", q}, "9"},
		{"set_rolled_back", []string{"BEGIN", "SET app.clinic_id = 9", "ROLLBACK", q}, "7"},
		{"failed_tx_commit_rolls_back", []string{"BEGIN", "SET app.clinic_id = 9", "SELECT * FROM invoices", "COMMIT", q}, "7"},
		{"rejected_undoes_implicit_tx", []string{"SET app.clinic_id = 9; SELECT * FROM invoices", q}, "7"},
	} {
		t.Run(c.name, func(t *testing.T) {
			assert.Equal(t, "SELECT * FROM patients WHERE patients.clinic_id = "+c.tenant+" LIMIT 1", lastSQL(t, c.inputs...))
		})
	}
}

func TestCheckExclusiveFlags(t *testing.T) {
	r := runCheckCmd(t, "", "--policy", clinicPolicy, "--catalog", "testdata/check/catalog.json", "--upstream", "postgres://x@127.0.0.1:1/db", "SELECT 1")
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, "exclusive")
	r = runCheckCmd(t, "", "--policy", clinicPolicy, "--expect", "testdata/check/expect_pass.yaml", "SELECT 1")
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, "--expect")
}

func TestCheckCatalogFileErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown_key.json": `{"relations": {"public.t": {"kind": "table", "colums": ["a"]}}}`,
		"bad_key.yaml":     "relations:\n  t:\n    kind: table\n",
		"bad_kind.yaml":    "relations:\n  public.t:\n    kind: index\n",
		"mismatch.yaml":    "relations:\n  public.t:\n    name: u\n",
		"two_docs.yaml":    "relations: {}\n---\nrelations: {}\n",
		"not_json.json":    "relations: {}\n",
		"empty.yaml":       "",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			require.NoError(t, os.WriteFile(path, []byte(body), 0o644))
			r := runCheckCmd(t, "", "--policy", clinicPolicy, "--catalog", path, "SELECT 1")
			assert.Equal(t, exitUsage, r.code)
			assert.Contains(t, r.stderr, "check: catalog "+path)
			assert.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line: %q", r.stderr)
			assert.Empty(t, r.stdout)
		})
	}
}

func TestCheckUpstream(t *testing.T) {
	c := pgtest.Shared(t)
	ctx := context.Background()
	db, err := c.CreateDatabase(ctx, "check_upstream")
	require.NoError(t, err)
	require.NoError(t, c.Exec(ctx, db, `
		CREATE TABLE patients (id int PRIMARY KEY, clinic_id int NOT NULL, name text);
		CREATE TABLE visits (id int PRIMARY KEY, clinic_id int NOT NULL, patient_id int);
		CREATE TABLE countries (code text PRIMARY KEY, name text);`))

	r := runCheckCmd(t, "", "--policy", discoverPolicy, "--tenant", "7", "--upstream", c.URL(pgtest.SuperUser, "", db),
		"SELECT * FROM visits WHERE id = 4", "SELECT * FROM countries")
	assert.Equal(t, exitOK, r.code, r.stderr)
	// visits is discovered from the live catalog, and its primary key bounds the result.
	assert.Contains(t, r.stdout, "-- [1] rewritten (scoped)\n--     kind: select; relations: visits\n")
	assert.Contains(t, r.stdout, "SELECT * FROM visits WHERE visits.clinic_id = 7 AND id = 4;\n")
	assert.Contains(t, r.stdout, "-- [2] allowed (no_tenant_relation)")

	// Without the catalog visits is not known to be a tenant relation.
	r = runCheckCmd(t, "", "--policy", discoverPolicy, "--tenant", "7", "SELECT * FROM visits WHERE id = 4")
	assert.Contains(t, r.stdout, "-- [1] allowed (no_tenant_relation)")
}

func TestCheckUpstreamErrorsHidePassword(t *testing.T) {
	c := pgtest.Shared(t)
	port, err := pgtest.FreePort()
	require.NoError(t, err)
	const secret = "s3cr3t-Pa55word"
	for name, u := range map[string]string{
		"closed port":    fmt.Sprintf("postgres://scram_user:%s@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=5", secret, port),
		"wrong password": c.URL(pgtest.ScramUser, secret, "postgres"),
		"bad url":        "postgres://scram_user:" + secret + "@127.0.0.1:notaport/db",
		"keyword form":   "host=127.0.0.1 port=" + fmt.Sprint(port) + " user=scram_user password=" + secret + " sslmode=disable",
	} {
		t.Run(name, func(t *testing.T) {
			r := runCheckCmd(t, "", "--policy", clinicPolicy, "--upstream", u, "SELECT 1")
			assert.Equal(t, exitUsage, r.code)
			assert.Contains(t, r.stderr, "check: --upstream")
			assert.NotContains(t, r.stderr, secret)
			assert.Empty(t, r.stdout)
		})
	}
}

// The help text documents the formats and the expectations file.
func TestCheckHelp(t *testing.T) {
	var out bytes.Buffer
	code := runWith([]string{"check", "--help"}, strings.NewReader(""), &out, &out)
	assert.Equal(t, exitOK, code)
	for _, s := range []string{"--format", "--expect", "--catalog", "--upstream", "--extended", `"allowed": A, "rejected": R`, "sql_out"} {
		assert.Contains(t, out.String(), s)
	}
}

func TestCheckTenantFromParameterIsUnknown(t *testing.T) {
	r := runCheckCmd(t, "", "--policy", clinicPolicy, "--tenant", "7", "--extended",
		"SELECT set_config('app.clinic_id', $1, false)", "SELECT * FROM patients LIMIT 1")
	assert.Equal(t, exitRejected, r.code, r.stderr)
	assert.Contains(t, r.stdout, "to parameter $1 (checked at Bind; unknown here, so later inputs have no tenant)")
	assert.Contains(t, r.stdout, "-- [2] rejected (no_tenant)")
}

// FuzzCheckInputs: no input makes check panic, and every non-empty input
// gets at least one decision in both output formats.
func FuzzCheckInputs(f *testing.F) {
	for _, s := range []string{
		"SELECT * FROM patients LIMIT 5",
		"SET app.clinic_id = 8; SELECT count(*) FROM invoices",
		"BEGIN; SET LOCAL app.clinic_id = 9; SELECT * FROM patients LIMIT 1; ROLLBACK",
		"SELECT set_config('app.clinic_id', '3', true)",
		"RESET ALL; DISCARD ALL",
		"SELEC",
		"COMMIT AND CHAIN",
	} {
		f.Add(s, "SELECT * FROM patients WHERE id = 1", false)
	}
	pol, err := policyForFuzz()
	if err != nil {
		f.Fatal(err)
	}
	rw := rewriter.New(pol, nil)
	f.Fuzz(func(t *testing.T, a, b string, extended bool) {
		if strings.TrimSpace(a) == "" || strings.TrimSpace(b) == "" {
			return
		}
		base := rewriter.Session{Tenant: "7", HasTenant: true, StartupTenant: "7", HasStartupTenant: true, Extended: extended}
		rep, err := decideInputs(rw, []string{a, b}, base)
		if err != nil {
			return // an input with no statement (only comments): exit 2
		}
		if len(rep.Statements) < 2 || rep.Allowed+rep.Rejected != len(rep.Statements) {
			t.Fatalf("statements %d, allowed %d, rejected %d", len(rep.Statements), rep.Allowed, rep.Rejected)
		}
		var out bytes.Buffer
		if err := rep.write(&out, "text"); err != nil || out.Len() == 0 {
			t.Fatalf("text: %v", err)
		}
		out.Reset()
		if err := rep.write(&out, "json"); err != nil || !json.Valid(out.Bytes()) {
			t.Fatalf("json: %v", err)
		}
	})
}

// FuzzCatalogFile: a catalog file never panics the decoder or the checks.
func FuzzCatalogFile(f *testing.F) {
	for _, p := range []string{"testdata/check/catalog.json", "testdata/check/catalog.yaml"} {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, filepath.Ext(p))
	}
	f.Add([]byte("relations:\n  a.b: ~\n"), ".yaml")
	f.Fuzz(func(t *testing.T, data []byte, ext string) {
		var cat rewriter.Catalog
		if decodeStrict(data, "catalog"+ext, &cat) != nil {
			return
		}
		if completeCatalog(&cat) != nil {
			return
		}
		for k, r := range cat.Relations {
			if r.Schema+"."+r.Name != k || r.Kind == "" {
				t.Fatalf("relation %q completed to %s.%s kind %q", k, r.Schema, r.Name, r.Kind)
			}
		}
	})
}

func policyForFuzz() (*policy.Policy, error) { return policy.Load(clinicPolicy) }
