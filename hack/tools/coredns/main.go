// Command coredns is CoreDNS with only the plugins a local test cluster's DNS needs
// (bind, kubernetes, forward, cache, errors, health, ready, log), built from the pinned Go module so
// clusters get real cluster DNS without downloading a release binary. Leaving out CoreDNS's other
// plugins keeps their cloud SDKs out of the build.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order in which plugins see a query (CoreDNS's plugin.cfg order for these).
var directives = []string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes", "forward"}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
