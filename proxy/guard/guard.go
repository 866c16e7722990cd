// Package guard is tenantguard's enforcement layer: it implements
// proxy.Hooks, decides every statement that reaches the upstream through any
// message type with the rewriter, tracks each session's tenant, refuses what
// the policy refuses with a PostgreSQL error, and writes the audit trail and
// the metrics of every decision.
//
// # Rejections keep PostgreSQL's error semantics
//
// A rejected statement is not answered by the proxy itself: it is replaced,
// in its place in the stream, by a sentinel the upstream refuses (a call of a
// function, or a Bind to a prepared statement, whose name carries a random
// per-process nonce and a sequence number). The upstream's error arrives in
// order with every other response, fails the transaction block, rolls back
// an implicit transaction and discards the extended-protocol batch up to
// Sync exactly as PostgreSQL does for any error; the guard then replaces
// that error with its own SQLSTATE, message and hint. No response is ever
// reordered and no transaction state is simulated.
package guard

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/admin"
	"github.com/tenantguard/tenantguard/proxy/audit"
	"github.com/tenantguard/tenantguard/rewriter"
)

// Options configures a Guard.
type Options struct {
	// Policies holds the policy in force (hot-reloaded).
	Policies *policy.Holder
	// Catalog returns the latest upstream catalog, or nil when none is
	// loaded. Ordinary sessions are refused (57P03) while it is nil: without
	// the catalog, views and functions cannot be vouched for.
	Catalog func() *rewriter.Catalog
	Audit   *audit.Logger
	Metrics *admin.Metrics
	Logger  *zap.Logger
	// ReloadCatalog, when set, asks for a catalog reload without waiting for
	// it (and without blocking: it is called from the relay). It is called
	// when a statement is refused for a relation or function the catalog
	// does not list (perhaps created since it was loaded), and after DDL
	// that went through tenantguard is committed; the catalog.Refresher
	// merges and spaces the reloads.
	ReloadCatalog func()
	// Database, when set, is the only database ordinary sessions may use:
	// the catalog describes that database and no other.
	Database string
	// RewriterOptions are passed to every rewriter built.
	RewriterOptions []rewriter.Option
	// Now is the clock (default time.Now).
	Now func() time.Time
	// KeepSimple sends simple-protocol statements upstream as their text
	// always: none goes in its prepared form (upstream.go).
	KeepSimple bool
}

// Guard implements proxy.Hooks. It is safe for concurrent use by many
// sessions.
type Guard struct {
	opts  Options
	log   *zap.Logger
	nonce string
	// prepNonce names the guard's prepared statements (upstream.go): a
	// client can read their names (pg_prepared_statements), so it is not
	// the nonce that makes the sentinels unguessable.
	prepNonce string

	mu    sync.Mutex // serialises rebuilds
	built atomic.Pointer[engine]
}

// engine is a rewriter with the policy and catalog it was built from.
type engine struct {
	pol *policy.Policy
	cat *rewriter.Catalog
	rw  *rewriter.Rewriter
}

var _ proxy.Hooks = (*Guard)(nil)

// New returns a Guard.
func New(opts Options) *Guard {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Catalog == nil {
		opts.Catalog = func() *rewriter.Catalog { return nil }
	}
	if opts.Metrics == nil {
		opts.Metrics = admin.NewMetrics()
	}
	var b, pb [8]byte
	_, _ = rand.Read(b[:])
	_, _ = rand.Read(pb[:])
	return &Guard{opts: opts, log: opts.Logger, nonce: hex.EncodeToString(b[:]), prepNonce: hex.EncodeToString(pb[:])}
}

// engine returns the rewriter for the policy and catalog in force, building
// a new one (with an empty decision cache) when either changed.
func (g *Guard) engine() *engine {
	pol := g.opts.Policies.Load()
	cat := g.opts.Catalog()
	if b := g.built.Load(); b != nil && b.pol == pol && b.cat == cat {
		return b // the common case: two atomic loads
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if b := g.built.Load(); b != nil && b.pol == pol && b.cat == cat {
		return b
	}
	opts := append([]rewriter.Option{rewriter.WithTenantSetting()}, g.opts.RewriterOptions...)
	b := &engine{pol: pol, cat: cat, rw: rewriter.New(pol, cat, opts...)}
	g.built.Store(b)
	return b
}

// conn is the guard's state of one session (proxy.Session.State).
type conn struct {
	mu sync.Mutex

	id              uint64
	nonce           string
	user, database  string
	applicationName string
	client          string
	started         time.Time
	// bypass is decided once, from the authenticated user: a later SET ROLE
	// cannot make a session a bypass session.
	bypass bool

	tenant rewriter.TenantTracker
	// pinned: the tenant came from the startup parameters and no statement
	// has changed it since, so the upstream's setting holds exactly
	// c.tenant's value and statements (simple and extended protocol) are
	// scoped with a literal (rewriter.Session.TenantLiteral), which
	// PostgreSQL plans as cheaply as a hand-written predicate. The first
	// statement with a tenant effect ends it for the rest of the session;
	// prepared statements holding the literal are then prepared again
	// before they run (see literals).
	pinned bool
	// ddlDone: a DDL statement completed; the catalog is reloaded at the
	// next ReadyForQuery outside a transaction.
	ddlDone bool
	// snaps holds the tenant state at the start of each cycle sent
	// upstream outside a transaction block and not finished yet, oldest
	// first: a cycle that fails is an implicit transaction rolled back,
	// and its SETs are undone (see undoCycle).
	snaps   []cycleSnap
	snapBuf [2]cycleSnap

	statements map[string]*prepared // named (and unnamed "") prepared statements
	// sqlPrepared: the engine each SQL-level PREPARE name was decided with
	// (trackPrepared); nil until the first PREPARE.
	sqlPrepared map[string]*engine
	// portals holds the named portals; unnamed is the unnamed one (most
	// are: one per Bind, kept out of the map). Use setPortal and dropPortal.
	portals map[string]*portal
	unnamed *portal
	// sparePortal and spareInflight are a finished portal and statement,
	// zeroed, for the next Bind and Execute: the steady state of a
	// prepared statement allocates neither.
	sparePortal   *portal
	spareInflight *inflight
	// queryBuf holds the last rewritten Query (onQuery's Replace).
	queryBuf []byte
	// replies holds the Parse and Close messages sent upstream whose
	// ParseComplete or CloseComplete has not arrived, in order. The guard's
	// own (a statement prepared again for a new tenant, see onBind) are
	// answered to the guard, never to the client.
	replies  []reply
	replyBuf [2]reply
	replySeq uint64
	// forgets counts DEALLOCATE and DISCARD ALL: a skipped Parse or Close
	// sent before one is not undone (the name is gone either way).
	forgets uint64
	// literals: statement names the upstream may hold with the pinned
	// tenant written in, and the seq of the Parse that sent it. Only a
	// confirmed Close, or a confirmed later Parse without a literal,
	// clears a name; until then, once the pin has ended, a Bind of it
	// prepares it again first, whatever else the guard believes about the
	// name or the tenant. Nil until a pinned session's first Parse.
	literals map[string]uint64

	// queue holds the statements sent upstream whose completion has not
	// been seen yet, in order.
	queue    []*inflight
	queueBuf []*inflight // backing array queue restarts on when empty
	ev       audit.Event // statementEvent's reusable event
	// rejects maps sentinel names to the errors that replace the upstream's.
	rejects map[string]*rejection
	seq     uint64

	// frontCycle counts the Query, Sync and FunctionCall messages sent
	// upstream, backCycle the ReadyForQuery messages received: an inflight
	// statement of an older cycle than backCycle was skipped by the server.
	frontCycle, backCycle uint64
	// unsynced: extended-protocol messages were sent since the last Sync;
	// extMessages counts them all.
	unsynced    bool
	extMessages uint64
	// copyIn is the COPY ... FROM STDIN sent and not yet ended by the
	// client's CopyDone or CopyFail: a Sync sent meanwhile is ignored by a
	// server in copy-in mode, so it does not end a cycle (copyIn counts it
	// in uncountedSyncs). If the COPY fails before copy-in, the server
	// answers those Syncs after all: extraReady ReadyForQuery messages then
	// end no cycle of the guard's.
	copyIn     *inflight
	extraReady int
	// lastCopy is the last COPY ... FROM STDIN sent, until the server
	// enters copy-in for it or fails its cycle.
	lastCopy *inflight

	// cutting is set when the row guard cut a result: backend messages are
	// dropped until ReadyForQuery.
	cutting bool
	// cutPending: the cut statement's own completion has yet to come.
	cutPending bool
	// cutShown: the relay shows the guard cutReplies (conn.showCut).
	cutShown bool
	// A cut cycle that leaves a transaction block open must fail it, as
	// the error the client was told of would have: abortWanted until no
	// client message is in flight (the client is shown 'E' meanwhile),
	// then abortNext until the next client message, which the guard's
	// abort Query precedes; abortReplies then counts the replies of that
	// Query still to drop (its ErrorResponse, its ReadyForQuery).
	abortWanted  bool
	abortNext    atomic.Bool
	abortReplies int
	// abortCancel: a statement the client sent after the cut one ended
	// or rolled back the block (COMMIT, ROLLBACK, ROLLBACK TO SAVEPOINT):
	// its transaction control decides, not the abort.
	abortCancel bool

	// The prepared forms of simple-protocol statements (upstream.go): ups
	// holds them by shape (nil until the first), for upEngine's templates;
	// upClose the names to close with the next preparation. probe is the
	// one being prepared: the replies of its Closes, Parse and Sync
	// (probeReplies of them, probeCloses CloseCompletes first) are the
	// guard's own. upOn: one was prepared, so BindComplete and NoData are
	// shown to the guard (upShown) to drop a prepared form's. upStatus is
	// the upstream's transaction status at its last ReadyForQuery with
	// nothing in flight.
	ups          map[upKey]*upStmt
	upEngine     *engine
	upClose      []string
	upTick       uint64
	upSeq        uint64
	probe        *upStmt
	probeReplies int
	probeCloses  int
	upOn         bool
	upShown      bool
	upStatus     byte
	upOff        bool // the upstream lost a prepared form: none for this session

	refused bool // refused at startup: nothing to count at the end
	// refusal is the startup refusal, sent once authentication is over.
	refusal       *proxy.ClientError
	connectLogged bool

	nStatements, nRejected int64
	// The statements counter of the last (verdict, kind) counted: a
	// session's statements mostly repeat it, and the label lookup hashes.
	stmtCounter           prometheus.Counter
	stmtVerdict, stmtKind string
}

// prepared is a statement the client prepared (Parse).
type prepared struct {
	name   string             // its name (the key in conn.statements)
	dec    *rewriter.Decision // never changed: a new decision replaces it
	eng    *engine            // policy and catalog the decision was made with
	tenant tenantValue        // tenant the decision was made with
	sql    string             // text sent upstream
	text   string             // client's original text (re-decided at Bind after a tenant switch)
	oids   []uint32           // the client's parameter types, for preparing it again
	// rejected: its Parse was replaced by a sentinel, so it does not exist upstream.
	rejected bool
	// reparse: the guard prepared it again and did not see that succeed
	// (an error skipped the rest of the cycle), so what the upstream holds
	// under the name is unknown and the next Bind prepares it again.
	reparse bool
}

// cycleSnap is the tenant state at the start of a cycle.
type cycleSnap struct {
	cycle uint64
	state rewriter.TenantTracker
}

// reply is a ParseComplete or CloseComplete the upstream owes.
type reply struct {
	cycle uint64
	seq   uint64 // order among the Parse and Close messages sent
	typ   byte   // proxy.MsgParse or proxy.MsgClose
	name  string // the prepared statement parsed or closed
	stmt  bool   // a Parse, or a Close of a prepared statement (not a portal)
	own   bool   // the guard's own Parse or Close: never forwarded to the client
	// p is the statement a Parse prepares, or the one the guard closes to
	// prepare it again; prev is what c.statements held under the name
	// before the client's Parse or Close, restored if the server did not
	// run it (an error skipped it, or the name existed).
	p, prev *prepared
	literal bool   // a Parse whose text may hold the tenant as a literal
	forgets uint64 // conn.forgets when sent
}

// portal is a bound portal (Bind).
type portal struct {
	dec         *rewriter.Decision // shared with the statement: read only
	stmt        string             // the prepared statement it was bound from
	cycle       uint64             // the cycle it was bound in
	effectValue string             // validated tenant from a set_config($k) parameter
	injected    bool
	rows        int64 // rows returned so far, across suspensions (row guard)
	// rejected: its Bind was refused; the server skips its Execute.
	rejected bool
}

// The event loop shows the guard runs of DataRows.
var _ proxy.RowCounter = (*Guard)(nil)

// setPortal records portal pt as name.
func (c *conn) setPortal(name string, pt *portal) {
	if name == "" {
		c.unnamed = pt
		return
	}
	c.portals[name] = pt
}

// dropPortal forgets the portal called name.
func (c *conn) dropPortal(name string) {
	if name == "" {
		c.unnamed = nil
		return
	}
	delete(c.portals, name)
}

// newPortal returns a zeroed portal, the spare one if there is one.
func (c *conn) newPortal() *portal {
	if pt := c.sparePortal; pt != nil {
		c.sparePortal = nil
		return pt
	}
	return &portal{}
}

// newInflight returns a zeroed statement record, the spare one if any.
func (c *conn) newInflight() *inflight {
	if f := c.spareInflight; f != nil {
		c.spareInflight = nil
		return f
	}
	return &inflight{}
}

// recycleInflight keeps f, completed and out of the queue, for the next
// statement, unless a COPY still refers to it.
func (c *conn) recycleInflight(f *inflight) {
	if f == c.copyIn || f == c.lastCopy {
		return
	}
	*f = inflight{}
	c.spareInflight = f
}

// inflight is a statement sent upstream, awaiting its completion.
type inflight struct {
	cycle uint64
	dec   *rewriter.Decision // shared with its portal or Result: read only
	value string             // tenant effect value (when from a parameter)
	start time.Time
	rows  int64
	// rowsSoFar counts the rows of the portal across suspensions; nil for
	// simple-protocol statements (rows is used then).
	rowsSoFar *int64
	tenant    string
	protocol  string
	injected  bool
	// conv is the prepared form a simple-protocol statement went upstream
	// in (upstream.go): its BindComplete and NoData are dropped, and the
	// CloseComplete of the convCloses Closes sent in front of it.
	conv       *upStmt
	convCloses int
	// rejected statements wait for the sentinel error; their audit event is
	// written when it arrives.
	reject *rejection
	// A COPY ... FROM STDIN: Syncs the client sent before its CopyDone,
	// and whether the server entered copy-in mode.
	uncountedSyncs int
	copyStarted    bool
	extAtSync      uint64 // conn.extMessages at the last of those Syncs
}

// rejection is a statement refused by tenantguard.
type rejection struct {
	err    *rewriter.Error
	reason string
	name   string // its sentinel's
	// cycle is conn.frontCycle when it was registered: its sentinel's
	// error, if the server runs it, comes before the ReadyForQuery of that
	// cycle (or of the one before), so a rejection older than backCycle
	// was answered or skipped (onReady forgets it).
	cycle uint64
}

// nextSentinel names the next rejected statement of the session: a name no
// client can guess (the process nonce) and that no upstream object has.
func (c *conn) nextSentinel() string {
	c.seq++
	var b strings.Builder
	b.WriteString("tg_reject_")
	b.WriteString(c.nonce)
	b.WriteByte('_')
	b.WriteString(uitoa(c.id))
	b.WriteByte('_')
	b.WriteString(uitoa(c.seq))
	return b.String()
}

func uitoa(v uint64) string {
	if v == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return string(b[i:])
}
