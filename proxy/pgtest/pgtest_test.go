package pgtest

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func TestClusterUsersAndTLS(t *testing.T) {
	c := Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := c.CreateDatabase(ctx, t.Name())
	require.NoError(t, err)
	for _, u := range []struct{ user, pass, method string }{
		{ScramUser, ScramPassword, "scram"},
		{MD5User, MD5Password, "md5"},
		{PlainUser, PlainPassword, "password"},
		{AppUser, "", "trust"},
	} {
		conn, err := pgx.Connect(ctx, c.URL(u.user, u.pass, db))
		require.NoError(t, err, u.method)
		var who string
		require.NoError(t, conn.QueryRow(ctx, "select current_user").Scan(&who))
		require.Equal(t, u.user, who)
		require.NoError(t, conn.Close(ctx))
	}
	// A wrong password is refused.
	_, err = pgx.Connect(ctx, c.URL(ScramUser, "wrong", db))
	require.Error(t, err)
	// TLS with full verification against the generated CA.
	conn, err := pgx.Connect(ctx, "host=localhost port="+itoa(c.Port)+" user=postgres dbname="+db+" sslmode=verify-full sslrootcert="+c.CAFile)
	require.NoError(t, err)
	var ssl bool
	require.NoError(t, conn.QueryRow(ctx, "select ssl from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl))
	require.True(t, ssl)
	require.NoError(t, conn.Close(ctx))
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestLongDatabaseNamesStayApart: PostgreSQL cuts names at 63 bytes, so a
// long prefix is cut before the sequence number, not the number itself
// (two runs of a long subtest name collided under -count 2).
func TestLongDatabaseNamesStayApart(t *testing.T) {
	c := Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := "a_test_name_long_enough_to_reach_postgresql_identifier_limit_and_beyond"
	a, err := c.CreateDatabase(ctx, prefix)
	require.NoError(t, err)
	b, err := c.CreateDatabase(ctx, prefix)
	require.NoError(t, err)
	require.NotEqual(t, a, b)
	require.LessOrEqual(t, len(a), 63)
	require.LessOrEqual(t, len(b), 63)
}
