// Command kstatus prints what the two kstatus libraries GitOps tools use make of one object:
// sigs.k8s.io/cli-utils (kubectl, Argo-style health, kpt) and Flux's fork
// github.com/fluxcd/cli-utils. Test infrastructure for Skein's e2e tests: the object (JSON or
// YAML, as `kubectl get -o json` prints it) on stdin, one JSON line on stdout:
// {"kstatus": "<status>", "flux": "<status>", "message": "<kstatus message>"}.
//
// With -argocd-health FILE it adds what Argo CD's health check FILE (Lua) says:
// "argocd": "<Healthy|Progressing|Degraded|Suspended>", "argocdMessage": "...". With
// -argocd-tests DIR it runs DIR/health_test.yaml (Argo CD's resource_customizations layout)
// and exits non-zero when a case differs.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	flux "github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	sigs "sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	argocdHealth := flag.String("argocd-health", "", "Argo CD health.lua to run over the object too")
	argocdTests := flag.String("argocd-tests", "", "directory with health.lua and health_test.yaml to run")
	flag.Parse()
	if *argocdTests != "" {
		if err := runTests(*argocdTests); err != nil {
			fail(err)
		}
		return
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var obj map[string]interface{}
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		fail(fmt.Errorf("object on stdin: %w", err))
	}
	if len(obj) == 0 {
		fail(fmt.Errorf("object on stdin: empty"))
	}
	u := &unstructured.Unstructured{Object: obj}
	s, err := sigs.Compute(u)
	if err != nil {
		fail(fmt.Errorf("sigs.k8s.io/cli-utils: %w", err))
	}
	f, err := flux.Compute(u)
	if err != nil {
		fail(fmt.Errorf("github.com/fluxcd/cli-utils: %w", err))
	}
	result := map[string]string{"kstatus": s.Status.String(), "flux": f.Status.String(), "message": s.Message}
	if *argocdHealth != "" {
		script, err := os.ReadFile(*argocdHealth)
		if err != nil {
			fail(err)
		}
		status, message, err := health(string(script), obj)
		if err != nil {
			fail(err)
		}
		result["argocd"], result["argocdMessage"] = status, message
	}
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(1)
}
