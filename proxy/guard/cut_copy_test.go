package guard_test

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
)

// TestCutDropsLaterCopyOut: after the row guard's 54000 the client sees
// nothing more of the cycle until ReadyForQuery, a COPY TO STDOUT after the
// cut statement included (its CopyOutResponse, CopyData and CopyDone used
// to follow the error; only its CommandComplete was dropped).
func TestCutDropsLaterCopyOut(t *testing.T) {
	e := startRowGuard5(t)
	fe, _ := rawSession(t, e)
	send := func(msgs ...pgproto3.FrontendMessage) string {
		t.Helper()
		for _, m := range msgs {
			fe.Send(m)
		}
		require.NoError(t, fe.Flush())
		types := ""
		for {
			m, err := fe.Receive()
			require.NoError(t, err)
			b, err := m.Encode(nil)
			require.NoError(t, err)
			if b[0] != 'D' || !strings.HasSuffix(types, "D") {
				types += string(b[0])
			}
			if b[0] == 'Z' {
				return types
			}
		}
	}
	for _, q := range []string{"COPY (SELECT 1) TO STDOUT", "COPY patients (full_name) TO STDOUT"} {
		require.Equal(t, "TDEZ", send(&pgproto3.Query{String: cutQuery + "; " + q}), q)
		require.Equal(t, "TDCZ", send(&pgproto3.Query{String: "SELECT 1"}))
	}
	// Extended protocol: the COPY pipelined after the cut statement.
	types := send(&pgproto3.Parse{Query: cutQuery}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "COPY (SELECT 1) TO STDOUT"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	require.Equal(t, "12DEZ", types)
	require.Equal(t, "TDCZ", send(&pgproto3.Query{String: "SELECT 1"}))
}
