// Command gospiffe drives spiffed's Workload API with go-spiffe's workloadapi client, for
// spiffed's interop tests. Every mode prints one JSON object per line on stdout; errors go to
// stdout as {"error": "...", "code": "<gRPC code>"} and exit status 1.
//
//	x509                    fetch the X.509 context once
//	watch                   watch X.509 contexts; print each update; exit after a rotation
//	                        (a default SVID whose serial differs from the first one seen)
//	jwt AUDIENCE            fetch a JWT-SVID, validate it with ValidateJWTSVID and locally
//	                        against the fetched JWT bundles
//
// The socket comes from SPIFFE_ENDPOINT_SOCKET. With FAKE_METADATA=1 every call also carries
// metadata claiming another identity (pid, uid, spiffe id), which the server must ignore.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type x509Out struct {
	Svids     []string `json:"svids"`
	Serial    string   `json:"serial"`
	Bundles   []string `json:"bundles"`
	Federated []string `json:"federated"`
}

func emit(v any) {
	data, _ := json.Marshal(v)
	fmt.Println(string(data))
}

func fail(err error) {
	emit(map[string]string{"error": err.Error(), "code": status.Code(err).String()})
	os.Exit(1)
}

func fake(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx,
		"pid", "1", "uid", "0", "x-forwarded-uid", "0",
		"spiffe-id", "spiffe://example.org/root", "selectors", "unix:uid:0")
}

func clientOptions() []workloadapi.ClientOption {
	if os.Getenv("FAKE_METADATA") != "1" {
		return nil
	}
	return []workloadapi.ClientOption{workloadapi.WithDialOptions(
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
			cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(fake(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc,
			cc *grpc.ClientConn, method string, streamer grpc.Streamer,
			opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(fake(ctx), desc, cc, method, opts...)
		}),
	)}
}

func describe(c *workloadapi.X509Context) x509Out {
	out := x509Out{Svids: []string{}, Bundles: []string{}, Federated: []string{}}
	for _, s := range c.SVIDs {
		out.Svids = append(out.Svids, s.ID.String())
	}
	if len(c.SVIDs) > 0 {
		out.Serial = c.SVIDs[0].Certificates[0].SerialNumber.String()
		td := c.SVIDs[0].ID.TrustDomain()
		for _, b := range c.Bundles.Bundles() {
			if b.TrustDomain() != td {
				out.Federated = append(out.Federated, b.TrustDomain().IDString())
			}
		}
	}
	for _, b := range c.Bundles.Bundles() {
		out.Bundles = append(out.Bundles, b.TrustDomain().IDString())
	}
	sort.Strings(out.Bundles)
	sort.Strings(out.Federated)
	return out
}

type watcher struct {
	first string
	done  chan struct{}
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	out := describe(c)
	emit(out)
	if w.first == "" {
		w.first = out.Serial
	} else if out.Serial != w.first {
		close(w.done)
	}
}

func (w *watcher) OnX509ContextWatchError(err error) {
	emit(map[string]string{"watch_error": err.Error(), "code": status.Code(err).String()})
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gospiffe x509|watch|jwt AUDIENCE")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, clientOptions()...)
	if err != nil {
		fail(err)
	}
	defer client.Close()

	switch os.Args[1] {
	case "x509":
		c, err := client.FetchX509Context(ctx)
		if err != nil {
			fail(err)
		}
		emit(describe(c))
	case "watch":
		w := &watcher{done: make(chan struct{})}
		errc := make(chan error, 1)
		go func() { errc <- client.WatchX509Context(ctx, w) }()
		select {
		case <-w.done:
			emit(map[string]string{"rotated": "true"})
		case err := <-errc:
			fail(err)
		}
	case "jwt":
		aud := os.Args[2]
		svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud, ExtraAudiences: []string{"extra"}})
		if err != nil {
			fail(err)
		}
		validated, err := client.ValidateJWTSVID(ctx, svid.Marshal(), aud)
		if err != nil {
			fail(err)
		}
		bundles, err := client.FetchJWTBundles(ctx)
		if err != nil {
			fail(err)
		}
		local, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{aud})
		if err != nil {
			fail(err)
		}
		_, wrongErr := client.ValidateJWTSVID(ctx, svid.Marshal(), "someone-else")
		emit(map[string]any{
			"spiffe_id":     svid.ID.String(),
			"audience":      svid.Audience,
			"validated_id":  validated.ID.String(),
			"validated_aud": validated.Audience,
			"local_id":      local.ID.String(),
			"wrong_aud":     status.Code(wrongErr).String(),
		})
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}
