package proxy_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

// BenchmarkRelay compares a direct connection with one through the proxy:
// a prepared single-row round trip, and streaming a 100k-row result.
//
//	go test ./proxy -run '^$' -bench Relay -benchmem
func BenchmarkRelay(b *testing.B) {
	c := pgtest.Shared(b)
	p := startProxy(b, func(cfg *proxy.Config) { cfg.Logger = nil })
	ctx := context.Background()
	targets := []struct{ name, url string }{
		{"direct", c.URL(pgtest.SuperUser, "", "postgres")},
		{"proxy", p.url(pgtest.SuperUser, "", "postgres")},
	}
	for _, tg := range targets {
		conn, err := pgx.Connect(ctx, tg.url)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("roundtrip/"+tg.name, func(b *testing.B) {
			var n int
			for b.Loop() {
				if err := conn.QueryRow(ctx, "select $1::int", 1).Scan(&n); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("stream100k/"+tg.name, func(b *testing.B) {
			for b.Loop() {
				rows, err := conn.Query(ctx, "select g, 'row payload text' from generate_series(1, 100000) g")
				if err != nil {
					b.Fatal(err)
				}
				for rows.Next() {
				}
				if rows.Err() != nil {
					b.Fatal(rows.Err())
				}
			}
		})
		conn.Close(ctx)
	}
}

// TestPgbenchCompare runs pgbench -S side by side directly and through the
// proxy and logs the throughput ratio. It measures, never asserts timing,
// and runs only with TENANTGUARD_PGBENCH_COMPARE=1.
func TestPgbenchCompare(t *testing.T) {
	if os.Getenv("TENANTGUARD_PGBENCH_COMPARE") != "1" {
		t.Skip("set TENANTGUARD_PGBENCH_COMPARE=1 to compare pgbench throughput")
	}
	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		t.Skip("pgbench not installed")
	}
	c := pgtest.Shared(t)
	db := newDB(t, c)
	p := startProxy(t, func(cfg *proxy.Config) { cfg.Logger = nil })
	run := func(port int, args ...string) string {
		cmd := exec.Command(pgbench, append(append([]string{"-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", "postgres"}, args...), db)...)
		cmd.Env = append(os.Environ(), "PGSSLMODE=disable")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench: %v\n%s", err, out)
		}
		return string(out)
	}
	run(c.Port, "-i", "-s", "1", "-q")
	ports := []int{c.Port, p.port}
	names := []string{"direct", "tenantguard"}
	if bouncer := startPgbouncer(t, c); bouncer != 0 {
		ports = append(ports, bouncer)
		names = append(names, "pgbouncer")
	}
	tps := regexp.MustCompile(`tps = ([0-9.]+) \(without initial`)
	for _, mode := range []string{"simple", "prepared"} {
		line := fmt.Sprintf("pgbench -S -c 4 -j 2 -T 10 -M %s:", mode)
		var direct float64
		for i, port := range ports {
			m := tps.FindStringSubmatch(run(port, "-S", "-c", "4", "-j", "2", "-T", "10", "-M", mode))
			if m == nil {
				t.Fatal("no tps in pgbench output")
			}
			v, _ := strconv.ParseFloat(m[1], 64)
			if i == 0 {
				direct = v
			}
			line += fmt.Sprintf(" %s %.0f tps (%.2f)", names[i], v, v/direct)
		}
		t.Log(line)
	}
}

// startPgbouncer starts PgBouncer in session pooling mode in front of c, as
// the postgres OS user, and returns its port, or 0 when it is not installed.
func startPgbouncer(t *testing.T, c *pgtest.Cluster) int {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		return 0
	}
	port, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: its parent is private to root and pgbouncer runs as postgres.
	dir, err := os.MkdirTemp("", "tenantguard-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ini := fmt.Sprintf(`[databases]
* = host=127.0.0.1 port=%d
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s/users.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
logfile = %s/pgbouncer.log
pidfile = %s/pgbouncer.pid
`, c.Port, port, dir, dir, dir)
	for name, body := range map[string]string{"pgbouncer.ini": ini, "users.txt": `"postgres" ""` + "\n"} {
		if err := os.WriteFile(dir+"/"+name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Chmod(dir, 0o777) // pgbouncer writes its log and pid file here
	args := []string{dir + "/pgbouncer.ini"}
	cmd := exec.Command(bin, args...)
	if os.Geteuid() == 0 {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", bin}, args...)...)
	}
	if err := cmd.Start(); err != nil {
		t.Logf("pgbouncer did not start: %v", err)
		return 0
	}
	t.Cleanup(func() {
		// SIGTERM: runuser forwards it to pgbouncer, which exits at once.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if b, err := os.ReadFile(dir + "/pgbouncer.pid"); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	})
	waitFor(t, 10*time.Second, "pgbouncer to listen", func() bool {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	return port
}

// BenchmarkIdleSession reports the proxy's memory per idle session
// (heap + goroutine stacks, measured in-process around 100 idle sessions).
// The client connections live in the same process, so this is an upper bound.
func BenchmarkIdleSession(b *testing.B) {
	p := startProxy(b, func(cfg *proxy.Config) { cfg.Logger = nil })
	const n = 100
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		conns := make([]net.Conn, 0, n)
		for range n {
			nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port))
			if err != nil {
				b.Fatal(err)
			}
			fe := pgproto3.NewFrontend(nc, nc)
			fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
			if err := fe.Flush(); err != nil {
				b.Fatal(err)
			}
			for {
				m, err := fe.Receive()
				if err != nil {
					b.Fatal(err)
				}
				if _, ok := m.(*pgproto3.ReadyForQuery); ok {
					break
				}
			}
			conns = append(conns, nc)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		used := (after.HeapInuse + after.StackInuse) - (before.HeapInuse + before.StackInuse)
		b.ReportMetric(float64(used)/n/1024, "KiB/session")
		for _, c := range conns {
			c.Close()
		}
		waitFor(b, 30*time.Second, "sessions to end", func() bool { return p.srv.ActiveSessions() == 0 })
	}
}
