package wire

import (
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/proto/abcastpb"
)

// EncodeFetchRequest encodes a request for the artifact with the given id.
// An empty id is refused with an error wrapping broadcast.ErrInvalid.
func EncodeFetchRequest(id broadcast.ArtifactID) ([]byte, error) {
	if id == "" {
		return nil, invalidf("encode fetch request: empty id")
	}
	return marshal("fetch request", &abcastpb.FetchRequest{Id: []byte(id)})
}

// DecodeFetchRequest decodes a fetch request received from a peer. An empty
// or oversized id, or bytes that are not a FetchRequest, are refused with an
// error wrapping broadcast.ErrInvalid. Invalid limits yield ErrLimits.
func DecodeFetchRequest(b []byte, lim Limits) (broadcast.ArtifactID, error) {
	if err := lim.Validate(); err != nil {
		return "", err
	}
	var m abcastpb.FetchRequest
	if err := unmarshal("fetch request", b, lim.fetchRequestLen(), &m); err != nil {
		return "", err
	}
	if err := checkID("fetch request", m.GetId(), lim); err != nil {
		return "", err
	}
	return broadcast.ArtifactID(m.GetId()), nil
}

// EncodeFetchResponse encodes the answer to a fetch: the artifact, or "not
// found" when a is nil. An artifact with an empty id is refused with an error
// wrapping broadcast.ErrInvalid.
func EncodeFetchResponse(a *broadcast.Artifact) ([]byte, error) {
	m := &abcastpb.FetchResponse{}
	if a == nil {
		m.Result = &abcastpb.FetchResponse_NotFound{NotFound: true}
	} else {
		pa, err := artifactToPB("fetch response", a)
		if err != nil {
			return nil, err
		}
		m.Result = &abcastpb.FetchResponse_Artifact{Artifact: pa}
	}
	return marshal("fetch response", m)
}

// DecodeFetchResponse decodes the answer to a fetch. A "not found" answer
// returns (nil, ErrNotFound). A response with no result, a not_found field
// set to false, an artifact with an empty or oversized id or oversized
// attribute or payload, or bytes that are not a FetchResponse are refused
// with an error wrapping broadcast.ErrInvalid. Whether the artifact is the
// one that was asked for is for the caller to check. Invalid limits yield
// ErrLimits.
func DecodeFetchResponse(b []byte, lim Limits) (*broadcast.Artifact, error) {
	if err := lim.Validate(); err != nil {
		return nil, err
	}
	var m abcastpb.FetchResponse
	if err := unmarshal("fetch response", b, lim.fetchResponseLen(), &m); err != nil {
		return nil, err
	}
	switch r := m.GetResult().(type) {
	case *abcastpb.FetchResponse_Artifact:
		a, err := artifactFromPB("fetch response", r.Artifact, lim)
		if err != nil {
			return nil, err
		}
		return &a, nil
	case *abcastpb.FetchResponse_NotFound:
		// The field is present on the wire, so the peer chose this case;
		// false would say "found" without an artifact, which means nothing.
		if !r.NotFound {
			return nil, invalidf("fetch response: not_found is false")
		}
		return nil, ErrNotFound
	case nil:
		return nil, invalidf("fetch response: no result (artifact or not_found)")
	default:
		return nil, invalidf("fetch response: unsupported result %T", r)
	}
}
