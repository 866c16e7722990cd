package proxy_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testProxy is a proxy started in-process on a free loopback port.
type testProxy struct {
	srv  *proxy.Server
	host string
	port int
	c    *pgtest.Cluster
}

// startProxy starts a proxy in front of the shared cluster; mod may adjust
// the configuration. The proxy is shut down when the test ends.
// testEventLoops is Config.EventLoops for the tests: the environment's
// TENANTGUARD_TEST_EVENT_LOOPS (make test runs the relay tests again with
// -1, every session on relay goroutines), else automatic.
func testEventLoops(t testing.TB) int {
	v := os.Getenv("TENANTGUARD_TEST_EVENT_LOOPS")
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, "TENANTGUARD_TEST_EVENT_LOOPS")
	return n
}

func startProxy(t testing.TB, mod func(*proxy.Config)) *testProxy {
	t.Helper()
	c := pgtest.Shared(t)
	cfg := proxy.Config{
		Upstream:   proxy.UpstreamConfig{Host: c.Host, Port: c.Port, SSLMode: "disable"},
		Logger:     zaptest.NewLogger(t),
		EventLoops: testEventLoops(t),
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := proxy.NewServer(cfg)
	require.NoError(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, proxy.ErrServerClosed) && !errors.Is(err, context.Canceled) {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return")
		}
	})
	addr := l.Addr().(*net.TCPAddr)
	return &testProxy{srv: srv, host: "127.0.0.1", port: addr.Port, c: c}
}

// url is a connection URL through the proxy.
func (p *testProxy) url(user, password, db string, query ...string) string {
	u := url.URL{Scheme: "postgres", Host: net.JoinHostPort(p.host, strconv.Itoa(p.port)), Path: "/" + db}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	q := url.Values{"sslmode": {"disable"}}
	for i := 0; i+1 < len(query); i += 2 {
		q.Set(query[i], query[i+1])
	}
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

func (p *testProxy) connect(t testing.TB, user, password, db string, query ...string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.url(user, password, db, query...))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newDB(t testing.TB, c *pgtest.Cluster) string {
	t.Helper()
	db, err := c.CreateDatabase(testCtx(t), t.Name())
	require.NoError(t, err)
	return db
}

func directConn(t testing.TB, c *pgtest.Cluster, db string) *pgx.Conn {
	t.Helper()
	conn, err := c.Connect(testCtx(t), db)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
