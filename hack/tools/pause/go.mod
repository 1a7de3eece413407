module skein.dev/hack/tools/pause

go 1.24.0
