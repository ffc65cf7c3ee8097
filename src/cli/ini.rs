//! uWSGI-style ini files: `--ini FILE` expanded into the long options of `serve`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::CommandFactory;

use super::Cli;

/// Replaces `--ini FILE` in `args` with the options the file sets, placed before the
/// command-line options so those win. Keys are long option names; boolean options take
/// `1/true/yes/on` or `0/false/no/off`; an unknown key is one warning line.
pub fn expand_ini(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let pos = args
        .iter()
        .position(|a| a == "--ini" || a.to_string_lossy().starts_with("--ini="));
    let Some(pos) = pos else { return Ok(args) };
    let mut args = args;
    let flag = args.remove(pos).to_string_lossy().into_owned();
    let path = match flag.strip_prefix("--ini=") {
        Some(p) => PathBuf::from(p),
        None => {
            if pos >= args.len() {
                return Err("--ini needs a file name".into());
            }
            PathBuf::from(args.remove(pos))
        }
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read ini file {}: {e}", path.display()))?;
    let cmd = Cli::command();
    let serve = cmd
        .find_subcommand("serve")
        .expect("serve subcommand exists");
    let mut extra = Vec::new();
    for (lineno, section, key, value) in parse_ini(&text) {
        if section != "uwsgi" && section != "forklift" {
            continue;
        }
        let key = key.replace('_', "-");
        if key == "ini" {
            continue;
        }
        let arg = serve.get_arguments().find(|a| {
            a.get_long() == Some(key.as_str())
                || a.get_all_aliases()
                    .is_some_and(|al| al.contains(&key.as_str()))
        });
        let Some(arg) = arg else {
            eprintln!(
                "forklift: warning: {}:{lineno}: unknown option {key:?} ignored",
                path.display()
            );
            continue;
        };
        let long = arg.get_long().expect("ini keys match long options");
        if arg.get_action().takes_values() {
            extra.push(OsString::from(format!("--{long}")));
            extra.push(OsString::from(value));
        } else {
            match value.to_ascii_lowercase().as_str() {
                "" | "1" | "true" | "yes" | "on" => extra.push(OsString::from(format!("--{long}"))),
                "0" | "false" | "no" | "off" => {}
                other => {
                    return Err(format!(
                        "{}:{lineno}: {key} takes true or false, got {other:?}",
                        path.display()
                    ))
                }
            }
        }
    }
    // Insert right after `serve`, before the user's own options; `forklift --ini FILE`
    // alone (as `uwsgi --ini FILE`) means `forklift serve --ini FILE`.
    let at = match args.iter().position(|a| a == "serve") {
        Some(i) => i + 1,
        None => {
            args.insert(1.min(args.len()), OsString::from("serve"));
            2.min(args.len())
        }
    };
    args.splice(at..at, extra);
    Ok(args)
}

/// Parses ini text into `(line, section, key, value)`. `key=value` and `key = value`;
/// `;` and `#` start comment lines; values may be quoted.
pub fn parse_ini(text: &str) -> Vec<(usize, String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let mut value = value.trim();
        if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            value = &value[1..value.len() - 1];
        }
        out.push((
            i + 1,
            section.clone(),
            key.trim().to_string(),
            value.to_string(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Command;

    #[test]
    fn ini_both_spellings_and_sections() {
        let v =
            parse_ini("[uwsgi]\nhttp = :5000\nwsgi-file=app.py\n; c\nmaster = 1\n[other]\nx=1\n");
        let kv: Vec<_> = v
            .iter()
            .map(|(_, s, k, v)| (s.as_str(), k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            kv,
            [
                ("uwsgi", "http", ":5000"),
                ("uwsgi", "wsgi-file", "app.py"),
                ("uwsgi", "master", "1"),
                ("other", "x", "1")
            ]
        );
    }

    #[test]
    fn ini_expands_before_cli_options() {
        let dir = std::env::temp_dir().join(format!("forklift-ini-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ini = dir.join("a.ini");
        std::fs::write(
            &ini,
            "[uwsgi]\nhttp = :5001\nprocesses = 4\nmaster = 1\nlazy-apps = 0\nbogus = 3\n",
        )
        .unwrap();
        let args: Vec<OsString> = [
            "forklift",
            "serve",
            "builtin:hello",
            "--ini",
            ini.to_str().unwrap(),
            "--processes",
            "2",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let expanded = expand_ini(args).unwrap();
        let Command::Serve(a) = Cli::try_parse_from(expanded).unwrap().command else {
            panic!("serve expected");
        };
        assert_eq!(a.http.as_deref(), Some(":5001"));
        assert_eq!(a.processes, Some(2), "command line wins");
        assert!(a.master);
        assert!(!a.lazy_apps);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
