//! Keys put where a scanner that reads less than git commits would not
//! look.

use crate::support::*;

const KEY: &str = "AKIAABCDEFGHIJKLMNOP";

/// A git repository with `.gitignore` ignoring `build/`, the scan gate.
fn repo() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    git(d.path(), &["init", "-q"]);
    write(d.path(), ".gitignore", "build/\nforced.txt\n");
    write(d.path(), "build/out.txt", format!("k = {KEY}\n")); // ignored: never committed
    d
}

async fn scan_finds(d: &tempfile::TempDir, file: &str) {
    let r = fails(
        d.path(),
        serde_json::json!({"kind": "forbidden_patterns", "builtin": ["secrets"]}),
        &format!("{file}:1 (AWS access key id)"),
    )
    .await;
    let files: Vec<&str> = r.evidence.hits.iter().map(|h| h.file.as_str()).collect();
    assert_eq!(
        files,
        [file],
        "only {file}; build/ is ignored by git: {}",
        r.reason
    );
}

/// A `.ignore` file (read by ripgrep-style walkers, not by git) hides the
/// key from a scanner but not from the commit.
#[tokio::test]
async fn a_key_hidden_by_an_ignore_file() {
    let d = repo();
    write(d.path(), ".ignore", "hidden.txt\n");
    write(d.path(), "hidden.txt", format!("k = {KEY}\n"));
    scan_finds(&d, "hidden.txt").await;
}

/// The same with `.rgignore`.
#[tokio::test]
async fn a_key_hidden_by_an_rgignore_file() {
    let d = repo();
    write(d.path(), ".rgignore", "hidden.txt\n");
    write(d.path(), "hidden.txt", format!("k = {KEY}\n"));
    scan_finds(&d, "hidden.txt").await;
}

/// A file `.gitignore` names, force-added: git commits it.
#[tokio::test]
async fn a_key_in_a_force_added_ignored_file() {
    let d = repo();
    write(d.path(), "forced.txt", format!("k = {KEY}\n"));
    git(d.path(), &["add", "-f", "forced.txt"]);
    scan_finds(&d, "forced.txt").await;
}

/// A global excludes file (outside the repository) hides nothing.
#[tokio::test]
async fn a_key_hidden_by_a_global_excludes_file() {
    let d = repo();
    let global = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(global.path(), "hidden.txt\n").unwrap();
    git(
        d.path(),
        &[
            "config",
            "core.excludesFile",
            &global.path().to_string_lossy(),
        ],
    );
    write(d.path(), "hidden.txt", format!("k = {KEY}\n"));
    scan_finds(&d, "hidden.txt").await;
}

/// The key written as UTF-16 text.
#[tokio::test]
async fn a_key_in_utf16() {
    let d = repo();
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(
            format!("k = {KEY}\n")
                .encode_utf16()
                .flat_map(u16::to_le_bytes),
        )
        .collect();
    write(d.path(), "notes.txt", utf16);
    scan_finds(&d, "notes.txt").await;
}

/// The key inside a binary file (NUL bytes around it).
#[tokio::test]
async fn a_key_in_a_binary_file() {
    let d = repo();
    let mut bytes = vec![0u8, 1, 2, 0, 255, 0];
    bytes.extend_from_slice(KEY.as_bytes());
    bytes.extend_from_slice(&[0, 0, 7]);
    write(d.path(), "blob.bin", bytes);
    scan_finds(&d, "blob.bin").await;
}

/// A file too large to scan is a failure, not a skip.
#[tokio::test]
async fn a_file_too_large_to_scan() {
    let d = repo();
    std::fs::File::create(d.path().join("huge.bin"))
        .unwrap()
        .set_len(orch_gates::MAX_FILE_BYTES + 1)
        .unwrap();
    fails(
        d.path(),
        serde_json::json!({"kind": "forbidden_patterns", "builtin": ["secrets"]}),
        "could not be scanned: huge.bin is larger than",
    )
    .await;
}
