//! The `orch` command on the bundled plans and on bad input.

use assert_cmd::Command;

fn orch() -> Command {
    Command::cargo_bin("orch").unwrap()
}

const PLANS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plans");

#[test]
fn validates_the_bundled_plans() {
    let out = orch()
        .args([
            "validate",
            &format!("{PLANS}/production-readiness.toml"),
            &format!("{PLANS}/seven-phase.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("production-readiness.toml: ok — plan \"production-readiness\": 18 tickets, 5 batches, 1 phase, 44h05m of effort, critical path 16h"), "{stdout}");
    assert!(
        stdout
            .contains("seven-phase.toml: ok — plan \"seven-phase\": 1 ticket, 0 batches, 7 phases"),
        "{stdout}"
    );
}

#[test]
fn invalid_plan_exits_1_with_a_located_error() {
    let dir = std::env::temp_dir().join(format!("orch-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("cycle.toml");
    std::fs::write(
        &bad,
        "name = \"c\"\ndefault_role = \"d\"\n[agents.d]\nbackend = { kind = \"command\", argv = [\"x\"] }\n[[phases]]\nname = \"p\"\n\
         [[tickets]]\nid = \"A\"\ntitle = \"a\"\neffort = \"1h\"\ndepends_on = [\"B\"]\n\
         [[tickets]]\nid = \"B\"\ntitle = \"b\"\neffort = \"1h\"\ndepends_on = [\"A\"]\n",
    )
    .unwrap();
    let out = orch()
        .args(["validate", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap().trim(),
        format!("{}: dependency cycle: A -> B -> A", bad.display())
    );
    let unknown = dir.join("unknown.toml");
    std::fs::write(&unknown, "name = \"u\"\ntickets = 3\n").unwrap();
    let out = orch()
        .args(["analyze", unknown.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!(
            "{}:2:11: tickets: invalid type: integer `3`, expected a sequence",
            unknown.display()
        )),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn analyze_formats() {
    let plan = format!("{PLANS}/production-readiness.toml");
    let json = orch()
        .args(["analyze", &plan, "--format", "json"])
        .output()
        .unwrap();
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["critical_path_minutes"], 960);
    assert_eq!(v["batches"]["critical_path_minutes"], 1500);
    let dot = orch()
        .args(["analyze", &plan, "--format", "dot"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8(dot.stdout)
            .unwrap()
            .starts_with("digraph plan {")
    );
    let usage = orch().args(["analyze"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let out = orch().arg("schema").output().unwrap();
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schema/plan.schema.json"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn a_concurrency_of_zero_is_refused_before_anything_runs() {
    let plan = format!("{PLANS}/production-readiness.toml");
    let out = orch()
        .args(["run", &plan, "--concurrency", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("invalid value '0' for '--concurrency <CONCURRENCY>'"),
        "{stderr}"
    );
}
