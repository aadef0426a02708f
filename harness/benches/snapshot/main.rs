//! lunavm's snapshot-restore benchmark:
//! `cargo bench -p lunavm --bench snapshot [-- --quick]`.
//!
//! The built-in `dirty` guest writes one word into each of its first `pages=N`
//! pages, then makes one port-0x80 exit, every round. Each side boots it, runs
//! to the first port-0x80 exit (the guest is warm: its pages are faulted in),
//! snapshots there and then loops { restore the snapshot; run to the next
//! exit }. The guest writes the same N pages again before that exit, so any
//! cost a restore defers into the next KVM_RUN (write-protection faults on the
//! re-armed pages) is counted. One iteration = restore + run to exit; the
//! restore alone is timed too. For 1, 16, 256 and 4096 dirty pages in 128 MiB
//! and 1 GiB guests, one run measures:
//!
//! (i)   lunavm: `Machine::restore_snapshot` (O(dirty pages): KVM's dirty log
//!       OR'ed with vm-memory's bitmap) + `Machine::run(max_exits = 1)`.
//! (ii)  full copy: the same machine alternating between two snapshots A and
//!       B taken one exit apart. A restore of a snapshot that is not the one
//!       the machine last took or restored copies all of RAM (lunavm's own
//!       full path: every RAM region written back with vm-memory, the same
//!       vCPU and device restore), so each iteration is a full copy. (With
//!       `--quick`, only for 16 dirty pages.)
//! (iii) the floor (`floor.rs`, kvm-ioctls only, no lunavm code): the same
//!       guest and loop with KVM_GET_DIRTY_LOG, a memcpy per dirty page,
//!       KVM_CLEAR_DIRTY_LOG and KVM_SET_REGS + KVM_SET_SREGS (the minimum this
//!       guest needs) — and, as "floor+8", the eight vCPU calls lunavm makes
//!       (Firecracker's order) instead of two; and, to price a possible
//!       change, floor+8 with regs, sregs and events handed over in `kvm_run`
//!       (KVM_CAP_SYNC_REGS) instead of three of those ioctls.
//! (iv)  QEMU (Debian's 7.2): migration of the stopped guest to a file
//!       (`migrate exec:cat > FILE`), then per restore a fresh
//!       `qemu-system-x86_64 -incoming defer`: QMP `migrate-incoming
//!       exec:cat FILE` to the MIGRATION completed event, plus `cont`
//!       (restore time), and spawn → QMP ready (process start) separately.
//!       (With `--quick`, only for 16 dirty pages.) See `qemu.rs`.
//!
//! The lunavm and floor variants run interleaved in blocks on live machines,
//! every iteration checked (port-0x80 value and buffer page 0 say the guest
//! ran exactly one round from the snapshot). A breakdown of lunavm's restore
//! (dirty-log ioctls priced by the floor's, page copies in place, vm-memory
//! bitmap passes, each vCPU ioctl alone) follows.
//! It prints tables and the machine, and writes `target/bench-snapshot.json`.
//!
//! Options after `--`: `--quick`, `--no-qemu`, `--json PATH`. Arguments cargo
//! or libtest pass (`--bench`, filters) are ignored.

#[allow(dead_code)]
#[path = "../common.rs"]
mod common;
mod floor;
mod qemu;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use floor::{Floor, VcpuRestore};
use kvm_bindings::Msrs;
use kvm_ioctls::VcpuFd;
use lunavm::machine::{Machine, MachineConfig, StopCondition, StopReason};
use lunavm::snapshot::vcpu::VcpuState;
use lunavm::snapshot::{RestoreStats, Snapshot};
use object::{Object, ObjectSymbol};
use qemu::QemuResult;
use report::{median, us, Stats};
use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// Errors of the benchmark.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// One MiB.
pub const MIB: u64 = 1 << 20;
const MEM_SIZES: [u64; 2] = [128 * MIB, 1024 * MIB];
/// The dirty-page counts measured.
pub const DIRTY: [u64; 4] = [1, 16, 256, 4096];
/// Rounds the guest is told to do: more than any run reaches.
const ROUNDS: u64 = 1_000_000_000;
const PAGE: u64 = 4096;
/// The QEMU binary (iv) runs.
pub const QEMU: &str = "qemu-system-x86_64";

// ---------------------------------------------------------------- options

/// How much to measure.
pub struct Config {
    quick: bool,
    /// Measuring time per side and configuration (split into blocks).
    budget: Duration,
    min_iters: usize,
    max_iters: usize,
    blocks: usize,
    /// Measure the full copy for every dirty count (else only for 16).
    full_all: bool,
    /// QEMU for every dirty count (else only for 16).
    qemu_all: bool,
    /// Measuring time of the full-copy loop per configuration.
    full_budget: Duration,
    full_min: usize,
    full_max: usize,
    /// Repetitions of each single-call timing in the breakdown.
    call_reps: usize,
    /// QEMU restores per configuration.
    qemu_reps: usize,
    qemu: bool,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Config, Error> {
    let mut quick = false;
    let mut qemu = true;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--no-qemu" => qemu = false,
            "--json" => json = Some(PathBuf::from(args.next().ok_or("--json needs a path")?)),
            "-h" | "--help" => {
                println!(
                    "usage: cargo bench -p lunavm --bench snapshot [-- [--quick] [--no-qemu] [--json PATH]]"
                );
                std::process::exit(0);
            }
            // `--bench` (from cargo), libtest flags and filters: not ours.
            _ => {}
        }
    }
    Ok(if quick {
        Config {
            quick,
            budget: Duration::from_millis(250),
            min_iters: 15,
            max_iters: 3000,
            blocks: 3,
            full_all: false,
            qemu_all: false,
            full_budget: Duration::from_millis(250),
            full_min: 3,
            full_max: 10,
            call_reps: 30,
            qemu_reps: 3,
            qemu,
            json,
        }
    } else {
        Config {
            quick,
            budget: Duration::from_millis(2000),
            min_iters: 60,
            max_iters: 40_000,
            blocks: 5,
            full_all: true,
            qemu_all: true,
            full_budget: Duration::from_millis(1500),
            full_min: 6,
            full_max: 40,
            call_reps: 200,
            qemu_reps: 10,
            qemu,
            json,
        }
    })
}

/// Median of `reps` timings of `f`, in µs.
fn time_calls(reps: usize, mut f: impl FnMut() -> Result<(), Error>) -> Result<f64, Error> {
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        t.push(us(t0.elapsed()));
    }
    Ok(median(&t))
}

/// Iterations that fit `budget` at `per` each, within [min, max].
fn iterations(budget: Duration, per: Duration, min: usize, max: usize) -> usize {
    let n = budget.as_nanos() / per.as_nanos().max(1);
    usize::try_from(n).unwrap_or(max).clamp(min, max)
}

// ---------------------------------------------------------------- the guest

/// The `dirty` guest's ELF and the guest-physical address of its buffer.
pub struct Guest {
    /// The ELF image.
    pub elf: &'static [u8],
    /// Guest-physical address of its buffer (page 0 holds the round).
    pub buffer: u64,
}

fn dirty_guest() -> Result<Guest, Error> {
    let elf = lunavm::guests::find("dirty")
        .ok_or("no built-in guest 'dirty' (harness/guests/guests.txt)")?
        .elf;
    let file = object::File::parse(elf)?;
    let buffer = file
        .symbols()
        .find(|s| s.name() == Ok("buffer"))
        .map(|s| s.address())
        .ok_or("the dirty guest has no `buffer` symbol")?;
    if buffer % PAGE != 0 {
        return Err(format!("the dirty guest's buffer at {buffer:#x} is not page-aligned").into());
    }
    Ok(Guest { elf, buffer })
}

/// The guest's command line for `pages` dirty pages.
pub fn cmdline(pages: u64) -> String {
    format!("pages={pages} rounds={ROUNDS}")
}

// ---------------------------------------------------------------- (i), (ii) lunavm

fn one_exit() -> StopCondition {
    StopCondition {
        max_exits: Some(1),
        ..Default::default()
    }
}

/// A lunavm machine stopped at the `dirty` guest's first port-0x80 exit, and
/// its snapshot there.
struct Luna {
    m: Machine,
    snap: Snapshot,
    buffer: u64,
    pages: u64,
}

/// One iteration's times.
#[derive(Clone, Copy)]
struct Sample {
    restore: Duration,
    total: Duration,
}

/// Restores `snap` and runs to the next guest-caused exit, timed.
fn restore_run(m: &mut Machine, snap: &Snapshot) -> Result<(Sample, RestoreStats), Error> {
    let t0 = Instant::now();
    let stats = m.restore_snapshot(snap)?;
    let t1 = Instant::now();
    let stop = m.run(&one_exit())?;
    let t2 = Instant::now();
    if stop != (StopReason::ExitBudget { exits: 1 }) {
        return Err(format!("lunavm: the run stopped with {}", stop.describe()).into());
    }
    Ok((
        Sample {
            restore: t1 - t0,
            total: t2 - t0,
        },
        stats,
    ))
}

impl Luna {
    fn boot(guest: &Guest, mem_size: u64, pages: u64) -> Result<Luna, Error> {
        let mut m = Machine::new(MachineConfig {
            mem_size,
            ..Default::default()
        })?;
        m.load_kernel(guest.elf, &cmdline(pages), &[])?;
        // The runtime's UART setup exits first; stop at the first POST write.
        let mut exits = 0;
        while m.post_code().1 == 0 {
            let stop = m.run(&one_exit())?;
            if !matches!(stop, StopReason::ExitBudget { .. }) {
                return Err(format!("lunavm: the guest stopped with {}", stop.describe()).into());
            }
            exits += 1;
            if exits > 10_000 {
                return Err("lunavm: no port-0x80 exit within 10000 exits".into());
            }
        }
        let snap = m.take_snapshot()?;
        let luna = Luna {
            m,
            snap,
            buffer: guest.buffer,
            pages,
        };
        luna.check(1)?;
        Ok(luna)
    }

    /// The guest is at the exit of round `round`: the POST port saw `round`
    /// writes, the last one `round`, and buffer page 0 holds `round`.
    fn check(&self, round: u64) -> Result<(), Error> {
        let (value, writes) = self.m.post_code();
        if u64::from(value) != round || writes != round {
            return Err(format!(
                "lunavm: port 0x80 saw {writes} writes, last {value}, expected round {round}"
            )
            .into());
        }
        if self.pages > 0 {
            let word: u64 = self.m.memory().read_obj(GuestAddress(self.buffer))?;
            if word != round {
                return Err(format!("lunavm: buffer page 0 holds {word}, expected {round}").into());
            }
        }
        Ok(())
    }

    /// One O(dirty) iteration, checked.
    fn iteration(&mut self) -> Result<(Sample, u64), Error> {
        let (s, stats) = restore_run(&mut self.m, &self.snap)?;
        if stats.full {
            return Err("lunavm: a restore of the base snapshot copied all of RAM".into());
        }
        self.check(2)?;
        Ok((s, stats.pages))
    }
}

/// Measurements of one side in one configuration.
#[derive(Default)]
pub struct Side {
    restore_us: Vec<f64>,
    total_us: Vec<f64>,
    pages_min: u64,
    pages_max: u64,
    /// Floor only: the parts of each restore, µs.
    get_log_us: Vec<f64>,
    copy_us: Vec<f64>,
    clear_us: Vec<f64>,
    vcpu_us: Vec<f64>,
    run_us: Vec<f64>,
}

impl Side {
    fn push(&mut self, restore: Duration, total: Duration, pages: u64) {
        if self.restore_us.is_empty() {
            self.pages_min = pages;
            self.pages_max = pages;
        }
        self.pages_min = self.pages_min.min(pages);
        self.pages_max = self.pages_max.max(pages);
        self.restore_us.push(us(restore));
        self.total_us.push(us(total));
    }

    fn push_floor(&mut self, it: &floor::Iteration) {
        self.push(it.restore(), it.restore() + it.run, it.pages);
        self.get_log_us.push(us(it.get_log));
        self.copy_us.push(us(it.copy));
        self.clear_us.push(us(it.clear));
        self.vcpu_us.push(us(it.vcpu));
        self.run_us.push(us(it.run));
    }

    fn rate(&self) -> f64 {
        1e6 / median(&self.total_us)
    }

    fn json(&self) -> Value {
        let mut v = json!({
            "restores_per_sec_median": self.rate(),
            "restore_plus_run_us": Stats::of(&self.total_us).json("us"),
            "restore_only_us": Stats::of(&self.restore_us).json("us"),
            "pages_copied_min": self.pages_min,
            "pages_copied_max": self.pages_max,
        });
        if !self.get_log_us.is_empty() {
            v["parts_us_median"] = json!({
                "get_dirty_log": median(&self.get_log_us),
                "page_copies": median(&self.copy_us),
                "clear_dirty_log": median(&self.clear_us),
                "vcpu_state": median(&self.vcpu_us),
                "run_to_exit": median(&self.run_us),
            });
        }
        v
    }
}

/// The parts of lunavm's restore timed on their own (µs, medians).
pub struct LunaParts {
    /// `lunavm::snapshot::vcpu::restore`: the eight calls.
    vcpu_restore: f64,
    /// Each call alone.
    calls: Vec<(&'static str, f64)>,
    /// `restore_snapshot` with no page dirty.
    clean_restore: f64,
    /// Devices whose state a restore sets, and the size of that state as JSON.
    devices: usize,
    device_json: usize,
    /// vm-memory `write_slice` of the N dirty pages from the snapshot, right
    /// after the guest wrote them (as in a restore).
    page_copies: f64,
    /// The same copies with plain memcpy (no vm-memory bitmap), in place.
    raw_copies: f64,
    /// vm-memory bitmap `get_and_reset` over every region (collect).
    bitmap_get_and_reset: f64,
    /// vm-memory bitmap `reset` over every region (after the copies).
    bitmap_reset: f64,
    msrs: usize,
}

/// One vCPU call of lunavm's restore, on its own.
type VcpuCall = fn(&VcpuFd, &VcpuState, &Msrs) -> Result<(), Error>;

/// The vCPU calls lunavm's restore makes, in its order, and a read for scale.
fn vcpu_calls() -> [(&'static str, VcpuCall); 9] {
    [
        ("set_mp_state", |v, st, _| Ok(v.set_mp_state(st.mp_state)?)),
        ("set_regs", |v, st, _| Ok(v.set_regs(&st.regs)?)),
        ("set_sregs", |v, st, _| Ok(v.set_sregs(&st.sregs)?)),
        ("set_xsave", |v, st, _| {
            // SAFETY: `st.xsave` is a whole `kvm_xsave` that KVM_GET_XSAVE filled.
            Ok(unsafe { v.set_xsave(&st.xsave) }?)
        }),
        ("set_xcrs", |v, st, _| Ok(v.set_xcrs(&st.xcrs)?)),
        ("set_debug_regs", |v, st, _| {
            Ok(v.set_debug_regs(&st.debugregs)?)
        }),
        ("set_msrs", |v, _, msrs| Ok(v.set_msrs(msrs).map(|_| ())?)),
        ("set_vcpu_events", |v, st, _| {
            Ok(v.set_vcpu_events(&st.events)?)
        }),
        ("get_regs (for scale)", |v, _, _| {
            Ok(v.get_regs().map(|_| ())?)
        }),
    ]
}

impl Luna {
    /// Times the parts of a restore alone, on the machine put back at the
    /// snapshot (every call sets the state it already has).
    fn parts(&mut self, reps: usize) -> Result<LunaParts, Error> {
        self.iteration()?;
        self.m.restore_snapshot(&self.snap)?;
        // A restore with nothing dirty (the fixed part of every restore),
        // lunavm's vCPU restore and each of its calls, timed round-robin so
        // that host noise spreads over all of them alike.
        let st = self
            .snap
            .state
            .vcpus
            .first()
            .ok_or("lunavm: the snapshot has no vCPU")?;
        let msrs = Msrs::from_entries(&st.msrs)?;
        let calls = vcpu_calls();
        let (mut clean, mut whole) = (Vec::new(), Vec::new());
        let mut each: Vec<Vec<f64>> = vec![Vec::new(); calls.len()];
        for _ in 0..reps {
            let t0 = Instant::now();
            let stats = self.m.restore_snapshot(&self.snap)?;
            clean.push(us(t0.elapsed()));
            if stats.pages != 0 {
                return Err(
                    format!("lunavm: {} pages dirty with the guest stopped", stats.pages).into(),
                );
            }
            let vcpu = self.m.vcpu();
            let t0 = Instant::now();
            lunavm::snapshot::vcpu::restore(vcpu, st)?;
            whole.push(us(t0.elapsed()));
            for ((_, call), t) in calls.iter().zip(&mut each) {
                let t0 = Instant::now();
                call(vcpu, st, &msrs)?;
                t.push(us(t0.elapsed()));
            }
        }
        let clean_restore = median(&clean);
        let vcpu_restore = median(&whole);
        let calls: Vec<(&'static str, f64)> = calls
            .iter()
            .zip(&each)
            .map(|((name, _), t)| (*name, median(t)))
            .collect();
        let msrs = st.msrs.len();
        let devices = self.snap.state.pio.len() + self.snap.state.mmio.len();
        let device_json = serde_json::to_vec(&(&self.snap.state.pio, &self.snap.state.mmio))?.len();

        // The copies restore_snapshot makes, in place: right after the guest
        // rewrote its N pages, vm-memory write_slice of each from the snapshot;
        // then a restore (untimed) puts the machine back.
        let index = self
            .m
            .memory()
            .iter()
            .position(|r| {
                let start = r.start_addr().0;
                (start..start + r.len()).contains(&self.buffer)
            })
            .ok_or("lunavm: the buffer is outside guest RAM")?;
        let page = usize::try_from(PAGE)?;
        let (mut copies, mut raw) = (Vec::new(), Vec::new());
        for i in 0..2 * reps.min(40) {
            self.iteration()?;
            let region = self
                .m
                .memory()
                .iter()
                .nth(index)
                .ok_or("lunavm: region missing")?;
            let copy = self
                .snap
                .memory
                .get(index)
                .ok_or("lunavm: region missing")?;
            let base = self.buffer - region.start_addr().0;
            let t0 = Instant::now();
            if i % 2 == 0 {
                for p in 0..self.pages {
                    let off = base + p * PAGE;
                    let at = usize::try_from(off)?;
                    region.write_slice(&copy[at..at + page], MemoryRegionAddress(off))?;
                }
                copies.push(us(t0.elapsed()));
            } else {
                // What a copy that bypasses vm-memory's bitmap would cost.
                let host = region.get_host_address(MemoryRegionAddress(base))?;
                let at = usize::try_from(base)?;
                let len = usize::try_from(self.pages * PAGE)?;
                let src = copy
                    .get(at..at + len)
                    .ok_or("lunavm: buffer outside the copy")?;
                if usize::try_from(region.len())? < at + len {
                    return Err("lunavm: buffer outside the region".into());
                }
                for p in 0..usize::try_from(self.pages)? {
                    // SAFETY: [base, base + len) lies inside the region's live
                    // mapping (checked above) and `src` is a distinct host buffer;
                    // the vCPU is not running.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr().add(p * page),
                            host.add(p * page),
                            page,
                        )
                    };
                }
                raw.push(us(t0.elapsed()));
            }
            self.m.restore_snapshot(&self.snap)?;
        }
        let page_copies = median(&copies);
        let raw_copies = median(&raw);
        let mem = self.m.memory();
        let bitmap_reset = time_calls(reps, || {
            for r in mem.iter() {
                std::hint::black_box(r.get_mmap().bitmap().take());
            }
            Ok(())
        })?;
        let bitmap_get_and_reset = time_calls(reps, || {
            for r in mem.iter() {
                std::hint::black_box(r.get_mmap().bitmap().take());
            }
            Ok(())
        })?;
        // Back to a clean base for whatever comes next.
        self.m.restore_snapshot(&self.snap)?;
        Ok(LunaParts {
            vcpu_restore,
            calls,
            clean_restore,
            devices,
            device_json,
            page_copies,
            raw_copies,
            bitmap_get_and_reset,
            bitmap_reset,
            msrs,
        })
    }

    /// (ii): alternates between the base snapshot and one taken an exit
    /// later; every restore copies all of RAM.
    fn full_copy(&mut self, cfg: &Config) -> Result<Side, Error> {
        self.iteration()?;
        let later = self.m.take_snapshot()?; // at the exit of round 2
        let mut side = Side::default();
        let step = |luna: &mut Luna, i: usize| -> Result<Sample, Error> {
            let (snap, round) = if i % 2 == 0 {
                (&luna.snap, 2)
            } else {
                (&later, 3)
            };
            let (s, stats) = restore_run(&mut luna.m, snap)?;
            if !stats.full {
                return Err("lunavm: the alternating restore was not a full copy".into());
            }
            luna.check(round)?;
            Ok(s)
        };
        // Two warm-up restores: the first touches every page of guest RAM.
        let warm = step(self, 0)?;
        step(self, 1)?;
        let n = iterations(cfg.full_budget, warm.total, cfg.full_min, cfg.full_max);
        let ram_pages = self.m.memory().iter().map(|r| r.len() / PAGE).sum();
        for i in 0..n {
            let s = step(self, i)?;
            side.push(s.restore, s.total, ram_pages);
        }
        // Leave the machine based on its own snapshot again.
        self.m.restore_snapshot(&self.snap)?;
        Ok(side)
    }
}

// ---------------------------------------------------------------- (iii) floor

fn floor_boot(guest: &Guest, mem_size: u64, pages: u64) -> Result<Floor, Error> {
    let mut f = Floor::boot(guest.elf, &cmdline(pages), usize::try_from(mem_size)?)?;
    let first = f.run_to_post()?;
    if first != 1 {
        return Err(format!("floor: the first port-0x80 write was {first}, expected 1").into());
    }
    if !f.serial.is_empty() {
        return Err(format!(
            "floor: unexpected serial output {:?}",
            String::from_utf8_lossy(&f.serial)
        )
        .into());
    }
    f.snapshot()?;
    if pages > 0 && f.read_u64(guest.buffer) != Some(1) {
        return Err("floor: buffer page 0 does not hold 1 at the snapshot".into());
    }
    Ok(f)
}

fn floor_iteration(
    f: &mut Floor,
    mode: VcpuRestore,
    guest: &Guest,
    pages: u64,
) -> Result<floor::Iteration, Error> {
    let it = f.restore_and_run(mode)?;
    if it.post_value != 2 || (pages > 0 && f.read_u64(guest.buffer) != Some(2)) {
        return Err(format!(
            "floor: after a restore the guest wrote {} to port 0x80 and buffer page 0 holds {:?}, expected 2",
            it.post_value,
            f.read_u64(guest.buffer)
        )
        .into());
    }
    Ok(it)
}

// ---------------------------------------------------------------- one configuration

/// Everything measured in one configuration.
pub struct ConfigResult {
    mem: u64,
    pages: u64,
    luna: Side,
    full: Option<Side>,
    floor: Side,
    floor8: Side,
    floor8_sync: Option<Side>,
    parts: LunaParts,
    floor_calls: Vec<(&'static str, f64)>,
    floor_msrs: usize,
    qemu: Option<QemuResult>,
}

/// A restore must copy the guest's N pages and at most a few more (the
/// guest's stack or page tables, were they written).
fn check_pages(who: &str, copied: u64, dirty: u64) -> Result<(), Error> {
    if copied < dirty || copied > dirty + 8 {
        return Err(
            format!("{who}: a restore copied {copied} pages, the guest dirtied {dirty}").into(),
        );
    }
    Ok(())
}

fn measure(cfg: &Config, guest: &Guest, mem: u64, pages: u64) -> Result<ConfigResult, Error> {
    let t_boot = Instant::now();
    // One after the other: two emulated boots at once take twice as long
    // here. Boot time is not measured (the 16 MiB .bss clear runs in KVM's
    // emulator for about a second).
    let mut luna = Luna::boot(guest, mem, pages)?;
    let mut fl = floor_boot(guest, mem, pages)?;
    let t_boot = t_boot.elapsed();
    let t_measure = Instant::now();

    // Warm up, and size the blocks from the warm-up's times.
    let mut warm = Duration::ZERO;
    for _ in 0..5 {
        warm = luna.iteration()?.0.total;
        floor_iteration(&mut fl, VcpuRestore::RegsSregs, guest, pages)?;
        floor_iteration(&mut fl, VcpuRestore::Firecracker, guest, pages)?;
        if fl.sync_regs {
            floor_iteration(&mut fl, VcpuRestore::FirecrackerSyncRegs, guest, pages)?;
        }
    }
    let n = iterations(cfg.budget, warm, cfg.min_iters, cfg.max_iters);
    let per_block = n.div_ceil(cfg.blocks);
    let (mut l, mut f2, mut f8, mut f8s) = (
        Side::default(),
        Side::default(),
        Side::default(),
        Side::default(),
    );
    let sides = if fl.sync_regs { 4 } else { 3 };
    for b in 0..cfg.blocks {
        // Rotate the order so no side always follows the same one.
        for k in 0..sides {
            match (b + k) % sides {
                0 => {
                    for _ in 0..per_block {
                        let (s, p) = luna.iteration()?;
                        check_pages("lunavm", p, pages)?;
                        l.push(s.restore, s.total, p);
                    }
                }
                1 => {
                    for _ in 0..per_block {
                        let it = floor_iteration(&mut fl, VcpuRestore::RegsSregs, guest, pages)?;
                        check_pages("floor", it.pages, pages)?;
                        f2.push_floor(&it);
                    }
                }
                2 => {
                    for _ in 0..per_block {
                        let it = floor_iteration(&mut fl, VcpuRestore::Firecracker, guest, pages)?;
                        check_pages("floor", it.pages, pages)?;
                        f8.push_floor(&it);
                    }
                }
                _ => {
                    for _ in 0..per_block {
                        let it = floor_iteration(
                            &mut fl,
                            VcpuRestore::FirecrackerSyncRegs,
                            guest,
                            pages,
                        )?;
                        check_pages("floor", it.pages, pages)?;
                        f8s.push_floor(&it);
                    }
                }
            }
        }
    }
    let parts = luna.parts(cfg.call_reps)?;
    let floor_calls = fl
        .vcpu_call_costs(cfg.call_reps)?
        .into_iter()
        .map(|(k, d)| (k, us(d)))
        .collect();
    let floor_msrs = fl.msr_count();
    drop(fl);
    let t_full = Instant::now();
    let full = if cfg.full_all || pages == 16 {
        Some(luna.full_copy(cfg)?)
    } else {
        None
    };
    eprintln!(
        "    boots {:.1} s, loops and breakdown {:.1} s, full copy {:.1} s",
        t_boot.as_secs_f64(),
        (t_full - t_measure).as_secs_f64(),
        t_full.elapsed().as_secs_f64()
    );
    Ok(ConfigResult {
        mem,
        pages,
        luna: l,
        full,
        floor: f2,
        floor8: f8,
        floor8_sync: (!f8s.total_us.is_empty()).then_some(f8s),
        parts,
        floor_calls,
        floor_msrs,
        qemu: None,
    })
}

// ---------------------------------------------------------------- main

fn json_path(cfg: &Config) -> PathBuf {
    if let Some(p) = &cfg.json {
        return p.clone();
    }
    // The bench runs as <target>/release/deps/snapshot-<hash>.
    let exe = std::env::current_exe().ok();
    let deps = exe
        .as_deref()
        .and_then(Path::parent)
        .filter(|d| d.file_name().is_some_and(|n| n == "deps"));
    let target = deps
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    target
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
        .join("bench-snapshot.json")
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bench snapshot: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), Error> {
    let cfg = parse_args()?;
    let started = Instant::now();
    let info = report::machine_info();
    report::print_machine(&info, cfg.quick);

    let guest = dirty_guest()?;
    let mut results = Vec::new();
    for &mem in &MEM_SIZES {
        for &pages in &DIRTY {
            eprintln!(
                "(i)-(iii) {} RAM, {pages} dirty pages: lunavm, floor, full copy…",
                report::mem_name(mem)
            );
            results.push(measure(&cfg, &guest, mem, pages)?);
        }
    }
    let qemu_version = info["qemu"].as_str().map(str::to_string);
    let qemu_status = qemu::qemu_all(&cfg, &guest, qemu_version.as_deref(), &mut results)?;

    let out = report::print_results(&cfg, &results, &qemu_status);
    let elapsed = started.elapsed().as_secs_f64();
    println!();
    println!("Total bench time: {elapsed:.1} s");
    let json = json!({
        "benchmark": "lunavm snapshot restore",
        "quick": cfg.quick,
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "machine": info,
        "guest": { "name": "dirty", "buffer_gpa": guest.buffer, "rounds": ROUNDS },
        "method": "per iteration: restore the snapshot taken at the guest's first port-0x80 exit, then run to the next exit (the guest rewrites the same N pages first); restores/s = 1e6 / median µs of restore+run",
        "targets": {
            "lunavm_over_floor": report::TARGET_FLOOR,
            "lunavm_over_full_copy_16_pages_1g": report::TARGET_FULL,
            "flat_limit": report::FLAT_LIMIT,
        },
        "results": out,
        "bench_seconds": elapsed,
    });
    let path = json_path(&cfg);
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("JSON: {}", path.display());
    Ok(())
}
