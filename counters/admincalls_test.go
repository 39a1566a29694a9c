package counters_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// slowList is a primary whose listing takes longer than the store timeout,
// as listing 100 000 bans in Redis does, while its hits are fast.
type slowList struct {
	*faultStore
	listFor time.Duration
}

func (s *slowList) Bans(ctx context.Context) ([]counters.Ban, error) {
	select {
	case <-time.After(s.listFor):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.faultStore.Bans(ctx)
}

// TestFallbackListingHasItsOwnDeadline: a listing that takes longer than
// the store timeout is answered in full, and the breaker stays closed, so
// that the next hit still sees the shared bans.
func TestFallbackListingHasItsOwnDeadline(t *testing.T) {
	const timeout = 20 * time.Millisecond
	p := &slowList{faultStore: &faultStore{Memory: counters.NewMemory(counters.MemoryOptions{})}, listFor: 5 * timeout}
	st := &states{}
	f, err := counters.NewFallback(p, counters.NewMemory(counters.MemoryOptions{}), counters.FallbackOptions{
		Timeout: timeout, ProbeInterval: 10 * time.Millisecond, OnStateChange: st.change})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := p.Memory.Ban(ctx, "freq:192.0.2.1/32", time.Hour, "manual"); err != nil {
		t.Fatal(err)
	}
	bans, err := f.Bans(ctx)
	if err != nil || len(bans) != 1 {
		t.Fatalf("listing slower than the store timeout: %+v, %v; want the shared ban", bans, err)
	}
	if !f.Up() || len(st.get()) != 0 {
		t.Fatalf("a slow listing changed the breaker: up %v, changes %v", f.Up(), st.get())
	}
	if h, err := f.Hit(ctx, "freq:192.0.2.1/32", 1, limit); err != nil || h.BannedUntil.IsZero() {
		t.Fatalf("hit after the listing: %+v, %v; want the shared ban", h, err)
	}
}

// TestFallbackAdminCallsSayWhenSharedStoreUnreachable: during an outage,
// under on_error = "local", listing, unbanning and banning do what they
// can on this host and say that the shared store was not reached; none of
// them opens the breaker. Once the primary is back, its ban is still
// there: an unban that only reached this host did not lift it, and said so.
func TestFallbackAdminCallsSayWhenSharedStoreUnreachable(t *testing.T) {
	f, p, st := newFallback(t, counters.OnErrorLocal, 50*time.Millisecond)
	const key = "freq:192.0.2.7/32"
	if _, err := f.Ban(ctx, key, time.Hour, "manual"); err != nil {
		t.Fatal(err)
	}
	p.mode.Store(failing)
	bans, err := f.Bans(ctx)
	if !errors.Is(err, counters.ErrSharedUnreachable) || len(bans) != 0 {
		t.Fatalf("listing during the outage: %+v, %v; want no bans and ErrSharedUnreachable", bans, err)
	}
	if _, err := f.Unban(ctx, key); !errors.Is(err, counters.ErrSharedUnreachable) {
		t.Fatalf("unban during the outage: %v; want ErrSharedUnreachable", err)
	}
	if b, err := f.Ban(ctx, "freq:192.0.2.8/32", time.Hour, "manual"); !errors.Is(err, counters.ErrSharedUnreachable) || b.Key == "" {
		t.Fatalf("ban during the outage: %+v, %v; want a local ban and ErrSharedUnreachable", b, err)
	}
	if !f.Up() || len(st.get()) != 0 {
		t.Fatalf("admin calls changed the breaker: up %v, changes %v", f.Up(), st.get())
	}
	p.mode.Store(healthy)
	if h, err := f.Hit(ctx, key, 1, limits.Rate{Max: 5, Window: time.Minute}); err != nil || h.BannedUntil.IsZero() {
		t.Fatalf("after the outage: %+v, %v; the shared ban, which the unban did not reach, must still hold", h, err)
	}
}

// TestFallbackAdminCallsTempfail: under "tempfail" an admin call that
// cannot reach the primary fails with ErrUnavailable and changes nothing.
func TestFallbackAdminCallsTempfail(t *testing.T) {
	f, p, _ := newFallback(t, counters.OnErrorTempfail, 50*time.Millisecond)
	p.mode.Store(failing)
	if _, err := f.Ban(ctx, "freq:192.0.2.8/32", time.Hour, "manual"); !errors.Is(err, counters.ErrUnavailable) {
		t.Fatalf("ban: %v", err)
	}
	if bans, _ := f.Local().Bans(ctx); len(bans) != 0 {
		t.Fatalf("a refused ban was made locally: %+v", bans)
	}
	if _, err := f.Bans(ctx); !errors.Is(err, counters.ErrUnavailable) {
		t.Fatalf("bans: %v", err)
	}
}
