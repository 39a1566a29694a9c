package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/milter"
)

// shutdownTimeout bounds how long open SMTP sessions may go on after
// SIGTERM before their milter connections are closed (the MTA then applies
// milter_default_action to them).
const shutdownTimeout = 30 * time.Second

type daemonOptions struct {
	configPath     string
	configRequired bool
	listen         *string // flag overrides; nil when not given
	metricsListen  *string
}

// daemon is the running process: the milter, its store, metrics and config.
type daemon struct {
	reloadMu sync.Mutex // one reload at a time (signal and HTTP)
	opts     daemonOptions
	cfg      *Config
	log      *slog.Logger
	level    *slog.LevelVar
	store    *counters.Memory
	srv      *milter.Server
	reloadOK prometheus.Gauge
	reloadTS prometheus.Gauge
}

func runDaemon(ctx context.Context, cfg *Config, opts daemonOptions, sigs <-chan os.Signal, stderr io.Writer) int {
	listen, metricsListen := cfg.Listen, cfg.MetricsListen
	if opts.listen != nil {
		listen = *opts.listen
	}
	if opts.metricsListen != nil {
		metricsListen = *opts.metricsListen
	}
	level := new(slog.LevelVar)
	level.Set(cfg.LogLevel)
	log := newLogger(cfg.LogFormat, level, stderr)
	gomilter.LogWarning = func(format string, v ...any) {
		log.Warn(fmt.Sprintf(format, v...), "component", "go-milter")
	}

	network, address, err := parseListen(listen)
	if err != nil {
		log.Error("bad listen address", "listen", listen, "err", err)
		return exitConfig
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d := &daemon{opts: opts, cfg: cfg, log: log, level: level, store: counters.NewMemory(cfg.MaxTracked)}
	d.registerMetrics(reg)
	d.srv, err = milter.NewServer(milter.Config{
		Rules:       cfg.Rules,
		Store:       d.store,
		Metrics:     milter.NewMetrics(reg),
		Logger:      log,
		Allow:       cfg.MilterAllow,
		ReadTimeout: cfg.ReadTimeout,
	})
	if err != nil {
		log.Error("cannot start", "err", err)
		return exitConfig
	}

	ln, err := listenMilter(network, address)
	if err != nil {
		log.Error("cannot listen for the MTA", "listen", listen, "err", err)
		return exitRuntime
	}
	var metricsSrv *http.Server
	metricsAddr := ""
	if metricsListen != "" {
		mln, err := net.Listen("tcp", metricsListen)
		if err != nil {
			ln.Close()
			log.Error("cannot listen for metrics", "metrics_listen", metricsListen, "err", err)
			return exitRuntime
		}
		metricsAddr = mln.Addr().String()
		metricsSrv = &http.Server{Handler: d.httpHandler(reg), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := metricsSrv.Serve(mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "err", err)
			}
		}()
	}
	served := make(chan error, 1)
	go func() { served <- d.srv.Serve(ln) }()
	log.Info("listening", "milter", listenSpec(network, ln.Addr().String()), "metrics", metricsAddr, "config", cfg.Path, "mode", string(cfg.Rules.Mode), "version", version)
	sdNotify("READY=1")

	code := exitOK
	for stop := false; !stop; {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				sdNotify("RELOADING=1")
				d.reload()
				sdNotify("READY=1")
				continue
			}
			log.Info("shutting down; waiting for open sessions", "signal", sig.String(), "timeout", shutdownTimeout.String())
			stop = true
		case err := <-served:
			log.Error("milter server stopped", "err", err)
			code, stop = exitRuntime, true
		case <-ctx.Done():
			stop = true
		}
	}
	sdNotify("STOPPING=1")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.srv.Shutdown(sctx) }()
	select {
	case err := <-done:
		if err != nil {
			log.Warn("closed sessions still open at the shutdown timeout", "err", err)
		}
	case sig := <-sigs:
		log.Warn("second signal; exiting at once", "signal", sig.String())
		return exitRuntime
	}
	if metricsSrv != nil {
		_ = metricsSrv.Shutdown(sctx)
	}
	if network == "unix" {
		_ = os.Remove(address)
	}
	log.Info("stopped")
	return code
}

func newLogger(format string, level *slog.LevelVar, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// reload re-reads the configuration file. A bad file keeps the running
// configuration; settings that need a restart are reported.
func (d *daemon) reload() {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	cfg, err := LoadConfig(d.opts.configPath, d.opts.configRequired)
	if err != nil {
		d.reloadOK.Set(0)
		d.log.Error("reload failed; keeping the running configuration", "config", d.opts.configPath, "err", err.Error())
		return
	}
	if err := d.srv.SetRules(cfg.Rules); err != nil {
		d.reloadOK.Set(0)
		d.log.Error("reload failed; keeping the running configuration", "config", d.opts.configPath, "err", err.Error())
		return
	}
	d.level.Set(cfg.LogLevel)
	d.store.SetMaxTracked(cfg.MaxTracked)
	for _, c := range []struct{ key, old, new string }{
		{"listen", d.cfg.Listen, cfg.Listen},
		{"milter.allow", fmt.Sprint(d.cfg.MilterAllow), fmt.Sprint(cfg.MilterAllow)},
		{"milter.read_timeout", d.cfg.ReadTimeout.String(), cfg.ReadTimeout.String()},
		{"metrics.listen", d.cfg.MetricsListen, cfg.MetricsListen},
		{"log.format", d.cfg.LogFormat, cfg.LogFormat},
	} {
		if c.old != c.new {
			d.log.Warn("setting changed; it takes effect at the next restart", "key", c.key, "running", c.old, "file", c.new)
		}
	}
	d.cfg = cfg
	d.reloadOK.Set(1)
	d.reloadTS.SetToCurrentTime()
	d.log.Info("configuration reloaded", "config", d.opts.configPath, "mode", string(cfg.Rules.Mode))
}

func (d *daemon) registerMetrics(reg prometheus.Registerer) {
	d.reloadOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sessioncap_config_last_reload_successful",
		Help: "Whether the last configuration reload succeeded (1) or failed and the old configuration is still running (0).",
	})
	d.reloadTS = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sessioncap_config_last_reload_success_timestamp_seconds",
		Help: "When the configuration was last loaded successfully, in Unix seconds.",
	})
	d.reloadOK.Set(1)
	d.reloadTS.SetToCurrentTime()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "sessioncap_build_info",
		Help:        "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	build.Set(1)
	reg.MustRegister(d.reloadOK, d.reloadTS, build, storeCollector{d.store})
}

// storeCollector exports the in-memory store's sizes at scrape time.
type storeCollector struct{ m *counters.Memory }

var (
	descTracked   = prometheus.NewDesc("sessioncap_tracked_addresses", "Address prefixes whose connection frequency is tracked (bounded by addresses.max_tracked).", nil, nil)
	descBans      = prometheus.NewDesc("sessioncap_bans_active", "Address prefixes banned now.", nil, nil)
	descEvictions = prometheus.NewDesc("sessioncap_tracked_evictions_total", "Tracked address prefixes dropped, least recently seen first, to stay within addresses.max_tracked.", nil, nil)
)

func (storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descTracked
	ch <- descBans
	ch <- descEvictions
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.m.Stats(time.Now())
	ch <- prometheus.MustNewConstMetric(descTracked, prometheus.GaugeValue, float64(st.Tracked))
	ch <- prometheus.MustNewConstMetric(descBans, prometheus.GaugeValue, float64(st.Banned))
	ch <- prometheus.MustNewConstMetric(descEvictions, prometheus.CounterValue, float64(st.Evictions))
}

// httpHandler serves /metrics, a health check, and two admin actions for
// the local operator: POST /-/reload and POST /-/unban?address=IP.
func (d *daemon) httpHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("POST /-/reload", func(w http.ResponseWriter, _ *http.Request) {
		// Reload through the signal path's logic, but synchronously.
		d.reload()
		fmt.Fprintln(w, "reloaded (see the log for errors)")
	})
	mux.HandleFunc("POST /-/unban", func(w http.ResponseWriter, r *http.Request) {
		addr, err := netip.ParseAddr(r.FormValue("address"))
		if err != nil {
			http.Error(w, "want ?address=IP", http.StatusBadRequest)
			return
		}
		key := d.srv.Rules().Key(addr)
		was := d.store.Unban(key, time.Now())
		d.log.Info("unbanned by operator", "client_ip", addr.String(), "prefix", key.String(), "was_banned", was)
		fmt.Fprintf(w, "prefix %s: was banned: %v\n", key, was)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "sessioncap %s\n/metrics\n/-/healthy\nPOST /-/reload\nPOST /-/unban?address=IP\n", version)
	})
	return mux
}

// parseListen reads a milter socket in Postfix notation (inet:HOST:PORT,
// inet6:[ADDR]:PORT, unix:/PATH) or Sendmail notation (inet:PORT@HOST).
func parseListen(spec string) (network, address string, err error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok || rest == "" {
		return "", "", fmt.Errorf("listen %q: want inet:HOST:PORT, inet6:[ADDR]:PORT or unix:/PATH", spec)
	}
	switch kind {
	case "unix", "local":
		if !strings.HasPrefix(rest, "/") {
			return "", "", fmt.Errorf("listen %q: the unix socket path must be absolute", spec)
		}
		return "unix", rest, nil
	case "inet", "inet6":
		if port, host, ok := strings.Cut(rest, "@"); ok { // Sendmail: inet:PORT@HOST
			rest = net.JoinHostPort(host, port)
		}
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return "", "", fmt.Errorf("listen %q: %v", spec, err)
		}
		if port == "" {
			return "", "", fmt.Errorf("listen %q: missing port", spec)
		}
		network := "tcp4"
		if kind == "inet6" {
			network = "tcp6"
		}
		return network, net.JoinHostPort(host, port), nil
	}
	return "", "", fmt.Errorf("listen %q: unknown socket type %q (want inet, inet6 or unix)", spec, kind)
}

// listenSpec writes an opened socket back in Postfix notation.
func listenSpec(network, address string) string {
	switch network {
	case "tcp4":
		return "inet:" + address
	case "tcp6":
		return "inet6:" + address
	}
	return network + ":" + address
}

// listenMilter opens the milter socket. A stale unix socket left by a crash
// is replaced; a unix socket gets mode 0660 so that the MTA's group can use it.
func listenMilter(network, address string) (net.Listener, error) {
	if network != "unix" {
		return net.Listen(network, address)
	}
	if fi, err := os.Lstat(address); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", address); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another process", address)
		}
		_ = os.Remove(address)
	}
	ln, err := net.Listen("unix", address)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(address, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// sdNotify tells systemd (Type=notify) about state changes; it does nothing
// without NOTIFY_SOCKET.
func sdNotify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = c.Write([]byte(state))
}

// summary describes a loaded configuration for check-config.
func summary(cfg *Config) string {
	r := cfg.Rules
	var b strings.Builder
	fmt.Fprintf(&b, "%s: OK\n", cfg.Path)
	fmt.Fprintf(&b, "mode %s; milter %s; metrics %q\n", r.Mode, cfg.Listen, cfg.MetricsListen)
	fmt.Fprintf(&b, "milter: allow %v, read_timeout %s\n", cfg.MilterAllow, cfg.ReadTimeout)
	describe := func(p limits.Policy) {
		s, f, c := p.Session, p.Frequency, p.Concurrency
		fmt.Fprintf(&b, "  session: max_messages %s, max_bytes %s, max_recipients %s, overrun %s\n",
			capString(s.MaxMessages), capString(s.MaxBytes), capString(s.MaxRecipients), s.Overrun)
		fmt.Fprintf(&b, "  frequency: max_connections %s per %s, ban %s\n", capString(f.MaxConnections), f.Window, f.Ban)
		fmt.Fprintf(&b, "  concurrency: max_per_address %s, max_total %s\n", capString(c.MaxPerAddress), capString(c.MaxTotal))
	}
	b.WriteString("default:\n")
	describe(r.Default)
	for i, o := range r.Overrides {
		auth := "any"
		if o.Authenticated != nil {
			auth = fmt.Sprint(*o.Authenticated)
		}
		fmt.Fprintf(&b, "override[%d]: networks %v, authenticated %s\n", i, o.Networks, auth)
		describe(o.Policy)
	}
	fmt.Fprintf(&b, "exempt: networks %v, authenticated %v\n", r.ExemptNetworks, r.ExemptAuthenticated)
	fmt.Fprintf(&b, "addresses: ipv4 /%d, ipv6 /%d, max_tracked %d\n", r.IPv4Prefix, r.IPv6Prefix, cfg.MaxTracked)
	return b.String()
}

func capString(n int64) string {
	if n == 0 {
		return "off"
	}
	return fmt.Sprint(n)
}
