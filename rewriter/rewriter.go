package rewriter

import (
	"slices"

	"github.com/tenantguard/tenantguard/policy"
)

// Session is what the rewriter needs to know of a connection.
type Session struct {
	// Tenant is the current tenant value ("" with HasTenant=false = none).
	Tenant    string
	HasTenant bool
	// StartupTenant is the tenant the connection started with (startup
	// parameter or options); RESET, RESET ALL and DISCARD ALL revert to it.
	// It only matters for multi-statement strings that reset the tenant and
	// then use it.
	StartupTenant    string
	HasStartupTenant bool
	// User is the database user; it selects policy.Roles[User].
	User string
	// Extended is true when the statement came from a Parse message
	// (extended protocol): exactly one statement, and the tenant is appended
	// as an extra parameter instead of being rendered into the text.
	Extended bool
	// TenantLiteral, with WithTenantSetting, renders the injected tenant as
	// a literal (clinic_id = 7) instead of the setting expression: the
	// upstream then plans the statement exactly as if the application had
	// written the predicate. The caller vouches that the upstream's setting
	// holds Tenant (the session's tenant came from its startup parameters
	// and no statement has changed it since), and, in the extended protocol,
	// that the prepared statement is prepared again before it runs under
	// another tenant. It applies up to the first statement of the string
	// that changes the tenant; statements the template cannot render that
	// way keep the expression.
	TenantLiteral bool
}

// Verdicts of a Decision.
const (
	VerdictAllowed   = "allowed"
	VerdictRewritten = "rewritten"
	VerdictRejected  = "rejected"
	VerdictBypassed  = "bypassed"
)

// Statement kinds of a Decision (the audit "kind" values of SPEC §1).
const (
	KindSelect  = "select"
	KindInsert  = "insert"
	KindUpdate  = "update"
	KindDelete  = "delete"
	KindMerge   = "merge"
	KindCopy    = "copy"
	KindDDL     = "ddl"
	KindUtility = "utility"
)

// Result is the decision for a whole query string: one Decision per
// statement, in order.
type Result struct {
	Statements []Decision `json:"statements"`
	// CacheHit says whether the decision came from the template cache (for
	// metrics; not part of the golden files).
	CacheHit bool `json:"-"`
}

// Rejected reports whether any statement of the result is rejected.
func (r *Result) Rejected() bool {
	for i := range r.Statements {
		if r.Statements[i].Verdict == VerdictRejected {
			return true
		}
	}
	return false
}

// Decision is what tenantguard does with one statement.
type Decision struct {
	// Kind is select|insert|update|delete|merge|copy|ddl|utility.
	Kind string `json:"kind"`
	// Relations lists the tenant relations the statement touches, as written
	// ("schema.name" when qualified), in order of first appearance.
	Relations []string `json:"relations,omitempty"`
	// Verdict is allowed|rewritten|rejected|bypassed.
	Verdict string `json:"decision"`
	// Reason is a short stable code (see reasons.go).
	Reason string `json:"reason"`
	// Error is set when the statement is rejected.
	Error *Error `json:"error,omitempty"`
	// Enforced is false in audit mode: the verdict is what enforce mode would
	// decide, but the proxy must forward SQL (the original statement) and
	// never reject; Bind-time checks are to be logged, not enforced.
	Enforced bool `json:"enforced"`
	// SQL is the statement to send upstream (rewritten or original), with the
	// tenant rendered for this Session. Empty when rejected.
	SQL string `json:"sql,omitempty"`
	// Fingerprint is the pg_query fingerprint of the original statement.
	Fingerprint string `json:"fingerprint,omitempty"`
	// Normalized is the original statement with every literal replaced by a
	// placeholder and comments removed: safe for the audit log.
	Normalized string `json:"normalized,omitempty"`
	// TenantParam is, in the extended protocol, the 1-based number of the
	// parameter the proxy must append and bind to the tenant ($n+1); 0 if none.
	TenantParam int `json:"tenant_param,omitempty"`
	// TenantType is the SQL type of TenantParam (integer, bigint, uuid, text).
	TenantType string `json:"tenant_type,omitempty"`
	// LimitParams are parameters whose bound value must be <= MaxRows
	// (checked by the proxy at Bind; reject with 54000 otherwise).
	LimitParams []int `json:"limit_params,omitempty"`
	// ArrayParams are parameters bound to arrays (key = ANY ($k)) whose
	// element count must be <= MaxRows (checked by the proxy at Bind;
	// reject with 54000 otherwise).
	ArrayParams []int `json:"array_params,omitempty"`
	// MaxRows is the bound for LimitParams, ArrayParams and the RowGuard.
	MaxRows int64 `json:"max_rows,omitempty"`
	// OffsetParams are parameters whose bound value must be <= MaxOffset
	// (checked by the proxy at Bind; reject with 54000 otherwise).
	OffsetParams []int `json:"offset_params,omitempty"`
	// MaxOffset is the bound for OffsetParams.
	MaxOffset int64 `json:"max_offset,omitempty"`
	// VerifyParams are parameters whose bound value must equal the tenant
	// (checked by the proxy at Bind; reject with 42501 otherwise).
	VerifyParams []int `json:"verify_params,omitempty"`
	// TenantEffect says how the statement changes the tenant setting.
	TenantEffect *TenantEffect `json:"tenant_effect,omitempty"`
	// TxOp is the transaction-control effect of the statement.
	TxOp *TxOp `json:"tx_op,omitempty"`
	// Notify is set for LISTEN/UNLISTEN/NOTIFY so that the proxy can
	// namespace channels per tenant.
	Notify *Notify `json:"notify,omitempty"`
	// RowGuard says the result carries tenant rows: the proxy cuts it with
	// 54000 when it exceeds MaxRows at run time.
	RowGuard bool `json:"row_guard,omitempty"`
	// CopyIn: COPY ... FROM STDIN, which puts the server in copy-in mode
	// (it ignores Sync and Flush until CopyDone or CopyFail).
	CopyIn bool `json:"-"`
	// DependsOnTenant says the decision depends on the session's tenant (it
	// touches tenant relations). In the extended protocol a prepared
	// statement may be bound after a tenant switch: the proxy must call
	// Decide again at Bind with the current Session when the tenant changed
	// since Parse (a cache hit) and apply that decision, because a statement
	// may pin a tenant literal (verify strategy, or a literal the rewriter
	// checked) that was right only for the old tenant.
	DependsOnTenant bool `json:"depends_on_tenant,omitempty"`
	// Prepared is set for SQL-level PREPARE, EXECUTE (also inside EXPLAIN
	// and CREATE TABLE AS), DEALLOCATE and DISCARD ALL. PostgreSQL plans a
	// prepared statement again when search_path or an object it uses
	// changes, so the proxy remembers the policy and catalog each name was
	// decided with and refuses to EXECUTE it under others.
	Prepared *PreparedOp `json:"prepared,omitempty"`
	// Upstream is set for a simple-protocol statement the literal path
	// decided, when it may go upstream as a Bind of its literals to its
	// prepared form (upstream.go) instead of as its text, with the same
	// result.
	Upstream *UpstreamCall `json:"-"`
}

// PreparedOp is what a statement does to SQL-level prepared statements.
type PreparedOp struct {
	// Op is "prepare", "execute" or "deallocate".
	Op string `json:"op"`
	// Name is the prepared statement's name; "" with deallocate is all.
	Name string `json:"name,omitempty"`
}

// Error is what the client sees when a statement is rejected.
type Error struct {
	SQLState string `json:"sqlstate"`
	Message  string `json:"message"`
	Hint     string `json:"hint"`
}

// TenantEffect ops.
const (
	EffectSet        = "set"         // SET / set_config: the tenant becomes Value
	EffectReset      = "reset"       // RESET / SET TO DEFAULT: back to the startup value
	EffectResetAll   = "reset_all"   // RESET ALL
	EffectDiscardAll = "discard_all" // DISCARD ALL
)

// TenantEffect is a change of the tenant setting made by a statement.
type TenantEffect struct {
	Op string `json:"op"`
	// Value is the validated, canonical new tenant (Op "set", ValueParam 0).
	Value string `json:"value,omitempty"`
	// ValueParam is, for `SELECT set_config('app.clinic_id', $k, ...)` in
	// the extended protocol, the parameter carrying the new value; the proxy
	// validates it at Bind.
	ValueParam int `json:"value_param,omitempty"`
	// Local is true for SET LOCAL and set_config(..., true): the change ends
	// with the transaction.
	Local bool `json:"local,omitempty"`
}

// TxOp is a transaction-control statement.
type TxOp struct {
	// Op is begin|commit|rollback|savepoint|release|rollback_to|
	// prepare_transaction|commit_prepared|rollback_prepared.
	Op string `json:"op"`
	// Savepoint is the savepoint name for savepoint/release/rollback_to.
	Savepoint string `json:"savepoint,omitempty"`
	// Chain is true for COMMIT/ROLLBACK AND CHAIN.
	Chain bool `json:"chain,omitempty"`
}

// Notify describes LISTEN/UNLISTEN/NOTIFY.
type Notify struct {
	Op      string `json:"op"` // listen|unlisten|notify
	Channel string `json:"channel,omitempty"`
}

// Option configures a Rewriter.
type Option func(*Rewriter)

// WithCacheSize sets the number of cached statement templates (default
// 10000); 0 disables the cache.
func WithCacheSize(n int) Option {
	return func(r *Rewriter) { r.cacheSize = n }
}

// WithCacheBytes bounds the memory of the template cache (default 64 MiB);
// the least recently used templates are dropped first.
func WithCacheBytes(n int) Option {
	return func(r *Rewriter) { r.cacheBytes = n }
}

// WithMaxOffset sets the largest constant OFFSET allowed on a SELECT of tenant
// relations (default 100000); 0 means no bound.
func WithMaxOffset(n int64) Option {
	return func(r *Rewriter) { r.maxOffset = n }
}

// Rewriter decides statements for one policy and catalog. It is safe for
// concurrent use. A policy or catalog change builds a new Rewriter.
type Rewriter struct {
	pol        *policy.Policy
	cat        *Catalog
	rels       *relationIndex
	cacheSize  int
	cacheBytes int
	maxOffset  int64
	// tenantSetting renders the tenant as current_setting(<setting>) (see
	// WithTenantSetting).
	tenantSetting bool
	// settingText is the setting expression as the deparser prints it.
	settingText string
	// literals is the literal-insensitive cache (with tenantSetting only).
	literals *literalCache
	cache    *templateCache
}

// New returns a Rewriter for the policy and catalog (c may be nil).
func New(p *policy.Policy, c *Catalog, opts ...Option) *Rewriter {
	r := &Rewriter{pol: withDefaults(p), cat: c, cacheSize: 10000, cacheBytes: 64 << 20, maxOffset: 100000}
	for _, o := range opts {
		o(r)
	}
	r.rels = buildRelationIndex(r.pol, c)
	if r.cacheSize > 0 {
		r.cache = newTemplateCache(r.cacheSize, r.cacheBytes)
		if r.tenantSetting {
			r.literals = newLiteralCache(r.cacheSize)
		}
	}
	if r.tenantSetting {
		r.settingText = r.deparseSetting()
	}
	return r
}

// withDefaults returns a copy of p with empty fields defaulted, so that a
// policy built by hand in a test behaves like a loaded one.
func withDefaults(p *policy.Policy) *policy.Policy {
	cp := policy.Policy{}
	if p != nil {
		cp = *p
	}
	if cp.Mode == "" {
		cp.Mode = policy.ModeEnforce
	}
	if cp.Strategy == "" {
		cp.Strategy = policy.StrategyInject
	}
	if cp.Tenant.Column == "" {
		cp.Tenant.Column = "clinic_id"
	}
	if cp.Tenant.Type == "" {
		cp.Tenant.Type = policy.TypeInteger
	}
	if cp.Tenant.Setting == "" {
		cp.Tenant.Setting = "app.clinic_id"
	}
	if cp.Limits.MaxRows <= 0 {
		cp.Limits.MaxRows = 100
	}
	if cp.Limits.Unbounded == "" {
		cp.Limits.Unbounded = policy.UnboundedReject
	}
	return &cp
}

// Decide decides a whole query string. In the simple protocol it may hold
// many statements, decided in order; a tenant change by an earlier statement
// applies to the later ones. In the extended protocol it must hold exactly
// one statement.
func (r *Rewriter) Decide(sql string, s Session) *Result {
	role, roleKey := r.role(s.User)
	key := cacheKey{sql: sql, extended: s.Extended, role: roleKey}
	var tpl *queryTemplate
	hit := false
	if r.cache != nil {
		tpl, hit = r.cache.get(key)
	}
	if hit {
		res := tpl.render(r, s, role)
		res.CacheHit = true
		return res
	}
	// The literal-insensitive path (literal.go): simple protocol, tenant
	// read from the setting, one statement that differs from a known one
	// only in its literals.
	var (
		litKey []byte
		lits   []literalSpan
		litOK  bool
		keyBuf [256]byte
		litBuf [8]literalSpan
	)
	if r.literals != nil && !s.Extended {
		if litKey, lits, litOK = appendLiteralKey(literalKeyPrefix(keyBuf[:0], roleKey), litBuf[:0], sql); litOK {
			if lt := r.literals.get(litKey); lt != nil {
				if res, ok := r.renderLiteral(lt, sql, lits, s, roleInfo{role, roleKey}); ok {
					res.CacheHit = true
					return res
				}
			}
		}
	}
	tpl = r.compile(sql, s.Extended, role)
	res := tpl.render(r, s, role)
	served := false // by the literal path from now on
	if litOK {
		lt := r.literals.get(litKey)
		if lt == nil {
			// A copy: learning keeps the spans, and litBuf stays on the
			// stack for the hit path.
			lt = r.learnLiteral(string(litKey), sql, slices.Clone(lits), s, roleInfo{role, roleKey}, tpl, res)
		}
		served = lt.qt != nil && lt.proven[modeIndex(s)]
	}
	if r.cache != nil && len(sql) <= maxCachedSQL && !served {
		// Texts the literal path serves would only fill the text cache
		// with one-off statements.
		r.cache.put(key, tpl)
	}
	return res
}

// maxCachedSQL keeps huge one-off statements out of the cache.
const maxCachedSQL = 64 << 10

// role returns the policy role of user and the cache key class for it.
func (r *Rewriter) role(user string) (policy.Role, string) {
	if ro, ok := r.pol.Roles[user]; ok {
		return ro, "role:" + user
	}
	return policy.Role{}, ""
}
