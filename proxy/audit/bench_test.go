package audit

import (
	"io"
	"testing"
	"time"
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
