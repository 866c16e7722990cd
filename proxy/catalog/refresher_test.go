package catalog

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tenantguard/tenantguard/proxy/pgtest"
	"github.com/tenantguard/tenantguard/rewriter"
)

// loads records the Refresher's onLoad calls.
type loads struct {
	mu   sync.Mutex
	ok   int
	errs []error
}

func (l *loads) on(c *rewriter.Catalog, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.errs = append(l.errs, err)
		return
	}
	if c == nil {
		panic("onLoad called with neither catalog nor error")
	}
	l.ok++
}

func (l *loads) counts() (int, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, len(l.errs)
}

// waitFor polls cond; the timeout only guards against hangs.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startRefresher runs r until the test ends and returns the channel Run's
// result arrives on.
func startRefresher(t *testing.T, r *Refresher) (context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return cancel, done
}

func has(r *Refresher, key string) bool {
	c := r.Current()
	return c != nil && c.Relations[key] != nil
}

func TestRefresherLoadsTriggersAndTicks(t *testing.T) {
	ctx := testContext(t)
	c, db, _ := newDatabase(t, ctx, "CREATE TABLE t1 (clinic_id int)")
	l := &loads{}
	r := NewRefresher(c.URL(pgtest.SuperUser, "", db), 0, nil, l.on)
	assert.False(t, r.Ready())
	assert.Nil(t, r.Current())
	startRefresher(t, r)

	waitFor(t, "first load", func() bool { return r.Ready() && has(r, "public.t1") })

	// A reload that finds nothing changed keeps the same catalog (what was
	// decided with it stays valid).
	first := r.Current()
	r.Trigger()
	waitFor(t, "the unchanged reload", func() bool { n, _ := l.counts(); return n == 2 })
	assert.Same(t, first, r.Current(), "an unchanged catalog keeps its pointer")

	// No interval: a new table shows up only when triggered.
	require.NoError(t, c.Exec(ctx, db, "CREATE TABLE t2 (clinic_id int)"))
	r.Trigger()
	waitFor(t, "triggered reload", func() bool { return has(r, "public.t2") })
	assert.NotSame(t, first, r.Current())
	n, e := l.counts()
	assert.Equal(t, 3, n)
	assert.Equal(t, 0, e)
}

// TestRefresherSpacesTriggers: a burst of triggers (a client naming unknown
// relations in a loop) is merged into few loads, spaced by TriggerGap, and
// the last trigger is never dropped: what it asked for gets loaded.
func TestRefresherSpacesTriggers(t *testing.T) {
	ctx := testContext(t)
	c, db, _ := newDatabase(t, ctx, "")
	l := &loads{}
	r := NewRefresher(c.URL(pgtest.SuperUser, "", db), 0, nil, l.on)
	r.TriggerGap = 300 * time.Millisecond
	startRefresher(t, r)
	waitFor(t, "first load", r.Ready)

	const burst = 200
	start := time.Now()
	for i := 0; i < burst; i++ {
		r.Trigger()
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, c.Exec(ctx, db, "CREATE TABLE after_burst (x int)"))
	r.Trigger()
	waitFor(t, "the last trigger's reload", func() bool { return has(r, "public.after_burst") })
	n, e := l.counts()
	assert.Equal(t, 0, e)
	// One load per gap at most, plus the first; the burst lasted at least
	// burst milliseconds (the bound only grows if the machine is slower).
	maxLoads := 2 + int(time.Since(start)/r.TriggerGap)
	assert.LessOrEqual(t, n, maxLoads, "loads for %d triggers", burst+1)
	assert.GreaterOrEqual(t, n, 2)
}

func TestRefresherInterval(t *testing.T) {
	ctx := testContext(t)
	c, db, _ := newDatabase(t, ctx, "")
	r := NewRefresher(c.URL(pgtest.SuperUser, "", db), 20*time.Millisecond, nil, nil)
	startRefresher(t, r)
	waitFor(t, "first load", r.Ready)
	require.NoError(t, c.Exec(ctx, db, "CREATE TABLE later (x int)"))
	waitFor(t, "periodic reload", func() bool { return has(r, "public.later") })
}

// TestRefresherReconnects: the upstream is missing at start, appears, then
// drops the connection; the Refresher reports each failure, keeps the last
// catalog and recovers on its own, and its logs never hold the password.
func TestRefresherReconnects(t *testing.T) {
	ctx := testContext(t)
	c := pgtest.Shared(t)
	const db = "catalog_refresher_late"
	core, logs := observer.New(zapcore.DebugLevel)
	l := &loads{}
	r := NewRefresher(c.URL(pgtest.ScramUser, pgtest.ScramPassword, db), 0, zap.New(core), l.on)
	r.MinBackoff, r.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	startRefresher(t, r)

	waitFor(t, "connect failures", func() bool { _, e := l.counts(); return e >= 2 })
	assert.False(t, r.Ready())
	assert.Nil(t, r.Current())

	require.NoError(t, c.Exec(ctx, "postgres", "CREATE DATABASE "+db+" OWNER "+pgtest.ScramUser))
	t.Cleanup(func() { _ = c.Exec(context.Background(), "postgres", "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") })
	require.NoError(t, c.Exec(ctx, db, "SET ROLE "+pgtest.ScramUser+"; CREATE TABLE t (x int)"))
	// The refresher may have connected between CREATE DATABASE and CREATE
	// TABLE: with no interval, only a trigger makes it read the table.
	waitFor(t, "recovery", func() bool { r.Trigger(); return r.Ready() && has(r, "public.t") })
	before := r.Current()

	okBefore, errsBefore := l.counts()
	require.NoError(t, c.Exec(ctx, db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '"+ApplicationName+"'"))
	r.Trigger()
	waitFor(t, "failure reported", func() bool { _, e := l.counts(); return e > errsBefore })
	waitFor(t, "reconnect", func() bool { n, _ := l.counts(); return r.Ready() && n > okBefore })
	assert.True(t, has(r, "public.t"))
	assert.Same(t, before, r.Current(), "the catalog did not change: the same one stays")

	for _, entry := range logs.All() {
		for _, f := range entry.Context {
			if f.Type == zapcore.ErrorType {
				assert.NotContains(t, f.Interface.(error).Error(), pgtest.ScramPassword)
			}
			assert.NotContains(t, f.String, pgtest.ScramPassword)
		}
		assert.NotContains(t, entry.Message, pgtest.ScramPassword)
	}
	assert.NotEmpty(t, logs.FilterMessage("catalog load failed").All())
	assert.NotEmpty(t, logs.FilterMessage("catalog loaded").All())
}

func TestRefresherBadURL(t *testing.T) {
	l := &loads{}
	r := NewRefresher("postgres://u:topsecret@127.0.0.1:1/db?sslmode=bogus", 0, nil, l.on)
	r.MinBackoff = time.Millisecond
	startRefresher(t, r)
	waitFor(t, "error", func() bool { _, e := l.counts(); return e > 0 })
	l.mu.Lock()
	msg := l.errs[0].Error()
	l.mu.Unlock()
	assert.Contains(t, msg, "catalog: upstream URL")
	assert.NotContains(t, msg, "topsecret")
	assert.False(t, r.Ready())
}

func TestRefresherStopsWithoutLeak(t *testing.T) {
	ctx := testContext(t)
	c, db, conn := newDatabase(t, ctx, "")
	before := runtime.NumGoroutine()

	r := NewRefresher(c.URL(pgtest.SuperUser, "", db), time.Hour, nil, nil)
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	waitFor(t, "first load", r.Ready)
	cancel()
	select {
	case err := <-done:
		assert.True(t, errors.Is(err, context.Canceled))
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	waitFor(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
	waitFor(t, "upstream connection closed", func() bool {
		var n int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
			ApplicationName, db).Scan(&n)
		return err == nil && n == 0
	})
}
