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

// templateCache is a bounded LRU of compiled query templates.
type templateCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // front = most recently used; values are *cacheEntry
	items map[cacheKey]*list.Element
}

type cacheEntry struct {
	key cacheKey
	tpl *queryTemplate
}

func newTemplateCache(max int) *templateCache {
	return &templateCache{max: max, order: list.New(), items: make(map[cacheKey]*list.Element, max)}
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

func (c *templateCache) put(k cacheKey, t *queryTemplate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		e.Value.(*cacheEntry).tpl = t
		c.order.MoveToFront(e)
		return
	}
	c.items[k] = c.order.PushFront(&cacheEntry{key: k, tpl: t})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(*cacheEntry).key)
	}
}

// Len returns the number of cached templates.
func (c *templateCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
