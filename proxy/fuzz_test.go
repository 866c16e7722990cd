package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FuzzClientMessages feeds arbitrary bytes to the client-side framing and
// decoding the relay applies to every message after startup. It must never
// panic, never return a body of another length than the header says, and
// fail only with EOF, a truncated message or a *ProtocolError.
func FuzzClientMessages(f *testing.F) {
	var seed []byte
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Query{String: "select 1"},
		&pgproto3.Parse{Name: "s", Query: "select $1", ParameterOIDs: []uint32{23}},
		&pgproto3.Bind{PreparedStatement: "s", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{0, 0, 0, 1}}, ResultFormatCodes: []int16{0}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{MaxRows: 2},
		&pgproto3.Sync{},
	} {
		seed, _ = m.Encode(seed)
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := newFrameReader(newConnReaderSize(bytes.NewReader(data), 16), 1<<16)
		consumed := 0
		for {
			typ, body, err := fr.next()
			if err != nil {
				var pe *ProtocolError
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.As(err, &pe) {
					t.Fatalf("unexpected error type %T: %v", err, err)
				}
				return
			}
			declared := int(binary.BigEndian.Uint32(data[consumed+1 : consumed+5]))
			if len(body) != declared-4 || data[consumed] != typ {
				t.Fatalf("frame mismatch: type %q body %d declared %d", typ, len(body), declared)
			}
			consumed += 1 + declared
			if knownFrontend(typ) {
				m, err := DecodeFrontend(typ, body)
				if err == nil && m == nil {
					t.Fatal("nil message without error")
				}
			}
		}
	})
}

// FuzzStartup feeds arbitrary bytes to the startup-phase parsers: the
// startup packet reader and parameter parser, the SASL mechanism filter and
// the ErrorResponse severity check.
func FuzzStartup(f *testing.F) {
	f.Add([]byte("\x00\x00\x00\x1a\x00\x03\x00\x00user\x00postgres\x00a\x00b\x00\x00"))
	f.Add([]byte("\x00\x00\x00\x0aSCRAM-SHA-256\x00SCRAM-SHA-256-PLUS\x00\x00"))
	f.Add([]byte("SFATAL\x00VFATAL\x00C08P01\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if body, err := readStartupPacket(bytes.NewReader(data)); err == nil {
			s := &Session{}
			if err := s.parseParams(body[4:]); err == nil {
				if s.Params["user"] == "" {
					t.Fatal("accepted a startup packet without user")
				}
				s.ProtocolVersion = 3 << 16
				out := s.startupMessage()
				again, err := readStartupPacket(bytes.NewReader(out))
				if err != nil && len(out) <= maxStartupPacket {
					t.Fatalf("re-encoded startup packet unreadable: %v", err)
				}
				_ = again
			}
		}
		if len(data) >= 4 {
			out := stripChannelBinding(data)
			for _, mech := range bytes.Split(out[4:], []byte{0}) {
				if bytes.HasSuffix(mech, []byte("-PLUS")) {
					t.Fatal("a -PLUS mechanism survived")
				}
			}
		}
		_ = isFatal(data)
	})
}
