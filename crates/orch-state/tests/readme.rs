//! The README's embedding snippet is the crate documentation's doc test:
//! every line of it must be a line of that test, so the README shows code
//! that compiles and runs against the published crates.

#[test]
fn the_readme_embedding_snippet_is_the_doc_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../../README.md")).unwrap();
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let after = readme
        .split("Run a plan from your own program")
        .nth(1)
        .expect("the README's embedding section");
    let snippet = after
        .split("```rust\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a rust block after it");
    let doc: Vec<&str> = lib.lines().filter_map(|l| l.strip_prefix("//! ")).collect();
    let lines: Vec<&str> = snippet.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 5, "{snippet}");
    for line in lines {
        assert!(
            doc.contains(&line),
            "README line not in orch-state's doc test: {line:?}"
        );
    }
}
