package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/sessioncap/sessioncap/counters"
)

// Bounds of the server: request bodies, headers, and how long one request
// may take to arrive, to be answered and to sit idle.
const (
	maxBody           = 4 << 10
	maxHeaderBytes    = 8 << 10
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 10 * time.Second
	backendTimeout    = 20 * time.Second // under writeTimeout, so the answer still goes out
)

// Options configure the handler.
type Options struct {
	// Logger gets one line per admin action (action, target, keys, remote).
	Logger *slog.Logger
	// Token, when set, is the bearer token a request must carry over TCP.
	// Without it every request over TCP is refused: the handler fails
	// closed. Over a unix socket a request needs no token; one it carries
	// is checked.
	Token string
}

// NewServer returns an http.Server for the admin API on ln, with the
// timeouts and bounds the API needs; when ln came from Listen it carries
// the token read from the token file, which the handler then requires over
// TCP. Serve it with srv.Serve(ln), stop it with srv.Shutdown.
func NewServer(ln net.Listener, b Backend, opts Options) *http.Server {
	l, isListener := ln.(*Listener)
	if isListener && opts.Token == "" {
		opts.Token = l.token
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           NewHandler(b, opts),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if isListener {
		srv.ConnState = l.trackState
	}
	return srv
}

// NewHandler serves the admin API (paths under /v1/) from b.
func NewHandler(b Backend, opts Options) http.Handler {
	h := &handler{b: b, log: opts.Logger}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if opts.Token != "" {
		sum := sha256.Sum256([]byte(opts.Token))
		h.token = sum[:]
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/bans", h.bans)
	mux.HandleFunc("POST /v1/unban", h.unban)
	mux.HandleFunc("POST /v1/ban", h.ban)
	mux.HandleFunc("POST /v1/reload", h.reload)
	mux.HandleFunc("GET /v1/status", h.status)
	mux.HandleFunc("GET /v1/quota", h.quota)
	mux.HandleFunc("POST /v1/quota/reset", h.quotaReset)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if m, ok := endpoints[r.URL.Path]; ok {
			w.Header().Set("Allow", m)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: want %s", r.Method, r.URL.Path, m))
			return
		}
		writeError(w, http.StatusNotFound, "no such endpoint; the API is GET /v1/bans, POST /v1/unban, POST /v1/ban, POST /v1/reload, GET /v1/status, GET /v1/quota, POST /v1/quota/reset")
	})
	// A browser must not be able to act on the API from another site, even
	// if it could reach it; the bearer token already stops it over TCP.
	return h.authenticate(http.NewCrossOriginProtection().Handler(mux))
}

// endpoints are the API's paths and their methods.
var endpoints = map[string]string{
	"/v1/bans":   http.MethodGet,
	"/v1/unban":  http.MethodPost,
	"/v1/ban":    http.MethodPost,
	"/v1/reload": http.MethodPost,
	"/v1/status": http.MethodGet,

	"/v1/quota":       http.MethodGet,
	"/v1/quota/reset": http.MethodPost,
}

type handler struct {
	b     Backend
	log   *slog.Logger
	token []byte // SHA-256 of the token; nil: none configured
}

// authenticate lets a request through over a unix socket, or with the
// right bearer token. Tokens are compared as SHA-256 sums in constant time,
// so neither their content nor their length leaks through timing.
func (h *handler) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, overUnix := r.Context().Value(http.LocalAddrContextKey).(*net.UnixAddr)
		auth, hasAuth := r.Header["Authorization"]
		switch {
		case overUnix && (!hasAuth || h.token == nil):
		case h.token == nil:
			h.deny(w, r, "no token configured; the admin API over TCP needs admin.token_file")
			return
		case !hasAuth:
			h.deny(w, r, "missing Authorization: Bearer token")
			return
		default:
			scheme, got, _ := strings.Cut(auth[0], " ")
			sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
			if subtle.ConstantTimeCompare(sum[:], h.token) != 1 || !strings.EqualFold(scheme, "Bearer") || len(auth) != 1 {
				h.deny(w, r, "wrong token")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (h *handler) deny(w http.ResponseWriter, r *http.Request, why string) {
	h.log.Warn("admin request refused", "action", "auth", "remote", r.RemoteAddr, "path", r.URL.Path, "err", why)
	w.Header().Set("WWW-Authenticate", `Bearer realm="sessioncap"`)
	// A client without the token gets no keep-alive slot to sit on.
	w.Header().Set("Connection", "close")
	writeError(w, http.StatusUnauthorized, "unauthorized: "+why)
}

func (h *handler) bans(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	bans, err := h.b.Bans(ctx)
	if err != nil {
		h.fail(w, r, "bans", "", err)
		return
	}
	if bans == nil {
		bans = []counters.Ban{}
	}
	h.log.Debug("admin", "action", "bans", "remote", r.RemoteAddr, "bans", len(bans))
	writeJSON(w, http.StatusOK, BansResponse{Now: time.Now().UTC(), Bans: bans})
}

func (h *handler) unban(w http.ResponseWriter, r *http.Request) {
	var req UnbanRequest
	if !h.decode(w, r, "unban", &req, false) {
		return
	}
	target, err := ParseTarget(req.Target)
	if err != nil {
		h.fail(w, r, "unban", req.Target, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	keys, err := h.b.Unban(ctx, target)
	if err != nil {
		h.fail(w, r, "unban", target, err)
		return
	}
	if keys == nil {
		keys = []string{}
	}
	h.log.Info("admin", "action", "unban", "target", target, "keys", keys, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, UnbanResponse{Target: target, Keys: keys})
}

func (h *handler) ban(w http.ResponseWriter, r *http.Request) {
	var req BanRequest
	if !h.decode(w, r, "ban", &req, false) {
		return
	}
	target, err := ParseTarget(req.Target)
	if err != nil {
		h.fail(w, r, "ban", req.Target, err)
		return
	}
	d, err := ParseBanDuration(req.For)
	if err != nil {
		h.fail(w, r, "ban", target, err)
		return
	}
	reason := strings.TrimSpace(req.Reason) // the ban's origin is "manual"; this is its free text
	if err := checkReason(reason); err != nil {
		h.fail(w, r, "ban", target, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	ban, err := h.b.Ban(ctx, target, d, reason)
	if err != nil {
		h.fail(w, r, "ban", target, err)
		return
	}
	h.log.Info("admin", "action", "ban", "target", target, "keys", []string{ban.Key}, "remote", r.RemoteAddr,
		"for", d.String(), "until", ban.Until, "origin", counters.OriginManual, "reason", reason)
	writeJSON(w, http.StatusOK, BanResponse{Ban: ban})
}

func (h *handler) reload(w http.ResponseWriter, r *http.Request) {
	var req struct{}
	if !h.decode(w, r, "reload", &req, true) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	if err := h.b.Reload(ctx); err != nil {
		// A refused configuration is the daemon's answer, not the request's
		// fault, but it must never look like success.
		h.log.Error("admin", "action", "reload", "remote", r.RemoteAddr, "err", err.Error())
		writeError(w, http.StatusInternalServerError, "reload failed; the running configuration is kept: "+err.Error())
		return
	}
	h.log.Info("admin", "action", "reload", "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, ReloadResponse{Reloaded: true})
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	st, err := h.b.Status(ctx)
	if err != nil {
		h.fail(w, r, "status", "", err)
		return
	}
	h.log.Debug("admin", "action", "status", "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, st)
}

// fail answers an action that could not be done: 400 for a bad request,
// 500 for a failure of the daemon.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, action, target string, err error) {
	code, level := http.StatusInternalServerError, slog.LevelError
	if errors.Is(err, ErrInvalid) {
		code, level = http.StatusBadRequest, slog.LevelWarn
	}
	h.log.Log(r.Context(), level, "admin", "action", action, "target", target, "remote", r.RemoteAddr, "err", err.Error())
	writeError(w, code, strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
}

// decode reads a JSON body strictly: application/json, at most maxBody
// bytes, one object, no unknown fields. With optional an empty body is
// allowed. It answers the error itself and reports whether to go on.
func (h *handler) decode(w http.ResponseWriter, r *http.Request, action string, v any, optional bool) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.refuse(w, r, action, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", maxBody))
		} else {
			h.refuse(w, r, action, http.StatusBadRequest, "reading the request body: "+err.Error())
		}
		return false
	}
	if len(body) == 0 && optional {
		return true
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			h.refuse(w, r, action, http.StatusUnsupportedMediaType, "want Content-Type: application/json")
			return false
		}
	} else if len(body) > 0 {
		h.refuse(w, r, action, http.StatusUnsupportedMediaType, "want Content-Type: application/json")
		return false
	}
	if len(body) == 0 {
		h.refuse(w, r, action, http.StatusBadRequest, "empty request body; want a JSON object")
		return false
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		h.refuse(w, r, action, http.StatusBadRequest, "bad JSON body: "+err.Error())
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		h.refuse(w, r, action, http.StatusBadRequest, "bad JSON body: data after the object")
		return false
	}
	return true
}

func (h *handler) refuse(w http.ResponseWriter, r *http.Request, action string, code int, msg string) {
	h.log.Warn("admin", "action", action, "remote", r.RemoteAddr, "status", code, "err", msg)
	writeError(w, code, msg)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorResponse{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		code, body = http.StatusInternalServerError, []byte(`{"error":"encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}
