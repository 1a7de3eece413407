// Command pause is the pod sandbox's process: it holds the pod's namespaces and exits on
// SIGTERM or SIGINT. Built statically (CGO_ENABLED=0) into the local pause image, since no
// image can be pulled on the machines that run the tests.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
