use std::sync::Mutex;

use super::*;
use crate::pci::{
    BAR0, CAPABILITIES_POINTER, COMMAND_MEMORY_SPACE, INTERRUPT_LINE, INTERRUPT_PIN, MsixMessage,
    STATUS_CAPABILITIES_LIST,
};
use crate::trigger::CountingTrigger;
use crate::virtio::testing::{
    Bar0, Ring, common_cfg, init, memory, negotiate, notify, setup_queue,
};
use crate::virtio::{
    F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, ISR_CONFIG, ISR_QUEUE, MsiRecorder, QueueError,
    STATUS_FAILED,
};

/// What the dummy device saw, shared with the test.
#[derive(Default)]
struct Log {
    activations: Vec<(u64, Vec<bool>)>,
    processed: Vec<u16>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
}

struct Dummy {
    sizes: Vec<u16>,
    log: Arc<Mutex<Log>>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    refuse_activation: bool,
    break_queue: bool,
    device_type: u32,
    config_len: usize,
}

impl Dummy {
    fn new(sizes: &[u16]) -> (Self, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        (
            Self {
                sizes: sizes.to_vec(),
                log: log.clone(),
                interrupt: None,
                refuse_activation: false,
                break_queue: false,
                device_type: 0x2A,
                config_len: 8,
            },
            log,
        )
    }
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    /// A device that handles `EVENT_IDX` offers it itself (the transport does not).
    fn features(&self) -> u64 {
        (1 << 3) | F_RING_EVENT_IDX
    }
    fn config_len(&self) -> usize {
        self.config_len
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            *b = if o < 8 { 0xC0 | o as u8 } else { 0 };
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        acked_features: u64,
        queues: Vec<Queue>,
        _memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), super::super::ActivateError> {
        if self.refuse_activation {
            return Err(super::super::ActivateError::QueueNotEnabled(0));
        }
        self.interrupt = Some(interrupt);
        self.log
            .lock()
            .unwrap()
            .activations
            .push((acked_features, queues.iter().map(|q| q.ready()).collect()));
        Ok(())
    }
    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        if self.break_queue {
            return Err(QueueError::NotActive(index));
        }
        self.log.lock().unwrap().processed.push(index);
        if let Some(interrupt) = &self.interrupt {
            interrupt.signal_used_queue(index);
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.interrupt = None;
        self.log.lock().unwrap().resets += 1;
    }
}

struct Setup {
    dev: VirtioPciDevice<Dummy>,
    log: Arc<Mutex<Log>>,
    intx: Arc<CountingTrigger>,
    msi: Arc<MsiRecorder>,
    ring: Ring,
}

fn setup_with(dummy: impl FnOnce(&mut Dummy), sizes: &[u16]) -> Setup {
    let (mut device, log) = Dummy::new(sizes);
    dummy(&mut device);
    let intx = Arc::new(CountingTrigger::new());
    let msi = Arc::new(MsiRecorder::new());
    let mem = memory();
    let dev = VirtioPciDevice::new(
        device,
        mem.clone(),
        VirtioPciInterrupts {
            intx: Some(intx.clone()),
            intx_line: 17,
            msi: Some(msi.clone()),
        },
    )
    .unwrap();
    Setup {
        dev,
        log,
        intx,
        msi,
        ring: Ring::new(&mem, 16),
    }
}

fn setup() -> Setup {
    setup_with(|_| {}, &[64, 16])
}

fn cfg_read(dev: &mut impl MutPciDevice, offset: usize, len: usize) -> u32 {
    let mut data = [0u8; 4];
    dev.config_read(u8::try_from(offset).unwrap(), &mut data[..len]);
    u32::from_le_bytes(data)
}

fn cfg_write(dev: &mut impl MutPciDevice, offset: usize, data: &[u8]) {
    dev.config_write(u8::try_from(offset).unwrap(), data);
}

/// Every vendor capability: (offset, cfg_type, bar, offset in BAR, length).
fn virtio_caps<D: VirtioDevice>(dev: &VirtioPciDevice<D>) -> Vec<(usize, u8, u8, u32, u32)> {
    dev.config_space()
        .find_capabilities(CAP_ID_VENDOR)
        .into_iter()
        .map(|c| {
            let cs = dev.config_space();
            (
                c,
                cs.read_u8(c + 3),
                cs.read_u8(c + 4),
                cs.read_u32(c + 8),
                cs.read_u32(c + 12),
            )
        })
        .collect()
}

fn msix_control(s: &mut Setup, value: u16) {
    let cap = s.dev.config_space().find_capabilities(CAP_ID_MSIX)[0];
    cfg_write(&mut s.dev, cap + 2, &value.to_le_bytes());
}

fn program_vector(s: &mut Setup, vector: u64, data: u32) {
    let entry = MSIX_TABLE_OFFSET + 16 * vector;
    s.dev.w64(entry, 0xFEE0_0000 + vector * 0x1000);
    s.dev.w32(entry + 8, data);
    s.dev.w32(entry + 12, 0);
}

#[test]
fn identity_bar_and_capabilities() {
    let mut s = setup();
    let d = &mut s.dev;
    assert_eq!(cfg_read(d, 0, 4), 0x106A_1AF4, "device ID 0x1040 + type");
    assert_eq!(cfg_read(d, 8, 4), 0xFF00_0001, "revision 1, class");
    assert_eq!(cfg_read(d, 0x2C, 4), 0x1100_1AF4);
    assert_eq!(cfg_read(d, INTERRUPT_PIN, 1), 1);
    assert_eq!(cfg_read(d, INTERRUPT_LINE, 1), 17);
    assert_ne!(cfg_read(d, 6, 2) as u16 & STATUS_CAPABILITIES_LIST, 0);
    assert_eq!(cfg_read(d, CAPABILITIES_POINTER, 1), 0x40);
    // BAR 0: 64-bit memory of BAR_SIZE.
    assert_eq!(cfg_read(d, BAR0, 4), 0x4);
    cfg_write(d, BAR0, &[0xFF; 4]);
    assert_eq!(cfg_read(d, BAR0, 4), !(BAR_SIZE as u32 - 1) | 0x4);
    let caps = virtio_caps(d);
    let kinds: Vec<_> = caps.iter().map(|c| c.1).collect();
    assert_eq!(
        kinds,
        vec![
            VIRTIO_PCI_CAP_COMMON_CFG,
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            VIRTIO_PCI_CAP_ISR_CFG,
            VIRTIO_PCI_CAP_DEVICE_CFG,
            VIRTIO_PCI_CAP_PCI_CFG
        ]
    );
    assert_eq!((caps[0].2, caps[0].3, caps[0].4), (0, 0, 0x38));
    assert_eq!((caps[1].3, caps[1].4), (NOTIFY_OFFSET as u32, 8));
    assert_eq!(
        d.config_space().read_u32(caps[1].0 + 16),
        NOTIFY_OFF_MULTIPLIER
    );
    assert_eq!(
        d.config_space().read_u8(caps[1].0 + 2),
        20,
        "notify cap_len"
    );
    assert_eq!((caps[2].3, caps[2].4), (ISR_OFFSET as u32, 1));
    assert_eq!((caps[3].3, caps[3].4), (DEVICE_CFG_OFFSET as u32, 8));
    // The capability structure is read-only.
    cfg_write(d, caps[0].0, &[0; 4]);
    cfg_write(d, caps[0].0 + 8, &[0xFF; 4]);
    assert_eq!(virtio_caps(d)[0], caps[0]);
    // MSI-X: 3 vectors (two queues + config), table and PBA in BAR 0.
    let msix = d.config_space().find_capabilities(CAP_ID_MSIX)[0];
    assert_eq!(cfg_read(d, msix + 2, 2), 2);
    assert_eq!(cfg_read(d, msix + 4, 4), MSIX_TABLE_OFFSET as u32);
    assert_eq!(cfg_read(d, msix + 8, 4), MSIX_PBA_OFFSET as u32);
    cfg_write(d, msix + 2, &0xFFFFu16.to_le_bytes());
    assert_eq!(
        cfg_read(d, msix + 2, 2),
        0xC002,
        "only enable and mask are writable"
    );
    assert!(format!("{d:?}").contains("msix: true"));
}

#[test]
fn construction_checks_the_device() {
    let build = |f: &dyn Fn(&mut Dummy), sizes: &[u16]| {
        let (mut d, _) = Dummy::new(sizes);
        f(&mut d);
        VirtioPciDevice::new(d, memory(), VirtioPciInterrupts::default())
    };
    assert!(matches!(
        build(&|_| {}, &[]),
        Err(VirtioPciError::QueueCount(0))
    ));
    assert!(matches!(
        build(&|_| {}, &[8; 512]),
        Err(VirtioPciError::QueueCount(512))
    ));
    assert!(matches!(
        build(&|_| {}, &[8, 24]),
        Err(VirtioPciError::QueueSize { index: 1, size: 24 })
    ));
    let err = build(&|d| d.config_len = 0x1001, &[8]).unwrap_err();
    assert!(err.to_string().contains("4097 bytes"));
    assert!(matches!(
        build(&|d| d.device_type = 0x40, &[8]),
        Err(VirtioPciError::DeviceType(0x40))
    ));
    // Without interrupts: no MSI-X capability, no pin; no device config without config.
    let mut d = build(&|d| d.config_len = 0, &[8; MAX_QUEUES]).unwrap();
    assert!(d.config_space().find_capabilities(CAP_ID_MSIX).is_empty());
    assert_eq!(cfg_read(&mut d, INTERRUPT_PIN, 1), 0);
    let caps = virtio_caps(&d);
    assert_eq!(caps.len(), 4);
    assert_eq!(caps[1].4, 4 * MAX_QUEUES as u32);
    assert_eq!(d.r16(common_cfg::NUM_QUEUES), MAX_QUEUES as u16);
    // Table and PBA read 0 without MSI-X, writes there are ignored.
    assert_eq!(d.r32(MSIX_TABLE_OFFSET + 12), 0);
    d.w32(MSIX_TABLE_OFFSET + 12, 0);
    assert_eq!(d.stats().bad_accesses, 1);
    let config = VirtioPciError::Config(ConfigError::BarIndex(7));
    assert!(config.to_string().contains("layout"));
}

#[test]
fn status_machine_and_feature_negotiation() {
    let mut s = setup();
    let d = &mut s.dev;
    // Device features in 32-bit windows.
    d.w32(common_cfg::DEVICE_FEATURE_SELECT, 0);
    assert_eq!(
        d.r32(common_cfg::DEVICE_FEATURE),
        (1 << 3) | (F_RING_INDIRECT_DESC | F_RING_EVENT_IDX) as u32
    );
    d.w32(common_cfg::DEVICE_FEATURE_SELECT, 1);
    assert_eq!(d.r32(common_cfg::DEVICE_FEATURE), 1, "VERSION_1");
    assert_eq!(d.r32(common_cfg::DEVICE_FEATURE_SELECT), 1);
    d.w32(common_cfg::DEVICE_FEATURE_SELECT, 2);
    assert_eq!(d.r32(common_cfg::DEVICE_FEATURE), 0);

    // Out of order: DRIVER before ACKNOWLEDGE, FEATURES_OK before DRIVER.
    d.w8(common_cfg::DEVICE_STATUS, STATUS_DRIVER);
    assert_eq!(d.r8(common_cfg::DEVICE_STATUS), 0);
    d.w8(common_cfg::DEVICE_STATUS, STATUS_ACKNOWLEDGE);
    d.w8(
        common_cfg::DEVICE_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_FEATURES_OK,
    );
    assert_eq!(d.r8(common_cfg::DEVICE_STATUS), STATUS_ACKNOWLEDGE);
    d.w8(
        common_cfg::DEVICE_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER,
    );
    // Clearing a bit without reset is refused.
    d.w8(common_cfg::DEVICE_STATUS, STATUS_DRIVER);
    assert_eq!(
        d.r8(common_cfg::DEVICE_STATUS),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER
    );
    assert_eq!(d.stats().driver_errors, 3);

    // FEATURES_OK without VERSION_1 is refused; so are features not offered.
    d.w32(common_cfg::DRIVER_FEATURE_SELECT, 0);
    d.w32(common_cfg::DRIVER_FEATURE, 1 << 3);
    d.w8(
        common_cfg::DEVICE_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(d.r8(common_cfg::DEVICE_STATUS) & STATUS_FEATURES_OK, 0);
    d.w32(common_cfg::DRIVER_FEATURE_SELECT, 1);
    d.w32(common_cfg::DRIVER_FEATURE, 1 | (1 << 7));
    assert_eq!(d.r32(common_cfg::DRIVER_FEATURE), 0x81);
    d.w8(
        common_cfg::DEVICE_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(d.r8(common_cfg::DEVICE_STATUS) & STATUS_FEATURES_OK, 0);
    assert_eq!(d.stats().features_refused, 2);
    d.w32(common_cfg::DRIVER_FEATURE, 1);
    d.w32(common_cfg::DRIVER_FEATURE_SELECT, 5);
    d.w32(common_cfg::DRIVER_FEATURE, 0);
    d.w32(common_cfg::DRIVER_FEATURE, 1);
    assert_eq!(
        d.r32(common_cfg::DRIVER_FEATURE),
        0,
        "windows past 1 are empty"
    );
    d.w8(
        common_cfg::DEVICE_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_ne!(d.r8(common_cfg::DEVICE_STATUS) & STATUS_FEATURES_OK, 0);
    assert_eq!(d.acked_features(), F_VERSION_1 | (1 << 3));
    // Features are frozen after FEATURES_OK.
    d.w32(common_cfg::DRIVER_FEATURE_SELECT, 0);
    d.w32(common_cfg::DRIVER_FEATURE, 0);
    assert_eq!(d.acked_features(), F_VERSION_1 | (1 << 3));
    // The driver cannot set DEVICE_NEEDS_RESET.
    d.w8(common_cfg::DEVICE_STATUS, 0x0B | STATUS_DEVICE_NEEDS_RESET);
    assert_eq!(d.r8(common_cfg::DEVICE_STATUS), 0x0B);
    // DRIVER_OK activates, once.
    setup_queue(d, 0, &s.ring.config());
    d.w8(common_cfg::DEVICE_STATUS, 0x0F);
    assert!(d.is_active());
    d.w8(common_cfg::DEVICE_STATUS, 0x0F);
    let log = s.log.lock().unwrap();
    assert_eq!(
        log.activations,
        vec![(F_VERSION_1 | (1 << 3), vec![true, false])]
    );
    drop(log);
    assert_eq!(d.stats().activations, 1);
    assert_eq!(d.status(), 0x0F);
    // FAILED may be set at any time.
    d.w8(common_cfg::DEVICE_STATUS, 0x0F | STATUS_FAILED);
    assert_eq!(d.r8(common_cfg::DEVICE_STATUS), 0x8F);
}

#[test]
fn failed_driver_does_not_activate() {
    let mut s = setup();
    let status = negotiate(&mut s.dev, F_VERSION_1);
    setup_queue(&mut s.dev, 0, &s.ring.config());
    s.dev.w8(
        common_cfg::DEVICE_STATUS,
        status | STATUS_FAILED | STATUS_DRIVER_OK,
    );
    assert!(!s.dev.is_active());
    assert!(s.log.lock().unwrap().activations.is_empty());
}

#[test]
fn queue_registers() {
    let mut s = setup();
    let d = &mut s.dev;
    assert_eq!(d.r16(common_cfg::NUM_QUEUES), 2);
    d.w16(common_cfg::QUEUE_SELECT, 1);
    assert_eq!(d.r16(common_cfg::QUEUE_SIZE), 16);
    assert_eq!(d.r16(common_cfg::QUEUE_NOTIFY_OFF), 1);
    assert_eq!(d.r16(common_cfg::QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    // Invalid sizes are refused.
    for bad in [0u16, 3, 32] {
        d.w16(common_cfg::QUEUE_SIZE, bad);
        assert_eq!(d.r16(common_cfg::QUEUE_SIZE), 16, "{bad}");
    }
    d.w16(common_cfg::QUEUE_SIZE, 4);
    assert_eq!(d.r16(common_cfg::QUEUE_SIZE), 4);
    // 32-bit halves and a 64-bit write.
    d.w32(common_cfg::QUEUE_DESC, 0x1000);
    d.w32(common_cfg::QUEUE_DESC + 4, 0x2);
    assert_eq!(d.r(common_cfg::QUEUE_DESC, 8), 0x2_0000_1000);
    d.w64(common_cfg::QUEUE_DRIVER, 0x3_0000_2000);
    d.w32(common_cfg::QUEUE_DRIVER + 4, 0);
    assert_eq!(d.r(common_cfg::QUEUE_DRIVER, 8), 0x2000);
    d.w32(common_cfg::QUEUE_DEVICE + 4, 0x1);
    d.w32(common_cfg::QUEUE_DEVICE, 0x3000);
    assert_eq!(d.r32(common_cfg::QUEUE_DEVICE), 0x3000);
    assert_eq!(d.r32(common_cfg::QUEUE_DEVICE + 4), 1);
    // Byte reads of a field.
    assert_eq!(d.r8(common_cfg::QUEUE_DEVICE + 1), 0x30);
    d.w16(common_cfg::QUEUE_ENABLE, 0);
    assert_eq!(
        d.r16(common_cfg::QUEUE_ENABLE),
        0,
        "0 is not a valid enable value"
    );
    d.w16(common_cfg::QUEUE_ENABLE, 1);
    assert_eq!(d.r16(common_cfg::QUEUE_ENABLE), 1);
    // An enabled queue's registers are frozen.
    let errors = d.stats().driver_errors;
    d.w16(common_cfg::QUEUE_SIZE, 8);
    d.w64(common_cfg::QUEUE_DESC, 0);
    assert_eq!(
        (d.r16(common_cfg::QUEUE_SIZE), d.r32(common_cfg::QUEUE_DESC)),
        (4, 0x1000)
    );
    assert_eq!(d.stats().driver_errors, errors + 2);
    // A queue that does not exist reads 0 and takes nothing.
    d.w16(common_cfg::QUEUE_SELECT, 2);
    assert_eq!(d.r16(common_cfg::QUEUE_SELECT), 2);
    assert_eq!(
        (
            d.r16(common_cfg::QUEUE_SIZE),
            d.r16(common_cfg::QUEUE_ENABLE),
            d.r16(common_cfg::QUEUE_NOTIFY_OFF)
        ),
        (0, 0, 0)
    );
    assert_eq!(d.r16(common_cfg::QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    d.w16(common_cfg::QUEUE_SIZE, 4);
    d.w16(common_cfg::QUEUE_MSIX_VECTOR, 0);
    assert_eq!(d.stats().driver_errors, errors + 4);
    // Beyond the structure, and odd write widths.
    assert_eq!(d.r32(0x38), 0);
    assert_eq!(d.r(0x34, 8), 0, "upper half of used, then nothing");
    let bad = d.stats().bad_accesses;
    d.w32(common_cfg::DEVICE_STATUS, 0);
    d.w8(common_cfg::QUEUE_SELECT, 0);
    d.w16(common_cfg::NUM_QUEUES, 9);
    d.w16(0x100, 1);
    d.w32(common_cfg::QUEUE_DESC + 2, 0);
    assert_eq!(d.stats().bad_accesses, bad + 5);
    assert_eq!(d.r16(common_cfg::NUM_QUEUES), 2);
}

#[test]
fn reset_and_reinitialisation_of_a_live_device() {
    let mut s = setup();
    init(&mut s.dev, 0, &s.ring);
    s.dev.w16(common_cfg::MSIX_CONFIG, 0);
    s.dev.w16(common_cfg::QUEUE_SELECT, 0);
    s.dev.w16(common_cfg::QUEUE_MSIX_VECTOR, 1);
    assert!(s.dev.is_active());
    // Linux resets the device the firmware left running.
    s.dev.w8(common_cfg::DEVICE_STATUS, 0);
    assert_eq!(
        s.dev.r8(common_cfg::DEVICE_STATUS),
        0,
        "reset completes at once"
    );
    assert!(!s.dev.is_active());
    assert_eq!(
        s.log.lock().unwrap().resets,
        2,
        "init's reset, then this one"
    );
    assert_eq!(s.dev.r16(common_cfg::MSIX_CONFIG), VIRTIO_MSI_NO_VECTOR);
    assert_eq!(s.dev.r16(common_cfg::QUEUE_SELECT), 0);
    assert_eq!(
        s.dev.r16(common_cfg::QUEUE_MSIX_VECTOR),
        VIRTIO_MSI_NO_VECTOR
    );
    assert_eq!(s.dev.r16(common_cfg::QUEUE_ENABLE), 0);
    assert_eq!(
        s.dev.r16(common_cfg::QUEUE_SIZE),
        64,
        "size back to the maximum"
    );
    assert_eq!(s.dev.r(common_cfg::QUEUE_DESC, 8), 0);
    assert_eq!(s.dev.acked_features(), 0);
    s.dev.w32(common_cfg::DRIVER_FEATURE_SELECT, 1);
    assert_eq!(s.dev.r32(common_cfg::DRIVER_FEATURE), 0);
    // Notifications of a reset device go nowhere.
    notify(&mut s.dev, 0);
    assert_eq!(s.dev.stats().ignored_notifications, 1);
    // And it comes back.
    init(&mut s.dev, F_RING_EVENT_IDX, &s.ring);
    assert!(s.dev.is_active());
    notify(&mut s.dev, 0);
    let log = s.log.lock().unwrap();
    assert_eq!(log.activations.len(), 2);
    assert_eq!(log.activations[1].0, F_VERSION_1 | F_RING_EVENT_IDX);
    assert_eq!(log.processed, vec![0]);
    assert_eq!(s.dev.stats().resets, 3, "each init resets first");
}

#[test]
fn bad_queues_and_refusals_need_a_reset() {
    // A ring outside guest memory.
    let mut s = setup();
    s.ring.used = crate::virtio::testing::HOLE;
    s.dev.w16(common_cfg::MSIX_CONFIG, 2);
    init(&mut s.dev, 0, &s.ring);
    assert!(!s.dev.is_active());
    assert_ne!(
        s.dev.r8(common_cfg::DEVICE_STATUS) & STATUS_DEVICE_NEEDS_RESET,
        0
    );
    // With MSI-X off the config change shows in ISR and on INTx#.
    assert_eq!(s.dev.r8(ISR_OFFSET), ISR_CONFIG);
    assert_eq!(s.dev.stats().needs_reset, 1);

    // A misaligned ring.
    let mut s = setup();
    s.ring.desc = 0x1008;
    init(&mut s.dev, 0, &s.ring);
    assert_ne!(s.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // Notifications are ignored until reset.
    notify(&mut s.dev, 0);
    assert_eq!(s.dev.stats().ignored_notifications, 1);
    s.dev.w8(common_cfg::DEVICE_STATUS, 0);
    assert_eq!(s.dev.status(), 0, "reset clears NEEDS_RESET");

    // The device refuses activation.
    let mut s = setup_with(|d| d.refuse_activation = true, &[8]);
    init(&mut s.dev, 0, &s.ring);
    assert_eq!(
        s.dev.status() & STATUS_DEVICE_NEEDS_RESET,
        STATUS_DEVICE_NEEDS_RESET
    );

    // The device breaks on a notification.
    let mut s = setup_with(|d| d.break_queue = true, &[8]);
    init(&mut s.dev, 0, &s.ring);
    notify(&mut s.dev, 0);
    assert_ne!(s.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(s.intx.asserts(), 1, "config change interrupt");
}

#[test]
fn notifications() {
    let mut s = setup();
    notify(&mut s.dev, 0);
    assert_eq!(s.dev.stats().ignored_notifications, 1, "before DRIVER_OK");
    init(&mut s.dev, 0, &s.ring);
    // The firmware's 32-bit write at queue 0's address; Linux's 16-bit one at queue 1's.
    s.dev.w32(NOTIFY_OFFSET, 0);
    s.dev.w16(NOTIFY_OFFSET + 4, 1);
    s.dev.w16(NOTIFY_OFFSET + 2, 0);
    s.dev.w16(NOTIFY_OFFSET + 8, 2);
    assert_eq!(s.log.lock().unwrap().processed, vec![0, 1]);
    let stats = s.dev.stats();
    assert_eq!((stats.notifications, stats.bad_accesses), (2, 2));
    assert_eq!(s.dev.r32(NOTIFY_OFFSET), 0, "the area reads 0");
}

#[test]
fn intx_and_isr_read_to_clear() {
    let mut s = setup();
    init(&mut s.dev, 0, &s.ring);
    notify(&mut s.dev, 0);
    assert!(s.intx.is_asserted());
    assert_eq!(s.intx.asserts(), 1);
    let status = cfg_read(&mut s.dev, STATUS, 2) as u16;
    assert_ne!(
        status & STATUS_INTERRUPT,
        0,
        "PCI status shows the interrupt"
    );
    // A second event re-asserts (a level the VMM lowered at EOI comes back).
    notify(&mut s.dev, 1);
    assert_eq!(s.intx.asserts(), 2);
    s.dev.resample_intx();
    assert_eq!(s.intx.asserts(), 3);
    assert_eq!(s.dev.r32(ISR_OFFSET), u32::from(ISR_QUEUE));
    assert!(!s.intx.is_asserted(), "read deasserts");
    assert_eq!(s.dev.r8(ISR_OFFSET), 0, "and clears");
    assert_eq!(s.intx.deasserts(), 1);
    assert_eq!(cfg_read(&mut s.dev, STATUS, 2) as u16 & STATUS_INTERRUPT, 0);
    s.dev.resample_intx();
    assert_eq!(s.intx.asserts(), 3, "nothing pending");
    // Other ISR bytes read 0 and do not clear, nor does an empty read; writes are ignored.
    notify(&mut s.dev, 0);
    s.dev.bar_read(0, ISR_OFFSET, &mut []);
    assert_eq!(s.dev.r8(ISR_OFFSET + 1), 0);
    s.dev.w8(ISR_OFFSET, 0);
    assert!(s.intx.is_asserted());
    // The command register's INTx# disable lowers and restores the line.
    let command = cfg_read(&mut s.dev, COMMAND, 2) as u16;
    cfg_write(
        &mut s.dev,
        COMMAND,
        &(command | COMMAND_INTX_DISABLE).to_le_bytes(),
    );
    assert!(!s.intx.is_asserted());
    notify(&mut s.dev, 0);
    assert!(!s.intx.is_asserted(), "disabled: no assertion");
    cfg_write(&mut s.dev, COMMAND, &command.to_le_bytes());
    assert!(s.intx.is_asserted());
    // Configuration changes set their own bit and bump the generation.
    let generation = s.dev.r8(common_cfg::CONFIG_GENERATION);
    s.dev.signal_config_change();
    assert_eq!(
        s.dev.r8(common_cfg::CONFIG_GENERATION),
        generation.wrapping_add(1)
    );
    assert_eq!(s.dev.r8(ISR_OFFSET), ISR_QUEUE | ISR_CONFIG);
    // A failing line is counted.
    s.intx.set_failing(true);
    notify(&mut s.dev, 0);
    assert_eq!(s.dev.stats().interrupt_failures, 1);
}

#[test]
fn msix_vectors_masks_and_pending_bits() {
    let mut s = setup();
    msix_control(&mut s, MSIX_ENABLE | MSIX_FUNCTION_MASK);
    program_vector(&mut s, 0, 0x40);
    program_vector(&mut s, 1, 0x41);
    program_vector(&mut s, 2, 0x42);
    assert_eq!(s.dev.r32(MSIX_TABLE_OFFSET + 16 + 8), 0x41);
    init(&mut s.dev, 0, &s.ring);
    // Vector numbers past the table read back as NO_VECTOR.
    s.dev.w16(common_cfg::MSIX_CONFIG, 3);
    assert_eq!(s.dev.r16(common_cfg::MSIX_CONFIG), VIRTIO_MSI_NO_VECTOR);
    s.dev.w16(common_cfg::MSIX_CONFIG, 2);
    assert_eq!(s.dev.r16(common_cfg::MSIX_CONFIG), 2);
    s.dev.w16(common_cfg::QUEUE_SELECT, 0);
    s.dev.w16(common_cfg::QUEUE_MSIX_VECTOR, 0);
    s.dev.w16(common_cfg::QUEUE_SELECT, 1);
    s.dev.w16(common_cfg::QUEUE_MSIX_VECTOR, 1);
    assert_eq!(s.dev.r16(common_cfg::QUEUE_MSIX_VECTOR), 1);
    // Function masked: pending.
    notify(&mut s.dev, 0);
    assert!(s.msi.messages().is_empty());
    assert_eq!(s.dev.r(MSIX_PBA_OFFSET, 8), 1);
    msix_control(&mut s, MSIX_ENABLE);
    assert_eq!(
        s.msi.messages(),
        vec![MsixMessage {
            address: 0xFEE0_0000,
            data: 0x40
        }]
    );
    assert_eq!(s.dev.r(MSIX_PBA_OFFSET, 8), 0);
    // Per-vector mask.
    s.dev.w32(MSIX_TABLE_OFFSET + 16 + 12, 1);
    notify(&mut s.dev, 1);
    assert_eq!(s.msi.messages().len(), 1);
    assert_eq!(s.dev.r(MSIX_PBA_OFFSET, 8), 2);
    s.dev.w32(MSIX_TABLE_OFFSET + 16 + 12, 0);
    assert_eq!(s.msi.messages()[1].data, 0x41);
    // MSI-X on: no INTx#, no ISR queue bit.
    assert_eq!(s.intx.asserts(), 0);
    assert_eq!(s.dev.r8(ISR_OFFSET), 0);
    // Config changes go to the config vector.
    s.dev.signal_config_change();
    assert_eq!(s.msi.messages()[2].data, 0x42);
    // No vector: nothing sent.
    s.dev.w16(common_cfg::QUEUE_SELECT, 0);
    s.dev
        .w16(common_cfg::QUEUE_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
    notify(&mut s.dev, 0);
    assert_eq!(s.msi.messages().len(), 3);
    assert_eq!(s.dev.stats().interrupts_suppressed, 1);
    assert_eq!(s.dev.stats().msi_sent, 3);
    // A failing MSI is counted.
    s.msi.set_failing(true);
    notify(&mut s.dev, 1);
    assert_eq!(s.dev.stats().interrupt_failures, 1);
    // Bad table writes and PBA writes are ignored.
    s.dev.w16(MSIX_TABLE_OFFSET, 0);
    s.dev.w32(MSIX_PBA_OFFSET, 0);
    assert_eq!(s.dev.stats().bad_accesses, 2);
    // Disabling MSI-X falls back to INTx#.
    msix_control(&mut s, 0);
    notify(&mut s.dev, 0);
    assert!(s.intx.is_asserted());
}

#[test]
fn enabling_msix_drops_a_pending_intx_level() {
    let mut s = setup();
    init(&mut s.dev, 0, &s.ring);
    notify(&mut s.dev, 0);
    assert!(s.intx.is_asserted());
    msix_control(&mut s, MSIX_ENABLE);
    assert!(!s.intx.is_asserted());
    assert_eq!(cfg_read(&mut s.dev, STATUS, 2) as u16 & STATUS_INTERRUPT, 0);
}

#[test]
fn pci_cfg_capability_windows_into_the_bar() {
    let mut s = setup();
    let cap = virtio_caps(&s.dev)[4].0;
    let set = |s: &mut Setup, bar: u8, offset: u32, length: u32| {
        cfg_write(&mut s.dev, cap + 4, &[bar]);
        cfg_write(&mut s.dev, cap + 8, &offset.to_le_bytes());
        cfg_write(&mut s.dev, cap + 12, &length.to_le_bytes());
    };
    // Read num_queues through the window.
    set(&mut s, 0, common_cfg::NUM_QUEUES as u32, 2);
    assert_eq!(cfg_read(&mut s.dev, cap + 16, 4) & 0xFFFF, 2);
    // Write the status through it.
    set(&mut s, 0, common_cfg::DEVICE_STATUS as u32, 1);
    cfg_write(&mut s.dev, cap + 16, &[STATUS_ACKNOWLEDGE]);
    assert_eq!(s.dev.r8(common_cfg::DEVICE_STATUS), STATUS_ACKNOWLEDGE);
    // Device configuration through it.
    set(&mut s, 0, DEVICE_CFG_OFFSET as u32 + 4, 4);
    assert_eq!(cfg_read(&mut s.dev, cap + 16, 4), 0xC7C6_C5C4);
    // ISR read through the window clears it.
    init(&mut s.dev, 0, &s.ring);
    notify(&mut s.dev, 0);
    set(&mut s, 0, ISR_OFFSET as u32, 1);
    assert_eq!(cfg_read(&mut s.dev, cap + 16, 1), u32::from(ISR_QUEUE));
    assert!(!s.intx.is_asserted());
    // Invalid windows do nothing.
    let bad = s.dev.stats().bad_accesses;
    for (bar, offset, length) in [(1, 0, 4), (0, 0, 3), (0, 2, 4), (0, BAR_SIZE as u32, 1)] {
        set(&mut s, bar, offset, length);
        cfg_read(&mut s.dev, cap + 16, 4);
    }
    assert_eq!(s.dev.stats().bad_accesses, bad + 4);
}

#[test]
fn device_config_and_odd_bar_accesses() {
    let mut s = setup();
    assert_eq!(
        crate::virtio::testing::device_config(&mut s.dev, 0, 4),
        0xC3C2_C1C0
    );
    assert_eq!(
        crate::virtio::testing::device_config(&mut s.dev, 6, 4),
        0xC7C6
    );
    s.dev.w16(DEVICE_CFG_OFFSET + 2, 0xBEEF);
    assert_eq!(
        s.log.lock().unwrap().config_writes,
        vec![(2, vec![0xEF, 0xBE])]
    );
    let mut data = [0u8; 4];
    s.dev.bar_read(1, 0, &mut data);
    assert_eq!(data, [0xFF; 4]);
    s.dev.bar_read(0, BAR_SIZE, &mut data);
    assert_eq!(data, [0xFF; 4]);
    s.dev.bar_write(2, 0, &data);
    s.dev.bar_write(0, BAR_SIZE + 4, &data);
    s.dev.w32(0x7000, 0);
    assert_eq!(s.dev.stats().bad_accesses, 5);
    assert_eq!(s.dev.r32(0x7000 - 4), 0, "past the PBA reads 0");
    assert!(s.dev.device().interrupt.is_none());
    s.dev.device_mut().config_len = 8;
}

#[test]
fn through_a_real_root_and_bus() {
    use crate::pci::PciRoot;
    use vmkit_exits::{IoBus, MmioAddress, MmioBus};
    let io = Arc::new(IoBus::new());
    let mmio = Arc::new(MmioBus::new());
    let root = PciRoot::new(&io, &mmio).unwrap();
    let mut allocators = vmkit_memory::GuestLayout::new(64 << 20)
        .unwrap()
        .allocators()
        .unwrap();
    let s = setup();
    let dev = Arc::new(Mutex::new(s.dev));
    let slot = root
        .add_device("dummy", dev.clone(), &mut allocators)
        .unwrap();
    let bar = root.placed_bars(slot)[0];
    assert_eq!(bar.size, BAR_SIZE);
    assert!(bar.address + BAR_SIZE <= 1 << 32);
    assert_ne!(
        dev.lock().unwrap().config_space().command() & COMMAND_MEMORY_SPACE,
        0
    );
    // The driver's accesses arrive as MMIO on the BAR.
    let mut data = [0u8; 2];
    assert!(mmio.read(MmioAddress(bar.address + common_cfg::NUM_QUEUES), &mut data));
    assert_eq!(u16::from_le_bytes(data), 2);
    mmio.write(
        MmioAddress(bar.address + common_cfg::DEVICE_STATUS),
        &[STATUS_ACKNOWLEDGE],
    );
    assert_eq!(dev.lock().unwrap().status(), STATUS_ACKNOWLEDGE);
}
