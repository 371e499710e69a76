//! The interrupt messages the IO-APIC (and, later, MSI-capable devices and IPIs) send to local
//! APICs: the fields of the APIC bus / system-bus message that decide who accepts it and
//! how. Shared by [`super::ioapic`] (which produces them) and [`super::lapic`] (which accepts
//! them); the machine carries them from one to the other.

/// How the receiving local APIC handles the message (the ICR's and a redirection entry's
/// delivery-mode field, bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// 000: the vector goes into IRR.
    Fixed,
    /// 001: as Fixed, to the lowest-priority APIC among the destinations.
    LowestPriority,
    /// 010: system management interrupt (not modelled by the receiver: logged, dropped).
    Smi,
    /// 100: non-maskable interrupt (vector 2, ignores the vector field).
    Nmi,
    /// 101: INIT.
    Init,
    /// 110: start-up IPI (ICR only).
    StartUp,
    /// 111: external interrupt: the vector comes from the 8259 (INTA cycle).
    ExtInt,
}

impl DeliveryMode {
    /// Decode the 3-bit field; `None` for the reserved encoding 011.
    pub fn from_bits(bits: u32) -> Option<DeliveryMode> {
        Some(match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            _ => return None,
        })
    }
}

/// How the destination field is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationMode {
    /// The destination is an APIC ID.
    Physical,
    /// The destination is matched against each APIC's LDR/DFR (flat or cluster model).
    Logical,
}

/// One interrupt message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptMessage {
    pub vector: u8,
    pub delivery: DeliveryMode,
    pub destination_mode: DestinationMode,
    /// Destination APIC ID or logical destination (8 bits in xAPIC mode, 32 in x2APIC mode;
    /// 0xff / 0xffff_ffff broadcast).
    pub destination: u32,
    /// Level-triggered: the receiver sets TMR and, at EOI, broadcasts the vector back to the
    /// IO-APICs (remote IRR).
    pub level_triggered: bool,
}
