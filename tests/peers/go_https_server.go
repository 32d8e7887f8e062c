// Go's own HTTPS server (net/http over crypto/tls): serves on 127.0.0.1 at
// the port given, or on the Unix socket at the path given, with the
// certificate and key given, answering every GET with "go-server-body-for
// PATH"; prints "listening" once it accepts.
package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: go_https_server PORT|SOCKET_PATH CERT KEY")
		os.Exit(2)
	}
	certificate, err := tls.LoadX509KeyPair(os.Args[2], os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	network, address := "tcp", "127.0.0.1:"+os.Args[1]
	if strings.Contains(os.Args[1], "/") {
		network, address = "unix", os.Args[1]
	}
	listener, err := net.Listen(network, address)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("listening")
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "go-server-body-for %s\n", r.URL.Path)
	})
	config := &tls.Config{Certificates: []tls.Certificate{certificate}}
	server := &http.Server{Handler: handler, TLSConfig: config}
	fmt.Fprintln(os.Stderr, server.Serve(tls.NewListener(listener, config)))
}
