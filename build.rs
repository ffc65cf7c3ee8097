//! Build script: when the `python` feature is on, bake the rpath of the libpython that
//! pyo3 was configured against into the binary, so `forklift` finds the same shared
//! library (and, through it, the same prefix and site-packages) without LD_LIBRARY_PATH.

fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    if std::env::var_os("CARGO_FEATURE_PYTHON").is_none() {
        return;
    }
    let config = pyo3_build_config::get();
    if let Some(dir) = &config.lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if let Some(exe) = &config.executable {
        println!("cargo:rustc-env=FORKLIFT_PYTHON_EXECUTABLE={exe}");
    }
}
