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
