//! Transfer phase: lay out the directory tree, then copy the planned files with N parallel workers
//! fed largest-first from one shared queue.

pub mod plan;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crossbeam_channel::select;

use crate::cancel::Cancel;
use crate::progress::Progress;
use crate::transport::{Copied, Transport, TransportError};
pub use plan::{plan, Plan, CONTROL_FILE};

/// Small files travel together so that thousands of catalog files do not cost a request each.
const BATCH_BYTES: u64 = 16 << 20;
const BATCH_FILES: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{what} {path}: {source}")]
    Local { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Cancelled(String),
}

/// Creates the planned directories (with the primary's permission bits) and symbolic links under `dest`.
pub fn lay_out(plan: &Plan, dest: &Path) -> Result<(), TransferError> {
    for (dir, mode) in &plan.dirs {
        let path = dest.join(dir);
        let local = |what, source| TransferError::Local { what, path: path.clone(), source };
        match std::fs::DirBuilder::new().mode(*mode).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(local("creating directory", e)),
        }
        // The umask may have narrowed the mode; PostgreSQL accepts 0700 or 0750 and we copy what it had.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| local("setting permissions of", e))?;
    }
    for (link, target) in &plan.symlinks {
        let path = dest.join(link);
        std::os::unix::fs::symlink(target, &path).map_err(|source| TransferError::Local {
            what: "creating symlink",
            path,
            source,
        })?;
    }
    Ok(())
}

/// Groups the plan's files (largest first) into jobs: a large file alone, small ones in batches.
fn jobs(plan: &Plan) -> Vec<Vec<PathBuf>> {
    let mut jobs = Vec::new();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for (path, size) in &plan.files {
        if *size >= BATCH_BYTES {
            jobs.push(vec![path.clone()]);
            continue;
        }
        batch.push(path.clone());
        batch_bytes += size;
        if batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_FILES {
            jobs.push(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        jobs.push(batch);
    }
    jobs
}

/// Copies every planned file with `parallel` workers. Any worker's failure, or a cancel from elsewhere
/// (signal, WAL stream), stops all workers at once.
pub fn copy(
    plan: &Plan,
    transport: &dyn Transport,
    dest: &Path,
    parallel: usize,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<Copied, TransferError> {
    let jobs = jobs(plan);
    let n_jobs = jobs.len();
    let (job_tx, job_rx) = crossbeam_channel::unbounded();
    for j in jobs {
        job_tx.send(j).expect("receiver alive");
    }
    drop(job_tx);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Result<Copied, TransportError>>();
    let workers = parallel.min(n_jobs).max(1);

    std::thread::scope(|s| {
        for _ in 0..workers {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            s.spawn(move || {
                let mut worker = match transport.worker() {
                    Ok(w) => w,
                    Err(e) => return drop(done_tx.send(Err(e))),
                };
                while let Ok(files) = job_rx.recv() {
                    if cancel.is_cancelled() {
                        return;
                    }
                    let _ = done_tx.send(worker.copy(&files, dest, cancel));
                }
            });
        }
        drop(done_tx);

        let mut total = Copied::default();
        let mut finished = 0;
        while finished < n_jobs {
            select! {
                recv(done_rx) -> r => match r {
                    Ok(Ok(c)) => {
                        finished += 1;
                        progress.add(c);
                        total.files += c.files;
                        total.bytes += c.bytes;
                        total.vanished += c.vanished;
                    }
                    Ok(Err(TransportError::Cancelled)) | Err(_) => break,
                    Ok(Err(e)) => {
                        cancel.cancel(e.to_string());
                        break;
                    }
                },
                recv(cancel.receiver()) -> _ => break,
            }
        }
        match cancel.reason() {
            Some(reason) => Err(TransferError::Cancelled(reason)),
            None if finished < n_jobs => Err(TransferError::Cancelled("copy workers ended early".into())),
            None => Ok(total),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_files_alone_small_files_batched_largest_first() {
        let mut p = Plan { files: vec![("big".into(), 40 << 20), ("mid".into(), 16 << 20)], ..Default::default() };
        p.files.extend((0..2500).map(|i| (PathBuf::from(format!("s{i}")), 1)));
        p.files.extend((0..3).map(|i| (PathBuf::from(format!("m{i}")), 6 << 20)));
        let j = jobs(&p);
        assert_eq!(j[0], vec![PathBuf::from("big")]);
        assert_eq!(j[1], vec![PathBuf::from("mid")]);
        assert_eq!(j[2].len(), 2000);
        assert_eq!(j.iter().map(Vec::len).sum::<usize>(), 2505);
    }
}
