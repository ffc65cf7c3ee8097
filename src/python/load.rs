//! Finding the app callable: a `--wsgi-file` run as a module, or `--module pkg.mod[:name]`
//! imported, then the callable looked up. Shared by the WSGI and ASGI interfaces.

use pyo3::prelude::*;

use super::interp;
use super::options::{PythonError, PythonOptions};

/// The app callable `opts` names, and a description of where it came from
/// (`wsgi-file app.py`, `module 'pkg.web'`) with its name, for messages.
pub(crate) struct Loaded<'py> {
    pub app: Bound<'py, PyAny>,
    pub what: String,
    pub callable: String,
}

/// Imports the app's file or module and returns its callable.
pub(crate) fn find<'py>(py: Python<'py>, opts: &PythonOptions) -> Result<Loaded<'py>, PythonError> {
    let boot = interp::boot_module(py).map_err(|e| PythonError::Init(interp::summary(py, &e)))?;
    let (module, what, callable) = if let Some(file) = &opts.wsgi_file {
        let abs = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        let name = module_name_for(py, file);
        let what = format!("wsgi-file {}", file.display());
        let m = boot
            .call_method1("load_file", (abs, name))
            .map_err(|e| load_error(py, &e, &what))?;
        (m, what, opts.callable.clone())
    } else {
        let spec = opts.module.as_deref().unwrap_or_default();
        let (modname, callable) = match spec.split_once(':') {
            Some((m, c)) if !c.is_empty() => (m, c.to_owned()),
            Some((m, _)) => (m, opts.callable.clone()),
            None => (spec, opts.callable.clone()),
        };
        let m = py.import(modname).map_err(|e| {
            if e.is_instance_of::<pyo3::exceptions::PyImportError>(py) {
                interp::log_exception(py, &e);
                PythonError::Import {
                    module: modname.to_owned(),
                    reason: interp::summary(py, &e),
                }
            } else {
                load_error(py, &e, &format!("module '{modname}'"))
            }
        })?;
        (m.into_any(), format!("module '{modname}'"), callable)
    };
    let app = match module.getattr(callable.as_str()) {
        Ok(a) => a,
        Err(_) => return Err(PythonError::NoCallable { what, callable }),
    };
    if !app.is_callable() {
        return Err(PythonError::NotCallable { what, callable });
    }
    Ok(Loaded {
        app,
        what,
        callable,
    })
}

/// A module name for a wsgi-file: its stem when that is a free identifier.
fn module_name_for(py: Python<'_>, file: &std::path::Path) -> String {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let ident = !stem.is_empty()
        && !stem.starts_with(|c: char| c.is_ascii_digit())
        && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let taken = py
        .import("sys")
        .and_then(|s| s.getattr("modules"))
        .and_then(|m| m.contains(stem))
        .unwrap_or(true);
    if ident && !taken {
        stem.to_owned()
    } else {
        "forklift_wsgi_app".to_owned()
    }
}

fn load_error(py: Python<'_>, e: &PyErr, what: &str) -> PythonError {
    interp::log_exception(py, e);
    PythonError::Load {
        what: what.to_owned(),
        reason: interp::summary(py, e),
    }
}
