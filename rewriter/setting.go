package rewriter

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// WithTenantSetting makes the injected predicate read the tenant from the
// upstream's own session setting, `col = current_setting('<setting>')::<type>`,
// in both protocols, instead of a literal (simple protocol) or an appended
// parameter (extended protocol). The proxy forwards every tenant change
// upstream, so the setting is the tenant PostgreSQL itself holds, with its
// exact transaction semantics (SET LOCAL, rollback, RESET); a prepared
// statement stays right after a tenant switch with no change to Bind; and a
// tenant the proxy did not see change can only make statements fail, never
// widen them. The expression is stable, so `(clinic_id, ...)` indexes stay
// usable. Checks against the session's tenant (strategy verify, literals in
// writes) still use Session.Tenant.
func WithTenantSetting() Option {
	return func(r *Rewriter) { r.tenantSetting = true }
}

// deparseSetting prints the setting expression as the deparser prints it
// inside a rewritten statement ("" if it cannot).
func (r *Rewriter) deparseSetting() string {
	c := &stmtCtx{r: r, pol: r.pol}
	sel := &pg.Node{Node: &pg.Node_SelectStmt{SelectStmt: &pg.SelectStmt{
		TargetList:  []*pg.Node{{Node: &pg.Node_ResTarget{ResTarget: &pg.ResTarget{Val: c.tenantExpr(), Location: -1}}}},
		LimitOption: pg.LimitOption_LIMIT_OPTION_DEFAULT,
		Op:          pg.SetOperation_SETOP_NONE,
	}}}
	tree, err := pg.Parse("SELECT 1")
	if err != nil || len(tree.Stmts) != 1 {
		return ""
	}
	out, err := pg.Deparse(&pg.ParseResult{Version: tree.Version, Stmts: []*pg.RawStmt{{Stmt: sel}}})
	if err != nil || !strings.HasPrefix(out, "SELECT ") {
		return ""
	}
	return strings.TrimPrefix(out, "SELECT ")
}
