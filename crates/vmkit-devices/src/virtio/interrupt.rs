//! The transport's interrupt state, shared with the device it activates: MSI-X table and
//! vectors, ISR, and the INTx# line.
//!
//! With MSI-X enabled an event fires its vector (config or queue); with MSI-X disabled it sets
//! its ISR bit and asserts INTx# (unless the command register disables INTx#), and the guest's
//! ISR read clears ISR and deasserts the line. The state sits behind one mutex, taken after the
//! device's own lock (never the other way round); triggers are called with it held.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use log::debug;

use super::{ISR_CONFIG, ISR_QUEUE, MsiTrigger, VIRTIO_MSI_NO_VECTOR, VirtioInterrupt};
use crate::pci::lock;
use crate::pci::{MsixDelivery, MsixMessage, MsixTable};
use crate::trigger::InterruptTrigger;

#[derive(Debug)]
struct State {
    msix: MsixTable,
    config_vector: u16,
    queue_vectors: Vec<u16>,
    isr: u8,
    intx_disabled: bool,
}

/// Counters of the interrupts a transport sent.
#[derive(Debug, Default)]
pub(crate) struct InterruptCounters {
    pub(crate) msi_sent: AtomicU64,
    pub(crate) intx_asserted: AtomicU64,
    pub(crate) suppressed: AtomicU64,
    pub(crate) failures: AtomicU64,
}

pub(crate) struct PciInterrupt {
    intx: Option<Arc<dyn InterruptTrigger>>,
    msi: Option<Arc<dyn MsiTrigger>>,
    state: Mutex<State>,
    generation: AtomicU8,
    pub(crate) counters: InterruptCounters,
}

impl PciInterrupt {
    pub(crate) fn new(
        queues: usize,
        vectors: u16,
        intx: Option<Arc<dyn InterruptTrigger>>,
        msi: Option<Arc<dyn MsiTrigger>>,
    ) -> Self {
        Self {
            intx,
            msi,
            state: Mutex::new(State {
                msix: MsixTable::new(vectors),
                config_vector: VIRTIO_MSI_NO_VECTOR,
                queue_vectors: vec![VIRTIO_MSI_NO_VECTOR; queues],
                isr: 0,
                intx_disabled: false,
            }),
            generation: AtomicU8::new(0),
            counters: InterruptCounters::default(),
        }
    }

    pub(crate) fn generation(&self) -> u8 {
        self.generation.load(Ordering::Relaxed)
    }

    fn send(&self, message: MsixMessage) {
        let result = match &self.msi {
            Some(msi) => msi.send(message.address, message.data),
            None => Err(std::io::Error::other("no MSI trigger")),
        };
        match result {
            Ok(()) => self.counters.msi_sent.fetch_add(1, Ordering::Relaxed),
            Err(err) => {
                debug!("virtio-pci: MSI {message:?} failed: {err}");
                self.counters.failures.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    fn line(&self, assert: bool) {
        let Some(intx) = &self.intx else {
            return;
        };
        let result = if assert {
            self.counters.intx_asserted.fetch_add(1, Ordering::Relaxed);
            intx.assert()
        } else {
            intx.deassert()
        };
        if let Err(err) = result {
            debug!("virtio-pci: INTx (assert {assert}) failed: {err}");
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn raise(&self, state: &mut State, vector: u16, isr_bit: u8) {
        if state.msix.enabled() {
            if vector == VIRTIO_MSI_NO_VECTOR {
                self.counters.suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match state.msix.fire(vector) {
                MsixDelivery::Send(message) => self.send(message),
                MsixDelivery::Pending => {}
                MsixDelivery::NoSuchVector => {
                    self.counters.suppressed.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            state.isr |= isr_bit;
            // Asserted on every event: a level the VMM lowered on EOI is raised again.
            if !state.intx_disabled {
                self.line(true);
            }
        }
    }

    /// Reads and clears ISR, deasserting INTx#.
    pub(crate) fn read_isr(&self) -> u8 {
        let mut state = lock(&self.state);
        let isr = std::mem::take(&mut state.isr);
        if isr != 0 {
            self.line(false);
        }
        isr
    }

    /// Whether the PCI status register's interrupt bit is set (INTx# mode with ISR non-zero).
    pub(crate) fn intx_pending(&self) -> bool {
        let state = lock(&self.state);
        state.isr != 0 && !state.msix.enabled()
    }

    /// Raises INTx# again if it is still pending (for a VMM that resamples level lines).
    pub(crate) fn resample(&self) {
        let state = lock(&self.state);
        if state.isr != 0 && !state.msix.enabled() && !state.intx_disabled {
            self.line(true);
        }
    }

    /// Applies the command register's INTx# disable bit.
    pub(crate) fn set_intx_disabled(&self, disabled: bool) {
        let mut state = lock(&self.state);
        if state.intx_disabled == disabled {
            return;
        }
        state.intx_disabled = disabled;
        if state.isr != 0 && !state.msix.enabled() {
            self.line(!disabled);
        }
    }

    /// Applies MSI-X message control, delivering what became deliverable. Turning MSI-X on
    /// drops a pending INTx# level.
    pub(crate) fn set_msix_control(&self, enabled: bool, function_masked: bool) {
        let mut state = lock(&self.state);
        let was_enabled = state.msix.enabled();
        for message in state.msix.set_control(enabled, function_masked) {
            self.send(message);
        }
        if enabled && !was_enabled && state.isr != 0 && !state.intx_disabled {
            self.line(false);
        }
    }

    pub(crate) fn msix_enabled(&self) -> bool {
        lock(&self.state).msix.enabled()
    }

    pub(crate) fn read_table(&self, offset: u64, data: &mut [u8]) {
        lock(&self.state).msix.read_table(offset, data);
    }

    /// Writes the MSI-X table; `false` when the access was refused.
    pub(crate) fn write_table(&self, offset: u64, data: &[u8]) -> bool {
        let mut state = lock(&self.state);
        match state.msix.write_table(offset, data) {
            Some(messages) => {
                for message in messages {
                    self.send(message);
                }
                true
            }
            None => false,
        }
    }

    pub(crate) fn read_pba(&self, offset: u64, data: &mut [u8]) {
        lock(&self.state).msix.read_pba(offset, data);
    }

    /// The vector a value written to a vector register maps to: itself when it is in the
    /// table, else "no vector" (which the driver reads back to learn that mapping failed).
    fn checked_vector(state: &State, vector: u16) -> u16 {
        if vector < state.msix.len() {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    pub(crate) fn config_vector(&self) -> u16 {
        lock(&self.state).config_vector
    }

    pub(crate) fn set_config_vector(&self, vector: u16) {
        let mut state = lock(&self.state);
        state.config_vector = Self::checked_vector(&state, vector);
    }

    pub(crate) fn queue_vector(&self, queue: u16) -> u16 {
        lock(&self.state)
            .queue_vectors
            .get(usize::from(queue))
            .copied()
            .unwrap_or(VIRTIO_MSI_NO_VECTOR)
    }

    pub(crate) fn set_queue_vector(&self, queue: u16, vector: u16) {
        let mut state = lock(&self.state);
        let vector = Self::checked_vector(&state, vector);
        if let Some(v) = state.queue_vectors.get_mut(usize::from(queue)) {
            *v = vector;
        }
    }

    /// The virtio reset: vectors unmapped, ISR clear, INTx# low. MSI-X itself is PCI state and
    /// stays as the guest programmed it.
    pub(crate) fn reset(&self) {
        let mut state = lock(&self.state);
        state.config_vector = VIRTIO_MSI_NO_VECTOR;
        state.queue_vectors.fill(VIRTIO_MSI_NO_VECTOR);
        if std::mem::take(&mut state.isr) != 0 {
            self.line(false);
        }
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn signal_used_queue(&self, queue: u16) {
        let mut state = lock(&self.state);
        let vector = state
            .queue_vectors
            .get(usize::from(queue))
            .copied()
            .unwrap_or(VIRTIO_MSI_NO_VECTOR);
        self.raise(&mut state, vector, ISR_QUEUE);
    }

    fn signal_config_change(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        let mut state = lock(&self.state);
        // The configuration bit is set whatever the interrupt mode.
        state.isr |= ISR_CONFIG;
        let vector = state.config_vector;
        self.raise(&mut state, vector, ISR_CONFIG);
    }
}
