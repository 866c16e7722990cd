package proxy_test

import (
	"context"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

// A quiet blocking loop parks through a new descriptor (a duplicate of its
// epoll descriptor). At the process's descriptor limit (a connection flood)
// it must wait in epoll_pwait instead and go on: the sessions it holds stay
// in it, and new sessions enter it once descriptors are free again. (Found
// in review: the loop failed for good, and every later session ran without
// it.)
func TestEventLoopQuietWithoutADescriptorToSpare(t *testing.T) {
	p := blockingProxy(t, nil)
	ctx := testCtx(t)
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	waitFor(t, 10*time.Second, "the session to be in the loop", func() bool { return p.srv.LoopSessions() == 1 })
	var got int
	require.NoError(t, conn.QueryRow(ctx, "select 1").Scan(&got))

	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	low := lim
	low.Cur = lowestFreeDescriptor() // the next dup, open or accept fails with EMFILE
	parks := p.srv.LoopQuietParks()
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low))
	time.Sleep(300 * time.Millisecond) // quiet, many times over: every park needs a descriptor
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim))
	require.Equal(t, parks, p.srv.LoopQuietParks(), "no park without a descriptor")

	require.NoError(t, conn.QueryRow(ctx, "select 2").Scan(&got))
	require.Equal(t, 2, got)
	require.Equal(t, 1, p.srv.LoopSessions(), "the session stayed in the loop")
	c2 := p.connect(t, pgtest.SuperUser, "", "postgres")
	waitFor(t, 10*time.Second, "a new session to enter the loop", func() bool { return p.srv.LoopSessions() == 2 })
	require.NoError(t, c2.QueryRow(ctx, "select 3").Scan(&got))
	require.Equal(t, 3, got)
	waitFor(t, 10*time.Second, "the loop to park again", func() bool { return p.srv.LoopQuietParks() > parks })
}

// lowestFreeDescriptor is the lowest descriptor number not open.
func lowestFreeDescriptor() uint64 {
	for fd := uintptr(0); ; fd++ {
		if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFD, 0); e == syscall.EBADF {
			return uint64(fd)
		}
	}
}

// Requests reach a loop parked on the runtime's poller: a new session is
// added to it, and a drain hands its idle sessions back and ends them.
// (From the review; it passed before any fix: a guard against a lost
// wake-up through the wake pipe while the loop is parked on a duplicate
// descriptor.)
func TestEventLoopServesRequestsWhileParked(t *testing.T) {
	p := blockingProxy(t, func(cfg *proxy.Config) { cfg.DrainTimeout = 20 * time.Second })
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	waitFor(t, 10*time.Second, "the session to be in the loop", func() bool { return p.srv.LoopSessions() == 1 })
	parks := p.srv.LoopQuietParks()
	waitFor(t, 10*time.Second, "the loop to park", func() bool { return p.srv.LoopQuietParks() > parks })
	c2 := p.connect(t, pgtest.SuperUser, "", "postgres")
	waitFor(t, 10*time.Second, "the new session to enter the parked loop", func() bool { return p.srv.LoopSessions() == 2 })
	var got int
	require.NoError(t, c2.QueryRow(testCtx(t), "select 7").Scan(&got))
	require.Equal(t, 7, got)

	parks = p.srv.LoopQuietParks()
	waitFor(t, 10*time.Second, "the loop to park again", func() bool { return p.srv.LoopQuietParks() > parks })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	require.NoError(t, p.srv.Shutdown(ctx), "a drain of idle sessions in a parked loop")
	require.Zero(t, p.srv.ActiveSessions())
	require.Zero(t, p.srv.LoopSessions())
	require.Error(t, conn.Ping(context.Background()), "the drain closed the session")
}

// A blocking loop holds a processor only while GOMAXPROCS leaves a spare
// one: lowered after the loop started, the loop gives its processor back
// at its next quiet moment and goes on parking, serving its sessions.
// (Found in review: with GOMAXPROCS 1 the loop kept the only processor, and
// a new session took 45–100 ms to start.)
func TestEventLoopGivesItsProcessorBack(t *testing.T) {
	p, conn := blockingSession(t)
	ctx := testCtx(t)

	prev := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	var got int
	require.NoError(t, conn.QueryRow(ctx, "select 1").Scan(&got))
	waitFor(t, 10*time.Second, "the loop to give its processor back", func() bool { return proxy.BlockingLoops() == 0 })
	for i := range 20 {
		require.NoError(t, conn.QueryRow(ctx, "select $1::int", i).Scan(&got))
		require.Equal(t, i, got)
	}
	c2 := p.connect(t, pgtest.SuperUser, "", "postgres")
	require.NoError(t, c2.QueryRow(ctx, "select 2").Scan(&got))
	require.Equal(t, 2, got)
	waitFor(t, 10*time.Second, "both sessions in the (now parking) loop", func() bool { return p.srv.LoopSessions() == 2 })
}

// The same under a steady stream of queries: a loop that is never quiet
// gives its processor back too.
func TestEventLoopGivesItsProcessorBackUnderLoad(t *testing.T) {
	_, conn := blockingSession(t)
	ctx := testCtx(t)
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			var got int
			if err := conn.QueryRow(ctx, "select $1::int", i).Scan(&got); err != nil || got != i {
				done <- fmt.Errorf("query %d: got %d, %v", i, got, err)
				return
			}
		}
	}()
	prev := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	waitFor(t, 10*time.Second, "the busy loop to give its processor back", func() bool { return proxy.BlockingLoops() == 0 })
	close(stop)
	require.NoError(t, <-done)
}

// blockingSession starts a proxy with one blocking loop and a session in
// it, and waits until the loop holds a processor.
func blockingSession(t *testing.T) (*testProxy, *pgx.Conn) {
	t.Helper()
	p := blockingProxy(t, nil)
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	waitFor(t, 10*time.Second, "the session to be in the loop", func() bool { return p.srv.LoopSessions() == 1 })
	waitFor(t, 10*time.Second, "the loop to hold a processor", func() bool { return proxy.BlockingLoops() == 1 })
	return p, conn
}
