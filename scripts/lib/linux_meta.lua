---@meta lunavm.linux
-- LuaLS annotations for `require("lunavm.linux")` (the code is lib/linux.lua;
-- this file is never run).

---Linux guests: boot the test-suite kernel, read KUnit results, resolve symbols.
---@class lunavm.linux
---@field CMDLINE string The deterministic platform's command line.
local linux = {}

---Where the kernel build scripts leave their output.
---@return string
function linux.out_dir() end

---The test-suite kernel's files; errors when they are not built.
---@param kind? "idle"|"shell" The initramfs (default "idle").
---@return {bzimage: string, vmlinux: string, system_map: string, initramfs: string}
function linux.files(kind) end

---Boots the test-suite kernel to "Run /init"; returns the serial output.
---@param opts? table vm.boot options, plus `initramfs` ("idle"/"shell") and `timeout`.
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
