package rewriter

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantguard/tenantguard/policy"
)

// TestRLSDifferentialRandom is TestRLSDifferential over generated
// statements: joins of every kind, subqueries in FROM, WHERE and the select
// list (correlated or not), CTEs, LATERAL, set operations, aggregates, and
// UPDATE/DELETE with FROM/USING and subqueries. Each statement the
// rewriter accepts must return what PostgreSQL's row-level security
// returns for the same tenant (reads), or leave every table as it leaves
// them (writes, rolled back). TENANTGUARD_RLS_RANDOM=n runs n statements
// (default 400) and TENANTGUARD_RLS_SEED picks the seed.
func TestRLSDifferentialRandom(t *testing.T) {
	n, seed := RLSRandomArgs(400)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	su, app := rlsDatabase(ctx, t, "rewriter_rls_random")
	r := New(rlsPolicy(), nil)
	rs := New(rlsPolicy(), nil, WithTenantSetting())
	vp := rlsPolicy()
	vp.Strategy = policy.StrategyVerify
	rv := New(vp, nil)

	g := &rlsGen{r: rand.New(rand.NewPCG(seed, 0x7e4a47))}
	var compared, rejected, invalid, differs, refusedByRLS, scoped, verified int
	for i := 0; i < n; i++ {
		tenant := 1 + g.r.IntN(3)
		ts := strconv.Itoa(tenant)
		g.scoped, g.tenant = g.r.IntN(2) == 0, tenant
		write := g.r.IntN(4) == 0
		var q string
		if write {
			q = g.write()
		} else {
			q = g.read()
		}
		for _, conn := range []*pgx.Conn{app, su} {
			if _, err := conn.Exec(ctx, "SET app.clinic_id = "+ts); err != nil {
				t.Fatal(err)
			}
		}
		want, wantErr := rlsRun(ctx, app, write, q)
		if wantErr != nil && strings.HasPrefix(wantErr.Error(), "42501") {
			// RLS refuses the write (another tenant's row): so must the
			// rewriter, or its rewrite must fail as well.
			refusedByRLS++
			for _, rw := range []*Rewriter{r, rv} {
				d := rw.Decide(q, Session{Tenant: ts, HasTenant: true}).Statements[0]
				if d.Verdict != VerdictRejected {
					if _, err := rlsRun(ctx, su, write, d.SQL); err == nil {
						differs++
						t.Errorf("statement %d (tenant %d): RLS refuses it (%v), the rewrite runs\n in:  %s\n out: %s", i, tenant, wantErr, q, d.SQL)
					}
				}
			}
			continue
		}
		if wantErr != nil {
			invalid++ // the generator's fault (types, a FULL JOIN condition) or RLS's own error
			if testing.Verbose() {
				t.Logf("invalid: %v: %s", wantErr, q)
			}
			continue
		}
		type variant struct {
			name string
			d    Decision
			args []any
		}
		var vs []variant
		d := r.Decide(q, Session{Tenant: ts, HasTenant: true}).Statements[0]
		if d.Verdict == VerdictRejected {
			rejected++
			continue
		}
		vs = append(vs, variant{"literal", d, nil})
		if e := r.Decide(q, Session{Tenant: ts, HasTenant: true, Extended: true}).Statements[0]; e.Verdict != VerdictRejected {
			var args []any
			if e.TenantParam > 0 {
				args = make([]any, e.TenantParam)
				args[e.TenantParam-1] = tenant
			}
			vs = append(vs, variant{"extended", e, args})
		}
		if s := rs.Decide(q, Session{Tenant: ts, HasTenant: true}).Statements[0]; s.Verdict != VerdictRejected {
			vs = append(vs, variant{"setting", s, nil})
		}
		if g.scoped {
			scoped++
			if v := rv.Decide(q, Session{Tenant: ts, HasTenant: true}).Statements[0]; v.Verdict != VerdictRejected {
				verified++
				vs = append(vs, variant{"verify", v, nil})
			}
		}
		compared++
		for _, v := range vs {
			got, err := rlsRun(ctx, su, write, v.d.SQL, v.args...)
			if err != nil {
				differs++
				t.Errorf("statement %d (tenant %d, %s): RLS runs it, the rewrite fails: %v\n in:  %s\n out: %s", i, tenant, v.name, err, q, v.d.SQL)
				continue
			}
			if got != want {
				differs++
				t.Errorf("statement %d (tenant %d, %s) differs from RLS\n in:  %s\n out: %s\nRLS:\n%s\nrewritten:\n%s", i, tenant, v.name, q, v.d.SQL, want, got)
			}
		}
		if differs > 10 {
			t.Fatal("too many differences")
		}
	}
	t.Logf("seed %d: %d statements compared with RLS, %d refused by the rewriter, %d refused by RLS (and by the rewriter), %d invalid; "+
		"%d of the compared written hand-scoped, %d of them accepted by verify", seed, compared, rejected, refusedByRLS, invalid, scoped, verified)
	// The generator must mostly produce statements that run and that the
	// rewriter accepts, or the test proves little.
	if compared < n/2 || verified < scoped/10 {
		t.Fatalf("only %d of %d generated statements compared (%d refused, %d invalid), verify accepted %d of %d", compared, n, rejected, invalid, verified, scoped)
	}
}

// rlsRun is RLSRun in the simple protocol, or with args in the extended one.
func rlsRun(ctx context.Context, conn *pgx.Conn, write bool, q string, args ...any) (string, error) {
	if len(args) > 0 {
		return RLSRun(ctx, conn, write, q, pgx.QueryExecModeExec, args...)
	}
	return RLSRun(ctx, conn, write, q, pgx.QueryExecModeSimpleProtocol)
}

func rlsRunMode(ctx context.Context, conn *pgx.Conn, write bool, q string, mode pgx.QueryExecMode, args ...any) (string, error) {
	// A read runs outside a transaction block, where tenantguard sends a
	// simple-protocol statement in its prepared form.
	var db interface {
		Query(context.Context, string, ...any) (pgx.Rows, error)
		QueryRow(context.Context, string, ...any) pgx.Row
	} = conn
	if write {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return "", err
		}
		defer func() { _ = tx.Rollback(ctx) }()
		db = tx
	}
	rows, err := db.Query(ctx, q, append([]any{mode}, args...)...)
	if err != nil {
		return "", err
	}
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			rows.Close()
			return "", err
		}
		out = append(out, fmt.Sprint(vals...))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", err
	}
	sort.Strings(out)
	res := strings.Join(out, "\n")
	if write {
		var dump string
		if err := db.QueryRow(ctx, "SELECT tg_dump()").Scan(&dump); err != nil {
			return "", err
		}
		res += "\n--\n" + dump
	}
	return res, nil
}

// rlsGen generates statements over rlsFixture's tables. Every column it
// names is a number (so that set operations and comparisons type-check),
// qualified by an alias unique within the statement.
type rlsGen struct {
	r    *rand.Rand
	next int // aliases handed out
	nest int // NOT and OR around the predicate being generated
	// scoped: the statement is for the verify strategy; the generator
	// writes the tenant conjunct of each tenant table itself (tenant),
	// mostly where it scopes the table, sometimes where it does not.
	scoped  bool
	tenant  int
	pending []string // tenant-table aliases whose conjunct is still to be written
}

type genRel struct {
	alias string
	cols  []string
}

var genTables = []struct {
	name string
	cols []string
}{
	{"patients", []string{"id", "clinic_id"}},
	{"invoices", []string{"id", "clinic_id", "patient_id", "amount"}},
	{"soap_notes", []string{"id", "clinic_id", "patient_id"}},
	{"orders", []string{"id", "clinic_id", "total"}},
	{"clinics", []string{"id"}},
}

func (g *rlsGen) alias() string {
	g.next++
	return "a" + strconv.Itoa(g.next)
}

func (g *rlsGen) pick(s []string) string { return s[g.r.IntN(len(s))] }

func (g *rlsGen) col(scope []genRel) string {
	rel := scope[g.r.IntN(len(scope))]
	return rel.alias + "." + g.pick(rel.cols)
}

// table is a base table with a fresh alias.
func (g *rlsGen) table() (string, genRel) {
	t := genTables[g.r.IntN(len(genTables))]
	a := g.alias()
	if g.scoped && t.name != "clinics" {
		g.pending = append(g.pending, a)
	}
	return t.name + " " + a, genRel{a, t.cols}
}

// tenantConj is alias's tenant conjunct, in one of the spellings an
// application uses.
func (g *rlsGen) tenantConj(alias string) string {
	col := alias + ".clinic_id"
	v := g.pick([]string{strconv.Itoa(g.tenant), "'" + strconv.Itoa(g.tenant) + "'",
		"current_setting('app.clinic_id')::int", "(current_setting('app.clinic_id'))::integer"})
	switch g.r.IntN(4) {
	case 0:
		return v + " = " + col
	case 1:
		return col + " IN (" + v + ")"
	default:
		return col + " = " + v
	}
}

// scopeConds pops the conjuncts of the tenant tables since mark: nearly
// always written, now and then left out (verify must refuse that).
func (g *rlsGen) scopeConds(mark int) []string {
	if !g.scoped {
		return nil
	}
	var out []string
	for _, a := range g.pending[mark:] {
		if g.r.IntN(40) > 0 {
			out = append(out, g.tenantConj(a))
		}
	}
	g.pending = g.pending[:mark]
	return out
}

func whereOf(user string, conds []string) string {
	if user != "" {
		conds = append([]string{user}, conds...)
	}
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

// read is a whole SELECT, sometimes with CTEs or a set operation.
func (g *rlsGen) read() string {
	g.next, g.pending = 0, g.pending[:0]
	var ctes []genRel
	var b strings.Builder
	if g.r.IntN(4) == 0 {
		b.WriteString("WITH ")
		for i := 0; i < 1+g.r.IntN(2); i++ {
			if i > 0 {
				b.WriteString(", ")
			}
			name := "w" + strconv.Itoa(i+1)
			fmt.Fprintf(&b, "%s AS %s(%s)", name, g.pick([]string{"", "", "MATERIALIZED ", "NOT MATERIALIZED "}), g.selectCore(2, nil, ctes, []string{"id", "pid"}))
			ctes = append(ctes, genRel{name, []string{"id", "pid"}})
		}
		b.WriteString(" ")
	}
	ncols := 1 + g.r.IntN(3)
	names := make([]string, ncols)
	for i := range names {
		names[i] = "c" + strconv.Itoa(i+1)
	}
	b.WriteString(g.selectCore(2, nil, ctes, names))
	if g.r.IntN(6) == 0 {
		b.WriteString(g.pick([]string{" UNION ", " UNION ALL ", " INTERSECT ", " EXCEPT ", " EXCEPT ALL "}))
		b.WriteString(g.selectCore(1, nil, ctes, names))
	}
	return b.String()
}

// selectCore is a SELECT whose output columns are named names; outer is
// the scope a correlated subquery may reference.
func (g *rlsGen) selectCore(depth int, outer, ctes []genRel, names []string) string {
	mark := len(g.pending)
	from, scope := g.from(depth, outer, ctes)
	all := append(append([]genRel{}, scope...), outer...)
	var b strings.Builder
	b.WriteString("SELECT ")
	agg := g.r.IntN(6) == 0
	var group string
	if agg && g.r.IntN(2) == 0 {
		group = g.col(scope)
	}
	if !agg && g.r.IntN(8) == 0 {
		b.WriteString("DISTINCT ")
	}
	for i, name := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		var e string
		switch {
		case agg && group != "" && i == 0:
			e = group
		case agg:
			e = g.pick([]string{"count(*)", "count(" + g.col(scope) + ")", "sum(" + g.col(scope) + ")", "max(" + g.col(scope) + ")"})
		case depth > 0 && g.r.IntN(6) == 0:
			e = "(" + g.scalar(depth-1, all, ctes) + ")"
		case g.r.IntN(10) == 0:
			e = g.pick([]string{"count(*) OVER ()", "count(*) OVER (PARTITION BY " + g.col(scope) + ")", "sum(" + g.col(scope) + ") OVER (PARTITION BY " + g.col(scope) + ")"})
		default:
			e = g.col(scope)
		}
		fmt.Fprintf(&b, "%s AS %s", e, name)
	}
	b.WriteString(" FROM ")
	b.WriteString(from)
	var user string
	if g.r.IntN(3) > 0 {
		user = g.pred(depth, all, ctes, 2)
	}
	b.WriteString(whereOf(user, g.scopeConds(mark)))
	if group != "" {
		b.WriteString(" GROUP BY " + group)
		if g.r.IntN(3) == 0 {
			b.WriteString(" HAVING count(*) > " + strconv.Itoa(g.r.IntN(3)))
		}
	}
	return b.String()
}

// from is a FROM list of one to three items joined in every way.
func (g *rlsGen) from(depth int, outer, ctes []genRel) (string, []genRel) {
	var b strings.Builder
	var scope []genRel
	n := 1 + g.r.IntN(3)
	seg := 0 // the items an explicit JOIN's ON (or a LATERAL in it) may see: since the last comma
	for i := 0; i < n; i++ {
		join := ""
		visible := scope
		if i > 0 {
			join = g.pick([]string{", ", " JOIN ", " LEFT JOIN ", " RIGHT JOIN ", " FULL JOIN ", " CROSS JOIN "})
			if join != ", " {
				visible = scope[seg:]
			}
		}
		var item string
		var rel genRel
		lateral := false
		switch k := g.r.IntN(10); {
		case k < 2 && depth > 0:
			rel = genRel{g.alias(), []string{"id", "pid"}}
			item = "(" + g.selectCore(depth-1, nil, ctes, rel.cols) + ") " + rel.alias
		case k == 2 && depth > 0 && i > 0:
			rel = genRel{g.alias(), []string{"id", "pid"}}
			item = "LATERAL (" + g.selectCore(depth-1, visible, ctes, rel.cols) + ") " + rel.alias
			lateral = true
			if join == " RIGHT JOIN " || join == " FULL JOIN " {
				join = " LEFT JOIN "
			}
		case k == 3 && len(ctes) > 0:
			cte := ctes[g.r.IntN(len(ctes))]
			rel = genRel{g.alias(), cte.cols}
			item = cte.alias + " " + rel.alias
		case k == 4 && g.r.IntN(3) == 0:
			rel = genRel{g.alias(), []string{"id"}}
			item = g.pick([]string{"(VALUES (1), (2), (4), (NULL::int))", "generate_series(1, 5)"}) + " " + rel.alias + "(id)"
		case k == 5 && depth > 0 && g.r.IntN(2) == 0:
			// a subquery cut by its own ORDER BY and LIMIT (by a unique
			// key, so that the rows are the same each time)
			mark := len(g.pending)
			inner, in := g.table()
			rel = genRel{g.alias(), []string{"id", "pid"}}
			item = fmt.Sprintf("(SELECT %s.id AS id, %s AS pid FROM %s%s ORDER BY %s.id %s LIMIT %d) %s",
				in.alias, g.col([]genRel{in}), inner, whereOf("", g.scopeConds(mark)), in.alias, g.pick([]string{"ASC", "DESC"}), 1+g.r.IntN(3), rel.alias)
		default:
			item, rel = g.table()
		}
		if i > 0 {
			b.WriteString(join)
		}
		b.WriteString(item)
		switch join {
		case "":
		case ", ":
			seg = len(scope)
		case " CROSS JOIN ":
		case " FULL JOIN ":
			// only merge- or hash-joinable conditions
			fmt.Fprintf(&b, " ON %s = %s", g.col(visible), g.col([]genRel{rel}))
		default:
			on := g.col(visible) + " = " + g.col([]genRel{rel})
			if g.r.IntN(4) == 0 {
				on += " AND " + g.pred(0, append(append([]genRel{}, visible...), rel), ctes, 1)
			}
			if lateral && g.r.IntN(2) == 0 {
				on = "true"
			}
			// verify: a tenant conjunct in the ON, of the joined table (it
			// scopes it, as RLS does) or now and then of a table on the
			// other side (which, on the preserved side of an outer join,
			// does not).
			if n := len(g.pending); g.scoped && n > 0 && g.r.IntN(4) == 0 {
				k := n - 1
				if g.r.IntN(4) == 0 {
					k = g.r.IntN(n)
				}
				a := g.pending[k]
				if slices.ContainsFunc(visible, func(v genRel) bool { return v.alias == a }) || a == rel.alias {
					on += " AND " + g.tenantConj(a)
					g.pending = slices.Delete(g.pending, k, k+1)
				}
			}
			b.WriteString(" ON " + on)
		}
		scope = append(scope, rel)
	}
	return b.String(), scope
}

// scalar is a one-row, one-column subquery, correlated with scope.
func (g *rlsGen) scalar(depth int, scope, ctes []genRel) string {
	mark := len(g.pending)
	item, rel := g.table()
	inner := append([]genRel{rel}, scope...)
	s := fmt.Sprintf("SELECT %s FROM %s", g.pick([]string{"count(*)", "max(" + g.col([]genRel{rel}) + ")", "sum(" + g.col([]genRel{rel}) + ")"}), item)
	var user string
	if g.r.IntN(4) > 0 {
		user = g.col([]genRel{rel}) + " = " + g.col(scope)
		if g.r.IntN(3) == 0 {
			user += " AND " + g.pred(depth, inner, ctes, 1)
		}
	}
	return s + whereOf(user, g.scopeConds(mark))
}

// pred is a boolean expression over scope.
func (g *rlsGen) pred(depth int, scope, ctes []genRel, n int) string {
	var parts []string
	for i := 0; i < 1+g.r.IntN(n); i++ {
		var p string
		k := g.r.IntN(12)
		if g.nest >= 2 && k >= 10 || depth == 0 && k >= 5 && k < 10 {
			k = g.r.IntN(5) // simple: no deeper boolean nesting, no subquery at depth 0
		}
		switch {
		case k < 3:
			p = fmt.Sprintf("%s %s %d", g.col(scope), g.pick([]string{"=", ">", "<", "<>", ">="}), g.r.IntN(10))
		case k == 3:
			p = g.col(scope) + g.pick([]string{" IS NULL", " IS NOT NULL"})
		case k == 4:
			p = g.col(scope) + " = " + g.col(scope)
		case k < 7 && depth > 0:
			mark := len(g.pending)
			item, rel := g.table()
			sub := fmt.Sprintf("SELECT %s FROM %s", g.col([]genRel{rel}), item)
			var user string
			if g.r.IntN(2) == 0 {
				user = g.pred(depth-1, append([]genRel{rel}, scope...), ctes, 1)
			}
			sub += whereOf(user, g.scopeConds(mark))
			p = g.col(scope) + g.pick([]string{" IN (", " NOT IN ("}) + sub + ")"
		case k < 9 && depth > 0:
			mark := len(g.pending)
			item, rel := g.table()
			user := g.col([]genRel{rel}) + " = " + g.col(scope)
			p = fmt.Sprintf("%sEXISTS (SELECT 1 FROM %s%s)", g.pick([]string{"", "NOT "}), item, whereOf(user, g.scopeConds(mark)))
		case k == 9 && depth > 0:
			switch g.r.IntN(5) {
			case 0: // = ANY (ARRAY (subquery))
				mark := len(g.pending)
				item, rel := g.table()
				p = fmt.Sprintf("%s = ANY (ARRAY (SELECT %s FROM %s%s))", g.col(scope), g.col([]genRel{rel}), item, whereOf("", g.scopeConds(mark)))
			case 1: // a row compared with a subquery's rows
				mark := len(g.pending)
				item, rel := g.table()
				p = fmt.Sprintf("(%s, %s) IN (SELECT %s, %s FROM %s%s)", g.col(scope), g.col(scope), g.col([]genRel{rel}), g.col([]genRel{rel}), item, whereOf("", g.scopeConds(mark)))
			case 2: // CASE over EXISTS
				mark := len(g.pending)
				item, rel := g.table()
				p = fmt.Sprintf("CASE WHEN EXISTS (SELECT 1 FROM %s%s) THEN %s > %d ELSE true END", item,
					whereOf(g.col([]genRel{rel})+" = "+g.col(scope), g.scopeConds(mark)), g.col(scope), g.r.IntN(5))
			case 3:
				p = fmt.Sprintf("%s IN (VALUES (%d), (%d))", g.col(scope), g.r.IntN(5), g.r.IntN(5))
			default:
				p = fmt.Sprintf("%s %s (%s)", g.col(scope), g.pick([]string{"=", ">", "<"}), g.scalar(depth-1, scope, ctes))
			}
		case k == 10:
			g.nest++
			p = "NOT (" + g.pred(depth, scope, ctes, 1) + ")"
			g.nest--
		default:
			g.nest++
			p = "(" + g.pred(depth, scope, ctes, 1) + " OR " + g.pred(depth, scope, ctes, 1) + ")"
			g.nest--
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " AND ")
}

// write is an UPDATE or DELETE of a tenant table, sometimes with another
// relation in FROM/USING, and RETURNING.
func (g *rlsGen) write() string {
	g.next, g.pending = 0, g.pending[:0]
	k := g.r.IntN(5)
	if g.scoped {
		k = 3 // UPDATE and DELETE
	}
	switch k {
	case 0:
		// No primary key on orders: any number of rows goes in, each to
		// the partition of its id.
		src := g.selectCore(1, nil, nil, []string{"c1"})
		return fmt.Sprintf("INSERT INTO orders (id, total) SELECT abs(coalesce(x.c1, 0)) %% 1000, 1 FROM (%s) x", src)
	case 1:
		// The tenant column written: RLS's WITH CHECK refuses another
		// tenant's value, tenantguard must refuse it too.
		return fmt.Sprintf("INSERT INTO orders (id, clinic_id, total) VALUES (%d, %d, 1)", g.r.IntN(1000), 1+g.r.IntN(3))
	case 2:
		a := g.alias()
		src := g.selectCore(1, nil, nil, []string{"c1", "c2"})
		action := g.pick([]string{"UPDATE SET amount = " + a + ".amount + 1", "DELETE", "DO NOTHING"})
		m := fmt.Sprintf("MERGE INTO invoices %s USING (%s) s ON %s.patient_id = s.c1 WHEN MATCHED THEN %s", a, src, a, action)
		if g.r.IntN(2) == 0 {
			m += " WHEN NOT MATCHED THEN INSERT (id, patient_id, amount) VALUES (2000 + coalesce(s.c2, 0), s.c1, 1)"
		}
		return m
	}
	targets := genTables[:4] // not clinics
	t := targets[g.r.IntN(len(targets))]
	a := g.alias()
	target := genRel{a, t.cols}
	scope := []genRel{target}
	if g.scoped {
		g.pending = append(g.pending, a)
	}
	var b strings.Builder
	update := g.r.IntN(2) == 0
	if update {
		set := "id = " + a + ".id + 1000"
		switch t.name {
		case "invoices":
			set = "amount = " + a + ".amount + 1"
		case "orders":
			set = "total = " + a + ".total * 2"
		}
		if t.name == "invoices" && g.r.IntN(3) == 0 {
			// a scalar subquery in SET reads tenant tables too
			set = "amount = coalesce((" + g.scalar(1, scope, nil) + "), 0)"
		}
		fmt.Fprintf(&b, "UPDATE %s %s SET %s", t.name, a, set)
	} else {
		fmt.Fprintf(&b, "DELETE FROM %s %s", t.name, a)
	}
	var where []string
	if g.r.IntN(3) == 0 {
		item, rel := g.table()
		if update {
			b.WriteString(" FROM " + item)
		} else {
			b.WriteString(" USING " + item)
		}
		where = append(where, g.col([]genRel{rel})+" = "+g.col(scope))
		scope = append(scope, rel)
	}
	if g.r.IntN(4) > 0 {
		where = append(where, g.pred(2, scope, nil, 2))
	}
	where = append(where, g.scopeConds(0)...)
	if len(where) > 0 {
		b.WriteString(" WHERE " + strings.Join(where, " AND "))
	}
	if g.r.IntN(2) == 0 {
		b.WriteString(" RETURNING " + g.col([]genRel{target}) + " AS id")
		if !g.scoped && g.r.IntN(3) == 0 {
			// a data-modifying CTE, its rows read by the outer statement
			return "WITH d AS (" + b.String() + ") SELECT count(*), sum(d.id) FROM d"
		}
	}
	return b.String()
}

// RLSGen exposes the generator to the proxy-level differential
// (rls_proxy_test.go, package rewriter_test, in this test binary).
type RLSGen struct{ g *rlsGen }

// RLSRandomArgs returns how many statements to generate (defaultN unless
// TENANTGUARD_RLS_RANDOM says) and the seed (1 unless TENANTGUARD_RLS_SEED
// says).
func RLSRandomArgs(defaultN int) (n int, seed uint64) {
	n, seed = defaultN, 1
	if v, err := strconv.Atoi(os.Getenv("TENANTGUARD_RLS_RANDOM")); err == nil && v > 0 {
		n = v
	}
	if v, err := strconv.ParseUint(os.Getenv("TENANTGUARD_RLS_SEED"), 10, 64); err == nil {
		seed = v
	}
	return n, seed
}

// RLSFixture is rlsFixture, for the proxy-level differential.
const RLSFixture = rlsFixture

// NewRLSGen returns a generator seeded with seed.
func NewRLSGen(seed uint64) *RLSGen {
	return &RLSGen{&rlsGen{r: rand.New(rand.NewPCG(seed, 0x7e4a47))}}
}

// Next returns a statement for tenant, hand-scoped when scoped, and whether
// it writes.
func (x *RLSGen) Next(tenant int, scoped bool) (sql string, write bool) {
	x.g.scoped, x.g.tenant = scoped, tenant
	if x.g.r.IntN(4) == 0 {
		return x.g.write(), true
	}
	return x.g.read(), false
}

// RLSRun runs q (a read outside a transaction block, a write in one that is
// rolled back) and returns its rows sorted, and for a write every table's
// rows after it; or its error, with the SQLSTATE in front.
func RLSRun(ctx context.Context, conn *pgx.Conn, write bool, q string, mode pgx.QueryExecMode, args ...any) (string, error) {
	res, err := rlsRunMode(ctx, conn, write, q, mode, args...)
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		err = fmt.Errorf("%s: %s", pe.Code, pe.Message)
	}
	return res, err
}
