// Package packaging holds no code: its tests check that the Grafana
// dashboard and the Prometheus rules shipped beside it query only metrics
// and labels that the daemon exposes, and that every alert's runbook_url
// points at a README section that exists.
package packaging
