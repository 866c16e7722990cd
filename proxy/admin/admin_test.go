package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

func TestEndpoints(t *testing.T) {
	m := NewMetrics()
	m.RegisterRelay(func() int { return 4 }, func() uint64 { return 9 }, func() uint64 { return 3 })
	ready := errors.New("catalog not loaded")
	s, err := Listen(Options{Addr: "127.0.0.1:0", Metrics: m, Ready: func(context.Context) error { return ready }})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	defer func() {
		require.NoError(t, s.Shutdown(context.Background()))
		require.NoError(t, <-done)
	}()
	base := "http://" + s.Addr().String()

	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	code, _ := get("/healthz")
	require.Equal(t, 200, code)
	code, body := get("/readyz")
	require.Equal(t, 503, code)
	require.Contains(t, body, "catalog not loaded")
	ready = nil
	code, _ = get("/readyz")
	require.Equal(t, 200, code)
	code, _ = get("/debug/pprof/")
	require.Equal(t, 404, code, "pprof is off unless enabled")

	m.Statements.WithLabelValues("rejected", "select").Add(3)
	m.Rejections.WithLabelValues("unbounded").Inc()
	m.StatementDuration.Observe(0.0002)
	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	for _, name := range []string{
		"tenantguard_statements_total", "tenantguard_rejections_total", "tenantguard_statement_duration_seconds",
		"tenantguard_rewrite_cache_hits_total", "tenantguard_rewrite_cache_misses_total",
		"tenantguard_client_connections", "tenantguard_upstream_connections", "tenantguard_policy_reloads_total",
		"go_goroutines", "process_resident_memory_bytes",
	} {
		require.Contains(t, families, name)
	}
	st := families["tenantguard_statements_total"].GetMetric()
	require.Len(t, st, 1)
	require.Equal(t, 3.0, st[0].GetCounter().GetValue())
	require.Equal(t, uint64(1), families["tenantguard_statement_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleCount())
	require.Equal(t, 4.0, families["tenantguard_event_loop_sessions"].GetMetric()[0].GetGauge().GetValue())
	require.Equal(t, 9.0, families["tenantguard_event_loop_handbacks_total"].GetMetric()[0].GetCounter().GetValue())
	require.Equal(t, 3.0, families["tenantguard_event_loop_reentries_total"].GetMetric()[0].GetCounter().GetValue())
}
