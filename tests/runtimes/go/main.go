// Command agent is a small Go agent of the kind keyturn holds: while goroutines index its
// workspace, another makes the tool call, a raw TCP report (dial) or an HTTP GET through
// net/http (http), on an OS thread the Go scheduler picks, never the main one.
//
// Usage: agent [-dial-timeout D] dial HOST:PORT REPORT | agent [-dial-timeout D] http URL
//
// -dial-timeout gives each dial a deadline, as net/http's DefaultTransport does (30 s).
//
// The thread that connects prints "acting PID TID" just before it connects; the agent
// prints "sent N" (dial) or "status CODE body BODY" (http) once done.
package main

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
)

// Goroutines kept busy while the tool call runs, so that the scheduler spreads work over
// several OS threads.
const indexers = 3

// dialer makes every connection; -dial-timeout sets its Timeout.
var dialer net.Dialer

func init() {
	// init runs on the main thread, and locking it there makes main run there too: the
	// main goroutine keeps the main thread to itself, so every other goroutine (the tool
	// call among them) runs on another OS thread.
	runtime.LockOSThread()
}

// acting reports the OS thread the calling goroutine runs on; the caller has wired itself
// to that thread (runtime.LockOSThread) until its connect is done.
func acting() {
	link, err := os.Readlink("/proc/thread-self")
	if err != nil {
		fail(err)
	}
	parts := strings.Split(link, "/") // PID/task/TID
	fmt.Printf("acting %s %s\n", parts[0], parts[2])
}

// index keeps a goroutine busy hashing until done is closed, as an agent indexes its
// workspace while it waits for a tool.
func index(done <-chan struct{}, finished *sync.WaitGroup) {
	defer finished.Done()
	block := make([]byte, 16<<10)
	for {
		select {
		case <-done:
			return
		default:
			sum := sha256.Sum256(block)
			block[0] = sum[0]
		}
	}
}

// report sends the report over one TCP connection, dialled from this goroutine.
func report(addr, text string) (string, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	acting()
	conn, err := dialer.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	sent, err := io.WriteString(conn, text)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("sent %d", sent), nil
}

// reportingDial is net/http's dial, which the transport runs in a goroutine of its own:
// that goroutine stays on its OS thread for the dial, so the thread it reports is the one
// that connects.
func reportingDial(ctx context.Context, network, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	acting()
	return dialer.DialContext(ctx, network, addr)
}

// fetch GETs url with net/http and returns the status and the body.
func fetch(url string) (string, error) {
	transport := &http.Transport{DialContext: reportingDial}
	defer transport.CloseIdleConnections()
	response, err := (&http.Client{Transport: transport}).Get(url)
	if err != nil {
		return "", err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("status %d body %s", response.StatusCode, body), nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "agent:", err)
	os.Exit(1)
}

func main() {
	if runtime.GOMAXPROCS(0) < 4 {
		runtime.GOMAXPROCS(4)
	}
	flag.DurationVar(&dialer.Timeout, "dial-timeout", 0, "a deadline for each dial (0: none)")
	flag.Parse()
	args := flag.Args()
	var tool func() (string, error)
	switch {
	case len(args) == 3 && args[0] == "dial":
		tool = func() (string, error) { return report(args[1], args[2]) }
	case len(args) == 2 && args[0] == "http":
		tool = func() (string, error) { return fetch(args[1]) }
	default:
		fmt.Fprintln(os.Stderr, "usage: agent [-dial-timeout D] dial HOST:PORT REPORT | agent [-dial-timeout D] http URL")
		os.Exit(2)
	}

	done := make(chan struct{})
	var finished sync.WaitGroup
	for i := 0; i < indexers; i++ {
		finished.Add(1)
		go index(done, &finished)
	}
	type outcome struct {
		line string
		err  error
	}
	result := make(chan outcome)
	go func() {
		line, err := tool()
		result <- outcome{line, err}
	}()
	got := <-result
	close(done)
	finished.Wait()
	if got.err != nil {
		fail(got.err)
	}
	fmt.Println(got.line)
}
