package proxy_test

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

// rewriteHooks exercises the interception points the enforcement layer uses:
// a Query is rewritten, a denied Query is answered by the proxy, DataRows are
// counted without their bytes, CommandComplete is inspected.
type rewriteHooks struct {
	rows      atomic.Int64
	completes atomic.Int64
	started   atomic.Int64
	ended     atomic.Int64
}

func (h *rewriteHooks) OnStartup(s *proxy.Session) error {
	h.started.Add(1)
	s.Params["application_name"] = "rewritten-by-hook"
	return nil
}

func (h *rewriteHooks) OnFrontend(s *proxy.Session, m proxy.Message) (proxy.Verdict, error) {
	if m.Type != proxy.MsgQuery {
		return proxy.Verdict{}, nil
	}
	msg, err := proxy.DecodeFrontend(m.Type, m.Body)
	if err != nil {
		return proxy.Verdict{}, err
	}
	q := msg.(*pgproto3.Query)
	switch q.String {
	case "select 'original'":
		out, _ := (&pgproto3.Query{String: "select 'rewritten'"}).Encode(nil)
		return proxy.Verdict{Replace: out}, nil
	case "select 'denied'":
		if pending, unsynced := s.InFlight(); pending != 0 || unsynced {
			return proxy.Verdict{}, &proxy.ClientError{Response: &pgproto3.ErrorResponse{Severity: "FATAL", Code: "42501", Message: "cannot deny while busy"}}
		}
		reply, _ := (&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42501", Message: "denied by policy"}).Encode(nil)
		reply, _ = (&pgproto3.ReadyForQuery{TxStatus: s.TxStatus()}).Encode(reply)
		return proxy.Verdict{Replace: []byte{}, Reply: reply}, nil
	}
	return proxy.Verdict{}, nil
}

func (h *rewriteHooks) BackendInterest(typ byte) proxy.Interest {
	switch typ {
	case proxy.MsgDataRow:
		return proxy.Notify
	case proxy.MsgCommandComplete:
		return proxy.Inspect
	}
	return proxy.Ignore
}

func (h *rewriteHooks) OnBackend(s *proxy.Session, m proxy.Message) (proxy.Verdict, error) {
	switch m.Type {
	case proxy.MsgDataRow:
		if m.Body != nil {
			panic("DataRow body must not be read for Notify")
		}
		h.rows.Add(1)
	case proxy.MsgCommandComplete:
		if bytes.HasPrefix(m.Body, []byte("SELECT")) {
			h.completes.Add(1)
		}
	}
	return proxy.Verdict{}, nil
}

// OnRows counts a run of DataRows the event loop shows at once.
func (h *rewriteHooks) OnRows(s *proxy.Session, n int) (int, proxy.Verdict, error) {
	h.rows.Add(int64(n))
	return n, proxy.Verdict{}, nil
}

func (h *rewriteHooks) OnEnd(*proxy.Session) { h.ended.Add(1) }

func TestHooks(t *testing.T) {
	h := &rewriteHooks{}
	p := startProxy(t, func(cfg *proxy.Config) { cfg.Hooks = h })
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	ctx := testCtx(t)
	var s string
	require.NoError(t, conn.QueryRow(ctx, "select 'original'", pgx.QueryExecModeSimpleProtocol).Scan(&s))
	assert.Equal(t, "rewritten", s)
	require.NoError(t, conn.QueryRow(ctx, "select current_setting('application_name')").Scan(&s))
	assert.Equal(t, "rewritten-by-hook", s)

	_, err := conn.Exec(ctx, "select 'denied'", pgx.QueryExecModeSimpleProtocol)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "42501", pgErr.Code)

	before := h.rows.Load()
	rows, err := conn.Query(ctx, "select generate_series(1, 100)")
	require.NoError(t, err)
	rows.Close()
	require.NoError(t, rows.Err())
	assert.Equal(t, int64(100), h.rows.Load()-before)
	assert.GreaterOrEqual(t, h.completes.Load(), int64(3))
	conn.Close(ctx)
	waitFor(t, 10*time.Second, "OnEnd", func() bool { return h.ended.Load() == 1 })
	assert.Equal(t, int64(1), h.started.Load())
}
