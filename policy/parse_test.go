package policy

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// update rewrites the "# want:" lines of testdata/policy/invalid/*.yaml from
// the current error messages: go test ./policy -run TestParseInvalid -update
var update = flag.Bool("update", false, "rewrite the # want: lines of invalid policy files")

const testdataDir = "../testdata/policy"

// parseFile parses a file under testdata/policy, naming it as the repository
// root sees it so that pinned messages read like a user's.
func parseFile(t *testing.T, rel string) (*Policy, error) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testdataDir, rel))
	require.NoError(t, err)
	return Parse(data, filepath.ToSlash(filepath.Join("testdata/policy", rel)))
}

func TestParseValid(t *testing.T) {
	cases := []struct {
		file string
		want Policy
	}{
		{
			file: "clinic.yaml",
			want: Policy{
				Version: 1, Mode: ModeEnforce, Strategy: StrategyInject,
				Tenant: Tenant{Column: "clinic_id", Type: TypeInteger, Setting: "app.clinic_id", Required: true},
				Tables: []Table{
					{Name: "patients", Column: "clinic_id", Strategy: StrategyInject},
					{Name: "invoices", Column: "clinic_id", Strategy: StrategyInject},
					{Name: "soap_notes", Column: "clinic_id", Strategy: StrategyInject},
					{Name: "orders", Column: "clinic_id", Strategy: StrategyInject},
					{Name: "appointments", Column: "clinic_id", Strategy: StrategyInject},
				},
				Limits:       Limits{MaxRows: 100, Unbounded: UnboundedReject},
				Roles:        map[string]Role{"migrator": {Bypass: true}},
				RedactErrors: true,
			},
		},
		{
			file: "minimal.yaml",
			want: Policy{
				Version: 1, Mode: ModeEnforce, Strategy: StrategyInject,
				Tenant:       Tenant{Column: "clinic_id", Type: TypeInteger, Setting: "app.clinic_id", Required: true},
				Tables:       []Table{{Name: "patients", Column: "clinic_id", Strategy: StrategyInject}},
				Discover:     false,
				Limits:       Limits{MaxRows: 100, Unbounded: UnboundedReject},
				Roles:        map[string]Role{},
				RedactErrors: true,
			},
		},
		{
			file: "full.yaml",
			want: Policy{
				Version: 1, Mode: ModeAudit, Strategy: StrategyVerify,
				Tenant: Tenant{Column: "tenant_id", Type: TypeUUID, Setting: "app.tenant_id", Required: false},
				Tables: []Table{
					{Name: "patients", Column: "tenant_id", Strategy: StrategyVerify},
					{Schema: "billing", Name: "invoices", Column: "tenant_id", Strategy: StrategyVerify},
					{Name: "Mixed Case", Column: "tenant_id", Strategy: StrategyVerify},
					{Schema: "My.Schema", Name: `Odd "T"`, Column: "tenant_id", Strategy: StrategyVerify},
					{Name: "soap_notes", Column: "org_id", Strategy: StrategyInject},
					{Schema: "public", Name: "orders", Column: "tenant_id", Strategy: StrategyVerify},
				},
				Discover: true,
				Limits:   Limits{MaxRows: 500, Unbounded: UnboundedCap},
				Roles: map[string]Role{
					"migrator":  {Bypass: true, AllowDDL: true, AllowTruncate: true, AllowCopyFrom: true, AllowDo: true},
					"reporting": {Functions: []string{"pg_read_file", "admin.run_report", "Export"}},
					"ops-team":  {},
				},
				RedactErrors: false,
			},
		},
		{
			file: "discover_only.yaml",
			want: Policy{
				Version: 1, Mode: ModeEnforce, Strategy: StrategyInject,
				Tenant:       Tenant{Column: "clinic_id", Type: TypeBigint, Setting: "app.clinic_id", Required: true},
				Discover:     true,
				Limits:       Limits{MaxRows: 100, Unbounded: UnboundedReject},
				Roles:        map[string]Role{},
				RedactErrors: true,
			},
		},
		{
			file: "anchors.yaml",
			want: Policy{
				Version: 1, Mode: ModeEnforce, Strategy: StrategyInject,
				Tenant:       Tenant{Column: "clinic_id", Type: TypeInteger, Setting: "app.clinic_id", Required: true},
				Tables:       []Table{{Name: "patients", Column: "clinic_id", Strategy: StrategyInject}},
				Limits:       Limits{MaxRows: 100, Unbounded: UnboundedReject},
				Roles:        map[string]Role{"migrator": {Bypass: true}, "deployer": {Bypass: true}},
				RedactErrors: true,
			},
		},
	}
	files, err := filepath.Glob(filepath.Join(testdataDir, "*.yaml"))
	require.NoError(t, err)
	require.Len(t, files, len(cases), "every valid policy under testdata/policy has a case here")
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			got, err := parseFile(t, tc.file)
			require.NoError(t, err)
			assert.Equal(t, "testdata/policy/"+tc.file, got.Source)
			assert.Len(t, got.Digest, 64)
			got.Source, got.Digest = "", ""
			assert.Equal(t, tc.want, *got)
		})
	}
}

// TestParseInvalid parses every file under testdata/policy/invalid and
// compares the error with the file's trailing "# want:" lines (one per
// problem, in order).
func TestParseInvalid(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testdataDir, "invalid", "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			body, wants := splitWants(string(data))
			_, perr := Parse([]byte(body), "testdata/policy/invalid/"+name)
			require.Error(t, perr)
			var pe *Error
			require.True(t, errors.As(perr, &pe), "error is a *policy.Error: %v", perr)
			got := strings.Split(perr.Error(), "\n")
			if *update {
				var b strings.Builder
				b.WriteString(body)
				for _, g := range got {
					b.WriteString("# want: " + g + "\n")
				}
				require.NoError(t, os.WriteFile(f, []byte(b.String()), 0o644))
				return
			}
			require.NotEmpty(t, wants, "file has no # want: lines (run with -update)")
			assert.Equal(t, wants, got)
			// The file must fail the same way with its want lines: they are
			// comments and cannot change what the YAML says.
			_, full := Parse(data, "testdata/policy/invalid/"+name)
			require.Error(t, full)
			assert.Equal(t, perr.Error(), full.Error())
		})
	}
}

// splitWants removes the trailing "# want: " lines of a test file.
func splitWants(s string) (body string, wants []string) {
	lines := strings.SplitAfter(s, "\n")
	cut := len(lines)
	for cut > 0 && (strings.HasPrefix(lines[cut-1], "# want: ") || lines[cut-1] == "") {
		cut--
	}
	for _, l := range lines[cut:] {
		if l != "" {
			wants = append(wants, strings.TrimSuffix(strings.TrimPrefix(l, "# want: "), "\n"))
		}
	}
	return strings.Join(lines[:cut], ""), wants
}

func TestParseFromMemoryNamesInput(t *testing.T) {
	_, err := Parse([]byte("mode: x\ntables: [a]\n"), "")
	require.Error(t, err)
	assert.Equal(t, `policy: <input>:1: mode: must be enforce or audit, got "x"`, err.Error())
	p, err := Parse([]byte("tables: [a]\n"), "")
	require.NoError(t, err)
	assert.Equal(t, "", p.Source)
}

func TestLoad(t *testing.T) {
	p, err := Load(filepath.Join(testdataDir, "clinic.yaml"))
	require.NoError(t, err)
	assert.Len(t, p.Tables, 5)

	_, err = Load(filepath.Join(t.TempDir(), "missing.yaml"))
	require.Error(t, err)
	assert.True(t, errors.Is(err, os.ErrNotExist))
	assert.Contains(t, err.Error(), "policy: read ")
}

func TestParseIdentifiers(t *testing.T) {
	cases := []struct {
		in   string
		want []string
		err  string
	}{
		{in: "patients", want: []string{"patients"}},
		{in: "Patients", want: []string{"patients"}},
		{in: "clinic.Patients", want: []string{"clinic", "patients"}},
		{in: `"Mixed Case"`, want: []string{"Mixed Case"}},
		{in: `"a""b"`, want: []string{`a"b`}},
		{in: `"s.x"."T"`, want: []string{"s.x", "T"}},
		{in: "_x$1", want: []string{"_x$1"}},
		{in: "Ärzte", want: []string{"Ärzte"}}, // only ASCII folds, as in Postgres
		{in: "1abc", err: "must start with a letter"},
		{in: "a.", err: "ends with a dot"},
		{in: `""`, err: "empty quoted identifier"},
		{in: "a b", err: "unexpected character"},
		{in: "a.b.c", err: "too many dotted parts"},
		{in: `"a` + "\x00" + `"`, err: "NUL"},
		{in: "\xff", err: "UTF-8"},
		{in: `U&"d\0061t"`, err: "unexpected character"},
	}
	for _, tc := range cases {
		got, err := parseName(tc.in, 2)
		if tc.err != "" {
			require.Error(t, err, tc.in)
			assert.Contains(t, err.Error(), tc.err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
}

// FuzzParse: no input makes Parse panic, and Parse either returns a policy
// whose invariants hold or a located error.
func FuzzParse(f *testing.F) {
	for _, pattern := range []string{"*.yaml", "invalid/*.yaml"} {
		files, _ := filepath.Glob(filepath.Join(testdataDir, pattern))
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data, "fuzz.yaml")
		if err != nil {
			if p != nil {
				t.Fatalf("policy and error both returned")
			}
			if !strings.HasPrefix(err.Error(), "policy: fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if p.Version != 1 || p.Limits.MaxRows < 1 || p.Tenant.Column == "" || p.Tenant.Setting == "" {
			t.Fatalf("invalid policy accepted: %+v", p)
		}
		if len(p.Tables) == 0 && !p.Discover {
			t.Fatalf("policy that scopes nothing accepted")
		}
		for _, tb := range p.Tables {
			if tb.Name == "" || tb.Column == "" || (tb.Strategy != StrategyInject && tb.Strategy != StrategyVerify) {
				t.Fatalf("bad table accepted: %+v", tb)
			}
		}
	})
}

// TestReferenceListsEveryKey keeps testdata/policy/REFERENCE.md (pasted
// into the README) in step with the parser: every key the parser knows has
// a row there.
func TestReferenceListsEveryKey(t *testing.T) {
	ref, err := os.ReadFile(filepath.Join(testdataDir, "REFERENCE.md"))
	require.NoError(t, err)
	var keys []string
	for _, k := range strings.Split(rootKeys, ", ") {
		switch k {
		case "tenant":
			for _, s := range []string{"column", "type", "setting", "required"} {
				keys = append(keys, "tenant."+s)
			}
		case "limits":
			keys = append(keys, "limits.max_rows", "limits.unbounded")
		case "tables":
			keys = append(keys, "tables", "tables[i].name", "tables[i].column", "tables[i].strategy")
		case "roles":
			keys = append(keys, "roles")
			for _, s := range []string{"bypass", "ddl", "truncate", "copy_from", "do", "functions"} {
				keys = append(keys, "roles.<user>."+s)
			}
		default:
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		assert.Contains(t, string(ref), "| `"+k+"` |", "REFERENCE.md has no row for %s", k)
	}
}
