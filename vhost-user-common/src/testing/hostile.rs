//! Hostile descriptor tables for the backends' fuzz tests (issue 17): what a guest that
//! owns the split ring can publish, raw. Chains that loop or point past the table, indirect
//! tables nested, misaligned, empty or longer than the queue, buffers outside guest memory
//! or straddling its end, zero and 4 GiB lengths, heads past the queue size, and an avail
//! index far ahead of what the guest really put in the ring.

use proptest::prelude::*;

use super::{avail_addr, desc_addr, GuestMemory, TestFrontend, DATA, MEM_SIZE, QUEUE_SIZE};

/// VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT.
const FLAGS: [u16; 3] = [1, 2, 4];
/// Where an indirect table of the case lies (any descriptor may point there, or anywhere).
pub const INDIRECT: u64 = 0x30_0000;

/// One descriptor as the guest writes it.
#[derive(Debug, Clone, Copy)]
pub struct RawDesc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// NEXT, WRITE and INDIRECT bits (and any other).
    pub flags: u16,
    /// The next descriptor's index.
    pub next: u16,
}

impl RawDesc {
    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// What one case publishes on a queue.
#[derive(Debug, Clone)]
pub struct HostileRing {
    /// The descriptor table (at most [`QUEUE_SIZE`] entries).
    pub table: Vec<RawDesc>,
    /// The indirect table at [`INDIRECT`].
    pub indirect: Vec<RawDesc>,
    /// The bytes at [`DATA`] (a request the device may parse).
    pub data: Vec<u8>,
    /// The heads put in the avail ring.
    pub heads: Vec<u16>,
    /// How far the avail index moves: usually `heads.len()`, sometimes a lie.
    pub advance: u16,
}

/// An address: inside the buffers, at the tables, near or past the end of guest memory,
/// or anywhere.
fn addr() -> impl Strategy<Value = u64> {
    let end = MEM_SIZE as u64;
    prop_oneof![
        4 => (0..0x1000u64).prop_map(|o| DATA + o),
        2 => Just(INDIRECT),
        1 => Just(desc_addr(0)),
        1 => (0..0x40u64).prop_map(move |o| end - o),
        1 => (0..0x1000u64).prop_map(move |o| end + o),
        1 => Just(u64::MAX - 7),
        1 => any::<u64>(),
    ]
}

/// A length: small, a page, zero, not a multiple of 16, or huge.
fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 1..=0x1000u32,
        1 => Just(0),
        1 => (1..=16u32).prop_map(|n| n * 16),
        1 => Just(QUEUE_SIZE as u32 * 16 + 16),
        1 => Just(u32::MAX),
        1 => any::<u32>(),
    ]
}

/// Any mix of the three flags, sometimes with unknown bits too.
fn flags() -> impl Strategy<Value = u16> {
    prop_oneof![
        6 => proptest::sample::subsequence(FLAGS.to_vec(), 0..=3)
            .prop_map(|f| f.into_iter().fold(0, |a, b| a | b)),
        1 => any::<u16>(),
    ]
}

/// A next index: usually inside the table (loops included), sometimes past it.
fn next() -> impl Strategy<Value = u16> {
    prop_oneof![
        6 => 0..QUEUE_SIZE,
        1 => QUEUE_SIZE..QUEUE_SIZE * 2,
        1 => any::<u16>(),
    ]
}

fn desc() -> impl Strategy<Value = RawDesc> {
    (addr(), len(), flags(), next()).prop_map(|(addr, len, flags, next)| RawDesc {
        addr,
        len,
        flags,
        next,
    })
}

/// A hostile ring whose buffers at [`DATA`] hold what `data` generates (a request the
/// device parses, so chains get past the header as often as not).
pub fn hostile_ring(data: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = HostileRing> {
    let heads =
        proptest::collection::vec(prop_oneof![6 => 0..QUEUE_SIZE, 1 => any::<u16>()], 1..=8);
    (
        proptest::collection::vec(desc(), 1..=QUEUE_SIZE as usize),
        proptest::collection::vec(desc(), 0..=QUEUE_SIZE as usize + 2),
        data,
        heads,
        prop_oneof![8 => Just(None), 1 => any::<u16>().prop_map(Some)],
    )
        .prop_map(|(table, indirect, data, heads, lie)| HostileRing {
            advance: lie.unwrap_or(heads.len() as u16),
            table,
            indirect,
            data,
            heads,
        })
}

impl TestFrontend {
    /// Writes `ring` into guest memory as queue `q`'s descriptor table, indirect table,
    /// request bytes and avail ring, moves the avail index and kicks, without waiting.
    pub fn publish_hostile(&mut self, mem: &GuestMemory, q: usize, ring: &HostileRing) {
        let table: Vec<u8> = ring.table.iter().flat_map(RawDesc::bytes).collect();
        mem.write(desc_addr(q), &table);
        let indirect: Vec<u8> = ring.indirect.iter().flat_map(RawDesc::bytes).collect();
        mem.write(INDIRECT, &indirect);
        mem.write(DATA, &ring.data[..ring.data.len().min(0x1000)]);
        let queue = &mut self.queues[q];
        for (i, head) in ring.heads.iter().enumerate() {
            let slot = u64::from(queue.next_avail.wrapping_add(i as u16) % QUEUE_SIZE);
            mem.write(avail_addr(q) + 4 + 2 * slot, &head.to_le_bytes());
        }
        queue.next_avail = queue.next_avail.wrapping_add(ring.advance);
        mem.write(avail_addr(q) + 2, &queue.next_avail.to_le_bytes());
        queue.kick.write(1).expect("kick");
    }
}
