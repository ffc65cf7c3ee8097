//! ASGI `http` connection scopes, built fast: a per-loop template with the constant
//! entries is copied per request, keys are interned once, and methods, versions and
//! common header names are cached Python objects.

use std::net::SocketAddr;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::app::{Request, Version};

use crate::python::environ::{percent_decode_path, split_target};

/// Interned keys and cached values for one thread's scopes.
pub(crate) struct Scopes {
    template: Py<PyDict>,
    asgi: Py<PyDict>,
    k_asgi: Py<PyString>,
    k_http_version: Py<PyString>,
    k_method: Py<PyString>,
    k_path: Py<PyString>,
    k_raw_path: Py<PyString>,
    k_query_string: Py<PyString>,
    k_headers: Py<PyString>,
    k_client: Py<PyString>,
    k_server: Py<PyString>,
    k_state: Py<PyString>,
    v10: Py<PyString>,
    v11: Py<PyString>,
    methods: Vec<(&'static [u8], Py<PyString>)>,
    names: Vec<(&'static [u8], Py<PyBytes>)>,
}

/// Header names sent by most clients, kept as ready bytes objects.
const COMMON_HEADERS: &[&str] = &[
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "connection",
    "content-type",
    "content-length",
    "cookie",
    "cache-control",
    "origin",
    "referer",
    "authorization",
];

impl Scopes {
    pub(crate) fn new(py: Python<'_>) -> PyResult<Scopes> {
        let s = |v: &str| PyString::intern(py, v).unbind();
        let template = PyDict::new(py);
        template.set_item(s("type"), s("http"))?;
        template.set_item(s("scheme"), s("http"))?;
        template.set_item(s("root_path"), s(""))?;
        let ext = PyDict::new(py);
        ext.set_item("http.response.pathsend", PyDict::new(py))?;
        ext.set_item("http.response.trailers", PyDict::new(py))?;
        template.set_item(s("extensions"), ext)?;
        let asgi = PyDict::new(py);
        asgi.set_item(s("version"), s("3.0"))?;
        asgi.set_item(s("spec_version"), s("2.4"))?;
        Ok(Scopes {
            template: template.unbind(),
            asgi: asgi.unbind(),
            k_asgi: s("asgi"),
            k_http_version: s("http_version"),
            k_method: s("method"),
            k_path: s("path"),
            k_raw_path: s("raw_path"),
            k_query_string: s("query_string"),
            k_headers: s("headers"),
            k_client: s("client"),
            k_server: s("server"),
            k_state: s("state"),
            v10: s("1.0"),
            v11: s("1.1"),
            methods: ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]
                .iter()
                .map(|m| (m.as_bytes(), s(m)))
                .collect(),
            names: COMMON_HEADERS
                .iter()
                .map(|n| (n.as_bytes(), PyBytes::new(py, n.as_bytes()).unbind()))
                .collect(),
        })
    }

    /// The scope of `req` (its body is not part of it). `state` is the lifespan state,
    /// copied shallowly into the scope as the spec asks.
    pub(crate) fn build<'py>(
        &self,
        py: Python<'py>,
        req: &Request,
        state: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let scope = self.template.bind(py).copy()?;
        scope.set_item(self.k_asgi.bind(py), self.asgi.bind(py).copy()?)?;
        let version = match req.version {
            Version::Http10 => &self.v10,
            Version::Http11 => &self.v11,
        };
        scope.set_item(self.k_http_version.bind(py), version.bind(py))?;
        let method = match self.methods.iter().find(|(m, _)| *m == &req.method[..]) {
            Some((_, s)) => s.bind(py).clone(),
            None => PyString::new(py, &String::from_utf8_lossy(&req.method)),
        };
        scope.set_item(self.k_method.bind(py), method)?;
        let (raw_path, query) = split_target(&req.target);
        let decoded = percent_decode_path(raw_path);
        let path = PyString::new(py, &String::from_utf8_lossy(&decoded));
        scope.set_item(self.k_path.bind(py), path)?;
        scope.set_item(self.k_raw_path.bind(py), PyBytes::new(py, raw_path))?;
        scope.set_item(self.k_query_string.bind(py), PyBytes::new(py, query))?;
        let headers = PyList::empty(py);
        for h in &req.headers {
            let name = self.header_name(py, &h.name);
            let pair = PyTuple::new(py, [name.into_any(), PyBytes::new(py, &h.value).into_any()])?;
            headers.append(pair)?;
        }
        scope.set_item(self.k_headers.bind(py), headers)?;
        if !req.cgi_vars.is_empty() {
            // Behind a front server over uwsgi: its scheme and mount point.
            if let Some(scheme) = crate::python::environ::cgi_scheme(&req.cgi_vars) {
                scope.set_item("scheme", scheme)?;
            }
            if let Some((_, root)) = req.cgi_vars.iter().find(|(k, _)| &k[..] == b"SCRIPT_NAME") {
                scope.set_item("root_path", String::from_utf8_lossy(root))?;
            }
        }
        scope.set_item(self.k_client.bind(py), addr(py, req.peer)?)?;
        scope.set_item(self.k_server.bind(py), addr(py, req.local)?)?;
        scope.set_item(self.k_state.bind(py), state.copy()?)?;
        Ok(scope)
    }

    /// A header name as lower-case bytes (the spec's form), cached for common names.
    fn header_name<'py>(&self, py: Python<'py>, name: &[u8]) -> Bound<'py, PyBytes> {
        if let Some((_, b)) = self
            .names
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            return b.bind(py).clone();
        }
        PyBytes::new(py, &name.to_ascii_lowercase())
    }
}

/// `(host, port)`, or None when the transport has no address.
fn addr<'py>(py: Python<'py>, a: Option<SocketAddr>) -> PyResult<Bound<'py, PyAny>> {
    match a {
        Some(a) => Ok(PyTuple::new(
            py,
            [
                PyString::new(py, &a.ip().to_string()).into_any(),
                a.port().into_pyobject(py)?.into_any(),
            ],
        )?
        .into_any()),
        None => Ok(py.None().into_bound(py)),
    }
}
