//! Property-based fuzzing of virtio-blk request handling (issue 17): arbitrary request
//! headers and descriptor chains (sectors past the end, overflowing ranges, discard and
//! write-zeroes with bad segments, writes on a read-only device, zero-length and oversized
//! buffers, addresses outside guest memory, read-only descriptors where a write is needed)
//! against a real image file in a temporary directory and real guest memory.
//!
//! The properties: no panic; a chain with no status byte (or out of order, or too long) is
//! returned with used length 0; otherwise the status is the right one, a successful read
//! returns the image's bytes, a successful write, discard or write-zeroes changes exactly
//! its range, a refused request leaves the image as it was, nothing in guest memory outside
//! the device-writable buffers changes, and the next request is served.
//!
//! Cases come from `PROPTEST_CASES` (small by default); `scripts/fuzz blk-requests 10m`
//! runs more.

use std::sync::Mutex;

use proptest::prelude::*;
use sm_test_support::fuzz::config;
use sm_vhost_user_blk::config::{MAX_RANGE_SECTORS, MAX_RANGE_SEGMENTS, SECTOR_SIZE};
use sm_vhost_user_blk::image::{Image, ImageOptions};
use sm_vhost_user_blk::request::{handle, Segment, MAX_DESCRIPTORS};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory size.
const MEM: u64 = 1 << 20;
/// Image size.
const IMAGE: u64 = 1 << 20;
const HDR: u64 = 0x1000;
const RANGES: u64 = 0x3000;
const DATA: u64 = 0x10000;
const STATUS: u64 = 0x8000;

/// A device: an image file, a copy of what it must hold, and guest memory.
struct Device {
    image: Image,
    model: Vec<u8>,
    mem: GuestMemoryMmap,
    _dir: tempfile::TempDir,
}

impl Device {
    fn new(read_only: bool) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let model: Vec<u8> = (0..IMAGE).map(|i| (i * 131 % 251) as u8 | 1).collect();
        std::fs::write(&path, &model).unwrap();
        let image = Image::open(&ImageOptions {
            path,
            size_mib: None,
            default_size_mib: 1,
            read_only,
        })
        .unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        Device {
            image,
            model,
            mem,
            _dir: dir,
        }
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(self.image.path()).unwrap()
    }

    fn memory(&self) -> Vec<u8> {
        let mut m = vec![0u8; MEM as usize];
        self.mem.read_slice(&mut m, GuestAddress(0)).unwrap();
        m
    }
}

/// Bytes of `segs` in `mem` (a snapshot), or `None` if any lies outside it.
fn gather(mem: &[u8], segs: &[Segment]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for s in segs {
        let start = s.addr.0;
        let end = start.checked_add(u64::from(s.len))?;
        if end > mem.len() as u64 {
            if s.len == 0 {
                continue;
            }
            return None;
        }
        out.extend_from_slice(&mem[start as usize..end as usize]);
    }
    Some(out)
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap())
}

/// What a request must do, worked out from the chain and memory before it runs.
#[derive(Debug, PartialEq)]
enum Expect {
    /// Returned with used length 0.
    Dropped,
    /// This status (other than OK) and the image untouched.
    Refused(u8),
    /// OK, or an error the model does not predict (the host file's, or guest memory's
    /// past the header), for the request the header says.
    Maybe {
        /// The request type in the header.
        kind: u32,
        /// The sector in the header.
        sector: u64,
    },
}

/// The reference: the parts of the virtio-blk rules the model can predict exactly.
fn expect(chain: &[Segment], mem: &[u8], read_only: bool) -> Expect {
    if chain.len() > MAX_DESCRIPTORS {
        return Expect::Dropped;
    }
    let first_w = chain
        .iter()
        .position(|s| s.writable && s.len > 0)
        .unwrap_or(chain.len());
    if chain[first_w..].iter().any(|s| !s.writable) {
        return Expect::Dropped;
    }
    let writable: Vec<Segment> = chain.iter().copied().filter(|s| s.writable).collect();
    let Some(last) = writable.iter().rev().find(|s| s.len > 0) else {
        return Expect::Dropped;
    };
    let Some(status) = last.addr.0.checked_add(u64::from(last.len) - 1) else {
        return Expect::Dropped;
    };
    if status >= mem.len() as u64 {
        return Expect::Dropped;
    }
    let readable: Vec<Segment> = chain.iter().copied().filter(|s| !s.writable).collect();
    let rlen: u64 = readable.iter().map(|s| u64::from(s.len)).sum();
    let wlen: u64 = writable.iter().map(|s| u64::from(s.len)).sum::<u64>() - 1;
    let ioerr = Expect::Refused(VIRTIO_BLK_S_IOERR as u8);
    if rlen < 16 {
        return ioerr;
    }
    // The header: the first 16 readable bytes, wherever they lie.
    let mut hdr_segs = Vec::new();
    let mut need = 16u64;
    for s in &readable {
        if need == 0 {
            break;
        }
        let take = u64::from(s.len).min(need);
        if take > 0 {
            hdr_segs.push(Segment {
                addr: s.addr,
                len: take as u32,
                writable: false,
            });
        }
        need -= take;
    }
    let Some(hdr) = gather(mem, &hdr_segs) else {
        return ioerr;
    };
    let (kind, sector) = (le32(&hdr), le64(&hdr[8..]));
    let data_len = rlen - 16;
    let writes = matches!(
        kind,
        VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
    );
    if writes && read_only {
        return ioerr;
    }
    let in_range = |sector: u64, len: u64| {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|o| o.checked_add(len))
            .is_some_and(|end| end <= IMAGE)
    };
    match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let len = if kind == VIRTIO_BLK_T_IN {
                wlen
            } else {
                data_len
            };
            if len % SECTOR_SIZE != 0 || !in_range(sector, len) {
                return ioerr;
            }
            Expect::Maybe { kind, sector }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if data_len == 0 || data_len % 16 != 0 || data_len / 16 > u64::from(MAX_RANGE_SEGMENTS)
            {
                return ioerr;
            }
            Expect::Maybe { kind, sector }
        }
        VIRTIO_BLK_T_FLUSH | VIRTIO_BLK_T_GET_ID => Expect::Maybe { kind, sector },
        _ => Expect::Refused(VIRTIO_BLK_S_UNSUPP as u8),
    }
}

// ---------------------------------------------------------------------------------------
// Strategies.

fn kind() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => Just(VIRTIO_BLK_T_IN),
        3 => Just(VIRTIO_BLK_T_OUT),
        1 => Just(VIRTIO_BLK_T_FLUSH),
        1 => Just(VIRTIO_BLK_T_GET_ID),
        2 => Just(VIRTIO_BLK_T_DISCARD),
        2 => Just(VIRTIO_BLK_T_WRITE_ZEROES),
        1 => any::<u32>(),
    ]
}

fn sector() -> impl Strategy<Value = u64> {
    let last = IMAGE / SECTOR_SIZE - 1;
    prop_oneof![
        4 => 0..IMAGE / SECTOR_SIZE,
        1 => Just(last),
        1 => Just(last + 1),
        1 => Just(u64::MAX),
        1 => Just(u64::MAX / SECTOR_SIZE),
        1 => Just(u64::MAX / SECTOR_SIZE + 1),
        1 => any::<u64>(),
    ]
}

/// One discard/write-zeroes range: (sector, sectors, flags).
fn range() -> impl Strategy<Value = (u64, u32, u32)> {
    (
        sector(),
        prop_oneof![
            4 => 0u32..64,
            1 => Just(MAX_RANGE_SECTORS),
            1 => Just(MAX_RANGE_SECTORS + 1),
            1 => Just(u32::MAX),
        ],
        prop_oneof![6 => Just(0u32), 2 => Just(1u32), 1 => any::<u32>()],
    )
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0u64..64).prop_map(|k| DATA + k * 512),
        1 => Just(HDR),
        1 => Just(RANGES),
        1 => Just(STATUS),
        1 => (1u64..1024).prop_map(|k| MEM - k),
        1 => Just(MEM),
        1 => (0u64..4096).prop_map(|k| u64::MAX - k),
        1 => any::<u64>(),
    ]
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => (0u32..9).prop_map(|k| k * 512),
        2 => (0u32..42).prop_map(|k| k * 16),
        1 => Just(0u32),
        1 => Just(1u32),
        1 => 0u32..600,
        1 => Just(1u32 << 20),
        1 => Just(u32::MAX),
    ]
}

fn segment() -> impl Strategy<Value = Segment> {
    (addr(), len(), prop::bool::weighted(0.5)).prop_map(|(a, len, writable)| Segment {
        addr: GuestAddress(a),
        len,
        writable,
    })
}

/// A request: what is in memory, and the chain describing it.
#[derive(Clone, Debug)]
struct Case {
    read_only: bool,
    kind: u32,
    reserved: u32,
    sector: u64,
    ranges: Vec<(u64, u32, u32)>,
    chain: Vec<Segment>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::bool::weighted(0.3),
        kind(),
        prop_oneof![3 => Just(0u32), 1 => any::<u32>()],
        sector(),
        proptest::collection::vec(range(), 0..4),
        // The header descriptor: usually 16 readable bytes at HDR.
        prop_oneof![
            6 => Just(Some(Segment { addr: GuestAddress(HDR), len: 16, writable: false })),
            1 => Just(Some(Segment { addr: GuestAddress(HDR), len: 8, writable: false })),
            1 => Just(Some(Segment { addr: GuestAddress(HDR), len: 16, writable: true })),
            1 => Just(None),
            1 => segment().prop_map(Some),
        ],
        // Ranges for discard/write-zeroes: a readable descriptor over them, sometimes.
        prop_oneof![
            2 => Just(None),
            3 => Just(Some(u32::MAX)),
            1 => (0u32..42).prop_map(Some),
        ],
        proptest::collection::vec(segment(), 0..4),
        // The status descriptor: usually one writable byte at STATUS.
        prop_oneof![
            6 => Just(Some(Segment { addr: GuestAddress(STATUS), len: 1, writable: true })),
            1 => Just(Some(Segment { addr: GuestAddress(STATUS), len: 1, writable: false })),
            1 => Just(Some(Segment { addr: GuestAddress(MEM), len: 1, writable: true })),
            1 => Just(None),
            1 => segment().prop_map(Some),
        ],
        prop_oneof![12 => Just(0usize), 1 => Just(MAX_DESCRIPTORS)],
    )
        .prop_map(
            |(read_only, kind, reserved, sector, ranges, hdr, range_seg, data, status, pad)| {
                let mut chain: Vec<Segment> = hdr.into_iter().collect();
                if let Some(n) = range_seg {
                    // u32::MAX: exactly the ranges written.
                    let n = if n == u32::MAX {
                        ranges.len() as u32
                    } else {
                        n
                    };
                    chain.push(Segment {
                        addr: GuestAddress(RANGES),
                        len: n * 16,
                        writable: false,
                    });
                }
                chain.extend(data);
                chain.extend((0..pad).map(|i| Segment {
                    addr: GuestAddress(DATA + i as u64 * 512),
                    len: 512,
                    writable: true,
                }));
                chain.extend(status);
                Case {
                    read_only,
                    kind,
                    reserved,
                    sector,
                    ranges,
                    chain,
                }
            },
        )
}

/// The two devices the cases share (a writable and a read-only image).
static DEVICES: Mutex<Option<(Device, Device)>> = Mutex::new(None);

fn run(case: &Case) -> Result<(), TestCaseError> {
    let mut guard = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    let (rw, ro) = guard.get_or_insert_with(|| (Device::new(false), Device::new(true)));
    let dev = if case.read_only { ro } else { rw };
    // (A failed case, while shrinking, may have left the model behind the file.)
    dev.model = dev.file();
    // Guest memory: header, ranges, a known pattern elsewhere.
    static FILL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let fill = FILL.get_or_init(|| (0..MEM).map(|i| (i * 7 % 253) as u8).collect());
    dev.mem.write_slice(fill, GuestAddress(0)).unwrap();
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&case.kind.to_le_bytes());
    h[4..8].copy_from_slice(&case.reserved.to_le_bytes());
    h[8..16].copy_from_slice(&case.sector.to_le_bytes());
    dev.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    for (i, (s, n, f)) in case.ranges.iter().enumerate() {
        let mut r = [0u8; 16];
        r[0..8].copy_from_slice(&s.to_le_bytes());
        r[8..12].copy_from_slice(&n.to_le_bytes());
        r[12..16].copy_from_slice(&f.to_le_bytes());
        dev.mem
            .write_slice(&r, GuestAddress(RANGES + 16 * i as u64))
            .unwrap();
    }
    let before = dev.memory();
    let want = expect(&case.chain, &before, case.read_only);

    let used = handle(&dev.mem, &dev.image, case.chain.iter().copied());

    let after = dev.memory();
    let file = dev.file();
    prop_assert_eq!(file.len() as u64, IMAGE, "the image changed size");
    // Guest memory changes only inside device-writable buffers.
    let writable: Vec<(u64, u64)> = case
        .chain
        .iter()
        .filter(|s| s.writable)
        .map(|s| (s.addr.0, s.addr.0.saturating_add(u64::from(s.len))))
        .collect();
    for (c, (a, b)) in before.chunks(4096).zip(after.chunks(4096)).enumerate() {
        if a == b {
            continue;
        }
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let i = (c * 4096 + i) as u64;
            prop_assert!(
                x == y || writable.iter().any(|(s, e)| (*s..*e).contains(&i)),
                "guest memory at {i:#x} changed outside the writable buffers"
            );
        }
    }
    let status = case
        .chain
        .iter()
        .rfind(|s| s.writable && s.len > 0)
        .and_then(|s| s.addr.0.checked_add(u64::from(s.len) - 1))
        .filter(|a| *a < MEM)
        .map(|a| after[a as usize]);
    match want {
        Expect::Dropped => {
            prop_assert_eq!(used, 0);
            prop_assert!(file == dev.model, "a dropped request changed the image");
        }
        Expect::Refused(st) => {
            prop_assert_eq!(used, 1, "a refused request reports only its status");
            prop_assert_eq!(status, Some(st));
            prop_assert!(file == dev.model, "a refused request changed the image");
        }
        Expect::Maybe { kind, sector } => {
            prop_assert!(used >= 1);
            let st = status.unwrap();
            prop_assert!(
                [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP].contains(&u32::from(st))
            );
            if u32::from(st) != VIRTIO_BLK_S_OK {
                prop_assert_eq!(used, 1);
                prop_assert!(
                    file == dev.model,
                    "a request refused with {} changed the image",
                    st
                );
            } else {
                check_success(case, (kind, sector), dev, &before, &after, &file, used)?;
            }
        }
    }
    dev.model = file;
    // The device serves the next request: read sector 1 back.
    let mut next = [0u8; 16];
    next[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    next[8..16].copy_from_slice(&1u64.to_le_bytes());
    dev.mem.write_slice(&next, GuestAddress(HDR)).unwrap();
    let used = handle(
        &dev.mem,
        &dev.image,
        [
            Segment {
                addr: GuestAddress(HDR),
                len: 16,
                writable: false,
            },
            Segment {
                addr: GuestAddress(DATA),
                len: 512,
                writable: true,
            },
            Segment {
                addr: GuestAddress(STATUS),
                len: 1,
                writable: true,
            },
        ],
    );
    prop_assert_eq!(used, 513);
    let mut got = vec![0u8; 512];
    dev.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    prop_assert!(
        got[..] == dev.model[512..1024],
        "the next read returned other bytes"
    );
    Ok(())
}

/// Whether no two device-writable buffers overlap (else the later write wins and the
/// bytes of the earlier one cannot be checked).
fn disjoint(chain: &[Segment]) -> bool {
    let mut w: Vec<(u64, u64)> = chain
        .iter()
        .filter(|s| s.writable && s.len > 0)
        .map(|s| (s.addr.0, s.addr.0.saturating_add(u64::from(s.len))))
        .collect();
    w.sort();
    w.windows(2).all(|p| p[0].1 <= p[1].0)
}

/// A request that reported OK did exactly what it says.
fn check_success(
    case: &Case,
    (kind, sector): (u32, u64),
    dev: &Device,
    before: &[u8],
    after: &[u8],
    file: &[u8],
    used: u32,
) -> Result<(), TestCaseError> {
    let readable: Vec<Segment> = case.chain.iter().copied().filter(|s| !s.writable).collect();
    let mut writable: Vec<Segment> = case
        .chain
        .iter()
        .copied()
        .filter(|s| s.writable && s.len > 0)
        .collect();
    // Drop the status byte.
    if let Some(last) = writable.last_mut() {
        last.len -= 1;
    }
    // The data after the header (reads and GET_ID ignore it).
    let data = || {
        let stream = gather(before, &readable).expect("an OK request read its buffers");
        stream[16..].to_vec()
    };
    match kind {
        VIRTIO_BLK_T_IN if disjoint(&case.chain) => {
            let got = gather(after, &writable).expect("an OK read wrote its buffers");
            let off = (sector * SECTOR_SIZE) as usize;
            prop_assert_eq!(used as usize, got.len() + 1);
            prop_assert!(
                got[..] == dev.model[off..off + got.len()],
                "a read returned other bytes"
            );
            prop_assert!(file == dev.model);
        }
        VIRTIO_BLK_T_OUT => {
            let off = (sector * SECTOR_SIZE) as usize;
            let data = data();
            let mut want = dev.model.clone();
            want[off..off + data.len()].copy_from_slice(&data);
            prop_assert!(file == want, "a write changed other bytes than its own");
            prop_assert_eq!(used, 1);
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let mut want = dev.model.clone();
            for r in data().chunks_exact(16) {
                let off = (le64(r) * SECTOR_SIZE) as usize;
                let n = le32(&r[8..]) as usize * SECTOR_SIZE as usize;
                want[off..off + n].fill(0);
            }
            prop_assert!(
                file == want,
                "discard/write-zeroes changed other bytes than its ranges"
            );
            prop_assert_eq!(used, 1);
        }
        VIRTIO_BLK_T_GET_ID if disjoint(&case.chain) => {
            prop_assert!(file == dev.model);
            // Only the first 20 writable bytes are written (and must be in memory).
            let mut first = Vec::new();
            let mut need = 20u32;
            for s in &writable {
                let take = s.len.min(need);
                first.push(Segment { len: take, ..*s });
                need -= take;
            }
            let got = gather(after, &first).unwrap();
            let n = got.len();
            prop_assert!(got[..n] == dev.image.id()[..n]);
            prop_assert_eq!(used as usize, n + 1);
        }
        _ => prop_assert!(file == dev.model),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any header and descriptor chain against a real image (read-write and read-only).
    #[test]
    fn any_request_gets_the_right_status_and_touches_only_its_range(case in case()) {
        run(&case)?;
    }
}

// ---------------------------------------------------------------------------------------
// Regression cases found by the fuzzer (each failed before its fix in request.rs).

fn seg(addr: u64, len: u32, writable: bool) -> Segment {
    Segment {
        addr: GuestAddress(addr),
        len,
        writable,
    }
}

fn put_header(dev: &Device, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    dev.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

fn put_range(dev: &Device, i: u64, sector: u64, num: u32, flags: u32) {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&num.to_le_bytes());
    r[12..16].copy_from_slice(&flags.to_le_bytes());
    dev.mem
        .write_slice(&r, GuestAddress(RANGES + 16 * i))
        .unwrap();
}

/// A write whose status byte lies outside guest memory used to run (the image changed)
/// and then be dropped with used length 0: the driver could not know it happened.
#[test]
fn a_write_without_a_reachable_status_byte_does_not_run() {
    let dev = Device::new(false);
    put_header(&dev, VIRTIO_BLK_T_OUT, 1561);
    let used = handle(
        &dev.mem,
        &dev.image,
        [
            seg(HDR, 16, false),
            seg(0x14a00, 512, false),
            seg(0x10600, u32::MAX, true),
            seg(MEM, 3584, true),
        ],
    );
    assert_eq!(used, 0);
    assert!(dev.file() == dev.model, "the image changed");
}

/// A discard whose second range carries flags used to discard the first range and then
/// answer UNSUPP: a refused request must change nothing.
#[test]
fn a_discard_with_one_bad_range_changes_nothing() {
    let dev = Device::new(false);
    put_header(&dev, VIRTIO_BLK_T_DISCARD, 0);
    put_range(&dev, 0, 1482, 52, 0);
    put_range(&dev, 1, 159, 26, 0xf471_4c0c);
    let used = handle(
        &dev.mem,
        &dev.image,
        [
            seg(HDR, 16, false),
            seg(RANGES, 32, false),
            seg(STATUS, 1, true),
        ],
    );
    assert_eq!(used, 1);
    assert_eq!(
        dev.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_UNSUPP as u8
    );
    assert!(dev.file() == dev.model, "the image changed");
}

/// A zero-length range is nothing to do (it used to fail the whole request with an I/O
/// error from fallocate, after applying the ranges before it).
#[test]
fn an_empty_discard_range_is_a_no_op() {
    let dev = Device::new(false);
    put_header(&dev, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    put_range(&dev, 0, 8, 8, 0);
    put_range(&dev, 1, 100, 0, 0);
    let used = handle(
        &dev.mem,
        &dev.image,
        [
            seg(HDR, 16, false),
            seg(RANGES, 32, false),
            seg(STATUS, 1, true),
        ],
    );
    assert_eq!(used, 1);
    assert_eq!(
        dev.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
    let file = dev.file();
    assert!(file[4096..8192].iter().all(|b| *b == 0));
    assert!(file[..4096] == dev.model[..4096] && file[8192..] == dev.model[8192..]);
}
