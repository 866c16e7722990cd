package catalog

import (
	"context"
	"fmt"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/tenantguard/tenantguard/rewriter"
)

// ApplicationName is the application_name of the Refresher's connection,
// so that operators can tell it apart in pg_stat_activity.
const ApplicationName = "tenantguard catalog"

// Refresher keeps a catalog loaded from the upstream: it loads at start,
// again every interval and whenever triggered (after a policy reload), over
// a connection of its own that it re-opens with backoff when it fails.
// Between loads, and after a failed load, the last good catalog stays
// current.
type Refresher struct {
	// Options is passed to every Load. Set it before Run.
	Options Options
	// MinBackoff and MaxBackoff bound the wait before retrying a failed
	// connect or load; it doubles from MinBackoff up to MaxBackoff.
	// Defaults 500ms and 30s. Set them before Run.
	MinBackoff, MaxBackoff time.Duration
	// TriggerGap is the least time between the start of one load and a
	// load asked for by Trigger (default 500ms): a client that keeps naming
	// unknown relations cannot keep the upstream busy with catalog queries.
	// A trigger is never dropped, only delayed. Set it before Run.
	TriggerGap time.Duration

	connString string
	interval   time.Duration
	logger     *zap.Logger
	onLoad     func(*rewriter.Catalog, error)

	current atomic.Pointer[rewriter.Catalog]
	ready   atomic.Bool
	trigger chan struct{}
}

// NewRefresher returns a Refresher for the upstream at connString (the
// --upstream URL; its credentials are tenantguard's own). interval <= 0
// disables periodic reloads (loads then happen at start and on Trigger).
// onLoad, when not nil, is called from Run after every attempt: with the new
// catalog, or with nil and the error. logger may be nil.
func NewRefresher(connString string, interval time.Duration, logger *zap.Logger, onLoad func(*rewriter.Catalog, error)) *Refresher {
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Refresher{
		MinBackoff: 500 * time.Millisecond,
		MaxBackoff: 30 * time.Second,
		TriggerGap: 500 * time.Millisecond,
		connString: connString,
		interval:   interval,
		logger:     logger,
		onLoad:     onLoad,
		trigger:    make(chan struct{}, 1),
	}
}

// Current returns the last catalog loaded, nil before the first success.
func (r *Refresher) Current() *rewriter.Catalog { return r.current.Load() }

// Ready reports whether the last attempt to load succeeded, i.e. the
// upstream answered (for /readyz).
func (r *Refresher) Ready() bool { return r.ready.Load() }

// Trigger asks for a reload as soon as possible. It does not block;
// triggers made while one is pending are merged. A pending backoff wait is
// cut short too.
func (r *Refresher) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Run loads and reloads until ctx is done, then closes its connection and
// returns ctx's error.
func (r *Refresher) Run(ctx context.Context) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = conn.Close(closeCtx)
			cancel()
		}
	}()
	if r.MinBackoff <= 0 {
		r.MinBackoff = 500 * time.Millisecond
	}
	if r.MaxBackoff < r.MinBackoff {
		r.MaxBackoff = r.MinBackoff
	}
	backoff := r.MinBackoff
	for {
		started := time.Now()
		var err error
		if conn == nil {
			conn, err = r.connect(ctx)
		}
		if err == nil {
			err = r.load(ctx, conn)
			if err != nil {
				// Whatever broke, a fresh connection is the safe next try.
				closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				_ = conn.Close(closeCtx)
				cancel()
				conn = nil
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := r.interval
		if err != nil {
			r.ready.Store(false)
			r.logger.Warn("catalog load failed", zap.Error(err), zap.Duration("retry_in", backoff))
			if r.onLoad != nil {
				r.onLoad(nil, err)
			}
			wait = backoff
			backoff = min(backoff*2, r.MaxBackoff)
		} else {
			backoff = r.MinBackoff
		}
		if !r.wait(ctx, wait, started) {
			return ctx.Err()
		}
	}
}

// wait blocks for d (forever when d <= 0) or until a trigger, but not past
// TriggerGap after started for a trigger; it returns false when ctx is done.
func (r *Refresher) wait(ctx context.Context, d time.Duration, started time.Time) bool {
	var tick <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		tick = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-r.trigger:
		if rest := r.TriggerGap - time.Since(started); rest > 0 {
			t := time.NewTimer(rest)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return false
			case <-t.C:
			}
		}
	case <-tick:
	}
	return true
}

func (r *Refresher) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(r.connString)
	if err != nil {
		// pgx redacts the password in its parse errors.
		return nil, fmt.Errorf("catalog: upstream URL: %w", err)
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = ApplicationName
	}
	connectCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(connectCtx, cfg)
	if err != nil {
		return nil, fmt.Errorf("catalog: connect: %w", err)
	}
	return conn, nil
}

func (r *Refresher) load(ctx context.Context, conn *pgx.Conn) error {
	start := time.Now()
	cat, err := LoadConn(ctx, conn, r.Options)
	if err != nil {
		return err
	}
	changed := true
	if old := r.current.Load(); old != nil && reflect.DeepEqual(old, cat) {
		// Unchanged: the same pointer keeps what was decided with it
		// (the guard's rewriter and its caches, prepared statements).
		cat, changed = old, false
	} else {
		r.current.Store(cat)
	}
	r.ready.Store(true)
	r.logger.Info("catalog loaded",
		zap.Int("relations", len(cat.Relations)),
		zap.Int("functions", len(cat.Functions)),
		zap.Bool("changed", changed),
		zap.Duration("duration", time.Since(start)))
	if r.onLoad != nil {
		r.onLoad(cat, nil)
	}
	return nil
}
