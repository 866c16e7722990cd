package proxy_test

import (
	"context"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy"
)

// upstreamThatDies: a fake server that, once a query arrives, waits a
// moment (the proxy's frontend goroutine is then parked reading the
// client) and closes without a FATAL.
func upstreamThatDies(t *testing.T) int {
	fake, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { fake.Close() })
	go func() {
		for {
			c, err := fake.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				be := pgproto3.NewBackend(c, c)
				if _, err := be.ReceiveStartupMessage(); err != nil {
					return
				}
				be.Send(&pgproto3.AuthenticationOk{})
				be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}})
				be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
				if be.Flush() != nil {
					return
				}
				_, _ = be.Receive()
				time.Sleep(150 * time.Millisecond)
			}()
		}
	}()
	return fake.Addr().(*net.TCPAddr).Port
}

// queryUntilLost sends a query to a session whose upstream dies and reads
// until the connection-failure error.
func queryUntilLost(t *testing.T, fe *pgproto3.Frontend) {
	t.Helper()
	fe.Send(&pgproto3.Query{String: "select 1"})
	require.NoError(t, fe.Flush())
	for {
		m, err := fe.Receive()
		require.NoError(t, err)
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			require.Equal(t, "08006", e.Code)
			return
		}
	}
}

// requireSessionsGone waits a few seconds for the proxy to have no session.
func requireSessionsGone(t *testing.T, p *testProxy, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.srv.ActiveSessions() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	require.Zero(t, p.srv.ActiveSessions(), append([]any{msg}, args...)...)
}

// A client that reads the FATAL but neither closes nor sends (an idle
// pooled connection): terminate's lingering close bounds the session to
// 250 ms. The frontend goroutine must not take that deadline for a
// re-entry request and clear it.
func TestLostUpstreamEndsAnIdleClientSession(t *testing.T) {
	port := upstreamThatDies(t)
	p := startProxy(t, func(cfg *proxy.Config) { cfg.Upstream.Port = port })
	for round := 0; round < 5; round++ {
		nc, fe := p.rawSession(t)
		queryUntilLost(t, fe)
		// Keep nc open, send nothing.
		requireSessionsGone(t, p, "round %d: the session outlived its lingering close by seconds", round)
		nc.Close()
	}
}

// Stops and re-entries at random points of a client stream cut in random
// pieces: every answer arrives, in order.
func TestEventLoopReentryRandomCuts(t *testing.T) {
	p := startProxy(t, nil)
	loopsOn(t, p)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	big := strings.Repeat("b", 70_000)
	for session := 0; session < 6; session++ {
		nc, fe := p.rawSession(t)
		const n = 400
		var stream []byte
		want := make([]string, 0, n)
		for i := 0; i < n; i++ {
			var q string
			switch {
			case i%97 == 5:
				q = "select length('" + big + "') + " + strconv.Itoa(i) + " - 70000"
			case i%13 == 0:
				q = "select " + strconv.Itoa(i) + ", pg_sleep(0.002)"
			default:
				q = "select " + strconv.Itoa(i) + " /* " + strings.Repeat("p", rng.IntN(9000)) + " */"
			}
			var err error
			stream, err = (&pgproto3.Query{String: q}).Encode(stream)
			require.NoError(t, err)
			want = append(want, strconv.Itoa(i))
		}
		errc := make(chan error, 1)
		go func() {
			b := stream
			for len(b) > 0 {
				k := min(len(b), 1+rng.IntN(12000))
				if _, err := nc.Write(b[:k]); err != nil {
					errc <- err
					return
				}
				b = b[k:]
				if rng.IntN(3) == 0 {
					time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
				}
			}
			errc <- nil
		}()
		var got []string
		for len(got) < n {
			m, err := fe.Receive()
			require.NoError(t, err, "session %d after %d answers", session, len(got))
			switch m := m.(type) {
			case *pgproto3.DataRow:
				s := string(m.Values[0])
				if strings.HasSuffix(s, "") {
					got = append(got, s)
				}
			case *pgproto3.ErrorResponse:
				t.Fatalf("error %s: %s", m.Code, m.Message)
			}
		}
		require.NoError(t, <-errc)
		require.Equal(t, want, got, "session %d", session)
		nc.Close()
	}
	t.Logf("hand-backs %d, re-entries %d", p.srv.HandBacks(), p.srv.Reentries())
}

// The same session blocks Shutdown: closeAll's terminate is a no-op (the
// session's terminate already ran) and Shutdown waits for its goroutine.
func TestShutdownAfterALostUpstream(t *testing.T) {
	port := upstreamThatDies(t)
	p := startProxy(t, func(cfg *proxy.Config) { cfg.Upstream.Port = port })
	_, fe := p.rawSession(t)
	queryUntilLost(t, fe)
	time.Sleep(500 * time.Millisecond)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		done <- p.srv.Shutdown(ctx)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("Shutdown did not return 4 s after its deadline; %d sessions open", p.srv.ActiveSessions())
	}
}
