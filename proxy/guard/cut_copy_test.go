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
	send := func(msgs ...pgproto3.FrontendMessage) string { return sendTypes(t, fe, msgs...) }
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

// TestCutFailsLaterCopyIn: a COPY FROM STDIN later in a cut simple Query
// would leave the server waiting for data the client, told the Query
// failed, never sends: the guard fails the COPY upstream itself, the client
// sees the 54000 and ReadyForQuery, and the session goes on.
func TestCutFailsLaterCopyIn(t *testing.T) {
	e := startRowGuard5(t)
	fe, _ := rawSession(t, e)
	// clinics is no tenant table: the COPY is allowed and starts upstream.
	// COPY FROM into patients is refused (42501) and never starts.
	for _, q := range []string{"COPY clinics FROM STDIN", "COPY patients (full_name) FROM STDIN"} {
		require.Equal(t, "TDEZ", sendTypes(t, fe, &pgproto3.Query{String: cutQuery + "; " + q}), q)
		require.Equal(t, "TDCZ", sendTypes(t, fe, &pgproto3.Query{String: "SELECT 1"}), q)
	}
	var copies []string
	for _, l := range strings.Split(e.audit.String(), "\n") {
		if strings.Contains(l, `"statement":"COPY`) {
			copies = append(copies, l)
		}
	}
	require.Len(t, copies, 2, "both COPYs are audited: %s", e.audit.String())
	require.Contains(t, copies[0], `"sqlstate":"57014"`, "the guard failed the COPY upstream: %s", copies[0])
	require.Contains(t, copies[1], `"decision":"rejected"`, "the refusal is audited as one: %s", copies[1])
	require.Contains(t, copies[1], `"sqlstate":"42501"`, "%s", copies[1])
}

// sendTypes sends msgs and returns the types of the messages received up to
// ReadyForQuery, a run of DataRows as one D. Unlike receiveUntilReady it
// shows every type, COPY messages included.
func sendTypes(t *testing.T, fe *pgproto3.Frontend, msgs ...pgproto3.FrontendMessage) string {
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
