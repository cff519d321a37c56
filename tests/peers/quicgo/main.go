// quicgo-peer: quic-go as the other end of quicflow's interop tests.
//
// It speaks hq-interop (HTTP/0.9 over QUIC, ALPN "hq-interop"): a client opens one
// bidirectional stream per file, sends "GET /path\r\n" and FIN; the server answers with
// the file's bytes and FIN. Everything that happens is reported as JSON lines on stdout.
//
//	quicgo-peer server -listen 127.0.0.1:0 -cert C -key K -root DIR [-retry] [-key-update N]
//	    {"event":"ready","port":N}
//	    {"event":"handshake","cipher_suite":4865,"alpn":"hq-interop"}
//	    {"event":"request","path":"/a","bytes":N}
//	    {"event":"closed","how":"application","remote":true,"code":0,"reason":"",...}
//	quicgo-peer client -connect HOST:PORT -server-name N (-ca F | -insecure) -out DIR
//	        [-suite aes128|aes256|chacha20] [-key-update N] [-close-code C] [-sequential]
//	        [-pause-at N1[,N2...] -resume-file F] /path ...
//	    {"event":"handshake",...}
//	    {"event":"paused","path":"/a","bytes":N,"k":K}  (with -pause-at)
//	    {"event":"result","ok":true,"files":[{"path":"/a","bytes":N,"sha256":"..."}]}
//	    {"event":"closed",...}
//
// -pause-at N1,N2... stops reading the first file that reaches N1 bytes at each Nk (the
// server is then held by flow control) and goes on once the file -resume-file holds at
// least k bytes: a test replaces the server process meanwhile (same-host takeover).
//
// -key-update N makes quic-go start a key update every N packets (its internal
// handshake.KeyUpdateInterval, which quic-go's public API does not expose). Key updates
// and Retry packets seen are counted in the "closed" event.
//
// Built by tests/support/quicgo.py in GOPATH mode against Debian's quic-go sources.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	_ "unsafe" // for go:linkname

	quic "github.com/lucas-clemente/quic-go"
	"github.com/lucas-clemente/quic-go/logging"
)

//go:linkname keyUpdateInterval github.com/lucas-clemente/quic-go/internal/handshake.KeyUpdateInterval
var keyUpdateInterval uint64

const alpn = "hq-interop"

var out = struct {
	sync.Mutex
	enc *json.Encoder
}{enc: json.NewEncoder(os.Stdout)}

func emit(v map[string]interface{}) {
	out.Lock()
	defer out.Unlock()
	_ = out.enc.Encode(v)
}

func fail(format string, args ...interface{}) {
	emit(map[string]interface{}{"event": "error", "message": fmt.Sprintf(format, args...)})
	os.Exit(1)
}

// counters is a connection tracer that counts key updates and Retry packets.
type counters struct {
	logging.NullConnectionTracer
	localUpdates  int64
	remoteUpdates int64
	retries       int64
}

func (c *counters) UpdatedKey(_ logging.KeyPhase, remote bool) {
	if remote {
		atomic.AddInt64(&c.remoteUpdates, 1)
	} else {
		atomic.AddInt64(&c.localUpdates, 1)
	}
}

func (c *counters) ReceivedRetry(*logging.Header) { atomic.AddInt64(&c.retries, 1) }

type tracer struct {
	logging.NullTracer
	mu    sync.Mutex
	conns []*counters
}

func (t *tracer) TracerForConnection(context.Context, logging.Perspective, logging.ConnectionID) logging.ConnectionTracer {
	c := &counters{}
	t.mu.Lock()
	t.conns = append(t.conns, c)
	t.mu.Unlock()
	return c
}

func (t *tracer) last() *counters {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.conns) == 0 {
		return &counters{}
	}
	return t.conns[len(t.conns)-1]
}

func suiteByName(name string) (uint16, error) {
	switch name {
	case "aes128":
		return tls.TLS_AES_128_GCM_SHA256, nil
	case "aes256":
		return tls.TLS_AES_256_GCM_SHA384, nil
	case "chacha20":
		return tls.TLS_CHACHA20_POLY1305_SHA256, nil
	}
	return 0, fmt.Errorf("unknown suite %q", name)
}

func handshakeEvent(conn quic.Connection) {
	st := conn.ConnectionState().TLS
	emit(map[string]interface{}{
		"event": "handshake", "cipher_suite": st.CipherSuite,
		"alpn": st.NegotiatedProtocol,
	})
}

func closedEvent(err error, c *counters) {
	ev := map[string]interface{}{
		"event": "closed", "error": fmt.Sprint(err),
		"key_updates_local":  atomic.LoadInt64(&c.localUpdates),
		"key_updates_remote": atomic.LoadInt64(&c.remoteUpdates),
		"retries":            atomic.LoadInt64(&c.retries),
	}
	var appErr *quic.ApplicationError
	var trErr *quic.TransportError
	switch {
	case errors.As(err, &appErr):
		ev["how"], ev["application"], ev["remote"] = "application", true, appErr.Remote
		ev["code"], ev["reason"] = uint64(appErr.ErrorCode), appErr.ErrorMessage
	case errors.As(err, &trErr):
		ev["how"], ev["application"], ev["remote"] = "transport", false, trErr.Remote
		ev["code"], ev["reason"] = uint64(trErr.ErrorCode), trErr.ErrorMessage
	}
	emit(ev)
}

// ---------------------------------------------------------------------------- server

func serveStream(str quic.Stream, root string) {
	defer str.Close()
	req, err := io.ReadAll(io.LimitReader(str, 4096))
	if err != nil {
		str.CancelWrite(1)
		return
	}
	line := strings.TrimRight(string(req), "\r\n")
	if !strings.HasPrefix(line, "GET /") {
		str.CancelWrite(1)
		return
	}
	rel := filepath.Clean("/" + strings.TrimPrefix(line, "GET /"))
	f, err := os.Open(filepath.Join(root, rel))
	if err != nil {
		str.CancelWrite(1)
		return
	}
	defer f.Close()
	n, err := io.Copy(str, f)
	if err != nil {
		return
	}
	emit(map[string]interface{}{"event": "request", "path": rel, "bytes": n})
}

func server(args []string) {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	certFile := fs.String("cert", "", "PEM certificate")
	keyFile := fs.String("key", "", "PEM key")
	root := fs.String("root", ".", "directory to serve")
	retry := fs.Bool("retry", false, "require address validation (send Retry)")
	keyUpdate := fs.Uint64("key-update", 0, "start a key update every N packets")
	_ = fs.Parse(args)
	if *keyUpdate > 0 {
		keyUpdateInterval = *keyUpdate
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fail("certificate: %v", err)
	}
	tr := &tracer{}
	conf := &quic.Config{
		MaxIdleTimeout: 30 * time.Second, Tracer: tr, // 100 streams at once (the default)
	}
	if *retry {
		conf.RequireAddressValidation = func(net.Addr) bool { return true }
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{alpn}}
	ln, err := quic.ListenAddr(*listen, tlsConf, conf)
	if err != nil {
		fail("listen: %v", err)
	}
	emit(map[string]interface{}{"event": "ready", "port": ln.Addr().(*net.UDPAddr).Port})
	for {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			fail("accept: %v", err)
		}
		handshakeEvent(conn)
		c := tr.last()
		go func() {
			for {
				str, err := conn.AcceptStream(context.Background())
				if err != nil {
					closedEvent(err, c)
					return
				}
				go serveStream(str, *root)
			}
		}()
	}
}

// ---------------------------------------------------------------------------- client

type fileResult struct {
	Path   string `json:"path"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// pause: with -pause-at N1[,N2...], the first file to reach N1 bytes stops being read at
// each Nk until the file -resume-file holds at least k bytes.
var pause struct {
	at     []int64
	resume string
	owner  int32 // 1 once a file has claimed the pauses
}

func waitResume(k int) {
	for {
		if st, e := os.Stat(pause.resume); e == nil && st.Size() >= int64(k) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fetch(conn quic.Connection, path, outDir string) (fileResult, error) {
	str, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		return fileResult{}, err
	}
	if _, err := str.Write([]byte("GET " + path + "\r\n")); err != nil {
		return fileResult{}, err
	}
	str.Close()
	f, err := os.Create(filepath.Join(outDir, filepath.Base(path)))
	if err != nil {
		return fileResult{}, err
	}
	defer f.Close()
	h := sha256.New()
	w := io.MultiWriter(f, h)
	var n int64
	for k, at := range pause.at {
		m, err := io.CopyN(w, str, at-n)
		n += m
		if err == io.EOF {
			break
		} else if err != nil {
			return fileResult{}, fmt.Errorf("%s: %v", path, err)
		}
		if k == 0 && !atomic.CompareAndSwapInt32(&pause.owner, 0, 1) {
			break // another file pauses
		}
		emit(map[string]interface{}{"event": "paused", "path": path, "bytes": n, "k": k + 1})
		waitResume(k + 1)
	}
	m, err := io.Copy(w, str)
	n += m
	if err != nil {
		return fileResult{}, fmt.Errorf("%s: %v", path, err)
	}
	return fileResult{Path: path, Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	addr := fs.String("connect", "", "server HOST:PORT")
	serverName := fs.String("server-name", "localhost", "name to verify and send as SNI")
	caFile := fs.String("ca", "", "PEM file of trusted certificates")
	insecure := fs.Bool("insecure", false, "do not verify the certificate")
	outDir := fs.String("out", ".", "directory for the downloaded files")
	suite := fs.String("suite", "", "offer only this TLS suite: aes128, aes256, chacha20")
	keyUpdate := fs.Uint64("key-update", 0, "start a key update every N packets")
	closeCode := fs.Uint64("close-code", 0, "application error code to close with")
	sequential := fs.Bool("sequential", false, "fetch one file after the other")
	pauseAt := fs.String("pause-at", "", "N1[,N2...]: stop reading a file at each Nk until -resume-file holds k bytes")
	fs.StringVar(&pause.resume, "resume-file", "", "see -pause-at")
	_ = fs.Parse(args)
	for _, f := range strings.Split(*pauseAt, ",") {
		if f == "" {
			continue
		}
		var v int64
		if _, err := fmt.Sscan(f, &v); err != nil {
			fail("bad -pause-at %q", *pauseAt)
		}
		pause.at = append(pause.at, v)
	}
	if *keyUpdate > 0 {
		keyUpdateInterval = *keyUpdate
	}
	tlsConf := &tls.Config{
		ServerName: *serverName, NextProtos: []string{alpn}, InsecureSkipVerify: *insecure,
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fail("ca: %v", err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tlsConf.RootCAs = pool
	}
	if *suite != "" {
		id, err := suiteByName(*suite)
		if err != nil {
			fail("%v", err)
		}
		tlsConf.CipherSuites = []uint16{id}
	}
	tr := &tracer{}
	conf := &quic.Config{MaxIdleTimeout: 30 * time.Second, Tracer: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := quic.DialAddrContext(ctx, *addr, tlsConf, conf)
	if err != nil {
		fail("dial: %v", err)
	}
	handshakeEvent(conn)
	paths := fs.Args()
	results := make([]fileResult, len(paths))
	errs := make([]error, len(paths))
	var wg sync.WaitGroup
	for i, p := range paths {
		if *sequential {
			results[i], errs[i] = fetch(conn, p, *outDir)
			continue
		}
		wg.Add(1)
		go func(i int, p string) {
			defer wg.Done()
			results[i], errs[i] = fetch(conn, p, *outDir)
		}(i, p)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			_ = conn.CloseWithError(1, "download failed")
			fail("%v", err)
		}
	}
	emit(map[string]interface{}{"event": "result", "ok": true, "files": results})
	c := tr.last()
	_ = conn.CloseWithError(quic.ApplicationErrorCode(*closeCode), "")
	<-conn.Context().Done()
	closedEvent(&quic.ApplicationError{ErrorCode: quic.ApplicationErrorCode(*closeCode)}, c)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: quicgo-peer server|client [options]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "server":
		server(os.Args[2:])
	case "client":
		client(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "usage: quicgo-peer server|client [options]")
		os.Exit(2)
	}
}
