package rewriter

import (
	"strconv"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
)

const (
	benchLookup = "SELECT id, name, email FROM patients WHERE id = $1"
	benchJoin   = "SELECT p.name, i.amount, i.status FROM patients p JOIN invoices i ON i.patient_id = p.id LEFT JOIN visits v ON v.patient_id = p.id WHERE p.name = $1 AND i.amount > $2 ORDER BY i.amount DESC LIMIT 20"
)

func BenchmarkParse(b *testing.B) {
	for _, q := range []struct{ name, sql string }{{"lookup", benchLookup}, {"join", benchJoin}} {
		b.Run(q.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := pg.Parse(q.sql); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchDecide(b *testing.B, r *Rewriter, sql string, wantHit bool) {
	s := Session{Tenant: "7", HasTenant: true, Extended: true}
	r.Decide(sql, s)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res := r.Decide(sql, s)
		if res.CacheHit != wantHit || res.Statements[0].Verdict != VerdictRewritten {
			b.Fatalf("unexpected decision %+v", res.Statements[0])
		}
	}
}

func BenchmarkDecideMiss(b *testing.B) {
	r := New(testPolicy("default"), testCatalog(), WithCacheSize(0))
	b.Run("lookup", func(b *testing.B) { benchDecide(b, r, benchLookup, false) })
	b.Run("join", func(b *testing.B) { benchDecide(b, r, benchJoin, false) })
}

func BenchmarkDecideHit(b *testing.B) {
	r := New(testPolicy("default"), testCatalog())
	b.Run("lookup", func(b *testing.B) { benchDecide(b, r, benchLookup, true) })
	b.Run("join", func(b *testing.B) { benchDecide(b, r, benchJoin, true) })
}

// BenchmarkDecideHitSimple renders the tenant literal into a cached template.
func BenchmarkDecideHitSimple(b *testing.B) {
	r := New(testPolicy("default"), testCatalog())
	sql := "SELECT id, name FROM patients WHERE id = 42"
	s := Session{Tenant: "7", HasTenant: true}
	r.Decide(sql, s)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if res := r.Decide(sql, s); !res.CacheHit {
			b.Fatal("miss")
		}
	}
}

// BenchmarkDecideLiteral is the simple-protocol statement whose literal
// changes every time (pgbench -M simple, hand-built SQL): served by the
// literal-insensitive path, against the full parse + rewrite it replaces.
func BenchmarkDecideLiteral(b *testing.B) {
	s := Session{Tenant: "7", HasTenant: true}
	texts := make([]string, 1024)
	for i := range texts {
		texts[i] = "SELECT id, name, email FROM patients WHERE id = " + strconv.Itoa(1000+i) + " AND name <> 'x" + strconv.Itoa(i) + "'"
	}
	b.Run("hit", func(b *testing.B) {
		r := New(testPolicy("default"), testCatalog(), WithTenantSetting())
		r.Decide(texts[0], s)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if res := r.Decide(texts[i%len(texts)], s); !res.CacheHit || res.Statements[0].Verdict != VerdictRewritten {
				b.Fatalf("not served by the literal path: %+v", res.Statements[0])
			}
		}
	})
	// Pinned sessions (the tenant as a literal) of eight tenants in turn,
	// on a template learnt in another tenant's session.
	b.Run("hit_pinned_tenants", func(b *testing.B) {
		r := New(testPolicy("default"), testCatalog(), WithTenantSetting())
		pinned := make([]Session, 8)
		for i := range pinned {
			t := strconv.Itoa(10 + i)
			pinned[i] = Session{Tenant: t, HasTenant: true, StartupTenant: t, HasStartupTenant: true, TenantLiteral: true}
		}
		r.Decide(texts[0], Session{Tenant: "7", HasTenant: true, TenantLiteral: true})
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if res := r.Decide(texts[i%len(texts)], pinned[i%len(pinned)]); !res.CacheHit || res.Statements[0].Verdict != VerdictRewritten {
				b.Fatalf("not served by the literal path: %+v", res.Statements[0])
			}
		}
	})
	b.Run("full", func(b *testing.B) {
		r := New(testPolicy("default"), testCatalog(), WithTenantSetting(), WithCacheSize(0))
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if res := r.Decide(texts[i%len(texts)], s); res.Statements[0].Verdict != VerdictRewritten {
				b.Fatalf("unexpected decision %+v", res.Statements[0])
			}
		}
	})
}
