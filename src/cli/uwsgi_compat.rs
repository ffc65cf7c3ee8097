//! uWSGI command lines as they are: `forklift` followed by options and no subcommand
//! means `forklift serve …` (so `uwsgi` can be replaced by `forklift` in a script or a
//! systemd unit), and an option that uWSGI has but forklift does not is refused by its
//! name rather than reported as a typo.

use std::ffi::OsString;

/// uWSGI's long options, with the short letter where it has one (see the file).
const UWSGI_OPTIONS: &str = include_str!("uwsgi_options.txt");

/// The word after `forklift` that keeps the top-level meaning: help and version.
const TOP_LEVEL_FLAGS: [&str; 4] = ["-h", "--help", "-V", "--version"];

/// Inserts `serve` when the first argument is an option (`forklift --http :8080 …`),
/// as uWSGI's command line has no subcommand.
pub fn implicit_serve(mut args: Vec<OsString>) -> Vec<OsString> {
    let first_is_option = args.get(1).is_some_and(|a| {
        let a = a.to_string_lossy();
        a.starts_with('-') && !TOP_LEVEL_FLAGS.contains(&a.as_ref())
    });
    if first_is_option {
        args.insert(1, OsString::from("serve"));
    }
    args
}

/// Whether `name` (a long option, without dashes) is one of uWSGI's.
pub fn is_uwsgi_option(name: &str) -> bool {
    entries().any(|(long, _)| long == name)
}

/// uWSGI's long option for the short letter `c` (`-C` is `--chmod-socket`).
fn uwsgi_long_of_short(c: char) -> Option<&'static str> {
    entries().find(|&(_, s)| s == Some(c)).map(|(long, _)| long)
}

fn entries() -> impl Iterator<Item = (&'static str, Option<char>)> {
    UWSGI_OPTIONS
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(" -") {
            Some((long, short)) => (long, short.chars().next()),
            None => (l, None),
        })
}

/// The one-line refusal of an argument the command line did not know (as clap names it:
/// `--vacuum`, `--chmod-socket=660`, `-C`), when it is a uWSGI option forklift does not
/// support; `None` for anything else (a typo gets clap's suggestion).
pub fn refusal(arg: &str) -> Option<String> {
    let word = arg.split('=').next().unwrap_or(arg);
    if let Some(long) = word.strip_prefix("--") {
        return is_uwsgi_option(long).then(|| unsupported(&format!("--{long}")));
    }
    let mut letters = word.strip_prefix('-')?.chars();
    let long = uwsgi_long_of_short(letters.next()?)?;
    Some(unsupported(&format!("{word} (--{long})")))
}

fn unsupported(what: &str) -> String {
    format!(
        "{what} is a uWSGI option forklift does not support (`forklift serve --help` lists \
         the options it has; docs/UWSGI.md says how uWSGI's map)"
    )
}

/// What an ini file's key is when no option of `serve` has it (the warning, or with
/// `strict` the error, says the rest): uWSGI's own options are named as such; anything
/// else is a typo, with the closest option when one is close.
pub fn ini_unknown(key: &str, long: &str, known: &[&str]) -> String {
    if is_uwsgi_option(long) {
        return format!("`{key}` is a uWSGI option forklift does not support");
    }
    let close = known
        .iter()
        .map(|k| (strsim::jaro(long, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match close {
        Some((_, k)) => format!("unknown option {key:?} (did you mean `{k}`?)"),
        None => format!("unknown option {key:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_first_mean_serve() {
        assert_eq!(
            implicit_serve(os(&["forklift", "--http", ":8080"])),
            os(&["forklift", "serve", "--http", ":8080"])
        );
        for kept in [
            &["forklift", "--help"][..],
            &["forklift", "-V"],
            &["forklift", "bench", "-n", "1"],
            &["forklift"],
        ] {
            assert_eq!(implicit_serve(os(kept)), os(kept));
        }
    }

    #[test]
    fn uwsgi_options_are_refused_by_name() {
        let line = refusal("--vacuum").unwrap();
        assert!(line.starts_with("--vacuum is a uWSGI option"), "{line}");
        assert!(refusal("--chmod-socket=660")
            .unwrap()
            .starts_with("--chmod-socket is"));
        assert!(refusal("-C").unwrap().starts_with("-C (--chmod-socket) is"));
        assert_eq!(refusal("--proceses"), None);
        assert_eq!(refusal("-Z"), None);
    }

    #[test]
    fn ini_warnings_tell_uwsgi_options_from_typos() {
        let known = ["processes", "threads", "master"];
        assert!(ini_unknown("vacuum", "vacuum", &known).contains("uWSGI option"));
        assert!(ini_unknown("proceses", "proceses", &known).contains("did you mean `processes`"));
        assert!(!ini_unknown("zzz", "zzz", &known).contains("did you mean"));
    }
}
