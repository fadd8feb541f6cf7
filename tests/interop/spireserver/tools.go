//go:build tools

// Package tools pins the released SPIRE module so `go build github.com/spiffe/spire/cmd/spire-server`
// builds the v1.15.3 release binary. Nothing here is compiled into spiffed.
package tools

import _ "github.com/spiffe/spire/cmd/spire-server"
