//! Spawned commands: a child's stdin, stdout and stderr, `kill` and `wait`.

use super::*;

/// Output read from a child by a pump thread, waiting for JS to take it.
#[derive(Default)]
pub(crate) struct Pipe {
    state: Mutex<(Vec<u8>, bool)>,
    changed: Condvar,
}

impl Pipe {
    /// Copies `from` in until its end.
    pub(crate) fn pump(self: Arc<Self>, mut from: impl Read + Send + 'static) {
        let _ = std::thread::Builder::new()
            .name("sm-node-pipe".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = from.read(&mut buf).unwrap_or(0);
                    let mut st = lock(&self.state);
                    if n == 0 {
                        st.1 = true;
                    } else {
                        st.0.extend_from_slice(&buf[..n]);
                    }
                    self.changed.notify_all();
                    if n == 0 {
                        return;
                    }
                }
            });
    }

    /// Up to `max` bytes once there are some; `None` at the end.
    pub(crate) fn read(&self, max: usize) -> Option<Vec<u8>> {
        let mut st = lock(&self.state);
        while st.0.is_empty() && !st.1 {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.0.is_empty() {
            return None;
        }
        let n = max.min(st.0.len());
        Some(st.0.drain(..n).collect())
    }
}

pub(crate) struct ChildInner {
    child: Mutex<sm::Child>,
    stdin: Mutex<Option<sm::ChildStdin>>,
    control: sm::ChildControl,
    stdout: Arc<Pipe>,
    stderr: Arc<Pipe>,
}

/// A command running in the guest.
#[napi]
pub struct Child {
    inner: Arc<ChildInner>,
}

/// How a command ended.
#[napi(object)]
pub struct ExitStatus {
    /// Its exit code as a shell reports it (128 + N after signal N).
    pub exit_code: i32,
    /// The signal that ended it, or null.
    #[napi(ts_type = "number | null")]
    pub signal: Either<i32, Null>,
    /// Whether its timeout killed it.
    pub timed_out: bool,
}

impl Child {
    /// Takes the streams out of `child` (output is read as it comes, so an unread stream
    /// never stalls the command).
    pub(crate) fn start(mut child: sm::Child) -> std::result::Result<Child, Fail> {
        let control = child.control().map_err(|e| Fail::new("exec", e))?;
        let stdout = Arc::new(Pipe::default());
        let stderr = Arc::new(Pipe::default());
        if let Some(o) = child.stdout.take() {
            stdout.clone().pump(o);
        }
        if let Some(o) = child.stderr.take() {
            stderr.clone().pump(o);
        }
        Ok(Child {
            inner: Arc::new(ChildInner {
                stdin: Mutex::new(child.stdin.take()),
                child: Mutex::new(child),
                control,
                stdout,
                stderr,
            }),
        })
    }

    pub(crate) fn read<'e>(&self, env: &'e Env, err: bool, max: Option<u32>) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        let max = max.map_or(64 << 10, |m| m.max(1) as usize);
        promise(
            env,
            move || {
                let pipe = if err { &inner.stderr } else { &inner.stdout };
                Ok(pipe.read(max))
            },
            |_, bytes| Ok(bytes.map(Buffer::from)),
        )
    }
}

#[napi]
impl Child {
    /// Writes to the command's stdin.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write_stdin<'e>(&self, env: &'e Env, data: Buffer) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        let data = data.to_vec();
        promise(
            env,
            move || {
                let mut g = lock(&inner.stdin);
                let stdin = g
                    .as_mut()
                    .ok_or_else(|| Fail::new("exec", "stdin is closed"))?;
                stdin
                    .write_all(&data)
                    .map_err(|e| Fail::new("exec", format!("writing stdin: {e}")))
            },
            |_, ()| Ok(()),
        )
    }

    /// Closes the command's stdin (it reads end of file).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close_stdin<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        promise(
            env,
            move || match lock(&inner.stdin).take() {
                Some(s) => s
                    .close()
                    .map_err(|e| Fail::new("exec", format!("closing stdin: {e}"))),
                None => Ok(()),
            },
            |_, ()| Ok(()),
        )
    }

    /// The next bytes of stdout (up to `maxBytes`, default 64 KiB), or `null` at its end.
    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn read_stdout<'e>(&self, env: &'e Env, max_bytes: Option<u32>) -> Result<Object<'e>> {
        self.read(env, false, max_bytes)
    }

    /// The next bytes of stderr, or `null` at its end.
    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn read_stderr<'e>(&self, env: &'e Env, max_bytes: Option<u32>) -> Result<Object<'e>> {
        self.read(env, true, max_bytes)
    }

    /// Sends signal number `signal` (default 15, SIGTERM) to the command.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn kill<'e>(&self, env: &'e Env, signal: Option<i32>) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        promise(
            env,
            move || {
                inner
                    .control
                    .signal(signal.unwrap_or(15))
                    .map_err(|e| Fail::new("exec", format!("signalling: {e}")))
            },
            |_, ()| Ok(()),
        )
    }

    /// Waits for the end (closing stdin if still open): `{ exitCode, signal, timedOut }`.
    #[napi(ts_return_type = "Promise<ExitStatus>")]
    pub fn wait<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        promise(
            env,
            move || {
                drop(lock(&inner.stdin).take());
                lock(&inner.child)
                    .wait()
                    .map_err(|e| Fail::new("exec", format!("waiting: {e}")))
            },
            |_, exit| {
                Ok(ExitStatus {
                    exit_code: exit.shell_code().into(),
                    signal: signal_or_null(exit.signal),
                    timed_out: exit.timed_out,
                })
            },
        )
    }
}
