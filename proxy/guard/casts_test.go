package guard_test

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestTenantValueCastsRefused: through the proxy and a real server, a cast
// that changes the tenant's value is not taken as the tenant's.
// '12'::varchar(1)::int is 1: tenant 12 wrote a row of tenant 1 before
// (rewriter.TestTenantValueCasts), in every protocol mode.
func TestTenantValueCastsRefused(t *testing.T) {
	e := start(t, basePolicy)
	conn := e.connect(t, "12")
	direct := e.direct(t)
	for _, m := range modes {
		for _, sql := range []string{
			"INSERT INTO patients (clinic_id, full_name) VALUES ('12'::varchar(1)::int, 'cast-probe')",
			"INSERT INTO patients (clinic_id, full_name) VALUES (current_setting('app.clinic_id')::char(1)::int, 'cast-probe')",
			"UPDATE patients SET clinic_id = '12'::varchar(1)::int WHERE id = 1",
		} {
			_, err := conn.Exec(ctx(t), sql, m.mode)
			tenantErr(t, err, "42501")
		}
		// A cast that keeps the value is the tenant's.
		_, err := conn.Exec(ctx(t), "SELECT count(*) FROM patients WHERE clinic_id = '12'::text::int", m.mode)
		require.NoError(t, err, m.name)
	}
	var n int
	require.NoError(t, direct.QueryRow(ctx(t), "SELECT count(*) FROM patients WHERE full_name = 'cast-probe'").Scan(&n))
	require.Zero(t, n, "rows written through a value-changing cast")
}
