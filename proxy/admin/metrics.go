// Package admin owns tenantguard's admin listener: Prometheus metrics with
// the names of SPEC §1, /healthz (liveness) and /readyz (readiness), and
// pprof when enabled. Labels are a fixed, small set: never SQL text, a tenant
// id or a user name.
package admin

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds tenantguard's collectors, registered on their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	Statements          *prometheus.CounterVec // decision, kind
	Rejections          *prometheus.CounterVec // reason
	StatementDuration   prometheus.Histogram
	RewriteCacheHits    prometheus.Counter
	RewriteCacheMisses  prometheus.Counter
	ClientConnections   prometheus.Gauge
	UpstreamConnections prometheus.Gauge
	PolicyReloads       *prometheus.CounterVec // result
	CatalogRefreshes    *prometheus.CounterVec // result
	AuditWriteErrors    prometheus.Counter
	RowGuardCuts        prometheus.Counter
	// StatementsPreparedAgain counts prepared statements the guard prepared
	// again upstream for a new tenant (a pinned session's literal tenant).
	StatementsPreparedAgain prometheus.Counter
	// SimpleShapes counts the statement shapes prepared upstream for
	// simple-protocol statements (result ok), or refused there (refused);
	// SimpleStatementsPrepared the statements sent in their prepared form.
	SimpleShapes             *prometheus.CounterVec // result
	SimpleStatementsPrepared prometheus.Counter
}

// NewMetrics creates and registers the collectors, plus the Go runtime and
// process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Statements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantguard_statements_total",
			Help: "Statements decided, by decision (allowed, rewritten, rejected, bypassed) and kind.",
		}, []string{"decision", "kind"}),
		Rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantguard_rejections_total",
			Help: "Rejected statements by reason code.",
		}, []string{"reason"}),
		StatementDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tenantguard_statement_duration_seconds",
			Help: "Time from a statement reaching tenantguard to its completion upstream.",
			// 50µs .. ~6.5s: a proxy's statements are mostly sub-millisecond.
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 18),
		}),
		RewriteCacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tenantguard_rewrite_cache_hits_total",
			Help: "Statement decisions served from the decision cache.",
		}),
		RewriteCacheMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tenantguard_rewrite_cache_misses_total",
			Help: "Statement decisions that needed a parse.",
		}),
		ClientConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tenantguard_client_connections",
			Help: "Open client connections.",
		}),
		UpstreamConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tenantguard_upstream_connections",
			Help: "Open connections to the upstream server (sessions and the catalog connection).",
		}),
		PolicyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantguard_policy_reloads_total",
			Help: "Policy reloads by result (ok, error).",
		}, []string{"result"}),
		CatalogRefreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantguard_catalog_refreshes_total",
			Help: "Upstream catalog loads by result (ok, error).",
		}, []string{"result"}),
		AuditWriteErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tenantguard_audit_write_errors_total",
			Help: "Audit events that could not be written.",
		}),
		RowGuardCuts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tenantguard_row_guard_cuts_total",
			Help: "Results cut at run time because they exceeded limits.max_rows.",
		}),
		StatementsPreparedAgain: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tenantguard_statements_prepared_again_total",
			Help: "Prepared statements prepared again upstream before a Bind, because their text changed with the session's tenant.",
		}),
		SimpleShapes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantguard_simple_shapes_prepared_total",
			Help: "Shapes of simple-protocol statements prepared upstream (result=ok), or whose Parse the upstream refused so that they go as text (result=refused).",
		}, []string{"result"}),
		SimpleStatementsPrepared: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tenantguard_simple_statements_prepared_total",
			Help: "Simple-protocol statements sent upstream as a Bind to their shape's prepared statement.",
		}),
	}
	m.Registry.MustRegister(
		m.Statements, m.Rejections, m.StatementDuration, m.RewriteCacheHits, m.RewriteCacheMisses,
		m.ClientConnections, m.UpstreamConnections, m.PolicyReloads, m.CatalogRefreshes,
		m.AuditWriteErrors, m.RowGuardCuts, m.StatementsPreparedAgain, m.SimpleShapes, m.SimpleStatementsPrepared,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// Pre-create the label values that exist from the start so dashboards
	// see zeros instead of missing series.
	for _, r := range []string{"ok", "error"} {
		m.PolicyReloads.WithLabelValues(r)
		m.CatalogRefreshes.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "refused"} {
		m.SimpleShapes.WithLabelValues(r)
	}
	return m
}

// RegisterRelay adds the relay's own gauges, read at scrape time: sessions
// relayed by the event loops, and sessions handed back from a loop to
// goroutines of their own (a hand-back lasts for the rest of the session).
func (m *Metrics) RegisterRelay(loopSessions func() int, handBacks, reentries func() uint64) {
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tenantguard_event_loop_sessions",
			Help: "Sessions relayed by the event loops now.",
		}, func() float64 { return float64(loopSessions()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tenantguard_event_loop_handbacks_total",
			Help: "Sessions that left an event loop for goroutines of their own (message over 64 KiB, slow peer, end, drain).",
		}, func() float64 { return float64(handBacks()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tenantguard_event_loop_reentries_total",
			Help: "Sessions handed back by an event loop that went back to it (after a large message, or a client that caught up).",
		}, func() float64 { return float64(reentries()) }),
	)
}
