package rewriter

import (
	"strconv"
	"strings"
	"testing"
)

// TestCacheBounds: the cache keeps at most its entry count and its byte
// budget, dropping the least recently used first.
func TestCacheBounds(t *testing.T) {
	r := New(testPolicy("default"), testCatalog(), WithCacheSize(3))
	s := Session{Tenant: "7", HasTenant: true}
	for i := 0; i < 5; i++ {
		r.Decide("SELECT id FROM patients WHERE id = "+strconv.Itoa(i), s)
	}
	if n := r.cache.len(); n != 3 {
		t.Fatalf("cache holds %d, want 3", n)
	}
	if res := r.Decide("SELECT id FROM patients WHERE id = 4", s); !res.CacheHit {
		t.Errorf("most recent statement evicted")
	}
	if res := r.Decide("SELECT id FROM patients WHERE id = 0", s); res.CacheHit {
		t.Errorf("oldest statement not evicted")
	}

	b := New(testPolicy("default"), testCatalog(), WithCacheBytes(64<<10))
	pad := strings.Repeat("x", 8<<10)
	for i := 0; i < 50; i++ {
		b.Decide("SELECT id FROM patients WHERE id = "+strconv.Itoa(i)+" AND name = '"+pad+"'", s)
	}
	b.cache.mu.Lock()
	bytes, n := b.cache.bytes, b.cache.order.Len()
	b.cache.mu.Unlock()
	if bytes > 64<<10 || n >= 50 || n == 0 {
		t.Errorf("byte budget not kept: %d bytes in %d templates", bytes, n)
	}
}
