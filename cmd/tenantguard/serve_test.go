package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

func TestServeFlagsAndConfigErrorsExit2(t *testing.T) {
	for name, args := range map[string][]string{
		"no upstream":    {"serve", "--policy", "x.yaml"},
		"bad flag":       {"serve", "--no-such-flag"},
		"bad log level":  {"serve", "--upstream", "postgres://u@127.0.0.1/db", "--policy", "x.yaml", "--log-level", "loud"},
		"missing policy": {"serve", "--upstream", "postgres://u@127.0.0.1/db", "--policy", filepath.Join(t.TempDir(), "none.yaml")},
	} {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, exitUsage, run(args))
		})
	}
}

// servePolicy is the policy the serve test starts with.
const servePolicy = `version: 1
tables: [patients]
limits:
  max_rows: 10
`

// TestServeEndToEnd runs the real binary: readiness, a scoped query through
// pgx, hot reload of a valid and an invalid policy on SIGHUP, the audit
// file from the environment, and a clean drain on SIGTERM.
func TestServeEndToEnd(t *testing.T) {
	c, err := pgtest.Start(pgtest.Options{})
	if errors.Is(err, pgtest.ErrNoBinaries) && os.Getenv("CI") == "" {
		t.Skip(pgtest.InstallHint)
	}
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Stop() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db, err := c.CreateDatabase(ctx, "serve")
	require.NoError(t, err)
	require.NoError(t, c.Exec(ctx, db, `
		CREATE TABLE patients (id int PRIMARY KEY, clinic_id int NOT NULL, name text);
		INSERT INTO patients SELECT i, 1 + i % 3, 'patient ' || i FROM generate_series(1, 30) i;
		GRANT SELECT ON patients TO app_user;`))

	dir := t.TempDir()
	bin := filepath.Join(dir, "tenantguard")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	policyFile := filepath.Join(dir, "policy.yaml")
	require.NoError(t, os.WriteFile(policyFile, []byte(servePolicy), 0o644))
	auditFile := filepath.Join(dir, "audit.log")
	listenPort, err := pgtest.FreePort()
	require.NoError(t, err)
	adminPort, err := pgtest.FreePort()
	require.NoError(t, err)
	listen := "127.0.0.1:" + strconv.Itoa(listenPort)
	adminURL := "http://127.0.0.1:" + strconv.Itoa(adminPort)

	cmd := exec.Command(bin, "serve", "--listen", listen, "--admin", "127.0.0.1:"+strconv.Itoa(adminPort),
		"--policy", policyFile, "--log-format", "json", "--drain-timeout", "5s")
	cmd.Env = append(os.Environ(),
		"TENANTGUARD_UPSTREAM="+c.URL(pgtest.SuperUser, "", db), // flags and environment both configure it
		"TENANTGUARD_AUDIT_FILE="+auditFile)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("tenantguard stderr:\n%s", stderr.String())
		}
	}()

	get := func(path string) (int, string) {
		resp, err := http.Get(adminURL + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	eventually("/readyz", func() bool { code, _ := get("/readyz"); return code == 200 })
	code, _ := get("/healthz")
	require.Equal(t, 200, code)

	conn, err := pgx.Connect(ctx, "postgres://"+pgtest.AppUser+"@"+listen+"/"+db+"?sslmode=disable&app.clinic_id=2")
	require.NoError(t, err)
	defer conn.Close(context.Background())
	count := func() int {
		var n int
		require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM patients").Scan(&n))
		return n
	}
	require.Equal(t, 10, count())

	reloads := func(result string) float64 {
		_, body := get("/metrics")
		parser := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
		require.NoError(t, err)
		for _, m := range mfs["tenantguard_policy_reloads_total"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
		return 0
	}

	// An invalid policy is refused; the old one stays in force.
	require.NoError(t, os.WriteFile(policyFile, []byte("version: 1\ntables: [patients]\nlimits:\n  max_rows: 0\n"), 0o644))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	eventually("a refused reload", func() bool { return reloads("error") >= 1 })
	require.Equal(t, 10, count())
	_, err = conn.Exec(ctx, "SELECT name FROM patients LIMIT 10")
	require.NoError(t, err)

	// A valid one is swapped in for new statements on the same connection.
	require.NoError(t, os.WriteFile(policyFile, []byte(strings.Replace(servePolicy, "max_rows: 10", "max_rows: 5", 1)), 0o644))
	eventually("an accepted reload", func() bool { return reloads("ok") >= 1 })
	_, err = conn.Exec(ctx, "SELECT name FROM patients LIMIT 10")
	var pe *pgconn.PgError
	require.True(t, errors.As(err, &pe), "%v", err)
	require.Equal(t, "54000", pe.Code)

	// SIGTERM drains and exits 0.
	require.NoError(t, conn.Close(ctx))
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("tenantguard did not exit after SIGTERM")
	}

	audit, err := os.ReadFile(auditFile)
	require.NoError(t, err)
	for _, want := range []string{`"event":"connect"`, `"event":"statement"`, `"event":"policy_reload"`, `"result":"error"`, `"event":"catalog_refresh"`, `"event":"disconnect"`} {
		require.Contains(t, string(audit), want)
	}
}
