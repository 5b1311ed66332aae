//! Whether this host can run a snapshot's guest: the guest keeps the CPUID it booted with, so
//! every feature it was shown must be one this host's CPU and KVM offer, and the vendor must
//! be the same (the kernel chose vendor-specific code paths at boot). Checked before any vCPU
//! is created, so a refusal leaves nothing behind.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// A snapshot's guest needs what this host lacks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuMismatch {
    /// The snapshot was taken on another CPU vendor.
    #[error("this host's CPU vendor is {host}, the snapshot was taken on {saved}: it cannot be restored here")]
    Vendor {
        /// The snapshot's vendor string.
        saved: String,
        /// This host's.
        host: String,
    },
    /// Feature bits the guest was shown are missing here.
    #[error("this host's CPU or KVM lacks features the snapshot's guest uses: CPUID leaf {leaf:#x}.{index} {register} bits {missing:#x}")]
    Features {
        /// CPUID function.
        leaf: u32,
        /// CPUID index (sub-leaf).
        index: u32,
        /// Register name.
        register: &'static str,
        /// Bits set in the snapshot, absent here.
        missing: u32,
    },
}

/// The feature words compared: (leaf, sub-leaf, register, bits not judged: those the CPU
/// sets from control-register or MSR state, and those sm-vmm sets itself, which KVM's
/// supported list does not carry).
const FEATURE_WORDS: &[(u32, u32, &str, u32)] = &[
    // OSXSAVE (27) mirrors CR4.OSXSAVE; sm-vmm sets HYPERVISOR (31).
    (0x1, 0, "ecx", (1 << 27) | (1 << 31)),
    // APIC (9) follows the APIC base MSR's enable bit; sm-vmm sets HTT (28).
    (0x1, 0, "edx", (1 << 9) | (1 << 28)),
    (0x7, 0, "ebx", 0),
    // OSPKE (bit 4) mirrors CR4.PKE.
    (0x7, 0, "ecx", 1 << 4),
    (0x7, 0, "edx", 0),
    (0x7, 1, "eax", 0),
    (0xd, 1, "eax", 0),
    (0x8000_0001, 0, "ecx", 0),
    (0x8000_0001, 0, "edx", 0),
];

fn find(entries: &[kvm_cpuid_entry2], leaf: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == leaf && (e.index == index || index == 0 && e.flags & 1 == 0))
}

fn register(e: &kvm_cpuid_entry2, name: &str) -> u32 {
    match name {
        "eax" => e.eax,
        "ebx" => e.ebx,
        "ecx" => e.ecx,
        _ => e.edx,
    }
}

fn vendor(entries: &[kvm_cpuid_entry2]) -> Option<String> {
    let e = find(entries, 0, 0)?;
    let bytes: Vec<u8> = [e.ebx, e.edx, e.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Refuses a snapshot whose guest CPUID (`saved`, one vCPU's) asks for a vendor or feature
/// bits that this host's supported CPUID (`supported`) does not offer.
pub fn check_cpuid(saved: &[kvm_cpuid_entry2], supported: &CpuId) -> Result<(), CpuMismatch> {
    let host = supported.as_slice();
    if let (Some(saved), Some(host)) = (vendor(saved), vendor(host)) {
        if saved != host {
            return Err(CpuMismatch::Vendor { saved, host });
        }
    }
    for &(leaf, index, name, dynamic) in FEATURE_WORDS {
        let Some(want) = find(saved, leaf, index) else {
            continue;
        };
        let have = find(host, leaf, index).map_or(0, |e| register(e, name));
        let missing = register(want, name) & !have & !dynamic;
        if missing != 0 {
            return Err(CpuMismatch::Features {
                leaf,
                index,
                register: name,
                missing,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if function == 7 || function == 0xd {
                1
            } else {
                0
            },
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// "AuthenticAMD" as leaf 0 spells it (ebx, edx, ecx).
    fn amd() -> kvm_cpuid_entry2 {
        entry(0, 0, [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65])
    }

    fn host(entries: &[kvm_cpuid_entry2]) -> CpuId {
        CpuId::from_entries(entries).unwrap()
    }

    #[test]
    fn the_same_or_a_richer_host_restores() {
        let saved = [
            amd(),
            entry(1, 0, [0, 0, 0b1010, 0b1]),
            entry(7, 0, [0, 0b100, 0, 0]),
        ];
        let richer = host(&[
            amd(),
            entry(1, 0, [0, 0, 0b1111, 0b11]),
            entry(7, 0, [0, 0b110, 0, 0]),
        ]);
        assert_eq!(check_cpuid(&saved, &richer), Ok(()));
        assert_eq!(check_cpuid(&saved, &host(&saved)), Ok(()));
    }

    #[test]
    fn a_missing_feature_is_named_by_leaf_register_and_bits() {
        let saved = [amd(), entry(7, 0, [0, 0b101, 0, 0])];
        let poorer = host(&[amd(), entry(7, 0, [0, 0b001, 0, 0])]);
        let e = check_cpuid(&saved, &poorer).unwrap_err();
        assert_eq!(
            e,
            CpuMismatch::Features {
                leaf: 7,
                index: 0,
                register: "ebx",
                missing: 0b100
            }
        );
        assert_eq!(e.to_string().lines().count(), 1);
    }

    #[test]
    fn bits_that_mirror_control_registers_or_sm_vmm_sets_do_not_count() {
        let saved = [amd(), entry(1, 0, [0, 0, (1 << 27) | (1 << 31), 1 << 28])];
        assert_eq!(
            check_cpuid(&saved, &host(&[amd(), entry(1, 0, [0; 4])])),
            Ok(())
        );
    }

    #[test]
    fn another_vendor_is_refused() {
        let intel = entry(0, 0, [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]);
        let e = check_cpuid(&[amd()], &host(&[intel])).unwrap_err();
        assert!(
            matches!(&e, CpuMismatch::Vendor { saved, host } if saved == "AuthenticAMD" && host == "GenuineIntel"),
            "{e}"
        );
    }
}
