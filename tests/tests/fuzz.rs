//! Every fuzz target of `e2e::fuzz` for a fixed number of cases (`FUZZ_CASES`, 512 by default):
//! a finding fails the test with the shrunk input. `scripts/bench.sh` runs them for longer.

use e2e::fuzz::{targets, Budget};

fn run(name: &str) {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let target = targets().into_iter().find(|t| t.name == name).expect("target");
    let report = (target.run)(Budget::Cases(cases));
    assert!(report.executions >= u64::from(cases), "{report:?}");
    assert!(report.findings.is_empty(), "{name}: {:#?}", report.findings);
}

#[test]
fn oci_state_parser_takes_any_bytes() {
    run("oci_state");
}

#[test]
fn hook_message_parser_and_checks_take_any_bytes() {
    run("hook_message");
}

#[test]
fn filter_validator_accepts_the_grammar_and_nothing_outside_it() {
    run("filter");
}

#[test]
fn trace_argument_plans_name_only_what_the_kernel_offers() {
    run("trace_arguments");
}

#[test]
fn glob_agrees_with_the_reference_matcher() {
    run("glob");
}

#[test]
fn ring_page_parser_stays_inside_the_page() {
    run("ring_page");
}

#[test]
fn event_formats_and_payloads_decode_without_panicking() {
    run("event_format");
}

#[test]
fn pod_annotations_are_read_the_same_way_twice_and_never_panic() {
    run("annotations");
}

#[test]
fn label_selectors_parse_and_match_as_kubernetes_does() {
    run("label_selector");
}

#[test]
fn every_target_is_run_by_a_test() {
    let names: Vec<&str> = targets().iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "oci_state",
            "hook_message",
            "filter",
            "trace_arguments",
            "glob",
            "ring_page",
            "event_format",
            "annotations",
            "label_selector"
        ],
        "a new target needs its test above"
    );
}
