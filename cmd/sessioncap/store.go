package main

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/config"
	"github.com/sessioncap/sessioncap/counters"
	redisstore "github.com/sessioncap/sessioncap/counters/redis"
)

// openStore sets d.store from the [store] table: the in-memory store, or
// Redis behind a Fallback that answers from the in-memory store (or refuses,
// with on_error = "tempfail") while Redis is slow or down. It registers
// sessioncap_store_up and sessioncap_store_duration_seconds.
func (d *daemon) openStore(reg prometheus.Registerer, host string) error {
	up := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sessioncap_store_up",
		Help: "Whether the store answers (1) or sessioncap decides without it (0: Redis down; on_error applies). Always 1 with the memory backend.",
	})
	up.Set(1)
	reg.MustRegister(up)
	sc := d.boot.Store
	if sc.Backend != "redis" {
		return nil
	}
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sessioncap_store_duration_seconds",
		Help:    "Time of one call to the shared store, by operation (hit, ban, unban, bans, stats, ping, quota, quota_reset) and result (ok, error).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	}, []string{"op", "result"})
	for _, op := range []string{"hit", "ban", "unban", "bans", "stats", "ping", "quota", "quota_reset"} {
		for _, res := range []string{"ok", "error"} {
			duration.WithLabelValues(op, res)
		}
	}
	reg.MustRegister(duration)

	rc := sc.Redis
	password := ""
	if rc.PasswordFile != "" { // checked with the config; read again here, it may have changed since
		p, err := config.ReadPasswordFile(rc.PasswordFile)
		if err != nil {
			return fmt.Errorf("store.redis.password_file: %w", err)
		}
		password = p
	}
	redisstore.SetLogger(d.log) // adds component=redis itself
	shared, err := redisstore.New(redisstore.Options{
		Addresses: rc.Addresses, MasterName: rc.MasterName, Cluster: rc.Cluster,
		Username: rc.Username, Password: password, DB: rc.DB, TLS: rc.TLS,
		KeyPrefix: rc.KeyPrefix, Host: host,
	})
	if err != nil {
		return err
	}
	var downSince time.Time
	fb, err := counters.NewFallback(shared, d.local, counters.FallbackOptions{
		Timeout: sc.Timeout,
		OnError: sc.OnError,
		OnStateChange: func(ok bool) {
			if ok {
				up.Set(1)
				d.log.Info("shared store back; deciding from Redis again", "down_for", time.Since(downSince).Round(time.Second).String())
				return
			}
			up.Set(0)
			downSince = time.Now()
			d.log.Error("shared store down; deciding without it until it answers", "on_error", sc.OnError, "addresses", rc.Addresses)
		},
		Observe: func(op string, took time.Duration, err error) {
			res := "ok"
			if err != nil {
				res = "error"
			}
			duration.WithLabelValues(op, res).Observe(took.Seconds())
		},
	})
	if err != nil {
		shared.Close()
		return err
	}
	d.store = fb
	ctx, cancel := context.WithTimeout(context.Background(), sc.Timeout)
	defer cancel()
	if err := shared.Ping(ctx); err != nil {
		d.log.Warn("shared store not answering at start", "addresses", rc.Addresses, "err", err)
	}
	return nil
}
