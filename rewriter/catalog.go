package rewriter

// Catalog is what tenantguard knows of the upstream schema. It is plain data:
// the proxy loads it from pg_catalog (package proxy/catalog), `tenantguard
// check --catalog FILE` reads it from JSON or YAML, and tests build it by hand.
// A nil or empty Catalog means "nothing known": only the policy's own tables
// are tenant relations and no relation or function is vouched for.
//
// Keys of Relations and Functions are "schema.name" exactly as Postgres stores
// the names (unquoted identifiers folded to lower case).
type Catalog struct {
	Relations map[string]*Relation `json:"relations,omitempty" yaml:"relations,omitempty"`
	Functions map[string]*Function `json:"functions,omitempty" yaml:"functions,omitempty"`
	// Operators maps the symbol of every user-defined operator (schema other
	// than pg_catalog) to the functions implementing it ("schema.name"), all
	// overloads together: a use of the symbol is checked as a call of each.
	Operators map[string][]string `json:"operators,omitempty" yaml:"operators,omitempty"`
	// Casts maps a target type name (pg_type.typname) to the user functions
	// ("schema.name") of the casts to it that are implemented by a function
	// outside pg_catalog.
	Casts map[string][]string `json:"casts,omitempty" yaml:"casts,omitempty"`
	// Complete says Relations lists every table, view, materialized view and
	// foreign table of every user schema of the upstream, as the proxy loads
	// it. A complete catalog makes a relation it does not know an unknown
	// one: a statement that reads or writes it is refused (it may be a view
	// over tenant tables created since the catalog was loaded), instead of
	// being taken for a non-tenant relation.
	Complete bool `json:"complete,omitempty" yaml:"complete,omitempty"`
	// Sequences are the user sequences ("schema.name"), which a statement
	// may read as relations (SELECT last_value FROM s): known, not tenant.
	Sequences map[string]bool `json:"sequences,omitempty" yaml:"sequences,omitempty"`
	// SystemRelations are the relation names of pg_catalog, which an
	// unqualified name reaches first (with a complete catalog).
	SystemRelations map[string]bool `json:"system_relations,omitempty" yaml:"system_relations,omitempty"`
	// SystemFunctions are the function names of pg_catalog: with a complete
	// catalog, an unqualified call of any other name that the catalog does
	// not list is refused (a function created since the catalog was loaded
	// would otherwise pass as a builtin).
	SystemFunctions map[string]bool `json:"system_functions,omitempty" yaml:"system_functions,omitempty"`
	// TypeNames are the names of all types (builtin and user): name(x) with
	// a type's name is a cast, which PostgreSQL accepts without a function
	// of that name (uuid('...'), jsonb('{}'), an enum's name).
	TypeNames map[string]bool `json:"type_names,omitempty" yaml:"type_names,omitempty"`
	// SystemOperators are the operator symbols of pg_catalog: with a
	// complete catalog, any other symbol that Operators does not list is
	// refused (its functions could not be checked).
	SystemOperators map[string]bool `json:"system_operators,omitempty" yaml:"system_operators,omitempty"`
}

// RelKind is the kind of a relation, after pg_class.relkind.
type RelKind string

// Relation kinds.
const (
	KindTable       RelKind = "table"             // r
	KindPartitioned RelKind = "partitioned_table" // p
	KindView        RelKind = "view"              // v
	KindMatView     RelKind = "materialized_view" // m
	KindForeign     RelKind = "foreign_table"     // f
	KindSequence    RelKind = "sequence"          // S (Catalog.Sequences)
)

// Relation is one table, view or other relation of the upstream.
type Relation struct {
	Schema  string   `json:"schema" yaml:"schema"`
	Name    string   `json:"name" yaml:"name"`
	Kind    RelKind  `json:"kind" yaml:"kind"`
	Columns []string `json:"columns,omitempty" yaml:"columns,omitempty"`
	// NotNull lists the columns declared NOT NULL.
	NotNull []string `json:"not_null,omitempty" yaml:"not_null,omitempty"`
	// Parents are inheritance parents or the partitioned parent ("schema.name").
	Parents []string `json:"parents,omitempty" yaml:"parents,omitempty"`
	// Children are inheritance children and partitions ("schema.name").
	Children []string `json:"children,omitempty" yaml:"children,omitempty"`
	// Reads lists, for views and materialized views, the relations the
	// definition reads ("schema.name"), from pg_depend/pg_rewrite.
	Reads []string `json:"reads,omitempty" yaml:"reads,omitempty"`
	// UniqueKeys lists the primary key and every unique index without a
	// predicate or expression, each as its column names.
	UniqueKeys [][]string `json:"unique_keys,omitempty" yaml:"unique_keys,omitempty"`
	// Indexes lists the column names of every index (for doctor).
	Indexes [][]string `json:"indexes,omitempty" yaml:"indexes,omitempty"`
	// RLSEnabled and RLSForced mirror relrowsecurity and relforcerowsecurity.
	RLSEnabled bool `json:"rls_enabled,omitempty" yaml:"rls_enabled,omitempty"`
	RLSForced  bool `json:"rls_forced,omitempty" yaml:"rls_forced,omitempty"`
	// Triggers lists the functions ("schema.name") of the relation's enabled
	// user triggers (pg_trigger, not tgisinternal).
	Triggers []string `json:"triggers,omitempty" yaml:"triggers,omitempty"`
	// Defaults lists the functions ("schema.name") that column defaults and
	// generated columns call.
	Defaults []string `json:"defaults,omitempty" yaml:"defaults,omitempty"`
	// HasRules is true when the relation has a rewrite rule other than a
	// view's _RETURN rule (CREATE RULE ... DO ALSO/INSTEAD).
	HasRules bool `json:"has_rules,omitempty" yaml:"has_rules,omitempty"`
}

// Function is one user-visible function or procedure (overloads merged: the
// most dangerous language and attributes win).
type Function struct {
	Schema string `json:"schema" yaml:"schema"`
	Name   string `json:"name" yaml:"name"`
	// Language is pg_language.lanname: internal, c, sql, plpgsql, ...
	Language string `json:"language" yaml:"language"`
	// Kind is f (function), p (procedure), a (aggregate) or w (window).
	Kind            string `json:"kind,omitempty" yaml:"kind,omitempty"`
	SecurityDefiner bool   `json:"security_definer,omitempty" yaml:"security_definer,omitempty"`
	ReturnsSet      bool   `json:"returns_set,omitempty" yaml:"returns_set,omitempty"`
	// Body is prosrc for sql and procedural languages, or the SQL-standard
	// body (BEGIN ATOMIC ... END / RETURN ...). Overloads' bodies are joined
	// by a line holding ";" so that SQL bodies still parse. It is never
	// logged.
	Body string `json:"body,omitempty" yaml:"body,omitempty"`
}
