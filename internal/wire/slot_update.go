package wire

import (
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/proto/abcastpb"
)

// EncodeSlotUpdate encodes u for the wire. What is sent depends on u.Kind:
//
//   - KindAdvert: commit, slot, the artifact's id and attribute and the
//     digest of its manifest (the payload and the latency flag stay
//     behind; the receiver fetches);
//   - KindPush: commit, slot and the whole artifact;
//   - KindCleared: commit and slot;
//   - KindSync: commit only (a sync names no slot).
//
// An unknown kind, or an advert or push with an empty id, is refused with an
// error wrapping broadcast.ErrInvalid.
func EncodeSlotUpdate(u broadcast.SlotUpdate) ([]byte, error) {
	m := &abcastpb.SlotUpdate{
		CommitId: uint64(u.Commit),
		Slot:     uint64(u.Slot),
	}
	switch u.Kind {
	case broadcast.KindAdvert:
		if u.Artifact.ID == "" {
			return nil, invalidf("encode slot update: advert: empty id")
		}
		m.State = &abcastpb.SlotUpdate_Advert{Advert: &abcastpb.Advert{
			Id:        []byte(u.Artifact.ID),
			Attribute: u.Artifact.Attribute,
			Digest:    u.Digest[:],
		}}
	case broadcast.KindPush:
		a, err := artifactToPB("slot update: push", &u.Artifact)
		if err != nil {
			return nil, err
		}
		m.State = &abcastpb.SlotUpdate_Artifact{Artifact: a}
	case broadcast.KindCleared:
		m.State = &abcastpb.SlotUpdate_Cleared{Cleared: &abcastpb.Cleared{}}
	case broadcast.KindSync:
		m.Slot = 0
		m.State = &abcastpb.SlotUpdate_Sync{Sync: &abcastpb.Sync{}}
	default:
		return nil, invalidf("encode slot update: unknown kind %v", u.Kind)
	}
	return marshal("slot update", m)
}

// DecodeSlotUpdate decodes a slot update received from a peer and checks it
// against lim. A message without a state, an advert or artifact with an
// empty or oversized id, an oversized attribute or payload, an advert whose
// digest is not 32 bytes, a sync that names a slot, or bytes that are not a
// SlotUpdate are refused with an error wrapping broadcast.ErrInvalid.
// Invalid limits yield ErrLimits.
func DecodeSlotUpdate(b []byte, lim Limits) (broadcast.SlotUpdate, error) {
	if err := lim.Validate(); err != nil {
		return broadcast.SlotUpdate{}, err
	}
	var m abcastpb.SlotUpdate
	if err := unmarshal("slot update", b, lim.slotUpdateLen(), &m); err != nil {
		return broadcast.SlotUpdate{}, err
	}
	u := broadcast.SlotUpdate{
		Commit: broadcast.CommitID(m.GetCommitId()),
		Slot:   broadcast.Slot(m.GetSlot()),
	}
	switch s := m.GetState().(type) {
	case *abcastpb.SlotUpdate_Advert:
		a, err := advertFromPB("slot update: advert", s.Advert, lim)
		if err != nil {
			return broadcast.SlotUpdate{}, err
		}
		if d := s.Advert.GetDigest(); len(d) != len(u.Digest) {
			return broadcast.SlotUpdate{}, invalidf("slot update: advert: digest of %d bytes, want %d", len(d), len(u.Digest))
		}
		copy(u.Digest[:], s.Advert.GetDigest())
		u.Kind, u.Artifact = broadcast.KindAdvert, a
	case *abcastpb.SlotUpdate_Artifact:
		a, err := artifactFromPB("slot update: push", s.Artifact, lim)
		if err != nil {
			return broadcast.SlotUpdate{}, err
		}
		u.Kind, u.Artifact = broadcast.KindPush, a
	case *abcastpb.SlotUpdate_Cleared:
		u.Kind = broadcast.KindCleared
	case *abcastpb.SlotUpdate_Sync:
		// A sync concerns the whole table. One that names a slot was not
		// produced by our encoder, and accepting it would leave the meaning
		// of that slot number up to each receiver.
		if u.Slot != 0 {
			return broadcast.SlotUpdate{}, invalidf("slot update: sync names slot %d, must name none", u.Slot)
		}
		u.Kind = broadcast.KindSync
	case nil:
		return broadcast.SlotUpdate{}, invalidf("slot update: no state (advert, artifact, cleared or sync)")
	default:
		// Unreachable with the generated code; kept so that a new oneof
		// choice added to the .proto cannot be silently accepted.
		return broadcast.SlotUpdate{}, invalidf("slot update: unsupported state %T", s)
	}
	return u, nil
}
