// Package bootstrap holds what a fresh cluster needs before nodes can join:
// the join token (a standard bootstrap token) with its Secret, and the RBAC
// that lets its holders ask for node certificates, lets nodes renew them and
// lets every node's dataplane read what it programs.
package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	tokenapi "k8s.io/cluster-bootstrap/token/api"
	tokenutil "k8s.io/cluster-bootstrap/token/util"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// NodeGroup is the extra group of the join token's holders; the RBAC below
// grants it the right to request node client certificates.
const NodeGroup = "system:bootstrappers:capstan:nodes"

// ErrBadToken means a join token is not a bootstrap token ("abcdef.0123456789abcdef").
var ErrBadToken = errors.New("not a bootstrap token (six and sixteen characters of [a-z0-9], joined by a dot)")

// ParseToken checks a join token's form and returns its ID and secret.
func ParseToken(token string) (id, secret string, err error) {
	m := tokenutil.BootstrapTokenRegexp.FindStringSubmatch(strings.TrimSpace(token))
	if m == nil {
		return "", "", ErrBadToken
	}
	return m[1], m[2], nil
}

// LoadOrCreateToken reads the join token at path, or creates one there
// (mode 0600). A file that holds something else is an error naming it:
// it is never overwritten.
func LoadOrCreateToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		t := strings.TrimSpace(string(data))
		if _, _, err := ParseToken(t); err != nil {
			return "", fmt.Errorf("join token %s: %w", path, err)
		}
		return t, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	t, err := tokenutil.GenerateBootstrapToken()
	if err != nil {
		return "", err
	}
	return t, atomicfile.Write(path, []byte(t+"\n"), 0o600)
}

// TokenSecret is the kube-system Secret that makes token a bootstrap token
// for authentication, with no expiry (like k3s's join token: nodes may join
// at any time), in NodeGroup.
func TokenSecret(token string) (*corev1.Secret, error) {
	id, secret, err := ParseToken(token)
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: tokenutil.BootstrapTokenSecretName(id), Namespace: metav1.NamespaceSystem},
		Type:       corev1.SecretTypeBootstrapToken,
		StringData: map[string]string{
			tokenapi.BootstrapTokenIDKey:               id,
			tokenapi.BootstrapTokenSecretKey:           secret,
			tokenapi.BootstrapTokenDescriptionKey:      "Capstan's node join token (capstan agent --token-file)",
			tokenapi.BootstrapTokenUsageAuthentication: "true",
			tokenapi.BootstrapTokenExtraGroupsKey:      NodeGroup,
		},
	}, nil
}

// EnsureTokenSecret creates the token's Secret, or puts it back as it should
// be if someone changed it.
func EnsureTokenSecret(ctx context.Context, cs kubernetes.Interface, token string) error {
	want, err := TokenSecret(token)
	if err != nil {
		return err
	}
	secrets := cs.CoreV1().Secrets(metav1.NamespaceSystem)
	_, err = secrets.Create(ctx, want, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	have, err := secrets.Get(ctx, want.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	have.Type, have.Data, have.StringData = want.Type, nil, want.StringData
	_, err = secrets.Update(ctx, have, metav1.UpdateOptions{})
	return err
}
