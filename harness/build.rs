//! Builds the built-in guests in guests/ with the system gcc (freestanding, no
//! libc) and generates the table that embeds them in the binary. The flags are
//! the ones guests/build.sh and guests/runtime/README.md document.

use std::path::PathBuf;
use std::process::Command;

const COMMON: &[&str] = &[
    "-O2",
    "-g",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-pic",
    "-fno-pie",
    "-no-pie",
    "-nostdlib",
    "-nostartfiles",
    "-static",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fcf-protection=none",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Iruntime",
    "-Wl,-T,runtime/guest.ld",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
    "-Wl,-z,max-page-size=0x1000",
];

const RUNTIME_C: &[&str] = &[
    "runtime/idt.c",
    "runtime/serial.c",
    "runtime/start.c",
    "runtime/string.c",
    "runtime/ucall.c",
    "runtime/virtio.c",
];

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let guests_dir = manifest.join("guests");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cc = std::env::var("LUNAVM_GUEST_CC").unwrap_or_else(|_| "gcc".into());
    println!("cargo:rerun-if-changed=guests");
    println!("cargo:rerun-if-env-changed=LUNAVM_GUEST_CC");

    let list = std::fs::read_to_string(guests_dir.join("guests.txt"))
        .expect("guests/guests.txt is readable");
    let mut table = String::from("static GUESTS: &[Guest] = &[\n");
    for line in list.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(4, '\t');
        let (Some(name), Some(proto), Some(desc)) = (fields.next(), fields.next(), fields.next())
        else {
            panic!("guests/guests.txt: malformed line {line:?} (want name<TAB>protocol<TAB>description[<TAB>options])");
        };
        let opts = Options::parse(name, fields.next().unwrap_or(""));
        let (arch, entry): (&[&str], &str) = match proto {
            "pvh" => (&["-m64"], "runtime/pvh.S"),
            "multiboot" => (&["-m32", "-march=i686"], "runtime/multiboot.S"),
            other => panic!("guests/guests.txt: {name}: unknown protocol {other}"),
        };
        let elf = out.join(format!("{name}.elf"));
        let source = format!("guests/{}.c", opts.source.as_deref().unwrap_or(name));
        // With cflags, the guest's own source is compiled first, alone, so the
        // flags (coverage instrumentation, say) never reach the runtime.
        let guest_input = if opts.cflags.is_empty() {
            source
        } else {
            let obj = out.join(format!("{name}.guest.o"));
            run_gcc(
                &cc,
                &guests_dir,
                name,
                Command::new(&cc)
                    .args(arch)
                    .args(COMMON)
                    .args(&opts.cflags)
                    .arg("-c")
                    .arg(&source)
                    .arg("-o")
                    .arg(&obj),
            );
            obj.display().to_string()
        };
        run_gcc(
            &cc,
            &guests_dir,
            name,
            Command::new(&cc)
                .args(arch)
                .args(COMMON)
                .args(RUNTIME_C)
                .args(&opts.runtime)
                .arg("runtime/isr.S")
                .arg(entry)
                .arg(&guest_input)
                .arg("-o")
                .arg(&elf),
        );
        table.push_str(&format!(
            "    Guest {{ name: {name:?}, protocol: {proto:?}, description: {desc:?}, elf: include_bytes!({:?}) }},\n",
            elf.display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out.join("guests.rs"), table).expect("OUT_DIR is writable");
}

/// The optional fourth column of guests.txt: space-separated words.
#[derive(Default)]
struct Options {
    /// `source=NAME`: build from guests/NAME.c (default: the guest's name).
    source: Option<String>,
    /// `cflags=FLAG` (repeatable): extra flags for the guest's source only.
    cflags: Vec<String>,
    /// `runtime=FILE` (repeatable): extra runtime files, built without cflags.
    runtime: Vec<String>,
}

impl Options {
    fn parse(name: &str, column: &str) -> Options {
        let mut o = Options::default();
        for word in column.split_whitespace() {
            match word.split_once('=') {
                Some(("source", v)) => o.source = Some(v.to_string()),
                Some(("cflags", v)) => o.cflags.push(v.to_string()),
                Some(("runtime", v)) => o.runtime.push(v.to_string()),
                _ => panic!("guests/guests.txt: {name}: unknown option {word:?} (want source=, cflags= or runtime=)"),
            }
        }
        o
    }
}

/// Runs one gcc command in guests/ and fails the build if it fails.
fn run_gcc(cc: &str, dir: &std::path::Path, name: &str, cmd: &mut Command) {
    let status = cmd.current_dir(dir).status().unwrap_or_else(|e| {
        panic!("cannot run {cc} to build guest {name}: {e} (install gcc, or set LUNAVM_GUEST_CC)")
    });
    assert!(status.success(), "building guest {name} with {cc} failed");
}
