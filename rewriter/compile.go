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

// queryTemplate is the cached, tenant-independent decision of a query string.
type queryTemplate struct {
	stmts []*stmtTemplate
}

// stmtTemplate is the decision of one statement before the tenant is known.
// It never holds a session's tenant: the SQL is split at the places the
// tenant goes, and tenant-dependent conditions are kept as checks.
type stmtTemplate struct {
	d        Decision // Kind, Relations, Verdict, Reason, Error, Fingerprint, Normalized, params, effects
	orig     string   // original statement text
	segments []string // rewritten SQL split at tenant placeholders (simple protocol)
	// tenantParam is set in the extended protocol when the SQL references
	// the appended tenant parameter.
	needsTenant bool
	checks      []literalCheck
	bypassable  bool // false for parse errors: refused even for bypass roles
	// settingExprs is the number of setting expressions the rewrite
	// injected (WithTenantSetting), when all of them may become literals;
	// litSegs is the SQL split at them (Session.TenantLiteral).
	settingExprs int
	litSegs      []string
}

// compile decides a query string without a tenant.
func (r *Rewriter) compile(sql string, extended bool, role policy.Role) (qt *queryTemplate) {
	tree, err := pg.Parse(sql)
	if err != nil {
		return &queryTemplate{stmts: []*stmtTemplate{r.rejected(KindUtility, ReasonParseError, "", sql)}}
	}
	if extended && len(tree.Stmts) > 1 {
		return &queryTemplate{stmts: []*stmtTemplate{r.rejected(KindUtility, ReasonMultipleStatement, "", sql)}}
	}
	qt = &queryTemplate{}
	for _, raw := range tree.Stmts {
		text := stmtText(sql, raw)
		qt.stmts = append(qt.stmts, r.compileStmt(tree.Version, raw, text, extended, role))
	}
	return qt
}

func stmtText(sql string, raw *pg.RawStmt) string {
	start := int(raw.StmtLocation)
	end := len(sql)
	if raw.StmtLen > 0 {
		end = start + int(raw.StmtLen)
	}
	if start < 0 || start > len(sql) || end > len(sql) || end < start {
		return trimSQLSpace(sql)
	}
	return trimSQLSpace(sql[start:end])
}

// trimSQLSpace trims what the SQL scanner reads as whitespace, and only
// that: strings.TrimSpace also trims Unicode spaces such as U+00A0, which
// PostgreSQL reads as part of an identifier (`patients<U+00A0>` is another
// table than `patients`).
func trimSQLSpace(s string) string {
	return strings.Trim(s, " \t\n\r\f\v")
}

func (r *Rewriter) rejected(kind, reason, subject, text string) *stmtTemplate {
	st := &stmtTemplate{orig: text}
	st.d = Decision{Kind: kind, Verdict: VerdictRejected, Reason: reason, Error: rejection(reason, subject, r.pol)}
	if reason != ReasonParseError && reason != ReasonMultipleStatement {
		st.d.Fingerprint, st.d.Normalized = auditForms(text)
		st.bypassable = true
	}
	return st
}

// compileStmt decides one statement. A panic in the engine is a bug; it is
// turned into a rejection (fail closed), never into a pass-through.
func (r *Rewriter) compileStmt(version int32, raw *pg.RawStmt, text string, extended bool, role policy.Role) (st *stmtTemplate) {
	c := newStmtCtx(r, role, extended, maxParamOf(text, raw.Stmt)+1)
	kind := KindUtility
	defer func() {
		if p := recover(); p != nil {
			st = r.rejected(kind, ReasonInternal, "", text)
		}
	}()
	st = &stmtTemplate{orig: text, bypassable: true}
	c.root = raw.Stmt
	kind = c.statement(raw.Stmt, st)
	st.d.Prepared = preparedOp(raw.Stmt)
	st.d.Kind = kind
	st.d.Relations = c.relations
	st.d.Fingerprint, st.d.Normalized = auditForms(text)
	if c.rejReason != "" {
		st.d.Verdict, st.d.Reason = VerdictRejected, c.rejReason
		st.d.Error = rejection(c.rejReason, c.rejSubject, r.pol)
		st.d.TenantEffect = nil
		return st
	}
	st.needsTenant = c.needsTenant
	st.d.DependsOnTenant = c.needsTenant
	st.checks = c.checks
	st.d.VerifyParams = c.verifyParams
	st.d.LimitParams = c.limitParams
	st.d.ArrayParams = c.arrayParams
	st.d.OffsetParams = c.offsetParams
	if len(c.offsetParams) > 0 {
		st.d.MaxOffset = r.maxOffset
	}
	if len(c.limitParams) > 0 || len(c.arrayParams) > 0 || c.rowGuard {
		st.d.MaxRows = r.pol.Limits.MaxRows
	}
	st.d.RowGuard = c.rowGuard
	if st.d.Verdict == "" {
		st.d.Verdict = VerdictAllowed
		if c.modified {
			st.d.Verdict = VerdictRewritten
		}
	}
	if st.d.Reason == "" {
		st.d.Reason = ReasonNoTenantRelation
		if len(c.relations) > 0 {
			st.d.Reason = ReasonScoped
		}
	}
	if !c.modified {
		st.segments = []string{text}
		return st
	}
	out, err := pg.Deparse(&pg.ParseResult{Version: version, Stmts: []*pg.RawStmt{{Stmt: raw.Stmt}}})
	if err != nil {
		// the deparser cannot print every tree the parser builds
		return r.rejected(kind, ReasonUnsupported, "statement that does not survive rewriting", text)
	}
	// The deparser is a second printer of SQL: what it prints must read back
	// as exactly one statement, or the statement is refused.
	if back, err := pg.Parse(out); err != nil || len(back.Stmts) != 1 {
		return r.rejected(kind, ReasonUnsupported, "statement that does not survive rewriting", text)
	}
	if c.placeholders > 0 {
		if extended {
			st.d.TenantParam = int(c.sentinel)
			st.d.TenantType = string(r.pol.Tenant.Type)
			st.segments = []string{out}
		} else {
			segs, ok := splitAtParam(out, c.sentinel, c.placeholders)
			if !ok {
				return r.rejected(kind, ReasonInternal, "", text)
			}
			st.segments = segs
		}
	} else {
		st.segments = []string{out}
	}
	// Only a statement that runs once, now, may take the literal: a cursor
	// runs its query at FETCH, possibly after a tenant switch, and a view,
	// materialized view or rule stores its query for later runs under any
	// tenant. They keep the expression, read when they run (as RLS would).
	if r.tenantSetting && c.settingExprs > 0 && !c.dynamicSetting && runsNow(raw.Stmt) {
		st.settingExprs = c.settingExprs
		if r.settingText != "" {
			// Exactly the injected expressions, or none: an identical text
			// written by the user (or in a quoted identifier) makes the
			// count differ and the statement keeps the expression.
			if parts := strings.Split(out, r.settingText); len(parts)-1 == c.settingExprs {
				st.litSegs = parts
			}
		}
	}
	return st
}

// preparedOp returns what stmt does to SQL-level prepared statements.
func preparedOp(stmt *pg.Node) *PreparedOp {
	switch x := stmt.Node.(type) {
	case *pg.Node_PrepareStmt:
		return &PreparedOp{Op: "prepare", Name: x.PrepareStmt.Name}
	case *pg.Node_ExecuteStmt:
		return &PreparedOp{Op: "execute", Name: x.ExecuteStmt.Name}
	case *pg.Node_ExplainStmt:
		// EXPLAIN EXECUTE, and EXPLAIN CREATE TABLE AS EXECUTE (found in
		// review: it ran a name the EXECUTE check never saw).
		if x.ExplainStmt.Query != nil && x.ExplainStmt.Query.GetCreateTableAsStmt() != nil {
			return preparedOp(x.ExplainStmt.Query)
		}
		if e := x.ExplainStmt.Query.GetExecuteStmt(); e != nil {
			return &PreparedOp{Op: "execute", Name: e.Name}
		}
	case *pg.Node_CreateTableAsStmt:
		if e := x.CreateTableAsStmt.Query.GetExecuteStmt(); e != nil {
			return &PreparedOp{Op: "execute", Name: e.Name}
		}
	case *pg.Node_DeallocateStmt:
		if x.DeallocateStmt.Isall {
			return &PreparedOp{Op: "deallocate"}
		}
		return &PreparedOp{Op: "deallocate", Name: x.DeallocateStmt.Name}
	case *pg.Node_DiscardStmt:
		if x.DiscardStmt.Target == pg.DiscardMode_DISCARD_ALL {
			return &PreparedOp{Op: "deallocate"}
		}
	}
	return nil
}

// runsNow reports whether stmt is a query that runs when it is sent and is
// not kept for later: SELECT, INSERT, UPDATE, DELETE, MERGE, COPY, or EXPLAIN
// of one of them.
func runsNow(stmt *pg.Node) bool {
	if e := stmt.GetExplainStmt(); e != nil {
		stmt = e.Query
	}
	switch stmt.GetNode().(type) {
	case *pg.Node_SelectStmt, *pg.Node_InsertStmt, *pg.Node_UpdateStmt, *pg.Node_DeleteStmt,
		*pg.Node_MergeStmt, *pg.Node_CopyStmt:
		return true
	}
	return false
}

// splitAtParam splits deparsed SQL at the tenant placeholder $n, found with
// the real scanner so that a "$n" inside a string literal or comment is never
// taken for it.
func splitAtParam(sql string, n int32, want int) ([]string, bool) {
	sc, err := pg.Scan(sql)
	if err != nil {
		return nil, false
	}
	tok := "$" + strconv.Itoa(int(n))
	var segs []string
	last := 0
	for _, t := range sc.Tokens {
		if t.Token == pg.Token_PARAM && sql[t.Start:t.End] == tok {
			segs = append(segs, sql[last:t.Start])
			last = int(t.End)
		}
	}
	segs = append(segs, sql[last:])
	return segs, len(segs) == want+1
}

// maxParamOf is the highest $n of a statement, from the scanner's PARAM
// tokens of its text (a "$n" inside a literal or comment is no token); the
// tree walk is the fallback.
func maxParamOf(text string, n *pg.Node) int32 {
	sc, err := pg.Scan(text)
	if err != nil {
		return maxParam(n)
	}
	var max int32
	for _, t := range sc.Tokens {
		if t.Token != pg.Token_PARAM {
			continue
		}
		v, err := strconv.ParseInt(text[t.Start+1:t.End], 10, 32)
		if err != nil {
			return maxParam(n)
		}
		if int32(v) > max {
			max = int32(v)
		}
	}
	return max
}

// maxParam is the highest $n in the statement's tree.
func maxParam(n *pg.Node) int32 {
	var max int32
	if n != nil {
		walkProto(n.ProtoReflect(), func(m proto.Message) {
			if p, ok := m.(*pg.ParamRef); ok && p.Number > max {
				max = p.Number
			}
		})
	}
	return max
}

// auditForms returns the fingerprint and the literal-free form of a
// statement. Constants pg_query's normalizer leaves (utility statements) and
// comments are removed too: the normalized text goes to audit logs.
func auditForms(text string) (string, string) {
	fp, err := pg.Fingerprint(text)
	if err != nil {
		fp = ""
	}
	norm, err := pg.Normalize(text)
	if err != nil {
		return fp, ""
	}
	sc, err := pg.Scan(norm)
	if err != nil {
		return fp, ""
	}
	var b strings.Builder
	last := 0
	for _, t := range sc.Tokens {
		switch t.Token {
		case pg.Token_SQL_COMMENT, pg.Token_C_COMMENT:
			b.WriteString(norm[last:t.Start])
			last = int(t.End)
		case pg.Token_SCONST, pg.Token_ICONST, pg.Token_FCONST, pg.Token_BCONST, pg.Token_XCONST, pg.Token_USCONST:
			b.WriteString(norm[last:t.Start])
			b.WriteString("?")
			last = int(t.End)
		}
	}
	b.WriteString(norm[last:])
	return fp, strings.Join(strings.Fields(b.String()), " ")
}

// ---- statements ----

// statement dispatches on the statement type and returns its kind.
func (c *stmtCtx) statement(n *pg.Node, st *stmtTemplate) string {
	switch x := n.Node.(type) {
	case *pg.Node_SelectStmt:
		s := x.SelectStmt
		if s.IntoClause != nil {
			if !c.role.AllowDDL {
				c.reject(ReasonDeniedStatement, "SELECT INTO")
				return KindDDL
			}
			c.scopeSelect(s)
			st.d.Reason = ReasonRoleAllowed
			return KindDDL
		}
		if eff, ok := c.setConfigStatement(s); ok {
			st.d.TenantEffect = eff
			st.d.Reason = ReasonTenantSetting
			return KindSelect
		}
		c.scopeSelect(s)
		if c.needsTenant {
			c.applyLimits(s)
		}
		return KindSelect
	case *pg.Node_InsertStmt:
		c.insertStmt(x.InsertStmt)
		return KindInsert
	case *pg.Node_UpdateStmt:
		c.updateStmt(x.UpdateStmt)
		return KindUpdate
	case *pg.Node_DeleteStmt:
		c.deleteStmt(x.DeleteStmt)
		return KindDelete
	case *pg.Node_MergeStmt:
		c.mergeStmt(x.MergeStmt)
		return KindMerge
	case *pg.Node_CopyStmt:
		c.copyStmt(x.CopyStmt, st)
		return KindCopy
	case *pg.Node_ExplainStmt:
		c.explainable(x.ExplainStmt.Query, st)
		c.rowGuard = false // the result is a plan, not rows
		return KindUtility
	case *pg.Node_PrepareStmt:
		c.dynamic = true
		c.explainable(x.PrepareStmt.Query, st)
		if s := x.PrepareStmt.Query.GetSelectStmt(); s != nil && c.needsTenant && s.IntoClause == nil {
			c.applyLimits(s)
		}
		c.rowGuard = false
		return KindUtility
	case *pg.Node_DeclareCursorStmt:
		q := x.DeclareCursorStmt.Query
		c.visit(q)
		if s := q.GetSelectStmt(); s != nil && c.needsTenant {
			c.applyLimits(s)
		}
		c.rowGuard = false // rows come with FETCH
		return KindUtility
	case *pg.Node_ExecuteStmt, *pg.Node_DeallocateStmt, *pg.Node_FetchStmt, *pg.Node_ClosePortalStmt,
		*pg.Node_VariableShowStmt, *pg.Node_ConstraintsSetStmt:
		c.walkMsg(n.ProtoReflect())
		st.d.Reason = ReasonUtility
		return KindUtility
	case *pg.Node_TransactionStmt:
		st.d.TxOp = txOp(x.TransactionStmt)
		st.d.Reason = ReasonTransaction
		return KindUtility
	case *pg.Node_VariableSetStmt:
		c.variableSet(x.VariableSetStmt, st)
		return KindUtility
	case *pg.Node_DiscardStmt:
		if x.DiscardStmt.Target == pg.DiscardMode_DISCARD_ALL {
			st.d.TenantEffect = &TenantEffect{Op: EffectDiscardAll}
			st.d.Reason = ReasonTenantSetting
		} else {
			st.d.Reason = ReasonUtility
		}
		return KindUtility
	case *pg.Node_ListenStmt:
		st.d.Notify = &Notify{Op: "listen", Channel: x.ListenStmt.Conditionname}
		st.d.Reason = ReasonUtility
		return KindUtility
	case *pg.Node_UnlistenStmt:
		st.d.Notify = &Notify{Op: "unlisten", Channel: x.UnlistenStmt.Conditionname}
		st.d.Reason = ReasonUtility
		return KindUtility
	case *pg.Node_NotifyStmt:
		st.d.Notify = &Notify{Op: "notify", Channel: x.NotifyStmt.Conditionname}
		st.d.Reason = ReasonUtility
		return KindUtility
	case *pg.Node_DoStmt:
		if !c.role.AllowDo {
			c.reject(ReasonDeniedStatement, "DO")
		}
		st.d.Reason = ReasonRoleAllowed
		return KindUtility
	case *pg.Node_CallStmt:
		c.callStmt(x.CallStmt)
		st.d.Reason = ReasonUtility
		return KindUtility
	case *pg.Node_TruncateStmt:
		c.relationsRight(x.TruncateStmt.Relations, c.role.AllowTruncate, "TRUNCATE", st)
		return KindDDL
	case *pg.Node_LockStmt:
		c.relationsRight(x.LockStmt.Relations, c.role.AllowDDL, "LOCK", st)
		return KindUtility
	case *pg.Node_CreateTableAsStmt:
		if !c.role.AllowDDL {
			c.reject(ReasonDeniedStatement, "CREATE TABLE AS")
			return KindDDL
		}
		if x.CreateTableAsStmt.Into != nil && x.CreateTableAsStmt.Into.Rel != nil {
			c.handled[x.CreateTableAsStmt.Into.Rel] = true
		}
		c.visit(x.CreateTableAsStmt.Query)
		st.d.Reason = ReasonRoleAllowed
		return KindDDL
	}
	if !c.role.AllowDDL {
		c.reject(ReasonDeniedStatement, statementName(n))
	}
	st.d.Reason = ReasonRoleAllowed
	return KindDDL
}

// statementName is the node type of a statement, e.g. "CreateStmt": an
// identifier that names no value of the statement.
func statementName(n *pg.Node) string {
	var name string
	n.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() == protoreflect.MessageKind {
			name = string(v.Message().Descriptor().Name())
		}
		return false
	})
	if name == "" {
		return "statement"
	}
	return sqlWords(n, name)
}

// stmtWords names the statements whose node name is not their SQL
// (CreateStmt is CREATE TABLE); the others read from the node name.
var stmtWords = map[string]string{
	"CreateStmt":                 "CREATE TABLE",
	"IndexStmt":                  "CREATE INDEX",
	"ViewStmt":                   "CREATE VIEW",
	"DefineStmt":                 "CREATE",
	"RenameStmt":                 "ALTER ... RENAME",
	"CompositeTypeStmt":          "CREATE TYPE",
	"CreateEnumStmt":             "CREATE TYPE",
	"CreateRangeStmt":            "CREATE TYPE",
	"AlterEnumStmt":              "ALTER TYPE",
	"CreateSeqStmt":              "CREATE SEQUENCE",
	"AlterSeqStmt":               "ALTER SEQUENCE",
	"CreatedbStmt":               "CREATE DATABASE",
	"DropdbStmt":                 "DROP DATABASE",
	"CreateTrigStmt":             "CREATE TRIGGER",
	"CreatePLangStmt":            "CREATE LANGUAGE",
	"VariableSetStmt":            "SET",
	"VariableShowStmt":           "SHOW",
	"GrantRoleStmt":              "GRANT",
	"CreateTableSpaceStmt":       "CREATE TABLESPACE",
	"DropTableSpaceStmt":         "DROP TABLESPACE",
	"CheckPointStmt":             "CHECKPOINT",
	"RefreshMatViewStmt":         "REFRESH MATERIALIZED VIEW",
	"SecLabelStmt":               "SECURITY LABEL",
	"AlterObjectSchemaStmt":      "ALTER ... SET SCHEMA",
	"AlterOwnerStmt":             "ALTER ... OWNER TO",
	"CreateOpClassStmt":          "CREATE OPERATOR CLASS",
	"CreateOpFamilyStmt":         "CREATE OPERATOR FAMILY",
	"AlterOpFamilyStmt":          "ALTER OPERATOR FAMILY",
	"CreateFdwStmt":              "CREATE FOREIGN DATA WRAPPER",
	"AlterFdwStmt":               "ALTER FOREIGN DATA WRAPPER",
	"CreateForeignServerStmt":    "CREATE SERVER",
	"AlterForeignServerStmt":     "ALTER SERVER",
	"CreateAmStmt":               "CREATE ACCESS METHOD",
	"CreateEventTrigStmt":        "CREATE EVENT TRIGGER",
	"AlterEventTrigStmt":         "ALTER EVENT TRIGGER",
	"CreateStatsStmt":            "CREATE STATISTICS",
	"AlterStatsStmt":             "ALTER STATISTICS",
	"AlterTsdictionaryStmt":      "ALTER TEXT SEARCH DICTIONARY",
	"AlterTsconfigurationStmt":   "ALTER TEXT SEARCH CONFIGURATION",
	"AlterTableSpaceOptionsStmt": "ALTER TABLESPACE",
	"AlterTableMoveAllStmt":      "ALTER ... SET TABLESPACE",
}

// sqlWords names a statement as SQL for an error message: "DROP TABLE",
// not "DropStmt".
func sqlWords(n *pg.Node, node string) string {
	if d := n.GetDropStmt(); d != nil {
		obj := strings.TrimPrefix(d.RemoveType.String(), "OBJECT_")
		return "DROP " + strings.ReplaceAll(obj, "_", " ")
	}
	if w, ok := stmtWords[node]; ok {
		return w
	}
	base := strings.TrimSuffix(node, "Stmt")
	var b strings.Builder
	for i, r := range base {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// explainable scopes the statement inside EXPLAIN or PREPARE.
func (c *stmtCtx) explainable(q *pg.Node, st *stmtTemplate) {
	switch x := q.Node.(type) {
	case *pg.Node_SelectStmt:
		if x.SelectStmt.IntoClause != nil && !c.role.AllowDDL {
			c.reject(ReasonDeniedStatement, "SELECT INTO")
			return
		}
		c.scopeSelect(x.SelectStmt)
	case *pg.Node_InsertStmt, *pg.Node_UpdateStmt, *pg.Node_DeleteStmt, *pg.Node_MergeStmt:
		c.visit(q)
	case *pg.Node_DeclareCursorStmt:
		c.visit(x.DeclareCursorStmt.Query)
	case *pg.Node_ExecuteStmt:
	case *pg.Node_CreateTableAsStmt:
		if !c.role.AllowDDL {
			c.reject(ReasonDeniedStatement, "CREATE TABLE AS")
			return
		}
		if x.CreateTableAsStmt.Into != nil && x.CreateTableAsStmt.Into.Rel != nil {
			c.handled[x.CreateTableAsStmt.Into.Rel] = true
		}
		c.visit(x.CreateTableAsStmt.Query)
	default:
		c.reject(ReasonUnsupported, "statement inside EXPLAIN or PREPARE")
	}
}

func txOp(t *pg.TransactionStmt) *TxOp {
	op := &TxOp{Chain: t.Chain}
	switch t.Kind {
	case pg.TransactionStmtKind_TRANS_STMT_BEGIN, pg.TransactionStmtKind_TRANS_STMT_START:
		op.Op = "begin"
	case pg.TransactionStmtKind_TRANS_STMT_COMMIT:
		op.Op = "commit"
	case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK:
		op.Op = "rollback"
	case pg.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
		op.Op, op.Savepoint = "savepoint", t.SavepointName
	case pg.TransactionStmtKind_TRANS_STMT_RELEASE:
		op.Op, op.Savepoint = "release", t.SavepointName
	case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
		op.Op, op.Savepoint = "rollback_to", t.SavepointName
	case pg.TransactionStmtKind_TRANS_STMT_PREPARE:
		op.Op = "prepare_transaction"
	case pg.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:
		op.Op = "commit_prepared"
	case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
		op.Op = "rollback_prepared"
	default:
		op.Op = "unknown"
	}
	return op
}

// relationsRight refuses TRUNCATE/LOCK of tenant relations unless the role
// has the right, and of relations a complete catalog does not know.
func (c *stmtCtx) relationsRight(rels []*pg.Node, allowed bool, what string, st *stmtTemplate) {
	tenant := false
	for _, n := range rels {
		if rv := n.GetRangeVar(); rv != nil {
			c.handled[rv] = true
			if allowed {
				c.checkRelation(rv)
			} else {
				c.checkScan(rv, false) // an unknown relation may be a new tenant table
			}
			if c.r.rels.lookup(rv) != nil {
				tenant = true
				if !c.relSeen[relDisplay(rv)] {
					c.relSeen[relDisplay(rv)] = true
					c.relations = append(c.relations, relDisplay(rv))
				}
			}
		}
	}
	if tenant {
		if !allowed {
			c.reject(ReasonDeniedStatement, what)
		}
		st.d.Reason = ReasonRoleAllowed
	}
}

func (c *stmtCtx) callStmt(call *pg.CallStmt) {
	f := call.Funccall
	if f == nil {
		c.reject(ReasonUnsupported, "CALL")
		return
	}
	schema, name := funcName(f)
	if c.roleAllowsFunction(schema, name) {
		c.visitList(f.Args)
		return
	}
	fn := c.r.rels.function(schema, name)
	if fn == nil {
		c.reject(ReasonDeniedFunction, strings.TrimPrefix(schema+"."+name, "."))
		return
	}
	if c.r.rels.functionReadsTenant(fn) {
		c.reject(ReasonDeniedFunction, fn.Schema+"."+fn.Name)
		return
	}
	c.visitList(f.Args)
}

// copyStmt scopes COPY.
func (c *stmtCtx) copyStmt(cp *pg.CopyStmt, st *stmtTemplate) {
	if cp.IsProgram {
		c.reject(ReasonDeniedStatement, "COPY PROGRAM")
		return
	}
	if cp.Filename != "" {
		c.reject(ReasonDeniedStatement, "COPY with a server file")
		return
	}
	if cp.Query != nil {
		c.visit(cp.Query)
		c.rowGuard = false
		return
	}
	rv := cp.Relation
	if rv == nil {
		c.reject(ReasonUnsupported, "COPY")
		return
	}
	if cp.IsFrom {
		st.d.CopyIn = true
		c.writeTarget(rv, true)
	}
	c.handled[rv] = true
	c.checkScan(rv, false)
	tr := c.r.rels.lookup(rv)
	if tr == nil {
		c.visit(cp.WhereClause)
		return
	}
	name := relDisplay(rv)
	c.addRelation(name)
	if cp.IsFrom {
		c.needsTenant = false
		if !c.role.AllowCopyFrom {
			c.reject(ReasonDeniedStatement, "COPY FROM into tenant relation "+name)
		}
		st.d.Reason = ReasonRoleAllowed
		return
	}
	if tr.Strategy == policy.StrategyVerify {
		c.reject(ReasonUnscoped, name)
		return
	}
	// COPY t TO  ->  COPY (SELECT cols FROM ONLY t WHERE t.col = T) TO, as
	// PostgreSQL itself does for a table with row-level security.
	inner := proto.Clone(rv).(*pg.RangeVar)
	// COPY of an inheritance parent copies the parent's own rows only; a
	// partitioned table has no rows of its own, so it keeps its partitions.
	inner.Inh = c.r.rels.partitioned(rv)
	targets := []*pg.Node{}
	for _, a := range cp.Attlist {
		if s := a.GetString_(); s != nil {
			targets = append(targets, pg.MakeResTargetNodeWithVal(pg.MakeColumnRefNode([]*pg.Node{pg.MakeStrNode(s.Sval)}, -1), -1))
		}
	}
	if len(targets) == 0 {
		targets = []*pg.Node{pg.MakeResTargetNodeWithVal(pg.MakeColumnRefNode([]*pg.Node{pg.MakeAStarNode()}, -1), -1)}
	}
	sel := &pg.SelectStmt{TargetList: targets, FromClause: []*pg.Node{{Node: &pg.Node_RangeVar{RangeVar: inner}}},
		WhereClause: c.pred(qualifierOf(inner), tr.Column), Op: pg.SetOperation_SETOP_NONE, LimitOption: pg.LimitOption_LIMIT_OPTION_DEFAULT}
	c.handled[inner] = true
	c.doneSel[sel] = true
	cp.Relation = nil
	cp.Attlist = nil
	cp.Query = &pg.Node{Node: &pg.Node_SelectStmt{SelectStmt: sel}}
}

// setConfigStatement recognises `SELECT set_config('<tenant setting>', v, local)`
// as the only target of a SELECT without FROM.
func (c *stmtCtx) setConfigStatement(s *pg.SelectStmt) (*TenantEffect, bool) {
	if len(s.TargetList) != 1 || len(s.FromClause) != 0 || s.WhereClause != nil || s.Op != pg.SetOperation_SETOP_NONE ||
		s.WithClause != nil || len(s.GroupClause) != 0 || s.HavingClause != nil || s.LimitCount != nil || s.LimitOffset != nil ||
		len(s.ValuesLists) != 0 || len(s.SortClause) != 0 || len(s.DistinctClause) != 0 {
		return nil, false
	}
	rt := s.TargetList[0].GetResTarget()
	if rt == nil {
		return nil, false
	}
	f := rt.Val.GetFuncCall()
	if f == nil || len(f.Args) != 3 || f.Over != nil || f.AggStar || f.AggDistinct {
		return nil, false
	}
	if schema, name := funcName(f); name != "set_config" || (schema != "" && schema != "pg_catalog") {
		return nil, false
	}
	k, v, _ := c.tenantValue(f.Args[0])
	if k != valueLiteral || !strings.EqualFold(v, c.pol.Tenant.Setting) {
		return nil, false
	}
	eff := &TenantEffect{Op: EffectSet}
	switch lk, lv := boolConst(f.Args[2]); {
	case !lk:
		c.reject(ReasonTenantTamper, c.pol.Tenant.Setting)
		return nil, true
	default:
		eff.Local = lv
	}
	vk, val, p := c.tenantValue(f.Args[1])
	switch {
	case vk == valueLiteral:
		canon, err := CanonicalTenant(c.pol.Tenant.Type, val)
		if err != nil {
			c.reject(ReasonInvalidTenant, "")
			return nil, true
		}
		eff.Value = canon
	case vk == valueParam && c.extended:
		eff.ValueParam = p
	default:
		c.reject(ReasonTenantTamper, c.pol.Tenant.Setting)
		return nil, true
	}
	return eff, true
}

func boolConst(n *pg.Node) (bool, bool) {
	for n != nil && n.GetTypeCast() != nil {
		n = n.GetTypeCast().Arg
	}
	a := n.GetAConst()
	if a == nil || a.Isnull {
		return false, false
	}
	switch v := a.Val.(type) {
	case *pg.A_Const_Boolval:
		return true, v.Boolval.Boolval
	case *pg.A_Const_Sval:
		switch strings.ToLower(v.Sval.Sval) {
		case "t", "true", "on", "yes", "1":
			return true, true
		case "f", "false", "off", "no", "0":
			return true, false
		}
	case *pg.A_Const_Ival:
		return true, v.Ival.Ival != 0
	}
	return false, false
}

// deniedSettings change the role or how the server reads statements.
var deniedSettings = map[string]bool{
	"role": true, "session_authorization": true, "session_replication_role": true, "row_security": true,
}

// variableSet decides SET / RESET.
func (c *stmtCtx) variableSet(v *pg.VariableSetStmt, st *stmtTemplate) {
	name := strings.ToLower(v.Name)
	st.d.Reason = ReasonUtility
	if v.Kind == pg.VariableSetKind_VAR_RESET_ALL {
		st.d.TenantEffect = &TenantEffect{Op: EffectResetAll}
		st.d.Reason = ReasonTenantSetting
		return
	}
	if strings.EqualFold(v.Name, c.pol.Tenant.Setting) {
		st.d.Reason = ReasonTenantSetting
		switch v.Kind {
		case pg.VariableSetKind_VAR_RESET, pg.VariableSetKind_VAR_SET_DEFAULT:
			st.d.TenantEffect = &TenantEffect{Op: EffectReset, Local: v.IsLocal}
		case pg.VariableSetKind_VAR_SET_VALUE:
			if len(v.Args) != 1 {
				c.reject(ReasonInvalidTenant, "")
				return
			}
			k, val, _ := c.tenantValue(v.Args[0])
			if k != valueLiteral {
				c.reject(ReasonInvalidTenant, "")
				return
			}
			canon, err := CanonicalTenant(c.pol.Tenant.Type, val)
			if err != nil {
				c.reject(ReasonInvalidTenant, "")
				return
			}
			st.d.TenantEffect = &TenantEffect{Op: EffectSet, Value: canon, Local: v.IsLocal}
		default:
			c.reject(ReasonTenantTamper, c.pol.Tenant.Setting)
		}
		return
	}
	if deniedSettings[name] {
		c.reject(ReasonDeniedSetting, name)
		return
	}
	switch name {
	case "standard_conforming_strings":
		if v.Kind == pg.VariableSetKind_VAR_SET_VALUE && !settingIs(v.Args, "on", "true", "yes", "1") {
			c.reject(ReasonDeniedSetting, name)
		}
	case "client_encoding":
		if v.Kind == pg.VariableSetKind_VAR_SET_VALUE && !settingIs(v.Args, "utf8", "unicode") {
			c.reject(ReasonDeniedSetting, name)
		}
	}
}

// settingIs compares a SET value, ignoring case, '-' and '_'.
func settingIs(args []*pg.Node, want ...string) bool {
	if len(args) != 1 {
		return false
	}
	a := args[0].GetAConst()
	if a == nil || a.Isnull {
		return false
	}
	var s string
	switch v := a.Val.(type) {
	case *pg.A_Const_Sval:
		s = v.Sval.Sval
	case *pg.A_Const_Ival:
		s = fmt.Sprint(v.Ival.Ival)
	case *pg.A_Const_Boolval:
		s = fmt.Sprint(v.Boolval.Boolval)
	default:
		return false
	}
	s = strings.NewReplacer("-", "", "_", "").Replace(strings.ToLower(s))
	for _, w := range want {
		if s == w {
			return true
		}
	}
	return false
}
