// Package policy owns tenantguard's policy model: the YAML file that says which
// relations are tenant-scoped, how the tenant is carried and checked, and what
// each database role may do. It validates a file completely before anything
// uses it, so that an invalid policy never reaches the proxy.
//
// # Policy file reference
//
// Every key is optional; an unknown key, a value of the wrong YAML type or
// a value outside its set is an error naming the file, line and key
// (see Error). Defaults:
//
//	version: 1                 # the only version; any other is refused
//	mode: enforce              # enforce | audit
//	strategy: inject           # inject | verify; default of every table
//	tenant:
//	  column: clinic_id        # default tenant column; a SQL name, folded to lower case unless "quoted"
//	  type: integer            # integer (int32) | bigint (int64) | uuid | text
//	  setting: app.clinic_id   # custom setting with a dot; folded to lower case
//	  required: true           # no tenant on a tenant relation: reject
//	tables: []                 # see below; at least one entry unless discover: true
//	discover: false            # opt in: widens the policy from the live schema
//	limits:
//	  max_rows: 100            # integer >= 1
//	  unbounded: reject        # reject | cap
//	roles: {}                  # database user name -> role (all flags false, no functions)
//	redact_errors: true        # redact upstream error text that may echo row values
//
// A tables entry is a name, "patients" (matches in any schema) or
// "schema.table" (that schema only), or a mapping {name, column, strategy}
// whose column defaults to tenant.column and strategy to the top-level
// strategy. Names follow SQL: unquoted parts are folded to lower case, and
// a part written with SQL double quotes inside YAML quotes, '"Mixed Case"',
// keeps its case. A YAML-quoted name with upper-case letters and no SQL
// quotes ("Patients") is refused as ambiguous. An entry listed twice (same
// schema and name after folding) is refused.
//
// A roles entry is a mapping of bypass, ddl, truncate, copy_from, do
// (booleans, default false) and functions (a list of function names, "name"
// or "schema.name", stored folded as "schema.name"/"name").
//
// YAML anchors and aliases are resolved; a file must hold exactly one YAML
// document. testdata/policy/REFERENCE.md has the same reference as a table.
package policy

// Mode says whether decisions are enforced or only logged.
type Mode string

const (
	// ModeEnforce rewrites, verifies and rejects statements.
	ModeEnforce Mode = "enforce"
	// ModeAudit decides and logs every statement but never blocks or rewrites one.
	ModeAudit Mode = "audit"
)

// Strategy says how a tenant relation is scoped.
type Strategy string

const (
	// StrategyInject adds the tenant predicate to every tenant relation.
	StrategyInject Strategy = "inject"
	// StrategyVerify forwards statements unchanged, but only when they already
	// constrain every tenant relation to the session's tenant.
	StrategyVerify Strategy = "verify"
)

// TenantType is the SQL type of the tenant column; tenant values are validated
// against it and rendered as typed literals.
type TenantType string

// Tenant types the policy accepts.
const (
	TypeInteger TenantType = "integer"
	TypeBigint  TenantType = "bigint"
	TypeUUID    TenantType = "uuid"
	TypeText    TenantType = "text"
)

// Unbounded says what happens to a SELECT on tenant relations whose result is
// not provably bounded by limits.max_rows.
type Unbounded string

const (
	// UnboundedReject refuses the statement with SQLSTATE 54000.
	UnboundedReject Unbounded = "reject"
	// UnboundedCap injects a LIMIT of max_rows, or clamps a larger one.
	UnboundedCap Unbounded = "cap"
)

// Policy is a validated policy file. It is immutable once loaded: a reload
// builds a new Policy and swaps the pointer.
type Policy struct {
	Version  int
	Mode     Mode
	Strategy Strategy
	Tenant   Tenant
	// Tables lists the tenant-scoped relations named in the file, in file order.
	Tables []Table
	// Discover treats every upstream table or view that has the tenant column
	// as tenant-scoped too.
	Discover bool
	Limits   Limits
	// Roles is keyed by the database user name of the connection.
	Roles map[string]Role
	// RedactErrors rewrites upstream error messages and details that could echo
	// row values (default true).
	RedactErrors bool
	// Source is the file the policy was read from ("" when parsed from memory).
	Source string
	// Digest is the hex SHA-256 of the file's bytes: it identifies the policy
	// in policy_reload audit events and lets a watcher skip unchanged files.
	Digest string
}

// Tenant describes how the tenant of a connection is carried and checked.
type Tenant struct {
	Column   string     // default tenant column (default "clinic_id")
	Type     TenantType // default "integer"
	Setting  string     // session setting that carries the tenant (default "app.clinic_id")
	Required bool       // a statement on a tenant relation with no tenant is rejected (default true)
}

// Table is a tenant-scoped relation named by the policy.
type Table struct {
	Schema   string   // "" matches the name in any schema
	Name     string   // relation name, as Postgres stores it (unquoted names folded to lower case)
	Column   string   // tenant column of this table (defaults to Tenant.Column)
	Strategy Strategy // defaults to Policy.Strategy
}

// Limits bounds what a statement on tenant relations may return.
type Limits struct {
	MaxRows   int64     // default 100
	Unbounded Unbounded // default "reject"
}

// Role is what a database role may do beyond the defaults for ordinary roles.
type Role struct {
	Bypass        bool     // no enforcement, still audited
	AllowDDL      bool     // yaml: ddl
	AllowTruncate bool     // yaml: truncate
	AllowCopyFrom bool     // yaml: copy_from
	AllowDo       bool     // yaml: do
	Functions     []string // yaml: functions; otherwise denied functions this role may call
}
