package guard

// SentinelNonce is the nonce in the names of g's sentinels.
func SentinelNonce(g *Guard) string { return g.nonce }
