package milter

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/limits"
)

// Metrics are the counters the milter keeps. Create them with NewMetrics on
// the registry that /metrics serves.
type Metrics struct {
	sessions       prometheus.Counter
	sessionsActive prometheus.Gauge
	messages       prometheus.Counter
	messageBytes   prometheus.Counter
	refusals       *prometheus.CounterVec
	bans           *prometheus.CounterVec
	tags           prometheus.Counter
	malformed      *prometheus.CounterVec
	storeErrors    *prometheus.CounterVec
	duration       map[limits.Stage]prometheus.Observer

	protocolErrors *prometheus.CounterVec
	acceptErrors   prometheus.Counter
	refusedConns   prometheus.Counter

	shared *engine.Metrics
}

// The values of the "what" label of sessioncap_malformed_input_total.
const (
	malformedClientAddr = engine.MalformedClientAddr
	malformedSize       = engine.MalformedSize
)

// NewMetrics registers the milter's metrics on reg and pre-initialises every
// known label combination to zero. The counters shared with the policy
// front-end come from engine.NewMetrics on the same registry.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	shared := engine.NewMetrics(reg)
	m := &Metrics{
		sessions:     shared.Sessions,
		messages:     shared.Messages,
		messageBytes: shared.MessageBytes,
		refusals:     shared.Refusals,
		bans:         shared.Bans,
		malformed:    shared.Malformed,
		storeErrors:  shared.StoreErrors,
		duration:     shared.Duration,
		shared:       shared,
		sessionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sessioncap_sessions_active",
			Help: "SMTP sessions open now.",
		}),
		tags: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_tag_headers_total",
			Help: "Headers added to accepted messages by limits in tag mode, one per limit and message.",
		}),
		protocolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_milter_protocol_errors_total",
			Help: "Milter connections closed for breaking the protocol, by reason (" + strings.Join(protocolErrorReasons, ", ") + ").",
		}, []string{"reason"}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_milter_accept_errors_total",
			Help: "Failed accepts on the milter socket (out of file descriptors, aborted handshakes); each was retried after a backoff.",
		}),
		refusedConns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_milter_refused_connections_total",
			Help: "TCP connections to the milter socket from outside [milter] allow, closed at once.",
		}),
	}
	for _, r := range protocolErrorReasons {
		m.protocolErrors.WithLabelValues(r)
	}
	reg.MustRegister(m.sessionsActive, m.protocolErrors, m.acceptErrors, m.refusedConns, m.tags)
	return m
}
