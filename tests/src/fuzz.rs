//! Property-based fuzzing of the parsers that take untrusted input: the OCI state a runtime
//! hands the hook, the hook's message to the node, trace filters and trace arguments from REST
//! clients, the session pattern glob, and the ring-buffer pages and event formats read from the
//! kernel. Each target mixes random bytes, mutations of a valid input and inputs generated from
//! the grammar, and checks more than "no panic" where an oracle exists (a reference glob
//! matcher, grammar-valid filters being accepted, plans naming only what the kernel offers).
//!
//! One definition, two drivers: `tests/tests/fuzz.rs` runs every target for a fixed number of
//! cases in the test command, and `tests/benches/fuzz.rs` runs each for a time budget and
//! reports executions and findings.

use std::{
    cell::Cell,
    collections::{BTreeSet, HashSet},
    fmt::Debug,
    time::{Duration, Instant},
};

use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, TestCaseError, TestError, TestRunner},
};

/// How long a target runs.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// This many cases (test command).
    Cases(u32),
    /// Rounds of cases until this much time has passed (bench).
    Time(Duration),
}

/// What running a target found.
#[derive(Debug)]
pub struct Report {
    /// The target.
    pub name: &'static str,
    /// Inputs tried, shrinking included.
    pub executions: u64,
    /// How long it ran.
    pub elapsed: Duration,
    /// Failing inputs (after shrinking) and why they failed.
    pub findings: Vec<String>,
}

/// A fuzz target.
pub struct Target {
    /// Its name.
    pub name: &'static str,
    /// Runs it within a budget.
    pub run: fn(Budget) -> Report,
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target { name: "oci_state", run: oci_state },
        Target { name: "hook_message", run: hook_message },
        Target { name: "filter", run: filter },
        Target { name: "trace_arguments", run: trace_arguments },
        Target { name: "glob", run: glob },
        Target { name: "ring_page", run: ring_page },
        Target { name: "event_format", run: event_format },
        Target { name: "annotations", run: annotations },
        Target { name: "label_selector", run: label_selector },
    ]
}

/// Cases per round under a time budget: a round's failure is shrunk and reported, the next
/// round starts from a new seed.
const ROUND: u32 = 2_000;
/// A target stops after this many findings: more are likely the same bug.
const MAX_FINDINGS: usize = 3;

fn drive<S>(
    name: &'static str,
    strategy: S,
    budget: Budget,
    prop: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Report
where
    S: Strategy,
    S::Value: Debug,
{
    let executions = Cell::new(0u64);
    let started = Instant::now();
    let mut findings = Vec::new();
    loop {
        let cases = match budget {
            Budget::Cases(n) => n,
            Budget::Time(_) => ROUND,
        };
        let config = Config { cases, failure_persistence: None, max_shrink_iters: 512, ..Config::default() };
        let mut runner = TestRunner::new(config);
        let result = runner.run(&strategy, |input| {
            executions.set(executions.get() + 1);
            prop(input)
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => {
                let mut input = format!("{input:?}");
                if input.len() > 400 {
                    let cut = (0..=400).rev().find(|i| input.is_char_boundary(*i)).unwrap_or(0);
                    input.truncate(cut);
                    input.push_str("...");
                }
                findings.push(format!("{why}; minimal input: {input}"));
            }
            Err(TestError::Abort(why)) => findings.push(format!("aborted: {why}")),
        }
        let done = match budget {
            Budget::Cases(_) => true,
            Budget::Time(t) => started.elapsed() >= t || findings.len() >= MAX_FINDINGS,
        };
        if done {
            return Report { name, executions: executions.get(), elapsed: started.elapsed(), findings };
        }
    }
}

/// A few byte edits (overwrite, insert, remove, truncate) of `seed`.
fn mutated(seed: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((any::<Index>(), 0u8..4, any::<u8>()), 1..8).prop_map(move |edits| {
        let mut b = seed.to_vec();
        for (at, op, byte) in edits {
            if b.is_empty() {
                b.push(byte);
                continue;
            }
            let i = at.index(b.len());
            match op {
                0 => b[i] = byte,
                1 => b.insert(i, byte),
                2 => {
                    b.remove(i);
                }
                _ => b.truncate(i),
            }
        }
        b
    })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Strings made of `tokens` and arbitrary text, joined by blanks or nothing.
fn soup(tokens: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![4 => proptest::sample::select(tokens).prop_map(str::to_owned), 1 => any::<String>()];
    (proptest::collection::vec(piece, 0..max), any::<bool>())
        .prop_map(|(v, blank)| v.join(if blank { " " } else { "" }))
}

const OCI_STATE: &[u8] = br#"{"ociVersion":"1.0.2","id":"3f1c0ffee","status":"creating","pid":4242,"bundle":"/run/containers/3f1c0ffee","annotations":{"io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.container-name":"nginx","io.kubernetes.cri.container-type":"container"}}"#;

/// The hook's stdin: whatever parses is a container with a usable id.
fn oci_state(budget: Budget) -> Report {
    let input = prop_oneof![bytes(1024), mutated(OCI_STATE)];
    drive("oci_state", input, budget, |b| {
        if let Ok(state) = runtime_hook::state::parse_state(&b) {
            let id = state.id();
            prop_assert!(!id.is_empty() && id.len() <= 1024, "id length {}", id.len());
            prop_assert!(!id.contains(['/', '\0', '\n']), "id {id:?}");
            let _ = runtime_hook::state::action_for_status(state.status());
        }
        Ok(())
    })
}

const CREATED: &[u8] = br#"{"event":"created","version":1,"id":"3f1c0ffee","pid":4242,"pid_start_time":77,"pod":"web-0","namespace":"shop","name":"nginx","kind":"workload","runtime":"runc","bundle":"/run/b","annotations":{"a":"b"},"created_unix_ns":1}"#;
const STOPPED: &[u8] = br#"{"event":"stopped","version":1,"id":"3f1c0ffee","stopped_unix_ns":2}"#;

/// The hook's message to the node: what the node accepts has printable, bounded ids and names
/// that are safe as file names, and a pid.
fn hook_message(budget: Budget) -> Report {
    let input = prop_oneof![bytes(1024), mutated(CREATED), mutated(STOPPED)];
    drive("hook_message", input, budget, |b| {
        use tracer_api::RegistryEvent;
        let Ok(event) = serde_json::from_slice::<RegistryEvent>(&b) else { return Ok(()) };
        let _ = (event.container_id(), event.kind());
        if let RegistryEvent::Created(rec) = &event {
            if tracer_node::registry::Registry::validate(rec).is_ok() {
                let printable = |s: &str| !s.chars().any(char::is_control);
                prop_assert!(!rec.id.is_empty() && rec.id.len() <= 250 && printable(&rec.id), "id {:?}", rec.id);
                prop_assert!(!rec.id.contains('/') && !rec.id.starts_with('.'), "id {:?}", rec.id);
                prop_assert!(!rec.pod.contains('/') && printable(&rec.pod) && printable(&rec.name), "{rec:?}");
                prop_assert!(rec.pid != 0);
            }
        }
        Ok(())
    })
}

/// Fields the filter targets know.
const FIELDS: &[&str] = &["prev_pid", "prio", "filename"];

/// A filter generated from the grammar: always valid.
fn valid_filter() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        any::<i32>().prop_map(|n| n.to_string()),
        any::<u32>().prop_map(|n| format!("0x{n:x}")),
        "[a-z/._*]{0,12}".prop_map(|s| format!("\"{s}\"")),
    ];
    let op = proptest::sample::select(&["==", "!=", "<", "<=", ">", ">=", "&", "~"][..]);
    let field = proptest::sample::select(FIELDS);
    let cmp = (field, op, value).prop_map(|(f, o, v)| format!("{f} {o} {v}"));
    cmp.prop_recursive(4, 32, 2, |inner| {
        prop_oneof![
            (inner.clone(), proptest::sample::select(&["&&", "||"][..]), inner.clone())
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|e| format!("({e})")),
            inner.prop_map(|e| format!("!{e}")),
        ]
    })
}

const FILTER_TOKENS: &[&str] = &[
    "prev_pid",
    "prio",
    "filename",
    "common_pid",
    "nosuch",
    "==",
    "!=",
    "<",
    ">=",
    "=",
    "&&",
    "||",
    "&",
    "|",
    "!",
    "~",
    "(",
    ")",
    "0",
    "-1",
    "0x1f",
    "0xzz",
    "12ab",
    "\"a\"",
    "'b'",
    "\"",
    "\\",
    "\n",
    ";",
    "$(id)",
    "`id`",
];

/// Filters from REST clients: grammar-valid ones are accepted; whatever is accepted is bounded,
/// holds no control character or backslash, and outside its quoted strings only the grammar's
/// characters (nothing else reaches `events/.../filter`).
fn filter(budget: Budget) -> Report {
    let fields: Vec<HashSet<String>> = vec![FIELDS.iter().map(|f| (*f).to_owned()).collect()];
    let input = prop_oneof![
        valid_filter().prop_map(|f| (f, true)),
        soup(FILTER_TOKENS, 24).prop_map(|f| (f, false)),
        any::<String>().prop_map(|f| (f, false)),
    ];
    drive("filter", input, budget, |(expr, valid)| {
        let result = tracer_spec::filter::validate(&expr, &fields);
        if valid {
            prop_assert!(result.is_ok(), "a grammar-valid filter was refused: {result:?}");
        }
        if result.is_ok() {
            prop_assert!(expr.len() <= tracer_spec::filter::MAX_LEN);
            // Quoted strings may hold any printable text (the kernel takes them as literals);
            // what could end the write or escape a string never gets through.
            prop_assert!(!expr.contains('\\') && !expr.chars().any(char::is_control), "{expr:?}");
            let outside_quotes: String = expr.split(['"', '\'']).step_by(2).collect();
            let grammar = |c: char| c.is_ascii_alphanumeric() || " \t_()&|!=<>~-".contains(c);
            prop_assert!(outside_quotes.chars().all(grammar), "characters outside the grammar: {expr:?}");
        }
        Ok(())
    })
}

const ARG_TOKENS: &[&str] = &[
    "-s",
    "--syscall",
    "-e",
    "--event",
    "-f",
    "--filter",
    "-t",
    "--time",
    "-F",
    "--function",
    "openat",
    "sys_enter_openat",
    "exit_group",
    "nosuchcall",
    "sched:sched_switch",
    "syscalls:sys_enter_openat",
    "nosuch:event",
    "sched:",
    ":x",
    "prev_pid",
    "prio",
    "==",
    "1",
    "&&",
    "500",
    "0",
    "-1",
    "99999999999999999999",
    "do_sys_open",
    "*",
    "a?b",
    "../x",
    "--help",
    "-h",
    "--version",
    "-V",
    "--",
    "=",
    "\n",
];

/// A tracefs with a few events and formats, in a temp dir (removed with it).
fn fake_tracefs() -> (tempfile::TempDir, tracer_node::ftrace::Tracefs) {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write(
        "available_events",
        "syscalls:sys_enter_openat\nsyscalls:sys_exit_openat\nsyscalls:sys_enter_exit_group\nsched:sched_switch\n\
         sched:sched_process_fork\nsched:sched_process_exec\nsched:sched_process_exit\n",
    );
    write(
        "events/sched/sched_switch/format",
        "name: sched_switch\nID: 1\nformat:\n\tfield:pid_t prev_pid;\toffset:8;\tsize:4;\tsigned:1;\n\
         \tfield:int prio;\toffset:12;\tsize:4;\tsigned:1;\n",
    );
    write(
        "events/syscalls/sys_enter_openat/format",
        "name: sys_enter_openat\nID: 2\nformat:\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
         \tfield:const char * filename;\toffset:16;\tsize:8;\tsigned:0;\n",
    );
    let t = tracer_node::ftrace::Tracefs::at(dir.path());
    (dir, t)
}

/// Trace arguments from REST clients: a plan names only events the kernel offers, a filter the
/// validator takes, and function globs of the allowed characters; nothing with a newline.
fn trace_arguments(budget: Budget) -> Report {
    let (_dir, tracefs) = fake_tracefs();
    let available: BTreeSet<String> = tracefs.available_events().expect("available").into_iter().collect();
    let catalog = tracer_node::hooks::Catalog::new(tracefs, Vec::new());
    let hook = prop_oneof![
        proptest::sample::select(&["trace_syscalls", "trace_exec", "trace_events", "trace_functions"][..])
            .prop_map(str::to_owned),
        any::<String>(),
    ];
    let input = (hook, soup(ARG_TOKENS, 12));
    drive("trace_arguments", input, budget, |(hook, args)| {
        let Ok(tracer_node::hooks::Plan::Ftrace(plan)) = catalog.plan(&hook, &args) else { return Ok(()) };
        for e in &plan.events {
            let name = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            prop_assert!(name(&e.system), "system {:?}", e.system);
            if let Some(ev) = &e.event {
                prop_assert!(available.contains(&format!("{}:{ev}", e.system)), "{}:{ev} is not available", e.system);
            }
        }
        if let Some(f) = &plan.filter {
            prop_assert!(!f.chars().any(char::is_control), "filter {f:?}");
        }
        for f in plan.functions.iter().flatten() {
            prop_assert!(f.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.*?".contains(&b)), "function {f:?}");
        }
        if let Some(d) = plan.duration {
            prop_assert!(!d.is_zero());
        }
        Ok(())
    })
}

/// The textbook matcher: `*` any run, `?` any one character.
fn reference_glob(p: &[char], t: &[char]) -> bool {
    let mut dp = vec![vec![false; t.len() + 1]; p.len() + 1];
    dp[0][0] = true;
    for i in 1..=p.len() {
        dp[i][0] = dp[i - 1][0] && p[i - 1] == '*';
        for j in 1..=t.len() {
            dp[i][j] = match p[i - 1] {
                '*' => dp[i - 1][j] || dp[i][j - 1],
                '?' => dp[i - 1][j - 1],
                c => dp[i - 1][j - 1] && c == t[j - 1],
            };
        }
    }
    dp[p.len()][t.len()]
}

/// Session patterns: the matcher agrees with the reference on every input.
fn glob(budget: Budget) -> Report {
    let input = prop_oneof![
        ("[ab*?/-]{0,10}", "[ab*?/-]{0,14}"),
        (any::<String>(), any::<String>()),
        ("[a*]{0,30}", "a{0,40}b?"),
    ];
    drive("glob", input, budget, |(p, t)| {
        let (pc, tc): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
        let want = reference_glob(&pc, &tc);
        prop_assert_eq!(tracer_node::sessions::glob::matches(&p, &t), want, "pattern {:?} text {:?}", p, t);
        Ok(())
    })
}

const HEADER_PAGE: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\
    \tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n\
    \tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n\
    \tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;\n";

/// A page shaped like the kernel's: a timestamp, a commit word (size and loss flags), then
/// event headers whose type lengths favour the special types and small data events.
fn page() -> impl Strategy<Value = Vec<u8>> {
    let word = prop_oneof![
        any::<u32>(),
        (0u32..32, 0u32..(1 << 27)).prop_map(|(ty, delta)| ty | (delta << 5)),
        (28u32..32, any::<u32>()).prop_map(|(ty, r)| ty | (r << 5)),
    ];
    (any::<u64>(), 0u64..4200, 0u64..4, proptest::collection::vec(word, 0..1020), 0usize..4200).prop_map(
        |(ts, size, flags, words, len)| {
            let mut b = Vec::with_capacity(4096);
            b.extend_from_slice(&ts.to_ne_bytes());
            b.extend_from_slice(&(size | (flags << 30)).to_ne_bytes());
            for w in words {
                b.extend_from_slice(&w.to_ne_bytes());
            }
            b.resize(len.max(16), 0);
            b
        },
    )
}

/// Ring-buffer pages: every event found lies inside the page's data.
fn ring_page(budget: Budget) -> Report {
    let header = tracer_node::ftrace::format::parse_header_page(HEADER_PAGE).expect("header_page");
    let input = prop_oneof![bytes(4200), page()];
    drive("ring_page", input, budget, move |buf| {
        let mut out = tracer_node::ftrace::ring::Page::default();
        tracer_node::ftrace::ring::parse_page(&buf, &header, &mut out);
        prop_assert!(out.events.len() <= buf.len() / 4);
        for ev in &out.events {
            prop_assert!(ev.offset >= header.data_offset, "{ev:?}");
            prop_assert!(ev.offset + ev.len <= buf.len().min(header.data_offset + header.data_size), "{ev:?}");
        }
        Ok(())
    })
}

const FORK_FORMAT: &[u8] = b"name: sched_process_fork\nID: 366\nformat:\n\
    \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
    \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
    \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
    \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
    \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
    \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
    \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
    \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n\n\
    print fmt: \"comm=%s pid=%d child_comm=%s child_pid=%d\", __get_str(parent_comm), REC->parent_pid, __get_str(child_comm), REC->child_pid\n";

/// Event formats and payloads: a format that parses decodes any payload without a panic.
fn event_format(budget: Budget) -> Report {
    let input = (prop_oneof![mutated(FORK_FORMAT), bytes(512)], bytes(64));
    drive("event_format", input, budget, |(text, payload)| {
        let text = String::from_utf8_lossy(&text);
        if let Ok(f) = tracer_node::ftrace::format::parse_event_format("sched", &text) {
            let _ = f.decode(&payload);
        }
        Ok(())
    })
}

const ANNOTATION_KEYS: &[&str] = &[
    tracer_spec::annotations::TRACE_HOOK,
    tracer_spec::annotations::TRACE_ARGUMENTS,
    tracer_spec::annotations::TRACE_CONTAINERS,
    tracer_spec::annotations::TRACE_CONTEXT,
    tracer_spec::annotations::SIDECAR,
    tracer_spec::annotations::LABELS,
    tracer_spec::annotations::OWNER,
];

/// A pod's annotations as the webhook and the node read them: what is accepted as an auto-trace
/// wish has a built-in hook, arguments that parse again the same way, and a bounded glob and
/// context; the stamped labels and owner never panic on any text.
fn annotations(budget: Budget) -> Report {
    let value = prop_oneof![
        proptest::sample::select(&["trace_syscalls", "trace_exec", "trace_events", "true", "*", ""][..])
            .prop_map(str::to_owned),
        soup(ARG_TOKENS, 8),
        any::<String>(),
    ];
    let pairs =
        proptest::collection::btree_map(proptest::sample::select(ANNOTATION_KEYS).prop_map(str::to_owned), value, 0..6);
    drive("annotations", pairs, budget, |a| {
        use tracer_spec::annotations as ann;
        if let Ok(Some(w)) = ann::auto_trace(&a) {
            prop_assert_eq!(tracer_spec::args::parse(w.hook, &w.arguments), Ok(w.request.clone()));
            prop_assert!(!w.containers.is_empty() && w.containers.len() <= ann::MAX_PATTERN);
            prop_assert!(w.context.len() <= ann::MAX_CONTEXT);
        }
        let _ = ann::sidecar_requested(&a);
        let _ = ann::stamped_labels(&a);
        if let Some((kind, name)) = ann::stamped_owner(&a) {
            prop_assert!(!kind.is_empty() && !name.is_empty() && !name.contains('/'));
        }
        let _ = ann::workload_attributes(&a);
        Ok(())
    })
}

/// `pod-selector`: whatever parses matches any label set without a panic, and `k=v` selects
/// exactly the sets holding that label.
fn label_selector(budget: Budget) -> Report {
    let text = prop_oneof![
        soup(&["app", "=", "==", "!=", "!", ",", "web", "db", "a.b/c", "-x", " ", "tier"], 10),
        any::<String>(),
    ];
    let labels = proptest::collection::btree_map("[a-z]{1,4}", "[a-z]{0,4}", 0..4);
    drive("label_selector", (text, labels, "[a-z]{1,4}", "[a-z]{1,4}"), budget, |(text, labels, k, v)| {
        use tracer_spec::selector::LabelSelector;
        if let Ok(s) = LabelSelector::parse(&text) {
            let _ = s.matches(&labels);
        }
        let s = LabelSelector::parse(&format!("{k}={v}")).expect("k=v parses");
        prop_assert_eq!(s.matches(&labels), labels.get(&k) == Some(&v));
        Ok(())
    })
}
