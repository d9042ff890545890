package apiserver

import (
	"errors"
	"fmt"
	"net/http"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/capstan-net/capstan/control/registry"
	"github.com/capstan-net/capstan/control/storage"
)

// toStatusError maps any error to an API Status error. Storage sentinels
// get their Kubernetes codes; anything unknown is a 500 that names itself.
func toStatusError(err error, res *registry.Resource, name string) *apierrors.StatusError {
	var se *apierrors.StatusError
	if errors.As(err, &se) {
		return se
	}
	var apiStatus apierrors.APIStatus
	if errors.As(err, &apiStatus) {
		return &apierrors.StatusError{ErrStatus: apiStatus.Status()}
	}
	gr := schema.GroupResource{}
	if res != nil {
		gr = res.GroupResource()
	}
	var detail string
	var serr *storage.Error
	if errors.As(err, &serr) {
		detail = serr.Detail
	}
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return apierrors.NewNotFound(gr, name)
	case errors.Is(err, storage.ErrExists):
		return apierrors.NewAlreadyExists(gr, name)
	case errors.Is(err, storage.ErrConflict):
		if detail == "" {
			detail = "the object has been modified; please apply your changes to the latest version and try again"
		}
		return apierrors.NewConflict(gr, name, errors.New(detail))
	case errors.Is(err, storage.ErrGone):
		return apierrors.NewResourceExpired(detail)
	case errors.Is(err, storage.ErrTooLarge):
		return apierrors.NewTimeoutError(detail, 1)
	case errors.Is(err, storage.ErrInvalid):
		return apierrors.NewBadRequest(detail)
	}
	return apierrors.NewInternalError(err)
}

func badRequest(format string, args ...any) *apierrors.StatusError {
	return apierrors.NewBadRequest(fmt.Sprintf(format, args...))
}

func statusFor(code int32, reason metav1.StatusReason, msg string) *apierrors.StatusError {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: code, Reason: reason, Message: msg,
	}}
}

func notFoundPath(path string) *apierrors.StatusError {
	return statusFor(http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("the server could not find the requested resource (path %s)", path))
}

func notAcceptable(what string) *apierrors.StatusError {
	return statusFor(http.StatusNotAcceptable, metav1.StatusReasonNotAcceptable, "the server cannot produce "+what)
}
