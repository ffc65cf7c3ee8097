//! uWSGI-style ini files: `--ini FILE[:SECTION]` expanded into the long options of
//! `serve`, remembering the file and line each option came from so that a bad value is
//! reported where the user wrote it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::CommandFactory;

use super::Cli;

/// The sections read when `--ini FILE` names none: uWSGI's own, and forklift's for the
/// options uWSGI lacks.
const DEFAULT_SECTIONS: [&str; 2] = ["uwsgi", "forklift"];

/// One option an ini file set.
#[derive(Debug, Clone)]
pub struct IniOption {
    /// The file, as named on the command line.
    pub path: PathBuf,
    /// The 1-based line of the key.
    pub line: usize,
    /// The key as written (`wsgi_file` or `wsgi-file`).
    pub key: String,
    /// The long option it stands for (`wsgi-file`).
    pub long: String,
    /// The value as written (quotes removed).
    pub value: String,
    /// Whether the option takes a value (else it is a boolean flag).
    pub takes_value: bool,
}

impl IniOption {
    /// `FILE:LINE: key = value: problem`, the one-line report of a bad value.
    pub fn located(&self, problem: &str) -> String {
        format!(
            "{}:{}: {} = {}: {problem}",
            self.path.display(),
            self.line,
            self.key,
            self.value
        )
    }
}

/// What `--ini` added to the command line: the options, in the order given (a later
/// one wins), and the command line as the user typed it, without them.
#[derive(Debug, Clone, Default)]
pub struct IniSource {
    pub options: Vec<IniOption>,
    pub user_args: Vec<OsString>,
}

impl IniSource {
    /// The ini line whose value `serve` uses for `--long`: the last one setting it,
    /// unless the command line gives the option too (then the command line's wins).
    pub fn line_of(&self, long: &str) -> Option<&IniOption> {
        let opt = self.options.iter().rev().find(|o| o.long == long)?;
        (!self.command_line_gives(long)).then_some(opt)
    }

    fn command_line_gives(&self, long: &str) -> bool {
        let mut cmd = Cli::command();
        let Some(id) = cmd
            .find_subcommand("serve")
            .and_then(|s| s.get_arguments().find(|a| a.get_long() == Some(long)))
            .map(|a| a.get_id().clone())
        else {
            return false;
        };
        let Ok(matches) = cmd.try_get_matches_from_mut(&self.user_args) else {
            return false;
        };
        matches.subcommand_matches("serve").is_some_and(|m| {
            m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
    }

    /// A command-line parse error caused by a value from an ini file, as one line naming
    /// the file and line; `None` when the error is not about such a value.
    pub fn locate_clap_error(&self, e: &clap::Error) -> Option<String> {
        let ContextValue::String(arg) = e.get(ContextKind::InvalidArg)? else {
            return None;
        };
        let ContextValue::String(value) = e.get(ContextKind::InvalidValue)? else {
            return None;
        };
        let long = long_name(arg)?;
        // The parser stops at the first bad value, and the ini's come first.
        let opt = self
            .options
            .iter()
            .find(|o| o.long == long && o.value == *value)?;
        Some(opt.located(&clap_problem(e)))
    }
}

/// `--processes <N>` or `-p <N>` (as clap names an argument in an error): the long name.
fn long_name(arg: &str) -> Option<String> {
    let name = arg.split([' ', '=']).next()?;
    if let Some(long) = name.strip_prefix("--") {
        return Some(long.to_string());
    }
    let short = name.strip_prefix('-')?.chars().next()?;
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve")?;
    let arg = serve
        .get_arguments()
        .find(|a| a.get_short() == Some(short))?;
    arg.get_long().map(str::to_string)
}

/// What a rejected value must be, from clap's error: the value parser's message, or the
/// values allowed.
fn clap_problem(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::InvalidValue {
        if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
            return format!("must be one of {}", valid.join(", "));
        }
    }
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// Replaces each `--ini FILE[:SECTION]` in `args` with the options the file sets, placed
/// right after `serve` (inserted when absent: `forklift --ini FILE` is `forklift serve
/// --ini FILE`, as `uwsgi --ini FILE`), so the command line's own options win.
///
/// Keys are long option names read from the `[uwsgi]` and `[forklift]` sections, or
/// from `[SECTION]` alone. A file with none of them is an error, as is a key without a
/// value for an option that takes one; boolean options take `1/true/yes/on` or
/// `0/false/no/off`, and a bare key sets them (as uWSGI reads it). An unknown key is one
/// warning line (uWSGI has many options forklift does not).
pub fn expand_ini(args: Vec<OsString>) -> Result<(Vec<OsString>, Option<IniSource>), String> {
    // `forklift bench --ini …` is clap's to refuse.
    let other_command = args.get(1).is_some_and(|a| {
        let a = a.to_string_lossy();
        !a.starts_with('-')
            && a != "serve"
            && Cli::command().get_subcommands().any(|s| s.get_name() == a)
    });
    if other_command {
        return Ok((args, None));
    }
    let mut user_args = Vec::with_capacity(args.len());
    let mut files = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        if let Some(spec) = text.strip_prefix("--ini=") {
            files.push(spec.to_string());
        } else if text == "--ini" {
            let spec = it.next().ok_or("--ini needs a file name (--ini FILE)")?;
            files.push(spec.to_string_lossy().into_owned());
        } else {
            user_args.push(arg);
        }
    }
    if files.is_empty() {
        return Ok((user_args, None));
    }
    let at = match user_args.iter().position(|a| a == "serve") {
        Some(i) => i + 1,
        None => {
            user_args.insert(1.min(user_args.len()), OsString::from("serve"));
            2.min(user_args.len())
        }
    };
    let mut options = Vec::new();
    let mut unknown = Vec::new();
    for spec in &files {
        let (path, section) = split_spec(spec);
        options.extend(read_ini(&path, section.as_deref(), &mut unknown)?);
    }
    // `strict` (in a file or on the command line) refuses unknown keys, as uWSGI does.
    let strict = user_args.iter().any(|a| a == "--strict")
        || options
            .iter()
            .rev()
            .find(|o| o.long == "strict")
            .is_some_and(|o| is_true(&o.value) == Some(true));
    match unknown.first() {
        Some(first) if strict => {
            return Err(format!(
                "{first} (strict mode refuses unknown options; remove it, or drop `strict`)"
            ))
        }
        _ => unknown
            .iter()
            .for_each(|u| eprintln!("forklift: warning: {u}; ignored")),
    }
    let mut args = user_args.clone();
    let extra = options.iter().filter_map(as_args);
    args.splice(at..at, extra);
    Ok((args, Some(IniSource { options, user_args })))
}

/// `FILE` or `FILE:SECTION`, split at the last `:` as uWSGI does, unless the whole text
/// names an existing file.
fn split_spec(spec: &str) -> (PathBuf, Option<String>) {
    if Path::new(spec).is_file() {
        return (PathBuf::from(spec), None);
    }
    match spec.rsplit_once(':') {
        Some((file, section)) if !file.is_empty() => (
            PathBuf::from(file),
            Some(section.to_string()).filter(|s| !s.is_empty()),
        ),
        _ => (PathBuf::from(spec), None),
    }
}

/// The command-line word for one ini option: `--long=VALUE` (one word, so a value
/// starting with `-` stays a value), `--long` for a boolean that is on, nothing for one
/// that is off.
fn as_args(o: &IniOption) -> Option<OsString> {
    if o.takes_value {
        Some(OsString::from(format!("--{}={}", o.long, o.value)))
    } else if is_true(&o.value) == Some(true) {
        Some(OsString::from(format!("--{}", o.long)))
    } else {
        None
    }
}

/// An ini boolean: `Some(true)` for `""/1/true/yes/on`, `Some(false)` for
/// `0/false/no/off`, `None` for anything else.
fn is_true(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Reads the options of one ini file: the `section` given, or the default sections.
/// Keys that name no option are added to `unknown`, as `FILE:LINE: unknown option "KEY"`
/// (or, for one of uWSGI's, `FILE:LINE: `KEY` is a uWSGI option forklift does not support`).
fn read_ini(
    path: &Path,
    section: Option<&str>,
    unknown: &mut Vec<String>,
) -> Result<Vec<IniOption>, String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read ini file {shown}: {e}"))?;
    let ini = parse_ini(&text);
    let wanted = |s: &str| match section {
        Some(want) => s == want,
        None => DEFAULT_SECTIONS.contains(&s),
    };
    if !ini.sections.iter().any(|s| wanted(s)) {
        let names: Vec<String> = ini.sections.iter().map(|s| format!("[{s}]")).collect();
        let seen = if names.is_empty() {
            "it has no sections".to_string()
        } else {
            format!("its sections: {}", names.join(", "))
        };
        return Err(match section {
            Some(s) => format!("{shown}: no [{s}] section ({seen})"),
            None => format!(
                "{shown}: no [uwsgi] or [forklift] section, so no options to read ({seen}); \
                 put the options under [uwsgi], or name the section: --ini {shown}:SECTION"
            ),
        });
    }
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").expect("serve subcommand");
    let mut out = Vec::new();
    for e in ini.entries.into_iter().filter(|e| wanted(&e.section)) {
        let long = e.key.replace('_', "-");
        let arg = serve.get_arguments().find(|a| {
            a.get_long() == Some(long.as_str())
                || a.get_all_aliases()
                    .is_some_and(|al| al.contains(&long.as_str()))
        });
        let at = format!("{shown}:{}", e.line);
        let Some(arg) = arg else {
            if e.value.is_none() {
                // `processes 4`: a known option missing its `=`.
                let fix = e
                    .key
                    .split_once(char::is_whitespace)
                    .filter(|(k, _)| {
                        let k = k.replace('_', "-");
                        serve
                            .get_arguments()
                            .any(|a| a.get_long() == Some(k.as_str()))
                    })
                    .map(|(k, v)| format!("; write `{k} = {}`", v.trim()))
                    .unwrap_or_default();
                return Err(format!(
                    "{at}: {:?} has no `=`: ini lines are `key = value`{fix}",
                    e.key
                ));
            }
            if long == "ini" {
                eprintln!(
                    "forklift: warning: {at}: `ini` inside an ini file is not supported; ignored"
                );
            } else {
                let known: Vec<&str> = serve.get_arguments().filter_map(|a| a.get_long()).collect();
                let what = super::uwsgi_compat::ini_unknown(&e.key, &long, &known);
                unknown.push(format!("{at}: {what}"));
            }
            continue;
        };
        let long = arg
            .get_long()
            .expect("ini keys match long options")
            .to_string();
        let takes = arg.get_action().takes_values();
        let value = match e.value {
            Some(v) => v,
            // `chmod-socket` alone: the option's value when given bare (666).
            None if takes && bare_value(&long).is_some() => {
                bare_value(&long).unwrap_or_default().to_string()
            }
            None if takes => {
                return Err(format!(
                    "{at}: {} needs a value: write `{} = VALUE`",
                    e.key, e.key
                ))
            }
            // A bare key turns a boolean option on, as in uWSGI.
            None => String::new(),
        };
        if !takes && is_true(&value).is_none() {
            return Err(format!(
                "{at}: {} = {value}: takes true or false (1/0, yes/no, on/off)",
                e.key
            ));
        }
        out.push(IniOption {
            path: path.to_path_buf(),
            line: e.line,
            key: e.key,
            long,
            value,
            takes_value: takes,
        });
    }
    Ok(out)
}

/// The value of an option that takes one but may be given bare (its clap
/// `default_missing_value`).
fn bare_value(long: &str) -> Option<&'static str> {
    match long {
        "chmod-socket" => Some("666"),
        "daemonize" => Some(""),
        _ => None,
    }
}

/// One `key = value` line of an ini file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniEntry {
    /// 1-based line number.
    pub line: usize,
    /// The section it is in (`""` before the first header).
    pub section: String,
    pub key: String,
    /// The value, quotes removed; `None` for a line without `=`.
    pub value: Option<String>,
}

/// An ini file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ini {
    /// The section headers, in file order (a repeated one once).
    pub sections: Vec<String>,
    /// The key lines, in file order.
    pub entries: Vec<IniEntry>,
}

/// Parses ini text: `[section]` headers, `key=value` or `key = value` lines (values may
/// be quoted), comment lines starting with `;` or `#`.
pub fn parse_ini(text: &str) -> Ini {
    let mut ini = Ini::default();
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            if !ini.sections.contains(&section) {
                ini.sections.push(section.clone());
            }
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(unquote(v.trim()))),
            None => (line, None),
        };
        ini.entries.push(IniEntry {
            line: i + 1,
            section: section.clone(),
            key: key.trim().to_string(),
            value: value.map(str::to_string),
        });
    }
    ini
}

fn unquote(value: &str) -> &str {
    let quoted = value.len() >= 2
        && ((value.starts_with('"') && value.ends_with('"'))
            || (value.starts_with('\'') && value.ends_with('\'')));
    if quoted {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{in_ini, plan, Command};

    /// A directory of its own for one test's ini files, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(test: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("forklift-ini-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }

        fn file(&self, name: &str, text: &str) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn serve_args(args: Vec<OsString>) -> crate::cli::ServeArgs {
        match Cli::try_parse_from(args).unwrap().command {
            Command::Serve(a) => a,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn ini_both_spellings_and_sections() {
        let ini = parse_ini(
            "[uwsgi]\nhttp = :5000\nwsgi-file=app.py\n; c\nmaster\n[other]\nx='1'\n[empty]\n",
        );
        let kv: Vec<_> = ini
            .entries
            .iter()
            .map(|e| {
                (
                    e.line,
                    e.section.as_str(),
                    e.key.as_str(),
                    e.value.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            kv,
            [
                (2, "uwsgi", "http", Some(":5000")),
                (3, "uwsgi", "wsgi-file", Some("app.py")),
                (5, "uwsgi", "master", None),
                (7, "other", "x", Some("1"))
            ]
        );
        assert_eq!(ini.sections, ["uwsgi", "other", "empty"]);
    }

    #[test]
    fn ini_expands_before_cli_options() {
        let dir = Dir::new("expand");
        let ini = dir.file(
            "a.ini",
            "[uwsgi]\nhttp = :5001\nprocesses = 4\nmaster\nlazy-apps = 0\nbogus = 3\nharakiri = 2.5\n",
        );
        let (args, _) = expand_ini(argv(&[
            "forklift",
            "serve",
            "builtin:hello",
            "--ini",
            &ini,
            "--processes",
            "2",
        ]))
        .unwrap();
        let a = serve_args(args);
        assert_eq!(a.http, [":5001"]);
        assert_eq!(a.processes, Some(2), "command line wins");
        assert!(a.master, "a bare key turns a flag on");
        assert!(!a.lazy_apps);
        assert_eq!(a.harakiri, Some(2.5));
        // `forklift --ini FILE` alone is `serve`.
        let (args, _) = expand_ini(argv(&["forklift", "--ini", &ini, "builtin:hello"])).unwrap();
        assert_eq!(serve_args(args).processes, Some(4));
    }

    #[test]
    fn touch_reload_keys_repeat() {
        let dir = Dir::new("touch");
        let ini = dir.file(
            "t.ini",
            "[uwsgi]\ntouch-reload = /tmp/a\ntouch-reload = /tmp/b\ntouch-chain-reload = /tmp/c\n",
        );
        let (args, _) = expand_ini(argv(&["forklift", "--ini", &ini, "builtin:hello"])).unwrap();
        let a = serve_args(args);
        let paths = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(&a.ops.touch_reload), ["/tmp/a", "/tmp/b"]);
        assert_eq!(paths(&a.ops.touch_chain_reload), ["/tmp/c"]);
    }

    #[test]
    fn a_file_without_the_sections_is_an_error_naming_them() {
        let dir = Dir::new("sections");
        let ini = dir.file("s.ini", "[server]\nhttp = :5002\n[dev]\nprocesses = 3\n");
        let e = expand_ini(argv(&["forklift", "--ini", &ini])).unwrap_err();
        assert!(e.contains("s.ini: no [uwsgi] or [forklift] section"), "{e}");
        assert!(e.contains("[server], [dev]"), "{e}");
        assert!(e.contains(":SECTION"), "{e}");
        // FILE:SECTION reads that section, and only it.
        let (args, _) = expand_ini(argv(&[
            "forklift",
            "--ini",
            &format!("{ini}:dev"),
            "builtin:hello",
        ]))
        .unwrap();
        let a = serve_args(args);
        assert_eq!(a.processes, Some(3));
        assert!(a.http.is_empty());
        let e = expand_ini(argv(&["forklift", "--ini", &format!("{ini}:prod")])).unwrap_err();
        assert!(e.contains("no [prod] section"), "{e}");
        let empty = dir.file("e.ini", "http = :5003\n");
        let e = expand_ini(argv(&["forklift", "--ini", &empty])).unwrap_err();
        assert!(e.contains("it has no sections"), "{e}");
    }

    #[test]
    fn a_line_without_equals_is_an_error_with_its_line() {
        let dir = Dir::new("noeq");
        let ini = dir.file("n.ini", "[uwsgi]\nhttp = :5004\nprocesses 2\n");
        let e = expand_ini(argv(&["forklift", "--ini", &ini])).unwrap_err();
        assert!(e.contains("n.ini:3:"), "{e}");
        assert!(e.contains("write `processes = 2`"), "{e}");
        let ini = dir.file("v.ini", "[uwsgi]\nprocesses\n");
        let e = expand_ini(argv(&["forklift", "--ini", &ini])).unwrap_err();
        assert!(e.contains("v.ini:2: processes needs a value"), "{e}");
        let ini = dir.file("b.ini", "[uwsgi]\nmaster = maybe\n");
        let e = expand_ini(argv(&["forklift", "--ini", &ini])).unwrap_err();
        assert!(
            e.contains("b.ini:2: master = maybe: takes true or false"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_from_the_file_name_its_line() {
        let dir = Dir::new("values");
        // A value the parser refuses.
        let ini = dir.file("p.ini", "[uwsgi]\nhttp = :5005\nprocesses = 0\n");
        let (args, src) = expand_ini(argv(&["forklift", "--ini", &ini, "builtin:hello"])).unwrap();
        let e = Cli::try_parse_from(args).unwrap_err();
        let line = src.unwrap().locate_clap_error(&e).expect("located");
        assert!(
            line.ends_with("p.ini:3: processes = 0: must be a whole number from 1 to 1024"),
            "{line}"
        );
        // A value `plan` refuses: located unless the command line gives the option.
        let ini = dir.file(
            "l.ini",
            "[uwsgi]\nhttp = :5006\n\nlisten = 0\nharakiri = -1\n",
        );
        let (args, src) = expand_ini(argv(&["forklift", "--ini", &ini, "builtin:hello"])).unwrap();
        let e = in_ini(plan(&serve_args(args)).err().unwrap(), src.as_ref());
        assert!(
            e.to_string()
                .ends_with("l.ini:4: listen = 0: must be positive"),
            "{e}"
        );
        let (args, src) = expand_ini(argv(&[
            "forklift",
            "--ini",
            &ini,
            "builtin:hello",
            "--listen",
            "5",
        ]))
        .unwrap();
        let e = in_ini(plan(&serve_args(args)).err().unwrap(), src.as_ref());
        assert!(
            e.to_string()
                .ends_with("l.ini:5: harakiri = -1: must be a positive number of seconds"),
            "{e}"
        );
        let (args, src) = expand_ini(argv(&[
            "forklift",
            "--ini",
            &ini,
            "builtin:hello",
            "--listen",
            "0",
        ]))
        .unwrap();
        let e = in_ini(plan(&serve_args(args)).err().unwrap(), src.as_ref());
        assert_eq!(e.to_string(), "--listen must be positive, got 0");
    }
}
