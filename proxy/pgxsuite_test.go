package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/audit"
	"github.com/tenantguard/tenantguard/proxy/guard"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

// pgxVersion is the pgx module whose own test suite is run through the proxy.
const pgxVersion = "v5.12.0"

// knownProxyDifferences are pgx tests expected to fail only through the
// proxy, with the reason. Anything else that passes directly and fails
// through the proxy fails TestPgxSuite.
var knownProxyDifferences = map[string]string{
	// PGX_TEST_SCRAM_PLUS_CONN_STRING has channel_binding=require, which
	// cannot work: the proxy strips SCRAM-SHA-256-PLUS because the client's
	// TLS session ends at the proxy.
	"github.com/jackc/pgx/v5/pgconn TestConnectTLS/WithChannelBinding": "SCRAM channel binding cannot cross a TLS-terminating proxy",
}

// knownDifference returns why k (a test, its parent test or its package)
// is expected to differ through the proxy, or "".
func knownDifference(k string) string {
	if why, ok := knownProxyDifferences[k]; ok {
		return why
	}
	for known, why := range knownProxyDifferences {
		if strings.HasPrefix(known, k+"/") || (!strings.Contains(k, " ") && strings.HasPrefix(known, k+" ")) {
			return "contains " + known + ": " + why
		}
	}
	return ""
}

// tempDigits matches the random part of t.TempDir names in subtest names.
var tempDigits = regexp.MustCompile(`[0-9]{6,}`)

// TestPgxSuite runs pgx's own test suite against PostgreSQL directly and
// then through the proxy, and compares the results. It takes minutes, so it
// runs only with TENANTGUARD_PGX_SUITE=1 (see testdata/pgx-suite.sh). The
// comparison is written to $TENANTGUARD_PGX_SUITE_REPORT when set.
// pgxSuitePolicy makes every user of pgx's test suite a bypass role.
const pgxSuitePolicy = `version: 1
tables: [patients]
roles:
  postgres: {bypass: true}
  root: {bypass: true}
  pgx_md5: {bypass: true}
  pgx_pw: {bypass: true}
  pgx_scram: {bypass: true}
  pgx_ssl: {bypass: true}
  pgx_sslcert: {bypass: true}
`

func TestPgxSuite(t *testing.T) {
	if os.Getenv("TENANTGUARD_PGX_SUITE") != "1" {
		t.Skip("set TENANTGUARD_PGX_SUITE=1 to run pgx's test suite through the proxy")
	}
	pgxSrc := filepath.Join(goEnv(t, "GOMODCACHE"), "github.com/jackc/pgx/v5@"+pgxVersion)
	if _, err := os.Stat(pgxSrc); err != nil {
		t.Skipf("pgx %s source not in the module cache: %v", pgxVersion, err)
	}
	c, err := pgtest.Start(pgtest.Options{Settings: map[string]string{"max_connections": "400"}})
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	defer c.Stop()
	setupPgxDatabase(t, c)

	// The enforcement layer is on, with a policy that makes every user of
	// pgx's suite a bypass role: its statements are all decided and audited,
	// and must behave exactly as without tenantguard.
	pol, err := policy.Parse([]byte(pgxSuitePolicy), "pgx-suite.yaml")
	require.NoError(t, err)
	pol.Roles[" tricky, ' } \" \\ test user "] = policy.Role{Bypass: true}
	auditLog, err := audit.New(audit.Options{Stdout: io.Discard})
	require.NoError(t, err)
	// TENANTGUARD_PGX_SUITE_PLAIN=1: plain TCP on both legs for the
	// ordinary connection strings (the relay's raw-socket path; TLS
	// connections are read through crypto/tls).
	plain := os.Getenv("TENANTGUARD_PGX_SUITE_PLAIN") == "1"
	upstream := proxy.UpstreamConfig{Host: "localhost", Port: c.Port, SSLMode: "verify-full", SSLRootCert: c.CAFile}
	if plain {
		upstream = proxy.UpstreamConfig{Host: "localhost", Port: c.Port, SSLMode: "disable"}
		// The test asks the server (pg_stat_ssl) whether its connection is
		// TLS: with a plain upstream leg it is not.
		knownProxyDifferences["github.com/jackc/pgx/v5/pgconn TestConnectTLS/WithoutChannelBinding"] = "plain upstream leg: the server sees no TLS"
	}
	srv, err := proxy.NewServer(proxy.Config{
		Upstream:    upstream,
		TLSCertFile: c.CertFile, TLSKeyFile: c.KeyFile,
		Logger: zap.NewNop(),
		Hooks:  guard.New(guard.Options{Policies: policy.NewHolder(pol), Audit: auditLog}),
	})
	require.NoError(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Serve(ctx, l) }()
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
	}()
	proxyPort := l.Addr().(*net.TCPAddr).Port

	dir := copyPgxSource(t, pgxSrc)
	pkgs := strings.Fields(envOr("TENANTGUARD_PGX_PACKAGES", ". ./pgconn ./pgtype ./pgxpool ./stdlib"))
	start := time.Now()
	direct := runPgxTests(t, dir, pkgs, pgxEnv(c.Port, c.CAFile, plain))
	directTime := time.Since(start)
	start = time.Now()
	proxied := runPgxTests(t, dir, pkgs, pgxEnv(proxyPort, c.CAFile, plain))
	proxyTime := time.Since(start)

	report, regressions := compareSuites(direct, proxied)
	report = fmt.Sprintf("pgx %s suite, packages %v\ndirect: %s in %s\nproxy:  %s in %s\n%s",
		pgxVersion, pkgs, summary(direct), directTime.Round(time.Second), summary(proxied), proxyTime.Round(time.Second), report)
	t.Log("\n" + report)
	if p := os.Getenv("TENANTGUARD_PGX_SUITE_REPORT"); p != "" {
		require.NoError(t, os.WriteFile(p, []byte(report), 0o644))
	}
	for _, r := range regressions {
		t.Errorf("passes directly, fails through the proxy: %s", r)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func goEnv(t *testing.T, name string) string {
	out, err := exec.Command("go", "env", name).Output()
	require.NoError(t, err)
	return strings.TrimSpace(string(out))
}

// setupPgxDatabase does what pgx's testsetup/postgresql_setup.sql and
// pg_hba.conf do, on a pgtest cluster.
func setupPgxDatabase(t *testing.T, c *pgtest.Cluster) {
	ctx := context.Background()
	hba := filepath.Join(c.Dir, "data", "pg_hba.conf")
	old, err := os.ReadFile(hba)
	require.NoError(t, err)
	lines := strings.Join([]string{
		"host all pgx_md5 127.0.0.1/32 md5",
		"host all pgx_scram 127.0.0.1/32 scram-sha-256",
		"host all pgx_pw 127.0.0.1/32 password",
		"hostssl all pgx_ssl 127.0.0.1/32 scram-sha-256",
		"",
	}, "\n")
	require.NoError(t, os.WriteFile(hba, append([]byte(lines), old...), 0o600))
	require.NoError(t, c.Exec(ctx, "postgres", "select pg_reload_conf()"))
	require.NoError(t, c.Exec(ctx, "postgres", "create database pgx_test"))
	setup := `
create extension hstore;
create extension ltree;
create domain uint64 as numeric(20,0);
create user pgx_ssl with superuser password 'secret';
create user pgx_sslcert with superuser password 'secret';
set password_encryption = md5;
create user pgx_md5 with superuser password 'secret';
set password_encryption = 'scram-sha-256';
create user pgx_pw with superuser password 'secret';
create user pgx_scram with superuser password 'secret';
create user root with superuser;
create user " tricky, ' } "" \ test user " superuser password 'secret';
`
	require.NoError(t, c.Exec(ctx, "pgx_test", setup))
}

// copyPgxSource copies the read-only module source to a temp dir and points
// its test dependencies at the versions this module already has in the
// module cache, so the suite builds offline.
func copyPgxSource(t *testing.T, src string) string {
	dir := t.TempDir()
	out, err := exec.Command("cp", "-r", src+"/.", dir).CombinedOutput()
	require.NoError(t, err, string(out))
	out, err = exec.Command("chmod", "-R", "u+w", dir).CombinedOutput()
	require.NoError(t, err, string(out))
	gomod := exec.Command("go", "mod", "edit",
		"-require=github.com/stretchr/testify@v1.12.1", "-require=golang.org/x/sync@v0.23.0", "-require=golang.org/x/text@v0.42.0",
		"-droprequire=github.com/davecgh/go-spew", "-droprequire=github.com/kr/pretty", "-droprequire=github.com/pmezard/go-difflib",
		"-droprequire=gopkg.in/check.v1", "-droprequire=gopkg.in/yaml.v3")
	gomod.Dir = dir
	out, err = gomod.CombinedOutput()
	require.NoError(t, err, string(out))
	tidy := exec.Command("go", "mod", "tidy")
	tidy.Dir = dir
	tidy.Env = append(os.Environ(), "GOPROXY=off", "GOSUMDB=off", "GOFLAGS=-mod=mod")
	out, err = tidy.CombinedOutput()
	require.NoError(t, err, string(out))
	return dir
}

// pgxEnv is pgx's CI test environment (scripts/lib/test_targets.rb) for a
// server on port; client-certificate and Unix-socket tests stay unset, as
// neither can go through a TCP proxy that terminates TLS.
func pgxEnv(port int, caFile string, plain bool) []string {
	tcp := fmt.Sprintf("host=127.0.0.1 port=%d dbname=pgx_test password=secret", port)
	if plain {
		tcp += " sslmode=disable"
	}
	tls := fmt.Sprintf("host=localhost port=%d user=pgx_ssl password=secret sslmode=verify-full sslrootcert=%s dbname=pgx_test", port, caFile)
	return []string{
		"PGX_TEST_DATABASE=" + tcp + " user=pgx_md5",
		"PGX_TEST_TCP_CONN_STRING=" + tcp + " user=pgx_md5",
		"PGX_TEST_MD5_PASSWORD_CONN_STRING=" + tcp + " user=pgx_md5",
		"PGX_TEST_PLAIN_PASSWORD_CONN_STRING=" + tcp + " user=pgx_pw",
		"PGX_TEST_SCRAM_PASSWORD_CONN_STRING=" + tcp + " user=pgx_scram channel_binding=disable",
		"PGX_TEST_SCRAM_PLUS_CONN_STRING=" + tls + " channel_binding=require",
		"PGX_TEST_TLS_CONN_STRING=" + tls + " channel_binding=disable",
	}
}

type testResult struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// runPgxTests runs go test -json and returns the final action of every test
// ("pkg Test/sub" -> pass|fail|skip), and of each package under "pkg".
func runPgxTests(t *testing.T, dir string, pkgs []string, env []string) map[string]string {
	args := []string{"test", "-json", "-count=" + envOr("TENANTGUARD_PGX_COUNT", "1"), "-vet=off", "-p=1", "-timeout=20m"}
	if run := os.Getenv("TENANTGUARD_PGX_RUN"); run != "" {
		args = append(args, "-run", run)
	}
	args = append(args, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(append(filterEnv(os.Environ()), "GOPROXY=off", "GOFLAGS=-mod=mod"), env...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	results := map[string]string{}
	output := map[string][]string{}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var r testResult
		if json.Unmarshal(sc.Bytes(), &r) != nil {
			continue
		}
		key := r.Package
		if r.Test != "" {
			key += " " + tempDigits.ReplaceAllString(r.Test, "N")
		}
		switch r.Action {
		case "output":
			output[key] = append(output[key], r.Output)
		case "pass", "skip":
			// With -count>1 a test passes only if every run passed.
			if results[key] != "fail" {
				results[key] = r.Action
			}
			delete(output, key)
		case "fail":
			results[key] = r.Action
			if r.Test != "" {
				t.Logf("FAIL %s:\n%s", key, strings.Join(output[key], ""))
			}
			delete(output, key)
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		t.Logf("go test exited with %v\n%s", err, stderr.String())
	}
	return results
}

// filterEnv drops PG* variables so that only the test strings pick the server.
func filterEnv(env []string) []string {
	var out []string
	for _, e := range env {
		if strings.HasPrefix(e, "PG") || strings.HasPrefix(e, "TENANTGUARD_") {
			continue
		}
		out = append(out, e)
	}
	return out
}

func summary(r map[string]string) string {
	n := map[string]int{}
	for k, v := range r {
		if strings.Contains(k, " ") {
			n[v]++
		}
	}
	return fmt.Sprintf("%d passed, %d failed, %d skipped", n["pass"], n["fail"], n["skip"])
}

// compareSuites lists every test whose outcome differs, and returns the
// regressions (pass directly, fail or missing through the proxy) that are
// not known differences.
func compareSuites(direct, proxied map[string]string) (string, []string) {
	keys := map[string]bool{}
	for k := range direct {
		keys[k] = true
	}
	for k := range proxied {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	var b strings.Builder
	var regressions []string
	for _, k := range sorted {
		d, p := direct[k], proxied[k]
		if d == p {
			if d == "fail" || d == "skip" {
				fmt.Fprintf(&b, "%s both ways: %s\n", d, k)
			}
			continue
		}
		note := ""
		if why := knownDifference(k); why != "" {
			note = " (known: " + why + ")"
		} else if d == "pass" && p != "skip" {
			regressions = append(regressions, fmt.Sprintf("%s (direct %s, proxy %s)", k, d, orNone(p)))
		}
		fmt.Fprintf(&b, "differs: %s: direct %s, proxy %s%s\n", k, orNone(d), orNone(p), note)
	}
	return b.String(), regressions
}

func orNone(s string) string {
	if s == "" {
		return "absent"
	}
	return s
}
