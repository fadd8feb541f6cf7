//go:build tools

// Package tools pins the released SPIRE module so `go build github.com/spiffe/spire/cmd/spire-server`
// and `go build github.com/spiffe/spire/cmd/spire-agent` build the v1.15.3 release binaries.
// Nothing here is compiled into spiffed.
package tools

import (
	_ "github.com/spiffe/spire/cmd/spire-agent"
	_ "github.com/spiffe/spire/cmd/spire-server"
)
