package catalog

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkLoad loads a catalog of 1000 tables (each with a primary key, a
// tenant index and a view) and 200 functions: go test ./proxy/catalog -run X -bench Load
func BenchmarkLoad(b *testing.B) {
	ctx := context.Background()
	var sql strings.Builder
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&sql, "CREATE TABLE t%d (id int PRIMARY KEY, clinic_id int NOT NULL, a text, b text, c timestamptz);\n", i)
		fmt.Fprintf(&sql, "CREATE INDEX t%d_clinic ON t%d (clinic_id, c);\n", i, i)
		fmt.Fprintf(&sql, "CREATE VIEW v%d AS SELECT id, clinic_id, a FROM t%d;\n", i, i)
	}
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&sql, "CREATE FUNCTION f%d(x int) RETURNS bigint LANGUAGE plpgsql AS $$BEGIN RETURN (SELECT count(*) FROM t%d WHERE clinic_id = x); END$$;\n", i, i)
	}
	_, _, conn := newDatabase(b, ctx, sql.String())
	b.ResetTimer()
	for b.Loop() {
		cat, err := LoadConn(ctx, conn, Options{})
		require.NoError(b, err)
		require.Len(b, cat.Relations, 2000)
		require.Len(b, cat.Functions, 200)
	}
}
