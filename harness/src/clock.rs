//! Virtual time.
//!
//! No host time enters the execution path. Virtual time advances by a fixed cost
//! for every exit the guest causes, and by explicit steps. Exits the harness
//! causes (single steps, breakpoints, kicks) never move it, so a run under a
//! debugger behaves exactly like a plain one.

/// Virtual nanoseconds charged for a port-I/O exit.
pub const PIO_EXIT_NS: u64 = 1_000;
/// Virtual nanoseconds charged for an MMIO exit.
pub const MMIO_EXIT_NS: u64 = 1_000;
/// Virtual nanoseconds charged for an instruction lunavm completes for KVM.
pub const COMPLETION_NS: u64 = 100;
/// Virtual nanoseconds charged for a ucall.
pub const UCALL_NS: u64 = 1_000;

/// The kinds of guest-caused events that cost virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// A port-I/O exit.
    Pio,
    /// An MMIO exit.
    Mmio,
    /// An instruction lunavm completed.
    Completion,
    /// A ucall.
    Ucall,
}

impl Charge {
    /// Its fixed cost in virtual nanoseconds.
    pub const fn cost_ns(self) -> u64 {
        match self {
            Charge::Pio => PIO_EXIT_NS,
            Charge::Mmio => MMIO_EXIT_NS,
            Charge::Completion => COMPLETION_NS,
            Charge::Ucall => UCALL_NS,
        }
    }
}

/// The machine's virtual clock, owned by the run loop.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Clock {
    now_ns: u64,
    guest_exits: u64,
}

impl Clock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Current virtual time in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Number of guest-caused exits so far: the first half of a run position.
    pub fn guest_exits(&self) -> u64 {
        self.guest_exits
    }

    /// Accounts for one guest-caused exit.
    pub fn charge(&mut self, kind: Charge) {
        self.now_ns = self.now_ns.saturating_add(kind.cost_ns());
        self.guest_exits += 1;
    }

    /// Moves time forward by `ns` (a script's step or a halt's jump to a deadline).
    pub fn advance(&mut self, ns: u64) {
        self.now_ns = self.now_ns.saturating_add(ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_accumulate_and_count() {
        let mut c = Clock::new();
        c.charge(Charge::Pio);
        c.charge(Charge::Completion);
        assert_eq!(c.now_ns(), PIO_EXIT_NS + COMPLETION_NS);
        assert_eq!(c.guest_exits(), 2);
        c.advance(5);
        assert_eq!(c.guest_exits(), 2, "steps are not exits");
        assert_eq!(c.now_ns(), PIO_EXIT_NS + COMPLETION_NS + 5);
    }
}
