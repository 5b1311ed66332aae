//! `sm-vmm` is the minimal virtual machine monitor of sm: it owns the KVM VM, its vCPUs and
//! the guest memory, and nothing else with real work behind it. It boots a stock Linux kernel
//! (bzImage, 64-bit boot protocol) with an initramfs, describes the machine to the guest with
//! ACPI tables, and emulates only what a Linux guest needs to boot quickly: two 8250 UARTs
//! (COM1 for the console / command stdout, COM2 for command stderr), a CMOS RTC, and the ACPI
//! sleep/reset registers. Devices with real work behind them are vhost-user backends in their
//! own processes (see docs/architecture.md); a backend's shared memory regions (the virtio-fs DAX
//! window) become guest-physical windows above RAM that the backend fills with file mappings.

pub mod acpi;
pub mod api;
pub mod boot;
pub mod cli;
pub mod config;
pub mod console;
pub mod devices;
pub mod initcfg;
pub mod kvm;
pub mod layout;
pub mod memory;
pub mod notify;
pub mod persist;
pub mod snapshot;
pub mod vcpu;
pub mod vhost_user;
pub mod vm;
