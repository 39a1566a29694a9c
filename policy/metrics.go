package policy

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/engine"
)

// Metrics are the counters of the policy front-end. Create them with
// NewMetrics on the registry that /metrics serves; the counters it shares
// with the milter (refusals, bans, sessions, messages, …) are the same
// series.
type Metrics struct {
	shared         *engine.Metrics
	requests       [numStates]prometheus.Counter
	protocolErrors *prometheus.CounterVec
	refusedConns   *prometheus.CounterVec
	acceptErrors   prometheus.Counter
	tracked        prometheus.Gauge
	conns          prometheus.Gauge
	evictions      prometheus.Counter
	connEvictions  prometheus.Counter
}

// The values of the reason label of sessioncap_policy_refused_connections_total.
const (
	refusedAllow     = "allow"      // the peer is outside [policy] allow
	refusedLimit     = "limit"      // MaxConnections policy connections are open, none idle
	refusedPeerLimit = "peer_limit" // MaxConnectionsPerPeer connections of this peer are open, none idle
)

// NewMetrics registers the policy front-end's metrics on reg and
// pre-initialises every known label combination to zero.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	names := make([]string, 0, numStates)
	for _, n := range stateNames {
		names = append(names, n)
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sessioncap_policy_requests_total",
		Help: "Postfix policy requests answered, by protocol_state (" + strings.Join(names, ", ") + ").",
	}, []string{"protocol_state"})
	m := &Metrics{
		shared: engine.NewMetrics(reg),
		protocolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_policy_protocol_errors_total",
			Help: "Policy connections closed for breaking the protocol, by reason (" + strings.Join(protocolErrorReasons, ", ") + "); Postfix applies smtpd_policy_service_default_action to that request.",
		}, []string{"reason"}),
		refusedConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_policy_refused_connections_total",
			Help: "Connections to the policy socket closed at once, by reason (allow: from outside [policy] allow; limit: 1000 policy connections open, none idle; peer_limit: 500 open from this peer, none idle).",
		}, []string{"reason"}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_policy_accept_errors_total",
			Help: "Failed accepts on the policy socket (out of file descriptors, aborted handshakes); each was retried after a backoff.",
		}),
		tracked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sessioncap_policy_sessions_tracked",
			Help: "SMTP sessions the policy front-end keeps counts for (open ones, and ended ones until they have been idle for the session idle time).",
		}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sessioncap_policy_connections",
			Help: "Open policy connections (Postfix keeps one per smtpd process).",
		}),
		connEvictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_policy_connection_evictions_total",
			Help: "Idle policy connections closed to make room for a new one (beyond 1000 open, or 500 from one peer); those that never sent a request go first.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_policy_session_evictions_total",
			Help: "Policy sessions forgotten before they were idle for the session idle time, because the session table was full; their counts start over.",
		}),
	}
	for s, n := range stateNames {
		m.requests[s] = requests.WithLabelValues(n)
	}
	for _, r := range protocolErrorReasons {
		m.protocolErrors.WithLabelValues(r)
	}
	for _, r := range []string{refusedAllow, refusedLimit, refusedPeerLimit} {
		m.refusedConns.WithLabelValues(r)
	}
	reg.MustRegister(requests, m.protocolErrors, m.refusedConns, m.acceptErrors, m.tracked, m.conns, m.evictions, m.connEvictions)
	return m
}
