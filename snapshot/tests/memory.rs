//! Guest memory saved as a sparse file and restored into a fresh memfd, with real memfds.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use nix::sys::memfd::{memfd_create, MFdFlags};
use sm_snapshot::{restore_memory, save_memory, MemoryRegion};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn memfd(len: u64) -> File {
    let fd = memfd_create(c"test-guest-ram", MFdFlags::MFD_CLOEXEC).expect("memfd_create");
    let file = File::from(fd);
    file.set_len(len).expect("size the memfd");
    file
}

/// Bytes actually allocated to a file (st_blocks is in 512-byte units).
fn allocated(file: &File) -> u64 {
    file.metadata().expect("stat").blocks() * 512
}

/// Reads both files in 1 MiB chunks and asserts they are equal byte for byte.
fn assert_same_content(a: &File, b: &File, len: u64) {
    let mut buf_a = vec![0u8; MIB as usize];
    let mut buf_b = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(MIB) as usize;
        a.read_exact_at(&mut buf_a[..n], off).expect("read a");
        b.read_exact_at(&mut buf_b[..n], off).expect("read b");
        assert!(
            buf_a[..n] == buf_b[..n],
            "content differs in the MiB at {off:#x}"
        );
        off += n as u64;
    }
}

/// Scattered pages of a 256 MiB guest: one at the start, one straddling nothing in particular,
/// one in each region's middle, one on the last page; plus a page written with zeros.
fn populated_guest() -> (File, Vec<(u64, Vec<u8>)>) {
    let ram = memfd(256 * MIB);
    let pages: Vec<(u64, Vec<u8>)> = [
        0,
        3 * MIB + 5 * PAGE,
        100 * MIB,
        200 * MIB + PAGE,
        256 * MIB - PAGE,
    ]
    .iter()
    .enumerate()
    .map(|(i, &off)| (off, vec![0xA0 + i as u8; PAGE as usize]))
    .collect();
    for (off, bytes) in &pages {
        ram.write_all_at(bytes, *off).expect("write a page");
    }
    // Populated in the memfd but all zeros: a saved file need not store it.
    ram.write_all_at(&[0u8; PAGE as usize], 50 * MIB)
        .expect("write zeros");
    (ram, pages)
}

/// Two regions covering the whole memfd, as a VM with RAM below and above a hole would have.
fn regions() -> Vec<MemoryRegion> {
    vec![
        MemoryRegion {
            guest_addr: 0,
            size: 128 * MIB,
            file_offset: 0,
        },
        MemoryRegion {
            guest_addr: 4 << 30,
            size: 128 * MIB,
            file_offset: 128 * MIB,
        },
    ]
}

#[test]
fn saved_memory_is_sparse_and_restores_byte_for_byte_into_an_independent_memfd() {
    let (ram, pages) = populated_guest();
    let dir = tempfile::tempdir().expect("tempdir");
    let saved_path = dir.path().join("memory");
    let saved = File::create_new(&saved_path).expect("create the memory file");
    let written = save_memory(&ram, &regions(), &saved).expect("save_memory");
    drop(saved);

    assert_eq!(
        written,
        pages.len() as u64 * PAGE,
        "only the non-zero pages are written"
    );
    let saved = File::open(&saved_path).expect("open the memory file");
    assert_eq!(
        saved.metadata().unwrap().len(),
        256 * MIB,
        "the file is as long as the memfd"
    );
    let on_disk = allocated(&saved);
    println!("256 MiB guest, 5 pages written: the memory file takes {on_disk} bytes on disk");
    assert!(
        on_disk <= 1024 * 1024,
        "a 256 MiB guest with 5 pages written takes {on_disk} bytes on disk"
    );
    assert_same_content(&ram, &saved, 256 * MIB);

    let clone = restore_memory(&saved).expect("restore_memory");
    assert_eq!(clone.metadata().unwrap().len(), 256 * MIB);
    assert!(
        allocated(&clone) <= 1024 * 1024,
        "the restored memfd populates only the saved pages, not {} bytes",
        allocated(&clone)
    );
    assert_same_content(&ram, &clone, 256 * MIB);

    // The clone is its own memory: writing it changes neither the source nor the file.
    let (off, original) = &pages[2];
    clone
        .write_all_at(&[0x55; PAGE as usize], *off)
        .expect("write the clone");
    let mut page = vec![0u8; PAGE as usize];
    ram.read_exact_at(&mut page, *off).unwrap();
    assert_eq!(
        &page, original,
        "a write to the clone reached the source memfd"
    );
    saved.read_exact_at(&mut page, *off).unwrap();
    assert_eq!(
        &page, original,
        "a write to the clone reached the snapshot file"
    );

    // A second clone of the same file starts from the snapshot, not from the first clone.
    let second = restore_memory(&saved).expect("restore_memory again");
    second.read_exact_at(&mut page, *off).unwrap();
    assert_eq!(&page, original);
}

#[test]
fn memory_outside_the_regions_is_not_saved() {
    let (ram, pages) = populated_guest();
    let dir = tempfile::tempdir().expect("tempdir");
    let saved = File::create_new(dir.path().join("memory")).expect("create");
    // Only the first 64 MiB: the pages at 0 and 3 MiB + 5 pages.
    let low = [MemoryRegion {
        guest_addr: 0,
        size: 64 * MIB,
        file_offset: 0,
    }];
    let written = save_memory(&ram, &low, &saved).expect("save_memory");
    assert_eq!(written, 2 * PAGE);
    assert_eq!(saved.metadata().unwrap().len(), 64 * MIB);
    let mut page = vec![0u8; PAGE as usize];
    saved.read_exact_at(&mut page, pages[1].0).unwrap();
    assert_eq!(page, pages[1].1);
}
