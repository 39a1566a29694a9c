package milter

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

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

	sizeSource *prometheus.CounterVec

	protocolErrors *prometheus.CounterVec
	acceptErrors   prometheus.Counter
	refusedConns   prometheus.Counter
}

// The values of the "source" label of sessioncap_message_size_source_total.
const (
	sizeFromStream = "stream"   // headers and body were sent to the milter and counted
	sizeFromMacro  = "msg_size" // Sendmail's {msg_size} at end of message
	sizeUnknown    = "unknown"  // no stream and no {msg_size}: counted as 0 bytes
)

// The values of the "what" label of sessioncap_malformed_input_total.
const (
	malformedClientAddr = "client_addr"
	malformedSize       = "size_param"
	malformedMsgSize    = "msg_size"
)

// NewMetrics registers the milter's metrics on reg and pre-initialises every
// known label combination to zero.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sessions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_sessions_total",
			Help: "SMTP sessions the MTA reported, refused ones included.",
		}),
		sessionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sessioncap_sessions_active",
			Help: "SMTP sessions open now.",
		}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_messages_total",
			Help: "Messages accepted at end of message.",
		}),
		messageBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_message_bytes_total",
			Help: "Header and body bytes of messages that reached end of message (counted only while a byte cap is configured).",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_refusals_total",
			Help: "Refusals, by limit (session_messages, session_bytes, session_recipients, frequency, banned, concurrency_address, concurrency_total, store_unavailable, deny, sender_networks, errors), stage (connect, mail, rcpt, eom) and mode (enforce: the reply was given; monitor: it would have been; tag: the mail went on with a header naming the limit).",
		}, []string{"limit", "stage", "mode"}),
		bans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_bans_total",
			Help: "Connection-frequency bans started, by mode (enforce: the ban refuses; monitor: it is only logged; tag: its connections' messages get a header).",
		}, []string{"mode"}),
		tags: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_tag_headers_total",
			Help: "Headers added to accepted messages by limits in tag mode, one per limit and message.",
		}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_malformed_input_total",
			Help: "Macros or arguments from the MTA that could not be parsed and were ignored, by what (client_addr, size_param, msg_size).",
		}, []string{"what"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_store_errors_total",
			Help: "Failed calls to the counter store, by operation (hit); the connection was let through, or refused with store_unavailable when store.on_error is tempfail.",
		}, []string{"op"}),
		sizeSource: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_message_size_source_total",
			Help: "Messages whose size counted toward a byte cap, by where the size came from (stream: headers and body sent to the milter; msg_size: Sendmail's {msg_size} macro at end of message, no stream; unknown: neither, the message counted 0 bytes).",
		}, []string{"source"}),
		duration: make(map[limits.Stage]prometheus.Observer),
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
	hist := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sessioncap_callback_duration_seconds",
		Help:    "Time spent deciding a milter callback that can refuse, by stage (connect, mail, rcpt, eom).",
		Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .05, .25},
	}, []string{"stage"})
	for _, s := range limits.AllStages {
		m.duration[s] = hist.WithLabelValues(string(s))
	}
	for _, l := range limits.AllLimits {
		for _, s := range stagesOf(l) {
			for _, mode := range limits.AllModes {
				m.refusals.WithLabelValues(string(l), string(s), string(mode))
			}
		}
	}
	for _, w := range []string{malformedClientAddr, malformedSize, malformedMsgSize} {
		m.malformed.WithLabelValues(w)
	}
	m.storeErrors.WithLabelValues("hit")
	for _, mode := range limits.AllModes {
		m.bans.WithLabelValues(string(mode))
	}
	for _, r := range protocolErrorReasons {
		m.protocolErrors.WithLabelValues(r)
	}
	for _, src := range []string{sizeFromStream, sizeFromMacro, sizeUnknown} {
		m.sizeSource.WithLabelValues(src)
	}
	reg.MustRegister(m.sessions, m.sessionsActive, m.messages, m.messageBytes, m.refusals, m.bans, m.tags, m.malformed, m.storeErrors, hist,
		m.sizeSource, m.protocolErrors, m.acceptErrors, m.refusedConns)
	return m
}

// stagesOf lists the stages at which a limit can refuse.
func stagesOf(l limits.Limit) []limits.Stage {
	switch l {
	case limits.LimitSessionMessages, limits.LimitSenderNetworks:
		return []limits.Stage{limits.StageMail}
	case limits.LimitSessionBytes:
		return []limits.Stage{limits.StageMail, limits.StageEOM}
	case limits.LimitSessionRecipients:
		return []limits.Stage{limits.StageRcpt}
	case limits.LimitErrors:
		return []limits.Stage{limits.StageConnect, limits.StageMail, limits.StageRcpt}
	default:
		return []limits.Stage{limits.StageConnect}
	}
}
