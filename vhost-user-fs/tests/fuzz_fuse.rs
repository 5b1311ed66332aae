//! Property-based fuzzing of FUSE requests into sm-vhost-user-fs's file system (issue 17):
//! sequences of requests with any opcode, any header (lengths that lie, node IDs never
//! issued, already forgotten, 0 and `u64::MAX`) and bodies made of edge values (0, -1,
//! `i64::MAX`, `u32::MAX`, ...), raw bytes and names (`/`, NUL, `.`, `..`, 255, 256 and 4096
//! bytes, escaping symlink targets), through the real queue loop on a real directory, under
//! each symlink policy, read-only or not, with and without `--allow-setuid`.
//!
//! The properties: no panic; every chain comes back, with either no reply (a request the
//! decoder refuses) or a whole reply whose header is consistent and whose error is 0 or an
//! errno; nothing outside the shared directory changes (a sibling directory's listing,
//! types, modes, sizes, times and contents, compared before and after); and afterwards a
//! LOOKUP of a known file still answers.
//!
//! Cases (sequences of 1 to 23 requests) come from `PROPTEST_CASES`: 1,000 by default,
//! 5 to 15 s in a debug build; `scripts/fuzz fuse-requests 10m` runs it for longer (by
//! hand: `PROPTEST_CASES=100000 cargo test -p sm-vhost-user-fs --test fuzz_fuse`).

#[path = "common/wire.rs"]
mod wire;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use proptest::prelude::*;
use sm_test_support::fuzz::config;
use sm_vhost_user_fs::fs::{FsConfig, SharedFs};
use sm_vhost_user_fs::policy::SymlinkPolicy;
use sm_vhost_user_fs::sys::ProcFds;
use wire::{op, Wire, IN_HEADER, OUT_HEADER};

/// FUSE's root node ID.
const ROOT: u64 = 1;

// ---------------------------------------------------------------------------------------
// Requests.

/// Which node a request names in its header (or, as a field, in its body).
#[derive(Clone, Debug)]
enum Node {
    /// The root (1).
    Root,
    /// One of the nodes issued so far (by the setup's or the case's own LOOKUPs and
    /// creations), and perhaps forgotten since.
    Issued(usize),
    /// One of the last nodes issued (0: the last), so a LOOKUP or creation is often
    /// followed by a request on what it found.
    Recent(usize),
    /// The node of one of the handles opened so far in the case.
    OfHandle(usize),
    /// A node the setup looked up and then forgot.
    Forgotten,
    /// Anything, usually never issued.
    Any(u64),
}

/// A fixed-size field of a request body.
#[derive(Clone, Debug)]
enum Field {
    /// A 32-bit field (flags, modes, sizes, umasks).
    U32(u32),
    /// A 64-bit field (offsets, lengths, handles, node IDs).
    U64(u64),
    /// A node ID (RENAME's new directory, LINK's old node, BATCH_FORGET's entries).
    Node(Node),
    /// One of the handles opened so far in the case (or, before any, a small number).
    Handle(usize),
    /// The length of the request's raw bytes (WRITE's data, SETXATTR's value), as u32.
    RawLen,
}

/// What the header's `len` says.
#[derive(Clone, Debug)]
enum Len {
    /// The truth.
    Exact,
    /// Fewer bytes than sent.
    Less(u32),
    /// More bytes than sent.
    More(u32),
    /// Anything.
    Any(u32),
}

/// One request.
#[derive(Clone, Debug)]
struct Req {
    opcode: u32,
    node: Node,
    len: Len,
    fields: Vec<Field>,
    raw: Vec<u8>,
    names: Vec<Vec<u8>>,
    /// Sends the request on this handle's node, with every handle field naming it.
    tie: Option<usize>,
}

/// The share's layout: whether the escaping symlinks and targets may be used (not under
/// `follow`, whose whole point is to follow symlinks anywhere: trusted guests only).
fn name(escapes: bool) -> BoxedStrategy<Vec<u8>> {
    // Names that exist (or will, once made), so requests reach the file system proper.
    let mut real: Vec<&'static [u8]> = vec![b"f", b"d", b"g", b"inside", b"new", b"n2"];
    if escapes {
        real.extend_from_slice(&[b"esc", b"abs"]);
    }
    let mut known: Vec<&'static [u8]> = vec![
        b".",
        b"..",
        b"a/b",
        b"/",
        b"x\0y",
        b"",
        b"f/",
        b"d/../f",
        b"user.sm",
        b"security.capability",
        b"trusted.x",
    ];
    if escapes {
        known.extend_from_slice(&[b"../outside", b"../outside/secret", b"/etc/passwd"]);
    }
    prop_oneof![
        4 => proptest::sample::select(real).prop_map(|n| n.to_vec()),
        4 => proptest::sample::select(known).prop_map(|n| n.to_vec()),
        1 => proptest::sample::select(vec![255usize, 256, 1024, 4096])
            .prop_map(|n| vec![b'a'; n]),
        2 => proptest::collection::vec(any::<u8>(), 0..40),
    ]
    .boxed()
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        3 => Just(Node::Root),
        4 => (0usize..8).prop_map(Node::Issued),
        4 => (0usize..3).prop_map(Node::Recent),
        2 => (0usize..8).prop_map(Node::OfHandle),
        2 => Just(Node::Forgotten),
        1 => proptest::sample::select(vec![0u64, 2, 3, 4, 5, 100, u64::MAX, 1 << 63])
            .prop_map(Node::Any),
        1 => any::<u64>().prop_map(Node::Any),
    ]
}

fn field() -> impl Strategy<Value = Field> {
    let u32s = vec![
        0u32,
        1,
        2,
        3,
        0o777,
        0o4755,
        0o6777,
        libc::S_IFREG | 0o644,
        libc::S_IFCHR | 0o666,
        libc::S_IFIFO | 0o600,
        libc::S_IFDIR | 0o755,
        libc::O_RDWR as u32,
        (libc::O_WRONLY | libc::O_TRUNC) as u32,
        (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
        libc::O_PATH as u32,
        4096,
        u32::MAX,
        i32::MAX as u32,
        1 << 31,
    ];
    let u64s = vec![
        0u64,
        1,
        2,
        3,
        4096,
        u32::MAX as u64,
        i64::MAX as u64,
        (i64::MAX as u64) + 1,
        u64::MAX,
        u64::MAX - 4095,
    ];
    prop_oneof![
        3 => proptest::sample::select(u32s).prop_map(Field::U32),
        1 => any::<u32>().prop_map(Field::U32),
        3 => proptest::sample::select(u64s).prop_map(Field::U64),
        1 => any::<u64>().prop_map(Field::U64),
        1 => node().prop_map(Field::Node),
    ]
}

fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        12 => Just(Len::Exact),
        1 => (1u32..64).prop_map(Len::Less),
        1 => (1u32..4096).prop_map(Len::More),
        1 => any::<u32>().prop_map(Len::Any),
    ]
}

fn opcode() -> impl Strategy<Value = u32> {
    prop_oneof![
        12 => 1u32..=52,
        1 => Just(0u32),
        1 => Just(4096u32), // CUSE_INIT
        1 => any::<u32>(),
    ]
}

/// A request of random fields.
fn unshaped(escapes: bool) -> impl Strategy<Value = Req> {
    (
        opcode(),
        node(),
        len(),
        proptest::collection::vec(field(), 0..12),
        proptest::collection::vec(any::<u8>(), 0..48),
        proptest::collection::vec(name(escapes), 0..3),
    )
        .prop_map(|(opcode, node, len, fields, raw, names)| Req {
            opcode,
            node,
            len,
            fields,
            raw,
            names,
            tie: None,
        })
}

/// What one fixed-size field of a request's struct holds.
#[derive(Clone, Copy, Debug)]
enum K {
    /// A file handle (small numbers are the ones the backend hands out).
    H,
    /// A 64-bit offset or length.
    O,
    /// A 32-bit size.
    S,
    /// 32-bit flags (open flags, xattr flags, masks).
    F,
    /// A mode.
    M,
    /// A node ID.
    N,
    /// SETATTR's `valid` bits.
    V,
    /// 32-bit padding.
    Z,
    /// 64-bit padding or lock owner.
    Q,
    /// The length of the data that follows (usually true).
    L,
}

/// Each opcode's `*_in` struct as field kinds (from `fuse_abi`, protocol 7.31), and how
/// many names follow it.
const SHAPES: &[(u32, &[K], usize)] = {
    use K::*;
    &[
        (1, &[], 1),                                               // LOOKUP
        (2, &[O], 0),                                              // FORGET
        (3, &[F, Z, H], 0),                                        // GETATTR
        (4, &[V, Z, H, O, Q, O, O, O, Z, Z, Z, M, Z, F, F, Z], 0), // SETATTR
        (5, &[], 0),                                               // READLINK
        (6, &[], 2),                                               // SYMLINK
        (8, &[M, F, M, Z], 1),                                     // MKNOD
        (9, &[M, M], 1),                                           // MKDIR
        (10, &[], 1),                                              // UNLINK
        (11, &[], 1),                                              // RMDIR
        (12, &[N], 2),                                             // RENAME
        (13, &[N], 1),                                             // LINK
        (14, &[F, F], 0),                                          // OPEN
        (15, &[H, O, S, F, Q, F, Z], 0),                           // READ
        (16, &[H, O, L, F, Q, F, Z], 0),                           // WRITE (data in `raw`)
        (17, &[], 0),                                              // STATFS
        (18, &[H, F, F, Q], 0),                                    // RELEASE
        (20, &[H, F, Z], 0),                                       // FSYNC
        (21, &[L, F], 1),                                          // SETXATTR (value in `raw`)
        (22, &[S, Z], 1),                                          // GETXATTR
        (23, &[S, Z], 0),                                          // LISTXATTR
        (24, &[], 1),                                              // REMOVEXATTR
        (25, &[H, Z, Z, Q], 0),                                    // FLUSH
        (27, &[F, F], 0),                                          // OPENDIR
        (28, &[H, O, S, F, Q, F, Z], 0),                           // READDIR
        (29, &[H, F, F, Q], 0),                                    // RELEASEDIR
        (30, &[H, F, Z], 0),                                       // FSYNCDIR
        (34, &[F, Z], 0),                                          // ACCESS
        (35, &[F, M, M, F], 1),                                    // CREATE
        (38, &[], 0),                                              // DESTROY
        (42, &[S, Z, N, O, N, O], 0),                              // BATCH_FORGET
        (43, &[H, O, O, F, Z], 0),                                 // FALLOCATE
        (44, &[H, O, S, F, Q, F, Z], 0),                           // READDIRPLUS
        (45, &[N, F, Z], 2),                                       // RENAME2
        (46, &[H, O, F, Z], 0),                                    // LSEEK
        (47, &[H, O, N, H, O, O, Q], 0),                           // COPY_FILE_RANGE
        (48, &[H, O, O, Q, O], 0),                                 // SETUPMAPPING
        (49, &[S, O, O], 0),                                       // REMOVEMAPPING
    ]
};

fn kind(k: K) -> BoxedStrategy<Field> {
    let u64s = |v: Vec<u64>| {
        prop_oneof![4 => proptest::sample::select(v), 1 => any::<u64>()].prop_map(Field::U64)
    };
    let u32s = |v: Vec<u32>| {
        prop_oneof![4 => proptest::sample::select(v), 1 => any::<u32>()].prop_map(Field::U32)
    };
    match k {
        K::H => prop_oneof![
            3 => (0usize..8).prop_map(Field::Handle),
            1 => u64s(vec![0, 1, 2, 3, 4, 5, 6, 7, u64::MAX]),
        ]
        .boxed(),
        K::O => u64s(vec![
            0,
            1,
            4095,
            4096,
            1 << 20,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX,
            u64::MAX - 4095,
        ])
        .boxed(),
        K::S => u32s(vec![0, 1, 4, 4096, 128 << 10, 1 << 20, u32::MAX]).boxed(),
        K::F => u32s(vec![
            0,
            libc::O_RDWR as u32,
            libc::O_WRONLY as u32,
            (libc::O_WRONLY | libc::O_TRUNC) as u32,
            (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
            (libc::O_PATH | libc::O_NOFOLLOW) as u32,
            libc::O_DIRECTORY as u32,
            1,
            2,
            3,
            7,
            u32::MAX,
        ])
        .boxed(),
        K::M => u32s(vec![
            0,
            0o777,
            0o4755,
            0o6777,
            libc::S_IFREG | 0o644,
            libc::S_IFREG | 0o4755,
            libc::S_IFCHR | 0o666,
            libc::S_IFBLK | 0o600,
            libc::S_IFIFO | 0o600,
            libc::S_IFSOCK | 0o600,
            libc::S_IFDIR | 0o755,
            libc::S_IFLNK | 0o777,
        ])
        .boxed(),
        K::N => node().prop_map(Field::Node).boxed(),
        K::V => u32s(vec![1, 2 | 4, 8, 8 | 64, 16 | 32, 128 | 256, 0x3ff, 1 | 8]).boxed(),
        K::Z => prop_oneof![9 => Just(0u32), 1 => any::<u32>()]
            .prop_map(Field::U32)
            .boxed(),
        K::L => prop_oneof![
            4 => Just(Field::RawLen),
            1 => u32s(vec![0, 1, 4096, u32::MAX]),
        ]
        .boxed(),
        K::Q => prop_oneof![9 => Just(0u64), 1 => any::<u64>()]
            .prop_map(Field::U64)
            .boxed(),
    }
}

/// A request laid out as its opcode's struct, with edge values in each field.
fn shaped(escapes: bool) -> impl Strategy<Value = Req> {
    // LOOKUP weighs as much as six other opcodes: most requests need a node found first.
    let lookups = std::iter::repeat_n(SHAPES[0], 5);
    let shapes: Vec<_> = SHAPES.iter().copied().chain(lookups).collect();
    proptest::sample::select(shapes).prop_flat_map(move |(opcode, shape, names)| {
        let fields: Vec<_> = shape.iter().map(|k| kind(*k)).collect();
        // Only a request that names a handle is sometimes sent on that handle's node.
        let takes_handle = shape.iter().any(|k| matches!(k, K::H));
        let tie = if takes_handle {
            proptest::option::of(0usize..8).boxed()
        } else {
            Just(None).boxed()
        };
        (
            Just(opcode),
            node(),
            len(),
            fields,
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(name(escapes), names..=names),
            tie,
        )
            .prop_map(|(opcode, node, len, fields, raw, names, tie)| Req {
                opcode,
                node,
                len,
                fields,
                raw,
                names,
                tie,
            })
    })
}

fn req(escapes: bool) -> impl Strategy<Value = Req> {
    prop_oneof![3 => shaped(escapes), 1 => unshaped(escapes)]
}

/// The configuration a case runs under.
#[derive(Clone, Copy, Debug)]
struct Setup {
    symlinks: SymlinkPolicy,
    read_only: bool,
    allow_setuid: bool,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        proptest::sample::select(vec![
            SymlinkPolicy::Deny,
            SymlinkPolicy::Opaque,
            SymlinkPolicy::Follow,
        ]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(symlinks, read_only, allow_setuid)| Setup {
            symlinks,
            read_only,
            allow_setuid,
        })
}

/// A setup and a sequence of requests for it.
fn case() -> impl Strategy<Value = (Setup, Vec<Req>)> {
    setup().prop_flat_map(|s| {
        let escapes = s.symlinks != SymlinkPolicy::Follow;
        (Just(s), proptest::collection::vec(req(escapes), 1..24))
    })
}

// ---------------------------------------------------------------------------------------
// The share and what must not change outside it.

/// `tmp/shared` (served) and `tmp/outside` (must never change), with escaping symlinks in
/// the share unless the policy follows symlinks.
fn make_tree(tmp: &Path, s: Setup) {
    let shared = tmp.join("shared");
    std::fs::create_dir_all(shared.join("d")).unwrap();
    std::fs::write(shared.join("f"), b"file data").unwrap();
    std::fs::write(shared.join("d/g"), b"g").unwrap();
    std::fs::write(shared.join("sentinel"), b"keep").unwrap();
    std::os::unix::fs::symlink("f", shared.join("inside")).unwrap();
    let outside = tmp.join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::fs::write(outside.join("sub/x"), b"x").unwrap();
    if s.symlinks != SymlinkPolicy::Follow {
        std::os::unix::fs::symlink("../outside", shared.join("esc")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), shared.join("abs")).unwrap();
    }
}

/// Everything under `tmp` except the share: type, mode, owner, size, mtime, ctime and
/// contents, by path.
type Snapshot = BTreeMap<String, (u32, u32, u32, u64, i64, i64, i64, Vec<u8>)>;

fn snapshot(tmp: &Path) -> Snapshot {
    fn walk(base: &Path, dir: &Path, out: &mut Snapshot) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "shared" {
                continue;
            }
            let m = std::fs::symlink_metadata(&path).unwrap();
            let data = if m.is_file() {
                std::fs::read(&path).unwrap()
            } else if m.is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            out.insert(
                rel,
                (
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.size(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000,
                    m.ctime_nsec() + m.ctime() * 1_000_000_000,
                    m.nlink() as i64,
                    data,
                ),
            );
            if m.is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Snapshot::new();
    walk(tmp, tmp, &mut out);
    out
}

fn open_fs(dir: &Path, s: Setup) -> SharedFs {
    let root: OwnedFd = std::fs::File::open(dir).unwrap().into();
    let cfg = FsConfig {
        symlinks: s.symlinks,
        read_only: s.read_only,
        allow_setuid: s.allow_setuid,
        ..FsConfig::default()
    };
    SharedFs::new(root, ProcFds::open(c"/proc/self/fd").unwrap(), cfg).unwrap()
}

// ---------------------------------------------------------------------------------------
// Running a case.

/// The node IDs issued so far (the setup's first), one the setup forgot, and the handles
/// opened so far with their nodes.
struct Nodes {
    issued: Vec<u64>,
    forgotten: u64,
    handles: Vec<(u64, u64)>,
}

impl Nodes {
    fn id(&self, n: &Node) -> u64 {
        match n {
            Node::Root => ROOT,
            Node::Issued(i) => self.issued[i % self.issued.len()],
            Node::Recent(k) => self.issued[self.issued.len() - 1 - k % self.issued.len()],
            Node::OfHandle(i) => self.handle(*i).1,
            Node::Forgotten => self.forgotten,
            Node::Any(v) => *v,
        }
    }

    /// Handle `i` and its node (before any: `i` itself on the root).
    fn handle(&self, i: usize) -> (u64, u64) {
        if self.handles.is_empty() {
            return (i as u64, ROOT);
        }
        self.handles[i % self.handles.len()]
    }

    /// Notes the nodes and handles a successful reply to `opcode` on `node` hands out.
    fn learn(&mut self, opcode: u32, node: u64, reply: &wire::Reply) {
        let body = reply.body();
        let at = |i: usize| {
            body.get(i..i + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        };
        match opcode {
            // LOOKUP, SYMLINK, MKNOD, MKDIR, LINK: a fuse_entry_out.
            1 | 6 | 8 | 9 | 13 => self.issued.extend(at(0)),
            // OPEN, OPENDIR: a fuse_open_out.
            14 | 27 => self.handles.extend(at(0).map(|fh| (fh, node))),
            // CREATE: both (the entry is 128 bytes).
            35 => {
                if let (Some(n), Some(fh)) = (at(0), at(128)) {
                    self.issued.push(n);
                    self.handles.push((fh, n));
                }
            }
            _ => {}
        }
    }
}

/// The request's bytes: header, fields, raw bytes, NUL-terminated names.
fn encode(r: &Req, nodes: &Nodes, unique: u64) -> (Vec<u8>, u64) {
    let mut body = Vec::new();
    for f in &r.fields {
        match f {
            Field::U32(v) => body.extend_from_slice(&v.to_le_bytes()),
            Field::U64(v) => body.extend_from_slice(&v.to_le_bytes()),
            Field::Node(n) => body.extend_from_slice(&nodes.id(n).to_le_bytes()),
            Field::RawLen => body.extend_from_slice(&(r.raw.len() as u32).to_le_bytes()),
            Field::Handle(i) => {
                let h = nodes.handle(r.tie.unwrap_or(*i)).0;
                body.extend_from_slice(&h.to_le_bytes());
            }
        }
    }
    // Names come first (a name's first NUL ends it, so the raw bytes after it are what
    // SETXATTR takes for its value, and junk to every other opcode); with no names, the
    // raw bytes are WRITE's data.
    for n in &r.names {
        body.extend_from_slice(n);
        body.push(0);
    }
    body.extend_from_slice(&r.raw);
    let node = match r.tie {
        Some(i) => nodes.handle(i).1,
        None => nodes.id(&r.node),
    };
    let mut req = wire::header(body.len(), r.opcode, unique, node, &body);
    let real = req.len() as u32;
    let claimed = match r.len {
        Len::Exact => real,
        Len::Less(d) => real.saturating_sub(d),
        Len::More(d) => real.saturating_add(d),
        Len::Any(v) => v,
    };
    req[0..4].copy_from_slice(&claimed.to_le_bytes());
    (req, node)
}

/// Looks up `d`, `f` and `d/g`, then forgets `d/g`; opens `f` (for writing unless
/// `read_only`) and the root directory.
fn hold_nodes(w: &mut Wire, read_only: bool) -> Nodes {
    let d = w.lookup(ROOT, b"d").unwrap();
    let f = w.lookup(ROOT, b"f").unwrap();
    let g = w.lookup(d, b"g").unwrap();
    let r = w.request(op::FORGET, g, &1u64.to_le_bytes());
    assert_eq!(r.used, 0, "FORGET has no reply");
    assert!(w.request(op::GETATTR, g, &[0u8; 16]).error() == Some(-libc::EBADF));
    let mode = if read_only {
        libc::O_RDONLY
    } else {
        libc::O_RDWR
    };
    let file = w.open(f, mode as u32).unwrap();
    let r = w.request(27, ROOT, &[0u8; 8]); // OPENDIR
    assert_eq!(r.error(), Some(0), "OPENDIR");
    Nodes {
        issued: vec![f, d, ROOT],
        forgotten: g,
        handles: vec![(file, f), (r.u64_at(0), ROOT)],
    }
}

fn run_case(s: Setup, reqs: &[Req]) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path(), s);
    let before = snapshot(tmp.path());
    let mut w = Wire::new(open_fs(&tmp.path().join("shared"), s));
    w.init();
    let mut nodes = hold_nodes(&mut w, s.read_only);
    for (i, r) in reqs.iter().enumerate() {
        let unique = 1_000_000 + i as u64;
        let (bytes, node) = encode(r, &nodes, unique);
        let reply = w.send(&bytes);
        if reply.used == 0 {
            continue; // refused by the decoder (or FORGET): no reply, the chain came back
        }
        prop_assert!(
            reply.bytes.len() >= OUT_HEADER,
            "request {i}: a reply shorter than its header: {reply:?}"
        );
        prop_assert_eq!(reply.len_field(), Some(reply.used), "request {}", i);
        let e = reply.error().unwrap();
        prop_assert!(
            (-4095..=0).contains(&e),
            "request {}: error {} is no errno",
            i,
            e
        );
        if e != 0 {
            prop_assert_eq!(reply.used as usize, OUT_HEADER, "request {}", i);
        } else if matches!(r.len, Len::Exact) {
            nodes.learn(r.opcode, node, &reply);
        }
        prop_assert!(bytes.len() >= IN_HEADER);
    }
    // Whatever came before, the next valid request is served.
    let sentinel = w.lookup(ROOT, b"sentinel");
    prop_assert!(sentinel.is_ok(), "LOOKUP after the sequence: {sentinel:?}");
    let after = snapshot(tmp.path());
    prop_assert_eq!(before, after, "something outside the share changed");
    Ok(())
}

proptest! {
    #![proptest_config(config(1000))]

    /// fuse-requests: any request sequence, under any policy.
    #[test]
    fn fuse_requests(c in case()) {
        run_case(c.0, &c.1)?;
    }
}

/// Regression cases found by the fuzzer or written from the brief: a name of 256 bytes,
/// a write at `u64::MAX`, a READ of a forgotten node with a handle never issued, a header
/// whose length is far beyond the chain, a CREATE of `..`.
#[test]
fn fixed_hostile_requests() {
    let s = Setup {
        symlinks: SymlinkPolicy::Opaque,
        read_only: false,
        allow_setuid: false,
    };
    let reqs = vec![
        Req {
            opcode: 1, // LOOKUP
            node: Node::Root,
            len: Len::Exact,
            fields: vec![],
            raw: vec![],
            names: vec![vec![b'a'; 256]],
            tie: None,
        },
        Req {
            opcode: 16, // WRITE
            node: Node::Issued(1),
            len: Len::Exact,
            fields: vec![
                Field::U64(0),
                Field::U64(u64::MAX),
                Field::U32(4),
                Field::U32(0),
                Field::U64(0),
                Field::U32(0),
                Field::U32(0),
            ],
            raw: b"data".to_vec(),
            names: vec![],
            tie: None,
        },
        Req {
            opcode: 15, // READ
            node: Node::Forgotten,
            len: Len::Exact,
            fields: vec![Field::U64(77), Field::U64(0), Field::U32(u32::MAX)],
            raw: vec![0; 24],
            names: vec![],
            tie: None,
        },
        Req {
            opcode: 3, // GETATTR
            node: Node::Root,
            len: Len::Any(u32::MAX),
            fields: vec![],
            raw: vec![0; 16],
            names: vec![],
            tie: None,
        },
        Req {
            opcode: 35, // CREATE
            node: Node::Root,
            len: Len::Exact,
            fields: vec![
                Field::U32(libc::O_RDWR as u32),
                Field::U32(0o6755),
                Field::U32(0),
                Field::U32(0),
            ],
            raw: vec![],
            names: vec![b"..".to_vec()],
            tie: None,
        },
    ];
    run_case(s, &reqs).unwrap();
}
