//! QEMU's QMP monitor, asked what a stalled guest is doing: its run state, vCPU registers
//! (`HLT=1` is a halted vCPU), interrupt controllers and devices, as QEMU's human monitor
//! prints them. Used for the test VM and for the backends' QEMU interop guests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long one monitor command may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What a stalled guest's CPUs are doing: run state, every vCPU's registers, the current
/// vCPU's local APIC (an expired timer left in IRR is a lost interrupt) and the legacy
/// interrupt controllers.
pub const CPU_STATE: &[&str] = &["info status", "info registers -a", "info lapic", "info pic"];

/// A QMP session with one QEMU.
pub struct Monitor {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Monitor {
    /// Connects to the QMP socket at `path` and enters command mode; `None` if QEMU does
    /// not answer (the report is best effort).
    pub fn connect(path: &Path) -> Option<Monitor> {
        let stream = UnixStream::connect(path).ok()?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
        let reader = BufReader::new(stream.try_clone().ok()?);
        let mut monitor = Monitor { stream, reader };
        monitor
            .call(&serde_json::json!({"execute": "qmp_capabilities"}))
            .map(|_| monitor)
    }

    /// QEMU's human-monitor answer to `command` (e.g. `info registers -a`), headed by the
    /// command in parentheses; says so when there is no answer.
    pub fn ask(&mut self, command: &str) -> String {
        let cmd = serde_json::json!({"execute": "human-monitor-command",
                                     "arguments": {"command-line": command}});
        match self.call(&cmd) {
            Some(serde_json::Value::String(text)) => format!("({command})\n{text}"),
            Some(other) => format!("({command})\n{other}\n"),
            None => format!("({command}) no answer\n"),
        }
    }

    /// The answers to each of `commands`, one after the other.
    pub fn report(&mut self, commands: &[&str]) -> String {
        commands.iter().map(|c| self.ask(c)).collect()
    }

    /// Sends one QMP command and returns its `return` (or `error`) value, skipping events
    /// (QMP sends one JSON object per line).
    fn call(&mut self, cmd: &serde_json::Value) -> Option<serde_json::Value> {
        writeln!(self.stream, "{cmd}").ok()?;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            if let Some(r) = v.get("return").or_else(|| v.get("error")) {
                return Some(r.clone());
            }
        }
    }
}
