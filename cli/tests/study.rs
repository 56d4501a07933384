//! `bt86 study`: its outputs and its exit status for bad input.

use std::process::Command;

fn bt86() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bt86"))
}

#[test]
fn json_lists_rows_and_html_is_written() {
    let page = std::env::temp_dir().join(format!("bt86-study-{}.html", std::process::id()));
    let out = bt86().args(["study", "--format", "json", "--html"]).arg(&page).output().expect("run bt86");
    let html = std::fs::read_to_string(&page);
    let _ = std::fs::remove_file(&page);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let rows = v.as_array().expect("an array");
    let popf = rows.iter().find(|r| r["instruction"] == "popf").expect("a popf row");
    assert_eq!(popf["engines"]["deprivileged"]["outcome"], "wrong");
    assert_eq!(popf["engines"]["bt"]["outcome"], "correct");
    assert!(html.expect("the page").contains("<svg"));
}

#[test]
fn the_table_is_the_default() {
    let out = bt86().arg("study").output().expect("run bt86");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("deprivileged") && text.lines().any(|l| l.starts_with("sgdt")), "{text}");
}

#[test]
fn unwritable_html_path_is_bad_input() {
    let out = bt86().args(["study", "--html", "/nonexistent/dir/study.html"]).output().expect("run bt86");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write the HTML page") && err.contains("/nonexistent/dir/study.html"), "{err}");
    assert!(out.stdout.is_empty(), "nothing runs before the path is checked");
}

#[test]
fn unknown_format_is_bad_input() {
    let out = bt86().args(["study", "--format", "yaml"]).output().expect("run bt86");
    assert_eq!(out.status.code(), Some(2));
}
