package membership

import (
	"errors"
	"fmt"
	"io/fs"
)

// LoadIdentity reads an existing key file (see LoadOrCreateIdentity for the
// checks) and never creates one: tools that take a key path to describe an
// existing node use it, so a typo does not mint a new identity.
func LoadIdentity(path string) (*Identity, error) {
	id, err := loadIdentity(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w %s: %w", ErrBadKeyFile, path, err)
	}
	return id, err
}

// CreateIdentity generates a new key and writes it to path (mode 0600). It
// fails if path exists, so an identity is never overwritten.
func CreateIdentity(path string) (*Identity, error) {
	return createIdentity(path)
}
