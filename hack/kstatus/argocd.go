package main

// Argo CD's health check for a custom resource: the Lua script Skein ships
// (config/argocd/resource_customizations/<group>/<Kind>/health.lua), run the way Argo CD runs
// it: gopher-lua with only the base, table, string and math libraries opened, the object as a
// global table `obj` (maps as tables, lists as 1-based arrays, numbers as Lua numbers), and a
// returned table whose `status` and `message` are the health.

import (
	"fmt"
	"os"
	"path/filepath"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// health runs script over obj and returns (status, message).
func health(script string, obj map[string]interface{}) (string, string, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{{lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}, {lua.StringLibName, lua.OpenString}, {lua.MathLibName, lua.OpenMath}} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.fn), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return "", "", err
		}
	}
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return "", "", fmt.Errorf("health.lua: %w", err)
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("health.lua returned %s, not a table", l.Get(-1).Type())
	}
	return lua.LVAsString(ret.RawGetString("status")), lua.LVAsString(ret.RawGetString("message")), nil
}

func toLua(l *lua.LState, v interface{}) lua.LValue {
	switch v := v.(type) {
	case map[string]interface{}:
		t := l.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(l, e))
		}
		return t
	case []interface{}:
		t := l.NewTable()
		for _, e := range v {
			t.Append(toLua(l, e))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case nil:
		return lua.LNil
	default:
		return lua.LString(fmt.Sprint(v))
	}
}

func readObject(path string) (map[string]interface{}, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var obj map[string]interface{}
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return obj, nil
}

// runTests runs dir/health_test.yaml as Argo CD's resource_customizations tests do: every case's
// input must get exactly the expected status and message. Prints one line per case.
func runTests(dir string) error {
	script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(filepath.Join(dir, "health_test.yaml"))
	if err != nil {
		return err
	}
	var spec struct {
		Tests []struct {
			HealthStatus struct {
				Status  string `json:"status"`
				Message string `json:"message"`
			} `json:"healthStatus"`
			InputPath string `json:"inputPath"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(raw, &spec); err != nil {
		return fmt.Errorf("health_test.yaml: %w", err)
	}
	if len(spec.Tests) == 0 {
		return fmt.Errorf("health_test.yaml has no tests")
	}
	failed := 0
	for _, tc := range spec.Tests {
		obj, err := readObject(filepath.Join(dir, tc.InputPath))
		if err != nil {
			return err
		}
		status, message, err := health(string(script), obj)
		if err != nil {
			return fmt.Errorf("%s: %w", tc.InputPath, err)
		}
		if status != tc.HealthStatus.Status || message != tc.HealthStatus.Message {
			failed++
			fmt.Printf("FAIL %s: got %s %q, want %s %q\n", tc.InputPath, status, message, tc.HealthStatus.Status, tc.HealthStatus.Message)
		} else {
			fmt.Printf("ok   %s: %s\n", tc.InputPath, status)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d health tests failed", failed, len(spec.Tests))
	}
	return nil
}
