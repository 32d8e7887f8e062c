// TLS ping-pong for `make bench` in Go's own TLS (crypto/tls): a client and a
// server goroutine in one process, over loopback TCP. The client writes SIZE
// bytes, the server reads them and writes them back, for SECONDS. Prints one
// JSON line as bench/tls_pingpong.c does. Usage: go_pingpong CERT KEY SIZE SECONDS
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

func must(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "go_pingpong: %s: %v\n", what, err)
		os.Exit(1)
	}
}

func serve(listener net.Listener, size int, done chan<- struct{}) {
	defer close(done)
	conn, err := listener.Accept()
	must(err, "accept")
	defer conn.Close()
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(conn, buf); err != nil {
			return
		}
		if _, err := conn.Write(buf); err != nil {
			return
		}
	}
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintf(os.Stderr, "usage: %s CERT KEY SIZE SECONDS\n", os.Args[0])
		os.Exit(2)
	}
	certificate, err := tls.LoadX509KeyPair(os.Args[1], os.Args[2])
	must(err, "certificate")
	size, err := strconv.Atoi(os.Args[3])
	must(err, "SIZE")
	seconds, err := strconv.ParseFloat(os.Args[4], 64)
	must(err, "SECONDS")

	listener, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{certificate}})
	must(err, "listen")
	done := make(chan struct{})
	go serve(listener, size, done)

	// Go sets TCP_NODELAY on every TCP connection it makes or accepts.
	conn, err := tls.Dial("tcp", listener.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	must(err, "dial")
	out, in := make([]byte, size), make([]byte, size)
	for i := range out {
		out[i] = 'x'
	}
	roundTrips := 0
	start := time.Now()
	var elapsed time.Duration
	for elapsed.Seconds() < seconds {
		_, err := conn.Write(out)
		must(err, "client write")
		_, err = io.ReadFull(conn, in)
		must(err, "client read")
		roundTrips++
		elapsed = time.Since(start)
	}
	conn.Close()
	<-done
	// Each round trip: client write, server read, server write, client read.
	fmt.Printf("{\"size\": %d, \"round_trips\": %d, \"seconds\": %.6f, \"ssl_bytes\": %d}\n",
		size, roundTrips, elapsed.Seconds(), roundTrips*size*4)
}
