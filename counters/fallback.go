package counters

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// ErrUnavailable is returned by a Fallback with OnError "tempfail" while its
// primary store is down: the caller answers 421 at connect.
var ErrUnavailable = errors.New("counters: shared store unavailable")

// The failure policies of a Fallback.
const (
	OnErrorLocal    = "local"    // answer from the local store
	OnErrorTempfail = "tempfail" // return ErrUnavailable
)

// DefaultFallbackTimeout bounds each call to the primary store.
const DefaultFallbackTimeout = 100 * time.Millisecond

// DefaultProbeInterval is how often a down primary is probed.
const DefaultProbeInterval = time.Second

// Pinger is implemented by stores that can check their backend cheaply; a
// Fallback probes a down primary with Ping, else with Stats.
type Pinger interface {
	Ping(ctx context.Context) error
}

// FallbackOptions configure NewFallback; zero values take the defaults.
type FallbackOptions struct {
	Timeout       time.Duration // per call to the primary; DefaultFallbackTimeout when <= 0
	OnError       string        // OnErrorLocal (the default when "") or OnErrorTempfail
	ProbeInterval time.Duration // DefaultProbeInterval when <= 0

	// OnStateChange is called once when the primary goes down and once when
	// it is back (to log once per outage and set sessioncap_store_up). Calls
	// are in order and never concurrent.
	OnStateChange func(up bool)
	// Observe is called after every call to the primary (not while it is
	// down) with the operation ("hit", "ban", "unban", "bans", "stats",
	// "ping"), its duration and its error.
	Observe func(op string, d time.Duration, err error)
}

// Fallback is a Store over a shared primary (Redis) that never waits for a
// dead one: each call to the primary is bounded by Timeout; the first
// failure opens a circuit breaker, and while it is open every call goes
// straight to the local store (or fails with ErrUnavailable under
// "tempfail") while a background prober, every ProbeInterval, closes the
// breaker as soon as the primary answers again.
//
// State made while the primary was down stays local: windows counted
// locally are not merged into the primary, and bans made locally are not
// copied to it. Those bans stay in force on this host until they end (every
// hit checks the local bans first, a map lookup), are listed with the
// primary's, and are lifted by Unban along with the primary's.
//
// A call that timed out may still be carried out by the primary (a hit sent
// to a Redis that hung is run when it resumes): that hit is then counted
// both there and locally, an error towards refusing, never towards
// admitting.
//
// The primary must honour its context's deadline (the Redis store does).
// A caller that cancels its context, or whose deadline left the primary
// less than half of Timeout, gets its context's error, and the breaker
// stays as it is: the primary was not given its chance. A caller whose
// deadline is about Timeout (the daemon bounds every store call by the same
// store.timeout) does not shield a dead primary: the failure opens the
// breaker as if the caller had no deadline.
type Fallback struct {
	primary  Store
	pinger   func(context.Context) error
	local    *Memory
	timeout  time.Duration
	interval time.Duration
	tempfail bool
	onChange func(bool)
	observe  func(string, time.Duration, error)

	up      atomic.Bool
	mu      sync.Mutex // guards probing and closed
	probing bool
	closed  bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

var _ Store = (*Fallback)(nil)

// NewFallback returns a Fallback over primary and local, the primary taken
// as up.
func NewFallback(primary Store, local *Memory, o FallbackOptions) (*Fallback, error) {
	f := &Fallback{
		primary:  primary,
		local:    local,
		timeout:  o.Timeout,
		interval: o.ProbeInterval,
		onChange: o.OnStateChange,
		observe:  o.Observe,
		stop:     make(chan struct{}),
	}
	switch o.OnError {
	case "", OnErrorLocal:
	case OnErrorTempfail:
		f.tempfail = true
	default:
		return nil, errors.New(`counters: on_error must be "local" or "tempfail", not "` + o.OnError + `"`)
	}
	if f.timeout <= 0 {
		f.timeout = DefaultFallbackTimeout
	}
	if f.interval <= 0 {
		f.interval = DefaultProbeInterval
	}
	if p, ok := primary.(Pinger); ok {
		f.pinger = p.Ping
	} else {
		f.pinger = func(ctx context.Context) error { _, err := primary.Stats(ctx); return err }
	}
	f.up.Store(true)
	return f, nil
}

// Up reports whether calls go to the primary (the breaker is closed).
func (f *Fallback) Up() bool { return f.up.Load() }

// Local returns the local store.
func (f *Fallback) Local() *Memory { return f.local }

// call runs op on the primary within the timeout. It reports whether the
// caller must answer from the local store instead (the primary was down or
// just failed); err is then nil under "local" and ErrUnavailable under
// "tempfail", or the caller's own context error.
func (f *Fallback) call(ctx context.Context, name string, op func(context.Context) error) (fallback bool, err error) {
	if !f.up.Load() {
		return f.unavailable()
	}
	c, cancel := context.WithTimeout(ctx, f.timeout)
	start := time.Now()
	err = op(c)
	cancel()
	if f.observe != nil {
		f.observe(name, time.Since(start), err)
	}
	if err == nil {
		return false, nil
	}
	if f.callerGaveUp(ctx, start) {
		return false, ctx.Err()
	}
	f.down()
	return f.unavailable()
}

// callerGaveUp reports whether a call begun at start failed because of the
// caller's context rather than the primary: the caller cancelled it, or
// its deadline left less than half of the timeout.
func (f *Fallback) callerGaveUp(ctx context.Context, start time.Time) bool {
	switch err := ctx.Err(); {
	case err == nil:
		return false
	case errors.Is(err, context.DeadlineExceeded):
		d, _ := ctx.Deadline()
		return d.Sub(start) < f.timeout/2
	}
	return true
}

func (f *Fallback) unavailable() (bool, error) {
	if f.tempfail {
		return true, ErrUnavailable
	}
	return true, nil
}

// down opens the breaker (once per outage) and starts the prober.
func (f *Fallback) down() {
	f.mu.Lock()
	if f.closed || f.probing {
		f.mu.Unlock()
		return
	}
	f.probing = true
	f.up.Store(false)
	f.wg.Add(1)
	f.mu.Unlock()
	if f.onChange != nil {
		f.onChange(false)
	}
	go f.probe()
}

// probe pings the primary every interval until it answers, then closes
// the breaker.
func (f *Fallback) probe() {
	defer f.wg.Done()
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		c, cancel := context.WithTimeout(context.Background(), f.timeout)
		start := time.Now()
		err := f.pinger(c)
		cancel()
		if f.observe != nil {
			f.observe("ping", time.Since(start), err)
		}
		if err != nil {
			continue
		}
		f.mu.Lock()
		f.up.Store(true)
		f.mu.Unlock()
		if f.onChange != nil {
			f.onChange(true)
		}
		f.mu.Lock()
		f.probing = false // only now: a failure during onChange(true) waits for it
		f.mu.Unlock()
		return
	}
}

// Hit implements Store: a ban made locally during an outage holds first.
func (f *Fallback) Hit(ctx context.Context, key string, n int64, r limits.Rate) (limits.Hit, error) {
	if h, _ := f.local.Hit(ctx, key, 0, limits.Rate{}); !h.BannedUntil.IsZero() {
		return h, nil
	}
	var h limits.Hit
	fb, err := f.call(ctx, "hit", func(c context.Context) (err error) {
		h, err = f.primary.Hit(c, key, n, r)
		return err
	})
	if err != nil || !fb {
		return h, err
	}
	return f.local.Hit(ctx, key, n, r)
}

// Ban implements Store; a ban made while the primary is down stays local.
func (f *Fallback) Ban(ctx context.Context, key string, d time.Duration, reason string) (Ban, error) {
	var b Ban
	fb, err := f.call(ctx, "ban", func(c context.Context) (err error) {
		b, err = f.primary.Ban(c, key, d, reason)
		return err
	})
	if err != nil || !fb {
		return b, err
	}
	return f.local.Ban(ctx, key, d, reason)
}

// Unban implements Store: it lifts the key's ban both locally and, when it
// is up, on the primary; it reports whether either held one.
func (f *Fallback) Unban(ctx context.Context, key string) (bool, error) {
	was, _ := f.local.Unban(ctx, key)
	var shared bool
	_, err := f.call(ctx, "unban", func(c context.Context) (err error) {
		shared, err = f.primary.Unban(c, key)
		return err
	})
	return was || shared, err
}

// Bans implements Store: the primary's bans (when it is up) and the local
// ones, one per key (the one ending last).
func (f *Fallback) Bans(ctx context.Context) ([]Ban, error) {
	var shared []Ban
	if _, err := f.call(ctx, "bans", func(c context.Context) (err error) {
		shared, err = f.primary.Bans(c)
		return err
	}); err != nil {
		return nil, err
	}
	local, _ := f.local.Bans(ctx)
	if len(local) == 0 {
		return shared, nil
	}
	byKey := make(map[string]int, len(shared))
	for i, b := range shared {
		byKey[b.Key] = i
	}
	for _, b := range local {
		if i, ok := byKey[b.Key]; !ok {
			shared = append(shared, b)
		} else if b.Until.After(shared[i].Until) {
			shared[i] = b
		}
	}
	sortBans(shared)
	return shared, nil
}

// Stats implements Store: the primary's stats while it is up, else the
// local store's.
func (f *Fallback) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	fb, err := f.call(ctx, "stats", func(c context.Context) (err error) {
		st, err = f.primary.Stats(c)
		return err
	})
	if err != nil || !fb {
		return st, err
	}
	return f.local.Stats(ctx)
}

// Close stops the prober and closes both stores.
func (f *Fallback) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	close(f.stop)
	f.mu.Unlock()
	f.wg.Wait()
	err := f.primary.Close()
	if lerr := f.local.Close(); err == nil {
		err = lerr
	}
	return err
}
