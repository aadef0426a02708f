---@meta lunavm.linux
-- LuaLS annotations for `require("lunavm.linux")` (the code is lib/linux.lua;
-- this file is never run).

---Linux guests: boot the test-suite kernel, read KUnit results, resolve symbols.
---@class lunavm.linux
---@field CMDLINE string The deterministic platform's command line.
---@field NET {guest: string, host: string, mask: string} The addresses `linux.boot_rootfs` gives the kernel's `ip=`.
local linux = {}

---Where the kernel build scripts leave their output.
---@return string
function linux.out_dir() end

---The test-suite kernel's files; errors when they are not built.
---@param kind? "idle"|"shell" The initramfs (default "idle").
---@return {bzimage: string, vmlinux: string, system_map: string, initramfs: string}
function linux.files(kind) end

---Debian's stock cloud kernel as scripts/linux/fetch-cloud-kernel.sh left it,
---with the shell initramfs that loads virtio_mmio and virtio_blk; errors when
---the script has not been run.
---@return {bzimage: string, system_map: string, initramfs: string, version: string}
function linux.cloud_files() end

---Boots the test-suite kernel (or `opts.files`'s) to "Run /init"; returns the serial output.
---@param opts? table vm.boot options, plus `initramfs` ("idle"/"shell"), `files` ({bzimage, initramfs}) and `timeout`.
---@return string
function linux.boot(opts) end

---The KUnit suites' results in KTAP output.
---@param output string
---@return {name: string, status: "pass"|"fail"|"skip", message: string}[]
function linux.kunit_results(output) end

---Reports each KUnit suite as a result of the running test; returns the failures.
---@param output string
---@return integer
function linux.report_kunit(output) end

---A kernel symbol's address from System.map.
---@param system_map string
---@param name string
---@return integer
function linux.symbol(system_map, name) end

---The test kernel's symbol table (its vmlinux), loaded once per test.
---@return lunavm.Symbols
function linux.symbols() end

---The root-disk image (ext2, idle /init) of scripts/linux/build-rootfs.sh.
---@return string
function linux.rootfs() end

---Boots the kernel with the root file system on virtio disk 0 (`root=/dev/vda
---init=/init`), no initramfs, and virtio-net configured by `ip=` (linux.NET),
---to "Run /init"; returns the serial output.
---@param opts? table vm.boot options, plus `net` (default true) and `timeout` (default "40s").
---@return string
function linux.boot_rootfs(opts) end

---A kernel printf format with its arguments read from the registers (and
---stack) of a varargs call stopped at its entry.
---@param fmt string
---@return string
function linux.format_args(fmt) end

---A panic or oops report (linux.run_to_panic).
---@class lunavm.linux.PanicReport
---@field kind "panic"|"oops"
---@field func "panic"|"__die" Where the breakpoint hit.
---@field message string The panic message (formatted) or the oops string ("Oops", "invalid opcode", ...).
---@field format? string panic: the format string.
---@field backtrace lunavm.Frame[] From the breakpoint.
---@field regs? table<string, integer> oops: the faulting context's rip, rsp, rbp, rax, rcx, rdx, rsi, rdi, cs, rflags.
---@field error_code? integer oops: __die's error code.
---@field fault_backtrace? lunavm.Frame[] oops: from the faulting RIP.

---Runs until a breakpoint on `panic` or `__die` hits; a report, or nil and
---the vm.run event when the kernel stopped otherwise.
---@param opts? {timeout?: lunavm.Duration, symbols?: lunavm.Symbols}
---@return lunavm.linux.PanicReport?
---@return table event
function linux.run_to_panic(opts) end

---The report for a machine stopped at the first instruction of `panic` or `__die`.
---@param symbols? lunavm.Symbols Default linux.symbols().
---@return lunavm.linux.PanicReport
function linux.panic_report(symbols) end

---A backtrace's symbols, one per line.
---@param frames lunavm.Frame[]
---@return string
function linux.format_backtrace(frames) end

---The reliable frames of the kernel's last printed "Call Trace:" (`name+0x12`,
---sizes cut, "? " guesses left out); nil when there is none.
---@param output string
---@return string[]?
function linux.call_trace(output) end
---Boots with the busybox shell initramfs and waits until the shell runs commands.
---@param opts? table linux.boot's options (`initramfs` defaults to "shell"), plus `shell_timeout`.
---@return string output The serial output so far.
function linux.boot_shell(opts) end

---Waits for the shell initramfs' "lunavm-init: shell on" line and a first command.
---@param timeout? lunavm.Duration Virtual time (default "30s").
function linux.shell_wait(timeout) end

---Runs one line of shell on the serial console: its output and exit status.
---@param cmd string One line, a list `;` can follow; must not read the console.
---@param opts? {timeout?: lunavm.Duration} Virtual-time limit (default "10s").
---@return string output Lines joined with "\n", CRs removed, no final newline.
---@return integer status `$?`.
function linux.shell_run(cmd, opts) end

---Runs `cmd` like linux.shell_run and fails unless it exits 0; returns its output.
---@param cmd string
---@param opts? {timeout?: lunavm.Duration}
---@return string output
function linux.shell_check(cmd, opts) end
