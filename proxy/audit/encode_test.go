package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapEvent is the zap encoding the trail was written with before
// AppendJSON: the reference AppendJSON must match byte for byte.
type zapEvent struct{ e *Event }

// MarshalLogObject is the former Event.MarshalLogObject, unchanged.
func (z zapEvent) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	e := z.e
	enc.AddString("event", e.Event)
	if e.ConnID != 0 {
		enc.AddUint64("conn_id", e.ConnID)
	}
	zapString(enc, "client", e.Client)
	zapString(enc, "user", e.User)
	zapString(enc, "database", e.Database)
	zapString(enc, "application_name", e.ApplicationName)
	zapString(enc, "tenant", e.Tenant)
	zapString(enc, "kind", e.Kind)
	if len(e.Relations) > 0 {
		_ = enc.AddArray("relations", zapcore.ArrayMarshalerFunc(func(a zapcore.ArrayEncoder) error {
			for _, r := range e.Relations {
				a.AppendString(r)
			}
			return nil
		}))
	}
	zapString(enc, "decision", e.Decision)
	zapString(enc, "reason", e.Reason)
	zapString(enc, "sqlstate", e.SQLState)
	zapString(enc, "fingerprint", e.Fingerprint)
	zapString(enc, "statement", e.Statement)
	zapString(enc, "protocol", e.Protocol)
	if e.Event == EventStatement {
		if e.Rows >= 0 {
			enc.AddInt64("rows", e.Rows)
		}
		enc.AddFloat64("duration_ms", float64(e.Duration.Microseconds())/1000)
		enc.AddBool("injected", e.Injected)
	}
	if e.TLS != nil {
		enc.AddBool("tls", *e.TLS)
	}
	zapString(enc, "auth_method", e.AuthMethod)
	if e.Event == EventDisconnect {
		enc.AddInt64("statements", e.Statements)
		enc.AddInt64("rejected", e.Rejected)
		enc.AddFloat64("duration_ms", float64(e.Duration.Microseconds())/1000)
	}
	zapString(enc, "result", e.Result)
	zapString(enc, "error", e.Error)
	return nil
}

func zapString(enc zapcore.ObjectEncoder, k, v string) {
	if v != "" {
		enc.AddString(k, v)
	}
}

// zapEncoder is the encoder as the former New configured it.
func zapEncoder() zapcore.Encoder {
	return zapcore.NewJSONEncoder(zapcore.EncoderConfig{
		TimeKey:        "ts",
		EncodeTime:     zapcore.RFC3339NanoTimeEncoder,
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeDuration: zapcore.MillisDurationEncoder,
	})
}

// zapLine encodes e as the former Logger did: the encoder configured as
// New configured it, the event inlined into an entry at t.
func zapLine(t testing.TB, e *Event, ts time.Time) []byte {
	t.Helper()
	buf, err := zapEncoder().EncodeEntry(zapcore.Entry{Time: ts}, []zapcore.Field{zap.Inline(zapEvent{e})})
	require.NoError(t, err)
	defer buf.Free()
	return append([]byte(nil), buf.Bytes()...)
}

func boolPtr(b bool) *bool { return &b }

// nasty holds the strings that exercise every escaping rule.
var nasty = []string{
	``, `plain`, `say "hi"`, `back\slash`, "tab\there", "new\nline", "cr\rlf\r\n",
	"\x00\x01\x07\x08\x0b\x0c\x1b\x1f", "del\x7f", "héllo wörld ✓ 日本語 🐘",
	"bad\xffutf8", "\xc3", "trunc\xe2\x82", "\xed\xa0\x80surrogate", "\xf4\x90\x80\x80toobig",
	"line\u2028sep\u2029para", `<script>&amp;</script>`, "\ufffd literal", `\u0041 not an escape`,
	"\"\\\"\\", "ends with backslash\\",
}

func TestAppendJSONMatchesZap(t *testing.T) {
	utc := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	times := []time.Time{
		utc,
		time.Date(2026, 11, 27, 3, 7, 56, 123456789, time.UTC),
		time.Date(2026, 11, 27, 3, 7, 56, 120000000, time.FixedZone("x", -(5*3600+30*60))),
		time.Date(1999, 12, 31, 23, 59, 59, 1, time.FixedZone("y", 14*3600)),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), // beyond RFC 3339's four digits
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Unix(1764212876, 999).In(time.Local),
		{}, // zero: no ts key
	}
	stmt := func(mod func(*Event)) *Event {
		e := benchStatement()
		mod(e)
		return e
	}
	events := map[string]*Event{
		"empty":                {},
		"statement minimal":    {Event: EventStatement},
		"statement typical":    benchStatement(),
		"statement rows -1":    stmt(func(e *Event) { e.Rows = -1 }),
		"statement rows -9":    stmt(func(e *Event) { e.Rows = -9 }),
		"statement rows 0":     stmt(func(e *Event) { e.Rows = 0 }),
		"statement rows max":   stmt(func(e *Event) { e.Rows = math.MaxInt64 }),
		"statement dur 0":      stmt(func(e *Event) { e.Duration = 0 }),
		"statement dur 1.5ms":  stmt(func(e *Event) { e.Duration = 1500 * time.Microsecond }),
		"statement dur 1ms":    stmt(func(e *Event) { e.Duration = time.Millisecond }),
		"statement dur 1us":    stmt(func(e *Event) { e.Duration = time.Microsecond }),
		"statement dur 999ns":  stmt(func(e *Event) { e.Duration = 999 }),
		"statement dur 1h":     stmt(func(e *Event) { e.Duration = time.Hour + 7*time.Microsecond }),
		"statement dur huge":   stmt(func(e *Event) { e.Duration = math.MaxInt64 }),
		"statement dur -huge":  stmt(func(e *Event) { e.Duration = math.MinInt64 }),
		"statement dur neg":    stmt(func(e *Event) { e.Duration = -2500 * time.Microsecond }),
		"statement dur 2^53us": stmt(func(e *Event) { e.Duration = (1<<53 + 1) * time.Microsecond }),
		"statement no rels":    stmt(func(e *Event) { e.Relations = nil }),
		"statement empty rels": stmt(func(e *Event) { e.Relations = []string{} }),
		"statement 3 rels": stmt(func(e *Event) {
			e.Relations = []string{"public.a", `"Odd"."na""me"`, ""}
		}),
		"statement not injected": stmt(func(e *Event) { e.Injected = false }),
		"statement rejected": stmt(func(e *Event) {
			e.Decision, e.Reason, e.SQLState, e.Rows = DecisionRejected, "unbounded", "54000", -1
		}),
		"statement conn_id max": stmt(func(e *Event) { e.ConnID = math.MaxUint64 }),
		"connect tls": {
			Event: EventConnect, ConnID: 7, Client: "[::1]:5432", User: "app", Database: "clinic",
			ApplicationName: "psql", TLS: boolPtr(true), AuthMethod: "scram-sha-256",
		},
		"connect no tls": {Event: EventConnect, ConnID: 8, TLS: boolPtr(false), AuthMethod: "trust"},
		"connect refused": {
			Event: EventConnect, ConnID: 9, Decision: DecisionRejected, Reason: "no_tenant", SQLState: "28000",
		},
		"disconnect": {
			Event: EventDisconnect, ConnID: 10, Client: "127.0.0.1:1", User: "u", Database: "d", Tenant: "t",
			Statements: 12345, Rejected: 3, Duration: 90*time.Second + 123*time.Microsecond, Rows: 5,
		},
		"disconnect zero":   {Event: EventDisconnect},
		"disconnect tls":    {Event: EventDisconnect, TLS: boolPtr(true), Statements: -1, Rejected: math.MinInt64},
		"policy_reload ok":  {Event: EventPolicyReload, Result: "ok"},
		"policy_reload err": {Event: EventPolicyReload, Result: "error", Error: `policy.yaml:12: unknown key "tennant"`},
		"catalog_refresh":   {Event: EventCatalogRefresh, Result: "ok", Duration: time.Second},
		"other event kind":  {Event: "something\nelse", Rows: 3, Duration: time.Millisecond, Injected: true},
	}
	for i, s := range nasty {
		events["strings "+strings.Repeat("x", i)] = &Event{
			Event: s, Client: s, User: s, Database: s, ApplicationName: s, Tenant: s, Kind: s,
			Relations: []string{s, s}, Decision: s, Reason: s, SQLState: s, Fingerprint: s, Statement: s,
			Protocol: s, AuthMethod: s, Result: s, Error: s,
		}
		events["statement string "+strings.Repeat("x", i)] = stmt(func(e *Event) { e.Statement = s; e.Tenant = s })
	}
	for name, e := range events {
		for _, ts := range times {
			want := zapLine(t, e, ts)
			got := e.AppendJSON(nil, ts)
			require.Equal(t, string(want), string(got), "%s at %v", name, ts)
			// Appending keeps what is already in dst.
			got = e.AppendJSON([]byte("prefix"), ts)
			require.Equal(t, "prefix"+string(want), string(got), name)
			var m map[string]any
			require.NoError(t, json.Unmarshal(got[len("prefix"):], &m), "%s: %q", name, got)
		}
	}
}

// TestLogWritesAppendJSON checks that Log writes exactly AppendJSON's bytes,
// one line per event, through the unbuffered and the buffered sink.
func TestLogWritesAppendJSON(t *testing.T) {
	ts := time.Date(2026, 11, 27, 3, 7, 56, 5, time.UTC)
	events := []*Event{
		benchStatement(),
		{Event: EventConnect, ConnID: 1, TLS: boolPtr(true)},
		{Event: EventStatement, Statement: strings.Repeat("SELECT 1; ", 10000)}, // larger than a pooled buffer
		{Event: EventDisconnect, ConnID: 1, Statements: 2},
	}
	var want []byte
	for _, e := range events {
		want = append(want, zapLine(t, e, ts)...)
	}
	for _, flush := range []time.Duration{0, time.Hour} {
		var buf bytes.Buffer
		l, err := New(Options{Stdout: &buf, FlushInterval: flush, Now: func() time.Time { return ts }})
		require.NoError(t, err)
		for _, e := range events {
			l.Log(e)
		}
		require.NoError(t, l.Close())
		require.Equal(t, string(want), buf.String(), "flush interval %v", flush)
	}
}

func TestAppendJSONDoesNotAllocate(t *testing.T) {
	e := benchStatement()
	e.Statement = "SELECT \"x\"\n FROM t WHERE a = $1 -- é \xff"
	ts := time.Now()
	buf := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		buf = e.AppendJSON(buf[:0], ts)
	})
	require.Zero(t, allocs)
}

// FuzzAppendJSON feeds arbitrary strings into the string fields and checks
// that the line is zap's, byte for byte, and valid JSON.
func FuzzAppendJSON(f *testing.F) {
	for _, s := range nasty {
		f.Add(s, "app", int64(1500), int64(3), false)
	}
	f.Add("SELECT * FROM t WHERE id = $1", "public.t", int64(0), int64(-1), true)
	f.Add("", "", int64(math.MaxInt64), int64(math.MinInt64), true)
	f.Fuzz(func(t *testing.T, s, rel string, durUS, rows int64, disconnect bool) {
		e := &Event{
			Event: EventStatement, ConnID: uint64(rows), Client: s, User: rel, Database: s, ApplicationName: s,
			Tenant: rel, Kind: s, Relations: []string{rel, s}, Decision: s, Reason: rel, SQLState: s,
			Fingerprint: rel, Statement: s, Protocol: rel, AuthMethod: s, Result: rel, Error: s,
			Rows: rows, Duration: time.Duration(durUS) * time.Microsecond, Injected: durUS%2 == 0,
			Statements: rows, Rejected: durUS,
		}
		if disconnect {
			e.Event, e.TLS = EventDisconnect, boolPtr(rows%2 == 0)
		}
		ts := time.Unix(durUS, rows).UTC()
		want := zapLine(t, e, ts)
		got := e.AppendJSON(nil, ts)
		if string(want) != string(got) {
			t.Fatalf("AppendJSON differs from zap:\n got %q\nwant %q", got, want)
		}
		var m map[string]any
		if err := json.Unmarshal(got, &m); err != nil {
			t.Fatalf("not JSON: %v: %q", err, got)
		}
		if s != "" && utf8.ValidString(s) && m["statement"] != s {
			t.Fatalf("statement %q read back as %q", s, m["statement"])
		}
	})
}

// TestAppendMillisMatchesStrconv pins the integer fast path of appendMillis
// to the float formatting zap used, around every boundary it has.
func TestAppendMillisMatchesStrconv(t *testing.T) {
	check := func(us int64) {
		want := strconv.AppendFloat(nil, float64(us)/1000, 'f', -1, 64)
		got := appendMillis(nil, time.Duration(us)*time.Microsecond)
		if us <= math.MaxInt64/1000 && us >= math.MinInt64/1000 && string(got) != string(want) {
			t.Fatalf("%d µs: got %s, want %s", us, got, want)
		}
	}
	for us := int64(-100_000); us <= 100_000; us++ {
		check(us)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, base := range []int64{maxExactMicros, 1 << 53, 1e12, 1e9, math.MaxInt64 / 1000} {
		for d := int64(-3000); d <= 3000; d++ {
			check(base + d)
			check(-base - d)
		}
	}
	for i := 0; i < 1_000_000; i++ {
		us := r.Int64N(2*maxExactMicros) - maxExactMicros
		check(us)
		check(us >> r.IntN(50))
	}
	// Nanoseconds below a microsecond are truncated, as Microseconds does.
	require.Equal(t, "0.001", string(appendMillis(nil, 1999)))
	require.Equal(t, "-0.001", string(appendMillis(nil, -1999)))
	require.Equal(t, "0", string(appendMillis(nil, -999)))
}

// TestPlain8 checks the word-at-a-time test against the byte rule.
func TestPlain8(t *testing.T) {
	needs := func(c byte) bool { return c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' }
	bg := []byte("abcdefgh")
	for pos := 0; pos < 8; pos++ {
		for c := 0; c < 256; c++ {
			w := append([]byte(nil), bg...)
			w[pos] = byte(c)
			require.Equal(t, !needs(byte(c)), plainWord(binary.LittleEndian.Uint64(w)), "byte %#x at %d", c, pos)
			require.Equal(t, !needs(byte(c)), plainByte[c], "byte %#x", c)
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	w := make([]byte, 8)
	for i := 0; i < 1_000_000; i++ {
		want := true
		for j := range w {
			// Mostly printable ASCII, sometimes anything.
			if r.IntN(8) == 0 {
				w[j] = byte(r.IntN(256))
			} else {
				w[j] = byte(0x20 + r.IntN(0x60))
			}
			want = want && !needs(w[j])
		}
		if plainWord(binary.LittleEndian.Uint64(w)) != want {
			t.Fatalf("plainWord(%q) = %v", w, !want)
		}
	}
}

// TestAppendStringEveryPosition puts each kind of byte that needs care at
// every position of plain strings of every length around the word size, so
// the word-at-a-time scan, its overlapping tail and the byte loop all meet
// it.
func TestAppendStringEveryPosition(t *testing.T) {
	specials := []string{"\"", "\\", "\n", "\x00", "\x1f", "\x7f", "é", "\xff", "\u2028", "\xe2\x80"}
	for n := 0; n <= 26; n++ {
		for pos := 0; pos <= n; pos++ {
			for _, sp := range specials {
				s := strings.Repeat("a", pos) + sp + strings.Repeat("b", n-pos)
				for _, str := range []string{s, strings.Repeat("c", n)} {
					e := &Event{Event: str}
					require.Equal(t, string(zapLine(t, e, time.Time{})), string(e.AppendJSON(nil, time.Time{})), "%q", str)
				}
			}
		}
	}
}
