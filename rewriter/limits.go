package rewriter

import (
	"slices"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/tenantguard/tenantguard/policy"
)

// unboundedRows stands for "no bound".
const unboundedRows = -1

// bound returns an upper bound of the rows s returns, or unboundedRows.
// LIMIT $k counts as max_rows and records k in limitParams (the proxy checks
// the bound value at Bind).
func (c *stmtCtx) bound(s *pg.SelectStmt, ctes map[string]*pg.SelectStmt) int64 {
	if s == nil {
		return unboundedRows
	}
	ctes = c.cteScope(s.WithClause, ctes)
	limit := int64(unboundedRows)
	if s.LimitCount != nil && s.LimitOption != pg.LimitOption_LIMIT_OPTION_WITH_TIES {
		switch k, v, p := c.limitValue(s.LimitCount); k {
		case valueLiteral:
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
				limit = n
			}
		case valueParam:
			c.limitParams = appendUnique(c.limitParams, p)
			limit = c.pol.Limits.MaxRows
		}
	}
	shape := c.shapeBound(s, ctes)
	switch {
	case limit == unboundedRows:
		return shape
	case shape == unboundedRows || limit < shape:
		return limit
	}
	return shape
}

// limitValue classifies a LIMIT or OFFSET value: a literal or a parameter,
// through casts that keep it whole (keepsValue: '150'::numeric(2,-2) is
// 200).
func (c *stmtCtx) limitValue(n *pg.Node) (valueKind, string, int) {
	for n != nil && n.GetTypeCast() != nil {
		if !keepsValue(n.GetTypeCast().TypeName, policy.TypeBigint) { // a count: integer rules
			return valueOther, "", 0
		}
		n = n.GetTypeCast().Arg
	}
	if a := n.GetAConst(); a != nil {
		if iv, ok := a.Val.(*pg.A_Const_Ival); ok && !a.Isnull {
			return valueLiteral, strconv.FormatInt(int64(iv.Ival.Ival), 10), 0
		}
		if fv, ok := a.Val.(*pg.A_Const_Fval); ok && !a.Isnull {
			return valueLiteral, fv.Fval.Fval, 0
		}
		return valueOther, "", 0
	}
	if p := n.GetParamRef(); p != nil && c.extended && !c.dynamic {
		return valueParam, "", int(p.Number)
	}
	return valueOther, "", 0
}

func (c *stmtCtx) cteScope(w *pg.WithClause, outer map[string]*pg.SelectStmt) map[string]*pg.SelectStmt {
	if w == nil {
		return outer
	}
	m := map[string]*pg.SelectStmt{}
	for k, v := range outer {
		m[k] = v
	}
	for _, n := range w.Ctes {
		if ce := n.GetCommonTableExpr(); ce != nil {
			// A recursive CTE's rows are not bounded here: a nil body.
			m[ce.Ctename] = nil
			if !w.Recursive {
				m[ce.Ctename] = ce.Ctequery.GetSelectStmt()
			}
		}
	}
	return m
}

// shapeBound bounds a SELECT by its shape, without its own LIMIT.
func (c *stmtCtx) shapeBound(s *pg.SelectStmt, ctes map[string]*pg.SelectStmt) int64 {
	switch s.Op {
	case pg.SetOperation_SETOP_UNION:
		l, r := c.bound(s.Larg, ctes), c.bound(s.Rarg, ctes)
		if l == unboundedRows || r == unboundedRows {
			return unboundedRows
		}
		return l + r
	case pg.SetOperation_SETOP_INTERSECT:
		l, r := c.bound(s.Larg, ctes), c.bound(s.Rarg, ctes)
		switch {
		case l == unboundedRows:
			return r
		case r == unboundedRows || l < r:
			return l
		}
		return r
	case pg.SetOperation_SETOP_EXCEPT:
		return c.bound(s.Larg, ctes)
	}
	if len(s.ValuesLists) > 0 {
		return int64(len(s.ValuesLists))
	}
	// A set-returning function multiplies the rows wherever it is
	// evaluated per row (ORDER BY, GROUP BY, DISTINCT ON, HAVING too), and
	// grouping sets make one row per set, even over one row.
	if c.hasSetReturning(s.TargetList) || c.hasSetReturning(s.SortClause) || c.hasSetReturning(s.GroupClause) ||
		c.hasSetReturning(s.DistinctClause) || c.hasSetReturning([]*pg.Node{s.HavingClause}) || hasGroupingSets(s.GroupClause) {
		return unboundedRows
	}
	if len(s.FromClause) == 0 {
		return 1
	}
	if len(s.GroupClause) == 0 && (c.hasAggregate(s.TargetList) || c.hasAggregate([]*pg.Node{s.HavingClause})) {
		return 1
	}
	if len(s.FromClause) == 1 {
		item := s.FromClause[0]
		if sub := item.GetRangeSubselect(); sub != nil && !sub.Lateral {
			return c.bound(sub.Subquery.GetSelectStmt(), ctes)
		}
		if rv := item.GetRangeVar(); rv != nil {
			if rv.Schemaname == "" {
				if cte, ok := ctes[rv.Relname]; ok {
					if cte == nil {
						return unboundedRows // recursive, or a data-modifying CTE
					}
					// The CTE's body does not see itself (non-recursive WITH).
					inner := map[string]*pg.SelectStmt{}
					for k, v := range ctes {
						if k != rv.Relname {
							inner[k] = v
						}
					}
					return c.bound(cte, inner)
				}
			}
		}
	}
	return c.joinBound(s, ctes)
}

// joinRel is a relation of a FROM clause that joinBound follows.
type joinRel struct {
	rv    *pg.RangeVar
	quals [][]string
	cols  []string   // from the catalog; nil when unknown
	on    []*pg.Node // the ON conjuncts of the LEFT JOIN it is the nullable side of
}

// joinBound bounds a SELECT over relations (one, a JOIN, or a FROM list) by
// their unique keys. A relation is fixed when every column of one of its
// unique keys is equal, in a conjunct every result row satisfies (WHERE,
// the ON of an inner join, or for the nullable side of a LEFT JOIN its
// ON), to a constant, a parameter, the tenant, or a column of a relation
// already fixed: each then contributes one row (or, on a LEFT JOIN's
// nullable side, one row or NULLs) to every result row, so the result has
// at most one row when all are fixed (or, for a key in a list of n
// values, n rows each). With GROUP BY on columns of fixed relations only,
// the groups are bounded by their rows.
// Anything else (RIGHT and FULL joins, USING, subqueries, functions, CTEs
// in the join, grouping sets, positional GROUP BY) is unbounded, as before.
func (c *stmtCtx) joinBound(s *pg.SelectStmt, ctes map[string]*pg.SelectStmt) int64 {
	var rels []*joinRel
	pool := conjuncts(s.WhereClause, nil)
	var walk func(n *pg.Node) bool
	walk = func(n *pg.Node) bool {
		if rv := n.GetRangeVar(); rv != nil {
			if rv.Schemaname == "" {
				if _, ok := ctes[rv.Relname]; ok {
					return false
				}
			}
			r := &joinRel{rv: rv, quals: refNames(rv), cols: c.r.rels.columnsOf(rv)}
			if (rv.Alias != nil && len(rv.Alias.Colnames) > 0) || (rv.Schemaname == "" && c.r.rels.shared[rv.Relname]) {
				r.cols = nil // renamed, or search_path's: unqualified names are not resolved
			}
			rels = append(rels, r)
			return true
		}
		j := n.GetJoinExpr()
		if j == nil || j.IsNatural || len(j.UsingClause) > 0 || j.Alias != nil || j.JoinUsingAlias != nil {
			return false
		}
		switch j.Jointype {
		case pg.JoinType_JOIN_INNER:
			if !walk(j.Larg) || !walk(j.Rarg) {
				return false
			}
			pool = conjuncts(j.Quals, pool)
		case pg.JoinType_JOIN_LEFT:
			if j.Rarg.GetRangeVar() == nil || !walk(j.Larg) || !walk(j.Rarg) {
				return false
			}
			rels[len(rels)-1].on = conjuncts(j.Quals, nil)
		default:
			return false
		}
		return true
	}
	for _, item := range s.FromClause {
		if !walk(item) {
			return unboundedRows
		}
	}
	// resolve returns the index of the relation a column reference names,
	// and the column; -1 when it cannot tell (unknown or ambiguous).
	resolve := func(n *pg.Node) (int, string) {
		cr := n.GetColumnRef()
		if cr == nil || len(cr.Fields) == 0 {
			return -1, ""
		}
		last := cr.Fields[len(cr.Fields)-1].GetString_()
		if last == nil {
			return -1, ""
		}
		found := -1
		for i, r := range rels {
			var ok bool
			if len(cr.Fields) == 1 {
				if len(rels) == 1 {
					// The sole relation's (as colMatches takes it): a key
					// column it does not have fixes nothing anyway.
					return 0, last.Sval
				}
				if r.cols == nil {
					return -1, "" // it may be this relation's
				}
				ok = slices.Contains(r.cols, last.Sval)
			} else {
				ok = colMatches(n, r.quals, last.Sval, false)
			}
			if ok {
				if found >= 0 {
					return -1, ""
				}
				found = i
			}
		}
		return found, last.Sval
	}
	in := make([]bool, len(rels))
	// rowsOf bounds relation i's rows for each combination of the fixed
	// relations' rows, or returns unboundedRows.
	rowsOf := func(i int) int64 {
		keys := c.r.rels.keysOf(rels[i].rv)
		if len(keys) == 0 {
			return unboundedRows
		}
		values := map[string]int64{}
		for _, list := range [][]*pg.Node{pool, rels[i].on} {
			for _, cj := range list {
				for _, kc := range c.keyConstraints(cj) {
					ri, col := resolve(kc.col)
					if ri != i {
						continue
					}
					if kc.val == nil || c.isKeyValue(kc.val) {
						setFewer(values, col, kc.n)
					} else if rj, _ := resolve(kc.val); rj >= 0 && rj != i && in[rj] {
						setFewer(values, col, 1)
					}
				}
			}
		}
		return keysBound(keys, values)
	}
	// total bounds the result when every relation is fixed; groups bounds
	// the distinct combinations of the fixed relations' rows (each row or,
	// on a LEFT JOIN's nullable side, NULLs).
	fixed, total, groups := 0, int64(1), int64(1)
	for changed := true; changed; {
		changed = false
		for i := range rels {
			if in[i] {
				continue
			}
			if n := rowsOf(i); n != unboundedRows {
				in[i], changed = true, true
				fixed++
				total, groups = mulBound(total, n), mulBound(groups, n+1)
			}
		}
	}
	if fixed == len(rels) {
		return total
	}
	if len(s.GroupClause) == 0 || fixed == 0 {
		return unboundedRows
	}
	for _, g := range s.GroupClause {
		if ri, _ := resolve(g); ri < 0 || !in[ri] {
			return unboundedRows
		}
	}
	return groups
}

// keyConstraint is what a conjunct says of one column: it takes one of n
// values; for an equality n is 1 and val is the other side.
type keyConstraint struct {
	col *pg.Node
	n   int64
	val *pg.Node
}

// keyConstraints reads col = x (either way round), col IN (a, b, ...) and
// col = ANY (ARRAY[a, b, ...]); a list counts only when every item is a
// constant, a parameter or the tenant.
func (c *stmtCtx) keyConstraints(cj *pg.Node) []keyConstraint {
	if l, r, ok := isEq(cj); ok {
		return []keyConstraint{{l, 1, r}, {r, 1, l}}
	}
	e := cj.GetAExpr()
	if e == nil || e.Lexpr.GetColumnRef() == nil || len(e.Name) != 1 {
		return nil
	}
	if op := e.Name[0].GetString_(); op == nil || op.Sval != "=" {
		return nil // NOT IN is <>
	}
	var items []*pg.Node
	switch e.Kind {
	case pg.A_Expr_Kind_AEXPR_IN:
		if l := e.Rexpr.GetList(); l != nil {
			items = l.Items
		}
	case pg.A_Expr_Kind_AEXPR_OP_ANY:
		if a := e.Rexpr.GetAArrayExpr(); a != nil {
			// = ANY scans every element of the array ARRAY[...] builds, of
			// its element arrays too: only scalar constants count as one.
			for _, it := range a.Elements {
				if !scalarConst(it) {
					return nil
				}
			}
			items = a.Elements
		} else if p := paramUnder(e.Rexpr); p != nil && c.arrays && c.extended && !c.dynamic {
			// An array parameter: its length is checked at Bind.
			c.arrayParams = appendUnique(c.arrayParams, int(p.Number))
			return []keyConstraint{{e.Lexpr, c.pol.Limits.MaxRows, nil}}
		}
	}
	if len(items) == 0 {
		return nil
	}
	for _, it := range items {
		if !c.isKeyValue(it) {
			return nil
		}
	}
	return []keyConstraint{{e.Lexpr, int64(len(items)), nil}}
}

// hasGroupingSets: GROUPING SETS, CUBE or ROLLUP in a GROUP BY.
func hasGroupingSets(group []*pg.Node) bool {
	for _, g := range group {
		if g.GetGroupingSet() != nil {
			return true
		}
	}
	return false
}

// scalarConst: a constant that is not an array (no cast to an array type,
// no '{...}' literal, no ARRAY[...]).
func scalarConst(n *pg.Node) bool {
	for n != nil {
		tc := n.GetTypeCast()
		if tc == nil {
			break
		}
		if tc.TypeName == nil || len(tc.TypeName.ArrayBounds) > 0 {
			return false
		}
		n = tc.Arg
	}
	a := n.GetAConst()
	if a == nil {
		return false
	}
	if s, ok := a.Val.(*pg.A_Const_Sval); ok && strings.HasPrefix(strings.TrimSpace(s.Sval.Sval), "{") {
		return false
	}
	return true
}

// paramUnder returns the parameter n is, under any casts ($1::bigint[]).
func paramUnder(n *pg.Node) *pg.ParamRef {
	for n != nil && n.GetTypeCast() != nil {
		n = n.GetTypeCast().Arg
	}
	return n.GetParamRef()
}

// isKeyValue: a constant, a parameter or the tenant.
func (c *stmtCtx) isKeyValue(n *pg.Node) bool {
	k, _, _ := c.tenantValue(n)
	return k == valueLiteral || k == valueParam || k == valueSetting
}

// setFewer records that col takes at most n values (the fewest seen).
func setFewer(values map[string]int64, col string, n int64) {
	if v, ok := values[col]; !ok || n < v {
		values[col] = n
	}
}

// keysBound is the fewest rows a unique key allows, given how many values
// each column may take (a column not in values is free); unboundedRows
// when no key has all its columns there.
func keysBound(keys [][]string, values map[string]int64) int64 {
	best := int64(unboundedRows)
	for _, key := range keys {
		n, all := int64(1), len(key) > 0
		for _, col := range key {
			v, ok := values[col]
			if !ok {
				all = false
				break
			}
			n = mulBound(n, v)
		}
		if all && (best == unboundedRows || n < best) {
			best = n
		}
	}
	return best
}

// mulBound multiplies two bounds, saturating far above any max_rows.
func mulBound(a, b int64) int64 {
	const most = 1 << 40
	if a > 0 && b > most/a {
		return most
	}
	return a * b
}

// findFuncs calls fn for each function call in ns, not descending into
// subqueries.
func findFuncs(ns []*pg.Node, fn func(*pg.FuncCall)) {
	var visit func(x proto.Message)
	visit = func(x proto.Message) {
		switch t := x.(type) {
		case *pg.SelectStmt:
			return
		case *pg.FuncCall:
			fn(t)
		}
		eachChild(x.ProtoReflect(), visit)
	}
	for _, n := range ns {
		if n != nil {
			eachChild(n.ProtoReflect(), visit)
		}
	}
}

func (c *stmtCtx) hasAggregate(ns []*pg.Node) bool {
	found := false
	findFuncs(ns, func(f *pg.FuncCall) {
		if f.Over != nil {
			return
		}
		s, n := funcName(f)
		if f.AggStar || f.AggDistinct || f.AggWithinGroup || len(f.AggOrder) > 0 || f.AggFilter != nil || c.r.rels.isAggregate(s, n) {
			found = true
		}
	})
	return found
}

func (c *stmtCtx) hasSetReturning(ns []*pg.Node) bool {
	found := false
	findFuncs(ns, func(f *pg.FuncCall) {
		if s, n := funcName(f); c.r.rels.isSetReturning(s, n) {
			found = true
		}
	})
	return found
}

// applyLimits enforces the bounded-result rule on a top-level SELECT that
// reads tenant relations.
func (c *stmtCtx) applyLimits(s *pg.SelectStmt) {
	if s == nil || c.rejReason != "" {
		return
	}
	max := c.pol.Limits.MaxRows
	if off := s.LimitOffset; off != nil && c.r.maxOffset > 0 {
		switch k, v, p := c.limitValue(off); k {
		case valueLiteral:
			if n, err := strconv.ParseInt(v, 10, 64); err != nil || n > c.r.maxOffset {
				c.reject(ReasonOffset, "")
				return
			}
		case valueParam:
			// Checked at Bind against the same bound.
			c.offsetParams = appendUnique(c.offsetParams, p)
		default:
			c.reject(ReasonOffset, "")
			return
		}
	}
	b := c.bound(s, nil)
	if b != unboundedRows && b <= max {
		return
	}
	if c.extended && !c.dynamic {
		// Only then may key = ANY ($k) bound it, its length checked at
		// Bind: a statement bounded otherwise binds arrays of any length.
		before := len(c.arrayParams)
		c.arrays = true
		b = c.bound(s, nil)
		c.arrays = false
		if b != unboundedRows && b <= max {
			return
		}
		c.arrayParams = c.arrayParams[:before]
	}
	if c.pol.Limits.Unbounded != policy.UnboundedCap || s.LimitOption == pg.LimitOption_LIMIT_OPTION_WITH_TIES {
		c.reject(ReasonUnbounded, "")
		return
	}
	// cap: inject LIMIT max_rows, or clamp a larger constant.
	if a := s.LimitCount.GetAConst(); a != nil && a.Isnull {
		s.LimitCount = nil // LIMIT ALL / LIMIT NULL
	}
	if s.LimitCount != nil {
		if k, _, _ := c.limitValue(s.LimitCount); k != valueLiteral {
			c.reject(ReasonUnbounded, "")
			return
		}
	}
	s.LimitCount = pg.MakeAConstIntNode(max, -1)
	if s.LimitOption != pg.LimitOption_LIMIT_OPTION_COUNT {
		s.LimitOption = pg.LimitOption_LIMIT_OPTION_COUNT
	}
	c.modified = true
}
