package rewriter

import (
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The prepared form of a simple-protocol statement. A statement the literal
// path serves (literal.go) has a template whose text holds parameters
// $1..$n where the statement has literals: the proxy can prepare that text
// upstream once per session and then send each statement of that shape as
// a Bind of the literals, so that PostgreSQL skips its parse and analysis
// (and, with a generic plan, its planning) as it does for an application's
// own prepared statements.
//
// A literal and a parameter are not the same thing everywhere, so a
// template has a prepared form only where they are:
//   - parameters only where values go: not in ORDER BY, GROUP BY, DISTINCT
//     ON (where an integer literal is a column position), not in window or
//     aggregate orderings, type modifiers or ON CONFLICT inference (which
//     PostgreSQL requires to be constants or to match an index exactly);
//   - SELECT (without INTO), INSERT, UPDATE and DELETE only, without a
//     star (SELECT *, RETURNING *), whose columns change with the table's;
//   - no expression of parameters and constants alone, which PostgreSQL
//     folds when it plans the text but not in a generic plan
//     (constantParams), and no identifier PostgreSQL truncates (with a
//     NOTICE each time it parses the text);
//   - each parameter typed as PostgreSQL types the literal (an integer as
//     integer, bigint or numeric by its value, a decimal as numeric, a
//     string as unknown, resolved from its context as the literal is).
//
// Whatever else could differ (a string literal where PostgreSQL cannot
// infer a parameter's type, such as an argument of json_build_object) makes
// the Parse fail: the proxy prepares a form on the side, before the client's
// statement and outside any transaction block, and uses it only once that
// succeeded.

// PreparedForm is a literal template's prepared form.
type PreparedForm struct {
	segments []string   // the form's text split at its parameters
	slots    []int      // slots[i]: the parameter after segments[i]
	litSegs  [][]string // segments split at the tenant setting expression, or nil
}

// maxUpstreamArgs bounds the literals of a statement sent in its prepared
// form: their types are packed two bits each in UpstreamCall.Sig.
const maxUpstreamArgs = 32

// Parameter type codes of UpstreamCall.Sig, and their OIDs.
const (
	argInt4 = iota
	argInt8
	argNumeric
	argUnknown
)

var argOIDs = [4]uint32{argInt4: 23, argInt8: 20, argNumeric: 1700, argUnknown: 0}

// UpstreamCall is a statement's prepared form with its literals as
// parameter values (Decision.Upstream).
type UpstreamCall struct {
	Form *PreparedForm
	// TenantLit is the tenant written into the form's text ("" when it
	// reads the tenant setting).
	TenantLit string
	// Sig packs the parameter types, two bits each: statements of one form
	// with other literal types need another prepared statement.
	Sig uint64
	// Args are the parameter values, in text format.
	Args []string
}

// SQL is the text to prepare.
func (u *UpstreamCall) SQL() string {
	var b strings.Builder
	u.Form.write(&b, u.TenantLit, func(k int) (string, bool) { return "$" + strconv.Itoa(k), true })
	return b.String()
}

// ParamOIDs are the parameter types to prepare it with.
func (u *UpstreamCall) ParamOIDs() []uint32 {
	oids := make([]uint32, len(u.Args))
	for i := range oids {
		oids[i] = argOIDs[(u.Sig>>(2*i))&3]
	}
	return oids
}

// write writes the form with arg(k) for each parameter k and tenantLit for
// each tenant setting expression ("" keeps the expression). It reports
// false when arg does.
func (f *PreparedForm) write(b *strings.Builder, tenantLit string, arg func(k int) (string, bool)) bool {
	for i, seg := range f.segments {
		if tenantLit != "" && f.litSegs != nil {
			for j, part := range f.litSegs[i] {
				if j > 0 {
					b.WriteString(tenantLit)
				}
				b.WriteString(part)
			}
		} else {
			b.WriteString(seg)
		}
		if i < len(f.slots) {
			v, ok := arg(f.slots[i])
			if !ok {
				return false
			}
			b.WriteString(v)
		}
	}
	return true
}

// preparable reports whether a template of kind whose abstract text is sql
// has a prepared form: every parameter stands for its literal. number(k)
// says whether parameter k stands for a number (else a string).
func preparable(kind, sql string, number func(k int) bool) bool {
	switch kind {
	case KindSelect, KindInsert, KindUpdate, KindDelete:
	default:
		return false
	}
	tree, err := pg.Parse(sql)
	if err != nil || len(tree.Stmts) != 1 {
		return false
	}
	switch tree.Stmts[0].Stmt.Node.(type) {
	case *pg.Node_SelectStmt, *pg.Node_InsertStmt, *pg.Node_UpdateStmt, *pg.Node_DeleteStmt:
	default:
		return false
	}
	sc, err := pg.Scan(sql)
	if err != nil {
		return false
	}
	for _, t := range sc.Tokens {
		// PostgreSQL truncates a longer identifier with a NOTICE when it
		// parses the text; a prepared form is parsed once.
		if t.Token == pg.Token_IDENT && t.End-t.Start > maxIdentifier {
			return false
		}
	}
	root := tree.Stmts[0].Stmt.ProtoReflect()
	if !paramsAsValues(root, false) {
		return false
	}
	_, _, ok := constantParams(root, number)
	return ok
}

// maxIdentifier is PostgreSQL's longest identifier (NAMEDATALEN - 1).
const maxIdentifier = 63

// paramsAsValues reports whether every parameter below m stands where a
// value goes (forbidden: m is in a clause where it may not).
func paramsAsValues(m protoreflect.Message, forbidden bool) bool {
	if !m.IsValid() {
		return true
	}
	switch m.Interface().(type) {
	case *pg.ParamRef:
		return !forbidden
	case *pg.IntoClause:
		return false // SELECT INTO creates a table
	case *pg.A_Star:
		// The columns of a prepared statement's result are fixed: once a
		// table gains a column, PostgreSQL fails it with "cached plan must
		// not change result type" where the text would return the column.
		return false
	case *pg.TypeName, *pg.WindowDef, *pg.InferClause:
		forbidden = true
	}
	ok := true
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
			return true
		}
		f := forbidden
		switch fd.Name() {
		case "sort_clause", "group_clause", "distinct_clause", "window_clause", "agg_order":
			f = true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len() && ok; i++ {
				ok = paramsAsValues(l.Get(i).Message(), f)
			}
		} else {
			ok = paramsAsValues(v.Message(), f)
		}
		return ok
	})
	return ok
}

// constantParams reports whether no expression below m computes from
// parameters and constants alone (ok), and whether m holds a parameter and
// something that is not a constant (a column, a subquery, a function
// without arguments such as now()). PostgreSQL folds an expression of
// constants when it plans a statement, so the text of `10 / 0` fails even
// when no row is read; a prepared statement's generic plan keeps
// `10 / $1` for the rows it reads, and would not. A parameter alone, cast
// (its value is converted at Bind), in a list or in an ARRAY or ROW of
// such is no expression of its own.
func constantParams(m protoreflect.Message, number func(k int) bool) (param, variable, ok bool) {
	if !m.IsValid() {
		return false, false, true
	}
	node := m.Interface()
	switch x := node.(type) {
	case *pg.ParamRef:
		return true, false, true
	case *pg.ColumnRef, *pg.SQLValueFunction:
		return false, true, true
	case *pg.TypeCast:
		// A string's parameter takes the cast's type and is converted at
		// Bind; a number's is converted by the cast, which the text folds
		// (40000::smallint fails when planned).
		if p := x.Arg.GetParamRef(); p != nil && !number(int(p.Number)) {
			return true, false, true
		}
	case *pg.FuncCall:
		if schema, name := funcName(x); len(x.Args) == 0 && (schema == "" || schema == "pg_catalog") && volatileNoArgs[name] {
			return false, true, true
		}
	case *pg.A_ArrayExpr:
		if onlyParamsAndConstants(x.Elements, number) {
			return true, false, true
		}
	case *pg.RowExpr:
		if onlyParamsAndConstants(x.Args, number) {
			return true, false, true
		}
	}
	ok = true
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
			return true
		}
		visit := func(c protoreflect.Message) {
			p, vr, o := constantParams(c, number)
			param, variable, ok = param || p, variable || vr, ok && o
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len() && ok; i++ {
				visit(l.Get(i).Message())
			}
		} else {
			visit(v.Message())
		}
		return ok
	})
	if !ok {
		return param, variable, false
	}
	switch node.(type) {
	case *pg.SubLink:
		// Its subquery's expressions were checked; it is no constant.
		return param, true, true
	case *pg.A_Expr, *pg.FuncCall, *pg.TypeCast, *pg.A_ArrayExpr, *pg.RowExpr, *pg.BoolExpr, *pg.CaseExpr,
		*pg.CoalesceExpr, *pg.MinMaxExpr, *pg.NullTest, *pg.BooleanTest, *pg.A_Indirection, *pg.CollateClause,
		*pg.XmlExpr, *pg.XmlSerialize:
		if param && !variable {
			return param, variable, false
		}
	}
	return param, variable, true
}

// onlyParamsAndConstants reports whether every node is a parameter, a
// string's parameter cast, or a constant.
func onlyParamsAndConstants(nodes []*pg.Node, number func(k int) bool) bool {
	for _, n := range nodes {
		if n.GetParamRef() != nil || n.GetAConst() != nil {
			continue
		}
		if p := n.GetTypeCast().GetArg().GetParamRef(); p != nil && !number(int(p.Number)) {
			continue
		}
		return false
	}
	return true
}

// volatileNoArgs are the builtin functions without arguments that are not
// immutable, so not folded when PostgreSQL plans a statement (pi() is).
var volatileNoArgs = map[string]bool{
	"now": true, "clock_timestamp": true, "statement_timestamp": true, "transaction_timestamp": true,
	"timeofday": true, "random": true, "gen_random_uuid": true, "pg_backend_pid": true,
	"txid_current": true, "pg_current_xact_id": true, "inet_client_addr": true, "inet_client_port": true,
	"inet_server_addr": true, "inet_server_port": true, "pg_postmaster_start_time": true,
	"pg_conf_load_time": true, "current_database": true, "current_schema": true, "version": true,
}

// upstreamArgs types and unquotes the literals of sql for its prepared
// form, or reports false when one has no parameter type that PostgreSQL
// would give the literal. The values are appended to dst.
func upstreamArgs(dst []string, sql string, lits []literalSpan) (sig uint64, args []string, ok bool) {
	if len(lits) > maxUpstreamArgs {
		return 0, nil, false
	}
	args = dst
	for i, l := range lits {
		v := sql[l.start:l.end]
		code := argUnknown
		switch {
		case v[0] == '\'':
			v = v[1 : len(v)-1]
			if strings.Contains(v, "''") {
				v = strings.ReplaceAll(v, "''", "'")
			}
		case strings.IndexAny(v, ".eE") >= 0:
			code = argNumeric
		default:
			// PostgreSQL types an integer literal by its value. Its two
			// boundary values are typed one way alone and another after a
			// minus sign (-2147483648 is an integer), which a parameter
			// cannot follow.
			n, err := strconv.ParseInt(v, 10, 64)
			switch {
			case err != nil:
				if v = strings.TrimLeft(v, "0"); v == "9223372036854775808" {
					return 0, nil, false
				}
				code = argNumeric
			case n == 1<<31:
				return 0, nil, false
			case n < 1<<31:
				code = argInt4
			default:
				code = argInt8
			}
			v = sql[l.start:l.end]
		}
		sig |= uint64(code) << (2 * i)
		args = append(args, v)
	}
	return sig, args, true
}
