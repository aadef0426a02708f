//! Interrupt lines that devices raise from inside a bus access. A device only
//! records an edge here; the run loop delivers the edges to the interrupt
//! controller (the userspace PIC or KVM's irqchip) before the vCPU next runs,
//! so interrupts still enter the guest only at exit boundaries.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Edges raised since the run loop last delivered them, one bit per ISA line.
#[derive(Debug, Default)]
pub struct IrqEdges(AtomicU32);

impl IrqEdges {
    /// A set with no edge pending.
    pub fn new() -> Arc<IrqEdges> {
        Arc::new(IrqEdges::default())
    }

    /// Records an edge on `line` (0..=15).
    pub fn pulse(&self, line: u8) {
        self.0.fetch_or(1 << (line & 15), Ordering::AcqRel);
    }

    /// The pending edges as a bit mask, cleared.
    pub fn take(&self) -> u32 {
        self.0.swap(0, Ordering::AcqRel)
    }

    /// Whether an edge is pending.
    pub fn pending(&self) -> bool {
        self.0.load(Ordering::Acquire) != 0
    }
}

/// One device's interrupt line.
#[derive(Clone, Debug)]
pub struct IrqLine {
    edges: Arc<IrqEdges>,
    line: u8,
}

impl IrqLine {
    /// Line `line` of `edges`.
    pub fn new(edges: Arc<IrqEdges>, line: u8) -> IrqLine {
        IrqLine { edges, line }
    }

    /// The ISA line number.
    pub fn line(&self) -> u8 {
        self.line
    }

    /// Signals an interrupt: an edge on the line.
    pub fn pulse(&self) {
        self.edges.pulse(self.line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_collect_until_taken() {
        let edges = IrqEdges::new();
        IrqLine::new(edges.clone(), 5).pulse();
        IrqLine::new(edges.clone(), 11).pulse();
        assert!(edges.pending());
        assert_eq!(edges.take(), (1 << 5) | (1 << 11));
        assert_eq!(edges.take(), 0);
    }
}
