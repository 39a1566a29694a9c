module github.com/sessioncap/sessioncap

go 1.26

require (
	github.com/BurntSushi/toml v1.6.0 // indirect
	github.com/d--j/go-milter v0.10.1 // indirect
	github.com/emersion/go-message v0.18.2 // indirect
	github.com/prometheus/client_golang v1.23.2 // indirect
	golang.org/x/text v0.28.0 // indirect
)
