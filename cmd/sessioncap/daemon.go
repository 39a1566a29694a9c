package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sessioncap/sessioncap/admin"
	"github.com/sessioncap/sessioncap/config"
	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/internal/socket"
	"github.com/sessioncap/sessioncap/limits"
	"github.com/sessioncap/sessioncap/milter"
	"github.com/sessioncap/sessioncap/policy"
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
	// stateSaveEvery replaces stateSaveInterval when > 0: tests set it to
	// see a periodic save without waiting a minute.
	stateSaveEvery time.Duration
}

// stateSaveInterval is how often the memory store's state file is written
// (and once more at shutdown).
const stateSaveInterval = time.Minute

// daemon is the running process: the milter, its store, metrics and config.
type daemon struct {
	reloadMu sync.Mutex // one reload at a time (signal and admin)
	opts     daemonOptions
	// boot is the configuration the daemon started with: the settings a
	// reload does not change (listeners, [store], the state file) are read
	// from it, never from cfg. It is never written after start, so the
	// state saver and the metrics read it without a lock.
	boot     *config.Config
	cfg      *config.Config // the configuration loaded last; written under reloadMu
	log      *slog.Logger
	level    *slog.LevelVar
	local    *counters.Memory // the in-memory store (the fallback with Redis)
	store    counters.Store   // what the milter asks: local, or Redis with local as fallback
	eng      *engine.Engine   // rules and admissions, shared by the front-ends
	srv      *milter.Server
	pol      *policy.Server // nil unless [policy] listen is set
	reloadOK prometheus.Gauge
	reloadTS prometheus.Gauge
	loadedAt time.Time
}

func runDaemon(ctx context.Context, cfg *config.Config, opts daemonOptions, sigs <-chan os.Signal, stderr io.Writer) int {
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

	network, address, err := config.ParseListen(listen)
	if err != nil {
		log.Error("bad listen address", "listen", listen, "err", err)
		return exitConfig
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	host, _ := os.Hostname()
	d := &daemon{opts: opts, boot: cfg, cfg: cfg, log: log, level: level, loadedAt: time.Now(),
		local: counters.NewMemory(counters.MemoryOptions{MaxTracked: cfg.MaxTracked, MaxBans: cfg.MaxBans, Host: host})}
	d.store = d.local
	if p := d.stateFile(); p != "" {
		windows, bans, err := d.local.ReadStateFile(p)
		if err != nil {
			log.Error("state file unusable; starting without it", "state_file", p, "err", err)
		} else if _, statErr := os.Stat(p); errors.Is(statErr, os.ErrNotExist) {
			log.Info("no state file yet; it is written at shutdown and every minute", "state_file", p)
		} else {
			log.Info("state loaded", "state_file", p, "windows", windows, "bans", bans)
		}
	} else if cfg.Store.Backend == "memory" { // with Redis, bans and windows live there
		if cfg.Store.StateFile == config.StateFileAuto {
			// Run by hand, not by the unit: say what "auto" means here.
			log.Warn("no state file: bans and windows are lost on restart", "state_file", cfg.Store.StateFile,
				"reason", "STATE_DIRECTORY is not set (systemd's StateDirectory= sets it); set store.state_file to a path to keep them")
		} else {
			log.Info("no state file: bans and windows are lost on restart", "state_file", "", "reason", "store.state_file is off")
		}
	}
	if err := d.openStore(reg, host); err != nil {
		log.Error("cannot set up the store", "err", err)
		return exitConfig
	}
	defer d.store.Close()
	d.registerMetrics(reg)
	d.eng, err = engine.New(engine.Config{
		Rules:        cfg.Rules,
		Store:        d.store,
		Metrics:      engine.NewMetrics(reg),
		Logger:       log,
		StoreTimeout: cfg.Store.Timeout,
	})
	if err == nil {
		d.srv, err = milter.NewServer(milter.Config{
			Engine:      d.eng,
			Metrics:     milter.NewMetrics(reg),
			Logger:      log,
			Allow:       cfg.MilterAllow,
			ReadTimeout: cfg.ReadTimeout,
		})
	}
	if err == nil && cfg.PolicyListen != "" {
		d.pol, err = policy.NewServer(policy.Config{
			Engine:      d.eng,
			Metrics:     policy.NewMetrics(reg),
			Logger:      log,
			Allow:       cfg.PolicyAllow,
			ReadTimeout: cfg.PolicyReadTimeout,
			MaxSessions: cfg.PolicyMaxSessions,
			SessionIdle: cfg.PolicySessionIdle,
		})
	}
	if err != nil {
		log.Error("cannot start", "err", err)
		return exitConfig
	}
	stopSaving := d.saveStatePeriodically()
	defer stopSaving()

	ln, err := listenMilter(network, address)
	if err != nil {
		log.Error("cannot listen for the MTA", "listen", listen, "err", err)
		return exitRuntime
	}
	var pln net.Listener
	policySpec := ""
	if d.pol != nil {
		pnet, paddr, _ := config.ParseListen(cfg.PolicyListen) // validated with the config
		if pln, err = listenMilter(pnet, paddr); err != nil {
			ln.Close()
			log.Error("cannot listen for Postfix policy requests", "policy_listen", cfg.PolicyListen, "err", err)
			return exitRuntime
		}
		policySpec = listenSpec(pnet, pln.Addr().String())
		if pnet == "unix" {
			defer os.Remove(paddr)
		}
		if config.ConcurrencyConfigured(cfg.Rules) {
			log.Info("concurrency caps apply to milter sessions only: Postfix tells a policy server nothing when a session ends (use smtpd_client_connection_count_limit)")
		}
	}
	closeListeners := func() {
		ln.Close()
		if pln != nil {
			pln.Close()
		}
	}
	var metricsSrv *http.Server
	metricsAddr := ""
	if metricsListen != "" {
		mln, err := net.Listen("tcp", metricsListen)
		if err != nil {
			closeListeners()
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
	adminSrv, adminSpec, err := d.startAdmin()
	if err != nil {
		closeListeners()
		if metricsSrv != nil {
			metricsSrv.Close()
		}
		log.Error("cannot listen for admin requests", "admin_listen", cfg.AdminListen, "err", err)
		return exitRuntime
	}
	served := make(chan error, 2)
	go func() { served <- d.srv.Serve(ln) }()
	if d.pol != nil {
		go func() {
			if err := d.pol.Serve(pln); err != nil {
				served <- fmt.Errorf("policy: %w", err)
			}
		}()
	}
	attrs := []any{"milter", listenSpec(network, ln.Addr().String()), "metrics", metricsAddr, "admin", adminSpec}
	if policySpec != "" {
		attrs = append(attrs, "policy", policySpec)
	}
	log.Info("listening", append(attrs, "config", cfg.Path, "mode", string(cfg.Rules.Mode), "store", cfg.Store.Backend, "version", version)...)
	sdNotify("READY=1")

	code := exitOK
	for stop := false; !stop; {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				sdNotify("RELOADING=1")
				_ = d.reload()
				sdNotify("READY=1")
				continue
			}
			log.Info("shutting down; waiting for open sessions", "signal", sig.String(), "timeout", shutdownTimeout.String())
			stop = true
		case err := <-served:
			log.Error("server stopped", "err", err)
			code, stop = exitRuntime, true
		case <-ctx.Done():
			stop = true
		}
	}
	sdNotify("STOPPING=1")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		var perr error
		var wg sync.WaitGroup
		if d.pol != nil {
			wg.Add(1)
			go func() { defer wg.Done(); perr = d.pol.Shutdown(sctx) }()
		}
		err := d.srv.Shutdown(sctx)
		wg.Wait()
		done <- errors.Join(err, perr)
	}()
	for drained := false; !drained; {
		select {
		case err := <-done:
			if err != nil {
				log.Warn("closed sessions still open at the shutdown timeout", "err", err)
			}
			drained = true
		case sig := <-sigs:
			if sig == syscall.SIGHUP { // logrotate or systemctl reload while stopping: not a second stop
				log.Info("SIGHUP during shutdown; ignored", "signal", sig.String())
				continue
			}
			log.Warn("second signal; exiting at once", "signal", sig.String())
			stopSaving()
			d.saveState()
			return exitRuntime
		}
	}
	stopSaving() // no periodic save may overwrite the final one with an older snapshot
	d.saveState()
	if metricsSrv != nil {
		_ = metricsSrv.Shutdown(sctx)
	}
	if adminSrv != nil {
		_ = adminSrv.Shutdown(sctx)
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
// configuration and is returned; settings that need a restart are reported,
// against what runs (the configuration the daemon started with), and keep
// their running values until then.
func (d *daemon) reload() error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	cfg, err := config.Load(d.opts.configPath, d.opts.configRequired)
	if err == nil {
		err = d.eng.SetRules(cfg.Rules) // both front-ends
	}
	if err != nil {
		d.reloadOK.Set(0)
		d.log.Error("reload failed; keeping the running configuration", "config", d.opts.configPath, "err", err.Error())
		return err
	}
	d.level.Set(cfg.LogLevel)
	d.local.SetBounds(cfg.MaxTracked, cfg.MaxBans)
	run := d.boot
	for _, c := range []struct{ key, old, new string }{
		{"listen", run.Listen, cfg.Listen},
		{"milter.allow", fmt.Sprint(run.MilterAllow), fmt.Sprint(cfg.MilterAllow)},
		{"milter.read_timeout", run.ReadTimeout.String(), cfg.ReadTimeout.String()},
		{"metrics.listen", run.MetricsListen, cfg.MetricsListen},
		{"policy.listen", run.PolicyListen, cfg.PolicyListen},
		{"policy.allow", fmt.Sprint(run.PolicyAllow), fmt.Sprint(cfg.PolicyAllow)},
		{"policy.read_timeout", run.PolicyReadTimeout.String(), cfg.PolicyReadTimeout.String()},
		{"policy.max_sessions", fmt.Sprint(run.PolicyMaxSessions), fmt.Sprint(cfg.PolicyMaxSessions)},
		{"policy.session_idle", run.PolicySessionIdle.String(), cfg.PolicySessionIdle.String()},
		{"log.format", run.LogFormat, cfg.LogFormat},
		{"admin.listen", run.AdminListen, cfg.AdminListen},
		{"admin.token_file", run.AdminToken, cfg.AdminToken},
		{"store", fmt.Sprintf("%+v", run.Store), fmt.Sprintf("%+v", cfg.Store)},
	} {
		if c.old != c.new {
			d.log.Warn("setting changed; it takes effect at the next restart", "key", c.key, "running", c.old, "file", c.new)
		}
	}
	d.cfg = cfg
	d.loadedAt = time.Now()
	d.reloadOK.Set(1)
	d.reloadTS.SetToCurrentTime()
	d.log.Info("configuration reloaded", "config", d.opts.configPath, "mode", string(cfg.Rules.Mode))
	return nil
}

// startAdmin opens the admin socket. The built-in default
// (unix:/run/sessioncap/admin.sock) is skipped with a warning when its
// directory does not exist (a plain "go run" as a user); a socket the admin
// configured must open.
func (d *daemon) startAdmin() (*http.Server, string, error) {
	spec := d.boot.AdminListen
	if spec == "" {
		return nil, "", nil
	}
	if spec == config.DefaultAdminListen {
		if _, err := os.Stat(filepath.Dir(strings.TrimPrefix(spec, "unix:"))); err != nil {
			d.log.Warn("no admin socket: its directory does not exist; set [admin] listen to use sessioncap bans/unban/status", "admin_listen", spec)
			return nil, "", nil
		}
	}
	ln, err := admin.Listen(spec, d.boot.AdminToken, "sessioncap")
	if err != nil {
		return nil, "", err
	}
	srv := admin.NewServer(ln, adminBackend{d}, admin.Options{Logger: d.log})
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("admin server stopped", "err", err)
		}
	}()
	name := spec
	if l, ok := ln.(*admin.Listener); ok {
		name = l.Spec()
	}
	return srv, name, nil
}

// storeUp reports whether the shared store answers (always, in memory).
func (d *daemon) storeUp() bool {
	if u, ok := d.store.(interface{ Up() bool }); ok {
		return u.Up()
	}
	return true
}

// stateFile resolves store.state_file: "auto" is $STATE_DIRECTORY/state
// under systemd and none otherwise.
func (d *daemon) stateFile() string {
	p := d.boot.Store.StateFile
	if p != config.StateFileAuto {
		return p
	}
	if dir, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":"); dir != "" {
		return filepath.Join(dir, "state")
	}
	return ""
}

// saveStatePeriodically writes the state file every stateSaveInterval (or
// opts.stateSaveEvery) until the returned function is called; stop waits
// for a save in progress and may be called more than once.
func (d *daemon) saveStatePeriodically() (stop func()) {
	if d.stateFile() == "" {
		return func() {}
	}
	every := stateSaveInterval
	if d.opts.stateSaveEvery > 0 {
		every = d.opts.stateSaveEvery
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				d.saveState()
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-exited }) }
}

// saveState writes the memory store's bans and windows to the state file.
func (d *daemon) saveState() {
	p := d.stateFile()
	if p == "" {
		return
	}
	if err := d.local.WriteStateFile(p, d.eng.Rules().KeyWindows()); err != nil {
		d.log.Error("cannot write the state file", "state_file", p, "err", err)
	}
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
	reg.MustRegister(d.reloadOK, d.reloadTS, build, storeCollector{d})
}

// storeCollector exports the store's sizes at scrape time.
type storeCollector struct{ d *daemon }

var (
	descTracked   = prometheus.NewDesc("sessioncap_tracked_addresses", "Keys (address prefixes) whose connection frequency the store tracks (bounded by addresses.max_tracked in memory; -1 when the store cannot tell).", nil, nil)
	descBans      = prometheus.NewDesc("sessioncap_bans_active", "Bans in force, by mode (the mode of the default [frequency] rule carries the count; the others are 0): in monitor mode bans only log, in tag mode their sessions' messages get a header.", []string{"mode"}, nil)
	descEvictions = prometheus.NewDesc("sessioncap_tracked_evictions_total", "Windows and bans the in-memory store dropped to stay within addresses.max_tracked and addresses.max_bans.", nil, nil)
)

func (storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descTracked
	ch <- descBans
	ch <- descEvictions
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.d.boot.Store.Timeout)
	defer cancel()
	st, err := c.d.store.Stats(ctx)
	if err != nil {
		st, _ = c.d.local.Stats(ctx)
	}
	r := c.d.srv.Rules()
	mode := r.LimitMode(&r.Default, limits.LimitBanned)
	ch <- prometheus.MustNewConstMetric(descTracked, prometheus.GaugeValue, float64(st.Tracked))
	for _, m := range limits.AllModes {
		n := 0.0
		if m == mode {
			n = float64(st.Banned)
		}
		ch <- prometheus.MustNewConstMetric(descBans, prometheus.GaugeValue, n, string(m))
	}
	ch <- prometheus.MustNewConstMetric(descEvictions, prometheus.CounterValue, float64(st.Evictions))
}

// httpHandler serves /metrics and a health check. Admin actions are on the
// admin socket, not here: a browser could be made to POST to this port.
func (d *daemon) httpHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "sessioncap %s\n/metrics\n/-/healthy\n", version)
	})
	return mux
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

// listenMilter opens the milter socket. A unix socket gets mode 0660 so
// that the MTA's group can use it (see socket.ListenUnix).
func listenMilter(network, address string) (net.Listener, error) {
	if network != "unix" {
		return net.Listen(network, address)
	}
	return socket.ListenUnix(address, "")
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
