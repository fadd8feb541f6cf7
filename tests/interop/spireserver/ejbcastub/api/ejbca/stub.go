// Package ejbca stands in for github.com/Keyfactor/ejbca-go-client-sdk v1.1.0, which the Go
// module proxy refuses to serve here. It has only the API SPIRE's EJBCA UpstreamAuthority plugin
// compiles against; every call fails. The spire-server built for spiffed's interop tests never
// configures that plugin.
package ejbca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
)

var errStub = errors.New("ejbca client SDK is not available in this build")

// Authenticator authenticates requests.
type Authenticator interface{}

// MTLSAuthenticatorBuilder builds an Authenticator.
type MTLSAuthenticatorBuilder struct{}

// NewMTLSAuthenticatorBuilder returns a builder.
func NewMTLSAuthenticatorBuilder() *MTLSAuthenticatorBuilder { return &MTLSAuthenticatorBuilder{} }

// WithClientCertificate is a no-op.
func (b *MTLSAuthenticatorBuilder) WithClientCertificate(*tls.Certificate) *MTLSAuthenticatorBuilder {
	return b
}

// WithCaCertificates is a no-op.
func (b *MTLSAuthenticatorBuilder) WithCaCertificates([]*x509.Certificate) *MTLSAuthenticatorBuilder {
	return b
}

// Build fails.
func (b *MTLSAuthenticatorBuilder) Build() (Authenticator, error) { return nil, errStub }

// Configuration of a client.
type Configuration struct{ Host string }

// NewConfiguration returns an empty configuration.
func NewConfiguration() *Configuration { return &Configuration{} }

// SetAuthenticator is a no-op.
func (c *Configuration) SetAuthenticator(Authenticator) {}

// APIClient is a client.
type APIClient struct{ V1CertificateApi *V1CertificateApiService }

// NewAPIClient fails.
func NewAPIClient(*Configuration) (*APIClient, error) { return nil, errStub }

// V1CertificateApiService enrolls certificates.
type V1CertificateApiService struct{}

// EnrollPkcs10Certificate returns a request that fails.
func (s *V1CertificateApiService) EnrollPkcs10Certificate(context.Context) ApiEnrollPkcs10CertificateRequest {
	return ApiEnrollPkcs10CertificateRequest{}
}

// ApiEnrollPkcs10CertificateRequest is a request.
type ApiEnrollPkcs10CertificateRequest struct{}

// EnrollCertificateRestRequest sets the body.
func (r ApiEnrollPkcs10CertificateRequest) EnrollCertificateRestRequest(EnrollCertificateRestRequest) ApiEnrollPkcs10CertificateRequest {
	return r
}

// Execute fails.
func (r ApiEnrollPkcs10CertificateRequest) Execute() (*CertificateRestResponse, *http.Response, error) {
	return nil, nil, errStub
}

// EnrollCertificateRestRequest is the enrollment body.
type EnrollCertificateRestRequest struct{}

// NewEnrollCertificateRestRequest returns an empty body.
func NewEnrollCertificateRestRequest() *EnrollCertificateRestRequest {
	return &EnrollCertificateRestRequest{}
}

func (r *EnrollCertificateRestRequest) SetUsername(string)                 {}
func (r *EnrollCertificateRestRequest) SetPassword(string)                 {}
func (r *EnrollCertificateRestRequest) SetCertificateRequest(string)       {}
func (r *EnrollCertificateRestRequest) SetCertificateAuthorityName(string) {}
func (r *EnrollCertificateRestRequest) SetCertificateProfileName(string)   {}
func (r *EnrollCertificateRestRequest) SetEndEntityProfileName(string)     {}
func (r *EnrollCertificateRestRequest) SetIncludeChain(bool)               {}
func (r *EnrollCertificateRestRequest) SetAccountBindingId(string)         {}

// CertificateRestResponse is an enrollment answer.
type CertificateRestResponse struct{ CertificateChain []string }

// GetResponseFormat returns "".
func (r *CertificateRestResponse) GetResponseFormat() string { return "" }

// GetCertificate returns "".
func (r *CertificateRestResponse) GetCertificate() string { return "" }

// GenericOpenAPIError is an API error.
type GenericOpenAPIError struct{}

func (e *GenericOpenAPIError) Error() string { return errStub.Error() }

// Body returns nothing.
func (e *GenericOpenAPIError) Body() []byte { return nil }
