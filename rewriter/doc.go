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
//     every Bind; check LimitParams (<= MaxRows, else 54000) and VerifyParams
//     (== tenant, else 42501) at Bind.
//   - DependsOnTenant: a prepared statement bound after a tenant switch must
//     be decided again (Decide with the current Session: a cache hit).
//   - RowGuard: cut the result with 54000 past MaxRows rows.
//   - TenantEffect, TxOp: track the tenant as PostgreSQL would (SET LOCAL
//     ends with the transaction, ROLLBACK undoes SETs of the transaction,
//     RESET/RESET ALL/DISCARD ALL return to the startup value); forward the
//     statement so that upstream RLS sees the same value.
//   - Notify: namespace LISTEN/NOTIFY channels per tenant.
package rewriter
