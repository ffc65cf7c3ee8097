//! The uwsgi protocol behind a real nginx (`uwsgi_pass` over TCP and over a unix
//! socket, under every model), malformed packets sent directly, unix sockets (stale and
//! live files, modes, `--vacuum`, abstract names, HTTP over a unix socket), and the
//! uWSGI deployment options (`--pidfile`, `--daemonize`, `strict`, the ini of Django's
//! and Flask's deployment guides).

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use forklift::http::uwsgi::encode_request;
use forklift::server::Model;

use crate::support::{
    for_each_model, parse_whole, read_response, wait_exit, Response, Server, BIN, IO_GUARD,
};

fn apps_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// A directory of this test's own (sockets, nginx's files), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "forklift-uwsgi-{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // nginx's workers run as an unprivileged user: they must reach the socket.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `nginx` binary: on PATH, or Debian's.
fn nginx_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nginx"))
            .find(|p| p.is_file())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    assert!(
        bin.is_file(),
        "nginx not found on PATH nor at /usr/sbin/nginx: install it (`apt-get install \
         nginx-light`; .ci/run does) to run the uwsgi protocol tests"
    );
    bin
}

/// The variables nginx sends, as Debian's `uwsgi_params` lists them (written into the
/// test's own directory so the test does not depend on that file).
const UWSGI_PARAMS: &str = "
uwsgi_param QUERY_STRING $query_string;
uwsgi_param REQUEST_METHOD $request_method;
uwsgi_param CONTENT_TYPE $content_type;
uwsgi_param CONTENT_LENGTH $content_length;
uwsgi_param REQUEST_URI $request_uri;
uwsgi_param PATH_INFO $document_uri;
uwsgi_param DOCUMENT_ROOT $document_root;
uwsgi_param SERVER_PROTOCOL $server_protocol;
uwsgi_param REQUEST_SCHEME $scheme;
uwsgi_param HTTPS $https if_not_empty;
uwsgi_param REMOTE_ADDR $remote_addr;
uwsgi_param REMOTE_PORT $remote_port;
uwsgi_param SERVER_PORT $server_port;
uwsgi_param SERVER_NAME $server_name;
";

/// An nginx of this test in front of `upstream` (`unix:/path` or `host:port`), on a
/// free port; stopped when dropped.
struct Nginx {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Nginx {
    fn start(upstream: &str) -> Nginx {
        let dir = TempDir::new("nginx");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.0.display();
        std::fs::write(dir.path("uwsgi_params"), UWSGI_PARAMS).unwrap();
        let conf = format!(
            "worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    uwsgi_temp_path {d}/uwsgi;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 64m;
    server {{
        listen 127.0.0.1:{port};
        server_name forklift.test;
        location / {{ include {d}/uwsgi_params; uwsgi_pass {upstream}; }}
        location /secure/ {{
            include {d}/uwsgi_params;
            uwsgi_param HTTPS on;
            uwsgi_pass {upstream};
        }}
    }}
}}
"
        );
        std::fs::write(dir.path("nginx.conf"), conf).unwrap();
        let mut child = Command::new(nginx_bin())
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(dir.path("nginx.conf"))
            // The log nginx writes before it reads the config: ours, not /var/log's.
            .arg("-e")
            .arg(dir.path("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "nginx exited ({st}): {}",
                    std::fs::read_to_string(dir.path("error.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(IO_GUARD)).unwrap();
        s
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        crate::support::signal(self.child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Tcp,
    Unix,
}

/// One response from `r` to a request written on `s`.
fn ask(s: &mut TcpStream, r: &mut BufReader<TcpStream>, request: &[u8]) -> Response {
    s.write_all(request).unwrap();
    read_response(r, false).expect("a response through nginx")
}

fn json(resp: &Response) -> serde_json::Value {
    assert_eq!(resp.status, 200, "{}", resp.text());
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{e}: {}", resp.text()))
}

fn adler32(data: &[u8]) -> u64 {
    let (mut a, mut b) = (1u64, 0u64);
    for chunk in data.chunks(4096) {
        for &x in chunk {
            a += u64::from(x);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// Everything the issue lists, through nginx to forklift over `transport`: a GET with a
/// query string, a non-ASCII path, many headers, `REMOTE_ADDR`, a 5 MB POST, a chunked
/// upload, a 64 KiB response, a streaming app, `HTTPS=on`, all on one keep-alive client
/// connection while nginx opens one per request to forklift.
fn through_nginx(model: Model, transport: Transport) {
    let dir = TempDir::new("app");
    let sock = dir.path("app.sock");
    let sock_text = sock.to_str().unwrap().to_string();
    let app = apps_dir().join("uwsgi_app.py");
    let mut args = vec![
        "--wsgi-file",
        app.to_str().unwrap(),
        "--model",
        model.name(),
        "--threads",
        "2",
        "--chmod-socket",
        "666",
    ];
    match transport {
        Transport::Tcp => args.extend(["--socket", "127.0.0.1:0"]),
        Transport::Unix => args.extend(["--socket", sock_text.as_str()]),
    }
    let server = Server::start(&args);
    let upstream = match transport {
        Transport::Tcp => server.listener("uwsgi").to_string(),
        Transport::Unix => format!("unix:{sock_text}"),
    };
    let nginx = Nginx::start(&upstream);
    let mut s = nginx.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());

    // A GET with a query string, a non-ASCII path and many headers.
    let mut req =
        String::from("GET /caf%C3%A9/d%20x?a=1&b=two%20words HTTP/1.1\r\nHost: forklift.test\r\n");
    for i in 0..60 {
        req.push_str(&format!("X-Header-{i}: value {i}\r\n"));
    }
    req.push_str("\r\n");
    let resp = ask(&mut s, &mut r, req.as_bytes());
    assert!(!resp.closes(), "nginx keeps the client connection");
    let env = json(&resp);
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["QUERY_STRING"], "a=1&b=two%20words");
    assert_eq!(env["REQUEST_URI"], "/caf%C3%A9/d%20x?a=1&b=two%20words");
    // PATH_INFO is nginx's decoded path, as WSGI wants it (bytes as latin-1).
    assert_eq!(env["PATH_INFO"], "/caf\u{c3}\u{a9}/d x");
    assert_eq!(env["SERVER_NAME"], "forklift.test");
    assert_eq!(env["SERVER_PORT"], nginx.port.to_string());
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(
        env["REMOTE_PORT"],
        s.local_addr().unwrap().port().to_string()
    );
    assert_eq!(env["HTTP_HOST"], "forklift.test");
    assert_eq!(env["wsgi.url_scheme"], "http");
    for i in 0..60 {
        assert_eq!(env[format!("HTTP_X_HEADER_{i}")], format!("value {i}"));
    }
    assert!(env.get("CONTENT_LENGTH").is_none_or(|v| v == ""), "{env}");
    assert_eq!(env["body_len"], 0);

    // A 5 MB POST.
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: forklift.test\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let env = json(&ask(&mut s, &mut r, &req));
    assert_eq!(env["body_len"], 5_000_000);
    assert_eq!(env["body_adler32"], adler32(&body));
    assert_eq!(env["CONTENT_LENGTH"], "5000000");
    assert_eq!(env["CONTENT_TYPE"], "application/octet-stream");

    // A chunked upload: nginx buffers it and passes it on with its length.
    let mut req =
        b"POST /chunked HTTP/1.1\r\nHost: forklift.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let mut sent = Vec::new();
    for i in 0..40u32 {
        let piece = vec![b'a' + (i % 26) as u8; 1000 + i as usize];
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(&piece);
        req.extend_from_slice(b"\r\n");
        sent.extend_from_slice(&piece);
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let env = json(&ask(&mut s, &mut r, &req));
    assert_eq!(env["body_len"], sent.len());
    assert_eq!(env["body_adler32"], adler32(&sent));
    assert_eq!(env["CONTENT_LENGTH"], sent.len().to_string());

    // A 64 KiB response.
    let resp = ask(
        &mut s,
        &mut r,
        b"GET /big?kind=big&bytes=65536 HTTP/1.1\r\nHost: forklift.test\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let want: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(resp.body, want);

    // A streaming app: forklift sends it close-delimited, nginx re-frames it.
    let resp = ask(
        &mut s,
        &mut r,
        b"GET /stream?kind=stream&n=50 HTTP/1.1\r\nHost: forklift.test\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let want: String = (0..50).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(resp.text(), want);

    // HTTPS=on from nginx makes the scheme https.
    let env = json(&ask(
        &mut s,
        &mut r,
        b"GET /secure/x HTTP/1.1\r\nHost: forklift.test\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(env["HTTPS"], "on");
    assert_eq!(env["wsgi.url_scheme"], "https");
    drop(nginx);
}

for_each_model! {
    nginx_tcp => through_nginx(Transport::Tcp);
    nginx_unix => through_nginx(Transport::Unix);
    malformed_packets;
    asgi_scope;
}

/// An ASGI app over the uwsgi protocol: the scope takes the front server's client,
/// scheme and mount point.
fn asgi_scope(model: Model) {
    let apps = apps_dir().join("asgi");
    let server = Server::start(&[
        "--asgi",
        "raw:probe",
        "--pythonpath",
        apps.to_str().unwrap(),
        "--model",
        model.name(),
        "--socket",
        "127.0.0.1:0",
    ]);
    let packet = encode_request(
        &[
            (b"REQUEST_METHOD", b"POST"),
            (b"REQUEST_URI", b"/app/x?y=1"),
            (b"PATH_INFO", b"/app/x"),
            (b"QUERY_STRING", b"y=1"),
            (b"SCRIPT_NAME", b"/app"),
            (b"HTTPS", b"on"),
            (b"REMOTE_ADDR", b"10.9.8.7"),
            (b"REMOTE_PORT", b"4242"),
            (b"CONTENT_LENGTH", b"3"),
            (b"CONTENT_TYPE", b"text/plain"),
            (b"HTTP_HOST", b"example.org"),
        ],
        b"abc",
    );
    let resp = parse_whole(&raw_exchange(server.listener("uwsgi"), &packet), false);
    let scope = json(&resp);
    assert_eq!(scope["scheme"], "https");
    assert_eq!(scope["root_path"], "/app");
    assert_eq!(scope["path"], "/app/x");
    assert_eq!(scope["query_string"], "y=1");
    assert_eq!(scope["method"], "POST");
    assert_eq!(scope["client"], serde_json::json!(["10.9.8.7", 4242]));
    let headers = scope["headers"].as_array().unwrap();
    assert!(
        headers.contains(&serde_json::json!(["host", "example.org"])),
        "{headers:?}"
    );
    assert!(
        headers.contains(&serde_json::json!(["content-type", "text/plain"])),
        "{headers:?}"
    );
    let got: u64 = scope["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["len"].as_u64().unwrap())
        .sum();
    assert_eq!(got, 3);
}

/// Sends `bytes` on a new connection to `addr`, half-closes, and returns all the server
/// sent until it closed (the guard fails the test instead of hanging it).
fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_GUARD)).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    let started = Instant::now();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("the server closes, never hangs");
    assert!(started.elapsed() < IO_GUARD);
    out
}

/// Packets nginx would never send: each is refused with a clear answer and a close.
fn malformed_packets(model: Model) {
    let server = Server::start(&[
        "builtin:echo",
        "--model",
        model.name(),
        "--socket",
        "127.0.0.1:0",
    ]);
    let addr = server.listener("uwsgi");

    // A well-formed packet works (the echo app answers its body).
    let ok = encode_request(
        &[
            (b"REQUEST_METHOD", b"POST"),
            (b"REQUEST_URI", b"/echo"),
            (b"CONTENT_LENGTH", b"5"),
        ],
        b"hello",
    );
    let resp = parse_whole(&raw_exchange(addr, &ok), false);
    assert_eq!((resp.status, resp.text().as_str()), (200, "hello"));

    // A short header, then the client gives up: closed without an answer.
    assert!(raw_exchange(addr, &[0, 10]).is_empty());
    // A packet cut short inside its vars block: the same.
    assert!(raw_exchange(addr, &ok[..12]).is_empty());

    // A vars block larger than --buffer-size (4096 by default): 431, and a log line
    // telling the user what to change.
    let cookie = vec![b'c'; 5000];
    let big = encode_request(
        &[(b"REQUEST_METHOD", b"GET"), (b"HTTP_COOKIE", &cookie)],
        b"",
    );
    let resp = parse_whole(&raw_exchange(addr, &big), false);
    assert_eq!(resp.status, 431);
    assert!(resp.text().contains("buffer-size"), "{}", resp.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = server
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a log line about buffer-size");
        if line.contains("raise buffer-size") {
            break;
        }
    }

    // A value length running past the vars block.
    let mut bad = encode_request(&[(b"REQUEST_METHOD", b"GET")], b"");
    let n = bad.len();
    bad[n - 5] = 0xff;
    let resp = parse_whole(&raw_exchange(addr, &bad), false);
    assert_eq!(resp.status, 400);
    assert!(
        resp.text().contains("malformed uwsgi packet"),
        "{}",
        resp.text()
    );

    // An unknown modifier1.
    let mut other = ok.clone();
    other[0] = 7;
    let resp = parse_whole(&raw_exchange(addr, &other), false);
    assert_eq!(resp.status, 501);
    assert!(resp.text().contains("modifier1 7"), "{}", resp.text());

    // No REQUEST_METHOD.
    let resp = parse_whole(
        &raw_exchange(addr, &encode_request(&[(b"PATH_INFO", b"/")], b"")),
        false,
    );
    assert_eq!(resp.status, 400);
    assert!(resp.text().contains("REQUEST_METHOD"), "{}", resp.text());

    // HTTP sent to the uwsgi socket by mistake ('G' is modifier1 71).
    let resp = parse_whole(
        &raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        false,
    );
    assert_eq!(resp.status, 501);

    // And the HTTP listener beside it still speaks HTTP.
    assert_eq!(server.get("/").status, 200);
}

/// A uwsgi GET over a unix socket at `path`; the response.
fn uwsgi_get_unix(stream: UnixStream) -> Response {
    let mut s = stream;
    s.set_read_timeout(Some(IO_GUARD)).unwrap();
    let packet = encode_request(&[(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/")], b"");
    s.write_all(&packet).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    parse_whole(&out, false)
}

fn start_exits(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run forklift");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unix_socket_files() {
    let dir = TempDir::new("files");
    let sock = dir.path("app.sock");
    let path = sock.to_str().unwrap();
    // A file left by a crashed server (nobody answers) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut server = Server::start(&[
        "builtin:hello",
        "--socket",
        path,
        "--chmod-socket",
        "660",
        "--vacuum",
    ]);
    assert!(
        server.banner.contains(&format!("uwsgi+unix:{path}")),
        "{}",
        server.banner
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let resp = uwsgi_get_unix(UnixStream::connect(&sock).unwrap());
    assert_eq!((resp.status, resp.text().as_str()), (200, "Hello world"));
    // A live one is refused with one line.
    let (code, err) = start_exits(&["builtin:hello", "--socket", path, "--http", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another server is answering there"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // --vacuum removes the file on exit.
    assert!(server.terminate().success());
    assert!(!sock.exists(), "--vacuum removes the socket file");

    // Without --vacuum it stays (and the next start replaces it).
    let mut server = Server::start(&["builtin:hello", "--socket", path]);
    assert!(server.terminate().success());
    assert!(sock.exists());
    let server = Server::start(&["builtin:hello", "--socket", path]);
    assert_eq!(
        uwsgi_get_unix(UnixStream::connect(&sock).unwrap()).status,
        200
    );
    drop(server);

    // A path that is not a socket is never removed.
    let file = dir.path("not-a-socket");
    std::fs::write(&file, "data").unwrap();
    let (code, err) = start_exits(&["builtin:hello", "--socket", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
}

#[test]
fn abstract_and_http_unix_sockets() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("forklift-test-{}", std::process::id());
    let dir = TempDir::new("abstract");
    let http_sock = dir.path("http.sock");
    let server = Server::start(&[
        "builtin:hello",
        "--socket",
        &format!("@{name}"),
        "--http-socket",
        http_sock.to_str().unwrap(),
    ]);
    assert!(
        server.banner.contains(&format!("uwsgi+unix:@{name}")),
        "{}",
        server.banner
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let resp = uwsgi_get_unix(UnixStream::connect_addr(&addr).unwrap());
    assert_eq!(resp.status, 200);
    // HTTP over a unix socket, keep-alive included.
    let mut s = UnixStream::connect(&http_sock).unwrap();
    s.set_read_timeout(Some(IO_GUARD)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!((resp.status, resp.text().as_str()), (200, "Hello world"));
    }
}

#[test]
fn deployment_options() {
    let dir = TempDir::new("options");
    // --pidfile holds the server's pid; --vacuum removes it with the socket.
    let pidfile = dir.path("app.pid");
    let sock = dir.path("app.sock");
    let mut server = Server::start(&[
        "builtin:hello",
        "--socket",
        sock.to_str().unwrap(),
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--vacuum",
        "--thunder-lock",
        "--single-interpreter",
        "--need-app",
        "--post-buffering",
        "8192",
        "--env",
        "FORKLIFT_TEST_ENV=1",
    ]);
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(pid.trim(), server.pid().to_string());
    assert!(server.terminate().success());
    assert!(!pidfile.exists() && !sock.exists());
    // --daemonize is refused by name, pointing to systemd.
    let (code, err) = start_exits(&["builtin:hello", "--daemonize", "/tmp/x.log"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--daemonize") && err.contains("systemd"),
        "{err}"
    );
    // --uid naming nobody known.
    let (code, err) = start_exits(&["builtin:hello", "--uid", "no-such-user-here"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--uid"), "{err}");
    // `strict` turns the unknown-option warning into an error.
    let ini = dir.path("strict.ini");
    std::fs::write(
        &ini,
        "[uwsgi]\nstrict = true\nhttp = 127.0.0.1:0\nbogus-option = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--ini", ini.to_str().unwrap(), "builtin:hello"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unknown option \"bogus-option\"") && err.contains("strict"),
        "{err}"
    );
}

/// `--uid`/`--gid` switch user after binding and before loading the app (when started
/// as root); `--chown-socket` sets the socket's owner.
#[test]
fn privileges_and_socket_owner() {
    let dir = TempDir::new("privileges");
    let sock = dir.path("app.sock");
    let root = nix::unistd::geteuid().is_root();
    let (uid, gid) = if root {
        ("65534".to_string(), "65534".to_string())
    } else {
        (
            nix::unistd::getuid().to_string(),
            nix::unistd::getgid().to_string(),
        )
    };
    let owner = format!("{uid}:{gid}");
    // A native app: the embedded Python may live where an unprivileged user cannot read.
    let server = Server::start(&[
        "builtin:hello",
        "--socket",
        sock.to_str().unwrap(),
        "--chown-socket",
        &owner,
        "--chmod-socket",
        "600",
        "--uid",
        &uid,
        "--gid",
        &gid,
    ]);
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (meta.uid().to_string(), meta.gid().to_string()),
        (uid.clone(), gid.clone())
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let ids = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(ids("Uid:").iter().all(|u| *u == uid), "{status}");
    assert!(ids("Gid:").iter().all(|g| *g == gid), "{status}");
    assert_eq!(server.get("/").status, 200);
    if !root {
        eprintln!("note: not root; --uid/--gid were checked with the current user only");
    }
}

/// `--env NAME=VALUE` reaches the app.
#[test]
fn env_reaches_the_app() {
    let app = apps_dir().join("uwsgi_app.py");
    let server = Server::start(&[
        "--wsgi-file",
        app.to_str().unwrap(),
        "--env",
        "GREETING=hello there",
    ]);
    let env = json(&server.get("/"));
    assert_eq!(env["os.environ GREETING"], "hello there");
}

/// The ini of Django's and Flask's deployment guides runs as it is (with the
/// `plugins = python3` line of Debian's packaged uWSGI): a master, four processes, a
/// uwsgi unix socket with mode 660, vacuum; no warning about any key.
#[test]
fn deployment_guide_ini() {
    let dir = TempDir::new("guide");
    let sock = dir.path("app.sock");
    let ini = dir.path("app.ini");
    std::fs::write(
        &ini,
        format!(
            "[uwsgi]\nplugins = python3\nchdir = {}\nmodule = uwsgi_app:application\nmaster = true\nprocesses = 4\n\
             socket = {}\nchmod-socket = 660\nvacuum = true\ndie-on-term = true\n",
            apps_dir().display(),
            sock.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--ini", ini.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let banner = loop {
        let line = rx.recv_timeout(IO_GUARD).expect("a banner");
        seen.push(line.clone());
        if line.contains("listening on") {
            break line;
        }
    };
    assert!(
        banner.contains(&format!("uwsgi+unix:{}", sock.display())),
        "{banner}"
    );
    assert!(banner.contains("processes=4"), "{banner}");
    assert!(!seen.iter().any(|l| l.contains("warning")), "{seen:?}");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let resp = uwsgi_get_unix(UnixStream::connect(&sock).unwrap());
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        resp.text().contains("\"REQUEST_METHOD\": \"GET\""),
        "{}",
        resp.text()
    );
    crate::support::signal(child.id() as i32, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());
    assert!(!sock.exists(), "vacuum = true removes the socket");
}
