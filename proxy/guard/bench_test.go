package guard_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/admin"
	"github.com/tenantguard/tenantguard/proxy/audit"
	"github.com/tenantguard/tenantguard/proxy/catalog"
	"github.com/tenantguard/tenantguard/proxy/guard"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
	"github.com/tenantguard/tenantguard/rewriter"
)

// BenchmarkGuardCycle is the enforcement hooks' share of a prepared lookup:
// the messages of one pgbench -M prepared transaction (Bind, Describe,
// Execute, Sync; BindComplete, RowDescription, one DataRow,
// CommandComplete, ReadyForQuery) through the guard as the event loop
// shows them, with the audit line encoded into a buffered sink as in production
// (written to io.Discard). No sockets: what it measures is the CPU the
// hooks add to a relay.
//
//	go test ./proxy/guard -run '^$' -bench GuardCycle -benchmem
func BenchmarkGuardCycle(b *testing.B) {
	c := pgtest.Shared(b)
	ctx := context.Background()
	db, err := c.CreateDatabase(ctx, "guard_bench")
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Exec(ctx, db, fixtureSQL); err != nil {
		b.Fatal(err)
	}
	conn, err := c.Connect(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	cat, err := catalog.LoadConn(ctx, conn, catalog.Options{})
	conn.Close(ctx)
	if err != nil {
		b.Fatal(err)
	}
	pol, err := policy.Parse([]byte(basePolicy), "bench.yaml")
	if err != nil {
		b.Fatal(err)
	}
	// Buffered as serve sets it up; the lines go nowhere, so the file
	// system's cost (a page-cache write every 64 KiB) is not counted.
	al, err := audit.New(audit.Options{Stdout: io.Discard, FlushInterval: 100 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	defer al.Close()
	newSession := func(keepSimple bool) (*guard.Guard, *proxy.Session) {
		g := guard.New(guard.Options{Policies: policy.NewHolder(pol), Audit: al, Metrics: admin.NewMetrics(),
			Logger: zap.NewNop(), Catalog: func() *rewriter.Catalog { return cat }, KeepSimple: keepSimple})
		s := &proxy.Session{ID: 1, ProtocolVersion: 196608, ClientAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000},
			Params: map[string]string{"user": "app", "database": db, "application_name": "bench", "options": "-c app.clinic_id=7"}}
		for t := range 256 {
			s.SetBackendInterest(byte(t), g.BackendInterest(byte(t)))
		}
		if err := g.OnStartup(s); err != nil {
			b.Fatal(err)
		}
		return g, s
	}
	g, s := newSession(false)
	front := func(m pgproto3.FrontendMessage) {
		buf, err := m.Encode(nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := g.OnFrontend(s, proxy.Message{Type: buf[0], Body: buf[5:], Len: len(buf) - 5}); err != nil {
			b.Fatal(err)
		}
	}
	type msg struct {
		typ  byte
		body []byte
	}
	backendMsgs := func(ms ...pgproto3.BackendMessage) []msg {
		var out []msg
		for _, m := range ms {
			buf, err := m.Encode(nil)
			if err != nil {
				b.Fatal(err)
			}
			out = append(out, msg{buf[0], buf[5:]})
		}
		return out
	}
	// relay shows the messages as the event loop does: a DataRow through
	// OnRows, the others through OnBackend when the guard asks for them.
	// It reports how many the guard dropped (an empty Replace).
	relay := func(g *guard.Guard, s *proxy.Session, ms []msg) (dropped int) {
		for _, m := range ms {
			if m.typ == proxy.MsgDataRow {
				if pass, _, err := g.OnRows(s, 1); err != nil || pass != 1 {
					b.Fatalf("row: pass %d, %v", pass, err)
				}
				continue
			}
			if m.typ != proxy.MsgReadyForQuery && m.typ != proxy.MsgErrorResponse && s.BackendInterest(m.typ) == proxy.Ignore {
				continue // the relay passes it without a call
			}
			v, err := g.OnBackend(s, proxy.Message{Type: m.typ, Body: m.body, Len: len(m.body)})
			switch {
			case err != nil || len(v.Replace) > 0:
				b.Fatalf("backend %c: replaced %v, %v", m.typ, v.Replace != nil, err)
			case v.Replace != nil:
				dropped++
			}
		}
		return dropped
	}
	// back relays messages the guard must pass unchanged.
	back := func(ms []msg) {
		if n := relay(g, s, ms); n != 0 {
			b.Fatalf("backend: %d messages dropped", n)
		}
	}
	ready := backendMsgs(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	back(ready) // the end of the startup

	front(&pgproto3.Parse{Name: "P_0", Query: "SELECT id, full_name, email, birth_date, status FROM patients WHERE id = $1"})
	front(&pgproto3.Sync{})
	back(backendMsgs(&pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}))

	bind, _ := (&pgproto3.Bind{PreparedStatement: "P_0", Parameters: [][]byte{[]byte("2806")}}).Encode(nil)
	describe, _ := (&pgproto3.Describe{ObjectType: 'P'}).Encode(nil)
	execute, _ := (&pgproto3.Execute{}).Encode(nil)
	sync, _ := (&pgproto3.Sync{}).Encode(nil)
	frontMsgs := [][]byte{bind, describe, execute, sync}
	replies := backendMsgs(&pgproto3.BindComplete{},
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("id"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("2806")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})

	b.Run("prepared", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, m := range frontMsgs {
				v, err := g.OnFrontend(s, proxy.Message{Type: m[0], Body: m[5:], Len: len(m) - 5})
				if err != nil || v.Replace != nil {
					b.Fatalf("frontend %c: replaced %v, %v", m[0], v.Replace != nil, err)
				}
			}
			back(replies)
		}
	})
	// simple: pgbench -M simple, a literal that changes every query (the
	// literal-insensitive path). "simple-text" relays the rewritten Query
	// (prepare-simple off); "simple-prepared" sends each Query as a Bind of
	// the shape's prepared form, prepared once upstream before the loop.
	var queries [][]byte
	for id := 6; id < 6+200*64; id += 200 {
		q, _ := (&pgproto3.Query{String: "SELECT id, full_name, email, birth_date, status FROM patients WHERE id = " + strconv.Itoa(id)}).Encode(nil)
		queries = append(queries, q)
	}
	simpleReplies := replies[1:] // no BindComplete
	query := func(b *testing.B, g *guard.Guard, s *proxy.Session, q []byte) []byte {
		v, err := g.OnFrontend(s, proxy.Message{Type: q[0], Body: q[5:], Len: len(q) - 5})
		if err != nil || v.Replace == nil {
			b.Fatalf("query: replaced %v, %v", v.Replace != nil, err)
		}
		return v.Replace
	}
	b.Run("simple-text", func(b *testing.B) {
		g, s := newSession(true)
		relay(g, s, ready)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if out := query(b, g, s, queries[i%len(queries)]); out[0] != 'Q' {
				b.Fatalf("query sent as %q, want the text", out[0])
			}
			i++
			if n := relay(g, s, simpleReplies); n != 0 {
				b.Fatalf("text: %d replies dropped", n)
			}
		}
	})
	b.Run("simple-prepared", func(b *testing.B) {
		g, s := newSession(false)
		relay(g, s, ready)
		// The first Query decides the shape (a miss) and goes as text; the
		// second prepares it on the side (Parse, Sync in front of the
		// Query): the guard drops ParseComplete and its ReadyForQuery.
		if out := query(b, g, s, queries[0]); out[0] != 'Q' {
			b.Fatalf("first query sent as %q, want the text", out[0])
		}
		relay(g, s, simpleReplies)
		if out := query(b, g, s, queries[1]); out[0] != 'P' {
			b.Fatalf("second query sent as %q, want the Parse in front", out[0])
		}
		probe := backendMsgs(&pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
		if n := relay(g, s, append(probe, simpleReplies...)); n != 2 {
			b.Fatalf("prepare: %d replies dropped, want 2", n)
		}
		b.ReportAllocs()
		i := 2
		for b.Loop() {
			if out := query(b, g, s, queries[i%len(queries)]); out[0] != 'B' {
				b.Fatalf("query sent as %q, want a Bind", out[0])
			}
			i++
			if n := relay(g, s, replies); n != 1 {
				b.Fatalf("prepared: %d replies dropped, want BindComplete", n)
			}
		}
	})
}
