// A Go program without crypto/tls, which the gotls module must refuse.
package main

import "fmt"

func main() {
	fmt.Println("hello")
}
