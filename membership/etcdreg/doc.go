// Package etcdreg is a membership.Source backed by etcd.
package etcdreg

import _ "go.etcd.io/etcd/client/v3" // placeholder until the source lands
