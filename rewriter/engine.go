package rewriter

import (
	"slices"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tenantguard/tenantguard/policy"
)

// literalCheck is a tenant-dependent condition of a template: the statement
// pins a tenant value, and rendering rejects it unless the session's tenant
// equals it.
type literalCheck struct {
	value   string
	reason  string
	subject string
}

// sink is a place where tenant predicates go: a WHERE, ON or other qualifier
// (expr != nil), or "wrap the relation in a filtered subquery" (expr == nil).
type sink struct {
	expr  **pg.Node
	preds []*pg.Node
}

// stmtCtx is the state of deciding one statement.
type stmtCtx struct {
	r        *Rewriter
	pol      *policy.Policy
	role     policy.Role
	extended bool
	// dynamic is set inside SQL-level PREPARE: the tenant is read with
	// current_setting() at execution, since EXECUTE may follow a tenant
	// switch; tenant literals and parameters cannot be checked there.
	dynamic bool
	// settingExprs counts the setting expressions injected outside SQL-level
	// PREPARE; dynamicSetting says one was injected inside it.
	settingExprs   int
	dynamicSetting bool
	sentinel       int32
	placeholders   int
	modified       bool
	relations      []string
	relSeen        map[string]bool
	needsTenant    bool
	checks         []literalCheck
	verifyParams   []int
	limitParams    []int
	// arrays lets a key = ANY ($k) count as up to max_rows values, recorded
	// in arrayParams (set by applyLimits only when nothing else bounds).
	arrays       bool
	arrayParams  []int
	offsetParams []int
	rowGuard     bool
	handled      map[*pg.RangeVar]bool
	doneSel      map[*pg.SelectStmt]bool
	rejReason    string
	rejSubject   string
	// cteNames are the CTE names visible where the walk is (withClause).
	cteNames []string
	// root is the statement; byAlias its relations by alias (or name),
	// built when attribute notation needs them (attributeCalls).
	root    *pg.Node
	byAlias map[string][]*pg.RangeVar
}

func newStmtCtx(r *Rewriter, role policy.Role, extended bool, sentinel int32) *stmtCtx {
	return &stmtCtx{r: r, pol: r.pol, role: role, extended: extended, sentinel: sentinel,
		relSeen: map[string]bool{}, handled: map[*pg.RangeVar]bool{}, doneSel: map[*pg.SelectStmt]bool{}}
}

func (c *stmtCtx) reject(reason, subject string) {
	if c.rejReason == "" {
		c.rejReason, c.rejSubject = reason, subject
	}
}

func (c *stmtCtx) addRelation(name string) {
	c.needsTenant = true
	if !c.relSeen[name] {
		c.relSeen[name] = true
		c.relations = append(c.relations, name)
	}
}

// tenantExpr is the expression standing for the session's tenant.
func (c *stmtCtx) tenantExpr() *pg.Node {
	tn := tenantTypeName(c.pol.Tenant.Type)
	if c.dynamic || c.r.tenantSetting {
		if c.dynamic {
			c.dynamicSetting = true
		} else {
			c.settingExprs++
		}
		fc := pg.MakeFuncCallNode([]*pg.Node{pg.MakeStrNode("current_setting")},
			[]*pg.Node{pg.MakeAConstStrNode(c.pol.Tenant.Setting, -1)}, -1)
		cast := &pg.Node{Node: &pg.Node_TypeCast{TypeCast: &pg.TypeCast{Arg: fc, TypeName: tn, Location: -1}}}
		// (SELECT current_setting(...)::type) is an InitPlan: evaluated once
		// per statement, and a Param of cost zero in the scan's quals, so the
		// planner orders the tenant predicate before the user's own
		// conditions (as RLS orders its security quals) and a user condition
		// that raises an error never sees another tenant's row. It remains
		// an index condition and drives run-time partition pruning.
		return &pg.Node{Node: &pg.Node_SubLink{SubLink: &pg.SubLink{
			SubLinkType: pg.SubLinkType_EXPR_SUBLINK,
			Subselect: &pg.Node{Node: &pg.Node_SelectStmt{SelectStmt: &pg.SelectStmt{
				TargetList:  []*pg.Node{{Node: &pg.Node_ResTarget{ResTarget: &pg.ResTarget{Val: cast, Location: -1}}}},
				LimitOption: pg.LimitOption_LIMIT_OPTION_DEFAULT,
				Op:          pg.SetOperation_SETOP_NONE,
			}}},
			Location: -1,
		}}}
	}
	c.placeholders++
	p := pg.MakeParamRefNode(c.sentinel, -1)
	if c.extended {
		return &pg.Node{Node: &pg.Node_TypeCast{TypeCast: &pg.TypeCast{Arg: p, TypeName: tn, Location: -1}}}
	}
	return p
}

func (c *stmtCtx) pred(qual []string, col string) *pg.Node {
	fields := make([]*pg.Node, 0, len(qual)+1)
	for _, q := range qual {
		fields = append(fields, pg.MakeStrNode(q))
	}
	fields = append(fields, pg.MakeStrNode(col))
	c.modified = true
	return pg.MakeAExprNode(pg.A_Expr_Kind_AEXPR_OP, []*pg.Node{pg.MakeStrNode("=")},
		pg.MakeColumnRefNode(fields, -1), c.tenantExpr(), -1)
}

// qualifierOf is how an injected predicate names rv: its alias, else its
// name exactly as written (schema- and catalog-qualified when it was).
func qualifierOf(rv *pg.RangeVar) []string {
	if rv.Alias != nil && rv.Alias.Aliasname != "" {
		return []string{rv.Alias.Aliasname}
	}
	q := []string{}
	if rv.Catalogname != "" {
		q = append(q, rv.Catalogname)
	}
	if rv.Schemaname != "" {
		q = append(q, rv.Schemaname)
	}
	return append(q, rv.Relname)
}

// refNames are the qualifiers by which a column of rv may be referenced.
func refNames(rv *pg.RangeVar) [][]string {
	if rv.Alias != nil && rv.Alias.Aliasname != "" {
		return [][]string{{rv.Alias.Aliasname}}
	}
	out := [][]string{{rv.Relname}}
	if rv.Schemaname != "" {
		out = append(out, []string{rv.Schemaname, rv.Relname})
		if rv.Catalogname != "" {
			out = append(out, []string{rv.Catalogname, rv.Schemaname, rv.Relname})
		}
	}
	return out
}

func applySinks(sinks []*sink) {
	for _, s := range sinks {
		if s.expr == nil || len(s.preds) == 0 {
			continue
		}
		args := append([]*pg.Node{}, s.preds...)
		if *s.expr != nil {
			args = append(args, *s.expr)
		}
		if len(args) == 1 {
			*s.expr = args[0]
		} else {
			*s.expr = pg.MakeBoolExprNode(pg.BoolExprType_AND_EXPR, args, -1)
		}
	}
}

// ---- generic traversal ----

func (c *stmtCtx) visit(n *pg.Node) {
	if n == nil || n.Node == nil {
		return
	}
	c.walkMsg(n.ProtoReflect())
}

func (c *stmtCtx) visitList(ns []*pg.Node) {
	for _, n := range ns {
		c.visit(n)
	}
}

func (c *stmtCtx) walkMsg(m protoreflect.Message) { eachChild(m, c.visitMsg) }

func (c *stmtCtx) visitMsg(x proto.Message) {
	switch t := x.(type) {
	case *pg.Node:
		c.visit(t)
	case *pg.SelectStmt:
		c.scopeSelect(t)
	case *pg.InsertStmt:
		c.insertStmt(t)
	case *pg.UpdateStmt:
		c.updateStmt(t)
	case *pg.DeleteStmt:
		c.deleteStmt(t)
	case *pg.MergeStmt:
		c.mergeStmt(t)
	case *pg.RangeVar:
		c.strayRangeVar(t)
	case *pg.FuncCall:
		c.funcCall(t)
		c.walkMsg(t.ProtoReflect())
	case *pg.IntoClause:
		if t.Rel != nil {
			c.handled[t.Rel] = true
		}
		c.walkMsg(t.ProtoReflect())
	case *pg.LockingClause:
		for _, r := range t.LockedRels {
			if rv := r.GetRangeVar(); rv != nil {
				c.handled[rv] = true // FOR UPDATE OF <alias>: a name, not a scan
			}
		}
	default:
		c.indirection(x)
		c.walkMsg(x.ProtoReflect())
	}
}

// checkScan is checkRelation for a relation whose rows the statement reads
// or writes: with a complete catalog, a relation it does not list is refused
// (unless the name is a CTE's) for roles without the ddl right. A role that
// may change the schema uses what it has just created, before the catalog
// lists it (and could create a view over tenant tables anyway).
// read is false for a write target, which is never a CTE.
func (c *stmtCtx) checkScan(rv *pg.RangeVar, read bool) {
	c.checkRelation(rv)
	if c.role.AllowDDL || !c.r.rels.unknown(rv) {
		return
	}
	if read && rv.Schemaname == "" && slices.Contains(c.cteNames, rv.Relname) {
		return
	}
	c.reject(ReasonUnknownRelation, relDisplay(rv))
}

// checkRelation refuses system views and views that cannot be scoped.
func (c *stmtCtx) checkRelation(rv *pg.RangeVar) {
	if (rv.Schemaname == "" || rv.Schemaname == "pg_catalog" || rv.Schemaname == "public") && deniedRelations[rv.Relname] {
		c.reject(ReasonDeniedRelation, rv.Relname)
	}
	if c.r.rels.refusedView(rv) {
		c.reject(ReasonUnsupported, "view "+relDisplay(rv)+" reads tenant relations but does not expose the tenant column")
	}
	if rv.Alias != nil && len(rv.Alias.Colnames) > 0 && c.r.rels.lookup(rv) != nil {
		// patients p(clinic_id, cid) renames patients.id to clinic_id:
		// the predicate tenantguard injects or verifies names columns by
		// the relation's own names.
		c.reject(ReasonUnsupported, "a column alias list on tenant relation "+relDisplay(rv))
	}
}

func (c *stmtCtx) strayRangeVar(rv *pg.RangeVar) {
	if c.handled[rv] {
		return
	}
	c.handled[rv] = true
	c.checkRelation(rv)
	if c.r.rels.lookup(rv) != nil {
		c.addRelation(relDisplay(rv))
		c.reject(ReasonUnsupported, "tenant relation "+relDisplay(rv)+" in an unsupported position")
	}
}

// ---- SELECT ----

// withClause scopes the CTE bodies and makes their names visible as CTE
// references, as PostgreSQL resolves them: in a WITH RECURSIVE list every
// name in every body, otherwise each body sees only the CTEs before it (a
// later or its own name is a real relation). It returns how many names it
// pushed; the caller pops them (popCTEs) once the statement is walked.
func (c *stmtCtx) withClause(w *pg.WithClause) int {
	if w == nil {
		return 0
	}
	n := 0
	if w.Recursive {
		for _, cte := range w.Ctes {
			if ce := cte.GetCommonTableExpr(); ce != nil {
				c.cteNames = append(c.cteNames, ce.Ctename)
				n++
			}
		}
	}
	for _, cte := range w.Ctes {
		if ce := cte.GetCommonTableExpr(); ce != nil {
			c.visit(ce.Ctequery)
			if ce.SearchClause != nil || ce.CycleClause != nil {
				c.walkMsg(ce.ProtoReflect())
			}
			if !w.Recursive {
				c.cteNames = append(c.cteNames, ce.Ctename)
				n++
			}
		}
	}
	return n
}

// popCTEs ends the scope of the last n CTE names.
func (c *stmtCtx) popCTEs(n int) { c.cteNames = c.cteNames[:len(c.cteNames)-n] }

func (c *stmtCtx) scopeSelect(s *pg.SelectStmt) {
	if s == nil || c.doneSel[s] {
		return
	}
	c.doneSel[s] = true
	defer c.popCTEs(c.withClause(s.WithClause))
	if s.Op != pg.SetOperation_SETOP_NONE && s.Op != pg.SetOperation_SET_OPERATION_UNDEFINED {
		c.scopeSelect(s.Larg)
		c.scopeSelect(s.Rarg)
		c.visitList(s.SortClause)
		c.visit(s.LimitCount)
		c.visit(s.LimitOffset)
		c.visitList(s.LockingClause)
		return
	}
	where := &sink{expr: &s.WhereClause}
	sinks := []*sink{where}
	sole := len(s.FromClause) == 1 && s.FromClause[0].GetRangeVar() != nil
	for _, item := range s.FromClause {
		c.fromItem(item, where, []**pg.Node{&s.WhereClause}, sole, &sinks)
	}
	c.visitList(s.DistinctClause)
	if s.IntoClause != nil {
		c.visitMsg(s.IntoClause)
	}
	c.visitList(s.TargetList)
	c.visit(s.WhereClause)
	c.visitList(s.GroupClause)
	c.visit(s.HavingClause)
	c.visitList(s.WindowClause)
	c.visitList(s.ValuesLists)
	c.visitList(s.SortClause)
	c.visit(s.LimitOffset)
	c.visit(s.LimitCount)
	c.visitList(s.LockingClause)
	applySinks(sinks)
}

// fromItem scopes one FROM item. target is where predicates of relations
// on the preserved side of every enclosing join go; cands are the
// qualifiers in which a verify-strategy conjunct counts.
func (c *stmtCtx) fromItem(n *pg.Node, target *sink, cands []**pg.Node, sole bool, sinks *[]*sink) {
	if n == nil {
		return
	}
	switch x := n.Node.(type) {
	case *pg.Node_RangeVar:
		c.leaf(n, x.RangeVar, target, cands, sole)
	case *pg.Node_JoinExpr:
		j := x.JoinExpr
		usable := len(j.UsingClause) == 0 && !j.IsNatural
		var on *sink
		if usable {
			on = &sink{expr: &j.Quals}
			*sinks = append(*sinks, on)
		}
		wrap := &sink{}
		aliased := j.Alias != nil
		switch j.Jointype {
		case pg.JoinType_JOIN_INNER:
			t, cc := target, append([]**pg.Node{}, cands...)
			if aliased {
				t, cc = wrap, nil
				if usable {
					t = on
				}
			}
			if usable {
				cc = append(cc, &j.Quals)
			}
			c.fromItem(j.Larg, t, cc, false, sinks)
			c.fromItem(j.Rarg, t, cc, false, sinks)
		case pg.JoinType_JOIN_LEFT, pg.JoinType_JOIN_RIGHT:
			pres, null := j.Larg, j.Rarg
			if j.Jointype == pg.JoinType_JOIN_RIGHT {
				pres, null = j.Rarg, j.Larg
			}
			tp, cp := target, cands
			if aliased {
				tp, cp = wrap, nil
			}
			tn, cn := wrap, []**pg.Node(nil)
			if usable {
				tn, cn = on, []**pg.Node{&j.Quals}
			}
			if j.Jointype == pg.JoinType_JOIN_LEFT {
				c.fromItem(pres, tp, cp, false, sinks)
				c.fromItem(null, tn, cn, false, sinks)
			} else {
				c.fromItem(null, tn, cn, false, sinks)
				c.fromItem(pres, tp, cp, false, sinks)
			}
		case pg.JoinType_JOIN_FULL:
			c.fromItem(j.Larg, wrap, nil, false, sinks)
			c.fromItem(j.Rarg, wrap, nil, false, sinks)
		default:
			c.reject(ReasonUnsupported, "join type")
		}
		c.visit(j.Quals)
		c.visitList(j.UsingClause)
	case *pg.Node_RangeSubselect:
		c.visit(x.RangeSubselect.Subquery)
	case *pg.Node_RangeTableSample:
		ts := x.RangeTableSample
		if rv := ts.Relation.GetRangeVar(); rv != nil {
			c.leaf(nil, rv, target, cands, sole)
		}
		c.visit(ts.Relation)
		c.visitList(ts.Args)
		c.visit(ts.Repeatable)
	default:
		c.visit(n)
	}
}

// leaf scopes one relation in FROM position.
func (c *stmtCtx) leaf(n *pg.Node, rv *pg.RangeVar, target *sink, cands []**pg.Node, sole bool) {
	if c.handled[rv] {
		return
	}
	c.handled[rv] = true
	c.checkScan(rv, true)
	tr := c.r.rels.lookup(rv)
	if tr == nil {
		return
	}
	name := relDisplay(rv)
	c.addRelation(name)
	c.rowGuard = true
	if tr.Strategy == policy.StrategyVerify {
		if !c.verifyConjunct(cands, refNames(rv), tr.Column, sole, name) {
			c.reject(ReasonUnscoped, name)
		}
		return
	}
	if target.expr != nil {
		target.preds = append(target.preds, c.pred(qualifierOf(rv), tr.Column))
		return
	}
	if n == nil {
		c.reject(ReasonUnsupported, "TABLESAMPLE of tenant relation "+name+" on the nullable side of an outer join")
		return
	}
	c.wrap(n, rv, tr)
}

// wrap replaces the relation by `(SELECT * FROM rel WHERE rel.col = T) AS alias`.
// Used where no qualifier can carry the predicate (FULL JOIN, nullable side of
// a USING join, MERGE source). The alias keeps column references working;
// a whole-row reference to the alias becomes an anonymous record.
func (c *stmtCtx) wrap(n *pg.Node, rv *pg.RangeVar, tr *tenantRel) {
	inner := proto.Clone(rv).(*pg.RangeVar)
	inner.Alias = nil
	alias := rv.Alias
	if alias == nil {
		alias = &pg.Alias{Aliasname: rv.Relname}
	}
	sel := &pg.SelectStmt{
		TargetList:  []*pg.Node{pg.MakeResTargetNodeWithVal(pg.MakeColumnRefNode([]*pg.Node{pg.MakeAStarNode()}, -1), -1)},
		FromClause:  []*pg.Node{{Node: &pg.Node_RangeVar{RangeVar: inner}}},
		WhereClause: c.pred(qualifierOf(inner), tr.Column),
		Op:          pg.SetOperation_SETOP_NONE,
		LimitOption: pg.LimitOption_LIMIT_OPTION_DEFAULT,
	}
	c.doneSel[sel] = true
	c.handled[inner] = true
	n.Node = &pg.Node_RangeSubselect{RangeSubselect: &pg.RangeSubselect{
		Subquery: &pg.Node{Node: &pg.Node_SelectStmt{SelectStmt: sel}}, Alias: alias}}
	c.modified = true
}

// ---- verify ----

type valueKind int

const (
	valueOther valueKind = iota
	valueLiteral
	valueParam
	valueSetting
	valueNull
)

// tenantValue classifies an expression that should stand for the tenant.
// Only casts that keep a value whole are looked through (keepsValue): a
// length or precision, a character(n) or a domain could turn the tenant's
// value, or the setting's name, into another ('17'::varchar(1) is '1').
func (c *stmtCtx) tenantValue(n *pg.Node) (valueKind, string, int) {
	for n != nil {
		if tc := n.GetTypeCast(); tc != nil {
			if !keepsValue(tc.TypeName, c.pol.Tenant.Type) {
				return valueOther, "", 0
			}
			n = tc.Arg
			continue
		}
		if v := scalarSelectValue(n); v != nil {
			// Only the form tenantguard itself injects, (SELECT
			// current_setting(...)), stands for the tenant; a literal in a
			// subquery is an expression.
			if k, _, _ := c.tenantValue(v); k == valueSetting {
				return valueSetting, "", 0
			}
			return valueOther, "", 0
		}
		break
	}
	if n == nil {
		return valueOther, "", 0
	}
	switch x := n.Node.(type) {
	case *pg.Node_AConst:
		a := x.AConst
		if a.Isnull {
			return valueNull, "", 0
		}
		switch v := a.Val.(type) {
		case *pg.A_Const_Ival:
			return valueLiteral, strconv.FormatInt(int64(v.Ival.Ival), 10), 0
		case *pg.A_Const_Sval:
			return valueLiteral, v.Sval.Sval, 0
		case *pg.A_Const_Fval:
			return valueLiteral, v.Fval.Fval, 0
		}
	case *pg.Node_ParamRef:
		return valueParam, "", int(x.ParamRef.Number)
	case *pg.Node_FuncCall:
		f := x.FuncCall
		schema, name := funcName(f)
		if (schema == "" || schema == "pg_catalog") && name == "current_setting" && len(f.Args) >= 1 && f.Over == nil {
			if k, v, _ := c.tenantValue(f.Args[0]); k == valueLiteral && strings.EqualFold(v, c.pol.Tenant.Setting) {
				return valueSetting, "", 0
			}
		}
	}
	return valueOther, "", 0
}

// keepsValue reports whether a cast to t keeps a value of tenant type tt
// (or a setting name) whole: a builtin type without type modifier or
// array, and one that does not rewrite the value's text for that tenant
// type. text and varchar keep any; the integer and numeric types keep an
// integer tenant ('007'::int is 7, as the tenant check reads '007') but
// rewrite a text one ('007'::int::text is '7'); uuid keeps a uuid tenant
// only. Other types may truncate, round or pad (varchar(1), numeric(2,0),
// character, a domain over them) or compare otherwise.
func keepsValue(t *pg.TypeName, tt policy.TenantType) bool {
	if t == nil || len(t.Typmods) > 0 || len(t.ArrayBounds) > 0 || t.Setof || t.PctType {
		return false
	}
	var name string
	switch len(t.Names) {
	case 1:
		name = t.Names[0].GetString_().GetSval()
	case 2:
		if t.Names[0].GetString_().GetSval() != "pg_catalog" {
			return false
		}
		name = t.Names[1].GetString_().GetSval()
	default:
		return false
	}
	switch name {
	case "text", "varchar":
		return true
	case "int2", "int4", "int8", "numeric":
		return tt != policy.TypeText && tt != policy.TypeUUID
	case "uuid":
		return tt == policy.TypeUUID
	}
	return false
}

// accept records what a tenant value requires; false when it cannot stand
// for the tenant in this context.
func (c *stmtCtx) accept(k valueKind, v string, p int, reason, subject string) bool {
	switch k {
	case valueSetting:
		return true
	case valueLiteral:
		if c.dynamic {
			return false
		}
		c.checks = append(c.checks, literalCheck{value: v, reason: reason, subject: subject})
		return true
	case valueParam:
		if c.dynamic || !c.extended {
			return false
		}
		c.verifyParams = appendUnique(c.verifyParams, p)
		return true
	}
	return false
}

func appendUnique(xs []int, x int) []int {
	for _, y := range xs {
		if y == x {
			return xs
		}
	}
	return append(xs, x)
}

func conjuncts(n *pg.Node, out []*pg.Node) []*pg.Node {
	if n == nil {
		return out
	}
	if b := n.GetBoolExpr(); b != nil && b.Boolop == pg.BoolExprType_AND_EXPR {
		for _, a := range b.Args {
			out = conjuncts(a, out)
		}
		return out
	}
	return append(out, n)
}

// isEq returns the operands of `l = r`.
func isEq(n *pg.Node) (*pg.Node, *pg.Node, bool) {
	e := n.GetAExpr()
	if e == nil || e.Kind != pg.A_Expr_Kind_AEXPR_OP || len(e.Name) == 0 || e.Lexpr == nil || e.Rexpr == nil {
		return nil, nil, false
	}
	if s := e.Name[len(e.Name)-1].GetString_(); s == nil || s.Sval != "=" {
		return nil, nil, false
	}
	if len(e.Name) == 2 {
		if s := e.Name[0].GetString_(); s == nil || s.Sval != "pg_catalog" {
			return nil, nil, false
		}
	}
	return e.Lexpr, e.Rexpr, true
}

// isTenantEq returns the operands of `l = r`, or of `l IN (r)` with a single
// value (as ORMs write a one-element list), which is the same condition.
func isTenantEq(n *pg.Node) (*pg.Node, *pg.Node, bool) {
	if l, r, ok := isEq(n); ok {
		return l, r, true
	}
	e := n.GetAExpr()
	if e == nil || e.Kind != pg.A_Expr_Kind_AEXPR_IN || len(e.Name) != 1 || e.Lexpr == nil {
		return nil, nil, false
	}
	if s := e.Name[0].GetString_(); s == nil || s.Sval != "=" {
		return nil, nil, false // NOT IN
	}
	if l := e.Rexpr.GetList(); l != nil && len(l.Items) == 1 && l.Items[0] != nil {
		return e.Lexpr, l.Items[0], true
	}
	return nil, nil, false
}

// colMatches reports a column reference to col of the relation known by
// one of quals (or unqualified, when the relation is alone at its level).
func colMatches(n *pg.Node, quals [][]string, col string, sole bool) bool {
	cr := n.GetColumnRef()
	if cr == nil || len(cr.Fields) == 0 {
		return false
	}
	parts := make([]string, 0, len(cr.Fields))
	for _, f := range cr.Fields {
		s := f.GetString_()
		if s == nil {
			return false
		}
		parts = append(parts, s.Sval)
	}
	if parts[len(parts)-1] != col {
		return false
	}
	q := parts[:len(parts)-1]
	if len(q) == 0 {
		return sole
	}
	for _, want := range quals {
		if len(want) == len(q) {
			ok := true
			for i := range q {
				if q[i] != want[i] {
					ok = false
				}
			}
			if ok {
				return true
			}
		}
	}
	return false
}

// verifyConjunct looks for `<rel>.<col> = <tenant>` among the conjuncts of
// the candidate qualifiers.
func (c *stmtCtx) verifyConjunct(cands []**pg.Node, quals [][]string, col string, sole bool, name string) bool {
	for _, cp := range cands {
		if cp == nil {
			continue
		}
		for _, cj := range conjuncts(*cp, nil) {
			l, r, ok := isTenantEq(cj)
			if !ok {
				continue
			}
			for _, pair := range [][2]*pg.Node{{l, r}, {r, l}} {
				if colMatches(pair[0], quals, col, sole) {
					k, v, p := c.tenantValue(pair[1])
					if c.accept(k, v, p, ReasonCrossTenant, name) {
						return true
					}
				}
			}
		}
	}
	return false
}

// ---- writes ----

// writeValue checks (and in inject mode, completes) the value written to the
// tenant column.
func (c *stmtCtx) writeValue(slot **pg.Node, verify, allowDefault bool, name string) {
	n := *slot
	if n != nil && n.GetSetToDefault() != nil {
		if verify || !allowDefault {
			c.reject(ReasonCrossTenantWrite, name)
			return
		}
		*slot = c.tenantExpr()
		c.modified = true
		return
	}
	k, v, p := c.tenantValue(n)
	if k == valueLiteral && c.extended && !verify && !c.dynamic {
		// A prepared statement may run after a tenant switch: check the
		// literal now and bind the tenant parameter in its place.
		c.checks = append(c.checks, literalCheck{value: v, reason: ReasonCrossTenantWrite, subject: name})
		*slot = c.tenantExpr()
		c.modified = true
		return
	}
	if !c.accept(k, v, p, ReasonCrossTenantWrite, name) {
		c.reject(ReasonCrossTenantWrite, name)
		return
	}
}

// assignments checks SET lists of UPDATE, ON CONFLICT DO UPDATE and MERGE.
func (c *stmtCtx) assignments(list []*pg.Node, tr *tenantRel, name string) {
	for _, t := range list {
		rt := t.GetResTarget()
		if rt == nil || rt.Name != tr.Column {
			continue
		}
		if len(rt.Indirection) > 0 || rt.Val.GetMultiAssignRef() != nil {
			c.reject(ReasonCrossTenantWrite, name)
			continue
		}
		c.writeValue(&rt.Val, tr.Strategy == policy.StrategyVerify, false, name)
	}
}

func colIndex(cols []*pg.Node, col string) int {
	for i, n := range cols {
		if rt := n.GetResTarget(); rt != nil && rt.Name == col && len(rt.Indirection) == 0 {
			return i
		}
	}
	return -1
}

func hasStar(list []*pg.Node) bool {
	for _, n := range list {
		if rt := n.GetResTarget(); rt != nil {
			if cr := rt.Val.GetColumnRef(); cr != nil {
				for _, f := range cr.Fields {
					if f.GetAStar() != nil {
						return true
					}
				}
			}
		}
	}
	return false
}

func (c *stmtCtx) insertStmt(ins *pg.InsertStmt) {
	c.writeTarget(ins.Relation, true)
	defer c.popCTEs(c.withClause(ins.WithClause))
	rv := ins.Relation
	c.handled[rv] = true
	c.checkScan(rv, false)
	tr := c.r.rels.lookup(rv)
	if tr == nil {
		c.visit(ins.SelectStmt)
		if ins.OnConflictClause != nil {
			c.walkMsg(ins.OnConflictClause.ProtoReflect())
		}
		c.visitList(ins.ReturningList)
		return
	}
	name := relDisplay(rv)
	c.addRelation(name)
	if len(ins.ReturningList) > 0 {
		c.rowGuard = true
	}
	verify := tr.Strategy == policy.StrategyVerify
	sel := ins.SelectStmt.GetSelectStmt()
	if len(ins.Cols) == 0 && sel != nil {
		cols := c.r.rels.columnsOf(rv)
		width := -1
		if len(sel.ValuesLists) > 0 {
			if l := sel.ValuesLists[0].GetList(); l != nil {
				width = len(l.Items)
			}
		}
		if cols == nil || width < 0 || width > len(cols) {
			c.reject(ReasonUnsupported, "INSERT into tenant relation "+name+" without a column list")
			return
		}
		for _, col := range cols[:width] {
			ins.Cols = append(ins.Cols, pg.MakeResTargetNodeWithName(col, -1))
		}
		c.modified = true
	}
	idx := colIndex(ins.Cols, tr.Column)
	switch {
	case sel == nil: // DEFAULT VALUES
		if verify {
			c.reject(ReasonUnscoped, name)
			return
		}
		row := pg.MakeListNode([]*pg.Node{c.tenantExpr()})
		sel = &pg.SelectStmt{ValuesLists: []*pg.Node{row}, Op: pg.SetOperation_SETOP_NONE, LimitOption: pg.LimitOption_LIMIT_OPTION_DEFAULT}
		ins.SelectStmt = &pg.Node{Node: &pg.Node_SelectStmt{SelectStmt: sel}}
		c.doneSel[sel] = true
	case len(sel.ValuesLists) > 0 && (sel.Op == pg.SetOperation_SETOP_NONE || sel.Op == pg.SetOperation_SET_OPERATION_UNDEFINED):
		c.doneSel[sel] = true
		defer c.popCTEs(c.withClause(sel.WithClause))
		for _, rowNode := range sel.ValuesLists {
			row := rowNode.GetList()
			if row == nil {
				c.reject(ReasonUnsupported, "VALUES row")
				return
			}
			c.visitList(row.Items)
			if len(row.Items) != len(ins.Cols) {
				c.reject(ReasonUnsupported, "VALUES row whose length differs from the column list")
				return
			}
			switch {
			case idx >= 0 && idx < len(row.Items):
				c.writeValue(&row.Items[idx], verify, true, name)
			case idx >= 0:
				c.reject(ReasonUnsupported, "VALUES row shorter than the column list")
			case verify:
				c.reject(ReasonUnscoped, name)
			default:
				row.Items = append(row.Items, c.tenantExpr())
			}
		}
	case sel.Op == pg.SetOperation_SETOP_NONE || sel.Op == pg.SetOperation_SET_OPERATION_UNDEFINED:
		c.scopeSelect(sel)
		if !hasStar(sel.TargetList) && len(sel.TargetList) != len(ins.Cols) {
			c.reject(ReasonUnsupported, "INSERT ... SELECT whose width differs from the column list")
			return
		}
		switch {
		case idx >= 0:
			if idx >= len(sel.TargetList) || hasStar(sel.TargetList[:idx+1]) {
				c.reject(ReasonUnsupported, "INSERT ... SELECT whose tenant column value cannot be located")
				return
			}
			c.writeValue(&sel.TargetList[idx].GetResTarget().Val, verify, false, name)
		case verify:
			c.reject(ReasonUnscoped, name)
		default:
			sel.TargetList = append(sel.TargetList, pg.MakeResTargetNodeWithVal(c.tenantExpr(), -1))
		}
	default: // set operation
		c.scopeSelect(sel)
		if idx >= 0 || verify {
			c.reject(ReasonUnsupported, "INSERT ... SELECT with a set operation that supplies the tenant column")
			return
		}
		outer := &pg.SelectStmt{
			TargetList: []*pg.Node{
				pg.MakeResTargetNodeWithVal(pg.MakeColumnRefNode([]*pg.Node{pg.MakeAStarNode()}, -1), -1),
				pg.MakeResTargetNodeWithVal(c.tenantExpr(), -1)},
			FromClause: []*pg.Node{{Node: &pg.Node_RangeSubselect{RangeSubselect: &pg.RangeSubselect{
				Subquery: ins.SelectStmt, Alias: &pg.Alias{Aliasname: "tenantguard_src"}}}}},
			Op: pg.SetOperation_SETOP_NONE, LimitOption: pg.LimitOption_LIMIT_OPTION_DEFAULT,
		}
		c.doneSel[outer] = true
		ins.SelectStmt = &pg.Node{Node: &pg.Node_SelectStmt{SelectStmt: outer}}
	}
	if idx < 0 && !verify {
		ins.Cols = append(ins.Cols, pg.MakeResTargetNodeWithName(tr.Column, -1))
		c.modified = true
	}
	if oc := ins.OnConflictClause; oc != nil {
		if oc.Action == pg.OnConflictAction_ONCONFLICT_UPDATE {
			c.assignments(oc.TargetList, tr, name)
			quals := [][]string{{rv.Relname}}
			q := []string{rv.Relname}
			if rv.Alias != nil && rv.Alias.Aliasname != "" {
				quals = [][]string{{rv.Alias.Aliasname}}
				q = []string{rv.Alias.Aliasname}
			}
			if verify {
				if !c.verifyConjunct([]**pg.Node{&oc.WhereClause}, quals, tr.Column, false, name) {
					c.reject(ReasonUnscoped, name)
				}
			} else {
				applySinks([]*sink{{expr: &oc.WhereClause, preds: []*pg.Node{c.pred(q, tr.Column)}}})
			}
		}
		c.walkMsg(oc.ProtoReflect())
	}
	c.visitList(ins.ReturningList)
}

func (c *stmtCtx) targetScope(rv *pg.RangeVar, where **pg.Node, sole bool, sinks *[]*sink) (*tenantRel, string) {
	c.handled[rv] = true
	c.checkScan(rv, false)
	tr := c.r.rels.lookup(rv)
	if tr == nil {
		return nil, ""
	}
	name := relDisplay(rv)
	c.addRelation(name)
	if *where != nil && (*where).GetCurrentOfExpr() != nil {
		c.reject(ReasonUnsupported, "WHERE CURRENT OF on tenant relation "+name)
		return tr, name
	}
	if tr.Strategy == policy.StrategyVerify {
		if !c.verifyConjunct([]**pg.Node{where}, refNames(rv), tr.Column, sole, name) {
			c.reject(ReasonUnscoped, name)
		}
	} else {
		(*sinks)[0].preds = append((*sinks)[0].preds, c.pred(qualifierOf(rv), tr.Column))
	}
	return tr, name
}

func (c *stmtCtx) updateStmt(u *pg.UpdateStmt) {
	c.writeTarget(u.Relation, true)
	defer c.popCTEs(c.withClause(u.WithClause))
	sinks := []*sink{{expr: &u.WhereClause}}
	tr, name := c.targetScope(u.Relation, &u.WhereClause, len(u.FromClause) == 0, &sinks)
	if tr != nil {
		c.assignments(u.TargetList, tr, name)
		if len(u.ReturningList) > 0 {
			c.rowGuard = true
		}
	}
	for _, item := range u.FromClause {
		c.fromItem(item, sinks[0], []**pg.Node{&u.WhereClause}, false, &sinks)
	}
	c.visitList(u.TargetList)
	c.visit(u.WhereClause)
	c.visitList(u.ReturningList)
	applySinks(sinks)
}

func (c *stmtCtx) deleteStmt(d *pg.DeleteStmt) {
	c.writeTarget(d.Relation, false)
	defer c.popCTEs(c.withClause(d.WithClause))
	sinks := []*sink{{expr: &d.WhereClause}}
	tr, _ := c.targetScope(d.Relation, &d.WhereClause, len(d.UsingClause) == 0, &sinks)
	if tr != nil && len(d.ReturningList) > 0 {
		c.rowGuard = true
	}
	for _, item := range d.UsingClause {
		c.fromItem(item, sinks[0], []**pg.Node{&d.WhereClause}, false, &sinks)
	}
	c.visit(d.WhereClause)
	c.visitList(d.ReturningList)
	applySinks(sinks)
}

func (c *stmtCtx) mergeStmt(m *pg.MergeStmt) {
	c.writeTarget(m.Relation, true)
	defer c.popCTEs(c.withClause(m.WithClause))
	rv := m.Relation
	c.handled[rv] = true
	c.checkScan(rv, false)
	sinks := []*sink{}
	// The source is joined so that its unmatched rows drive INSERT actions:
	// a filter in the join condition would turn another tenant's source
	// rows into inserts, so tenant sources are wrapped.
	c.fromItem(m.SourceRelation, &sink{}, nil, false, &sinks)
	tr := c.r.rels.lookup(rv)
	if tr != nil {
		name := relDisplay(rv)
		c.addRelation(name)
		if len(m.ReturningList) > 0 {
			c.rowGuard = true
		}
		verify := tr.Strategy == policy.StrategyVerify
		quals := refNames(rv)
		scope := func(p **pg.Node) {
			if verify {
				if !c.verifyConjunct([]**pg.Node{p}, quals, tr.Column, false, name) {
					c.reject(ReasonUnscoped, name)
				}
				return
			}
			sinks = append(sinks, &sink{expr: p, preds: []*pg.Node{c.pred(qualifierOf(rv), tr.Column)}})
		}
		scope(&m.JoinCondition)
		for _, wn := range m.MergeWhenClauses {
			wc := wn.GetMergeWhenClause()
			if wc == nil {
				continue
			}
			if wc.MatchKind == pg.MergeMatchKind_MERGE_WHEN_NOT_MATCHED_BY_SOURCE {
				// Target rows of other tenants match no source row either.
				scope(&wc.Condition)
			}
			switch wc.CommandType {
			case pg.CmdType_CMD_UPDATE:
				c.assignments(wc.TargetList, tr, name)
			case pg.CmdType_CMD_INSERT:
				c.mergeInsert(wc, rv, tr, name, verify)
			}
		}
	}
	c.visit(m.JoinCondition)
	c.visitList(m.MergeWhenClauses)
	c.visitList(m.ReturningList)
	applySinks(sinks)
}

func (c *stmtCtx) mergeInsert(wc *pg.MergeWhenClause, rv *pg.RangeVar, tr *tenantRel, name string, verify bool) {
	if len(wc.TargetList) == 0 {
		if len(wc.Values) == 0 { // INSERT DEFAULT VALUES
			if verify {
				c.reject(ReasonUnscoped, name)
				return
			}
			wc.TargetList = []*pg.Node{pg.MakeResTargetNodeWithName(tr.Column, -1)}
			wc.Values = []*pg.Node{c.tenantExpr()}
			c.modified = true
			return
		}
		cols := c.r.rels.columnsOf(rv)
		if cols == nil || len(wc.Values) > len(cols) {
			c.reject(ReasonUnsupported, "MERGE INSERT into tenant relation "+name+" without a column list")
			return
		}
		for _, col := range cols[:len(wc.Values)] {
			wc.TargetList = append(wc.TargetList, pg.MakeResTargetNodeWithName(col, -1))
		}
		c.modified = true
	}
	if len(wc.TargetList) != len(wc.Values) {
		c.reject(ReasonUnsupported, "MERGE INSERT values whose length differs from the column list")
		return
	}
	idx := colIndex(wc.TargetList, tr.Column)
	switch {
	case idx >= 0 && idx < len(wc.Values):
		c.writeValue(&wc.Values[idx], verify, true, name)
	case idx >= 0:
		c.reject(ReasonUnsupported, "MERGE INSERT values shorter than the column list")
	case verify:
		c.reject(ReasonUnscoped, name)
	default:
		wc.TargetList = append(wc.TargetList, pg.MakeResTargetNodeWithName(tr.Column, -1))
		wc.Values = append(wc.Values, c.tenantExpr())
	}
}

func funcName(f *pg.FuncCall) (string, string) {
	parts := make([]string, 0, len(f.Funcname))
	for _, n := range f.Funcname {
		if s := n.GetString_(); s != nil {
			parts = append(parts, s.Sval)
		}
	}
	switch len(parts) {
	case 0:
		return "", ""
	case 1:
		return "", parts[0]
	default:
		return parts[len(parts)-2], parts[len(parts)-1]
	}
}

// scalarSelectValue returns x for (SELECT x) — a scalar subquery with one
// target and no FROM, WHERE or other clause — and nil otherwise.
func scalarSelectValue(n *pg.Node) *pg.Node {
	sl := n.GetSubLink()
	if sl == nil || sl.SubLinkType != pg.SubLinkType_EXPR_SUBLINK {
		return nil
	}
	s := sl.Subselect.GetSelectStmt()
	if s == nil || len(s.TargetList) != 1 || len(s.FromClause) > 0 || s.WhereClause != nil || s.GroupClause != nil ||
		s.HavingClause != nil || s.WithClause != nil || s.Larg != nil || s.Rarg != nil || len(s.ValuesLists) > 0 ||
		s.LimitCount != nil || s.LimitOffset != nil || len(s.SortClause) > 0 || len(s.DistinctClause) > 0 || len(s.WindowClause) > 0 {
		return nil
	}
	rt := s.TargetList[0].GetResTarget()
	if rt == nil || rt.Val == nil {
		return nil
	}
	return rt.Val
}
