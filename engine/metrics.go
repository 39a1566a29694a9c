package engine

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/limits"
)

// Metrics are the counters every front-end shares: a refusal or a message is
// counted under the same series whether the milter or the policy server
// decided it.
type Metrics struct {
	Sessions     prometheus.Counter
	Messages     prometheus.Counter
	MessageBytes prometheus.Counter
	Refusals     *prometheus.CounterVec
	Bans         *prometheus.CounterVec
	Malformed    *prometheus.CounterVec
	StoreErrors  *prometheus.CounterVec
	Duration     map[limits.Stage]prometheus.Observer
	// QuotaRefusals counts quota refusals by rule name, key kind and mode
	// (never by user or address); see session_quotas.go.
	QuotaRefusals *prometheus.CounterVec
}

// The values of the "what" label of sessioncap_malformed_input_total.
const (
	MalformedClientAddr = "client_addr"
	MalformedSize       = "size_param"
)

// NewMetrics registers the shared metrics on reg and pre-initialises every
// known label combination to zero. Calling it again with the same registry
// (a second front-end) returns the same counters.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Sessions: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_sessions_total",
			Help: "SMTP sessions the MTA reported, refused ones included.",
		})),
		Messages: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_messages_total",
			Help: "Messages accepted at end of message.",
		})),
		MessageBytes: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessioncap_message_bytes_total",
			Help: "Header and body bytes of messages that reached end of message (counted only while a byte cap is configured).",
		})),
		Refusals: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_refusals_total",
			Help: "Refusals, by limit (session_messages, session_bytes, session_recipients, frequency, banned, concurrency_address, concurrency_total, store_unavailable, deny, sender_networks, errors, quota), stage (connect, mail, rcpt, eom) and mode (enforce: the reply was given; monitor: it would have been; tag: the mail went on with a header naming the limit).",
		}, []string{"limit", "stage", "mode"})),
		Bans: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_bans_total",
			Help: "Connection-frequency bans started, by mode (enforce: the ban refuses; monitor: it is only logged; tag: its connections' messages get a header).",
		}, []string{"mode"})),
		Malformed: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_malformed_input_total",
			Help: "Macros or arguments from the MTA that could not be parsed and were ignored, by what (client_addr, size_param).",
		}, []string{"what"})),
		StoreErrors: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_store_errors_total",
			Help: "Failed calls to the counter store, by operation (hit, quota); the connection was let through, or refused with store_unavailable when store.on_error is tempfail.",
		}, []string{"op"})),
		Duration: make(map[limits.Stage]prometheus.Observer),
		QuotaRefusals: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessioncap_quota_refusals_total",
			Help: "Quota ([[rate]]) refusals, by rule (the rule's name), key (its key kind: network, user, sender, sender_domain, recipient; never the value) and mode (enforce: the 4xx was given; monitor: it would have been; tag: the mail went on with a header).",
		}, []string{"rule", "key", "mode"})),
	}
	hist := register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sessioncap_callback_duration_seconds",
		Help:    "Time spent deciding a milter callback or policy request that can refuse, by stage (connect, mail, rcpt, eom).",
		Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .05, .25},
	}, []string{"stage"}))
	for _, s := range limits.AllStages {
		m.Duration[s] = hist.WithLabelValues(string(s))
	}
	for _, l := range limits.AllLimits {
		for _, s := range StagesOf(l) {
			for _, mode := range limits.AllModes {
				m.Refusals.WithLabelValues(string(l), string(s), string(mode))
			}
		}
	}
	for _, w := range []string{MalformedClientAddr, MalformedSize} {
		m.Malformed.WithLabelValues(w)
	}
	m.StoreErrors.WithLabelValues("hit")
	for _, mode := range limits.AllModes {
		m.Bans.WithLabelValues(string(mode))
	}
	return m
}

// register registers c on reg, or returns the collector of that name
// already registered there.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}

// StagesOf lists the stages at which a limit can refuse.
func StagesOf(l limits.Limit) []limits.Stage {
	switch l {
	case limits.LimitSessionMessages, limits.LimitSenderNetworks:
		return []limits.Stage{limits.StageMail}
	case limits.LimitSessionBytes:
		return []limits.Stage{limits.StageMail, limits.StageEOM}
	case limits.LimitSessionRecipients:
		return []limits.Stage{limits.StageRcpt}
	case limits.LimitQuota:
		return []limits.Stage{limits.StageMail, limits.StageRcpt}
	case limits.LimitErrors:
		return []limits.Stage{limits.StageConnect, limits.StageMail, limits.StageRcpt}
	default:
		return []limits.Stage{limits.StageConnect}
	}
}
