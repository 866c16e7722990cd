package guard_test

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
)

// TestRecycledPortalsCountTheirOwnRows: row-guard counts of portals (unnamed,
// named, suspended, across cycles and a transaction) are never carried
// into a later portal, and a suspended portal's count goes on across its
// Executes; one pipelined write of many cycles.
func TestRecycledPortalsCountTheirOwnRows(t *testing.T) {
	e := startRowGuard5(t)
	fe, send := rawSession(t, e)
	const q = "SELECT full_name FROM patients WHERE status = 'active' ORDER BY id"
	require.Equal(t, "1Z", send(&pgproto3.Parse{Name: "s", Query: q}, &pgproto3.Sync{}).types)
	// Many idle cycles, each a fresh unnamed portal returning 3 rows (max_rows 5):
	// a recycled portal that kept its count would be cut at the second.
	for i := 0; i < 6; i++ {
		fe.Send(&pgproto3.Bind{PreparedStatement: "s"})
		fe.Send(&pgproto3.Execute{MaxRows: 3})
		fe.Send(&pgproto3.Sync{})
	}
	require.NoError(t, fe.Flush())
	for i := 0; i < 6; i++ {
		r := receiveUntilReady(t, fe)
		require.Equal(t, "2DsZ", r.types, "cycle %d: %v", i, r.errs)
		require.Len(t, r.rows, 3, "cycle %d", i)
	}
	// In a transaction: the portal survives Sync, its count goes on across
	// suspensions: 3 + 2, then the 6th row is cut.
	require.Equal(t, "CZ", send(&pgproto3.Query{String: "BEGIN"}).types)
	require.Len(t, send(&pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{MaxRows: 3}, &pgproto3.Sync{}).rows, 3)
	r := send(&pgproto3.Execute{MaxRows: 3}, &pgproto3.Sync{})
	require.Equal(t, "DEZ", r.types)
	require.Len(t, r.rows, 2)
	require.Equal(t, "54000", r.errs[0].Code)
	require.Equal(t, "CZ", send(&pgproto3.Query{String: "ROLLBACK"}).types)
	// Named and unnamed portals interleaved in one cycle, then the next
	// cycle reuses the (recycled) unnamed portal.
	r = send(&pgproto3.Bind{PreparedStatement: "s", DestinationPortal: "p1"}, &pgproto3.Bind{PreparedStatement: "s"},
		&pgproto3.Execute{Portal: "p1", MaxRows: 2}, &pgproto3.Execute{MaxRows: 2}, &pgproto3.Execute{Portal: "p1", MaxRows: 2},
		&pgproto3.Close{ObjectType: 'P', Name: "p1"}, &pgproto3.Sync{})
	require.Equal(t, "22DsDsDs3Z", r.types, "%v", r.errs)
	require.Len(t, r.rows, 6)
	for i := 0; i < 3; i++ {
		r = send(&pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{MaxRows: 3}, &pgproto3.Sync{})
		require.Equal(t, "2DsZ", r.types)
		require.Len(t, r.rows, 3)
	}
	// The whole result of one Execute: exactly max_rows rows, then 54000.
	r = send(&pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	require.Equal(t, "2DEZ", r.types)
	require.Len(t, r.rows, 5)
	require.Equal(t, "TDCZ", send(&pgproto3.Query{String: "SELECT 1"}).types)
}
