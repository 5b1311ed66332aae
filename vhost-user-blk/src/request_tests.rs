//! Request parsing and bounds, against guest memory and an image in a temporary directory.

use super::*;
use crate::image::ImageOptions;
use vm_memory::GuestMemoryMmap;

const MEM: u64 = 1 << 20;
const HDR: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x8000;

struct Fixture {
    mem: GuestMemoryMmap,
    image: Image,
    _dir: tempfile::TempDir,
}

fn fixture(read_only: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.img");
    if read_only {
        std::fs::write(&path, vec![0x5a; 1 << 20]).unwrap();
    }
    let image = Image::open(&ImageOptions {
        path,
        size_mib: None,
        default_size_mib: 1,
        read_only,
    })
    .unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    Fixture {
        mem,
        image,
        _dir: dir,
    }
}

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

fn ro(addr: u64, len: u32) -> Segment {
    Segment {
        addr: GuestAddress(addr),
        len,
        writable: false,
    }
}

fn wr(addr: u64, len: u32) -> Segment {
    Segment {
        addr: GuestAddress(addr),
        len,
        writable: true,
    }
}

fn status(mem: &GuestMemoryMmap) -> u32 {
    mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap().into()
}

impl Fixture {
    fn run(&self, kind: u32, sector: u64, data: Segment) -> (u32, u32) {
        header(&self.mem, kind, sector);
        let used = handle(&self.mem, &self.image, [ro(HDR, 16), data, wr(STATUS, 1)]);
        (used, status(&self.mem))
    }
}

#[test]
fn write_then_read_round_trips() {
    let f = fixture(false);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    f.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    assert_eq!(
        f.run(VIRTIO_BLK_T_OUT, 8, ro(DATA, 4096)),
        (1, VIRTIO_BLK_S_OK)
    );
    f.mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
    assert_eq!(
        f.run(VIRTIO_BLK_T_IN, 8, wr(DATA, 4096)),
        (4097, VIRTIO_BLK_S_OK)
    );
    let mut back = vec![0u8; 4096];
    f.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern);
    assert_eq!(
        f.run(VIRTIO_BLK_T_FLUSH, 0, wr(DATA, 0)),
        (1, VIRTIO_BLK_S_OK)
    );
}

#[test]
fn any_layout_header_data_status_in_one_buffer() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    f.mem
        .write_slice(&[9u8; 512], GuestAddress(HDR + 16))
        .unwrap();
    // Header and data share one readable descriptor; status shares a writable one.
    let used = handle(&f.mem, &f.image, [ro(HDR, 16 + 512), wr(STATUS - 7, 8)]);
    assert_eq!((used, status(&f.mem)), (1, VIRTIO_BLK_S_OK));
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let used = handle(
        &f.mem,
        &f.image,
        [ro(HDR, 16), wr(DATA, 512), wr(STATUS, 1)],
    );
    assert_eq!(used, 513);
    assert_eq!(f.mem.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(), 9);
}

#[test]
fn out_of_range_and_overflowing_sectors_fail() {
    let f = fixture(false);
    let last = (1 << 20) / 512 - 1;
    assert_eq!(
        f.run(VIRTIO_BLK_T_IN, last, wr(DATA, 512)).1,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_IN, last, wr(DATA, 1024)).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_OUT, last + 1, ro(DATA, 512)).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_IN, u64::MAX, wr(DATA, 512)).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_IN, u64::MAX / 512, wr(DATA, 512)).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(f.image.capacity(), 1 << 20, "the file must not grow");
}

#[test]
fn unaligned_and_oversized_requests_fail() {
    let f = fixture(false);
    assert_eq!(
        f.run(VIRTIO_BLK_T_IN, 0, wr(DATA, 100)).1,
        VIRTIO_BLK_S_IOERR
    );
    // A descriptor claiming 4 GiB: refused before any memory is touched.
    assert_eq!(
        f.run(VIRTIO_BLK_T_IN, 0, wr(DATA, u32::MAX)).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_OUT, 0, ro(DATA, 1 << 31)).1,
        VIRTIO_BLK_S_IOERR
    );
}

#[test]
fn buffers_outside_guest_memory_fail() {
    let f = fixture(false);
    assert_eq!(
        f.run(VIRTIO_BLK_T_IN, 0, wr(MEM - 256, 512)).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_OUT, 0, ro(u64::MAX - 100, 512)).1,
        VIRTIO_BLK_S_IOERR
    );
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    // The status byte itself is outside memory: nothing to report, nothing written.
    assert_eq!(handle(&f.mem, &f.image, [ro(HDR, 16), wr(MEM + 10, 1)]), 0);
    // The header is outside memory.
    assert_eq!(
        handle(&f.mem, &f.image, [ro(MEM * 4, 16), wr(STATUS, 1)]),
        1
    );
    assert_eq!(status(&f.mem), VIRTIO_BLK_S_IOERR);
}

#[test]
fn malformed_chains_are_dropped_or_refused() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    assert_eq!(handle(&f.mem, &f.image, []), 0);
    assert_eq!(handle(&f.mem, &f.image, [ro(HDR, 16)]), 0, "no status byte");
    assert_eq!(
        handle(&f.mem, &f.image, [wr(STATUS, 1), ro(HDR, 16)]),
        0,
        "readable after writable"
    );
    let long: Vec<Segment> = std::iter::once(ro(HDR, 16))
        .chain((0..MAX_DESCRIPTORS).map(|_| wr(DATA, 512)))
        .collect();
    assert_eq!(handle(&f.mem, &f.image, long), 0, "too many descriptors");
    assert_eq!(
        handle(&f.mem, &f.image, [ro(HDR, 8), wr(STATUS, 1)]),
        1,
        "short header"
    );
    assert_eq!(status(&f.mem), VIRTIO_BLK_S_IOERR);
    header(&f.mem, 0x7777, 0);
    assert_eq!(handle(&f.mem, &f.image, [ro(HDR, 16), wr(STATUS, 1)]), 1);
    assert_eq!(status(&f.mem), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn read_only_refuses_writes_but_reads() {
    let f = fixture(true);
    assert_eq!(
        f.run(VIRTIO_BLK_T_OUT, 0, ro(DATA, 512)).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_WRITE_ZEROES, 0, ro(DATA, 16)).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_DISCARD, 0, ro(DATA, 16)).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(f.run(VIRTIO_BLK_T_FLUSH, 0, wr(DATA, 0)).1, VIRTIO_BLK_S_OK);
    assert_eq!(
        f.run(VIRTIO_BLK_T_IN, 0, wr(DATA, 512)),
        (513, VIRTIO_BLK_S_OK)
    );
    assert_eq!(f.mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0x5a);
}

#[test]
fn get_id_fills_twenty_bytes() {
    let f = fixture(false);
    assert_eq!(
        f.run(VIRTIO_BLK_T_GET_ID, 0, wr(DATA, 20)),
        (21, VIRTIO_BLK_S_OK)
    );
    let mut id = [0u8; 20];
    f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, f.image.id());
    assert!(id.starts_with(b"sm"));
}

fn range(mem: &GuestMemoryMmap, i: u64, sector: u64, num: u32, flags: u32) {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&num.to_le_bytes());
    r[12..16].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&r, GuestAddress(DATA + 16 * i)).unwrap();
}

#[test]
fn discard_and_write_zeroes_ranges() {
    let f = fixture(false);
    f.mem
        .write_slice(&[0xeeu8; 8192], GuestAddress(0x10000))
        .unwrap();
    assert_eq!(
        f.run(VIRTIO_BLK_T_OUT, 0, ro(0x10000, 8192)).1,
        VIRTIO_BLK_S_OK
    );
    range(&f.mem, 0, 0, 8, 0);
    range(&f.mem, 1, 8, 8, 0);
    assert_eq!(
        f.run(VIRTIO_BLK_T_DISCARD, 0, ro(DATA, 32)).1,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_IN, 0, wr(0x10000, 8192)).1,
        VIRTIO_BLK_S_OK
    );
    let mut back = vec![1u8; 8192];
    f.mem.read_slice(&mut back, GuestAddress(0x10000)).unwrap();
    assert!(back.iter().all(|b| *b == 0));

    range(&f.mem, 0, 0, 8, 1);
    assert_eq!(
        f.run(VIRTIO_BLK_T_DISCARD, 0, ro(DATA, 16)).1,
        VIRTIO_BLK_S_UNSUPP,
        "unmap flag on discard"
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_WRITE_ZEROES, 0, ro(DATA, 16)).1,
        VIRTIO_BLK_S_OK
    );
    range(&f.mem, 0, 0, 8, 2);
    assert_eq!(
        f.run(VIRTIO_BLK_T_WRITE_ZEROES, 0, ro(DATA, 16)).1,
        VIRTIO_BLK_S_UNSUPP
    );
    range(&f.mem, 0, 2040, 16, 0);
    assert_eq!(
        f.run(VIRTIO_BLK_T_WRITE_ZEROES, 0, ro(DATA, 16)).1,
        VIRTIO_BLK_S_IOERR,
        "past the end"
    );
    range(&f.mem, 0, 0, MAX_RANGE_SECTORS + 1, 0);
    assert_eq!(
        f.run(VIRTIO_BLK_T_DISCARD, 0, ro(DATA, 16)).1,
        VIRTIO_BLK_S_IOERR
    );
    range(&f.mem, 0, u64::MAX / 2, 8, 0);
    assert_eq!(
        f.run(VIRTIO_BLK_T_DISCARD, 0, ro(DATA, 16)).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_DISCARD, 0, ro(DATA, 20)).1,
        VIRTIO_BLK_S_IOERR,
        "not a multiple of 16"
    );
    assert_eq!(
        f.run(VIRTIO_BLK_T_DISCARD, 0, ro(DATA, 0)).1,
        VIRTIO_BLK_S_IOERR,
        "no ranges"
    );
    let too_many = 16 * (MAX_RANGE_SEGMENTS + 1);
    assert_eq!(
        f.run(VIRTIO_BLK_T_DISCARD, 0, ro(DATA, too_many)).1,
        VIRTIO_BLK_S_IOERR
    );
}
