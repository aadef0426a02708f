//! The C interface to libFuzzer's engine (linked by `libfuzzer-sys`): its
//! driver, the extra-counter section it reads guest coverage from, and the
//! comparison hooks that feed its mutation dictionary.

// The crate that builds and links libFuzzer.
use libfuzzer_sys as _;
use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicU8, Ordering};

/// Number of extra counters: the coverage features lunavm can give
/// libFuzzer per execution (guest blocks and comparison distances hash into
/// them).
pub const COUNTERS: usize = 1 << 17;

/// The counters. libFuzzer finds them through the linker's
/// `__start_`/`__stop___libfuzzer_extra_counters` symbols, clears them before
/// each execution and reads them after it.
#[used]
#[link_section = "__libfuzzer_extra_counters"]
static EXTRA_COUNTERS: [AtomicU8; COUNTERS] = [const { AtomicU8::new(0) }; COUNTERS];

/// Bumps counter `index % COUNTERS` (saturating at 255).
pub fn bump(index: usize) {
    let c = &EXTRA_COUNTERS[index % COUNTERS];
    let v = c.load(Ordering::Relaxed);
    c.store(v.saturating_add(1), Ordering::Relaxed);
}

/// Sets counter `index % COUNTERS` to at least `value`.
pub fn set_at_least(index: usize, value: u8) {
    let c = &EXTRA_COUNTERS[index % COUNTERS];
    if c.load(Ordering::Relaxed) < value {
        c.store(value, Ordering::Relaxed);
    }
}

extern "C" {
    fn LLVMFuzzerRunDriver(
        argc: *mut c_int,
        argv: *mut *mut *mut c_char,
        cb: extern "C" fn(*const u8, usize) -> c_int,
    ) -> c_int;
    fn __sanitizer_cov_trace_cmp4(a: u32, b: u32);
    fn __sanitizer_cov_trace_cmp8(a: u64, b: u64);
}

/// Tells libFuzzer about a comparison the guest made: its operands go into
/// the table of recent compares, from which its mutator copies one operand
/// over the other in inputs.
pub fn trace_cmp(a: u64, b: u64, size: u8) {
    // SAFETY: plain C functions of libFuzzer taking two integers by value;
    // they only record them in libFuzzer's own tables.
    unsafe {
        if size <= 4 {
            __sanitizer_cov_trace_cmp4((a & 0xffff_ffff) as u32, (b & 0xffff_ffff) as u32)
        } else {
            __sanitizer_cov_trace_cmp8(a, b)
        }
    }
}

/// Runs libFuzzer's driver with `args` (`args[0]` is the program libFuzzer
/// re-runs for `-fork`, `-jobs` and minimisation) and `cb` as the target.
/// libFuzzer usually ends the process itself; the return value is its
/// status when it does not.
pub fn run_driver(args: &[String], cb: extern "C" fn(*const u8, usize) -> c_int) -> i32 {
    let owned: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.replace('\0', "")).unwrap_or_default())
        .collect();
    // libFuzzer keeps pointers into argv for the life of the process.
    let mut ptrs: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr().cast_mut()).collect();
    ptrs.push(std::ptr::null_mut());
    let mut argc = c_int::try_from(owned.len()).unwrap_or(c_int::MAX);
    let mut argv = ptrs.as_mut_ptr();
    std::mem::forget(owned);
    std::mem::forget(ptrs);
    // SAFETY: argc/argv describe NUL-terminated strings that are never freed
    // (forgotten above), as libFuzzer's driver expects of main's arguments;
    // `cb` is a plain function with the signature libFuzzer calls.
    unsafe { LLVMFuzzerRunDriver(&mut argc, &mut argv, cb) }
}
