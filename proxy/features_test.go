package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

func TestCopyBothDirections(t *testing.T) {
	p := startProxy(t, nil)
	db := newDB(t, p.c)
	conn := p.connect(t, pgtest.SuperUser, "", db)
	ctx := testCtx(t)
	_, err := conn.Exec(ctx, "create table items(id int primary key, name text, note text)")
	require.NoError(t, err)

	// Binary COPY FROM through pgx.CopyFrom.
	rows := make([][]any, 5000)
	for i := range rows {
		rows[i] = []any{i, fmt.Sprintf("name-%d", i), nil}
	}
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"id", "name", "note"}, pgx.CopyFromRows(rows))
	require.NoError(t, err)
	assert.Equal(t, int64(5000), n)

	// Text and CSV COPY FROM STDIN.
	tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("10000\tten thousand\t\\N\n10001\tx\ty\n"), "copy items from stdin")
	require.NoError(t, err)
	assert.Equal(t, int64(2), tag.RowsAffected())
	tag, err = conn.PgConn().CopyFrom(ctx, strings.NewReader("20000,\"a,b\",\"q\"\"uote\"\n"), "copy items from stdin with (format csv)")
	require.NoError(t, err)
	assert.Equal(t, int64(1), tag.RowsAffected())

	// A failing COPY FROM (bad data) reports the server's error and the
	// session stays usable.
	_, err = conn.PgConn().CopyFrom(ctx, strings.NewReader("not-a-number\tx\ty\n"), "copy items from stdin")
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "22P02", pgErr.Code)

	// COPY TO STDOUT in text, csv and binary.
	var buf bytes.Buffer
	tag, err = conn.PgConn().CopyTo(ctx, &buf, "copy (select * from items where id >= 10000 order by id) to stdout")
	require.NoError(t, err)
	assert.Equal(t, int64(3), tag.RowsAffected())
	assert.Equal(t, "10000\tten thousand\t\\N\n10001\tx\ty\n20000\ta,b\tq\"uote\n", buf.String())
	buf.Reset()
	_, err = conn.PgConn().CopyTo(ctx, &buf, "copy (select id, name from items where id = 20000) to stdout with (format csv)")
	require.NoError(t, err)
	assert.Equal(t, "20000,\"a,b\"\n", buf.String())
	buf.Reset()
	tag, err = conn.PgConn().CopyTo(ctx, &buf, "copy items to stdout with (format binary)")
	require.NoError(t, err)
	assert.Equal(t, int64(5003), tag.RowsAffected())
	assert.True(t, bytes.HasPrefix(buf.Bytes(), []byte("PGCOPY\n\xff\r\n\x00")))

	var count int
	require.NoError(t, conn.QueryRow(ctx, "select count(*) from items").Scan(&count))
	assert.Equal(t, 5003, count)
}

func TestListenNotify(t *testing.T) {
	p := startProxy(t, nil)
	listener := p.connect(t, pgtest.SuperUser, "", "postgres")
	ctx := testCtx(t)
	_, err := listener.Exec(ctx, "listen tg_channel")
	require.NoError(t, err)
	// Notify from a direct connection: the notification arrives through the
	// proxy while the listener is idle.
	direct := directConn(t, p.c, "postgres")
	_, err = direct.Exec(ctx, "select pg_notify('tg_channel', 'payload-1')")
	require.NoError(t, err)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := listener.WaitForNotification(wctx)
	require.NoError(t, err)
	assert.Equal(t, "tg_channel", n.Channel)
	assert.Equal(t, "payload-1", n.Payload)
}

func TestCancelThroughProxy(t *testing.T) {
	c := pgtest.Shared(t)
	for _, tc := range []struct {
		name  string
		mod   func(*proxy.Config)
		query []string
	}{
		{"plain", nil, nil},
		{"TLS both legs", both(withClientTLS(c), withUpstreamTLS(c)), []string{"sslmode", "require"}},
	} {
		t.Run(tc.name, func(t *testing.T) { testCancel(t, startProxy(t, tc.mod), tc.query) })
	}
}

func testCancel(t *testing.T, p *testProxy, query []string) {
	cfg, err := pgx.ParseConfig(p.url(pgtest.SuperUser, "", "postgres", query...))
	require.NoError(t, err)
	// pgx's default on cancellation only sets a socket deadline; this
	// handler sends a CancelRequest, which the proxy must route.
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 9 * time.Second}
	}
	conn, err := pgx.ConnectConfig(testCtx(t), cfg)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	_, err = conn.Exec(ctx, "select pg_sleep(10)")
	require.Error(t, err)
	// pgx cancels through a CancelRequest routed by the proxy; the server
	// reports query_canceled.
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr, "got %v", err)
	assert.Equal(t, "57014", pgErr.Code)
	// 57014 proves the cancel reached the upstream: pg_sleep otherwise ends without error.
	// The session survives the cancel.
	var n int
	require.NoError(t, conn.QueryRow(testCtx(t), "select 7").Scan(&n))
	assert.Equal(t, 7, n)
}

// TestPortalSuspension drives the extended protocol by hand: Execute with a
// row limit returns PortalSuspended, and a second Execute continues.
func TestPortalSuspension(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	ctx := testCtx(t)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	pc := conn.PgConn()
	// Hijack the connection for raw protocol work.
	hj, err := pc.Hijack()
	require.NoError(t, err)
	defer hj.Conn.Close()
	fe := hj.Frontend
	fe.Send(&pgproto3.Parse{Name: "s1", Query: "select g from generate_series(1, 5) g"})
	fe.Send(&pgproto3.Bind{DestinationPortal: "p1", PreparedStatement: "s1"})
	fe.Send(&pgproto3.Execute{Portal: "p1", MaxRows: 2})
	fe.Send(&pgproto3.Flush{})
	require.NoError(t, fe.Flush())
	readUntil := func(stop func(pgproto3.BackendMessage) bool) []string {
		var got []string
		require.NoError(t, hj.Conn.SetReadDeadline(time.Now().Add(10*time.Second)))
		for {
			m, err := fe.Receive()
			require.NoError(t, err)
			switch m := m.(type) {
			case *pgproto3.DataRow:
				got = append(got, string(m.Values[0]))
			case *pgproto3.ErrorResponse:
				t.Fatalf("error: %s", m.Message)
			}
			if stop(m) {
				return got
			}
		}
	}
	got := readUntil(func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.PortalSuspended); return ok })
	assert.Equal(t, []string{"1", "2"}, got)
	fe.Send(&pgproto3.Execute{Portal: "p1", MaxRows: 2})
	fe.Send(&pgproto3.Execute{Portal: "p1"})
	fe.Send(&pgproto3.Sync{})
	require.NoError(t, fe.Flush())
	got = readUntil(func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ReadyForQuery); return ok })
	assert.Equal(t, []string{"3", "4", "5"}, got)
	fe.Send(&pgproto3.Terminate{})
	require.NoError(t, fe.Flush())
}

func TestFunctionCallRelayed(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	ctx := testCtx(t)
	var oid uint32
	require.NoError(t, conn.QueryRow(ctx, "select 'int4pl'::regproc::oid").Scan(&oid))
	hj, err := conn.PgConn().Hijack()
	require.NoError(t, err)
	defer hj.Conn.Close()
	fe := hj.Frontend
	fe.Send(&pgproto3.FunctionCall{Function: oid, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{{0, 0, 0, 2}, {0, 0, 0, 40}}, ResultFormatCode: 1})
	require.NoError(t, fe.Flush())
	require.NoError(t, hj.Conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	var result []byte
	for {
		m, err := fe.Receive()
		require.NoError(t, err)
		if r, ok := m.(*pgproto3.FunctionCallResponse); ok {
			result = append([]byte(nil), r.Result...)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	assert.Equal(t, []byte{0, 0, 0, 42}, result)
}

// backendPIDs returns the pids of backends of application_name app.
func backendPIDs(t *testing.T, direct *pgx.Conn, app string) []int {
	t.Helper()
	rows, err := direct.Query(testCtx(t), "select pid from pg_stat_activity where application_name = $1", app)
	require.NoError(t, err)
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	return pids
}

func TestClientDisconnectMidQueryCancelsUpstream(t *testing.T) {
	p := startProxy(t, nil)
	direct := directConn(t, p.c, "postgres")
	ctx := testCtx(t)
	// A raw client, so that closing its socket is abrupt (no Terminate).
	nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port))
	require.NoError(t, err)
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "postgres", "database": "postgres", "application_name": "tg-disconnect"}})
	require.NoError(t, fe.Flush())
	require.NoError(t, nc.SetReadDeadline(time.Now().Add(10*time.Second)))
	for {
		m, err := fe.Receive()
		require.NoError(t, err)
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	fe.Send(&pgproto3.Query{String: "select pg_sleep(60)"})
	require.NoError(t, fe.Flush())
	waitFor(t, 10*time.Second, "the query to run upstream", func() bool {
		var n int
		require.NoError(t, direct.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name = 'tg-disconnect' and state = 'active'").Scan(&n))
		return n == 1
	})
	require.NoError(t, nc.Close())
	waitFor(t, 20*time.Second, "the upstream backend to go away", func() bool {
		return len(backendPIDs(t, direct, "tg-disconnect")) == 0
	})
	waitFor(t, 10*time.Second, "the session to end", func() bool { return p.srv.ActiveSessions() == 0 })
}

func TestUpstreamTerminatedClientSeesError(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, pgtest.SuperUser, "", "postgres", "application_name", "tg-victim")
	direct := directConn(t, p.c, "postgres")
	ctx := testCtx(t)
	var one int
	require.NoError(t, conn.QueryRow(ctx, "select 1").Scan(&one))
	pids := backendPIDs(t, direct, "tg-victim")
	require.Len(t, pids, 1)
	_, err := direct.Exec(ctx, "select pg_terminate_backend($1)", pids[0])
	require.NoError(t, err)
	err = conn.QueryRow(ctx, "select 1").Scan(&one)
	require.Error(t, err)
	waitFor(t, 10*time.Second, "the proxy session to end", func() bool { return p.srv.ActiveSessions() == 0 })
	assert.True(t, conn.IsClosed())
}

// TestUpstreamLostMidQuery: the upstream socket dies without a FATAL from the
// server, which a real PostgreSQL does not do on purpose, so a scripted fake
// backend plays the upstream: the client must get SQLSTATE 08006.
func TestUpstreamLostMidQuery(t *testing.T) {
	port := upstreamThatDies(t) // after the query, without a FATAL
	p := startProxy(t, func(cfg *proxy.Config) { cfg.Upstream.Port = port })
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	_, err := conn.Exec(testCtx(t), "select 1", pgx.QueryExecModeSimpleProtocol)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "08006", pgErr.Code)
	waitFor(t, 10*time.Second, "the proxy session to end", func() bool { return p.srv.ActiveSessions() == 0 })
}
