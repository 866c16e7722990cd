package guard

import (
	"bytes"
	"encoding/binary"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/rewriter"
)

// Simple-protocol statements in their prepared form (rewriter/upstream.go).
// An application that sends `SELECT ... WHERE id = 17`, then `... id = 18`,
// costs PostgreSQL a parse, analysis and plan each time; the guard knows the
// statements share one shape (the literal path decided them), so it
// prepares the shape upstream once per session and sends each statement as
// Bind, Describe, Execute and Sync: the client still sees exactly the
// replies of its Query (RowDescription, DataRow, CommandComplete or
// ErrorResponse, ReadyForQuery) once the guard drops BindComplete and
// NoData.
//
// The guard prepares a shape on the side: its Parse and a Sync go upstream
// in front of the client's Query, which still goes as text, so that a Parse
// the server refuses (a literal whose parameter type PostgreSQL cannot
// infer) fails nothing of the client's. Its replies are the guard's own.
// The shape's later statements go in their prepared form once the Parse
// succeeded. Both only when nothing of the client's is in flight and the
// upstream is outside a transaction block (upstreamQuery says why).

// maxUpstream bounds the prepared forms a session holds upstream; the
// least recently used one is closed to make room.
const maxUpstream = 64

// maxUpstreamClose bounds the names waiting to be closed upstream.
const maxUpstreamClose = 2 * maxUpstream

// upKey identifies a prepared form with its tenant literal and parameter
// types: each needs a statement of its own.
type upKey struct {
	form   *rewriter.PreparedForm
	tenant string
	sig    uint64
}

// upStmt is a prepared form the session prepares or holds upstream; one
// that is neither ready nor being prepared (conn.probe) was refused there,
// and its shape goes as text.
type upStmt struct {
	key   upKey
	name  string
	ready bool   // the upstream holds it: ParseComplete came
	used  uint64 // conn.upTick at its last use
}

// upstreamQuery sends the simple-protocol statement d (its record f) in its
// prepared form, or prepares the form in front of query (the client's
// Query, as it goes upstream). Both only when quiet says nothing of the
// client's is in flight and the upstream is outside a transaction block:
// a prepared form the upstream's plan no longer fits (a column's type
// changed) fails its statement, which must not fail a block the text would
// not have failed, and a Parse the server refuses must fail nothing of the
// client's. unnamed says the client may hold an unnamed statement, which
// its Query would have destroyed. It reports false when the Query goes as
// it is. Callers hold c.mu.
func (g *Guard) upstreamQuery(c *conn, e *engine, d *rewriter.Decision, f *inflight, quiet, unnamed bool, query func() []byte) (proxy.Verdict, bool) {
	if !quiet || c.upOff {
		return proxy.Verdict{}, false
	}
	u := d.Upstream
	if c.upEngine != e {
		// Another policy or catalog: its templates are new shapes.
		c.forgetUpstream()
		c.upEngine = e
	}
	k := upKey{form: u.Form, tenant: u.TenantLit, sig: u.Sig}
	st := c.ups[k]
	if st != nil && st.ready {
		c.upTick++
		st.used = c.upTick
		f.conv = st
		g.opts.Metrics.SimpleStatementsPrepared.Inc()
		out := c.appendCloses(c.queryBuf[:0], unnamed)
		f.convCloses = len(c.upClose)
		if unnamed {
			f.convCloses++
		}
		c.dropCloses()
		c.queryBuf = appendBindExecute(out, st.name, u.Args)
		return proxy.Verdict{Replace: c.queryBuf}, true
	}
	if st != nil {
		return proxy.Verdict{}, false // refused, or being prepared
	}
	if c.ups == nil {
		c.ups = make(map[upKey]*upStmt)
	}
	if len(c.ups) >= maxUpstream {
		c.evictUpstream()
	}
	c.upSeq++
	st = &upStmt{key: k, name: preparedPrefix + g.prepNonce + "_" + uitoa(c.id) + "_" + uitoa(c.upSeq)}
	c.ups[k] = st
	out := c.appendCloses(nil, false)
	c.probeCloses = len(c.upClose)
	c.dropCloses()
	out = encodeAppend(out, &pgproto3.Parse{Name: st.name, Query: u.SQL(), ParameterOIDs: u.ParamOIDs()})
	out = encodeAppend(out, &pgproto3.Sync{})
	c.probe, c.probeReplies = st, c.probeCloses+2
	return proxy.Verdict{Replace: append(out, query()...)}, true
}

// preparedPrefix starts the names of the guard's prepared statements, which
// no client may use (reservedStatement).
const preparedPrefix = "tg_prepared_"

// reservedStatement reports whether a client's statement name is one the
// guard's prepared forms use: a client that closed or replaced one would
// have the guard bind its literals, unchecked, to the client's statement.
func reservedStatement(name string) bool {
	return len(name) >= len(preparedPrefix) && strings.EqualFold(name[:len(preparedPrefix)], preparedPrefix)
}

// reservedName is reservedStatement of a name in a message.
func reservedName(name []byte) bool {
	return len(name) >= len(preparedPrefix) && bytes.EqualFold(name[:len(preparedPrefix)], []byte(preparedPrefix))
}

// errReservedStatement ends a session that names one of the guard's
// prepared statements in a protocol message.
var errReservedStatement = &proxy.ProtocolError{Code: "42501",
	Message: "tenantguard: prepared statement names starting with " + preparedPrefix + " are reserved"}

// appendCloses appends a Close of every name waiting to be closed, and of
// the unnamed statement when unnamed. Callers hold c.mu.
func (c *conn) appendCloses(dst []byte, unnamed bool) []byte {
	for _, name := range c.upClose {
		dst = encodeAppend(dst, &pgproto3.Close{ObjectType: 'S', Name: name})
	}
	if unnamed {
		dst = append(dst, 'C', 0, 0, 0, 6, 'S', 0)
	}
	return dst
}

// dropCloses empties the names waiting to be closed (appendCloses sent
// them). Callers hold c.mu.
func (c *conn) dropCloses() {
	clear(c.upClose)
	c.upClose = c.upClose[:0]
}

// evictUpstream closes the least recently used prepared form that is not
// being prepared. Callers hold c.mu.
func (c *conn) evictUpstream() {
	var old *upStmt
	for _, st := range c.ups {
		if st != c.probe && (old == nil || st.used < old.used) {
			old = st
		}
	}
	if old == nil {
		return
	}
	delete(c.ups, old.key)
	if old.ready {
		c.closeUpstream(old.name)
	}
}

// closeUpstream queues a prepared form's Close for the next statement sent
// in a prepared form or prepared. Past maxUpstreamClose the name is left to
// the end of the session.
func (c *conn) closeUpstream(name string) {
	if len(c.upClose) < maxUpstreamClose {
		c.upClose = append(c.upClose, name)
	}
}

// forgetUpstream forgets the session's prepared forms and closes them
// upstream: another engine's shapes, or after DEALLOCATE ALL or DISCARD ALL
// (which may fail in a transaction block; a Close of a name the upstream
// does not hold is no error). The one being prepared is closed too, after
// its Parse. Callers hold c.mu.
func (c *conn) forgetUpstream() {
	for _, st := range c.ups {
		if st.ready || st == c.probe {
			c.closeUpstream(st.name)
		}
	}
	c.ups = nil
}

// appendBindExecute appends the messages that run a prepared form with
// args as its text parameters, as a Query would run the statement: Bind
// (unnamed portal, text results), Describe of the portal (its
// RowDescription, or NoData), Execute of every row, Sync.
func appendBindExecute(dst []byte, name string, args []string) []byte {
	start := len(dst)
	dst = append(dst, 'B', 0, 0, 0, 0, 0)
	dst = append(dst, name...)
	dst = append(dst, 0, 0, 0) // no parameter format codes: all text
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(args)))
	for _, a := range args {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(a)))
		dst = append(dst, a...)
	}
	dst = append(dst, 0, 0) // no result format codes: all text
	binary.BigEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-1))
	return append(dst,
		'D', 0, 0, 0, 6, 'P', 0,
		'E', 0, 0, 0, 9, 0, 0, 0, 0, 0,
		'S', 0, 0, 0, 4)
}

// onProbeReply takes the replies of the guard's own preparation (its
// Closes, its Parse, its Sync), which come before anything of the client's.
// It reports false for a message that is none of them. Callers hold c.mu.
func (g *Guard) onProbeReply(c *conn, m proxy.Message) (proxy.Verdict, bool) {
	switch m.Type {
	case msgCloseComplete:
		if c.probeCloses == 0 {
			return proxy.Verdict{}, false
		}
		c.probeCloses--
		c.probeReplies--
	case msgParseComplete:
		if c.probeCloses > 0 || c.probeReplies != 2 {
			return proxy.Verdict{}, false
		}
		c.probe.ready, c.upOn = true, true
		c.probeReplies = 1
		g.opts.Metrics.SimpleShapes.WithLabelValues("ok").Inc()
	case proxy.MsgErrorResponse:
		if c.probeReplies < 2 {
			return proxy.Verdict{}, false
		}
		// A Close or the Parse failed; the server skips the rest up to the
		// Sync. The shape goes as text for the rest of the session.
		var e pgproto3.ErrorResponse
		code := ""
		if e.Decode(append([]byte(nil), m.Body...)) == nil {
			code = e.Code
			if e.SeverityUnlocalized == "FATAL" || e.SeverityUnlocalized == "PANIC" {
				// The session ends (an administrator's termination, a
				// shutdown): the client must see why.
				return proxy.Verdict{}, false
			}
		}
		g.log.Debug("statement shape not prepared upstream", zap.Uint64("conn_id", c.id), zap.String("sqlstate", code))
		c.probeCloses, c.probeReplies = 0, 1
		g.opts.Metrics.SimpleShapes.WithLabelValues("refused").Inc()
	case proxy.MsgReadyForQuery:
		c.probe, c.probeCloses, c.probeReplies = nil, 0, 0
	case msgNotice:
		// The text's notices (an identifier truncated) come with the
		// client's Query, which follows.
	default:
		return proxy.Verdict{}, false
	}
	return drop, true
}

// upstreamFailed forgets a prepared form whose Bind or Execute failed in a
// way a new preparation mends: the upstream's plan no longer returns the
// columns it was prepared with (a column's type changed). When the
// upstream no longer holds the statement at all, something between the
// guard and the server drops a session's prepared statements (a pooler in
// transaction mode): the session sends its statements as text from then
// on. Callers hold c.mu.
func (g *Guard) upstreamFailed(c *conn, st *upStmt, code, message string) {
	switch code {
	case "0A000":
		if c.ups[st.key] == st {
			delete(c.ups, st.key)
			c.closeUpstream(st.name)
		}
	case "26000":
		// A function may raise 26000 itself: only the server's error
		// about the statement's own name counts.
		if !c.upOff && strings.Contains(message, `"`+st.name+`"`) {
			c.upOff = true
			c.forgetUpstream()
			g.log.Warn("the upstream lost a prepared statement of tenantguard's: simple-protocol statements go as text for the rest of the session (set prepare-simple to false for a pooler in transaction mode)",
				zap.Uint64("conn_id", c.id))
		}
	}
}
