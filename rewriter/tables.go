package rewriter

import (
	"slices"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/tenantguard/tenantguard/policy"
)

// tenantRel is how one relation is scoped.
type tenantRel struct {
	Column   string
	Strategy policy.Strategy
}

// relationIndex answers "is this RangeVar a tenant relation" from the policy
// and the catalog. It is built once per Rewriter.
type relationIndex struct {
	pol *policy.Policy
	// bySchemaName holds catalog relations found tenant-scoped ("schema.name").
	bySchemaName map[string]*tenantRel
	// byName holds the same by bare name (any schema).
	byName map[string]*tenantRel
	// refusedViews are views that read tenant relations without exposing
	// the tenant column ("schema.name" and bare name).
	refusedViews map[string]bool
	// uniqueKeys by "schema.name" and bare name.
	uniqueKeys map[string][][]string
	// ownKeys are the unique keys of inheritance parents, by "schema.name"
	// and bare name: they hold for FROM ONLY parent, which reads the
	// parent's own rows, not for FROM parent (uniqueKeys has none).
	ownKeys map[string][][]string
	// shared are bare names several relations have (in different
	// schemas): search_path decides which one a statement reads.
	shared map[string]bool
	// columns by "schema.name" and bare name (for a bare name only when
	// every relation of that name has the same, in the same order).
	columns map[string][]string
	// columnNames holds every column name of every catalog relation.
	columnNames map[string]bool
	// kinds by "schema.name" and bare name.
	kinds map[string]RelKind
	// catalogLoaded is true when the catalog knows any function.
	catalogLoaded bool
	// complete, system, systemFuncs and systemOps: Catalog.Complete,
	// SystemRelations, SystemFunctions and SystemOperators.
	complete    bool
	system      map[string]bool
	systemFuncs map[string]bool
	systemOps   map[string]bool
	typeNames   map[string]bool
	funcs       map[string][]*Function // by bare name
	funcByKey   map[string]*Function   // by "schema.name"
	// tenantNames are the bare names of all tenant relations, for function
	// bodies.
	tenantNames []string
	// routines holds the analysed user functions (indirection.go).
	routines *routineIndex
}

func buildRelationIndex(p *policy.Policy, c *Catalog) *relationIndex {
	ix := &relationIndex{pol: p, bySchemaName: map[string]*tenantRel{}, byName: map[string]*tenantRel{},
		refusedViews: map[string]bool{}, uniqueKeys: map[string][][]string{}, ownKeys: map[string][][]string{}, shared: map[string]bool{}, columns: map[string][]string{}, columnNames: map[string]bool{}, kinds: map[string]RelKind{},
		funcs: map[string][]*Function{}, funcByKey: map[string]*Function{}}
	seen := map[string]bool{}
	for _, t := range p.Tables {
		if !seen[t.Name] {
			seen[t.Name] = true
			ix.tenantNames = append(ix.tenantNames, t.Name)
		}
	}
	if c == nil {
		return ix
	}
	ix.complete, ix.system, ix.systemFuncs, ix.systemOps = c.Complete, c.SystemRelations, c.SystemFunctions, c.SystemOperators
	ix.typeNames = c.TypeNames
	// Resolve catalog relations to a fixed point: parents make children
	// tenant, reads make views tenant or refused.
	var resolve func(key string, depth int) *tenantRel
	memo := map[string]*tenantRel{}
	done := map[string]bool{}
	resolve = func(key string, depth int) *tenantRel {
		if done[key] {
			return memo[key]
		}
		if depth > 64 {
			return nil
		}
		rel := c.Relations[key]
		if rel == nil {
			return nil
		}
		var tr *tenantRel
		if t := tableForPolicy(p, rel.Schema, rel.Name); t != nil {
			tr = t
		} else if p.Discover && contains(rel.Columns, p.Tenant.Column) {
			tr = &tenantRel{Column: p.Tenant.Column, Strategy: p.Strategy}
		}
		if tr == nil {
			for _, par := range rel.Parents {
				if pt := resolve(par, depth+1); pt != nil {
					tr = &tenantRel{Column: pt.Column, Strategy: pt.Strategy}
					break
				}
			}
		}
		if tr == nil && (rel.Kind == KindView || rel.Kind == KindMatView) {
			for _, rd := range rel.Reads {
				if rt := resolve(rd, depth+1); rt != nil || tableForPolicyKey(p, rd) != nil {
					col := p.Tenant.Column
					if rt != nil {
						col = rt.Column
					}
					if contains(rel.Columns, col) {
						tr = &tenantRel{Column: col, Strategy: p.Strategy}
					} else {
						ix.refusedViews[key] = true
						ix.refusedViews[rel.Name] = true
					}
					break
				}
			}
		}
		done[key] = true
		memo[key] = tr
		return tr
	}
	bareKeys := map[string][][][]string{} // every same-named relation's keys
	bareOwn := map[string][][][]string{}  // and their own (FROM ONLY)
	parents := map[string]bool{}          // bare names of inheritance parents
	bareCols := map[string][][]string{}   // and columns
	for key, rel := range c.Relations {
		if rel == nil {
			continue
		}
		if tr := resolve(key, 0); tr != nil {
			ix.bySchemaName[key] = tr
			if _, ok := ix.byName[rel.Name]; !ok {
				ix.byName[rel.Name] = tr
			}
			if !seen[rel.Name] {
				seen[rel.Name] = true
				ix.tenantNames = append(ix.tenantNames, rel.Name)
			}
		}
		ix.kinds[key] = rel.Kind
		if _, ok := ix.kinds[rel.Name]; !ok {
			ix.kinds[rel.Name] = rel.Kind
		}
		// An inheritance parent's unique indexes do not cover its
		// children, which FROM parent reads too (a partitioned table's do).
		keys := rel.UniqueKeys
		if rel.Kind == KindTable && len(rel.Children) > 0 {
			keys = nil
			parents[rel.Name] = true
			if len(rel.UniqueKeys) > 0 {
				ix.ownKeys[key] = rel.UniqueKeys
			}
		}
		if len(keys) > 0 {
			ix.uniqueKeys[key] = keys
		}
		bareKeys[rel.Name] = append(bareKeys[rel.Name], keys)
		bareOwn[rel.Name] = append(bareOwn[rel.Name], rel.UniqueKeys)
		for _, col := range rel.Columns {
			ix.columnNames[col] = true
		}
		if len(rel.Columns) > 0 {
			ix.columns[key] = rel.Columns
			if _, ok := ix.columns[rel.Name]; !ok {
				ix.columns[rel.Name] = rel.Columns
			}
		}
		bareCols[rel.Name] = append(bareCols[rel.Name], rel.Columns)
	}
	// A bare name has the keys every relation of that name has: which one
	// a statement reads is search_path's to decide.
	for name, all := range bareKeys {
		if common := commonKeys(all); len(common) > 0 {
			ix.uniqueKeys[name] = common
		}
	}
	for name := range parents {
		if common := commonKeys(bareOwn[name]); len(common) > 0 {
			ix.ownKeys[name] = common
		}
	}
	// Its columns, likewise, only when every relation of that name has the
	// same, in the same order (INSERT without a column list expands them):
	// otherwise the first seen, in map order, was taken.
	for name, all := range bareCols {
		if len(all) > 1 {
			ix.shared[name] = true
		}
		for _, cols := range all[1:] {
			if !slices.Equal(cols, all[0]) {
				delete(ix.columns, name)
				break
			}
		}
	}
	// Sequences are relations too (SELECT last_value FROM s), never tenant.
	for k := range c.Sequences {
		if _, ok := ix.kinds[k]; !ok {
			ix.kinds[k] = KindSequence
		}
		if _, name := splitKey(k); ix.kinds[name] == "" {
			ix.kinds[name] = KindSequence
		}
	}
	for key, f := range c.Functions {
		if f == nil {
			continue
		}
		ix.catalogLoaded = true
		ix.funcByKey[key] = f
		ix.funcs[f.Name] = append(ix.funcs[f.Name], f)
	}
	if len(c.Relations) > 0 {
		ix.catalogLoaded = true
	}
	ix.routines = buildRoutines(ix, c)
	return ix
}

func splitKey(k string) (string, string) {
	if i := strings.IndexByte(k, '.'); i >= 0 {
		return k[:i], k[i+1:]
	}
	return "", k
}

// tableFor finds the policy table for schema.name: a bare policy name matches
// any schema. It is a function of the rewriter, not a method in package
// policy, to keep policy/ owned by its author.
func tableForPolicy(p *policy.Policy, schema, name string) *tenantRel {
	for i := range p.Tables {
		t := &p.Tables[i]
		if t.Name != name {
			continue
		}
		if t.Schema != "" && schema != "" && t.Schema != schema {
			continue
		}
		col := t.Column
		if col == "" {
			col = p.Tenant.Column
		}
		st := t.Strategy
		if st == "" {
			st = p.Strategy
		}
		return &tenantRel{Column: col, Strategy: st}
	}
	return nil
}

// lookup returns the tenant scoping of rv, or nil for a non-tenant relation.
// An unqualified name matches a tenant relation of that name in any schema:
// search_path decides the schema at run time, so the rewriter assumes the
// worst.
func (ix *relationIndex) lookup(rv *pg.RangeVar) *tenantRel {
	if t := tableForPolicy(ix.pol, rv.Schemaname, rv.Relname); t != nil {
		return t
	}
	if rv.Schemaname != "" {
		return ix.bySchemaName[rv.Schemaname+"."+rv.Relname]
	}
	return ix.byName[rv.Relname]
}

// unknown reports a relation that a complete catalog does not list: not a
// policy table, not in the catalog, not a system relation. It may be a view
// over tenant tables created since the catalog was loaded, or a temporary
// relation, so it is not taken for a non-tenant relation. Names of CTEs are
// the caller's to exclude.
func (ix *relationIndex) unknown(rv *pg.RangeVar) bool {
	if !ix.complete || tableForPolicy(ix.pol, rv.Schemaname, rv.Relname) != nil {
		return false
	}
	switch rv.Schemaname {
	case "pg_catalog", "information_schema":
		return false
	case "":
		_, ok := ix.kinds[rv.Relname]
		return !ok && !ix.system[rv.Relname]
	}
	_, ok := ix.kinds[rv.Schemaname+"."+rv.Relname]
	return !ok
}

// refusedView reports a view that reads tenant relations but does not expose
// the tenant column.
func (ix *relationIndex) refusedView(rv *pg.RangeVar) bool {
	if rv.Schemaname != "" {
		return ix.refusedViews[rv.Schemaname+"."+rv.Relname]
	}
	return ix.refusedViews[rv.Relname]
}

// commonKeys returns the unique keys (as column sets) that every list has.
func commonKeys(all [][][]string) [][]string {
	var out [][]string
	for _, k := range all[0] {
		inAll := true
		for _, other := range all[1:] {
			inAll = inAll && slices.ContainsFunc(other, func(o []string) bool { return sameColumns(o, k) })
		}
		if inAll {
			out = append(out, k)
		}
	}
	return out
}

// sameColumns: the same set of columns.
func sameColumns(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

func (ix *relationIndex) keysOf(rv *pg.RangeVar) [][]string {
	if rv.Alias != nil && len(rv.Alias.Colnames) > 0 {
		return nil // c(cid, id): the names are not the key's columns
	}
	key := rv.Relname
	if rv.Schemaname != "" {
		key = rv.Schemaname + "." + rv.Relname
	}
	if !rv.Inh {
		// FROM ONLY: a parent's own rows, which its keys cover.
		if own, ok := ix.ownKeys[key]; ok {
			return own
		}
	}
	return ix.uniqueKeys[key]
}

func (ix *relationIndex) columnsOf(rv *pg.RangeVar) []string {
	if rv.Schemaname != "" {
		return ix.columns[rv.Schemaname+"."+rv.Relname]
	}
	return ix.columns[rv.Relname]
}

// deniedRelations are system views that expose other sessions' statements or
// column statistics of every tenant.
var deniedRelations = map[string]bool{
	"pg_stat_activity": true, "pg_stats": true, "pg_stats_ext": true, "pg_stats_ext_exprs": true,
	"pg_stat_statements": true, "pg_stat_statements_info": true, "pg_locks": true,
	"pg_statistic": true, "pg_statistic_ext_data": true,
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// relDisplay is the relation name as written, for Relations and messages.
func relDisplay(rv *pg.RangeVar) string {
	if rv.Schemaname != "" {
		return rv.Schemaname + "." + rv.Relname
	}
	return rv.Relname
}

func tableForPolicyKey(p *policy.Policy, key string) *tenantRel {
	s, n := splitKey(key)
	return tableForPolicy(p, s, n)
}

// partitioned reports a relation the catalog knows as a partitioned table.
func (ix *relationIndex) partitioned(rv *pg.RangeVar) bool {
	return ix.kinds[rv.Schemaname+"."+rv.Relname] == KindPartitioned ||
		(rv.Schemaname == "" && ix.kinds[rv.Relname] == KindPartitioned)
}
