package policy

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ErrInvalidTenant is matched (errors.Is) by every error ValidateTenant
// returns.
var ErrInvalidTenant = errors.New("policy: invalid tenant value")

// TenantError says why a tenant value was refused. It never holds or prints
// the value itself: a tenant value may identify a patient's clinic.
type TenantError struct {
	Type   TenantType
	Reason string // e.g. "is not a valid integer"
}

// Error implements error.
func (e *TenantError) Error() string { return "policy: tenant value " + e.Reason }

// Is makes errors.Is(err, ErrInvalidTenant) true.
func (e *TenantError) Is(target error) bool { return target == ErrInvalidTenant }

// ValidateTenant checks a tenant value against tenant.type and returns its
// normalized form, the one tenantguard compares and renders as a literal:
//
//   - integer: a base-10 int32 ("+7", "007" normalize to "7");
//   - bigint: a base-10 int64;
//   - uuid: the canonical 8-4-4-4-12 hex form, any letter case, returned
//     lower-cased (no braces, no missing hyphens);
//   - text: any non-empty valid UTF-8 string without NUL, returned unchanged.
//
// The error never echoes the value.
func (p *Policy) ValidateTenant(v string) (string, error) {
	typ := p.Tenant.Type
	if typ == "" {
		typ = DefaultType
	}
	bad := func(reason string) (string, error) { return "", &TenantError{Type: typ, Reason: reason} }
	if v == "" {
		return bad("is empty")
	}
	switch typ {
	case TypeInteger, TypeBigint:
		bits := 32
		if typ == TypeBigint {
			bits = 64
		}
		// ParseInt accepts an optional sign and decimal digits only: no
		// spaces, underscores or base prefixes.
		n, err := strconv.ParseInt(v, 10, bits)
		if err != nil {
			return bad("is not a valid " + string(typ))
		}
		return strconv.FormatInt(n, 10), nil
	case TypeUUID:
		if len(v) != 36 {
			return bad("is not a valid uuid")
		}
		for i := 0; i < len(v); i++ {
			c := v[i]
			switch i {
			case 8, 13, 18, 23:
				if c != '-' {
					return bad("is not a valid uuid")
				}
			default:
				if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
					return bad("is not a valid uuid")
				}
			}
		}
		return strings.ToLower(v), nil
	case TypeText:
		if !utf8.ValidString(v) {
			return bad("is not valid UTF-8")
		}
		if strings.IndexByte(v, 0) >= 0 {
			return bad("contains a NUL byte")
		}
		return v, nil
	}
	return bad("has an unknown tenant type")
}

// Role returns what the database user may do: its roles entry, or the zero
// Role (full enforcement, nothing extra allowed) when it has none.
func (p *Policy) Role(user string) Role {
	return p.Roles[user]
}

// TableFor returns the policy table for the relation schema.name, as
// Postgres stores the names: an entry naming that schema wins over a bare
// entry (no schema), which matches the name in any schema.
func (p *Policy) TableFor(schema, name string) (Table, bool) {
	bare := -1
	for i, t := range p.Tables {
		if t.Name != name {
			continue
		}
		if t.Schema == schema && schema != "" {
			return t, true
		}
		if t.Schema == "" && bare < 0 {
			bare = i
		}
	}
	if bare >= 0 {
		return p.Tables[bare], true
	}
	return Table{}, false
}
