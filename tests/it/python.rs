//! Integration tests of the Python/WSGI module: PEP 3333 behaviour over real sockets,
//! every test against every concurrency model (in-process servers), plus the seeds'
//! apps, a Flask app (when a virtualenv with flask is given) and pre-forked workers
//! through the `forklift` binary.
#![cfg(feature = "python")]

mod support {
    use std::net::{SocketAddr, TcpStream};
    use std::path::PathBuf;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use forklift::python::{load_app, PythonOptions};
    use forklift::rt::Shutdown;
    use forklift::server::{self, listen, Log, Model, ServerConfig};

    pub fn apps_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
    }

    /// A WSGI app served in this process on 127.0.0.1:0; stops when dropped. (The
    /// `forklift` binary as a child process is [`crate::support::Server`].)
    pub struct PyServer {
        pub addr: SocketAddr,
        shutdown: Shutdown,
        thread: Option<JoinHandle<()>>,
        /// Under `--gevent` (the `gevent` test of each body), the app runs in a
        /// `forklift serve` child process instead of in this one.
        _child: Option<crate::support::Server>,
    }

    impl PyServer {
        pub fn start(file: &str, callable: &str, model: Model) -> PyServer {
            PyServer::with_options(
                PythonOptions {
                    wsgi_file: Some(apps_dir().join(file)),
                    callable: callable.into(),
                    ..PythonOptions::default()
                },
                model,
            )
        }

        pub fn with_options(mut opts: PythonOptions, model: Model) -> PyServer {
            if crate::support::under_gevent() {
                return PyServer::under_gevent(&opts);
            }
            opts.pool_threads = 2;
            opts.multithread = model != Model::Linear;
            let app = load_app(&opts).expect("the app loads");
            let listener = listen::bind("127.0.0.1:0".parse().unwrap(), 128).expect("bind");
            let addr = listener.local_addr().unwrap();
            let config = ServerConfig {
                model,
                threads: 4,
                cores: 64,
                ..ServerConfig::default()
            };
            let shutdown = Shutdown::new();
            let sd = shutdown.clone();
            let thread = std::thread::spawn(move || {
                server::run_worker(vec![listener.into()], app, config, Log::stderr(false), sd)
                    .expect("server runs");
            });
            PyServer {
                addr,
                shutdown,
                thread: Some(thread),
                _child: None,
            }
        }

        /// The app of `opts` in `forklift serve --gevent 100`, with the test virtualenv
        /// (for gevent).
        fn under_gevent(opts: &PythonOptions) -> PyServer {
            let mut args: Vec<String> = Vec::new();
            if let Some(f) = &opts.wsgi_file {
                args.extend(["--wsgi-file".into(), f.display().to_string()]);
            }
            if let Some(m) = &opts.module {
                args.extend(["--module".into(), m.clone()]);
            }
            for p in &opts.pythonpath {
                args.extend(["--pythonpath".into(), p.display().to_string()]);
            }
            if let Some(d) = &opts.chdir {
                args.extend(["--chdir".into(), d.display().to_string()]);
            }
            args.extend([
                "--callable".into(),
                opts.callable.clone(),
                "--gevent".into(),
                "100".into(),
                "--virtualenv".into(),
                crate::support::test_venv(),
                "--disable-logging".into(),
            ]);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let child = crate::support::Server::start(&refs);
            PyServer {
                addr: child.addr,
                shutdown: Shutdown::new(),
                thread: None,
                _child: Some(child),
            }
        }

        pub fn get(&self, path: &str) -> Reply {
            request(
                self.addr,
                &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
            )
        }

        pub fn post(&self, path: &str, body: &[u8], chunked: bool) -> Reply {
            let mut raw = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: text/plain\r\n").into_bytes();
            if chunked {
                raw.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for piece in body.chunks(5) {
                    raw.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    raw.extend_from_slice(piece);
                    raw.extend_from_slice(b"\r\n");
                }
                raw.extend_from_slice(b"0\r\n\r\n");
            } else {
                raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                raw.extend_from_slice(body);
            }
            request_bytes(self.addr, &raw)
        }

        /// Polls `path` until its body equals `want` (a background event), up to 20 s.
        pub fn wait_for(&self, path: &str, want: &str) -> String {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let got = self.get(path).text();
                if got == want || Instant::now() > deadline {
                    return got;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    impl Drop for PyServer {
        fn drop(&mut self) {
            self.shutdown.trigger();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    pub use crate::support::{request_bytes, Response as Reply};

    pub fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    pub fn request(addr: SocketAddr, raw: &str) -> Reply {
        request_bytes(addr, raw.as_bytes())
    }
}

use std::io::{Read, Write};
use std::time::Duration;

use forklift::python::{load_app, PythonError, PythonOptions};
use forklift::server::Model;
use support::*;

use crate::support::{for_each_model, for_each_python_model};

for_each_python_model! {
    hello;
    validator_accepts_everything;
    environ_keys;
    environ_headers_and_path;
    input_patterns_content_length;
    input_patterns_chunked;
    streaming_generator;
    write_callable;
    exc_info_rules;
    app_errors_give_500_and_worker_survives;
    big_responses;
    file_wrapper;
    close_is_called;
    close_on_client_disconnect;
    content_length_is_honoured;
    response_headers;
    asyncio_in_a_request;
    forklift_module;
}

fn hello(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    let r = s.get("/hello");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello world");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    // Keep-alive: several requests on one connection.
    let mut c = connect(s.addr);
    c.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&buf).matches("Hello world").count(),
        2
    );
}

fn validator_accepts_everything(m: Model) {
    let s = PyServer::start("suite.py", "validated", m);
    for (path, want) in [
        ("/hello", "Hello world"),
        ("/stream?n=3", "chunk 0\nchunk 1\nchunk 2\n"),
        ("/write", "written then returned"),
        ("/closing", "one two"),
        ("/many", "abc"),
        ("/file-like", "from a BytesIO"),
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.text(), want, "{path}");
    }
    let r = s.post("/input?mode=readline", b"a\nb\n", false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"["a\n", "b\n"]"#);
}

fn environ_json(r: &Reply) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn environ_keys(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    let e = environ_json(&s.get("/environ?a=1&b=%20"));
    assert_eq!(e["REQUEST_METHOD"], "GET");
    assert_eq!(e["SCRIPT_NAME"], "");
    assert_eq!(e["PATH_INFO"], "/environ");
    assert_eq!(e["QUERY_STRING"], "a=1&b=%20");
    assert_eq!(e["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(e["SERVER_NAME"], "127.0.0.1");
    assert_eq!(e["SERVER_PORT"], s.addr.port().to_string());
    assert_eq!(e["REMOTE_ADDR"], "127.0.0.1");
    assert!(e["REMOTE_PORT"].as_str().unwrap().parse::<u16>().is_ok());
    assert_eq!(e["wsgi.version"], serde_json::json!([1, 0]));
    assert_eq!(e["wsgi.url_scheme"], "http");
    assert_eq!(e["wsgi.multithread"], m != Model::Linear);
    assert_eq!(e["wsgi.multiprocess"], false);
    assert_eq!(e["wsgi.run_once"], false);
    assert_eq!(e["wsgi.input_terminated"], true);
    assert_eq!(e["wsgi.input.type"], "Input");
    assert!(e.get("CONTENT_TYPE").is_none());
    assert!(e.get("CONTENT_LENGTH").is_none());
    assert!(e.get("HTTP_CONTENT_LENGTH").is_none());
    let e = environ_json(&s.post("/environ", b"xyz", false));
    assert_eq!(e["REQUEST_METHOD"], "POST");
    assert_eq!(e["CONTENT_TYPE"], "text/plain");
    assert_eq!(e["CONTENT_LENGTH"], "3");
    // HTTP/1.0 and a Host with a port.
    let e = environ_json(&request(
        s.addr,
        "GET /environ HTTP/1.0\r\nHost: example.com:8081\r\n\r\n",
    ));
    assert_eq!(e["SERVER_PROTOCOL"], "HTTP/1.0");
    assert_eq!(e["SERVER_NAME"], "example.com");
    assert_eq!(e["SERVER_PORT"], "8081");
    assert_eq!(e["HTTP_HOST"], "example.com:8081");
}

fn environ_headers_and_path(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    let r = request(
        s.addr,
        "GET /env%69ron/%C3%A9%2F?x=%C3%A9 HTTP/1.1\r\nHost: h\r\nX-Multi: 1\r\nx-multi: 2\r\nCookie: a=1\r\nCookie: b=2\r\nUser-Agent: t\r\nX_Under: dropped\r\nConnection: close\r\n\r\n",
    );
    // The route does not match (/environ/...), so ask with the real path below; here
    // only check the 404 echo of the decoded path.
    assert_eq!(r.status, 404);
    let e = environ_json(&request(
        s.addr,
        "GET /env%69ron HTTP/1.1\r\nHost: h\r\nX-Multi: 1\r\nx-multi: 2\r\nCookie: a=1\r\nCookie: b=2\r\nUser-Agent: t\r\nX_Under: dropped\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(e["PATH_INFO"], "/environ");
    assert_eq!(e["HTTP_X_MULTI"], "1,2");
    assert_eq!(e["HTTP_COOKIE"], "a=1; b=2");
    assert_eq!(e["HTTP_USER_AGENT"], "t");
    assert!(e.get("HTTP_X_UNDER").is_none());
    // PATH_INFO is percent-decoded, then decoded as latin-1 (PEP 3333).
    let r = request(
        s.addr,
        "GET /caf%C3%A9 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "not found: /caf\u{c3}\u{a9}".as_bytes());
}

fn input_case(s: &PyServer, chunked: bool) {
    let body = b"line one\nline two\n\nlast";
    for (mode, want) in [
        ("read", r#"["line one\nline two\n\nlast"]"#),
        ("read-1", r#"["line one\nline two\n\nlast"]"#),
        (
            "readn",
            r#"["lin", "e o", "ne\n", "lin", "e t", "wo\n", "\nla", "st"]"#,
        ),
        ("readline", r#"["line one\n", "line two\n", "\n", "last"]"#),
        (
            "readline2",
            r#"["li", "ne", " o", "ne", "\n", "li", "ne", " t", "wo", "\n", "\n", "la", "st"]"#,
        ),
        ("readlines", r#"["line one\n", "line two\n", "\n", "last"]"#),
        ("readlines-hint", r#"["line one\n"]"#),
        ("iter", r#"["line one\n", "line two\n", "\n", "last"]"#),
    ] {
        let r = s.post(&format!("/input?mode={mode}"), body, chunked);
        assert_eq!(r.status, 200, "{mode}: {}", r.text());
        assert_eq!(r.text(), want, "mode {mode}, chunked {chunked}");
    }
    let r = s.post("/input?mode=read", b"", chunked);
    assert_eq!(r.text(), r#"[""]"#);
}

fn input_patterns_content_length(m: Model) {
    input_case(&PyServer::start("suite.py", "application", m), false);
}

fn input_patterns_chunked(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    input_case(&s, true);
    // A de-chunked body is presented with its length, as nginx forwards it.
    let e = environ_json(&s.post("/environ", b"0123456789", true));
    assert_eq!(e["CONTENT_LENGTH"], "10");
    assert!(e.get("HTTP_TRANSFER_ENCODING").is_none());
}

fn streaming_generator(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    let r = s.get("/stream?n=4");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.complete);
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    // start_response called lazily, after empty items.
    let r = s.get("/stream-empty-first");
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "late");
    // HTTP/1.0: no chunking; the body ends at close.
    let r = request(s.addr, "GET /stream?n=2 HTTP/1.0\r\n\r\n");
    assert_eq!(r.text(), "chunk 0\nchunk 1\n");
}

fn write_callable(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    assert_eq!(s.get("/write").text(), "written then returned");
    assert_eq!(s.get("/write-only").text(), "all written");
}

fn exc_info_rules(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    let r = s.get("/exc-info-replace");
    assert_eq!(r.status, 500);
    assert_eq!(r.reason, "Custom Error");
    assert_eq!(r.text(), "replaced");
    // After the headers went out, start_response(exc_info) re-raises: the response is
    // cut short (the connection closes without the final chunk).
    let r = s.get("/exc-info-after-sent");
    assert_eq!(r.status, 200);
    assert!(!r.complete, "{r:?}");
    assert!(r.text().starts_with("sent already\n"));
    assert!(!r.text().contains("never"));
    // Calling start_response twice without exc_info is an error the app sees.
    assert_eq!(s.get("/twice").text(), "RuntimeError");
    assert_eq!(s.get("/hello").status, 200);
}

fn app_errors_give_500_and_worker_survives(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    for path in [
        "/raise-before",
        "/sys-exit",
        "/raise-after",
        "/not-bytes",
        "/no-start-response",
        "/bad-header",
        "/status?s=abc",
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 500, "{path}");
        assert!(!r.text().contains("should not be sent"));
        assert!(r.header("injected").is_none());
        assert_eq!(s.get("/hello").text(), "Hello world", "after {path}");
    }
    let r = s.get("/raise-in-iter");
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    assert_eq!(r.text(), "first part\n");
    assert_eq!(s.get("/hello").text(), "Hello world");
}

fn big_responses(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    let n = 16 << 20;
    let r = s.get("/big");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), n);
    assert!(r.body.iter().all(|&b| b == b'a'));
    let r = s.get("/big-stream");
    assert!(r.complete);
    assert_eq!(r.body.len(), n);
    assert!(r.body.iter().all(|&b| b == b'b'));
}

fn file_wrapper(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    let src = std::fs::read(apps_dir().join("suite.py")).unwrap();
    let r = s.get("/file");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(src.len().to_string().as_str())
    );
    assert_eq!(r.body, src);
    let r = s.get("/file-offset");
    assert_eq!(r.body, &src[10..]);
    let r = s.get("/file-like");
    assert_eq!(r.text(), "from a BytesIO");
}

fn close_is_called(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    assert_eq!(s.get("/closing").text(), "one two");
    assert_eq!(s.wait_for("/closed", "1"), "1");
}

fn close_on_client_disconnect(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    {
        let mut c = connect(s.addr);
        c.write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < 200_000 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n;
        }
    } // dropped: the client is gone mid-stream
    assert_eq!(s.wait_for("/closed", "1"), "1");
}

fn content_length_is_honoured(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    let r = s.get("/content-length-long");
    assert_eq!(r.header("content-length"), Some("4"));
    assert_eq!(r.text(), "long");
    let r = s.get("/content-length-short");
    assert_eq!(r.header("content-length"), Some("10"));
    assert!(!r.complete);
    assert_eq!(s.get("/hello").text(), "Hello world");
}

fn response_headers(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    let r = s.get("/headers");
    let multi: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-multi"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["1", "2"]);
    assert_eq!(s.get("/status?s=299+Custom+Thing").reason, "Custom Thing");
    let r = request_bytes(
        s.addr,
        b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
}

fn asyncio_in_a_request(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    // Several requests, so more than one serving thread is likely used.
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let addr = s.addr;
            std::thread::spawn(move || {
                request(
                    addr,
                    "GET /asyncio HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().starts_with("asyncio ok 2"), "{}", r.text());
    }
}

fn forklift_module(m: Model) {
    let s = PyServer::start("suite.py", "application", m);
    let r = s.get("/forklift");
    let text = r.text();
    assert!(
        text.starts_with(&format!("version {} task ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.ends_with(".send_mail"), "{text}");
    assert_eq!(s.get("/offload?tag=t1").text(), "queued True");
    assert_eq!(s.wait_for("/offloaded", "t1"), "t1");
    let r = s.get("/errors");
    assert_eq!(r.text(), "logged");
}

// ---------------------------------------------------------------------------
// Loading errors and options.

#[test]
fn missing_file_is_a_one_line_error() {
    let e = load_app(&PythonOptions {
        wsgi_file: Some("webapp.py".into()),
        ..PythonOptions::default()
    })
    .err()
    .expect("fails");
    assert_eq!(e.to_string(), "wsgi-file webapp.py not found");
}

#[test]
fn missing_callable_names_the_option() {
    let e = load_app(&PythonOptions {
        module: Some("json".into()),
        ..PythonOptions::default()
    })
    .err()
    .expect("fails");
    assert_eq!(
        e.to_string(),
        "module 'json' has no callable 'application' (use --callable NAME)"
    );
    let e = load_app(&PythonOptions {
        module: Some("no_such_module_here".into()),
        ..PythonOptions::default()
    })
    .err()
    .expect("fails");
    assert!(matches!(e, PythonError::Import { .. }), "{e}");
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn module_with_callable_and_pythonpath() {
    let s = PyServer::with_options(
        PythonOptions {
            module: Some("mod_app:app".into()),
            pythonpath: vec![apps_dir().join("pkg")],
            ..PythonOptions::default()
        },
        Model::Threads,
    );
    assert_eq!(s.get("/").text(), "from mod_app");
}

#[test]
fn app_raising_at_import_is_a_load_error() {
    let e = load_app(&PythonOptions {
        wsgi_file: Some(apps_dir().join("broken.py")),
        ..PythonOptions::default()
    })
    .err()
    .expect("fails");
    assert!(e.to_string().contains("ZeroDivisionError"), "{e}");
}

/// Records what `task.spool()` hands to the spool sink.
struct MemorySpool(std::sync::Mutex<Vec<(String, String, Duration)>>);

impl forklift::python::SpoolSink for MemorySpool {
    fn spool(&self, task: &str, payload: &str, delay: Duration) -> Result<String, String> {
        let mut v = self.0.lock().unwrap();
        v.push((task.into(), payload.into(), delay));
        Ok(format!("id{}", v.len()))
    }
}

#[test]
fn task_spool_goes_to_the_sink_and_tasks_are_announced() {
    if !crate::support::isolated("python::task_spool_goes_to_the_sink_and_tasks_are_announced") {
        return;
    }
    let s = PyServer::start("suite.py", "application", Model::Threads);
    assert!(s
        .get("/spool")
        .text()
        .contains("spool strategy not configured"));
    let sink = std::sync::Arc::new(MemorySpool(Default::default()));
    forklift::python::set_spool_sink(sink.clone());
    assert_eq!(s.get("/spool").text(), "spooled id1");
    let got = sink.0.lock().unwrap().clone();
    assert!(got[0].0.ends_with(".send_mail"));
    assert_eq!(got[0].1, r#"{"to": "a@example.com"}"#);
    assert_eq!(got[0].2, Duration::ZERO);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    forklift::python::set_task_listener(std::sync::Arc::new(move |name: &str| {
        seen2.lock().unwrap().push(name.to_string())
    }));
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|n| n.ends_with(".send_mail")));
}

#[test]
fn offload_queue_is_bounded_and_call_later_runs() {
    if !crate::support::isolated("python::offload_queue_is_bounded_and_call_later_runs") {
        return;
    }
    let s = PyServer::start("suite.py", "application", Model::Epoll);
    let r = s.get("/flood").text();
    let (n, full) = r.split_once(' ').unwrap();
    assert_eq!(full, "QueueFull", "{r}");
    assert!(n.parse::<usize>().unwrap() <= 200, "{r}");
    // The flood drains at its own pace: wait until the queue takes a job again, so the
    // delayed call below finds room when it falls due.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = s.get("/offload?tag=probe");
        if r.status == 200 && r.text() == "queued True" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never drained"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The probe took the slot it found: wait until it ran (the queue is first in,
    // first out, so the flood ahead of it is gone), or the delayed call could fall due
    // while the queue is full again and be dropped.
    loop {
        let done = s.get("/offloaded").text();
        if done.split(',').any(|t| t == "probe") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the probe never ran: {done}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(s.get("/later?d=0.05&tag=l1").text(), "scheduled True");
    loop {
        let done = s.get("/offloaded").text();
        if done.split(',').any(|t| t == "l1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the delayed call never ran: {done}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn run_task_calls_a_registered_task() {
    let _s = PyServer::start("suite.py", "application", Model::Linear);
    let names = forklift::python::task_names();
    let name = names
        .iter()
        .find(|n| n.ends_with(".send_mail"))
        .expect("task registered")
        .clone();
    forklift::python::run_task(&name, r#"{"to": "x@example.com"}"#).expect("runs");
    assert!(matches!(
        forklift::python::run_task("nope", "{}"),
        Err(forklift::python::TaskError::Unknown(_))
    ));
    assert!(matches!(
        forklift::python::run_task(&name, "[1]"),
        Err(forklift::python::TaskError::BadPayload { .. })
    ));
}

// ---------------------------------------------------------------------------
// The seeds' apps.

for_each_model! {
    seed_002_apps_call_the_backend;
}

fn seed_002_apps_call_the_backend(m: Model) {
    // The backend of seed 002, served by forklift's built-in `wait` app.
    let backend = BuiltinServer::start();
    let q = format!("/?backend={}", backend.addr.port());
    let s = PyServer::start("seed002/app_sync.py", "application", m);
    let r = s.get(&q);
    assert_eq!(r.status, 200, "{m:?}: {}", r.text());
    assert!(r.text().contains("with synchronous calls"), "{}", r.text());
    let s = PyServer::start("seed002/app_asyncio.py", "application", m);
    let r = s.get(&q);
    assert_eq!(r.status, 200, "{m:?}: {}", r.text());
    assert!(
        r.text().contains("async calls using asyncio"),
        "{}",
        r.text()
    );
}

/// `builtin:wait` on 127.0.0.1:0, in this process.
struct BuiltinServer {
    addr: std::net::SocketAddr,
    shutdown: forklift::rt::Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BuiltinServer {
    fn start() -> BuiltinServer {
        let app = forklift::app::builtin::by_name("wait").unwrap();
        let listener = forklift::server::listen::bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = forklift::rt::Shutdown::new();
        let sd = shutdown.clone();
        let config = forklift::server::ServerConfig {
            model: Model::Epoll,
            ..Default::default()
        };
        let thread = std::thread::spawn(move || {
            forklift::server::run_worker(
                vec![listener.into()],
                app,
                config,
                forklift::server::Log::stderr(false),
                sd,
            )
            .unwrap();
        });
        BuiltinServer {
            addr,
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for BuiltinServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Separate server processes (the `forklift` binary): a fresh interpreter per test
// (virtualenv, chdir) and pre-forked workers.

/// Settings of a server process.
#[derive(Clone, Default)]
struct Spec {
    file: String,
    callable: Option<String>,
    model: Option<Model>,
    processes: usize,
    lazy: bool,
    venv: Option<String>,
    chdir: Option<String>,
    /// Extra environment variables for the server process.
    env: Vec<(String, String)>,
}

impl Spec {
    fn new(file: &str) -> Spec {
        Spec {
            file: file.into(),
            processes: 1,
            ..Spec::default()
        }
    }

    fn cli_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "serve".into(),
            "--wsgi-file".into(),
            self.file.clone(),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--model".into(),
            self.model.unwrap_or(Model::Threads).name().into(),
            "--processes".into(),
            self.processes.to_string(),
            "--threads".into(),
            "2".into(),
        ];
        if let Some(c) = &self.callable {
            a.extend(["--callable".into(), c.clone()]);
        }
        if self.lazy {
            a.push("--lazy-apps".into());
        }
        if let Some(v) = &self.venv {
            a.extend(["--virtualenv".into(), v.clone()]);
        }
        if let Some(d) = &self.chdir {
            a.extend(["--chdir".into(), d.clone()]);
        }
        a
    }
}

/// A server in another process; stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn start(spec: &Spec) -> Proc {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_forklift"));
        cmd.args(spec.cli_args());
        cmd.current_dir(apps_dir())
            .env_remove("VIRTUAL_ENV")
            .envs(spec.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the server");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut addr = None;
        let mut line = String::new();
        while addr.is_none() {
            line.clear();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.kill();
                panic!("server exited before listening: {}", output.lock().unwrap());
            }
            output.lock().unwrap().push_str(&line);
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on http://".len()..];
                let a = rest.split_whitespace().next().unwrap();
                addr = Some(a.parse().unwrap());
            }
        }
        let mut readers = Vec::new();
        for pipe in [
            Box::new(stderr) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let out = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(pipe);
                let mut l = String::new();
                while r.read_line(&mut l).unwrap_or(0) > 0 {
                    out.lock().unwrap().push_str(&l);
                    l.clear();
                }
            }));
        }
        Proc {
            child,
            addr: addr.unwrap(),
            output,
            readers,
        }
    }

    fn get(&self, path: &str) -> Reply {
        request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        )
    }

    /// Waits until the output contains `what` (up to 20 s); returns the output.
    fn wait_output(&self, what: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.output.lock().unwrap().clone();
            if out.contains(what) || std::time::Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Proc {
    /// Stops the server gracefully and returns everything it printed.
    fn stop(mut self) -> String {
        self.terminate();
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        let out = self.output.lock().unwrap().clone();
        out
    }

    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

for_each_model! {
    seed_001_webapp_reads_numbers;
}

fn seed_001_webapp_reads_numbers(m: Model) {
    let p = Proc::start(&Spec {
        model: Some(m),
        chdir: Some("seed001".into()),
        ..Spec::new("webapp.py")
    });
    let r = p.get("/");
    assert_eq!(r.status, 200, "{m}");
    assert_eq!(r.text(), "Hello World");
    let out = p.wait_output("5:five");
    // The app's lines, in order (the access log's line may fall between them).
    let printed: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        })
        .collect();
    assert_eq!(printed[..2], ["0:zero", "1:one"], "{m}: {out}");
}

#[test]
fn seed_001_async_variant_and_offload() {
    let p = Proc::start(&Spec {
        chdir: Some("seed001".into()),
        ..Spec::new("webapp_async.py")
    });
    assert_eq!(p.get("/").text(), "Hello World");
    assert_eq!(p.get("/offload").text(), "Hello World");
    let out = p.wait_output("5:five");
    assert!(out.contains("0:zero"), "{out}");
    assert_eq!(p.get("/later?0.05").text(), "Hello World");
    let out = p.wait_output("5:five\n0:zero\n1:one\n2:two\n3:three\n4:four\n5:five");
    assert_eq!(out.matches("5:five").count(), 2, "{out}");
}

fn distinct_pids(p: &Proc, n: usize) -> std::collections::HashSet<String> {
    let mut pids = std::collections::HashSet::new();
    for _ in 0..200 {
        // Concurrent requests so that several workers answer.
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let addr = p.addr;
                std::thread::spawn(move || {
                    request(
                        addr,
                        "GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    )
                })
            })
            .collect();
        for h in hs {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            pids.insert(r.text());
        }
        if pids.len() >= n {
            break;
        }
    }
    pids
}

// Loaded in the master then forked, and loaded in each worker (`--lazy-apps`).
for_each_model! {
    preforked_workers_serve_python(false);
    preforked_lazy_workers_serve_python => preforked_workers_serve_python(true);
}

fn preforked_workers_serve_python(model: Model, lazy: bool) {
    let p = Proc::start(&Spec {
        model: Some(model),
        processes: 2,
        lazy,
        env: vec![("FORKLIFT_TEST_ATEXIT".into(), "1".into())],
        ..Spec::new("suite.py")
    });
    assert_eq!(p.get("/hello").text(), "Hello world");
    let pids = distinct_pids(&p, 2);
    assert_eq!(pids.len(), 2, "{model} lazy={lazy}: {pids:?}");
    // Python threads, asyncio and the offload pool work in forked workers.
    assert!(p.get("/asyncio").text().starts_with("asyncio ok"));
    assert_eq!(p.get("/offload?tag=w").text(), "queued True");
    let r = p.get("/big-stream?bytes=1000000");
    assert_eq!(r.body.len(), 1_000_000);
    let e: serde_json::Value = serde_json::from_slice(&p.get("/environ").body).unwrap();
    assert_eq!(e["wsgi.multiprocess"], true);
    // Each worker runs the app's atexit functions when it stops.
    let out = p.stop();
    for pid in &pids {
        assert!(
            out.contains(&format!("suite.py: atexit ran in {pid}\n")),
            "{model}: {out}"
        );
    }
}

/// The virtualenv from $FORKLIFT_TEST_VENV (with flask installed), if any.
fn test_venv() -> Option<String> {
    match std::env::var("FORKLIFT_TEST_VENV") {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!("note: FORKLIFT_TEST_VENV is not set; skipping the virtualenv/Flask test (create one with `python3 -m venv DIR && DIR/bin/pip install flask requests aiohttp`)");
            None
        }
    }
}

for_each_model! {
    flask_app_in_a_virtualenv;
}

fn flask_app_in_a_virtualenv(m: Model) {
    let Some(venv) = test_venv() else { return };
    let p = Proc::start(&Spec {
        model: Some(m),
        venv: Some(venv.clone()),
        ..Spec::new("flaskapp/flask_app.py")
    });
    let r = p.get("/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "flask index");
    assert_eq!(p.get("/user/ada").text(), "hello ada");
    assert_eq!(p.get("/missing").status, 404);
    let r = request(
        p.addr,
        "POST /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n[1, 2, 3]",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, serde_json::json!({"got": [1, 2, 3], "n": 3}));
    let r = request(
        p.addr,
        "POST /form HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nname=ada+\r\n6\r\nlovel%\r\n4\r\n61ce\r\n0\r\n\r\n",
    );
    assert_eq!(r.text(), "form name=ada lovelace");
    assert_eq!(p.get("/stream").text(), "part 0\npart 1\npart 2\n");
    let prefix = p.get("/prefix").text();
    assert_eq!(
        std::fs::canonicalize(&prefix).unwrap(),
        std::fs::canonicalize(&venv).unwrap()
    );
}

#[test]
fn seed_002_apps_with_requests_and_aiohttp_in_a_virtualenv() {
    let Some(venv) = test_venv() else { return };
    let backend = BuiltinServer::start();
    for (file, want) in [
        ("seed002/app_sync.py", "with synchronous calls"),
        ("seed002/app_asyncio.py", "async calls using asyncio"),
    ] {
        // The seed's apps as written (requests, aiohttp, URL without a query knob): the
        // backend port comes from the environment (7001 when unset).
        let p = Proc::start(&Spec {
            model: Some(Model::Threads),
            venv: Some(venv.clone()),
            env: vec![(
                "FORKLIFT_TEST_BACKEND_PORT".into(),
                backend.addr.port().to_string(),
            )],
            ..Spec::new(file)
        });
        let r = p.get("/");
        assert_eq!(r.status, 200, "{file}: {}", r.text());
        assert!(r.text().contains(want), "{}", r.text());
    }
}

// With one process and with two (a worker that did not start the thread answers too).
for_each_model! {
    app_threads_run_between_requests_and_survive_fork_of_a_busy_master(2);
    app_threads_in_one_process => app_threads_run_between_requests_and_survive_fork_of_a_busy_master(1);
}

fn app_threads_run_between_requests_and_survive_fork_of_a_busy_master(
    model: Model,
    processes: usize,
) {
    let p = Proc::start(&Spec {
        model: Some(model),
        processes,
        ..Spec::new("threaded.py")
    });
    // The master forked while its spinner thread was running: workers must not
    // hang on an interpreter lock that thread held.
    for _ in 0..5 {
        assert_eq!(p.get("/").text(), "ok", "{model}");
    }
    // A thread the app starts keeps running between requests (one connection at a
    // time, so the same worker answers on linear/one process; with two processes,
    // ask until a worker that started one reports progress).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut progressed = false;
    while !progressed && std::time::Instant::now() < deadline {
        p.get("/start");
        let a: u64 = p.get("/ticks").text().parse().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let b: u64 = p.get("/ticks").text().parse().unwrap();
        progressed = b > a;
    }
    assert!(progressed, "{model}: the app's thread did not run");
    // call_later works in workers forked from a master that used it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut done = false;
    while !done && std::time::Instant::now() < deadline {
        p.get("/later");
        std::thread::sleep(Duration::from_millis(30));
        done = p.get("/later-done").text() == "yes";
    }
    assert!(done, "{model}: call_later never ran in a worker");
}

#[test]
fn cli_load_errors_are_one_line_and_exit_1() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_forklift"))
            .args(["serve", "--http", "127.0.0.1:0"])
            .args(args)
            .current_dir(apps_dir())
            .env_remove("VIRTUAL_ENV")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--wsgi-file", "webapp.py"]);
    assert_eq!(code, Some(1));
    assert_eq!(err.trim(), "forklift: wsgi-file webapp.py not found");
    let (code, err) = run(&["--module", "json"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        "forklift: module 'json' has no callable 'application' (use --callable NAME)"
    );
    let (code, err) = run(&[
        "--wsgi-file",
        "suite.py",
        "--virtualenv",
        "/nonexistent/venv",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.trim()
            .starts_with("forklift: virtualenv /nonexistent/venv"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn cli_module_with_pythonpath_and_chdir() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_forklift"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--chdir",
            "apps",
            "--module",
            "mod_app:app",
            "--pythonpath",
            "pkg",
        ])
        .current_dir(apps_dir().parent().unwrap())
        .env_remove("VIRTUAL_ENV")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut addr = None;
    while addr.is_none() && stderr.read_line(&mut line).unwrap() > 0 {
        if let Some(i) = line.find("listening on http://") {
            addr = line[i + 20..]
                .split_whitespace()
                .next()
                .map(|a| a.parse().unwrap());
        }
        line.clear();
    }
    let addr = addr.expect("the server starts");
    let r = request(
        addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.text(), "from mod_app");
}

for_each_model! {
    django_app_in_a_virtualenv;
}

fn django_app_in_a_virtualenv(m: Model) {
    let Some(venv) = test_venv() else { return };
    let has_django = std::process::Command::new(format!("{venv}/bin/python"))
        .args(["-c", "import django"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_django {
        eprintln!("note: no django in {venv}; skipping the Django test");
        return;
    }
    let p = Proc::start(&Spec {
        model: Some(m),
        venv: Some(venv.clone()),
        ..Spec::new("djangoapp/django_app.py")
    });
    assert_eq!(p.get("/").text(), "django index");
    assert_eq!(p.get("/nope").status, 404);
    for chunked in [false, true] {
        let body = "name=ada";
        let framing = if chunked {
            format!(
                "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )
        } else {
            format!("Content-Length: {}\r\n\r\n{body}", body.len())
        };
        let r = request(
            p.addr,
            &format!("POST /form HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n{framing}"),
        );
        assert_eq!(r.text(), "form name=ada", "{m} chunked={chunked}");
    }
    let r = request(
        p.addr,
        "POST /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 6\r\n\r\n[1, 2]",
    );
    assert_eq!(r.text(), r#"{"got": [1, 2]}"#);
    assert_eq!(p.get("/stream").text(), "part 0\npart 1\npart 2\n");
    let src = std::fs::read(apps_dir().join("djangoapp/django_app.py")).unwrap();
    assert_eq!(p.get("/file").body, src);
}

/// One pool thread, three requests queued behind each other: the first two answers go
/// out while the third (a slow request taken in the same batch) still runs; a finished
/// reply never waits for the next job of its pool thread.
#[test]
fn a_finished_reply_does_not_wait_for_the_next_slow_job() {
    use std::io::BufReader;
    use std::net::TcpStream;
    let dir = std::env::temp_dir().join(format!("forklift-hold-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (first, last) = (dir.join("first"), dir.join("last"));
    let file = apps_dir().join("hold.py").display().to_string();
    let srv = crate::support::Server::start(&[
        "--wsgi-file",
        &file,
        "--threads",
        "1",
        "--disable-logging",
    ]);
    // Each connection is taken in (it answers a first request) before the pool is busy:
    // a busy pool leaves new clients in the backlog, and all three requests must reach
    // its queue.
    let mut conns: Vec<TcpStream> = (0..3).map(|_| srv.connect()).collect();
    for c in &mut conns {
        // Shorter than the held request's own 30 s limit.
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(c, "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = crate::support::read_response(&mut BufReader::new(&*c), false).unwrap();
        assert_eq!(r.text(), "fast");
    }
    let paths = [
        format!("/hold?file={}", first.display()),
        "/fast".to_string(),
        format!("/hold?file={}", last.display()),
    ];
    for (c, p) in conns.iter_mut().zip(&paths) {
        write!(
            c,
            "GET {p} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        // In order: the pool takes its jobs first come, first served.
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&first, b"").unwrap();
    let mut replies = Vec::new();
    for (i, c) in conns.iter().take(2).enumerate() {
        let r = crate::support::read_response(&mut BufReader::new(c), false);
        if r.is_err() {
            std::fs::write(&last, b"").unwrap();
        }
        let r = r.unwrap_or_else(|e| panic!("request {i} got no answer while the next held: {e}"));
        replies.push(r.text());
    }
    std::fs::write(&last, b"").unwrap();
    let r = crate::support::read_response(&mut BufReader::new(&conns[2]), false).unwrap();
    replies.push(r.text());
    assert_eq!(replies, ["held", "fast", "held"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The app's start-up heap is frozen out of the garbage collector before the first
/// request in every way a process comes to serve (one process, workers forked from a
/// preloading master, lazy apps, an ASGI app after its lifespan startup), under every
/// model, and `--no-gc-freeze` leaves it alone.
#[test]
fn the_loaded_app_is_frozen_out_of_the_collector() {
    let file = apps_dir().join("gc_probe.py").display().to_string();
    let dir = apps_dir().display().to_string();
    let frozen = |args: &[&str]| -> u64 {
        let srv = crate::support::Server::start(args);
        let text = srv.get("/").text();
        text.parse()
            .unwrap_or_else(|_| panic!("{args:?}: not a count: {text:?}"))
    };
    for m in [Model::Linear, Model::Threads, Model::Epoll, Model::Async] {
        let wsgi = ["--wsgi-file", &file, "--model", m.name()];
        let asgi = [
            "--asgi",
            "gc_probe:asgi_app",
            "--pythonpath",
            &dir,
            "--model",
            m.name(),
        ];
        for (what, extra) in [
            ("one process", &[][..]),
            ("preloaded workers", &["--processes", "2"][..]),
            ("lazy apps", &["--processes", "2", "--lazy-apps"][..]),
        ] {
            for app in [&wsgi[..], &asgi[..]] {
                let args: Vec<&str> = app.iter().chain(extra).copied().collect();
                assert!(frozen(&args) > 1000, "{what}, {}: {args:?}", m.name());
            }
        }
        for app in [&wsgi[..], &asgi[..]] {
            let args: Vec<&str> = app.iter().copied().chain(["--no-gc-freeze"]).collect();
            assert_eq!(frozen(&args), 0, "{args:?}");
        }
    }
}
