//! Stress for the agent transport: thousands of mixed requests on one VM, each bounded by an
//! I/O timeout; the first failure is reported with a look inside the guest.
use std::time::{Duration, Instant};

use sm::{Vm, VmConfig};
use sm_agent::message::ExecRequest;

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let threads: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let vm = Vm::start(&VmConfig::default()).expect("start");
    let agent = vm.agent().clone().with_io_timeout(Duration::from_secs(20));
    std::thread::scope(|s| {
        for t in 0..threads {
            let agent = agent.clone();
            s.spawn(move || worker(t, &agent, n / threads));
        }
    });
    eprintln!("ALL {n} OK");
    vm.stop();
}

fn worker(t: usize, agent: &sm_agent::client::Agent, n: usize) {
    let size: usize = std::env::var("SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let data = vec![7u8; size];
    let path = format!("/tmp/x{t}");
    let start = Instant::now();
    for i in 0..n {
        let op = match std::env::var("OPS").ok().as_deref() {
            Some("files") => 2 + i % 2,
            _ => i % 5,
        };
        let r: Result<(), String> = match op {
            0 => agent
                .exec(&req(&["true"]), None)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            1 => agent
                .exec(&req(&["sh", "-c", "echo out; echo err >&2; exit 3"]), None)
                .map(|o| assert_eq!(o.exit.code, Some(3)))
                .map_err(|e| e.to_string()),
            2 => agent
                .write_file(&path, &data, 0o644)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            3 => agent
                .read_file(&path, 64 << 20)
                .map(|d| assert_eq!(d.len(), data.len()))
                .map_err(|e| e.to_string()),
            _ => {
                let mut r = req(&["sh", "-c", "sleep 60 & sleep 60"]);
                r.timeout_ms = Some(100);
                agent
                    .exec(&r, None)
                    .map(|o| assert!(o.exit.timed_out))
                    .map_err(|e| e.to_string())
            }
        };
        if let Err(e) = r {
            eprintln!(
                "FAILED at thread {t} request {i} (op {op}) after {:?}: {e}",
                start.elapsed()
            );
            let look = agent.exec(
                &req(&["sh", "-c", "for t in /proc/1/task/*; do echo \"$t $(cat $t/comm) $(cat $t/wchan) $(cat $t/stat | cut -d' ' -f3)\"; done; ps -o pid,ppid,stat,args; cat /proc/net/vsock 2>/dev/null; grep -i vsock /proc/net/protocols"]),
                None,
            );
            match look {
                Ok(o) => eprintln!(
                    "guest:\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("guest unreachable too: {e}"),
            }
            std::process::exit(1);
        }
        if i % 500 == 499 {
            eprintln!("{} requests in {:?}", i + 1, start.elapsed());
        }
    }
}
