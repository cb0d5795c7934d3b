//! Writes undeliverable events to the spool directory, atomically (temp file + rename) so that
//! tracer-node, which replays files as they appear, never reads half a file.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use tracer_api::{RegistryEvent, SpooledEvent};

/// Writes `event` with `reason` into `dir` (created 0700 if missing) and returns the file's path.
///
/// Names sort by time (`<unix ns, 20 digits>-<hook pid>-<kind>.json`), which is the replay
/// order; temp files start with `.` and are ignored by the replayer.
pub fn write(dir: &Path, event: &RegistryEvent, reason: &str, now_unix_ns: u64) -> io::Result<PathBuf> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let name = format!("{now_unix_ns:020}-{}-{}.json", std::process::id(), event.kind());
    let tmp = dir.join(format!(".{name}.tmp"));
    let body = serde_json::to_vec(&SpooledEvent { reason: reason.to_owned(), event: event.clone() })
        .map_err(io::Error::other)?;
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&body)?;
        // The spool lives on tmpfs (/run) by default: no fsync, a reboot ends the containers too.
        let path = dir.join(&name);
        fs::rename(&tmp, &path)?;
        Ok(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use tracer_api::ContainerStopped;

    use super::*;

    #[test]
    fn spooled_file_holds_event_and_reason_and_no_temp_remains() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("nested/spool");
        let ev = RegistryEvent::Stopped(ContainerStopped { version: 1, id: "c".into(), stopped_unix_ns: 5 });
        let path = write(&spool, &ev, "daemon down", 5).expect("spooled");
        let back: SpooledEvent = serde_json::from_slice(&fs::read(&path).expect("read")).expect("parse");
        assert_eq!(back.event, ev);
        assert_eq!(back.reason, "daemon down");
        let names: Vec<_> = fs::read_dir(&spool).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 1);
        assert!(path.file_name().expect("name").to_string_lossy().starts_with("00000000000000000005-"));
    }
}
