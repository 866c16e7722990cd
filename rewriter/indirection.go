package rewriter

import (
	"slices"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Indirection: schema code that runs on behalf of a statement without being
// named in it as a relation — user functions and procedures, the functions
// behind user operators and casts, triggers, column defaults and rules.
//
// The rule: a user routine (a catalog Function in a language other than
// internal or c) may run for an ordinary role only when tenantguard can read
// it and proves that it reads no tenant data and runs no SQL given as a
// string, or when the role's policy lists it under functions. Only language
// sql bodies can be read: they are parsed with the real parser and every
// relation, function, operator, cast and write target in them is checked,
// recursively. Procedural languages (plpgsql, plpython, ...) are refused
// unless listed: tenantguard cannot see the SQL they run.

// maxRoutineDepth bounds the call chains followed through SQL bodies.
const maxRoutineDepth = 16

// funcRef names a called function: schema is empty when unqualified.
type funcRef struct{ schema, name string }

func refOfKey(k string) funcRef {
	s, n := splitKey(k)
	return funcRef{schema: s, name: n}
}

// routineInfo is what tenantguard knows of one catalog function.
type routineInfo struct {
	// opaque is true for a language whose body tenantguard cannot read.
	opaque bool
	// bad is non-empty when the body itself is refused (a tenant relation,
	// an unknown relation, a denied function, a rule, a body that does
	// not parse, a statement other than a query or a DML statement).
	bad string
	// calls are the functions the body runs: calls, operators, casts,
	// triggers and defaults of the relations it writes.
	calls []funcRef
}

// routineIndex holds the analysed functions and the operator, cast and
// write-target maps of the catalog. It is built once per Rewriter and
// read-only afterwards.
type routineIndex struct {
	info      map[string]*routineInfo
	operators map[string][]string
	casts     map[string][]string
	// relations by "schema.name" and by bare name (all schemas).
	relByKey  map[string]*Relation
	relByName map[string][]*Relation
}

// buildRoutines analyses every function of c. ix must be complete (tenant
// relations resolved) before it is called.
func buildRoutines(ix *relationIndex, c *Catalog) *routineIndex {
	ri := &routineIndex{info: map[string]*routineInfo{}, relByKey: map[string]*Relation{}, relByName: map[string][]*Relation{}}
	if c == nil {
		return ri
	}
	ri.operators = c.Operators
	ri.casts = c.Casts
	for k, r := range c.Relations {
		if r == nil {
			continue
		}
		ri.relByKey[k] = r
		ri.relByName[r.Name] = append(ri.relByName[r.Name], r)
	}
	for k, f := range c.Functions {
		if f == nil {
			continue
		}
		ri.info[k] = analyseRoutine(ix, ri, f)
	}
	return ri
}

func analyseRoutine(ix *relationIndex, ri *routineIndex, f *Function) *routineInfo {
	switch strings.ToLower(f.Language) {
	case "internal", "c":
		return &routineInfo{}
	case "sql":
	default:
		return &routineInfo{opaque: true}
	}
	stmts, ok := parseSQLBody(f.Body)
	if !ok {
		return &routineInfo{bad: "a body that does not parse"}
	}
	b := &bodyScan{ix: ix, ri: ri, ctes: map[string]bool{}}
	for _, s := range stmts {
		switch s.Node.(type) {
		case *pg.Node_SelectStmt, *pg.Node_InsertStmt, *pg.Node_UpdateStmt, *pg.Node_DeleteStmt,
			*pg.Node_MergeStmt, *pg.Node_ReturnStmt, *pg.Node_CallStmt:
		default:
			b.fail("a statement other than a query in the body")
		}
		walkProto(s.ProtoReflect(), b.collect)
	}
	b.resolve()
	return &routineInfo{bad: b.bad, calls: b.calls}
}

// parseSQLBody parses a SQL function body: prosrc (statements separated by
// semicolons) or a SQL-standard body (RETURN expr / BEGIN ATOMIC ... END).
func parseSQLBody(body string) ([]*pg.Node, bool) {
	if strings.TrimSpace(body) == "" {
		return nil, true
	}
	if res, err := pg.Parse(body); err == nil {
		out := make([]*pg.Node, 0, len(res.Stmts))
		for _, s := range res.Stmts {
			if s.Stmt != nil {
				out = append(out, s.Stmt)
			}
		}
		return out, true
	}
	res, err := pg.Parse("CREATE FUNCTION tenantguard_body() RETURNS void LANGUAGE sql " + body)
	if err != nil || len(res.Stmts) != 1 {
		return nil, false
	}
	cf := res.Stmts[0].Stmt.GetCreateFunctionStmt()
	if cf == nil || cf.SqlBody == nil {
		return nil, false
	}
	if l := cf.SqlBody.GetList(); l != nil {
		var out []*pg.Node
		for _, item := range l.Items {
			// BEGIN ATOMIC bodies are a list holding a list of statements.
			if inner := item.GetList(); inner != nil {
				out = append(out, inner.Items...)
			} else if item != nil {
				out = append(out, item)
			}
		}
		return out, true
	}
	return []*pg.Node{cf.SqlBody}, true
}

// bodyScan collects what one SQL body reads, calls and writes.
type bodyScan struct {
	ix     *relationIndex
	ri     *routineIndex
	ctes   map[string]bool
	rels   []*pg.RangeVar
	writes []*pg.RangeVar
	calls  []funcRef
	bad    string
}

func (b *bodyScan) fail(why string) {
	if b.bad == "" {
		b.bad = why
	}
}

func (b *bodyScan) collect(m proto.Message) {
	switch x := m.(type) {
	case *pg.CommonTableExpr:
		b.ctes[x.Ctename] = true
	case *pg.RangeVar:
		b.rels = append(b.rels, x)
	case *pg.InsertStmt:
		b.writes = append(b.writes, x.Relation)
	case *pg.UpdateStmt:
		b.writes = append(b.writes, x.Relation)
	case *pg.DeleteStmt:
		b.writes = append(b.writes, x.Relation)
	case *pg.MergeStmt:
		b.writes = append(b.writes, x.Relation)
	case *pg.FuncCall:
		schema, name := funcName(x)
		if name == "" {
			b.fail("a call it cannot name")
			return
		}
		if deniedBuiltin(name) {
			b.fail("a denied function")
			return
		}
		b.calls = append(b.calls, funcRef{schema: schema, name: name})
	default:
		for _, k := range b.ri.implicitCalls(m) {
			b.calls = append(b.calls, refOfKey(k))
		}
	}
}

// resolve checks the collected relations once every CTE name is known.
func (b *bodyScan) resolve() {
	for _, rv := range b.rels {
		if why := b.relationRefusal(rv); why != "" {
			b.fail(why)
		}
	}
	for _, rv := range b.writes {
		if rv == nil {
			continue
		}
		for _, r := range b.ri.relationsOf(rv) {
			if r.HasRules {
				b.fail("a write to a relation with rules")
			}
			for _, k := range r.Triggers {
				b.calls = append(b.calls, refOfKey(k))
			}
			for _, k := range r.Defaults {
				b.calls = append(b.calls, refOfKey(k))
			}
		}
	}
}

// relationRefusal is non-empty when a relation named in a body may hold
// tenant data or is not known.
func (b *bodyScan) relationRefusal(rv *pg.RangeVar) string {
	ix := b.ix
	if (rv.Schemaname == "" || rv.Schemaname == "pg_catalog" || rv.Schemaname == "public") && deniedRelations[rv.Relname] {
		return "a denied relation"
	}
	if ix.lookup(rv) != nil || ix.refusedView(rv) {
		return "a tenant relation"
	}
	if rv.Schemaname == "" && b.ctes[rv.Relname] {
		return ""
	}
	k := rv.Relname
	if rv.Schemaname != "" {
		k = rv.Schemaname + "." + rv.Relname
	}
	if _, ok := ix.kinds[k]; ok {
		return ""
	}
	switch {
	case rv.Schemaname == "pg_catalog", rv.Schemaname == "information_schema":
		return ""
	case rv.Schemaname == "" && strings.HasPrefix(rv.Relname, "pg_"):
		return "" // a system catalog through search_path
	}
	return "an unknown relation"
}

// relationsOf returns the catalog relations rv may name: one when
// qualified, every schema's when not (search_path decides at run time).
func (ri *routineIndex) relationsOf(rv *pg.RangeVar) []*Relation {
	if ri == nil || rv == nil {
		return nil
	}
	if rv.Schemaname != "" {
		if r := ri.relByKey[rv.Schemaname+"."+rv.Relname]; r != nil {
			return []*Relation{r}
		}
		return nil
	}
	return ri.relByName[rv.Relname]
}

// implicitCalls returns the user functions ("schema.name") that an
// expression node runs without naming them: the functions of a user
// operator (every overload: resolution is not known here) and of casts to
// a type with a user cast function.
func (ri *routineIndex) implicitCalls(m proto.Message) []string {
	if ri == nil {
		return nil
	}
	var ops []*pg.Node
	switch x := m.(type) {
	case *pg.A_Expr:
		ops = x.Name
	case *pg.SubLink:
		ops = x.OperName
	case *pg.SortBy:
		ops = x.UseOp
	case *pg.TypeCast:
		if x.TypeName != nil && len(x.TypeName.Names) > 0 && len(ri.casts) > 0 {
			if s := x.TypeName.Names[len(x.TypeName.Names)-1].GetString_(); s != nil {
				return ri.casts[s.Sval]
			}
		}
		return nil
	default:
		return nil
	}
	if len(ops) == 0 || len(ri.operators) == 0 {
		return nil
	}
	if len(ops) == 2 {
		if s := ops[0].GetString_(); s != nil && s.Sval == "pg_catalog" {
			return nil
		}
	}
	if s := ops[len(ops)-1].GetString_(); s != nil {
		return ri.operators[s.Sval]
	}
	return nil
}

// attributeCalls checks the user functions that attribute notation may call:
// PostgreSQL reads c.f, where f is not a column of c, as f(c), and (x).f as
// f(x), with no function call in the statement's text. A name that is a
// column of the relation c stands for (in any FROM of the statement, or the
// relation a cast names) is a column; otherwise every user function of
// that name is checked as if called.
func (c *stmtCtx) attributeCalls(m proto.Message) {
	var quals, fields []string // pairs: qualifier ("" unknown), field
	switch x := m.(type) {
	case *pg.ColumnRef:
		if n := len(x.Fields); n >= 2 {
			q, f := x.Fields[n-2].GetString_(), x.Fields[n-1].GetString_()
			if q != nil && f != nil {
				quals, fields = append(quals, q.Sval), append(fields, f.Sval)
			}
		}
	case *pg.A_Indirection:
		q := ""
		if cr := x.Arg.GetColumnRef(); cr != nil && len(cr.Fields) == 1 {
			if s := cr.Fields[0].GetString_(); s != nil {
				q = s.Sval
			}
		} else if tc := x.Arg.GetTypeCast(); tc != nil && tc.TypeName != nil && len(tc.TypeName.Names) > 0 {
			if s := tc.TypeName.Names[len(tc.TypeName.Names)-1].GetString_(); s != nil {
				q = "::" + s.Sval
			}
		}
		for _, ind := range x.Indirection {
			if s := ind.GetString_(); s != nil {
				quals, fields = append(quals, q), append(fields, s.Sval)
				q = "" // a field of a field: its type is not known here
			}
		}
	}
	ix := c.r.rels
	for i, f := range fields {
		if c.roleAllowsFunction("", f) || systemColumns[f] {
			continue
		}
		fns := ix.functionsNamed("", f)
		// No function of that name and a column name the catalog knows:
		// a column (the common case, decided without resolving c).
		late := len(fns) == 0 && ix.complete && !c.role.AllowDDL && !ix.columnNames[f]
		if len(fns) == 0 && !late {
			continue
		}
		column, known := c.isColumnOf(quals[i], f)
		if column {
			continue
		}
		if late {
			// Not a column of a relation whose columns the catalog
			// knows, and no function of that name: the server calls a
			// function created since the catalog was loaded, or fails.
			if known {
				// Most often a mistyped column: say so, not only
				// "function" (PostgreSQL would say the column does not
				// exist when no function of that name exists either).
				c.reject(ReasonUnknownFunction, "column or function "+f)
				return
			}
			continue
		}
		rc := c.routineCheck()
		for _, fn := range fns {
			if !rc.function(fn, 0) {
				c.reject(ReasonDeniedFunction, fn.Schema+"."+fn.Name)
				return
			}
		}
	}
}

// systemColumns every table has (the catalog lists only user columns).
var systemColumns = map[string]bool{"tableoid": true, "ctid": true, "xmin": true, "xmax": true, "cmin": true, "cmax": true}

// isColumnOf reports whether f is a column of what qualifier q stands for
// (a relation of the statement with that alias or name, or, "::t", the
// relation whose row type a cast names), and whether the catalog knows the
// columns of what q stands for at all.
func (c *stmtCtx) isColumnOf(q, f string) (column, known bool) {
	if q == "" {
		return false, false
	}
	ix := c.r.rels
	if t, ok := strings.CutPrefix(q, "::"); ok {
		cols := ix.columns[t]
		return slices.Contains(cols, f), len(cols) > 0
	}
	if c.byAlias == nil {
		c.byAlias = map[string][]*pg.RangeVar{}
		if c.root != nil {
			walkProto(c.root.ProtoReflect(), func(m proto.Message) {
				if rv, ok := m.(*pg.RangeVar); ok {
					name := rv.Relname
					if rv.Alias != nil && rv.Alias.Aliasname != "" {
						name = rv.Alias.Aliasname
					}
					c.byAlias[name] = append(c.byAlias[name], rv)
				}
			})
		}
	}
	for _, rv := range c.byAlias[q] {
		cols := ix.columnsOf(rv)
		if slices.Contains(cols, f) {
			return true, true
		}
		known = known || len(cols) > 0
	}
	return false, known
}

// unknownOperator returns the symbol of an operator that a complete catalog
// lists neither as a builtin nor as a user operator ("" otherwise): one
// created since the catalog was loaded, whose function could not be checked.
// Names qualified with pg_catalog are builtins (or errors upstream).
func (ix *relationIndex) unknownOperator(m proto.Message) string {
	if !ix.complete || ix.systemOps == nil {
		return ""
	}
	var ops []*pg.Node
	switch x := m.(type) {
	case *pg.A_Expr:
		switch x.Kind {
		case pg.A_Expr_Kind_AEXPR_OP, pg.A_Expr_Kind_AEXPR_OP_ANY, pg.A_Expr_Kind_AEXPR_OP_ALL:
			ops = x.Name
		}
	case *pg.SubLink:
		ops = x.OperName
	case *pg.SortBy:
		ops = x.UseOp
	}
	if len(ops) == 0 {
		return ""
	}
	if len(ops) == 2 {
		if s := ops[0].GetString_(); s != nil && s.Sval == "pg_catalog" {
			return ""
		}
	}
	s := ops[len(ops)-1].GetString_()
	if s == nil {
		return ""
	}
	if ix.systemOps[s.Sval] || (ix.routines != nil && len(ix.routines.operators[s.Sval]) > 0) {
		return ""
	}
	return s.Sval
}

// walkProto calls fn on m and on every message below it.
func walkProto(m protoreflect.Message, fn func(proto.Message)) {
	if !m.IsValid() {
		return
	}
	fn(m.Interface())
	eachChild(m, func(c proto.Message) { walkProto(c.ProtoReflect(), fn) })
}

// eachChild calls fn on every message directly below m (list elements one by
// one; maps and scalars skipped).
func eachChild(m protoreflect.Message, fn func(proto.Message)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				fn(l.Get(i).Message().Interface())
			}
			return true
		}
		fn(v.Message().Interface())
		return true
	})
}

// functionsNamed returns the catalog functions a call of schema.name may
// run: every schema's when unqualified (pg_catalog excepted: builtins stay
// builtins).
func (ix *relationIndex) functionsNamed(schema, name string) []*Function {
	if schema != "" {
		if f := ix.funcByKey[schema+"."+name]; f != nil {
			return []*Function{f}
		}
		return nil
	}
	var out []*Function
	for _, f := range ix.funcs[name] {
		if f.Schema != "pg_catalog" {
			out = append(out, f)
		}
	}
	return out
}

// routineCheck decides routines for one statement: allow is the role's
// functions list (nil for none).
type routineCheck struct {
	ix       *relationIndex
	allow    func(schema, name string) bool
	visiting map[string]bool
	safe     map[string]bool
}

func newRoutineCheck(ix *relationIndex, allow func(schema, name string) bool) *routineCheck {
	return &routineCheck{ix: ix, allow: allow, visiting: map[string]bool{}, safe: map[string]bool{}}
}

func (rc *routineCheck) allowed(schema, name string) bool {
	return rc.allow != nil && rc.allow(schema, name)
}

// function is true when f may run.
func (rc *routineCheck) function(f *Function, depth int) bool {
	if rc.allowed(f.Schema, f.Name) {
		return true
	}
	k := f.Schema + "." + f.Name
	if rc.safe[k] {
		return true
	}
	if rc.visiting[k] || depth > maxRoutineDepth {
		return false // recursion cannot be proven to end safely
	}
	var info *routineInfo
	if rc.ix.routines != nil {
		info = rc.ix.routines.info[k]
	}
	if info == nil {
		info = analyseRoutine(rc.ix, rc.ix.routines, f)
	}
	if info.opaque || info.bad != "" {
		return false
	}
	rc.visiting[k] = true
	defer delete(rc.visiting, k)
	for _, ref := range info.calls {
		if !rc.call(ref, depth+1) {
			return false
		}
	}
	rc.safe[k] = true
	return true
}

// call is true when a call of ref may run.
func (rc *routineCheck) call(ref funcRef, depth int) bool {
	if rc.allowed(ref.schema, ref.name) {
		return true
	}
	if deniedBuiltin(ref.name) {
		return false
	}
	fns := rc.ix.functionsNamed(ref.schema, ref.name)
	if len(fns) == 0 {
		// A builtin, or a function of a schema the catalog does not
		// cover: only the former is vouched for.
		return ref.schema == "" || ref.schema == "pg_catalog"
	}
	for _, f := range fns {
		if !rc.function(f, depth) {
			return false
		}
	}
	return true
}

// ---- statement-level hooks (called from the engine) ----

func (c *stmtCtx) routineCheck() *routineCheck {
	return newRoutineCheck(c.r.rels, c.roleAllowsFunction)
}

// indirection checks an expression node that runs user functions without
// naming them: operators and casts.
func (c *stmtCtx) indirection(m proto.Message) {
	c.attributeCalls(m)
	if op := c.r.rels.unknownOperator(m); op != "" && !c.role.AllowDDL {
		c.reject(ReasonUnknownFunction, "operator "+op)
		return
	}
	keys := c.r.rels.routines.implicitCalls(m)
	if len(keys) == 0 {
		return
	}
	rc := c.routineCheck()
	for _, k := range keys {
		if !rc.call(refOfKey(k), 0) {
			c.reject(ReasonDeniedFunction, k)
			return
		}
	}
}

// writeTarget checks the code a write to rv runs implicitly: its triggers,
// the functions of its column defaults (when defaults may be evaluated) and
// its rules.
func (c *stmtCtx) writeTarget(rv *pg.RangeVar, defaults bool) {
	rels := c.r.rels.routines.relationsOf(rv)
	if len(rels) == 0 {
		return
	}
	rc := c.routineCheck()
	for _, r := range rels {
		if r.HasRules {
			c.reject(ReasonUnsupported, "cannot prove a rule safe on "+r.Schema+"."+r.Name)
			return
		}
		keys := r.Triggers
		if defaults {
			keys = append(append([]string(nil), keys...), r.Defaults...)
		}
		for _, k := range keys {
			if !rc.call(refOfKey(k), 0) {
				c.reject(ReasonDeniedFunction, k)
				return
			}
		}
	}
}
