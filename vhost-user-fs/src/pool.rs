//! `--thread-pool-size`: a fixed set of worker threads that run FUSE requests of the
//! request queue concurrently, so one slow host call does not stall every other request.
//! Workers stop and are joined when the pool is dropped (at the end of a connection).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One unit of work.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed-size thread pool.
pub struct Pool {
    tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `size` workers (at least one).
    pub fn new(size: usize) -> std::io::Result<Pool> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..size.max(1))
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("fs-worker-{i}"))
                    .spawn(move || work(&rx))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Pool {
            tx: Some(tx),
            workers,
        })
    }

    /// Queues `job`; it runs on the caller's thread if the pool is gone.
    pub fn submit(&self, job: Job) {
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    (e.0)();
                }
            }
            None => job(),
        }
    }
}

/// A worker: narrows its seccomp filter (in a sandbox), then runs jobs until the sending
/// side is dropped.
fn work(rx: &Mutex<Receiver<Job>>) {
    if let Err(e) = sm_sandbox::narrow_worker_thread() {
        // A worker left with the whole process's list would weaken the sandbox, and one that
        // quietly ran nothing would hang the guest's requests: end the backend, loudly.
        tracing::error!("cannot narrow a worker thread's system calls: {e}");
        std::process::exit(1);
    }
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_every_job_before_drop_returns() {
        let count = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(3).unwrap();
        for _ in 0..100 {
            let c = count.clone();
            pool.submit(Box::new(move || {
                c.fetch_add(1, Ordering::Relaxed);
            }));
        }
        drop(pool);
        assert_eq!(count.load(Ordering::Relaxed), 100);
    }
}
