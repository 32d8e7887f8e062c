// Go's own TLS (crypto/tls): once a line arrives on stdin, GETs the URL
// given as the argument, certificate unchecked, and prints the body; then
// waits for stdin to close. GO_TLS_MAX=1.2 keeps it to TLS 1.2; GO_KEYLOG
// names a file for crypto/tls's own key log; GO_HTTP2=1 offers HTTP/2 by
// ALPN, which a custom TLS configuration otherwise turns off.
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	stdin := bufio.NewReader(os.Stdin)
	if _, err := stdin.ReadString('\n'); err != nil {
		os.Exit(1)
	}
	config := &tls.Config{InsecureSkipVerify: true}
	if os.Getenv("GO_TLS_MAX") == "1.2" {
		config.MaxVersion = tls.VersionTLS12
	}
	if path := os.Getenv("GO_KEYLOG"); path != "" {
		keylog, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0600)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		config.KeyLogWriter = keylog
	}
	transport := &http.Transport{TLSClientConfig: config, ForceAttemptHTTP2: os.Getenv("GO_HTTP2") == "1"}
	client := &http.Client{Transport: transport}
	response, err := client.Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(response.Body)
	fmt.Print(string(body))
	io.Copy(io.Discard, stdin)
}
