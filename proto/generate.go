// Package proto holds the .proto sources of abcast's wire protocol. The Go
// code generated from them lives in the abcastpb sub-package, whose name does
// not clash with google.golang.org/protobuf/proto.
package proto

//go:generate protoc --plugin=protoc-gen-go=../internal/tools/protoc-gen-go.sh --go_out=abcastpb --go_opt=paths=source_relative abcast.proto
//go:generate protoc --plugin=protoc-gen-go=../internal/tools/protoc-gen-go.sh --go_out=abcastpb --go_opt=paths=source_relative abcast_remote.proto
