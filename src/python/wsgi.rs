//! The Python objects of the WSGI protocol: `wsgi.input` over the already-read body,
//! `wsgi.errors`, the `start_response` callable (with its `write()` and `exc_info`
//! rules) and `wsgi.file_wrapper`.

use std::borrow::Cow;
use std::io::Write;

use bytes::{Bytes, BytesMut};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::app::HeaderName;

/// `wsgi.input`: a read-only file over the request body.
#[pyclass(module = "forklift")]
pub struct Input {
    data: Bytes,
    pos: usize,
}

impl Input {
    pub(crate) fn new(data: Bytes) -> Input {
        Input { data, pos: 0 }
    }

    fn rest(&self) -> &[u8] {
        &self.data[self.pos..]
    }

    /// The next line (up to and including `\n`), at most `limit` bytes.
    fn line(&mut self, limit: Option<usize>) -> &[u8] {
        let rest = &self.data[self.pos..];
        let max = limit.map_or(rest.len(), |l| l.min(rest.len()));
        let end = rest[..max]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(max, |i| i + 1);
        let start = self.pos;
        self.pos += end;
        &self.data[start..start + end]
    }
}

fn size_arg(size: Option<isize>) -> Option<usize> {
    size.and_then(|s| usize::try_from(s).ok())
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size = None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<isize>) -> Bound<'py, PyBytes> {
        let rest = self.rest();
        let n = size_arg(size).map_or(rest.len(), |s| s.min(rest.len()));
        let out = PyBytes::new(py, &rest[..n]);
        self.pos += n;
        out
    }

    #[pyo3(signature = (size = None))]
    fn readline<'py>(&mut self, py: Python<'py>, size: Option<isize>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.line(size_arg(size)))
    }

    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<isize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let hint = size_arg(hint).filter(|&h| h > 0);
        let list = PyList::empty(py);
        let mut total = 0;
        while self.pos < self.data.len() {
            let line = self.line(None);
            total += line.len();
            list.append(PyBytes::new(py, line))?;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(list)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        if self.pos >= self.data.len() {
            return None;
        }
        Some(PyBytes::new(py, self.line(None)))
    }

    fn close(&self) {}
}

/// `wsgi.errors`: text written here goes to the server's error log (stderr).
#[pyclass(module = "forklift")]
pub struct Errors;

#[pymethods]
impl Errors {
    fn write(&self, py: Python<'_>, s: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text: Cow<'_, str> = match s.downcast::<PyString>() {
            Ok(st) => st.to_cow()?,
            Err(_) => match s.downcast::<PyBytes>() {
                Ok(b) => Cow::Owned(String::from_utf8_lossy(b.as_bytes()).into_owned()),
                Err(_) => return Err(PyTypeError::new_err("wsgi.errors.write() takes a str")),
            },
        };
        let n = text.chars().count();
        let bytes = text.into_owned();
        py.allow_threads(|| {
            let _ = std::io::stderr().lock().write_all(bytes.as_bytes());
        });
        Ok(n)
    }

    fn writelines(&self, py: Python<'_>, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(py, &line?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Most bytes `write()` may hold before the response goes out (it is sent after the app
/// returns, so everything written is buffered until then).
const MAX_WRITTEN: usize = 256 << 20;

/// Status line and headers as given to `start_response`, validated.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: u16,
    pub reason: Option<Cow<'static, str>>,
    pub headers: Vec<(HeaderName, Bytes)>,
}

/// The `start_response` callable of one request, and what it collected.
#[pyclass(module = "forklift")]
#[derive(Default)]
pub struct StartResponse {
    pub(crate) head: Option<Head>,
    /// Headers count as sent: a non-empty body chunk went out (or was written).
    pub(crate) sent: bool,
    /// Bytes passed to `write()`, sent before the iterable's output.
    pub(crate) written: BytesMut,
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let mut me = slf.borrow_mut();
            match exc_info {
                Some(info) if me.sent => {
                    // Too late to change the response: re-raise the app's exception.
                    let value = info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                Some(_) => {}
                None if me.head.is_some() => {
                    return Err(PyRuntimeError::new_err(
                        "start_response() called again without exc_info",
                    ))
                }
                None => {}
            }
            me.head = Some(parse_head(status, headers)?);
        }
        slf.getattr(pyo3::intern!(slf.py(), "write"))
    }

    /// The legacy `write()` callable returned by `start_response`.
    fn write(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.head.is_none() {
            return Err(PyRuntimeError::new_err("write() before start_response()"));
        }
        let b = data
            .downcast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() takes bytes"))?;
        let b = b.as_bytes();
        if self.written.len() + b.len() > MAX_WRITTEN {
            return Err(PyRuntimeError::new_err(
                "write() has buffered more than 256 MiB: return an iterable (or a \
                 wsgi.file_wrapper) to stream a body this large",
            ));
        }
        if !b.is_empty() {
            self.written.extend_from_slice(b);
            self.sent = true;
        }
        Ok(())
    }
}

/// Standard reason phrases of the common codes, so the usual statuses need no
/// allocation.
fn standard_reason(code: u16) -> Option<&'static str> {
    match crate::http::response::reason(code) {
        "Unknown" => None,
        r => Some(r),
    }
}

/// Parses `"200 OK"` into a code and a reason.
pub(crate) fn parse_status(s: &str) -> Result<(u16, Option<Cow<'static, str>>), String> {
    let b = s.as_bytes();
    let bad = || format!("invalid status {s:?}: expected e.g. \"200 OK\"");
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || (b.len() > 3 && b[3] != b' ') {
        return Err(bad());
    }
    let code: u16 = s[..3].parse().map_err(|_| bad())?;
    if code < 100 {
        return Err(bad());
    }
    let reason = if b.len() > 4 { &s[4..] } else { "" };
    if reason.bytes().any(|c| c < 0x20 && c != b'\t' || c == 0x7f) {
        return Err(bad());
    }
    let reason = match standard_reason(code) {
        Some(std) if std == reason => Some(Cow::Borrowed(std)),
        _ => Some(Cow::Owned(reason.to_owned())),
    };
    Ok((code, reason))
}

/// Header names forklift writes with a static spelling.
const COMMON_NAMES: &[&str] = &[
    "Content-Type",
    "Content-Length",
    "Location",
    "Set-Cookie",
    "Cache-Control",
    "Last-Modified",
    "ETag",
    "Expires",
    "Vary",
    "Content-Encoding",
    "Content-Disposition",
];

/// Hop-by-hop headers an app must not set (PEP 3333); the server frames the response.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "transfer-encoding",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_head(status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<Head> {
    let status = status
        .downcast::<PyString>()
        .map_err(|_| PyTypeError::new_err("status must be a str, e.g. \"200 OK\""))?;
    let (code, reason) = parse_status(&status.to_cow()?).map_err(PyValueError::new_err)?;
    let mut out = Vec::with_capacity(headers.len().unwrap_or(4));
    for item in headers.try_iter()? {
        let item = item?;
        let pair = item
            .downcast::<PyTuple>()
            .map_err(|_| PyTypeError::new_err("each header must be a (name, value) tuple"))?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err(
                "each header must be a (name, value) tuple",
            ));
        }
        let name = pair.get_item(0)?;
        let value = pair.get_item(1)?;
        let name = name
            .downcast::<PyString>()
            .map_err(|_| PyTypeError::new_err("header names must be str"))?;
        let value = value
            .downcast::<PyString>()
            .map_err(|_| PyTypeError::new_err("header values must be str"))?;
        let name = name.to_cow()?;
        if !is_token(&name) {
            return Err(PyValueError::new_err(format!(
                "invalid header name {name:?}"
            )));
        }
        let value = latin1_bytes(&value.to_cow()?).ok_or_else(|| {
            PyValueError::new_err(format!(
                "invalid value for header {name:?}: not latin-1 or contains a control character"
            ))
        })?;
        if is_hop_by_hop(&name) {
            continue;
        }
        let name: HeaderName = match COMMON_NAMES.iter().find(|c| **c == name) {
            Some(c) => Cow::Borrowed(*c),
            None => Cow::Owned(name.into_owned()),
        };
        out.push((name, value));
    }
    Ok(Head {
        status: code,
        reason,
        headers: out,
    })
}

/// Encodes a header value as latin-1; `None` when it has characters beyond U+00FF or
/// control characters (CR/LF would split the header).
fn latin1_bytes(s: &str) -> Option<Bytes> {
    if s.is_ascii() {
        if s.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return None;
        }
        return Some(Bytes::copy_from_slice(s.as_bytes()));
    }
    let mut out = Vec::with_capacity(s.len());
    for ch in s.chars() {
        let c = u32::from(ch);
        if c > 0xff || c < 0x20 && c != 9 || c == 0x7f {
            return None;
        }
        out.push(c as u8);
    }
    Some(out.into())
}

/// `wsgi.file_wrapper(filelike, blksize=8192)`: iterates over a file; when the app
/// returns one over a real file, forklift sends the file itself.
#[pyclass(module = "forklift")]
pub struct FileWrapper {
    pub(crate) filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize = 8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> FileWrapper {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1(pyo3::intern!(py, "read"), (self.blksize,))?;
        if data.len()? == 0 {
            return Ok(None);
        }
        Ok(Some(data))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr(pyo3::intern!(py, "close"))? {
            f.call_method0(pyo3::intern!(py, "close"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_statuses() {
        assert_eq!(
            parse_status("200 OK").unwrap(),
            (200, Some(Cow::Borrowed("OK")))
        );
        assert_eq!(parse_status("599 Odd").unwrap().1.as_deref(), Some("Odd"));
        assert_eq!(parse_status("204").unwrap().0, 204);
        assert!(parse_status("20 OK").is_err());
        assert!(parse_status("200OK").is_err());
        assert!(parse_status("200 OK\r\nX: y").is_err());
        assert!(parse_status("abc").is_err());
    }

    #[test]
    fn header_values_are_latin1_without_controls() {
        assert_eq!(latin1_bytes("a b").as_deref(), Some(&b"a b"[..]));
        assert_eq!(latin1_bytes("caf\u{e9}").as_deref(), Some(&b"caf\xe9"[..]));
        assert!(latin1_bytes("a\r\nb").is_none());
        assert!(latin1_bytes("\u{20ac}").is_none());
    }

    #[test]
    fn input_lines() {
        let mut i = Input::new(Bytes::from_static(b"ab\ncd\nef"));
        assert_eq!(i.line(Some(1)), b"a");
        assert_eq!(i.line(None), b"b\n");
        assert_eq!(i.line(None), b"cd\n");
        assert_eq!(i.line(None), b"ef");
        assert_eq!(i.line(None), b"");
    }
}
