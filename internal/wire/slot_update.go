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
//
// The update's attribute and payload alias b (no copy is made of what the
// transport already read): b becomes the update's and must not be reused.
func DecodeSlotUpdate(b []byte, lim Limits) (broadcast.SlotUpdate, error) {
	if err := lim.Validate(); err != nil {
		return broadcast.SlotUpdate{}, err
	}
	raw, err := decodeSlotUpdate(b, lim)
	if err != nil {
		return broadcast.SlotUpdate{}, err
	}
	u := broadcast.SlotUpdate{
		Commit: broadcast.CommitID(raw.commit),
		Slot:   broadcast.Slot(raw.slot),
	}
	switch raw.state {
	case 3:
		a, err := advertFromRaw("slot update: advert", raw.id, raw.attr, lim)
		if err != nil {
			return broadcast.SlotUpdate{}, err
		}
		if len(raw.digest) != len(u.Digest) {
			return broadcast.SlotUpdate{}, invalidf("slot update: advert: digest of %d bytes, want %d", len(raw.digest), len(u.Digest))
		}
		copy(u.Digest[:], raw.digest)
		u.Kind, u.Artifact = broadcast.KindAdvert, a
	case 4:
		a, err := artifactFromRaw("slot update: push", raw, lim)
		if err != nil {
			return broadcast.SlotUpdate{}, err
		}
		u.Kind, u.Artifact = broadcast.KindPush, a
	case 5:
		u.Kind = broadcast.KindCleared
	case 6:
		// A sync concerns the whole table. One that names a slot was not
		// produced by our encoder, and accepting it would leave the meaning
		// of that slot number up to each receiver.
		if u.Slot != 0 {
			return broadcast.SlotUpdate{}, invalidf("slot update: sync names slot %d, must name none", u.Slot)
		}
		u.Kind = broadcast.KindSync
	default:
		return broadcast.SlotUpdate{}, invalidf("slot update: no state (advert, artifact, cleared or sync)")
	}
	return u, nil
}

// decodeSlotUpdate reads b without copying its bytes fields when it is in
// the canonical form (alias.go), else through protobuf.
func decodeSlotUpdate(b []byte, lim Limits) (rawSlotUpdate, error) {
	if int64(len(b)) > lim.slotUpdateLen() {
		return rawSlotUpdate{}, invalidf("slot update: %d bytes, longer than any valid one (%d)", len(b), lim.slotUpdateLen())
	}
	if raw, ok := aliasSlotUpdate(b); ok {
		return raw, nil
	}
	var m abcastpb.SlotUpdate
	if err := unmarshal("slot update", b, lim.slotUpdateLen(), &m); err != nil {
		return rawSlotUpdate{}, err
	}
	return rawFromPB(&m), nil
}

// rawFromPB is what protobuf decoded, in the form the checks read.
func rawFromPB(m *abcastpb.SlotUpdate) rawSlotUpdate {
	raw := rawSlotUpdate{commit: m.GetCommitId(), slot: m.GetSlot()}
	switch s := m.GetState().(type) {
	case *abcastpb.SlotUpdate_Advert:
		raw.state, raw.id, raw.attr, raw.digest = 3, s.Advert.GetId(), s.Advert.GetAttribute(), s.Advert.GetDigest()
	case *abcastpb.SlotUpdate_Artifact:
		a := s.Artifact
		raw.state, raw.id, raw.attr, raw.payload, raw.latency = 4, a.GetId(), a.GetAttribute(), a.GetPayload(), a.GetLatencySensitive()
	case *abcastpb.SlotUpdate_Cleared:
		raw.state = 5
	case *abcastpb.SlotUpdate_Sync:
		raw.state = 6
	}
	return raw
}
