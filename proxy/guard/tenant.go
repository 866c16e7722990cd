package guard

import "github.com/tenantguard/tenantguard/rewriter"

// tenantValue is a tenant setting value; ok is false when unset.
type tenantValue struct {
	v  string
	ok bool
}

// savepoint remembers the tenant state at SAVEPOINT name.
type savepoint struct {
	name           string
	session, local tenantValue
	hasLocal       bool
}

// tenantState tracks the tenant setting of a connection the way PostgreSQL
// tracks a GUC: a session value, SET LOCAL overrides that end with the
// transaction, and rollback of both to the transaction's (or savepoint's)
// start. It is what tenantguard believes; the predicate it injects reads the
// upstream's own setting (current_setting), so a divergence can only make a
// statement fail, never widen what it sees. The belief feeds the audit
// trail, tenant.required and the verify strategy.
type tenantState struct {
	startup    tenantValue
	session    tenantValue
	local      tenantValue
	hasLocal   bool
	inTx       bool
	txStart    tenantValue
	savepoints []savepoint
	// prevTxStart is the session value at the start of the last ended
	// transaction, for a COMMIT the server turned into ROLLBACK.
	prevTxStart tenantValue
}

// current is the tenant statements run under now.
func (t *tenantState) current() tenantValue {
	if t.hasLocal {
		return t.local
	}
	return t.session
}

// effect applies a tenant change the rewriter found in a statement.
func (t *tenantState) effect(e *rewriter.TenantEffect, value string) {
	switch e.Op {
	case rewriter.EffectSet:
		v := tenantValue{v: value, ok: value != ""}
		if e.Local {
			// SET LOCAL outside a transaction block has no effect (a warning in PostgreSQL).
			if t.inTx {
				t.local, t.hasLocal = v, true
			}
			return
		}
		t.session = v
		t.hasLocal = false
	case rewriter.EffectReset, rewriter.EffectResetAll, rewriter.EffectDiscardAll:
		t.session = t.startup
		t.hasLocal = false
	}
}

// tx applies a transaction-control statement.
func (t *tenantState) tx(op *rewriter.TxOp) {
	switch op.Op {
	case "begin":
		if !t.inTx {
			t.inTx = true
			t.txStart = t.session
			t.savepoints = t.savepoints[:0]
		}
	case "commit", "prepare_transaction":
		t.endTx(true, op.Chain)
	case "rollback":
		t.endTx(false, op.Chain)
	case "savepoint":
		if t.inTx {
			t.savepoints = append(t.savepoints, savepoint{name: op.Savepoint, session: t.session, local: t.local, hasLocal: t.hasLocal})
		}
	case "release":
		if i := t.findSavepoint(op.Savepoint); i >= 0 {
			t.savepoints = t.savepoints[:i]
		}
	case "rollback_to":
		if i := t.findSavepoint(op.Savepoint); i >= 0 {
			sp := t.savepoints[i]
			t.session, t.local, t.hasLocal = sp.session, sp.local, sp.hasLocal
			t.savepoints = t.savepoints[:i+1] // the savepoint itself survives ROLLBACK TO
		}
	}
}

func (t *tenantState) findSavepoint(name string) int {
	for i := len(t.savepoints) - 1; i >= 0; i-- {
		if t.savepoints[i].name == name {
			return i
		}
	}
	return -1
}

// endTx ends the transaction; a failed transaction's COMMIT is a rollback
// (the caller passes commit=false when the server reported ROLLBACK).
func (t *tenantState) endTx(commit, chain bool) {
	if !t.inTx {
		return
	}
	if !commit {
		t.session = t.txStart
	}
	t.prevTxStart = t.txStart
	t.hasLocal = false
	t.savepoints = t.savepoints[:0]
	t.inTx = chain
	if chain {
		t.txStart = t.session
	}
}

// undoCommit turns the last COMMIT into the rollback the server made of it
// (the transaction had failed).
func (t *tenantState) undoCommit() {
	if !t.inTx {
		t.session = t.prevTxStart
	}
}

// snapshot and restore undo the effects of an implicit transaction (a
// multi-statement Query or an extended-protocol batch outside BEGIN) that
// failed: PostgreSQL rolls its SETs back.
func (t *tenantState) snapshot() tenantState {
	cp := *t
	cp.savepoints = append([]savepoint(nil), t.savepoints...)
	return cp
}
