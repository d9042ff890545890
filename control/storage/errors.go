package storage

import (
	"errors"
	"fmt"
)

// Sentinel errors; callers test them with errors.Is and map them to API
// Status codes.
var (
	ErrNotFound = errors.New("storage: key not found")
	ErrExists   = errors.New("storage: key exists")
	ErrConflict = errors.New("storage: resource version conflict")
	// ErrGone: the requested revision was compacted away (410).
	ErrGone = errors.New("storage: revision compacted")
	// ErrTooLarge: the requested revision is newer than the store (504 upstream).
	ErrTooLarge = errors.New("storage: revision not yet reached")
	// ErrInvalid: a malformed resourceVersion or continue token (400).
	ErrInvalid = errors.New("storage: invalid request")
)

// Error carries the key and detail with one of the sentinels.
type Error struct {
	Kind   error
	Key    string
	Detail string
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("%v: %s", e.Kind, e.Key)
	}
	return fmt.Sprintf("%v: %s: %s", e.Kind, e.Key, e.Detail)
}

func (e *Error) Unwrap() error { return e.Kind }

func newErr(kind error, key, format string, args ...any) error {
	return &Error{Kind: kind, Key: key, Detail: fmt.Sprintf(format, args...)}
}
