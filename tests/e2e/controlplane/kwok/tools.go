//go:build tools

// Package tools records the command this module builds, so that `go mod tidy`
// keeps its requirements. It is never compiled (the tools build tag is never set).
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
