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
	benchLog(b, func(b *testing.B, l *Logger) {
		e := benchStatement()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			l.Log(e)
		}
	})
}

// BenchmarkLogParallel is BenchmarkLog from as many goroutines as
// GOMAXPROCS, as sessions log at once: the buffered sink encodes under its
// mutex.
func BenchmarkLogParallel(b *testing.B) {
	benchLog(b, func(b *testing.B, l *Logger) {
		b.RunParallel(func(pb *testing.PB) {
			e := benchStatement()
			for pb.Next() {
				l.Log(e)
			}
		})
	})
}

// benchLog runs run on a buffered and an unbuffered Logger to io.Discard.
func benchLog(b *testing.B, run func(*testing.B, *Logger)) {
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
			b.ReportAllocs()
			run(b, l)
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

// benchStrings are the strings of a typical statement event, and a few
// that need escaping, for BenchmarkAppendString.
var benchStrings = []struct{ name, s string }{
	{"statement", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"},
	{"fingerprint", "9f1c2b3a4d5e6f70"},
	{"short", "app_user"},
	{"long", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2 AND bid IN (SELECT bid FROM pgbench_branches WHERE bbalance > $3) RETURNING abalance, filler"},
	{"escaped", "SELECT \"x\"\n  FROM t\tWHERE a = $1 -- é"},
	{"multiline", "SELECT a.aid, a.abalance, b.bbalance\n  FROM pgbench_accounts a\n  JOIN pgbench_branches b ON b.bid = a.bid\n WHERE a.aid = $1\n   AND b.bbalance > $2\n ORDER BY a.aid\n LIMIT $3"},
	{"cjk", "SELECT 名前, 住所 FROM 顧客 WHERE 顧客番号 = $1 AND 地域 = $2 -- 日本語のコメント"},
	{"utf8", "SELECT name FROM öffentlich.größe WHERE id = $1 -- 日本語"},
}

// BenchmarkAppendString measures the JSON string escaper alone.
func BenchmarkAppendString(b *testing.B) {
	for _, bc := range benchStrings {
		b.Run(bc.name, func(b *testing.B) {
			buf := make([]byte, 0, 1024)
			b.SetBytes(int64(len(bc.s)))
			for i := 0; i < b.N; i++ {
				buf = appendString(buf[:0], bc.s)
			}
		})
	}
}

// BenchmarkTimestamp measures the "ts" value alone: time.AppendFormat and
// what AppendJSON uses, in UTC and in a fixed-offset zone.
func BenchmarkTimestamp(b *testing.B) {
	utc := time.Date(2026, 11, 27, 3, 7, 56, 123456789, time.UTC)
	for _, bc := range []struct {
		name string
		t    time.Time
	}{
		{"utc", utc},
		{"offset", utc.In(time.FixedZone("x", -(5*3600 + 30*60)))},
		{"local", utc.Local()},
	} {
		b.Run("AppendFormat/"+bc.name, func(b *testing.B) {
			buf := make([]byte, 0, 64)
			for i := 0; i < b.N; i++ {
				buf = bc.t.AppendFormat(buf[:0], time.RFC3339Nano)
			}
		})
		b.Run("appendTimestamp/"+bc.name, func(b *testing.B) {
			buf := make([]byte, 0, 64)
			for i := 0; i < b.N; i++ {
				buf = appendTimestamp(buf[:0], bc.t)
			}
		})
	}
}
