//! `Image.build` and `Image.fromSnapshot`: build options, the warm-up callback, bakes.

use super::*;

/// A live host directory in the guest.
#[napi(object)]
pub struct MountOptions {
    /// The host directory.
    pub host_path: String,
    /// Where the guest sees it (absolute); default `/mnt/<guestTag>`.
    pub guest_path: Option<String>,
    /// The share's name; with no `guestPath` it is mounted at `/mnt/<guestTag>`.
    pub guest_tag: Option<String>,
    /// `opaque` (default: links are kept verbatim, as npm makes them), `deny` or `follow`.
    pub symlinks: Option<String>,
    /// Read-only in the guest.
    pub read_only: Option<bool>,
}

/// A block volume (ext4, created sparse if missing; its contents after the warm-up are
/// baked into the snapshot).
#[napi(object)]
pub struct VolumeOptions {
    /// The host image file.
    pub host_path: String,
    /// Where the guest mounts it (absolute).
    pub guest_path: String,
    /// The size of a new volume (MiB); default 1024.
    pub size_mib: Option<u32>,
}

/// A host file copied into the guest before the warm-up.
#[napi(object)]
pub struct ExtraFileOptions {
    /// The host file.
    pub host_path: String,
    /// The guest path (absolute).
    pub guest_path: String,
    /// Permission bits (default 0o644).
    pub mode: Option<u32>,
}

/// `Image.build`'s options (index.js moves a `warmup` function out and env objects into
/// `KEY=VALUE` strings).
#[napi(object)]
pub struct BuildOptions {
    /// A registry reference, `oci-layout:DIR`, `oci-archive:FILE` or `docker-archive:FILE`;
    /// none: the guest's own minimal root.
    #[napi(js_name = "ref")]
    pub image_ref: Option<String>,
    /// The snapshot's name.
    pub name: String,
    /// Guest memory (MiB), default 256.
    pub memory_mib: Option<u32>,
    /// Virtual CPUs, default 1.
    pub vcpus: Option<u32>,
    /// The workload: keeps running in the snapshot and every clone.
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` for the workload, the warm-up and later commands.
    pub env: Option<Vec<String>>,
    /// Working directory (default: the image's).
    pub cwd: Option<String>,
    /// Live host directories.
    pub mounts: Option<Vec<MountOptions>>,
    /// Block volumes.
    pub volumes: Option<Vec<VolumeOptions>>,
    /// Host files copied in before the warm-up.
    pub extra_files: Option<Vec<ExtraFileOptions>>,
    /// Kernel command-line parameters added after sm's.
    pub extra_kernel_args: Option<String>,
    /// A shell warm-up (`/bin/sh -c`), when `warmup` was a string.
    pub warmup_shell: Option<String>,
    /// Bump to bake again with otherwise unchanged inputs.
    pub warmup_tag: Option<String>,
    /// Wait until the workload listens on `guestPort` before the warm-up.
    pub listener_required: Option<bool>,
    /// The workload's guest TCP port.
    pub guest_port: Option<u32>,
    /// Where snapshots go (default: the store in sm's home).
    pub snapshots_dir: Option<String>,
    /// `"user"` (default: outbound through passt, the host's loopback denied) or `"none"`.
    pub network: Option<String>,
    /// Egress rules as for `sm run --egress` (`allow=host:8080`, `deny=10.0.0.0/8`).
    pub egress: Option<Vec<String>>,
    /// The host resolver the guest's DNS goes to (default: the host's).
    pub dns: Option<String>,
}

/// Egress rules from their `--egress` text.
pub(crate) fn egress_rules(rules: Vec<String>) -> std::result::Result<Vec<sm::EgressRule>, Fail> {
    rules
        .iter()
        .map(|r| {
            r.parse()
                .map_err(|e| Fail::new("args", format!("egress rule {r:?}: {e}")))
        })
        .collect()
}

/// The network `network`, `egress` and `dns` ask for.
fn network(
    mode: Option<String>,
    egress: Option<Vec<String>>,
    dns: Option<String>,
) -> std::result::Result<sm::Network, Fail> {
    let mode = match mode.as_deref() {
        None | Some("user") => sm::vm::NetworkMode::User,
        Some("none") => sm::vm::NetworkMode::None,
        Some(m) => {
            return Err(Fail::new(
                "args",
                format!("network {m:?}: give \"user\" or \"none\""),
            ))
        }
    };
    let dns = dns
        .map(|d| {
            d.parse()
                .map_err(|_| Fail::new("args", format!("dns {d:?} is not an IP address")))
        })
        .transpose()?;
    sm::Network::from_flags(mode, egress_rules(egress.unwrap_or_default())?, dns)
        .map_err(|e| Fail::new("args", e))
}

/// The warm-up function: called with the booting VM, its promise awaited by the bake.
pub(crate) type WarmupFn = ThreadsafeFunction<Vm, Promise<()>, Vm, Status, false>;

pub(crate) fn bake_options(
    o: BuildOptions,
    warmup: Option<WarmupFn>,
) -> std::result::Result<sm::BuildOptions, Fail> {
    let mut mounts = vec![];
    for m in o.mounts.unwrap_or_default() {
        let guest = match (m.guest_path, m.guest_tag) {
            (Some(p), _) => p,
            (None, Some(t)) if !t.is_empty() && !t.contains('/') => format!("/mnt/{t}"),
            _ => {
                return Err(Fail::new(
                    "args",
                    format!("mount {}: give guestPath or guestTag", m.host_path),
                ))
            }
        };
        let mut spec = format!("{}:{guest}", m.host_path);
        if m.read_only == Some(true) {
            spec.push_str(":ro");
        }
        if let Some(s) = m.symlinks {
            spec.push_str(&format!(":symlinks={s}"));
        }
        mounts.push(
            spec.parse::<sm::Mount>()
                .map_err(|e| Fail::new("args", e))?,
        );
    }
    let volumes = o
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| sm::Volume {
            file: v.host_path.into(),
            guest: v.guest_path,
            size_mib: v.size_mib.unwrap_or(1024).into(),
        })
        .collect();
    let extra_files = o
        .extra_files
        .unwrap_or_default()
        .into_iter()
        .map(|f| sm::ExtraFile {
            host: f.host_path.into(),
            guest: f.guest_path,
            mode: f.mode.unwrap_or(0o644),
        })
        .collect();
    let listen_port = match (o.listener_required.unwrap_or(false), o.guest_port) {
        (false, _) => None,
        (true, Some(p)) => {
            Some(u16::try_from(p).map_err(|_| Fail::new("args", format!("guestPort {p}")))?)
        }
        (true, None) => return Err(Fail::new("args", "listenerRequired needs guestPort")),
    };
    let warmup = match (warmup, o.warmup_shell) {
        (Some(f), _) => Some(sm::Warmup::Callback(Box::new(move |vm: &sm::Vm| {
            run_warmup(&f, vm)
        }))),
        (None, Some(line)) => Some(sm::Warmup::Shell(line)),
        (None, None) => None,
    };
    Ok(sm::BuildOptions {
        name: o.name,
        image: o.image_ref,
        mem_mib: o.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB).into(),
        vcpus: o.vcpus.unwrap_or(1),
        cmd: o.cmd.unwrap_or_default(),
        env: env_pairs(o.env)?,
        workdir: o.cwd,
        mounts,
        volumes,
        extra_files,
        warmup,
        warmup_tag: o.warmup_tag.unwrap_or_default(),
        extra_kernel_args: o.extra_kernel_args,
        listen_port,
        network: network(o.network, o.egress, o.dns)?,
        store: o.snapshots_dir.map(sm::store::SnapshotStore::at),
        ..Default::default()
    })
}

/// On the bake's thread: calls the JS warm-up with a VM object and waits for its promise.
pub(crate) fn run_warmup(f: &WarmupFn, vm: &sm::Vm) -> std::result::Result<(), String> {
    let inner = Arc::new(VmInner::new(Target::Warmup {
        agent: vm.agent().clone(),
        root: vm.guest_root().map(str::to_owned),
    }));
    let (tx, rx) = std::sync::mpsc::channel();
    let status = f.call_with_return_value(
        Vm::of(inner.clone()),
        ThreadsafeFunctionCallMode::Blocking,
        move |ret: Result<Promise<()>>, _env| {
            let _ = tx.send(ret);
            Ok(())
        },
    );
    if status != Status::Ok {
        return Err(format!("failed: calling the warm-up function: {status}"));
    }
    let result = match rx.recv() {
        Ok(Ok(p)) => block_on(p),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(napi::Error::from_reason(
            "the warm-up function was not called",
        )),
    };
    // The VM is snapshotted and stopped next: the JS object is of no use after this.
    inner.invalidate("the warm-up is over: this VM was snapshotted");
    result.map_err(|e| format!("failed: {}", one_line(&e.reason)))
}

pub(crate) fn bake_fail(e: sm::bake::BakeError) -> Fail {
    use sm::bake::BakeError as B;
    let code = match &e {
        B::Store(_) | B::ExtraFile(..) => "io",
        B::Image(_) => "image",
        B::Vm(_) | B::Workload(_) => "boot",
        B::Warmup(_) => "exec",
        B::Snapshot(_) => "snapshot",
    };
    Fail::new(code, e)
}

pub(crate) fn pool_fail(e: sm::pool::PoolError) -> Fail {
    use sm::pool::PoolError as P;
    let code = match &e {
        P::Snapshot(_) => "snapshot",
        P::Options(_) | P::ShutDown => "pool",
        P::Timeout(..) => "timeout",
        P::Restore(_) | P::Vm(_) => "boot",
    };
    Fail::new(code, e)
}

/// A baked snapshot to start VMs from.
#[napi]
pub struct Image {
    inner: sm::Image,
}

#[napi]
impl Image {
    /// Bakes (boot, workload, warm-up, snapshot), or finds the snapshot an identical bake
    /// made. index.js passes a `warmup` function separately.
    #[napi(ts_return_type = "Promise<Image>")]
    pub fn build<'e>(
        env: &'e Env,
        options: BuildOptions,
        warmup: Option<WarmupFn>,
    ) -> Result<Object<'e>> {
        let opts = bake_options(options, warmup);
        promise(
            env,
            move || sm::Image::build(opts?).map_err(bake_fail),
            |_, inner| Ok(Image { inner }),
        )
    }

    /// The snapshot in `dir` (verified).
    #[napi(ts_return_type = "Promise<Image>")]
    pub fn from_snapshot<'e>(env: &'e Env, dir: String) -> Result<Object<'e>> {
        promise(
            env,
            move || sm::Image::from_snapshot(std::path::Path::new(&dir)).map_err(pool_fail),
            |_, inner| Ok(Image { inner }),
        )
    }

    /// The snapshot directory.
    #[napi(getter)]
    pub fn snapshot(&self) -> String {
        self.inner.snapshot().to_string_lossy().into_owned()
    }

    /// Whether the build was a cache hit (nothing booted).
    #[napi(getter)]
    pub fn was_cached(&self) -> bool {
        self.inner.was_cached()
    }

    /// A pool of restored clones of this image.
    #[napi(ts_return_type = "Promise<Pool>")]
    pub fn pool<'e>(&self, env: &'e Env, options: Option<PoolOptions>) -> Result<Object<'e>> {
        let image = self.inner.clone();
        let o = options.unwrap_or(PoolOptions {
            min: None,
            max: None,
            restore_on_release: None,
            idle_timeout_ms: None,
            acquire_timeout_ms: None,
            egress: None,
        });
        let d = sm::PoolOptions::default();
        let ms = |v: Option<f64>, d: Duration| v.map_or(d, |v| Duration::from_millis(v as u64));
        let opts = sm::PoolOptions {
            min: o.min.map_or(d.min, |v| v as usize),
            max: o.max.map_or(d.max, |v| v as usize),
            restore_on_release: o.restore_on_release.unwrap_or(d.restore_on_release),
            acquire_timeout: ms(o.acquire_timeout_ms, d.acquire_timeout),
            idle_timeout: ms(o.idle_timeout_ms, d.idle_timeout),
            egress: None,
        };
        let egress = o.egress.map(egress_rules).transpose();
        promise(
            env,
            move || {
                let opts = sm::PoolOptions {
                    egress: egress?,
                    ..opts
                };
                image.pool(opts).map_err(pool_fail)
            },
            |_, pool| {
                Ok(Pool {
                    inner: Some(Arc::new(RwLock::new(Some(pool)))),
                })
            },
        )
    }
}
