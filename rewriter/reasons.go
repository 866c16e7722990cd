package rewriter

import (
	"fmt"

	"github.com/tenantguard/tenantguard/policy"
)

// Reasons of decisions. They are stable: audit events and the
// tenantguard_rejections_total{reason} metric carry them.
const (
	ReasonScoped            = "scoped"             // tenant relations scoped (inject) or verified (verify)
	ReasonNoTenantRelation  = "no_tenant_relation" // touches no tenant relation
	ReasonTenantSetting     = "tenant_setting"     // changes the tenant setting
	ReasonTransaction       = "transaction"        // transaction control
	ReasonUtility           = "utility"            // harmless utility statement
	ReasonRoleAllowed       = "role_allowed"       // allowed by a right of the role (ddl, truncate, copy_from, do)
	ReasonBypass            = "bypass"             // role with bypass: forwarded unchanged
	ReasonNoTenant          = "no_tenant"          // tenant relation but no (valid) tenant
	ReasonUnscoped          = "unscoped"           // verify: a tenant relation is not constrained
	ReasonCrossTenant       = "cross_tenant"       // verify: constrained to another tenant
	ReasonCrossTenantWrite  = "cross_tenant_write" // a write would produce or touch another tenant's row
	ReasonUnbounded         = "unbounded"          // result not bounded by max_rows
	ReasonOffset            = "offset"             // OFFSET above the bound
	ReasonUnsupported       = "unsupported"        // construct that cannot be proven safe
	ReasonDeniedStatement   = "denied_statement"   // statement the role may not run
	ReasonDeniedFunction    = "denied_function"    // function the role may not call
	ReasonDeniedRelation    = "denied_relation"    // system view that leaks other sessions or statistics
	ReasonUnknownRelation   = "unknown_relation"   // relation the (complete) catalog does not list
	ReasonUnknownFunction   = "unknown_function"   // unqualified function or operator neither builtin nor in the (complete) catalog
	ReasonDeniedSetting     = "denied_setting"     // setting that changes roles or the parser's reading
	ReasonTenantTamper      = "tenant_tamper"      // tenant setting changed from inside another statement
	ReasonInvalidTenant     = "invalid_tenant"     // SET of a value that is not of the tenant type
	ReasonParseError        = "parse_error"        // the parser refused the statement
	ReasonMultipleStatement = "multiple_statements"
	ReasonInternal          = "internal_error" // a bug: fail closed
)

// SQLSTATEs of rejections.
const (
	stateInsufficientPrivilege = "42501"
	stateProgramLimitExceeded  = "54000"
	stateFeatureNotSupported   = "0A000"
	stateSyntaxError           = "42601"
)

// rejection builds the client-facing error for a reason. subject is an
// identifier (relation, function, setting or statement name) or "" — never a
// literal of the statement. This is the one place that maps reasons to
// SQLSTATE, message and hint.
func rejection(reason, subject string, pol *policy.Policy) *Error {
	s := subject
	setting := pol.Tenant.Setting
	maxRows := pol.Limits.MaxRows
	switch reason {
	case ReasonNoTenant:
		return &Error{stateInsufficientPrivilege,
			"tenantguard: no tenant is set for a statement on tenant relation " + s,
			"set the tenant first with SET " + setting + ", or connect with it as a startup parameter"}
	case ReasonInvalidTenant:
		return &Error{stateInsufficientPrivilege,
			"tenantguard: the tenant value is not of the policy's tenant type",
			"use a value of the tenant type configured in the policy"}
	case ReasonUnscoped:
		return &Error{stateInsufficientPrivilege,
			"tenantguard: tenant relation " + s + " is not constrained to the session's tenant",
			"add " + s + ".<tenant column> = current_setting('" + setting + "') (or the tenant value, or a parameter bound to it) as a top-level AND condition where " + s + " appears (its WHERE, or the ON clause of the outer join whose nullable side it is)"}
	case ReasonCrossTenant:
		return &Error{stateInsufficientPrivilege,
			"tenantguard: tenant relation " + s + " is constrained to a tenant other than the session's",
			"constrain " + s + " to the session's tenant"}
	case ReasonCrossTenantWrite:
		return &Error{stateInsufficientPrivilege,
			"tenantguard: the statement could write a row of another tenant in " + s,
			"omit the tenant column (tenantguard sets it) or set it to the session's tenant"}
	case ReasonUnbounded:
		return &Error{stateProgramLimitExceeded,
			"tenantguard: the result of this query on tenant relations is not bounded",
			fmt.Sprintf("add LIMIT <= %d, an aggregate without GROUP BY, or equality on a unique key", maxRows)}
	case ReasonOffset:
		return &Error{stateProgramLimitExceeded,
			"tenantguard: OFFSET is above the allowed bound",
			"paginate with a keyset condition instead of a large OFFSET"}
	case ReasonUnsupported:
		return &Error{stateFeatureNotSupported,
			"tenantguard: cannot prove this statement safe: " + s,
			"rewrite the statement in a simpler form, or use database row-level security for it"}
	case ReasonDeniedStatement:
		return &Error{stateInsufficientPrivilege,
			"tenantguard: statement " + s + " is not allowed for this role",
			"grant the right in the policy's roles section, or run it with a migration role"}
	case ReasonDeniedFunction:
		return &Error{stateInsufficientPrivilege,
			"tenantguard: function " + s + " is not allowed for this role",
			"list it under roles.<user>.functions in the policy if it is safe, or use database row-level security inside it"}
	case ReasonUnknownRelation:
		return &Error{stateFeatureNotSupported,
			"tenantguard: relation " + s + " is not in tenantguard's catalog of the upstream",
			"a relation created since the catalog was loaded (or a temporary one) may read tenant data and is refused until the catalog lists it; tenantguard reloads it now: retry in a moment"}
	case ReasonUnknownFunction:
		return &Error{stateFeatureNotSupported,
			"tenantguard: " + s + " is not in tenantguard's catalog of the upstream",
			"check the name (r.name that is not a column of r reads as a function call); a function or operator created since the catalog was loaded is refused until the catalog lists it and it can be checked; tenantguard reloads it now: retry in a moment"}
	case ReasonDeniedRelation:
		return &Error{stateInsufficientPrivilege,
			"tenantguard: relation " + s + " is not allowed for this role",
			"system views that expose other sessions or column statistics are refused; use a bypass role"}
	case ReasonDeniedSetting:
		return &Error{stateInsufficientPrivilege,
			"tenantguard: changing setting " + s + " is not allowed",
			"this setting changes the role or how statements are read; set it in the connection string of a bypass role"}
	case ReasonTenantTamper:
		return &Error{stateInsufficientPrivilege,
			"tenantguard: the tenant setting may only be changed by SET, RESET or a SELECT set_config(...) of its own",
			"change the tenant with SET " + setting + " or SELECT set_config(...) as a statement of its own"}
	case ReasonParseError:
		return &Error{stateSyntaxError,
			"tenantguard: the statement could not be parsed",
			"check the statement's syntax; tenantguard refuses what it cannot parse"}
	case ReasonMultipleStatement:
		return &Error{stateSyntaxError,
			"tenantguard: a prepared statement must hold exactly one statement",
			"send one statement per Parse message"}
	}
	return &Error{stateFeatureNotSupported,
		"tenantguard: internal error while deciding the statement",
		"report this statement to the tenantguard maintainers"}
}
