package rewriter

import (
	"errors"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/tenantguard/tenantguard/policy"
)

// errTenantValue is returned for a tenant value that is not of the policy's
// tenant type. It names no value.
var errTenantValue = errors.New("rewriter: tenant value is not of the tenant type")

// CanonicalTenant validates v against the tenant type t and returns its
// canonical text form (decimal without sign noise for integers, lower-case
// hyphenated for uuid, unchanged for text).
func CanonicalTenant(t policy.TenantType, v string) (string, error) {
	switch t {
	case policy.TypeInteger, "":
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 32)
		if err != nil {
			return "", errTenantValue
		}
		return strconv.FormatInt(n, 10), nil
	case policy.TypeBigint:
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return "", errTenantValue
		}
		return strconv.FormatInt(n, 10), nil
	case policy.TypeUUID:
		return canonicalUUID(v)
	case policy.TypeText:
		if strings.IndexByte(v, 0) >= 0 {
			return "", errTenantValue
		}
		return v, nil
	}
	return "", errTenantValue
}

// canonicalUUID accepts the input forms of PostgreSQL's uuid_in that matter
// in practice (hyphenated or not, optional braces, any case).
func canonicalUUID(v string) (string, error) {
	s := strings.TrimSpace(v)
	if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
		s = s[1 : len(s)-1]
	}
	hex := make([]byte, 0, 32)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
			hex = append(hex, c)
		case c >= 'A' && c <= 'F':
			hex = append(hex, c+('a'-'A'))
		case c == '-':
		default:
			return "", errTenantValue
		}
	}
	if len(hex) != 32 {
		return "", errTenantValue
	}
	h := string(hex)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32], nil
}

// renderTenant renders a canonical tenant as a typed SQL literal for the
// simple protocol. Text literals use E” quoting with both quotes and
// backslashes escaped, which reads the same whatever
// standard_conforming_strings is.
func renderTenant(t policy.TenantType, canon string) string {
	switch t {
	case policy.TypeUUID:
		return "'" + canon + "'::uuid"
	case policy.TypeText:
		if strings.ContainsAny(canon, `\`) {
			esc := strings.ReplaceAll(strings.ReplaceAll(canon, `\`, `\\`), `'`, `''`)
			return "E'" + esc + "'::text"
		}
		return "'" + strings.ReplaceAll(canon, `'`, `''`) + "'::text"
	default:
		return canon
	}
}

// tenantTypeName is the TypeName node for casts to the tenant type.
func tenantTypeName(t policy.TenantType) *pg.TypeName {
	switch t {
	case policy.TypeBigint:
		return &pg.TypeName{Names: []*pg.Node{pg.MakeStrNode("pg_catalog"), pg.MakeStrNode("int8")}, Typemod: -1}
	case policy.TypeUUID:
		return &pg.TypeName{Names: []*pg.Node{pg.MakeStrNode("uuid")}, Typemod: -1}
	case policy.TypeText:
		return &pg.TypeName{Names: []*pg.Node{pg.MakeStrNode("text")}, Typemod: -1}
	default:
		return &pg.TypeName{Names: []*pg.Node{pg.MakeStrNode("pg_catalog"), pg.MakeStrNode("int4")}, Typemod: -1}
	}
}
