//! Documents that look written but are not.

use crate::support::*;

/// A file of spaces and tabs is not "non-empty".
#[tokio::test]
async fn a_document_of_whitespace() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "plan.md", " \n\t\n");
    fails(
        d.path(),
        serde_json::json!({"kind": "files", "paths": ["plan.md"], "non_empty": true}),
        "plan.md is empty (only whitespace)",
    )
    .await;
}

/// Required headings quoted inside code fences (``` and ~~~), or written
/// as a `#hashtag`, are not sections.
#[tokio::test]
async fn headings_inside_code_fences() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "ADR.md",
        "# Context\nwords\n```md\n## Decision\n```\n~~~\n## Consequences\n~~~\n#Alternatives\n",
    );
    let r = fails(
        d.path(),
        serde_json::json!({"kind": "files", "paths": ["ADR.md"], "sections": ["Context", "Decision", "Consequences", "Alternatives"]}),
        "ADR.md has no \"Decision\" heading",
    )
    .await;
    assert_eq!(
        r.reason,
        "ADR.md has no \"Decision\" heading; ADR.md has no \"Consequences\" heading; ADR.md has no \"Alternatives\" heading"
    );
}

/// No-break, zero-width and byte-order-mark characters are not content.
#[tokio::test]
async fn a_document_of_invisible_characters() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "plan.md", "\u{feff}\u{a0}\u{200b}\u{b}\n");
    fails(
        d.path(),
        serde_json::json!({"kind": "files", "paths": ["plan.md"], "non_empty": true}),
        "plan.md is empty (only whitespace)",
    )
    .await;
}

/// A fence opened with four backticks is not closed by a three-backtick
/// line with an info string inside it, and a heading indented four spaces
/// is code: neither makes a section.
#[tokio::test]
async fn headings_inside_longer_fences_and_indented_code() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "ADR.md",
        "# Context\nwords\n````md\n```rust\n## Decision\n```\n````\n\n    ## Consequences\n",
    );
    fails(
        d.path(),
        serde_json::json!({"kind": "files", "paths": ["ADR.md"], "sections": ["Context", "Decision", "Consequences"]}),
        "ADR.md has no \"Decision\" heading; ADR.md has no \"Consequences\" heading",
    )
    .await;
}
