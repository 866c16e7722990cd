package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Session is one client connection and its upstream connection.
type Session struct {
	// ID numbers sessions within a Server, for logs.
	ID uint64
	// Params are the client's startup parameters (user, database, options,
	// application_name, ...), forwarded to the upstream unchanged unless a
	// hook changes them in OnStartup.
	Params map[string]string
	// ClientAddr is the client's remote address.
	ClientAddr net.Addr
	// ClientTLS is true when the client's TLS ends at the proxy.
	ClientTLS bool
	// UpstreamTLS is true when the upstream leg is encrypted.
	UpstreamTLS bool
	// AuthMethod is the method the upstream asked the client for (trust,
	// password, md5, scram-sha-256, gss, sspi); set during authentication.
	AuthMethod string
	// ProtocolVersion is the version code the client asked for (196608 = 3.0).
	ProtocolVersion uint32
	// State is free for the hooks' per-session data.
	State any

	srv        *Server
	log        sessionLog
	paramOrder []string
	interest   [256]Interest
	rows       RowCounter // the hooks, when they count rows in runs (event loop)

	client net.Conn // replaced by the TLS conn after SSLRequest
	cr     *connReader
	cw     *connWriter
	cwMu   sync.Mutex // guards cw: the backend loop writes, errors and hook replies too
	// backendHdr is scratch space for headers written under cwMu, kept here
	// so that it does not escape to the heap on every message; frontendHdr
	// is the same for the reader of client messages.
	backendHdr  [5]byte
	frontendHdr [5]byte
	upstream    net.Conn
	ur          *connReader
	uw          *connWriter
	uwMu        sync.Mutex // guards uw

	mu           sync.Mutex // guards the fields below and client/upstream swaps
	pending      int        // messages sent upstream that still owe a ReadyForQuery
	unsynced     bool       // extended-protocol messages sent since the last Sync
	txStatus     byte       // from the last ReadyForQuery: 'I', 'T' or 'E'
	relaying     bool       // authentication is over
	draining     bool
	closing      bool
	keyString    string // BackendKeyData body (pid + secret), set once
	keyBytes     []byte
	backendFatal bool // the upstream already sent the client a FATAL error
	closeOnce    sync.Once

	// The event loop (eventloop_linux.go). lc is set before the session
	// enters the loop and used by whichever goroutine relays the session.
	lc *loopConn
	// loopHeld (under mu): the loop owns the sockets, or is handing them
	// back; terminate then only records its error in termErr, and the
	// session's goroutine terminates once it has the sockets again.
	loopHeld    loopHold
	termPending bool
	termErr     error

	// Re-entry into the loop after a hand-back (relay.go): the backend
	// relay goroutine asks, the frontend one answers on reentryDone.
	reentry      atomic.Int32 // reentryNone, reentryRequested, reentryCancelled
	reentryDone  chan bool
	loopLeft     int       // hand-backs so far (the session's goroutines, in turn)
	reentryFails int       // attempts refused or unanswered since the last stop
	reentryAfter time.Time // no attempt before (backend relay goroutine)
}

// loopHold is where a session's sockets are.
type loopHold uint8

const (
	heldByRelay loopHold = iota // the relay goroutines (or startup)
	heldByLoop                  // the event loop
	handedBack                  // the loop let go; the session's goroutine takes them
)

func newSession(srv *Server, conn net.Conn) *Session {
	id := srv.nextID.Add(1)
	return &Session{
		ID:         id,
		ClientAddr: conn.RemoteAddr(),
		srv:        srv,
		log:        sessionLog{base: srv.log, id: id},
		client:     conn,
		pending:    1, // the startup owes the first ReadyForQuery
	}
}

// TxStatus returns the transaction status of the last ReadyForQuery the
// upstream sent: 'I' idle, 'T' in a transaction, 'E' in a failed
// transaction, or 0 before the first one.
func (s *Session) TxStatus() byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.txStatus
}

// InFlight reports how many ReadyForQuery messages the upstream still owes
// (one per Query, Sync and FunctionCall forwarded), and whether extended
// protocol messages were sent after the last Sync. A hook may answer the
// client directly (Verdict.Reply) only when nothing is in flight, or its
// reply would overtake earlier results.
func (s *Session) InFlight() (pending int, unsynced bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending, s.unsynced
}

// BackendPID returns the upstream backend's process id from BackendKeyData,
// or 0 before it was received.
func (s *Session) BackendPID() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.keyBytes) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(s.keyBytes)
}

func (s *Session) run(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() {
		s.terminate(&ProtocolError{Code: CodeAdminShutdown, Message: "terminating connection: the proxy is shutting down"})
	})
	defer stop()
	start := time.Now()
	s.log.Debug("client connected", zap.Stringer("client", s.ClientAddr))
	if err := s.startup(ctx); err != nil {
		if err == errQuiet {
			s.terminate(nil)
		} else {
			s.log.Info("session refused", zap.Stringer("client", s.ClientAddr), zap.Error(err))
			s.terminate(err)
		}
	} else {
		s.relay()
	}
	s.dropBuffers()
	if s.srv.cfg.Hooks != nil {
		s.srv.cfg.Hooks.OnEnd(s)
	}
	s.log.Debug("session ended", zap.Duration("duration", time.Since(start)))
}

// terminate ends the session once: it closes the upstream (which unblocks
// the backend loop), sends err to the client as a FATAL ErrorResponse when
// non-nil, and closes the client connection.
func (s *Session) terminate(err error) {
	if s.deferTerminate(err) {
		return
	}
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		up, client := s.upstream, s.client
		s.mu.Unlock()
		if up != nil {
			up.Close()
		}
		if err != nil {
			// A client that does not read must not hold the session open.
			_ = client.SetWriteDeadline(time.Now().Add(time.Second))
			s.cwMu.Lock()
			msg := encodeError(nil, err)
			if s.cw != nil {
				_, _ = s.cw.Write(msg)
				_ = s.cw.Flush()
			} else {
				_, _ = client.Write(msg)
			}
			s.cwMu.Unlock()
			var pe *ProtocolError
			if errors.As(err, &pe) && pe.Code != CodeAdminShutdown {
				lingeringClose(client)
			}
		}
		client.Close()
	})
}

// lingeringClose half-closes conn and discards what the client still sends
// for a moment, so that closing with unread input does not reset the
// connection before the client has read our error.
func lingeringClose(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
	_, _ = io.Copy(io.Discard, io.LimitReader(conn, 1<<20))
}

// deferTerminate records a terminate while the event loop holds the
// session's sockets (or is handing them back) and asks the loop to hand
// them back; it reports false, having marked the session closing, when the
// caller may terminate at once.
func (s *Session) deferTerminate(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loopHeld == heldByRelay {
		// Decided under the same lock as enterLoop's check: a session
		// being closed does not enter the loop.
		s.closing = true
		return false
	}
	if !s.termPending {
		s.termPending, s.termErr = true, err
		if s.loopHeld == heldByLoop {
			s.lc.loop.request(s, false)
		}
	}
	return true
}

// end ends the session from a message handler: at once in the relay
// goroutines; in the event loop, by handing the session back to its
// goroutine, which terminates it with err.
func (s *Session) end(err error) {
	if lc := s.lc; lc != nil && lc.active {
		lc.leave, lc.end, lc.endErr = true, true, err
		return
	}
	s.terminate(err)
}

func (s *Session) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// startDrain marks the session as draining and closes it at once if it is
// idle; otherwise the backend loop closes it at its next idle ReadyForQuery.
func (s *Session) startDrain() {
	s.mu.Lock()
	s.draining = true
	idle := s.idleLocked()
	s.mu.Unlock()
	if idle {
		s.terminate(errDraining)
	}
}

func (s *Session) idleLocked() bool {
	return s.relaying && s.pending <= 0 && !s.unsynced && s.txStatus == 'I'
}

var errDraining = &ProtocolError{Code: CodeAdminShutdown, Message: "terminating connection: the proxy is shutting down"}
