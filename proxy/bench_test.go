package proxy_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

// BenchmarkRelay compares a direct connection with one through the proxy:
// a prepared single-row round trip, and streaming a 100k-row result.
//
//	go test ./proxy -run '^$' -bench Relay -benchmem
func BenchmarkRelay(b *testing.B) {
	c := pgtest.Shared(b)
	p := startProxy(b, func(cfg *proxy.Config) { cfg.Logger = nil })
	ctx := context.Background()
	targets := []struct{ name, url string }{
		{"direct", c.URL(pgtest.SuperUser, "", "postgres")},
		{"proxy", p.url(pgtest.SuperUser, "", "postgres")},
	}
	for _, tg := range targets {
		conn, err := pgx.Connect(ctx, tg.url)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("roundtrip/"+tg.name, func(b *testing.B) {
			var n int
			for b.Loop() {
				if err := conn.QueryRow(ctx, "select $1::int", 1).Scan(&n); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("stream100k/"+tg.name, func(b *testing.B) {
			for b.Loop() {
				rows, err := conn.Query(ctx, "select g, 'row payload text' from generate_series(1, 100000) g")
				if err != nil {
					b.Fatal(err)
				}
				for rows.Next() {
				}
				if rows.Err() != nil {
					b.Fatal(rows.Err())
				}
			}
		})
		conn.Close(ctx)
	}
}
