package milter

import "time"

// SetNegotiationTimeout sets how long a test server waits for the option
// negotiation (10s otherwise).
func SetNegotiationTimeout(c *Config, d time.Duration) { c.negotiationTimeout = d }
