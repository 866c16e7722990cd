package audit

import (
	"io"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// benchStatement is a typical statement event as the guard logs it.
func benchStatement() *Event {
	return &Event{
		Event: EventStatement, ConnID: 123456, Client: "10.1.2.3:54321", User: "app_user", Database: "clinic",
		ApplicationName: "pgbench", Tenant: "42", Kind: "select", Relations: []string{"public.pgbench_accounts"},
		Decision: DecisionRewritten, Fingerprint: "9f1c2b3a4d5e6f70",
		Statement: "SELECT abalance FROM pgbench_accounts WHERE aid = $1", Rows: 1,
		Duration: 1234 * time.Microsecond, Injected: true, Protocol: "extended",
	}
}

// BenchmarkLog measures one statement event through Log, buffered (the
// flusher writes to io.Discard) and unbuffered (every event written to
// io.Discard).
func BenchmarkLog(b *testing.B) {
	for _, bc := range []struct {
		name  string
		flush time.Duration
	}{{"buffered", time.Hour}, {"unbuffered", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			l, err := New(Options{Stdout: io.Discard, FlushInterval: bc.flush})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			e := benchStatement()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				l.Log(e)
			}
		})
	}
}

// BenchmarkEncode compares AppendJSON with the zap encoding it replaced, at
// a fixed time (no clock read).
func BenchmarkEncode(b *testing.B) {
	e := benchStatement()
	ts := time.Date(2026, 11, 27, 3, 7, 56, 123456789, time.UTC)
	b.Run("AppendJSON", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 1024)
		for i := 0; i < b.N; i++ {
			buf = e.AppendJSON(buf[:0], ts)
		}
		b.SetBytes(int64(len(buf)))
	})
	b.Run("zap", func(b *testing.B) {
		b.ReportAllocs()
		enc := zapEncoder()
		var n int
		for i := 0; i < b.N; i++ {
			buf, _ := enc.EncodeEntry(zapcore.Entry{Time: ts}, []zapcore.Field{zap.Inline(zapEvent{e})})
			n = buf.Len()
			buf.Free()
		}
		b.SetBytes(int64(n))
	})
}
