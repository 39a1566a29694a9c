package admin

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// QuotaBackend is implemented by a Backend that keeps quotas ([[rate]]):
// GET /v1/quota and POST /v1/quota/reset. Keys reach it as typed (kind is
// network, user, sender, sender_domain or recipient); it canonicalises the
// value and wraps ErrInvalid to refuse one.
type QuotaBackend interface {
	// Quota lists each rule of that key kind with the value's use.
	Quota(ctx context.Context, kind, value string) (QuotaResponse, error)
	// ResetQuota forgets the value's windows of every rule of that kind
	// and answers as Quota did before the reset.
	ResetQuota(ctx context.Context, kind, value string) (QuotaResponse, error)
}

type (
	// QuotaRequest is the body of POST /v1/quota/reset.
	QuotaRequest struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	}
	// QuotaResponse answers both: the canonical value, and the use of each
	// rule keyed on its kind (before a reset: what it cleared).
	QuotaResponse struct {
		Key   string      `json:"key"`
		Value string      `json:"value"`
		Now   time.Time   `json:"now"`
		Rules []QuotaRule `json:"rules"`
		Reset bool        `json:"reset,omitempty"`
	}
	// QuotaRule is one rule's use of a key: Use of Limit Count per Window
	// (the rule's own limit; an [[override.rate]] may change it for some
	// clients).
	QuotaRule struct {
		Rule   string `json:"rule"`
		Count  string `json:"count"`
		Use    int64  `json:"use"`
		Limit  int64  `json:"limit"`
		Window string `json:"window"`
		Mode   string `json:"mode"`
	}
)

func (h *handler) quota(w http.ResponseWriter, r *http.Request) {
	qb, ok := h.b.(QuotaBackend)
	if !ok {
		writeError(w, http.StatusNotFound, "this daemon keeps no quotas")
		return
	}
	kind, value := r.URL.Query().Get("key"), r.URL.Query().Get("value")
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	resp, err := qb.Quota(ctx, kind, value)
	if err != nil {
		h.fail(w, r, "quota", kind+" "+value, err)
		return
	}
	h.log.Debug("admin", "action", "quota", "target", kind+" "+resp.Value, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, resp)
}

func (h *handler) quotaReset(w http.ResponseWriter, r *http.Request) {
	qb, ok := h.b.(QuotaBackend)
	if !ok {
		writeError(w, http.StatusNotFound, "this daemon keeps no quotas")
		return
	}
	var req QuotaRequest
	if !h.decode(w, r, "quota_reset", &req, false) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	resp, err := qb.ResetQuota(ctx, req.Key, req.Value)
	if err != nil {
		h.fail(w, r, "quota_reset", req.Key+" "+req.Value, err)
		return
	}
	h.log.Info("admin", "action", "quota_reset", "key", req.Key, "value", resp.Value, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, resp)
}

// Quota asks GET /v1/quota for the use of a key.
func (c *Client) Quota(ctx context.Context, kind, value string) (QuotaResponse, error) {
	var resp QuotaResponse
	err := c.call(ctx, http.MethodGet, "/v1/quota?"+url.Values{"key": {kind}, "value": {value}}.Encode(), nil, &resp)
	return resp, err
}

// ResetQuota asks POST /v1/quota/reset to clear a key.
func (c *Client) ResetQuota(ctx context.Context, kind, value string) (QuotaResponse, error) {
	var resp QuotaResponse
	err := c.call(ctx, http.MethodPost, "/v1/quota/reset", QuotaRequest{Key: kind, Value: value}, &resp)
	return resp, err
}
