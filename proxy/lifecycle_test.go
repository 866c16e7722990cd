package proxy_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

func (p *testProxy) dial(t testing.TB) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port))
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	require.NoError(t, nc.SetDeadline(time.Now().Add(20*time.Second)))
	return nc
}

// rawSession opens a raw protocol connection through the proxy, logged in as
// the superuser and past the first ReadyForQuery.
func (p *testProxy) rawSession(t testing.TB) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	nc := p.dial(t)
	return nc, startup(t, nc)
}

// startup logs in as postgres over rw (a socket, or a TLS connection on
// it) and returns the frontend once the session is ready.
func startup(t testing.TB, rw io.ReadWriter) *pgproto3.Frontend {
	t.Helper()
	fe := pgproto3.NewFrontend(rw, rw)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	require.NoError(t, fe.Flush())
	for {
		m, err := fe.Receive()
		require.NoError(t, err)
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			return fe
		}
	}
}

// expectFatal reads until an ErrorResponse, checks its code, then expects EOF.
func expectFatal(t *testing.T, nc net.Conn, code string) {
	t.Helper()
	fe := pgproto3.NewFrontend(nc, nc)
	for {
		m, err := fe.Receive()
		require.NoError(t, err, "expected an ErrorResponse %s", code)
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			assert.Equal(t, code, e.Code, e.Message)
			assert.Equal(t, "FATAL", e.Severity)
			break
		}
	}
	_, err := io.ReadAll(nc)
	require.NoError(t, err, "connection must be closed by the proxy")
}

func startupPacket(code uint32, params ...string) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b[4:], code)
	for _, p := range params {
		b = append(append(b, p...), 0)
	}
	if len(params) > 0 {
		b = append(b, 0)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

func TestBadStartup(t *testing.T) {
	p := startProxy(t, func(cfg *proxy.Config) { cfg.StartupTimeout = 500 * time.Millisecond })
	cases := []struct {
		name string
		send []byte
		code string
	}{
		{"http request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "08P01"},
		{"length below 8", []byte{0, 0, 0, 3, 0, 0, 0, 0}, "08P01"},
		{"protocol 2", startupPacket(2<<16, "user", "postgres"), "0A000"},
		{"unknown code", startupPacket(1235<<16 | 1), "0A000"},
		{"unterminated params", startupPacket(3<<16, "user", "postgres")[:20], "08P01"},
		{"no user", startupPacket(3<<16, "database", "postgres"), "28000"},
		{"replication", startupPacket(3<<16, "user", "postgres", "replication", "database"), "0A000"},
		{"never completes", []byte{0, 0}, "08P01"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nc := p.dial(t)
			pkt := tc.send
			if tc.name == "unterminated params" {
				binary.BigEndian.PutUint32(pkt, uint32(len(pkt)))
			}
			_, err := nc.Write(pkt)
			require.NoError(t, err)
			expectFatal(t, nc, tc.code)
		})
	}
	waitFor(t, 10*time.Second, "sessions to end", func() bool { return p.srv.ActiveSessions() == 0 })
}

func TestGSSENCAndUnknownCancel(t *testing.T) {
	p := startProxy(t, nil)
	nc := p.dial(t)
	_, err := nc.Write(startupPacket(80877104))
	require.NoError(t, err)
	var b [1]byte
	_, err = io.ReadFull(nc, b[:])
	require.NoError(t, err)
	assert.Equal(t, byte('N'), b[0])
	// The same connection continues with a normal startup.
	_, err = nc.Write(startupPacket(3<<16, "user", "postgres", "database", "postgres"))
	require.NoError(t, err)
	fe := pgproto3.NewFrontend(nc, nc)
	for {
		m, err := fe.Receive()
		require.NoError(t, err)
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	// A CancelRequest with a key nobody holds is dropped silently.
	cc := p.dial(t)
	pkt := startupPacket(80877102)
	pkt = append(pkt, 0, 0, 0, 1, 0, 0, 0, 2)
	binary.BigEndian.PutUint32(pkt, uint32(len(pkt)))
	_, err = cc.Write(pkt)
	require.NoError(t, err)
	rest, err := io.ReadAll(cc)
	require.NoError(t, err)
	assert.Empty(t, rest)
}

func TestBadMessagesAfterStartup(t *testing.T) {
	p := startProxy(t, func(cfg *proxy.Config) { cfg.MaxMessageSize = 1 << 20 })
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"length below 4", []byte{'Q', 0, 0, 0, 2}},
		{"too large", []byte{'Q', 0, 0x20, 0, 0}},
		{"unknown type", []byte{'z', 0, 0, 0, 4}},
		{"auth message after startup", []byte{'p', 0, 0, 0, 5, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, _ := p.rawSession(t)
			_, err := nc.Write(tc.send)
			require.NoError(t, err)
			expectFatal(t, nc, "08P01")
		})
	}
	t.Run("truncated then closed", func(t *testing.T) {
		nc, _ := p.rawSession(t)
		_, err := nc.Write([]byte{'Q', 0, 0, 0, 100, 's', 'e'})
		require.NoError(t, err)
		require.NoError(t, nc.Close())
	})
	waitFor(t, 10*time.Second, "sessions to end", func() bool { return p.srv.ActiveSessions() == 0 })
	// The proxy still serves.
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	var n int
	require.NoError(t, conn.QueryRow(testCtx(t), "select 1").Scan(&n))
}

func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(entries)
}

// TestNoLeaks opens and ends many sessions in every way a session can end,
// then checks that goroutines and file descriptors return to their baseline.
func TestNoLeaks(t *testing.T) {
	p := startProxy(t, nil)
	ctx := testCtx(t)
	// Warm up: the first connection starts lazily created resources.
	p.connect(t, pgtest.SuperUser, "", "postgres").Close(ctx)
	waitFor(t, 10*time.Second, "warm-up session to end", func() bool { return p.srv.ActiveSessions() == 0 })
	time.Sleep(100 * time.Millisecond)
	baseG, baseFD := runtime.NumGoroutine(), openFDs(t)

	for i := 0; i < 40; i++ {
		switch i % 5 {
		case 0: // clean pgx session
			conn, err := pgx.Connect(ctx, p.url(pgtest.SuperUser, "", "postgres"))
			require.NoError(t, err)
			_, err = conn.Exec(ctx, "select 1")
			require.NoError(t, err)
			require.NoError(t, conn.Close(ctx))
		case 1: // abrupt close while idle
			nc, _ := p.rawSession(t)
			nc.Close()
		case 2: // abrupt close mid-query
			nc, fe := p.rawSession(t)
			fe.Send(&pgproto3.Query{String: "select pg_sleep(30)"})
			require.NoError(t, fe.Flush())
			time.Sleep(10 * time.Millisecond)
			nc.Close()
		case 3: // protocol error
			nc, _ := p.rawSession(t)
			_, _ = nc.Write([]byte{'Q', 0, 0, 0, 1})
			_, _ = io.ReadAll(nc)
			nc.Close()
		case 4: // wrong password
			_, err := pgx.Connect(ctx, p.url(pgtest.ScramUser, "wrong", "postgres"))
			require.Error(t, err)
		}
	}
	waitFor(t, 30*time.Second, "sessions to end", func() bool { return p.srv.ActiveSessions() == 0 })
	var g, fd int
	waitFor(t, 30*time.Second, "goroutines and fds to settle", func() bool {
		g, fd = runtime.NumGoroutine(), openFDs(t)
		return g <= baseG && fd <= baseFD
	})
	t.Logf("goroutines %d (baseline %d), fds %d (baseline %d)", g, baseG, fd, baseFD)
	// The mid-query disconnects left no backend running pg_sleep.
	direct := directConn(t, p.c, "postgres")
	waitFor(t, 30*time.Second, "cancelled backends to go away", func() bool {
		var n int
		require.NoError(t, direct.QueryRow(ctx, "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'").Scan(&n))
		return n == 0
	})
}

func TestDrain(t *testing.T) {
	p := startProxy(t, func(cfg *proxy.Config) { cfg.DrainTimeout = 30 * time.Second })
	db := newDB(t, p.c)
	ctx := testCtx(t)
	busy := p.connect(t, pgtest.SuperUser, "", db)
	idle := p.connect(t, pgtest.SuperUser, "", db)
	_, err := busy.Exec(ctx, "create table drained(x int)")
	require.NoError(t, err)
	tx, err := busy.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "insert into drained values (1)")
	require.NoError(t, err)

	var shutdownErr atomic.Value
	done := make(chan struct{})
	go func() {
		defer close(done)
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.srv.Shutdown(sctx); err != nil {
			shutdownErr.Store(err)
		}
	}()
	// New connections are refused once the drain started.
	waitFor(t, 10*time.Second, "new connections to be refused", func() bool {
		c, err := pgx.Connect(ctx, p.url(pgtest.SuperUser, "", db, "connect_timeout", "2"))
		if err == nil {
			c.Close(ctx)
			return false
		}
		return true
	})
	// The idle session is closed with 57P01 (or already closed). The
	// listener closes before the sessions are visited, so a statement may
	// still get through in between: wait for the close.
	waitFor(t, 10*time.Second, "the idle session to be closed", func() bool {
		_, err = idle.Exec(ctx, "select 1")
		return err != nil
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		assert.Equal(t, "57P01", pgErr.Code)
	}
	// The open transaction may finish.
	_, err = tx.Exec(ctx, "insert into drained values (2)")
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown did not return after the last transaction ended")
	}
	assert.Nil(t, shutdownErr.Load())
	assert.Equal(t, 0, p.srv.ActiveSessions())
	direct := directConn(t, p.c, db)
	var n int
	require.NoError(t, direct.QueryRow(ctx, "select count(*) from drained").Scan(&n))
	assert.Equal(t, 2, n)
}

func TestDrainTimeoutClosesSessions(t *testing.T) {
	p := startProxy(t, func(cfg *proxy.Config) { cfg.DrainTimeout = 200 * time.Millisecond })
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	ctx := testCtx(t)
	_, err := conn.Exec(ctx, "begin")
	require.NoError(t, err)
	err = p.srv.Shutdown(context.Background())
	require.Error(t, err, "a session was still in a transaction")
	assert.Equal(t, 0, p.srv.ActiveSessions())
	_, err = conn.Exec(ctx, "select 1")
	require.Error(t, err)
}
