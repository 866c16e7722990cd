package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Frontend message types (protocol 3.0), for hooks and the relay.
const (
	MsgBind         = 'B'
	MsgClose        = 'C'
	MsgCopyData     = 'd'
	MsgCopyDone     = 'c'
	MsgCopyFail     = 'f'
	MsgDescribe     = 'D'
	MsgExecute      = 'E'
	MsgFlush        = 'H'
	MsgFunctionCall = 'F'
	MsgParse        = 'P'
	MsgPassword     = 'p' // PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse
	MsgQuery        = 'Q'
	MsgSync         = 'S'
	MsgTerminate    = 'X'
)

// Backend message types the relay inspects.
const (
	MsgAuthentication   = 'R'
	MsgBackendKeyData   = 'K'
	MsgCommandComplete  = 'C'
	MsgDataRow          = 'D'
	MsgErrorResponse    = 'E'
	MsgParameterStatus  = 'S'
	MsgReadyForQuery    = 'Z'
	MsgParamDescription = 't'
	MsgRowDescription   = 'T'
)

// frameReader splits a stream into typed protocol messages (1-byte type,
// 4-byte big-endian length that counts itself, body). The body is a view of
// the reader's buffer, or for a message larger than that buffer a reused
// buffer of its own: it is valid only until the next call of next.
type frameReader struct {
	r   *connReader
	max int // largest accepted message, header included
	buf []byte

	// A message larger than the read buffer whose body is still arriving
	// (its header consumed): next continues it after a read error such as
	// a deadline, so that an interrupted read loses nothing.
	pending bool
	ptyp    byte
	psize   int
	pgot    int
}

func newFrameReader(r *connReader, max int) *frameReader {
	return &frameReader{r: r, max: max}
}

// next reads one whole message. Errors are io.EOF for a clean end between
// messages, *ProtocolError for a malformed or oversized message, and the
// reader's error otherwise.
func (f *frameReader) next() (typ byte, body []byte, err error) {
	if f.pending {
		return f.body()
	}
	hdr, err := f.r.Peek(5)
	if err != nil {
		if len(hdr) > 0 && errors.Is(err, io.EOF) {
			return 0, nil, io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	typ = hdr[0]
	n := int64(binary.BigEndian.Uint32(hdr[1:5]))
	if n < 4 {
		return 0, nil, protocolErrorf(CodeProtocolViolation, "invalid message length %d", n)
	}
	if n+1 > int64(f.max) {
		return 0, nil, protocolErrorf(CodeProtocolViolation, "message of %d bytes exceeds the limit of %d", n+1, f.max)
	}
	size := int(n) - 4
	if 5+size <= f.r.Size() {
		// The whole message fits the read buffer: the body is a view of it.
		msg, err := f.r.Peek(5 + size)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, err
		}
		_, _ = f.r.Discard(5 + size)
		return typ, msg[5:], nil
	}
	if _, err := f.r.Discard(5); err != nil {
		return 0, nil, err
	}
	if cap(f.buf) < size {
		f.buf = make([]byte, size)
	}
	f.pending, f.ptyp, f.psize, f.pgot = true, typ, size, 0
	return f.body()
}

// body reads (the rest of) the pending large message's body.
func (f *frameReader) body() (byte, []byte, error) {
	body := f.buf[:f.psize]
	n, err := io.ReadFull(f.r, body[f.pgot:])
	f.pgot += n
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	f.pending = false
	// Keep a huge one-off buffer (a big COPY row) from pinning memory.
	if cap(f.buf) > 1<<20 && f.psize <= 1<<20 {
		f.buf = nil
	}
	return f.ptyp, body, nil
}

// DecodeFrontend decodes one client message body of the given type into its
// pgproto3 form, for hooks that must inspect it. Authentication responses
// ('p') are not decoded here: their meaning depends on the exchange. The
// result shares no memory with body.
func DecodeFrontend(typ byte, body []byte) (pgproto3.FrontendMessage, error) {
	var m pgproto3.FrontendMessage
	switch typ {
	case MsgBind:
		m = &pgproto3.Bind{}
	case MsgClose:
		m = &pgproto3.Close{}
	case MsgCopyData:
		m = &pgproto3.CopyData{}
	case MsgCopyDone:
		m = &pgproto3.CopyDone{}
	case MsgCopyFail:
		m = &pgproto3.CopyFail{}
	case MsgDescribe:
		m = &pgproto3.Describe{}
	case MsgExecute:
		m = &pgproto3.Execute{}
	case MsgFlush:
		m = &pgproto3.Flush{}
	case MsgFunctionCall:
		m = &pgproto3.FunctionCall{}
	case MsgParse:
		m = &pgproto3.Parse{}
	case MsgQuery:
		m = &pgproto3.Query{}
	case MsgSync:
		m = &pgproto3.Sync{}
	case MsgTerminate:
		m = &pgproto3.Terminate{}
	default:
		return nil, protocolErrorf(CodeProtocolViolation, "unknown frontend message type 0x%02x", typ)
	}
	// pgproto3 decoders may alias src; copy so the message outlives the frame.
	cp := make([]byte, len(body))
	copy(cp, body)
	if err := m.Decode(cp); err != nil {
		return nil, fmt.Errorf("proxy: decode frontend message %q: %w", typ, err)
	}
	return m, nil
}

// knownFrontend reports whether typ is a protocol 3.0 frontend message type
// valid after authentication.
func knownFrontend(typ byte) bool {
	switch typ {
	case MsgBind, MsgClose, MsgCopyData, MsgCopyDone, MsgCopyFail, MsgDescribe, MsgExecute,
		MsgFlush, MsgFunctionCall, MsgParse, MsgQuery, MsgSync, MsgTerminate:
		return true
	}
	return false
}
