//! The spool and state directories hold files other processes wrote: replay and reload must
//! neither block on, follow, nor trust anything that is not a plain regular file of ours in a
//! directory of ours alone, and must not loop on what they refuse.

mod common;

use std::{
    os::unix::fs::{symlink, PermissionsExt},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{create_event, created, eventually, private_dir, registry, Proc};
use tracer_api::{RegistryEvent, SpooledEvent};
use tracer_node::registry::{spool::Spool, store::Store, RegistryError};

fn event_file(path: &Path, event: RegistryEvent) {
    let body = serde_json::to_vec(&SpooledEvent { reason: "test".into(), event }).expect("ser");
    std::fs::write(path, body).expect("write");
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, rustix::fs::Mode::RWXU, 0).expect("mkfifo");
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).expect("ls").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn spool_replay_refuses_fifos_symlinks_odd_names_and_directories_without_blocking_or_looping() {
    let (dir, elsewhere) = (private_dir(), private_dir());
    let reg = registry(None);
    let (planted, good) = (Proc::spawn(), Proc::spawn());
    mkfifo(&dir.path().join("00000000000000000001-1-created.json"));
    event_file(&elsewhere.path().join("target.json"), create_event("via-link", planted.pid(), "p", "ns", "c"));
    symlink(elsewhere.path().join("target.json"), dir.path().join("00000000000000000002-1-created.json"))
        .expect("symlink");
    std::fs::create_dir(dir.path().join("00000000000000000003-1-created.json")).expect("mkdir");
    event_file(
        &dir.path().join("00000000000000000004-1-created\nINFO forged line.json"),
        create_event("forged", planted.pid(), "p", "ns", "c"),
    );
    event_file(
        &dir.path().join("00000000000000000005-1-created.json"),
        create_event("good", good.pid(), "p", "ns", "c"),
    );

    let spool = Spool::open(dir.path()).expect("spool");
    let started = Instant::now();
    let done = spool.replay(&reg).expect("replay");
    assert!(started.elapsed() < Duration::from_secs(1), "replay blocked: {:?}", started.elapsed());
    assert_eq!((done.applied, done.unreadable, done.deferred), (1, 3, 0), "{done:?}");
    assert!(reg.contains("good") && reg.len() == 1, "only the plain file of ours counts");
    assert_eq!(names(dir.path()), vec!["00000000000000000003-1-created.json"], "the refused entries are gone");
    assert!(elsewhere.path().join("target.json").exists(), "a symlink's target is never touched");
    let again = spool.replay(&reg).expect("second pass");
    assert_eq!(again, Default::default(), "nothing is retried or re-counted");
}

#[tokio::test]
async fn spool_files_of_another_user_are_refused() {
    if !common::require_root("to chown") {
        return;
    }
    let dir = private_dir();
    let reg = registry(None);
    let init = Proc::spawn();
    let path = dir.path().join("00000000000000000001-1-created.json");
    event_file(&path, create_event("planted", init.pid(), "p", "ns", "c"));
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown");
    let done = Spool::open(dir.path()).expect("spool").replay(&reg).expect("replay");
    assert_eq!((done.applied, done.unreadable), (0, 1));
    assert!(reg.is_empty() && !path.exists());
}

#[tokio::test]
async fn directories_others_can_write_are_refused_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (sub, mode) in [("spool", 0o777), ("spool-group", 0o770)] {
        let p = dir.path().join(sub);
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let err = Spool::open(&p).expect_err("loose spool refused");
        assert!(err.to_string().contains("mode 0700"), "{err}");
    }
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert!(Store::open(&state).is_err(), "loose state dir refused");
    symlink(private_dir().path(), dir.path().join("link")).expect("symlink");
    assert!(Spool::open(&dir.path().join("link")).is_err(), "a symlinked spool is refused");
}

#[tokio::test]
async fn a_failed_replay_pass_is_retried_without_a_new_file() {
    let dir = private_dir();
    let reg = registry(None);
    let spool = Arc::new(Spool::open(dir.path()).expect("spool"));
    let task = tracer_node::registry::spool::watch(spool, reg.clone()).expect("watch");
    let init = Proc::spawn();
    // The pass this file triggers fails (the directory is loose meanwhile)...
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    event_file(
        &dir.path().join("00000000000000000001-1-created.json"),
        create_event("late", init.pid(), "p", "ns", "c"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!reg.contains("late"), "a loose directory is not trusted");
    // ...and once it is fixed, the retry applies it with no further file event.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    assert!(eventually(|| reg.contains("late")).await, "the failed pass was never retried");
    task.abort();
}

#[tokio::test]
async fn state_files_are_reloaded_only_as_plain_files_named_after_their_id() {
    let dir = private_dir();
    let init = Proc::spawn();
    let store = Store::open(dir.path()).expect("store");
    store.save(&created("real", init.pid(), "p", "ns", "c")).expect("save");
    let misnamed = serde_json::to_vec(&created("other", init.pid(), "p", "ns", "c")).expect("ser");
    std::fs::write(dir.path().join("renamed.json"), misnamed).expect("write");
    mkfifo(&dir.path().join("fifo.json"));
    std::fs::create_dir(dir.path().join("dir.json")).expect("mkdir");
    let reg = registry(Some(Store::open(dir.path()).expect("store")));
    let started = Instant::now();
    assert_eq!(reg.load_persisted().expect("load"), 1);
    assert!(started.elapsed() < Duration::from_secs(1), "reload blocked on the FIFO");
    assert!(reg.contains("real") && !reg.contains("other"));
    assert_eq!(names(dir.path()), vec!["dir.json", "real.json"]);
}

#[tokio::test]
async fn an_id_too_long_to_persist_is_refused() {
    let init = Proc::spawn();
    let reg = registry(None);
    let long = "a".repeat(251);
    let r = reg.apply(create_event(&long, init.pid(), "p", "ns", "c"));
    assert!(matches!(r, Err(RegistryError::Invalid { field: "id", .. })), "{r:?}");
    reg.apply(create_event(&"b".repeat(250), init.pid(), "p", "ns", "c")).expect("250 bytes fit");
}
