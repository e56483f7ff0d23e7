//! `--disk`: each image becomes a virtio-blk device on the PCI root, with MSI-X and INTA# on a
//! level-triggered GSI (the backend's, or a replay's).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use log::info;
use vmkit_devices::pci::PciRoot;
use vmkit_devices::virtio::block::BlockStats;
use vmkit_devices::virtio::{VirtioPciInterrupts, VirtioPciStats};
use vmkit_devices::{DiskBackend, DiskImage, VirtioBlock, VirtioPciDevice};
use vmkit_memory::Allocators;
use vmkit_memory::vm_memory::GuestMemoryMmap;

use crate::cli::{DiskConfig, MAX_DISKS};
use crate::devices::{Disk, Wiring};

type BlockDevice = VirtioPciDevice<VirtioBlock<Box<dyn DiskBackend>>>;

/// The disks on the PCI bus, kept for their statistics.
pub struct Disks {
    devices: Vec<(String, Arc<Mutex<BlockDevice>>)>,
    intx: Vec<(u8, u32)>,
}

/// Opens and locks every image, before anything boots: a missing, unreadable, locked or
/// wrongly sized image, or one that is neither a regular file nor a block device, is an error
/// naming it.
pub fn open_images(configs: &[DiskConfig]) -> Result<Vec<DiskImage>> {
    if configs.len() > MAX_DISKS {
        bail!(
            "--disk: {} disks given, at most {MAX_DISKS} fit the PCI bus",
            configs.len()
        );
    }
    configs
        .iter()
        .map(|c| {
            crate::files::check_disk(&c.path).context("--disk")?;
            DiskImage::open(&c.path, c.readonly).context("--disk")
        })
        .collect()
}

/// Plugs one virtio-blk device per disk into `root`, named `vda`, `vdb`, … in order, with its
/// BAR assigned below 4 GiB. Each gets MSI-X and, while the allocator has GSIs, an INTA# line
/// of its own (beyond that, MSI-X only), both from `wiring`, which also says where virtio-blk
/// records its guest-memory accesses.
pub fn attach(
    root: &PciRoot,
    disks: Vec<Disk>,
    memory: &GuestMemoryMmap,
    wiring: &dyn Wiring,
    allocators: &mut Allocators,
) -> Result<Disks> {
    let mut devices = Vec::with_capacity(disks.len());
    let mut intx_routes = Vec::new();
    for (index, disk) in disks.into_iter().enumerate() {
        let name = disk_name(index);
        let gsi = allocators.allocate_gsi().ok();
        let intx = gsi.map(|gsi| wiring.line(gsi));
        if gsi.is_none() {
            info!("{name}: no GSI left for INTA#; MSI-X only");
        }
        let interrupts = VirtioPciInterrupts {
            intx,
            // The GSIs handed out are IOAPIC pins (16..=23), so they fit the register.
            intx_line: gsi.map_or(0xFF, |gsi| gsi as u8),
            msi: Some(wiring.msi()),
        };
        let path = disk.path;
        let mut block = VirtioBlock::new(disk.backend);
        if let Some(recorder) = wiring.block_recorder() {
            block = block.with_recorder(recorder);
        }
        let device = VirtioPciDevice::new(block, memory.clone(), interrupts)
            .with_context(|| format!("--disk {path}"))?;
        let device = Arc::new(Mutex::new(device));
        let slot = root
            .add_device(&name, device.clone(), allocators)
            .with_context(|| format!("--disk {path}: cannot plug it into the PCI bus"))?;
        info!("{name}: {path} at PCI 00:{slot:02x}.0");
        if let Some(gsi) = gsi {
            intx_routes.push((slot, gsi));
        }
        devices.push((name, device));
    }
    Ok(Disks {
        devices,
        intx: intx_routes,
    })
}

/// `vda`, `vdb`, …, `vdz`, `vdaa`, … as Linux names virtio disks.
fn disk_name(index: usize) -> String {
    let mut suffix = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        suffix.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    suffix.reverse();
    format!("vd{}", String::from_utf8_lossy(&suffix))
}

impl Disks {
    /// The INTA# line of each disk that has one: `(PCI device number, GSI)`, for the firmware
    /// tables' interrupt routing.
    pub fn intx_routes(&self) -> &[(u8, u32)] {
        &self.intx
    }

    /// Each disk's counters, in order (`vda` first); a disk whose lock a thread still holds at
    /// `deadline` (one that did not stop) has none: it is busy.
    pub fn stats(&self, deadline: Instant) -> Vec<DiskStats> {
        self.devices
            .iter()
            .map(|(name, device)| DiskStats {
                name: name.clone(),
                counters: crate::lifecycle::lock_until(device, deadline).map(|device| {
                    DiskCounters {
                        block: device.device().stats(),
                        transport: device.stats(),
                    }
                }),
            })
            .collect()
    }
}

/// One disk's statistics (`--stats`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskStats {
    /// `vda`, `vdb`, …
    pub name: String,
    /// `None` when the disk was busy: held by a thread that did not stop.
    pub counters: Option<DiskCounters>,
}

/// A disk's request and transport counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// The virtio-blk device's requests and bytes.
    pub block: BlockStats,
    /// The virtio-pci transport's notifications and interrupts.
    pub transport: VirtioPciStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_named_as_linux_names_them() {
        let names: Vec<String> = [0, 1, 25, 26, 27, 30].map(disk_name).to_vec();
        assert_eq!(names, ["vda", "vdb", "vdz", "vdaa", "vdab", "vdae"]);
    }

    #[test]
    fn too_many_disks_are_refused_before_any_is_opened() {
        let configs = vec![
            DiskConfig {
                path: "/nonexistent".into(),
                readonly: false,
            };
            MAX_DISKS + 1
        ];
        let err = open_images(&configs).err().unwrap();
        assert!(err.to_string().contains("at most 31"), "{err}");
    }
}
