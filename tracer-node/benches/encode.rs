//! CPU cost of encoding events as OTLP log records (`export::logs`), the export's own part
//! without the reading and the network: a million `sys_enter_getppid` and a million
//! `sys_enter_openat` records, in flushes of 8192 from pages of one thread, as the export
//! worker encodes them. Prints ns per record and the request bytes per record.
//!
//! Run: `cargo bench -p tracer-node --bench encode` (also in `scripts/bench.sh`).

use std::{collections::HashMap, sync::Arc, time::Instant};

use tracer_node::{
    batch::{Batch, Record, TaskInfo},
    export::{encode::EventNames, logs::LogsEncoder, model},
    ftrace::format::parse_event_format,
};

const GETPPID: &str = "name: sys_enter_getppid\nID: 305\nformat:\n\
    \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
    \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
    \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
    \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
    \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n";
const OPENAT: &str = "name: sys_enter_openat\nID: 623\nformat:\n\
    \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
    \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
    \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
    \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
    \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
    \tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;\n\
    \tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;\n\
    \tfield:int flags;\toffset:32;\tsize:8;\tsigned:0;\n\
    \tfield:umode_t mode;\toffset:40;\tsize:8;\tsigned:0;\n";

/// Encodes `total` records of event `id` (payloads of `len` bytes) and prints the figures.
fn run(label: &str, text: &str, id: u16, len: u32, total: usize) {
    let format = parse_event_format("syscalls", text).expect("format");
    let names = HashMap::from([(id, EventNames::new(&format.system, &format.name))]);
    let formats = HashMap::from([(id, format)]);
    let task = Arc::new(TaskInfo::new(4242, Arc::from("getppid"), None));
    // Pages of 4 KiB as the kernel fills them, every record of one thread.
    let per_page = 4080 / (len as usize + 8);
    let mut page = vec![0u8; 4096];
    for i in 0..per_page {
        let at = 16 + i * (len as usize + 8);
        page[at..at + 2].copy_from_slice(&id.to_ne_bytes());
        page[at + 4..at + 8].copy_from_slice(&4242i32.to_ne_bytes());
        page[at + 8..at + 12].copy_from_slice(&110i32.to_ne_bytes());
        if len >= 48 {
            page[at + 16..at + 24].copy_from_slice(&(-100i64 as u64).to_ne_bytes());
            page[at + 24..at + 32].copy_from_slice(&0x7ffd_1234_5678u64.to_ne_bytes());
            page[at + 32..at + 40].copy_from_slice(&0x80000u64.to_ne_bytes());
        }
    }
    let page = Arc::new(page);
    let batches: Vec<Arc<Batch>> = (0..total.div_ceil(per_page))
        .map(|p| {
            let records = (0..per_page)
                .map(|i| {
                    let at = 16 + i * (len as usize + 8);
                    let ts = 1_000_000_000 + (p * per_page + i) as u64 * 700;
                    Record::new(ts, 4242, id, at as u32, len, 0)
                })
                .collect();
            Arc::new(Batch::new((p % 2) as u32, page.clone(), records, vec![task.clone()]))
        })
        .collect();
    let resource = opentelemetry_proto::tonic::resource::v1::Resource::default();
    let (mut bytes, mut records) = (0usize, 0usize);
    let started = Instant::now();
    for flush in batches.chunks(8192 / per_page) {
        let n: usize = flush.iter().map(|b| b.records.len()).sum();
        let mut enc = LogsEncoder::new(&formats, &names, model::Wall::now(), model::unix_now(), [7; 16], n * 320);
        let g = enc.group([9; 8]);
        for b in flush {
            for r in &b.records {
                enc.record(g, b, r);
            }
        }
        bytes += enc.finish([resource.clone()], &model::scope()).len();
        records += n;
    }
    let took = started.elapsed();
    println!(
        "  {label}: {records} records in {:.0} ms: {:.0} ns per record ({:.0} ms per million), {:.0} bytes per record",
        took.as_secs_f64() * 1e3,
        took.as_nanos() as f64 / records as f64,
        took.as_secs_f64() * 1e9 / records as f64,
        bytes as f64 / records as f64
    );
}

fn main() {
    println!("OTLP log record encoding (one thread, flushes of 8192):");
    for _ in 0..2 {
        run("sys_enter_getppid", GETPPID, 305, 16, 1_000_000);
        run("sys_enter_openat ", OPENAT, 623, 48, 1_000_000);
    }
}
