//! The README a new user reads first: it opens with the two set-up commands (serve the
//! demo app, run the tests), names the files it links to, and stays readable.

use std::path::Path;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
}

#[test]
fn readme_opens_with_the_two_commands() {
    let r = readme();
    assert!(
        r.starts_with("# forklift\n"),
        "README must start with its title"
    );
    let blocks: Vec<&str> = r.split("```sh\n").skip(1).take(2).collect();
    assert_eq!(blocks.len(), 2);
    assert!(
        blocks[0].starts_with("cargo run --release -- serve"),
        "{}",
        blocks[0]
    );
    assert!(blocks[1].starts_with("scripts/test\n"), "{}", blocks[1]);
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/test")
        .exists());
}

#[test]
fn readme_is_plain_and_its_links_exist() {
    let r = readme();
    // A README is read by people: a runaway edit (one once made it 9.9 MB) fails here.
    assert!(r.len() < 64 * 1024, "README.md is {} bytes", r.len());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for part in r.split("](").skip(1) {
        let target = part.split(')').next().unwrap_or("");
        if target.starts_with("http") || target.starts_with('#') || target.is_empty() {
            continue;
        }
        assert!(
            root.join(target).exists(),
            "README links to missing {target}"
        );
    }
}
