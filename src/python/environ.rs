//! PEP 3333 environ dicts, built fast: a per-app template holding the constant entries is
//! copied per request, keys are interned once, and common values (methods, protocols,
//! `HTTP_*` names) are cached Python strings.

use std::collections::HashMap;
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple};

use crate::app::{Request, Version};

use super::wsgi::{Errors, FileWrapper, Input};

/// Most distinct `HTTP_*` names remembered; beyond this, names are built per request.
const MAX_CACHED_NAMES: usize = 512;

/// Interned keys and cached constant values.
pub(crate) struct Consts {
    request_method: Py<PyString>,
    path_info: Py<PyString>,
    query_string: Py<PyString>,
    content_type: Py<PyString>,
    content_length: Py<PyString>,
    server_name: Py<PyString>,
    server_port: Py<PyString>,
    server_protocol: Py<PyString>,
    remote_addr: Py<PyString>,
    remote_port: Py<PyString>,
    wsgi_input: Py<PyString>,
    empty: Py<PyString>,
    http10: Py<PyString>,
    http11: Py<PyString>,
    slash: Py<PyString>,
    port80: Py<PyString>,
    localhost: Py<PyString>,
    methods: Vec<(&'static [u8], Py<PyString>)>,
    /// Lower-cased header name → `HTTP_NAME` key.
    header_keys: Mutex<HashMap<Box<[u8]>, Py<PyString>>>,
}

static CONSTS: GILOnceCell<Consts> = GILOnceCell::new();

pub(crate) fn consts(py: Python<'_>) -> &Consts {
    CONSTS.get_or_init(py, || {
        let s = |v: &str| PyString::intern(py, v).unbind();
        Consts {
            request_method: s("REQUEST_METHOD"),
            path_info: s("PATH_INFO"),
            query_string: s("QUERY_STRING"),
            content_type: s("CONTENT_TYPE"),
            content_length: s("CONTENT_LENGTH"),
            server_name: s("SERVER_NAME"),
            server_port: s("SERVER_PORT"),
            server_protocol: s("SERVER_PROTOCOL"),
            remote_addr: s("REMOTE_ADDR"),
            remote_port: s("REMOTE_PORT"),
            wsgi_input: s("wsgi.input"),
            empty: s(""),
            http10: s("HTTP/1.0"),
            http11: s("HTTP/1.1"),
            slash: s("/"),
            port80: s("80"),
            localhost: s("localhost"),
            methods: ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]
                .iter()
                .map(|m| (m.as_bytes(), s(m)))
                .collect(),
            header_keys: Mutex::new(HashMap::new()),
        }
    })
}

/// The constant part of every environ for one app.
pub(crate) fn template(
    py: Python<'_>,
    multithread: bool,
    multiprocess: bool,
) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    d.set_item(
        PyString::intern(py, "SCRIPT_NAME"),
        PyString::intern(py, ""),
    )?;
    d.set_item(
        PyString::intern(py, "wsgi.version"),
        PyTuple::new(py, [1, 0])?,
    )?;
    d.set_item(
        PyString::intern(py, "wsgi.url_scheme"),
        PyString::intern(py, "http"),
    )?;
    d.set_item(PyString::intern(py, "wsgi.errors"), Py::new(py, Errors)?)?;
    d.set_item(
        PyString::intern(py, "wsgi.multithread"),
        PyBool::new(py, multithread),
    )?;
    d.set_item(
        PyString::intern(py, "wsgi.multiprocess"),
        PyBool::new(py, multiprocess),
    )?;
    d.set_item(
        PyString::intern(py, "wsgi.run_once"),
        PyBool::new(py, false),
    )?;
    d.set_item(
        PyString::intern(py, "wsgi.input_terminated"),
        PyBool::new(py, true),
    )?;
    d.set_item(
        PyString::intern(py, "wsgi.file_wrapper"),
        py.get_type::<FileWrapper>(),
    )?;
    Ok(d.unbind())
}

/// Decodes bytes as latin-1 into a Python str (every byte maps to one code point).
pub(crate) fn latin1<'py>(py: Python<'py>, b: &[u8]) -> PyResult<Bound<'py, PyString>> {
    // SAFETY: the pointer and length describe a live slice; PyUnicode_DecodeLatin1
    // returns a new reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyUnicode_DecodeLatin1(
                b.as_ptr().cast(),
                b.len() as ffi::Py_ssize_t,
                std::ptr::null(),
            ),
        )
        .map(|o| o.downcast_into_unchecked())
    }
}

/// Percent-decodes a path (`+` stays `+`); invalid escapes are kept as written.
pub(crate) fn percent_decode_path(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' && i + 2 < raw.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// Splits a request target into (path, query), dropping the scheme and authority of an
/// absolute-form target.
pub(crate) fn split_target(target: &[u8]) -> (&[u8], &[u8]) {
    let mut t = target;
    if !t.starts_with(b"/") {
        if let Some(i) = t.windows(3).position(|w| w == b"://") {
            let rest = &t[i + 3..];
            let end = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            t = &rest[end..];
        }
    }
    match t.iter().position(|&b| b == b'?') {
        Some(i) => (&t[..i], &t[i + 1..]),
        None => (t, b""),
    }
}

/// Splits a Host header value into (name, port); `[v6]:port` keeps its brackets.
pub(crate) fn split_host(host: &[u8]) -> (&[u8], Option<&[u8]>) {
    let colon = if host.starts_with(b"[") {
        host.iter()
            .position(|&b| b == b']')
            .and_then(|end| (host.get(end + 1) == Some(&b':')).then_some(end + 1))
    } else {
        host.iter().rposition(|&b| b == b':')
    };
    match colon {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    }
}

/// `HTTP_` + upper-cased name with `-` as `_`; `None` for names that must not become
/// keys (containing `_`, which would be ambiguous with `-`, or not a token).
fn cgi_key(name: &[u8]) -> Option<String> {
    let mut k = String::with_capacity(5 + name.len());
    k.push_str("HTTP_");
    for &b in name {
        match b {
            b'-' => k.push('_'),
            b'_' => return None,
            b if b.is_ascii_alphanumeric() || b"!#$%&'*+.^`|~".contains(&b) => {
                k.push(b.to_ascii_uppercase() as char)
            }
            _ => return None,
        }
    }
    Some(k)
}

fn header_key<'py>(py: Python<'py>, c: &Consts, name: &[u8]) -> Option<Bound<'py, PyString>> {
    let mut lower = [0u8; 64];
    if name.len() > lower.len() {
        return Some(PyString::new(py, &cgi_key(name)?));
    }
    let l = &mut lower[..name.len()];
    for (d, s) in l.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    // The lock is never held while Python code could run (an allocation may run a
    // garbage collection and `__del__` methods, which may switch threads).
    let cached = c
        .header_keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&l[..])
        .map(|k| k.clone_ref(py));
    if let Some(k) = cached {
        return Some(k.into_bound(py));
    }
    let key = PyString::intern(py, &cgi_key(name)?);
    let mut map = c.header_keys.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() < MAX_CACHED_NAMES && !map.contains_key(&l[..]) {
        map.insert(l.to_vec().into_boxed_slice(), key.clone().unbind());
    }
    Some(key)
}

/// Builds the environ for `req` from the app's template.
pub(crate) fn build<'py>(
    py: Python<'py>,
    template: &Bound<'py, PyDict>,
    req: crate::app::Request,
) -> PyResult<Bound<'py, PyDict>> {
    let c = consts(py);
    // SAFETY: PyDict_Copy returns a new reference to a dict, or NULL with an exception.
    let env = unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyDict_Copy(template.as_ptr()))?
            .downcast_into_unchecked::<PyDict>()
    };
    let Request {
        method,
        target,
        version,
        headers,
        body,
        peer,
        local,
        cgi_vars,
        ..
    } = req;

    let m = match c.methods.iter().find(|(n, _)| *n == &method[..]) {
        Some((_, s)) => s.bind(py).clone(),
        None => latin1(py, &method)?,
    };
    env.set_item(c.request_method.bind(py), m)?;

    let (path, query) = split_target(&target);
    let path_obj = if path == b"/" {
        c.slash.bind(py).clone()
    } else if path.contains(&b'%') {
        latin1(py, &percent_decode_path(path))?
    } else {
        latin1(py, path)?
    };
    env.set_item(c.path_info.bind(py), path_obj)?;
    let q = if query.is_empty() {
        c.empty.bind(py).clone()
    } else {
        latin1(py, query)?
    };
    env.set_item(c.query_string.bind(py), q)?;
    env.set_item(
        c.server_protocol.bind(py),
        match version {
            Version::Http10 => c.http10.bind(py),
            Version::Http11 => c.http11.bind(py),
        },
    )?;

    let mut host: Option<&[u8]> = None;
    let mut chunked = false;
    for (i, h) in headers.iter().enumerate() {
        let name = &h.name[..];
        if name.eq_ignore_ascii_case(b"content-type") {
            env.set_item(c.content_type.bind(py), latin1(py, &h.value)?)?;
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            env.set_item(c.content_length.bind(py), latin1(py, &h.value)?)?;
            continue;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The server de-chunked and read the whole body: like nginx in front of an
            // app server, present it with its length (frameworks such as Django read
            // exactly CONTENT_LENGTH bytes and would see an empty body otherwise).
            chunked = true;
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") && host.is_none() {
            host = Some(&h.value);
        }
        // A repeated header was joined when its first occurrence was seen.
        if headers[..i]
            .iter()
            .any(|p| p.name.eq_ignore_ascii_case(name))
        {
            continue;
        }
        let Some(key) = header_key(py, c, name) else {
            continue;
        };
        let mut rest = headers[i + 1..]
            .iter()
            .filter(|p| p.name.eq_ignore_ascii_case(name))
            .peekable();
        let value = if rest.peek().is_none() {
            latin1(py, &h.value)?
        } else {
            let sep: &[u8] = if name.eq_ignore_ascii_case(b"cookie") {
                b"; "
            } else {
                b","
            };
            let mut joined = h.value.to_vec();
            for p in rest {
                joined.extend_from_slice(sep);
                joined.extend_from_slice(&p.value);
            }
            latin1(py, &joined)?
        };
        env.set_item(key, value)?;
    }

    match host.filter(|h| !h.is_empty()) {
        Some(h) => {
            let (name, port) = split_host(h);
            env.set_item(c.server_name.bind(py), latin1(py, name)?)?;
            match (port, local) {
                (Some(p), _) if !p.is_empty() => {
                    env.set_item(c.server_port.bind(py), latin1(py, p)?)?
                }
                (_, Some(l)) => env.set_item(c.server_port.bind(py), l.port().to_string())?,
                _ => env.set_item(c.server_port.bind(py), c.port80.bind(py))?,
            }
        }
        None => match local {
            Some(l) => {
                env.set_item(c.server_name.bind(py), l.ip().to_string())?;
                env.set_item(c.server_port.bind(py), l.port().to_string())?;
            }
            None => {
                env.set_item(c.server_name.bind(py), c.localhost.bind(py))?;
                env.set_item(c.server_port.bind(py), c.port80.bind(py))?;
            }
        },
    }
    if let Some(p) = peer {
        env.set_item(c.remote_addr.bind(py), p.ip().to_string())?;
        env.set_item(c.remote_port.bind(py), p.port().to_string())?;
    }
    if chunked {
        env.set_item(c.content_length.bind(py), body.len().to_string())?;
    }
    if !cgi_vars.is_empty() {
        put_cgi_vars(py, &env, &cgi_vars)?;
    }
    env.set_item(c.wsgi_input.bind(py), Py::new(py, Input::new(body))?)?;
    Ok(env)
}

/// The variables a front server sent over the uwsgi protocol go into the environ as
/// they are (as uWSGI does: nginx's `PATH_INFO`, `SCRIPT_NAME`, `REMOTE_ADDR`,
/// `SERVER_NAME`… win over what the request line would give); `UWSGI_SCHEME`, or else
/// `HTTPS` set to `on`/`1`, makes `wsgi.url_scheme` https.
fn put_cgi_vars<'py>(
    py: Python<'py>,
    env: &Bound<'py, PyDict>,
    vars: &[(bytes::Bytes, bytes::Bytes)],
) -> PyResult<()> {
    for (k, v) in vars {
        env.set_item(latin1(py, k)?, latin1(py, v)?)?;
    }
    if let Some(scheme) = cgi_scheme(vars) {
        env.set_item(PyString::intern(py, "wsgi.url_scheme"), scheme)?;
    }
    Ok(())
}

/// The URL scheme a front server reported in `vars` (`UWSGI_SCHEME`, or `HTTPS` on).
pub(crate) fn cgi_scheme(vars: &[(bytes::Bytes, bytes::Bytes)]) -> Option<&'static str> {
    let get = |name: &[u8]| vars.iter().find(|(k, _)| &k[..] == name).map(|(_, v)| v);
    if let Some(s) = get(b"UWSGI_SCHEME") {
        return Some(if s.eq_ignore_ascii_case(b"https") {
            "https"
        } else {
            "http"
        });
    }
    get(b"HTTPS")
        .filter(|v| v.eq_ignore_ascii_case(b"on") || &v[..] == b"1")
        .map(|_| "https")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes_in_paths() {
        assert_eq!(percent_decode_path(b"/a%20b"), b"/a b");
        assert_eq!(percent_decode_path(b"/a+b"), b"/a+b");
        assert_eq!(percent_decode_path(b"/%zz%4"), b"/%zz%4");
        assert_eq!(percent_decode_path(b"/%E9"), b"/\xe9");
        assert_eq!(percent_decode_path(b"%41"), b"A");
    }

    #[test]
    fn splits_targets() {
        assert_eq!(split_target(b"/a?b=1"), (&b"/a"[..], &b"b=1"[..]));
        assert_eq!(split_target(b"/a"), (&b"/a"[..], &b""[..]));
        assert_eq!(split_target(b"http://h:1/x?y"), (&b"/x"[..], &b"y"[..]));
    }

    #[test]
    fn splits_hosts() {
        assert_eq!(
            split_host(b"example.com:8080"),
            (&b"example.com"[..], Some(&b"8080"[..]))
        );
        assert_eq!(split_host(b"example.com"), (&b"example.com"[..], None));
        assert_eq!(split_host(b"[::1]:80"), (&b"[::1]"[..], Some(&b"80"[..])));
        assert_eq!(split_host(b"[::1]"), (&b"[::1]"[..], None));
    }

    #[test]
    fn cgi_keys() {
        assert_eq!(cgi_key(b"User-Agent").as_deref(), Some("HTTP_USER_AGENT"));
        assert_eq!(cgi_key(b"X_Bad"), None);
        assert_eq!(cgi_key(b"X Bad"), None);
    }
}
