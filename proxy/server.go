package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Server accepts PostgreSQL clients and relays each to the upstream.
type Server struct {
	cfg       Config
	log       *zap.Logger
	clientTLS *tls.Config // nil: SSLRequest is answered 'N'
	upTLS     *tls.Config // nil: upstream sslmode=disable

	nextID atomic.Uint64

	mu         sync.Mutex
	listeners  map[net.Listener]struct{}
	sessions   map[*Session]struct{}
	keys       map[string]*Session // BackendKeyData (pid+secret) -> session, for CancelRequest
	draining   bool
	addr       net.Addr
	shutdown   chan struct{}
	wg         sync.WaitGroup // connection goroutines
	idle       chan struct{}  // signalled when a session ends during drain
	loops      []*eventLoop   // empty: no event loop
	loopsBlock bool           // the loops wait in epoll_pwait on their threads
	handBacks  atomic.Uint64
	reentries  atomic.Uint64
}

// NewServer validates cfg, fills defaults and loads certificates.
func NewServer(cfg Config) (*Server, error) {
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.StartupTimeout <= 0 {
		cfg.StartupTimeout = DefaultStartupTimeout
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Upstream.Host == "" {
		return nil, errors.New("proxy: no upstream host configured")
	}
	if cfg.Upstream.Port == 0 {
		cfg.Upstream.Port = 5432
	}
	if cfg.Upstream.SSLMode == "" {
		cfg.Upstream.SSLMode = "prefer"
	}
	if !sslModes[cfg.Upstream.SSLMode] {
		return nil, fmt.Errorf("proxy: unknown upstream sslmode %q", cfg.Upstream.SSLMode)
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		listeners: map[net.Listener]struct{}{},
		sessions:  map[*Session]struct{}{},
		keys:      map[string]*Session{},
		shutdown:  make(chan struct{}),
		idle:      make(chan struct{}, 1),
	}
	if n := cfg.EventLoops; n >= 0 && eventLoopsAvailable {
		procs := runtime.GOMAXPROCS(0)
		if n == 0 {
			n = max(1, blockingProcs(procs))
		}
		// All the loops block, or none: more loops than processors to give
		// them park, every one.
		s.loopsBlock = n <= blockingProcs(procs) && asyncPreemption(os.Getenv("GODEBUG"))
		s.loops = newEventLoops(n, s.loopsBlock, s.log)
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, errors.New("proxy: TLS needs both a certificate and a key file")
	}
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("proxy: load TLS certificate: %w", err)
		}
		s.clientTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	var err error
	if s.upTLS, err = cfg.Upstream.tlsConfig(); err != nil {
		return nil, err
	}
	return s, nil
}

// ListenAndServe listens on Config.ListenAddr and calls Serve.
func (s *Server) ListenAndServe(ctx context.Context) error {
	l, err := net.Listen("tcp", s.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("proxy: listen: %w", err)
	}
	return s.Serve(ctx, l)
}

// Serve accepts connections on l until ctx is done or Shutdown is called,
// and closes l. After Shutdown it returns ErrServerClosed and leaves open
// sessions to Shutdown's drain; when ctx ends it closes every session at
// once and returns ctx.Err().
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.addr = l.Addr()
	s.mu.Unlock()
	s.log.Info("proxy listening", zap.Stringer("addr", l.Addr()), zap.String("upstream", s.cfg.Upstream.Addr()))

	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			l.Close()
		case <-s.shutdown:
			l.Close()
		case <-stop:
		}
	}()
	var tempDelay time.Duration
	for {
		conn, err := l.Accept()
		if err != nil {
			select {
			case <-s.shutdown:
				s.forget(l)
				return ErrServerClosed
			default:
			}
			if ctx.Err() != nil {
				s.forget(l)
				s.closeAll()
				s.wg.Wait()
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				time.Sleep(tempDelay)
				continue
			}
			s.forget(l)
			return fmt.Errorf("proxy: accept: %w", err)
		}
		tempDelay = 0
		s.mu.Lock()
		if s.draining {
			s.mu.Unlock()
			conn.Close()
			continue
		}
		sess := newSession(s, conn)
		s.sessions[sess] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			sess.run(ctx)
			s.endSession(sess)
		}()
	}
}

func (s *Server) forget(l net.Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

func (s *Server) endSession(sess *Session) {
	sess.mu.Lock()
	key := sess.keyString
	sess.mu.Unlock()
	s.mu.Lock()
	delete(s.sessions, sess)
	if key != "" && s.keys[key] == sess {
		delete(s.keys, key)
	}
	draining := s.draining
	s.mu.Unlock()
	if draining {
		select {
		case s.idle <- struct{}{}:
		default:
		}
	}
}

func (s *Server) registerKey(sess *Session, key string) {
	s.mu.Lock()
	s.keys[key] = sess
	s.mu.Unlock()
}

func (s *Server) lookupKey(key string) *Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys[key]
}

func (s *Server) closeAll() {
	s.mu.Lock()
	list := make([]*Session, 0, len(s.sessions))
	for sess := range s.sessions {
		list = append(list, sess)
	}
	s.mu.Unlock()
	for _, sess := range list {
		sess.terminate(&ProtocolError{Code: CodeAdminShutdown, Message: "terminating connection: the proxy is shutting down"})
	}
}

// Shutdown drains the server: it stops accepting, closes each session as
// soon as it is idle (outside a transaction, with no query in flight), and
// waits for the rest until ctx is done or DrainTimeout passes, then closes
// what is left. Clients of closed sessions receive FATAL 57P01.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.draining {
		s.draining = true
		close(s.shutdown)
	}
	for l := range s.listeners {
		l.Close()
	}
	list := make([]*Session, 0, len(s.sessions))
	for sess := range s.sessions {
		list = append(list, sess)
	}
	s.mu.Unlock()
	s.log.Info("proxy draining", zap.Int("sessions", len(list)))
	for _, sess := range list {
		sess.startDrain()
	}
	timer := time.NewTimer(s.cfg.DrainTimeout)
	defer timer.Stop()
	for s.ActiveSessions() > 0 {
		select {
		case <-s.idle:
		case <-ctx.Done():
			s.closeAll()
			s.wg.Wait()
			return fmt.Errorf("proxy: drain: %w", ctx.Err())
		case <-timer.C:
			s.closeAll()
			s.wg.Wait()
			return fmt.Errorf("proxy: drain: sessions still open after %s", s.cfg.DrainTimeout)
		}
	}
	s.wg.Wait()
	return nil
}

// EventLoops returns the number of event loops relaying sessions (0: every
// session is relayed by goroutines of its own).
func (s *Server) EventLoops() int { return len(s.loops) }

// EventLoopsBlock reports whether the event loops may wait on threads of
// their own (GOMAXPROCS leaves the spare processors after all of them, see
// spareProcs) rather than park on the runtime's poller. Each loop takes a processor when it
// starts, if GOMAXPROCS at that moment still leaves the spare ones after it
// (counting every server's loops), and gives it back when GOMAXPROCS has
// been lowered since.
func (s *Server) EventLoopsBlock() bool { return s.loopsBlock }

// spareProcs is how many processors blocking event loops leave to
// everything else (new sessions, TLS sessions, the audit flusher, the admin
// server, timers): one, and from four processors on as many more as the
// garbage collector may run dedicated mark workers on (a quarter of them,
// rounded up from a half), which would otherwise take the spare one for a
// whole mark phase.
func spareProcs(procs int) int {
	if procs < 4 {
		return 1 // below four the collector runs no dedicated worker
	}
	return 1 + (procs+2)/4
}

// blockingProcs is how many of procs processors blocking event loops may
// hold: those spareProcs leaves.
func blockingProcs(procs int) int { return procs - spareProcs(procs) }

// asyncPreemption reports whether the runtime can preempt a goroutine by
// signalling its thread, given the GODEBUG environment variable: a blocking
// event loop relies on it. As in the runtime, the last asyncpreemptoff
// setting wins and any non-zero number turns it off. Settings compiled in
// with //go:debug are not seen; tenantguard has none.
func asyncPreemption(godebug string) bool {
	on := true
	for _, kv := range strings.Split(godebug, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(kv), "asyncpreemptoff="); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			on = err == nil && n == 0
		}
	}
	return on
}

// LoopSessions returns the number of sessions the event loops hold now.
func (s *Server) LoopSessions() int {
	n := 0
	for _, l := range s.loops {
		n += l.sessions()
	}
	return n
}

// HandBacks returns how many sessions left an event loop for goroutines of
// their own since the server started.
func (s *Server) HandBacks() uint64 { return s.handBacks.Load() }

// Reentries returns how many times a session handed back by its event loop
// went back to it since the server started.
func (s *Server) Reentries() uint64 { return s.reentries.Load() }

// Addr returns the address of the most recent listener, or nil before Serve.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// ActiveSessions returns the number of client connections being served,
// including those still in startup.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}
