package guard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/audit"
	"github.com/tenantguard/tenantguard/rewriter"
)

// Backend message types the guard watches besides the proxy's own.
const (
	msgEmptyQuery    = 'I'
	msgPortalSuspend = 's'
	msgNotification  = 'A'
	msgParseComplete = '1'
	msgCloseComplete = '3'
	msgCopyIn        = 'G'
	msgBindComplete  = '2'
	msgNoData        = 'n'
	msgRowDesc       = 'T'
	msgParamDesc     = 't'
	msgCopyOut       = 'H'
	msgCopyData      = 'd'
	msgCopyDone      = 'c'
	msgNotice        = 'N'
)

// BackendInterest selects the backend messages the guard sees: statement
// completions and errors whole, DataRow by length only (the row guard counts
// rows, it never reads them).
func (g *Guard) BackendInterest(typ byte) proxy.Interest {
	switch typ {
	case proxy.MsgErrorResponse, proxy.MsgCommandComplete, proxy.MsgReadyForQuery:
		return proxy.Inspect
	case proxy.MsgDataRow, msgEmptyQuery, msgPortalSuspend:
		return proxy.Notify
	case msgBindComplete, msgNoData, msgRowDesc, msgParamDesc:
		// Not shown, except while a row-guard cut drops the cycle's
		// replies (cutReplies).
		return proxy.Ignore
	case msgNotification, msgParseComplete, msgCloseComplete, msgCopyIn:
		return proxy.Inspect
	case msgNotice:
		// Seen by length only: dropped while the guard's own Parse is
		// answered (upstream.go).
		return proxy.Notify
	}
	return proxy.Ignore
}

// cutReplies are the replies the guard sees only while it cuts a cycle
// (c.cutting), to drop them: seen by length only.
var cutReplies = [...]byte{msgBindComplete, msgNoData, msgRowDesc, msgParamDesc, msgCopyOut, msgCopyData, msgCopyDone}

// showCut asks the relay for cutReplies while c.cutting, and stops when the
// cut ends. Callers hold c.mu, in OnBackend or OnRows.
func (c *conn) showCut(s *proxy.Session) {
	if c.cutting == c.cutShown && c.upOn == c.upShown {
		return
	}
	c.cutShown, c.upShown = c.cutting, c.upOn
	for _, t := range cutReplies {
		in := proxy.Ignore
		if c.cutting || c.upOn && (t == msgBindComplete || t == msgNoData) {
			in = proxy.Notify // also to drop a prepared form's (upstream.go)
		}
		s.SetBackendInterest(t, in)
	}
}

// drop is the verdict that removes a backend message.
var drop = proxy.Verdict{Replace: []byte{}}

// OnBackend completes statements: audit, metrics, row guard, rejection
// errors, error redaction and transaction tracking.
func (g *Guard) OnBackend(s *proxy.Session, m proxy.Message) (proxy.Verdict, error) {
	c, _ := s.State.(*conn)
	if c == nil {
		return proxy.Verdict{}, errNoState
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, err := g.onBackend(s, c, m)
	c.showCut(s)
	return v, err
}

// onBackend decides one backend message. Callers hold c.mu.
func (g *Guard) onBackend(s *proxy.Session, c *conn, m proxy.Message) (proxy.Verdict, error) {
	if c.refusal != nil {
		if m.Type == proxy.MsgReadyForQuery {
			return proxy.Verdict{}, g.enforceRefusal(c)
		}
		return proxy.Verdict{}, nil // ParameterStatus, BackendKeyData
	}
	if c.probeReplies > 0 {
		if v, ok := g.onProbeReply(c, m); ok {
			return v, nil
		}
	}
	switch m.Type {
	case msgParseComplete, msgCloseComplete:
		if m.Type == msgCloseComplete {
			if f := c.head(g); f != nil && f.conv != nil && f.convCloses > 0 {
				f.convCloses-- // a Close sent in front of a prepared form's Bind
				return drop, nil
			}
		}
		return g.onPrepareReply(c, m.Type)
	case msgCopyIn:
		f := c.head(g)
		if f == nil || !f.dec.CopyIn {
			break
		}
		f.copyStarted = true
		if c.cutting && f.protocol == "simple" {
			// A COPY FROM STDIN later in a cut Query: the client was told
			// the Query failed and sends no data, so the guard fails the
			// COPY itself (the server would wait for data otherwise). Its
			// error is audited with the statement and dropped.
			if c.copyIn == f {
				c.copyIn = nil
			}
			return proxy.Verdict{Replace: []byte{}, Reply: encode(&pgproto3.CopyFail{Message: "tenantguard: the Query was cut by the row guard"})}, nil
		}
	case msgBindComplete, msgNoData, msgRowDesc, msgParamDesc, msgCopyOut, msgCopyData, msgCopyDone:
		if c.cutting {
			return drop, nil // the client was told the cycle failed
		}
		if m.Type == msgBindComplete || m.Type == msgNoData {
			if f := c.head(g); f != nil && f.conv != nil {
				return drop, nil // a Query's, sent in its prepared form
			}
		}
	case proxy.MsgDataRow:
		return g.onDataRow(c)
	case proxy.MsgCommandComplete:
		return g.onCommandComplete(c, m.Body)
	case proxy.MsgErrorResponse:
		return g.onError(c, m.Body)
	case msgEmptyQuery:
		if c.cutOwn() {
			return drop, nil
		}
		if f := c.pop(g); f != nil {
			g.complete(c, f, 0, "")
		}
		if c.cutting {
			return drop, nil
		}
	case msgPortalSuspend:
		if c.cutOwn() {
			return drop, nil
		}
		if f := c.pop(g); f != nil {
			g.complete(c, f, f.rows, "")
		}
		if c.cutting {
			return drop, nil
		}
	case proxy.MsgReadyForQuery:
		if c.abortReplies == 1 {
			// The answer to the guard's own abort Query: no cycle's.
			c.abortReplies = 0
			return drop, nil
		}
		if !c.connectLogged {
			g.logConnect(s, c)
		}
		cut := c.cutting
		g.onReady(c, m.Body)
		if cut || c.abortWanted {
			return c.abortAfterCut(m.Body), nil
		}
	case msgNotification:
		if c.bypass {
			return proxy.Verdict{}, nil
		}
		body, ok := stripChannel(m.Body)
		if !ok {
			return drop, nil // not a tenant channel: an ordinary session never listened to it
		}
		hdr := []byte{msgNotification, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(body)+4))
		return proxy.Verdict{Replace: append(hdr, body...)}, nil
	}
	return proxy.Verdict{}, nil
}

// OnRows implements proxy.RowCounter: n DataRows in a row, decided one by
// one exactly as OnBackend decides each, under one lock. The run stops
// passing at the first row the row guard replaces or drops; the rows after
// it would be dropped too (the result is being cut).
func (g *Guard) OnRows(s *proxy.Session, n int) (int, proxy.Verdict, error) {
	c, _ := s.State.(*conn)
	if c == nil {
		return 0, proxy.Verdict{}, errNoState
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.showCut(s) // a cut starts here; under the lock (defers run last first)
	if c.refusal != nil {
		return n, proxy.Verdict{}, nil
	}
	for i := 0; i < n; i++ {
		v, err := g.onDataRow(c)
		if err != nil || v.Replace != nil {
			return i, v, err
		}
	}
	return n, proxy.Verdict{}, nil
}

// onPrepareReply matches a ParseComplete or CloseComplete with the Parse or
// Close it answers, and drops the guard's own. Callers hold c.mu.
func (g *Guard) onPrepareReply(c *conn, typ byte) (proxy.Verdict, error) {
	c.staleReplies()
	if len(c.replies) == 0 {
		return proxy.Verdict{}, errUnexpectedReply
	}
	r := c.replies[0]
	c.replies[0] = reply{}
	c.replies = c.replies[1:]
	if (typ == msgParseComplete) != (r.typ == proxy.MsgParse) {
		return proxy.Verdict{}, errUnexpectedReply
	}
	if r.stmt && (r.typ == proxy.MsgClose || !r.literal) {
		// The name now holds no literal, unless a later Parse sent one.
		if seq, ok := c.literals[r.name]; ok && seq < r.seq {
			delete(c.literals, r.name)
		}
	}
	if r.own || c.cutting {
		return drop, nil
	}
	return proxy.Verdict{}, nil
}

// errUnexpectedReply: the upstream answered a Parse or Close the guard did
// not see go out. The guard can no longer tell its own replies from the
// client's, so the session ends.
var errUnexpectedReply = errors.New("guard: ParseComplete or CloseComplete out of order")

// staleReplies drops the replies of cycles the upstream has finished: an
// error skipped their messages, or failed them. What the guard recorded for
// them is undone: a client's Parse or Close of a statement did not happen
// (the name keeps what it held), and a statement the guard was preparing
// again is in an unknown state, prepared again at its next Bind. Callers
// hold c.mu.
func (c *conn) staleReplies() {
	n := 0
	for n < len(c.replies) && c.replies[n].cycle < c.backCycle {
		n++
	}
	if n == 0 {
		return
	}
	// Undo the latest first, so that each record finds the name as it
	// left it.
	for i := n - 1; i >= 0; i-- {
		r := c.replies[i]
		c.replies[i] = reply{}
		switch {
		case r.own:
			r.p.reparse = true
		case r.forgets != c.forgets:
			// DEALLOCATE or DISCARD ALL came after it: nothing to restore.
		case r.typ == proxy.MsgParse && r.p != nil && c.statements[r.name] == r.p:
			if r.prev != nil && r.name != "" {
				c.statements[r.name] = r.prev
			} else {
				// A failed Parse of the unnamed statement has dropped the
				// old one already.
				delete(c.statements, r.name)
			}
		case r.typ == proxy.MsgClose && r.stmt && r.prev != nil && c.statements[r.name] == nil:
			c.statements[r.name] = r.prev
		}
	}
	c.replies = c.replies[n:]
}

// expectReply records a Parse or Close sent upstream and returns its
// record, valid until the next call. Callers hold c.mu.
func (c *conn) expectReply(r reply) *reply {
	if len(c.replies) == 0 && cap(c.replies) < len(c.replyBuf) {
		c.replies = c.replyBuf[:0] // no allocation in steady state
	}
	c.replySeq++
	r.seq, r.forgets = c.replySeq, c.forgets
	c.replies = append(c.replies, r)
	return &c.replies[len(c.replies)-1]
}

// setLiteral records that the upstream may hold name with the tenant
// written in, as of the Parse of seq. Callers hold c.mu.
func (c *conn) setLiteral(name string, seq uint64) {
	if c.literals == nil {
		c.literals = map[string]uint64{}
	}
	c.literals[name] = seq
}

// pop removes and returns the statement the next completion belongs to,
// auditing statements of finished cycles that the server skipped after an
// error. Callers hold c.mu.
func (c *conn) pop(g *Guard) *inflight {
	f := c.head(g)
	if f != nil {
		c.queue[0] = nil
		c.queue = c.queue[1:]
	}
	return f
}

// head returns the statement producing rows now, without removing it.
func (c *conn) head(g *Guard) *inflight {
	for len(c.queue) > 0 && c.queue[0].cycle < c.backCycle {
		g.skipped(c, c.queue[0])
		c.queue[0] = nil
		c.queue = c.queue[1:]
	}
	if len(c.queue) == 0 || c.queue[0].cycle > c.backCycle {
		// A reply of a cycle with no statement of its own (a failed
		// Parse or Bind before any Execute, a sentinel): never a later
		// cycle's statement.
		return nil
	}
	return c.queue[0]
}

func (g *Guard) skipped(c *conn, f *inflight) {
	ev := g.statementEvent(c, f.dec, f.protocol)
	ev.Tenant = f.tenant
	ev.Result = "not_executed"
	if f.reject != nil {
		// A refusal whose sentinel the server skipped after an earlier
		// error of its cycle (an answered one left the queue with its
		// error): still a decision, audited as the refusal it was.
		delete(c.rejects, f.reject.name)
		if f.dec.Error != nil {
			ev.SQLState = f.dec.Error.SQLState
		}
	}
	g.opts.Audit.Log(ev)
}

func (g *Guard) onDataRow(c *conn) (proxy.Verdict, error) {
	if c.cutting {
		return drop, nil
	}
	f := c.head(g)
	if f == nil {
		return proxy.Verdict{}, nil
	}
	f.rows++
	total := f.rows
	if f.rowsSoFar != nil {
		*f.rowsSoFar++
		total = *f.rowsSoFar
	}
	if f.dec.RowGuard && f.dec.Enforced && f.dec.MaxRows > 0 && total > f.dec.MaxRows {
		// Cut the result: this row and everything up to ReadyForQuery is
		// dropped, and the client gets a 54000 error instead of the rest.
		c.cutting, c.cutPending = true, true
		g.opts.Metrics.RowGuardCuts.Inc()
		g.opts.Metrics.Rejections.WithLabelValues("row_limit").Inc()
		c.queue = c.queue[1:]
		ev := g.statementEvent(c, f.dec, f.protocol)
		ev.Tenant, ev.Decision, ev.Reason, ev.SQLState = f.tenant, audit.DecisionRejected, "row_limit", "54000"
		ev.Rows, ev.Duration = f.dec.MaxRows, g.opts.Now().Sub(f.start)
		g.opts.Audit.Log(ev)
		return proxy.Verdict{Replace: encode(&pgproto3.ErrorResponse{
			Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "54000",
			Message: "tenantguard: the result exceeds limits.max_rows (" + strconv.FormatInt(f.dec.MaxRows, 10) + " rows)",
			Hint:    "add a LIMIT or a narrower condition",
		})}, nil
	}
	return proxy.Verdict{}, nil
}

func (g *Guard) onCommandComplete(c *conn, body []byte) (proxy.Verdict, error) {
	if c.cutOwn() {
		return drop, nil
	}
	tag := body
	if i := bytes.IndexByte(tag, 0); i >= 0 {
		tag = tag[:i]
	}
	f := c.pop(g)
	if f == nil {
		return proxy.Verdict{}, nil
	}
	rows := tagRows(tag)
	if rows < 0 {
		rows = f.rows
	}
	if f.dec.TxOp != nil && (c.cutting || c.abortWanted) {
		switch f.dec.TxOp.Op {
		case "commit", "rollback", "rollback_to", "prepare_transaction":
			c.abortCancel = true
		}
	}
	if f.dec.TxOp != nil && f.dec.TxOp.Op == "commit" && string(tag) == "ROLLBACK" {
		// COMMIT of a failed transaction rolls back.
		c.tenant.UndoCommit()
	}
	g.complete(c, f, rows, "")
	c.recycleInflight(f)
	if c.cutting {
		// A later statement of the cut cycle: it ran (and is audited so),
		// but the client was told the cycle failed.
		return drop, nil
	}
	return proxy.Verdict{}, nil
}

// cutOwn reports whether a completion (CommandComplete, PortalSuspended,
// EmptyQueryResponse) is the cut statement's own, which the cut already
// took from the queue and audited; the statements after it in the cycle
// complete as usual, their replies dropped. Callers hold c.mu.
func (c *conn) cutOwn() bool {
	if c.cutting && c.cutPending {
		c.cutPending = false
		return true
	}
	return false
}

// tagRows reads the row count of a CommandComplete tag ("SELECT 5",
// "INSERT 0 5", "UPDATE 3"); -1 when the tag has none.
func tagRows(tag []byte) int64 {
	i := bytes.LastIndexByte(tag, ' ')
	if i < 0 || i == len(tag)-1 {
		return -1
	}
	var n int64
	for _, ch := range tag[i+1:] {
		if ch < '0' || ch > '9' || n > (1<<62)/10 {
			return -1
		}
		n = n*10 + int64(ch-'0')
	}
	return n
}

// complete audits a finished statement and observes its duration.
func (g *Guard) complete(c *conn, f *inflight, rows int64, sqlstate string) {
	now := g.opts.Now()
	d := now.Sub(f.start)
	g.opts.Metrics.StatementDuration.Observe(d.Seconds())
	ev := g.statementEvent(c, f.dec, f.protocol)
	// The completion time is the event's time: one clock read fewer.
	ev.Time, ev.Tenant, ev.Rows, ev.Duration, ev.Injected, ev.SQLState = now, f.tenant, rows, d, f.injected, sqlstate
	g.opts.Audit.Log(ev)
	if f.dec.Kind == rewriter.KindDDL && sqlstate == "" {
		c.ddlDone = true // reload the catalog once it is committed (onReady)
	}
}

// abortAfterCut handles the ReadyForQuery of a cut cycle, or of one after
// it while the abort waits: a transaction block left open ('T') must fail,
// as the error the client was told of would have, so the client is shown
// 'E' and, once no client message is in flight, the guard's abort Query
// (a sentinel the server refuses) goes upstream in front of the client's
// next message (OnFrontend): so before anything the client sends after
// this, with no race between the relay's directions. COMMIT then rolls
// back and later statements get 25P02 from the server itself, as after
// any refusal. A block that failed ('E') or ended ('I': a COMMIT in the
// cut cycle itself, see the README), or that the client's own transaction
// control after the cut ended or rolled back (a pipelined ROLLBACK TO
// SAVEPOINT recovers it, as in PostgreSQL), needs nothing. Callers hold
// c.mu.
func (c *conn) abortAfterCut(body []byte) proxy.Verdict {
	if len(body) != 1 || body[0] != 'T' || c.abortCancel {
		c.abortWanted, c.abortCancel = false, false
		return proxy.Verdict{}
	}
	c.abortWanted = true
	if c.frontCycle == c.backCycle && !c.unsynced && c.copyIn == nil && c.abortReplies == 0 {
		c.abortWanted = false
		c.abortNext.Store(true)
	}
	return proxy.Verdict{Replace: readyFailed}
}

// readyFailed is a ReadyForQuery in a failed transaction block.
var readyFailed = encode(&pgproto3.ReadyForQuery{TxStatus: 'E'})

// abortFirst puts the guard's abort Query in front of a client message's
// verdict (m as it is, or what replaces it). Callers hold c.mu.
func (c *conn) abortFirst(m proxy.Message, v proxy.Verdict) proxy.Verdict {
	out := appendQuery(nil, []string{sentinelQuery(c.nextSentinel())}, "")
	if v.Replace != nil {
		out = append(out, v.Replace...)
	} else {
		out = append(out, m.Type, 0, 0, 0, 0)
		binary.BigEndian.PutUint32(out[len(out)-4:], uint32(len(m.Body)+4))
		out = append(out, m.Body...)
	}
	c.abortReplies = 2
	v.Replace = out
	return v
}

func (g *Guard) onError(c *conn, body []byte) (proxy.Verdict, error) {
	if c.abortReplies == 2 {
		// The error of the guard's abort Query, the first reply after it
		// was sent (nothing of the client's was in flight): the transaction
		// failed, as it should. It and its ReadyForQuery are no client
		// statement's.
		c.abortReplies = 1
		return drop, nil
	}
	// An error ends the implicit transaction of its cycle: undo its SETs
	// (even while the row guard cuts the cycle's replies).
	c.undoCycle(c.backCycle)
	if f := c.lastCopy; f != nil && !f.copyStarted && f.cycle == c.backCycle {
		// The COPY failed, or was skipped, before copy-in: the server
		// answers the Syncs the client sent before its CopyDone after
		// all, and the client may send no CopyDone (pgx does not).
		c.extraReady += f.uncountedSyncs
		if c.copyIn == f {
			if f.uncountedSyncs > 0 && c.extMessages == f.extAtSync {
				c.unsynced = false
			}
			c.copyIn = nil
		}
		f.uncountedSyncs = 0
		c.lastCopy = nil
	}
	var e pgproto3.ErrorResponse
	if err := e.Decode(append([]byte(nil), body...)); err != nil {
		if c.bypass {
			return proxy.Verdict{}, nil
		}
		// An error that cannot be read cannot be redacted: replace it
		// (it still ends the statement, so the queue moves on).
		if f := c.pop(g); f != nil {
			g.complete(c, f, -1, "XX000")
		}
		return proxy.Verdict{Replace: encode(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR",
			Code: "XX000", Message: "tenantguard: the server sent an error that could not be read"})}, nil
	}
	if c.cutting && c.sentinelIn(&e) == "" {
		// The cut statement's own error needs nothing more; a later
		// statement of the cycle failed as it ran: audit it so. (A later
		// refusal's sentinel is audited below.)
		if !c.cutOwn() {
			if f := c.pop(g); f != nil {
				g.complete(c, f, -1, e.Code)
			}
		}
		return drop, nil
	}

	if name := c.sentinelIn(&e); name != "" {
		rj := c.rejects[name]
		delete(c.rejects, name)
		if f := c.head(g); f != nil && f.reject == rj {
			c.queue = c.queue[1:]
			ev := g.statementEvent(c, f.dec, f.protocol)
			ev.Tenant, ev.Duration = f.tenant, g.opts.Now().Sub(f.start)
			if f.dec.Error != nil {
				ev.SQLState = f.dec.Error.SQLState
			}
			g.opts.Audit.Log(ev)
		}
		if c.cutting {
			return drop, nil // the client was told the cycle failed
		}
		if rj == nil {
			return proxy.Verdict{}, nil
		}
		return proxy.Verdict{Replace: encode(&pgproto3.ErrorResponse{
			Severity: "ERROR", SeverityUnlocalized: "ERROR",
			Code: rj.err.SQLState, Message: rj.err.Message, Hint: rj.err.Hint,
		})}, nil
	}
	sql, conv := "", false
	if f := c.pop(g); f != nil {
		if f.conv != nil {
			g.upstreamFailed(c, f.conv, e.Code, e.Message)
			conv = true
		}
		sql = f.dec.SQL
		g.complete(c, f, -1, e.Code)
	}
	stripped := conv && strings.HasPrefix(e.Where, "unnamed portal parameter $")
	if stripped {
		// A Query sent in its prepared form: its text has no parameter.
		e.Where = ""
	}
	if g.redact(c, &e, sql) || stripped {
		return proxy.Verdict{Replace: encode(&e)}, nil
	}
	return proxy.Verdict{}, nil
}

// sentinelIn returns the sentinel name an upstream error is about, or "".
// Only a name the session registered counts, in the server's error for an
// unknown function (a sentinel Query or Parse) or prepared statement (a
// sentinel Bind): a client's own error that quotes a sentinel-like text is
// redacted as any other error.
func (c *conn) sentinelIn(e *pgproto3.ErrorResponse) string {
	if (e.Code != "42883" && e.Code != "26000") || len(c.rejects) == 0 {
		return ""
	}
	prefix := "tg_reject_" + c.nonce + "_"
	i := strings.Index(e.Message, prefix)
	if i < 0 {
		return ""
	}
	j := i + len(prefix)
	for j < len(e.Message) && (e.Message[j] == '_' || e.Message[j] >= '0' && e.Message[j] <= '9') {
		j++
	}
	if c.rejects[e.Message[i:j]] == nil {
		return ""
	}
	return e.Message[i:j]
}

func (g *Guard) onReady(c *conn, body []byte) {
	if c.extraReady > 0 {
		// The answer to a Sync the guard took for one a server in copy-in
		// mode ignores: it ends no cycle of the guard's.
		c.extraReady--
		c.cutting, c.cutPending = false, false
		return
	}
	c.backCycle++
	if c.frontCycle == c.backCycle && len(body) == 1 {
		c.upStatus = body[0]
	}
	c.endCycles(c.backCycle)
	c.cutting, c.cutPending = false, false
	if c.ddlDone && len(body) > 0 && body[0] == 'I' && g.opts.ReloadCatalog != nil {
		// DDL through tenantguard (a migration, a ddl role), committed: the
		// catalog learns of it now rather than at the next interval.
		c.ddlDone = false
		g.opts.ReloadCatalog()
	}
	for len(c.queue) > 0 && c.queue[0].cycle < c.backCycle {
		g.skipped(c, c.queue[0])
		c.queue[0] = nil
		c.queue = c.queue[1:]
	}
	if len(c.replies) > 0 {
		c.staleReplies()
	}
	if len(c.rejects) > 0 {
		// Refusals whose sentinel a failed block answered with 25P02, or
		// that an earlier error skipped (found in review: they stayed).
		for name, r := range c.rejects {
			if r.cycle < c.backCycle {
				delete(c.rejects, name)
			}
		}
	}
	if len(c.queue) == 0 {
		// Start the next cycle on a small array of the session's own; a
		// long pipeline's larger one is dropped with the old slice.
		if c.queueBuf == nil {
			c.queueBuf = make([]*inflight, 4)
		}
		clear(c.queueBuf)
		c.queue = c.queueBuf[:0]
	}
	if len(body) == 0 || c.frontCycle != c.backCycle {
		// More cycles are in flight: the tracked state already reflects
		// statements the server has not reached.
		return
	}
	switch body[0] {
	case 'I':
		// Every portal of the cycles the server has finished ended with
		// the transaction (a later cycle's Bind may be here already).
		if pt := c.unnamed; pt != nil && pt.cycle < c.backCycle {
			c.unnamed = nil
			if len(c.queue) == 0 {
				// Every statement of its cycles has completed: nothing
				// counts rows through it any more.
				*pt = portal{}
				c.sparePortal = pt
			}
		}
		if len(c.portals) > 0 {
			for name, pt := range c.portals {
				if pt.cycle < c.backCycle {
					delete(c.portals, name)
				}
			}
		}
		if c.tenant.InTx() {
			// The transaction ended in a way the guard did not see (for
			// example a procedure's COMMIT): keep the session value.
			c.tenant.EndTx(true, false)
		}
	case 'T', 'E':
		c.tenant.Begin()
	}
}

// OnEnd writes the disconnect event.
func (g *Guard) OnEnd(s *proxy.Session) {
	c, _ := s.State.(*conn)
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refused {
		return
	}
	g.opts.Metrics.ClientConnections.Dec()
	g.opts.Metrics.UpstreamConnections.Dec()
	ev := &audit.Event{
		Event: audit.EventDisconnect, ConnID: c.id, Client: c.client, User: c.user, Database: c.database,
		ApplicationName: c.applicationName, Tenant: c.current().v,
		Statements: c.nStatements, Rejected: c.nRejected, Duration: g.opts.Now().Sub(c.started),
	}
	if !c.connectLogged {
		ev.Result = "not_authenticated" // the server refused the login
	}
	g.opts.Audit.Log(ev)
	g.log.Debug("session ended", zap.Uint64("conn_id", c.id), zap.Int64("statements", c.nStatements))
}
