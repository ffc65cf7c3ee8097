//! The command line as a new user meets it: `forklift --ini FILE` runs `serve` with the
//! file's options, a mistake in the file is one line naming the file and line, `--help`
//! tells about ini files, and a uWSGI command line runs with `forklift` in place of
//! `uwsgi` (or names the uWSGI option forklift lacks).

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::support::*;

/// A directory of its own for one test's files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("forklift-it-cli-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn file(&self, name: &str, text: &str) -> String {
        std::fs::write(self.0.join(name), text).unwrap();
        name.to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn forklift(dir: &Dir, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(&dir.0)
        .output()
        .expect("run forklift")
}

/// Exit code 2 and exactly one stderr line, which is returned.
fn one_line_usage_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err.trim_end().to_string()
}

#[test]
fn ini_value_errors_name_the_file_and_line() {
    let dir = Dir::new("values");
    let ini = dir.file("app.ini", "[uwsgi]\nhttp = 127.0.0.1:0\nprocesses = 0\n");
    let line = one_line_usage_error(&forklift(&dir, &["--ini", &ini, "builtin:hello"]));
    assert_eq!(
        line,
        "forklift: app.ini:3: processes = 0: must be a whole number from 1 to 1024"
    );
    let ini = dir.file("listen.ini", "[uwsgi]\nhttp = 127.0.0.1:0\nlisten = 0\n");
    let line = one_line_usage_error(&forklift(&dir, &["--ini", &ini, "builtin:hello"]));
    assert_eq!(line, "forklift: listen.ini:3: listen = 0: must be positive");
}

#[test]
fn ini_without_its_section_or_with_a_bare_line_is_an_error() {
    let dir = Dir::new("sections");
    let ini = dir.file("app.ini", "[server]\nhttp = 127.0.0.1:0\n");
    let line = one_line_usage_error(&forklift(&dir, &["--ini", &ini, "builtin:hello"]));
    assert!(
        line.contains("app.ini: no [uwsgi] or [forklift] section"),
        "{line}"
    );
    assert!(line.contains("[server]"), "{line}");
    let ini = dir.file("bare.ini", "[uwsgi]\nhttp 127.0.0.1:0\n");
    let line = one_line_usage_error(&forklift(&dir, &["--ini", &ini, "builtin:hello"]));
    assert!(line.contains("bare.ini:2:"), "{line}");
    assert!(line.contains("write `http = 127.0.0.1:0`"), "{line}");
}

#[test]
fn ini_section_named_on_the_command_line_is_served() {
    let dir = Dir::new("serve");
    dir.file(
        "app.ini",
        "[uwsgi]\nprocesses = 0\n\n[two]\nprocesses = 2\nmodel = epoll\ndisable-logging\n",
    );
    let path = dir.0.join("app.ini");
    let mut srv = Server::start(&["builtin:hello", "--ini", &format!("{}:two", path.display())]);
    assert_eq!(srv.get("/").text(), "Hello world");
    let deadline = std::time::Instant::now() + IO_GUARD;
    while srv.workers().len() != 2 {
        assert!(std::time::Instant::now() < deadline, "two workers");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn help_tells_about_ini_files() {
    let dir = Dir::new("help");
    for args in [&["--help"][..], &["serve", "--help"]] {
        let out = forklift(&dir, args);
        assert_eq!(out.status.code(), Some(0));
        // Compared with the help's line breaks made spaces.
        let text = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            text.contains("`forklift --ini FILE` runs `serve`"),
            "{args:?}: {text}"
        );
        assert!(text.contains("[uwsgi] section"), "{args:?}: {text}");
    }
}

#[test]
fn a_uwsgi_command_line_runs_without_a_subcommand() {
    let mut srv = Server::start_command(&[
        "--http-socket",
        "127.0.0.1:0",
        "--processes",
        "1",
        "--master",
        "builtin:hello",
    ]);
    assert_eq!(srv.get("/").text(), "Hello world");
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn a_uwsgi_option_forklift_lacks_is_refused_by_name() {
    let dir = Dir::new("uwsgi-only");
    for (args, named) in [
        (
            &["--http", "127.0.0.1:0", "--cheaper", "2", "builtin:hello"][..],
            "--cheaper",
        ),
        (&["serve", "--emperor=/etc/vassals"], "--emperor"),
        (&["-C", "builtin:hello"], "-C (--chmod-socket)"),
    ] {
        let line = one_line_usage_error(&forklift(&dir, args));
        assert_eq!(
            line.split(" is ").next(),
            Some(format!("forklift: {named}").as_str()),
            "{line}"
        );
        assert!(
            line.contains("a uWSGI option forklift does not support"),
            "{line}"
        );
    }
    // A typo is no uWSGI option: clap's error, with the closest option.
    let out = forklift(&dir, &["--proceses", "2", "builtin:hello"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("similar argument exists: '--processes'"),
        "{err}"
    );
}

#[test]
fn ini_warns_of_uwsgi_options_and_typos_by_name() {
    let dir = Dir::new("ini-unknown");
    let ini = dir.file(
        "app.ini",
        "[uwsgi]\nhttp = 127.0.0.1:0\ncheaper = 2\nproceses = 2\n",
    );
    let path = dir.0.join(ini);
    let srv = Server::start_command(&["--ini", path.to_str().unwrap(), "builtin:hello"]);
    assert_eq!(srv.get("/").text(), "Hello world");
    let out = srv.preamble.join("\n");
    assert!(
        out.contains("app.ini:3: `cheaper` is a uWSGI option forklift does not support; ignored"),
        "{out}"
    );
    assert!(
        out.contains("app.ini:4: unknown option \"proceses\" (did you mean `processes`?); ignored"),
        "{out}"
    );
}
