//! Register offsets of the common configuration structure (virtio 1.x, 4.1.4.3
//! `struct virtio_pci_common_cfg`), relative to its start (BAR 0 offset
//! [`COMMON_CFG_OFFSET`](super::COMMON_CFG_OFFSET)). Widths are those of the specification.
//!
//! virtio-bindings 0.2 has no `virtio_pci` module, so the offsets are written here.

/// `device_feature_select` (32 bits): which 32-bit window of the device features to read.
pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
/// `device_feature` (32 bits, read-only): the selected window of the device features.
pub const DEVICE_FEATURE: u64 = 0x04;
/// `driver_feature_select` (32 bits): which 32-bit window of the driver features to write.
pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
/// `driver_feature` (32 bits): the selected window of the features the driver accepts.
pub const DRIVER_FEATURE: u64 = 0x0C;
/// `config_msix_vector` (16 bits): the MSI-X vector of configuration changes.
pub const MSIX_CONFIG: u64 = 0x10;
/// `num_queues` (16 bits, read-only).
pub const NUM_QUEUES: u64 = 0x12;
/// `device_status` (8 bits): the status bits (`STATUS_*`); writing 0 resets the device.
pub const DEVICE_STATUS: u64 = 0x14;
/// `config_generation` (8 bits, read-only).
pub const CONFIG_GENERATION: u64 = 0x15;
/// `queue_select` (16 bits): the queue the `QUEUE_*` registers below address.
pub const QUEUE_SELECT: u64 = 0x16;
/// `queue_size` (16 bits).
pub const QUEUE_SIZE: u64 = 0x18;
/// `queue_msix_vector` (16 bits).
pub const QUEUE_MSIX_VECTOR: u64 = 0x1A;
/// `queue_enable` (16 bits).
pub const QUEUE_ENABLE: u64 = 0x1C;
/// `queue_notify_off` (16 bits, read-only).
pub const QUEUE_NOTIFY_OFF: u64 = 0x1E;
/// `queue_desc` (64 bits): the descriptor table's guest address.
pub const QUEUE_DESC: u64 = 0x20;
/// `queue_driver` (64 bits): the available (driver) ring's guest address.
pub const QUEUE_DRIVER: u64 = 0x28;
/// `queue_device` (64 bits): the used (device) ring's guest address.
pub const QUEUE_DEVICE: u64 = 0x30;
