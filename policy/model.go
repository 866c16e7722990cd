// Package policy owns tenantguard's policy model: the YAML file that says which
// relations are tenant-scoped, how the tenant is carried and checked, and what
// each database role may do. It validates a file completely before anything
// uses it, so that an invalid policy never reaches the proxy.
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
