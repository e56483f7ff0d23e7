//! The machine description and the guest image: ACPI and SMBIOS tables that say what the VMM
//! composed, the image loaded by the boot protocol its bytes name, and the boot vCPU's entry
//! state.
//!
//! Every number the tables carry comes from the crate that owns it (vmkit-memory's layout,
//! vmkit-devices' ports and interrupts), so the tables cannot disagree with the devices.

use anyhow::{Context, Result, bail};
use log::{info, warn};
use vmkit_boot::acpi::{
    I8042, InterruptOverride, IoApic, IsaDevice, PciHostBridge, PciInterruptPin, PciInterruptRoute,
    PowerRegisters,
};
use vmkit_boot::elf::ElfImage;
use vmkit_boot::{
    AcpiPlatform, ImageFormat, LinuxConfig, PvhConfig, SmbiosDescription, build_boot_page_tables,
    detect_image, load_bzimage, load_pvh, write_acpi_tables, write_smbios_tables,
};
use vmkit_devices::acpi_pm::{
    RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT,
};
use vmkit_devices::cmos::{CMOS_BANK0_PORT_LEN, CMOS_PORT, RTC_IRQ};
use vmkit_devices::i8042::{I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_KEYBOARD_IRQ};
use vmkit_devices::serial::{COM1_IRQ, COM1_PORT, SERIAL_PORT_LEN};
use vmkit_memory::layout::{IOAPIC_START, LAPIC_START, PCI_ECAM_SIZE, PCI_ECAM_START};
use vmkit_memory::vm_memory::{GuestAddress, GuestMemoryMmap};
use vmkit_memory::{GuestLayout, PortRange};
use vmkit_paging::{PageSize, PageSizes};
use vmkit_vcpu::LongModeEntry;

/// The OEM table id of every ACPI table: names this VMM.
const OEM_TABLE_ID: &str = "VMKITREF";

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The PVH entry: 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
    Pvh {
        /// The entry point.
        entry: GuestAddress,
        /// The address of `hvm_start_info`.
        start_info: GuestAddress,
    },
    /// The 64-bit entry of the Linux boot protocol.
    LongMode(LongModeEntry),
}

/// What the machine has, as the ACPI tables must describe it.
pub struct Machine<'a> {
    /// The guest's layout (windows, RAM size).
    pub layout: &'a GuestLayout,
    /// Number of vCPUs.
    pub vcpus: usize,
    /// Whether COM1 exists (`--serial off` removes it).
    pub com1: bool,
    /// INTA# of each PCI device on bus 0 that has one: `(device number, GSI)`.
    pub pci_intx: Vec<(u8, u32)>,
}

/// The ACPI description of `machine`.
pub fn acpi_platform(machine: &Machine<'_>) -> AcpiPlatform {
    let layout = machine.layout;
    let mmio32 = layout.mmio32_window();
    AcpiPlatform {
        oem_table_id: OEM_TABLE_ID.to_string(),
        vcpus: machine.vcpus,
        // Both APICs sit below 4 GiB in every layout.
        local_apic_address: LAPIC_START as u32,
        ioapic: IoApic {
            id: 0,
            address: IOAPIC_START as u32,
            gsi_base: 0,
        },
        // KVM's default routing sends GSI n to IOAPIC pin n, the PIT's IRQ 0 included (a PC
        // wires it to pin 2); the override says so instead of letting a guest assume the PC's.
        interrupt_overrides: vec![InterruptOverride::new(0, 0)],
        power: PowerRegisters {
            sleep_control_port: SLEEP_CONTROL_PORT,
            sleep_status_port: SLEEP_STATUS_PORT,
            reset_port: RESET_PORT,
            reset_value: RESET_VALUE,
            s5_sleep_type: S5_SLEEP_TYPE,
        },
        serial_ports: if machine.com1 {
            vec![IsaDevice {
                ports: PortRange::new(COM1_PORT, SERIAL_PORT_LEN),
                irq: COM1_IRQ,
            }]
        } else {
            Vec::new()
        },
        i8042: Some(I8042 {
            data_port: I8042_DATA_PORT,
            command_port: I8042_COMMAND_PORT,
            irq: I8042_KEYBOARD_IRQ,
        }),
        rtc: Some(IsaDevice {
            ports: PortRange::new(CMOS_PORT, CMOS_BANK0_PORT_LEN),
            irq: RTC_IRQ,
        }),
        pci: Some(PciHostBridge {
            segment: 0,
            // Every bus the ECAM window holds (1 MiB of configuration space each).
            buses: 0..=((PCI_ECAM_SIZE >> 20) - 1) as u8,
            ecam_base: PCI_ECAM_START,
            io_windows: vec![layout.pio_window()],
            mmio32_window: mmio32,
            mmio64_window: Some(layout.mmio64_window()),
            interrupt_routes: machine
                .pci_intx
                .iter()
                .map(|&(device, gsi)| PciInterruptRoute {
                    device,
                    pin: PciInterruptPin::IntA,
                    gsi,
                })
                .collect(),
        }),
    }
}

/// Writes the ACPI tables and the SMBIOS tables of `machine`; returns the RSDP's address.
pub fn write_firmware_tables(guest_mem: &GuestMemoryMmap, machine: &Machine<'_>) -> Result<u64> {
    let acpi = write_acpi_tables(guest_mem, &acpi_platform(machine))
        .context("cannot write the ACPI tables")?;
    let smbios = SmbiosDescription {
        bios_vendor: "vmkit".to_string(),
        bios_version: env!("CARGO_PKG_VERSION").to_string(),
        manufacturer: "vmkit".to_string(),
        product_name: "reference-vmm".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        vcpus: machine.vcpus,
        ram_size: machine.layout.ram_size(),
        ..SmbiosDescription::default()
    };
    write_smbios_tables(guest_mem, &smbios).context("cannot write the SMBIOS tables")?;
    Ok(acpi.rsdp.0)
}

/// The guest image and what goes with it.
pub struct Image<'a> {
    /// What the image is, for messages ("kernel PATH", "built-in hello guest").
    pub name: &'a str,
    /// Its bytes.
    pub bytes: &'a [u8],
    /// Whether it is a firmware (which gets no Linux command-line options of the VMM's).
    pub firmware: bool,
    /// The command line the user gave.
    pub cmdline: &'a str,
    /// The initramfs, if any.
    pub initramfs: Option<&'a [u8]>,
}

/// Loads `image` into `guest_mem` by the protocol its bytes name and returns the boot vCPU's
/// entry state. `page_sizes` are those the backend supports: a bzImage starts on boot page
/// tables of the largest, and a Linux kernel is kept off 1 GiB pages when they are missing.
pub fn load(
    guest_mem: &GuestMemoryMmap,
    layout: &GuestLayout,
    image: &Image<'_>,
    rsdp: u64,
    page_sizes: PageSizes,
) -> Result<Entry> {
    let format = detect_image(image.bytes);
    let linux = match format {
        ImageFormat::BzImage => true,
        // The loader reports a malformed image; here it only decides the command line.
        ImageFormat::Elf => ElfImage::parse(image.bytes).is_ok_and(|elf| elf.is_linux()),
        ImageFormat::Unknown => bail!(
            "{}: the image is neither an ELF file (vmlinux, PVH) nor a Linux bzImage",
            image.name
        ),
    };
    let cmdline = if linux && !image.firmware {
        linux_cmdline(image.cmdline, page_sizes)
    } else {
        image.cmdline.to_string()
    };
    let entry = load_as(guest_mem, layout, image, format, &cmdline, rsdp, page_sizes)?;
    if cmdline != image.cmdline {
        warn!(
            "the backend does not support 1 GiB pages: added `nogbpages` to the kernel command \
             line (a guest that sees pdpe1gb in CPUID would triple-fault on its first 1 GiB page)"
        );
    }
    Ok(entry)
}

fn load_as(
    guest_mem: &GuestMemoryMmap,
    layout: &GuestLayout,
    image: &Image<'_>,
    format: ImageFormat,
    cmdline: &str,
    rsdp: u64,
    page_sizes: PageSizes,
) -> Result<Entry> {
    let rsdp = Some(GuestAddress(rsdp));
    match format {
        ImageFormat::BzImage => {
            let config = LinuxConfig {
                cmdline,
                initramfs: image.initramfs,
                rsdp,
            };
            let boot = load_bzimage(guest_mem, layout.memory_map(), image.bytes, &config)
                .with_context(|| image.name.to_string())?;
            if let Some(initramfs) = &boot.initramfs {
                info!("initramfs at {:#x}..{:#x}", initramfs.start, initramfs.end);
            }
            let tables = build_boot_page_tables(guest_mem, layout, page_sizes)
                .context("cannot build the boot page tables")?;
            Ok(Entry::LongMode(LongModeEntry {
                entry: boot.entry,
                page_table: GuestAddress(tables.cr3),
                gdt: boot.gdt,
                boot_params: boot.boot_params,
                stack_pointer: boot.stack_pointer,
            }))
        }
        _ => {
            let modules: Vec<&[u8]> = image.initramfs.into_iter().collect();
            let config = PvhConfig {
                cmdline,
                modules: &modules,
                rsdp,
            };
            let boot = load_pvh(guest_mem, layout.memory_map(), image.bytes, &config)
                .with_context(|| image.name.to_string())?;
            for module in &boot.modules {
                info!(
                    "initramfs at {:#x}..{:#x}",
                    module.addr.0,
                    module.addr.0 + module.size
                );
            }
            Ok(Entry::Pvh {
                entry: boot.entry,
                start_info: boot.start_info,
            })
        }
    }
}

/// The command line of a Linux kernel: the user's, plus what the backend needs.
///
/// Where the backend cannot map 1 GiB pages (its supported CPUID lacks `pdpe1gb`, though a
/// nested backend's guest may still see the flag and triple-fault on its first 1 GiB page),
/// `nogbpages` keeps Linux on 2 MiB pages. Nothing is added for instructions the backend
/// merely fails to emulate.
pub fn linux_cmdline(user: &str, page_sizes: PageSizes) -> String {
    if page_sizes.contains(PageSize::Size1G) || has_option(user, "nogbpages") {
        return user.to_string();
    }
    if user.is_empty() {
        "nogbpages".to_string()
    } else {
        format!("{user} nogbpages")
    }
}

/// Whether the command line holds the option `name` as a word of its own.
fn has_option(cmdline: &str, name: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|word| word == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nogbpages_only_where_1g_pages_are_missing() {
        let all = PageSizes::ALL;
        let up_to_2m = PageSizes::UP_TO_2M;
        assert_eq!(linux_cmdline("console=ttyS0", all), "console=ttyS0");
        assert_eq!(
            linux_cmdline("console=ttyS0", up_to_2m),
            "console=ttyS0 nogbpages"
        );
        assert_eq!(linux_cmdline("", up_to_2m), "nogbpages");
        // Not twice.
        assert_eq!(
            linux_cmdline("nogbpages quiet", up_to_2m),
            "nogbpages quiet"
        );
        // A longer word is another option.
        assert_eq!(
            linux_cmdline("xnogbpages", up_to_2m),
            "xnogbpages nogbpages"
        );
    }

    #[test]
    fn the_platform_names_the_devices_the_vmm_composes() {
        let layout = GuestLayout::new(512 << 20).unwrap();
        let machine = Machine {
            layout: &layout,
            vcpus: 2,
            com1: true,
            pci_intx: vec![(1, 16), (2, 17)],
        };
        let platform = acpi_platform(&machine);
        assert_eq!(platform.vcpus, 2);
        assert_eq!(platform.serial_ports.len(), 1);
        assert_eq!(platform.serial_ports[0].ports.start, 0x3f8);
        assert_eq!(platform.power.sleep_control_port, SLEEP_CONTROL_PORT);
        let pci = platform.pci.as_ref().unwrap();
        assert_eq!(pci.interrupt_routes.len(), 2);
        assert_eq!(pci.interrupt_routes[1].gsi, 17);
        let no_serial = acpi_platform(&Machine {
            com1: false,
            pci_intx: Vec::new(),
            ..machine
        });
        assert!(no_serial.serial_ports.is_empty());
        assert!(no_serial.pci.unwrap().interrupt_routes.is_empty());

        let memory = layout.create_guest_memory().unwrap();
        let rsdp = write_firmware_tables(&memory, &machine).unwrap();
        assert_eq!(rsdp, vmkit_boot::acpi::ACPI_TABLES_START);
    }
}
