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
	sizeSource     *prometheus.CounterVec

	shared *engine.Metrics
}

// The values of the "source" label of sessioncap_message_size_source_total.
const (
	sizeFromStream = "stream"   // headers and body were sent to the milter and counted
	sizeFromMacro  = "msg_size" // Sendmail's {msg_size} at end of message
	sizeUnknown    = "unknown"  // no stream and no {msg_size}: counted as 0 bytes
)

// The values of the "what" label of sessioncap_malformed_input_total.
const (
	malformedClientAddr = engine.MalformedClientAddr
	malformedSize       = engine.MalformedSize
	malformedMsgSize    = engine.MalformedMsgSize
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
		sizeSource: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_message_size_source_total",
			Help: "Messages whose size counted toward a byte cap, by where the size came from (stream: headers and body sent to the milter; msg_size: Sendmail's {msg_size} macro at end of message, no stream; unknown: neither, the message counted 0 bytes).",
		}, []string{"source"}),
	}
	for _, r := range protocolErrorReasons {
		m.protocolErrors.WithLabelValues(r)
	}
	for _, src := range []string{sizeFromStream, sizeFromMacro, sizeUnknown} {
		m.sizeSource.WithLabelValues(src)
	}
	reg.MustRegister(m.sessionsActive, m.protocolErrors, m.acceptErrors, m.refusedConns, m.sizeSource, m.tags)
	return m
}
