package rewriter

// TenantTracker follows a connection's tenant setting from statement to
// statement the way PostgreSQL follows a setting: a session value, SET LOCAL
// overrides that end with the transaction, RESET and DISCARD ALL back to the
// startup value, savepoints, and rollback of everything a transaction set.
// It is driven by the TenantEffect and TxOp of decisions; the proxy and
// `tenantguard check` share it. It is plain data: copy it (Snapshot) to undo.
type TenantTracker struct {
	startup, session, local trackedValue
	hasLocal, inTx          bool
	failed                  bool // the open transaction had an error: COMMIT rolls back
	txStart, prevTxStart    trackedValue
	savepoints              []trackedSavepoint
}

type trackedValue struct {
	v  string
	ok bool
}

type trackedSavepoint struct {
	name           string
	session, local trackedValue
	hasLocal       bool
}

// NewTenantTracker starts a connection whose startup tenant is v (ok false:
// none).
func NewTenantTracker(v string, ok bool) TenantTracker {
	t := TenantTracker{startup: trackedValue{v, ok}}
	t.session = t.startup
	return t
}

// Current is the tenant statements run under now.
func (t *TenantTracker) Current() (string, bool) {
	if t.hasLocal {
		return t.local.v, t.local.ok
	}
	return t.session.v, t.session.ok
}

// InTx reports whether a transaction block is open.
func (t *TenantTracker) InTx() bool { return t.inTx }

// Session returns base with the tracked tenant and startup tenant.
func (t *TenantTracker) Session(base Session) Session {
	base.Tenant, base.HasTenant = t.Current()
	base.StartupTenant, base.HasStartupTenant = t.startup.v, t.startup.ok
	return base
}

// Apply applies the effects of a statement that ran. value is the validated
// tenant bound to a set_config parameter (TenantEffect.ValueParam), "" when
// unknown: the tenant is then unknown too (fail closed).
func (t *TenantTracker) Apply(d *Decision, value string) {
	if d.TxOp != nil {
		t.tx(d.TxOp)
	}
	if e := d.TenantEffect; e != nil {
		v := e.Value
		if e.ValueParam > 0 {
			v = value
		}
		t.effect(e, trackedValue{v, v != ""})
	}
}

func (t *TenantTracker) effect(e *TenantEffect, v trackedValue) {
	if e.Op != EffectSet {
		v = t.startup // RESET, RESET ALL, DISCARD ALL
	}
	if e.Local {
		// SET LOCAL outside a transaction block has no effect (PostgreSQL warns).
		if t.inTx {
			t.local, t.hasLocal = v, true
		}
		return
	}
	t.session, t.hasLocal = v, false
}

func (t *TenantTracker) tx(op *TxOp) {
	switch op.Op {
	case "begin":
		t.Begin()
	case "commit", "prepare_transaction":
		t.EndTx(!t.failed, op.Chain)
	case "rollback":
		t.EndTx(false, op.Chain)
	case "savepoint":
		if t.inTx {
			t.savepoints = append(t.savepoints, trackedSavepoint{name: op.Savepoint, session: t.session, local: t.local, hasLocal: t.hasLocal})
		}
	case "release":
		if i := t.findSavepoint(op.Savepoint); i >= 0 {
			t.savepoints = t.savepoints[:i]
		}
	case "rollback_to":
		if i := t.findSavepoint(op.Savepoint); i >= 0 {
			sp := t.savepoints[i]
			t.session, t.local, t.hasLocal = sp.session, sp.local, sp.hasLocal
			t.savepoints = t.savepoints[:i+1] // the savepoint survives ROLLBACK TO
			t.failed = false
		}
	}
}

func (t *TenantTracker) findSavepoint(name string) int {
	for i := len(t.savepoints) - 1; i >= 0; i-- {
		if t.savepoints[i].name == name {
			return i
		}
	}
	return -1
}

// Begin opens a transaction block (no effect inside one).
func (t *TenantTracker) Begin() {
	if !t.inTx {
		t.inTx, t.failed, t.txStart = true, false, t.session
		t.savepoints = t.savepoints[:0]
	}
}

// Fail marks the open transaction failed: its COMMIT will roll back.
func (t *TenantTracker) Fail() {
	if t.inTx {
		t.failed = true
	}
}

// EndTx ends the transaction block, keeping what it set (commit) or not.
func (t *TenantTracker) EndTx(commit, chain bool) {
	if !t.inTx {
		return
	}
	if !commit {
		t.session = t.txStart
	}
	t.prevTxStart = t.txStart
	t.hasLocal, t.failed = false, false
	t.savepoints = t.savepoints[:0]
	t.inTx = chain
	if chain {
		t.txStart = t.session
	}
}

// UndoCommit turns the last COMMIT into the rollback the server made of it
// (the server answers ROLLBACK to the COMMIT of a failed transaction).
func (t *TenantTracker) UndoCommit() {
	if !t.inTx {
		t.session = t.prevTxStart
	}
}

// SameSession reports whether t and o hold the same session-level tenant
// (what SET, RESET and set_config(..., false) change outside a transaction
// block).
func (t *TenantTracker) SameSession(o *TenantTracker) bool { return t.session == o.session }

// SetSessionFrom gives t the session-level tenant of o: a failed implicit
// transaction's SET undone.
func (t *TenantTracker) SetSessionFrom(o *TenantTracker) { t.session = o.session }

// Snapshot returns an independent copy, to restore when a batch fails.
func (t *TenantTracker) Snapshot() TenantTracker {
	cp := *t
	cp.savepoints = append([]trackedSavepoint(nil), t.savepoints...)
	return cp
}
