//! The source layout: no two files of a checked module import each other, directly or
//! in a loop. Reads every `.rs` file under [`CHECKED`], builds the graph of which file
//! uses which (through `crate::`, `super::`, `self::` paths and paths into a file's own
//! child modules, `use` groups included), and fails on a cycle, printing it.
//!
//! A reference to a path resolves to the file of the longest module prefix it names
//! (`foo.rs` or `foo/mod.rs`): `super::Engine` from `offload/strategy/inline.rs` is an
//! edge to `offload/strategy/mod.rs`, `crate::offload::exec::run_guarded` one to
//! `offload/exec.rs`. Declaring a child module (`mod foo;`) is not an edge; using its
//! items is. Comments, strings and `mod tests { .. }` blocks (part of their file) are
//! skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The directories checked, relative to the crate root, recursively. `src/python`
/// joins this list once its `interp.rs` ↔ `module.rs` cycle is gone.
const CHECKED: &[&str] = &["src/offload", "src/python"];

/// A file's module path from the crate root: `src/offload/spool/mod.rs` is
/// `offload::spool`, `src/offload/spool/store.rs` is `offload::spool::store`.
fn module_of(rel: &str) -> Vec<String> {
    let rel = rel.strip_prefix("src/").unwrap_or(rel);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut m: Vec<String> = rel.split('/').map(str::to_string).collect();
    if m.last().is_some_and(|l| l == "mod" || l == "lib") {
        m.pop();
    }
    m
}

/// The source without comments, string and char literals (replaced by a space).
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && is_raw_start(&b, i) {
            // r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a), left as is.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push(' ');
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push(' ');
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether the `r` at `i` starts a raw string (not the end of an identifier).
fn is_raw_start(b: &[char], i: usize) -> bool {
    let prev_ident = i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_');
    let mut j = i + 1;
    while b.get(j) == Some(&'#') {
        j += 1;
    }
    !prev_ident && b.get(j) == Some(&'"')
}

/// Identifiers, `::` and single punctuation characters.
fn tokens(src: &str) -> Vec<String> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(b[start..i].iter().collect());
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// The tokens without `mod tests { .. }` blocks.
fn without_tests(t: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        if t[i] == "mod"
            && t.get(i + 1).is_some_and(|n| n == "tests")
            && t.get(i + 2).is_some_and(|b| b == "{")
        {
            let mut depth = 0;
            i += 2;
            while i < t.len() {
                match t[i].as_str() {
                    "{" => depth += 1,
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            out.push(t[i].clone());
            i += 1;
        }
    }
    out
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Parses the path (or `use` tree) starting at `t[i]`, appending each full path to
/// `out` with `prefix` in front. Returns the index after it.
fn parse_tree(t: &[String], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut segs = prefix.to_vec();
    loop {
        match t.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                while i < t.len() && t[i] != "}" {
                    if t[i] == "," {
                        i += 1;
                        continue;
                    }
                    let before = i;
                    i = parse_tree(t, i, &segs, out);
                    if i == before {
                        i += 1;
                    }
                }
                return i + 1;
            }
            Some("*") => {
                out.push(segs);
                return i + 1;
            }
            Some(s) if is_ident(s) => {
                segs.push(s.to_string());
                i += 1;
                if t.get(i).is_some_and(|s| s == "::") {
                    i += 1;
                } else {
                    out.push(segs);
                    return i;
                }
            }
            _ => {
                if segs.len() > prefix.len() {
                    out.push(segs);
                }
                return i;
            }
        }
    }
}

/// The paths a file's code refers to that start at `crate`, `super`, `self` or one of
/// the file's own child modules (`mod NAME;`).
fn paths(src: &str) -> Vec<Vec<String>> {
    let t = without_tests(tokens(&strip(src)));
    let children: Vec<String> = t
        .windows(3)
        .filter(|w| w[0] == "mod" && is_ident(&w[1]) && w[2] == ";")
        .map(|w| w[1].clone())
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let starts =
            (t[i] == "crate" || t[i] == "super" || t[i] == "self" || children.contains(&t[i]))
                && t.get(i + 1).is_some_and(|s| s == "::")
                && (i == 0 || t[i - 1] != "::");
        if starts {
            i = parse_tree(&t, i, &[], &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// `path`, written in the file of module `m`, as a path from the crate root.
fn absolute(m: &[String], path: &[String]) -> Vec<String> {
    let mut base: Vec<String>;
    let mut rest = path;
    match path[0].as_str() {
        "crate" => {
            base = Vec::new();
            rest = &path[1..];
        }
        "self" => {
            base = m.to_vec();
            rest = &path[1..];
        }
        "super" => {
            base = m.to_vec();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => base = m.to_vec(),
    }
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    base
}

/// The file graph of `files` (path relative to the crate root, source): for each file,
/// the files among them it refers to.
fn graph(files: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let by_module: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|(rel, _)| (module_of(rel), rel.clone()))
        .collect();
    let mut g = BTreeMap::new();
    for (rel, src) in files {
        let m = module_of(rel);
        let mut to: Vec<String> = Vec::new();
        for p in paths(src) {
            let abs = absolute(&m, &p);
            let target = (1..=abs.len()).rev().find_map(|n| by_module.get(&abs[..n]));
            if let Some(target) = target {
                if target != rel && !to.contains(target) {
                    to.push(target.clone());
                }
            }
        }
        to.sort();
        g.insert(rel.clone(), to);
    }
    g
}

/// A cycle in `g`, as the files along it (the first repeated at the end), if any.
fn find_cycle(g: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, Vec<String>>,
        done: &mut Vec<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.iter().any(|d| d == n) {
            return None;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.push(n.to_string());
        None
    }
    let mut done = Vec::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut done, &mut Vec::new()))
}

fn rs_files(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(root, &p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

fn file(rel: &str, src: &str) -> (String, String) {
    (rel.to_string(), src.to_string())
}

#[test]
fn no_two_files_of_a_checked_module_import_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in CHECKED {
        let mut files = Vec::new();
        rs_files(root, &root.join(dir), &mut files);
        assert!(!files.is_empty(), "no .rs files under {dir}");
        let g = graph(&files);
        // The graph is not vacuous: every checked module's root file uses something.
        let top = format!("{dir}/mod.rs");
        assert!(
            g.get(&top).is_some_and(|to| !to.is_empty()),
            "{top} refers to no file: {g:#?}"
        );
        if let Some(cycle) = find_cycle(&g) {
            panic!(
                "files under {dir} import each other: {}\nthe whole graph: {g:#?}",
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn the_graph_resolves_paths_and_finds_cycles() {
    let files = vec![
        file(
            "src/m/mod.rs",
            "//! use super::nothing::Here;\nmod a;\nmod b;\npub use a::A;\nfn f() { let s = \"crate::m::c::X\"; }",
        ),
        file(
            "src/m/a.rs",
            "use super::{b::{self, B}, c::*};\n#[cfg(test)]\nmod tests {\n    use super::super::*;\n}",
        ),
        file("src/m/b.rs", "fn g<'a>(x: &'a str) -> char { crate::m::c::f(); '{' }"),
        file("src/m/c.rs", "pub fn f() {}"),
    ];
    let g = graph(&files);
    assert_eq!(g["src/m/mod.rs"], vec!["src/m/a.rs"]);
    assert_eq!(g["src/m/a.rs"], vec!["src/m/b.rs", "src/m/c.rs"]);
    assert_eq!(g["src/m/b.rs"], vec!["src/m/c.rs"]);
    assert_eq!(find_cycle(&g), None);
    // c.rs using the module's root file closes a loop: mod.rs → a → c → mod.rs.
    let mut looped = files.clone();
    looped[3] = file("src/m/c.rs", "use crate::m::A;\npub fn f() {}");
    let cycle = find_cycle(&graph(&looped)).expect("a cycle");
    assert_eq!(
        cycle,
        vec![
            "src/m/a.rs",
            "src/m/b.rs",
            "src/m/c.rs",
            "src/m/mod.rs",
            "src/m/a.rs"
        ]
    );
}
