package guard_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
)

// TestRandomSessionSequences drives one raw session (pinned to tenant 2,
// max_rows 5) through seeded random sequences of client actions: simple and
// extended-protocol cycles, several pipelined in one flush, transaction
// control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ROLLBACK TO SAVEPOINT),
// statements the row guard cuts, statements tenantguard refuses (an
// unbounded read, a write into another tenant), scoped reads, writes and
// errors. It keeps a model of the transaction as the client sees it and
// checks, after every flush:
//
//   - every Query and Sync gets exactly one ReadyForQuery, within the
//     session's deadline: after each flush an empty Query (answered
//     EmptyQueryResponse in any transaction state, so told from any other
//     cycle's reply) must be answered next;
//   - every row carries tenant 2's marker, and no run of rows is longer
//     than max_rows; a cycle whose over-limit query runs (nothing before
//     it in the cycle can fail, and any block is sound) ends with 54000,
//     also when the query's portal is read by two Executes of 4 rows;
//   - the server's transaction state is what the client was told: after a
//     ReadyForQuery 'E' (not recovered by ROLLBACK TO SAVEPOINT) a statement
//     gets 25P02 and COMMIT answers ROLLBACK; in a sound block COMMIT
//     answers COMMIT without a warning; outside one, with the 25P01
//     warning;
//   - writes of a transaction the client saw fail are not visible after
//     it ends, and writes the client saw commit are.
//
// Transaction control is sent alone in its cycle and never pipelined after
// a cut in the same flush: a cycle the client pipelined behind a cut one
// runs before the guard fails the transaction (README, Known limitations),
// which no client-side model can make exact. Everything else may follow a
// cut in the same flush. Seeds are fixed (1 to 8); a failure prints the
// seed and the last actions and replies.
func TestRandomSessionSequences(t *testing.T) {
	e := startRowGuard5(t)
	for _, seed := range seqSeeds(t) {
		t.Run("seed"+strconv.FormatUint(seed, 10), func(t *testing.T) {
			runSequence(t, e, seed, 200)
		})
	}
}

// seqStmt is one statement of a generated cycle.
type seqStmt struct {
	sql   string
	kind  string // read, cut, refused, error, write, tx
	write int    // the write's id (kind write)
	tx    string // begin, commit, rollback, savepoint, rollbackto (kind tx)
	name  string // the savepoint's name
}

// seqCycle is one Query, or one Parse/Bind/Execute... Sync run.
type seqCycle struct {
	extended bool
	stmts    []seqStmt
}

// seqReply is what the client read for one cycle.
type seqReply struct {
	types   string   // message types, a run of DataRow as one 'D', NoticeResponse 'N', EmptyQueryResponse 'I'
	tags    []string // CommandComplete tags
	errs    []string // SQLSTATEs
	notices []string // SQLSTATEs of NoticeResponses
	rows    []string // first column of every row
	longest int      // longest run of DataRows
	status  byte
}

func receiveCycle(t *testing.T, fe *pgproto3.Frontend) seqReply {
	t.Helper()
	var r seqReply
	run := 0
	for {
		m, err := fe.Receive()
		require.NoError(t, err, "a ReadyForQuery within the session deadline")
		if _, ok := m.(*pgproto3.DataRow); !ok {
			run = 0
		}
		switch m := m.(type) {
		case *pgproto3.ParseComplete:
			r.types += "1"
		case *pgproto3.BindComplete:
			r.types += "2"
		case *pgproto3.RowDescription:
			r.types += "T"
		case *pgproto3.NoData:
			r.types += "n"
		case *pgproto3.DataRow:
			if run == 0 {
				r.types += "D"
			}
			run++
			r.longest = max(r.longest, run)
			r.rows = append(r.rows, string(m.Values[0]))
		case *pgproto3.CommandComplete:
			r.types += "C"
			r.tags = append(r.tags, string(m.CommandTag))
		case *pgproto3.EmptyQueryResponse:
			r.types += "I"
		case *pgproto3.NoticeResponse:
			r.types += "N"
			r.notices = append(r.notices, m.Code)
		case *pgproto3.ErrorResponse:
			r.types += "E"
			r.errs = append(r.errs, m.Code)
		case *pgproto3.ReadyForQuery:
			r.types += "Z"
			r.status = m.TxStatus
			return r
		default:
			r.types += "?"
		}
	}
}

// seqModel is the transaction as the client was told of it.
type seqModel struct {
	inTx, failed bool
	live         []int // writes of the open transaction, in order
	savepoints   []struct {
		name string
		mark int
	}
	committed, doomed map[int]bool
}

func (m *seqModel) end(commit bool) {
	for _, w := range m.live {
		if commit {
			m.committed[w] = true
		} else {
			m.doomed[w] = true
		}
	}
	m.inTx, m.failed, m.live, m.savepoints = false, false, nil, nil
}

func runSequence(t *testing.T, e *env, seed uint64, batches int) {
	rng := rand.New(rand.NewPCG(seed, 0x7e5a))
	fe, _ := rawSession(t, e)
	m := &seqModel{committed: map[int]bool{}, doomed: map[int]bool{}}
	nextWrite := int(seed) * 10000
	spSeq := 0
	var trace []string
	fail := func(format string, args ...any) {
		t.Helper()
		last := trace
		if len(last) > 60 {
			last = last[len(last)-60:]
		}
		t.Fatalf("seed %d: %s\nlast actions:\n  %s", seed, fmt.Sprintf(format, args...), strings.Join(last, "\n  "))
	}

	plain := func() seqStmt {
		switch rng.IntN(10) {
		case 0:
			return seqStmt{sql: "SELECT full_name FROM patients WHERE id = 4", kind: "read"}
		case 1:
			return seqStmt{sql: "SELECT full_name FROM patients WHERE id = 3", kind: "read"} // tenant 3's: no row
		case 2:
			return seqStmt{sql: "SELECT full_name FROM patients ORDER BY id LIMIT 3", kind: "read"}
		case 3, 4:
			return seqStmt{sql: cutQuery, kind: "cut"}
		case 5:
			if rng.IntN(2) == 0 {
				return seqStmt{sql: "SELECT full_name FROM patients", kind: "refused"}
			}
			return seqStmt{sql: "UPDATE patients SET clinic_id = 3 WHERE id = 4", kind: "refused"}
		case 6:
			return seqStmt{sql: "SELECT 1/0", kind: "error"}
		default:
			nextWrite++
			return seqStmt{sql: fmt.Sprintf("INSERT INTO patients (id, full_name, status) VALUES (%d, 'w%d TENANT2', 'new')", nextWrite, nextWrite),
				kind: "write", write: nextWrite}
		}
	}
	txStmt := func() seqStmt {
		switch rng.IntN(6) {
		case 0:
			return seqStmt{sql: "BEGIN", kind: "tx", tx: "begin"}
		case 1:
			return seqStmt{sql: "COMMIT", kind: "tx", tx: "commit"}
		case 2:
			return seqStmt{sql: "ROLLBACK", kind: "tx", tx: "rollback"}
		case 3:
			spSeq++
			n := "sp" + strconv.Itoa(spSeq)
			return seqStmt{sql: "SAVEPOINT " + n, kind: "tx", tx: "savepoint", name: n}
		default:
			n := "sp0" // no such savepoint: an error
			if k := len(m.savepoints); k > 0 && rng.IntN(5) > 0 {
				n = m.savepoints[rng.IntN(k)].name
			}
			return seqStmt{sql: "ROLLBACK TO SAVEPOINT " + n, kind: "tx", tx: "rollbackto", name: n}
		}
	}

	// apply updates the model with one cycle's reply and checks it.
	apply := func(c seqCycle, r seqReply) {
		t.Helper()
		for _, row := range r.rows {
			if !strings.Contains(row, "TENANT2") || strings.Contains(row, "TENANT1") || strings.Contains(row, "TENANT3") || strings.Contains(row, "NOTENANT") {
				fail("a row without tenant 2's marker alone reached the client")
			}
		}
		if r.longest > 5 {
			fail("%d rows in a run, max_rows is 5 (reply %s)", r.longest, r.types)
		}
		// A cut statement that runs (nothing before it in the cycle can
		// fail, and the block, if any, is sound) is cut: the cycle ends
		// with 54000.
		expectCut := !(m.inTx && m.failed)
		hasCut := false
		for _, s := range c.stmts {
			if s.kind == "cut" {
				hasCut = true
				break
			}
			expectCut = expectCut && (s.kind == "read" || s.kind == "write")
		}
		if hasCut && expectCut && (len(r.errs) != 1 || r.errs[0] != "54000") {
			fail("the cycle's over-limit query was not cut: %s %v, %d rows", r.types, r.errs, len(r.rows))
		}
		if r.status != 'I' && r.status != 'T' && r.status != 'E' {
			fail("bad status %q", r.status)
		}
		if len(c.stmts) == 1 && c.stmts[0].kind == "tx" {
			s := c.stmts[0]
			ok := len(r.errs) == 0
			switch s.tx {
			case "begin":
				if ok && r.status == 'T' {
					m.inTx = true
				}
			case "commit":
				want, warn := "COMMIT", false
				switch {
				case !m.inTx:
					warn = true
				case m.failed:
					want = "ROLLBACK"
				}
				if !ok || len(r.tags) != 1 || r.tags[0] != want || (len(r.notices) > 0) != warn || r.status != 'I' {
					fail("COMMIT (model: in block %v, failed %v) answered %s tags %v notices %v errors %v status %c, want %s",
						m.inTx, m.failed, r.types, r.tags, r.notices, r.errs, r.status, want)
				}
				m.end(want == "COMMIT")
			case "rollback":
				if r.status != 'I' {
					fail("ROLLBACK left status %c", r.status)
				}
				m.end(false)
			case "savepoint":
				if ok && r.status == 'T' {
					m.savepoints = append(m.savepoints, struct {
						name string
						mark int
					}{s.name, len(m.live)})
				}
			case "rollbackto":
				if ok && r.status == 'T' {
					i := len(m.savepoints) - 1
					for i >= 0 && m.savepoints[i].name != s.name {
						i--
					}
					if i < 0 {
						fail("ROLLBACK TO a savepoint the model does not know succeeded")
					}
					mark := m.savepoints[i].mark
					for _, w := range m.live[mark:] {
						m.doomed[w] = true
					}
					m.live = m.live[:mark]
					m.savepoints = m.savepoints[:i+1]
					m.failed = false
				}
			}
		} else {
			// No transaction control in the cycle: its writes are in the
			// open block, or in their own implicit transaction.
			for _, s := range c.stmts {
				if s.kind != "write" {
					continue
				}
				if m.inTx {
					m.live = append(m.live, s.write)
				} else if len(c.stmts) == 1 && len(r.errs) == 0 && r.status == 'I' {
					m.committed[s.write] = true
				}
			}
		}
		switch r.status {
		case 'I':
			if m.inTx {
				fail("status I while the model has a block open (reply %s)", r.types)
			}
		case 'T', 'E':
			if !m.inTx {
				fail("status %c while the model has no block open (reply %s)", r.status, r.types)
			}
			if r.status == 'E' {
				m.failed = true
			}
		}
	}

	for b := 0; b < batches; b++ {
		n := 1 + rng.IntN(4)
		var cycles []seqCycle
		cutSent := false
		for i := 0; i < n; i++ {
			c := seqCycle{extended: rng.IntN(2) == 0}
			if !cutSent && rng.IntN(3) == 0 {
				c.stmts = []seqStmt{txStmt()}
			} else {
				k := 1 + rng.IntN(3)
				for j := 0; j < k; j++ {
					s := plain()
					cutSent = cutSent || s.kind == "cut"
					c.stmts = append(c.stmts, s)
				}
			}
			cycles = append(cycles, c)
		}
		for _, c := range cycles {
			var sqls []string
			for _, s := range c.stmts {
				sqls = append(sqls, s.sql)
			}
			if c.extended {
				for i, s := range sqls {
					fe.Send(&pgproto3.Parse{Query: s})
					fe.Send(&pgproto3.Bind{})
					if c.stmts[i].kind == "cut" && rng.IntN(2) == 0 {
						// In two parts: the row guard counts the portal's
						// rows across Executes.
						fe.Send(&pgproto3.Execute{MaxRows: 4})
						sqls[i] += " (Execute 4, Execute 4)"
						fe.Send(&pgproto3.Execute{MaxRows: 4})
						continue
					}
					fe.Send(&pgproto3.Execute{})
				}
				fe.Send(&pgproto3.Sync{})
				trace = append(trace, fmt.Sprintf("batch %d: extended [%s]", b, strings.Join(sqls, " | ")))
			} else {
				fe.Send(&pgproto3.Query{String: strings.Join(sqls, "; ")})
				trace = append(trace, fmt.Sprintf("batch %d: query %q", b, strings.Join(sqls, "; ")))
			}
		}
		require.NoError(t, fe.Flush())
		for _, c := range cycles {
			r := receiveCycle(t, fe)
			trace = append(trace, fmt.Sprintf("  -> %s %v %c", r.types, r.errs, r.status))
			apply(c, r)
		}

		// The probe: the next reply is its own, and says what the model
		// says of the server's transaction.
		// An empty Query first: its reply (EmptyQueryResponse) is told
		// from any other cycle's, whatever the transaction's state.
		fe.Send(&pgproto3.Query{String: ""})
		fe.Send(&pgproto3.Query{String: "SELECT 1"})
		require.NoError(t, fe.Flush())
		r := receiveCycle(t, fe)
		trace = append(trace, fmt.Sprintf("empty probe -> %s %v %c", r.types, r.errs, r.status))
		if r.types != "IZ" {
			fail("a reply cycle the client did not ask for: %s %v %c", r.types, r.errs, r.status)
		}
		r = receiveCycle(t, fe)
		trace = append(trace, fmt.Sprintf("probe -> %s %v %c", r.types, r.errs, r.status))
		switch {
		case m.inTx && m.failed:
			if r.types != "EZ" || r.errs[0] != "25P02" || r.status != 'E' {
				fail("the client was told its block failed; SELECT 1 answered %s %v %c", r.types, r.errs, r.status)
			}
		case m.inTx:
			if r.types != "TDCZ" || r.status != 'T' {
				fail("the block is sound for the client; SELECT 1 answered %s %v %c", r.types, r.errs, r.status)
			}
		default:
			if r.types != "TDCZ" || r.status != 'I' {
				fail("no block for the client; SELECT 1 answered %s %v %c", r.types, r.errs, r.status)
			}
		}
	}

	// End any block and compare the writes with what the client was told.
	if m.inTx {
		fe.Send(&pgproto3.Query{String: "ROLLBACK"})
		require.NoError(t, fe.Flush())
		r := receiveCycle(t, fe)
		require.Equal(t, "CZ", r.types)
		m.end(false)
	}
	rows, err := e.direct(t).Query(ctx(t), "SELECT id FROM patients WHERE id > $1 AND id <= $2", int(seed)*10000, int(seed)*10000+9999)
	require.NoError(t, err)
	visible := map[int]bool{}
	for rows.Next() {
		var id int
		require.NoError(t, rows.Scan(&id))
		visible[id] = true
	}
	require.NoError(t, rows.Err())
	for w := range m.doomed {
		if visible[w] {
			fail("write %d is visible, though its transaction failed or rolled back for the client", w)
		}
	}
	for w := range m.committed {
		if !visible[w] {
			fail("write %d is not visible, though the client saw it commit", w)
		}
	}
	t.Logf("seed %d: %d batches, %d writes committed, %d rolled back", seed, batches, len(m.committed), len(m.doomed))
}

// seqSeeds are the seeds TestRandomSessionSequences runs: 1 to 8, or 1 to
// TENANTGUARD_TEST_SEQ_SEEDS for a longer run.
func seqSeeds(t *testing.T) []uint64 {
	n := 8
	if v := os.Getenv("TENANTGUARD_TEST_SEQ_SEEDS"); v != "" {
		var err error
		n, err = strconv.Atoi(v)
		require.NoError(t, err, "TENANTGUARD_TEST_SEQ_SEEDS")
	}
	seeds := make([]uint64, n)
	for i := range seeds {
		seeds[i] = uint64(i + 1)
	}
	return seeds
}
