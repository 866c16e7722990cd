package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValidateTenant(t *testing.T) {
	cases := []struct {
		typ  TenantType
		in   string
		want string // "" = refused
		msg  string
	}{
		{TypeInteger, "7", "7", ""},
		{TypeInteger, "+7", "7", ""},
		{TypeInteger, "007", "7", ""},
		{TypeInteger, "-3", "-3", ""},
		{TypeInteger, "2147483647", "2147483647", ""},
		{TypeInteger, "2147483648", "", "policy: tenant value is not a valid integer"},
		{TypeInteger, "7 ", "", "policy: tenant value is not a valid integer"},
		{TypeInteger, "1_000", "", "policy: tenant value is not a valid integer"},
		{TypeInteger, "0x10", "", "policy: tenant value is not a valid integer"},
		{TypeInteger, "7 OR 1=1", "", "policy: tenant value is not a valid integer"},
		{TypeInteger, "", "", "policy: tenant value is empty"},
		{TypeBigint, "9223372036854775807", "9223372036854775807", ""},
		{TypeBigint, "9223372036854775808", "", "policy: tenant value is not a valid bigint"},
		{TypeUUID, "0E5B1C2A-1111-4AAA-8BBB-0123456789AB", "0e5b1c2a-1111-4aaa-8bbb-0123456789ab", ""},
		{TypeUUID, "{0e5b1c2a-1111-4aaa-8bbb-0123456789ab}", "", "policy: tenant value is not a valid uuid"},
		{TypeUUID, "0e5b1c2a11114aaa8bbb0123456789ab", "", "policy: tenant value is not a valid uuid"},
		{TypeUUID, "0e5b1c2a-1111-4aaa-8bbb-0123456789ag", "", "policy: tenant value is not a valid uuid"},
		{TypeText, "clinic-7 ü", "clinic-7 ü", ""},
		{TypeText, "a\x00b", "", "policy: tenant value contains a NUL byte"},
		{TypeText, "\xff", "", "policy: tenant value is not valid UTF-8"},
		{"", "12", "12", ""}, // a hand-built Policy without a type is integer
	}
	for _, tc := range cases {
		p := &Policy{Tenant: Tenant{Type: tc.typ}}
		got, err := p.ValidateTenant(tc.in)
		if tc.want == "" {
			require.Error(t, err, "%s %q", tc.typ, tc.in)
			assert.Equal(t, tc.msg, err.Error())
			assert.True(t, errors.Is(err, ErrInvalidTenant))
			if tc.in != "" {
				assert.NotContains(t, err.Error(), tc.in, "the error must not echo the value")
			}
			continue
		}
		require.NoError(t, err, "%s %q", tc.typ, tc.in)
		assert.Equal(t, tc.want, got)
	}
}

func TestRoleAndTableFor(t *testing.T) {
	p, err := Parse([]byte(strings.Join([]string{
		"tables:",
		"  - patients",
		"  - name: billing.patients",
		"    column: org_id",
		"  - clinic.invoices",
		"roles:",
		"  migrator: {bypass: true, functions: [dblink]}",
	}, "\n")), "")
	require.NoError(t, err)

	assert.Equal(t, Role{Bypass: true, Functions: []string{"dblink"}}, p.Role("migrator"))
	assert.Equal(t, Role{}, p.Role("app_user"), "unknown users get no extra rights")

	tb, ok := p.TableFor("billing", "patients")
	require.True(t, ok)
	assert.Equal(t, "org_id", tb.Column, "the schema-qualified entry wins")

	tb, ok = p.TableFor("public", "patients")
	require.True(t, ok)
	assert.Equal(t, Table{Name: "patients", Column: "clinic_id", Strategy: StrategyInject}, tb)

	_, ok = p.TableFor("public", "invoices")
	assert.False(t, ok, "a qualified entry matches its schema only")
	_, ok = p.TableFor("clinic", "invoices")
	assert.True(t, ok)
	_, ok = p.TableFor("public", "Patients")
	assert.False(t, ok, "names are compared as Postgres stores them")
}
