package guard

import "github.com/tenantguard/tenantguard/proxy"

// SentinelNonce is the nonce in the names of g's sentinels.
func SentinelNonce(g *Guard) string { return g.nonce }

// PendingRejections counts the rejections a session has registered and
// not yet matched with their sentinel's error.
func PendingRejections(s *proxy.Session) int {
	c, _ := s.State.(*conn)
	if c == nil {
		return -1
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.rejects)
}
