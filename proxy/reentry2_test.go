package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

// COPY IN (CopyData over 64 KiB: hand-backs) and COPY OUT, with pipelined
// batches in between: the session goes back and forth, nothing is lost.
func TestEventLoopReentryCopyAndPipelines(t *testing.T) {
	p := startProxy(t, nil)
	loopsOn(t, p)
	db := newDB(t, p.c)
	conn := p.connect(t, pgtest.SuperUser, "", db)
	ctx := testCtx(t)
	_, err := conn.Exec(ctx, "create table r(id int, t text)")
	require.NoError(t, err)
	id := 0
	var wantLen int64
	for round := 0; round < 8; round++ {
		rows := [][]any{}
		for i := 0; i < 40; i++ {
			n := []int{10, 8000, 30000, 70000, 140000}[(round+i)%5]
			id++
			rows = append(rows, []any{id, strings.Repeat(string(rune('a'+id%26)), n)})
			wantLen += int64(n)
		}
		n, err := conn.CopyFrom(ctx, pgx.Identifier{"r"}, []string{"id", "t"}, pgx.CopyFromRows(rows))
		require.NoError(t, err)
		require.Equal(t, int64(40), n)
		b := &pgx.Batch{}
		for j := 0; j < 5; j++ {
			b.Queue("select $1::text", strings.Repeat("x", j*20000))
		}
		br := conn.SendBatch(ctx, b)
		for j := 0; j < 5; j++ {
			var s string
			require.NoError(t, br.QueryRow().Scan(&s))
			require.Equal(t, j*20000, len(s))
		}
		require.NoError(t, br.Close())
		var got int64
		require.NoError(t, conn.QueryRow(ctx, "select coalesce(sum(length(t)),0) from r").Scan(&got))
		require.Equal(t, wantLen, got, "round %d", round)
		var buf bytes.Buffer
		tag, err := conn.PgConn().CopyTo(ctx, &buf, "copy (select id, length(t), md5(t) from r order by id) to stdout")
		require.NoError(t, err)
		require.Equal(t, int64(id), tag.RowsAffected())
		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		require.Len(t, lines, id)
		require.True(t, strings.HasPrefix(lines[id-1], fmt.Sprint(id)+"\t"))
	}
	t.Logf("hand-backs %d, re-entries %d", p.srv.HandBacks(), p.srv.Reentries())
}

// Shutdown at random moments while sessions hand back and re-enter.
func TestShutdownRacesReentry(t *testing.T) {
	for round := 0; round < 6; round++ {
		p := startProxy(t, func(cfg *proxy.Config) { cfg.DrainTimeout = 5 * time.Millisecond })
		ctx := testCtx(t)
		big := strings.Repeat("q", 70000)
		var wg sync.WaitGroup
		for i := 0; i < 6; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := pgx.Connect(ctx, p.url(pgtest.SuperUser, "", "postgres"))
				if err != nil {
					return
				}
				defer conn.Close(ctx)
				for j := 0; j < 200; j++ {
					q := "select 1"
					if j%3 == 0 {
						q = "select length('" + big + "')"
					}
					if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
						return
					}
				}
			}()
		}
		time.Sleep(time.Duration(20+round*15) * time.Millisecond)
		done := make(chan error, 1)
		go func() { done <- p.srv.Shutdown(context.Background()) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("round %d: Shutdown did not return; %d open, %d in loop", round, p.srv.ActiveSessions(), p.srv.LoopSessions())
		}
		wg.Wait()
		require.Zero(t, p.srv.ActiveSessions())
		require.Zero(t, p.srv.LoopSessions())
		t.Logf("round %d: hand-backs %d, re-entries %d", round, p.srv.HandBacks(), p.srv.Reentries())
	}
}

type endingHooks struct{ ended atomic.Int32 }

func (h *endingHooks) OnStartup(*proxy.Session) error { return nil }
func (h *endingHooks) OnFrontend(s *proxy.Session, m proxy.Message) (proxy.Verdict, error) {
	if m.Type == 'Q' && bytes.Contains(m.Body, []byte("boom")) {
		return proxy.Verdict{}, errors.New("review: refused")
	}
	return proxy.Verdict{}, nil
}
func (h *endingHooks) BackendInterest(typ byte) proxy.Interest {
	if typ == 'Z' || typ == 'C' {
		return proxy.Inspect
	}
	return proxy.Ignore
}
func (h *endingHooks) OnBackend(*proxy.Session, proxy.Message) (proxy.Verdict, error) {
	return proxy.Verdict{}, nil
}
func (h *endingHooks) OnEnd(*proxy.Session) { h.ended.Add(1) }

// A hook ends the session right after stops and re-entries.
func TestHookEndsAroundReentry(t *testing.T) {
	h := &endingHooks{}
	p := startProxy(t, func(cfg *proxy.Config) { cfg.Hooks = h })
	ctx := testCtx(t)
	big := strings.Repeat("q", 70000)
	for i := 0; i < 20; i++ {
		conn, err := pgx.Connect(ctx, p.url(pgtest.SuperUser, "", "postgres"))
		require.NoError(t, err)
		for j := 0; j < i%5; j++ {
			_, err := conn.Exec(ctx, "select length('"+big+"')", pgx.QueryExecModeSimpleProtocol)
			require.NoError(t, err)
			_, err = conn.Exec(ctx, "select 1", pgx.QueryExecModeSimpleProtocol)
			require.NoError(t, err)
		}
		_, err = conn.Exec(ctx, "select 'boom'", pgx.QueryExecModeSimpleProtocol)
		require.Error(t, err)
		conn.Close(ctx)
	}
	waitFor(t, 10*time.Second, "every session to end", func() bool { return h.ended.Load() == 20 && p.srv.ActiveSessions() == 0 })
	t.Logf("hand-backs %d, re-entries %d", p.srv.HandBacks(), p.srv.Reentries())
}
