//! `forklift.fetch_all(...)` and `forklift.fetch(...)`: the fan-out client for Python
//! apps: an event loop on its own thread that hands futures back, built in. The GIL is
//! released while a batch runs; `fetch` resolves a `concurrent.futures.Future` from the
//! client's callback pool.

use std::time::Duration;

use bytes::Bytes;
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyModule, PyString};

use super::interp::with_gil;
use crate::fanout::{self, FetchError as RustFetchError, FetchRequest, FetchResponse};

create_exception!(
    forklift,
    FetchError,
    PyRuntimeError,
    "A fan-out call failed."
);
create_exception!(
    forklift,
    FetchTimeout,
    FetchError,
    "A fan-out call timed out."
);

/// A backend's response: `status`, `headers` (list of (name, bytes), names lower case),
/// `body` (bytes), `elapsed` (seconds), `text()`, `header(name)`.
#[pyclass(module = "forklift", name = "Response", frozen)]
pub struct PyFetchResponse(FetchResponse);

#[pymethods]
impl PyFetchResponse {
    #[getter]
    fn status(&self) -> u16 {
        self.0.status
    }
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(
            py,
            self.0
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), PyBytes::new(py, v))),
        )
    }
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.body)
    }
    #[getter]
    fn elapsed(&self) -> f64 {
        self.0.elapsed.as_secs_f64()
    }
    fn text(&self) -> String {
        self.0.text()
    }
    fn header<'py>(&self, py: Python<'py>, name: &str) -> Option<Bound<'py, PyBytes>> {
        self.0.header(name).map(|v| PyBytes::new(py, v))
    }
    fn __repr__(&self) -> String {
        format!(
            "<forklift.Response {} ({} bytes)>",
            self.0.status,
            self.0.body.len()
        )
    }
}

fn to_py_err(e: &RustFetchError) -> PyErr {
    match e {
        RustFetchError::Timeout(_) => FetchTimeout::new_err(e.to_string()),
        _ => FetchError::new_err(e.to_string()),
    }
}

/// A URL string, or a dict `{"url", "method"="GET", "headers"={} or [(k, v)],
/// "body"=b"", "timeout"=None}`.
fn to_request(obj: &Bound<'_, PyAny>) -> PyResult<FetchRequest> {
    if let Ok(url) = obj.downcast::<PyString>() {
        return Ok(FetchRequest::get(url.to_str()?));
    }
    let d = obj
        .downcast::<PyDict>()
        .map_err(|_| PyTypeError::new_err("a request is a URL string or a dict with 'url'"))?;
    let url: String = d
        .get_item("url")?
        .ok_or_else(|| PyTypeError::new_err("request dict needs 'url'"))?
        .extract()?;
    let method: String = match d.get_item("method")? {
        Some(m) => m.extract()?,
        None => "GET".into(),
    };
    let mut req = FetchRequest::new(method, url);
    if let Some(h) = d.get_item("headers")? {
        let pairs: Vec<(String, Bound<'_, PyAny>)> = match h.downcast::<PyDict>() {
            Ok(hd) => hd
                .iter()
                .map(|(k, v)| Ok((k.extract()?, v)))
                .collect::<PyResult<_>>()?,
            Err(_) => h.extract()?,
        };
        for (k, v) in pairs {
            let v: Vec<u8> = match v.downcast::<PyString>() {
                Ok(s) => s.to_str()?.as_bytes().to_vec(),
                Err(_) => v.extract()?,
            };
            req = req.header(k, v);
        }
    }
    if let Some(b) = d.get_item("body")? {
        let body: Vec<u8> = match b.downcast::<PyString>() {
            Ok(s) => s.to_str()?.as_bytes().to_vec(),
            Err(_) => b.extract()?,
        };
        req = req.body(Bytes::from(body));
    }
    if let Some(t) = d.get_item("timeout")? {
        if !t.is_none() {
            req = req.timeout(secs(t.extract()?)?);
        }
    }
    Ok(req)
}

fn secs(v: f64) -> PyResult<Duration> {
    if v.is_finite() && v > 0.0 {
        Ok(Duration::from_secs_f64(v.min(86_400.0)))
    } else {
        Err(PyTypeError::new_err(
            "timeout must be a positive number of seconds",
        ))
    }
}

/// `forklift.fetch_all(requests, timeout=30.0, raise_errors=False)`: makes every call at
/// once and returns, in order, a `forklift.Response` or (unless `raise_errors`) the
/// `forklift.FetchError` instance of each call. The GIL is released while waiting.
#[pyfunction]
#[pyo3(signature = (requests, timeout = 30.0, raise_errors = false))]
fn fetch_all<'py>(
    py: Python<'py>,
    requests: &Bound<'py, PyAny>,
    timeout: f64,
    raise_errors: bool,
) -> PyResult<Bound<'py, PyList>> {
    let reqs = requests
        .try_iter()?
        .map(|r| to_request(&r?))
        .collect::<PyResult<Vec<_>>>()?;
    let timeout = secs(timeout)?;
    let results = py.allow_threads(|| fanout::client().fetch_all_blocking(reqs, timeout));
    let out = PyList::empty(py);
    for r in results {
        match r {
            Ok(resp) => out.append(Py::new(py, PyFetchResponse(resp))?)?,
            Err(e) if raise_errors => return Err(to_py_err(&e)),
            Err(e) => out.append(to_py_err(&e).into_value(py))?,
        }
    }
    Ok(out)
}

/// `forklift.fetch(request, timeout=None)`: starts one call and returns a
/// `forklift.FetchFuture` (a `concurrent.futures.Future` that can also be awaited)
/// whose result is a `forklift.Response` (or whose exception
/// is a `forklift.FetchError`). Never blocks.
#[pyfunction]
#[pyo3(signature = (request, timeout = None))]
fn fetch<'py>(
    py: Python<'py>,
    request: &Bound<'py, PyAny>,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut req = to_request(request)?;
    if let Some(t) = timeout {
        req = req.timeout(secs(t)?);
    }
    let fut = future_class(py)?.call0()?;
    fut.call_method0("set_running_or_notify_cancel")?;
    let handle: Py<PyAny> = fut.clone().unbind();
    let client = fanout::client();
    py.allow_threads(move || {
        // Runs on the client's callback pool, never on its I/O thread.
        client.fetch_then(req, move |result| {
            with_gil(|py| {
                let fut = handle.bind(py);
                let set = match result {
                    Ok(resp) => Py::new(py, PyFetchResponse(resp))
                        .and_then(|r| fut.call_method1("set_result", (r,))),
                    Err(e) => fut.call_method1("set_exception", (to_py_err(&e).into_value(py),)),
                };
                if let Err(e) = set {
                    e.print(py);
                }
            })
        })
    });
    Ok(fut)
}

/// `forklift.FetchFuture`: a `concurrent.futures.Future` that asyncio code can also
/// `await` (on the thread's running loop), so ASGI apps write `await forklift.fetch(url)`.
const FETCH_FUTURE: &str = r#"
import asyncio, concurrent.futures

class FetchFuture(concurrent.futures.Future):
    """A fan-out call's result: `.result()` blocks for it; `await` suspends for it."""
    __module__ = "forklift"

    def __await__(self):
        return asyncio.wrap_future(self).__await__()
"#;

fn future_class(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static CLASS: pyo3::sync::GILOnceCell<Py<PyAny>> = pyo3::sync::GILOnceCell::new();
    CLASS
        .get_or_try_init(py, || {
            let code = std::ffi::CString::new(FETCH_FUTURE).expect("no NUL");
            let m = PyModule::from_code(py, &code, c"<forklift fetch>", c"_forklift_fetch")?;
            Ok(m.getattr("FetchFuture")?.unbind())
        })
        .map(|c| c.bind(py).clone())
}

/// Adds `fetch`, `fetch_all`, `Response`, `FetchError`, `FetchTimeout` to the module;
/// call from `module::populate`.
pub(crate) fn populate(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("FetchError", py.get_type::<FetchError>())?;
    m.add("FetchTimeout", py.get_type::<FetchTimeout>())?;
    m.add_class::<PyFetchResponse>()?;
    m.add_function(wrap_pyfunction!(fetch_all, m)?)?;
    m.add_function(wrap_pyfunction!(fetch, m)?)?;
    m.add("FetchFuture", future_class(py)?)?;
    Ok(())
}
