//! The platform benchmark: `cargo bench -p lunavm --bench platform [-- --quick]`.
//!
//! Timer interrupts delivered per second of host time to the `timer` guest
//! (`mode=hlt`: the guest halts until each PIT tick), with lunavm's userspace
//! PIC/PIT on virtual time against KVM's in-kernel irqchip and PIT, in one
//! run. With the userspace platform a halt jumps virtual time to the next PIT
//! deadline, so ticks arrive as fast as the exits allow; the in-kernel PIT
//! ticks on host time, so it cannot beat the programmed rate. Both are
//! measured at the same programmed rate (hz=1000 and hz=10000) and the same
//! tick count; medians of several runs. Writes `target/bench-platform.json`.

use std::time::Instant;

use lunavm::machine::{IrqchipMode, Machine, MachineConfig, StopCondition, StopReason};
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Interrupts per host second for one run of `timer mode=hlt ticks=T hz=H`.
fn run(irqchip: IrqchipMode, ticks: u64, hz: u64) -> f64 {
    let elf = lunavm::guests::find("timer").expect("the timer guest").elf;
    let mut m = Machine::new(MachineConfig {
        irqchip,
        ..MachineConfig::default()
    })
    .expect("a machine");
    m.load_kernel(elf, &format!("mode=hlt ticks={ticks} hz={hz}"), &[])
        .expect("load");
    let start = Instant::now();
    let stop = m.run(&StopCondition::default()).expect("run");
    let secs = start.elapsed().as_secs_f64();
    assert!(
        matches!(stop, StopReason::GuestExit { value: 0 }),
        "timer guest stopped: {stop:?}"
    );
    let out = String::from_utf8_lossy(&m.serial_output()).into_owned();
    assert!(
        out.contains(&format!("timer: {ticks} ticks via hlt")),
        "{out}"
    );
    ticks as f64 / secs
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (ticks, reps) = if quick { (200, 3) } else { (1000, 5) };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "lunavm platform benchmark ({}), CPU: {cpu}",
        if quick { "quick" } else { "full" }
    );
    println!(
        "timer guest, mode=hlt, {ticks} ticks, median of {reps} runs (interrupts per host second)"
    );
    let mut rows = Vec::new();
    for hz in [1000u64, 10_000] {
        let user = median(
            (0..reps)
                .map(|_| run(IrqchipMode::Userspace, ticks, hz))
                .collect(),
        );
        let kernel = median(
            (0..reps)
                .map(|_| run(IrqchipMode::Kernel, ticks, hz))
                .collect(),
        );
        println!(
            "  hz={hz:<6} userspace PIC/PIT {user:>10.0} /s   in-kernel irqchip {kernel:>10.0} /s   ratio {:.2}",
            user / kernel
        );
        rows.push(json!({ "hz": hz, "userspace_per_s": user, "kernel_per_s": kernel, "ratio": user / kernel }));
    }
    let out = json!({ "benchmark": "lunavm platform", "quick": quick, "cpu": cpu, "ticks": ticks, "rows": rows });
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-platform.json");
    if let Err(e) = std::fs::write(
        &path,
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    ) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}
