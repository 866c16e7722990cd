package guard_test

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests from a review of abortAfterCut (475c6a4), whose first version sent
// the guard's abort Query upstream at the cut cycle's ReadyForQuery, after
// every cycle the client had pipelined behind it: what it met there (a
// failed block, a second abort, copy-in mode) broke the session. The abort
// now waits until nothing of the client's is in flight and goes upstream in
// front of the client's next message.

// untilRollback sends ROLLBACK and reads cycles until the one that answers
// it (a CommandComplete, then ReadyForQuery 'I'), returning the cycles that
// came before it: replies the client never asked for.
func untilRollback(t *testing.T, fe *pgproto3.Frontend) []received {
	t.Helper()
	fe.Send(&pgproto3.Query{String: "ROLLBACK"})
	require.NoError(t, fe.Flush())
	var extra []received
	for {
		r := receiveUntilReady(t, fe)
		if r.types == "CZ" && r.status == 'I' {
			return extra
		}
		extra = append(extra, r)
		require.Less(t, len(extra), 5, "no answer to ROLLBACK")
	}
}

func describe(rs []received) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.types + "(" + string(r.status) + ")")
		for _, e := range r.errs {
			b.WriteString(" " + e.Code + ": " + e.Message)
		}
		b.WriteString("; ")
	}
	return b.String()
}

// TestCutThenPipelinedErrorInATransaction: a cut cycle in a transaction
// block, then (pipelined, so upstream before the guard's abort Query) a
// cycle that fails. The abort Query then meets a failed transaction: the
// server answers 25P02, which does not name the sentinel, so the guard
// forwards it and its ReadyForQuery as a client cycle's. The client gets a
// reply cycle it never asked for, and the guard counts one ReadyForQuery
// more than it sent Query/Sync: every later statement is taken for one the
// server skipped (its cycle is older than backCycle), so the row guard no
// longer counts rows and a result over max_rows reaches the client whole.
func TestCutThenPipelinedErrorInATransaction(t *testing.T) {
	for _, proto := range []string{"simple", "extended"} {
		t.Run(proto, func(t *testing.T) {
			e := startRowGuard5(t)
			fe, send := rawSession(t, e)
			r := send(&pgproto3.Query{String: "BEGIN"})
			require.Equal(t, "CZ", r.types)
			if proto == "simple" {
				fe.Send(&pgproto3.Query{String: cutQuery})
				fe.Send(&pgproto3.Query{String: "SELECT 1/0"})
			} else {
				for _, q := range []string{cutQuery, "SELECT 1/0"} {
					fe.Send(&pgproto3.Parse{Query: q})
					fe.Send(&pgproto3.Bind{})
					fe.Send(&pgproto3.Execute{})
					fe.Send(&pgproto3.Sync{})
				}
			}
			require.NoError(t, fe.Flush())
			r = receiveUntilReady(t, fe)
			require.Equal(t, "54000", r.errs[0].Code)
			require.Equal(t, byte('E'), r.status)
			r = receiveUntilReady(t, fe)
			require.Equal(t, "22012", r.errs[0].Code)
			require.Equal(t, byte('E'), r.status)

			extra := untilRollback(t, fe)
			// Now in step with what the client asked for (ROLLBACK answered).
			r = send(&pgproto3.Query{String: cutQuery})
			assert.Empty(t, extra, "replies to no message of the client's: %s", describe(extra))
			assert.Equal(t, "TDEZ", r.types, "the row guard cuts the next over-limit result (got %d rows)", len(r.rows))
			assert.LessOrEqual(t, len(r.rows), 5, "limits.max_rows is 5")
			onlyMarker(t, "2", r.rows)
		})
	}
}

// TestTwoPipelinedCutsInATransaction: two cut cycles pipelined in a
// transaction block. The second cut's abort Query replaces c.aborting, so
// the first abort Query's error ("function tg_reject_<nonce>_..() does not
// exist") is not recognised: the guard forwards it to the client (the
// process nonce with it), then its ReadyForQuery; the second abort Query
// meets the failed transaction (25P02) and is forwarded too.
func TestTwoPipelinedCutsInATransaction(t *testing.T) {
	e := startRowGuard5(t)
	fe, send := rawSession(t, e)
	require.Equal(t, "CZ", send(&pgproto3.Query{String: "BEGIN"}).types)
	fe.Send(&pgproto3.Query{String: cutQuery})
	fe.Send(&pgproto3.Query{String: cutQuery})
	require.NoError(t, fe.Flush())
	for i := 0; i < 2; i++ {
		r := receiveUntilReady(t, fe)
		require.Equal(t, "TDEZ", r.types, "cut %d: %v", i, r.errs)
		require.Equal(t, byte('E'), r.status)
	}
	extra := untilRollback(t, fe)
	assert.NotContains(t, describe(extra), "tg_reject_", "the guard's own sentinel (and nonce) reaches the client")
	assert.Empty(t, extra, "replies to no message of the client's: %s", describe(extra))
	r := send(&pgproto3.Query{String: cutQuery})
	assert.Equal(t, "TDEZ", r.types, "the row guard cuts the next over-limit result (got %d rows)", len(r.rows))
}

// TestErrorWithoutExecuteThenPipelinedCycle: found by
// TestRandomSessionSequences; older than abortAfterCut. An error in a cycle
// that queued no statement (a Parse or Bind that fails, as a driver's
// prepare can; a refused Parse whose sentinel meets a failed transaction
// and is answered 25P02, not naming the sentinel) makes onError pop the
// head of the queue: a statement of the next, pipelined cycle, audited as
// failed. Every later completion of that cycle is then matched with the
// statement after its own, and the rows of the over-limit query are
// counted against nothing: its whole result reaches the client.
func TestErrorWithoutExecuteThenPipelinedCycle(t *testing.T) {
	for _, tc := range []struct {
		name   string
		failed bool // in a failed transaction block
		first  []pgproto3.FrontendMessage
	}{
		{"bind", false, []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT full_name FROM patients WHERE id = $1"}, &pgproto3.Bind{Parameters: param("abc")}, &pgproto3.Sync{}}},
		{"parse", false, []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT 1::nosuchtype"}, &pgproto3.Sync{}}},
		{"refused update", true, []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "UPDATE patients SET clinic_id = 3 WHERE id = 4"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}}},
		{"refused read", true, []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT full_name FROM patients"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startRowGuard5(t)
			fe, send := rawSession(t, e)
			if tc.failed {
				require.Equal(t, "CZ", send(&pgproto3.Query{String: "BEGIN"}).types)
				require.Equal(t, byte('E'), send(&pgproto3.Query{String: "SELECT 1/0"}).status)
			}
			for _, m := range tc.first {
				fe.Send(m)
			}
			if tc.failed {
				fe.Send(&pgproto3.Query{String: "ROLLBACK"})
			}
			fe.Send(&pgproto3.Query{String: cutQuery})
			require.NoError(t, fe.Flush())
			r := receiveUntilReady(t, fe)
			require.Len(t, r.errs, 1, r.types)
			first := r.errs[0].Code
			if tc.failed {
				require.Equal(t, "25P02", r.errs[0].Code)
				r = receiveUntilReady(t, fe)
				require.Equal(t, "CZ", r.types)
				require.Equal(t, byte('I'), r.status)
			}
			r = receiveUntilReady(t, fe)
			assert.Equal(t, "TDEZ", r.types, "the row guard cuts the result (got %d rows)", len(r.rows))
			assert.LessOrEqual(t, len(r.rows), 5, "limits.max_rows is 5")
			for _, l := range strings.Split(e.audit.String(), "\n") {
				if strings.Contains(l, `"statement":"ROLLBACK"`) {
					assert.NotContains(t, l, `"sqlstate"`, "the ROLLBACK did not fail: %s", l)
				}
				if strings.Contains(l, `status = `) {
					assert.NotContains(t, l, `"sqlstate":"`+first+`"`, "the earlier cycle's error is not the cut query's: %s", l)
				}
			}
		})
	}
}

// TestCutThenPipelinedCopyInATransaction: a COPY FROM STDIN pipelined
// behind a cut cycle in a transaction block is in copy-in mode upstream
// when the guard's abort Query arrives: the server fails the COPY with
// 08P01 ("unexpected message type 0x51 during COPY from stdin") and then
// ends the connection ("protocol synchronization was lost", FATAL). Before
// 475c6a4 the session went on; the client did nothing wrong.
func TestCutThenPipelinedCopyInATransaction(t *testing.T) {
	e := startRowGuard5(t)
	fe, send := rawSession(t, e)
	require.Equal(t, "CZ", send(&pgproto3.Query{String: "BEGIN"}).types)
	fe.Send(&pgproto3.Query{String: cutQuery})
	fe.Send(&pgproto3.Query{String: "COPY clinics FROM STDIN"}) // clinics is no tenant table
	require.NoError(t, fe.Flush())
	r := receiveUntilReady(t, fe)
	require.Equal(t, "TDEZ", r.types)
	m, err := fe.Receive()
	require.NoError(t, err)
	require.IsType(t, &pgproto3.CopyInResponse{}, m)
	fe.Send(&pgproto3.CopyData{Data: []byte("77\tcopied\n")})
	fe.Send(&pgproto3.CopyDone{})
	require.NoError(t, fe.Flush())
	var fatal []string
	for {
		m, err := fe.Receive()
		require.NoError(t, err, "the session ended: %v", fatal)
		if er, ok := m.(*pgproto3.ErrorResponse); ok && er.Severity == "FATAL" {
			fatal = append(fatal, er.Code+": "+er.Message)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	require.Empty(t, fatal)
	r = send(&pgproto3.Query{String: "ROLLBACK"})
	require.Equal(t, "CZ", r.types)
}

// TestCutThenCommitInTheSameCycle pins a documented limit (README, Known
// limitations): a COMMIT later in the cut cycle itself (one simple Query,
// or one extended-protocol batch up to Sync) is already upstream when the
// result is cut, and runs: the block's writes commit, though the client was
// told the cycle failed, and the ReadyForQuery says 'I' (in PostgreSQL the
// error would have stopped the cycle before the COMMIT). Nothing more is
// sent: the guard's abort is only for a block left open.
func TestCutThenCommitInTheSameCycle(t *testing.T) {
	e := startRowGuard5(t)
	_, send := rawSession(t, e)
	email := func() string { return patient4Email(t, e) }
	for _, proto := range []string{"simple", "extended"} {
		t.Run(proto, func(t *testing.T) {
			r := send(&pgproto3.Query{String: "BEGIN; UPDATE patients SET email = 'before-cut-" + proto + "' WHERE id = 4"})
			require.Equal(t, "CCZ", r.types)
			if proto == "simple" {
				r = send(&pgproto3.Query{String: cutQuery + "; COMMIT"})
			} else {
				r = send(&pgproto3.Parse{Query: cutQuery}, &pgproto3.Bind{}, &pgproto3.Execute{},
					&pgproto3.Parse{Query: "COMMIT"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
			}
			require.Len(t, r.errs, 1, r.types)
			require.Equal(t, "54000", r.errs[0].Code)
			require.Equal(t, "I", string(r.status), "the COMMIT ran upstream")
			require.Equal(t, "before-cut-"+proto, email(), "the documented limit: the block's write committed")
			r = send(&pgproto3.Query{String: "SELECT 1"})
			require.Equal(t, "TDCZ", r.types, "no abort is pending for a block that ended: %v", r.errs)
		})
	}
}
