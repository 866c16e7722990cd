package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Request codes of the untyped startup-phase packets.
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
	protocolMajor3    = 3
)

// errQuiet ends a session without telling the client (CancelRequest, a
// client that went away, an upstream error already relayed).
var errQuiet = errors.New("proxy: session ended")

// startup runs everything up to AuthenticationOk: the client's startup
// packet, TLS, the upstream dial and the authentication exchange.
func (s *Session) startup(ctx context.Context) error {
	cfg := &s.srv.cfg
	deadline := time.Now().Add(cfg.StartupTimeout)
	_ = s.client.SetDeadline(deadline)
	if err := s.readStartup(); err != nil {
		return err
	}
	if v, ok := s.Params["replication"]; ok && !isFalse(v) {
		return &ProtocolError{Code: CodeFeatureNotSupported, Message: "replication connections are not supported through the proxy"}
	}
	if cfg.Hooks != nil {
		if err := cfg.Hooks.OnStartup(s); err != nil {
			return err
		}
		for t := 0; t < 256; t++ {
			s.interest[t] = cfg.Hooks.BackendInterest(byte(t))
		}
		if rc, ok := cfg.Hooks.(RowCounter); ok && s.interest[MsgDataRow] == Notify {
			s.rows = rc
		}
	}
	s.srv.log.Info("client session", zap.Uint64("session", s.ID), zap.Stringer("client", s.ClientAddr), zap.String("user", s.Params["user"]),
		zap.String("database", s.Params["database"]), zap.Bool("client_tls", s.ClientTLS))
	cio := newSocketIO(s.client)
	s.cr = newConnReader(cio)
	s.cwMu.Lock() // terminate (Shutdown, from another goroutine) writes through it
	s.cw = newConnWriter(cio)
	s.cwMu.Unlock()

	first, err := s.connectUpstream(ctx, deadline)
	if err != nil {
		return err
	}
	if err := s.relayAuth(first); err != nil {
		return err
	}
	_ = s.client.SetDeadline(time.Time{})
	s.mu.Lock()
	_ = s.upstream.SetDeadline(time.Time{})
	s.relaying = true
	s.mu.Unlock()
	return nil
}

func isFalse(v string) bool {
	switch strings.ToLower(v) {
	case "false", "off", "no", "0":
		return true
	}
	return false
}

// readStartup reads startup-phase packets until a protocol 3 StartupMessage,
// answering SSLRequest and GSSENCRequest and routing CancelRequest. Reads
// are unbuffered so that no plaintext byte sent before the TLS handshake can
// be mistaken for encrypted data (CVE-2021-23214).
func (s *Session) readStartup() error {
	for {
		body, err := readStartupPacket(s.client)
		if err != nil {
			return err
		}
		code := binary.BigEndian.Uint32(body[:4])
		switch {
		case code == codeSSLRequest:
			if s.ClientTLS {
				return protocolErrorf(CodeProtocolViolation, "SSLRequest after the TLS handshake")
			}
			if s.srv.clientTLS == nil {
				if _, err := s.client.Write([]byte{'N'}); err != nil {
					return errQuiet
				}
				continue
			}
			if _, err := s.client.Write([]byte{'S'}); err != nil {
				return errQuiet
			}
			tc := tls.Server(s.client, s.srv.clientTLS)
			if err := tc.Handshake(); err != nil {
				s.log.Debug("client TLS handshake failed", zap.Error(err))
				return errQuiet
			}
			s.mu.Lock()
			s.client = tc
			s.mu.Unlock()
			s.ClientTLS = true
		case code == codeGSSENCRequest:
			if _, err := s.client.Write([]byte{'N'}); err != nil {
				return errQuiet
			}
		case code == codeCancelRequest:
			s.forwardCancel(body[4:])
			return errQuiet
		case code>>16 == protocolMajor3:
			s.ProtocolVersion = code
			return s.parseParams(body[4:])
		default:
			return &ProtocolError{Code: CodeFeatureNotSupported,
				Message: fmt.Sprintf("unsupported frontend protocol %d.%d: the proxy supports protocol 3", code>>16, code&0xffff)}
		}
	}
}

// readStartupPacket reads one length-prefixed startup packet; the returned
// body starts with the 4-byte request or protocol code.
func readStartupPacket(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errQuiet
		}
		return nil, protocolErrorf(CodeProtocolViolation, "incomplete startup packet")
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 8 || n > maxStartupPacket {
		return nil, protocolErrorf(CodeProtocolViolation, "invalid length of startup packet")
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, protocolErrorf(CodeProtocolViolation, "incomplete startup packet")
	}
	return body, nil
}

// parseParams parses the name/value pairs of a StartupMessage.
func (s *Session) parseParams(b []byte) error {
	s.Params = map[string]string{}
	for {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			return protocolErrorf(CodeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
		}
		if i == 0 {
			if len(b) != 1 {
				return protocolErrorf(CodeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
			}
			break
		}
		name := string(b[:i])
		b = b[i+1:]
		j := bytes.IndexByte(b, 0)
		if j < 0 {
			return protocolErrorf(CodeProtocolViolation, "invalid startup packet layout: missing value")
		}
		if _, dup := s.Params[name]; !dup {
			s.paramOrder = append(s.paramOrder, name)
		}
		s.Params[name] = string(b[:j])
		b = b[j+1:]
	}
	if s.Params["user"] == "" {
		return &ProtocolError{Code: "28000", Message: "no PostgreSQL user name specified in startup packet"}
	}
	return nil
}

// startupMessage encodes the StartupMessage forwarded upstream: the client's
// parameters in their original order, then any a hook added, sorted.
func (s *Session) startupMessage() []byte {
	buf := make([]byte, 8, 256)
	binary.BigEndian.PutUint32(buf[4:], s.ProtocolVersion)
	seen := map[string]bool{}
	add := func(k string) {
		v, ok := s.Params[k]
		if !ok || seen[k] {
			return
		}
		seen[k] = true
		buf = append(append(append(append(buf, k...), 0), v...), 0)
	}
	for _, k := range s.paramOrder {
		add(k)
	}
	extra := make([]string, 0)
	for k := range s.Params {
		if !seen[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	for _, k := range extra {
		add(k)
	}
	buf = append(buf, 0)
	binary.BigEndian.PutUint32(buf, uint32(len(buf)))
	return buf
}

// connectUpstream dials the upstream following libpq's sslmode rules and
// sends the StartupMessage. It returns the upstream's first message, read
// here so that allow/prefer can retry the other way when the server refuses
// the first attempt, as libpq does.
func (s *Session) connectUpstream(ctx context.Context, deadline time.Time) (frame, error) {
	mode := s.srv.cfg.Upstream.SSLMode
	attempts := []bool{true} // TLS?
	switch mode {
	case "disable":
		attempts = []bool{false}
	case "allow":
		attempts = []bool{false, true}
	case "prefer":
		attempts = []bool{true, false}
	}
	var lastErr error
	for i, useTLS := range attempts {
		last := i == len(attempts)-1
		conn, usedTLS, err := s.srv.dialUpstream(ctx, deadline, useTLS, mode == "prefer")
		if err != nil {
			lastErr = err
			continue
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			conn.Close()
			return frame{}, errQuiet
		}
		s.upstream = conn
		s.mu.Unlock()
		s.UpstreamTLS = usedTLS
		uio := newSocketIO(conn)
		s.ur = newConnReader(uio)
		s.uw = newConnWriter(uio)
		if _, err := s.uw.Write(s.startupMessage()); err == nil {
			err = s.uw.Flush()
		}
		f, err := readFrame(s.ur, maxAuthMessage)
		if err == nil && f.typ == MsgErrorResponse && !last && (mode == "allow" || mode == "prefer") {
			s.log.Debug("upstream refused the first connection attempt, retrying", zap.Bool("tls", usedTLS))
			conn.Close()
			continue
		}
		if err != nil {
			conn.Close()
			lastErr = err
			if !last {
				continue
			}
			break
		}
		return f, nil
	}
	s.log.Warn("upstream connect failed", zap.String("upstream", s.srv.cfg.Upstream.Addr()), zap.Error(lastErr))
	return frame{}, &ProtocolError{Code: CodeCannotConnect, Message: "could not connect to the upstream server"}
}

// dialUpstream opens a connection to the upstream, negotiating TLS when
// useTLS. With allowPlain (sslmode=prefer) a server answering 'N' is used
// unencrypted; otherwise 'N' is an error.
func (srv *Server) dialUpstream(ctx context.Context, deadline time.Time, useTLS, allowPlain bool) (net.Conn, bool, error) {
	up := srv.cfg.Upstream
	d := net.Dialer{Deadline: deadline}
	if up.ConnectTimeout > 0 {
		d.Timeout = up.ConnectTimeout
	}
	conn, err := d.DialContext(ctx, "tcp", up.Addr())
	if err != nil {
		return nil, false, fmt.Errorf("proxy: dial upstream: %w", err)
	}
	_ = conn.SetDeadline(deadline)
	if !useTLS || srv.upTLS == nil {
		return conn, false, nil
	}
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:], 8)
	binary.BigEndian.PutUint32(req[4:], codeSSLRequest)
	if _, err := conn.Write(req[:]); err != nil {
		conn.Close()
		return nil, false, fmt.Errorf("proxy: upstream SSLRequest: %w", err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		conn.Close()
		return nil, false, fmt.Errorf("proxy: upstream SSLRequest: %w", err)
	}
	switch answer[0] {
	case 'S':
		tc := tls.Client(conn, srv.upTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, false, fmt.Errorf("proxy: upstream TLS handshake: %w", err)
		}
		return tc, true, nil
	case 'N':
		if allowPlain {
			return conn, false, nil
		}
		conn.Close()
		return nil, false, errors.New("proxy: upstream server does not support SSL, but SSL was required")
	default:
		conn.Close()
		return nil, false, errors.New("proxy: upstream answered SSLRequest with an unexpected byte")
	}
}

// maxAuthMessage caps messages exchanged before authentication completes.
const maxAuthMessage = 1 << 20

// frame is a whole message read during startup, body owned by the frame.
type frame struct {
	typ  byte
	body []byte
}

func (f frame) encode(dst []byte) []byte {
	dst = append(dst, f.typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(dst[len(dst)-4:], uint32(len(f.body)+4))
	return append(dst, f.body...)
}

func readFrame(r *connReader, limit int) (frame, error) {
	typ, body, err := newFrameReader(r, limit).next()
	if err != nil {
		return frame{}, err
	}
	// A frame outlives the next read of r.
	return frame{typ: typ, body: append([]byte(nil), body...)}, nil
}

// Authentication request codes (AuthenticationXXX).
const (
	authOk                = 0
	authCleartext         = 3
	authMD5               = 5
	authGSS               = 7
	authGSSContinue       = 8
	authSSPI              = 9
	authSASL              = 10
	authSASLContinue      = 11
	authSASLFinal         = 12
	scramSHA256PlusSuffix = "-PLUS"
)

// authMethodName names the method of the server's first authentication
// request, for the audit trail.
func authMethodName(code uint32) string {
	switch code {
	case authOk:
		return "trust"
	case authCleartext:
		return "password"
	case authMD5:
		return "md5"
	case authGSS, authGSSContinue:
		return "gss"
	case authSSPI:
		return "sspi"
	case authSASL, authSASLContinue, authSASLFinal:
		return "scram-sha-256"
	}
	return "unknown"
}

// relayAuth passes the authentication exchange through until
// AuthenticationOk. Client responses are relayed as framed 'p' messages
// without decoding: their meaning depends on the request and only the two
// ends need it.
func (s *Session) relayAuth(f frame) error {
	var err error
	for {
		switch f.typ {
		case MsgAuthentication:
			if len(f.body) < 4 {
				return protocolErrorf(CodeProtocolViolation, "upstream sent a malformed authentication request")
			}
			code := binary.BigEndian.Uint32(f.body)
			if s.AuthMethod == "" {
				s.AuthMethod = authMethodName(code)
			}
			if code == authSASL {
				// Channel binding cannot cross the proxy: the client binds to
				// the proxy's TLS session, the server to its own.
				f.body = stripChannelBinding(f.body)
			}
			if err := s.writeClientFlush(f.encode(nil)); err != nil {
				return errQuiet
			}
			switch code {
			case authOk:
				return nil
			case authCleartext, authMD5, authGSS, authSSPI, authSASL, authSASLContinue:
				if err := s.relayAuthResponse(); err != nil {
					return err
				}
			case authGSSContinue:
				if len(f.body) > 4 {
					if err := s.relayAuthResponse(); err != nil {
						return err
					}
				}
			case authSASLFinal:
			default:
				return &ProtocolError{Code: CodeFeatureNotSupported, Message: fmt.Sprintf("authentication method %d is not supported through the proxy", code)}
			}
		case MsgErrorResponse:
			// The server refused (bad password, no such database): the
			// client gets the server's own error.
			_ = s.writeClientFlush(f.encode(nil))
			return errQuiet
		case 'v', 'N': // NegotiateProtocolVersion, NoticeResponse
			if err := s.writeClientFlush(f.encode(nil)); err != nil {
				return errQuiet
			}
		default:
			return protocolErrorf(CodeProtocolViolation, "upstream sent message type %q during authentication", f.typ)
		}
		if f, err = readFrame(s.ur, maxAuthMessage); err != nil {
			s.log.Debug("upstream read during authentication failed", zap.Error(err))
			return &ProtocolError{Code: CodeConnectionFailure, Message: "the upstream connection was lost during authentication"}
		}
	}
}

// relayAuthResponse forwards the client's answer to an authentication request.
func (s *Session) relayAuthResponse() error {
	f, err := readFrame(s.cr, min(s.srv.cfg.MaxMessageSize, maxAuthMessage))
	if err != nil {
		var pe *ProtocolError
		if errors.As(err, &pe) {
			return err
		}
		return errQuiet // the client hung up, e.g. psql going to prompt for a password
	}
	if f.typ == MsgTerminate {
		return errQuiet
	}
	if f.typ != MsgPassword {
		return protocolErrorf(CodeProtocolViolation, "expected an authentication response, got message type %q", f.typ)
	}
	if _, err := s.uw.Write(f.encode(nil)); err == nil {
		err = s.uw.Flush()
		if err == nil {
			return nil
		}
	}
	return &ProtocolError{Code: CodeConnectionFailure, Message: "the upstream connection was lost during authentication"}
}

// stripChannelBinding removes SCRAM-SHA-256-PLUS (and any other -PLUS
// mechanism) from an AuthenticationSASL body.
func stripChannelBinding(body []byte) []byte {
	out := append(make([]byte, 0, len(body)), body[:4]...)
	rest := body[4:]
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, 0)
		if i <= 0 {
			break
		}
		mech := rest[:i]
		rest = rest[i+1:]
		if !bytes.HasSuffix(mech, []byte(scramSHA256PlusSuffix)) {
			out = append(append(out, mech...), 0)
		}
	}
	return append(out, 0)
}

func (s *Session) writeClientFlush(b []byte) error {
	s.cwMu.Lock()
	defer s.cwMu.Unlock()
	if _, err := s.cw.Write(b); err != nil {
		return err
	}
	return s.cw.Flush()
}

// forwardCancel routes a client's CancelRequest (key = pid + secret, as
// the client saw it in BackendKeyData) to the session's upstream. Unknown
// keys are ignored silently, as PostgreSQL does.
func (s *Session) forwardCancel(key []byte) {
	target := s.srv.lookupKey(string(key))
	if target == nil {
		s.log.Debug("cancel request for an unknown key")
		return
	}
	if err := s.srv.sendCancel(key, target.UpstreamTLS); err != nil {
		s.log.Info("forward cancel request failed", zap.Error(err))
	}
}

// sendCancel opens a new upstream connection and sends a CancelRequest for
// key, over TLS when the session's upstream leg used TLS. Like libpq it waits
// for the server to close the connection, which means the request was read.
func (srv *Server) sendCancel(key []byte, useTLS bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), srv.cfg.StartupTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	conn, _, err := srv.dialUpstream(ctx, deadline, useTLS, true)
	if err != nil {
		return err
	}
	defer conn.Close()
	msg := make([]byte, 8, 8+len(key))
	binary.BigEndian.PutUint32(msg[0:], uint32(8+len(key)))
	binary.BigEndian.PutUint32(msg[4:], codeCancelRequest)
	msg = append(msg, key...)
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("proxy: send cancel request: %w", err)
	}
	_, _ = io.Copy(io.Discard, conn)
	return nil
}
