//! The user-space filter against the kernel's: the same system calls recorded by two ftrace
//! instances, one unfiltered and one with the filter written to the kernel, for many filters.
//! The records the kernel let through must be exactly those the compiled predicate takes from
//! the unfiltered ones (compared by payload, which both instances record alike). Needs root and
//! tracefs; under `CI` their absence fails the test.

use std::{collections::BTreeMap, io::Read, path::Path};

use tracer_node::{
    ftrace::predicate::Predicate,
    ftrace::{
        format::EventFormat,
        pipes::Pipes,
        ring::{parse_page, Page},
        Instance, Tracefs,
    },
};

fn tracefs() -> Option<Tracefs> {
    let root = rustix::process::geteuid().is_root();
    match Tracefs::find_or_mount(Path::new("/sys")) {
        Ok(t) if root => Some(t.with_prefix(&format!("ct-test-filters-{}-", std::process::id()))),
        other => {
            assert!(std::env::var_os("CI").is_none(), "CI is set: this test needs root and tracefs ({other:?})");
            eprintln!("SKIPPED: needs root and tracefs");
            None
        }
    }
}

/// System calls with varied arguments and results from this thread: reads of several sizes
/// from several files, reads that fail (a directory: -EISDIR; an empty non-blocking pipe:
/// -EAGAIN), reads at end of file.
fn workload() {
    let mut zero = std::fs::File::open("/dev/zero").expect("/dev/zero");
    let mut null = std::fs::File::open("/dev/null").expect("/dev/null");
    let mut dir = std::fs::File::open("/").expect("/");
    let (reader, _writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).expect("pipe");
    let mut pipe = std::fs::File::from(reader);
    let mut buf = vec![0u8; 70_000];
    for i in 0..40usize {
        let n = [1, 7, 8, 255, 256, 4096, 65_535, 65_536, 69_999][i % 9];
        let _ = zero.read(&mut buf[..n]);
        let _ = null.read(&mut buf[..n]);
        let _ = dir.read(&mut buf[..n]);
        let _ = pipe.read(&mut buf[..n]);
    }
}

/// Payloads of each event id recorded by `pipes`, with the CPU that recorded them.
fn records(pipes: &mut Pipes, header: &tracer_node::ftrace::format::PageHeader) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut page = Page::default();
    pipes
        .drain(|buf| {
            parse_page(buf, header, &mut page);
            assert!(!page.missed, "the test's own buffers overflowed");
            for ev in &page.events {
                let p = &buf[ev.offset..ev.offset + ev.len];
                out.push((u16::from_ne_bytes([p[0], p[1]]), p.to_vec()));
            }
        })
        .expect("read the pipes");
    out
}

/// What identifies a record across the two instances: its type, thread and fields. Not the
/// padding between fields (whatever the ring buffer held before: it differs) nor the flags
/// (taken at each instance's write: a reschedule can be asked for in between).
fn key(format: &EventFormat, payload: &[u8]) -> Vec<u8> {
    let mut k = payload[0..2].to_vec();
    k.extend_from_slice(&payload[4..8]);
    for f in &format.fields {
        k.extend_from_slice(&payload[f.offset..f.offset + f.size]);
    }
    k
}

fn counted<'a>(format: &EventFormat, records: impl IntoIterator<Item = &'a [u8]>) -> BTreeMap<Vec<u8>, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(key(format, r)).or_default() += 1;
    }
    m
}

#[test]
fn compiled_filters_take_exactly_the_records_the_kernel_lets_through() {
    let Some(fs) = tracefs() else { return };
    let header = fs.page_header().expect("header_page");
    let enter = fs.event_format("syscalls", "sys_enter_read").expect("sys_enter_read");
    let exit = fs.event_format("syscalls", "sys_exit_read").expect("sys_exit_read");
    let cpu = pin();
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    let open = |suffix: &str| {
        let i = Instance::create(&fs, suffix).expect("instance");
        i.set_buffer_size_kb(1024).expect("buffer");
        i.set_option("event-fork", false).expect("option");
        i.enable_event("syscalls", Some("sys_enter_read")).expect("enable");
        i.enable_event("syscalls", Some("sys_exit_read")).expect("enable");
        i.add_pids(&[tid], false).expect("pid filter");
        i
    };
    let (all, filtered) = (open("all"), open("filtered"));
    let page_size = all.subbuf_size().unwrap_or(header.data_offset + header.data_size);
    let (mut all_pipes, mut filtered_pipes) =
        (Pipes::open(&all, page_size).expect("pipes"), Pipes::open(&filtered, page_size).expect("pipes"));
    let me = tid;
    // (event, filter): every operator, both signednesses, widths 1, 4 and 8, CPU, common
    // fields, octal and hex, precedence and negation, values cut to the field's width.
    let cases: Vec<(&EventFormat, String)> = vec![
        (&enter, "count == 256".into()),
        (&enter, "count != 256".into()),
        (&enter, "count < 0x100".into()),
        (&enter, "count <= 0400".into()),
        (&enter, "count > 65535 || count < 8".into()),
        (&enter, "count >= 65536 && count <= 69999".into()),
        (&enter, "count & 0x10000".into()),
        (&enter, "count & 1 && !(count & 2)".into()),
        (&enter, "fd == 3 || fd > 4 && count > 100".into()),
        (&enter, "(fd == 3 || fd > 4) && count > 100".into()),
        (&enter, "!fd > 4 || count < 300".into()),
        (&enter, "count == 0x8000000000000000 || count == 0xffffffffffffffff || count == 1".into()),
        (&enter, "__syscall_nr < -1 || __syscall_nr >= 0 && count < 0x101".into()),
        (&enter, "fd < 4294967300 && count < 9".into()),
        // Cut to the field's width: 4294967296 is 0 as an int, 256 is 0 as a byte.
        (&enter, "__syscall_nr == 4294967296 && count == 7".into()),
        (&enter, "__syscall_nr > -4294967296 || count == 1".into()),
        (&enter, "common_preempt_count == 256 && count == 8".into()),
        (&enter, format!("common_pid == {me} && count == 7")),
        (&enter, format!("common_pid != {me}")),
        (&enter, "CPU == 0 || CPU > 0 && count == 8".into()),
        (&enter, "cpu != 1 && count == 1".into()),
        (&enter, "common_preempt_count == 0 && common_flags & 1 || count == 255".into()),
        (&enter, "__syscall_nr == 0 && count >= 4096".into()),
        (&exit, "ret < 0".into()),
        (&exit, "ret == -21".into()),
        (&exit, "ret == -11 || ret == 0".into()),
        (&exit, "ret >= 0x8000 && ret < 65536".into()),
        (&exit, "ret > -12 && ret < 1".into()),
        (&exit, "ret & 0x4000000000000000".into()),
        (&exit, "ret & 0x100000000".into()),
        (&exit, "ret == 0x7fffffffffffffff || ret == -025".into()),
        (&exit, "!(ret <= -1) && !(ret == 0)".into()),
    ];
    for (format, expr) in &cases {
        let parsed = tracer_spec::filter::parse(expr).expect("grammar");
        let predicate = Predicate::compile(&parsed, format).unwrap_or_else(|why| panic!("{expr}: {why}"));
        filtered.set_filter("syscalls", &format.name, expr).unwrap_or_else(|e| panic!("kernel refused {expr}: {e}"));
        for i in [&all, &filtered] {
            i.clear_buffers().expect("clear");
            i.set_tracing_on(true).expect("on");
        }
        workload();
        for i in [&all, &filtered] {
            i.set_tracing_on(false).expect("off");
        }
        let every = records(&mut all_pipes, &header);
        let kernel = records(&mut filtered_pipes, &header);
        filtered.set_filter("syscalls", &format.name, "0").expect("clear the filter");
        // The other event of the pair is unfiltered in both: compare this event's records.
        let of = |r: &[(u16, Vec<u8>)]| -> Vec<Vec<u8>> {
            r.iter().filter(|(id, _)| *id == format.id).map(|(_, p)| p.clone()).collect()
        };
        let (every, kernel) = (of(&every), of(&kernel));
        let total = every.len();
        assert!(total >= 160, "{expr}: the workload's records are there ({total})");
        let ours = counted(format, every.iter().map(Vec::as_slice).filter(|p| predicate.matches(p, cpu)));
        let theirs = counted(format, kernel.iter().map(Vec::as_slice));
        assert_eq!(ours, theirs, "{expr}: user space and kernel disagree ({} of {total} records)", theirs.len());
        eprintln!("{expr}: {} of {total} records", theirs.values().sum::<usize>());
    }
    // What is not compiled goes to the kernel, which refuses these too (the session's start
    // then fails as it did before any filter was evaluated in user space).
    for (format, expr) in [
        (&enter, "fd == -1"),
        (&enter, "fd == 08"),
        (&enter, "buf == 0"),
        (&enter, "fd ~ \"3\""),
        (&enter, "fd == \"3\""),
        (&exit, "ret & 0x8000000000000000"),
        (&exit, "ret == 0xfffffffffffffff5"),
    ] {
        let parsed = tracer_spec::filter::parse(expr).expect("grammar");
        assert!(Predicate::compile(&parsed, format).is_err(), "{expr} is not compiled");
        assert!(filtered.set_filter("syscalls", &format.name, expr).is_err(), "the kernel refuses {expr}");
    }
    drop((all_pipes, filtered_pipes));
    all.remove().expect("remove");
    filtered.remove().expect("remove");
}

/// Pins this thread to the CPU it runs on now, and answers it: every record of the workload
/// is then of that CPU, which the payload does not say.
fn pin() -> u32 {
    let cpu = rustix::thread::sched_getcpu() as u32;
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu as usize);
    rustix::thread::sched_setaffinity(None, &set).expect("pin the test thread");
    cpu
}
