package guard

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/audit"
	"github.com/tenantguard/tenantguard/rewriter"
)

// errNoState ends a session whose startup the guard did not see: it cannot
// be decided, so it fails closed.
var errNoState = errors.New("guard: session has no enforcement state")

// OnFrontend decides every client message that can run SQL.
func (g *Guard) OnFrontend(s *proxy.Session, m proxy.Message) (proxy.Verdict, error) {
	c, _ := s.State.(*conn)
	if c == nil {
		return proxy.Verdict{}, errNoState
	}
	v, err := g.onFrontend(c, m)
	if err == nil && m.Type != proxy.MsgTerminate && c.abortNext.Load() {
		// A cut left a transaction block open (abortAfterCut): the abort
		// goes upstream in front of this message, in the same write.
		c.mu.Lock()
		if c.abortNext.Swap(false) {
			v = c.abortFirst(m, v)
		}
		c.mu.Unlock()
	}
	return v, err
}

func (g *Guard) onFrontend(c *conn, m proxy.Message) (proxy.Verdict, error) {
	switch m.Type {
	case proxy.MsgQuery, proxy.MsgFunctionCall, proxy.MsgParse:
		// These decide a statement: they parse outside the lock.
		c.mu.Lock()
		refused, unsynced := c.refusal != nil, c.unsynced
		c.mu.Unlock()
		if refused {
			break // refused below, like every message
		}
		if m.Type == proxy.MsgParse {
			return g.onParse(c, m.Body)
		}
		if unsynced {
			// The server skips it if an extended message before it fails,
			// and answers it otherwise: the guard could not tell which
			// replies belong to which statement. No driver sends this.
			return proxy.Verdict{}, &proxy.ProtocolError{Code: proxy.CodeProtocolViolation,
				Message: "tenantguard: a simple Query or FunctionCall after extended-protocol messages without a Sync is not supported"}
		}
		if m.Type == proxy.MsgFunctionCall {
			return g.onFunctionCall(c)
		}
		return g.onQuery(c, m.Body)
	}
	return g.frontendLocked(c, m)
}

// frontendLocked handles the other messages, and the refusal, under one
// lock (one defer, so that it stays cheap: a Bind, Execute or Sync costs
// one lock, not two).
func (g *Guard) frontendLocked(c *conn, m proxy.Message) (proxy.Verdict, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refusal != nil {
		// A client that sends before ReadyForQuery is refused all the same.
		return proxy.Verdict{}, g.enforceRefusal(c)
	}
	switch m.Type {
	case proxy.MsgBind:
		return g.onBind(c, m.Body)
	case proxy.MsgExecute:
		return g.onExecute(c, m.Body)
	case proxy.MsgDescribe, proxy.MsgFlush:
		if m.Type == proxy.MsgDescribe && len(m.Body) > 1 && m.Body[0] == 'S' && reservedName(m.Body[1:]) {
			return proxy.Verdict{}, errReservedStatement
		}
		c.markUnsynced()
	case proxy.MsgClose:
		if len(m.Body) > 1 && m.Body[0] == 'S' && reservedName(m.Body[1:]) {
			return proxy.Verdict{}, errReservedStatement
		}
		g.onClose(c, m.Body)
	case proxy.MsgSync:
		if c.copyIn != nil {
			c.copyIn.uncountedSyncs++ // ignored in copy-in mode
			c.copyIn.extAtSync = c.extMessages
		} else {
			c.frontCycle++
			c.unsynced = false
		}
	case proxy.MsgCopyDone, proxy.MsgCopyFail:
		c.copyIn = nil
	}
	return proxy.Verdict{}, nil
}

// markUnsynced records an extended-protocol message sent upstream. Callers
// hold c.mu.
func (c *conn) markUnsynced() {
	c.unsynced = true
	c.extMessages++
}

// cstring returns the NUL-terminated string at the start of b and the rest.
func cstring(b []byte) (string, []byte, bool) {
	s, rest, ok := cbytes(b)
	return string(s), rest, ok
}

// cbytes is cstring without the copy.
func cbytes(b []byte) ([]byte, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// rwSession is the rewriter's view of the session. Callers hold c.mu.
func (c *conn) rwSession(extended bool) rewriter.Session {
	return c.tenant.Session(rewriter.Session{User: c.user, Extended: extended})
}

// sentinelQuery is a statement the upstream refuses at parse analysis; its
// error is replaced by the rejection registered under name.
func sentinelQuery(name string) string { return "SELECT " + name + "()" }

// reject registers a rejection and returns the sentinel name that carries
// it. Callers hold c.mu.
func (c *conn) reject(err *rewriter.Error, reason string) (string, *rejection) {
	name := c.nextSentinel()
	r := &rejection{err: err, reason: reason, name: name, cycle: c.frontCycle}
	c.rejects[name] = r
	return name, r
}

func (g *Guard) onQuery(c *conn, body []byte) (proxy.Verdict, error) {
	text, _, ok := cstring(body)
	if !ok {
		return proxy.Verdict{}, &proxy.ProtocolError{Code: proxy.CodeProtocolViolation, Message: "malformed Query message"}
	}
	e := g.engine()
	c.mu.Lock()
	defer c.mu.Unlock()
	// A simple Query destroys the unnamed statement and portal.
	_, unnamed := c.statements[""]
	delete(c.statements, "")
	c.dropPortal("")
	// Nothing of the client's in flight, outside a transaction block: the
	// guard may prepare a statement's shape in front of it (upstream.go).
	quiet := c.frontCycle == c.backCycle && c.upStatus == 'I' && c.copyIn == nil && !c.cutting &&
		c.abortReplies == 0 && !c.abortWanted && !c.abortNext.Load() && c.probeReplies == 0 && c.extraReady == 0
	c.beginCycle()
	sess := c.rwSession(false)
	sess.TenantLiteral = c.pinned
	res := e.rw.Decide(text, sess)
	g.countCache(res)
	cycle := c.frontCycle
	c.frontCycle++

	changed := false
	var partsBuf [1]string
	parts := partsBuf[:0]
	for i := range res.Statements {
		d := &res.Statements[i]
		c.scopeNotify(d)
		c.trackPrepared(e, d)
		g.countDecision(c, d)
		if d.Verdict == rewriter.VerdictRejected && d.Enforced {
			name, rj := c.reject(d.Error, d.Reason)
			c.queue = append(c.queue, &inflight{cycle: cycle, dec: d, start: g.opts.Now(), tenant: c.current().v, protocol: "simple", reject: rj})
			parts = append(parts, sentinelQuery(name))
			changed = true
			break // PostgreSQL would not run the statements after an error
		}
		if d.Enforced && d.Verdict == rewriter.VerdictRewritten {
			changed = true
		}
		f := c.newInflight()
		*f = inflight{cycle: cycle, dec: d, start: g.opts.Now(), tenant: c.current().v, protocol: "simple", injected: d.Enforced && d.Verdict == rewriter.VerdictRewritten}
		c.queue = append(c.queue, f)
		if d.CopyIn {
			c.copyIn, c.lastCopy = f, f
		}
		c.applyEffects(d, "")
		if d.Enforced {
			parts = append(parts, d.SQL)
		}
	}
	if cap(c.queryBuf) > maxKeptQuery {
		c.queryBuf = nil
	}
	// The newline before each ';' ends a trailing line comment of the
	// statement before it, so the separator can never be commented out.
	// The Query goes into the session's own buffer: the relay writes or
	// copies Replace before the next message.
	query := func() []byte {
		if !changed {
			return appendMessage(nil, proxy.MsgQuery, body)
		}
		c.queryBuf = appendQuery(c.queryBuf[:0], parts, "\n;\n")
		return c.queryBuf
	}
	if len(res.Statements) == 1 && res.Statements[0].Upstream != nil && !g.opts.KeepSimple && len(c.queue) > 0 {
		if v, ok := g.upstreamQuery(c, e, &res.Statements[0], c.queue[len(c.queue)-1], quiet, unnamed, query); ok {
			return v, nil
		}
	}
	if !changed {
		return proxy.Verdict{}, nil
	}
	return proxy.Verdict{Replace: query()}, nil
}

// maxKeptQuery is the largest Query buffer a session keeps between
// statements.
const maxKeptQuery = 16 << 10

// appendQuery appends a Query message whose text is parts joined by sep
// (no allocation for one part once dst has room).
func appendQuery(dst []byte, parts []string, sep string) []byte {
	q := pgproto3.Query{String: strings.Join(parts, sep)}
	return mustEncode(q.Encode(dst)) // the concrete type: q stays on the stack
}

// beginCycle remembers the tenant state at the start of an implicit
// transaction (a cycle outside a transaction block), so that a failure can
// undo its SETs. Callers hold c.mu.
func (c *conn) beginCycle() {
	if c.tenant.InTx() {
		return
	}
	if n := len(c.snaps); n > 0 && c.snaps[n-1].cycle == c.frontCycle {
		return
	}
	if len(c.snaps) == 0 && cap(c.snaps) < len(c.snapBuf) {
		c.snaps = c.snapBuf[:0] // no allocation in steady state
	}
	c.snaps = append(c.snaps, cycleSnap{cycle: c.frontCycle, state: c.tenant.Snapshot()})
}

// undoCycle undoes the tenant effect of cycle k, which failed: when k began
// and ended outside a transaction block it was an implicit transaction, and
// the server rolled back its SETs. Later cycles already decided were decided
// on top of k's effect; when none of them changed the session's tenant, they
// go back with it. When one did, the effects cannot be told apart and the
// state is left as the later cycles made it (tenant-relation statements read
// the upstream's own setting, and pinned literals are prepared again, so
// rows stay right; the audit and verify checks follow the tracked value).
// A cycle that ended inside a transaction block left it open and failed: the
// ROLLBACK that ends it restores the tenant. Callers hold c.mu.
func (c *conn) undoCycle(k uint64) {
	i := 0
	for i < len(c.snaps) && c.snaps[i].cycle < k {
		i++
	}
	if i == len(c.snaps) || c.snaps[i].cycle != k {
		return // k began in a transaction block, or was undone already
	}
	start := c.snaps[i].state
	later := c.snaps[i+1:]
	end := &c.tenant
	if len(later) > 0 {
		end = &later[0].state
	}
	if !end.InTx() && !start.SameSession(end) {
		unchanged := c.tenant.SameSession(end)
		for j := range later {
			unchanged = unchanged && later[j].state.SameSession(end)
		}
		if unchanged {
			c.tenant.SetSessionFrom(&start)
			for j := range later {
				later[j].state.SetSessionFrom(&start)
			}
		}
	}
	c.snaps[i] = cycleSnap{}
	c.snaps = c.snaps[i+1:]
}

// endCycles forgets the snapshots of cycles before k, which have finished.
// Callers hold c.mu.
func (c *conn) endCycles(k uint64) {
	i := 0
	for i < len(c.snaps) && c.snaps[i].cycle < k {
		c.snaps[i] = cycleSnap{}
		i++
	}
	c.snaps = c.snaps[i:]
}

// applyEffects applies a statement's tenant and transaction effects to the
// tracked state. Callers hold c.mu.
func (c *conn) applyEffects(d *rewriter.Decision, value string) {
	if d.TenantEffect != nil {
		c.pinned = false
	}
	c.tenant.Apply(d, value)
}

func (g *Guard) onParse(c *conn, body []byte) (proxy.Verdict, error) {
	msg, err := proxy.DecodeFrontend(proxy.MsgParse, body)
	if err != nil {
		return proxy.Verdict{}, &proxy.ProtocolError{Code: proxy.CodeProtocolViolation, Message: "malformed Parse message"}
	}
	p := msg.(*pgproto3.Parse)
	if reservedStatement(p.Name) {
		return proxy.Verdict{}, errReservedStatement
	}
	e := g.engine()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.markUnsynced()
	c.beginCycle()
	// Every Parse reaches the upstream, as itself or as a sentinel.
	r := c.expectReply(reply{cycle: c.frontCycle, typ: proxy.MsgParse, name: p.Name, stmt: true, prev: c.statements[p.Name]})
	record := func(x *prepared) {
		x.name = p.Name
		c.statements[p.Name] = x
		r.p = x
	}
	sess := c.rwSession(true)
	// A pinned session's statements take the tenant as a literal, planned
	// as cheaply as a hand-written predicate; onBind prepares a statement
	// again before it runs under another tenant.
	sess.TenantLiteral = c.pinned
	res := e.rw.Decide(p.Query, sess)
	g.countCache(res)
	if len(res.Statements) == 0 {
		// An empty query: the server answers EmptyQueryResponse at Execute.
		record(&prepared{dec: &rewriter.Decision{Kind: rewriter.KindUtility, Verdict: rewriter.VerdictAllowed, Enforced: true, SQL: p.Query}, eng: e, tenant: c.current(), sql: p.Query, text: p.Query})
		return proxy.Verdict{}, nil
	}
	d := res.Statements[0]
	if d.Verdict == rewriter.VerdictRejected && d.Reason == rewriter.ReasonNoTenant && !sess.HasTenant {
		// Statements are often prepared before the tenant is set (pools,
		// ORMs): prepare the scoped form now and require the tenant at Bind.
		sess.Tenant, sess.HasTenant = placeholderTenant(e.pol), true
		if d2 := e.rw.Decide(p.Query, sess).Statements; len(d2) == 1 && d2[0].Verdict != rewriter.VerdictRejected {
			d = d2[0]
		}
	}
	c.scopeNotify(&d)
	c.trackPrepared(e, &d)
	if d.Verdict == rewriter.VerdictRejected && d.Enforced {
		g.countDecision(c, &d)
		name, _ := c.reject(d.Error, d.Reason)
		record(&prepared{rejected: true})
		if r.prev == nil || p.Name == "" {
			r.p = nil // the marker stays: the server refuses a Bind of the name itself
		}
		g.auditDecision(c, &d, "extended", -1, 0, "")
		return proxy.Verdict{Replace: encode(&pgproto3.Parse{Name: p.Name, Query: sentinelQuery(name)})}, nil
	}
	if d.TenantParam > 0 && d.Enforced {
		// The guard scopes with the upstream's own tenant setting; a
		// decision that needs an appended parameter cannot be relayed.
		g.countDecision(c, &d)
		name, _ := c.reject(&rewriter.Error{SQLState: "XX000", Message: "tenantguard: internal error: the decision needs a tenant parameter", Hint: "report this to the tenantguard maintainers"}, rewriter.ReasonInternal)
		return proxy.Verdict{Replace: encode(&pgproto3.Parse{Name: p.Name, Query: sentinelQuery(name)})}, nil
	}
	sql := p.Query
	if d.Enforced {
		sql = d.SQL
	}
	cur := c.current()
	record(&prepared{dec: &d, eng: e, tenant: cur, sql: sql, text: p.Query, oids: p.ParameterOIDs})
	if sess.TenantLiteral && d.Enforced && d.Verdict == rewriter.VerdictRewritten {
		r.literal = true
		c.setLiteral(p.Name, r.seq)
	}
	if sql == p.Query {
		return proxy.Verdict{}, nil
	}
	return proxy.Verdict{Replace: encode(&pgproto3.Parse{Name: p.Name, Query: sql, ParameterOIDs: p.ParameterOIDs})}, nil
}

// trackPrepared follows SQL-level prepared statements: PostgreSQL plans one
// again at EXECUTE when search_path or an object it uses changed, so an
// EXECUTE of a name decided under another policy or catalog (a view
// replaced, a relation that now shadows another) is refused until the
// statement is prepared again. A PREPARE of a name already tracked is not
// recorded (the server refuses it: the old one stays). Callers hold c.mu.
func (c *conn) trackPrepared(e *engine, d *rewriter.Decision) {
	op := d.Prepared
	if op == nil || !d.Enforced || d.Verdict == rewriter.VerdictRejected || d.Verdict == rewriter.VerdictBypassed {
		return
	}
	if reservedStatement(op.Name) {
		// The guard's own prepared forms (upstream.go).
		d.Verdict, d.Reason, d.SQL = rewriter.VerdictRejected, rewriter.ReasonDeniedStatement, ""
		d.Error = &rewriter.Error{SQLState: "42501",
			Message: "tenantguard: prepared statement names starting with " + preparedPrefix + " are reserved",
			Hint:    "use another name"}
		return
	}
	switch op.Op {
	case "prepare":
		if c.sqlPrepared == nil {
			c.sqlPrepared = map[string]*engine{}
		}
		if _, ok := c.sqlPrepared[op.Name]; !ok {
			c.sqlPrepared[op.Name] = e
		}
	case "execute":
		if eng, ok := c.sqlPrepared[op.Name]; ok && eng != e {
			d.Verdict, d.Reason, d.SQL = rewriter.VerdictRejected, rewriter.ReasonUnsupported, ""
			d.Error = &rewriter.Error{SQLState: "0A000",
				Message: "tenantguard: prepared statement " + op.Name + " was decided under an earlier policy or catalog",
				Hint:    "DEALLOCATE it and PREPARE it again"}
		}
	case "deallocate":
		// SQL and protocol-level prepared statements share one namespace:
		// DEALLOCATE and DISCARD ALL drop both.
		c.forgets++
		if op.Name == "" {
			clear(c.sqlPrepared)
			clear(c.statements)
			c.forgetUpstream()
		} else {
			delete(c.sqlPrepared, op.Name)
			delete(c.statements, op.Name)
		}
	}
}

// placeholderTenant is a valid tenant of the policy's type, used only to
// prepare a statement's scoped form before the session has a tenant (the
// scoped form reads the tenant from the upstream setting, never from it).
func placeholderTenant(pol *policy.Policy) string {
	switch pol.Tenant.Type {
	case policy.TypeUUID:
		return "00000000-0000-0000-0000-000000000000"
	case policy.TypeText:
		return "placeholder"
	default:
		return "0"
	}
}

// touchesTenant reports whether a decision reads or writes tenant relations.
func touchesTenant(d *rewriter.Decision) bool {
	return len(d.Relations) > 0 || d.RowGuard
}

// Decisions the guard makes itself, shared (read only) by the portals and
// statements that carry them.
var (
	bypassedUtility = rewriter.Decision{Kind: rewriter.KindUtility, Verdict: rewriter.VerdictBypassed}
	cursorDecision  = rewriter.Decision{Kind: rewriter.KindSelect, Verdict: rewriter.VerdictAllowed, Reason: "cursor", Enforced: true}
)

// onBind decides a Bind. Callers hold c.mu.
func (g *Guard) onBind(c *conn, body []byte) (proxy.Verdict, error) {
	portalName, rest, ok1 := cstring(body)
	stmtBytes, _, ok2 := cbytes(rest)
	if !ok1 || !ok2 {
		return proxy.Verdict{}, &proxy.ProtocolError{Code: proxy.CodeProtocolViolation, Message: "malformed Bind message"}
	}
	if reservedName(stmtBytes) {
		return proxy.Verdict{}, errReservedStatement
	}
	e := g.engine()
	c.markUnsynced()
	c.beginCycle()
	p := c.statements[string(stmtBytes)] // no allocation for the lookup
	stmtName := ""
	if p != nil {
		stmtName = p.name // the same name, without a copy per Bind
	} else {
		stmtName = string(stmtBytes)
	}
	// prepare, when set, prepares the statement again upstream before the
	// Bind: a Close and a Parse of the same name, answered to the guard.
	var prepare []byte
	refuse := func(err *rewriter.Error, reason string, d *rewriter.Decision) (proxy.Verdict, error) {
		c.setPortal(portalName, &portal{rejected: true, cycle: c.frontCycle})
		if d == nil {
			d = &rewriter.Decision{Kind: rewriter.KindUtility}
		}
		rd := *d
		rd.Verdict, rd.Reason, rd.Error = rewriter.VerdictRejected, reason, err
		g.countDecision(c, &rd)
		name, _ := c.reject(err, reason)
		g.auditDecision(c, &rd, "extended", -1, 0, "")
		return proxy.Verdict{Replace: encodeAppend(prepare, &pgproto3.Bind{DestinationPortal: portalName, PreparedStatement: name})}, nil
	}
	cur := c.current()
	// Once the pin has ended, a name the upstream may hold with the pinned
	// tenant written in is prepared again before it runs, whatever the
	// guard believes about the name (a Close an error skipped, a Parse of
	// a name that existed) or the tenant (see conn.literals).
	stale := false
	if c.literals != nil && !c.pinned {
		_, stale = c.literals[stmtName]
	}
	if p != nil && p.rejected {
		if stale {
			return refuse(&rewriter.Error{SQLState: "0A000", Message: "tenantguard: the prepared statement is not valid for the session's new tenant", Hint: "prepare the statement again after switching tenants"}, rewriter.ReasonUnsupported, nil)
		}
		// Its Parse failed upstream: the server refuses this Bind itself.
		c.setPortal(portalName, &portal{rejected: true, cycle: c.frontCycle})
		return proxy.Verdict{}, nil
	}
	if p == nil {
		if c.bypass {
			c.setPortal(portalName, &portal{dec: &bypassedUtility, cycle: c.frontCycle})
			return proxy.Verdict{}, nil
		}
		return refuse(&rewriter.Error{SQLState: "26000", Message: "tenantguard: the prepared statement was not seen by tenantguard", Hint: "prepare the statement on this connection before binding it"}, "unknown_statement", nil)
	}
	d := p.dec
	enforce := d.Enforced && d.Verdict != rewriter.VerdictBypassed
	if p.reparse || stale || (enforce && ((cur != p.tenant && touchesTenant(d)) || p.eng != e)) {
		// The tenant changed since Parse, or the policy or catalog did
		// (a relation the name resolves to may read tenant data now):
		// decide again, and prepare the statement again upstream when
		// its text changes (a pinned session's literal tenant).
		sess := c.rwSession(true)
		sess.TenantLiteral = c.pinned
		res := e.rw.Decide(p.text, sess)
		if len(res.Statements) != 1 {
			return refuse(&rewriter.Error{SQLState: "0A000", Message: "tenantguard: the statement cannot be decided again after a tenant switch", Hint: "prepare the statement again"}, rewriter.ReasonUnsupported, d)
		}
		nd := res.Statements[0]
		c.scopeNotify(&nd)
		c.trackPrepared(e, &nd)
		if nd.Verdict == rewriter.VerdictRejected {
			return refuse(nd.Error, nd.Reason, &nd)
		}
		if nd.TenantParam > 0 {
			return refuse(&rewriter.Error{SQLState: "XX000", Message: "tenantguard: internal error: the decision needs a tenant parameter", Hint: "report this to the tenantguard maintainers"}, rewriter.ReasonInternal, &nd)
		}
		sql := p.text
		if nd.Enforced {
			sql = nd.SQL
		}
		if sql != p.sql || p.reparse || stale {
			if c.portalOpenFrom(stmtName, portalName) {
				// Closing the statement upstream would close that portal.
				return refuse(&rewriter.Error{SQLState: "0A000", Message: "tenantguard: the prepared statement is not valid for the session's new tenant while a portal bound from it is open", Hint: "close the portal, or prepare the statement again after switching tenants"}, rewriter.ReasonUnsupported, &nd)
			}
			prepare = encodeAppend(nil, &pgproto3.Close{ObjectType: 'S', Name: stmtName})
			prepare = encodeAppend(prepare, &pgproto3.Parse{Name: stmtName, Query: sql, ParameterOIDs: p.oids})
			c.expectReply(reply{cycle: c.frontCycle, typ: proxy.MsgClose, name: stmtName, stmt: true, own: true, p: p})
			r := c.expectReply(reply{cycle: c.frontCycle, typ: proxy.MsgParse, name: stmtName, stmt: true, own: true, p: p})
			if sess.TenantLiteral && nd.Enforced && nd.Verdict == rewriter.VerdictRewritten {
				r.literal = true
				c.setLiteral(stmtName, r.seq)
			}
			// A literal mark stays until the server confirms this Parse:
			// an error may skip it, and a later Bind in the same pipeline
			// must then prepare the statement again too.
			p.sql, p.reparse = sql, false
			g.opts.Metrics.StatementsPreparedAgain.Inc()
		}
		d = &nd
		p.dec, p.eng, p.tenant = d, e, cur
		enforce = d.Enforced && d.Verdict != rewriter.VerdictBypassed
	}
	if enforce && touchesTenant(d) && !cur.ok && e.pol.Tenant.Required {
		return refuse(&rewriter.Error{SQLState: "42501",
			Message: "tenantguard: no tenant is set for a statement on tenant relation " + firstOr(d.Relations, "(tenant relation)"),
			Hint:    "set the tenant first, for example SET " + e.pol.Tenant.Setting + ", or connect with it as a startup parameter"},
			rewriter.ReasonNoTenant, d)
	}
	// A new portal each time, never the one it replaces: an Execute still
	// in the queue counts its rows through &pt.rows. (The spare is a portal
	// of a finished cycle, see onReady.)
	pt := c.newPortal()
	*pt = portal{dec: d, stmt: stmtName, cycle: c.frontCycle, injected: enforce && d.Verdict == rewriter.VerdictRewritten}
	if len(d.LimitParams) > 0 || len(d.ArrayParams) > 0 || len(d.OffsetParams) > 0 || len(d.VerifyParams) > 0 || (d.TenantEffect != nil && d.TenantEffect.ValueParam > 0) {
		msg, err := proxy.DecodeFrontend(proxy.MsgBind, body)
		if err != nil {
			return proxy.Verdict{}, &proxy.ProtocolError{Code: proxy.CodeProtocolViolation, Message: "malformed Bind message"}
		}
		b := msg.(*pgproto3.Bind)
		for _, k := range d.LimitParams {
			n, ok := intParam(b, k)
			if !ok || n > d.MaxRows {
				if enforce {
					return refuse(&rewriter.Error{SQLState: "54000",
						Message: "tenantguard: the LIMIT bound to parameter $" + strconv.Itoa(k) + " is above the allowed maximum or not a number",
						Hint:    "bind a LIMIT of at most " + strconv.FormatInt(d.MaxRows, 10)}, rewriter.ReasonUnbounded, d)
				}
			}
		}
		for _, k := range d.ArrayParams {
			n, ok := arrayParamLen(b, k)
			if (!ok || n > d.MaxRows) && enforce {
				return refuse(&rewriter.Error{SQLState: "54000",
					Message: "tenantguard: the array bound to parameter $" + strconv.Itoa(k) + " has more elements than the allowed maximum, or cannot be read",
					Hint:    "bind at most " + strconv.FormatInt(d.MaxRows, 10) + " key values (a one-dimensional array), or add a LIMIT"}, rewriter.ReasonUnbounded, d)
			}
		}
		for _, k := range d.OffsetParams {
			n, ok := intParam(b, k)
			if (!ok || n > d.MaxOffset) && enforce {
				return refuse(&rewriter.Error{SQLState: "54000",
					Message: "tenantguard: the OFFSET bound to parameter $" + strconv.Itoa(k) + " is above the allowed maximum or not a number",
					Hint:    "paginate with a keyset condition instead of a large OFFSET"}, rewriter.ReasonOffset, d)
			}
		}
		for _, k := range d.VerifyParams {
			v, ok := textParam(b, k, e.pol)
			if canon, valid := tenantValid(e.pol, v); !ok || !valid || !cur.ok || canon != cur.v {
				if enforce {
					return refuse(&rewriter.Error{SQLState: "42501",
						Message: "tenantguard: the tenant bound to parameter $" + strconv.Itoa(k) + " is not the session's tenant",
						Hint:    "bind the session's tenant, or use current_setting('" + e.pol.Tenant.Setting + "')"}, rewriter.ReasonCrossTenant, d)
				}
			}
		}
		if d.TenantEffect != nil && d.TenantEffect.ValueParam > 0 {
			v, ok := textParam(b, d.TenantEffect.ValueParam, e.pol)
			canon, valid := tenantValid(e.pol, v)
			if (!ok || !valid) && !c.bypass {
				if enforce {
					return refuse(&rewriter.Error{SQLState: "42501",
						Message: "tenantguard: the tenant value bound to parameter $" + strconv.Itoa(d.TenantEffect.ValueParam) + " is not a valid " + string(e.pol.Tenant.Type),
						Hint:    "bind a tenant value of the policy's tenant type"}, rewriter.ReasonInvalidTenant, d)
				}
			}
			pt.effectValue = canon
			if !valid {
				pt.effectValue = ""
			}
		}
	}
	c.setPortal(portalName, pt)
	if prepare != nil {
		return proxy.Verdict{Replace: appendMessage(prepare, proxy.MsgBind, body)}, nil
	}
	return proxy.Verdict{}, nil
}

// portalOpenFrom reports whether a portal other than dest, bound from
// statement stmt, may still be open upstream: bound in this cycle, or in
// a transaction block that is still open (portals end with their
// transaction). Callers hold c.mu.
func (c *conn) portalOpenFrom(stmt, dest string) bool {
	open := func(pt *portal) bool {
		return pt.stmt == stmt && !pt.rejected && (pt.cycle == c.frontCycle || c.tenant.InTx())
	}
	if dest != "" && c.unnamed != nil && open(c.unnamed) {
		return true
	}
	for name, pt := range c.portals {
		if name != dest && open(pt) {
			return true
		}
	}
	return false
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}

// paramFormat returns the format code of parameter k (1-based).
func paramFormat(b *pgproto3.Bind, k int) int16 {
	switch len(b.ParameterFormatCodes) {
	case 0:
		return 0
	case 1:
		return b.ParameterFormatCodes[0]
	default:
		if k-1 < len(b.ParameterFormatCodes) {
			return b.ParameterFormatCodes[k-1]
		}
		return 0
	}
}

// intParam reads an integer parameter in text or binary (int2/int4/int8) form.
func intParam(b *pgproto3.Bind, k int) (int64, bool) {
	if k < 1 || k > len(b.Parameters) || b.Parameters[k-1] == nil {
		return 0, false
	}
	v := b.Parameters[k-1]
	if paramFormat(b, k) == 1 {
		switch len(v) {
		case 2:
			return int64(int16(binary.BigEndian.Uint16(v))), true
		case 4:
			return int64(int32(binary.BigEndian.Uint32(v))), true
		case 8:
			return int64(binary.BigEndian.Uint64(v)), true
		}
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
	return n, err == nil
}

// arrayParamLen counts the elements of an array parameter, in binary form
// (every dimension) or text form (one dimension: a nested array is not
// read); NULL has none.
func arrayParamLen(b *pgproto3.Bind, k int) (int64, bool) {
	if k < 1 || k > len(b.Parameters) {
		return 0, false
	}
	v := b.Parameters[k-1]
	if v == nil {
		return 0, true // = ANY (NULL) matches nothing
	}
	if paramFormat(b, k) == 1 {
		if len(v) < 12 {
			return 0, false
		}
		ndim := int32(binary.BigEndian.Uint32(v))
		if ndim < 0 || ndim > 6 || len(v) < 12+8*int(ndim) {
			return 0, false
		}
		n := int64(1)
		if ndim == 0 {
			n = 0
		}
		for i := 0; i < int(ndim); i++ {
			d := int64(int32(binary.BigEndian.Uint32(v[12+8*i:])))
			if d < 0 || d > 1<<31 {
				return 0, false
			}
			n *= d
			if n > 1<<31 {
				return n, true // more than any max_rows
			}
		}
		return n, true
	}
	s := strings.TrimSpace(string(v))
	if strings.HasPrefix(s, "[") { // [1:3]={...}
		i := strings.IndexByte(s, '=')
		if i < 0 {
			return 0, false
		}
		s = strings.TrimSpace(s[i+1:])
	}
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return 0, false
	}
	inner := s[1 : len(s)-1]
	if strings.TrimSpace(inner) == "" {
		return 0, true
	}
	n, quoted := int64(1), false
	for i := 0; i < len(inner); i++ {
		switch ch := inner[i]; {
		case ch == '\\':
			i++ // the next byte is taken as it is
		case ch == '"':
			quoted = !quoted
		case quoted:
		case ch == '{' || ch == '}':
			return 0, false // nested: not read
		case ch == ',':
			n++
		}
	}
	if quoted {
		return 0, false
	}
	return n, true
}

// textParam reads a tenant-typed parameter as text: text format as is,
// binary integers and UUIDs decoded.
func textParam(b *pgproto3.Bind, k int, pol *policy.Policy) (string, bool) {
	if k < 1 || k > len(b.Parameters) || b.Parameters[k-1] == nil {
		return "", false
	}
	v := b.Parameters[k-1]
	if paramFormat(b, k) == 0 {
		return string(v), true
	}
	switch pol.Tenant.Type {
	case policy.TypeUUID:
		if len(v) != 16 {
			return "", false
		}
		h := hex.EncodeToString(v)
		return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], true
	case policy.TypeText:
		return string(v), true
	default:
		n, ok := intParam(b, k)
		return strconv.FormatInt(n, 10), ok
	}
}

// onExecute queues an Execute's statement. Callers hold c.mu.
func (g *Guard) onExecute(c *conn, body []byte) (proxy.Verdict, error) {
	end := bytes.IndexByte(body, 0)
	if end < 0 {
		return proxy.Verdict{}, &proxy.ProtocolError{Code: proxy.CodeProtocolViolation, Message: "malformed Execute message"}
	}
	c.markUnsynced()
	pt := c.unnamed
	if end > 0 {
		pt = c.portals[string(body[:end])] // no allocation for the lookup
	}
	if pt != nil && pt.rejected {
		return proxy.Verdict{}, nil // the server skips it after the rejection's error
	}
	f := c.newInflight()
	*f = inflight{cycle: c.frontCycle, start: g.opts.Now(), tenant: c.current().v, protocol: "extended"}
	if pt == nil {
		// A cursor opened with DECLARE (decided when it was declared), or a
		// portal that does not exist (the server reports it).
		f.dec = &cursorDecision
	} else {
		f.dec, f.value, f.injected = pt.dec, pt.effectValue, pt.injected
		f.rowsSoFar = &pt.rows
		g.countDecision(c, pt.dec)
		c.applyEffects(pt.dec, pt.effectValue)
		if op := pt.dec.Prepared; op != nil && op.Op == "deallocate" && op.Name == "" {
			// DEALLOCATE ALL or DISCARD ALL prepared earlier runs now:
			// the guard's prepared forms go too (found in review).
			c.forgetUpstream()
		}
		if pt.dec.CopyIn {
			c.copyIn, c.lastCopy = f, f
		}
	}
	c.queue = append(c.queue, f)
	return proxy.Verdict{}, nil
}

// onClose records a Close. Callers hold c.mu.
func (g *Guard) onClose(c *conn, body []byte) {
	c.markUnsynced()
	if len(body) < 2 {
		return // the server refuses it
	}
	name, _, _ := cstring(body[1:])
	r := c.expectReply(reply{cycle: c.frontCycle, typ: proxy.MsgClose, name: name, stmt: body[0] == 'S'})
	switch body[0] {
	case 'S':
		r.prev = c.statements[name]
		delete(c.statements, name)
	case 'P':
		c.dropPortal(name)
	}
}

func (g *Guard) onFunctionCall(c *conn) (proxy.Verdict, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := rewriter.Decision{Kind: rewriter.KindUtility, Verdict: rewriter.VerdictBypassed, Reason: rewriter.ReasonBypass, Enforced: true}
	cycle := c.frontCycle
	c.frontCycle++
	if c.bypass {
		c.queue = append(c.queue, &inflight{cycle: cycle, dec: &d, start: g.opts.Now(), protocol: "function_call"})
		g.countDecision(c, &d)
		return proxy.Verdict{}, nil
	}
	err := &rewriter.Error{SQLState: "42501", Message: "tenantguard: the FunctionCall protocol message is not allowed", Hint: "call the function with a SELECT statement"}
	d.Verdict, d.Reason, d.Error = rewriter.VerdictRejected, rewriter.ReasonDeniedFunction, err
	g.countDecision(c, &d)
	name, rj := c.reject(err, d.Reason)
	c.queue = append(c.queue, &inflight{cycle: cycle, dec: &d, start: g.opts.Now(), protocol: "function_call", reject: rj})
	return proxy.Verdict{Replace: encode(&pgproto3.Query{String: sentinelQuery(name)})}, nil
}

// encode returns the wire form of a message.
func encode(m pgproto3.Message) []byte { return encodeAppend(nil, m) }

// encodeAppend appends the wire form of a message to dst.
func encodeAppend(dst []byte, m pgproto3.Message) []byte { return mustEncode(m.Encode(dst)) }

// mustEncode returns an encoded message. Only oversized messages fail to
// encode; the statement texts and names built here are far below the
// protocol limits.
func mustEncode(b []byte, err error) []byte {
	if err != nil {
		panic("guard: encode: " + err.Error())
	}
	return b
}

// appendMessage appends a message of type typ with body to dst.
func appendMessage(dst []byte, typ byte, body []byte) []byte {
	dst = append(dst, typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(dst[len(dst)-4:], uint32(len(body)+4))
	return append(dst, body...)
}

// auditDecision writes the audit event of a decision whose statement does
// not reach the upstream as itself. Callers hold c.mu.
func (g *Guard) auditDecision(c *conn, d *rewriter.Decision, protocol string, rows int64, dur int64, sqlstate string) {
	ev := g.statementEvent(c, d, protocol)
	ev.Rows = rows
	if d.Error != nil {
		ev.SQLState = d.Error.SQLState
	}
	if sqlstate != "" {
		ev.SQLState = sqlstate
	}
	g.opts.Audit.Log(ev)
}

// statementEvent fills the session's reusable event (the audit logger
// encodes it before Log returns). Callers hold c.mu.
func (g *Guard) statementEvent(c *conn, d *rewriter.Decision, protocol string) *audit.Event {
	c.ev = audit.Event{
		Event: audit.EventStatement, ConnID: c.id, Client: c.client, User: c.user, Database: c.database,
		ApplicationName: c.applicationName, Tenant: c.current().v, Kind: d.Kind, Relations: d.Relations,
		Decision: auditVerdict(d), Reason: d.Reason, Fingerprint: d.Fingerprint, Statement: d.Normalized,
		Protocol: protocol, Rows: -1,
	}
	return &c.ev
}

// auditVerdict is the decision the audit records: in audit mode the
// verdict tenantguard would have enforced.
func auditVerdict(d *rewriter.Decision) string { return d.Verdict }

// countDecision counts a decision in the metrics. Callers hold c.mu.
func (g *Guard) countDecision(c *conn, d *rewriter.Decision) {
	c.nStatements++
	if c.stmtCounter == nil || c.stmtVerdict != d.Verdict || c.stmtKind != d.Kind {
		c.stmtCounter = g.opts.Metrics.Statements.WithLabelValues(d.Verdict, d.Kind)
		c.stmtVerdict, c.stmtKind = d.Verdict, d.Kind
	}
	c.stmtCounter.Inc()
	if d.Verdict == rewriter.VerdictRejected {
		c.nRejected++
		g.opts.Metrics.Rejections.WithLabelValues(d.Reason).Inc()
		if (d.Reason == rewriter.ReasonUnknownRelation || d.Reason == rewriter.ReasonUnknownFunction) && g.opts.ReloadCatalog != nil {
			// Created since the last load, perhaps: a client retrying
			// should not wait for the next interval.
			g.opts.ReloadCatalog()
		}
	}
}

func (g *Guard) countCache(res *rewriter.Result) {
	if res.CacheHit {
		g.opts.Metrics.RewriteCacheHits.Inc()
	} else {
		g.opts.Metrics.RewriteCacheMisses.Inc()
	}
}
