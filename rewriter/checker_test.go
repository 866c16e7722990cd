package rewriter

import (
	"fmt"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tenantguard/tenantguard/policy"
)

// This file is the structural checker: it re-parses a decision's SQL and
// confirms, without using the rewriting code, that every occurrence of a
// tenant relation is constrained to the tenant where RLS would constrain it.

type pathStep struct {
	msg   proto.Message
	field string
}

type scopeChecker struct {
	pol      *policy.Policy
	rels     *relationIndex
	tenant   string
	d        Decision
	problems []string
}

func checkScoped(pol *policy.Policy, rels *relationIndex, sql, tenant string, d Decision) []string {
	tree, err := pg.Parse(sql)
	if err != nil {
		return []string{"output does not parse: " + err.Error()}
	}
	ck := &scopeChecker{pol: pol, rels: rels, tenant: tenant, d: d}
	for _, raw := range tree.Stmts {
		ck.walk(raw.ProtoReflect(), nil)
	}
	return ck.problems
}

func (ck *scopeChecker) walk(m protoreflect.Message, path []pathStep) {
	if rv, ok := m.Interface().(*pg.RangeVar); ok {
		ck.checkRangeVar(rv, path)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
			return true
		}
		p := append(append([]pathStep{}, path...), pathStep{msg: m.Interface(), field: string(fd.Name())})
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				ck.walk(l.Get(i).Message(), p)
			}
			return true
		}
		ck.walk(v.Message(), p)
		return true
	})
}

func (ck *scopeChecker) fail(rv *pg.RangeVar, why string) {
	ck.problems = append(ck.problems, fmt.Sprintf("%s: %s", rv.Relname, why))
}

// tenantOK: the expression stands for the session's tenant.
func (ck *scopeChecker) tenantOK(n *pg.Node) bool {
	for n != nil {
		if n.GetTypeCast() != nil {
			n = n.GetTypeCast().Arg
		} else if v := scalarSelectValue(n); v != nil {
			n = v
		} else {
			break
		}
	}
	if n == nil {
		return false
	}
	if a := n.GetAConst(); a != nil && !a.Isnull {
		var v string
		switch x := a.Val.(type) {
		case *pg.A_Const_Ival:
			v = strconv.Itoa(int(x.Ival.Ival))
		case *pg.A_Const_Sval:
			v = x.Sval.Sval
		case *pg.A_Const_Fval:
			v = x.Fval.Fval
		default:
			return false
		}
		want, err1 := CanonicalTenant(ck.pol.Tenant.Type, ck.tenant)
		got, err2 := CanonicalTenant(ck.pol.Tenant.Type, v)
		return err1 == nil && err2 == nil && want == got
	}
	if p := n.GetParamRef(); p != nil {
		if int(p.Number) == ck.d.TenantParam {
			return true
		}
		for _, k := range ck.d.VerifyParams {
			if int(p.Number) == k {
				return true
			}
		}
		return false
	}
	if f := n.GetFuncCall(); f != nil && len(f.Args) >= 1 {
		last := f.Funcname[len(f.Funcname)-1].GetString_()
		arg := f.Args[0].GetAConst()
		return last != nil && last.Sval == "current_setting" && arg != nil && arg.GetSval() != nil &&
			strings.EqualFold(arg.GetSval().Sval, ck.pol.Tenant.Setting)
	}
	return false
}

func qualsOf(rv *pg.RangeVar) [][]string {
	if rv.Alias != nil {
		return [][]string{{rv.Alias.Aliasname}}
	}
	q := [][]string{{rv.Relname}}
	if rv.Schemaname != "" {
		q = append(q, []string{rv.Schemaname, rv.Relname})
	}
	if rv.Catalogname != "" {
		q = append(q, []string{rv.Catalogname, rv.Schemaname, rv.Relname})
	}
	return q
}

// hasPred: expr has a top-level conjunct <rv>.<col> = tenant.
func (ck *scopeChecker) hasPred(expr *pg.Node, rv *pg.RangeVar, col string, sole bool) bool {
	var cj []*pg.Node
	var flat func(n *pg.Node)
	flat = func(n *pg.Node) {
		if n == nil {
			return
		}
		if b := n.GetBoolExpr(); b != nil && b.Boolop == pg.BoolExprType_AND_EXPR {
			for _, a := range b.Args {
				flat(a)
			}
			return
		}
		cj = append(cj, n)
	}
	flat(expr)
	for _, c := range cj {
		e := c.GetAExpr()
		if e == nil || len(e.Name) != 1 || e.Name[0].GetString_().GetSval() != "=" {
			continue
		}
		pairs := [][2]*pg.Node{{e.Lexpr, e.Rexpr}, {e.Rexpr, e.Lexpr}}
		switch e.Kind {
		case pg.A_Expr_Kind_AEXPR_OP:
		case pg.A_Expr_Kind_AEXPR_IN: // col IN (v), one value
			items := e.Rexpr.GetList().GetItems()
			if len(items) != 1 {
				continue
			}
			pairs = [][2]*pg.Node{{e.Lexpr, items[0]}, {items[0], e.Lexpr}}
		default:
			continue
		}
		for _, pair := range pairs {
			cr := pair[0].GetColumnRef()
			if cr == nil {
				continue
			}
			var parts []string
			for _, f := range cr.Fields {
				parts = append(parts, f.GetString_().GetSval())
			}
			if len(parts) == 0 || parts[len(parts)-1] != col {
				continue
			}
			q := parts[:len(parts)-1]
			match := len(q) == 0 && sole
			for _, want := range qualsOf(rv) {
				if strings.Join(want, ".") == strings.Join(q, ".") && len(q) > 0 {
					match = true
				}
			}
			if match && ck.tenantOK(pair[1]) {
				return true
			}
		}
	}
	return false
}

func (ck *scopeChecker) checkRangeVar(rv *pg.RangeVar, path []pathStep) {
	tr := ck.rels.lookup(rv)
	if tr == nil {
		return
	}
	col := tr.Column
	for i := len(path) - 1; i >= 0; i-- {
		st := path[i]
		switch x := st.msg.(type) {
		case *pg.Node, *pg.RangeTableSample:
			continue
		case *pg.JoinExpr:
			nullable := x.Jointype == pg.JoinType_JOIN_FULL ||
				(x.Jointype == pg.JoinType_JOIN_LEFT && st.field == "rarg") ||
				(x.Jointype == pg.JoinType_JOIN_RIGHT && st.field == "larg")
			if x.Jointype == pg.JoinType_JOIN_FULL {
				ck.fail(rv, "on a side of a FULL JOIN without a filtered subquery")
				return
			}
			if ck.hasPred(x.Quals, rv, col, false) && (nullable || x.Jointype == pg.JoinType_JOIN_INNER) {
				return
			}
			if nullable {
				ck.fail(rv, "nullable side of an outer join not filtered in its ON clause")
				return
			}
			if x.Alias != nil {
				ck.fail(rv, "under an aliased join without a filter")
				return
			}
		case *pg.SelectStmt:
			if st.field != "from_clause" {
				ck.fail(rv, "in select field "+st.field)
				return
			}
			if !ck.hasPred(x.WhereClause, rv, col, len(x.FromClause) == 1 && x.FromClause[0].GetRangeVar() == rv) {
				ck.fail(rv, "no tenant conjunct in WHERE")
			}
			return
		case *pg.UpdateStmt:
			if !ck.hasPred(x.WhereClause, rv, col, len(x.FromClause) == 0 && st.field == "relation") {
				ck.fail(rv, "UPDATE without tenant conjunct")
			}
			if st.field == "relation" {
				ck.checkSet(rv, x.TargetList, col)
			}
			return
		case *pg.DeleteStmt:
			if !ck.hasPred(x.WhereClause, rv, col, len(x.UsingClause) == 0 && st.field == "relation") {
				ck.fail(rv, "DELETE without tenant conjunct")
			}
			return
		case *pg.InsertStmt:
			ck.checkInsert(rv, x, col)
			return
		case *pg.MergeStmt:
			if st.field != "relation" {
				ck.fail(rv, "MERGE source not wrapped")
				return
			}
			if !ck.hasPred(x.JoinCondition, rv, col, false) {
				ck.fail(rv, "MERGE join condition without tenant conjunct")
			}
			for _, wn := range x.MergeWhenClauses {
				wc := wn.GetMergeWhenClause()
				if wc.MatchKind == pg.MergeMatchKind_MERGE_WHEN_NOT_MATCHED_BY_SOURCE && !ck.hasPred(wc.Condition, rv, col, false) {
					ck.fail(rv, "WHEN NOT MATCHED BY SOURCE without tenant conjunct")
				}
				if wc.CommandType == pg.CmdType_CMD_INSERT {
					idx := -1
					for j, t := range wc.TargetList {
						if t.GetResTarget().GetName() == col {
							idx = j
						}
					}
					if idx < 0 || idx >= len(wc.Values) || !ck.tenantOK(wc.Values[idx]) {
						ck.fail(rv, "MERGE INSERT without the tenant value")
					}
				}
				if wc.CommandType == pg.CmdType_CMD_UPDATE {
					ck.checkSet(rv, wc.TargetList, col)
				}
			}
			return
		case *pg.LockingClause, *pg.IntoClause:
			return
		default:
			ck.fail(rv, fmt.Sprintf("in unexpected position %T.%s", x, st.field))
			return
		}
	}
	ck.fail(rv, "outside any statement")
}

func (ck *scopeChecker) checkSet(rv *pg.RangeVar, list []*pg.Node, col string) {
	for _, t := range list {
		if rt := t.GetResTarget(); rt != nil && rt.Name == col && !ck.tenantOK(rt.Val) {
			ck.fail(rv, "SET of the tenant column to a value other than the tenant")
		}
	}
}

func (ck *scopeChecker) checkInsert(rv *pg.RangeVar, ins *pg.InsertStmt, col string) {
	idx := -1
	for j, t := range ins.Cols {
		if t.GetResTarget().GetName() == col {
			idx = j
		}
	}
	if idx < 0 {
		ck.fail(rv, "INSERT without the tenant column")
		return
	}
	sel := ins.SelectStmt.GetSelectStmt()
	switch {
	case sel == nil:
		ck.fail(rv, "INSERT DEFAULT VALUES")
	case len(sel.ValuesLists) > 0:
		for _, row := range sel.ValuesLists {
			items := row.GetList().GetItems()
			if idx >= len(items) || !ck.tenantOK(items[idx]) {
				ck.fail(rv, "VALUES row without the tenant value")
			}
		}
	case hasStar(sel.TargetList):
		// SELECT *, <tenant> FROM (...) wrapper: the tenant is the last column.
		last := sel.TargetList[len(sel.TargetList)-1].GetResTarget().GetVal()
		if idx != len(ins.Cols)-1 || !ck.tenantOK(last) {
			ck.fail(rv, "INSERT ... SELECT * without the tenant value last")
		}
	default:
		if idx >= len(sel.TargetList) || !ck.tenantOK(sel.TargetList[idx].GetResTarget().GetVal()) {
			ck.fail(rv, "INSERT ... SELECT without the tenant value")
		}
	}
	if oc := ins.OnConflictClause; oc != nil && oc.Action == pg.OnConflictAction_ONCONFLICT_UPDATE {
		target := &pg.RangeVar{Relname: rv.Relname, Alias: rv.Alias}
		if !ck.hasPred(oc.WhereClause, target, col, false) {
			ck.fail(rv, "ON CONFLICT DO UPDATE without tenant conjunct")
		}
		ck.checkSet(rv, oc.TargetList, col)
	}
}
