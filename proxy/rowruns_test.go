package proxy_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

// cutHooks cuts every result at limit rows with an ErrorResponse and drops
// the rest of the result, as the guard's row guard does.
type cutHooks struct {
	mu      sync.Mutex
	limit   int
	seen    int
	cutting bool
	calls   int
}

func (h *cutHooks) OnStartup(*proxy.Session) error { return nil }
func (h *cutHooks) OnFrontend(*proxy.Session, proxy.Message) (proxy.Verdict, error) {
	return proxy.Verdict{}, nil
}
func (h *cutHooks) BackendInterest(typ byte) proxy.Interest {
	switch typ {
	case proxy.MsgDataRow:
		return proxy.Notify
	case proxy.MsgCommandComplete, proxy.MsgReadyForQuery:
		return proxy.Inspect
	}
	return proxy.Ignore
}

var cutErr, _ = (&pgproto3.ErrorResponse{Severity: "ERROR", Code: "54000", Message: "cut"}).Encode(nil)

func (h *cutHooks) row() proxy.Verdict {
	if h.cutting {
		return proxy.Verdict{Replace: []byte{}}
	}
	h.seen++
	if h.seen > h.limit {
		h.cutting = true
		return proxy.Verdict{Replace: cutErr}
	}
	return proxy.Verdict{}
}

func (h *cutHooks) OnBackend(s *proxy.Session, m proxy.Message) (proxy.Verdict, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch m.Type {
	case proxy.MsgDataRow:
		h.calls++
		return h.row(), nil
	case proxy.MsgCommandComplete:
		if h.cutting {
			return proxy.Verdict{Replace: []byte{}}, nil
		}
	case proxy.MsgReadyForQuery:
		h.seen, h.cutting = 0, false
	}
	return proxy.Verdict{}, nil
}
func (h *cutHooks) OnEnd(*proxy.Session) {}

type cutCounter struct{ *cutHooks }

func (h cutCounter) OnRows(s *proxy.Session, n int) (int, proxy.Verdict, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	for i := 0; i < n; i++ {
		if v := h.row(); v.Replace != nil {
			return i, v, nil
		}
	}
	return n, proxy.Verdict{}, nil
}

// TestRowRunsCutLikeRows: with and without RowCounter, a result cut at
// limit rows reaches the client as exactly limit rows and the error, for
// row sizes that split rows across reads.
func TestRowRunsCutLikeRows(t *testing.T) {
	for _, counter := range []bool{false, true} {
		h := &cutHooks{limit: 37}
		var hooks proxy.Hooks = h
		if counter {
			hooks = cutCounter{h}
		}
		p := startProxy(t, func(cfg *proxy.Config) { cfg.Hooks = hooks })
		conn := p.connect(t, pgtest.SuperUser, "", "postgres")
		waitFor(t, 10*time.Second, "the session in the loop", func() bool { return !loopsOn(t, p) || p.srv.LoopSessions() == 1 })
		hj, err := conn.PgConn().Hijack()
		require.NoError(t, err)
		require.NoError(t, hj.Conn.SetDeadline(time.Now().Add(30*time.Second)))
		fe := hj.Frontend
		for _, size := range []int{1, 7, 100, 1000, 3000, 8170, 9000, 20000} {
			for _, total := range []int{36, 37, 38, 200} {
				fe.Send(&pgproto3.Query{String: fmt.Sprintf("SELECT repeat('x', %d) || g FROM generate_series(1, %d) g", size, total)})
				require.NoError(t, fe.Flush())
				rows, errs, cc := 0, 0, 0
				for done := false; !done; {
					m, err := fe.Receive()
					require.NoError(t, err)
					switch m := m.(type) {
					case *pgproto3.DataRow:
						require.Equal(t, fmt.Sprintf("%d", rows+1), string(m.Values[0][size:]), "rows in order")
						rows++
					case *pgproto3.ErrorResponse:
						errs++
					case *pgproto3.CommandComplete:
						cc++
					case *pgproto3.ReadyForQuery:
						done = true
					}
				}
				if total <= 37 {
					require.Equal(t, [3]int{total, 0, 1}, [3]int{rows, errs, cc}, "counter %v size %d total %d", counter, size, total)
				} else {
					require.Equal(t, [3]int{37, 1, 0}, [3]int{rows, errs, cc}, "counter %v size %d total %d", counter, size, total)
				}
			}
		}
		h.mu.Lock()
		if counter && loopsOn(t, p) {
			// 8 sizes x (36+37+38+200) rows = 2488 rows sent (the relay
			// goroutines make one call a row): the loop shows them in runs.
			require.Less(t, h.calls, 2488, "the event loop shows rows in runs")
		}
		t.Logf("counter %v: %d hook calls", counter, h.calls)
		h.mu.Unlock()
		hj.Conn.Close()
	}
}
