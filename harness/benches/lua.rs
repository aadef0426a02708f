//! The Lua scenario benchmark: `cargo bench -p lunavm --bench lua [-- --quick]`.
//!
//! Measures, in one run, on this machine:
//! (a) port-I/O exits per second on the `exits` guest (`in=1`: each exit an
//!     `inb` from port 0x80) run by `vm.run{}` with a Lua `hook.pio` read hook
//!     that returns a value, against the same guest and `vm.run{}` with no hook
//!     (rate = N / time of the `vm.run` call, median of several runs);
//! (b) the cost of one `vm.run` call that stops immediately: `vm.run{exits=0}`
//!     (the Lua → machine → Lua round trip without entering the guest) and
//!     `vm.run{exits=1}` (the same with one guest exit).
//!
//! Writes the figures to `target/bench-lua.json` as well.

use std::time::Instant;

use lunavm::script::{Scenario, ScenarioOptions};
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

fn scenario() -> Scenario {
    Scenario::new(&ScenarioOptions::default()).expect("a Lua state")
}

/// Seconds taken by `vm.run{}` on the `exits` guest, with or without a hook.
fn exits_run(count: u64, hook: bool) -> f64 {
    let s = scenario();
    s.exec_str(
        "setup",
        &format!("vm.boot{{guest = 'exits', cmdline = 'count={count} in=1'}}"),
    )
    .expect("boot");
    if hook {
        s.exec_str(
            "hook",
            "hook.pio{port = 0x80, on = 'read', fn = function(ev) return 3 end}",
        )
        .expect("hook");
    }
    let start = Instant::now();
    s.exec_str(
        "run",
        "local ev = vm.run{}; assert(ev.reason == 'exit' and ev.status == 0, ev.reason)",
    )
    .expect("run");
    let secs = start.elapsed().as_secs_f64();
    let want = if hook { count * 3 } else { 0 };
    s.exec_str(
        "check",
        &format!("assert(serial.output():find('exits: sum {want}\\n', 1, true))"),
    )
    .expect("the hook supplied every value");
    secs
}

/// Nanoseconds per `vm.run{exits = n}` call, over `calls` calls.
fn run_call_ns(n: u64, calls: u64) -> f64 {
    let s = scenario();
    s.exec_str(
        "setup",
        "vm.boot{guest = 'exits', cmdline = 'count=100000000'}",
    )
    .expect("boot");
    let start = Instant::now();
    s.exec_str(
        "loop",
        &format!("for _ = 1, {calls} do local ev = vm.run{{exits = {n}}}; if ev.reason ~= 'exit_budget' then error(ev.reason) end end"),
    )
    .expect("loop");
    start.elapsed().as_secs_f64() * 1e9 / calls as f64
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (count, reps, calls) = if quick {
        (20_000, 3, 2_000)
    } else {
        (100_000, 7, 20_000)
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "lunavm Lua benchmark ({}), CPU: {cpu}",
        if quick { "quick" } else { "full" }
    );

    // Warm up (page cache, lazy allocations).
    exits_run(1000, false);
    let mut plain = Vec::new();
    let mut hooked = Vec::new();
    for i in 0..reps {
        // Alternate which goes first.
        if i % 2 == 0 {
            plain.push(count as f64 / exits_run(count, false));
            hooked.push(count as f64 / exits_run(count, true));
        } else {
            hooked.push(count as f64 / exits_run(count, true));
            plain.push(count as f64 / exits_run(count, false));
        }
    }
    let (plain_m, hooked_m) = (median(plain), median(hooked));
    let zero: Vec<f64> = (0..reps).map(|_| run_call_ns(0, calls)).collect();
    let one: Vec<f64> = (0..reps).map(|_| run_call_ns(1, calls / 4)).collect();
    let (zero_m, one_m) = (median(zero), median(one));

    println!("(a) exits guest, in=1, count={count}, median of {reps} runs");
    println!(
        "    vm.run{{}} without hook        {:>10.1} k exits/s",
        plain_m / 1e3
    );
    println!(
        "    vm.run{{}} with Lua read hook  {:>10.1} k exits/s",
        hooked_m / 1e3
    );
    println!(
        "    ratio hook / no hook          {:>10.3}",
        hooked_m / plain_m
    );
    println!(
        "    cost of the hook per exit      {:>10.2} µs",
        (1.0 / hooked_m - 1.0 / plain_m) * 1e6
    );
    println!("(b) one vm.run call, median of {reps} loops");
    println!(
        "    vm.run{{exits=0}} (no guest entry) {:>8.2} µs",
        zero_m / 1e3
    );
    println!(
        "    vm.run{{exits=1}} (one guest exit) {:>8.2} µs",
        one_m / 1e3
    );

    let out = json!({
        "benchmark": "lunavm lua",
        "quick": quick,
        "cpu": cpu,
        "count": count,
        "exits_per_sec_no_hook": plain_m,
        "exits_per_sec_lua_hook": hooked_m,
        "ratio_hook_over_no_hook": hooked_m / plain_m,
        "run_call_ns_exits_0": zero_m,
        "run_call_ns_exits_1": one_m,
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-lua.json");
    if let Err(e) = std::fs::write(
        &path,
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    ) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}
