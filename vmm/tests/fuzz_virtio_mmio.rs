//! A hostile guest against sm-vmm's virtio-mmio transport (issue 17), with a recording
//! device behind it: reads and writes of every width (0 to 8 bytes, odd ones included) at
//! every offset of the window and beyond, status sequences in any order, queue sizes above
//! the maximum, features never offered. Exhaustive over offsets 0..0x200 for each width
//! from three starting states, plus random sequences (proptest).
//!
//! The properties: no panic; the device is activated only with features it offered and
//! VERSION_1, with queue sizes within its maxima, and at most once per reset; config space
//! accesses reach the device at their offset with their length; the status register holds
//! only defined bits; a reset (status 0) stops a started device once and brings every
//! register back to its power-on value; and the transport then negotiates normally.
//!
//! Cases come from `PROPTEST_CASES` (small by default); `scripts/fuzz vmm-mmio 10m` runs
//! more.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use sm_test_support::fuzz::config;
use sm_vmm::devices::virtio_mmio::{MmioTransport, QueueConfig, VirtioDevice, VIRTIO_F_VERSION_1};

const ACK: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const NEEDS_RESET: u32 = 0x40;
const FAILED: u32 = 0x80;
const STATUS_BITS: u32 = ACK | DRIVER | DRIVER_OK | FEATURES_OK | NEEDS_RESET | FAILED;

/// What the device offers: VERSION_1 and a few low bits.
const OFFERED: u64 = VIRTIO_F_VERSION_1 | 0b1011 | (1 << 33);
const MAX_SIZES: [u16; 3] = [256, 128, 1];

/// Register offsets of the virtio-mmio layout (version 2).
const REGISTERS: [u64; 30] = [
    0x00, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60, 0x64, 0x70,
    0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4, 0xac, 0xb0, 0xb4, 0xb8, 0xbc, 0xfc, 0x100, 0x1fc,
];

/// Everything the transport asked of the device.
#[derive(Debug, Default)]
struct Log {
    activations: Vec<(u64, Vec<QueueConfig>)>,
    resets: u32,
    config: Vec<(bool, u64, usize)>,
}

/// A device that records; its activation fails when `refuse` is set.
struct Recorder {
    log: Arc<Mutex<Log>>,
    refuse: bool,
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        26
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        MAX_SIZES.to_vec()
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        self.log
            .lock()
            .unwrap()
            .config
            .push((false, offset, data.len()));
        data.fill(0x5a);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .config
            .push((true, offset, data.len()));
    }
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), String> {
        self.log
            .lock()
            .unwrap()
            .activations
            .push((features, queues.to_vec()));
        if self.refuse {
            Err("refused".into())
        } else {
            Ok(())
        }
    }
    fn reset(&mut self) {
        self.log.lock().unwrap().resets += 1;
    }
    fn shared_memory_region(&self, id: u8) -> Option<(u64, u64)> {
        (id == 0).then_some((u64::MAX - 0xfff, u64::MAX))
    }
}

/// A transport in front of a recorder, and its log.
struct Bench {
    t: MmioTransport,
    log: Arc<Mutex<Log>>,
    /// Activations seen since the last reset.
    since_reset: usize,
    checked: usize,
    refuse: bool,
}

impl Bench {
    fn new(refuse: bool) -> Bench {
        let log = Arc::new(Mutex::new(Log::default()));
        let t = MmioTransport::new(Box::new(Recorder {
            log: log.clone(),
            refuse,
        }));
        Bench {
            t,
            log,
            since_reset: 0,
            checked: 0,
            refuse,
        }
    }

    fn rd(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    /// A well-behaved driver's set-up, up to and including DRIVER_OK.
    fn negotiate(&mut self, features: u64) {
        self.wr(0x70, 0);
        self.wr(0x70, ACK);
        self.wr(0x70, ACK | DRIVER);
        self.wr(0x24, 0);
        self.wr(0x20, features as u32);
        self.wr(0x24, 1);
        self.wr(0x20, (features >> 32) as u32);
        self.wr(0x70, ACK | DRIVER | FEATURES_OK);
        for (i, max) in MAX_SIZES.iter().enumerate() {
            self.wr(0x30, i as u32);
            self.wr(0x38, u32::from(*max));
            self.wr(0x80, 0x1000 * (i as u32 + 1));
            self.wr(0x44, 1);
        }
        self.wr(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    }

    /// Every register read through all four bytes, queue registers for each queue (this
    /// writes QueueSel and SHMSel, then puts them back to 0 as a reset leaves them).
    fn registers(&mut self) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for off in (0..0x100).step_by(4) {
            out.push((off, self.rd(off)));
        }
        for q in 0..MAX_SIZES.len() as u32 + 1 {
            self.wr(0x30, q);
            out.push((0x1000 + u64::from(q), self.rd(0x34)));
            out.push((0x2000 + u64::from(q), self.rd(0x44)));
        }
        self.wr(0x30, 0);
        out
    }

    /// The invariants that must hold after any access.
    fn check(&mut self) -> Result<(), TestCaseError> {
        let status = self.rd(0x70);
        prop_assert_eq!(
            status & !STATUS_BITS,
            0,
            "undefined status bits {:#x}",
            status
        );
        let log = self.log.lock().unwrap();
        for (features, queues) in &log.activations[self.checked..] {
            prop_assert_eq!(
                features & !OFFERED,
                0,
                "activated with features never offered"
            );
            prop_assert!(
                features & VIRTIO_F_VERSION_1 != 0,
                "activated without VERSION_1"
            );
            prop_assert_eq!(queues.len(), MAX_SIZES.len());
            for (q, max) in queues.iter().zip(MAX_SIZES) {
                prop_assert_eq!(q.max_size, max);
                prop_assert!(
                    q.size <= max,
                    "queue size {} over its maximum {}",
                    q.size,
                    max
                );
            }
        }
        // (A start that failed may be tried again; one that succeeded only after a reset.)
        if !self.refuse {
            self.since_reset += log.activations.len() - self.checked;
        }
        self.checked = log.activations.len();
        prop_assert!(self.since_reset <= 1, "activated twice without a reset");
        Ok(())
    }

    /// Resets and checks the transport is back at power-on and serves a new driver.
    fn reset_and_renegotiate(&mut self) -> Result<(), TestCaseError> {
        let resets_before = self.log.lock().unwrap().resets;
        let was_active = self.rd(0x60) != 0;
        self.wr(0x70, 0);
        self.since_reset = 0;
        let resets = self.log.lock().unwrap().resets - resets_before;
        prop_assert_eq!(
            resets,
            u32::from(was_active),
            "a started device is stopped once"
        );
        let fresh = Bench::new(false).registers();
        prop_assert_eq!(self.registers(), fresh, "reset left registers changed");
        self.negotiate(VIRTIO_F_VERSION_1 | 0b1);
        self.check()?;
        let log = self.log.lock().unwrap();
        let (features, queues) = log.activations.last().cloned().expect("activated");
        prop_assert_eq!(features, VIRTIO_F_VERSION_1 | 0b1);
        prop_assert_eq!(queues[0].size, 256);
        prop_assert_eq!(queues[0].desc, 0x1000);
        prop_assert!(queues.iter().all(|q| q.ready));
        Ok(())
    }
}

/// Values a hostile driver writes.
const VALUES: [u64; 8] = [
    0,
    1,
    0xffff_ffff,
    0xffff_ffff_ffff_ffff,
    0x8000_0000,
    (FEATURES_OK | DRIVER_OK) as u64,
    0x1_0000,
    0x0102_0304_0506_0708,
];

/// Starting states for the exhaustive sweep.
fn start(state: u8) -> Bench {
    let mut b = Bench::new(false);
    match state {
        0 => {}
        1 => {
            b.wr(0x70, ACK | DRIVER);
            b.wr(0x24, 1);
            b.wr(0x20, 1);
            b.wr(0x70, ACK | DRIVER | FEATURES_OK);
        }
        _ => b.negotiate(VIRTIO_F_VERSION_1 | 0b10),
    }
    b
}

/// Every offset in 0..0x200, every width 0..=8, from reset, features-OK and running states,
/// a read then a write of each edge value; the invariants after each, a reset after all.
#[test]
fn every_width_at_every_offset_in_every_state() {
    for state in 0..3 {
        for width in 0..=8usize {
            let mut b = start(state);
            b.check().unwrap();
            for off in 0..0x200u64 {
                let mut buf = [0xa5u8; 8];
                b.t.read(off, &mut buf[..width]);
                b.check().unwrap();
                if off >= 0x100 {
                    let last = b.log.lock().unwrap().config.last().copied();
                    assert_eq!(
                        last,
                        Some((false, off - 0x100, width)),
                        "config read at {off:#x}"
                    );
                }
                for v in VALUES {
                    b.t.write(off, &v.to_le_bytes()[..width]);
                    b.check().unwrap();
                    if off >= 0x100 {
                        let last = b.log.lock().unwrap().config.last().copied();
                        assert_eq!(
                            last,
                            Some((true, off - 0x100, width)),
                            "config write at {off:#x}"
                        );
                    }
                    // Keep the status where the state put it, to sweep the other registers
                    // from there (writes to 0x70 are fuzzed by the random sequences).
                    if off == 0x70 {
                        b = start(state);
                    }
                }
            }
            b.reset_and_renegotiate().unwrap();
        }
    }
}

/// One access by a hostile driver.
#[derive(Clone, Debug)]
enum Op {
    Read(u64, usize),
    Write(u64, usize, u64),
    /// A status write of any combination of bits.
    Status(u32),
    /// The driver-features words.
    Features(u64),
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => proptest::sample::select(REGISTERS.to_vec()),
        2 => 0u64..0x200,
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (offset(), 0usize..=8).prop_map(|(o, w)| Op::Read(o, w)),
        5 => (offset(), prop_oneof![4 => Just(4usize), 1 => 0usize..=8], prop_oneof![
            3 => proptest::sample::select(VALUES.to_vec()),
            2 => 0u64..1100,
            1 => any::<u64>(),
        ])
            .prop_map(|(o, w, v)| Op::Write(o, w, v)),
        3 => prop_oneof![
            3 => proptest::sample::select(vec![
                0, ACK, ACK | DRIVER, ACK | DRIVER | FEATURES_OK,
                ACK | DRIVER | FEATURES_OK | DRIVER_OK, DRIVER_OK, FEATURES_OK | DRIVER_OK, FAILED,
                NEEDS_RESET,
            ]),
            1 => any::<u32>(),
        ].prop_map(Op::Status),
        2 => prop_oneof![
            Just(VIRTIO_F_VERSION_1),
            Just(VIRTIO_F_VERSION_1 | 0b1),
            Just(OFFERED),
            Just(u64::MAX),
            Just(0b1011),
            any::<u64>(),
        ].prop_map(Op::Features),
    ]
}

fn apply(b: &mut Bench, op: &Op) {
    match *op {
        Op::Read(off, w) => {
            let mut buf = [0u8; 8];
            b.t.read(off, &mut buf[..w]);
        }
        Op::Write(off, w, v) => {
            b.t.write(off, &v.to_le_bytes()[..w]);
            if off == 0x70 && w == 4 && v as u32 == 0 {
                b.since_reset = 0;
            }
        }
        Op::Status(s) => {
            b.wr(0x70, s);
            if s == 0 {
                b.since_reset = 0;
            }
        }
        Op::Features(f) => {
            b.wr(0x24, 0);
            b.wr(0x20, f as u32);
            b.wr(0x24, 1);
            b.wr(0x20, (f >> 32) as u32);
        }
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Random access sequences, the invariants after each, then a reset and a clean
    /// negotiation; the same against a device whose activation fails.
    #[test]
    fn random_access_sequences_keep_the_invariants(
        ops in proptest::collection::vec(op(), 0..40),
        refuse in prop::bool::weighted(0.1),
    ) {
        let mut b = Bench::new(refuse);
        for op in &ops {
            apply(&mut b, op);
            b.check()?;
        }
        if refuse {
            b.wr(0x70, 0);
            b.since_reset = 0;
            b.negotiate(VIRTIO_F_VERSION_1);
            prop_assert_ne!(b.rd(0x70) & NEEDS_RESET, 0, "a failed start asks for a reset");
            prop_assert_eq!(b.rd(0x60), 0, "a device that failed to start is not running");
        } else {
            b.reset_and_renegotiate()?;
        }
    }
}

/// Found by `random_access_sequences_keep_the_invariants`: features written after the
/// transport accepted FEATURES_OK were not checked again, so DRIVER_OK started the device
/// with bits it never offered (here all 64).
#[test]
fn features_written_after_features_ok_do_not_reach_the_device() {
    let mut b = Bench::new(false);
    b.wr(0x24, 1);
    b.wr(0x20, 1); // VERSION_1
    b.wr(0x70, ACK | DRIVER | FEATURES_OK);
    assert_ne!(b.rd(0x70) & FEATURES_OK, 0);
    b.wr(0x24, 0);
    b.wr(0x20, u32::MAX);
    b.wr(0x24, 1);
    b.wr(0x20, u32::MAX);
    b.wr(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    let log = b.log.lock().unwrap();
    assert_eq!(log.activations.len(), 1);
    assert_eq!(log.activations[0].0, VIRTIO_F_VERSION_1);
}
