//! The threads the binding's waiting calls run on: one per call in flight, kept for reuse.
//! Node's own thread pool (libuv, 4 threads) would make a fifth VM's `exec` wait for one of
//! four others to finish, and a thread per call costs a thread start on every `acquire`,
//! `exec` and `release` (milliseconds on a slow host). A thread idle for a while ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// One call's work.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// How long an idle thread waits for another call before it ends.
const IDLE: Duration = Duration::from_secs(30);

/// Idle threads, each waiting on its own channel, by number.
static IDLE_THREADS: Mutex<Vec<(u64, Sender<Job>)>> = Mutex::new(Vec::new());
/// Numbers the threads, so one can take itself off the idle list.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn idle_threads() -> MutexGuard<'static, Vec<(u64, Sender<Job>)>> {
    IDLE_THREADS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `job` on an idle thread, or on a new one if none is idle.
pub(crate) fn run(job: Job) -> std::io::Result<()> {
    let idle = idle_threads().pop();
    if let Some((_, thread)) = idle {
        // Off the list, the thread waits for this job (see `serve`), so it is alive.
        if let Err(mpsc::SendError(job)) = thread.send(job) {
            return run(job);
        }
        return Ok(());
    }
    let (tx, rx) = mpsc::channel();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("sm-node".into())
        .spawn(move || {
            job();
            serve(id, tx, rx)
        })
        .map(drop)
}

/// A worker after its first job: offers itself as idle, runs what it is given, and ends
/// once idle for [`IDLE`].
fn serve(id: u64, me: Sender<Job>, jobs: Receiver<Job>) {
    loop {
        idle_threads().push((id, me.clone()));
        match jobs.recv_timeout(IDLE) {
            Ok(job) => job(),
            Err(_) => {
                let mut idle = idle_threads();
                match idle.iter().position(|(i, _)| *i == id) {
                    Some(at) => {
                        idle.remove(at);
                        return;
                    }
                    // Taken off the list just now: its job is on the way.
                    None => {
                        drop(idle);
                        match jobs.recv() {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn jobs_reuse_idle_threads_and_run_concurrently_when_busy() {
        let (done, finished) = channel();
        let names = |done: Sender<std::thread::ThreadId>| {
            Box::new(move || done.send(std::thread::current().id()).unwrap()) as Job
        };
        run(names(done.clone())).unwrap();
        let first = finished.recv().unwrap();
        // Give the worker a moment to offer itself as idle again.
        std::thread::sleep(Duration::from_millis(50));
        run(names(done.clone())).unwrap();
        assert_eq!(finished.recv().unwrap(), first, "the idle thread ran it");

        // Two jobs that wait for each other need two threads.
        let (a_tx, a_rx) = channel::<()>();
        let (b_tx, b_rx) = channel::<()>();
        run(Box::new(move || {
            a_tx.send(()).unwrap();
            b_rx.recv().unwrap();
        }))
        .unwrap();
        let (ok_tx, ok_rx) = channel();
        run(Box::new(move || {
            a_rx.recv().unwrap();
            b_tx.send(()).unwrap();
            ok_tx.send(()).unwrap();
        }))
        .unwrap();
        ok_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("both ran at once");
    }
}
