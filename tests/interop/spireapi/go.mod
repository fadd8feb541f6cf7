module spiffed.test/interop/spireapi

go 1.26.6

require (
	github.com/spiffe/spire-api-sdk v1.15.3
	google.golang.org/protobuf v1.36.7
)

require (
	golang.org/x/net v0.43.0 // indirect
	golang.org/x/sys v0.35.0 // indirect
	golang.org/x/text v0.28.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20250811230008-5f3141c8851a // indirect
	google.golang.org/grpc v1.74.2 // indirect
)
