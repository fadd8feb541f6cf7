// Command x509pop runs SPIRE's own x509pop protocol code for spiffed's interop tests.
//
//	respond KEY.pem CHALLENGE.json    print SPIRE's response to a challenge from spiffed
//	verify CERT.pem CHALLENGE.json RESPONSE.json
//	                                  exit 0 if SPIRE accepts spiffed's response
//	challenge CERT.pem                print a challenge made by SPIRE
//	agentid TRUST_DOMAIN TEMPLATE CERT.pem
//	                                  print the agent ID SPIRE derives
package main

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire/pkg/common/agentpathtemplate"
	"github.com/spiffe/spire/pkg/common/plugin/x509pop"
)

func die(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func readPEM(path string) *pem.Block {
	data, err := os.ReadFile(path)
	if err != nil {
		die("read %s: %v", path, err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		die("%s: no PEM block", path)
	}
	return block
}

func readCert(path string) *x509.Certificate {
	cert, err := x509.ParseCertificate(readPEM(path).Bytes)
	if err != nil {
		die("parse certificate %s: %v", path, err)
	}
	return cert
}

func readJSON(path string, v any) {
	data, err := os.ReadFile(path)
	if err != nil {
		die("read %s: %v", path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		die("decode %s: %v", path, err)
	}
}

func printJSON(v any) {
	out, err := json.Marshal(v)
	if err != nil {
		die("encode: %v", err)
	}
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) < 2 {
		die("usage: x509pop respond|verify|challenge|agentid ...")
	}
	switch os.Args[1] {
	case "respond":
		key, err := x509.ParsePKCS8PrivateKey(readPEM(os.Args[2]).Bytes)
		if err != nil {
			die("parse key: %v", err)
		}
		challenge := new(x509pop.Challenge)
		readJSON(os.Args[3], challenge)
		response, err := x509pop.CalculateResponse(key, challenge)
		if err != nil {
			die("respond: %v", err)
		}
		printJSON(response)
	case "verify":
		cert := readCert(os.Args[2])
		challenge := new(x509pop.Challenge)
		readJSON(os.Args[3], challenge)
		response := new(x509pop.Response)
		readJSON(os.Args[4], response)
		if err := x509pop.VerifyChallengeResponse(cert.PublicKey, challenge, response); err != nil {
			die("verify: %v", err)
		}
		fmt.Println("ok")
	case "challenge":
		challenge, err := x509pop.GenerateChallenge(readCert(os.Args[2]))
		if err != nil {
			die("challenge: %v", err)
		}
		printJSON(challenge)
	case "agentid":
		td, err := spiffeid.TrustDomainFromString(os.Args[2])
		if err != nil {
			die("trust domain: %v", err)
		}
		tmpl, err := agentpathtemplate.Parse(os.Args[3])
		if err != nil {
			die("template: %v", err)
		}
		id, err := x509pop.MakeAgentID(td, tmpl, readCert(os.Args[4]), "", nil)
		if err != nil {
			die("agent id: %v", err)
		}
		fmt.Println(id.String())
	default:
		die("unknown command %q", os.Args[1])
	}
}
