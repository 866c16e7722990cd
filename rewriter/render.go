package rewriter

import (
	"strings"

	"github.com/tenantguard/tenantguard/policy"
)

// tenantState follows the tenant through a multi-statement string, the way
// PostgreSQL would: SET changes it, SET LOCAL until the end of the
// transaction, ROLLBACK (TO SAVEPOINT) undoes what was set since, RESET and
// DISCARD ALL go back to the startup value.
type tenantState struct {
	cur, session Session // cur: effective; session: without SET LOCAL
	snapshot     Session // at BEGIN
	inTx         bool
	savepoints   []savepoint
}

// savepoint remembers the tenant at SAVEPOINT name.
type savepoint struct {
	name         string
	cur, session Session
}

func (ts *tenantState) apply(d *Decision, startup Session) {
	if e := d.TenantEffect; e != nil && d.Verdict != VerdictRejected {
		switch e.Op {
		case EffectSet:
			if e.ValueParam == 0 {
				ts.cur.Tenant, ts.cur.HasTenant = e.Value, true
				if !e.Local {
					ts.session.Tenant, ts.session.HasTenant = e.Value, true
				}
			}
		case EffectReset, EffectResetAll, EffectDiscardAll:
			ts.cur.Tenant, ts.cur.HasTenant = startup.StartupTenant, startup.HasStartupTenant
			if !e.Local {
				ts.session.Tenant, ts.session.HasTenant = ts.cur.Tenant, ts.cur.HasTenant
			}
		}
	}
	if t := d.TxOp; t != nil && d.Verdict != VerdictRejected {
		switch t.Op {
		case "begin":
			ts.inTx = true
			ts.snapshot = ts.session
			ts.savepoints = nil
		case "savepoint":
			ts.savepoints = append(ts.savepoints, savepoint{name: t.Savepoint, cur: ts.cur, session: ts.session})
		case "release", "rollback_to":
			for i := len(ts.savepoints) - 1; i >= 0; i-- {
				if ts.savepoints[i].name != t.Savepoint {
					continue
				}
				if t.Op == "rollback_to" {
					ts.cur, ts.session = ts.savepoints[i].cur, ts.savepoints[i].session
					ts.savepoints = ts.savepoints[:i+1] // the savepoint stays after ROLLBACK TO
				} else {
					ts.savepoints = ts.savepoints[:i]
				}
				break
			}
		case "commit", "prepare_transaction":
			ts.cur = ts.session
			ts.inTx = false
			ts.savepoints = nil
		case "rollback":
			if ts.inTx {
				ts.session = ts.snapshot
			}
			ts.cur = ts.session
			ts.inTx = false
			ts.savepoints = nil
		}
	}
}

// render produces the decisions of a template for a session.
func (qt *queryTemplate) render(r *Rewriter, s Session, role policy.Role) *Result {
	res := &Result{Statements: make([]Decision, 0, len(qt.stmts))}
	ts := &tenantState{cur: s, session: s}
	literal := s.TenantLiteral
	for _, st := range qt.stmts {
		cur := ts.cur
		cur.TenantLiteral = literal
		d := st.renderOne(r, cur, role)
		res.Statements = append(res.Statements, d)
		ts.apply(&d, s)
		if st.d.TenantEffect != nil { // even when refused: stay on the safe side
			literal = false // the upstream's setting may differ from here on
		}
	}
	return res
}

func cloneInts(xs []int) []int {
	if xs == nil {
		return nil
	}
	return append([]int(nil), xs...)
}

func (st *stmtTemplate) renderOne(r *Rewriter, s Session, role policy.Role) Decision {
	d := st.d
	d.Relations = append([]string(nil), st.d.Relations...)
	if len(d.Relations) == 0 {
		d.Relations = nil
	}
	d.LimitParams = cloneInts(st.d.LimitParams)
	d.ArrayParams = cloneInts(st.d.ArrayParams)
	d.OffsetParams = cloneInts(st.d.OffsetParams)
	d.VerifyParams = cloneInts(st.d.VerifyParams)
	if st.d.TenantEffect != nil {
		e := *st.d.TenantEffect
		d.TenantEffect = &e
	}
	if st.d.TxOp != nil {
		t := *st.d.TxOp
		d.TxOp = &t
	}
	if st.d.Notify != nil {
		n := *st.d.Notify
		d.Notify = &n
	}
	d.Enforced = r.pol.Mode != policy.ModeAudit
	if role.Bypass && st.bypassable {
		d.Verdict, d.Reason, d.Error = VerdictBypassed, ReasonBypass, nil
		d.SQL, d.TenantParam, d.TenantType, d.LimitParams, d.VerifyParams, d.RowGuard, d.MaxRows = st.orig, 0, "", nil, nil, false, 0
		d.OffsetParams, d.MaxOffset, d.ArrayParams = nil, 0, nil
		d.DependsOnTenant = false
		if d.TenantEffect != nil && st.d.Verdict == VerdictRejected {
			d.TenantEffect = nil
		}
		return d
	}
	if d.Verdict != VerdictRejected {
		d = st.renderTenant(r, s, d)
	}
	if !d.Enforced {
		// audit mode: decide the same, forward the original.
		d.SQL, d.TenantParam, d.TenantType = st.orig, 0, ""
	}
	return d
}

func (st *stmtTemplate) reject(r *Rewriter, d Decision, reason, subject string) Decision {
	d.Verdict, d.Reason = VerdictRejected, reason
	d.Error = rejection(reason, subject, r.pol)
	d.SQL, d.TenantParam, d.TenantType, d.LimitParams, d.VerifyParams = "", 0, "", nil, nil
	d.OffsetParams, d.MaxOffset, d.ArrayParams = nil, 0, nil
	d.TenantEffect, d.RowGuard, d.MaxRows = nil, false, 0
	return d
}

func (st *stmtTemplate) renderTenant(r *Rewriter, s Session, d Decision) Decision {
	if !st.needsTenant {
		d.SQL = strings.Join(st.segments, "")
		return d
	}
	subject := ""
	if len(d.Relations) > 0 {
		subject = d.Relations[0]
	}
	if !s.HasTenant {
		if r.pol.Tenant.Required {
			return st.reject(r, d, ReasonNoTenant, subject)
		}
		// tenant not required: forwarded unscoped, as the policy asks.
		d.Verdict, d.Reason, d.SQL, d.TenantParam, d.TenantType, d.VerifyParams = VerdictAllowed, ReasonNoTenant, st.orig, 0, "", nil
		return d
	}
	canon, err := CanonicalTenant(r.pol.Tenant.Type, s.Tenant)
	if err != nil {
		return st.reject(r, d, ReasonInvalidTenant, "")
	}
	for _, ch := range st.checks {
		v, err := CanonicalTenant(r.pol.Tenant.Type, ch.value)
		if err != nil || v != canon {
			return st.reject(r, d, ch.reason, ch.subject)
		}
	}
	if s.TenantLiteral && st.litSegs != nil {
		d.SQL = strings.Join(st.litSegs, renderTenant(r.pol.Tenant.Type, canon))
		return d
	}
	if len(st.segments) == 1 {
		d.SQL = st.segments[0]
		return d
	}
	lit := renderTenant(r.pol.Tenant.Type, canon)
	var b strings.Builder
	for i, seg := range st.segments {
		if i > 0 {
			b.WriteString(lit)
		}
		b.WriteString(seg)
	}
	d.SQL = b.String()
	return d
}
