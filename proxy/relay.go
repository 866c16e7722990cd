package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// relay relays the session in its event loop while it can, and otherwise
// runs the two message loops (TLS, no loops, or after a hand-back) until
// either side ends or both can stop at a message boundary to go back to the
// loop. It makes sure both connections are closed and both goroutines have
// returned.
func (s *Session) relay() {
	for {
		if s.enterLoop() {
			<-s.lc.handback
			if !s.leaveLoop() {
				return
			}
			s.loopLeft++
			s.reentryAfter = time.Now().Add(reentryBackoff(s.loopLeft))
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.frontendLoop()
		}()
		again := s.backendLoop()
		wg.Wait()
		if !again {
			return
		}
		// Both stopped between messages: nothing is read until the loop
		// (or, if it cannot take the session, the goroutines) reads again.
		s.mu.Lock()
		client := s.client
		s.mu.Unlock()
		_ = client.SetReadDeadline(time.Time{})
		s.reentryFails = 0
		// If the loop cannot take it (no descriptors, closing), the
		// goroutines carry on and try again only after a wait.
		s.reentryAfter = time.Now().Add(reentryBackoff(s.loopLeft + 1))
	}
}

// reentryBackoff is the wait before the session's relay goroutines try to
// go back to the event loop after its n-th hand-back: at once after the
// first (a message over 64 KiB), then 100 ms doubling up to 10 s, so that a
// client that keeps falling behind settles on its goroutines.
func reentryBackoff(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	return min(10*time.Second, 100*time.Millisecond<<min(n-2, 10))
}

// States of Session.reentry.
const (
	reentryNone      int32 = iota
	reentryRequested       // the backend goroutine waits for the frontend's answer
	reentryCancelled       // it stopped waiting: the frontend only resumes reading
)

// reentryWait bounds the backend goroutine's wait for the frontend one,
// which may be busy (a hook, a write the server is slow to take).
const reentryWait = 20 * time.Millisecond

// stopForLoop runs in the backend relay goroutine at a ReadyForQuery with
// nothing more buffered from the upstream: if the session came from the
// event loop and may go back, it stops the frontend goroutine's read (a
// read deadline in the past) and reports true when that goroutine stopped
// between two messages; the backend goroutine then returns too.
func (s *Session) stopForLoop() bool {
	if time.Now().Before(s.reentryAfter) {
		return false
	}
	if s.reentryDone == nil {
		s.reentryDone = make(chan bool, 1)
	}
	// Under mu, with the check: terminate sets closing under mu before its
	// lingering close sets a deadline of its own, which this must not undo.
	s.mu.Lock()
	if s.closing || s.draining || s.termPending {
		s.mu.Unlock()
		return false
	}
	s.reentry.Store(reentryRequested)
	_ = s.client.SetReadDeadline(time.Unix(1, 0))
	s.mu.Unlock()
	t := time.NewTimer(reentryWait)
	defer t.Stop()
	select {
	case stopped := <-s.reentryDone:
		if stopped {
			return true
		}
	case <-t.C:
		if !s.reentry.CompareAndSwap(reentryRequested, reentryCancelled) {
			// The frontend goroutine answered meanwhile.
			if <-s.reentryDone {
				return true
			}
		}
	}
	// Refused (a message half read) or not answered (the frontend busy):
	// wait longer after each such attempt.
	s.reentryFails++
	s.reentryAfter = time.Now().Add(reentryBackoff(s.loopLeft + s.reentryFails))
	return false
}

// answerReentry runs in the frontend relay goroutine when its read failed
// with a deadline, which in the relay is only ever stopForLoop's: a request
// (stop between messages, unless a large message is half read), a cancelled
// one, or one already answered (read on). It reports whether to stop.
func (s *Session) answerReentry(fr *frameReader) (stop bool) {
	for {
		switch st := s.reentry.Load(); st {
		case reentryRequested:
			if !s.reentry.CompareAndSwap(st, reentryNone) {
				continue
			}
			if fr.pending {
				s.resumeReading()
				s.reentryDone <- false
				return false
			}
			// What the relay holds for the upstream goes out first.
			if !s.sendUpstream(nil, nil, true) {
				s.reentryDone <- false
				return true // the session is over
			}
			s.cr.clearDeadline()
			s.reentryDone <- true
			return true
		case reentryCancelled:
			if !s.reentry.CompareAndSwap(st, reentryNone) {
				continue
			}
			s.resumeReading()
			return false
		default:
			// The deadline of a request answered already (set after
			// the answer): read on.
			s.resumeReading()
			return false
		}
	}
}

// resumeReading clears the relay's read deadline on the client, unless the
// session is closing: terminate's lingering close owns the deadline then.
func (s *Session) resumeReading() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return
	}
	_ = s.client.SetReadDeadline(time.Time{})
	s.cr.clearDeadline()
}

// frontendLoop frames client messages and forwards them upstream. Every
// message is framed (never blindly copied) so that hooks can see it and no
// oversized or malformed message reaches the server.
func (s *Session) frontendLoop() {
	if !s.sendUpstream(nil, nil, true) { // what the event loop left unwritten
		return
	}
	fr := newFrameReader(s.cr, s.srv.cfg.MaxMessageSize)
	for {
		typ, body, err := fr.next()
		if err != nil {
			// A deadline is stopForLoop's, unless the session is closing
			// (terminate's lingering close), or it has no loop (TLS).
			if errors.Is(err, os.ErrDeadlineExceeded) && s.lc != nil && !s.isClosing() {
				if s.answerReentry(fr) {
					return
				}
				continue
			}
			var pe *ProtocolError
			if errors.As(err, &pe) {
				s.log.Info("client protocol error", zap.Error(err))
				s.terminate(err)
				return
			}
			s.clientGone(err)
			return
		}
		if !knownFrontend(typ) {
			err := protocolErrorf(CodeProtocolViolation, "invalid frontend message type %d", typ)
			s.log.Info("client protocol error", zap.Error(err))
			s.terminate(err)
			return
		}
		if !s.frontendMessage(typ, body) {
			return
		}
	}
}

// frontendMessage passes one whole client message through the hooks and
// upstream. It reports false when the session is over (or, in the event
// loop, must leave it to end).
func (s *Session) frontendMessage(typ byte, body []byte) bool {
	if hooks := s.srv.cfg.Hooks; hooks != nil {
		v, err := hooks.OnFrontend(s, Message{Type: typ, Body: body, Len: len(body)})
		if err != nil {
			s.log.Info("session ended by frontend hook", zap.Error(err))
			s.end(err)
			return false
		}
		if v.Reply != nil {
			if err := s.writeClientFlush(v.Reply); err != nil {
				s.end(nil)
				return false
			}
		}
		if v.Replace != nil {
			return s.accountAll(v.Replace) && s.sendUpstream(v.Replace, nil, false)
		}
	}
	if !s.account(typ) {
		return false
	}
	hdr := &s.frontendHdr
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(body)+4))
	if !s.sendUpstream(hdr[:], body, typ == MsgTerminate) {
		return false
	}
	if typ == MsgTerminate {
		s.end(nil)
		return false
	}
	return true
}

// sendUpstream writes a message (a and b concatenated) to the upstream
// buffer, flushing unless the next client message is buffered whole (the
// relay is about to write it too), or when flushNow. It reports false when
// the session is over.
func (s *Session) sendUpstream(a, b []byte, flushNow bool) bool {
	s.uwMu.Lock()
	_, err := s.uw.Write(a)
	if err == nil && len(b) > 0 {
		_, err = s.uw.Write(b)
	}
	if err == nil && (flushNow || !s.cr.wholeMessageBuffered()) {
		err = s.uw.Flush()
	}
	s.uwMu.Unlock()
	if err != nil {
		s.upstreamGone(err)
		return false
	}
	return true
}

// account records a message about to go upstream for the drain logic and
// reports false when the session is closing and the message must not be sent.
func (s *Session) account(typ byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	switch typ {
	case MsgQuery, MsgSync, MsgFunctionCall:
		s.pending++
		s.unsynced = false
	case MsgParse, MsgBind, MsgDescribe, MsgExecute, MsgClose, MsgFlush:
		s.unsynced = true
	}
	return true
}

// accountAll accounts every message of an encoded sequence.
func (s *Session) accountAll(b []byte) bool {
	for len(b) >= 5 {
		if !s.account(b[0]) {
			return false
		}
		n := int(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || n+1 > len(b) {
			break
		}
		b = b[n+1:]
	}
	return !s.isClosing()
}

// clientGone handles the client's connection ending without Terminate: a
// query still running upstream is cancelled (the server would otherwise run
// it to completion), then the upstream connection is closed.
func (s *Session) clientGone(err error) {
	s.mu.Lock()
	closing := s.closing
	busy := (s.pending > 0 || s.unsynced) && !s.backendFatal
	key := s.keyBytes
	s.mu.Unlock()
	if closing {
		return
	}
	s.log.Debug("client disconnected", zap.Bool("query_in_flight", busy), zap.Bool("clean", errors.Is(err, io.EOF)))
	if busy && key != nil {
		if err := s.srv.sendCancel(key, s.UpstreamTLS); err != nil {
			s.log.Info("cancel after client disconnect failed", zap.Error(err))
		}
	}
	s.terminate(nil)
}

// upstreamGone handles a failed upstream read or write: unless the session
// is already closing, or the server already sent the client a FATAL error,
// the client is told with SQLSTATE 08006.
func (s *Session) upstreamGone(err error) {
	s.mu.Lock()
	closing, fatal := s.closing, s.backendFatal
	s.mu.Unlock()
	if closing {
		return
	}
	s.log.Info("upstream connection lost", zap.Error(err))
	if fatal {
		s.terminate(nil)
		return
	}
	s.terminate(&ProtocolError{Code: CodeConnectionFailure, Message: "the connection to the upstream server was lost"})
}

// backendLoop streams upstream messages to the client. Only the 5-byte
// header of most messages is examined; the body is copied straight from the
// read buffer to the write buffer (DataRow, CopyData are never decoded).
// ReadyForQuery, ErrorResponse and BackendKeyData are read whole because the
// session tracks them, and so are types a hook inspects. It reports true
// when it stopped, with the frontend loop, to go back to the event loop.
func (s *Session) backendLoop() (again bool) {
	if err := s.writeClientFlush(nil); err != nil { // what the event loop left unwritten
		s.clientWriteFailed(err)
		return false
	}
	ur := s.ur
	var body []byte
	for {
		hdr, err := ur.Peek(5)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				err = io.ErrUnexpectedEOF
			}
			s.upstreamGone(err)
			return false
		}
		typ := hdr[0]
		n := int(binary.BigEndian.Uint32(hdr[1:5]))
		if n < 4 || n > maxBackendMessage {
			s.log.Warn("upstream protocol error", zap.Int("length", n))
			s.terminate(protocolErrorf(CodeConnectionFailure, "the upstream server sent an invalid message"))
			return false
		}
		interest := s.interest[typ]
		builtin := typ == MsgReadyForQuery || typ == MsgErrorResponse || typ == MsgBackendKeyData
		if !builtin && interest != Inspect {
			if interest == Notify {
				v, err := s.srv.cfg.Hooks.OnBackend(s, Message{Type: typ, Len: n - 4})
				if !s.applyBackendVerdict(v, err) {
					return false
				}
				if v.Replace != nil {
					// The hook drops (or replaces) the message unread.
					if _, err := ur.Discard(1 + n); err != nil {
						s.upstreamGone(err)
						return false
					}
					if len(v.Replace) > 0 {
						if err := s.writeClient(v.Replace, nil, typ, false); err != nil {
							s.clientWriteFailed(err)
							return false
						}
					}
					continue
				}
			}
			if err := s.streamMessage(n); err != nil {
				s.streamFailed(err)
				return false
			}
			continue
		}
		// Read the whole message.
		if _, err := ur.Discard(5); err != nil {
			s.upstreamGone(err)
			return false
		}
		if cap(body) < n-4 {
			body = make([]byte, n-4)
		}
		body = body[:n-4]
		if _, err := io.ReadFull(ur, body); err != nil {
			s.upstreamGone(io.ErrUnexpectedEOF)
			return false
		}
		if !s.backendMessage(typ, body, interest) {
			return false
		}
		if typ == MsgReadyForQuery && s.lc != nil && ur.Buffered() == 0 && s.stopForLoop() {
			return true // back to the event loop (relay)
		}
		// Large one-off inspected messages must not pin memory.
		if cap(body) > 1<<16 {
			body = nil
		}
	}
}

// backendMessage handles one whole upstream message: the session's own
// bookkeeping (ReadyForQuery, ErrorResponse, BackendKeyData), the hook for
// the type's interest, and the write to the client. It reports false when
// the session is over (or, in the event loop, must leave it to end).
func (s *Session) backendMessage(typ byte, body []byte, interest Interest) bool {
	drainNow := false
	switch typ {
	case MsgReadyForQuery:
		s.mu.Lock()
		s.pending--
		if len(body) > 0 {
			s.txStatus = body[0]
		}
		drainNow = s.draining && s.idleLocked()
		s.mu.Unlock()
	case MsgErrorResponse:
		if isFatal(body) {
			s.mu.Lock()
			s.backendFatal = true
			s.mu.Unlock()
		}
	case MsgBackendKeyData:
		s.mu.Lock()
		first := s.keyBytes == nil && len(body) >= 8
		if first {
			s.keyBytes = append([]byte(nil), body...)
			s.keyString = string(body)
		}
		s.mu.Unlock()
		if first {
			s.srv.registerKey(s, string(body))
		}
	default:
		if interest == Notify { // shown without its body, as when streamed
			v, err := s.srv.cfg.Hooks.OnBackend(s, Message{Type: typ, Len: len(body)})
			if !s.applyBackendVerdict(v, err) {
				return false
			}
			if v.Replace != nil {
				return s.writeClientOrGone(v.Replace, nil, typ, false)
			}
			return s.writeClientOrGone(nil, body, typ, false)
		}
	}
	if interest != Ignore { // types the relay reads anyway are shown whole even for Notify
		v, err := s.srv.cfg.Hooks.OnBackend(s, Message{Type: typ, Body: body, Len: len(body)})
		if !s.applyBackendVerdict(v, err) {
			return false
		}
		if v.Replace != nil {
			return s.writeClientOrGone(v.Replace, nil, typ, false)
		}
	}
	if !s.writeClientOrGone(nil, body, typ, drainNow) {
		return false
	}
	if drainNow {
		s.end(errDraining)
		return false
	}
	return true
}

// writeClientOrGone is writeClient ending the session on failure.
func (s *Session) writeClientOrGone(raw, body []byte, typ byte, flushNow bool) bool {
	if err := s.writeClient(raw, body, typ, flushNow); err != nil {
		s.clientWriteFailed(err)
		return false
	}
	return true
}

// writeClient writes raw (complete messages) or a message of type typ with
// body to the client buffer, flushing when the upstream has nothing more
// buffered, or when flushNow.
func (s *Session) writeClient(raw, body []byte, typ byte, flushNow bool) error {
	s.cwMu.Lock()
	defer s.cwMu.Unlock()
	var err error
	if raw != nil {
		_, err = s.cw.Write(raw)
	} else {
		hdr := s.backendHdr[:]
		hdr[0] = typ
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(body)+4))
		if _, err = s.cw.Write(hdr); err == nil {
			_, err = s.cw.Write(body)
		}
	}
	if err == nil && (flushNow || s.ur.Buffered() == 0) {
		err = s.cw.Flush()
	}
	return err
}

// errClientWrite marks a failed write to the client inside streamMessage.
type errClientWrite struct{ err error }

func (e errClientWrite) Error() string { return "proxy: write to client: " + e.err.Error() }

// streamMessage copies one message of length n (header not yet consumed)
// from the upstream reader to the client writer through the reader's own
// buffer, without allocating.
func (s *Session) streamMessage(n int) error {
	ur := s.ur
	s.cwMu.Lock()
	defer s.cwMu.Unlock()
	rem := n + 1 // type byte + length-counted bytes
	for rem > 0 {
		k := ur.Buffered()
		if k == 0 {
			k = min(rem, ur.Size())
		} else {
			k = min(k, rem, ur.Size()) // the event loop may have left more in a larger buffer
		}
		b, err := ur.Peek(k)
		if len(b) > 0 {
			if _, werr := s.cw.Write(b); werr != nil {
				return errClientWrite{werr}
			}
			_, _ = ur.Discard(len(b))
			rem -= len(b)
		}
		if err != nil && rem > 0 {
			return err
		}
	}
	if ur.Buffered() == 0 {
		if err := s.cw.Flush(); err != nil {
			return errClientWrite{err}
		}
	}
	return nil
}

func (s *Session) streamFailed(err error) {
	var cw errClientWrite
	if errors.As(err, &cw) {
		s.clientWriteFailed(cw.err)
		return
	}
	s.upstreamGone(io.ErrUnexpectedEOF)
}

// clientWriteFailed: the client went away while results were streaming.
func (s *Session) clientWriteFailed(err error) {
	s.clientGone(err)
}

// applyBackendVerdict sends a hook's Reply upstream and reports false when
// the hook ended the session.
func (s *Session) applyBackendVerdict(v Verdict, err error) bool {
	if err != nil {
		s.log.Info("session ended by backend hook", zap.Error(err))
		s.end(err)
		return false
	}
	if v.Reply != nil {
		if !s.accountAll(v.Reply) {
			return false
		}
		return s.sendUpstream(v.Reply, nil, true)
	}
	return true
}

// isFatal reports whether an ErrorResponse body has severity FATAL or PANIC.
func isFatal(body []byte) bool {
	for len(body) > 1 {
		code := body[0]
		i := bytes.IndexByte(body[1:], 0)
		if i < 0 {
			return false
		}
		val := body[1 : 1+i]
		if code == 'V' || code == 'S' {
			return string(val) == "FATAL" || string(val) == "PANIC"
		}
		body = body[2+i:]
	}
	return false
}
