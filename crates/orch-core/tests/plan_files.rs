//! Plan files: the bundled plans load, every bad input is located exactly.

use std::path::{Path, PathBuf};

use orch_core::{Format, Plan, PlanError, PlanErrorKind, Priority};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const BASE: &str = r#"name = "p"
default_role = "dev"
[agents.dev]
backend = { kind = "command", argv = ["agent"] }
[[phases]]
name = "implement"
"#;

/// Loads `BASE` + `tail` as TOML and returns the single diagnostic as
/// `(kind, line, column, rendered)`.
fn toml_err(tail: &str) -> (PlanErrorKind, Option<usize>, Option<usize>, String) {
    let src = format!("{BASE}{tail}");
    let err = Plan::from_bytes(src.as_bytes(), Format::Toml, Some(Path::new("plan.toml")))
        .expect_err("plan should be rejected");
    assert_eq!(err.diagnostics.len(), 1, "{err}");
    let d = &err.diagnostics[0];
    (d.kind, d.line, d.column, err.to_string())
}

#[test]
fn production_readiness_plan_is_scenario_one() {
    let plan = Plan::from_path(workspace().join("examples/plans/production-readiness.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.tickets.len(), 18);
    assert_eq!(plan.batches.len(), 5);
    let t = |id: &str| plan.ticket(id).unwrap();
    assert_eq!(t("INFRA-003").effort.minutes(), 5);
    assert_eq!(t("SEC-003").effort.minutes(), 180);
    assert_eq!(t("INFRA-001").effort.minutes(), 360);
    assert_eq!(t("QA-002").effort.minutes(), 480);
    assert_eq!(t("SEC-006").priority, Priority::P3);
    assert_eq!(t("INFRA-009").priority, Priority::P2);
    assert_eq!(t("INFRA-005").depends_on, ["INFRA-002".parse().unwrap()]);
    assert_eq!(t("QA-002").depends_on.len(), 17);
    // 30+5+60+30+180+30+30+360+240+120+120+60+180+240+120+240+120+480 minutes.
    assert_eq!(plan.total_effort_minutes(), 2645);
    let batch_sizes: Vec<usize> = plan.batches.iter().map(|b| b.tickets.len()).collect();
    assert_eq!(batch_sizes, [6, 1, 4, 4, 3]);
    assert_eq!(plan.batch_of().len(), 18, "every ticket is in a batch");
    assert_eq!(plan.policy.max_attempts, 3);
    assert_eq!(plan.batch_gates.len(), 4);
}

#[test]
fn seven_phase_plan_has_the_pipeline() {
    let plan = Plan::from_path(workspace().join("examples/plans/seven-phase.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = plan.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "planning",
            "test-definition",
            "scaffolding",
            "implementation",
            "security",
            "telemetry",
            "documentation"
        ]
    );
    let implementation = &plan.phases[3];
    assert_eq!(
        implementation.on_exhausted,
        orch_core::ExhaustAction::Restart
    );
    assert_eq!(
        implementation.restart_from.as_ref().unwrap().as_str(),
        "planning"
    );
    assert_eq!(plan.policy.max_attempts, 2);
}

#[test]
fn same_plan_in_yaml_and_json() {
    let toml_plan =
        Plan::from_path(workspace().join("examples/plans/production-readiness.toml")).unwrap();
    let json = serde_json::to_string_pretty(&toml_plan).unwrap();
    let from_json = Plan::from_bytes(json.as_bytes(), Format::Json, None).unwrap();
    assert_eq!(from_json, toml_plan);
    // JSON is YAML 1.2, so the YAML loader reads it too.
    let from_yaml = Plan::from_bytes(json.as_bytes(), Format::Yaml, None).unwrap();
    assert_eq!(from_yaml, toml_plan);
}

#[test]
fn unknown_key() {
    let (kind, line, col, msg) =
        toml_err("[[tickets]]\nid = \"T-1\"\ntitle = \"x\"\neffort = \"1h\"\npriorty = \"P1\"\n");
    assert_eq!(kind, PlanErrorKind::Schema);
    assert_eq!((line, col), (Some(11), Some(1)));
    assert_eq!(
        msg,
        "plan.toml:11:1: tickets[0].priorty: unknown field `priorty`, expected one of `id`, `title`, `description`, `acceptance_criteria`, `priority`, `effort`, `depends_on`, `labels`, `role`, `batch` (in ticket \"T-1\")"
    );
}

#[test]
fn wrong_type() {
    let (kind, line, col, msg) =
        toml_err("[[tickets]]\nid = \"T-1\"\ntitle = 7\neffort = \"1h\"\n");
    assert_eq!(kind, PlanErrorKind::Schema);
    assert_eq!((line, col), (Some(9), Some(9)));
    assert_eq!(
        msg,
        "plan.toml:9:9: tickets[0].title: invalid type: integer `7`, expected a string (in ticket \"T-1\")"
    );
}

#[test]
fn invalid_ticket_id_names_the_rule() {
    for (id, rule) in [
        (
            "a/b",
            "contains '/'; only ASCII letters, digits, '.', '_' and '-' are allowed",
        ),
        ("-x", "must not start with '.' or '-'"),
        ("a..b", "must not contain '..'"),
        ("", "must not be empty"),
    ] {
        let (kind, line, col, msg) = toml_err(&format!(
            "[[tickets]]\nid = \"{id}\"\ntitle = \"x\"\neffort = \"1h\"\n"
        ));
        assert_eq!(kind, PlanErrorKind::Schema);
        assert_eq!((line, col), (Some(8), Some(6)), "{msg}");
        assert_eq!(
            msg,
            format!("plan.toml:8:6: tickets[0].id: invalid ticket id \"{id}\": {rule}")
        );
    }
}

#[test]
fn duplicate_ticket_id() {
    let (kind, line, col, msg) = toml_err(
        "[[tickets]]\nid = \"T-1\"\ntitle = \"a\"\neffort = \"1h\"\n[[tickets]]\nid = \"T-1\"\ntitle = \"b\"\neffort = \"1h\"\n",
    );
    assert_eq!(kind, PlanErrorKind::Invalid);
    assert_eq!((line, col), (Some(12), Some(6)));
    assert_eq!(
        msg,
        "plan.toml:12:6: tickets[1].id: duplicate ticket id \"T-1\" (first defined at tickets[0])"
    );
}

#[test]
fn dependency_on_unknown_ticket() {
    let (kind, line, col, msg) = toml_err(
        "[[tickets]]\nid = \"T-1\"\ntitle = \"a\"\neffort = \"1h\"\ndepends_on = [\"T-0\", \"T-9\"]\n[[tickets]]\nid = \"T-0\"\ntitle = \"b\"\neffort = \"1h\"\n",
    );
    assert_eq!(kind, PlanErrorKind::Invalid);
    assert_eq!((line, col), (Some(11), Some(22)));
    assert_eq!(
        msg,
        "plan.toml:11:22: tickets[0].depends_on[1]: ticket \"T-1\" depends on unknown ticket \"T-9\""
    );
}

#[test]
fn ticket_in_unknown_batch() {
    let (kind, line, col, msg) = toml_err(
        "[[batches]]\nid = \"PR1\"\ntitle = \"one\"\n[[tickets]]\nid = \"T-1\"\ntitle = \"a\"\neffort = \"1h\"\nbatch = \"PR9\"\n",
    );
    assert_eq!(kind, PlanErrorKind::Invalid);
    assert_eq!((line, col), (Some(14), Some(9)));
    assert_eq!(
        msg,
        "plan.toml:14:9: tickets[0].batch: ticket \"T-1\" is in unknown batch \"PR9\"; known batches: PR1"
    );
}

#[test]
fn phase_naming_unknown_role() {
    let src = format!(
        "{BASE}[[phases]]\nname = \"review\"\nrole = \"reviewer\"\n[[tickets]]\nid = \"T-1\"\ntitle = \"a\"\neffort = \"1h\"\n"
    );
    let err =
        Plan::from_bytes(src.as_bytes(), Format::Toml, Some(Path::new("plan.toml"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "plan.toml:9:8: phases[1].role: phase \"review\" names unknown role \"reviewer\"; known roles: dev"
    );
}

#[test]
fn empty_plan() {
    let err = Plan::from_bytes(
        b"name = \"empty\"\n",
        Format::Toml,
        Some(Path::new("e.toml")),
    )
    .unwrap_err();
    assert_eq!(err.kind(), PlanErrorKind::Invalid);
    assert_eq!(
        err.to_string(),
        "e.toml: tickets: the plan has no tickets; add at least one [[tickets]]\n\
         e.toml: phases: the plan has no phases; add at least one [[phases]]"
    );
}

#[test]
fn syntax_errors_are_located() {
    let err = Plan::from_bytes(b"name = \"x\"\n[[tickets]\n", Format::Toml, None).unwrap_err();
    assert_eq!(err.kind(), PlanErrorKind::Syntax);
    assert_eq!(err.diagnostics[0].line, Some(2));

    let err =
        Plan::from_bytes(b"{\"name\": \"x\",\n \"tickets\": [}", Format::Json, None).unwrap_err();
    assert_eq!(err.kind(), PlanErrorKind::Syntax);
    assert_eq!(
        (err.diagnostics[0].line, err.diagnostics[0].column),
        (Some(2), Some(14))
    );

    let err = Plan::from_bytes(b"name: x\ntickets: [\n", Format::Yaml, None).unwrap_err();
    assert_eq!(err.kind(), PlanErrorKind::Syntax);
    assert!(err.diagnostics[0].line.is_some(), "{err}");

    let err = Plan::from_bytes(b"name = \"\xff\"\n", Format::Toml, None).unwrap_err();
    assert_eq!(err.kind(), PlanErrorKind::Syntax);
    assert_eq!(err.to_string(), "<plan>:1: not valid UTF-8 (byte 8)");
}

#[test]
fn yaml_and_json_errors_are_located() {
    let yaml = "name: p\ndefault_role: dev\nagents:\n  dev:\n    backend: {kind: command, argv: [a]}\nphases:\n  - name: implement\ntickets:\n  - id: T-1\n    title: a\n    effort: 1h\n    depends_on: [T-7]\n";
    let err =
        Plan::from_bytes(yaml.as_bytes(), Format::Yaml, Some(Path::new("p.yaml"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "p.yaml:12:18: tickets[0].depends_on[0]: ticket \"T-1\" depends on unknown ticket \"T-7\""
    );
    let yaml_bad_key = yaml.replace("    title: a", "    titel: a");
    let err = Plan::from_bytes(yaml_bad_key.as_bytes(), Format::Yaml, None).unwrap_err();
    assert_eq!(err.kind(), PlanErrorKind::Schema);
    assert_eq!(err.diagnostics[0].line, Some(10), "{err}");
    assert!(err.to_string().contains("unknown field `titel`"), "{err}");

    let json = r#"{"name": "p", "default_role": "dev",
 "agents": {"dev": {"backend": {"kind": "command", "argv": ["a"]}}},
 "phases": [{"name": "implement"}],
 "tickets": [{"id": "T-1", "title": "a", "effort": "1h", "batch": "B"}]}"#;
    let err =
        Plan::from_bytes(json.as_bytes(), Format::Json, Some(Path::new("p.json"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "p.json:4:67: tickets[0].batch: ticket \"T-1\" is in unknown batch \"B\"; no [[batches]] are defined"
    );
}

#[test]
fn oversized_and_unknown_format_files_are_refused() {
    let dir = std::env::temp_dir().join(format!("orch-core-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.toml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(orch_core::MAX_PLAN_BYTES + 1).unwrap();
    let err = Plan::from_path(&big).unwrap_err();
    assert_eq!(err.kind(), PlanErrorKind::TooLarge);
    assert!(
        err.to_string().starts_with(&format!(
            "{}: plan is more than 16777216 bytes",
            big.display()
        )),
        "{err}"
    );
    // Devices say they are empty: the limit holds while reading, so an
    // endless one is refused at 16 MiB instead of read until memory runs
    // out (or for ever).
    for dev in ["/dev/zero", "/dev/urandom"] {
        let link = dir.join(format!("{}.json", dev.trim_start_matches("/dev/")));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(dev, &link).unwrap();
        let err = Plan::from_path(&link).unwrap_err();
        assert_eq!(err.kind(), PlanErrorKind::TooLarge, "{dev}: {err}");
    }

    let err = Plan::from_path(dir.join("plan.ini")).unwrap_err();
    assert_eq!(err.kind(), PlanErrorKind::UnknownFormat);
    let err = Plan::from_path(dir.join("missing.toml")).unwrap_err();
    assert_eq!(err.kind(), PlanErrorKind::Io);
    assert!(
        err.to_string().contains("missing.toml: cannot read"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn several_problems_are_all_reported() {
    let src = format!(
        "{BASE}[[tickets]]\nid = \"A\"\ntitle = \"a\"\neffort = \"1h\"\ndepends_on = [\"A\", \"Z\"]\nrole = \"ghost\"\n"
    );
    let err: PlanError = Plan::from_bytes(src.as_bytes(), Format::Toml, None).unwrap_err();
    let paths: Vec<_> = err
        .diagnostics
        .iter()
        .map(|d| d.path.clone().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "tickets[0].role",
            "tickets[0].depends_on[0]",
            "tickets[0].depends_on[1]"
        ]
    );
}

#[test]
fn committed_schema_is_current() {
    let path = workspace().join("schema/plan.schema.json");
    let fresh = orch_core::plan::json_schema();
    if std::env::var_os("ORCH_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "schema/plan.schema.json is stale; regenerate it with `ORCH_BLESS=1 cargo test -p orch-core --test plan_files committed_schema_is_current`"
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic, in any format.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for f in [Format::Toml, Format::Yaml, Format::Json] {
                let _ = Plan::from_bytes(&bytes, f, None);
            }
        }

        /// Mutations of a valid plan never panic and, when rejected, say where.
        #[test]
        fn mutated_plans_never_panic(pos in 0usize..400, len in 0usize..20, insert in "[\\[\\]{}=\":,a-z0-9 \n-]{0,12}") {
            let plan = std::fs::read_to_string(workspace().join("examples/plans/production-readiness.toml")).unwrap();
            let start = plan.char_indices().map(|(i, _)| i).nth(pos).unwrap_or(0);
            let end = plan[start..].char_indices().map(|(i, _)| start + i).nth(len).unwrap_or(plan.len());
            let mutated = format!("{}{}{}", &plan[..start], insert, &plan[end..]);
            for f in [Format::Toml, Format::Yaml, Format::Json] {
                if let Err(e) = Plan::from_bytes(mutated.as_bytes(), f, None) {
                    prop_assert!(!e.diagnostics.is_empty());
                    prop_assert!(!e.diagnostics[0].message.is_empty());
                }
            }
        }
    }
}

/// The fingerprint is recorded in every journal: if its value for the same
/// plan ever changed, resuming any run started by an earlier version would
/// be refused as "the plan changed". Values recorded by the first version.
#[test]
fn fingerprints_of_an_unchanged_plan_never_change() {
    let plan = Plan::from_path(workspace().join("examples/plans/production-readiness.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (total, parts) = plan.fingerprint();
    assert_eq!(total, "27ec8223a409badd");
    assert_eq!(parts.len(), 32);
    assert_eq!(parts["policy"], "fbf0f4571858e75a");
    assert_eq!(parts["ticket:SEC-006"], "a04bd942c59cc8ab");
}

/// A JSON (or TOML, YAML) plan that starts with a byte order mark, as some
/// editors write them, loads like one without.
#[test]
fn a_byte_order_mark_is_not_content() {
    let json = r#"{"name": "p", "phases": [{"name": "work"}], "default_role": "dev",
                   "agents": {"dev": {"backend": {"kind": "command", "argv": ["a"]}}},
                   "tickets": [{"id": "T-1", "title": "t", "effort": "1h"}]}"#;
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(json.as_bytes());
    let plan = Plan::from_bytes(&with_bom, orch_core::Format::Json, None).unwrap();
    assert_eq!(plan.tickets.len(), 1);
    let toml = "\u{feff}name = \"p\"\ndefault_role = \"dev\"\n[agents.dev]\nbackend = { kind = \"command\", argv = [\"a\"] }\n[[phases]]\nname = \"work\"\n[[tickets]]\nid = \"T-1\"\ntitle = \"t\"\neffort = \"1h\"\n";
    assert_eq!(Plan::from_toml_str(toml).unwrap().name, "p");
}

/// Frozen paths are checked like every path a plan names.
#[test]
fn frozen_paths_must_stay_in_the_work_tree() {
    let toml = "name = \"p\"\ndefault_role = \"dev\"\n[agents.dev]\nbackend = { kind = \"command\", argv = [\"a\"] }\n[[phases]]\nname = \"tests\"\nfreeze = [\"tests/**\", \"../outside\", \"/etc/x\", \"Cargo.toml#test\", \"*.toml#x\", \"main.rs#x\", \"pytest.ini#\"]\n[[tickets]]\nid = \"T-1\"\ntitle = \"t\"\neffort = \"1h\"\n";
    let err = Plan::from_toml_str(toml).unwrap_err().to_string();
    assert!(
        err.contains("phases[0].freeze[1]: path \"../outside\" leaves the work tree"),
        "{err}"
    );
    assert!(
        err.contains("phases[0].freeze[2]: path \"/etc/x\" must be relative"),
        "{err}"
    );
    assert!(!err.contains("freeze[0]"), "{err}");
    assert!(!err.contains("freeze[3]"), "{err}");
    assert!(!err.contains("phases[0].freeze: needs checkpoint"), "{err}");
    let no_checkpoint = toml.replace("freeze = [", "checkpoint = false\nfreeze = [");
    let err = Plan::from_toml_str(&no_checkpoint).unwrap_err().to_string();
    assert!(
        err.contains("phases[0].freeze: needs checkpoint = true"),
        "a freeze nothing could check: {err}"
    );
    for k in 4..=6 {
        assert!(
            err.contains(&format!("phases[0].freeze[{k}]: "))
                && err.contains("`file#key` needs one .toml, .ini or .cfg file"),
            "{k}: {err}"
        );
    }
}

/// The secrets a plan makes known: the value of the variable an HTTP
/// backend reads its key from (whatever its name), URL passwords, and
/// secret-named `env` values of agents and gates (nested ones too).
#[test]
fn a_plan_names_its_secrets_for_the_redactor() {
    let plan = Plan::from_toml_str(
        r#"
name = "p"
default_role = "dev"
[agents.dev]
backend = { kind = "command", argv = ["a"], env = { SERVICE_TOKEN = "agent-token-123", MODE = "fast" } }
[agents.llm]
backend = { kind = "openai_compatible", model = "m", base_url = "http://u:url-pw-456@127.0.0.1:1/v1", api_key_env = "PATH" }
[[phases]]
name = "impl"
gates = [{ kind = "all", gates = [{ kind = "command", argv = ["t"], env = { DB_PASSWORD = "gate-pw-789" } }] }]
[[tickets]]
id = "T-1"
title = "t"
effort = "1h"
"#,
    )
    .unwrap();
    let known = plan.known_secrets();
    let path = std::env::var("PATH").unwrap();
    for v in [
        "agent-token-123",
        "url-pw-456",
        "gate-pw-789",
        path.as_str(),
    ] {
        assert!(known.iter().any(|k| k == v), "{v} not in {known:?}");
    }
    assert!(!known.iter().any(|k| k == "fast"), "{known:?}");
}

#[test]
fn a_command_backends_usage_spec_is_checked_and_located() {
    let src = BASE.replace(
        r#"backend = { kind = "command", argv = ["agent"] }"#,
        r#"backend = { kind = "command", argv = ["agent"], usage = { input_tokens = "usage.in" } }"#,
    ) + "[[tickets]]\nid = \"A\"\ntitle = \"a\"\neffort = \"1h\"\n";
    let err = Plan::from_bytes(src.as_bytes(), Format::Toml, None).unwrap_err();
    let d = &err.diagnostics[0];
    assert_eq!(d.path.as_deref(), Some("agents.dev.backend.usage"));
    assert!(d.message.contains("starts with '/'"), "{}", d.message);
    assert_eq!(d.line, Some(4), "{err}");
}
