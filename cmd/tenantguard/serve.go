package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"go.uber.org/zap"

	"github.com/tenantguard/tenantguard/config"
	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/admin"
	"github.com/tenantguard/tenantguard/proxy/audit"
	"github.com/tenantguard/tenantguard/proxy/catalog"
	"github.com/tenantguard/tenantguard/proxy/guard"
	"github.com/tenantguard/tenantguard/rewriter"
)

func newServeCmd() *cobra.Command {
	v := viper.New()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy",
		Long: `Run the proxy. Every flag can also be set in the config file (--config) and as a
TENANTGUARD_<NAME> environment variable (dashes and dots become underscores,
e.g. TENANTGUARD_UPSTREAM, TENANTGUARD_AUDIT_FILE).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(v)
			if err != nil {
				return usageError{err}
			}
			return serve(cmd.Context(), cfg)
		},
	}
	config.BindFlags(v, cmd.Flags())
	return cmd
}

// serve runs the proxy until SIGINT or SIGTERM, then drains: no new
// connections, open sessions may finish until the drain timeout. A second
// SIGINT or SIGTERM stops at once. SIGHUP reopens the audit file and reloads
// the policy.
func serve(ctx context.Context, cfg *config.Config) error {
	if ctx == nil {
		ctx = context.Background()
	}
	log, err := newLogger(cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return usageError{fmt.Errorf("config: log-level: %w", err)}
	}
	defer func() { _ = log.Sync() }()

	pol, err := policy.Load(cfg.Policy)
	if err != nil {
		return usageError{err}
	}
	upstream, err := proxy.ParseUpstreamURL(cfg.Upstream)
	if err != nil {
		return usageError{err}
	}
	metrics := admin.NewMetrics()
	auditLog, err := audit.New(audit.Options{
		File:          cfg.AuditFile,
		Sample:        cfg.AuditSample,
		FlushInterval: cfg.AuditFlush,
		Decisions:     cfg.AuditDecisions,
		OnError: func(err error) {
			log.Error("audit write failed; the client's statements go on", zap.Error(err))
		},
		OnFailure: metrics.AuditWriteErrors.Inc,
	})
	if err != nil {
		return usageError{err}
	}
	defer auditLog.Close()

	holder := policy.NewHolder(pol)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// tenantguard's own connection reads the upstream catalog: at start, on
	// an interval and after every policy reload.
	refresher := catalog.NewRefresher(cfg.Upstream, cfg.CatalogRefresh, log, func(c *rewriter.Catalog, err error) {
		ev := &audit.Event{Event: audit.EventCatalogRefresh, Result: "ok"}
		if err != nil {
			ev.Result, ev.Error = "error", err.Error()
			metrics.CatalogRefreshes.WithLabelValues("error").Inc()
		} else {
			metrics.CatalogRefreshes.WithLabelValues("ok").Inc()
		}
		auditLog.Log(ev)
	})
	refreshDone := make(chan struct{})
	go func() {
		defer close(refreshDone)
		_ = refresher.Run(ctx)
	}()
	defer func() { cancel(); <-refreshDone }()

	watcher, err := policy.Watch(ctx, cfg.Policy, holder, func(p *policy.Policy, err error) {
		ev := &audit.Event{Event: audit.EventPolicyReload, Result: "ok"}
		if err != nil {
			ev.Result, ev.Error = "error", err.Error()
			metrics.PolicyReloads.WithLabelValues("error").Inc()
			log.Error("policy reload refused; the previous policy stays in force", zap.Error(err))
		} else {
			metrics.PolicyReloads.WithLabelValues("ok").Inc()
			log.Info("policy reloaded", zap.String("file", p.Source))
			refresher.Trigger() // discover may have changed what the catalog must say
		}
		auditLog.Log(ev)
	})
	if err != nil {
		return err
	}

	procs := setProcs(cfg.Procs) // before NewServer, which sizes its event loops by it
	srv, err := proxy.NewServer(proxy.Config{
		ListenAddr:     cfg.Listen,
		Upstream:       upstream,
		TLSCertFile:    cfg.TLSCert,
		TLSKeyFile:     cfg.TLSKey,
		MaxMessageSize: cfg.MaxMessageSize,
		StartupTimeout: cfg.StartupTimeout,
		DrainTimeout:   cfg.DrainTimeout,
		EventLoops:     cfg.EventLoops,
		Logger:         log,
		Hooks: guard.New(guard.Options{
			Policies: holder,
			Catalog:  refresher.Current,
			// A relation the catalog does not list is refused; reload it
			// now in case the relation was just created.
			ReloadCatalog: refresher.Trigger,
			Database:      catalogDatabase(upstream),
			KeepSimple:    !cfg.PrepareSimple,
			Audit:         auditLog,
			Metrics:       metrics,
			Logger:        log,
		}),
	})
	if err != nil {
		return usageError{err}
	}
	metrics.RegisterRelay(srv.LoopSessions, srv.HandBacks, srv.Reentries)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}

	var adminSrv *admin.Server
	if cfg.Admin != "" {
		adminSrv, err = admin.Listen(admin.Options{
			Addr:    cfg.Admin,
			Metrics: metrics,
			Pprof:   cfg.Pprof,
			Ready: func(ctx context.Context) error {
				if holder.Load() == nil {
					return errors.New("no policy loaded")
				}
				if refresher.Current() == nil {
					return errors.New("upstream catalog not loaded")
				}
				return pingUpstream(ctx, upstream.Addr())
			},
		})
		if err != nil {
			ln.Close()
			return err
		}
		go func() {
			if err := adminSrv.Serve(); err != nil {
				log.Error("admin listener failed", zap.Error(err))
			}
		}()
		defer adminSrv.Shutdown(context.Background())
	}

	log.Info("tenantguard serving",
		zap.String("listen", ln.Addr().String()), zap.String("upstream", upstream.Addr()),
		zap.String("admin", cfg.Admin), zap.String("policy", cfg.Policy), zap.String("mode", string(pol.Mode)),
		zap.Int("procs", procs), zap.Int("event_loops", srv.EventLoops()), zap.Bool("event_loops_block", srv.EventLoopsBlock()))

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()

	for {
		select {
		case err := <-served:
			return err
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				if err := auditLog.Reopen(); err != nil {
					log.Error("audit reopen failed", zap.Error(err))
				}
				watcher.Reload()
				continue
			}
			log.Info("draining: no new connections; open sessions may finish",
				zap.String("signal", sig.String()), zap.Int("sessions", srv.ActiveSessions()), zap.Duration("timeout", cfg.DrainTimeout))
			drainCtx, stop := context.WithTimeout(context.Background(), cfg.DrainTimeout)
			drained := make(chan error, 1)
			go func() { drained <- srv.Shutdown(drainCtx) }()
			select {
			case err := <-drained:
				stop()
				cancel()
				<-served
				if err != nil {
					log.Warn("drain ended with sessions still open; they were closed", zap.Error(err))
				}
				log.Info("stopped")
				return nil
			case sig := <-sigs:
				stop() // second signal: close everything now
				log.Warn("second signal: closing all sessions now", zap.String("signal", sig.String()))
				<-drained
				cancel()
				<-served
				return nil
			}
		}
	}
}

// pingUpstream checks that the upstream accepts TCP connections.
func pingUpstream(ctx context.Context, addr string) error {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("upstream %s does not answer: %w", addr, err)
	}
	return c.Close()
}

// catalogDatabase is the database tenantguard's own connection reads the
// catalog of (libpq's default: the user name).
func catalogDatabase(u proxy.UpstreamConfig) string {
	if u.Database != "" {
		return u.Database
	}
	return u.User
}
