//! Statistics, tables, the machine description, and the printed report and
//! JSON of the snapshot benchmark.

use std::time::Duration;

use serde_json::{json, Value};

use crate::qemu::{QemuResult, QemuStatus};
use crate::{Config, ConfigResult, Side, DIRTY, MIB, QEMU};

/// lunavm restores/s over the floor's.
pub const TARGET_FLOOR: f64 = 0.8;
/// lunavm over full copy at 16 dirty pages in 1 GiB.
pub const TARGET_FULL: f64 = 100.0;
/// 1 GiB over 128 MiB restore time that still counts as flat.
pub const FLAT_LIMIT: f64 = 1.10;

pub use crate::common::Stats;

/// `d` in microseconds.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn median(values: &[f64]) -> f64 {
    Stats::of(values).median
}

// ---------------------------------------------------------------- tables

/// A plain text table: the first column left-aligned, the rest right-aligned.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(x) = w.get_mut(i) {
                    *x = (*x).max(c.chars().count());
                }
            }
        }
        let line = |r: &[String]| {
            r.iter()
                .enumerate()
                .map(|(i, c)| {
                    let fill = " ".repeat(w[i].saturating_sub(c.chars().count()));
                    if i == 0 {
                        format!("{c}{fill}")
                    } else {
                        format!("{fill}{c}")
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        let head = line(&self.header);
        println!("{head}");
        println!("{}", "-".repeat(head.chars().count()));
        for r in &self.rows {
            println!("{}", line(r));
        }
    }
}

pub fn f0(v: f64) -> String {
    format!("{v:.0}")
}
pub fn f1(v: f64) -> String {
    format!("{v:.1}")
}
pub fn f2(v: f64) -> String {
    format!("{v:.2}")
}

pub fn mem_name(mem: u64) -> String {
    if mem >= 1024 * MIB {
        format!("{} GiB", mem / (1024 * MIB))
    } else {
        format!("{} MiB", mem / MIB)
    }
}

pub use crate::common::machine_info;

// ---------------------------------------------------------------- the report

/// Prints the benchmark's heading and the machine it runs on.
pub fn print_machine(info: &Value, quick: bool) {
    let s = |k: &str| info[k].as_str().unwrap_or("unknown").to_string();
    println!(
        "lunavm snapshot-restore benchmark{}",
        if quick { " (--quick)" } else { "" }
    );
    println!(
        "  CPU:    {} ({} CPUs available)",
        s("cpu_model"),
        info["cpus"]
    );
    println!("  kernel: {}", s("kernel"));
    println!("  KVM:    {}", s("kvm"));
    println!("  clock:  {}", s("clocksource"));
    println!("  QEMU:   {}", info["qemu"].as_str().unwrap_or("not found"));
    println!("  lunavm: commit {}", s("lunavm_commit"));
    println!();
}

fn find(results: &[ConfigResult], mem: u64, pages: u64) -> Option<&ConfigResult> {
    results.iter().find(|r| r.mem == mem && r.pages == pages)
}

fn label(r: &ConfigResult) -> String {
    format!("{} / {}", mem_name(r.mem), r.pages)
}

fn opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

fn qemu_rate(q: &QemuResult) -> f64 {
    1e3 / median(&q.restore_ms)
}

fn calls_json(calls: &[(&'static str, f64)]) -> Value {
    calls
        .iter()
        .map(|(k, v)| json!({ "call": k, "us": v }))
        .collect()
}

/// Prints every table and returns the JSON of the results.
pub fn print_results(cfg: &Config, results: &[ConfigResult], qemu: &QemuStatus) -> Value {
    // ---- 1: rates
    println!("Restore + run to the next exit, per iteration (medians; restores/s = 1e6 / median µs of restore+run):");
    let mut t = Table::new(&[
        "RAM / dirty",
        "pages",
        "lunavm/s",
        "µs",
        "restore µs",
        "full-copy/s",
        "ms",
        "floor/s",
        "µs",
        "restore µs",
        "floor+8/s",
        "µs",
        "QEMU/s",
        "ms",
    ]);
    for r in results {
        let pages = if r.luna.pages_min == r.luna.pages_max {
            r.luna.pages_min.to_string()
        } else {
            format!("{}-{}", r.luna.pages_min, r.luna.pages_max)
        };
        t.row(vec![
            label(r),
            pages,
            f0(r.luna.rate()),
            f1(median(&r.luna.total_us)),
            f1(median(&r.luna.restore_us)),
            opt(r.full.as_ref().map(Side::rate), f1),
            opt(r.full.as_ref().map(|f| median(&f.total_us) / 1e3), f1),
            f0(r.floor.rate()),
            f1(median(&r.floor.total_us)),
            f1(median(&r.floor.restore_us)),
            f0(r.floor8.rate()),
            f1(median(&r.floor8.total_us)),
            opt(r.qemu.as_ref().map(qemu_rate), f1),
            opt(r.qemu.as_ref().map(|q| median(&q.restore_ms)), f2),
        ]);
    }
    t.print();
    println!("  pages = RestoreStats.pages (min-max over the iterations); full copy = all of RAM each time;");
    println!("  floor = KVM_SET_REGS + KVM_SET_SREGS; floor+8 = lunavm's 8 vCPU calls; QEMU = restore only (see below).");
    if !cfg.full_all {
        println!("  --quick: full copy measured for 16 dirty pages only.");
    }

    // ---- 2: ratios
    println!();
    println!("Ratios of medians (restores/s):");
    let mut t = Table::new(&[
        "RAM / dirty",
        "lunavm/floor",
        &format!("target >= {TARGET_FLOOR}"),
        "lunavm/floor+8",
        "lunavm/full-copy",
        "lunavm/QEMU",
    ]);
    let mut configs = Vec::new();
    for r in results {
        let vs_floor = r.luna.rate() / r.floor.rate();
        let vs_floor8 = r.luna.rate() / r.floor8.rate();
        let vs_full = r.full.as_ref().map(|f| r.luna.rate() / f.rate());
        let vs_qemu = r.qemu.as_ref().map(|q| r.luna.rate() / qemu_rate(q));
        t.row(vec![
            label(r),
            f2(vs_floor),
            if vs_floor >= TARGET_FLOOR {
                "met".into()
            } else {
                "NOT MET".into()
            },
            f2(vs_floor8),
            opt(vs_full, |v| format!("{v:.0}x")),
            opt(vs_qemu, |v| format!("{v:.0}x")),
        ]);
        let p = &r.parts;
        configs.push(json!({
            "mem_bytes": r.mem,
            "dirty_pages": r.pages,
            "lunavm": r.luna.json(),
            "full_copy": r.full.as_ref().map(Side::json),
            "floor": r.floor.json(),
            "floor_firecracker_vcpu": r.floor8.json(),
            "floor_firecracker_vcpu_sync_regs": r.floor8_sync.as_ref().map(Side::json),
            "qemu": r.qemu.as_ref().map(QemuResult::json),
            "ratio_lunavm_over_floor": vs_floor,
            "ratio_lunavm_over_floor_firecracker_vcpu": vs_floor8,
            "ratio_lunavm_over_full_copy": vs_full,
            "ratio_lunavm_over_qemu": vs_qemu,
            "meets_floor_target": vs_floor >= TARGET_FLOOR,
            "lunavm_parts_us": {
                "vcpu_restore_8_calls": p.vcpu_restore,
                "vcpu_calls": calls_json(&p.calls),
                "restore_nothing_dirty": p.clean_restore,
                "devices_restored": p.devices,
                "device_state_json_bytes": p.device_json,
                "page_copies_write_slice": p.page_copies,
                "page_copies_plain_memcpy": p.raw_copies,
                "bitmap_get_and_reset": p.bitmap_get_and_reset,
                "bitmap_reset": p.bitmap_reset,
                "msrs": p.msrs,
            },
            "floor_vcpu_calls_us": calls_json(&r.floor_calls),
            "floor_msrs": r.floor_msrs,
        }));
    }
    t.print();
    let full_ratio = find(results, 1024 * MIB, 16)
        .and_then(|r| r.full.as_ref().map(|f| r.luna.rate() / f.rate()));
    if let Some(v) = full_ratio {
        println!(
            "  16 dirty pages in 1 GiB: lunavm is {v:.0}x faster than a full copy (target >= {TARGET_FULL:.0}x: {})",
            if v >= TARGET_FULL { "met" } else { "NOT MET" }
        );
    }

    // ---- 3: flat in RAM size
    println!();
    println!("Flat from 128 MiB to 1 GiB? (medians, µs; flat = 1 GiB / 128 MiB <= {FLAT_LIMIT}; the O(RAM) parts are");
    println!("vm-memory's bitmap passes, KVM's dirty-log ioctls (bitmap size) and lunavm's fixed rest, from the breakdown):");
    let mut t = Table::new(&[
        "dirty",
        "lunavm restore 128M",
        "1G",
        "+µs",
        "ratio",
        "flat",
        "O(RAM) parts +µs",
        "restore+run 128M",
        "1G",
        "ratio",
        "floor restore 128M",
        "1G",
    ]);
    let mut flat_json = Vec::new();
    for &pages in &DIRTY {
        let (Some(a), Some(b)) = (
            find(results, 128 * MIB, pages),
            find(results, 1024 * MIB, pages),
        ) else {
            continue;
        };
        let (ra, rb) = (median(&a.luna.restore_us), median(&b.luna.restore_us));
        let (ta, tb) = (median(&a.luna.total_us), median(&b.luna.total_us));
        let o_ram = |r: &ConfigResult| {
            let p = &r.parts;
            let bitmaps = p.bitmap_get_and_reset + p.bitmap_reset;
            let get = median(&r.floor.get_log_us);
            let clear = median(&r.floor.clear_us);
            (
                bitmaps,
                get + clear,
                p.clean_restore - get - bitmaps - p.vcpu_restore,
            )
        };
        let (oa, ob) = (o_ram(a), o_ram(b));
        let flat = rb / ra <= FLAT_LIMIT;
        t.row(vec![
            pages.to_string(),
            f1(ra),
            f1(rb),
            f1(rb - ra),
            f2(rb / ra),
            if flat { "yes".into() } else { "NO".into() },
            format!(
                "{:.1} + {:.1} + {:.1}",
                ob.0 - oa.0,
                ob.1 - oa.1,
                ob.2 - oa.2
            ),
            f1(ta),
            f1(tb),
            f2(tb / ta),
            f1(median(&a.floor.restore_us)),
            f1(median(&b.floor.restore_us)),
        ]);
        flat_json.push(json!({
            "dirty_pages": pages,
            "restore_us_128m": ra, "restore_us_1g": rb, "ratio_restore": rb / ra,
            "restore_plus_run_us_128m": ta, "restore_plus_run_us_1g": tb, "ratio_total": tb / ta,
            "increase_us": { "total": rb - ra, "vm_memory_bitmaps": ob.0 - oa.0,
                "kvm_dirty_log_ioctls": ob.1 - oa.1, "fixed_rest": ob.2 - oa.2 },
            "flat": flat,
        }));
    }
    t.print();
    println!("  O(RAM) parts +µs = vm-memory bitmaps + KVM GET/CLEAR_LOG + fixed rest (1 GiB minus 128 MiB).");

    // ---- 4: breakdown
    println!();
    println!("Where lunavm's restore goes (µs, medians). GET/CLEAR_LOG: the floor's same ioctls on the same slot;");
    println!("bitmaps: vm-memory get_and_reset + reset over all RAM; copies: vm-memory write_slice of the N pages right");
    println!("after the guest wrote them ((memcpy): the same with a plain memcpy, not counted in rest); vCPU:");
    println!("snapshot::vcpu::restore alone; rest = restore - all of those. Clean restore: restore_snapshot with nothing");
    println!("dirty; fixed rest = clean restore - GET_LOG - bitmaps - vCPU (devices, clones, bitmap scans). Floor+8");
    println!("SYNC_REGS: lunavm's vCPU state with regs, sregs and events passed in kvm_run (KVM_CAP_SYNC_REGS), 5 ioctls:");
    let mut t = Table::new(&[
        "RAM / dirty",
        "GET_LOG",
        "CLEAR_LOG",
        "bitmaps",
        "copies",
        "(memcpy)",
        "vCPU (8)",
        "rest",
        "= restore",
        "run",
        "| clean restore",
        "fixed rest",
        "| floor copies",
        "vCPU (2)",
        "= restore",
        "run",
        "| floor+8 SYNC_REGS restore",
        "run",
    ]);
    for r in results {
        let p = &r.parts;
        let get = median(&r.floor.get_log_us);
        let clear = median(&r.floor.clear_us);
        let bitmaps = p.bitmap_get_and_reset + p.bitmap_reset;
        let restore = median(&r.luna.restore_us);
        let rest = restore - get - clear - bitmaps - p.page_copies - p.vcpu_restore;
        t.row(vec![
            label(r),
            f1(get),
            f1(clear),
            f1(bitmaps),
            f1(p.page_copies),
            f1(p.raw_copies),
            f1(p.vcpu_restore),
            f1(rest),
            f1(restore),
            f1(median(&r.luna.total_us) - restore),
            f1(p.clean_restore),
            f1(p.clean_restore - get - bitmaps - p.vcpu_restore),
            f1(median(&r.floor.copy_us)),
            f1(median(&r.floor.vcpu_us)),
            f1(median(&r.floor.restore_us)),
            f1(median(&r.floor.run_us)),
            opt(r.floor8_sync.as_ref().map(|s| median(&s.restore_us)), f1),
            opt(r.floor8_sync.as_ref().map(|s| median(&s.run_us)), f1),
        ]);
    }
    t.print();
    if let Some(r) = results.first() {
        println!();
        println!(
            "lunavm restores the state of {} devices per restore ({} bytes as JSON, deserialised each time).",
            r.parts.devices, r.parts.device_json
        );
        println!(
            "Each vCPU call alone (µs, median of {}; lunavm's vCPU restores {} MSRs, the floor's {}):",
            cfg.call_reps, r.parts.msrs, r.floor_msrs
        );
        let mut t = Table::new(&["call", "lunavm vCPU", "floor vCPU"]);
        for ((name, l), (_, f)) in r.parts.calls.iter().zip(&r.floor_calls) {
            t.row(vec![name.to_string(), f1(*l), f1(*f)]);
        }
        let sum = |c: &[(&str, f64)]| c.iter().take(8).map(|(_, v)| v).sum::<f64>();
        t.row(vec![
            "sum of the 8 set calls".into(),
            f1(sum(&r.parts.calls)),
            f1(sum(&r.floor_calls)),
        ]);
        t.row(vec![
            "snapshot::vcpu::restore (the 8 at once)".into(),
            f1(r.parts.vcpu_restore),
            "-".into(),
        ]);
        t.print();
    }

    let qemu_json = match qemu {
        QemuStatus::Ran => {
            println!();
            println!("QEMU ({QEMU}, microvm, -accel kvm): snapshot = QMP stop + `migrate exec:cat > FILE`; each restore is a");
            println!("fresh process with `-incoming defer`: restore = QMP migrate-incoming `exec:cat FILE` → MIGRATION");
            println!("completed event, + `cont`; start = spawn → QMP greeting, timed apart. O(RAM): the whole stream is read.");
            let mut t = Table::new(&[
                "RAM / dirty",
                "restore ms",
                "load ms",
                "cont ms",
                "start ms",
                "spawn→running ms",
                "file KiB",
            ]);
            for r in results {
                if let Some(q) = &r.qemu {
                    t.row(vec![
                        label(r),
                        f2(median(&q.restore_ms)),
                        f2(median(&q.load_ms)),
                        f2(median(&q.cont_ms)),
                        f1(median(&q.start_ms)),
                        f1(median(&q.spawn_to_running_ms)),
                        (q.file_bytes / 1024).to_string(),
                    ]);
                }
            }
            t.print();
            if !cfg.qemu_all {
                println!("  --quick: QEMU measured for 16 dirty pages only.");
            }
            json!({ "available": true, "method": "stopped source: migrate exec:cat > FILE; per restore a fresh QEMU with -incoming defer: QMP migrate-incoming exec:cat FILE to the MIGRATION completed event, then cont; process start timed apart" })
        }
        QemuStatus::Skipped(why) => {
            println!();
            println!("(iv) QEMU skipped: {why}");
            json!({ "available": false, "skipped_reason": why })
        }
    };
    json!({
        "configs": configs,
        "flat": flat_json,
        "lunavm_over_full_copy_16_pages_1g": full_ratio,
        "qemu": qemu_json,
    })
}
