-- lunavm.linux: Linux guests. Boot a kernel to a milestone, turn the KTAP
-- output of KUnit suites into test results, resolve kernel symbols.
local linux = {}

--- Where scripts/linux/build-kernel.sh and build-initramfs.sh leave their
--- output: $LUNAVM_LINUX_DIR, else ~/.cache/lunavm/linux/out (or under
--- $LUNAVM_CACHE).
function linux.out_dir()
  local dir = os.getenv("LUNAVM_LINUX_DIR")
  if dir and dir ~= "" then return dir end
  local cache = os.getenv("LUNAVM_CACHE")
  if not cache or cache == "" then cache = (os.getenv("HOME") or "") .. "/.cache/lunavm" end
  return cache .. "/linux/out"
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

--- The test-suite kernel's files: {bzimage, vmlinux, system_map, initramfs}.
--- Errors, naming the build script, when they have not been built.
function linux.files(kind)
  local out = linux.out_dir()
  local files = {
    bzimage = out .. "/lunavm/bzImage",
    vmlinux = out .. "/lunavm/vmlinux",
    system_map = out .. "/lunavm/System.map",
    initramfs = out .. "/initramfs-" .. (kind or "idle") .. ".cpio",
  }
  for _, path in pairs(files) do
    if not exists(path) then
      error("Linux test files are missing (" .. path .. "): run scripts/linux/build-kernel.sh and "
        .. "scripts/linux/build-initramfs.sh first, or set LUNAVM_LINUX_DIR", 2)
    end
  end
  return files
end

--- The command line of the deterministic platform: serial console, PIC and
--- PIT only, the TSC not trusted, a panic stops the machine. lunavm adds
--- nokaslr and what hides the CPU profile's features itself.
linux.CMDLINE = "console=ttyS0 nolapic noapic tsc=unstable panic=-1"

--- Boots the test-suite kernel with the idle initramfs and runs it until
--- "Run /init" appears (virtual-time `timeout`, default "30s"). `opts` adds
--- to vm.boot's options (cmdline is appended to linux.CMDLINE). Returns the
--- serial output up to that point.
function linux.boot(opts)
  opts = opts or {}
  local f = linux.files(opts.initramfs)
  local boot = {}
  for k, v in pairs(opts) do boot[k] = v end
  boot.kernel = f.bzimage
  boot.modules = { f.initramfs }
  boot.mem = opts.mem or "256M"
  boot.cmdline = linux.CMDLINE .. (opts.cmdline and (" " .. opts.cmdline) or "")
  boot.initramfs, boot.timeout = nil, nil
  vm.boot(boot)
  serial.expect("Run /init as init process\r?\n", opts.timeout or "30s")
  return serial.output()
end

--- The KUnit results in `output` (KTAP, as the kernel prints them at boot):
--- one {name, status ("pass", "fail" or "skip"), message} per suite, in order.
function linux.kunit_results(output)
  local results = {}
  for line in output:gmatch("[^\r\n]+") do
    local not_ok, n, rest = line:match("^(n?o?t? ?)ok (%d+) (.*)$")
    if n then
      local name, directive = rest:match("^(.-)%s*#%s*(.*)$")
      name = name or rest
      local status = (not_ok ~= "" and "fail") or "pass"
      if directive and directive:upper():find("^SKIP") then status = "skip" end
      results[#results + 1] = { name = name, status = status, message = directive or "" }
    end
  end
  return results
end

--- Reports every KUnit suite in `output` as a result of the running test
--- (`t.result`); returns how many failed.
function linux.report_kunit(output)
  local failed = 0
  for _, r in ipairs(linux.kunit_results(output)) do
    t.result(r.name, r.status, r.message)
    if r.status == "fail" then failed = failed + 1 end
  end
  return failed
end

--- The address of kernel symbol `name` from a System.map file.
function linux.symbol(system_map, name)
  for line in io.lines(system_map) do
    local addr, _, sym = line:match("^(%x+) (%a) (%S+)$")
    if sym == name then return tonumber(addr, 16) end
  end
  error("no symbol " .. name .. " in " .. system_map, 2)
end

return linux
