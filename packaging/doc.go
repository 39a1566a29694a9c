// Package packaging holds no code: its tests check that the Grafana
// dashboard and the Prometheus rules shipped beside it query only metrics
// and labels that the daemon exposes, and that every alert's runbook_url
// points at a README section that exists, and that every lintian override
// and rpmlint filter shipped with the packages carries its reason.
package packaging
