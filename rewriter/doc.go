// Package rewriter is tenantguard's decision engine: statement + policy +
// catalog + session in, decision out. It parses with the real PostgreSQL
// parser (pg_query, Postgres 17 grammar), scopes every tenant relation to the
// session's tenant (strategy inject) or checks that the statement already is
// (strategy verify), refuses what it cannot prove safe, and caches a
// tenant-independent template of every decision so that a repeated statement
// text costs a map lookup and the rendering of the tenant.
//
// The package is pure: no I/O, no logging, no globals that change.
//
// # Semantics
//
// The reference is PostgreSQL row-level security with
// USING (col = T) WITH CHECK (col = T). A tenant relation in FROM gets
// `<alias>.<col> = T` as the first conjunct of the WHERE of its level; on the
// nullable side of a LEFT/RIGHT JOIN the predicate goes into that join's ON;
// on either side of a FULL JOIN, on the nullable side of a USING/NATURAL join,
// under an aliased join, and as a MERGE source, the relation is replaced by
// `(SELECT * FROM rel WHERE rel.col = T) AS alias`. Writes get the tenant
// column forced (INSERT) or checked (UPDATE SET, ON CONFLICT DO UPDATE,
// MERGE), and their targets are scoped like reads.
//
// # What is refused rather than rewritten
//
// Every refusal fails closed; 0A000 means "cannot prove it safe":
//
//   - WHERE CURRENT OF on a tenant relation (the cursor may predate a tenant
//     switch); TABLESAMPLE of a tenant relation where it would need wrapping;
//     a tenant relation in any position the engine does not scope.
//   - INSERT into a tenant relation without a column list (unless the
//     catalog knows the columns and the source is VALUES); VALUES rows or
//     SELECT lists whose width differs from the column list; INSERT ... SELECT
//     with a set operation or a star that supplies the tenant column.
//   - A written tenant value that is not provably the tenant: an expression,
//     a subquery, NULL, DEFAULT in UPDATE, a multi-assignment, excluded.col
//     (42501 cross_tenant_write); inside PREPARE also literals and parameters.
//   - Views in the catalog that read tenant relations without exposing the
//     tenant column.
//   - With a complete catalog (Catalog.Complete, as the proxy loads it), a
//     relation read or written that the catalog does not list, outside
//     pg_catalog and information_schema and not a CTE (unknown_relation): it
//     may be a view over tenant tables created since the catalog was loaded.
//     Likewise an unqualified call of a function, or an operator, that is
//     neither a builtin (Catalog.SystemFunctions, SystemOperators) nor in
//     the catalog (unknown_function).
//   - In verify mode: anything not constrained by a top-level conjunct at its
//     own level (a FULL JOIN side, a MERGE source table, a nullable side
//     constrained only in WHERE), INSERT ... SELECT with a set operation.
//   - LIMIT WITH TIES, LIMIT (expression), LIMIT $k inside PREPARE, and, in
//     cap mode, those that cannot be clamped; OFFSET constants above the bound.
//   - Statements whose rewritten text does not parse back as one statement.
//   - Writes (INSERT, UPDATE, DELETE, MERGE, COPY FROM, writable CTEs) to a
//     relation with a rewrite rule other than a view's _RETURN (0A000).
//
// # User routines (functions, procedures, operators, casts, triggers)
//
// A user routine is a catalog Function in a language other than internal or
// c (C functions of extensions such as uuid-ossp are vouched for). It may run
// for an ordinary role only when tenantguard can read it and proves that it
// reads no tenant data and runs no SQL given as a string, or when the role's
// policy lists it under functions; otherwise the statement is refused with
// 42501 denied_function. The check applies to a direct call, CALL, the
// functions of a user operator (every overload of the symbol, since
// resolution is not known), of a cast to a type with a user cast function,
// and, for every write target, its trigger functions and the functions its
// column defaults call (not for DELETE).
//
// Only language sql can be read: the body (prosrc, or the BEGIN ATOMIC /
// RETURN text) is parsed with the real parser; a body that does not parse
// is refused. Every relation in it must be a non-tenant relation known to
// the catalog (or a system catalog, or a CTE of the body) and not a view
// reading tenant relations; every call, operator and cast must pass the same
// rule (followed to a depth of 16; recursion is refused); denied builtins
// (query_to_xml, dblink, set_config, ...) are refused; statements other than
// queries, DML and CALL (SET, DO, ...) are refused; writes in the body bring
// in the target's triggers, defaults and rules. Procedural languages
// (plpgsql, plpython, ...) are refused unless listed: tenantguard cannot see
// the SQL they run. This is strict on purpose: a plpgsql updated_at trigger
// on a table makes writes to it fail until the policy lists the function.
// A function listed for the role is trusted wherever it is reached (for
// CALL, only the called procedure itself is matched against the list).
//
// Without a catalog nothing is known of user code: an unqualified or
// pg_catalog call passes as a builtin (denied builtins excepted), a call in
// another schema passes too, and operators, casts and triggers are not
// checked. The proxy always loads a catalog; `tenantguard check` without
// --catalog does not. With a catalog, a call qualified with a schema the
// catalog does not know is refused.
//
// Attribute notation (c.f, (x).f) is checked as the call f(c) it may be
// when f is not a column of what c stands for.
//
// Not covered: aggregates' transition functions, event triggers, views that
// call user functions (views are judged by the relations they read),
// implicit (assignment) casts, which the statement text does not show,
// functions in CHECK constraints (a domain's included), domain defaults and
// index expressions, attribute notation inside function bodies, and
// anything created or replaced since the catalog was loaded that a known
// name now reaches (an overload, a shadowing relation, a new body).
//
// Known differences from RLS: a wrapped relation's whole-row reference is an
// anonymous record; ON CONFLICT DO UPDATE against another tenant's row does
// nothing (RLS raises an error); the tenant predicate is an ordinary
// conjunct, so a user condition that raises an error could in principle be
// evaluated on another tenant's row before it (RLS uses security barriers);
// the proxy's error redaction covers that channel.
//
// # How the proxy uses a Decision
//
//   - Verdict rejected and Enforced: send Error as an ErrorResponse. In a
//     simple Query holding several statements, refuse the whole string when any
//     statement is rejected (PostgreSQL runs it as one implicit transaction).
//   - Enforced false (policy mode audit): log the decision, forward the
//     original SQL (Decision.SQL is the original), never reject, Bind checks
//     included.
//   - Otherwise forward SQL. In the extended protocol, when TenantParam > 0,
//     append a parameter (type TenantType) bound to the current tenant at
//     every Bind; check LimitParams (<= MaxRows, else 54000), ArrayParams
//     (at most MaxRows elements, else 54000) and VerifyParams (== tenant,
//     else 42501) at Bind.
//   - DependsOnTenant: a prepared statement bound after a tenant switch must
//     be decided again (Decide with the current Session: a cache hit).
//   - RowGuard: cut the result with 54000 past MaxRows rows.
//   - TenantEffect, TxOp: track the tenant as PostgreSQL would (SET LOCAL
//     ends with the transaction, ROLLBACK undoes SETs of the transaction,
//     RESET/RESET ALL/DISCARD ALL return to the startup value); forward the
//     statement so that upstream RLS sees the same value.
//   - Notify: namespace LISTEN/NOTIFY channels per tenant.
package rewriter
