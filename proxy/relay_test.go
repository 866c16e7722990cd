package proxy_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

func TestSimpleQueryMultiStatement(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	ctx := testCtx(t)
	results, err := conn.PgConn().Exec(ctx, "select 1 as a; select 'two' as b, 3 as c; create temp table t(x int); insert into t values (1),(2)").ReadAll()
	require.NoError(t, err)
	require.Len(t, results, 4)
	assert.Equal(t, [][][]byte{{[]byte("1")}}, results[0].Rows)
	assert.Equal(t, [][][]byte{{[]byte("two"), []byte("3")}}, results[1].Rows)
	assert.Equal(t, "CREATE TABLE", results[2].CommandTag.String())
	assert.Equal(t, "INSERT 0 2", results[3].CommandTag.String())

	// An error in the middle of a multi-statement query stops it, and the
	// session stays usable.
	_, err = conn.PgConn().Exec(ctx, "select 1; select 1/0; select 3").ReadAll()
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "22012", pgErr.Code)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "select count(*) from t").Scan(&n))
	assert.Equal(t, 2, n)
}

func TestExtendedProtocolModes(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	ctx := testCtx(t)
	modes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			var s string
			var n int64
			var f float64
			var b []byte
			err := conn.QueryRow(ctx, "select $1::text || 'x', $2::int8 * 2, $3::float8, $4::bytea", mode, "ab", int64(21), 1.5, []byte{0, 1, 2}).Scan(&s, &n, &f, &b)
			require.NoError(t, err)
			assert.Equal(t, "abx", s)
			assert.Equal(t, int64(42), n)
			assert.Equal(t, 1.5, f)
			assert.Equal(t, []byte{0, 1, 2}, b)
			rows, err := conn.Query(ctx, "select g from generate_series(1, $1::int) g", mode, 1000)
			require.NoError(t, err)
			sum := 0
			for rows.Next() {
				var g int
				require.NoError(t, rows.Scan(&g))
				sum += g
			}
			require.NoError(t, rows.Err())
			assert.Equal(t, 500500, sum)
		})
	}
}

func TestBinaryAndTextFormats(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	ctx := testCtx(t)
	// Text result format via ExecParams with explicit format codes.
	res := conn.PgConn().ExecParams(ctx, "select $1::int4, $2::text", [][]byte{{0, 0, 0, 7}, []byte("hi")}, nil, []int16{1, 0}, []int16{0, 1}).Read()
	require.NoError(t, res.Err)
	require.Len(t, res.Rows, 1)
	assert.Equal(t, []byte("7"), res.Rows[0][0])
	assert.Equal(t, []byte("hi"), res.Rows[0][1])
	res = conn.PgConn().ExecParams(ctx, "select 7::int4", nil, nil, nil, []int16{1}).Read()
	require.NoError(t, res.Err)
	assert.Equal(t, []byte{0, 0, 0, 7}, res.Rows[0][0])
}

func TestBatchPipelining(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, pgtest.SuperUser, "", "postgres")
	ctx := testCtx(t)
	batch := &pgx.Batch{}
	for i := 0; i < 200; i++ {
		batch.Queue("select $1::int + 1", i)
	}
	batch.Queue("select 1/0")
	br := conn.SendBatch(ctx, batch)
	for i := 0; i < 200; i++ {
		var n int
		require.NoError(t, br.QueryRow().Scan(&n))
		require.Equal(t, i+1, n)
	}
	var n int
	err := br.QueryRow().Scan(&n)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "22012", pgErr.Code)
	_ = br.Close() // repeats the batch's error
	require.NoError(t, conn.QueryRow(ctx, "select 9").Scan(&n))
	assert.Equal(t, 9, n)

	// pgconn pipeline mode: several Syncs in flight at once.
	pl := conn.PgConn().StartPipeline(ctx)
	pl.SendQueryParams("select $1::text", [][]byte{[]byte("a")}, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams("select $1::text", [][]byte{[]byte("b")}, nil, nil, nil)
	pl.SendPipelineSync()
	require.NoError(t, pl.Flush())
	var got []string
	for {
		r, err := pl.GetResults()
		require.NoError(t, err)
		if r == nil {
			break
		}
		if rr, ok := r.(*pgconn.ResultReader); ok {
			res := rr.Read()
			require.NoError(t, res.Err)
			got = append(got, string(res.Rows[0][0]))
		}
		if len(got) == 2 {
			if _, ok := r.(*pgconn.PipelineSync); ok {
				break
			}
		}
	}
	require.NoError(t, pl.Close())
	assert.Equal(t, []string{"a", "b"}, got)
}

func TestParameterStatusAndNotice(t *testing.T) {
	p := startProxy(t, nil)
	var notices []string
	ctx := testCtx(t)
	cfg, err := pgx.ParseConfig(p.url(pgtest.SuperUser, "", "postgres"))
	require.NoError(t, err)
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
	conn, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "SET application_name = 'through-proxy'")
	require.NoError(t, err)
	assert.Equal(t, "through-proxy", conn.PgConn().ParameterStatus("application_name"))
	_, err = conn.Exec(ctx, "DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
	require.NoError(t, err)
	assert.Equal(t, []string{"hello 42"}, notices)
	assert.NotZero(t, conn.PgConn().PID())
}

func TestStartupOptionsForwarded(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, pgtest.SuperUser, "", "postgres", "options", "-c search_path=pg_catalog -c statement_timeout=1234", "application_name", "tg-app")
	ctx := testCtx(t)
	var sp, st, app string
	require.NoError(t, conn.QueryRow(ctx, "select current_setting('search_path'), current_setting('statement_timeout'), current_setting('application_name')").Scan(&sp, &st, &app))
	assert.Equal(t, "pg_catalog", sp)
	assert.Equal(t, "1234ms", st)
	assert.Equal(t, "tg-app", app)
}

func TestAuthenticationPassthrough(t *testing.T) {
	p := startProxy(t, nil)
	c := p.c
	db := newDB(t, c)
	ctx := testCtx(t)
	for _, tc := range []struct{ user, password string }{
		{pgtest.ScramUser, pgtest.ScramPassword},
		{pgtest.MD5User, pgtest.MD5Password},
		{pgtest.PlainUser, pgtest.PlainPassword},
		{pgtest.AppUser, ""},
	} {
		t.Run(tc.user, func(t *testing.T) {
			conn := p.connect(t, tc.user, tc.password, db)
			var who string
			require.NoError(t, conn.QueryRow(ctx, "select current_user").Scan(&who))
			assert.Equal(t, tc.user, who)

			if tc.password == "" {
				return
			}
			_, err := pgx.Connect(ctx, p.url(tc.user, "wrong", db))
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			assert.Equal(t, "28P01", pgErr.Code)
		})
	}
	// The server's own error for a missing database reaches the client.
	_, err := pgx.Connect(ctx, p.url(pgtest.SuperUser, "", "no_such_db"))
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "3D000", pgErr.Code)
}

// TestIdleSessionsHoldNoBuffers: sessions that sit idle between statements
// give their read and write buffers back to the pool.
func TestIdleSessionsHoldNoBuffers(t *testing.T) {
	waitFor(t, 10*time.Second, "sessions of earlier tests to end", func() bool { return proxy.BuffersBorrowed() == 0 })
	p := startProxy(t, nil)
	ctx := testCtx(t)
	var conns []*pgx.Conn
	for i := 0; i < 20; i++ {
		conn := p.connect(t, pgtest.SuperUser, "", "postgres")
		var n int
		require.NoError(t, conn.QueryRow(ctx, "select count(*) from generate_series(1, $1::int)", 5000).Scan(&n))
		require.Equal(t, 5000, n)
		conns = append(conns, conn)
	}
	waitFor(t, 10*time.Second, "idle sessions to give their buffers back", func() bool {
		return proxy.BuffersBorrowed() == 0
	})
	// And they still work.
	for _, conn := range conns {
		var s string
		require.NoError(t, conn.QueryRow(ctx, "select repeat('x', 20000)").Scan(&s))
		require.Len(t, s, 20000)
	}
}
