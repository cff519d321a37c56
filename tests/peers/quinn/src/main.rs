//! quinn-peer: quinn as the other end of quicflow's interop tests.
//!
//! It speaks hq-interop (HTTP/0.9 over QUIC, ALPN "hq-interop"): the client opens one
//! bidirectional stream per file, sends "GET /path\r\n" and FIN; the server answers with
//! the file's bytes and FIN. What happens is reported as JSON lines on stdout.
//!
//!   quinn-peer server --cert C --key K --root DIR [--retry] [--key-update]
//!       {"event":"ready","port":N}
//!       {"event":"handshake","alpn":"hq-interop"}
//!       {"event":"request","path":"/a","bytes":N}
//!       {"event":"closed","how":"application","remote":true,"code":0,"reason":""}
//!   quinn-peer client --connect HOST:PORT --ca F --out DIR [--suite aes128|aes256|chacha20]
//!           [--key-update] [--sequential] [--pause-at N1[,N2...] --resume-file F] /path ...
//!       {"event":"handshake","alpn":"hq-interop"}
//!       {"event":"paused","path":"/a","bytes":N,"k":K}  (with --pause-at)
//!       {"event":"result","ok":true,"files":[{"path":"/a","bytes":N,"sha256":"..."}]}
//!       {"event":"closed",...}
//!
//! --pause-at N1,N2... stops reading the first file that reaches N1 bytes at each Nk (the
//! server is then held by flow control) until the file --resume-file holds at least k
//! bytes: a test replaces the server process meanwhile (same-host takeover).
//! --key-update (server) starts a key update before it answers each request.
//! --sequential (client) fetches the files one after the other; --key-update does too and
//! starts a key update (quinn's Connection::force_key_update) before each one. quinn
//! reports neither the negotiated cipher suite nor key updates: the tests read both on
//! quicflow's side.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const ALPN: &[u8] = b"hq-interop";

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn emit(fields: &[(&str, String)]) {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{}", json_str(k), v)).collect();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{{{}}}", body.join(","));
    let _ = stdout.flush();
}

fn fail(message: &str) -> ! {
    emit(&[("event", json_str("error")), ("message", json_str(message))]);
    std::process::exit(1);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{:02x}", b)).collect()
}

/// "--name value" options and bare positional arguments.
fn parse_args(args: &[String]) -> (HashMap<String, String>, Vec<String>) {
    let mut opts = HashMap::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some(name) = a.strip_prefix("--") {
            if matches!(name, "retry" | "key-update" | "sequential") {
                opts.insert(name.to_string(), String::new());
            } else {
                let value = args.get(i + 1).unwrap_or_else(|| fail(&format!("{} needs a value", a)));
                opts.insert(name.to_string(), value.clone());
                i += 1;
            }
        } else {
            rest.push(a.clone());
        }
        i += 1;
    }
    (opts, rest)
}

fn closed_event(err: &quinn::ConnectionError) {
    let (how, remote, code, reason) = match err {
        quinn::ConnectionError::ApplicationClosed(c) => (
            "application", true, c.error_code.into_inner(), String::from_utf8_lossy(&c.reason).into_owned()),
        quinn::ConnectionError::ConnectionClosed(c) => (
            "transport", true, u64::from(c.error_code), String::from_utf8_lossy(&c.reason).into_owned()),
        quinn::ConnectionError::LocallyClosed => ("local", false, 0, String::new()),
        other => ("other", false, 0, other.to_string()),
    };
    emit(&[("event", json_str("closed")), ("how", json_str(how)), ("remote", remote.to_string()),
           ("code", code.to_string()), ("reason", json_str(&reason))]);
}

fn alpn_of(conn: &quinn::Connection) -> String {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol.clone())
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------- server

async fn serve_stream(mut send: quinn::SendStream, recv: quinn::RecvStream, root: PathBuf) {
    let request = match recv.read_to_end(4096).await {
        Ok(r) => r,
        Err(_) => {
            let _ = send.reset(1u32.into());
            return;
        }
    };
    let text = String::from_utf8_lossy(&request);
    let path = match text.trim_end().strip_prefix("GET /") {
        Some(p) if !p.split('/').any(|s| s == "..") => p.to_string(),
        _ => {
            let _ = send.reset(1u32.into());
            return;
        }
    };
    let data = match fs::read(root.join(&path)) {
        Ok(d) => d,
        Err(_) => {
            let _ = send.reset(1u32.into());
            return;
        }
    };
    if send.write_all(&data).await.is_err() || send.finish().await.is_err() {
        return;
    }
    emit(&[("event", json_str("request")), ("path", json_str(&format!("/{}", path))),
           ("bytes", data.len().to_string())]);
}

async fn server(opts: HashMap<String, String>) {
    let get = |k: &str| opts.get(k).cloned().unwrap_or_else(|| fail(&format!("--{} is required", k)));
    let certs = rustls_pemfile::certs(&mut &fs::read(get("cert")).unwrap_or_else(|e| fail(&e.to_string()))[..])
        .unwrap_or_else(|e| fail(&e.to_string()));
    let key_pem = fs::read(get("key")).unwrap_or_else(|e| fail(&e.to_string()));
    let key = rustls_pemfile::pkcs8_private_keys(&mut &key_pem[..])
        .unwrap_or_else(|e| fail(&e.to_string()))
        .pop()
        .unwrap_or_else(|| fail("no PKCS#8 key"));
    let mut tls = rustls::ServerConfig::builder()
        .with_safe_defaults()
        .with_no_client_auth()
        .with_single_cert(certs.into_iter().map(rustls::Certificate).collect(), rustls::PrivateKey(key))
        .unwrap_or_else(|e| fail(&e.to_string()));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(tls));
    config.use_retry(opts.contains_key("retry"));
    let listen: SocketAddr = opts.get("listen").map(|s| s.as_str()).unwrap_or("127.0.0.1:0")
        .parse().unwrap_or_else(|_| fail("bad --listen"));
    let endpoint = quinn::Endpoint::server(config, listen).unwrap_or_else(|e| fail(&e.to_string()));
    let port = endpoint.local_addr().map(|a| a.port()).unwrap_or(0);
    emit(&[("event", json_str("ready")), ("port", port.to_string())]);
    let root = PathBuf::from(get("root"));
    let key_update = opts.contains_key("key-update");
    while let Some(connecting) = endpoint.accept().await {
        let root = root.clone();
        tokio::spawn(async move {
            let conn = match connecting.await {
                Ok(c) => c,
                Err(e) => return closed_event(&e),
            };
            emit(&[("event", json_str("handshake")), ("alpn", json_str(&alpn_of(&conn)))]);
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        if key_update {
                            conn.force_key_update();
                        }
                        tokio::spawn(serve_stream(send, recv, root.clone()));
                    }
                    Err(e) => return closed_event(&e),
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------- client

/// --pause-at N1[,N2...]: the first file to reach N1 bytes stops being read at each Nk
/// (the server is then held by flow control) until the file --resume-file holds at least
/// k bytes.
static PAUSED: AtomicBool = AtomicBool::new(false);

async fn pause_at(recv: &mut quinn::RecvStream, path: &str, pause: &Option<(Vec<usize>, PathBuf)>)
                  -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    let Some((points, resume)) = pause else { return Ok(data) };
    let mut buf = vec![0u8; 64 * 1024];
    for (k, at) in points.iter().enumerate() {
        while data.len() < *at {
            let want = buf.len().min(*at - data.len());
            match recv.read(&mut buf[..want]).await.map_err(|e| format!("{}: {}", path, e))? {
                Some(n) => data.extend_from_slice(&buf[..n]),
                None => return Ok(data),
            }
        }
        if k == 0 && PAUSED.swap(true, Ordering::SeqCst) {
            return Ok(data); // another file pauses
        }
        emit(&[("event", json_str("paused")), ("path", json_str(path)),
               ("bytes", data.len().to_string()), ("k", (k + 1).to_string())]);
        while fs::metadata(resume).map(|m| m.len()).unwrap_or(0) < (k + 1) as u64 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    Ok(data)
}

async fn fetch(conn: quinn::Connection, path: String, out: PathBuf,
               pause: Option<(Vec<usize>, PathBuf)>) -> Result<String, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(format!("GET {}\r\n", path).as_bytes()).await.map_err(|e| e.to_string())?;
    send.finish().await.map_err(|e| e.to_string())?;
    let mut data = pause_at(&mut recv, &path, &pause).await?;
    data.extend(recv.read_to_end(1 << 30).await.map_err(|e| format!("{}: {}", path, e))?);
    let name = Path::new(&path).file_name().map(|n| n.to_owned()).unwrap_or_else(|| "index.html".into());
    fs::write(out.join(name), &data).map_err(|e| e.to_string())?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &data);
    Ok(format!("{{\"path\":{},\"bytes\":{},\"sha256\":\"{}\"}}", json_str(&path), data.len(), hex(digest.as_ref())))
}

async fn client(opts: HashMap<String, String>, paths: Vec<String>) {
    let get = |k: &str| opts.get(k).cloned().unwrap_or_else(|| fail(&format!("--{} is required", k)));
    let mut roots = rustls::RootCertStore::empty();
    let ca = fs::read(get("ca")).unwrap_or_else(|e| fail(&e.to_string()));
    for cert in rustls_pemfile::certs(&mut &ca[..]).unwrap_or_else(|e| fail(&e.to_string())) {
        roots.add(&rustls::Certificate(cert)).unwrap_or_else(|e| fail(&e.to_string()));
    }
    let suites: Vec<rustls::SupportedCipherSuite> = match opts.get("suite").map(|s| s.as_str()) {
        None => rustls::DEFAULT_CIPHER_SUITES.to_vec(),
        Some("aes128") => vec![rustls::cipher_suite::TLS13_AES_128_GCM_SHA256],
        Some("aes256") => vec![rustls::cipher_suite::TLS13_AES_256_GCM_SHA384],
        Some("chacha20") => vec![rustls::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        Some(other) => fail(&format!("unknown suite {}", other)),
    };
    let mut tls = rustls::ClientConfig::builder()
        .with_cipher_suites(&suites)
        .with_safe_default_kx_groups()
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| fail(&e.to_string()))
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let addr: SocketAddr = get("connect").parse().unwrap_or_else(|_| fail("bad --connect"));
    // the unspecified address of the server's family: the route picks the source (a
    // server outside loopback, e.g. in a network namespace, is reachable too)
    let local: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
    let mut endpoint = quinn::Endpoint::client(local).unwrap_or_else(|e| fail(&e.to_string()));
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(tls)));
    let server_name = opts.get("server-name").cloned().unwrap_or_else(|| "localhost".into());
    let conn = endpoint.connect(addr, &server_name).unwrap_or_else(|e| fail(&e.to_string()))
        .await.unwrap_or_else(|e| fail(&format!("handshake: {}", e)));
    emit(&[("event", json_str("handshake")), ("alpn", json_str(&alpn_of(&conn)))]);
    let out = PathBuf::from(get("out"));
    let pause = opts.get("pause-at").map(|n| {
        (n.split(',').map(|v| v.parse::<usize>().unwrap_or_else(|_| fail("bad --pause-at"))).collect(),
         PathBuf::from(get("resume-file")))
    });
    let mut results = Vec::new();
    if opts.contains_key("key-update") || opts.contains_key("sequential") {
        for p in &paths {
            if opts.contains_key("key-update") {
                conn.force_key_update();
            }
            results.push(fetch(conn.clone(), p.clone(), out.clone(), pause.clone()).await);
        }
    } else {
        let tasks: Vec<_> = paths.iter()
            .map(|p| tokio::spawn(fetch(conn.clone(), p.clone(), out.clone(), pause.clone())))
            .collect();
        for t in tasks {
            results.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
        }
    }
    let mut files = Vec::new();
    for r in results {
        match r {
            Ok(f) => files.push(f),
            Err(e) => {
                conn.close(1u32.into(), b"download failed");
                fail(&e);
            }
        }
    }
    emit(&[("event", json_str("result")), ("ok", "true".into()), ("files", format!("[{}]", files.join(",")))]);
    conn.close(0u32.into(), b"");
    endpoint.wait_idle().await;
    closed_event(&quinn::ConnectionError::LocallyClosed);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    match args.get(1).map(|s| s.as_str()) {
        Some("server") => {
            let (opts, _) = parse_args(&args[2..]);
            runtime.block_on(server(opts));
        }
        Some("client") => {
            let (opts, paths) = parse_args(&args[2..]);
            runtime.block_on(client(opts, paths));
        }
        _ => {
            eprintln!("usage: quinn-peer server|client [options]");
            std::process::exit(2);
        }
    }
}
