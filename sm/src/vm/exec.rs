//! [`ExecBuilder`]: a command to run in the guest, built up and then run to completion
//! ([`ExecBuilder::output`]), with its streams attached ([`ExecBuilder::stream`]), or
//! started and driven while it runs ([`ExecBuilder::spawn`]: a [`Child`]).

use std::io::{Read, Write};
use std::time::Duration;

use sm_agent::child::Child;
use sm_agent::client::{Agent, AgentError, ExecOutput};
use sm_agent::exchange::ExecExchange;
use sm_agent::message::{ExecRequest, ExitInfo, WindowSize};

/// A command to run in the guest.
pub struct ExecBuilder<'a> {
    agent: &'a Agent,
    req: ExecRequest,
}

impl<'a> ExecBuilder<'a> {
    /// A builder for `req` on `agent`.
    pub fn new(agent: &'a Agent, req: ExecRequest) -> Self {
        ExecBuilder { agent, req }
    }

    /// `argv` in the guest's own root, never an image's: for sm's own work in the guest
    /// (mounts, syncs), which must not depend on what the image holds.
    pub fn in_guest_root<S: AsRef<str>>(agent: &'a Agent, argv: &[S]) -> Self {
        let argv = argv.iter().map(|s| s.as_ref().to_owned()).collect();
        ExecBuilder::new(
            agent,
            ExecRequest {
                argv,
                ..Default::default()
            },
        )
    }

    /// Sets an environment variable (the first one replaces the default environment's
    /// variables except `PATH`, which is kept unless set).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        let env = self
            .req
            .env
            .get_or_insert_with(|| vec![("PATH".into(), sm_agent::DEFAULT_PATH.into())]);
        env.retain(|(k, _)| k != key);
        env.push((key.into(), value.into()));
        self
    }

    /// Runs in `dir`.
    pub fn cwd(mut self, dir: &str) -> Self {
        self.req.cwd = Some(dir.into());
        self
    }

    /// Runs as `uid`:`gid`.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.req.uid = Some(uid);
        self.req.gid = Some(gid);
        self
    }

    /// Kills the command (SIGKILL to its process group) after `limit`.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.req.timeout_ms = Some(limit.as_millis().try_into().unwrap_or(u64::MAX));
        self
    }

    /// Runs on a new pseudo-terminal of `size` (stdout then carries everything the
    /// terminal shows; stderr stays empty).
    pub fn tty(mut self, size: WindowSize) -> Self {
        self.req.tty = Some(size);
        self
    }

    /// Gives the command a stdin to write to (see [`Child::stdin`]) instead of `/dev/null`.
    pub fn stdin(mut self) -> Self {
        self.req.stdin = true;
        self
    }

    /// Starts the command and returns at once; drive it through the [`Child`].
    pub fn spawn(self) -> Result<Child, AgentError> {
        self.agent.spawn(&self.req)
    }

    /// Runs to completion with `stdin` (none: `/dev/null`) and collects the output.
    pub fn output_with_stdin(self, stdin: Option<&[u8]>) -> Result<ExecOutput, AgentError> {
        self.agent.exec(&self.req, stdin)
    }

    /// Starts running with `stdin` (none: `/dev/null`) and returns at once: the caller's
    /// event loop drives the exchange to the collected output (see [`ExecExchange`]).
    pub fn start(self, stdin: Option<&[u8]>) -> Result<ExecExchange, AgentError> {
        self.agent.start_exec(&self.req, stdin)
    }

    /// Runs to completion with stdin from `/dev/null` and collects the output.
    pub fn output(self) -> Result<ExecOutput, AgentError> {
        self.output_with_stdin(None)
    }

    /// Runs with `stdin` copied in and the output copied out as it comes.
    pub fn stream(
        mut self,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExitInfo, AgentError> {
        self.req.stdin = stdin.is_some();
        self.agent.exec_streaming(&self.req, stdin, stdout, stderr)
    }
}
