// A Go HTTPS client under load, for the "no harm" test of `ecapture gotls`.
// Usage: go_load_client BASE_URL REQUESTS GOROUTINES DEPTHS
//
// First GETs BASE_URL/0 to BASE_URL/(REQUESTS-1) from GOROUTINES goroutines
// over keep-alive connections (net/http), checking every body. Then, over
// one connection of its own, writes DEPTHS requests for BASE_URL/deep/D,
// each from a new goroutine whose stack is D calls deep: somewhere in that
// range a write's stack runs out in (*tls.Conn).Write's own stack check and
// grows, which makes the function start twice. Prints what it did; exits 1
// on any wrong answer.
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func expectedBody(path string) string {
	return fmt.Sprintf("response-body-for %s\n", path)
}

// Calls `then` from depth calls down, each with a frame of its own.
//
//go:noinline
func deep(depth int, then func()) {
	var frame [4]uint64
	frame[depth%4] = uint64(depth)
	if depth <= 0 {
		then()
		return
	}
	deep(depth-1, then)
	_ = frame
}

func loadOverKeepAlive(base *url.URL, requests, goroutines int) (reused int64) {
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		MaxIdleConnsPerHost: goroutines,
		MaxConnsPerHost:     goroutines,
	}
	client := &http.Client{Transport: transport}
	indexes := make(chan int)
	var wrong int64
	var workers sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for i := range indexes {
				path := fmt.Sprintf("%s/%d", base.Path, i)
				trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
					if info.Reused {
						atomic.AddInt64(&reused, 1)
					}
				}}
				request, _ := http.NewRequest("GET", base.Scheme+"://"+base.Host+path, nil)
				response, err := client.Do(request.WithContext(httptrace.WithClientTrace(request.Context(), trace)))
				if err != nil {
					fail("GET %s: %v", path, err)
				}
				body, err := io.ReadAll(response.Body)
				response.Body.Close()
				if err != nil || string(body) != expectedBody(path) {
					atomic.AddInt64(&wrong, 1)
				}
			}
		}()
	}
	for i := 0; i < requests; i++ {
		indexes <- i
	}
	close(indexes)
	workers.Wait()
	if wrong > 0 {
		fail("%d wrong answers", wrong)
	}
	return reused
}

func writesAtEveryDepth(base *url.URL, depths int) {
	conn, err := tls.Dial("tcp", base.Host, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		fail("dial: %v", err)
	}
	defer conn.Close()
	// Pipelined: the answers are read once every request is out.
	answers := make(chan error)
	go func() {
		responses := bufio.NewReader(conn)
		for depth := 0; depth < depths; depth++ {
			path := fmt.Sprintf("%s/deep/%d", base.Path, depth)
			response, err := http.ReadResponse(responses, nil)
			if err != nil {
				answers <- fmt.Errorf("response at depth %d: %v", depth, err)
				return
			}
			body, err := io.ReadAll(response.Body)
			response.Body.Close()
			if err != nil || string(body) != expectedBody(path) {
				answers <- fmt.Errorf("wrong answer at depth %d: %q", depth, body)
				return
			}
		}
		answers <- nil
	}()
	for depth := 0; depth < depths; depth++ {
		path := fmt.Sprintf("%s/deep/%d", base.Path, depth)
		// Made here: an allocation in the goroutine would reach deeper
		// than Write and grow the stack before it.
		request := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, base.Host))
		written := make(chan error)
		go deep(depth, func() {
			_, err := conn.Write(request)
			written <- err
		})
		if err := <-written; err != nil {
			fail("write at depth %d: %v", depth, err)
		}
	}
	if err := <-answers; err != nil {
		fail("%v", err)
	}
}

func main() {
	if len(os.Args) != 5 {
		fail("usage: go_load_client BASE_URL REQUESTS GOROUTINES DEPTHS")
	}
	base, err := url.Parse(os.Args[1])
	if err != nil {
		fail("BASE_URL: %v", err)
	}
	requests, _ := strconv.Atoi(os.Args[2])
	goroutines, _ := strconv.Atoi(os.Args[3])
	depths, _ := strconv.Atoi(os.Args[4])
	reused := loadOverKeepAlive(base, requests, goroutines)
	writesAtEveryDepth(base, depths)
	fmt.Printf("ok: %d requests, %d on reused connections, %d deep writes\n", requests, reused, depths)
}
