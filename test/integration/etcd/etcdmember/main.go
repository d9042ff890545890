// Command etcdmember is the upstream etcd server (go.etcd.io/etcd/server/v3,
// the version Capstan embeds), unmodified, as a separate process: the
// external etcd of the integration tests. Distribution packages lag behind
// what kube-apiserver needs (watch progress requests, etcd 3.4.31 or later).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
