//! The command line: `check` on broken and valid files, `schema`, `--help`, `--version`.

mod common;

use std::path::Path;
use std::process::Command;

use common::binary;

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .env_remove("GATEHOUSE_TEST_SURELY_UNSET_VARIABLE")
        .output()
        .expect("run gatehouse");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Each `tests/check/NAME.yaml` is broken; `NAME.expected` holds the exact lines `check` prints.
#[test]
fn check_reports_every_problem_with_file_line_and_column() {
    let mut cases = 0;
    let mut entries: Vec<_> = std::fs::read_dir("tests/check")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let file = path.to_str().unwrap();
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let (code, stdout, stderr) = run(&["check", "-c", file]);
        assert_eq!(code, 1, "{file} should be rejected; stderr: {stderr}");
        assert_eq!(stdout, expected, "{file}");
        for line in stdout.lines() {
            let mut parts = line.splitn(4, ':');
            assert_eq!(parts.next(), Some(file));
            assert!(
                parts.next().unwrap().parse::<u64>().unwrap() > 0,
                "line number in {line}"
            );
            assert!(
                parts.next().unwrap().parse::<u64>().unwrap() > 0,
                "column number in {line}"
            );
        }
        cases += 1;
    }
    assert!(
        cases >= 8,
        "expected the broken-config corpus, found {cases} files"
    );
}

/// Every file under `examples/` is a valid configuration.
#[test]
fn every_example_passes_check() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (code, stdout, stderr) = run(&["check", "-c", path.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {stdout}{stderr}", path.display());
            assert!(stdout.contains(": ok ("), "{stdout}");
            checked += 1;
        }
    }
    assert!(checked >= 2, "found only {checked} examples");
}

/// `docs/config.schema.json` is what `gatehouse schema` prints.
#[test]
fn published_schema_is_in_sync() {
    let (code, stdout, _) = run(&["schema"]);
    assert_eq!(code, 0);
    let published = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.schema.json"),
    )
    .expect("docs/config.schema.json exists");
    assert_eq!(
        published, stdout,
        "run `gatehouse schema > docs/config.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(schema["properties"]["routes"].is_object());
}

#[test]
fn help_and_version() {
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("gatehouse "), "{stdout}");
    for command in ["gateway", "check", "schema", "demo"] {
        let (code, stdout, _) = run(&[command, "--help"]);
        assert_eq!(code, 0, "{command} --help");
        assert!(stdout.contains("Usage: gatehouse"), "{command}: {stdout}");
    }
}
