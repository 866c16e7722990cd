package rewriter

import (
	"container/list"
	"sync"
)

// cacheKey identifies a template: the same text decides differently in the
// two protocols and for roles with different rights, but never differently
// for two tenants (the tenant is rendered into the template afterwards).
type cacheKey struct {
	sql      string
	extended bool
	role     string
}

// templateCache is an LRU of compiled query templates bounded both in
// entries and in bytes, so that a client sending many large distinct
// statements cannot grow it without limit.
type templateCache struct {
	mu       sync.Mutex
	max      int
	maxBytes int
	bytes    int
	order    *list.List // front = most recently used; values are *cacheEntry
	items    map[cacheKey]*list.Element
}

type cacheEntry struct {
	key  cacheKey
	tpl  *queryTemplate
	size int
}

func newTemplateCache(max, maxBytes int) *templateCache {
	return &templateCache{max: max, maxBytes: maxBytes, order: list.New(), items: make(map[cacheKey]*list.Element, max)}
}

func (c *templateCache) get(k cacheKey) (*queryTemplate, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*cacheEntry).tpl, true
	}
	return nil, false
}

// sizeOf approximates the memory a cached template holds.
func sizeOf(k cacheKey, t *queryTemplate) int {
	n := len(k.sql) + len(k.role) + 64
	for _, st := range t.stmts {
		n += len(st.orig) + len(st.d.Fingerprint) + len(st.d.Normalized) + 256
		for _, s := range st.segments {
			n += len(s)
		}
	}
	return n
}

func (c *templateCache) put(k cacheKey, t *queryTemplate) {
	size := sizeOf(k, t)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		ce := e.Value.(*cacheEntry)
		c.bytes += size - ce.size
		ce.tpl, ce.size = t, size
		c.order.MoveToFront(e)
	} else {
		c.items[k] = c.order.PushFront(&cacheEntry{key: k, tpl: t, size: size})
		c.bytes += size
	}
	for c.order.Len() > c.max || (c.maxBytes > 0 && c.bytes > c.maxBytes && c.order.Len() > 1) {
		last := c.order.Back()
		ce := last.Value.(*cacheEntry)
		c.order.Remove(last)
		delete(c.items, ce.key)
		c.bytes -= ce.size
	}
}

// len returns the number of cached templates.
func (c *templateCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
