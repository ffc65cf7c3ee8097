//! The `forklift` binary: parses the command line and runs it (see `forklift::cli`).

fn main() {
    let virtual_env = std::env::var_os("VIRTUAL_ENV").map(std::path::PathBuf::from);
    std::process::exit(forklift::cli::main(
        std::env::args_os().collect(),
        virtual_env,
    ));
}
