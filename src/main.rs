//! The `forklift` binary: parses the command line and runs it (see `forklift::cli`).

fn main() {
    std::process::exit(forklift::cli::main(std::env::args_os().collect()));
}
