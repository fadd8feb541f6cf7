module spiffed.test/interop/spireserver

go 1.26.6

require github.com/spiffe/spire v1.15.3

// The proxy refuses this module ("403 Forbidden"); SPIRE only uses it in the EJBCA
// UpstreamAuthority plugin, which the tests never configure.
replace github.com/Keyfactor/ejbca-go-client-sdk => ./ejbcastub
