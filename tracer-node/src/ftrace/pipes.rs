//! Every CPU's `trace_pipe_raw` of one instance, read by a single thread that polls them all.
//!
//! For an instance whose events are few (the task tracker's forks and exits), a reader thread
//! per CPU ([`super::reader::Readers`]) would be threads that sleep: here one thread, or a
//! request that must see everything recorded up to now, drains every CPU in turn without
//! blocking.

use std::{
    fs::File,
    io::{ErrorKind, Read},
    os::fd::{AsFd, OwnedFd},
};

use super::{Instance, TracefsError};

/// The open per-CPU pipes of an instance.
#[derive(Debug)]
pub struct Pipes {
    files: Vec<File>,
    page: Vec<u8>,
}

impl Pipes {
    /// Opens every CPU's `trace_pipe_raw` of `instance`, non-blocking, to be read in pages of
    /// `page_size` bytes.
    pub fn open(instance: &Instance, page_size: usize) -> Result<Self, TracefsError> {
        let mut files = Vec::new();
        for cpu in instance.cpus()? {
            files.push(instance.open_pipe_raw(cpu)?);
        }
        Ok(Self { files, page: vec![0; page_size] })
    }

    /// Reads every page the kernel holds now, CPU after CPU, handing each to `f`. A CPU whose
    /// read fails is skipped this time (and reported): the other CPUs' events still count.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> Result<(), std::io::Error> {
        let mut failed = None;
        for file in &mut self.files {
            loop {
                match file.read(&mut self.page) {
                    Ok(0) => break,
                    Ok(n) => f(&self.page[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Closes the pipes (the instance can be removed only once no pipe is open).
    pub fn close(&mut self) {
        self.files.clear();
    }

    /// Duplicates of the pipes, for a thread to poll for readability without holding them
    /// (the same open files: readable when these are).
    pub fn poll_handles(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.files.iter().map(|f| f.as_fd().try_clone_to_owned()).collect()
    }
}
