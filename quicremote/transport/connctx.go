package transport

import "context"

type connIDKey struct{}

// WithConnID returns ctx carrying the local id of the connection a request
// arrived on. Transports put it in every handler's context.
func WithConnID(ctx context.Context, id uint64) context.Context {
	return context.WithValue(ctx, connIDKey{}, id)
}

// ConnIDFromContext returns the local id of the connection the request
// being handled arrived on. Handlers that order a peer's messages by
// connection (the broadcast receiver does) need this rather than ConnID,
// which names the current connection and may already be a newer one.
func ConnIDFromContext(ctx context.Context) (uint64, bool) {
	id, ok := ctx.Value(connIDKey{}).(uint64)
	return id, ok
}
