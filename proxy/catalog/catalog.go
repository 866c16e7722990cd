// Package catalog loads what tenantguard knows of the upstream schema from
// pg_catalog into a rewriter.Catalog, and keeps it fresh while the proxy
// serves (Refresher).
//
// Loading costs a fixed number of queries, whatever the size of the schema:
// one each for relations, columns, inheritance, view dependencies, indexes,
// functions, operators, casts, triggers, column defaults and rules. The system schemas (pg_catalog, information_schema,
// pg_toast and the temporary schemas of other sessions) are skipped.
package catalog

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantguard/tenantguard/rewriter"
)

// Querier runs a query: *pgx.Conn, pgx.Tx and *pgxpool.Pool all satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Options tunes Load.
type Options struct {
	// Schemas limits loading to these schemas (names as Postgres stores
	// them). Empty loads every user schema.
	Schemas []string
}

// minServerVersion is PostgreSQL 11: pg_proc.prokind appeared there.
const minServerVersion = 110000

// nsFilter keeps user schemas: $1 is Options.Schemas (empty = all).
const nsFilter = `n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname !~ '^pg_(toast_)?temp_'
  AND (cardinality($1::text[]) = 0 OR n.nspname = ANY($1::text[]))`

// systemRelationsSQL lists the relations an unqualified name finds in
// pg_catalog (searched first unless search_path names it later).
const systemRelationsSQL = `SELECT c.relname FROM pg_catalog.pg_class c
WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')`

// systemFunctionsSQL lists the builtin function names.
const systemFunctionsSQL = `SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'pg_catalog'::regnamespace`

// typeNamesSQL lists the type names of every schema (a function-style cast
// names a type).
const typeNamesSQL = `SELECT DISTINCT t.typname FROM pg_catalog.pg_type t`

// systemOperatorsSQL lists the builtin operator symbols.
const systemOperatorsSQL = `SELECT DISTINCT o.oprname FROM pg_catalog.pg_operator o
WHERE o.oprnamespace = 'pg_catalog'::regnamespace`

// sequencesSQL lists the user sequences as "schema.name".
const sequencesSQL = `SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND ` + nsFilter

const relationsSQL = `SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND ` + nsFilter + `
ORDER BY n.nspname, c.relname`

const columnsSQL = `SELECT a.attrelid, a.attname, a.attnotnull
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum`

// inheritsSQL lists table inheritance and partitioning (index partitions,
// also in pg_inherits, are left out by relkind).
const inheritsSQL = `SELECT i.inhrelid, cn.nspname, c.relname, i.inhparent, pn.nspname, p.relname
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
WHERE (i.inhrelid = ANY($1::oid[]) OR i.inhparent = ANY($1::oid[]))
  AND c.relkind IN ('r', 'p', 'f') AND p.relkind IN ('r', 'p', 'f')
ORDER BY cn.nspname, c.relname, pn.nspname, p.relname`

// viewReadsSQL lists, for each view and materialized view, the relations
// its _RETURN rule depends on (pg_depend records one row per column used;
// DISTINCT folds them). The rule's own dependency on its view is skipped.
const viewReadsSQL = `SELECT DISTINCT r.ev_class, dn.nspname, dc.relname
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
  AND d.refclassid = 'pg_catalog.pg_class'::regclass
JOIN pg_catalog.pg_class dc ON dc.oid = d.refobjid
JOIN pg_catalog.pg_namespace dn ON dn.oid = dc.relnamespace
WHERE r.ev_class = ANY($1::oid[]) AND r.rulename = '_RETURN' AND d.refobjid <> r.ev_class
  AND dc.relkind IN ('r', 'p', 'v', 'm', 'f')
ORDER BY 1, 2, 3`

// indexesSQL lists every index with its key columns (INCLUDE columns left
// out; an expression column is shown as its expression). usable_key is
// true for an index that proves uniqueness of its columns at any time: no
// predicate, no expression, valid, and not deferrable.
const indexesSQL = `SELECT i.indrelid, ic.relname, i.indisunique,
  i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indisvalid AND i.indimmediate,
  ARRAY(SELECT CASE WHEN k.attnum = 0 THEN pg_catalog.pg_get_indexdef(i.indexrelid, k.ord::int, true)
                    ELSE a.attname::text END
        FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
        LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE k.ord <= i.indnkeyatts
        ORDER BY k.ord)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY($1::oid[])
ORDER BY i.indrelid, NOT i.indisprimary, ic.relname`

// functionsSQL lists user functions. Body is prosrc for SQL and procedural
// languages, and the SQL-standard body (BEGIN ATOMIC / RETURN, PostgreSQL
// 14+) where there is one; for C and internal functions prosrc is a symbol
// name and is left out.
const functionsSQL = `SELECT n.nspname, p.proname, l.lanname, p.prokind::text, p.prosecdef, p.proretset,
  CASE WHEN l.lanname IN ('internal', 'c') THEN ''
       %s
       ELSE coalesce(p.prosrc, '') END
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE ` + nsFilter + `
ORDER BY n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)`

// userCode keeps functions outside the system schemas: operators, casts,
// triggers and defaults are loaded whatever Options.Schemas says (a function
// they name that was not loaded is refused by the rewriter).
const userCode = `pn.nspname NOT IN ('pg_catalog', 'information_schema')`

// operatorsSQL lists user-defined operators with their functions. $1 is
// unused (every user schema's operators are loaded) but keeps the calling
// convention of the other queries.
const operatorsSQL = `SELECT DISTINCT o.oprname::text, pn.nspname, p.proname
FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND cardinality($1::text[]) >= 0
ORDER BY 1, 2, 3`

// castsSQL lists casts implemented by a user function, by target type.
const castsSQL = `SELECT DISTINCT t.typname::text, pn.nspname, p.proname
FROM pg_catalog.pg_cast c
JOIN pg_catalog.pg_type t ON t.oid = c.casttarget
JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE c.castfunc <> 0 AND ` + userCode + ` AND cardinality($1::text[]) >= 0
ORDER BY 1, 2, 3`

// triggersSQL lists the functions of enabled user triggers.
const triggersSQL = `SELECT DISTINCT t.tgrelid, pn.nspname, p.proname
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE t.tgrelid = ANY($1::oid[]) AND NOT t.tgisinternal AND t.tgenabled <> 'D'
ORDER BY 1, 2, 3`

// defaultsSQL lists the user functions that column defaults and generated
// columns depend on.
const defaultsSQL = `SELECT DISTINCT ad.adrelid, pn.nspname, p.proname
FROM pg_catalog.pg_attrdef ad
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = ad.oid
  AND d.refclassid = 'pg_catalog.pg_proc'::regclass
JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE ad.adrelid = ANY($1::oid[]) AND ` + userCode + `
ORDER BY 1, 2, 3`

// rulesSQL lists relations with rewrite rules other than a view's _RETURN.
const rulesSQL = `SELECT DISTINCT r.ev_class
FROM pg_catalog.pg_rewrite r
WHERE r.ev_class = ANY($1::oid[]) AND r.rulename <> '_RETURN'
ORDER BY 1`

const sqlBodyCase = `WHEN p.prosqlbody IS NOT NULL THEN coalesce(pg_catalog.pg_get_function_sqlbody(p.oid), '')`

var relKinds = map[string]rewriter.RelKind{
	"r": rewriter.KindTable,
	"p": rewriter.KindPartitioned,
	"v": rewriter.KindView,
	"m": rewriter.KindMatView,
	"f": rewriter.KindForeign,
}

// Load reads the catalog through q. Its queries should see one snapshot:
// pass a repeatable-read transaction (LoadConn does), or accept that a
// concurrent DDL may show half done. Keys are "schema.name".
func Load(ctx context.Context, q Querier, opts Options) (*rewriter.Catalog, error) {
	schemas := opts.Schemas
	if schemas == nil {
		schemas = []string{}
	}
	var version int
	if err := queryRow(ctx, q, `SELECT current_setting('server_version_num')::int`, &version); err != nil {
		return nil, fmt.Errorf("catalog: server version: %w", err)
	}
	if version < minServerVersion {
		return nil, fmt.Errorf("catalog: PostgreSQL %d is not supported (11 or later needed)", version)
	}

	cat := &rewriter.Catalog{Relations: map[string]*rewriter.Relation{}, Functions: map[string]*rewriter.Function{}}
	byOID := map[uint32]*rewriter.Relation{}
	var oids []uint32

	// Every user schema loaded: a relation not found is one created since
	// (or in a temporary schema), and the rewriter refuses it.
	cat.Complete = len(schemas) == 0
	var err error
	if cat.SystemRelations, err = loadNames(ctx, q, "system relations", systemRelationsSQL); err != nil {
		return nil, err
	}
	if cat.SystemFunctions, err = loadNames(ctx, q, "system functions", systemFunctionsSQL); err != nil {
		return nil, err
	}
	if cat.SystemOperators, err = loadNames(ctx, q, "system operators", systemOperatorsSQL); err != nil {
		return nil, err
	}
	if cat.TypeNames, err = loadNames(ctx, q, "type names", typeNamesSQL); err != nil {
		return nil, err
	}
	if cat.Sequences, err = loadNames(ctx, q, "sequences", sequencesSQL, schemas); err != nil {
		return nil, err
	}
	if len(cat.Sequences) == 0 {
		cat.Sequences = nil
	}

	rows, err := q.Query(ctx, relationsSQL, schemas)
	if err != nil {
		return nil, fmt.Errorf("catalog: relations: %w", err)
	}
	var (
		oid                 uint32
		schema, name, kind  string
		rlsEnabled, rlsForc bool
	)
	_, err = pgx.ForEachRow(rows, []any{&oid, &schema, &name, &kind, &rlsEnabled, &rlsForc}, func() error {
		r := &rewriter.Relation{Schema: schema, Name: name, Kind: relKinds[kind], RLSEnabled: rlsEnabled, RLSForced: rlsForc}
		cat.Relations[key(schema, name)] = r
		byOID[oid] = r
		oids = append(oids, oid)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: relations: %w", err)
	}
	if oids == nil {
		oids = []uint32{}
	}

	var (
		col     string
		notNull bool
	)
	if err := each(ctx, q, "columns", columnsSQL, oids, []any{&oid, &col, &notNull}, func() {
		if r := byOID[oid]; r != nil {
			r.Columns = append(r.Columns, col)
			if notNull {
				r.NotNull = append(r.NotNull, col)
			}
		}
	}); err != nil {
		return nil, err
	}

	var (
		parentOID                uint32
		parentSchema, parentName string
		childSchema, childName   string
	)
	if err := each(ctx, q, "inheritance", inheritsSQL, oids,
		[]any{&oid, &childSchema, &childName, &parentOID, &parentSchema, &parentName}, func() {
			if r := byOID[oid]; r != nil {
				r.Parents = append(r.Parents, key(parentSchema, parentName))
			}
			if r := byOID[parentOID]; r != nil {
				r.Children = append(r.Children, key(childSchema, childName))
			}
		}); err != nil {
		return nil, err
	}

	if err := each(ctx, q, "view dependencies", viewReadsSQL, oids, []any{&oid, &schema, &name}, func() {
		if r := byOID[oid]; r != nil && (r.Kind == rewriter.KindView || r.Kind == rewriter.KindMatView) {
			r.Reads = append(r.Reads, key(schema, name))
		}
	}); err != nil {
		return nil, err
	}

	var (
		indexName         string
		unique, usableKey bool
		cols              []string
	)
	if err := each(ctx, q, "indexes", indexesSQL, oids, []any{&oid, &indexName, &unique, &usableKey, &cols}, func() {
		r := byOID[oid]
		if r == nil {
			return
		}
		c := append([]string(nil), cols...)
		r.Indexes = append(r.Indexes, c)
		if usableKey {
			r.UniqueKeys = append(r.UniqueKeys, append([]string(nil), cols...))
		}
	}); err != nil {
		return nil, err
	}

	bodyCase := ""
	if version >= 140000 {
		bodyCase = sqlBodyCase
	}
	var (
		lang, prokind, body string
		secDef, retSet      bool
	)
	if err := each(ctx, q, "functions", fmt.Sprintf(functionsSQL, bodyCase), schemas,
		[]any{&schema, &name, &lang, &prokind, &secDef, &retSet, &body}, func() {
			mergeFunction(cat, &rewriter.Function{
				Schema: schema, Name: name, Language: lang, Kind: prokind,
				SecurityDefiner: secDef, ReturnsSet: retSet, Body: body,
			})
		}); err != nil {
		return nil, err
	}

	if err := loadCode(ctx, q, cat, byOID, oids, schemas); err != nil {
		return nil, err
	}

	for _, r := range cat.Relations {
		sort.Strings(r.Parents)
		sort.Strings(r.Children)
	}
	return cat, nil
}

// loadCode loads the code that runs without being named: operators,
// casts, triggers, column defaults and rules.
func loadCode(ctx context.Context, q Querier, cat *rewriter.Catalog, byOID map[uint32]*rewriter.Relation, oids []uint32, schemas []string) error {
	var (
		oid               uint32
		sym, schema, name string
		operators, casts  = map[string][]string{}, map[string][]string{}
	)
	if err := each(ctx, q, "operators", operatorsSQL, schemas, []any{&sym, &schema, &name}, func() {
		operators[sym] = append(operators[sym], key(schema, name))
	}); err != nil {
		return err
	}
	if err := each(ctx, q, "casts", castsSQL, schemas, []any{&sym, &schema, &name}, func() {
		casts[sym] = append(casts[sym], key(schema, name))
	}); err != nil {
		return err
	}
	if len(operators) > 0 {
		cat.Operators = operators
	}
	if len(casts) > 0 {
		cat.Casts = casts
	}
	if err := each(ctx, q, "triggers", triggersSQL, oids, []any{&oid, &schema, &name}, func() {
		if r := byOID[oid]; r != nil {
			r.Triggers = append(r.Triggers, key(schema, name))
		}
	}); err != nil {
		return err
	}
	if err := each(ctx, q, "defaults", defaultsSQL, oids, []any{&oid, &schema, &name}, func() {
		if r := byOID[oid]; r != nil {
			r.Defaults = append(r.Defaults, key(schema, name))
		}
	}); err != nil {
		return err
	}
	return each(ctx, q, "rules", rulesSQL, oids, []any{&oid}, func() {
		if r := byOID[oid]; r != nil {
			r.HasRules = true
		}
	})
}

// LoadConn loads the catalog in one read-only repeatable-read transaction on
// conn, so that every query sees the same snapshot of the schema.
func LoadConn(ctx context.Context, conn *pgx.Conn, opts Options) (*rewriter.Catalog, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("catalog: begin: %w", err)
	}
	// Read-only: rolling back is the cheapest way to end it.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	return Load(ctx, tx, opts)
}

func key(schema, name string) string { return schema + "." + name }

// loadNames runs a query of one text column and returns its values as a set.
func loadNames(ctx context.Context, q Querier, what, sql string, args ...any) (map[string]bool, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("catalog: %s: %w", what, err)
	}
	names := map[string]bool{}
	var name string
	if _, err := pgx.ForEachRow(rows, []any{&name}, func() error {
		names[name] = true
		return nil
	}); err != nil {
		return nil, fmt.Errorf("catalog: %s: %w", what, err)
	}
	return names, nil
}

func queryRow(ctx context.Context, q Querier, sql string, dst ...any) error {
	rows, err := q.Query(ctx, sql)
	if err != nil {
		return err
	}
	_, err = pgx.CollectExactlyOneRow(rows, func(row pgx.CollectableRow) (struct{}, error) {
		return struct{}{}, row.Scan(dst...)
	})
	return err
}

// each runs sql with one argument and calls fn after scanning each row into dst.
func each(ctx context.Context, q Querier, what, sql string, arg any, dst []any, fn func()) error {
	rows, err := q.Query(ctx, sql, arg)
	if err != nil {
		return fmt.Errorf("catalog: %s: %w", what, err)
	}
	if _, err := pgx.ForEachRow(rows, dst, func() error { fn(); return nil }); err != nil {
		return fmt.Errorf("catalog: %s: %w", what, err)
	}
	return nil
}

// languageRisk orders languages by what a call can do that tenantguard
// cannot see: builtins, then SQL (its body can be read), then PL/pgSQL, then
// anything else (other procedural languages, C, untrusted languages).
func languageRisk(lang string) int {
	switch lang {
	case "internal":
		return 0
	case "sql":
		return 1
	case "plpgsql":
		return 2
	}
	return 3
}

// kindRisk orders function kinds: a procedure may commit and run anything,
// a plain function may run SQL, aggregates and window functions rarely do.
func kindRisk(kind string) int {
	switch kind {
	case "a":
		return 0
	case "w":
		return 1
	case "f":
		return 2
	}
	return 3
}

// mergeFunction adds f to the catalog, merging overloads of one name as
// rewriter.Function promises: the riskiest language and kind win, the flags
// are ORed, and the bodies are joined (in identity-argument order) so that
// whatever any overload reads is visible.
func mergeFunction(cat *rewriter.Catalog, f *rewriter.Function) {
	k := key(f.Schema, f.Name)
	old, ok := cat.Functions[k]
	if !ok {
		cat.Functions[k] = f
		return
	}
	if languageRisk(f.Language) > languageRisk(old.Language) {
		old.Language = f.Language
	}
	if kindRisk(f.Kind) > kindRisk(old.Kind) {
		old.Kind = f.Kind
	}
	old.SecurityDefiner = old.SecurityDefiner || f.SecurityDefiner
	old.ReturnsSet = old.ReturnsSet || f.ReturnsSet
	switch {
	case f.Body == "":
	case old.Body == "":
		old.Body = f.Body
	default:
		// A line holding ";" keeps joined SQL bodies parseable (a
		// trailing -- comment ends at the newline before it).
		old.Body = strings.TrimRight(old.Body, "\n") + "\n;\n" + f.Body
	}
}
