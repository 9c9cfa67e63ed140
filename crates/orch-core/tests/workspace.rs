//! The architecture's invariant: sibling crates never depend on each other;
//! they meet only through orch-core. Their tests may use a sibling (the
//! engine's journal is tested against the real stores); examples may use
//! them all.

use std::path::Path;

#[test]
fn siblings_depend_only_on_orch_core() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = dir.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let name = doc["package"]["name"].as_str().unwrap().to_owned();
        checked += 1;
        for section in ["dependencies", "build-dependencies"] {
            let Some(deps) = doc.get(section).and_then(|d| d.as_table()) else {
                continue;
            };
            for dep in deps.keys() {
                assert!(
                    !dep.starts_with("orch-") || dep == "orch-core" && name != "orch-core",
                    "{name} depends on sibling crate {dep} in [{section}] of {}; siblings meet only through orch-core",
                    manifest.display()
                );
            }
        }
    }
    assert_eq!(checked, 5, "expected the five library crates under crates/");
}
